"""big_vision's text preprocessing for two-tower models (SigLIP, SigLIP 2, LiT-like) as a transformers tokenizer.

big_vision (commit 0127fb6) tokenizes text for its text towers with a SentencePiece model and makes every text
exactly ``L`` tokens long (``L`` = the text tower's posemb length: 64, or 16 for SigLIP So400m/14 224):

- SigLIP (``configs/proj/image_text/SigLIP_demo.ipynb``, ``common.py``):
  ``tokenize(max_len=L, model="c4_en" | "mc4", eos="sticky", pad_value=1)`` (``pp/ops_text.py``), whose
  ``lower=True`` default lowercases first;
- SigLIP 2 (``SigLIP2_demo.ipynb``): ``lower(key="text")|tok(length=L, model="gemma", bos="no", eos="sticky")``
  (``pp/proj/paligemma/ops.py``), padding with the Gemma ``<pad>`` id (0).

Both are: ``tf.strings.lower`` (default ``encoding=''``: ASCII letters only, so ``"É"`` stays) ->
``EncodeAsIds`` -> append EOS -> if ``len >= L``: keep ``ids[:L-1] + [EOS]`` ("sticky" EOS) else pad to ``L``. No
BOS. `BvTextTokenizer` does exactly this from the SentencePiece file you give (c4_en, mc4 or Gemma's
``tokenizer.model``): :meth:`BvTextTokenizer.for_siglip`, :meth:`BvTextTokenizer.for_siglip2`.

Differences from transformers' defaults, on purpose: ``tokenizer(texts)`` pads to ``L`` and truncates with the
sticky EOS without being asked (big_vision's text towers see exactly ``L`` tokens; their ``last`` pooling reads
position ``L-1``); ``padding=True``/``"longest"`` is served as ``"max_length"``; a ``max_length`` above ``L`` is
lowered to ``L`` (transformers' zero-shot pipeline asks every SigLIP for 64); ``truncation=False`` turns an
over-long text into an error instead of a silent truncation; no ``attention_mask`` (big_vision masks nothing);
special-token strings in the text (``"</s>"``) are tokenized as text, as big_vision does.

This file imports only sentencepiece and transformers (remote-code friendly).
"""

from __future__ import annotations

import os

import sentencepiece as spm
from transformers import PreTrainedTokenizer
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["BvTextTokenizer", "FixedLengthTextMixin", "ascii_lower"]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """``tf.strings.lower(text)`` with its default ``encoding=''``: lowercases ASCII letters only."""
    return text.translate(_ASCII_LOWER)


def _is_false(value) -> bool:
    return value is False or value in ("do_not_truncate", "do_not_pad")


