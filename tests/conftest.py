"""Shared fixtures: where the real captured evidence lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"


def _vectors_dir() -> Path:
    env = os.environ.get("OPENPCC_VECTORS")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "vectors"


VECTORS = _vectors_dir()


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Real evidence from real hardware (../shared/vectors, or $OPENPCC_VECTORS)."""
    if not (VECTORS / "PROVENANCE.md").is_file():
        pytest.fail(f"real test vectors not found at {VECTORS}; set OPENPCC_VECTORS")
    return VECTORS


# -- a running SIMULATED appliance, with the fake engine ------------------------------------------

import contextlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

FAKE_ENGINE = Path(__file__).resolve().parent / "fakes" / "engine.py"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Appliance:
    """A provisioned and running simulated appliance in its own state and config directories."""

    state: Path
    config: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "OPENPCC_STATE_DIR": str(self.state),
            "OPENPCC_CONFIG_DIR": str(self.config),
            "OPENPCC_URL": self.url,
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        exe = args[0]
        return subprocess.run(
            [str(VENV_BIN / exe), *args[1:]],
            env=self.env,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def metric(self, name: str) -> float:
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def start_appliance(
    base: Path, *, fake_args: tuple[str, ...] = (), gateway_extra: str = ""
) -> Appliance:
    app = Appliance(state=base / "state", config=base / "config", port=free_port())
    engine_argv = [sys.executable, str(FAKE_ENGINE), "--port", "{port}", *fake_args]
    args = ["openpcc-appliance", "provision", "--port", str(app.port), "--engine", "command"]
    for a in engine_argv:
        args += ["--engine-arg", a]
    r = app.cli(*args)
    assert r.returncode == 0, r.stderr
    if gateway_extra:
        cfg = app.state / "gateway.toml"
        text = cfg.read_text().replace("[gateway]\n", "[gateway]\n" + gateway_extra + "\n", 1)
        cfg.write_text(text)
    vkey = (app.state / "log" / "log.vkey").read_text().strip()
    r = app.cli(
        "openpcc",
        "trust",
        "--simulated",
        str(app.state / "sim" / "trust-simulated.pem"),
        "--log-key",
        vkey,
    )
    assert r.returncode == 0, r.stderr
    r = app.cli("openpcc-appliance", "up", "--timeout", "60", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    return app


def stop_appliance(app: Appliance) -> None:
    app.cli("openpcc-appliance", "down")


@pytest.fixture(scope="session")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One simulated appliance shared by the tests that only talk to it."""
    app = start_appliance(tmp_path_factory.mktemp("appliance"))
    try:
        yield app
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            stop_appliance(app)


@pytest.fixture(scope="module")
def appliance_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Appliance]]:
    """Start extra simulated appliances (e.g. with a paced fake engine); all stop with the module.

    ``appliance_factory(fake_args=("--tokens-per-second", "20"), gateway_extra="...")`` returns a
    running :class:`Appliance` in its own state and config directories.
    """
    started: list[Appliance] = []

    def make(*, fake_args: tuple[str, ...] = (), gateway_extra: str = "") -> Appliance:
        base = tmp_path_factory.mktemp("appliance")
        app = start_appliance(base, fake_args=fake_args, gateway_extra=gateway_extra)
        started.append(app)
        return app

    try:
        yield make
    finally:
        for app in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                stop_appliance(app)
