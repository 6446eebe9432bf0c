"""Microsoft Graph in front of one SharePoint document library (a drive), with
the Microsoft identity platform's token endpoint: what damdup's `sharepoint`
adapter reads and writes.

Written from Microsoft's published documentation:
- driveItem delta, https://learn.microsoft.com/en-us/graph/api/driveitem-delta
  (microsoftgraph/microsoft-graph-docs-contrib api-reference/v1.0/api/driveitem-delta.md):
  pages of items with `@odata.nextLink`, the last one with `@odata.deltaLink`;
  removed items carry the `deleted` facet; the feed shows each item's latest
  state and an item changed during an enumeration shows again later;
  `token=latest`; an unusable token is answered `410 Gone` with a
  `resyncRequired` error and a `Location` that starts a fresh enumeration
  (a client may equally start again without a token, OneDrive/onedrive-sdk-csharp#102).
  On OneDrive for Business and SharePoint, delta omits `cTag` of created and
  modified items and `cTag` and `name` of deleted ones, and `parentReference`
  has no `path`. Delta cannot expand `listItem`: 400 "One of the provided
  arguments is not acceptable." (OneDrive/onedrive-api-docs#1181). Delta on a
  folder (`root:/path:/delta`) works on SharePoint since 2021
  (microsoftgraph/microsoft-graph-docs#13035).
- driveItem, https://learn.microsoft.com/en-us/graph/api/resources/driveitem:
  `eTag` changes with any change, `cTag` only with the content ("not changed
  if only the metadata is changed"); `file`, `image`, `photo` facets; `webUrl`;
  `@microsoft.graph.downloadUrl`. hashes,
  https://learn.microsoft.com/en-us/graph/api/resources/hashes: OneDrive for
  Business and SharePoint give only `quickXorHash`, whose algorithm is
  https://learn.microsoft.com/en-us/onedrive/developer/code-snippets/quickxorhash
  ("hello world" gives aCgDG9jwBhDc4Q1yawMZAAAAAAA=).
- Download, https://learn.microsoft.com/en-us/graph/api/driveitem-get-content:
  `/content` answers 302 to a preauthenticated URL, valid a few minutes, that
  needs no Authorization header.
- Thumbnails, https://learn.microsoft.com/en-us/graph/api/driveitem-list-thumbnails:
  thumbnail sets with `small`, `medium` and `large` (96, 176 and 800 px on
  the longest side, aspect kept), `smallSquare`/`mediumSquare`/`largeSquare`
  crops, custom `c300x400` (fits the box, aspect kept) and `c300x400_crop`
  (fills the box and crops); `/thumbnails/{set}/{size}` gives width, height
  and url, `/content` redirects to it.
- listItem fields, https://learn.microsoft.com/en-us/graph/api/listitem-update:
  PATCH with a fieldValueSet changes only the fields given, answers 200 with
  the whole fieldValueSet, and 412 when `If-Match` no longer matches.
- Errors, https://learn.microsoft.com/en-us/graph/errors:
  `{"error": {"code", "message", "innerError": {"date", "request-id"}}}`.
- Throttling, https://learn.microsoft.com/en-us/graph/throttling and
  https://learn.microsoft.com/en-us/sharepoint/dev/general-development/how-to-avoid-getting-throttled-or-blocked-in-sharepoint-online:
  429 with `Retry-After` and `RateLimit-*` headers; SharePoint's body says
  `activityLimitReached` / `throttledRequest`.
- Client credentials,
  https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow:
  `POST /{tenant}/oauth2/v2.0/token` with client_id, client_secret (or HTTP
  Basic), scope `https://graph.microsoft.com/.default` and grant_type; answer
  token_type, expires_in, access_token; errors as error, error_description,
  error_codes (a wrong secret: 401 invalid_client, AADSTS7000215). Graph
  answers an expired token with 401 InvalidAuthenticationToken.

Library metadata the emulator reads: `fields` (list column values, e.g.
Location, Department, Title), `taken` (the photo facet's takenDateTime, as
SharePoint reads it from EXIF), `folder` (a path under the drive root) and
`author` (createdBy's display name). Times come from the library's Clock:
tokens, preauthenticated URLs and the rate limit expire in the emulator's
time, which tests move forward instead of sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote, urlencode

import numpy as np
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter, Marks
from adapters.sharepoint import SharePoint, SharePointSettings
from tests.contract.harness import READING_METHODS, EmulatorHarness
from tests.servers.common import (
    Clock,
    Emulator,
    Library,
    StoredAsset,
    TokenBucket,
    _rendition,
    fit_within,
    image_response,
    json_response,
    scaled,
    square_crop,
    utc,
)
from tests.servers.faults import Forwarded

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TENANT_ID = "d6f1c0de-0000-4000-8000-00000000cafe"
DRIVE_ID = "b!kuvapankki-test-drive-0123456789abcdefghijklmnopqrstuvwxyzABCD"
CLIENT_ID = "5a9e0c1d-2b3c-4d5e-8f90-a1b2c3d4e5f6"
# Obviously fake: the app registration's client secret.
CLIENT_SECRET = "fake~client~secret~for~tests~0123456789"
MAX_TOP = 1000  # a delta page holds at most this many items, whatever $top asks
DEFAULT_TOP = 200
TOKEN_LIFETIME_S = 3599
DOWNLOAD_LIFETIME = timedelta(minutes=5)  # "valid for a short period of time (a few minutes)"
NAMESPACE = uuid.UUID("3b0b5f4e-6d1f-4c55-8e2a-6f5a4e0d9c21")
RESYNC_MESSAGE = (
    "Resync required. Replace any local items with the server's version (including deletes) "
    "if you're sure that the service was up to date with your local changes when you last "
    "sync'd. Upload any local changes that the server doesn't know about."
)
# Thumbnail sizes every item has: (box width, box height, cropped).
STANDARD_THUMBNAILS = {
    "small": (96, 96, False),
    "medium": (176, 176, False),
    "large": (800, 800, False),
    "smallSquare": (96, 96, True),
    "mediumSquare": (176, 176, True),
    "largeSquare": (800, 800, True),
}
CUSTOM_THUMBNAIL = re.compile(r"^c(\d{1,5})x(\d{1,5})(_crop)?$")
# Columns every document library has; a PATCH may not write them.
SYSTEM_FIELDS = frozenset(
    {
        "@odata.etag", "id", "ContentType", "FileLeafRef", "Created", "Modified",
        "AuthorLookupId", "EditorLookupId", "FileSizeDisplay", "ItemChildCount",
        "FolderChildCount", "DocIcon", "LinkFilename", "_UIVersionString",
    }
)  # fmt: skip
# Fields that change whenever anything of the item is written: a client's own
# write changes them, so they are no one's data to keep.
BOOKKEEPING_FIELDS = frozenset({"@odata.etag", "Modified", "EditorLookupId"})


@lru_cache(maxsize=256)
def quick_xor_hash(data: bytes) -> str:
    """OneDrive's QuickXorHash, base64: byte i is XORed into a 160-bit block
    rotated left by 11*i bits, then the length is XORed into the last 8 bytes.
    The rotation repeats every 160 bytes, so bytes are first XORed per column."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    padding = (-len(buffer)) % 160
    if padding:
        buffer = np.concatenate([buffer, np.zeros(padding, dtype=np.uint8)])
    columns = (
        np.bitwise_xor.reduce(buffer.reshape(-1, 160), axis=0)
        if len(buffer)
        else np.zeros(160, dtype=np.uint8)
    )
    mask = (1 << 160) - 1
    block = 0
    for column, value in enumerate(columns.tolist()):
        if value:
            shift = (column * 11) % 160
            block ^= ((value << shift) | (value >> (160 - shift))) & mask
    digest = bytearray(block.to_bytes(20, "little"))
    for index, byte in enumerate(len(data).to_bytes(8, "little")):
        digest[12 + index] ^= byte
    return base64.b64encode(bytes(digest)).decode("ascii")


