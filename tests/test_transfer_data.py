"""Transfer task registry and data loading (big_vision_hf.transfer.{tasks,data})."""

import json
import os
import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from big_vision_hf.transfer import data as tdata, masks, synthetic
from big_vision_hf.transfer.recipe import Recipe
from big_vision_hf.transfer.tasks import TASKS, Hparams, TransferTask, get_task, register_task


def _img(path, color=(255, 0, 0), size=(8, 6)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _loc(v):
    return f"<loc{int(np.clip(np.round(np.float32(v) * np.float32(1023)), 0, 1023)):04d}>"


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

REQUIRED = ["cococap", "textcaps", "vqav2", "okvqa", "aokvqa_da", "aokvqa_mc", "ai2d", "gqa", "science_qa",
            "tallyqa", "ocrvqa", "textvqa", "docvqa", "infovqa", "stvqa", "chartqa", "vizwizvqa", "rsvqa_lr",
            "rsvqa_hr", "refcoco_seg", "refcoco_det", "screen2words", "widgetcap", "scicap", "nlvr2", "jsonl",
            "pope", "coco35l", "xm3600", "msrvtt_cap", "msrvtt_qa", "msvd_qa", "activitynet_cap", "activitynet_qa",
            "vatex_cap"]


def test_every_big_vision_transfer_config_is_a_task():
    import os

    folder = "/work/big_vision/big_vision/configs/proj/paligemma/transfers"
    if not os.path.isdir(folder):
        pytest.skip("no big_vision checkout")
    configs = {f for f in os.listdir(folder) if f.endswith(".py")} - {"__init__.py", "common.py", "vertexai_l4.py"}
    assert configs <= {os.path.basename(t.config) for t in TASKS.values()}


def test_registry_has_tasks_and_per_res_values():
    assert set(REQUIRED) <= set(TASKS)
    for name in TASKS:
        t = TASKS[name]
        assert (t.config.endswith(".py") or t.config.startswith("PaliGemma 2")) and 224 in t.hparams, name
    t = get_task("vqav2", res=448)
    assert (t.lr, t.wd, t.total_epochs, t.batch_size, t.text_len, t.max_new_tokens) == (1e-5, 0.0, 10, 256, 32, 32)
    assert get_task("vqav2").wd == 1e-6
    assert get_task("gqa", 448).frozen == ("img",) and get_task("gqa", 224).frozen == ()
    assert get_task("infovqa", 896).batch_size == 32 and get_task("infovqa", 896).label_smoothing == 0.4
    assert get_task("refcoco_seg", 224).llm_dropout == 0.1 and get_task("refcoco_seg", 896).batch_size == 64
    assert get_task("tallyqa", 896).image_seq_length == 4096
    c = get_task("cococap")
    assert (c.decoding, c.num_beams, c.metric) == ("beam", 2, "cider")
    assert get_task("textcaps").num_beams == 3
    with pytest.raises(ValueError, match="res=896"):
        get_task("cococap", res=896)
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nope")
    with pytest.raises(AttributeError):
        TASKS["vqav2"].lr  # registry entries have no res


def test_task_recipe_resolves_everything_once():
    r = get_task("gqa", 448).recipe()
    assert (r.name, r.res, r.lr, r.wd, r.epochs, r.steps, r.batch_size) == ("gqa", 448, 1e-5, 0.0, 1, None, 256)
    assert (r.b2, r.grad_clip_norm, r.warmup_percent, r.frozen, r.text_len, r.max_new_tokens) == (
        0.999, 1.0, 0.05, ("img",), 32, 32)
    assert (r.metric, r.decoding, r.num_beams) == ("vqa", "greedy", 1)
    assert get_task("gqa").recipe(448) == r and TASKS["gqa"].recipe(448) == r
    with pytest.raises(ValueError, match="res=None"):
        TASKS["gqa"].recipe()
    r = get_task("refcoco_seg", 224).recipe(lr=3e-6, epochs=None, steps=5)  # None keeps the task's value
    assert (r.lr, r.epochs, r.steps, r.num_steps(10_000), r.label_smoothing, r.llm_dropout) == (3e-6, 100, 5, 5,
                                                                                               0.3, 0.1)
    assert r.replace(epochs=2).num_steps(1000) == 2 * 4  # new epochs count in epochs: ceil(1000 / 256) per epoch
    with pytest.raises(TypeError, match="not Recipe fields"):
        r.replace(dropout=0.1)
    # num_beams: the task's, or the decoding's default (NUM_BEAMS) when the decoding changes
    assert get_task("textcaps").recipe().num_beams == 3 and get_task("cococap").recipe().num_beams == 2
    assert get_task("cococap").recipe(decoding="greedy").num_beams == 1
    assert get_task("vqav2").recipe(decoding="beam").num_beams == 2
    assert get_task("vqav2").recipe(decoding="beam", num_beams=4).num_beams == 4
    with pytest.raises(ValueError, match="use decoding='beam'"):
        get_task("vqav2").recipe(num_beams=3)
    # the synthetic tasks and the tiny model's hyperparameters for a registry task's prompts and metric
    s = synthetic.SYNTHETIC_TASKS["synthetic_segment"].recipe()
    assert (s.name, s.res, s.lr, s.epochs, s.batch_size, s.text_len, s.metric) == (
        "synthetic_segment", 64, 1e-3, 24, 32, 32, "segmentation")
    t = get_task("vqav2").recipe(64, hparams=synthetic.TINY_HPARAMS, batch_size=8)
    assert (t.res, t.lr, t.epochs, t.batch_size, t.wd, t.metric, t.text_len) == (64, 1e-3, 24, 8, 0.0, "vqav2", 32)
    assert "lr 0.001, 24 epochs, batch 8" in t.summary() and "metric vqav2" in t.summary()
    settings = t.settings()
    assert settings["llm_dropout"] == 0.0 and settings["max_new_tokens"] == 32 and "metric_kwargs" not in settings
    # what TransferTask no longer pretends to be (SyntheticTask's names): only Recipe has epochs / dropout / b2
    for alias in ("epochs", "dropout", "b2", "grad_clip_norm"):
        assert not hasattr(get_task("vqav2"), alias), alias
    assert Recipe().num_beams == 1 and Recipe(decoding="beam").num_beams == 2


def test_prompts():
    assert get_task("vqav2").build({"question": "why?", "answers": ["a", "b"]}) == ("answer en why?", ["a", "b"])
    assert get_task("docvqa").build_prefix({"question": "why?"}) == "why?"
    p, s = get_task("aokvqa_mc").build({"question": "q?", "multiple_choice_possible_answers": ["x", "y"],
                                        "multiple_choice_correct_idx": 1})
    assert (p, s) == ("answer en  q? choose from: x \t y", "y")
    p, s = get_task("science_qa").build({"question": "q?", "choices": ["x", "y", "z"], "answer": 2, "hint": "h"})
    letter = re.match(r"The answer is ([A-C])\.", s).group(1)
    assert p.startswith("Question: q?\nContext: h\nOptions: (A) ") and p.endswith("\nAnswer:")
    assert f"({letter}) z" in p  # the answer letter follows the shuffle
    assert get_task("textcaps").build_suffix({"captions": ["A Sign"]}) == ["a sign"]


def test_register_task():
    task = TransferTask(name="_receipts", config="(own)", prefix="extract total", suffix="{total}", text_len=16,
                        hparams={224: Hparams(lr=1e-5, wd=3e-7, total_epochs=15, batch_size=32)},
                        metric="exact_match")
    register_task(task)
    try:
        t = get_task("_receipts")
        assert t.build({"total": "3.50"}) == ("extract total", "3.50") and t.lr == 1e-5
        with pytest.raises(ValueError, match="already registered"):
            register_task(task)
        register_task(task, overwrite=True)
        with pytest.raises(ValueError, match="unknown metric"):
            TransferTask(name="x", config="", prefix="", suffix="", text_len=1, hparams={224: task.hparams[224]},
                         metric="bleu42")
    finally:
        TASKS.pop("_receipts", None)


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------


def test_jsonl_relative_paths_labeling_tool(tmp_path):
    _img(str(tmp_path / "imgs" / "a.png"))
    _img(str(tmp_path / "imgs" / "b.png"), (0, 255, 0))
    f = tmp_path / "train.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"image": "imgs/a.png", "prefix": "caption en", "suffix": "red"},
        {"image": "imgs/b.png", "prefix": "caption en", "suffix": "green"}]))
    ds = tdata.prepare_dataset(str(f), "jsonl")
    assert ds.column_names[:1] and set(ds.column_names) >= {"image", "prefix", "suffix"}
    assert ds[1]["suffix"] == "green" and ds[0]["prefix"] == "caption en"
    assert isinstance(ds[0]["image"], Image.Image) and ds[1]["image"].getpixel((0, 0)) == (0, 255, 0)


