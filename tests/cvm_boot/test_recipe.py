"""Recipe loading: the shipped recipes load, and every malformed recipe is refused by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from attest.errors import ParseError
from cvm_boot.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[2]
RecipeText = Callable[..., str]


@pytest.mark.parametrize("name", ["example-snp", "simulated"])
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(REPO / "cvm_boot" / "recipes" / f"{name}.toml")
    assert recipe.name == name
    assert recipe.root.root_hash.hex() in recipe.cmdline


def test_relative_paths_resolve_against_recipe(make_recipe_text: RecipeText) -> None:
    recipe = parse_recipe(make_recipe_text(), base_dir=Path("/srv/release"))
    assert recipe.firmware.path == Path("/srv/release/OVMF.fd")
    assert recipe.root.image == Path("/srv/release/rootfs.img")
    assert recipe.engine_args == ("--max-model-len", "4096")
    assert recipe.cmdline.startswith("console=ttyS0 ro roothash=" + "04" * 32)


def test_simulated_recipe_needs_no_paths(make_recipe_text: RecipeText) -> None:
    recipe = parse_recipe(make_recipe_text("sim-sev-snp", paths=False), base_dir=Path("/x"))
    assert recipe.firmware.path is None
    assert recipe.simulated


def _sub(old: str, new: str) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return apply


BAD = [
    ("not toml", lambda t: t + "\n[[[", "not valid TOML"),
    ("unknown top key", lambda t: 'colour = "blue"\n' + t, "unknown key colour"),
    ("unknown vm key", _sub("vcpus = 4", "vcpus = 4\nvcpu = 4"), "unknown key vm.vcpu"),
    ("unknown volume key", _sub('salt = "aa"', 'salt = "aa"\nsize = 1'), "volumes.root.size"),
    ("unknown volume", lambda t: t + "\n[volumes.extra]\n", "unknown key volumes.extra"),
    ("unknown table", lambda t: t + "\n[network]\n", "unknown key network"),
    ("wrong format", _sub("openpcc-recipe/1", "openpcc-recipe/2"), "format"),
    ("bad tee", _sub('tee = "sev-snp"', 'tee = "sgx"'), "tee 'sgx'"),
    ("bad name", _sub('name = "test-sev-snp"', 'name = "a b"'), "name 'a b'"),
    ("missing firmware", _sub("[firmware]", "[firmwar]"), "firmware is missing"),
    ("missing path", _sub('path = "OVMF.fd"\n', ""), "firmware.path is missing"),
    ("short digest", _sub("01" * 32, "01" * 31), "firmware.sha256 must be 32 bytes"),
    ("upper hex", _sub("01" * 32, "AB" * 32), "lower-case hex"),
    ("vcpus zero", _sub("vcpus = 4", "vcpus = 0"), "vm.vcpus = 0 is outside"),
    ("vcpus string", _sub("vcpus = 4", 'vcpus = "4"'), "vm.vcpus must be an integer"),
    ("vcpus bool", _sub("vcpus = 4", "vcpus = true"), "vm.vcpus must be an integer"),
    ("features negative", _sub("guest_features = 0x1", "guest_features = -1"), "guest_features"),
    ("memory tiny", _sub("memory_mib = 2048", "memory_mib = 1"), "memory_mib"),
    ("cmdline roothash", _sub('ro"', 'ro roothash=00"'), "must not set 'roothash='"),
    ("cmdline non-ascii", _sub('ro"', 'ro é"'), "ASCII"),
    ("cmdline control", _sub('ro"', 'ro\\u0007"'), "control character"),
    ("root hash short", _sub("04" * 32, "04"), "root_hash must be 32 bytes"),
    ("odd salt", _sub('salt = "aa"', 'salt = "a"'), "lower-case hex"),
    ("args not list", _sub('args = ["--max-model-len", "4096"]', 'args = "x"'), "list of strings"),
    ("args ints", _sub('"4096"]', "4096]"), "list of strings"),
    ("port zero", _sub("port = 8443", "port = 0"), "gateway.port"),
    ("empty model", _sub('id = "test/model"', 'id = ""'), "model.id is empty"),
    ("tdx table on snp", lambda t: t + '\n[tdx]\nmrtd = "' + "00" * 48 + '"\n', "only belongs"),
    (
        "table as value",
        lambda t: 'model = "x"\n' + t.replace('[model]\nid = "test/model"\n', ""),
        "model must be a table",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_recipes(
    make_recipe_text: RecipeText, case: str, mutate: Callable[[str], str], message: str
) -> None:
    with pytest.raises(ParseError, match=message):
        parse_recipe(mutate(make_recipe_text()), base_dir=Path("/x"))


def test_unreadable_recipe(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot read recipe"):
        load_recipe(tmp_path / "absent.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ParseError, match="cannot read recipe"):
        load_recipe(tmp_path / "bin.toml")
