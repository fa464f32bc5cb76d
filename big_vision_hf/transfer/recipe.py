"""The hyperparameters of one transfer run, resolved once: :class:`Recipe`.

A task publishes :class:`Hparams` per resolution (big_vision's config values in :mod:`~big_vision_hf.transfer.tasks`,
the tiny from-scratch model's in :mod:`~big_vision_hf.transfer.synthetic`). ``task.recipe(res, **overrides)`` joins
them with the task's text length, decoding and metric into one frozen :class:`Recipe`, which
:func:`~big_vision_hf.transfer.training.train` and :func:`~big_vision_hf.transfer.evaluation.evaluate` take whole::

    recipe = get_task("vqav2").recipe(224, lr=3e-6)   # or Recipe(lr=..., batch_size=..., metric=..., text_len=...)
    train(model, processor, rows, "out", recipe)
    evaluate(model, processor, eval_rows, recipe)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import metrics_pg2  # noqa: F401 - puts the PaliGemma 2 metrics in METRICS
from .metrics import METRICS

__all__ = ["DECODINGS", "NUM_BEAMS", "Hparams", "Recipe", "resolve_num_beams"]

# Beams per decoding where a task does not say: big_vision's ``beam_size`` of COCO captions (TextCaps sets 3).
NUM_BEAMS = {"greedy": 1, "beam": 2}
DECODINGS = tuple(NUM_BEAMS)


def resolve_num_beams(decoding: str, num_beams: int | None, owner: str = "") -> int:
    """``num_beams`` checked against ``decoding``; ``None`` gives the decoding's default (:data:`NUM_BEAMS`)."""
    where = f"{owner}: " if owner else ""
    if decoding not in NUM_BEAMS:
        raise ValueError(f"{where}decoding must be one of {DECODINGS}, got {decoding!r}")
    if num_beams is None:
        return NUM_BEAMS[decoding]
    if decoding == "greedy" and num_beams != 1:
        raise ValueError(f"{where}decoding='greedy' with num_beams={num_beams}: use decoding='beam'")
    if decoding == "beam" and num_beams < 2:
        raise ValueError(f"{where}decoding='beam' needs num_beams >= 2, got {num_beams}")
    return int(num_beams)


