"""Multilingual captioning (coco35l, xm3600) and PaliGemma 2's new tasks: their metrics on hand-made cases (values
worked out by hand from the reference definitions), batches + evaluation of a tiny model for every task, and a
tiny PaliGemma that learns a synthetic table-structure task (TEDS goes up)."""

from __future__ import annotations

import os
import random

import pytest
from PIL import Image, ImageDraw

from big_vision_hf.transfer import metrics as M, metrics_pg2 as P, synthetic
from big_vision_hf.transfer.collator import PaliGemmaCollator
from big_vision_hf.transfer.evaluation import evaluate
from big_vision_hf.transfer.tasks import get_task

T = "<table><tr><td>abcd</td><td>x</td></tr></table>"
NEW_TASKS = ("coco35l", "xm3600", "text_detection", "table_structure", "molecule", "music_score", "docci",
             "mimic_cxr", "vsr")


def test_cider_multilingual_is_per_language_then_averaged():
    preds = ["a dog", "a cat", "ein hund", "eine katze"]
    refs = [["a dog"], ["a cat"], ["ein hund"], ["ein pferd"]]
    ex = [{"language": lang} for lang in ("en", "en", "de", "de")]
    out = M.cider_multilingual(preds, refs, ex)
    en, de = M.cider(preds[:2], refs[:2])["cider"], M.cider(preds[2:], refs[2:])["cider"]
    assert out["cider/en"] == pytest.approx(en) and out["cider/de"] == pytest.approx(de)
    assert out["cider"] == pytest.approx((en + de) / 2) and out["num_languages"] == 2
    with pytest.raises(ValueError):
        M.cider_multilingual(preds, refs)  # needs the language of every example


def test_teds_hand_made():
    # 4 nodes (table, tr, td, td); a 1-character change in a 4-character cell costs 1/4 -> 1 - 0.25 / 4
    assert P.teds_score(T, T) == 1.0
    assert P.teds_score(T.replace("abcd", "abce"), T) == pytest.approx(1 - 0.25 / 4)
    assert P.teds_score(T.replace("abcd", "abce"), T, structure_only=True) == 1.0
    assert P.teds_score("<table><tr><td>abcd</td></tr></table>", T) == pytest.approx(0.75)  # one node missing
    assert P.teds_score(T.replace("<td>x", '<td colspan="2">x'), T) == pytest.approx(0.75)  # span differs
    assert P.teds_score("no table", T) == 0.0
    out = P.teds([T, "garbage"], [T, T])
    assert out["teds"] == pytest.approx(0.5) and out["teds_struct"] == pytest.approx(0.5)


