"""PyTorch port of big_vision's two-tower image-text model (``big_vision/models/proj/image_text/two_towers.py``
with ``text_transformer.py``) for the towers transformers' ``SiglipModel`` cannot represent, and big_vision's
contrastive losses (sigmoid: ``trainers/proj/image_text/siglip.py``; softmax: ``_deprecated_contrastive.py``).

``SiglipModel`` represents SigLIP / fixed-res SigLIP 2 exactly (MAP image pool, learned posemb, no image head,
text pool ``last``); ``conversion/convert_two_towers.py`` puts those there. Everything else lands here: image
pools ``gap``/``tok``/``0``, sincos posembs, ``rep_size``, an image head (``out_dim[0]``), text pools
``first``/``gap``/``max``/``map``, softmax-trained (LiT/CLIP-like) models, and SigLIP 2 NaFlex. The image tower
is `BvViTModel`, or `BvNaFlexViTModel` for ``image_model="proj.image_text.naflex_vit"`` (SigLIP 2 NaFlex: patches,
``pixel_attention_mask`` and ``spatial_shapes`` in, as transformers' ``Siglip2Model``); the text tower
`BvTextTransformer` reuses the shared `BvViTEncoder`, `BvMAPHead` and `pool` (``modeling_bv_vit``), as big_vision's
text tower reuses ``vit.Encoder``/``vit.MAPHead``; LiT's BERT text tower (``text_model="proj.flaxformer.bert"``,
``models/proj/flaxformer/bert.py``) is `BvBertTextTransformer`, built from transformers' BERT modules.

big_vision ``out`` dict -> outputs (`transformers.models.siglip.modeling_siglip.SiglipOutput`):
    ``out["img/*"]``                        -> ``vision_model_output`` (`BvViTModelOutput`, see ``modeling_bv_vit``;
                                              its ``pooler_output`` is ``img/pre_logits``)
    ``out["img/logits"]``                   -> ``get_image_features(...).pooler_output`` (the ``img/head`` output;
                                              ``img/pre_logits`` when there is no image head)
    ``out["txt/embedded"]`` + posemb        -> ``text_model_output.hidden_states[0]``
    ``out["txt/blockNN/+mlp"]``            -> ``text_model_output.hidden_states[NN + 1]``
    ``out["txt/transformed"]``              -> ``text_model_output.last_hidden_state``
    ``out["txt/pre_logits"]``               -> ``text_model_output.pre_logits``
    ``out["txt/logits"]``                   -> ``text_model_output.pooler_output`` (= ``get_text_features``)
    ``zimg`` / ``ztxt``                      -> ``image_embeds`` / ``text_embeds``
    ``t/parameter`` / ``b``                 -> ``logit_scale`` / ``logit_bias`` (``t`` = ``logit_scale.exp()``)
    ``zimg @ ztxt.T * t + b``                -> ``logits_per_image`` (``derived/siglip_logits`` of the fixtures)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder, BertPreTrainedModel
from transformers.models.siglip.modeling_siglip import SiglipOutput
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_bv_two_towers import (
    BvBertTextConfig,
    BvSiglipConfig,
    BvTextConfig,
    BvTwoTowerConfig,
)
from .modeling_bv_naflex import BvNaFlexViTModel
from .modeling_bv_vit import (
    BvMAPHead,
    BvViTEncoder,
    BvViTModel,
    BvViTModelOutput,
    BvViTPreTrainedModel,
    init_flax_dense_,
    pool,
)

__all__ = [
    "BvBertTextTransformer",
    "BvSiglipModel",
    "BvTextTransformer",
    "BvTwoTowerModel",
    "contrastive_output",
    "gather_embeddings",
    "l2_normalize",
    "sigmoid_loss",
    "softmax_loss",
]

# big_vision two_towers.Model.__call__: `ztxt / (jnp.linalg.norm(ztxt, axis=1, keepdims=True) + 1e-8)`.
# transformers' SiglipModel divides by the norm with no epsilon at all (`z / z.norm(p=2, dim=-1, keepdim=True)`).
NORM_EPS = 1e-8


def l2_normalize(z: torch.Tensor) -> torch.Tensor:
    """big_vision two_towers normalisation ``z / (||z|| + 1e-8)`` (not ``F.normalize``'s ``z / max(||z||, eps)``)."""
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + NORM_EPS)


