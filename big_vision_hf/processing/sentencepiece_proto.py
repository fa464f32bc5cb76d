"""A SentencePiece model file (``ModelProto``, ``sentencepiece_model.proto``) read and edited on the wire format, so
neither the ``protobuf`` package nor transformers' converters (which need it) are required.

:func:`read_spec` returns what encoding depends on: the pieces (text, score, type) and the trainer / normalizer
settings that SentencePiece applies at encoding time (model type, byte fallback, the normalizer's precompiled
character map, dummy prefix, whitespace handling). `tokenization_fast` builds a ``tokenizers`` pipeline from it.

This file imports nothing outside the standard library (remote-code friendly).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["PieceType", "SentencePieceSpec", "fields", "read_spec", "read_varint", "varint"]


class PieceType:
    """``ModelProto.SentencePiece.Type``."""

    NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# ModelType of TrainerSpec
UNIGRAM, BPE = 1, 2


def varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _scan(data: bytes):
    """``(field number, wire type, value, raw bytes of the whole field)`` for each top-level field; ``value`` is an
    int (varint), the payload bytes (length-delimited) or the raw little-endian bytes (fixed 32/64 bits)."""
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == 2:
            length, pos = read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf field")
        yield number, wire, value, data[start:pos]


def fields(data: bytes):
    """Top-level protobuf fields: ``(field number, raw bytes of the whole field incl. its tag)``."""
    for number, _, _, raw in _scan(data):
        yield number, raw


def _signed(value: int) -> int:
    """An ``int32`` read as a varint (negative values are 10-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class SentencePieceSpec:
    """What SentencePiece's encoder reads from a model file (proto2 defaults where a field is absent)."""

    pieces: list[tuple[str, float, int]] = field(default_factory=list)  # (piece, score, PieceType)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True

    def ids_of(self, piece_type: int) -> list[int]:
        return [i for i, (_, _, t) in enumerate(self.pieces) if t == piece_type]


def read_spec(model_bytes: bytes) -> SentencePieceSpec:
    """Parses a serialized ``ModelProto`` (a ``tokenizer.model`` / ``spiece.model`` file's bytes)."""
    spec = SentencePieceSpec()
    for number, _, value, _ in _scan(model_bytes):
        if number == 1:  # pieces
            piece, score, kind = "", 0.0, PieceType.NORMAL
            for n, _, v, _ in _scan(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = v
            spec.pieces.append((piece, score, kind))
        elif number == 2:  # trainer_spec
            for n, _, v, _ in _scan(value):
                if n == 3:
                    spec.model_type = v
                elif n == 35:
                    spec.byte_fallback = bool(v)
                elif n == 24:
                    spec.treat_whitespace_as_suffix = bool(v)
                elif n == 40:
                    spec.unk_id = _signed(v)
        elif number == 3:  # normalizer_spec
            for n, _, v, _ in _scan(value):
                if n == 2:
                    spec.precompiled_charsmap = bytes(v)
                elif n == 3:
                    spec.add_dummy_prefix = bool(v)
                elif n == 4:
                    spec.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    spec.escape_whitespaces = bool(v)
    if not spec.pieces:
        raise ValueError("no pieces: not a SentencePiece model")
    return spec
