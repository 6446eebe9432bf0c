"""A Nextcloud emulator: the WebDAV, SEARCH, preview and system-tag endpoints
damdup's `nextcloud` adapter meets, for one account's files.

Written from:
- WebDAV basics, https://docs.nextcloud.com/server/latest/developer_manual/client_apis/WebDAV/basic.html
  (`remote.php/dav/files/<user>/<path>`, PROPFIND with `oc:fileid`,
  `oc:owner-display-name`, `nc:has-preview`; HTTP Basic with an app password,
  anything else 401 with a Sabre error body).
- SEARCH, https://docs.nextcloud.com/server/latest/developer_manual/client_apis/WebDAV/search.html
  and nextcloud/server `apps/dav/lib/Files/FileSearchBackend.php`: a
  basicsearch on `remote.php/dav/` (an XML content type, else 501), `select`
  and `where` required (400), the scope `/files/<user>[/<folder>]`, the
  searchable properties (`getlastmodified`, `nc:upload_time`, `oc:size`,
  `oc:fileid`, `getcontenttype`, `displayname`, `oc:favorite`; `like` as SQL
  LIKE; datetimes as ATOM or UNIX seconds, anything else 0), the sortable
  ones (`oc:fileid` is not), 100 results when `nresults` is absent. Ties of
  the sort order come back in whatever order SQL likes: here in a shuffled
  order that changes with every request. icewind1991/SearchDAV
  `src/XML/Limit.php`: the offset `firstresult` in SearchDAV's namespace.
- File metadata (Nextcloud 28+ with the Photos app): `nc:metadata-photos-size`
  as `<width>`/`<height>` children without a namespace,
  `nc:metadata-photos-original_date_time` (UNIX seconds) and
  `nc:metadata-photos-place`.
- Dead properties: `apps/dav/lib/DAV/CustomPropertiesBackend.php`, kept per
  user (by file id here: the emulator moves no files), removed with the file;
  PROPPATCH answers 207 with a propstat per property; `{DAV:}` live
  properties are protected (403).
- Previews: `core/Controller/PreviewController.php` (`/index.php/core/preview`
  by `fileId`, `/index.php/core/preview.png` by `file`; `x`, `y` default 32,
  `a` default false (crop!), `mode` fill or cover, `forceIcon`; 0 sizes are
  400, a missing file 404) and `lib/private/Preview/Generator.php`
  (`calculateSize`: sizes snap to a power of four, at least 64, never past the
  "max" preview, which is the original fitted into 4096 x 4096; an
  aspect-keeping preview is the max preview resized to the long side).
  JPEG quality 80 (`preview_jpeg_quality`).
- System tags: `apps/dav/lib/SystemTag/SystemTagPlugin.php` and the
  `systemtags-relations/files/<file id>/<tag id>` collection: POST JSON to
  `systemtags/` creates a tag (201, Content-Location; 409 when it exists), PUT
  a relation assigns, DELETE unassigns, PROPFIND lists a file's tags.

Library metadata read: `folder` (the path inside the account's files),
`place`, `taken` (UNIX seconds), `owner` (display name).
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import math
import random
import re
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote, unquote

import requests
from PIL import Image, ImageOps
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter, Marks
from adapters.nextcloud import NAMESPACE, Nextcloud, NextcloudSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import Emulator, Library, StoredAsset, scaled, square_crop
from tests.servers.webdav import FOREIGN

USER = "damdup"  # login name and user id
DISPLAY_NAME = "damdup-lukija"
APP_PASSWORD = "Fakes-AppPa-sswor-dForT-ests0"  # obviously fake
OC, NC, SABRE = "http://owncloud.org/ns", "http://nextcloud.org/ns", "http://sabredav.org/ns"
SEARCHDAV = "https://github.com/icewind1991/SearchDAV/ns"
PREVIEW_MAX = 4096  # preview_max_x, preview_max_y
PREVIEW_QUALITY = 80
PREVIEWABLE = frozenset({"image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp"})
FOLDERS = ("Kuvat", "Kuvat/Tapahtumat 2024", "")  # contract assets go round these
for _prefix, _uri in (("d", "DAV:"), ("oc", OC), ("nc", NC), ("s", SABRE)):
    ET.register_namespace(_prefix, _uri)

SEARCHABLE = {
    "{DAV:}displayname", "{DAV:}getcontenttype", "{DAV:}getlastmodified",
    f"{{{NC}}}upload_time", f"{{{OC}}}size", f"{{{OC}}}favorite", f"{{{OC}}}fileid",
}  # fmt: skip
SORTABLE = SEARCHABLE - {f"{{{OC}}}fileid"}
DATETIMES = {"{DAV:}getlastmodified", f"{{{NC}}}upload_time"}


def php_round(value: float) -> int:
    """PHP's round(): halves away from zero."""
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def preview_size(
    width: int,
    height: int,
    x: int,
    y: int,
    crop: bool,
    mode: str = "fill",
    preview_max: int = PREVIEW_MAX,
) -> tuple[int, int]:
    """Generator::calculateSize, against the max preview (the original fitted
    into preview_max_x by preview_max_y, never enlarged)."""
    scale = min(1.0, preview_max / width, preview_max / height)
    max_w, max_h = php_round(width * scale), php_round(height * scale)
    w, h = float(x), float(y)
    if not crop:
        ratio = max_h / max_w
        if x == -1:
            w = h / ratio
        if y == -1:
            h = w * ratio
        ratio_h, ratio_w = h / max_h, w / max_w
        if (ratio_h > ratio_w) == (mode != "cover"):
            h = w * ratio
        else:
            w = h / ratio
    if h != max_h and w != max_w:
        pow4h = max(4 ** math.ceil(math.log(h) / math.log(4)), 64)
        pow4w = max(4 ** math.ceil(math.log(w) / math.log(4)), 64)
        ratio_h, ratio_w = h / pow4h, w / pow4w
        if ratio_h < ratio_w:
            w, h = pow4w, h / ratio_w
        else:
            w, h = w / ratio_h, pow4h
    if h > max_h:
        w, h = w / (h / max_h), max_h
    if w > max_w:
        w, h = max_w, h / (w / max_w)
    return php_round(w), php_round(h)


