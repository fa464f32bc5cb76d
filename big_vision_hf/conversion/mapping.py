"""One parameter-mapping mechanism for every family: a table of big_vision name -> our name.

Each converter declares ``RULES = [Rule(bv_regex, hf_template, transform), ...]``. :func:`map_params`
matches every checkpoint name against exactly one rule (or an explicitly ignored pattern) and
returns lazy tensors under our names; :func:`check_fits` then compares them with the model's
``state_dict`` (missing, unexpected, wrong shape) before anything is read. Either step raises a
one-line :class:`~big_vision_hf.conversion.checkpoint.CheckpointError` naming the keys, as
big_vision's ``common.merge_params`` does.

Transforms are named functions with the flax -> torch layout in their docstring; each knows how it
changes a shape, so mismatches are found from the npz headers alone.

Layout passes shared by several families (``convert_pre_linen``, ``unstack_scan``) also live here:
they rewrite names before the table sees them, like big_vision's ``fix_old_checkpoints`` and
``scan_to_pyloop``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import CheckpointError, LazyArray, check_dtype, check_finite


@dataclass(frozen=True)
class Transform:
    """``array`` maps the flax array to the torch one, ``shape`` does the same on shapes.

    ``layout_only``: ``array`` only moves elements, so it also runs on bfloat16 bits (``LazyArray.load_stored``).
    ``row_wise``: it keeps axis 0 and commutes with slicing it, so the result can be read (written) in row chunks.
    """

    name: str
    array: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    layout_only: bool = False
    row_wise: bool = False
    #: For attention arrays whose heads the transform flattens away: ``stored shape -> (heads, head_dim)`` (or
    #: ``None`` for a layout without the split). `map_params` requires one split per attention module and per rule,
    #: so a kernel stored with its heads axes swapped cannot pass as a model with another head count.
    heads: Callable[[tuple[int, ...]], tuple[int, ...] | None] | None = None


def _prod(shape: Iterable[int]) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64))


identity = Transform("identity", lambda x: x, lambda s: tuple(s), layout_only=True, row_wise=True)
#: flax ``nn.Dense`` kernel ``[in, out]`` -> torch ``Linear.weight`` ``[out, in]``.
dense = Transform("dense", lambda x: x.T, lambda s: tuple(s[::-1]), layout_only=True)
#: flax ``nn.Conv`` kernel HWIO ``[kh, kw, in, out]`` -> torch ``Conv2d.weight`` OIHW.
conv = Transform("conv", lambda x: x.transpose(3, 2, 0, 1), lambda s: (s[3], s[2], s[0], s[1]), layout_only=True)
#: MHA ``query|key|value/kernel`` ``[D, heads, head_dim]`` -> ``Linear.weight`` ``[heads*head_dim, D]``.
heads_in = Transform("heads_in", lambda x: x.reshape(x.shape[0], -1).T, lambda s: (_prod(s[1:]), s[0]),
                     layout_only=True, heads=lambda s: tuple(s[1:]) if len(s) == 3 else None)
#: MHA ``out/kernel`` ``[heads, head_dim, D]`` -> ``Linear.weight`` ``[D, heads*head_dim]``.
heads_out = Transform("heads_out", lambda x: x.reshape(-1, x.shape[-1]).T, lambda s: (s[-1], _prod(s[:-1])),
                      layout_only=True, heads=lambda s: tuple(s[:-1]) if len(s) == 3 else None)
#: Any array -> 1-D (old GroupNorm scales ``[1, 1, 1, C]``).
flat = Transform("flat", lambda x: x.reshape(-1), lambda s: (_prod(s),), layout_only=True)
#: MHA ``query|key|value/bias`` ``[heads, head_dim]`` -> 1-D (``flat``, with the head split checked).
heads_bias = Transform("heads_bias", flat.array, flat.shape, layout_only=True,
                       heads=lambda s: tuple(s) if len(s) == 2 else None)


@dataclass(frozen=True)
class Rule:
    """``bv`` is a regex matched against the whole big_vision name; ``hf`` is formatted with its groups."""

    bv: str
    hf: str
    transform: Transform = identity


# ---------------------------------------------------------------------------------------------------------
# The rule vocabulary: flax module -> torch module, shared by every family's table
# ---------------------------------------------------------------------------------------------------------


def layer_norm(bv: str, hf: str) -> list[Rule]:
    """flax ``nn.LayerNorm`` (``scale``, ``bias``) -> ``nn.LayerNorm`` (``weight``, ``bias``)."""
    return [Rule(f"{bv}/scale", f"{hf}.weight"), Rule(f"{bv}/bias", f"{hf}.bias")]


def linear(bv: str, hf: str) -> list[Rule]:
    """flax ``nn.Dense`` -> ``nn.Linear``."""
    return [Rule(f"{bv}/kernel", f"{hf}.weight", dense), Rule(f"{bv}/bias", f"{hf}.bias")]


def attention(bv: str, hf: str) -> list[Rule]:
    """flax ``MultiHeadDotProductAttention`` -> q/k/v/out ``nn.Linear`` projections (`BvViTAttention`, Siglip's)."""
    rules = []
    for bv_name, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules += [
            Rule(f"{bv}/{bv_name}/kernel", f"{hf}.{hf_name}.weight", heads_in),
            Rule(f"{bv}/{bv_name}/bias", f"{hf}.{hf_name}.bias", heads_bias),
        ]
    return rules + [Rule(f"{bv}/out/kernel", f"{hf}.out_proj.weight", heads_out),
                    Rule(f"{bv}/out/bias", f"{hf}.out_proj.bias")]


def encoder_blocks(bv: str, hf: str) -> list[Rule]:
    """big_vision ``vit.Encoder1DBlock`` s (loop layout ``{bv}/encoderblock_{i}``) -> ``{hf}.layers.{i}``."""
    block, layer = rf"{bv}/encoderblock_(\d+)", hf + ".layers.{0}"
    return [
        *layer_norm(f"{block}/LayerNorm_0", f"{layer}.layer_norm1"),
        *attention(f"{block}/MultiHeadDotProductAttention_0", f"{layer}.self_attn"),
        *layer_norm(f"{block}/LayerNorm_1", f"{layer}.layer_norm2"),
        *linear(f"{block}/MlpBlock_0/Dense_0", f"{layer}.mlp.fc1"),
        *linear(f"{block}/MlpBlock_0/Dense_1", f"{layer}.mlp.fc2"),
    ]


def encoder_rules(bv: str, hf: str, final_norm: str | None = None) -> list[Rule]:
    """big_vision ``vit.Encoder`` (loop layout) -> `BvViTEncoder`; ``final_norm``: where ``encoder_norm`` goes when
    the target keeps it outside the encoder (transformers' Siglip), default ``{hf}.post_layernorm``."""
    return [*encoder_blocks(bv, hf), *layer_norm(f"{bv}/encoder_norm", final_norm or f"{hf}.post_layernorm")]


def map_head_rules(bv: str, hf: str) -> list[Rule]:
    """big_vision ``vit.MAPHead`` -> `BvMAPHead` (and Siglip's head, before `pack_in_proj`)."""
    return [
        Rule(f"{bv}/probe", f"{hf}.probe"),
        *attention(f"{bv}/MultiHeadDotProductAttention_0", f"{hf}.attention"),
        *layer_norm(f"{bv}/LayerNorm_0", f"{hf}.layernorm"),
        *linear(f"{bv}/MlpBlock_0/Dense_0", f"{hf}.mlp.fc1"),
        *linear(f"{bv}/MlpBlock_0/Dense_1", f"{hf}.mlp.fc2"),
    ]


def prefixed(rules: list[Rule], bv_prefix: str = "", hf_prefix: str = "") -> list[Rule]:
    """The same table under a sub-tree (``img/`` -> ``vision_model.``), as big_vision composite ``load`` s do."""
    return [Rule(bv_prefix + r.bv, hf_prefix + r.hf, r.transform) for r in rules]


def with_head(rules: list[Rule], num_classes: int | None, base_model: type, classifier: type, base_prefix: str):
    """The base model or the classifier, as big_vision's ``num_classes`` decides: ``(model class, table,
    config kwargs)``. The classifier holds the base model under ``base_prefix`` (``"vit."``) and big_vision's
    ``head`` Dense as ``classifier``."""
    if not num_classes:
        return base_model, rules, {}
    head_rules = prefixed(rules, hf_prefix=base_prefix) + linear("head", "classifier")
    return classifier, head_rules, {"num_labels": num_classes}


def map_params(
    params: dict[str, LazyArray], rules: list[Rule], ignore: dict[str, str] | None = None
) -> dict[str, LazyArray]:
    """Applies a rule table. Every name must match exactly one rule, or an ``ignore`` regex (with its reason).

    Returns ``{hf_name: LazyArray}`` (nothing read yet). Raises ``CheckpointError`` listing unmatched names.
    """
    compiled = [(re.compile(rule.bv), rule) for rule in rules]
    ignored = [re.compile(pattern) for pattern in (ignore or {})]
    mapped: dict[str, LazyArray] = {}
    unmatched, ambiguous = [], []
    splits: dict[tuple, tuple[str, tuple]] = {}  # (kind, key) -> (first name, heads split): see Transform.heads
    for name, array in params.items():
        hits = [(m, rule) for regex, rule in compiled if (m := regex.fullmatch(name))]
        if not hits:
            if not any(regex.fullmatch(name) for regex in ignored):
                unmatched.append(name)
            continue
        if len(hits) > 1:
            ambiguous.append(name)
            continue
        match, rule = hits[0]
        target = rule.hf.format(*match.groups())
        if target in mapped:
            raise CheckpointError(f"two checkpoint arrays map to {target!r} (second: {name!r})")
        t = rule.transform
        try:
            shape = t.shape(array.shape)
        except (IndexError, ValueError, TypeError):
            raise CheckpointError(f"{name} has shape {tuple(array.shape)}, which a {t.name} transform cannot take "
                                  f"(target {target})") from None
        if t.heads is not None and (split := t.heads(tuple(array.shape))) is not None:
            module = target.rsplit(".", 2)[0]
            for key in (("module", module), ("rule", id(rule))):
                first, expected = splits.setdefault(key, (name, split))
                if split != expected:
                    raise CheckpointError(f"{name} has heads x head_dim {split} but {first} has {expected} "
                                          f"(shape {tuple(array.shape)})")
        mapped[target] = array.derive(t.array, shape, layout_only=t.layout_only, row_wise=t.row_wise)
        mapped[target].name = name if array.name in ("", name) else f"{name} = {array.name}"
    if ambiguous:
        raise CheckpointError(f"converter bug: names matched by several rules: {_listing(ambiguous)}")
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} checkpoint array(s) not used by this model: {_listing(unmatched)}")
    return mapped


