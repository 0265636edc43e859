"""Verify an attestation bundle (DESIGN.md sections 3 and 4); return what may be used.

The checks run in the contract's order; the first failure stops the run and every later check is
reported as not run. There is no way to obtain a :class:`VerifiedNode` other than
:func:`verify_bundle` succeeding, and the sealing code accepts nothing else, so an unverified
key cannot be encrypted to.

Two CPU TEEs share the same ten checks; only checks 1-7 read TEE-specific evidence:

==================  ===================================  ========================================
check               SEV-SNP (``sev-snp``, ``sim-*``)     Intel TDX (``tdx``, ``sim-tdx``)
==================  ===================================  ========================================
1 report-parse      1184-byte ATTESTATION_REPORT         DCAP quote v4/v5
2 report-signature  ECDSA P-384 by the VCEK/VLEK         ECDSA P-256 by the attestation key
3 cert-chain        VCEK/VLEK -> ASK/ASVK -> pinned ARK  PCK -> Platform CA -> pinned Intel SGX
                                                         Root CA (the chain inside the quote)
4 tcb-consistency   cert TCB = REPORTED_TCB, chip id     the QE report, signed by the PCK key,
                                                         binds the attestation key; with
                                                         collateral, the platform's TCB level
5 policy            :class:`SnpPolicy`                   :class:`TdxPolicy`: DEBUG always
                                                         forbidden, optional allowlists
6a measurement      MEASUREMENT = manifest               MRTD = manifest ``measurement``, and
                    ``measurement``                      each register the ``tdx`` table pins
7 report-data       REPORT_DATA                          the TD report's REPORTDATA (64 bytes)
==================  ===================================  ========================================

Measurement mapping for TDX: the manifest's ``measurement`` is what ``cvm_boot`` releases for a TDX
recipe, its pinned MRTD, so MRTD is compared with it (and with ``tdx.mrtd`` when present). MRTD
covers the TD's initial memory, i.e. the firmware only; the kernel, initrd and command line are
extended into RTMR1-2 at boot. A manifest ``tdx`` table may pin ``rtmr0``..``rtmr3``,
``mrconfigid``, ``mrowner``, ``mrownerconfig``; each one present must equal the quote's, and any
other key there is refused rather than ignored. RTMR0-2 (host-supplied firmware configuration,
kernel, command line and initrd) must each be bound, by that table or by an allowlist in the
client's ``[tdx]`` policy; a TD with any of them unbound fails the measurement check unless the
policy says ``allow_unpinned_rtmrs = true``, and then the check's detail says what was not bound.
The bundle's ``certs`` is informational for TDX: the chain verified is the one the quote itself
carries.

Reference values. Two vendor-signed inputs the client supplies tighten checks 4, 5 and 8 when the
policy carries them, and change nothing when it does not:

- ``ClientPolicy.tdx_collateral``, Intel PCS collateral (TCB info, QE identity, their signing
  chain, and optionally the PCK and Root CA CRLs). Check 4 evaluates the platform's TCB level
  with it (:func:`evaluate_collateral`; a Revoked TCB or a revoked certificate always fails) and
  its detail gives the status, advisory IDs and what the CRLs showed; check 5 applies
  ``TdxPolicy.accepted_tcb_statuses``. Without collateral the TCB level is not evaluated, without
  CRLs revocation is not checked (the detail says so), and ``require_collateral`` makes either a
  check-5 failure.
- ``ClientPolicy.gpu_rims``, NVIDIA RIMs. Check 8 compares each GPU's measurements with the RIMs
  whose version is that GPU's driver or VBIOS version (:func:`check_rims`).

They sit in :class:`ClientPolicy`, not :class:`TrustAnchors`, because they are what the operator
chose to compare against, change with every TCB recovery and driver release, and can only narrow
what is accepted: neither admits evidence that did not already chain to a trusted root. What they
are signed by stays anchored: the collateral's TCB signing chain must reach the same roots as the
quote's PCK chain (``intel_roots``; ``simulation_tdx_roots`` for ``sim-tdx``), and each
:class:`VerifiedRim` was verified, when it was loaded, to the pinned NVIDIA RIM root (or the root
its loader was told to use); its certificates must still be valid at ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from attest import binding, tlog
from attest.errors import OpenPCCError, ParseError, PolicyError, VerificationError
from attest.nvgpu import (
    CC_NOT_ESTABLISHED,
    GpuCcState,
    GpuReport,
    VerifiedRim,
    check_rims,
    gpu_cc_state,
    load_gpu_chain,
    parse_gpu_report,
    verify_gpu_report,
)
from attest.sevsnp.abi import Report, parse_report
from attest.sevsnp.validate import SnpPolicy, validate_report
from attest.sevsnp.verify import CHECKS as SNP_CHECKS
from attest.sevsnp.verify import load_certificates, verify_report
from attest.tdx.abi import MR_SIZE, Quote, parse_quote, parse_register
from attest.tdx.collateral import (
    PCK_CRL_FILES,
    ROOT_CA_CRL_FILES,
    TcbEvaluation,
    TdxCollateral,
    evaluate_collateral,
)
from attest.tdx.validate import BOUND_RTMRS, TdxPolicy, validate_quote
from attest.tdx.verify import INTEL_TD_QE_MRSIGNER, SIMULATED_TD_QE_MRSIGNER, verify_quote
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
REAL_TEES = ("sev-snp", "tdx")
SIMULATED_TEES = ("sim-sev-snp", "sim-tdx")
TDX_TEES = ("tdx", "sim-tdx")
TDX_PRODUCT = "Intel TDX"

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

SNP_VMPL_FLOOR = (0,)
"""VMPLs a SEV-SNP report may come from when the policy names none: the appliance's guest runs
at VMPL 0 (no SVSM); a report from a less privileged level is someone else's view of the VM."""

