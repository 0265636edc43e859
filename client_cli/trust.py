"""The client's trust store, policy and checkpoint memory, in the user's config directory.

Layout (``$OPENPCC_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/openpcc``, else ``~/.config/openpcc``)::

    log-keys.txt          transparency-log verifier keys (C2SP name+hash+base64), one a line
    simulation-roots.pem  SIMULATED evidence roots: only after `openpcc trust --simulated`; a root
                          named CN="Intel SGX Root CA" anchors sim-tdx quotes only, every other
                          root sim-sev-snp reports and sim-nvidia GPU evidence
    policy.toml           optional policy (strict: unknown keys, an empty file are errors)
    checkpoints/*.txt     the last checkpoint accepted per log origin (refuses rollbacks, forks)
    checkpoints/.lock     held while a checkpoint is saved (several client processes may run)

The pinned AMD, Intel and NVIDIA roots come from the package, never from this directory or the
network.

The policy may name reference values, files the operator saved from Intel and NVIDIA (paths are
relative to the policy file)::

    [tdx]
    collateral = "collateral"         # tcb_info.json, qe_identity.json, tcb_signing_chain.pem
    [gpu]
    rims = ["driver.swidtag", "vbios.swidtag"]
    rim_root = "rim-root.pem"         # optional: instead of the pinned NVIDIA RIM root

Both are read when the policy is loaded, and a file that cannot be read or parsed is an error
naming it. RIM signatures are verified then (to the pinned root, or ``rim_root``); collateral is
evaluated against each quote, its signing chain to the roots that anchor the quote.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from attest import tlog
from attest.bundle import SKIPPABLE_CHECKS, ClientPolicy, TrustAnchors
from attest.crl import load_crl
from attest.errors import ParseError, VerificationError
from attest.nvgpu import VerifiedRim, pinned_nvidia_roots, pinned_rim_roots, verify_rim
from attest.pemfile import read_pem_certificates
from attest.sevsnp.validate import SnpPolicy
from attest.sevsnp.verify import load_certificates, pinned_roots
from attest.tdx.collateral import (
    PCK_CRL_FILES,
    QE_IDENTITY_FILE,
    ROOT_CA_CRL_FILES,
    TCB_INFO_FILE,
    TCB_SIGNING_CHAIN_FILE,
    TdxCollateral,
    load_collateral_dir,
    load_qe_identity,
    load_tcb_info,
    load_tcb_signing_chain,
)
from attest.tdx.validate import TdxPolicy
from attest.tdx.verify import INTEL_ROOT_SUBJECT_CN, pinned_intel_roots

__all__ = [
    "FileCheckpointStore",
    "PolicyFiles",
    "TrustStore",
    "config_dir",
    "is_tdx_root",
    "load_policy",
    "load_policy_file",
    "reference_summary",
    "replace_durably",
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
        path = self.log_keys_path
        if not path.exists():
            return []
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            return [tlog.VerifierKey.parse(ln) for ln in lines if ln and not ln.startswith("#")]
        except (OSError, UnicodeDecodeError, ParseError) as e:
            raise _trust_file_error(path, e, "one C2SP verifier key per line") from e

    def add_log_key(self, key: str) -> tlog.VerifierKey:
        vkey = tlog.VerifierKey.parse(key.strip())
        existing = [k.encode() for k in self.log_keys()]
        if vkey.encode() not in existing:
            _write_private(self.log_keys_path, "\n".join([*existing, vkey.encode()]) + "\n")
        return vkey

    def simulation_roots(self) -> list[x509.Certificate]:
        path = self.simulation_path
        if not path.exists():
            return []
        try:
            return load_certificates(path.read_bytes())
        except (OSError, ParseError) as e:
            raise _trust_file_error(
                path, e, "PEM certificates (`openpcc trust --simulation`)"
            ) from e

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
    """The last accepted checkpoint per origin; a stored note is re-verified when read.

    Several processes may share the directory (``openpcc proxy`` and ``openpcc chat`` at once).
    A save is made under an exclusive lock on ``.lock`` in the directory: it re-reads what is
    stored, replaces only what this store's :meth:`last` returned (see :meth:`save`), and writes
    a unique temporary file, fsynced, then renamed over the old one (the directory fsynced too).
    A reader therefore sees the old note or the new one, whole, never a torn file, and a stored
    size never goes backwards. Reads take no lock. File-system failures are verification
    failures of the transparency-log check (one line), never tracebacks.
    """

    LOCK_NAME = ".lock"

    def __init__(self, directory: Path, keys: list[tlog.VerifierKey]) -> None:
        self._dir = directory
        self._keys = keys
        # What last() returned per origin: save() stores only over exactly that.
        self._seen: dict[str, tuple[int, bytes] | None] = {}

    def _path(self, origin: str) -> Path:
        return self._dir / (hashlib.sha256(origin.encode()).hexdigest()[:32] + ".txt")

    def last(self, origin: str) -> tlog.Checkpoint | None:
        cp = self._read(origin)
        self._seen[origin] = None if cp is None else (cp.size, cp.root_hash)
        return cp

    def _read(self, origin: str) -> tlog.Checkpoint | None:
        path = self._path(origin)
        try:
            if not path.exists():
                return None
            text = path.read_text()
        except OSError as e:
            raise _store_error("read", path, e) from e
        try:
            return tlog.open_checkpoint(text, self._keys)
        except (ParseError, VerificationError) as e:
            raise VerificationError(
                "transparency-log",
                f"the stored checkpoint {path} no longer verifies: {e}",
                hint="the log key changed or the file was edited; inspect it before deleting it",
            ) from e

    def save(self, checkpoint: tlog.Checkpoint) -> None:
        """Store ``checkpoint``, which the verifier proved consistent with what :meth:`last`
        returned to it.

        Another client process may have stored a checkpoint of the same log meanwhile. The same
        one is fine; the same size with another root is a fork, refused; any other change means
        the two were never proved consistent with each other, so the verification is refused
        and must be run again (it then checks against the newer one). A stored tree never
        shrinks and is never replaced by one not proved to extend it.
        """
        origin = checkpoint.origin
        path = self._path(origin)
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked():
                stored = self._read(origin)
                now = None if stored is None else (stored.size, stored.root_hash)
                if stored is not None and now == (checkpoint.size, checkpoint.root_hash):
                    return
                read = self._seen.get(origin)
                if now != read:
                    if stored is not None and stored.size == checkpoint.size:
                        raise VerificationError(
                            "transparency-log",
                            f"log forked: a different root for size {checkpoint.size} than the "
                            "one another client process stored (possible attack)",
                        )
                    raise VerificationError(
                        "transparency-log",
                        "another client process stored a checkpoint of this log "
                        f"(size {stored.size if stored else 0}) while this one was verified "
                        f"against size {read[0] if read else 0}",
                        hint="verify again: it is then checked against the newer checkpoint",
                    )
                replace_durably(path, checkpoint.note)
                self._seen[origin] = (checkpoint.size, checkpoint.root_hash)
        except OSError as e:
            raise _store_error("store", path, e) from e

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._dir / self.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _store_error(what: str, path: Path, e: OSError) -> VerificationError:
    return VerificationError(
        "transparency-log",
        f"cannot {what} the checkpoint {path}: {e.strerror or e}",
        hint=f"check the permissions and free space of {path.parent}",
    )


def replace_durably(path: Path, data: str) -> None:
    """Write ``path`` whole or not at all: a unique temporary file (0600, as mkstemp makes it),
    fsynced, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_POLICY_SECTIONS = {"snp", "tdx", "gpu", "skip"}
