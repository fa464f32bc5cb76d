"""big_vision BiT ResNets -> `BvBiTModel` / `BvBiTForImageClassification`.

Two families, one table each: ``bit_paper`` (``models/bit_paper.py``, ResNet-v2, the public BiT-S/M and FunMatch
weights) and ``bit`` (``models/bit.py``, ResNet-v1). Rows are written per unit kind; the unit names come from the
stage depths read off the arrays (``unit0*{j}`` matches big_vision's ``unit01`` in bit_paper and ``unit1`` in
bit.py). The layout passes mirror big_vision's loaders: ``bit_paper.maybe_convert_big_transfer_format`` (the
original big_transfer ``resnet/...`` files) and ``bit.fix_old_checkpoints`` (flax ``convert_pre_linen``; the
un-squeezed ``(1, 1, 1, C)`` GroupNorm params are flattened by the ``flat`` transform of every GN row).
"""

from __future__ import annotations

import re

from ..configuration.configuration_bv_bit import BvBiTConfig, bv_kwargs_to_config, get_block_desc
from ..modeling.modeling_bv_bit import BvBiTForImageClassification, BvBiTModel
from .checkpoint import CheckpointError, LazyArray
from .family import Built, Family
from .mapping import Rule, conv, convert_pre_linen, flat, map_params, with_head


def std_conv(bv: str, hf: str) -> list[Rule]:
    """big_vision ``StdConv`` (bias-free) -> `BvWeightStandardizedConv2d`."""
    return [Rule(f"{bv}/kernel", f"{hf}.weight", conv)]


def group_norm(bv: str, hf: str) -> list[Rule]:
    """GroupNorm ``scale``/``bias``, ``[C]`` or the un-squeezed ``[1, 1, 1, C]`` of bit_paper and old bit.py files."""
    return [Rule(f"{bv}/scale", f"{hf}.weight", flat), Rule(f"{bv}/bias", f"{hf}.bias", flat)]


def preact_unit_rules(bv: str, hf: str) -> list[Rule]:
    """big_vision ``bit_paper.ResidualUnit`` -> `BvBiTPreActivationUnit` (``gn{i}`` precedes ``conv{i}``)."""
    return [
        *group_norm(f"{bv}/gn1", f"{hf}.norm1"),
        *std_conv(f"{bv}/conv_proj", f"{hf}.conv_proj"),
        *std_conv(f"{bv}/conv1", f"{hf}.conv1"),
        *group_norm(f"{bv}/gn2", f"{hf}.norm2"),
        *std_conv(f"{bv}/conv2", f"{hf}.conv2"),
        *group_norm(f"{bv}/gn3", f"{hf}.norm3"),
        *std_conv(f"{bv}/conv3", f"{hf}.conv3"),
    ]


def bottleneck_unit_rules(bv: str, hf: str) -> list[Rule]:
    """big_vision ``bit.ResidualUnit`` -> `BvBiTBottleneckUnit` (``gn{i}`` follows ``conv{i}``)."""
    return [
        *std_conv(f"{bv}/conv_proj", f"{hf}.conv_proj"),
        *group_norm(f"{bv}/gn_proj", f"{hf}.norm_proj"),
        *std_conv(f"{bv}/conv1", f"{hf}.conv1"),
        *group_norm(f"{bv}/gn1", f"{hf}.norm1"),
        *std_conv(f"{bv}/conv2", f"{hf}.conv2"),
        *group_norm(f"{bv}/gn2", f"{hf}.norm2"),
        *std_conv(f"{bv}/conv3", f"{hf}.conv3"),
        *group_norm(f"{bv}/gn3", f"{hf}.norm3"),
    ]


def stage_rules(depths: list[int], unit_rules) -> list[Rule]:
    """``block{i}/unit{j}`` (any zero padding of ``j``) -> ``stages.{i-1}.layers.{j-1}``, for every unit."""
    return [
        rule
        for i, depth in enumerate(depths)
        for j in range(depth)
        for rule in unit_rules(f"block{i + 1}/unit0*{j + 1}", f"stages.{i}.layers.{j}")
    ]