def _sql_like(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.S | re.I)


class NextcloudEmulator(Emulator):
    url_map = Map(
        [
            Rule("/remote.php/dav/", methods=["SEARCH"], endpoint="search"),
            Rule(
                "/remote.php/dav/files/<user>/<path:path>",
                methods=["GET", "PROPFIND", "PROPPATCH"],
                endpoint="file",
            ),
            Rule("/index.php/core/preview", methods=["GET"], endpoint="preview"),
            Rule("/index.php/core/preview.png", methods=["GET"], endpoint="preview"),
            Rule("/remote.php/dav/systemtags/", methods=["POST"], endpoint="create_tag"),
            Rule(
                "/remote.php/dav/systemtags-relations/files/<int:file_id>",
                methods=["PROPFIND"],
                endpoint="file_tags",
            ),
            Rule(
                "/remote.php/dav/systemtags-relations/files/<int:file_id>/<int:tag_id>",
                methods=["PUT", "DELETE"],
                endpoint="relation",
            ),
        ]
    )

    def __init__(self, library: Library | None = None) -> None:
        super().__init__(library)
        self.users = {USER: APP_PASSWORD}
        self.preview_max = PREVIEW_MAX  # config.php preview_max_x and preview_max_y
        self.properties: dict[tuple[str, int], dict[str, str]] = {}  # oc_properties
        self.tags: dict[int, str] = {}  # oc_systemtag: id -> name
        self.tagged: dict[int, set[int]] = {}  # oc_systemtag_object_mapping
        self._tag_ids = itertools.count(1)
        self._searches = itertools.count()
        self.lock = threading.RLock()

    # -- the account's files ---------------------------------------------

    @staticmethod
    def path_of(asset: StoredAsset) -> str:
        return "/".join(part for part in (asset.metadata.get("folder", ""), asset.name) if part)

    @staticmethod
    def etag(asset: StoredAsset) -> str:
        digest = hashlib.sha1(asset.data).hexdigest()
        return hashlib.md5(
            f"{asset.id}:{asset.modified.timestamp()}:{digest}".encode()
        ).hexdigest()[:13]

    def asset_at(self, path: str) -> StoredAsset | None:
        return next((a for a in self.library.live() if self.path_of(a) == path), None)

    def reset(self) -> None:
        with self.lock:
            self.library.reset()
            self.properties.clear()
            self.tags.clear()
            self.tagged.clear()

    def live_props(self, asset: StoredAsset) -> dict[str, Any]:
        """What PROPFIND and SEARCH can answer for a file, by Clark name."""
        size = ET.Element(f"{{{NC}}}metadata-photos-size")
        ET.SubElement(size, "width").text = str(asset.width)
        ET.SubElement(size, "height").text = str(asset.height)
        props: dict[str, Any] = {
            "{DAV:}getetag": f'"{self.etag(asset)}"',
            "{DAV:}getlastmodified": format_datetime(asset.modified.astimezone(UTC), usegmt=True),
            "{DAV:}getcontentlength": str(len(asset.data)),
            "{DAV:}getcontenttype": asset.mime_type,
            "{DAV:}displayname": asset.name,
            "{DAV:}resourcetype": "",
            f"{{{OC}}}fileid": asset.id,
            f"{{{OC}}}size": str(len(asset.data)),
            f"{{{OC}}}permissions": "RGDNVW",
            f"{{{OC}}}owner-id": USER,
            f"{{{OC}}}owner-display-name": asset.metadata.get("owner", DISPLAY_NAME),
            f"{{{NC}}}has-preview": "true" if asset.mime_type in PREVIEWABLE else "false",
            f"{{{NC}}}upload_time": str(int(asset.created.timestamp())),
            f"{{{NC}}}metadata-photos-size": size,
        }
        if asset.metadata.get("taken") is not None:
            taken = str(asset.metadata["taken"])
            props[f"{{{NC}}}metadata-photos-original_date_time"] = taken
        if asset.metadata.get("place"):
            props[f"{{{NC}}}metadata-photos-place"] = asset.metadata["place"]
        return props

    # -- serving ---------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        login = self._login(request)
        if login is None:
            return sabre_error(
                401,
                "NotAuthenticated",
                "No public access to this resource., Username or password was incorrect",
                {"WWW-Authenticate": 'Basic realm="Nextcloud", charset="UTF-8"'},
            )
        request.environ["nextcloud.user"] = login
        response = super().dispatch(request)
        # The server's clock is the one its modification times come from.
        response.headers["Date"] = format_datetime(self.library.clock.now(), usegmt=True)
        return response

    def _login(self, request: Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, secret = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == secret else None

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        name = {404: "NotFound", 405: "MethodNotAllowed", 400: "BadRequest"}.get(exc.code or 0)
        return sabre_error(exc.code or 500, name or "Exception", exc.description or "")

    # -- WebDAV ----------------------------------------------------------

    def file(self, request: Request, user: str, path: str) -> Response:
        asset = self.asset_at(unquote(path)) if user == request.environ["nextcloud.user"] else None
        if asset is None:
            return sabre_error(404, "NotFound", f"File with name {path} could not be located")
        if request.method == "GET":
            return Response(
                asset.data, content_type=asset.mime_type, headers={"ETag": f'"{self.etag(asset)}"'}
            )
        if request.method == "PROPPATCH":
            return self._proppatch(request, user, asset)
        body = request.get_data()
        names = [e.tag for e in ET.fromstring(body).iterfind("{DAV:}prop/*")] if body else []
        return multistatus([self._response(request, user, asset, names)])

    def _proppatch(self, request: Request, user: str, asset: StoredAsset) -> Response:
        update = ET.fromstring(request.get_data())
        statuses: list[tuple[str, int]] = []
        with self.lock:
            stored = self.properties.setdefault((user, int(asset.id)), {})
            planned = dict(stored)
            for action in update:
                for element in action.iterfind("{DAV:}prop/*"):
                    if element.tag.startswith("{DAV:}"):
                        statuses.append((element.tag, 403))
                    elif action.tag == "{DAV:}set":
                        planned[element.tag] = element.text or ""
                        statuses.append((element.tag, 200))
                    else:
                        planned.pop(element.tag, None)
                        statuses.append((element.tag, 204))
            if all(code < 300 for _, code in statuses):
                stored.clear()
                stored.update(planned)
            else:  # all or nothing: the others fail as dependencies
                statuses = [(name, code if code >= 300 else 424) for name, code in statuses]
        response = ET.Element("{DAV:}response")
        ET.SubElement(response, "{DAV:}href").text = request.path
        for name, code in statuses:
            propstat = ET.SubElement(response, "{DAV:}propstat")
            ET.SubElement(ET.SubElement(propstat, "{DAV:}prop"), name)
            ET.SubElement(
                propstat, "{DAV:}status"
            ).text = f"HTTP/1.1 {code} {STATUS_TEXT.get(code, '')}"
        return multistatus([response])

    def _response(
        self, request: Request, user: str, asset: StoredAsset, names: list[str]
    ) -> ET.Element:
        live = self.live_props(asset)
        dead = self.properties.get((user, int(asset.id)), {})
        found: dict[str, Any] = {}
        missing: list[str] = []
        for name in names or [*live, *dead]:  # no names: allprop, dead ones included
            if name in live:
                found[name] = live[name]
            elif name in dead and not name.startswith((f"{{{OC}}}", f"{{{NC}}}")):
                found[name] = dead[name]
            else:
                missing.append(name)
        response = ET.Element("{DAV:}response")
        href = f"/remote.php/dav/files/{quote(user)}/{quote(self.path_of(asset))}"
        ET.SubElement(response, "{DAV:}href").text = href
        for status, props in (("200 OK", found), ("404 Not Found", dict.fromkeys(missing, ""))):
            if not props:
                continue
            propstat = ET.SubElement(response, "{DAV:}propstat")
            prop = ET.SubElement(propstat, "{DAV:}prop")
            for name, value in props.items():
                if isinstance(value, ET.Element):
                    prop.append(value)
                else:
                    ET.SubElement(prop, name).text = value or None
            ET.SubElement(propstat, "{DAV:}status").text = f"HTTP/1.1 {status}"
        return response

    # -- SEARCH ----------------------------------------------------------

    def search(self, request: Request) -> Response:
        if not request.content_type or "xml" not in request.content_type:
            return sabre_error(
                501,
                "NotImplemented",
                "There was no plugin in the system that was willing to handle this SEARCH method.",
            )
        user = request.environ["nextcloud.user"]
        try:
            query = ET.fromstring(request.get_data()).find("{DAV:}basicsearch")
        except ET.ParseError as exc:
            return Response(f"Parse error: {exc}", status=400)
        if query is None:
            return sabre_error(
                400, "BadRequest", "Unexpected xml content for searchrequest, expected basicsearch"
            )
        select, where = query.find("{DAV:}select/{DAV:}prop"), query.find("{DAV:}where")
        if where is None or len(where) == 0:
            return Response("Parse error: Missing {DAV:}where from {DAV:}basicsearch", status=400)
        if select is None:
            return Response("Parse error: Missing {DAV:}select from {DAV:}basicsearch", status=400)
        scope = query.findtext("{DAV:}from/{DAV:}scope/{DAV:}href") or ""
        parts = unquote(scope).strip("/").split("/", 2)
        if len(parts) < 2 or parts[0] != "files" or parts[1] != user:
            return sabre_error(404, "NotFound", f"Invalid search scope {scope}")
        folder = parts[2] if len(parts) > 2 else ""
        try:
            assets = [
                a
                for a in self.library.live()
                if (not folder or self.path_of(a).startswith(folder + "/"))
                and self._matches(where[0], a)
            ]
            assets = self._ordered(assets, query.findall("{DAV:}orderby/{DAV:}order"))
        except ValueError as exc:
            return sabre_error(400, "BadRequest", str(exc))
        limit = query.find("{DAV:}limit")
        count = int(limit.findtext("{DAV:}nresults") or 0) if limit is not None else 0
        first = int(limit.findtext(f"{{{SEARCHDAV}}}firstresult") or 0) if limit is not None else 0
        page = assets[first : first + (count or 100)]
        names = [element.tag for element in select]
        return multistatus([self._response(request, user, asset, names) for asset in page])

    def _value(self, name: str, asset: StoredAsset) -> Any:
        values: dict[str, Any] = {
            "{DAV:}displayname": asset.name,
            "{DAV:}getcontenttype": asset.mime_type,
            "{DAV:}getlastmodified": int(asset.modified.timestamp()),
            f"{{{NC}}}upload_time": int(asset.created.timestamp()),
            f"{{{OC}}}size": len(asset.data),
            f"{{{OC}}}favorite": 0,
            f"{{{OC}}}fileid": int(asset.id),
        }
        return values[name]

    def _matches(self, operator: ET.Element, asset: StoredAsset) -> bool:
        kind = operator.tag.removeprefix("{DAV:}")
        if kind in ("and", "or"):
            results = [self._matches(child, asset) for child in operator]
            return all(results) if kind == "and" else any(results)
        if kind == "not":
            return not self._matches(operator[0], asset)
        if kind == "is-collection":
            return False
        prop = operator.find("{DAV:}prop")
        name = prop[0].tag if prop is not None and len(prop) else ""
        if name not in SEARCHABLE:
            raise ValueError(f"Unsupported comparison field {name}")
        literal = operator.findtext("{DAV:}literal") or ""
        value = self._value(name, asset)
        if kind == "like":
            return bool(_sql_like(literal).fullmatch(str(value)))
        wanted = _cast(name, literal)
        compare = {"eq": value == wanted, "gt": value > wanted, "gte": value >= wanted,
                   "lt": value < wanted, "lte": value <= wanted}  # fmt: skip
        if kind not in compare:
            raise ValueError(f"Unsupported operator {operator.tag}")
        return bool(compare[kind])

    def _ordered(self, assets: list[StoredAsset], orders: list[ET.Element]) -> list[StoredAsset]:
        # SQL orders ties as it likes: a fresh shuffle for every request.
        random.Random(next(self._searches)).shuffle(assets)
        for order in reversed(orders):
            name = order[0][0].tag if len(order) and len(order[0]) else ""
            if name not in SORTABLE:
                raise ValueError(f"{name} is not sortable")
            descending = order.find("{DAV:}descending") is not None
            values = {asset.id: self._value(name, asset) for asset in assets}
            assets.sort(key=lambda asset: values[asset.id], reverse=descending)
        return assets

    # -- previews --------------------------------------------------------

    def preview(self, request: Request) -> Response:
        args = request.args
        try:
            x, y = int(args.get("x", 32)), int(args.get("y", 32))
        except ValueError:
            return json_empty(400)
        keep_aspect = args.get("a", "false").lower() in ("1", "true")
        by_path = request.path.endswith(".png")
        wanted = args.get("file", "") if by_path else args.get("fileId", "-1")
        if x == 0 or y == 0 or wanted in ("", "-1"):
            return json_empty(400)
        asset = self.asset_at(unquote(wanted).strip("/")) if by_path else self.library.get(wanted)
        if asset is None or asset.mime_type not in PREVIEWABLE:
            return json_empty(404)  # no file, or no provider (forceIcon or not)
        crop = not keep_aspect
        mode = args.get("mode", "fill")
        width, height = preview_size(asset.width, asset.height, x, y, crop, mode, self.preview_max)
        if crop:
            data = (
                square_crop(asset, width, PREVIEW_QUALITY)
                if width == height
                else _crop(asset, width, height)
            )
        else:  # resizeCopy(max(w, h)) of the max preview
            long_side = max(width, height)
            ratio = asset.width / asset.height
            if ratio > 1:
                size = (long_side, php_round(long_side / ratio))
            else:
                size = (php_round(long_side * ratio), long_side)
            data = scaled(asset, *size, quality=PREVIEW_QUALITY)
        return Response(data, content_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    # -- system tags -----------------------------------------------------

    def create_tag(self, request: Request) -> Response:
        if request.mimetype != "application/json":
            return sabre_error(415, "UnsupportedMediaType", "")
        name = (request.get_json(silent=True) or {}).get("name")
        if not name:
            return sabre_error(400, "BadRequest", 'Missing "name" attribute')
        with self.lock:
            if name in self.tags.values():
                return sabre_error(409, "Conflict", "Tag already exists")
            tag_id = next(self._tag_ids)
            self.tags[tag_id] = name
        location = f"{request.host_url}remote.php/dav/systemtags/{tag_id}"
        return Response(status=201, headers={"Content-Location": location})

    def file_tags(self, request: Request, file_id: int) -> Response:
        if self.library.get(str(file_id)) is None:
            return sabre_error(404, "NotFound", "Files with id {file_id} could not be found")
        responses = []
        for tag_id, name in sorted(self.tags.items()):
            if file_id not in self.tagged.get(tag_id, set()):
                continue
            response = ET.Element("{DAV:}response")
            ET.SubElement(response, "{DAV:}href").text = f"{request.path}/{tag_id}"
            propstat = ET.SubElement(response, "{DAV:}propstat")
            prop = ET.SubElement(propstat, "{DAV:}prop")
            ET.SubElement(prop, f"{{{OC}}}id").text = str(tag_id)
            ET.SubElement(prop, f"{{{OC}}}display-name").text = name
            ET.SubElement(propstat, "{DAV:}status").text = "HTTP/1.1 200 OK"
            responses.append(response)
        return multistatus(responses)

    def relation(self, request: Request, file_id: int, tag_id: int) -> Response:
        if self.library.get(str(file_id)) is None or tag_id not in self.tags:
            return sabre_error(404, "NotFound", "Tag or file not found")
        with self.lock:
            tagged = self.tagged.setdefault(tag_id, set())
            if request.method == "PUT":
                if file_id in tagged:
                    return sabre_error(409, "Conflict", "Tag already assigned")
                tagged.add(file_id)
                return Response(status=201)
            tagged.discard(file_id)
        return Response(status=204)


STATUS_TEXT = {200: "OK", 204: "No Content", 403: "Forbidden", 424: "Failed Dependency"}


def _cast(name: str, literal: str) -> Any:
    """FileSearchBackend::castValue: datetimes as UNIX seconds or ATOM (else
    0), integers as integers, the rest as text."""
    if name in DATETIMES:
        if literal.strip().isdigit():
            return int(literal)
        try:
            return int(datetime.fromisoformat(literal.strip()).timestamp())
        except ValueError:
            return 0
    if name in (f"{{{OC}}}size", f"{{{OC}}}fileid", f"{{{OC}}}favorite"):
        return int(literal) if literal.strip().lstrip("-").isdigit() else 0
    return literal


def _crop(asset: StoredAsset, width: int, height: int) -> bytes:
    with Image.open(io.BytesIO(asset.data)) as opened:
        rgb = ImageOps.exif_transpose(opened).convert("RGB")
    out = io.BytesIO()
    ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=PREVIEW_QUALITY
    )
    return out.getvalue()


def multistatus(responses: list[ET.Element]) -> Response:
    root = ET.Element("{DAV:}multistatus")
    root.extend(responses)
    body = b'<?xml version="1.0"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return Response(body, status=207, content_type="application/xml; charset=utf-8")


def sabre_error(
    status: int, exception: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    root = ET.Element("{DAV:}error")
    ET.SubElement(root, f"{{{SABRE}}}exception").text = f"Sabre\\DAV\\Exception\\{exception}"
    ET.SubElement(root, f"{{{SABRE}}}message").text = message
    body = b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(
        root, encoding="utf-8", xml_declaration=False
    )
    return Response(
        body, status=status, headers=headers, content_type="application/xml; charset=utf-8"
    )


def json_empty(status: int) -> Response:
    """A DataResponse([]) of the preview controller."""
    return Response(json.dumps([]), status=status, content_type="application/json; charset=utf-8")


class NextcloudHarness(EmulatorHarness):
    """One account whose files are spread over a few folders; metadata from
    Photos (place, taken) and the owner's display name as the department."""

    kind = "nextcloud"
    listing_path = "/remote.php/dav/"

    def __init__(self) -> None:
        super().__init__(NextcloudEmulator())
        self.nextcloud: NextcloudEmulator = self.emulator  # type: ignore[assignment]
        assert self.proxy is not None
        self.session = requests.Session()
        self.session.auth = (USER, APP_PASSWORD)
        self.session.trust_env = False
        self._added = 0

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "username": USER,
            "app_password": APP_PASSWORD,
            "metadata": {"location": "place", "date": "taken", "department": "owner"},
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return Nextcloud(NextcloudSettings(**self.settings(**overrides)))

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        placed: dict[str, Any] = {"folder": FOLDERS[self._added % len(FOLDERS)]}
        self._added += 1
        if "location" in metadata:
            placed["place"] = metadata["location"]
        if "date" in metadata:  # Photos keeps EXIF local time as if UTC
            taken = datetime.fromisoformat(metadata["date"] + "T12:00:00+00:00")
            placed["taken"] = int(taken.timestamp())
        if "department" in metadata:
            placed["owner"] = metadata["department"]
        return placed

    def reset(self) -> None:
        self.nextcloud.reset()
        self._added = 0
        assert self.proxy is not None
        self.proxy.clear()

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"app_password": "Wrong-AppPa-sswor-dForT-ests0"}

    def _dav(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The platform's own API, straight to the emulator (not the proxy)."""
        answer = self.session.request(method, self.nextcloud.base_url + path, timeout=10, **kwargs)
        answer.raise_for_status()
        return answer

    def _file_path(self, asset_id: str) -> str:
        asset = self.nextcloud.library.assets[asset_id]
        return f"remote.php/dav/files/{USER}/{quote(self.nextcloud.path_of(asset))}"

    def stored_marks(self, asset_id: str) -> Marks:
        stored = self.nextcloud.properties.get((USER, int(asset_id)), {})  # oc_properties
        names = ("damdup-marks", "damdup-cluster", "damdup-canonical")
        return Marks.from_fields({name: stored.get(f"{{{NAMESPACE}}}{name}") for name in names})

    def set_foreign(self, asset_id: str) -> None:
        update = ET.Element("{DAV:}propertyupdate")
        prop = ET.SubElement(ET.SubElement(update, "{DAV:}set"), "{DAV:}prop")
        for name, value in FOREIGN.items():
            ET.SubElement(prop, name).text = value
        self._dav("PROPPATCH", self._file_path(asset_id), data=ET.tostring(update))
        created = self._dav("POST", "remote.php/dav/systemtags/", json={"name": "Kaupunginmuseo"})
        tag_id = created.headers["Content-Location"].rsplit("/", 1)[-1]
        self._dav("PUT", f"remote.php/dav/systemtags-relations/files/{asset_id}/{tag_id}")

    def foreign_state(self, asset_id: str) -> Any:
        stored = self.nextcloud.properties.get((USER, int(asset_id)), {})
        others = {name: value for name, value in stored.items() if NAMESPACE not in name}
        tags = self._dav(
            "PROPFIND",
            f"remote.php/dav/systemtags-relations/files/{asset_id}",
            headers={"Depth": "1"},
        )
        names = sorted(
            e.text or "" for e in ET.fromstring(tags.content).iter(f"{{{OC}}}display-name")
        )
        data = self._dav("GET", self._file_path(asset_id)).content
        asset = self.nextcloud.library.assets[asset_id]
        return others, names, hashlib.sha256(data).hexdigest(), self.nextcloud.etag(asset)

    def close(self) -> None:
        super().close()
        self.session.close()