def contrastive_output(
    image_embeds: torch.Tensor | None,
    text_embeds: torch.Tensor | None,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    inputs: str = "input_ids and pixel_values",
    vision_model_output: ModelOutput | None = None,
    text_model_output: ModelOutput | None = None,
    output_class: type[SiglipOutput] = SiglipOutput,
) -> SiglipOutput:
    """The outputs of big_vision's contrastive models (two towers, CLIPPO) from their normalised embeddings.

    ``logits_per_image = zimg @ ztxt.T * exp(t) (+ b)`` (``None`` unless both embeddings are given) and its transpose
    ``logits_per_text``; ``loss = loss_fn(zimg, ztxt)`` when ``loss_fn`` is given (``return_loss``), which needs both
    and matched pairs (row ``i`` of the images goes with row ``i`` of the texts). ``inputs`` names the two inputs in
    errors; the towers' own outputs are passed through.
    """
    logits_per_image = loss = None
    if image_embeds is not None and text_embeds is not None:
        logits_per_image = image_embeds @ text_embeds.t() * logit_scale.exp()
        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
    if loss_fn is not None:
        if logits_per_image is None:
            raise ValueError(f"return_loss needs both {inputs}")
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"return_loss needs matched pairs: got {image_embeds.shape[0]} images and {text_embeds.shape[0]} texts"
            )
        loss = loss_fn(image_embeds, text_embeds)
    return output_class(
        loss=loss,
        logits_per_image=logits_per_image,
        logits_per_text=logits_per_image.t() if logits_per_image is not None else None,
        text_embeds=text_embeds,
        image_embeds=image_embeds,
        text_model_output=text_model_output,
        vision_model_output=vision_model_output,
    )


