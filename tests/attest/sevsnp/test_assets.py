"""The committed negative assets match their generator, and fail the way they are named."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from attest.errors import ParseError, VerificationError
from attest.sevsnp.abi import parse_report
from attest.sevsnp.verify import verify_report

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parents[1] / "assets" / "sevsnp"


def _generator() -> Callable[[Path, Path], dict[str, bytes]]:
    spec = importlib.util.spec_from_file_location("snp_gen_assets", HERE / "gen_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generate: Callable[[Path, Path], dict[str, bytes]] = module.generate
    return generate


def test_assets_are_up_to_date(vectors: Path, tmp_path: Path) -> None:
    fresh = _generator()(vectors, tmp_path)
    for name, data in fresh.items():
        assert (ASSETS / name).read_bytes() == data, f"regenerate {name} with gen_assets.py"


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("milan_v2_bad_signature.bin", "signature"),
        ("milan_v2_bad_measurement.bin", "signature"),
        ("milan_v2_debug.bin", "signature"),
        ("milan_v2_version7.bin", "parse"),
        ("milan_v2_mbz_04c.bin", "parse"),
        ("milan_v2_signer_reserved.bin", "parse"),
        ("milan_v2_truncated.bin", "parse"),
    ],
)
def test_asset_fails_its_check(
    name: str, check: str, milan_v2_vcek: list[x509.Certificate]
) -> None:
    data = (ASSETS / name).read_bytes()
    if check == "parse":
        with pytest.raises(ParseError):
            parse_report(data)
        return
    with pytest.raises(VerificationError) as info:
        verify_report(parse_report(data), milan_v2_vcek, now=datetime(2025, 6, 1, tzinfo=UTC))
    assert info.value.check == check