_Bad = Callable[..., ParseError]


@dataclass(frozen=True, slots=True)
class PolicyFiles:
    """Where a policy's reference values were read from (``openpcc trust`` shows them)."""

    path: Path | None = None
    tdx_collateral: Path | None = None
    gpu_rims: tuple[Path, ...] = ()
    rim_root: Path | None = None
    snp_crls: tuple[Path, ...] = ()


def _trust_file_error(path: Path, e: Exception, holds: str) -> ParseError:
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ParseError(
        f"trust store {path}: {why}",
        hint=f"the file holds {holds}; fix or remove it",
    )


def load_policy(path: Path | None, *, required: bool = False) -> ClientPolicy:
    """The policy file, or the floor when there is none.

    Strict: an empty file, an unknown section or key is an error naming it; checks may be
    skipped only by naming them under ``[skip] checks = [...]``. A policy the user named
    (``required``: ``--policy``) must exist, and so must the target of a policy.toml link: a
    typo never silently falls back to the floor.
    """
    return load_policy_file(path, required=required)[0]


def load_policy_file(
    path: Path | None, *, required: bool = False
) -> tuple[ClientPolicy, PolicyFiles]:
    """:func:`load_policy`, and the files its reference values came from."""
    if path is not None and not path.exists() and (required or path.is_symlink()):
        raise ParseError(
            f"policy {path}: no such file" + (" (a link to nothing)" if path.is_symlink() else ""),
            hint="name an existing policy file, or leave --policy out for the built-in floor"
            if required
            else f"fix the link {path}, or remove it to use the built-in floor",
        )
    if path is None or not path.exists():
        return ClientPolicy(snp=SnpPolicy()), PolicyFiles()
    hint = f"fix {path}, or remove it to use the built-in floor"

    def bad(message: str, more: str = "") -> ParseError:
        # One line, whatever a parser's own message held (lxml and signxml span lines).
        return ParseError(f"policy {path}: {' '.join(message.splitlines())}", hint=more or hint)

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
    rims_value = gpu.pop("rims", None)
    rim_root_value = gpu.pop("rim_root", None)
    require_cc = gpu.pop("require_cc", True)
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
    if not isinstance(require_cc, bool):
        raise bad("[gpu] require_cc must be true or false")
    unskippable = set(checks) - SKIPPABLE_CHECKS
    if unskippable:
        raise bad(
            f"check(s) {sorted(unskippable)} cannot be skipped "
            f"(only {sorted(SKIPPABLE_CHECKS)} can)"
        )
    snp_table = dict(data.get("snp", {}))
    crls_value = snp_table.pop("crls", None)
    try:
        # A [snp] table holding only CRLs keeps the floor; an empty one is an error.
        snp = (
            SnpPolicy.from_mapping(snp_table)
            if snp_table or ("snp" in data and crls_value is None)
            else SnpPolicy()
        )
    except ParseError as e:
        raise bad(f"[snp] {e}") from e
    tdx_table = dict(data.get("tdx", {}))
    collateral_value = tdx_table.pop("collateral", None)
    try:
        # A [tdx] table holding only the collateral keeps the floor; an empty one is an error.
        tdx = (
            TdxPolicy.from_mapping(tdx_table)
            if tdx_table or ("tdx" in data and collateral_value is None)
            else None
        )
    except ParseError as e:
        raise bad(f"[tdx] {e}") from e

    base = path.parent
    directory = (
        _policy_path(base, collateral_value, "[tdx] collateral", bad)
        if collateral_value is not None
        else None
    )
    collateral = _load_collateral(directory, bad) if directory is not None else None
    if rim_root_value is not None and rims_value is None:
        raise bad("[gpu] rim_root is given without [gpu] rims")
    rims: tuple[VerifiedRim, ...] = ()
    rim_paths: tuple[Path, ...] = ()
    root_path: Path | None = None
    if rims_value is not None:
        if (
            not isinstance(rims_value, list)
            or not rims_value
            or not all(isinstance(r, str) for r in rims_value)
        ):
            raise bad("[gpu] rims must be a non-empty list of RIM file paths")
        if len(set(rims_value)) != len(rims_value):
            raise bad("[gpu] rims lists a file twice")
        if rim_root_value is not None:
            root_path = _policy_path(base, rim_root_value, "[gpu] rim_root", bad)
        rim_roots = _load_rim_root(root_path, bad) if root_path is not None else pinned_rim_roots()
        rim_paths = tuple(_policy_path(base, r, "[gpu] rims", bad) for r in rims_value)
        # The label is the path as the policy spells it: what a GPU check failure names.
        rims = tuple(
            _load_rim(p, label, rim_roots, bad)
            for p, label in zip(rim_paths, rims_value, strict=True)
        )
    crl_paths: tuple[Path, ...] = ()
    crls: tuple[bytes, ...] = ()
    if crls_value is not None:
        if (
            not isinstance(crls_value, list)
            or not crls_value
            or not all(isinstance(c, str) for c in crls_value)
        ):
            raise bad("[snp] crls must be a non-empty list of CRL file paths")
        crl_paths = tuple(_policy_path(base, c, "[snp] crls", bad) for c in crls_value)
        crls = tuple(_load_snp_crl(p, bad) for p in crl_paths)
    files = PolicyFiles(
        path=path,
        tdx_collateral=directory,
        gpu_rims=rim_paths,
        rim_root=root_path,
        snp_crls=crl_paths,
    )
    try:
        policy = ClientPolicy(
            snp=snp,
            min_gpus=min_gpus,
            skip=frozenset(checks),
            tdx=tdx,
            tdx_collateral=collateral,
            gpu_rims=rims,
            require_gpu_cc=require_cc,
            snp_crls=crls,
        )
    except ParseError as e:
        raise bad(str(e).removeprefix("policy: "), e.hint) from e
    return policy, files


