"""Fast (``tokenizers``-backed) versions of our SentencePiece tokenizers, with SentencePiece's ids.

- `BvPaliGemmaTokenizerFast`: `BvPaliGemmaTokenizer` (Gemma + ``<loc>``/``<seg>`` + ``<image>``, big_vision's
  ``to_int`` / ``to_str``);
- `BvTextTokenizerFast`: `BvTextTokenizer` (SigLIP / SigLIP 2 / CapPa text pp: ASCII lower-casing, sticky EOS,
  fixed length).

Both are built by :func:`sentencepiece_backend` from the SentencePiece model file itself (read on the wire by
`sentencepiece_proto`, no ``protobuf``), following what SentencePiece does at encoding time:

- normalizer: the model's precompiled character map (``nmt_nfkc`` for c4_en / mc4; none for Gemma), then
  ``remove_extra_whitespaces`` (leading / trailing spaces dropped, runs of spaces collapsed), spaces escaped to
  ``"▁"``, and the dummy prefix ``"▁"`` (``add_dummy_prefix``) on a non-empty text; big_vision's ASCII-only
  ``tf.strings.lower`` goes first where the text pp lower-cases;
- model: ``Unigram`` (Viterbi over the piece scores) or ``BPE`` with merges ranked by the score of the piece they
  make (SentencePiece merges the best-scoring pair first), byte fallback as the file says, unknown runs fused;
  no pre-tokenizer (SentencePiece segments the whole normalized text);
- ``USER_DEFINED`` pieces (``<loc0000>``, ``"\\n"`` in Gemma, ...) are added tokens matched on the normalized text
  and never merged, as SentencePiece's prefix matcher freezes them; control pieces (``<bos>``, ``<eos>``,
  ``<pad>``) never come out of text.

``tests/test_tokenization_fast.py`` checks the ids against SentencePiece (and the slow tokenizers) on more than
10,000 mixed strings: words, case, digits, punctuation, accents and combining marks, CJK, emoji, tabs, newlines and
runs of spaces, ``<loc>``/``<seg>`` tokens and special-token strings (``</s>`` typed in a text is text, also with a
vocabulary that lacks ``<``; there, right after a character the vocabulary lacks, two segmentations of exactly equal
score can be broken the other way: the same pieces in another order). One difference comes from ``tokenizers``
itself and only concerns models with a character map (c4_en / mc4; Gemma has none): its ``Precompiled`` normalizer
works per grapheme, so a combining mark right after a character the map rewrites is dropped where SentencePiece
keeps it (``<unk>``). ``decode`` of a
truncated UTF-8 byte run gives one U+FFFD per byte (SentencePiece decodes the valid prefix); big_vision's
``to_str`` runs SentencePiece and is exact.

Saved folders hold both ``tokenizer.json`` (this) and the SentencePiece file (the slow class), and
``AutoTokenizer`` returns the fast class. It is faster where transformers' Python tokenizer loop dominates
(``__call__`` on batches: pipelines, collators); big_vision's per-text ``to_int`` runs SentencePiece on the same file
(faster per text than a ``tokenizers`` call, and big_vision's own path).

This file imports only tokenizers, sentencepiece and transformers (remote-code friendly).
"""

from __future__ import annotations

import os
import string

from tokenizers import AddedToken as TokAddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, Unigram
from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

from .sentencepiece_proto import BPE as SP_BPE, UNIGRAM as SP_UNIGRAM, PieceType, read_spec
from .tokenization_bv_text import BvTextTokenizer, FixedLengthTextMixin
from .tokenization_paligemma import (
    IMAGE_TOKEN,
    LOC_TOKENS,
    SEG_TOKENS,
    BvPaliGemmaTokenizer,
    PaliGemmaBigVisionAPI,
    add_pieces,
)

logger = logging.get_logger(__name__)

__all__ = ["FAST_TWINS", "BvPaliGemmaTokenizerFast", "BvTextTokenizerFast", "sentencepiece_backend"]

