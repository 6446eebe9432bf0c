"""Finna, the Finnish national search service, as a read-only image library: one
organization's images (the Helsinki City Museum is building "0/HKM/").

API: https://api.finna.fi/api/v1/search (https://www.kiwi.fi/display/Finna/Finna+API+in+English,
OpenAPI at https://api.finna.fi/v1?swagger). No credentials. `limit` is at most
100 a page; pages are numbered from 1 and sorted by record id, which a
re-indexed record keeps. The search API returns the first 20 images of a record.

Each image of a record is an asset: the record id for the first image, "<id>#<n>"
for the others. `imagesExtended` gives, per image, the `/Cover/Show` paths of the
museum's own sizes (small, medium, large, master: their pixel sizes are not
published) and `highResolution` originals with format and, usually, width,
height and byte size. So the original is read through `/Cover/Download`, and the
renditions are `/Cover/Show` of the master (else large) fitted into fixed boxes
(`w`, `h`): Finna scales aspect-preserving and never enlarges
(NatLibFi/NDL-VuFind2 `Cover/Loader.php`), so their sizes follow from the
original's. A museum size smaller than the box comes back smaller than
promised; `fetch` checks the JPEG's size and reads the original instead.

No modified-since filter exists for records (their `last_indexed` is not a
field), so listings are full: unchanged images fetch nothing, since `version`
is a digest of the image's entry (file URL, format, byte size, dimensions).

Metadata defaults: location from `subjectPlaces` (the places the photo shows),
date from `year` (the main year: taken or made), department from the first
`buildings` level, translated (e.g. "Helsingin kaupunginmuseo").
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode, urljoin

from PIL import Image
from pydantic import BaseModel, Field, HttpUrl
from pydantic_settings import SettingsConfigDict

from adapters.base import (
    AssetMetadata,
    AssetRef,
    BadAsset,
    Capabilities,
    HttpAdapter,
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

__all__ = ["Finna", "FinnaCursor", "FinnaSettings"]

MAX_LIMIT = 100  # VuFind SearchApiController::$maxLimit
# Boxes the renditions are asked to fit. Few and fixed, so Finna's cover cache
# (keyed by w and h) serves them again.
RENDITION_BOXES = (640, 960, 1280, 1920)
# Fields every listing asks for; the metadata mapping may add more.
FIELDS = ("id", "title", "buildings", "imagesExtended", "subjectPlaces", "year")


class FinnaSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_FINNA_", extra="forbid")
    base_url: HttpUrl = HttpUrl("https://api.finna.fi/api/v1/")
    page_size: int = Field(MAX_LIMIT, ge=1, le=MAX_LIMIT)
    building: str = Field("0/HKM/", min_length=1, description='the organization: building:"..."')
    filters: list[str] = Field(
        default_factory=list, description='more filter[] values, e.g. collection:"..."'
    )
    language: Literal["fi", "sv", "en-gb"] = "fi"
    # Where a person opens a record; the API host serves no pages.
    record_url: HttpUrl = HttpUrl("https://finna.fi/Record/")
    # Where the /Cover/ paths of imagesExtended live; the API's host by default.
    image_base_url: HttpUrl | None = None
    metadata: MetadataMapping = MetadataMapping(
        location="subjectPlaces", date="year", department="buildings.0.translated"
    )


class FinnaCursor(BaseModel):
    page: int = Field(1, ge=1)  # the next page of the listing in progress


class Finna(HttpAdapter[FinnaCursor]):
    kind: ClassVar[str] = "finna"
    settings_model = FinnaSettings
    cursor_model = FinnaCursor
    capabilities = Capabilities(renditions=True, describe=True, exists=True, fetch_url=True)
    http: HttpClient

    def __init__(self, settings: FinnaSettings, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer)
        base = str(settings.base_url)
        image_base = str(settings.image_base_url or urljoin(base, "/"))
        # Image paths are joined below it, so that a base with a path keeps it.
        self.image_base = image_base if image_base.endswith("/") else image_base + "/"
        self.http = HttpClient.for_settings(
            settings,
            headers={"Accept": "application/json"},
            allowed_hosts=[self.image_base],
            kind=self.kind,
            observer=observer,
        )
        if settings.filters:  # they cannot be checked on one record (describe)
            self.capabilities = self.capabilities.without("describe")

    # -- listing ---------------------------------------------------------

    def list_assets(self, cursor: FinnaCursor | None) -> Page[FinnaCursor]:
        page = cursor.page if cursor else 1
        limit = self.settings.page_size
        body = self._search(page, limit)
        records = body.get("records") or []  # left out when the page is empty
        if not isinstance(records, list):
            raise Unavailable("finna: the search answer's records are not a list")
        items: list[AssetRef] = []
        for record in records:
            if isinstance(record, dict) and record.get("id"):
                items.extend(self._refs(record))
        total = body.get("resultCount")
        if not isinstance(total, int):
            raise Unavailable("finna: the search answer has no resultCount")
        if records and page * limit < total:
            return Page(items, FinnaCursor(page=page + 1), False)
        return Page(items, None, True)

    def _fields(self) -> list[str]:
        fields = list(FIELDS)
        mapping = self.settings.metadata
        for path in (mapping.location, mapping.date, mapping.department):
            if path and not path.startswith("="):
                name = path.split(".", 1)[0]
                if name not in fields:
                    fields.append(name)
        return fields

    def _search(self, page: int, limit: int) -> dict[str, Any]:
        building = self.settings.building.replace('"', "")
        params: list[tuple[str, Any]] = [
            ("lookfor", ""),
            ("filter[]", f'building:"{building}"'),
            ("filter[]", 'format:"0/Image/"'),
            ("filter[]", 'online_boolean:"1"'),
            *(("filter[]", extra) for extra in self.settings.filters),
            *(("field[]", field) for field in self._fields()),
            ("sort", "id asc"),
            ("page", page),
            ("limit", limit),
            ("lng", self.settings.language),
        ]
        try:
            # filter[] and field[] repeat, so the query is built here, in order.
            body = self.http.get_json("search?" + urlencode(params))
        except HttpError as exc:
            # VuFind's answer: {"status": "ERROR", "statusMessage": "Invalid limit"}.
            reason = exc.detail or str(exc)
            raise HttpError(
                f"finna: the search was refused ({exc.status}): {reason}; "
                "check the unit's building and filters",
                exc.status,
            ) from exc
        if not isinstance(body, dict):
            raise Unavailable("finna: the search answer is not a JSON object")
        if body.get("status") != "OK":
            message = body.get("statusMessage") or body.get("status") or "no status"
            raise Unavailable(f"finna: the search answered {message!r}")
        return body

    def _refs(self, record: dict[str, Any]) -> list[AssetRef]:
        record_id = str(record["id"])
        page_url = str(self.settings.record_url) + quote(record_id, safe=":")
        metadata = self.settings.metadata.apply(record)
        images = record.get("imagesExtended") or []
        refs = []
        for index, image in enumerate(images if isinstance(images, list) else []):
            if not isinstance(image, dict):
                continue
            asset_id = record_id if index == 0 else f"{record_id}#{index}"
            refs.append(self._ref(asset_id, record_id, index, image, page_url, metadata))
        return refs

    def _ref(
        self,
        asset_id: str,
        record_id: str,
        index: int,
        image: dict[str, Any],
        page_url: str,
        metadata: AssetMetadata,
    ) -> AssetRef:
        urls = image.get("urls")
        if not isinstance(urls, dict):
            urls = {}
        original = _original(image)
        width = height = size_bytes = None
        original_url: str | None = None
        if original is not None:
            data = original.get("data")
            if not isinstance(data, dict):
                data = {}
            width, height = _measure(data, "width"), _measure(data, "height")
            size_bytes = _measure(data, "size")
            original_url = self._cover(
                "Download",
                {"id": record_id, "index": index, "size": "original", "format": original["format"]},
            )
        else:
            # No file to download: the museum's largest size is the best there is.
            largest = urls.get("master") or urls.get("large")
            original_url = urljoin(self.image_base, str(largest).lstrip("/")) if largest else None
        renditions: list[Rendition] = []
        source = "master" if "master" in urls else "large" if "large" in urls else None
        if width and height and source and original is not None:
            for box in RENDITION_BOXES:
                if box >= max(width, height):
                    break
                fitted_width, fitted_height = finna_fit(width, height, box, box)
                query = {"source": "Solr", "id": record_id, "index": index, "size": source}
                url = self._cover("Show", {**query, "w": box, "h": box})
                renditions.append(Rendition(url, fitted_width, fitted_height))
        digest = hashlib.sha256(
            json.dumps(
                [image.get("highResolution"), image.get("identifier"), urls],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        return AssetRef(
            id=asset_id,
            version=f"finna:{digest[:24]}",
            url=page_url,
            size_bytes=size_bytes,
            metadata=metadata,
            problem=None if original_url else "the record lists no image file",
            original_url=original_url,
            width=width,
            height=height,
            renditions=tuple(renditions),
        )

    def _cover(self, action: str, query: dict[str, Any]) -> str:
        return urljoin(self.image_base, f"Cover/{action}?{urlencode(query)}")

    def exists(self, asset: AssetRef) -> bool:
        """The record still holds the image (`<id>#<n>` is its n-th image)."""
        record_id, _, index = asset.id.partition("#")
        body = self.http.get_json(
            "record?" + urlencode([("id[]", record_id), ("field[]", "id"), ("field[]", "images")])
        )
        records = body.get("records") if isinstance(body, dict) else None
        if not records:
            return False
        images = records[0].get("images") if isinstance(records[0], dict) else None
        return not index or (isinstance(images, list) and int(index) < len(images))

    def describe(self, asset_id: str) -> AssetRef:
        """`GET record?id[]=<record id>` with the listing's fields and
        language; the asset is the record's image that the id names ("<id>"
        its first, "<id>#<n>" its n-th), made as the listing makes it. The
        record must pass the listing's own filters: the building and the
        image format are checked on the record; other `filters` cannot be
        checked on one record, so such a unit is Unsupported (a check syncs it)."""
        record_id, hash_sign, index = asset_id.partition("#")
        if not record_id or (hash_sign and (not index.isdigit() or int(index) < 1)):
            raise NotFound(f"finna: {asset_id!r} is not an image id of this unit")
        if self.settings.filters:
            raise Unsupported(
                f"finna: the unit's filters {self.settings.filters} cannot be checked on one "
                "record; a check syncs the unit instead"
            )
        fields = [*self._fields(), "formats"]
        query = [("id[]", record_id), *(("field[]", field) for field in fields)]
        body = self.http.get_json("record?" + urlencode([*query, ("lng", self.settings.language)]))
        if not isinstance(body, dict) or body.get("status") != "OK":
            raise Unavailable(f"finna: the record answer for {record_id!r} is not OK")
        records = body.get("records") or []  # left out when the record is gone
        if not isinstance(records, list):
            raise Unavailable("finna: the record answer's records are not a list")
        record = next(
            (r for r in records if isinstance(r, dict) and str(r.get("id")) == record_id), None
        )
        if record is None:
            raise NotFound(f"finna: no record {record_id!r}")
        building = self.settings.building.replace('"', "")
        if building not in _values(record.get("buildings")):
            raise NotFound(f"finna: record {record_id!r} is not in building {building!r}")
        if "0/Image/" not in _values(record.get("formats")):
            raise NotFound(f"finna: record {record_id!r} is not an image record")
        for ref in self._refs({key: value for key, value in record.items() if key != "formats"}):
            if ref.id == asset_id:
                return ref
        raise NotFound(f"finna: record {record_id!r} has no image {asset_id!r}")

    # -- files -----------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        url = choose_rendition(asset, min_side)
        if url is not None:
            data = self.http.get_bytes(url)
            size = image_size(data)
            # The museum's master (or large) may be smaller than the box asked
            # for: Finna then sends it as it is, smaller than promised.
            if size is None or min(size) >= min_side:
                return data
        if not asset.original_url:
            raise BadAsset(f"finna image {asset.id} has no file URL")
        return self.http.get_bytes(asset.original_url)


def _values(facet: Any) -> set[str]:
    """The `value`s of a hierarchical facet field (buildings, formats)."""
    items = facet if isinstance(facet, list) else []
    return {str(item.get("value")) for item in items if isinstance(item, dict)}


def _original(image: dict[str, Any]) -> dict[str, Any] | None:
    """The high-resolution original Finna can stream, a JPEG one first."""
    high = image.get("highResolution")
    entries = high.get("original") if isinstance(high, dict) else None
    if not isinstance(entries, list):
        return None
    usable = [e for e in entries if isinstance(e, dict) and e.get("url") and e.get("format")]
    usable.sort(key=lambda entry: str(entry["format"]).lower() not in ("jpg", "jpeg"))
    return usable[0] if usable else None


def _measure(data: dict[str, Any], name: str) -> int | None:
    """A measurement of `highResolution` data: {"unit": ..., "value": "1914"}."""
    entry = data.get(name)
    value = entry.get("value") if isinstance(entry, dict) else None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number > 0 else None


def finna_fit(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """The size Finna's Cover/Loader.php makes of an image fitted into a box
    (PHP's round() takes halves away from zero)."""
    if width <= box_width and height <= box_height:
        return width, height
    new_height = min(height, box_height)
    new_width = math.floor(new_height * (width / height) + 0.5)
    if new_width > box_width:
        new_width = box_width
        new_height = math.floor(new_width * (height / width) + 0.5)
    return new_width, new_height


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header (Pillow reads no pixels for
    this); None for anything that is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
