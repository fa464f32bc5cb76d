"""Packed (NaViT "Patch n' Pack") against padded NaFlex and resize-to-square ViT: images/s and peak memory.

The image set: ``--images`` images whose sizes are drawn like a web crawl's (`web_image_sizes`: shorter side
log-normal, median 320 px, sigma 0.6, clipped to [32, 2048]; long/short aspect ratio 1 (25 %), 4:3 (35 %),
3:2 (20 %), 16:9 (12 %), 2:1 (5 %), 3:1 (3 %); 70 % landscape; a parametric stand-in, not fitted to a dataset).
Each image gets NaViT's native-resolution patch budget capped at ``--max-patches`` (`native_patch_budget`) and
NaFlex's ``resize_to_sequence`` grid for it; ``--train-res MIN MAX`` uses NaViT's resolution sampling (side ~
U(MIN, MAX) px) for the training step instead. Patch values are random (the model's cost does not depend on them).

Arms, all with the same images per step (``--batch``) and the same NaFlex trunk (``--variant``, MAP head, random
weights), fp32 unless ``--dtype``:

- ``packed-dense``: the images packed first-fit-decreasing into rows of ``--sequence-length`` tokens (the
  collator's packing), block-diagonal mask through SDPA;
- ``packed-varlen``: the same batch, the variable-length path (``packed_attention="varlen"``: per-image SDPA on
  CPU, torch's flash varlen / flex_attention on CUDA; no padding is computed);
- ``naflex-padded``: every image padded to ``--max-patches`` (NaFlex's ``pad_to_shape``), padding masks;
- ``vit-square``: a ViT with the same trunk on square images of ``--max-patches`` patches (resize-to-square);
- training only, ``packed-varlen-drop``: ``packed-varlen`` with ``--drop`` (default 0.5) token dropping.

Inference = forward under ``no_grad``; training step = forward, cross-entropy on per-image logits (1000 classes),
backward, AdamW. Each arm runs in its own subprocess (its own peak memory), ``--warmup`` untimed then ``--steps``
timed steps, arms alternating over ``--rounds`` (best round kept). On CPU the process CPU time is the figure to
compare (with ``--threads 1`` it is the work done, and barely moves when others share the machine); wall time is
printed too. Memory: CUDA ``max_memory_allocated``; CPU peak RSS (``VmHWM``, reset after set-up) and the working
memory above the set-up state. Also printed: the share of padding tokens of the packing over ``--waste-batches``
batches of this distribution (the goal is <= 5 %).

    python benchmarks/bench_navit.py                                   # CPU, S/16 x 4 layers, cap 256, 64 img/step
    python benchmarks/bench_navit.py --max-patches 1024 --variant Ti/16 --batch 16
    python benchmarks/bench_navit.py --device cuda --dtype bfloat16 --variant B/16 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

INFER_ARMS = ("packed-dense", "packed-varlen", "naflex-padded", "vit-square")
TRAIN_ARMS = INFER_ARMS + ("packed-varlen-drop",)
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 3.0)
ASPECT_P = (0.25, 0.35, 0.20, 0.12, 0.05, 0.03)


def web_image_sizes(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``(height, width)`` of ``n`` images, drawn as described in the module docstring."""
    short = np.clip(np.exp(rng.normal(np.log(320.0), 0.6, n)), 32, 2048)
    long = short * rng.choice(ASPECTS, p=ASPECT_P, size=n)
    landscape = rng.random(n) < 0.7
    h = np.where(landscape, short, long).round().astype(int)
    w = np.where(landscape, long, short).round().astype(int)
    return list(zip(h.tolist(), w.tolist()))


