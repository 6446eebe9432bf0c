"""Drupal JSON:API behaviour the contract suite does not reach: the 50-item
page cap, basic_auth's silent fall-back to anonymous, omitted and unpublished
media, keyset paging through deletions, timestamps in filters, Consumer Image
Styles links and their sizes, itok, files on another host."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image
from pydantic import ValidationError

from adapters.base import AssetRef, AuthFailed, BadAsset, NotFound
from adapters.drupal import Drupal, DrupalCursor, DrupalSettings, scale_dimensions
from adapters.http import HttpError
from tests.servers.common import photo_paths
from tests.servers.drupal import STYLE_BOXES, STYLES, DrupalEmulator
from tests.servers.faults import FaultProxy

PHOTO = photo_paths(variant="original")[0]  # 640 x 427
USER, PASSWORD = "damdup-reader", "fake-password-for-tests"


@pytest.fixture
def start() -> Iterator[Any]:
    started: list[DrupalEmulator] = []

    def run(**options: Any) -> DrupalEmulator:
        emulator = DrupalEmulator(**options)
        emulator.start()
        started.append(emulator)
        return emulator

    yield run
    for emulator in started:
        emulator.stop()


def adapter(emulator: DrupalEmulator, **overrides: Any) -> Drupal:
    return Drupal(DrupalSettings(base_url=emulator.base_url, **overrides))


def tiny_jpeg(shade: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (shade % 256, 90, 160)).save(out, "JPEG")
    return out.getvalue()


def add(emulator: DrupalEmulator, count: int, **metadata: Any) -> list[str]:
    return [
        emulator.library.add(f"kuva-{n}.jpg", tiny_jpeg(n), dict(metadata)).id for n in range(count)
    ]


def listing(drupal: Drupal, cursor: DrupalCursor | None = None) -> tuple[list[AssetRef], Any]:
    items: list[AssetRef] = []
    last = None
    for page in drupal.iter_pages(cursor):
        items.extend(page.items)
        last = page
    assert last is not None and last.complete
    return items, last.cursor


def mids(refs: list[AssetRef]) -> list[str]:
    return [ref.url.rsplit("/", 2)[-2] for ref in refs]


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


# -- settings and paging -------------------------------------------------------


def test_settings_cap_the_page_size_at_drupals_50_and_want_whole_credentials() -> None:
    DrupalSettings(base_url="https://www.hel.fi/", page_size=50)
    with pytest.raises(ValidationError, match="less than or equal to 50"):
        DrupalSettings(base_url="https://www.hel.fi/", page_size=51)
    with pytest.raises(ValidationError, match="both username and password"):
        DrupalSettings(base_url="https://www.hel.fi/", username=USER)


def test_drupal_cuts_the_limit_to_50_and_links_next_only_while_more(start: Any) -> None:
    emulator = start()
    add(emulator, 52)
    url = emulator.base_url + "jsonapi/media/image"
    first = requests.get(url, params={"page[limit]": "80"}, timeout=10)
    assert first.headers["Content-Type"] == "application/vnd.api+json"
    body = first.json()
    assert len(body["data"]) == 50 and "next" in body["links"] and "prev" not in body["links"]
    second = requests.get(body["links"]["next"]["href"], timeout=10).json()
    assert len(second["data"]) == 2
    assert "next" not in second["links"] and "prev" in second["links"]
    pages = list(adapter(emulator).iter_pages())
    assert [len(page.items) for page in pages] == [50, 2]


# -- credentials and access ----------------------------------------------------


def test_a_wrong_password_is_auth_failed_though_drupal_answers_200(start: Any) -> None:
    emulator = start(users={USER: PASSWORD})
    add(emulator, 1)
    # basic_auth does not refuse a wrong password: the visitor is anonymous.
    wrong = requests.get(
        emulator.base_url + "jsonapi/media/image", auth=(USER, "wrong"), timeout=10
    )
    assert wrong.status_code == 200 and len(wrong.json()["data"]) == 1
    with pytest.raises(AuthFailed, match=r"anonymous visitor.*credentials"):
        adapter(emulator, username=USER, password="wrong").list_assets(None)
    assert [(entry.path, entry.status) for entry in emulator.log[1:]] == [("/jsonapi", 200)]
    items, _ = listing(adapter(emulator, username=USER, password=PASSWORD))
    assert len(items) == 1
    assert emulator.log[-1].headers["Authorization"].startswith("Basic ")


def test_unpublished_media_are_listed_only_with_credentials(start: Any) -> None:
    emulator = start(users={USER: PASSWORD})
    public = add(emulator, 2)
    hidden = add(emulator, 1, status=False)
    anonymous, _ = listing(adapter(emulator))
    assert sorted(mids(anonymous)) == sorted(public)
    signed_in, _ = listing(adapter(emulator, username=USER, password=PASSWORD))
    assert sorted(mids(signed_in)) == sorted(public + hidden)


def test_a_page_of_omitted_media_does_not_end_the_listing(start: Any) -> None:
    emulator = start()
    ids = add(emulator, 5)
    emulator.hidden_from_anonymous = set(ids[:2])
    raw = requests.get(
        emulator.base_url + "jsonapi/media/image", params={"page[limit]": "2"}, timeout=10
    ).json()
    assert raw["data"] == [] and "next" in raw["links"]
    assert "omitted" in raw["meta"]
    items, _ = listing(adapter(emulator, page_size=2))
    assert sorted(mids(items)) == sorted(ids[2:])


# -- incremental listing -----------------------------------------------------


def test_filters_send_unix_seconds_because_drupal_compares_numbers(start: Any) -> None:
    emulator = start()
    add(emulator, 3)
    _, cursor = listing(adapter(emulator))
    listing(adapter(emulator), cursor)
    sent = [entry.query for entry in emulator.log if entry.path == "/jsonapi/media/image"]
    assert f"%5Bvalue%5D={cursor.changed_since}&" in sent[-1]
    assert str(cursor.changed_since).isdigit()
    # Why: a date string is read as its leading number (2026), so everything matches.
    as_date = requests.get(
        emulator.base_url + "jsonapi/media/image",
        params={
            "filter[changed][value]": "2099-01-01T00:00:00+02:00",
            "filter[changed][operator]": ">=",
        },
        timeout=10,
    ).json()
    assert len(as_date["data"]) == 3


def test_a_deletion_during_a_listing_skips_no_live_media(start: Any) -> None:
    emulator = start()
    ids = add(emulator, 5)
    drupal = adapter(emulator, page_size=2)
    first = drupal.list_assets(None)
    assert mids(first.items) == ids[:2]
    emulator.library.remove(ids[0])  # page[offset]=2 would now start at ids[3]
    rest, _ = listing(drupal, first.cursor)
    assert mids(rest) == ids[2:]


def test_a_change_during_a_listing_comes_in_the_next_incremental(start: Any) -> None:
    emulator = start()
    ids = add(emulator, 4)
    drupal = adapter(emulator, page_size=2)
    first = drupal.list_assets(None)
    emulator.library.touch(ids[0], field_photographer="Maija Meikäläinen")
    rest, cursor = listing(drupal, first.cursor)
    assert ids[0] not in mids(rest)
    changed, again = listing(adapter(emulator, page_size=2), cursor)
    assert mids(changed) == [ids[0]]
    nothing, _ = listing(adapter(emulator), again)
    assert nothing == []


def test_a_replaced_file_changes_the_version_and_a_metadata_edit_does_not(start: Any) -> None:
    emulator = start()
    [asset_id] = add(emulator, 1)
    [before], cursor = listing(adapter(emulator))
    emulator.library.touch(asset_id, field_photographer="Matti Meikäläinen")
    [edited], cursor = listing(adapter(emulator), cursor)
    assert edited.version == before.version and edited.modified != before.modified
    emulator.library.replace(asset_id, tiny_jpeg(200))
    [replaced], _ = listing(adapter(emulator), cursor)
    assert replaced.version != before.version
    assert replaced.original_url == before.original_url  # replaced in place, same URI
    assert adapter(emulator).fetch_original(replaced) == tiny_jpeg(200)


# -- renditions --------------------------------------------------------------


def test_the_module_prints_no_usable_sizes_so_only_configured_styles_count(start: Any) -> None:
    emulator = start()  # Consumer Image Styles 4.x: the height under `width`
    emulator.library.add("kuva.jpg", PHOTO.read_bytes())
    [plain], _ = listing(adapter(emulator))
    assert plain.renditions == ()
    assert adapter(emulator).fetch(plain, 200) == PHOTO.read_bytes()
    [ref], _ = listing(adapter(emulator, image_styles=STYLE_BOXES))
    assert {r.url.split("/styles/")[1].split("/")[0] for r in ref.renditions} == set(STYLE_BOXES)
    for rendition in ref.renditions:
        served = size_of(requests.get(rendition.url, timeout=10).content)
        assert served == (rendition.width, rendition.height) or (
            # An upscaling style (original_l) serves more than computed:
            # never chosen either way, its size is the original's or larger.
            (rendition.width, rendition.height) == (ref.width, ref.height)
        )
    assert size_of(adapter(emulator, image_styles=STYLE_BOXES).fetch(ref, 200)) == (480, 320)


def test_sizes_in_link_meta_are_used_and_the_square_crop_is_never_chosen(start: Any) -> None:
    emulator = start(derivative_meta="both")
    emulator.library.add("kuva.jpg", PHOTO.read_bytes())
    [ref], _ = listing(adapter(emulator))
    sizes = {(r.width, r.height) for r in ref.renditions}
    assert (360, 360) in sizes and (480, 320) in sizes
    assert size_of(adapter(emulator).fetch(ref, 300)) == (480, 320)
    # Only the crop has a short side of 340 or more and is smaller: the original.
    assert adapter(emulator).fetch(ref, 340) == PHOTO.read_bytes()


def test_the_consumer_id_picks_that_consumers_styles(start: Any) -> None:
    emulator = start(derivative_meta="both", consumers={"helfi-frontend": ["1_1_thumbnail_2x"]})
    emulator.library.add("kuva.jpg", PHOTO.read_bytes())
    [ref], _ = listing(adapter(emulator, consumer_id="helfi-frontend"))
    assert emulator.log[-1].headers["X-Consumer-Id"] == "helfi-frontend"
    assert [(r.width, r.height) for r in ref.renditions] == [(360, 360)]
    assert adapter(emulator).fetch(ref, 300) == PHOTO.read_bytes()


def test_a_derivative_needs_its_itok(start: Any) -> None:
    emulator = start(derivative_meta="both")
    emulator.library.add("kuva.jpg", PHOTO.read_bytes())
    [ref], _ = listing(adapter(emulator))
    [large] = [r for r in ref.renditions if "/styles/large/" in r.url]
    assert requests.get(large.url, timeout=10).status_code == 200
    bare = large.url.split("?")[0]
    assert requests.get(bare, timeout=10).status_code == 404  # DDoS guard, not access
    assert requests.get(bare + "?itok=AAAAAAAA", timeout=10).status_code == 404


def test_computed_sizes_match_drupals_scale_rounding() -> None:
    for width, height in [(640, 427), (1600, 1067), (427, 640), (1000, 1000), (333, 222)]:
        for style, box in STYLE_BOXES.items():
            expected = STYLES[style].dimensions(width, height)
            computed = scale_dimensions(width, height, box.get("width"), box.get("height"))
            if STYLES[style].upscale and expected[0] > width:
                assert computed == (width, height)
            else:
                assert computed == expected, (style, width, height)


# -- configuration errors and metadata ----------------------------------------


def test_a_wrong_media_type_or_image_field_is_a_clear_error(start: Any) -> None:
    emulator = start()
    add(emulator, 1)
    with pytest.raises(NotFound, match=r"no media--photo resource.*media--image"):
        adapter(emulator, media_type="photo").list_assets(None)
    with pytest.raises(HttpError, match="`field_kuva` is not a valid relationship field name"):
        adapter(emulator, image_field="field_kuva").list_assets(None)


def test_files_on_another_host_are_fetched_only_when_named(start: Any) -> None:
    emulator = start()
    # The same server behind a second port: another origin, as a CDN would be.
    other = FaultProxy(emulator.base_url)
    try:
        emulator.file_url_base = other.url.rstrip("/")
        emulator.library.add("kuva.jpg", PHOTO.read_bytes())
        [ref], _ = listing(adapter(emulator))
        assert ref.original_url is not None and ref.original_url.startswith(other.url)
        with pytest.raises(BadAsset, match="not the unit's configured base URL"):
            adapter(emulator).fetch_original(ref)
        named = adapter(emulator, file_hosts=[other.url])
        assert named.fetch_original(ref) == PHOTO.read_bytes()
    finally:
        other.close()


def test_default_metadata_on_a_stock_hel_fi_media_type(start: Any) -> None:
    emulator = start()  # only field_photographer, as helfi_media installs it
    emulator.library.add("kuva.jpg", tiny_jpeg(), {"created": "2024-05-01T09:30:00"})
    [ref], _ = listing(adapter(emulator))
    assert ref.metadata.date == "2024-05-01T09:30:00+03:00"  # the site's zone, RFC 3339
    assert ref.metadata.missing == ["location", "department"]
    mapped = adapter(emulator, metadata={"date": "created", "department": "=Kaupunkiympäristö"})
    [ref], _ = listing(mapped)
    assert ref.metadata.department == "Kaupunkiympäristö"
