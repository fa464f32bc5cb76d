"""Finishing a converted folder, for every family: weights, processor, text side, model card, remote code.

- :func:`save_folder` writes a model held in memory; :func:`write_streamed_safetensors` writes one tensor at a
  time what is too large to hold (PaliGemma 3B-28B), with the same shards and names as ``save_pretrained``;
- :func:`add_text_processor` adds big_vision's text pp to a two-tower folder (``--tokenizer``);
- the model card comes from ``model_card.render_model_card``.

The folder holds ``model.safetensors`` (sharded when large), ``config.json``, ``preprocessor_config.json``,
a model card ``README.md`` with Hub metadata, and a flat copy of our model code with ``auto_map`` so that
``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works where ``big_vision_hf`` is not
installed.

Remote code may only import sibling files relatively (``from .x import y``), and transformers copies them
flat. Inside the package, modules import across sub-packages in one canonical form,
``from ..configuration.configuration_bv_vit import BvViTConfig``; :func:`remote_code_files` follows those
imports and rewrites them to ``from .configuration_bv_vit import BvViTConfig``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import sys

import torch
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
)

from .checkpoint import CheckpointError, LazyArray, check_finite, to_torch
from .mapping import check_fits

_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\s)", re.MULTILINE)
_EXPORTED_AUTO_CLASSES = (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoModelForImageTextToText,
)


def _resolve(module_name: str, dots: str, target: str) -> str:
    package = module_name.rsplit(".", 1)[0]
    for _ in range(len(dots) - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{target}" if target else package


def remote_code_files(*module_names: str) -> dict[str, str]:
    """``{basename.py: source}`` for the modules and their relative-import closure, imports made flat."""
    files: dict[str, str] = {}
    pending = list(module_names)
    while pending:
        name = pending.pop()
        module = sys.modules.get(name) or importlib.import_module(name)
        basename = os.path.basename(module.__file__)
        if basename in files:
            continue
        source = open(module.__file__, encoding="utf-8").read()

        def flatten(match: re.Match) -> str:
            absolute = _resolve(name, match.group(2), match.group(3))
            pending.append(absolute)
            return f"{match.group(1)}.{absolute.rsplit('.', 1)[-1]}{match.group(4)}"

        files[basename] = _RELATIVE_IMPORT.sub(flatten, source)
    return files


def auto_map_for(model: PreTrainedModel) -> dict[str, str]:
    """Every Auto class under which our model's config is registered, as ``module_stem.ClassName``."""
    config_cls = type(model.config)
    auto_map = {"AutoConfig": f"{config_cls.__module__.rsplit('.', 1)[-1]}.{config_cls.__name__}"}
    for auto_cls in _EXPORTED_AUTO_CLASSES:
        try:
            model_cls = auto_cls._model_mapping[config_cls]
        except KeyError:
            continue
        if model_cls.__module__.startswith("big_vision_hf."):
            auto_map[auto_cls.__name__] = f"{model_cls.__module__.rsplit('.', 1)[-1]}.{model_cls.__name__}"
    return auto_map


def write_code(out_dir: str, files: dict[str, str]) -> None:
    """Writes ``{basename: source}`` (from :func:`remote_code_files`) into the folder."""
    for basename, source in files.items():
        with open(os.path.join(out_dir, basename), "w", encoding="utf-8") as f:
            f.write(source)