# verify_quote's checks, in the order it runs them, and the contract check each one belongs to.
_TDX_QUOTE_CHECKS = (
    "tdx-pck-chain",
    "tdx-qe-report-signature",
    "tdx-qe-report-data",
    "tdx-qe-identity-floor",
    "tdx-quote-signature",
)
_TDX_CHECK_NAMES = {
    "tdx-pck-chain": "cert-chain",
    "tdx-qe-report-signature": "tcb-consistency",
    "tdx-qe-report-data": "tcb-consistency",
    "tdx-qe-identity-floor": "tcb-consistency",
    "tdx-quote-signature": "report-signature",
}
# Manifest ``tdx`` keys compared with the quote (the 48-byte TD registers).
_TDX_MANIFEST_REGISTERS = (
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
)

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
    intel_roots: tuple[x509.Certificate, ...] = ()
    simulation_tdx_roots: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """``tdx`` applies to TDX nodes (``None``: the floor, debug off); ``snp`` to SEV-SNP nodes.

    ``tdx_collateral`` and ``gpu_rims`` are reference values (see the module docstring): Intel
    collateral evaluated against every TDX quote, and RIMs every GPU's measurements must match.
    """

    snp: SnpPolicy
    min_gpus: int = 1
    skip: frozenset[str] = frozenset()
    tdx: TdxPolicy | None = None
    tdx_collateral: TdxCollateral | None = None
    gpu_rims: tuple[VerifiedRim, ...] = ()
    require_gpu_cc: bool = True
    """Check 8 fails for a GPU whose CC state its evidence does not establish: a real GPU whose
    measurements were not compared with ``gpu_rims``. False accepts it, and the check's detail
    then says the CC/DevTools state was not established."""
    snp_crls: tuple[bytes, ...] = ()
    """AMD CRLs (PEM or DER), one per product's ARK: a node's chain is checked against the one
    its ARK issued; given any, a node whose ARK issued none of them is refused."""

    def __post_init__(self) -> None:
        unknown = self.skip - SKIPPABLE_CHECKS
        if unknown:
            raise ParseError(
                f"policy: check(s) {sorted(unknown)} cannot be skipped "
                f"(only {sorted(SKIPPABLE_CHECKS)} can)"
            )
        if self.snp.allow_debug or self.snp.allow_migrate_ma:
            raise ParseError(
                "policy: an SEV-SNP policy may not allow debug or a migration agent: either "
                "opens the guest to the host",
                hint="remove allow_debug / allow_migrate_ma from the [snp] policy "
                "(`openpcc verify-report` still takes them for offline inspection)",
            )
        if self.tdx is not None and (self.tdx.allow_debug or self.tdx.allow_migratable):
            raise ParseError(
                "policy: a TDX policy may not allow debug or migration: a debug TD is open to "
                "the host, a migratable one can be exported through a migration TD it picks",
                hint="remove allow_debug / allow_migratable from the [tdx] policy "
                "(`openpcc verify-tdx` still takes them for offline inspection)",
            )
        if self.tdx is not None and self.tdx.report_data is not None:
            raise ParseError(
                "policy: a TDX policy may not pin report_data: the bundle binding decides it",
                hint="remove report_data from the [tdx] policy",
            )
        if not all(isinstance(r, VerifiedRim) for r in self.gpu_rims):
            raise TypeError("ClientPolicy.gpu_rims holds VerifiedRim objects (verify_rim)")
        if self.gpu_rims and "gpu" in self.skip:
            raise ParseError(
                "policy: GPU RIMs are given but the gpu check is skipped, so they would never "
                "be compared",
                hint='remove "gpu" from [skip] checks, or the [gpu] rims',
            )

    @property
    def tdx_or_floor(self) -> TdxPolicy:
        return self.tdx if self.tdx is not None else TdxPolicy()


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
    report: Report | None  # SEV-SNP nodes; TDX nodes carry ``quote`` instead
    product: str
    gpus: tuple[Mapping[str, object], ...]
    log_index: int
    tree_size: int
    nonce: bytes | None
    checks: tuple[CheckResult, ...]
    verified_at: datetime
    quote: Quote | None = None
    tdx_tcb: TcbEvaluation | None = None  # TDX nodes checked with collateral
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
            node: dict[str, object] = {
                "tee": n.tee,
                "simulated": n.simulated,
                "measurement": n.measurement.hex(),
                "key_id": n.key_config.key_id,
                "log_index": n.log_index,
                "tree_size": n.tree_size,
                "product": n.product,
                "gpus": list(n.gpus),
            }
            if n.tdx_tcb is not None:
                node["tdx_tcb"] = {
                    "status": str(n.tdx_tcb.status),
                    "advisory_ids": list(n.tdx_tcb.advisory_ids),
                    "tcb_date": n.tdx_tcb.tcb_date.isoformat(),
                    "fmspc": n.tdx_tcb.fmspc.hex(),
                }
            out["node"] = node
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
        # 1. structure (the report itself is parsed by the TEE's own steps)
        try:
            b = _BundleFields.parse(bundle, nonce)
        except ParseError as e:
            raise r.fail("report-parse", e) from e
        simulated = b.tee in SIMULATED_TEES

        # 1-5. parse, signature, chain to a pinned root, TCB consistency, policy
        if b.tee in TDX_TEES:
            cpu = _tdx_checks(r, b, trust, policy, now, simulated)
        else:
            cpu = _snp_checks(r, b, trust, policy, now, simulated)

        # 6a. measurement equals the manifest's
        if cpu.quote is not None:
            _tdx_measurement(r, b.manifest, cpu.quote, policy.tdx_or_floor)
        else:
            expected = _manifest_measurement(b.manifest)
            if expected is None or not hmac.compare_digest(expected, cpu.measurement):
                raise r.fail(
                    "measurement",
                    VerificationError(
                        "measurement",
                        f"report MEASUREMENT {cpu.measurement.hex()} != manifest "
                        f"{expected.hex() if expected else '(missing)'}",
                    ),
                )
            r.passed("measurement", cpu.measurement.hex())

        # 6b. transparency log
        log_index, tree_size = -1, 0
        if "transparency-log" in policy.skip:
            r.skipped(
                "transparency-log",
                "skipped: the policy names it; the manifest, and the measurement it names, are "
                "the node's own word",
            )
        else:
            try:
                log_index, tree_size, log_detail = _check_log(b, trust, checkpoints, consistency)
            except (ParseError, VerificationError) as e:
                raise r.fail("transparency-log", _as_check("transparency-log", e)) from e
            r.passed("transparency-log", log_detail)

        # 7. REPORT_DATA binding (TDX: the TD report's REPORTDATA, bound the same way)
        want = binding.report_data(
            key_config=b.key_config, gpus=b.gpus, manifest=b.manifest, nonce=nonce
        )
        if not hmac.compare_digest(want, cpu.report_data):
            raise r.fail(
                "report-data",
                VerificationError(
                    "report-data",
                    f"{cpu.report_data_name} does not bind this bundle's key config, GPU "
                    "evidence, manifest and nonce" + (" (fresh nonce)" if nonce else ""),
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
                "; ".join(
                    f"{g['vendor']} driver {g['driver_version']}, topology {g['topology']}, "
                    f"{g['cc']}" + (f", RIMs: {g['rims']}" if "rims" in g else "")
                    for g in gpu_info
                )
                or "no GPU required by policy",
            )

        # 9. key configuration
        try:
            key_config = KeyConfig.parse(b.key_config)
            suite = key_config.select_suite()
        except ParseError as e:
            raise r.fail("key-config", e) from e
        except ValueError as e:  # nothing this client can encrypt to
            raise r.fail("key-config", VerificationError("key-config", str(e))) from e
        r.passed(
            "key-config",
            f"key id {key_config.key_id}, {len(key_config.suites)} suite(s); using {suite}",
        )
    except _Failed:
        assert r.error is not None
        return VerificationRun(r.results, error=r.error)
    except _NET as e:
        # A last net: attacker-made bytes that a library chokes on somewhere not wrapped where
        # it is called fail the check in progress, naming it (a programming error, TypeError
        # and the like, is not caught: it is ours, not the node's).
        done_names = {c.name for c in r.results}
        name = next((n for n, _ in CHECK_ORDER if n not in done_names), "key-config")
        error = (
            _as_check(name, e)
            if isinstance(e, (ParseError, VerificationError))
            else e
            if isinstance(e, OpenPCCError)
            else _malformed(name, e)
        )
        r.fail(name, error)
        return VerificationRun(r.results, error=error)

    node = VerifiedNode(
        tee=b.tee,
        simulated=simulated,
        measurement=cpu.measurement,
        key_config=key_config,
        key_config_raw=b.key_config,
        manifest=b.manifest,
        report=cpu.report,
        product=cpu.product,
        gpus=tuple(gpu_info),
        log_index=log_index,
        tree_size=tree_size,
        nonce=nonce,
        checks=tuple(r.results),
        verified_at=now,
        quote=cpu.quote,
        tdx_tcb=cpu.tcb,
        _token=_TOKEN,
    )
    return VerificationRun(r.results, node=node)


@dataclass(frozen=True, slots=True)
class _CpuEvidence:
    """What checks 1-5 established about the CPU evidence, whichever TEE produced it."""

    measurement: bytes
    report_data: bytes
    report_data_name: str
    product: str
    report: Report | None = None
    quote: Quote | None = None
    tcb: TcbEvaluation | None = None


def _snp_checks(
    r: _Runner,
    b: _BundleFields,
    trust: TrustAnchors,
    policy: ClientPolicy,
    now: datetime,
    simulated: bool,
) -> _CpuEvidence:
    try:
        report = parse_report(b.report)
    except ParseError as e:
        raise r.fail("report-parse", e) from e
    r.passed("report-parse", f"{b.tee} report v{report.version}, {len(b.report)} bytes")

    # 2-4. signature, chain to a pinned root, TCB/chip-id consistency
    if simulated:
        roots = trust.simulation_snp_roots
        if not roots:
            raise r.fail("cert-chain", _no_simulation_root())
    else:
        roots = trust.amd_roots
    done: dict[str, str] = {}
    try:
        certs = load_certificates(b.certs)
        verified = verify_report(
            report,
            certs,
            roots=list(roots),
            now=now,
            crls=policy.snp_crls,
            on_check=done.__setitem__,
        )
    except ParseError as e:
        raise r.fail("cert-chain", e) from e
    except _LIBRARY_ERRORS as e:
        step = next((c for c in SNP_CHECKS if c not in done), "chain")
        name = _SNP_CHECK_NAMES.get(step, "cert-chain")
        if name != "report-signature" and "signature" in done:
            r.passed("report-signature", done["signature"])
        raise r.fail(name, _malformed(name, e)) from e
    except VerificationError as e:
        name = _SNP_CHECK_NAMES.get(e.check, "cert-chain")
        err = VerificationError(name, e.detail, hint=e.hint)
        # Only what really passed is shown as passed: a report whose signing certificate is
        # missing fails at the chain with its signature never checked.
        if name != "report-signature" and "signature" in done:
            r.passed("report-signature", done["signature"])
        if name == "tcb-consistency":
            r.passed("cert-chain", "chain to the pinned root verified")
        raise r.fail(name, err) from e
    detail = dict(verified.checks)
    r.passed("report-signature", detail.get("signature", "ECDSA P-384/SHA-384"))
    revocation = detail.get("crl", "revocation not checked (no [snp] crls in the policy)")
    r.passed(
        "cert-chain", f"{verified.product}: " + detail.get("chain", "verified") + "; " + revocation
    )
    tcb = detail.get("tcb", "certificate TCB equals REPORTED_TCB")
    r.passed(
        "tcb-consistency", tcb + (f"; chip id: {detail['chip_id']}" if "chip_id" in detail else "")
    )

    # 5. policy: the floor (DEBUG and MIGRATE_MA off, VMPL 0 unless the policy names VMPLs) and
    # whatever else the policy asks; what it does not ask is named in the detail as not checked
    rules = (
        policy.snp if policy.snp.vmpls is not None else replace(policy.snp, vmpls=SNP_VMPL_FLOOR)
    )
    try:
        passed = validate_report(report, rules, product=verified.product)
    except PolicyError as e:
        raise r.fail("policy", PolicyError(e.violations, check="policy", hint=e.hint)) from e
    unchecked = [
        (key, label)
        for key, label in (("min_tcb", "minimum TCB"), ("min_abi", "minimum firmware ABI"))
        if getattr(rules, key) is None
    ]
    summary = "; ".join(d for _, d in passed)
    if unchecked:
        summary += (
            f"; not checked: {', '.join(label for _, label in unchecked)} "
            f"(no [snp] {' / '.join(key for key, _ in unchecked)} in the policy)"
        )
    r.passed("policy", summary)
    return _CpuEvidence(
        measurement=report.measurement,
        report_data=report.report_data,
        report_data_name="REPORT_DATA",
        product=verified.product,
        report=report,
    )


def _no_simulation_root() -> VerificationError:
    return VerificationError(
        "cert-chain",
        "the node presents SIMULATED evidence and no simulation root is trusted",
        hint="only for development: `openpcc trust --simulated ROOT.pem`",
    )


def _tdx_checks(
    r: _Runner,
    b: _BundleFields,
    trust: TrustAnchors,
    policy: ClientPolicy,
    now: datetime,
    simulated: bool,
) -> _CpuEvidence:
    try:
        quote = parse_quote(b.report)
    except ParseError as e:
        raise r.fail("report-parse", e) from e
    r.passed("report-parse", f"{b.tee} quote v{quote.version}, {len(quote.raw)} bytes")

    # 2-4. quote signature, PCK chain to a pinned root, QE binding of the attestation key.
    # verify_quote runs them root first; a failure reports the checks it had passed.
    if simulated:
        roots = trust.simulation_tdx_roots
        if not roots:
            raise r.fail("cert-chain", _no_simulation_root())
    else:
        roots = trust.intel_roots
    try:
        # Never roots=None: that would mean verify_quote's own default, not this client's trust.
        verified = verify_quote(
            quote,
            roots=list(roots),
            now=now,
            qe_mrsigner=SIMULATED_TD_QE_MRSIGNER if simulated else INTEL_TD_QE_MRSIGNER,
        )
    except _LIBRARY_ERRORS as e:  # the PCK chain is checked first: its certificates
        raise r.fail("cert-chain", _malformed("cert-chain", e)) from e
    except VerificationError as e:
        name = _TDX_CHECK_NAMES.get(e.check, "cert-chain")
        done = (
            _TDX_QUOTE_CHECKS[: _TDX_QUOTE_CHECKS.index(e.check)]
            if e.check in _TDX_QUOTE_CHECKS
            else _TDX_QUOTE_CHECKS
        )
        for check in ("report-signature", "cert-chain", "tcb-consistency"):
            parts = [c for c in _TDX_QUOTE_CHECKS if _TDX_CHECK_NAMES[c] == check]
            if check != name and all(c in done for c in parts):
                r.passed(check, f"{', '.join(parts)} verified")
        raise r.fail(name, VerificationError(name, f"{e.check}: {e.detail}", hint=e.hint)) from e
    detail = dict(verified.checks)
    r.passed("report-signature", detail["tdx-quote-signature"] + " by the attestation key")
    r.passed("cert-chain", f"{TDX_PRODUCT}: PCK chain, " + detail["tdx-pck-chain"])
    qe = (
        "QE report signed by the PCK key "
        + detail["tdx-qe-report-data"]
        + "; "
        + detail["tdx-qe-identity-floor"]
    )

    # 4 (continued). The platform's TCB level, from the collateral the policy carries. Its
    # signing chain must reach the roots this quote's PCK chain was just checked against.
    tcb: TcbEvaluation | None = None
    if policy.tdx_collateral is None:
        r.passed("tcb-consistency", qe + "; TCB level not evaluated (no DCAP collateral)")
    else:
        try:
            tcb = evaluate_collateral(
                quote, verified.pck_certificate, policy.tdx_collateral, roots=list(roots), now=now
            )
        except VerificationError as e:
            raise r.fail(
                "tcb-consistency",
                VerificationError("tcb-consistency", f"{e.check}: {e.detail}", hint=e.hint),
            ) from e
        except ParseError as e:
            raise r.fail("tcb-consistency", e) from e
        revocation = tcb.revocation or "revocation not checked (no CRLs in the collateral)"
        r.passed("tcb-consistency", f"{qe}; Intel collateral: TCB {tcb.describe()}; {revocation}")

    # 5. policy: the floor (DEBUG off) always, allowlists where the policy has them, the TCB
    # status when collateral was evaluated (or its absence, when the policy requires it)
    rules = policy.tdx_or_floor
    try:
        passed = validate_quote(quote, rules, tcb=tcb)
    except PolicyError as e:
        hint = e.hint
        if not hint and tcb is None and rules.require_collateral:
            hint = (
                "the policy requires Intel TDX collateral: give it with "
                '[tdx] collateral = "DIR" in policy.toml'
            )
        elif not hint and tcb is not None and tcb.status not in rules.accepted_tcb_statuses:
            hint = "update the platform, or accept the status in [tdx] accepted_tcb_statuses"
        elif not hint and tcb is not None and tcb.revocation is None and rules.require_collateral:
            hint = (
                "add the PCK CRL and the Intel SGX Root CA CRL to the collateral directory "
                f"({PCK_CRL_FILES[0]}, {ROOT_CA_CRL_FILES[0]})"
            )
        raise r.fail("policy", PolicyError(e.violations, check="policy", hint=hint)) from e
    labels = {"tdx-debug": "debug off"}
    r.passed(
        "policy", "; ".join(f"{labels.get(n, n.removeprefix('tdx-'))}: {d}" for n, d in passed)
    )
    return _CpuEvidence(
        measurement=quote.body.mrtd,
        report_data=quote.body.report_data,
        report_data_name="REPORTDATA",
        product=TDX_PRODUCT,
        quote=quote,
        tcb=tcb,
    )


def _tdx_measurement(
    r: _Runner, manifest: Mapping[str, object], quote: Quote, rules: TdxPolicy
) -> None:
    """MRTD equals the manifest's ``measurement``; every register its ``tdx`` table pins, too.

    RTMR0-2 (:data:`BOUND_RTMRS`) must each be bound, by a manifest pin or by an allowlist in the
    client's policy (compared at check 5): otherwise the quote says nothing about the kernel,
    initrd, command line or host-supplied ACPI tables, and the node is refused unless the policy
    names ``allow_unpinned_rtmrs``.
    """
    body = quote.body
    registers = {
        "mrtd": body.mrtd,
        "rtmr0": body.rtmrs[0],
        "rtmr1": body.rtmrs[1],
        "rtmr2": body.rtmrs[2],
        "rtmr3": body.rtmrs[3],
        "mrconfigid": body.mrconfigid,
        "mrowner": body.mrowner,
        "mrownerconfig": body.mrownerconfig,
    }

    def failed(message: str, hint: str = "") -> _Failed:
        return r.fail("measurement", VerificationError("measurement", message, hint=hint))

    expected = _manifest_measurement(manifest)
    if expected is None or not hmac.compare_digest(expected, body.mrtd):
        raise failed(
            f"quote MRTD {body.mrtd.hex()} != manifest "
            f"{expected.hex() if expected else '(missing)'}"
        )
    pins = manifest.get("tdx", {})
    if not isinstance(pins, dict):
        raise failed("manifest field 'tdx' must be an object of TD registers")
    unknown = sorted(set(pins) - set(_TDX_MANIFEST_REGISTERS))
    if unknown:
        raise failed(f"manifest tdx.{unknown[0]} is not a TD register this client compares")
    for name in _TDX_MANIFEST_REGISTERS:
        if name not in pins:
            continue
        want = parse_register(pins[name])
        if want is None:
            raise failed(f"manifest tdx.{name} is not {MR_SIZE} bytes of hex")
        if not hmac.compare_digest(want, registers[name]):
            raise failed(
                f"quote {name.upper()} {registers[name].hex()} != manifest tdx.{name} {want.hex()}"
            )
    by_policy = [n for n in BOUND_RTMRS if n not in pins and getattr(rules, n)]
    unbound = [n for n in BOUND_RTMRS if n not in pins and n not in by_policy]
    if unbound and not rules.allow_unpinned_rtmrs:
        raise failed(
            f"{', '.join(n.upper() for n in unbound)} pinned neither by the manifest's tdx table "
            "nor by the policy: the TD's kernel, initrd and command line would not be bound",
            hint="the operator releases RTMR0-2 from a reference boot "
            "(openpcc-appliance tdx-reference); to accept an unbound kernel anyway, set "
            "[tdx] allow_unpinned_rtmrs = true in policy.toml",
        )
    pinned = [n.upper() for n in ("rtmr0", "rtmr1", "rtmr2", "rtmr3") if n in pins]
    parts = [f"MRTD {body.mrtd.hex()}"]
    if pinned:
        parts.append(f"{', '.join(pinned)} match the manifest")
    if by_policy:
        parts.append(f"{', '.join(n.upper() for n in by_policy)} in the policy's allowlist")
    if unbound:
        parts.append(
            f"{', '.join(n.upper() for n in unbound)} NOT bound (policy allow_unpinned_rtmrs): "
            "kernel, initrd and command line not compared"
        )
    r.passed("measurement", "; ".join(parts))


_LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    RecursionError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
)
"""What cryptography and the JSON codec raise on malformed input they were handed."""
_NET: tuple[type[Exception], ...] = (OpenPCCError, *_LIBRARY_ERRORS)


