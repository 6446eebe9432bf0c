"""A Nextcloud account's files as an asset library: images found with WebDAV
SEARCH, fetched as Nextcloud's aspect-preserving previews where one is large
enough, damdup's marks kept as WebDAV dead properties.

Docs: WebDAV https://docs.nextcloud.com/server/latest/developer_manual/client_apis/WebDAV/basic.html,
SEARCH https://docs.nextcloud.com/server/latest/developer_manual/client_apis/WebDAV/search.html
(RFC 5323 basicsearch); server source nextcloud/server `apps/dav/lib/Files/FileSearchBackend.php`
(the searchable and sortable properties; no `nresults` means 100 results),
icewind1991/SearchDAV `src/XML/Limit.php` (`<d:nresults>` and the offset
`firstresult` in its own namespace), `core/Controller/PreviewController.php`
and `lib/private/Preview/Generator.php` (preview sizes),
`apps/dav/lib/DAV/CustomPropertiesBackend.php` (dead properties) and
`apps/dav/lib/SystemTag/SystemTagPlugin.php` (system tags). Needs Nextcloud 28+
for image sizes (`nc:metadata-photos-size`, from the Photos app).

- Listing: `SEARCH` on `remote.php/dav/` scoped to `files/<user>/<folder>`,
  `getcontenttype like image/%`, ordered by `getlastmodified` (`oc:fileid`
  is searchable but not sortable). Pages are keyed on the modification time,
  not on an offset that moves when a file before it is deleted: each page asks
  for files modified at or after the last one handed out, as many more as
  were already handed out at that second, and skips those; SQL orders ties any
  way it likes, and this still leaves none out. An edited file moves to the
  end and is listed again.
- Incremental listing: files whose `getlastmodified` or `nc:upload_time` is
  at or after a watermark. The upload time matters: the desktop client keeps
  a file's own mtime (X-OC-MTime), so a photo taken in 2019 and uploaded today
  has a 2019 `getlastmodified`. The watermark is the newest of both on the
  server when the listing starts (two one-result searches), never later than
  the server's clock (its Date header: a file with a future mtime is listed
  again each time rather than hiding every later change). Files seen at the
  watermark's very second are skipped next time (adapters.watermark, shared
  with Drupal).
- Deletions are not reported: SEARCH has no tombstones (the trash bin is
  per user and emptied), so `deletions=False`; a full listing notices them.
- Renditions: `index.php/core/preview?fileId&x&y&a=1&mode=fill&forceIcon=0`.
  `a=1` keeps the aspect ratio; without it (the default is 0) Nextcloud crops
  to x by y, and such a crop is never used. Nextcloud snaps a requested size
  to a power of four on the long side and never upscales past the original,
  so square boxes of 256 and 1024 give previews whose long side is exactly
  that and whose short side follows from the original's aspect.
- Marks: three dead properties in damdup's namespace, written with one
  PROPPATCH (atomic, RFC 4918 §9.2) and kept by Nextcloud per user in
  `oc_properties`. System tags are not used: taking a tag off a file is an
  HTTP DELETE of its relation (`systemtags-relations/files/<id>/<tag>`), and
  the only other way, a PROPPATCH of the tag's `nc:object-ids` (NC 31+),
  rewrites the tag's whole file list, dropping assignments other people make
  meanwhile. Dead properties change neither the file's ETag nor anyone's tags.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit
from xml.sax.saxutils import escape

from PIL import Image
from pydantic import Field, SecretStr
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
    RemoteSettings,
    Rendition,
    RequestObserver,
    Unavailable,
    choose_rendition,
)
from adapters.davxml import DAMDUP_NAMESPACE, DAV_XML, DavMarks, dav_propfind, dav_responses
from adapters.http import HttpClient, Reply
from adapters.watermark import WatermarkCursor, WatermarkPaginator

__all__ = ["NAMESPACE", "Nextcloud", "NextcloudCursor", "NextcloudPaginator", "NextcloudSettings"]

NAMESPACE = DAMDUP_NAMESPACE  # damdup's dead properties (adapters.davxml.DavMarks)
IMAGES = "<d:like><d:prop><d:getcontenttype/></d:prop><d:literal>image/%</d:literal></d:like>"
OC, NC = "http://owncloud.org/ns", "http://nextcloud.org/ns"
MAX_XML_BYTES = 32 * 1024 * 1024
HTTP_DATE = re.compile(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT")
PREVIEW_SIDES = (256, 1024)  # long sides Nextcloud serves exactly (powers of four)
SELECT = (
    "{DAV:}getetag", "{DAV:}getlastmodified", "{DAV:}getcontentlength",
    "{DAV:}getcontenttype", f"{{{OC}}}fileid", f"{{{OC}}}owner-display-name",
    f"{{{NC}}}has-preview", f"{{{NC}}}upload_time", f"{{{NC}}}metadata-photos-size",
    f"{{{NC}}}metadata-photos-original_date_time", f"{{{NC}}}metadata-photos-place",
)  # fmt: skip


class NextcloudSettings(RemoteSettings):
    """`base_url` is the server's root, where `remote.php` and `index.php` are."""

    model_config = SettingsConfigDict(env_prefix="DAMDUP_NEXTCLOUD_", extra="forbid")
    page_size: int = Field(200, ge=1, le=1000)
    username: str = Field(description="login name of the account damdup reads with")
    app_password: SecretStr = Field(description="an app password (Settings → Security)")
    user_id: str | None = Field(
        None, description="the account's user id in DAV paths, when not the login name"
    )
    folder: str = Field("", description="the folder to scan inside the account's files")
    previews: bool = Field(True, description="fetch previews (a=1) instead of originals")
    # `place` (Photos' reverse geocoding), `taken` (EXIF date, as Nextcloud
    # stores it), `owner` (display name), `path`, `folder`, `name`, `modified`.
    metadata: MetadataMapping = MetadataMapping(location="place", date="taken")


