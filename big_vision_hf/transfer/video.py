"""Video transfer (MSR-VTT, MSVD, ActivityNet, VATEX): frames as big_vision feeds them to PaliGemma.

big_vision (commit 0127fb6):

- ``configs/proj/paligemma/transfers/{msrvtt,msvd,activitynet}_{cap,qa}.py``, ``vatex_cap.py``: a video reader
  (DMVR, not released) samples ``num_frames`` frames every ``stride`` frames; ``deterministic_fs=True`` (evaluation)
  starts at the first frame, training picks a random start "if there are more frames than num_frames * stride";
- ``pp/proj/paligemma/video.py``: ``video_decode(res)`` resizes every frame to ``res x res`` and maps it to
  [-1, 1]; ``video_replicate_img(num_frames, num_frames)`` tiles a short clip and keeps ``num_frames`` frames
  (``[f0, f1, f2]`` -> ``[f0, f1, f2, f0, f1, ...]``); ``video_choice`` draws one caption;
- ``models/proj/paligemma/paligemma.py`` ``embed_image``: a ``[B, T, H, W, 3]`` input is folded into the batch
  (``[B*T, H, W, 3]``), encoded by SigLIP, and the tokens of the T frames are concatenated per example
  (``[B, T*256, D]``).

Here a video example is a LIST of frames: :class:`~big_vision_hf.processing.processing_paligemma.
BvPaliGemmaProcessor` takes a list of images per prompt, puts ``len(frames) x image_seq_length`` ``<image>``
tokens in front of the prompt and returns the frames stacked as ``pixel_values [B*T, 3, H, W]`` (frames of one
example consecutive); transformers' ``PaliGemmaForConditionalGeneration`` encodes that flat batch and scatters the
features into the ``<image>`` positions in order -- the fold of ``paligemma.py`` (checked in
``tests/test_transfer_video.py``). :func:`load_frames` samples the frames from a list of frames, a folder of frame
images or a video file (PyAV, the optional extra ``video``); :func:`prepare_video_dataset` builds the rows
(``image`` = the frame list, ``prefix``, ``suffix``) that ``train`` and ``evaluate`` take.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["VIDEO_EXTENSIONS", "load_frames", "load_video_dataset", "prepare_video_dataset", "sample_frame_indices"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
_FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def sample_frame_indices(num_video_frames: int, num_frames: int, stride: int, *, deterministic: bool = True,
                         rng: random.Random | None = None) -> list[int]:
    """The frames the reader keeps, then ``video_replicate_img``: ``num_frames`` indices into the video.

    ``offset + k * stride`` for ``k < num_frames``, the indices past the end dropped; ``offset`` is 0 when
    ``deterministic`` (big_vision's evaluation, ``deterministic_fs=True``), else uniform in ``[0, n - (num_frames
    - 1) * stride)`` when the video is longer than the span (training). A clip shorter than ``num_frames`` samples
    is tiled (``video_replicate_img``).
    """
    if num_video_frames < 1:
        raise ValueError("the video has no frames")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be positive, got {num_frames}, {stride}")
    span = (num_frames - 1) * stride + 1
    offset = 0
    if not deterministic and num_video_frames > span:
        offset = (rng or random.Random()).randrange(num_video_frames - span + 1)
    kept = [i for i in range(offset, offset + num_frames * stride, stride) if i < num_video_frames]
    return [kept[k % len(kept)] for k in range(num_frames)]  # tf.tile(image, [num_frames, ...])[:num_frames]


def _as_pil(frame) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    if isinstance(frame, (str, os.PathLike)):
        with Image.open(frame) as im:
            return im.convert("RGB")
    if isinstance(frame, Mapping) and ("path" in frame or "bytes" in frame):  # a datasets Image dict
        import io

        if frame.get("bytes"):
            return Image.open(io.BytesIO(frame["bytes"])).convert("RGB")
        return _as_pil(frame["path"])
    array = np.asarray(frame)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):  # CHW
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array).convert("RGB")


def _decode_video(path: str, indices: Sequence[int] | None = None) -> list[Image.Image]:
    """All frames (or those at ``indices``) of a video file, with PyAV."""
    try:
        import av
    except ImportError:
        raise ImportError("decoding a video file needs PyAV: pip install 'big_vision_hf[video]' (or av); "
                          "or give the frames as a list of images or a folder of frame images") from None
    wanted = None if indices is None else set(indices)
    frames = {}
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if wanted is None or i in wanted:
                frames[i] = frame.to_image().convert("RGB")
            if wanted is not None and len(frames) == len(wanted):
                break
    return [frames[i] for i in sorted(frames)] if indices is None else [frames[i] for i in indices]


def _count_video_frames(path: str) -> int:
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def load_frames(source, num_frames: int, stride: int = 1, *, deterministic: bool = True,
                rng: random.Random | None = None) -> list[Image.Image]:
    """``num_frames`` RGB frames of a video sampled as big_vision's video configs (:func:`sample_frame_indices`).

    Args:
        source: a list of frames (PIL images, arrays ``[H, W, 3]``, paths, ``datasets`` image dicts), an array
            ``[T, H, W, 3]``, a folder of frame images (sorted by name) or a video file (PyAV).
        num_frames, stride: the config's ``num_frames`` / ``stride``.
        deterministic: evaluation (start at the first frame) or training (random start, ``rng``).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(_FRAME_EXTENSIONS))
            if not names:
                raise ValueError(f"{path}: no frame images ({', '.join(_FRAME_EXTENSIONS)})")
            source = [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            indices = sample_frame_indices(_count_video_frames(path), num_frames, stride,
                                           deterministic=deterministic, rng=rng)
            return _decode_video(path, indices)
        else:
            raise FileNotFoundError(f"{path}: no such video file or frame folder")
    if isinstance(source, np.ndarray) and source.ndim == 4:
        source = list(source)
    if not isinstance(source, Sequence) or isinstance(source, (bytes, str)) or not len(source):
        raise ValueError("a video is a non-empty list of frames, an array [T, H, W, 3], a folder or a video file")
    indices = sample_frame_indices(len(source), num_frames, stride, deterministic=deterministic, rng=rng)
    return [_as_pil(source[i]) for i in indices]


def _resolve_paths(value, base_dir: str | None):
    """Relative paths (a video file, a frame folder, frame files) taken relative to ``base_dir``."""
    if base_dir is None:
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return path if os.path.isabs(path) or "://" in path else os.path.join(base_dir, path)
    if isinstance(value, (list, tuple)):
        return [_resolve_paths(v, base_dir) if isinstance(v, (str, os.PathLike)) else v for v in value]
    return value


def prepare_video_dataset(records, task, *, video_key: str = "video", train: bool = False, seed: int = 0,
                          expand: str = "random", num_frames: int | None = None, stride: int | None = None,
                          base_dir: str | None = None):
    """Rows ``{image: [frames], prefix, suffix, ...}`` of a video task (``msrvtt_cap``, ... or your own).

    Args:
        records: dicts (or a ``datasets.Dataset``) with ``video_key`` (see :func:`load_frames`) and the task's
            fields (``captions``; ``question`` / ``answer``).
        task: a video :class:`~big_vision_hf.transfer.tasks.TransferTask` (its ``num_frames`` / ``frame_stride``
            are the config's) or its name.
        train: training (random start per record, seeded by ``seed`` and the record's index) or evaluation.
        expand: for several targets (captions): ``"random"`` (one, as ``video_choice``), ``"list"`` (the list:
            evaluation references) or ``"all"``.
        num_frames, stride: override the task's.
        base_dir: relative paths in ``video_key`` are relative to it (e.g. the folder of a JSONL file).
    """
    from .tasks import BuildContext, get_task

    task = get_task(task) if isinstance(task, str) else task
    num_frames = num_frames or task.num_frames
    stride = stride or task.frame_stride
    rows = []
    for i, record in enumerate(records):
        record = dict(record)
        if video_key not in record:
            raise KeyError(f"record {i}: no {video_key!r} field (frames, a frame folder or a video file)")
        missing = [f for f in task.fields if f not in record]
        if missing:
            raise KeyError(f"record {i}: task {task.name!r} needs fields {list(task.fields)}; missing {missing}")
        rng = random.Random(f"{seed}/{i}")
        frames = load_frames(_resolve_paths(record.pop(video_key), base_dir), num_frames, stride,
                             deterministic=not train, rng=rng)
        prefix, suffix = task.build(record, BuildContext(rng=rng))
        if isinstance(suffix, str) or expand == "list":
            targets = [suffix]
        elif expand == "random":
            targets = [rng.choice(list(suffix))]
        elif expand == "all":
            targets = list(suffix)
        else:
            raise ValueError(f"expand must be 'random', 'list' or 'all', got {expand!r}")
        for target in targets:
            rows.append({**record, "image": frames, "prefix": prefix, "suffix": target})
    return rows


def load_video_dataset(source, task, *, split: str | None = None, column_map=None, video_key: str = "video",
                       train: bool = False, seed: int = 0, expand: str | None = None, limit: int | None = None):
    """:func:`prepare_video_dataset` on records read by :func:`~big_vision_hf.transfer.data.load_records` (a
    JSONL / CSV file -- relative paths in ``video_key`` are relative to it --, a folder, a Hub dataset, a
    ``datasets.Dataset``, dicts), as a ``datasets.Dataset`` (``image``: the list of frames). ``expand`` defaults
    to ``"random"`` for training and ``"list"`` (all references) for evaluation."""
    import datasets

    from .data import load_records

    records = load_records(source, split=split, column_map=column_map, image_key=video_key)
    if limit:
        records = records.select(range(min(limit, len(records))))
    base_dir = None
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        base_dir = os.path.dirname(os.path.abspath(source))
    rows = prepare_video_dataset(records, task, video_key=video_key, train=train, seed=seed,
                                 expand=expand or ("random" if train else "list"), base_dir=base_dir)
    return datasets.Dataset.from_list(rows)
