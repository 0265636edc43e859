"""The trust store and policy file with Intel TDX: pinned Intel root, simulated TDX roots told
apart by subject, and the strict ``[tdx]`` policy section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from attest.errors import ParseError
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.tdx.sim import SimulatedTdxSigner
from client_cli.main import app
from client_cli.trust import TrustStore, is_tdx_root, load_policy

INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
MRTD_HEX = "ab" * 48


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("sims")
    return {
        "tdx": SimulatedTdxSigner.generate(base / "tdx")
        .root_certificate()
        .public_bytes(Encoding.PEM),
        "snp": SimulatedSnpSigner.generate(base / "snp")
        .ark_certificate()
        .public_bytes(Encoding.PEM),
        "gpu": SimulatedGpu.generate(base / "gpu").root_certificate().public_bytes(Encoding.PEM),
    }


def test_anchors_pin_intel_and_sort_simulation_roots_by_subject(
    tmp_path: Path, sims: dict[str, bytes]
) -> None:
    store = TrustStore(tmp_path)
    empty = store.anchors()
    assert [c.fingerprint(hashes.SHA256()).hex() for c in empty.intel_roots] == [INTEL_ROOT_SHA256]
    assert empty.simulation_tdx_roots == () and empty.simulation_snp_roots == ()

    store.trust_simulation(sims["snp"] + sims["tdx"] + sims["gpu"])
    a = store.anchors()
    (tdx,) = a.simulation_tdx_roots
    assert is_tdx_root(tdx) and tdx.public_bytes(Encoding.PEM) == sims["tdx"]
    assert len(a.simulation_snp_roots) == 2 and not any(map(is_tdx_root, a.simulation_snp_roots))
    assert a.simulation_gpu_roots == a.simulation_snp_roots


def test_trust_command_takes_several_files_and_lists_every_root(
    tmp_path: Path, sims: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "tdx.pem").write_bytes(sims["tdx"])
    (tmp_path / "gpu.pem").write_bytes(sims["gpu"].rstrip(b"\n"))  # no final newline
    args = ["trust", "--simulated", str(tmp_path / "tdx.pem"), "--simulated"]
    r = CliRunner().invoke(app, [*args, str(tmp_path / "gpu.pem"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["intel_roots"] == 1
    assert len(out["simulation_roots"]) == 2
    assert any("Intel SGX Root CA" in s and "SIMULATED TDX" in s for s in out["simulation_roots"])
    anchors = TrustStore(tmp_path / "config").anchors()
    assert len(anchors.simulation_tdx_roots) == 1 and len(anchors.simulation_gpu_roots) == 1


def test_policy_tdx_section(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f'[tdx]\nmrtd = ["{MRTD_HEX}"]\n')
    policy = load_policy(path)
    assert policy.tdx is not None and policy.tdx.mrtd == (bytes.fromhex(MRTD_HEX),)
    assert policy.tdx.allow_debug is False
    assert load_policy(None).tdx is None and not load_policy(None).tdx_or_floor.allow_debug


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[tdx]\n", "[tdx] TDX policy is empty"),
        ("[tdx]\nallow_debug = true\n", "may not allow debug"),
        ('[tdx]\nreport_data = "' + "00" * 64 + '"\n', "may not pin report_data"),
        ("[tdx]\nmrtd = []\n", "[tdx] TDX policy mrtd must be a non-empty list"),
        ('[tdx]\nmrsigner = ["00"]\n', "unknown TDX policy keys: mrsigner"),
    ],
    ids=["empty", "debug", "report-data", "empty-allowlist", "unknown-key"],
)
def test_policy_tdx_section_is_strict(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ParseError) as e:
        load_policy(path)
    assert says in str(e.value) and str(path) in str(e.value)
    assert e.value.hint
