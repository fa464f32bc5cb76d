"""The PaliGemma transfer tasks of big_vision, as code: prompt, target, resolution, hyperparameters, decoding, metric.

Each entry mirrors one file of ``big_vision/configs/proj/paligemma/transfers/`` (google-research/big_vision at
commit 0127fb6), named at the top of its block. Values are copied from the file's ``sweep_best()`` (the published
setting) and, for what ``sweep_best`` does not set, from its ``get_config()``; where the two disagree the
``get_config`` default is given in a comment. A value that is in neither file is marked ``# not in the config``.

Shared by every config (so not repeated below): ``optax_name='scale_by_adam'`` (b1 0.9, b2 0.999),
``grad_clip_norm=1.0``, ``schedule=dict(decay_type='cosine', warmup_percent=0.05)``, ``model_init=pt_{res}``
(PaliGemma 1), ``text_len`` = the token budget of ``prefix + "\\n" + suffix`` = ``max_decode_len`` at eval.

A task turns a raw record (a dict) into ``prefix`` / ``suffix``:

- ``prefix``: a ``str.format`` template over the record's fields (big_vision ``strfmt``), or a function
  ``fn(record) -> str``.
- ``suffix``: a template, or a function ``fn(record, ctx) -> str | list[str]``; a list is the pool big_vision's
  ``choice_no_replacement`` draws from (one answer per example per epoch). ``ctx`` is a :class:`BuildContext`
  (a seeded ``random.Random`` and the segmentation VQ-VAE, if any).
- ``references``: the record field kept for evaluation (e.g. the list of ground-truth answers), or ``None``.

Add your own task in a few lines::

    from big_vision_hf.transfer.tasks import Hparams, TransferTask, register_task

    register_task(TransferTask(
        name="receipts",
        config="(own)",
        prefix="extract total",                  # or "answer en {question}" with a `question` field
        suffix="{total}",                        # or a function (record, ctx) -> str | list[str]
        text_len=32,
        hparams={224: Hparams(lr=1e-5, wd=3e-7, total_epochs=15, batch_size=32)},  # forkme.py's values
        metric="exact_match",
    ))
    recipe = get_task("receipts").recipe(224, lr=3e-5)   # the run's hyperparameters (transfer.recipe.Recipe)
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .masks import load_mask
from .metrics import METRICS
from .metrics_pg2 import words_to_text
from .recipe import Hparams, Recipe, resolve_num_beams

__all__ = [
    "BuildContext",
    "Hparams",
    "TASKS",
    "TransferTask",
    "choice",
    "get_task",
    "list_tasks",
    "register_task",
]

BV_CONFIG_DIR = "big_vision/configs/proj/paligemma/transfers"
RESOLUTIONS = (224, 448, 896)
# big_vision_hf.transfer.metrics.METRICS keys (what transfer.evaluation.evaluate() accepts; the PaliGemma 2 ones
# included: importing metrics_pg2 above puts them there).
KNOWN_METRICS = tuple(METRICS)


@dataclass
class BuildContext:
    """What a suffix builder may need besides the record: a seeded RNG (big_vision's random ``choice``) and the
    segmentation VQ-VAE (a ``BvSegVQVAEModel`` with encoder) for ``<seg>`` targets."""

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    vqvae: Any = None


PrefixFn = Callable[[Mapping], str]
SuffixFn = Callable[[Mapping, BuildContext], "str | list[str]"]
ExampleFn = Callable[[Mapping, BuildContext], "tuple[str, str | list[str]]"]


@dataclass(frozen=True)
class TransferTask:
    """One transfer task (see the module docstring). ``get_task(name, res)`` returns a copy with ``res`` set, whose
    properties (``lr``, ``wd``, ``total_epochs``, ``batch_size``, ``label_smoothing``, ``llm_dropout``,
    ``freeze_vit``, ``frozen``, ``warmup_percent``) read ``hparams[res]``; a run's hyperparameters, resolved with
    its overrides, are :meth:`recipe`.

    Attributes:
        name: the task table's key.
        config: the big_vision config file it mirrors (``"(own)"`` for user tasks).
        prefix: template over record fields, or ``fn(record) -> str``.
        suffix: template, or ``fn(record, ctx) -> str | list[str]`` (a list = answers to draw from).
        text_len: big_vision ``text_len`` (prefix + sep + suffix tokens; also ``max_decode_len``).
        hparams: ``{res: Hparams}`` for the resolutions the config publishes.
        metric: a :data:`big_vision_hf.transfer.metrics.METRICS` key.
        metric_kwargs: options of the metric (``{"to_lower": True}`` where the evaluator sets ``to_lower``).
        decoding: ``"greedy"`` or ``"beam"``; num_beams: beams (``None``: the decoding's default,
            :data:`~big_vision_hf.transfer.recipe.NUM_BEAMS`).
        references: the record field holding the ground truth(s) for evaluation, kept as a column.
        example: ``fn(record, ctx) -> (prefix, suffix)`` when prefix and suffix share a random draw (ScienceQA's
            choice shuffle); replaces ``prefix``/``suffix`` in :meth:`build`.
        fields: record fields the task reads (checked by the data loader; a column mapping renames yours).
        dataset: the TFDS dataset / split of the config (``final_split=True``), for the record.
        notes: departures and caveats (things big_vision does in its pp that are not a prefix/suffix op).
        num_frames: frames per example (video tasks: the config's ``num_frames``; 1 for images). Each frame is
            ``image_seq_length`` image tokens (:mod:`big_vision_hf.transfer.video`).
        frame_stride: the video reader's ``stride`` between sampled frames.
        res: the resolution chosen by :func:`get_task` (``None`` on the table's entries).
    """

    name: str
    config: str
    prefix: str | PrefixFn
    suffix: str | SuffixFn
    text_len: int
    hparams: Mapping[int, Hparams]
    metric: str
    metric_kwargs: Mapping[str, Any] = field(default_factory=dict)
    decoding: str = "greedy"
    num_beams: int | None = None
    references: str | None = None
    example: ExampleFn | None = None
    fields: tuple[str, ...] = ()
    dataset: str = ""
    notes: str = ""
    num_frames: int = 1
    frame_stride: int = 1
    res: int | None = None

    def __post_init__(self):
        if self.metric not in KNOWN_METRICS:
            raise ValueError(f"task {self.name!r}: unknown metric {self.metric!r}; known: {KNOWN_METRICS}")
        object.__setattr__(self, "num_beams", resolve_num_beams(self.decoding, self.num_beams, f"task {self.name!r}"))
        if not self.hparams:
            raise ValueError(f"task {self.name!r}: hparams needs at least one resolution")
        if self.res is not None and self.res not in self.hparams:
            raise ValueError(f"task {self.name!r} has no setting for res={self.res}; "
                             f"available: {sorted(self.hparams)}")

    # ---- per-resolution values -------------------------------------------------------------------------------
    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(sorted(self.hparams))

    def _hp(self) -> Hparams:
        if self.res is None:
            raise AttributeError(f"task {self.name!r}: use get_task({self.name!r}, res=...) for per-resolution values")
        return self.hparams[self.res]

    lr = property(lambda self: self._hp().lr)
    wd = property(lambda self: self._hp().wd)
    total_epochs = property(lambda self: self._hp().total_epochs)
    total_steps = property(lambda self: self._hp().total_steps)
    batch_size = property(lambda self: self._hp().batch_size)
    label_smoothing = property(lambda self: self._hp().label_smoothing)
    llm_dropout = property(lambda self: self._hp().llm_dropout)
    freeze_vit = property(lambda self: self._hp().freeze_vit)
    freeze_llm = property(lambda self: self._hp().freeze_llm)
    frozen = property(lambda self: self._hp().frozen)
    warmup_percent = property(lambda self: self._hp().warmup_percent)

    @property
    def source(self) -> str:
        """Where the task comes from: its big_vision config file, or the paper / ``(own)``; tasks that only borrow
        a config's values (no config of their own) say so."""
        name = self.config
        if name.startswith(BV_CONFIG_DIR + "/"):
            name = "big_vision transfers/" + name[len(BV_CONFIG_DIR) + 1:]
        if self.notes.startswith(("not in the config", "not a config", "not a big_vision config")):
            name += " (no config of its own)"
        return name

    @property
    def max_new_tokens(self) -> int:
        """big_vision's ``pred_kw={'max_decode_len': text_len}``."""
        return self.text_len

    @property
    def image_seq_length(self) -> int:
        """Image tokens of one image / frame, ``(res / 14) ** 2`` (So400m/14): 256 / 1024 / 4096; an example has
        ``num_frames`` times as many."""
        self._hp()
        return (self.res // 14) ** 2

    def recipe(self, res: int | None = None, *, hparams: Hparams | None = None, **overrides) -> Recipe:
        """The hyperparameters of a run at ``res`` (default: the resolution :func:`get_task` chose): ``hparams``
        (default: the published ``self.hparams[res]``) with the task's ``text_len``, decoding and metric, then
        ``overrides`` (:class:`~big_vision_hf.transfer.recipe.Recipe` fields; ``None`` keeps the task's)."""
        res = self.res if res is None else res
        if hparams is None:
            if res not in self.hparams:
                raise ValueError(f"task {self.name!r} has no published setting for res={res}; "
                                 f"available: {sorted(self.hparams)}")
            hparams = self.hparams[res]
        return Recipe.from_hparams(hparams, name=self.name, res=res, text_len=self.text_len, metric=self.metric,
                                   metric_kwargs=self.metric_kwargs, decoding=self.decoding,
                                   num_beams=self.num_beams).replace(**overrides)

    # ---- record -> prefix / suffix ---------------------------------------------------------------------------
    def build(self, record: Mapping, ctx: BuildContext | None = None) -> tuple[str, str | list[str]]:
        """``(prefix, suffix)`` of one record; ``suffix`` may be a list of targets to draw one from."""
        ctx = ctx or BuildContext()
        if self.example is not None:
            return self.example(record, ctx)
        return self.build_prefix(record), self.build_suffix(record, ctx)

    def build_prefix(self, record: Mapping) -> str:
        return _format(self.prefix, record, self.name) if isinstance(self.prefix, str) else self.prefix(record)

    def build_suffix(self, record: Mapping, ctx: BuildContext | None = None) -> str | list[str]:
        """The target, or the list of targets big_vision draws one from (``choice_no_replacement``)."""
        ctx = ctx or BuildContext()
        return _format(self.suffix, record, self.name) if isinstance(self.suffix, str) else self.suffix(record, ctx)


def _format(template: str, record: Mapping, task: str) -> str:
    try:
        return template.format(**record)
    except KeyError as e:
        raise KeyError(f"task {task!r}: template {template!r} needs field {e.args[0]!r}; record has "
                       f"{sorted(record)} (pass a column mapping)") from None


# ---------------------------------------------------------------------------------------------------------
# Builders (big_vision pp ops)
# ---------------------------------------------------------------------------------------------------------


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def field_value(key: str, lower: bool = False) -> SuffixFn:
    """``copy(inkey=key, outkey="suffix")`` (+ ``lower(key="suffix")``)."""
    def fn(record, ctx=None):
        v = str(record[key])
        return v.lower() if lower else v
    fn.__name__ = f"copy_{key}"
    return fn


def choice(key: str, lower: bool = False) -> SuffixFn:
    """``choice_no_replacement(inkey=key, outkey="suffix")`` (+ ``lower``): the list of answers to draw from."""
    def fn(record, ctx=None):
        values = _as_list(record[key])
        return [v.lower() for v in values] if lower else values
    fn.__name__ = f"choice_{key}"
    return fn


def multiple_choice_prefix(choices_key: str, question_key: str = "question") -> PrefixFn:
    """aokvqa_mc.py / ai2d.py: ``strjoin(" \\t ", choices) -> ansstr``, then
    ``strfmt("{PREFIX} {question} {PROMPT} {ansstr}")`` with ``PREFIX = 'answer en '`` (so a DOUBLE space before
    the question) and ``PROMPT = 'choose from:'``."""
    def fn(record):
        ansstr = " \t ".join(_as_list(record[choices_key]))
        return f"answer en  {record[question_key]} choose from: {ansstr}"
    return fn


def getidx(choices_key: str, index_key: str) -> SuffixFn:
    """``getidx(inkey=choices, index_key=idx, outkey="suffix")`` (aokvqa_mc.py)."""
    def fn(record, ctx=None):
        return _as_list(record[choices_key])[int(record[index_key])]
    return fn


SCIENCE_QA_PREFIX = "Question: {question}\nContext: {hint}\nOptions: {indexed_choices}\nAnswer:"  # qfmt='QCM'
SCIENCE_QA_SUFFIX = "The answer is {indexed_answer}."  # afmt='A'


def science_qa_example(record: Mapping, rng: random.Random) -> tuple[str, str]:
    """science_qa.py ``sci_qa_choices_shuffle`` + the ``QCM -> A`` formats: choices shuffled, written
    ``"(A) x, (B) y"``, the answer index re-lettered. Returns ``(prefix, suffix)``."""
    choices = _as_list(record["choices"])
    order = list(range(len(choices)))
    rng.shuffle(order)
    indexed = ", ".join(f"({'ABCDEFGHIJKLMNOPQRSTUVWXYZ'[i]}) {choices[j]}" for i, j in enumerate(order))
    letter = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[order.index(int(record["answer"]))]
    fields = {**record, "indexed_choices": indexed, "indexed_answer": letter, "hint": record.get("hint", "")}
    return SCIENCE_QA_PREFIX.format(**fields), SCIENCE_QA_SUFFIX.format(**fields)


def _science_qa(record, ctx):
    return science_qa_example(record, ctx.rng)


def refcoco_suffix(record: Mapping, ctx: BuildContext) -> str:
    """refcoco_seg.py ``refcoco_mask2str``: ``<loc>x4<seg>x16`` from the full-resolution ``mask`` and the
    normalised ``bbox`` (y1, x1, y2, x2) of the record, with the user's VQ-VAE."""
    from ..processing.paligemma_decoding import mask_to_tokens

    if ctx.vqvae is None:
        raise ValueError("refcoco_seg needs a VQ-VAE with encoder: pass vqvae=BvSegVQVAEModel(...)")
    bbox = record.get("bbox")
    return mask_to_tokens(load_mask(record["mask"]), ctx.vqvae, None if bbox is None else list(bbox))


def refcoco_det_suffix(record: Mapping, ctx: BuildContext = None) -> str:
    from ..processing.paligemma_decoding import box_to_loc_tokens

    return box_to_loc_tokens(record["bbox"])


# ---------------------------------------------------------------------------------------------------------
# The task table
# ---------------------------------------------------------------------------------------------------------

TASKS: dict[str, TransferTask] = {}


def register_task(task: TransferTask, *, overwrite: bool = False) -> TransferTask:
    """Adds ``task`` to :data:`TASKS` (see the module docstring for an example). Re-registering a name raises
    unless ``overwrite=True``."""
    if not isinstance(task, TransferTask):
        raise TypeError(f"register_task expects a TransferTask, got {type(task).__name__}")
    if task.name in TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered (pass overwrite=True to replace it)")
    TASKS[task.name] = dataclasses.replace(task, res=None)
    return TASKS[task.name]


def get_task(name: str | TransferTask, res: int = 224) -> TransferTask:
    """The task with ``res`` chosen: its properties give that resolution's hyperparameters."""
    task = name if isinstance(name, TransferTask) else TASKS.get(name)
    if task is None:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    if res not in task.hparams:
        raise ValueError(f"task {task.name!r} has no published setting for res={res}; "
                         f"available: {sorted(task.hparams)}")
    return dataclasses.replace(task, res=res)


def list_tasks() -> list[str]:
    return sorted(TASKS)


def _reg(name, config, **kw):
    register_task(TransferTask(name=name, config=f"{BV_CONFIG_DIR}/{config}", **kw))


H = Hparams


def answer_en(answers: str = "answers", lower: bool = False) -> dict:
    """The VQA configs' record fields: the prompt ``answer en {question}``, the target one of ``answers`` (drawn
    per example), all of them references."""
    return dict(prefix="answer en {question}", suffix=choice(answers, lower=lower), references=answers,
                fields=("question", answers))


def H_224_448(**kwargs) -> dict[int, Hparams]:
    """The same hyperparameters at 224 and at 448, as most of the configs below give them."""
    return dict.fromkeys((224, 448), Hparams(**kwargs))

# ---- big_vision/configs/proj/paligemma/transfers/cococap.py ----
_reg("cococap", "cococap.py",
     prefix="caption en", suffix=choice("captions"), references="captions", fields=("captions",),
     text_len=32, metric="cider", decoding="beam", num_beams=2,  # get_config: beam_size=2
     hparams=H_224_448(lr=1e-5, wd=1e-6, total_epochs=5, batch_size=256),  # get_config: lr=1e-4, wd=0.0
     dataset="coco_captions train+restval",
     notes="5 epochs = one pass over the captions (5 per image). crop='rs' (plain resize).")

# ---- big_vision/configs/proj/paligemma/transfers/textcaps.py ----
_reg("textcaps", "textcaps.py",
     prefix="caption en", suffix=choice("captions", lower=True), references="captions", fields=("captions",),
     text_len=32, metric="cider", decoding="beam", num_beams=3,  # get_config: beam_size=3
     hparams=H_224_448(lr=1e-5, wd=1e-6, total_epochs=5, batch_size=256),  # get_config: wd=0.0
     dataset="text_caps train", notes="big_vision field `texts`; lower(key='suffix') on the target only.")

# ---- big_vision/configs/proj/paligemma/transfers/vqav2.py ----
_reg("vqav2", "vqav2.py",
     **answer_en(),  # big_vision: question_text; eval keeps answer_type, question_type
     text_len=32, metric="vqav2",
     hparams={224: H(lr=1e-5, wd=1e-6, total_epochs=10, batch_size=256),  # get_config: lr=3e-6, wd=3e-7
              448: H(lr=1e-5, wd=0.0, total_epochs=10, batch_size=256)},
     dataset="vqa train + validation", notes="sweep_best: 'lr was highest in sweep'.")

# ---- big_vision/configs/proj/paligemma/transfers/okvqa.py ----
_reg("okvqa", "okvqa.py",
     **answer_en(),
     text_len=32, metric="vqa",
     hparams=H_224_448(lr=5e-6, wd=0.0, total_epochs=10, batch_size=128),
     dataset="okvqa train")

# ---- big_vision/configs/proj/paligemma/transfers/aokvqa_da.py ----
_reg("aokvqa_da", "aokvqa_da.py",
     **answer_en("direct_answers"), text_len=32, metric="vqa",
     hparams=H_224_448(lr=5e-6, wd=0.0, total_epochs=10, batch_size=128),
     dataset="aokvqa train + val")

# ---- big_vision/configs/proj/paligemma/transfers/aokvqa_mc.py ----
_reg("aokvqa_mc", "aokvqa_mc.py",
     prefix=multiple_choice_prefix("multiple_choice_possible_answers"),
     suffix=getidx("multiple_choice_possible_answers", "multiple_choice_correct_idx"),
     references=None,  # the eval target is the same getidx(...) string: the suffix column
     fields=("question", "multiple_choice_possible_answers", "multiple_choice_correct_idx"),
     text_len=128, metric="vqa",
     hparams=H_224_448(lr=5e-6, wd=0.0, total_epochs=15, batch_size=128),
     dataset="aokvqa train + val")

# ---- big_vision/configs/proj/paligemma/transfers/ai2d.py ----
_reg("ai2d", "ai2d.py",
     prefix=multiple_choice_prefix("possible_answers"), suffix=field_value("answer"),
     fields=("question", "possible_answers", "answer"), text_len=128, metric="vqa",
     metric_kwargs={"to_lower": False},  # "Model sees options in prompt and can match the case."
     hparams=H_224_448(lr=1e-5, wd=1e-6, total_epochs=10, batch_size=256),  # get_config: wd = 1e-5 * 0.1
     dataset="ai2d train")

# ---- big_vision/configs/proj/paligemma/transfers/gqa.py ----
_reg("gqa", "gqa.py",
     prefix="answer en {question}", suffix=field_value("answer"), fields=("question", "answer"),
     text_len=32, metric="vqa",
     hparams={224: H(lr=1e-5, wd=0.0, total_epochs=1, batch_size=256, freeze_vit=False),
              448: H(lr=1e-5, wd=0.0, total_epochs=1, batch_size=256, freeze_vit=True)},  # get_config: freeze_vit=True
     dataset="gqa train_balanced+val_balanced",
     notes="train/eval resize without antialias (resize(res)). xGQA zero-shot evals not mirrored.")

# ---- big_vision/configs/proj/paligemma/transfers/science_qa.py ----
_reg("science_qa", "science_qa.py",
     prefix=SCIENCE_QA_PREFIX, suffix=SCIENCE_QA_SUFFIX, example=_science_qa,  # one shuffle for both
     fields=("question", "choices", "answer"),
     text_len=512, metric="science_qa",
     # get_config: lr=5e-5, freeze_vit=False, res=448
     hparams=H_224_448(lr=1e-5, wd=0.0, total_epochs=20, batch_size=128, freeze_vit=True),
     dataset="science_qa train+val",
     notes="qfmt='QCM', afmt='A'; choices shuffled per example (sci_qa_choices_shuffle): the loader shuffles "
           "once per record with its seed; `hint` is the context (empty string if absent).")

# ---- big_vision/configs/proj/paligemma/transfers/tallyqa.py ----
_reg("tallyqa", "tallyqa.py",
     prefix="answer en {question}", suffix="{answer}", fields=("question", "answer"),
     text_len=32, metric="tallyqa",
     hparams={224: H(lr=1e-5, wd=0.0, total_epochs=2, batch_size=256),
              448: H(lr=1e-5, wd=1e-6, total_epochs=2, batch_size=256),
              896: H(lr=7e-6, wd=7e-7, total_epochs=2, batch_size=256)},
     dataset="tallyqa train", notes="eval keeps `issimple` (acc/simple, acc/complex).")

# ---- big_vision/configs/proj/paligemma/transfers/ocrvqa.py ----
_reg("ocrvqa", "ocrvqa.py",
     prefix="answer en {question}", suffix=field_value("answer"), fields=("question", "answer"),
     text_len=32, metric="vqa", metric_kwargs={"to_lower": True},
     hparams={224: H(lr=3e-6, wd=0.0, total_epochs=3, batch_size=128),
              448: H(lr=3e-6, wd=0.0, total_epochs=3, batch_size=128),
              896: H(lr=1e-5, wd=0.0, total_epochs=3, batch_size=128)},
     dataset="ocrvqa_id train+val")

# ---- big_vision/configs/proj/paligemma/transfers/textvqa.py ----
_reg("textvqa", "textvqa.py",
     **answer_en(),
     text_len=32, metric="vqav2",  # the vqav2 evaluator, answer_type "other"
     hparams={224: H(lr=3e-6, wd=0.0, total_epochs=5, batch_size=256),
              448: H(lr=3e-6, wd=3e-7, total_epochs=10, batch_size=256),
              896: H(lr=3e-6, wd=0.0, total_epochs=10, batch_size=256)},
     dataset="textvqa train+val")

# ---- big_vision/configs/proj/paligemma/transfers/docvqa.py ----
_reg("docvqa", "docvqa.py",
     prefix="{question}", suffix=choice("answers"), references="answers", fields=("question", "answers"),
     text_len=32, metric="anls", metric_kwargs={"to_lower": True},  # evaluator `vqa`, to_lower=True -> ANLS
     hparams={224: H(lr=1e-5, wd=1e-6, total_epochs=10, batch_size=256),
              448: H(lr=1e-5, wd=1e-6, total_epochs=10, batch_size=256),
              896: H(lr=1e-5, wd=1e-6, total_epochs=10, batch_size=256)},  # get_config: res=896
     dataset="docvqa train+val",
     notes="prefix is the raw question (copy(inkey='question')), no 'answer en'; suffix via choice(), "
           "i.e. WITH replacement.")

# ---- big_vision/configs/proj/paligemma/transfers/infovqa.py ----
_reg("infovqa", "infovqa.py",
     **answer_en(lower=True), text_len=48, metric="anls", metric_kwargs={"to_lower": True},
     hparams={224: H(lr=1e-5, wd=1e-6, total_epochs=3, batch_size=256, label_smoothing=0.4),
              448: H(lr=1e-5, wd=1e-6, total_epochs=3, batch_size=128, label_smoothing=0.4),
              896: H(lr=3e-6, wd=3e-7, total_epochs=3, batch_size=32, label_smoothing=0.4)},
     dataset="infovqa train+val", notes="batch_size = {224: 256, 448: 128, 896: 32}[res].")

# ---- big_vision/configs/proj/paligemma/transfers/stvqa.py ----
_reg("stvqa", "stvqa.py",
     **answer_en(lower=True), text_len=48, metric="anls", metric_kwargs={"to_lower": True},
     hparams={224: H(lr=1e-5, wd=1e-6, total_epochs=3, batch_size=256, label_smoothing=0.1),  # get_config: 5 ep
              448: H(lr=1e-5, wd=1e-6, total_epochs=3, batch_size=128, label_smoothing=0.1),
              896: H(lr=3e-6, wd=3e-7, total_epochs=3, batch_size=32, label_smoothing=0.1)},
     dataset="stvqa train+val", notes="batch_size = {224: 256, 448: 128, 896: 32}[res].")

# ---- big_vision/configs/proj/paligemma/transfers/chartqa.py ----
_reg("chartqa", "chartqa.py",
     prefix="{question}", suffix=field_value("answer"), fields=("question", "answer"),
     text_len=48, metric="chartqa", metric_kwargs={"to_lower": True},
     hparams=H_224_448(lr=1e-5, wd=1e-6, total_epochs=30, batch_size=256, label_smoothing=0.2, llm_dropout=0.1),
     dataset="chartqa/human : chartqa/augmented weighted 7_398 : 20_901, train+val",
     notes="prefix is the raw question, no 'answer en'. get_config res=896 (sweep: 896 not better).")

# ---- big_vision/configs/proj/paligemma/transfers/vizwizvqa.py ----
_reg("vizwizvqa", "vizwizvqa.py",
     **answer_en(),
     text_len=48, metric="vqa",
     hparams=H_224_448(lr=1e-5, wd=0.0, total_epochs=10, batch_size=256),
     dataset="vizwizvqa train+val")

# ---- big_vision/configs/proj/paligemma/transfers/rsvqa_lr.py ----
_reg("rsvqa_lr", "rsvqa_lr.py",
     **answer_en(lower=True), text_len=32, metric="rsvqa", metric_kwargs={"to_lower": True},
     hparams=H_224_448(lr=3e-6, wd=0.0, total_epochs=3, batch_size=256, label_smoothing=0.2),
     dataset="rsvqa_lr/nonum train + val", notes="eval keeps `question_type`.")

# ---- big_vision/configs/proj/paligemma/transfers/rsvqa_hr.py ----
_reg("rsvqa_hr", "rsvqa_hr.py",
     **answer_en(lower=True), text_len=32, metric="rsvqa", metric_kwargs={"to_lower": True},
     hparams=H_224_448(lr=1e-5, wd=0.0, total_epochs=1, batch_size=256),
     dataset="rsvqa_hr/nonum train + val", notes="eval keeps `question_type`.")

# ---- big_vision/configs/proj/paligemma/transfers/refcoco_seg.py ----
REFCOCO_HPARAMS = {224: H(lr=3e-5, wd=0.0, total_epochs=100, batch_size=256, label_smoothing=0.3, llm_dropout=0.1),
                   448: H(lr=1e-5, wd=0.0, total_epochs=100, batch_size=256, label_smoothing=0.3),
                   896: H(lr=1e-5, wd=0.0, total_epochs=100, batch_size=64, label_smoothing=0.3)}
_reg("refcoco_seg", "refcoco_seg.py",
     prefix="{sentence}", suffix=refcoco_suffix, fields=("sentence", "mask", "bbox"),
     text_len=48, metric="segmentation",
     hparams=REFCOCO_HPARAMS,
     # get_config: res=448, total_epochs=5, batch_size=64; sweep_best sets no wd -> get_config's 0.0.
     dataset="ref_coco_bv/refcocox_combined:1.4.0 train",
     notes="prefix = the raw referring expression (refcoco_mask2str sets prefix=sentence; no 'segment'). "
           "suffix = <loc>x4<seg>x16, no label. crop='rs'.")

# ---- refcoco detection: NO big_vision config ----
_reg("refcoco_det", "refcoco_seg.py",
     prefix="detect {sentence}", suffix=refcoco_det_suffix, fields=("sentence", "bbox"),
     text_len=48, metric="detection",
     hparams=REFCOCO_HPARAMS,
     dataset="ref_coco_bv/refcocox_combined:1.4.0 train",
     notes="not in the config: big_vision has no detection transfer. Hyperparameters borrowed from refcoco_seg.py; "
           "prompt 'detect {sentence}' is the pretraining/mix detection prompt, not a transfer config.")

# forkme.py's hyperparameters (224 only there), for the tasks without a big_vision config.
FORKME_HPARAMS = H(lr=1e-5, wd=3e-7, total_epochs=15, batch_size=32)


def _reg_coco(kind: str, verb: str, notes: str):
    """A generic COCO-style task (``verb a ; b``), records from ``data.load_coco(kind=kind)``: NO big_vision
    config, forkme.py's hyperparameters at every resolution."""
    _reg(kind, "forkme.py", prefix=f"{verb} {{categories}}", suffix="{objects}", fields=("categories", "objects"),
         text_len=128, metric=kind, hparams=dict.fromkeys(RESOLUTIONS, FORKME_HPARAMS),
         notes=f"not in the config: hyperparameters are forkme.py's (224 only there; 448/896 copied). {notes}")


# ---- generic COCO-style detection ('detect a ; b') and segmentation ('segment a ; b'): NO big_vision config ----
_reg_coco("detection", "detect", "Records come from data.load_coco(): categories 'cat ; dog', objects "
                                 "'<loc>x4 cat ; <loc>x4 dog'. The `detection` metric: boxacc of the first box "
                                 "and COCO mAP of all boxes (pycocotools; boxes, labels, height, width).")
_reg_coco("segmentation", "segment", "objects: '<loc>x4<seg>x16 cat ; ...'.")

# ---- big_vision/configs/proj/paligemma/transfers/screen2words.py ----
_reg("screen2words", "screen2words.py",
     prefix="caption en", suffix=choice("summary"), references="summary", fields=("summary",),
     text_len=24, metric="cider",
     hparams=H_224_448(lr=1e-5, wd=0.0, total_epochs=10, batch_size=256, label_smoothing=0.2, llm_dropout=0.3),
     dataset="screen2_words train+dev")

# ---- big_vision/configs/proj/paligemma/transfers/widgetcap.py ----
_reg("widgetcap", "widgetcap.py",
     prefix="caption en", suffix=choice("texts"), references="texts", fields=("texts",),
     text_len=32, metric="cider",
     hparams=H_224_448(lr=3e-6, wd=3e-7, total_epochs=4, batch_size=64, label_smoothing=0.1, llm_dropout=0.1),
     dataset="widgetcap train+dev",
     notes="big_vision draws the widget's bbox in red on the image (draw_bbox, after resize); NOT done by the "
           "loader: draw it into your images (PIL ImageDraw.rectangle) beforehand.")

# ---- big_vision/configs/proj/paligemma/transfers/scicap.py ----
_reg("scicap", "scicap.py",
     prefix="caption en", suffix=field_value("caption"), references="caption", fields=("caption",),
     text_len=96, metric="cider",
     hparams=H_224_448(lr=3e-5, wd=0.0, total_epochs=80, batch_size=256, label_smoothing=0.1, llm_dropout=0.1),
     dataset="scicap/first_sentence_subfig_no train+val",
     notes="big_vision field 'caption/lowercase_and_token_and_remove_figure_index' (map it to `caption`).")

# ---- big_vision/configs/proj/paligemma/transfers/nlvr2.py ----
_reg("nlvr2", "nlvr2.py",
     prefix="answer en {sentence}", suffix=field_value("label"), fields=("sentence", "label"),
     text_len=64, metric="vqa",
     hparams={224: H(lr=1e-5, wd=1e-6, total_epochs=3, batch_size=256),  # get_config: lr=1e-4, wd=0.0
              448: H(lr=3e-6, wd=3e-7, total_epochs=10, batch_size=256)},
     dataset="nlvr2 train+dev",
     notes="2 images (image_left, image_right) stacked as 2 frames (2 x 256 tokens at 224): the loader keeps "
           "`image` only; pass images=[left, right] per example to the processor yourself. MaRVL evals not mirrored.")

# ---- big_vision/configs/proj/paligemma/transfers/pope.py ----
_reg("pope", "pope.py",
     prefix="{question}", suffix=field_value("answer"), fields=("question", "answer"),
     text_len=48, metric="pope",
     hparams={224: H(lr=0.0, wd=0.0, total_epochs=None, total_steps=0, batch_size=256)},
     dataset="pope test (evaluation only)", notes="total_steps=0, optax_name='identity': evaluates a transferred "
                                                  "model. wd: not in the config.")

# ---- big_vision/configs/proj/paligemma/transfers/forkme.py ----
_reg("jsonl", "forkme.py",
     prefix="{prefix}", suffix="{suffix}", fields=("prefix", "suffix"),
     text_len=128, metric="exact_match",  # forkme evaluates perplexity + storepreds; no metric in the config
     hparams={224: FORKME_HPARAMS},
     dataset="bv:jsonl {'image', 'prefix', 'suffix'}",
     notes="records already carry prefix/suffix (the labeling-tool format). forkme.py's pp then OVERWRITES the "
           "prefix with strfmt('caption en'); here the record's prefix is kept. forkme's metric is perplexity + "
           "storepreds (no score): 'exact_match' is our choice. For PaliGemma 2 forkme sets "
           "llm.final_logits_softcap=0.0. freeze_vit/freeze_llm are flags (default False).")

# ---- big_vision/configs/proj/paligemma/transfers/coco35l.py ----
COCO35L_LANGUAGES = ("ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hr", "hu",
                     "id", "it", "ja", "ko", "mi", "nl", "no", "pl", "pt", "ro", "ru", "sv", "sw", "te", "th", "tr",
                     "uk", "vi", "zh")
XM3600_LANGUAGES = tuple(sorted(COCO35L_LANGUAGES + ("quz",)))  # coco35l.py LANGUAGES_XM3600 (36: + Quechua)
_reg("coco35l", "coco35l.py",
     prefix="caption {language}", suffix=choice("captions"), references="captions", fields=("captions", "language"),
     text_len=32, metric="cider_multilingual",
     # sweep_best: total_examples = 5 * 566_435 (5 x one language's 113,287 images x 5 captions), over the 35
     # languages mixed with equal weights: 2,832,175 of the 35 x 113,287 = 3,965,045 (image, language) records
     # = 5/7 of an epoch. get_config: lr=1e-4, wd=0.0, total_examples=566_435.
     hparams=H_224_448(lr=1e-5, wd=1e-6, total_epochs=5 / 7, batch_size=256),
     dataset="coco35l train_{lang} for the 35 languages, equal weights (one record per image and language)",
     notes="records: `captions` (that language's captions) and `language` (the code, e.g. 'de'); the 35 languages "
           "are weighted equally as the train splits have the same size: concatenate them. Evaluation on "
           "dev_{lang}: CIDEr per language (cider/{lang}) and their mean (cider), each language tokenised and "
           "scored on its own as big_vision's per-language evaluators do; PTBTokenizer for every language "
           "(no segmentation of zh/ja/th), as big_vision. Greedy decoding (get_config beam_size=0).")

# ---- coco35l.py add_eval_xm: XM3600, zero-shot evaluation of the coco35l transfer ----
_reg("xm3600", "coco35l.py",
     prefix="caption {language}", suffix=choice("captions"), references="captions", fields=("captions", "language"),
     text_len=32, metric="cider_multilingual",
     hparams=H_224_448(lr=0.0, wd=0.0, total_epochs=None, total_steps=0, batch_size=1024),
     dataset="xm3600 split={lang} for 36 languages (evaluation only)",
     notes="not a config of its own: coco35l.py's add_eval_xm evaluates the coco35l model on Crossmodal-3600 "
           "(36 languages: coco35l's + 'quz'), batch_size=1024, no training (total_steps=0). Same metric as "
           "coco35l: CIDEr per language and the mean.")


# ---- the video configs (own reader: DMVR, not released) -- big_vision_hf.transfer.video for frames ----
def _reg_video(name, config, *, prefix, suffix, fields, references=None, text_len, metric, hp, num_frames, stride,
               dataset, notes=""):
    _reg(name, config, prefix=prefix, suffix=suffix, references=references, fields=fields, text_len=text_len,
         metric=metric, hparams={224: hp}, num_frames=num_frames, frame_stride=stride, dataset=dataset,
         notes=(f"{num_frames} frames every {stride} frames, {num_frames} x 256 image tokens at 224 "
                "(transfer.video.prepare_video_dataset: a list of frames, a frame folder or a video file per "
                "record, field `video`); evaluation starts at the first frame (deterministic_fs=True), training "
                "at a random frame; short clips are tiled (video_replicate_img). " + notes).strip())


# ---- big_vision/configs/proj/paligemma/transfers/msrvtt_cap.py ----
_reg_video("msrvtt_cap", "msrvtt_cap.py", prefix="caption en", suffix=choice("captions"), references="captions",
           fields=("captions",), text_len=32, metric="cider",
           hp=H(lr=1e-5, wd=0.0, total_epochs=20, batch_size=128, freeze_vit=True),  # get_config: 10 ep, wd 1e-6
           num_frames=16, stride=9, dataset="msrvtt train (+valid with final_split)",
           notes="captions: big_vision `caption/string` (video_choice draws one).")

# ---- big_vision/configs/proj/paligemma/transfers/msrvtt_qa.py ----
_reg_video("msrvtt_qa", "msrvtt_qa.py", prefix="answer en {question}", suffix=field_value("answer"),
           fields=("question", "answer"), text_len=64, metric="vqa",
           hp=H(lr=1e-5, wd=0.0, total_epochs=1, batch_size=128, freeze_vit=True),  # get_config: wd 1e-6
           num_frames=16, stride=9, dataset="msrvtt_qa train (+valid with final_split)")

# ---- big_vision/configs/proj/paligemma/transfers/msvd_qa.py ----
_reg_video("msvd_qa", "msvd_qa.py", prefix="answer en {question}", suffix=field_value("answer"),
           fields=("question", "answer"), text_len=64, metric="vqa",
           hp=H(lr=3e-6, wd=3e-7, total_epochs=1, batch_size=128),  # get_config: total_epochs=3
           num_frames=8, stride=26, dataset="msvd_qa train (+valid with final_split)")

# ---- big_vision/configs/proj/paligemma/transfers/activitynet_cap.py ----
_reg_video("activitynet_cap", "activitynet_cap.py", prefix="caption en", suffix=choice("captions"),
           references="captions", fields=("captions",), text_len=64, metric="cider",
           hp=H(lr=1e-5, wd=1e-6, total_epochs=1, batch_size=128, freeze_vit=True),  # get_config: 3 ep, not frozen
           num_frames=16, stride=30, dataset="activitynet captions train (+valid with final_split)",
           notes="one record per captioned segment.")

# ---- big_vision/configs/proj/paligemma/transfers/activitynet_qa.py ----
_reg_video("activitynet_qa", "activitynet_qa.py", prefix="answer en {question}", suffix=field_value("answer"),
           fields=("question", "answer"), text_len=64, metric="vqa",
           hp=H(lr=1e-5, wd=1e-6, total_epochs=1, batch_size=128),  # get_config: total_epochs=3
           num_frames=16, stride=70, dataset="activitynet_qa train (+valid with final_split)")

# ---- big_vision/configs/proj/paligemma/transfers/vatex_cap.py ----
_reg_video("vatex_cap", "vatex_cap.py", prefix="caption en", suffix=choice("captions"), references="captions",
           fields=("captions",), text_len=64, metric="cider",
           hp=H(lr=3e-6, wd=3e-7, total_epochs=10, batch_size=128),  # get_config: total_epochs=3
           num_frames=16, stride=7, dataset="vatex train (+valid with final_split)")


# ---- PaliGemma 2's new transfer tasks (arXiv 2412.03555): NO big_vision config ----
PG2_PAPER = "PaliGemma 2 (arXiv 2412.03555)"


def pubtabnet_html(record: Mapping, ctx: BuildContext | None = None) -> str:
    """PubTabNet / FinTabNet annotation -> the table's HTML (the target): ``html.structure.tokens`` with each
    cell's ``tokens`` put after its ``<td>`` (or the ``>`` closing ``<td colspan=..``), single characters
    HTML-escaped, as PubTabNet's ``format_html``; a record with ``html`` already a string is taken as is."""
    import html as html_lib

    value = record["html"]
    if isinstance(value, str):
        return value
    try:
        tokens, cells = list(value["structure"]["tokens"]), list(value["cells"])
    except (KeyError, TypeError):
        raise ValueError("`html` is the table's HTML or PubTabNet's {'structure': {'tokens': [...]}, 'cells': "
                         f"[{{'tokens': [...]}}, ...]}}, got {str(value)[:80]}") from None
    slots = [i for i, t in enumerate(tokens) if t in ("<td>", ">")]
    for i, cell in zip(slots[::-1], cells[::-1]):
        if cell.get("tokens"):
            tokens.insert(i + 1, "".join(html_lib.escape(t) if len(t) == 1 else t for t in cell["tokens"]))
    return "<table>" + "".join(tokens) + "</table>"


def mimic_cxr_prefix(record: Mapping) -> str:
    """``report en``, then the study's INDICATION section when the record has one (``indication``): the paper
    (App. B.7) gives the indications as the prefix at prediction and trains on the full reports; its exact prompt
    is not published."""
    indication = str(record.get("indication") or "").strip()
    return f"report en {indication}" if indication else "report en"


def text_spotting_target(record: Mapping, ctx: BuildContext | None = None) -> str:
    """The ``words`` of a record: a ``<loc>`` string as is, or ``[{"polygon" | "box", "text"}]`` (normalised, e.g.
    ``metrics_pg2.parse_icdar_gt`` of an ICDAR ``gt_img_*.txt``) as ``<loc>x8 word ; ...`` (don't-care dropped)."""
    return words_to_text(record["words"])


def _reg_pg2(name, section, *, prefix, suffix, fields, text_len, metric, hparams, dataset, notes, references=None):
    register_task(TransferTask(
        name=name, config=f"{PG2_PAPER}: {section}", prefix=prefix, suffix=suffix, references=references,
        fields=fields, text_len=text_len, metric=metric, hparams=hparams, dataset=dataset,
        notes=("not a big_vision config: a PaliGemma 2 paper task; hyperparameters and text_len from the paper's "
               "appendix B where it gives them (marked below), the prompt is ours (the paper publishes none). "
               + notes)))


# What the paper's appendix B does not give is marked "not in the paper": forkme.py's values, but weight decay,
# which B.1-B.4 do not mention: 0 here. The schedule (cosine, 5 % warmup) is big_vision's, not the paper's.
# App. B.1: 15k steps, batch 256, max sequence length 2048, lr 1e-5 (swept {0.01, 0.05, 0.1, 0.5, 1.0} x 1e-4),
# label smoothing 0.1; best at 896 px.
_TEXT_HP = H(lr=1e-5, wd=0.0, total_epochs=None, total_steps=15_000, batch_size=256, label_smoothing=0.1)
_reg_pg2("text_detection", "text detection and recognition (Sec. 4.2, App. B.1)", prefix="ocr",
         suffix=text_spotting_target, fields=("words",), text_len=2048, metric="text_spotting",
         hparams=dict.fromkeys((224, 448, 896), _TEXT_HP),
         dataset="ICDAR'15, Total-Text (+ MLT17, MLT19, HierText, TextOCR, IntelOCR for training)",
         notes="`words`: '<loc>x4 word ; ...' (boxes) or '<loc>x8 word ; ...' (quadrilaterals, (y, x) per point), or "
               "a list of {'polygon': [[x, y], ...] normalised, 'text'} (metrics_pg2.parse_icdar_gt of ICDAR "
               "gt_img_*.txt). Metric: word-level P/R/F1, IoU >= 0.5 and equal text (HierText protocol; ### = "
               "don't care). Paper Table 2, 3B 896 px: ICDAR'15 P/R/F1 81.9/70.7/75.9, Total-Text 73.8/74.5/74.2; "
               "224 / 448 px: not published ('substantially lower').")
# App. B.2: as B.1, but max output length 4096, no label smoothing, lr 1e-4.
_reg_pg2("table_structure", "table structure recognition (Sec. 4.3, App. B.2)", prefix="parse table",
         suffix=pubtabnet_html, fields=("html",), text_len=4096, metric="table_structure",
         hparams=dict.fromkeys((224, 448, 896), H(lr=1e-4, wd=0.0, total_epochs=None, total_steps=15_000,
                                                  batch_size=256)),
         dataset="PubTabNet (516k), FinTabNet (113k): PubTabNet jsonl records (filename, html.structure, "
                 "html.cells)",
         notes="target: the table HTML (PubTabNet format_html); the paper also puts each non-empty cell's box in "
               "a coords=\"<loc>x4\" attribute of its <td> (not done here) and pads images to a square with white "
               "pixels before resizing: do that beforehand. Metric: TEDS, TEDS-S (apted) and GriTS-Top / GriTS-Con "
               "(grits-metric). Paper Table 3, 3B 896 px: FinTabNet S-TEDS 99.2, TEDS 98.9, GriTS-Top 99.4, "
               "GriTS-Con 99.2; PubTabNet 97.6, 97.3, 98.0, 97.8; 224 / 448 px: not published.")
# App. B.3: 30k steps, batch 256, lr 1e-4, label smoothing 0.1, max output length 256, padded to a square (white).
_MOLECULE_HP = H(lr=1e-4, wd=0.0, total_epochs=None, total_steps=30_000, batch_size=256, label_smoothing=0.1)
_reg_pg2("molecule", "molecular structure recognition (Sec. 4.4, App. B.3)", prefix="smiles", suffix="{smiles}",
         fields=("smiles",), text_len=256, metric="smiles_exact_match",
         hparams=dict.fromkeys((224, 448, 896), _MOLECULE_HP),
         dataset="1M PubChem molecules rendered with Indigo (MolScribe augmentations); eval: MolScribe's 5.7k "
                 "ChemDraw images",
         notes="Metric: exact match of RDKit canonical SMILES (pip install rdkit). Paper Table 4 gives 10B 448 px: "
               "94.8 only; PaliGemma 2 3B: not published.")
# App. B.4: as B.3 with max output length 1024.
_reg_pg2("music_score", "optical music score recognition (Sec. 4.5, App. B.4)", prefix="kern", suffix="{kern}",
         fields=("kern",), text_len=1024, metric="music_error_rates",
         hparams=dict.fromkeys((224, 448, 896), _MOLECULE_HP),
         dataset="GrandStaff (**kern transcriptions; official train/val/test splits)",
         notes="Metric: symbol and line error rates (lower is better); the paper's CER is not computed. Paper "
               "Table 5, 3B 896 px: CER 1.6, SER 2.3, LER 6.7; 224 / 448 px: not published.")
# App. B.5: PaliGemma's transfer protocol and hyperparameter range (its Sec. 3.2.4): the chosen values are not in
# the paper (forkme.py's here); captions decoded up to 192 tokens (Sec. 4.6).
_reg_pg2("docci", "long fine-grained captioning (Sec. 4.6, App. B.5)", prefix="caption en", suffix="{caption}",
         fields=("caption",), text_len=192, metric="cider", hparams=dict.fromkeys((224, 448), FORKME_HPARAMS),
         references="caption", dataset="DOCCI long fine-grained captions (train; qual_dev for the paper's eval)",
         notes="lr/wd/epochs/batch: not in the paper (forkme.py's). The paper scores factuality with NES "
               "(non-entailed sentences, human raters): not available here; CIDEr is reported instead. Paper "
               "Table 6, 3B 448 px: NES 28.4 % (529 characters, 7.7 sentences); 224 px: not published.")
# App. B.7: 8 epochs, lr 5e-6, no label smoothing, dropout or weight decay, greedy decoding (found at 448 px; the
# lr was swept again at higher resolutions, the values chosen there are not published). Batch size and text_len:
# not in the paper (forkme.py's batch, our 256).
_reg_pg2("mimic_cxr", "radiography report generation (Sec. 4.8, App. B.7)", prefix=mimic_cxr_prefix,
         suffix="{report}", fields=("report",), text_len=256, metric="report_generation", references="report",
         hparams=dict.fromkeys((224, 448, 896), H(lr=5e-6, wd=0.0, total_epochs=8, batch_size=32)),
         dataset="MIMIC-CXR (splits of Tanno et al.; mentions of prior X-rays removed)",
         notes="prefix: 'report en' + the INDICATION section when the record has `indication` (the paper's "
               "prefix at prediction); target: the report. Metric: CIDEr, BLEU-4, ROUGE-L (pycocoevalcap), RadGraph "
               "F1 with metric_kwargs={'radgraph_dir': folder with the RadGraph weights} (the radgraph package; "
               "nothing is downloaded). Paper Table 8, 3B 896 px: CIDEr 19.9, BLEU-4 14.6, ROUGE-L 31.9, RadGraph "
               "F1 28.8; 224 / 448 px: not published.")
# App. B.6: batch 1024, max output length 18; lr {0.1, 0.2, 1.0, 3.0} x 1e-6, wd {0.1, 0.3, 1.0} x 1e-6, dropout
# {0, 0.1, 0.2}, epochs {1, 3, 5, 10, 15, 30} swept: the chosen values are not in the paper (forkme.py's lr/wd/epochs).
_reg_pg2("vsr", "spatial reasoning (Sec. 4.7, App. B.6)", prefix="answer en {caption}", suffix="{label}",
         fields=("caption", "label"), text_len=18, metric="exact_match",
         hparams=dict.fromkeys((224, 448), H(lr=1e-5, wd=3e-7, total_epochs=15, batch_size=1024)),
         dataset="Visual Spatial Reasoning (zero-shot and random splits)",
         notes="`label`: 'true' / 'false' (map VSR's 1/0). Metric: accuracy. text_len 18 is the paper's maximum "
               "output length. Paper Table 7, 3B 224 px: 74.8 (zero-shot split), 81.6 (random split); 448 px: "
               "not published (no gain beyond 224).")
