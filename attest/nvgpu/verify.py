"""Verify an NVIDIA GPU attestation report: chain, signature, FWID, nonce, topology, measurements.

Checks run in this order and the first failure raises :class:`VerificationError` naming it:

``gpu-chain``      the PEM chain (leaf first) links up, every certificate is valid at ``now``,
                   and it ends in (or is issued by) a pinned "NVIDIA Device Identity CA" root;
``gpu-signature``  ECDSA P-384 / SHA-384 over request and response up to the signature, r || s
                   big-endian, by the leaf's key;
``gpu-fwid``       the leaf's FWID (extension 2.23.133.5.4.1) equals the report's opaque FWID;
``gpu-nonce``      the request nonce equals the one the caller asked for (constant time); with
                   no expected nonce it is *not checked*, and says so, never passed;
``gpu-topology``   FEATURE_FLAG, the multi-GPU topology mode: SPT, MPT or absent (firmware that
                   predates it) are verified GPU by GPU; PPCIE is refused, because it puts the
                   NVSwitches inside the trust boundary and needs their evidence and a topology
                   check (NVIDIA's PPCIE verifier), which this verifier does not have;
``gpu-sim-measurements``  for a report whose driver version is the SIMULATED one, every block
                   equals the simulation's reference values (no NVIDIA RIM exists for it);
then, when RIM files are given, the checks of :mod:`attest.nvgpu.rim`: each RIM's chain to a RIM
root and its XML signature, its version against the report's driver / VBIOS version, coverage of
every measurement index, and each active reference measurement.

Nothing in the report itself says the GPU is in confidential-computing mode rather than off or in
DevTools mode. NVIDIA's verifier learns it by comparing the measurements with the RIMs (a mismatch
"could be a result of using devtools mode", its troubleshooting guide says); without reference
values the CC state is not established, and :attr:`VerifiedGpu.measurements_matched` is None.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import ParseError, VerificationError
from attest.nvgpu._chain import public_key, verify_chain
from attest.nvgpu._simulated import SIMULATED_DRIVER_VERSION, SIMULATED_REFERENCE
from attest.nvgpu.abi import (
    SIGNATURE_SIZE,
    TOPOLOGY_MPT,
    TOPOLOGY_PPCIE,
    TOPOLOGY_SPT,
    GpuReport,
)
from attest.nvgpu.rim import RimMeasurement, check_rims, parse_rim, verify_rim

__all__ = [
    "FWID_EXTENSION_OID",
    "NONCE_NOT_CHECKED",
    "NVIDIA_ROOT_SUBJECT_CN",
    "RimMeasurement",
    "VerifiedGpu",
    "leaf_fwid",
    "load_gpu_chain",
    "parse_rim",
    "pinned_nvidia_roots",
    "verify_chain",
    "verify_gpu_report",
]

NVIDIA_ROOT_SUBJECT_CN = "NVIDIA Device Identity CA"
#: tcg-dice-TcbInfo; NVIDIA's leaf carries SEQUENCE { INTEGER, SubjectPublicKeyInfo, FWID }.
FWID_EXTENSION_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID = "2.16.840.1.101.3.4.2.2"
FWID_SIZE = 48
ROOT_PEM = "nvidia_device_identity_ca.pem"
NONCE_NOT_CHECKED = "not checked: no expected nonce given, so the report's freshness is unknown"


@dataclass(frozen=True, slots=True)
class VerifiedGpu:
    """A report whose chain, signature, FWID, topology and (when asked) nonce and measurements
    verified.

    ``checks`` are the checks that passed and ``not_checked`` those that were not made (the nonce,
    when none was expected), each as (name, detail). ``measurements_matched`` names the reference
    values every active measurement matched (RIMs, or a SIMULATED GPU's own), or is None when they
    were not compared: then the GPU's CC state is not established.
    """

    report: GpuReport
    leaf: x509.Certificate
    checks: tuple[tuple[str, str], ...]
    not_checked: tuple[tuple[str, str], ...] = ()
    measurements_matched: str | None = None


def load_gpu_chain(pem: bytes) -> list[x509.Certificate]:
    """Certificates of a PEM chain, leaf first; :class:`ParseError` when there are none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise ParseError(f"GPU certificate chain is not valid PEM: {exc}") from exc
    return certs


def pinned_nvidia_roots() -> list[x509.Certificate]:
    """The NVIDIA Device Identity CA shipped in ``attest/roots`` (checked against nvtrust)."""
    data = resources.files("attest").joinpath("roots", ROOT_PEM).read_bytes()
    return x509.load_pem_x509_certificates(data)


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level DER TLVs of ``data`` as (tag, content); raises ValueError on bad encoding."""
    items: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise ValueError("truncated DER header")
        tag = data[offset]
        length = data[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or offset + count > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[offset : offset + count], "big")
            offset += count
        if offset + length > len(data):
            raise ValueError("DER value overruns its container")
        items.append((tag, data[offset : offset + length]))
        offset += length
    return items


def _oid_text(content: bytes) -> str:
    if not content:
        raise ValueError("empty OID")
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _find_fwids(data: bytes, found: list[bytes], depth: int = 0) -> None:
    """Collect every SEQUENCE { OID sha384, OCTET STRING digest } under ``data``."""
    if depth > 8:
        raise ValueError("DER nested too deeply")
    for tag, content in _der_items(data):
        if tag != 0x30 and tag & 0x20 == 0:
            continue
        inner = _der_items(content)
        if (
            tag == 0x30
            and len(inner) == 2
            and inner[0][0] == 0x06
            and inner[1][0] == 0x04
            and _oid_text(inner[0][1]) == SHA384_OID
        ):
            found.append(inner[1][1])
        else:
            _find_fwids(content, found, depth + 1)


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The SHA-384 FWID in the leaf's 2.23.133.5.4.1 extension; VerificationError('gpu-fwid')."""
    try:
        ext = leaf.extensions.get_extension_for_oid(FWID_EXTENSION_OID)
    except x509.ExtensionNotFound as exc:
        raise VerificationError("gpu-fwid", "leaf certificate has no FWID extension") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError("gpu-fwid", "FWID extension has an unexpected type")
    found: list[bytes] = []
    try:
        _find_fwids(value.value, found)
    except ValueError as exc:
        raise VerificationError("gpu-fwid", f"FWID extension is malformed: {exc}") from exc
    if len(found) != 1 or len(found[0]) != FWID_SIZE:
        raise VerificationError(
            "gpu-fwid", f"leaf FWID extension holds {len(found)} SHA-384 FWIDs, expected one"
        )
    return found[0]


def _verify_signature(report: GpuReport, leaf: x509.Certificate) -> None:
    key = public_key(leaf)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError("gpu-signature", "leaf key is not ECDSA P-384")
    half = SIGNATURE_SIZE // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError(
            "gpu-signature", "report signature does not verify with the leaf key"
        ) from exc