# ---------------------------------------------------------------------------------------------------------
# Losses, with every process's embeddings as negatives (big_vision gathers them across devices)
# ---------------------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    """``all_gather`` of 2-D tensors along dim 0 (per-process row counts may differ), differentiable.

    Every process's loss depends on every process's rows, so the backward all-reduces (sums) the gradient of the
    gathered tensor and keeps this process's rows: the transpose of big_vision's ``jax.lax.all_gather``.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        padded = F.pad(z, (0, 0, 0, max(sizes) - z.shape[0])).contiguous()
        chunks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(chunks, padded)
        return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum over processes
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_embeddings(z: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Every process's rows of ``z`` in rank order, with gradients; returns ``(all rows, my offset, world size)``.

    Without ``torch.distributed`` (or with one process) this is ``(z, 0, 1)``.
    """
    rank, world = _world()
    if world == 1:
        return z, 0, 1
    n = torch.tensor([z.shape[0]], device=z.device)
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    return _GatherRows.apply(z, sizes, rank), sum(sizes[:rank]), world


def sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    gather: bool = True,
) -> torch.Tensor:
    """SigLIP's sigmoid loss, as big_vision ``trainers/proj/image_text/siglip.py`` (commit 0127fb6) computes it.

    ``logits = zimg @ ztxt.T * exp(t) + b``; positives on the diagonal, every other pair a negative;
    ``loss = mean over images of sum over texts of -log_sigmoid(±logits)``. ``image_embeds``/``text_embeds`` are
    the normalised embeddings of this process's matching pairs.

    With several processes (``gather=True``), the texts of every process are negatives of this process's images,
    as big_vision's (global-batch) trainer and its older ``pmap`` ``sigmoid_loss``/``chunked_sigmoid_loss`` do.
    Each process returns its images' share scaled so that the mean over processes (what DDP's gradient
    averaging and ``Trainer``'s logging take) equals the loss of the whole global batch in one process:
    ``sum over my images * world_size / global batch``.
    """
    texts, offset, world = gather_embeddings(text_embeds) if gather else (text_embeds, 0, 1)
    logits = image_embeds @ texts.t() * logit_scale.exp() + logit_bias
    n = image_embeds.shape[0]
    signs = -torch.ones_like(logits)
    rows = torch.arange(n, device=logits.device)
    signs[rows, offset + rows] = 1.0  # m1_diag1: +1 for my positives, -1 for every negative
    nll = -F.logsigmoid(signs * logits).sum(dim=-1)
    return nll.sum() * world / texts.shape[0]


def softmax_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True
) -> torch.Tensor:
    """The CLIP softmax loss, as big_vision ``trainers/proj/image_text/_deprecated_contrastive.py softmax_loss``.

    ``0.5 * (cross-entropy image->texts + cross-entropy text->images)`` with ``logits = z1 @ z2.T * exp(t)``
    (big_vision adds no bias here). With several processes each process's rows are scored against every
    process's columns (big_vision ``all_gather``), scaled as in `sigmoid_loss`.
    """
    if gather:
        images, offset, world = gather_embeddings(image_embeds)
        texts, _, _ = gather_embeddings(text_embeds)
    else:
        images, texts, offset, world = image_embeds, text_embeds, 0, 1
    scale = logit_scale.exp()
    labels = offset + torch.arange(image_embeds.shape[0], device=image_embeds.device)
    i2t = F.cross_entropy(image_embeds @ texts.t() * scale, labels, reduction="sum")
    t2i = F.cross_entropy(text_embeds @ images.t() * scale, labels, reduction="sum")
    return 0.5 * (i2t + t2i) * world / texts.shape[0]


# ---------------------------------------------------------------------------------------------------------
# Text tower (big_vision proj.image_text.text_transformer)
# ---------------------------------------------------------------------------------------------------------


class BvTextEmbeddings(nn.Module):
    """``nn.Embed`` + learned ``pos_embedding [1, L, D]`` (big_vision ``text_transformer._Model``; no dropout)."""

    def __init__(self, config: BvTextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.max_position_embeddings, config.hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n, max_len = input_ids.shape[1], self.position_embedding.shape[1]
        if n > max_len:
            raise ValueError(
                f"input_ids have {n} tokens but the text tower has {max_len} positions (big_vision's text length); "
                f"tokenize with max_length={max_len}"
            )
        # big_vision's posemb length IS the text length; shorter inputs use the first positions (as SiglipTextModel).
        return self.token_embedding(input_ids) + self.position_embedding[:, :n]  # out["embedded"] + posemb


@dataclass
class BvTextModelOutput(BaseModelOutputWithPooling):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, projection_size)`):
        big_vision ``out["logits"]``: the ``head`` output (the pooled token when there is no head).
    pre_logits (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        big_vision ``out["pre_logits"]``: the pooled token, before the ``head``.
    """

    pre_logits: torch.FloatTensor | None = None


class BvTextTowerMixin:
    """The ``forward`` of big_vision's text towers: ``input_ids`` -> the tower's `encode_text` (the encoded tokens,
    ``out["transformed"]``, and the pooled token, ``out["pre_logits"]``) -> ``head`` Dense -> ``out["logits"]``
    (the pooled token itself without a head), as ``text_transformer._Model`` and ``flaxformer/bert.py`` end."""

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encoded tokens, pooled token)``: defined by each tower."""
        raise NotImplementedError

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BvTextModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
            Token ids as the tower's big_vision text pp gives them (`BvTextTokenizer`: sticky EOS, padded to the
            text length; `BvBertTokenizer`: ``[CLS]`` first, 0-padded).
        attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*): 1 for tokens to attend to
            (see the tower's class).
        """
        encoded, pooled = self.encode_text(input_ids, attention_mask, **kwargs)
        logits = self.head(pooled) if self.head is not None else pooled  # out["logits"]
        return BvTextModelOutput(last_hidden_state=encoded, pooler_output=logits, pre_logits=pooled)


class BvTextPreTrainedModel(BvViTPreTrainedModel):
    config: BvTextConfig
    config_class = BvTextConfig
    base_model_prefix = "text_model"
    main_input_name = "input_ids"
    input_modalities = ("text",)

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision's flax initialisers (``text_transformer._Model``); loaded tensors are left alone."""
        super()._init_weights(module)
        if isinstance(module, BvTextEmbeddings):
            init.default_flax_embed_init_(module.token_embedding.weight)  # flax nn.Embed default
            init.normal_(module.position_embedding, std=1 / np.sqrt(module.config.hidden_size))
        elif isinstance(module, BvTextTransformer) and module.head is not None:
            init_flax_dense_(module.head)


