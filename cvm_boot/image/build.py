"""Build the sealed image an image recipe describes, reproducibly, into a content-keyed cache.

Outputs (one directory): ``vmlinuz`` (Debian's kernel, unchanged), ``initrd.img``, ``root.img`` +
``root.verity`` (squashfs and its dm-verity hash tree), ``weights.img`` + ``weights.verity``,
``release.toml`` (the release recipe with the real digests and root hashes filled in),
``manifest.json`` (the release manifest: canonical JSON) and ``build.json`` (every input and output
digest: Debian packages with versions, Python distributions, the cache key).

Reproducibility: files get one mtime (``SOURCE_DATE_EPOCH``), owner root and normalized modes;
byte code is compiled by the image's own interpreter with ``unchecked-hash`` invalidation and a
fixed hash seed; squashfs and the initramfs are written with sorted entries; dm-verity uses the
recipe's salt and a fixed UUID. The Debian versions are whatever the host's apt sources serve on
the day; they are recorded, and a different version changes the cache key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

from attest.errors import ParseError
from cvm_boot.image import debs, initramfs
from cvm_boot.image.meter import Meter, copy_tree, no_meter
from cvm_boot.image.meter import sha256_file as _metered_sha256
from cvm_boot.image.spec import ImageRecipe
from cvm_boot.image.weights import resolve_weights
from cvm_boot.manifest import build_manifest, canonical_json
from cvm_boot.measure import expected_measurement
from cvm_boot.recipe import Recipe, load_recipe
from cvm_boot.verity import format_volume

__all__ = [
    "BUILD_FORMAT",
    "BuildResult",
    "build_image",
    "default_cache",
    "image_key",
]

BUILD_FORMAT = "openpcc-image-build/1"
PYTHON = "python3.11"
OUTPUTS = (
    "vmlinuz",
    "initrd.img",
    "root.img",
    "root.verity",
    "weights.img",
    "weights.verity",
    "release.toml",
    "manifest.json",
)
_HERE = Path(__file__).resolve().parent
_BUILDER_SOURCES = ("build.py", "debs.py", "initramfs.py", "init.sh", "supervise.py", "spec.py")
# Removed from the root after unpacking: documentation, locales, every executable but the
# interpreter, and what only maintainer scripts use. The build then checks that no shell, no
# package manager and no other program is left.
_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/gdb",
    "usr/share/debconf",
    "usr/share/common-licenses",
    "usr/share/python3",
    "usr/libexec",
    "usr/sbin",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/audit",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/test",
    "var",
)
_FORBIDDEN = ("sh", "bash", "dash", "busybox", "dpkg", "apt", "apt-get", "login", "sshd", "su")
_MOUNT_POINTS = ("proc", "sys", "dev", "run", "tmp", "weights")
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BuildResult:
    directory: Path
    key: str
    cached: bool
    root_hash: bytes
    weights_root_hash: bytes
    seconds: float


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openpcc"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(
    paths: Iterable[tuple[str, Path]], meter: Meter = no_meter, label: str = ""
) -> str:
    """One digest over named files; with a ``label``, the bytes hashed are reported under it."""
    items = sorted(paths)
    total = sum(p.stat().st_size for _, p in items) if label else 0
    done = 0

    def step(_label: str, n: int, _total: int | None) -> None:
        meter(label, done + n, total)

    h = hashlib.sha256()
    for name, path in items:
        digest = _metered_sha256(path, step, label) if label else _sha256_file(path)
        h.update(name.encode() + b"\0" + bytes.fromhex(digest))
        done += path.stat().st_size if label else 0
    if label and not items:
        meter(label, 0, 0)
    return h.hexdigest()


# -- Python distributions -------------------------------------------------------------------


def _dist_closure(requirements: Iterable[str]) -> list[md.Distribution]:
    found: dict[str, md.Distribution] = {}
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        key = req.name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError as e:
            raise ParseError(f"Python distribution {req.name} is not installed here") from e
        found[key] = dist
        for dep in dist.requires or []:
            r = Requirement(dep)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(dep)
    return [found[k] for k in sorted(found)]


def _dist_files(dist: md.Distribution) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for f in dist.files or []:
        rel = PurePosixPath(str(f))
        if rel.parts[0] == ".." or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue
        out.append((rel.as_posix(), Path(str(dist.locate_file(f)))))
    return out


def _package_files(name: str) -> list[tuple[str, Path]]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ParseError(f"Python package {name} is not importable here")
    root = Path(next(iter(spec.submodule_search_locations)))
    out: list[tuple[str, Path]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            out.append(((Path(name) / p.relative_to(root)).as_posix(), p))
    return out


# -- the cache key --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
    image: ImageRecipe
    release: Recipe
    root_debs: list[debs.DebPackage]
    kernel_debs: list[debs.DebPackage]
    initrd_debs: list[debs.DebPackage]
    dists: list[md.Distribution]
    python_files: list[tuple[str, Path]]
    weights: Path | None
    key: str


def _collect(
    image: ImageRecipe, progress: Progress, cache: Path, meter: Meter = no_meter
) -> _Inputs:
    release = load_recipe(image.release)
    weights_dir = resolve_weights(image.weights, cache, say=progress, meter=meter)
    progress("resolving Debian packages")
    root_debs = debs.resolve(image.root_packages, image.exclude_packages)
    kernel_meta = debs.resolve([image.kernel_package], ["kmod", "linux-base", "initramfs-tools"])
    kernel_debs = [d for d in kernel_meta if d.name.startswith("linux-image-")]
    initrd_debs = debs.resolve(image.initramfs_packages, image.exclude_packages)
    dists = _dist_closure(image.python_requirements)
    files: list[tuple[str, Path]] = []
    for dist in dists:
        files += _dist_files(dist)
    for pkg in image.python_packages:
        files += _package_files(pkg)
    extra = [(str(f.target), f.source) for f in image.files]
    builder = [(n, _HERE / n) for n in _BUILDER_SOURCES]
    weights: list[tuple[str, Path]] = []
    if weights_dir is not None:
        progress(f"hashing the weights in {weights_dir}")
        weights = [
            (p.relative_to(weights_dir).as_posix(), p)
            for p in weights_dir.rglob("*")
            if p.is_file()
        ]
    key_doc = {
        "image": image.as_json(),
        "release": canonical_json(_release_identity(release)).decode(),
        "debs": [d.as_json() for d in (*root_debs, *kernel_debs, *initrd_debs)],
        "python": [f"{d.metadata['Name']}=={d.version}" for d in dists],
        "python_files": _tree_digest(files),
        "extra_files": _tree_digest(extra),
        "weights": _tree_digest(weights, meter, "hashing weights" if weights else ""),
        "builder": _tree_digest(builder),
    }
    key = hashlib.sha256(canonical_json(key_doc)).hexdigest()[:32]
    return _Inputs(
        image, release, root_debs, kernel_debs, initrd_debs, dists, files, weights_dir, key
    )


def _release_identity(r: Recipe) -> dict[str, object]:
    return {
        "name": r.name,
        "version": r.version,
        "tee": r.tee,
        "firmware": r.firmware.sha256.hex(),
        "cmdline": r.cmdline_base,
        "vm": [r.vcpus, r.vcpu_type, r.guest_features, r.memory_mib],
        "salts": [r.root.salt.hex(), r.weights.salt.hex()],
        "model": r.model_id,
        "engine": [r.engine_name, r.engine_version, list(r.engine_args)],
        "gateway": [r.gateway_version, r.gateway_port],
    }


def image_key(image: ImageRecipe, cache: Path | None = None) -> str:
    """The cache key of ``image``: a digest of every input (asks apt for package versions;
    fetches remote weights into ``cache``, as a build would)."""
    return _collect(image, lambda _m: None, cache or default_cache()).key


# -- assembling trees -----------------------------------------------------------------------


def _merge_usr(root: Path) -> None:
    """Debian 12's merged /usr: /bin, /sbin, /lib and /lib64 become links into /usr."""
    for top in ("bin", "sbin", "lib", "lib64"):
        src = root / top
        dst = root / "usr" / top
        if src.is_symlink():
            src.unlink()
        elif src.is_dir():
            for p in sorted(src.rglob("*")):
                rel = p.relative_to(src)
                target = dst / rel
                if p.is_dir() and not p.is_symlink():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.exists() or target.is_symlink():
                        target.unlink()
                    p.rename(target)
            shutil.rmtree(src)
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        src.symlink_to(f"usr/{top}")


