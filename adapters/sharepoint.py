"""SharePoint document libraries (and OneDrive for Business drives) through
Microsoft Graph v1.0, signed in as an app registration with the client
credentials grant.

Docs: https://learn.microsoft.com/en-us/graph/api/driveitem-delta,
https://learn.microsoft.com/en-us/graph/api/resources/driveitem,
https://learn.microsoft.com/en-us/graph/api/driveitem-list-thumbnails,
https://learn.microsoft.com/en-us/graph/api/driveitem-get-content,
https://learn.microsoft.com/en-us/graph/api/listitem-update,
https://learn.microsoft.com/en-us/graph/throttling,
https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow.
What this module relies on:

- Listing is `GET drives/{drive}/root/delta` (or `root:/{folder}:/delta`),
  page after page by `@odata.nextLink`. The last page's `@odata.deltaLink`
  is the cursor of the next listing, which then holds only what changed,
  removed items included (the `deleted` facet becomes `Page.deleted`). The
  cursor is the link itself, so a listing resumes exactly where it stopped.
- A link the service no longer accepts (410 Gone `resyncRequired` when a
  token is too old; Graph's only remedy is a fresh enumeration, and the
  `Location` it sends is one too) starts the listing over without a token.
  Nothing live is lost: everything is listed again, unchanged files fetch
  nothing. What the fresh enumeration cannot show is what was deleted while
  the token aged: the engine treats the listing as incremental, so those
  assets stay in the index until the next `damdup sync --full`.
- `version` is the file's content hash with its size: `quickXorHash` on
  SharePoint (its only hash), `sha256Hash`/`sha1Hash` on OneDrive personal,
  else `cTag`. `cTag` would do as well, but SharePoint's delta leaves it out;
  `eTag`, last resort, also changes with every column edit, damdup's marks
  included.
- Metadata comes from the delta item; a mapping that reads list columns
  (`fields.X`) or the item's place (`path`, `folder`) costs one
  `GET items/{id}?$expand=listItem($expand=fields)` per listed image, because
  delta cannot expand `listItem`.
- Renditions are thumbnails that keep the aspect ratio: `large` (800 px on the
  longest side) and custom boxes such as `c1600x1600`, sized from the `image`
  facet. Before its bytes are read, a thumbnail's reported size is checked
  again. Crops (`smallSquare`…, `c300x400_crop`) are refused in the settings.
- File and thumbnail bytes come from preauthenticated URLs (the item's
  `@microsoft.graph.downloadUrl`, a thumbnail's `url`) on SharePoint's and the
  thumbnail service's hosts, listed in `download_hosts`. The bearer token goes
  only to `base_url`.
- Marks live in three text columns of the library, written by
  `PATCH items/{id}/listItem/fields` with only the values that change (null
  clears one). A column edit changes the item's eTag and modification time,
  not its content hash or cTag, so `version` stays.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote, unquote

import requests
import structlog
from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from requests.auth import AuthBase

from adapters.base import (
    IMAGE_EXTENSIONS,
    Adapter,
    AssetRef,
    AuthFailed,
    BadAsset,
    Capabilities,
    Marks,
    MetadataMapping,
    NotFound,
    Page,
    RemoteSettings,
    Rendition,
    RequestObserver,
    Unavailable,
    Unsupported,
    choose_rendition,
    reason,
)
from adapters.http import HttpClient, HttpError

__all__ = ["SharePoint", "SharePointCursor", "SharePointSettings", "thumbnail_box"]

log = structlog.get_logger(__name__)

GRAPH_ROOT = "https://graph.microsoft.com/v1.0/"
MAX_PAGE_SIZE = 1000
# A cached token is renewed this long before Graph would refuse it.
TOKEN_MARGIN_S = 300.0
STANDARD_BOXES = {"small": 96, "medium": 176, "large": 800}
CUSTOM_BOX = re.compile(r"^c([1-9]\d{0,4})x([1-9]\d{0,4})$")
# Record keys only the per-item request gives (delta omits them).
ITEM_KEYS = frozenset({"fields", "path", "folder", "listItem", "parentReference"})


def thumbnail_box(size: str) -> tuple[int, int] | None:
    """The box a thumbnail size fits into, aspect kept; None for a crop or
    anything Graph does not document."""
    if size in STANDARD_BOXES:
        return STANDARD_BOXES[size], STANDARD_BOXES[size]
    match = CUSTOM_BOX.match(size)
    return (int(match.group(1)), int(match.group(2))) if match else None


class SharePointSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_SHAREPOINT_", extra="forbid")
    base_url: HttpUrl = HttpUrl(GRAPH_ROOT)
    page_size: int = Field(200, ge=1, le=MAX_PAGE_SIZE, description="delta $top")
    tenant_id: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$", description="directory GUID or domain"
    )
    client_id: str = Field(..., min_length=1, description="the app registration's client id")
    client_secret: SecretStr
    token_url: HttpUrl | None = Field(
        None, description="default https://login.microsoftonline.com/<tenant_id>/oauth2/v2.0/token"
    )
    scope: str = Field("https://graph.microsoft.com/.default", min_length=1)
    drive_id: str = Field(..., pattern=r"^[^/?#\s]+$", description="the document library's drive")
    folder: str = Field("", description="only this folder (a path under the library's root)")
    download_hosts: list[str] = Field(
        default_factory=list,
        description="hosts of the preauthenticated download and thumbnail URLs",
    )
    thumbnail_sizes: list[str] = Field(default_factory=lambda: ["large", "c1600x1600"])
    marks_column: str = Field("DamdupMarks", min_length=1)
    cluster_column: str = Field("DamdupCluster", min_length=1)
    canonical_column: str = Field("DamdupCanonical", min_length=1)
    metadata: MetadataMapping = MetadataMapping(
        location="fields.Location", date="photo.takenDateTime", department="fields.Department"
    )

    @field_validator("folder")
    @classmethod
    def _folder_path(cls, value: str) -> str:
        return value.strip().strip("/")

    @field_validator("thumbnail_sizes")
    @classmethod
    def _no_crops(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            if thumbnail_box(size) is None:
                raise ValueError(
                    f"{size!r} is not an aspect-preserving thumbnail size: use small, medium, "
                    "large or c<width>x<height>; crops (…Square, _crop) are never hashed"
                )
        return sizes

    @property
    def token_endpoint(self) -> str:
        if self.token_url is not None:
            return str(self.token_url)
        return f"https://login.microsoftonline.com/{self.tenant_id}/oauth2/v2.0/token"


class SharePointCursor(BaseModel):
    # The @odata.nextLink of a listing under way, or the @odata.deltaLink of
    # a completed one, as Graph gave it.
    link: str = Field(..., min_length=1)
    # The delta endpoint the link belongs to: a unit moved to another drive or
    # folder starts over instead of following the old one's changes.
    scope: str = Field(..., min_length=1)


class _ClientCredentials(AuthBase):
    """A bearer token from the client credentials grant, cached until shortly
    before it expires and renewed once when Graph refuses it with 401 (a token
    revoked or expired early). It is sent only to URLs under `audience`:
    preauthenticated download URLs need none and must not see it."""

    def __init__(self, tokens: HttpClient, endpoint: str, form: dict[str, str], audience: str):
        self.tokens = tokens
        self.endpoint = endpoint
        self.form = form
        self.audience = audience
        self.lock = threading.Lock()
        self.token: str | None = None
        self.expires = 0.0  # time.monotonic() when the token is to be renewed

    def current(self) -> str:
        with self.lock:
            if self.token is None or time.monotonic() >= self.expires:
                self.token, lifetime = self._request()
                self.expires = time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN_S)
            return self.token

    def drop(self, token: str) -> None:
        """Forget `token` unless another thread has already renewed it."""
        with self.lock:
            if self.token == token:
                self.token = None

    def _request(self) -> tuple[str, float]:
        try:
            reply = self.tokens.request("POST", self.endpoint, data=self.form, expect="json")
        except HttpError as exc:
            # 400: an unknown tenant or application, a scope not granted.
            raise AuthFailed(
                f"the token endpoint refused the unit's app ({exc.status}: {exc.detail}); "
                "check the unit's credentials: tenant_id, client_id, client_secret and scope"
            ) from exc
        body = reply.json
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"{self.endpoint} answered without an access_token")
        try:
            lifetime = float(body.get("expires_in", 3599))
        except (TypeError, ValueError):
            lifetime = 3599.0
        return token, lifetime

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if not (request.url or "").startswith(self.audience):
            return request
        token = self.current()
        request.headers["Authorization"] = f"Bearer {token}"
        request.register_hook("response", self._renew_on_401)  # type: ignore[no-untyped-call]
        return request

    def _renew_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        """As requests' digest auth does: on 401, renew and send once more."""
        sent = response.request
        if response.status_code != 401 or getattr(sent, "damdup_renewed", False):
            return response
        used = str(sent.headers.get("Authorization", "")).removeprefix("Bearer ")
        self.drop(used)
        _ = response.content  # read, so that the connection can be reused
        response.close()
        again = sent.copy()
        again.headers["Authorization"] = f"Bearer {self.current()}"
        again.damdup_renewed = True  # type: ignore[attr-defined]  # once only
        assert response.connection is not None
        renewed: requests.Response = response.connection.send(again, **kwargs)
        renewed.history.append(response)
        renewed.request = again
        return renewed


