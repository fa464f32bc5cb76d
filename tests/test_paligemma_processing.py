"""PaliGemma tokenizer, processor and output decoding against big_vision's rules.

- tokenizer: ``paligemma_tokenizer/bv_tokenizer.npz`` holds a tiny Gemma-like SentencePiece model and what
  big_vision's ``_add_pieces`` + ``to_int``/``to_str`` made of it (``fixtures/make_paligemma_fixtures.py``);
  other tests train a tiny model in ``tmp_path`` with the ``<loc>``/``<seg>`` pieces already inside;
- processor: the ``combine_and_keep_train/eval`` layout (``configs/proj/paligemma/transfers/common.py``), and
  the prefix-LM attention it produces in transformers' ``PaliGemmaForConditionalGeneration`` (tiny, random);
- decoding: the segmentation evaluator's box formula and mask pasting, malformed strings, drawing.
"""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

import big_vision_hf  # noqa: F401
from big_vision_hf.conversion import convert_checkpoint
from big_vision_hf.processing.image_processing_bv import BvImageProcessor
from big_vision_hf.processing.paligemma_decoding import (
    box_to_loc_tokens,
    decode_detections,
    decode_segmentation,
    draw_objects,
    objects_to_text,
    parse_objects,
    paste_mask,
)
from big_vision_hf.processing.processing_paligemma import BvPaliGemmaProcessor, guard_token_type_ids
from big_vision_hf.processing.tokenization_paligemma import LOC_TOKENS, SEG_TOKENS, BvPaliGemmaTokenizer
from conftest import FIXTURES, Golden

TOK = os.path.join(FIXTURES, "paligemma_tokenizer", "bv_tokenizer.npz")
CORPUS = ["a cat sitting on a bench", "caption en", "answer en what is this?", "detect cat ; dog", "segment the car",
          "there are 2 dogs and 3 cats.", "le chat est noir"] * 10


def _train_sp(path, extra: list[str]) -> str:
    """A tiny Gemma-like SentencePiece model: pad 0, eos 1, bos 2, unk 3, "\\n" a piece, byte fallback."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=len(extra) + 256 + 120, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>", eos_piece="<eos>",
        user_defined_symbols=["\n"] + extra,
        byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> BvPaliGemmaTokenizer:
    """Built from a model that already has the loc/seg pieces (like paligemma_tokenizer.model)."""
    return BvPaliGemmaTokenizer(_train_sp(tmp_path_factory.mktemp("sp") / "tokenizer.model", LOC_TOKENS + SEG_TOKENS))


@pytest.fixture(scope="module")
def processor(tok) -> BvPaliGemmaProcessor:
    return BvPaliGemmaProcessor(BvImageProcessor(size={"height": 28, "width": 28}), tok, text_len=8)


def _image(h=30, w=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------


def test_tokenizer_matches_big_vision_add_pieces(tmp_path):
    """A Gemma-like model WITHOUT loc/seg: the pieces are appended exactly as big_vision's `_add_pieces`."""
    ref = np.load(TOK)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(ref["base_model"].tobytes())
    tok = BvPaliGemmaTokenizer(str(path))
    assert tok.vocab_size == int(ref["vocab_size"])
    assert [tok.sp_model.IdToPiece(i) for i in range(tok.vocab_size)] == ref["pieces"].tolist()
    assert tok.loc_token_ids + tok.seg_token_ids == ref["extra_ids"].tolist()
    for i in range(len([k for k in ref if k.startswith("text_")])):
        text = str(ref[f"text_{i}"])
        assert tok.to_int(text, bos=True, eos=True) == ref[f"ids_{i}"].tolist(), text
        assert tok.to_str(ref[f"ids_{i}"]) == str(ref[f"decoded_{i}"]), text
        assert tok(text)["input_ids"] == ref[f"ids_{i}"].tolist()[:-1], text  # HF API: <bos>, no <eos>
    assert tok.image_token_id == tok.vocab_size  # right after the SentencePiece pieces (257152 for Gemma)


def test_tokenizer_ids_and_extra_tokens(tok):
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)  # Gemma's ids
    assert len(set(tok.loc_token_ids)) == 1024 and len(set(tok.seg_token_ids)) == 128
    assert tok.sp_model.unk_id() not in tok.loc_token_ids + tok.seg_token_ids
    text = "<loc0000><loc1023><seg127> cat"
    ids = tok.to_int(text)
    assert ids[:3] == [tok.loc_token_ids[0], tok.loc_token_ids[1023], tok.seg_token_ids[127]]
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    assert tok.to_str(tok.to_int("caption en", bos=True, eos=True) + [5, 6]) == "caption en"  # stops at <eos>