def _policy_path(base: Path, value: object, key: str, bad: _Bad) -> Path:
    if not isinstance(value, str) or not value:
        raise bad(f"{key} must be a path (relative to the policy file)")
    return (base / Path(value).expanduser()).resolve()


def _load_collateral(directory: Path, bad: _Bad) -> TdxCollateral:
    """Read and parse the collateral files (the CRLs too, when there are); signatures are
    checked per quote."""
    try:
        collateral = load_collateral_dir(directory)
    except ParseError as e:
        raise bad(f"[tdx] collateral: {e}", e.hint) from e
    documents: list[tuple[str, Callable[[], object]]] = [
        (TCB_INFO_FILE, lambda: load_tcb_info(collateral.tcb_info)),
        (QE_IDENTITY_FILE, lambda: load_qe_identity(collateral.qe_identity)),
        (TCB_SIGNING_CHAIN_FILE, lambda: load_tcb_signing_chain(collateral.issuer_chain_pem)),
    ]
    for names, data in (
        (PCK_CRL_FILES, collateral.pck_crl),
        (ROOT_CA_CRL_FILES, collateral.root_ca_crl),
    ):
        if data is not None:
            name = next(n for n in names if (directory / n).exists())
            documents.append((name, functools.partial(load_crl, data)))
    for name, load in documents:
        try:
            load()
        except ParseError as e:
            raise bad(f"[tdx] collateral {directory / name}: {e}", e.hint) from e
    return collateral


