"""PaliGemma 2 on flex attention (``big_vision_hf.modeling.paligemma_attention``) against ``eager``.

On the ``paligemma2`` and ``paligemma2_qnorm`` fixtures' models (Gemma 2: GQA, soft-capped attention logits,
post-norms; the second with ``query_pre_attn_norm="rsqrt_emb_per_head"``), with LoRA (preset ``llm``, random B so
that every factor has a gradient): logits, loss and LoRA gradients of a batch with a right-padded row and a
prefix / suffix split, and greedy generation of left-padded prompts (prefill, then cached steps). Each model
compiles inductor's CPU flex kernel once (one sequence length throughout: the training batch and the prompts are
both ``L`` long); the rest of the checks need no compiler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from transformers import PaliGemmaConfig

from big_vision_hf.conversion import convert_checkpoint
from big_vision_hf.conversion.convert_paligemma import NAME, paligemma_card
from big_vision_hf.modeling import paligemma_attention as pa
from big_vision_hf.transfer.training import apply_lora
from conftest import Golden

TOL = 1e-5  # float32


def _model_config(g: Golden) -> dict:
    kw = g.model_kwargs
    return {**kw, "llm": {**kw["llm"], "variant": g.config["gemma_variant_config"]}}


@pytest.fixture(scope="module", params=["paligemma2", "paligemma2_qnorm"])
def case(request):
    """(LoRA model, training batch, prompts): the fixture's two examples, ``L`` = image + text tokens."""
    g = Golden(request.param)
    torch.manual_seed(0)
    model = convert_checkpoint(g.params, NAME, _model_config(g))
    model.config.text_config.final_logit_softcapping = None  # big_vision's transfers (the flex kernel is the same)
    model = apply_lora(model, "llm", r=4)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at 0, which would leave A without gradient
            p.data.normal_(0, 0.1)
    n_img = model.config.text_config.num_image_tokens
    text, mask_ar = torch.from_numpy(g.inputs["text"]).long(), torch.from_numpy(g.inputs["mask_ar"]).long()
    ids = torch.cat([torch.full((2, n_img), model.config.image_token_id), text], 1)
    tti = torch.cat([torch.zeros(2, n_img, dtype=torch.long), mask_ar], 1)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a right-padded row
    batch = dict(input_ids=ids, token_type_ids=tti, attention_mask=mask, pixel_values=g.image_nchw(),
                 labels=ids.masked_fill((tti == 0) | (mask == 0), -100))
    # prompts: each example's image + prefix, left-padded to the same length L (one compiled kernel)
    prompt = {k: torch.zeros_like(v) for k, v in batch.items() if k in ("input_ids", "token_type_ids",
                                                                         "attention_mask")}
    for b in range(2):
        n = n_img + int(np.flatnonzero(g.inputs["mask_ar_full"][b])[0])
        prompt["input_ids"][b, -n:], prompt["attention_mask"][b, -n:] = ids[b, :n], 1
    prompt["pixel_values"] = batch["pixel_values"]
    return model, batch, prompt


def _step(model, impl: str, batch: dict):
    pa.set_attention(model, "cpu", impl)
    model.train()
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach()[batch["attention_mask"].bool()], out.loss.detach(), grads


def test_flex_matches_eager_logits_loss_lora_gradients(case):
    model, batch, _ = case
    logits, loss, grads = _step(model, "eager", batch)
    assert model.config.text_config._attn_implementation == "eager"
    flex_logits, flex_loss, flex_grads = _step(model, "auto", batch)
    assert model.config.text_config._attn_implementation == pa.CPU_FLEX
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert grads.keys() == flex_grads.keys() and len(grads) > 0
    assert all("lora_" in n for n in grads), "only the LoRA factors train"
    errors = {"logits": (logits - flex_logits).abs().max().item(), "loss": (loss - flex_loss).abs().item(),
              "lora grads": max((grads[n] - flex_grads[n]).abs().max().item() for n in grads)}
    assert max(errors.values()) <= TOL, f"flex vs eager: {errors}"
    assert min(g.abs().max().item() for g in grads.values()) > 0, "every LoRA factor has a gradient"


def test_flex_greedy_generation_equals_eager(case):
    model, _, prompt = case
    runs = {}
    for impl in ("eager", "auto"):
        pa.set_attention(model, "cpu", impl)
        model.eval()
        with torch.no_grad():
            runs[impl] = model.generate(**prompt, max_new_tokens=5, do_sample=False, eos_token_id=None,
                                        output_scores=True, return_dict_in_generate=True)
    assert torch.equal(runs["eager"].sequences, runs["auto"].sequences)
    err = max((a - b).abs().max().item() for a, b in zip(runs["eager"].scores, runs["auto"].scores))
    assert err <= TOL, f"step logits: flex vs eager {err:.2e}"


