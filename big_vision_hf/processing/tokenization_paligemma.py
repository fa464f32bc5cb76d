"""PaliGemma's tokenizer as big_vision builds it: the Gemma SentencePiece model plus the ``<loc>``/``<seg>`` tokens.

big_vision (commit 0127fb6) tokenizes every PaliGemma transfer with ``gemma(tokensets=("loc", "seg"))``
(``configs/proj/paligemma/transfers/common.py``): ``pp/proj/paligemma/ops.py`` loads ``gemma_tokenizer.model``
(256,000 pieces) and ``pp/ops_text.py SentencepieceTokenizer`` patches it with ``_add_pieces``: every token of
``pp/tokenizer.py`` tokensets ``loc`` (``<loc0000>`` ... ``<loc1023>``) and ``seg`` (``<seg000>`` ...
``<seg127>``) becomes a ``USER_DEFINED`` piece with score 0 -- **appended** when the model lacks it (ids
256000..257151 for Gemma), **replaced in place** when it already has it (``paligemma_tokenizer.model`` ships them
baked in at the same ids). :func:`add_pieces` does exactly that, so both files give the same tokenizer.

Ids then come from the SentencePiece model: Gemma's ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``"\\n"``
108. ``<image>`` (what transformers' ``PaliGemmaForConditionalGeneration`` scatters image features into) is an
added special token right after the SentencePiece vocabulary: 257152 for Gemma, the model's
``image_token_index``.

This file imports only sentencepiece and transformers (remote-code friendly). The protobuf edit is done on the
wire format, so the ``protobuf`` package is not needed.
"""

from __future__ import annotations

import os
import struct

import sentencepiece as spm
from transformers import PreTrainedTokenizer
from transformers.tokenization_utils_base import AddedToken
from transformers.utils import logging

from .sentencepiece_proto import fields, varint
from .tokenization_bv_text import SentencePieceProtoMixin

logger = logging.get_logger(__name__)

__all__ = ["BvPaliGemmaTokenizer", "LOC_TOKENS", "PaliGemmaBigVisionAPI", "SEG_TOKENS", "add_pieces"]

LOC_TOKENS = [f"<loc{i:04d}>" for i in range(1024)]  # big_vision pp/tokenizer.py tokensets "loc"
SEG_TOKENS = [f"<seg{i:03d}>" for i in range(128)]  # tokensets "seg"
IMAGE_TOKEN = "<image>"  # transformers PaliGemma convention (processing_paligemma.py IMAGE_TOKEN)

# sentencepiece_model.proto: ModelProto.pieces = 1; SentencePiece.piece = 1, .score = 2, .type = 3.
_USER_DEFINED = 4


def _user_defined_piece(piece: str) -> bytes:
    """``ModelProto.pieces`` entry ``SentencePiece(piece=piece, score=0.0, type=USER_DEFINED)``, serialized."""
    text = piece.encode("utf-8")
    body = b"\x0a" + varint(len(text)) + text + b"\x15" + struct.pack("<f", 0.0) + b"\x18" + varint(_USER_DEFINED)
    return b"\x0a" + varint(len(body)) + body


def add_pieces(model_bytes: bytes, extra_pieces: list[str]) -> tuple[bytes, int]:
    """big_vision ``ops_text._add_pieces``: make every extra piece a ``USER_DEFINED`` piece (score 0).

    A piece the model already has is replaced at its id; the others are appended in the given order. Returns
    ``(serialized model, number of appended pieces)``.
    """
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    unk = sp.PieceToId("<unk>")
    if sp.IdToPiece(unk) != "<unk>":  # big_vision asserts the same
        raise ValueError("the SentencePiece model has no <unk> piece")
    replace, append = {}, []
    for piece in extra_pieces:
        piece = piece.replace(" ", "\u2581")
        existing = sp.PieceToId(piece)
        if (existing != unk) ^ (piece == "<unk>"):
            replace[existing] = _user_defined_piece(piece)
        else:
            append.append(_user_defined_piece(piece))
    pieces, rest, index = [], [], 0
    for number, raw in fields(model_bytes):
        if number == 1:
            pieces.append(replace.get(index, raw))
            index += 1
        else:
            rest.append(raw)
    return b"".join(pieces + append + rest), len(append)


