"""The provisioning disk of a built image: what the VM gets that its measurement does not cover.

It holds only data a client checks for itself (the release manifest, the transparency log) and,
for a simulated TEE, the simulated evidence keys. Nothing here can change what the sealed root
runs: the engine, its arguments and the evidence provider are in ``/etc/openpcc/gateway.toml``
inside the measured root, the guest mounts the disk ``ro,nodev,nosuid,noexec``, and its PID 1
(``supervise.py``) copies only the allowed names from it, as plain files, to a ``noexec`` tmpfs,
giving the gateway and the engine an empty home: whatever else a host writes to the disk is
ignored in the guest, not only refused here.

Two variants:

- :func:`provision_simulated` (``up --vm``, no TEE): the simulated evidence keys and the whole
  log directory, signing key included, because the simulated gateway serves checkpoints from it.
- :func:`provision_host` (a real SEV-SNP / TDX launch): public data only, an allow-list of
  files (:data:`HOST_FILES`) that :func:`read_provisioning` enforces when it reads a disk back:
  the release manifest, the log's entries, its signed checkpoint and verifier key, and
  ``tlog.json``, the bundle's ``tlog`` object (index, tree size, inclusion proof, checkpoint)
  computed on the host. No simulation key and no log signing key is ever written to it.

Why the real-host disk need not be measured: every byte on it is something the client verifies
itself against what it already trusts. The manifest is accepted only if its ``measurement``
equals the MEASUREMENT in the hardware-signed report (which the host cannot forge) and it is in
the log under a checkpoint signed by the log key the client pinned, consistent with every
checkpoint it saw before; REPORT_DATA binds the manifest the gateway serves, so a swapped
manifest is refused. A host that puts anything else on the disk can only make verification fail
(denial of service, which it can always cause by not starting the VM); it cannot make a client
accept a release that is not logged or a measurement the hardware did not report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import ParseError, VerificationError
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.tlog import VerifierKey, verify_log_entry
from cvm_boot.image.build import _normalize, _squashfs
from cvm_boot.manifest import canonical_json
from cvm_boot.tlog import (
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    VKEY_FILE,
    TransparencyLog,
    bundle_entry,
)

__all__ = [
    "HOST_FILES",
    "HostProvisioned",
    "Provisioned",
    "ProvisioningData",
    "provision_host",
    "provision_simulated",
    "read_provisioning",
    "read_provisioning_image",
]

MANIFEST_FILE = "manifest.json"
TLOG_FILE = "tlog.json"
#: Every file a real host's provisioning disk holds, and nothing else.
HOST_FILES = frozenset(
    {
        MANIFEST_FILE,
        TLOG_FILE,
        f"log/{ENTRIES_FILE}",
        f"log/{CHECKPOINT_FILE}",
        f"log/{VKEY_FILE}",
    }
)
# Markers of key material; a file holding one is refused even if its name is allowed.
_SECRET_MARKERS = (b"PRIVATE+KEY", b"PRIVATE KEY-----")


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
    for folder in (into, state, sim_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)  # mkdir's mode is the umask's, and only for the last folder
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
    _private(tree)  # the log signing key and simulated keys: root-only in the guest too
    image = into / "provision.img"
    _squashfs(tree, image, epoch)
    image.chmod(0o600)
    shutil.rmtree(tree)
    return Provisioned(
        into / "provision.img", trust, log.verifier_key, index, state / "manifest.json"
    )


def _private(tree: Path) -> None:
    """Folders 0700 and files 0600 (after ``_normalize``'s reproducible 0755/0644)."""
    for p in [tree, *tree.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o700 if p.is_dir() else 0o600)


# -- the real host's disk: public data only ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostProvisioned:
    image: Path
    """provision.img: the squashfs attached read-only with serial ``openpcc-provision``."""
    log_index: int
    tree_size: int


@dataclass(frozen=True, slots=True)
class ProvisioningData:
    """A provisioning disk's content, read back and checked by :func:`read_provisioning`."""

    manifest: dict[str, object]
    manifest_bytes: bytes
    tlog: dict[str, object]
    log_vkey: str


def _check_public(data: bytes, name: str) -> None:
    for marker in _SECRET_MARKERS:
        if marker in data:
            raise ParseError(f"provisioning disk: {name} holds key material; it must hold none")


def provision_host(
    manifest: bytes, log_dir: Path, into: Path, *, epoch: int = 0
) -> HostProvisioned:
    """Write ``into/provision.img`` for a real launch of the release whose canonical manifest
    is ``manifest`` (already appended to the log in ``log_dir``).

    The log is opened read-only here: only its entries, checkpoint and verifier key are copied,
    never ``log.key``. The tree is read back through :func:`read_provisioning` before it is
    packed, so a disk that a client would refuse is never written.
    """
    parsed = json.loads(manifest)
    if str(parsed.get("tee", "")).startswith("sim-"):
        raise ParseError("a simulated release is provisioned with provision_simulated")
    if canonical_json(parsed) != manifest:
        raise ParseError("the release manifest is not in canonical JSON")
    log = TransparencyLog.open(log_dir)
    entry = bundle_entry(log, manifest)
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    tree = into / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "log").mkdir(parents=True, mode=0o700)
    (tree / MANIFEST_FILE).write_bytes(manifest + b"\n")
    (tree / TLOG_FILE).write_bytes(canonical_json(entry) + b"\n")
    for name in (ENTRIES_FILE, VKEY_FILE):
        shutil.copyfile(log_dir / name, tree / "log" / name)
    # The checkpoint the entry was proven against, not a newer one another process signed since.
    (tree / "log" / CHECKPOINT_FILE).write_text(str(entry["checkpoint"]))
    try:
        read_provisioning(tree, log_key=log.verifier_key)
        _normalize(tree, epoch)
        _squashfs(tree, into / "provision.img", epoch)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return HostProvisioned(into / "provision.img", int(str(entry["index"])), log.size)