@dataclass(frozen=True)
class Hparams:
    """One resolution's training hyperparameters, with big_vision's names and semantics.

    Attributes:
        lr: ``c.lr`` (Adam, cosine schedule).
        wd: ``c.wd``: big_vision decays ``wd * p`` (NOT multiplied by lr) on ``.*/kernel$`` params only (ViT and
            projector); the PyTorch AdamW equivalent is ``weight_decay = wd / lr`` on those params only.
        total_epochs: ``c.total_epochs`` (``None`` when the config sets ``total_steps`` instead).
        batch_size: ``c.input.batch_size``.
        label_smoothing: ``c.label_smoothing`` (big_vision: target ``1 - eps``, the rest ``eps / (V - 1)``).
        llm_dropout: ``c.model.llm.dropout`` (big_vision: on the attention- and MLP-output residual branches).
        freeze_vit: ``c.schedule = [('img/.*', None), ...]``: the image tower (and projector ``img/head``) frozen.
        freeze_llm: ``('llm/.*', None)``.
        warmup_percent: ``schedule.warmup_percent`` (linear warmup, then cosine).
        total_steps: ``c.total_steps`` when the config counts steps (POPE: 0, evaluation only).
    """

    lr: float
    wd: float
    total_epochs: float | None
    batch_size: int
    label_smoothing: float = 0.0
    llm_dropout: float = 0.0
    freeze_vit: bool = False
    freeze_llm: bool = False
    warmup_percent: float = 0.05
    total_steps: int | None = None

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen parts, big_vision's names: ``("img",)``, ``("llm",)``, both or ``()``."""
        return tuple(n for n, f in (("img", self.freeze_vit), ("llm", self.freeze_llm)) if f)


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter a transfer run uses, resolved: built by ``task.recipe(res, **overrides)`` (or by hand,
    where the defaults are big_vision's conventions), read whole by ``train`` and ``evaluate``.

    Attributes:
        name: the task's name. res: the resolution whose published setting this is (``None``: not tied to one).
        lr, wd, batch_size, label_smoothing, llm_dropout, freeze_vit, freeze_llm, warmup_percent: as
            :class:`Hparams` (``batch_size`` is the global batch).
        epochs: passes over the training data; steps: optimizer steps, which win over ``epochs`` when set
            (``--max-steps``, or a config counting steps).
        b2: Adam's beta2; grad_clip_norm: the global-norm clip (both the same in every big_vision config).
        text_len: big_vision's ``text_len`` (prefix + ``"\\n"`` + suffix tokens; also the decode length);
            ``None``: the processor's.
        metric: a :data:`~big_vision_hf.transfer.metrics.METRICS` key; metric_kwargs: its options.
        decoding: ``"greedy"`` or ``"beam"``; num_beams: beams (``None``: the decoding's default,
            :data:`NUM_BEAMS`).
    """

    name: str = "custom"
    res: int | None = None
    lr: float = 1e-5
    epochs: float | None = 1
    steps: int | None = None
    batch_size: int = 32
    wd: float = 0.0
    b2: float = 0.999
    grad_clip_norm: float = 1.0
    warmup_percent: float = 0.05
    label_smoothing: float = 0.0
    llm_dropout: float = 0.0
    freeze_vit: bool = False
    freeze_llm: bool = False
    text_len: int | None = None
    metric: str | None = None
    metric_kwargs: Mapping[str, Any] = field(default_factory=dict)
    decoding: str = "greedy"
    num_beams: int | None = None

    def __post_init__(self):
        owner = f"recipe {self.name!r}"
        object.__setattr__(self, "num_beams", resolve_num_beams(self.decoding, self.num_beams, owner))
        object.__setattr__(self, "metric_kwargs", dict(self.metric_kwargs))  # not shared with the task's
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"{owner}: unknown metric {self.metric!r}; known: {sorted(METRICS)}")
        if self.epochs is None and self.steps is None:
            raise ValueError(f"{owner}: needs epochs or steps")
        if self.batch_size < 1:
            raise ValueError(f"{owner}: batch_size must be positive, got {self.batch_size}")
        if self.text_len is not None and self.text_len < 1:
            raise ValueError(f"{owner}: text_len must be positive, got {self.text_len}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"{owner}: label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def from_hparams(cls, hparams: Hparams, **fields) -> Recipe:
        """A recipe with ``hparams``' training values and ``fields`` (name, res, text_len, metric, ...)."""
        return cls(lr=hparams.lr, wd=hparams.wd, epochs=hparams.total_epochs, steps=hparams.total_steps,
                   batch_size=hparams.batch_size, label_smoothing=hparams.label_smoothing,
                   llm_dropout=hparams.llm_dropout, freeze_vit=hparams.freeze_vit, freeze_llm=hparams.freeze_llm,
                   warmup_percent=hparams.warmup_percent, **fields)

    def replace(self, **overrides) -> Recipe:
        """A copy with ``overrides`` (``None`` = keep this recipe's value). A new ``decoding`` without ``num_beams``
        takes that decoding's default beams; new ``epochs`` without ``steps`` count in epochs."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"not Recipe fields: {unknown}")
        if given.get("decoding", self.decoding) != self.decoding and "num_beams" not in given:
            given["num_beams"] = None
        if "epochs" in given and "steps" not in given:
            given["steps"] = None
        return dataclasses.replace(self, **given)

    @property
    def max_new_tokens(self) -> int | None:
        """big_vision's ``pred_kw={'max_decode_len': text_len}``."""
        return self.text_len

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen parts, big_vision's names: ``("img",)``, ``("llm",)``, both or ``()``."""
        return tuple(n for n, f in (("img", self.freeze_vit), ("llm", self.freeze_llm)) if f)

    def num_steps(self, num_examples: int) -> int:
        """Optimizer steps over ``num_examples`` training examples: ``steps``, else ``epochs`` of full batches."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(math.ceil(num_examples / self.batch_size) * self.epochs))

    def settings(self) -> dict[str, Any]:
        """The recipe as JSON values (``metric_kwargs`` left out: it may hold models, e.g. a VQ-VAE)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "metric_kwargs"}
        out["max_new_tokens"] = self.max_new_tokens
        return out

    def summary(self) -> str:
        """Two lines: what a run prints before it starts."""
        length = f"{self.steps} steps" if self.steps is not None else f"{self.epochs:g} epochs"
        beams = f" ({self.num_beams} beams)" if self.decoding == "beam" else ""
        at = f" at {self.res} px" if self.res else ""
        return (f"recipe {self.name}{at}: lr {self.lr:g}, {length}, batch {self.batch_size}, Adam b2 {self.b2:g}, "
                f"grad clip {self.grad_clip_norm:g}, cosine with {self.warmup_percent:.0%} warmup, "
                f"wd {self.wd:g} (kernels)\n"
                f"  label smoothing {self.label_smoothing:g}, LLM dropout {self.llm_dropout:g}, "
                f"frozen: {', '.join(self.frozen) or 'none'}; text_len {self.text_len}, "
                f"{self.decoding} decoding{beams}, metric {self.metric}")
