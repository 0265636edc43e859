"""Fetch the model weights an image recipe names: a directory, the Hugging Face Hub, or https.

- A directory is used as it is.
- ``hf:ORG/NAME@REVISION`` goes through ``huggingface_hub.snapshot_download`` when that is
  importable (vLLM hosts have it); it is not a dependency of OpenPCC.
- ``https://...`` is streamed with httpx into the cache (``CACHE/weights/<sha256>/``) as a
  ``.partial`` file, hashed while it arrives, and renamed only once its SHA-256 equals the one the
  recipe pins; a file already in the cache is hashed again before use. A tar archive (``.tar``,
  ``.tar.gz``/``.tgz``, ``.tar.xz``/``.txz``, ``.tar.bz2``/``.tbz2``) is unpacked, refusing
  absolute names, ``..``, links that point outside the tree and device files; any other download
  is the weights tree's single file.

None of this is a trust decision: the weights volume's dm-verity root hash, in the release recipe
and on the measured kernel command line, pins the bytes the guest will read. The SHA-256 pin
makes the download reproducible and fails early on a changed or corrupted file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import posixpath
import shutil
import tarfile
import time
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx

from attest.errors import ParseError, TransportError, VerificationError
from cvm_boot.image.meter import CHUNK, Meter, Say, no_meter, quiet, sha256_file
from cvm_boot.image.spec import HfWeights, HttpsWeights, LocalWeights, WeightsSource

__all__ = ["TAR_SUFFIXES", "fetch_hf", "fetch_https", "resolve_weights", "safe_extract"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
HF_HINT = "pip install huggingface_hub (vLLM hosts have it), or download it and name the directory"


def resolve_weights(
    source: WeightsSource | None,
    cache: Path,
    *,
    say: Say = quiet,
    meter: Meter = no_meter,
    client: httpx.Client | None = None,
) -> Path | None:
    """The local directory holding the weights ``source`` names, fetching it when needed."""
    if source is None:
        return None
    if isinstance(source, LocalWeights):
        if not source.path.is_dir():
            raise ParseError(f"weights source {source.path} is not a directory")
        return source.path
    if isinstance(source, HfWeights):
        return fetch_hf(source, cache, say=say)
    return fetch_https(source, cache, say=say, meter=meter, client=client)


def fetch_hf(source: HfWeights, cache: Path, *, say: Say = quiet) -> Path:
    """A Hugging Face Hub snapshot, through ``huggingface_hub`` (its own cache under ``cache``)."""
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError as e:
        raise ParseError(
            f"weights source {source} needs huggingface_hub, which is not installed", hint=HF_HINT
        ) from e
    say(f"fetching {source} from the Hugging Face Hub")
    try:
        path = hub.snapshot_download(
            repo_id=source.repo, revision=source.revision, cache_dir=str(cache / "hf")
        )
    except (OSError, ValueError) as e:  # requests' and the hub's errors are OSErrors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TransportError(f"weights source {source}: {first}") from e
    return Path(str(path))


def _file_name(url: str) -> str:
    name = posixpath.basename(unquote(urlsplit(url).path))
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ParseError(f"weights source {url}: the URL names no file")
    return name


def _download(
    source: HttpsWeights, target: Path, *, meter: Meter, client: httpx.Client | None
) -> None:
    partial = target.with_name(target.name + ".partial")
    label = f"downloading {target.name}"
    h = hashlib.sha256()
    own = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=20.0))
    try:
        with http.stream("GET", source.url) as r:
            if r.status_code != 200:
                raise TransportError(f"weights source {source.url}: HTTP {r.status_code}")
            length = r.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            with partial.open("wb") as f:
                for chunk in r.iter_bytes(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    meter(label, done, total)
            meter(label, done, done)
    except httpx.HTTPError as e:
        partial.unlink(missing_ok=True)
        raise TransportError(f"weights source {source.url}: {e}") from e
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if own:
            http.close()
    got = h.hexdigest()
    if got != source.sha256:
        partial.unlink()
        raise VerificationError(
            "weights-sha256",
            f"{source.url} has SHA-256 {got}, the image recipe pins {source.sha256}",
            hint="a changed or corrupted download: change weights.sha256 only for a file you trust",
        )
    os.replace(partial, target)


def fetch_https(
    source: HttpsWeights,
    cache: Path,
    *,
    say: Say = quiet,
    meter: Meter = no_meter,
    client: httpx.Client | None = None,
) -> Path:
    """Download ``source`` into the cache, check its SHA-256, and unpack it; the tree's path."""
    name = _file_name(source.url)
    where = cache / "weights" / source.sha256
    where.mkdir(parents=True, exist_ok=True)
    download = where / name
    tree = where / "tree"
    if download.is_file():
        got = sha256_file(download, meter, f"verifying {name}")
        if got != source.sha256:
            download.unlink()  # damaged in the cache: fetch it again
            shutil.rmtree(tree, ignore_errors=True)
    if not download.is_file():
        say(f"fetching {source.url}")
        started = time.monotonic()
        _download(source, download, meter=meter, client=client)
        say(
            f"fetched {name} ({download.stat().st_size} bytes in {time.monotonic() - started:.1f}s)"
        )
    if tree.is_dir():
        return tree
    partial = where / "tree.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        if name.lower().endswith(TAR_SUFFIXES):
            say(f"unpacking {name}")
            safe_extract(download, partial, what=source.url)
        else:
            shutil.copyfile(download, partial / name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, tree)
    return tree


def _inside(name: str) -> bool:
    """Whether the archive path ``name`` stays inside the tree (relative, no ``..``)."""
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts


def safe_extract(archive: Path, dest: Path, *, what: str = "") -> None:
    """Unpack the tar ``archive`` into ``dest``, refusing any member that could land outside it.

    Every member is checked before anything is written; the ``data`` extraction filter then
    applies the same rules again (and drops set-id bits and ownership).
    """
    label = what or str(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if not _inside(m.name):
                    raise ParseError(
                        f"weights archive {label}: member {m.name!r} is outside the tree"
                    )
                if m.issym():
                    target = posixpath.normpath(
                        posixpath.join(posixpath.dirname(m.name), m.linkname)
                    )
                    if PurePosixPath(m.linkname).is_absolute() or not _inside(target):
                        raise ParseError(
                            f"weights archive {label}: link {m.name!r} -> {m.linkname!r} "
                            "points outside the tree"
                        )
                elif m.islnk():
                    if not _inside(m.linkname):
                        raise ParseError(
                            f"weights archive {label}: hard link {m.name!r} -> {m.linkname!r} "
                            "points outside the tree"
                        )
                elif not (m.isfile() or m.isdir()):
                    raise ParseError(
                        f"weights archive {label}: member {m.name!r} is a device or fifo"
                    )
            tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as e:
        raise ParseError(f"weights archive {label}: {e}") from e
    except (tarfile.ReadError, tarfile.CompressionError, EOFError) as e:
        raise ParseError(f"weights archive {label} is not a readable tar archive: {e}") from e
