"""The memory planner (``big_vision_hf.transfer.planner``) against peaks measured on small PaliGemma models, and
the ``big-vision-hf plan`` command."""

from __future__ import annotations

import json

import pytest
import torch

from big_vision_hf.cli import main
from big_vision_hf.transfer.memtrack import PeakMemoryTracker, measure_training_step, synthetic_batch
from big_vision_hf.transfer.planner import (
    NAMED_MODELS,
    Arch,
    llm_params,
    load_arch,
    parse_memory,
    plan,
    vision_params,
)

# odd sizes, MQA (Gemma) and GQA with post-norms and soft-cap (Gemma 2); the last one has 256 image tokens, where
# eager attention scores are a large part of the step
GEMMA = Arch("gemma", 64, 2, 128, 4, 8, 64, 128, 3, 512, 4, 1, 32, 2048, False)
GEMMA2 = Arch("gemma2", 64, 2, 128, 4, 8, 64, 128, 3, 384, 4, 2, 32, 2048, True)
GEMMA2_LONG = Arch("gemma2-long", 48, 1, 96, 4, 8, 128, 96, 2, 256, 4, 2, 24, 1024, True)


def _measure(arch: Arch, batch: int, lora: int | None, dtype: str = "fp32") -> int:
    from transformers import PaliGemmaForConditionalGeneration

    from big_vision_hf.transfer.training import apply_lora

    torch.manual_seed(0)
    config = arch.to_config()
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "eager"
    model = PaliGemmaForConditionalGeneration(config).to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    if lora:
        model = apply_lora(model, "llm", r=lora)
    inputs = synthetic_batch(config, batch, text_len=16, rows=8)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    precision = "bf16" if dtype == "amp" else "fp32"  # amp: float32 weights under bfloat16 autocast
    return measure_training_step(model, inputs, precision=precision)["peak"]


@pytest.mark.parametrize("arch,batch,lora,dtype", [
    (GEMMA, 4, 4, "fp32"),
    (GEMMA2, 4, None, "fp32"),
    (GEMMA2, 4, 4, "bf16"),
    (GEMMA2_LONG, 2, 4, "fp32"),
    (GEMMA2_LONG, 2, None, "amp"),
], ids=["gemma-lora", "gemma2-full", "gemma2-lora-bf16", "gemma2-long-lora", "gemma2-long-full-amp"])
def test_plan_within_15_percent_of_measured_peak(arch, batch, lora, dtype):
    measured = _measure(arch, batch, lora, dtype)
    planned = plan(arch, batch=batch, text_len=16, rows=8, lora_rank=lora, dtype=dtype, attention="eager",
                   vision_attention="eager", foreach=False).total  # CPU: the per-tensor optimizer step
    assert abs(planned / measured - 1) < 0.15, (planned, measured)


def test_parameter_count_is_exact():
    from transformers import PaliGemmaForConditionalGeneration

    for arch in (GEMMA, GEMMA2, NAMED_MODELS["pg2-28b-224"]):
        with torch.device("meta"):
            model = PaliGemmaForConditionalGeneration(arch.to_config())
        assert sum(p.numel() for p in model.parameters()) == vision_params(arch) + llm_params(arch)


def test_tracker_counts_new_storages_only():
    weight = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(8, 256)
    tracker = PeakMemoryTracker()
    with tracker:
        y = (x @ weight.t()).relu()  # the transposed view of weight is not new memory
        assert tracker.current == y.numel() * 4
        y.sum().backward()
    assert tracker.peak >= weight.numel() * 4  # the gradient


def test_flex_drops_attention_scores_and_fsdp_shards_state():
    arch = load_arch("pg2-10b-448")
    eager = plan(arch, batch=4, lora_rank=None, dtype="bf16", attention="eager")
    flex = plan(arch, batch=4, lora_rank=None, dtype="bf16", attention="flex")
    assert eager.attention_scores > 0 and flex.attention_scores == 0 and flex.total < eager.total
    sharded = plan(arch, batch=4, lora_rank=None, dtype="bf16", attention="flex", gpus=8)
    assert sharded.optimizer * 8 == pytest.approx(flex.optimizer, rel=1e-6)
    assert plan(arch, batch=4, dtype="bf16", gradient_checkpointing=True).total < eager.total


def test_parse_memory():
    assert parse_memory("80GB") == parse_memory("80GiB") == parse_memory("80") == 80 * 2**30
    assert parse_memory("512MB") == 512 * 2**20
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_cli_prints_the_table(capsys):
    assert main(["plan", "--model", "pg2-10b-448", "--gpus", "8", "--gpu-memory", "80GB", "--lora"]) == 0
    out = capsys.readouterr().out
    for row in ("weights", "gradients", "optimizer", "activations", "attention scores", "largest batch / GPU"):
        assert row in out
    assert "FSDP x8" in out


def test_cli_reads_a_converted_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(GEMMA2.to_config().to_dict()))
    assert main(["plan", "--model", str(tmp_path), "--gpus", "2", "--gpu-memory", "1GB", "--full",
                 "--task", "vqav2", "--batch", "8"]) == 0
    assert "Gemma 2 3x128" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "pg9-1b-224"], "unknown model"),
    (["--model", "pg2-3b-224", "--gpu-memory", "80XB"], "bad memory size"),
    (["--model", "pg2-3b-224", "--task", "nope"], "nope"),
    (["--model", "pg2-3b-224", "--full", "--feature-cache"], "frozen image tower"),
    (["--model", "pg2-3b-224", "--seq-len", "100"], "leaves no text"),
])
def test_cli_one_line_errors(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