def add_auto_map(json_path: str, auto_map: dict, key: str | None = None) -> None:
    """Merges ``auto_map`` entries into a saved ``config.json`` / ``*_config.json`` (into its nested dict ``key`` when
    given and present)."""
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    target = data if key is None else data.get(key)
    if not isinstance(target, dict):
        return
    target["auto_map"] = {**target.get("auto_map", {}), **auto_map}
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """``enabled=False`` (``--quiet``) also silences transformers' own bars (shard writing, weight loading) and its
    warnings (config validation notes) for the block; errors still show."""
    from transformers.utils import logging as hf_logging

    was_enabled, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    if not enabled:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if not enabled:
            hf_logging.set_verbosity(verbosity)
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def save_folder(
    model: PreTrainedModel,
    out_dir: str,
    image_processor=None,
    model_card: str | None = None,
    max_shard_size: str = "5GB",
    remote_code: bool = True,
) -> str:
    """Saves weights (safetensors only), config, processor, model card and remote code into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    ours = type(model.config).__module__.startswith("big_vision_hf.")  # a transformers model (SiglipModel): no code
    modules = [type(model).__module__, type(model.config).__module__] if ours else []
    # transformers' own processors (Siglip2ImageProcessorPil of a Siglip2Model folder) need no code either
    our_processor = image_processor is not None and type(image_processor).__module__.startswith("big_vision_hf.")
    if image_processor is not None:
        image_processor.save_pretrained(out_dir)
        if our_processor:
            modules.append(type(image_processor).__module__)
    if remote_code:
        write_code(out_dir, remote_code_files(*modules))
        if ours:
            add_auto_map(os.path.join(out_dir, "config.json"), auto_map_for(model))
        if our_processor:
            proc_cls = type(image_processor)
            stem = proc_cls.__module__.rsplit(".", 1)[-1]
            add_auto_map(
                os.path.join(out_dir, "preprocessor_config.json"), {"AutoImageProcessor": f"{stem}.{proc_cls.__name__}"}
            )
    if model_card is not None:
        with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card)
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# Streaming writer: safetensors shards appended tensor by tensor
# ---------------------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _saved_names(model: torch.nn.Module) -> dict[str, str]:
    """``{state_dict name: name in the file}`` for the tensors ``save_pretrained`` writes: tied copies removed,
    transformers' load-time renamings reverted (PaliGemma files keep the legacy ``language_model.model.*``,
    ``vision_tower.vision_model.*`` names; ``from_pretrained`` maps them back)."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    kept = remove_tied_weights_from_state_dict(model.state_dict(), model)
    tagged = {name: torch.empty(0, device="meta") for name in kept}
    by_tensor = {id(t): name for name, t in tagged.items()}
    saved = revert_weight_conversion(model, tagged)
    names = {by_tensor[id(t)]: new for new, t in saved.items()}
    if set(names) != set(kept):
        raise CheckpointError("converter bug: transformers' saved-name mapping is not one-to-one for this model")
    return names


