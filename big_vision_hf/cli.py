"""The ``big-vision-hf`` command line."""

from __future__ import annotations

import argparse
import sys

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _convert(args: argparse.Namespace) -> int:
    from .conversion.api import convert_to_folder

    size = args.image_size
    image_size = None if size is None else (size[0], size[0]) if len(size) == 1 else tuple(size)
    out = convert_to_folder(
        args.checkpoint,
        args.out_dir,
        model_name=args.model_name,
        model_config=args.model_config,
        registry_name=args.name,
        image_size=image_size,
        dtype=_DTYPES[args.dtype],
        max_shard_size=args.max_shard_size,
        remote_code=not args.no_remote_code,
        progress=not args.quiet,
        labels=_read_labels(args.labels) if args.labels else None,
    )
    if args.tokenizer:
        from .processing.processing_bv_two_towers import add_text_processor

        add_text_processor(out, args.tokenizer, preset=args.text_preset, remote_code=not args.no_remote_code)
    print(f"wrote {out}")
    return 0


def _read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _list(args: argparse.Namespace) -> int:
    from .conversion.registry import REGISTRY

    for entry in REGISTRY.values():
        if args.filter and args.filter.lower() not in entry.name.lower():
            continue
        print(f"{entry.name:32s} {entry.model_name:16s} {entry.image_size:4d}px  {entry.url}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="big-vision-hf",
        description="Google big_vision checkpoints as exact Hugging Face transformers models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "convert",
        help="convert a big_vision .npz into a Hub-ready folder",
        description=(
            "Convert a big_vision .npz checkpoint into a folder that AutoModel*.from_pretrained loads "
            "(safetensors weights, config, image processor, model card, and remote code for "
            "trust_remote_code=True). Width, depth, heads, patch size, pooling, posemb, rep_size and classes are "
            "read from the arrays; --model-name/--model-config give what they cannot tell. The conversion is "
            "strict: every array is used and every parameter filled, or it stops naming the keys."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  big-vision-hf convert vit_s16_i1k_300ep.npz out/vit-s16   # recognised from the registry\n"
            "  big-vision-hf convert ckpt.npz out/ --model-name vit \\\n"
            "      --model-config '{\"variant\": \"B/16\", \"pool_type\": \"map\"}'\n"
            "  big-vision-hf convert webli_en_b16_224_63724782.npz:img out/siglip-img   # a sub-tree\n"
            "  big-vision-hf convert flexivit_b_i1k.npz out/ --model-name proj.flexi.vit"
        ),
    )
    p.add_argument("checkpoint", help="path to the .npz, optionally with a sub-tree: file.npz:img")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--model-name", help="big_vision config.model_name: vit, proj.flexi.vit, mlp_mixer, bit_paper, bit, "
                   "proj.image_text.two_towers, proj.image_text.naflex_vit, proj.clippo.one_tower, "
                   "proj.paligemma.paligemma, proj.paligemma.vqvae (detected from the arrays when omitted)")
    p.add_argument("--model-config", help="big_vision config.model as JSON, e.g. '{\"variant\": \"B/16\", "
                   "\"pool_type\": \"map\", \"num_classes\": 1000}'")
    p.add_argument("--name", help="a registered checkpoint name (see `big-vision-hf list`) supplying model name, "
                   "config, resolution and preprocessing")
    p.add_argument("--image-size", type=int, nargs="+", metavar=("H", "W"),
                   help="input resolution; a learned posemb stored for another grid is resampled as big_vision does")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, for config.id2label (the pipeline "
                   "shows them)")
    p.add_argument("--tokenizer", metavar="SPM_FILE", help="two-tower models: the SentencePiece file the text tower "
                   "was trained with (c4_en, mc4 or Gemma); adds big_vision's text pp as the folder's tokenizer/processor")
    p.add_argument("--text-preset", choices=["siglip", "siglip2"], default="siglip",
                   help="text pp of --tokenizer: siglip (pad id 1, c4_en/mc4) or siglip2 (Gemma, lower-cased)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="weight dtype written (default float32)")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--no-remote-code", action="store_true", help="do not copy the model code / auto_map into the folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert)

    p = sub.add_parser("list", help="list the registered public big_vision checkpoints")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.set_defaults(func=_list)

    p = sub.add_parser("demo", help="build a tiny big_vision checkpoint, convert it, load it and classify an image")
    p.add_argument("--out-dir", default="outputs/demo", help="where the converted folder goes (default outputs/demo)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .conversion.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"big-vision-hf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
