"""The metrics of PaliGemma 2's new transfer tasks (arXiv 2412.03555), from maintained libraries where
one exists. big_vision has no evaluator for these tasks; each function names the reference it follows.

- :func:`teds`: Tree-Edit-Distance-based Similarity of PubTabNet (Zhong et al. 2020, ``ibm-aur-nlp/PubTabNet``
  ``src/metric.py``): the ``<table>`` trees compared with APTED (the ``apted`` package), renaming a cell costs
  the normalised Levenshtein distance of its content (``rapidfuzz``), other mismatches 1;
  ``1 - TED / max(#nodes)``; ``teds_struct`` ignores the cell contents (TEDS-S).
- :func:`smiles_exact_match`: molecules, exact match of RDKit canonical SMILES (the optional ``rdkit`` package).
- :func:`music_error_rates`: optical music recognition (GrandStaff ``**kern``): symbol error rate (edit distance
  over whitespace-separated symbols / reference symbols) and line error rate (over lines), corpus-level as in
  the OMR literature (Rios-Vila et al.).
- :func:`text_spotting`: text detection and recognition, word-level precision / recall / F1 as the HierText
  protocol: a predicted word (``<loc>`` box + transcription) matches an unmatched ground-truth word with box IoU
  >= 0.5 and the same text.
- :func:`report_generation`: radiography reports (MIMIC-CXR): CIDEr (ours, PTB-tokenised), and BLEU-4 and ROUGE-L
  with pycocoevalcap's scorers (the optional ``pycocoevalcap`` package). RadGraph F1 needs the RadGraph model (a
  download): not computed here.
"""

from __future__ import annotations

import html.parser

import numpy as np

from .metrics import box_iou, cider
from .ptb import ptb_tokenize_lines

__all__ = ["PG2_METRICS", "music_error_rates", "report_generation", "smiles_exact_match", "teds", "teds_score",
           "text_spotting"]


def _refs(references) -> list[str]:
    return [r if isinstance(r, str) else (list(r)[0] if len(r) else "") for r in references]


def _check(predictions, references):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


# ---------------------------------------------------------------------------------------------------------
# TEDS (PubTabNet src/metric.py)
# ---------------------------------------------------------------------------------------------------------

class _Node:
    __slots__ = ("tag", "colspan", "rowspan", "content", "children")

    def __init__(self, tag, colspan=1, rowspan=1):
        self.tag, self.colspan, self.rowspan = tag, colspan, rowspan
        self.content: list[str] = []
        self.children: list[_Node] = []


