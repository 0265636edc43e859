"""Verify an attestation bundle (DESIGN.md sections 3 and 4); return what may be used.

The checks run in the contract's order; the first failure stops the run and every later check is
reported as not run. There is no way to obtain a :class:`VerifiedNode` other than
:func:`verify_bundle` succeeding, and the sealing code accepts nothing else, so an unverified
key cannot be encrypted to.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from cryptography import x509

from attest import binding, tlog
from attest.errors import OpenPCCError, ParseError, PolicyError, VerificationError
from attest.nvgpu import load_gpu_chain, parse_gpu_report, verify_gpu_report
from attest.sevsnp.abi import Report, parse_report
from attest.sevsnp.validate import SnpPolicy, validate_report
from attest.sevsnp.verify import load_certificates, verify_report
from server.ohttp import KeyConfig

__all__ = [
    "BUNDLE_FORMAT",
    "CHECK_ORDER",
    "SKIPPABLE_CHECKS",
    "CheckResult",
    "CheckpointStore",
    "ClientPolicy",
    "TrustAnchors",
    "VerificationRun",
    "VerifiedNode",
    "run_verification",
    "verify_bundle",
]

BUNDLE_FORMAT = "openpcc-attestation/1"
REAL_TEES = ("sev-snp",)
SIMULATED_TEES = ("sim-sev-snp",)

CHECK_ORDER: tuple[tuple[str, str], ...] = (
    ("report-parse", "1 report parses"),
    ("report-signature", "2 report signature"),
    ("cert-chain", "3 chain to vendor root"),
    ("tcb-consistency", "4 cert TCB = report"),
    ("policy", "5 policy"),
    ("measurement", "6a measurement"),
    ("transparency-log", "6b transparency log"),
    ("report-data", "7 REPORT_DATA binding"),
    ("gpu", "8 GPU evidence"),
    ("key-config", "9 key config"),
)
SKIPPABLE_CHECKS = frozenset({"gpu", "transparency-log"})

_SNP_CHECK_NAMES = {
    "signature": "report-signature",
    "chain": "cert-chain",
    "validity": "cert-chain",
    "crl": "cert-chain",
    "product": "cert-chain",
    "tcb": "tcb-consistency",
    "chip_id": "tcb-consistency",
}

Status = Literal["pass", "fail", "skip", "not-run"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.status == "pass",
            "status": self.status,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class TrustAnchors:
    """What the client trusts. Simulation roots stay empty unless the user trusted them."""

    amd_roots: tuple[x509.Certificate, ...]
    nvidia_roots: tuple[x509.Certificate, ...]
    log_keys: tuple[tlog.VerifierKey, ...]
    simulation_snp_roots: tuple[x509.Certificate, ...] = ()
    simulation_gpu_roots: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    snp: SnpPolicy
    min_gpus: int = 1
    skip: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = self.skip - SKIPPABLE_CHECKS
        if unknown:
            raise ParseError(
                f"policy: check(s) {sorted(unknown)} cannot be skipped "
                f"(only {sorted(SKIPPABLE_CHECKS)} can)"
            )


class CheckpointStore(Protocol):
    """The last checkpoint this client accepted, per log origin."""

    def last(self, origin: str) -> tlog.Checkpoint | None: ...

    def save(self, checkpoint: tlog.Checkpoint) -> None: ...


ConsistencyFetcher = Callable[[int, int], Sequence[bytes]]

_TOKEN = object()  # only run_verification holds it: the argument that mints a VerifiedNode
_MINTED = object()  # what a minted node carries; passing it back to __init__ is refused


@dataclass(frozen=True, slots=True)
class VerifiedNode:
    """A node that passed every required check: the only source of a key to encrypt to."""

    tee: str
    simulated: bool
    measurement: bytes
    key_config: KeyConfig
    key_config_raw: bytes
    manifest: Mapping[str, object]
    report: Report
    product: str
    gpus: tuple[Mapping[str, object], ...]
    log_index: int
    tree_size: int
    nonce: bytes | None
    checks: tuple[CheckResult, ...]
    verified_at: datetime
    _token: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        # dataclasses.replace() copies fields into a new __init__ call; swapping the minting
        # token for another marker means a copy with, say, another key config is refused too.
        if self._token is not _TOKEN:
            raise TypeError("VerifiedNode is only produced by attest.bundle.verify_bundle")
        object.__setattr__(self, "_token", _MINTED)

    @property
    def genuine(self) -> bool:
        """True for a node minted by verification (not a copy, not a hand-made instance)."""
        return self._token is _MINTED


@dataclass(slots=True)
class VerificationRun:
    """Every check's outcome, in order; ``node`` is set only when all required checks passed."""

    checks: list[CheckResult]
    node: VerifiedNode | None = None
    error: OpenPCCError | None = None

    @property
    def ok(self) -> bool:
        return self.node is not None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }
        if self.error is not None:
            out["error"] = str(self.error)
        if self.node is not None:
            n = self.node
            out["node"] = {
                "tee": n.tee,
                "simulated": n.simulated,
                "measurement": n.measurement.hex(),
                "key_id": n.key_config.key_id,
                "log_index": n.log_index,
                "tree_size": n.tree_size,
                "product": n.product,
                "gpus": list(n.gpus),
            }
        return out


