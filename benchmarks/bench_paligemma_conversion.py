"""Streaming PaliGemma conversion: peak memory and time against the checkpoint's size, in one run.

Writes a random big_vision PaliGemma checkpoint with the REAL shapes (default: PaliGemma 3B at 224px, SigLIP
So400m/14 + gemma_2b, 257,152-row vocabulary, bfloat16 stored as numpy ``V2`` like ``pt_224.bf16.npz``: 5.9 GB;
``--dtype float32`` gives the 11.7 GB ``pt_224.npz`` layout), then in the same run:

1. converts it with ``big-vision-hf convert ... --model-name proj.paligemma.paligemma`` in a child process that
   reports its peak RSS (``resource.getrusage``) and its RSS right after the imports;
2. copies the file with ``shutil.copyfile`` (the floor for anything that reads and writes every byte).

Prints the peak RSS against the checkpoint size and the largest per-layer tensor (what the streamed writer holds:
stacked arrays are read one layer, fused einsums one part, at a time; the embedding in row chunks), and the
conversion time against the copy time. The checkpoint is generated tensor by tensor, so the generator
stays small too. Files go to a temporary folder, deleted at the end unless ``--keep``.

    python benchmarks/bench_paligemma_conversion.py --layers 2      # quick: 2 LLM + 2 ViT layers (~1.5 GB)
    python benchmarks/bench_paligemma_conversion.py                 # PaliGemma 3B, bf16 (needs ~18 GB of disk)
    python benchmarks/bench_paligemma_conversion.py --llm gemma2_2b --res 448   # PaliGemma 2 3B at 448px
    python benchmarks/bench_paligemma_conversion.py --layers 2 --llm gemma2_27b # PaliGemma 2 28B layer shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

CHUNK = 1 << 25  # elements generated at a time


def write_random_checkpoint(path: str, shapes: dict[str, tuple[int, ...]], dtype: str, seed: int = 0) -> None:
    """A big_vision ``.npz`` (uncompressed zip of ``.npy``, as ``np.savez``) of N(0, 0.02) arrays, written in chunks.

    bfloat16 members are stored as 2-byte void (``V2``), as big_vision's ``save_params`` writes them.
    """
    rng = np.random.default_rng(seed)
    descr = "|V2" if dtype == "bfloat16" else np.lib.format.dtype_to_descr(np.dtype("float32"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, shape in shapes.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
                rows = max(1, CHUNK // max(1, math.prod(shape[1:])))
                for start in range(0, shape[0] if shape else 1, rows):
                    n = min(rows, shape[0] - start) if shape else 1
                    x = rng.standard_normal((n, *shape[1:]), dtype=np.float32) * np.float32(0.02)
                    if dtype == "bfloat16":
                        x = (x.view(np.uint32) >> 16).astype(np.uint16)
                    f.write(x.tobytes())


def _proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (Linux), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_convert(argv: list[str]) -> None:
    """Runs in the child: the CLI conversion, then its own peak RSS and times as JSON on the last line.

    ``ru_maxrss`` is kept across ``fork``/``exec`` on Linux (it would report the parent's generator), so the peak is
    the child's ``VmHWM``, reset after the imports (``/proc/self/clear_refs``) so that it is the conversion's own
    peak; without ``/proc``, ``ru_maxrss``.
    """
    from big_vision_hf.cli import main

    rss_imports = _proc_status_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_imports = _proc_status_bytes("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    t0 = time.perf_counter()
    rc = main(["convert", *argv, "--quiet"])
    seconds = time.perf_counter() - t0
    peak = _proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rc": rc, "seconds": seconds, "peak_rss": peak, "rss_after_imports": rss_imports,
                      "peak_rss_imports": peak_imports}))


_FUSED = ("mlp/gating_einsum", "attn/kv_einsum/w", "attn/qkv_einsum/w")  # a part along axis 1 of the stack


def per_layer_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the streamed writer reads at once for ``name``: one layer of a stacked array, one part of a fused
    einsum, the whole array otherwise (the embedding is even read in chunks)."""
    if name.startswith("llm/layers/") or "/encoderblock/" in name:
        return shape[2:] if name.endswith(_FUSED) else shape[1:]
    return shape


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        return child_convert(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="gemma_2b", help="Gemma variant (gemma_2b, gemma2_2b, gemma2_9b, gemma2_27b)")
    p.add_argument("--res", type=int, default=224, help="image resolution (224, 448, 896)")
    p.add_argument("--layers", type=int, default=None, help="depth of BOTH towers (default: the real ones)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="checkpoint dtype")
    p.add_argument("--out-dtype", choices=("bfloat16", "float32"), default=None,
                   help="dtype of the converted weights (default: the checkpoint's)")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--workdir", default=None, help="where the files go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the files")
    args = p.parse_args()

    from big_vision_hf.conversion.convert_paligemma import GEMMA_VARIANTS, paligemma_param_shapes

    llm = dict(GEMMA_VARIANTS[args.llm], **({"depth": args.layers} if args.layers else {}))
    shapes = paligemma_param_shapes(llm, args.res, llm_depth=args.layers, img_depth=args.layers)
    n_params = sum(math.prod(s) for s in shapes.values())
    largest = max(shapes, key=lambda k: math.prod(shapes[k]))
    layer_shapes = {k: per_layer_shape(k, s) for k, s in shapes.items() if k != "llm/embedder/input_embedding"}
    largest_layer = max(layer_shapes, key=lambda k: math.prod(layer_shapes[k]))
    model_config = {"img": {"variant": "So400m/14", "pool_type": "none", "scan": True,
                            **({"depth": args.layers} if args.layers else {})},
                    "llm": {"variant": args.llm if not args.layers else llm, "vocab_size": shapes[
                        "llm/embedder/input_embedding"][0]}}
    out_dtype = args.out_dtype or args.dtype

    work = args.workdir or tempfile.mkdtemp(prefix="bench_paligemma_")
    os.makedirs(work, exist_ok=True)
    ckpt, out, copy = (os.path.join(work, n) for n in ("ckpt.npz", "converted", "copy.npz"))
    try:
        print(f"PaliGemma {args.llm} @ {args.res}px, {'all' if not args.layers else args.layers} layers: "
              f"{n_params / 1e9:.3f}B parameters, checkpoint {args.dtype}, converted to {out_dtype}")
        t0 = time.perf_counter()
        write_random_checkpoint(ckpt, shapes, args.dtype)
        print(f"  wrote random checkpoint: {gb(os.path.getsize(ckpt))} in {time.perf_counter() - t0:.1f} s")
        os.sync()  # both timings below start with no dirty pages to flush (the disk is shared with them)

        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "_child", ckpt, out, "--model-name",
             "proj.paligemma.paligemma", "--model-config", json.dumps(model_config), "--dtype", out_dtype,
             "--max-shard-size", args.max_shard_size],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0 or not result.stdout.strip():
            sys.exit(f"conversion failed:\n{result.stdout}\n{result.stderr}")
        conv = json.loads(result.stdout.strip().splitlines()[-1])
        if conv["rc"] != 0:
            sys.exit(f"conversion failed:\n{result.stdout}\n{result.stderr}")

        os.sync()
        t0 = time.perf_counter()
        shutil.copyfile(ckpt, copy)
        copy_seconds = time.perf_counter() - t0
        os.remove(copy)

        size, out_size = os.path.getsize(ckpt), folder_size(out)
        out_bytes = 2 if out_dtype == "bfloat16" else 4
        stacked = math.prod(shapes[largest]) * out_bytes
        layer = math.prod(layer_shapes[largest_layer]) * out_bytes
        above = conv["peak_rss"] - conv["rss_after_imports"]
        print(f"  converted folder: {gb(out_size)} ({len([f for f in os.listdir(out) if f.endswith('.safetensors')])}"
              " safetensors files)")
        print(f"  peak RSS (conversion child): {gb(conv['peak_rss'])}  "
              f"[after imports {gb(conv['rss_after_imports'])}; "
              f"above imports {gb(conv['peak_rss'] - conv['rss_after_imports'])}]")
        print(f"  peak RSS / checkpoint size: {conv['peak_rss'] / size:.2f}   "
              f"peak above imports / checkpoint size: {above / size:.3f}")
        print(f"  largest per-layer tensor {largest_layer}[i] {layer_shapes[largest_layer]}: {gb(layer)} as "
              f"{out_dtype} (peak above imports / that: {above / layer:.2f}); largest array {largest} "
              f"{shapes[largest]}: {gb(stacked)} as {out_dtype}, never held whole")
        print(f"  conversion time: {conv['seconds']:.1f} s   plain copy: {copy_seconds:.1f} s   "
              f"ratio {conv['seconds'] / copy_seconds:.1f}x   ({size / conv['seconds'] / 1e6:.0f} MB/s of checkpoint)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
