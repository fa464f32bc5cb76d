"""Tiny converted folders for the Hub-facing tests (self-contained folders, cards, push, demo app): each made from a
big_vision checkpoint through ``big-vision-hf convert``, as a user makes one."""

from __future__ import annotations

import json
import os

import numpy as np

from conftest import Golden, convert_cli

#: A tiny Gemma (big_vision ``llm.variant`` as a dict) for PaliGemma checkpoints with random parameters.
TINY_GEMMA = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}


def gemma_tokenizer_file(path: str) -> str:
    """A Gemma-like SentencePiece model (BPE, byte fallback, "\\n" user-defined, Gemma's special ids), no <loc>/<seg>:
    the converter adds them as big_vision does."""
    from big_vision_hf.transfer.synthetic import make_tokenizer

    make_tokenizer(path)
    return path


def paligemma_folder(root, seed: int = 0, image_size: int = 32, quiet: bool = True) -> str:
    """``root/paligemma``: a random tiny PaliGemma checkpoint (big_vision layout) converted with ``--tokenizer``."""
    import sentencepiece as spm

    from big_vision_hf.conversion.convert_paligemma import paligemma_param_shapes

    root = str(root)
    os.makedirs(root, exist_ok=True)
    tokenizer = gemma_tokenizer_file(os.path.join(root, "gemma_tokenizer.model"))
    vocab = len(spm.SentencePieceProcessor(model_file=tokenizer)) + 1024 + 128
    shapes = paligemma_param_shapes(TINY_GEMMA, image_size, "Ti/16", vocab_size=vocab, img_depth=1)
    rng = np.random.default_rng(seed)
    params = {k: (rng.standard_normal(s) * (0.02 if "embed" not in k else 1.0)).astype(np.float32)
              for k, s in shapes.items()}
    for k in params:
        if k.endswith("scale"):
            params[k] = np.zeros_like(params[k]) if k.startswith("llm/") else np.ones_like(params[k])
    ckpt = os.path.join(root, "pg_tiny.npz")
    np.savez(ckpt, **params)
    out = os.path.join(root, "paligemma")
    config = {"llm": {"variant": TINY_GEMMA, "vocab_size": vocab}}
    convert_cli(ckpt, out, "--model-name", "proj.paligemma.paligemma", "--model-config", json.dumps(config),
                "--tokenizer", tokenizer)
    return out


def siglip_folder(root, name: str = "siglip") -> tuple[str, str]:
    """``root/<name>``: the ``siglip`` golden fixture converted with a c4-like tokenizer (``--tokenizer``); returns
    ``(folder, tokenizer file)``."""
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = ("a photo of cat dog bird car tree house the small big red green blue white black on in with two "
             "three").split()
    words += ["".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
              for _ in range(400)]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=60,
                                   model_type="unigram", minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    os.makedirs(str(root), exist_ok=True)
    tokenizer = os.path.join(str(root), f"{name}_c4.model")
    with open(tokenizer, "wb") as f:
        f.write(buf.getvalue())
    g = Golden("siglip")
    out = os.path.join(str(root), name)
    convert_cli(g.params, out, "--model-name", "proj.image_text.two_towers", "--model-config",
                json.dumps(g.model_kwargs), "--tokenizer", tokenizer, "--text-preset", "siglip")
    return out, tokenizer


def vit_folder(root, name: str = "vit") -> str:
    """``root/<name>``: the ``vit_tok`` golden fixture converted, with class names."""
    g = Golden("vit_tok")
    out = os.path.join(str(root), name)
    n = g.outputs["logits"].shape[-1]
    labels = os.path.join(str(root), f"{name}_labels.txt")
    with open(labels, "w") as f:
        f.write("\n".join(f"class {i}" for i in range(n)) + "\n")
    convert_cli(g.params, out, "--model-name", "vit", "--model-config", json.dumps(g.model_kwargs), "--labels", labels)
    return out
