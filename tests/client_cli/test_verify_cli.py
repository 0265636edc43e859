"""``openpcc verify`` (and ``ask``) exit codes and ``--json`` shapes, against a running appliance.

Exit codes: 0 ok, 2 network, 3 unparsable evidence or policy, 4 verification, 5 policy violation.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attest.bundle import CHECK_ORDER

VENV_BIN = Path(sys.executable).parent
CHECK_NAMES = [name for name, _ in CHECK_ORDER]


def _nothing_listening() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _openpcc(env: dict[str, str], *args: str, input: str | None = None) -> Any:
    return subprocess.run(
        [str(VENV_BIN / "openpcc"), *args],
        env=env,
        input=input,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _with_policy(appliance: Any, tmp_path: Path, policy: str) -> dict[str, str]:
    """The appliance's trust store, copied, with ``policy`` as its policy.toml."""
    config = tmp_path / "config"
    shutil.copytree(appliance.config, config)
    (config / "policy.toml").write_text(policy)
    return {**appliance.env, "OPENPCC_CONFIG_DIR": str(config)}


def _one_json(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    return out


def test_verify_json_ok(appliance: Any) -> None:
    r = appliance.cli("openpcc", "verify", "--json")
    assert r.returncode == 0, r.stderr
    out = _one_json(r.stdout)
    assert out["ok"] is True
    assert out["url"] == appliance.url
    assert [c["name"] for c in out["checks"]] == CHECK_NAMES
    for c in out["checks"]:
        assert set(c) == {"name", "ok", "status", "detail"}
        assert c["ok"] is True and c["status"] == "pass" and c["detail"]
    node = out["node"]
    assert node["tee"] == "sim-sev-snp" and node["simulated"] is True
    assert len(bytes.fromhex(node["measurement"])) == 48
    assert isinstance(node["key_id"], int) and node["tree_size"] >= 1
    assert out["verify_ms"] > 0
    assert "error" not in out


def test_verify_table_ok(appliance: Any) -> None:
    r = appliance.cli("openpcc", "verify")
    assert r.returncode == 0, r.stderr
    for _, title in CHECK_ORDER:
        assert title in r.stdout
    assert r.stdout.count("PASS") == len(CHECK_ORDER)
    assert "SIMULATED — NOT CONFIDENTIAL" in r.stdout
    assert "VERIFIED" in r.stdout


def test_verify_without_a_nonce_says_it_is_not_fresh(appliance: Any) -> None:
    r = appliance.cli("openpcc", "verify", "--json", "--nonce", "none")
    assert r.returncode == 0, r.stderr
    out = _one_json(r.stdout)
    [rd] = [c for c in out["checks"] if c["name"] == "report-data"]
    assert "not fresh" in rd["detail"]


def test_network_failure_exits_2(appliance: Any) -> None:
    url = _nothing_listening()
    r = appliance.cli("openpcc", "verify", "--json", url)
    assert r.returncode == 2, r.stdout + r.stderr
    out = _one_json(r.stdout)
    assert out["ok"] is False
    assert out["kind"] == "TransportError"
    assert url in out["error"] and out["hint"]
    r = appliance.cli("openpcc", "verify", url)
    assert r.returncode == 2
    assert r.stderr.startswith("error: cannot reach " + url)


def test_verification_failure_exits_4(appliance: Any, tmp_path: Path) -> None:
    # A trust store that never trusted the simulation root: the chain does not verify.
    env = {**appliance.env, "OPENPCC_CONFIG_DIR": str(tmp_path / "empty-config")}
    r = _openpcc(env, "verify", "--json")
    assert r.returncode == 4, r.stdout + r.stderr
    out = _one_json(r.stdout)
    assert out["ok"] is False
    assert out["kind"] == "VerificationError"
    assert out["check"] == "cert-chain"
    assert "SIMULATED" in out["error"]
    statuses = {c["name"]: c["status"] for c in out["checks"]}
    assert statuses["report-parse"] == "pass"
    assert statuses["cert-chain"] == "fail"
    assert statuses["key-config"] == "not-run"
    assert "node" not in out


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ("[snp]\nmin_tcb = { snp = 255 }\n", "REPORTED_TCB.SNP is"),
        ("[snp]\nvmpls = [1]\n", "VMPL"),
    ],
    ids=["min-tcb-above-simulated", "vmpl-1-only"],
)
def test_policy_violation_exits_5(appliance: Any, tmp_path: Path, policy: str, says: str) -> None:
    env = _with_policy(appliance, tmp_path, policy)
    r = _openpcc(env, "verify", "--json")
    assert r.returncode == 5, r.stdout + r.stderr
    out = _one_json(r.stdout)
    assert out["ok"] is False and out["kind"] == "PolicyError"
    assert out["check"] == "policy"
    assert says in out["error"]
    assert {c["name"]: c["status"] for c in out["checks"]}["policy"] == "fail"
    # ask refuses too, before any prompt leaves: one error line and a hint.
    before = appliance.metric("openpcc_decrypted_requests_total")
    r = _openpcc(env, "ask", "secret words")
    assert r.returncode == 5
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: policy: ") and says in lines[0]
    assert lines[1] == "hint: `openpcc verify` shows every check"
    assert len(lines) == 2
    assert appliance.metric("openpcc_decrypted_requests_total") == before


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ("", "is empty"),
        ("[snp]\nallow_debugg = true\n", "allow_debugg"),
        ("[snap]\nvmpls = [0]\n", "snap"),
        ("[skip]\nchecks = ['report-data']\n", "cannot be skipped"),
        ("[snp\n", "TOML"),
    ],
    ids=["empty", "unknown-key", "unknown-section", "unskippable", "not-toml"],
)
def test_strict_policy_parse_error_exits_3(
    appliance: Any, tmp_path: Path, policy: str, says: str
) -> None:
    env = _with_policy(appliance, tmp_path, policy)
    r = _openpcc(env, "verify", "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    out = _one_json(r.stdout)
    assert out == {"ok": False, "error": out["error"], "kind": "ParseError", "hint": out["hint"]}
    assert says in out["error"] and "policy.toml" in out["hint"]
    r = _openpcc(env, "verify")
    assert r.returncode == 3
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and says in lines[0]
    assert lines[1].startswith("hint: ")


def test_ask_json_errors_are_one_json_object(appliance: Any) -> None:
    url = _nothing_listening()
    r = appliance.cli("openpcc", "ask", "--json", "--url", url, "hello")
    assert r.returncode == 2
    out = _one_json(r.stdout)
    assert out["ok"] is False and out["kind"] == "TransportError" and out["hint"]
    r = appliance.cli("openpcc", "ask", "--json", input="   \n")
    assert r.returncode == 1
    assert _one_json(r.stdout)["error"] == "the prompt is empty"


def test_ask_network_error_is_one_line_and_a_hint(appliance: Any) -> None:
    url = _nothing_listening()
    r = appliance.cli("openpcc", "ask", "--url", url, "hello")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: cannot reach {url}: ConnectError",
        "hint: is the appliance up? `openpcc-appliance status`",
    ]


