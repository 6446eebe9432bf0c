"""A Drupal 10 site's JSON:API, shaped like a hel.fi site of the City of
Helsinki: media entities of the `image` type with their files, as
`/jsonapi/media/image` serves them.

Written from:
- The JSON:API module docs, https://www.drupal.org/docs/core-modules-and-themes/core-modules/jsonapi-module
  (pagination: page[offset] and page[limit], the limit capped at 50, `next`
  only when a next page exists, a page may hold fewer items than the limit;
  filtering: condition and group objects, the `filter[field][value]` /
  `filter[field][operator]` shortcut and `filter[field]=value`; sorting;
  includes; sparse fieldsets) and https://jsonapi.org/format/1.0/ (error
  objects, the application/vnd.api+json media type, implementation-specific
  query parameters must contain a character outside a-z).
- Drupal core source: jsonapi `EntryPoint` (`meta.links.me` only for an
  authenticated user), `EntityResource` + `TemporaryQueryGuard` (a filtered
  collection query keeps only what the user may see, e.g. `status = 1` for an
  anonymous visitor; an unfiltered one returns unviewable items as
  `meta.omitted`), `OffsetPage` (limit capped at 50), basic_auth `BasicAuth`
  (a wrong user name or password is not refused: the request goes on as the
  anonymous user), image `ImageStyleDownloadController` (a derivative without
  the right `itok` is a 404, "the image token is for DDoS protection rather
  than access checking") and `ImageStyle::getPathToken`,
  `Component\\Utility\\Image::scaleDimensions` (derivative sizes).
- Timestamps as RFC 3339 in the site's time zone,
  https://www.drupal.org/node/2982678; a filter on `created`/`changed`
  compares the stored UNIX timestamp (the value is cast as MySQL casts a
  string to a number).
- Consumer Image Styles 4.x (contrib), src/Normalizer/LinkCollectionNormalizer.php
  and src/ImageStylesProvider.php: an image file resource's `links` gain one
  link per image style of the negotiated consumer (X-Consumer-ID header,
  `consumerId` query or the default consumer) with `meta.rel` the derivative
  relation type. The provider computes the derivative's width and height, but
  the normalizer copies the height into the `width` key and drops `height`
  (`$dimensions['width'] = $link['meta']['height']`), so a real site prints
  `"meta": {"width": "<height>", "rel": [...]}`: reproduced by default
  (`derivative_meta="module"`).
- Writes, https://www.drupal.org/docs/core-modules-and-themes/core-modules/jsonapi-module/updating-existing-resources-patch
  and jsonapi `EntityResource::patchIndividual()` / `updateEntityField()`:
  JSON:API accepts writes only when an administrator allows them (else 405
  "configured to accept only read operations"); a PATCH needs
  `Content-Type: application/vnd.api+json` (else 415), a body whose
  `data.type` and `data.id` name the resource (409 / 400), and changes only the
  attributes it names; an unknown attribute is 422, a field the account may
  not edit is 403 "not allowed to PATCH the selected field" unless its value
  is unchanged, and an account without 'edit any image media' gets 403 "not
  allowed to PATCH the selected resource". Saving a real change moves the
  media's `changed` (ChangedItem::preSave), a PATCH changing nothing does not.
- hel.fi media: City-of-Helsinki/drupal-helfi-platform-config,
  modules/helfi_media/config/install (media type `image`, source field
  `field_media_image`, `field_photographer`, an editable `created`); image
  styles `1_1_thumbnail_2x` (focal point crop to 360x360) and `original_l`
  (scale to 1200 wide, upscaling) are hel.fi's, `thumbnail`, `medium`,
  `large` and `wide` Drupal's standard profile.

Library metadata the emulator reads: `created` (an editor's "Authored on"),
`status` (False: unpublished), `alt`, and any field named in `fields`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import requests
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter, Marks
from adapters.drupal import Drupal, DrupalSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import (
    Emulator,
    Library,
    StoredAsset,
    image_response,
    scaled,
    square_crop,
)

JSONAPI_TYPE = "application/vnd.api+json"
JSONAPI = {
    "version": "1.0",
    "meta": {"links": {"self": {"href": "http://jsonapi.org/format/1.0/"}}},
}
DERIVATIVE_REL = (
    "drupal://jsonapi/extensions/consumer_image_styles/links/relation-types/#derivative"
)
MAX_LIMIT = 50  # OffsetPage::SIZE_MAX
SITE_TIMEZONE = ZoneInfo("Europe/Helsinki")
FILES = "sites/default/files"
NAMESPACE = uuid.UUID("6f1d8f3e-0c1b-4d55-9a57-3f3c1d2b7a10")
# Obviously fake: the site's private key and hash salt, which sign `itok`.
PRIVATE_KEY = "fake-private-key-for-tests"
HASH_SALT = "fake-hash-salt-for-tests"
OPERATORS = (
    "=", "<>", ">", ">=", "<", "<=", "STARTS_WITH", "CONTAINS", "ENDS_WITH",
    "IN", "NOT IN", "BETWEEN", "NOT BETWEEN", "IS NULL", "IS NOT NULL",
)  # fmt: skip
RELATIONSHIPS = ("bundle", "field_media_image", "revision_user", "thumbnail", "uid")
NUMERIC_FIELDS = frozenset(
    {"drupal_internal__mid", "drupal_internal__vid", "status", "created", "changed"}
)
BASE_FIELDS = ("id", "drupal_internal__mid", "drupal_internal__vid", "langcode", "status", "name")
INFO = "http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html"
INFO_ANCHORS = {400: "10.4.1", 401: "10.4.2", 403: "10.4.4", 404: "10.4.5", 405: "10.4.6"}
DerivativeMeta = Literal["module", "both", "none"]


@dataclass(frozen=True)
class ImageStyle:
    label: str
    width: int | None
    height: int | None
    crop: bool = False
    upscale: bool = False

    def dimensions(self, width: int, height: int) -> tuple[int, int]:
        if self.crop:
            return self.width or width, self.height or height
        return scale_dimensions(width, height, self.width, self.height, self.upscale)


STYLES = {
    "thumbnail": ImageStyle("Thumbnail (100x100)", 100, 100),
    "medium": ImageStyle("Medium (220x220)", 220, 220),
    "large": ImageStyle("Large (480x480)", 480, 480),
    "wide": ImageStyle("Wide (1090)", 1090, None),
    "1_1_thumbnail_2x": ImageStyle("1:1 thumbnail (2x)", 360, 360, crop=True),
    "original_l": ImageStyle("Original L", 1200, None, upscale=True),
}


def php_round(value: float) -> int:
    """PHP's round(): halves away from zero (Python rounds them to even)."""
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def scale_dimensions(
    width: int, height: int, box_width: int | None, box_height: int | None, upscale: bool
) -> tuple[int, int]:
    """Drupal\\Component\\Utility\\Image::scaleDimensions()."""
    aspect = height / width
    if (box_width and not box_height) or (
        box_width and box_height and aspect < box_height / box_width
    ):
        new_width, new_height = box_width, php_round(box_width * aspect)
    else:
        assert box_height
        new_width, new_height = php_round(box_height / aspect), box_height
    if not upscale and (new_width >= width or new_height >= height):
        return width, height
    return new_width, new_height


