"""The metrics of the PaliGemma transfer evaluators, computed exactly as big_vision computes them.

Sources (google-research/big_vision at commit 0127fb6, ``big_vision/evaluators/proj/paligemma/transfers/``):

- ``coco_caption.py``: pycocoevalcap ``PTBTokenizer`` on references and predictions, then ``Cider`` (CIDEr-D,
  ``n=4, sigma=6``). :func:`ptb_tokenize` / :func:`~big_vision_hf.transfer.ptb.ptb_tokenize_lines` are the
  Stanford PTBTokenizer jar (``-preserveLines -lowerCase``) plus pycocoevalcap's punctuation filter in Python,
  identical to the jar (``transfer/ptb.py``); ``tokenizer="java"`` runs pycocoevalcap's own (needs Java).
- ``vqav2.py``: VQAv2 normalisation and the leave-one-out accuracy, by answer type.
- ``vqa.py``: ``acc`` (exact, or ``min(1, #match / 3)`` with several answers), ``acc_any`` and ``anls``.
- ``chartqa.py``: relaxed accuracy (5% relative tolerance on numbers).
- ``tallyqa.py``, ``rsvqa.py``, ``science_qa.py``, ``pope.py``, ``segmentation.py``.

Every metric has the signature ``fn(predictions, references, examples=None, **options) -> dict[str, float]``:
``predictions`` are the generated strings, ``references`` one entry per prediction (a string, or a list of
strings for several ground truths), ``examples`` the dataset rows for the metrics that need other fields
(``answer_type``, ``question_type``, ``issimple``, ``bbox``, ``mask``). :data:`METRICS` maps names to them.
Aggregates are means over examples, as big_vision's ``process_sum`` of sums and counts.
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np

from .masks import load_mask
from .ptb import PTB_PUNCTUATIONS, ptb_tokenize, ptb_tokenize_lines

__all__ = [
    "METRICS",
    "anls",
    "anls_metric",
    "chartqa",
    "cider",
    "cider_multilingual",
    "coco_map",
    "detection",
    "exact_match",
    "levenshtein",
    "pope",
    "pope_answer",
    "postprocess_vqav2_text",
    "ptb_tokenize",
    "relaxed_match",
    "rsvqa",
    "science_qa",
    "science_qa_answer",
    "segmentation",
    "tallyqa",
    "vqa",
    "vqav2",
]


def _check_lengths(predictions, references):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def _field(examples, names: Sequence[str], n: int, required: bool = False) -> list | None:
    """The values of the first of ``names`` present in the rows ``examples`` (``None`` where absent)."""
    if examples is None:
        if required:
            raise ValueError(f"this metric needs `examples` with a field {' or '.join(names)!r}")
        return None
    if len(examples) != n:
        raise ValueError(f"{len(examples)} examples for {n} predictions")
    out = []
    for ex in examples:
        value = next((ex[k] for k in names if k in ex), None)
        if value is None and required:
            raise ValueError(f"an example lacks the field {' or '.join(names)!r}")
        out.append(value)
    return out


def _as_list(ref) -> list[str]:
    if isinstance(ref, str):
        return [ref]
    return [str(r) for r in ref]


def _mean(values) -> float:
    return float(sum(values) / len(values)) if len(values) else float("nan")


# ---------------------------------------------------------------------------------------------------------
# CIDEr (coco_caption.py -> pycocoevalcap 1.2: tokenizer/ptbtokenizer.py, cider/cider_scorer.py)
# ---------------------------------------------------------------------------------------------------------

def _ptb_tokenize_java(texts: list[str]) -> list[str]:
    """pycocoevalcap's own ``PTBTokenizer`` (``java -cp stanford-corenlp-3.4.1.jar``), one line per text."""
    if shutil.which("java") is None:
        raise RuntimeError("tokenizer='java' runs pycocoevalcap's PTBTokenizer, which needs a Java runtime "
                           "(`java` is not on PATH); use tokenizer='python' (the default) instead")
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        raise RuntimeError("tokenizer='java' needs the `pycocoevalcap` package (pip install pycocoevalcap); "
                           "tokenizer='python' (the default) needs nothing") from None
    jar_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(t.replace("\n", " ") for t in texts))
        name = f.name
    try:
        out = subprocess.run(["java", "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR,
                              "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", name],
                             cwd=jar_dir, capture_output=True, check=True).stdout.decode()
    finally:
        os.remove(name)
    lines = out.split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS) for line in lines[:len(texts)]]