class _TableParser(html.parser.HTMLParser):
    """HTML -> the element tree under the first ``<table>``; a ``<td>``'s content is its tokens as PubTabNet's
    ``tokenize`` makes them: inner tags as ``<b>`` / ``</b>`` and the text character by character."""

    _VOID = {"br", "img", "hr", "meta", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = None
        self.stack: list[_Node] = []
        self.cell = None

    def handle_starttag(self, tag, attrs):
        if self.cell is not None and tag not in ("td", "th", "tr"):
            self.cell.content.append(f"<{tag}>")
            if tag in self._VOID:
                self.cell.content.append(f"</{tag}>")
            return
        if self.root is None and tag != "table":
            return
        a = dict(attrs)
        node = _Node(tag, int(a.get("colspan") or 1), int(a.get("rowspan") or 1))
        if self.root is None:
            self.root = node
        elif self.stack:
            self.stack[-1].children.append(node)
        if tag not in self._VOID:
            self.stack.append(node)
        if tag in ("td", "th"):
            self.cell = node

    def handle_endtag(self, tag):
        if self.cell is not None and tag not in ("td", "th", "tr"):
            self.cell.content.append(f"</{tag}>")
            return
        while self.stack:
            node = self.stack.pop()
            if node is self.cell:
                self.cell = None
            if node.tag == tag:
                break

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.content.extend(data)


def _parse_table(text: str, structure_only: bool) -> _Node | None:
    parser = _TableParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # noqa: BLE001 - an unparsable prediction scores 0
        return None
    if structure_only and parser.root is not None:
        stack = [parser.root]
        while stack:
            node = stack.pop()
            node.content = []
            stack.extend(node.children)
    return parser.root


def _count(node: _Node) -> int:
    return 1 + sum(_count(c) for c in node.children)


def teds_score(prediction: str, reference: str, structure_only: bool = False) -> float:
    """TEDS of one HTML table against the reference (1.0 = identical; an unparsable / empty prediction: 0.0)."""
    from apted import APTED, Config
    from rapidfuzz.distance import Levenshtein

    pred, true = _parse_table(prediction, structure_only), _parse_table(reference, structure_only)
    if pred is None or true is None:
        return 0.0

    class _Cost(Config):
        def rename(self, a, b):
            if a.tag != b.tag or a.colspan != b.colspan or a.rowspan != b.rowspan:
                return 1.0
            if a.tag in ("td", "th") and (a.content or b.content):
                return Levenshtein.distance(a.content, b.content) / max(len(a.content), len(b.content))
            return 0.0

        def children(self, node):
            return node.children

    distance = APTED(pred, true, _Cost()).compute_edit_distance()
    return 1.0 - float(distance) / max(_count(pred), _count(true))


def teds(predictions, references, examples=None) -> dict[str, float]:
    """Table structure recognition (PubTabNet, FinTabNet): mean ``teds`` and ``teds_struct`` (TEDS-S)."""
    _check(predictions, references)
    refs = _refs(references)
    full = [teds_score(p, r) for p, r in zip(predictions, refs)]
    struct = [teds_score(p, r, structure_only=True) for p, r in zip(predictions, refs)]
    n = len(full)
    return {"teds": float(np.mean(full)) if n else float("nan"),
            "teds_struct": float(np.mean(struct)) if n else float("nan"), "num": float(n)}


# ---------------------------------------------------------------------------------------------------------
# Molecules (RDKit canonical SMILES)
# ---------------------------------------------------------------------------------------------------------

def smiles_exact_match(predictions, references, examples=None) -> dict[str, float]:
    """Molecular structure recognition: exact match of RDKit canonical SMILES (``Chem.MolToSmiles`` of
    ``Chem.MolFromSmiles``); ``valid`` = share of predictions RDKit parses. Needs ``pip install rdkit``."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise ImportError("the molecule metric needs RDKit: pip install 'big_vision_hf[pg2]' (or rdkit)") from None
    RDLogger.DisableLog("rdApp.*")
    _check(predictions, references)

    def canon(s):
        mol = Chem.MolFromSmiles(s.strip()) if s.strip() else None
        return None if mol is None else Chem.MolToSmiles(mol)

    exact, valid = [], []
    for pred, ref in zip(predictions, _refs(references)):
        p, r = canon(pred), canon(ref)
        valid.append(p is not None)
        exact.append(p is not None and p == r)
    n = len(exact)
    return {"acc": float(np.mean(exact)) if n else float("nan"),
            "valid": float(np.mean(valid)) if n else float("nan"), "num": float(n)}


# ---------------------------------------------------------------------------------------------------------
# Music scores (symbol / line error rates)
# ---------------------------------------------------------------------------------------------------------

def music_error_rates(predictions, references, examples=None) -> dict[str, float]:
    """Optical music score recognition (GrandStaff ``**kern``): ``ser`` = sum of symbol edit distances / sum of
    reference symbols (symbols: whitespace-separated tokens), ``ler`` = the same over lines, in percent."""
    from rapidfuzz.distance import Levenshtein

    _check(predictions, references)
    sym_err = sym_len = line_err = line_len = 0
    for pred, ref in zip(predictions, _refs(references)):
        sym_err += Levenshtein.distance(pred.split(), ref.split())
        sym_len += len(ref.split())
        pl, rl = pred.strip().split("\n"), ref.strip().split("\n")
        line_err += Levenshtein.distance(pl, rl)
        line_len += len(rl)
    return {"ser": 100.0 * sym_err / max(sym_len, 1), "ler": 100.0 * line_err / max(line_len, 1),
            "num": float(len(predictions))}


# ---------------------------------------------------------------------------------------------------------
# Text detection and recognition (word-level F1, HierText protocol)
# ---------------------------------------------------------------------------------------------------------

def _words(text: str) -> list[tuple[tuple[float, ...], str]]:
    from ..processing.paligemma_decoding import LOC_BINS, NUM_LOC_TOKENS, parse_objects

    out = []
    for obj in parse_objects(text):
        if all(0 <= t < NUM_LOC_TOKENS for t in obj["loc"]):
            out.append((tuple(np.array(obj["loc"]) / LOC_BINS), obj["label"]))
    return out


def text_spotting(predictions, references, examples=None, *, iou: float = 0.5,
                  case_sensitive: bool = True) -> dict[str, float]:
    """Word-level ``precision`` / ``recall`` / ``f1`` (corpus level): outputs and references are
    ``<loc>x4 word ; <loc>x4 word ...``; a prediction is a true positive when an unmatched reference word has box
    IoU >= ``iou`` and the same transcription (greedy, in order of IoU)."""
    _check(predictions, references)
    tp = n_pred = n_true = 0
    for pred, ref in zip(predictions, _refs(references)):
        pw, tw = _words(pred), _words(ref)
        n_pred += len(pw)
        n_true += len(tw)
        pairs = sorted(((box_iou(pb, tb), i, j) for i, (pb, _) in enumerate(pw) for j, (tb, _) in enumerate(tw)),
                       reverse=True)
        used_p, used_t = set(), set()
        for v, i, j in pairs:
            if v < iou:
                break
            if i in used_p or j in used_t:
                continue
            a, b = pw[i][1], tw[j][1]
            if (a == b) if case_sensitive else (a.lower() == b.lower()):
                used_p.add(i)
                used_t.add(j)
                tp += 1
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "num": float(len(predictions))}


# ---------------------------------------------------------------------------------------------------------
# Radiography reports (CIDEr, BLEU-4, ROUGE-L)
# ---------------------------------------------------------------------------------------------------------

def report_generation(predictions, references, examples=None) -> dict[str, float]:
    """Report generation (MIMIC-CXR): ``cider`` (:func:`~big_vision_hf.transfer.metrics.cider`), ``bleu4`` and
    ``rouge_l`` (pycocoevalcap ``Bleu(4)`` / ``Rouge()`` on the PTB-tokenised texts, as the captioning evaluator;
    needs ``pip install pycocoevalcap``, no Java). RadGraph F1 is not computed (it needs the RadGraph model)."""
    _check(predictions, references)
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    out = {"cider": cider(predictions, refs)["cider"]}
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise ImportError("BLEU-4 / ROUGE-L use pycocoevalcap's scorers: pip install pycocoevalcap") from None
    flat = ptb_tokenize_lines([r for rs in refs for r in rs])
    gts, i = {}, 0
    for k, rs in enumerate(refs):
        gts[k] = flat[i:i + len(rs)]
        i += len(rs)
    res = {k: [p] for k, p in enumerate(ptb_tokenize_lines(list(predictions)))}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    out["bleu4"] = float(bleu[3])
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["num"] = float(len(predictions))
    return out


PG2_METRICS = {
    "teds": teds,
    "smiles_exact_match": smiles_exact_match,
    "music_error_rates": music_error_rates,
    "text_spotting": text_spotting,
    "report_generation": report_generation,
}
