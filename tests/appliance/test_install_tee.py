"""install.sh end to end on a fake SEV-SNP host, and its simulated flow on a host without a TEE.

The fake host is a tree under ``OPENPCC_TEST_HOST_ROOT``: SNP enabled (Milan firmware status),
an H100 on vfio-pci, OVMF with the kernel-hashes section. QEMU, systemctl, apt-get and
gpu-admin-tools are STUBS that append what they were asked to ``events.jsonl``. The systemctl
stub runs the unit's ExecStart, i.e. the QEMU stub with the release's real argument vector, and
the QEMU stub, as the "CVM", runs the SIMULATED gateway (fake engine) on the port QEMU was told
to forward. Its evidence is simulated, so install.sh's final verification accepts it only
through the OPENPCC_TEST_SIMULATION_ROOT hook, and the test checks that it says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.host import UNIT_NAME
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.sim import SimulatedSnpSigner
from cvm_boot.recipe import load_recipe
from tests.appliance.fakehost import (
    GPU_BDF,
    HOSTS,
    cc_mode_line,
    make_host,
    unsystemd,
    write_recipe,
)
from tests.conftest import FAKE_ENGINE, REPO_ROOT, VENV_BIN, free_port

PYTHON = sys.executable

# Stub bodies; each script starts with the constants it needs (EVENTS, STATE, ...).
RECORD = """
import json, os, sys
def record(cmd, argv, **extra):
    extra["manifest_exists"] = os.path.exists(os.path.join(STATE, "release", "manifest.json"))
    with open(EVENTS, "a") as f:
        f.write(json.dumps({"cmd": cmd, "argv": argv, **extra}) + "\\n")
"""
QEMU = """
import re
args = sys.argv[1:]
if args == ["--version"]:
    sys.stdout.write(open(VERSION).read())
    sys.exit(0)
if args == ["-object", "help"]:
    sys.stdout.write(open(OBJECTS).read())
    sys.exit(0)
record("qemu", sys.argv)
# As the guest would, print to the serial console QEMU was told to write (chardev file).
chardev = args[args.index("-chardev") + 1]
serial = re.search(r"path=([^,]+)", chardev).group(1)
with open(serial, "a" if "append=on" in chardev else "w") as f:
    f.write("openpcc-init: 0.50s loading modules (stub CVM)\\n")
port = re.search(r"hostfwd=tcp:127\\.0\\.0\\.1:(\\d+)-", " ".join(args)).group(1)
with open(CONFIG, "w") as f:
    f.write(open(TEMPLATE).read().replace("@PORT@", port))
os.execv(PYTHON, [PYTHON, "-m", "server", "--config", CONFIG])
"""
SYSTEMCTL = """
import shlex, signal, subprocess, time
args = sys.argv[1:]
unit = os.path.join(UNIT_DIR, args[1]) if len(args) > 1 else ""
record("systemctl", args, unit_exists=os.path.exists(unit))

def alive():
    try:
        pid = int(open(PIDFILE).read())
        with open(f"/proc/{pid}/stat") as f:
            return pid if f.read().split(") ")[1][0] not in "ZX" else None
    except (OSError, ValueError):
        return None

