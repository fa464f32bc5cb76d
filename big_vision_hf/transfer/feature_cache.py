"""Frozen-tower features computed once: the projected image tokens of a frozen SigLIP tower, cached per image.

When the image tower and the projector are frozen (LoRA preset ``llm``; big_vision's ``freeze_vit``, i.e. the
configs whose schedule freezes ``img/.*``) and the image preprocessing is deterministic, their output for an image
is the same in every epoch -- and for every question asked about it (VQAv2, GQA, ... have several per image). That
output is PaliGemma's ``get_image_features(pixel_values).pooler_output``: ``multi_modal_projector(vision_tower(
pixel_values).last_hidden_state)``, ``[images, tokens, text width]`` (transformers 5.x applies no ``1/sqrt(width)``
there; Gemma's scaled embedding scales the text embeddings only). :func:`attach_feature_cache` replaces the model's
``get_image_features`` with one that computes it once per image and then reads it back, so the language model
trains on the same tensors: everything after it (the ``<image>`` scatter, the prefix-LM mask, the loss path of
``PaliGemmaTrainer`` with ``last_layer_on_rows``, LoRA) runs unchanged, and loss and gradients are those of the
uncached run (tested).

Keys. One image's key is a BLAKE2b digest of its preprocessed pixels (so the image content *and* every
preprocessing setting: another resize, value range or crop gives other pixels and another key) and of a context
digest: the tower and projector weights (a content hash of every parameter and buffer), their dtype, the tower's
config (its activation, norm epsilon, head count: what the weights do not fix; and the transformers version), the
autocast dtype (bf16 runs store bf16 features), the attention implementation, the device type and the torch version.
The weights are hashed at the first call and again whenever a parameter's storage or version counter moves (any
in-place write autograd sees; a write through ``.data``, which autograd does not see either, is caught at the next
attach); a change there, or in the pixels, makes new keys: the features are recomputed, never served stale. The
features are stored exactly as the tower produced them: on the CPU in memory, or one safetensors file per image
under a folder (never pickle), shareable between runs of the same model.

Cost: the keys hash every image's pixels on the CPU at every step (BLAKE2b, about 1 GB/s on one core: 0.7 ms for a
224-px float32 image, 2.7 ms at 448 px), after copying them from the device. That is far below the frozen tower's
forward on a CPU (where the speed-up was measured), but of the same order as it on a fast GPU, where the cache has
not been shown to pay.

When not to cache (:func:`plan_feature_cache` says why, and ``train`` prints it): a trainable tower or projector
(LoRA ``llm+vision``, full fine-tuning without ``freeze_vit``), dropout inside the tower, video examples (big_vision
draws training clips at random: the frames are an augmentation, and each example is ``frames x 256`` tokens), or an
image processor that augments at random. ``train`` also leaves it off under sharded training (FSDP / DeepSpeed),
where the tower's forward is a collective that every process must run at the same step.

Example:
    >>> model = apply_lora(model, "llm")  # doctest: +SKIP
    >>> plan = plan_feature_cache(model, train_rows, "auto", passes=3, precision="bf16")  # doctest: +SKIP
    >>> print(plan.describe())  # doctest: +SKIP
    feature cache: memory (frozen image tower and projector; at most 0.98 GiB for 1,000 images)
    >>> with attach_feature_cache(model, plan.store()) as cached:  # doctest: +SKIP
    ...     trainer.train()
    >>> print(cached.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import torch

__all__ = [
    "FEATURE_CACHE_MODES",
    "CachedImageFeatures",
    "FeatureCachePlan",
    "FeatureStore",
    "attach_feature_cache",
    "check_feature_cache",
    "default_cache_dir",
    "frozen_tower_problem",
    "paligemma_model",
    "feature_bytes",
    "plan_feature_cache",
    "use_feature_cache",
    "weights_fingerprint",
]

FEATURE_CACHE_MODES = ("auto", "off", "memory", "disk")
# ``auto`` keeps the features in memory up to this share of the available RAM, then goes to disk.
_MEMORY_SHARE = 0.25
# config entries that name the model without changing what the tower computes (the dtype is the weights')
_CONFIG_NAMES = frozenset({"_name_or_path", "architectures", "id2label", "label2id", "dtype"})


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/big_vision_hf/features`` (``~/.cache/...``): where ``disk`` keeps features by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "big_vision_hf", "features")


def paligemma_model(model):
    """The ``PaliGemmaModel`` (vision tower + projector + Gemma) of a PaliGemma (PEFT- and/or DDP-wrapped, or that
    model itself); ``None`` for another model."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base if hasattr(base, "vision_tower") else getattr(base, "model", None)
    if inner is None or not hasattr(inner, "vision_tower") or not hasattr(inner, "multi_modal_projector"):
        return None
    return inner


