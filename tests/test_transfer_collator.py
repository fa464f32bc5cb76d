"""The training collator and loss against big_vision's PaliGemma trainer, recomputed by hand in numpy.

big_vision (0127fb6): ``configs/proj/paligemma/transfers/common.py combine_and_keep_train`` (layout, masks) and
``trainers/proj/paligemma/train.py loss_fn`` (per-example mean of the shifted, optionally smoothed NLL).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from big_vision_hf.transfer import synthetic
from big_vision_hf.transfer.collator import PaliGemmaCollator
from big_vision_hf.transfer.loss import paligemma_loss


@pytest.fixture(scope="module")
def tok():
    return synthetic.make_tokenizer()


@pytest.fixture(scope="module")
def processor(tok):
    return synthetic.make_processor(tok, res=32, patch=16, text_len=12)  # 4 image tokens


def _image(seed=0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8))


def _bv_layout(tok, prefix, suffix, text_len):
    """combine_and_keep_train, written out: text, mask_ar, mask_loss (tolen = text_len + 1, pad 0)."""
    p = tok.to_int(prefix, bos=True)
    s = tok.to_int("\n")
    x = tok.to_int(suffix, eos=True)
    text = (p + s + x)[: text_len + 1]
    mask_ar = ([0] * len(p + s) + [1] * len(x))[: text_len + 1]
    mask_loss = ([0] * len(p + s) + [1] * len(x))[: text_len + 1]
    return text, mask_ar, mask_loss


def test_collator_masks_match_big_vision_layout(processor, tok):
    rows = [{"image": _image(0), "prefix": "caption en", "suffix": "a red circle and a blue square"},
            {"image": _image(1), "prefix": "caption en", "suffix": "2"}]
    batch = PaliGemmaCollator(processor)(rows)
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "labels", "pixel_values"}
    n_img = processor.image_seq_length
    length = batch["input_ids"].shape[1]
    for i, row in enumerate(rows):
        text, mask_ar, mask_loss = _bv_layout(tok, row["prefix"], row["suffix"], 12)
        pad = length - n_img - len(text)
        ids = batch["input_ids"][i].tolist()
        assert ids[:n_img] == [tok.image_token_id] * n_img
        assert ids[n_img:] == text + [tok.pad_token_id] * pad
        assert batch["token_type_ids"][i].tolist() == [0] * n_img + mask_ar + [1] * pad  # big_vision pads mask_ar=1
        assert batch["attention_mask"][i].tolist() == [1] * (n_img + len(text)) + [0] * pad
        labels = [t if m else -100 for t, m in zip(text, mask_loss)]
        assert batch["labels"][i].tolist() == [-100] * n_img + labels + [-100] * pad
    # the separator is its own token and the suffix of row 0 was cut to text_len + 1 (its <eos> is gone)
    assert tok.to_int("\n") == [tok.convert_tokens_to_ids("\n")]
    assert len(tok.to_int("caption en a red circle and a blue square", bos=True, eos=True)) + 1 > 13
    assert tok.eos_token_id not in batch["input_ids"][0].tolist()
    assert tok.eos_token_id in batch["input_ids"][1].tolist()


def test_collator_picks_one_of_several_suffixes(processor):
    rows = [{"image": _image(0), "prefix": "caption en", "suffix": ["a red circle", "a blue square"]}] * 8
    first = PaliGemmaCollator(processor)(rows)
    assert len({tuple(r) for r in first["labels"].tolist()}) == 1  # default: the first
    rand = PaliGemmaCollator(processor, random_suffix=True, seed=0)(rows)
    assert len({tuple(r) for r in rand["labels"].tolist()}) == 2
    with pytest.raises(ValueError, match="suffix"):
        PaliGemmaCollator(processor)([{"image": _image(0), "prefix": "x", "suffix": 3}])
    with pytest.raises(ValueError, match="rows need"):
        PaliGemmaCollator(processor)([{"image": _image(0), "prefix": "x"}])


def _bv_loss_numpy(logits, text, mask_loss, ls):
    """trainers/proj/paligemma/train.py loss_fn, in numpy: logits[b, t] predicts text[b, t + 1]."""
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    v = logits.shape[-1]
    targets = np.eye(v)[text[:, 1:]]
    if ls > 0:
        targets = np.where(targets == 1.0, 1.0 - ls, ls / (v - 1))
    token_pplx = (logp[:, :-1] * targets).sum(-1) * mask_loss[:, 1:]
    pplx = -token_pplx.sum(-1) / np.clip(mask_loss[:, 1:].sum(-1), 1, None)
    return pplx.mean(), pplx


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.3])
def test_loss_matches_big_vision_per_example_mean(ls):
    rng = np.random.default_rng(0)
    b, t, v = 2, 9, 11
    text = rng.integers(4, v, (b, t))
    mask_loss = np.zeros((b, t), np.int64)
    mask_loss[0, 3:8] = 1  # 5 supervised tokens
    mask_loss[1, 6:7] = 1  # 1 supervised token: per-example averaging weighs it like the 5 above
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    labels = np.where(mask_loss == 1, text, -100)
    ours = paligemma_loss(torch.from_numpy(logits), torch.from_numpy(labels), ls)
    ref, per_example = _bv_loss_numpy(logits, text, mask_loss, ls)
    np.testing.assert_allclose(ours.item(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        paligemma_loss(torch.from_numpy(logits), torch.from_numpy(labels), ls, reduction="none").numpy(),
        per_example, rtol=1e-5, atol=1e-6)
    # the token-mean (what transformers' loss does) is a different number here
    token_mean = -(np.log(np.exp(logits[:, :-1]) / np.exp(logits[:, :-1]).sum(-1, keepdims=True))
                   [np.arange(b)[:, None], np.arange(t - 1)[None], text[:, 1:]] * mask_loss[:, 1:]).sum()
    token_mean /= mask_loss[:, 1:].sum()
    if ls == 0:
        assert abs(token_mean - ref) > 1e-3


def test_loss_vocab_size_and_errors():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(1, 4, 8)).astype(np.float32))
    labels = torch.tensor([[-100, 2, 3, -100]])
    cut = paligemma_loss(logits, labels, 0.1, vocab_size=6)
    text = np.array([[0, 2, 3, 0]])
    ref, _ = _bv_loss_numpy(logits.numpy()[..., :6], text, np.array([[0, 1, 1, 0]]), 0.1)
    np.testing.assert_allclose(cut.item(), ref, rtol=1e-5)
    assert paligemma_loss(logits, torch.full((1, 4), -100), 0.0).item() == 0.0  # no supervised token: 0, not nan
    with pytest.raises(ValueError, match="line up"):
        paligemma_loss(logits, labels[:, :3])
    with pytest.raises(ValueError, match="label_smoothing"):
        paligemma_loss(logits, labels, 1.0)


def test_trainer_loss_equals_model_forward_loss_definition(processor, tok):
    """PaliGemmaTrainer.compute_loss (logits only from the first supervised position) == paligemma_loss on the
    full logits of a real forward pass, with two suffixes of different lengths and label smoothing."""
    from transformers import TrainingArguments

    from big_vision_hf.transfer.training import PaliGemmaTrainer

    model = synthetic.make_model(tok, res=32, patch=16, vision_width=32, text_width=32, text_layers=1,
                                 vision_layers=1)
    rows = [{"image": _image(0), "prefix": "caption en", "suffix": "a red circle and a blue square"},
            {"image": _image(1), "prefix": "answer en how many circles?", "suffix": "2"}]
    batch = PaliGemmaCollator(processor)(rows)
    args = TrainingArguments(output_dir="/tmp/unused_bvhf", report_to="none", use_cpu=True)
    trainer = PaliGemmaTrainer(model=model, args=args, label_smoothing=0.2)
    model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, batch)
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    want = paligemma_loss(full, batch["labels"], 0.2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