def _ngrams(sentence: str, n: int = 4) -> collections.Counter:
    """cider_scorer.py ``precook``: counts of all 1..n-grams of ``sentence.split()``."""
    words = sentence.split()
    counts = collections.Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """pycocoevalcap ``CiderScorer.compute_score`` on ALREADY TOKENIZED strings: ``(corpus score, per image)``.

    CIDEr-D: tf-idf n-gram vectors (idf over the reference sets of this corpus), clipped cosine similarity
    ``min(hyp, ref) * ref / (|hyp| |ref|)`` per n, times ``exp(-delta^2 / (2 sigma^2))``, averaged over n = 1..4
    and over the references, times 10. As in pycocoevalcap, ``delta`` is the difference of the numbers of
    BIGRAMS (``if n == 1: length += term_freq``), not of words.
    """
    crefs = [[_ngrams(r, n) for r in refs] for refs in references]
    ctest = [_ngrams(c, n) for c in candidates]
    doc_freq = collections.Counter()
    for refs in crefs:
        for ngram in {g for ref in refs for g in ref}:
            doc_freq[ngram] += 1
    if crefs:
        assert len(ctest) >= max(doc_freq.values(), default=0)
    ref_len = np.log(float(len(crefs)))

    def counts2vec(cnts):
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in cnts.items():
            df = np.log(max(1.0, doc_freq.get(ngram, 0.0)))
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (ref_len - df)
            norm[k] += vec[k][ngram] ** 2
            if k == 1:
                length += tf
        return vec, [np.sqrt(x) for x in norm], length

    def sim(vec_hyp, vec_ref, norm_hyp, norm_ref, length_hyp, length_ref):
        delta = float(length_hyp - length_ref)
        val = np.zeros(n)
        for k in range(n):
            for ngram in vec_hyp[k]:
                ref_w = vec_ref[k].get(ngram, 0.0)
                val[k] += min(vec_hyp[k][ngram], ref_w) * ref_w
            if norm_hyp[k] != 0 and norm_ref[k] != 0:
                val[k] /= norm_hyp[k] * norm_ref[k]
            assert not math.isnan(val[k])
            val[k] *= np.e ** (-(delta ** 2) / (2 * sigma ** 2))
        return val

    scores = []
    for test, refs in zip(ctest, crefs):
        vec, norm, length = counts2vec(test)
        score = np.zeros(n)
        for ref in refs:
            vec_ref, norm_ref, length_ref = counts2vec(ref)
            score += sim(vec, vec_ref, norm, norm_ref, length, length_ref)
        scores.append(np.mean(score) / len(refs) * 10.0)
    scores = np.array(scores)
    return float(np.mean(scores)), scores


