"""Launch measurements: Debian's OVMF digest, the kernel-hashes path, simulation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from attest.errors import ParseError, VerificationError
from cvm_boot.manifest import build_manifest, canonical_json, launch_inputs
from cvm_boot.measure import (
    SIM_DOMAIN,
    expected_measurement,
    firmware_has_kernel_hashes,
    simulated_measurement,
    snp_launch_digest,
    tdx_expectations,
)
from cvm_boot.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[2]
# sev-snp-measure 0.0.13, Debian bookworm ovmf 2022.11-6+deb12u2: 4 vCPUs, EPYC-Milan, features 0x1.
DEBIAN_OVMF_DIGEST = (
    "cc2b38913550ecd41aadbcf2a5d309ae9d3cb0455c9e1f72892f6b18cfaea3f2"
    "e4f46a28b61ca0353724ee707c73177c"
)
# Pinned on first computation over the synthetic firmware of conftest.py (regression value).
SYNTHETIC_KERNEL_HASHES_DIGEST = (
    "892b6fb4b1e6144a8f7c575bc05137100946a04f2a2e5d9da03f6d3b4133651a"
    "d240763c38e5afae7da26fd6a4ef6ddc"
)


def test_debian_ovmf_firmware_only_digest(debian_ovmf: Path) -> None:
    digest = snp_launch_digest(debian_ovmf, vcpus=4, vcpu_type="EPYC-Milan", guest_features=0x1)
    assert digest.hex() == DEBIAN_OVMF_DIGEST


def test_debian_ovmf_has_no_kernel_hashes(debian_ovmf: Path, tmp_path: Path) -> None:
    assert not firmware_has_kernel_hashes(debian_ovmf)
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    with pytest.raises(ParseError, match="no SNP kernel-hashes section") as err:
        snp_launch_digest(
            debian_ovmf, vcpus=4, vcpu_type="EPYC-Milan", guest_features=1, kernel=kernel
        )
    assert "AmdSev" in err.value.hint


def test_kernel_hashes_digest_is_stable_and_sensitive(snp_recipe: Path) -> None:
    recipe = load_recipe(snp_recipe)
    first = expected_measurement(recipe)
    assert len(first) == 48
    assert expected_measurement(load_recipe(snp_recipe)) == first
    assert first.hex() == SYNTHETIC_KERNEL_HASHES_DIGEST
    base = snp_recipe.parent
    common = {"vcpu_type": "EPYC-Milan", "guest_features": 1, "initrd": base / "initrd.img"}
    variants = [
        dict(vcpus=4, kernel=base / "vmlinuz", cmdline=recipe.cmdline + " x", **common),
        dict(vcpus=5, kernel=base / "vmlinuz", cmdline=recipe.cmdline, **common),
        dict(vcpus=4, kernel=base / "initrd.img", cmdline=recipe.cmdline, **common),
    ]
    for v in variants:
        assert snp_launch_digest(base / "OVMF.fd", **v) != first  # type: ignore[arg-type]


def test_kernel_hashes_page_matches_qemu_layout(snp_recipe: Path) -> None:
    """The hashes table uses SHA-256 of the NUL-terminated command line, as QEMU builds it."""
    from sevsnpmeasure.sev_hashes import SevHashes

    recipe = load_recipe(snp_recipe)
    base = snp_recipe.parent
    hashes = SevHashes(str(base / "vmlinuz"), str(base / "initrd.img"), recipe.cmdline)
    assert hashes.cmdline_hash == hashlib.sha256(recipe.cmdline.encode() + b"\0").digest()
    assert hashes.kernel_hash == recipe.kernel.sha256
    assert hashes.initrd_hash == recipe.initrd.sha256


def test_firmware_digest_mismatch_is_refused(snp_recipe: Path) -> None:
    (snp_recipe.parent / "vmlinuz").write_bytes(b"another kernel")
    with pytest.raises(VerificationError, match=r"kernel .* has SHA-256") as err:
        expected_measurement(load_recipe(snp_recipe))
    assert err.value.check == "recipe-digest"


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        ("unknown cpu", {"vcpu_type": "Pentium"}, "unknown SEV-SNP vCPU type"),
        ("not firmware", {"firmware": "initrd.img"}, "no SNP kernel-hashes"),
        ("missing firmware", {"firmware": "nope.fd"}, "cannot read firmware .*nope.fd"),
    ],
)
def test_snp_digest_rejects(
    snp_recipe: Path, case: str, kwargs: dict[str, str], message: str
) -> None:
    base = snp_recipe.parent
    args: dict[str, object] = {
        "vcpus": 4,
        "vcpu_type": kwargs.get("vcpu_type", "EPYC-Milan"),
        "guest_features": 1,
        "kernel": base / "vmlinuz",
        "initrd": base / "initrd.img",
        "cmdline": "x",
    }
    firmware = base / kwargs.get("firmware", "OVMF.fd")
    with pytest.raises(ParseError, match=message):
        snp_launch_digest(firmware, **args)  # type: ignore[arg-type]


def test_simulated_measurement_is_recomputable_from_manifest() -> None:
    recipe = load_recipe(REPO / "cvm_boot" / "recipes" / "simulated.toml")
    measurement = expected_measurement(recipe)
    manifest = build_manifest(recipe, measurement)
    # A client holding only the manifest's JSON recomputes it.
    wire = json.loads(canonical_json(manifest))
    launch = wire["launch"]
    recomputed = hashlib.sha384(
        b"openpcc/sim-launch-measurement/v1\x00"
        + json.dumps(launch, sort_keys=True, separators=(",", ":")).encode()
    ).digest()
    assert recomputed == measurement == bytes.fromhex(wire["measurement"])
    assert simulated_measurement(launch) == measurement
    assert SIM_DOMAIN.endswith(b"\x00")
    assert launch == launch_inputs(recipe)
    assert recipe.root.root_hash.hex() in launch["cmdline"]
    assert recipe.weights.root_hash.hex() in launch["cmdline"]


def test_tdx_needs_pinned_mrtd(make_recipe_text: object) -> None:
    text = make_recipe_text("tdx")  # type: ignore[operator]
    with pytest.raises(ParseError, match=r"needs \[tdx\]\.mrtd"):
        expected_measurement(parse_recipe(text, base_dir=Path("/x")))
    pinned = parse_recipe(text + '\n[tdx]\nmrtd = "' + "ab" * 48 + '"\n', base_dir=Path("/x"))
    assert expected_measurement(pinned) == bytes.fromhex("ab" * 48)
    expect = tdx_expectations(pinned)
    assert expect.unbound == ("rtmr0", "rtmr1", "rtmr2")
    rtmr2 = next(n for n in expect.notes if n.startswith("RTMR2: kernel command line"))
    assert "NOT pinned" in rtmr2
    # The manifest carries only what the recipe pins.
    assert build_manifest(pinned, expect.mrtd)["tdx"] == {"mrtd": "ab" * 48}


def _tdx_table(*lines: str) -> str:
    return "\n[tdx]\n" + "".join(line + "\n" for line in (f'mrtd = "{"ab" * 48}"', *lines))


def test_tdx_rtmrs_from_a_reference_boot_reach_the_manifest(make_recipe_text: object) -> None:
    text = make_recipe_text("tdx")  # type: ignore[operator]
    table = _tdx_table(*(f'rtmr{i} = "{f"{i}c" * 48}"' for i in range(3)))
    recipe = parse_recipe(text + table, base_dir=Path("/x"))
    expect = tdx_expectations(recipe)
    assert expect.unbound == ()
    assert [name for name, _ in expect.rtmrs] == ["rtmr0", "rtmr1", "rtmr2"]
    assert any(n.startswith("RTMR1:") and "pinned from a reference boot" in n for n in expect.notes)
    manifest = build_manifest(recipe, expected_measurement(recipe))
    assert manifest["tdx"] == {
        "mrtd": "ab" * 48,
        "rtmr0": "0c" * 48,
        "rtmr1": "1c" * 48,
        "rtmr2": "2c" * 48,
    }


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('rtmr1 = "' + "ab" * 47 + '"', "must be 48 bytes, got 47"),
        ('rtmr2 = "XY"', "must be lower-case hex"),
        ('rtmr4 = "' + "ab" * 48 + '"', "rtmr4"),
    ],
)
def test_tdx_rtmr_pins_are_checked(make_recipe_text: object, line: str, says: str) -> None:
    text = make_recipe_text("tdx")  # type: ignore[operator]
    with pytest.raises(ParseError, match=says):
        parse_recipe(text + _tdx_table(line), base_dir=Path("/x"))
