"""A ResourceSpace emulator, written from the published API documentation and
the API entry point's source:

- https://www.resourcespace.com/knowledge-base/api/ (signing: `sign` is the
  sha256 hex of the user's private key followed by the query string without
  `sign`; a wrong one is answered 401 with the text "Invalid signature")
- https://www.resourcespace.com/knowledge-base/api/do_search (structured
  `fetchrows` "offset,rows" since 10.3 answers {"total", "data"})
- https://www.resourcespace.com/knowledge-base/api/get_resource_path (an array
  of refs answers {ref: url}; a resource the user may not download gets "")
- https://www.resourcespace.com/knowledge-base/api/get_resource_all_image_sizes
- https://www.resourcespace.com/knowledge-base/api/get_resource_field_data
- https://www.resourcespace.com/knowledge-base/api/get_resource_data
- https://www.resourcespace.com/knowledge-base/api/update_field (the field by
  ref or shortname; a blank value unsets it)
- https://www.resourcespace.com/knowledge-base/api/update_related_resource
  (comma separated refs; add=1 relates, add=0 unrelates)
- https://www.resourcespace.com/knowledge-base/api/get_related_resources
  (refs related either way round, as strings)
- https://www.resourcespace.com/knowledge-base/api/get_edit_access
- include/api_bindings.php: api_update_field() answers false without edit
  access to the resource or the field, for an unknown field or resource;
  api_update_related_resource() answers false when $enable_related_resources
  is off or `add` is neither 0 nor 1; write functions may be called by GET or
  POST unless the API is used in native mode. update_field moves the
  resource's `modified`, not its file columns. api_get_resource_field_data()
  passes every value through i18n_get_translated() (include/language_functions.php):
  a value is trimmed, and one holding "~" is read as "~en:…~fi:…"
  translations (split at commas first).
- api/index.php and include/api_functions.php (montala-ltd/ResourceSpace_Trunk):
  parameters come as param1..paramN or by name, missing ones take the PHP
  default; an unknown function echoes PHP `false`, i.e. an empty body; `sign`,
  `authmode` and `pretty` are cut from the query before it is checked.
- dbstruct/data_preview_size.txt: the default preview sizes, every one a
  scale-to-fit box (thm 200x200, pre 900x540, scr 1400x800, lpr 2000x2000,
  hpr full size, col 100x75); `padtosize` pads a size to its whole box, which
  some installations turn on for even thumbnail grids. create_previews_using_im()
  always makes pre, thm and col (never enlarged), scr and hpr for originals
  that are no JPEG, and any other size only for an original larger than its box.
- dbstruct/data_resource_type_field.txt: the default fields (3 country, 8 title,
  10 credit, 12 date, ...). Search results carry `field<N>` only for the
  "resource table joins": the display fields 8, 3, 12 plus `$data_joins`.

Checked against the real server (tests/servers/resourcespace_real.py and
tests/adapters/test_resourcespace_real.py), which showed what the documents do
not say, and which this emulator now does the same way:
- numbers come as JSON numbers (mysqlnd's native types), dates as
  "YYYY-MM-DD HH:MM:SS" in the database's time zone; "/" is escaped as PHP does;
- do_search's `total` is a count cached for up to 30 minutes
  ($cache_search_count, the "schema" query cache), corrected only when a page
  contradicts it (sql_limit_with_total_count());
- new installations set $hide_real_filepath: file addresses are
  pages/download.php?ref=..&size=..&ext=..&...&access_key=<key>, a key made
  anew at every call (generate_temp_download_key(), valid 24 hours), and the
  file is served by download.php only with a valid key (`hide_real_filepath=False`
  gives the older /filestore/ paths);
- delete_resource moves a resource to archive state 3 ($resource_deletion_state);
  it keeps answering get_resource_data, its fields, sizes and files, and a
  `!list<ref>` search (special searches for lists and collections ignore
  `archive`); a second delete removes it;
- get_resource_field_data answers every field, values empty, for a resource
  that does not exist; get_related_resources answers refs as numbers;
- download.php without a valid key redirects to login.php; downloading an
  original (not a preview) is logged, which moves the resource's `modified`;
- an upload reads the photo's EXIF with ExifTool: DateTimeOriginal into
  field 12 (the date), the GPS position into geo_lat/geo_long; the title
  (field 8) is read from IPTC or XMP only, so it stays empty for a file name.
It has no API rate limit and rejects no parameter: an unknown `order_by` falls
back to relevance, an invalid `sort` to ascending.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

import requests
from PIL import Image, ImageOps
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter, Marks
from adapters.resourcespace import ResourceSpace, ResourceSpaceSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import Emulator, Library, StoredAsset, fit_within, image_response, scaled
from tests.servers.faults import Forwarded

# Obviously fake credentials for the emulator only.
USERNAME = "damdup"
PRIVATE_KEY = "fake-resourcespace-private-key-for-tests-0123456789"
SCRAMBLE_KEY = "fake-scramble-key"
# $api_resource_path_expiry_hours: how long a download key is good for.
DOWNLOAD_KEY_HOURS = 24

# The display fields every installation joins into search results
# ($thumbs_display_fields, $list_display_fields, $sort_fields by default).
DEFAULT_JOINS = (8, 3, 12)


@dataclass(frozen=True)
class Field:
    ref: int
    name: str
    title: str
    type: int
    order_by: int


DEFAULT_FIELDS = (
    Field(8, "title", "Title", 0, 10),
    Field(18, "caption", "Caption", 1, 20),
    Field(1, "keywords", "Keywords - Other", 9, 60),
    Field(29, "person", "Named person(s)", 9, 70),
    Field(3, "country", "Country", 9, 80),
    Field(12, "date", "Date", 4, 90),
    Field(51, "originalfilename", "Original filename", 0, 100),
    Field(10, "credit", "Credit", 0, 120),
)


@dataclass(frozen=True)
class PreviewSize:
    code: str
    width: int
    height: int
    name: str


PREVIEW_SIZES = (
    PreviewSize("thm", 200, 200, "Thumbnail"),
    PreviewSize("pre", 900, 540, "Preview"),
    PreviewSize("scr", 1400, 800, "Screen"),
    PreviewSize("lpr", 2000, 2000, "Low resolution print"),
    PreviewSize("hpr", 999999, 999999, "High resolution print"),
    PreviewSize("col", 100, 75, "Collection"),
)

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
              "image/tiff": "tif", "image/bmp": "bmp"}  # fmt: skip

REQUIRED = object()  # a PHP parameter without default: missing means ""

# The API functions emulated, with their parameters in PHP order (param1 is the
# first) and defaults, as api_bindings.php declares them.
FUNCTIONS: dict[str, tuple[tuple[str, Any], ...]] = {
    "do_search": (
        ("search", REQUIRED), ("restypes", ""), ("order_by", "relevance"), ("archive", 0),
        ("fetchrows", -1), ("sort", "desc"), ("offset", 0),
    ),
    "get_resource_path": (
        ("ref", REQUIRED), ("not_used", None), ("size", ""), ("generate", True),
        ("extension", "jpg"), ("page", 1), ("watermarked", False), ("alternative", -1),
    ),
    "get_resource_all_image_sizes": (("resource", REQUIRED),),
    "get_resource_field_data": (("resource", REQUIRED),),
    "get_resource_data": (("resource", REQUIRED),),
    "update_field": (
        ("resource", REQUIRED), ("field", REQUIRED), ("value", REQUIRED), ("nodevalues", False),
    ),
    "update_related_resource": (("ref", REQUIRED), ("related", REQUIRED), ("add", 1)),
    "get_related_resources": (("ref", REQUIRED),),
    "get_edit_access": (("resource", REQUIRED),),
}  # fmt: skip
# The emulated functions that change nothing; any other changes something.
READING_FUNCTIONS = frozenset(
    {"do_search", "get_resource_path", "get_resource_all_image_sizes",
     "get_resource_field_data", "get_resource_data", "get_related_resources", "get_edit_access"}
)  # fmt: skip
FILE_NAME = re.compile(r"^(\d+)([a-z]*)_([0-9a-f]{15})\.([a-z0-9]+)$")


def mysql_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def php_json(value: Any) -> bytes:
    # PHP's json_encode escapes "/" and non-ASCII characters.
    return json.dumps(value).replace("/", "\\/").encode()


def php_int(value: Any) -> int:
    match = re.match(r"\s*(-?\d+)", str(value))
    return int(match.group(1)) if match else 0


def i18n_get_translated(text: str, language: str = "en", default_language: str = "en") -> str:
    """ResourceSpace's reading of "~en:Name~fi:Nimi" values, as the API
    answers field data in the user's language."""
    text = text.strip()
    if "," in text and "~" in text:
        return ",".join(i18n_get_translated(part, language) for part in text.split(","))
    parts = text.split("~")
    if len(parts) < 2:
        return text
    fallback = ""
    for number, part in enumerate(parts[1:], start=1):
        if part[2:3] != ":" and part[5:6] != ":" and part[:1] != ":":
            return text  # not a translated string
        colon = part.index(":")
        if part[:colon].lower() == language.lower():
            return part[colon + 1 :]
        if part[:colon].lower() == default_language.lower() or colon == 0 or number == 1:
            fallback = part[colon + 1 :]
    return fallback or text


