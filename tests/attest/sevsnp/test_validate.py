"""Policy loading (strict TOML) and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from attest.errors import ParseError, PolicyError
from attest.sevsnp.abi import parse_report
from attest.sevsnp.validate import (
    POLICY_CHECKS,
    SnpPolicy,
    TcbMinimum,
    evaluate_report,
    validate_report,
)

FULL = """
measurements = ["{m}"]
report_data = "{rd}"
host_data = "{hd}"
allow_debug = false
allow_migrate_ma = false
vmpls = [0, 1]
min_tcb = {{ bootloader = 3, tee = 0, snp = 8, microcode = 115 }}
min_abi = "1.51"
id_key_digests = ["{z48}"]
author_key_digests = ["{z48}"]
require_signing_key = "vcek"
"""


def _full(milan_v2_raw: bytes) -> str:
    r = parse_report(milan_v2_raw)
    return FULL.format(
        m=r.measurement.hex(), rd=r.report_data.hex(), hd=r.host_data.hex(), z48="00" * 48
    )


def test_full_policy_passes_real_report(milan_v2_raw: bytes) -> None:
    policy = SnpPolicy.from_toml(_full(milan_v2_raw))
    assert policy.min_tcb == TcbMinimum(bootloader=3, tee=0, snp=8, microcode=115)
    assert policy.min_abi == (1, 51)
    passed = validate_report(parse_report(milan_v2_raw), policy, product="Milan")
    assert [name for name, _ in passed] == list(POLICY_CHECKS)


def test_from_toml_file(tmp_path: Path, milan_v2_raw: bytes) -> None:
    path = tmp_path / "p.toml"
    path.write_text(_full(milan_v2_raw))
    assert SnpPolicy.from_toml(path) == SnpPolicy.from_toml(str(path))


def test_floor_without_policy(milan_v2_raw: bytes) -> None:
    results = evaluate_report(parse_report(milan_v2_raw), SnpPolicy())
    by_name = {c.name: c for c in results}
    assert by_name["debug"].ok is True and by_name["migrate_ma"].ok is True
    assert by_name["measurement"].ok is None and by_name["measurement"].detail.startswith(
        "not checked"
    )
    assert by_name["report_data"].ok is None


def test_real_report_policy_violations(milan_v3_raw: bytes) -> None:
    report = parse_report(milan_v3_raw)
    policy = SnpPolicy.from_mapping(
        {"vmpls": [0], "require_signing_key": "vcek", "min_tcb": {"snp": 25}, "min_abi": "2.0"}
    )
    with pytest.raises(PolicyError) as info:
        validate_report(report, policy, product="Milan")
    text = " | ".join(info.value.violations)
    assert "VMPL is 1, policy allows [0]" in text
    assert "SIGNER_INFO.SIGNING_KEY is vlek, policy requires vcek" in text
    assert "REPORTED_TCB.SNP is 24, policy minimum 25" in text
    assert "CURRENT_MAJOR.CURRENT_MINOR is 1.55, policy minimum 2.0" in text
    assert info.value.check == "policy"


def test_single_violation_names_its_check(milan_v3_raw: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        validate_report(parse_report(milan_v3_raw), SnpPolicy(vmpls=(0,)))
    assert info.value.check == "vmpl"
    assert info.value.violations == ("VMPL is 1, policy allows [0]",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty policy"),
        ("measurement = []", "unknown policy key.*measurement"),
        ("min_tcb = { bootloader = 1, fcm = 2 }", "min_tcb.fcm"),
        ('measurements = ["abcd"]', "2 bytes, expected 48"),
        ('measurements = ["zz"]', "not hex"),
        ("measurements = []", "non-empty list"),
        ('report_data = "00"', "expected 64"),
        ('allow_debug = "yes"', "true or false"),
        ("vmpls = [4]", "0..3"),
        ("vmpls = [true]", "0..3"),
        ('min_abi = "1"', "major.minor"),
        ("min_abi = 1.5", "major.minor"),
        ('require_signing_key = "ask"', "vcek"),
        ("min_tcb = { snp = 300 }", "0..255"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_strict_loading(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        SnpPolicy.from_toml(text)


def test_policy_is_frozen() -> None:
    policy = SnpPolicy()
    with pytest.raises(AttributeError):
        policy.allow_debug = True  # type: ignore[misc]