class BvTextTransformer(BvTextTowerMixin, BvTextPreTrainedModel):
    r"""big_vision's text tower: token embedding + learned posemb -> `BvViTEncoder` (bidirectional) -> pool -> head.

    Pools (big_vision ``pool_type``): ``last`` (big_vision assumes sticky-EOS tokenization, so the last token is
    EOS or padding), ``first``, ``gap`` (mean), ``max``, ``map`` (`BvMAPHead`). ``attention_mask`` (optional; big_vision
    never masks and `BvTextTokenizer` returns none) masks padded keys in the encoder and the MAP head, as
    ``SiglipTextModel`` does; pooling ignores it.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_two_towers import BvTextConfig
        >>> from big_vision_hf.modeling.modeling_bv_two_towers import BvTextTransformer
        >>> config = BvTextConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
        ...                       num_attention_heads=2, max_position_embeddings=8, pool_type="map", projection_size=16)
        >>> BvTextTransformer(config)(torch.ones(2, 8, dtype=torch.long)).pooler_output.shape
        torch.Size([2, 16])

    Parity: as `BvTwoTowerModel`.
    """

    _input_embed_layer = "token_embedding"  # transformers' get/set_input_embeddings: `embeddings.token_embedding`

    def __init__(self, config: BvTextConfig):
        super().__init__(config)
        self.embeddings = BvTextEmbeddings(config)
        self.encoder = BvViTEncoder(config)
        self.map_head = BvMAPHead(config) if config.pool_type == "map" else None
        self.head = nn.Linear(config.hidden_size, config.projection_size) if config.projection_size else None
        self.post_init()

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embeddings(input_ids)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=embeddings, attention_mask=attention_mask)
        encoded = self.encoder(embeddings, attention_mask=mask, **kwargs)  # out["transformed"]
        probe_mask = None
        if self.config.pool_type == "map":  # the probe attends to the unpadded keys only
            probe_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=encoded[:, :1],
                attention_mask=attention_mask,
                encoder_hidden_states=encoded,
            )
        return encoded, pool(encoded, self.config.pool_type, map_head=self.map_head, map_attention_mask=probe_mask)


