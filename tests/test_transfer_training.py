"""PaliGemma transfer training: big_vision's optimizer semantics, LoRA presets, freezing, resume, 2 processes.

big_vision (0127fb6): ``big_vision/optax.py`` (clip -> adam -> scale(lr) -> add_decayed_weights(wd, .*/kernel$)
-> schedule), ``trainers/proj/paligemma/train.py``; the tiny model and data are ``transfer/synthetic.py``'s.
"""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from big_vision_hf.transfer import synthetic
from big_vision_hf.transfer.recipe import Recipe
from big_vision_hf.transfer.training import (
    LORA_PRESETS,
    BvAdam,
    add_residual_dropout,
    apply_lora,
    build_optimizer,
    decay_parameter_names,
    freeze_language_model,
    freeze_vision,
    qlora_available,
    qlora_quantization_config,
    train,
)

TINY = dict(res=32, patch=16, vision_width=32, vision_layers=2, text_width=32, text_layers=2)


@pytest.fixture(scope="module")
def tok():
    return synthetic.make_tokenizer()


@pytest.fixture(scope="module")
def processor(tok):
    return synthetic.make_processor(tok, res=32, patch=16, text_len=24)


@pytest.fixture(scope="module")
def rows():
    return synthetic.make_dataset("synthetic", "train", num_examples=32, res=32)


def _model(tok, seed=0):
    return synthetic.make_model(tok, seed=seed, **TINY)


def _leaf_linears(model):
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}


# ---------------------------------------------------------------------------------------------------------
# LoRA / QLoRA
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(LORA_PRESETS))
def test_lora_preset_adapts_exactly_its_modules(tok, preset):
    model = _model(tok)
    linears = _leaf_linears(model)
    llm = {n for n in linears if re.search(r"language_model\.layers\.\d+\.(self_attn|mlp)\.", n)}
    vision = {n for n in linears if re.search(r"vision_tower\.encoder\.layers\.\d+\.(self_attn|mlp)\.", n)}
    assert len(llm) == 7 * 2 and len(vision) == 6 * 2  # q k v o gate up down / q k v out fc1 fc2, 2 layers
    expected = llm | (set() if preset == "llm" else vision)
    peft_model = apply_lora(model, preset, r=2)
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")
               and not n.endswith(("lora_A", "lora_B"))}
    assert adapted == set(expected)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    if preset == "llm":  # the trap: the usual target list also matches SigLIP's q/k/v_proj
        usual = {n for n in linears if n.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj"}}
        assert usual & vision


def test_lora_unknown_preset(tok):
    with pytest.raises(ValueError, match="unknown LoRA preset"):
        apply_lora(_model(tok), "all")


def test_qlora_config_sets_compute_dtype():
    config = qlora_quantization_config(torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.bnb_4bit_quant_type == "nf4"
    assert not hasattr(config, "bnb_4bit_compute_type")


def test_qlora_trains_on_gpu(tok, processor, rows, tmp_path):
    ok, reason = qlora_available()
    if not ok:
        pytest.skip(reason)
    from transformers import PaliGemmaForConditionalGeneration

    _model(tok).save_pretrained(tmp_path / "base")
    model = PaliGemmaForConditionalGeneration.from_pretrained(
        tmp_path / "base", quantization_config=qlora_quantization_config(torch.bfloat16), device_map={"": 0})
    assert model.config.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16
    result = train(model, processor, rows, tmp_path / "run", Recipe(lr=1e-3, steps=2, batch_size=4), lora="llm",
                   progress=False, precision="bf16")
    assert all(math.isfinite(h["loss"]) for h in result.log_history if "loss" in h)


# ---------------------------------------------------------------------------------------------------------
# Optimizer: big_vision semantics
# ---------------------------------------------------------------------------------------------------------


def test_decay_only_on_vision_and_projector_kernels(tok):
    model = _model(tok)
    names = set(decay_parameter_names(model))
    expected = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                and (".vision_tower." in f".{n}." or ".multi_modal_projector." in f".{n}.")}
    assert names == expected
    assert "model.vision_tower.embeddings.patch_embedding.weight" in names
    assert "model.multi_modal_projector.linear.weight" in names
    assert not any("language_model" in n or "lm_head" in n for n in names)
    assert not any(n.endswith(".bias") or "norm" in n or "position_embedding" in n for n in names)


def test_bv_adam_weight_decay_not_scaled_by_lr_but_by_schedule():
    """optax: p -= sched * (lr * adam(g) + wd * p). With g = 0 Adam's update is 0, so p *= 1 - sched * wd for
    any lr; the Trainer's schedule sets group['lr'] = base_lr * sched."""
    for lr in (1e-5, 1e-2):
        p = nn.Parameter(torch.ones(3))
        opt = BvAdam([{"params": [p], "bv_weight_decay": 0.1, "base_lr": lr}], lr=lr)
        p.grad = torch.zeros(3)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))
        opt.param_groups[0]["lr"] = lr * 0.5  # the schedule at 50%
        opt.step()
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.9 * 0.95))


