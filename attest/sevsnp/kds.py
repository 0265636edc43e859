"""AMD Key Distribution Service: where a VCEK lives, and the one fetcher that goes there.

``verify_report`` takes a fetcher parameter; pass ``httpx_fetcher`` to allow network access.
"""

from __future__ import annotations

import httpx

from attest.errors import TransportError
from attest.sevsnp.abi import TcbVersion

__all__ = ["KDS_BASE", "MAX_CERT_BYTES", "httpx_fetcher", "vcek_url"]

KDS_BASE = "https://kdsintf.amd.com"
MAX_CERT_BYTES = 64 * 1024


def vcek_url(product: str, chip_id: bytes, tcb: TcbVersion) -> str:
    """The KDS URL of the VCEK for ``chip_id`` at ``tcb`` (Turin uses the first 8 bytes)."""
    hwid = chip_id[:8] if product == "Turin" else chip_id
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product == "Turin":
        query = f"fmcSPL={tcb.fmc or 0}&" + query
    return f"{KDS_BASE}/vcek/v1/{product}/{hwid.hex()}?{query}"


def httpx_fetcher(url: str, *, timeout: float = 10.0) -> bytes:
    """GET ``url`` (bounded in size and time). Raises ``TransportError`` on any failure."""
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise TransportError(f"KDS answered {response.status_code} for {url}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CERT_BYTES:
                    raise TransportError(f"KDS response over {MAX_CERT_BYTES} bytes")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach AMD KDS: {exc}") from exc
