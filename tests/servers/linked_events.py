"""An emulator of the City of Helsinki's Linked Events image endpoint.

Written from the API's own source and documentation:
- https://github.com/City-of-Helsinki/linkedevents `events/api.py` (`ImageViewSet`:
  filters `publisher`, `data_source`, `text`; `sort` over `last_modified_time`,
  `id`, `name`, default `-last_modified_time`) and `events/api_pagination.py`
  (`LargeResultsSetPagination`: `page`/`page_size`, 1000 by default and at most;
  `{"meta": {"count", "next", "previous"}, "data": [...]}`);
- `events/templates/swagger/image_list_description.html` (the parameters above);
- `events/auth.py` (`ApiKeyAuthentication`: an `apikey` header that matches no
  data source is refused with 401 even on a read; no key at all reads as anonymous);
- a live answer of https://linkedevents.api.test.hel.ninja/v1/image/ for the record
  fields (`id` is an integer; `url` is the file, often on another host).

Django REST framework behaviour kept: a page past the end is 404 `{"detail":
"Invalid page."}`, a `page_size` over the maximum is clamped, an unknown `sort`
field is ignored. Linked Events documents no rate limit, so none is emulated.
Image files are served under /media/images/ (uploads); `media_url` moves them to
another server, as images linked from www.hel.fi are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter
from adapters.linked_events import LinkedEvents, LinkedEventsSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import Emulator, Library, StoredAsset, image_response, json_response

# Obviously fake; the emulator accepts it as a data source's key.
API_KEY = "fake-linkedevents-key-0001"
MAX_PAGE_SIZE = 1000
SORT_FIELDS = frozenset({"last_modified_time", "id", "name"})
INVALID_KEY = (
    "Provided API key does not match any organization on record. Please contact the API "
    "support staff to obtain a valid API key and organization identifier for POSTing your events."
)


def drf_time(moment: datetime) -> str:
    """Django REST framework's datetime format: ISO 8601, Z, microseconds when any."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class LinkedEventsEmulator(Emulator):
    url_map = Map(
        [
            Rule("/v1/image/", endpoint="image_list", methods=["GET"]),
            Rule("/v1/image/<int:image_id>/", endpoint="image_detail", methods=["GET"]),
            Rule("/media/images/<int:image_id>/<name>", endpoint="media", methods=["GET"]),
        ],
        strict_slashes=False,
    )

    def __init__(self, library: Library | None = None, media_url: str | None = None) -> None:
        super().__init__(library)
        self.api_keys = {API_KEY}
        # Where image files live; None: on this server, as uploads are.
        self.media_url = media_url

    # -- answers ---------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        key = request.headers.get("apikey")
        if key is not None and key not in self.api_keys:
            return json_response(
                {"detail": INVALID_KEY},
                status=401,
                headers={"WWW-Authenticate": "Api key authentication failed."},
            )
        return super().dispatch(request)

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        return json_response({"detail": "Not found."}, status=exc.code or 500)

    def image_list(self, request: Request) -> Response:
        args = request.args
        try:
            page = int(args.get("page", "1"))
        except ValueError:
            page = 0
        page_size = MAX_PAGE_SIZE
        if args.get("page_size", "").isdigit() and int(args["page_size"]) > 0:
            page_size = min(int(args["page_size"]), MAX_PAGE_SIZE)
        records = self._filtered(request)
        self._sort(records, args.get("sort", ""))
        pages = max(1, -(-len(records) // page_size))
        if page < 1 or page > pages:
            return json_response({"detail": "Invalid page."}, status=404)
        chunk = records[(page - 1) * page_size : page * page_size]
        return json_response(
            {
                "meta": {
                    "count": len(records),
                    "next": self._page_link(request, page + 1) if page < pages else None,
                    "previous": self._page_link(request, page - 1) if page > 1 else None,
                },
                "data": [self._record(request, asset) for asset in chunk],
            }
        )

    def image_detail(self, request: Request, image_id: int) -> Response:
        asset = self.library.get(str(image_id))
        if asset is None:
            raise NotFound()
        return json_response(self._record(request, asset))

    def media(self, request: Request, image_id: int, name: str) -> Response:
        asset = self.library.get(str(image_id))
        if asset is None or name != asset.name:
            return Response("<h1>Not Found</h1>", status=404, content_type="text/html")
        return image_response(asset.data, asset.mime_type)

    # -- helpers ---------------------------------------------------------

    def _filtered(self, request: Request) -> list[StoredAsset]:
        records = self.library.live()
        args = request.args
        # The API lowercases the filter values (`get_queryset`).
        if args.get("publisher"):
            wanted = set(args["publisher"].lower().split(","))
            records = [a for a in records if self._field(a, "publisher") in wanted]
        if args.get("data_source"):
            wanted = set(args["data_source"].lower().split(","))
            records = [a for a in records if self._field(a, "data_source") in wanted]
        if args.get("text"):
            text = args["text"].lower()
            records = [
                a
                for a in records
                if text in (self._field(a, "name") or "").lower()
                or text in (self._field(a, "alt_text") or "").lower()
            ]
        return records

    @staticmethod
    def _sort(records: list[StoredAsset], sort: str) -> None:
        field = sort.lstrip("-")
        if field not in SORT_FIELDS:  # DRF's OrderingFilter ignores unknown fields
            field, sort = "last_modified_time", "-last_modified_time"
        keys = {
            "last_modified_time": lambda a: (a.modified, int(a.id)),
            "id": lambda a: (int(a.id), 0),
            "name": lambda a: (a.metadata.get("name", a.name), int(a.id)),
        }
        records.sort(key=keys[field], reverse=sort.startswith("-"))

    def _page_link(self, request: Request, page: int) -> str:
        query = [(k, v) for k, v in request.args.items(multi=True) if k != "page"]
        return self.public_url(request, "v1/image/") + "?" + urlencode([*query, ("page", page)])

    @staticmethod
    def _field(asset: StoredAsset, name: str) -> Any:
        defaults = {"publisher": "ahjo:u4804001010", "data_source": "helsinki"}
        return asset.metadata.get(name, defaults.get(name))

    def file_url(self, request: Request, asset: StoredAsset) -> str:
        path = f"media/images/{asset.id}/{quote(asset.name)}"
        return (self.media_url or self.public_url(request, "")) + path

    def _record(self, request: Request, asset: StoredAsset) -> dict[str, Any]:
        meta = asset.metadata
        return {
            "id": int(asset.id),
            "has_user_editable_resources": False,
            "license": meta.get("license", "cc_by"),
            "license_url": "https://creativecommons.org/licenses/by/4.0/",
            "created_time": meta.get("created_time") or drf_time(asset.created),
            "last_modified_time": drf_time(asset.modified),
            "name": meta.get("name", asset.name),
            "url": self.file_url(request, asset),
            "cropping": meta.get("cropping", ""),
            "photographer_name": meta.get("photographer_name"),
            "alt_text": meta.get("alt_text"),
            "data_source": self._field(asset, "data_source"),
            "publisher": self._field(asset, "publisher"),
            "@id": self.public_url(request, f"v1/image/{asset.id}/"),
            "@context": "http://schema.org",
            "@type": "ImageObject",
        }


class LinkedEventsHarness(EmulatorHarness):
    kind = "linked_events"
    listing_path = "/v1/image/"
    emulator: LinkedEventsEmulator
    # A Linked Events image has no place of its own (its events do); a unit that
    # writes the place into the alt text maps location there, as this one does.
    unit_metadata: ClassVar[dict[str, str]] = {
        "location": "alt_text",
        "date": "created_time",
        "department": "publisher",
    }

    def __init__(self) -> None:
        super().__init__(LinkedEventsEmulator())

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url + "v1/",
            "api_key": API_KEY,
            "metadata": dict(self.unit_metadata),
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return LinkedEvents(LinkedEventsSettings(**self.settings(**overrides)))

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        placed: dict[str, Any] = {}
        if "location" in metadata:
            placed["alt_text"] = metadata["location"]
        if "date" in metadata:
            date = metadata["date"]
            placed["created_time"] = f"{date}T00:00:00Z" if len(date) == 10 else date
        if "department" in metadata:
            placed["publisher"] = metadata["department"]
        return placed

    def bad_credentials(self) -> dict[str, Any] | None:
        # Reading needs no key, but a wrong one is refused (ApiKeyAuthentication).
        return {"api_key": "wrong-key-for-linked-events"}
