"""PyTorch port of big_vision's NaFlex ViT (``big_vision/models/proj/image_text/naflex_vit.py``), SigLIP 2 NaFlex.

NaFlex = NaViT + FlexiViT: the image is resized to at most ``max_num_patches`` patches keeping its aspect ratio,
cut into patches, padded, and encoded with masks; the learned ``nposemb x nposemb`` posemb is resized to each
image's patch grid. Everything after the embeddings is `BvViTModel`'s trunk (encoder, pooling, MAP head,
``rep_size``; `BvNaFlexViTModel` is a `BvViTModel` with NaFlex embeddings), run with big_vision naflex's padding
masks (``BvViTModel.encode(valid=...)``): big_vision naflex reuses ``vit.MlpBlock``, its ``Encoder1DBlock``/
``MAPHead`` only add masks.

Inputs (the names of transformers' ``Siglip2VisionModel``, so one processor output feeds both):

- ``pixel_values`` ``[B, N, p*p*3]``: flattened patches in ``tf.image.extract_patches`` order (row-major inside
  the patch, channels last), values in [-1, 1]; big_vision ``patches``.
- ``pixel_attention_mask`` ``[B, N]``: 1 for a patch, 0 for padding; big_vision ``ptype`` (``ptype == 1``).
- ``spatial_shapes`` ``[B, 2]``: each image's patch grid ``(h, w)``; its ``h*w`` patches come first, row-major.
- ``patch_coords`` ``[B, N, 2]`` (optional, instead of ``spatial_shapes``): big_vision's ``(yidx, xidx)`` of every
  token, for inputs not laid out row-major. Pads conventionally have ``(0, 0)``.

big_vision ``out`` dict -> outputs (hidden-state index ``i`` is the input of encoder layer ``i``):
    ``out["with_posemb"]`` -> ``hidden_states[0]``;  ``out["encoder"]["blockNN"]["+mlp"]`` -> ``hidden_states[NN + 1]``
    ``out["encoded"]`` -> ``last_hidden_state``;  ``out["pre_logits"]`` -> ``pooler_output``;
    ``out["logits"]`` -> ``logits``
Only positions with ``pixel_attention_mask == 1`` carry meaning in the per-token outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import can_return_tuple, logging
from transformers.utils.output_capturing import capture_outputs

from ..configuration.configuration_bv_naflex import BvNaFlexViTConfig
from .modeling_bv_vit import (
    BvImageClassifierOutput,
    BvViTForImageClassification,
    BvViTModel,
    BvViTModelOutput,
    BvViTPreTrainedModel,
    image_classifier_output,
    init_flax_dense_,
    packed_coords,
    packed_layout,
    patchify_images,
    resize_grid_antialiased,
)

logger = logging.get_logger(__name__)


def patch_coords_from_spatial_shapes(spatial_shapes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[B, 2]`` grids -> ``[B, N, 2]`` ``(yidx, xidx)``: row-major for the first ``h*w`` tokens, ``(0, 0)`` after.

    This is what big_vision's ``patchify`` + ``pad_to_shape`` produce.
    """
    spatial_shapes = spatial_shapes.to(torch.long)
    h, w = spatial_shapes[:, :1], spatial_shapes[:, 1:]
    if bool(((h < 1) | (w < 1)).any()) or bool((h * w > num_tokens).any()):
        raise ValueError(f"spatial_shapes {spatial_shapes.tolist()} do not fit sequences of {num_tokens} tokens")
    n = torch.arange(num_tokens, device=spatial_shapes.device)[None, :]
    valid = n < h * w
    return torch.stack([torch.where(valid, n // w, 0), torch.where(valid, n % w, 0)], dim=-1)


def naflex_position_embeddings(
    posemb: torch.Tensor, patch_coords: torch.Tensor, canvas_size: int, shapes: torch.Tensor | None = None
) -> torch.Tensor:
    """big_vision ``naflex_vit._pos_emb_resize``: the posemb of every token ``[B, N, D]``.

    Per example, the ``[n, n, D]`` posemb is resized to ``shape = patch_coords.max(1) + 1`` with
    ``jax.image.scale_and_translate(bilinear, antialias=True)`` (:func:`resize_grid_antialiased`), then gathered
    at ``(yidx, xidx)``. big_vision resizes onto an ``L x L`` canvas (``L = canvas_size``) and gathers with
    ``mode="fill"``: tokens at ``yidx >= L`` or ``xidx >= L`` get NaN, reproduced here.

    ``shapes`` (``[B, N, 2]``, per token; packed images, NaViT) gives each token's image grid instead of the
    example's ``max + 1`` (which token dropping would change); each distinct grid is resized once.
    """
    n_y, n_x, dim = posemb.shape
    coords = patch_coords.to(torch.long)
    if shapes is None:
        shapes = (coords.amax(dim=1) + 1)[:, None, :].expand_as(coords)  # big_vision `coords.max(axis=1) + 1`
    shapes = shapes.to(torch.long)
    out = posemb.new_empty(*coords.shape[:-1], dim)
    for shape in torch.unique(shapes.reshape(-1, 2), dim=0).tolist():
        sel = (shapes == torch.tensor(shape, device=shapes.device)).all(dim=-1)
        h, w = shape
        if (h, w) == (n_y, n_x):  # scale 1: the identity, as jax's weights at integer offsets
            resized = posemb.reshape(n_y * n_x, dim)
        else:
            resized = resize_grid_antialiased(posemb, (h, w)).reshape(h * w, dim)
        out[sel] = resized[coords[sel, 0] * w + coords[sel, 1]]
    outside = (coords >= canvas_size).any(dim=-1, keepdim=True)
    return out.masked_fill(outside, float("nan"))


def factorized_position_embeddings(
    table_y: torch.Tensor, table_x: torch.Tensor, patch_coords: torch.Tensor, shapes: torch.Tensor, fractional: bool
) -> torch.Tensor:
    """NaViT's factorised posemb (https://arxiv.org/abs/2307.06304, sec. 2.1): ``phi_y(y) + phi_x(x)`` ``[..., D]``
    from two learned ``[n, D]`` tables (NaViT publishes no code; this is our reading of the paper).

    Absolute (``fractional=False``): the tables are indexed by the patch row/column; rows/columns ``>= n`` get NaN.
    Fractional: each coordinate becomes the patch centre's fraction of its image side, ``(i + 0.5) / side``,
    read in the table at ``fraction * n - 0.5`` with linear interpolation (clamped at both ends; for ``side == n``
    exactly the table entry): the same embedding for the same relative position at any resolution.
    """
    coords, shapes = patch_coords.to(torch.long), shapes.to(torch.long)

    def read(table: torch.Tensor, index: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        n = table.shape[0]
        if not fractional:
            out = table[index.clamp(max=n - 1)]
            return out.masked_fill((index >= n)[..., None], float("nan"))
        pos = ((index.to(torch.float64) + 0.5) / side * n - 0.5).clamp(0, n - 1)
        low = pos.floor().to(torch.long)
        high = (low + 1).clamp(max=n - 1)
        frac = (pos - low).to(table.dtype)[..., None]
        return table[low] * (1 - frac) + table[high] * frac

    return read(table_y, coords[..., 0], shapes[..., 0]) + read(table_x, coords[..., 1], shapes[..., 1])


class BvNaFlexViTEmbeddings(nn.Module):
    """big_vision naflex: [``patchln_pre``] -> ``embedding`` Dense -> [``patchln_post``] -> + resized 2-D posemb.

    ``patch_embedding`` is the ``embedding`` Dense ``[p*p*3, D]``: the ViT's conv kernel reshaped in
    ``tf.image.extract_patches`` order. There is no dropout here (big_vision naflex has none after the posemb).
    With ``config.posemb`` ``"factorized"``/``"factorized_fractional"`` (NaViT) the posemb is two ``[nposemb, D]``
    tables, ``position_embedding_y``/``position_embedding_x`` (`factorized_position_embeddings`).
    """

    def __init__(self, config: BvNaFlexViTConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.patchln_pre = nn.LayerNorm(config.patch_dim, eps=config.layer_norm_eps) if config.patchln_pre else None
        self.patch_embedding = nn.Linear(config.patch_dim, d)
        self.patchln_post = nn.LayerNorm(d, eps=config.layer_norm_eps) if config.patchln_post else None
        self.factorized = config.posemb.startswith("factorized")
        if self.factorized:
            self.position_embedding_y = nn.Parameter(torch.zeros(config.nposemb, d))
            self.position_embedding_x = nn.Parameter(torch.zeros(config.nposemb, d))
        else:
            self.position_embedding = nn.Parameter(torch.zeros(config.nposemb, config.nposemb, d))

    def forward(
        self, pixel_values: torch.Tensor, patch_coords: torch.Tensor, shapes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``shapes`` (``[B, N, 2]``, optional): each token's image grid (packed images); default the example's
        ``max(patch_coords) + 1``, as big_vision naflex."""
        x = pixel_values.to(self.patch_embedding.weight.dtype)
        if self.patchln_pre is not None:
            x = self.patchln_pre(x)
        x = self.patch_embedding(x)  # out["stem"]
        if self.patchln_post is not None:
            x = self.patchln_post(x)
        if self.factorized:
            if shapes is None:
                shapes = (patch_coords.to(torch.long).amax(dim=1) + 1)[:, None, :].expand_as(patch_coords)
            pe = factorized_position_embeddings(
                self.position_embedding_y, self.position_embedding_x, patch_coords, shapes,
                fractional=self.config.posemb == "factorized_fractional",
            )
        else:
            pe = naflex_position_embeddings(
                self.position_embedding, patch_coords, self.config.posemb_canvas_size, shapes
            )
        return x + pe  # out["with_posemb"]


class BvNaFlexViTPreTrainedModel(BvViTPreTrainedModel):
    config: BvNaFlexViTConfig
    config_class = BvNaFlexViTConfig
    # Additive float masks with fully masked (pad) rows: flash/flex kernels are not used.
    _supports_flash_attn = False
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module):
        """big_vision naflex's flax initialisers on top of the ViT's (attention, MLP, MAP head, rep_size, head)."""
        super()._init_weights(module)
        if isinstance(module, BvNaFlexViTEmbeddings):
            init_flax_dense_(module.patch_embedding)  # the `embedding` nn.Dense
            tables = ((module.position_embedding_y, module.position_embedding_x) if module.factorized
                      else (module.position_embedding,))
            for table in tables:
                init.normal_(table, std=1 / np.sqrt(module.config.hidden_size))


class BvNaFlexViTModel(BvNaFlexViTPreTrainedModel, BvViTModel):
    r"""big_vision NaFlex ViT without the classification head: returns ``pre_logits`` as ``pooler_output``.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
        >>> from big_vision_hf.modeling.modeling_bv_naflex import BvNaFlexViTModel
        >>> config = BvNaFlexViTConfig.from_variant("mu/8", pool_type="map", nposemb=4)
        >>> model = BvNaFlexViTModel(config).eval()
        >>> patches = torch.zeros(2, 16, 8 * 8 * 3)  # two images: a 3x5 and a 4x2 patch grid, padded to 16
        >>> out = model(patches, spatial_shapes=torch.tensor([[3, 5], [4, 2]]))
        >>> tuple(out.pooler_output.shape)
        (2, 32)

    Parity: ``big_vision.models.proj.image_text.naflex_vit._Model`` at commit 0127fb6, ``posemb="learn_2d(16)"``,
    ``nposemb=4``, MAP pool, inputs made by big_vision's own NaFlex pp ops (two aspect ratios, 1 and 8 pad tokens):
    fp32 max abs error on ``logits``, ``pre_logits`` and the patch tokens of ``encoded`` below 1e-5
    (``tests/test_bv_naflex.py``). Deviations: none known; pad positions of per-token outputs are not compared
    (meaningless in big_vision too).

    Packed images (NaViT, ``segment_ids``; not in big_vision): each image's logits, pooled output, patch tokens and
    gradients equal its unpacked forward within 1e-5, dense and variable-length attention; the fixture's two
    images in one packed sequence give big_vision's logits (7e-7) and tokens (1.3e-6) (``tests/test_navit.py``).
    """

    embeddings_class = BvNaFlexViTEmbeddings  # the rest of the trunk (encoder, MAP head, rep_size) is the ViT's

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        patch_coords: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        packed_attention: str = "auto",
        **kwargs,
    ) -> BvViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size * patch_size * 3)`):
            Flattened patches in [-1, 1] (big_vision ``patches``), e.g. from `BvNaFlexImageProcessor`.
        pixel_attention_mask (`torch.Tensor` of shape `(batch_size, num_patches)`, *optional*):
            1 for patches, 0 for padding (big_vision ``ptype``; only ``== 1`` counts as a patch). Default: the first
            ``h*w`` tokens of ``spatial_shapes``, or every token when only ``patch_coords`` is given.
        spatial_shapes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
            Patch grid ``(h, w)`` of every image; its patches come first, row-major (what the processor makes).
        patch_coords (`torch.LongTensor` of shape `(batch_size, num_patches, 2)`, *optional*):
            big_vision ``(yidx, xidx)`` of every token; used instead of ``spatial_shapes`` when given.
        segment_ids (`torch.LongTensor` of shape `(num_sequences, length)`, *optional*):
            Packed images (NaViT, ``modeling_bv_vit``): several images per sequence, runs numbered ``1, 2, ...``
            per row, 0 for padding (``pixel_attention_mask`` is then not used). ``spatial_shapes`` is then
            ``[num_images, 2]`` (each image's full grid, needed with token dropping) and ``patch_coords`` defaults
            to complete row-major images. Outputs: ``pooler_output [num_images, D]``, ``last_hidden_state`` in the
            input layout (see `BvViTModel.encode_packed`); each image's outputs equal its unpacked forward.
            ``pixel_values`` may also be a list of ``[C, H, W]`` images (already resized to whole patches), packed
            into one sequence.
        packed_attention (`str`): the attention path of packed images (`resolve_packed_attention`):
            ``"auto"`` (default), ``"dense"`` (block-diagonal mask), ``"varlen"``/``"segments"``/``"flex"``/``"flash"``.
        """
        if isinstance(pixel_values, (list, tuple)):
            packed = patchify_images(pixel_values, self.config.patch_size)
            pixel_values, segment_ids = packed["pixel_values"], packed["segment_ids"]
            patch_coords, spatial_shapes = packed["patch_coords"], packed["spatial_shapes"]
        if segment_ids is not None:
            layout = packed_layout(segment_ids.to(pixel_values.device))
            coords, shapes = packed_coords(layout, patch_coords, spatial_shapes)
            self._warn_outside_canvas(coords)
            embeddings = self.embeddings(layout.gather(pixel_values)[None], coords[None], shapes[None])[0]
            return self.encode_packed(embeddings, layout, packed_attention, **kwargs)
        num_tokens = pixel_values.shape[1]
        if patch_coords is None:
            if spatial_shapes is None:
                raise ValueError("pass spatial_shapes (batch, 2) or patch_coords (batch, tokens, 2)")
            patch_coords = patch_coords_from_spatial_shapes(spatial_shapes.to(pixel_values.device), num_tokens)
        if pixel_attention_mask is None:
            if spatial_shapes is not None:
                hw = spatial_shapes.to(pixel_values.device).to(torch.long).prod(dim=-1, keepdim=True)
                valid = torch.arange(num_tokens, device=pixel_values.device)[None] < hw
            else:
                valid = torch.ones(pixel_values.shape[:2], dtype=torch.bool, device=pixel_values.device)
        else:
            valid = pixel_attention_mask.to(pixel_values.device) == 1  # big_vision `ptype == 1`
        patch_coords = patch_coords.to(pixel_values.device)
        self._warn_outside_canvas(patch_coords[valid])
        embeddings = self.embeddings(pixel_values, patch_coords)
        return self.encode(embeddings, valid=valid, **kwargs)  # the ViT's, with big_vision naflex's masks

    def _warn_outside_canvas(self, coords: torch.Tensor) -> None:
        canvas = self.config.posemb_canvas_size
        if not torch.compiler.is_compiling() and bool((coords >= canvas).any()):
            logger.warning_once(
                f"patches at row/column >= {canvas} get a NaN posemb, as in big_vision (posemb='learn_2d({canvas})'); "
                "use fewer patches per side, or a larger canvas (config.posemb='learn_2d(L)'; big_vision: it can be "
                "adjusted post-hoc without retraining)"
            )


class BvNaFlexViTForImageClassification(BvNaFlexViTPreTrainedModel, BvViTForImageClassification):
    r"""big_vision NaFlex ViT with its ``head`` Dense: ``logits = head(pre_logits)``.

    Example:
        >>> import torch
        >>> from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
        >>> from big_vision_hf.modeling.modeling_bv_naflex import BvNaFlexViTForImageClassification
        >>> config = BvNaFlexViTConfig.from_variant("mu/8", nposemb=4, num_labels=10)
        >>> model = BvNaFlexViTForImageClassification(config).eval()
        >>> model(torch.zeros(1, 16, 192), spatial_shapes=torch.tensor([[2, 8]])).logits.shape
        torch.Size([1, 10])

    Parity: as `BvNaFlexViTModel`; ``logits`` match big_vision ``out["logits"]``.
    """

    base_model_class = BvNaFlexViTModel

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        *,  # labels first, as in the other image classifiers; keyword-only, so no positional call mixes them up
        labels: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        patch_coords: torch.Tensor | None = None,
        **kwargs,
    ) -> BvImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices for the loss.
        pixel_attention_mask, spatial_shapes, patch_coords: see `BvNaFlexViTModel.forward`.
        """
        outputs = self.vit(pixel_values, pixel_attention_mask, spatial_shapes, patch_coords, **kwargs)
        return image_classifier_output(self, outputs, labels)
