"""The built-in default of ``big-vision-hf transfer``: a synthetic shapes dataset, its tokenizer and a tiny
PaliGemma, all made on the spot, so that the whole transfer loop (evaluate, train, evaluate, export) runs in a
few minutes on a laptop CPU and visibly learns.

- data (:func:`make_dataset`): ``res x res`` images with 1-3 coloured circles/squares on a grey background,
  with four tasks in big_vision's ``{image, prefix, suffix}`` format:

  - ``synthetic_caption``: ``"caption en"`` -> ``"a red circle and a blue square"`` (objects left to right);
  - ``synthetic_count``: ``"answer en how many circles?"`` -> ``"2"``;
  - ``synthetic_detect``: ``"detect red circle"`` -> ``"<locY1><locX1><locY2><locX2> red circle"`` (the object
    is unique in its image; ``bbox`` = its normalised ``y1, x1, y2, x2``, ``mask`` its pixels), scored by
    big_vision's ``boxacc`` (``metrics.detection``);
  - ``synthetic_segment``: ``"segment red circle"`` -> ``"<loc>x4<seg>x16 red circle"`` (big_vision
    ``refcoco_mask2str`` through :func:`make_vqvae`, a tiny mask VQ-VAE trained here on the shapes' masks),
    scored by ``metrics.segmentation`` (mIoU, boxacc);
  - ``synthetic`` = the four, mixed.

- tokenizer (:func:`make_tokenizer`): a SentencePiece BPE model trained on the task texts, laid out as Gemma's
  (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``"\\n"`` a piece) with the 1024 ``<loc>`` + 128 ``<seg>``
  pieces of ``paligemma_tokenizer.model``, loaded by :class:`BvPaliGemmaTokenizer` (``<image>`` right after).
- model (:func:`make_model`): ``PaliGemmaForConditionalGeneration`` from scratch: SigLIP 2 layers (width 128,
  patch 16: 16 image tokens at 64 px), Gemma 2 layers (width 128, MQA), 0.86M parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from ..processing.paligemma_decoding import box_to_loc_tokens, mask_crop_64, mask_to_tokens
from ..processing.tokenization_paligemma import BvPaliGemmaTokenizer
from .recipe import Hparams, Recipe

__all__ = [
    "COLORS",
    "SHAPES",
    "SYNTHETIC_TASKS",
    "TINY_HPARAMS",
    "SyntheticTask",
    "make_dataset",
    "make_model",
    "make_processor",
    "make_scene",
    "make_tokenizer",
]

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square")
NUMBERS = {1: "1", 2: "2", 3: "3", 0: "0"}


# The tiny from-scratch model's hyperparameters (not big_vision's: those fine-tune a 3B pretrained model). The rest
# of its recipe is big_vision's (Adam b2 0.999, cosine with 5% warmup, grad clip 1, text_len = decode length).
TINY_HPARAMS = Hparams(
    lr=1e-3,  # 3e-3 fits the language prior within 50 steps and then never grounds on the image
    wd=0.0, total_epochs=24, batch_size=32)


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """A synthetic task: which row kinds it mixes, its metric and text length, and the tiny model's
    :data:`TINY_HPARAMS`; :meth:`recipe` resolves them for a run, as ``TransferTask.recipe`` does."""

    name: str
    kinds: tuple[str, ...]
    metric: str
    metric_kwargs: dict = dataclasses.field(default_factory=dict)
    text_len: int = 24
    res: int = 64
    hparams: Hparams = TINY_HPARAMS
    decoding: str = "greedy"

    def recipe(self, res: int | None = None, **overrides) -> Recipe:
        """The hyperparameters of a run (``overrides``: :class:`~big_vision_hf.transfer.recipe.Recipe` fields,
        ``None`` keeps the task's)."""
        return Recipe.from_hparams(self.hparams, name=self.name, res=res or self.res, text_len=self.text_len,
                                   metric=self.metric, metric_kwargs=self.metric_kwargs,
                                   decoding=self.decoding).replace(**overrides)


SYNTHETIC_TASKS = {
    "synthetic_caption": SyntheticTask("synthetic_caption", ("caption",), "cider"),
    "synthetic_count": SyntheticTask("synthetic_count", ("count",), "exact_match"),
    "synthetic_detect": SyntheticTask("synthetic_detect", ("detect",), "detection"),
    "synthetic_segment": SyntheticTask("synthetic_segment", ("segment",), "segmentation", text_len=32),
}
SYNTHETIC_TASKS["synthetic"] = SyntheticTask("synthetic", ("caption", "count", "detect", "segment"), "exact_match",
                                             text_len=32)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def make_scene(rng: np.random.Generator, res: int = 64, max_objects: int = 3):
    """One image with 1..``max_objects`` non-overlapping shapes, each ``(shape, colour)`` at most once.

    Returns ``(PIL image, objects)``; an object is ``{"shape", "color", "bbox": [y1, x1, y2, x2] in [0, 1],
    "mask": bool [res, res]}``.
    """
    n = int(rng.integers(1, max_objects + 1))
    image = Image.new("RGB", (res, res), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    combos = [(s, c) for s in SHAPES for c in COLORS]
    picks = rng.choice(len(combos), size=n, replace=False)
    objects, occupied = [], np.zeros((res, res), bool)
    for k in picks:
        shape, color = combos[int(k)]
        for _ in range(50):
            size = int(rng.integers(res // 5, res // 3 + 1))
            y, x = (int(v) for v in rng.integers(0, res - size + 1, size=2))
            if not occupied[max(0, y - 1):y + size + 1, max(0, x - 1):x + size + 1].any():
                break
        else:
            continue
        box = (x, y, x + size - 1, y + size - 1)
        layer = Image.new("L", (res, res), 0)
        (ImageDraw.Draw(layer).ellipse if shape == "circle" else ImageDraw.Draw(layer).rectangle)(box, fill=255)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
        mask = np.asarray(layer) > 0
        occupied[y:y + size, x:x + size] = True
        ys, xs = np.nonzero(mask)
        bbox = [ys.min() / res, xs.min() / res, (ys.max() + 1) / res, (xs.max() + 1) / res]
        objects.append({"shape": shape, "color": color, "bbox": [float(v) for v in bbox], "mask": mask})
    return image, objects


def _caption(objects) -> str:
    ordered = sorted(objects, key=lambda o: o["bbox"][1])
    return " and ".join(f"a {o['color']} {o['shape']}" for o in ordered)


def _loc(bbox) -> str:
    return box_to_loc_tokens(bbox)


def _rows_for(kind: str, image, objects, rng, vqvae=None) -> dict:
    if kind == "caption":
        return {"image": image, "prefix": "caption en", "suffix": _caption(objects), "task": kind}
    if kind == "count":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        n = sum(o["shape"] == shape for o in objects)
        return {"image": image, "prefix": f"answer en how many {shape}s?", "suffix": NUMBERS[n], "task": kind}
    if kind == "detect":
        obj = objects[int(rng.integers(len(objects)))]
        name = f"{obj['color']} {obj['shape']}"
        return {"image": image, "prefix": f"detect {name}", "suffix": f"{_loc(obj['bbox'])} {name}", "task": kind,
                "bbox": obj["bbox"], "mask": obj["mask"]}
    if kind == "segment":  # big_vision refcoco_seg's target: <loc>x4 <seg>x16, here followed by the name
        obj = objects[int(rng.integers(len(objects)))]
        name = f"{obj['color']} {obj['shape']}"
        tokens = mask_to_tokens(obj["mask"], vqvae if vqvae is not None else make_vqvae(), obj["bbox"])
        return {"image": image, "prefix": f"segment {name}", "suffix": f"{tokens} {name}", "task": kind,
                "bbox": obj["bbox"], "mask": obj["mask"]}
    raise ValueError(f"unknown synthetic task kind {kind!r}; known: caption, count, detect, segment")


def make_dataset(task: str | SyntheticTask = "synthetic", split: str = "train", num_examples: int | None = None,
                 res: int | None = None, seed: int | None = None, vqvae=None) -> list[dict]:
    """Rows ``{"image", "prefix", "suffix", "task", ["bbox", "mask"]}`` for a synthetic task.

    ``segment`` rows encode their mask with ``vqvae`` (default: :func:`make_vqvae`'s, trained once per process).

    ``split`` picks the seed (train 0, validation 1, test 2) unless ``seed`` is given; the default sizes are
    2,048 training and 96 evaluation rows (per task kind, cycled for the mix).
    """
    task = SYNTHETIC_TASKS[task] if isinstance(task, str) else task
    seeds = {"train": 0, "validation": 1, "test": 2}
    if seed is None:
        if split not in seeds:
            raise ValueError(f"split must be one of {sorted(seeds)}, got {split!r}")
        seed = seeds[split]
    if num_examples is None:
        num_examples = 2048 if split == "train" else 96
    rng = np.random.default_rng(seed)
    res = res or task.res
    rows = []
    for i in range(num_examples):
        image, objects = make_scene(rng, res)
        rows.append(_rows_for(task.kinds[i % len(task.kinds)], image, objects, rng, vqvae))
    return rows


@functools.lru_cache(maxsize=1)
def make_vqvae(steps: int = 300, seed: int = 0):
    """A tiny PaliGemma mask VQ-VAE (``BvSegVQVAEModel``: 16 codes of a 128-entry codebook <-> a 64x64 mask),
    trained here in seconds on the synthetic shapes' masks, cropped to their boxes as ``mask_to_tokens`` feeds the
    encoder, so that the default's ``<seg>`` targets decode back to real masks. For real data use big_vision's
    ``vae-oid.npz`` (``big-vision-hf convert vae-oid.npz vqvae/``) instead; this one only knows discs and squares.

    Training: the usual VQ-VAE objective (van den Oord et al.): decoder output against the mask in [-1, 1] (the
    range big_vision's decoder produces, thresholded at 0), codebook loss and 0.25 x commitment loss, straight-
    through gradients to the encoder. Cached per process (same arguments -> same model).
    """
    import torch
    import torch.nn.functional as F

    from ..configuration.configuration_bv_vqvae import BvSegVQVAEConfig
    from ..modeling.modeling_bv_vqvae import BvSegVQVAEModel

    rng = np.random.default_rng(seed + 1000)
    crops = []
    while len(crops) < 256:
        _, objects = make_scene(rng, 64)
        crops += [mask_crop_64(o["mask"], o["bbox"]) for o in objects]
    data = torch.from_numpy(np.stack(crops))
    torch.manual_seed(seed)
    model = BvSegVQVAEModel(BvSegVQVAEConfig(embedding_dim=16, hidden_size=32, num_res_blocks=1,
                                             encoder_hidden_sizes=[8, 16, 32, 32]))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    grid = model.config.codes_grid
    for step in range(steps):
        x = data[torch.randint(len(data), (32,))]
        z = model.encode_latents(x)
        e = model.quantizer.codes_to_vectors(model.quantizer.nearest(z), grid)
        decoded = model.decoder((z + (e - z).detach()).permute(0, 3, 1, 2))[:, 0]
        loss = F.mse_loss(decoded, 2 * x - 1) + F.mse_loss(e, z.detach()) + 0.25 * F.mse_loss(z, e.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def _corpus() -> list[str]:
    texts = ["caption en", "answer en how many circles?", "answer en how many squares?"]
    texts += [f"{verb} {c} {s}" for verb in ("detect", "segment") for c in COLORS for s in SHAPES]
    texts += [f"a {c} {s} and a {c2} {s2}" for c in COLORS for s in SHAPES for c2 in COLORS for s2 in SHAPES]
    texts += list(NUMBERS.values())
    return texts * 4


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------------------


def make_tokenizer(path: str | os.PathLike | None = None, extra_texts: list[str] | None = None
                   ) -> BvPaliGemmaTokenizer:
    """A SentencePiece tokenizer trained on the synthetic texts (plus ``extra_texts``), Gemma's special ids,
    the ``<loc>``/``<seg>`` pieces at the end, ``<image>`` after them. ``path``: where ``tokenizer.model`` goes
    (a temporary file otherwise)."""
    import tempfile

    import sentencepiece as spm

    buf = io.BytesIO()
    corpus = _corpus() + list(extra_texts or [])
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=256 + 64 + 6, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>", eos_piece="<eos>",
        user_defined_symbols=["\n"], byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, hard_vocab_limit=False,
        minloglevel=2)
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="bvhf_sp_"), "tokenizer.model")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return BvPaliGemmaTokenizer(str(path))  # appends <loc>/<seg> as big_vision's _add_pieces


def make_model(tokenizer: BvPaliGemmaTokenizer, res: int = 64, patch: int = 16, vision_width: int = 128,
               vision_layers: int = 2, text_width: int = 128, text_layers: int = 2, seed: int = 0):
    """A tiny random ``PaliGemmaForConditionalGeneration`` for ``tokenizer`` (vocabulary padded to 64 rows as
    transformers' conversion does, ``<image>`` = ``tokenizer.image_token_id``)."""
    import torch
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    image_id = tokenizer.image_token_id
    vocab = -(-(image_id + 1) // 64) * 64
    vision = SiglipVisionConfig(hidden_size=vision_width, intermediate_size=2 * vision_width,
                                num_hidden_layers=vision_layers, num_attention_heads=4, image_size=res,
                                patch_size=patch, vision_use_head=False)
    text = GemmaConfig(hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=text_layers,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=text_width // 4, vocab_size=vocab,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, max_position_embeddings=512)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_id,
                             projection_dim=text_width, hidden_size=text_width, vocab_size=vocab)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def make_processor(tokenizer: BvPaliGemmaTokenizer, res: int = 64, patch: int = 16, text_len: int | None = 24):
    """A ``BvPaliGemmaProcessor`` for the tiny model (``res`` px, ``(res / patch)^2`` image tokens)."""
    from ..processing.image_processing_bv import BvImageProcessor
    from ..processing.processing_paligemma import BvPaliGemmaProcessor

    return BvPaliGemmaProcessor(BvImageProcessor(size={"height": res, "width": res}), tokenizer,
                                image_seq_length=(res // patch) ** 2, text_len=text_len)

