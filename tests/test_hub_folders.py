"""Converted folders are self-contained Hub repos: processors, image processors and tokenizers carry ``auto_map`` and
flat code like the models, so pipelines work where ``big_vision_hf`` is not installed, with the same outputs; with
the package imported no remote code is asked for; the tokenizer is the fast twin, with SentencePiece's ids."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
from mixed_text import mixed_strings
from PIL import Image
from tiny_folders import paligemma_folder, siglip_folder
from transformers import AutoProcessor, AutoTokenizer, pipeline

import big_vision_hf  # noqa: F401
from big_vision_hf.processing.tokenization_paligemma import BvPaliGemmaTokenizer
from conftest import run_without_package


@pytest.fixture(scope="module")
def pg_folder(tmp_path_factory):
    return paligemma_folder(tmp_path_factory.mktemp("pg"))


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    return siglip_folder(tmp_path_factory.mktemp("siglip"))[0]


def _image(seed=0, size=(50, 40)):
    return np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)


PROMPTS = ["caption en", "detect cat ; dog", "answer en how many circles?"]

_PG_CHILD = """
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, pipeline
pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
images = [Image.fromarray(inputs[f"image{i}"]) for i in range(3)]
texts = [pipe(images=im, text=t, max_new_tokens=6)[0]["generated_text"] for im, t in zip(images, PROMPTS)]
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
batch = processor(images=images, text=PROMPTS, return_tensors="pt")
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
outputs = {key: batch[key].numpy() for key in ("input_ids", "pixel_values", "token_type_ids")}
outputs.update(texts=np.array(texts), tok=np.array(tokenizer(PROMPTS, padding=True)["input_ids"]))
remote = {"processor": processor, "tokenizer": tokenizer, "image_processor": processor.image_processor,
          "pipeline_processor": pipe.processor}
"""


def test_paligemma_folder_is_self_contained(pg_folder, tmp_path):
    files = set(os.listdir(pg_folder))
    assert {"tokenizer.json", "tokenizer.model", "processing_paligemma.py", "tokenization_fast.py",
            "image_processing_bv.py"} <= files
    config = json.load(open(os.path.join(pg_folder, "processor_config.json")))
    assert config["auto_map"]["AutoProcessor"] == "processing_paligemma.BvPaliGemmaProcessor"
    assert config["image_processor"]["auto_map"]["AutoImageProcessor"] == "image_processing_bv.BvImageProcessor"
    assert json.load(open(os.path.join(pg_folder, "tokenizer_config.json")))["auto_map"]["AutoTokenizer"] == [
        "tokenization_paligemma.BvPaliGemmaTokenizer", "tokenization_fast.BvPaliGemmaTokenizerFast"]

    # with the package: our classes, no remote code asked for (trust_remote_code left unset)
    processor = AutoProcessor.from_pretrained(pg_folder)
    tokenizer = AutoTokenizer.from_pretrained(pg_folder)
    assert type(processor).__module__.startswith("big_vision_hf.") and type(tokenizer).__name__ == (
        "BvPaliGemmaTokenizerFast") and type(tokenizer).__module__.startswith("big_vision_hf.")
    pipe = pipeline("image-text-to-text", model=pg_folder)
    images = [Image.fromarray(_image(i)) for i in range(3)]
    texts = [pipe(images=im, text=t, max_new_tokens=6)[0]["generated_text"] for im, t in zip(images, PROMPTS)]
    batch = processor(images=images, text=PROMPTS, return_tensors="pt")

    # without it: the folder's own code, the same outputs
    child = run_without_package(tmp_path, pg_folder, f"PROMPTS = {PROMPTS!r}\n" + _PG_CHILD,
                                {f"image{i}": _image(i) for i in range(3)})
    assert child["texts"].tolist() == texts
    for key in ("input_ids", "pixel_values", "token_type_ids"):
        np.testing.assert_array_equal(child[key], batch[key].numpy())
    assert child["tok"].tolist() == tokenizer(PROMPTS, padding=True)["input_ids"]
    # the pipeline's text is the prompt followed by the model's greedy decode, as processor + generate give it
    inputs = processor(images=images[:1], text=PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        ids = pipe.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert texts[0] == PROMPTS[0] + processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)[0]


_SIGLIP_CHILD = """
from PIL import Image
from transformers import pipeline
pipe = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
result = pipe(Image.fromarray(inputs["image"]), candidate_labels=LABELS, hypothesis_template="{}")
outputs = {"labels": np.array([r["label"] for r in result]), "scores": np.array([r["score"] for r in result])}
remote = {"tokenizer": pipe.tokenizer, "image_processor": pipe.image_processor}
"""
LABELS = ["a cat", "a dog", "a big red car"]


def test_siglip_folder_is_self_contained(siglip, tmp_path):
    pipe = pipeline("zero-shot-image-classification", model=siglip)
    assert type(pipe.tokenizer).__name__ == "BvTextTokenizerFast"
    result = pipe(Image.fromarray(_image()), candidate_labels=LABELS, hypothesis_template="{}")
    child = run_without_package(tmp_path, siglip, f"LABELS = {LABELS!r}\n" + _SIGLIP_CHILD, {"image": _image()})
    assert child["labels"].tolist() == [r["label"] for r in result]
    np.testing.assert_allclose(child["scores"], [r["score"] for r in result], rtol=1e-6, atol=0)
    assert len(set(child["scores"].round(8))) == 3  # the labels are told apart


def test_paligemma_fast_tokenizer_ids_equal_sentencepiece(pg_folder):
    """AutoTokenizer gives the fast tokenizer; its ids equal the SentencePiece tokenizer's on >= 10,000 mixed strings
    (BOS, <loc>/<seg>, "\\n", special-token strings, padding), and big_vision's to_int equals SentencePiece's."""
    fast = AutoTokenizer.from_pretrained(pg_folder)
    slow = BvPaliGemmaTokenizer.from_pretrained(pg_folder)
    assert fast.is_fast and not slow.is_fast
    texts = mixed_strings(10_000, seed=3, loc=True)
    assert sum("<loc" in t for t in texts) > 1000 and sum("\n" in t for t in texts) > 3000
    assert fast(texts)["input_ids"] == slow(texts)["input_ids"]
    padded, rows = fast(texts[:200], padding=True), slow(texts[:200])["input_ids"]
    width = max(map(len, rows))  # right padding with <pad> (big_vision pads at the end)
    assert padded["input_ids"] == [r + [slow.pad_token_id] * (width - len(r)) for r in rows]
    assert padded["attention_mask"] == [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    sp = spm.SentencePieceProcessor(model_file=os.path.join(pg_folder, "tokenizer.model"))
    want = sp.EncodeAsIds(texts)
    assert fast.encode_as_ids(texts) == want  # the tokenizers pipeline itself
    assert fast.to_int(texts, bos=True, eos=True) == [[sp.bos_id(), *w, sp.eos_id()] for w in want]
    assert fast.to_int("\n") == slow.to_int("\n") == [sp.PieceToId("\n")]  # the separate separator token
    assert fast.loc_token_ids == slow.loc_token_ids and fast.seg_token_ids == slow.seg_token_ids
    assert fast.image_token_id == slow.image_token_id == len(sp)
    assert [fast.to_str(w[:40]) for w in want[:500]] == [slow.to_str(w[:40]) for w in want[:500]]
