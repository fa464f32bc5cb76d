"""Transfer data: raw records from files, folders or ``datasets`` -> a ``datasets.Dataset`` with ``image``,
``prefix``, ``suffix`` (+ the record's other fields, kept for evaluation).

Sources (:func:`load_records`):

- a JSONL / JSON-lines file (``.jsonl``, or ``.json`` holding a list of objects), a CSV / TSV file: image paths
  relative to the file's folder are made absolute. CSV cells are strings; a cell that starts with ``[`` and parses
  as JSON becomes a list (``answers``). The labeling-tool format ``{"image", "prefix", "suffix"}`` is this with the
  ``jsonl`` task;
- a folder written by ``Dataset.save_to_disk`` (``load_from_disk``);
- any other folder: ``datasets``' ``imagefolder`` (class sub-folders -> ``label``; a ``metadata.jsonl`` /
  ``metadata.csv`` beside the images adds its columns);
- a ``datasets.Dataset`` / ``DatasetDict`` (``split=`` picks one), or a Hub dataset name (``load_dataset``);
- COCO ``instances_*.json`` detection / segmentation annotations: :func:`load_coco`.

``column_map={"image": "img", "question": "q"}`` renames the source's columns (ours: theirs) to the task's fields.

Every record is checked against what its task reads BEFORE anything else (``load_records(..., task=...)``,
:mod:`~big_vision_hf.transfer.validation`): a missing or null target, a prompt that is not a string, an image field
that is not an image, an empty string where the task needs text, a VQA answers field that is not a list of
answers, a box or mask out of range raises :class:`~big_vision_hf.transfer.validation.BadRecordError` naming the
file and line (or the record index of a ``datasets`` source) and the field. Then every image is opened (PIL
``verify()`` then ``load()``, :func:`validate_images`): a bad one raises :class:`BadImageError` naming the record
index and path. With ``skip_bad=True`` bad records of either kind are dropped and counted (a warning, and the
report from ``return_report=True``).

The task (:mod:`big_vision_hf.transfer.tasks`) turns each record into ``prefix`` / ``suffix``. When its suffix is
a list of targets (big_vision ``choice_no_replacement``), ``expand`` decides: ``"random"`` draws one per record
(seeded per record index), ``"all"`` makes one row per target, ``"list"`` keeps the list (what
:func:`big_vision_hf.transfer.evaluation.evaluate` wants as references). big_vision draws a new answer each epoch;
a static dataset draws once (``"all"`` covers every answer instead).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import datasets
import numpy as np
from PIL import Image

from ..processing.paligemma_decoding import box_to_loc_tokens, mask_to_tokens
from .masks import coco_annotation_mask
from .tasks import BuildContext, TransferTask, get_task
from .validation import BadRecordError, check_record, field_kinds, normalise

__all__ = [
    "BadImageError",
    "BadRecordError",
    "DataReport",
    "build_examples",
    "load_coco",
    "load_records",
    "prepare_dataset",
    "validate_images",
]

logger = logging.getLogger(__name__)

EXPANDS = ("random", "all", "list")


class BadImageError(ValueError):
    """An image that PIL cannot open or decode (one line: record index, path, reason)."""


@dataclass
class DataReport:
    """What validation dropped: ``bad`` is ``[(record_index, where, reason), ...]`` (indices of the input; ``where``
    the image path, or ``file:line`` of a record that does not fit its task)."""

    num_records: int = 0
    num_bad: int = 0
    bad: list[tuple[int, str, str]] = field(default_factory=list)

    def __str__(self):
        s = f"{self.num_bad} of {self.num_records} records skipped (bad field or unreadable image)"
        if self.bad:
            i, where, why = self.bad[0]
            s += f"; first: record {i} ({where}): {why}"
        return s


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _resolve(path, base: str):
    if isinstance(path, str) and path and not os.path.isabs(path) and not _is_url(path):
        return os.path.normpath(os.path.join(base, path))
    return path


def _read_jsonl(path: str, lines: list[str] | None = None) -> list[dict]:
    """The records of a JSONL file (or a ``.json`` list); ``lines`` gets each record's ``file:line`` (``file[i]``
    for a JSON list)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    name = os.path.basename(path)
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        where = [f"{name}[{i}]" for i in range(len(rows))]
    else:
        rows, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
                where.append(f"{name}:{n}")
    for row, at in zip(rows, where):
        if not isinstance(row, dict):
            raise BadRecordError(f"{at}: a record must be a JSON object, got {type(row).__name__}")
    if lines is not None:
        lines[:] = where
    return rows


