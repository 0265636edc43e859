"""The gateway's HTTP/1.1 client for its engine (and the relay's for its gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.engine_http import (
    EngineConnectError,
    EngineHttp,
    EngineProtocolError,
    EngineTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    lower = head.lower()
    if b"content-length:" in lower:
        n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(n)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    return head, body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_chunked_stream_arrives_in_batches_and_the_connection_is_reused() -> None:
    connections = 0
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, _ = await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            # Three events written at once: the reader gets them as one batch.
            writer.write(_chunk(b"data: 1\n\n") + _chunk(b"data: 2\n\n") + _chunk(b"data: 3\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()

    async def go() -> list[list[bytes]]:
        server, port = await _serve(handler)
        http = EngineHttp("127.0.0.1", port)
        out = []
        for _ in range(3):
            r = await http.request("POST", "/v1/chat/completions", b'{"stream": true}')
            assert r.status == 200
            out.append([b async for b in r.iter_batches()])
        http.close()
        server.close()
        return out

    batches = run(go())
    assert batches == [[b"data: 1\n\ndata: 2\n\ndata: 3\n\n", b"data: [DONE]\n\n"]] * 3
    assert connections == 1
    assert heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"content-type: application/json\r\n" in heads[0]
    assert b"content-length: 16\r\n" in heads[0]


def test_length_delimited_body_is_read_whole() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n")
        writer.write(b'content-length: 13\r\n\r\n{"error": 42}')
        await writer.drain()

    async def go() -> tuple[int, str, bytes]:
        server, port = await _serve(handler)
        http = EngineHttp("127.0.0.1", port)
        r = await http.request("GET", "/v1/models")
        body = await r.read()
        server.close()
        return r.status, r.headers["content-type"], body

    assert run(go()) == (404, "application/json", b'{"error": 42}')


def test_a_close_mid_body_is_an_error_not_a_short_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + _chunk(b"part"))
        await writer.drain()
        writer.close()

    async def go() -> list[bytes]:
        server, port = await _serve(handler)
        http = EngineHttp("127.0.0.1", port)
        r = await http.request("POST", "/x", b"{}")
        got = []
        try:
            async for b in r.iter_batches():
                got.append(b)
        finally:
            server.close()
        return got

    with pytest.raises(EngineProtocolError, match="closed the connection before the response"):
        run(go())


def test_malformed_response_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def go() -> None:
        server, port = await _serve(handler)
        try:
            await EngineHttp("127.0.0.1", port).request("GET", "/")
        finally:
            server.close()

    with pytest.raises(EngineProtocolError, match="malformed HTTP"):
        run(go())


def test_silence_is_a_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def go() -> None:
        server, port = await _serve(handler)
        try:
            await EngineHttp("127.0.0.1", port, read_timeout=0.2).request("GET", "/")
        finally:
            server.close()

    with pytest.raises(EngineTimeout, match=r"sent nothing for 0\.2 s"):
        run(go())


def test_nothing_listening_is_a_connect_error() -> None:
    async def go() -> None:
        server, port = await _serve(lambda r, w: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        await EngineHttp("127.0.0.1", port).request("GET", "/")

    with pytest.raises(EngineConnectError, match="refused the connection"):
        run(go())


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # no keep-alive announced, but the close arrives after reuse is decided

    async def go() -> list[bytes]:
        server, port = await _serve(handler)
        http = EngineHttp("127.0.0.1", port)
        out = []
        for _ in range(3):
            r = await http.request("GET", "/")
            out.append(await r.read())
        server.close()
        return out

    assert run(go()) == [b"ok"] * 3
    assert served == 3


def test_streamed_request_body_goes_out_chunked_and_an_abort_drops_the_connection() -> None:
    bodies: list[bytes] = []
    cut = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal cut
        while True:
            try:
                _, body = await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                cut += 1
                return
            bodies.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()

    async def good() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"def"

    async def bad() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ValueError("the client's body was refused")

    async def go() -> None:
        server, port = await _serve(handler)
        http = EngineHttp("127.0.0.1", port)
        r = await http.request("POST", "/up", good(), headers=[(b"content-type", b"x/y")])
        assert r.status == 200
        await r.read()
        with pytest.raises(ValueError, match="refused"):
            await http.request("POST", "/up", bad(), headers=[(b"content-type", b"x/y")])
        for _ in range(50):
            if cut:
                break
            await asyncio.sleep(0.02)
        server.close()

    run(go())
    assert bodies == [b"abcdef"]
    assert cut == 1


def test_reading_pauses_when_the_reader_falls_behind() -> None:
    big = b"x" * (256 * 1024)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(32):  # 8 MiB, far beyond the high-water mark
            writer.write(_chunk(big))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def go() -> tuple[int, int]:
        server, port = await _serve(handler)
        http = EngineHttp("127.0.0.1", port)
        r = await http.request("GET", "/")
        await asyncio.sleep(0.3)  # let the server run ahead of a reader that is not reading
        buffered = r._conn.buffered
        total = sum([len(b) async for b in r.iter_batches()])
        server.close()
        return buffered, total

    buffered, total = run(go())  # type: ignore[misc]
    assert total == 32 * len(big)
    assert buffered < 4 * 1024 * 1024  # bounded: the engine was paused, not buffered whole


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("http://127.0.0.1:8480", "127.0.0.1", 8480, False),
        ("http://localhost", "localhost", 80, False),
        ("https://gw.example:8443/", "gw.example", 8443, True),
        ("http://[::1]:9000", "::1", 9000, False),
    ],
)
def test_for_url(url: str, host: str, port: int, tls: bool) -> None:
    http = EngineHttp.for_url(url)
    assert (http.host, http.port, http._tls is not None) == (host, port, tls)


@pytest.mark.parametrize(
    "url", ["127.0.0.1:80", "ftp://x", "http://", "http://h:x", "http://h/path", "http://[::1]x"]
)
def test_for_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match="http\\(s\\)://host"):
        EngineHttp.for_url(url)
