"""The transfer metrics (``transfer/metrics.py``: big_vision's PaliGemma evaluators) as Hugging Face ``evaluate``
modules and as ``compute_metrics`` for ``Trainer``, with exactly the numbers of the functions they wrap.

- One ``evaluate.Metric`` class per metric of :data:`~big_vision_hf.transfer.metrics.METRICS` (`Cider`, `Vqav2`,
  `Vqa`, `ExactMatch`, `Anls`, `Chartqa`, `RelaxedAccuracy`, `Tallyqa`, `Rsvqa`, `ScienceQa`, `Pope`,
  `Segmentation`, `Detection`) and of ``transfer.metrics_pg2.PG2_METRICS`` (`TableStructure`, `Teds`,
  `SmilesExactMatch`, `MusicErrorRates`, `TextSpotting`, `ReportGeneration`):
  ``compute(predictions=..., references=..., examples=..., **options)`` calls the function with the same arguments
  (``examples``: the dataset rows for the metrics that read other fields, e.g. ``answer_type``, ``question_type``,
  ``bbox``, ``mask``; ``vqvae=`` for segmentation masks).
- :func:`load`: ``evaluate.load`` of the metric's module (a one-line script importing the class, written once to
  :func:`script_dir`), so ``evaluate.load(script_dir("cider"))`` works as for any local metric script.
- :func:`compute_metrics`: ``Trainer(compute_metrics=...)`` on ``EvalPrediction``: token ids (or logits: argmax)
  decoded with the tokenizer where ``labels != -100``; with ``preprocess_logits_for_metrics`` (argmax on device).

Example:
    >>> from big_vision_hf import evaluate_metrics
    >>> cider = evaluate_metrics.load("cider")  # doctest: +SKIP
    >>> cider.compute(predictions=["a cat"], references=[["a cat", "a small cat"]])  # doctest: +SKIP
    {'cider': ..., 'num': 1.0}
"""

from __future__ import annotations

import os

import datasets
import evaluate
import numpy as np

from ..transfer.metrics import METRICS as TRANSFER_METRICS
from ..transfer.metrics_pg2 import PG2_METRICS

#: every metric of the transfer tasks (PaliGemma and PaliGemma 2), by name.
METRICS = {**TRANSFER_METRICS, **PG2_METRICS}

__all__ = ["BvMetric", "compute_metrics", "load", "metric_class", "preprocess_logits_for_metrics", "script_dir"]

_NO_REFERENCES = ("segmentation", "detection")  # the targets are in the rows (bbox, mask)
_CITATION = "big_vision (https://github.com/google-research/big_vision), evaluators/proj/paligemma/transfers/"
_PG2_CITATION = "PaliGemma 2 (arXiv 2412.03555); the reference each big_vision_hf.transfer.metrics_pg2 function names"


class BvMetric(evaluate.Metric):
    """A transfer metric (``metric_name`` in ``transfer.metrics.METRICS``) as an ``evaluate`` module."""

    metric_name: str = ""

    def _info(self) -> evaluate.MetricInfo:
        fn = METRICS[self.metric_name]
        prediction = {"predictions": datasets.Value("string")}
        if self.metric_name in _NO_REFERENCES:
            features = datasets.Features(prediction)
        else:
            features = [datasets.Features({**prediction, "references": datasets.Sequence(datasets.Value("string"))}),
                        datasets.Features({**prediction, "references": datasets.Value("string")})]
        return evaluate.MetricInfo(
            description=(fn.__doc__ or self.metric_name).strip().split("\n\n")[0],
            citation=_PG2_CITATION if self.metric_name in PG2_METRICS else _CITATION,
            inputs_description="predictions: generated strings; references: one string or a list of strings per "
                               "prediction; examples: the dataset rows (fields some metrics read); other keyword "
                               f"arguments: the options of {fn.__module__}.{fn.__name__}.",
            features=features,
            module_type="metric",
        )

    def _compute(self, predictions, references=None, examples=None, **options):
        return METRICS[self.metric_name](list(predictions), None if references is None else list(references),
                                         examples, **options)


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


#: metric name -> its ``evaluate`` class (generated: every class is `BvMetric` with its name).
CLASSES = {name: type(_class_name(name), (BvMetric,), {"metric_name": name, "__module__": __name__})
           for name in METRICS}
globals().update({cls.__name__: cls for cls in CLASSES.values()})
__all__ += [cls.__name__ for cls in CLASSES.values()]


def metric_class(name: str) -> type[BvMetric]:
    if name not in CLASSES:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(CLASSES)}")
    return CLASSES[name]


def script_dir(name: str, root: str | None = None) -> str:
    """A folder ``evaluate.load`` takes for metric ``name``: ``<root>/<name>/<name>.py``, one import line (written
    on first use; ``root`` defaults to ``$HF_HOME/big_vision_hf_metrics`` or ``~/.cache/...``)."""
    cls = metric_class(name)
    root = root or os.path.join(os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache",
                                                                       "huggingface")), "big_vision_hf_metrics")
    folder = os.path.join(root, name)
    path = os.path.join(folder, f"{name}.py")
    source = (f'"""The `{name}` transfer metric ({METRICS[name].__module__}.{METRICS[name].__name__})."""\n\n'
              f"from big_vision_hf.evaluate_metrics import {cls.__name__}  # noqa: F401\n")
    if not os.path.isfile(path) or open(path, encoding="utf-8").read() != source:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
    return folder


def load(name: str, **kwargs) -> evaluate.EvaluationModule:
    """``evaluate.load`` of a transfer metric (``"cider"``, ``"vqav2"``, ... : ``transfer.metrics.METRICS``)."""
    return evaluate.load(script_dir(name), **kwargs)


def preprocess_logits_for_metrics(logits, labels):
    """``Trainer(preprocess_logits_for_metrics=...)``: keep the argmax ids, not ``[B, T, V]`` logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(-1)


def compute_metrics(metric: str | evaluate.EvaluationModule, tokenizer, references=None, examples=None, **options):
    """A ``compute_metrics`` for ``Trainer``: ``EvalPrediction`` -> the metric's dict.

    ``predictions`` are logits ``[B, T, V]`` (argmax taken) or ids ``[B, T]``; position ``t`` predicts label ``t + 1``
    (teacher forcing), right-aligned when the model returned logits for the last positions only (PaliGemma's
    trainer keeps the supervised tail). Predictions and references are the texts of the supervised positions
    (``labels != -100``), decoded without special tokens; ``references`` (one entry per example, e.g. every ground
    truth) replace the decoded labels; ``examples`` are passed to the metric.
    """
    module = metric_class(metric)() if isinstance(metric, str) else metric

    def fn(eval_pred) -> dict[str, float]:
        preds, labels = eval_pred.predictions, eval_pred.label_ids
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds = np.asarray(preds)
        if preds.ndim == 3:
            preds = preds.argmax(-1)
        labels = np.asarray(labels)
        if preds.shape[1] < labels.shape[1]:
            labels = labels[:, -preds.shape[1]:]
        target = labels[:, 1:]
        pred_text, ref_text = [], []
        for p, t in zip(preds[:, :-1], target):
            keep = t != -100
            pred_text.append(tokenizer.decode(p[keep].tolist(), skip_special_tokens=True))
            ref_text.append(tokenizer.decode(t[keep].tolist(), skip_special_tokens=True))
        refs = list(references) if references is not None else ref_text
        kwargs = {} if getattr(module, "metric_name", None) in _NO_REFERENCES else {"references": refs}
        return module.compute(predictions=pred_text, examples=examples, **kwargs, **options)

    return fn