def verify_gpu_report(
    report: GpuReport,
    chain: Sequence[x509.Certificate],
    *,
    nonce: bytes | None,
    roots: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
    rims: Mapping[str, bytes] | None = None,
    rim_roots: Sequence[x509.Certificate] | None = None,
) -> VerifiedGpu:
    """Run every check in order; the first failure raises :class:`VerificationError`.

    ``nonce`` is the nonce the evidence must carry; None (said explicitly) when the caller
    expects none, and then the nonce is reported as not checked. ``rims`` maps a label (a file
    name) to a RIM file; the driver and the VBIOS RIM are both needed. ``rim_roots`` replaces the
    pinned NVIDIA RIM signing root.
    """
    return run_gpu_checks(
        report,
        chain,
        nonce=nonce,
        roots=roots,
        now=now,
        rims=rims,
        record=[],
        rim_roots=rim_roots,
    )


def _check_topology(report: GpuReport) -> str:
    flag = report.opaque.feature_flag
    if flag is None:
        return "legacy: no FEATURE_FLAG (firmware predates it), verified as a single GPU"
    if flag == TOPOLOGY_SPT:
        return "SPT (single GPU passthrough)"
    if flag == TOPOLOGY_MPT:
        return "MPT (multi-GPU passthrough), each GPU verified on its own"
    if flag == TOPOLOGY_PPCIE:
        raise VerificationError(
            "gpu-topology",
            "FEATURE_FLAG is PPCIE (protected PCIe): NVLink traffic is not encrypted and the "
            "NVSwitches are inside the trust boundary, which takes their evidence and a topology "
            "check; this verifier has neither, so PPCIE evidence is refused",
            hint="run each GPU in CC mode (SPT or MPT)",
        )
    raise VerificationError(
        "gpu-topology",
        f"FEATURE_FLAG {flag} is no topology mode (SPT=0, MPT=1, PPCIE=2)",
    )


