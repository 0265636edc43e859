"""The running gateway: outer statuses, limits, replay, rotation, engine failure, statelessness."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.ohttp import (
    BhttpRequest,
    BhttpResponse,
    decode_response,
    encapsulate_request,
    encode_request,
    parse_key_configs,
)

CANARY = "CANARY-7f3a9c-do-not-store"


def _keys(url: str):  # type: ignore[no-untyped-def]
    r = httpx.get(url + "/v1/ohttp-keys", timeout=5)
    assert r.headers["content-type"] == "application/ohttp-keys"
    return parse_key_configs(r.content)


def _inner(path: str, payload: dict[str, object] | None, method: str = "POST") -> bytes:
    body = json.dumps(payload).encode() if payload is not None else b""
    headers = (("content-type", "application/json"),) if payload is not None else ()
    return encode_request(BhttpRequest(method, "https", "node.example", path, headers, body))


def _post(url: str, enc: bytes, ctype: str = "message/ohttp-req") -> httpx.Response:
    return httpx.post(url + "/v1/ohttp", content=enc, headers={"content-type": ctype}, timeout=30)


def _ask(url: str, payload: dict[str, object], path: str = "/v1/chat/completions") -> BhttpResponse:
    config = _keys(url)[0]
    enc, opener = encapsulate_request(config, _inner(path, payload))
    r = _post(url, enc)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "message/ohttp-res"
    return decode_response(opener.open(r.content))


def _chat(prompt: str, **kw: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4, **kw}


def test_one_shot_request_is_answered(appliance) -> None:  # type: ignore[no-untyped-def]
    resp = _ask(appliance.url, _chat("alpha beta"))
    assert resp.status == 200
    body = json.loads(resp.body)
    assert body["choices"][0]["message"]["content"].startswith("echo: beta alpha")


def test_models_route_and_unknown_route(appliance) -> None:  # type: ignore[no-untyped-def]
    config = _keys(appliance.url)[0]
    enc, opener = encapsulate_request(config, _inner("/v1/models", None, "GET"))
    models = decode_response(opener.open(_post(appliance.url, enc).content))
    assert models.status == 200 and b"openpcc-model" in models.body
    enc, opener = encapsulate_request(config, _inner("/admin/shell", {"x": 1}))
    r = _post(appliance.url, enc)
    assert r.status_code == 200  # the outer status says nothing about the inner request
    resp = decode_response(opener.open(r.content))
    assert resp.status == 404
    assert json.loads(resp.body)["error"]["type"] == "not_found_error"


def test_gateway_sets_a_cache_salt_per_request(appliance) -> None:  # type: ignore[no-untyped-def]
    _ask(appliance.url, _chat("salted"))
    health = httpx.get(appliance.url + "/healthz", timeout=5).json()
    engine_url = health["engine"]["base_url"]
    stats = httpx.get(engine_url + "/_fake/stats", timeout=5).json()
    assert stats["last_cache_salt_present"] is True


@pytest.mark.parametrize(
    ("mutate", "status", "text"),
    [
        (lambda b: b[:10], 400, "could not decrypt"),  # truncated header
        (lambda b: b[:-1], 400, "could not decrypt"),  # truncated ciphertext
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], 400, "could not decrypt"),  # garbled
        (lambda b: b"", 400, ""),
    ],
    ids=["truncated-header", "truncated-ciphertext", "garbled", "empty"],
)
def test_broken_encapsulations_get_an_opaque_400(appliance, mutate, status, text) -> None:  # type: ignore[no-untyped-def]
    config = _keys(appliance.url)[0]
    enc, _ = encapsulate_request(config, _inner("/v1/chat/completions", _chat(CANARY)))
    r = _post(appliance.url, mutate(enc))
    assert r.status_code == status
    assert text in r.text
    assert CANARY not in r.text


def test_unknown_key_id_gets_the_ohttp_key_problem(appliance) -> None:  # type: ignore[no-untyped-def]
    config = _keys(appliance.url)[0]
    enc, _ = encapsulate_request(config, _inner("/v1/chat/completions", _chat("x")))
    r = _post(appliance.url, bytes([(enc[0] + 100) % 256]) + enc[1:])
    assert r.status_code == 400
    assert r.json()["type"].endswith("#ohttp-key")


def test_wrong_media_type_is_a_bad_request(appliance) -> None:  # type: ignore[no-untyped-def]
    r = _post(appliance.url, b"{}", ctype="application/json")
    assert r.status_code == 400
    assert r.text == "bad request: unsupported media type"


def test_replay_is_refused(appliance) -> None:  # type: ignore[no-untyped-def]
    config = _keys(appliance.url)[0]
    enc, _ = encapsulate_request(config, _inner("/v1/chat/completions", _chat("once")))
    before = appliance.metric("openpcc_replays_refused_total")
    assert _post(appliance.url, enc).status_code == 200
    again = _post(appliance.url, enc)
    assert again.status_code == 400
    assert again.text == "could not decrypt"
    assert appliance.metric("openpcc_replays_refused_total") == before + 1


def test_bad_nonce_is_refused(appliance) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(appliance.url + "/v1/attestation", params={"nonce": "zz" * 32}, timeout=5)
    assert r.status_code == 400
    r = httpx.get(appliance.url + "/v1/attestation", params={"nonce": "ab"}, timeout=5)
    assert r.status_code == 400


def test_metrics_are_aggregate_prometheus_text(appliance) -> None:  # type: ignore[no-untyped-def]
    text = httpx.get(appliance.url + "/metrics", timeout=5).text
    assert 'openpcc_requests_total{outcome="ok"}' in text
    assert "openpcc_time_to_first_token_seconds_bucket" in text
    assert "openpcc_key_age_seconds" in text
    for line in text.splitlines():
        if "{" in line:
            labels = line[line.index("{") + 1 : line.index("}")]
            assert all(k.split("=")[0] in ("outcome", "le", "tee") for k in labels.split(","))


# -- a private appliance with small limits and a slow engine ----------------------------------


@pytest.fixture(scope="module")
def slow(appliance_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    app = appliance_factory(
        fake_args=("--tokens-per-second", "40", "--tokens", "60"),
        gateway_extra="max_body_bytes = 4096\nmax_concurrent = 2\n"
        "key_rotation_s = 3\nkey_overlap_s = 2",
    )
    yield app


def test_oversized_body_is_413(slow) -> None:  # type: ignore[no-untyped-def]
    config = _keys(slow.url)[0]
    enc, _ = encapsulate_request(config, _inner("/v1/completions", {"prompt": "x" * 8000}))
    r = _post(slow.url, enc)
    assert r.status_code == 413
    assert r.text == "too large"


def test_rotation_overlap_then_refusal(slow) -> None:  # type: ignore[no-untyped-def]
    old = _keys(slow.url)[0]
    deadline = time.monotonic() + 10
    while _keys(slow.url)[0].key_id == old.key_id:
        assert time.monotonic() < deadline, "the key never rotated"
        time.sleep(0.2)
    # During the overlap both keys are published and the old one still works.
    ids = [c.key_id for c in _keys(slow.url)]
    assert old.key_id in ids
    enc, opener = encapsulate_request(old, _inner("/v1/chat/completions", _chat("overlap")))
    r = _post(slow.url, enc)
    assert r.status_code == 200
    assert decode_response(opener.open(r.content)).status == 200
    time.sleep(2.5)
    enc, _ = encapsulate_request(old, _inner("/v1/chat/completions", _chat("late")))
    r = _post(slow.url, enc)
    assert r.status_code == 400
    assert r.json()["type"].endswith("#ohttp-key")


def _stream(url: str, prompt: str, max_tokens: int) -> tuple[int, list[bytes]]:
    from client_cli.session import Session
    from client_cli.trust import TrustStore, load_policy

    async def go() -> tuple[int, list[bytes]]:
        store = TrustStore.default()
        async with Session(url, trust=store.anchors(), policy=load_policy(None)) as s:
            status, pieces = 0, []
            payload = _chat(prompt, max_tokens=max_tokens, stream=True)
            async for ev in s.stream("POST", "/v1/chat/completions", payload):
                if ev.head is not None:
                    status = ev.head.status
                else:
                    pieces.append(ev.data)
            return status, pieces

    return asyncio.run(go())


def test_busy_when_all_slots_are_taken(slow, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(slow.config))
    done: list[object] = []
    threads = [
        threading.Thread(target=lambda: done.append(_stream(slow.url, "hold", 30)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    time.sleep(0.6)
    config = _keys(slow.url)[0]
    enc, _ = encapsulate_request(config, _inner("/v1/chat/completions", _chat("third")))
    r = _post(slow.url, enc)
    for t in threads:
        t.join()
    assert r.status_code == 503
    assert r.text == "busy"
    assert len(done) == 2


def test_engine_killed_mid_stream(slow, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(slow.config))
    health = httpx.get(slow.url + "/healthz", timeout=5).json()
    pid = health["engine"]["pid"]
    restarts = health["engine"]["restarts"]
    timer = threading.Timer(0.5, lambda: os.kill(pid, signal.SIGKILL))
    timer.start()
    status, pieces = _stream(slow.url, f"kill me {CANARY}", 50)
    timer.join()
    text = b"".join(pieces)
    # The stream ended cleanly, sealed, with an error event instead of the rest of the answer.
    assert status == 200
    assert b"echo:" in text
    assert b'"type": "engine_error"' in text
    deadline = time.monotonic() + 30
    while True:
        h = httpx.get(slow.url + "/healthz", timeout=5)
        if h.status_code == 200 and h.json()["engine"]["restarts"] == restarts + 1:
            break
        assert time.monotonic() < deadline, f"engine not back: {h.json()}"
        time.sleep(0.2)
    status, pieces = _stream(slow.url, "after restart", 3)
    assert status == 200
    assert _text(pieces) == "echo: restart after"


def _text(pieces: list[bytes]) -> str:
    from client_cli.session import SseDecoder, delta_text

    sse = SseDecoder()
    return "".join(delta_text(e) for p in pieces for e in sse.feed(p)).strip()


def test_canary_is_nowhere_on_disk(slow, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(slow.config))
    # A good request, a streamed one, malformed inner JSON, a bad route, a garbled envelope.
    _ask(slow.url, _chat(CANARY))
    _stream(slow.url, CANARY, 3)
    config = _keys(slow.url)[0]
    enc, opener = encapsulate_request(
        config,
        encode_request(
            BhttpRequest("POST", "https", "n", "/v1/completions", (), f"{{{CANARY}".encode())
        ),
    )
    bad = decode_response(opener.open(_post(slow.url, enc).content))
    assert bad.status == 400 and CANARY.encode() not in bad.body
    enc, _ = encapsulate_request(config, _inner(f"/v1/{CANARY}", _chat(CANARY)))
    _post(slow.url, enc)
    _post(slow.url, enc[:-3] + b"xyz")
    assert CANARY not in httpx.get(slow.url + "/metrics", timeout=5).text
    hits = [p for p in _all_files(slow.state) if CANARY.encode() in p.read_bytes()]
    assert hits == []


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_streamed_usage_counts_prompt_tokens(appliance, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(appliance.config))
    from client_cli.session import Session
    from client_cli.trust import TrustStore, load_policy

    before = appliance.metric("openpcc_tokens_in_total")

    async def go() -> None:
        store = TrustStore.default()
        async with Session(appliance.url, trust=store.anchors(), policy=load_policy(None)) as s:
            payload = _chat("one two three", stream=True, stream_options={"include_usage": True})
            async for _ in s.stream("POST", "/v1/chat/completions", payload):
                pass

    asyncio.run(go())
    assert appliance.metric("openpcc_tokens_in_total") > before


def test_client_gone_mid_stream_stops_the_engine_and_frees_the_slot(slow, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A client that goes away mid-answer: the engine's stream is closed and the slot returns."""
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(slow.config))
    from client_cli.session import Session
    from client_cli.trust import TrustStore, load_policy

    engine_url = httpx.get(slow.url + "/healthz", timeout=5).json()["engine"]["base_url"]
    before = httpx.get(engine_url + "/_fake/stats", timeout=5).json()["streams_abandoned"]

    async def go() -> None:
        store = TrustStore.default()
        async with Session(slow.url, trust=store.anchors(), policy=load_policy(None)) as s:
            payload = _chat("leave early", max_tokens=50, stream=True)
            async for ev in s.stream("POST", "/v1/chat/completions", payload):
                if ev.kind == "data":
                    break  # closes the connection with most of the answer still to come

    asyncio.run(go())
    deadline = time.monotonic() + 10
    while httpx.get(engine_url + "/_fake/stats", timeout=5).json()["streams_abandoned"] == before:
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.1)
    # Both slots (max_concurrent = 2) are free again: two streams run side by side.
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(_stream(slow.url, "again", 3)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200, 200]  # type: ignore[index]