class _Failed(Exception):
    pass


class _Runner:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.error: OpenPCCError | None = None

    def passed(self, name: str, detail: str) -> None:
        self.results.append(CheckResult(name, "pass", detail))

    def skipped(self, name: str, detail: str) -> None:
        self.results.append(CheckResult(name, "skip", detail))

    def fail(self, name: str, error: OpenPCCError) -> _Failed:
        self.error = error
        detail = error.detail if isinstance(error, VerificationError) else str(error)
        self.results.append(CheckResult(name, "fail", detail))
        done = {r.name for r in self.results}
        self.results.extend(
            CheckResult(n, "not-run", "an earlier check failed")
            for n, _ in CHECK_ORDER
            if n not in done
        )
        order = {n: i for i, (n, _) in enumerate(CHECK_ORDER)}
        self.results.sort(key=lambda c: order.get(c.name, len(order)))
        return _Failed()


def verify_bundle(
    bundle: Mapping[str, object],
    *,
    trust: TrustAnchors,
    policy: ClientPolicy,
    nonce: bytes | None,
    now: datetime | None = None,
    checkpoints: CheckpointStore | None = None,
    consistency: ConsistencyFetcher | None = None,
) -> VerifiedNode:
    """Run every check; return the node or raise the first failure's error."""
    run = run_verification(
        bundle,
        trust=trust,
        policy=policy,
        nonce=nonce,
        now=now,
        checkpoints=checkpoints,
        consistency=consistency,
    )
    if run.node is None:
        assert run.error is not None
        raise run.error
    return run.node


