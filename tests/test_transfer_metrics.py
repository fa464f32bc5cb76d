"""PaliGemma transfer metrics (big_vision ``evaluators/proj/paligemma/transfers/*``) against hand-computed values,
and the evaluation loop on a tiny random ``PaliGemmaForConditionalGeneration``."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

from big_vision_hf.transfer import metrics as M
from big_vision_hf.transfer.evaluation import evaluate
from big_vision_hf.transfer.recipe import Recipe
from conftest import FIXTURES

# ---------------------------------------------------------------------------------------------------------
# CIDEr
# ---------------------------------------------------------------------------------------------------------

# Outputs of pycocoevalcap 1.2's PTBTokenizer (stanford-corenlp-3.4.1.jar, -preserveLines -lowerCase, then its
# punctuation filter), recorded once with Java. Note "-lrb-": the filter lists "-LRB-" but runs after lowercasing.
PTB_GOLDEN = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "The colour of the T-shirt isn't grey; it's \"blue\" (mostly).":
        "the colour of the t-shirt is n't grey it 's blue -lrb- mostly -rrb-",
    "Two dogs can't play with the frisbee... they won't!": "two dogs ca n't play with the frisbee they wo n't",
    "A 3.5-inch cell phone costs $1,000 & it's the best-selling model in the U.S.":
        "a 3.5-inch cell phone costs $ 1,000 & it 's the best-selling model in the u.s.",
    "people at the cannot gonna Mr. Smith's shop, 10:30 a.m. o'clock":
        "people at the can not gon na mr. smith 's shop 10:30 a.m. o'clock",
    "An image of a woman's hand holding a cup--of coffee ; at 50% off":
        "an image of a woman 's hand holding a cup of coffee at 50 % off",
    "the cat's toy [in] {curly} 'single' ``quote''": "the cat 's toy -lsb- in -rsb- -lcb- curly -rcb- single quote",
    "I'd you'll we're they've he'd I'm": "i 'd you 'll we 're they 've he 'd i 'm",
    "the temperature is 45°F outside": "the temperature is 45 ° f outside",
    "mid-1990s car with ca. 100,000 miles": "mid-1990s car with ca. 100,000 miles",
    "The answer was no.": "the answer was no",
    "No. 5 is the best player": "no. 5 is the best player",
    "the boys' club and o'neil's pub": "the boys club and o'neil 's pub",
    "Dr. Smith and Mrs. Jones walking down the street.": "dr. smith and mrs. jones walking down the street",
    "a kitchen with a stove, a sink, and a refrigerator": "a kitchen with a stove a sink and a refrigerator",
}


@pytest.mark.parametrize("text", sorted(PTB_GOLDEN))
def test_ptb_tokenize_matches_stanford_jar(text):
    assert M.ptb_tokenize(text) == PTB_GOLDEN[text]


@pytest.mark.skipif(shutil.which("java") is None, reason="no java")
def test_ptb_tokenize_java_agrees():
    pytest.importorskip("pycocoevalcap")
    texts = sorted(PTB_GOLDEN)
    assert M._ptb_tokenize_java(texts) == [PTB_GOLDEN[t] for t in texts]


def test_cider_hand_computed():
    # Two images, refs "a cat" / "a dog": idf(a) = 0, idf(cat) = idf(a cat) = log 2. Image 1 matches exactly:
    # cos = 1 for n = 1, 2 and 0 for n = 3, 4 (no n-grams) -> 10 * (1 + 1 + 0 + 0) / 4 = 5; image 2 shares only
    # "a" (weight 0) -> 0. Corpus CIDEr = 2.5.
    out = M.cider(["A cat.", "a cat"], [["a cat"], ["a dog"]])
    assert out["cider"] == pytest.approx(2.5)
    # Length penalty on BIGRAM counts (pycocoevalcap quirk): "a cat a cat" vs "a cat":
    # n=1: hyp {cat: 2 log2} . ref {cat: log2} -> cos 1/2; n=2: hyp {(a,cat): 2 log2, (cat,a): log2 (df 0 -> idf
    # log 2)} vs {(a,cat): log2} -> min(2, 1) / sqrt(5) = 1/sqrt(5); delta = 3 - 1 bigrams -> exp(-4 / 72).
    score, per_image = M.cider_d(["a cat a cat", "a dog"], [["a cat"], ["a dog"]])
    expected = 10 * (0.5 + 1 / math.sqrt(5)) / 4 * math.exp(-4 / 72)
    assert per_image[0] == pytest.approx(expected)
    assert per_image[1] == pytest.approx(5.0)
    assert score == pytest.approx((expected + 5.0) / 2)
    # Several references: the mean over references.
    _, per_image = M.cider_d(["a cat", "a dog"], [["a cat", "a dog"], ["a dog", "a dog"]])
    assert per_image[0] == pytest.approx(5.0 / 2)


def test_cider_matches_pycocoevalcap_scorer():
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = np.random.default_rng(0)
    words = "a the cat dog on sits table red big man".split()
    refs = [[" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(5)] for _ in range(6)]
    cands = [" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(6)]
    ref_score, ref_scores = cider_mod.Cider().compute_score({i: r for i, r in enumerate(refs)},
                                                             {i: [c] for i, c in enumerate(cands)})
    score, scores = M.cider_d(cands, refs)
    assert score == pytest.approx(ref_score, abs=1e-12)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-12)


def test_cider_java_tokenizer_message(monkeypatch):
    monkeypatch.setattr(M.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a Java runtime"):
        M.cider(["a cat"], [["a cat"]], tokenizer="java")
    with pytest.raises(ValueError, match="tokenizer must be"):
        M.cider(["a cat"], [["a cat"]], tokenizer="nltk")


# ---------------------------------------------------------------------------------------------------------
# VQA family
# ---------------------------------------------------------------------------------------------------------


def test_vqav2_leave_one_out():
    # 2 of 10 say "yes": leaving out a "yes" (2 subsets) gives 1/3, a "no" (8 subsets) 2/3 -> 0.6.
    assert M.vqav2_accuracy_single("yes", ["yes"] * 2 + ["no"] * 8)[0] == pytest.approx(0.6)
    # 3 of 10: (3 * 2/3 + 7 * 1) / 10 = 0.9; 4 of 10: 1.0; 1 of 10: 9/10 * 1/3 = 0.3.
    assert M.vqav2_accuracy_single("yes", ["yes"] * 3 + ["no"] * 7)[0] == pytest.approx(0.9)
    assert M.vqav2_accuracy_single("yes", ["yes"] * 4 + ["no"] * 6)[0] == pytest.approx(1.0)
    assert M.vqav2_accuracy_single("yes", ["yes"] + ["no"] * 9)[0] == pytest.approx(0.3)
    # Normalisation (only when the answers disagree): number words, articles, punctuation, case.
    assert M.vqav2_accuracy_single("Two.", ["2"] * 3 + ["two dogs"] * 7)[0] == pytest.approx(0.9)
    assert M.vqav2_accuracy_single("The Dog", ["dog"] * 9 + ["a dog!"])[0] == pytest.approx(1.0)
    # All ten identical: no normalisation (big_vision / VQA issue 14), so case matters.
    assert M.vqav2_accuracy_single("the dog", ["The Dog"] * 10)[0] == 0.0
    out = M.vqav2(["yes", "2"], [["yes"] * 2 + ["no"] * 8, ["2"] * 10],
                  [{"answer_type": "yes/no"}, {"answer_type": "number"}])
    assert out["acc"] == pytest.approx(0.8) and out["acc/yesno"] == pytest.approx(0.6)
    assert out["acc/number"] == 1.0 and "acc/other" not in out


def test_postprocess_vqav2_text():
    assert M.postprocess_vqav2_text("Yes.") == "yes"
    assert M.postprocess_vqav2_text("1,000") == "1000"  # digit comma: punctuation removed, not spaced
    assert M.postprocess_vqav2_text("red/blue") == "red blue"
    assert M.postprocess_vqav2_text("dont know") == "don't know"
    assert M.postprocess_vqav2_text("an apple") == "apple"
    assert M.postprocess_vqav2_text("3.5") == "3.5"


def test_vqa_simple_and_multi_gt():
    out = M.vqa(["cat", "Cat", "dog"], ["cat", "cat", ["dog", "dog", "cat", "dog"]])
    assert out["acc"] == pytest.approx((1 + 0 + 1) / 3)  # 3 matches -> min(1, 3/3)
    out = M.vqa(["dog"], [["dog", "cat", "cat"]])
    assert out["acc"] == pytest.approx(1 / 3) and out["acc_any"] == 1.0
    assert M.vqa(["Cat"], ["cat"], to_lower=True)["acc"] == 1.0
    assert M.exact_match(["a", "b", "c"], ["a", ["x", "b"], "C"])["acc"] == pytest.approx(2 / 3)


def test_anls_edge_cases():
    assert M.anls_metric("hello", "hello") == 1.0
    assert M.anls_metric("hello", "hallo") == pytest.approx(0.8)  # 1 - 1/5
    assert M.anls_metric("abcd", "abcx") == pytest.approx(0.75)
    assert M.anls_metric("abcd", "abxy") == 0.0  # NL = 0.5 is not < 0.5
    assert M.anls_metric("abc", "abcdef") == 0.0  # 3 / 6 = 0.5
    assert M.anls_metric("abc", "abcde") == pytest.approx(0.6)  # max(len) in the denominator
    assert M.anls_metric("", "") == 1.0 and M.anls_metric("", "x") == 0.0
    assert M.levenshtein("kitten", "sitting") == 3
    out = M.anls(["Hello", "abxy"], [["world", "hello"], "abcd"])  # lowercased by default; max over GTs
    assert out["anls"] == pytest.approx(0.5)
    assert M.vqa(["hallo"], [["hello", "xyz"]])["anls"] == pytest.approx(0.8)


def test_chartqa_relaxed_accuracy_boundary():
    assert M.relaxed_match("100", "105")  # |105 - 100| / 100 = 0.05 <= 0.05
    assert M.relaxed_match("100", "95")
    assert not M.relaxed_match("100", "105.1")
    assert M.relaxed_match("50%", "0.51")  # "%" -> / 100
    assert not M.relaxed_match("0", "0.0")  # target 0: exact string match
    assert M.relaxed_match("0", "0")
    assert not M.relaxed_match("Yes", "yes")
    out = M.chartqa(["105", "12", "Yes"], ["100", "12.0", "yes"])
    assert out["relaxed_acc"] == pytest.approx(2 / 3) and out["acc"] == 0.0
    assert M.chartqa(["Yes"], ["yes"], to_lower=True)["acc"] == 1.0


def test_tallyqa():
    out = M.tallyqa(["two", "3", "One", "0"], ["2", "4", "1", "none"],
                    [{"issimple": 1}, {"issimple": 0}, {"issimple": 0}, {"issimple": -1}])
    assert out["acc"] == pytest.approx(3 / 4)
    assert out["acc/simple"] == 1.0 and out["acc/complex"] == pytest.approx(0.5)
    assert out["acc/count_4"] == 0.0 and out["acc/count_0"] == 1.0


def test_rsvqa_per_type():
    preds = ["yes", "no", "rural", "yes", "10"]
    refs = [["yes"], ["yes"], ["rural"], ["yes"], ["12"]]
    ex = [{"question_type": t} for t in ("presence", "presence", "rural_urban", "comp", "count")]
    out = M.rsvqa(preds, refs, ex)
    assert out["acc_presence"] == 0.5 and out["acc_comp"] == 1.0 and out["acc_count"] == 0.0
    assert out["acc_avg"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert out["acc_avg_nonum_lr"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["acc_avg_nonum_hr"] == pytest.approx(0.75)
    assert out["acc_avg_nonum"] == out["acc_avg_nonum_hr"]  # big_vision's metric writer keeps the last


def test_science_qa_letter_extraction():
    assert M.science_qa_answer("The answer is B.") == "b"
    assert M.science_qa_answer("the answer is c. Because ...") == "c"
    assert M.science_qa_answer("The answer is B") == "failed"  # the period is required
    assert M.science_qa_answer(" The answer is B.") == "failed"  # re.match: anchored at the start
    assert M.science_qa_answer("I think the answer is A.") == "failed"
    out = M.science_qa(["The answer is B.", "The answer is A.", "B"], ["The answer is B."] * 3)
    assert out["acc"] == pytest.approx(1 / 3) and out["parsefail"] == pytest.approx(1 / 3)


def test_pope():
    out = M.pope(["Yes", "no", "yes", "maybe"], ["yes", "no", "no", "yes"])
    assert out["acc"] == 0.5 and out["valid_percent"] == 0.75
    # the POPE script reads "maybe" as "yes" (no "no"/"not" in it): TP 2, FP 1, TN 1, FN 0
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0 and out["f1"] == pytest.approx(0.8)
    assert out["yes_ratio"] == 0.75 and out["pope_acc"] == 0.75


# ---------------------------------------------------------------------------------------------------------
# RefCOCO segmentation / detection
# ---------------------------------------------------------------------------------------------------------


class _OnesVQVAE:
    """Decodes every code sequence to a 64x64 map of ones: the pasted mask is the whole box."""

    def decode(self, codes):
        return torch.ones(codes.shape[0], 64, 64)


def _refcoco_text(box_tokens, seg=0):
    return "".join(f"<loc{t:04d}>" for t in box_tokens) + "".join(f"<seg{seg:03d}>" for _ in range(16))


def test_box_iou():
    assert M.box_iou((0, 0, 0.5, 0.5), (0, 0, 1, 1)) == pytest.approx(0.25)
    assert M.box_iou((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.0625 / (0.5 - 0.0625))
    assert M.box_iou((0, 0, 0.1, 0.1), (0.5, 0.5, 1, 1)) == 0.0


def test_segmentation_miou_and_boxacc():
    quarter = np.zeros((100, 100, 1), np.uint8)
    quarter[:50, :50] = 255
    full = np.full((100, 100), True)
    preds = [_refcoco_text((0, 0, 1023, 1023)),  # whole image vs a quarter: mask IoU 0.25, box IoU 0.25
             _refcoco_text((0, 0, 1023, 1023)) + " trailing text ignored",  # exact: IoU 1
             "garbage",  # invalid
             _refcoco_text((500, 0, 400, 1023))]  # y2 < y1: invalid
    examples = [{"bbox": [0, 0, 0.5, 0.5], "mask": quarter}, {"bbox": [0, 0, 1, 1], "mask": full},
                {"bbox": [0, 0, 1, 1], "mask": full}, {"bbox": [0, 0, 1, 1], "mask": full}]
    out = M.segmentation(preds, None, examples, vqvae=_OnesVQVAE())
    assert out["miou"] == pytest.approx((0.25 + 1 + 0 + 0) / 4)
    assert out["boxacc/0.5"] == pytest.approx(1 / 4) and out["boxacc/0.75"] == pytest.approx(1 / 4)
    assert out["invalid"] == 2 and out["total"] == 4
    no_masks = M.segmentation(preds, None, [{"bbox": e["bbox"]} for e in examples])
    assert "miou" not in no_masks and no_masks["boxacc/0.5"] == pytest.approx(1 / 4)
    assert M.parse_refcoco_tokens(" " + preds[0])[0] is False  # must start with the tokens


def test_detection_box_accuracy():
    preds = ["<loc0000><loc0000><loc0511><loc0511> cat", "<loc0000><loc0000><loc1023><loc1023>", "nothing"]
    ex = [{"bbox": [0, 0, 0.5, 0.5]}, {"bbox": [0, 0, 0.6, 0.6]}, {"bbox": [0, 0, 1, 1]}]
    out = M.detection(preds, None, ex)
    # 511/1023 ~ 0.4995 -> IoU ~ 0.998; whole image vs 0.6^2 = 0.36 < 0.5; invalid.
    assert out["boxacc/0.5"] == pytest.approx(1 / 3) and out["invalid"] == 1


def test_registry():
    assert {"cider", "vqav2", "vqa", "exact_match", "anls", "chartqa", "relaxed_accuracy", "tallyqa", "rsvqa",
            "science_qa", "pope", "segmentation", "detection"} <= set(M.METRICS)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        M.METRICS["vqa"](["a", "b"], ["a"])


# ---------------------------------------------------------------------------------------------------------
# Evaluation loop
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from big_vision_hf.processing.image_processing_bv import BvImageProcessor
    from big_vision_hf.processing.processing_paligemma import BvPaliGemmaProcessor
    from big_vision_hf.processing.tokenization_paligemma import BvPaliGemmaTokenizer

    ref = np.load(os.path.join(FIXTURES, "paligemma_tokenizer", "bv_tokenizer.npz"))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(ref["base_model"].tobytes())
    tok = BvPaliGemmaTokenizer(str(path))
    processor = BvPaliGemmaProcessor(BvImageProcessor(size={"height": 16, "width": 16}), tok,
                                     image_seq_length=4, text_len=16)
    torch.manual_seed(0)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=len(tok)),
        image_token_index=tok.image_token_id, projection_dim=32)
    model = PaliGemmaForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    return model, processor


def _rows(n=3):
    rng = np.random.default_rng(0)
    prefixes = ["answer en what is this?", "caption en", "answer en how many cats?"]
    return [{"image": Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)),
             "prefix": prefixes[i % 3], "suffix": ["a cat", "cat", "two"][i % 3], "question_id": i}
            for i in range(n)]


def test_evaluate_writes_predictions_and_metrics(tiny, tmp_path):
    model, processor = tiny
    rows = _rows(3)
    recipe = Recipe(metric="vqa", text_len=5)
    res = evaluate(model, processor, rows, recipe, batch_size=2, output_dir=tmp_path / "out", progress=False)
    assert len(res.predictions) == 3
    lines = [json.loads(line) for line in open(res.predictions_file)]
    assert [r["index"] for r in lines] == [0, 1, 2] and lines[1]["question_id"] == 1
    assert lines[0]["prefix"] == rows[0]["prefix"] and lines[0]["reference"] == "a cat"
    saved = json.load(open(res.metrics_file))
    assert saved["metrics"] == res.metrics and set(res.metrics) >= {"acc", "anls", "num"}
    assert saved["settings"]["metric"] == "vqa" and saved["settings"]["num_examples"] == 3
    # Left padding + token_type_ids: batching does not change the greedy outputs; they match a manual
    # prompt -> generate -> strip.
    single = evaluate(model, processor, rows, recipe, batch_size=1, progress=False)
    assert single.predictions == res.predictions
    prompt = processor(images=[rows[2]["image"]], text=[rows[2]["prefix"]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=5, do_sample=False,
                             eos_token_id=processor.tokenizer.eos_token_id)
    assert processor.post_process_generation(out, prompt["input_ids"])[0] == res.predictions[2]


def test_evaluate_beam_and_caption_metric(tiny, tmp_path):
    model, processor = tiny
    rows = [dict(r, suffix=["a cat", "one cat"]) for r in _rows(2)]
    res = evaluate(model, processor, rows, Recipe(metric="cider", text_len=4, decoding="beam"),  # 2 beams default
                   batch_size=2, output_dir=tmp_path, progress=False)
    assert math.isfinite(res.metrics["cider"]) and os.path.exists(tmp_path / "metrics.json")
    assert json.load(open(tmp_path / "metrics.json"))["settings"]["num_beams"] == 2
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(model, processor, rows, Recipe(metric="bleu", text_len=4))
    with pytest.raises(ValueError, match="use decoding='beam'"):
        evaluate(model, processor, rows, Recipe(metric="vqa", text_len=4, num_beams=3))
    with pytest.raises(ValueError, match="text_len is required"):
        evaluate(model, processor, rows, Recipe(metric="vqa"))
    with pytest.raises(TypeError, match="takes a Recipe"):
        evaluate(model, processor, rows, "vqa")


def test_segmentation_reads_masks_kept_as_paths(tmp_path):
    """Records from JSONL keep the mask as a file path (masks.load_mask reads it), as refcoco_seg data does."""
    from PIL import Image

    quarter = np.zeros((100, 100), np.uint8)
    quarter[:50, :50] = 255
    Image.fromarray(quarter).save(tmp_path / "m.png")
    pred = [_refcoco_text((0, 0, 1023, 1023))]
    from_path = M.segmentation(pred, None, [{"bbox": [0, 0, 0.5, 0.5], "mask": str(tmp_path / "m.png")}],
                               vqvae=_OnesVQVAE())
    from_array = M.segmentation(pred, None, [{"bbox": [0, 0, 0.5, 0.5], "mask": quarter}], vqvae=_OnesVQVAE())
    assert from_path["miou"] == from_array["miou"] == pytest.approx(0.25)