def test_trust_json(appliance: Any) -> None:
    r = appliance.cli("openpcc", "trust", "--json")
    assert r.returncode == 0, r.stderr
    out = _one_json(r.stdout)
    assert out["directory"] == str(appliance.config)
    assert out["amd_roots"] >= 3 and out["nvidia_roots"] >= 1
    assert [k.split("+")[0] for k in out["log_keys"]] == ["openpcc.appliance/log"]
    assert out["simulation_roots"]
    assert out["policy"] is None


def test_trust_json_error(appliance: Any, tmp_path: Path) -> None:
    env = {**appliance.env, "OPENPCC_CONFIG_DIR": str(tmp_path / "c")}
    r = _openpcc(env, "trust", "--json", "--log-key", "not a key")
    assert r.returncode == 3
    out = _one_json(r.stdout)
    assert out["ok"] is False and out["kind"] == "ParseError"


def test_a_malformed_url_is_one_line_exit_3(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from client_cli.main import app

    env = {"OPENPCC_CONFIG_DIR": str(tmp_path / "c"), "OPENPCC_URL": ""}
    for url, says in (
        ("http://127.0.0.1:99999", "Port out of range"),
        ("ftp://node", "is not http(s)://HOST[:PORT]"),
        ("http://", "is not http(s)://HOST[:PORT]"),
    ):
        r = CliRunner().invoke(app, ["ask", "--url", url, "hello"], env=env)
        assert r.exit_code == 3, (url, r.output)
        assert says in r.output and isinstance(r.exception, SystemExit)
