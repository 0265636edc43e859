"""TDX evidence on the server: the simulated and configfs-tsm providers, and the config that picks
them. The simulated TDX gateway's bundle is verified by the real client end to end."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from attest import binding
from attest.errors import OpenPCCError, ParseError, TransportError, VerificationError
from attest.nvgpu import SimulatedGpu
from attest.tdx import parse_quote
from attest.tdx.sim import SimulatedTdxSigner
from client_cli.session import Session
from client_cli.trust import TrustStore, load_policy
from cvm_boot.tlog import TransparencyLog, bundle_entry
from server.attestation import (
    BundleBuilder,
    ConfigfsSnpProvider,
    ConfigfsTdxProvider,
    SimulatedGpuProvider,
    SimulatedSnpProvider,
    SimulatedTdxProvider,
    cpu_provider,
    simulated_td_registers,
)
from server.config import load_config
from server.engines import EngineSupervisor
from server.gateway import GatewayState, LogView, create_app
from server.keys import KeyRing

MRTD = hashlib.sha384(b"openpcc simulated TDX gateway").digest()
REPORT_DATA = bytes(range(64))

_spec = importlib.util.spec_from_file_location(
    "_openpcc_tests_fake_tsm", Path(__file__).parents[1] / "attest" / "tdx" / "fake_tsm.py"
)
assert _spec is not None and _spec.loader is not None
fake_tsm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fake_tsm
_spec.loader.exec_module(fake_tsm)


class QuotingTsmClient(fake_tsm.FakeTsmClient):  # type: ignore[misc,name-defined]
    """FAKE configfs-tsm whose outblob is a simulated TDX quote over what was written."""

    def __init__(self, signer: SimulatedTdxSigner, *, sign_over: bytes | None = None) -> None:
        super().__init__()
        self.signer = signer
        self.sign_over = sign_over

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "inblob":
            quote = self.signer.sign(report_data=self.sign_over or data, mrtd=MRTD)
            (path.parent / "outblob").write_bytes(quote + b"\x00" * 64)  # padded, as a kernel may


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sim")
    SimulatedTdxSigner.generate(base / "tdx")
    SimulatedGpu.generate(base / "gpu")
    return base


RTMR_PINS = {f"rtmr{i}": hashlib.sha384(b"gateway RTMR%d" % i).hexdigest() for i in range(3)}


def _gateway_config(
    tmp: Path, sim_dir: Path, attestation: str, pins: dict[str, str] | None = None
) -> Path:
    manifest: dict[str, object] = {
        "measurement": MRTD.hex(),
        "note": "FAKE release manifest for tests",
        "tdx": RTMR_PINS if pins is None else pins,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    log = TransparencyLog.open(tmp / "log")
    log.append(binding.canonical_json(manifest))
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        "[gateway]\n"
        f'attestation = "{attestation}"\n'
        f'sim_dir = "{sim_dir}"\n'
        f'manifest = "{tmp / "manifest.json"}"\n'
        f'log_dir = "{tmp / "log"}"\n'
        "[engine]\n"
        'kind = "embedded"\n'
    )
    return cfg


@pytest.mark.parametrize("pinned", [True, False], ids=["rtmrs-pinned", "mrtd-only"])
def test_simulated_tdx_gateway_serves_a_bundle_the_client_verifies(
    tmp_path: Path, sim_dir: Path, pinned: bool
) -> None:
    """The simulated TD reports the registers its release pins; a release pinning none is
    refused by the client exactly as a real one would be."""
    pins = None if pinned else {}
    cfg = load_config(_gateway_config(tmp_path, sim_dir, "simulated-tdx", pins))
    manifest = json.loads(cfg.manifest.read_text())
    cpu = cpu_provider(cfg.attestation, sim_dir=cfg.sim_dir, measurement=MRTD, manifest=manifest)
    assert isinstance(cpu, SimulatedTdxProvider) and cpu.tee == "sim-tdx"
    log = TransparencyLog.open(cfg.log_dir)
    data = binding.canonical_json(manifest)
    keys = KeyRing()
    state = GatewayState(
        config=cfg,
        keys=keys,
        bundles=BundleBuilder(
            cpu=cpu,
            gpu=SimulatedGpuProvider(cfg.sim_dir / "gpu"),
            keys=keys,
            manifest=manifest,
            tlog_entry=lambda: bundle_entry(log, data),
        ),
        engine=EngineSupervisor(cfg.engine),
        log=LogView(
            entry=lambda: bundle_entry(log, data),
            checkpoint=log.checkpoint,
            consistency=log.consistency_proof,
        ),
    )
    # The client's own trust store, as `openpcc trust --simulated ... --log-key ...` leaves it.
    store = TrustStore(tmp_path / "client")
    roots = [
        SimulatedTdxSigner.load(sim_dir / "tdx").root_certificate(),
        SimulatedGpu.load(sim_dir / "gpu").root_certificate(),
    ]
    store.trust_simulation(b"".join(c.public_bytes(Encoding.PEM) for c in roots))
    store.add_log_key(log.verifier_key)

    async def verify() -> tuple[object, object]:
        transport = httpx.ASGITransport(app=create_app(state))
        async with Session(
            "http://gateway.test",
            trust=store.anchors(),
            policy=load_policy(None),
            checkpoints=store.checkpoints(),
            transport=transport,
        ) as session:
            run = await session.verify()
            return run, await session.node()

    if not pinned:
        with pytest.raises(VerificationError, match="RTMR0, RTMR1, RTMR2 pinned neither"):
            asyncio.run(verify())
        return
    run, node = asyncio.run(verify())
    assert run.ok, run.to_dict()  # type: ignore[attr-defined]
    assert node.tee == "sim-tdx" and node.simulated and node.measurement == MRTD  # type: ignore[attr-defined]
    assert node.key_config.key_id == keys.current_config.key_id  # type: ignore[attr-defined]


def test_simulated_td_registers_come_from_the_manifest() -> None:
    regs = simulated_td_registers({"tdx": {"rtmr1": "ab" * 48}})
    assert regs == (bytes(48), bytes.fromhex("ab" * 48), bytes(48), bytes(48))
    assert simulated_td_registers({}) == (bytes(48),) * 4
    for bad in ({"tdx": {"rtmr2": "ab"}}, {"tdx": {"rtmr0": "zz" * 48}}, {"tdx": []}):
        with pytest.raises(OpenPCCError, match="tdx"):
            simulated_td_registers(bad)


def test_configfs_tdx_provider_returns_the_quote_and_its_chain(
    tmp_path: Path, sim_dir: Path
) -> None:
    signer = SimulatedTdxSigner.load(sim_dir / "tdx")
    provider = ConfigfsTdxProvider(tmp_path, client=QuotingTsmClient(signer))
    assert provider.tee == "tdx"
    raw, pem = provider.evidence(REPORT_DATA)
    quote = parse_quote(raw)
    assert quote.raw == raw and quote.body.report_data == REPORT_DATA
    assert pem == signer.chain_pem().decode()


def test_configfs_tdx_provider_refuses_a_quote_over_other_report_data(
    tmp_path: Path, sim_dir: Path
) -> None:
    signer = SimulatedTdxSigner.load(sim_dir / "tdx")
    provider = ConfigfsTdxProvider(tmp_path, client=QuotingTsmClient(signer, sign_over=bytes(64)))
    with pytest.raises(TransportError, match="another REPORTDATA"):
        provider.evidence(REPORT_DATA)


def test_configfs_tdx_provider_refuses_what_is_not_a_quote(tmp_path: Path) -> None:
    provider = ConfigfsTdxProvider(tmp_path, client=fake_tsm.FakeTsmClient())
    with pytest.raises(ParseError, match="TDX quote"):
        provider.evidence(REPORT_DATA)


def test_simulated_tdx_provider_signs_the_given_registers(sim_dir: Path) -> None:
    rtmrs = [hashlib.sha384(bytes([i])).digest() for i in range(4)]
    provider = SimulatedTdxProvider(sim_dir / "tdx", MRTD, rtmrs=rtmrs)
    raw, pem = provider.evidence(REPORT_DATA)
    body = parse_quote(raw).body
    assert body.mrtd == MRTD and list(body.rtmrs) == rtmrs and body.report_data == REPORT_DATA
    assert not body.debug
    assert pem == SimulatedTdxSigner.load(sim_dir / "tdx").chain_pem().decode()


def test_cpu_provider_names(tmp_path: Path, sim_dir: Path) -> None:
    assert isinstance(
        cpu_provider("configfs", sim_dir=tmp_path, measurement=MRTD), ConfigfsSnpProvider
    )
    assert isinstance(
        cpu_provider("configfs-tdx", sim_dir=tmp_path, measurement=MRTD), ConfigfsTdxProvider
    )
    with pytest.raises(ParseError):  # no simulated SEV-SNP chain was generated here
        cpu_provider("simulated", sim_dir=sim_dir, measurement=MRTD)
    assert SimulatedSnpProvider.tee == "sim-sev-snp"
    with pytest.raises(OpenPCCError, match="unknown attestation provider 'sgx'"):
        cpu_provider("sgx", sim_dir=sim_dir, measurement=MRTD)


def test_config_refuses_an_unknown_attestation_provider(tmp_path: Path, sim_dir: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ParseError, match="attestation 'tdx' is not one of"):
        load_config(_gateway_config(tmp_path / "a", sim_dir, "tdx"))
    cfg = load_config(_gateway_config(tmp_path / "b", sim_dir, "configfs-tdx"))
    assert cfg.attestation == "configfs-tdx"
