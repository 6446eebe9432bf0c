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
  fields (`id` is an integer; `url` is the file, often on another host);
- the real server, run from its source (tests/servers/linked_events_real.py):
  `tests/contract/test_linked_events_real.py` sends both the same requests and
  compares the answers, so that this emulator cannot drift from it.

Kept as the real server answers (docs/adapters.md lists each with its request):
a page past the end, or page 0, is 404 `{"detail": "Epäkelpo sivu."}` (Linked
Events speaks Finnish: LANGUAGE_CODE is the first of its LANGUAGES); an image
that is not there is 404 `{"detail": "No Image matches the given query."}`;
an image path whose id is no number 404 `{"detail": "Ei löydy."}`, and a
path no route takes Django's HTML "Not Found" page; a `page_size` over
the maximum is clamped and one that is not a positive number ignored; an
unknown `sort` field is ignored; paging links carry their query parameters
sorted, and the link to page 1 has no `page` (DRF's `replace_query_param` and
`remove_query_param`); `created_by` and `last_modified_by` appear only to a
valid API key (an admin of the publisher: `only_admin_visible_fields`), as
" - " for images an API key uploaded; `cropping` is the largest centred square
of the stored image, which django-image-cropping fills in on upload
(`ImageRatioField("image", "800x800")`): a crop hint, not a rendition. Uploaded
files are `/media/images/<name>` under Django's storage rules (spaces become
underscores, characters other than letters, digits, `-`, `_` and `.` are
dropped, a name in use gets
`_<7 characters>`), served as uWSGI's static-map serves them (Last-Modified,
no Cache-Control), and a deleted image's file is deleted with it
(django-cleanup). Linked Events documents no rate limit, so none is emulated.
`media_url` moves the files to another server, as images linked from
www.hel.fi are.
"""

from __future__ import annotations

import hashlib
import io
import re
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

from PIL import Image
from werkzeug.exceptions import HTTPException
from werkzeug.http import http_date
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter
from adapters.linked_events import LinkedEvents, LinkedEventsSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import Emulator, Library, StoredAsset, json_response

# Obviously fake; the emulator accepts it as a data source's key.
API_KEY = "fake-linkedevents-key-0001"
MAX_PAGE_SIZE = 1000
SORT_FIELDS = frozenset({"last_modified_time", "id", "name"})
INVALID_PAGE = "Epäkelpo sivu."  # DRF's "Invalid page." in Finnish
NO_IMAGE = "No Image matches the given query."  # Django's Http404, untranslated
NOT_FOUND = "Ei löydy."  # DRF's "Not found." in Finnish
# The paths of its router's image routes (list, record, the record's file).
IMAGE_ROUTE = re.compile(r"^/v1/image/([^/.]+/(file/)?)?$")
# What `str(user)` gives for the user record behind an API key (no name, no e-mail).
API_KEY_USER = " - "
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
            Rule("/media/images/<name>", endpoint="media", methods=["GET"]),
        ],
        strict_slashes=False,
    )

    def __init__(self, library: Library | None = None, media_url: str | None = None) -> None:
        super().__init__(library)
        self.api_keys = {API_KEY}
        # Where image files live; None: on this server, as uploads are.
        self.media_url = media_url
        # Each image's file name under media/images/, given in upload order.
        self._file_names: dict[str, str] = {}

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
        # DRF answers paths its image routes match (an id that is no number
        # included); Django's HTML page answers the rest.
        if exc.code == 404 and not IMAGE_ROUTE.match(request.path):
            return Response(NOT_FOUND_PAGE, status=404, content_type="text/html; charset=utf-8")
        return json_response({"detail": NOT_FOUND}, status=exc.code or 500)

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
            return json_response({"detail": INVALID_PAGE}, status=404)
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
            return json_response({"detail": NO_IMAGE}, status=404)
        return json_response(self._record(request, asset))

    def media(self, request: Request, name: str) -> Response:
        owners = {file_name: asset_id for asset_id, file_name in self._files().items()}
        asset = self.library.get(owners.get(name, ""))
        if asset is None:  # Django's own page: uWSGI serves only files that exist
            return Response(NOT_FOUND_PAGE, status=404, content_type="text/html; charset=utf-8")
        # As uWSGI's static-map serves it: no Cache-Control, Range ignored.
        return Response(
            asset.data,
            content_type=asset.mime_type,
            headers={"Last-Modified": http_date(asset.modified)},
        )

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
        """DRF's links: the request's own URL, its parameters sorted, `page`
        replaced, or removed for page 1."""
        parts = urlsplit(self.public_url(request, request.full_path.lstrip("/")))
        query = parse_qs(parts.query, keep_blank_values=True)
        query.pop("page", None)
        if page != 1:
            query["page"] = [str(page)]
        encoded = urlencode(sorted(query.items()), doseq=True)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, encoded, parts.fragment))

    @staticmethod
    def _field(asset: StoredAsset, name: str) -> Any:
        defaults = {"publisher": "ahjo:u4804001010", "data_source": "helsinki"}
        return asset.metadata.get(name, defaults.get(name))

    def _files(self) -> dict[str, str]:
        """Every live image's file name, given in upload order as Django's
        storage gives them: a name in use gets a suffix. A deleted image's
        file is deleted with it, and its name is free again."""
        with self.library.lock:
            live = sorted(self.library.live(), key=lambda asset: int(asset.id))
            live_ids = {asset.id for asset in live}
            for asset_id in [a for a in self._file_names if a not in live_ids]:
                del self._file_names[asset_id]
            for asset in live:
                if asset.id not in self._file_names:
                    taken = set(self._file_names.values())
                    name = valid_file_name(asset.name)
                    if name in taken:
                        root, dot, extension = name.rpartition(".")
                        if not dot:
                            root, extension = name, ""
                        token = hashlib.sha256(asset.id.encode()).hexdigest()[:7]
                        name = f"{root}_{token}{dot}{extension}"
                    self._file_names[asset.id] = name
            return dict(self._file_names)

    def file_url(self, request: Request, asset: StoredAsset) -> str:
        path = "media/images/" + quote(self._files()[asset.id], safe="/~!*()'")
        return (self.media_url or self.public_url(request, "")) + path

    def _admin(self, request: Request) -> bool:
        # The emulator's one key stands for a data source whose organization
        # is above every publisher: its holder sees the admin-only fields.
        return request.headers.get("apikey") in self.api_keys

    def _record(self, request: Request, asset: StoredAsset) -> dict[str, Any]:
        meta = asset.metadata
        record: dict[str, Any] = {
            "id": int(asset.id),
            "has_user_editable_resources": False,
            "license": meta.get("license", "cc_by"),
            "license_url": "https://creativecommons.org/licenses/by/4.0/",
            "created_time": meta.get("created_time") or drf_time(asset.created),
            "last_modified_time": drf_time(asset.modified),
        }
        if self._admin(request):
            record["created_by"] = meta.get("created_by", API_KEY_USER)
            record["last_modified_by"] = meta.get("last_modified_by", API_KEY_USER)
        record |= {
            "url": self.file_url(request, asset),
            "name": meta.get("name", asset.name),
            "cropping": meta.get("cropping", square_crop_box(asset.data)),
            "photographer_name": meta.get("photographer_name"),
            "alt_text": meta.get("alt_text"),
            "data_source": self._field(asset, "data_source"),
            "publisher": self._field(asset, "publisher"),
            "@id": self.public_url(request, f"v1/image/{asset.id}/"),
            "@context": "http://schema.org",
            "@type": "ImageObject",
        }
        return record


# Django's page for a path nothing answers (DEBUG off).
NOT_FOUND_PAGE = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n'
    "<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>"
    "\n</body>\n</html>\n"
)


def valid_file_name(name: str) -> str:
    """Django's `get_valid_filename`: spaces to underscores, then only
    letters, digits, `-`, `_` and `.` kept."""
    return re.sub(r"(?u)[^-\w.]", "", name.strip().replace(" ", "_")) or "image"


def square_crop_box(data: bytes) -> str:
    """django-image-cropping's initial box for a 1:1 ratio field
    (`max_cropping`): the largest centred square of the stored image, its
    size as stored (before any EXIF rotation), "x0,y0,x1,y1"."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except OSError:
        return ""
    if width < height:
        offset = round((height - width) / 2)
        return f"0,{offset},{width},{height - offset}"
    offset = round((width - height) / 2)
    return f"{offset},0,{width - offset},{height}"


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
