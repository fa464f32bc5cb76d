"""The metrics of PaliGemma 2's new transfer tasks (arXiv 2412.03555), from maintained libraries where
one exists. big_vision has no evaluator for these tasks; each function names the reference it follows.

- :func:`teds`: Tree-Edit-Distance-based Similarity of PubTabNet (Zhong et al. 2020, ``ibm-aur-nlp/PubTabNet``
  ``src/metric.py``): the ``<table>`` trees compared with APTED (the ``apted`` package), renaming a cell costs
  the normalised Levenshtein distance of its content (``rapidfuzz``), other mismatches 1;
  ``1 - TED / max(#elements)``, counting the elements under ``<table>`` as the reference does (``.//*``: not the
  ``<table>`` itself, but a cell's ``<b>`` too); ``teds_struct`` ignores the cell contents (TEDS-S).
- :func:`grits`: GriTS-Top / GriTS-Con (Smock et al. 2022) with ``grits-metric`` (the GriTS authors' package),
  per table, then averaged over the tables (the TSR literature's "macro" aggregation the paper compares with).
  :func:`table_structure` = TEDS + GriTS, the paper's Table 3 metrics.
- :func:`smiles_exact_match`: molecules, exact match of RDKit canonical SMILES (the optional ``rdkit`` package).
- :func:`music_error_rates`: optical music recognition (GrandStaff ``**kern``): symbol error rate (edit distance
  over whitespace-separated symbols / reference symbols) and line error rate (over lines), corpus-level as in
  the OMR literature (Rios-Vila et al.).
- :func:`text_spotting`: text detection and recognition, word-level precision / recall / F1 as HierText's
  evaluator: a prediction and a ground-truth word, each the other's best IoU match with IoU >= 0.5, with the same
  text. Words are axis-aligned boxes (4 ``<loc>``) or rotated quadrilaterals / polygons (2k ``<loc>``, ``(y, x)``
  pairs; IoU with ``shapely``); ground truth may also be ICDAR-style point lists (:func:`parse_icdar_gt`), ``###``
  = don't care.
- :func:`report_generation`: radiography reports (MIMIC-CXR): CIDEr (ours, PTB-tokenised), and BLEU-4 and ROUGE-L
  with pycocoevalcap's scorers (the optional ``pycocoevalcap`` package); RadGraph F1 (:func:`radgraph_f1`, the
  ``radgraph`` package) only when given a folder with the RadGraph weights (nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import html.parser
import io
import json
import os
import re

import numpy as np

from .metrics import METRICS, box_iou, cider
from .ptb import ptb_tokenize_lines

__all__ = ["PG2_METRICS", "grits", "grits_scores", "music_error_rates", "parse_icdar_gt", "radgraph_f1",
           "report_generation", "shape_iou", "smiles_exact_match", "table_structure", "teds", "teds_score",
           "text_spotting", "words_to_text"]


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
    ``tokenize`` makes them: inner tags as ``<b>`` / ``</b>`` and the text character by character (as there, only
    ``<td>`` is a cell: a ``<th>`` is a plain node). ``n_elements`` counts the elements under the table."""

    _VOID = {"br", "img", "hr", "meta", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = None
        self.stack: list[_Node] = []
        self.cell = None
        self.n_elements = 0

    def handle_starttag(self, tag, attrs):
        if self.root is None:
            if tag != "table":
                return
        elif not self.stack:
            return  # after the first table
        else:
            self.n_elements += 1
        if self.cell is not None and tag not in ("td", "tr"):
            self.cell.content.append(f"<{tag}>")
            if tag in self._VOID:
                self.cell.content.append(f"</{tag}>")
            return
        a = dict(attrs)  # spans matter for cells only (the reference gives other nodes none)
        node = _Node(tag, *((int(a.get("colspan") or 1), int(a.get("rowspan") or 1)) if tag == "td" else (None, None)))
        if self.root is None:
            self.root = node
        else:
            self.stack[-1].children.append(node)
        if tag not in self._VOID:
            self.stack.append(node)
        if tag == "td":
            self.cell = node

    def handle_endtag(self, tag):
        if self.cell is not None and tag not in ("td", "tr"):
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


def _parse_table(text: str, structure_only: bool) -> tuple[_Node | None, int]:
    """The table's tree (``None`` when there is none) and the number of elements under it."""
    parser = _TableParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # noqa: BLE001 - an unparsable prediction scores 0
        return None, 0
    if structure_only and parser.root is not None:
        stack = [parser.root]
        while stack:
            node = stack.pop()
            node.content = []
            stack.extend(node.children)
    return parser.root, parser.n_elements


def teds_score(prediction: str, reference: str, structure_only: bool = False) -> float:
    """TEDS of one HTML table against the reference (1.0 = identical; an unparsable / empty prediction: 0.0)."""
    from apted import APTED, Config
    from rapidfuzz.distance import Levenshtein

    (pred, n_pred), (true, n_true) = _parse_table(prediction, structure_only), _parse_table(reference, structure_only)
    if pred is None or true is None:
        return 0.0

    class _Cost(Config):
        def rename(self, a, b):
            if a.tag != b.tag or a.colspan != b.colspan or a.rowspan != b.rowspan:
                return 1.0
            if a.tag == "td" and (a.content or b.content):
                return Levenshtein.distance(a.content, b.content) / max(len(a.content), len(b.content))
            return 0.0

        def children(self, node):
            return node.children

    distance = APTED(pred, true, _Cost()).compute_edit_distance()
    return 1.0 - float(distance) / max(n_pred, n_true, 1)  # two empty tables: 1.0 (the reference divides by 0)


def teds(predictions, references, examples=None) -> dict[str, float]:
    """Table structure recognition (PubTabNet, FinTabNet): mean ``teds`` and ``teds_struct`` (TEDS-S)."""
    _check(predictions, references)
    refs = _refs(references)
    full = [teds_score(p, r) for p, r in zip(predictions, refs)]
    struct = [teds_score(p, r, structure_only=True) for p, r in zip(predictions, refs)]
    n = len(full)
    return {"teds": float(np.mean(full)) if n else float("nan"),
            "teds_struct": float(np.mean(struct)) if n else float("nan"), "num": float(n)}


def grits_scores(prediction: str, reference: str) -> dict[str, float]:
    """GriTS-Top and GriTS-Con of one HTML table against the reference, with ``grits-metric`` (``pip install
    'big_vision_hf[pg2]'``): each table as a grid, the 2D most-similar-substructures match, ``2 * sum f / (|A| +
    |B|)`` with f = IoU of the cells' relative spans (Top) or the LCS similarity of their texts (Con). A
    prediction that is no table (or an empty one) scores 0.

    Example::

        >>> grits_scores("<table><tr><td>a</td><td>b</td></tr></table>", "<table><tr><td>a</td></tr></table>")
        {'grits_top': 0.666..., 'grits_con': 0.666...}
    """
    try:
        from grits import grits_con, grits_top, html_to_grids
    except ImportError:
        raise ImportError("GriTS needs the grits-metric package: pip install 'big_vision_hf[pg2]' "
                          "(or grits-metric)") from None
    true, pred = html_to_grids(reference), html_to_grids(prediction)
    if true is None or pred is None or not any(true["top"]) or not any(pred["top"]):
        return {"grits_top": 0.0, "grits_con": 0.0}
    return {"grits_top": float(grits_top(true["top"], pred["top"])[0]),
            "grits_con": float(grits_con(true["con"], pred["con"])[0])}


def grits(predictions, references, examples=None) -> dict[str, float]:
    """Table structure recognition: mean GriTS-Top (``grits_top``) and GriTS-Con (``grits_con``) over the tables
    (:func:`grits_scores` of each)."""
    _check(predictions, references)
    scores = [grits_scores(p, r) for p, r in zip(predictions, _refs(references))]
    n = len(scores)
    out = {k: float(np.mean([s[k] for s in scores])) if n else float("nan") for k in ("grits_top", "grits_con")}
    return {**out, "num": float(n)}


def table_structure(predictions, references, examples=None) -> dict[str, float]:
    """The paper's table-structure metrics (its Table 3): ``teds``, ``teds_struct`` (S-TEDS), ``grits_top``,
    ``grits_con``, each the mean over the tables."""
    return {**teds(predictions, references), **grits(predictions, references)}


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

_WORD_RE = re.compile(r"((?:<loc\d{4}>){4,})([^<]*)")
_LOC_RE = re.compile(r"<loc(\d{4})>")
_SEPARATOR_RE = re.compile(r"\s*;\s*$")
DONT_CARE = "###"  # ICDAR's transcription of a don't-care region


def _shape(locs) -> tuple[str, tuple] | None:
    """``<loc>`` values -> ``("box", (y1, x1, y2, x2))`` for 4 tokens, ``("poly", ((x, y), ...))`` for 2k >= 8
    tokens (PaliGemma's ``(y, x)`` order per point), normalised to [0, 1]; ``None`` when malformed."""
    from ..processing.paligemma_decoding import LOC_BINS, NUM_LOC_TOKENS

    polygon = len(locs) >= 8 and len(locs) % 2 == 0
    if not all(0 <= t < NUM_LOC_TOKENS for t in locs) or not (len(locs) == 4 or polygon):
        return None
    v = np.asarray(locs, dtype=np.float64) / LOC_BINS
    if len(v) == 4:
        return "box", tuple(v)
    return "poly", tuple((float(x), float(y)) for y, x in v.reshape(-1, 2))


def _parse_words(text: str) -> list[tuple[tuple[str, tuple] | None, str]]:
    """``"<loc>x4 word ; <loc>x8 word ..."`` -> ``[(shape or None, word), ...]`` (a word's text runs to the next
    ``<loc>``, less the `` ; `` separator, so words may contain ``;``)."""
    out = []
    for m in _WORD_RE.finditer(text if isinstance(text, str) else ""):
        locs = [int(t) for t in _LOC_RE.findall(m.group(1))]
        out.append((_shape(locs), _SEPARATOR_RE.sub("", m.group(2)).strip()))
    return out


def _reference_words(reference) -> list[tuple[tuple[str, tuple] | None, str]]:
    """A reference: the ``<loc>`` text, or ``[{"polygon": [[x, y], ...] | "box": (y1, x1, y2, x2), "text": ...}]``
    (normalised to [0, 1], e.g. from :func:`parse_icdar_gt`)."""
    if isinstance(reference, str):
        return _parse_words(reference)
    if isinstance(reference, (list, tuple)) and len(reference) == 1 and isinstance(reference[0], str):
        return _parse_words(reference[0])
    return [(word[:2], word[2]) for word in map(_word, reference)]


def _word(w) -> tuple[str, tuple, str]:
    """``{"box": (y1, x1, y2, x2) | "polygon": [[x, y] x k >= 4], "text"}`` -> ``(kind, coords, text)``; anything
    else is a one-line ``ValueError``."""
    try:
        text = str(w["text"])
        if w.get("box") is not None:  # a datasets column of mixed words has box=None on the polygons
            coords = tuple(float(c) for c in w["box"])
            if len(coords) == 4:
                return "box", coords, text
        else:
            coords = tuple((float(x), float(y)) for x, y in w["polygon"])
            if len(coords) >= 4:  # fewer points would be read back as a box or a malformed word
                return "poly", coords, text
    except (KeyError, TypeError, ValueError):
        pass
    raise ValueError(f"a text-spotting word is {{'box': (y1, x1, y2, x2) | 'polygon': [[x, y], ...] (4 points or "
                     f"more), 'text': ...}}, got {str(w)[:80]}")


def parse_icdar_gt(text: str, width: float, height: float) -> list[dict]:
    """ICDAR 2015 ground truth (``gt_img_*.txt``: ``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` per line, pixels) ->
    ``[{"polygon": [[x, y] x 4] normalised to [0, 1], "text"}]``; ``###`` marks a don't-care region.

    Example::

        >>> parse_icdar_gt("10,10,50,10,50,30,10,30,STOP", 100, 100)
        [{'polygon': [[0.1, 0.1], [0.5, 0.1], [0.5, 0.3], [0.1, 0.3]], 'text': 'STOP'}]
    """
    words = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        parts = line.strip().split(",", 8)
        if len(parts) < 9:
            continue
        try:
            xy = [float(c) for c in parts[:8]]
        except ValueError:
            raise ValueError(f"ICDAR ground truth line {number}: 8 numbers then the text expected, got "
                             f"{line.strip()[:80]!r}") from None
        words.append({"polygon": [[xy[i] / width, xy[i + 1] / height] for i in range(0, 8, 2)], "text": parts[8]})
    return words


def words_to_text(words) -> str:
    """The target of a text-spotting example: ``[{"polygon" | "box", "text"}]`` (normalised, as
    :func:`parse_icdar_gt`) -> ``"<loc>x8 word ; ..."`` (polygons as ``(y, x)`` pairs, boxes as 4 ``<loc>``);
    a string is returned as is. Don't-care words (``###``) are left out."""
    if isinstance(words, str):
        return words
    from ..processing.paligemma_decoding import LOC_BINS

    def loc(v):
        return f"<loc{int(round(min(max(v, 0.0), 1.0) * LOC_BINS)):04d}>"

    parts = []
    for kind, coords, text in map(_word, words):
        if text == DONT_CARE:
            continue
        values = coords if kind == "box" else [c for x, y in coords for c in (y, x)]
        parts.append("".join(loc(c) for c in values) + " " + text)
    return " ; ".join(parts)


def _polygon(shape):
    try:
        from shapely import make_valid
        from shapely.geometry import Polygon
    except ImportError:
        raise ImportError("rotated / polygon words need shapely: pip install 'big_vision_hf[pg2]'") from None
    kind, v = shape
    if kind == "box":
        y1, x1, y2, x2 = v
        v = ((x1, y1), (x2, y1), (x2, y2), (x1, y2))
    poly = Polygon(v)
    return poly if poly.is_valid else make_valid(poly)  # a self-crossing quadrilateral: its valid pieces


def _overlap(a, b) -> tuple[float, float, float]:
    """Intersection area of two word shapes and their areas (boxes exactly, polygons with shapely)."""
    if a[0] == b[0] == "box":
        (ay1, ax1, ay2, ax2), (by1, bx1, by2, bx2) = a[1], b[1]
        inter = max(0.0, min(ay2, by2) - max(ay1, by1)) * max(0.0, min(ax2, bx2) - max(ax1, bx1))
        return inter, max(0.0, ay2 - ay1) * max(0.0, ax2 - ax1), max(0.0, by2 - by1) * max(0.0, bx2 - bx1)
    pa, pb = _polygon(a), _polygon(b)
    return float(pa.intersection(pb).area), float(pa.area), float(pb.area)


def shape_iou(a, b) -> float:
    """IoU of two word shapes (``_shape`` tuples): :func:`box_iou` for two boxes, else polygon areas (shapely)."""
    if a[0] == b[0] == "box":
        return box_iou(a[1], b[1])
    inter, area_a, area_b = _overlap(a, b)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def text_spotting(predictions, references, examples=None, *, iou: float = 0.5,
                  case_sensitive: bool = True) -> dict[str, float]:
    """Word-level ``precision`` / ``recall`` / ``f1`` (corpus level) as HierText's evaluator
    (``google-research-datasets/hiertext`` ``evaluator.py``, end-to-end): per image, predictions covered by a
    don't-care word (``###``) for at least half of their area are dropped; a reference word and a prediction are
    a pair when each is the other's highest-IoU match and IoU >= ``iou``; a pair is a true positive when the
    transcriptions are equal (exactly; ``case_sensitive=False`` compares lower case). No predictions (no reference
    words): precision (recall) 1.0, as there.

    Words are ``<loc>x4 word`` (axis-aligned box ``y1 x1 y2 x2``) or ``<loc>x2k word`` (k >= 4 points ``(y, x)``:
    a rotated quadrilateral or polygon); references may also be lists of ``{"polygon" | "box", "text"}``
    (:func:`parse_icdar_gt`). A malformed predicted word (a ``<loc>`` count that is no shape) counts as a false
    positive. ``examples`` with a ``words`` field (the task's rows) give the references: the target text
    (:func:`words_to_text`, the rows' ``suffix``) leaves the don't-care words out.

    Example::

        >>> text_spotting(["<loc0000><loc0000><loc0512><loc0512> STOP"], ["<loc0000><loc0000><loc0512><loc0512> STOP"])
        {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'num': 1.0}
    """
    if examples is not None and len(examples) and all(isinstance(e, dict) and "words" in e for e in examples):
        references = [e["words"] for e in examples]
    _check(predictions, references)
    tp = n_pred = n_true = 0
    for pred, ref in zip(predictions, references):
        pw, tw = _parse_words(pred), _reference_words(ref)
        dont_care = [s for s, t in tw if t == DONT_CARE]
        true = [(s, t) for s, t in tw if t != DONT_CARE]
        pw = [(s, t) for s, t in pw if s is None or not any(  # HierText's filter_invalid_thr = 0.5
            area > 0 and inter >= 0.5 * area for inter, area, _ in (_overlap(s, d) for d in dont_care))]
        n_pred, n_true = n_pred + len(pw), n_true + len(true)
        if not pw or not true:
            continue
        ious = np.array([[shape_iou(s, ps) if ps is not None else 0.0 for ps, _ in pw] for s, _ in true])
        best_pred, best_true = ious.argmax(axis=1), ious.argmax(axis=0)  # first of equal IoUs, as np.argmax there
        for i, j in enumerate(best_pred):
            if ious[i, j] >= iou and best_true[j] == i:
                a, b = pw[j][1], true[i][1]
                tp += (a == b) if case_sensitive else (a.lower() == b.lower())
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "num": float(len(predictions))}


