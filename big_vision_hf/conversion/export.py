"""Writing a converted model as a Hub-ready folder.

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

import importlib
import json
import os
import re
import sys

from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    PreTrainedModel,
)

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


def add_auto_map(json_path: str, auto_map: dict) -> None:
    """Merges ``auto_map`` entries into a saved ``config.json`` / ``*_config.json``."""
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    data["auto_map"] = {**data.get("auto_map", {}), **auto_map}
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


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