def path_token(style: str, uri: str) -> str:
    """ImageStyle::getPathToken(): Crypt::hmacBase64 cut to 8 characters."""
    digest = hmac.new(
        (PRIVATE_KEY + HASH_SALT).encode(), f"{style}:{uri}".encode(), hashlib.sha256
    ).digest()
    text = base64.b64encode(digest).decode()
    return text.replace("+", "-").replace("/", "_").replace("=", "")[:8]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(SITE_TIMEZONE).isoformat(timespec="seconds")


def sql_number(value: Any) -> float:
    """A string as MySQL compares it with a number: its leading number, else 0."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    match = re.match(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", str(value))
    return float(match.group(0)) if match else 0.0


class BadRequest(Exception):
    pass


# -- query string ------------------------------------------------------------


def nested(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """PHP's parse_str(): `filter[a][condition][path]=x` becomes nested dicts;
    `[]` appends (lists stay dicts keyed "0", "1", ...)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        if not match:
            root[key] = value
            continue
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in parts[:-1]:
            name = part or str(len(node))
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            node = child
        node[parts[-1] or str(len(node))] = value
    return root


def as_list(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    return [value]


@dataclass
class Condition:
    path: str
    operator: str
    value: Any

    def matches(self, row: dict[str, Any]) -> bool:
        actual = row.get(self.path)
        if self.operator == "IS NULL":
            return actual in (None, "")
        if self.operator == "IS NOT NULL":
            return actual not in (None, "")
        if actual is None:
            return False  # NULL compares to nothing in SQL
        numeric = self.path in NUMERIC_FIELDS

        def norm(value: Any) -> Any:
            return sql_number(value) if numeric else str(value).casefold()

        left = norm(actual)
        if self.operator in ("IN", "NOT IN"):
            found = left in [norm(v) for v in as_list(self.value)]
            return found if self.operator == "IN" else not found
        if self.operator in ("BETWEEN", "NOT BETWEEN"):
            low, high = (norm(v) for v in as_list(self.value))
            inside = bool(low <= left <= high)
            return inside if self.operator == "BETWEEN" else not inside
        right = norm(self.value)
        if self.operator in ("STARTS_WITH", "CONTAINS", "ENDS_WITH"):
            text, part = str(left), str(right)
            return {
                "STARTS_WITH": text.startswith(part),
                "CONTAINS": part in text,
                "ENDS_WITH": text.endswith(part),
            }[self.operator]
        return bool(
            {
                "=": left == right,
                "<>": left != right,
                ">": left > right,
                ">=": left >= right,
                "<": left < right,
                "<=": left <= right,
            }[self.operator]
        )


@dataclass
class Group:
    conjunction: str
    members: list[Condition | Group] = field(default_factory=list)

    def matches(self, row: dict[str, Any]) -> bool:
        results = (member.matches(row) for member in self.members)
        return all(results) if self.conjunction == "AND" else any(results)


@dataclass
class Query:
    filter: Group | None
    sort: list[tuple[str, bool]]  # (field, descending)
    offset: int
    limit: int
    include: list[str]
    fields: dict[str, list[str]]


# -- the emulator ------------------------------------------------------------


@dataclass
class FileState:
    path: str  # under public://
    changed: datetime
    digest: bytes
    revision: int
    seen_modified: datetime


class DrupalEmulator(Emulator):
    """`users`: basic_auth accounts (name -> password), each allowed to see
    unpublished media. `fields`: the media type's own text fields.
    `consumers`: Consumer Image Styles consumers (client id -> styles);
    `default_styles`: the default consumer's styles (None: no default consumer).
    `anonymous_access`: whether anonymous visitors have 'view media'.
    `hidden_from_anonymous`: media ids a contrib access module denies to
    anonymous visitors (the query still returns them: they come back omitted).
    `file_url_base`: serve file URLs from another origin (a CDN or blob store).
    `write_enabled`: JSON:API accepts create, update and delete operations
    (Drupal's default is read-only). `editors`: accounts with 'edit any image
    media'."""

    url_map = Map(
        [
            Rule("/jsonapi", endpoint="entry_point"),
            Rule("/jsonapi/media/image", endpoint="collection"),
            Rule("/jsonapi/media/image/<resource_id>", endpoint="individual"),
            Rule(
                f"/{FILES}/styles/<style>/public/<path:path>",
                endpoint="derivative",
                methods=["GET", "HEAD"],
            ),
            Rule(f"/{FILES}/<path:path>", endpoint="public_file", methods=["GET", "HEAD"]),
        ]
    )

    def __init__(
        self,
        library: Library | None = None,
        *,
        users: dict[str, str] | None = None,
        fields: Iterable[str] = ("field_photographer",),
        consumers: dict[str, list[str]] | None = None,
        default_styles: Iterable[str] | None = tuple(STYLES),
        derivative_meta: DerivativeMeta = "module",
        anonymous_access: bool = True,
        hidden_from_anonymous: Iterable[str] = (),
        file_url_base: str | None = None,
        write_enabled: bool = False,
        editors: Iterable[str] = (),
    ) -> None:
        super().__init__(library)
        self.users = dict(users or {})
        self.fields = tuple(fields)
        self.consumers = dict(consumers or {})
        self.default_styles = None if default_styles is None else list(default_styles)
        self.derivative_meta: DerivativeMeta = derivative_meta
        self.anonymous_access = anonymous_access
        self.hidden_from_anonymous = set(hidden_from_anonymous)
        self.file_url_base = file_url_base
        self.write_enabled = write_enabled
        self.editors = set(editors)
        self._files: dict[str, FileState] = {}
        self._paths: dict[str, str] = {}  # public:// path -> library id
        self._lock = threading.RLock()

    # -- identities ------------------------------------------------------

    @staticmethod
    def media_uuid(asset_id: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"media:{asset_id}"))

    @staticmethod
    def file_uuid(asset_id: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"file:{asset_id}"))

    def library_id(self, media_uuid: str) -> str:
        with self.library.lock:
            for asset_id in self.library.assets:
                if self.media_uuid(asset_id) == media_uuid:
                    return asset_id
        raise KeyError(media_uuid)

    def file_state(self, asset: StoredAsset) -> FileState:
        """The file entity behind a media item. Its `changed` moves only when
        the bytes do (a replaced file keeps its URI, as
        media_entity_file_replace does); the media revision moves on any edit."""
        digest = hashlib.sha256(asset.data).digest()
        with self._lock:
            state = self._files.get(asset.id)
            if state is None:
                state = FileState(self._free_path(asset), asset.created, digest, 1, asset.modified)
                self._files[asset.id] = state
                self._paths[state.path] = asset.id
            if state.digest != digest:
                state.digest, state.changed = digest, asset.modified
            if state.seen_modified != asset.modified:
                state.revision += 1
                state.seen_modified = asset.modified
            return state

    def _free_path(self, asset: StoredAsset) -> str:
        """public://YYYY-MM/name, renamed name_0, name_1 ... on a clash, as
        Drupal's file_directory default and FileSystem::createFilename do."""
        folder = asset.created.astimezone(SITE_TIMEZONE).strftime("%Y-%m")
        stem, dot, suffix = asset.name.rpartition(".")
        if not dot:
            stem, suffix = asset.name, ""
        candidate = f"{folder}/{asset.name}"
        number = 0
        while (owner := self._paths.get(candidate)) is not None and owner in self.library.assets:
            candidate = f"{folder}/{stem}_{number}{dot}{suffix}"
            number += 1
        return candidate

    # -- requests --------------------------------------------------------

    def account(self, request: Request) -> str | None:
        """The user name, or None for anonymous. Wrong credentials are not an
        error: BasicAuth::authenticate() returns no account and the request
        goes on as the anonymous user."""
        auth = request.authorization
        if auth is None or auth.type != "basic" or auth.username is None:
            return None
        expected = self.users.get(auth.username)
        if expected is not None and hmac.compare_digest(expected, auth.password or ""):
            return auth.username
        return None

    def may_view(self, account: str | None, asset: StoredAsset) -> bool:
        if account is not None:
            return True
        return (
            self.anonymous_access
            and self.published(asset)
            and asset.id not in self.hidden_from_anonymous
        )

    def query_guard(self, account: str | None, asset: StoredAsset) -> bool:
        """TemporaryQueryGuard's condition for a filtered query: published
        media for a visitor with 'view media', nothing without it."""
        return account is not None or (self.anonymous_access and self.published(asset))

    @staticmethod
    def published(asset: StoredAsset) -> bool:
        return bool(asset.metadata.get("status", True))

    def styles_for(self, request: Request) -> list[str]:
        consumer = request.headers.get("X-Consumer-ID") or request.args.get("consumerId")
        if consumer and consumer in self.consumers:
            return self.consumers[consumer]
        return list(self.default_styles or [])

    # -- answers ---------------------------------------------------------

    def document(self, payload: dict[str, Any], status: int = 200) -> Response:
        body = {"jsonapi": JSONAPI, **payload}
        return Response(
            json.dumps(body, ensure_ascii=False), status=status, content_type=JSONAPI_TYPE
        )

    def error(
        self, request: Request, status: int, detail: str, headers: dict[str, str] | None = None
    ) -> Response:
        """An error document as Drupal's HttpExceptionNormalizer prints it."""
        error: dict[str, Any] = {
            "title": HTTP_STATUS_CODES.get(status, "Error"),
            "status": str(status),
            "detail": detail,
            "links": {"via": {"href": request.url}},
        }
        if status in INFO_ANCHORS:
            error["links"]["info"] = {"href": f"{INFO}#sec{INFO_ANCHORS[status]}"}
        response = self.document({"errors": [error]}, status)
        response.headers.update(headers or {})
        return response

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        status = exc.code or 500
        if request.path.startswith("/jsonapi/") and status != 404:
            return self.error(request, status, exc.description or "")
        return not_found_page()

    def read_only(self, request: Request) -> Response:
        return self.error(
            request,
            405,
            "JSON:API is configured to accept only read operations. Site administrators "
            "can configure this at /admin/config/services/jsonapi.",
        )

    def entry_point(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return self.read_only(request)
        base = request.host_url + "jsonapi"
        links = {
            "self": {"href": base},
            "file--file": {"href": f"{base}/file/file"},
            "media--image": {"href": f"{base}/media/image"},
            "media_type--media_type": {"href": f"{base}/media_type/media_type"},
            "user--user": {"href": f"{base}/user/user"},
        }
        payload: dict[str, Any] = {"data": [], "links": links}
        account = self.account(request)
        if account is not None:
            user = str(uuid.uuid5(NAMESPACE, f"user:{account}"))
            payload["meta"] = {
                "links": {"me": {"meta": {"id": user}, "href": f"{base}/user/user/{user}"}}
            }
        return self.document(payload)

    def collection(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return self.read_only(request)
        try:
            query = self.parse_query(request)
        except BadRequest as exc:
            return self.error(request, 400, str(exc))
        account = self.account(request)
        rows = [(asset, self.row(asset)) for asset in self.library.live()]
        if query.filter is not None:
            rows = [
                (asset, row)
                for asset, row in rows
                if query.filter.matches(row) and self.query_guard(account, asset)
            ]
        rows.sort(key=lambda pair: pair[1]["drupal_internal__mid"])
        for name, descending in reversed(query.sort):

            def by(pair: tuple[StoredAsset, dict[str, Any]], name: str = name) -> tuple[int, Any]:
                return sort_key(pair[1].get(name))

            rows.sort(key=by, reverse=descending)
        # One more than the limit: whether a next page exists is known before
        # access checks omit anything, so a page can hold fewer than the limit.
        window = rows[query.offset : query.offset + query.limit + 1]
        has_next = len(window) > query.limit
        data: list[dict[str, Any]] = []
        included: dict[str, dict[str, Any]] = {}
        omitted: list[StoredAsset] = []
        for asset, _ in window[: query.limit]:
            if not self.may_view(account, asset):
                omitted.append(asset)
                continue
            data.append(self.media(request, asset, query.fields))
            for name in query.include:
                if name in ("field_media_image", "thumbnail"):
                    included[asset.id] = self.file_resource(request, asset, query.fields)
        payload: dict[str, Any] = {
            "data": data,
            "links": self.pager_links(request, query, has_next),
        }
        if query.include:
            payload["included"] = list(included.values())
        if omitted:
            payload["meta"] = {"omitted": self.omitted(request, omitted)}
        return self.document(payload)

    def individual(self, request: Request, resource_id: str) -> Response:
        if request.method == "PATCH" and self.write_enabled:
            return self.patch(request, resource_id)
        if request.method not in ("GET", "HEAD"):
            return self.read_only(request)
        try:
            query = self.parse_query(request, collection=False)
            asset = self.library.get(self.library_id(resource_id))
        except BadRequest as exc:
            return self.error(request, 400, str(exc))
        except KeyError:
            asset = None
        if asset is None:
            return self.error(
                request,
                404,
                'The "entity" parameter was not converted for the path '
                '"/jsonapi/media/image/{entity}" (route name: "jsonapi.media--image.individual")',
            )
        account = self.account(request)
        if not self.may_view(account, asset):
            if request.authorization is None:
                # basic_auth's challenge: a 403 for a visitor who sent no
                # credentials becomes a 401 asking for them.
                return self.error(
                    request,
                    401,
                    "No authentication credentials provided.",
                    {"WWW-Authenticate": 'Basic realm="Helsingin kaupunki"'},
                )
            return self.error(
                request, 403, "The current user is not allowed to GET the selected resource."
            )
        payload: dict[str, Any] = {
            "data": self.media(request, asset, query.fields),
            "links": {"self": {"href": request.url}},
        }
        if query.include:
            payload["included"] = [self.file_resource(request, asset, query.fields)]
        return self.document(payload)

    def patch(self, request: Request, resource_id: str) -> Response:
        """EntityResource::patchIndividual() for the media type's attributes."""
        if request.mimetype != JSONAPI_TYPE:
            return self.error(
                request, 415, f'No route found that matches "Content-Type: {request.mimetype}"'
            )
        try:
            asset = self.library.get(self.library_id(resource_id))
        except KeyError:
            asset = None
        if asset is None:
            return self.error(
                request,
                404,
                'The "entity" parameter was not converted for the path '
                '"/jsonapi/media/image/{entity}" (route name: "jsonapi.media--image.individual")',
            )
        account = self.account(request)
        if account is None and request.authorization is None:
            return self.error(
                request,
                401,
                "No authentication credentials provided.",
                {"WWW-Authenticate": 'Basic realm="Helsingin kaupunki"'},
            )
        if account not in self.editors:
            return self.error(
                request,
                403,
                "The current user is not allowed to PATCH the selected resource. "
                "The 'edit any image media' permission is required.",
            )
        try:
            document = json.loads(request.get_data())
        except ValueError:
            return self.error(request, 400, "Syntax error")
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            return self.error(request, 400, "Missing `data`.")
        if data.get("type") != "media--image":
            return self.error(
                request,
                409,
                f"The provided type ({data.get('type')}) does not match the destination "
                "resource types (media--image).",
            )
        if data.get("id") != resource_id:
            return self.error(
                request,
                400,
                f"The selected entity ({resource_id}) does not match the ID in the payload "
                f"({data.get('id')}).",
            )
        attributes = data.get("attributes") or {}
        current = self.media(request, asset, {})["attributes"]
        changes: dict[str, Any] = {}
        for name, value in attributes.items():
            if name not in current:
                return self.error(
                    request,
                    422,
                    f"The attribute {name} does not exist on the media--image resource type.",
                )
            if value == current[name]:
                continue  # an unchanged field is never an access problem
            if name not in self.fields:
                return self.error(
                    request,
                    403,
                    f"The current user is not allowed to PATCH the selected field ({name}).",
                )
            if value is not None and not isinstance(value, str):
                return self.error(
                    request,
                    422,
                    f"{name}.0.value: This value should be of the correct primitive type.",
                )
            changes[name] = value
        if changes:  # ChangedItem moves `changed` only when something changed
            self.library.touch(asset.id, **changes)
        return self.document(
            {
                "data": self.media(request, asset, {}),
                "links": {"self": {"href": request.base_url}},
            }
        )

    def derivative(self, request: Request, style: str, path: str) -> Response:
        image_style = STYLES.get(style)
        owner = self._paths.get(path)
        asset = self.library.get(owner) if owner else None
        valid = image_style is not None and hmac.compare_digest(
            path_token(style, f"public://{path}"), request.args.get("itok", "")
        )
        if not valid or image_style is None or asset is None:
            return not_found_page()
        width, height = image_style.dimensions(asset.width, asset.height)
        if image_style.crop:
            return image_response(square_crop(asset, width))
        return image_response(scaled(asset, width, height))

    def public_file(self, request: Request, path: str) -> Response:
        """A public:// file, as the web server serves it: no Drupal involved."""
        owner = self._paths.get(path)
        asset = self.library.get(owner) if owner else None
        if asset is None:
            return not_found_page()
        return image_response(asset.data, asset.mime_type)

    # -- documents -------------------------------------------------------

    def row(self, asset: StoredAsset) -> dict[str, Any]:
        """The values a filter or sort sees (timestamps as stored: UNIX seconds)."""
        state = self.file_state(asset)
        return {
            "id": self.media_uuid(asset.id),
            "drupal_internal__mid": int(asset.id),
            "drupal_internal__vid": state.revision,
            "langcode": "fi",
            "status": 1 if self.published(asset) else 0,
            "name": asset.name,
            "created": int(self.created(asset).timestamp()),
            "changed": int(asset.modified.timestamp()),
            **{name: asset.metadata.get(name) for name in self.fields},
        }

    @staticmethod
    def created(asset: StoredAsset) -> datetime:
        value = asset.metadata.get("created")
        if isinstance(value, datetime):
            return value
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=SITE_TIMEZONE)
        if isinstance(value, str) and value:
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=SITE_TIMEZONE)
        return asset.created

    def media(
        self, request: Request, asset: StoredAsset, fields: dict[str, list[str]]
    ) -> dict[str, Any]:
        state = self.file_state(asset)
        media_id = self.media_uuid(asset.id)
        version = f"resourceVersion=id%3A{state.revision}"
        self_url = f"{request.host_url}jsonapi/media/image/{media_id}"
        image_meta = {
            "alt": asset.metadata.get("alt", ""),
            "title": None,
            "width": asset.width,
            "height": asset.height,
            "drupal_internal__target_id": int(asset.id),
        }

        def relationship(name: str, data: dict[str, Any] | None) -> dict[str, Any]:
            return {
                "data": data,
                "links": {
                    "related": {"href": f"{self_url}/{name}?{version}"},
                    "self": {"href": f"{self_url}/relationships/{name}?{version}"},
                },
            }

        file_data = {"type": "file--file", "id": self.file_uuid(asset.id), "meta": image_meta}
        attributes = {
            "drupal_internal__mid": int(asset.id),
            "drupal_internal__vid": state.revision,
            "langcode": "fi",
            "revision_created": rfc3339(asset.modified),
            "revision_log_message": None,
            "status": self.published(asset),
            "name": asset.name,
            "created": rfc3339(self.created(asset)),
            "changed": rfc3339(asset.modified),
            "default_langcode": True,
            "revision_translation_affected": True,
            "path": {"alias": None, "pid": None, "langcode": "fi"},
            **{name: asset.metadata.get(name) for name in self.fields},
        }
        relationships = {
            "bundle": relationship(
                "bundle",
                {
                    "type": "media_type--media_type",
                    "id": str(uuid.uuid5(NAMESPACE, "media_type:image")),
                    "meta": {"drupal_internal__target_id": "image"},
                },
            ),
            "uid": relationship(
                "uid",
                {
                    "type": "user--user",
                    "id": str(uuid.uuid5(NAMESPACE, "user:editor")),
                    "meta": {"drupal_internal__target_id": 7},
                },
            ),
            "thumbnail": relationship("thumbnail", file_data),
            "field_media_image": relationship("field_media_image", file_data),
        }
        wanted = fields.get("media--image")
        if wanted is not None:
            attributes = {k: v for k, v in attributes.items() if k in wanted}
            relationships = {k: v for k, v in relationships.items() if k in wanted}
        resource: dict[str, Any] = {
            "type": "media--image",
            "id": media_id,
            "links": {"self": {"href": f"{self_url}?{version}"}},
            "attributes": attributes,
        }
        if relationships:
            resource["relationships"] = relationships
        return resource

    def file_resource(
        self, request: Request, asset: StoredAsset, fields: dict[str, list[str]]
    ) -> dict[str, Any]:
        state = self.file_state(asset)
        file_id = self.file_uuid(asset.id)
        files_base = (self.file_url_base or request.host_url.rstrip("/")) + f"/{FILES}/"
        quoted = quote(state.path)
        links: dict[str, Any] = {"self": {"href": f"{request.host_url}jsonapi/file/file/{file_id}"}}
        for style in self.styles_for(request):
            image_style = STYLES[style]
            width, height = image_style.dimensions(asset.width, asset.height)
            meta: dict[str, Any] = {}
            if self.derivative_meta == "module":
                meta["width"] = str(height)  # sic: see the module docstring
            elif self.derivative_meta == "both":
                meta.update(width=str(width), height=str(height))
            meta["rel"] = [DERIVATIVE_REL]
            token = path_token(style, f"public://{state.path}")
            links[style] = {
                "href": f"{files_base}styles/{style}/public/{quoted}?itok={token}",
                "meta": meta,
            }
        url = f"/{FILES}/{quoted}" if self.file_url_base is None else files_base + quoted
        attributes = {
            "drupal_internal__fid": int(asset.id),
            "langcode": "fi",
            "filename": state.path.rsplit("/", 1)[-1],
            "uri": {"value": f"public://{state.path}", "url": url},
            "filemime": asset.mime_type,
            "filesize": len(asset.data),
            "status": True,
            "created": rfc3339(asset.created),
            "changed": rfc3339(state.changed),
        }
        wanted = fields.get("file--file")
        if wanted is not None:
            attributes = {k: v for k, v in attributes.items() if k in wanted}
        return {"type": "file--file", "id": file_id, "links": links, "attributes": attributes}

    def omitted(self, request: Request, assets: list[StoredAsset]) -> dict[str, Any]:
        links: dict[str, Any] = {
            "help": {
                "href": "https://www.drupal.org/docs/8/modules/json-api/filtering#filters-access-control"
            }
        }
        for asset in assets:
            media_id = self.media_uuid(asset.id)
            key = hashlib.sha256(media_id.encode()).hexdigest()[:7]
            links[key] = {
                "href": f"{request.host_url}jsonapi/media/image/{media_id}",
                "meta": {
                    "rel": "item",
                    "detail": "The current user is not allowed to GET the selected resource.",
                },
            }
        return {
            "detail": "Some resources have been omitted because of insufficient authorization.",
            "links": links,
        }

    def pager_links(self, request: Request, query: Query, has_next: bool) -> dict[str, Any]:
        """EntityResource::getPagerLinks(): next only when there is a next page;
        first and prev once past the first."""
        base = request.base_url
        kept = [(k, v) for k, v in request.args.items(multi=True) if not k.startswith("page[")]

        def at(offset: int) -> dict[str, str]:
            pairs = [*kept, ("page[offset]", str(offset)), ("page[limit]", str(query.limit))]
            return {"href": f"{base}?{urlencode(pairs)}"}

        links: dict[str, Any] = {"self": {"href": request.url}}
        if has_next:
            links["next"] = at(query.offset + query.limit)
        if query.offset > 0:
            links["first"] = at(0)
            links["prev"] = at(max(0, query.offset - query.limit))
        return links

    # -- parameters ------------------------------------------------------

    def parse_query(self, request: Request, collection: bool = True) -> Query:
        pairs = list(request.args.items(multi=True))
        params = nested(pairs)
        bad = [
            name
            for name in params
            if name not in ("filter", "sort", "page", "include", "fields")
            and re.fullmatch(r"[a-z]+", name)
        ]
        if bad:
            raise BadRequest(
                "The following query parameters violate the JSON:API spec: "
                + ", ".join(f"'{name}'" for name in bad)
                + "."
            )
        group = self.parse_filter(params["filter"]) if collection and "filter" in params else None
        offset, limit = self.parse_page(params.get("page", {})) if collection else (0, MAX_LIMIT)
        include = [name for name in str(params.get("include", "")).split(",") if name]
        for name in include:
            if name.split(".")[0] not in RELATIONSHIPS:
                raise BadRequest(
                    f"`{name}` is not a valid relationship field name. "
                    f"Possible values: {', '.join(RELATIONSHIPS)}."
                )
        fields_param = params.get("fields", {})
        if not isinstance(fields_param, dict):
            raise BadRequest("The fields parameter needs to be an array.")
        fields = {
            kind: [name.strip() for name in str(names).split(",") if name.strip()]
            for kind, names in fields_param.items()
        }
        sort = self.parse_sort(params["sort"]) if collection and "sort" in params else []
        return Query(group, sort, offset, limit, include, fields)

    @staticmethod
    def parse_page(page: Any) -> tuple[int, int]:
        if not isinstance(page, dict):
            raise BadRequest("The page parameter needs to be an array.")
        values = {}
        for key, default in (("offset", 0), ("limit", MAX_LIMIT)):
            raw = page.get(key, default)
            text = str(raw).strip()
            if not re.fullmatch(r"\d+", text):
                raise BadRequest(f"The page[{key}] parameter must be a non-negative integer.")
            values[key] = int(text)
        if values["limit"] < 1:
            raise BadRequest("The page[limit] parameter must be at least 1.")
        return values["offset"], min(values["limit"], MAX_LIMIT)

    def check_path(self, path: str) -> str:
        name = path.split(".")[0]
        if name in RELATIONSHIPS:
            raise BadRequest(f"Filtering or sorting on the `{path}` relationship is not emulated.")
        if name not in (*BASE_FIELDS, "created", "changed", *self.fields) or "." in path:
            raise BadRequest(
                f"Invalid nested filtering. The field `{name}`, given in the path `{path}`, "
                "does not exist."
            )
        return path

    def parse_sort(self, sort: Any) -> list[tuple[str, bool]]:
        if isinstance(sort, str):
            keys = [part.strip() for part in sort.split(",") if part.strip()]
            return [(self.check_path(key.lstrip("-")), key.startswith("-")) for key in keys]
        if isinstance(sort, dict):
            result = []
            for item in sort.values():
                if not isinstance(item, dict) or "path" not in item:
                    raise BadRequest("You need to provide a field name for the sort parameter.")
                direction = str(item.get("direction", "ASC")).upper()
                if direction not in ("ASC", "DESC"):
                    raise BadRequest("The sort direction must be ASC or DESC.")
                result.append((self.check_path(str(item["path"])), direction == "DESC"))
            return result
        raise BadRequest("The sort parameter is invalid.")

    def parse_filter(self, raw: Any) -> Group:
        """Filter::createFromQueryParameter(): conditions and groups, each a
        member of the root AND group unless `memberOf` names another."""
        if not isinstance(raw, dict):
            raise BadRequest("The filter parameter needs to be an array.")
        root = Group("AND")
        groups: dict[str, Group] = {"@root": root}
        parents: list[tuple[str, Condition | Group]] = []
        for key, item in raw.items():
            if not isinstance(item, dict):
                item = {"value": item}
            if "group" in item:
                spec = item["group"]
                if not isinstance(spec, dict):
                    raise BadRequest("The filter group must be an array.")
                conjunction = str(spec.get("conjunction", "")).upper()
                if conjunction not in ("AND", "OR"):
                    raise BadRequest("Filter group is missing a valid 'conjunction' key.")
                groups[key] = Group(conjunction)
                parents.append((str(spec.get("memberOf", "@root")), groups[key]))
                continue
            spec = item.get("condition", item)
            if not isinstance(spec, dict):
                raise BadRequest("The filter condition must be an array.")
            spec = dict(spec)
            if "condition" not in item:
                spec.setdefault("path", key)
            parents.append((str(spec.get("memberOf", "@root")), self.parse_condition(spec)))
        for parent, member in parents:
            if parent not in groups:
                raise BadRequest(f"The filter group '{parent}' does not exist.")
            groups[parent].members.append(member)
        return root

    def parse_condition(self, spec: dict[str, Any]) -> Condition:
        if "path" not in spec:
            raise BadRequest("Filter parameter is missing a 'path' key.")
        operator = str(spec.get("operator", "="))
        if operator not in OPERATORS:
            raise BadRequest(f"The '{operator}' operator is not allowed in a filter parameter.")
        if operator in ("IS NULL", "IS NOT NULL"):
            if "value" in spec:
                raise BadRequest(
                    f"Filters using the '{operator}' operator should not provide a value."
                )
        elif "value" not in spec:
            raise BadRequest("Filter parameter is missing a 'value' key.")
        value = spec.get("value")
        if operator in ("IN", "NOT IN", "BETWEEN", "NOT BETWEEN") and not isinstance(value, dict):
            raise BadRequest(f"The '{operator}' operator requires an array of values.")
        if operator in ("BETWEEN", "NOT BETWEEN") and len(as_list(value)) != 2:
            raise BadRequest(f"The '{operator}' operator requires exactly two values.")
        return Condition(self.check_path(str(spec["path"])), operator, value)