def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...], int]]) -> tuple[bytes, int]:
    """The safetensors header for ``(name, dtype, shape, nbytes)`` laid out in order; returns it and the data size."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0  # what save_pretrained passes as metadata
    for name, dtype, shape, nbytes in entries:
        meta[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                      "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps(meta, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)  # safetensors pads the header so that the data is 8-byte aligned
    return len(header).to_bytes(8, "little") + header, offset


#: Tensors that can be read by rows (``LazyArray.sliceable`` after their transform) are written in chunks of this size.
_WRITE_CHUNK_BYTES = 64 << 20


def _write_tensor(f, array: LazyArray, dtype: torch.dtype, scratch: list[torch.Tensor], what: str = "",
                  allow_nonfinite: bool = False) -> None:
    """Reads ``array`` (as stored: bf16 stays bf16), converts it to ``dtype`` in torch's C-contiguous layout and
    appends its bytes to ``f``. ``scratch`` holds one reused byte buffer (fresh pages cost more than the copy).
    NaN/Inf values are a `CheckpointError` naming ``what`` unless ``allow_nonfinite``."""
    source = to_torch(array.load_stored())  # often a strided view (a transposed kernel)
    if not allow_nonfinite:
        check_finite(source, what or array.name)
    if source.dtype == dtype and source.is_contiguous():
        tensor = source
    else:
        nbytes = source.numel() * torch.empty(0, dtype=dtype).element_size()
        if not scratch or scratch[0].numel() < nbytes:
            scratch[:] = [torch.empty(nbytes, dtype=torch.uint8)]
        tensor = scratch[0][:nbytes].view(dtype).view(source.shape)
        tensor.copy_(source)  # layout and dtype in one (multi-threaded) pass; bf16/f16 -> f32 is exact
    del source
    f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


def write_streamed_safetensors(
    mapped: dict[str, LazyArray],
    model: torch.nn.Module,
    out_dir: str,
    dtype: torch.dtype = torch.float32,
    max_shard_size: int | str = "5GB",
    progress: bool = False,
    allow_nonfinite: bool = False,
) -> list[str]:
    """Writes ``mapped`` as ``save_pretrained`` would write ``model``'s weights, one tensor in memory at a time.

    ``model`` may live on the ``meta`` device: it gives the names, the shapes (``check_fits``), the tied weights
    and the saved names. Shards are planned like ``save_pretrained`` (``split_torch_state_dict_into_shards``, the
    same file names and index), but ``safetensors.torch.save_file`` needs a whole shard in memory, so each shard's
    header is computed from the shapes and the tensors are appended to the open files as they are read (nothing of
    a shard stays in memory). Each layer of a stacked (scanned) array reads only its own bytes; a tensor whose
    transform is row-wise (identity: embedding, norms) is read and written in chunks of about
    ``_WRITE_CHUNK_BYTES``. Arrays are read in source order (the file sequentially). A NaN/Inf value is a
    `CheckpointError` naming the array unless ``allow_nonfinite``. Returns the weight files written.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from tqdm.auto import tqdm

    if sys.byteorder != "little":
        raise CheckpointError("safetensors files are little-endian; this writer needs a little-endian machine")
    if dtype not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"unsupported dtype {dtype}; use one of {', '.join(map(str, _SAFETENSORS_DTYPES))}")
    check_fits(mapped, model)
    names = _saved_names(model)
    position = {name: i for i, name in enumerate(mapped)}
    order = sorted(names, key=lambda k: (mapped[k].source, position[k]))  # stable: parts of one array together
    plan = split_torch_state_dict_into_shards(
        {names[k]: torch.empty(mapped[k].shape, dtype=dtype, device="meta") for k in order},
        filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size,
    )
    shard_of = plan.tensor_to_filename
    element = torch.empty(0, dtype=dtype).element_size()
    os.makedirs(out_dir, exist_ok=True)
    for stale in os.listdir(out_dir):  # weight files of an earlier save that are not rewritten
        if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", stale) and stale not in plan.filename_to_tensors:
            os.remove(os.path.join(out_dir, stale))
    files, expected, scratch = {}, {}, []
    try:
        for filename in plan.filename_to_tensors:
            entries = [(names[k], dtype, mapped[k].shape, math.prod(mapped[k].shape) * element)
                       for k in order if shard_of[names[k]] == filename]
            header, size = _header(entries)
            files[filename] = open(os.path.join(out_dir, filename), "wb")
            files[filename].write(header)
            expected[filename] = len(header) + size
        for key in tqdm(order, desc="converting", unit="tensor", disable=not progress):
            array, f = mapped[key], files[shard_of[names[key]]]
            nbytes = math.prod(array.shape) * element
            what = f"{array.name or key} (-> {key})"
            if array.sliceable and array.shape and nbytes > _WRITE_CHUNK_BYTES:
                step = max(1, _WRITE_CHUNK_BYTES * array.shape[0] // nbytes)  # rows per chunk
                for start in range(0, array.shape[0], step):
                    _write_tensor(f, array.rows(start, start + step), dtype, scratch, what, allow_nonfinite)
            else:
                _write_tensor(f, array, dtype, scratch, what, allow_nonfinite)
    finally:
        for f in files.values():
            f.close()
    for filename, size in expected.items():
        if os.path.getsize(os.path.join(out_dir, filename)) != size:
            raise CheckpointError(f"{filename}: wrote {os.path.getsize(os.path.join(out_dir, filename))} bytes, "
                                  f"expected {size}")
    index_path = os.path.join(out_dir, "model.safetensors.index.json")
    if plan.is_sharded:
        index = {"metadata": {"total_parameters": model.num_parameters(), **plan.metadata}, "weight_map": shard_of}
        with open(index_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    elif os.path.exists(index_path):
        os.remove(index_path)
    return list(plan.filename_to_tensors)


def add_text_processor(
    folder: str, vocab_file: str, preset: str | None = None, remote_code: bool = True, max_length: int | None = None
) -> "SiglipProcessor":  # noqa: F821 (imported in the body: transformers is heavy)
    """Adds big_vision's text pp to a converted two-tower folder and returns its ``SiglipProcessor``.

    Writes the tokenizer (``spiece.model`` and its ``tokenizers`` twin ``tokenizer.json``, the same ids: `fast_twin`;
    ``tokenizer_config.json``) and ``processor_config.json``; with ``remote_code`` also the tokenizer and image
    processor code and their ``auto_map`` (`add_processing_code`), so the folder loads with
    ``trust_remote_code=True`` where ``big_vision_hf`` is not installed.

    Args:
        folder: a folder written by ``big-vision-hf convert`` for ``proj.image_text.two_towers``.
        vocab_file: the SentencePiece model the checkpoint was trained with (LiT: the BERT ``vocab.txt``).
        preset: ``"siglip"`` (c4_en / mc4: pad 1) or ``"siglip2"`` (Gemma: pad ``<pad>``), see `BvTextTokenizer`;
            ``"bert"`` (LiT's ``bert_tokenize``), see `BvBertTokenizer`; ``None``: the text tower's (``"bert"``
            for a BERT tower, else ``"siglip"``).
        max_length: the text length; default: the text tower's posemb length, or 16 for BERT (LiT's
            ``token_len``).
    """
    from transformers import AutoConfig, AutoImageProcessor, SiglipProcessor

    from ..processing.processing_bv_two_towers import text_tokenizer_for

    config = AutoConfig.from_pretrained(folder)
    if not hasattr(config, "text_config"):
        raise ValueError(f"{folder}: not a two-tower model folder (config has no text_config)")
    tokenizer = fast_twin(text_tokenizer_for(config, vocab_file, preset, max_length))
    processor = SiglipProcessor(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    if remote_code:
        add_processing_code(folder, processor)
    return processor


# ---------------------------------------------------------------------------------------------------------
# Processors, tokenizers and image processors: the same flat code + auto_map as the models
# ---------------------------------------------------------------------------------------------------------


def _ours(obj) -> bool:
    return obj is not None and type(obj).__module__.startswith("big_vision_hf.")


def _ref(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def fast_twin(tokenizer):
    """The ``tokenizers``-backed twin of one of our SentencePiece tokenizers (the same ids), else ``tokenizer``."""
    from ..processing.tokenization_fast import FAST_TWINS

    fast = FAST_TWINS.get(type(tokenizer))
    return fast.from_slow(tokenizer) if fast is not None else tokenizer


def add_processing_code(folder: str, *objects) -> None:
    """Makes a folder's processing classes load where ``big_vision_hf`` is not installed, as the models do: for each
    of our processors, tokenizers and image processors among ``objects`` (a processor brings its components), the
    flat code of its module (and their relative imports) and its ``auto_map`` entry in the JSON file it saved
    (``processor_config.json`` ``AutoProcessor``, ``tokenizer_config.json`` ``AutoTokenizer`` as ``[slow, fast]``,
    ``preprocessor_config.json`` ``AutoImageProcessor``). transformers' own classes need nothing."""
    from transformers import PreTrainedTokenizerBase
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.processing_utils import ProcessorMixin

    modules, entries = [], []
    pending = [o for o in objects if o is not None]
    while pending:
        obj = pending.pop()
        if isinstance(obj, ProcessorMixin):
            pending += [getattr(obj, name, None) for name in ("tokenizer", "image_processor")]
            if _ours(obj):
                entries.append(("processor_config.json", {"AutoProcessor": _ref(type(obj))}))
                modules.append(type(obj).__module__)
        elif not _ours(obj):
            continue
        elif isinstance(obj, PreTrainedTokenizerBase):
            slow = getattr(type(obj), "slow_tokenizer_class", None) if obj.is_fast else type(obj)
            fast = type(obj) if obj.is_fast else None
            modules += [cls.__module__ for cls in (slow, fast) if cls is not None]
            entries.append(("tokenizer_config.json",
                            {"AutoTokenizer": [_ref(slow) if slow else None, _ref(fast) if fast else None]}))
        elif isinstance(obj, ImageProcessingMixin):
            modules.append(type(obj).__module__)
            entries.append(("preprocessor_config.json", {"AutoImageProcessor": _ref(type(obj))}))
            # a processor saves its image processor inside processor_config.json ("image_processor": {...})
            entries.append(("processor_config.json:image_processor", {"AutoImageProcessor": _ref(type(obj))}))
    if modules:
        write_code(folder, remote_code_files(*modules))
    for target, auto_map in entries:
        filename, _, key = target.partition(":")
        path = os.path.join(folder, filename)
        if os.path.exists(path):
            add_auto_map(path, auto_map, key or None)
