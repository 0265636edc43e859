"""The client remembers the last log checkpoint it accepted; a rollback or fork is an attack.

All logs here are signed by the node's one pinned key: only the client's memory can tell that a
smaller tree, or a different tree of the same size, is not the log it saw before.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from attest import tlog
from attest.errors import TransportError, VerificationError

CHAT = {"messages": [{"role": "user", "content": "secret words"}], "stream": True}


def _send_one(session: Any) -> None:
    async def go() -> None:
        async with session:
            async for _ in session.stream("POST", "/v1/chat/completions", CHAT):
                pass

    asyncio.run(go())


@pytest.fixture(scope="module")
def logs(sim_node: Any) -> dict[str, Any]:
    """Logs that all hold the node's manifest at index 0, signed by the pinned key.

    The node's own log is ``[M, f1, f2]``.
    """
    m = sim_node.manifest_bytes
    f1, f2 = b"filler release 1", b"filler release 2"
    return {
        "rolled-back": sim_node.log_copy("rolled-back", [m, f1]),
        "forked": sim_node.log_copy("forked", [m, f1, b"another release 2"]),
        "grown": sim_node.log_copy("grown", [m, f1, f2, b"release 3"]),
        "forked-grown": sim_node.log_copy("forked-grown", [m, f1, b"another 2", b"release 3"]),
    }


@pytest.fixture
def store(sim_node: Any, tmp_path: Path) -> Any:
    """A checkpoint store that has already accepted the node's log at size 3."""
    store = sim_node.checkpoint_store(tmp_path / "checkpoints")
    transport = sim_node.transport()
    with pytest.raises(TransportError):  # verified, sent, and the fake node answers 503
        _send_one(sim_node.session(transport, checkpoints=store))
    assert len(transport.ohttp_posts) == 1
    seen = store.last(sim_node.log.name)
    assert seen is not None and seen.size == 3
    return store


def _stored(store: Any, origin: str) -> tlog.Checkpoint:
    cp = store.last(origin)
    assert cp is not None
    return cp  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("log", "says"),
    [
        ("rolled-back", "rolled back: size 2 < 3"),
        ("forked", "forked: a different root for size 3"),
    ],
)
def test_rollback_and_fork_are_refused_as_attacks(
    sim_node: Any, logs: dict[str, Any], store: Any, log: str, says: str
) -> None:
    before = _stored(store, sim_node.log.name)
    transport = sim_node.transport(log=logs[log])
    session = sim_node.session(transport, checkpoints=store)
    with pytest.raises(VerificationError) as info:
        _send_one(session)
    assert info.value.check == "transparency-log"
    assert says in str(info.value)
    assert "possible attack" in str(info.value)
    assert transport.ohttp_posts == []
    # The refused checkpoint replaced nothing.
    assert _stored(store, sim_node.log.name).note == before.note


def test_a_grown_log_with_a_valid_consistency_proof_is_accepted_and_stored(
    sim_node: Any, logs: dict[str, Any], store: Any
) -> None:
    transport = sim_node.transport(log=logs["grown"])
    session = sim_node.session(transport, checkpoints=store)
    with pytest.raises(TransportError):  # verified and sent; the fake node answers 503
        _send_one(session)
    assert session.last_run.ok
    [check] = [c for c in session.last_run.checks if c.name == "transparency-log"]
    assert "consistent with size 3" in check.detail
    asked = [r for r in transport.requests if r.url.path == "/v1/log/consistency"]
    assert [(r.url.params["from"], r.url.params["to"]) for r in asked] == [("3", "4")]
    assert len(transport.ohttp_posts) == 1
    assert _stored(store, sim_node.log.name).size == 4


def test_a_grown_fork_fails_its_consistency_proof(
    sim_node: Any, logs: dict[str, Any], store: Any
) -> None:
    transport = sim_node.transport(log=logs["forked-grown"])
    session = sim_node.session(transport, checkpoints=store)
    with pytest.raises(VerificationError) as info:
        _send_one(session)
    assert info.value.check == "transparency-log"
    assert transport.ohttp_posts == []
    assert _stored(store, sim_node.log.name).size == 3
