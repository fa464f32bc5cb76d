"""Converting a big_vision checkpoint: read -> family record -> builder (layout passes, rule table) -> strict load.

Every family declares a `Family` record in its converter module (``families.FAMILIES``); this module only reads
the records. A builder takes the lazily-read checkpoint and the big_vision model kwargs (``config.model``) and
returns a `Built` (model class, config, ``{our name: LazyArray}``) without reading any data; the arrays are then
checked against the model (every array used, every parameter filled, shapes) and read one at a time.

Example:
    >>> from big_vision_hf.conversion import convert_checkpoint  # doctest: +SKIP
    >>> model = convert_checkpoint("vit_s16_i1k_300ep.npz", "vit", {"variant": "S/16"})  # doctest: +SKIP
"""

from __future__ import annotations

import json

import torch
from transformers import PreTrainedModel

from ..atomic import atomic_folder, check_output
from .checkpoint import CheckpointError, LazyArray, check_tree, read_checkpoint
from .export import progress_bars, save_folder
from .families import detect_family, family_named
from .family import Built, Family
from .model_card import conversion_card
from .zoo import find_entry


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


def build(
    checkpoint: str | dict[str, LazyArray],
    model_name: str | None = None,
    model_config: str | dict | None = None,
    source: str = "checkpoint",
    **options,
) -> Built:
    """The family's `Built` for a checkpoint (a path, ``path:subtree``, or its already-read arrays); nothing is read
    but the header. The family is ``model_name``'s, else detected from the tree. A config the arrays or the kwargs
    make invalid is a `CheckpointError` here, whichever family raised it; so are ranks no big_vision parameter has
    (`check_tree`, before the builder reads shapes) and any shape the builder cannot make sense of."""
    params = read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    source = checkpoint if isinstance(checkpoint, str) else source
    family = family_named(model_name or detect_family(params, source))
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise CheckpointError(f"{', '.join(unknown)} do(es) not apply to {family.name}")
    check_tree(params, source)
    kwargs = parse_model_config(model_config)
    try:
        built = family.build(params, kwargs, **options)
    except CheckpointError:
        raise
    except ValueError as e:  # a config class refusing what the kwargs and arrays say
        raise CheckpointError(f"{family.name}: {e}") from None
    except (IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError, RuntimeError) as e:
        # a builder reading config values from shapes no big_vision model has (a mangled header)
        raise CheckpointError(f"{source}: the arrays' shapes make no {family.name} model "
                              f"({type(e).__name__}: {e})") from None
    built.family = family.name
    return built


def convert_checkpoint(
    checkpoint: str,
    model_name: str | None = None,
    model_config: str | dict | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    allow_nonfinite: bool = False,
    **options,
) -> PreTrainedModel:
    """Converts a big_vision ``.npz`` (``path`` or ``path:subtree``) into one of our models, strictly.

    Args:
        checkpoint: path to the ``.npz``, optionally with a sub-tree (``"siglip.npz:img"``).
        model_name: big_vision ``config.model_name`` (``"vit"``, ``"proj.flexi.vit"``, ...; ``big-vision-hf list
            --families``); detected from the arrays when omitted.
        model_config: big_vision ``config.model`` kwargs, as a dict or JSON string.
        dtype: dtype of the returned model's floating-point weights.
        allow_nonfinite: convert NaN/Inf parameters instead of refusing them.
        options: family options, e.g. ``image_size=(384, 384)`` to resample a learned posemb.
    """
    built = build(checkpoint, model_name, model_config, **options)
    built.allow_nonfinite = allow_nonfinite
    return built.instantiate(dtype, progress)


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
    tokenizer: str | None = None,
    text_preset: str | None = None,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    **options,
) -> str:
    """Converts a checkpoint and writes a Hub-ready folder (what ``big-vision-hf convert`` runs).

    A zoo entry (by ``registry_name``, or recognised from the file's exact basename) supplies the big_vision
    model name and kwargs, resolution and preprocessing; explicit arguments override it. ``target`` (``"auto"``,
    ``"transformers"``, ``"bv"``) is for families that can land in a transformers class or ours (two towers).
    ``tokenizer`` (``--tokenizer``) adds the family's text side (``text_preset``: its text pp; default the zoo
    entry's, else the text tower's). The header is read once; the family record decides how the folder is finished,
    and anything that does not apply is refused before a file is written.

    The folder is written atomically (`atomic_folder`): into a temporary folder beside ``out_dir``, renamed at the
    end, so a killed conversion leaves no folder or a complete one. An existing non-empty ``out_dir`` is refused
    unless ``overwrite``. NaN/Inf parameters are refused unless ``allow_nonfinite``.
    """
    check_output(out_dir, overwrite)
    entry = find_entry(registry_name or checkpoint, model_name)
    if registry_name and entry is None:
        raise CheckpointError(f"unknown checkpoint name {registry_name!r}; see `big-vision-hf list`")
    if entry and not registry_name and model_name and model_name != entry.model_name:
        entry = None  # a file recognised by name, asked for as another family
    if entry and entry.subtree and ":" not in checkpoint.split("/")[-1]:
        checkpoint = f"{checkpoint}:{entry.subtree}"
    kwargs = {**(entry.model_config if entry else {}), **parse_model_config(model_config)}
    if image_size is None and entry is not None:
        image_size = entry.image_size
    params = read_checkpoint(checkpoint)
    family = family_named(model_name or (entry.model_name if entry else detect_family(params, checkpoint)))
    if target != "auto":
        if "target" not in family.options:
            raise CheckpointError(f"--target applies to proj.image_text.two_towers, not to {family.name}")
        options["target"] = target
    if image_size is not None and "image_size" in family.options:
        options["image_size"] = image_size
    if labels is not None and family.write_folder is not None:
        raise CheckpointError(f"--labels applies to classifiers, not to {family.name}")
    if tokenizer is not None:
        check_text_side(family, tokenizer)
    built = build(params, family.name, kwargs, source=checkpoint, **options)
    built.allow_nonfinite = allow_nonfinite
    with progress_bars(progress), atomic_folder(out_dir, overwrite) as tmp:
        out = write_folder(built, family, checkpoint, tmp, kwargs, entry, dtype, max_shard_size, remote_code,
                           progress, labels)
        if tokenizer is not None:
            preset = text_preset or (entry.text_preset if entry else None) or None
            family.text_side(out, tokenizer, preset, remote_code)
    if tokenizer is None and family.text_side is not None:
        import sys

        print(f"warning: {out_dir} has no tokenizer: its text input (the zero-shot / image-text-to-text pipelines, "
              "the processor) needs the SentencePiece file the checkpoint was trained with: convert again with "
              "--tokenizer FILE", file=sys.stderr)
    return out_dir


