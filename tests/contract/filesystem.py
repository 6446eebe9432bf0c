"""The folder adapter under the contract: a temporary folder, no HTTP."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapters.base import Adapter
from adapters.filesystem import Filesystem, FilesystemSettings
from tests.contract.harness import Harness


class FilesystemHarness(Harness):
    kind = "filesystem"
    metadata = False  # a folder has no location, date or department fields

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="damdup-contract-fs-"))

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"root": str(self.root), **overrides}

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return Filesystem(FilesystemSettings(**self.settings(**overrides)))

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        (self.root / name).write_bytes(data)
        return name

    def touch(self, asset_id: str) -> None:
        path = self.root / asset_id
        info = path.stat()
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))

    def remove(self, asset_id: str) -> None:
        (self.root / asset_id).unlink()

    def reset(self) -> None:
        shutil.rmtree(self.root)
        self.root.mkdir()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