class SharePoint(Adapter[SharePointCursor]):
    kind: ClassVar[str] = "sharepoint"
    settings_model = SharePointSettings
    cursor_model = SharePointCursor
    capabilities = Capabilities(
        incremental=True,
        deletions=True,
        renditions=True,
        annotate=True,
        describe=True,
        exists=True,
        fetch_url=True,
    )

    def __init__(
        self, settings: SharePointSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        secret = settings.client_secret.get_secret_value()
        timeout = (min(5.0, settings.timeout_s), settings.timeout_s)
        tokens = HttpClient(
            settings.token_endpoint,
            timeout=timeout,
            attempts=settings.attempts,
            max_retry_after_s=settings.max_retry_after_s,
            secrets=[secret],
            kind=self.kind,
            observer=observer,
        )
        self.base_url = str(settings.base_url)
        self.auth = _ClientCredentials(
            tokens,
            settings.token_endpoint,
            {
                "grant_type": "client_credentials",
                "client_id": settings.client_id,
                "client_secret": secret,
                "scope": settings.scope,
            },
            self.base_url if self.base_url.endswith("/") else self.base_url + "/",
        )
        self.http = HttpClient.for_settings(
            settings,
            auth=self.auth,
            secrets=[secret],
            allowed_hosts=settings.download_hosts,
            kind=self.kind,
            observer=observer,
        )
        self.drive = f"drives/{quote(settings.drive_id, safe='!')}"
        self.delta_path = (
            f"{self.drive}/root:/{quote(settings.folder)}:/delta"
            if settings.folder
            else f"{self.drive}/root/delta"
        )
        mapping = settings.metadata
        roots = {path.split(".")[0] for path in (mapping.location, mapping.date, mapping.department)
                 if path and not path.startswith("=")}  # fmt: skip
        self.reads_items = bool(roots & ITEM_KEYS)

    # -- listing -----------------------------------------------------------

    def list_assets(self, cursor: SharePointCursor | None) -> Page[SharePointCursor]:
        body = self._delta(cursor)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, list):
            raise Unavailable(f"{self.delta_path}: the answer has no `value` list of driveItems")
        # An item may show twice: its last appearance is its state.
        latest: dict[str, dict[str, Any]] = {}
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                latest[item["id"]] = item
        items: list[AssetRef] = []
        deleted: list[str] = []
        for item_id, item in latest.items():
            if "deleted" in item:
                deleted.append(item_id)
                continue
            ref = self._listed(item)
            if ref is not None:
                items.append(ref)
        next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
        if isinstance(next_link, str) and next_link:
            cursor = SharePointCursor(link=next_link, scope=self.delta_path)
            return Page(items=items, cursor=cursor, complete=False, deleted=deleted)
        if isinstance(delta_link, str) and delta_link:
            cursor = SharePointCursor(link=delta_link, scope=self.delta_path)
            return Page(items=items, cursor=cursor, complete=True, deleted=deleted)
        raise Unavailable(f"{self.delta_path}: the answer has neither a nextLink nor a deltaLink")

    def _delta(self, cursor: SharePointCursor | None) -> Any:
        fresh = {"$top": str(self.settings.page_size)}
        if cursor is None:
            return self.http.get_json(self.delta_path, fresh)
        if cursor.scope != self.delta_path or not cursor.link.startswith(self.base_url):
            log.warning("sharepoint.cursor_elsewhere", scope=cursor.scope, now=self.delta_path)
            return self.http.get_json(self.delta_path, fresh)
        try:
            return self.http.get_json(cursor.link)
        except NotFound as exc:
            # 410 resyncRequired: the token is too old. Start over; a drive
            # or folder that is gone fails again, and that error stands.
            log.warning("sharepoint.resync", reason=str(exc))
            return self.http.get_json(self.delta_path, fresh)

    def _listed(self, item: dict[str, Any], full: dict[str, Any] | None = None) -> AssetRef | None:
        file = item.get("file")
        if not isinstance(file, dict) or "remoteItem" in item:
            return None  # the root, folders, notebooks, shortcuts to other drives
        name = str(item.get("name") or "")
        mime = str(file.get("mimeType") or "")
        extension = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
        if not mime.startswith("image/") and extension not in IMAGE_EXTENSIONS:
            return None
        record = dict(item)
        if full is not None:
            record = self._with_place(item, full)
        elif self.reads_items:
            try:
                record = self._full_record(item)
            except NotFound:
                return None  # deleted since the page was made: the next delta says so
        return self._ref(item, record)

    def _full_record(self, item: dict[str, Any]) -> dict[str, Any]:
        full = self.http.get_json(
            self._item_path(item["id"]), {"$expand": "listItem($expand=fields)"}
        )
        if not isinstance(full, dict):
            raise Unavailable(f"{self._item_path(item['id'])}: the answer is not a driveItem")
        return self._with_place(item, full)

    @staticmethod
    def _with_place(item: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
        """The record a metadata mapping reads: the item, its list columns as
        `fields`, and its place as `path` and `folder`."""
        record = {**item, **full}
        list_item = full.get("listItem")
        record["fields"] = (list_item or {}).get("fields") or {}
        parent = str((full.get("parentReference") or {}).get("path") or "")
        folder = unquote(parent.partition("root:")[2]).strip("/")
        record["path"] = f"{folder}/{full.get('name')}" if folder else str(full.get("name"))
        record["folder"] = folder.rsplit("/", 1)[-1]
        return record

    def _ref(self, item: dict[str, Any], record: dict[str, Any]) -> AssetRef:
        item_id = item["id"]
        hashes = _object((item.get("file") or {}).get("hashes"))
        size = item.get("size") if isinstance(item.get("size"), int) else None
        image = _object(item.get("image"))
        width, height = _dimension(image.get("width")), _dimension(image.get("height"))
        original_url = self.base_url + self._item_path(item_id)
        ref = AssetRef(
            id=item_id,
            version=_version(item, hashes, size),
            url=str(item.get("webUrl") or original_url),
            size_bytes=size,
            modified=item.get("lastModifiedDateTime"),
            content_hash=_content_hash(hashes),
            metadata=self.settings.metadata.apply(record),
            original_url=original_url,
            width=width,
            height=height,
        )
        if not width or not height:
            return ref
        renditions = []
        for size_name in self.settings.thumbnail_sizes:
            box = thumbnail_box(size_name)
            assert box is not None  # the settings refuse anything else
            scale = min(box[0] / width, box[1] / height, 1.0)
            renditions.append(
                Rendition(
                    url=f"{original_url}/thumbnails/0/{size_name}",
                    width=max(1, round(width * scale)),
                    height=max(1, round(height * scale)),
                )
            )
        return replace(ref, renditions=tuple(renditions))

    def describe(self, asset_id: str) -> AssetRef:
        """`GET drives/{drive}/items/{id}`, selecting what delta gives on
        SharePoint (no cTag, so `version` falls back as the listing's does)
        and, when the metadata mapping reads columns or the item's place, the
        listItem with its fields, as the listing reads them per item.
        https://learn.microsoft.com/en-us/graph/api/driveitem-get"""
        path = self._item_path(asset_id)
        params = {"$select": ",".join(sorted(self._described_properties()))}
        if self.reads_items:
            params["$expand"] = "listItem($expand=fields)"
        try:
            full = self.http.get_json(path, params)
        except NotFound as exc:
            raise NotFound(
                f"SharePoint has no item {asset_id} in {self.drive}: {reason(exc)}"
            ) from exc
        if not isinstance(full, dict) or full.get("id") != asset_id:
            raise Unavailable(f"{path}: the answer is not the driveItem asked for")
        if "deleted" in full:
            raise NotFound(f"SharePoint item {asset_id} is deleted")
        parent = str(_object(full.get("parentReference")).get("path") or "")
        if not parent:
            raise Unavailable(f"{path}: the driveItem has no parentReference.path")
        folder = unquote(parent.partition("root:")[2]).strip("/")
        scope = self.settings.folder
        if scope and folder != scope and not folder.startswith(scope + "/"):
            raise NotFound(f"SharePoint item {asset_id} is not under the unit's folder {scope!r}")
        item = {key: value for key, value in full.items() if key != "listItem"}
        ref = self._listed(item, full if self.reads_items else None)
        if ref is None:
            raise NotFound(f"SharePoint item {asset_id} is not an image file")
        return ref

    def _described_properties(self) -> set[str]:
        """The driveItem properties the listing's mapping reads, as delta
        gives them, and what placing and filtering the item needs."""
        names = {"id", "name", "eTag", "size", "webUrl", "lastModifiedDateTime", "file"}
        names |= {"image", "photo", "remoteItem", "deleted", "parentReference"}
        mapping = self.settings.metadata
        for path in (mapping.location, mapping.date, mapping.department):
            if path and not path.startswith("="):
                names.add(path.split(".")[0])
        names -= {"fields", "path", "folder"}  # made from listItem and parentReference
        if self.reads_items:
            names.add("listItem")
        return names

    def fetch_url(self, url: str) -> bytes:
        """The image at a Graph address of this drive, as a listing gives
        them: an item (`items/{id}`, its file), one of its thumbnails
        (`.../thumbnails/0/{size}`) or its `/content`; or bytes at a
        preauthenticated URL of `download_hosts`. The token goes only to Graph."""
        if not url.startswith(self.base_url):
            return self._download(url)
        items = self.base_url + self.drive + "/items/"
        rest = url[len(items) :].split("?")[0] if url.startswith(items) else ""
        if not rest:
            raise BadAsset(f"{url}: not an item of the unit's drive {self.drive}")
        item_id, _, below = rest.partition("/")
        if not below:
            return self._original_at(url, item_id)
        if below == "content" or (below.startswith("thumbnails/") and below.endswith("/content")):
            return self.http.get_bytes(url)  # 302 to a preauthenticated URL
        if below.startswith("thumbnails/"):
            meta = self.http.get_json(url)
            if not isinstance(meta, dict) or not isinstance(meta.get("url"), str):
                raise Unavailable(f"{url}: the answer is not a thumbnail")
            return self._download(meta["url"])
        raise BadAsset(f"{url}: not an item's file, thumbnail or content")

    def _item_path(self, item_id: str) -> str:
        return f"{self.drive}/items/{quote(item_id, safe='!')}"

    # -- bytes -------------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        chosen = choose_rendition(asset, min_side)
        if chosen is not None:
            data = self._thumbnail(asset, chosen, min_side)
            if data is not None:
                return data
        return self._original(asset)

    def _thumbnail(self, asset: AssetRef, url: str, min_side: int) -> bytes | None:
        """The thumbnail's bytes when Graph made it as large as promised;
        None sends the caller to the original."""
        try:
            meta = self.http.get_json(url)
        except NotFound:
            return None  # no thumbnail for this file (or the file is gone: the original says)
        if not isinstance(meta, dict) or not isinstance(meta.get("url"), str):
            raise Unavailable(f"{url}: the answer is not a thumbnail")
        made = Rendition(
            url=meta["url"],
            width=_dimension(meta.get("width")) or 0,
            height=_dimension(meta.get("height")) or 0,
        )
        # The same rule on the size Graph reports ("may not exactly match").
        checked = replace(asset, renditions=(made,))
        if choose_rendition(checked, min_side) is None:
            log.info("sharepoint.thumbnail_too_small", asset_id=asset.id, url=url)
            return None
        return self._download(made.url)

    def _original(self, asset: AssetRef) -> bytes:
        url = asset.original_url or self.base_url + self._item_path(asset.id)
        return self._original_at(url, asset.id)

    def _original_at(self, url: str, item_id: str) -> bytes:
        item = self.http.get_json(url, {"$select": "id,file,@microsoft.graph.downloadUrl"})
        if not isinstance(item, dict):
            raise Unavailable(f"{url}: the answer is not a driveItem")
        if "file" not in item:
            raise BadAsset(f"{item_id} is no longer a file")
        download = item.get("@microsoft.graph.downloadUrl")
        if not isinstance(download, str) or not download:
            raise Unavailable(f"{url}: the driveItem has no @microsoft.graph.downloadUrl")
        return self._download(download)

    def _download(self, url: str) -> bytes:
        try:
            self.http.url(url)
        except BadAsset as exc:
            host = url.split("/")[2] if url.count("/") >= 2 else url
            raise BadAsset(f"{exc}; add {host} to the unit's download_hosts") from exc
        return self.http.get_bytes(url)

    def probe(self, asset: AssetRef) -> None:
        self.http.get_json(self._item_path(asset.id), {"$select": "id"})

    # -- marks ---------------------------------------------------------------

    def _columns(self) -> dict[str, str]:
        """damdup's flat mark names and the library columns holding them."""
        return {
            "damdup-marks": self.settings.marks_column,
            "damdup-cluster": self.settings.cluster_column,
            "damdup-canonical": self.settings.canonical_column,
        }

    def _fields(self, asset: AssetRef) -> dict[str, Any]:
        fields = self.http.get_json(f"{self._item_path(asset.id)}/listItem/fields")
        if not isinstance(fields, dict):
            raise Unavailable(f"{asset.id}: the list item's fields are not an object")
        return fields

    def read_marks(self, asset: AssetRef) -> Marks:
        fields = self._fields(asset)
        try:
            return Marks.from_fields(
                {mark: _text(fields.get(column)) for mark, column in self._columns().items()}
            )
        except ValueError as exc:  # a hand edit of damdup's columns
            raise BadAsset(f"{asset.id}: damdup's columns are unreadable: {reason(exc)}") from exc

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        stored = self._fields(asset)
        wanted = marks.to_fields()
        changes: dict[str, str | None] = {}
        for mark, column in self._columns().items():
            if _text(stored.get(column)) != wanted.get(mark):
                changes[column] = wanted.get(mark)  # None clears the column
        if not changes:
            return False
        try:
            self.http.request("PATCH", f"{self._item_path(asset.id)}/listItem/fields", json=changes)
        except HttpError as exc:
            if exc.status == 400:
                columns = ", ".join(self._columns().values())
                raise Unsupported(
                    f"{asset.id}: SharePoint refused damdup's marks ({exc.detail}); the "
                    f"library needs the text columns {columns} (multiple lines of text for "
                    f"{self.settings.canonical_column})"
                ) from exc
            raise
        return True


def _version(item: dict[str, Any], hashes: dict[str, Any], size: int | None) -> str:
    for name in ("quickXorHash", "sha256Hash", "sha1Hash"):
        value = hashes.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}:{size}"
    for tag in ("cTag", "eTag"):
        value = item.get(tag)
        if isinstance(value, str) and value:
            return f"{tag}:{value}"
    raise Unavailable(f"driveItem {item.get('id')} has neither a content hash nor a cTag/eTag")


def _content_hash(hashes: dict[str, Any]) -> str | None:
    """As "algo:hex": SHA-256 when the service gives it, else the QuickXorHash
    (base64 in Graph) in hex."""
    sha256 = hashes.get("sha256Hash")
    if isinstance(sha256, str) and re.fullmatch(r"[0-9A-Fa-f]{64}", sha256):
        return f"sha256:{sha256.lower()}"
    quick = hashes.get("quickXorHash")
    if isinstance(quick, str) and quick:
        try:
            return f"quickxor:{base64.b64decode(quick, validate=True).hex()}"
        except (binascii.Error, ValueError):
            return None
    return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dimension(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value > 0 else None


def _text(value: Any) -> str | None:
    """A column's value as text; SharePoint leaves empty columns out."""
    if value is None or value == "":
        return None
    return str(value)