class BvBertTextTransformer(BvTextTowerMixin, BertPreTrainedModel):
    r"""big_vision's BERT text tower (``big_vision/models/proj/flaxformer/bert.py``, LiT): flaxformer's
    ``BertEncoder`` -> the ``[CLS]`` position (no BERT pooler) -> ``head`` Dense. transformers' BERT modules
    (`BertEmbeddings`, `BertEncoder`) compute exactly flaxformer's BERT: token + position + segment embeddings,
    LayerNorm, post-LN layers (attention -> dense -> residual -> LayerNorm; MLP -> dense -> residual -> LayerNorm),
    queries scaled by ``1/sqrt(head_dim)``, LayerNorm eps 1e-12, tanh GELU (``config.hidden_act``).

    As ``bert.py`` calls it: positions ``0..L-1``, segment ids all 0, and the attention mask is ``input_ids != 0``
    (token id 0 is padding whatever the tokenizer; an ``attention_mask`` passed in is combined with it). flaxformer
    also masks padded *queries* (their rows average every position), transformers does not: ``last_hidden_state``
    differs from big_vision's ``out["transformed"]`` at padded positions only, which nothing downstream reads.

    big_vision ``out`` -> outputs: ``out["transformed"]`` -> ``last_hidden_state``, ``out["pre_logits"]`` ->
    ``pre_logits``, ``out["logits"]`` -> ``pooler_output`` (= ``pre_logits`` without a head).

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_two_towers import BvBertTextConfig
        >>> from big_vision_hf.modeling.modeling_bv_two_towers import BvBertTextTransformer
        >>> config = BvBertTextConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
        ...                           num_attention_heads=2, max_position_embeddings=16, projection_size=24)
        >>> BvBertTextTransformer(config)(torch.tensor([[2, 7, 9, 0, 0]])).pooler_output.shape
        torch.Size([1, 24])

    Parity: as `BvTwoTowerModel` (fixture ``lit_bert``).
    """

    config: BvBertTextConfig
    config_class = BvBertTextConfig
    base_model_prefix = "text_model"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    _input_embed_layer = "word_embeddings"  # transformers' get/set_input_embeddings: `embeddings.word_embeddings`

    def __init__(self, config: BvBertTextConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.head = nn.Linear(config.hidden_size, config.projection_size) if config.projection_size else None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """BERT's initialisers (flaxformer: truncated normal 0.02, as transformers' BERT); big_vision's head."""
        super()._init_weights(module)
        if isinstance(module, BvBertTextTransformer) and module.head is not None:
            # bert.py: `kernel_init=zeros if head_zeroinit`, else nn.Dense's
            init_flax_dense_(module.head, zero_kernel=module.config.head_zeroinit)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attention_mask`` is combined with big_vision's own mask ``input_ids != 0``."""
        mask = input_ids != 0  # bert.py: `input_mask=text.astype(jnp.bool_)`
        if attention_mask is not None:
            mask = mask & attention_mask.bool()
        embeddings = self.embeddings(input_ids=input_ids)  # positions arange(L), segment ids 0 (as bert.py)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=embeddings, attention_mask=mask)
        encoded = self.encoder(embeddings, attention_mask=mask, **kwargs).last_hidden_state  # out["transformed"]
        return encoded, pool(encoded, "first")  # out["pre_logits"]: the [CLS] token


# big_vision two_towers `text_model` -> the text tower's class.
# Keyed by model_type, not config class: remote code (trust_remote_code) loads its own copy of the config classes.
TEXT_TOWERS = {BvTextConfig.model_type: BvTextTransformer, BvBertTextConfig.model_type: BvBertTextTransformer}


# ---------------------------------------------------------------------------------------------------------
# Two towers (big_vision proj.image_text.two_towers)
# ---------------------------------------------------------------------------------------------------------


class BvTwoTowerPreTrainedModel(BvViTPreTrainedModel):
    config: BvTwoTowerConfig
    config_class = BvTwoTowerConfig
    base_model_prefix = "two_towers"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BvTwoTowerModel):
            init.constant_(module.logit_scale, module.config.logit_scale_init)  # t = log(temperature_init)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, module.config.bias_init)
            if module.vision_head is not None:  # the vit `head`
                init_flax_dense_(module.vision_head, zero_kernel=module.config.vision_config.head_zeroinit)