def test_tokenizer_save_load_roundtrip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = BvPaliGemmaTokenizer.from_pretrained(str(tmp_path))
    text = "answer en what is this?\n<loc0001> <image>"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert (again.image_token, again.image_token_id, len(again)) == (tok.image_token, tok.image_token_id, len(tok))
    saved = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))  # the patched model is saved
    assert saved.PieceToId("<seg005>") == tok.seg_token_ids[5]


def test_tokenizer_bad_file_one_line_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a readable SentencePiece model") as e:
        BvPaliGemmaTokenizer(str(bad))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Processor: big_vision's layout
# ---------------------------------------------------------------------------------------------------------


def test_processor_training_layout_matches_big_vision(processor, tok):
    n_img = processor.image_seq_length
    assert n_img == 4  # (28 / 14) ** 2
    batch = processor(images=[_image(), _image(seed=1)], text=["caption en", "answer en what is this?"],
                      suffix=["a cat", "a dog sitting on a bench"])
    pairs = (("caption en", "a cat"), ("answer en what is this?", "a dog sitting on a bench"))
    for i, (prefix, suffix) in enumerate(pairs):
        # combine_and_keep_train: tok(prefix, bos) | tok("\n") | tok(suffix, eos), tolen(text_len + 1)
        text = tok.to_int(prefix, bos=True) + tok.to_int("\n") + tok.to_int(suffix, eos=True)
        n_prompt = len(tok.to_int(prefix, bos=True)) + len(tok.to_int("\n"))
        mask_ar = [0] * n_prompt + [1] * len(tok.to_int(suffix, eos=True))
        text, mask_ar = text[: processor.text_len + 1], mask_ar[: processor.text_len + 1]
        n_pad = len(batch["input_ids"][i]) - n_img - len(text)
        assert batch["input_ids"][i] == [tok.image_token_id] * n_img + text + [0] * n_pad
        assert batch["token_type_ids"][i] == [0] * n_img + mask_ar + [1] * n_pad  # pads: mask_ar 1, as big_vision
        assert batch["attention_mask"][i] == [1] * (n_img + len(text)) + [0] * n_pad
        assert batch["labels"][i] == [-100] * n_img + [t if m else -100 for t, m in zip(text, mask_ar)] + [-100] * n_pad
    assert tok.eos_token_id in batch["labels"][0]  # short suffix: EOS supervised
    assert tok.eos_token_id not in batch["labels"][1]  # tolen cut the long one, EOS first


def test_processor_inference_layout_and_padding(processor, tok):
    batch = processor(images=[_image(), _image()], text=["caption en", "answer en what is this?"], return_tensors="pt")
    assert "labels" not in batch and batch["pixel_values"].shape == (2, 3, 28, 28)
    ids = batch["input_ids"][0].tolist()
    prompt = tok.to_int("caption en", bos=True) + tok.to_int("\n")
    n_pad = len(ids) - 4 - len(prompt)
    assert n_pad > 0 and ids == [0] * n_pad + [tok.image_token_id] * 4 + prompt  # left-padded for generate()
    assert batch["token_type_ids"][0, n_pad:].eq(0).all()
    fixed = processor(images=_image(), text="caption en", suffix="a cat", padding="max_length", return_tensors="np")
    assert fixed["input_ids"].shape == (1, 4 + processor.text_len + 1)
    one = processor(images=[_image(), _image()], text="caption en")  # one prompt for every image
    assert one["input_ids"][0] == one["input_ids"][1]


def test_processor_guards_against_known_traps(processor):
    with pytest.raises(ValueError, match="token_type_ids are required"):
        processor(images=_image(), text="caption en", return_token_type_ids=False)
    with pytest.raises(ValueError, match="inside the prompt"):
        processor(images=_image(), text="caption <image> en")
    stripped = processor(images=_image(), text="<image>caption en")  # HF habit: leading <image> is removed
    assert stripped["input_ids"] == processor(images=_image(), text="caption en")["input_ids"]
    with pytest.raises(ValueError, match="images"):
        processor(text="caption en")


