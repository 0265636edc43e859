"""FAKE configfs-tsm tree for tests: a plain directory that answers like the kernel would."""

from __future__ import annotations

from pathlib import Path


class FakeTsmClient:
    """Emulates configfs: creating an entry makes its attribute files; writing inblob makes
    a "quote" (the report data behind a marker) and bumps generation."""

    def __init__(self, *, provider: str = "tdx_guest", extra_writes: int = 0) -> None:
        self.provider = provider
        self.extra_writes = extra_writes
        self.removed: list[Path] = []

    def make_entry(self, root: Path) -> Path:
        entry = root / f"entry{len(list(root.iterdir()))}"
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("0\n")
        (entry / "outblob").write_bytes(b"")
        return entry

    def write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        if path.name == "inblob":
            generation = int((path.parent / "generation").read_text()) + 1 + self.extra_writes
            (path.parent / "generation").write_text(f"{generation}\n")
            (path.parent / "outblob").write_bytes(b"FAKE-QUOTE:" + data)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def remove_entry(self, entry: Path) -> None:
        for child in entry.iterdir():
            child.unlink()
        entry.rmdir()
        self.removed.append(entry)