def _csv_cell(v: str):
    if v.startswith("["):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return v


def _read_csv(path: str, lines: list[str] | None = None) -> list[dict]:
    name, rows, where = os.path.basename(path), [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
        for row in reader:
            rows.append({k: _csv_cell(v) for k, v in row.items()})
            where.append(f"{name}:{reader.line_num}")
    if lines is not None:
        lines[:] = where
    return rows


def _apply_column_map(ds: datasets.Dataset, column_map: Mapping[str, str] | None) -> datasets.Dataset:
    if not column_map:
        return ds
    missing = [theirs for theirs in column_map.values() if theirs not in ds.column_names]
    if missing:
        raise KeyError(f"column_map names columns {missing} that the data lacks; columns: {ds.column_names}")
    renames = {theirs: ours for ours, theirs in column_map.items() if ours != theirs}
    clash = [ours for theirs, ours in renames.items() if ours in ds.column_names and ours not in renames]
    if clash:
        ds = ds.remove_columns(clash)
    return ds.rename_columns(renames)


def load_records(source, *, split: str | None = None, column_map: Mapping[str, str] | None = None,
                 image_key: str = "image", task: TransferTask | None = None, skip_bad: bool = False,
                 report: DataReport | None = None, **load_kwargs) -> datasets.Dataset:
    """Raw records as a ``datasets.Dataset`` (see the module docstring for the sources). ``load_kwargs`` go to
    ``datasets.load_dataset`` (Hub names and ``imagefolder``).

    With ``task``, every record is checked against the fields the task reads (:func:`validate_records`) before
    ``datasets`` converts a file's rows: a bad record raises :class:`BadRecordError` (``file:line``, record index,
    field, reason), or with ``skip_bad`` is dropped and added to ``report``."""
    lines = None
    if isinstance(source, datasets.DatasetDict):
        split = split or ("train" if "train" in source else next(iter(source)))
        ds = source[split]
    elif isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, (list, tuple)):
        rows, lines = [dict(r) for r in source], [f"record {i}" for i in range(len(source))]
        ds = _rows_to_dataset(rows, lines, column_map, image_key, task, skip_bad, report)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isfile(path):
            base = os.path.dirname(os.path.abspath(path))
            lower = path.lower()
            lines = []
            if lower.endswith((".jsonl", ".json")):
                rows = _read_jsonl(path, lines)
            elif lower.endswith((".csv", ".tsv")):
                rows = _read_csv(path, lines)
            else:
                raise ValueError(f"{path}: unknown file type (expected .jsonl, .json, .csv or .tsv)")
            if not rows:
                raise ValueError(f"{path}: no records")
            paths = [image_key] + [f for f, kind in (field_kinds(task) if task is not None else {}).items()
                                   if kind == "mask"]  # file paths relative to the data file
            for key in paths:
                theirs = (column_map or {}).get(key, key)
                for r in rows:
                    if theirs in r:
                        r[theirs] = _resolve(r[theirs], base)
            ds = _rows_to_dataset(rows, lines, column_map, image_key, task, skip_bad, report)
        elif os.path.isdir(path):
            if any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_info.json",
                                                                      "dataset_dict.json")):
                ds = datasets.load_from_disk(path)
                if isinstance(ds, datasets.DatasetDict):
                    return load_records(ds, split=split, column_map=column_map, image_key=image_key, task=task,
                                        skip_bad=skip_bad, report=report)
            else:
                _check_image_folder(path)
                ds = datasets.load_dataset("imagefolder", data_dir=path, split=split or "train", **load_kwargs)
        elif _looks_local(path):
            raise FileNotFoundError(f"{path}: no such file or folder")
        else:
            try:
                ds = datasets.load_dataset(path, split=split or "train", **load_kwargs)
            except Exception as e:  # noqa: BLE001 - offline, unknown name, gated: one line for the user
                detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(f"{path}: not a local file or folder, and not loadable as a Hub dataset ({detail})") \
                    from None
    else:
        raise TypeError(f"cannot load records from {type(source).__name__}")
    ds = _apply_column_map(ds, column_map)
    if task is not None and lines is None:
        ds = validate_records(ds, task, image_key=image_key, skip_bad=skip_bad, report=report)
    return ds


