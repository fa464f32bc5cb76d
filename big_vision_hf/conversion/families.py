"""Every family record: the `Family` each ``convert_*.py`` module of this package declares.

Adding a family is adding its converter module (ending with ``FAMILY = Family(...)``); nothing here changes. The
CLI's ``--model-name`` help, ``big-vision-hf list --families``, detection and ``convert`` read this list.
Signatures are mutually exclusive (``"!name"`` excludes a tree), so detection does not depend on the order.
"""

from __future__ import annotations

import importlib
import pkgutil

from .checkpoint import CheckpointError, LazyArray
from .family import Family


def _collect() -> list[Family]:
    records = []
    for module in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if module.name.startswith("convert_"):
            namespace = vars(importlib.import_module(f"{__package__}.{module.name}"))
            records += [value for value in namespace.values() if isinstance(value, Family)]
    return sorted(records, key=lambda family: family.name)


FAMILIES: list[Family] = _collect()
FAMILY_NAMES: dict[str, Family] = {family.name: family for family in FAMILIES}
assert len(FAMILY_NAMES) == len(FAMILIES), "two converters declare the same big_vision model_name"


def family_named(name: str) -> Family:
    """The record of big_vision ``config.model_name`` ``name``, or a one-line error listing the known ones."""
    if name not in FAMILY_NAMES:
        raise CheckpointError(f"unknown --model-name {name!r}; supported: {', '.join(FAMILY_NAMES)}")
    return FAMILY_NAMES[name]


def detect_family(params: dict[str, LazyArray], source: str = "checkpoint") -> str:
    """big_vision ``model_name`` of the family whose signature the parameter tree carries (from its structure,
    never from file names)."""
    names = set(params)
    found = [family for family in FAMILIES if family.matches(names)]
    if len(found) == 1:
        return found[0].name
    tops = sorted({k.split("/")[0] for k in params})[:8]
    if found:
        raise CheckpointError(f"{source}: the arrays look like several families ({', '.join(f.name for f in found)}); "
                              "pass --model-name")
    raise CheckpointError(
        f"{source}: cannot tell the big_vision model family from its arrays (top-level names: {', '.join(tops)}); "
        f"pass --model-name (one of: {', '.join(FAMILY_NAMES)})"
    )
