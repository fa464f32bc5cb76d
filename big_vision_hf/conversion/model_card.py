"""Model cards (``README.md`` with Hub metadata): one renderer, :func:`render_model_card`, that every writer passes
its data to (converted folders: :func:`conversion_card`; PaliGemma's streamed folders; transfer results)."""

from __future__ import annotations

import json
import os
import re

from transformers import PreTrainedModel

from .zoo import CheckpointEntry


def pipeline_tag_for(model: PreTrainedModel) -> str:
    """The Hub pipeline tag from the Auto class the model's class is registered under."""
    from transformers import (
        AutoModelForImageClassification,
        AutoModelForImageTextToText,
        AutoModelForZeroShotImageClassification,
    )

    for auto_cls, tag in ((AutoModelForImageClassification, "image-classification"),
                          (AutoModelForZeroShotImageClassification, "zero-shot-image-classification"),
                          (AutoModelForImageTextToText, "image-text-to-text")):
        try:
            if auto_cls._model_mapping[type(model.config)] is type(model):
                return tag
        except KeyError:
            pass
    return "image-feature-extraction"


#: A Hub model id (``owner/name``); anything else (a local path, a description) is not a valid ``base_model``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: big_vision PaliGemma checkpoint files whose Hub repository is known: ``paligemma-3b-pt-224.npz``,
#: ``paligemma2-10b-mix-448.b16.npz`` ... -> ``google/paligemma-3b-pt-224``, ``google/paligemma2-10b-mix-448``.
_PALIGEMMA_FILE = re.compile(r"(paligemma2?)-(3b|10b|28b)-(pt|mix)-(224|448|896)")


def hub_id(value: str | None) -> str | None:
    """``value`` if it is a Hub model id (not a local path), else ``None``: what ``base_model`` may hold."""
    if not value or os.path.exists(value) or not _HUB_ID.match(value):
        return None
    return value


def known_hub_id(checkpoint: str | None) -> str | None:
    """The Hub repository of a known big_vision checkpoint file (PaliGemma 1 and 2 releases), else ``None``."""
    m = _PALIGEMMA_FILE.search(os.path.basename(str(checkpoint or "")).lower())
    return f"google/{'-'.join(m.groups())}" if m else None


def eval_results_index(model_name: str, results: list[dict]) -> list[dict]:
    """The Hub's ``model-index`` for ``results``: each ``{"task": pipeline tag, "dataset": name, "dataset_type": id,
    "split": ..., "metrics": {name: value}}``."""
    entries = []
    for r in results:
        dataset = {"name": r["dataset"], "type": r.get("dataset_type") or r["dataset"]}
        if r.get("split"):
            dataset["split"] = r["split"]
        metrics = [{"type": k, "value": float(v), "name": k} for k, v in r["metrics"].items()
                   if isinstance(v, (int, float)) and v == v]  # NaN is not a value
        entries.append({"task": {"type": r["task"]}, "dataset": dataset, "metrics": metrics})
    return [{"name": model_name, "results": entries}]


def render_model_card(
    title: str,
    sections: list[tuple[str | None, str | list[str]]],
    *,
    pipeline_tag: str,
    tags: list[str],
    library_name: str = "transformers",
    license: str | None = None,
    base_model: str | None = None,
    eval_results: list[dict] | None = None,
    metadata: dict | None = None,
) -> str:
    """``README.md`` text: YAML front matter, ``# title``, then each ``(heading, content)`` section in order.

    ``content`` is a paragraph (or a code block) as text, or a list of bullet items; a ``None`` heading puts it
    right under the title. Front matter as the Hub reads it: ``license``; ``base_model`` only when it is a Hub id
    (:func:`hub_id`; a local path or a description is left out); ``eval_results`` as ``model-index``
    (:func:`eval_results_index`); ``metadata``: more keys (``source_checkpoint``), written as JSON scalars.
    """
    import yaml

    front = ["---", f"library_name: {library_name}", f"pipeline_tag: {pipeline_tag}"]
    if license:
        front.append(f"license: {license}")
    if hub_id(base_model):
        front.append(f"base_model: {base_model}")
    front += ["tags:", *[f"- {tag}" for tag in tags]]
    front += [f"{key}: {json.dumps(value)}" for key, value in (metadata or {}).items()]
    if eval_results:
        index = {"model-index": eval_results_index(title, eval_results)}
        front += yaml.safe_dump(index, sort_keys=False, allow_unicode=True).rstrip("\n").split("\n")
    lines = [*front, "---", "", f"# {title}", ""]
    for heading, content in sections:
        if heading:
            lines += [f"## {heading}", ""]
        lines += [content] if isinstance(content, str) else [f"- {item}" for item in content]
        lines.append("")
    return "\n".join(lines)


