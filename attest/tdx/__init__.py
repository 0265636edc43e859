"""Intel TDX attestation: DCAP quote parsing (abi), verification (verify), policy (validate)."""

from attest.tdx.abi import QeReport, Quote, QuoteHeader, TdReportBody, parse_quote
from attest.tdx.configfs import TsmReport, collect_tdx_quote
from attest.tdx.validate import TdxPolicy, validate_quote
from attest.tdx.verify import TdxCollateral, VerifiedQuote, pinned_intel_roots, verify_quote

__all__ = [
    "QeReport",
    "Quote",
    "QuoteHeader",
    "TdReportBody",
    "TdxCollateral",
    "TdxPolicy",
    "TsmReport",
    "VerifiedQuote",
    "collect_tdx_quote",
    "parse_quote",
    "pinned_intel_roots",
    "validate_quote",
    "verify_quote",
]