class NextcloudCursor(WatermarkCursor):
    """A position in a listing: the watermark on the newer of a file's
    modification and upload times (adapters.watermark), and the last
    modification time handed out."""

    after_mtime: int | None = None  # the mtime of the last file handed out
    seen: frozenset[str] = frozenset()  # handed out at exactly `after_mtime`


class NextcloudPaginator(WatermarkPaginator[NextcloudCursor]):
    """Keyset paging on the modification time within the watermark's range
    (module docstring), as singer_sdk's paginators: it writes the search's
    conditions and limit from its cursor and reads an answer into the next
    cursor. SQL orders files of one second any way it likes, so a page asks
    for as many more as were handed out at the last second, and skips those."""

    def __init__(self, cursor: NextcloudCursor | None, page_size: int) -> None:
        super().__init__(cursor or NextcloudCursor())
        self.limit = page_size + len(self.cursor.seen)

    def conditions(self) -> list[str]:
        cursor = self.cursor
        conditions = [IMAGES]
        if cursor.since:
            conditions.append(
                "<d:or>" + _compare("gte", "d:getlastmodified", cursor.since)
                + _compare("gte", "nc:upload_time", cursor.since) + "</d:or>"
            )  # fmt: skip
        if cursor.after_mtime is not None:
            conditions.append(_compare("gte", "d:getlastmodified", cursor.after_mtime))
        return conditions

    def advance(
        self, found: list[tuple[str, dict[str, ET.Element]]]
    ) -> list[tuple[str, dict[str, ET.Element]]]:
        """The files to hand out; moves the cursor past the answer."""
        cursor = self.cursor
        fresh = []
        after, seen = cursor.after_mtime, set(cursor.seen)
        for href, props in found:
            file_id, mtime = _text(props, f"{{{OC}}}fileid"), _mtime(props)
            if not file_id or mtime is None:
                raise Unavailable("a SEARCH answer lacks oc:fileid or getlastmodified")
            if mtime == cursor.after_mtime and file_id in cursor.seen:
                continue  # handed out by an earlier page
            seen = seen | {file_id} if mtime == after else {file_id}
            after = mtime
            changed = max(mtime, _int(props, f"{{{NC}}}upload_time") or 0)
            if self.admit(file_id, changed):
                fresh.append((href, props))
        if len(found) < self.limit:
            self.finish()
        else:
            self.follow(after_mtime=after, seen=frozenset(seen))
        return fresh