class SentencePieceProtoMixin:
    """What tokenizers that hold their SentencePiece model as serialized bytes (``_proto``, loaded into
    ``sp_model``) share: the SentencePiece vocabulary as transformers' (``vocab_size``, ``get_vocab``, piece <-> id),
    and save / pickle support: ``save_vocabulary`` writes those bytes (PaliGemma: the model WITH its appended
    ``<loc>``/``<seg>`` pieces), pickling drops the C++ processor and rebuilds it from them."""

    @property
    def vocab_size(self) -> int:
        return self.sp_model.GetPieceSize()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.IdToPiece(i): i for i in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.PieceToId(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.IdToPiece(index)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        if not os.path.isdir(save_directory):
            raise ValueError(f"{save_directory} is not a directory")
        name = (filename_prefix + "-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        out = os.path.join(save_directory, name)
        with open(out, "wb") as f:
            f.write(self._proto)
        return (out,)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = None
        return state

    def __setstate__(self, state):
        self.__dict__ = state
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(self._proto)


class FixedLengthTextMixin:
    """big_vision's fixed-length text semantics on top of transformers' ``__call__`` (`BvTextTokenizer` and its fast
    twin): ``padding="max_length"`` to the text length ``L`` (``model_max_length``), sticky truncation, a larger
    ``max_length`` lowered to ``L``, and ``truncation=False`` an error for a longer text."""

    def __call__(self, text=None, *args, **kwargs):
        """As transformers' ``__call__``, but big_vision's defaults: ``padding="max_length"``, sticky truncation
        to the text length ``L`` (see the module doc). ``truncation=False`` raises for a text longer than ``L``."""
        length = self.model_max_length
        padding = kwargs.get("padding", "max_length")
        if padding is True or padding == "longest":
            padding = "max_length"  # big_vision pads every text to L
        kwargs["padding"] = padding
        max_length = kwargs.get("max_length")
        if max_length is not None and max_length > length:
            logger.warning_once(
                f"max_length={max_length} is more than the text tower's {length} positions: using {length} "
                "(big_vision's text length)"
            )
            max_length = None
        kwargs["max_length"] = max_length if max_length is not None else length
        truncation = kwargs.setdefault("truncation", True)
        if _is_false(truncation) and text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            for t in texts:
                if isinstance(t, str) and (n := len(self.tokenize(t)) + 1) > kwargs["max_length"]:
                    raise ValueError(
                        f"text of {n} tokens (with EOS) is longer than max_length={kwargs['max_length']} and "
                        f"truncation=False; big_vision keeps the first {kwargs['max_length'] - 1} tokens and the EOS "
                        "(truncation=True, the default)"
                    )
        return super().__call__(text, *args, **kwargs)


class BvTextTokenizer(FixedLengthTextMixin, SentencePieceProtoMixin, PreTrainedTokenizer):
    r"""big_vision's two-tower text pp: lower -> SentencePiece -> sticky EOS -> pad to the text length.

    Args:
        vocab_file: the SentencePiece model big_vision used (``c4_en``/``mc4`` for SigLIP, Gemma's
            ``tokenizer.model`` for SigLIP 2).
        model_max_length: the text length ``L`` (big_vision ``max_len`` / ``length``; the text tower's posemb
            length, ``config.text_config.max_position_embeddings``).
        lower: lowercase ASCII first (big_vision ``tokenize``'s ``lower=True`` default; SigLIP 2's ``lower`` op).
        pad_id: the padding id (big_vision ``pad_value``): 1 for SigLIP (c4_en/mc4 EOS), the model's ``<pad>``
            for SigLIP 2; ``None``: the EOS id.

    Example:
        >>> tok = BvTextTokenizer.for_siglip("c4_en.model", max_length=16)  # doctest: +SKIP
        >>> tok(["A photo of a cat."], return_tensors="pt").input_ids.shape  # doctest: +SKIP
        torch.Size([1, 16])
    """

    vocab_files_names = {"vocab_file": "spiece.model"}
    model_input_names = ["input_ids"]  # big_vision's text towers attend to every position, padding included
    padding_side = "right"
    truncation_side = "right"

    def __init__(
        self,
        vocab_file: str,
        model_max_length: int = 64,
        lower: bool = True,
        pad_id: int | None = None,
        sp_model_kwargs: dict | None = None,
        **kwargs,
    ):
        self.vocab_file = vocab_file
        self.lower = lower
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        try:
            with open(vocab_file, "rb") as f:
                self._proto = f.read()
            self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
            self.sp_model.LoadFromSerializedProto(self._proto)
        except (OSError, RuntimeError, TypeError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{vocab_file}: not a readable SentencePiece model ({detail})") from None
        sp = self.sp_model
        if sp.eos_id() < 0:
            raise ValueError(f"{vocab_file}: the SentencePiece model defines no EOS piece (big_vision appends one)")
        n = sp.GetPieceSize()
        if pad_id is not None and not 0 <= pad_id < n:
            raise ValueError(f"pad_id={pad_id} is outside the SentencePiece vocabulary (0..{n - 1})")
        self.pad_id = pad_id
        kwargs.setdefault("eos_token", sp.IdToPiece(sp.eos_id()))
        kwargs.setdefault("pad_token", sp.IdToPiece(pad_id if pad_id is not None else sp.eos_id()))
        if sp.unk_id() >= 0:
            kwargs.setdefault("unk_token", sp.IdToPiece(sp.unk_id()))
        kwargs.setdefault("split_special_tokens", True)  # "</s>" in a text is text, as in big_vision
        super().__init__(
            model_max_length=model_max_length,
            lower=lower,
            pad_id=pad_id,
            sp_model_kwargs=self.sp_model_kwargs,
            **kwargs,
        )

    @classmethod
    def for_siglip(cls, vocab_file: str, max_length: int = 64, **kwargs) -> BvTextTokenizer:
        """SigLIP (``c4_en``/``mc4``): ``tokenize(max_len=L, eos="sticky", pad_value=1)``, lowercased."""
        return cls(vocab_file, model_max_length=max_length, lower=True, pad_id=1, **kwargs)

    @classmethod
    def for_siglip2(cls, vocab_file: str, max_length: int = 64, **kwargs) -> BvTextTokenizer:
        """SigLIP 2 (Gemma): ``lower|tok(length=L, bos="no", eos="sticky")``, padded with ``<pad>``."""
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(open(vocab_file, "rb").read())
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{vocab_file}: not a readable SentencePiece model ({str(e).splitlines()[0]})") from None
        if sp.pad_id() < 0:
            raise ValueError(f"{vocab_file}: the SentencePiece model defines no <pad> piece (SigLIP 2 pads with it)")
        return cls(vocab_file, model_max_length=max_length, lower=True, pad_id=sp.pad_id(), **kwargs)

    # --- transformers backend (vocabulary: `SentencePieceProtoMixin`) ----------------------------------------

    def prepare_for_tokenization(self, text: str, is_split_into_words: bool = False, **kwargs):
        return (ascii_lower(text) if self.lower else text), kwargs

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        # The pieces of big_vision's `EncodeAsIds` (an unknown character is `<unk>`, as its id).
        return [self.sp_model.IdToPiece(i) for i in self.sp_model.EncodeAsIds(text)]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.DecodePieces(list(tokens))

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        if token_ids_1 is not None:
            raise ValueError("big_vision's text pp tokenizes one text at a time (no text pairs)")
        return token_ids_0 + [self.eos_token_id]  # EOS appended (big_vision add_eos / eos="sticky"), no BOS

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        return [0] * len(token_ids_0) + [1]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 1

