"""The metrics of UViM's tasks (big_vision ``evaluators/proj/uvim/``).

- `PanopticQuality` / `panoptic_quality`: COCO panoptic quality (PQ, SQ, RQ for all, thing and stuff classes), as
  big_vision's ``coco_panoptic.py`` computes it: the two-channel maps become COCO panoptic segments as panopticapi's
  ``converters/2channels2panoptic_coco_format.py`` makes them (class 0 is void; one segment per (class, instance)
  of a thing class, one per stuff class), then panopticapi's ``evaluation.pq_compute`` (matching at IoU > 0.5 with
  the ground truth's void pixels left out of the union, crowd regions ignored, predicted segments mostly on void or
  crowd not counted as false positives). Written here because panopticapi is not on PyPI, and torchmetrics'
  ``PanopticQuality`` scores predicted-void pixels differently (it also leaves them out of the union).
- `depth_metrics`: the NYU depth evaluator (``nyu_depth.py``): per image, on pixels whose ground truth lies in
  ``(min_depth, max_depth)``, RMSE, absolute relative error, mean ``|log10|`` error and the ``delta < 1.25**k``
  ratios, averaged over images; the prediction is first resized to the ground truth's size with
  ``jax.image.resize(..., "nearest")``.
- `psnr`: ``psnr.py``: per image ``20 log10(2) - 10 log10(MSE)`` for images in [-1, 1], averaged by the caller.

Colorization FID (``coltran_fid.py``) is not provided: the maintained implementations (``torch-fidelity``,
``pytorch-fid``, torchmetrics' ``FrechetInceptionDistance``) need torchvision and download Inception weights at run
time.

Example:
    >>> import numpy as np
    >>> from big_vision_hf.processing.uvim_metrics import depth_metrics, panoptic_quality
    >>> gt = np.full((1, 4, 4), 2.0, np.float32)
    >>> round(depth_metrics(gt * 1.1, gt)["RMSE"], 3)
    0.2
    >>> pan = np.zeros((1, 4, 4, 2), np.int64); pan[..., 0] = 3  # one thing segment (class 3, instance 0)
    >>> panoptic_quality(pan, pan)["All_pq"]
    1.0
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .uvim_tasks import resize_nearest

#: UViM's COCO panoptic classes (big_vision pp ``coco_panoptic``: 0 void, ``1 + i`` the i-th category of
#: ``panoptic_coco_categories.json``, whose 80 thing categories come before its 53 stuff categories).
COCO_PANOPTIC_THINGS = tuple(range(1, 81))
COCO_PANOPTIC_STUFFS = tuple(range(81, 134))
_VOID = 0


class PanopticQuality:
    """COCO panoptic quality over a dataset, as panopticapi's ``pq_compute`` (see the module doc): `update` with
    batches of ``[B, H, W, 2]`` (class, instance id) maps, then `compute`.

    Args:
        things: the thing classes (one segment per instance).
        stuffs: the stuff classes (one segment per class; instance ids ignored). A predicted class in neither is an
            error, as in panopticapi; class 0 is void.
    """

    def __init__(self, things=COCO_PANOPTIC_THINGS, stuffs=COCO_PANOPTIC_STUFFS):
        self.things, self.stuffs = set(things), set(stuffs)
        if self.things & self.stuffs or _VOID in self.things | self.stuffs:
            raise ValueError("things and stuffs must be disjoint and not contain the void class 0")
        self.stats = defaultdict(lambda: np.zeros(4))  # class -> [iou sum, tp, fp, fn]

    def _segments(self, pan: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
        """``[H, W, 2]`` -> ``[H, W]`` segment ids (0 = void) and ``{segment id: class}`` (2channels2panoptic)."""
        sem, ins = pan[..., 0].astype(np.int64), pan[..., 1].astype(np.int64)
        unknown = set(np.unique(sem).tolist()) - self.things - self.stuffs - {_VOID}
        if unknown:
            raise ValueError(f"unknown semantic classes {sorted(unknown)} (neither thing, stuff nor void 0)")
        ins = np.where(np.isin(sem, list(self.things)), ins, 0)  # a stuff class is one segment
        ids = np.where(sem == _VOID, 0, sem * (int(ins.max(initial=0)) + 1) + ins + 1)
        classes = {int(i): int(c) for i, c in zip(ids.ravel(), sem.ravel()) if i}
        return ids, classes

    def update(self, preds, targets, crowd=None) -> None:
        """Adds a batch. ``crowd`` (optional ``[B, H, W]`` bool): the ground truth's crowd pixels (``iscrowd``
        segments of COCO)."""
        preds, targets = np.asarray(preds), np.asarray(targets)
        if preds.shape != targets.shape or preds.shape[-1] != 2:
            raise ValueError(f"expected preds and targets of one shape [B, H, W, 2], got {preds.shape} and "
                             f"{targets.shape}")
        crowd = np.zeros(preds.shape[:-1], bool) if crowd is None else np.asarray(crowd, bool)
        for pred, target, crowd_map in zip(preds, targets, crowd):
            self._update_one(pred, target, crowd_map)

    def _update_one(self, pred, target, crowd_map) -> None:
        pred_ids, pred_class = self._segments(pred)
        gt_ids, gt_class = self._segments(target)
        gt_crowd = {int(i) for i in np.unique(gt_ids[crowd_map]) if i}
        pred_area = dict(zip(*[a.tolist() for a in np.unique(pred_ids, return_counts=True)]))
        gt_area = dict(zip(*[a.tolist() for a in np.unique(gt_ids, return_counts=True)]))
        pairs, counts = np.unique(np.stack([gt_ids.ravel(), pred_ids.ravel()]), axis=1, return_counts=True)
        overlap = {(int(g), int(p)): int(n) for (g, p), n in zip(pairs.T, counts)}
        gt_matched, pred_matched = set(), set()
        for (g, p), intersection in overlap.items():
            if not g or not p or g in gt_crowd or gt_class[g] != pred_class[p]:
                continue
            union = pred_area[p] + gt_area[g] - intersection - overlap.get((_VOID, p), 0)
            iou = intersection / union
            if iou > 0.5:
                self.stats[gt_class[g]][:2] += (iou, 1)
                gt_matched.add(g)
                pred_matched.add(p)
        crowd_of_class = {gt_class[g]: g for g in gt_crowd}
        for g, cls in gt_class.items():
            if g not in gt_matched and g not in gt_crowd:
                self.stats[cls][3] += 1
        for p, cls in pred_class.items():
            if p in pred_matched:
                continue
            ignored = overlap.get((_VOID, p), 0) + overlap.get((crowd_of_class.get(cls, -1), p), 0)
            if ignored / pred_area[p] <= 0.5:
                self.stats[cls][2] += 1

    def compute(self) -> dict[str, float]:
        """``{All,Things,Stuff}_{pq,sq,rq}`` (big_vision's keys), averaged over the classes that occur (``n``)."""
        out = {}
        for name, classes in (("All", self.things | self.stuffs), ("Things", self.things), ("Stuff", self.stuffs)):
            rows = [self.stats[c] for c in sorted(classes) if c in self.stats and self.stats[c][1:].sum() > 0]
            pq = [iou / (tp + 0.5 * fp + 0.5 * fn) for iou, tp, fp, fn in rows]
            sq = [iou / tp if tp else 0.0 for iou, tp, fp, fn in rows]
            rq = [tp / (tp + 0.5 * fp + 0.5 * fn) for iou, tp, fp, fn in rows]
            for key, values in (("pq", pq), ("sq", sq), ("rq", rq)):
                out[f"{name}_{key}"] = float(np.mean(values)) if values else 0.0
            out[f"{name}_n"] = len(rows)
        return out


def panoptic_quality(preds, targets, things=COCO_PANOPTIC_THINGS, stuffs=COCO_PANOPTIC_STUFFS,
                     crowd=None) -> dict[str, float]:
    """`PanopticQuality` of one batch of ``[B, H, W, 2]`` (class, instance id) maps (predictions at the ground
    truth's size, e.g. from `UViMPanopticPipeline` with ``resize_to_input=True``)."""
    metric = PanopticQuality(things, stuffs)
    metric.update(preds, targets, crowd)
    return metric.compute()


def depth_metrics(preds, targets, min_depth: float = 1e-3, max_depth: float = 10.0) -> dict[str, float]:
    """big_vision's NYU depth metrics of predicted ``[B, h, w]`` and ground-truth ``[B, H, W]`` depth maps (metres;
    the ground truth already cropped to the evaluation area, as ``nyu_depth.py`` assumes): ``RMSE``, ``abs_RE``,
    ``log10``, ``delta1``, ``delta2``, ``delta3``, each the mean of the per-image values."""
    per_image = {k: [] for k in ("RMSE", "abs_RE", "log10", "delta1", "delta2", "delta3")}
    for pred, gt in zip(np.asarray(preds), np.asarray(targets)):
        pred = resize_nearest(pred, gt.shape)
        valid = np.logical_and(gt > min_depth, gt < max_depth)
        g, p = gt[valid], pred[valid]
        per_image["RMSE"].append(np.sqrt(np.mean(np.power(g - p, 2))))
        per_image["abs_RE"].append(np.mean(np.abs(g - p) / g))
        per_image["log10"].append(np.mean(np.abs(np.log10(g) - np.log10(p))))
        ratio = np.maximum(g / p, p / g)
        for k in (1, 2, 3):
            per_image[f"delta{k}"].append(np.sum(ratio < 1.25**k) / ratio.size)
    return {k: float(np.mean(v)) for k, v in per_image.items()}


def psnr(preds, targets, dynamic_range: float = 2.0) -> np.ndarray:
    """Per-image PSNR of ``[B, H, W, C]`` images in [-1, 1] (``psnr.py _psnr``: ``20 log10(range) - 10 log10(MSE)``);
    big_vision reports the mean."""
    preds, targets = np.asarray(preds, np.float32), np.asarray(targets, np.float32)
    mse = np.mean(np.power(preds - targets, 2), axis=tuple(range(1, preds.ndim)))
    return 20.0 * np.log10(dynamic_range) - 10.0 * np.log10(mse)