def test_csv_with_task_and_column_map(tmp_path):
    _img(str(tmp_path / "a.png"))
    (tmp_path / "qa.csv").write_text('img,q,ans\na.png,what color?,"[""red"", ""crimson""]"\n')
    ds = tdata.prepare_dataset(str(tmp_path / "qa.csv"), "vqav2", column_map={"image": "img", "question": "q",
                                                                            "answers": "ans"}, expand="list")
    row = ds[0]
    assert row["prefix"] == "answer en what color?" and row["suffix"] == ["red", "crimson"]
    assert row["answers"] == ["red", "crimson"]  # kept for evaluation
    ds_all = tdata.prepare_dataset(str(tmp_path / "qa.csv"), "vqav2",
                                   column_map={"image": "img", "question": "q", "answers": "ans"}, expand="all")
    assert ds_all["suffix"] == ["red", "crimson"]
    one = tdata.prepare_dataset(str(tmp_path / "qa.csv"), "vqav2",
                                column_map={"image": "img", "question": "q", "answers": "ans"})
    assert one[0]["suffix"] in ("red", "crimson")
    with pytest.raises(KeyError, match="missing"):
        tdata.prepare_dataset(str(tmp_path / "qa.csv"), "vqav2", column_map={"image": "img"})


def test_imagefolder_and_save_load_disk(tmp_path):
    root = tmp_path / "folder"
    _img(str(root / "cat" / "1.png"))
    _img(str(root / "dog" / "2.png"))
    task = TransferTask(name="cls", config="(own)", prefix="answer en what animal?", suffix="{name}", text_len=8,
                        hparams={224: Hparams(lr=1e-5, wd=0.0, total_epochs=1, batch_size=2)}, metric="exact_match")
    recs = tdata.load_records(str(root))
    names = recs.features["label"].names
    recs = recs.map(lambda r: {"name": names[r["label"]]})
    ds = tdata.prepare_dataset(recs, task)
    assert sorted(ds["suffix"]) == ["cat", "dog"] and isinstance(ds[0]["image"], Image.Image)

    ds.save_to_disk(str(tmp_path / "saved"))
    back = tdata.prepare_dataset(str(tmp_path / "saved"), "jsonl")
    assert sorted(back["suffix"]) == ["cat", "dog"] and back[0]["image"].size == (8, 6)


