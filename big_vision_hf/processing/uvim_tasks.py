"""UViM's three public tasks with both stages: image -> panoptic map, image -> depth map, grayscale -> colour.

What big_vision's ``trainers/proj/uvim/{panoptic,depth,colorization}_task.py`` and ``train.py`` do around the two
models, in PyTorch:

- label maps -> the stage I VQ-VAE's per-patch inputs (``input_pp``): `panoptic_inputs` (one-hot semantics and
  instance ids), `depth_inputs` (depth discretised into bins, one-hot), `color_inputs` (RGB values);
- stage I logits -> outputs (``predict_outputs``): `panoptic_from_logits` (each instance takes the class with the
  largest summed semantic logits over its pixels; small instances optionally dropped), `depth_from_logits` (bin
  centre in metres), `color_from_logits` (clipped to [-1, 1]);
- stage II targets: `stage2_labels` = stage I codes + 1 (``train.py encode_labels``); stage II tokens -> codes:
  `tokens_to_codes` (``decode_labels``: ``token - 1``);
- `UViMPipeline` (and its per-task subclasses): images -> stage II ``generate`` (greedy, big_vision's
  ``temperature=1e-7``, unless sampling is asked for) -> stage I ``decode(codes, ctx=image)`` -> the task's output,
  optionally resized back to each image's size with ``jax.image.resize(..., "nearest")`` as the evaluators do.

Every function works on batches of torch tensors or numpy arrays, channels last as in big_vision.

Example (tiny random models; real ones come from ``big-vision-hf convert <task>_stageI_params.npz`` and
``<task>_stageII_params.npz``):
    >>> import numpy as np
    >>> from big_vision_hf import (BvUViMVQVAEConfig, BvUViMVQVAEModel, BvUViMVTTConfig,
    ...                            BvUViMVTTForConditionalGeneration)
    >>> from big_vision_hf.processing.uvim_tasks import UViMPipeline
    >>> stage1 = BvUViMVQVAEModel(BvUViMVQVAEConfig(
    ...     inputs={"semantics": [5, 64], "instances": [3, 64]}, image_size=32, patch_size=8, code_len=4,
    ...     hidden_size=32, encoder_layers=1, decoder_layers=1, num_attention_heads=2, codebook_size=16,
    ...     with_encoder_ctx=True, with_decoder_ctx=True, bottleneck_resize=True)).eval()
    >>> stage2 = BvUViMVTTForConditionalGeneration(BvUViMVTTConfig(
    ...     vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    ...                    "intermediate_size": 64, "patch_size": 8, "image_size": 32, "pool_type": "none"},
    ...     vocab_size=17, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...     max_position_embeddings=4)).eval()
    >>> pipe = UViMPipeline.for_models(stage1, stage2)  # a UViMPanopticPipeline: the targets say "panoptic"
    >>> out = pipe([np.zeros((40, 50, 3), np.uint8)])
    >>> out[0]["panoptic"].shape, out[0]["panoptic"].dtype  # (semantics, instance id) at the image's size
    ((40, 50, 2), dtype('int64'))
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..configuration.configuration_bv_uvim import BvUViMVQVAEConfig
from ..modeling.modeling_bv_uvim import BvUViMVQVAEModel, BvUViMVTTForConditionalGeneration
from .image_processing_bv import BvImageProcessor, decode, resize, value_range

#: big_vision ``configs/proj/uvim/*nyu_depth*.py``: ``MIN_DEPTH``, ``MAX_DEPTH`` (metres) of the depth bins.
NYU_MIN_DEPTH, NYU_MAX_DEPTH = 1e-3, 10.0

# ---------------------------------------------------------------------------------------------------------
# Label maps <-> the VQ-VAE's per-patch layout (einops "b (hn hp) (wn wp) ... -> b (hn wn) ... (hp wp)")
# ---------------------------------------------------------------------------------------------------------


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def to_patches(x: torch.Tensor, patch_size) -> torch.Tensor:
    """``[B, H, W, *C]`` -> ``[B, num_patches, *C, ph*pw]``: each patch's pixels row-major on the last axis, patches
    row-major (einops ``"b (hn hp) (wn wp) ... -> b (hn wn) ... (hp wp)"``)."""
    b, h, w, *c = x.shape
    ph, pw = patch_size
    x = x.reshape(b, h // ph, ph, w // pw, pw, *c)
    x = x.permute(0, 1, 3, *range(5, 5 + len(c)), 2, 4)
    return x.reshape(b, (h // ph) * (w // pw), *c, ph * pw)


def from_patches(x: torch.Tensor, grid, patch_size) -> torch.Tensor:
    """Inverse of `to_patches`: ``[B, num_patches, *C, ph*pw]`` -> ``[B, H, W, *C]`` (einops
    ``"b (hn wn) c (hp wp) -> b (hn hp) (wn wp) c"``, as every task's ``predict_outputs``)."""
    b, _, *c, _ = x.shape
    (hn, wn), (ph, pw) = grid, patch_size
    x = x.reshape(b, hn, wn, *c, ph, pw)
    n = len(c)
    x = x.permute(0, 1, 3 + n, 2, 4 + n, *range(3, 3 + n))
    return x.reshape(b, hn * ph, wn * pw, *c)


def one_hot_patches(labels: torch.Tensor, num_classes: int, patch_size) -> torch.Tensor:
    """``[B, H, W]`` integer labels -> ``[B, num_patches, num_classes, ph*pw]`` float, as
    ``jax.nn.one_hot(..., axis=-2)`` on the patches: a label outside ``[0, num_classes)`` is all zeros."""
    patches = to_patches(labels.long()[..., None], patch_size)[:, :, 0]  # (B, N, P)
    classes = torch.arange(num_classes, device=labels.device)
    return (patches[:, :, None, :] == classes[None, None, :, None]).float()


def _check_map(x: torch.Tensor, config: BvUViMVQVAEConfig, what: str) -> None:
    if tuple(x.shape[1:3]) != tuple(config.image_size):
        raise ValueError(f"{what} must be {tuple(config.image_size)} maps (the VQ-VAE's input_size), "
                         f"got {tuple(x.shape[1:3])}")


def panoptic_inputs(labels, config: BvUViMVQVAEConfig) -> dict[str, torch.Tensor]:
    """``[B, H, W, 2]`` (semantic class, instance id) -> the VQ-VAE's inputs, as ``panoptic_task.input_pp``.

    Classes follow big_vision's COCO panoptic pp: 0 is void, ``1 + i`` the i-th category of
    ``panoptic_coco_categories.json``; instance ids are ``< config.inputs["instances"][0]`` (100).
    """
    labels = _as_tensor(labels)
    _check_map(labels, config, "labels")
    return {key: one_hot_patches(labels[..., i], config.inputs[key][-2], config.patch_size)
            for i, key in enumerate(("semantics", "instances"))}


def _reciprocal(x: float) -> np.float32:
    """XLA compiles ``x / c`` for a constant ``c`` as ``x * (1 / c)`` (float32); so do we, to match to the bit."""
    return np.float32(1) / np.float32(x)


def depth_bins(depth, num_bins: int, min_depth: float = NYU_MIN_DEPTH, max_depth: float = NYU_MAX_DEPTH):
    """Depth in metres -> bin index in ``[0, num_bins)``, as ``depth_task.input_pp`` (float32, same order of
    operations: ``floor((d - min) / (max - min) * bins)``, clipped)."""
    d = _as_tensor(depth).detach().cpu().numpy().astype(np.float32)
    d = (d - np.float32(min_depth)) * _reciprocal(max_depth - min_depth)
    d = np.floor(d * np.float32(num_bins)).astype(np.int64)
    return torch.from_numpy(np.clip(d, 0, num_bins - 1))


def depth_inputs(depth, config: BvUViMVQVAEConfig, min_depth: float = NYU_MIN_DEPTH,
                 max_depth: float = NYU_MAX_DEPTH) -> dict[str, torch.Tensor]:
    """``[B, H, W]`` (or ``[B, H, W, 1]``) depth in metres -> the VQ-VAE's ``{"depth": one-hot bins}``, as
    ``depth_task.input_pp``."""
    depth = _as_tensor(depth)
    depth = depth[..., 0] if depth.ndim == 4 else depth
    _check_map(depth, config, "depth")
    bins = config.inputs["depth"][-2]
    return {"depth": one_hot_patches(depth_bins(depth, bins, min_depth, max_depth), bins, config.patch_size)}


def color_inputs(images, config: BvUViMVQVAEConfig) -> dict[str, torch.Tensor]:
    """``[B, H, W, 3]`` RGB in [-1, 1] -> the VQ-VAE's ``{"color": [B, N, 3, ph*pw]}``, as
    ``colorization_task.input_pp``."""
    images = _as_tensor(images).float()
    _check_map(images, config, "images")
    return {"color": to_patches(images, config.patch_size)}


def task_inputs(targets, config: BvUViMVQVAEConfig, **kwargs) -> dict[str, torch.Tensor]:
    """The VQ-VAE inputs of ``config.task``'s label maps (`panoptic_inputs`, `depth_inputs`, `color_inputs`)."""
    makers = {"panoptic": panoptic_inputs, "depth": depth_inputs, "colorization": color_inputs}
    if config.task not in makers:
        raise ValueError(f"no big_vision task has the targets {sorted(config.outputs)}")
    return makers[config.task](targets, config, **kwargs)


def panoptic_from_logits(logits: dict[str, torch.Tensor], config: BvUViMVQVAEConfig,
                         min_fraction: float = 0.0) -> torch.Tensor:
    """Stage I logits -> ``[B, H, W, 2]`` (semantic class, instance id) int64, as ``panoptic_task.predict_outputs``
    / ``panoptic_predictions_from_logits``: per pixel the argmax instance; each instance takes the class whose
    logits summed over its pixels are largest; instances covering at most ``min_fraction`` of the image are set to
    (0, 0). Classes as in `panoptic_inputs`."""
    semantics = from_patches(logits["semantics"], config.grid_size, config.patch_size).float()
    instances = from_patches(logits["instances"], config.grid_size, config.patch_size)
    ins = instances.argmax(dim=-1)  # (B, H, W)
    masks = F.one_hot(ins, instances.shape[-1])  # (B, H, W, n)
    label = torch.einsum("bhwk,bhwn->bnk", semantics, masks.float()).argmax(dim=-1)  # (B, n)
    sem = label.gather(1, ins.flatten(1)).view_as(ins)  # = einsum("bhwn,bn->bhw", masks, label): masks are one-hot
    out = torch.stack([sem, ins], dim=-1)
    fraction = masks.sum(dim=(1, 2), keepdim=True) / (ins.shape[1] * ins.shape[2])
    big = (masks * (fraction > min_fraction)).sum(dim=-1, keepdim=True) > 0
    return out * big


def depth_from_logits(logits: dict[str, torch.Tensor], config: BvUViMVQVAEConfig, min_depth: float = NYU_MIN_DEPTH,
                      max_depth: float = NYU_MAX_DEPTH) -> torch.Tensor:
    """Stage I logits -> ``[B, H, W]`` depth in metres, as ``depth_task.predict_outputs``: the argmax bin's
    centre, ``(bin + 0.5) / bins * (max - min) + min``."""
    bins = from_patches(logits["depth"], config.grid_size, config.patch_size).argmax(dim=-1)
    depth = (bins.cpu().numpy().astype(np.float32) + np.float32(0.5)) * _reciprocal(config.outputs["depth"][-2])
    return torch.from_numpy(depth * np.float32(max_depth - min_depth) + np.float32(min_depth))


def color_from_logits(logits: dict[str, torch.Tensor], config: BvUViMVQVAEConfig) -> torch.Tensor:
    """Stage I logits -> ``[B, H, W, 3]`` RGB in [-1, 1], as ``colorization_task.predict_outputs``."""
    return from_patches(logits["color"], config.grid_size, config.patch_size).clamp(-1.0, 1.0)


def stage2_labels(stage1: BvUViMVQVAEModel, inputs: dict[str, torch.Tensor],
                  pixel_values: torch.Tensor | None = None) -> torch.LongTensor:
    """Stage II training targets: the VQ-VAE's codes of the label maps, + 1 (``train.py encode_labels``; token 0
    is the decoder's start token)."""
    with torch.no_grad():
        return stage1.encode(inputs, pixel_values).code + 1


def tokens_to_codes(tokens: torch.LongTensor, code_len: int) -> torch.LongTensor:
    """Stage II tokens -> stage I codes (``train.py decode_labels``: ``token - 1``). ``tokens`` may start with
    `generate`'s start token 0 (``[B, 1 + code_len]``), which is dropped."""
    if tokens.shape[1] == code_len + 1:
        tokens = tokens[:, 1:]
    if tokens.shape[1] != code_len:
        raise ValueError(f"expected {code_len} tokens (or {code_len + 1} with the start token), got {tokens.shape[1]}")
    return tokens - 1


# ---------------------------------------------------------------------------------------------------------
# Image ops of the UViM configs and evaluators
# ---------------------------------------------------------------------------------------------------------


def rgb_to_grayscale_to_rgb(image: np.ndarray) -> np.ndarray:
    """big_vision ``rgb_to_grayscale_to_rgb`` (``pp/proj/uvim/pp_ops.py``) on a uint8 ``[..., 3]`` image:
    ``tf.image.rgb_to_grayscale`` (to float ``x / 255``, weights 0.2989, 0.5870, 0.1140, back to uint8 by
    ``tf.image.convert_image_dtype``: ``trunc(g * 255.5)``), repeated to 3 channels."""
    x = np.asarray(image)
    if x.dtype != np.uint8 or x.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [..., 3] image, got {x.dtype} {x.shape}")
    flt = x.astype(np.float32) * np.float32(1 / 255.0)
    gray = np.tensordot(flt, np.array([0.2989, 0.5870, 0.1140], np.float32), axes=([-1], [-1]))
    gray = (gray.astype(np.float32) * np.float32(255.5)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def resize_nearest(x, size) -> np.ndarray:
    """``jax.image.resize(x, (H, W, ...), "nearest")`` of a ``[h, w, ...]`` map (what the UViM evaluators resize
    predictions to the ground truth with): source index ``floor((i + 0.5) * h / H)`` in float32."""
    x = np.asarray(x)
    for axis, (n_in, n_out) in enumerate(zip(x.shape[:2], size)):
        idx = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in)
                       / np.float32(n_out)).astype(np.int64)
        x = np.take(x, idx, axis=axis)
    return x


