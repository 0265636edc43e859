"""Where the appliance keeps its state on the host, and what it records there.

``$OPENPCC_STATE_DIR``, else ``$XDG_STATE_HOME/openpcc``, else ``~/.local/state/openpcc``::

    appliance.json        mode, gateway URL, engine: what `status` and `up` need
    gateway.toml          the gateway's configuration
    release/              the recipe used and the release manifest (public)
    log/                  the transparency log (entries, signed checkpoint, log key)
    sim/                  SIMULATION ONLY: generated signing chains and trust-simulated.pem
    run/gateway.pid       the running gateway's process id
    logs/                 gateway.log and engine.log: lifecycle lines only, never content
    vm/                   SIMULATION ONLY, `up --vm`: provision/ (the VM's provisioning disk),
                          vm.pid, vm-serial.log (the VM's console), vm-qemu.log

Nothing here is secret except the simulation signing keys and the log key, both 0600. The
gateway's OHTTP private keys never touch this directory: they live in the gateway's memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from attest.errors import ParseError

__all__ = ["ApplianceRecord", "StatePaths", "state_dir"]


def state_dir() -> Path:
    env = os.environ.get("OPENPCC_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "openpcc"


@dataclass(frozen=True, slots=True)
class StatePaths:
    root: Path

    @classmethod
    def default(cls) -> StatePaths:
        return cls(state_dir())

    @property
    def record(self) -> Path:
        return self.root / "appliance.json"

    @property
    def gateway_config(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def release(self) -> Path:
        return self.root / "release"

    @property
    def manifest(self) -> Path:
        return self.release / "manifest.json"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def sim(self) -> Path:
        return self.root / "sim"

    @property
    def sim_trust(self) -> Path:
        return self.sim / "trust-simulated.pem"

    @property
    def pid(self) -> Path:
        return self.root / "run" / "gateway.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def vm(self) -> Path:
        return self.root / "vm"


@dataclass(frozen=True, slots=True)
class ApplianceRecord:
    mode: str  # "simulated" | "sev-snp" | "tdx"
    gateway_url: str
    engine: str
    port: int
    # Where the simulated appliance runs: local processes (False) or the sealed image in an
    # emulated VM (`up --vm`). Defaults keep records written before these fields loadable.
    vm: bool = False
    vm_image: str | None = None  # the built image's directory, in the image cache
    vm_recipe: str | None = None  # the image recipe it was built from
    vm_accel: str | None = None  # "tcg" | "kvm"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ApplianceRecord:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as e:
            raise ParseError(
                f"no appliance is provisioned in {path.parent}",
                hint="run ./install.sh (or `openpcc-appliance provision`)",
            ) from e
        except (json.JSONDecodeError, TypeError) as e:
            raise ParseError(f"{path} is damaged: {e}") from e