def test_bv_adam_matches_optax_chain_by_hand():
    """Two steps of clip -> adam(b2=0.999) -> lr -> +wd*p -> schedule, in numpy, against BvAdam."""
    lr, wd, b1, b2, eps = 0.1, 0.01, 0.9, 0.999, 1e-8
    sched = [1.0, 0.5]
    p0 = np.array([1.0, -2.0, 0.5])
    grads = [np.array([0.3, -0.1, 0.2]), np.array([-0.2, 0.4, 0.1])]
    p, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    for t, (g, s) in enumerate(zip(grads, sched), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        adam = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        p = p - s * (lr * adam + wd * p)
    param = nn.Parameter(torch.tensor(p0))
    opt = BvAdam([{"params": [param], "bv_weight_decay": wd, "base_lr": lr}], lr=lr, betas=(b1, b2), eps=eps)
    for g, s in zip(grads, sched):
        opt.param_groups[0]["lr"] = lr * s
        param.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-6, atol=1e-6)  # torch Adam folds eps slightly
    # AdamW would have decayed by lr * wd instead:
    assert not np.allclose(p0 * (1 - lr * wd), p0 * (1 - wd))


def test_build_optimizer_groups(tok):
    model = _model(tok)
    freeze_vision(model)
    opt = build_optimizer(model, lr=1e-3, wd=1e-4)
    # vision and projector frozen: no parameter left to decay (big_vision: the LLM has no */kernel)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["bv_weight_decay"] == 0.0
    model = _model(tok)
    opt = build_optimizer(model, lr=1e-3, wd=1e-4)
    decayed = {id(p) for p in opt.param_groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == set(decay_parameter_names(model))


def test_freeze_language_model_leaves_vision_trainable(tok):
    model = _model(tok)
    frozen = set(freeze_language_model(model))
    assert frozen and all(".language_model." in n or n.startswith("lm_head.") for n in frozen)
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in frozen), n
    assert any(".vision_tower." in n for n, p in model.named_parameters() if p.requires_grad)


def test_residual_dropout_hooks(tok):
    model = _model(tok)
    handles = add_residual_dropout(model, 0.5)
    assert len(handles) == 2 * 2  # o_proj and down_proj of 2 Gemma layers
    assert add_residual_dropout(model, 0.0) == []


# ---------------------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------------------


def _losses(result):
    return [h["loss"] for h in result.log_history if "loss" in h]


def test_train_full_with_frozen_vit_and_weight_decay(tok, processor, rows, tmp_path):
    model = _model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recipe = Recipe(lr=3e-3, steps=4, batch_size=8, wd=0.01, freeze_vit=True, label_smoothing=0.1, llm_dropout=0.1)
    result = train(model, processor, rows, tmp_path, recipe, logging_steps=1, progress=False)
    losses = _losses(result)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    for n, p in result.model.named_parameters():
        frozen = ".vision_tower." in n or ".multi_modal_projector." in n
        assert torch.equal(p.detach(), before[n]) == frozen, n
    lrs = [h["learning_rate"] for h in result.log_history if "learning_rate" in h]
    assert lrs[-1] < lrs[1]  # cosine decay


