"""PyTorch port of big_vision's MLP-Mixer (``big_vision/models/mlp_mixer.py``).

Why our own ``PreTrainedModel``: transformers has no MLP-Mixer; timm's ``MlpMixer`` uses the erf GELU and a
``DropPath`` that rescales kept examples, while big_vision uses the tanh GELU and a stochastic depth that does not.

big_vision ``out`` dict -> outputs here (hidden-state index ``i`` is the input of block ``i``; index
``num_blocks`` is the output of the last block, before ``pre_head_layer_norm``):
    ``out["stem"]``          -> ``hidden_states[0]`` reshaped to ``(B, h, w, D)`` (channels last, like big_vision)
    ``out["input_tokens"]``  -> ``hidden_states[0]``
    ``out[f"block_{i}"]``    -> ``hidden_states[i + 1]``
    (no ``out`` key)         -> ``last_hidden_state``: the tokens after ``pre_head_layer_norm``
    ``out["pre_logits"]``    -> ``pooler_output`` (mean over tokens of ``last_hidden_state``)
    ``out["logits"]``        -> ``logits``
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_bv_mixer import BvMixerConfig
from .loading import BvStrictLoadingMixin
from .modeling_bv_vit import (  # the ViT's output, MLP, head and initialisers
    BvImageClassifierOutput,
    BvViTMLP,
    image_classifier_output,
    init_flax_dense_,
)


def stochastic_depth(x: torch.Tensor, drop_p: float, training: bool) -> torch.Tensor:
    """big_vision ``mlp_mixer._stoch_depth_mask``: zeroes whole examples with probability ``drop_p``.

    Unlike timm's ``DropPath`` the kept examples are NOT rescaled by ``1 / (1 - drop_p)``, so in training the
    branch's expected value shrinks by ``1 - drop_p``; at eval the branch is used as is.
    """
    if not training or not drop_p:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)  # (B, 1, 1)
    return x * keep.bernoulli_(1.0 - drop_p)


class BvMixerBlock(GradientCheckpointingLayer):
    """big_vision ``mlp_mixer.MixerBlock``: pre-LN token mixing and channel mixing, each with a residual."""

    def __init__(self, config: BvMixerConfig, drop_p: float = 0.0):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.token_mixing = BvViTMLP(config.num_tokens, config.tokens_mlp_dim, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.channel_mixing = BvViTMLP(config.hidden_size, config.channels_mlp_dim, config.hidden_act)
        self.drop_p = drop_p

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states).transpose(1, 2)  # (B, D, T): mix along tokens
        hidden_states = self.token_mixing(hidden_states).transpose(1, 2)  # (B, T, D)
        hidden_states = residual + stochastic_depth(hidden_states, self.drop_p, self.training)
        residual = hidden_states
        hidden_states = self.channel_mixing(self.layer_norm2(hidden_states))
        return residual + stochastic_depth(hidden_states, self.drop_p, self.training)


class BvMixerPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
    config: BvMixerConfig
    config_class = BvMixerConfig
    base_model_prefix = "mixer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BvMixerBlock"]
    _can_record_outputs = {"hidden_states": BvMixerBlock}

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's flax initialisers (``models/mlp_mixer.py``); loaded tensors are left alone.

        Every layer there uses flax defaults (``nn.Dense``/``nn.Conv``: lecun_normal kernel, zero bias;
        ``nn.LayerNorm``: ones/zeros, done by ``super()``) except the head, ``kernel_init=zeros``. Dispatch is on the
        leaf modules: transformers skips parameter-less containers (``BvViTMLP``, this model) for custom code.
        """
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init_flax_dense_(module, zero_kernel=module is getattr(self, "classifier", None))
        else:
            super()._init_weights(module)


