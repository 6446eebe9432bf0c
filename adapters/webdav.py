"""A plain WebDAV share (RFC 4918) as an asset library: a folder tree walked
with PROPFIND, the images downloaded with GET, damdup's marks kept as dead
properties set with PROPPATCH.

Docs: RFC 4918 https://www.rfc-editor.org/rfc/rfc4918 (§9.1 PROPFIND and its
Depth header, §9.2 PROPPATCH, §13 multistatus, §15 live properties getetag,
getlastmodified, getcontentlength, getcontenttype, resourcetype; §4.2 dead
properties); tested against the real WsgiDAV server (tests/servers/webdav.py).

- Listing: `PROPFIND Depth: 1` folder by folder, depth first, children sorted
  by path. `Depth: infinity` is not used: servers commonly refuse it
  (RFC 4918 §9.1 lets them; Apache mod_dav does by default) and one answer for
  a whole tree has no page boundary to resume from. The cursor is the list of
  folders still to read and the last file handed out from the first of them,
  so a listing resumes mid-folder by name (a file deleted meanwhile moves no
  boundary) and a saved cursor is plain JSON.
- No incremental listing: WebDAV has no "changed since" query. Every sync is
  a full walk; an unchanged file keeps its `version` (getetag, else
  getlastmodified, and getcontentlength), so nothing is fetched again.
  Deletions show as what a full walk no longer finds.
- No renditions: WebDAV serves files only.
- Marks: three dead properties in damdup's own XML namespace (`NAMESPACE`),
  written with one PROPPATCH, which RFC 4918 §9.2 makes atomic: all of it or
  nothing. Properties of other namespaces are never named, so never changed;
  dead properties are not content, so the file's ETag stays as it was.
  Unlike object-store tags, WebDAV sets no count limit; a server that refuses
  for want of space answers 507, which becomes MarksDoNotFit.
- Answers are XML: capped in size, refused when they declare a DTD (entity
  expansion, "billion laughs") or are not UTF-8, and checked to be a
  multistatus before anything is read from them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import ClassVar
from urllib.parse import quote, unquote, urljoin, urlsplit

import structlog
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from requests.auth import HTTPBasicAuth

from adapters.base import (
    AssetRef,
    Capabilities,
    HttpAdapter,
    Marks,
    MetadataMapping,
    NotFound,
    Page,
    PublicLinkSettings,
    RemoteSettings,
    RequestObserver,
    has_image_extension,
)
from adapters.davxml import DAMDUP_NAMESPACE, DAV_XML, DavMarks, dav_propfind, dav_responses
from adapters.http import HttpClient

__all__ = ["NAMESPACE", "WebDav", "WebDavCursor", "WebDavSettings"]

log = structlog.get_logger(__name__)

# damdup's dead properties live in this namespace, named as Marks.to_fields().
NAMESPACE = DAMDUP_NAMESPACE  # damdup's dead properties (adapters.davxml.DavMarks)
MAX_XML_BYTES = 32 * 1024 * 1024
# Folders read for one page at most: a tree of many empty folders still
# returns a page (and a cursor to save) every so often.
FOLDERS_PER_PAGE = 50
LISTED = ("resourcetype", "getetag", "getlastmodified", "getcontentlength", "getcontenttype")


class WebDavSettings(RemoteSettings, PublicLinkSettings):
    """`base_url` is the folder to walk, e.g. https://dav.example.fi/kuvat/."""

    model_config = SettingsConfigDict(env_prefix="DAMDUP_WEBDAV_", extra="forbid")
    page_size: int = Field(500, ge=1, le=10_000)
    username: str | None = Field(None, description="HTTP Basic user; anonymous when unset")
    password: SecretStr | None = None
    max_depth: int = Field(
        32, ge=1, le=256, description="folders deeper than this are not entered (a link loop?)"
    )
    # A share has no metadata fields; what it has is a file's `path`, its
    # `folder`, `name` and `modified` time, and literals for the whole share.
    metadata: MetadataMapping = MetadataMapping()

    @model_validator(mode="after")
    def _both_or_neither(self) -> WebDavSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class WebDavCursor(BaseModel):
    # Folders still to read, relative to base_url and ending in "/" ("" is
    # base_url itself); the first is the one being read.
    folders: list[str]
    after: str | None = None  # the last file handed out from folders[0]


@dataclass(frozen=True)
class _Entry:
    path: str  # relative to base_url, unquoted; folders end in "/"
    folder: bool
    etag: str | None = None
    modified: str | None = None  # ISO 8601
    size: int | None = None
    content_type: str | None = None


