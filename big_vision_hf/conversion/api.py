"""Converting a big_vision checkpoint: read -> layout passes -> rule table -> strict load.

Every family registers a *builder* in :data:`FAMILIES` under its big_vision ``config.model_name``. A builder
takes the lazily-read checkpoint and the big_vision model kwargs (``config.model``) and returns
``(model class, config, {our name: LazyArray})`` without reading any data; :func:`convert_checkpoint`
then checks that every array and every parameter is accounted for, reads the arrays one at a time and
loads them strictly.

Example:
    >>> from big_vision_hf.conversion import convert_checkpoint  # doctest: +SKIP
    >>> model = convert_checkpoint("vit_s16_i1k_300ep.npz", "vit", {"variant": "S/16"})  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import torch
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .checkpoint import CheckpointError, LazyArray, read_checkpoint
from .mapping import check_fits, materialize

Builder = Callable[..., tuple[type, object, dict[str, LazyArray]]]
FAMILIES: dict[str, Builder] = {}
# Families whose folder needs another processor than `image_processor_for`: family -> fn(config, preprocessing)
# returning (processor, pp string). Filled by the family modules (e.g. NaFlex's patch processor).
PROCESSORS: dict[str, Callable] = {}
# Families whose folder is written tensor by tensor instead of through an in-memory model (PaliGemma: 3B-28B
# parameters): family -> fn(checkpoint, out_dir, model_config: dict, *, image_size, dtype, max_shard_size,
# progress) -> out_dir. Filled by the family modules; `convert_to_folder` hands such families over whole.
FOLDER_WRITERS: dict[str, Callable[..., str]] = {}
# Families whose folder's model card gets a parity note about the converted model (e.g. the measured deviation of
# a close-but-not-exact transformers class): family -> fn(model, checkpoint, model_config: dict) -> str ("": none).
PARITY_NOTES: dict[str, Callable[..., str]] = {}


def register_family(*names: str):
    """Decorator: registers a builder under big_vision ``config.model_name`` values (``"vit"``, ...)."""

    def wrap(builder: Builder) -> Builder:
        for name in names:
            FAMILIES[name] = builder
        return builder

    return wrap


def _load_builders() -> None:
    # Importing the family modules registers them.
    from . import families  # noqa: F401


# Structural signatures, most specific first: (family, names that must all be present).
_SIGNATURES = [
    ("proj.paligemma.paligemma", ("llm/embedder/input_embedding", "img/embedding/kernel")),
    ("proj.paligemma.vqvae", ("_vq_vae._embedding",)),  # PaliGemma seg VQ-VAE (PyTorch keys)
    ("mlp_mixer", ("stem/kernel", "pre_head_layer_norm/scale")),
    ("mlp_mixer", ("Mixer/encoder_norm/scale",)),  # legacy vision_transformer layout (also has embedding/kernel)
    ("bit_paper", ("root_block/conv_root/kernel",)),
    ("bit_paper", ("resnet/root_block/standardized_conv2d/kernel",)),
    ("bit", ("conv_root/kernel", "gn_root/scale")),
    ("vit", ("embedding/kernel",)),
    ("proj.image_text.two_towers", ("img/embedding/kernel", "txt/Embed_0/embedding")),  # SigLIP, LiT-like
    ("proj.image_text.two_towers",  # LiT (BERT text tower)
     ("img/embedding/kernel", "txt/BertEncoder_0/embedder/embedders_token_ids/embedding")),
    # One ViT under img/ with its head and `t`, and no txt/ tower: two-tower signatures must come before this.
    ("proj.clippo.one_tower", ("img/embedding/kernel", "img/head/kernel", "t")),
]


def detect_family(params: dict[str, LazyArray], source: str = "checkpoint") -> str:
    """Guesses big_vision ``model_name`` from the parameter tree's structure (never from file names)."""
    for family, required in _SIGNATURES:
        if all(name in params for name in required):
            return family
    if any(k.startswith("Mixer/") or k.startswith("MixerBlock_") for k in params):
        return "mlp_mixer"
    tops = sorted({k.split("/")[0] for k in params})[:8]
    raise CheckpointError(
        f"{source}: cannot tell the big_vision model family from its arrays (top-level names: {', '.join(tops)}); "
        f"pass --model-name (one of: {', '.join(sorted(FAMILIES))})"
    )


def parse_model_config(model_config: str | dict | None) -> dict:
    """``--model-config`` JSON (big_vision ``config.model``) -> dict, with a one-line error."""
    if model_config is None or isinstance(model_config, dict):
        return dict(model_config or {})
    try:
        value = json.loads(model_config)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--model-config is not valid JSON ({e.msg} at char {e.pos}): {model_config!r}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--model-config must be a JSON object, got {type(value).__name__}")
    return value