# ---------------------------------------------------------------------------------------------------------
# Radiography reports (CIDEr, BLEU-4, ROUGE-L)
# ---------------------------------------------------------------------------------------------------------

RADGRAPH_REPO = "StanfordAIMI/RRG_scorers"  # where the radgraph package keeps its weight archives (Hugging Face)


def radgraph_f1(predictions, references, model_dir: str, *, model_type: str = "radgraph") -> dict[str, float]:
    """RadGraph F1 (Jain et al. 2021; the ``radgraph`` package's ``F1RadGraph``, ``pip install
    'big_vision_hf[radgraph]'``): the F1 of the clinical entities (``radgraph_simple``), entities + relations
    (``radgraph_f1``, the RG_ER most report-generation papers quote; the PaliGemma 2 paper does not say which level
    it reports) and complete graphs (``radgraph_complete``) of prediction vs reference, averaged over reports.

    Nothing is downloaded: ``model_dir/<model_type>/`` must hold the extracted ``<model_type>.tar.gz`` of the
    Hugging Face repository ``StanfordAIMI/RRG_scorers`` (``config.json``, ``vocabulary/``, ``weights.th``), and
    the BERT its ``config.json`` names must be in the Hugging Face cache.

    Example::

        >>> radgraph_f1(["no acute process."], ["no acute cardiopulmonary process."], "/data/radgraph")
        {'radgraph_f1': ..., 'radgraph_simple': ..., 'radgraph_complete': ..., 'num': 1.0}
    """
    _check(predictions, references)
    folder = os.path.join(model_dir, model_type)
    if not os.path.isfile(os.path.join(folder, "weights.th")):
        raise FileNotFoundError(f"RadGraph F1 needs the RadGraph weights in {folder}/ (config.json, vocabulary/, "
                                f"weights.th): extract {model_type}.tar.gz of the Hugging Face repository "
                                f"{RADGRAPH_REPO} there; nothing is downloaded")
    try:
        from radgraph import F1RadGraph
    except ImportError:
        raise ImportError("RadGraph F1 needs the radgraph package: pip install 'big_vision_hf[radgraph]'") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints its device
            scorer = F1RadGraph(reward_level="all", model_type=model_type, model_cache_dir=model_dir)
    except OSError as e:  # its BERT tokenizer / encoder is not in the Hugging Face cache
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            bert = json.load(f)["model"]["embedder"]["token_embedders"]["bert"]["model_name"]
        raise OSError(f"RadGraph F1: the BERT {bert!r} its config names is not in the Hugging Face cache "
                      f"({type(e).__name__}); put it there (huggingface-cli download {bert}) first") from None
    (simple, partial, complete), *_ = scorer(hyps=list(predictions), refs=_refs(references))
    return {"radgraph_f1": float(partial), "radgraph_simple": float(simple), "radgraph_complete": float(complete),
            "num": float(len(predictions))}