def file_size_text(size_bytes: int) -> str:
    """formatfilesize(): what get_resource_all_image_sizes reports, for people."""
    if size_bytes < 1024 * 1024:
        return f"{round(size_bytes / 1024)}&nbsp;KB"
    return f"{size_bytes / 1024 / 1024:.1f}&nbsp;MB"


@lru_cache(maxsize=256)
def exif_facts(data: bytes) -> tuple[str | None, float | None, float | None]:
    """What ResourceSpace's upload reads from a photo's EXIF with ExifTool
    (extract_exif_comment()): field 12 from DateTimeOriginal (its
    `exiftool_field` in dbstruct/data_resource_type_field.txt), stored as
    "YYYY-MM-DD HH:MM:SS", and the GPS position as geo_lat/geo_long floats."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            taken = exif.get_ifd(0x8769).get(36867)  # ExifIFD DateTimeOriginal
            gps = exif.get_ifd(0x8825)
    except (OSError, ValueError):
        return None, None, None
    date = None
    if isinstance(taken, str) and re.fullmatch(r"\d{4}:\d\d:\d\d \d\d:\d\d:\d\d", taken.strip()):
        date = taken.strip().replace(":", "-", 2)

    def degrees(value: Any, ref: Any, negative: str) -> float | None:
        try:
            d, m, s = (float(part) for part in value)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        sign = -1.0 if str(ref).upper().startswith(negative) else 1.0
        return sign * (d + m / 60 + s / 3600)

    latitude = degrees(gps.get(2), gps.get(1), "S")
    longitude = degrees(gps.get(4), gps.get(3), "W")
    if latitude is None or longitude is None:
        return date, None, None
    return date, latitude, longitude


@lru_cache(maxsize=128)
def _padded(data: bytes, width: int, height: int, box_width: int, box_height: int) -> bytes:
    with Image.open(io.BytesIO(data)) as source:
        image = ImageOps.exif_transpose(source).convert("RGB")
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (box_width, box_height), (255, 255, 255))
        canvas.paste(image, ((box_width - width) // 2, (box_height - height) // 2))
        out = io.BytesIO()
        canvas.save(out, "JPEG", quality=82)
        return out.getvalue()


class ResourceSpaceEmulator(Emulator):
    url_map = Map(
        [
            Rule("/api/", endpoint="api", methods=["GET", "POST"]),
            Rule("/api/index.php", endpoint="api", methods=["GET", "POST"]),
            Rule("/filestore/<path:path>", endpoint="filestore", methods=["GET", "HEAD"]),
            Rule("/pages/view.php", endpoint="view", methods=["GET"]),
            Rule("/pages/download.php", endpoint="download", methods=["GET", "HEAD"]),
            Rule("/login.php", endpoint="login", methods=["GET", "POST"]),
        ]
    )

    def __init__(
        self,
        library: Library | None = None,
        *,
        users: dict[str, str] | None = None,
        data_joins: tuple[int, ...] = (),
        padded: tuple[str, ...] = (),
        file_checksums: bool = True,
        file_checksums_50k: bool = True,
        structured_fetchrows: bool = True,
        order_by_modified: bool = True,
        enable_remote_apis: bool = True,
        enable_related_resources: bool = True,
        read_only_users: tuple[str, ...] = (),
        hide_real_filepath: bool = True,
        resource_deletion_state: int | None = 3,
        cache_search_count: bool = True,
    ) -> None:
        super().__init__(library)
        self.hide_real_filepath = hide_real_filepath
        self.resource_deletion_state = resource_deletion_state
        self.cache_search_count = cache_search_count
        self.users = users if users is not None else {USERNAME: PRIVATE_KEY}
        # Users whose group may search and download but not edit ("e0" missing).
        self.read_only_users = set(read_only_users)
        self.enable_related_resources = enable_related_resources
        self.fields: dict[int, Field] = {field.ref: field for field in DEFAULT_FIELDS}
        self.data_joins = data_joins
        self.padded = set(padded)
        self.file_checksums = file_checksums
        self.file_checksums_50k = file_checksums_50k
        # Versions before 10.3 take `fetchrows` as one number; `modified` is a
        # newer order_by: older servers answer these as described in the docs.
        self.structured_fetchrows = structured_fetchrows
        self.order_by_modified = order_by_modified
        self.enable_remote_apis = enable_remote_apis
        self.reset_state()

    def reset_state(self) -> None:
        """Forget per-resource state kept beside the library."""
        self.extensions: dict[str, str] = {}  # a resource's file_extension, when not its image's
        self.download_denied: set[str] = set()
        self.related: set[frozenset[str]] = set()
        self._file_seen: dict[str, tuple[bytes, datetime]] = {}
        self._counts: dict[tuple[str, ...], int] = {}  # $cache_search_count
        self.purged: set[str] = set()  # deleted twice: gone for good

    def add_field(self, ref: int, name: str, title: str, type: int = 0) -> None:
        """A field an administrator added (Helsinki units add location, department...)."""
        self.fields[ref] = Field(ref, name, title, type, 200 + ref)

    # -- the API entry point -------------------------------------------------

    def api(self, request: Request) -> Response:
        query = request.query_string.decode("latin-1")
        if request.method == "POST" and request.form.get("query"):
            query = request.form["query"]  # a POSTed 'query' replaces the URL's
        params = dict(parse_qsl(query, keep_blank_values=True))
        for name, value in request.form.items():
            params.setdefault(name, value)
        authmode = params.get("authmode", "userkey")
        if not self.enable_remote_apis and authmode != "native":
            return self._text(403, "API not enabled.")
        signed = _unsigned_part(query, params)
        function = params.get("function", "")
        if function != "login" and not self._signature_valid(
            params.get("user", ""), signed, params.get("sign", "")
        ):
            return self._text(401, "Invalid signature")
        if function not in FUNCTIONS:
            return self._text(200, "")  # execute_api_call() returns false, echoed as ""
        request.environ["resourcespace.user"] = params.get("user", "")
        signature = FUNCTIONS[function]
        arguments: dict[str, Any] = {}
        for number, (name, default) in enumerate(signature, start=1):
            if f"param{number}" in params:
                arguments[name] = params[f"param{number}"]
            elif name in params:
                arguments[name] = params[name]
            else:
                arguments[name] = "" if default is REQUIRED else default
        body = php_json(getattr(self, function)(request, **arguments))
        if params.get("pretty", "").lower() in ("1", "true", "on", "yes"):
            body = json.dumps(json.loads(body), indent=4).encode()
        return Response(body, content_type="application/json")

    def _signature_valid(self, user: str, query: str, sign: str) -> bool:
        key = self.users.get(user)
        if key is None:
            return False
        ajax = query.find("&ajax=")
        if ajax >= 0:
            query = query[:ajax]
        return hashlib.sha256((key + query).encode()).hexdigest() == sign

    @staticmethod
    def _text(status: int, text: str) -> Response:
        # api/index.php sends its JSON content type before any check, so even
        # its plain-text refusals carry it.
        return Response(text, status=status, content_type="application/json")

    # -- functions -------------------------------------------------------------

    def do_search(
        self,
        request: Request,
        search: str,
        restypes: str,
        order_by: str,
        archive: Any,
        fetchrows: Any,
        sort: str,
        offset: Any,
    ) -> Any:
        offset_rows = php_int(offset)
        parts = [php_int(part) for part in str(fetchrows).strip(" []").split(",")]
        structured = len(parts) == 2 and self.structured_fetchrows
        found = self._search(str(search), str(restypes), str(order_by), str(archive), str(sort))
        if structured:
            start, count = max(parts[0], 0), max(parts[1], 0)
            chunk = found[start : start + count]
            return {
                "total": self._total(len(found), start, count, len(chunk), search, restypes,
                                     order_by, archive),
                "data": [self._row(a) for a in chunk[offset_rows:]],
            }  # fmt: skip
        limit = php_int(fetchrows)  # "0,50" on an old server is intval("0,50") = 0: all rows
        limit = limit if limit > 0 else -1
        if offset_rows > 0 and limit != -1:
            limit += offset_rows
        chosen = found if limit == -1 else found[:limit]
        return [self._row(asset) for asset in chosen[offset_rows:]]

    def _total(self, found: int, offset: int, rows: int, got: int, *key: Any) -> int:
        """sql_limit_with_total_count(): the count from the query cache when
        one is there, set right only when this page contradicts it."""
        cache_key = tuple(str(part) for part in key)
        total = self._counts.setdefault(cache_key, found) if self.cache_search_count else found
        if got == 0 and rows > 0:
            return min(total, offset)
        if got < rows or offset + got > total:
            return offset + got
        return total

    def _resource(self, ref: str) -> StoredAsset | None:
        """A resource in any archive state: a deleted one stays, in state 3."""
        if self.resource_deletion_state is None or ref in self.purged:
            return self.library.get(ref)
        with self.library.lock:
            return self.library.assets.get(ref)

    def _archive(self, asset: StoredAsset) -> int:
        if asset.deleted and self.resource_deletion_state is not None:
            return self.resource_deletion_state
        return 0

    def delete_resource(self, asset_id: str) -> None:
        """What delete_resource() does: to the deletion state first, then
        for good."""
        asset = self.library.assets[asset_id]
        if asset.deleted or self.resource_deletion_state is None:
            self.purged.add(asset_id)
        self.library.remove(asset_id)

    def get_resource_path(
        self,
        request: Request,
        ref: Any,
        not_used: Any,
        size: str,
        generate: Any,
        extension: str,
        page: Any,
        watermarked: Any,
        alternative: Any,
    ) -> Any:
        try:
            refs = json.loads(str(ref))
        except ValueError:
            refs = None
        if not isinstance(refs, list):
            refs = [refs]
        answer: dict[str, str] = {}
        for item in refs:
            key = str(item)
            asset = self._resource(key) if isinstance(item, int | str) else None
            if asset is None or key in self.download_denied:
                answer[key] = ""
                continue
            answer[key] = self._file_url(request, asset, str(size), str(extension or "jpg"))
        # count($return) > 1 ? $return : reset($return)
        return answer if len(answer) > 1 else next(iter(answer.values()), False)

    def get_resource_all_image_sizes(self, request: Request, resource: Any) -> Any:
        asset = self._resource(str(resource))
        if asset is None:
            return []
        extension = self._extension(asset)
        sizes = [
            {
                "size_code": "original",
                "extension": extension,
                "url": self._file_url(request, asset, "", extension),
                "width": asset.width,
                "height": asset.height,
                "filesize": file_size_text(len(asset.data)),
            }
        ]
        for code, (width, height, _) in self._previews(asset).items():
            sizes.append(
                {
                    "size_code": code,
                    "extension": "jpg",
                    "url": self._file_url(request, asset, code, "jpg"),
                    "width": width,
                    "height": height,
                    "filesize": file_size_text(len(self._preview_bytes(asset, code))),
                }
            )
        return sizes

    def get_resource_field_data(self, request: Request, resource: Any) -> Any:
        # A resource that does not exist gets every field, values empty.
        asset = self._resource(str(resource))
        return [
            {
                "resource_type_field": field.ref, "fref": field.ref, "frequired": 0,
                "ref": field.ref, "name": field.name, "title": field.title,
                "field_constraint": "", "type": field.type, "order_by": field.order_by,
                "keywords_index": 1, "partial_index": 0, "global": 1, "resource_column": "",
                "display_field": 1, "iptc_equiv": "", "display_template": "", "required": 0,
                "smart_theme_name": "", "exiftool_field": "", "advanced_search": 1,
                "simple_search": 0, "help_text": "", "display_as_dropdown": 0,
                "external_user_access": 1, "autocomplete_macro": "",
                "hide_when_uploading": 0, "hide_when_restricted": 0, "value_filter": "",
                "exiftool_filter": "",
                "omit_when_copying": "" if field in DEFAULT_FIELDS else 0, "tooltip_text": "",
                "regexp_filter": "", "display_condition": "", "onchange_macro": "",
                "linked_data_field": "",
                # NULL in dbstruct's rows; 0 in the fields an administrator adds.
                "automatic_nodes_ordering": "" if field in DEFAULT_FIELDS else 0,
                "fits_field": "", "personal_data": "" if field in DEFAULT_FIELDS else 0,
                "include_in_csv_export": 1, "browse_bar": 1,
                "read_only": 1, "active": 1, "full_width": 0, "tab": 0, "complete_index": 0,
                "sort_method": "" if field in DEFAULT_FIELDS else 0,
                "value": i18n_get_translated(
                    (self._value(asset, field.ref) if asset is not None else None) or ""
                ),
                "nodes": "", "resource_types": "1,2,3,4",
            }
            for field in sorted(self.fields.values(), key=lambda field: field.order_by)
        ]  # fmt: skip

    def get_resource_data(self, request: Request, resource: Any) -> Any:
        asset = self._resource(str(resource))
        if asset is None:
            return False
        row = self._row(asset)
        data: dict[str, Any] = {
            "ref": row["ref"], "title": None, "resource_type": row["resource_type"],
            "has_image": row["has_image"], "is_transcoding": 0, "hit_count": 0,
            "new_hit_count": 0, "creation_date": row["creation_date"], "rating": None,
            "user_rating": None, "user_rating_count": None, "user_rating_total": None,
            "country": None, "file_extension": row["file_extension"],
            "preview_extension": "jpg", "image_red": 0, "image_green": 0, "image_blue": 0,
            "thumb_width": row["thumb_width"], "thumb_height": row["thumb_height"],
            "archive": row["archive"], "access": 0, "colour_key": "", "created_by": 1,
            "file_path": None, "file_modified": row["file_modified"],
            "file_checksum": row["file_checksum"], "request_count": 0,
            "expiry_notification_sent": 0, "preview_tweaks": "0|1",
            "geo_lat": exif_facts(asset.data)[1], "geo_long": exif_facts(asset.data)[2],
            "mapzoom": None, "disk_usage": len(asset.data),
            "disk_usage_last_updated": row["creation_date"], "file_size": row["file_size"],
            "preview_attempts": 0, "modified": row["modified"],
            "last_verified": row["creation_date"], "integrity_fail": 0, "lock_user": None,
            "no_file": 0,
        }  # fmt: skip
        data.update({key: value for key, value in row.items() if key.startswith("field")})
        return data

    def update_field(
        self, request: Request, resource: Any, field: Any, value: Any, nodevalues: Any
    ) -> bool:
        asset = self._resource(str(resource))
        if asset is None or not self._may_edit(request):
            return False
        text = str(field)
        target = next(
            (f for f in self.fields.values() if str(f.ref) == text or f.name == text), None
        )
        if target is None:
            return False
        with self.library.lock:
            if str(value) == "":
                asset.metadata.pop(str(target.ref), None)  # a blank value unsets the field
                self.library.touch(asset.id)
            else:
                self.library.touch(asset.id, **{str(target.ref): str(value)})
        return True

    def update_related_resource(self, request: Request, ref: Any, related: Any, add: Any) -> bool:
        if not self.enable_related_resources or str(add).strip() not in ("0", "1"):
            return False
        if self.library.get(str(ref)) is None or not self._may_edit(request):
            return False
        for other in str(related).split(","):
            other = other.strip()
            if not other.isdigit() or other == str(ref):
                continue  # never related to itself
            pair = frozenset({str(ref), other})
            if str(add).strip() == "1":
                self.related.add(pair)
            else:
                self.related.discard(pair)
        return True

    def get_related_resources(self, request: Request, ref: Any) -> list[int]:
        if not self.enable_related_resources or self._resource(str(ref)) is None:
            return []
        others = {other for pair in self.related if str(ref) in pair for other in pair}
        return sorted(int(other) for other in others - {str(ref)})

    def get_edit_access(self, request: Request, resource: Any) -> bool:
        return self._resource(str(resource)) is not None and self._may_edit(request)

    def _may_edit(self, request: Request) -> bool:
        return request.environ.get("resourcespace.user") not in self.read_only_users

    # -- files and pages -------------------------------------------------------

    def filestore(self, request: Request, path: str) -> Response:
        match = FILE_NAME.match(path.rsplit("/", 1)[-1])
        asset = self.library.get(match.group(1)) if match else None
        if match is None or asset is None:
            return self._not_found(request)
        _, size, _, extension = match.groups()
        if path != self._file_path(asset.id, size, extension):
            return self._not_found(request)
        if size == "":
            if extension != self._extension(asset):
                return self._not_found(request)
            return image_response(asset.data, asset.mime_type)
        if size not in self._previews(asset) or extension != "jpg":
            return self._not_found(request)
        return image_response(self._preview_bytes(asset, size))

    def view(self, request: Request) -> Response:
        asset = self.library.get(request.args.get("ref", ""))
        if asset is None:
            return self._not_found(request)
        return Response(
            f"<!DOCTYPE html><html><head><title>{asset.name} - ResourceSpace</title></head>"
            f"<body><h1>Resource {asset.id}</h1></body></html>",
            content_type="text/html; charset=utf-8",
        )

    def login(self, request: Request) -> Response:
        return Response(
            "<!DOCTYPE html><html><head><title>ResourceSpace</title></head><body>"
            '<form method="post"><input type="text" name="username" id="username"/>'
            '<input type="password" name="password" id="password"/></form></body></html>',
            content_type="text/html; charset=UTF-8",
        )

    def http_error(self, request: Request, exc: Any) -> Response:
        return self._not_found(request, exc.code or 404)

    @staticmethod
    def _not_found(request: Request, status: int = 404) -> Response:
        # Apache's own page, as for any missing static file.
        return Response(
            '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN"><html><head>'
            "<title>404 Not Found</title></head><body><h1>Not Found</h1>"
            f"<p>The requested URL {request.path} was not found on this server.</p>"
            "</body></html>",
            status=status,
            content_type="text/html; charset=iso-8859-1",
        )

    # -- the library as ResourceSpace stores it --------------------------------

    def _search(
        self, search: str, restypes: str, order_by: str, archive: str, sort: str
    ) -> list[StoredAsset]:
        states = {php_int(state) for state in archive.split(",")}
        if restypes.strip() and "1" not in [kind.strip() for kind in restypes.split(",")]:
            return []  # every emulated resource is a Photo (resource type 1)
        # "Resources in a collection or list may be in any archive state".
        any_state = search.strip().startswith(("!list", "!collection"))
        with self.library.lock:
            found = [
                asset for asset in self.library.assets.values()
                if asset.id not in self.purged
                and (not asset.deleted or self.resource_deletion_state is not None)
                and (any_state or self._archive(asset) in states)
            ]  # fmt: skip
        search = search.strip()
        if search.startswith("!list"):
            # search_special() reads the refs from the first word; do_search
            # has already turned the words after it into keyword filters.
            special, _, search = search.partition(" ")
            wanted = set(special[5:].split(",")[0].split(":"))
            found = [asset for asset in found if asset.id in wanted]
        if search and search != "*":
            words = [w.lower() for w in re.split(r"[,\s]+", search) if w]
            found = [asset for asset in found if all(self._matches(asset, w) for w in words)]
        sort = sort.lower() if sort.lower() in ("asc", "desc") else "asc"

        def key(asset: StoredAsset) -> tuple[Any, ...]:
            ref = int(asset.id)
            if order_by == "modified" and self.order_by_modified:
                return (mysql_time(asset.modified), ref)
            if order_by == "resourceid":
                return (ref,)
            if order_by == "title":
                return (self._value(asset, 8) or "", ref)
            # relevance (also the fallback): without keywords every score ties,
            # then user rating and hits tie, then the date field, then ref.
            return (self._value(asset, 12) or "", ref)

        return sorted(found, key=key, reverse=sort == "desc")

    def _matches(self, asset: StoredAsset, word: str) -> bool:
        values = [self._value(asset, ref) or "" for ref in self.fields]
        return any(word in value.lower() for value in values)

    def _value(self, asset: StoredAsset, field: int) -> str | None:
        value = asset.metadata.get(str(field))
        # The title stays empty: an upload reads it from IPTC or XMP only.
        if value is None and field == 12:
            return exif_facts(asset.data)[0]
        if value is None and field == 51:
            return asset.name
        return None if value is None else str(value)

    def _extension(self, asset: StoredAsset) -> str:
        return self.extensions.get(asset.id, EXTENSIONS.get(asset.mime_type, "jpg"))

    def _file_modified(self, asset: StoredAsset) -> datetime:
        """When the file last changed: set on upload and replace, not on edits."""
        seen = self._file_seen.get(asset.id)
        if seen is None or seen[0] is not asset.data:
            seen = (asset.data, asset.created if seen is None else asset.modified)
            self._file_seen[asset.id] = seen
        return seen[1]

    def _checksum(self, asset: StoredAsset) -> str | None:
        if not self.file_checksums:
            return None
        if self.file_checksums_50k:  # the default: size and the first 50 kB
            return hashlib.md5(f"{len(asset.data)}_".encode() + asset.data[:50000]).hexdigest()
        return hashlib.md5(asset.data).hexdigest()

    def _previews(self, asset: StoredAsset) -> dict[str, tuple[int, int, bool]]:
        """The preview files create_previews_using_im() leaves, never
        enlarged: pre, thm and col always; scr and hpr always for originals
        that are no JPEG; any size for an original larger than its box.
        Widest box first, the order get_image_sizes() reads preview_size in
        (`ORDER BY width DESC`), which get_resource_all_image_sizes answers."""
        sizes: dict[str, tuple[int, int, bool]] = {}
        jpeg = asset.mime_type == "image/jpeg"
        for size in sorted(PREVIEW_SIZES, key=lambda size: size.width, reverse=True):
            larger = asset.width > size.width or asset.height > size.height
            made = (
                size.code in ("pre", "thm", "col")
                or (size.code in ("scr", "hpr") and not jpeg)
                or larger
            )
            if not made:
                continue
            width, height = fit_within(asset, size.width, size.height)
            if size.code in self.padded:
                sizes[size.code] = (size.width, size.height, True)
            else:
                sizes[size.code] = (width, height, False)
        return sizes

    def _preview_bytes(self, asset: StoredAsset, code: str) -> bytes:
        width, height, padded = self._previews(asset)[code]
        if padded:
            box = next(size for size in PREVIEW_SIZES if size.code == code)
            inner = fit_within(asset, box.width, box.height)
            return _padded(asset.data, *inner, box.width, box.height)
        return scaled(asset, width, height)

    def _row(self, asset: StoredAsset) -> dict[str, Any]:
        thumb = self._previews(asset).get("thm", (0, 0, False))
        checksum = self._checksum(asset)
        row: dict[str, Any] = {
            "score": 0,
            "ref": int(asset.id),
            "resource_type": 1,
            "has_image": 1,
            "is_transcoding": 0,
            "creation_date": mysql_time(asset.created),
            "rating": None,
            "user_rating": None,
            "user_rating_count": None,
            "user_rating_total": None,
            "file_extension": self._extension(asset),
            "preview_extension": "jpg",
            "image_red": 0,
            "image_green": 0,
            "image_blue": 0,
            "thumb_width": thumb[0],
            "thumb_height": thumb[1],
            "archive": self._archive(asset),
            "access": 0,
            "colour_key": "",
            "created_by": 1,
            "file_modified": mysql_time(self._file_modified(asset)),
            "file_checksum": checksum,
            "request_count": 0,
            "new_hit_count": 0,
            "expiry_notification_sent": 0,
            "preview_tweaks": "0|1",
            "file_path": None,
            "modified": mysql_time(asset.modified),
            "file_size": len(asset.data),
            "group_access": None,
            "user_access": None,
            "resultant_access": 0,
        }
        for field in sorted(set(DEFAULT_JOINS) | set(self.data_joins)):
            row[f"field{field}"] = self._value(asset, field)
        row["order_by"] = None
        row["total_hit_count"] = 0
        return row

    def _file_path(self, asset_id: str, size: str, extension: str) -> str:
        """get_resource_path(): one folder per digit, the last one scrambled,
        and a scrambled file name."""
        scramble = hashlib.md5(f"{asset_id}_{SCRAMBLE_KEY}".encode()).hexdigest()[:15]
        folders = "/".join(asset_id[:-1]) + ("/" if len(asset_id) > 1 else "")
        folders += f"{asset_id[-1]}_{scramble}/"
        name_hash = hashlib.md5(f"{asset_id}{size}{SCRAMBLE_KEY}".encode()).hexdigest()[:15]
        return f"{folders}{asset_id}{size}_{name_hash}.{extension}"

    def _file_url(self, request: Request, asset: StoredAsset, size: str, extension: str) -> str:
        exists = (size == "" and extension == self._extension(asset)) or (
            size in self._previews(asset) and extension == "jpg"
        )
        # ?v= is the file's mtime, only for files on disk (and only in
        # get_resource_all_image_sizes for download.php addresses).
        mtime = str(int(self._file_modified(asset).timestamp())) if exists else ""
        if self.hide_real_filepath:
            query = urlencode(
                [("ref", asset.id), ("size", size), ("ext", extension), ("page", "1"),
                 ("alternative", "-1"), ("watermarked", ""), ("k", ""), ("noattach", "true"),
                 ("v", mtime if request.args.get("function") != "get_resource_path" else "")]
            )  # fmt: skip
            user = request.environ.get("resourcespace.user", "")
            key = self._download_key(user, asset.id, size)
            return self.public_url(request, f"pages/download.php?{query}&access_key={key}")
        url = self.public_url(request, "filestore/" + self._file_path(asset.id, size, extension))
        return url + (f"?v={mtime}" if mtime else "")

    @staticmethod
    def _download_key(user: str, ref: str, size: str, moment: float | None = None) -> str:
        """generate_temp_download_key(): user, resource, size and time,
        encrypted with a fresh nonce, so every call gives another key."""
        nonce = secrets.token_hex(8)
        data = f"{nonce}:{user}:{ref}:{size}:{int(moment or time.time())}"
        mac = hashlib.sha256(f"{SCRAMBLE_KEY}{data}".encode()).hexdigest()
        return base64.b64encode(f"{data}@@{mac}".encode()).decode()

    def _key_valid(self, key: str, ref: str, size: str) -> bool:
        try:
            data, _, mac = base64.b64decode(key, validate=True).decode().rpartition("@@")
        except (ValueError, UnicodeDecodeError):
            return False
        if hashlib.sha256(f"{SCRAMBLE_KEY}{data}".encode()).hexdigest() != mac:
            return False
        parts = data.split(":")
        return (
            len(parts) == 5
            and parts[2:4] == [ref, size]
            and time.time() - int(parts[4]) < DOWNLOAD_KEY_HOURS * 3600
        )

    def download(self, request: Request) -> Response:
        """pages/download.php with a temporary access key, as the API's
        addresses are; the file inline, as noattach=true asks."""
        ref, size = request.args.get("ref", ""), request.args.get("size", "")
        asset = self._resource(ref)
        key = request.args.get("access_key", "")
        if not self._key_valid(key, ref, size):
            # No session and no key: authenticate.php sends the browser to log in.
            target = quote(request.full_path.rstrip("?"), safe="")
            return Response(status=302, headers={"Location": self.public_url(
                request, f"login.php?url={target}")})  # fmt: skip
        if asset is None:
            return self._not_found(request)
        if size == "":
            # An original's download is logged (resource_log), which moves
            # the resource's `modified` (update_timestamp), not its file's.
            with self.library.lock:
                asset.modified = self.library.clock.tick()
            return image_response(asset.data, asset.mime_type)
        if size not in self._previews(asset):
            return self._not_found(request)
        return image_response(self._preview_bytes(asset, size))


def _unsigned_part(query: str, params: dict[str, str]) -> str:
    """What api/index.php checks the signature against: the query string with
    `sign`, `authmode` and `pretty` cut out."""
    for name in ("sign", "authmode", "pretty"):
        if name in params:
            pattern = re.escape(f"{name}={params[name]}")
            query = re.sub(pattern, "!|!|", query, flags=re.IGNORECASE)
    return query.lstrip("!|&").replace("&!|!|", "")


class ResourceSpaceHarness(EmulatorHarness):
    kind = "resourcespace"
    listing_path = "/api/"  # every API call; files are under /filestore/

    # Where the default mapping (field3, field12, field10) reads them. Credit
    # (10) is no display field, so this unit joins it into search results with
    # `$data_joins = [10];` in its config.php.
    FIELD_OF: ClassVar[dict[str, str]] = {"location": "3", "date": "12", "department": "10"}

    # The text field an administrator created for damdup's marks.
    MARKS_FIELD = Field(90, "damdup", "damdup", 1, 290)
    # Set by `set_foreign`, as a person would set it.
    FOREIGN_FIELD = 18  # caption

    def __init__(self, emulator: ResourceSpaceEmulator | None = None) -> None:
        self.emulator: ResourceSpaceEmulator
        super().__init__(emulator or ResourceSpaceEmulator(data_joins=(10,)))
        self.emulator.fields[self.MARKS_FIELD.ref] = self.MARKS_FIELD

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "username": USERNAME,
            "private_key": PRIVATE_KEY,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return ResourceSpace(ResourceSpaceSettings(**self.settings(**overrides)))

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        return {self.FIELD_OF.get(name, name): value for name, value in metadata.items()}

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"private_key": "not-the-private-key-of-this-user"}

    def remove(self, asset_id: str) -> None:
        # As a person deletes: to the "Deleted" state ($resource_deletion_state).
        self.emulator.delete_resource(asset_id)

    def reset(self) -> None:
        super().reset()
        self.emulator.reset_state()

    # -- marks -------------------------------------------------------------

    def api(self, function: str, **params: str) -> Any:
        """A signed call straight to the server (not through the proxy), as
        another API client of the same ResourceSpace would make it."""
        query = urlencode([("user", USERNAME), ("function", function), *params.items()])
        sign = hashlib.sha256((PRIVATE_KEY + query).encode()).hexdigest()
        reply = requests.get(f"{self.emulator.base_url}api/?{query}&sign={sign}", timeout=10)
        reply.raise_for_status()
        return reply.json()

    def stored_marks(self, asset_id: str) -> Marks:
        asset = self.emulator.library.assets[asset_id]
        return Marks.from_json(asset.metadata.get(str(self.MARKS_FIELD.ref)))

    def set_foreign(self, asset_id: str) -> None:
        caption = "Temppeliaukion kirkko, kuvaaja ~ tuntematon & ?"
        assert self.api("update_field", resource=asset_id, field="caption", value=caption)

    def foreign_state(self, asset_id: str) -> Any:
        """Every field but damdup's, and the file columns, as the API answers them."""
        fields = {
            field["name"]: field["value"]
            for field in self.api("get_resource_field_data", resource=asset_id)
            if field["name"] != self.MARKS_FIELD.name
        }
        data = self.api("get_resource_data", resource=asset_id)
        files = {key: data[key] for key in ("file_modified", "file_size", "file_checksum")}
        asset = self.emulator.library.assets[asset_id]
        return fields, files, hashlib.sha256(asset.data).hexdigest()

    def changing(self, entry: Forwarded) -> bool:
        """API functions are called by GET or POST: a GET changes something
        when its function is not one that only reads."""
        if entry.method != "GET":
            return True
        if not urlsplit(entry.path).path.startswith("/api/"):
            return False
        functions = parse_qs(urlsplit(entry.path).query).get("function", [])
        return any(function not in READING_FUNCTIONS for function in functions)
