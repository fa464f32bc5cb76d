"""PaliGemma 2 attention: ``eager`` against flex attention, training-step time and peak memory, in one run.

PaliGemma 2-shaped decoder layers (transformers' ``Gemma2DecoderLayer`` from big_vision_hf's conversion of
``gemma2_2b``: head_dim 256, GQA, attention-logit soft-cap 50, ``query_pre_attn_scalar`` 256, no sliding window --
fewer layers / heads / width by default on CPU) on the sequence lengths of 224 / 448 / 896 px (256 / 1,024 / 4,096
image tokens + ``--text`` tokens), with the prefix-LM mask built as ``PaliGemmaModel`` builds it
(``create_causal_mask`` with ``block_sequence_ids`` from ``token_type_ids``: image + prefix bidirectional,
suffix causal) and the padding of a shorter second example when ``--batch`` > 1. The flex arm is what
``choose_attention`` picks: ``bv_flex_attention`` on CPU (torch has no CPU flex backward: inductor's compiled
forward + a backward by blocks of query rows), ``flex_attention`` on CUDA.

A step is forward + backward (no optimizer), weights frozen as with LoRA (``--train-weights``: their gradients
too). Each (arm, length) runs in its own subprocess (its
own peak memory): ``--warmup`` untimed steps (compilation included), then ``--steps`` timed; ``--rounds``
alternates the arms and keeps each one's best round. A third arm, the same step with the attention's output
replaced by 0, gives the working memory of everything else (MLP, norms, projections), so that attention's own
share is printed too: the whole step's ratio depends on how much of the layer is attention. On CPU the process
CPU time per step is printed too (it barely moves when other jobs share the machine). Memory: CUDA
``max_memory_allocated`` above the set-up state; CPU peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``
after the warm-up steps) above the RSS at that point (glibc's mmap threshold pinned, so freed buffers leave the
RSS): the working memory of a step.

    python benchmarks/bench_attention.py                           # CPU defaults, a few minutes
    python benchmarks/bench_attention.py --lengths 256 1024        # image-token counts to run
    python benchmarks/bench_attention.py --device cuda --dtype bfloat16 --layers 26 --heads 8 --kv-heads 4 \\
        --width 2304 --batch 4                                     # PaliGemma 2 3B's language model on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ARMS = ("eager", "flex", "rest")  # rest: the step without attention (its output 0): what neither arm changes
RES = {256: "224 px", 1024: "448 px", 4096: "896 px"}


def _vm_bytes() -> dict[str, int]:
    """``/proc/self/status``'s ``Vm*`` lines (``VmRSS``, ``VmHWM``, ...) in bytes; empty without ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            pairs = [line.split(":", 1) for line in f if line.startswith("Vm")]
    except OSError:
        return {}
    return {name: int(value.split()[0]) * 1024 for name, value in pairs}


def build(args, impl: str):
    """Gemma 2 layers (PaliGemma 2's text config, scaled by the flags) and one batch's embeddings and masks."""
    import torch
    from transformers import Gemma2Config
    from transformers.masking_utils import create_causal_mask
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Model

    from big_vision_hf.conversion.convert_paligemma import gemma_text_config, gemma_variant_config

    kw = gemma_text_config(gemma_variant_config({"variant": "gemma2_2b", "vocab_size": 256}))
    kw.update(num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
              hidden_size=args.width, intermediate_size=4 * args.width)  # Gemma 2 2B: 9216 = 4 x 2304
    if "layer_types" in kw:
        kw["layer_types"] = kw["layer_types"][: args.layers]
    config = Gemma2Config(**kw)
    config._attn_implementation = impl
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = Gemma2Model(config).to(args.device, dtype)
    model.embed_tokens = None  # the benchmark feeds embeddings

    length = args.image_tokens + args.text
    # LoRA-like by default: frozen weights, the gradient flows to the inputs (activation memory, no weight grads)
    model.requires_grad_(args.train_weights)
    embeds = torch.randn(args.batch, length, args.width, device=args.device, dtype=dtype, requires_grad=True)
    token_type_ids = torch.zeros(args.batch, length, dtype=torch.long, device=args.device)
    token_type_ids[:, args.image_tokens + args.text // 2:] = 1  # the second half of the text is the suffix
    attention_mask = torch.ones(args.batch, length, dtype=torch.long, device=args.device)
    attention_mask[1:, length - args.text // 4:] = 0  # the other examples shorter: right padding
    position_ids = torch.arange(1, length + 1, device=args.device)[None]
    mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None,
                              position_ids=position_ids, block_sequence_ids=torch.where(token_type_ids == 0, 0, -1))
    masks = {"full_attention": mask, "sliding_attention": mask}  # no sliding window (big_vision's Gemma 2)
    return model, dict(inputs_embeds=embeds, attention_mask=masks, position_ids=position_ids)


def child(args) -> None:
    """One arm at one length; prints its figures as JSON on the last line."""
    import torch

    from big_vision_hf.modeling.paligemma_attention import choose_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    impl = "eager"
    if args.arm == "rest":
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        impl = "none"
        ALL_ATTENTION_FUNCTIONS.register(impl, lambda module, query, *a, **k: (query.transpose(1, 2) * 0, None))
        ALL_MASK_ATTENTION_FUNCTIONS.register(impl, lambda *a, **k: None)
    if args.arm == "flex":
        from transformers import PaliGemmaConfig

        impl, reason = choose_attention(PaliGemmaConfig(text_config={"model_type": "gemma2"}), args.device)
        if impl == "eager":
            raise SystemExit(f"flex attention does not run here: {reason}")
    model, batch = build(args, impl)
    cuda = args.device.startswith("cuda")

    def step():
        out = model(**batch).last_hidden_state
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        batch["inputs_embeds"].grad = None

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current RSS (Linux >= 4.0)
        except OSError:  # not allowed here: the peak then includes the set-up and the warm-up steps
            print("cannot reset the peak RSS (/proc/self/clear_refs): working memory overstated", file=sys.stderr)
        base = _vm_bytes().get("VmRSS", 0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _vm_bytes().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"impl": impl, "step_s": (time.perf_counter() - wall) / args.steps,
                      "cpu_s": (time.process_time() - cpu) / args.steps, "working": peak - base}))