def write_folder(built: Built, family: Family, checkpoint: str, out_dir: str, kwargs: dict, entry, dtype,
                 max_shard_size, remote_code: bool, progress: bool, labels: list[str] | None) -> str:
    """The folder of a built family: its streamed writer, or the model in memory + processor + card + code."""
    if family.write_folder is not None:
        return family.write_folder(built, checkpoint, out_dir, kwargs, dtype=dtype, max_shard_size=max_shard_size,
                                   progress=progress)
    model = built.instantiate(dtype, progress)
    model.config.bv_model_config = kwargs
    if labels is not None:
        set_labels(model, labels)
    processor, pp = folder_processor(family, model.config, entry.preprocessing if entry else "resize")
    note = family.parity_note(model, built) if family.parity_note else ""
    usage = family.card_usage(model) if family.card_usage else ""
    card = conversion_card(model, family.name, checkpoint, entry, preprocessing=pp, parity_note=note, usage=usage)
    return save_folder(model, out_dir, processor, card, max_shard_size=max_shard_size, remote_code=remote_code)


def set_labels(model: PreTrainedModel, labels: list[str]) -> None:
    """``--labels``: class names as ``config.id2label``, one per output of the classifier."""
    num_labels = getattr(model, "classifier", None) and model.classifier.out_features
    if len(labels) != num_labels:
        raise CheckpointError(f"{len(labels)} labels given but the checkpoint's head has {num_labels} classes")
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


def folder_processor(family: Family, config, preprocessing: str):
    """``(processor, pp string)`` of a folder: the family's, else big_vision's ViT-style image pp."""
    if family.processor is not None:
        return family.processor(config, preprocessing)
    from ..processing.image_processing_bv import image_processor_for

    return image_processor_for(config, preprocessing)


def check_text_side(family: Family, tokenizer_file: str) -> None:
    """``--tokenizer`` is a file, for a family with text input: checked before anything is written."""
    import os

    if not os.path.isfile(tokenizer_file):
        raise CheckpointError(f"--tokenizer {tokenizer_file}: no such file")
    if family.text_side is None:
        raise CheckpointError(f"--tokenizer applies to models with text input, not to {family.name}")
    with open(tokenizer_file, "rb") as f:
        data = f.read()
    try:
        import sentencepiece as spm

        spm.SentencePieceProcessor().LoadFromSerializedProto(data)
        return
    except (RuntimeError, TypeError):
        pass
    if family.name == "proj.image_text.two_towers" and _is_vocab_text(data):
        return  # LiT's BERT vocab.txt (checked against the text tower when the folder is finished)
    raise CheckpointError(f"--tokenizer {tokenizer_file}: not a SentencePiece model"
                          + (" or a BERT vocab.txt" if family.name == "proj.image_text.two_towers" else ""))


def _is_vocab_text(data: bytes) -> bool:
    """A vocabulary text file: UTF-8, one token per line, no NUL bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text and len(text.splitlines()) > 1
