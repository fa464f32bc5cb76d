"""Record validation before training: every field a task reads is checked, with the record's index, file and line.

``prepare_dataset`` (through ``load_records(..., task=...)``) runs :func:`check_records` on the raw rows of a
JSONL / JSON / CSV file (before ``datasets`` sees them, so a wrong type is never a pyarrow message) and on the rows
of a ``datasets`` source. A bad record raises :class:`BadRecordError`::

    data.jsonl:12 (record 11): 'suffix' is null; task 'jsonl' needs a non-empty string

or, with ``skip_bad=True`` (``--skip-bad``), is dropped and counted in the ``DataReport``.

What each field must be (:data:`KINDS`) comes from the task (:func:`field_kinds`): the fields of a prefix template
are prompts (strings), of a suffix template targets, ``choice(key)`` reads a list of answers, ``copy(key)`` one
answer; the tasks whose builders say nothing about their fields (multiple choice, ScienceQA, RefCOCO, COCO-style
detection / segmentation) are listed in :data:`TASK_FIELDS`. The image field must be a path, image, or image dict.
Values that pass are normalised where the builders would stringify them anyway (a numeric answer becomes ``"3"``),
so mixed columns load.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Mapping

import numpy as np

__all__ = ["BadRecordError", "KINDS", "TASK_FIELDS", "check_record", "field_kinds"]


class BadRecordError(ValueError):
    """A record whose fields do not fit its task (one line: file and line, record index, field, reason)."""


#: What a field may hold. ``prompt``: a non-empty string; ``text``: a string (may be empty); ``target``: a
#: non-empty string or a number; ``answers``: a non-empty list of strings / numbers (or one string); ``index``:
#: an integer index into the list named after the colon; ``box``: ``(y1, x1, y2, x2)`` in [0, 1], ordered;
#: ``mask``: an image / array / path of a 2-D mask with values in [0, 255]; ``loc_text``: a target whose
#: ``<locNNNN>`` / ``<segNNN>`` tokens are in range; ``value``: anything but null.
KINDS = ("prompt", "text", "target", "answers", "index", "box", "mask", "loc_text", "value")

#: Fields of the built-in tasks that the templates / builder names do not tell.
TASK_FIELDS: dict[str, dict[str, str]] = {
    "jsonl": {"prefix": "text", "suffix": "target"},
    "aokvqa_mc": {"question": "prompt", "multiple_choice_possible_answers": "answers",
                  "multiple_choice_correct_idx": "index:multiple_choice_possible_answers"},
    "ai2d": {"question": "prompt", "possible_answers": "answers", "answer": "target"},
    "science_qa": {"question": "prompt", "choices": "answers", "answer": "index:choices"},
    "refcoco_seg": {"sentence": "prompt", "mask": "mask", "bbox": "box"},
    "refcoco_det": {"sentence": "prompt", "bbox": "box"},
    "detection": {"categories": "prompt", "objects": "loc_text"},
    "segmentation": {"categories": "prompt", "objects": "loc_text"},
    "nlvr2": {"sentence": "prompt", "label": "target"},
}

_TEMPLATE_FIELD = string.Formatter()
_LOC = re.compile(r"<loc(\d+)>")
_SEG = re.compile(r"<seg(\d+)>")


def _template_fields(template) -> list[str]:
    if not isinstance(template, str):
        return []
    return [name for _, name, _, _ in _TEMPLATE_FIELD.parse(template) if name]


def field_kinds(task) -> dict[str, str]:
    """``{field: kind}`` of a :class:`~big_vision_hf.transfer.tasks.TransferTask` (see :data:`KINDS`)."""
    if task.name in TASK_FIELDS:
        return dict(TASK_FIELDS[task.name])
    kinds = {name: "prompt" for name in _template_fields(task.prefix)}
    kinds.update({name: "target" for name in _template_fields(task.suffix)})
    builder = getattr(task.suffix, "__name__", "")
    if builder.startswith("choice_"):
        kinds[builder[len("choice_"):]] = "answers"
    elif builder.startswith("copy_"):
        kinds[builder[len("copy_"):]] = "target"
    for name in task.fields:
        kinds.setdefault(name, "value")
    return kinds


def _type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, (list, tuple)):
        return "an empty list" if not value else f"a list of {len(value)}"
    return f"a {type(value).__name__}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and \
        math.isfinite(float(value))


def _check_box(value) -> str | None:
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        return f"is {_type(value)}; expected a box (y1, x1, y2, x2) of 4 numbers in [0, 1]"
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return f"is {box!r}; expected a box (y1, x1, y2, x2) of 4 numbers in [0, 1]"
    if any(v < 0 or v > 1 for v in box):
        return f"is {box!r}, out of range: box coordinates are normalised to [0, 1] (y1, x1, y2, x2)"
    if box[0] > box[2] or box[1] > box[3]:
        return f"is {box!r}: y1 > y2 or x1 > x2 (expected y1, x1, y2, x2)"
    return None


def _check_mask(value) -> str | None:
    from .masks import load_mask

    if value is None or isinstance(value, (bool, int, float)):
        return f"is {_type(value)}; expected a mask (an image path, a PIL image or a 2-D array)"
    try:
        mask = load_mask(value)
    except Exception as e:  # noqa: BLE001 - any reader error is a bad record
        return f"cannot be read as a mask ({type(e).__name__}: {e})".splitlines()[0]
    if mask.ndim not in (2, 3) or mask.size == 0:
        return f"has shape {mask.shape}; expected a 2-D mask [H, W] (or [H, W, C])"
    if mask.dtype.kind not in "biuf":
        return f"has dtype {mask.dtype}; expected a numeric mask"
    low, high = float(mask.min()), float(mask.max())
    if low < 0 or high > 255 or not (math.isfinite(low) and math.isfinite(high)):
        return f"has values in [{low:g}, {high:g}], out of range: a mask is 0/1, [0, 1] or 0..255"
    return None


def _check_loc_text(value) -> str | None:
    if not isinstance(value, str):
        return f"is {_type(value)}; expected a string of <locNNNN> tokens and labels"
    locs = [int(t) for t in _LOC.findall(value)]
    if any(t > 1023 for t in locs):
        return f"has a <loc> token out of range ({max(locs)} > 1023)"
    if any(t > 127 for t in map(int, _SEG.findall(value))):
        return "has a <seg> token out of range (> 127)"
    for k in range(0, len(locs) - 3, 4):
        y1, x1, y2, x2 = locs[k:k + 4]
        if y1 > y2 or x1 > x2:
            return f"has a box {locs[k:k + 4]} with y1 > y2 or x1 > x2"
    return None


def check_value(kind: str, value, record: Mapping) -> str | None:
    """Why ``value`` is not a ``kind`` (:data:`KINDS`), or ``None``. ``record``: for ``index:<list>``."""
    if kind in ("prompt", "text"):
        if not isinstance(value, str):
            return f"is {_type(value)}; expected a {'non-empty ' if kind == 'prompt' else ''}string"
        if kind == "prompt" and not value.strip():
            return "is an empty string; the prompt must say something"
        return None
    if kind == "target":
        if _is_number(value) or (isinstance(value, str) and value.strip()):
            return None
        return f"is {_type(value)}; expected a non-empty string"
    if kind == "answers":
        if isinstance(value, str):
            return None if value.strip() else "is an empty string; expected answers (a list of strings)"
        if not isinstance(value, (list, tuple)) or not value:
            return f"is {_type(value)}; expected a non-empty list of answers (strings)"
        bad = [v for v in value if not (isinstance(v, str) or _is_number(v))]
        if bad:
            return f"holds {_type(bad[0])}; answers must be strings"
        if not any(str(v).strip() for v in value):
            return "holds only empty strings; expected at least one answer"
        return None
    if kind.startswith("index:"):
        options = record.get(kind.split(":", 1)[1])
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            return f"is {_type(value)}; expected an integer index"
        n = len(options) if isinstance(options, (list, tuple)) else None
        if n is not None and not 0 <= int(value) < n:
            return f"is {int(value)}, out of range for {n} choices"
        return None
    if kind == "box":
        return _check_box(value)
    if kind == "mask":
        return _check_mask(value)
    if kind == "loc_text":
        return _check_loc_text(value)
    return "is null" if value is None else None


def _check_image(value) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "is an empty string; expected an image path"
    if isinstance(value, (os.PathLike, bytes)) or (isinstance(value, Mapping) and ("bytes" in value or
                                                                                  "path" in value)):
        return None
    if type(value).__name__.endswith("ImageFile") or hasattr(value, "getpixel"):  # a PIL image
        return None
    return f"is {_type(value)}; expected an image path, a PIL image or an image dict"


def check_record(record: Mapping, task, kinds: Mapping[str, str], image_key: str = "image") -> str | None:
    """The first problem of one record, as ``"'field' is ..."``, or ``None``."""
    if image_key in record:
        why = _check_image(record[image_key])
        if why:
            return f"{image_key!r} {why}"
    for name, kind in kinds.items():
        if name not in record:
            if kind == "text" or name == "hint":
                continue
            return f"{name!r} is missing; task {task.name!r} needs it"
        why = check_value(kind, record[name], record)
        if why:
            need = {"prompt": "a non-empty string", "target": "a non-empty string", "answers": "a list of answers",
                    "text": "a string"}.get(kind)
            suffix = f"; task {task.name!r} needs {need}" if need and "expected" not in why else ""
            return f"{name!r} {why}{suffix}"
    return None


def normalise(record: dict, kinds: Mapping[str, str]) -> dict:
    """Numbers in text fields as the builders print them (``3`` -> ``"3"``), so that a column loads as strings."""
    for name, kind in kinds.items():
        value = record.get(name)
        if kind == "target" and _is_number(value):
            record[name] = str(value)
        elif kind == "answers" and isinstance(value, (list, tuple)):
            record[name] = [str(v) for v in value]
        elif kind.startswith("index:") and isinstance(value, str):
            record[name] = int(value)
    return record