@lru_cache(maxsize=256)
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Column:
    """A list column: single line of text (255 characters) or multiple lines."""

    kind: Literal["text", "note"] = "text"

    @property
    def max_length(self) -> int:
        return 255 if self.kind == "text" else 63999


DEFAULT_COLUMNS = {
    "Title": Column(),
    "Location": Column(),
    "Department": Column(),
    "Photographer": Column(),
    "DamdupMarks": Column(),
    "DamdupCluster": Column(),
    "DamdupCanonical": Column("note"),  # a URL may be longer than 255 characters
}


@dataclass(frozen=True)
class App:
    """An app registration: its secret and the application permissions granted."""

    secret: str
    roles: frozenset[str] = frozenset({"Sites.ReadWrite.All"})


class GraphError(HTTPException):
    """A Graph error answer, raised from an endpoint."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.graph_code = code
        self.extra_headers = headers or {}


class WindowQuota(TokenBucket):
    """SharePoint's resource units: at most `limit` requests per window of
    `window_s` seconds of the emulator's clock; `take()` answers the seconds
    until the window resets (0 when the request may go)."""

    def __init__(self, clock: Clock, limit: int, window_s: float) -> None:
        super().__init__(rate=limit / window_s, burst=limit)
        self.clock = clock
        self.limit = limit
        self.window_s = window_s
        self.window_start = clock.now()
        self.used = 0

    def take(self) -> float:
        with self.lock:
            now = self.clock.now()
            elapsed = (now - self.window_start).total_seconds()
            if elapsed >= self.window_s:
                self.window_start, self.used, elapsed = now, 0, 0.0
            if self.used < self.limit:
                self.used += 1
                return 0.0
            return self.window_s - elapsed


@dataclass
class IssuedToken:
    client_id: str
    expires: datetime


@dataclass
class DeltaState:
    """What a delta token encodes: the last position handed out (None before
    the first), when a fresh enumeration started (None for changes since a
    deltaLink), and the generation and time it was issued."""

    position: tuple[float, int, str] | None
    fresh: float | None
    generation: int
    issued: float

    def encode(self) -> str:
        raw = json.dumps(
            {"p": self.position, "f": self.fresh, "g": self.generation, "i": self.issued}
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> DeltaState:
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            position = raw["p"]
            return cls(
                position=(float(position[0]), int(position[1]), str(position[2]))
                if position
                else None,
                fresh=raw["f"],
                generation=int(raw["g"]),
                issued=float(raw["i"]),
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise GraphError(400, "invalidRequest", "Invalid token.") from exc


@dataclass
class Entry:
    """One row of a delta enumeration: its position and its JSON."""

    key: tuple[float, int, str]
    body: dict[str, Any] = field(default_factory=dict)


class GraphEmulator(Emulator):
    """Graph v1.0 for one drive (document library) of one SharePoint site, and
    the token endpoint of its tenant."""

    url_map = Map(
        [
            Rule("/<tenant>/oauth2/v2.0/token", endpoint="token", methods=["POST"]),
            Rule("/v1.0/drives/<drive>/root/delta", endpoint="delta", methods=["GET"]),
            Rule(
                "/v1.0/drives/<drive>/root:/<path:folder>:/delta",
                endpoint="delta",
                methods=["GET"],
            ),
            Rule("/v1.0/drives/<drive>/items/<item_id>", endpoint="item", methods=["GET"]),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/content", endpoint="content", methods=["GET"]
            ),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/thumbnails",
                endpoint="thumbnail_sets",
                methods=["GET"],
            ),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/thumbnails/<set_id>",
                endpoint="thumbnail_set",
                methods=["GET"],
            ),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/thumbnails/<set_id>/<size>",
                endpoint="thumbnail",
                methods=["GET"],
            ),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/thumbnails/<set_id>/<size>/content",
                endpoint="thumbnail_content",
                methods=["GET"],
            ),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/listItem",
                endpoint="list_item",
                methods=["GET"],
            ),
            Rule(
                "/v1.0/drives/<drive>/items/<item_id>/listItem/fields",
                endpoint="fields",
                methods=["GET", "PATCH"],
            ),
            Rule("/sites/<site>/_layouts/15/download.aspx", endpoint="download", methods=["GET"]),
            Rule("/transform/thumbnail", endpoint="transform", methods=["GET"]),
        ]
    )

    def __init__(
        self,
        library: Library | None = None,
        *,
        tenant_id: str = TENANT_ID,
        apps: dict[str, App] | None = None,
        drive_id: str = DRIVE_ID,
        site: str = "kuvapankki",
        columns: dict[str, Column] | None = None,
        business: bool = True,
        token_max_age_s: float | None = None,
        image_facet: bool = True,
        max_thumbnail_side: int | None = None,
        download_host: str | None = None,
    ) -> None:
        super().__init__(library or Library())
        self.tenant_id = tenant_id
        self.apps = dict(apps or {})
        self.drive_id = drive_id
        self.site = site
        self.columns = dict(DEFAULT_COLUMNS if columns is None else columns)
        # OneDrive for Business and SharePoint leave cTag out of delta.
        self.business = business
        self.token_max_age_s = token_max_age_s
        # SharePoint leaves the image facet out for some files; and a thumbnail
        # "may not exactly match the pixel dimensions requested".
        self.image_facet = image_facet
        self.max_thumbnail_side = max_thumbnail_side
        # Where preauthenticated URLs point ("http://host:port/"): SharePoint's
        # and the thumbnail service's hosts are not Graph's. Graph's own by default.
        self.download_host = download_host
        self.generation = 0
        self.tokens: dict[str, IssuedToken] = {}
        self._key = secrets.token_bytes(32)  # signs preauthenticated URLs
        self._state_lock = threading.Lock()
        self.started = self.library.clock.now()

    @property
    def clock(self) -> Clock:
        return self.library.clock

    # -- test switches -----------------------------------------------------

    def expire_delta_tokens(self) -> None:
        """Every delta token issued so far is too old: the next request with
        one is answered 410 resyncRequired."""
        with self._state_lock:
            self.generation += 1

    def revoke_access_tokens(self) -> None:
        with self._state_lock:
            self.tokens.clear()

    def throttle(self, limit: int, window_s: float) -> None:
        """Answer 429 beyond `limit` requests per `window_s` clock seconds."""
        self.rate = WindowQuota(self.clock, limit, window_s)

    def reset(self) -> None:
        self.library.reset()
        self.rate = None
        with self._state_lock:
            self.generation = 0

    # -- the library as Graph sees it ----------------------------------------

    def item_id(self, library_id: str) -> str:
        """A driveItem id as SharePoint makes them: 01 and 32 base32 characters."""
        digest = hashlib.sha1(f"{self.drive_id}:{library_id}".encode()).digest()
        return "01" + base64.b32encode(digest).decode()[:32]

    def folder_id(self, path: str) -> str:
        digest = hashlib.sha1(f"{self.drive_id}:folder:{path}".encode()).digest()
        return "01" + base64.b32encode(digest).decode()[:32]

    def library_id(self, item_id: str) -> str:
        with self.library.lock:
            for library_id in self.library.assets:
                if self.item_id(library_id) == item_id:
                    return library_id
        raise KeyError(item_id)

    def _asset(self, item_id: str) -> StoredAsset:
        try:
            asset = self.library.get(self.library_id(item_id))
        except KeyError:
            asset = None
        if asset is None:
            raise GraphError(404, "itemNotFound", "The resource could not be found.")
        return asset

    @staticmethod
    def folder_of(asset: StoredAsset) -> str:
        return str(asset.metadata.get("folder") or "").strip("/")

    def path_of(self, asset: StoredAsset) -> str:
        folder = self.folder_of(asset)
        return f"{folder}/{asset.name}" if folder else asset.name

    def column_values(self, asset: StoredAsset) -> dict[str, Any]:
        values = asset.metadata.setdefault("fields", {})
        assert isinstance(values, dict)
        return values

    def set_fields(self, item_id: str, changes: dict[str, Any]) -> None:
        """An editor's change of list columns (None clears one), as through
        SharePoint's own forms: the item is modified, its content is not."""
        with self.library.lock:
            asset = self._asset(item_id)
            self._validate_fields(changes)
            self._apply_fields(asset, changes)

    def _apply_fields(self, asset: StoredAsset, changes: dict[str, Any]) -> None:
        values = self.column_values(asset)
        for name, value in changes.items():
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
        asset.modified = self.clock.tick()

    def _validate_fields(self, changes: Any) -> None:
        if not isinstance(changes, dict):
            raise GraphError(400, "invalidRequest", "Invalid request.")
        for name, value in changes.items():
            if name in SYSTEM_FIELDS:
                raise GraphError(400, "invalidRequest", f"Field '{name}' is read-only")
            column = self.columns.get(name)
            if column is None:
                raise GraphError(400, "invalidRequest", f"Field '{name}' is not recognized")
            if value is None:
                continue
            if not isinstance(value, str):
                raise GraphError(
                    400, "invalidRequest", f"Invalid value for field '{name}': expected text"
                )
            if len(value) > column.max_length:
                raise GraphError(
                    400,
                    "invalidRequest",
                    f"The value of field '{name}' is longer than {column.max_length} characters",
                )

    def _guid(self, asset: StoredAsset) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.drive_id}:{asset.id}")).upper()

    def _etag(self, asset: StoredAsset) -> str:
        """Changes with every change of the item: a counter of its edits."""
        edits = 1 + int((asset.modified - asset.created).total_seconds())
        return f'"{{{self._guid(asset)}}},{edits}"'

    def _ctag(self, asset: StoredAsset) -> str:
        """Changes only with the content: a digest of the bytes stands for
        SharePoint's content version."""
        return f'"c:{{{self._guid(asset)}}},{int(_sha256(asset.data)[:8], 16)}"'

    def _user(self, asset: StoredAsset) -> dict[str, Any]:
        name = str(asset.metadata.get("author") or "Kuvaaja Testinen")
        email = ".".join(name.lower().split()) + "@hel.fi"
        return {"user": {"displayName": name, "email": email}}

    def _web_url(self, host: str, path: str) -> str:
        return (
            f"{host}sites/{self.site}/Shared%20Documents/{quote(path)}"
            if path
            else (f"{host}sites/{self.site}/Shared%20Documents")
        )

    def _parent(self, folder: str, with_path: bool) -> dict[str, Any]:
        parent: dict[str, Any] = {
            "driveType": "documentLibrary",
            "driveId": self.drive_id,
            "id": self.folder_id(folder),
        }
        if with_path:
            parent["path"] = f"/drives/{self.drive_id}/root:" + (
                "/" + quote(folder) if folder else ""
            )
        return parent

    def drive_item(self, host: str, asset: StoredAsset, in_delta: bool = False) -> dict[str, Any]:
        """The driveItem of a file, as GET answers it or (`in_delta`) as delta
        lists it: without parentReference.path or downloadUrl, and on
        SharePoint without cTag."""
        item: dict[str, Any] = {
            "id": self.item_id(asset.id),
            "name": asset.name,
            "eTag": self._etag(asset),
            "cTag": self._ctag(asset),
            "createdDateTime": utc(asset.created),
            "lastModifiedDateTime": utc(asset.modified),
            "size": len(asset.data),
            "webUrl": self._web_url(host, self.path_of(asset)),
            "createdBy": self._user(asset),
            "lastModifiedBy": self._user(asset),
            "parentReference": self._parent(self.folder_of(asset), with_path=not in_delta),
            "file": {
                "mimeType": asset.mime_type,
                "hashes": {"quickXorHash": quick_xor_hash(asset.data)},
            },
            "fileSystemInfo": {
                "createdDateTime": utc(asset.created),
                "lastModifiedDateTime": utc(asset.modified),
            },
        }
        if self.image_facet:
            item["image"] = {"width": asset.width, "height": asset.height}
        taken = asset.metadata.get("taken")
        if taken:
            item["photo"] = {"takenDateTime": _graph_time(str(taken))}
        if in_delta and self.business:
            del item["cTag"]
        if not in_delta:
            item["@microsoft.graph.downloadUrl"] = self._download_url(
                self.download_host or host, asset
            )
        return item

    def _deleted_item(self, asset: StoredAsset) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.item_id(asset.id),
            "deleted": {"state": "deleted"},
            "lastModifiedDateTime": utc(asset.modified),
            "parentReference": self._parent(self.folder_of(asset), with_path=False),
            "file": {},
        }
        if not self.business:
            item["name"] = asset.name
        return item

    def _folder_item(self, host: str, path: str, moment: datetime) -> dict[str, Any]:
        parent, _, name = path.rpartition("/")
        folder: dict[str, Any] = {
            "id": self.folder_id(path),
            "name": name or "root",
            "eTag": f'"{{{uuid.uuid5(NAMESPACE, path)}}},1"'.upper(),
            "createdDateTime": utc(moment),
            "lastModifiedDateTime": utc(moment),
            "webUrl": self._web_url(host, path),
            "folder": {"childCount": 0},
            "size": 0,
        }
        if path:
            folder["parentReference"] = self._parent(parent, with_path=False)
        else:
            folder["root"] = {}
            folder["parentReference"] = {"driveType": "documentLibrary", "driveId": self.drive_id}
        return folder

    def list_item_json(self, asset: StoredAsset, with_fields: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@odata.etag": self._etag(asset),
            "id": asset.id,
            "eTag": self._etag(asset),
            "createdDateTime": utc(asset.created),
            "lastModifiedDateTime": utc(asset.modified),
            "contentType": {"id": "0x0101", "name": "Document"},
        }
        if with_fields:
            body["fields"] = self.field_values(asset)
        return body

    def field_values(self, asset: StoredAsset) -> dict[str, Any]:
        """The fieldValueSet: system columns, then the custom columns that
        hold a value (Graph leaves empty ones out)."""
        stem, _, extension = asset.name.rpartition(".")
        values: dict[str, Any] = {
            "@odata.etag": self._etag(asset),
            "id": asset.id,
            "ContentType": "Document",
            "FileLeafRef": asset.name,
            "Created": utc(asset.created),
            "Modified": utc(asset.modified),
            "AuthorLookupId": "11",
            "EditorLookupId": "11",
            "FileSizeDisplay": str(len(asset.data)),
            "ItemChildCount": "0",
            "FolderChildCount": "0",
            "DocIcon": extension.lower() if stem else "",
            "LinkFilename": asset.name,
        }
        for name, value in self.column_values(asset).items():
            if value is not None and name in self.columns:
                values[name] = value
        return values

    # -- preauthenticated URLs ---------------------------------------------

    def _sign(self, kind: str, subject: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{kind}|{subject}|{expires}".encode(), hashlib.sha256)
        return f"v1.{expires}.{mac.hexdigest()}"

    def _check_signature(self, kind: str, subject: str, tempauth: str) -> None:
        match = re.fullmatch(r"v1\.(\d+)\.([0-9a-f]{64})", tempauth)
        if not match or not hmac.compare_digest(
            self._sign(kind, subject, int(match.group(1))), tempauth
        ):
            raise GraphError(401, "unauthenticated", "Invalid or missing tempauth.")
        if int(match.group(1)) < self.clock.now().timestamp():
            raise GraphError(401, "unauthenticated", "The preauthenticated URL has expired.")

    def _expiry(self) -> int:
        return int((self.clock.now() + DOWNLOAD_LIFETIME).timestamp())

    def _download_url(self, host: str, asset: StoredAsset) -> str:
        guid = self._guid(asset)
        query = urlencode(
            {
                "UniqueId": guid,
                "Translate": "false",
                "tempauth": self._sign("download", guid, self._expiry()),
                "ApiVersion": "2.0",
            }
        )
        return f"{host}sites/{self.site}/_layouts/15/download.aspx?{query}"

    def _thumbnail_url(self, host: str, item_id: str, size: str) -> str:
        subject = f"{item_id}:{size}"
        query = urlencode(
            {
                "provider": "spo",
                "inputFormat": "jpg",
                "docid": item_id,
                "size": size,
                "tempauth": self._sign("thumbnail", subject, self._expiry()),
            }
        )
        return f"{host}transform/thumbnail?{query}"

    # -- answers -----------------------------------------------------------

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        if isinstance(exc, GraphError):
            return graph_error(
                exc.code or 500, exc.graph_code, exc.description or "", exc.extra_headers
            )
        if isinstance(exc, MethodNotAllowed):
            return graph_error(405, "BadRequest", f"The '{request.method}' method is not allowed.")
        segment = request.path.rstrip("/").rsplit("/", 1)[-1]
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.")

    def rate_limited(self, request: Request, wait_s: float) -> Response:
        wait = max(1, math.ceil(wait_s))
        limit = self.rate.burst if self.rate is not None else 0
        return graph_error(
            429,
            "activityLimitReached",
            "The request has been throttled",
            {
                "Retry-After": str(wait),
                "RateLimit-Limit": str(limit),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(wait),
            },
            inner_code="throttledRequest",
        )

    def _authorize(self, request: Request, drive: str | None = None) -> App:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.",
                             {"WWW-Authenticate": 'Bearer realm=""'})  # fmt: skip
        with self._state_lock:
            issued = self.tokens.get(token)
        if issued is None or issued.expires <= self.clock.now():
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
                {"WWW-Authenticate": 'Bearer realm=""'},
            )
        if drive is not None and drive != self.drive_id:
            raise GraphError(404, "itemNotFound", "The resource could not be found.")
        return self.apps[issued.client_id]

    # -- token endpoint ----------------------------------------------------

    def token(self, request: Request, tenant: str) -> Response:
        form = request.form
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        if request.authorization and request.authorization.type == "basic":
            client_id = request.authorization.username
            secret = request.authorization.password
        if tenant != self.tenant_id:
            return aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return aad_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if not form.get("scope"):
            return aad_error(
                400, "invalid_request", 900144,
                "The request body must contain the following parameter: 'scope'.",
            )  # fmt: skip
        if form.get("scope") != GRAPH_SCOPE:
            return aad_error(
                400, "invalid_scope", 1002012,
                f"The provided value for scope {form.get('scope')} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )  # fmt: skip
        app = self.apps.get(client_id or "")
        if app is None:
            return aad_error(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )  # fmt: skip
        if not secret:
            return aad_error(
                401, "invalid_client", 7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )  # fmt: skip
        if not hmac.compare_digest(secret.encode(), app.secret.encode()):
            return aad_error(
                401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                "is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )  # fmt: skip
        access_token = "eyJ0eXAiOiJKV1QiLCJub25jZSI6" + secrets.token_urlsafe(48)
        with self._state_lock:
            self.tokens[access_token] = IssuedToken(
                str(client_id), self.clock.now() + timedelta(seconds=TOKEN_LIFETIME_S)
            )
        return json_response(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_S,
                "ext_expires_in": TOKEN_LIFETIME_S,
                "access_token": access_token,
            },
            headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
        )

    # -- delta -------------------------------------------------------------

    def delta(self, request: Request, drive: str, folder: str = "") -> Response:
        self._authorize(request, drive)
        expand = request.args.get("$expand") or request.args.get("expand") or ""
        if "listitem" in expand.lower():
            raise GraphError(
                400, "invalidRequest", "One of the provided arguments is not acceptable."
            )
        scope = folder.strip("/")
        top = _top(request.args.get("$top") or request.args.get("top"))
        now = self.clock.now().timestamp()
        token = request.args.get("token")
        with self.library.lock:
            if scope and not self._folder_exists(scope):
                raise GraphError(404, "itemNotFound", "The resource could not be found.")
            if token is None:
                state = DeltaState(None, now, self.generation, now)
            elif token == "latest":
                entries = self._entries(request.host_url, scope, DeltaState(None, None, 0, now))
                last = max((entry.key for entry in entries), default=None)
                latest = DeltaState(last, None, self.generation, now)
                return json_response({"value": [], "@odata.deltaLink": self._link(request, latest)})
            else:
                state = DeltaState.decode(token)
                too_old = (
                    self.token_max_age_s is not None and now - state.issued > self.token_max_age_s
                )
                if state.generation < self.generation or too_old:
                    fresh = DeltaState(None, now, self.generation, now)
                    raise GraphError(
                        410,
                        "resyncRequired",
                        RESYNC_MESSAGE,
                        {"Location": self._link(request, fresh)},
                    )
            entries = sorted(
                self._entries(request.host_url, scope, state), key=lambda entry: entry.key
            )
        page, more = entries[:top], len(entries) > top
        position = page[-1].key if page else state.position
        body: dict[str, Any] = {
            "@odata.context": f"{request.host_url}v1.0/$metadata#Collection(driveItem)",
            "value": [entry.body for entry in page],
        }
        if more:
            following = DeltaState(position, state.fresh, state.generation, now)
            body["@odata.nextLink"] = self._link(request, following)
        else:
            body["@odata.deltaLink"] = self._link(
                request, DeltaState(position, None, state.generation, now)
            )
        return json_response(body)

    def _link(self, request: Request, state: DeltaState) -> str:
        """The same request with the new token; the other options are kept."""
        params = [(key, value) for key, value in request.args.items(multi=True) if key != "token"]
        params.append(("token", state.encode()))
        return f"{request.base_url}?{urlencode(params)}"

    def _folder_exists(self, scope: str) -> bool:
        return any(
            (self.folder_of(asset) + "/").startswith(scope + "/") for asset in self.library.live()
        )

    def _entries(self, host: str, scope: str, state: DeltaState) -> list[Entry]:
        """Everything in scope changed after the state's position: the root or
        scope folder and folders (as of the first file in them), live files,
        and tombstones (in a fresh enumeration only those deleted after it began)."""

        def after(key: tuple[float, int, str]) -> bool:
            return state.position is None or key > tuple(state.position)

        def in_scope(path: str) -> bool:
            return not scope or path == scope or path.startswith(scope + "/")

        entries: list[Entry] = []
        folders: dict[str, datetime] = {"": self.started - timedelta(days=1)}
        for asset in self.library.assets.values():
            parts = self.folder_of(asset).split("/") if self.folder_of(asset) else []
            for depth in range(1, len(parts) + 1):
                path = "/".join(parts[:depth])
                folders[path] = min(folders.get(path, asset.created), asset.created)
        for path, moment in folders.items():
            key = (moment.timestamp(), 0, self.folder_id(path))
            if in_scope(path) and (not scope or path) and after(key):
                entries.append(Entry(key, self._folder_item(host, path, moment)))
        for asset in self.library.assets.values():
            if not in_scope(self.folder_of(asset)) and scope:
                continue
            key = (asset.modified.timestamp(), 1, self.item_id(asset.id))
            if not after(key):
                continue
            if asset.deleted:
                if state.fresh is None or asset.modified.timestamp() > state.fresh:
                    entries.append(Entry(key, self._deleted_item(asset)))
                continue
            entries.append(Entry(key, self.drive_item(host, asset, in_delta=True)))
        return entries

    # -- items -------------------------------------------------------------

    def item(self, request: Request, drive: str, item_id: str) -> Response:
        self._authorize(request, drive)
        with self.library.lock:
            asset = self._asset(item_id)
            body = self.drive_item(request.host_url, asset)
            expand = request.args.get("$expand") or request.args.get("expand") or ""
            if "listitem" in expand.lower():
                body["listItem"] = self.list_item_json(asset, with_fields="fields" in expand)
        return json_response(_selected(body, request))

    def content(self, request: Request, drive: str, item_id: str) -> Response:
        self._authorize(request, drive)
        with self.library.lock:
            asset = self._asset(item_id)
            location = self._download_url(self.download_host or request.host_url, asset)
        return Response(status=302, headers={"Location": location})

    def download(self, request: Request, site: str) -> Response:
        """The preauthenticated URL: no Authorization needed (any sent is ignored)."""
        guid = request.args.get("UniqueId", "")
        self._check_signature("download", guid, request.args.get("tempauth", ""))
        with self.library.lock:
            for asset in self.library.assets.values():
                if self._guid(asset) == guid and not asset.deleted and site == self.site:
                    return image_response(asset.data, asset.mime_type)
        raise GraphError(404, "itemNotFound", "File Not Found.")

    # -- thumbnails --------------------------------------------------------

    def _thumbnail_size(self, asset: StoredAsset, size: str) -> tuple[int, int, bool]:
        if size in STANDARD_THUMBNAILS:
            box_width, box_height, crop = STANDARD_THUMBNAILS[size]
        else:
            match = CUSTOM_THUMBNAIL.match(size)
            if not match or not int(match.group(1)) or not int(match.group(2)):
                raise GraphError(400, "invalidRequest", f"Invalid thumbnail size '{size}'.")
            box_width, box_height = int(match.group(1)), int(match.group(2))
            crop = bool(match.group(3))
        if crop:
            return box_width, box_height, True
        if self.max_thumbnail_side is not None:
            box_width = min(box_width, self.max_thumbnail_side)
            box_height = min(box_height, self.max_thumbnail_side)
        width, height = fit_within(asset, box_width, box_height)
        return width, height, False

    def _thumbnail_json(self, request: Request, asset: StoredAsset, size: str) -> dict[str, Any]:
        width, height, _ = self._thumbnail_size(asset, size)
        return {
            "width": width,
            "height": height,
            "url": self._thumbnail_url(
                self.download_host or request.host_url, self.item_id(asset.id), size
            ),
        }

    def _thumbnail_names(self, request: Request) -> list[str]:
        selected = request.args.get("$select") or request.args.get("select")
        if not selected:
            return ["small", "medium", "large"]
        return [name.strip() for name in selected.split(",") if name.strip() and name != "id"]

    def thumbnail_sets(self, request: Request, drive: str, item_id: str) -> Response:
        self._authorize(request, drive)
        with self.library.lock:
            asset = self._asset(item_id)
            thumbnail_set: dict[str, Any] = {"id": "0"}
            for name in self._thumbnail_names(request):
                thumbnail_set[name] = self._thumbnail_json(request, asset, name)
        return json_response({"value": [thumbnail_set]})

    def thumbnail_set(self, request: Request, drive: str, item_id: str, set_id: str) -> Response:
        self._authorize(request, drive)
        if set_id != "0":
            raise GraphError(404, "itemNotFound", "The resource could not be found.")
        with self.library.lock:
            asset = self._asset(item_id)
            body: dict[str, Any] = {"id": "0"}
            for name in self._thumbnail_names(request):
                body[name] = self._thumbnail_json(request, asset, name)
        return json_response(body)

    def thumbnail(
        self, request: Request, drive: str, item_id: str, set_id: str, size: str
    ) -> Response:
        self._authorize(request, drive)
        if set_id != "0":
            raise GraphError(404, "itemNotFound", "The resource could not be found.")
        with self.library.lock:
            asset = self._asset(item_id)
            return json_response(self._thumbnail_json(request, asset, size))

    def thumbnail_content(
        self, request: Request, drive: str, item_id: str, set_id: str, size: str
    ) -> Response:
        self._authorize(request, drive)
        if set_id != "0":
            raise GraphError(404, "itemNotFound", "The resource could not be found.")
        with self.library.lock:
            asset = self._asset(item_id)
            self._thumbnail_size(asset, size)
            location = self._thumbnail_url(self.download_host or request.host_url, item_id, size)
        return Response(status=302, headers={"Location": location})

    def transform(self, request: Request) -> Response:
        item_id, size = request.args.get("docid", ""), request.args.get("size", "")
        self._check_signature("thumbnail", f"{item_id}:{size}", request.args.get("tempauth", ""))
        with self.library.lock:
            asset = self._asset(item_id)
            width, height, crop = self._thumbnail_size(asset, size)
        if not crop:
            return image_response(scaled(asset, width, height))
        if width == height:
            return image_response(square_crop(asset, width))
        return image_response(_rendition(asset.data, width, height, True, 82))

    # -- list item and its fields -----------------------------------------------

    def list_item(self, request: Request, drive: str, item_id: str) -> Response:
        self._authorize(request, drive)
        expand = request.args.get("$expand") or request.args.get("expand") or ""
        with self.library.lock:
            asset = self._asset(item_id)
            return json_response(self.list_item_json(asset, with_fields="fields" in expand))

    def fields(self, request: Request, drive: str, item_id: str) -> Response:
        app = self._authorize(request, drive)
        with self.library.lock:
            asset = self._asset(item_id)
            if request.method == "GET":
                return json_response(self.field_values(asset))
            if not app.roles & {"Sites.ReadWrite.All", "Sites.Manage.All", "Sites.FullControl.All"}:
                raise GraphError(403, "accessDenied", "Access denied")
            expected = request.headers.get("If-Match")
            if expected and expected not in ("*", self._etag(asset)):
                raise GraphError(
                    412,
                    "resourceModified",
                    "The resource has changed since the caller last read it.",
                )
            try:
                changes = json.loads(request.get_data() or b"null")
            except ValueError as exc:
                raise GraphError(400, "BadRequest", "Unable to read JSON request payload.") from exc
            self._validate_fields(changes)
            self._apply_fields(asset, changes)
            return json_response(self.field_values(asset))


def graph_error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    inner_code: str | None = None,
) -> Response:
    """Graph's error body: code, message and an innerError with the request's
    id and date (and SharePoint's own code, when it has one)."""
    request_id = str(uuid.uuid4())
    inner: dict[str, Any] = {"code": inner_code} if inner_code else {}
    inner |= {
        "date": datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": request_id,
    }
    return json_response(
        {"error": {"code": code, "message": message, "innerError": inner}},
        status=status,
        headers=headers,
    )