def report_generation(predictions, references, examples=None, *, radgraph_dir: str | None = None
                      ) -> dict[str, float]:
    """Report generation (MIMIC-CXR), the paper's Table 8: ``cider`` (:func:`~big_vision_hf.transfer.metrics.cider`),
    ``bleu4`` and ``rouge_l`` (pycocoevalcap ``Bleu(4)`` / ``Rouge()`` on the PTB-tokenised texts, as the captioning
    evaluator; needs ``pip install pycocoevalcap``, no Java), and, with ``radgraph_dir`` (a folder with the RadGraph
    weights, see :func:`radgraph_f1`), RadGraph F1. Without it RadGraph F1 is not computed (it needs a model)."""
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
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    out["bleu4"] = float(bleu[3])
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if radgraph_dir is not None:
        scores = radgraph_f1(predictions, [r[0] for r in refs], radgraph_dir)
        out.update((k, v) for k, v in scores.items() if k != "num")
    out["num"] = float(len(predictions))
    return out


PG2_METRICS = {
    "teds": teds,
    "table_structure": table_structure,
    "smiles_exact_match": smiles_exact_match,
    "music_error_rates": music_error_rates,
    "text_spotting": text_spotting,
    "report_generation": report_generation,
}
# The one metric table (recipes and evaluate() read it): metrics.py cannot import this module, which imports it, so
# the PaliGemma 2 metrics join it here; recipe.py imports this module, so no caller has to.
METRICS.update(PG2_METRICS)
