"""big_vision's BERT text preprocessing for LiT (``bert_tokenize``) as a transformers tokenizer.

big_vision (commit 0127fb6) tokenizes text for its BERT text tower (``models/proj/flaxformer/bert.py``) with
``bert_tokenize(inkey=..., vocab_path=".../vocab.txt", max_len=16)`` (``pp/proj/flaxformer/bert_ops.py``;
``max_len`` is the LiT configs' ``token_len=16``):

- tensorflow_text ``BertTokenizer(vocab_path, lower_case=True)``: BERT's basic tokenizer (lowercase, NFD + strip
  accents, split on whitespace, punctuation and CJK characters), then WordPiece (``##`` continuations, ``[UNK]``
  for words it cannot split);
- keep the first ``max_len - 1`` word pieces, prepend ``[CLS]``, pad with id 0 to ``max_len``. There is NO
  ``[SEP]`` (transformers' ``BertTokenizer`` adds one) and the model masks every id 0 (``input_mask=text != 0``).

`BvBertTokenizer` is that pipeline on the ``tokenizers`` library (``BertNormalizer`` with ``lowercase=True`` and
accent stripping, ``BertPreTokenizer``, ``WordPiece``, a ``[CLS] $A`` post-processor), built from the user's
``vocab.txt`` by :meth:`BvBertTokenizer.from_vocab`. Checked against big_vision's op on the ``lit_bert`` fixture
texts (accents, punctuation, CJK, unknown and over-long words, truncation). Like big_vision, and unlike
transformers' defaults, ``tokenizer(texts)`` truncates to ``max_len`` and pads to it without being asked
(every ``padding`` but ``"max_length"`` with another ``max_length`` is served as ``max_len``; the BERT tower's
output does not depend on the padding anyway, since id 0 is masked); ``truncation=False`` is honoured. The id-0
token (``[PAD]`` in BERT vocabularies) pads, as ``tensorflow_text.pad_model_inputs`` does.

This file imports only ``tokenizers`` and transformers (remote-code friendly).
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers.tokenization_utils_tokenizers import TokenizersBackend

__all__ = ["BvBertTokenizer", "LIT_TEXT_LENGTH"]

#: big_vision LiT configs tokenize to 16 tokens (``configs/proj/image_text/siglip_lit_coco.py``: ``token_len=16``).
LIT_TEXT_LENGTH = 16


def _read_vocab(vocab_file: str) -> list[str]:
    name = os.path.basename(vocab_file)
    try:
        with open(vocab_file, encoding="utf-8") as f:
            vocab = f.read().split("\n")
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError) as e:
        raise ValueError(f"{name}: not a readable BERT WordPiece vocab.txt ({type(e).__name__})") from None
    if vocab and vocab[-1] == "":
        vocab = vocab[:-1]  # a trailing newline
    for needed in ("[CLS]", "[UNK]"):
        if needed not in vocab:
            raise ValueError(f"{name}: not a BERT WordPiece vocab.txt (no {needed} line; big_vision's bert_tokenize "
                             "needs the vocab.txt of the BERT checkpoint the text tower was trained from)")
    return vocab


class BvBertTokenizer(TokenizersBackend):
    r"""big_vision's ``bert_tokenize`` pp: lowercased WordPiece, ``[CLS]`` first, no ``[SEP]``, 0-padded to ``L``.

    Build it with :meth:`from_vocab`; ``save_pretrained`` writes ``tokenizer.json`` and it reloads with
    ``AutoTokenizer``.

    Example:
        >>> from big_vision_hf.processing.tokenization_bv_bert import BvBertTokenizer
        >>> tokenizer = BvBertTokenizer.from_vocab("vocab.txt", max_length=16)  # doctest: +SKIP
        >>> tokenizer(["A photo of a cat."])["input_ids"]  # doctest: +SKIP
        [[101, 1037, 6302, 1997, 1037, 4937, 1012, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    """

    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def from_vocab(cls, vocab_file: str, max_length: int = LIT_TEXT_LENGTH) -> BvBertTokenizer:
        """The tokenizer of ``bert_tokenize(vocab_path=vocab_file, max_len=max_length)``."""
        vocab = _read_vocab(vocab_file)
        ids = {token: i for i, token in reversed(list(enumerate(vocab)))}  # first occurrence wins, as TF's table
        tokenizer = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
        # tensorflow_text BertTokenizer(lower_case=True): lowercase + NFD + drop accents (Mn), CJK split.
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        # bert_ops.py: `concat([fill([count, 1], cls_token), padded_token_ids])`: [CLS] and no [SEP].
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A", special_tokens=[("[CLS]", ids["[CLS]"])]
        )
        return cls(
            tokenizer_object=tokenizer,
            model_max_length=max_length,
            pad_token=vocab[0],  # tensorflow_text.pad_model_inputs pads with id 0; bert.py masks id 0
            unk_token="[UNK]",
            cls_token="[CLS]",
            padding_side="right",
            truncation_side="right",
        )

    def _get_padding_truncation_strategies(self, padding=False, truncation=None, max_length=None, **kwargs):
        # big_vision always cuts to max_len and pads to it: truncation defaults on, "longest" is the fixed length.
        if truncation is None:
            truncation = True
        if padding in (False, True, "longest", "do_not_pad"):
            padding = "max_length"
        return super()._get_padding_truncation_strategies(
            padding=padding, truncation=truncation, max_length=max_length, **kwargs
        )