def test_a_session_whose_key_expired_reverifies_and_is_answered(slow, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Over real HTTP (the client's own HTTP/1.1 path): the refused key's 400 is read, bounded,
    recognised, and the request goes again to the freshly verified key."""
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(slow.config))
    from client_cli.session import Session
    from client_cli.trust import TrustStore, load_policy

    async def go() -> tuple[int, int, int]:
        store = TrustStore.default()
        async with Session(slow.url, trust=store.anchors(), policy=load_policy(None)) as s:
            assert s._fast is not None  # the plain-HTTP fast path is what this test covers
            first = (await s.node()).key_config.key_id
            deadline = time.monotonic() + 10
            while _keys(slow.url)[0].key_id == first:  # the ring rotates when asked
                assert time.monotonic() < deadline, "the key never rotated"
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.5)  # past the 2 s overlap: the old key is refused
            status = 0
            payload = _chat("late", max_tokens=2, stream=True)
            async for ev in s.stream("POST", "/v1/chat/completions", payload):
                if ev.head is not None:
                    status = ev.head.status
            return first, (await s.node()).key_config.key_id, status

    first, second, status = asyncio.run(go())
    assert status == 200
    assert second != first


def _http_chunks(sock_file: object) -> Iterator[bytes]:
    """The HTTP/1.1 chunks of a chunked response body, read from a socket file as they come."""
    f = sock_file
    while True:
        size = int(f.readline().strip(), 16)  # type: ignore[attr-defined]
        if size == 0:
            return
        data = f.read(size)  # type: ignore[attr-defined]
        assert f.read(2) == b"\r\n"  # type: ignore[attr-defined]
        yield data


def test_streamed_answer_starts_with_head_and_first_token_in_one_write(appliance) -> None:  # type: ignore[no-untyped-def]
    """uvicorn frames each ASGI body message as one HTTP chunk, so the first HTTP chunk is the
    gateway's first write: it must hold the OHTTP header and a sealed chunk with the inner
    head *and* the first token (one wake-up of the client for its first token)."""
    import socket
    from urllib.parse import urlsplit

    from server.bhttp_stream import StreamingResponseDecoder
    from server.ohttp import ChunkedRequestSealer

    sealer = ChunkedRequestSealer(_keys(appliance.url)[0])
    inner = _inner("/v1/chat/completions", _chat("alpha beta gamma", max_tokens=6, stream=True))
    enc = sealer.header() + sealer.seal_chunk(inner, final=True)
    opener = sealer.response_opener()
    u = urlsplit(appliance.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/ohttp HTTP/1.1\r\nhost: x\r\ncontent-type: message/ohttp-chunked-req\r\n"
            + f"content-length: {len(enc)}\r\nconnection: close\r\n\r\n".encode()
            + enc
        )
        f = s.makefile("rb")
        status_line = f.readline()
        assert b" 200 " in status_line
        while f.readline() not in (b"\r\n", b""):
            pass
        chunks = list(_http_chunks(f))
    decoder = StreamingResponseDecoder()
    head, first = decoder.feed(b"".join(opener.feed(chunks[0])))
    assert head is not None and head.status == 200
    assert b"data: " in b"".join(first)
    for c in chunks[1:]:
        for plain in opener.feed(c):
            decoder.feed(plain)
    for plain in opener.close():  # the sealed final chunk arrived: not a truncation
        decoder.feed(plain)
