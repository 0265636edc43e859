"""The verified, encrypted channel to one node.

Nothing leaves this module toward ``/v1/ohttp`` unless :func:`attest.bundle.run_verification`
produced a :class:`VerifiedNode` in this process: :func:`seal_request` demands one. Verification is
cached per node and key id, and redone on key rotation, on any decryption failure and on a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import urllib.request
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import httpx

from attest.bundle import (
    ClientPolicy,
    TrustAnchors,
    VerificationRun,
    VerifiedNode,
    run_verification,
)
from attest.errors import DecryptError, OpenPCCError, ParseError, TransportError
from client_cli.trust import FileCheckpointStore
from server.bhttp_stream import ResponseHead, StreamingResponseDecoder
from server.engine_http import EngineHttp, EngineHttpError, EngineResponse
from server.ohttp import (
    BhttpRequest,
    ChunkedRequestSealer,
    ChunkedResponseOpener,
    KeyConfig,
    encode_request,
)

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_BUNDLE_BYTES",
    "MAX_PROOF_BYTES",
    "MAX_SSE_LINE",
    "Session",
    "SpareSealers",
    "SseDecoder",
    "StreamEvent",
    "delta_text",
    "event_error",
    "get_bounded",
    "inner_error",
    "seal_request",
]

MAX_BUNDLE_BYTES = 2 * 1024 * 1024
BUSY_RETRY_S = 1.0
"""How long to wait before asking a busy node (503 from /v1/attestation) once more: the
gateway's ``retry-after``."""
MAX_SSE_LINE = 1024 * 1024
# A consistency proof is at most about 2 * log2(tree size) hashes: a few KiB for any real log.
MAX_PROOF_BYTES = 64 * 1024
# A whole (non-streamed) inner answer, as request_json and the proxy buffer it.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
REVERIFY_AFTER_S = 600.0
CHUNKED_REQ = "message/ohttp-chunked-req"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: Literal["head", "data"]
    head: ResponseHead | None = None
    data: bytes = b""


def seal_request(
    node: VerifiedNode,
    method: str,
    path: str,
    body: bytes | None,
    *,
    sealer: ChunkedRequestSealer | None = None,
) -> tuple[bytes, ChunkedResponseOpener]:
    """Encrypt one inner request to a verified node (and only to one).

    ``sealer``: an unused one made for ``node.key_config`` ahead of time (see
    :class:`SpareSealers`); by default a fresh one.
    """
    if not isinstance(node, VerifiedNode) or not node.genuine:
        raise TypeError("seal_request needs a VerifiedNode from attest.bundle")
    headers: tuple[tuple[str, str], ...] = ()
    if body is not None:
        headers = (("content-type", "application/json"),)
    inner = encode_request(
        BhttpRequest(method, "https", "openpcc.node", path, headers, body or b"")
    )
    if sealer is None:
        sealer = ChunkedRequestSealer(node.key_config)
    return sealer.header() + sealer.seal_chunk(inner, final=True), sealer.response_opener()


class SpareSealers:
    """HPKE sender contexts made ahead of time for one verified key, each handed out once.

    Setting up a sender context (an ephemeral X25519 key pair, one DH, the key schedule) is
    about 100 µs, most of the client's own share of the time to first token. A request takes a
    spare one made while an earlier request waited for its answer and asks for a replacement,
    made once the request is on the wire. A spare is bound to the key configuration it was made
    for: one for any other configuration (the node rotated its key, or was verified again) is
    never used. At most ``limit`` are kept; each holds an ephemeral private key in memory only.
    """

    def __init__(self, limit: int = 8) -> None:
        self._limit = limit
        self._config: KeyConfig | None = None
        self._spare: list[ChunkedRequestSealer] = []
        self._refill_pending = 0

    def take(self, config: KeyConfig) -> ChunkedRequestSealer:
        """An unused sealer for ``config``: a spare one when there is one, else a fresh one."""
        if self._config is config and self._spare:
            return self._spare.pop()
        return ChunkedRequestSealer(config)

    def refill_soon(self, config: KeyConfig) -> None:
        """Make one spare for ``config`` at the event loop's next turn (when the caller waits)."""
        if self._config is not config:
            self._config = config
            self._spare.clear()
        if len(self._spare) + self._refill_pending >= self._limit:
            return
        self._refill_pending += 1
        asyncio.get_running_loop().call_soon(self._refill, config)

    def _refill(self, config: KeyConfig) -> None:
        self._refill_pending -= 1
        if self._config is config and len(self._spare) < self._limit:
            self._spare.append(ChunkedRequestSealer(config))

    def __len__(self) -> int:
        return len(self._spare)


