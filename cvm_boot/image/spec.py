"""Image recipes (``openpcc-image/1``): how to build the sealed image a release recipe names.

The release recipe (``openpcc-recipe/1``) says what the guest is; the image recipe says what goes
into it: Debian packages for the root, the kernel and the initramfs; the Python distributions and
our packages; the engine the gateway runs; what the weights volume holds; extra files (tests add
their synthetic engine this way, in a test-only variant). Loading is strict, like the release
recipe's: an unknown key is an error. Relative paths are relative to the image recipe.

``[weights] source`` names where the model comes from (fetched by ``cvm_boot.image.weights``):

- a directory, relative to the recipe or absolute;
- ``hf:ORG/NAME@REVISION``: a Hugging Face Hub snapshot (a commit hash pins it best);
- ``https://...``: an archive (tar, optionally compressed) or a single file, with the required
  ``sha256 = "<64 hex>"`` of the download.

Whatever the source, the release recipe's weights dm-verity root hash (on the measured kernel
command line) pins the content that ends up in the image.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from attest.errors import ParseError
from cvm_boot.recipe import _path, _Table  # the release recipe's strict reader

__all__ = [
    "IMAGE_FORMAT",
    "ExtraFile",
    "HfWeights",
    "HttpsWeights",
    "ImageRecipe",
    "LocalWeights",
    "WeightsSource",
    "load_image_recipe",
    "parse_weights_source",
]

IMAGE_FORMAT = "openpcc-image/1"


@dataclass(frozen=True, slots=True)
class ExtraFile:
    source: Path
    target: PurePosixPath


@dataclass(frozen=True, slots=True)
class LocalWeights:
    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True, slots=True)
class HfWeights:
    repo: str
    revision: str

    def __str__(self) -> str:
        return f"hf:{self.repo}@{self.revision}"


@dataclass(frozen=True, slots=True)
class HttpsWeights:
    url: str
    sha256: str

    def __str__(self) -> str:
        return self.url


WeightsSource = LocalWeights | HfWeights | HttpsWeights
_HF_RE = re.compile(r"hf:([A-Za-z0-9][\w.-]*/[\w.-]+)@([\w./-]+)")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_URL_RE = re.compile(r"https://[^\s/?#]+/\S*")


def parse_weights_source(
    source: str | None, sha256: str | None, base: Path
) -> WeightsSource | None:
    """``[weights] source`` (and ``sha256``) as a source; one clear line for a bad one."""
    where = "image recipe: weights.source"
    if not source:
        if sha256:
            raise ParseError("image recipe: weights.sha256 is set but weights.source is not")
        return None
    if source.startswith("hf:"):
        m = _HF_RE.fullmatch(source)
        if m is None:
            raise ParseError(f"{where} {source!r} is not hf:ORG/NAME@REVISION")
        if sha256:
            raise ParseError("image recipe: weights.sha256 goes with an https:// source only")
        return HfWeights(m.group(1), m.group(2))
    if "://" in source:
        if not source.startswith("https://"):
            scheme = source.split("://", 1)[0]
            raise ParseError(f"{where} {source!r}: {scheme}:// is not supported (https:// only)")
        if _URL_RE.fullmatch(source) is None:
            raise ParseError(f"{where} {source!r} is not a URL like https://host/path")
        if not sha256:
            raise ParseError(
                f"{where} {source!r} needs weights.sha256, the SHA-256 of the download"
            )
        if _SHA256_RE.fullmatch(sha256) is None:
            raise ParseError(f"image recipe: weights.sha256 {sha256!r} is not 64 lowercase hex")
        return HttpsWeights(source, sha256)
    if sha256:
        raise ParseError("image recipe: weights.sha256 goes with an https:// source only")
    path = _path(source, base)
    assert path is not None
    return LocalWeights(path)


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
    weights: WeightsSource | None
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
    weights_source = parse_weights_source(
        weights.text("source", required=False), weights.text("sha256", required=False), base
    )
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
        weights=weights_source,
        files=tuple(files),
        source=path,
    )
