"""The text side of a converted two-tower folder: big_vision's text pp (`BvTextTokenizer`; LiT's BERT towers:
`BvBertTokenizer`) next to its image pp (`BvImageProcessor`), bundled in transformers' ``SiglipProcessor``.

``SiglipProcessor`` is a plain ``ProcessorMixin(image_processor, tokenizer)``: it calls the tokenizer and the
image processor it is given and merges their outputs, so with our two it reproduces big_vision's pp exactly and
no processor class of our own is needed. The same holds for transformers' ``zero-shot-image-classification``
pipeline, which loads the folder's tokenizer and image processor itself (sigmoid scores for ``siglip`` /
``bv_siglip`` models, softmax for ``bv_two_towers``).

A converted folder gets it with ``big-vision-hf convert ... --tokenizer FILE``
(``conversion.export.add_text_processor``).

Example:
    >>> from big_vision_hf.conversion.export import add_text_processor
    >>> add_text_processor("out/siglip-b16-224", "c4_en.model", preset="siglip")  # doctest: +SKIP
    >>> from transformers import pipeline  # doctest: +SKIP
    >>> classifier = pipeline("zero-shot-image-classification", model="out/siglip-b16-224")  # doctest: +SKIP
    >>> classifier("cat.jpg", candidate_labels=["a cat", "a dog"])  # doctest: +SKIP
    >>> add_text_processor("out/lit-b16b", "vocab.txt")  # LiT: preset "bert" from the tower  # doctest: +SKIP
"""

from __future__ import annotations

import os

from transformers.utils import logging

from .tokenization_bv_bert import LIT_TEXT_LENGTH, BvBertTokenizer
from .tokenization_bv_text import BvTextTokenizer

logger = logging.get_logger(__name__)

__all__ = ["text_tokenizer_for"]

PRESETS = {
    "siglip": BvTextTokenizer.for_siglip,
    "siglip2": BvTextTokenizer.for_siglip2,
    "bert": BvBertTokenizer.from_vocab,  # LiT: big_vision bert_tokenize with the BERT checkpoint's vocab.txt
}
BERT_TEXT_MODEL = "proj.flaxformer.bert"


def text_tokenizer_for(config, vocab_file: str, preset: str | None = None, max_length: int | None = None):
    """The text pp tokenizer for a converted model's config (``SiglipConfig`` or ours).

    ``preset=None`` picks the tower's: ``"bert"`` (`BvBertTokenizer`, LiT) for a ``proj.flaxformer.bert`` text
    tower, else ``"siglip"`` (`BvTextTokenizer`). The text length is the text tower's posemb length, or for BERT
    (whose 512 positions are not the pp length) ``max_length`` (default 16, the LiT configs' ``token_len``). A
    vocabulary with more entries than the text embedding has rows is refused.
    """
    is_bert = getattr(config, "text_model", None) == BERT_TEXT_MODEL
    preset = preset or ("bert" if is_bert else "siglip")
    if preset not in PRESETS:
        raise ValueError(f"unknown text preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if is_bert and preset != "bert":
        raise ValueError(f"this model's text tower is LiT's BERT ({BERT_TEXT_MODEL}): use preset 'bert' with the "
                         f"BERT vocab.txt it was trained with, not {preset!r}")
    if preset == "bert" and not is_bert:
        raise ValueError("preset 'bert' is for LiT's BERT text tower (text_model='proj.flaxformer.bert'); this "
                         "model's text tower is big_vision's text_transformer: use 'siglip' or 'siglip2'")
    text = config.text_config
    length = max_length or (LIT_TEXT_LENGTH if is_bert else text.max_position_embeddings)
    if length > text.max_position_embeddings:
        raise ValueError(f"max_length={length} is longer than the text tower's {text.max_position_embeddings} "
                         "positions")
    tokenizer = PRESETS[preset](vocab_file, max_length=length)
    if tokenizer.vocab_size > text.vocab_size:
        kind = "entries" if is_bert else "pieces"
        expected = ("BERT uncased: 30,522" if is_bert
                    else "SigLIP: c4_en 32,000 or mc4 250,000; SigLIP 2: Gemma 256,000")
        raise ValueError(
            f"{os.path.basename(vocab_file)} has {tokenizer.vocab_size} {kind} but the text tower embeds "
            f"{text.vocab_size}: the wrong tokenizer for this model ({expected})"
        )
    if tokenizer.vocab_size < text.vocab_size:
        logger.warning(
            f"{os.path.basename(vocab_file)} has {tokenizer.vocab_size} pieces for a text embedding of "
            f"{text.vocab_size} rows; big_vision's tokenizers fill it exactly"
        )
    return tokenizer
