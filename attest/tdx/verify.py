"""Verify a TDX quote's signature chain up to the pinned Intel SGX Root CA.

Checks, in order; the first failure raises :class:`VerificationError` naming it:

``tdx-pck-chain``            PCK leaf -> PCK Platform/Processor CA -> a pinned Intel SGX Root CA,
                             every certificate valid at ``now``;
``tdx-qe-report-signature``  the QE report is signed by the PCK key (ECDSA P-256 / SHA-256);
``tdx-qe-report-data``       QE REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zeros;
``tdx-qe-identity-floor``    the enclave that signed is Intel's TD Quoting Enclave: MRSIGNER is
                             Intel's (``INTEL_TD_QE_MRSIGNER``, or the simulator's for sim-tdx),
                             ISVPRODID 2, DEBUG off. The PCK key signs *any* enclave's report on
                             the platform, so without this a host-built enclave holding the
                             provisioning key could quote whatever TD it likes; collateral's QE
                             identity checks the same and more (ISVSVN level), but is optional;
``tdx-quote-signature``      header and body are signed by the attestation key;
then, when collateral is given, the checks of :func:`attest.tdx.collateral.evaluate_collateral`
(TCB signing chain, document signatures and validity, FMSPC, TDX module and QE identity, TCB
level, never Revoked) and ``tdx-tcb-status``: the status is one the caller accepts (default
UpToDate only, so a caller that never applies a policy still fails closed).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import VerificationError
from attest.nvgpu._chain import public_key
from attest.nvgpu.verify import verify_chain
from attest.tdx.abi import ECDSA_SIGNATURE_SIZE, Quote
from attest.tdx.collateral import (
    DEFAULT_ACCEPTED_TCB_STATUSES,
    TcbEvaluation,
    TcbStatus,
    TdxCollateral,
    check_tcb_status,
    evaluate_collateral,
)

__all__ = [
    "INTEL_ROOT_SUBJECT_CN",
    "INTEL_TD_QE_MRSIGNER",
    "SIMULATED_TD_QE_MRSIGNER",
    "TD_QE_ISV_PROD_ID",
    "TdxCollateral",
    "VerifiedQuote",
    "pinned_intel_roots",
    "verify_quote",
]

INTEL_ROOT_SUBJECT_CN = "Intel SGX Root CA"
ROOT_PEM = "intel_sgx_root_ca.pem"
QE_REPORT_DATA_HASH_SIZE = 32
INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
)
"""MRSIGNER of Intel's Quoting Enclaves (Intel PCS QE identity ``TD_QE``; the real vector's)."""
TD_QE_ISV_PROD_ID = 2
SIMULATED_TD_QE_MRSIGNER = hashlib.sha256(b"OpenPCC SIMULATED TD QE signer").digest()
"""The simulated TD QE's MRSIGNER (attest.tdx.sim), expected of sim-tdx quotes instead."""
_SGX_ATTRIBUTE_DEBUG = 0x02  # ATTRIBUTES.FLAGS bit 1


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    """A quote whose signature chain verified to a pinned Intel root; ``tcb`` is the collateral
    evaluation when collateral was given."""

    quote: Quote
    pck_certificate: x509.Certificate
    checks: tuple[tuple[str, str], ...]
    tcb: TcbEvaluation | None = None


def pinned_intel_roots() -> list[x509.Certificate]:
    """The Intel SGX Root CA shipped in ``attest/roots`` (SHA-256 44a0196b…74d3)."""
    data = resources.files("attest").joinpath("roots", ROOT_PEM).read_bytes()
    return x509.load_pem_x509_certificates(data)


def _raw_signature(raw: bytes) -> bytes:
    half = ECDSA_SIGNATURE_SIZE // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def _p256_verify(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(_raw_signature(signature), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError as exc:
        raise VerificationError(
            "tdx-quote-signature", "attestation key is not a P-256 point"
        ) from exc


def verify_quote(
    quote: Quote,
    *,
    roots: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
    collateral: TdxCollateral | None = None,
    collateral_roots: Sequence[x509.Certificate] | None = None,
    accepted_tcb_statuses: Collection[TcbStatus | str] = DEFAULT_ACCEPTED_TCB_STATUSES,
    qe_mrsigner: bytes = INTEL_TD_QE_MRSIGNER,
) -> VerifiedQuote:
    """Run every check in order; the first failure raises :class:`VerificationError` (or
    :class:`PolicyError` ``tdx-tcb-status`` for a genuine but unaccepted TCB status).

    ``collateral_roots`` replaces the pinned Intel root for the collateral's signing chain only
    (tests sign collateral with their own root; real collateral chains to Intel's).
    """
    checks: list[tuple[str, str]] = []
    pck = run_quote_checks(
        quote, roots=roots, now=now, collateral=None, record=checks, qe_mrsigner=qe_mrsigner
    )
    tcb = None
    if collateral is not None:
        tcb = _run_collateral(
            quote, pck, collateral, collateral_roots, now, accepted_tcb_statuses, checks
        )
    return VerifiedQuote(quote=quote, pck_certificate=pck, checks=tuple(checks), tcb=tcb)


