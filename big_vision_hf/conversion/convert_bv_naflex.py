"""big_vision NaFlex ViT (``proj.image_text.naflex_vit``) -> `BvNaFlexViTModel` / `...ForImageClassification`,
and the export of a converted model into transformers' ``Siglip2VisionModel`` (:func:`export_to_siglip2`).

The tree is the ViT's, except ``embedding/kernel`` (a Dense ``[p*p*3, D]`` on flattened patches, not a conv),
``pos_embedding`` (``[nposemb, nposemb, D]``, not ``[1, N, D]``) and the optional ``patchln_pre``/``patchln_post``.
The ViT's layout passes (``fix_old_checkpoints``, scan -> loop) and rule helpers are reused; the posemb is kept
out of them: big_vision ``naflex_vit.load = vit.load``, whose ``fix_old_checkpoints`` reads ``pos_embedding``
as ``[1, N, D]`` and would cut the first row off a posemb with ``nposemb == k**2 + 1`` (5, 10, 17, ...).

A NaFlex tree has the ViT's names, so the family must be named: ``--model-name proj.image_text.naflex_vit``.

SigLIP 2 NaFlex two towers (``proj.image_text.two_towers`` with ``image_model="proj.image_text.naflex_vit"``) are
built here too (:func:`build_naflex_two_towers`, called by the two-tower builder): by default into our exact
`BvSiglipModel` with a `BvNaFlexViTModel` image tower, or with ``target="transformers"`` (CLI ``--target
transformers``) into transformers' ``Siglip2Model``, which is close but not exact; the folder's model card then
carries its measured deviation from the exact class (:func:`siglip2_model_parity_note`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..configuration.configuration_bv_naflex import BvNaFlexViTConfig, bv_kwargs_to_naflex_config
from ..configuration.configuration_bv_vit import BV_VIT_KWARGS
from ..modeling.modeling_bv_naflex import BvNaFlexViTForImageClassification, BvNaFlexViTModel
from .api import PARITY_NOTES, PROCESSORS, register_family
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import (
    HEAD_RULES,
    encoder_rules,
    infer_vit_config,
    layer_norm,
    linear,
    map_head_rules,
    prefixed,
    prepare_vit_params,
)
from .mapping import Rule, Transform, dense, identity, map_params

FAMILY = "proj.image_text.naflex_vit"

# big_vision name -> BvNaFlexViTModel name.
NAFLEX_RULES = [
    *layer_norm("patchln_pre", "embeddings.patchln_pre"),
    Rule("embedding/kernel", "embeddings.patch_embedding.weight", dense),
    Rule("embedding/bias", "embeddings.patch_embedding.bias"),
    *layer_norm("patchln_post", "embeddings.patchln_post"),
    Rule("pos_embedding", "embeddings.position_embedding", identity),
    *encoder_rules("Transformer", "encoder"),
    *map_head_rules("MAPHead_0", "map_head"),
    *linear("pre_logits", "pre_logits"),
]


def prepare_naflex_params(params: dict[str, LazyArray], prefix: str = "") -> dict[str, LazyArray]:
    """The ViT layout passes on a NaFlex (sub-)tree, with the 3-D ``pos_embedding`` kept out of them."""
    params = dict(params)
    posemb = params.pop(prefix + "pos_embedding", None)
    params = prepare_vit_params(params, prefix)
    if posemb is not None:
        params[prefix + "pos_embedding"] = posemb
    return params


def infer_naflex_config(
    params: dict[str, LazyArray], model_kwargs: dict | None = None, prefix: str = ""
) -> tuple[dict, int | None]:
    """What the arrays tell, checked against big_vision's ``config.model`` (``num_classes`` or None).

    Width, depth, heads, MLP, pool and ``rep_size`` come from `infer_vit_config` run on the shapes a ViT with the
    same patch size would have; ``patch_size`` from ``embedding/kernel [p*p*3, D]``; ``nposemb`` from
    ``pos_embedding``.
    """
    p = prefix
    try:
        kwargs = bv_kwargs_to_naflex_config(dict(model_kwargs or {}))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    num_classes_kw = (model_kwargs or {}).get("num_classes")
    if p + "embedding/kernel" not in params:
        raise CheckpointError(f"not a big_vision NaFlex ViT checkpoint: no {p}embedding/kernel array")
    kernel = params[p + "embedding/kernel"]
    if len(kernel.shape) != 2:
        raise CheckpointError(
            f"{p}embedding/kernel has shape {kernel.shape}; NaFlex's is a Dense [p*p*3, width] (a 4-D conv kernel "
            "means a plain ViT: --model-name vit)"
        )
    if p + "pos_embedding" not in params:
        raise CheckpointError(f"not a big_vision NaFlex ViT checkpoint: no {p}pos_embedding array (learn_2d posemb)")
    patch_dim, width = kernel.shape
    patch = math.isqrt(patch_dim // 3)
    if patch * patch * 3 != patch_dim:
        raise CheckpointError(f"{p}embedding/kernel takes {patch_dim} inputs, not p*p*3 for a square patch")
    posemb = params[p + "pos_embedding"].shape
    if len(posemb) != 3 or posemb[0] != posemb[1]:
        raise CheckpointError(f"{p}pos_embedding has shape {posemb}; NaFlex's is [nposemb, nposemb, width]")

    # The ViT inference on a view with a ViT-shaped kernel and no learned posemb (shapes only; nothing is read).
    view = {k: v for k, v in params.items() if k != p + "pos_embedding"}
    view[p + "embedding/kernel"] = LazyArray((patch, patch, 3, width), kernel.dtype, kernel.loader, kernel.source)
    vit_keys = {v: k for k, v in BV_VIT_KWARGS.items()}
    vit_kwargs = {vit_keys[k]: v for k, v in kwargs.items() if k in vit_keys and k not in ("posemb", "patch_size")}
    if num_classes_kw is not None:
        vit_kwargs["num_classes"] = num_classes_kw
    vit_config, num_classes = infer_vit_config(view, vit_kwargs, prefix=p)

    config = {k: v for k, v in vit_config.items() if k not in ("posemb", "image_size")}
    given_patch = kwargs.get("patch_size")
    if given_patch is not None and list(given_patch) != [patch, patch]:
        raise CheckpointError(f"model config says patch_size={list(given_patch)} but embedding/kernel is for {patch}")
    config["patch_size"] = [patch, patch]
    given_n = kwargs.get("nposemb")
    if given_n is not None and given_n != posemb[0]:
        raise CheckpointError(f"model config says nposemb={given_n} but pos_embedding is {posemb[0]}x{posemb[1]}")
    config["nposemb"] = posemb[0]
    if kwargs.get("posemb") is not None:
        config["posemb"] = kwargs["posemb"]
    for flag in ("patchln_pre", "patchln_post"):
        present = p + f"{flag}/scale" in params
        if kwargs.get(flag) is not None and bool(kwargs[flag]) != present:
            has = "has" if present else "lacks"
            raise CheckpointError(f"model config says {flag}={kwargs[flag]} but the checkpoint {has} it")
        config[flag] = present
    return config, num_classes


@register_family(FAMILY)
def build_naflex(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None, **_):
    """Returns ``(model class, config, {hf_name: LazyArray})`` for a NaFlex ViT checkpoint (not read yet).

    ``image_size`` is meaningless for NaFlex (any aspect ratio and size up to ``max_num_patches``) and ignored.
    """
    params = prepare_naflex_params(params)
    config_kwargs, num_classes = infer_naflex_config(params, model_kwargs)
    try:
        if num_classes:
            config = BvNaFlexViTConfig(**config_kwargs, num_labels=num_classes)
            rules = prefixed(NAFLEX_RULES, hf_prefix="vit.") + HEAD_RULES
            return BvNaFlexViTForImageClassification, config, map_params(params, rules)
        config = BvNaFlexViTConfig(**config_kwargs)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return BvNaFlexViTModel, config, map_params(params, NAFLEX_RULES)


def naflex_image_processor_for(config, preprocessing: str = "resize", max_num_patches: int = 256):
    """The folder's processor: big_vision's NaFlex eval pp at ``max_num_patches`` (256 in the SigLIP 2 README)."""
    from ..processing.image_processing_bv_naflex import BvNaFlexImageProcessor

    processor = BvNaFlexImageProcessor(patch_size=config.patch_size[0], max_num_patches=max_num_patches)
    return processor, processor.pp_string()


PROCESSORS[FAMILY] = naflex_image_processor_for


# ---------------------------------------------------------------------------------------------------------
# Export into transformers' Siglip2VisionModel (numerically close, not exact)
# ---------------------------------------------------------------------------------------------------------


def siglip2_vision_state_dict(model: BvNaFlexViTModel) -> dict[str, torch.Tensor]:
    """Our NaFlex state dict under ``Siglip2VisionModel`` names (the posemb flattened ``[n*n, D]``; the MAP head's
    q/k/v packed into ``nn.MultiheadAttention.in_proj``)."""
    sd = model.state_dict()
    out = {}
    for name, value in sd.items():
        if name.startswith("encoder.post_layernorm."):
            out[name[len("encoder."):]] = value
        elif name == "embeddings.position_embedding":
            out["embeddings.position_embedding.weight"] = value.reshape(-1, value.shape[-1])
        elif name.startswith("map_head."):
            rest = name[len("map_head."):]
            if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                continue
            out["head." + rest] = value
        else:
            out[name] = value
    if model.map_head is not None:
        att = "map_head.attention."
        for kind in ("weight", "bias"):
            out[f"head.attention.in_proj_{kind}"] = torch.cat([sd[f"{att}{p}_proj.{kind}"] for p in "qkv"], dim=0)
    return out


def _siglip2_unsupported(config: BvNaFlexViTConfig) -> list[str]:
    problems = []
    if config.patchln_pre or config.patchln_post:
        problems.append("patchln_pre/patchln_post (Dual PatchNorm)")
    if config.pool_type not in ("map", "none"):
        problems.append(f"pool_type={config.pool_type!r} (Siglip2VisionModel pools with MAP or not at all)")
    if config.representation_size:
        problems.append("rep_size (pre_logits layer)")
    if config.patch_size[0] != config.patch_size[1]:
        problems.append(f"non-square patch {config.patch_size}")
    return problems


def to_siglip2_vision_model(model: BvNaFlexViTModel):
    """A ``transformers.Siglip2VisionModel`` with our weights (fp32). Raises for what it cannot represent."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    if isinstance(model, BvNaFlexViTForImageClassification):
        raise ValueError(
            "Siglip2VisionModel has no classification head (and Siglip2ForImageClassification mean-pools instead of "
            "using the MAP head): export `model.vit` (the features) instead"
        )
    config = model.config
    problems = _siglip2_unsupported(config)
    if problems:
        raise ValueError("Siglip2VisionModel cannot represent: " + "; ".join(problems))
    s2_config = Siglip2VisionConfig(**_siglip2_vision_kwargs(config))
    s2 = Siglip2VisionModel(s2_config).eval()
    s2.load_state_dict(siglip2_vision_state_dict(model), strict=True)
    return s2.to(model.dtype)


