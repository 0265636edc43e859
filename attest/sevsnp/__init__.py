"""AMD SEV-SNP evidence: parse (abi), verify (verify), decide (validate), collect (configfs).

The simulated signer lives in ``attest.sevsnp.sim`` and is deliberately not re-exported here.
"""

from attest.sevsnp.abi import (
    REPORT_SIZE,
    SIGNED_SIZE,
    GuestPolicy,
    Report,
    TcbVersion,
    parse_report,
)
from attest.sevsnp.configfs import collect_report, parse_cert_table
from attest.sevsnp.validate import (
    PolicyCheck,
    SnpPolicy,
    TcbMinimum,
    evaluate_report,
    validate_report,
)
from attest.sevsnp.verify import (
    VerifiedReport,
    load_certificates,
    pinned_roots,
    verify_report,
)

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "GuestPolicy",
    "PolicyCheck",
    "Report",
    "SnpPolicy",
    "TcbMinimum",
    "TcbVersion",
    "VerifiedReport",
    "collect_report",
    "evaluate_report",
    "load_certificates",
    "parse_cert_table",
    "parse_report",
    "pinned_roots",
    "validate_report",
    "verify_report",
]
