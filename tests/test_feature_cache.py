"""Frozen-tower feature cache (``transfer/feature_cache.py``): cached training equals uncached training (losses,
gradients, final weights; fp32), keys follow the weights and the preprocessing, the plan's conditions, the disk
store (safetensors), bf16 features under autocast. The tiny model and data are ``transfer/synthetic.py``'s."""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
import torch

from big_vision_hf.processing.image_processing_bv import BvImageProcessor
from big_vision_hf.processing.processing_paligemma import BvPaliGemmaProcessor
from big_vision_hf.transfer import synthetic
from big_vision_hf.transfer.collator import PaliGemmaCollator
from big_vision_hf.transfer.feature_cache import (
    FeatureStore,
    attach_feature_cache,
    frozen_tower_problem,
    plan_feature_cache,
    weights_fingerprint,
)
from big_vision_hf.transfer.recipe import Recipe
from big_vision_hf.transfer.training import apply_lora, build_optimizer, freeze_vision, train


def _tiny_model(tok):
    return synthetic.make_model(tok, res=32, patch=16, vision_width=32, vision_layers=1, text_width=32, text_layers=2)


@pytest.fixture(scope="module")
def tiny():
    """Tokenizer, processor and 8 counting rows (no segmentation rows: no VQ-VAE to train) of the tiny setup."""
    tok = synthetic.make_tokenizer()
    data = synthetic.make_dataset("synthetic_count", "train", num_examples=8, res=32)
    return tok, synthetic.make_processor(tok, res=32, patch=16, text_len=24), data


def _lora_model(tok):
    model = apply_lora(_tiny_model(tok), "llm", r=4)
    for i, (name, p) in enumerate(model.named_parameters()):  # LoRA B starts at 0: every adapter matters at once
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(i))
    return model


def _trainer(model):
    from transformers import TrainingArguments

    from big_vision_hf.transfer.training import PaliGemmaTrainer

    return PaliGemmaTrainer(model=model, args=TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bvhf_fc_"),
                                                                report_to="none", use_cpu=True))


def _steps(model, batches, cached: bool):
    """PaliGemmaTrainer.compute_loss (logits on the loss rows, last layer on those rows) + BvAdam steps; the
    losses and the gradients of every step."""
    trainer, optimizer = _trainer(model), build_optimizer(model, 1e-2)
    losses, grads = [], []
    with attach_feature_cache(model) if cached else contextlib.nullcontext() as hook:
        for batch in batches:
            loss = trainer.compute_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            losses.append(loss.item())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return losses, grads, hook


def test_cached_steps_equal_uncached(tiny):
    """Three epochs of two batches through the real loss path: the same losses and gradients at every step, the
    same final weights (fp32, exact up to 1e-7); the tower ran once per image."""
    tok, processor, rows = tiny
    collate = PaliGemmaCollator(processor)
    batches = [collate(rows[:4]), collate(rows[4:])] * 3
    plain, cached = _lora_model(tok), _lora_model(tok)
    losses, grads, _ = _steps(plain, batches, cached=False)
    losses_c, grads_c, hook = _steps(cached, batches, cached=True)
    assert (hook.computed, hook.reused) == (8, 16)  # 8 images once, then 4 batches of 4 read back
    assert losses_c == pytest.approx(losses, rel=0, abs=1e-7)
    for g, gc in zip(grads, grads_c):
        assert g.keys() == gc.keys() and len(g) > 0
        for name in g:
            torch.testing.assert_close(gc[name], g[name], rtol=0, atol=1e-7)
    final, final_c = dict(plain.named_parameters()), dict(cached.named_parameters())
    for name, p in final.items():
        torch.testing.assert_close(final_c[name], p, rtol=0, atol=1e-7)
    assert "get_image_features" not in cached.get_base_model().model.__dict__  # detached on exit


def test_train_with_cache_equals_train_without(tiny, tmp_path, capsys):
    """``train(..., feature_cache=...)``: the plan is printed, the final weights are those of the uncached run."""
    tok, processor, rows = tiny
    recipe = Recipe(lr=1e-2, steps=4, batch_size=4)  # 2 epochs of 8 examples
    common = dict(lora="llm", lora_rank=4, progress=False, logging_steps=1, save_steps=100, use_cpu=True)
    off = train(_tiny_model(tok), processor, rows, tmp_path / "off", recipe, feature_cache="off", **common)
    out = capsys.readouterr().out
    assert "feature cache: off (--feature-cache off)" in out
    on = train(_tiny_model(tok), processor, rows, tmp_path / "on", recipe, **common)
    out = capsys.readouterr().out
    assert "feature cache: memory (frozen image tower and projector" in out
    assert "feature cache: 8 images through the tower, 8 reused" in out
    assert [h["loss"] for h in on.log_history if "loss" in h] == [h["loss"] for h in off.log_history if "loss" in h]
    weights = dict(off.model.named_parameters())
    for name, p in on.model.named_parameters():
        torch.testing.assert_close(p, weights[name], rtol=0, atol=1e-7)
    assert "get_image_features" not in on.model.get_base_model().model.__dict__  # the returned model is plain


def test_changed_tower_weight_recomputes(tiny):
    tok, processor, rows = tiny
    model = _lora_model(tok).eval()
    batch = PaliGemmaCollator(processor)(rows[:2])
    inner = model.get_base_model().model
    with attach_feature_cache(model) as hook, torch.no_grad():
        first = model(**batch).logits
        model(**batch)
        assert (hook.computed, hook.reused) == (2, 2)
        before = weights_fingerprint(inner)
        inner.vision_tower.encoder.layers[0].mlp.fc1.weight.add_(0.01)  # an in-place write: version counter moves
        assert weights_fingerprint(inner) != before
        changed = model(**batch).logits
        assert (hook.computed, hook.reused) == (4, 2)
    with torch.no_grad():
        torch.testing.assert_close(changed, model(**batch).logits, rtol=0, atol=0)  # = the uncached model
    assert not torch.allclose(first, changed)


