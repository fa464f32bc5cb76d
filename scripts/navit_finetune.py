"""Fine-tune a converted ViT-family folder on packed images (NaViT, "Patch n' Pack") with ``Trainer``.

Two tasks:

- ``classify``: an image classifier (``BvViTForImageClassification``, ``BvNaFlexViTForImageClassification``) on
  ``image``/``label`` examples; one logit row and one label per packed image.
- ``siglip``: a two-tower model (``BvSiglipModel``, e.g. SigLIP 2 NaFlex) on ``image``/``text`` pairs with its
  sigmoid loss over the per-image embeddings (texts unchanged); strings are tokenised with the folder's tokenizer,
  lists of token ids are used as they are.

Every batch goes through `BvNaViTCollator`: big_vision's NaFlex pp per image at its own patch budget (native
resolution, or NaViT's resolution sampling with ``--sample-res MIN MAX``), optional token dropping
(``--token-drop RATE`` or the resolution-dependent ``--token-drop-range MIN MAX``), packed into rows of
``--sequence-length`` tokens. Data: ``--data`` is a ``datasets`` folder (``save_to_disk``) or a name for
``load_dataset``; ``--synthetic N`` makes N colour-coded images of random sizes instead (labels / token-id texts
that can be learnt). Several processes: ``accelerate launch scripts/navit_finetune.py ...`` (each process packs
its own examples).

    python scripts/navit_finetune.py out/siglip2-b16-naflex runs/navit --task siglip --synthetic 256 --max-steps 20
    python scripts/navit_finetune.py out/vit-s16 runs/cls --task classify --data my_dataset --sample-res 64 256 \\
        --token-drop 0.5 --sequence-length 1024 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch


def synthetic_dataset(n: int, num_classes: int = 4, text_length: int = 8, vocab_size: int = 32, seed: int = 0,
                      min_side: int = 24, max_side: int = 96):
    """``n`` random-size uint8 images whose mean colour is their class, with ``label`` and a ``text`` of token ids
    (``[class + 2] * text_length``): a task a few steps of either fine-tuning can make progress on."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (num_classes, 3))
    rows = {"image": [], "label": [], "text": []}
    for _ in range(n):
        c = int(rng.integers(num_classes))
        h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        noise = rng.integers(-40, 41, (h, w, 3))
        rows["image"].append(Image.fromarray(np.clip(colours[c] + noise, 0, 255).astype(np.uint8)))
        rows["label"].append(c)
        rows["text"].append([min(c + 2, vocab_size - 1)] * text_length)
    return datasets.Dataset.from_dict(rows)  # images stored as PNG (datasets.Image), decoded to PIL on access


def load_data(args):
    import datasets

    if args.synthetic:
        return synthetic_dataset(args.synthetic, seed=args.seed)
    try:
        data = datasets.load_from_disk(args.data)
    except FileNotFoundError:
        data = datasets.load_dataset(args.data)
    return data[args.split] if isinstance(data, datasets.DatasetDict) else data


def build_collator(folder: str, args, tokenizer=None):
    from transformers import AutoImageProcessor

    from big_vision_hf.processing.image_processing_bv_navit import BvNaViTImageProcessor
    from big_vision_hf.processing.navit_collator import BvNaViTCollator
    from big_vision_hf.processing.sequence_packing import ResolutionSampler, TokenDropping

    saved = {}
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        saved = AutoImageProcessor.from_pretrained(folder).to_dict()
    settings = {k: saved[k] for k in ("patch_size", "max_num_patches", "value_range") if k in saved}
    if args.patch_size:
        settings["patch_size"] = args.patch_size
    if args.max_patches:
        settings["max_num_patches"] = args.max_patches
    processor = BvNaViTImageProcessor(**settings)
    resolution = ResolutionSampler(*args.sample_res) if args.sample_res else args.resolution
    dropping = None
    if args.token_drop_range:
        dropping = TokenDropping.resolution_dependent(*args.token_drop_range)
    elif args.token_drop:
        dropping = TokenDropping.fixed(args.token_drop)
    return BvNaViTCollator(processor, sequence_length=args.sequence_length, resolution=resolution,
                           token_dropping=dropping, tokenizer=tokenizer, seed=args.seed,
                           text_column="text" if args.task == "siglip" else None,
                           label_column="label" if args.task == "classify" else None)


def build_model(folder: str, task: str, num_labels: int | None = None):
    from transformers import AutoModel, AutoModelForImageClassification

    import big_vision_hf  # noqa: F401  registers the Auto classes

    if task == "classify":
        kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
        return AutoModelForImageClassification.from_pretrained(folder, **kwargs)
    return AutoModel.from_pretrained(folder)


def finetune(folder: str, output_dir: str, args, model=None, data=None):
    """Builds (or takes) model and data, trains with ``Trainer``; returns ``(trainer, train_output)``."""
    from transformers import Trainer, TrainingArguments

    data = load_data(args) if data is None else data
    tokenizer = None
    if args.task == "siglip" and isinstance(data[0]["text"], str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    num_labels = len(set(data["label"])) if args.task == "classify" and args.num_labels is None else args.num_labels
    model = build_model(folder, args.task, num_labels) if model is None else model
    training_args = TrainingArguments(
        output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        max_steps=args.max_steps, learning_rate=args.lr, warmup_steps=0, weight_decay=0.0, logging_steps=1,
        report_to=[], save_strategy="no", remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=args.workers, seed=args.seed, bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=data,
                      data_collator=build_collator(folder, args, tokenizer))
    return trainer, trainer.train()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a converted folder (big-vision-hf convert ...)")
    p.add_argument("output", help="Trainer output directory")
    p.add_argument("--task", choices=("classify", "siglip"), default="classify")
    p.add_argument("--data", help="datasets folder (save_to_disk) or load_dataset name with image/label|text columns")
    p.add_argument("--split", default="train")
    p.add_argument("--synthetic", type=int, default=0, help="use N synthetic examples instead of --data")
    p.add_argument("--num-labels", type=int, default=None, help="classify: a new head with this many classes")
    p.add_argument("--patch-size", type=int, default=None, help="default: the folder's image processor's")
    p.add_argument("--max-patches", type=int, default=None, help="per-image patch budget cap (default: folder's)")
    p.add_argument("--sequence-length", type=int, default=None, help="tokens per packed row (default 2x max)")
    p.add_argument("--resolution", choices=("native", "max"), default="native")
    p.add_argument("--sample-res", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="NaViT resolution sampling: side ~ U(MIN, MAX) pixels")
    p.add_argument("--token-drop", type=float, default=0.0, help="fixed token dropping rate")
    p.add_argument("--token-drop-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="resolution-dependent token dropping: MIN rate at 64 px, MAX at 256 px sides")
    p.add_argument("--batch-size", type=int, default=32, help="images per step and process")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.data and not args.synthetic:
        raise SystemExit("give --data or --synthetic N")
    trainer, result = finetune(args.model, args.output, args)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if trainer.is_world_process_zero():
        print(json.dumps({"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                          "train_loss": result.training_loss, "padding_fraction": trainer.data_collator.padding
                          / max(trainer.data_collator.tokens, 1)}))
        trainer.save_model(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
