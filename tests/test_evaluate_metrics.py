"""Every transfer metric as an ``evaluate`` module (loadable with ``evaluate.load``) and as a ``Trainer``
``compute_metrics``, with the numbers of the functions in ``transfer/metrics.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from big_vision_hf import evaluate_metrics
from big_vision_hf.evaluate_metrics import METRICS

BOX = "<loc0100><loc0200><loc0600><loc0700>"
SEG = "".join(f"<seg{i:03d}>" for i in range(16))
ROWS = [  # (prediction, references, example)
    ("a red circle and a blue square", ["a red circle and a blue square", "two shapes"],
     {"answer_type": "other", "issimple": True, "question_type": "presence", "bbox": [0.1, 0.2, 0.6, 0.7],
      "language": "en"}),
    ("2", ["2", "two", "2", "3", "2", "2", "2", "2", "2", "2"],
     {"answer_type": "number", "issimple": False, "question_type": "count", "bbox": [0.0, 0.0, 0.5, 0.5]}),
    ("yes", ["no"], {"answer_type": "yes/no", "issimple": True, "question_type": "comp", "bbox": [0.2, 0.2, 0.9, 0.9]}),
    ("The answer is B.", ["B"], {"answer_type": "other", "issimple": True, "question_type": "area",
                                 "bbox": [0.3, 0.1, 0.4, 0.5]}),
    ("15%", ["0.15"], {"answer_type": "number", "issimple": False, "question_type": "count",
                       "bbox": [0.1, 0.1, 0.2, 0.2]}),
]
PREDICTIONS = [r[0] for r in ROWS]
REFERENCES = [r[1] for r in ROWS]
EXAMPLES = [{"language": "en", **r[2]} for r in ROWS]
BOX_PREDICTIONS = [BOX + SEG + " cat", BOX + " dog", "nothing", BOX, "<loc0000><loc0000><loc1023><loc1023>"]
# the optional package a metric needs (grits-metric is installed best effort: it builds C++)
NEEDS = {"table_structure": "grits", "smiles_exact_match": "rdkit", "report_generation": "pycocoevalcap"}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in
                                        ((a[k], b[k]) for k in a))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_evaluate_module_equals_the_function(name, tmp_path):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    module = evaluate_metrics.load(name, cache_dir=str(tmp_path))  # through evaluate.load of the module script
    assert isinstance(module, evaluate_metrics.BvMetric) and type(module) is evaluate_metrics.metric_class(name)
    if name in ("segmentation", "detection"):
        want = METRICS[name](BOX_PREDICTIONS, None, EXAMPLES)
        got = module.compute(predictions=BOX_PREDICTIONS, examples=EXAMPLES)
    elif name == "text_spotting":  # references: the words of each image, "<loc>x4 word ; ..." (one string)
        refs = [[p] for p in BOX_PREDICTIONS[:2]] + [[BOX + " cat"]] * 3
        want = METRICS[name](BOX_PREDICTIONS, refs, EXAMPLES)
        got = module.compute(predictions=BOX_PREDICTIONS, references=refs, examples=EXAMPLES)
    else:
        want = METRICS[name](PREDICTIONS, REFERENCES, EXAMPLES)
        got = module.compute(predictions=PREDICTIONS, references=REFERENCES, examples=EXAMPLES)
    assert _equal(got, want), (got, want)
    if name in ("exact_match", "vqa", "pope"):  # one reference per prediction (a string) is a feature too
        refs = [r[0] for r in REFERENCES]
        assert _equal(module.compute(predictions=PREDICTIONS, references=refs), METRICS[name](PREDICTIONS, refs))


def test_compute_metrics_for_trainer():
    """EvalPrediction (logits right-aligned on the supervised tail, or ids; -100 labels) -> the metric's numbers on
    the decoded texts; with a real Trainer on a tiny PaliGemma it reports eval_<metric> keys."""
    from transformers import Trainer, TrainingArguments

    from big_vision_hf.transfer.collator import PaliGemmaCollator
    from big_vision_hf.transfer.synthetic import (
        SYNTHETIC_TASKS,
        make_dataset,
        make_model,
        make_processor,
        make_tokenizer,
    )

    tok = make_tokenizer()
    answers, guesses = ["2", "3", "a red circle"], ["2", "4", "a red circle"]
    rows_l, rows_p = [], []
    for a, g in zip(answers, guesses):
        ids_a, ids_g = tok.to_int(a, eos=True), tok.to_int(g, eos=True)
        n = max(len(ids_a), len(ids_g)) + 3
        label = [-100, -100, -100] + ids_a + [-100] * (n - 3 - len(ids_a))
        pred = [0, 0] + ids_g + [0] * (n - 2 - len(ids_g))  # position t predicts label t + 1
        rows_l.append(label), rows_p.append(pred)
    width = max(map(len, rows_l))
    labels = np.array([r + [-100] * (width - len(r)) for r in rows_l])
    preds = np.array([r + [0] * (width - len(r)) for r in rows_p])
    fn = evaluate_metrics.compute_metrics("exact_match", tok)
    assert fn(EvalPrediction(predictions=preds, label_ids=labels)) == METRICS["exact_match"](guesses, answers)
    logits = np.eye(len(tok) + 1)[preds][:, 1:]  # logits of the last positions only, argmax = preds
    assert fn(EvalPrediction(predictions=logits, label_ids=labels)) == METRICS["exact_match"](guesses, answers)

    model, processor = make_model(tok, seed=0), make_processor(tok)
    rows = make_dataset(SYNTHETIC_TASKS["synthetic_count"], "validation")[:6]
    args = TrainingArguments(output_dir="/tmp/unused", per_device_eval_batch_size=3, report_to="none",
                             remove_unused_columns=False, use_cpu=True)
    trainer = Trainer(model=model, args=args, eval_dataset=rows, data_collator=PaliGemmaCollator(processor),
                      compute_metrics=evaluate_metrics.compute_metrics("exact_match", tok),
                      preprocess_logits_for_metrics=evaluate_metrics.preprocess_logits_for_metrics)
    with torch.no_grad():
        out = trainer.evaluate()
    assert {"eval_loss", "eval_exact_match"} <= set(out) or {"eval_loss", "eval_acc"} <= set(out), out
