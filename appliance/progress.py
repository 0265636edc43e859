"""How the operator CLI shows long steps: bars on a terminal, one line per step otherwise.

The work itself reports through two plain callables (``cvm_boot.image.meter``): ``say`` for a
step and ``meter(label, done, total)`` for bytes. :class:`ProgressUI` renders them:

- ``rich``: rich.progress bars (bytes, speed, time left), step lines printed above them;
- ``plain`` (not a terminal): one line per step, one when a meter starts and one when it ends;
- ``json``: nothing at all, so that stdout carries only the command's JSON.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["Mode", "ProgressUI"]

Mode = Literal["rich", "plain", "json"]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class ProgressUI:
    """A context manager whose :meth:`say` and :meth:`meter` are the work's callbacks."""

    def __init__(self, console: Console, *, json_mode: bool = False) -> None:
        self.console = console
        self.mode: Mode = "json" if json_mode else "rich" if console.is_terminal else "plain"
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, float] = {}

    def __enter__(self) -> ProgressUI:
        if self.mode == "rich":
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bars.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def say(self, message: str) -> None:
        if self.mode == "json":
            return
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def meter(self, label: str, done: int, total: int | None) -> None:
        finished = total is not None and done >= total
        if self.mode == "json":
            return
        if self._bars is not None:
            task = self._tasks.get(label)
            if task is None:
                task = self._tasks[label] = self._bars.add_task(label, total=total)
            self._bars.update(task, completed=done, total=total)
            if finished:
                del self._tasks[label]  # a later meter with this label gets its own bar
            return
        if label not in self._started:
            self._started[label] = time.monotonic()
            size = f" ({_mib(total)})" if total is not None else ""
            self.say(f"{label}{size} …")
        if finished:
            seconds = time.monotonic() - self._started.pop(label)
            self.say(f"{label}: done, {_mib(done)} in {seconds:.1f}s")