def test_smiles_music_text_spotting_reports():
    pytest.importorskip("rdkit")
    out = P.smiles_exact_match(["OCC", "C(O)C", "not a molecule"], ["CCO", "CCO", "CCO"])
    assert out["acc"] == pytest.approx(2 / 3) and out["valid"] == pytest.approx(2 / 3)
    out = P.music_error_rates(["a b c\nd e", "x"], ["a b d\nd e", "x y"])
    assert out["ser"] == pytest.approx(100 * 2 / 7) and out["ler"] == pytest.approx(100 * 2 / 3)
    w1, w2 = "<loc0100><loc0100><loc0200><loc0300> STOP", "<loc0500><loc0500><loc0600><loc0700> EXIT"
    out = P.text_spotting([f"{w1} ; <loc0500><loc0500><loc0600><loc0700> EXlT"], [f"{w1} ; {w2}"])
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["f1"] == 0.5  # a wrong letter: no match
    assert P.text_spotting([w1.lower()], [w1], case_sensitive=False)["f1"] == 1.0
    pytest.importorskip("pycocoevalcap")
    preds = ["no acute cardiopulmonary process is seen.", "a small left pleural effusion."]
    out = P.report_generation(preds, [p.capitalize() for p in preds])  # identical after PTB tokenisation
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-6) and out["rouge_l"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tok():
    extra = ["<table>", "</table>", "<tr>", "</tr>", "<td>", "</td>", "parse table", "caption de", "caption quz",
             "ocr", "smiles", "kern", "report en", "CCO", "true", "false"]
    return synthetic.make_tokenizer(extra_texts=extra * 8)


@pytest.fixture(scope="module")
def processor(tok):
    return synthetic.make_processor(tok, res=32, patch=16, text_len=64)


def _model(tok, seed=0):
    return synthetic.make_model(tok, res=32, patch=16, vision_width=32, vision_layers=1, text_width=64,
                                text_layers=2, seed=seed)


def _record(name, rng):
    image = Image.new("RGB", (32, 32), (rng.randrange(256), 100, 100))
    words = "<loc0100><loc0100><loc0200><loc0300> STOP"
    html = {"structure": {"tokens": ["<tr>", "<td>", "</td>", "</tr>"]}, "cells": [{"tokens": ["1"]}]}
    fields = {"coco35l": {"captions": ["ein hund"], "language": "de"},
              "xm3600": {"captions": ["allqu"], "language": "quz"},
              "text_detection": {"words": words}, "table_structure": {"html": html},
              "molecule": {"smiles": "CCO"}, "music_score": {"kern": "*clefG2\n4c 4d"},
              "docci": {"caption": "a red square on grey"}, "mimic_cxr": {"report": "no acute process."},
              "vsr": {"caption": "the cat is on the table", "label": "true"}}[name]
    return {"image": image, **fields}


@pytest.mark.parametrize("name", NEW_TASKS)
def test_task_builds_batches_and_evaluates(name, tok, processor):
    if name == "molecule":
        pytest.importorskip("rdkit")
    if name == "mimic_cxr":
        pytest.importorskip("pycocoevalcap")
    task = get_task(name, 224)
    rng = random.Random(0)
    rows = []
    for _ in range(2):
        rec = _record(name, rng)
        prefix, suffix = task.build(rec)
        rows.append({**rec, "prefix": prefix, "suffix": suffix})
    batch = PaliGemmaCollator(processor, text_len=64)([{**r, "suffix": r["suffix"]} for r in rows])
    assert (batch["labels"] != -100).any()
    result = evaluate(_model(tok), processor, rows, task.recipe(224, text_len=4), batch_size=2, progress=False)
    assert len(result.predictions) == 2 and result.metrics


def _table_image(rows, cols, size=32):
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for r in range(rows + 1):
        y = round(r * (size - 1) / rows)
        draw.line([(0, y), (size - 1, y)], fill="black", width=2)
    for c in range(cols + 1):
        x = round(c * (size - 1) / cols)
        draw.line([(x, 0), (x, size - 1)], fill="black", width=2)
    return image


def _table_rows(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r, c = rng.randint(1, 3), rng.randint(1, 3)
        tokens = (["<tr>"] + ["<td>", "</td>"] * c + ["</tr>"]) * r
        rec = {"image": _table_image(r, c), "html": {"structure": {"tokens": tokens}, "cells": []}}
        prefix, suffix = get_task("table_structure").build(rec)
        out.append({**rec, "prefix": prefix, "suffix": suffix})
    return out


def test_tiny_paligemma_learns_table_structure(tok, processor, tmp_path):
    """Grids of 1-3 x 1-3 cells -> their HTML skeleton; TEDS-S rises well above the untrained model's."""
    from big_vision_hf.transfer.training import train

    task = get_task("table_structure", 224)
    train_rows, eval_rows = _table_rows(64, seed=1), _table_rows(16, seed=2)
    model = _model(tok)
    recipe = task.recipe(224, hparams=synthetic.TINY_HPARAMS, lr=1e-2, epochs=None, steps=60, batch_size=16,
                         text_len=48)
    before = evaluate(model, processor, eval_rows, recipe, batch_size=16, progress=False).metrics
    train(model, processor, train_rows, os.path.join(tmp_path, "run"), recipe, progress=False, logging_steps=20,
          use_cpu=True)
    after = evaluate(model, processor, eval_rows, recipe, batch_size=16, progress=False).metrics
    assert after["teds_struct"] > before["teds_struct"] + 0.3 and after["teds_struct"] > 0.4, (before, after)


def test_tasks_command_lists_every_task_with_metric_and_source(capsys):
    from big_vision_hf.cli import main
    from big_vision_hf.transfer.tasks import TASKS

    assert main(["tasks"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name, task in TASKS.items():
        assert task.metric in lines[name] and task.source in lines[name], name
    assert "16/9" in lines["msrvtt_cap"] and "PaliGemma 2" in lines["table_structure"]