def _malformed(name: str, e: Exception) -> VerificationError:
    error = VerificationError(name, f"malformed evidence: {type(e).__name__}: {e}"[:300])
    error.__cause__ = e
    return error


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
    seen: set[bytes] = set()
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
        verified = verify_gpu_report(
            report,
            load_gpu_chain(chain_pem.encode()),
            nonce=want_nonce,
            roots=list(roots),
            now=now,
        )
        if vendor == "nvidia":
            # Each physical GPU has its own device certificate: the same one twice is one GPU
            # counted twice (simulated GPUs share one generated identity, so only real ones).
            leaf = verified.leaf.fingerprint(hashes.SHA256())
            if leaf in seen:
                raise VerificationError(
                    "gpu", f"GPU {i}: the same device certificate as an earlier GPU in the list"
                )
            seen.add(leaf)
        rims = _check_gpu_rims(i, report, policy.gpu_rims, now) if policy.gpu_rims else None
        # No report field says CC on: FEATURE_FLAG is the topology mode. Only measurements that
        # matched reference values (the RIMs, or a SIMULATED GPU's own) establish the CC state.
        if vendor == "nvidia" and rims is None:
            # A real GPU's CC state is established by NVIDIA's RIMs only, never by the
            # simulation's reference values, whatever driver version its report names.
            cc = GpuCcState(established=False, detail=CC_NOT_ESTABLISHED)
        else:
            cc = gpu_cc_state(
                verified, rims_matched="the RIMs of its driver and VBIOS" if rims else None
            )
        if not cc.established and policy.require_gpu_cc:
            raise VerificationError(
                "gpu",
                f"GPU {i}: confidential-computing state not established: {cc.detail}",
                hint="give this GPU's driver and VBIOS RIMs in [gpu] rims (or accept an "
                "unestablished CC state with [gpu] require_cc = false)",
            )
        info: dict[str, object] = {
            "vendor": vendor,
            "driver_version": report.opaque.driver_version,
            "vbios_version": report.opaque.vbios_version,
            "topology": report.topology_mode or "legacy",
            "cc_established": cc.established,
            "cc": cc.detail,
        }
        if rims is not None:
            info["rims"] = rims
        out.append(info)
    if len(out) < policy.min_gpus:
        raise VerificationError(
            "gpu", f"{len(out)} verified GPU(s), the policy requires at least {policy.min_gpus}"
        )
    return out


