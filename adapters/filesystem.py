"""A local or mounted folder (network shares included) as an asset library."""

from __future__ import annotations

import errno
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.base import (
    Adapter,
    AssetRef,
    BadAsset,
    Capabilities,
    MetadataMapping,
    NotFound,
    Page,
)

# Extensions listed as images. SVG is listed so that it is reported as
# unsupported rather than silently ignored.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".gif",
        ".bmp", ".dib", ".heic", ".heif", ".avif", ".svg", ".svgz",
    }
)  # fmt: skip


class FilesystemSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_FILESYSTEM_", extra="forbid")
    root: Path
    page_size: int = Field(500, ge=1, le=100_000)
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # A folder has no metadata fields; what it has is a file's `path`, its
    # `folder` (often a place or an event), `name` and `modified` time, and
    # literals for what a whole share has in common (`department = "=..."`).
    metadata: MetadataMapping = MetadataMapping()


class FilesystemCursor(BaseModel):
    after: str  # relative path of the last asset handed out


class Filesystem(Adapter[FilesystemCursor]):
    kind: ClassVar[str] = "filesystem"
    settings_model = FilesystemSettings
    cursor_model = FilesystemCursor
    capabilities = Capabilities(incremental=False, deletions=False)  # every listing is full

    def __init__(self, settings: FilesystemSettings) -> None:
        self.settings = settings
        try:
            self.root = settings.root.resolve()
            is_folder = self.root.is_dir()
        except OSError as exc:
            raise NotFound(f"folder {settings.root} cannot be opened: {exc.strerror}") from exc
        if not is_folder:
            raise NotFound(f"folder {settings.root} does not exist or is not a folder")
        self._listing: list[AssetRef] | None = None

    def _walk(self) -> list[AssetRef]:
        refs: list[AssetRef] = []
        for directory, subdirs, files in os.walk(self.root, onerror=None, followlinks=False):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in files:
                if name.startswith("._"):  # macOS AppleDouble sidecars, never images
                    continue
                path = Path(directory) / name
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS or _worth_a_look(path):
                    refs.append(self._ref(path))
        refs.sort(key=lambda ref: ref.id)
        return refs

    def _ref(self, path: Path) -> AssetRef:
        relative = path.relative_to(self.root).as_posix()
        url = path.as_uri()
        problem: str | None = None
        size: int | None = None
        modified: str | None = None
        version = "unreadable"
        try:
            info = path.stat()  # follows links: a loop or a dangling link fails here
            if not stat.S_ISREG(info.st_mode):
                problem = "not a regular file"
            elif path.is_symlink() and not path.resolve().is_relative_to(self.root):
                problem = "symbolic link points outside the scanned folder; not followed"
            elif info.st_size > self.settings.max_file_bytes:
                problem = (
                    f"file is {info.st_size:,} bytes, over the "
                    f"{self.settings.max_file_bytes:,} byte limit"
                )
            size = info.st_size
            modified = datetime.fromtimestamp(info.st_mtime, UTC).isoformat()
            version = f"{info.st_size}:{info.st_mtime_ns}"
        except OSError as exc:
            problem = _describe(exc, path)
        facts = {
            "path": relative,
            "folder": path.parent.name if path.parent != self.root else "",
            "name": path.name,
            "modified": modified,
        }
        return AssetRef(
            id=relative,
            version=version,
            url=url,
            size_bytes=size,
            modified=modified,
            problem=problem,
            metadata=self.settings.metadata.apply(facts),
        )

    def list_assets(self, cursor: FilesystemCursor | None) -> Page[FilesystemCursor]:
        if self._listing is None:  # closed at the start: one walk serves every page
            self._listing = self._walk()
        listing = self._listing
        start = 0
        if cursor is not None:
            start = _bisect_after(listing, cursor.after)
        items = listing[start : start + self.settings.page_size]
        complete = start + len(items) >= len(listing)
        next_cursor = None if complete or not items else FilesystemCursor(after=items[-1].id)
        return Page(items=items, cursor=next_cursor, complete=complete)

    def describe(self, asset_id: str) -> AssetRef:
        relative = Path(asset_id)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise NotFound(f"{asset_id!r} is not a path inside the folder")
        if any(part.startswith(".") for part in relative.parts[:-1]) or relative.name.startswith(
            "._"
        ):
            raise NotFound(f"{asset_id} is in a hidden folder, which a listing skips")
        path = self.root / relative
        if not path.is_file() or not (
            path.suffix.lower() in IMAGE_EXTENSIONS or _worth_a_look(path)
        ):
            raise NotFound(f"{asset_id} is not an image file in {self.root}")
        return self._ref(path)

    def local_path(self, asset: AssetRef) -> str | None:
        return str(self.root / asset.id)

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        path = self.root / asset.id
        try:
            with path.open("rb") as handle:
                data = handle.read(self.settings.max_file_bytes + 1)
        except FileNotFoundError as exc:
            raise NotFound(f"{asset.id} no longer exists") from exc
        except OSError as exc:
            raise BadAsset(_describe(exc, path)) from exc
        if len(data) > self.settings.max_file_bytes:
            raise BadAsset(f"file is over the {self.settings.max_file_bytes:,} byte limit")
        return data


def _worth_a_look(path: Path) -> bool:
    """A name without an image extension is still listed when it is a broken
    link (reported, not silently skipped) or has no extension and starts like
    an image (camera dumps, files renamed by a sync tool)."""
    if path.is_symlink() and not path.exists():
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return (
        head[:3] == b"\xff\xd8\xff"
        or head[:8] == b"\x89PNG\r\n\x1a\n"
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head[4:8] == b"ftyp"
        or head[:4] in (b"II*\x00", b"MM\x00*")
        or head[:3] == b"GIF"
    )


def _bisect_after(listing: list[AssetRef], after: str) -> int:
    low, high = 0, len(listing)
    while low < high:
        middle = (low + high) // 2
        if listing[middle].id <= after:
            low = middle + 1
        else:
            high = middle
    return low


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return "dangling symbolic link (its target does not exist)"
    if exc.errno == errno.EACCES:
        return "permission denied: the file is not readable by damdup"
    return f"cannot read file: {exc.strerror or exc}"
