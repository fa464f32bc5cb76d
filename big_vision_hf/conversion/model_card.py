"""Model cards (``README.md`` with Hub metadata): one renderer, :func:`render_model_card`, that every writer passes
its data to (converted folders: :func:`conversion_card`; PaliGemma's streamed folders; transfer results)."""

from __future__ import annotations

import json
import os

from transformers import PreTrainedModel

from .zoo import CheckpointEntry


def pipeline_tag_for(model: PreTrainedModel) -> str:
    """The Hub pipeline tag from the Auto class the model's class is registered under."""
    from transformers import AutoModelForImageClassification, AutoModelForZeroShotImageClassification

    for auto_cls, tag in ((AutoModelForImageClassification, "image-classification"),
                          (AutoModelForZeroShotImageClassification, "zero-shot-image-classification")):
        try:
            if auto_cls._model_mapping[type(model.config)] is type(model):
                return tag
        except KeyError:
            pass
    return "image-feature-extraction"


def render_model_card(
    title: str,
    sections: list[tuple[str | None, str | list[str]]],
    *,
    pipeline_tag: str,
    tags: list[str],
    library_name: str = "transformers",
    license: str | None = None,
    metadata: dict | None = None,
) -> str:
    """``README.md`` text: YAML front matter, ``# title``, then each ``(heading, content)`` section in order.

    ``content`` is a paragraph (or a code block) as text, or a list of bullet items; a ``None`` heading puts it
    right under the title. ``metadata``: more front-matter keys (``source_checkpoint``, ``base_model``), written as
    JSON scalars.
    """
    front = ["---", f"library_name: {library_name}", f"pipeline_tag: {pipeline_tag}"]
    if license:
        front.append(f"license: {license}")
    front += ["tags:", *[f"- {tag}" for tag in tags]]
    front += [f"{key}: {json.dumps(value)}" for key, value in (metadata or {}).items()]
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
) -> str:
    """The card of a converted folder: usage for its pipeline tag, and where it came from."""
    tag = pipeline_tag_for(model)
    arch = type(model).__name__
    source = entry.url if entry else os.path.basename(checkpoint)
    license_ = entry.license if entry else "apache-2.0"
    tags = ["big_vision", "big_vision_hf", model.config.model_type, family.replace(".", "-")]
    n_params = sum(p.numel() for p in model.parameters())
    title = entry.name if entry else os.path.splitext(os.path.basename(checkpoint.split(":")[0]))[0]
    if tag == "image-classification":
        usage = f"""```python
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
        tags=tags, license=license_, metadata={"source_checkpoint": source},
    )
