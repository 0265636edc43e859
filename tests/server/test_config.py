"""The gateway's TOML: the attestation limits have defaults and refuse values that make no sense."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attest.errors import ParseError
from server.config import GatewayConfig, load_config


def _load(tmp_path: Path, body: str) -> GatewayConfig:
    path = tmp_path / "gateway.toml"
    path.write_text("[gateway]\n" + body + '\n[engine]\nkind = "embedded"\n')
    return load_config(path)


def test_attestation_limits_default_and_load(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert cfg.max_attestation_waiting == 8
    assert cfg.attestation_timeout_s == 30.0
    cfg = _load(tmp_path, "max_attestation_waiting = 1\nattestation_timeout_s = 2")
    assert cfg.max_attestation_waiting == 1
    assert cfg.attestation_timeout_s == 2


WAITING = "max_attestation_waiting must be an integer >= 1, not "
TIMEOUT = "attestation_timeout_s must be a number of seconds > 0, not "


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_attestation_waiting = 0", WAITING + "0"),
        ("max_attestation_waiting = -3", WAITING + "-3"),
        ("max_attestation_waiting = 2.5", WAITING + "2.5"),
        ('max_attestation_waiting = "8"', WAITING + "'8'"),
        ("max_attestation_waiting = true", WAITING + "True"),
        ("attestation_timeout_s = 0", TIMEOUT + "0"),
        ("attestation_timeout_s = -1.5", TIMEOUT + "-1.5"),
        ("attestation_timeout_s = inf", TIMEOUT + "inf"),
        ("attestation_timeout_s = nan", TIMEOUT + "nan"),
        ('attestation_timeout_s = "30"', TIMEOUT + "'30'"),
        ("attestation_timeout_s = false", TIMEOUT + "False"),
    ],
)
def test_nonsense_attestation_limits_are_refused(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    with pytest.raises(ParseError, match=re.escape(f"gateway config {path}: {message}")):
        _load(tmp_path, line)


def test_the_check_holds_for_a_config_built_in_code() -> None:
    with pytest.raises(ParseError, match=re.escape(WAITING + "0")):
        GatewayConfig(max_attestation_waiting=0)
