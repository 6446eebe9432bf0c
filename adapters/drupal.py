"""A Drupal site's media library over core JSON:API, as the City of Helsinki's
hel.fi sites run it: media of the `image` type, the file in `field_media_image`.

Docs: https://www.drupal.org/docs/core-modules-and-themes/core-modules/jsonapi-module
(pagination, filtering, sorting, includes). What this module relies on:

- One request a page: `GET jsonapi/media/image?include=field_media_image`; the
  file resource comes in `included`, the original's width and height in the
  relationship's `meta` (as core prints image fields).
- Pages are keyed on the media id (`drupal_internal__mid > last seen`, sorted
  by it) rather than on `page[offset]`: an offset shifts when a media item
  before it is deleted during a listing, silently skipping a live one, which a
  full sync would then retire. `links.next` says whether another page exists
  (Drupal fetches one more than the limit to know); a page may hold fewer items
  than the limit, or none, when access checks omit items, and a page with none
  is stepped over with `page[offset]`.
- Every listing is filtered on `changed` (`>= 0` for a full one), so that
  Drupal's query guard keeps unpublished media out of the query for a visitor
  who may not see them, instead of omitting them page by page. Filters on
  `created`/`changed` compare the stored UNIX timestamp: the value sent is
  seconds, never a date string (MySQL would read "2026-01-05..." as 2026).
- Incremental listing: media whose `changed` >= a watermark. The watermark is
  the newest `changed` on the site when the listing starts (one request sorted
  `-changed`, limit 1), in the server's own clock, so it never passes the
  listing's start; media already seen at that second are skipped next time
  (adapters.watermark, shared with Nextcloud).
  JSON:API has no tombstones: deletions show only in a full listing.
- Renditions: Consumer Image Styles (contrib) lists image style derivatives in
  the file resource's `links`, with a valid `itok` (Drupal answers 404 without
  it). Its 4.x normalizer drops the height and prints it under `width`, so a
  derivative's size is used only when its link meta has both width and height;
  otherwise it is computed from `image_styles` (scale effects only, as
  configured for the unit), else the derivative is not used.
- Credentials: optional basic_auth user and password. Drupal does not refuse a
  wrong password; it serves the request as the anonymous user. The entry
  point's `meta.links.me`, present only for an authenticated user, tells.

Marks (https://www.drupal.org/docs/core-modules-and-themes/core-modules/jsonapi-module/updating-existing-resources-patch):
damdup keeps its marks as one JSON object (`Marks.to_json`) in a plain long
text field of the media type (`marks_field`, by default
`field_damdup_marks`). `annotate` reads that one attribute (a sparse
fieldset) and, when it differs, sends `PATCH jsonapi/media/image/<uuid>` with
`application/vnd.api+json` and only that attribute: JSON:API changes only the
attributes a PATCH names, so every other field stays as it is. Writing needs
JSON:API set to accept writes and an account allowed to edit the media
(basic_auth, so no CSRF token); Drupal moves the media's `changed` on the
save, which is why `version` follows the file entity, not the media.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote, urljoin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from requests.auth import AuthBase

from adapters.base import (
    AssetRef,
    AuthFailed,
    BadAsset,
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
    Unsupported,
    choose_rendition,
)
from adapters.http import HttpClient, HttpError
from adapters.watermark import WatermarkCursor, WatermarkPaginator

__all__ = ["Drupal", "DrupalCursor", "DrupalPaginator", "DrupalSettings", "ImageStyleBox"]

DERIVATIVE_REL = (
    "drupal://jsonapi/extensions/consumer_image_styles/links/relation-types/#derivative"
)
MAX_PAGE_SIZE = 50  # core JSON:API's OffsetPage::SIZE_MAX; larger limits are cut to it
JSONAPI_TYPE = "application/vnd.api+json"


class ImageStyleBox(BaseModel):
    """An image style whose only size effect is `image_scale` to this box
    (one side may be open, as for `wide`: 1090 wide, any height)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_side_at_least(self) -> ImageStyleBox:
        if self.width is None and self.height is None:
            raise ValueError("an image style box needs a width, a height or both")
        return self


class DrupalSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_DRUPAL_", extra="forbid")
    page_size: int = Field(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    username: str | None = Field(None, description="basic_auth user; anonymous when unset")
    password: SecretStr | None = None
    jsonapi_path: str = Field("jsonapi", description="JSON:API prefix (jsonapi_extras can move it)")
    media_type: str = Field("image", description="the media bundle holding photos")
    image_field: str = Field("field_media_image", description="the bundle's source image field")
    consumer_id: str | None = Field(
        None, description="Consumer Image Styles consumer (X-Consumer-ID); the default one if unset"
    )
    image_styles: dict[str, ImageStyleBox] = Field(
        default_factory=dict,
        description="scale-only image styles whose derivative sizes may be computed",
    )
    file_hosts: list[str] = Field(
        default_factory=list, description="other hosts serving the site's files (CDN, blob store)"
    )
    marks_field: str = Field(
        "field_damdup_marks",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="the media type's plain long text field holding damdup's marks as JSON",
    )
    # Stock hel.fi media carry only `field_photographer` besides the name and
    # the editable "Authored on" date (`created`). A unit adds location and
    # department fields under these names or maps its own, or sets a literal
    # department ("=Kaupunkiympäristö") for a sector's site.
    metadata: MetadataMapping = MetadataMapping(
        location="field_location", date="created", department="field_department"
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> DrupalSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class DrupalCursor(WatermarkCursor):
    """A position in a listing: the watermark on media's `changed`
    (adapters.watermark), and the last media id handed out."""

    after_mid: int = 0  # the last media id handed out
    offset: int = 0  # past pages whose items were all omitted

    @model_validator(mode="before")
    @classmethod
    def _from_changed_since(cls, data: Any) -> Any:
        """Cursors saved before the watermark was shared named `since` `changed_since`."""
        if isinstance(data, dict) and "changed_since" in data:
            data = dict(data)
            data.setdefault("since", data.pop("changed_since"))
        return data


class DrupalPaginator(WatermarkPaginator[DrupalCursor]):
    """Keyset paging on the media id within the watermark's range (module
    docstring), as singer_sdk's paginators: it writes the page's filters
    from its cursor and reads an answer into the next cursor. A page whose
    items were all omitted by access checks is stepped over by offset."""

    def __init__(self, cursor: DrupalCursor | None, page_size: int, collection: str) -> None:
        super().__init__(cursor or DrupalCursor())
        self.page_size = page_size
        self.collection = collection

    def filters(self) -> dict[str, str]:
        """What the listing covers: media changed since the last listing."""
        return _changed_since(self.cursor.since)

    def position(self) -> dict[str, str]:
        """Where in it this page starts."""
        params = {}
        if self.cursor.after_mid:
            params = {
                "filter[after][condition][path]": "drupal_internal__mid",
                "filter[after][condition][operator]": ">",
                "filter[after][condition][value]": str(self.cursor.after_mid),
            }
        if self.cursor.offset:
            params["page[offset]"] = str(self.cursor.offset)
        return params

    def advance(self, resources: list[dict[str, Any]], more: bool) -> list[dict[str, Any]]:
        """The media to hand out; moves the cursor past the page. `more`:
        the answer links a next page."""
        fresh = []
        last_mid: int | None = None
        for resource in resources:
            last_mid, changed = self._mid_and_changed(resource)
            if self.admit(str(resource.get("id")), changed):
                fresh.append(resource)
        if not more:
            self.finish()
        elif last_mid is not None:
            self.follow(after_mid=last_mid, offset=0)
        else:  # every item of the page was omitted: step over it
            self.follow(offset=self.cursor.offset + self.page_size)
        return fresh

    def _mid_and_changed(self, resource: dict[str, Any]) -> tuple[int, int]:
        """The media item's id and `changed`, in UNIX seconds."""
        attributes = resource.get("attributes") or {}
        mid = attributes.get("drupal_internal__mid")
        changed = attributes.get("changed")
        if not isinstance(mid, int) or changed is None:
            raise Unavailable(
                f"{self.collection}: media lack `drupal_internal__mid` or `changed` "
                "(hidden by jsonapi_extras?); damdup pages and watermarks on them"
            )
        return mid, _seconds(changed)


class _BasicAuth(AuthBase):
    """HTTP Basic with the credentials in UTF-8, as Drupal stores user names
    (requests' HTTPBasicAuth encodes str credentials as Latin-1)."""

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self.header = f"Basic {token}"

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self.header
        return request


class Drupal(HttpAdapter[DrupalCursor]):
    kind: ClassVar[str] = "drupal"
    settings_model = DrupalSettings
    cursor_model = DrupalCursor
    capabilities = Capabilities(
        incremental=True, renditions=True, annotate=True, describe=True, fetch_url=True
    )
    http: HttpClient

    def __init__(self, settings: DrupalSettings, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer)
        password = settings.password.get_secret_value() if settings.password else None
        auth = (
            _BasicAuth(settings.username, password)
            if settings.username is not None and password is not None
            else None
        )
        headers = {"Accept": "application/vnd.api+json"}
        if settings.consumer_id:
            headers["X-Consumer-ID"] = settings.consumer_id
        self.http = HttpClient.for_settings(
            settings,
            auth=auth,
            headers=headers,
            secrets=[password],
            allowed_hosts=settings.file_hosts,
            kind=self.kind,
            observer=observer,
        )
        self.base_url = str(settings.base_url)
        self.entry_point = settings.jsonapi_path.strip("/")
        self.resource_type = f"media--{settings.media_type}"
        self.collection = f"{self.entry_point}/media/{settings.media_type}"
        self._site_checked = False

    # -- marks -------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        return _decode(self._marks_text(asset)) or Marks()

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        if self.settings.username is None:
            raise AuthFailed(
                f"{self.base_url}: writing marks needs the unit's username and password of an "
                f"account that may edit {self.settings.media_type} media; the unit has none"
            )
        if _decode(self._marks_text(asset)) == marks:
            return False
        field = self.settings.marks_field
        document = {
            "data": {
                "type": self.resource_type,
                "id": asset.id,
                "attributes": {field: None if marks.empty else marks.to_json()},
            }
        }
        try:
            self.http.request(
                "PATCH",
                self._individual(asset),
                data=json.dumps(document).encode(),
                headers={"Content-Type": JSONAPI_TYPE},
            )
        except AuthFailed as exc:
            raise AuthFailed(
                f"{exc}. Writing marks needs an account with the permission "
                f"'{self.settings.media_type}: Edit any media' and edit access to {field}"
            ) from None
        except HttpError as exc:
            if exc.status == 405:  # JSON:API's read-only mode, the default
                raise AuthFailed(
                    f"{self.base_url}{self.entry_point} accepts only reads: an administrator "
                    "must choose 'Accept all JSON:API create, read, update, and delete "
                    "operations' at /admin/config/services/jsonapi before damdup can write marks"
                ) from None
            raise
        return True

    def _individual(self, asset: AssetRef) -> str:
        return f"{self.collection}/{asset.id}"

    def _marks_text(self, asset: AssetRef) -> str | None:
        """The marks field as stored now: one attribute of the media item,
        asked for with a sparse fieldset. A media item that is gone is a 404."""
        field = self.settings.marks_field
        body = self.http.get_json(self._individual(asset), {f"fields[{self.resource_type}]": field})
        data = body.get("data") if isinstance(body, dict) else None
        attributes = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(attributes, dict):
            raise Unavailable(f"{self._individual(asset)}: the answer has no resource object")
        if field not in attributes:
            raise Unsupported(
                f"{self.resource_type} has no field {field} (or this account may not see it): "
                f"add a 'Text (plain, long)' field {field} to the {self.settings.media_type} "
                "media type for damdup's marks, or name yours in the unit's marks_field"
            )
        value = attributes[field]
        if isinstance(value, dict):  # a formatted text field: {"value", "format"}
            value = value.get("value")
        return value if isinstance(value, str) else None

    # -- listing -----------------------------------------------------------

    def list_assets(self, cursor: DrupalCursor | None) -> Page[DrupalCursor]:
        self._check_site()
        paginator = DrupalPaginator(cursor, self.settings.page_size, self.collection)
        if paginator.starting:
            paginator.start(self._newest_change(paginator.cursor.since))
        resources, included, more = self._page(paginator)
        refs = [self._ref(resource, included) for resource in paginator.advance(resources, more)]
        items = [ref for ref in refs if ref is not None]
        return Page(items=items, cursor=paginator.cursor, complete=paginator.finished)

    def _page(
        self, paginator: DrupalPaginator
    ) -> tuple[list[dict[str, Any]], dict[tuple[Any, Any], dict[str, Any]], bool]:
        """One page of the collection: its media, the resources included
        with them, and whether a next page is linked."""
        params = {
            **paginator.filters(),
            "sort": "drupal_internal__mid",
            "include": self.settings.image_field,
            "page[limit]": str(self.settings.page_size),
            **paginator.position(),
        }
        body = self.http.get_json(self.collection, params)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise Unavailable(f"{self.collection}: the answer has no list of resources in `data`")
        return data, _included(body), bool((body.get("links") or {}).get("next"))

    def _newest_change(self, changed_since: int) -> int:
        body = self.http.get_json(
            self.collection,
            {
                **_changed_since(changed_since),
                "sort": "-changed",
                "page[limit]": "1",
                f"fields[{self.resource_type}]": "changed",
            },
        )
        data = body.get("data") if isinstance(body, dict) else None
        if not data:
            return changed_since
        changed = (data[0].get("attributes") or {}).get("changed")
        return _seconds(changed) if changed is not None else changed_since

    def _check_site(self) -> None:
        """Once, before the first listing: the entry point offers the media
        type, and a configured user is signed in."""
        if self._site_checked:
            return
        body = self.http.get_json(self.entry_point)
        links = body.get("links") if isinstance(body, dict) else None
        if not isinstance(links, dict):
            raise Unavailable(f"{self.base_url}{self.entry_point} is not a JSON:API entry point")
        if self.resource_type not in links:
            offered = sorted(name for name in links if name.startswith("media--"))
            raise NotFound(
                f"{self.base_url}{self.entry_point} offers no {self.resource_type} resource "
                f"(media types offered: {', '.join(offered) or 'none'}); check media_type"
            )
        me = ((body.get("meta") or {}).get("links") or {}).get("me")
        if self.settings.username is not None and not me:
            raise AuthFailed(
                f"{self.base_url}{self.entry_point} answered {self.settings.username!r} as an "
                "anonymous visitor: Drupal serves a wrong basic_auth user name or password as "
                "anonymous instead of refusing it; check the unit's credentials (and that "
                "basic_auth is enabled on the site)"
            )
        self._site_checked = True

    # -- one media item ----------------------------------------------------

    def _ref(
        self, resource: dict[str, Any], included: dict[tuple[Any, Any], dict[str, Any]]
    ) -> AssetRef | None:
        media_id = str(resource["id"])
        attributes = resource.get("attributes") or {}
        url = urljoin(self.base_url, f"media/{attributes['drupal_internal__mid']}/edit")
        relation = ((resource.get("relationships") or {}).get(self.settings.image_field)) or {}
        target = relation.get("data")
        image = (target or {}).get("meta") or {}
        file = included.get(("file--file", (target or {}).get("id")))
        file_attributes = (file or {}).get("attributes") or {}
        record = {**attributes, self.settings.image_field: image, "file": file_attributes}
        metadata = self.settings.metadata.apply(record)
        modified = str(attributes.get("changed"))
        if not isinstance(target, dict) or file is None:
            problem = (
                f"the media item has no {self.settings.image_field} file"
                if not isinstance(target, dict)
                else "its file was not in the answer (a private file this account may not see?)"
            )
            return AssetRef(
                id=media_id,
                version=f"no-file:{modified}",
                url=url,
                modified=modified,
                metadata=metadata,
                problem=problem,
            )
        mime = str(file_attributes.get("filemime") or "")
        if mime and not mime.startswith("image/"):
            return None
        uri = file_attributes.get("uri") or {}
        file_url = uri.get("url") if isinstance(uri, dict) else None
        size = file_attributes.get("filesize")
        width, height = _dimension(image.get("width")), _dimension(image.get("height"))
        return AssetRef(
            id=media_id,
            # The file entity is kept when a file is replaced in place: its
            # size and `changed` move with the bytes; a metadata edit does not.
            version=f"{file.get('id')}:{size}:{file_attributes.get('changed')}",
            url=url,
            size_bytes=size if isinstance(size, int) else None,
            modified=modified,
            metadata=metadata,
            problem=None if file_url else "its file has no URL (uri.url is missing)",
            original_url=urljoin(self.base_url, file_url) if file_url else None,
            width=width,
            height=height,
            renditions=self._renditions(file, width, height),
        )

    def _renditions(
        self, file: dict[str, Any], width: int | None, height: int | None
    ) -> tuple[Rendition, ...]:
        found: list[Rendition] = []
        for style, link in (file.get("links") or {}).items():
            if style == "self" or not isinstance(link, dict):
                continue
            meta = link.get("meta") or {}
            rel = meta.get("rel")
            if DERIVATIVE_REL not in (rel if isinstance(rel, list) else [rel]):
                continue
            href = link.get("href")
            if not isinstance(href, str):
                continue
            size = _link_size(meta) or self._computed_size(style, width, height)
            if size is not None:
                found.append(Rendition(url=href, width=size[0], height=size[1]))
        return tuple(found)

    def _computed_size(
        self, style: str, width: int | None, height: int | None
    ) -> tuple[int, int] | None:
        box = self.settings.image_styles.get(style)
        if box is None or not width or not height:
            return None
        return scale_dimensions(width, height, box.width, box.height)

    def describe(self, asset_id: str) -> AssetRef:
        """The media item's individual resource, with its file included.
        https://www.drupal.org/docs/core-modules-and-themes/core-modules/jsonapi-module/fetching-resources-get"""
        body = self.http.get_json(
            f"{self.collection}/{quote(asset_id, safe='')}", {"include": self.settings.image_field}
        )
        resource = body.get("data") if isinstance(body, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("attributes"), dict):
            raise Unavailable(f"{self.collection}/{asset_id}: the answer has no resource object")
        ref = self._ref(resource, _included(body))
        if ref is None:
            raise NotFound(f"{self.resource_type} {asset_id} is not an image")
        return ref

    # -- bytes -------------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        url = choose_rendition(asset, min_side) or asset.original_url
        if not url:
            raise BadAsset(f"{asset.id}: the media item has no file URL")
        return self.http.get_bytes(url)


def scale_dimensions(
    width: int, height: int, box_width: int | None, box_height: int | None
) -> tuple[int, int]:
    """A derivative's size under `image_scale` without upscaling, as Drupal's
    Image::scaleDimensions() computes it (PHP rounds halves away from zero)."""
    aspect = height / width
    if box_width and (not box_height or aspect < box_height / box_width):
        new_width, new_height = box_width, int(box_width * aspect + 0.5)
    elif box_height:
        new_width, new_height = int(box_height / aspect + 0.5), box_height
    else:
        return width, height
    if new_width >= width or new_height >= height:
        return width, height  # never upscaled: the derivative is the original's size
    return new_width, new_height


def _link_size(meta: dict[str, Any]) -> tuple[int, int] | None:
    width, height = _dimension(meta.get("width")), _dimension(meta.get("height"))
    return (width, height) if width and height else None


def _dimension(value: Any) -> int | None:
    """Link meta are strings ("1090"); relationship meta are numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value) or None
    return None


def _decode(text: str | None) -> Marks | None:
    """The marks a field holds; None when its text is not damdup's JSON (then
    the next `annotate` writes it over, whatever the marks)."""
    if not text or not text.strip():
        return Marks()
    try:
        return Marks.from_json(text)
    except (ValueError, TypeError, AttributeError):
        return None


def _changed_since(seconds: int) -> dict[str, str]:
    """The filter on `changed` every listing request carries (module docstring)."""
    return {
        "filter[changed][condition][path]": "changed",
        "filter[changed][condition][operator]": ">=",
        "filter[changed][condition][value]": str(seconds),
    }


def _included(body: dict[str, Any]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The resources included with an answer, by type and id."""
    return {
        (item.get("type"), item.get("id")): item
        for item in body.get("included") or []
        if isinstance(item, dict)
    }


def _seconds(value: Any) -> int:
    """A Drupal timestamp: RFC 3339 since 8.4 on new sites, an integer before."""
    if isinstance(value, int):
        return value
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise Unavailable(f"unreadable Drupal timestamp {value!r}") from exc
    if moment.tzinfo is None:
        raise Unavailable(f"Drupal timestamp {value!r} has no time zone")
    return int(moment.timestamp())
