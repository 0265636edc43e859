"""The provisioning disk of a built image: what the VM gets that its measurement does not cover.

It holds only data a client checks for itself (the release manifest, the transparency log) and,
for a simulated TEE, the simulated evidence keys. The log's signing key travels with the log
because the gateway serves checkpoints from it; on a real deployment the log belongs to a
separate party. Nothing here can change what the sealed root runs: the engine, its arguments and
the evidence provider are in ``/etc/openpcc/gateway.toml`` inside the measured root.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import ParseError
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.sim import SimulatedSnpSigner
from cvm_boot.image.build import _normalize, _squashfs
from cvm_boot.manifest import canonical_json
from cvm_boot.tlog import TransparencyLog

__all__ = ["Provisioned", "provision_simulated"]


@dataclass(frozen=True, slots=True)
class Provisioned:
    image: Path
    """provision.img: the squashfs the VM mounts at /run/openpcc/provision."""
    sim_trust: Path
    """PEM: the simulated SNP and GPU roots a client must trust explicitly."""
    log_vkey: str
    log_index: int
    manifest: Path


def provision_simulated(
    build_dir: Path,
    into: Path,
    *,
    epoch: int = 0,
    sim_dir: Path | None = None,
    log_dir: Path | None = None,
) -> Provisioned:
    """Create (or reuse) simulated evidence keys and a log holding the build's manifest.

    By default both live under ``into/state``. ``openpcc-appliance up --vm`` passes the host
    appliance's own ``sim_dir`` and ``log_dir`` instead, so the VM and the local-process
    appliance share one simulation root and one log (one origin, one key): a client that trusts
    one trusts the other, and its stored checkpoint stays consistent across both.
    """
    manifest = json.loads((build_dir / "manifest.json").read_text())
    if not str(manifest.get("tee", "")).startswith("sim-"):
        raise ParseError("only a simulated-TEE image is provisioned with simulated evidence")
    state = into / "state"
    sim_dir = sim_dir or state / "sim"
    log_dir = log_dir or state / "log"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sim_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    snp_dir, gpu_dir = sim_dir / "snp", sim_dir / "gpu"
    snp = (
        SimulatedSnpSigner.load(snp_dir)
        if snp_dir.exists()
        else SimulatedSnpSigner.generate(snp_dir)
    )
    gpu = SimulatedGpu.load(gpu_dir) if gpu_dir.exists() else SimulatedGpu.generate(gpu_dir)
    trust = into / "sim-trust.pem"
    trust.write_bytes(
        snp.ark_certificate().public_bytes(Encoding.PEM)
        + gpu.root_certificate().public_bytes(Encoding.PEM)
    )
    data = canonical_json(manifest)
    (state / "manifest.json").write_bytes(data + b"\n")
    log = TransparencyLog.open(log_dir)
    index = log.find(data)
    if index is None:
        index = log.append(data)
    # What the VM finds at /run/openpcc/provision (the sealed gateway.toml names these paths).
    tree = into / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(mode=0o700)
    shutil.copytree(snp_dir, tree / "sim" / "snp")
    shutil.copytree(gpu_dir, tree / "sim" / "gpu")
    shutil.copytree(log_dir, tree / "log")
    shutil.copyfile(state / "manifest.json", tree / "manifest.json")
    _normalize(tree, epoch)
    _squashfs(tree, into / "provision.img", epoch)
    shutil.rmtree(tree)
    return Provisioned(
        into / "provision.img", trust, log.verifier_key, index, state / "manifest.json"
    )