class WebDav(HttpAdapter[WebDavCursor]):
    kind: ClassVar[str] = "webdav"
    settings_model = WebDavSettings
    cursor_model = WebDavCursor
    capabilities = Capabilities(annotate=True, describe=True, exists=True, fetch_url=True)
    http: HttpClient

    def __init__(self, settings: WebDavSettings, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer)
        password = settings.password.get_secret_value() if settings.password else None
        auth = None
        if settings.username is not None and password is not None:
            # Bytes, so that requests sends them as UTF-8 rather than Latin-1.
            auth = HTTPBasicAuth(settings.username.encode(), password.encode())
        self.http = HttpClient.for_settings(
            settings, auth=auth, secrets=[password], kind=self.kind, observer=observer
        )
        self.marks = DavMarks(self.http, MAX_XML_BYTES)
        self.base_url = self.http.base_url
        self.base_path = unquote(urlsplit(self.base_url).path)

    # -- listing -----------------------------------------------------------

    def list_assets(self, cursor: WebDavCursor | None) -> Page[WebDavCursor]:
        folders = list(cursor.folders) if cursor else [""]
        after = cursor.after if cursor else None
        items: list[AssetRef] = []
        for _ in range(FOLDERS_PER_PAGE):
            if not folders or len(items) >= self.settings.page_size:
                break
            entries = self._children(folders[0])
            files = [
                entry
                for entry in entries
                if not entry.folder
                and (after is None or entry.path > after)
                and _is_image(entry.path, entry.content_type)
            ]
            room = self.settings.page_size - len(items)
            taken = files[:room]
            items.extend(self._ref(entry) for entry in taken)
            if len(files) > room:  # the folder goes on in the next page
                return Page(items, WebDavCursor(folders=folders, after=taken[-1].path), False)
            subfolders = [e.path for e in entries if e.folder and self._within_depth(e.path)]
            folders = subfolders + folders[1:]  # depth first: the queue stays short
            after = None
        if not folders:
            return Page(items=items, cursor=None, complete=True)
        return Page(items, WebDavCursor(folders=folders, after=after), False)

    def _within_depth(self, path: str) -> bool:
        if path.count("/") <= self.settings.max_depth:
            return True
        log.warning("webdav.folder_skipped", folder=path, max_depth=self.settings.max_depth)
        return False

    def _children(self, folder: str) -> list[_Entry]:
        """The folder's files and subfolders, sorted by path, itself left out."""
        responses = self._propfind(folder, "1", [f"{{DAV:}}{name}" for name in LISTED])
        entries = []
        for href, props in responses:
            path = self._relative(href)
            if path is None or path.rstrip("/") == folder.rstrip("/"):
                continue  # the folder itself, or an address outside base_url
            if not path.startswith(folder):
                continue
            entries.append(_entry(path, props))
        return sorted(entries, key=lambda entry: entry.path)

    def _relative(self, href: str) -> str | None:
        path = unquote(urlsplit(urljoin(self.base_url, href)).path)
        if not path.startswith(self.base_path):
            return None
        return path[len(self.base_path) :]

    def _ref(self, entry: _Entry) -> AssetRef:
        url = self._url(entry.path)
        name = entry.path.rsplit("/", 1)[-1]
        parent = entry.path[: -len(name)].rstrip("/")
        facts = {
            "path": entry.path,
            "folder": parent.rsplit("/", 1)[-1],
            "name": name,
            "modified": entry.modified,
        }
        return AssetRef(
            id=entry.path,
            # The ETag changes with the bytes and never with dead properties.
            version=f"{entry.etag or entry.modified}:{entry.size}",
            url=url,
            size_bytes=entry.size,
            modified=entry.modified,
            original_url=url,
            metadata=self.settings.metadata.apply(facts),
        )

    def _url(self, path: str) -> str:
        return urljoin(self.base_url, quote(path))

    # -- one file ----------------------------------------------------------

    def describe(self, asset_id: str) -> AssetRef:
        """PROPFIND Depth 0 on the file for the properties a listing reads
        (RFC 4918 §9.1), mapped as a listing maps them."""
        parts = asset_id.split("/")
        if not asset_id or asset_id.endswith("/") or asset_id.startswith("/") or ".." in parts:
            raise NotFound(f"{asset_id!r} is not a file's path under {self.base_url}")
        if asset_id.count("/") > self.settings.max_depth:
            raise NotFound(f"{asset_id} is deeper than the unit's max_depth, which a walk skips")
        responses = self._propfind(asset_id, "0", [f"{{DAV:}}{name}" for name in LISTED])
        for href, props in responses:
            if self._relative(href) == asset_id:
                entry = _entry(asset_id, props)
                if entry.folder or not _is_image(entry.path, entry.content_type):
                    raise NotFound(f"{asset_id} is not an image file")
                return self._ref(entry)
        raise NotFound(f"PROPFIND {asset_id} answered without the file itself")

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        return self.http.get_bytes(asset.original_url or self._url(asset.id))

    def probe(self, asset: AssetRef) -> None:
        self._propfind(asset.id, "0", ["{DAV:}getetag"])

    # -- marks -------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        return self.marks.read(self._url(asset.id), asset.id)

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        return self.marks.write(self._url(asset.id), marks, asset.id)

    # -- protocol ----------------------------------------------------------

    def _propfind(
        self, path: str, depth: str, props: list[str]
    ) -> list[tuple[str, dict[str, ET.Element]]]:
        reply = self.http.request(
            "PROPFIND",
            self._url(path),
            data=dav_propfind(props),
            headers={**DAV_XML, "Depth": depth},
            expect="any",
            max_bytes=MAX_XML_BYTES,
        )
        return dav_responses(reply)


def _entry(path: str, props: dict[str, ET.Element]) -> _Entry:
    def text(name: str) -> str | None:
        element = props.get(f"{{DAV:}}{name}")
        return element.text.strip() if element is not None and element.text else None

    kind = props.get("{DAV:}resourcetype")
    folder = kind is not None and kind.find("{DAV:}collection") is not None
    size = text("getcontentlength")
    return _Entry(
        path=path if not folder or path.endswith("/") else path + "/",
        folder=folder,
        etag=text("getetag"),
        modified=_iso(text("getlastmodified")),
        size=int(size) if size and size.isdigit() else None,
        content_type=text("getcontenttype"),
    )


def _iso(http_date: str | None) -> str | None:
    if not http_date:
        return None
    try:
        return parsedate_to_datetime(http_date).isoformat()
    except (TypeError, ValueError):
        return None


def _is_image(name: str, content_type: str | None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower().startswith("image/"):
        return True
    return has_image_extension(name)
