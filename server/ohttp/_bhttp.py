"""Binary HTTP messages (RFC 9292): known-length and indeterminate-length framing.

Decoding accepts both framings, the truncation of trailing empty sections (§3.8) and zero
padding; everything else malformed is a ParseError. Field names must be lowercase tokens and
field values must not hold CR, LF or NUL, because the gateway replays them as HTTP/1.1 on
loopback and a smuggled line break there would be a request-splitting hole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from attest.errors import ParseError
from server.ohttp._varint import decode_varint, encode_varint

__all__ = [
    "MAX_CONTENT_CHUNKS",
    "MAX_FIELDS",
    "MAX_SECTION_BYTES",
    "BhttpRequest",
    "BhttpResponse",
    "Fields",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

Fields = tuple[tuple[str, str], ...]

KNOWN_REQUEST = 0
KNOWN_RESPONSE = 1
INDETERMINATE_REQUEST = 2
INDETERMINATE_RESPONSE = 3
MAX_FIELDS = 256
"""Most field lines in one header or trailer section (HTTP servers allow about 100)."""
MAX_SECTION_BYTES = 64 * 1024
"""Most bytes in one field section, as the gateway's HTTP server bounds its own headers."""
MAX_CONTENT_CHUNKS = 4096
"""Most chunks of indeterminate-length content (a 1 MiB body in 1-byte chunks is not a body)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_LOWER_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
# Scheme, authority and path: visible ASCII only (no spaces, no controls).
_VISIBLE = re.compile(rb"[\x21-\x7e]*")


@dataclass(frozen=True, slots=True)
class BhttpRequest:
    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields
    body: bytes
    trailers: Fields = ()


@dataclass(frozen=True, slots=True)
class BhttpResponse:
    status: int
    headers: Fields
    body: bytes
    informational: tuple[tuple[int, Fields], ...] = ()
    trailers: Fields = ()


# ---------------------------------------------------------------------------------- encoding


def _ascii(value: str, what: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be ASCII: {value!r}") from None


def _lp(data: bytes) -> bytes:
    return encode_varint(len(data)) + data


def _field_lines(fields: Fields) -> bytes:
    out = bytearray()
    for name, value in fields:
        raw_name = _ascii(name, "field name").lower()
        if not _LOWER_TOKEN.fullmatch(raw_name):
            raise ValueError(f"invalid field name {name!r}")
        try:
            raw_value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"field {name!r}: value is not Latin-1") from None
        if _BAD_VALUE.search(raw_value):
            raise ValueError(f"field {name!r}: value holds CR, LF or NUL")
        out += encode_varint(len(raw_name))
        out += raw_name
        out += encode_varint(len(raw_value))
        out += raw_value
    return bytes(out)


def _section(fields: Fields, indeterminate: bool) -> bytes:
    lines = _field_lines(fields)
    if indeterminate:
        return lines + b"\x00"
    return _lp(lines)


def _content(body: bytes, indeterminate: bool) -> bytes:
    if indeterminate:
        return (_lp(body) if body else b"") + b"\x00"
    return _lp(body)


def _control(req: BhttpRequest) -> bytes:
    method = _ascii(req.method, "method")
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"invalid method {req.method!r}")
    parts = [method]
    for what, value in (("scheme", req.scheme), ("authority", req.authority), ("path", req.path)):
        raw = _ascii(value, what)
        if not _VISIBLE.fullmatch(raw):
            raise ValueError(f"invalid {what} {value!r}")
        parts.append(raw)
    return b"".join(_lp(p) for p in parts)


def encode_request(req: BhttpRequest, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """The Binary HTTP form of ``req``, with ``padding`` zero bytes appended."""
    framing = INDETERMINATE_REQUEST if indeterminate else KNOWN_REQUEST
    return b"".join(
        (
            encode_varint(framing),
            _control(req),
            _section(req.headers, indeterminate),
            _content(req.body, indeterminate),
            _section(req.trailers, indeterminate),
            bytes(padding),
        )
    )


def _status(status: int, informational: bool) -> bytes:
    if informational and not 100 <= status <= 199:
        raise ValueError(f"informational status must be 1xx, got {status}")
    if not informational and not 200 <= status <= 599:
        raise ValueError(f"final status must be 200-599, got {status}")
    return encode_varint(status)


def encode_response(resp: BhttpResponse, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """The Binary HTTP form of ``resp``, with ``padding`` zero bytes appended."""
    framing = INDETERMINATE_RESPONSE if indeterminate else KNOWN_RESPONSE
    parts = [encode_varint(framing)]
    for status, fields in resp.informational:
        parts.append(_status(status, True))
        parts.append(_section(fields, indeterminate))
    parts += (
        _status(resp.status, False),
        _section(resp.headers, indeterminate),
        _content(resp.body, indeterminate),
        _section(resp.trailers, indeterminate),
        bytes(padding),
    )
    return b"".join(parts)


# ---------------------------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        value, self.pos = decode_varint(self.data, self.pos)
        return value

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ParseError(f"binary HTTP: truncated {what}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def lp(self, what: str) -> bytes:
        return self.take(self.varint(), what)


def _visible(raw: bytes, what: str) -> str:
    if not _VISIBLE.fullmatch(raw):
        raise ParseError(f"binary HTTP: invalid {what}")
    return raw.decode("ascii")


def _field_line(r: _Reader, name: bytes) -> tuple[str, str]:
    if not _LOWER_TOKEN.fullmatch(name):
        if _TOKEN.fullmatch(name):
            raise ParseError("binary HTTP: field name is not lowercase")
        raise ParseError("binary HTTP: invalid field name")
    value = r.lp("field value")
    if _BAD_VALUE.search(value):
        raise ParseError("binary HTTP: field value holds CR, LF or NUL")
    return name.decode("ascii"), value.decode("latin-1")


def _bounded(fields: list[tuple[str, str]], size: int) -> None:
    if len(fields) > MAX_FIELDS or size > MAX_SECTION_BYTES:
        raise ParseError(
            f"binary HTTP: a field section over {MAX_FIELDS} fields or {MAX_SECTION_BYTES} bytes"
        )


def _known_section(r: _Reader) -> Fields:
    section = _Reader(r.lp("field section"))
    _bounded([], len(section.data))
    fields: list[tuple[str, str]] = []
    while not section.at_end():
        name = section.lp("field name")
        if not name:
            raise ParseError("binary HTTP: empty field name")
        fields.append(_field_line(section, name))
        _bounded(fields, 0)
    return tuple(fields)


def _indeterminate_section(r: _Reader) -> Fields:
    fields: list[tuple[str, str]] = []
    start = r.pos
    while True:
        name = r.lp("field name")
        if not name:
            return tuple(fields)
        fields.append(_field_line(r, name))
        _bounded(fields, r.pos - start)


def _section_or_empty(r: _Reader, indeterminate: bool) -> Fields:
    # RFC 9292 §3.8: a message may end where an empty section would start.
    if r.at_end():
        return ()
    return _indeterminate_section(r) if indeterminate else _known_section(r)


def _content_or_empty(r: _Reader, indeterminate: bool) -> bytes:
    if r.at_end():
        return b""
    if not indeterminate:
        return r.lp("content")
    chunks: list[bytes] = []
    while True:
        chunk = r.lp("content chunk")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if len(chunks) > MAX_CONTENT_CHUNKS:
            raise ParseError(f"binary HTTP: content in over {MAX_CONTENT_CHUNKS} chunks")


def _padding(r: _Reader) -> None:
    if r.data.count(0, r.pos) != len(r.data) - r.pos:
        raise ParseError("binary HTTP: non-zero bytes after the message")


def _bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def decode_request(data: bytes) -> BhttpRequest:
    r = _Reader(_bytes(data))
    framing = r.varint()
    if framing not in (KNOWN_REQUEST, INDETERMINATE_REQUEST):
        raise ParseError(f"binary HTTP: framing indicator {framing} is not a request")
    indeterminate = framing == INDETERMINATE_REQUEST
    method = r.lp("method")
    if not _TOKEN.fullmatch(method):
        raise ParseError("binary HTTP: invalid method")
    scheme = _visible(r.lp("scheme"), "scheme")
    authority = _visible(r.lp("authority"), "authority")
    path = _visible(r.lp("path"), "path")
    headers = _section_or_empty(r, indeterminate)
    body = _content_or_empty(r, indeterminate)
    trailers = _section_or_empty(r, indeterminate)
    _padding(r)
    return BhttpRequest(method.decode("ascii"), scheme, authority, path, headers, body, trailers)


def decode_response(data: bytes) -> BhttpResponse:
    r = _Reader(_bytes(data))
    framing = r.varint()
    if framing not in (KNOWN_RESPONSE, INDETERMINATE_RESPONSE):
        raise ParseError(f"binary HTTP: framing indicator {framing} is not a response")
    indeterminate = framing == INDETERMINATE_RESPONSE
    informational: list[tuple[int, Fields]] = []
    while True:
        status = r.varint()
        if 100 <= status <= 199:
            # An informational response always precedes a final one, so no truncation here.
            fields = _indeterminate_section(r) if indeterminate else _known_section(r)
            informational.append((status, fields))
            continue
        if not 200 <= status <= 599:
            raise ParseError(f"binary HTTP: invalid status {status}")
        break
    headers = _section_or_empty(r, indeterminate)
    body = _content_or_empty(r, indeterminate)
    trailers = _section_or_empty(r, indeterminate)
    _padding(r)
    return BhttpResponse(status, headers, body, tuple(informational), trailers)