def test_processor_save_load_roundtrip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    again = BvPaliGemmaProcessor.from_pretrained(str(tmp_path))
    assert (again.image_seq_length, again.text_len) == (processor.image_seq_length, processor.text_len)
    target = "<loc0001><loc0002><loc0500><loc0600> cat"
    a = processor(images=_image(), text="detect cat", suffix=target, return_tensors="pt")
    b = again(images=_image(), text="detect cat", suffix=target, return_tensors="pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tiny_paligemma(tok, text_type="gemma", **text_kw) -> PaliGemmaForConditionalGeneration:
    torch.manual_seed(0)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type=text_type, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, vocab_size=len(tok), **text_kw),
        image_token_index=tok.image_token_id, projection_dim=16)
    return PaliGemmaForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()


def test_processor_gives_big_vision_prefix_lm_in_transformers(processor, tok):
    """In transformers' PaliGemma the batch gives big_vision's attention: prefix bidirectional, suffix causal."""
    model = _tiny_paligemma(tok)
    processor.check_model(model)
    a = processor(images=_image(), text="caption en", suffix="a cat", return_tensors="pt")
    b = processor(images=_image(), text="caption en", suffix="le chat", return_tensors="pt")
    start = int(a["token_type_ids"][0].tolist().index(1))  # first suffix token
    assert torch.equal(a["input_ids"][:, :start], b["input_ids"][:, :start])
    with torch.no_grad():
        la, lb = model(**a).logits, model(**b).logits
        assert torch.allclose(la[:, :start], lb[:, :start], atol=1e-6), "prefix saw the suffix"
        # Bidirectional prefix: changing the last prefix token changes the first text position's output.
        c = {k: v.clone() for k, v in a.items()}
        c["input_ids"][0, start - 2] = tok.to_int("dog")[0]
        assert not torch.allclose(model(**c).logits[:, 4], la[:, 4], atol=1e-6)
        # The trap: no token_type_ids, sdpa, no padding -> the prefix sees the suffix (answer leaks).
        no_tti = {k: v for k, v in a.items() if k != "token_type_ids"}
        no_tti_b = {k: v for k, v in b.items() if k != "token_type_ids"}
        assert not torch.allclose(model(**no_tti).logits[:, :start], model(**no_tti_b).logits[:, :start], atol=1e-6)
    handle = guard_token_type_ids(model)
    model.train()
    with pytest.raises(ValueError, match="without token_type_ids"):
        model(**no_tti)
    assert model(**a).loss.isfinite()
    handle.remove()


def test_check_model_traps(processor, tok):
    with pytest.raises(ValueError, match="image"):
        fake = SimpleNamespace(config=SimpleNamespace(image_token_id=tok.image_token_id + 1, vocab_size=len(tok)))
        processor.check_model(fake)

    def cfg(impl, softcap=None, final=None):
        return SimpleNamespace(config=SimpleNamespace(image_token_id=tok.image_token_id, vocab_size=len(tok),
                                                      _attn_implementation=impl, attn_logit_softcapping=softcap,
                                                      final_logit_softcapping=final))

    with pytest.raises(ValueError, match="PaliGemma 2"):
        processor.check_model(cfg("sdpa", softcap=50.0))
    with pytest.raises(ValueError, match="bidirectionally"):
        processor.check_model(cfg("flash_attention_2"))
    processor.check_model(cfg("flash_attention_2"), training=False)  # inference prompts are all prefix
    with pytest.warns(UserWarning, match="final_logits_softcap"):
        processor.check_model(cfg("eager", softcap=50.0, final=30.0))


def test_post_process_generation(processor, tok):
    prompt = processor(images=_image(), text="detect cat", return_tensors="pt")["input_ids"]
    answer = tok.to_int("<loc0010><loc0020><loc0500><loc0600> cat", eos=True) + [tok.pad_token_id] * 2
    generated = torch.cat([prompt, torch.tensor([answer])], dim=1)
    assert processor.post_process_generation(generated, prompt) == ["<loc0010><loc0020><loc0500><loc0600> cat"]


# ---------------------------------------------------------------------------------------------------------
# Output decoding
# ---------------------------------------------------------------------------------------------------------


