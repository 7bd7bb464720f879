"""Strict bencode (BEP 3): one encoding per value, and nothing else is accepted.

Info hashes are hashes of bytes, so two encodings of one value would be two collections.
Decoding therefore rejects everything a lenient decoder lets through: unsorted or
duplicate dict keys, leading zeros and "-0", non-byte-string keys, trailing bytes, and
input over the size and nesting limits. The decoded value re-encodes to the same bytes.

Types: int <-> int, bytes <-> byte string, list <-> list, dict[bytes, ...] <-> dict.
`encode` also takes str (as UTF-8), tuples, and str dict keys, for convenience.
Pure: no I/O.
"""
from __future__ import annotations

from typing import Union

from storage.errors import BencodeError

Value = Union[int, bytes, list["Value"], dict[bytes, "Value"]]

MAX_INPUT_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
# A length field longer than this is a lie or an attack on int parsing, either way out.
_MAX_DIGITS = 20


def encode(value: object) -> bytes:
    """Canonical bencoding of `value`; BencodeError for unsupported types or duplicate keys."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, bool):
        # bool is an int subclass; encoding True as i1e would silently change its type.
        raise BencodeError("bool has no bencoding")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out, depth)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items: dict[bytes, object] = {}
        for key, item in value.items():
            raw_key = key.encode("utf-8") if isinstance(key, str) else key
            if not isinstance(raw_key, bytes):
                raise BencodeError(f"dict key {key!r} is not bytes or str")
            if raw_key in items:
                raise BencodeError(f"duplicate dict key {raw_key!r}")
            items[raw_key] = item
        out.append(b"d")
        for raw_key in sorted(items):
            out.append(b"%d:" % len(raw_key))
            out.append(raw_key)
            _encode(items[raw_key], out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"{type(value).__name__} has no bencoding")


def decode(data: bytes, *, max_size: int = MAX_INPUT_BYTES) -> Value:
    """Decode exactly one canonical value filling all of `data`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError(f"cannot decode {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise BencodeError(f"input of {len(raw)} bytes is over the {max_size}-byte limit")
    if not raw:
        raise BencodeError("empty input")
    value, end = _Decoder(raw).value(0, 0)
    if end != len(raw):
        raise BencodeError(f"{len(raw) - end} trailing bytes after the value")
    return value


class _Decoder:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def value(self, pos: int, depth: int) -> tuple[Value, int]:
        if depth > MAX_DEPTH:
            raise BencodeError(f"nesting deeper than {MAX_DEPTH}")
        if pos >= len(self.data):
            raise BencodeError("truncated input")
        lead = self.data[pos]
        if lead == ord("i"):
            return self.integer(pos)
        if lead == ord("l"):
            return self.list(pos, depth)
        if lead == ord("d"):
            return self.dict(pos, depth)
        if ord("0") <= lead <= ord("9"):
            return self.string(pos)
        raise BencodeError(f"unexpected byte {bytes([lead])!r} at offset {pos}")

    def _digits(self, start: int, end: int, *, what: str) -> int:
        text = self.data[start:end]
        if not text or len(text) > _MAX_DIGITS or not text.isdigit():
            raise BencodeError(f"malformed {what} at offset {start}")
        if len(text) > 1 and text[0] == ord("0"):
            raise BencodeError(f"leading zero in {what} at offset {start}")
        return int(text)

    def integer(self, pos: int) -> tuple[int, int]:
        end = self.data.find(b"e", pos + 1, pos + 2 + _MAX_DIGITS + 1)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        if self.data[pos + 1] == ord("-"):
            number = self._digits(pos + 2, end, what="integer")
            if number == 0:
                raise BencodeError(f"negative zero at offset {pos}")
            return -number, end + 1
        return self._digits(pos + 1, end, what="integer"), end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        colon = self.data.find(b":", pos, pos + _MAX_DIGITS + 1)
        if colon < 0:
            raise BencodeError(f"malformed string length at offset {pos}")
        length = self._digits(pos, colon, what="string length")
        start = colon + 1
        if start + length > len(self.data):
            raise BencodeError(f"string at offset {pos} runs past the end of the input")
        return self.data[start : start + length], start + length

    def list(self, pos: int, depth: int) -> tuple[list[Value], int]:
        items: list[Value] = []
        pos += 1
        while True:
            if pos >= len(self.data):
                raise BencodeError("unterminated list")
            if self.data[pos] == ord("e"):
                return items, pos + 1
            item, pos = self.value(pos, depth + 1)
            items.append(item)

    def dict(self, pos: int, depth: int) -> tuple[dict[bytes, Value], int]:
        items: dict[bytes, Value] = {}
        previous: bytes | None = None
        pos += 1
        while True:
            if pos >= len(self.data):
                raise BencodeError("unterminated dict")
            if self.data[pos] == ord("e"):
                return items, pos + 1
            if not ord("0") <= self.data[pos] <= ord("9"):
                raise BencodeError(f"dict key at offset {pos} is not a byte string")
            key, pos = self.string(pos)
            if previous is not None and key <= previous:
                rule = "duplicate" if key == previous else "unsorted"
                raise BencodeError(f"{rule} dict key {key!r}")
            previous = key
            items[key], pos = self.value(pos, depth + 1)
