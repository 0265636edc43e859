"""Model weights from a directory, the Hugging Face Hub (a monkeypatched snapshot_download) or
https (a local HTTP server: no network), and the one-line errors for bad sources."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import threading
import types
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from attest.errors import ParseError, TransportError, VerificationError
from cvm_boot.image.spec import (
    HfWeights,
    HttpsWeights,
    LocalWeights,
    load_image_recipe,
    parse_weights_source,
)
from cvm_boot.image.weights import fetch_https, resolve_weights

SHA = "ab" * 32
BAD_SOURCES = [
    ("hf without revision", "hf:google/gemma-3-270m", None, "is not hf:ORG/NAME@REVISION"),
    ("hf without org", "hf:gemma@main", None, "is not hf:ORG/NAME@REVISION"),
    ("hf with sha256", "hf:a/b@main", SHA, "goes with an https:// source only"),
    ("plain http", "http://example.org/w.tar", SHA, "http:// is not supported (https:// only)"),
    ("s3", "s3://bucket/w.tar", SHA, "s3:// is not supported"),
    ("https without sha256", "https://example.org/w.tar", None, "needs weights.sha256"),
    ("https with a short sha256", "https://example.org/w.tar", "abc", "is not 64 lowercase hex"),
    ("https without a host", "https:///w.tar", SHA, "is not a URL like https://host/path"),
    ("path with sha256", "weights", SHA, "goes with an https:// source only"),
    ("sha256 alone", None, SHA, "weights.sha256 is set but weights.source is not"),
]


@pytest.mark.parametrize(
    ("case", "source", "sha256", "message"), BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES]
)
def test_bad_sources_are_one_clear_line(
    case: str, source: str | None, sha256: str | None, message: str
) -> None:
    with pytest.raises(ParseError, match=re.escape(message)) as e:
        parse_weights_source(source, sha256, Path("/r"))
    assert "\n" not in str(e.value)


def test_good_sources() -> None:
    assert parse_weights_source(None, None, Path("/r")) is None
    assert parse_weights_source("w", None, Path("/r")) == LocalWeights(Path("/r/w"))
    assert parse_weights_source("hf:google/gemma-3-270m@0123abc", None, Path("/r")) == HfWeights(
        "google/gemma-3-270m", "0123abc"
    )
    url = "https://example.org/models/w.tar.gz"
    assert parse_weights_source(url, SHA, Path("/r")) == HttpsWeights(url, SHA)


def test_image_recipe_reads_the_sha256(tmp_path: Path) -> None:
    text = (Path(__file__).parent / "image-test.toml").read_text()
    text = text.replace(
        "[weights]\n", f'[weights]\nsource = "https://example.org/w.tar"\nsha256 = "{SHA}"\n'
    )
    (tmp_path / "release-test.toml").write_text("")
    (tmp_path / "r.toml").write_text(text.replace("../../fakes/engine.py", "engine.py"))
    assert load_image_recipe(tmp_path / "r.toml").weights == HttpsWeights(
        "https://example.org/w.tar", SHA
    )


# -- https, served from a local directory --------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


def test_archive_is_fetched_verified_unpacked_and_reused(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    www, base = served
    sha = _tar(
        www / "model.tar.gz",
        [
            (_file("model/config.json"), b"{}"),
            (_file("model/weights.bin"), b"w" * 300_000),
            (_link("model/latest", "weights.bin"), None),
        ],
    )
    meters: list[tuple[str, int, int | None]] = []
    said: list[str] = []
    src = HttpsWeights(f"{base}/model.tar.gz", sha)
    tree = resolve_weights(
        src, tmp_path / "cache", say=said.append, meter=lambda *a: meters.append(a)
    )
    assert tree == tmp_path / "cache" / "weights" / sha / "tree"
    assert (tree / "model/weights.bin").read_bytes() == b"w" * 300_000
    assert (tree / "model/latest").resolve() == (tree / "model/weights.bin").resolve()
    size = (www / "model.tar.gz").stat().st_size
    assert meters[-1] == ("downloading model.tar.gz", size, size)
    assert said[0] == f"fetching {base}/model.tar.gz" and said[-1] == "unpacking model.tar.gz"
    assert not list((tmp_path / "cache" / "weights" / sha).glob("*.partial"))

    # Cached: hashed again before use, not downloaded again.
    (www / "model.tar.gz").unlink()
    meters.clear()
    again = fetch_https(src, tmp_path / "cache", meter=lambda *a: meters.append(a))
    assert again == tree and meters[-1] == ("verifying model.tar.gz", size, size)


def test_single_file_download(served: tuple[Path, str], tmp_path: Path) -> None:
    www, base = served
    (www / "gemma.gguf").write_bytes(b"GGUF" + bytes(1000))
    sha = hashlib.sha256((www / "gemma.gguf").read_bytes()).hexdigest()
    tree = fetch_https(HttpsWeights(f"{base}/gemma.gguf", sha), tmp_path / "cache")
    assert [p.name for p in tree.iterdir()] == ["gemma.gguf"]


def test_digest_mismatch_keeps_nothing(served: tuple[Path, str], tmp_path: Path) -> None:
    www, base = served
    _tar(www / "model.tar", [(_file("a.bin"), b"a")])
    with pytest.raises(VerificationError, match=f"weights-sha256: .* pins {SHA}") as e:
        fetch_https(HttpsWeights(f"{base}/model.tar", SHA), tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "cache" / "weights" / SHA).iterdir()) == []


def test_http_error_is_a_transport_error(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base = served
    with pytest.raises(TransportError, match="HTTP 404"):
        fetch_https(HttpsWeights(f"{base}/missing.tar", SHA), tmp_path / "cache")
    assert not list((tmp_path / "cache" / "weights" / SHA).iterdir())


MALICIOUS = [
    ("absolute path", [(_file("/etc/evil"), b"x")], "outside the tree"),
    ("dot-dot", [(_file("model/../../evil"), b"x")], "outside the tree"),
    ("symlink out", [(_link("model/cfg", "../../../etc/passwd"), None)], "points outside"),
    ("absolute symlink", [(_link("model/cfg", "/etc/passwd"), None)], "points outside"),
    ("hard link out", [(_link("h", "../etc/passwd", tarfile.LNKTYPE), None)], "hard link"),
    ("device", [(_device("model/tty"), None)], "device or fifo"),
]


@pytest.mark.parametrize(("case", "members", "message"), MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_malicious_archives_are_refused(
    served: tuple[Path, str],
    tmp_path: Path,
    case: str,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    message: str,
) -> None:
    www, base = served
    sha = _tar(www / "evil.tar.gz", [(_file("model/ok.bin"), b"ok"), *members])
    with pytest.raises(ParseError, match=message):
        fetch_https(HttpsWeights(f"{base}/evil.tar.gz", sha), tmp_path / "cache" / "c")
    where = tmp_path / "cache" / "c" / "weights" / sha
    assert sorted(p.name for p in where.iterdir()) == ["evil.tar.gz"]  # no tree, no partial
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()


def test_not_a_tar_archive(served: tuple[Path, str], tmp_path: Path) -> None:
    www, base = served
    (www / "w.tar.gz").write_bytes(b"not gzip")
    sha = hashlib.sha256(b"not gzip").hexdigest()
    with pytest.raises(ParseError, match="is not a readable tar archive"):
        fetch_https(HttpsWeights(f"{base}/w.tar.gz", sha), tmp_path / "cache")


# -- the Hugging Face Hub --------------------------------------------------------------------------


def _fake_hub(
    monkeypatch: pytest.MonkeyPatch, download: Callable[..., str]
) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def snapshot_download(**kwargs: object) -> str:
        calls.append(kwargs)
        return download(**kwargs)

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    return calls


def test_hf_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    calls = _fake_hub(monkeypatch, lambda **_: str(snap))
    src = HfWeights("google/gemma-3-270m", "9b8ef1c")
    assert resolve_weights(src, tmp_path / "cache") == snap
    assert calls == [
        {
            "repo_id": "google/gemma-3-270m",
            "revision": "9b8ef1c",
            "cache_dir": str(tmp_path / "cache" / "hf"),
        }
    ]


def test_hf_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fails(**_: object) -> str:
        raise OSError("401 Client Error: Repository Not Found for url\nmore detail")

    _fake_hub(monkeypatch, fails)
    with pytest.raises(TransportError, match="hf:a/b@main: 401 Client Error") as e:
        resolve_weights(HfWeights("a/b", "main"), tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ParseError, match="needs huggingface_hub") as missing:
        resolve_weights(HfWeights("a/b", "main"), tmp_path)
    assert "pip install huggingface_hub" in missing.value.hint


def test_local_directory_must_exist(tmp_path: Path) -> None:
    assert resolve_weights(LocalWeights(tmp_path), tmp_path) == tmp_path
    with pytest.raises(ParseError, match="is not a directory"):
        resolve_weights(LocalWeights(tmp_path / "nope"), tmp_path)
