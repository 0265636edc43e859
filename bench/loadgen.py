"""The load generator: one asyncio process, a closed loop of ``concurrency`` streams per cell.

Every configuration parses the same server-sent events with the client's own decoder, so the
client-side cost differs only by what the path itself adds (decryption and Binary HTTP framing
for the gateway and full paths).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import httpx
import psutil

from attest.errors import OpenPCCError
from bench.stack import Stack
from bench.workload import WorkItem
from client_cli.session import Session, SseDecoder, delta_text
from server.engine_http import EngineHttp, EngineHttpError

__all__ = [
    "CONFIGS",
    "CellResult",
    "Sample",
    "direct_streamer",
    "run_cell",
    "run_streamer_cell",
    "sealed_streamer",
]

Config = Literal["direct", "httpx", "proxy", "gateway", "full"]
CONFIGS: tuple[Config, ...] = ("direct", "httpx", "proxy", "gateway", "full")
CONFIG_LABELS: Mapping[str, str] = {
    "direct": "engine direct",
    "httpx": "engine direct (httpx)",
    "proxy": "engine via a null TCP proxy",
    "gateway": "client -> gateway",
    "full": "client -> relay -> gateway",
}
CHAT = "/v1/chat/completions"


@dataclass(slots=True)
class Sample:
    """One request. Times in seconds from the cell's start; ``ttft``/``e2e`` from the request's."""

    index: int
    prompt_tokens: int
    max_tokens: int
    start: float = 0.0
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.tokens - 1)


@dataclass(slots=True)
class CellResult:
    engine: str
    config: str
    concurrency: int
    round: int
    wall_s: float
    samples: list[Sample]
    cpu_s: dict[str, float] = field(default_factory=dict)
    loadavg_before: float = 0.0

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None and s.e2e is not None]

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "config": self.config,
            "concurrency": self.concurrency,
            "round": self.round,
            "wall_s": self.wall_s,
            "tokens_per_s": self.tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "errors": len(self.samples) - len(self.ok),
            "cpu_s": self.cpu_s,
            "loadavg_before": self.loadavg_before,
            "samples": [{**asdict(s), "tpot": s.tpot} for s in self.samples],
        }


Streamer = Callable[[WorkItem], AsyncIterator[bytes]]


def _direct(client: EngineHttp) -> Streamer:
    """The engine's own API, through the same HTTP/1.1 client the sealed path uses.

    The OpenPCC client sends its encrypted requests to a plain-HTTP node through
    ``server.engine_http``; the baseline uses it too, so a ratio measures the path's cost and
    not a difference between HTTP client libraries.
    """

    async def stream(item: WorkItem) -> AsyncIterator[bytes]:
        r = await client.request("POST", CHAT, json.dumps(item.payload()).encode())
        try:
            if r.status != 200:
                raise _Failed(f"HTTP {r.status}")
            async for piece in r.iter_batches():
                yield piece
        finally:
            r.close()

    return stream


def _direct_httpx(client: httpx.AsyncClient, url: str) -> Streamer:
    """The engine through httpx, the HTTP client under the OpenAI SDK: a second reference,
    what a user of a plain OpenAI-compatible endpoint pays today."""

    async def stream(item: WorkItem) -> AsyncIterator[bytes]:
        async with client.stream("POST", url + CHAT, json=item.payload()) as r:
            if r.status_code != 200:
                raise _Failed(f"HTTP {r.status_code}")
            async for piece in r.aiter_raw():
                yield piece

    return stream


def _sealed(session: Session) -> Streamer:
    async def stream(item: WorkItem) -> AsyncIterator[bytes]:
        async for ev in session.stream("POST", CHAT, item.payload()):
            if ev.kind == "head":
                if ev.head is None or ev.head.status != 200:
                    raise _Failed(f"inner HTTP {ev.head.status if ev.head else '?'}")
            else:
                yield ev.data

    return stream


class _Failed(Exception):
    pass


async def _one(stream: Streamer, item: WorkItem, sample: Sample, t_cell: float) -> None:
    t0 = time.perf_counter()
    sample.start = t0 - t_cell
    sse = SseDecoder()
    try:
        async for piece in stream(item):
            for event in sse.feed(piece):
                if "error" in event:
                    raise _Failed("engine error event")
                if delta_text(event):
                    if sample.ttft is None:
                        sample.ttft = time.perf_counter() - t0
                    sample.tokens += 1
        sample.e2e = time.perf_counter() - t0
    except (OpenPCCError, httpx.HTTPError, EngineHttpError, _Failed) as e:
        sample.error = f"{type(e).__name__}: {e}"[:200]


def _cpu_times(pids: Mapping[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[role] = t.user + t.system
    t = psutil.Process().cpu_times()
    out["client"] = t.user + t.system
    return out


async def _closed_loop(
    stream: Streamer, items: Sequence[WorkItem], concurrency: int
) -> tuple[float, list[Sample]]:
    samples = [Sample(it.index, it.prompt_tokens, it.output_tokens) for it in items]
    queue = list(zip(items, samples, strict=True))
    queue.reverse()
    t_cell = time.perf_counter()

    async def worker() -> None:
        while queue:
            item, sample = queue.pop()
            await _one(stream, item, sample, t_cell)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)))))
    return time.perf_counter() - t_cell, samples


class Clients:
    """The three configurations' clients, opened once (verification happens here, untimed)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = EngineHttp.for_url(stack.engine_url)
        # The engine-direct workload through a do-nothing forwarder (bench.nullproxy): the
        # floor for any extra process and hop, before a gateway does any work of its own.
        self.proxied = EngineHttp.for_url(stack.proxy_url) if stack.proxy_url else None
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        self.httpx = httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits)
        self.gateway = Session(stack.gateway_url, trust=stack.trust, policy=stack.policy)
        self.full = Session(stack.relay_url, trust=stack.trust, policy=stack.policy)

    async def open(self) -> None:
        await self.gateway.node()
        await self.full.node()

    async def aclose(self) -> None:
        self.http.close()
        if self.proxied is not None:
            self.proxied.close()
        await self.httpx.aclose()
        await self.gateway.aclose()
        await self.full.aclose()

    def streamer(self, config: str) -> Streamer:
        if config == "direct":
            return _direct(self.http)
        if config == "httpx":
            return _direct_httpx(self.httpx, self.stack.engine_url)
        if config == "proxy":
            if self.proxied is None:
                raise ValueError("this stack has no null proxy")
            return _direct(self.proxied)
        return _sealed(self.gateway if config == "gateway" else self.full)