def test_dataset_with_column_map_pil_images():
    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (4, 4))], "q": ["how many?"], "n": ["3"]})
    out = tdata.prepare_dataset(ds, "tallyqa", column_map={"image": "img", "question": "q", "answer": "n"})
    assert out[0]["prefix"] == "answer en how many?" and out[0]["suffix"] == "3"


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def test_corrupt_image_error_and_skip(tmp_path):
    _img(str(tmp_path / "ok.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    good = tmp_path / "ok.png"
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:40])
    rows = [{"image": "ok.png", "prefix": "p", "suffix": "s0"}, {"image": "bad.png", "prefix": "p", "suffix": "s1"},
            {"image": "trunc.png", "prefix": "p", "suffix": "s2"},
            {"image": "missing.png", "prefix": "p", "suffix": "s"}]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(tdata.BadImageError, match=r"^record 1: cannot read image .*bad\.png: "):
        tdata.prepare_dataset(str(f))
    ds, report = tdata.prepare_dataset(str(f), skip_bad=True, return_report=True)
    assert ds["suffix"] == ["s0"]
    assert (report.num_records, report.num_bad) == (4, 3) and [b[0] for b in report.bad] == [1, 2, 3]
    assert "3 of 4 records skipped" in str(report)


# ---------------------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------------------


def _coco(tmp_path, with_seg=False):
    _img(str(tmp_path / "images" / "a.jpg"), size=(100, 50))
    _img(str(tmp_path / "images" / "b.jpg"), size=(40, 40))
    poly = [[10, 10, 60, 10, 60, 40, 10, 40]]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 25], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [4, 8, 20, 16], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "iscrowd": 1},
    ]
    if with_seg:
        anns[0]["segmentation"] = poly
        anns[1]["segmentation"] = [[0, 0, 20, 0, 20, 25, 0, 25]]
        m = np.zeros((40, 40), bool)
        m[8:24, 4:24] = True
        anns[2]["segmentation"] = {"size": [40, 40], "counts": _rle_counts(m)}
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 50, "width": 100},
                       {"id": 2, "file_name": "b.jpg", "height": 40, "width": 40}],
            "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    f = tmp_path / "instances.json"
    f.write_text(json.dumps(coco))
    return f


