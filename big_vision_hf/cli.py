"""The ``big-vision-hf`` command line."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _number(kind: type, low: float, *, strict: bool = False):
    """An argparse ``type``: ``kind`` (int or float), finite, ``>= low`` (``> low`` with ``strict``); argparse names
    the flag in its error (``argument --max-steps: must be an integer >= 1, got 0``)."""
    what = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


_POSITIVE_INT = _number(int, 1)
_POSITIVE_FLOAT = _number(float, 0, strict=True)


def _size(text: str) -> str:
    """``--max-shard-size``: a byte count with an optional unit (``500MB``, ``5GB``), greater than 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text, re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"must be a size > 0 such as 500MB or 5GB, got {text!r}")
    return text.strip()


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
        target=args.target,
        tokenizer=args.tokenizer,
        text_preset=args.text_preset,
        overwrite=args.overwrite,
        allow_nonfinite=args.allow_nonfinite,
    )
    print(f"wrote {out}")
    _push(args, out)
    return 0


def _push(args: argparse.Namespace, folder: str) -> None:
    """``--push-to-hub REPO``: the model folder (no checkpoints, no pickles) to the Hub (`big_vision_hf.hub`)."""
    if getattr(args, "push_to_hub", None):
        from .hub import push_folder

        push_folder(folder, args.push_to_hub, private=args.hub_private or None)


