"""Per-operation timings of the cryptographic and framing steps on the request path.

Each raw sample is the mean of a small batch of calls (so a sample lasts at least ~50 µs and the
timer's own cost is negligible). Cold numbers come from fresh interpreters (``bench.cold``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from attest.bundle import run_verification
from attest.sevsnp.abi import parse_report
from attest.sevsnp.verify import load_certificates, verify_report
from bench import stats
from server.bhttp_stream import StreamingResponseDecoder, encode_content_chunk, encode_response_head
from server.ohttp import (
    BhttpRequest,
    ChunkedRequestOpener,
    ChunkedRequestSealer,
    ServerKey,
    decapsulate_request,
    decode_request,
    encapsulate_request,
    encode_request,
)

__all__ = ["SNP_NOW", "bundle_op", "cold_runs", "crypto_ops", "snp_op", "time_op"]

SNP_NOW = datetime(2024, 6, 1, tzinfo=UTC)
"""Inside the real Milan VCEK's validity period."""

# One streamed token as vLLM and the synthetic engine send it (about 150 bytes of SSE).
TOKEN_EVENT = (
    b'data: {"id":"chatcmpl-fake00000001","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"openpcc-model","choices":[{"index":0,"logprobs":null,'
    b'"delta":{"content":" word"},"finish_reason":null}]}\n\n'
)


def time_op(
    fn: Callable[[], object], *, budget_s: float = 0.4, max_samples: int = 400
) -> list[float]:
    """Seconds per call, one value per batch."""
    t0 = time.perf_counter()
    fn()
    first = max(time.perf_counter() - t0, 1e-7)
    batch = max(1, int(50e-6 / first))
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_samples and (len(samples) < 5 or time.perf_counter() < deadline):
        t = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t) / batch)
    return samples


def crypto_ops(budget_s: float = 0.4) -> dict[str, list[float]]:
    """HPKE, chunked OHTTP and Binary HTTP operations, as the gateway and client run them."""
    key = ServerKey.generate(1)
    keys = {1: key}
    config = key.config
    chat = json.dumps(
        {
            "model": "openpcc-model",
            "messages": [{"role": "user", "content": "word " * 180}],
            "max_tokens": 200,
            "stream": True,
        }
    ).encode()
    req = BhttpRequest(
        "POST",
        "https",
        "openpcc.node",
        "/v1/chat/completions",
        (("content-type", "application/json"),),
        chat,
    )
    inner = encode_request(req)
    enc, _ = encapsulate_request(config, inner)

    def chunked_request() -> bytes:
        sealer = ChunkedRequestSealer(config)
        return sealer.header() + sealer.seal_chunk(inner, final=True)

    sealed_req = chunked_request()

    def open_chunked() -> None:
        opener = ChunkedRequestOpener(keys)
        opener.feed(sealed_req)
        opener.close()

    client = ChunkedRequestSealer(config)
    client_req = client.header() + client.seal_chunk(inner, final=True)
    server = ChunkedRequestOpener(keys)
    server.feed(client_req)
    server.close()
    res_sealer = server.response_sealer()
    framed = encode_content_chunk(TOKEN_EVENT)

    # Pre-sealed chunks for the client side, opened in order (the nonce counter must advance).
    opener = client.response_opener()
    opener.feed(res_sealer.header())
    sealed_chunks = [res_sealer.seal_chunk(framed) for _ in range(40_000)]
    it = iter(sealed_chunks)

    def open_chunk() -> None:
        opener.feed(next(it))

    decoder = StreamingResponseDecoder()
    decoder.feed(encode_response_head(200, (("content-type", "text/event-stream"),)))

    ops: dict[str, Callable[[], object]] = {
        "hpke_encapsulate (OHTTP request, 1 KiB)": lambda: encapsulate_request(config, inner),
        "hpke_decapsulate (OHTTP request, 1 KiB)": lambda: decapsulate_request(keys, enc),
        "chunked_request_seal (client, per request)": chunked_request,
        "chunked_request_open (gateway, per request)": open_chunked,
        "chunk_seal (gateway, per token)": lambda: res_sealer.seal_chunk(framed),
        "chunk_open (client, per token)": open_chunk,
        "bhttp_encode_request (1 KiB)": lambda: encode_request(req),
        "bhttp_decode_request (1 KiB)": lambda: decode_request(inner),
        "bhttp_frame_chunk (gateway, per token)": lambda: encode_content_chunk(TOKEN_EVENT),
        "bhttp_stream_decode (client, per token)": lambda: decoder.feed(framed),
    }
    out: dict[str, list[float]] = {}
    for name, fn in ops.items():
        limit = 400 if "chunk_open" not in name else 200
        out[name] = time_op(fn, budget_s=budget_s, max_samples=limit)
    return out


def snp_op(vectors: Path, budget_s: float = 0.4) -> list[float]:
    """Parse + verify the real Milan v2 report with its VCEK (chain to the pinned ARK)."""
    raw = (vectors / "snp" / "milan_v2_report.bin").read_bytes()
    certs = load_certificates((vectors / "snp" / "milan_v2_vcek.der").read_bytes())
    return time_op(
        lambda: verify_report(parse_report(raw), certs, now=SNP_NOW),
        budget_s=budget_s,
        max_samples=200,
    )


def bundle_op(
    bundle: Mapping[str, object], nonce: bytes, state: Path, budget_s: float = 0.4
) -> list[float]:
    """The client's whole ordered check list (section 4) on one simulated bundle."""
    from appliance.lifecycle import trust_anchors
    from appliance.state import StatePaths
    from attest.bundle import ClientPolicy
    from attest.sevsnp.validate import SnpPolicy

    trust = trust_anchors(StatePaths(state))
    policy = ClientPolicy(snp=SnpPolicy())

    def go() -> None:
        run = run_verification(bundle, trust=trust, policy=policy, nonce=nonce)
        if run.node is None:
            raise RuntimeError(f"bundle did not verify: {run.error}")

    return time_op(go, budget_s=budget_s, max_samples=200)


def cold_runs(kind: str, args: list[str], n: int) -> list[dict[str, float]]:
    """``n`` fresh interpreters, each timing its first (cold) and second verification."""
    out: list[dict[str, float]] = []
    for _ in range(n):
        r = subprocess.run(
            [sys.executable, "-m", "bench.cold", kind, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        out.append({k: float(v) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()})
    return out


def summarize(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: stats.summary(v) for k, v in samples.items()}
