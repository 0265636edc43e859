"""Release recipes: the TOML file naming everything that decides a confidential VM's behaviour.

Loading is strict: every table and key is known, every value has its type and range, and an
unknown key is a ``ParseError`` naming it, so a typo can never silently drop a measured input.
Relative paths are relative to the recipe file. See ``cvm_boot/recipes/example-snp.toml``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attest.errors import ParseError

__all__ = [
    "RECIPE_FORMAT",
    "TEES",
    "Artifact",
    "Recipe",
    "VerityVolume",
    "load_recipe",
    "parse_recipe",
]

RECIPE_FORMAT = "openpcc-recipe/1"
TEES = ("sev-snp", "tdx", "sim-sev-snp")
# Device serials the guest finds its volumes by (virtio-blk serials are at most 20 bytes).
ROOT_SERIAL = "openpcc-root"
WEIGHTS_SERIAL = "openpcc-weights"
_RESERVED_CMDLINE = ("roothash=", "systemd.verity", "openpcc.weights")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX_RE = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Artifact:
    """A boot input: its SHA-256 is the release's; the path is where this host keeps it."""

    path: Path | None
    sha256: bytes


@dataclass(frozen=True, slots=True)
class VerityVolume:
    """A dm-verity protected volume: data image, hash-tree image, salt and root hash."""

    image: Path | None
    hash_image: Path | None
    salt: bytes
    root_hash: bytes


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    version: str
    tee: str
    firmware: Artifact
    kernel: Artifact
    initrd: Artifact
    cmdline_base: str
    vcpus: int
    vcpu_type: str
    guest_features: int
    memory_mib: int
    root: VerityVolume
    weights: VerityVolume
    model_id: str
    engine_name: str
    engine_version: str
    engine_args: tuple[str, ...]
    gateway_version: str
    gateway_port: int
    tdx_mrtd: bytes | None = None
    tdx_rtmrs: tuple[tuple[str, bytes], ...] = ()
    """``[tdx] rtmr0``..``rtmr3`` from a reference boot, as (name, value) in register order."""
    source: Path | None = None

    @property
    def cmdline(self) -> str:
        """The measured kernel command line: the base plus both dm-verity root hashes.

        The root filesystem uses systemd-veritysetup-generator's parameters; the weights volume
        is opened by the guest's init with ``veritysetup open`` against the pinned hash.
        """
        verity = (
            f"roothash={self.root.root_hash.hex()}"
            f" systemd.verity_root_data=/dev/disk/by-id/virtio-{ROOT_SERIAL}"
            f" systemd.verity_root_hash=/dev/disk/by-id/virtio-{ROOT_SERIAL}-hash"
            f" openpcc.weights_roothash={self.weights.root_hash.hex()}"
        )
        return f"{self.cmdline_base} {verity}" if self.cmdline_base else verity

    @property
    def simulated(self) -> bool:
        return self.tee.startswith("sim-")