def bit_paper_rules(depths: list[int]) -> list[Rule]:
    """big_vision ``bit_paper.Model`` name -> `BvBiTModel` name."""
    return [
        *std_conv("root_block/conv_root", "embeddings.convolution"),
        *stage_rules(depths, preact_unit_rules),
        *group_norm("norm-pre-head", "norm"),
    ]


def bit_rules(depths: list[int]) -> list[Rule]:
    """big_vision ``bit.Model`` name -> `BvBiTModel` name."""
    return [
        *std_conv("conv_root", "embeddings.convolution"),
        *group_norm("gn_root", "embeddings.norm"),
        *stage_rules(depths, bottleneck_unit_rules),
    ]


# ---------------------------------------------------------------------------------------------------------
# Layout passes (big_vision bit_paper.maybe_convert_big_transfer_format, bit.fix_old_checkpoints)
# ---------------------------------------------------------------------------------------------------------

_BT_UNIT = re.compile(
    r"resnet/(block\d+)/(unit\d+)/([abc])/(standardized_conv2d/kernel|group_norm/gamma|group_norm/beta)"
)
_BT_PROJ = re.compile(r"resnet/(block\d+)/(unit\d+)/a/proj/standardized_conv2d/kernel")
_BT_PARAM = {
    "standardized_conv2d/kernel": "conv{}/kernel", "group_norm/gamma": "gn{}/scale", "group_norm/beta": "gn{}/bias"
}
_BT_TOP = {
    "resnet/root_block/standardized_conv2d/kernel": "root_block/conv_root/kernel",
    "resnet/group_norm/gamma": "norm-pre-head/scale",
    "resnet/group_norm/beta": "norm-pre-head/bias",
    "resnet/head/conv2d/bias": "head/bias",
}


