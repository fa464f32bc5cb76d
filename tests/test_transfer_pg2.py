"""Multilingual captioning (coco35l, xm3600) and PaliGemma 2's new tasks: their metrics on hand-made cases (values
worked out by hand from the reference definitions), batches + evaluation of a tiny model for every task, and a
tiny PaliGemma that learns a synthetic table-structure task (TEDS goes up)."""

from __future__ import annotations

import dataclasses
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
    # PubTabNet divides by the elements under <table> (xpath ".//*": tr, td, td = 3, not the table itself);
    # a 1-character change in a 4-character cell costs 1/4 -> 1 - 0.25 / 3
    assert P.teds_score(T, T) == 1.0
    assert P.teds_score(T.replace("abcd", "abce"), T) == pytest.approx(1 - 0.25 / 3)
    assert P.teds_score(T.replace("abcd", "abce"), T, structure_only=True) == 1.0
    assert P.teds_score("<table><tr><td>abcd</td></tr></table>", T) == pytest.approx(2 / 3)  # one node missing
    assert P.teds_score(T.replace("<td>x", '<td colspan="2">x'), T) == pytest.approx(2 / 3)  # span differs
    # a cell's <b> counts as an element (4) but is part of the cell's content: tokens <b> a b c d </b> vs a b c d,
    # 2 edits / 6 tokens
    assert P.teds_score(T.replace("abcd", "<b>abcd</b>"), T) == pytest.approx(1 - (2 / 6) / 4)
    assert P.teds_score(T.replace("abcd", "<b>abcd</b>"), T, structure_only=True) == 1.0
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


def test_grits_hand_made():
    """GriTS = 2 * sum f(matched cells) / (|A| + |B|) over the best 2D substructure match (Smock et al.)."""
    pytest.importorskip("grits")
    assert P.grits_scores(T, T) == {"grits_top": 1.0, "grits_con": 1.0}
    # one cell 'abcd' -> 'abce': LCS similarity 2 * 3 / (4 + 4) = 0.75, the other 1 -> 2 * 1.75 / (2 + 2)
    assert P.grits_scores(T.replace("abcd", "abce"), T) == {"grits_top": 1.0, "grits_con": pytest.approx(0.875)}
    # a missing column: 1 of 2 cells matched exactly -> 2 * 1 / (2 + 1), for topology and content alike
    out = P.grits_scores("<table><tr><td>abcd</td></tr></table>", T)
    assert out == {"grits_top": pytest.approx(2 / 3), "grits_con": pytest.approx(2 / 3)}
    # a 2x1 prediction of a 1x2 table: at most a 1x1 substructure matches (abcd, abcd) -> 2 * 1 / (2 + 2)
    two_rows = "<table><tr><td>abcd</td></tr><tr><td>x</td></tr></table>"
    assert P.grits_scores(two_rows, T) == {"grits_top": pytest.approx(2 / 4), "grits_con": pytest.approx(2 / 4)}
    assert P.grits_scores("no table", T) == {"grits_top": 0.0, "grits_con": 0.0}
    out = P.table_structure([T, "garbage"], [T, T])
    assert out["grits_top"] == pytest.approx(0.5) and out["teds"] == pytest.approx(0.5) and out["num"] == 2


def _loc(*values):
    return "".join(f"<loc{v:04d}>" for v in values)


def test_text_spotting_rotated_words_hand_made():
    pytest.importorskip("shapely")
    box = ("box", (0.0, 0.0, 0.4, 0.4))  # (y1, x1, y2, x2)
    shifted = ("poly", ((0.2, 0.0), (0.6, 0.0), (0.6, 0.4), (0.2, 0.4)))  # (x, y): the box moved right by 0.2
    assert P.shape_iou(box, shifted) == pytest.approx(0.08 / 0.24)  # intersection 0.2 x 0.4, union 2 x 0.16 - 0.08
    # a thin word along the diagonal: 0.1 sqrt(2) x 0.7 sqrt(2) = 0.14; its axis-aligned box 0.8 x 0.8 = 0.64
    thin = [[0.1, 0.2], [0.2, 0.1], [0.9, 0.8], [0.8, 0.9]]
    assert P.shape_iou(("poly", tuple(map(tuple, thin))), ("box", (0.1, 0.1, 0.9, 0.9))) == pytest.approx(0.14 / 0.64)
    ref = [{"polygon": thin, "text": "EXIT"}]
    exact = _loc(205, 102, 102, 205, 818, 921, 921, 818) + " EXIT"  # the same quadrilateral, (y, x) per point
    assert P.text_spotting([exact], [ref])["f1"] == 1.0
    assert P.text_spotting([_loc(102, 102, 921, 921) + " EXIT"], [ref])["f1"] == 0.0  # its box: IoU 0.22
    # a don't-care region (###) is not counted; a prediction on it neither; a malformed word (6 <loc>) is an error
    ref = P.parse_icdar_gt("\ufeff100,200,900,200,900,400,100,400,A,B\n0,0,50,0,50,50,0,50,###", 1000, 1000)
    assert ref[0] == {"polygon": [[0.1, 0.2], [0.9, 0.2], [0.9, 0.4], [0.1, 0.4]], "text": "A,B"}
    hit = _loc(205, 102, 205, 921, 409, 921, 409, 102) + " A,B"
    on_dont_care = _loc(0, 0, 51, 51) + " ;x"  # a word may contain ';'
    out = P.text_spotting([f"{hit} ; {on_dont_care}"], [ref])
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    out = P.text_spotting([f"{hit} ; {_loc(1, 2, 3, 4, 5, 6)} B"], [ref])
    assert out["precision"] == 0.5 and out["recall"] == 1.0
    assert P.words_to_text(ref) == hit  # the target text of ICDAR ground truth, don't-care left out
    # evaluate() passes the targets as references, but the rows (examples) keep the words, don't-care included
    out = P.text_spotting([f"{hit} ; {on_dont_care}"], [P.words_to_text(ref)], [{"words": ref}])
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert P.text_spotting([f"{hit} ; {on_dont_care}"], [P.words_to_text(ref)])["precision"] == 0.5


