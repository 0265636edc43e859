"""Debian packages for the image: resolve a dependency closure, download, check and unpack.

Resolution asks the host's apt (``apt-cache``) for the candidate version of each package, so the
host's ``/etc/apt/sources.list`` decides the suite: build on Debian 12 (bookworm) for this recipe.
Every package's version and SHA-256 (as the archive's signed ``Packages`` index states it) is
recorded, and each downloaded ``.deb`` is checked against that digest before it is unpacked.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attest.errors import ParseError, VerificationError

__all__ = ["DebPackage", "download", "resolve", "unpack"]

_DEP_RE = re.compile(r"^\s*(\|)?(Pre)?Depends:\s+(\S+)")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


@dataclass(frozen=True, slots=True)
class DebPackage:
    name: str
    version: str
    sha256: str
    filename: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def _run(args: Sequence[str]) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _direct_depends(names: Iterable[str]) -> dict[str, list[str]]:
    """Each package's hard dependencies; of alternatives (``a | b``) only the first is taken."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", *names])
    deps: dict[str, list[str]] = {}
    current: str | None = None
    skip_next_alternative = False
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.strip()
            deps.setdefault(current, [])
            skip_next_alternative = False
            continue
        m = _DEP_RE.match(line)
        if m is None or current is None:
            continue
        alternative, _, target = m.groups()
        if skip_next_alternative:
            skip_next_alternative = alternative is not None
            continue
        skip_next_alternative = alternative is not None
        if target.startswith("<"):  # a virtual package: its provider is listed as an alternative
            skip_next_alternative = False
            continue
        deps[current].append(target.split(":", 1)[0])
    return deps


def resolve(roots: Sequence[str], exclude: Sequence[str]) -> list[DebPackage]:
    """The dependency closure of ``roots`` minus ``exclude`` (and what only they pull in)."""
    for name in (*roots, *exclude):
        if not _NAME_RE.fullmatch(name):
            raise ParseError(f"image recipe: {name!r} is not a Debian package name")
    excluded = set(exclude)
    seen: set[str] = set()
    frontier = [n for n in roots if n not in excluded]
    while frontier:
        batch = sorted(set(frontier) - seen)
        seen.update(batch)
        frontier = []
        for deps in _direct_depends(batch).values():
            frontier += [d for d in deps if d not in excluded and d not in seen]
    return _describe(sorted(seen))


def _describe(names: Sequence[str]) -> list[DebPackage]:
    out = _run(["apt-cache", "show", "--no-all-versions", *names])
    found: dict[str, DebPackage] = {}
    for stanza in out.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value.strip()
        if "Package" in fields and fields.get("Architecture") in ("amd64", "all"):
            found.setdefault(
                fields["Package"],
                DebPackage(
                    name=fields["Package"],
                    version=fields["Version"],
                    sha256=fields["SHA256"],
                    filename=fields["Filename"],
                ),
            )
    missing = sorted(set(names) - set(found))
    if missing:
        raise ParseError(f"apt knows no amd64 package {', '.join(missing)}")
    return [found[n] for n in names]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(packages: Sequence[DebPackage], cache: Path) -> dict[str, Path]:
    """Each package's ``.deb`` in ``cache`` (fetched with ``apt-get download`` when absent)."""
    cache.mkdir(parents=True, exist_ok=True)
    packages = list({p.name: p for p in packages}.values())
    paths = {p.name: cache / Path(p.filename).name for p in packages}
    wanted = [p for p in packages if not paths[p.name].is_file()]
    if wanted:
        # apt-get download names files name_version_arch.deb with the epoch's ':' escaped; the
        # pool file name has no epoch, so fetch into a scratch directory and rename.
        scratch = cache / ".partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        proc = subprocess.run(
            ["apt-get", "download", *(f"{p.name}={p.version}" for p in wanted)],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise OSError(f"apt-get download failed: {proc.stderr.strip()[-800:]}")
        for p in wanted:
            got = sorted(scratch.glob(f"{p.name}_*.deb"))
            if len(got) != 1:
                raise OSError(f"apt-get download left no single file for {p.name}")
            got[0].replace(paths[p.name])
        shutil.rmtree(scratch, ignore_errors=True)
    for p in packages:
        digest = _sha256(paths[p.name])
        if digest != p.sha256:
            paths[p.name].unlink()
            raise VerificationError(
                "deb-digest", f"{p.name} {p.version}: SHA-256 {digest}, archive says {p.sha256}"
            )
    return paths


def unpack(deb: Path, into: Path) -> None:
    """Unpack a ``.deb``'s files (no maintainer scripts run) into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(into)])