def test_train_lora_changes_only_adapters(tok, processor, rows, tmp_path):
    result = train(_model(tok), processor, rows, tmp_path, Recipe(lr=1e-2, steps=2, batch_size=8), lora="llm",
                   lora_rank=2, progress=False)
    assert 0 < result.trainable_parameters < result.total_parameters
    assert all(math.isfinite(x) for x in _losses(result) or [0.0])


@pytest.mark.parametrize("lora", [None, "llm"])
def test_resume_continues_the_same_loss_curve(tok, processor, rows, tmp_path, lora):
    # Full fine-tuning also guards a transformers 5.23 bug: Trainer reloads PaliGemma checkpoints with raw key
    # names (every weight "missing"), see PaliGemmaTrainer._load_from_checkpoint.
    from transformers import TrainerCallback

    common = dict(recipe=Recipe(lr=3e-3, steps=6, batch_size=8, wd=0.01), save_steps=3, logging_steps=1,
                  progress=False, save_total_limit=None, lora=lora)
    straight = train(_model(tok), processor, rows, tmp_path / "straight", **common)

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_save = True
                control.should_training_stop = True

    killed = train(_model(tok), processor, rows, tmp_path / "resumed", callbacks=[Kill()], **common)
    assert killed.trainer.state.global_step == 3
    assert os.path.isdir(tmp_path / "resumed" / "checkpoint-3")
    # A LoRA checkpoint holds only the adapters: resuming needs the same base model; a full one holds everything.
    resumed = train(_model(tok, seed=0 if lora else 123), processor, rows, tmp_path / "resumed", resume=True,
                    **common)
    assert resumed.trainer.state.global_step == 6
    a = dict(straight.model.named_parameters())
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p.detach(), a[n].detach(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_losses(resumed)[-3:], _losses(straight)[-3:], rtol=1e-4)
    np.testing.assert_allclose(_losses(killed), _losses(straight)[:3], rtol=1e-5)


_DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from big_vision_hf.transfer import synthetic
    from big_vision_hf.transfer.recipe import Recipe
    from big_vision_hf.transfer.training import train
    out = sys.argv[1]
    tok = synthetic.make_tokenizer(os.path.join(out, f"sp{os.environ['RANK']}.model"))
    proc = synthetic.make_processor(tok, res=32, patch=16, text_len=24)
    model = synthetic.make_model(tok, res=32, patch=16, vision_width=32, text_width=32, text_layers=1,
                                 vision_layers=1)
    rows = synthetic.make_dataset("synthetic", "train", num_examples=16, res=32)
    result = train(model, proc, rows, os.path.join(out, "run"), Recipe(lr=1e-3, steps=2, batch_size=4),
                   progress=False, logging_steps=1, use_cpu=True)
    assert result.trainer.args.world_size == 2, result.trainer.args.world_size
    total = sum(float(p.detach().double().sum()) for p in result.model.parameters())
    with open(os.path.join(out, f"rank{os.environ['RANK']}.txt"), "w") as f:
        f.write(repr((result.trainer.state.global_step, total)))
    # an orderly gloo teardown: exiting with the group alive can abort in its threads' destructors
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
""")


def test_two_process_cpu_training(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    port = str(29500 + os.getpid() % 1000)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", port, str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [ast.literal_eval((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]
    assert results[0][0] == results[1][0] == 2
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-9)  # DDP kept the replicas identical


def _gemma2_model(tok, text_layers, attn_softcap=5.0):
    """A tiny PaliGemma 2 (Gemma 2 decoder: sandwich norms, a sliding window shorter than the sequence,
    attention and final logit soft-capping, query_pre_attn_scalar != head_dim)."""
    from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration

    base = synthetic.make_model(tok, **TINY).config
    text = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, vocab_size=base.text_config.vocab_size,
                        sliding_window=3, attn_logit_softcapping=attn_softcap, final_logit_softcapping=3.0,
                        query_pre_attn_scalar=12, pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    config = PaliGemmaConfig(vision_config=base.vision_config.to_dict(), text_config=text.to_dict(),
                             image_token_index=base.image_token_index, projection_dim=32, hidden_size=32,
                             vocab_size=base.text_config.vocab_size)
    torch.manual_seed(0)
    return PaliGemmaForConditionalGeneration(config)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family,text_layers", [("gemma", 2), ("gemma2", 1), ("gemma2", 2)])
def test_last_layer_on_loss_rows_only_is_exact(tok, processor, rows, family, text_layers, attn):
    """compute_loss runs the last decoder layer's queries/MLP on the loss rows only: loss and every LoRA gradient
    equal those of the full forward + paligemma_loss (PaliGemma 1 and 2; the Gemma 2 last layer both sliding and
    global), and the last layer's q_proj / MLP really see only those rows."""
    from transformers import TrainingArguments

    from big_vision_hf.transfer.collator import PaliGemmaCollator
    from big_vision_hf.transfer.loss import paligemma_loss
    from big_vision_hf.transfer.training import PaliGemmaTrainer

    def model_and_batch():
        model = synthetic.make_model(tok, **dict(TINY, text_layers=text_layers)) if family == "gemma" \
            else _gemma2_model(tok, text_layers, attn_softcap=5.0 if attn == "eager" else None)  # sdpa: no softcap
        model = apply_lora(model, "llm", r=4)
        for name, p in model.named_parameters():  # LoRA B starts at 0: make every adapter matter
            if "lora_B" in name:
                nn.init.normal_(p, std=0.5)
        model.config._attn_implementation = attn
        for sub in (model.config.text_config, model.config.vision_config):
            sub._attn_implementation = attn
        return model.train()

    batch = PaliGemmaCollator(processor)(rows[:3])
    assert len({int(n) for n in (batch["labels"] != -100).sum(-1)}) > 1  # ragged loss rows
    trainer_args = TrainingArguments(output_dir="/tmp/unused_bvhf", report_to="none", use_cpu=True)

    pruned = model_and_batch()
    seen = []
    last = pruned.get_base_model().model.language_model.layers[-1]
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[:-1]))
             for m in (last.self_attn.q_proj, last.mlp.gate_proj)]
    got = PaliGemmaTrainer(model=pruned, args=trainer_args, label_smoothing=0.1).compute_loss(pruned, batch)
    got.backward()
    for h in hooks:
        h.remove()
    keep = nn.functional.pad(batch["labels"][:, 1:] != -100, (0, 1))
    width = int(keep.sum(-1).max())
    assert seen == [(3, width), (3, width)], seen  # not (3, T): the dead rows were never computed

    full = model_and_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    want = paligemma_loss(full(**inputs).logits, batch["labels"], 0.1)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in full.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for name, p in pruned.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_last_layer_rows_found_through_wrappers(tok):
    """PEFT, DDP (``.module``) or both: the Gemma layers are found, so the row subset is used when distributed."""
    from big_vision_hf.transfer.training import _decoder_layers

    class Wrapper(nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    plain = _model(tok)
    layers = plain.model.language_model.layers
    for model in (plain, Wrapper(plain), apply_lora(_model(tok), "llm"), Wrapper(apply_lora(_model(tok), "llm"))):
        found = _decoder_layers(model)
        assert found is not None and len(found) == len(layers)
        assert type(found[-1]).__name__ == "GemmaDecoderLayer"
    assert _decoder_layers(nn.Linear(2, 2)) is None


def test_last_layer_rows_fallback_keeps_the_output_contract(tok):
    """Without a dense mask (pure causal ``None``, flex attention) the full layer runs, and its ``keep`` rows come
    back as ``[1, N, D]``, the shape compute_loss expects when the row subset is active."""
    from big_vision_hf.transfer.training import _decoder_layer_on_rows

    model = _model(tok).eval()
    language_model = model.model.language_model
    layer = language_model.layers[-1]
    hidden = torch.randn(2, 7, 32)
    position_ids = torch.arange(7)[None].expand(2, -1)
    position_embeddings = language_model.rotary_emb(hidden, position_ids)
    keep = torch.zeros(2, 7, dtype=torch.bool)
    keep[0, 5:] = keep[1, 2] = True
    with torch.no_grad():
        full = layer(hidden, attention_mask=None, position_embeddings=position_embeddings, position_ids=position_ids)
        rows = _decoder_layer_on_rows(layer, keep, hidden, attention_mask=None,
                                      position_embeddings=position_embeddings, position_ids=position_ids)
    assert rows.shape == (1, 3, 32)
    torch.testing.assert_close(rows[0], full[keep])