def _check_simulated(report: GpuReport) -> str:
    runtime = report.measurements
    if set(runtime) != set(SIMULATED_REFERENCE):
        raise VerificationError(
            "gpu-sim-measurements",
            f"SIMULATED GPU reports blocks {sorted(runtime)}, the simulation measures "
            f"{sorted(SIMULATED_REFERENCE)}",
        )
    differ = [
        i for i, want in SIMULATED_REFERENCE.items() if not hmac.compare_digest(runtime[i], want)
    ]
    if differ:
        raise VerificationError(
            "gpu-sim-measurements",
            f"SIMULATED GPU block(s) {', '.join(map(str, differ))} differ from the simulation's "
            "reference values, as a GPU outside confidential-computing mode (CC off or "
            "DevTools) measures",
            hint="start the simulated GPU in CC mode",
        )
    return f"{len(runtime)} blocks match the SIMULATED reference values (no NVIDIA RIM exists)"


def run_gpu_checks(
    report: GpuReport,
    chain: Sequence[x509.Certificate],
    *,
    nonce: bytes | None,
    roots: Sequence[x509.Certificate] | None,
    now: datetime | None,
    rims: Mapping[str, bytes] | None,
    record: list[tuple[str, str]],
    rim_roots: Sequence[x509.Certificate] | None = None,
    not_checked: list[tuple[str, str]] | None = None,
) -> VerifiedGpu:
    """The checks behind :func:`verify_gpu_report`, appending each pass to ``record`` (and each
    check not made to ``not_checked``) as it goes, so that a caller can show how far a failed
    run got."""
    start = len(record)
    skipped: list[tuple[str, str]] = []
    when = now if now is not None else datetime.now(UTC)
    anchors = list(roots) if roots is not None else pinned_nvidia_roots()
    root = verify_chain(chain, anchors, now=when, check="gpu-chain")
    record.append(
        (
            "gpu-chain",
            f"{len(chain)} certificates to {root.subject.rfc4514_string()} "
            f"(SHA-256 {root.fingerprint(hashes.SHA256()).hex()[:16]}…)",
        )
    )
    leaf = chain[0]
    _verify_signature(report, leaf)
    record.append(("gpu-signature", f"ECDSA P-384 over {len(report.signed_bytes)} bytes"))
    fwid = leaf_fwid(leaf)
    if not report.opaque.fwid:
        raise VerificationError("gpu-fwid", "report carries no FWID")
    if not hmac.compare_digest(fwid, report.opaque.fwid):
        raise VerificationError(
            "gpu-fwid",
            f"leaf FWID {fwid.hex()} differs from report FWID {report.opaque.fwid.hex()}",
        )
    record.append(("gpu-fwid", fwid.hex()))
    if nonce is None:
        skipped.append(("gpu-nonce", NONCE_NOT_CHECKED))
        if not_checked is not None:
            not_checked.append(skipped[-1])
    else:
        if not hmac.compare_digest(report.request_nonce, nonce):
            raise VerificationError(
                "gpu-nonce",
                f"report nonce {report.request_nonce.hex()} differs from expected {nonce.hex()}",
            )
        record.append(("gpu-nonce", nonce.hex()))
    record.append(("gpu-topology", _check_topology(report)))
    matched: str | None = None
    if report.opaque.driver_version == SIMULATED_DRIVER_VERSION:
        record.append(("gpu-sim-measurements", _check_simulated(report)))
        matched = "the SIMULATED reference values"
    if rims:
        verified = []
        for label, data in rims.items():
            rim = verify_rim(data, label=label, roots=rim_roots, now=when)
            verified.append(rim)
            record.append(
                (
                    "gpu-rim-signature",
                    f"{label}: {rim.rim.version}, signed by {rim.signer.subject.rfc4514_string()} "
                    f"under {rim.root.subject.rfc4514_string()}",
                )
            )
        record.extend(check_rims(report, verified))
        matched = "the RIMs " + ", ".join(v.rim.label for v in verified)
    return VerifiedGpu(
        report=report,
        leaf=leaf,
        checks=tuple(record[start:]),
        not_checked=tuple(skipped),
        measurements_matched=matched,
    )
