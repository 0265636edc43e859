"""Certificate chains up to a pinned root, as every verifier here checks them (private).

:func:`verify_chain`, shared by the GPU report, RIM and TDX verifiers (public as
``attest.nvgpu.verify.verify_chain``), and :func:`issued_by`, one certificate's signature check.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from attest.errors import VerificationError

__all__ = ["issued_by", "public_key", "verify_chain"]


def _is_ca(cert: x509.Certificate) -> bool:
    """A CA allowed to sign certificates; a certificate whose extensions do not parse is not."""
    try:
        extensions = cert.extensions
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if not constraints.ca:
        return False
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _check_time(cert: x509.Certificate, now: datetime, check: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VerificationError(
            check,
            f"{cert.subject.rfc4514_string()} is not valid at {now.isoformat()} "
            f"({cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})",
        )


def public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes | None:
    """The certificate's key, or None when its type or encoding cannot be loaded (a certificate
    from the network may carry anything): callers check the type they need anyway."""
    try:
        return cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s name and key signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
    check: str,
) -> x509.Certificate:
    """Check ``chain`` (leaf first) links up to one of ``roots``; returns the root it reached.

    Every link is a direct issuance (names and signature), every issuer is a CA allowed to sign
    certificates, every certificate (and the root) is valid at ``now``. The chain may end in the
    pinned root itself or in a certificate that root issued; a self-signed certificate that is not
    pinned never anchors anything.
    """
    if not chain:
        raise VerificationError(check, "certificate chain is empty")
    if not roots:
        raise VerificationError(check, "no pinned root certificates to verify against")
    for cert in chain:
        _check_time(cert, now, check)
    for position, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        if not issued_by(cert, issuer):
            raise VerificationError(
                check,
                f"certificate {position} ({cert.subject.rfc4514_string()}) is not signed by "
                f"the next one ({issuer.subject.rfc4514_string()})",
            )
        if not _is_ca(issuer):
            raise VerificationError(
                check, f"{issuer.subject.rfc4514_string()} is not a CA allowed to sign certificates"
            )
    last = chain[-1]
    for root in roots:
        if last == root:
            return root
    for root in roots:
        if issued_by(last, root) and _is_ca(root):
            _check_time(root, now, check)
            return root
    raise VerificationError(
        check,
        f"chain ends in {last.subject.rfc4514_string()} "
        f"(SHA-256 {last.fingerprint(hashes.SHA256()).hex()}), which no pinned root issued",
    )
