"""Certificates named on a command line or in a policy: one reader, one kind of error."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from attest.errors import ParseError

__all__ = ["read_pem_certificates"]


def read_pem_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """The PEM certificates in ``path``; :class:`ParseError` naming ``what`` and the file when it
    cannot be read or holds none."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as e:
        raise ParseError(f"{what}: cannot read {path}: {e.strerror or e}") from e
    except (ValueError, x509.InvalidVersion) as e:
        raise ParseError(f"{what} {path} is not PEM certificates") from e