def aad_error(status: int, error: str, number: int, description: str) -> Response:
    """The identity platform's token error: error, error_description starting
    with the AADSTS number, error_codes, trace and correlation ids."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    moment = datetime.now().strftime("%Y-%m-%d %H:%M:%SZ")
    return json_response(
        {
            "error": error,
            "error_description": (
                f"AADSTS{number}: {description} Trace ID: {trace} Correlation ID: "
                f"{correlation} Timestamp: {moment}"
            ),
            "error_codes": [number],
            "timestamp": moment,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={number}",
        },
        status=status,
    )


def _graph_time(text: str) -> str:
    """A date as Graph prints date-times: ISO 8601 in UTC with a Z."""
    return text if "T" in text else f"{text}T00:00:00Z"


def _top(value: str | None) -> int:
    if value is None:
        return DEFAULT_TOP
    if not value.isdigit() or int(value) < 1:
        raise GraphError(400, "invalidRequest", f"Invalid value '{value}' for $top.")
    return min(int(value), MAX_TOP)


def _selected(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """`$select`: only the properties named (and the id)."""
    selected = request.args.get("$select") or request.args.get("select")
    if not selected:
        return body
    names = {name.strip() for name in selected.split(",")} | {"id"}
    return {key: value for key, value in body.items() if key in names}


# -- the contract suite's harness ------------------------------------------------

DAMDUP_COLUMNS = ("DamdupMarks", "DamdupCluster", "DamdupCanonical")


class SharePointHarness(EmulatorHarness):
    """One document library reached with an app registration's client
    credentials. Location and department are list columns (`Location`,
    `Department`) and the date is the photo's `takenDateTime`, where the
    adapter's default mapping reads them; marks go into three text columns."""

    kind = "sharepoint"
    # Every Graph call of a listing (delta and the per-item metadata reads);
    # downloads go to the preauthenticated URLs outside it.
    listing_path = "/v1.0/drives/"
    emulator: GraphEmulator

    def __init__(self) -> None:
        super().__init__(GraphEmulator(tenant_id=TENANT_ID, apps={CLIENT_ID: App(CLIENT_SECRET)}))

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": f"{self.url}v1.0/",
            "token_url": f"{self.url}{TENANT_ID}/oauth2/v2.0/token",
            "tenant_id": TENANT_ID,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "drive_id": self.emulator.drive_id,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return SharePoint(SharePointSettings(**self.settings(**overrides)))

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"client_secret": "wrong~secret~for~tests~9876543210"}

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        columns = {"location": "Location", "department": "Department"}
        placed: dict[str, Any] = {
            "fields": {columns[key]: value for key, value in metadata.items() if key in columns}
        }
        if "date" in metadata:
            placed["taken"] = metadata["date"]
        return placed

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        asset = self.emulator.library.add(name, data, self.place_metadata(metadata or {}))
        return self.emulator.item_id(asset.id)

    def touch(self, asset_id: str) -> None:
        # An editor retitles the photo: modified, same content.
        self.emulator.set_fields(asset_id, {"Title": f"Muokattu {uuid.uuid4().hex[:8]}"})

    def remove(self, asset_id: str) -> None:
        self.emulator.library.remove(self.emulator.library_id(asset_id))

    def reset(self) -> None:
        self.emulator.reset()
        assert self.proxy is not None
        self.proxy.clear()

    # -- marks ---------------------------------------------------------------

    def _values(self, asset_id: str) -> tuple[dict[str, Any], StoredAsset]:
        with self.emulator.library.lock:
            asset = self.emulator.library.assets[self.emulator.library_id(asset_id)]
            return self.emulator.field_values(asset), asset

    def stored_marks(self, asset_id: str) -> Marks:
        values, _ = self._values(asset_id)
        return Marks.from_fields(
            {
                "damdup-marks": values.get("DamdupMarks"),
                "damdup-cluster": values.get("DamdupCluster"),
                "damdup-canonical": values.get("DamdupCanonical"),
            }
        )

    def set_foreign(self, asset_id: str) -> None:
        self.emulator.set_fields(
            asset_id, {"Title": "Temppeliaukion kirkko", "Photographer": "Kaisa Kuvaaja"}
        )

    def foreign_state(self, asset_id: str) -> Any:
        values, asset = self._values(asset_id)
        kept = {
            name: value
            for name, value in values.items()
            if name not in DAMDUP_COLUMNS and name not in BOOKKEEPING_FIELDS
        }
        return kept, asset.name, hashlib.sha256(asset.data).hexdigest()

    def changing(self, entry: Forwarded) -> bool:
        # Asking the token endpoint for a token changes nothing in the library.
        if entry.method == "POST" and "/oauth2/v2.0/token" in entry.path:
            return False
        return entry.method not in READING_METHODS
