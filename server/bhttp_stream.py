"""Streaming Binary HTTP responses (RFC 9292 indeterminate-length form) for SSE over chunked OHTTP.

The gateway writes the head (status and fields) as soon as the engine answers, then each batch of
server-sent events as one content chunk, then the terminators. The client decodes the same bytes
incrementally, so text reaches the user as the engine produces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attest.errors import ParseError
from server.ohttp import decode_response
from server.ohttp._varint import encode_varint as varint
from server.ohttp._varint import peek_varint as _read_varint

__all__ = [
    "ResponseHead",
    "StreamingResponseDecoder",
    "encode_content_chunk",
    "encode_response_end",
    "encode_response_head",
]

_INDETERMINATE_RESPONSE = 3
_KNOWN_RESPONSE = 1


def _fields(fields: Sequence[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in fields:
        n, v = name.lower().encode(), value.encode()
        out += varint(len(n)) + n + varint(len(v)) + v
    return bytes(out + b"\x00")


def encode_response_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    if not 200 <= status <= 599:
        raise ValueError("final status must be 200-599")
    return varint(_INDETERMINATE_RESPONSE) + varint(status) + _fields(headers)


def encode_content_chunk(data: bytes) -> bytes:
    if not data:
        return b""  # a zero length would terminate the content
    return varint(len(data)) + data


def encode_response_end() -> bytes:
    """Content terminator and an empty trailer section."""
    return b"\x00\x00"


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None


class StreamingResponseDecoder:
    """Incremental decoder: ``feed`` returns (head or None, content pieces) as they complete."""

    def __init__(self, *, max_buffer: int = 2 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._state = "start"
        self._framing = 0
        self._head_fields: list[tuple[str, str]] = []
        self._status = 0
        self._max = max_buffer
        self.head: ResponseHead | None = None
        self.done = False

    def feed(self, data: bytes) -> tuple[ResponseHead | None, list[bytes]]:
        self._buf += data
        if len(self._buf) > self._max:
            raise ParseError("binary HTTP response piece exceeds the size limit")
        new_head: ResponseHead | None = None
        pieces: list[bytes] = []
        if self._framing == _KNOWN_RESPONSE or self.done:
            return None, pieces
        while True:
            if self._state == "start":
                r = _read_varint(self._buf, 0)
                if r is None:
                    break
                self._framing = r[0]
                if self._framing == _KNOWN_RESPONSE:
                    return None, pieces  # buffered until finish()
                if self._framing != _INDETERMINATE_RESPONSE:
                    raise ParseError(f"not a binary HTTP response (framing {self._framing})")
                del self._buf[: r[1]]
                self._state = "status"
            elif self._state == "status":
                r = _read_varint(self._buf, 0)
                if r is None:
                    break
                self._status = r[0]
                if not 100 <= self._status <= 599:
                    raise ParseError(f"binary HTTP status {self._status} out of range")
                del self._buf[: r[1]]
                self._state = "fields"
                self._head_fields = []
            elif self._state == "fields":
                r = _read_varint(self._buf, 0)
                if r is None:
                    break
                if r[0] == 0:
                    del self._buf[: r[1]]
                    if self._status < 200:  # informational: skip, read the next status
                        self._state = "status"
                        continue
                    self.head = new_head = ResponseHead(self._status, tuple(self._head_fields))
                    self._state = "content"
                    continue
                line = self._field_line(r)
                if line is None:
                    break
                self._head_fields.append(line)
            elif self._state == "content":
                r = _read_varint(self._buf, 0)
                if r is None:
                    break
                length, pos = r
                if length == 0:
                    del self._buf[:pos]
                    self._state = "trailers"
                    continue
                if pos + length > len(self._buf):
                    break
                pieces.append(bytes(self._buf[pos : pos + length]))
                del self._buf[: pos + length]
            elif self._state == "trailers":
                r = _read_varint(self._buf, 0)
                if r is None:
                    break
                if r[0] == 0:
                    del self._buf[: r[1]]
                    if any(self._buf):
                        raise ParseError("non-zero bytes after the binary HTTP response")
                    self._buf.clear()
                    self.done = True
                    break
                if self._field_line(r) is None:
                    break
        return new_head, pieces

    def _field_line(self, r: tuple[int, int]) -> tuple[str, str] | None:
        name_len, pos = r
        if pos + name_len > len(self._buf):
            return None
        name = bytes(self._buf[pos : pos + name_len])
        rv = _read_varint(self._buf, pos + name_len)
        if rv is None:
            return None
        value_len, vpos = rv
        if vpos + value_len > len(self._buf):
            return None
        value = bytes(self._buf[vpos : vpos + value_len])
        del self._buf[: vpos + value_len]
        try:
            return name.decode("ascii"), value.decode("latin-1")
        except UnicodeDecodeError as e:
            raise ParseError("binary HTTP field name is not ASCII") from e

    def finish(self) -> tuple[ResponseHead | None, list[bytes]]:
        """Call at the end of the stream: decodes a buffered known-length response."""
        if self._framing == _KNOWN_RESPONSE:
            resp = decode_response(bytes(self._buf))
            self.done = True
            self.head = ResponseHead(resp.status, tuple(resp.headers))
            return self.head, [resp.body] if resp.body else []
        if not self.done:
            raise ParseError("binary HTTP response ended early")
        return None, []