def _rle_counts(mask):
    flat = mask.T.reshape(-1)
    counts, cur, n = [], False, 0
    for v in flat:
        if v != cur:
            counts.append(n)
            cur, n = v, 0
        n += 1
    counts.append(n)
    return counts


def _rle_string(counts):  # pycocotools rleToString
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_coco_detection(tmp_path):
    f = _coco(tmp_path)
    recs = tdata.load_coco(str(f), image_dir=str(tmp_path / "images"))
    ds = tdata.prepare_dataset(recs, "detection")
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["prefix"] == "detect cat ; dog"
    assert a["suffix"] == (_loc(10 / 50) + _loc(10 / 100) + _loc(40 / 50) + _loc(60 / 100) + " cat ; "
                           + _loc(0) + _loc(0) + _loc(25 / 50) + _loc(20 / 100) + " dog")
    assert b["prefix"] == "detect dog"  # the crowd annotation is ignored
    assert b["suffix"] == _loc(8 / 40) + _loc(4 / 40) + _loc(24 / 40) + _loc(24 / 40) + " dog"
    assert a["labels"] == ["cat", "dog"] and np.allclose(a["bbox"], [0.2, 0.1, 0.8, 0.6])
    per_obj = tdata.load_coco(str(f), image_dir=str(tmp_path / "images"), group="object")
    assert per_obj["categories"] == ["cat", "dog", "dog"]


def test_coco_rle_decoding():
    rng = np.random.default_rng(0)
    m = rng.random((7, 5)) > 0.5
    counts = _rle_counts(m)
    assert (masks.coco_rle_to_mask({"size": [7, 5], "counts": counts}) == m).all()
    assert (masks.coco_rle_to_mask({"size": [7, 5], "counts": _rle_string(counts)}) == m).all()
    poly = masks.coco_polygons_to_mask([[1, 1, 3, 1, 3, 4, 1, 4]], 6, 5)
    assert poly[1:5, 1:4].all() and poly.sum() == 12


def test_coco_segmentation_with_tiny_vqvae(tmp_path):
    from big_vision_hf.configuration.configuration_bv_vqvae import BvSegVQVAEConfig
    from big_vision_hf.modeling.modeling_bv_vqvae import BvSegVQVAEModel

    torch.manual_seed(0)
    vqvae = BvSegVQVAEModel(BvSegVQVAEConfig(embedding_dim=8, hidden_size=16, encoder_hidden_sizes=[4, 4, 8, 8]))
    f = _coco(tmp_path, with_seg=True)
    ds = tdata.prepare_dataset(tdata.load_coco(str(f), kind="segmentation", vqvae=vqvae,
                                               image_dir=str(tmp_path / "images")), "segmentation")
    assert ds[0]["prefix"] == "segment cat ; dog"
    pat = r"(<loc\d{4}>){4}(<seg\d{3}>){16} "
    assert re.fullmatch(pat + "cat ; " + pat + "dog", ds[0]["suffix"])
    assert re.fullmatch(pat + "dog", ds[1]["suffix"])
    assert ds[1]["suffix"].startswith(_loc(8 / 40) + _loc(4 / 40))
    with pytest.raises(ValueError, match="vqvae"):
        tdata.load_coco(str(f), kind="segmentation")

    # RefCOCO-style records (mask + bbox + sentence) -> refcoco_seg: raw sentence prefix, <loc>x4<seg>x16 suffix.
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 3:20] = 255
    recs = datasets.Dataset.from_dict({"image": [Image.new("RGB", (30, 20))], "sentence": ["left dog"],
                                       "mask": [mask], "bbox": [[0.25, 0.1, 0.75, 20 / 30]]})
    out = tdata.prepare_dataset(recs, "refcoco_seg", vqvae=vqvae)
    assert out[0]["prefix"] == "left dog" and re.fullmatch(r"(<loc\d{4}>){4}(<seg\d{3}>){16}", out[0]["suffix"])