# ---------------------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------------------


class UViMPipeline:
    r"""Both UViM stages for one task: images -> stage II codes -> stage I decoder (with the image as context) ->
    the task's output, as big_vision's ``train.py predict_fn`` and the UViM colabs.

    Use `for_models` (or `from_pretrained` with two converted folders): it picks the subclass of the VQ-VAE's task,
    `UViMPanopticPipeline`, `UViMDepthPipeline` or `UViMColorizationPipeline`. Images (PIL, uint8 arrays) go
    through big_vision's ``decode|resize(S)|value_range(-1, 1)`` at the models' resolution (``S`` = 512 for the
    public models); the context image is the same image, as in the public configs.

    ``__call__(images, resize_to_input=True, **generate_kwargs)`` returns one dict per image. ``generate_kwargs`` go
    to `BvUViMVTTForConditionalGeneration.generate`: greedy by default (big_vision's ``temperature=1e-7``);
    ``do_sample=True, temperature=1.0`` is the colorization colab's sampling.
    """

    task: str | None = None

    def __init__(self, stage1: BvUViMVQVAEModel, stage2: BvUViMVTTForConditionalGeneration,
                 image_processor: BvImageProcessor | None = None):
        if self.task is not None and stage1.config.task != self.task:
            raise ValueError(f"{type(self).__name__} needs a {self.task} VQ-VAE, got one with the targets "
                             f"{sorted(stage1.config.outputs)}")
        if stage2.config.codebook_size != stage1.config.codebook_size:
            raise ValueError(f"stage II predicts {stage2.config.vocab_size} tokens = a codebook of "
                             f"{stage2.config.codebook_size} + 1, but the VQ-VAE has {stage1.config.codebook_size} "
                             "codewords: the two stages are not from the same task")
        if stage2.config.max_position_embeddings != stage1.config.code_len:
            raise ValueError(f"stage II generates {stage2.config.max_position_embeddings} tokens, the VQ-VAE takes "
                             f"{stage1.config.code_len} codes")
        self.stage1, self.stage2 = stage1.eval(), stage2.eval()
        size = tuple(stage2.config.image_size)
        if tuple(stage1.config.image_size) != size:
            raise ValueError(f"the stages' resolutions differ ({size} vs {tuple(stage1.config.image_size)}); the "
                             "public UViM configs use one image for both")
        self.image_size = size
        self.image_processor = image_processor or BvImageProcessor(size={"height": size[0], "width": size[1]})

    @classmethod
    def for_models(cls, stage1: BvUViMVQVAEModel, stage2: BvUViMVTTForConditionalGeneration,
                   image_processor: BvImageProcessor | None = None) -> UViMPipeline:
        """The pipeline of the VQ-VAE's task (from its targets; `UViMPipeline` itself for other targets)."""
        chosen = next((c for c in cls.__subclasses__() if c.task == stage1.config.task), UViMPipeline)
        return chosen(stage1, stage2, image_processor)

    @classmethod
    def from_pretrained(cls, stage1_path: str, stage2_path: str, **kwargs) -> UViMPipeline:
        """Loads the two converted folders (``kwargs`` go to both ``from_pretrained`` calls)."""
        from transformers import AutoModel, AutoModelForImageTextToText

        return cls.for_models(AutoModel.from_pretrained(stage1_path, **kwargs),
                              AutoModelForImageTextToText.from_pretrained(stage2_path, **kwargs))

    def preprocess(self, images) -> torch.Tensor:
        """Images -> ``pixel_values`` ``[B, 3, S, S]`` in [-1, 1]."""
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def generate_codes(self, pixel_values: torch.Tensor, **generate_kwargs) -> torch.LongTensor:
        """Stage II: ``[B, code_len]`` codes (``tokens - 1``) for the images."""
        tokens = self.stage2.generate(pixel_values=pixel_values.to(self.stage2.device), **generate_kwargs)
        return tokens_to_codes(tokens, self.stage1.config.code_len)

    def decode(self, codes: torch.LongTensor, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage I: codes (+ the image as context) -> per-target logits."""
        with torch.no_grad():
            return self.stage1.decode(codes.to(self.stage1.device), pixel_values=pixel_values.to(self.stage1.device))

    def postprocess(self, logits: dict[str, torch.Tensor]) -> list[dict]:
        """Logits -> one dict per image (the base class returns the logits of each target)."""
        batch = next(iter(logits.values())).shape[0]
        return [{k: v[i].cpu().numpy() for k, v in logits.items()} for i in range(batch)]

    def _resize_back(self, outputs: list[dict], sizes: list[tuple[int, int]]) -> list[dict]:
        return outputs

    def __call__(self, images, resize_to_input: bool = True, **generate_kwargs) -> list[dict]:
        """Runs both stages on one image or a list of images (PIL, uint8 ``[H, W, 3]``)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        pixel_values = self.preprocess(images)
        codes = self.generate_codes(pixel_values, **generate_kwargs)
        outputs = self.postprocess(self.decode(codes, pixel_values))
        for out, code in zip(outputs, codes):
            out["codes"] = code.cpu().numpy()
        if resize_to_input:
            outputs = self._resize_back(outputs, [decode(image).shape[:2] for image in images])
        return outputs


class UViMPanopticPipeline(UViMPipeline):
    """Image -> COCO panoptic map: ``"panoptic"`` ``[H, W, 2]`` (semantic class, instance id), ``"semantics"``,
    ``"instances"``. Classes: 0 void, ``1 + i`` the i-th category of ``panoptic_coco_categories.json`` (80 things,
    then 53 stuff; `panoptic_quality`'s defaults). ``min_fraction`` drops instances covering at most that fraction
    of the image (big_vision's ``predict_kwargs``, 0 by default)."""

    task = "panoptic"

    def __init__(self, stage1, stage2, image_processor=None, min_fraction: float = 0.0):
        super().__init__(stage1, stage2, image_processor)
        self.min_fraction = min_fraction

    def postprocess(self, logits):
        panoptic = panoptic_from_logits(logits, self.stage1.config, self.min_fraction).cpu().numpy()
        return [{"panoptic": p, "semantics": p[..., 0], "instances": p[..., 1]} for p in panoptic]

    def _resize_back(self, outputs, sizes):
        resized = []
        for out, size in zip(outputs, sizes):
            p = resize_nearest(out["panoptic"], size)  # coco_panoptic.py: _resize_nearest to the original size
            resized.append({**out, "panoptic": p, "semantics": p[..., 0], "instances": p[..., 1]})
        return resized


class UViMDepthPipeline(UViMPipeline):
    """Image -> depth map in metres: ``"depth"`` ``[H, W]`` float32 (NYU bins between ``min_depth`` and
    ``max_depth``, big_vision's ``MIN_DEPTH``/``MAX_DEPTH``)."""

    task = "depth"

    def __init__(self, stage1, stage2, image_processor=None, min_depth: float = NYU_MIN_DEPTH,
                 max_depth: float = NYU_MAX_DEPTH):
        super().__init__(stage1, stage2, image_processor)
        self.min_depth, self.max_depth = min_depth, max_depth

    def postprocess(self, logits):
        depth = depth_from_logits(logits, self.stage1.config, self.min_depth, self.max_depth).cpu().numpy()
        return [{"depth": d} for d in depth]

    def _resize_back(self, outputs, sizes):  # nyu_depth.py: _resize_nearest to the ground truth's size
        return [{**out, "depth": resize_nearest(out["depth"], size)} for out, size in zip(outputs, sizes)]


class UViMColorizationPipeline(UViMPipeline):
    """Grayscale (or colour, made gray first) image -> colourised image: ``"color"`` ``[H, W, 3]`` in [-1, 1] and
    ``"image"`` uint8. Input as ``configs/proj/uvim/train_imagenet2012_colorization_pretrained.py``:
    ``decode|resize(S)|rgb_to_grayscale_to_rgb|value_range(-1, 1)``. The colab samples with ``temperature=1.0``
    (``do_sample=True, temperature=1.0``); the default here is greedy, as ``train.py``."""

    task = "colorization"

    def preprocess(self, images) -> torch.Tensor:
        batch = []
        for image in images:
            x = rgb_to_grayscale_to_rgb(resize(decode(image), self.image_size))
            batch.append(value_range(x, -1, 1).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(batch))

    def postprocess(self, logits):
        color = color_from_logits(logits, self.stage1.config).cpu().numpy()
        return [{"color": c, "image": np.round((c + 1) * 127.5).astype(np.uint8)} for c in color]

    def _resize_back(self, outputs, sizes):
        resized = []
        for out, size in zip(outputs, sizes):  # bilinear, as big_vision's resize (uint8)
            image = resize(out["image"], size)
            resized.append({**out, "image": image})
        return resized