def cider(predictions, references, examples=None, *, tokenizer: str = "python") -> dict[str, float]:
    """CIDEr as big_vision's ``coco_caption.py`` evaluator: PTB-tokenize references and predictions, then
    pycocoevalcap ``Cider()`` (``n=4, sigma=6``); one prediction and one or more references per image.

    Args:
        tokenizer: ``"python"`` (:func:`ptb_tokenize`, no dependencies) or ``"java"`` (pycocoevalcap's
            ``PTBTokenizer``: needs the ``pycocoevalcap`` package and a ``java`` on PATH).
    """
    _check_lengths(predictions, references)
    refs = [_as_list(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("every prediction needs at least one reference caption")
    if tokenizer not in ("python", "java"):
        raise ValueError(f"tokenizer must be 'python' or 'java', got {tokenizer!r}")
    # coco_caption.py: PTBTokenizer().tokenize(gts), then .tokenize(res): two inputs, one caption per line (a
    # caption's tokens may depend on the next line: see transfer/ptb.py).
    tokenize_lines = ptb_tokenize_lines if tokenizer == "python" else _ptb_tokenize_java
    flat = tokenize_lines([r for rs in refs for r in rs])
    refs_tok, i = [], 0
    for rs in refs:
        refs_tok.append(flat[i:i + len(rs)])
        i += len(rs)
    preds_tok = tokenize_lines(list(predictions))
    score, _ = cider_d(preds_tok, refs_tok)
    return {"cider": score, "num": float(len(predictions))}


def cider_multilingual(predictions, references, examples=None, *, tokenizer: str = "python",
                       language_key: str = "language") -> dict[str, float]:
    """Multilingual captioning (COCO-35L, XM3600): CIDEr per language, ``cider/{lang}``, and ``cider`` = their
    mean (the "avg" over languages the PaliGemma papers report).

    big_vision (``coco35l.py`` ``add_eval`` / ``add_eval_xm``) runs one ``coco_caption`` evaluator per language,
    so each language is tokenised and scored on its own (the idf of CIDEr-D is per language), exactly as
    :func:`cider` does on that language's examples. The tokenizer is pycocoevalcap's PTBTokenizer for EVERY
    language, also for those written without spaces (zh, ja, th): big_vision does no word segmentation, so a
    Chinese caption is a few whitespace-separated "words" and its CIDEr is close to a whole-sentence match. We
    follow big_vision (so the numbers compare with the papers'); ``examples`` need the ``language`` field.
    """
    _check_lengths(predictions, references)
    langs = _field(examples, (language_key,), len(predictions), required=True)
    by_lang = collections.defaultdict(list)
    for i, lang in enumerate(langs):
        by_lang[str(lang)].append(i)
    out = {}
    for lang in sorted(by_lang):
        idx = by_lang[lang]
        scores = cider([predictions[i] for i in idx], [references[i] for i in idx], tokenizer=tokenizer)
        out[f"cider/{lang}"] = scores["cider"]
        out[f"num/{lang}"] = float(len(idx))
    out["cider"] = _mean([out[f"cider/{lang}"] for lang in by_lang])
    out["num_languages"] = float(len(by_lang))
    out["num"] = float(len(predictions))
    return out


# ---------------------------------------------------------------------------------------------------------
# VQAv2 (vqav2.py; https://visualqa.org/evaluation.html)
# ---------------------------------------------------------------------------------------------------------

def stripspace_vqav2(txt: str) -> str:
    """vqav2.py ``stripspace_vqav2``: newlines and tabs to spaces, strip."""
    return txt.replace("\n", " ").replace("\t", " ").strip()


def postprocess_vqav2_text(txt: str) -> str:
    """vqav2.py ``postprocess_vqav2_text``: the official VQA punctuation rules, full stops, lowercase, articles
    dropped, contractions and number words mapped. The official code's quirks are kept (a digit comma anywhere
    removes all punctuation; the full-stop regex's ``(?!<=\\d)`` look-ahead)."""
    has_digit_comma = re.search(r"(\d)(\,)(\d)", txt) is not None
    out = txt
    for p in _VQA_PUNCT:
        # NOTE: digit_comma here looks like a bug in official code, so we follow it. (big_vision)
        if has_digit_comma or f"{p} " in txt or f" {p}" in txt:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = re.sub(r"(?!<=\d)(\.)(?!\d)", "", out, flags=re.UNICODE)  # (sic)
    words = []
    for word in out.lower().split():
        if word not in _VQA_ARTICLES:
            words.append(_VQA_REPLACEMENTS.get(word, word))
    return " ".join(words)


def vqav2_accuracy_single(answer: str, gt_answers: Sequence[str]) -> tuple[float, str, list[str]]:
    """One VQAv2 score: ``(accuracy, normalised answer, normalised gts)``.

    Space-stripped always; fully normalised only when the ground truths are not all identical (big_vision,
    after https://github.com/GT-Vision-Lab/VQA/issues/14). Accuracy is the mean over the leave-one-out subsets
    of ``min(1, #matches / 3)``: 10 subsets for the usual 10 answers (big_vision hard-codes ``range(10)``;
    for other counts we leave out each of the ``len(gt_answers)`` answers in turn).
    """
    gts = [stripspace_vqav2(a) for a in gt_answers]
    answer = stripspace_vqav2(answer)
    if len(set(gts)) > 1:
        answer = postprocess_vqav2_text(answer)
        gts = [postprocess_vqav2_text(a) for a in gts]
    matches = answer == np.array(gts)
    acc = float(np.mean([np.clip(np.sum(np.delete(matches, i)) / 3, 0, 1) for i in range(len(gts))]))
    return acc, answer, gts


def vqav2(predictions, references, examples=None) -> dict[str, float]:
    """VQAv2 accuracy (big_vision ``vqav2.py``), overall and per ``answer_type`` (``yes/no``, ``number``,
    ``other``) when the examples have that field. ``references``: the list of (10) answers per question."""
    _check_lengths(predictions, references)
    types = _field(examples, ("answer_type",), len(predictions)) or [None] * len(predictions)
    by_type = collections.defaultdict(list)
    accs = []
    for pred, gts, t in zip(predictions, references, types):
        gts = _as_list(gts)
        if not gts:
            continue
        acc, _, _ = vqav2_accuracy_single(pred, gts)
        accs.append(acc)
        if t is not None:
            by_type[t].append(acc)
    out = {"acc": _mean(accs)}
    for t, name in (("yes/no", "yesno"), ("number", "number"), ("other", "other")):
        if by_type.get(t):
            out[f"acc/{name}"] = _mean(by_type[t])
            out[f"num/{name}"] = float(len(by_type[t]))
    out["num"] = float(len(predictions))
    return out


# ---------------------------------------------------------------------------------------------------------
# Simple VQA (vqa.py): exact match / min(1, n/3) / ANLS
# ---------------------------------------------------------------------------------------------------------

def levenshtein(a: str, b: str) -> int:
    """Edit distance over characters, unit costs: ``rapidfuzz.distance.Levenshtein.distance`` (the value of
    ``editdistance.eval(a, b)``, which big_vision's ANLS uses)."""
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def anls_metric(target: str, prediction: str, theta: float = 0.5) -> float:
    """vqa.py ``anls_metric``: ``1 - ED / max(len)`` if that normalised distance is ``< theta``, else 0; an empty
    target scores ``prediction == ""``. (https://arxiv.org/pdf/1907.00490.pdf Eq. 1)"""
    if target:
        normalized_ld = levenshtein(target, prediction) / max(len(target), len(prediction))
        return 1 - normalized_ld if normalized_ld < theta else 0.0
    return float(prediction == "")


def vqa(predictions, references, examples=None, *, to_lower: bool = False) -> dict[str, float]:
    """big_vision ``vqa.py``: for a single ground truth (a string) ``acc`` = exact match; for a list,
    ``acc = min(1, #match / 3)`` (no normalisation, no leave-one-out), ``acc_any = min(1, #match)``;
    ``anls`` = the max ANLS over the ground truths. ``to_lower`` lowercases both (``to_lower=True`` configs)."""
    _check_lengths(predictions, references)
    post = (lambda s: s.lower()) if to_lower else (lambda s: s)
    accs, accs_any, anls_values = [], [], []
    for pred, ref in zip(predictions, references):
        answer = post(pred)
        if isinstance(ref, str):
            gt = post(ref)
            accs.append(float(answer == gt))
            accs_any.append(float(answer == gt))
            anls_values.append(anls_metric(gt, answer))
        elif len(ref):
            gts = [post(a) for a in ref]
            num_match = sum(answer == gt for gt in gts)
            accs.append(min(1.0, num_match / 3.0))
            accs_any.append(min(1.0, float(num_match)))
            anls_values.append(max(anls_metric(gt, answer) for gt in gts))
    out = {}
    if accs:
        out = {"acc": _mean(accs), "acc_any": _mean(accs_any), "anls": _mean(anls_values)}
    out["num"] = float(len(predictions))
    return out


def exact_match(predictions, references, examples=None, *, to_lower: bool = False) -> dict[str, float]:
    """Exact string match against one ground truth, or any of several (big_vision ``vqa.py``'s single-GT
    branch; ``acc_any`` of its multi-GT branch)."""
    _check_lengths(predictions, references)
    post = (lambda s: s.lower()) if to_lower else (lambda s: s)
    accs = [float(post(p) in [post(r) for r in _as_list(ref)]) for p, ref in zip(predictions, references)]
    return {"acc": _mean(accs), "num": float(len(accs))}


def anls(predictions, references, examples=None, *, to_lower: bool = True, theta: float = 0.5) -> dict[str, float]:
    """ANLS (DocVQA, InfographicVQA, ST-VQA): big_vision ``vqa.py``'s ``anls``, max over the ground truths.
    The DocVQA/InfoVQA/ST-VQA configs evaluate with ``to_lower=True``, hence the default."""
    _check_lengths(predictions, references)
    post = (lambda s: s.lower()) if to_lower else (lambda s: s)
    values = [max(anls_metric(post(gt), post(p), theta) for gt in _as_list(ref))
              for p, ref in zip(predictions, references) if _as_list(ref)]
    return {"anls": _mean(values), "num": float(len(predictions))}


# ---------------------------------------------------------------------------------------------------------
# ChartQA (chartqa.py)
# ---------------------------------------------------------------------------------------------------------

def _to_float(text: str) -> float | None:
    """chartqa.py ``_to_float``: ``float(text)``, a trailing ``%`` divides by 100; ``None`` if not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_match(target: str, prediction: str, max_relative_error: float = 0.05) -> bool:
    """chartqa.py ``_relaxed_match``: numbers within 5% relative error of a non-zero target; otherwise (a zero
    or non-numeric target, a non-numeric prediction) an exact string match."""
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_error
    return prediction == target


def chartqa(predictions, references, examples=None, *, to_lower: bool = False,
            max_relative_error: float = 0.05) -> dict[str, float]:
    """big_vision ``chartqa.py``: ``acc`` (exact) and ``relaxed_acc`` (5% tolerance), one ground truth each."""
    _check_lengths(predictions, references)
    post = (lambda s: s.lower()) if to_lower else (lambda s: s)
    accs, relaxed = [], []
    for pred, ref in zip(predictions, references):
        answer, gt = post(pred), post(_as_list(ref)[0])
        accs.append(float(answer == gt))
        relaxed.append(float(relaxed_match(gt, answer, max_relative_error)))
    return {"acc": _mean(accs), "relaxed_acc": _mean(relaxed), "num": float(len(accs))}


# ---------------------------------------------------------------------------------------------------------
# TallyQA (tallyqa.py)
# ---------------------------------------------------------------------------------------------------------

_LARGEST_COUNT = 15  # tallyqa.py: counts tracked for acc/count_k
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS["none"] = "0"


def _number_word_to_numeral(s: str) -> str:
    """tallyqa.py: ``"one"`` -> ``"1"`` (up to twenty, case-insensitive); anything else unchanged."""
    return _NUMBER_WORDS.get(s.lower(), s)


def tallyqa(predictions, references, examples=None) -> dict[str, float]:
    """big_vision ``tallyqa.py``: exact match after number words -> digits; ``acc``, ``acc/simple``,
    ``acc/complex`` (examples' ``issimple``: 1 simple, 0 complex, -1 unannotated) and ``acc/count_k``."""
    _check_lengths(predictions, references)
    simple = _field(examples, ("issimple",), len(predictions)) or [None] * len(predictions)
    by = collections.defaultdict(list)
    for pred, ref, s in zip(predictions, references, simple):
        answer = _number_word_to_numeral(pred)
        gt = _number_word_to_numeral(_as_list(ref)[0])
        correct = float(answer == gt)
        by["all"].append(correct)
        if s is not None and int(s) == 1:
            by["simple"].append(correct)
        elif s is not None and int(s) == 0:
            by["complex"].append(correct)
        if gt.isdigit() and int(gt) <= _LARGEST_COUNT:
            by[f"count_{gt}"].append(correct)
    out = {"acc": _mean(by["all"]), "num": float(len(by["all"]))}
    keys = ["simple", "complex"] + [f"count_{i}" for i in range(_LARGEST_COUNT + 1)]
    for key in keys:
        if by.get(key):
            out[f"acc/{key}"] = _mean(by[key])
            out[f"num/{key}"] = float(len(by[key]))
    return out


# ---------------------------------------------------------------------------------------------------------
# RSVQA (rsvqa.py)
# ---------------------------------------------------------------------------------------------------------

RSVQA_QUESTION_TYPES = ("comp", "count", "presence", "rural_urban", "area")
RSVQA_ACC_SUBSETS = (("nonum", ("comp", "presence", "rural_urban")),  # rsvqa_lr
                     ("nonum", ("comp", "presence")))  # rsvqa_hr


def rsvqa(predictions, references, examples=None, *, to_lower: bool = False) -> dict[str, float]:
    """big_vision ``rsvqa.py``: the ``vqa.py`` metrics plus, for list references, ``acc_any`` per
    ``question_type`` (``acc_{type}``), their mean ``acc_avg`` (AA) and ``acc_avg_nonum``.

    As in big_vision, per-type accuracies only count examples whose reference is a LIST of answers.
    big_vision yields ``acc_avg_nonum`` once per subset of ``ACC_SUBSETS`` whose types all occur: first LR
    (comp, presence, rural_urban), then HR (comp, presence); its metric writer keeps the LAST value
    (``step_metrics[name] = value``), so the recorded ``acc_avg_nonum`` is the HR subset whenever comp and
    presence occur, also on RSVQA-LR. We return that value, and both subsets unambiguously as
    ``acc_avg_nonum_lr`` / ``acc_avg_nonum_hr``.
    """
    out = vqa(predictions, references, to_lower=to_lower)
    qtypes = _field(examples, ("question_type",), len(predictions)) or [None] * len(predictions)
    post = (lambda s: s.lower()) if to_lower else (lambda s: s)
    per_type = collections.defaultdict(list)
    for pred, ref, qt in zip(predictions, references, qtypes):
        if isinstance(ref, str) or not len(ref) or qt is None:
            continue
        answer = post(pred)
        per_type[qt].append(min(1.0, float(sum(answer == post(g) for g in ref))))
    acc_types = {t: _mean(v) for t, v in per_type.items() if v}
    if acc_types and "acc" in out:
        for t, v in acc_types.items():
            out[f"acc_{t}"] = v
        out["acc_avg"] = _mean(list(acc_types.values()))
        for (postfix, types), which in zip(RSVQA_ACC_SUBSETS, ("lr", "hr")):
            if all(t in acc_types for t in types):
                value = _mean([acc_types[t] for t in types])
                out[f"acc_avg_{postfix}"] = value  # the last one wins, as in big_vision's metric writer
                out[f"acc_avg_{postfix}_{which}"] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# ScienceQA (science_qa.py), POPE (pope.py)
# ---------------------------------------------------------------------------------------------------------

SCIENCE_QA_FAILURE = "failed"


def science_qa_answer(text: str) -> str:
    """science_qa.py ``postproc``: ``re.match(r"the answer is ([a-z])\\.", text.lower())`` -> the letter
    (``"a"``, ``"b"``, ...), else ``"failed"``. ``re.match`` anchors at the start of the string."""
    match = re.match(r"the answer is ([a-z])\.", text.lower())
    return match.groups()[0] if match else SCIENCE_QA_FAILURE


def science_qa(predictions, references, examples=None) -> dict[str, float]:
    """big_vision ``science_qa.py``: the answer letter extracted from prediction AND reference
    (``"The answer is B."``), ``acc`` = equal letters, ``parsefail`` = share of predictions that did not parse.
    (As in big_vision, an unparsable reference equals an unparsable prediction: both are ``"failed"``.)"""
    _check_lengths(predictions, references)
    answers = [science_qa_answer(p) for p in predictions]
    gts = [science_qa_answer(_as_list(r)[0]) for r in references]
    return {"acc": _mean([float(a == g) for a, g in zip(answers, gts)]),
            "parsefail": _mean([float(a == SCIENCE_QA_FAILURE) for a in answers]),
            "num": float(len(answers))}


def pope_answer(text: str) -> str:
    """The POPE script's reading of an answer (RUCAIBox/POPE ``evaluate.py``): the first sentence (up to the first
    ``"."``), commas removed, split on spaces; ``"no"`` if a word is ``No``, ``no`` or ``not``, else ``"yes"``."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def pope(predictions, references, examples=None) -> dict[str, float]:
    """POPE. big_vision ``pope.py``: ``acc`` = the lowercased prediction equals the ``yes``/``no`` answer,
    ``valid_percent`` = share of predictions that are ``yes`` or ``no``.

    And the POPE paper's numbers as its script computes them (https://github.com/RUCAIBox/POPE ``evaluate.py``):
    every prediction read by :func:`pope_answer` (an answer without "no" / "No" / "not" in its first sentence is
    "yes"), labels ``"no"`` -> negative and anything else -> positive; ``pope_acc`` = (TP + TN) / N,
    ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN), ``f1``, ``yes_ratio`` = share of "yes" readings.
    (Where the script divides by zero, the value is 0.0.)"""
    _check_lengths(predictions, references)
    answers = [p.lower() for p in predictions]
    gts = [_as_list(r)[0] for r in references]
    preds = [pope_answer(p) == "yes" for p in predictions]
    labels = [g != "no" for g in gts]
    tp = sum(p and g for p, g in zip(preds, labels))
    fp = sum(p and not g for p, g in zip(preds, labels))
    tn = sum(not p and not g for p, g in zip(preds, labels))
    fn = sum(not p and g for p, g in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"acc": _mean([float(a == g) for a, g in zip(answers, gts)]),
            "valid_percent": _mean([float(a in ("yes", "no")) for a in answers]),
            "pope_acc": (tp + tn) / len(preds) if preds else float("nan"),
            "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": _mean([float(p) for p in preds]), "num": float(len(answers))}


# ---------------------------------------------------------------------------------------------------------
# RefCOCO segmentation / detection (segmentation.py)
# ---------------------------------------------------------------------------------------------------------

_REFCOCO_RE = re.compile(r"<loc(\d{4})>" * 4 + r"<seg(\d{3})>" * 16)
_BOX_RE = re.compile(r"<loc(\d{4})>" * 4)


def _area(y1, x1, y2, x2) -> float:
    return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def box_iou(box, gt_box) -> float:
    """segmentation.py: IoU of two ``(y1, x1, y2, x2)`` boxes in normalised coordinates."""
    y1, x1, y2, x2 = box
    gty1, gtx1, gty2, gtx2 = gt_box
    ibb = max(y1, gty1), max(x1, gtx1), min(y2, gty2), min(x2, gtx2)
    union = _area(*box) + _area(*gt_box) - _area(*ibb)
    return _area(*ibb) / union if union > 0 else 0.0


def parse_refcoco_tokens(text: str) -> tuple[bool, np.ndarray]:
    """segmentation.py's validity rule on the text: the output must START with 4 ``<loc>`` then 16 ``<seg>``
    (anything after is ignored), each in the vocabulary's range (``<loc0000>``..``<loc1023>``,
    ``<seg000>``..``<seg127>``; big_vision reads token ids, which cannot be out of range), with ``y2 > y1`` and
    ``x2 > x1``. Returns ``(valid, 20 ints)`` (zeros if not)."""
    from ..processing.paligemma_decoding import NUM_LOC_TOKENS, NUM_SEG_TOKENS

    m = _REFCOCO_RE.match(text)
    if m:
        t = np.array([int(g) for g in m.groups()], np.int64)
        in_range = (t[:4] < NUM_LOC_TOKENS).all() and (t[4:] < NUM_SEG_TOKENS).all()  # no <loc1500>, <seg200>
        if in_range and t[2] > t[0] and t[3] > t[1]:
            return True, t
    return False, np.zeros(20, np.int64)


def segmentation(predictions, references=None, examples=None, *, vqvae=None,
                 det_ious=(0.5, 0.75)) -> dict[str, float]:
    """big_vision ``segmentation.py`` (RefCOCO): ``miou`` (mean over examples of the IoU of the pasted mask with
    the full-resolution ground-truth mask; invalid outputs score 0), ``boxacc/{t}`` (share with box IoU >= t,
    box = ``tokens / 1023``) and ``invalid`` (count).

    ``examples`` need ``bbox`` (``objects/bbox``: normalised ``y1, x1, y2, x2``) and, for ``miou``, ``mask``
    (``objects/mask``: ``[H, W]`` or ``[H, W, 1]``, object where ``> 0``; an array, or a file path / PIL image /
    ``datasets`` image dict as :func:`~big_vision_hf.transfer.masks.load_mask` reads) plus ``vqvae`` (a
    ``BvSegVQVAEModel``); without ``vqvae`` only the box metrics are computed. ``references`` are unused (the
    targets are in the rows).
    """
    from ..processing.paligemma_decoding import LOC_BINS, paste_mask

    n = len(predictions)
    bboxes = _field(examples, ("bbox", "objects/bbox"), n, required=True)
    masks = _field(examples, ("mask", "objects/mask"), n, required=vqvae is not None)
    parsed = [parse_refcoco_tokens(p) for p in predictions]
    dets = {t: [] for t in det_ious}
    for (_, tokens), gt_box in zip(parsed, bboxes):
        iou = box_iou(tokens[:4] / LOC_BINS, np.asarray(gt_box, np.float64).reshape(4))
        for t in det_ious:
            dets[t].append(float(t <= iou))
    out = {f"boxacc/{t}": _mean(v) for t, v in dets.items()}
    invalid = 0
    if vqvae is not None:
        import torch

        with torch.no_grad():
            codes = torch.tensor(np.stack([t[4:] for _, t in parsed]), dtype=torch.long)
            masks64 = vqvae.decode(codes).float().cpu().numpy() if n else np.zeros((0, 64, 64))
        ious = []
        for (valid, tokens), m64, gt in zip(parsed, masks64, masks):
            gtm = load_mask(gt)  # an array, or a path / PIL image / datasets image dict as records keep it
            gtm = (gtm[..., 0] if gtm.ndim == 3 else gtm) > 0
            h, w = gtm.shape
            box = tokens[:4] / LOC_BINS
            y1, x1, y2, x2 = (int(v) for v in (box[0] * h, box[1] * w, box[2] * h, box[3] * w))
            if not valid or x2 <= x1 or y2 <= y1:  # "Can still happen after int()."
                ious.append(0.0)
                invalid += 1
                continue
            pred = paste_mask(np.squeeze(m64), box, (h, w))
            inter = (gtm & pred).sum()
            ious.append(float(inter / (gtm.sum() + pred.sum() - inter)))
        out["miou"] = _mean(ious)
    else:
        invalid = sum(not v for v, _ in parsed)
    out["invalid"] = float(invalid)
    out["total"] = float(n)
    return out


def _first_valid_box(text: str):
    from ..processing.paligemma_decoding import NUM_LOC_TOKENS, parse_objects

    objs = parse_objects(text)
    locs = objs[0]["loc"] if objs else None
    if not locs or not all(0 <= t < NUM_LOC_TOKENS for t in locs) or locs[2] <= locs[0] or locs[3] <= locs[1]:
        return None
    return locs


def coco_map(pred_objects, gt_objects, image_sizes=None) -> dict[str, float]:
    """COCO box mAP with pycocotools ``COCOeval`` (``iouType="bbox"``, its defaults: IoU 0.50:0.05:0.95, 101 recall
    points, ``maxDets=100``).

    Args:
        pred_objects: per image, a list of ``(label, (y1, x1, y2, x2))`` with normalised boxes. PaliGemma gives no
            confidence: every box scores 1.0, so COCOeval's (stable) sort by score keeps the generated order.
        gt_objects: per image, the ground truth in the same form.
        image_sizes: per image ``(height, width)`` to scale the boxes to pixels (the ``map_small`` / ``_medium`` /
            ``_large`` area ranges are in pixels, so they are only returned with sizes); else boxes stay in
            ``[0, 1]``.

    Returns ``map``, ``map_50``, ``map_75`` (COCOeval ``stats[0:3]``; NaN without ground truth).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = {}
    for objs in list(gt_objects) + list(pred_objects):
        for label, _ in objs:
            labels.setdefault(label, len(labels) + 1)

    def to_xywh(box, i):
        h, w = image_sizes[i] if image_sizes is not None else (1.0, 1.0)
        y1, x1, y2, x2 = (float(v) for v in box)
        return [x1 * w, y1 * h, max(x2 - x1, 0.0) * w, max(y2 - y1, 0.0) * h]

    images, annotations = [], []
    for i, objs in enumerate(gt_objects):
        h, w = image_sizes[i] if image_sizes is not None else (1, 1)
        images.append({"id": i, "height": h, "width": w})
        for label, box in objs:
            xywh = to_xywh(box, i)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": labels[label],
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    dets = [{"image_id": i, "category_id": labels[label], "bbox": to_xywh(box, i), "score": 1.0}
            for i, objs in enumerate(pred_objects) for label, box in objs]
    nan = float("nan")
    if not annotations:
        return {"map": nan, "map_50": nan, "map_75": nan}
    if not dets:
        return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": v, "name": k} for k, v in labels.items()]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [nan if v < 0 else float(v) for v in ev.stats]
    out = {"map": stats[0], "map_50": stats[1], "map_75": stats[2]}
    if image_sizes is not None:
        out.update(map_small=stats[3], map_medium=stats[4], map_large=stats[5])
    return out


def detection(predictions, references=None, examples=None, *, det_ious=(0.5, 0.75)) -> dict[str, float]:
    """Detection, two ways.

    - ``boxacc/{t}`` (as for referring expressions): box accuracy@t of the FIRST ``<loc>x4`` box of each output
      against the example's ``bbox`` (normalised ``y1, x1, y2, x2``), with segmentation.py's box IoU
      (``tokens / 1023``). Outputs with a label (``"<loc>x4 cat"``) are accepted; no valid box (4 ``<loc>`` in
      range, ``y2 > y1``, ``x2 > x1``) counts as a miss and as ``invalid``.
    - ``map``, ``map_50``, ``map_75`` (+ ``map_small/medium/large`` when the examples have ``height`` /
      ``width``): COCO mAP of ALL the boxes of each output (``<loc>x4 label ; <loc>x4 label ...``) with pycocotools
      (:func:`coco_map`). The ground truth is the examples' ``boxes`` + ``labels`` (``data.load_coco`` records:
      class-aware), else their single ``bbox`` (referring expressions: class-agnostic, labels ignored).
    """
    from ..processing.paligemma_decoding import LOC_BINS, NUM_LOC_TOKENS, parse_objects

    n = len(predictions)
    bboxes = _field(examples, ("bbox", "objects/bbox"), n, required=True)
    dets = {t: [] for t in det_ious}
    invalid = 0
    for pred, gt_box in zip(predictions, bboxes):
        locs = _first_valid_box(pred)
        if locs is None:
            invalid += 1
            iou = 0.0
        else:
            iou = box_iou(np.array(locs) / LOC_BINS, np.asarray(gt_box, np.float64).reshape(4))
        for t in det_ious:
            dets[t].append(float(t <= iou))
    out = {f"boxacc/{t}": _mean(v) for t, v in dets.items()}
    out.update(invalid=float(invalid), total=float(n))

    boxes = _field(examples, ("boxes",), n)
    labels = _field(examples, ("labels",), n)
    class_aware = boxes is not None and labels is not None and all(b is not None for b in boxes)
    if class_aware:
        gts = [[(str(lab), tuple(b)) for b, lab in zip(bs, ls)] for bs, ls in zip(boxes, labels)]
    else:
        gts = [[("", tuple(np.asarray(b, np.float64).reshape(4)))] for b in bboxes]
    preds = []
    for pred in predictions:
        objs = []
        for obj in parse_objects(pred):
            locs = obj["loc"]
            if all(0 <= t < NUM_LOC_TOKENS for t in locs):
                objs.append((obj["label"] if class_aware else "", tuple(np.array(locs) / LOC_BINS)))
        preds.append(objs)
    heights, widths = _field(examples, ("height",), n), _field(examples, ("width",), n)
    sizes = None
    if heights is not None and widths is not None and all(v is not None for v in heights + widths):
        sizes = [(float(h), float(w)) for h, w in zip(heights, widths)]
    out.update(coco_map(preds, gts, sizes))
    return out


# ---------------------------------------------------------------------------------------------------------
# The metric table
# ---------------------------------------------------------------------------------------------------------

_VQA_PUNCT = [";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
              "?", "!"]
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_REPLACEMENTS = {
    # CONTRACTIONS (vqav2.py REPLACEMENTS, verbatim; the capitalised keys never match lowercased words there either)
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
    # NUMBERS
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
# pylint: enable=line-too-long

METRICS = {
    "cider": cider,
    "cider_multilingual": cider_multilingual,
    "vqav2": vqav2,
    "vqa": vqa,
    "exact_match": exact_match,
    "anls": anls,
    "chartqa": chartqa,
    "relaxed_accuracy": chartqa,
    "tallyqa": tallyqa,
    "rsvqa": rsvqa,
    "science_qa": science_qa,
    "pope": pope,
    "segmentation": segmentation,
    "detection": detection,
}
