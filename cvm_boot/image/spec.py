"""Image recipes (``openpcc-image/1``): how to build the sealed image a release recipe names.

The release recipe (``openpcc-recipe/1``) says what the guest is; the image recipe says what goes
into it: Debian packages for the root, the kernel and the initramfs; the Python distributions and
our packages; the engine the gateway runs; what the weights volume holds; extra files (tests add
their synthetic engine this way, in a test-only variant). Loading is strict, like the release
recipe's: an unknown key is an error. Relative paths are relative to the image recipe.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from attest.errors import ParseError
from cvm_boot.recipe import _path, _Table  # the release recipe's strict reader

__all__ = ["IMAGE_FORMAT", "ExtraFile", "ImageRecipe", "load_image_recipe"]

IMAGE_FORMAT = "openpcc-image/1"


@dataclass(frozen=True, slots=True)
class ExtraFile:
    source: Path
    target: PurePosixPath


@dataclass(frozen=True, slots=True)
class ImageRecipe:
    name: str
    release: Path
    source_date_epoch: int
    root_packages: tuple[str, ...]
    exclude_packages: tuple[str, ...]
    kernel_package: str
    initramfs_packages: tuple[str, ...]
    python_requirements: tuple[str, ...]
    python_packages: tuple[str, ...]
    engine_kind: str
    engine_model: str
    engine_args: tuple[str, ...]
    weights_source: Path | None
    files: tuple[ExtraFile, ...]
    source: Path

    def as_json(self) -> dict[str, object]:
        """What the image cache key and the build manifest record (paths by file name only)."""
        return {
            "format": IMAGE_FORMAT,
            "name": self.name,
            "release": self.release.name,
            "source_date_epoch": self.source_date_epoch,
            "debian": {
                "root": list(self.root_packages),
                "exclude": list(self.exclude_packages),
                "kernel": self.kernel_package,
                "initramfs": list(self.initramfs_packages),
            },
            "python": {
                "requirements": list(self.python_requirements),
                "packages": list(self.python_packages),
            },
            "engine": {
                "kind": self.engine_kind,
                "model": self.engine_model,
                "args": list(self.engine_args),
            },
            "files": [str(f.target) for f in self.files],
        }


def load_image_recipe(path: Path) -> ImageRecipe:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ParseError(f"cannot read image recipe {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ParseError(f"image recipe {path} is not valid TOML: {e}") from e
    base = path.resolve().parent
    top = _Table(data, "")
    fmt = top.text("format")
    if fmt != IMAGE_FORMAT:
        raise ParseError(f"image recipe: format {fmt!r} is not {IMAGE_FORMAT!r}")
    name = top.text("name")
    release = _path(top.text("release"), base)
    assert release is not None
    epoch = top.integer("source_date_epoch", 0, 2**32 - 1)

    deb = top.need("debian")
    root_packages = deb.strs("root")
    exclude = deb.strs("exclude")
    kernel = deb.text("kernel")
    initramfs = deb.strs("initramfs")
    deb.done()

    py = top.need("python")
    requirements = py.strs("requirements")
    packages = py.strs("packages")
    py.done()

    eng = top.need("engine")
    kind = eng.text("kind")
    if kind not in ("embedded", "vllm", "command"):
        raise ParseError(f"image recipe: engine.kind {kind!r} is not embedded, vllm or command")
    model = eng.text("model", required=False)
    args = eng.strs("args")
    eng.done()

    weights = top.need("weights")
    weights_source = _path(weights.text("source", required=False), base)
    weights.done()

    files: list[ExtraFile] = []
    raw_files = data.get("files", [])
    top._get("files", False)  # [[files]] is an array of tables, read below
    if not isinstance(raw_files, list):
        raise ParseError("image recipe: files must be an array of tables")
    for i, item in enumerate(raw_files):
        if not isinstance(item, dict):
            raise ParseError(f"image recipe: files[{i}] must be a table")
        t = _Table(item, f"files[{i}]")
        src = _path(t.text("source"), base)
        target = PurePosixPath(t.text("target"))
        t.done()
        assert src is not None
        if not target.is_absolute() or ".." in target.parts:
            raise ParseError(f"image recipe: files[{i}].target must be an absolute path")
        files.append(ExtraFile(source=src, target=target))
    top.done()
    if not root_packages or not initramfs or not requirements or not packages:
        raise ParseError("image recipe: debian.root, debian.initramfs and python.* must be set")
    return ImageRecipe(
        name=name,
        release=release,
        source_date_epoch=epoch,
        root_packages=root_packages,
        exclude_packages=exclude,
        kernel_package=kernel,
        initramfs_packages=initramfs,
        python_requirements=requirements,
        python_packages=packages,
        engine_kind=kind,
        engine_model=model,
        engine_args=args,
        weights_source=weights_source,
        files=tuple(files),
        source=path,
    )
