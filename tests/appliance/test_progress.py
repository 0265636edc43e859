"""Progress for long steps: bars on a terminal, one line per step otherwise, nothing with --json."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from appliance.main import app
from appliance.progress import ProgressUI
from cvm_boot.image.meter import copy_tree, sha256_file


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=120, no_color=True), buf


def _steps(ui: ProgressUI) -> None:
    ui.say("resolving Debian packages")
    for done in (0, 1 << 20, 2 << 20):
        ui.meter("downloading w.tar", done, 2 << 20)
    ui.meter("hashing weights", 5, None)
    ui.meter("hashing weights", 9, 9)
    ui.say("formatting dm-verity volumes")


def test_plain_output_is_one_line_per_step() -> None:
    console, buf = _console(False)
    with ProgressUI(console) as ui:
        assert ui.mode == "plain"
        _steps(ui)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "resolving Debian packages"
    assert lines[1] == "downloading w.tar (2.0 MiB) …"
    assert lines[2].startswith("downloading w.tar: done, 2.0 MiB in ")
    assert lines[3] == "hashing weights …"
    assert lines[4].startswith("hashing weights: done, 0.0 MiB in ")
    assert lines[5] == "formatting dm-verity volumes" and len(lines) == 6


def test_json_mode_prints_nothing() -> None:
    console, buf = _console(True)
    with ProgressUI(console, json_mode=True) as ui:
        _steps(ui)
    assert buf.getvalue() == ""


def test_terminal_gets_bars() -> None:
    console, buf = _console(True)
    with ProgressUI(console) as ui:
        assert ui.mode == "rich"
        _steps(ui)
    text = buf.getvalue()
    assert "resolving Debian packages" in text and "downloading w.tar" in text
    assert "2.1/2.1 MB" in text  # rich's DownloadColumn, decimal units


def test_metered_helpers_report_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a" * 3_000_000)
    (src / "sub" / "b.bin").write_bytes(b"b" * 10)
    (src / "empty").mkdir()
    seen: list[tuple[str, int, int | None]] = []
    copy_tree(src, tmp_path / "dst", lambda *a: seen.append(a), "copying weights")
    assert seen[-1] == ("copying weights", 3_000_010, 3_000_010) and len(seen) > 2
    assert (tmp_path / "dst/sub/b.bin").read_bytes() == b"b" * 10
    assert (tmp_path / "dst/empty").is_dir()
    seen.clear()
    sha256_file(src / "a.bin", lambda *a: seen.append(a), "hashing")
    assert seen[-1] == ("hashing", 3_000_000, 3_000_000)


def test_build_image_names_a_bad_weights_source_in_one_line(tmp_path: Path) -> None:
    recipe = Path(__file__).parents[1] / "cvm_boot" / "image" / "image-test.toml"
    text = recipe.read_text().replace(
        "[weights]\n", '[weights]\nsource = "https://example.org/w.tar"\n'
    )
    text = text.replace('release = "release-test.toml"', f'release = "{recipe.parent}/r.toml"')
    text = text.replace("../../fakes/engine.py", str(recipe.parents[2] / "fakes" / "engine.py"))
    (tmp_path / "image.toml").write_text(text)
    r = CliRunner().invoke(
        app, ["build-image", str(tmp_path / "image.toml"), "--json"], env={"COLUMNS": "200"}
    )
    assert r.exit_code == 1
    assert r.stdout.strip().startswith('{"error": "image recipe: weights.source')
    assert "needs weights.sha256" in r.stdout and len(r.stdout.strip().splitlines()) == 1