_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _looks_local(path: str) -> bool:
    """A path that cannot be a Hub dataset name (``name`` or ``owner/name``): a data file suffix, a leading ``.``,
    ``/`` or ``~``, or more than one ``/``."""
    return path.lower().endswith(_DATA_SUFFIXES) or path.startswith((".", "/", "~")) or path.count("/") > 1


def _check_image_folder(path: str) -> None:
    """A folder given as data that is not a ``save_to_disk`` dataset must hold images (``imagefolder``)."""
    for _, _, names in os.walk(path):
        if any(n.lower().endswith(_IMAGE_SUFFIXES) for n in names):
            return
    files = sorted(n for n in os.listdir(path) if n.lower().endswith(_DATA_SUFFIXES))
    hint = f"; give the data file itself, e.g. {os.path.join(path, files[0])}" if files else ""
    raise ValueError(f"{path}: a folder, but neither a save_to_disk dataset nor an image folder (no images in it)"
                     + hint)


def _mapped_view(row: dict, column_map: Mapping[str, str] | None) -> dict:
    view = dict(row)
    for ours, theirs in (column_map or {}).items():
        if theirs in row:
            view[ours] = row[theirs]
    return view


def _rows_to_dataset(rows: list[dict], lines: list[str], column_map, image_key: str, task, skip_bad: bool,
                     report: DataReport | None) -> datasets.Dataset:
    """Checks raw rows against ``task`` (with their ``file:line``), then ``datasets.Dataset.from_list``."""
    if task is not None:
        kinds = field_kinds(task)
        missing = [f for f in task.fields if not any(f in _mapped_view(r, column_map) for r in rows)]
        if missing:  # no record has the field: a column mapping problem, said once
            raise KeyError(f"task {task.name!r} needs fields {list(task.fields)}; missing {missing}; columns: "
                           f"{sorted({k for r in rows for k in r})} (pass column_map={{'field': 'your_column'}})")
        kept = []
        for i, (row, at) in enumerate(zip(rows, lines)):
            view = _mapped_view(row, column_map)
            why = check_record(view, task, kinds, image_key)
            if why is None:
                normalise(view, kinds)
                for ours, theirs in (column_map or {}).items():
                    if theirs in row:
                        row[theirs] = view.pop(ours)
                row.update(view)
                kept.append(row)
                continue
            where = at if at.startswith("record") else f"{at} (record {i})"
            if not skip_bad:
                raise BadRecordError(f"{where}: {why}")
            if report is not None:
                report.bad.append((i, at, why))
        if len(kept) < len(rows):
            logger.warning("%d of %d records skipped (they do not fit task %r); first: %s", len(rows) - len(kept),
                           len(rows), task.name, report.bad[0] if report is not None and report.bad else "")
        if not kept:
            raise BadRecordError(f"no record fits task {task.name!r} (all {len(rows)} skipped)")
        rows = kept
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as e:  # noqa: BLE001 - pyarrow's messages name neither the column nor the record
        raise BadRecordError(_mixed_column(rows, lines) or f"cannot build a dataset from the records "
                             f"({type(e).__name__}: {e})".splitlines()[0]) from None


def _mixed_column(rows: list[dict], lines: list[str]) -> str | None:
    """A column whose values have different types (what pyarrow refuses), with the first odd record."""
    kinds: dict[str, tuple[str, str]] = {}
    for row, at in zip(rows, lines):
        for key, value in row.items():
            if value is None:
                continue
            kind = "list" if isinstance(value, (list, tuple)) else type(value).__name__
            first = kinds.setdefault(key, (kind, at))
            if first[0] != kind:
                return (f"{at}: column {key!r} is a {kind} here but a {first[0]} at {first[1]}; "
                        "a column must hold one type")
    return None


