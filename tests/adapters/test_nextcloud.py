"""Nextcloud behaviour the contract suite does not reach: keyset paging
through many files of one second (which SQL returns in any order), uploads
that keep an old mtime, a future mtime, previews (never a crop), the scope
folder, hostile XML, marks beside someone else's properties and system tags,
and the app password kept out of logs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import structlog
from PIL import Image
from werkzeug.wrappers import Request, Response

from adapters.base import AssetRef, AuthFailed, Marks, Unavailable
from adapters.nextcloud import Nextcloud, NextcloudCursor, NextcloudSettings
from tests.servers.common import StoredAsset, photo_paths, upscaled
from tests.servers.nextcloud import (
    APP_PASSWORD,
    USER,
    NextcloudEmulator,
    preview_size,
)
from tests.servers.webdav import FOREIGN

PHOTO = photo_paths(variant="original")[0]


def jpeg(shade: int = 0, size: tuple[int, int] = (48, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (shade % 256, 120, 60)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def cloud() -> Iterator[NextcloudEmulator]:
    emulator = NextcloudEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


def adapter(emulator: NextcloudEmulator, **overrides: Any) -> Nextcloud:
    settings = {"base_url": emulator.base_url, "username": USER, "app_password": APP_PASSWORD}
    return Nextcloud(NextcloudSettings(**{**settings, **overrides}))


def listing(
    made: Nextcloud, cursor: NextcloudCursor | None = None
) -> tuple[list[AssetRef], NextcloudCursor]:
    items: list[AssetRef] = []
    last = None
    for page in made.iter_pages(cursor):
        items.extend(page.items)
        last = page
    assert last is not None and last.complete and last.cursor is not None
    return items, last.cursor


def add(emulator: NextcloudEmulator, name: str, data: bytes, **metadata: Any) -> StoredAsset:
    return emulator.library.add(name, data, {"folder": "Kuvat", **metadata})


def set_mtime(asset: StoredAsset, moment: datetime) -> None:
    asset.modified = moment  # a client's X-OC-MTime, or a bulk copy


# -- paging and incremental listing -------------------------------------------


@pytest.mark.parametrize("page_size", [1, 4, 7])
def test_many_files_of_one_second_are_paged_through_each_once(
    cloud: NextcloudEmulator, page_size: int
) -> None:
    """A bulk copy stamps hundreds of files with one mtime, and SQL returns
    ties in any order (the emulator shuffles them anew for each request)."""
    moment = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assets = [add(cloud, f"sarja-{n:02d}.jpg", jpeg(n)) for n in range(23)]
    for asset in assets[:20]:
        set_mtime(asset, moment)
    cursor: NextcloudCursor | None = None
    seen: list[str] = []
    for _ in range(len(assets) + 1):  # every page brings something new
        fresh = adapter(cloud, page_size=page_size)  # a new process each page
        page = fresh.list_assets(cursor)
        seen.extend(ref.id for ref in page.items)
        assert page.cursor is not None
        if page.complete:
            break
        assert page.items, "a page with nothing new: the listing is stuck on the tie"
        cursor = NextcloudCursor.model_validate_json(page.cursor.model_dump_json())
    else:
        pytest.fail("the listing never completed")
    assert sorted(seen) == sorted(asset.id for asset in assets)
    assert len(seen) == len(set(seen))


def test_a_file_deleted_during_a_listing_moves_nothing_past_the_reader(
    cloud: NextcloudEmulator,
) -> None:
    assets = [add(cloud, f"{n}.jpg", jpeg(n)) for n in range(6)]
    first = adapter(cloud, page_size=2).list_assets(None)
    assert [ref.id for ref in first.items] == [assets[0].id, assets[1].id]
    cloud.library.remove(assets[0].id)  # an offset would now skip assets[2]
    rest, _ = listing(adapter(cloud, page_size=2), first.cursor)
    assert [ref.id for ref in rest] == [asset.id for asset in assets[2:]]


def test_an_upload_keeping_an_old_mtime_is_found_by_the_next_incremental_listing(
    cloud: NextcloudEmulator,
) -> None:
    for n in range(3):
        add(cloud, f"{n}.jpg", jpeg(n))
    _, watermark = listing(adapter(cloud))
    old = add(cloud, "vanha.jpg", jpeg(99))
    set_mtime(old, datetime(2019, 5, 1, tzinfo=UTC))  # the desktop client's X-OC-MTime
    changed, watermark = listing(adapter(cloud), watermark)
    assert [ref.id for ref in changed] == [old.id]
    again, _ = listing(adapter(cloud), watermark)
    assert again == []


def test_a_future_mtime_does_not_hide_later_changes(cloud: NextcloudEmulator) -> None:
    assets = [add(cloud, f"{n}.jpg", jpeg(n)) for n in range(3)]
    set_mtime(assets[0], datetime(2099, 1, 1, tzinfo=UTC))  # a camera with a wrong clock
    _, watermark = listing(adapter(cloud))
    assert watermark.since < datetime(2099, 1, 1, tzinfo=UTC).timestamp()
    cloud.library.touch(assets[1].id)
    changed, _ = listing(adapter(cloud), watermark)
    # The future file is listed again (unchanged: its version says so).
    assert sorted(ref.id for ref in changed) == sorted([assets[0].id, assets[1].id])


def test_the_scope_folder_limits_the_listing(cloud: NextcloudEmulator) -> None:
    inside = add(cloud, "a.jpg", jpeg(1), folder="Kuvapankki/2024/kevät")
    add(cloud, "b.jpg", jpeg(2), folder="Muut")
    add(cloud, "c.jpg", jpeg(3), folder="Kuvapankki-vanha")
    items, _ = listing(adapter(cloud, folder="Kuvapankki"))
    assert [ref.id for ref in items] == [inside.id]
    assert items[0].metadata.location is None
    [ref] = items
    assert ref.original_url is not None and ref.original_url.endswith(
        "/remote.php/dav/files/damdup/Kuvapankki/2024/kev%C3%A4t/a.jpg"
    )
    assert adapter(cloud).fetch(ref, 0) == inside.data


def test_photos_metadata_is_mapped(cloud: NextcloudEmulator) -> None:
    taken = int(datetime(2024, 5, 1, 14, 30, tzinfo=UTC).timestamp())
    add(cloud, "a.jpg", jpeg(), place="Helsinki", taken=taken, owner="Kaupunginmuseo")
    [ref], _ = listing(adapter(cloud))
    assert ref.metadata.location == "Helsinki"
    assert ref.metadata.date == "2024-05-01T14:30:00"  # EXIF local time, no zone
    assert ref.metadata.department is None  # Nextcloud has no such field by default


# -- previews ----------------------------------------------------------------


def test_previews_keep_the_aspect_ratio_and_a_crop_is_never_asked_for(
    cloud: NextcloudEmulator,
) -> None:
    asset = add(cloud, "iso.jpg", upscaled(PHOTO, 1600, quality=92))
    made = adapter(cloud)
    [ref] = listing(made)[0]
    assert (ref.width, ref.height) == (asset.width, asset.height) == (1600, 1068)
    assert {(r.width, r.height) for r in ref.renditions} == {(256, 171), (1024, 684)}
    small = made.fetch(ref, 384)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (1024, 684)
    previews = cloud.requests_for("GET", "/index.php/core/preview")
    assert previews, "a preview was fetched"
    for entry in previews:
        query = parse_qs(entry.query)
        assert query["a"] == ["1"] and query["mode"] == ["fill"], "never a crop"
    # What a crop would have been: Nextcloud's default a=0 gives a square.
    assert preview_size(1600, 1067, 1024, 1024, crop=True) == (1024, 1024)


def test_a_small_image_or_one_without_a_preview_is_fetched_whole(
    cloud: NextcloudEmulator,
) -> None:
    small = add(cloud, "pieni.jpg", jpeg(size=(300, 200)))
    out = io.BytesIO()
    Image.new("RGB", (2000, 1000)).save(out, "TIFF")
    tiff = add(cloud, "skannaus.tif", out.getvalue())
    made = adapter(cloud)
    refs = {ref.id: ref for ref in listing(made)[0]}
    assert [(r.width, r.height) for r in refs[small.id].renditions] == [(256, 171)]
    assert refs[tiff.id].renditions == ()  # has-preview is false for TIFF
    assert made.fetch(refs[small.id], 384) == small.data
    assert made.fetch(refs[tiff.id], 384) == tiff.data
    assert not cloud.requests_for("GET", "/index.php/core/preview")


def test_a_preview_that_cannot_be_made_falls_back_to_the_original(
    cloud: NextcloudEmulator,
) -> None:
    asset = add(cloud, "iso.jpg", upscaled(PHOTO, 1600))
    made = adapter(cloud)
    [ref] = listing(made)[0]
    asset.mime_type = "image/x-no-provider"  # the server lost its preview provider
    assert made.fetch(ref, 384) == asset.data


def test_a_preview_smaller_than_promised_is_not_used(cloud: NextcloudEmulator) -> None:
    cloud.preview_max = 512  # config.php preview_max_x/y below the 1024 box
    asset = add(cloud, "iso.jpg", upscaled(PHOTO, 1600))
    made = adapter(cloud)
    [ref] = listing(made)[0]
    assert made.fetch(ref, 384) == asset.data
    [asked] = cloud.requests_for("GET", "/index.php/core/preview")
    assert parse_qs(asked.query)["x"] == ["1024"]


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((1600, 1067), 1024, (1024, 683)),
        ((1067, 1600), 1024, (683, 1024)),
        ((1600, 1067), 384, (1024, 683)),  # 256.1 high: snapped up to a power of four
        ((800, 600), 1024, (800, 600)),  # never enlarged
    ],
)
def test_the_emulator_sizes_previews_as_nextcloud_does(
    size: tuple[int, int], box: int, expected: tuple[int, int]
) -> None:
    assert preview_size(*size, box, box, crop=False) == expected


# -- marks -------------------------------------------------------------------


def test_marks_leave_foreign_properties_and_system_tags_alone(cloud: NextcloudEmulator) -> None:
    asset = add(cloud, "kuva.jpg", jpeg())
    cloud.properties[(USER, int(asset.id))] = dict(FOREIGN)
    cloud.tags[1] = "Kaupunginmuseo"
    cloud.tagged[1] = {int(asset.id)}
    made = adapter(cloud)
    [ref] = listing(made)[0]
    marks = Marks(labels=("canonical",), cluster="dd00000000ff")
    assert made.annotate(ref, marks) is True
    assert made.annotate(ref, marks) is False
    assert made.annotate(ref, Marks()) is True
    assert cloud.properties[(USER, int(asset.id))] == FOREIGN
    assert cloud.tagged == {1: {int(asset.id)}}
    methods = {entry.method for entry in cloud.log}
    assert "DELETE" not in methods and "PUT" not in methods and "POST" not in methods
    patches = [entry.body for entry in cloud.requests_for("PROPPATCH")]
    assert len(patches) == 2 and all(b"kuvaaja" not in body for body in patches)


# -- hostile answers and credentials -------------------------------------------


class HostileCloud(NextcloudEmulator):
    """Answers SEARCH with an entity bomb."""

    def search(self, request: Request) -> Response:
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>&b;</d:href>'
            b"</d:response></d:multistatus>"
        )
        return Response(bomb, status=207, content_type="application/xml")


def test_an_entity_bomb_is_refused_unread() -> None:
    emulator = HostileCloud()
    emulator.start()
    try:
        with pytest.raises(Unavailable, match="DTD"):
            adapter(emulator, attempts=1).list_assets(None)
    finally:
        emulator.stop()


def test_the_app_password_never_reaches_logs_or_errors(cloud: NextcloudEmulator) -> None:
    secret = "Vaara-Salas-ana00-00000-00000"
    with structlog.testing.capture_logs() as logs, pytest.raises(AuthFailed) as caught:
        listing(adapter(cloud, app_password=secret))
    assert logs and secret not in repr(logs) and secret not in str(caught.value)
    add(cloud, "iso.jpg", upscaled(PHOTO, 1600))
    with structlog.testing.capture_logs() as logs:
        made = adapter(cloud)
        [ref] = listing(made)[0]
        made.fetch(ref, 384)
    assert APP_PASSWORD not in repr(logs)
    assert all(APP_PASSWORD not in url for r in ref.renditions for url in (r.url,))
    assert APP_PASSWORD not in repr(made.settings)
