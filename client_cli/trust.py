"""The client's trust store, policy and checkpoint memory, in the user's config directory.

Layout (``$OPENPCC_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/openpcc``, else ``~/.config/openpcc``)::

    log-keys.txt          transparency-log verifier keys (C2SP name+hash+base64), one a line
    simulation-roots.pem  SIMULATED evidence roots: only after `openpcc trust --simulated`; a root
                          named CN="Intel SGX Root CA" anchors sim-tdx quotes only, every other
                          root sim-sev-snp reports and sim-nvidia GPU evidence
    policy.toml           optional policy (strict: unknown keys, an empty file are errors)
    checkpoints/*.txt     the last checkpoint accepted per log origin (refuses rollbacks, forks)

The pinned AMD, Intel and NVIDIA roots come from the package, never from this directory or the
network.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from attest import tlog
from attest.bundle import SKIPPABLE_CHECKS, ClientPolicy, TrustAnchors
from attest.errors import ParseError, VerificationError
from attest.nvgpu import pinned_nvidia_roots
from attest.sevsnp.validate import SnpPolicy
from attest.sevsnp.verify import load_certificates, pinned_roots
from attest.tdx.validate import TdxPolicy
from attest.tdx.verify import INTEL_ROOT_SUBJECT_CN, pinned_intel_roots

__all__ = [
    "FileCheckpointStore",
    "TrustStore",
    "config_dir",
    "is_tdx_root",
    "load_policy",
]


def config_dir() -> Path:
    env = os.environ.get("OPENPCC_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "openpcc"


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class TrustStore:
    directory: Path

    @classmethod
    def default(cls) -> TrustStore:
        return cls(config_dir())

    @property
    def log_keys_path(self) -> Path:
        return self.directory / "log-keys.txt"

    @property
    def simulation_path(self) -> Path:
        return self.directory / "simulation-roots.pem"

    @property
    def policy_path(self) -> Path:
        return self.directory / "policy.toml"

    def log_keys(self) -> list[tlog.VerifierKey]:
        if not self.log_keys_path.exists():
            return []
        lines = [ln.strip() for ln in self.log_keys_path.read_text().splitlines()]
        return [tlog.VerifierKey.parse(ln) for ln in lines if ln and not ln.startswith("#")]

    def add_log_key(self, key: str) -> tlog.VerifierKey:
        vkey = tlog.VerifierKey.parse(key.strip())
        existing = [k.encode() for k in self.log_keys()]
        if vkey.encode() not in existing:
            _write_private(self.log_keys_path, "\n".join([*existing, vkey.encode()]) + "\n")
        return vkey

    def simulation_roots(self) -> list[x509.Certificate]:
        if not self.simulation_path.exists():
            return []
        return load_certificates(self.simulation_path.read_bytes())

    def trust_simulation(self, pem: bytes) -> list[x509.Certificate]:
        certs = load_certificates(pem)
        for c in certs:
            if c.issuer != c.subject:
                raise ParseError(f"{c.subject.rfc4514_string()} is not a self-signed root")
        _write_private(self.simulation_path, pem.decode())
        return certs

    def untrust_simulation(self) -> bool:
        if self.simulation_path.exists():
            self.simulation_path.unlink()
            return True
        return False

    def anchors(self) -> TrustAnchors:
        roots = self.simulation_roots()
        tdx = tuple(c for c in roots if is_tdx_root(c))
        sim = tuple(c for c in roots if not is_tdx_root(c))
        return TrustAnchors(
            amd_roots=tuple(pinned_roots()),
            nvidia_roots=tuple(pinned_nvidia_roots()),
            log_keys=tuple(self.log_keys()),
            simulation_snp_roots=sim,
            simulation_gpu_roots=sim,
            intel_roots=tuple(pinned_intel_roots()),
            simulation_tdx_roots=tdx,
        )

    def checkpoints(self) -> FileCheckpointStore:
        return FileCheckpointStore(self.directory / "checkpoints", self.log_keys())


def is_tdx_root(cert: x509.Certificate) -> bool:
    """A simulation root shaped like Intel's (CN "Intel SGX Root CA"): it anchors sim-tdx only."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return any(n.value == INTEL_ROOT_SUBJECT_CN for n in names)