def run_arm(args, arm: str, image_tokens: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", arm, "--image-tokens", str(image_tokens)]
    for name in ("text", "batch", "layers", "heads", "kv_heads", "width", "device", "dtype", "warmup", "steps",
                 "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    cmd += ["--train-weights"] if args.train_weights else []
    # a fixed mmap threshold: glibc otherwise raises it after the first large free and keeps freed [L, L] buffers
    # in the heap, so the RSS after the warm-up would hide the step's working memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} at {image_tokens} image tokens failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096],
                   help="image tokens (224 / 448 / 896 px: 256 1024 4096)")
    p.add_argument("--text", type=int, default=64, help="text tokens after the image (half prefix, half suffix)")
    p.add_argument("--batch", type=int, default=1, help="examples; the 2nd on are right-padded by text/4 tokens")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (PaliGemma 2 3B: 26)")
    p.add_argument("--heads", type=int, default=4, help="query heads (3B: 8)")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (3B: 4)")
    p.add_argument("--width", type=int, default=256, help="hidden size (3B: 2304); head_dim stays 256")
    p.add_argument("--train-weights", action="store_true", help="weights trained too (full fine-tuning: their "
                   "gradients count); default frozen, the gradient flowing to the inputs, as with LoRA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (flex compiles in the first)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=1, help="rounds, arms alternating; each arm's best is kept")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each arm (0: torch's default)")
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--image-tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.arm = args.child
        return child(args)

    print(f"Gemma 2 layers: {args.layers} x (width {args.width}, {args.heads} heads / {args.kv_heads} kv, head_dim "
          f"256, soft-cap 50), batch {args.batch}, text {args.text}, {args.device} {args.dtype}, cores "
          f"{os.cpu_count()}, threads {args.threads or 'default'}; step = forward + backward"
          f"{' (weights trained)' if args.train_weights else ' (weights frozen, as with LoRA)'}")
    print(f"{'image tokens':>14} {'L':>6} {'arm':>18} {'step s':>8} {'cpu s':>8} {'working MiB':>12}")
    for n in args.lengths:
        best = {}
        for _ in range(args.rounds):
            for arm in ARMS:
                r = run_arm(args, arm, n)
                if arm not in best or r["step_s"] < best[arm]["step_s"]:
                    best[arm] = {**r, "working": min(r["working"], best.get(arm, r)["working"])}
        for arm in ARMS[:2]:
            r = best[arm]
            print(f"{n:>6} {RES.get(n, ''):>7} {n + args.text:>6} {r['impl']:>18} {r['step_s']:8.2f} "
                  f"{r['cpu_s']:8.2f} {r['working'] / 2**20:12.0f}")
        e, f, rest = best["eager"], best["flex"], best["rest"]["working"]
        print(f"{'':>22} flex / eager: step time x{f['step_s'] / e['step_s']:.2f}, cpu time "
              f"x{f['cpu_s'] / e['cpu_s']:.2f}, working memory x{f['working'] / e['working']:.2f}; attention's own "
              f"(above the {rest / 2**20:.0f} MiB of the step without it): {(e['working'] - rest) / 2**20:.0f} -> "
              f"{(f['working'] - rest) / 2**20:.0f} MiB, x{(f['working'] - rest) / (e['working'] - rest):.2f}")


if __name__ == "__main__":
    main()