if args[0] == "start" and not alive():
    line = next(l for l in open(unit).read().splitlines() if l.startswith("ExecStart="))
    words = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[10:])]
    with open(CVM_LOG, "ab") as log:
        proc = subprocess.Popen(words, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    open(PIDFILE, "w").write(str(proc.pid))
elif args[0] == "stop" and (pid := alive()):
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if not alive():
            break
        time.sleep(0.1)
elif args[0] == "is-active":
    print("active" if alive() else "inactive")
    sys.exit(0 if alive() else 3)
"""
APT = """
record("apt-get", sys.argv[1:])
print("stub apt-get:", " ".join(sys.argv[1:]))
"""
JOURNALCTL = """
record("journalctl", sys.argv[1:])
print("2025-01-01T00:00:00+0000 host systemd[1]: Started openpcc-cvm.service.")
"""
GPU_TOOLS = """
record("nvidia_gpu_tools", sys.argv[1:])
bdf = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--gpu-bdf="))
sys.stdout.write(CC_LINE.replace("@BDF@", bdf))
"""


@dataclass
class TeeHost:
    base: Path
    root: Path
    recipe: Path
    port: int
    env: dict[str, str]

    @property
    def events_file(self) -> Path:
        return self.base / "events.jsonl"

    def events(self) -> list[dict[str, object]]:
        if not self.events_file.exists():
            return []
        return [json.loads(ln) for ln in self.events_file.read_text().splitlines()]

    def install(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO_ROOT / "install.sh"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=150,
            check=False,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / args[0]), *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop_cvm(self) -> None:
        subprocess.run([self.env["OPENPCC_TEST_SYSTEMCTL"], "stop", UNIT_NAME], check=False)
        pidfile = self.base / "cvm.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def _script(path: Path, body: str, **constants: object) -> str:
    head = f"#!{PYTHON}\n# STUB for tests/appliance/test_install_tee.py\n"
    head += "".join(f"{k} = {v!r}\n" for k, v in constants.items())
    path.write_text(head + RECORD + body)
    path.chmod(0o755)
    return str(path)


def _simulation(base: Path, state: Path) -> tuple[Path, Path]:
    """Simulation chains for the stub CVM's gateway, and its config template."""
    sim = base / "cvm-sim"
    snp = SimulatedSnpSigner.generate(sim / "snp")
    gpu = SimulatedGpu.generate(sim / "gpu")
    root = base / "trust-simulated.pem"
    root.write_bytes(
        snp.ark_certificate().public_bytes(Encoding.PEM)
        + gpu.root_certificate().public_bytes(Encoding.PEM)
    )
    engine = ", ".join(json.dumps(a) for a in (PYTHON, str(FAKE_ENGINE), "--port", "{port}"))
    template = base / "gateway.toml.in"
    template.write_text(
        "[gateway]\n"
        'host = "127.0.0.1"\nport = @PORT@\n'
        'attestation = "simulated"\ngpu = "simulated"\n'
        f"sim_dir = {json.dumps(str(sim))}\n"
        f"manifest = {json.dumps(str(state / 'release' / 'manifest.json'))}\n"
        f"log_dir = {json.dumps(str(state / 'log'))}\n"
        f"engine_log = {json.dumps(str(base / 'engine.log'))}\n"
        f'\n[engine]\nkind = "command"\nargs = [{engine}]\n'
    )
    return root, template


def make_tee_host(base: Path, **host_kwargs: object) -> TeeHost:
    state, stubs = base / "state", base / "bin"
    stubs.mkdir(parents=True)
    root = make_host(base / "host", image_tools=False, **host_kwargs)  # type: ignore[arg-type]
    sim_root, template = _simulation(base, state)
    common = {"EVENTS": str(base / "events.jsonl"), "STATE": str(state)}
    qemu = _script(
        stubs / "qemu-system-x86_64",
        QEMU,
        **common,
        PYTHON=PYTHON,
        VERSION=str(HOSTS / "qemu-9.2-proxmox.version.txt"),
        OBJECTS=str(HOSTS / "qemu-9.1.object-help.txt"),
        CONFIG=str(base / "gateway.toml"),
        TEMPLATE=str(template),
    )
    systemctl = _script(
        stubs / "systemctl",
        SYSTEMCTL,
        **common,
        UNIT_DIR=str(base / "units"),
        PIDFILE=str(base / "cvm.pid"),
        CVM_LOG=str(base / "cvm.log"),
    )
    apt = _script(stubs / "apt-get", APT, **common)
    journalctl = _script(stubs / "journalctl", JOURNALCTL, **common)
    tools = _script(
        stubs / "nvidia_gpu_tools.py", GPU_TOOLS, **common, CC_LINE=cc_mode_line("@BDF@", "on")
    )
    env = {
        **os.environ,
        "OPENPCC_STATE_DIR": str(state),
        "OPENPCC_CONFIG_DIR": str(base / "config"),
        "OPENPCC_TEST_HOST_ROOT": str(root),
        "OPENPCC_TEST_QEMU": qemu,
        "OPENPCC_TEST_SYSTEMCTL": systemctl,
        "OPENPCC_TEST_UNIT_DIR": str(base / "units"),
        "OPENPCC_TEST_APT": apt,
        "OPENPCC_TEST_JOURNALCTL": journalctl,
        "OPENPCC_TEST_SIMULATION_ROOT": str(sim_root),
        "OPENPCC_TEST_SKIP_VENV": "1",
        "OPENPCC_GPU_ADMIN_TOOLS": tools,
        "OPENPCC_MODEL_DISK_GIB": "0.01",
        "OPENPCC_UP_TIMEOUT": "60",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
        "COLUMNS": "400",
    }
    env.pop("OPENPCC_URL", None)
    recipe = write_recipe(base / "release")
    return TeeHost(base, root, recipe, free_port(), env)


@pytest.fixture
def tee_host(tmp_path: Path) -> Iterator[TeeHost]:
    h = make_tee_host(tmp_path)
    try:
        yield h
    finally:
        h.stop_cvm()


def _in_order(text: str, markers: list[str]) -> None:
    at = 0
    for m in markers:
        found = text.find(m, at)
        assert found >= 0, f"{m!r} missing after position {at}:\n{text}"
        at = found + len(m)


def test_install_on_a_fake_snp_host_boots_and_verifies_the_cvm(tee_host: TeeHost) -> None:
    h = tee_host
    r = h.install("--yes", "--recipe", str(h.recipe), "--port", str(h.port))
    out = r.stdout
    assert r.returncode == 0, out

    # The order of steps, as install.sh and the appliance CLI report them.
    _in_order(
        out,
        [
            "==> Host check (doctor)",
            "PASS AMD SEV-SNP host support",
            "PASS SEV-SNP firmware: SNP API 1.52 build 4",
            f"PASS GPU {GPU_BDF} CC mode: on",
            "PASS OVMF firmware",
            "==> OS packages",
            "needed: cryptsetup-bin squashfs-tools",
            "stub apt-get: install",
            "==> Host changes",
            "nothing to change",
            "every requirement passes",
            "==> Provisioning the sev-snp appliance",
            "provision: test-sev-snp 1.2.3 for sev-snp, GPUs 0000:41:00.0 on vfio-pci",
            "measure: sev-snp launch measurement ",
            "release: manifest at log index 0 of 1",
            "disk: ",
            "unit: wrote",
            "==> Trusting this appliance's log key",
            "==> Starting the CVM",
            "start: systemctl daemon-reload",
            "start: systemctl start openpcc-cvm.service",
            "verify: ",
            "TEST HOOK OPENPCC_TEST_SIMULATION_ROOT",
            "SIMULATED — NOT CONFIDENTIAL",
            "Summary",
            "TEST HOOK: the verified evidence was SIMULATED",
            f"openpcc chat --url http://127.0.0.1:{h.port}",
            "openpcc-appliance dashboard",
        ],
    )

    # What the stubs were asked, in order, and what existed when they were.
    events = h.events()
    steps = [(e["cmd"], e["argv"][0] if e["cmd"] != "qemu" else "launch") for e in events]
    assert steps[0][0] == "nvidia_gpu_tools"  # the doctor asks for the CC mode first
    assert [s for s in steps if s[0] != "nvidia_gpu_tools" and s[1] != "is-active"] == [
        ("apt-get", "update"),
        ("apt-get", "install"),
        ("systemctl", "daemon-reload"),
        ("systemctl", "start"),
        ("qemu", "launch"),
    ]
    apt_install = events[[e["cmd"] for e in events].index("apt-get") + 1]
    assert apt_install["argv"][-2:] == ["cryptsetup-bin", "squashfs-tools"]
    assert not apt_install["manifest_exists"]  # packages before provisioning
    start = next(e for e in events if e["argv"][:1] == ["start"])
    assert start["unit_exists"] and start["manifest_exists"]  # provision, release, then start

    # The QEMU command line the unit ran: the release's, with the GPU on vfio.
    recipe = load_recipe(h.recipe)
    argv = next(e["argv"] for e in events if e["cmd"] == "qemu")
    assert isinstance(argv, list)
    assert argv[0] == h.env["OPENPCC_TEST_QEMU"]
    joined = " ".join(argv)
    assert "sev-snp-guest,id=sev0" in joined and "kernel-hashes=on" in joined
    assert "confidential-guest-support=sev0" in joined
    assert argv[argv.index("-bios") + 1] == str(recipe.firmware.path)
    assert argv[argv.index("-kernel") + 1] == str(recipe.kernel.path)
    assert argv[argv.index("-initrd") + 1] == str(recipe.initrd.path)
    assert argv[argv.index("-append") + 1] == recipe.cmdline
    assert f"vfio-pci,host={GPU_BDF},id=gpu0,bus=gpuport0" in argv
    assert f"hostfwd=tcp:127.0.0.1:{h.port}-:8443" in joined
    disk = h.base / "state/provision/provision.img"
    assert f"if=none,id=openpcc-provision,file={disk},format=raw,readonly=on" in argv
    assert disk.is_file()
    unit = (h.base / "units" / UNIT_NAME).read_text()
    exec_line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert unsystemd(exec_line.removeprefix("ExecStart=")) == argv
    assert "Restart=on-failure" in unit and "PRIVATE" not in unit and "cvm-sim" not in unit

    # The manifest the CVM serves is the one released into the log, with its measurement.
    manifest = json.loads((h.base / "state/release/manifest.json").read_text())
    assert f"measure: sev-snp launch measurement {manifest['measurement']}" in out

    # status reads the public endpoints; a plain client (no simulation root) refuses the node.
    st = json.loads(h.cli("openpcc-appliance", "status", "--json").stdout)
    assert st["state"] == "up" and st["mode"] == "sev-snp"
    assert st["gateway_url"] == f"http://127.0.0.1:{h.port}"
    assert st["measurement"] == manifest["measurement"] and st["unit"] == UNIT_NAME
    boot = "openpcc-init: 0.50s loading modules (stub CVM)"
    assert st["boot_log"][-1] == boot

    # logs: the unit's journal (through the journalctl stub) and the same serial console.
    logs = h.cli("openpcc-appliance", "logs", "-n", "5")
    assert logs.returncode == 0, logs.stderr
    _in_order(logs.stdout, ["== journalctl -u openpcc-cvm.service", "Started openpcc-cvm", boot])
    assert h.events()[-1] == {
        "cmd": "journalctl",
        "argv": ["-u", UNIT_NAME, "-n", "5", "--no-pager", "-o", "short-iso"],
        "manifest_exists": True,
    }
    client = h.cli("openpcc", "verify", f"http://127.0.0.1:{h.port}")
    assert (
        client.returncode != 0 and "no simulation root is trusted" in client.stdout + client.stderr
    )

    # down stops the unit.
    r = h.cli("openpcc-appliance", "down")
    assert r.returncode == 0 and "stopped the confidential VM" in r.stdout
    assert h.events()[-1]["argv"] == ["stop", UNIT_NAME]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{h.port}/healthz", timeout=2)


def test_declined_gpu_binding_stops_with_the_doctors_line(tmp_path: Path) -> None:
    h = make_tee_host(tmp_path, gpu_driver="nvidia")
    r = h.install("--recipe", str(h.recipe), "--port", str(h.port), stdin="n\n")
    assert r.returncode == 1, r.stdout
    _in_order(
        r.stdout,
        [
            "==> OS packages",
            "==> Host changes",
            f"Bind GPU {GPU_BDF} to vfio-pci?",
            "error: stopped at step: host changes",
            f"doctor: FAIL GPU {GPU_BDF} binding: bound to nvidia (fix: bind it to vfio-pci",
        ],
    )
    assert "==> Provisioning" not in r.stdout
    assert [e for e in h.events() if e["cmd"] in ("systemctl", "qemu")] == []
    dev = h.root / "sys/bus/pci/devices" / GPU_BDF
    assert not (dev / "driver_override").exists()


def test_accepted_gpu_binding_is_applied_then_rechecked(tmp_path: Path) -> None:
    h = make_tee_host(tmp_path, gpu_driver="nvidia")
    r = h.install("--recipe", str(h.recipe), "--port", str(h.port), stdin="y\ny\n")
    dev = h.root / "sys/bus/pci/devices" / GPU_BDF
    assert (dev / "driver_override").read_text() == "vfio-pci"
    assert (h.root / "sys/bus/pci/drivers/nvidia/unbind").read_text() == GPU_BDF
    assert (h.root / "sys/bus/pci/drivers_probe").read_text() == GPU_BDF
    # A fake kernel does not rebind: the re-check still fails, and install.sh stops there.
    assert r.returncode == 1
    _in_order(
        r.stdout,
        [
            "driver_override=vfio-pci",
            "error: stopped at step: host check",
            f"doctor: FAIL GPU {GPU_BDF} binding",
        ],
    )
    assert [e for e in h.events() if e["cmd"] in ("systemctl", "qemu")] == []


def test_recipe_on_a_host_without_tee_is_refused(tmp_path: Path) -> None:
    h = make_tee_host(tmp_path, snp="N", gpu=None)
    r = h.install("--yes", "--recipe", str(h.recipe))
    assert r.returncode == 1
    assert "--recipe needs an AMD SEV-SNP or Intel TDX host" in r.stdout
    assert "run ./install.sh without --recipe for the SIMULATED appliance" in r.stdout


def test_simulated_flow_without_tee_is_unchanged(tmp_path: Path) -> None:
    """No --recipe, no TEE: the SIMULATED appliance, as before; nothing host-level is touched."""
    h = make_tee_host(tmp_path, cpu="GenuineIntel", snp=None, gpu=None, iommu_groups=0)
    started = time.monotonic()
    r = h.install("--no-engine", "--no-start")
    assert r.returncode == 0, r.stdout
    _in_order(
        r.stdout,
        [
            "==> Python environment",
            "==> Host",
            "WARN",
            "!! SIMULATED — NOT CONFIDENTIAL !!",
            "==> Provisioning the simulated appliance",
            "no engine installed (--no-engine)",
            "Summary",
            "mode:     SIMULATED — NOT CONFIDENTIAL",
        ],
    )
    assert "Host check (doctor)" not in r.stdout
    assert h.events() == []
    assert time.monotonic() - started < 60


def test_bound_gpu_is_made_persistent_after_asking(tmp_path: Path) -> None:
    h = make_tee_host(tmp_path, vfio_persistent=False)
    modprobe = h.root / "etc/modprobe.d/openpcc-vfio.conf"
    declined = h.install("--recipe", str(h.recipe), "--no-start", stdin="y\nn\n")
    assert declined.returncode == 0, declined.stdout
    _in_order(
        declined.stdout,
        [
            "WARN vfio-pci at boot",
            "==> Host changes",
            "GPUs 10de:2331 are on vfio-pci until the next reboot only",
            "Keep them on vfio-pci from boot?",
            "the GPUs return to their host driver at the next reboot",
            "==> Provisioning",
        ],
    )
    assert not modprobe.exists()
    accepted = h.install("--yes", "--recipe", str(h.recipe), "--no-start")
    assert accepted.returncode == 0, accepted.stdout
    _in_order(
        accepted.stdout,
        [
            "Keep them on vfio-pci from boot?",
            "update-initramfs -u. yes (--yes)",
            f"wrote {modprobe}",
            "==> Provisioning",
        ],
    )
    assert "options vfio-pci ids=10de:2331\nsoftdep nvidia pre: vfio-pci\n" in modprobe.read_text()
    assert (h.root / "etc/modules-load.d/openpcc-vfio.conf").read_text().endswith("vfio-pci\n")
    again = h.install("--yes", "--recipe", str(h.recipe), "--no-start")
    assert "Keep them on vfio-pci" not in again.stdout and "nothing to change" in again.stdout


def _add_kernel_args(
    root: Path, grub_text: str | None, arg: str
) -> subprocess.CompletedProcess[str]:
    """install.sh's add_kernel_args on a fake /etc/default/grub (the function's own text)."""
    script = (REPO_ROOT / "install.sh").read_text()
    start = script.index("add_kernel_args() {")
    body = script[start : script.index("\n}\n", start) + 3]
    if grub_text is not None:
        (root / "etc/default").mkdir(parents=True, exist_ok=True)
        (root / "etc/default/grub").write_text(grub_text)
    prelude = (
        'ok() { echo "ok $*"; }\nwarn() { echo "warn $*"; }\n'
        'die() { echo "error: $1" >&2; echo "hint: ${2:-}" >&2; exit 1; }\n'
        f"HOST_ROOT={root}/\nRECIPE=r.toml\n"
    )
    return subprocess.run(
        ["bash", "-c", prelude + body + f"\nadd_kernel_args '{arg}'\n"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_kernel_args_are_added_or_the_edit_says_it_could_not(tmp_path: Path) -> None:
    done = _add_kernel_args(tmp_path / "a", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n', "iommu=pt")
    assert done.returncode == 0 and "ok added 'iommu=pt'" in done.stdout
    grub = (tmp_path / "a/etc/default/grub").read_text()
    assert grub == 'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt"\n'
    # What a real file may hold after the closing quote: the edit works and is recognised.
    for tail in (" ", "  # distro default", "\r"):
        root = tmp_path / f"t{len(tail)}"
        done = _add_kernel_args(root, f'GRUB_CMDLINE_LINUX_DEFAULT="quiet"{tail}\n', "a.b=1")
        assert done.returncode == 0, (tail, done.stderr)
        assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet a.b=1"' in (root / "etc/default/grub").read_text()
    # A single-quoted line, or none at all: the sed matches nothing, and install.sh says so.
    for text in ("GRUB_CMDLINE_LINUX_DEFAULT='quiet'\n", "GRUB_TIMEOUT=5\n"):
        root = tmp_path / str(len(text))
        failed = _add_kernel_args(root, text, "iommu=pt")
        assert failed.returncode == 1 and "could not add 'iommu=pt'" in failed.stderr
        assert "ok added" not in failed.stdout


def test_a_grub_d_override_is_named(tmp_path: Path) -> None:
    root = tmp_path / "h"
    (root / "etc/default/grub.d").mkdir(parents=True)
    (root / "etc/default/grub.d/50-cloud.cfg").write_text('GRUB_CMDLINE_LINUX_DEFAULT="x"\n')
    done = _add_kernel_args(root, 'GRUB_CMDLINE_LINUX_DEFAULT=""\n', "kvm_amd.sev=1")
    assert done.returncode == 0
    assert "50-cloud.cfg also sets GRUB_CMDLINE_LINUX_DEFAULT" in done.stdout
