"""One PaliGemma transfer end to end: data -> evaluate (untrained) -> train -> evaluate -> a Hub-ready folder.

This is what ``big-vision-hf transfer`` and ``big-vision-hf evaluate`` run. Two ways in:

- **Built-in default** (no ``model``): a tiny ``PaliGemmaForConditionalGeneration`` made from scratch, a
  SentencePiece tokenizer trained on the spot (on the synthetic texts plus the given data's prefixes and
  suffixes) and, without ``data``, the synthetic shapes dataset of :mod:`~big_vision_hf.transfer.synthetic`
  (captions, counts, boxes, masks through a VQ-VAE trained on the spot). It finishes in minutes on a laptop CPU
  and visibly learns. Hyperparameters then default to the tiny-model recipe (``synthetic.TINY_HPARAMS``: lr 1e-3,
  24 epochs, batch 32), since big_vision's values fine-tune a pretrained 3B model.
- **A converted PaliGemma** (``model=DIR``, written by ``big-vision-hf convert ... --tokenizer
  paligemma_tokenizer.model``): the task's big_vision recipe (:mod:`~big_vision_hf.transfer.tasks`) on the
  user's data (:func:`~big_vision_hf.transfer.data.prepare_dataset`).

Each way in is one set-up function returning the model, processor, data and the run's
:class:`~big_vision_hf.transfer.recipe.Recipe` (every hyperparameter, resolved once with the command's overrides);
the recipe is printed before training and saved in ``metrics.json``.

The result folder::

    OUT/
      model.safetensors, config.json, generation_config.json   # merged weights (or adapter_* with adapter_only)
      tokenizer.model, processor/tokenizer configs              # BvPaliGemmaProcessor.from_pretrained(OUT)
      README.md                                                  # model card: task, data, recipe, metrics
      metrics.json                                               # before / after, the settings
      training_curves.png                                        # loss per step, metric before -> after
      eval_before/ eval_after/                                   # predictions.jsonl + metrics.json
      samples/                                                   # decoded boxes / masks drawn (detection tasks)
      checkpoints/                                               # Trainer checkpoints

A run writes into ``OUT.partial/`` beside the target and renames it to ``OUT`` at the end, so ``OUT`` exists only
complete; an existing ``OUT`` is replaced only with ``overwrite`` (``--overwrite``). A run killed (or stopped by
an error after its first checkpoint) leaves ``OUT.partial/``: ``resume`` (``--resume``) continues it from its newest
whole checkpoint (``training.last_complete_checkpoint``, which says which one it takes and skips a checkpoint that
was being written). ``evaluate`` writes its folder the same way (``atomic.atomic_folder``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
from collections.abc import Mapping, Sequence

import torch
from PIL import Image

from . import synthetic
from .distributed import (
    check_launcher,
    fsdp_training_args,
    gather_model,
    is_main_process,
    main_process_first,
    sharded_training,
)
from .feature_cache import check_feature_cache
from .recipe import Recipe
from .reporting import check_report_to, eval_loss_rows, plot_curves
from .tasks import get_task

__all__ = ["TransferOutcome", "load_model_and_processor", "partial_folder", "run_evaluate", "run_transfer"]


@dataclasses.dataclass
class TransferOutcome:
    """What :func:`run_transfer` returns."""

    output_dir: str
    metrics_before: dict[str, dict[str, float]]
    metrics_after: dict[str, dict[str, float]]
    losses: list[tuple[int, float]]
    trainable_parameters: int
    total_parameters: int


# ---------------------------------------------------------------------------------------------------------
# Model and processor
# ---------------------------------------------------------------------------------------------------------


def load_model_and_processor(model_dir: str, *, dtype: torch.dtype = torch.float32, attention: str = "auto"):
    """A converted PaliGemma folder -> ``(PaliGemmaForConditionalGeneration, BvPaliGemmaProcessor)``.

    ``attention`` (``--attention``): the language model's implementation, ``"auto"`` by
    :func:`~big_vision_hf.modeling.paligemma_attention.choose_attention`: Gemma 2 (PaliGemma 2, soft-capped
    attention logits, which ``sdpa`` cannot do) gets flex attention where it runs, else ``eager``; PaliGemma 1
    ``sdpa`` (exact with ``token_type_ids``, which the processor always returns). The SigLIP tower keeps ``sdpa``.
    The choice is made for the CPU, where the model is loaded and evaluated before training, also on a machine with
    a GPU: ``bv_flex_attention``, which is transformers' ``flex_attention`` once the model is on the GPU (torch's own
    CPU flex kernel fails to compile the decoding steps of ``generate``)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    from ..processing.processing_paligemma import BvPaliGemmaProcessor

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model {model_dir}: no such folder (give a folder written by "
                                "`big-vision-hf convert ... --model-name proj.paligemma.paligemma`)")
    try:
        config = PaliGemmaConfig.from_pretrained(model_dir)
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise ValueError(f"--model {model_dir}: not a PaliGemma folder ({type(e).__name__}: {e})".splitlines()[0])
    if config.model_type != "paligemma":
        raise ValueError(f"--model {model_dir}: a {config.model_type!r} model, transfer needs PaliGemma")
    if not os.path.exists(os.path.join(model_dir, "tokenizer.model")):
        raise FileNotFoundError(f"--model {model_dir}: no tokenizer.model; convert with `--tokenizer "
                                "paligemma_tokenizer.model` (the checkpoint does not contain the tokenizer)")
    from ..modeling.paligemma_attention import load_kwargs

    kwargs = load_kwargs(config, "cpu", requested=attention)
    print(f"language-model attention: {kwargs['attn_implementation']['text_config']}")
    model = PaliGemmaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, **kwargs)
    processor = BvPaliGemmaProcessor.from_pretrained(model_dir)
    return model, processor


