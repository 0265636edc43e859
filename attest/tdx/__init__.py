"""Intel TDX attestation: DCAP quote parsing (abi), verification (verify, collateral), policy
(validate)."""

from attest.tdx.abi import QeReport, Quote, QuoteHeader, TdReportBody, parse_quote
from attest.tdx.collateral import (
    TcbEvaluation,
    TcbStatus,
    TdxCollateral,
    check_tcb_status,
    evaluate_collateral,
    load_collateral_dir,
)
from attest.tdx.configfs import TsmReport, collect_tdx_quote
from attest.tdx.validate import TdxPolicy, validate_quote
from attest.tdx.verify import VerifiedQuote, pinned_intel_roots, verify_quote

__all__ = [
    "QeReport",
    "Quote",
    "QuoteHeader",
    "TcbEvaluation",
    "TcbStatus",
    "TdReportBody",
    "TdxCollateral",
    "TdxPolicy",
    "TsmReport",
    "VerifiedQuote",
    "check_tcb_status",
    "collect_tdx_quote",
    "evaluate_collateral",
    "load_collateral_dir",
    "parse_quote",
    "pinned_intel_roots",
    "validate_quote",
    "verify_quote",
]