def _normalize(root: Path, epoch: int) -> None:
    for p in [root, *root.rglob("*")]:
        st = os.lstat(p)
        if not stat.S_ISLNK(st.st_mode):
            mode = stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
            mode = 0o755 if stat.S_ISDIR(st.st_mode) or mode & 0o111 else 0o644
            os.chmod(p, mode)
        os.utime(p, (epoch, epoch), follow_symlinks=False)


def _run(args: list[str], *, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise OSError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")


def _squashfs(tree: Path, image: Path, epoch: int) -> None:
    if image.exists():
        image.unlink()
    _run(
        [
            "mksquashfs",
            str(tree),
            str(image),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "zstd",
            "-all-root",
            "-no-xattrs",
            "-mkfs-time",
            str(epoch),
            "-all-time",
            str(epoch),
        ]
    )


def _gateway_toml(image: ImageRecipe, release: Recipe) -> str:
    attestation = "simulated" if release.simulated else "configfs"
    gpu = (
        "simulated" if release.simulated else ("nvidia" if image.engine_kind == "vllm" else "none")
    )
    args = ", ".join(json.dumps(a) for a in image.engine_args)
    return (
        "# Sealed in the measured root: the engine and where evidence comes from.\n"
        "[gateway]\n"
        'host = "0.0.0.0"\n'
        f"port = {release.gateway_port}\n"
        f'attestation = "{attestation}"\n'
        f'gpu = "{gpu}"\n'
        'sim_dir = "/run/openpcc/state/sim"\n'
        'manifest = "/run/openpcc/state/manifest.json"\n'
        'log_dir = "/run/openpcc/state/log"\n'
        "\n[engine]\n"
        f"kind = {json.dumps(image.engine_kind)}\n"
        f"model = {json.dumps(image.engine_model)}\n"
        f"args = [{args}]\n"
    )


def _build_root(inp: _Inputs, work: Path, deb_files: dict[str, Path], epoch: int) -> Path:
    root = work / "root"
    for d in inp.root_debs:
        debs.unpack(deb_files[d.name], root)
    _merge_usr(root)
    for rel in _PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    (root / "sbin").unlink()  # its target, /usr/sbin, was pruned
    bindir = root / "usr" / "bin"
    for p in bindir.iterdir():
        if p.name != PYTHON:
            p.unlink()
    site = root / "usr/lib/python3/dist-packages"
    for rel, src in inp.python_files:
        dst = site / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for f in inp.image.files:
        dst = root / f.target.relative_to("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, dst)
    (root / "usr/lib/openpcc").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_HERE / "supervise.py", root / "usr/lib/openpcc/supervise.py")
    (root / "etc/openpcc").mkdir(parents=True, exist_ok=True)
    (root / "etc/openpcc/gateway.toml").write_text(_gateway_toml(inp.image, inp.release))
    packages = {
        "debian": [d.as_json() for d in inp.root_debs],
        "python": [f"{d.metadata['Name']}=={d.version}" for d in inp.dists],
    }
    (root / "usr/share/openpcc").mkdir(parents=True, exist_ok=True)
    (root / "usr/share/openpcc/packages.json").write_bytes(canonical_json(packages) + b"\n")
    for m in _MOUNT_POINTS:
        (root / m).mkdir(exist_ok=True)
    _compile(root, epoch)
    _check_sealed(root)
    _normalize(root, epoch)
    return root


def _compile(root: Path, epoch: int) -> None:
    """Byte-compile with the image's interpreter (run through its own loader, no chroot)."""
    libdir = root / "usr/lib/x86_64-linux-gnu"
    env = {
        "PYTHONHOME": str(root / "usr"),
        "PYTHONHASHSEED": "0",
        "SOURCE_DATE_EPOCH": str(epoch),
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
    }
    _run(
        [
            str(libdir / "ld-linux-x86-64.so.2"),
            "--library-path",
            str(libdir),
            str(root / "usr/bin" / PYTHON),
            "-s",
            "-B",  # else the modules compileall imports get timestamp pycs naming the work dir
            "-m",
            "compileall",
            "-f",
            "-q",
            # One process: marshal's output depends on what the compiling process interned
            # before (reference flags), so parallel workers give run-dependent byte code.
            "-j",
            "1",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            "-x",
            r"/(test|tests|lib2to3)/",
            str(root / "usr/lib/python3.11"),
            str(root / "usr/lib/python3/dist-packages"),
            str(root / "usr/lib/openpcc"),
        ],
        env=env,
    )
    # The interpreter must start and import the gateway: a missing library fails the build here.
    _run(
        [
            str(libdir / "ld-linux-x86-64.so.2"),
            "--library-path",
            str(libdir),
            str(root / "usr/bin" / PYTHON),
            "-s",
            "-B",
            "-c",
            "import sys; sys.path.append(sys.argv[1]); import server.app",
            str(root / "usr/lib/python3/dist-packages"),
        ],
        env=env,
    )


def _check_sealed(root: Path) -> None:
    for p in root.rglob("*"):
        if p.name in _FORBIDDEN and (p.is_file() or p.is_symlink()):
            raise ParseError(f"image: {p.relative_to(root)} must not be in the sealed root")
    left = sorted(p.name for p in (root / "usr/bin").iterdir())
    if left != [PYTHON]:
        raise ParseError(f"image: /usr/bin holds {left}, expected only {PYTHON}")


def _build_initrd(inp: _Inputs, work: Path, deb_files: dict[str, Path], out: Path) -> str:
    stage = work / "initrd-debs"
    for d in inp.initrd_debs:
        debs.unpack(deb_files[d.name], stage)
    _merge_usr(stage)
    kstage = work / "kernel"
    for d in inp.kernel_debs:
        debs.unpack(deb_files[d.name], kstage)
    kernels = sorted((kstage / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ParseError(f"{inp.image.kernel_package} must hold exactly one vmlinuz")
    version = kernels[0].name.removeprefix("vmlinuz-")
    shutil.copyfile(kernels[0], out / "vmlinuz")

    tree = work / "initrd"
    (tree / "bin").mkdir(parents=True)
    shutil.copyfile(stage / "usr/bin/busybox", tree / "bin/busybox")
    (tree / "usr/sbin").mkdir(parents=True)
    shutil.copyfile(stage / "usr/sbin/veritysetup", tree / "usr/sbin/veritysetup")
    libs = tree / "usr/lib/x86_64-linux-gnu"
    libs.mkdir(parents=True)
    for p in sorted((stage / "usr/lib/x86_64-linux-gnu").iterdir()):
        if ".so" in p.name and (p.is_file() or p.is_symlink()):
            if p.is_symlink():
                (libs / p.name).symlink_to(os.readlink(p))
            else:
                shutil.copy(p, libs / p.name)  # keeps the mode: the loader must be executable
    (tree / "lib").symlink_to("usr/lib")
    (tree / "lib64").symlink_to("usr/lib/x86_64-linux-gnu")
    mods = tree / "usr/lib/modules"
    mods.mkdir(parents=True)
    order = initramfs.module_closure(kstage / "lib/modules" / version, initramfs.BOOT_MODULES)
    for ko in order:
        shutil.copyfile(ko, mods / ko.name)
    (mods / "load.order").write_text("".join(f"{ko.name}\n" for ko in order))
    shutil.copyfile(_HERE / "init.sh", tree / "init")
    initramfs.write_cpio(
        tree,
        out / "initrd.img",
        mtime=inp.image.source_date_epoch,
        executables=("init", "bin/busybox", "usr/sbin/veritysetup"),
    )
    return version


def _release_toml(
    release: Recipe, out: Path, kernel: str, initrd: str, root_hash: str, weights_hash: str
) -> str:
    r = release

    def strs(xs: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

    firmware = f"path = {json.dumps(str(r.firmware.path))}\n" if r.firmware.path else ""
    return (
        f"# Release recipe written by `openpcc-appliance build-image`; digests are this build's.\n"
        f'format = "openpcc-recipe/1"\nname = {json.dumps(r.name)}\n'
        f"version = {json.dumps(r.version)}\ntee = {json.dumps(r.tee)}\n\n"
        f'[firmware]\n{firmware}sha256 = "{r.firmware.sha256.hex()}"\n\n'
        f'[kernel]\npath = "vmlinuz"\nsha256 = "{kernel}"\n\n'
        f'[initrd]\npath = "initrd.img"\nsha256 = "{initrd}"\n\n'
        f"[vm]\nvcpus = {r.vcpus}\nvcpu_type = {json.dumps(r.vcpu_type)}\n"
        f"guest_features = {r.guest_features}\nmemory_mib = {r.memory_mib}\n"
        f"cmdline = {json.dumps(r.cmdline_base)}\n\n"
        f'[volumes.root]\nimage = "root.img"\nhash_image = "root.verity"\n'
        f'salt = "{r.root.salt.hex()}"\nroot_hash = "{root_hash}"\n\n'
        f'[volumes.weights]\nimage = "weights.img"\nhash_image = "weights.verity"\n'
        f'salt = "{r.weights.salt.hex()}"\nroot_hash = "{weights_hash}"\n\n'
        f"[model]\nid = {json.dumps(r.model_id)}\n\n"
        f"[engine]\nname = {json.dumps(r.engine_name)}\nversion = {json.dumps(r.engine_version)}\n"
        f"args = {strs(r.engine_args)}\n\n"
        f"[gateway]\nversion = {json.dumps(r.gateway_version)}\nport = {r.gateway_port}\n"
    )


def build_image(
    image: ImageRecipe,
    *,
    cache: Path | None = None,
    rebuild: bool = False,
    progress: Progress = lambda _m: None,
    meter: Meter = no_meter,
) -> BuildResult:
    """Build ``image`` (or find it in the cache); the result directory is keyed by its inputs.

    ``progress`` gets one line per step; ``meter`` the bytes of the long ones (fetching and
    hashing the weights, copying them into the volume), see ``cvm_boot.image.meter``.
    """
    started = time.monotonic()
    cache = cache or default_cache()
    inp = _collect(image, progress, cache, meter)
    out = cache / "images" / f"{image.name}-{inp.key}"
    done = out / "build.json"
    if done.is_file() and not rebuild:
        info = json.loads(done.read_text())
        return BuildResult(
            out,
            inp.key,
            True,
            bytes.fromhex(info["root_hash"]),
            bytes.fromhex(info["weights_root_hash"]),
            time.monotonic() - started,
        )
    progress(f"building {image.name} ({inp.key}) in {out}")
    epoch = image.source_date_epoch
    work = cache / "work" / inp.key
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True)
    try:
        progress("downloading Debian packages")
        deb_files = debs.download(
            [*inp.root_debs, *inp.kernel_debs, *inp.initrd_debs], cache / "debs"
        )
        progress("assembling the root filesystem")
        root = _build_root(inp, work, deb_files, epoch)
        progress("packing the root filesystem (squashfs)")
        _squashfs(root, out / "root.img", epoch)
        progress("formatting the root's dm-verity tree and checking its root hash")
        root_v = format_volume(out / "root.img", out / "root.verity", inp.release.root.salt)
        wtree = work / "weights"
        if inp.weights is not None:
            copy_tree(inp.weights, wtree, meter, "copying weights")
        else:
            wtree.mkdir()
            (wtree / "EMPTY").write_text("this image's engine needs no weights\n")
        _normalize(wtree, epoch)
        progress("packing the weights volume (squashfs)")
        _squashfs(wtree, out / "weights.img", epoch)
        progress("formatting the weights' dm-verity tree and checking its root hash")
        weights_v = format_volume(
            out / "weights.img", out / "weights.verity", inp.release.weights.salt
        )
        progress("building the kernel and initramfs")
        kversion = _build_initrd(inp, work, deb_files, out)
        (out / "release.toml").write_text(
            _release_toml(
                inp.release,
                out,
                _sha256_file(out / "vmlinuz"),
                _sha256_file(out / "initrd.img"),
                root_v.root_hash.hex(),
                weights_v.root_hash.hex(),
            )
        )
        release = load_recipe(out / "release.toml")
        progress("computing the launch measurement")
        manifest = build_manifest(release, expected_measurement(release))
        (out / "manifest.json").write_bytes(canonical_json(manifest) + b"\n")
        info = {
            "format": BUILD_FORMAT,
            "key": inp.key,
            "image": image.as_json(),
            "kernel_version": kversion,
            "root_hash": root_v.root_hash.hex(),
            "weights_root_hash": weights_v.root_hash.hex(),
            "measurement": manifest["measurement"],
            "outputs": {
                n: {"sha256": _sha256_file(out / n), "size": (out / n).stat().st_size}
                for n in OUTPUTS
            },
            "debian": {
                "root": [d.as_json() for d in inp.root_debs],
                "kernel": [d.as_json() for d in inp.kernel_debs],
                "initramfs": [d.as_json() for d in inp.initrd_debs],
            },
            "python": {
                "interpreter": next(
                    d.version for d in inp.root_debs if d.name == "python3.11-minimal"
                ),
                "distributions": [f"{d.metadata['Name']}=={d.version}" for d in inp.dists],
            },
        }
        done.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(
        out, inp.key, False, root_v.root_hash, weights_v.root_hash, time.monotonic() - started
    )


if __name__ == "__main__":  # pragma: no cover - convenience for manual builds
    from cvm_boot.image.spec import load_image_recipe

    res = build_image(load_image_recipe(Path(sys.argv[1])), progress=print)
    print(res)
