"""A strict binary reader and writer for Parley's wire formats.

Integers are big-endian; variable-length fields carry a length prefix and an
explicit upper bound, so a hostile length can never make the reader allocate
or read more than the bound. ``Reader`` raises ``MalformedMessage`` for every
defect (short input, bad bound, bad UTF-8, trailing bytes): a decoder built on
it can raise nothing else.
"""

from __future__ import annotations

import struct

from parley.errors import MalformedMessage

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(bytes((value,)))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(_U64.pack(value))
        return self

    def fixed(self, data: bytes, length: int) -> Writer:
        if len(data) != length:
            raise ValueError(f"expected {length} bytes, got {len(data)}")
        self._parts.append(data)
        return self

    def var(self, data: bytes, max_len: int) -> Writer:
        """A u32 length prefix then the bytes."""
        if len(data) > max_len:
            raise ValueError(f"field of {len(data)} bytes exceeds its bound {max_len}")
        self._parts.append(_U32.pack(len(data)))
        self._parts.append(data)
        return self

    def text(self, value: str, max_len: int) -> Writer:
        return self.var(value.encode("utf-8"), max_len)

    def bool(self, value: bool) -> Writer:
        return self.u8(1 if value else 0)

    def to_bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessage("expected bytes")
        self._data = bytes(data)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise MalformedMessage("truncated input")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def fixed(self, length: int) -> bytes:
        return self._take(length)

    def var(self, max_len: int) -> bytes:
        length = self.u32()
        if length > max_len:
            raise MalformedMessage(f"field length {length} exceeds its bound {max_len}")
        return self._take(length)

    def text(self, max_len: int) -> str:
        try:
            return self.var(max_len).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("invalid UTF-8") from exc

    def bool(self) -> bool:
        value = self.u8()
        if value > 1:
            raise MalformedMessage("invalid boolean")
        return value == 1

    def consumed(self) -> bytes:
        """The bytes read so far (used as associated data for what follows)."""
        return self._data[: self._pos]

    def rest(self) -> bytes:
        return self._data[self._pos :]

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessage("trailing bytes")
