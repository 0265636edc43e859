"""Binary HTTP (RFC 9292): the RFC's examples, truncation, padding, rejects, fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError
from server.ohttp import (
    BhttpRequest,
    BhttpResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from tests.server.ohttp.vectors import (
    BHTTP_FIG8,
    BHTTP_FIG8_HEADERS,
    BHTTP_FIG9,
    BHTTP_FIG11,
    BHTTP_FIG13,
    OHTTP_REQUEST,
    OHTTP_RESPONSE,
)

FIG8_REQUEST = BhttpRequest("GET", "https", "", "/hello.txt", BHTTP_FIG8_HEADERS, b"")


def test_fig8_known_length_request() -> None:
    assert decode_request(BHTTP_FIG8) == FIG8_REQUEST
    assert encode_request(FIG8_REQUEST) == BHTTP_FIG8


def test_fig9_indeterminate_request_with_padding() -> None:
    assert decode_request(BHTTP_FIG9) == FIG8_REQUEST
    assert encode_request(FIG8_REQUEST, indeterminate=True, padding=10) == BHTTP_FIG9


def test_fig11_indeterminate_response_with_informational() -> None:
    resp = decode_response(BHTTP_FIG11)
    assert resp.status == 200
    assert resp.informational == (
        (102, (("running", '"sleep 15"'),)),
        (
            103,
            (
                ("link", "</style.css>; rel=preload; as=style"),
                ("link", "</script.js>; rel=preload; as=script"),
            ),
        ),
    )
    assert ("content-length", "51") in resp.headers
    assert ("etag", '"34aa387-d-1568eb00"') in resp.headers
    assert resp.body == b"Hello World! My content includes a trailing CRLF.\r\n"
    assert resp.trailers == ()
    assert encode_response(resp, indeterminate=True) == BHTTP_FIG11
    assert decode_response(encode_response(resp)) == resp


def test_fig13_known_length_response_with_trailer() -> None:
    resp = decode_response(BHTTP_FIG13)
    assert resp == BhttpResponse(
        200, (), b"This content contains CRLF.\r\n", trailers=(("trailer", "text"),)
    )
    assert encode_response(resp) == BHTTP_FIG13


def test_rfc9458_truncated_messages() -> None:
    # RFC 9458 appendix A's messages drop their empty sections (RFC 9292 §3.8).
    assert decode_request(OHTTP_REQUEST) == BhttpRequest(
        "GET", "https", "example.com", "/", (), b""
    )
    assert decode_response(OHTTP_RESPONSE) == BhttpResponse(200, (), b"")
    assert encode_response(BhttpResponse(200, (), b"")).hex() == "0140c8000000"


@pytest.mark.parametrize("cut", range(0, 13))
def test_fig9_any_padding_or_empty_section_may_be_dropped(cut: int) -> None:
    assert decode_request(BHTTP_FIG9[: len(BHTTP_FIG9) - cut]) == FIG8_REQUEST


@pytest.mark.parametrize("cut", [1, 2])
def test_fig8_empty_sections_may_be_dropped(cut: int) -> None:
    assert decode_request(BHTTP_FIG8[:-cut]) == FIG8_REQUEST


def test_non_minimal_framing_indicator() -> None:
    assert decode_request(b"\x40\x00" + BHTTP_FIG8[1:]) == FIG8_REQUEST


def _raw_request(*, method: bytes = b"GET", path: bytes = b"/x", fields: bytes = b"") -> bytes:
    def lp(b: bytes) -> bytes:
        return bytes([len(b)]) + b

    return b"\x00" + lp(method) + lp(b"https") + lp(b"") + lp(path) + lp(fields) + b"\x00\x00"


def _field(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + bytes([len(value)]) + value


BAD_REQUESTS = [
    ("empty", b"", "truncated variable-length integer"),
    ("response framing", b"\x01" + BHTTP_FIG8[1:], "not a request"),
    ("unknown framing", b"\x05", "not a request"),
    ("cut in control data", BHTTP_FIG8[:8], "truncated"),
    ("cut in header section", BHTTP_FIG8[:40], "truncated field section"),
    ("cut in indeterminate field", BHTTP_FIG9[:40], "truncated"),
    (
        "length past end",
        bytes.fromhex("000347455405687474707300012f") + b"\xbf\xff\xff\xff",
        "truncated",
    ),
    ("non-zero padding", BHTTP_FIG8 + b"\x00\x01", "non-zero bytes"),
    ("bad method", _raw_request(method=b"GE T"), "invalid method"),
    ("path with space", _raw_request(path=b"/a b"), "invalid path"),
    ("path with non-ASCII", _raw_request(path="/é".encode()), "invalid path"),
    ("uppercase name", _raw_request(fields=_field(b"Accept", b"*/*")), "not lowercase"),
    ("pseudo field", _raw_request(fields=_field(b":method", b"POST")), "invalid field name"),
    ("empty name", _raw_request(fields=_field(b"", b"x")), "empty field name"),
    ("CRLF in value", _raw_request(fields=_field(b"x", b"a\r\nb: c")), "CR, LF or NUL"),
    ("LF in value", _raw_request(fields=_field(b"x", b"a\nb")), "CR, LF or NUL"),
    ("NUL in value", _raw_request(fields=_field(b"x", b"a\x00b")), "CR, LF or NUL"),
]


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_request(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        decode_request(data)


BAD_RESPONSES = [
    ("request framing", b"\x00" + BHTTP_FIG13[1:], "not a response"),
    ("status 99", bytes.fromhex("014063000000"), "invalid status 99"),
    ("status 600", bytes.fromhex("014258000000"), "invalid status 600"),
    ("no final after 1xx", bytes.fromhex("01406400"), "truncated"),
    ("cut in content", BHTTP_FIG13[:10], "truncated content"),
    ("cut in indeterminate content", BHTTP_FIG11[:-40], "truncated"),
]


@pytest.mark.parametrize(
    ("data", "message"), [r[1:] for r in BAD_RESPONSES], ids=[r[0] for r in BAD_RESPONSES]
)
def test_bad_response(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        decode_response(data)


BAD_ENCODES = [
    (BhttpRequest("G T", "https", "", "/", (), b""), "invalid method"),
    (BhttpRequest("GET", "https", "", "/a b", (), b""), "invalid path"),
    (BhttpRequest("GET", "https", "", "/", (("x", "a\r\nb"),), b""), "CR, LF or NUL"),
    (BhttpRequest("GET", "https", "", "/", (("bad name", "x"),), b""), "invalid field name"),
    (BhttpRequest("GET", "https", "", "/", (("x", "€"),), b""), "not Latin-1"),
    (BhttpRequest("GÉT", "https", "", "/", (), b""), "must be ASCII"),
]


@pytest.mark.parametrize(("req", "message"), BAD_ENCODES, ids=range(len(BAD_ENCODES)))
def test_encoder_refuses_what_the_decoder_would(req: BhttpRequest, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_request(req)


@pytest.mark.parametrize(("status", "informational"), [(199, ()), (200, ((200, ()),))])
def test_encoder_checks_status_classes(
    status: int, informational: tuple[tuple[int, tuple[tuple[str, str], ...]], ...]
) -> None:
    with pytest.raises(ValueError, match="status"):
        encode_response(BhttpResponse(status, (), b"", informational))


def test_encoder_lowercases_field_names() -> None:
    req = BhttpRequest(
        "POST", "https", "h", "/v1/chat/completions", (("Content-Type", "a"),), b"{}"
    )
    assert decode_request(encode_request(req)).headers == (("content-type", "a"),)


# ------------------------------------------------------------------------------ properties

_names = st.from_regex(r"[a-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True)
_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
_fields = st.lists(st.tuples(_names, _values), max_size=5).map(tuple)
_visible = st.from_regex(r"[\x21-\x7e]{0,30}", fullmatch=True)
_requests = st.builds(
    BhttpRequest,
    method=st.from_regex(r"[A-Z]{1,10}", fullmatch=True),
    scheme=_visible,
    authority=_visible,
    path=_visible,
    headers=_fields,
    body=st.binary(max_size=300),
    trailers=_fields,
)
_responses = st.builds(
    BhttpResponse,
    status=st.integers(200, 599),
    headers=_fields,
    body=st.binary(max_size=300),
    informational=st.lists(st.tuples(st.integers(100, 199), _fields), max_size=3).map(tuple),
    trailers=_fields,
)


@given(_requests, st.booleans(), st.integers(0, 20))
def test_request_round_trip(req: BhttpRequest, indeterminate: bool, padding: int) -> None:
    assert decode_request(encode_request(req, indeterminate=indeterminate, padding=padding)) == req


@given(_responses, st.booleans(), st.integers(0, 20))
def test_response_round_trip(resp: BhttpResponse, indeterminate: bool, padding: int) -> None:
    encoded = encode_response(resp, indeterminate=indeterminate, padding=padding)
    assert decode_response(encoded) == resp


_SEEDS = [BHTTP_FIG8, BHTTP_FIG9, BHTTP_FIG11, BHTTP_FIG13, OHTTP_REQUEST, OHTTP_RESPONSE]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=80), _mutated()))
def test_decoders_raise_only_parse_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(ParseError):
            decode(data)


@pytest.mark.parametrize("indeterminate", [False, True])
def test_field_sections_are_bounded(indeterminate: bool) -> None:
    """A 1 MiB body of tiny header lines must not cost the event loop a long parse."""
    from server.ohttp._bhttp import MAX_FIELDS, MAX_SECTION_BYTES

    many = tuple((f"x{i}", "") for i in range(MAX_FIELDS + 1))
    wire = encode_request(
        BhttpRequest("GET", "https", "h", "/", many, b""), indeterminate=indeterminate
    )
    with pytest.raises(ParseError, match="field section over"):
        decode_request(wire)
    big = (("x", "v" * MAX_SECTION_BYTES),)
    wire = encode_request(
        BhttpRequest("GET", "https", "h", "/", big, b""), indeterminate=indeterminate
    )
    with pytest.raises(ParseError, match="field section over"):
        decode_request(wire)
    ok = tuple((f"x{i}", "v") for i in range(MAX_FIELDS))
    wire = encode_request(
        BhttpRequest("GET", "https", "h", "/", ok, b""), indeterminate=indeterminate
    )
    assert decode_request(wire).headers == ok


def test_content_chunks_are_bounded() -> None:
    from server.ohttp._bhttp import MAX_CONTENT_CHUNKS

    ok = BhttpRequest("POST", "https", "h", "/", (), b"ab")
    body = encode_request(ok, indeterminate=True)
    assert decode_request(body).body == b"ab"
    # Re-chunk the content of an indeterminate request: the encoder sends one chunk, so build
    # the wire by hand from its prefix (everything before the content).
    prefix = body[: body.rindex(b"\x02ab")]
    rest = body[body.rindex(b"\x02ab") + 3 :]
    within = prefix + b"\x01x" * MAX_CONTENT_CHUNKS + rest
    assert decode_request(within).body == b"x" * MAX_CONTENT_CHUNKS
    over = prefix + b"\x01x" * (MAX_CONTENT_CHUNKS + 1) + rest
    with pytest.raises(ParseError, match="content in over"):
        decode_request(over)
