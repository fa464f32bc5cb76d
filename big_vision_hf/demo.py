"""``big-vision-hf demo``: the whole conversion path on a tiny checkpoint made on the spot.

1. writes a big_vision-format ``.npz`` (the flax parameter names of ``big_vision.models.vit``, scan layout,
   ``params/`` prefix, as a big_vision trainer saves it) for a tiny ViT with a MAP head and 5 classes;
2. converts it with the same code as ``big-vision-hf convert``;
3. loads the folder with the transformers Auto classes and classifies a drawn image with the
   ``image-classification`` pipeline.

The weights are random, so the prediction is arbitrary; the point is the path, which is the one a real
checkpoint takes.
"""

from __future__ import annotations

import os
import time

import numpy as np


def make_vit_checkpoint(path: str, width: int = 64, depth: int = 2, heads: int = 4, mlp: int = 128,
                        patch: int = 8, grid: int = 4, num_classes: int = 5, seed: int = 0) -> str:
    """Writes a random big_vision ViT checkpoint (``pool_type="map"``, scan layout, ``params/`` prefix)."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    dh = width // heads

    def mha(prefix, stack=()):
        out = {}
        for name in ("query", "key", "value"):
            out[f"{prefix}/{name}/kernel"] = rand(*stack, width, heads, dh)
            out[f"{prefix}/{name}/bias"] = rand(*stack, heads, dh)
        out[f"{prefix}/out/kernel"] = rand(*stack, heads, dh, width)
        out[f"{prefix}/out/bias"] = rand(*stack, width)
        return out

    def mlp_block(prefix, stack=()):
        return {f"{prefix}/Dense_0/kernel": rand(*stack, width, mlp), f"{prefix}/Dense_0/bias": rand(*stack, mlp),
                f"{prefix}/Dense_1/kernel": rand(*stack, mlp, width), f"{prefix}/Dense_1/bias": rand(*stack, width)}

    def ln(prefix, stack=()):
        return {f"{prefix}/scale": 1 + rand(*stack, width), f"{prefix}/bias": rand(*stack, width)}

    blk, s = "Transformer/encoderblock", (depth,)
    params = {
        "embedding/kernel": rand(patch, patch, 3, width), "embedding/bias": rand(width),
        "pos_embedding": rand(1, grid * grid, width, scale=width**-0.5),
        **ln(f"{blk}/LayerNorm_0", s), **mha(f"{blk}/MultiHeadDotProductAttention_0", s),
        **ln(f"{blk}/LayerNorm_1", s), **mlp_block(f"{blk}/MlpBlock_0", s),
        **ln("Transformer/encoder_norm"),
        "MAPHead_0/probe": rand(1, 1, width), **mha("MAPHead_0/MultiHeadDotProductAttention_0"),
        **ln("MAPHead_0/LayerNorm_0"), **mlp_block("MAPHead_0/MlpBlock_0"),
        "head/kernel": rand(width, num_classes, scale=0.5), "head/bias": rand(num_classes),
    }
    np.savez(path, **{f"params/{k}": v for k, v in params.items()})
    return path


def draw_image(size: int = 96):
    """A small picture: a red disc on a blue-green gradient."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[:size, :size]
    array = np.stack([x * 0 + 30, 255 * x // size, 255 * y // size], -1).astype(np.uint8)
    image = Image.fromarray(array)
    ImageDraw.Draw(image).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(220, 40, 40))
    return image


def run_demo(out_dir: str = "outputs/demo") -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
    from transformers.utils import logging as hf_logging

    import big_vision_hf  # noqa: F401  registers the Auto classes
    from big_vision_hf.conversion.api import convert_to_folder

    hf_logging.disable_progress_bar()  # the demo prints its own steps
    os.makedirs(out_dir, exist_ok=True)
    ckpt = make_vit_checkpoint(os.path.join(out_dir, "tiny_vit_map.npz"))
    size = os.path.getsize(ckpt) / 1e6
    print(f"1. wrote a big_vision checkpoint: {ckpt} ({size:.1f} MB, scan layout, params/ prefix)")

    folder = os.path.join(out_dir, "tiny_vit_map-hf")
    t0 = time.time()
    labels = ["disc", "square", "stripes", "noise", "blank"]
    convert_to_folder(ckpt, folder, model_name="vit", model_config={"pool_type": "map"}, image_size=32,
                      progress=False, labels=labels, overwrite=True)  # the demo's own folder: rerunning replaces it
    print(f"2. converted it in {time.time() - t0:.1f}s -> {folder}/")
    for name in sorted(os.listdir(folder)):
        print(f"     {name:32s} {os.path.getsize(os.path.join(folder, name)):>9,d} bytes")

    model = AutoModelForImageClassification.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"3. loaded with AutoModelForImageClassification: {type(model).__name__}, {n_params:,} parameters, "
          f"{model.config.num_hidden_layers} layers, width {model.config.hidden_size}, pool {model.config.pool_type!r}")

    classify = pipeline("image-classification", model=model, image_processor=processor)
    image = draw_image()
    image.save(os.path.join(out_dir, "input.png"))
    print(f"4. classified {os.path.join(out_dir, 'input.png')} (random weights, so the ranking is arbitrary):")
    for row in classify(image, top_k=5):
        bar = "#" * int(round(row["score"] * 40))
        print(f"     {row['label']:>8s}  {row['score']:6.1%}  {bar}")
    print("\nA real checkpoint takes the same path: big-vision-hf convert CHECKPOINT.npz OUT_DIR "
          "(see `big-vision-hf convert --help`).")
