"""PaliGemma transfer training with ``transformers.Trainer``, as big_vision's PaliGemma trainer.

big_vision (commit 0127fb6), ``trainers/proj/paligemma/train.py`` + ``big_vision/optax.py``, per transfer config
(``configs/proj/paligemma/transfers/*.py``):

- optimizer: ``clip_by_global_norm(1.0)`` -> ``scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)`` -> ``scale(lr)`` ->
  ``add_decayed_weights(wd)`` on ``.*/kernel$`` only -> ``scale_by_schedule(cosine, 5% linear warmup)`` ->
  ``scale(-1)``: ``p -= sched(t) * (lr * adam(g) + wd * p)``. The weight decay is **not** multiplied by ``lr``
  (but follows the schedule), and ``*/kernel`` exists only in the SigLIP tower and the projector (Gemma's
  params are ``w``/``gating_einsum``/``linear``/``input_embedding``/``scale``): the LLM is never decayed.
  :class:`BvAdam` + :func:`decay_parameter_names` reproduce that; grad clipping is the Trainer's
  ``max_grad_norm=1.0`` (frozen parameters have no gradient, as optax ``set_to_zero`` masks them from the norm).
- schedule: ``lr * min(1, step / warmup) * 0.5 * (1 + cos(pi * progress))`` = transformers'
  ``get_cosine_schedule_with_warmup`` with ``warmup = round(0.05 * total)``.
- frozen ViT (``freeze_vit``: GQA-448, ScienceQA, video): ``schedule=[('img/.*', None), ...]``: ``img/`` is the
  SigLIP tower **and** the projector (``img/head``); :func:`freeze_vision` sets ``requires_grad=False`` on both.
  ``freeze_llm`` (``('llm/.*', None)``, a forkme.py flag): :func:`freeze_language_model`.
- loss: per-example mean, then batch mean, label smoothing over the shifted targets
  (:func:`~big_vision_hf.transfer.loss.paligemma_loss`, used by :class:`PaliGemmaTrainer.compute_loss`).
- LLM dropout (``config.model.llm.dropout``): on the attention-output and MLP-output residual branches
  (``models/ppp/gemma.py Block``), not on attention probabilities: :func:`add_residual_dropout`.

Checkpoints are atomic: :class:`PaliGemmaTrainer` writes each one into ``.tmp-checkpoint-N`` and renames it to
``checkpoint-N`` when it is whole, so a run killed while saving leaves only a staging folder;
``train(resume=True)`` takes the newest whole checkpoint (:func:`last_complete_checkpoint`) and says which it
took and which it skipped.

Not in big_vision (it has no LoRA): LoRA/QLoRA through PEFT with presets that adapt exactly the named modules
(:data:`LORA_PRESETS`). The usual ``["q_proj", "k_proj", "v_proj", ...]`` list also matches SigLIP's
``q/k/v_proj``, so "LLM-only" LoRA silently adapts the vision tower; the presets are anchored regexes instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import warnings

import torch
from torch import nn

from .collator import PaliGemmaCollator
from .distributed import sharded_training
from .feature_cache import FeatureCachePlan, check_feature_cache, plan_feature_cache, use_feature_cache
from .loss import paligemma_loss, reduce_token_logp, token_logp
from .recipe import Recipe

__all__ = [
    "LORA_PRESETS",
    "BvAdam",
    "PaliGemmaTrainer",  # noqa: F822 (served by the module's __getattr__)
    "TrainResult",
    "add_residual_dropout",
    "apply_lora",
    "build_optimizer",
    "decay_parameter_names",
    "freeze_language_model",
    "freeze_vision",
    "last_complete_checkpoint",
    "lora_target_modules",
    "qlora_quantization_config",
    "train",
]

# Module paths of transformers 5.x PaliGemma (``model.`` prefix; PEFT adds ``base_model.model.`` in front).
_LLM = r"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
_VISION = (r"(?:.*\.)?vision_tower\.(?:vision_model\.)?encoder\.layers\.\d+\."
           r"(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])")
LORA_PRESETS = {
    "llm": _LLM,  # attention + MLP of every Gemma layer, nothing of SigLIP
    "llm+vision": rf"(?:{_LLM}|{_VISION})",  # ... and attention + MLP of every SigLIP layer
}


def lora_target_modules(preset: str) -> str:
    """The PEFT ``target_modules`` regex of a preset (PEFT full-matches a string against module names)."""
    if preset not in LORA_PRESETS:
        raise ValueError(f"unknown LoRA preset {preset!r}; known: {sorted(LORA_PRESETS)}")
    return LORA_PRESETS[preset]


def apply_lora(model, preset: str = "llm", r: int = 8, alpha: int | None = None, dropout: float = 0.0):
    """Wraps ``model`` in a PEFT LoRA model adapting exactly the preset's modules (everything else frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=dropout,
                        target_modules=lora_target_modules(preset), bias="none")
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def qlora_quantization_config(compute_dtype: torch.dtype = torch.bfloat16):
    """4-bit NF4 ``BitsAndBytesConfig`` with ``bnb_4bit_compute_dtype`` really set (the blog/notebook recipes
    misspell it ``bnb_4bit_compute_type``, which is ignored: compute silently stays fp32). The SigLIP tower,
    projector and ``lm_head`` stay unquantized."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"])


def qlora_available() -> tuple[bool, str]:
    """``(True, "")`` when QLoRA can run here (CUDA and ``bitsandbytes``), else ``(False, reason)``."""
    if not torch.cuda.is_available():
        return False, "QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels)"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False, "QLoRA needs `pip install bitsandbytes`"
    return True, ""


def _freeze_matching(model, pattern: str) -> list[str]:
    """``requires_grad=False`` on the parameters whose name matches ``pattern``; returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        if re.search(pattern, name):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def freeze_vision(model) -> list[str]:
    """big_vision ``freeze_vit``: no updates for ``img/.*`` = SigLIP tower + projector. Returns frozen names."""
    return _freeze_matching(model, r"(^|\.)(vision_tower|multi_modal_projector)\.")