def _load_snp_crl(path: Path, bad: _Bad) -> bytes:
    """An AMD CRL's bytes, checked to parse; its signature is checked per report (the root
    it must chain to depends on the node's product)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise bad(f"[snp] crls: cannot read {path}: {e.strerror or e}") from e
    try:
        load_crl(data)
    except ParseError as e:
        raise bad(
            f"[snp] crls {path}: {e}", "AMD KDS serves each product's CRL at /vcek/v1/<product>/crl"
        ) from e
    return data


def _load_rim_root(path: Path, bad: _Bad) -> list[x509.Certificate]:
    try:
        return read_pem_certificates(path, "[gpu] rim_root")
    except ParseError as e:
        raise bad(str(e)) from e


def _load_rim(path: Path, label: str, roots: list[x509.Certificate], bad: _Bad) -> VerifiedRim:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise bad(f"[gpu] rims: cannot read {path}: {e.strerror or e}") from e
    try:
        return verify_rim(data, label=label, roots=roots)
    except VerificationError as e:
        hint = e.hint or (
            "a RIM must chain to the pinned NVIDIA CoRIM signing Root CA, or to the "
            "[gpu] rim_root the policy names"
        )
        raise bad(f"[gpu] rims {path}: {e.check}: {e.detail}", hint) from e
    except ParseError as e:
        raise bad(f"[gpu] rims {path}: {e}", e.hint) from e


def _crl_summary(file: str | None, raw: bytes) -> dict[str, object]:
    crl = load_crl(raw)
    summary: dict[str, object] = {"file": file} if file is not None else {}
    return {
        **summary,
        "issuer": crl.issuer.rfc4514_string(),
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
        "revoked": len(crl),
    }


def reference_summary(policy: ClientPolicy, files: PolicyFiles) -> dict[str, object]:
    """What reference values the policy carries, for ``openpcc trust``."""
    collateral: dict[str, object] | None = None
    if policy.tdx_collateral is not None:
        info = load_tcb_info(policy.tdx_collateral.tcb_info)
        qe = load_qe_identity(policy.tdx_collateral.qe_identity)
        collateral = {
            "directory": str(files.tdx_collateral) if files.tdx_collateral else None,
            "fmspc": info.fmspc.hex(),
            "tcb_evaluation_data_number": info.tcb_evaluation_data_number,
            "tcb_info_next_update": info.next_update.isoformat(),
            "qe_identity_next_update": qe.next_update.isoformat(),
            "crls": [
                _crl_summary(None, data)
                for data in (policy.tdx_collateral.pck_crl, policy.tdx_collateral.root_ca_crl)
                if data is not None
            ],
        }
    paths = (
        [str(p) for p in files.gpu_rims]
        if len(files.gpu_rims) == len(policy.gpu_rims)
        else [r.rim.label for r in policy.gpu_rims]
    )
    crls = [
        _crl_summary(str(files.snp_crls[i]) if i < len(files.snp_crls) else None, raw)
        for i, raw in enumerate(policy.snp_crls)
    ]
    return {
        "snp_crls": crls,
        "tdx_collateral": collateral,
        "gpu_rims": [
            {
                "file": file,
                "version": r.rim.version,
                "tag_id": r.rim.tag_id,
                "active_measurements": sum(m.active for m in r.rim.measurements),
                "signer": r.signer.subject.rfc4514_string(),
                "root": r.root.subject.rfc4514_string(),
            }
            for r, file in zip(policy.gpu_rims, paths, strict=True)
        ],
        "rim_root": str(files.rim_root) if files.rim_root is not None else None,
    }