class BvTwoTowerModel(BvTwoTowerPreTrainedModel):
    r"""big_vision two towers: `BvViTModel` (+ ``img/head``) for images, `BvTextTransformer` for text, both
    embeddings normalised as big_vision does (``z / (||z|| + 1e-8)``), ``logits = zimg @ ztxt.T * exp(t) (+ b)``.

    ``return_loss=True`` gives the loss of ``config.loss`` (`sigmoid_loss` / `softmax_loss`; with several
    ``torch.distributed`` processes, e.g. ``accelerate launch``, every process's embeddings are negatives, as in
    big_vision), so the model trains with ``Trainer`` (a collator adding ``return_loss=True``).
    ``config.lock_image_tower`` (LiT) freezes the image tower and its head. Softmax-trained models use this class
    (``model_type="bv_two_towers"``); sigmoid-trained ones `BvSiglipModel` (``"bv_siglip"``), so that the
    ``zero-shot-image-classification`` pipeline scores with sigmoid or softmax as the model was trained.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_two_towers import BvSiglipConfig
        >>> from big_vision_hf.modeling.modeling_bv_two_towers import BvSiglipModel
        >>> config = BvSiglipConfig(
        ...     vision_config=dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
        ...                        patch_size=8, image_size=32, pool_type="gap", posemb="sincos2d"),
        ...     text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
        ...                      num_attention_heads=2, max_position_embeddings=8, pool_type="map"))
        >>> model = BvSiglipModel(config).eval()
        >>> out = model(input_ids=torch.ones(3, 8, dtype=torch.long), pixel_values=torch.zeros(2, 3, 32, 32),
        ...             return_loss=False)
        >>> tuple(out.logits_per_image.shape)
        (2, 3)

    Parity: ``big_vision.models.proj.image_text.two_towers.Model`` with ``text_transformer`` at commit 0127fb6,
    fp32, eager and sdpa (``tests/test_two_towers.py``): fixture ``siglip_scan_heads`` (scanned towers, gap + sincos
    image pool, MAP text pool, both heads) max abs error 1.5e-7 on ``zimg``/``ztxt``, 1e-6 on
    ``derived/siglip_logits``, 2.4e-6 on the tower intermediates; fixture ``siglip`` converted into this class
    (``target="bv"``) 1.9e-7 / 1.9e-6. Without ``b`` (softmax-trained) the class is `BvTwoTowerModel`. With the
    NaFlex image tower (``tests/test_siglip2_naflex_two_towers.py``, fixture ``siglip2_naflex``: ``learn_2d``
    posemb, ``nposemb=4``, big_vision's NaFlex pp inputs with pads, through the CLI): 1.5e-7 on ``zimg``/``ztxt``,
    9.5e-7 on ``derived/siglip_logits``, 1.7e-6 on the image tower's patch tokens.
    """

    def __init__(self, config: BvTwoTowerConfig):
        super().__init__(config)
        vision = config.vision_config
        # big_vision `image_model`: "vit", or "proj.image_text.naflex_vit" (SigLIP 2 NaFlex; patches + masks in)
        self.is_naflex = config.image_model == "proj.image_text.naflex_vit"
        self.vision_model = (BvNaFlexViTModel if self.is_naflex else BvViTModel)._from_config(vision)
        width = vision.representation_size or vision.hidden_size
        self.vision_head = nn.Linear(width, config.vision_projection_size) if config.vision_projection_size else None
        self.text_model = TEXT_TOWERS[config.text_config.model_type]._from_config(config.text_config)
        if config.embed_dim_image != config.text_config.embed_dim:
            raise ValueError(
                f"image embeddings have {config.embed_dim_image} dims but text embeddings "
                f"{config.text_config.embed_dim}: set vision_projection_size / text_config.projection_size "
                "(big_vision out_dim) to match"
            )
        self.logit_scale = nn.Parameter(torch.full((1,), config.logit_scale_init))  # big_vision `t` (log temperature)
        self.logit_bias = nn.Parameter(torch.full((1,), config.bias_init)) if config.bias_init is not None else None
        self.post_init()
        self._lock_image_tower()

    def _lock_image_tower(self) -> None:
        """LiT: no gradients for the image tower and its head (``config.lock_image_tower``)."""
        if self.config.lock_image_tower:
            for module in (self.vision_model, self.vision_head):
                if module is not None:
                    module.requires_grad_(False)

    def train(self, mode: bool = True):
        # Loading re-creates the parameters (requires_grad=True) and ends with `.eval()`; `Trainer` calls `.train()`:
        # re-apply the lock at both, so optimizers and DDP never see the locked tower as trainable.
        super().train(mode)
        self._lock_image_tower()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.set_input_embeddings(value)

    def _vision(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, naflex_inputs=None, **kwargs):
        """``(image tower outputs, unnormalised image embedding)``; no gradients with a locked image tower.

        ``naflex_inputs``: a NaFlex tower's ``pixel_attention_mask``/``spatial_shapes``/``patch_coords``, and the
        packed-image inputs of either tower (``segment_ids``, ``spatial_shapes``, ``patch_coords``; NaViT)."""
        naflex_inputs = {k: v for k, v in (naflex_inputs or {}).items() if v is not None}
        packed = "segment_ids" in naflex_inputs or isinstance(pixel_values, (list, tuple))
        vit_inputs = ("segment_ids", "spatial_shapes", "patch_coords") if packed else ()
        vit_inputs += ("packed_attention",)
        if not self.is_naflex and any(k not in vit_inputs for k in naflex_inputs):
            raise ValueError(f"{', '.join(naflex_inputs)} are NaFlex image inputs; this image tower is a ViT")
        with torch.no_grad() if self.config.lock_image_tower else nullcontext():
            if self.is_naflex or packed:
                outputs = self.vision_model(pixel_values, **naflex_inputs, **kwargs)
            else:
                outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
            pooled = outputs.pooler_output  # out["img/pre_logits"]
            embedding = self.vision_head(pooled) if self.vision_head is not None else pooled  # out["img/logits"]
        return outputs, embedding

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        patch_coords: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BvViTModelOutput:
        """The image tower's outputs with ``pooler_output`` = the image embedding before normalisation
        (big_vision ``img/logits``, or ``img/pre_logits`` without an image head). A NaFlex tower takes
        ``pixel_attention_mask``/``spatial_shapes``/``patch_coords`` (see `BvNaFlexViTModel`).

        Packed images (NaViT), either tower: ``segment_ids`` with ``spatial_shapes``/``patch_coords`` (e.g. from
        `BvNaViTImageProcessor`), or ``pixel_values`` as a list of ``[3, H, W]`` images of any sizes (whole
        patches), packed into one sequence; ``pooler_output`` is then ``[num_images, D]`` and ``packed_attention``
        picks the attention path (see `BvViTModel.encode_packed`)."""
        naflex = dict(pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes,
                      patch_coords=patch_coords, segment_ids=segment_ids)
        outputs, embedding = self._vision(pixel_values, interpolate_pos_encoding, naflex, **kwargs)
        outputs.pooler_output = embedding
        return outputs

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BvTextModelOutput:
        """The text tower's outputs; ``pooler_output`` is the text embedding before normalisation (``txt/logits``)."""
        return self.text_model(input_ids, attention_mask=attention_mask, **kwargs)

    def contrastive_loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """``config.loss`` on normalised embeddings of matching pairs (see `sigmoid_loss`, `softmax_loss`)."""
        gather = self.config.gather_negatives
        if self.config.loss == "sigmoid":
            return sigmoid_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias, gather=gather)
        return softmax_loss(image_embeds, text_embeds, self.logit_scale, gather=gather)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        patch_coords: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        packed_attention: str | None = None,
        **kwargs,
    ) -> SiglipOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(text_batch_size, text_length)`, *optional*):
            Token ids from `BvTextTokenizer` (big_vision's text pp).
        pixel_values (`torch.FloatTensor` of shape `(image_batch_size, 3, height, width)`, *optional*):
            Images in [-1, 1] (big_vision ``value_range(-1, 1)``), e.g. from `BvImageProcessor`.
        attention_mask (`torch.Tensor`, *optional*): see `BvTextTransformer` (big_vision uses none).
        return_loss (`bool`, *optional*): also return ``config.loss`` (needs matched pairs: row ``i`` of the images
            goes with row ``i`` of the texts).
        interpolate_pos_encoding (`bool`): resample a learned image posemb to the input's grid (see `BvViTModel`).
        pixel_attention_mask, spatial_shapes, patch_coords: the inputs of a NaFlex image tower (``image_model=
            "proj.image_text.naflex_vit"``; then ``pixel_values`` are patches ``[B, N, p*p*3]``), as
            `BvNaFlexImageProcessor` / transformers' ``Siglip2Model`` take them (see `BvNaFlexViTModel`).
        segment_ids, packed_attention: packed images (NaViT; see `get_image_features`): the image embeddings are one
            per image, in the packed order, and ``return_loss`` pairs image ``i`` with text row ``i``.
        """
        if input_ids is None and pixel_values is None:
            raise ValueError("pass input_ids and/or pixel_values")
        vision_outputs = text_outputs = image_embeds = text_embeds = None
        if pixel_values is not None:
            naflex = dict(pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes,
                          patch_coords=patch_coords, segment_ids=segment_ids, packed_attention=packed_attention)
            vision_outputs, embedding = self._vision(pixel_values, interpolate_pos_encoding, naflex, **kwargs)
            image_embeds = l2_normalize(embedding)  # zimg
        if input_ids is not None:
            text_outputs = self.text_model(input_ids, attention_mask=attention_mask, **kwargs)
            text_embeds = l2_normalize(text_outputs.pooler_output)  # ztxt
        return contrastive_output(
            image_embeds, text_embeds, self.logit_scale, self.logit_bias,
            loss_fn=self.contrastive_loss if return_loss else None, inputs="input_ids and pixel_values",
            vision_model_output=vision_outputs, text_model_output=text_outputs,
        )


class BvSiglipModel(BvTwoTowerModel):
    r"""`BvTwoTowerModel` of a SigLIP-trained (sigmoid loss) model: ``model_type="bv_siglip"``, so transformers'
    ``zero-shot-image-classification`` pipeline scores with sigmoid (and asks for ``max_length`` text padding).

    Parity: as `BvTwoTowerModel`.
    """

    config: BvSiglipConfig
    config_class = BvSiglipConfig
