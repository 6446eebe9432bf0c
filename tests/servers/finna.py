"""An emulator of the Finna search API and its image service (finna.fi, the
Finnish national search service; the Helsinki City Museum is building "0/HKM/").

Written from Finna's published documentation and source:
- https://www.kiwi.fi/display/Finna/Finna+API+in+English and the OpenAPI
  specification at https://api.finna.fi/v1?swagger: `GET /api/v1/search` with
  `lookfor`, `filter[]` (`field:"value"`, `-` negates), `field[]`, `sort`, `page`
  (from 1), `limit` (0..100, default 20); the answer is `{"resultCount", "records",
  "status": "OK"}` with `records` left out when empty;
- vufind-org/vufind `module/VuFindApi/.../SearchApiController.php`, `ApiTrait.php`,
  `ApiException.php`: a bad `limit` is 400 `{"status": "ERROR", "statusMessage":
  "Invalid limit"}`, a search Solr cannot run is 400 "Invalid search", an unknown
  `sort` falls back to the default;
- NatLibFi/NDL-VuFind2 `FinnaApi/Formatter/RecordFormatter.php` and
  `RecordDriver/SolrLido.php`: `imagesExtended` entries with `urls` (small, medium,
  large, master `/Cover/Show` paths without a host), `highResolution`
  (`original`/`master` lists of `{data: {width, height, size}, url, format,
  resourceID}`), `rights`, `identifier`, `resourceName`; `buildings` as
  `{value, translated}`;
- NDL-VuFind2 `Controller/CoverController.php` and `Cover/Loader.php`:
  `/Cover/Show?id=&index=&size=` serves the museum's representation of that size,
  scaled to fit `w`x`h` (aspect kept, never enlarged, JPEG quality 90) when they
  are given; `/Cover/Download?id=&index=&size=original|master&format=` streams the
  high-resolution file unchanged (400 for another size); a missing record is 404.

Finna documents no rate-limit answer, so none is emulated. The museum's own sizes
are made here as a museum makes them: small fits 250 px, medium 600, large 1280;
master is the original when it is a JPEG.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any, ClassVar
from urllib.parse import urlencode

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter
from adapters.finna import Finna, FinnaSettings
from tests.contract.harness import EmulatorHarness
from tests.servers.common import Emulator, Library, StoredAsset, fit_within, json_response, scaled

MAX_LIMIT = 100
HKM = "0/HKM/"
HKM_NAME = "Helsingin kaupunginmuseo"
# The museum's own representations (LIDO image_thumb, medium, image_large).
SIZE_BOXES = {"small": 250, "medium": 600, "large": 1280}
SORTS = {
    "relevance,id asc",
    "id asc",
    "main_date_str desc",
    "main_date_str asc",
    "last_indexed desc",
    "first_indexed desc",
    "title,id asc",
}
FILTER_FIELDS = {"building", "format", "online_boolean"}
# Where the museum keeps its originals; Finna links them, /Cover/Download streams them.
MUSEUM_HOST = "https://hkm-kuvat.example"


def php_round(value: float) -> int:
    """PHP's round(): halves away from zero (Python's round() goes to even)."""
    return math.floor(value + 0.5)


def finna_fit(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """The size Finna's Cover/Loader.php gives an image asked to fit a box."""
    if width <= box_width and height <= box_height:
        return width, height
    new_height = min(height, box_height)
    new_width = php_round(new_height * (width / height))
    if new_width > box_width:
        new_width = box_width
        new_height = php_round(new_width * (height / width))
    return new_width, new_height


