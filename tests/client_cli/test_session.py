"""Session behaviour around the trust decision: caching, key refusal, bounds, inner errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from attest.errors import DecryptError, OpenPCCError, ParseError
from client_cli.session import MAX_SSE_LINE, SseDecoder, event_error, inner_error

CHAT = {"messages": [{"role": "user", "content": "secret words"}], "stream": True}


async def _drain(session: Any) -> None:
    async for _ in session.stream("POST", "/v1/chat/completions", CHAT):
        pass


def test_one_verification_serves_many_requests(sim_node: Any) -> None:
    transport = sim_node.transport()
    session = sim_node.session(transport)

    async def go() -> None:
        async with session:
            for _ in range(3):
                with pytest.raises(OpenPCCError, match="HTTP 503"):
                    await _drain(session)

    asyncio.run(go())
    assert len(transport.bundle_gets) == 1
    assert len(transport.ohttp_posts) == 3


def test_concurrent_first_requests_share_one_verification(sim_node: Any) -> None:
    transport = sim_node.transport()
    session = sim_node.session(transport)

    async def one() -> None:
        with pytest.raises(OpenPCCError, match="HTTP 503"):
            await _drain(session)

    async def go() -> None:
        async with session:
            await asyncio.gather(one(), one(), one())

    asyncio.run(go())
    assert len(transport.bundle_gets) == 1


def test_a_refused_key_is_verified_again_and_the_request_sealed_to_the_new_one(
    sim_node: Any,
) -> None:
    first_key = sim_node.keys.current_config.key_id

    def refuse(request: httpx.Request) -> httpx.Response:
        if len([r for r in transport.ohttp_posts]) == 1:
            sim_node.keys.rotate()  # the node moved on to a new key
        problem = {"type": "https://iana.org/assignments/http-problem-types#ohttp-key"}
        return httpx.Response(400, json=problem)

    transport = sim_node.transport(ohttp=refuse)
    session = sim_node.session(transport)

    async def go() -> None:
        async with session:
            await _drain(session)

    with pytest.raises(DecryptError, match="refused the request twice"):
        asyncio.run(go())
    # Verified, refused, verified again (a fresh bundle with the new key), refused, stopped.
    assert len(transport.bundle_gets) == 2
    first, second = transport.ohttp_posts
    assert first.content[0] == first_key
    assert second.content[0] == sim_node.keys.current_config.key_id != first_key


def test_an_answer_that_does_not_decrypt_forces_a_new_verification(sim_node: Any) -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            stream=httpx.ByteStream(bytes(64)),
            headers={"content-type": "message/ohttp-chunked-res"},
        )

    transport = sim_node.transport(ohttp=garbage)
    session = sim_node.session(transport)

    async def go() -> None:
        async with session:
            for _ in range(2):
                with pytest.raises(DecryptError):
                    await _drain(session)

    asyncio.run(go())
    # Not resent within one request (part of an answer may have been shown), but never again
    # to the same verification.
    assert len(transport.ohttp_posts) == 2
    assert len(transport.bundle_gets) == 2


def test_sse_lines_are_bounded() -> None:
    sse = SseDecoder()
    with pytest.raises(ParseError, match="exceeds 1 MiB"):
        sse.feed(b"data: " + b"x" * MAX_SSE_LINE)
    sse = SseDecoder()
    with pytest.raises(ParseError, match="exceeds 1 MiB"):
        sse.feed(b"data: " + b"x" * MAX_SSE_LINE + b"\n\n")


def test_sse_decoder_reassembles_split_events() -> None:
    sse = SseDecoder()
    event = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    assert sse.feed(event[:10]) == []
    assert sse.feed(event[10:] + b"data: [DONE]\n\n") == [
        {"choices": [{"delta": {"content": "hi"}}]}
    ]
    assert sse.done
    with pytest.raises(ParseError, match="malformed"):
        SseDecoder().feed(b"data: {not json\n")


@pytest.mark.parametrize(
    ("status", "body", "says", "hint"),
    [
        (
            400,
            json.dumps({"error": {"message": "max_tokens is too large", "type": "x"}}).encode(),
            "HTTP 400: max_tokens is too large",
            "model name",
        ),
        (503, b"engine starting\n  please wait", "HTTP 503: engine starting please wait", "busy"),
        (500, b"", "HTTP 500: (no details)", "logs"),
    ],
)
def test_inner_errors_are_one_line_with_a_hint(
    status: int, body: bytes, says: str, hint: str
) -> None:
    e = inner_error(status, body)
    assert type(e) is OpenPCCError
    assert str(e) == "the model server answered " + says
    assert "\n" not in str(e)
    assert hint in e.hint


def test_an_error_event_mid_stream_is_named() -> None:
    e = event_error({"error": {"message": "engine died"}})
    assert e is not None and "engine died" in str(e)
    assert event_error({"choices": []}) is None


def test_sse_decoder_is_linear_in_a_big_piece() -> None:
    """Many events in one piece are split once, not once per line (which copies the rest)."""
    import time

    from client_cli.session import SseDecoder

    piece = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n' * 20_000  # ~1 MiB
    t0 = time.perf_counter()
    events = SseDecoder().feed(piece)
    assert len(events) == 20_000
    assert time.perf_counter() - t0 < 0.5  # quadratic splitting took seconds for this


@pytest.mark.parametrize(
    "payload", [b"data: " + b"[" * 100_000 + b"\n", b"data: " + b"9" * 5000 + b"\n"]
)
def test_sse_decoder_hostile_json_is_a_parse_error(payload: bytes) -> None:
    from attest.errors import ParseError
    from client_cli.session import SseDecoder

    with pytest.raises(ParseError, match="malformed server-sent event"):
        SseDecoder().feed(payload)


def test_sse_line_limit_counts_the_line_not_its_crlf() -> None:
    line = b"data: " + b'"' + b"x" * (MAX_SSE_LINE - 8) + b'"'
    assert len(line) == MAX_SSE_LINE
    SseDecoder().feed(line + b"\r\n")  # exactly the limit: accepted (a string, not a dict)
    with pytest.raises(ParseError, match="exceeds 1 MiB"):
        SseDecoder().feed(b"x" + line + b"\r\n")