def convert_big_transfer_format(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """The original big_transfer layout (``gs://bit_models/BiT-*.npz``) -> bit_paper names, as big_vision
    ``bit_paper.maybe_convert_big_transfer_format`` does; a tree without ``resnet/`` is unchanged.

    ``resnet/blockN/unitM/{a,b,c}/{standardized_conv2d,group_norm}`` -> ``blockN/unitM/{conv,gn}{1,2,3}``,
    ``a/proj`` -> ``conv_proj``, ``resnet/group_norm`` -> ``norm-pre-head``, the 1x1 ``head/conv2d`` -> a Dense
    ``head``. big_vision keeps only the names it knows; here any other name is kept, so the table reports it.
    """
    if not any(name.startswith("resnet/") for name in params):
        return params
    out = {}
    for name, array in params.items():
        # "Works around some files containing weird naming of variables" (big_vision).
        name = re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", name)
        if name in _BT_TOP:
            out[_BT_TOP[name]] = array
        elif name == "resnet/head/conv2d/kernel":  # [1, 1, in, out] -> [in, out]
            out["head/kernel"] = array.derive(lambda x: x[0, 0], array.shape[2:], "[0, 0]")
        elif m := _BT_UNIT.fullmatch(name):
            block, unit, group, param = m.groups()
            out[f"{block}/{unit}/" + _BT_PARAM[param].format("abc".index(group) + 1)] = array
        elif m := _BT_PROJ.fullmatch(name):
            out[f"{m.group(1)}/{m.group(2)}/conv_proj/kernel"] = array
        else:
            out[name] = array
    return out


# ---------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------

_ROOT = {"resnetv2": "root_block/conv_root/kernel", "resnetv1": "conv_root/kernel"}
_FAMILY = {"resnetv2": "bit_paper", "resnetv1": "bit"}


def infer_bit_config(
    params: dict[str, LazyArray], model_kwargs: dict | None, architecture: str, image_size=None
) -> tuple[dict, int | None]:
    """Everything the arrays' shapes tell (root width, units per stage, input channels, classes).

    ``model_kwargs`` (big_vision ``config.model``: ``num_classes, width, depth``) are checked against the shapes.
    Returns ``(BvBiTConfig kwargs, num_classes or None)``.
    """
    family = _FAMILY[architecture]
    model_kwargs = dict(model_kwargs or {})
    num_classes_kw = model_kwargs.pop("num_classes", None)
    given = bv_kwargs_to_config(model_kwargs, architecture)
    given_depths = get_block_desc(given["depths"]) if "depths" in given else None

    root = _ROOT[architecture]
    if root not in params:
        tops = ", ".join(sorted({k.split("/")[0] for k in params})[:8])
        raise CheckpointError(
            f"not a big_vision BiT ({family}) checkpoint: no {root!r} array (top-level names: {tops})"
        )
    _, _, channels, root_width = params[root].shape

    units: dict[int, set[int]] = {}
    for name in params:
        if m := re.match(r"block(\d+)/unit(\d+)/", name):
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(units) != list(range(1, len(units) + 1)):
        raise CheckpointError(f"{family} checkpoint has blocks {sorted(units)}; expected block1 ... blockN")
    depths = []
    for block, numbers in sorted(units.items()):
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            raise CheckpointError(f"{family} checkpoint block{block} has units {sorted(numbers)}; expected 1 ... N")
        depths.append(len(numbers))

    if "width_factor" in given and int(64 * given["width_factor"]) != root_width:
        raise CheckpointError(
            f"model config says width={given['width_factor']!r} ({int(64 * given['width_factor'])} root channels) "
            f"but {root} has {root_width}"
        )
    if given_depths is not None and given_depths != depths:
        raise CheckpointError(f"model config says depth={given_depths} but the checkpoint has units per block {depths}")
    config = {**given, "depths": depths, "num_channels": channels}
    if "width_factor" not in config:  # the multiplier of 64; an int when it is one (BiT R50x3 -> 3)
        config["width_factor"] = root_width // 64 if root_width % 64 == 0 else root_width / 64
    if image_size is not None:
        config["image_size"] = image_size

    num_classes = params["head/kernel"].shape[-1] if "head/kernel" in params else None
    if num_classes_kw is not None and num_classes is not None and num_classes_kw != num_classes:
        raise CheckpointError(f"model config says num_classes={num_classes_kw} but head/kernel has {num_classes}")
    if num_classes_kw and num_classes is None:
        raise CheckpointError(f"model config says num_classes={num_classes_kw} but the checkpoint has no head")
    return config, num_classes


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def build_bit_model(params: dict[str, LazyArray], model_kwargs: dict | None, architecture: str, image_size, table):
    """The ResNet or its classifier for either BiT layout, once its layout pass ran (nothing read yet)."""
    config_kwargs, num_classes = infer_bit_config(params, model_kwargs, architecture, image_size)
    depths = config_kwargs["depths"]
    cls, rules, head = with_head(table(depths), num_classes, BvBiTModel, BvBiTForImageClassification, "bit.")
    try:
        config = BvBiTConfig(**config_kwargs, **head)
    except ValueError as e:
        raise CheckpointError(f"{_FAMILY[architecture]} checkpoint gives an invalid config: {e}") from None
    return Built(cls, config, map_params(params, rules))


def build_bit_paper(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """A ``bit_paper`` (ResNet-v2) checkpoint, also in the original big_transfer layout."""
    params = convert_big_transfer_format(params)
    return build_bit_model(params, model_kwargs, "resnetv2", image_size, bit_paper_rules)


def build_bit(params: dict[str, LazyArray], model_kwargs: dict | None = None, image_size=None) -> Built:
    """A ``bit`` (ResNet-v1) checkpoint."""
    params = convert_pre_linen(params)  # bit.fix_old_checkpoints; GN squeezing is the `flat` transform
    return build_bit_model(params, model_kwargs, "resnetv1", image_size, bit_rules)


_CLASSES = ("BvBiTModel", "BvBiTForImageClassification")
BIT_PAPER = Family(
    name="bit_paper",
    build=build_bit_paper,
    summary="BiT ResNet-v2 (models/bit_paper.py): BiT-S/M, FunMatch, big_transfer files",
    signatures=(("root_block/conv_root/kernel",), ("resnet/root_block/standardized_conv2d/kernel",)),
    classes=_CLASSES,
)
BIT = Family(
    name="bit",
    build=build_bit,
    summary="ResNet-v1 with GroupNorm + weight standardisation (models/bit.py)",
    signatures=(("conv_root/kernel", "gn_root/scale"),),
    classes=_CLASSES,
)
