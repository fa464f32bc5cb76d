"""Metrics against their references on hand-made cases: COCO mAP (pycocotools COCOeval, values worked out by
hand from its 101-point interpolated precision), the POPE script's reading of answers, the <loc>/<seg> ranges,
the edit distance (rapidfuzz) against a plain dynamic programme."""

import random

import numpy as np
import pytest

from big_vision_hf.transfer import metrics as M


def _loc(box):
    return "".join(f"<loc{round(v * 1023):04d}>" for v in box)


A, B, C = (0.1, 0.1, 0.5, 0.5), (0.5, 0.5, 0.9, 0.9), (0.0, 0.6, 0.3, 0.95)
HALF = 51 / 101  # precision 1 up to recall 0.5, then nothing: 51 of COCOeval's 101 recall points


def test_coco_map_hand_made():
    assert M.coco_map([[("cat", A)]], [[("cat", A)]])["map"] == pytest.approx(1.0)
    # one of two objects found, nothing wrong: AP = 51/101 at every IoU threshold
    assert M.coco_map([[("cat", A)]], [[("cat", A), ("cat", B)]])["map"] == pytest.approx(HALF)
    # the right box with the wrong label: nothing found for "cat" (and "dog" has no ground truth)
    assert M.coco_map([[("dog", A)]], [[("cat", A)]])["map"] == pytest.approx(0.0)
    # two images: a hit then a miss (all scores 1.0, stable order) -> precision 1 at recall 0.5
    assert M.coco_map([[("", A)], [("", C)]], [[("", A)], [("", B)]])["map"] == pytest.approx(HALF)
    # a miss then a hit -> precision 0.5 at recall 0.5
    assert M.coco_map([[("", C)], [("", B)]], [[("", A)], [("", B)]])["map"] == pytest.approx(0.5 * HALF)
    assert M.coco_map([[]], [[("cat", A)]])["map"] == 0.0
    assert np.isnan(M.coco_map([[("cat", A)]], [[]])["map"])
    sized = M.coco_map([[("cat", A)]], [[("cat", A)]], image_sizes=[(480, 640)])
    assert sized["map"] == pytest.approx(1.0) and sized["map_large"] == pytest.approx(1.0)


def test_detection_reports_first_box_accuracy_and_map():
    # load_coco records: boxes + labels (class-aware mAP) and bbox (the first object, for boxacc)
    examples = [{"bbox": A, "boxes": [A, B], "labels": ["cat", "dog"], "height": 100, "width": 100}]
    out = M.detection([f"{_loc(A)} cat ; {_loc(B)} dog"], None, examples)
    assert out["boxacc/0.5"] == 1.0 and out["map"] == pytest.approx(1.0)
    out = M.detection([f"{_loc(A)} cat"], None, examples)  # the first box is right, the dog is missed
    assert out["boxacc/0.5"] == 1.0 and out["map"] == pytest.approx(0.5)  # mean over cat (1.0) and dog (0.0)
    # referring expressions: one box, class-agnostic
    out = M.detection([f"{_loc(A)} the cat", f"{_loc(C)}"], None, [{"bbox": A}, {"bbox": B}])
    assert out["boxacc/0.5"] == 0.5 and out["map"] == pytest.approx(HALF)


def test_loc_and_seg_ranges_are_checked():
    ok = "<loc0100><loc0100><loc0500><loc0500>" + "<seg005>" * 16
    assert M.parse_refcoco_tokens(ok)[0]
    assert not M.parse_refcoco_tokens("<loc0100><loc0100><loc1500><loc0500>" + "<seg005>" * 16)[0]
    assert not M.parse_refcoco_tokens("<loc0100><loc0100><loc0500><loc0500>" + "<seg200>" + "<seg005>" * 15)[0]
    out = M.detection(["<loc0100><loc0100><loc1500><loc0500>"], None, [{"bbox": A}])
    assert out["invalid"] == 1.0 and out["map"] == 0.0


def test_pope_script_reading():
    # RUCAIBox/POPE evaluate.py: first sentence, commas dropped, split on " ": "No" / "no" / "not" -> no
    assert M.pope_answer("No, there is not.") == "no"
    assert M.pope_answer("Yes. There is no cat.") == "yes"  # only the first sentence
    assert M.pope_answer("NO") == "yes" and M.pope_answer("no,") == "no" and M.pope_answer("nope") == "yes"
    out = M.pope(["No, there is not.", "yes", "I do not know", "There is a dog"], ["no", "yes", "yes", "no"])
    # readings: no, yes, no, yes vs labels no, yes, yes, no -> TP 1, TN 1, FP 1, FN 1
    assert out["pope_acc"] == 0.5 and out["precision"] == 0.5 and out["recall"] == 0.5 and out["f1"] == 0.5
    assert out["yes_ratio"] == 0.5
    assert out["acc"] == 0.25  # big_vision's: lowercase exact match


def _dp(a, b):
    d = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, cb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ca != cb))
    return d[-1]


def test_levenshtein_is_the_unit_cost_edit_distance():
    assert M.levenshtein("kitten", "sitting") == 3 and M.levenshtein("", "abc") == 3
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 12)))
        assert M.levenshtein(a, b) == _dp(a, b)
    assert M.anls_metric("hello", "helo") == pytest.approx(0.8)