def validate_records(ds: datasets.Dataset, task: TransferTask, *, image_key: str = "image", skip_bad: bool = False,
                     report: DataReport | None = None, chunk_size: int = 256) -> datasets.Dataset:
    """:func:`~big_vision_hf.transfer.validation.check_record` on every row of a ``datasets`` source (record index
    in the message; the images are not decoded here)."""
    kinds = field_kinds(task)
    columns = [c for c in ds.column_names if c in kinds or c == image_key]
    if not columns:
        return ds
    raw = _undecoded(ds, image_key).select_columns(columns)
    good, dropped = [], 0
    for start in range(0, len(raw), chunk_size):
        batch = raw[start:start + chunk_size]
        for j in range(len(batch[columns[0]])):
            i = start + j
            why = check_record({c: batch[c][j] for c in columns}, task, kinds, image_key)
            if why is None:
                good.append(i)
            elif not skip_bad:
                raise BadRecordError(f"record {i}: {why}")
            else:
                dropped += 1
                if report is not None:
                    report.bad.append((i, f"record {i}", why))
    if dropped:
        logger.warning("%d of %d records skipped (they do not fit task %r)", dropped, len(raw), task.name)
        if not good:
            raise BadRecordError(f"no record fits task {task.name!r} (all {len(raw)} skipped)")
        ds = ds.select(good)
    return ds


# ---------------------------------------------------------------------------------------------------------
# Image validation
# ---------------------------------------------------------------------------------------------------------


def _check_image(value) -> str:
    """Opens and decodes one image; returns its path (for messages); raises on failure."""
    if isinstance(value, Image.Image):
        value.load()
        return "<PIL image>"
    if isinstance(value, dict):  # datasets Image(decode=False): {"bytes", "path"}
        path = value.get("path") or "<bytes>"
        data = value.get("bytes")
        if data is None:
            value = value.get("path")
        else:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            return path
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if _is_url(path):
            raise ValueError("URLs are not fetched; download the images first")
        with Image.open(path) as im:
            im.verify()  # structure / checksums without decoding
        with Image.open(path) as im:
            im.load()  # full decode: catches truncated files
        return path
    if value is None:
        raise ValueError("no image")
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def _path_of(value) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return f"<{type(value).__name__}>"


def _undecoded(ds: datasets.Dataset, key: str) -> datasets.Dataset:
    feat = ds.features.get(key)
    if isinstance(feat, datasets.Image) and feat.decode:
        return ds.cast_column(key, datasets.Image(decode=False))
    return ds


def validate_images(ds: datasets.Dataset, *, image_key: str = "image", skip_bad: bool = False,
                    chunk_size: int = 256) -> tuple[datasets.Dataset, DataReport]:
    """Opens every record's image up front. ``skip_bad=False``: the first bad one raises :class:`BadImageError`
    (``"record 3: cannot read image /data/x.jpg: UnidentifiedImageError: ..."``); ``skip_bad=True``: bad records
    are dropped and listed in the returned :class:`DataReport`."""
    if image_key not in ds.column_names:
        raise KeyError(f"no {image_key!r} column; columns: {ds.column_names} (pass column_map={{'image': ...}})")
    raw = _undecoded(ds, image_key)
    report = DataReport(num_records=len(raw))
    good = []
    for start in range(0, len(raw), chunk_size):
        for i, value in enumerate(raw[start:start + chunk_size][image_key], start):
            try:
                _check_image(value)
                good.append(i)
            except Exception as e:  # noqa: BLE001 - any decoder error means a bad record
                why = f"{type(e).__name__}: {e}".splitlines()[0]
                if not skip_bad:
                    raise BadImageError(f"record {i}: cannot read image {_path_of(value)}: {why}") from None
                report.bad.append((i, _path_of(value), why))
    report.num_bad = len(report.bad)
    if report.num_bad:
        logger.warning("%s", report)
        ds = ds.select(good)
    return ds, report


# ---------------------------------------------------------------------------------------------------------
# Records -> prefix / suffix
# ---------------------------------------------------------------------------------------------------------


