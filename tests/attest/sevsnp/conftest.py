"""Fixtures for SEV-SNP tests: the real reports and one simulated signer per session."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from cryptography import x509

from attest.sevsnp.sim import SimulatedSnpSigner
from attest.sevsnp.verify import load_certificates
from client_cli.verify_report import verify_report

# Inside both real certificates' validity (the VLEK expired on 2025-12-10).
REAL_NOW = datetime(2025, 6, 1, tzinfo=UTC)
SNP_ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sevsnp"


@pytest.fixture(scope="session")
def milan_v2_raw(vectors: Path) -> bytes:
    return (vectors / "snp" / "milan_v2_report.bin").read_bytes()


@pytest.fixture(scope="session")
def milan_v2_vcek(vectors: Path) -> list[x509.Certificate]:
    return load_certificates((vectors / "snp" / "milan_v2_vcek.der").read_bytes())


@pytest.fixture(scope="session")
def milan_v3_raw(vectors: Path) -> bytes:
    return (vectors / "snp" / "milan_v3_vlek_report.bin").read_bytes()


@pytest.fixture(scope="session")
def milan_v3_vlek(vectors: Path) -> list[x509.Certificate]:
    return load_certificates((vectors / "snp" / "milan_v3_vlek.der").read_bytes())


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim-snp")


@pytest.fixture(scope="session")
def sim(sim_dir: Path) -> SimulatedSnpSigner:
    """One SIMULATED signer per session (key generation is the slow part)."""
    return SimulatedSnpSigner.generate(sim_dir)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def _write_toml(path: Path, mapping: Mapping[str, object]) -> Path:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in mapping.items()))
    return path


@pytest.fixture(scope="session")
def write_toml() -> Callable[[Path, Mapping[str, object]], Path]:
    """Write a flat policy mapping as TOML (test helper)."""
    return _write_toml


@pytest.fixture(scope="session")
def cli_app() -> typer.Typer:
    """A local app with the command registered the way client_cli.main does."""
    app = typer.Typer()
    app.command("verify-report")(verify_report)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing to a single command
        """Nothing."""

    return app
