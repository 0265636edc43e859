"""Real-host lifecycle with a recording runner: the unit, provisioning, and start-up failures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance import host
from appliance.main import app
from appliance.runner import Completed
from appliance.state import ApplianceRecord, StatePaths
from attest.errors import ParseError, TransportError
from cvm_boot.image.provision import read_provisioning_image
from cvm_boot.recipe import load_recipe
from tests.appliance.fakehost import GPU_BDF, FakeRunner, make_host, unsystemd, write_recipe


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/qemu", "-append", "console=ttyS0 ro roothash=ab"],
        ["q", 'a "quoted" word', "back\\slash", "100%", "$HOME", "tab\there", ""],
        ["q", "romfile=", "hostfwd=tcp:127.0.0.1:9-:8443", "file=/a b/c"],
    ],
)
def test_exec_line_splits_back_exactly(argv: list[str]) -> None:
    line = host.systemd_exec_line(argv)
    assert unsystemd(line) == argv
    assert "\n" not in line


def test_exec_line_refuses_a_line_break() -> None:
    with pytest.raises(ParseError, match="line break"):
        host.systemd_exec_line(["q", "a\nb"])


@pytest.fixture
def snp_host(tmp_path: Path) -> tuple[StatePaths, host.HostConfig, Path]:
    root = make_host(tmp_path / "host")
    config = host.HostConfig(
        root=root,
        qemu="/opt/qemu/bin/qemu-system-x86_64",
        systemctl="systemctl",
        unit_dir=tmp_path / "units",
    )
    return StatePaths(tmp_path / "state"), config, write_recipe(tmp_path / "release")


def test_provision_writes_the_unit_the_log_and_the_records(
    snp_host: tuple[StatePaths, host.HostConfig, Path],
) -> None:
    paths, config, recipe_path = snp_host
    said: list[str] = []
    res = host.provision(paths, recipe_path, port=18443, config=config, say=said.append)
    recipe = load_recipe(recipe_path)
    assert [s.split(":", 1)[0] for s in said] == [
        "provision",
        "measure",
        "release",
        "disk",
        "unit",
    ]
    assert res.gpus == (GPU_BDF,) and len(res.measurement) == 48 and res.log_index == 0

    unit = config.unit_path.read_text()
    assert "Restart=on-failure" in unit and "[Install]" in unit
    exec_line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = unsystemd(exec_line.removeprefix("ExecStart="))
    assert argv == list(res.argv)
    assert argv[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert argv[argv.index("-append") + 1] == recipe.cmdline
    assert argv[argv.index("-kernel") + 1] == str(recipe.kernel.path)
    assert f"vfio-pci,host={GPU_BDF},id=gpu0,bus=gpuport0" in argv
    assert any(a.startswith("sev-snp-guest,id=sev0") for a in argv)
    assert "hostfwd=tcp:127.0.0.1:18443-:8443" in " ".join(argv)
    disk = paths.root / "provision" / "provision.img"
    assert f"if=none,id=openpcc-provision,file={disk},format=raw,readonly=on" in argv
    assert argv[argv.index("-chardev") + 1].endswith(f"path={paths.logs / 'serial.log'},append=on")
    back = read_provisioning_image(disk, paths.root / "readback")
    assert back.manifest_bytes + b"\n" == paths.manifest.read_bytes()
    assert back.tlog["index"] == 0 and back.log_vkey == res.log_vkey
    assert res.measurement.hex() in unit  # the unit names its release, and holds no secret
    for secret in ("PRIVATE", str(paths.log / "log.key"), str(paths.sim)):
        assert secret not in unit

    manifest = json.loads(paths.manifest.read_text())
    assert manifest["measurement"] == res.measurement.hex() and manifest["tee"] == "sev-snp"
    assert ApplianceRecord.load(paths.record).mode == "sev-snp"
    assert host.provisioned_mode(paths) == "sev-snp"
    again = host.provision(paths, recipe_path, port=18443, config=config, say=said.append)
    assert again.log_index == 0 and "already logged" in said[-3]


def test_provision_refuses_what_cannot_launch(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "release")
    paths = StatePaths(tmp_path / "state")
    cases = [
        (make_host(tmp_path / "notee", snp="N"), "no SEV-SNP or TDX"),
        (make_host(tmp_path / "nvidia", gpu_driver="nvidia"), "bound to nvidia, not vfio-pci"),
        (make_host(tmp_path / "tdx", cpu="GenuineIntel", snp=None, tdx="Y"), "this host runs tdx"),
    ]
    for root, message in cases:
        config = host.HostConfig(root=root, unit_dir=tmp_path / "units")
        with pytest.raises(ParseError, match=message):
            host.provision(paths, recipe, port=18443, config=config)
        assert not config.unit_path.exists()


def test_up_stops_when_systemctl_fails_or_the_unit_dies(
    snp_host: tuple[StatePaths, host.HostConfig, Path],
) -> None:
    paths, config, recipe_path = snp_host
    host.provision(paths, recipe_path, port=1, config=config)
    refuses = FakeRunner(
        extra={("systemctl", "daemon-reload"): Completed(0)}
        | {("systemctl", "start", host.UNIT_NAME): Completed(1, "", "Access denied\n")}
    )
    with pytest.raises(TransportError, match=r"start openpcc-cvm\.service failed: Access"):
        host.up(paths, config, runner=refuses, timeout=5)
    dies = FakeRunner(
        extra={
            ("systemctl", "daemon-reload"): Completed(0),
            ("systemctl", "start", host.UNIT_NAME): Completed(0),
            ("systemctl", "is-active", host.UNIT_NAME): Completed(3, "failed\n"),
        }
    )
    with pytest.raises(TransportError, match="the CVM unit is failed") as e:
        host.up(paths, config, runner=dies, timeout=10)
    assert "journalctl -u openpcc-cvm.service" in e.value.hint
    assert [c[1] for c in dies.calls] == ["daemon-reload", "start", "is-active"]


def test_down_and_status(snp_host: tuple[StatePaths, host.HostConfig, Path]) -> None:
    paths, config, recipe_path = snp_host
    host.provision(paths, recipe_path, port=1, config=config)
    (paths.logs / "serial.log").write_text("".join(f"boot line {i}\n" for i in range(30)))
    st = host.status(paths)
    assert st["state"] == "down" and st["mode"] == "sev-snp"
    assert st["gateway_url"] == "http://127.0.0.1:1" and st["unit"] == host.UNIT_NAME
    assert st["boot_log"] == [f"boot line {i}" for i in range(10, 30)]
    assert st["serial_log"] == str(paths.logs / "serial.log")
    stop = FakeRunner(extra={("systemctl", "stop", host.UNIT_NAME): Completed(0)})
    assert host.down(paths, config, runner=stop)
    assert stop.calls == [["systemctl", "stop", host.UNIT_NAME]]


def test_config_from_env_reads_only_the_named_hooks() -> None:
    assert host.HostConfig.from_env({}) == host.HostConfig()
    cfg = host.HostConfig.from_env(
        {
            "OPENPCC_TEST_HOST_ROOT": "/fake",
            "OPENPCC_TEST_QEMU": "/stub/qemu",
            "OPENPCC_TEST_SYSTEMCTL": "/stub/systemctl",
            "OPENPCC_TEST_JOURNALCTL": "/stub/journalctl",
            "OPENPCC_TEST_UNIT_DIR": "/units",
            "OPENPCC_TEST_SIMULATION_ROOT": "/sim.pem",
            "OPENPCC_GPU_ADMIN_TOOLS": "/opt/gpu-admin-tools/nvidia_gpu_tools.py",
        }
    )
    assert cfg == host.HostConfig(
        root=Path("/fake"),
        qemu="/stub/qemu",
        systemctl="/stub/systemctl",
        journalctl="/stub/journalctl",
        unit_dir=Path("/units"),
        gpu_tools="/opt/gpu-admin-tools/nvidia_gpu_tools.py",
        simulation_root=Path("/sim.pem"),
    )
    assert set(host.TEST_HOOKS) <= {
        "OPENPCC_TEST_HOST_ROOT",
        "OPENPCC_TEST_QEMU",
        "OPENPCC_TEST_SYSTEMCTL",
        "OPENPCC_TEST_JOURNALCTL",
        "OPENPCC_TEST_UNIT_DIR",
        "OPENPCC_TEST_SIMULATION_ROOT",
    }


JOURNAL_ARGS = ("-u", host.UNIT_NAME, "-n", "5", "--no-pager", "-o", "short-iso")
JOURNAL = (
    "2025-01-01T00:00:00+0000 host systemd[1]: Started openpcc-cvm.service.\n"
    "2025-01-01T00:00:01+0000 host qemu-system-x86_64[42]: warning: host doesn't support x2apic\n"
)


def test_logs_show_the_journal_and_the_serial_console_status_shows(
    snp_host: tuple[StatePaths, host.HostConfig, Path],
) -> None:
    paths, config, recipe_path = snp_host
    host.provision(paths, recipe_path, port=1, config=config)
    (paths.logs / "serial.log").write_text("".join(f"boot line {i}\n" for i in range(30)))
    runner = FakeRunner(extra={("journalctl", *JOURNAL_ARGS): Completed(0, JOURNAL)})
    got = host.logs(paths, config, runner=runner, lines=5)
    assert runner.calls == [["journalctl", *JOURNAL_ARGS]]
    assert got.journal == tuple(JOURNAL.splitlines()) and got.journal_error is None
    assert got.serial == tuple(f"boot line {i}" for i in range(25, 30))
    # status --json carries the same console, by the same reader.
    boot_log = host.status(paths)["boot_log"]
    assert isinstance(boot_log, list) and boot_log[-5:] == list(got.serial)

    refused = FakeRunner(
        extra={("journalctl", *JOURNAL_ARGS): Completed(1, "", "No journal files were found.\n")}
    )
    got = host.logs(paths, config, runner=refused, lines=5)
    assert got.journal == () and got.journal_error == "journalctl: No journal files were found."
    assert len(got.serial) == 5


def test_logs_need_a_provisioned_host(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="no confidential VM is provisioned"):
        host.logs(StatePaths(tmp_path), host.HostConfig(), runner=FakeRunner())


def test_follow_prints_what_the_console_appends(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("old line\n")
    seen: list[str] = []
    writes = iter(["new 1\nnew", " 2\n", None, "after rotation\n"])

    def stop() -> bool:
        nxt = next(writes, "done")
        if nxt == "done":
            return True
        if nxt is None:
            log.write_text("")  # rotated: QEMU starts a new file
        else:
            with log.open("a") as f:
                f.write(nxt)
        return False

    host.follow_serial(str(log), seen.append, stop=stop, poll=0.0)
    assert seen == ["new 1", "new 2", "after rotation"]


def test_logs_command_on_a_tee_host(
    snp_host: tuple[StatePaths, host.HostConfig, Path], tmp_path: Path
) -> None:
    paths, config, recipe_path = snp_host
    host.provision(paths, recipe_path, port=1, config=config)
    (paths.logs / "serial.log").write_text("openpcc-init: 0.51s loading modules\n")
    stub = tmp_path / "journalctl"
    stub.write_text(
        f"#!{sys.executable}\n# STUB journalctl for tests/appliance/test_host.py\n"
        "import sys\nprint('journal:', ' '.join(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    env = {"OPENPCC_STATE_DIR": str(paths.root), "OPENPCC_TEST_JOURNALCTL": str(stub)}
    r = CliRunner().invoke(app, ["logs", "-n", "7"], env=env)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"== journalctl -u {host.UNIT_NAME} (systemd and QEMU)"
    assert lines[1] == f"journal: -u {host.UNIT_NAME} -n 7 --no-pager -o short-iso"
    assert lines[2] == f"== {paths.logs / 'serial.log'} (the CVM's serial console)"
    assert lines[3] == "openpcc-init: 0.51s loading modules"
    help_text = CliRunner().invoke(app, ["logs", "--help"], env={"COLUMNS": "200"}).output
    assert "Nothing" in help_text and "readable by the host" in help_text


def test_the_host_verifies_with_every_pinned_vendor_root(tmp_path: Path) -> None:
    """`up` on a TDX host verifies an Intel quote: the host's anchors must carry Intel's root
    (they held only AMD's and NVIDIA's, so a real TDX `up` could never pass)."""
    from attest.tdx.verify import pinned_intel_roots
    from cvm_boot.tlog import TransparencyLog

    paths = StatePaths(tmp_path)
    log = TransparencyLog.open(paths.log)
    (paths.log / "log.vkey").write_text(log.verifier_key + "\n")
    anchors = host._anchors(paths, host.HostConfig(), lambda _: None)
    assert anchors.intel_roots == tuple(pinned_intel_roots())
    assert anchors.amd_roots and anchors.nvidia_roots
    assert anchors.simulation_tdx_roots == () and anchors.simulation_snp_roots == ()