def build_examples(records: datasets.Dataset, task: TransferTask | str, *, expand: str = "random", seed: int = 0,
                   vqvae=None, image_key: str = "image") -> datasets.Dataset:
    """Adds ``prefix`` and ``suffix`` from the task's templates / builders. Record ``i`` uses
    ``random.Random(f"{seed}/{i}")``, so draws do not depend on batching. Other columns are kept."""
    task = get_task(task) if isinstance(task, str) else task
    if expand not in EXPANDS:
        raise ValueError(f"expand must be one of {EXPANDS}, got {expand!r}")
    missing = [f for f in task.fields if f not in records.column_names]
    if missing:
        raise KeyError(f"task {task.name!r} needs fields {list(task.fields)}; missing {missing}; columns: "
                       f"{records.column_names} (pass column_map={{'field': 'your_column'}})")
    raw = _undecoded(records, image_key) if image_key in records.column_names else records
    image_feature = records.features.get(image_key)
    columns = raw.column_names

    def fn(batch, indices):
        out = {c: [] for c in columns}
        out["prefix"], out["suffix"] = [], []
        for j, i in enumerate(indices):
            record = {c: batch[c][j] for c in columns}
            ctx = BuildContext(rng=random.Random(f"{seed}/{i}"), vqvae=vqvae)
            try:
                prefix, suffix = task.build(record, ctx)
            except Exception as e:
                raise type(e)(f"record {i} ({_path_of(record.get(image_key))}): {e}") from e
            if isinstance(suffix, str):
                targets = [suffix]
            elif expand == "list":
                targets = [list(suffix)]
            elif not suffix:
                raise ValueError(f"record {i}: task {task.name!r} gave no target")
            elif expand == "random":
                targets = [ctx.rng.choice(list(suffix))]
            else:
                targets = list(suffix)
            for t in targets:
                for c in columns:
                    if c not in ("prefix", "suffix"):
                        out[c].append(record[c])
                out["prefix"].append(prefix)
                out["suffix"].append(t)
        return out

    ds = raw.map(fn, batched=True, batch_size=64, with_indices=True, remove_columns=columns,
                 desc=f"{task.name}: prefix/suffix")
    if isinstance(image_feature, datasets.Image):
        ds = ds.cast_column(image_key, datasets.Image(decode=image_feature.decode))
    return ds


def prepare_dataset(source, task: TransferTask | str = "jsonl", *, res: int | None = None, split: str | None = None,
                    column_map: Mapping[str, str] | None = None, skip_bad: bool = False, validate: bool = True,
                    expand: str = "random", seed: int = 0, vqvae=None, decode_images: bool = True,
                    image_key: str = "image", return_report: bool = False, **load_kwargs):
    """Loads, validates the images, and builds ``prefix`` / ``suffix``: the one call for training data.

    Args:
        source: see :func:`load_records` (a file, folder, ``Dataset``, Hub name, list of dicts).
        task: a :class:`TransferTask` or a task name (``"vqav2"``, ``"jsonl"``, ...).
        res: resolution for :func:`get_task` (only used to pick the task's setting; images are not resized here).
        column_map: ``{"field": "your_column"}``.
        skip_bad: drop (and count) records whose image cannot be read instead of raising.
        expand: ``"random"`` | ``"all"`` | ``"list"`` for tasks with several targets (module docstring).
        vqvae: a ``BvSegVQVAEModel`` with encoder, for ``<seg>`` targets (``refcoco_seg``).
        decode_images: cast string paths to ``datasets.Image()`` so rows give PIL images.
        return_report: also return the :class:`DataReport`.
    """
    if isinstance(task, str):
        task = get_task(task, res=res or 224)
    report = DataReport()
    ds = load_records(source, split=split, column_map=column_map, image_key=image_key,
                      task=task if validate else None, skip_bad=skip_bad, report=report, **load_kwargs)
    report.num_records = len(ds) + len(report.bad)
    if validate:
        kept = len(ds)
        ds, images = validate_images(ds, image_key=image_key, skip_bad=skip_bad)
        if images.bad:  # indices of the records that passed the field checks -> indices of the input
            dropped = {i for i, _, _ in report.bad}
            index = [i for i in range(kept + len(dropped)) if i not in dropped]
            report.bad += [(index[i], where, why) for i, where, why in images.bad]
        report.num_bad = len(report.bad)
    ds = build_examples(ds, task, expand=expand, seed=seed, vqvae=vqvae, image_key=image_key)
    if decode_images and image_key in ds.column_names:
        feat = ds.features[image_key]
        if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string"):
            ds = ds.cast_column(image_key, datasets.Image())
        elif isinstance(feat, datasets.Image) and not feat.decode:
            ds = ds.cast_column(image_key, datasets.Image())
    return (ds, report) if return_report else ds


# ---------------------------------------------------------------------------------------------------------
# COCO annotations
# ---------------------------------------------------------------------------------------------------------


