"""Model cards (``README.md`` with Hub metadata) for converted folders."""

from __future__ import annotations

import json
import os

from transformers import PreTrainedModel

from .registry import CheckpointEntry

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
    model: PreTrainedModel,
    family: str,
    checkpoint: str,
    entry: CheckpointEntry | None = None,
    preprocessing: str = "",
    parity_note: str = "",
) -> str:
    """A model card: YAML front matter (library_name, pipeline_tag, tags, license, source) + usage + provenance."""
    tag = pipeline_tag_for(model)
    arch = type(model).__name__
    source = entry.url if entry else os.path.basename(checkpoint)
    license_ = entry.license if entry else "apache-2.0"
    tags = ["big_vision", "big_vision_hf", model.config.model_type, family.replace(".", "-")]
    n_params = sum(p.numel() for p in model.parameters())
    front = "\n".join(
        [
            "---",
            "library_name: transformers",
            f"pipeline_tag: {tag}",
            f"license: {license_}",
            "tags:",
            *[f"- {t}" for t in tags],
            f"source_checkpoint: {json.dumps(source)}",
            "---",
        ]
    )
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

The text side needs the tokenizer saved with the folder (`big_vision_hf.processing.processing_bv_two_towers.add_text_processor`)."""
    else:
        usage = """```python
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)
model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
features = model(**processor(Image.open("cat.jpg"), return_tensors="pt")).pooler_output
```"""
    lines = [
        front,
        "",
        f"# {title} ({arch})",
        "",
        f"A [big_vision](https://github.com/google-research/big_vision) `{family}` checkpoint converted to PyTorch "
        "with `big_vision_hf` (`big-vision-hf convert`). "
        "The conversion is strict: every array of the checkpoint was used and every parameter filled.",
        "",
        "## Usage",
        "",
        usage,
        "",
        "## Provenance",
        "",
        f"- Source checkpoint: `{source}`",
        f"- big_vision model: `{family}`, `config.model = {json.dumps(getattr(model.config, 'bv_model_config', {}))}`",
        f"- Parameters: {n_params:,}",
    ]
    if entry and entry.paper:
        lines.append(f"- Paper: {entry.paper}")
    if preprocessing:
        lines.append(f"- Preprocessing (big_vision pp string reproduced by the image processor): `{preprocessing}`")
    if parity_note:
        lines.append(f"- Parity: {parity_note}")
    return "\n".join(lines) + "\n"