class PaliGemmaBigVisionAPI:
    """big_vision's ``SentencepieceTokenizer`` API (``to_int``, ``to_str``, the ``<loc>``/``<seg>`` ids) on a
    SentencePiece processor ``self.sp_model``: `BvPaliGemmaTokenizer` and its fast twin share it, so both encode with
    SentencePiece itself where big_vision does."""

    def to_int(self, text: str | list[str], *, bos: bool = False, eos: bool = False):
        """big_vision ``SentencepieceTokenizer.to_int``: ``[bos] + EncodeAsIds(text) + [eos]`` (lists map)."""

        def single(s: str) -> list[int]:
            return ([self.sp_model.bos_id()] if bos else []) + self.sp_model.EncodeAsIds(s) + (
                [self.sp_model.eos_id()] if eos else []
            )

        return single(text) if isinstance(text, str) else [single(s) for s in text]

    def to_str(self, tokens, *, stop_at_eos: bool = True) -> str:
        """big_vision ``SentencepieceTokenizer.to_str``: cut at the first ``<eos>``, then ``DecodeIds`` (control
        tokens dropped; ``<loc>``/``<seg>`` kept). Ids past the SentencePiece vocabulary (``<image>``) are dropped."""
        toks = [int(t) for t in tokens]
        if stop_at_eos and self.sp_model.eos_id() in toks:
            toks = toks[: toks.index(self.sp_model.eos_id())]
        n = self.sp_model.GetPieceSize()
        return self.sp_model.DecodeIds([t for t in toks if 0 <= t < n])

    @property
    def loc_token_ids(self) -> list[int]:
        """Ids of ``<loc0000>`` ... ``<loc1023>`` (256000.. for Gemma)."""
        return [self.sp_model.PieceToId(t) for t in LOC_TOKENS]

    @property
    def seg_token_ids(self) -> list[int]:
        """Ids of ``<seg000>`` ... ``<seg127>`` (257024.. for Gemma)."""
        return [self.sp_model.PieceToId(t) for t in SEG_TOKENS]


