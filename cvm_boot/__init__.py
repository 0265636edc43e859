"""Confidential VM boot: release recipes, launch measurements, QEMU command lines, release log.

- ``recipe``: the strict TOML release recipe (``load_recipe``)
- ``measure``: the expected launch measurement (``expected_measurement``)
- ``manifest``: the release manifest and its canonical JSON
- ``verity``: dm-verity formatting and root-hash recomputation
- ``qemu``: QEMU argument vectors for SEV-SNP, TDX and plain launches
- ``tlog``: the file-backed transparency log that records release manifests
"""

from __future__ import annotations

from cvm_boot.manifest import build_manifest, canonical_json
from cvm_boot.measure import expected_measurement
from cvm_boot.qemu import qemu_command
from cvm_boot.recipe import Recipe, load_recipe
from cvm_boot.tlog import TransparencyLog, generate_log_key

__all__ = [
    "Recipe",
    "TransparencyLog",
    "build_manifest",
    "canonical_json",
    "expected_measurement",
    "generate_log_key",
    "load_recipe",
    "qemu_command",
]
