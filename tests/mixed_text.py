"""Deterministic mixed strings for tokenizer equality tests: words in every case, digits, ASCII punctuation, accents
and combining marks, compatibility characters (NFKC changes them), CJK, emoji, zero-width and non-breaking spaces,
tabs, newlines and runs of spaces (leading / trailing too), special-token strings and, with ``loc``, PaliGemma's
``<locNNNN>`` / ``<segNNN>`` tokens."""

from __future__ import annotations

import random
import unicodedata

WORDS = ("a photo of cat dog bird car tree house the small big red green blue white black on in with two three "
         "caption en answer what is this detect segment how many circles").split()
PIECES = ["É", "école", "naïve", "straße", "Ａｂｃ", "①②", "ﬁ", "日本語", "中文字", "😀", "👍🏽", "e\u0301", "ñ", "Ω",
          "İ",
          "\u00a0", "\u3000", "\t", "\n", "\r\n", "  ", "   ", "…", "—", "“quoted”", "'s", "n't", "123", "4.5", "1,000",
          "$9", "%", "<", ">", "</s>", "<s>", "<pad>", "<unk>", "<bos>", "<eos>", "<image>", "\u2581", "\u200b",
          "\ufeff", "ǅ", "Ⅻ", "㍻", "\x7f", "\U0001F600\U0001F601", "<loc", "seg>", "<0x41>"]
SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", " \n "]


def mixed_strings(n: int, seed: int = 0, loc: bool = False) -> list[str]:
    """``n`` strings, the same for the same ``(n, seed, loc)``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.45:
                w = rng.choice(WORDS)
            elif r < 0.6:
                w = rng.choice(PIECES)
            elif r < 0.7:
                w = "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 6)))
            elif r < 0.78:
                w = "".join(chr(rng.randint(0xA0, 0x2FFF)) for _ in range(rng.randint(1, 3)))
            elif r < 0.85 and loc:
                w = f"<loc{rng.randint(0, 1023):04d}>" if rng.random() < 0.7 else f"<seg{rng.randint(0, 127):03d}>"
            elif r < 0.9:
                w = rng.choice(WORDS).upper() if rng.random() < 0.5 else rng.choice(WORDS).capitalize()
            else:
                w = str(rng.randint(0, 10 ** rng.randint(1, 8)))
            parts.append(w)
        s = "".join(p + rng.choice(SEPARATORS) for p in parts)
        if rng.random() < 0.2:
            s = " " * rng.randint(1, 3) + s
        out.append(s)
    return out


def combining_after_compat(text: str) -> bool:
    """A combining mark right after a character that NFKC rewrites: the one place where ``tokenizers``'
    ``Precompiled`` normalizer (grapheme-wise) and SentencePiece's (longest prefix) differ, for models that have a
    character map (c4_en / mc4; Gemma has none)."""
    for a, b in zip(text, text[1:]):
        if unicodedata.category(b) in ("Mn", "Me", "Mc") and unicodedata.normalize("NFKC", a) != a:
            return True
    return False
