"""A small HTTP/1.1 client for the loopback hop from the gateway to its engine.

The engine streams one server-sent event per token. A general-purpose client (httpx + httpcore +
h11) spends most of the gateway's time on that hop turning every token into its own Python event
(docs/bench/GATEWAY_PROFILE.md). Here one ``asyncio.Protocol`` per connection feeds whatever the
socket delivered to the C parser of ``httptools`` (already the gateway's server-side parser) and
the reader takes *everything* that arrived since its last read as one piece: when the engine is
ahead, many tokens cost one wake-up, one seal and one write.

The relay (``openpcc relay``) uses it for its upstream hop to the gateway for the same reason.

Deliberately small: HTTP/1.1 (optionally over TLS) to one host and port, keep-alive pooling,
chunked and length-delimited bodies both ways, bounded buffering (reading pauses when the reader
falls behind; writing waits when the peer does), a connect timeout and an idle-read timeout.
Errors are :class:`EngineHttpError` subclasses whose messages never carry body bytes.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import AsyncIterator, Sequence
from typing import Final, cast

import httptools

__all__ = [
    "EngineConnectError",
    "EngineHttp",
    "EngineHttpError",
    "EngineProtocolError",
    "EngineResponse",
    "EngineTimeout",
]

_HIGH_WATER: Final = 1 << 20
"""Buffered body bytes at which reading from the engine pauses until the reader catches up."""


class EngineHttpError(Exception):
    """The engine hop failed; the message names how, never what was being carried."""


class EngineConnectError(EngineHttpError):
    pass


class EngineTimeout(EngineHttpError):
    pass


class EngineProtocolError(EngineHttpError):
    pass


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: EngineHttpError | None = None
        self.writable: asyncio.Event | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.got_bytes = False
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.error = EngineProtocolError("the engine asked to upgrade the connection")
        except httptools.HttpParserError as e:
            self.error = EngineProtocolError(f"the engine sent malformed HTTP ({type(e).__name__})")
        if self.error is not None and self.transport is not None:
            self.transport.close()
        elif self.buffered >= _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def pause_writing(self) -> None:
        self.writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self.writable is not None:
            self.writable.set()
            self.writable = None

    async def drain(self) -> None:
        w = self.writable
        if w is not None and not self.closed:
            await w.wait()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if not self.complete and self.error is None:
            # Engines frame every body (length or chunked): a close before its end is a failure.
            self.error = EngineProtocolError(
                "the engine closed the connection before the response ended"
            )
        self._wake()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = bool(self.parser.should_keep_alive())  # only valid before the body
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- reader side ----------------------------------------------------------------------------

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until something new happened (bytes, end, error)."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            raise EngineTimeout(f"the engine sent nothing for {timeout:g} s") from None
        finally:
            self.waiter = None

    def take(self) -> bytes:
        pieces = self.pieces
        if not pieces:
            return b""
        self.pieces = []
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def reusable(self) -> bool:
        return self.complete and not self.closed and self.error is None and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class EngineResponse:
    """A response whose head has arrived; read its body whole or as it comes."""

    def __init__(self, pool: EngineHttp, conn: _Conn, read_timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = read_timeout
        self._released = False
        self.status = conn.status
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in conn.headers}

    async def iter_batches(self) -> AsyncIterator[bytes]:
        """Each item is every body byte that arrived since the previous one (never empty)."""
        conn = self._conn
        try:
            while True:
                data = conn.take()
                if data:
                    yield data
                    continue
                if conn.complete:
                    return
                if conn.error is not None:
                    raise conn.error
                await conn.wait(self._timeout)
        finally:
            self.close()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_batches()])

    def close(self) -> None:
        """Give the connection back (a finished response) or drop it (anything else)."""
        if self._released:
            return
        self._released = True
        self._pool._release(self._conn)


class EngineHttp:
    """Keep-alive connections to one server at ``http://host:port`` (or ``https://``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: _ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        max_idle: int = 64,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[_Conn] = []
        self._host_header = f"{host}:{port}".encode("ascii")

    @classmethod
    def for_url(
        cls, base_url: str, *, connect_timeout: float = 5.0, read_timeout: float = 600.0
    ) -> EngineHttp:
        """``http://host[:port]`` or ``https://host[:port]``, without a path."""
        scheme, sep, rest = base_url.rstrip("/").partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"URL must be http(s)://host[:port], not {base_url!r}")
        host, port = rest, 443 if scheme == "https" else 80
        if rest.startswith("["):  # [v6]:port
            end = rest.find("]")
            host, tail = rest[1:end], rest[end + 1 :]
            if tail:
                if not tail.startswith(":") or not tail[1:].isdigit():
                    raise ValueError(f"URL must be http(s)://host[:port], not {base_url!r}")
                port = int(tail[1:])
        elif ":" in rest:
            host, _, p = rest.rpartition(":")
            if not p.isdigit():
                raise ValueError(f"URL must be http(s)://host[:port], not {base_url!r}")
            port = int(p)
        if not host:
            raise ValueError(f"URL must be http(s)://host[:port], not {base_url!r}")
        tls = _ssl.create_default_context() if scheme == "https" else None
        return cls(host, port, tls=tls, connect_timeout=connect_timeout, read_timeout=read_timeout)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, proto = await loop.create_connection(
                    _Conn, self.host, self.port, ssl=self._tls
                )
        except TimeoutError:
            raise EngineConnectError(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise EngineConnectError(
                f"{self.host}:{self.port} refused the connection ({why})"
            ) from None
        proto.transport = transport  # uvloop calls connection_made only after returning
        return proto

    def _release(self, conn: _Conn) -> None:
        if conn.reusable() and len(self._idle) < self._max_idle:
            conn._reset()
            self._idle.append(conn)
        else:
            conn.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
        timeout: float | None = None,
    ) -> EngineResponse:
        """Send a request and wait for the response head (within ``timeout``, default read's).

        ``headers`` replaces the default ``content-type: application/json``. A streamed body
        goes out chunked unless ``headers`` carries its ``content-length``; when it raises, the
        connection is dropped mid-body, so the server never sees a cut-off body as a whole one.
        """
        if headers is None:
            headers = ((b"content-type", b"application/json"),) if body is not None else ()
        head = [
            f"{method} {path} HTTP/1.1\r\n".encode("ascii"),
            b"host: " + self._host_header + b"\r\n",
        ]
        head += [k + b": " + v + b"\r\n" for k, v in headers]
        streamed = body is not None and not isinstance(body, bytes)
        chunked = streamed and not any(k.lower() == b"content-length" for k, _ in headers)
        if isinstance(body, bytes):
            head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        elif chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        wire = b"".join(head) + (body if isinstance(body, bytes) else b"")
        limit = self._read_timeout if timeout is None else timeout
        for attempt in (0, 1):
            while self._idle and self._idle[-1].closed:
                self._idle.pop()
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            assert conn.transport is not None
            try:
                conn.transport.write(wire)
                if streamed:
                    assert body is not None and not isinstance(body, bytes)
                    await _write_body(conn, body, chunked=chunked)
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(limit)
            except EngineHttpError:
                conn.close()
                # A kept-alive connection the server closed just as we reused it: once more,
                # on a fresh one, since the server saw nothing of this request.
                if reused and not conn.got_bytes and attempt == 0 and not streamed:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return EngineResponse(self, conn, self._read_timeout)
        raise EngineConnectError("the server closed every connection")  # pragma: no cover

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _write_body(conn: _Conn, body: AsyncIterator[bytes], *, chunked: bool) -> None:
    assert conn.transport is not None
    async for piece in body:
        if conn.closed:
            raise conn.error or EngineProtocolError("the server closed the connection")
        if not piece:
            continue
        if chunked:
            conn.transport.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        else:
            conn.transport.write(piece)
        await conn.drain()
    if chunked:
        conn.transport.write(b"0\r\n\r\n")