SPACE = "\u2581"  # SentencePiece's escaped space, "▁"
_UNMATCHED_PENALTY = 1e4  # see sentencepiece_backend (Unigram)


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every split of a NORMAL piece into two NORMAL pieces, best-scoring result first (SentencePiece's BPE merges
    the pair whose concatenation has the highest score; ties by id)."""
    normal = {p: (score, i) for i, (p, score, t) in enumerate(pieces) if t == PieceType.NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def sentencepiece_backend(model_bytes: bytes, lowercase_ascii: bool = False) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes as ``SentencePieceProcessor.EncodeAsIds`` on the same model (see the
    module docstring); ``lowercase_ascii`` prepends big_vision's ``tf.strings.lower`` (ASCII letters only)."""
    spec = read_spec(model_bytes)
    if spec.treat_whitespace_as_suffix:
        raise ValueError("SentencePiece models with treat_whitespace_as_suffix are not supported")
    pieces = spec.pieces
    unk = pieces[spec.unk_id][0] if 0 <= spec.unk_id < len(pieces) else None
    if spec.model_type == SP_BPE:
        model = BPE(vocab={p: i for i, (p, _, _) in enumerate(pieces)}, merges=_bpe_merges(pieces), unk_token=unk,
                    fuse_unk=True, byte_fallback=spec.byte_fallback, dropout=None)
    elif spec.model_type == SP_UNIGRAM:
        # SentencePiece's lattice only holds NORMAL and USER_DEFINED pieces; tokenizers' holds every entry, so the
        # others (control, unknown, byte, unused) get a score that no segmentation through normal pieces can lose to.
        lowest = min((score for _, score, t in pieces if t == PieceType.NORMAL), default=0.0)
        matched = (PieceType.NORMAL, PieceType.USER_DEFINED)
        vocab = [(p, score if t in matched else lowest - _UNMATCHED_PENALTY) for p, score, t in pieces]
        model = Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
        # That trick needs every character of such a piece in some matchable piece. Characters in no matchable
        # piece (c4_en has no "<") can only ever be <unk> / bytes in SentencePiece and no piece spans them: runs of
        # them are set apart (unk runs stay fused), so "</s>" typed in a text cannot be read as the control piece.
        # (After such a run, two segmentations of exactly equal score may be broken the other way: "2111" as
        # 2|1|11 instead of 2|11|1, the same pieces.)
        known = sorted({c for p, _, t in pieces if t in matched for c in p})
        alone = {c for p, _, t in pieces if t not in matched for c in p} - set(known)
    else:
        raise ValueError(f"SentencePiece model type {spec.model_type} (WORD/CHAR) is not supported")
    if spec.model_type == SP_BPE:
        alone = set()
    tokenizer = Tokenizer(model)
    if spec.model_type == SP_UNIGRAM and alone:
        chars = "".join(f"\\x{{{ord(c):x}}}" for c in known)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(f"[^{chars}]+"), behavior="isolated")

    steps = [normalizers.Replace(c, c.lower()) for c in string.ascii_uppercase] if lowercase_ascii else []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # only " " counts (the charsmap has already turned other spaces into it)
        steps += [normalizers.Replace(Regex(r"^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)

    # USER_DEFINED pieces: emitted whole, never merged, matched on the normalized text (keeping their ids).
    user_defined = [TokAddedToken(pieces[i][0], special=False, normalized=True)
                    for i in spec.ids_of(PieceType.USER_DEFINED)]
    if user_defined:
        tokenizer.add_tokens(user_defined)
    steps = [decoders.Replace(SPACE, " ")]
    if spec.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


class _SentencePieceFast(TokenizersBackend):
    """What both fast classes share: the backend from ``tokenizer.json`` when the folder has one, else built from the
    SentencePiece file (:func:`sentencepiece_backend`); both files are saved, so the slow class loads the folder too.
    ``vocab_files_names["vocab_file"]`` names the SentencePiece file."""

    model = None  # the backend comes whole from tokenizer.json or sentencepiece_backend, never from vocab/merges

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        return kwargs  # our __init__ reads tokenizer.json itself (transformers would pass it only vocab and merges)

    def _load_backend(self, vocab_file, tokenizer_file, kwargs: dict, lowercase_ascii: bool = False) -> bytes | None:
        """Reads the SentencePiece bytes (``None`` without the file) and puts the backend into ``kwargs``."""
        proto = None
        if vocab_file is not None and os.path.isfile(vocab_file):
            with open(vocab_file, "rb") as f:
                proto = self._prepare_proto(f.read(), vocab_file)
        if tokenizer_file is not None and os.path.isfile(tokenizer_file):
            kwargs["tokenizer_object"] = Tokenizer.from_file(tokenizer_file)
        elif proto is not None:
            kwargs["tokenizer_object"] = sentencepiece_backend(proto, lowercase_ascii)
        else:
            raise ValueError(f"{type(self).__name__} needs tokenizer.json or the SentencePiece file ({vocab_file})")
        return proto

    def _prepare_proto(self, raw: bytes, path: str) -> bytes:
        return raw

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        if self._proto is None:
            return ()
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        out = os.path.join(save_directory, name)
        with open(out, "wb") as f:
            f.write(self._proto)
        return (out,)

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        file_names = super()._save_pretrained(save_directory, file_names, legacy_format, filename_prefix)
        return file_names + self.save_vocabulary(str(save_directory), filename_prefix)

    @property
    def can_save_slow_tokenizer(self) -> bool:
        return self._proto is not None

    def encode_as_ids(self, texts: list[str]) -> list[list[int]]:
        """The ``tokenizers`` pipeline's ``EncodeAsIds`` of each text (special-token strings are text, no BOS/EOS,
        no padding or truncation)."""
        backend = self._tokenizer
        state = backend.encode_special_tokens, backend.padding, backend.truncation
        backend.encode_special_tokens = True
        backend.no_padding()
        backend.no_truncation()
        try:
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = state[0]
            if state[1]:
                backend.enable_padding(**state[1])
            if state[2]:
                backend.enable_truncation(**state[2])


class BvPaliGemmaTokenizerFast(PaliGemmaBigVisionAPI, _SentencePieceFast):
    r"""`BvPaliGemmaTokenizer` backed by ``tokenizers``: Gemma SentencePiece + ``<loc>``/``<seg>`` (big_vision
    ``gemma(tokensets=("loc", "seg"))``) + ``<image>``, the same ids and the same transformers defaults (``<bos>``
    added, no ``<eos>``, right padding). big_vision's API (``to_int``, ``to_str``, ``loc_token_ids``,
    ``seg_token_ids``: `PaliGemmaBigVisionAPI`) runs SentencePiece on the folder's ``tokenizer.model``, as big_vision
    does (per text it is faster than the ``tokenizers`` pipeline).

    Args:
        vocab_file: a Gemma ``tokenizer.model`` (``<loc>``/``<seg>`` pieces added as big_vision adds them).
        tokenizer_file: a ``tokenizer.json`` saved by this class (used instead of converting ``vocab_file``).

    Example:
        >>> tok = BvPaliGemmaTokenizerFast("paligemma_tokenizer.model")  # doctest: +SKIP
        >>> tok.to_int("caption en", bos=True) == BvPaliGemmaTokenizer("paligemma_tokenizer.model").to_int(
        ...     "caption en", bos=True)  # doctest: +SKIP
        True
    """

    vocab_files_names = {"vocab_file": "tokenizer.model", "tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"  # big_vision pads at the end (`tolen`)
    slow_tokenizer_class = BvPaliGemmaTokenizer

    def __init__(self, vocab_file: str | None = None, tokenizer_file: str | None = None, add_bos_token: bool = True,
                 add_eos_token: bool = False, **kwargs):
        self.vocab_file = vocab_file
        self._proto = self._load_backend(vocab_file, tokenizer_file, kwargs)
        backend = kwargs["tokenizer_object"]
        for name, piece in (("pad_token", "<pad>"), ("eos_token", "<eos>"), ("bos_token", "<bos>"),
                            ("unk_token", "<unk>")):
            if backend.token_to_id(piece) is None and name not in kwargs:
                raise ValueError(f"{vocab_file or tokenizer_file}: no {piece} piece (not a Gemma tokenizer)")
            kwargs.setdefault(name, piece)
        model_specific = dict(kwargs.pop("model_specific_special_tokens", None) or {})
        model_specific.setdefault("image_token", AddedToken(IMAGE_TOKEN, normalized=False, special=True))
        kwargs.pop("split_special_tokens", None)
        super().__init__(add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         model_specific_special_tokens=model_specific, **kwargs)
        if self.image_token_id < backend.get_vocab_size(with_added_tokens=False):
            raise ValueError(f"{self.image_token!r} is a piece of the SentencePiece model (id {self.image_token_id})")

    def _prepare_proto(self, raw: bytes, path: str) -> bytes:
        try:
            return add_pieces(raw, LOC_TOKENS + SEG_TOKENS)[0]
        except (RuntimeError, ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable SentencePiece model ({e})") from None

    @classmethod
    def from_slow(cls, slow: BvPaliGemmaTokenizer) -> BvPaliGemmaTokenizerFast:
        """The fast tokenizer of a `BvPaliGemmaTokenizer` (its patched SentencePiece model)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (path,) = slow.save_vocabulary(tmp)
            return cls(path, add_bos_token=slow.add_bos_token, add_eos_token=slow.add_eos_token)

    @property
    def sp_model(self):
        """SentencePiece on the folder's ``tokenizer.model``, for big_vision's ``to_int`` / ``to_str``
        (`PaliGemmaBigVisionAPI`): exactly big_vision's path, and faster per text than the ``tokenizers`` pipeline."""
        if getattr(self, "_sp", None) is None:
            if self._proto is None:
                raise ValueError("to_int / to_str need the SentencePiece file (tokenizer.model) next to tokenizer.json")
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor()
            self._sp.LoadFromSerializedProto(self._proto)
        return self._sp

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sp"] = None  # the C++ processor does not pickle; rebuilt from _proto on use
        return state


class BvTextTokenizerFast(FixedLengthTextMixin, _SentencePieceFast):
    r"""`BvTextTokenizer` backed by ``tokenizers``: big_vision's two-tower text pp (ASCII ``lower`` ->
    SentencePiece -> sticky EOS -> pad to the text length ``L``), with the same ids and the same ``__call__``
    defaults (see `BvTextTokenizer`).

    Args:
        vocab_file: the SentencePiece model (c4_en / mc4 for SigLIP, Gemma's for SigLIP 2).
        tokenizer_file: a ``tokenizer.json`` saved by this class.
        model_max_length, lower, pad_id: as `BvTextTokenizer`.
    """

    vocab_files_names = {"vocab_file": "spiece.model", "tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids"]  # big_vision's text towers attend to every position, padding included
    padding_side = "right"
    truncation_side = "right"
    slow_tokenizer_class = BvTextTokenizer

    def __init__(self, vocab_file: str | None = None, tokenizer_file: str | None = None, model_max_length: int = 64,
                 lower: bool = True, pad_id: int | None = None, **kwargs):
        self.vocab_file = vocab_file
        self.lower = lower
        self.pad_id = pad_id
        self._proto = self._load_backend(vocab_file, tokenizer_file, kwargs, lowercase_ascii=lower)
        backend = kwargs["tokenizer_object"]
        spec = read_spec(self._proto) if self._proto is not None else None
        if spec is not None:
            control = [i for i in spec.ids_of(PieceType.CONTROL)]
            eos = next((i for i in control if spec.pieces[i][0] in ("</s>", "<eos>")), None)
            if eos is None and "eos_token" not in kwargs:
                raise ValueError(f"{vocab_file}: the SentencePiece model defines no EOS piece (big_vision appends one)")
            n = len(spec.pieces)
            if pad_id is not None and not 0 <= pad_id < n:
                raise ValueError(f"pad_id={pad_id} is outside the SentencePiece vocabulary (0..{n - 1})")
            kwargs.setdefault("eos_token", spec.pieces[eos][0] if eos is not None else None)
            kwargs.setdefault("pad_token", spec.pieces[pad_id if pad_id is not None else eos][0])
            if 0 <= spec.unk_id < n:
                kwargs.setdefault("unk_token", spec.pieces[spec.unk_id][0])
        elif "eos_token" not in kwargs:
            raise ValueError("BvTextTokenizerFast from tokenizer.json alone needs eos_token (saved in its config)")
        kwargs["split_special_tokens"] = True  # "</s>" in a text is text, as in big_vision
        kwargs.pop("add_bos_token", None), kwargs.pop("add_eos_token", None)
        super().__init__(model_max_length=model_max_length, lower=lower, pad_id=pad_id, add_bos_token=False,
                         add_eos_token=True, **kwargs)
        del backend

    @classmethod
    def from_slow(cls, slow: BvTextTokenizer) -> BvTextTokenizerFast:
        """The fast tokenizer of a `BvTextTokenizer` (same file, length, lower-casing and pad id)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (path,) = slow.save_vocabulary(tmp)
            return cls(path, model_max_length=slow.model_max_length, lower=slow.lower, pad_id=slow.pad_id)


#: slow class -> its fast twin (``registration``: AutoTokenizer gives the fast one; ``export.fast_twin``).
FAST_TWINS = {BvPaliGemmaTokenizer: BvPaliGemmaTokenizerFast, BvTextTokenizer: BvTextTokenizerFast}
