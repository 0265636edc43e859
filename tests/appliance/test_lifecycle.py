"""Provisioning is idempotent; status and down behave when nothing is running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import lifecycle
from appliance.main import app
from appliance.state import ApplianceRecord, StatePaths
from attest.errors import ParseError


def test_provision_twice_gives_the_same_release(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    args = ("python", "engine.py", "--port", "{port}")
    a = lifecycle.provision_simulated(paths, port=18999, engine="command", engine_args=args)
    b = lifecycle.provision_simulated(paths, port=18999, engine="command", engine_args=args)
    assert a.measurement == b.measurement and len(a.measurement) == 48
    assert a.log_index == b.log_index == 0
    assert a.log_vkey == b.log_vkey
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["measurement"] == a.measurement.hex()
    assert ApplianceRecord.load(paths.record).gateway_url == "http://127.0.0.1:18999"
    # Simulation keys are private to the operator.
    for key in paths.sim.rglob("*key*"):
        assert key.stat().st_mode & 0o077 == 0, key


def test_command_engine_needs_argv(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="argv"):
        lifecycle.provision_simulated(StatePaths(tmp_path), engine="command")


def test_status_and_down_when_not_provisioned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENPCC_STATE_DIR", str(tmp_path))
    r = CliRunner().invoke(app, ["status", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["state"] == "not-provisioned"
    r = CliRunner().invoke(app, ["down"])
    assert r.exit_code == 0 and "not running" in r.output
    r = CliRunner().invoke(app, ["up", "--timeout", "1"])
    assert r.exit_code == 3
    assert "no appliance is provisioned" in r.output


def test_status_reports_down_after_provision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENPCC_STATE_DIR", str(tmp_path))
    lifecycle.provision_simulated(
        StatePaths(tmp_path), port=1, engine="command", engine_args=("x",)
    )
    r = CliRunner().invoke(app, ["status", "--json"])
    st = json.loads(r.output)
    assert st["state"] == "down" and st["mode"] == "simulated"
    assert st["log_vkey"].startswith("openpcc.appliance/log+")


def test_down_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    """A stale pid file (a crash, a reboot) naming a pid some other process now has: `down` and
    `status` see no gateway, and the other process lives on."""
    import subprocess
    import sys

    from appliance import lifecycle
    from appliance.state import StatePaths

    paths = StatePaths(tmp_path / "state")
    paths.pid.parent.mkdir(parents=True, exist_ok=True)
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        paths.pid.write_text(f"{other.pid}\n")
        assert lifecycle.gateway_pid(paths) is None
        assert lifecycle.down(paths, timeout=1.0) is False
        assert other.poll() is None  # still running: nothing was sent to it
    finally:
        other.kill()
        other.wait()


def test_the_gateway_is_found_however_the_state_folder_is_spelled(tmp_path: Path) -> None:
    """`up` may run with a relative or symlinked OPENPCC_STATE_DIR and `status`/`down` with
    another spelling: the pid is the gateway's when its --config is the same file."""
    import os
    import subprocess
    import sys

    from appliance import lifecycle
    from appliance.state import StatePaths

    real = tmp_path / "real"
    paths = StatePaths(real)
    paths.pid.parent.mkdir(parents=True, exist_ok=True)
    paths.gateway_config.parent.mkdir(parents=True, exist_ok=True)
    paths.gateway_config.write_text("")
    (tmp_path / "link").symlink_to(real)
    relative = os.path.relpath(paths.gateway_config, tmp_path)
    # A stand-in with the gateway's argv shape, started from tmp_path with a relative --config.
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "server", "--config", relative],
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        paths.pid.write_text(f"{fake.pid}\n")
        for spelling in (real, tmp_path / "link", Path(os.path.relpath(real))):
            assert lifecycle.gateway_pid(StatePaths(spelling)) == fake.pid, spelling
        # Another state's gateway.toml is not this one.
        other = StatePaths(tmp_path / "other")
        other.pid.parent.mkdir(parents=True, exist_ok=True)
        other.pid.write_text(f"{fake.pid}\n")
        assert lifecycle.gateway_pid(other) is None
    finally:
        fake.kill()
        fake.wait()
