"""EngineSupervisor against the fake engine (kind="command"): start, health, restart, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from attest.errors import TransportError
from server.engines import EngineSpec, EngineSupervisor

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "health_interval": 0.1,
    "backoff_initial": 0.05,
    "backoff_max": 0.4,
    "stop_timeout": 3.0,
}


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.02)


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (nobody reaped it yet) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_start_ready_snapshot_stop(fake_spec: EngineSpec) -> None:
    sup = EngineSupervisor(fake_spec, **FAST)
    assert sup.state == "stopped"
    await sup.start()
    try:
        await sup.wait_ready(30)
        async with httpx.AsyncClient(base_url=sup.base_url, trust_env=False) as client:
            models = (await client.get("/v1/models")).json()
        assert models["data"][0]["owned_by"] == "FAKE ENGINE — for tests"
        snap = sup.snapshot()
        assert json.loads(json.dumps(snap)) == snap
        assert snap["state"] == "ready"
        assert snap["restarts"] == 0
        assert isinstance(snap["pid"], int)
        assert isinstance(snap["uptime_s"], float)
        pid = snap["pid"]
    finally:
        await sup.stop()
    assert sup.state == "stopped"
    assert sup.pid is None
    assert sup.snapshot()["uptime_s"] is None
    assert not alive(pid)


async def test_kill_9_restarts_with_back_off(fake_spec: EngineSpec) -> None:
    sup = EngineSupervisor(fake_spec, **FAST)
    await sup.start()
    try:
        await sup.wait_ready(30)
        first_pid = sup.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await eventually(lambda: sup.state in ("restarting", "starting"))
        await sup.wait_ready(30)
        assert sup.restarts == 1
        assert sup.last_exit == -signal.SIGKILL
        assert sup.pid not in (None, first_pid)
        assert not alive(first_pid)
    finally:
        await sup.stop()


async def test_back_off_doubles_up_to_the_cap() -> None:
    crashing = EngineSpec(kind="command", args=(sys.executable, "-c", "raise SystemExit(3)"))
    sup = EngineSupervisor(crashing, **FAST)
    seen: list[float] = []
    await sup.start()
    try:
        deadline = time.monotonic() + 20
        while sup.restarts < 5 and time.monotonic() < deadline:
            if not seen or seen[-1] != sup.backoff:
                seen.append(sup.backoff)
            await anyio.sleep(0.01)
        assert sup.restarts >= 5
        assert sup.last_exit == 3
        assert sup.state in ("starting", "restarting")
    finally:
        await sup.stop()
    assert seen[:4] == [0.05, 0.1, 0.2, 0.4]
    assert max(seen) == 0.4


async def test_failed_health_checks_restart(fake_spec: EngineSpec) -> None:
    sup = EngineSupervisor(fake_spec, health_failures=2, **FAST)
    await sup.start()
    try:
        await sup.wait_ready(30)
        first_pid = sup.pid
        async with httpx.AsyncClient(base_url=sup.base_url, trust_env=False) as client:
            await client.post("/_fake/health", json={"ok": False})
        await eventually(lambda: sup.restarts == 1)
        await sup.wait_ready(30)
        assert sup.pid != first_pid
        assert sup.last_exit == -signal.SIGKILL  # it was alive: the supervisor killed it
    finally:
        await sup.stop()


async def test_stop_kills_the_whole_process_group(tmp_path: Path, fake_engine_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The engine forks a long-lived helper (as vLLM forks its workers), then becomes the fake.
    code = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[1], 'w').write(str(p.pid))\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
    )
    argv = (sys.executable, "-c", code, str(pidfile), str(fake_engine_path))
    spec = EngineSpec(kind="command", args=(*argv, "--host", "{host}", "--port", "{port}"))
    sup = EngineSupervisor(spec, **FAST)
    await sup.start()
    try:
        await sup.wait_ready(30)
        grandchild = int(pidfile.read_text())
        assert alive(grandchild)
    finally:
        await sup.stop()
    await eventually(lambda: not alive(grandchild), timeout=5)


async def test_startup_timeout_raises_transport_error_and_restarts() -> None:
    silent = EngineSpec(kind="command", args=(sys.executable, "-c", "import time; time.sleep(600)"))
    sup = EngineSupervisor(silent, startup_timeout=0.5, **FAST)
    await sup.start()
    try:
        with pytest.raises(TransportError, match=r"not ready after 0.3s"):
            await sup.wait_ready(0.3)
        # The supervisor gives up on a process that never becomes healthy and starts another.
        await eventually(lambda: sup.restarts >= 1, timeout=10)
        assert sup.last_exit == -signal.SIGKILL
    finally:
        await sup.stop()


async def test_missing_executable_fails_without_retrying(tmp_path: Path) -> None:
    spec = EngineSpec(kind="command", args=(str(tmp_path / "no-such-engine"),))
    sup = EngineSupervisor(spec, **FAST)
    await sup.start()
    try:
        with pytest.raises(TransportError, match="engine failed: cannot start engine"):
            await sup.wait_ready(10)
        assert sup.state == "failed"
        assert sup.restarts == 0
    finally:
        await sup.stop()


async def test_wait_ready_before_start_raises(fake_spec: EngineSpec) -> None:
    sup = EngineSupervisor(fake_spec, **FAST)
    with pytest.raises(TransportError, match="not running"):
        await sup.wait_ready(1)


def test_port_zero_picks_a_free_loopback_port(
    make_fake_spec: Callable[..., EngineSpec],
) -> None:
    a = EngineSupervisor(make_fake_spec())
    b = EngineSupervisor(make_fake_spec())
    assert a.port > 0
    assert a.base_url == f"http://127.0.0.1:{a.port}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", a.port))  # free: nothing else holds it
    assert a.command()[-1] == str(a.port)
    assert b.port > 0
    fixed = EngineSupervisor(make_fake_spec(port=a.port))
    assert fixed.port == a.port


async def test_engine_output_goes_to_the_log_file_only(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "engine.log"
    code = "import sys; print('ENGINE-SAYS-HELLO'); sys.stdout.flush(); raise SystemExit(1)"
    spec = EngineSpec(kind="command", args=(sys.executable, "-c", code))
    sup = EngineSupervisor(spec, log_path=log, **FAST)
    await sup.start()
    try:
        await eventually(lambda: sup.restarts >= 1)
    finally:
        await sup.stop()
    assert "ENGINE-SAYS-HELLO" in log.read_text()
    out, err = capfd.readouterr()
    assert "ENGINE-SAYS-HELLO" not in out + err
