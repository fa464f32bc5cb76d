"""PyTorch port of big_vision's BiT ResNets: ``models/bit_paper.py`` (ResNet-v2) and ``models/bit.py`` (ResNet-v1).

``config.architecture`` picks the file:

* ``"resnetv2"`` (``bit_paper.Model``): root ``StdConv 7x7/2`` (symmetric pad 3) -> max-pool 3x3/2 (pad 1 with
  -inf); pre-activation bottleneck units ``GN -> ReLU -> conv`` x3 with the stride in the 3x3 and the projection
  taken from the pre-activated input; then ``norm-pre-head`` GN -> ReLU -> mean -> head. GroupNorm eps 1e-5;
  weights standardised as ``(w - mean) / sqrt(var + 1e-10)``.
* ``"resnetv1"`` (``bit.Model``): root ``StdConv 7x7/2`` -> GN -> ReLU -> max-pool 3x3/2; post-activation units
  ``conv -> GN (-> ReLU)`` x3, ``relu(residual + gn3(conv3(...)))``, projection ``gn_proj(conv_proj(x))``; no final
  norm. Every conv and the max-pool pad TF ``SAME``: asymmetric for strided ops (the extra row/column goes after),
  -inf for the pool. flax ``nn.GroupNorm`` eps 1e-6; weights standardised as ``(w - mean) / (std + 1e-5)``.

Why our own ``PreTrainedModel``: transformers' ``BitModel`` is close but not exact: its weight standardisation uses
``batch_norm`` with eps 1e-8 (big_vision: 1e-10 in the root, or 1e-5 on the std), and its stem max-pool pads zeros.

big_vision ``out`` dict -> outputs here (``hidden_states`` are channels first; index 0 is the stem, index ``i`` the
output of stage ``i``; big_vision's arrays are channels last):
    ``out["stem"]``                              -> ``hidden_states[0]``
    ``out["stage{i}"]`` (bit.py)                 -> ``hidden_states[i]``
    ``out["stage{i}"]["unit{j:02d}"]`` (bit_paper) -> output of ``stages[i - 1].layers[j - 1]`` (the last unit of a
                                                    stage is ``hidden_states[i]``)
    ``out["norm_pre_head"]`` (bit_paper)         -> output of ``norm`` (before its ReLU)
    ``out["pre_logits_2d"]``                     -> ``last_hidden_state`` (channels first), and ``pre_logits_2d``
                                                    (channels last, with ``output_2d=True``)
    ``out["pre_logits"]``                        -> ``pooler_output``
    ``out["logits_2d"]`` / ``out["logits"]``     -> ``logits_2d`` (with ``output_2d=True``) / ``logits``
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..configuration.configuration_bv_bit import BvBiTConfig

# The ViT's outputs (pre_logits_2d, logits_2d) and head.
from .loading import BvStrictLoadingMixin
from .modeling_bv_vit import BvImageClassifierOutput, BvViTModelOutput, image_classifier_output, init_flax_dense_


def pad_same(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], value: float = 0.0):
    """TF/flax ``padding="SAME"`` for an NCHW input: output size ``ceil(in / stride)``; of the ``total`` padding an
    axis needs, ``total // 2`` goes before and the rest after (so strided ops on even inputs pad 0/1 or 2/3)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[-2:]), reversed(kernel_size), reversed(stride)):  # F.pad: last dim first
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class BvWeightStandardizedConv2d(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` whose kernel is standardised on every call, as big_vision ``StdConv``.

    Mean and variance are taken per output channel over (in, kh, kw), in float32. ``eps_on_std`` selects the
    formula: ``(w - mean) / (std + eps)`` (``bit.weight_standardize``) or ``(w - mean) / sqrt(var + eps)``
    (``bit_paper.standardize``); the variance is the population one in both. ``padding="SAME"`` pads as TF does
    (see `pad_same`); an int pads symmetrically.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, eps=1e-10, eps_on_std=False):
        tf_same = padding == "SAME"
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if tf_same else padding, bias=False)
        self.tf_same = tf_same
        self.eps = eps
        self.eps_on_std = eps_on_std

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight.float()
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        if self.eps_on_std:
            w = w / (w.std(dim=(1, 2, 3), correction=0, keepdim=True) + self.eps)
        else:
            w = w / torch.sqrt(w.square().mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return w.to(self.weight.dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            hidden_states = pad_same(hidden_states, self.kernel_size, self.stride)
        return F.conv2d(hidden_states, self.standardized_weight(), None, self.stride, self.padding)


def _std_conv(config: BvBiTConfig, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
    """The architecture's ``StdConv``: TF ``SAME`` padding (bit.py) or symmetric ``k // 2`` (bit_paper)."""
    v1 = config.architecture == "resnetv1"
    return BvWeightStandardizedConv2d(
        in_channels, out_channels, kernel_size, stride, padding="SAME" if v1 else kernel_size // 2,
        eps=config.weight_standardization_eps, eps_on_std=v1,
    )


def _group_norm(config: BvBiTConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(config.num_groups, channels, eps=config.group_norm_eps)


class BvBiTEmbeddings(nn.Module):
    """The root: big_vision ``bit_paper.RootBlock`` (conv, max-pool), or conv -> GN -> ReLU -> max-pool (bit.py)."""

    def __init__(self, config: BvBiTConfig):
        super().__init__()
        self.convolution = _std_conv(config, config.num_channels, config.root_width, 7, stride=2)  # `conv_root`
        v1 = config.architecture == "resnetv1"
        self.norm = _group_norm(config, config.root_width) if v1 else None  # bit.py `gn_root`

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.convolution(pixel_values.to(self.convolution.weight.dtype))
        if self.norm is not None:  # bit.py
            x = F.relu(self.norm(x))
            # nn.max_pool(padding="SAME") pads with -inf (here after a ReLU, so zeros would give the same).
            return F.max_pool2d(pad_same(x, (3, 3), (2, 2), value=float("-inf")), 3, 2)
        return F.max_pool2d(x, 3, 2, padding=1)  # nn.max_pool(padding=[(1, 1), (1, 1)]); torch pads with -inf too


class BvBiTPreActivationUnit(GradientCheckpointingLayer):
    """big_vision ``bit_paper.ResidualUnit``: pre-activation bottleneck, stride in the 3x3 conv."""

    def __init__(self, config: BvBiTConfig, in_channels: int, mid_channels: int, stride: int = 1):
        super().__init__()
        out_channels = 4 * mid_channels
        self.norm1 = _group_norm(config, in_channels)
        self.conv_proj = None
        if in_channels != out_channels or stride != 1:
            self.conv_proj = _std_conv(config, in_channels, out_channels, 1, stride)
        self.conv1 = _std_conv(config, in_channels, mid_channels, 1)
        self.norm2 = _group_norm(config, mid_channels)
        self.conv2 = _std_conv(config, mid_channels, mid_channels, 3, stride)
        self.norm3 = _group_norm(config, mid_channels)
        self.conv3 = _std_conv(config, mid_channels, out_channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = F.relu(self.norm1(hidden_states))
        if self.conv_proj is not None:
            residual = self.conv_proj(hidden_states)  # the projection sees the pre-activated input
        hidden_states = self.conv1(hidden_states)
        hidden_states = self.conv2(F.relu(self.norm2(hidden_states)))
        hidden_states = self.conv3(F.relu(self.norm3(hidden_states)))
        return hidden_states + residual


class BvBiTBottleneckUnit(GradientCheckpointingLayer):
    """big_vision ``bit.ResidualUnit``: post-activation bottleneck, GN after every conv, stride in the 3x3 conv."""

    def __init__(self, config: BvBiTConfig, in_channels: int, mid_channels: int, stride: int = 1):
        super().__init__()
        out_channels = 4 * mid_channels
        self.conv_proj = self.norm_proj = None
        if in_channels != out_channels or stride != 1:
            self.conv_proj = _std_conv(config, in_channels, out_channels, 1, stride)
            self.norm_proj = _group_norm(config, out_channels)
        self.conv1 = _std_conv(config, in_channels, mid_channels, 1)
        self.norm1 = _group_norm(config, mid_channels)
        self.conv2 = _std_conv(config, mid_channels, mid_channels, 3, stride)
        self.norm2 = _group_norm(config, mid_channels)
        self.conv3 = _std_conv(config, mid_channels, out_channels, 1)
        self.norm3 = _group_norm(config, out_channels)  # scale zero-initialised (`gn3`, scale_init=zeros)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        if self.conv_proj is not None:
            residual = self.norm_proj(self.conv_proj(hidden_states))
        hidden_states = F.relu(self.norm1(self.conv1(hidden_states)))
        hidden_states = F.relu(self.norm2(self.conv2(hidden_states)))
        hidden_states = self.norm3(self.conv3(hidden_states))
        return F.relu(residual + hidden_states)


class BvBiTStage(nn.Module):
    """big_vision ``ResNetStage`` (``block{i}``): units at one resolution, the first one strided (except stage 1)."""

    def __init__(self, config: BvBiTConfig, in_channels: int, mid_channels: int, depth: int, stride: int):
        super().__init__()
        unit = BvBiTBottleneckUnit if config.architecture == "resnetv1" else BvBiTPreActivationUnit
        self.layers = nn.ModuleList(
            [unit(config, in_channels if i == 0 else 4 * mid_channels, mid_channels, stride if i == 0 else 1)
             for i in range(depth)]
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class BvBiTPreTrainedModel(BvStrictLoadingMixin, PreTrainedModel):
    config: BvBiTConfig
    config_class = BvBiTConfig
    base_model_prefix = "bit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BvBiTEmbeddings", "BvBiTPreActivationUnit", "BvBiTBottleneckUnit"]
    _can_record_outputs = {"hidden_states": OutputRecorder(BvBiTStage, num_hidden_layers_key="num_stages")}

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # As in modeling_bv_vit: transformers skips parameter-less modules (the units) for custom code, which would
        # skip the zero-init of `norm3` below; `_init_weights` only uses the guarded init functions, so this is safe.
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's flax initialisers; loaded tensors are left alone.

        ``nn.Conv``: lecun_normal kernel (standardised anyway); ``nn.GroupNorm``/``bit_paper.GroupNorm``: ones/zeros;
        head: zeros (``bit.py`` always, ``bit_paper`` with ``head_zeroinit``) else lecun_normal, zero bias; and
        ``bit.ResidualUnit``'s ``gn3`` has ``scale_init=zeros``. Units are visited after their norms.
        """
        if isinstance(module, BvWeightStandardizedConv2d):
            init.lecun_normal_(module.weight)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init_flax_dense_(module, zero_kernel=self.config.head_zeroinit or self.config.architecture == "resnetv1")
        elif isinstance(module, BvBiTBottleneckUnit):
            init.zeros_(module.norm3.weight)
        else:
            super()._init_weights(module)


class BvBiTModel(BvBiTPreTrainedModel):
    r"""big_vision BiT ResNet without the head: returns ``pre_logits`` as ``pooler_output``.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvBiTConfig, BvBiTModel
        >>> config = BvBiTConfig(architecture="resnetv1", width_factor=0.5, depths=[1, 1])
        >>> model = BvBiTModel(config).eval()
        >>> out = model(torch.zeros(1, 3, 33, 31), output_hidden_states=True)
        >>> tuple(out.pooler_output.shape), [tuple(h.shape[2:]) for h in out.hidden_states]
        ((1, 256), [(9, 8), (9, 8), (5, 4)])

    Parity: ``big_vision.models.bit_paper.Model`` and ``big_vision.models.bit.Model`` at commit 0127fb6, with the
    current, big_transfer (``resnet/...``) and un-squeezed-GroupNorm layouts; fp32 max abs error against the original
    JAX code is reported by ``tests/test_bv_bit.py``: ``logits`` and ``pre_logits`` below 1e-6, every stage/unit
    output below 5e-5 (bit_paper feature maps reach |x| ~ 40; a float64 run of this model is as far from the JAX
    fp32 outputs, so that is fp32 rounding). Odd input sizes match a float64 NumPy reference of the padding rules.
    """

    def __init__(self, config: BvBiTConfig):
        super().__init__(config)
        self.embeddings = BvBiTEmbeddings(config)
        width, stages, in_channels = config.root_width, [], config.root_width
        for i, depth in enumerate(config.depths):  # big_vision `block{i + 1}`
            stages.append(BvBiTStage(config, in_channels, width * 2**i, depth, stride=1 if i == 0 else 2))
            in_channels = 4 * width * 2**i
        self.stages = nn.ModuleList(stages)
        # bit_paper `norm-pre-head`; bit.py has no final norm.
        self.norm = _group_norm(config, in_channels) if config.architecture == "resnetv2" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.convolution

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, output_2d: bool = False, **kwargs) -> BvViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Images in [-1, 1] (big_vision ``value_range(-1, 1)``), any size, e.g. from `BvImageProcessor`.
        output_2d (`bool`): also return ``pre_logits_2d`` (big_vision ``out["pre_logits_2d"]``, channels last).
        """
        hidden_states = self.embeddings(pixel_values)  # out["stem"]
        for stage in self.stages:
            hidden_states = stage(hidden_states)  # out[f"stage{i}"]
        if self.norm is not None:
            hidden_states = F.relu(self.norm(hidden_states))  # out["norm_pre_head"] before the ReLU
        pre_logits_2d = hidden_states.permute(0, 2, 3, 1) if output_2d else None  # (B, h, w, C)
        return BvViTModelOutput(
            last_hidden_state=hidden_states, pooler_output=hidden_states.mean(dim=(2, 3)), pre_logits_2d=pre_logits_2d
        )


class BvBiTForImageClassification(BvBiTPreTrainedModel):
    r"""big_vision BiT ResNet with its ``head`` Dense: ``logits = head(pre_logits)``.

    ``labels`` give a loss as in transformers (cross-entropy, or BCE for ``problem_type=
    "multi_label_classification"``), so the model trains with ``Trainer``. There is no dropout and GroupNorm has no
    running statistics, so ``train()`` and ``eval()`` compute the same function.

    Example:
        >>> import torch
        >>> from big_vision_hf import BvBiTConfig, BvBiTForImageClassification
        >>> config = BvBiTConfig(width_factor=0.5, depths=[1, 1], num_labels=10)
        >>> model = BvBiTForImageClassification(config).eval()
        >>> model(torch.zeros(2, 3, 64, 64)).logits.shape
        torch.Size([2, 10])

    Parity: as `BvBiTModel`; ``logits`` and ``logits_2d`` match big_vision ``out["logits"]``/``out["logits_2d"]``.
    """

    def __init__(self, config: BvBiTConfig):
        super().__init__(config)
        self.bit = BvBiTModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.bit.embeddings.convolution

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, output_2d: bool = False, **kwargs
    ) -> BvImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the loss.
        output_2d (`bool`): also return ``logits_2d`` (big_vision ``out["logits_2d"]``, channels last).
        """
        return image_classifier_output(self, self.bit(pixel_values, output_2d=output_2d, **kwargs), labels)
