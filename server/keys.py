"""The gateway's OHTTP keys: generated in memory, rotated on a schedule, replays refused.

Replay window: an encapsulated key (``enc``) is remembered for as long as the key it was sealed
to is accepted (its own lifetime plus the overlap). Memory is bounded by ``replay_max_per_key``:
when the current key has seen that many requests it is rotated early, and a previous key whose
memory is full is retired at once. So a replay is refused for the whole life of its key, never
silently forgotten; a request whose key retired while its body was still arriving is refused too
(``admit`` says ``"retired"``), since its key's memory went with the key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from server.ohttp import KeyConfig, ServerKey

__all__ = ["Admission", "KeyRing"]

Admission = Literal["new", "replay", "retired"]


@dataclass(slots=True)
class _Slot:
    key: ServerKey
    created: float
    seen: set[bytes] = field(default_factory=set)
    retire_at: float | None = None


class KeyRing:
    def __init__(
        self,
        *,
        rotation_s: float = 3600.0,
        overlap_s: float = 300.0,
        replay_max_per_key: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rotation_s <= 0 or overlap_s < 0 or replay_max_per_key < 1:
            raise ValueError("rotation_s > 0, overlap_s >= 0 and replay_max_per_key >= 1 needed")
        self._rotation_s = rotation_s
        self._overlap_s = overlap_s
        self._max = replay_max_per_key
        self._clock = clock
        self._lock = threading.Lock()
        self._next_id = 0
        self._current = self._new_slot()
        self._previous: _Slot | None = None
        self.generation = 0
        self.replays_refused = 0
        self._listeners: list[Callable[[], None]] = []

    def _new_slot(self) -> _Slot:
        key_id = self._next_id
        self._next_id = (self._next_id + 1) % 256
        return _Slot(ServerKey.generate(key_id), self._clock())

    def on_rotate(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    @property
    def current_config(self) -> KeyConfig:
        self.tick()
        return self._current.key.config

    @property
    def current_age_s(self) -> float:
        return self._clock() - self._current.created

    def configs(self) -> list[KeyConfig]:
        """Accepted configurations, current first."""
        self.tick()
        out = [self._current.key.config]
        if self._previous is not None:
            out.append(self._previous.key.config)
        return out

    def accepted(self) -> Mapping[int, ServerKey]:
        self.tick()
        out = {self._current.key.config.key_id: self._current.key}
        if self._previous is not None:
            out[self._previous.key.config.key_id] = self._previous.key
        return out

    def tick(self) -> None:
        """Rotate when due and retire the previous key after its overlap."""
        now = self._clock()
        rotated = False
        with self._lock:
            if self._previous is not None and (
                self._previous.retire_at is not None and now >= self._previous.retire_at
            ):
                self._previous = None
            if now - self._current.created >= self._rotation_s:
                self._rotate_locked(now)
                rotated = True
        if rotated:
            self._notify()

    def rotate(self) -> None:
        with self._lock:
            self._rotate_locked(self._clock())
        self._notify()

    def _rotate_locked(self, now: float) -> None:
        self._current.retire_at = now + self._overlap_s
        self._previous = self._current if self._overlap_s > 0 else None
        self._current = self._new_slot()
        self.generation += 1

    def _notify(self) -> None:
        for cb in self._listeners:
            cb()

    def admit(self, key_id: int, enc: bytes) -> Admission:
        """Record ``enc`` under ``key_id``: ``"new"``, or ``"replay"`` when it was seen before,
        or ``"retired"`` when the key is no longer held (it retired while the request was being
        read): its replay memory is gone, so the request cannot be shown to be fresh and is
        refused like any request under an unknown key."""
        rotate = False
        with self._lock:
            slot = self._slot(key_id)
            if slot is None:
                return "retired"
            if enc in slot.seen:
                self.replays_refused += 1
                return "replay"
            slot.seen.add(enc)
            if len(slot.seen) >= self._max:
                if slot is self._current:
                    rotate = True
                else:
                    self._previous = None
            if rotate:
                self._rotate_locked(self._clock())
        if rotate:
            self._notify()
        return "new"

    def _slot(self, key_id: int) -> _Slot | None:
        if self._current.key.config.key_id == key_id:
            return self._current
        if self._previous is not None and self._previous.key.config.key_id == key_id:
            return self._previous
        return None
