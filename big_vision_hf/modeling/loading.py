"""Strict loading of converted folders for our model classes: every problem is one line naming the file or keys.

``PreTrainedModel.from_pretrained`` accepts a folder whose ``config.json`` asks for more layers than the weights
hold (the missing ones are randomly initialised, with a warning table), rejects a width mismatch with "look at the
above report", and reports a truncated shard without naming it. `BvStrictLoadingMixin` (the first base of every
``Bv*PreTrainedModel``) makes loading strict:

* before anything is read, the folder's safetensors files are checked from their headers alone
  (:func:`check_weight_files`): every shard of the index exists, holds the tensors the index puts there, and is as
  long as its header says (a truncated or missing shard is a `FolderError` naming the file);
* after loading, a parameter of the base model that the weights did not fill, a weight the base model has no place
  for, or a shape that contradicts ``config.json`` is a `FolderError` naming the keys. A task head that is not in
  the folder (a classifier fine-tuned from a base model) is still created fresh, with one warning line, and
  ``ignore_mismatched_sizes=True`` still accepts a head of another size, as in transformers.

Nothing here unpickles: only safetensors weights are read (``use_safetensors`` is the transformers default).
"""

from __future__ import annotations

import json
import logging
import os

import torch
from transformers.utils import logging as hf_logging

logger = hf_logging.get_logger(__name__)

_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


class FolderError(ValueError):
    """A model folder that cannot be loaded as it is: missing or truncated weights, or a config that contradicts them
    (one-line message)."""


def _listing(names, limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def safetensors_header(path: str) -> dict:
    """The JSON header of a ``.safetensors`` file, checked against the file's size (`FolderError` if it is not whole).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, _MAX_HEADER_BYTES):
            raise FolderError(f"{path}: not a whole safetensors file ({size:,} bytes; truncated or corrupt)")
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            raise FolderError(f"{path}: unreadable safetensors header (truncated or corrupt)") from None
    if 8 + n + end != size:
        raise FolderError(f"{path}: {size:,} bytes but its header describes {8 + n + end:,} (truncated or corrupt)")
    return header


def check_weight_files(folder: str) -> None:
    """The safetensors weights of a local model folder are all there and whole (headers and sizes only)."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FolderError(f"{index_path}: unreadable shard index") from None
        missing = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise FolderError(f"{folder}: weight shard(s) missing: {_listing(missing)} (the index lists "
                              f"{len(files)}; copy the whole folder)")
        for name in files:
            header = safetensors_header(os.path.join(folder, name))
            absent = [key for key, shard in weight_map.items() if shard == name and key not in header]
            if absent:
                raise FolderError(f"{os.path.join(folder, name)}: lacks tensors the index puts there: "
                                  f"{_listing(absent)}")
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        safetensors_header(os.path.join(folder, "model.safetensors"))


class _DropLoadReport(logging.Filter):
    """Drops transformers' multi-line load report; `BvStrictLoadingMixin` says what matters in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def _load_problems(model, info: dict, lenient_sizes: bool) -> tuple[list[str], list[str]]:
    """``(problems, fresh head keys)`` of a load: keys of the base model missing or unexpected, shapes that differ."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    if isinstance(base, torch.nn.Module) and base is not model:  # a task head around the base model
        def in_base(key: str) -> bool:
            return key.startswith(prefix + ".")

        children = {prefix}
    else:
        def in_base(key: str) -> bool:
            return True

        children = {name for name, _ in model.named_children()}
    missing = sorted(k for k in info.get("missing_keys", ()) if in_base(k))
    fresh = sorted(k for k in info.get("missing_keys", ()) if not in_base(k))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if k.split(".")[0] in children)
    problems = []
    if missing:
        problems.append(f"parameters the weights do not fill: {_listing(missing)}")
    if unexpected:
        problems.append(f"weights the model has no place for: {_listing(unexpected)}")
    if not lenient_sizes and info.get("mismatched_keys"):
        sizes = [f"{k} {tuple(a)} in the weights vs {tuple(b)}" for k, a, b in sorted(info["mismatched_keys"])]
        problems.append(f"shapes: {_listing(sizes, 4)}")
    for message in info.get("error_msgs", ()):
        problems.append(" ".join(str(message).split()))
    return problems, fresh


class BvStrictLoadingMixin:
    """``from_pretrained`` for our models: weight files checked first, and a config that contradicts the weights is a
    one-line `FolderError` instead of randomly initialised layers (see the module docstring)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        path = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if path is not None and os.path.isdir(path):
            check_weight_files(os.path.normpath(os.path.join(path, kwargs.get("subfolder") or "")))
        lenient_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        report_logger = logging.getLogger("transformers.modeling_utils")
        drop = _DropLoadReport()
        report_logger.addFilter(drop)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args,
                                                  ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
        finally:
            report_logger.removeFilter(drop)
        problems, fresh = _load_problems(model, info, lenient_sizes)
        if problems:
            raise FolderError(f"{path}: the weights do not fit {cls.__name__} as config.json describes it: "
                              + "; ".join(problems))
        if fresh:
            logger.warning(f"{cls.__name__}: {_listing(fresh, 4)} are not in {path} and were initialised fresh "
                           "(a new head: train it before use)")
        return (model, info) if output_loading_info else model