class BvPaliGemmaTokenizer(PaliGemmaBigVisionAPI, SentencePieceProtoMixin, PreTrainedTokenizer):
    r"""PaliGemma tokenizer: Gemma SentencePiece + ``<loc>``/``<seg>`` (big_vision ``gemma(tokensets=("loc",
    "seg"))``) + ``<image>``.

    Built from a Gemma ``tokenizer.model`` (``gemma_tokenizer.model``, or ``paligemma_tokenizer.model`` which has
    the extra tokens already); missing ``<loc>``/``<seg>`` pieces are added as big_vision adds them (see the module
    doc), and ``save_pretrained`` writes the patched model, so the saved ``tokenizer.model`` is the PaliGemma one.

    Text is tokenized by SentencePiece exactly as big_vision's ``to_int`` (``EncodeAsIds``); :meth:`to_int` and
    :meth:`to_str` are big_vision's API. The transformers API (``__call__``, ``decode``) adds ``<bos>`` only by
    default (``add_bos_token=True``, ``add_eos_token=False``, like Gemma). Differences from big_vision: in
    ``__call__``/``tokenize`` the literal strings of special tokens (``"<bos>"``, ``"<image>"``) in the text become
    those tokens (big_vision spells them out); :meth:`to_int` does not do that.

    Example:
        >>> tok = BvPaliGemmaTokenizer("tokenizer.model")  # doctest: +SKIP
        >>> tok.to_int("caption en", bos=True)  # doctest: +SKIP
        [2, 6616, 659]
        >>> tok.convert_tokens_to_ids(["<loc0000>", "<seg127>", "<image>"])  # doctest: +SKIP
        [256000, 257151, 257152]
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"  # big_vision pads at the end (`tolen`)

    def __init__(
        self,
        vocab_file: str,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        sp_model_kwargs: dict | None = None,
        **kwargs,
    ):
        self.vocab_file = vocab_file
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        with open(vocab_file, "rb") as f:
            raw = f.read()
        try:
            proto, appended = add_pieces(raw, LOC_TOKENS + SEG_TOKENS)
        except (RuntimeError, ValueError, OSError) as e:
            raise ValueError(f"{vocab_file}: not a readable SentencePiece model ({e})") from None
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)
        self._proto = proto
        if appended:
            first = self.sp_model.GetPieceSize() - appended
            logger.info(f"appended {appended} <loc>/<seg> pieces to {os.path.basename(vocab_file)} (ids {first}..)")
        sp = self.sp_model
        specials = {}
        for name, sp_id in (("pad_token", sp.pad_id()), ("eos_token", sp.eos_id()), ("bos_token", sp.bos_id()),
                            ("unk_token", sp.unk_id())):
            if sp_id < 0:
                raise ValueError(f"{vocab_file}: the SentencePiece model defines no {name.split('_')[0]} piece")
            specials[name] = sp.IdToPiece(sp_id)
        for name, value in specials.items():
            kwargs.setdefault(name, value)
        # <image>: a named model-specific special token (tokenizer.image_token / .image_token_id), added after the
        # SentencePiece vocabulary. From a saved tokenizer it comes back through `model_specific_special_tokens`.
        model_specific = dict(kwargs.pop("model_specific_special_tokens", None) or {})
        model_specific.setdefault("image_token", AddedToken(IMAGE_TOKEN, normalized=False, special=True))
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        super().__init__(
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            sp_model_kwargs=self.sp_model_kwargs,
            model_specific_special_tokens=model_specific,
            **kwargs,
        )
        self._check_ids()

    def _check_ids(self) -> None:
        """The image token must come right after the SentencePiece pieces, where transformers' PaliGemma expects it."""
        image_id = self.convert_tokens_to_ids(self.image_token)
        if image_id < self.sp_model.GetPieceSize():
            raise ValueError(f"{self.image_token!r} is a piece of the SentencePiece model (id {image_id})")

    # --- transformers backend (vocabulary: `SentencePieceProtoMixin`) ----------------------------------------

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.EncodeAsPieces(text)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """SentencePiece decoding of runs of pieces; added tokens (``<image>``) and control pieces kept verbatim."""
        out, run = [], []
        for token in tokens:
            sp_id = self.sp_model.PieceToId(token)
            if token in self._added_tokens_encoder or (sp_id < self.vocab_size and self.sp_model.IsControl(sp_id)):
                out.append(self.sp_model.DecodePieces(run))
                out.append(token)
                run = []
            else:
                run.append(token)
        out.append(self.sp_model.DecodePieces(run))
        return "".join(out)

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        ids = [token_ids] if isinstance(token_ids, int) else [int(t) for t in token_ids]
        if skip_special_tokens:
            special = set(self.all_special_ids)
            ids = [t for t in ids if t not in special]
        text = self.convert_tokens_to_string([self._convert_id_to_token_with_added(t) for t in ids])
        if clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None else False:
            text = self.clean_up_tokenization(text)
        return text

    def _convert_id_to_token_with_added(self, index: int) -> str:
        if index in self._added_tokens_decoder:
            return self._added_tokens_decoder[index].content
        return self._convert_id_to_token(index)

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        return bos + token_ids_0 + (token_ids_1 or []) + eos

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        return bos + [0] * (len(token_ids_0) + len(token_ids_1 or [])) + eos

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        """0 for ``[bos] + first``, 1 for ``second + [eos]`` (the PaliGemma prefix / suffix split)."""
        first = len(token_ids_0) + (1 if self.add_bos_token else 0)
        second = len(token_ids_1 or []) + (1 if self.add_eos_token else 0)
        if token_ids_1 is None:
            return [0] * (first + second)
        return [0] * first + [1] * second
