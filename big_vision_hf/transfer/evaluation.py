"""The evaluation loop of big_vision's PaliGemma transfer evaluators, for transformers' PaliGemma.

big_vision (commit 0127fb6): the evaluators (``evaluators/proj/paligemma/transfers/*.py``) feed
``combine_and_keep_eval`` prompts (``[bos] prefix "\\n"``, no suffix; ``configs/proj/paligemma/transfers/
common.py``), decode with ``trainers/proj/paligemma/predict_fns.py`` -- greedy, or ``beam_decode`` (COCO: 2
beams, TextCaps: 3) which ranks beams by their summed log-probability, without length normalisation -- up to
``max_decode_len`` tokens or ``<eos>``, turn tokens into text with ``tok.to_str(stop_at_eos=True)`` and score
them (:mod:`big_vision_hf.transfer.metrics`).

Here: :class:`~big_vision_hf.processing.processing_paligemma.BvPaliGemmaProcessor` in prompt mode (no suffix,
left padding, ``token_type_ids``), ``model.generate`` (``do_sample=False``; beams with ``length_penalty=0.0``,
i.e. summed log-probabilities as big_vision), ``processor.post_process_generation`` (prompt cut off, stop at
``<eos>``), the task's metric; predictions go to ``predictions.jsonl`` and scores to ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

import numpy as np
import torch

from .metrics import METRICS
from .recipe import Recipe

__all__ = ["EvalResult", "evaluate"]


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` returns: the metric's dict, the generated texts (dataset order) and the files."""

    metrics: dict[str, float]
    predictions: list[str]
    predictions_file: str | None = None
    metrics_file: str | None = None


def _batches(dataset: Iterable[dict], batch_size: int):
    batch = []
    for row in dataset:
        batch.append(row)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _jsonable(value):
    """A JSON-friendly copy of a dataset field, or ``None`` to leave it out (images, masks, big arrays)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        size = value.size if isinstance(value, np.ndarray) else value.numel()
        return value.tolist() if size <= 16 else None  # boxes yes, masks no
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if isinstance(value, dict):
        return {str(k): v for k, v in ((k, _jsonable(v)) for k, v in value.items()) if v is not None}
    return None


def evaluate(
    model,
    processor,
    dataset: Iterable[dict],
    recipe: Recipe,
    batch_size: int = 8,
    *,
    metric_kwargs: dict | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    generate_kwargs: dict | None = None,
) -> EvalResult:
    """Generates an answer for every row of ``dataset`` and scores it with the recipe's metric.

    Args:
        model: a ``PaliGemmaForConditionalGeneration`` (set to eval mode here).
        processor: a ``BvPaliGemmaProcessor`` (prompts are built without suffix, left-padded).
        dataset: rows (dicts, e.g. a ``datasets.Dataset``) with ``image`` (PIL), ``prefix`` (the prompt),
            ``suffix`` (the reference: a string, or a list of strings for several ground truths) and the extra
            fields the metric reads (``answer_type``, ``question_type``, ``issimple``, ``bbox``, ``mask``, ...).
        recipe: a :class:`~big_vision_hf.transfer.recipe.Recipe` (``task.recipe(...)``, or
            ``Recipe(metric=..., text_len=...)``): its ``metric`` and ``metric_kwargs``, decoding (greedy, or beams
            ranked by summed log-probability) and ``max_new_tokens`` (big_vision's ``max_decode_len`` =
            ``text_len``).
        batch_size: prompts per ``generate`` call.
        metric_kwargs: more options for the metric, over the recipe's (``vqvae=...`` for segmentation's mIoU).
        output_dir: where ``predictions.jsonl`` and ``metrics.json`` are written (created); ``None``: not written.
        progress: show a tqdm progress bar.
        generate_kwargs: more ``model.generate`` arguments.

    Returns:
        An :class:`EvalResult`.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"evaluate() takes a Recipe (task.recipe(res, ...)), got {type(recipe).__name__}")
    metric, decoding, num_beams = recipe.metric, recipe.decoding, recipe.num_beams
    max_new_tokens = recipe.max_new_tokens
    if metric is None:
        raise ValueError(f"recipe {recipe.name!r} has no metric; known: {sorted(METRICS)}")
    if not max_new_tokens:
        raise ValueError("the recipe's text_len is required: big_vision decodes up to the config's text_len tokens")
    metric_kwargs = {**recipe.metric_kwargs, **(metric_kwargs or {})}
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    if hasattr(processor, "check_model"):
        processor.check_model(model, training=False)
    model.eval()
    tok = processor.tokenizer
    gen = dict(max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=int(num_beams),
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if decoding == "beam":
        gen.update(length_penalty=0.0)  # big_vision beam_decode: summed log-probabilities, no length normalisation
    gen.update(generate_kwargs or {})
    device = getattr(model, "device", torch.device("cpu"))
    dtype = getattr(model, "dtype", torch.float32)

    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        total = None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"eval {metric}", unit="ex", disable=not progress)
    predictions, references, examples = [], [], []
    for rows in _batches(dataset, batch_size):
        for row in rows:
            if "image" not in row or "prefix" not in row:
                raise ValueError(f"every row needs 'image' and 'prefix' (got keys {sorted(row)})")
        inputs = processor(images=[r["image"] for r in rows], text=[r["prefix"] for r in rows],
                           padding=True, padding_side="left", return_tensors="pt")
        inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
        with torch.inference_mode():
            out = model.generate(**inputs, **gen)
        texts = processor.post_process_generation(out, inputs["input_ids"])
        predictions.extend(texts)
        for row in rows:
            references.append(row.get("suffix"))
            examples.append({k: v for k, v in row.items() if k != "image"})
        bar.update(len(rows))
    bar.close()

    metrics = METRICS[metric](predictions, references, examples, **metric_kwargs)
    metrics = {k: float(v) for k, v in metrics.items()}

    predictions_file = metrics_file = None
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        predictions_file = os.path.join(output_dir, "predictions.jsonl")
        with open(predictions_file, "w", encoding="utf-8") as f:
            for i, (pred, ex) in enumerate(zip(predictions, examples)):
                record = {"index": i, "prefix": ex.get("prefix"), "prediction": pred,
                          "reference": _jsonable(ex.get("suffix"))}
                for k, v in ex.items():
                    if k not in ("prefix", "suffix") and (jv := _jsonable(v)) is not None:
                        record[k] = jv
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        metrics_file = os.path.join(output_dir, "metrics.json")
        settings = {"metric": metric, "decoding": decoding, "num_beams": int(num_beams),
                    "max_new_tokens": int(max_new_tokens), "batch_size": int(batch_size),
                    "num_examples": len(predictions),
                    "metric_kwargs": {k: v for k, v in metric_kwargs.items() if _jsonable(v) is not None}}
        with open(metrics_file, "w", encoding="utf-8") as f:
            json.dump({"metrics": metrics, "settings": settings}, f, indent=2, sort_keys=True)
    return EvalResult(metrics, predictions, predictions_file, metrics_file)
