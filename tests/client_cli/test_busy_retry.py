"""A node busy producing evidence (503 from /v1/attestation) is asked once more, not more."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from attest.errors import TransportError


def _busy_then(node: Any, busy: int) -> tuple[httpx.MockTransport, list[str]]:
    inner = node.transport()
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/attestation":
            seen.append(request.url.params.get("nonce", ""))
            if len(seen) <= busy:
                return httpx.Response(503, text="busy", headers={"retry-after": "1"})
        response: httpx.Response = inner.handle_request(request)
        return response

    return httpx.MockTransport(handle), seen


def _verify(node: Any, transport: httpx.MockTransport) -> Any:
    session = node.session(transport)

    async def go() -> Any:
        try:
            return await session.verify()
        finally:
            await session.aclose()

    return asyncio.run(go())


def test_one_busy_answer_is_retried_with_the_same_nonce(
    sim_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("client_cli.session.BUSY_RETRY_S", 0.0)
    transport, seen = _busy_then(sim_node, 1)
    run = _verify(sim_node, transport)
    assert run.ok, run.to_dict()
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 64


def test_two_busy_answers_are_a_transport_error(
    sim_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("client_cli.session.BUSY_RETRY_S", 0.0)
    transport, seen = _busy_then(sim_node, 2)
    with pytest.raises(TransportError, match="HTTP 503") as err:
        _verify(sim_node, transport)
    assert len(seen) == 2 and "try again" in err.value.hint
