"""Erlang's external term format (``term_to_binary``/``binary_to_term``), for the data
terms the original service stored: its feature specs in a ConfigMap, a file or a bucket.

The same Python types as :mod:`kimball_grpc.codec.erlang_terms`: atoms are
:class:`Atom` (``true``, ``false`` and ``undefined`` too), binaries ``bytes``,
lists ``list`` (a string sent as ``STRING_EXT`` is a list of ints, as in Erlang),
tuples ``tuple``, maps ``dict``, numbers ``int``/``float``. Pids, ports,
references and funs are refused: no stored data term holds them. Reading is
strict: a bad tag, a truncated term, bytes after the term or nesting deeper than
``MAX_DEPTH`` raise :class:`ExternalTermError` naming the offset.

Written terms match ``erlang:term_to_binary/1`` of OTP 26 and later byte for byte
(UTF-8 atoms; the keys of a map in Erlang's term order, as it writes maps of up to
32 keys), which any OTP since 20 reads.
"""

from __future__ import annotations

import struct
import zlib

from kimball_grpc.codec.erlang_terms import Atom

__all__ = ["ExternalTermError", "decode_term", "encode_term"]

VERSION = 131
MAX_DEPTH = 100  # nesting, far below Python's recursion limit
MAX_INFLATED_BYTES = 64 * 1024 * 1024  # a compressed term may not claim more

_COMPRESSED = 80
_NEW_FLOAT = 70
_SMALL_INTEGER = 97
_INTEGER = 98
_FLOAT = 99
_ATOM = 100
_SMALL_TUPLE = 104
_LARGE_TUPLE = 105
_NIL = 106
_STRING = 107
_LIST = 108
_BINARY = 109
_SMALL_BIG = 110
_LARGE_BIG = 111
_SMALL_ATOM = 115
_MAP = 116
_ATOM_UTF8 = 118
_SMALL_ATOM_UTF8 = 119
_MAX_BIG_DIGITS = 1024  # bytes of one big integer: far past any counter or time


class ExternalTermError(ValueError):
    """Bytes that are not a supported external term; the message names the offset."""


def decode_term(data: bytes) -> object:
    """The one term in ``data`` (version byte first), or ``ExternalTermError``."""
    if not data or data[0] != VERSION:
        raise ExternalTermError("not an Erlang external term (no version byte 131 at offset 0)")
    if len(data) > 1 and data[1] == _COMPRESSED:
        data = _inflate(data)
    reader = _Reader(data, 1)
    term = reader.term(0)
    if reader.at != len(data):
        raise ExternalTermError(f"{len(data) - reader.at} bytes after the term at {reader.at}")
    return term


def _inflate(data: bytes) -> bytes:
    if len(data) < 6:
        raise ExternalTermError("a compressed term shorter than its header")
    (size,) = struct.unpack_from(">I", data, 2)
    if size > MAX_INFLATED_BYTES:
        raise ExternalTermError(f"a compressed term claims {size} bytes, more than allowed")
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data[6:], size + 1)
    except zlib.error as exc:
        raise ExternalTermError(f"a compressed term does not inflate: {exc}") from None
    if len(body) != size or not inflater.eof:
        raise ExternalTermError(f"a compressed term inflates to other than its {size} bytes")
    return bytes([VERSION]) + body


