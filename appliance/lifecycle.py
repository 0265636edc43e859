"""Provision, start, stop and inspect the appliance.

On a host without a TEE everything here drives the SIMULATED appliance: the gateway and its
engine run as supervised local processes, and the gateway's evidence is signed by a chain
generated at provisioning time. `up` declares success only after verifying the running
appliance's attestation exactly as a client would. `up --vm` (``appliance/vm.py``) runs the
sealed image in an emulated VM instead of local processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import httpx

from appliance.state import ApplianceRecord, StatePaths
from attest.binding import canonical_json
from attest.bundle import ClientPolicy, TrustAnchors, VerificationRun
from attest.errors import OpenPCCError, ParseError, TransportError
from attest.nvgpu import SimulatedGpu, pinned_nvidia_roots
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.sevsnp.validate import SnpPolicy
from attest.sevsnp.verify import pinned_roots
from attest.tlog import VerifierKey
from cvm_boot.image.run import vm_pid
from cvm_boot.manifest import build_manifest
from cvm_boot.measure import expected_measurement
from cvm_boot.recipe import load_recipe
from cvm_boot.tlog import TransparencyLog

__all__ = [
    "ProvisionResult",
    "down",
    "gateway_pid",
    "gateway_status",
    "provision_simulated",
    "self_verify",
    "up",
]

DEFAULT_PORT = 8480


def simulated_recipe_path() -> Path:
    return Path(str(resources.files("cvm_boot") / "recipes" / "simulated.toml"))


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    measurement: bytes
    log_index: int
    log_vkey: str
    manifest_path: Path


def _toml_str(value: str) -> str:
    return json.dumps(value)


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def provision_simulated(
    paths: StatePaths,
    *,
    port: int = DEFAULT_PORT,
    engine: str = "embedded",
    engine_args: tuple[str, ...] = (),
    recipe: Path | None = None,
    model: str = "",
) -> ProvisionResult:
    """Create (or reuse) the simulation chains, release the recipe into the log, configure.

    ``model`` is the engine's model (vllm: an id or path; embedded: a GGUF path). With vllm and
    the default recipe the released manifest names that model and vLLM, so what the appliance
    attests is what it serves.
    """
    if engine == "vllm" and not model:
        raise ParseError("engine 'vllm' needs a model", hint="pass the model id or path")
    for d in (paths.root, paths.sim, paths.release, paths.logs, paths.pid.parent):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    snp_dir, gpu_dir = paths.sim / "snp", paths.sim / "gpu"
    snp = (
        SimulatedSnpSigner.load(snp_dir)
        if snp_dir.exists()
        else SimulatedSnpSigner.generate(snp_dir)
    )
    gpu = SimulatedGpu.load(gpu_dir) if gpu_dir.exists() else SimulatedGpu.generate(gpu_dir)
    from cryptography.hazmat.primitives.serialization import Encoding

    roots = snp.ark_certificate().public_bytes(Encoding.PEM) + gpu.root_certificate().public_bytes(
        Encoding.PEM
    )
    paths.sim_trust.write_bytes(roots)

    rec = load_recipe(recipe or simulated_recipe_path())
    if engine == "vllm" and recipe is None:
        rec = dataclasses.replace(
            rec,
            model_id=model,
            engine_name="vllm",
            engine_version=_installed("vllm"),
            engine_args=engine_args,
        )
    measurement = expected_measurement(rec)
    manifest = build_manifest(rec, measurement)
    data = canonical_json(manifest)
    paths.manifest.write_bytes(data + b"\n")
    log = TransparencyLog.open(paths.log)
    index = log.find(data)
    if index is None:
        index = log.append(data)

    if engine == "command" and not engine_args:
        raise ParseError("engine 'command' needs its argv")
    args = ", ".join(_toml_str(a) for a in engine_args)
    paths.gateway_config.write_text(
        "[gateway]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        'attestation = "simulated"\n'
        'gpu = "simulated"\n'
        f"sim_dir = {_toml_str(str(paths.sim))}\n"
        f"manifest = {_toml_str(str(paths.manifest))}\n"
        f"log_dir = {_toml_str(str(paths.log))}\n"
        f"engine_log = {_toml_str(str(paths.logs / 'engine.log'))}\n"
        "\n[engine]\n"
        f"kind = {_toml_str(engine)}\n"
        + (f"model = {_toml_str(model)}\n" if model else "")
        + f"args = [{args}]\n"
    )
    ApplianceRecord(
        mode="simulated", gateway_url=f"http://127.0.0.1:{port}", engine=engine, port=port
    ).save(paths.record)
    return ProvisionResult(measurement, index, log.verifier_key, paths.manifest)


def _pid(paths: StatePaths) -> int | None:
    """The pid in the pid file while it is this appliance's gateway: alive, and running
    ``-m server --config <this state's gateway.toml>``. A pid reused by any other process (after
    a crash or a reboot) is not ours, so ``down`` never signals its process group."""
    try:
        pid = int(paths.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if pid <= 1:
        return None
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (not Linux): liveness is all we can ask
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid
    try:
        raw = (proc / "cmdline").read_bytes()
        # Empty while a just-spawned child is still exec'ing (and for zombies and kernel
        # threads, which stay empty): give a starting gateway a moment.
        for _ in range(50):
            if raw:
                break
            time.sleep(0.01)
            raw = (proc / "cmdline").read_bytes()
        argv = raw.split(b"\0")
        cwd = (proc / "cwd").resolve()
    except OSError:
        return None
    if b"server" not in argv or b"--config" not in argv[:-1]:
        return None
    given = Path(os.fsdecode(argv[argv.index(b"--config") + 1]))
    # However the state folder was spelled (relative, through a link), the same file is ours.
    if (cwd / given).resolve() != paths.gateway_config.resolve():
        return None
    return pid


def gateway_pid(paths: StatePaths) -> int | None:
    """The local gateway's pid while it runs (local-process mode)."""
    return _pid(paths)