def test_rows_path_matches_eager_with_gradients(monkeypatch):
    """The compile fallback (and the CPU backward): attention by blocks of query rows from the block mask's
    ``mask_mod``, against dense eager attention; a fully masked row gives 0, as flex does."""
    monkeypatch.setattr(pa, "_COMPILE_FAILED", True)
    monkeypatch.setattr(pa, "BACKWARD_BLOCK_BYTES", 0)
    monkeypatch.setattr(pa, "BLOCK_MIN_ROWS", 7)  # 7-row blocks: several per pass, the last one short
    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim, softcap, prefix = 2, 4, 2, 40, 8, 2.0, 12
    pad = torch.ones(batch, length, dtype=torch.bool)
    pad[1, :5] = False  # left padding: row 1's first queries see no key

    def mask_mod(b, h, q, kv):
        return ((q >= kv) | (kv < prefix)) & pad[b, kv] & pad[b, q]

    block_mask = create_block_mask(mask_mod, batch, None, length, length, device="cpu", _compile=False)
    q, k, v = (torch.randn(batch, n, length, dim, requires_grad=True) for n in (heads, kv_heads, kv_heads))
    module = torch.nn.Module()
    out, _ = pa.flex_attention_forward(module, q, k, v, block_mask, scaling=0.3, softcap=softcap)
    dense = torch.nn.attention.flex_attention.create_mask(mask_mod, batch, 1, length, length, "cpu")
    ref = pa._attention_rows(q, k, v, dense, 0.3, softcap).transpose(1, 2)
    assert (out - ref).abs().max().item() <= TOL
    assert out[1, :5].abs().max().item() == 0
    grad = torch.randn_like(out)
    flex_grads = torch.autograd.grad(out, (q, k, v), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    assert max((a - b).abs().max().item() for a, b in zip(flex_grads, ref_grads)) <= TOL
    # and against the attention written out independently: k / v repeated per query head (transformers'
    # repeat_kv), soft-cap after scaling, masked softmax, a row without keys set to 0
    k_rep, v_rep = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
    scores = softcap * torch.tanh(q @ k_rep.transpose(-1, -2) * 0.3 / softcap)
    probs = torch.softmax(scores.masked_fill(~dense, torch.finfo(scores.dtype).min), -1)
    written = (torch.where(dense.any(-1, keepdim=True), probs, 0) @ v_rep).transpose(1, 2)
    assert (out - written).abs().max().item() <= TOL
    written_grads = torch.autograd.grad(written, (q, k, v), grad)
    assert max((a - b).abs().max().item() for a, b in zip(flex_grads, written_grads)) <= TOL


def test_auto_choice_and_fallback(monkeypatch, capsys):
    pg2 = PaliGemmaConfig(text_config={"model_type": "gemma2"})
    assert pa.choose_attention(pg2, "cpu")[0] == pa.CPU_FLEX
    assert pa.choose_attention(pg2, "cuda" if torch.cuda.is_available() else "cpu", pa.FLEX)[0] in (pa.FLEX,
                                                                                                     pa.CPU_FLEX)
    assert pa.choose_attention(PaliGemmaConfig(), "cpu") == ("sdpa", "PaliGemma 1: sdpa keeps the prefix-LM mask "
                                                                     "and is fused")
    assert pa.choose_attention(pg2, "cpu", "eager") == ("eager", "asked for")
    with pytest.raises(ValueError, match="soft-caps"):
        pa.choose_attention(pg2, "cpu", "sdpa")
    with pytest.raises(ValueError, match="choose one of"):
        pa.choose_attention(pg2, "cpu", "flash")
    # where flex cannot run: eager, the reason printed once
    monkeypatch.setattr(pa.shutil, "which", lambda name: None)
    pa.flex_unavailable_reason.cache_clear()
    pa._say_once.cache_clear()
    try:
        for _ in range(2):
            impl, reason = pa.choose_attention(pg2, "cpu")
            assert impl == "eager" and "C++ compiler" in reason
    finally:
        pa.flex_unavailable_reason.cache_clear()
    err = capsys.readouterr().err
    assert err.count("PaliGemma 2 attention: eager, not flex_attention (no C++ compiler") == 1, err
    assert pa.load_kwargs(pg2, "mps") == {"attn_implementation": {"text_config": "eager", "vision_config": "sdpa"}}


def test_trap_checks(monkeypatch):
    pg2 = PaliGemmaConfig(text_config={"model_type": "gemma2"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, whatever runs the test

    def with_impl(impl, config=pg2):
        config.text_config._attn_implementation = impl
        return config

    with pytest.raises(ValueError, match="PaliGemma 2 .*='sdpa'"):
        pa.check_attention(with_impl("sdpa"), training=False)
    with pytest.raises(ValueError, match="cannot train on CPU"):
        pa.check_attention(with_impl(pa.FLEX), training=True, device="cpu")
    pa.check_attention(with_impl(pa.FLEX), training=False, device="cpu")  # inference: torch's CPU flex forward
    # a GPU machine: the model is loaded on the CPU and the Trainer moves it to the GPU, where flex has a backward
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pa.check_attention(with_impl(pa.FLEX), training=True, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pa.check_attention(with_impl(pa.CPU_FLEX), training=True, device="cpu")
    pa.check_attention(with_impl("eager"), training=True, device="cpu")
    with pytest.raises(ValueError, match="bidirectionally"):
        pa.check_attention(with_impl("flash_attention_2"), training=True)
    pa.check_attention(with_impl("sdpa", PaliGemmaConfig()), training=True, device="cpu")  # PaliGemma 1
    # the folder's card says what to load with
    card = paligemma_card(pg2, "pg2.npz", {}, torch.float32, 1)
    assert "score_mod" in card and "bv_flex_attention" in card