def run_verification(
    bundle: Mapping[str, object],
    *,
    trust: TrustAnchors,
    policy: ClientPolicy,
    nonce: bytes | None,
    now: datetime | None = None,
    checkpoints: CheckpointStore | None = None,
    consistency: ConsistencyFetcher | None = None,
) -> VerificationRun:
    """Like :func:`verify_bundle`, but returns every check's outcome for display."""
    now = now or datetime.now(UTC)
    r = _Runner()
    try:
        # 1. structure and report parse
        try:
            b = _BundleFields.parse(bundle, nonce)
            report = parse_report(b.report)
        except ParseError as e:
            raise r.fail("report-parse", e) from e
        simulated = b.tee in SIMULATED_TEES
        r.passed("report-parse", f"{b.tee} report v{report.version}, {len(b.report)} bytes")

        # 2-4. signature, chain to a pinned root, TCB/chip-id consistency
        if simulated:
            roots = trust.simulation_snp_roots
            if not roots:
                raise r.fail(
                    "cert-chain",
                    VerificationError(
                        "cert-chain",
                        "the node presents SIMULATED evidence and no simulation root is trusted",
                        hint="only for development: `openpcc trust --simulated ROOT.pem`",
                    ),
                )
        else:
            roots = trust.amd_roots
        try:
            certs = load_certificates(b.certs)
            verified = verify_report(report, certs, roots=list(roots), now=now)
        except ParseError as e:
            raise r.fail("cert-chain", e) from e
        except VerificationError as e:
            name = _SNP_CHECK_NAMES.get(e.check, "cert-chain")
            err = VerificationError(name, e.detail, hint=e.hint)
            if name != "report-signature":
                r.passed("report-signature", "ECDSA P-384/SHA-384 over 0x000-0x29F")
            if name == "tcb-consistency":
                r.passed("cert-chain", "chain to the pinned root verified")
            raise r.fail(name, err) from e
        detail = dict(verified.checks)
        r.passed("report-signature", detail.get("signature", "ECDSA P-384/SHA-384"))
        r.passed("cert-chain", f"{verified.product}: " + detail.get("chain", "verified"))
        r.passed("tcb-consistency", detail.get("tcb", "certificate TCB equals REPORTED_TCB"))

        # 5. policy
        try:
            passed = validate_report(report, policy.snp, product=verified.product)
        except PolicyError as e:
            raise r.fail("policy", PolicyError(e.violations, check="policy", hint=e.hint)) from e
        r.passed("policy", "; ".join(d for _, d in passed) or "floor: debug and migration off")

        # 6a. measurement equals the manifest's
        expected = _manifest_measurement(b.manifest)
        if expected is None or not hmac.compare_digest(expected, report.measurement):
            raise r.fail(
                "measurement",
                VerificationError(
                    "measurement",
                    f"report MEASUREMENT {report.measurement.hex()} != manifest "
                    f"{expected.hex() if expected else '(missing)'}",
                ),
            )
        r.passed("measurement", report.measurement.hex())

        # 6b. transparency log
        log_index, tree_size = -1, 0
        if "transparency-log" in policy.skip:
            r.skipped("transparency-log", "skipped: the policy names it")
        else:
            try:
                log_index, tree_size, log_detail = _check_log(b, trust, checkpoints, consistency)
            except (ParseError, VerificationError) as e:
                raise r.fail("transparency-log", _as_check("transparency-log", e)) from e
            r.passed("transparency-log", log_detail)

        # 7. REPORT_DATA binding
        want = binding.report_data(
            key_config=b.key_config, gpus=b.gpus, manifest=b.manifest, nonce=nonce
        )
        if not hmac.compare_digest(want, report.report_data):
            raise r.fail(
                "report-data",
                VerificationError(
                    "report-data",
                    "REPORT_DATA does not bind this bundle's key config, GPU evidence, manifest "
                    "and nonce" + (" (fresh nonce)" if nonce else ""),
                ),
            )
        r.passed(
            "report-data",
            "bound" + (f" to nonce {nonce.hex()[:16]}…" if nonce else " (no nonce: not fresh)"),
        )

        # 8. GPUs
        gpu_info: list[Mapping[str, object]] = []
        if "gpu" in policy.skip:
            r.skipped("gpu", "skipped: the policy names it")
        else:
            try:
                gpu_info = _check_gpus(b, trust, policy, nonce, now, simulated)
            except (ParseError, VerificationError) as e:
                raise r.fail("gpu", _as_check("gpu", e)) from e
            r.passed(
                "gpu",
                ", ".join(f"{g['vendor']} driver {g['driver_version']} CC on" for g in gpu_info)
                or "no GPU required by policy",
            )

        # 9. key configuration
        try:
            key_config = KeyConfig.parse(b.key_config)
        except ParseError as e:
            raise r.fail("key-config", e) from e
        r.passed("key-config", f"key id {key_config.key_id}, {len(key_config.suites)} suite(s)")
    except _Failed:
        assert r.error is not None
        return VerificationRun(r.results, error=r.error)

    node = VerifiedNode(
        tee=b.tee,
        simulated=simulated,
        measurement=report.measurement,
        key_config=key_config,
        key_config_raw=b.key_config,
        manifest=b.manifest,
        report=report,
        product=verified.product,
        gpus=tuple(gpu_info),
        log_index=log_index,
        tree_size=tree_size,
        nonce=nonce,
        checks=tuple(r.results),
        verified_at=now,
        _token=_TOKEN,
    )
    return VerificationRun(r.results, node=node)


def _as_check(name: str, e: OpenPCCError) -> VerificationError:
    detail = e.detail if isinstance(e, VerificationError) else str(e)
    return VerificationError(name, detail, hint=e.hint)


@dataclass(frozen=True, slots=True)
class _BundleFields:
    tee: str
    report: bytes
    certs: bytes
    gpus: tuple[Mapping[str, object], ...]
    key_config: bytes
    manifest: Mapping[str, object]
    tlog: Mapping[str, object]

    @classmethod
    def parse(cls, bundle: Mapping[str, object], nonce: bytes | None) -> _BundleFields:
        if bundle.get("format") != BUNDLE_FORMAT:
            raise ParseError(f"bundle format {bundle.get('format')!r} is not {BUNDLE_FORMAT!r}")
        tee = bundle.get("tee")
        if tee not in REAL_TEES + SIMULATED_TEES:
            raise ParseError(f"bundle tee {tee!r} is not supported by this client")
        assert isinstance(tee, str)
        gpus = bundle.get("gpus")
        if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
            raise ParseError("bundle field 'gpus' must be a list of objects")
        manifest = bundle.get("manifest")
        if not isinstance(manifest, dict):
            raise ParseError("bundle field 'manifest' must be an object")
        tl = bundle.get("tlog")
        if not isinstance(tl, dict):
            raise ParseError("bundle field 'tlog' must be an object")
        echoed = bundle.get("nonce")
        if nonce is not None and echoed != nonce.hex():
            raise ParseError("bundle does not echo the nonce this client sent")
        certs = bundle.get("certs")
        if not isinstance(certs, str):
            raise ParseError("bundle field 'certs' must be a PEM string")
        return cls(
            tee=tee,
            report=_b64(bundle, "report"),
            certs=certs.encode(),
            gpus=tuple(gpus),
            key_config=_b64(bundle, "key_config"),
            manifest=manifest,
            tlog=tl,
        )