class BvMixerModel(BvMixerPreTrainedModel):
    r"""big_vision MLP-Mixer without the classification head: returns ``pre_logits`` as ``pooler_output``.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvMixerConfig, BvMixerModel
        >>> config = BvMixerConfig.from_variant("S/16", image_size=64, num_hidden_layers=2)
        >>> model = BvMixerModel(config).eval()
        >>> out = model(torch.zeros(1, 3, 64, 64))
        >>> tuple(out.pooler_output.shape), tuple(out.last_hidden_state.shape)
        ((1, 512), (1, 16, 512))

    Parity: ``big_vision.models.mlp_mixer.MlpMixer`` at commit 0127fb6, current and legacy (``Mixer/encoderblock_*``)
    checkpoint layouts; fp32 max abs error on ``logits``, ``pre_logits`` and every block output against the original
    JAX code is reported by ``tests/test_bv_mixer.py`` (below 1e-5). The token count is fixed by the weights, so only
    inputs whose patch grid has ``config.num_tokens`` tokens are accepted.
    """

    def __init__(self, config: BvMixerConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(  # big_vision `stem`
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        n = config.num_hidden_layers
        self.layers = nn.ModuleList(
            [BvMixerBlock(config, drop_p=i / max(n - 1, 1) * config.stoch_depth) for i in range(n)]
        )
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # `pre_head_layer_norm`
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embedding

    def _stem(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """flax ``nn.Conv(..., strides=patch)`` with its default ``SAME`` padding: a no-op when the image size is
        a multiple of the patch; otherwise zeros are added, ``pad // 2`` before and the rest after (``lax`` SAME).
        """
        x = pixel_values.to(self.patch_embedding.weight.dtype)
        (ph, pw), (h, w) = self.config.patch_size, x.shape[-2:]
        pad_h, pad_w = math.ceil(h / ph) * ph - h, math.ceil(w / pw) * pw - w
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return self.patch_embedding(x)  # (B, D, h, w) = out["stem"] (channels first)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Images in [-1, 1] (big_vision ``value_range(-1, 1)``), e.g. from `BvImageProcessor`. Their patch grid
            must have `config.num_tokens` tokens (the token-mixing weights fix the sequence length).
        """
        x = self._stem(pixel_values)
        if x.shape[-2] * x.shape[-1] != self.config.num_tokens:
            raise ValueError(
                f"input gives a {x.shape[-2]}x{x.shape[-1]} patch grid but this Mixer's token-mixing weights are for "
                f"{self.config.num_tokens} tokens ({self.config.image_size[0]}x{self.config.image_size[1]} images); "
                "resize the input"
            )
        hidden_states = x.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major tokens = out["input_tokens"]
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)  # out[f"block_{i}"]
        hidden_states = self.post_layernorm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=hidden_states.mean(dim=1))


class BvMixerForImageClassification(BvMixerPreTrainedModel):
    r"""big_vision MLP-Mixer with its ``head`` Dense: ``logits = head(pre_logits)``.

    ``labels`` give a loss as in transformers (cross-entropy, or BCE for ``problem_type=
    "multi_label_classification"``), so the model trains with ``Trainer``. LoRA target modules: ``fc1, fc2``
    (``modules_to_save=["classifier"]``). ``config.stoch_depth`` applies in ``train()`` mode, as in big_vision.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvMixerConfig, BvMixerForImageClassification
        >>> config = BvMixerConfig.from_variant("S/16", image_size=64, num_hidden_layers=2, num_labels=10)
        >>> model = BvMixerForImageClassification(config).eval()
        >>> model(torch.zeros(2, 3, 64, 64)).logits.shape
        torch.Size([2, 10])

    Parity: as `BvMixerModel`; ``logits`` match big_vision ``out["logits"]``.
    """

    def __init__(self, config: BvMixerConfig):
        super().__init__(config)
        self.mixer = BvMixerModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.mixer.patch_embedding

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> BvImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the loss.
        """
        return image_classifier_output(self, self.mixer(pixel_values, **kwargs), labels)