def load_coco(instances_json, *, image_dir=None, kind: str = "detection", vqvae=None, group: str = "image",
              include_crowd: bool = False, keep_empty: bool = False, keep_masks: bool = False) -> datasets.Dataset:
    """COCO ``instances_*.json`` -> records for the ``detection`` / ``segmentation`` tasks.

    Per record: ``image`` (absolute path; ``image_dir`` defaults to the JSON's folder), ``image_id``, ``width``,
    ``height``, ``categories`` (``"cat ; dog"``: names in order of first appearance -> the prefix
    ``detect cat ; dog``), ``objects`` (the suffix: ``"<loc>x4 cat ; <loc>x4 dog"``, or with ``kind=
    "segmentation"`` ``"<loc>x4<seg>x16 cat ; ..."``), ``boxes`` (normalised ``y1, x1, y2, x2`` per object),
    ``labels``, and ``bbox`` (the first object's box, what the ``detection`` / ``segmentation`` metrics read).

    Args:
        kind: ``"detection"`` (boxes -> ``<loc>`` via ``box_to_loc_tokens``) or ``"segmentation"`` (masks ->
            ``<loc><seg>`` via ``mask_to_tokens`` and ``vqvae``; polygons and RLE, compressed or not).
        vqvae: a ``BvSegVQVAEModel`` with encoder (required for segmentation).
        group: ``"image"`` (one record per image, all its objects) or ``"object"`` (one record per annotation,
            prefix ``detect cat``; RefCOCO-like, what the single-object metrics score exactly).
        include_crowd: keep ``iscrowd=1`` annotations (COCO convention: ignored).
        keep_empty: keep images without annotations (empty suffix).
        keep_masks: store the full-resolution ``mask`` (``uint8``) for the ``segmentation`` metric
            (``group="object"`` only; heavy).
    """
    if kind not in ("detection", "segmentation"):
        raise ValueError(f"kind must be 'detection' or 'segmentation', got {kind!r}")
    if group not in ("image", "object"):
        raise ValueError(f"group must be 'image' or 'object', got {group!r}")
    if kind == "segmentation" and vqvae is None:
        raise ValueError("kind='segmentation' needs vqvae=BvSegVQVAEModel(...) with an encoder")
    path = os.fspath(instances_json)
    with open(path, encoding="utf-8") as f:
        coco = json.load(f)
    image_dir = os.fspath(image_dir) if image_dir is not None else os.path.dirname(os.path.abspath(path))
    cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image: dict[int, list] = {}
    for ann in coco.get("annotations", []):
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)

    rows = []
    for img in coco.get("images", []):
        h, w = int(img["height"]), int(img["width"])
        anns = by_image.get(img["id"], [])
        objs = []
        for ann in anns:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            box = [y / h, x / w, (y + bh) / h, (x + bw) / w]
            label = cats.get(ann["category_id"], str(ann["category_id"]))
            mask = None
            try:
                if kind == "segmentation":
                    mask = coco_annotation_mask(ann, h, w)
                    tokens = mask_to_tokens(mask, vqvae, box)
                else:
                    tokens = box_to_loc_tokens(box)
            except ValueError as e:
                raise ValueError(f"annotation {ann.get('id')} of image {img['file_name']}: {e}") from None
            objs.append((box, label, tokens, mask))
        base = {"image": _resolve(img["file_name"], image_dir), "image_id": img["id"], "width": w, "height": h}
        if group == "object":
            for box, label, tokens, mask in objs:
                row = {**base, "categories": label, "objects": f"{tokens} {label}", "boxes": [box],
                       "labels": [label], "bbox": box}
                if keep_masks and mask is not None:
                    row["mask"] = mask.astype(np.uint8) * 255
                rows.append(row)
            continue
        if not objs and not keep_empty:
            continue
        names = list(dict.fromkeys(label for _, label, _, _ in objs))
        rows.append({**base, "categories": " ; ".join(names),
                     "objects": " ; ".join(f"{tokens} {label}" for _, label, tokens, _ in objs),
                     "boxes": [o[0] for o in objs], "labels": [o[1] for o in objs],
                     "bbox": objs[0][0] if objs else [0.0, 0.0, 0.0, 0.0]})
    if not rows:
        raise ValueError(f"{path}: no images with annotations")
    return datasets.Dataset.from_list(rows)