def conversion_card(
    model: PreTrainedModel,
    family: str,
    checkpoint: str,
    entry: CheckpointEntry | None = None,
    preprocessing: str = "",
    parity_note: str = "",
    usage: str = "",
) -> str:
    """The card of a converted folder: usage (the family's ``usage``, else the one of its pipeline tag), and where it
    came from."""
    tag = pipeline_tag_for(model)
    arch = type(model).__name__
    source = entry.url if entry else os.path.basename(checkpoint)
    license_ = entry.license if entry else "apache-2.0"
    tags = ["big_vision", "big_vision_hf", model.config.model_type, family.replace(".", "-")]
    n_params = sum(p.numel() for p in model.parameters())
    title = entry.name if entry else os.path.splitext(os.path.basename(checkpoint.split(":")[0]))[0]
    if usage:
        pass
    elif tag == "image-classification":
        usage = """```python
from transformers import pipeline

classifier = pipeline("image-classification", model="path/to/this/folder", trust_remote_code=True)
classifier("cat.jpg")
```

or, with `pip install big_vision_hf` (no remote code needed):

```python
import big_vision_hf  # registers the classes
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("path/to/this/folder")
model = AutoModelForImageClassification.from_pretrained("path/to/this/folder")
logits = model(**processor(Image.open("cat.jpg"), return_tensors="pt")).logits
print(model.config.id2label[logits.argmax(-1).item()])
```"""
    elif tag == "zero-shot-image-classification":
        usage = """```python
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="path/to/this/folder", trust_remote_code=True)
classifier("cat.jpg", candidate_labels=["a cat", "a dog"])
```

The text side needs the tokenizer saved with the folder (`big-vision-hf convert ... --tokenizer FILE`)."""
    elif tag == "image-text-to-text":
        usage = """```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

processor = AutoProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained("path/to/this/folder", trust_remote_code=True)
inputs = processor(images=Image.open("cat.jpg"), text="", return_tensors="pt")  # text: the prompt ("" = none)
ids = model.generate(**inputs)  # greedy; num_beams=4 for beam search
print(processor.batch_decode(ids, skip_special_tokens=True))

pipe = pipeline("image-to-text", model="path/to/this/folder", trust_remote_code=True)
pipe(Image.open("cat.jpg"), text="")
```

The processor needs the tokenizer saved with the folder (`big-vision-hf convert ... --tokenizer FILE`)."""
    else:
        usage = """```python
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)
model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
features = model(**processor(Image.open("cat.jpg"), return_tensors="pt")).pooler_output
```"""
    provenance = [
        f"Source checkpoint: `{source}`",
        f"big_vision model: `{family}`, `config.model = {json.dumps(getattr(model.config, 'bv_model_config', {}))}`",
        f"Parameters: {n_params:,}",
    ]
    if entry and entry.paper:
        provenance.append(f"Paper: {entry.paper}")
    if preprocessing:
        provenance.append(f"Preprocessing (big_vision pp string reproduced by the image processor): `{preprocessing}`")
    if parity_note:
        provenance.append(f"Parity: {parity_note}")
    intro = (
        f"A [big_vision](https://github.com/google-research/big_vision) `{family}` checkpoint converted to PyTorch "
        "with `big_vision_hf` (`big-vision-hf convert`). "
        "The conversion is strict: every array of the checkpoint was used and every parameter filled."
    )
    return render_model_card(
        f"{title} ({arch})", [(None, intro), ("Usage", usage), ("Provenance", provenance)], pipeline_tag=tag,
        tags=tags, license=license_, base_model=known_hub_id(source), metadata={"source_checkpoint": source},
    )
