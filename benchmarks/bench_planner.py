"""The memory planner (``big-vision-hf plan``) against the measured peak of real training steps.

For each small PaliGemma / PaliGemma 2 configuration below (random weights, ``Arch.to_config()``), one transfer
training step (``PaliGemmaTrainer.compute_loss``, backward, grad clip, ``BvAdam`` step; after a first step so the
optimizer state exists) is measured and compared with :func:`~big_vision_hf.transfer.planner.plan` for the same
sizes. On CPU the measure is :class:`~big_vision_hf.transfer.memtrack.PeakMemoryTracker` (every tensor storage
allocated, freed when its storage dies: a perfect allocator's peak) and the plan uses the CPU optimizer's
per-tensor step; on CUDA it is ``torch.cuda.max_memory_allocated`` (the caching allocator's rounding included)
with the ``foreach`` step. Printed per row: measured and planned MiB, their ratio, the ratio of the step's part
(the peak less weights and optimizer state: activations, gradients, transients), and the planned peak's moment;
the last line the worst ratios.

    python benchmarks/bench_planner.py                    # CPU, fp32, bf16 and amp, ~4 minutes
    python benchmarks/bench_planner.py --quick            # four rows
    python benchmarks/bench_planner.py --device cuda --dtype bfloat16 --scale 4
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch

from big_vision_hf.transfer.memtrack import measure_training_step, synthetic_batch
from big_vision_hf.transfer.planner import Arch, plan
from big_vision_hf.transfer.training import apply_lora, freeze_vision

#           name          vis w, d, mlp, heads, patch, res | width, depth, mlp, heads, kv, head_dim, vocab, gemma2
GEMMA = Arch("gemma-mqa", 64, 2, 128, 4, 8, 64, 128, 3, 512, 4, 1, 32, 2048, False)
GEMMA2 = Arch("gemma2-gqa", 64, 2, 128, 4, 8, 64, 128, 3, 384, 4, 2, 32, 2048, True)
GEMMA2_LONG = Arch("gemma2-256tok", 64, 2, 128, 4, 8, 128, 128, 3, 384, 4, 2, 32, 2048, True)
GEMMA2_VOCAB = Arch("gemma2-vocab16k", 64, 2, 128, 4, 8, 64, 128, 4, 384, 4, 4, 32, 16384, True)

# (arch, batch, text_len, supervised rows, lora rank or None, options)
CASES = [
    (GEMMA, 2, 16, 8, 4, {}),
    (GEMMA, 8, 16, 8, 4, {}),
    (GEMMA, 4, 48, 24, 4, {}),
    (GEMMA, 4, 16, 8, None, {}),
    (GEMMA, 4, 16, 8, 4, {"attention": "sdpa"}),
    (GEMMA2, 4, 16, 8, 4, {}),
    (GEMMA2, 4, 16, 8, None, {}),
    (GEMMA2, 8, 16, 8, None, {"freeze_vit": True}),
    (GEMMA2_LONG, 2, 16, 8, 4, {}),
    (GEMMA2_LONG, 2, 16, 8, None, {}),
    (GEMMA2_LONG, 2, 16, 8, 4, {"gradient_checkpointing": True}),
    (GEMMA2_LONG, 2, 16, 8, None, {"gradient_checkpointing": True}),
    (GEMMA2_VOCAB, 4, 32, 16, 4, {}),
    (GEMMA2_VOCAB, 4, 32, 16, None, {}),
]
QUICK = [0, 3, 6, 8]


def build(arch: Arch, lora: int | None, dtype: torch.dtype, device: str, attention: str = "eager",
          freeze_vit: bool = False, gradient_checkpointing: bool = False):
    """A random PaliGemma of ``arch``'s sizes, LoRA-wrapped or frozen as the transfer would."""
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(0)
    config = arch.to_config()
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = attention
    model = PaliGemmaForConditionalGeneration(config).to(device=device, dtype=dtype)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if freeze_vit:
        freeze_vision(model)
    if lora:
        model = apply_lora(model, "llm", r=lora)
    return model


def measure(arch, batch, text_len, rows, lora, options, dtype_name, device) -> tuple[int, int]:
    """The step's peak, and that peak less the weights and optimizer state (what the step itself adds).
    ``dtype_name`` "amp": float32 weights, the step under bfloat16 autocast (``train(precision="bf16")``)."""
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    precision = "bf16" if dtype_name == "amp" else "fp32"
    model = build(arch, lora, dtype, device, **options)
    inputs = synthetic_batch(arch.to_config(), batch, text_len, rows)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    if device == "cuda":  # the allocator's own view of the same step
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result = measure_training_step(model, inputs, precision=precision)
        result["peak"] = torch.cuda.max_memory_allocated()
    else:
        result = measure_training_step(model, inputs, precision=precision)
    del model, inputs
    gc.collect()
    return result["peak"], result["peak"] - result["weights_and_state"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16", "amp"],
                        choices=["float32", "bfloat16", "amp"], help="amp: float32 weights under bfloat16 autocast")
    parser.add_argument("--quick", action="store_true", help="four rows only")
    parser.add_argument("--scale", type=int, default=1, help="multiply every batch by this (GPUs: bigger steps)")
    args = parser.parse_args(argv)
    cases = [CASES[i] for i in QUICK] if args.quick else CASES
    how = "cuda max_memory_allocated" if args.device == "cuda" else "tensor storages (PeakMemoryTracker)"
    print(f"device {args.device}; measured: {how}")
    print(f"{'model':16s} {'dtype':8s} {'setup':34s} {'measured MiB':>12s} {'planned MiB':>12s} {'ratio':>6s} "
          f"{'step part ratio':>15s}  moment")
    worst = worst_step = 1.0
    for dtype_name in args.dtype:
        for arch, batch, text_len, rows, lora, options in cases:
            batch *= args.scale
            t0 = time.perf_counter()
            measured, measured_step = measure(arch, batch, text_len, rows, lora, options, dtype_name, args.device)
            planned = plan(arch, batch=batch, text_len=text_len, rows=rows, lora_rank=lora,
                           dtype={"float32": "fp32", "bfloat16": "bf16", "amp": "amp"}[dtype_name],
                           foreach=args.device == "cuda", vision_attention=options.get("attention", "eager"),
                           **{"attention": "eager", **options})
            ratio = planned.total / measured
            step_ratio = (planned.total - planned.weights - planned.optimizer) / measured_step
            worst = ratio if abs(ratio - 1) > abs(worst - 1) else worst
            worst_step = step_ratio if abs(step_ratio - 1) > abs(worst_step - 1) else worst_step
            setup = (f"b{batch} L{planned.seq_len} {'LoRA r' + str(lora) if lora else 'full'} "
                     + " ".join(k.replace("gradient_checkpointing", "checkpointing") if v is True else str(v)
                                for k, v in options.items()))
            print(f"{arch.name:16s} {dtype_name:8s} {setup:34s} {measured / 2**20:12.2f} "
                  f"{planned.total / 2**20:12.2f} {ratio:6.3f} {step_ratio:15.3f}  {planned.peak_phase} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"worst planned/measured ratio: {worst:.3f} (whole peak), {worst_step:.3f} (the step's part: the peak "
          "less weights and optimizer state)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
