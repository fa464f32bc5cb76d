"""An interactive demo of a converted or fine-tuned folder in the browser (``big-vision-hf app FOLDER``), with Gradio
(``pip install 'big_vision_hf[app]'``), as PaliGemma's releases came with a Space.

- PaliGemma: an image and a task (caption, answer a question, detect objects, segment objects, or a free prompt)
  -> the generated text, and the decoded ``<loc>`` boxes (and, with ``--vqvae``, the ``<seg>`` masks) drawn on the
  image (``paligemma_decoding``);
- SigLIP / two-tower models: an image and labels -> each label's score (sigmoid for SigLIP, as trained);
- image classifiers: an image -> the top 5 classes.

:func:`predictor` is the model side (a plain function per folder kind, used by the app and testable without a
browser); :func:`build_app` lays out the page; :func:`launch` serves it (on 127.0.0.1 unless ``host`` says
otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["PALIGEMMA_TASKS", "build_app", "folder_kind", "launch", "paligemma_prompt", "predictor"]

#: task -> prompt template (big_vision's PaliGemma prompts; ``{}`` is the text box).
PALIGEMMA_TASKS = {
    "caption": "caption en",
    "answer": "answer en {}",
    "detect": "detect {}",
    "segment": "segment {}",
    "prompt": "{}",
}


def paligemma_prompt(task: str, text: str) -> str:
    if task not in PALIGEMMA_TASKS:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(PALIGEMMA_TASKS)}")
    return PALIGEMMA_TASKS[task].format(text.strip())


def folder_kind(folder: str) -> str:
    """``"paligemma"``, ``"zero-shot"`` or ``"classification"`` for a folder, from its config's registered
    classes; anything else is a ``ValueError``."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForZeroShotImageClassification

    import big_vision_hf  # noqa: F401  registers our classes

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder}: no config.json (give a folder written by big-vision-hf convert / transfer)")
    config = AutoConfig.from_pretrained(folder)
    if config.model_type == "paligemma":
        return "paligemma"
    if type(config) in AutoModelForZeroShotImageClassification._model_mapping:
        return "zero-shot"
    if type(config) in AutoModelForImageClassification._model_mapping:
        return "classification"
    raise ValueError(f"{folder}: no demo for a {config.model_type!r} model (PaliGemma, SigLIP / two towers and "
                     "image classifiers have one)")


def predictor(folder: str, vqvae: str | None = None) -> tuple[str, Callable]:
    """``(kind, fn)`` for a folder (:func:`folder_kind`). ``fn``:

    - PaliGemma: ``fn(image, task, text) -> (generated text, annotated PIL image)``;
    - zero-shot: ``fn(image, labels) -> {label: score}`` (``labels``: comma-separated);
    - classification: ``fn(image) -> {class: probability}`` (top 5).
    """
    import torch
    from transformers import pipeline

    kind = folder_kind(folder)
    if kind == "zero-shot":
        classify = pipeline("zero-shot-image-classification", model=folder)

        def zero_shot(image, labels: str) -> dict[str, float]:
            names = [x.strip() for x in str(labels).split(",") if x.strip()]
            if image is None or not names:
                return {}
            return {r["label"]: float(r["score"]) for r in classify(image, candidate_labels=names,
                                                                     hypothesis_template="{}")}

        return kind, zero_shot
    if kind == "classification":
        classify = pipeline("image-classification", model=folder)

        def top5(image) -> dict[str, float]:
            return {} if image is None else {r["label"]: float(r["score"]) for r in classify(image, top_k=5)}

        return kind, top5

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .processing.paligemma_decoding import decode_detections, decode_segmentation, draw_objects

    config_gemma2 = "gemma2" in open(os.path.join(folder, "config.json"), encoding="utf-8").read()
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager" if config_gemma2
                                                        else "sdpa").eval()
    processor = AutoProcessor.from_pretrained(folder)
    vae = None
    if vqvae:
        from transformers import AutoModel

        vae = AutoModel.from_pretrained(vqvae).eval()
    max_new_tokens = processor.text_len or 64

    def paligemma(image, task: str, text: str):
        if image is None:
            return "", None
        image = image.convert("RGB")
        inputs = processor(images=[image], text=[paligemma_prompt(task, text)], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = processor.post_process_generation(out, inputs["input_ids"])[0]
        size = (image.height, image.width)
        objects = (decode_segmentation(generated, size, vae) if vae is not None and "<seg" in generated
                   else decode_detections(generated, size))
        return generated, draw_objects(image, objects)

    return kind, paligemma


def build_app(folder: str, vqvae: str | None = None):
    """The Gradio page of a folder (see the module docstring)."""
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("big-vision-hf app needs Gradio: pip install 'big_vision_hf[app]'") from None

    kind, fn = predictor(folder, vqvae)
    title = f"big_vision_hf: {os.path.basename(os.path.abspath(folder))}"
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", elem_id="image")
                if kind == "paligemma":
                    task = gr.Radio(list(PALIGEMMA_TASKS), value="caption", label="task", elem_id="task")
                    text = gr.Textbox(label="question / objects / prompt", elem_id="text",
                                      placeholder="what is in the picture? | cat ; dog")
                    inputs = [image, task, text]
                elif kind == "zero-shot":
                    inputs = [image, gr.Textbox(label="labels (comma-separated)", value="a cat, a dog",
                                                elem_id="labels")]
                else:
                    inputs = [image]
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                if kind == "paligemma":
                    outputs = [gr.Textbox(label="generated text", elem_id="output-text"),
                               gr.Image(type="pil", label="boxes and masks", elem_id="output-image")]
                else:
                    outputs = [gr.Label(num_top_classes=5, label="scores", elem_id="output-label")]
        run.click(fn, inputs=inputs, outputs=outputs)
    return demo


def launch(folder: str, vqvae: str | None = None, host: str = "127.0.0.1", port: int = 7860, share: bool = False):
    """Serves :func:`build_app` (blocks until interrupted)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    build_app(folder, vqvae).launch(server_name=host, server_port=port, share=share, show_error=True)
