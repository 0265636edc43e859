"""Generator of the negative SEV-SNP assets in tests/assets/sevsnp (committed with them).

Each asset is the real Milan v2 report (vectors/snp/milan_v2_report.bin) with one mutation.
Run: .venv/bin/python tests/attest/sevsnp/gen_assets.py [VECTORS_DIR] [OUT_DIR]
test_assets.py regenerates them and fails if the committed files differ.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path


def _flip(offset: int, mask: int = 0x01) -> Callable[[bytearray], None]:
    def mutate(buf: bytearray) -> None:
        buf[offset] ^= mask

    return mutate


def _u32(offset: int, value: int) -> Callable[[bytearray], None]:
    def mutate(buf: bytearray) -> None:
        struct.pack_into("<I", buf, offset, value)

    return mutate


# name -> (mutation, what it exercises)
MUTATIONS: dict[str, tuple[Callable[[bytearray], None], str]] = {
    "milan_v2_bad_signature.bin": (_flip(0x2A0), "SIGNATURE.R low byte flipped"),
    "milan_v2_bad_measurement.bin": (_flip(0x090), "MEASUREMENT first byte flipped"),
    "milan_v2_debug.bin": (_flip(0x00A, 0x08), "POLICY.DEBUG (bit 19) set"),
    "milan_v2_version7.bin": (_u32(0x000, 7), "VERSION 7 (unknown)"),
    "milan_v2_mbz_04c.bin": (_flip(0x04C), "reserved 0x04C set"),
    "milan_v2_signer_reserved.bin": (_u32(0x048, 1 << 5), "SIGNER_INFO bit 5 (MBZ) set"),
}


def generate(vectors: Path, out: Path) -> dict[str, bytes]:
    """Write every asset into ``out`` and return them by name."""
    real = (vectors / "snp" / "milan_v2_report.bin").read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, bytes] = {}
    for name, (mutate, _why) in MUTATIONS.items():
        buf = bytearray(real)
        mutate(buf)
        written[name] = bytes(buf)
    written["milan_v2_truncated.bin"] = real[:-1]
    written["milan_v2_report.hex"] = (real.hex() + "\n").encode()
    for name, data in written.items():
        (out / name).write_bytes(data)
    return written


if __name__ == "__main__":
    here = Path(__file__).resolve()
    vectors = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[4] / "shared" / "vectors"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else here.parents[2] / "assets" / "sevsnp"
    for name in generate(vectors, out):
        print(out / name)
