"""Run the engine as a child process: start it, health-check it, restart it, report its state.

State machine::

    stopped --start()--> starting --healthy--> ready
                            ^                    | process died / health failed N times
                            |                    v
                            +---- back-off -- restarting
    any --stop()--> stopped;   the executable cannot be spawned --> failed

The engine runs in its own process group so that ``stop()`` and every restart also reach the
processes it forked (vLLM's engine core and workers hold the GPU and the port). Its stdout and
stderr go to ``log_path`` or to /dev/null, never to our own output: the engine is configured not to
log requests, and this keeps anything it prints out of the gateway's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

import httpx

from attest.errors import TransportError
from server.engines.spec import EngineSpec, engine_command

__all__ = ["EngineState", "EngineSupervisor", "free_loopback_port"]

EngineState = Literal["stopped", "starting", "ready", "restarting", "failed"]

# Environment for every engine: vLLM otherwise reports usage statistics (and writes them under
# ~/.config); nothing about the host's workload should leave the CVM or land on disk.
_ENGINE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONNOUSERSITE": "1",  # nothing from a home directory's site-packages runs in the engine
}


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[[int, int], int] = libc.prctl
    return prctl


# Resolved once, before any fork: the child between fork and exec must not load libraries.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the engine child: get SIGKILL when the gateway dies, however it dies.

    The engine runs in its own process group (so a restart reaches its workers), which also
    puts it out of reach of a signal sent to the gateway's group; without this, a gateway that
    is SIGKILLed leaves an orphaned engine holding the GPU and the port.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the kernel's choice, so no scanning)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EngineSupervisor:
    """Keeps one engine process alive and tells the gateway whether it can take requests."""

    def __init__(
        self,
        spec: EngineSpec,
        *,
        health_interval: float = 1.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        startup_timeout: float = 600.0,
        log_path: Path | None = None,
        health_timeout: float = 5.0,
        health_failures: int = 3,
        stop_timeout: float = 10.0,
    ) -> None:
        self.spec = spec
        self.health_interval = health_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.health_timeout = health_timeout
        self.health_failures = health_failures
        self.stop_timeout = stop_timeout
        # Chosen once, so base_url is stable across restarts and known before the first start.
        self.port = spec.port or free_loopback_port(spec.host)
        self.base_url = f"http://{spec.host}:{self.port}"
        self.state: EngineState = "stopped"
        self.restarts = 0
        self.pid: int | None = None
        self.last_exit: int | None = None
        self.backoff = backoff_initial
        """The delay before the next restart; doubles per restart, reset after a stable run."""
        self.failure: str = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at: float | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._health_path: str | None = None

    # -- public API ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv this supervisor runs."""
        return engine_command(self.spec, self.port)

    async def start(self) -> None:
        """Spawn the engine and begin supervising it; returns without waiting for readiness."""
        if self._monitor is not None and not self._monitor.done():
            return
        self.failure = ""
        self._set_state("starting")
        self._monitor = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def wait_ready(self, timeout: float) -> None:
        """Return once the engine answers health checks; ``TransportError`` after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if self.state == "ready":
                        return
                    if self.state == "failed":
                        raise TransportError(
                            f"engine failed: {self.failure}", hint="see the engine log"
                        )
                    if self.state == "stopped":
                        raise TransportError("engine is not running", hint="start it first")
                    await changed.wait()
        except TimeoutError:
            raise TransportError(
                f"engine not ready after {timeout:g}s (state {self.state})",
                hint="see the engine log; a large model may need a longer startup timeout",
            ) from None

    async def stop(self) -> None:
        """Stop supervising, then SIGTERM the engine's process group and SIGKILL what is left."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        await self._terminate(graceful=True)
        self._set_state("stopped")

    def snapshot(self) -> dict[str, object]:
        """JSON-safe state for /healthz and /metrics."""
        uptime = None
        if self._started_at is not None and self.pid is not None:
            uptime = round(time.monotonic() - self._started_at, 3)
        return {
            "kind": self.spec.kind,
            "state": self.state,
            "restarts": self.restarts,
            "pid": self.pid,
            "uptime_s": uptime,
            "last_exit": self.last_exit,
            "backoff_s": self.backoff,
            "base_url": self.base_url,
        }

    # -- supervision loop ---------------------------------------------------------------------

    def _set_state(self, state: EngineState) -> None:
        self.state = state
        # Wake every waiter, then give later waiters a fresh event to sleep on.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _supervise(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.health_timeout, trust_env=False
        ) as client:
            while True:
                try:
                    await self._spawn()
                except OSError as exc:
                    # Not a crash that a restart can fix: the executable or the log is missing.
                    self.failure = f"cannot start engine: {exc.strerror or exc}"
                    self._set_state("failed")
                    return
                ran_ready_for = await self._run_once(client)
                await self._terminate(graceful=False)
                if ran_ready_for >= self.backoff_max:
                    self.backoff = self.backoff_initial
                self._set_state("restarting")
                await asyncio.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, self.backoff_max)
                self.restarts += 1
                self._set_state("starting")

    async def _spawn(self) -> None:
        argv = self.command()
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={**os.environ, **_ENGINE_ENV},
            )
        finally:
            if not isinstance(log, int):
                log.close()
        self.pid = self._proc.pid
        self._started_at = time.monotonic()

    async def _run_once(self, client: httpx.AsyncClient) -> float:
        """Watch one engine process until it dies or stops being healthy.

        Returns how long it was ready (0 if it never was).
        """
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        ready_since: float | None = None
        failures = 0
        interval = min(self.health_interval, 0.2)  # poll faster while starting
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=interval)
            if proc.returncode is not None:
                self.last_exit = proc.returncode
                break
            healthy = await self._healthy(client)
            now = time.monotonic()
            if ready_since is None:
                if healthy:
                    ready_since = now
                    interval = self.health_interval
                    self._set_state("ready")
                elif now >= deadline:
                    self.failure = f"not healthy within {self.startup_timeout:g}s"
                    break
                continue
            failures = 0 if healthy else failures + 1
            if failures >= self.health_failures:
                self.failure = f"{failures} failed health checks"
                break
        return 0.0 if ready_since is None else time.monotonic() - ready_since

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        paths = [self._health_path] if self._health_path else ["/health", "/v1/models"]
        for path in paths:
            try:
                resp = await client.get(path)
            except httpx.HTTPError:
                return False
            if resp.status_code == 404 and self._health_path is None:
                continue  # an engine without /health: fall back to listing models
            if resp.status_code == 200:
                self._health_path = path
                return True
            return False
        return False

    async def _terminate(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        self.pid = None
        self._started_at = None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the engine its group's leader
        if graceful and proc.returncode is None:
            _killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=self.stop_timeout)
        # Always: the leader may be gone while its children still hold the port or the GPU.
        _killpg(pgid, signal.SIGKILL)
        self.last_exit = await proc.wait()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