def _b64(obj: Mapping[str, object], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ParseError(f"field {name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParseError(f"field {name!r} is not valid base64") from e


def _manifest_measurement(manifest: Mapping[str, object]) -> bytes | None:
    value = manifest.get("measurement")
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _check_log(
    b: _BundleFields,
    trust: TrustAnchors,
    store: CheckpointStore | None,
    consistency: ConsistencyFetcher | None,
) -> tuple[int, int, str]:
    if not trust.log_keys:
        raise VerificationError(
            "transparency-log",
            "no transparency-log key is trusted",
            hint="pin the log key: `openpcc trust --log-key KEY`",
        )
    note = b.tlog.get("checkpoint")
    index = b.tlog.get("index")
    size = b.tlog.get("tree_size")
    proof_hex = b.tlog.get("inclusion")
    if not isinstance(note, str) or not isinstance(index, int) or not isinstance(size, int):
        raise ParseError("tlog must carry integer index, tree_size and a checkpoint string")
    if not isinstance(proof_hex, list) or not all(isinstance(p, str) for p in proof_hex):
        raise ParseError("tlog.inclusion must be a list of hex strings")
    try:
        proof = [bytes.fromhex(p) for p in proof_hex]
    except ValueError as e:
        raise ParseError("tlog.inclusion holds a non-hex entry") from e
    cp = tlog.open_checkpoint(note, list(trust.log_keys))
    if cp.size != size:
        raise VerificationError(
            "transparency-log", f"tree_size {size} differs from the checkpoint's {cp.size}"
        )
    leaf = tlog.leaf_hash(binding.canonical_json(b.manifest))
    tlog.verify_inclusion(index, cp.size, leaf, proof, cp.root_hash)
    detail = f"index {index} of {cp.size}, checkpoint by {cp.origin}"
    if store is not None:
        last = store.last(cp.origin)
        if last is not None:
            if cp.size < last.size:
                raise VerificationError(
                    "transparency-log",
                    f"checkpoint rolled back: size {cp.size} < {last.size} seen before "
                    "(possible attack)",
                )
            if cp.size == last.size:
                if not hmac.compare_digest(cp.root_hash, last.root_hash):
                    raise VerificationError(
                        "transparency-log",
                        f"log forked: a different root for size {cp.size} than seen before "
                        "(possible attack)",
                    )
            else:
                if consistency is None:
                    raise VerificationError(
                        "transparency-log",
                        "a consistency proof is needed but no way to fetch one was given",
                    )
                tlog.verify_consistency(
                    last.size,
                    cp.size,
                    last.root_hash,
                    cp.root_hash,
                    list(consistency(last.size, cp.size)),
                )
                detail += f", consistent with size {last.size}"
        if last is None or cp.size > last.size:
            store.save(cp)
    return index, cp.size, detail


def _check_gpus(
    b: _BundleFields,
    trust: TrustAnchors,
    policy: ClientPolicy,
    nonce: bytes | None,
    now: datetime,
    simulated: bool,
) -> list[Mapping[str, object]]:
    want_nonce = binding.gpu_nonce(nonce)
    out: list[Mapping[str, object]] = []
    for i, g in enumerate(b.gpus):
        vendor = g.get("vendor")
        if vendor == "nvidia":
            roots = trust.nvidia_roots
        elif vendor == "sim-nvidia":
            if not simulated or not trust.simulation_gpu_roots:
                raise VerificationError(
                    "gpu", f"GPU {i}: simulated GPU evidence is not trusted here"
                )
            roots = trust.simulation_gpu_roots
        else:
            raise ParseError(f"GPU {i}: unknown vendor {vendor!r}")
        chain_pem = g.get("certs")
        if not isinstance(chain_pem, str):
            raise ParseError(f"GPU {i}: 'certs' must be a PEM string")
        report = parse_gpu_report(_b64(g, "evidence"))
        verify_gpu_report(
            report,
            load_gpu_chain(chain_pem.encode()),
            nonce=want_nonce,
            roots=list(roots),
            now=now,
        )
        if report.cc_enabled is not True:
            raise VerificationError("gpu", f"GPU {i}: confidential-computing mode is not on")
        out.append(
            {
                "vendor": vendor,
                "driver_version": report.opaque.driver_version,
                "vbios_version": report.opaque.vbios_version,
                "cc_enabled": True,
            }
        )
    if len(out) < policy.min_gpus:
        raise VerificationError(
            "gpu", f"{len(out)} verified GPU(s), the policy requires at least {policy.min_gpus}"
        )
    return out