def _tower_tensors(inner) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, module in (("vision_tower.", inner.vision_tower), ("multi_modal_projector.",
                                                                    inner.multi_modal_projector)):
        for name, t in module.named_parameters(remove_duplicate=False):
            yield prefix + name, t
        for name, t in module.named_buffers(remove_duplicate=False):
            yield prefix + name, t


def _local(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter's local shard; the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def weights_fingerprint(inner) -> bytes:
    """BLAKE2b digest of the names, dtypes, shapes and bytes of every parameter and buffer of ``inner``'s vision tower
    and projector. About a second per GB of weights; run once per attach and after an in-place change."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in _tower_tensors(inner):
        t = _local(t).detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return h.digest()


def frozen_tower_problem(model) -> str | None:
    """Why ``model``'s image features are not fixed during training (``None``: they are): not a PaliGemma, a
    trainable parameter in the tower or projector, or dropout inside the tower."""
    inner = paligemma_model(model)
    if inner is None:
        return "not a PaliGemma model"
    trainable = [name for name, t in _tower_tensors(inner) if t.requires_grad]
    if trainable:
        return (f"the image tower / projector trains ({len(trainable)} tensors, e.g. {trainable[0]}: LoRA "
                "llm+vision, or full fine-tuning without freeze_vit)")
    dropout = float(getattr(inner.vision_tower.config, "attention_dropout", 0.0) or 0.0)
    if dropout > 0:
        return f"the image tower has dropout {dropout:g} (random features in training)"
    return None


def _augmentation_problem(rows, processor) -> str | None:
    """Why the training images' pixels vary from epoch to epoch (``None``: they do not)."""
    first = rows[0] if len(rows) else {}
    if isinstance(first.get("image"), (list, tuple)):
        return ("video examples: big_vision draws the training clips at random (the frames are an augmentation) "
                "and each example is frames x 256 tokens")
    image_processor = getattr(processor, "image_processor", processor)
    random_ops = sorted(k for k, v in getattr(image_processor, "__dict__", {}).items()
                        if v is True and (k.startswith("do_random") or k in ("augment", "do_augment")))
    if random_ops:
        return f"random augmentation in the image preprocessing ({', '.join(random_ops)})"
    return None


class FeatureStore:
    """Features by key: in memory (``folder=None``; CPU tensors) or one safetensors file per key in ``folder``.

    Example:
        >>> store = FeatureStore()
        >>> store.put("ab12", torch.ones(4, 8))
        >>> store.get("ab12").shape, store.get("cd34")
        (torch.Size([4, 8]), None)
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = None if folder is None else os.fspath(folder)
        self.memory: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.memory) if self.folder is None else sum(
            len(files) for _, _, files in os.walk(self.folder))

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], key + ".safetensors")

    def get(self, key: str) -> torch.Tensor | None:
        if self.folder is None:
            return self.memory.get(key)
        from safetensors.torch import load_file

        path = self._path(key)
        try:
            return load_file(path)["features"]
        except (OSError, KeyError):  # absent (or a file from elsewhere): computed again
            return None

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", copy=True).contiguous()  # not a view into the batch's tensor
        if self.folder is None:
            self.memory[key] = features
            return
        from safetensors.torch import save_file

        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({"features": features}, tmp)
        os.replace(tmp, path)  # whole or absent: a killed run leaves no half-written file under the key


class CachedImageFeatures:
    """``PaliGemmaModel.get_image_features`` reading each image's projected tokens from a :class:`FeatureStore`,
    computing (under ``no_grad``) only the images it has not seen in this context. Installed and removed by
    :func:`attach_feature_cache`; ``computed`` / ``reused`` count images."""

    def __init__(self, inner, store: FeatureStore):
        self.inner = inner
        self.store = store
        self.original = inner.get_image_features
        self.computed = 0
        self.reused = 0
        self.bypassed = 0
        self._state = None
        self._weights = b""

    def _weights_state(self) -> tuple:
        # cheap (no data read): storage, version counter (bumped by every in-place write autograd sees), dtype
        return tuple((_local(t).data_ptr(), t._version, t.dtype, t.device) for _, t in _tower_tensors(self.inner))

    def _context(self, pixel_values: torch.Tensor) -> bytes:
        state = self._weights_state()
        if state != self._state:
            self._weights = weights_fingerprint(self.inner)
            self._state = state
        device = pixel_values.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        config = self.inner.vision_tower.config
        attn = getattr(config, "_attn_implementation", None)
        # with transformers_version (to_dict adds it): another SigLIP implementation, or head count, other features
        settings = json.dumps({k: v for k, v in config.to_dict().items() if k not in _CONFIG_NAMES}, sort_keys=True,
                              default=str)
        extra = (f"{settings}|{autocast}|{attn}|{device}|{torch.__version__}|{pixel_values.dtype}|"
                 f"{tuple(pixel_values.shape[1:])}")
        return self._weights + extra.encode()

    def keys(self, pixel_values: torch.Tensor) -> list[str]:
        """One key per image of ``pixel_values`` ``[N, 3, H, W]`` (module docstring)."""
        context = self._context(pixel_values)
        pixels = pixel_values.detach().to("cpu").contiguous()
        out = []
        for image in pixels:
            h = hashlib.blake2b(context, digest_size=20)
            h.update(image.reshape(-1).view(torch.uint8).numpy())
            out.append(h.hexdigest())
        return out

    def __call__(self, pixel_values: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if kwargs or frozen_tower_problem(self.inner) is not None:  # hidden states asked for, or no longer frozen
            self.bypassed += len(pixel_values)
            return self.original(pixel_values, **kwargs)
        keys = self.keys(pixel_values)
        found = [self.store.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            with torch.no_grad():
                fresh = self.original(pixel_values if len(missing) == len(keys) else pixel_values[missing])
            for i, features in zip(missing, fresh.pooler_output):
                self.store.put(keys[i], features)
                found[i] = features
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        if len(missing) == len(keys):  # nothing read back: the tower's own output, as without the cache
            return fresh
        features = torch.stack([f.to(pixel_values.device, non_blocking=True) for f in found])
        return BaseModelOutputWithPooling(pooler_output=features)

    def summary(self) -> str:
        """One line: images computed and reused (a hit rate near 0 says the cache did not pay)."""
        seen = self.computed + self.reused
        rate = f" ({self.reused / seen:.0%} of lookups)" if seen else ""
        return (f"feature cache: {self.computed:,} images through the tower, {self.reused:,} reused{rate}"
                + (f", {self.bypassed:,} bypassed" if self.bypassed else ""))


@contextlib.contextmanager
def attach_feature_cache(model, store: FeatureStore | None = None) -> Iterator[CachedImageFeatures]:
    """Within the block, ``model`` (a PaliGemma, PEFT- / DDP-wrapped or not) takes its projected image tokens from
    ``store`` (default: a new in-memory one). The weights are fingerprinted at the first call. The tower and
    projector must be frozen (:func:`frozen_tower_problem`); a call while they are not, or that asks for hidden
    states, runs the tower as usual.

    Example:
        >>> with attach_feature_cache(model) as cached:  # doctest: +SKIP
        ...     loss = trainer.compute_loss(model, batch)  # the tower runs; the next epochs read the store
    """
    inner = paligemma_model(model)
    if inner is None:
        raise ValueError("the feature cache needs a PaliGemma model")
    hook = CachedImageFeatures(inner, store if store is not None else FeatureStore())
    inner.get_image_features = hook  # the instance attribute PaliGemmaModel.forward calls
    try:
        yield hook
    finally:
        del inner.get_image_features


@dataclasses.dataclass(frozen=True)
class FeatureCachePlan:
    """What :func:`plan_feature_cache` decided: ``mode`` (``"off"``, ``"memory"``, ``"disk"``), why, and the
    folder of ``disk``."""

    mode: str
    reason: str
    folder: str | None = None

    def describe(self) -> str:
        where = f" in {self.folder}" if self.mode == "disk" else ""
        return f"feature cache: {self.mode}{where} ({self.reason})"

    def store(self) -> FeatureStore | None:
        """A :class:`FeatureStore` for the plan (``None`` when off)."""
        if self.mode == "off":
            return None
        return FeatureStore(self.folder if self.mode == "disk" else None)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_feature_cache(requested: str, sharded: bool = False) -> None:
    """A one-line ``ValueError`` for a ``--feature-cache`` choice refused whatever the model: an unknown mode, or
    ``memory`` / ``disk`` under sharded training (FSDP / DeepSpeed), where the cache would run the frozen tower
    outside FSDP's forward, which its resharding does not survive (``train`` turns ``auto`` off there).
    ``run_transfer`` calls it before any work."""
    if requested not in FEATURE_CACHE_MODES:
        raise ValueError(f"feature cache must be one of {FEATURE_CACHE_MODES}, got {requested!r}")
    if sharded and requested not in ("auto", "off"):
        raise ValueError(f"--feature-cache {requested}: not with sharded training (FSDP / DeepSpeed)")


def feature_bytes(model, precision: str = "fp32") -> int:
    """Bytes of one image's cached features: tokens x projection width x (2 in bf16, else the weights' size)."""
    inner = paligemma_model(model)
    vision = inner.vision_tower.config
    tokens = (vision.image_size // vision.patch_size) ** 2
    width = inner.multi_modal_projector.linear.out_features
    size = 2 if precision == "bf16" else inner.multi_modal_projector.linear.weight.element_size()
    return tokens * width * size


def plan_feature_cache(model, rows: Sequence, requested: str = "auto", *, passes: float = 1.0, processor=None,
                       precision: str = "fp32", folder: str | os.PathLike | None = None,
                       extra_images: int = 0, memory_budget: int | None = None) -> FeatureCachePlan:
    """Whether and where to cache ``model``'s image features for training on ``rows`` (``{image, ...}``).

    ``requested``: ``"auto"`` (cache when the tower and projector are frozen and the images fixed: in memory when
    the features of ``len(rows) + extra_images`` images fit in ``memory_budget`` -- default a quarter of the
    available RAM --, else on disk when the run passes over the data at least twice, ``passes``), ``"off"``,
    ``"memory"`` or ``"disk"`` (in ``folder``, default :func:`default_cache_dir`). An explicit mode whose
    conditions do not hold is a ``ValueError`` (cached features would be wrong or useless).
    """
    check_feature_cache(requested)
    if requested == "off":
        return FeatureCachePlan("off", "--feature-cache off")
    problem = frozen_tower_problem(model) or _augmentation_problem(rows, processor)
    if problem is not None:
        if requested != "auto":
            raise ValueError(f"--feature-cache {requested}: not cacheable: {problem}")
        return FeatureCachePlan("off", problem)
    folder = os.fspath(folder) if folder is not None else default_cache_dir()
    images = len(rows) + extra_images
    total = images * feature_bytes(model, precision)
    size = f"at most {total / 2**30:.2g} GiB for {images:,} images"
    budget = memory_budget if memory_budget is not None else int(_MEMORY_SHARE * _available_memory())
    if requested == "memory" or (requested == "auto" and total <= budget):
        return FeatureCachePlan("memory", f"frozen image tower and projector; {size}")
    if requested == "disk" or passes >= 2:
        return FeatureCachePlan("disk", f"frozen image tower and projector; {size}", folder)
    return FeatureCachePlan("off", f"{size}, more than memory allows, and the run reads each example once: writing "
                                   "them to disk pays only where images repeat (--feature-cache disk)")


@contextlib.contextmanager
def use_feature_cache(model, plan: FeatureCachePlan, say=print) -> Iterator[CachedImageFeatures | None]:
    """:func:`attach_feature_cache` with the plan's store (nothing when the plan is off); ``say`` gets the
    :meth:`CachedImageFeatures.summary` at the end."""
    store = plan.store()
    if store is None:
        yield None
        return
    with attach_feature_cache(model, store) as cached:
        try:
            yield cached
        finally:
            say(cached.summary())