class Nextcloud(HttpAdapter[NextcloudCursor]):
    kind: ClassVar[str] = "nextcloud"
    settings_model = NextcloudSettings
    cursor_model = NextcloudCursor
    capabilities = Capabilities(
        incremental=True, renditions=True, annotate=True, describe=True, exists=True, fetch_url=True
    )
    http: HttpClient

    def __init__(
        self, settings: NextcloudSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        password = settings.app_password.get_secret_value()
        auth = HTTPBasicAuth(settings.username.encode(), password.encode())  # UTF-8
        self.http = HttpClient.for_settings(
            settings, auth=auth, secrets=[password], kind=self.kind, observer=observer
        )
        self.marks = DavMarks(self.http, MAX_XML_BYTES)
        user = settings.user_id or settings.username
        self.scope = "/files/" + quote(user) + "/" + quote(settings.folder.strip("/"))
        self.files_url = urljoin(self.http.base_url, "remote.php/dav/files/" + quote(user) + "/")

    # -- listing -----------------------------------------------------------

    def list_assets(self, cursor: NextcloudCursor | None) -> Page[NextcloudCursor]:
        paginator = NextcloudPaginator(cursor, self.settings.page_size)
        if paginator.starting:
            paginator.start(self._newest_change())
        found, _ = self._search(
            paginator.conditions(), "d:getlastmodified", "ascending", paginator.limit
        )
        items = [self._ref(href, props) for href, props in paginator.advance(found)]
        return Page(items=items, cursor=paginator.cursor, complete=paginator.finished)

    def _newest_change(self) -> int:
        """The newest modification or upload time of an image in scope, no
        later than the server's own clock."""
        newest, now = 0, None
        for prop in ("d:getlastmodified", "nc:upload_time"):
            found, now = self._search([IMAGES], prop, "descending", 1)
            for _href, props in found:
                newest = max(newest, _mtime(props) or 0, _int(props, f"{{{NC}}}upload_time") or 0)
        return min(newest, now) if now is not None else newest

    def _search(
        self, conditions: list[str], order: str, direction: str, limit: int
    ) -> tuple[list[tuple[str, dict[str, ET.Element]]], int | None]:
        """The files a basicsearch finds, and the server's clock."""
        select = "".join(_empty(name) for name in SELECT)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<d:searchrequest xmlns:d="DAV:" xmlns:oc="{OC}" xmlns:nc="{NC}">'
            f"<d:basicsearch><d:select><d:prop>{select}</d:prop></d:select>"
            f"<d:from><d:scope><d:href>{escape(self.scope)}</d:href>"
            "<d:depth>infinity</d:depth></d:scope></d:from>"
            f"<d:where><d:and>{''.join(conditions)}</d:and></d:where>"
            f"<d:orderby><d:order><d:prop><{order}/></d:prop><d:{direction}/></d:order></d:orderby>"
            f"<d:limit><d:nresults>{limit}</d:nresults></d:limit>"
            "</d:basicsearch></d:searchrequest>"
        )  # fmt: skip
        reply = self._dav("SEARCH", "remote.php/dav/", body)
        return dav_responses(reply), _server_time(reply)

    def _ref(self, href: str, props: dict[str, ET.Element]) -> AssetRef:
        file_id = _text(props, f"{{{OC}}}fileid") or ""
        path = unquote(urlsplit(urljoin(self.files_url, href)).path)
        relative = path.split("/remote.php/dav/files/", 1)[-1].partition("/")[2]
        name = relative.rsplit("/", 1)[-1]
        parent = relative[: -len(name)].rstrip("/")
        size = _int(props, "{DAV:}getcontentlength")
        mtime = _mtime(props)
        modified = _iso(mtime)
        width, height = _photo_size(props.get(f"{{{NC}}}metadata-photos-size"))
        taken = _int(props, f"{{{NC}}}metadata-photos-original_date_time")
        facts = {
            "path": relative,
            "folder": parent.rsplit("/", 1)[-1],
            "name": name,
            "modified": modified,
            # Nextcloud stores the EXIF local time as if it were UTC.
            "taken": _iso(taken, local=True) if taken else None,
            "place": _text(props, f"{{{NC}}}metadata-photos-place"),
            "owner": _text(props, f"{{{OC}}}owner-display-name"),
        }
        previews = self.settings.previews and _text(props, f"{{{NC}}}has-preview") == "true"
        return AssetRef(
            id=file_id,
            # The ETag moves with the content; dead properties leave it alone.
            version=f"{_text(props, '{DAV:}getetag')}:{size}",
            url=urljoin(self.http.base_url, f"index.php/f/{file_id}"),
            size_bytes=size,
            modified=modified,
            metadata=self.settings.metadata.apply(facts),
            original_url=urljoin(self.http.base_url, quote(path)),
            width=width,
            height=height,
            renditions=self._previews(file_id, width, height) if previews else (),
        )

    def _previews(
        self, file_id: str, width: int | None, height: int | None
    ) -> tuple[Rendition, ...]:
        if not width or not height:
            return ()
        long_side, short_side = max(width, height), min(width, height)
        found = []
        for side in PREVIEW_SIDES:
            if side >= long_side:
                break  # Nextcloud never upscales: it would send the original's size
            query = urlencode(
                {"fileId": file_id, "x": side, "y": side, "a": 1, "mode": "fill", "forceIcon": 0}
            )
            short = int(short_side * side / long_side + 0.5)  # PHP rounds halves up
            size = (side, short) if width >= height else (short, side)
            found.append(Rendition(f"{self.http.base_url}index.php/core/preview?{query}", *size))
        return tuple(found)

    # -- one file ----------------------------------------------------------

    def describe(self, asset_id: str) -> AssetRef:
        """The listing's own SEARCH (same scope, same properties, images
        only) narrowed to `oc:fileid` = the id: an id is not a path, so a
        PROPFIND would first need the path, and a file moved out of the
        folder must be NotFound. `oc:fileid` is searchable, not sortable
        (the Search page's table of properties)."""
        if not asset_id.isdigit():
            raise NotFound(f"Nextcloud file ids are numbers, not {asset_id!r}")
        wanted = f"<d:eq><d:prop><oc:fileid/></d:prop><d:literal>{asset_id}</d:literal></d:eq>"
        found, _ = self._search([IMAGES, wanted], "d:getlastmodified", "ascending", 2)
        for href, props in found:
            if _text(props, f"{{{OC}}}fileid") == asset_id:
                return self._ref(href, props)
        raise NotFound(f"Nextcloud has no image {asset_id} in {self.scope}")

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        preview = choose_rendition(asset, min_side)
        if preview:
            try:
                data = self.http.get_bytes(preview)
            except NotFound:
                data = b""  # no preview could be made (its provider is turned off)
            # A server whose preview_max_x/y is below the box sends less than
            # was asked for: then only the original will do.
            if data and _short_side(data) >= min_side:
                return data
        return self.http.get_bytes(self._path(asset))

    def probe(self, asset: AssetRef) -> None:
        self._propfind(asset, ["{DAV:}getetag"])

    # -- marks -------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        return self.marks.read(self._path(asset), asset.id)

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        return self.marks.write(self._path(asset), marks, asset.id)

    def _path(self, asset: AssetRef) -> str:
        if not asset.original_url:
            raise NotFound(f"{asset.id}: no WebDAV address")
        return asset.original_url

    def _propfind(self, asset: AssetRef, names: list[str]) -> dict[str, ET.Element]:
        answers = dav_responses(
            self._dav("PROPFIND", self._path(asset), dav_propfind(names), depth="0")
        )
        if not answers:
            raise Unavailable(f"{asset.id}: PROPFIND answered no response")
        return answers[0][1]

    def _dav(self, method: str, url: str, body: str | bytes, depth: str | None = None) -> Reply:
        headers = dict(DAV_XML)
        if depth is not None:
            headers["Depth"] = depth
        return self.http.request(
            method,
            url,
            data=body.encode() if isinstance(body, str) else body,
            headers=headers,
            expect="any",
            max_bytes=MAX_XML_BYTES,
        )