def image_grids(args, rng: np.random.Generator, n: int, train: bool) -> list[tuple[int, int]]:
    """The NaFlex patch grid of each image at its budget (native, or NaViT's resolution sampling)."""
    from big_vision_hf.processing.image_processing_bv_naflex import get_image_size_for_seq
    from big_vision_hf.processing.sequence_packing import ResolutionSampler, native_patch_budget

    p, cap = args.patch, args.max_patches
    sampler = ResolutionSampler(*args.train_res) if (train and args.train_res) else None
    grids = []
    for h, w in web_image_sizes(n, rng):
        budget = sampler.budget(rng, p, cap) if sampler else native_patch_budget(h, w, p, cap)
        _, (th, tw) = get_image_size_for_seq((h, w), p, budget)
        grids.append((th // p, tw // p))
    return grids


def packed_batch(grids, length: int, dim: int, rng: np.random.Generator, drop: float = 0.0) -> dict:
    """The collator's packing of random patches of these grids (optionally with token dropping)."""
    from big_vision_hf.processing.sequence_packing import TokenDropping, first_fit_decreasing, pack_sequences

    dropping = TokenDropping.fixed(drop) if drop else None
    seqs = []
    for h, w in grids:
        n = h * w
        keep = dropping.keep(n, 1, rng) if dropping else np.arange(n)
        seqs.append({"patches": rng.uniform(-1, 1, (len(keep), dim)).astype(np.float32),
                     "yidx": keep // w, "xidx": keep % w, "shape": (h, w)})
    packed = pack_sequences(seqs, first_fit_decreasing([len(s["patches"]) for s in seqs], length), length)
    packed.pop("image_order")
    return packed


def padding_share(args) -> tuple[float, float]:
    """Padding tokens / packed tokens over ``--waste-batches`` batches (inference grids, then training grids)."""
    from big_vision_hf.processing.sequence_packing import first_fit_decreasing

    shares = []
    for train in (False, True):
        rng = np.random.default_rng(args.seed + 1000)
        total = used = 0
        for _ in range(args.waste_batches):
            lengths = [h * w for h, w in image_grids(args, rng, args.batch, train)]
            rows = first_fit_decreasing(lengths, args.sequence_length)
            total += len(rows) * args.sequence_length
            used += sum(lengths)
        shares.append(1 - used / total)
    return shares[0], shares[1]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


def run_arm(args) -> dict:
    import torch

    from big_vision_hf import BvViTConfig
    from big_vision_hf.configuration.configuration_bv_naflex import BvNaFlexViTConfig
    from big_vision_hf.configuration.configuration_bv_vit import decode_variant
    from big_vision_hf.modeling.modeling_bv_naflex import BvNaFlexViTForImageClassification
    from big_vision_hf.modeling.modeling_bv_vit import BvViTForImageClassification

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    arm, train = args.arm, args.phase == "train"
    v = decode_variant(args.variant)
    trunk = dict(hidden_size=v["width"], num_hidden_layers=args.depth or v["depth"], intermediate_size=v["mlp_dim"],
                 num_attention_heads=v["num_heads"], patch_size=args.patch, pool_type="map", num_labels=1000)
    torch.manual_seed(0)
    rng = np.random.default_rng(args.seed)
    grids = image_grids(args, rng, args.batch, train)
    dim = args.patch * args.patch * 3
    side = int(round(args.max_patches**0.5))
    if arm == "vit-square":
        config = BvViTConfig(**trunk, image_size=side * args.patch, posemb="learn")
        model = BvViTForImageClassification(config)
        inputs = {"pixel_values": torch.rand(args.batch, 3, side * args.patch, side * args.patch) * 2 - 1}
    else:
        model = BvNaFlexViTForImageClassification(BvNaFlexViTConfig(**trunk, nposemb=16))
        if arm == "naflex-padded":
            x = torch.zeros(args.batch, args.max_patches, dim)
            for i, (h, w) in enumerate(grids):
                x[i, : h * w] = torch.rand(h * w, dim) * 2 - 1
            inputs = {"pixel_values": x, "spatial_shapes": torch.tensor(grids)}
        else:
            drop = args.drop if arm.endswith("-drop") else 0.0
            packed = packed_batch(grids, args.sequence_length, dim, rng, drop)
            inputs = {k: torch.from_numpy(v) for k, v in packed.items()}
            inputs["packed_attention"] = "dense" if arm == "packed-dense" else "varlen"
    model = model.to(device=device, dtype=dtype).train(train)
    inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
              for k, v in inputs.items()}
    labels = torch.from_numpy(rng.integers(0, 1000, args.batch)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if train else None

    def step():
        if not train:
            with torch.no_grad():
                model(**inputs)
            return
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        base = (_status_kib("VmRSS") or 0) * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    tokens = sum(h * w for h, w in grids)
    return {"arm": arm, "phase": args.phase, "wall_s": wall / args.steps, "cpu_s": cpu / args.steps,
            "peak": peak, "working": peak - base, "tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="S/16", help="width/depth/heads of a big_vision ViT variant")
    p.add_argument("--depth", type=int, default=4,
                   help="encoder depth (default 4: every arm's cost is per layer, the ratios do not depend on it)")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--max-patches", type=int, default=256, help="per-image patch cap = NaFlex's padded length")
    p.add_argument("--sequence-length", type=int, default=None, help="packed row length (default 2x max-patches)")
    p.add_argument("--batch", type=int, default=64, help="images per step (every arm)")
    p.add_argument("--train-res", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="training step: NaViT resolution sampling, side ~ U(MIN, MAX) px (default: native)")
    p.add_argument("--drop", type=float, default=0.5, help="token dropping rate of packed-varlen-drop")
    p.add_argument("--phases", default="infer,train")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--waste-batches", type=int, default=200)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.sequence_length = args.sequence_length or 2 * args.max_patches
    if args.arm:
        print(json.dumps(run_arm(args)))
        return

    rng = np.random.default_rng(args.seed)
    infer_grids = image_grids(args, rng, args.batch, False)
    mean_tokens = np.mean([h * w for h, w in infer_grids])
    waste_infer, waste_train = padding_share(args)
    print(f"{args.variant} trunk (depth {args.depth}), patch {args.patch}, cap {args.max_patches} "
          f"patches, rows of {args.sequence_length}, {args.batch} images/step, {args.device} {args.dtype}, "
          f"{args.threads} thread(s)")
    print(f"image set: web-like sizes, native resolution; mean {mean_tokens:.0f} patches/image "
          f"({mean_tokens / args.max_patches:.0%} of the cap); training: "
          f"{'resolution sampling %d-%d px' % tuple(args.train_res) if args.train_res else 'same'}")
    print(f"packing waste (padding share, {args.waste_batches} batches): inference {waste_infer:.2%}, "
          f"training {waste_train:.2%}")
    argv = [a for a in sys.argv[1:]]
    results: dict[tuple[str, str], dict] = {}
    for phase in args.phases.split(","):
        arms = TRAIN_ARMS if phase == "train" else INFER_ARMS
        if args.arms:
            arms = [a for a in arms if a in args.arms.split(",")]
        for _ in range(args.rounds):
            for arm in arms:
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--arm", arm,
                                       "--phase", phase], capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"arm {arm} ({phase}) failed:\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                best = results.get((phase, arm))
                if best is None or r["cpu_s"] < best["cpu_s"]:
                    results[(phase, arm)] = r
    clock = "cpu_s" if args.device == "cpu" else "wall_s"
    for phase in args.phases.split(","):
        ref = results.get((phase, "naflex-padded"))
        print(f"\n{phase}: images/s ({'CPU time' if clock == 'cpu_s' else 'wall'}), wall images/s, "
              f"peak memory, working memory; x = throughput over naflex-padded")
        for (ph, arm), r in results.items():
            if ph != phase:
                continue
            ips = args.batch / r[clock]
            rel = f"{ref[clock] / r[clock]:.2f}x" if ref else "-"
            print(f"  {arm:20s} {ips:8.2f} img/s  {args.batch / r['wall_s']:8.2f} wall  "
                  f"{r['peak'] / 2**20:8.0f} MiB  {r['working'] / 2**20:8.0f} MiB  {rel}")


if __name__ == "__main__":
    main()
