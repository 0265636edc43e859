"""KeyRing: rotation with overlap, replay refusal, bounded memory."""

from __future__ import annotations

import pytest

from server.keys import KeyRing


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_rotation_keeps_previous_key_during_overlap_only() -> None:
    clock = Clock()
    ring = KeyRing(rotation_s=100, overlap_s=10, clock=clock)
    first = ring.current_config.key_id
    rotations: list[int] = []
    ring.on_rotate(lambda: rotations.append(ring.generation))
    clock.t += 100
    second = ring.current_config.key_id
    assert second != first
    assert rotations == [1]
    assert set(ring.accepted()) == {first, second}
    assert [c.key_id for c in ring.configs()] == [second, first]
    clock.t += 9.9
    assert first in ring.accepted()
    clock.t += 0.2
    assert set(ring.accepted()) == {second}


def test_replay_is_refused_under_the_same_key() -> None:
    ring = KeyRing()
    kid = ring.current_config.key_id
    assert ring.admit(kid, b"e" * 32) == "new"
    assert ring.admit(kid, b"e" * 32) == "replay"
    assert ring.admit(kid, b"f" * 32) == "new"
    assert ring.replays_refused == 1


def test_replay_refused_for_previous_key_during_overlap() -> None:
    clock = Clock()
    ring = KeyRing(rotation_s=100, overlap_s=10, clock=clock)
    old = ring.current_config.key_id
    assert ring.admit(old, b"x" * 32) == "new"
    ring.rotate()
    assert ring.admit(old, b"x" * 32) == "replay"


def test_full_replay_memory_rotates_instead_of_forgetting() -> None:
    clock = Clock()
    ring = KeyRing(rotation_s=1e9, overlap_s=10, replay_max_per_key=3, clock=clock)
    kid = ring.current_config.key_id
    for i in range(3):
        assert ring.admit(kid, bytes([i]) * 32) == "new"
    # The current key's memory is full: it was rotated, the old one is still remembered.
    assert ring.current_config.key_id != kid
    assert ring.admit(kid, bytes([0]) * 32) == "replay"
    # The previous key's memory is full too: the first new request under it retires it.
    assert ring.admit(kid, b"\x09" * 32) == "new"
    assert kid not in ring.accepted()


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rotation_s"):
        KeyRing(rotation_s=0)


def test_a_key_retired_while_a_request_was_read_refuses_it() -> None:
    """The request was opened under a key that retired before admission: no memory can show it
    is fresh, so it is refused (not waved through as "unknown")."""
    clock = Clock()
    ring = KeyRing(rotation_s=100, overlap_s=10, clock=clock)
    old = ring.current_config.key_id
    assert ring.admit(old, b"a" * 32) == "new"
    ring.rotate()
    clock.t += 11
    assert old not in ring.accepted()
    assert ring.admit(old, b"a" * 32) == "retired"
    assert ring.admit(old, b"b" * 32) == "retired"