def test_decode_detections_big_vision_formula(processor):
    text = "<loc0000><loc0256><loc1023><loc0767> cat ; <loc0100><loc0200><loc0300><loc0400> black dog"
    objs = processor.decode_detections(text, (480, 640))
    assert [o.label for o in objs] == ["cat", "black dog"]
    assert objs[0].loc_tokens == (0, 256, 1023, 767)
    assert objs[0].box_normalized == (0.0, 256 / 1023, 1.0, 767 / 1023)  # tokens / 1023, (y1, x1, y2, x2)
    assert objs[0].box == pytest.approx((0.0, 256 / 1023 * 640, 480.0, 767 / 1023 * 640))
    h, w = 480, 640
    assert objs[1].pixel_box == (int(100 / 1023 * h), int(200 / 1023 * w), int(300 / 1023 * h), int(400 / 1023 * w))
    assert objs[0].xyxy == pytest.approx((256 / 1023 * 640, 0.0, 767 / 1023 * 640, 480.0))
    # Pixel boxes refer to the ORIGINAL image: a PIL image gives (H, W) from its size.
    assert decode_detections(text, Image.new("RGB", (640, 480)))[1].box == objs[1].box
    # Encoding: round(bbox * 1023) (half to even), clipped.
    assert box_to_loc_tokens((0.0, 0.25, 1.2, 0.5)) == "<loc0000><loc0256><loc1023><loc0512>"
    assert objects_to_text([(0, 0, 240, 320)], ["cat"], (480, 640)) == "<loc0000><loc0000><loc0512><loc0512> cat"


@pytest.mark.parametrize("text", [
    None, "", "garbage", "a cat", "<loc0001><loc0002> cat",  # fewer than 4 locs
    "<loc0001><loc0002><loc0003>", "<loc12345><loc0002><loc0003><loc0004>", "<locabcd><loc0002><loc0003><loc0004>",
    "<loc0500><loc0100><loc0400><loc0200> cat",  # y2 < y1
    "<loc0100><loc0500><loc0200><loc0500> cat",  # x2 == x1
    "<loc0100><loc0100><loc0101><loc0101> tiny",  # non-empty in tokens, empty after int() on a 10x10 image
    "<seg001><seg002> cat", "; ; ;", "<loc0001><loc0002><loc0500>;<loc0600>",
])
def test_decode_malformed_inputs_are_empty(text):
    assert decode_detections(text, (10, 10)) == []
    assert decode_segmentation(text, (10, 10), vqvae=None) == []  # the VQ-VAE is never reached


def test_decode_partial_seg_tokens_give_no_mask():
    text = "<loc0100><loc0100><loc0900><loc0900>" + "".join(f"<seg{i:03d}>" for i in range(15)) + " cat"
    (obj,) = decode_segmentation(text, (100, 100), vqvae=None)
    assert obj.seg_tokens is None and obj.mask is None
    assert parse_objects(text)[0]["seg"] is None


def test_decode_segmentation_pastes_like_big_vision_evaluator():
    """<seg> -> VQ-VAE (converted golden decoder) -> PIL bilinear into the int() box -> > 0, vs. the JAX masks."""
    g = Golden("vqvae_seg_decoder")
    vqvae = convert_checkpoint(g.params)
    codes = g.inputs["codebook_indices"]
    h, w = 120, 90
    locs = [(100, 200, 700, 800), (0, 0, 1023, 1023)]
    text = " ; ".join("".join(f"<loc{t:04d}>" for t in loc) + "".join(f"<seg{c:03d}>" for c in seg) + f" obj{i}"
                      for i, (loc, seg) in enumerate(zip(locs, codes)))
    objs = decode_segmentation(text, (h, w), vqvae)
    assert [o.label for o in objs] == ["obj0", "obj1"]
    for obj, loc, ref64 in zip(objs, locs, g.outputs["masks"][..., 0]):
        y1, x1, y2, x2 = (int(v) for v in (loc[0] / 1023 * h, loc[1] / 1023 * w, loc[2] / 1023 * h, loc[3] / 1023 * w))
        expected = np.zeros((h, w), bool)
        expected[y1:y2, x1:x2] = np.asarray(Image.fromarray(ref64).resize([x2 - x1, y2 - y1], Image.BILINEAR)) > 0.0
        assert obj.mask.dtype == bool and obj.mask.shape == (h, w)
        assert (obj.mask != expected).sum() == 0, f"{(obj.mask != expected).sum()} pixels differ from the evaluator"
        assert not obj.mask[:y1].any() and not obj.mask[y2:].any()  # outside the box: background
    assert paste_mask(np.ones((64, 64), np.float32), (0.5, 0.5, 0.5, 0.9), (h, w)).sum() == 0


def test_draw_objects():
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    (obj,) = decode_detections("<loc0200><loc0200><loc0800><loc0800> cat", img)
    obj.mask = np.zeros((48, 64), bool)
    obj.mask[20:30, 20:40] = True
    out = draw_objects(img, [obj])
    assert out.size == img.size and out.getpixel((30, 25)) != (0, 0, 0)  # mask tinted
    assert out.getpixel((int(obj.box[1]), 30)) != (0, 0, 0)  # box edge drawn
    assert img.getpixel((30, 25)) == (0, 0, 0)  # input untouched