def check_fits(mapped: dict[str, LazyArray], model: torch.nn.Module) -> None:
    """Checks names, shapes and dtypes against ``model.state_dict()`` without reading any data (``model`` may be on
    the ``meta`` device).

    Raises one ``CheckpointError`` naming the missing parameters, the unused checkpoint arrays (by their
    big_vision names) and every shape mismatch; an array that fills a floating-point parameter must be stored as a
    float (``checkpoint.FLOAT_DTYPES``: an integer kernel is an error, not a silent cast).
    """
    state = model.state_dict()
    for k in sorted(set(state) & set(mapped)):
        if state[k].is_floating_point():
            check_dtype(mapped[k], f"{mapped[k].name or k} (-> {k})")
    expected = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(mapped[k].name for k in set(mapped) - set(expected))
    mismatched = [
        f"{mapped[k].name} -> {k}: checkpoint {mapped[k].shape} vs model {expected[k]}"
        for k in sorted(set(expected) & set(mapped))
        if tuple(mapped[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"model parameters missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"checkpoint arrays the model has no place for: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))


def _read_checked(array: LazyArray, name: str, allow_nonfinite: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array.load()))
    if not allow_nonfinite:
        check_finite(tensor, f"{array.name or name} (-> {name})")
    return tensor


def materialize(mapped: dict[str, LazyArray], dtype: torch.dtype | None = None, progress: bool = False,
                allow_nonfinite: bool = False):
    """Reads every lazy array (grouped by source so stacked arrays are read once) into torch tensors; a NaN/Inf
    value is a `CheckpointError` naming the array unless ``allow_nonfinite``."""
    from tqdm.auto import tqdm

    order = sorted(mapped, key=lambda k: mapped[k].source)
    tensors = {}
    for name in tqdm(order, desc="reading arrays", unit="array", disable=not progress):
        tensor = _read_checked(mapped[name], name, allow_nonfinite)
        tensors[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return tensors


def load_into(model: torch.nn.Module, mapped: dict[str, LazyArray], progress: bool = False,
              allow_nonfinite: bool = False) -> None:
    """Copies every lazy array into ``model``'s parameter or buffer of the same name, one at a time (peak memory:
    the model plus its largest array), after :func:`check_fits`. Values as :func:`materialize` reads them."""
    from tqdm.auto import tqdm

    check_fits(mapped, model)
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in tqdm(sorted(mapped, key=lambda k: mapped[k].source), desc="reading arrays", unit="array",
                         disable=not progress):
            targets[name].copy_(_read_checked(mapped[name], name, allow_nonfinite))


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------------------
# Name-level layout passes (run before the rule table)
# ---------------------------------------------------------------------------------------------------------

_MODULE_NUM = re.compile(r"(.*)_(\d+)$")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def convert_pre_linen(params: dict[str, LazyArray]) -> dict[str, LazyArray]:
    """Renumbers pre-Linen module names per module class, as ``flax.training.checkpoints.convert_pre_linen``.

    Pre-Linen flax numbered sub-modules across classes (``LayerNorm_0, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3``, the layout of the AugReg ViT files); Linen counts per class
    (``LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0``). A Linen tree is unchanged.
    """
    children: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for name in params:
        parts = tuple(name.split("/"))
        for depth in range(len(parts)):
            children[parts[:depth]].add(parts[depth])
    renames: dict[tuple[str, ...], dict[str, str]] = {}
    for parent, names in children.items():
        counts: dict[str, int] = {}
        renames[parent] = {}
        for child in sorted(names, key=_natural_key):
            match = _MODULE_NUM.match(child)
            if match:
                module = match.group(1)
                renames[parent][child] = f"{module}_{counts.get(module, 0)}"
                counts[module] = counts.get(module, 0) + 1
            else:
                renames[parent][child] = child
    out = {}
    for name, array in params.items():
        parts = name.split("/")
        new = [renames[tuple(parts[:d])][parts[d]] for d in range(len(parts))]
        out["/".join(new)] = array
    return out


class _StackedSource:
    """Holds a stacked array that cannot be read layer by layer (computed, or stacked on another axis than 0), so
    that slicing N layers out of it reads it once."""

    def __init__(self, array: LazyArray, axis: int):
        self.array, self.axis = array, axis
        self._value: np.ndarray | None = None
        self._taken: set[int] = set()

    def slice(self, index: int) -> np.ndarray:
        if self._value is None:
            self._value = self.array.load()
        out = np.take(self._value, index, axis=self.axis)
        self._taken.add(index)
        if len(self._taken) == self.array.shape[self.axis]:
            self._value, self._taken = None, set()  # every layer was taken: free the stacked copy
        return out


def unstack_scan(params: dict[str, LazyArray], stacked: str, looped: str, axis: int = 0) -> dict[str, LazyArray]:
    """``nn.scan`` layout -> python-loop layout, as big_vision ``vit.scan_to_pyloop``.

    Names under ``stacked`` (e.g. ``"Transformer/encoderblock/"``) carry the depth on ``axis``; they become
    ``looped.format(i)`` + rest (e.g. ``"Transformer/encoderblock_{}/"``), sliced lazily.

    On axis 0 of a file-backed array, each layer reads only its own bytes (``LazyArray.take``); otherwise the
    stacked array is read once and freed when every layer was taken.
    """
    out = {}
    for name, array in params.items():
        if not name.startswith(stacked):
            out[name] = array
            continue
        rest = name[len(stacked):]
        if axis == 0 and array.sliceable:
            for i in range(array.shape[0]):
                name_i = looped.format(i) + rest
                out[name_i] = array.take(i)
                out[name_i].name = f"{name}[{i}]"  # the file's name, for error messages
            continue
        source = _StackedSource(array, axis)
        shape = tuple(s for i, s in enumerate(array.shape) if i != axis)
        for i in range(array.shape[axis]):
            name_i = looped.format(i) + rest
            out[name_i] = LazyArray(shape, array.dtype, lambda i=i, src=source: src.slice(i), array.source,
                                    f"{name}[{i}]" if axis == 0 else f"{name}[axis {axis}: {i}]")
    return out