# -- XML ---------------------------------------------------------------------


def _compare(operator: str, prop: str, seconds: int) -> str:
    moment = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")  # ATOM
    return f"<d:{operator}><d:prop><{prop}/></d:prop><d:literal>{moment}</d:literal></d:{operator}>"


def _empty(clark: str) -> str:
    namespace, _, local = clark[1:].partition("}")
    return f'<x:{local} xmlns:x="{escape(namespace)}"/>'


def _text(props: dict[str, ET.Element], name: str) -> str | None:
    element = props.get(name)
    text = element.text.strip() if element is not None and element.text else ""
    return text or None


def _int(props: dict[str, ET.Element], name: str) -> int | None:
    text = _text(props, name)
    return int(text) if text and text.lstrip("-").isdigit() else None


def _mtime(props: dict[str, ET.Element]) -> int | None:
    text = _text(props, "{DAV:}getlastmodified")
    try:
        return int(parsedate_to_datetime(text).timestamp()) if text else None
    except (TypeError, ValueError):
        return None


def _server_time(reply: Reply) -> int | None:
    """The server's clock from its Date header; the earliest, should a proxy
    on the way have added its own."""
    moments = []
    for text in HTTP_DATE.findall(reply.headers.get("Date", "")):
        try:
            moments.append(int(parsedate_to_datetime(text).timestamp()))
        except (TypeError, ValueError):
            continue
    return min(moments, default=None)


def _iso(seconds: int | None, local: bool = False) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") if local else moment.isoformat()


def _short_side(data: bytes) -> int:
    """The short side from an image's header (no pixels decoded); 0 when it
    cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return min(image.size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0


def _photo_size(element: ET.Element | None) -> tuple[int | None, int | None]:
    """`<nc:metadata-photos-size><width>…</width><height>…</height>`; the
    children carry no namespace, so they are matched by local name."""
    if element is None:
        return None, None
    values: dict[str, Any] = {child.tag.rsplit("}", 1)[-1]: child.text for child in element}
    width, height = str(values.get("width") or ""), str(values.get("height") or "")
    if width.isdigit() and height.isdigit() and int(width) and int(height):
        return int(width), int(height)
    return None, None