def synthetic_naflex_inputs(config: BvNaFlexViTConfig, num_tokens: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic batch: random patches in [-1, 1] on a wide, a square, a tall and a 1x1 grid, padded to
    ``num_tokens``; no side exceeds the posemb canvas ``L`` (big_vision gives NaN beyond it)."""
    rng = np.random.default_rng(seed)
    cap = config.posemb_canvas_size
    side = min(cap, max(1, math.isqrt(num_tokens)))
    wide_h = max(1, side // 2)
    shapes = [(wide_h, min(cap, num_tokens // wide_h)), (side, side), (min(cap, num_tokens), 1), (1, 1)]
    pixel_values = rng.uniform(-1, 1, (len(shapes), num_tokens, config.patch_dim)).astype(np.float32)
    mask = np.zeros((len(shapes), num_tokens), np.int64)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
        pixel_values[i, h * w :] = 0
    return {
        "pixel_values": torch.from_numpy(pixel_values),
        "pixel_attention_mask": torch.from_numpy(mask),
        "spatial_shapes": torch.tensor(shapes, dtype=torch.long),
    }


@torch.no_grad()
def siglip2_deviation(model: BvNaFlexViTModel, siglip2_model, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences Siglip2VisionModel vs our exact model: ``pooler_output`` and patch tokens of
    ``last_hidden_state`` (pads excluded)."""
    ours = model(**inputs)
    theirs = siglip2_model(**inputs)
    valid = inputs["pixel_attention_mask"].bool()
    out = {"last_hidden_state": float((ours.last_hidden_state - theirs.last_hidden_state)[valid].abs().max())}
    if ours.pooler_output is not None and theirs.pooler_output is not None and model.config.pool_type == "map":
        out["pooler_output"] = float((ours.pooler_output - theirs.pooler_output).abs().max())
    return out


def export_to_siglip2(
    model: BvNaFlexViTModel,
    out_dir: str,
    max_num_patches: int = 256,
    inputs: dict[str, torch.Tensor] | None = None,
    source: str = "",
) -> tuple[str, dict[str, float]]:
    """Writes a ``Siglip2VisionModel`` folder (no remote code) from a converted NaFlex model; returns
    ``(out_dir, measured deviation)``.

    The deviation from our exact class (max abs error, fp32, patch tokens only) is measured on ``inputs`` (a
    processor output), or on a synthetic batch (:func:`synthetic_naflex_inputs`), and written into the model card.
    Known differences: transformers resizes the posemb per image (before 5.25 with ``F.interpolate``, which is
    wrong on 1-wide grids) and has no ``L``-canvas cap (big_vision gives NaN beyond ``L`` patches per side); its pad *queries* attend to patches (only keys are
    masked), so pad positions differ; its image processor resizes uint8 images with PIL instead of big_vision's
    float TF antialiased bilinear (the folder holds transformers' ``Siglip2ImageProcessorPil``). Not
    representable (raises): Dual PatchNorm, ``gap``/``max`` pooling, ``rep_size``, a classification head.

    A two-tower SigLIP 2 NaFlex checkpoint converts into ``Siglip2Model`` directly: :func:`build_naflex_two_towers`
    (``target="transformers"``).
    """
    from transformers import Siglip2ImageProcessorPil

    from .export import save_folder
    from .model_card import render_model_card

    model = model.float().eval()
    s2 = to_siglip2_vision_model(model)
    if inputs is None:
        inputs = synthetic_naflex_inputs(model.config, num_tokens=min(max_num_patches, 4 * model.config.nposemb**2))
    deviation = siglip2_deviation(model, s2, inputs)
    figures = ", ".join(f"{k} {v:.1e}" for k, v in deviation.items())
    note = (
        f"exported to transformers `Siglip2VisionModel`; max abs difference from the exact big_vision_hf "
        f"`BvNaFlexViTModel` (fp32, patch tokens only, {inputs['pixel_values'].shape[0]} images): {figures}. "
        "Differences: posemb resize (no L-canvas cap; before transformers 5.25 F.interpolate, wrong on 1-wide "
        "grids), pad queries unmasked, and the image processor (PIL uint8 bilinear, not big_vision's float "
        "antialiased resize_to_sequence)."
    )
    s2.config.bv_model_name = FAMILY
    s2.config.bv_model_config = getattr(model.config, "bv_model_config", {})
    processor = Siglip2ImageProcessorPil(patch_size=model.config.patch_size[0], max_num_patches=max_num_patches)
    card = render_model_card(s2, FAMILY, source or os.path.basename(out_dir.rstrip("/")), parity_note=note)
    save_folder(s2, out_dir, processor, card, remote_code=False)
    return out_dir, deviation


# ---------------------------------------------------------------------------------------------------------
# SigLIP 2 NaFlex two towers: our exact BvSiglipModel, or transformers' Siglip2Model (close, not exact)
# ---------------------------------------------------------------------------------------------------------

#: ``pos_embedding [n, n, D]`` -> ``Siglip2VisionEmbeddings.position_embedding.weight [n*n, D]`` (row-major, as
#: Siglip2 reshapes it back).
flatten_posemb = Transform("flatten_posemb", lambda x: x.reshape(-1, x.shape[-1]), lambda s: (s[0] * s[1], s[2]),
                           layout_only=True)


def _siglip2_rules():
    from .convert_two_towers import SIGLIP_RULES, _siglip_encoder_rules

    vision = [
        Rule("img/embedding/kernel", "vision_model.embeddings.patch_embedding.weight", dense),
        Rule("img/embedding/bias", "vision_model.embeddings.patch_embedding.bias"),
        Rule("img/pos_embedding", "vision_model.embeddings.position_embedding.weight", flatten_posemb),
        *_siglip_encoder_rules("img/Transformer", "vision_model.encoder", "vision_model.post_layernorm"),
        *map_head_rules("img/MAPHead_0", "vision_model.head"),
    ]
    # The text tower, t and b: as in SiglipModel (Siglip2TextModel is SiglipTextModel).
    return vision + [r for r in SIGLIP_RULES if not r.bv.startswith("img/")]


def siglip2_misfits(vision: BvNaFlexViTConfig, text: dict, image_head: int | None, has_bias: bool) -> list[str]:
    """Why transformers' ``Siglip2Model`` cannot hold this NaFlex two-tower checkpoint at all (empty: it can,
    up to the deviations listed in :func:`export_to_siglip2`)."""
    reasons = _siglip2_unsupported(vision)
    if vision.pool_type != "map":
        reasons = [r for r in reasons if not r.startswith("pool_type")] + [
            f"image pool_type {vision.pool_type!r} (Siglip2Model pools with MAP)"]
    if image_head:
        reasons.append("an image head (img/head, out_dim[0])")
    if text["pool_type"] != "last":
        reasons.append(f"text pool_type {text['pool_type']!r} (Siglip2TextModel pools the last token)")
    if text.get("dropout"):
        reasons.append("text dropout")
    if not has_bias:
        reasons.append("no bias 'b': softmax-trained (Siglip2Model adds logit_bias; pipelines score it with sigmoid)")
    return reasons


def build_naflex_two_towers(params: dict[str, LazyArray], kwargs: dict, target: str = "auto"):
    """``(model class, config, {hf_name: LazyArray})`` for a SigLIP 2 NaFlex two-tower checkpoint (not read yet).

    ``target``: ``"auto"``/``"bv"``: `BvSiglipModel` (`BvTwoTowerModel` without ``b``) with a `BvNaFlexViTModel`
    image tower, exact; ``"transformers"``: ``Siglip2Model`` (or a one-line error saying why it cannot hold it).
    """
    from ..configuration.configuration_bv_two_towers import BvTwoTowerConfig
    from ..modeling.modeling_bv_two_towers import BvSiglipModel, BvTwoTowerModel
    from .convert_two_towers import (
        BV_TWO_TOWER_RULES,
        _out_dims,
        add_identity_text_head,
        infer_text_config,
        pack_in_proj,
        prepare_two_tower_params,
        siglip_text_config,
    )

    params = prepare_two_tower_params(params, prepare_image=prepare_naflex_params)
    out_dims = _out_dims(kwargs)
    # two_towers.Model: `{"num_classes": out_dims[i], **(self.image|text or {})}`.
    image_kwargs = {**({"num_classes": out_dims[0]} if out_dims else {}), **dict(kwargs.get("image") or {})}
    text_kwargs = {**({"num_classes": out_dims[1]} if out_dims else {}), **dict(kwargs.get("text") or {})}
    vision_kwargs, image_head = infer_naflex_config(params, image_kwargs, prefix="img/")
    if "num_classes" in image_kwargs and not image_kwargs["num_classes"] and image_head:
        raise CheckpointError(f"model config says out_dim[0]=None (no image head) but the checkpoint has img/head "
                              f"({image_head} outputs)")
    text = infer_text_config(params, text_kwargs)
    has_bias = "b" in params
    if kwargs.get("bias_init") is not None and not has_bias:
        raise CheckpointError("model config sets bias_init but the checkpoint has no bias 'b'")
    try:
        vision = BvNaFlexViTConfig(**vision_kwargs)
    except ValueError as e:
        raise CheckpointError(str(e)) from None

    if target == "transformers":
        misfits = siglip2_misfits(vision, text, image_head, has_bias)
        if misfits:
            raise CheckpointError("transformers' Siglip2Model cannot represent this checkpoint: " + "; ".join(misfits))
        from transformers import Siglip2Config, Siglip2Model

        mapped = map_params(params, _siglip2_rules())
        pack_in_proj(mapped, "vision_model.head.attention")
        add_identity_text_head(mapped, text["hidden_size"])
        config = Siglip2Config(text_config=siglip_text_config(text), vision_config=_siglip2_vision_kwargs(vision))
        return Siglip2Model, config, mapped

    loss = "sigmoid" if has_bias else "softmax"
    options = {"temperature_init": kwargs["temperature_init"]} if "temperature_init" in kwargs else {}
    if has_bias:
        options["bias_init"] = kwargs.get("bias_init", -10.0)
    try:
        config = BvTwoTowerConfig.from_loss(loss, vision_config=vision, text_config=text,
                                            vision_projection_size=image_head, image_model=FAMILY, **options)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    rules = [r for r in BV_TWO_TOWER_RULES if not r.bv.startswith("img/")]
    rules += prefixed(NAFLEX_RULES, "img/", "vision_model.") + linear("img/head", "vision_head")
    cls = BvSiglipModel if loss == "sigmoid" else BvTwoTowerModel
    return cls, config, map_params(params, rules)


def _siglip2_vision_kwargs(config: BvNaFlexViTConfig) -> dict:
    """``Siglip2VisionConfig`` kwargs of a NaFlex tower."""
    return dict(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_channels=config.num_channels,
        patch_size=config.patch_size[0],
        num_patches=config.nposemb**2,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=config.attention_dropout,
        vision_use_head=config.pool_type == "map",
    )


def naflex_two_tower_processor_for(config, preprocessing: str = "resize", max_num_patches: int = 256):
    """The image processor of a NaFlex two-tower folder: big_vision's NaFlex pp (`BvNaFlexImageProcessor`) for our
    class; transformers' ``Siglip2ImageProcessorPil`` for ``Siglip2Model`` (so that the folder needs no code of
    ours; it resizes with PIL on uint8, not big_vision's float antialiased resize)."""
    if config.model_type == "siglip2":
        from transformers import Siglip2ImageProcessorPil

        processor = Siglip2ImageProcessorPil(patch_size=config.vision_config.patch_size,
                                             max_num_patches=max_num_patches)
        return processor, ""
    return naflex_image_processor_for(config.vision_config, preprocessing, max_num_patches)


def synthetic_two_tower_inputs(config, num_tokens: int = 64, num_texts: int = 3, seed: int = 0) -> dict:
    """:func:`synthetic_naflex_inputs` images plus random sticky-EOS token ids (EOS = 1 at the end)."""
    text = config.text_config
    rng = np.random.default_rng([seed, 1])
    ids = rng.integers(2, text.vocab_size, (num_texts, text.max_position_embeddings))
    for i in range(num_texts):
        ids[i, text.max_position_embeddings - 1 - i :] = 1  # sticky EOS padding of different lengths
    return {**synthetic_naflex_inputs(config.vision_config, num_tokens, seed), "input_ids": torch.from_numpy(ids)}


@torch.no_grad()
def siglip2_model_deviation(exact, siglip2_model, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences ``Siglip2Model`` vs our exact `BvSiglipModel`: embeddings, image tower pooled
    features (``img/pre_logits``) and ``logits_per_image``."""
    ours, theirs = exact(**inputs), siglip2_model(**inputs)
    names = ("image_embeds", "text_embeds", "logits_per_image")
    out = {name: float((getattr(ours, name) - getattr(theirs, name)).abs().max()) for name in names}
    out["img/pre_logits"] = float(
        (ours.vision_model_output.pooler_output - theirs.vision_model_output.pooler_output).abs().max())
    return out


def siglip2_model_parity_note(siglip2_model, checkpoint: str, kwargs: dict, max_num_patches: int = 256) -> str:
    """The model-card note of a NaFlex two-tower converted into ``Siglip2Model``: its deviation from the exact
    class, measured (fp32) on synthetic images (a wide, a square, a tall and a 1x1 patch grid) and texts."""
    from .api import convert_checkpoint

    exact = convert_checkpoint(checkpoint, "proj.image_text.two_towers", kwargs, target="bv").float().eval()
    inputs = synthetic_two_tower_inputs(exact.config, min(max_num_patches, 4 * exact.config.vision_config.nposemb**2))
    dtype = siglip2_model.dtype
    deviation = siglip2_model_deviation(exact, siglip2_model.float().eval(), inputs)
    siglip2_model.to(dtype)  # measured in fp32; bf16 -> fp32 -> bf16 is lossless
    figures = ", ".join(f"{k} {v:.1e}" for k, v in deviation.items())
    return (
        f"converted into transformers `Siglip2Model` (not exact); max abs difference from the exact big_vision_hf "
        f"`BvSiglipModel` (fp32, 4 synthetic images and 3 texts): {figures}. Differences: posemb resize "
        "(no L-canvas cap; before transformers 5.25 F.interpolate, wrong on 1-wide grids), pad queries unmasked, "
        "no 1e-8 in the embedding normalisation, and the image processor (PIL uint8 bilinear, not big_vision's float antialiased resize_to_sequence). Convert "
        "without --target transformers for the exact class."
    )


def _two_tower_parity_note(model, checkpoint: str, kwargs: dict) -> str:
    return siglip2_model_parity_note(model, checkpoint, kwargs) if model.config.model_type == "siglip2" else ""


PARITY_NOTES["proj.image_text.two_towers"] = _two_tower_parity_note