class _Table:
    """One TOML table being consumed; ``done()`` refuses whatever was not asked for."""

    def __init__(self, data: Mapping[str, object], where: str) -> None:
        self._data = data
        self._where = where
        self._seen: set[str] = set()

    def _get(self, key: str, required: bool) -> object:
        self._seen.add(key)
        if key not in self._data:
            if required:
                raise ParseError(f"recipe: {self._name(key)} is missing")
            return None
        return self._data[key]

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def text(self, key: str, *, required: bool = True, default: str = "") -> str:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ParseError(f"recipe: {self._name(key)} must be a string")
        if any(not c.isprintable() for c in value):
            raise ParseError(f"recipe: {self._name(key)} contains a control character")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key, True)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParseError(f"recipe: {self._name(key)} must be an integer")
        if not lo <= value <= hi:
            raise ParseError(f"recipe: {self._name(key)} = {value} is outside {lo}..{hi}")
        return value

    def hexbytes(self, key: str, size: int | None, *, required: bool = True) -> bytes | None:
        value = self.text(key, required=required)
        if not value and not required:
            return None
        if not _HEX_RE.fullmatch(value) or len(value) % 2:
            raise ParseError(f"recipe: {self._name(key)} must be lower-case hex")
        raw = bytes.fromhex(value)
        if size is not None and len(raw) != size:
            raise ParseError(f"recipe: {self._name(key)} must be {size} bytes, got {len(raw)}")
        return raw

    def strs(self, key: str) -> tuple[str, ...]:
        value = self._get(key, False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ParseError(f"recipe: {self._name(key)} must be a list of strings")
        return tuple(value)

    def table(self, key: str, *, required: bool = True) -> _Table | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ParseError(f"recipe: {self._name(key)} must be a table")
        return _Table(value, self._name(key))

    def need(self, key: str) -> _Table:
        t = self.table(key)
        assert t is not None
        return t

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ParseError(f"recipe: unknown key {self._name(unknown[0])}")


def _path(value: str, base: Path) -> Path | None:
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else base / p


def _digest(t: _Table) -> bytes:
    raw = t.hexbytes("sha256", 32)
    assert raw is not None
    return raw


def _artifact(t: _Table, base: Path, need_path: bool) -> Artifact:
    art = Artifact(path=_path(t.text("path", required=need_path), base), sha256=_digest(t))
    t.done()
    return art


def _volume(t: _Table, base: Path) -> VerityVolume:
    salt = t.hexbytes("salt", None)
    root_hash = t.hexbytes("root_hash", 32)
    assert salt is not None and root_hash is not None
    if len(salt) > 256:
        raise ParseError("recipe: a dm-verity salt is at most 256 bytes")
    vol = VerityVolume(
        image=_path(t.text("image", required=False), base),
        hash_image=_path(t.text("hash_image", required=False), base),
        salt=salt,
        root_hash=root_hash,
    )
    t.done()
    return vol


def parse_recipe(text: str, *, base_dir: Path, source: Path | None = None) -> Recipe:
    """Parse recipe TOML; relative paths resolve against ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ParseError(f"recipe is not valid TOML: {e}") from e
    top = _Table(data, "")
    fmt = top.text("format")
    if fmt != RECIPE_FORMAT:
        raise ParseError(f"recipe: format {fmt!r} is not {RECIPE_FORMAT!r}")
    name = top.text("name")
    if not _NAME_RE.fullmatch(name):
        raise ParseError(f"recipe: name {name!r} must be 1-64 of [A-Za-z0-9._-]")
    version = top.text("version")
    if not version:
        raise ParseError("recipe: version is empty")
    tee = top.text("tee")
    if tee not in TEES:
        raise ParseError(f"recipe: tee {tee!r} is not one of {', '.join(TEES)}")
    real = not tee.startswith("sim-")

    firmware = _artifact(top.need("firmware"), base_dir, real)
    kernel = _artifact(top.need("kernel"), base_dir, real)
    initrd = _artifact(top.need("initrd"), base_dir, real)

    vm = top.need("vm")
    vcpus = vm.integer("vcpus", 1, 512)
    vcpu_type = vm.text("vcpu_type")
    guest_features = vm.integer("guest_features", 0, (1 << 64) - 1)
    memory_mib = vm.integer("memory_mib", 256, 16 << 20)
    cmdline_base = vm.text("cmdline", required=False)
    if not cmdline_base.isascii():
        raise ParseError("recipe: vm.cmdline must be ASCII")
    for reserved in _RESERVED_CMDLINE:
        if reserved in cmdline_base:
            raise ParseError(
                f"recipe: vm.cmdline must not set {reserved!r}; it comes from [volumes]"
            )
    vm.done()

    volumes = top.need("volumes")
    root = _volume(volumes.need("root"), base_dir)
    weights = _volume(volumes.need("weights"), base_dir)
    volumes.done()

    model = top.need("model")
    model_id = model.text("id")
    model.done()

    engine = top.need("engine")
    engine_name = engine.text("name")
    engine_version = engine.text("version")
    engine_args = engine.strs("args")
    engine.done()

    gateway = top.need("gateway")
    gateway_version = gateway.text("version")
    gateway_port = gateway.integer("port", 1, 65535)
    gateway.done()

    tdx_mrtd: bytes | None = None
    tdx_rtmrs: list[tuple[str, bytes]] = []
    tdx = top.table("tdx", required=False)
    if tdx is not None:
        tdx_mrtd = tdx.hexbytes("mrtd", 48)
        for reg in ("rtmr0", "rtmr1", "rtmr2", "rtmr3"):
            register = tdx.hexbytes(reg, 48, required=False)
            if register is not None:
                tdx_rtmrs.append((reg, register))
        tdx.done()
        if tee != "tdx":
            raise ParseError("recipe: [tdx] only belongs in a recipe with tee = 'tdx'")
    top.done()

    for what, value in (("model.id", model_id), ("engine.name", engine_name)):
        if not value:
            raise ParseError(f"recipe: {what} is empty")

    return Recipe(
        name=name,
        version=version,
        tee=tee,
        firmware=firmware,
        kernel=kernel,
        initrd=initrd,
        cmdline_base=cmdline_base,
        vcpus=vcpus,
        vcpu_type=vcpu_type,
        guest_features=guest_features,
        memory_mib=memory_mib,
        root=root,
        weights=weights,
        model_id=model_id,
        engine_name=engine_name,
        engine_version=engine_version,
        engine_args=engine_args,
        gateway_version=gateway_version,
        gateway_port=gateway_port,
        tdx_mrtd=tdx_mrtd,
        tdx_rtmrs=tuple(tdx_rtmrs),
        source=source,
    )


def load_recipe(path: Path) -> Recipe:
    """Load and validate the recipe at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ParseError(f"cannot read recipe {path}: {e}") from e
    return parse_recipe(text, base_dir=path.resolve().parent, source=path)
