"""Certificate revocation lists, as vendors serve them: one loader for every verifier.

AMD's KDS serves DER or PEM; Intel's PCS serves PEM or DER and a PCCS (or Intel's quote provider
library) hex-encoded DER. :func:`load_crl` takes all three and raises only our errors. What a CRL
must be issued by, and what it may revoke, is each verifier's business.
"""

from __future__ import annotations

import string
from datetime import datetime

from cryptography import x509

from attest.errors import ParseError, VerificationError

__all__ = ["MAX_CRL_SIZE", "load_crl", "validity_problem"]

#: Vendor CRLs are a few KiB to a few hundred KiB; anything far larger is not one.
MAX_CRL_SIZE = 8 << 20
_HEX = frozenset(string.hexdigits.encode())


def load_crl(data: bytes, *, check: str | None = None) -> x509.CertificateRevocationList:
    """A CRL from PEM, DER or hex-encoded DER bytes. Unparsable: :class:`ParseError`, or, with
    ``check``, a :class:`VerificationError` naming that check (a CRL given to a verification)."""
    try:
        if len(data) > MAX_CRL_SIZE:
            raise ValueError(f"{len(data)} bytes is larger than any vendor CRL")
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        text = data.strip()
        if text and len(text) % 2 == 0 and all(b in _HEX for b in text):
            data = bytes.fromhex(text.decode("ascii"))
        return x509.load_der_x509_crl(data)
    except (ValueError, x509.InvalidVersion) as exc:
        if check is not None:
            raise VerificationError(check, f"cannot parse CRL: {exc}") from exc
        raise ParseError("not a CRL (PEM, DER or hex-encoded DER)") from exc


def validity_problem(crl: x509.CertificateRevocationList, at: datetime) -> str | None:
    """Why ``crl`` cannot speak for ``at`` (issued later, or past its next update), or None."""
    if crl.last_update_utc > at:
        return f"is issued {crl.last_update_utc.isoformat()}, after {at.isoformat()}"
    if crl.next_update_utc is not None and crl.next_update_utc < at:
        return f"is stale: its next update was due {crl.next_update_utc.isoformat()}"
    return None