def _run_collateral(
    quote: Quote,
    pck: x509.Certificate,
    collateral: TdxCollateral,
    roots: Sequence[x509.Certificate] | None,
    now: datetime | None,
    accepted: Collection[TcbStatus | str],
    record: list[tuple[str, str]],
) -> TcbEvaluation:
    tcb = evaluate_collateral(quote, pck, collateral, roots=roots, now=now, record=record)
    record.append(check_tcb_status(tcb, accepted))
    return tcb


def run_quote_checks(
    quote: Quote,
    *,
    roots: Sequence[x509.Certificate] | None,
    now: datetime | None,
    collateral: TdxCollateral | None,
    record: list[tuple[str, str]],
    collateral_roots: Sequence[x509.Certificate] | None = None,
    accepted_tcb_statuses: Collection[TcbStatus | str] = DEFAULT_ACCEPTED_TCB_STATUSES,
    qe_mrsigner: bytes = INTEL_TD_QE_MRSIGNER,
) -> x509.Certificate:
    """The checks behind :func:`verify_quote`, appending each pass to ``record``."""
    when = now if now is not None else datetime.now(UTC)
    anchors = list(roots) if roots is not None else pinned_intel_roots()
    root = verify_chain(quote.pck_chain, anchors, now=when, check="tdx-pck-chain")
    record.append(
        (
            "tdx-pck-chain",
            f"{len(quote.pck_chain)} certificates to {root.subject.rfc4514_string()} "
            f"(SHA-256 {root.fingerprint(hashes.SHA256()).hex()[:16]}…)",
        )
    )
    pck = quote.pck_chain[0]
    pck_key = public_key(pck)
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or pck_key.curve.name != "secp256r1":
        raise VerificationError("tdx-qe-report-signature", "PCK key is not ECDSA P-256")
    if not _p256_verify(pck_key, quote.qe_report_signature, quote.qe_report.raw):
        raise VerificationError(
            "tdx-qe-report-signature", "QE report signature does not verify with the PCK key"
        )
    record.append(("tdx-qe-report-signature", "QE report signed by the PCK key"))

    expected = (
        hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
        + b"\x00" * QE_REPORT_DATA_HASH_SIZE
    )
    if not hmac.compare_digest(quote.qe_report.report_data, expected):
        raise VerificationError(
            "tdx-qe-report-data",
            f"QE report data {quote.qe_report.report_data.hex()} is not "
            f"SHA-256(attestation key || QE auth data) padded ({expected.hex()})",
        )
    record.append(("tdx-qe-report-data", "binds the attestation key and QE auth data"))

    qe = quote.qe_report
    problems = []
    if not hmac.compare_digest(qe.mrsigner, qe_mrsigner):
        problems.append(f"MRSIGNER {qe.mrsigner.hex()} is not {qe_mrsigner.hex()}")
    if qe.isv_prod_id != TD_QE_ISV_PROD_ID:
        problems.append(f"ISVPRODID {qe.isv_prod_id} is not {TD_QE_ISV_PROD_ID} (TD QE)")
    if qe.attributes[0] & _SGX_ATTRIBUTE_DEBUG:
        problems.append("the enclave runs with DEBUG on")
    if problems:
        raise VerificationError(
            "tdx-qe-identity-floor",
            "QE report is not from Intel's TD Quoting Enclave: " + "; ".join(problems),
        )
    record.append(
        (
            "tdx-qe-identity-floor",
            f"TD QE (MRSIGNER {qe.mrsigner.hex()[:16]}…, ISVPRODID 2; its SVN is judged only "
            "with collateral)",
        )
    )

    key = _attestation_key(quote.attestation_key)
    if not _p256_verify(key, quote.signature, quote.signed_bytes):
        raise VerificationError(
            "tdx-quote-signature", "quote signature does not verify with the attestation key"
        )
    record.append(("tdx-quote-signature", f"ECDSA P-256 over {len(quote.signed_bytes)} bytes"))

    if collateral is not None:
        _run_collateral(
            quote, pck, collateral, collateral_roots, now, accepted_tcb_statuses, record
        )
    return pck