def up(
    paths: StatePaths, *, timeout: float = 900.0, progress: object | None = None
) -> VerificationRun:
    """Start the gateway (which starts the engine), wait for health, then verify it."""
    record = ApplianceRecord.load(paths.record)
    if _pid(paths) is None:
        paths.logs.mkdir(parents=True, exist_ok=True)
        log = open(paths.logs / "gateway.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(paths.gateway_config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        paths.pid.parent.mkdir(parents=True, exist_ok=True)
        paths.pid.write_text(f"{proc.pid}\n")
    wait_healthy(record.gateway_url, timeout=timeout, pid_check=lambda: _pid(paths) is not None)
    return self_verify(paths)


def wait_healthy(url: str, *, timeout: float, pid_check: object = None) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if callable(pid_check) and not pid_check():
            raise TransportError(
                "the gateway exited during start-up",
                hint="see logs/gateway.log in the state directory",
            )
        try:
            r = httpx.get(url + "/healthz", timeout=2.0)
            data = r.json()
            if r.status_code == 200:
                return dict(data)
            last = f"engine {data.get('engine', {}).get('state')}"
        except (httpx.HTTPError, json.JSONDecodeError, AttributeError):
            last = "gateway not answering"
        time.sleep(0.3)
    raise TransportError(
        f"the appliance did not become healthy in {timeout:g}s ({last})",
        hint="see the logs directory under the state directory",
    )


def trust_anchors(paths: StatePaths) -> TrustAnchors:
    from attest.sevsnp.verify import load_certificates
    from attest.tdx.verify import pinned_intel_roots
    from client_cli.trust import is_tdx_root

    sim = tuple(load_certificates(paths.sim_trust.read_bytes())) if paths.sim_trust.exists() else ()
    sim_tdx = tuple(c for c in sim if is_tdx_root(c))
    sim_other = tuple(c for c in sim if not is_tdx_root(c))
    vkey = VerifierKey.parse((paths.log / "log.vkey").read_text().strip())
    # The same anchors a client's trust store gives: pinned vendor roots, and the simulation
    # roots this appliance generated (a TDX-shaped one anchors sim-tdx evidence only).
    return TrustAnchors(
        amd_roots=tuple(pinned_roots()),
        nvidia_roots=tuple(pinned_nvidia_roots()),
        log_keys=(vkey,),
        simulation_snp_roots=sim_other,
        simulation_gpu_roots=sim_other,
        intel_roots=tuple(pinned_intel_roots()),
        simulation_tdx_roots=sim_tdx,
    )


def self_verify(paths: StatePaths) -> VerificationRun:
    """Verify the running appliance exactly as a client would, with a fresh nonce."""
    from client_cli.session import Session

    record = ApplianceRecord.load(paths.record)

    async def go() -> VerificationRun:
        async with Session(
            record.gateway_url, trust=trust_anchors(paths), policy=ClientPolicy(snp=SnpPolicy())
        ) as s:
            return await s.verify()

    return asyncio.run(go())


def down(paths: StatePaths, *, timeout: float = 15.0) -> bool:
    """Stop the gateway and its engine; True when something was running."""
    pid = _pid(paths)
    if pid is None:
        paths.pid.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid(paths) is not None:
        _reap(pid)
        time.sleep(0.1)
    if _pid(paths) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    paths.pid.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def gateway_status(paths: StatePaths) -> dict[str, object]:
    """What `status` shows: read from the public endpoints only, plus our own records."""
    out: dict[str, object] = {
        "state": "not-provisioned",
        "mode": None,
        "gateway_url": None,
        "vm": False,
    }
    try:
        record = ApplianceRecord.load(paths.record)
    except OpenPCCError:
        return out
    out.update(mode=record.mode, gateway_url=record.gateway_url, engine=record.engine)
    vkey = paths.log / "log.vkey"
    out["log_vkey"] = vkey.read_text().strip() if vkey.exists() else None
    # `up --vm`: the sealed image in an emulated VM; pid is QEMU's.
    out["vm"] = record.vm
    if record.vm:
        out.update(vm_accel=record.vm_accel, vm_image=record.vm_image)
    pid = vm_pid(paths.vm) if record.vm else _pid(paths)
    out["pid"] = pid
    try:
        r = httpx.get(record.gateway_url + "/healthz", timeout=3.0)
        health = r.json()
        out["state"] = "up" if r.status_code == 200 else "degraded"
        out["health"] = health
    except (httpx.HTTPError, json.JSONDecodeError):
        out["state"] = "down" if pid is None else "starting"
    return out
