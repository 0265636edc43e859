"""``measure`` and ``release`` on the shipped simulation recipe, through a typer app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from appliance.cmd_release import measure, release
from attest.tlog import VerifierKey, leaf_hash, verify_log_entry
from cvm_boot.manifest import canonical_json
from cvm_boot.measure import simulated_measurement
from cvm_boot.tlog import TransparencyLog, bundle_entry

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "cvm_boot" / "recipes" / "simulated.toml"

app = typer.Typer()
app.command("measure")(measure)
app.command("release")(release)
runner = CliRunner()


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "simulated.toml"
    shutil.copy(SIM, path)
    return path


def test_measure_twice_is_identical(recipe: Path, tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"m{i}.json"
        result = runner.invoke(app, ["measure", str(recipe), "-o", str(out), "--json"])
        assert result.exit_code == 0, result.output
        outs.append((json.loads(result.stdout), out.read_bytes()))
    assert outs[0][0]["measurement"] == outs[1][0]["measurement"]
    assert outs[0][1] == outs[1][1]
    manifest = json.loads(outs[0][1])
    assert manifest["measurement"] == outs[0][0]["measurement"]
    assert simulated_measurement(manifest["launch"]).hex() == manifest["measurement"]
    assert outs[0][1] == canonical_json(manifest) + b"\n"


def test_measure_default_output_and_text(recipe: Path) -> None:
    result = runner.invoke(app, ["measure", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "measurement: " in result.stdout
    assert (recipe.parent / "simulated.manifest.json").is_file()


def test_measure_bad_recipe_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('format = "openpcc-recipe/1"\nsurprise = 1\n')
    result = runner.invoke(app, ["measure", str(bad)])
    assert result.exit_code == 3  # ParseError
    assert "unknown key surprise" in result.output or "is missing" in result.output


def test_release_appends_once_and_entry_verifies(recipe: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    first = runner.invoke(
        app, ["release", str(recipe), "--log-dir", str(log_dir), "--new-log", "--json"]
    )
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert (out["index"], out["appended"], out["tree_size"]) == (0, True, 1)
    again = json.loads(
        runner.invoke(app, ["release", str(recipe), "--log-dir", str(log_dir), "--json"]).stdout
    )
    assert (again["index"], again["appended"]) == (0, False)

    # What the gateway serves and a client checks: the manifest's log entry verifies.
    runner.invoke(app, ["measure", str(recipe), "-o", str(tmp_path / "m.json")])
    manifest = json.loads((tmp_path / "m.json").read_bytes())
    data = canonical_json(manifest)
    assert leaf_hash(data).hex() == out["leaf_hash"]
    log = TransparencyLog.open(log_dir)
    entry = bundle_entry(log, data)
    keys = [VerifierKey.parse((log_dir / "log.vkey").read_text().strip())]
    inclusion = [bytes.fromhex(h) for h in entry["inclusion"]]  # type: ignore[attr-defined]
    cp = verify_log_entry(
        data,
        index=0,
        tree_size=1,
        inclusion=inclusion,
        checkpoint=str(entry["checkpoint"]),
        keys=keys,
    )
    assert cp.size == 1
    assert out["log_vkey"] == keys[0].encode()


def test_release_text_output(recipe: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["release", str(recipe), "--log-dir", str(tmp_path / "l"), "--new-log"]
    )
    assert result.exit_code == 0, result.output
    assert "index:       0" in result.stdout
    assert "\u2014 openpcc.appliance/log " in result.stdout


def test_release_never_starts_a_log_by_mistake(recipe: Path, tmp_path: Path) -> None:
    """A mistyped --log-dir used to start a new log with a new key, silently."""
    typo = tmp_path / "lgo"
    result = runner.invoke(app, ["release", str(recipe), "--log-dir", str(typo)])
    assert result.exit_code == 1
    assert f"no transparency log in {typo}" in result.output and "--new-log" in result.output
    assert not typo.exists()


def test_release_defaults_to_the_appliance_log(
    recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENPCC_STATE_DIR", str(tmp_path / "state"))
    TransparencyLog.open(tmp_path / "state" / "log")  # what provision or install.sh made
    result = runner.invoke(app, ["release", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tree_size"] == 1
    assert TransparencyLog.open(tmp_path / "state" / "log").size == 1


def test_errors_print_their_text_not_markup(tmp_path: Path) -> None:
    odd = tmp_path / "[/b]" / "[tdx].toml"
    result = runner.invoke(app, ["measure", str(odd)])
    assert result.exit_code != 0
    assert "[tdx].toml" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_measure_to_an_unwritable_place_is_one_line(recipe: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["measure", str(recipe), "-o", str(tmp_path / "no" / "m.json")])
    assert result.exit_code == 1
    assert "cannot write the manifest to" in result.output
    assert isinstance(result.exception, SystemExit)