def build(checkpoint: str, model_name: str | None = None, model_config: str | dict | None = None, **options):
    """Reads the checkpoint's names and shapes and returns ``(model class, config, mapped arrays, family)``."""
    _load_builders()
    params = read_checkpoint(checkpoint)
    family = model_name or detect_family(params, checkpoint)
    if family not in FAMILIES:
        raise CheckpointError(f"unknown --model-name {family!r}; supported: {', '.join(sorted(FAMILIES))}")
    cls, config, mapped = FAMILIES[family](params, parse_model_config(model_config), **options)
    return cls, config, mapped, family


def convert_checkpoint(
    checkpoint: str,
    model_name: str | None = None,
    model_config: str | dict | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    **options,
) -> PreTrainedModel:
    """Converts a big_vision ``.npz`` (``path`` or ``path:subtree``) into one of our models, strictly.

    Args:
        checkpoint: path to the ``.npz``, optionally with a sub-tree (``"siglip.npz:img"``).
        model_name: big_vision ``config.model_name`` (``"vit"``, ``"proj.flexi.vit"``, ``"mlp_mixer"``,
            ``"bit_paper"``, ``"bit"``); detected from the arrays when omitted.
        model_config: big_vision ``config.model`` kwargs, as a dict or JSON string.
        dtype: dtype of the returned model's floating-point weights.
        options: family options, e.g. ``image_size=(384, 384)`` to resample a learned posemb.
    """
    cls, config, mapped, family = build(checkpoint, model_name, model_config, **options)
    with no_init_weights():
        model = cls(config)
    check_fits(mapped, model)
    tensors = materialize(mapped, dtype=dtype, progress=progress)
    model.load_state_dict(tensors, strict=True)
    model.tie_weights()  # declared ties (PaliGemma's lm_head = embedding); `no_init_weights` skipped them
    model.to(dtype)
    model.config.bv_model_name = family
    return model.eval()


def convert_to_folder(
    checkpoint: str,
    out_dir: str,
    model_name: str | None = None,
    model_config: str | dict | None = None,
    registry_name: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "5GB",
    remote_code: bool = True,
    progress: bool = True,
    labels: list[str] | None = None,
    target: str = "auto",
) -> str:
    """Converts a checkpoint and writes a Hub-ready folder (what ``big-vision-hf convert`` runs).

    A registry entry (by ``registry_name``, or recognised from the file's exact basename) supplies the big_vision
    model name and kwargs, resolution and preprocessing; explicit arguments override it. ``target`` (``"auto"``,
    ``"transformers"``, ``"bv"``) is passed to families that can land in a transformers class or ours (two towers).
    """
    from ..processing.image_processing_bv import image_processor_for
    from .export import save_folder
    from .model_card import render_model_card
    from .registry import find_entry

    entry = find_entry(registry_name or checkpoint, model_name)
    if registry_name and entry is None:
        raise CheckpointError(f"unknown checkpoint name {registry_name!r}; see `big-vision-hf list`")
    if entry and not registry_name and model_name and model_name != entry.model_name:
        entry = None  # a file recognised by name, asked for as another family
    if entry and entry.subtree and ":" not in checkpoint.split("/")[-1]:
        checkpoint = f"{checkpoint}:{entry.subtree}"
    family = model_name or (entry.model_name if entry else None)
    kwargs = {**(entry.model_config if entry else {}), **parse_model_config(model_config)}
    if image_size is None and entry is not None:
        image_size = entry.image_size
    _load_builders()
    if family is None:  # the structure decides, before any data is read
        family = detect_family(read_checkpoint(checkpoint), checkpoint)
    if family in FOLDER_WRITERS:
        if labels is not None:
            raise CheckpointError(f"--labels applies to classifiers, not to {family}")
        return FOLDER_WRITERS[family](checkpoint, out_dir, kwargs, image_size=image_size, dtype=dtype,
                                      max_shard_size=max_shard_size, progress=progress)
    options = {"image_size": image_size} if image_size is not None else {}
    if target != "auto":
        if family in FAMILIES and "target" not in inspect.signature(FAMILIES[family]).parameters:
            raise CheckpointError(f"--target applies to proj.image_text.two_towers, not to {family}")
        options["target"] = target
    model = convert_checkpoint(checkpoint, family, kwargs, dtype=dtype, progress=progress, **options)
    model.config.bv_model_config = kwargs
    if labels is not None:
        num_labels = getattr(model, "classifier", None) and model.classifier.out_features
        if len(labels) != num_labels:
            raise CheckpointError(f"{len(labels)} labels given but the checkpoint's head has {num_labels} classes")
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
    make_processor = PROCESSORS.get(model.config.bv_model_name, image_processor_for)
    processor, pp = make_processor(model.config, entry.preprocessing if entry else "resize")
    note = PARITY_NOTES[family](model, checkpoint, kwargs) if family in PARITY_NOTES else ""
    card = render_model_card(model, model.config.bv_model_name, checkpoint, entry, preprocessing=pp, parity_note=note)
    return save_folder(model, out_dir, processor, card, max_shard_size=max_shard_size, remote_code=remote_code)