def test_text_spotting_follows_hiertext_matching():
    """HierText's evaluator.py: pairs are mutually best IoU matches (the text is compared after pairing); a prediction
    half covered by a don't-care word is dropped; no predictions / no words: precision / recall 1.0. <loc1023> = 1.0.
    """
    pred = _loc(0, 0, 1023, 1023) + " EXIT"  # the whole image
    ref = [{"box": (0, 0, 1, 0.9), "text": "EXlT"}, {"box": (0, 0.3, 1, 1), "text": "EXIT"}]  # IoU 0.9 and 0.7
    out = P.text_spotting([pred], [ref])  # paired with the 0.9 word (wrong text), not re-paired with the 0.7 one
    assert (out["precision"], out["recall"], out["f1"]) == (0.0, 0.0, 0.0)
    ref = [{"box": (0, 0, 0.5, 1), "text": "###"}, {"box": (0.6, 0, 1, 1), "text": "A"}]
    inside = _loc(0, 0, 102, 102) + " x"  # IoU ~0.02 with the don't-care half, but covered by it: dropped
    out = P.text_spotting([f"{inside} ; {_loc(614, 0, 1023, 1023)} A"], [ref])
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert P.text_spotting([""], [[]]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "num": 1.0}
    out = P.text_spotting(["no words"], [ref])
    assert (out["precision"], out["recall"], out["f1"]) == (1.0, 0.0, 0.0)


def test_bad_pg2_records_are_one_line_errors():
    with pytest.raises(ValueError, match="text-spotting word"):  # no text
        P.text_spotting(["x"], [[{"polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}]])
    with pytest.raises(ValueError, match="4 points or more"):  # 2 points would be written as a box
        P.words_to_text([{"polygon": [[0, 0], [1, 0]], "text": "a"}])
    with pytest.raises(ValueError, match="line 2"):
        P.parse_icdar_gt("1,2,3,4,5,6,7,8,A\n1,2,x,4,5,6,7,8,B", 10, 10)
    with pytest.raises(ValueError, match="PubTabNet"):
        get_task("table_structure").build({"html": {"cells": []}})


def test_radgraph_f1_needs_the_weights_and_wires_the_package(tmp_path, monkeypatch):
    import sys
    import types

    with pytest.raises(FileNotFoundError, match="StanfordAIMI/RRG_scorers"):
        P.radgraph_f1(["a"], ["a"], str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "radgraph")):
        P.report_generation(["a"], ["a"], radgraph_dir=str(tmp_path))
    (tmp_path / "radgraph").mkdir()
    (tmp_path / "radgraph" / "weights.th").write_bytes(b"")
    calls = {}

    class F1RadGraph:  # the package's interface: F1RadGraph(reward_level, model_type, ...)(hyps=, refs=)
        def __init__(self, reward_level, model_type, model_cache_dir):
            calls.update(level=reward_level, model_type=model_type, cache=model_cache_dir)

        def __call__(self, hyps, refs):
            calls.update(hyps=hyps, refs=refs)
            return (0.5, 0.4, 0.3), [], [], []

    monkeypatch.setitem(sys.modules, "radgraph", types.SimpleNamespace(F1RadGraph=F1RadGraph))
    out = P.radgraph_f1(["pred"], [["ref"]], str(tmp_path))
    assert out == {"radgraph_f1": 0.4, "radgraph_simple": 0.5, "radgraph_complete": 0.3, "num": 1.0}
    assert calls == {"level": "all", "model_type": "radgraph", "cache": str(tmp_path), "hyps": ["pred"],
                     "refs": ["ref"]}


def test_pg2_tasks_carry_the_paper_appendix_values():
    """App. B of arXiv 2412.03555 (text_len = its maximum sequence / output length)."""
    t = get_task("text_detection", 896)
    assert (t.lr, t.total_steps, t.batch_size, t.label_smoothing, t.text_len) == (1e-5, 15_000, 256, 0.1, 2048)
    t = get_task("table_structure", 896)
    assert (t.lr, t.total_steps, t.batch_size, t.label_smoothing, t.text_len) == (1e-4, 15_000, 256, 0.0, 4096)
    assert t.metric == "table_structure"
    t = get_task("molecule", 448)
    assert (t.lr, t.total_steps, t.batch_size, t.label_smoothing, t.text_len) == (1e-4, 30_000, 256, 0.1, 256)
    assert get_task("music_score", 896).text_len == 1024 and get_task("music_score", 896).total_steps == 30_000
    t = get_task("mimic_cxr", 448)
    assert (t.lr, t.total_epochs, t.wd, t.label_smoothing, t.llm_dropout, t.decoding) == (5e-6, 8, 0, 0, 0, "greedy")
    assert t.build_prefix({"report": "x", "indication": "dyspnea."}) == "report en dyspnea."
    assert t.build_prefix({"report": "x"}) == "report en"
    t = get_task("vsr", 224)
    assert (t.batch_size, t.text_len) == (1024, 18)
    assert get_task("docci", 448).text_len == 192


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
    if name == "table_structure":
        pytest.importorskip("grits")  # grits-metric is installed best effort (it builds C++)
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
    try:
        import grits  # noqa: F401
    except ImportError:  # grits-metric is installed best effort (it builds C++): TEDS alone then
        recipe = dataclasses.replace(recipe, metric="teds")
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