def freeze_language_model(model) -> list[str]:
    """big_vision ``freeze_llm`` (``('llm/.*', None)``): no updates for Gemma (embeddings, layers, final norm;
    ``lm_head`` is tied to the embeddings). Returns frozen names."""
    return _freeze_matching(model, r"(^|\.)(language_model|lm_head)\.")


def decay_parameter_names(model) -> list[str]:
    """Parameters that big_vision's ``wd`` reaches: ``.*/kernel$`` = the weights of the Dense/Conv layers of the
    SigLIP tower and the projector (not biases, LayerNorm scales, position embeddings, nor any Gemma weight).
    LoRA factors are not decayed."""
    names = []
    for mname, module in model.named_modules():
        if "lora_" in mname or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if re.search(r"(^|\.)(vision_tower|multi_modal_projector)\.", mname) and module.weight is not None:
            names.append(f"{mname}.weight" if mname else "weight")
    return names


def add_residual_dropout(model, rate: float) -> list:
    """big_vision ``llm.dropout``: dropout on the attention-output and MLP-output branches of every Gemma block
    before the residual add (``models/ppp/gemma.py Block``), as forward hooks on ``o_proj`` and ``down_proj``
    (after LoRA wrapping the hook sits on the wrapper, so the adapter's delta is dropped out too). Returns the
    hook handles."""
    if rate <= 0:
        return []
    handles = []

    def hook(module, args, output):
        return nn.functional.dropout(output, rate, training=module.training)

    for name, module in model.named_modules():
        if re.fullmatch(r"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn\.o_proj|mlp\.down_proj)", name):
            handles.append(module.register_forward_hook(hook))
    return handles


