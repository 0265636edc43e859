"""`openpcc-appliance up --vm`: the sealed image in an emulated VM, driven through the CLIs.

The end-to-end test (slow) boots the TEST image variant (tests/cvm_boot/image/image-test.toml,
with the fake engine) through `up --vm`, then uses it the way an operator and a client would:
`status --json`, the `openpcc trust` command `up` printed, `openpcc ask` (verified, encrypted),
`logs`, `down`. The image comes from the same content-keyed cache as test_boot.py's, so a CI run
builds it once. The fast tests cover the record and the mode switches without QEMU.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import lifecycle
from appliance import vm as emulated_vm
from appliance.main import app
from appliance.state import ApplianceRecord, StatePaths
from attest.errors import ParseError
from cvm_boot.image.run import missing_tools
from tests.conftest import VENV_BIN, free_port

IMAGE_TEST = Path(__file__).resolve().parent.parent / "cvm_boot" / "image" / "image-test.toml"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StatePaths:
    monkeypatch.setenv("OPENPCC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(tmp_path / "config"))
    return StatePaths(tmp_path / "state")


def _vm_record(port: int = 18997) -> ApplianceRecord:
    return ApplianceRecord(
        mode="simulated",
        gateway_url=f"http://127.0.0.1:{port}",
        engine="command",
        port=port,
        vm=True,
        vm_image="/nonexistent/image",
        vm_recipe=str(IMAGE_TEST),
        vm_accel="tcg",
    )


def test_records_from_before_vm_mode_still_load(state: StatePaths) -> None:
    state.root.mkdir(parents=True)
    old = {"mode": "simulated", "gateway_url": "http://127.0.0.1:8480", "engine": "embedded"}
    state.record.write_text(json.dumps({**old, "port": 8480}))
    record = ApplianceRecord.load(state.record)
    assert record.vm is False and record.vm_image is None and record.port == 8480


def test_local_status_says_local_processes(state: StatePaths) -> None:
    lifecycle.provision_simulated(state, port=1, engine="command", engine_args=("x",))
    st = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)
    assert st["mode"] == "simulated" and st["vm"] is False and st["state"] == "down"
    text = CliRunner().invoke(app, ["status"]).output
    assert "runs in: local processes" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--port", "9000"], "go with --vm"),
        (["up", "--accel", "kvm"], "go with --vm"),
        (["up", "--image-recipe", "x.toml"], "go with --vm"),
        (["up", "--vm", "--accel", "hvf"], "is not one of tcg, kvm"),
    ],
)
def test_up_refuses_misused_options(state: StatePaths, args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 3, r.output
    assert message in r.output


def test_local_up_after_vm_goes_back_to_the_provisioned_gateway(state: StatePaths) -> None:
    lifecycle.provision_simulated(state, port=18996, engine="command", engine_args=("x",))
    _vm_record().save(state.record)
    emulated_vm.leave_vm(state)
    record = ApplianceRecord.load(state.record)
    assert (record.vm, record.port, record.engine) == (False, 18996, "command")
    assert record.gateway_url == "http://127.0.0.1:18996"


def test_local_up_after_vm_only_needs_provisioning(state: StatePaths) -> None:
    _vm_record().save(state.record)
    with pytest.raises(ParseError, match="only the emulated VM was started here"):
        emulated_vm.leave_vm(state)
    r = CliRunner().invoke(app, ["up", "--timeout", "1"])
    assert r.exit_code == 3 and "openpcc-appliance provision" in r.output


def test_vm_status_and_logs_without_a_running_vm(state: StatePaths) -> None:
    _vm_record(port=1).save(state.record)
    emulated_vm.serial_log(state).parent.mkdir(parents=True)
    emulated_vm.serial_log(state).write_text("openpcc-init: 1.00s loading modules\n")
    st = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)
    assert st["mode"] == "simulated" and st["vm"] is True and st["vm_accel"] == "tcg"
    assert st["state"] == "down" and st["pid"] is None
    r = CliRunner().invoke(app, ["logs"])
    assert "openpcc-init: 1.00s loading modules" in r.output
    r = CliRunner().invoke(app, ["down"])
    assert r.exit_code == 0 and "not running" in r.output


# -- end to end: the test image in QEMU/TCG, through the CLIs ------------------------------------


class _Cli:
    def __init__(self, base: Path) -> None:
        self.env = {
            **os.environ,
            "OPENPCC_STATE_DIR": str(base / "state"),
            "OPENPCC_CONFIG_DIR": str(base / "config"),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / args[0]), *args[1:]],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[_Cli]:
    missing = missing_tools()
    if missing:
        pytest.skip("up --vm needs " + ", ".join(missing) + "; install.sh --dev adds them")
    run = _Cli(tmp_path)
    try:
        yield run
    finally:
        run("openpcc-appliance", "down")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_up_vm_status_ask_down(cli: _Cli) -> None:
    port = free_port()
    r = cli(
        "openpcc-appliance",
        "up",
        "--vm",
        "--image-recipe",
        str(IMAGE_TEST),
        "--port",
        str(port),
        "--timeout",
        "300",
        timeout=850,
    )
    print(r.stderr[-3000:], r.stdout, sep="\n")
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "SIMULATED — NOT CONFIDENTIAL: the sealed image in an emulated VM" in r.stdout
    assert "VERIFIED" in r.stderr and "sim-sev-snp" in r.stderr

    st = json.loads(cli("openpcc-appliance", "status", "--json").stdout)
    assert st["state"] == "up" and st["mode"] == "simulated" and st["vm"] is True
    assert st["gateway_url"] == f"http://127.0.0.1:{port}" and st["vm_accel"] == "tcg"
    pid = st["pid"]
    assert isinstance(pid, int) and b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes()

    # The client trusts exactly what `up` told the operator to have it trust.
    trust = [ln for ln in r.stdout.splitlines() if ln.startswith("openpcc trust ")]
    assert len(trust) == 1, r.stdout
    t = cli(*shlex.split(trust[0]))
    assert t.returncode == 0, t.stderr
    ask = cli(
        "openpcc",
        "ask",
        "--url",
        st["gateway_url"],
        "--max-tokens",
        "4",
        "hello from the sealed VM",
        timeout=120,
    )
    assert ask.returncode == 0, ask.stdout + ask.stderr
    assert "echo:" in ask.stdout and "SIMULATED" in ask.stdout + ask.stderr

    # Idempotent: a second `up --vm` only verifies the running VM again.
    again = cli("openpcc-appliance", "up", "--vm", "--image-recipe", str(IMAGE_TEST), timeout=120)
    assert again.returncode == 0 and "already running" in again.stdout + again.stderr
    assert "client:  `openpcc` already trusts" in again.stdout

    logs = cli("openpcc-appliance", "logs", "-n", "200").stdout
    assert "openpcc-supervise" in logs and "hello from the sealed VM" not in logs

    d = cli("openpcc-appliance", "down")
    assert d.returncode == 0 and "stopped the emulated VM" in d.stdout
    assert not _alive(pid)
    st = json.loads(cli("openpcc-appliance", "status", "--json").stdout)
    assert st["state"] == "down" and st["vm"] is True and st["pid"] is None
