"""big_vision FlexiViT (``big_vision/models/proj/flexi/vit.py``) -> `BvFlexiViTModel` / `...ForImageClassification`.

FlexiViT checkpoints use the ViT's parameter names, so this is the ViT's table and layout passes
(big_vision flexi ``load`` also calls ``vit.fix_old_checkpoints``). Unlike big_vision ``load``, nothing is
resized here: the kernel stays at its stored ``patch_size`` and the posemb at ``posemb_size``, and both are
resized at run time (the FlexiViT README advises keeping the stored sizes, as chained resizes are lossy). A
``patch_size`` or ``posemb_size`` in the model kwargs that differs from the arrays is an error.

A FlexiViT checkpoint looks exactly like a ViT one, so the family must be named: ``"proj.flexi.vit"``.
"""

from __future__ import annotations

import math

from ..configuration.configuration_bv_flexivit import BvFlexiViTConfig, split_flexi_kwargs
from ..configuration.configuration_bv_vit import pair
from ..modeling.modeling_bv_flexivit import BvFlexiViTForImageClassification, BvFlexiViTModel
from .checkpoint import CheckpointError, LazyArray
from .convert_bv_vit import VIT_RULES, infer_vit_config, prepare_vit_params
from .family import Built, Family

# big_vision flexi `_Model.posemb_size` default, used for a sincos2d posemb when the kwargs do not give it.
DEFAULT_POSEMB_SIZE = (7, 7)


def infer_posemb_size(params: dict[str, LazyArray], given) -> list[int]:
    """``posemb_size`` from the kwargs, checked against a learned posemb; else the posemb's square grid."""
    if "pos_embedding" not in params:  # sincos2d: computed at posemb_size
        return pair(given if given is not None else DEFAULT_POSEMB_SIZE)
    n = params["pos_embedding"].shape[1]
    if given is not None:
        size = pair(given)
        if size[0] * size[1] != n:
            raise CheckpointError(
                f"model config says posemb_size={size} but pos_embedding has {n} positions "
                "(the posemb is not resampled at conversion; FlexiViT resizes it at run time)"
            )
        return size
    g = math.isqrt(n)
    if g * g != n:
        raise CheckpointError(f"learned posemb has {n} positions, not a square grid: give posemb_size (model kwargs)")
    return [g, g]


def build_flexivit(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """The FlexiViT or its classifier for a ``proj.flexi.vit`` checkpoint (nothing read yet).

    ``image_size`` only sets the default input resolution (``config.image_size``); it resizes nothing. Without
    it: ``posemb_size * patch_size``, where the stored kernel and posemb need no resizing.
    """
    vit_kwargs, flexi_kwargs = split_flexi_kwargs(dict(model_kwargs or {}))
    params = prepare_vit_params(params)
    posemb_size = infer_posemb_size(params, flexi_kwargs.get("posemb_size"))
    if image_size is None and "embedding/kernel" in params:
        kh, kw = params["embedding/kernel"].shape[:2]
        image_size = [posemb_size[0] * kh, posemb_size[1] * kw]
    config_kwargs, num_classes = infer_vit_config(params, vit_kwargs, image_size)
    config_kwargs.update(posemb_size=posemb_size, seqhw=flexi_kwargs.get("seqhw"))
    return Built.base_or_classifier(params, VIT_RULES, num_classes, (BvFlexiViTModel, BvFlexiViTForImageClassification),
                                    "vit.", BvFlexiViTConfig, config_kwargs)


FAMILY = Family(
    name="proj.flexi.vit",
    build=build_flexivit,
    summary="FlexiViT (proj/flexi/vit.py): any patch size at run time; a ViT's tree, so name it",
    classes=("BvFlexiViTModel", "BvFlexiViTForImageClassification"),
)