class BvAdam(torch.optim.Adam):
    """Adam followed by big_vision's decoupled weight decay: ``p -= sched(t) * (lr * adam(g) + wd * p)``.

    Each param group has ``lr`` (the scheduled value, ``base_lr * sched(t)``, set by the LR scheduler),
    ``base_lr`` and ``bv_weight_decay``; the decay applied this step is ``bv_weight_decay * lr / base_lr`` --
    it follows the schedule but is not multiplied by the learning rate (``optax.add_decayed_weights`` sits after
    ``scale(lr)`` and before ``scale_by_schedule`` in ``big_vision/optax.py``). torch's own ``weight_decay`` is
    0 (AdamW would decay by ``lr * wd``).
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
        for group in self.param_groups:
            group.setdefault("bv_weight_decay", 0.0)
            group.setdefault("base_lr", lr if group.get("lr") is None else group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group.get("bv_weight_decay", 0.0)
            if wd and group["base_lr"]:
                factor = 1.0 - wd * group["lr"] / group["base_lr"]
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(factor)  # uses p before the Adam step, as optax computes wd * p on the old params
        return super().step(closure)


def build_optimizer(model, lr: float, wd: float = 0.0, b2: float = 0.999) -> BvAdam:
    """:class:`BvAdam` over the trainable parameters, ``wd`` on :func:`decay_parameter_names` only."""
    decay = set(decay_parameter_names(model))
    with_wd = [p for n, p in model.named_parameters() if p.requires_grad and n in decay]
    without = [p for n, p in model.named_parameters() if p.requires_grad and n not in decay]
    groups = [{"params": without, "bv_weight_decay": 0.0, "base_lr": lr}]
    if with_wd:
        groups.append({"params": with_wd, "bv_weight_decay": wd, "base_lr": lr})
    return BvAdam(groups, lr=lr, betas=(0.9, b2), eps=1e-8)


# The last decoder layer on the loss rows only ------------------------------------------------------------------
#
# A decoder layer's output at position t is used by the next layer's keys/values (every position) or, after the
# last layer, by lm_head (only the positions that predict a supervised token). So in the last layer the other
# positions -- the image tokens and prefix, most of a PaliGemma sequence -- need only their keys and values:
# their queries, attention output, o_proj and MLP are dead work (on PaliGemma-3B about 1/18 of the LLM's step).
# The same modules run (LoRA wrappers and dropout hooks included); only the rows they see change.
_ROW_SUBSET_LAYERS = ("GemmaDecoderLayer", "Gemma2DecoderLayer")


def _decoder_layers(model):
    """The Gemma decoder layers of a (DDP- and/or PEFT-wrapped) PaliGemma, or ``None`` for any other model."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    language_model = getattr(getattr(base, "model", None), "language_model", None)
    layers = getattr(language_model, "layers", None)
    if layers is None or not len(layers):
        return None
    return layers[: language_model.config.num_hidden_layers]


