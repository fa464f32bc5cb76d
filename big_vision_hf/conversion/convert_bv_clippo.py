"""big_vision CLIPPO (``proj.clippo.one_tower``) -> `BvClippoModel`.

The tree is a ViT under ``img/`` (with its ``head``, big_vision ``num_classes=out_dim``) and the log temperature
``t``: the ViT's table and layout passes under ``img/`` (as big_vision ``one_tower.load`` calls ``vit.load`` on
``img``), plus ``head`` -> ``projection`` and ``t`` -> ``logit_scale``. big_vision's ``one_tower.load`` cannot
load ``t`` (``utils.load_params(None, ...)``); here ``t`` is read like any other array.

The released CLIPPO files are full training checkpoints; their ``params/`` (or ``opt/target/``) prefix is removed
by the shared reader, which also drops the optimizer state next to it.
"""

from __future__ import annotations

from ..configuration.configuration_bv_clippo import BvClippoConfig
from ..configuration.configuration_bv_vit import BvViTConfig
from ..modeling.modeling_bv_clippo import BvClippoModel
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import VIT_RULES, fit_posemb, infer_vit_config, prepare_vit_params
from .family import Built, Family
from .mapping import Rule, linear, map_params, prefixed

# big_vision one_tower.Model fields (`image_model`, `image`, `out_dim`, `temperature_init`).
BV_CLIPPO_KWARGS = ("image_model", "image", "out_dim", "temperature_init")

# big_vision name -> BvClippoModel name.
CLIPPO_RULES = [
    *prefixed(VIT_RULES, "img/", "vision_model."),
    *linear("img/head", "projection"),
    Rule("t", "logit_scale"),  # [1], the log temperature
]


def split_clippo_kwargs(model_kwargs: dict | None) -> tuple[dict, dict]:
    """big_vision ``config.model`` -> (ViT kwargs with ``num_classes=out_dim``, ``{temperature_init}``)."""
    kwargs = dict(model_kwargs or {})
    unknown = sorted(set(kwargs) - set(BV_CLIPPO_KWARGS))
    if unknown:
        known = ", ".join(BV_CLIPPO_KWARGS)
        raise CheckpointError(f"unknown big_vision CLIPPO option(s) {', '.join(unknown)}; known: {known}")
    if kwargs.get("image_model", "vit") != "vit":
        raise CheckpointError(f"CLIPPO with image_model={kwargs['image_model']!r} is not supported (only 'vit')")
    image = dict(kwargs.get("image") or {})
    top = {"temperature_init": float(kwargs.get("temperature_init", 10.0))}
    if "out_dim" in kwargs:
        image.setdefault("num_classes", kwargs["out_dim"])  # one_tower: {"num_classes": out_dim, **image}
    return image, top


def build_clippo(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """`BvClippoModel` for a CLIPPO checkpoint (nothing read yet)."""
    if any(k.startswith("txt/") for k in params):
        raise CheckpointError(
            "this checkpoint has a text tower (txt/...): it is a two-tower model, not CLIPPO "
            "(--model-name proj.image_text.two_towers)"
        )
    if "t" not in params:
        raise CheckpointError("not a big_vision CLIPPO checkpoint: no 't' (log temperature) array")
    image_kwargs, top = split_clippo_kwargs(model_kwargs)
    params = prepare_vit_params(params, prefix="img/")
    vit_kwargs, out_dim = infer_vit_config(params, image_kwargs, image_size, prefix="img/")
    config = BvClippoConfig(vision_config=BvViTConfig(**vit_kwargs), projection_dim=out_dim, **top)
    mapped = map_params(params, CLIPPO_RULES)
    fit_posemb(mapped, "vision_model.embeddings.position_embedding", config.vision_config)
    return Built(BvClippoModel, config, mapped)


def clippo_image_processor_for(config: BvClippoConfig, preprocessing: str = "resize"):
    """The folder's image processor: big_vision CLIPPO's ``decode|resize(S)|value_range(-1, 1)`` at the ViT's
    resolution (``configs/proj/clippo/train_clippo.py``). Text rendering needs a Unifont file given at run time
    (`BvClippoProcessor`), so it is not saved in the folder."""
    from ..processing.image_processing_bv import image_processor_for

    return image_processor_for(config.vision_config, preprocessing)


FAMILY = Family(
    name="proj.clippo.one_tower",
    build=build_clippo,
    summary="CLIPPO (proj/clippo/one_tower.py): one ViT for images and rendered text",
    # One ViT under img/ with its head and `t`, and no text tower (two towers) or LLM (PaliGemma).
    signatures=(("img/embedding/kernel", "img/head/kernel", "t", "!txt/", "!llm/"),),
    processor=clippo_image_processor_for,
    classes=("BvClippoModel",),
)