class FileCheckpointStore:
    """The last accepted checkpoint per origin; a stored note is re-verified when read."""

    def __init__(self, directory: Path, keys: list[tlog.VerifierKey]) -> None:
        self._dir = directory
        self._keys = keys

    def _path(self, origin: str) -> Path:
        return self._dir / (hashlib.sha256(origin.encode()).hexdigest()[:32] + ".txt")

    def last(self, origin: str) -> tlog.Checkpoint | None:
        path = self._path(origin)
        if not path.exists():
            return None
        try:
            return tlog.open_checkpoint(path.read_text(), self._keys)
        except (ParseError, VerificationError) as e:
            raise VerificationError(
                "transparency-log",
                f"the stored checkpoint {path} no longer verifies: {e}",
                hint="the log key changed or the file was edited; inspect it before deleting it",
            ) from e

    def save(self, checkpoint: tlog.Checkpoint) -> None:
        _write_private(self._path(checkpoint.origin), checkpoint.note)


_POLICY_SECTIONS = {"snp", "tdx", "gpu", "skip"}


def load_policy(path: Path | None) -> ClientPolicy:
    """The policy file, or the floor when there is none.

    Strict: an empty file, an unknown section or key is an error naming it; checks may be
    skipped only by naming them under ``[skip] checks = [...]``.
    """
    if path is None or not path.exists():
        return ClientPolicy(snp=SnpPolicy())
    hint = f"fix {path}, or remove it to use the built-in floor"

    def bad(message: str) -> ParseError:
        return ParseError(f"policy {path}: {message}", hint=hint)

    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"cannot be read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise bad(f"is not valid TOML: {e}") from e
    if not data:
        raise ParseError(
            f"policy {path} is empty: remove it to use the floor, or state a policy", hint=hint
        )
    unknown = set(data) - _POLICY_SECTIONS
    if unknown:
        raise bad(f"unknown section(s) {sorted(unknown)}")
    for name in _POLICY_SECTIONS & set(data):
        if not isinstance(data[name], dict):
            raise bad(f"[{name}] must be a table")
    gpu = dict(data.get("gpu", {}))
    min_gpus = gpu.pop("min_gpus", 1)
    if gpu:
        raise bad(f"unknown key(s) in [gpu]: {sorted(gpu)}")
    skip = dict(data.get("skip", {}))
    checks = skip.pop("checks", [])
    if skip:
        raise bad(f"unknown key(s) in [skip]: {sorted(skip)}")
    if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
        raise bad("[skip] checks must be a list of check names")
    if isinstance(min_gpus, bool) or not isinstance(min_gpus, int) or min_gpus < 0:
        raise bad("[gpu] min_gpus must be a non-negative integer")
    unskippable = set(checks) - SKIPPABLE_CHECKS
    if unskippable:
        raise bad(
            f"check(s) {sorted(unskippable)} cannot be skipped "
            f"(only {sorted(SKIPPABLE_CHECKS)} can)"
        )
    try:
        snp = SnpPolicy.from_mapping(data["snp"]) if "snp" in data else SnpPolicy()
    except ParseError as e:
        raise bad(f"[snp] {e}") from e
    try:
        tdx = TdxPolicy.from_mapping(data["tdx"]) if "tdx" in data else None
    except ParseError as e:
        raise bad(f"[tdx] {e}") from e
    try:
        return ClientPolicy(snp=snp, min_gpus=min_gpus, skip=frozenset(checks), tdx=tdx)
    except ParseError as e:
        raise bad(str(e).removeprefix("policy: ")) from e
