"""Real-host lifecycle with a recording runner: the unit, provisioning, and start-up failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import host
from appliance.runner import Completed
from appliance.state import ApplianceRecord, StatePaths
from attest.errors import ParseError, TransportError
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
    assert [s.split(":", 1)[0] for s in said] == ["provision", "measure", "release", "unit"]
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
    assert res.measurement.hex() in unit  # the unit names its release, and holds no secret
    for secret in ("PRIVATE", str(paths.log / "log.key"), str(paths.sim)):
        assert secret not in unit

    manifest = json.loads(paths.manifest.read_text())
    assert manifest["measurement"] == res.measurement.hex() and manifest["tee"] == "sev-snp"
    assert ApplianceRecord.load(paths.record).mode == "sev-snp"
    assert host.provisioned_mode(paths) == "sev-snp"
    again = host.provision(paths, recipe_path, port=18443, config=config, say=said.append)
    assert again.log_index == 0 and "already logged" in said[-2]


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
            "OPENPCC_TEST_UNIT_DIR": "/units",
            "OPENPCC_TEST_SIMULATION_ROOT": "/sim.pem",
            "OPENPCC_GPU_ADMIN_TOOLS": "/opt/gpu-admin-tools/nvidia_gpu_tools.py",
        }
    )
    assert cfg == host.HostConfig(
        root=Path("/fake"),
        qemu="/stub/qemu",
        systemctl="/stub/systemctl",
        unit_dir=Path("/units"),
        gpu_tools="/opt/gpu-admin-tools/nvidia_gpu_tools.py",
        simulation_root=Path("/sim.pem"),
    )
    assert set(host.TEST_HOOKS) <= {
        "OPENPCC_TEST_HOST_ROOT",
        "OPENPCC_TEST_QEMU",
        "OPENPCC_TEST_SYSTEMCTL",
        "OPENPCC_TEST_UNIT_DIR",
        "OPENPCC_TEST_SIMULATION_ROOT",
    }