def _column_map(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours or not theirs:
            raise ValueError(f"--column-map {pair!r}: expected FIELD=COLUMN, e.g. image=img_path")
        out[ours] = theirs
    return out


def _transfer(args: argparse.Namespace) -> int:
    from .transfer.run import run_transfer

    run_transfer(
        args.task, args.model, args.data, args.eval_data, args.output,
        lora=args.lora, lora_rank=args.lora_rank, adapter_only=args.adapter_only, res=args.res, lr=args.lr,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, eval_limit=args.eval_limit, eval_before=not args.no_eval_before,
        precision=args.precision, resume=args.resume, split=args.split, eval_split=args.eval_split,
        column_map=_column_map(args.column_map), skip_bad=args.skip_bad, vqvae=args.vqvae, seed=args.seed,
        progress=not args.quiet, overwrite=args.overwrite, report_to=args.report_to, fsdp=args.fsdp,
        feature_cache=args.feature_cache, attention=args.attention,
    )
    from .transfer.distributed import finish, is_main_process

    finish()  # under a launcher: leave its process group before exiting
    if is_main_process():  # the one that wrote the folder
        _push(args, args.output)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .transfer.run import run_evaluate

    run_evaluate(args.model, args.data, args.task, args.output, split=args.split,
                 column_map=_column_map(args.column_map), limit=args.limit, batch_size=args.batch_size,
                 decoding=args.decoding, num_beams=args.num_beams, skip_bad=args.skip_bad, vqvae=args.vqvae,
                 progress=not args.quiet, overwrite=args.overwrite, attention=args.attention)
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .transfer.synthetic import SYNTHETIC_TASKS
    from .transfer.tasks import TASKS

    print(f"{'task':18s} {'metric':19s} {'text_len':>8s}  {'res':12s} {'frames':6s} {'prefix':28s} source")
    for name, t in TASKS.items():
        prefix = t.prefix if isinstance(t.prefix, str) else "(built from the record)"
        res = ",".join(str(r) for r in t.resolutions)
        frames = f"{t.num_frames}/{t.frame_stride}" if t.num_frames > 1 else "1"
        print(f"{name:18s} {t.metric:19s} {t.text_len:8d}  {res:12s} {frames:6s} "
              f"{prefix.replace(chr(10), ' | '):28s} {t.source}")
    for name, t in SYNTHETIC_TASKS.items():
        print(f"{name:18s} {t.metric:19s} {t.text_len:8d}  {t.res:<12d} {'1':6s} {'':28s} "
              "built-in synthetic data (transfer/synthetic.py)")
    print("frames: num_frames/stride of the video tasks; metrics: big_vision_hf.transfer.metrics (METRICS)")
    return 0


def _read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _list(args: argparse.Namespace) -> int:
    if args.families:
        from .conversion.families import FAMILIES

        for family in FAMILIES:
            how = "detected" if family.signatures else "named"
            print(f"{family.name:28s} {how:9s} {family.summary}")
        return 0
    from .conversion.zoo import ZOO

    for entry in ZOO.values():
        if args.filter and args.filter.lower() not in entry.name.lower():
            continue
        print(f"{entry.name:32s} {entry.model_name:16s} {entry.image_size:4d}px  {entry.url}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .transfer.planner import plan_report

    if args.lora is not None and args.full:
        raise ValueError("--lora and --full exclude each other")
    print(plan_report(
        args.model, gpus=args.gpus, memory=args.gpu_memory, task=args.task, batch=args.batch,
        text_len=args.text_len, seq_len=args.seq_len, rows=args.supervised, headroom=args.headroom,
        lora_rank=None if args.full else (args.lora or 8), dtype=args.dtype,
        attention="flex" if args.attention == "flex_attention" else args.attention,
        gradient_checkpointing=args.gradient_checkpointing, feature_cache=args.feature_cache,
        **({"freeze_vit": True} if args.freeze_vit else {})))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .conversion.families import FAMILY_NAMES

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
            "  big-vision-hf convert siglip2_b16_256.npz out/siglip2 --tokenizer gemma_tokenizer.model   # two towers\n"
            "  big-vision-hf convert siglip2_b16_naflex.npz out/s2 --tokenizer gemma_tokenizer.model \\\n"
            "      --target transformers\n"
            "  big-vision-hf convert flexivit_b_i1k.npz out/ --model-name proj.flexi.vit"
        ),
    )
    p.add_argument("checkpoint", help="path to the .npz, optionally with a sub-tree: file.npz:img")
    p.add_argument("out_dir", help="output folder (created; written beside it and renamed at the end, so an "
                   "interrupted run leaves no partial folder)")
    p.add_argument("--model-name", metavar="NAME", help="big_vision config.model_name: " + ", ".join(FAMILY_NAMES)
                   + " (detected from the arrays when omitted; `big-vision-hf list --families`)")
    p.add_argument("--model-config", help="big_vision config.model as JSON, e.g. '{\"variant\": \"B/16\", "
                   "\"pool_type\": \"map\", \"num_classes\": 1000}'")
    p.add_argument("--name", help="a registered checkpoint name (see `big-vision-hf list`) supplying model name, "
                   "config, resolution and preprocessing")
    p.add_argument("--image-size", type=_POSITIVE_INT, nargs="+", metavar=("H", "W"),
                   help="input resolution; a learned posemb stored for another grid is resampled as big_vision does")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, for config.id2label (the pipeline "
                   "shows them)")
    p.add_argument("--tokenizer", metavar="SPM_FILE", help="the SentencePiece file the checkpoint was trained with "
                   "(PaliGemma: paligemma_tokenizer.model -> the folder's BvPaliGemmaProcessor; two-tower models: "
                   "c4_en, mc4 or Gemma -> big_vision's text pp as the folder's tokenizer/processor)")
    p.add_argument("--text-preset", choices=["siglip", "siglip2", "bert"],
                   help="text pp of --tokenizer: siglip (pad id 1, c4_en/mc4), siglip2 (Gemma, lower-cased) or bert "
                   "(LiT's BERT vocab.txt); default: the registered checkpoint's, else the text tower's")
    p.add_argument("--target", choices=["auto", "transformers", "bv"], default="auto",
                   help="two-tower models: auto (transformers' SiglipModel where exact, else our class), transformers "
                   "(SiglipModel, or Siglip2Model for SigLIP 2 NaFlex: not exact, its measured deviation goes into "
                   "the model card) or bv (always our exact class)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="weight dtype written (default float32)")
    p.add_argument("--max-shard-size", type=_size, default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--no-remote-code", action="store_true",
                   help="do not copy the model code / auto_map into the folder")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty (the new "
                   "folder is written beside it and renamed in at the end)")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert parameters holding NaN or infinite "
                   "values instead of refusing them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _hub_arguments(p)
    p.set_defaults(func=_convert)

    p = sub.add_parser("list",
                       help="list the registered public big_vision checkpoints (--families: the model families)")
    p.add_argument("filter", nargs="?", help="only names containing this text")
    p.add_argument("--families", action="store_true", help="list the big_vision model families (config.model_name) "
                   "that convert, whether each is detected from the arrays or must be named, and what it is")
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "transfer",
        help="fine-tune PaliGemma on a task with big_vision's recipe (LoRA or full), evaluate, write a Hub-ready "
        "folder",
        description=(
            "One PaliGemma transfer: evaluate the model, fine-tune it with big_vision's recipe for --task "
            "(prefix-LM masks, suffix-only loss averaged per example, Adam + clip 1.0 + cosine/5% warmup, weight "
            "decay on kernels only, frozen ViT where the paper freezes it), evaluate again with the paper's metric, "
            "and write a Hub-ready folder (weights, processor, model card, metrics.json, training_curves.png). "
            "Without --model and --data it runs the built-in default: a tiny PaliGemma trained from scratch on "
            "synthetic shapes (captions, counts, boxes, masks) in a few minutes on a CPU."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  big-vision-hf transfer                                   # the built-in default\n"
            "  big-vision-hf transfer --data train.jsonl --eval-data val.jsonl   # {image, prefix, suffix} records\n"
            "  big-vision-hf transfer --task vqav2 --model pg-224/ --data vqa/ --lora --output out/vqav2\n"
            "  big-vision-hf transfer --task jsonl --model pg-224/ --data ds_folder/ --column-map image=img\n"
            "  torchrun --nproc_per_node 8 -m big_vision_hf.cli transfer --model pg2/ --data d.jsonl --fsdp # sharded\n"
            "  big-vision-hf tasks                                      # the task table"
        ),
    )
    p.add_argument("--task", help="task name (`big-vision-hf tasks`); default: synthetic without --data, jsonl "
                   "(records with image/prefix/suffix) with it")
    p.add_argument("--model", help="a PaliGemma folder from `big-vision-hf convert ... --tokenizer "
                   "paligemma_tokenizer.model` (default: a tiny model built from scratch)")
    p.add_argument("--data", help="training data: .jsonl/.json/.csv with image paths, a save_to_disk folder, an "
                   "image folder, or a Hub dataset name")
    p.add_argument("--eval-data", help="evaluation data (default: --eval-split of --data, else 10%% held out)")
    p.add_argument("--split", help="split of --data to train on (DatasetDict folders / Hub datasets)")
    p.add_argument("--eval-split", help="split of --data to evaluate on")
    p.add_argument("--column-map", nargs="+", metavar="FIELD=COLUMN", help="rename your columns to the task's "
                   "fields, e.g. image=img_path suffix=answer")
    p.add_argument("--lora", nargs="?", const="llm", choices=["llm", "llm+vision"], help="LoRA instead of full "
                   "fine-tuning: llm (Gemma attention+MLP, default preset) or llm+vision (and the SigLIP tower)")
    p.add_argument("--lora-rank", type=_POSITIVE_INT, default=8, help="LoRA rank (default 8; alpha = 2 x rank)")
    p.add_argument("--adapter-only", action="store_true", help="with --lora: save the adapter, not merged weights")
    p.add_argument("--res", type=int, choices=(224, 448, 896),
                   help="use the task's hyperparameters for this resolution (default: the model's)")
    p.add_argument("--lr", type=_POSITIVE_FLOAT, help="learning rate (default: the task's)")
    p.add_argument("--epochs", type=_POSITIVE_FLOAT, help="epochs (default: the task's)")
    p.add_argument("--max-steps", type=_POSITIVE_INT, help="train this many steps instead of epochs")
    p.add_argument("--batch-size", type=_POSITIVE_INT, help="global batch size (default: the task's)")
    p.add_argument("--eval-batch-size", type=_POSITIVE_INT, default=16, help="prompts per generate call (default 16)")
    p.add_argument("--eval-limit", type=_POSITIVE_INT, help="evaluate on at most this many examples")
    p.add_argument("--no-eval-before", action="store_true", help="skip evaluating the model before training")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="training precision (default fp32)")
    _attention_argument(p)
    p.add_argument("--feature-cache", choices=["auto", "off", "memory", "disk"], default="auto",
                   help="compute the frozen image tower's projected tokens once per image and train on them: auto "
                   "(default: when the tower and projector are frozen, e.g. --lora llm, and the images are not "
                   "augmented; in memory, on disk under ~/.cache/big_vision_hf/features when large), off, memory, "
                   "disk; the choice and its reason are printed at the start")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (OUTPUT.partial) from its "
                   "newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (and any interrupted run)")
    p.add_argument("--skip-bad", action="store_true", help="drop (and count) records that do not fit the task or "
                   "whose image cannot be read "
                   "instead of stopping")
    p.add_argument("--vqvae", help="a converted vae-oid folder (segmentation tasks: masks -> <seg> tokens)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--output", default="outputs/transfer", help="result folder (default outputs/transfer; written as "
                   "OUTPUT.partial and renamed when complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report-to", nargs="+", metavar="TOOL", help="log the training (loss, learning rate, "
                   "evaluation loss) to tensorboard, wandb and/or mlflow, as transformers' Trainer does (each must be "
                   "installed); default: none (the curves still go to training_curves.png)")
    p.add_argument("--fsdp", action="store_true", help="shard parameters, gradients and optimizer state over the "
                   "launcher's processes with FSDP2 (start with `torchrun --nproc_per_node N -m big_vision_hf.cli "
                   "transfer ... --fsdp`, or `accelerate launch` with the shipped config instead: see `python -m "
                   "big_vision_hf.transfer.distributed`); sharded checkpoints, --resume, the folder written whole")
    _hub_arguments(p)
    p.set_defaults(func=_transfer)

    p = sub.add_parser("evaluate", help="evaluate a PaliGemma folder on a task's data with the paper's metric",
                       description="Generate answers for --data with the task's decoding (greedy / beam, "
                       "max_decode_len = text_len) and score them with the task's metric; writes "
                       "predictions.jsonl and metrics.json to --output.")
    p.add_argument("--model", required=True, help="a PaliGemma folder (converted, or written by `transfer`)")
    p.add_argument("--data", required=True, help="evaluation data (same forms as `transfer --data`)")
    p.add_argument("--task", default="jsonl", help="task name (default jsonl: records with image/prefix/suffix)")
    p.add_argument("--split", help="split of --data")
    p.add_argument("--column-map", nargs="+", metavar="FIELD=COLUMN", help="rename your columns to the task's fields")
    p.add_argument("--limit", type=_POSITIVE_INT, help="at most this many examples")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=16)
    _attention_argument(p)
    p.add_argument("--decoding", choices=["greedy", "beam"], help="override the task's decoding")
    p.add_argument("--num-beams", type=_POSITIVE_INT, help="beams for --decoding beam")
    p.add_argument("--skip-bad", action="store_true", help="drop (and count) records that do not fit the task or "
                   "whose image cannot be read")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--vqvae", help="a converted vae-oid folder (segmentation metrics)")
    p.add_argument("--output", default="outputs/evaluate", help="where predictions.jsonl and metrics.json go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("tasks", help="list the transfer tasks (big_vision's PaliGemma transfer configs)")
    p.set_defaults(func=_tasks)

    p = sub.add_parser(
        "plan", help="will it fit? per-GPU memory of a PaliGemma transfer step by part, and the largest batch",
        description="Per-GPU memory of one training step of `transfer` (weights, gradients, optimizer state, "
        "activations, eager attention scores, transient) at the task's recipe, on 1 GPU and with FSDP (full shard) "
        "on --gpus, and the largest per-GPU batch that fits --gpu-memory. Counted from transformers' Gemma / "
        "Gemma 2 / SigLIP code and checked against measured peaks on small models (benchmarks/bench_planner.py).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  big-vision-hf plan --model pg2-10b-448 --gpus 8 --gpu-memory 80GB --lora\n"
        "  big-vision-hf plan --model pg2-28b-896 --gpus 8 --full --attention flex --gradient-checkpointing\n"
        "  big-vision-hf plan --model out/pg-224 --gpu-memory 24GB --task vqav2 --batch 64\n"
        "named models: pg1-3b, pg2-3b, pg2-10b, pg2-28b, each -224, -448 or -896")
    p.add_argument("--model", required=True, help="a named model (pg2-10b-448, ...) or a converted PaliGemma folder")
    p.add_argument("--gpus", type=_POSITIVE_INT, default=8, help="GPUs for the FSDP column (default 8)")
    p.add_argument("--gpu-memory", default="80GB", help="memory of one GPU, e.g. 80GB, 24GiB (GB = GiB = 2^30 "
                   "bytes, as cards are sold; default 80GB)")
    p.add_argument("--lora", nargs="?", type=_POSITIVE_INT, const=8, metavar="RANK",
                   help="LoRA on the llm preset with this rank (default when neither --lora nor --full: rank 8)")
    p.add_argument("--full", action="store_true", help="full fine-tuning")
    p.add_argument("--freeze-vit", action="store_true", help="with --full: the image tower frozen (default: the "
                   "task's freeze_vit)")
    p.add_argument("--dtype", choices=["amp", "bf16", "fp32"], default="amp", help="amp (default): float32 weights "
                   "under bfloat16 autocast, what `transfer --precision bf16` runs; bf16: a model loaded in bfloat16; "
                   "fp32: transfer's default precision")
    p.add_argument("--attention", choices=["eager", "sdpa", "flex", "flex_attention"],
                   help="the language model's: eager keeps [B, heads, L, L] scores per layer, sdpa / flex "
                   "(= transfer's flex_attention) do not "
                   "(default: what transfer picks on a GPU, flex for PaliGemma 2, sdpa for PaliGemma 1)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="keep layer inputs only, recompute")
    p.add_argument("--feature-cache", action="store_true", help="frozen tower's image tokens read from the cache "
                   "(no SigLIP forward; needs LoRA or --freeze-vit)")
    p.add_argument("--task", default="docvqa", help="the recipe (global batch, text_len, frames; default docvqa)")
    p.add_argument("--batch", type=_POSITIVE_INT, help="global batch (default: the task's)")
    p.add_argument("--text-len", type=_POSITIVE_INT, help="text tokens per example (default: the task's text_len)")
    p.add_argument("--seq-len", type=_POSITIVE_INT, help="total tokens per example, image tokens included")
    p.add_argument("--supervised", type=_POSITIVE_INT, help="supervised (suffix) tokens per example, whose logits "
                   "are computed (default: all of text_len)")
    p.add_argument("--headroom", type=_number(float, 0), default=0.1, help="fraction of the GPU kept free for the "
                   "CUDA context and allocator (default 0.1)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("demo", help="build a tiny big_vision checkpoint, convert it, load it and classify an image")
    p.add_argument("--out-dir", default="outputs/demo", help="where the converted folder goes (default outputs/demo)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("app", help="an interactive demo of a folder in the browser (Gradio; pip install "
                       "'big_vision_hf[app]')",
                       description="Serves a web demo of FOLDER: PaliGemma (image + prompt -> text, boxes and masks "
                       "drawn), SigLIP / two towers (image + labels -> sigmoid scores), classifiers (image -> top 5).")
    p.add_argument("folder", help="a converted or fine-tuned folder")
    p.add_argument("--vqvae", help="a converted vae-oid folder: PaliGemma <seg> tokens drawn as masks")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also make a public Gradio share link")
    p.set_defaults(func=_app)
    return parser


def _attention_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", choices=["auto", "eager", "flex_attention", "sdpa"], default="auto",
                   help="the language model's attention with --model: auto (default: PaliGemma 2 on flex_attention "
                   "where it compiles -- soft-cap as score_mod, one prefix-LM block mask, no [L, L] scores -- else "
                   "eager, the reason printed; PaliGemma 1 on sdpa), eager, flex_attention, sdpa (PaliGemma 1 only)")


def _hub_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to this Hub model repository "
                   "(created if missing; only the model folder: no checkpoints/, no pickles; log in first with "
                   "`huggingface-cli login` or HF_TOKEN)")
    p.add_argument("--hub-private", action="store_true", help="with --push-to-hub: create the repository private")


def _app(args: argparse.Namespace) -> int:
    from .app import launch

    launch(args.folder, vqvae=args.vqvae, host=args.host, port=args.port, share=args.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .conversion.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `big-vision-hf list | head`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit: send that to /dev/null
        return 0
    except (CheckpointError, ValueError, FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) adds quotes
        print(f"big-vision-hf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
