"""Foundation: one encrypted prompt answered end to end by a running simulated appliance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pexpect

VENV_BIN = Path(sys.executable).parent


def test_ask_streams_an_answer_through_the_verified_encrypted_path(appliance) -> None:  # type: ignore[no-untyped-def]
    before = appliance.metric("openpcc_decrypted_requests_total")
    child = pexpect.spawn(
        str(VENV_BIN / "openpcc"),
        ["ask", "--max-tokens", "8", "The capital of France is"],
        env=appliance.env,
        encoding="utf-8",
        timeout=60,
    )
    # The client reports the node it verified before any answer text arrives.
    child.expect("bound to " + appliance.url)
    child.expect("SIMULATED")
    # The fake engine answers with the prompt's words reversed: the answer came from this prompt.
    child.expect("echo: is France of capital The")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert appliance.metric("openpcc_decrypted_requests_total") == before + 1


def test_ask_json_reports_verification(appliance) -> None:  # type: ignore[no-untyped-def]
    r = appliance.cli("openpcc", "ask", "--json", "--max-tokens", "4", "hello brave world")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verified"] is True
    assert out["simulated"] is True
    assert out["tee"] == "sim-sev-snp"
    assert out["text"].startswith("echo: world brave hello")


def test_ask_reads_stdin(appliance) -> None:  # type: ignore[no-untyped-def]
    r = appliance.cli("openpcc", "ask", "--max-tokens", "4", input="one two three\n")
    assert r.returncode == 0, r.stderr
    assert "echo: three two one" in r.stdout


def test_status_json_shows_up_and_simulated(appliance) -> None:  # type: ignore[no-untyped-def]
    r = appliance.cli("openpcc-appliance", "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["state"] == "up"
    assert st["mode"] == "simulated"
    assert st["gateway_url"] == appliance.url
    assert st["log_vkey"].startswith("openpcc.appliance/log+")


def test_untrusted_simulation_root_is_refused_before_any_prompt(appliance, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env_cfg = tmp_path / "fresh-config"
    before = appliance.metric("openpcc_decrypted_requests_total")
    env = {**appliance.env, "OPENPCC_CONFIG_DIR": str(env_cfg)}
    r = subprocess.run(
        [str(VENV_BIN / "openpcc"), "ask", "secret words"],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 4
    assert "cert-chain" in r.stderr and "SIMULATED" in r.stderr
    assert appliance.metric("openpcc_decrypted_requests_total") == before
