"""dm-verity: veritysetup's root hash equals the independent recomputation, reproducibly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from attest.errors import ParseError
from cvm_boot.verity import BLOCK_SIZE, format_volume, root_hash


def _data(path: Path, blocks: int) -> Path:
    # Deterministic, non-repeating content.
    chunks = (hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(blocks * 128))
    path.write_bytes(b"".join(chunks))
    return path


# 1 block, one full level-0 hash block (128), spill into 2 blocks (129), three levels (128*128+1).
@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 300])
@pytest.mark.parametrize("salt", [b"", bytes.fromhex("6f70656e706363")])
def test_veritysetup_matches_recomputation(
    veritysetup: str, tmp_path: Path, blocks: int, salt: bytes
) -> None:
    data = _data(tmp_path / "data.img", blocks)
    result = format_volume(data, tmp_path / "data.verity", salt)
    assert result.root_hash == root_hash(data, salt)
    again = format_volume(data, tmp_path / "again.verity", salt)
    assert again.root_hash == result.root_hash
    assert (tmp_path / "again.verity").read_bytes() == (tmp_path / "data.verity").read_bytes()


def test_three_levels(veritysetup: str, tmp_path: Path) -> None:
    data = tmp_path / "big.img"
    with data.open("wb") as f:
        f.truncate((128 * 128 + 1) * BLOCK_SIZE)
    assert format_volume(data, tmp_path / "big.verity", b"\x01").root_hash == root_hash(
        data, b"\x01"
    )


def test_salt_and_content_change_the_root(tmp_path: Path) -> None:
    data = _data(tmp_path / "d.img", 3)
    base = root_hash(data, b"a")
    assert root_hash(data, b"b") != base
    raw = bytearray(data.read_bytes())
    raw[5000] ^= 1
    data.write_bytes(bytes(raw))
    assert root_hash(data, b"a") != base


@pytest.mark.parametrize("size", [0, 100, BLOCK_SIZE + 1])
def test_unaligned_data_refused(tmp_path: Path, size: int) -> None:
    data = tmp_path / "d.img"
    data.write_bytes(b"x" * size)
    with pytest.raises(ParseError, match="multiple of 4096"):
        root_hash(data, b"")