def _check_gpu_rims(i: int, report: GpuReport, rims: Sequence[VerifiedRim], now: datetime) -> str:
    """Compare GPU ``i`` with the RIMs of its driver and VBIOS versions; the passing detail.

    Only those RIMs are used, so one policy may list RIMs for several driver or VBIOS versions;
    a GPU none of them describes fails on coverage, naming the versions it reports.
    """
    versions = {report.opaque.driver_version.lower(), report.opaque.vbios_version.lower()}
    mine = [v for v in rims if v.rim.version.lower() in versions]
    try:
        for verified in mine:
            _rim_valid_at(verified, now)
        passed = dict(check_rims(report, mine))
    except VerificationError as e:
        raise VerificationError("gpu", f"GPU {i}: {e.check}: {e.detail}", hint=e.hint) from e
    labels = ", ".join(v.rim.label for v in mine)
    return f"{passed['gpu-rim']} ({labels})"


def _rim_valid_at(verified: VerifiedRim, now: datetime) -> None:
    # A RIM is verified once, when the policy is loaded; a long-lived client must still stop
    # using it once a certificate it was verified with has expired.
    for cert in (*verified.rim.certificates, verified.root):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerificationError(
                "gpu-rim-chain",
                f"{verified.rim.label}: certificate {cert.subject.rfc4514_string()} is valid "
                f"{cert.not_valid_before_utc.isoformat()} .. "
                f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
                hint="fetch the current RIMs from NVIDIA's RIM service",
            )