class _Reader:
    def __init__(self, data: bytes, at: int) -> None:
        self.data = data
        self.at = at

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.data):
            raise ExternalTermError(f"the term ends early: {size} bytes wanted at {self.at}")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def count(self, fmt: str, least_bytes_each: int) -> int:
        """An element count, refused when the bytes left cannot hold that many."""
        (n,) = self.unpack(fmt)
        if n * least_bytes_each > len(self.data) - self.at:
            raise ExternalTermError(f"{n} elements claimed at {self.at}, more than the bytes left")
        return n

    def term(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise ExternalTermError(f"terms nested deeper than {MAX_DEPTH} at {self.at}")
        start = self.at
        (tag,) = self.take(1)
        if tag == _SMALL_INTEGER:
            return self.take(1)[0]
        if tag == _INTEGER:
            return self.unpack(">i")[0]
        if tag == _NEW_FLOAT:
            return self.unpack(">d")[0]
        if tag == _FLOAT:
            text = self.take(31).split(b"\0", 1)[0]
            try:
                return float(text.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise ExternalTermError(f"a bad float at {start}") from None
        if tag in (_SMALL_ATOM_UTF8, _ATOM_UTF8, _SMALL_ATOM, _ATOM):
            size = self.unpack(">B" if tag in (_SMALL_ATOM_UTF8, _SMALL_ATOM) else ">H")[0]
            utf8 = tag in (_SMALL_ATOM_UTF8, _ATOM_UTF8)
            try:
                return Atom(self.take(size).decode("utf-8" if utf8 else "latin-1"))
            except UnicodeDecodeError:
                raise ExternalTermError(f"an atom that is not UTF-8 at {start}") from None
        if tag == _BINARY:
            return self.take(self.count(">I", 1))
        if tag == _NIL:
            return []
        if tag == _STRING:
            return list(self.take(self.count(">H", 1)))
        if tag == _LIST:
            items = [self.term(depth + 1) for _ in range(self.count(">I", 1))]
            if self.term(depth + 1) != []:
                raise ExternalTermError(f"an improper list at {start}")
            return items
        if tag in (_SMALL_TUPLE, _LARGE_TUPLE):
            n = self.count(">B" if tag == _SMALL_TUPLE else ">I", 1)
            return tuple(self.term(depth + 1) for _ in range(n))
        if tag == _MAP:
            out: dict[object, object] = {}
            for _ in range(self.count(">I", 2)):
                key = self.term(depth + 1)
                if isinstance(key, list | dict):
                    raise ExternalTermError(f"a map key that is a list or a map at {start}")
                out[key] = self.term(depth + 1)
            return out
        if tag in (_SMALL_BIG, _LARGE_BIG):
            size = self.unpack(">B" if tag == _SMALL_BIG else ">I")[0]
            if size > _MAX_BIG_DIGITS:
                raise ExternalTermError(f"an integer of {size} bytes at {start}")
            sign = self.take(1)[0]
            value = int.from_bytes(self.take(size), "little")
            return -value if sign else value
        raise ExternalTermError(f"unsupported term tag {tag} at {start}")


def encode_term(term: object) -> bytes:
    """``term`` as ``erlang:term_to_binary/1`` writes it (see the module docstring);
    ``TypeError`` for a value with no Erlang counterpart here (``str``: say binary or
    list; ``bool``: say ``Atom("true")``)."""
    out = bytearray([VERSION])
    _encode(term, out, 0)
    return bytes(out)


def _encode(term: object, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TypeError(f"terms nested deeper than {MAX_DEPTH}")
    if isinstance(term, Atom):
        name = term.name.encode()
        if len(name) < 256:
            out += struct.pack(">BB", _SMALL_ATOM_UTF8, len(name))
        else:
            out += struct.pack(">BH", _ATOM_UTF8, len(name))
        out += name
    elif isinstance(term, bool | str):
        raise TypeError(f"no Erlang term for {type(term).__name__} {term!r}")
    elif isinstance(term, int):
        if 0 <= term < 256:
            out += struct.pack(">BB", _SMALL_INTEGER, term)
        elif -(2**31) <= term < 2**31:
            out += struct.pack(">Bi", _INTEGER, term)
        else:
            digits = abs(term).to_bytes((abs(term).bit_length() + 7) // 8, "little")
            if len(digits) < 256:
                out += struct.pack(">BB", _SMALL_BIG, len(digits))
            else:
                out += struct.pack(">BI", _LARGE_BIG, len(digits))
            out += bytes([term < 0]) + digits
    elif isinstance(term, float):
        out += struct.pack(">Bd", _NEW_FLOAT, term)
    elif isinstance(term, bytes):
        out += struct.pack(">BI", _BINARY, len(term)) + term
    elif isinstance(term, list):
        if term and len(term) < 65536 and all(_is_byte(item) for item in term):
            out += struct.pack(">BH", _STRING, len(term)) + bytes(term)  # as Erlang does
        elif term:
            out += struct.pack(">BI", _LIST, len(term))
            for item in term:
                _encode(item, out, depth + 1)
            out.append(_NIL)
        else:
            out.append(_NIL)
    elif isinstance(term, tuple):
        if len(term) < 256:
            out += struct.pack(">BB", _SMALL_TUPLE, len(term))
        else:
            out += struct.pack(">BI", _LARGE_TUPLE, len(term))
        for item in term:
            _encode(item, out, depth + 1)
    elif isinstance(term, dict):
        out += struct.pack(">BI", _MAP, len(term))
        for key in sorted(term, key=_term_order):
            _encode(key, out, depth + 1)
            _encode(term[key], out, depth + 1)
    else:
        raise TypeError(f"no Erlang term for {type(term).__name__}")


def _is_byte(item: object) -> bool:
    return item.__class__ is int and 0 <= item < 256  # not a bool


def _term_order(key: object) -> tuple[int, object]:
    """Erlang's order for the map keys written here: numbers < atoms < binaries."""
    if isinstance(key, int | float):
        return (0, key)
    if isinstance(key, Atom):
        return (1, key.name)
    if isinstance(key, bytes):
        return (2, key)
    raise TypeError(f"no Erlang map key for {type(key).__name__} here")