def _tiny_model_and_processor(out_dir: str, texts: Sequence[str], seed: int):
    from ..processing.tokenization_paligemma import BvPaliGemmaTokenizer

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.model")
    with main_process_first():  # under a launcher the other processes load the main one's (the same vocabulary)
        tokenizer = (synthetic.make_tokenizer(path, extra_texts=list(texts)) if is_main_process()
                     else BvPaliGemmaTokenizer(path))
    return synthetic.make_model(tokenizer, seed=seed), synthetic.make_processor(tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def _split_eval(train, eval_fraction: float, max_eval: int, seed: int):
    """Holds out ``min(max_eval, eval_fraction * n)`` examples (seeded) when no evaluation data is given."""
    n = len(train)
    k = min(max_eval, max(1, int(round(eval_fraction * n)))) if n > 1 else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held, kept = sorted(order[:k]), sorted(order[k:])
    return train.select(kept), train.select(held)


def _user_data(data, eval_data, task, *, split, eval_split, column_map, skip_bad, seed, eval_limit, vqvae):
    from .data import prepare_dataset

    if task.num_frames > 1:  # video tasks: records with `video` (transfer/video.py)
        from .video import load_video_dataset

        train = load_video_dataset(data, task, split=split, column_map=column_map, train=True, seed=seed)
        if eval_data is not None or eval_split is not None:
            evaluation = load_video_dataset(data if eval_data is None else eval_data, task, column_map=column_map,
                                            split=eval_split, seed=seed, limit=eval_limit)
        else:
            train, evaluation = _split_eval(train, 0.1, 256, seed)
        return train, evaluation
    common = dict(column_map=column_map, skip_bad=skip_bad, seed=seed, vqvae=vqvae)
    train = prepare_dataset(data, task, split=split, **common)
    if eval_data is not None:
        evaluation = prepare_dataset(eval_data, task, split=eval_split, expand="list", **common)
    elif eval_split is not None:
        evaluation = prepare_dataset(data, task, split=eval_split, expand="list", **common)
    else:
        train, evaluation = _split_eval(train, 0.1, 256, seed)
        print(f"no evaluation data given: holding out {len(evaluation)} of {len(train) + len(evaluation)} "
              "training examples (pass --eval-data for a separate set)")
    if eval_limit:
        evaluation = evaluation.select(range(min(eval_limit, len(evaluation))))
    return train, evaluation


def _texts(rows) -> list[str]:
    out = []
    for r in rows:
        for key in ("prefix", "suffix"):
            v = r.get(key)
            out.extend([v] if isinstance(v, str) else list(v or []))
    return out


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------


def _evaluate_all(model, processor, evaluation, recipe, out_dir, batch_size, progress, vqvae=None) -> dict[str, dict]:
    """Scores ``evaluation`` with the recipe's metric; the synthetic mixture scores each kind with its own task's.
    ``vqvae`` decodes ``<seg>`` tokens for the segmentation metric (mIoU; without it only the boxes are scored)."""
    from .evaluation import evaluate

    def scores(rows, rows_recipe, rows_dir):
        extra = {"vqvae": vqvae} if rows_recipe.metric == "segmentation" and vqvae is not None else None
        return evaluate(model, processor, rows, rows_recipe, batch_size=batch_size, metric_kwargs=extra,
                        output_dir=rows_dir, progress=progress).metrics

    if recipe.name == "synthetic":
        results = {}
        for kind in synthetic.SYNTHETIC_TASKS["synthetic"].kinds:
            sub = synthetic.SYNTHETIC_TASKS[f"synthetic_{kind}"]
            rows = [r for r in evaluation if r.get("task") == kind]
            if rows:
                results[sub.name] = scores(rows, sub.recipe(), os.path.join(out_dir, kind))
        return results
    return {recipe.name: scores(evaluation, recipe, out_dir)}


def _draw_samples(model, processor, rows, out_dir: str, max_new_tokens: int, vqvae=None, limit: int = 6) -> list[str]:
    """Predicted boxes (and, with ``vqvae``, masks) of detection / segmentation prompts drawn on their images."""
    from ..processing.paligemma_decoding import decode_detections, decode_segmentation, draw_objects

    rows = ([r for r in rows if str(r.get("prefix", "")).startswith("detect")][:limit // 2]
            + [r for r in rows if str(r.get("prefix", "")).startswith("segment")][:limit // 2])
    if not rows:
        return []
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    inputs = processor(images=[r["image"] for r in rows], text=[r["prefix"] for r in rows], padding=True,
                       padding_side="left", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
    paths = []
    for i, (row, text) in enumerate(zip(rows, processor.post_process_generation(out, inputs["input_ids"]))):
        image = row["image"].convert("RGB")
        if image.width < 128:  # the synthetic 64 px images: draw at 4x so labels stay readable
            image = image.resize((image.width * 4, image.height * 4), Image.NEAREST)
        size = (image.height, image.width)
        objects = (decode_segmentation(text, size, vqvae) if vqvae is not None and "<seg" in text
                   else decode_detections(text, size))
        path = os.path.join(out_dir, f"{'segment' if row['prefix'].startswith('segment') else 'detect'}_{i}.png")
        draw_objects(image, objects).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------


def _model_card(recipe, data_desc: str, base: str, lora, adapter_only: bool, before: dict, after: dict,
                n_train: int, n_eval: int, steps: int) -> str:
    """The transfer folder's card: license and ``base_model`` (a Hub id when the base folder's card gives one, else
    left out), the results as ``model-index``, and a usage snippet that runs as written on the folder."""
    from ..conversion.model_card import render_model_card
    from .reporting import base_model_info

    base_id, base_license = base_model_info(base)
    rows = "\n".join(
        f"| {name} | {k} | {before.get(name, {}).get(k, float('nan')):.4g} | {v:.4g} |"
        for name, metrics in after.items() for k, v in metrics.items() if k not in ("total", "invalid"))
    how = "LoRA adapter (PEFT)" if adapter_only else ("LoRA, merged into the weights" if lora else "full fine-tuning")
    tiny = not os.path.isdir(str(base))
    base_desc = ("a tiny PaliGemma built from scratch (random initialisation)" if tiny
                 else f"`{base_id}`" if base_id else f"a converted PaliGemma folder (`{os.path.basename(base)}`)")
    intro = f"""Fine-tuned with `big-vision-hf transfer` ({how}) following big_vision's PaliGemma transfer recipe:
prompts `[BOS] prefix "\\n" suffix [EOS]` with a prefix-LM mask (`token_type_ids`), loss on the suffix only (per-example
mean, then batch mean), Adam (b2 {recipe.b2}), grad-norm clip 1.0, cosine schedule with 5% warmup, weight decay
{recipe.wd} on kernels only{', ViT frozen' if recipe.freeze_vit else ''}."""
    facts = [
        f"Base model: {base_desc}",
        f"Data: {data_desc} ({n_train} training examples, {n_eval} evaluation examples)",
        f"Steps: {steps}; lr {recipe.lr}; batch {recipe.batch_size}; label smoothing {recipe.label_smoothing};\n"
        f"  LLM dropout {recipe.llm_dropout}; text_len {recipe.text_len}",
        f"Decoding: {recipe.decoding}, up to {recipe.max_new_tokens} tokens; metric `{recipe.metric}`",
    ]
    results = f"""| task | metric | before | after |
|---|---|---|---|
{rows}

![training curves](training_curves.png)"""
    prompt = recipe.prefix if isinstance(getattr(recipe, "prefix", None), str) and "{" not in recipe.prefix else \
        "caption en"
    base_ref = base_id or "path/to/the/base/model"
    load = (f'from peft import PeftModel\n\nbase = AutoModelForImageTextToText.from_pretrained("{base_ref}")\n'
            'model = PeftModel.from_pretrained(base, folder)' if adapter_only else
            "model = AutoModelForImageTextToText.from_pretrained(folder)")
    usage = f"""`trust_remote_code=True` loads big_vision's PaliGemma processor from this folder where
`big_vision_hf` is not installed (with it installed, it is not needed).

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder = "path/to/this/folder"  # or its Hub repo id
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
{load}
image = Image.open("cat.jpg").convert("RGB")
inputs = processor(images=[image], text=[{prompt!r}], return_tensors="pt")  # token_type_ids included
out = model.generate(**inputs, max_new_tokens={recipe.max_new_tokens}, do_sample=False)
print(processor.post_process_generation(out, inputs["input_ids"])[0])
```"""
    eval_results = [{"task": "image-text-to-text", "dataset": name, "dataset_type": name, "split": "validation",
                     "metrics": {k: v for k, v in metrics.items() if k not in ("total", "invalid", "num")}}
                    for name, metrics in after.items()]
    return render_model_card(
        f"PaliGemma transfer: {recipe.name}", [(None, intro), (None, facts), ("Results", results), ("Usage", usage)],
        library_name="peft" if adapter_only else "transformers", pipeline_tag="image-text-to-text",
        license=base_license or ("gemma" if base_id or not tiny else "apache-2.0"), base_model=base_id,
        eval_results=eval_results, tags=["big_vision", "big_vision_hf", "paligemma", "transfer", recipe.name],
    )


def _save_result(trained, processor, out_dir: str, lora, adapter_only: bool) -> None:
    from ..conversion.export import add_processing_code, fast_twin

    if lora and not adapter_only:
        trained = trained.merge_and_unload()
    trained.save_pretrained(out_dir)
    processor.tokenizer = fast_twin(processor.tokenizer)  # tokenizer.json too (AutoTokenizer: the fast twin)
    processor.save_pretrained(out_dir)
    add_processing_code(out_dir, processor)  # loads where big_vision_hf is not installed (trust_remote_code=True)


def _quiet_unless_progress(fn):
    """``progress=False`` also silences transformers' and datasets' own bars (shard writing, ``map``) for the call."""

    @functools.wraps(fn)
    def wrapper(*args, progress: bool = True, **kwargs):
        if progress:
            return fn(*args, progress=progress, **kwargs)
        from datasets.utils import logging as ds_logging
        from transformers.utils import logging as hf_logging

        states = hf_logging.is_progress_bar_enabled(), ds_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        ds_logging.disable_progress_bar()
        try:
            return fn(*args, progress=progress, **kwargs)
        finally:
            if states[0]:
                hf_logging.enable_progress_bar()
            if states[1]:
                ds_logging.enable_progress_bar()

    return wrapper


def partial_folder(output_dir: str | os.PathLike) -> str:
    """Where a run of ``output_dir`` writes until it is complete: ``OUT.partial`` beside it."""
    return os.path.abspath(os.fspath(output_dir)).rstrip(os.sep) + ".partial"


def _work_folder(output_dir: str, *, resume: bool, overwrite: bool) -> str:
    """The run's ``OUT.partial`` folder: an interrupted run's (``resume``), or a fresh one."""
    from ..atomic import check_output

    check_output(output_dir, overwrite)  # a complete result is never replaced without --overwrite
    work = partial_folder(output_dir)
    if resume:
        if not os.path.isdir(work):
            raise ValueError(f"--resume: no interrupted run of {output_dir} to continue ({work} does not exist)")
        print(f"resuming the interrupted run in {work}")
        return work
    if os.path.exists(work):
        if not overwrite:
            raise ValueError(f"{work} holds an interrupted run of {output_dir}: --resume continues it, --overwrite "
                             "starts over")
        shutil.rmtree(work)
    os.makedirs(work)
    return work


def _has_checkpoint(work: str) -> bool:
    folder = os.path.join(work, "checkpoints")
    return os.path.isdir(folder) and any(e.startswith("checkpoint-") for e in os.listdir(folder))


def _losses(log_history) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h["loss"])) for h in log_history if "loss" in h and "step" in h]


# ---------------------------------------------------------------------------------------------------------
# Set-up: model, processor, data and recipe of each way in
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
    """What a run trains and evaluates, and (for the model card) where the model and data came from."""

    model: object
    processor: object
    train_rows: object
    eval_rows: object
    recipe: Recipe
    base: str
    data_desc: str
    vqvae: object = None


def _synthetic_setup(task: str | None, output_dir: str, overrides: dict, *, eval_limit, seed, vqvae) -> _Setup:
    """The built-in default: synthetic shapes, the tiny model, the synthetic task's recipe."""
    task = task or "synthetic"
    if task not in synthetic.SYNTHETIC_TASKS:
        raise ValueError(f"--task {task}: without --data only the synthetic tasks run "
                         f"({', '.join(synthetic.SYNTHETIC_TASKS)}); give --data for {task!r}")
    base_task = synthetic.SYNTHETIC_TASKS[task]
    if "segment" in base_task.kinds and vqvae is None:
        vqvae = synthetic.make_vqvae()  # trained on the synthetic masks in seconds (vae-oid's stand-in)
        if is_main_process():
            vqvae.save_pretrained(os.path.join(output_dir, "vqvae"))
    train_rows = synthetic.make_dataset(base_task, "train", vqvae=vqvae)
    eval_rows = synthetic.make_dataset(base_task, "validation", vqvae=vqvae)
    if eval_limit:
        eval_rows = eval_rows[:eval_limit]
    net, processor = _tiny_model_and_processor(os.path.join(output_dir, "checkpoints"), [], seed)
    return _Setup(net, processor, train_rows, eval_rows, base_task.recipe(**overrides), "(tiny, from scratch)",
                  "the built-in synthetic shapes dataset (`big_vision_hf.transfer.synthetic`)", vqvae)


def _user_data_setup(task: str, data, eval_data, output_dir: str, overrides: dict, load: dict, seed: int) -> _Setup:
    """The user's data on the tiny model: the task's prompts and metric, the tiny model's hyperparameters."""
    res_task = get_task(task, res=min(_resolutions(task)))
    train_rows, eval_rows = _user_data(data, eval_data, res_task, seed=seed, **load)
    net, processor = _tiny_model_and_processor(os.path.join(output_dir, "checkpoints"),
                                               _texts(train_rows.select_columns(["prefix", "suffix"])), seed)
    recipe = res_task.recipe(processor.image_processor.size["height"], hparams=synthetic.TINY_HPARAMS, **overrides)
    return _Setup(net, processor, train_rows, eval_rows, _fit_batch(recipe, len(train_rows)), "(tiny, from scratch)",
                  _describe(data), load["vqvae"])


def _model_setup(task: str, model: str, data, eval_data, res: int | None, overrides: dict, load: dict,
                 seed: int, attention: str = "auto") -> _Setup:
    """The user's data on a converted PaliGemma: the task's big_vision recipe at the model's resolution."""
    net, processor = load_model_and_processor(model, attention=attention)
    image_res = processor.image_processor.size["height"]
    res_task = get_task(task, res=res or _nearest(image_res, _resolutions(task)))
    train_rows, eval_rows = _user_data(data, eval_data, res_task, seed=seed, **load)
    recipe = res_task.recipe(**overrides)
    return _Setup(net, processor, train_rows, eval_rows, _fit_batch(recipe, len(train_rows)), os.path.abspath(model),
                  _describe(data), load["vqvae"])


def _fresh_model(setup: _Setup, processor, seed: int, lora: str | None, lora_rank: int, attention: str = "auto"):
    """A new model of ``setup``'s architecture (LoRA-wrapped as the run's), unsharded: a sharded run's result is
    loaded into it (:func:`~big_vision_hf.transfer.distributed.gather_model`)."""
    from .training import apply_lora

    model = (load_model_and_processor(setup.base, attention=attention)[0] if os.path.isdir(setup.base)
             else synthetic.make_model(processor.tokenizer, seed=seed))
    return apply_lora(model, lora, r=lora_rank) if lora else model


def _fit_batch(recipe: Recipe, num_examples: int) -> Recipe:
    """A batch larger than the data becomes the whole data (a few-example dataset still trains)."""
    return recipe.replace(batch_size=max(1, num_examples)) if recipe.batch_size > num_examples else recipe


def _describe(data) -> str:
    return f"`{data}`" if isinstance(data, (str, os.PathLike)) else f"a {type(data).__name__}"


def _load_vqvae(path: str | None):
    if path is None:
        return None
    from transformers import AutoModel

    import big_vision_hf  # noqa: F401  registers the VQ-VAE

    return AutoModel.from_pretrained(path).eval()


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


@_quiet_unless_progress
def run_transfer(
    task: str | None = None,
    model: str | None = None,
    data=None,
    eval_data=None,
    output_dir: str = "transfer_out",
    *,
    lora: str | None = None,
    lora_rank: int = 8,
    adapter_only: bool = False,
    res: int | None = None,
    lr: float | None = None,
    epochs: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    eval_batch_size: int = 16,
    eval_limit: int | None = None,
    eval_before: bool = True,
    precision: str = "fp32",
    feature_cache: str = "auto",
    resume: bool = False,
    split: str | None = None,
    eval_split: str | None = None,
    column_map: Mapping[str, str] | None = None,
    skip_bad: bool = False,
    vqvae: str | None = None,
    seed: int = 0,
    progress: bool = True,
    training_args: dict | None = None,
    overwrite: bool = False,
    report_to: str | Sequence[str] | None = None,
    fsdp: bool = False,
    attention: str = "auto",
) -> TransferOutcome:
    """Runs one transfer (module docstring) and returns its metrics; everything lands in ``output_dir``.

    Args:
        task: a task name (``big-vision-hf tasks``); default ``"synthetic"`` without ``data``, else ``"jsonl"``
            (records already holding ``prefix``/``suffix``).
        model: a converted PaliGemma folder; ``None``: the built-in tiny model, trained from scratch.
        data / eval_data: anything :func:`~big_vision_hf.transfer.data.prepare_dataset` reads (JSONL/CSV file,
            ``save_to_disk`` folder, image folder, ``datasets`` dataset). No ``eval_data`` and no
            ``eval_split``: 10% (at most 256) of ``data`` is held out.
        lora: ``None`` (full fine-tuning, big_vision) or a preset (``"llm"``, ``"llm+vision"``).
        adapter_only: with ``lora``, save the adapter instead of merged weights.
        res, lr, epochs, max_steps, batch_size: override the task's recipe.
        precision: ``"fp32"`` or ``"bf16"``. feature_cache: ``"auto"``, ``"off"``, ``"memory"``, ``"disk"``
            (:mod:`~big_vision_hf.transfer.feature_cache`). resume: continue the interrupted run in
            ``OUT.partial`` from its newest whole checkpoint. overwrite: replace an existing ``output_dir`` (and
            any interrupted run).
        report_to: ``"tensorboard"``, ``"wandb"``, ``"mlflow"`` (or a list): log training and evaluation loss and
            the learning rate there (transformers' integrations; the package must be installed).
        vqvae: a converted ``vae-oid`` folder, for segmentation targets (``<seg>`` tokens).
        fsdp: shard the training over the launcher's processes with FSDP2 (``--fsdp``; an ``accelerate launch``
            FSDP or DeepSpeed config does it without): :mod:`~big_vision_hf.transfer.distributed`. Under a launcher
            the main process evaluates and writes the folder; the others return empty metrics.
        attention: the language model's attention with ``model`` (``--attention``): ``"auto"`` (flex attention
            for PaliGemma 2 where it runs, else ``eager``; ``sdpa`` for PaliGemma 1), ``"eager"``, ``"sdpa"``,
            ``"flex_attention"`` (:mod:`~big_vision_hf.modeling.paligemma_attention`).

    Example:
        >>> outcome = run_transfer(output_dir="out")   # the built-in default  # doctest: +SKIP
        >>> outcome.metrics_after["synthetic_count"]["accuracy"]  # doctest: +SKIP
    """
    training_args = {"report_to": check_report_to(report_to), **(training_args or {})}  # checked before any work
    check_launcher(fsdp)
    check_feature_cache(feature_cache, sharded_training({"fsdp": fsdp, **training_args}))
    if model is None and attention != "auto":  # the built-in tiny model is created, not loaded: nothing to choose
        raise ValueError(f"--attention {attention} applies to a converted PaliGemma (--model); the built-in tiny "
                         "model runs on its default")
    final_dir = os.fspath(output_dir)
    with main_process_first():  # one process creates OUT.partial; the launcher's others write into it
        output_dir = (_work_folder(final_dir, resume=resume, overwrite=overwrite) if is_main_process()
                      else partial_folder(final_dir))
    try:
        outcome, num_samples = _run_transfer_in(
            task, model, data, eval_data, output_dir, lora=lora, lora_rank=lora_rank, adapter_only=adapter_only,
            res=res, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size, eval_batch_size=eval_batch_size,
            eval_limit=eval_limit, eval_before=eval_before, precision=precision, feature_cache=feature_cache,
            resume=resume, split=split,
            eval_split=eval_split, column_map=column_map, skip_bad=skip_bad, vqvae=vqvae, seed=seed,
            progress=progress, training_args=training_args, fsdp=fsdp, attention=attention)
    except BaseException:
        if not is_main_process():
            raise
        if not _has_checkpoint(output_dir):  # nothing to resume: leave nothing behind
            shutil.rmtree(output_dir, ignore_errors=True)
        else:
            print(f"the run stopped; {output_dir} keeps its checkpoints (--resume continues it)")
        raise
    if not is_main_process():
        return outcome
    from ..atomic import publish

    publish(output_dir, os.path.abspath(final_dir), overwrite)
    print(f"wrote {final_dir}: weights, processor, README.md, metrics.json, training_curves.png"
          + (f", {num_samples} drawn samples in samples/" if num_samples else ""))
    return dataclasses.replace(outcome, output_dir=final_dir)


def _run_transfer_in(task, model, data, eval_data, output_dir: str, *, lora, lora_rank, adapter_only, res, lr, epochs,
                     max_steps, batch_size, eval_batch_size, eval_limit, eval_before, precision, feature_cache, resume,
                     split, eval_split, column_map, skip_bad, vqvae, seed, progress,
                     training_args, fsdp=False, attention="auto") -> tuple[TransferOutcome, int]:
    """`run_transfer` inside its ``OUT.partial`` folder ``output_dir``: the outcome and the number of drawn
    samples."""
    from .training import train

    vqvae_model = _load_vqvae(vqvae)
    overrides = dict(lr=lr, epochs=epochs, steps=max_steps, batch_size=batch_size)
    if data is None and model is None:
        setup = _synthetic_setup(task, output_dir, overrides, eval_limit=eval_limit, seed=seed, vqvae=vqvae_model)
    elif data is None:
        raise ValueError("--model needs --data (the synthetic default runs on the built-in tiny model only)")
    else:
        load = dict(split=split, eval_split=eval_split, column_map=column_map, skip_bad=skip_bad,
                    eval_limit=eval_limit, vqvae=vqvae_model)
        if model is None:
            setup = _user_data_setup(task or "jsonl", data, eval_data, output_dir, overrides, load, seed)
        else:
            setup = _model_setup(task or "jsonl", model, data, eval_data, res, overrides, load, seed, attention)
    net, processor, train_rows, eval_rows = setup.model, setup.processor, setup.train_rows, setup.eval_rows
    recipe, vqvae_model = setup.recipe, setup.vqvae
    processor.text_len = recipe.text_len
    training_args = {**fsdp_training_args(net, fsdp), **training_args}

    print(f"task {recipe.name}: {len(train_rows)} training / {len(eval_rows)} evaluation examples; "
          f"{'LoRA ' + lora if lora else 'full fine-tuning'}, lr {recipe.lr}, batch {recipe.batch_size}, "
          f"{f'{recipe.steps} steps' if recipe.steps is not None else f'{recipe.epochs} epochs'}")
    if progress:
        print(recipe.summary())
    before = {}
    before_file = os.path.join(output_dir, "eval_before", "metrics_before.json")
    if eval_before and not resume and is_main_process():  # under a launcher the others wait at training's start
        before = _evaluate_all(net, processor, eval_rows, recipe, os.path.join(output_dir, "eval_before"),
                               eval_batch_size, progress, vqvae_model)
        _print_metrics("before training", before)
        os.makedirs(os.path.dirname(before_file), exist_ok=True)
        with open(before_file, "w") as f:
            json.dump(before, f)

    result = train(net, processor, train_rows, os.path.join(output_dir, "checkpoints"), recipe, lora=lora,
                   lora_rank=lora_rank, precision=precision, feature_cache=feature_cache, resume=resume, seed=seed,
                   progress=progress,
                   logging_steps=max(1, min(10, recipe.num_steps(len(train_rows)) // 50)),
                   training_args=training_args, eval_dataset=eval_loss_rows(eval_rows) or None)
    trained = gather_model(result.trainer, functools.partial(_fresh_model, setup, processor, seed, lora, lora_rank,
                                                              attention))
    if trained is None:  # a launcher's other process: its part is done
        return TransferOutcome(output_dir, {}, {}, _losses(result.log_history), result.trainable_parameters,
                               result.total_parameters), 0
    after = _evaluate_all(trained, processor, eval_rows, recipe, os.path.join(output_dir, "eval_after"),
                          eval_batch_size, progress, vqvae_model)
    _print_metrics("after training", after)
    if resume and os.path.exists(before_file):  # measured by the interrupted run
        with open(before_file) as f:
            before = json.load(f)

    samples = _draw_samples(trained, processor, eval_rows, os.path.join(output_dir, "samples"),
                            recipe.max_new_tokens, vqvae_model)
    _save_result(trained, processor, output_dir, lora, adapter_only)
    losses = _losses(result.log_history)
    steps = int(result.trainer.state.global_step)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump({"task": recipe.name, "before": before, "after": after, "steps": steps, "lora": lora,
                   "final_loss": losses[-1][1] if losses else None, "recipe": recipe.settings(),
                   "num_train": len(train_rows), "num_eval": len(eval_rows)}, f, indent=2)
    plot_curves(os.path.join(output_dir, "training_curves.png"), result.log_history, before, after)
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(_model_card(recipe, setup.data_desc, setup.base, lora, adapter_only, before, after, len(train_rows),
                            len(eval_rows), steps))
    outcome = TransferOutcome(output_dir, before, after, losses, result.trainable_parameters, result.total_parameters)
    return outcome, len(samples)


@_quiet_unless_progress
def run_evaluate(model: str, data, task: str = "jsonl", output_dir: str | None = None, *, split: str | None = None,
                 column_map: Mapping[str, str] | None = None, limit: int | None = None, batch_size: int = 16,
                 decoding: str | None = None, num_beams: int | None = None, skip_bad: bool = False,
                 vqvae: str | None = None, progress: bool = True,
                 overwrite: bool = False, attention: str = "auto") -> dict[str, dict[str, float]]:
    """Evaluates a PaliGemma folder (converted, or written by :func:`run_transfer`) on ``data`` with the task's
    decoding and metric; writes ``predictions.jsonl`` and ``metrics.json`` to ``output_dir`` (atomically: the
    folder appears complete; an existing one is replaced only with ``overwrite``)."""
    from ..atomic import atomic_folder, check_output
    from .data import prepare_dataset

    if output_dir is not None:
        check_output(output_dir, overwrite)
    net, processor = load_model_and_processor(model, attention=attention)
    t = get_task(task, res=_nearest(processor.image_processor.size["height"], _resolutions(task)))
    vqvae_model = _load_vqvae(vqvae)
    if t.num_frames > 1:  # video tasks: records with `video` (frames, a frame folder or a file; transfer/video.py)
        from .video import load_video_dataset

        rows = load_video_dataset(data, t, split=split, column_map=column_map, limit=limit)
    else:
        rows = prepare_dataset(data, t, split=split, column_map=column_map, skip_bad=skip_bad, expand="list",
                               vqvae=vqvae_model)
        if limit:
            rows = rows.select(range(min(limit, len(rows))))
    recipe = t.recipe(decoding=decoding, num_beams=num_beams)
    processor.text_len = recipe.text_len
    if output_dir is None:
        metrics = _evaluate_all(net, processor, rows, recipe, None, batch_size, progress, vqvae_model)
    else:
        with atomic_folder(output_dir, overwrite) as tmp:
            metrics = _evaluate_all(net, processor, rows, recipe, tmp, batch_size, progress, vqvae_model)
    _print_metrics(f"{task} on {len(rows)} examples", metrics)
    return metrics


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _resolutions(task: str) -> tuple[int, ...]:
    from .tasks import TASKS

    if task not in TASKS:
        from .tasks import list_tasks

        raise ValueError(f"unknown task {task!r}; known: {', '.join(list_tasks())} (or the synthetic ones without "
                         "--data)")
    return tuple(sorted(TASKS[task].hparams))


def _nearest(res: int, available: Sequence[int]) -> int:
    return min(available, key=lambda r: abs(r - res))


def _print_metrics(title: str, metrics: dict) -> None:
    parts = [f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("total", "invalid"))
             for name, m in metrics.items()]
    print(f"{title}: " + " | ".join(parts))