class FinnaEmulator(Emulator):
    url_map = Map(
        [
            Rule("/api/v1/search", endpoint="search", methods=["GET"]),
            Rule("/api/v1/record", endpoint="record", methods=["GET"]),
            Rule("/v1/record", endpoint="record", methods=["GET"]),
            Rule("/v1/search", endpoint="search", methods=["GET"]),
            Rule("/Cover/Show", endpoint="cover_show", methods=["GET"]),
            Rule("/Cover/Download", endpoint="cover_download", methods=["GET"]),
        ]
    )

    def __init__(self, library: Library | None = None) -> None:
        super().__init__(library)

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        page = f"<html><head><title>{exc.name}</title></head><body>{exc.name}</body></html>"
        return Response(page, status=exc.code or 500, content_type="text/html")

    # -- search ----------------------------------------------------------

    def search(self, request: Request) -> Response:
        args = request.args
        limit_text = args.get("limit")
        if limit_text is not None and (
            not limit_text.isdigit() or not 0 <= int(limit_text) <= MAX_LIMIT
        ):
            return self._error("Invalid limit")
        limit = int(limit_text) if limit_text is not None else 20
        try:
            page = max(1, int(args.get("page", "1")))
        except ValueError:
            page = 1
        records = self.library.live()
        for query in args.getlist("filter[]"):
            matched = self._filter(records, query)
            if matched is None:
                return self._error("Invalid search")
            records = matched
        lookfor = args.get("lookfor", "").strip().lower()
        if lookfor and lookfor != "*":
            records = [a for a in records if lookfor in self._title(a).lower()]
        self._sort(records, args.get("sort", ""))
        fields = args.getlist("field[]") or ["id", "title", "buildings", "formats", "images"]
        chunk = records[(page - 1) * limit : page * limit]
        answer: dict[str, Any] = {"resultCount": len(records)}
        if chunk:
            answer["records"] = [self._record(asset, fields) for asset in chunk]
        answer["status"] = "OK"
        return json_response(answer)

    def record(self, request: Request) -> Response:
        """GET /record?id[]=...: the records asked for that exist, in the
        search answer's shape (https://api.finna.fi/swagger-ui/ "record")."""
        ids = request.args.getlist("id[]") or request.args.getlist("id")
        if not ids:
            return self._error("Missing id")
        fields = request.args.getlist("field[]") or ["id", "title", "buildings", "images"]
        found = [asset for asset in (self.library.get(i) for i in ids) if asset is not None]
        answer: dict[str, Any] = {"resultCount": len(found)}
        if found:
            answer["records"] = [self._record(asset, fields) for asset in found]
        answer["status"] = "OK"
        return json_response(answer)

    def _error(self, message: str) -> Response:
        return json_response({"status": "ERROR", "statusMessage": message}, status=400)

    def _filter(self, records: list[StoredAsset], query: str) -> list[StoredAsset] | None:
        negate = query.startswith("-")
        field, _, value = query.lstrip("-~").partition(":")
        value = value.strip('"')
        if field not in FILTER_FIELDS or not value:
            return None  # Solr refuses an unknown field: VuFind answers "Invalid search"

        def values(asset: StoredAsset) -> set[str]:
            if field == "building":
                return {b["value"] for b in self._buildings(asset)}
            if field == "format":
                return {"0/Image/", "1/Image/Photo/"}
            return {"1"}  # online_boolean: every record here has an image

        return [a for a in records if (value in values(a)) != negate]

    @staticmethod
    def _sort(records: list[StoredAsset], sort: str) -> None:
        if sort not in SORTS:
            sort = "relevance,id asc"  # VuFind falls back to the default sort
        if sort.startswith("main_date_str"):
            records.sort(key=lambda a: (str(a.metadata.get("year", "")), a.id))
            if sort.endswith("desc"):
                records.reverse()
        elif sort in ("last_indexed desc", "first_indexed desc"):
            attribute = "modified" if sort.startswith("last") else "created"
            records.sort(key=lambda a: (getattr(a, attribute), a.id), reverse=True)
        else:  # relevance of an empty search ties everywhere; the id decides
            records.sort(key=lambda a: a.id)

    # -- records ---------------------------------------------------------

    @staticmethod
    def _title(asset: StoredAsset) -> str:
        return str(asset.metadata.get("title") or asset.name.rsplit(".", 1)[0])

    @staticmethod
    def _buildings(asset: StoredAsset) -> list[dict[str, str]]:
        return [
            {"value": HKM, "translated": str(asset.metadata.get("building", HKM_NAME))},
            {"value": "1/HKM/HKMS000005/", "translated": "Kuvakokoelmat"},
        ]

    def _cover(self, asset: StoredAsset, index: int, size: str) -> str:
        query = urlencode({"source": "Solr", "id": asset.id, "index": index, "size": size})
        return f"/Cover/Show?{query}"

    def _sizes(self, asset: StoredAsset) -> list[str]:
        return list(asset.metadata.get("sizes", ["small", "medium", "large", "master"]))

    def _image(self, asset: StoredAsset) -> dict[str, Any]:
        resource = str(zlib.crc32(asset.id.encode()) % 10**6)
        file_name = f"{asset.id.rsplit(':', 1)[-1]}.{self._format(asset)}"
        measured: dict[str, Any] = {"size": {"unit": "byte", "value": len(asset.data)}}
        if not asset.metadata.get("hide_dimensions"):
            measured["width"] = {"unit": "pixel", "value": str(asset.width)}
            measured["height"] = {"unit": "pixel", "value": str(asset.height)}
        entry: dict[str, Any] = {
            "urls": {size: self._cover(asset, 0, size) for size in self._sizes(asset)},
            "description": "",
            "rights": {
                "copyright": "CC BY 4.0",
                "link": "http://creativecommons.org/licenses/by/4.0/deed.fi",
                "description": ["Nimeä 4.0 Kansainvälinen (CC BY 4.0)"],
            },
            "highResolution": {},
            "identifier": resource,
            "resourceName": file_name,
            "downloadable": True,
        }
        if not asset.metadata.get("no_original"):
            entry["highResolution"]["original"] = [
                {
                    "data": measured,
                    "url": f"{MUSEUM_HOST}/originals/{file_name}",
                    "format": self._format(asset),
                    "resourceID": resource,
                }
            ]
        return entry

    @staticmethod
    def _format(asset: StoredAsset) -> str:
        return {"image/jpeg": "jpg", "image/png": "png", "image/tiff": "tif"}.get(
            asset.mime_type, "jpg"
        )

    def _record(self, asset: StoredAsset, fields: list[str]) -> dict[str, Any]:
        meta = asset.metadata
        image = self._image(asset)
        full: dict[str, Any] = {
            "id": asset.id,
            "title": self._title(asset),
            "buildings": self._buildings(asset),
            "institutions": [{"value": "HKM", "translated": HKM_NAME}],
            "formats": [
                {"value": "0/Image/", "translated": "Kuva"},
                {"value": "1/Image/Photo/", "translated": "Valokuva"},
            ],
            "images": [image["urls"]["large"]] if "large" in image["urls"] else [],
            "imagesExtended": [image],
            "imageRights": image["rights"],
            "year": meta.get("year"),
            "subjects": [[subject] for subject in meta.get("subjects", ["kaupunkikuvat"])],
            "subjectPlaces": list(meta.get("subjectPlaces", [])),
            "recordPage": f"/Record/{asset.id}",
        }
        # VuFind answers with the known fields asked for, in the order asked.
        return {name: full[name] for name in fields if name in full}

    # -- images ----------------------------------------------------------

    def _asset_for(self, request: Request) -> tuple[StoredAsset, int] | None:
        asset = self.library.get(request.args.get("id", ""))
        try:
            index = int(request.args.get("index", "0"))
        except ValueError:
            index = 0
        if asset is None or index != 0:
            return None
        return asset, index

    def cover_show(self, request: Request) -> Response:
        found = self._asset_for(request)
        size = request.args.get("size") or "small"
        if found is None or size not in self._sizes(found[0]):
            return self.http_error(request, NotFound())
        asset, _ = found
        source_width, source_height = asset.width, asset.height
        if size in SIZE_BOXES:
            source_width, source_height = fit_within(asset, SIZE_BOXES[size], SIZE_BOXES[size])
        try:
            box_width = int(request.args.get("w") or 0) or source_width
            box_height = int(request.args.get("h") or 0) or source_height
        except ValueError:
            box_width, box_height = source_width, source_height
        width, height = finna_fit(source_width, source_height, box_width, box_height)
        if (width, height) == (asset.width, asset.height) and asset.mime_type == "image/jpeg":
            data = asset.data  # Loader.php keeps a JPEG it need not shrink
        else:
            data = scaled(asset, width, height, quality=90)
        return Response(data, content_type="image/jpeg")

    def cover_download(self, request: Request) -> Response:
        size = request.args.get("size")
        if size not in ("original", "master") or not request.args.get("id"):
            return Response(status=400)
        found = self._asset_for(request)
        if found is None:
            return self.http_error(request, NotFound())
        asset, _ = found
        wanted = request.args.get("format", "jpg")
        entries = self._image(asset)["highResolution"].get(size, [])
        if not any(entry["format"] == wanted for entry in entries):
            return Response(status=404)
        # loadExternalImage() names only TIFF; everything else goes out as JPEG.
        content_type = "image/tiff" if wanted in ("tif", "tiff") else "image/jpeg"
        return Response(asset.data, content_type=content_type)


class FinnaHarness(EmulatorHarness):
    kind = "finna"
    listing_path = "/api/v1/search"
    emulator: FinnaEmulator
    _numbers: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(self) -> None:
        super().__init__(FinnaEmulator())

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"base_url": self.url + "api/v1/", "building": HKM, **overrides}

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return Finna(FinnaSettings(**self.settings(**overrides)))

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        # Finna ids: the data source, a dot, the museum's own record id.
        record_id = f"hkm.HKMS000005:km{next(self._numbers):07d}"
        placed = self.place_metadata(metadata or {})
        return self.emulator.library.add(name, data, placed, asset_id=record_id).id

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        placed: dict[str, Any] = {}
        if "location" in metadata:
            placed["subjectPlaces"] = [metadata["location"]]
        if "date" in metadata:
            placed["year"] = metadata["date"]
        if "department" in metadata:
            placed["building"] = metadata["department"]
        return placed