def sort_key(value: Any) -> tuple[int, Any]:
    """NULLs first, as MySQL sorts them ascending."""
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value).casefold())


def not_found_page() -> Response:
    page = (
        '<!DOCTYPE html><html lang="fi"><head><title>Sivua ei löytynyt | Helsingin kaupunki'
        "</title></head><body><h1>Sivua ei löytynyt</h1></body></html>"
    )
    return Response(page, status=404, content_type="text/html; charset=utf-8")


# -- the contract harness ----------------------------------------------------

# Scale-only styles whose sizes the adapter may compute (Consumer Image Styles
# does not print them usably); the crop is left out on purpose.
STYLE_BOXES = {
    "thumbnail": {"width": 100, "height": 100},
    "medium": {"width": 220, "height": 220},
    "large": {"width": 480, "height": 480},
    "wide": {"width": 1090},
    "original_l": {"width": 1200},
}


class DrupalHarness(EmulatorHarness):
    """A hel.fi-like site whose media type has location and department fields
    added, listed with a basic_auth account (so unpublished media are listed
    too, and a wrong password is caught)."""

    kind = "drupal"
    # The entry point, the collection and single media items: JSON:API requests.
    listing_path = "/jsonapi"
    # An editor: listing shows unpublished media, and marks can be written.
    username = "damdup-editor"
    password = "fake-password-for-tests"
    marks_field = "field_damdup_marks"
    # Set by `set_foreign`, as an editor would set it.
    foreign_field = "field_photographer"

    def __init__(self) -> None:
        super().__init__(
            DrupalEmulator(
                users={self.username: self.password},
                fields=(
                    "field_photographer",
                    "field_location",
                    "field_department",
                    self.marks_field,
                ),
                write_enabled=True,
                editors={self.username},
            )
        )
        self.drupal: DrupalEmulator = self.emulator  # type: ignore[assignment]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "username": self.username,
            "password": self.password,
            "image_styles": STYLE_BOXES,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return Drupal(DrupalSettings(**self.settings(**overrides)))

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        where = {"location": "field_location", "date": "created", "department": "field_department"}
        return {where[name]: value for name, value in metadata.items() if name in where}

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        asset = self.emulator.library.add(name, data, self.place_metadata(metadata or {}))
        return self.drupal.media_uuid(asset.id)

    def touch(self, asset_id: str) -> None:
        self.emulator.library.touch(self.drupal.library_id(asset_id))

    def remove(self, asset_id: str) -> None:
        self.emulator.library.remove(self.drupal.library_id(asset_id))

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"password": "wrong-password-for-tests"}

    # -- marks -----------------------------------------------------------

    def stored_marks(self, asset_id: str) -> Marks:
        asset = self.emulator.library.assets[self.drupal.library_id(asset_id)]
        return Marks.from_json(asset.metadata.get(self.marks_field))

    def set_foreign(self, asset_id: str) -> None:
        """An editor's PATCH of the photographer, straight to the site."""
        reply = requests.patch(
            f"{self.emulator.base_url}jsonapi/media/image/{asset_id}",
            data=json.dumps(
                {
                    "data": {
                        "type": "media--image",
                        "id": asset_id,
                        "attributes": {self.foreign_field: "Kuvaaja: Sakari Kiuru ä & ?"},
                    }
                }
            ),
            headers={"Content-Type": JSONAPI_TYPE, "Accept": JSONAPI_TYPE},
            auth=(self.username, self.password),
            timeout=10,
        )
        reply.raise_for_status()

    def foreign_state(self, asset_id: str) -> Any:
        """The media item and its file as JSON:API shows them, without what
        Drupal itself moves on every save (`changed`, the revision) and
        damdup's own field, plus the file's bytes."""
        reply = requests.get(
            f"{self.emulator.base_url}jsonapi/media/image/{asset_id}",
            params={"include": "field_media_image"},
            auth=(self.username, self.password),
            timeout=10,
        )
        reply.raise_for_status()
        body = reply.json()
        own = {"changed", "revision_created", "drupal_internal__vid", self.marks_field}
        attributes = {k: v for k, v in body["data"]["attributes"].items() if k not in own}
        relationships = {
            name: relation["data"] for name, relation in body["data"]["relationships"].items()
        }
        files = [resource["attributes"] for resource in body["included"]]
        asset = self.emulator.library.assets[self.drupal.library_id(asset_id)]
        return attributes, relationships, files, hashlib.sha256(asset.data).hexdigest()
