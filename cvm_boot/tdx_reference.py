"""Reference values for a TDX release, read from the quote of one reference boot.

A TDX release must pin MRTD and RTMR0-2 (clients refuse a TD whose RTMR0-2 are not bound: MRTD
measures only the TD firmware). Neither can be recomputed from the recipe here: TDVF's page-add
replay (MRTD) and the CCEL event-log replay (RTMRs) are not implemented. So the operator boots the
image once on a TDX host they trust, and this module turns that boot's quote into the recipe's
``[tdx]`` table, after checking that the quote is worth pinning:

1. it parses as a DCAP quote and verifies: signature, QE report and identity, PCK chain to the
   pinned Intel root (or, for a simulated appliance, to its generated sim-tdx root: then the
   values are marked SIMULATED);
2. the TD runs with DEBUG off (a debug TD's registers say nothing about what runs in it);
3. where the recipe already pins MRTD, the quote's MRTD equals it (a boot of other firmware is
   not a reference for this recipe).

What it cannot check: that the host supplied honest firmware configuration (ACPI tables) on that
boot. RTMR0 records them, so a reference boot must happen on a host the operator trusts; later
boots on any host must then reproduce the same values or be refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx
from cryptography import x509

from attest import binding
from attest.errors import ParseError, PolicyError, TransportError, VerificationError
from attest.tdx import parse_quote
from attest.tdx.verify import SIMULATED_TD_QE_MRSIGNER, verify_quote
from cvm_boot.recipe import Recipe

__all__ = ["MAX_SOURCE_BYTES", "TdxReference", "fetch_quote", "quote_from", "reference_values"]

MAX_SOURCE_BYTES = 2 * 1024 * 1024
"""A quote or attestation bundle larger than this is refused (the client's bundle limit)."""

_TDX_BUNDLE_TEES = ("tdx", "sim-tdx")


@dataclass(frozen=True, slots=True)
class TdxReference:
    """MRTD and the four RTMRs of a verified, non-debug reference TD."""

    mrtd: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    chain: str
    """What the quote's PCK chain verified to (the chain check's detail)."""
    simulated: bool = False

    def pins(self) -> dict[str, str]:
        """The recipe's ``[tdx]`` values: MRTD and RTMR0-2 (RTMR3 belongs to the running TD)."""
        return {
            "mrtd": self.mrtd.hex(),
            **{f"rtmr{i}": self.rtmrs[i].hex() for i in range(3)},
        }

    def toml(self) -> str:
        lines = [
            *(
                ["# SIMULATED — NOT CONFIDENTIAL: a simulated TD's registers"]
                if self.simulated
                else []
            ),
            "# From a reference boot whose quote verified: " + self.chain,
            "[tdx]",
            *(f'{k} = "{v}"' for k, v in self.pins().items()),
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, object]:
        return {
            **self.pins(),
            "rtmr3": self.rtmrs[3].hex(),
            "chain": self.chain,
            "simulated": self.simulated,
        }


def quote_from(data: bytes) -> bytes:
    """The raw quote in ``data``: a DCAP quote as it is, or an attestation bundle's ``report``."""
    if len(data) > MAX_SOURCE_BYTES:
        raise ParseError(f"the quote source is larger than {MAX_SOURCE_BYTES} bytes")
    if not data.lstrip().startswith(b"{"):
        return data
    return _bundle_quote(_bundle(data))


def _bundle(data: bytes) -> dict[str, object]:
    try:
        bundle = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSON, UTF-8, huge numbers, nesting
        raise ParseError("the quote source looks like JSON but does not parse") from e
    if not isinstance(bundle, dict):
        raise ParseError("the attestation bundle is not a JSON object")
    return bundle


def _bundle_quote(bundle: dict[str, object]) -> bytes:
    tee = bundle.get("tee")
    if tee not in _TDX_BUNDLE_TEES:
        raise ParseError(
            f"the attestation bundle's tee is {tee!r}, not a TDX one",
            hint="reference values come from a TDX node (tee 'tdx')",
        )
    report = bundle.get("report")
    if not isinstance(report, str):
        raise ParseError("the attestation bundle has no 'report' string")
    try:
        return base64.b64decode(report, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParseError("the attestation bundle's 'report' is not base64") from e


def fetch_quote(url: str, *, timeout_s: float = 30.0) -> bytes:
    """The quote in ``url``'s ``/v1/attestation`` bundle, fresh for a nonce of ours.

    The bundle must echo the nonce and its quote's REPORTDATA must bind that bundle and nonce
    (DESIGN section 3), so a stale or substituted quote is never taken as the reference.
    """
    target = url.rstrip("/") + "/v1/attestation"
    nonce = secrets.token_bytes(32)
    try:
        with (
            httpx.Client(timeout=timeout_s) as client,
            client.stream("GET", target, params={"nonce": nonce.hex()}) as r,
        ):
            if r.status_code != 200:
                raise TransportError(f"GET {target}: HTTP {r.status_code}")
            buf = bytearray()
            for piece in r.iter_bytes():
                buf += piece
                if len(buf) > MAX_SOURCE_BYTES:
                    raise TransportError(f"GET {target}: response exceeds {MAX_SOURCE_BYTES} bytes")
    except httpx.HTTPError as e:
        raise TransportError(
            f"GET {target}: {type(e).__name__}",
            hint="is the reference boot's gateway up? `openpcc-appliance status` shows its URL",
        ) from e
    bundle = _bundle(bytes(buf))
    quote = _bundle_quote(bundle)
    if bundle.get("nonce") != nonce.hex():
        raise VerificationError("report-data", "the node's bundle does not echo our nonce")
    key_config, gpus, manifest = (bundle.get(k) for k in ("key_config", "gpus", "manifest"))
    if (
        not isinstance(key_config, str)
        or not isinstance(gpus, list)
        or not all(isinstance(g, dict) for g in gpus)
        or not isinstance(manifest, dict)
    ):
        raise ParseError("the attestation bundle lacks a key_config, gpus or manifest")
    try:
        raw_key_config = base64.b64decode(key_config, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParseError("the attestation bundle's key_config is not base64") from e
    expected = binding.report_data(
        key_config=raw_key_config, gpus=gpus, manifest=manifest, nonce=nonce
    )
    if not hmac.compare_digest(parse_quote(quote).body.report_data, expected):
        raise VerificationError(
            "report-data",
            "the quote's REPORTDATA does not bind this bundle and our nonce: not a fresh quote "
            "of this node",
        )
    return quote


def reference_values(
    raw_quote: bytes,
    *,
    simulation_roots: Sequence[x509.Certificate] | None = None,
    recipe: Recipe | None = None,
    now: datetime | None = None,
) -> TdxReference:
    """Verify ``raw_quote`` as described in the module docstring; its registers to pin.

    ``simulation_roots``: the quote is a simulated TD's (sim-tdx), verified to these roots and
    the simulator's QE instead of Intel's. ``recipe``, when given, must be a TDX recipe, and its
    pinned MRTD (if any) must be the quote's.
    """
    if recipe is not None and recipe.tee != "tdx":
        raise ParseError(f"recipe {recipe.name} is a {recipe.tee} recipe, not a TDX one")
    quote = parse_quote(raw_quote)
    simulated = simulation_roots is not None
    if simulated:
        assert simulation_roots is not None
        verified = verify_quote(
            quote, roots=simulation_roots, now=now, qe_mrsigner=SIMULATED_TD_QE_MRSIGNER
        )
    else:
        verified = verify_quote(quote, now=now)  # the pinned Intel root, Intel's TD QE
    body = verified.quote.body
    if body.debug:
        raise PolicyError(
            ["td_attributes.debug: the reference TD runs with DEBUG on, open to the host"],
            hint="boot the release with debug off; a debug TD's registers are no reference",
        )
    if recipe is not None and recipe.tdx_mrtd is not None and recipe.tdx_mrtd != body.mrtd:
        raise VerificationError(
            "measurement",
            f"quote MRTD {body.mrtd.hex()} != recipe [tdx].mrtd {recipe.tdx_mrtd.hex()}",
            hint="the reference boot ran other TD firmware than the recipe names",
        )
    chain = dict(verified.checks).get("tdx-pck-chain", "verified")
    return TdxReference(mrtd=body.mrtd, rtmrs=body.rtmrs, chain=chain, simulated=simulated)
