"""The composite binding of DESIGN.md section 3: what REPORT_DATA and the GPU nonce commit to.

Both sides (gateway and client) compute these from the bundle's fields. GPU evidence is hashed
exactly as it appears in the bundle (its base64 and PEM strings), never decoded and re-serialised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from attest.errors import ParseError

__all__ = [
    "NONCE_SIZE",
    "REPORT_DATA_LABEL",
    "canonical_json",
    "gpu_evidence_digest",
    "gpu_nonce",
    "manifest_digest",
    "report_data",
]

NONCE_SIZE = 32
REPORT_DATA_LABEL = b"openpcc/report-data/v1"
GPU_NONCE_LABEL = b"openpcc/gpu-nonce/v1"


def canonical_json(obj: object) -> bytes:
    """UTF-8, sorted keys, no insignificant whitespace. ParseError for what has no UTF-8 form
    (a lone surrogate, which JSON's ``\\ud800`` escape can smuggle in) or is not JSON at all."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ParseError("JSON holds a string with no UTF-8 form (a lone surrogate)") from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise ParseError(f"not canonical-JSON-able: {type(exc).__name__}") from exc


def gpu_nonce(nonce: bytes | None) -> bytes:
    """The nonce the GPU evidence is requested with, derived from the client's nonce."""
    return hashlib.sha256(GPU_NONCE_LABEL + b"\x00" + _nonce_or_zero(nonce)).digest()


def gpu_evidence_digest(gpus: Sequence[Mapping[str, object]]) -> bytes:
    return hashlib.sha256(canonical_json(list(gpus))).digest()


def manifest_digest(manifest: Mapping[str, object]) -> bytes:
    return hashlib.sha256(canonical_json(manifest)).digest()


def report_data(
    *,
    key_config: bytes,
    gpus: Sequence[Mapping[str, object]],
    manifest: Mapping[str, object],
    nonce: bytes | None,
) -> bytes:
    """The 64-byte REPORT_DATA a genuine node puts in its hardware report."""
    return hashlib.sha512(
        REPORT_DATA_LABEL
        + b"\x00"
        + hashlib.sha256(key_config).digest()
        + gpu_evidence_digest(gpus)
        + manifest_digest(manifest)
        + _nonce_or_zero(nonce)
    ).digest()


def _nonce_or_zero(nonce: bytes | None) -> bytes:
    if nonce is None:
        return b"\x00" * NONCE_SIZE
    if len(nonce) != NONCE_SIZE:
        raise ParseError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return nonce