def test_changed_tower_config_recomputes_and_a_training_tower_bypasses(tiny):
    """Same weights, another tower config (the norm's epsilon): new keys. A tower that trains again (a parameter
    with ``requires_grad``): the tower runs, nothing read from or written to the store."""
    tok, processor, rows = tiny
    model = _lora_model(tok).eval()
    batch = PaliGemmaCollator(processor)(rows[:2])
    inner = model.get_base_model().model
    store = FeatureStore()
    with attach_feature_cache(model, store) as hook, torch.no_grad():
        model(**batch)
        inner.vision_tower.config.layer_norm_eps *= 10
        model(**batch)
        assert (hook.computed, hook.reused) == (4, 0)
        inner.vision_tower.encoder.layers[0].mlp.fc1.weight.requires_grad_(True)
        model(**batch)
        assert (hook.computed, hook.reused, hook.bypassed, len(store)) == (4, 0, 2, 4)


def test_changed_preprocessing_recomputes(tiny):
    """The key is the preprocessed pixels: another value range (same images, same weights) is recomputed; the same
    preprocessing again is read back."""
    tok, _, rows = tiny
    model = _lora_model(tok).eval()
    proc = synthetic.make_processor(tok, res=32, patch=16, text_len=24)
    other = BvPaliGemmaProcessor(BvImageProcessor(size={"height": 32, "width": 32}, value_range=(0, 1)), proc.tokenizer,
                                 image_seq_length=4, text_len=24)
    with attach_feature_cache(model) as hook, torch.no_grad():
        model(**PaliGemmaCollator(proc)(rows[:2]))
        model(**PaliGemmaCollator(other)(rows[:2]))
        assert (hook.computed, hook.reused) == (4, 0)
        model(**PaliGemmaCollator(proc)(rows[:2]))
        assert (hook.computed, hook.reused) == (4, 2)


def test_disk_store_is_safetensors_and_shared_between_runs(tiny, tmp_path):
    tok, processor, rows = tiny
    batch = PaliGemmaCollator(processor)(rows[:3])
    model = _lora_model(tok).eval()
    with attach_feature_cache(model, FeatureStore(tmp_path)) as hook, torch.no_grad():
        logits = model(**batch).logits
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert hook.computed == 3 and len(files) == 3 and all(f.endswith(".safetensors") for f in files)
    with attach_feature_cache(model, FeatureStore(tmp_path)) as hook, torch.no_grad():  # a new run, same model
        torch.testing.assert_close(model(**batch).logits, logits, rtol=0, atol=0)
    assert (hook.computed, hook.reused) == (0, 3)


def test_bf16_autocast_stores_bf16(tiny):
    tok, processor, rows = tiny
    model = _lora_model(tok).eval()
    batch = PaliGemmaCollator(processor)(rows[:2])
    store = FeatureStore()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(**batch).logits
        with attach_feature_cache(model, store) as hook:
            model(**batch)
            cached = model(**batch).logits
    assert {t.dtype for t in store.memory.values()} == {torch.bfloat16} and hook.reused == 2
    torch.testing.assert_close(cached, plain, rtol=0, atol=0)
    with attach_feature_cache(model, store) as hook, torch.no_grad():  # fp32 now: another key
        model(**batch)
    assert hook.computed == 2


def test_plan_conditions(tiny):
    tok, _, rows = tiny
    lora = apply_lora(_tiny_model(tok), "llm", r=2)
    assert plan_feature_cache(lora, rows).mode == "memory"
    assert plan_feature_cache(lora, rows, "off").mode == "off"
    assert plan_feature_cache(lora, rows, memory_budget=0, passes=3, folder="/x").folder == "/x"
    one_pass = plan_feature_cache(lora, rows, memory_budget=0, passes=1)
    assert one_pass.mode == "off" and "reads each example once" in one_pass.reason

    both = apply_lora(_tiny_model(tok), "llm+vision", r=2)
    plan = plan_feature_cache(both, rows)
    assert plan.mode == "off" and "image tower / projector trains" in plan.describe()
    with pytest.raises(ValueError, match="--feature-cache memory: not cacheable"):
        plan_feature_cache(both, rows, "memory")

    full = _tiny_model(tok)
    assert frozen_tower_problem(full) is not None
    freeze_vision(full)  # big_vision's freeze_vit (img/.*): full fine-tuning of Gemma on a frozen tower
    assert frozen_tower_problem(full) is None and plan_feature_cache(full, rows).mode == "memory"

    video = [{"image": [r["image"]] * 2, "prefix": r["prefix"], "suffix": r["suffix"]} for r in rows]
    assert "video" in plan_feature_cache(lora, video).reason
    lora.get_base_model().model.vision_tower.config.attention_dropout = 0.1
    assert "dropout" in plan_feature_cache(lora, rows).reason
    with pytest.raises(ValueError, match="one of"):
        plan_feature_cache(lora, rows, "sometimes")


def test_cli_flag(tmp_path, monkeypatch, capsys):
    from big_vision_hf.cli import build_parser, main

    args = build_parser().parse_args(["transfer", "--feature-cache", "off"])
    assert args.feature_cache == "off"
    assert build_parser().parse_args(["transfer"]).feature_cache == "auto"
    # an explicit cache under sharding: one line before any work (no model loaded, no OUTPUT.partial)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under a launcher
    out = tmp_path / "out"
    assert main(["transfer", "--feature-cache", "disk", "--fsdp", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--feature-cache disk: not with sharded training" in err and "Traceback" not in err
    assert not os.path.exists(f"{out}.partial")