class SseDecoder:
    """Server-sent events to JSON payloads; one line is bounded by ``MAX_SSE_LINE``."""

    def __init__(self) -> None:
        self._buf = b""
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, object]]:
        self._buf += data
        out: list[dict[str, object]] = []
        if b"\n" not in data:  # no line ended: nothing to split (a long line costs no copies)
            lines: list[bytes] = []
        else:  # one split per piece, however many events it holds
            *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if len(line) > MAX_SSE_LINE:
                raise ParseError("a server-sent event line exceeds 1 MiB")
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(payload)
            except (ValueError, RecursionError) as e:  # malformed, not UTF-8, or hostile
                raise ParseError("the node sent a malformed server-sent event") from e
            if isinstance(event, dict):
                out.append(event)
        if len(self._buf) > MAX_SSE_LINE:
            raise ParseError("a server-sent event line exceeds 1 MiB")
        return out


class Session:
    """One node: verify, then send encrypted requests; re-verify when the node's key changes."""

    def __init__(
        self,
        url: str,
        *,
        trust: TrustAnchors,
        policy: ClientPolicy,
        checkpoints: FileCheckpointStore | None = None,
        nonce_mode: Literal["auto", "none"] = "auto",
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
        now: datetime | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.trust = trust
        self.policy = policy
        self.checkpoints = checkpoints
        self.nonce_mode = nonce_mode
        self.now = now
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,
        )
        # Encrypted requests to a plain-HTTP node (the local appliance, a relay on loopback) go
        # through the same small HTTP/1.1 client the gateway uses for its engine: one write per
        # request and one read per burst of answer. TLS, proxies and test transports stay httpx.
        self._fast, self._prefix = (
            (None, "") if transport is not None else _fast_path(self.url, timeout)
        )
        self.last_run: VerificationRun | None = None
        self.verify_seconds = 0.0
        self._node: VerifiedNode | None = None
        self._verified_mono = 0.0
        # Concurrent requests (the proxy) wait for one verification instead of each running one.
        self._verify_lock = asyncio.Lock()
        self._spares = SpareSealers()

    async def aclose(self) -> None:
        if self._fast is not None:
            self._fast.close()
        await self._http.aclose()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- verification ---------------------------------------------------------------------------

    async def fetch_bundle(self, nonce: bytes | None) -> Mapping[str, object]:
        """The node's bundle for ``nonce``. A node busy producing evidence (503, its line of
        waiting requests full) is asked once more after :data:`BUSY_RETRY_S`, with the same
        nonce; a second 503 is a :class:`TransportError`."""
        params = {"nonce": nonce.hex()} if nonce is not None else None
        url = self.url + "/v1/attestation"
        try:
            status, raw = await get_bounded(
                self._http, url, MAX_BUNDLE_BYTES, params=params, statuses=(200, 503)
            )
            if status == 503:
                await asyncio.sleep(BUSY_RETRY_S)
                status, raw = await get_bounded(
                    self._http, url, MAX_BUNDLE_BYTES, params=params, statuses=(200, 503)
                )
        except httpx.HTTPError as e:
            raise TransportError(
                f"cannot reach {self.url}: {type(e).__name__}",
                hint="is the appliance up? `openpcc-appliance status`",
            ) from e
        if status == 503:
            raise TransportError(
                "GET /v1/attestation: HTTP 503 (the node is busy or cannot produce evidence)",
                hint="try again shortly; `openpcc-appliance status` on the node tells which",
            )
        try:
            bundle = json.loads(raw)
        except (ValueError, RecursionError) as e:  # JSON, UTF-8, huge numbers, nesting
            raise ParseError("the attestation bundle is not JSON") from e
        if not isinstance(bundle, dict):
            raise ParseError("the attestation bundle is not a JSON object")
        return bundle

    async def _get_bounded(self, path: str, params: Mapping[str, str] | None, limit: int) -> bytes:
        try:
            return (await get_bounded(self._http, self.url + path, limit, params=params))[1]
        except httpx.HTTPError as e:
            raise TransportError(
                f"cannot reach {self.url}: {type(e).__name__}",
                hint="is the appliance up? `openpcc-appliance status`",
            ) from e

    async def _consistency_proof(self, old: int, new: int) -> list[bytes]:
        raw = await self._get_bounded(
            "/v1/log/consistency", {"from": str(old), "to": str(new)}, MAX_PROOF_BYTES
        )
        try:
            proof = json.loads(raw)["proof"]
            return [bytes.fromhex(p) for p in proof]
        except (KeyError, TypeError, ValueError, RecursionError) as e:
            raise ParseError("malformed consistency proof") from e

    async def verify(self) -> VerificationRun:
        """Fetch a fresh bundle and run every check; never raises for a failed check."""
        t0 = time.perf_counter()
        nonce = secrets.token_bytes(32) if self.nonce_mode == "auto" else None
        self._node = None
        bundle = await self.fetch_bundle(nonce)
        proofs: dict[tuple[int, int], list[bytes]] = {}
        tl = bundle.get("tlog")
        if self.checkpoints is not None and isinstance(tl, dict):
            await self._prefetch_consistency(tl, proofs)
        run = run_verification(
            bundle,
            trust=self.trust,
            policy=self.policy,
            nonce=nonce,
            now=self.now,
            checkpoints=self.checkpoints,
            consistency=lambda a, b: proofs.get((a, b), []),
        )
        self.verify_seconds = time.perf_counter() - t0
        self.last_run = run
        if run.node is not None:
            self._node = run.node
            self._verified_mono = time.monotonic()
        return run

    async def _prefetch_consistency(
        self, tl: Mapping[str, object], proofs: dict[tuple[int, int], list[bytes]]
    ) -> None:
        # The verifier is synchronous; fetch the one proof it may need up front. The checkpoint
        # it will check is re-verified there, so a lie here only makes verification fail.
        assert self.checkpoints is not None
        note = tl.get("checkpoint")
        if not isinstance(note, str):
            return
        try:
            from attest import tlog

            cp = tlog.open_checkpoint(note, list(self.trust.log_keys))
            last = self.checkpoints.last(cp.origin)
        except OpenPCCError:
            return
        if last is not None and cp.size > last.size:
            proofs[(last.size, cp.size)] = await self._consistency_proof(last.size, cp.size)

    async def node(self) -> VerifiedNode:
        """The verified node, verifying first when needed; raises the failing check's error."""
        async with self._verify_lock:
            fresh = time.monotonic() - self._verified_mono < REVERIFY_AFTER_S
            if self._node is not None and fresh:
                return self._node
            run = await self.verify()
            if run.node is None:
                assert run.error is not None
                raise run.error
            return run.node

    # -- requests -------------------------------------------------------------------------------

    async def stream(
        self, method: str, path: str, payload: Mapping[str, object] | None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Send one encrypted request; yield the inner response's head, then its body pieces.

        On a decryption failure or a key the node no longer accepts, the node is verified again
        and the request sent once more, to the freshly verified key.
        """
        body = json.dumps(payload).encode() if payload is not None else None
        for attempt in (0, 1):
            node = await self.node()
            sealer = self._spares.take(node.key_config)
            enc, opener = seal_request(node, method, path, body, sealer=sealer)
            # Made while this request waits for its answer, ready for the next one.
            self._spares.refill_soon(node.key_config)
            try:
                async for ev in self._exchange(enc, opener):
                    yield ev
                return
            except DecryptError:
                # Whatever answered cannot be the node verified: verify again before the next
                # request. Not resent here, since part of an answer may already have been shown.
                self._node = None
                raise
            except _StaleKeyError:
                self._node = None
                if attempt == 1:
                    raise DecryptError(
                        "the node refused the request twice after re-verification"
                    ) from None

    @contextlib.asynccontextmanager
    async def _post_ohttp(
        self, enc: bytes
    ) -> AsyncIterator[tuple[int, AsyncIterator[bytes], Callable[[], Awaitable[bytes]]]]:
        """POST the encapsulated request; yields the outer status, the body as it arrives, and
        a way to read the (short) body of a refusal whole."""
        if self._fast is not None:
            resp = await self._fast.request(
                "POST", self._prefix + "/v1/ohttp", enc, headers=_OHTTP_HEADERS
            )
            try:
                # A refusal's body is read only as far as needed: a node cannot make the
                # client buffer an endless one.
                yield resp.status, resp.iter_batches(), lambda: _read_at_most(resp, 512)
            finally:
                resp.close()
            return
        async with self._http.stream(
            "POST",
            self.url + "/v1/ohttp",
            content=enc,
            headers={"content-type": CHUNKED_REQ, "accept": "message/ohttp-chunked-res"},
        ) as r:
            yield r.status_code, r.aiter_raw(), lambda: _refusal_text(r)

    async def _exchange(
        self, enc: bytes, opener: ChunkedResponseOpener
    ) -> AsyncGenerator[StreamEvent, None]:
        decoder = StreamingResponseDecoder()
        started = False
        try:
            async with self._post_ohttp(enc) as (status, body, read):
                if status == 400:
                    text = (await read())[:512]
                    if b"ohttp-key" in text or b"could not decrypt" in text:
                        raise _StaleKeyError
                    raise TransportError("the node refused the request: bad request")
                if status == 413:
                    raise TransportError("the request is too large for the node")
                if status != 200:
                    raise TransportError(
                        f"the node answered HTTP {status} (busy or unavailable)",
                        hint="try again shortly",
                    )
                async for piece in body:
                    for plain in opener.feed(piece):
                        head, pieces = decoder.feed(plain)
                        if head is not None:
                            started = True
                            yield StreamEvent("head", head=head)
                        for p in pieces:
                            yield StreamEvent("data", data=p)
        except (httpx.HTTPError, EngineHttpError) as e:
            raise TransportError(
                f"connection to {self.url} failed mid-answer: {type(e).__name__}"
            ) from e
        # A stream without its sealed final chunk is truncation, never an answer.
        for plain in opener.close():
            head, pieces = decoder.feed(plain)
            if head is not None:
                started = True
                yield StreamEvent("head", head=head)
            for p in pieces:
                yield StreamEvent("data", data=p)
        head, pieces = decoder.finish()
        if head is not None and not started:
            yield StreamEvent("head", head=head)
        for p in pieces:
            yield StreamEvent("data", data=p)

    async def stream_text(self, path: str, payload: Mapping[str, object]) -> AsyncIterator[str]:
        """Stream an OpenAI completion's text as it arrives; the node's errors are raised."""
        sse = SseDecoder()
        status = 0
        refused = bytearray()
        async for ev in self.stream("POST", path, payload):
            if ev.kind == "head" and ev.head is not None:
                status = ev.head.status
                continue
            if status != 200:
                refused += ev.data[: MAX_SSE_LINE - len(refused)]
                continue
            for event in sse.feed(ev.data):
                problem = event_error(event)
                if problem is not None:
                    raise problem
                yield delta_text(event)
        if status != 200:
            raise inner_error(status, bytes(refused))

    async def request_json(
        self, method: str, path: str, payload: Mapping[str, object] | None
    ) -> tuple[int, dict[str, object]]:
        status = 0
        body = bytearray()
        async for ev in self.stream(method, path, payload):
            if ev.kind == "head" and ev.head is not None:
                status = ev.head.status
            else:
                body += ev.data
                if len(body) > MAX_ANSWER_BYTES:
                    raise TransportError("the answer exceeds 16 MiB")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:  # JSON, UTF-8, huge numbers, nesting
            raise ParseError("the node's answer is not JSON") from e
        if not isinstance(data, dict):
            raise ParseError("the node's answer is not a JSON object")
        return status, data


async def get_bounded(
    http: httpx.AsyncClient,
    url: str,
    limit: int,
    *,
    params: Mapping[str, str] | None = None,
    statuses: Collection[int] = (200,),
) -> tuple[int, bytes]:
    """GET ``url``: its status and body, the body refused once it exceeds ``limit`` bytes.

    A status not in ``statuses`` is a :class:`TransportError` and its body is not read. No
    content coding is asked for, and one sent anyway is refused: the limit then counts the bytes
    actually buffered, where a compressed body could grow a thousandfold within one network read.
    ``httpx.HTTPError`` (cannot connect, timed out) is left to the caller.
    """
    async with http.stream("GET", url, params=params, headers={"accept-encoding": "identity"}) as r:
        path = r.request.url.path
        if r.status_code not in statuses:
            raise TransportError(f"GET {path}: HTTP {r.status_code}")
        coding = r.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise TransportError(f"GET {path}: unrequested content-encoding {coding!r}")
        buf = bytearray()
        # With no content coding, these pieces are the bytes as they came off the wire.
        async for piece in r.aiter_bytes():
            buf += piece
            if len(buf) > limit:
                raise TransportError(f"GET {path}: response exceeds {limit} bytes")
        return r.status_code, bytes(buf)


_OHTTP_HEADERS = (
    (b"content-type", CHUNKED_REQ.encode()),
    (b"accept", b"message/ohttp-chunked-res"),
)


async def _read_at_most(resp: EngineResponse, limit: int) -> bytes:
    return await _take_at_most(resp.iter_batches(), limit)


async def _refusal_text(r: httpx.Response) -> bytes:
    """The first 512 bytes of a refusal's body, read no further (raw: never decompressed)."""
    try:
        return await _take_at_most(r.aiter_raw(), 512)
    except httpx.StreamConsumed:  # a transport that handed over the body already read
        return (await r.aread())[:512]


async def _take_at_most(pieces: AsyncIterator[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes of a body: reading stops there, whatever the sender has left."""
    buf = b""
    async for piece in pieces:
        buf += piece
        if len(buf) >= limit:
            break
    return buf[:limit]


def _fast_path(url: str, timeout: float) -> tuple[EngineHttp | None, str]:
    """The small client for ``http://host[:port][/prefix]`` with no proxy in the way, else None."""
    scheme, _, rest = url.partition("://")
    origin, slash, tail = rest.partition("/")
    if scheme != "http" or not origin:
        return None, ""
    host = origin.rsplit(":", 1)[0].strip("[]") if not origin.endswith("]") else origin[1:-1]
    if urllib.request.getproxies().get("http") and not urllib.request.proxy_bypass(host):
        return None, ""
    try:
        fast = EngineHttp.for_url(f"http://{origin}", connect_timeout=10.0, read_timeout=timeout)
        return fast, slash + tail
    except ValueError:
        return None, ""


class _StaleKeyError(Exception):
    pass


def _error_message(obj: object) -> str:
    """The ``message`` of an OpenAI-shaped ``{"error": {...}}`` object, or ``""``."""
    if isinstance(obj, Mapping):
        inner = obj.get("error")
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return ""


def inner_error(status: int, body: bytes) -> OpenPCCError:
    """The model server's refusal of one request (not a trust failure), as one line and a hint."""
    try:
        message = _error_message(json.loads(body))
    except (ValueError, RecursionError):  # JSON, UTF-8, huge numbers, nesting
        message = ""
    if not message:
        message = " ".join(body[:300].decode(errors="replace").split()) or "(no details)"
    if status in (429, 502, 503, 504):
        hint = "the model server is busy or starting; try again shortly"
    elif 400 <= status < 500:
        hint = "check the model name and the request's parameters"
    else:
        hint = "the node's logs may say more: `openpcc-appliance logs`"
    return OpenPCCError(f"the model server answered HTTP {status}: {message}", hint=hint)


def event_error(event: Mapping[str, object]) -> OpenPCCError | None:
    """An error the model server reported in the middle of a stream, if ``event`` is one."""
    if "error" not in event:
        return None
    message = _error_message(event) or "an error event without details"
    return OpenPCCError(f"the model server reported an error mid-answer: {message}")


def delta_text(event: Mapping[str, object]) -> str:
    """The text an OpenAI streaming chunk adds (chat ``delta.content`` or completion ``text``)."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    c = choices[0]
    delta = c.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return str(delta["content"])
    text = c.get("text")
    return text if isinstance(text, str) else ""