def _files(tree: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        if p.is_symlink():
            raise ParseError(f"provisioning disk: {rel} is a link")
        if p.is_file():
            out[rel] = p
        elif not p.is_dir():
            raise ParseError(f"provisioning disk: {rel} is not a plain file")
    return out


def read_provisioning(tree: Path, *, log_key: str | None = None) -> ProvisioningData:
    """Read a real host's provisioning tree and check it as the guest and a client would.

    Exactly :data:`HOST_FILES`, no link, no key material; the manifest is canonical JSON of a
    non-simulated release; ``tlog.json`` proves it is in the log under the stored checkpoint,
    signed by the stored verifier key (``log_key``, when given, must be that key).
    """
    files = _files(tree)
    if set(files) != HOST_FILES:
        extra = sorted(set(files) - HOST_FILES)
        missing = sorted(HOST_FILES - set(files))
        raise ParseError(
            "provisioning disk: "
            + "; ".join(
                part
                for part in (
                    f"unexpected {', '.join(extra)}" if extra else "",
                    f"missing {', '.join(missing)}" if missing else "",
                )
                if part
            )
        )
    raw = {rel: p.read_bytes() for rel, p in files.items()}
    for rel, data in raw.items():
        _check_public(data, rel)
    try:
        manifest = json.loads(raw[MANIFEST_FILE])
        tlog = json.loads(raw[TLOG_FILE])
        vkey_text = raw[f"log/{VKEY_FILE}"].decode().strip()
        checkpoint = raw[f"log/{CHECKPOINT_FILE}"].decode()
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ParseError(f"provisioning disk: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(tlog, dict):
        raise ParseError("provisioning disk: manifest.json and tlog.json must be JSON objects")
    data = canonical_json(manifest)
    if raw[MANIFEST_FILE] != data + b"\n":
        raise ParseError("provisioning disk: manifest.json is not canonical JSON")
    if str(manifest.get("tee", "")).startswith("sim-"):
        raise ParseError("provisioning disk: the manifest is a simulated release")
    if log_key is not None and vkey_text != log_key:
        raise VerificationError("tlog-key", "the disk's log key is not the host log's key")
    if tlog.get("checkpoint") != checkpoint:
        raise ParseError("provisioning disk: tlog.json and log.checkpoint differ")
    try:
        index, size = int(tlog["index"]), int(tlog["tree_size"])
        proof = [bytes.fromhex(h) for h in tlog["inclusion"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ParseError(f"provisioning disk: tlog.json is malformed ({e})") from e
    verify_log_entry(
        data,
        index=index,
        tree_size=size,
        inclusion=proof,
        checkpoint=checkpoint,
        keys=[VerifierKey.parse(vkey_text)],
    )
    return ProvisioningData(manifest, data, tlog, vkey_text)


def read_provisioning_image(image: Path, work: Path) -> ProvisioningData:
    """Unpack ``image`` (squashfs, with ``unsquashfs``) into ``work`` and read it back."""
    dest = work / "provision"
    shutil.rmtree(dest, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["unsquashfs", "-no-xattrs", "-quiet", "-d", str(dest), str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ParseError(f"unsquashfs {image} failed: {proc.stderr.strip()[-300:]}")
    return read_provisioning(dest)
