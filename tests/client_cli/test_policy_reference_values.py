"""Reference values in the trust store's policy.toml: ``[tdx] collateral`` and ``[gpu] rims``
(with an optional ``rim_root``), parsed strictly, paths relative to the policy file, each bad
file a one-line error naming it; ``openpcc trust --json`` shows them, and a Session (what
``verify``, ``ask`` and ``chat`` use) compares the node's GPU with them.

Collateral and RIMs are the FAKE ones of ``tests/attest``: signed by TEST roots, never Intel's or
NVIDIA's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from attest.errors import ParseError, VerificationError
from attest.nvgpu import GpuReport, SimulatedGpu, parse_gpu_report
from attest.tdx import TcbStatus, parse_quote
from attest.tdx.collateral import QE_IDENTITY_FILE, TCB_INFO_FILE, TCB_SIGNING_CHAIN_FILE
from attest.tdx.sim import SimulatedTdxSigner
from client_cli.main import app
from client_cli.trust import load_policy, load_policy_file

from ..attest.nvgpu.fake_rim import FakeRimSigner, rim_pair, unsigned_rim
from ..attest.tdx.fake_collateral import CollateralBuilder, FakeTcbSigner, crl

CHAT = {"messages": [{"role": "user", "content": "secret words"}], "stream": True}


class ReferenceFiles:
    """FAKE reference files for one simulated GPU and one simulated TDX platform, written under
    ``directory``: ``collateral/``, ``rims/driver.swidtag``, ``rims/vbios.swidtag``,
    ``rim-root.pem``, and a tampered and a changed-measurement RIM beside them."""

    def __init__(self, directory: Path, gpu: SimulatedGpu) -> None:
        self.directory = directory
        base = directory / "signers"
        quote = parse_quote(
            SimulatedTdxSigner.generate(base / "tdx").sign(report_data=bytes(64), mrtd=bytes(48))
        )
        tcb = FakeTcbSigner.generate()
        collateral = dataclasses.replace(
            CollateralBuilder.for_quote(tcb, quote).build(),
            pck_crl=crl(tcb.root, tcb.root_key, revoked=(7,)),
            root_ca_crl=crl(tcb.root, tcb.root_key),
        )
        (directory / "collateral").mkdir(parents=True)
        (directory / "collateral" / TCB_INFO_FILE).write_bytes(collateral.tcb_info)
        (directory / "collateral" / QE_IDENTITY_FILE).write_bytes(collateral.qe_identity)
        (directory / "collateral" / TCB_SIGNING_CHAIN_FILE).write_bytes(collateral.issuer_chain_pem)
        assert collateral.pck_crl is not None and collateral.root_ca_crl is not None
        (directory / "collateral" / "pck_crl.der").write_bytes(collateral.pck_crl)
        (directory / "collateral" / "root_ca_crl.der").write_bytes(collateral.root_ca_crl)
        self.collateral = collateral

        self.report: GpuReport = parse_gpu_report(gpu.evidence(bytes(32)))
        signer = FakeRimSigner.generate()
        (directory / "rim-root.pem").write_bytes(signer.root.public_bytes(Encoding.PEM))
        rims = directory / "rims"
        rims.mkdir()
        opaque = self.report.opaque
        driver, vbios = rim_pair(self.report)
        (rims / "driver.swidtag").write_bytes(
            signer.sign(unsigned_rim(opaque.driver_version, driver))
        )
        (rims / "vbios.swidtag").write_bytes(signer.sign(unsigned_rim(opaque.vbios_version, vbios)))
        _, changed = rim_pair(self.report, change={2: bytes(48)})
        (rims / "vbios-changed.swidtag").write_bytes(
            signer.sign(unsigned_rim(opaque.vbios_version, changed))
        )
        signed = (rims / "vbios.swidtag").read_bytes()
        (rims / "vbios-tampered.swidtag").write_bytes(
            signed.replace(b'index="1"', b'index="100"', 1)
        )


@pytest.fixture(scope="module")
def refs(sim_node: Any, tmp_path_factory: pytest.TempPathFactory) -> ReferenceFiles:
    return ReferenceFiles(tmp_path_factory.mktemp("refs"), sim_node.gpu)


FULL = """\
[tdx]
collateral = "../collateral"
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
[gpu]
min_gpus = 1
rims = ["../rims/driver.swidtag", "../rims/vbios.swidtag"]
rim_root = "../rim-root.pem"
"""


def _write_policy(refs: ReferenceFiles, text: str, name: str = "policy.toml") -> Path:
    """A policy file one directory below the reference files, so every path is relative."""
    config = refs.directory / "config"
    config.mkdir(exist_ok=True)
    path = config / name
    path.write_text(text)
    return path


def test_policy_names_collateral_and_rims_relative_to_itself(
    refs: ReferenceFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_policy(refs, FULL)
    monkeypatch.chdir(tmp_path)  # not where the policy is
    policy, files = load_policy_file(path)
    assert policy.tdx_collateral == refs.collateral
    assert policy.tdx is not None
    assert policy.tdx.accepted_tcb_statuses == (
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
    )
    assert [r.rim.label for r in policy.gpu_rims] == [
        "../rims/driver.swidtag",
        "../rims/vbios.swidtag",
    ]
    assert [r.rim.version for r in policy.gpu_rims] == [
        refs.report.opaque.driver_version,
        refs.report.opaque.vbios_version,
    ]
    here = refs.directory.resolve()
    assert files.tdx_collateral == here / "collateral"
    assert files.gpu_rims == (here / "rims" / "driver.swidtag", here / "rims" / "vbios.swidtag")
    assert files.rim_root == here / "rim-root.pem"


def test_a_tdx_table_with_only_collateral_keeps_the_floor(refs: ReferenceFiles) -> None:
    policy = load_policy(_write_policy(refs, '[tdx]\ncollateral = "../collateral"\n', "c.toml"))
    assert policy.tdx is None and policy.tdx_collateral == refs.collateral
    assert policy.tdx_or_floor.accepted_tcb_statuses == (TcbStatus.UP_TO_DATE,)
    assert policy.gpu_rims == ()


def test_no_reference_values_means_none(refs: ReferenceFiles) -> None:
    policy = load_policy(_write_policy(refs, "[gpu]\nmin_gpus = 1\n", "plain.toml"))
    assert policy.tdx_collateral is None and policy.gpu_rims == ()
    assert load_policy(None).tdx_collateral is None and load_policy(None).gpu_rims == ()


RIMS = '"../rims/driver.swidtag", "../rims/vbios.swidtag"'
ROOT = 'rim_root = "../rim-root.pem"'

BAD = [
    ("unknown-gpu-key", f"[gpu]\nrims = [{RIMS}]\nrim_roots = []\n", "unknown key(s) in [gpu]"),
    ("rims-empty", "[gpu]\nrims = []\n", "[gpu] rims must be a non-empty list of RIM file paths"),
    ("rims-string", '[gpu]\nrims = "../rims/driver.swidtag"\n', "[gpu] rims must be a non-empty"),
    (
        "rims-twice",
        f'[gpu]\nrims = [{RIMS}, "../rims/driver.swidtag"]\n{ROOT}\n',
        "[gpu] rims lists a file twice",
    ),
    (
        "rim-missing",
        f'[gpu]\nrims = ["../rims/nothing.swidtag"]\n{ROOT}\n',
        "[gpu] rims: cannot read {dir}/rims/nothing.swidtag: No such file",
    ),
    (
        "rim-tampered",
        f'[gpu]\nrims = ["../rims/vbios-tampered.swidtag"]\n{ROOT}\n',
        "[gpu] rims {dir}/rims/vbios-tampered.swidtag: gpu-rim-signature: ",
    ),
    (
        "rim-not-xml",
        f'[gpu]\nrims = ["../rim-root.pem"]\n{ROOT}\n',
        "[gpu] rims {dir}/rim-root.pem: ../rim-root.pem is not a valid NVIDIA RIM",
    ),
    (
        "rim-untrusted",  # no rim_root: the pinned NVIDIA root, which never signed a TEST RIM
        f"[gpu]\nrims = [{RIMS}]\n",
        "[gpu] rims {dir}/rims/driver.swidtag: gpu-rim-chain: ",
    ),
    ("root-without-rims", f"[gpu]\n{ROOT}\n", "[gpu] rim_root is given without [gpu] rims"),
    (
        "root-not-pem",
        f'[gpu]\nrims = [{RIMS}]\nrim_root = "../rims/driver.swidtag"\n',
        "[gpu] rim_root {dir}/rims/driver.swidtag is not PEM certificates",
    ),
    (
        "root-missing",
        f'[gpu]\nrims = [{RIMS}]\nrim_root = "../none.pem"\n',
        "[gpu] rim_root: cannot read {dir}/none.pem",
    ),
    ("rim-path-type", "[gpu]\nrims = [1]\n", "[gpu] rims must be a non-empty list"),
    ("collateral-type", "[tdx]\ncollateral = 5\n", "[tdx] collateral must be a path"),
    (
        "collateral-missing",
        '[tdx]\ncollateral = "../nowhere"\n',
        "[tdx] collateral: cannot read TDX collateral {dir}/nowhere/tcb_info.json",
    ),
    (
        "collateral-not-json",
        '[tdx]\ncollateral = "../bad-collateral"\n',
        "[tdx] collateral {dir}/bad-collateral/tcb_info.json: TCB info is malformed",
    ),
    (
        "collateral-crl-not-a-crl",
        '[tdx]\ncollateral = "../bad-crl"\n',
        "[tdx] collateral {dir}/bad-crl/pck_crl.der: not a CRL (PEM, DER or hex-encoded DER)",
    ),
    ("tdx-unknown-key", '[tdx]\ncollateral = "../collateral"\ncolateral = 1\n', "colateral"),
    (
        "rims-but-gpu-skipped",
        f'[gpu]\nrims = [{RIMS}]\n{ROOT}\n[skip]\nchecks = ["gpu"]\n',
        "GPU RIMs are given but the gpu check is skipped",
    ),
]


@pytest.mark.parametrize(("text", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_reference_values_are_one_line_naming_the_file(
    refs: ReferenceFiles, text: str, says: str
) -> None:
    bad_collateral = refs.directory / "bad-collateral"
    if not bad_collateral.exists():
        bad_collateral.mkdir()
        for name in (TCB_INFO_FILE, QE_IDENTITY_FILE, TCB_SIGNING_CHAIN_FILE):
            (bad_collateral / name).write_text("not what Intel serves")
    bad_crl = refs.directory / "bad-crl"
    if not bad_crl.exists():
        shutil.copytree(refs.directory / "collateral", bad_crl)
        (bad_crl / "pck_crl.der").write_bytes(b"not what Intel serves")
    path = _write_policy(refs, text, "bad.toml")
    with pytest.raises(ParseError) as e:
        load_policy(path)
    message = str(e.value)
    assert message.startswith(f"policy {path}: "), message
    assert says.format(dir=refs.directory.resolve()) in message, message
    assert "\n" not in message and e.value.hint


def test_trust_json_shows_the_reference_values(
    refs: ReferenceFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = refs.directory / "config"
    (config / "policy.toml").write_text(FULL)
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(config))
    r = CliRunner().invoke(app, ["trust", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout.strip().splitlines()[-1])["reference_values"]
    collateral = shown["tdx_collateral"]
    here = refs.directory.resolve()
    assert collateral["directory"] == str(here / "collateral")
    assert collateral["fmspc"] == "00806f050000" and collateral["tcb_evaluation_data_number"] == 17
    assert [c["revoked"] for c in collateral["crls"]] == [1, 0]
    assert all("TEST Intel SGX Root CA" in c["issuer"] for c in collateral["crls"])
    assert [(g["file"], g["version"]) for g in shown["gpu_rims"]] == [
        (str(here / "rims" / "driver.swidtag"), refs.report.opaque.driver_version),
        (str(here / "rims" / "vbios.swidtag"), refs.report.opaque.vbios_version),
    ]
    assert all("TEST RIM Signer" in g["signer"] for g in shown["gpu_rims"])
    assert shown["rim_root"] == str(here / "rim-root.pem")

    table = CliRunner().invoke(app, ["trust"])
    assert table.exit_code == 0, table.output
    assert "gpu_rim: ../rims/driver.swidtag version" in table.stdout


def test_trust_refuses_a_policy_whose_reference_values_do_not_load(
    refs: ReferenceFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = refs.directory / "config-bad"
    config.mkdir()
    (config / "policy.toml").write_text(f"[gpu]\nrims = [{RIMS}]\n")  # pinned root: refused
    monkeypatch.setenv("OPENPCC_CONFIG_DIR", str(config))
    r = CliRunner().invoke(app, ["trust", "--json"])
    assert r.exit_code == 3, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] is False and "gpu-rim-chain" in out["error"]


def _session_run(sim_node: Any, policy_path: Path) -> tuple[Any, Any]:
    transport = sim_node.transport()
    session = sim_node.session(transport, policy=load_policy(policy_path))

    async def go() -> Any:
        async with session:
            return await session.verify()

    return asyncio.run(go()), transport


def test_a_session_compares_the_gpu_with_the_policy_rims(
    sim_node: Any, refs: ReferenceFiles
) -> None:
    run, _ = _session_run(sim_node, _write_policy(refs, FULL, "session.toml"))
    assert run.ok, run.to_dict()
    gpu = next(c for c in run.checks if c.name == "gpu")
    assert "RIMs: 8 active measurements match" in gpu.detail


def test_a_session_refuses_a_gpu_its_rims_do_not_describe(
    sim_node: Any, refs: ReferenceFiles
) -> None:
    text = FULL.replace("vbios.swidtag", "vbios-changed.swidtag")
    path = _write_policy(refs, text, "changed.toml")
    run, _ = _session_run(sim_node, path)
    assert not run.ok
    assert [c.name for c in run.checks if c.status == "fail"] == ["gpu"]
    assert str(run.error).startswith("gpu: GPU 0: gpu-rim: block 2 (VBIOS RIM ")

    # Nothing is sent: the prompt never leaves for a node whose GPU failed its RIMs.
    transport = sim_node.transport()
    session = sim_node.session(transport, policy=load_policy(path))

    async def send() -> None:
        async with session:
            async for _ in session.stream("POST", "/v1/chat/completions", CHAT):
                pass

    with pytest.raises(VerificationError) as e:
        asyncio.run(send())
    assert "gpu-rim: block 2" in str(e.value)
    assert transport.ohttp_posts == []
