"""Linked Events specifics the contract suite does not cover: the request
shape, the API key header, image files on other hosts, the newest-first
incremental walk and its watermark, pages that vanish during a listing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import ValidationError

from adapters.base import Adapter, AssetRef, AuthFailed, NotFound
from adapters.linked_events import LinkedEvents, LinkedEventsCursor, LinkedEventsSettings
from tests.servers.common import photo_paths
from tests.servers.linked_events import API_KEY, LinkedEventsEmulator, LinkedEventsHarness

PHOTOS = photo_paths(variant="original")


@pytest.fixture(scope="module")
def server() -> Iterator[LinkedEventsHarness]:
    harness = LinkedEventsHarness()
    yield harness
    harness.close()


@pytest.fixture
def harness(server: LinkedEventsHarness) -> LinkedEventsHarness:
    server.reset()
    server.emulator.log.clear()
    return server


def add(harness: LinkedEventsHarness, count: int, **metadata: Any) -> list[str]:
    return [
        harness.emulator.library.add(f"kuva-{n}.jpg", PHOTOS[n].read_bytes(), dict(metadata)).id
        for n in range(count)
    ]


def list_all(adapter: Adapter[Any], cursor: Any = None) -> tuple[list[AssetRef], Any]:
    items: list[AssetRef] = []
    last = None
    for page in adapter.iter_pages(cursor):
        items.extend(page.items)
        last = page
    assert last is not None and last.complete
    return items, last.cursor


def listing_queries(harness: LinkedEventsHarness) -> list[dict[str, list[str]]]:
    return [parse_qs(entry.query) for entry in harness.emulator.requests_for("GET", "/v1/image")]


def test_full_listing_walks_id_order_after_one_newest_first_probe(
    harness: LinkedEventsHarness,
) -> None:
    ids = add(harness, 5)
    items, cursor = list_all(harness.adapter(page_size=2))
    assert [ref.id for ref in items] == ids  # sort=id: creation order
    queries = listing_queries(harness)
    probe, *pages = queries
    assert probe["sort"] == ["-last_modified_time"] and probe["page_size"] == ["1"]
    assert [q["page"] for q in pages] == [["1"], ["2"], ["3"]]
    assert all(q["sort"] == ["id"] and q["page_size"] == ["2"] for q in pages)
    # The next listing starts at the newest change seen when this one began.
    newest = harness.emulator.library.assets[ids[-1]]
    assert cursor is not None and cursor.since == newest.modified
    assert cursor.ids_at_since == {ids[-1]}


def test_page_size_is_capped_at_the_api_maximum() -> None:
    with pytest.raises(ValidationError):
        LinkedEventsSettings(base_url="http://127.0.0.1:1/v1/", page_size=1001)
    assert LinkedEventsSettings(base_url="http://127.0.0.1:1/v1/").page_size == 1000


def test_record_fields_become_the_asset(harness: LinkedEventsHarness) -> None:
    [image_id] = add(harness, 1, publisher="ahjo:u480400", alt_text="Senaatintori")
    adapter = LinkedEvents(LinkedEventsSettings(base_url=harness.url + "v1/"))
    [ref], _ = list_all(adapter)
    asset = harness.emulator.library.assets[image_id]
    assert ref.id == image_id
    assert ref.url == harness.url + f"v1/image/{image_id}/"
    assert ref.original_url == harness.url + "media/images/kuva-0.jpg"
    assert ref.version == ref.modified == asset.modified.isoformat().replace("+00:00", "Z")
    assert ref.renditions == () and not adapter.capabilities.renditions
    # Default mapping: no place on an image record; the organization id; added date.
    assert ref.metadata.location is None
    assert ref.metadata.department == "ahjo:u480400"
    assert ref.metadata.date == asset.created.isoformat().replace("+00:00", "Z")


def test_the_api_key_goes_in_the_apikey_header_only_when_configured(
    harness: LinkedEventsHarness,
) -> None:
    add(harness, 1)
    list_all(harness.adapter())
    keyed = harness.emulator.log[-1]
    assert keyed.headers.get("Apikey") == API_KEY and "apikey" not in keyed.query
    harness.emulator.log.clear()
    [ref], _ = list_all(LinkedEvents(LinkedEventsSettings(base_url=harness.url + "v1/")))
    assert all("Apikey" not in entry.headers for entry in harness.emulator.log)
    assert ref.id  # images are public: no key needed to read


def test_a_wrong_key_is_refused_even_for_reading(harness: LinkedEventsHarness) -> None:
    add(harness, 1)
    adapter = harness.adapter(api_key="not-a-data-source-key")
    with pytest.raises(AuthFailed, match="does not match any organization") as caught:
        adapter.list_assets(None)
    assert "not-a-data-source-key" not in str(caught.value)


def test_images_on_another_host_need_image_hosts(harness: LinkedEventsHarness) -> None:
    # A second server stands for www.hel.fi, where many event images live.
    files = LinkedEventsEmulator(library=harness.emulator.library)
    files.start()
    try:
        harness.emulator.media_url = files.base_url
        [image_id] = add(harness, 1)
        [refused], _ = list_all(harness.adapter())
        assert refused.problem is not None and "image_hosts" in refused.problem
        host = files.base_url.removeprefix("http://").rstrip("/")
        adapter = harness.adapter(image_hosts=[f"http://{host}"])
        [ref], _ = list_all(adapter)
        assert ref.problem is None and ref.original_url is not None
        assert ref.original_url.startswith(files.base_url)
        assert adapter.fetch_original(ref) == harness.emulator.library.assets[image_id].data
    finally:
        harness.emulator.media_url = None
        files.stop()


def test_a_bare_image_host_is_read_as_https() -> None:
    settings = LinkedEventsSettings(base_url="http://127.0.0.1:1/v1/", image_hosts=["www.hel.fi"])
    assert settings.image_hosts == ["https://www.hel.fi"]


def test_incremental_listing_stops_at_the_watermark(harness: LinkedEventsHarness) -> None:
    ids = add(harness, 7)
    _, watermark = list_all(harness.adapter(page_size=2))
    harness.emulator.library.touch(ids[2], alt_text="Kauppatori")
    harness.emulator.log.clear()
    changed, next_cursor = list_all(harness.adapter(page_size=2), watermark)
    assert [ref.id for ref in changed] == [ids[2]]
    # Newest first: page 1 is the touched image and the watermark's own (skipped);
    # page 2 starts older than the watermark, so pages 3 and 4 are never asked for.
    queries = listing_queries(harness)
    assert [q["page"] for q in queries] == [["1"], ["2"]]
    assert all(q["sort"] == ["-last_modified_time"] for q in queries)
    touched = harness.emulator.library.assets[ids[2]]
    assert next_cursor is not None and next_cursor.since == touched.modified
    assert next_cursor.ids_at_since == {ids[2]}


def test_an_image_at_the_watermark_second_is_listed_once(harness: LinkedEventsHarness) -> None:
    _, second = add(harness, 2)
    _, watermark = list_all(harness.adapter())
    assert watermark is not None and watermark.ids_at_since == {second}
    # Another image saved in the same second as the watermark's image.
    [same_second] = add(harness, 1)
    library = harness.emulator.library
    library.assets[same_second].modified = library.assets[second].modified
    changed, _ = list_all(harness.adapter(), watermark)
    assert [ref.id for ref in changed] == [same_second]


def test_the_watermark_survives_its_json(harness: LinkedEventsHarness) -> None:
    add(harness, 2)
    _, watermark = list_all(harness.adapter())
    assert watermark is not None
    again = LinkedEventsCursor.model_validate_json(watermark.model_dump_json())
    assert again == watermark and again.since is not None and again.since.tzinfo is not None


def test_a_page_gone_during_the_listing_ends_it(harness: LinkedEventsHarness) -> None:
    ids = add(harness, 3)
    adapter = harness.adapter(page_size=2)
    first = adapter.list_assets(None)
    assert not first.complete and first.cursor is not None
    for image_id in ids[:2]:  # two deleted: one page is all there is now
        harness.emulator.library.remove(image_id)
    last = adapter.list_assets(first.cursor)
    assert last.complete and last.items == []
    statuses = [entry.status for entry in harness.emulator.requests_for("GET", "/v1/image")]
    assert statuses[-1] == 404


def test_publisher_and_data_source_filters_are_sent(harness: LinkedEventsHarness) -> None:
    [ours] = add(harness, 1, publisher="ahjo:u480400")
    add(harness, 1, publisher="ahjo:u021600")
    items, _ = list_all(harness.adapter(publisher="AHJO:U480400", data_source="helsinki"))
    assert [ref.id for ref in items] == [ours]
    query = listing_queries(harness)[-1]
    assert query["publisher"] == ["AHJO:U480400"] and query["data_source"] == ["helsinki"]


def test_a_publisher_id_with_capitals_is_the_units_neither_listed_nor_described(
    harness: LinkedEventsHarness,
) -> None:
    """Linked Events lowercases the ids a filter names and matches them
    exactly (`publisher__in`): a record whose id has capitals is never in a
    filtered listing, so describing it by id does not make it the unit's."""
    [capitals] = add(harness, 1, publisher="Museo:Kuvat")
    [lower] = add(harness, 1, publisher="museo:kuvat")
    adapter = harness.adapter(publisher="Museo:Kuvat")
    items, _ = list_all(adapter)
    assert [ref.id for ref in items] == [lower]
    assert adapter.describe(lower).id == lower
    with pytest.raises(NotFound, match="publisher"):
        adapter.describe(capitals)


def test_an_empty_library_lists_nothing_and_starts_over_next_time(
    harness: LinkedEventsHarness,
) -> None:
    items, cursor = list_all(harness.adapter())
    assert items == [] and cursor is None
