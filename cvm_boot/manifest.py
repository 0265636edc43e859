"""The release manifest (DESIGN.md section 5), built from a recipe and its launch measurement.

A manifest is plain JSON-able data; its canonical JSON (``canonical_json``) is what the attestation
report binds (section 3) and what the transparency log stores as a leaf. ``launch_inputs`` is the
part of it the launch measurement is computed from, so a client can recompute the simulated
measurement from the manifest alone and a real one from the named artifacts.
"""

from __future__ import annotations

import json

from cvm_boot.recipe import Recipe

__all__ = ["MANIFEST_FORMAT", "build_manifest", "canonical_json", "launch_inputs"]

MANIFEST_FORMAT = "openpcc-manifest/1"


def canonical_json(obj: object) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace (DESIGN.md section 3)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def launch_inputs(recipe: Recipe) -> dict[str, object]:
    """Everything the launch measurement covers (not memory size: SEV-SNP does not measure it)."""
    return {
        "tee": recipe.tee,
        "firmware_sha256": recipe.firmware.sha256.hex(),
        "kernel_sha256": recipe.kernel.sha256.hex(),
        "initrd_sha256": recipe.initrd.sha256.hex(),
        "cmdline": recipe.cmdline,
        "vcpus": recipe.vcpus,
        "vcpu_type": recipe.vcpu_type,
        "guest_features": recipe.guest_features,
    }


def _volume(recipe: Recipe, which: str) -> dict[str, object]:
    vol = recipe.root if which == "root" else recipe.weights
    return {
        "format": "dm-verity-1-sha256",
        "salt": vol.salt.hex(),
        "root_hash": vol.root_hash.hex(),
    }


def build_manifest(recipe: Recipe, measurement: bytes) -> dict[str, object]:
    """The release manifest for ``recipe`` whose expected launch measurement is ``measurement``."""
    manifest: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "recipe": {"name": recipe.name, "version": recipe.version},
        "tee": recipe.tee,
        "measurement": measurement.hex(),
        "launch": launch_inputs(recipe),
        "memory_mib": recipe.memory_mib,
        "volumes": {"root": _volume(recipe, "root"), "weights": _volume(recipe, "weights")},
        "model": {
            "id": recipe.model_id,
            # The weights volume's dm-verity root hash is a Merkle root over every byte of it.
            "weights_digest": f"dm-verity-sha256:{recipe.weights.root_hash.hex()}",
        },
        "engine": {
            "name": recipe.engine_name,
            "version": recipe.engine_version,
            "args": list(recipe.engine_args),
        },
        "gateway": {"version": recipe.gateway_version, "port": recipe.gateway_port},
    }
    if recipe.tdx_mrtd is not None:
        manifest["tdx"] = {
            "mrtd": recipe.tdx_mrtd.hex(),
            **{name: value.hex() for name, value in recipe.tdx_rtmrs},
        }
    return manifest
