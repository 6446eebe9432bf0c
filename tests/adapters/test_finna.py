"""Finna specifics the contract suite does not cover: the search request,
VuFind's error answers, renditions made by /Cover/Show from the original's
size, a museum size smaller than promised, records without dimensions or
without an original, several images in one record."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from pydantic import ValidationError

from adapters.base import Adapter, AssetRef, NotFound, choose_rendition
from adapters.finna import Finna, FinnaSettings, finna_fit, image_size
from adapters.http import HttpError
from tests.servers.common import photo_paths
from tests.servers.finna import FinnaHarness

PHOTOS = photo_paths(variant="original")


@pytest.fixture(scope="module")
def server() -> Iterator[FinnaHarness]:
    harness = FinnaHarness()
    yield harness
    harness.close()


@pytest.fixture
def harness(server: FinnaHarness) -> FinnaHarness:
    server.reset()
    server.emulator.log.clear()
    return server


def jpeg(width: int, height: int) -> bytes:
    with Image.open(PHOTOS[0]) as image:
        resized = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    resized.save(out, "JPEG", quality=92)
    return out.getvalue()


def add(harness: FinnaHarness, data: bytes, **metadata: Any) -> str:
    record_id = harness.add("kuva.jpg", data)
    harness.emulator.library.assets[record_id].metadata.update(metadata)
    return record_id


def list_all(adapter: Adapter[Any]) -> list[AssetRef]:
    items: list[AssetRef] = []
    for page in adapter.iter_pages():
        items.extend(page.items)
    return items


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_the_search_asks_for_the_museums_images(harness: FinnaHarness) -> None:
    harness.add("kuva.jpg", PHOTOS[0].read_bytes())
    list_all(harness.adapter())
    [search] = harness.emulator.requests_for("GET", "/api/v1/search")
    query = parse_qs(search.query, keep_blank_values=True)
    assert query["filter[]"] == ['building:"0/HKM/"', 'format:"0/Image/"', 'online_boolean:"1"']
    assert {"id", "imagesExtended", "buildings", "subjectPlaces", "year"} <= set(query["field[]"])
    assert query["limit"] == ["100"] and query["page"] == ["1"]
    assert query["sort"] == ["id asc"] and query["lng"] == ["fi"]


def test_a_mapping_to_another_field_asks_for_that_field(harness: FinnaHarness) -> None:
    harness.add("kuva.jpg", PHOTOS[0].read_bytes())
    list_all(harness.adapter(metadata={"date": "events.valmistus.0.date"}))
    [search] = harness.emulator.requests_for("GET", "/api/v1/search")
    assert "events" in parse_qs(search.query)["field[]"]


def test_limit_is_at_most_100() -> None:
    with pytest.raises(ValidationError):
        FinnaSettings(page_size=101)


def test_a_refused_search_says_why(harness: FinnaHarness) -> None:
    harness.add("kuva.jpg", PHOTOS[0].read_bytes())
    adapter = harness.adapter(filters=['no_such_field:"x"'])
    with pytest.raises(HttpError, match=r"refused \(400\): Invalid search; check") as caught:
        adapter.list_assets(None)
    assert caught.value.status == 400


def test_pages_end_at_the_result_count(harness: FinnaHarness) -> None:
    ids = [harness.add(f"kuva-{n}.jpg", PHOTOS[n].read_bytes()) for n in range(5)]
    items = list_all(harness.adapter(page_size=2))
    assert [ref.id for ref in items] == sorted(ids)
    pages = [parse_qs(r.query)["page"] for r in harness.emulator.requests_for("GET", "/api/v1")]
    assert pages == [["1"], ["2"], ["3"]]  # 5 records: no empty fourth page


def test_an_empty_answer_has_no_records_key(harness: FinnaHarness) -> None:
    page = harness.adapter().list_assets(None)
    assert page.complete and page.items == [] and page.cursor is None


def test_the_asset_points_at_the_record_page_and_the_download(harness: FinnaHarness) -> None:
    record_id = harness.add(
        "kuva.jpg",
        jpeg(1600, 1067),
        {"location": "Senaatintori", "date": "1932", "department": "Helsingin kaupunginmuseo"},
    )
    [ref] = list_all(harness.adapter())
    assert ref.id == record_id
    assert ref.url == f"https://finna.fi/Record/{record_id}"
    original = urlsplit(ref.original_url or "")
    assert original.path == "/Cover/Download"
    assert parse_qs(original.query) == {
        "id": [record_id],
        "index": ["0"],
        "size": ["original"],
        "format": ["jpg"],
    }
    assert (ref.width, ref.height) == (1600, 1067)
    assert ref.size_bytes == len(harness.emulator.library.assets[record_id].data)
    assert ref.metadata.location == "Senaatintori"
    assert ref.metadata.date == "1932"
    assert ref.metadata.department == "Helsingin kaupunginmuseo"


def test_renditions_are_cover_show_boxes_of_the_master(harness: FinnaHarness) -> None:
    harness.add("kuva.jpg", jpeg(2400, 1600))
    adapter = harness.adapter()
    [ref] = list_all(adapter)
    boxes = [(r.width, r.height) for r in ref.renditions]
    assert boxes == [(640, 427), (960, 640), (1280, 853), (1920, 1280)]
    for rendition in ref.renditions:
        query = parse_qs(urlsplit(rendition.url).query)
        assert query["size"] == ["master"] and query["w"] == query["h"]
    data = adapter.fetch(ref, 384)
    assert size_of(data) == (640, 427)  # the size the listing promised
    data = adapter.fetch(ref, 800)
    assert size_of(data) == (1280, 853)


def test_fitting_follows_finna_rounding() -> None:
    assert finna_fit(2400, 1600, 640, 640) == (640, 427)
    assert finna_fit(1000, 3000, 640, 640) == (213, 640)
    assert finna_fit(500, 300, 640, 640) == (500, 300)  # never enlarged
    assert finna_fit(1001, 2, 640, 640) == (640, 1)


def test_a_museum_size_smaller_than_the_box_falls_back_to_the_original(
    harness: FinnaHarness,
) -> None:
    # No master: renditions come from "large", which fits 1280 px in this museum.
    original = jpeg(2400, 1600)
    add(harness, original, sizes=["small", "medium", "large"])
    adapter = harness.adapter()
    [ref] = list_all(adapter)
    url = choose_rendition(ref, 1000)
    assert url is not None and parse_qs(urlsplit(url).query)["size"] == ["large"]
    assert adapter.fetch(ref, 1000) == original  # 1280x853 came back: too small
    shows = harness.emulator.requests_for("GET", "/Cover/Show")
    downloads = harness.emulator.requests_for("GET", "/Cover/Download")
    assert len(shows) == 1 and len(downloads) == 1


def test_without_dimensions_there_are_no_renditions(harness: FinnaHarness) -> None:
    original = jpeg(2400, 1600)
    add(harness, original, hide_dimensions=True)
    adapter = harness.adapter()
    [ref] = list_all(adapter)
    assert ref.renditions == () and ref.width is None
    assert adapter.fetch(ref, 384) == original


def test_without_an_original_the_largest_museum_size_is_read(harness: FinnaHarness) -> None:
    original = jpeg(1600, 1067)
    add(harness, original, no_original=True)
    adapter = harness.adapter()
    [ref] = list_all(adapter)
    query = parse_qs(urlsplit(ref.original_url or "").query)
    assert urlsplit(ref.original_url or "").path == "/Cover/Show" and query["size"] == ["master"]
    assert "w" not in query and ref.renditions == ()
    assert adapter.fetch_original(ref) == original


def test_a_removed_record_is_not_found_for_a_rendition_too(harness: FinnaHarness) -> None:
    record_id = harness.add("kuva.jpg", jpeg(2400, 1600))
    adapter = harness.adapter()
    [ref] = list_all(adapter)
    harness.remove(record_id)
    with pytest.raises(NotFound):
        adapter.fetch(ref, 384)


def test_the_version_follows_the_file(harness: FinnaHarness) -> None:
    record_id = harness.add("kuva.jpg", jpeg(1600, 1067))
    adapter = harness.adapter()
    [before] = list_all(adapter)
    [again] = list_all(adapter)
    assert again.version == before.version
    harness.emulator.library.replace(record_id, jpeg(1500, 1000))
    [after] = list_all(adapter)
    assert after.version != before.version


def test_every_image_of_a_record_is_an_asset() -> None:
    adapter = Finna(FinnaSettings(base_url="https://api.finna.fi/api/v1/"))
    record = {
        "id": "hkm.HKMS000005:km0000abc",
        "buildings": [{"value": "0/HKM/", "translated": "Helsingin kaupunginmuseo"}],
        "imagesExtended": [
            {
                "urls": {"small": f"/Cover/Show?id=x&index={n}&size=small"},
                "highResolution": {
                    "original": [
                        {
                            "data": {"width": {"unit": "pixel", "value": "2500"}},
                            "url": "https://museum.example/a.tif",
                            "format": "tif",
                        },
                        {"data": [], "url": "https://museum.example/a.jpg", "format": "jpg"},
                    ]
                },
            }
            for n in range(2)
        ],
    }
    first, second = adapter._refs(record)
    assert [first.id, second.id] == ["hkm.HKMS000005:km0000abc", "hkm.HKMS000005:km0000abc#1"]
    assert first.url == second.url == "https://finna.fi/Record/hkm.HKMS000005:km0000abc"
    # The JPEG original is preferred; its size is unknown, so no renditions.
    assert "format=jpg" in (second.original_url or "") and "index=1" in (second.original_url or "")
    assert (second.original_url or "").startswith("https://api.finna.fi/Cover/Download?")
    assert first.renditions == () and first.width is None
    assert first.metadata.department == "Helsingin kaupunginmuseo"


def test_image_size_reads_the_header() -> None:
    assert image_size(jpeg(321, 123)) == (321, 123)
    assert image_size(b"\x89PNG\r\n\x1a\n" + b"\0" * 32) is None
    assert image_size(b"\xff\xd8\xff") is None


def test_an_image_base_with_a_path_keeps_it(harness: FinnaHarness) -> None:
    add(harness, jpeg(1600, 1200))
    base = harness.url + "finna-kuvat/"
    [ref] = list_all(harness.adapter(image_base_url=base))
    assert ref.original_url is not None and ref.original_url.startswith(base + "Cover/")
    assert ref.renditions and all(r.url.startswith(base + "Cover/Show?") for r in ref.renditions)