def _gather_rows(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` (batch first, or broadcast over it) at the ``[B, R]`` positions ``index`` along ``dim``."""
    x = x.expand(index.shape[0], *x.shape[1:])
    view, size = [index.shape[0]] + [1] * (x.dim() - 1), list(x.shape)
    view[dim] = size[dim] = index.shape[1]
    return torch.gather(x, dim, index.view(view).expand(size))


def _decoder_layer_on_rows(layer, keep: torch.Tensor, hidden_states: torch.Tensor, attention_mask=None,
                           position_embeddings=None, cache=None, **kwargs):
    """``GemmaDecoderLayer`` / ``Gemma2DecoderLayer.forward`` (transformers 5.x) computed for the ``True``
    positions of ``keep`` (``[B, T]``) only, returned flattened to ``[1, N, D]`` in ``hidden_states[keep]``
    order. Keys and values come from every position, so those rows are what the full layer gives. Where the mask
    is not a dense tensor (flex attention, pure causal ``None``) or a cache is being filled, the full layer runs
    and its ``keep`` rows are returned: the same output contract either way."""
    if cache is not None or not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
        full = type(layer).forward(layer, hidden_states, attention_mask=attention_mask,
                                   position_embeddings=position_embeddings, cache=cache, **kwargs)
        return full[None, keep]  # a new tensor, not a view (FSDP2 warns about views returned by a layer)
    attn = layer.self_attn
    gemma = sys.modules[type(attn).__module__]  # modeling_gemma / modeling_gemma2: their rope and attention
    batch, length, _ = hidden_states.shape
    counts = keep.sum(-1)
    # each example's kept positions first, in order (a stable sort); shorter rows padded with dead positions
    rows = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[:, : int(counts.max())]
    live = torch.arange(rows.shape[1], device=rows.device) < counts[:, None]

    normed = layer.input_layernorm(hidden_states)
    cos, sin = position_embeddings
    key = attn.k_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    value = attn.v_proj(normed).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    key, _ = gemma.apply_rotary_pos_emb(key, key, cos, sin)
    query = attn.q_proj(_gather_rows(normed, rows, 1)).view(batch, rows.shape[1], -1, attn.head_dim).transpose(1, 2)
    query, _ = gemma.apply_rotary_pos_emb(query, query, _gather_rows(cos, rows, 1), _gather_rows(sin, rows, 1))
    extra = {name: getattr(attn, attr) for name, attr in (("sliding_window", "sliding_window"),
                                                          ("softcap", "attn_logit_softcapping"))
             if hasattr(attn, attr)}
    interface = gemma.ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                            gemma.eager_attention_forward)
    out, _ = interface(attn, query, key, value, _gather_rows(attention_mask, rows, 2),
                       dropout=attn.attention_dropout if attn.training else 0.0, scaling=attn.scaling, **extra)
    out = attn.o_proj(out.reshape(batch, rows.shape[1], -1).contiguous())

    residual = _gather_rows(hidden_states, rows, 1)
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 2: norms around both branches
        hidden = residual + layer.post_attention_layernorm(out)
        hidden = hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
    else:
        hidden = residual + out
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden[None, live]


@contextlib.contextmanager
def last_layer_on_rows(model, keep: torch.Tensor):
    """Within the block, ``model``'s last Gemma layer computes only the ``keep`` positions (``[B, T]`` bool) and the
    language model's output is ``[1, N, D]``, N = ``keep.sum()`` (call the model with ``logits_to_keep=0``).
    Yields whether it is active: not for layer classes other than transformers' Gemma / Gemma 2."""
    layers = _decoder_layers(model)
    layer = layers[-1] if layers is not None else None
    # FSDP2's `fully_shard` swaps the layer's class for a subclass (FSDPGemmaDecoderLayer): look through the MRO
    gemma = layer is not None and any(c.__name__ in _ROW_SUBSET_LAYERS for c in type(layer).__mro__)
    if not gemma or not keep.any():
        yield False
        return
    layer.forward = functools.partial(_decoder_layer_on_rows, layer, keep)
    try:
        yield True
    finally:
        del layer.forward


@functools.cache
def _bool_logits_to_keep() -> bool:
    """Whether this transformers takes a boolean ``[B, T]`` ``logits_to_keep`` (rows flattened to ``[N, V]``;
    ``slice_logits_to_keep`` in ``modeling_utils``, transformers >= 5)."""
    import inspect

    from transformers import modeling_utils

    fn = getattr(modeling_utils, "slice_logits_to_keep", None)
    return fn is not None and "torch.bool" in inspect.getsource(fn)


def _trainer_class():
    from transformers import PreTrainedModel, Trainer

    class PaliGemmaTrainer(Trainer):
        """``Trainer`` with big_vision's optimizer (:class:`BvAdam`, decay on kernels, cosine with
        ``warmup_percent`` warmup) and loss (:func:`paligemma_loss`: per-example mean, shifted label smoothing).

        Extra arguments: ``label_smoothing``, ``weight_decay_bv`` (big_vision's ``wd``), ``b2``,
        ``warmup_percent``, ``loss_vocab_size`` (softmax over the first N logits only).
        """

        def __init__(self, *args, label_smoothing: float = 0.0, weight_decay_bv: float = 0.0, b2: float = 0.999,
                     warmup_percent: float = 0.05, loss_vocab_size: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.label_smoothing = label_smoothing
            self.weight_decay_bv = weight_decay_bv
            self.b2 = b2
            self.warmup_percent = warmup_percent
            self.loss_vocab_size = loss_vocab_size
            self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                self.optimizer = build_optimizer(model or self.model, self.args.learning_rate, self.weight_decay_bv,
                                                 self.b2)
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            from transformers import get_cosine_schedule_with_warmup

            if self.lr_scheduler is None:
                warmup = int(round(self.warmup_percent * num_training_steps))
                self.lr_scheduler = get_cosine_schedule_with_warmup(optimizer or self.optimizer, warmup,
                                                                    num_training_steps)
            return self.lr_scheduler

        def _get_output_dir(self, trial):
            return getattr(self, "_staging_dir", None) or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            # Atomic: transformers writes checkpoint-N in place (a kill leaves a half-written folder that
            # `get_last_checkpoint` would pick); here it goes to .tmp-checkpoint-N/ and is renamed when whole.
            from transformers.trainer_utils import rotate_checkpoints

            run_dir = super()._get_output_dir(trial)
            name = f"checkpoint-{self.state.global_step}"
            staging = os.path.join(run_dir, f".tmp-{name}")
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            self._staging_dir = staging
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            self.accelerator.wait_for_everyone()  # every process wrote its part (per-process RNG states)
            if self.args.should_save:
                final = os.path.join(run_dir, name)
                if os.path.exists(final):  # the same step saved again after a resume
                    shutil.rmtree(final)
                os.replace(os.path.join(staging, name), final)
                shutil.rmtree(staging, ignore_errors=True)
                rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            self.accelerator.wait_for_everyone()

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # transformers 5.23: `save_pretrained` writes PaliGemma under its Hub key names (it reverts the
            # `language_model.model.*` -> `model.language_model.*` conversion), but `Trainer` reloads a checkpoint
            # with a raw `load_state_dict`, so every key misses and resuming silently keeps the fresh weights.
            # Loading through `from_pretrained` applies the conversion; a strict copy then fails loudly.
            model = model if model is not None else self.model
            full = any(os.path.isfile(os.path.join(resume_from_checkpoint, f))
                       for f in ("model.safetensors", "model.safetensors.index.json"))
            if full and isinstance(model, PreTrainedModel):
                saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
                model.load_state_dict(saved.state_dict(), strict=True)
                return
            super()._load_from_checkpoint(resume_from_checkpoint, model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            if not return_outputs and _bool_logits_to_keep():
                # Logits only where a supervised token is predicted (position t predicts labels[:, t + 1]): the
                # image part of a PaliGemma sequence is most of it, and so are prefixes and padding; lm_head over
                # a 257k vocabulary there is wasted compute and memory. transformers flattens the kept rows to
                # [N, V]; the per-token values and big_vision's per-example mean are those of paligemma_loss.
                targets = labels[:, 1:]
                mask = targets != -100
                keep = nn.functional.pad(mask, (0, 1))
                # ... and the last decoder layer runs its queries and MLP on those rows only (keys and values
                # on all of them): the same values, without the dead work (see last_layer_on_rows).
                with last_layer_on_rows(model, keep) as rows_only:
                    logits = model(**inputs, use_cache=False, logits_to_keep=0 if rows_only else keep).logits
                if rows_only:
                    logits = logits[0]
                return reduce_token_logp(token_logp(logits, targets[mask], self.label_smoothing,
                                                    self.loss_vocab_size), mask, "mean")
            # Only positions from the one before the first supervised token get logits (the image part of a
            # PaliGemma sequence is most of it; lm_head over a 257k vocabulary there is wasted work).
            supervised = (labels != -100).any(0).nonzero()
            first = int(supervised[0]) if len(supervised) else labels.shape[1] - 1
            keep = labels.shape[1] - max(first - 1, 0)
            outputs = model(**inputs, logits_to_keep=keep)
            loss = paligemma_loss(outputs.logits, labels[:, -keep:], self.label_smoothing, self.loss_vocab_size)
            return (loss, outputs) if return_outputs else loss

    return PaliGemmaTrainer


def __getattr__(name):  # PaliGemmaTrainer imports transformers.Trainer lazily
    if name == "PaliGemmaTrainer":
        return _trainer_class()
    raise AttributeError(name)


def _progress_callback_class():
    from transformers.trainer_callback import ProgressCallback

    class LossInProgressBar(ProgressCallback):
        """transformers' progress bar, with the latest loss as its postfix instead of a log dict printed per log."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    return LossInProgressBar


def _LossInProgressBar():  # noqa: N802 - a factory: transformers is imported lazily here
    return _progress_callback_class()()


def _checkpoint_problem(path: str) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from (``None``: it is whole)."""
    from ..modeling.loading import FolderError, check_weight_files, safetensors_header

    state = os.path.join(path, "trainer_state.json")
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        return "no readable trainer_state.json (killed while being written?)"
    if os.path.isdir(os.path.join(path, "pytorch_model_fsdp_0")):  # FSDP's sharded checkpoint (transfer/distributed.py)
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # torch.distributed.checkpoint writes .metadata last
            if not os.path.isfile(os.path.join(path, part, ".metadata")):
                return f"no {part}/.metadata (a sharded checkpoint killed while being written?)"
        return None
    weights = [f for f in ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
               if os.path.isfile(os.path.join(path, f))]
    if not weights:
        return "no weights"
    try:
        if "adapter_model.safetensors" in weights:
            safetensors_header(os.path.join(path, "adapter_model.safetensors"))
        check_weight_files(path)
    except FolderError as e:
        return str(e)
    for name in ("optimizer.pt", "scheduler.pt"):
        if os.path.isfile(os.path.join(path, name)) and os.path.getsize(os.path.join(path, name)) == 0:
            return f"empty {name}"
    return None


def _finished(checkpoint: str, total_steps: int) -> bool:
    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            return int(json.load(f).get("global_step", 0)) >= total_steps
    except (OSError, ValueError, TypeError):
        return False


def last_complete_checkpoint(folder: str | os.PathLike, say=print) -> str | None:
    """The newest whole ``checkpoint-N`` in ``folder`` (``None``: none). ``say`` reports the one taken and every
    one skipped: a staging folder of a checkpoint killed while being written (removed), or a checkpoint that is
    not whole."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return None
    steps = []
    for entry in os.listdir(folder):
        if entry.startswith(".tmp-checkpoint-"):
            say(f"skipping {entry}: a checkpoint killed while being written (removed)")
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
        elif (m := re.fullmatch(r"checkpoint-(\d+)", entry)) and os.path.isdir(os.path.join(folder, entry)):
            steps.append((int(m.group(1)), entry))
    for step, entry in sorted(steps, reverse=True):
        problem = _checkpoint_problem(os.path.join(folder, entry))
        if problem is None:
            say(f"resuming from {entry} (step {step})")
            return os.path.join(folder, entry)
        say(f"skipping {entry}: {problem}")
    return None


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: object
    trainer: object
    log_history: list[dict]
    output_dir: str
    trainable_parameters: int
    total_parameters: int


def train(
    model,
    processor,
    train_dataset,
    output_dir: str | os.PathLike,
    recipe: Recipe,
    *,
    lora: str | None = None,
    lora_rank: int = 8,
    lora_alpha: int | None = None,
    precision: str = "fp32",
    gradient_accumulation_steps: int = 1,
    save_steps: int | None = None,
    save_total_limit: int | None = 2,
    resume: bool | str = False,
    seed: int = 0,
    logging_steps: int = 10,
    progress: bool = True,
    callbacks: list | None = None,
    loss_vocab_size: int | None = None,
    random_suffix: bool = True,
    use_cpu: bool | None = None,
    training_args: dict | None = None,
    eval_dataset=None,
    feature_cache: str = "auto",
    feature_cache_dir: str | None = None,
) -> TrainResult:
    """Fine-tunes ``model`` on ``train_dataset`` (rows ``{image, prefix, suffix}``) with big_vision's recipe.

    Every hyperparameter comes from ``recipe`` (:class:`~big_vision_hf.transfer.recipe.Recipe`, e.g.
    ``task.recipe(224, lr=...)``): lr, epochs or steps, batch size (the global batch, split over processes and
    ``gradient_accumulation_steps``), weight decay, Adam b2, grad clip, warmup, label smoothing, LLM dropout, frozen
    parts, text_len. ``lora``: ``None`` (full fine-tuning, big_vision), ``"llm"`` or ``"llm+vision"``
    (:data:`LORA_PRESETS`); for QLoRA load the model with :func:`qlora_quantization_config` and pass ``lora``.
    ``precision``: ``"fp32"`` or ``"bf16"`` (autocast; master weights stay fp32). ``resume``: ``True`` continues
    from the last whole checkpoint in ``output_dir`` (:func:`last_complete_checkpoint`; or a checkpoint path):
    optimizer, schedule, RNG and data order are restored, so the loss curve continues. Checkpoints every
    ``save_steps`` steps (default: about 10 per run), each written whole or not at all. ``eval_dataset`` (rows as
    ``train_dataset``): the evaluation loss about 8 times per run, into the log history (``eval_loss``).
    ``feature_cache``: ``"auto"`` (default), ``"off"``, ``"memory"`` or ``"disk"`` (in ``feature_cache_dir``): the
    frozen tower's projected image tokens computed once per image
    (:mod:`~big_vision_hf.transfer.feature_cache`; the choice and its reason are printed).
    """
    from transformers import TrainingArguments

    if not isinstance(recipe, Recipe):
        raise TypeError(f"train() takes a Recipe (task.recipe(res, ...)), got {type(recipe).__name__}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch_size = recipe.batch_size
    per_device = batch_size // (world * gradient_accumulation_steps)
    if per_device < 1 or per_device * world * gradient_accumulation_steps != batch_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world} processes x "
                         f"{gradient_accumulation_steps} accumulation steps")

    if hasattr(processor, "check_model"):
        processor.check_model(model, training=True)
    if recipe.freeze_vit:
        freeze_vision(model)
    if recipe.freeze_llm:
        freeze_language_model(model)
    if lora:
        model = apply_lora(model, lora, r=lora_rank, alpha=lora_alpha)
    add_residual_dropout(model, recipe.llm_dropout)

    total = max(1, recipe.num_steps(len(train_dataset)))  # POPE counts 0 steps (evaluation only; its lr is 0)
    if sharded_training(training_args):  # the cache runs the frozen tower outside FSDP's forward (its resharding fails)
        check_feature_cache(feature_cache, sharded=True)
        cache_plan = FeatureCachePlan("off", "sharded training (FSDP / DeepSpeed) runs the tower inside the shards")
    else:
        cache_plan = plan_feature_cache(model, train_dataset, feature_cache, processor=processor, precision=precision,
                                        passes=total * batch_size / max(1, len(train_dataset)),
                                        folder=feature_cache_dir,
                                        extra_images=len(eval_dataset) if eval_dataset is not None else 0)
    print(cache_plan.describe())
    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=recipe.lr,
        max_steps=total,
        max_grad_norm=recipe.grad_clip_norm,
        lr_scheduler_type="cosine",
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=save_steps or max(1, total // 10),
        save_total_limit=save_total_limit,
        bf16=precision == "bf16",
        remove_unused_columns=False,  # the collator needs image/prefix/suffix (and token_type_ids must survive)
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if use_cpu is not None:
        args["use_cpu"] = use_cpu
    if eval_dataset is not None:  # the evaluation loss, about 8 times per run (curves, --report-to)
        args.update(eval_strategy="steps", eval_steps=max(1, total // 8), per_device_eval_batch_size=per_device,
                    prediction_loss_only=True)
    args.update(training_args or {})
    trainer_cls = _trainer_class()
    trainer = trainer_cls(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=PaliGemmaCollator(processor, text_len=recipe.text_len, random_suffix=random_suffix, seed=seed),
        callbacks=callbacks,
        label_smoothing=recipe.label_smoothing,
        weight_decay_bv=recipe.wd,
        b2=recipe.b2,
        warmup_percent=recipe.warmup_percent,
        loss_vocab_size=loss_vocab_size,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if progress:  # the loss in the progress bar instead of a printed dict every logging_steps
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_LossInProgressBar())
    else:  # quiet: no dict printed per log either (the losses stay in the log history)
        trainer.remove_callback(PrinterCallback)
    if resume is True:
        resume = last_complete_checkpoint(output_dir)
        if resume is None:
            print(f"no complete checkpoint in {output_dir}: training from the start")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint under the training bar
    try:
        if resume and _finished(resume, total):  # killed after its last step: nothing left to train
            # (transformers 5.25 `Trainer.train` resumed at max_steps, mid-epoch, trains one step more)
            from transformers import TrainerState

            trainer._load_from_checkpoint(resume)
            trainer.state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
            print(f"{os.path.basename(resume)} is the run's last step: nothing left to train")
        else:
            with use_feature_cache(model, cache_plan):
                trainer.train(resume_from_checkpoint=resume or None)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return TrainResult(model, trainer, list(trainer.state.log_history), str(output_dir), n_train, n_all)
