"""A local or mounted folder (network shares included) as an asset library."""

from __future__ import annotations

import errno
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from adapters.base import (
    IMAGE_EXTENSIONS,
    Adapter,
    AssetRef,
    BadAsset,
    Capabilities,
    MetadataMapping,
    NotFound,
    Page,
    PublicLinkSettings,
    RequestObserver,
    Unavailable,
    reason,
)


class FilesystemSettings(PublicLinkSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_FILESYSTEM_", extra="forbid")
    root: Path
    page_size: int = Field(500, ge=1, le=100_000)
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # A folder has no metadata fields; what it has is a file's `path`, its
    # `folder` (often a place or an event), `name` and `modified` time, and
    # literals for what a whole share has in common (`department = "=..."`).
    metadata: MetadataMapping = MetadataMapping()
    # How editors reach `root` from their own machines, when not over the web
    # (public_base_url): a Windows share (\\fileserver\kuvat) or a mount point.
    share_path: str | None = Field(
        None, description="the folder as editors' machines reach it, e.g. \\\\fileserver\\kuvat"
    )

    @field_validator("share_path")
    @classmethod
    def _share(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value or any(ord(char) < 32 for char in value):
            raise ValueError("give the share's path, e.g. \\\\fileserver\\kuvat")
        if "://" in value:
            raise ValueError("a web address goes in public_base_url; share_path is a path")
        if not (value.startswith(("\\\\", "/")) or re.match(r"^[A-Za-z]:\\", value)):
            raise ValueError(
                "share_path is a UNC path (\\\\server\\share), a drive path (K:\\kuvat) "
                "or a mount point (/Volumes/kuvat)"
            )
        return value

    @model_validator(mode="after")
    def _one_link(self) -> FilesystemSettings:
        if self.public_base_url is not None and self.share_path is not None:
            raise ValueError("give public_base_url or share_path, not both")
        return self


class FilesystemCursor(BaseModel):
    after: str  # relative path of the last asset handed out


class Filesystem(Adapter[FilesystemCursor]):
    kind: ClassVar[str] = "filesystem"
    settings_model = FilesystemSettings
    cursor_model = FilesystemCursor
    # Every listing is full: no incremental listing, no deletions reported.
    capabilities = Capabilities(describe=True, exists=True, fetch_url=True, local_path=True)

    def __init__(
        self, settings: FilesystemSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        try:
            self.root = settings.root.resolve()
            is_folder = self.root.is_dir()
        except OSError as exc:
            raise NotFound(f"folder {settings.root} cannot be opened: {exc.strerror}") from exc
        if not is_folder:
            raise NotFound(f"folder {settings.root} does not exist or is not a folder")
        self._listing: list[AssetRef] | None = None
        self._unlisted: list[str] = []

    def _walk(self) -> tuple[list[AssetRef], list[str]]:
        """Every asset under the root, and the folders that could not be
        read (their relative paths): each of those is an asset with a
        problem too, so that it is a recorded error."""
        refs: list[AssetRef] = []
        unlisted: list[str] = []

        def refused(exc: OSError) -> None:
            if exc.filename is None:  # which folder failed is not known: nothing is sure
                raise Unavailable(f"a folder under {self.root} cannot be read: {reason(exc)}")
            folder = Path(os.fsdecode(exc.filename))
            if folder == self.root:
                raise Unavailable(f"folder {self.root} cannot be read: {_describe_folder(exc)}")
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return  # removed (or replaced by a file) since its parent was read: gone
            relative = folder.relative_to(self.root).as_posix()
            unlisted.append(relative)
            refs.append(
                AssetRef(
                    id=asset_id_of(relative) + "/",  # no file's id ends in "/"
                    version="unlisted",
                    url=folder.as_uri(),
                    problem=(
                        f"folder cannot be read ({_describe_folder(exc)}): its files were not "
                        "listed; those already in the index are kept as they were"
                    ),
                )
            )

        for directory, subdirs, files in os.walk(self.root, onerror=refused, followlinks=False):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in files:
                if name.startswith("._"):  # macOS AppleDouble sidecars, never images
                    continue
                path = Path(directory) / name
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS or _worth_a_look(path):
                    refs.append(self._ref(path))  # no two paths share an id: asset_id_of
        return sorted(refs, key=lambda ref: ref.id), unlisted

    def _ref(self, path: Path) -> AssetRef:
        relative = asset_id_of(path.relative_to(self.root).as_posix())
        url = path.as_uri()  # percent-encodes the name's bytes, whatever they are
        problem: str | None = None
        size: int | None = None
        modified: str | None = None
        version = "unreadable"
        try:
            info = path.stat()  # follows links: a loop or a dangling link fails here
            if not stat.S_ISREG(info.st_mode):
                problem = "not a regular file"
            elif not self._inside(path):
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
            "folder": asset_id_of(path.parent.name) if path.parent != self.root else "",
            "name": asset_id_of(path.name),
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
            self._listing, self._unlisted = self._walk()
        listing = self._listing
        start = 0
        if cursor is not None:
            start = _bisect_after(listing, cursor.after)
        items = listing[start : start + self.settings.page_size]
        complete = start + len(items) >= len(listing)
        next_cursor = None if complete or not items else FilesystemCursor(after=items[-1].id)
        # The folders not read go with the last page: a full listing keeps
        # what the index holds under them.
        unlisted = list(self._unlisted) if complete else []
        return Page(items=items, cursor=next_cursor, complete=complete, unlisted=unlisted)

    def _inside(self, path: Path) -> bool:
        return Path(os.path.realpath(path)).is_relative_to(self.root)

    def _locate(self, asset_id: str) -> Path:
        """The file an id names, only where a listing could have found it:
        under the root, reached through no linked folder (a listing never
        follows one), its real path inside the root. NotFound otherwise."""
        escaped = _is_text(asset_id) and _is_escaped(asset_id)
        name = path_of_id(asset_id) if escaped else asset_id
        relative = PurePosixPath(name)
        if (
            not name
            or "\0" in name
            or relative.is_absolute()
            or ".." in relative.parts
            or not relative.parts
            or asset_id_of(name) != asset_id  # no listing gives this id (`\x41` for "A")
        ):
            raise NotFound(f"{asset_id!r} is not a path inside the folder")
        path = self.root.joinpath(*relative.parts)
        if Path(os.path.realpath(path.parent)) != path.parent:
            raise NotFound(
                f"{asset_id!r} is reached through a symbolic link to a folder, "
                "which a listing does not follow"
            )
        if not self._inside(path):
            raise NotFound(
                f"{asset_id!r} is a symbolic link to {os.path.realpath(path)}, "
                f"outside the folder {self.root}; not followed"
            )
        return path

    def describe(self, asset_id: str) -> AssetRef:
        path = self._locate(asset_id)
        relative = path.relative_to(self.root)
        if any(part.startswith(".") for part in relative.parts[:-1]) or relative.name.startswith(
            "._"
        ):
            raise NotFound(f"{asset_id!r} is in a hidden folder, which a listing skips")
        try:
            image = path.is_file() and (
                path.suffix.lower() in IMAGE_EXTENSIONS or _worth_a_look(path)
            )
        except OSError as exc:  # a folder on the way cannot be read: no answer
            raise BadAsset(_describe(exc, path)) from exc
        if not image:
            raise NotFound(f"{asset_id!r} is not an image file in {self.root}")
        return self._ref(path)

    def exists(self, asset: AssetRef) -> bool:
        self._locate(asset.id)  # NotFound for a path that leads out of the root
        try:
            self.describe(asset.id)
        except NotFound:  # gone, or no longer where a listing looks
            return False
        return True

    def link(self, asset: AssetRef) -> str | None:
        # Never the file:// address: it names a file on the damdup host, which
        # no editor's machine can open.
        share: str | None = self.settings.share_path
        if share is not None:
            separator = "\\" if "\\" in share else "/"
            return share.rstrip("\\/") + separator + asset.id.replace("/", separator)
        if self.settings.public_base_url is not None:
            return super().link(asset)
        return None

    def relative_path(self, asset: AssetRef) -> str:
        return path_of_id(asset.id) if _is_escaped(asset.id) else asset.id

    def local_path(self, asset: AssetRef) -> str:
        # The real path: a link swapped in after this check is not followed out.
        return os.path.realpath(self._locate(asset.id))

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        return self._read(self._locate(asset.id), asset.id)

    def fetch_url(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query:
            raise BadAsset(f"{url} is not a file address")
        path = Path(unquote(parts.path, errors="surrogateescape"))
        if not path.is_relative_to(self.root):
            raise BadAsset(f"{url} is not in the folder {self.root}")
        asset_id = asset_id_of(path.relative_to(self.root).as_posix())
        return self._read(self._locate(asset_id), asset_id)

    def _read(self, path: Path, asset_id: str) -> bytes:
        try:
            with path.open("rb") as handle:
                # The file opened, not its name, must be inside the root: a
                # link swapped in after _locate's check is caught here.
                opened = f"/proc/self/fd/{handle.fileno()}"
                if os.path.exists(opened) and not Path(os.readlink(opened)).is_relative_to(
                    self.root
                ):
                    raise NotFound(f"{asset_id!r} now leads outside the folder {self.root}")
                data = handle.read(self.settings.max_file_bytes + 1)
        except FileNotFoundError as exc:
            raise NotFound(f"{asset_id!r} no longer exists") from exc
        except OSError as exc:
            raise BadAsset(_describe(exc, path)) from exc
        if len(data) > self.settings.max_file_bytes:
            raise BadAsset(f"file is over the {self.settings.max_file_bytes:,} byte limit")
        return data


# A name that is not valid UTF-8 (any byte string but "/" and NUL is a valid
# Linux file name) gets a readable id: each byte that is not UTF-8 as \xNN,
# and "\" as "\\", so that the id leads back to the name. So does a UTF-8
# name that holds such an escape itself (`caf\xe9.jpg` typed with a
# backslash): its id is `caf\\xe9.jpg`, never the other file's. An escaped id
# always holds an escape and no other id does, so no two paths share an id.
# Every other id (every name without a backslash) is the path itself.
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|\\)")


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode kept undecodable bytes as surrogates
        return False
    return True


def _is_escaped(asset_id: str) -> bool:
    return _ESCAPE.search(asset_id) is not None


def asset_id_of(relative: str) -> str:
    """The id of a relative path as os.fsdecode gives it."""
    if _is_text(relative) and not _is_escaped(relative):
        return relative
    raw = relative.encode("utf-8", "surrogateescape")
    out: list[str] = []
    position = 0
    while position < len(raw):
        try:
            text = raw[position:].decode("utf-8")
        except UnicodeDecodeError as exc:
            text = raw[position : position + exc.start].decode("utf-8")
            out.append(text.replace("\\", "\\\\"))
            out.append(f"\\x{raw[position + exc.start]:02x}")
            position += exc.start + 1
            continue
        out.append(text.replace("\\", "\\\\"))
        break
    return "".join(out)


def path_of_id(asset_id: str) -> str:
    """The relative path (as os.fsdecode gives it) of an id asset_id_of
    escaped (`_is_escaped`)."""
    raw = asset_id.encode("utf-8")
    unescaped = re.sub(
        rb"\\(x([0-9a-f]{2})|\\)",
        lambda m: bytes([int(m[2], 16)]) if m[2] else b"\\",
        raw,
    )
    return os.fsdecode(unescaped)


def _worth_a_look(path: Path) -> bool:
    """A name without an image extension is still listed when it is a broken
    link (reported, not silently skipped) or has no extension and starts like
    an image (camera dumps, files renamed by a sync tool)."""
    try:
        if path.is_symlink() and not path.exists():
            return True
    except OSError:  # its folder can be listed but not entered: as a file not opened
        return False
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


def _describe_folder(exc: OSError) -> str:
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or reason(exc)


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return "dangling symbolic link (its target does not exist)"
    if exc.errno == errno.EACCES:
        return "permission denied: the file is not readable by damdup"
    return f"cannot read file: {exc.strerror or exc}"