async def run_cell(
    clients: Clients,
    engine: str,
    config: str,
    items: Sequence[WorkItem],
    concurrency: int,
    round_no: int,
) -> CellResult:
    return await run_streamer_cell(
        clients.streamer(config),
        clients.stack.pids(),
        engine,
        config,
        items,
        concurrency,
        round_no,
    )


# -- for configurations beyond one stack's four (bench.cvm: a second gateway elsewhere) --------


def direct_streamer(client: EngineHttp) -> Streamer:
    """The engine-direct streamer over ``client`` (see ``_direct``)."""
    return _direct(client)


def sealed_streamer(session: Session) -> Streamer:
    """Encrypted requests through ``session``'s verified node (see ``_sealed``)."""
    return _sealed(session)


async def run_streamer_cell(
    stream: Streamer,
    pids: Mapping[str, int],
    engine: str,
    config: str,
    items: Sequence[WorkItem],
    concurrency: int,
    round_no: int,
) -> CellResult:
    """``run_cell`` for any streamer, with CPU accounted to ``pids`` (and this client)."""
    load = os.getloadavg()[0]
    before = _cpu_times(pids)
    wall, samples = await _closed_loop(stream, items, concurrency)
    after = _cpu_times(pids)
    cpu = {k: round(after[k] - before[k], 4) for k in after if k in before}
    return CellResult(engine, config, concurrency, round_no, wall, samples, cpu, load)
