"""Table-driven negative tests: one mutation per row, the specific failing check and exit code.

Every row runs twice: through the library (parse -> verify -> validate) and through the CLI.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from attest.errors import EXIT_CODES, OpenPCCError, ParseError, PolicyError, VerificationError
from attest.sevsnp.abi import TcbVersion, parse_report
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.sevsnp.validate import SnpPolicy, validate_report
from attest.sevsnp.verify import verify_report

REAL_NOW = datetime(2025, 6, 1, tzinfo=UTC)

Outcome = tuple[type[OpenPCCError], str] | None


def _library(
    raw: bytes,
    certs: list[x509.Certificate],
    *,
    roots: list[x509.Certificate] | None,
    now: datetime,
    policy: SnpPolicy,
) -> Outcome:
    try:
        report = parse_report(raw)
        verified = verify_report(report, certs, roots=roots, now=now)
        validate_report(verified.report, policy, product=verified.product)
    except ParseError:
        return ParseError, "parse"
    except VerificationError as exc:
        return VerificationError, exc.check
    except PolicyError as exc:
        return PolicyError, exc.check
    return None


def _cli(
    app: typer.Typer,
    tmp: Path,
    raw: bytes,
    certs: list[x509.Certificate],
    *,
    sim_root: x509.Certificate | None,
    now: datetime,
    policy_file: Path | None,
) -> tuple[int, dict[str, object]]:
    report = tmp / "report.bin"
    report.write_bytes(raw)
    chain = tmp / "certs.pem"
    chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
    args = ["verify-report", str(report), "--certs", str(chain), "--at", now.isoformat(), "--json"]
    if sim_root is not None:
        root = tmp / "sim-ark.pem"
        root.write_bytes(sim_root.public_bytes(Encoding.PEM))
        args += ["--simulated-root", str(root)]
    if policy_file is not None:
        args += ["--policy", str(policy_file)]
    result = CliRunner().invoke(app, args)
    return result.exit_code, json.loads(result.stdout)


def _expected_code(outcome: Outcome) -> int:
    return 0 if outcome is None else EXIT_CODES[outcome[0]]


def _assert_cli_names(doc: dict[str, object], outcome: Outcome) -> None:
    checks = doc["checks"]
    assert isinstance(checks, list)
    failed = [
        c["name"] for c in checks if c["ok"] is False and not c["detail"].startswith("not run")
    ]
    if outcome is None:
        assert doc["ok"] is True and failed == []
    elif outcome[1] == "policy":
        assert len(failed) > 1  # several policy checks failed at once
    else:
        assert failed == [outcome[1]]


# ---------------------------------------------------------------- real report (Milan v2, VCEK)


def _flip(offset: int, mask: int = 0x01) -> Callable[[bytearray], bytes]:
    def mutate(buf: bytearray) -> bytes:
        buf[offset] ^= mask
        return bytes(buf)

    return mutate


def _u32(offset: int, value: int) -> Callable[[bytearray], bytes]:
    def mutate(buf: bytearray) -> bytes:
        struct.pack_into("<I", buf, offset, value)
        return bytes(buf)

    return mutate


REAL_ROWS: list[tuple[str, Callable[[bytearray], bytes], Outcome]] = [
    ("unmodified", bytes, None),
    ("signature-r", _flip(0x2A0), (VerificationError, "signature")),
    ("signature-s", _flip(0x2E8 + 10), (VerificationError, "signature")),
    ("measurement", _flip(0x090), (VerificationError, "signature")),
    ("report-data", _flip(0x050 + 63), (VerificationError, "signature")),
    ("policy-debug-bit", _flip(0x00A, 0x08), (VerificationError, "signature")),
    ("policy-migrate-ma-bit", _flip(0x00A, 0x04), (VerificationError, "signature")),
    ("policy-mbo-bit-17-cleared", _flip(0x00A, 0x02), (ParseError, "parse")),
    ("policy-mbz-bit-40", _flip(0x00D, 0x01), (ParseError, "parse")),
    ("reported-tcb-bootloader", _flip(0x180), (VerificationError, "signature")),
    ("reported-tcb-microcode", _flip(0x187), (VerificationError, "signature")),
    ("current-tcb-snp", _flip(0x03E), (VerificationError, "signature")),
    ("chip-id", _flip(0x1A0 + 5), (VerificationError, "signature")),
    ("vmpl", _u32(0x030, 1), (VerificationError, "signature")),
    ("signer-info-vlek", _u32(0x048, 1 << 2), (VerificationError, "signature")),
    ("signer-info-none", _u32(0x048, 7 << 2), (VerificationError, "signature")),
    ("signer-info-mask-chip-key", _u32(0x048, 1 << 1), (VerificationError, "signature")),
    ("signer-info-reserved-key-3", _u32(0x048, 3 << 2), (ParseError, "parse")),
    ("signer-info-mbz-bit", _u32(0x048, 1 << 5), (ParseError, "parse")),
    ("version-3", _u32(0x000, 3), (VerificationError, "signature")),
    ("version-1", _u32(0x000, 1), (ParseError, "parse")),
    ("version-7", _u32(0x000, 7), (ParseError, "parse")),
    ("signature-algo-2", _u32(0x034, 2), (VerificationError, "signature")),
    ("reserved-04c", _flip(0x04C), (ParseError, "parse")),
    ("reserved-cpuid-on-v2", _flip(0x188), (ParseError, "parse")),
    ("reserved-1eb", _flip(0x1EB), (ParseError, "parse")),
    ("reserved-1f8", _flip(0x1F8), (ParseError, "parse")),
    ("reserved-signature-tail", _flip(0x49F), (ParseError, "parse")),
    ("length-short", lambda b: bytes(b[:-1]), (ParseError, "parse")),
    ("length-long", lambda b: bytes(b) + b"\0", (ParseError, "parse")),
    ("length-empty", lambda b: b"", (ParseError, "parse")),
]


@pytest.mark.parametrize(("name", "mutate", "expected"), REAL_ROWS, ids=[r[0] for r in REAL_ROWS])
def test_real_report_mutation(
    name: str,
    mutate: Callable[[bytearray], bytes],
    expected: Outcome,
    milan_v2_raw: bytes,
    milan_v2_vcek: list[x509.Certificate],
    cli_app: typer.Typer,
    tmp_path: Path,
) -> None:
    raw = mutate(bytearray(milan_v2_raw))
    got = _library(raw, milan_v2_vcek, roots=None, now=REAL_NOW, policy=SnpPolicy())
    assert got == expected
    if raw == b"":
        return  # the CLI cannot tell an empty report from an empty hex file: covered in test_cli
    code, doc = _cli(
        cli_app, tmp_path, raw, milan_v2_vcek, sim_root=None, now=REAL_NOW, policy_file=None
    )
    assert code == _expected_code(expected)
    _assert_cli_names(doc, expected)


# ---------------------------------------------------------------- simulated report (v3, VCEK)

MEASUREMENT = bytes(range(48))
REPORT_DATA = bytes(range(64, 128))


@dataclass(frozen=True)
class SimRow:
    name: str
    expected: Outcome
    sign: dict[str, object] = field(default_factory=dict)
    policy: Mapping[str, object] | None = None
    post: Callable[[bytes], bytes] | None = None
    now: datetime | None = None
    pinned_roots: bool = False


_OTHER = "ab" * 48
SIM_ROWS = [
    SimRow("baseline", None),
    SimRow(
        "baseline-with-full-policy",
        None,
        policy={
            "measurements": [MEASUREMENT.hex()],
            "report_data": REPORT_DATA.hex(),
            "host_data": "00" * 32,
            "vmpls": [0],
            "min_tcb": {"bootloader": 4, "snp": 22},
            "min_abi": "1.55",
            "require_signing_key": "vcek",
            "id_key_digests": ["00" * 48],
            "author_key_digests": ["00" * 48],
        },
    ),
    SimRow(
        "signature", (VerificationError, "signature"), post=lambda r: _flip(0x2A0)(bytearray(r))
    ),
    SimRow("measurement", (PolicyError, "measurement"), policy={"measurements": [_OTHER]}),
    SimRow(
        "measurement-signed-differently",
        (PolicyError, "measurement"),
        sign={"measurement": b"\x01" * 48},
        policy={"measurements": [MEASUREMENT.hex()]},
    ),
    SimRow("report-data", (PolicyError, "report_data"), policy={"report_data": "cd" * 64}),
    SimRow("host-data", (PolicyError, "host_data"), policy={"host_data": "01" * 32}),
    SimRow("policy-debug-bit", (PolicyError, "debug"), sign={"policy": 0x30000 | 1 << 19}),
    SimRow(
        "policy-debug-allowed",
        None,
        sign={"policy": 0x30000 | 1 << 19},
        policy={"allow_debug": True},
    ),
    SimRow(
        "policy-migrate-ma-bit", (PolicyError, "migrate_ma"), sign={"policy": 0x30000 | 1 << 18}
    ),
    SimRow(
        "tcb-not-the-vceks", (VerificationError, "tcb"), sign={"tcb": TcbVersion(4, 0, 23, 213)}
    ),
    SimRow("tcb-below-minimum", (PolicyError, "min_tcb"), policy={"min_tcb": {"microcode": 214}}),
    SimRow(
        "current-tcb-below-minimum",
        (PolicyError, "min_tcb"),
        sign={"current_tcb": TcbVersion(4, 0, 21, 213)},
        policy={"min_tcb": {"snp": 22}},
    ),
    SimRow("fmc-minimum-on-milan", (PolicyError, "min_tcb"), policy={"min_tcb": {"fmc": 1}}),
    SimRow("abi-below-minimum", (PolicyError, "min_abi"), policy={"min_abi": "1.56"}),
    SimRow("chip-id", (VerificationError, "chip_id"), sign={"chip_id": b"\x07" * 64}),
    SimRow("mask-chip-key", None, sign={"mask_chip_key": True}),
    SimRow("vmpl", (PolicyError, "vmpl"), sign={"vmpl": 2}, policy={"vmpls": [0]}),
    SimRow("signer-info-vlek", (VerificationError, "chain"), sign={"signing_key": "vlek"}),
    SimRow("signer-info-none", (VerificationError, "signature"), sign={"signing_key": "none"}),
    SimRow("require-vlek", (PolicyError, "signing_key"), policy={"require_signing_key": "vlek"}),
    SimRow("id-key-digest", (PolicyError, "id_key_digest"), policy={"id_key_digests": [_OTHER]}),
    SimRow(
        "author-key-digest",
        (PolicyError, "author_key_digest"),
        policy={"author_key_digests": [_OTHER]},
    ),
    SimRow("version-2", None, sign={"version": 2}),
    SimRow("version-5", None, sign={"version": 5}),
    SimRow("version-6", (ParseError, "parse"), sign={"version": 6}),
    SimRow("length", (ParseError, "parse"), post=lambda r: r[:-16]),
    SimRow(
        "cpuid-genoa-on-milan-chain",
        (VerificationError, "product"),
        sign={"cpuid": (0x19, 0x11, 1)},
    ),
    SimRow("cpuid-unknown", (VerificationError, "product"), sign={"cpuid": (0x17, 0x31, 0)}),
    SimRow("expired", (VerificationError, "validity"), now=datetime(2099, 1, 1, tzinfo=UTC)),
    SimRow("not-yet-valid", (VerificationError, "validity"), now=datetime(2001, 1, 1, tzinfo=UTC)),
    SimRow("untrusted-root", (VerificationError, "chain"), pinned_roots=True),
    SimRow(
        "every-violation-at-once",
        (PolicyError, "policy"),
        sign={"policy": 0x30000 | 1 << 19 | 1 << 18, "vmpl": 3},
        policy={"vmpls": [0], "measurements": [_OTHER]},
    ),
]


@pytest.mark.parametrize("row", SIM_ROWS, ids=[r.name for r in SIM_ROWS])
def test_simulated_report_mutation(
    row: SimRow,
    sim: SimulatedSnpSigner,
    cli_app: typer.Typer,
    tmp_path: Path,
    write_toml: Callable[[Path, Mapping[str, object]], Path],
) -> None:
    fields: dict[str, object] = {"report_data": REPORT_DATA, "measurement": MEASUREMENT, **row.sign}
    raw = sim.sign(**fields)  # type: ignore[arg-type]
    if row.post is not None:
        raw = row.post(raw)
    now = row.now or datetime.now(UTC)
    policy = SnpPolicy() if row.policy is None else SnpPolicy.from_mapping(row.policy)
    roots = None if row.pinned_roots else [sim.ark_certificate()]
    got = _library(raw, sim.certificates(), roots=roots, now=now, policy=policy)
    assert got == row.expected
    policy_file = None if row.policy is None else write_toml(tmp_path / "policy.toml", row.policy)
    code, doc = _cli(
        cli_app,
        tmp_path,
        raw,
        sim.certificates(),
        sim_root=None if row.pinned_roots else sim.ark_certificate(),
        now=now,
        policy_file=policy_file,
    )
    assert code == _expected_code(row.expected)
    assert doc["simulated"] is (not row.pinned_roots)
    _assert_cli_names(doc, row.expected)


def test_every_violation_is_reported_with_both_values(sim: SimulatedSnpSigner) -> None:
    raw = sim.sign(
        report_data=REPORT_DATA, measurement=MEASUREMENT, policy=0x30000 | 1 << 19 | 1 << 18, vmpl=3
    )
    report = parse_report(raw)
    verified = verify_report(report, sim.certificates(), roots=[sim.ark_certificate()])
    policy = SnpPolicy.from_mapping({"vmpls": [0, 1], "measurements": [_OTHER]})
    with pytest.raises(PolicyError) as info:
        validate_report(verified.report, policy, product=verified.product)
    violations = info.value.violations
    assert len(violations) == 4
    assert "POLICY.DEBUG is 1, policy requires 0" in violations
    assert "POLICY.MIGRATE_MA is 1, policy requires 0" in violations
    assert "VMPL is 3, policy allows [0, 1]" in violations
    assert f"MEASUREMENT is {MEASUREMENT.hex()}, policy allows {_OTHER}" in violations
    assert info.value.check == "policy"
