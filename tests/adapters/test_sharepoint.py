"""Microsoft Graph behaviour the contract suite does not reach: delta changes
and tombstones, 410 resync, thumbnails that are crops or smaller than promised,
the client credentials token (cached, renewed on 401), SharePoint throttling,
list columns for marks, folder scope and download hosts, and secrets kept out
of logs. Everything runs against the emulator in tests/servers/sharepoint.py."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from PIL import Image
from pydantic import ValidationError
from structlog.testing import capture_logs

from adapters.base import AssetRef, AuthFailed, BadAsset, Marks, NotFound, RateLimited, Unsupported
from adapters.sharepoint import SharePoint, SharePointCursor, SharePointSettings
from connector.core.fingerprint import DECODE_SIDE
from connector.core.index import SQLiteStore
from connector.engine.pool import Limits, WorkerPool
from connector.engine.sync import sync_unit
from tests.servers.common import photo_paths, upscaled
from tests.servers.faults import FaultProxy
from tests.servers.sharepoint import (
    CLIENT_ID,
    CLIENT_SECRET,
    DEFAULT_COLUMNS,
    TENANT_ID,
    TOKEN_LIFETIME_S,
    App,
    GraphEmulator,
    quick_xor_hash,
)

PHOTOS = photo_paths(variant="original")
TOKEN_PATH = f"/{TENANT_ID}/oauth2/v2.0/token"


@pytest.fixture
def start() -> Iterator[Callable[..., GraphEmulator]]:
    started: list[GraphEmulator] = []

    def run(**options: Any) -> GraphEmulator:
        emulator = GraphEmulator(apps={CLIENT_ID: App(CLIENT_SECRET)}, **options)
        emulator.start()
        started.append(emulator)
        return emulator

    yield run
    for emulator in started:
        emulator.stop()


def settings(emulator: GraphEmulator, **overrides: Any) -> SharePointSettings:
    return SharePointSettings(
        **{
            "base_url": f"{emulator.base_url}v1.0/",
            "token_url": f"{emulator.base_url}{TENANT_ID}/oauth2/v2.0/token",
            "tenant_id": TENANT_ID,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "drive_id": emulator.drive_id,
            **overrides,
        }
    )


def adapter(emulator: GraphEmulator, **overrides: Any) -> SharePoint:
    return SharePoint(settings(emulator, **overrides))


def add(emulator: GraphEmulator, number: int, data: bytes | None = None, **metadata: Any) -> str:
    path = PHOTOS[number % len(PHOTOS)]
    asset = emulator.library.add(f"kuva-{number:02d}.jpg", data or path.read_bytes(), metadata)
    return emulator.item_id(asset.id)


def listing(
    sharepoint: SharePoint, cursor: SharePointCursor | None = None
) -> tuple[list[AssetRef], list[str], SharePointCursor]:
    items: list[AssetRef] = []
    deleted: list[str] = []
    last = None
    for page in sharepoint.iter_pages(cursor):
        items.extend(page.items)
        deleted.extend(page.deleted)
        last = page
    assert last is not None and last.complete and last.cursor is not None
    return items, deleted, last.cursor


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def token_requests(emulator: GraphEmulator) -> int:
    return len(emulator.requests_for("POST", TOKEN_PATH))


def graph_get(emulator: GraphEmulator, sharepoint: SharePoint, path: str) -> requests.Response:
    """A request of our own to the emulator, with the adapter's current token."""
    return requests.get(
        f"{emulator.base_url}v1.0/{path}",
        headers={"Authorization": f"Bearer {sharepoint.auth.current()}"},
        timeout=10,
    )


def big_photo(long_side: int = 1600) -> bytes:
    return upscaled(PHOTOS[0], long_side, quality=92)


# -- delta -------------------------------------------------------------------------


def test_an_incremental_listing_holds_changes_and_deletions(start: Any) -> None:
    emulator = start()
    ids = [add(emulator, number) for number in range(5)]
    full, deleted, watermark = listing(adapter(emulator, page_size=2))
    assert sorted(ref.id for ref in full) == sorted(ids) and deleted == []
    before = {ref.id: ref.version for ref in full}

    emulator.library.remove(emulator.library_id(ids[0]))
    emulator.set_fields(ids[1], {"Title": "Senaatintori aamulla"})
    emulator.library.replace(emulator.library_id(ids[2]), PHOTOS[5].read_bytes())
    added = add(emulator, 6)
    changed, deleted, watermark = listing(adapter(emulator, page_size=2), watermark)

    assert sorted(ref.id for ref in changed) == sorted([ids[1], ids[2], added])
    assert deleted == [ids[0]]
    versions = {ref.id: ref.version for ref in changed}
    assert versions[ids[1]] == before[ids[1]], "a column edit is not new content"
    assert versions[ids[2]] != before[ids[2]], "new bytes are a new version"
    nothing, deleted, _ = listing(adapter(emulator), watermark)
    assert nothing == [] and deleted == []


def test_changes_during_a_listing_are_listed_later_and_nothing_is_skipped(start: Any) -> None:
    emulator = start()
    ids = [add(emulator, number) for number in range(6)]
    sharepoint = adapter(emulator, page_size=2)
    first = sharepoint.list_assets(None)  # the root and one file
    assert not first.complete and first.cursor is not None
    [listed] = [ref.id for ref in first.items]
    emulator.set_fields(listed, {"Title": "muokattu kesken listauksen"})
    emulator.library.remove(emulator.library_id(ids[4]))  # not listed yet
    rest, deleted, _ = listing(adapter(emulator, page_size=2), first.cursor)
    seen = [listed] + [ref.id for ref in rest]
    assert set(seen) == set(ids) - {ids[4]}
    assert seen.count(listed) == 2, "an item changed mid-listing shows again"
    assert deleted == [ids[4]]


def test_an_expired_delta_link_starts_over_and_loses_nothing(start: Any) -> None:
    emulator = start()
    ids = [add(emulator, number) for number in range(4)]
    _, _, watermark = listing(adapter(emulator, page_size=3))
    added = add(emulator, 4)
    emulator.expire_delta_tokens()

    stale = graph_get(emulator, adapter(emulator), watermark.link.split("/v1.0/", 1)[1])
    assert stale.status_code == 410
    assert stale.json()["error"]["code"] == "resyncRequired"
    assert "/root/delta?" in stale.headers["Location"]

    with capture_logs() as logs:
        items, deleted, fresh_watermark = listing(adapter(emulator, page_size=3), watermark)
    assert sorted(ref.id for ref in items) == sorted([*ids, added])
    assert deleted == []
    assert [entry["event"] for entry in logs].count("sharepoint.resync") == 1
    # The new deltaLink works: nothing changed since.
    assert listing(adapter(emulator), fresh_watermark)[0] == []


def test_an_expired_next_link_restarts_the_listing_in_progress(start: Any) -> None:
    emulator = start()
    ids = [add(emulator, number) for number in range(5)]
    first = adapter(emulator, page_size=2).list_assets(None)
    assert first.cursor is not None
    emulator.expire_delta_tokens()
    rest, _, _ = listing(adapter(emulator, page_size=2), first.cursor)
    assert sorted(ref.id for ref in rest) == sorted(ids)


def test_a_resync_through_the_engine_fetches_only_what_is_new(start: Any, tmp_path: Path) -> None:
    """What the engine sees after a 410: the fresh enumeration arrives as an
    incremental listing. Live assets are all there and unchanged ones fetch
    nothing; one deleted while the token aged stays live until `--full`."""
    emulator = start()
    ids = [add(emulator, number) for number in range(4)]
    store = SQLiteStore(tmp_path / "index.sqlite")
    with WorkerPool(2, Limits(seconds=60)) as pool:

        def sync(full: bool = False) -> Any:
            return sync_unit(
                store, adapter(emulator), "unit", pool,
                max_pixels=100_000_000, max_bytes=64 << 20, full=full,
            )  # fmt: skip

        assert sync().fingerprinted == 4
        added = add(emulator, 5)
        emulator.library.remove(emulator.library_id(ids[0]))
        emulator.expire_delta_tokens()
        stats = sync()
        assert stats.incremental and stats.complete
        assert stats.fetched == 1 and stats.unchanged == 3 and stats.retired == 0
        live = {row.asset_id for row in store.live_assets("unit")}
        assert live == {*ids, added}, "the deletion is not in a fresh enumeration"
        assert sync(full=True).retired == 1
        assert {row.asset_id for row in store.live_assets("unit")} == {*ids[1:], added}


def test_a_cursor_of_another_folder_starts_over(start: Any) -> None:
    emulator = start()
    add(emulator, 0, folder="Kuvat")
    inside = add(emulator, 1, folder="Arkisto")
    _, _, elsewhere = listing(adapter(emulator, folder="Kuvat"))
    items, _, _ = listing(adapter(emulator, folder="Arkisto"), elsewhere)
    assert [ref.id for ref in items] == [inside]


def test_delta_cannot_expand_list_items(start: Any) -> None:
    emulator = start()
    add(emulator, 0)
    answer = graph_get(
        emulator, adapter(emulator), f"drives/{emulator.drive_id}/root/delta?$expand=listItem"
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "One of the provided arguments is not acceptable."


def test_quick_xor_hash_matches_microsofts_example() -> None:
    assert quick_xor_hash(b"hello world") == "aCgDG9jwBhDc4Q1yawMZAAAAAAA="


# -- metadata and scope ----------------------------------------------------------------


def test_a_folder_is_listed_alone_and_its_place_can_be_mapped(start: Any) -> None:
    emulator = start()
    inside = add(emulator, 0, folder="Kuvat/Kesä 2024", fields={"Department": "Kaupunginmuseo"})
    add(emulator, 1, folder="Muut")
    sharepoint = adapter(
        emulator,
        folder="/Kuvat/Kesä 2024/",
        metadata={"location": "folder", "date": "createdDateTime", "department": "path"},
    )
    [ref], _, _ = listing(sharepoint)
    assert ref.id == inside
    assert ref.metadata.location == "Kesä 2024"
    assert ref.metadata.department == "Kuvat/Kesä 2024/kuva-00.jpg"
    assert ref.metadata.date is not None and ref.metadata.date.endswith("Z")


def test_a_mapping_without_columns_reads_no_item_one_by_one(start: Any) -> None:
    emulator = start()
    for number in range(3):
        add(emulator, number, taken="2024-06-01")
    sharepoint = adapter(
        emulator,
        metadata={"location": "=Helsinki", "date": "photo.takenDateTime", "department": "=Kymp"},
    )
    items, _, _ = listing(sharepoint)
    assert [ref.metadata.date for ref in items] == ["2024-06-01T00:00:00Z"] * 3
    assert emulator.requests_for("GET", "/v1.0/drives/") == emulator.requests_for(
        "GET", f"/v1.0/drives/{emulator.drive_id}/root/delta"
    )


# -- renditions --------------------------------------------------------------------


def test_crops_are_refused_in_the_settings(start: Any) -> None:
    emulator = start()
    for crop in ("c256x256_crop", "largeSquare", "smallSquare", "c0x100", "huge"):
        with pytest.raises(ValidationError, match="aspect-preserving"):
            settings(emulator, thumbnail_sizes=[crop])
    assert settings(emulator, thumbnail_sizes=["medium", "c2048x2048"]).thumbnail_sizes


def test_renditions_keep_the_aspect_ratio_and_no_crop_is_ever_fetched(start: Any) -> None:
    emulator = start()
    photo = big_photo(1600)
    with Image.open(io.BytesIO(big_photo(3200))) as opened:
        out = io.BytesIO()
        opened.crop((0, 0, 3200, 800)).save(out, "JPEG", quality=92)
    panorama = out.getvalue()  # 3200 x 800: `large` is 800 x 200, c1600x1600 is 1600 x 400
    originals = {add(emulator, 0, photo): photo, add(emulator, 1, panorama): panorama}
    sharepoint = adapter(emulator)
    items, _, _ = listing(sharepoint)
    for ref in items:
        assert [rendition.url.rsplit("/", 1)[1] for rendition in ref.renditions] == [
            "large",
            "c1600x1600",
        ]
        data = sharepoint.fetch(ref, DECODE_SIDE)
        width, height = size_of(data)
        assert ref.width and ref.height and len(data) < len(originals[ref.id]) / 2
        assert min(width, height) >= DECODE_SIDE
        assert abs(width / height - ref.width / ref.height) < 0.02
    fetched = emulator.requests_for("GET", "/transform/thumbnail")
    assert sorted(parse_qs(entry.query)["size"][0] for entry in fetched) == [
        "c1600x1600",
        "large",
    ]
    assert not [
        entry
        for entry in emulator.log
        if "Square" in entry.path + entry.query or "_crop" in entry.path + entry.query
    ]


def test_a_thumbnail_smaller_than_promised_is_not_used(start: Any) -> None:
    emulator = start(max_thumbnail_side=300)
    original = big_photo(1600)
    add(emulator, 0, original)
    sharepoint = adapter(emulator)
    [ref] = listing(sharepoint)[0]
    assert ref.renditions, "the image facet promised a large thumbnail"
    assert sharepoint.fetch(ref, DECODE_SIDE) == original
    assert emulator.requests_for("GET", "/transform/thumbnail") == []


def test_without_the_image_facet_the_original_is_fetched(start: Any) -> None:
    emulator = start(image_facet=False)
    original = big_photo(1200)
    add(emulator, 0, original)
    sharepoint = adapter(emulator)
    [ref] = listing(sharepoint)[0]
    assert ref.width is None and ref.renditions == ()
    assert sharepoint.fetch(ref, DECODE_SIDE) == original


def test_downloads_come_only_from_the_configured_hosts(start: Any) -> None:
    emulator = start()
    other = FaultProxy(emulator.base_url)  # SharePoint's own host, not Graph's
    try:
        emulator.download_host = other.url
        add(emulator, 0)
        [ref] = listing(adapter(emulator))[0]
        with pytest.raises(BadAsset, match="download_hosts"):
            adapter(emulator).fetch_original(ref)
        host = other.url.split("/")[2]
        data = adapter(emulator, download_hosts=[host]).fetch_original(ref)
        assert data == PHOTOS[0].read_bytes()
        assert [entry.path.split("?")[0] for entry in other.requests()] == [
            "/sites/kuvapankki/_layouts/15/download.aspx"
        ]
    finally:
        other.close()


# -- credentials -----------------------------------------------------------------------


def test_the_token_is_cached_and_renewed_when_graph_refuses_it(start: Any) -> None:
    emulator = start()
    ids = [add(emulator, number) for number in range(2)]
    sharepoint = adapter(emulator)
    listing(sharepoint)
    listing(sharepoint)
    assert token_requests(emulator) == 1
    # The emulator's clock passes the token's lifetime; the adapter's has not.
    emulator.clock.tick(TOKEN_LIFETIME_S + 1)
    items, _, _ = listing(sharepoint)
    assert sorted(ref.id for ref in items) == sorted(ids)
    assert token_requests(emulator) == 2
    refused = [entry for entry in emulator.log if entry.status == 401]
    assert len(refused) == 1 and "/root/delta" in refused[0].path
    emulator.revoke_access_tokens()
    assert sharepoint.exists(items[0]) is True
    assert token_requests(emulator) == 3


def test_a_renewed_token_refused_again_stops_the_unit(start: Any) -> None:
    emulator = start()
    add(emulator, 0)
    sharepoint = adapter(emulator)
    listing(sharepoint)
    emulator.revoke_access_tokens()
    emulator.apps.clear()  # the app registration was deleted
    with pytest.raises(AuthFailed, match="credentials"):
        listing(sharepoint)
    assert token_requests(emulator) == 2


def test_a_wrong_secret_is_auth_failed_with_the_servers_words(start: Any) -> None:
    emulator = start()
    add(emulator, 0)
    with pytest.raises(AuthFailed) as caught:
        listing(adapter(emulator, client_secret="wrong~secret~0000000000"))
    assert "invalid_client" in str(caught.value) and "credentials" in str(caught.value)
    assert "wrong~secret" not in str(caught.value)
    assert [entry.status for entry in emulator.log] == [401]


# -- throttling ----------------------------------------------------------------------


def clock_sleep(emulator: GraphEmulator, sharepoint: SharePoint) -> list[float]:
    """The adapter's waits move the emulator's clock instead of the test's."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        emulator.clock.tick(seconds)

    sharepoint.http.sleep = sleep
    sharepoint.auth.tokens.sleep = sleep
    return waits


def test_throttling_is_waited_out_as_retry_after_says(start: Any) -> None:
    emulator = start()
    ids = [add(emulator, number) for number in range(4)]
    emulator.throttle(limit=2, window_s=30)
    sharepoint = adapter(emulator, page_size=1)
    waits = clock_sleep(emulator, sharepoint)
    items, _, _ = listing(sharepoint)
    assert sorted(ref.id for ref in items) == sorted(ids)
    throttled = [entry for entry in emulator.log if entry.status == 429]
    assert throttled and len(waits) == len(throttled)
    # Each wait was the window's remainder, and the retry then went through.
    assert all(wait == 30 for wait in waits)
    statuses = [entry.status for entry in emulator.log]
    assert all(statuses[at + 1] == 200 for at, status in enumerate(statuses) if status == 429)


def test_a_retry_after_beyond_the_limit_is_left_to_the_engine(start: Any) -> None:
    emulator = start()
    add(emulator, 0)
    sharepoint = adapter(emulator)
    sharepoint.auth.current()
    emulator.throttle(limit=1, window_s=300)
    waits = clock_sleep(emulator, sharepoint)
    with pytest.raises(RateLimited) as caught:
        listing(sharepoint)  # the delta page passes; reading its item's columns is refused
    assert caught.value.retry_after is not None and caught.value.retry_after > 60
    assert waits == []


# -- marks ---------------------------------------------------------------------------

LONG_URL = "https://www.hel.fi/kuvat/" + "Temppeliaukion%20kirkko/" * 20 + "ä.jpg?koko=täysi#x"


def test_marks_change_the_etag_but_neither_the_ctag_nor_the_version(start: Any) -> None:
    emulator = start()
    item_id = add(emulator, 0)
    sharepoint = adapter(emulator)
    [ref], _, watermark = listing(sharepoint)
    before = graph_get(emulator, sharepoint, f"drives/{emulator.drive_id}/items/{item_id}").json()
    marks = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=LONG_URL)
    assert sharepoint.annotate(ref, marks) is True
    after = graph_get(emulator, sharepoint, f"drives/{emulator.drive_id}/items/{item_id}").json()
    assert after["cTag"] == before["cTag"]
    assert after["eTag"] != before["eTag"]
    assert after["lastModifiedDateTime"] > before["lastModifiedDateTime"]
    [again], _, _ = listing(sharepoint, watermark)  # a column edit shows in delta
    assert again.version == ref.version
    assert adapter(emulator).read_marks(ref) == marks  # longer than a text column holds


def test_marks_need_the_librarys_columns_and_write_nothing_without_them(start: Any) -> None:
    columns = {name: column for name, column in DEFAULT_COLUMNS.items() if "Damdup" not in name}
    emulator = start(columns=columns)
    item_id = add(emulator, 0, fields={"Title": "Tuomiokirkko"})
    sharepoint = adapter(emulator)
    [ref], _, _ = listing(sharepoint)
    with pytest.raises(Unsupported, match="DamdupMarks, DamdupCluster, DamdupCanonical"):
        sharepoint.annotate(ref, Marks(labels=("canonical",), cluster="dd0123456789"))
    fields = graph_get(
        emulator, sharepoint, f"drives/{emulator.drive_id}/items/{item_id}/listItem/fields"
    ).json()
    assert fields["Title"] == "Tuomiokirkko" and not any("Damdup" in name for name in fields)
    assert [entry.status for entry in emulator.requests_for("PATCH")] == [400]


def test_marks_in_renamed_columns(start: Any) -> None:
    columns = {**DEFAULT_COLUMNS, "Kaksoiskappale": DEFAULT_COLUMNS["DamdupMarks"]}
    emulator = start(columns=columns)
    item_id = add(emulator, 0)
    sharepoint = adapter(emulator, marks_column="Kaksoiskappale")
    [ref], _, _ = listing(sharepoint)
    assert sharepoint.annotate(ref, Marks(labels=("related",))) is True
    with emulator.library.lock:
        stored = emulator.column_values(emulator.library.assets[emulator.library_id(item_id)])
    assert stored == {"Kaksoiskappale": "related"}


def test_marks_on_a_removed_item_and_exists(start: Any) -> None:
    emulator = start()
    item_id = add(emulator, 0)
    sharepoint = adapter(emulator)
    [ref], _, _ = listing(sharepoint)
    emulator.library.remove(emulator.library_id(item_id))
    assert sharepoint.exists(ref) is False
    with pytest.raises(NotFound):
        sharepoint.read_marks(ref)


# -- secrets --------------------------------------------------------------------------


def test_no_secret_reaches_the_log(start: Any, caplog: pytest.LogCaptureFixture) -> None:
    emulator = start()
    add(emulator, 0, big_photo(1600))
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    errors: list[str] = []
    with capture_logs() as logs:
        sharepoint = adapter(emulator)
        [ref], _, _ = listing(sharepoint)
        issued.extend(emulator.tokens)
        sharepoint.fetch(ref, DECODE_SIDE)
        sharepoint.fetch_original(ref)
        sharepoint.annotate(ref, Marks(labels=("canonical",), cluster="dd0123456789"))
        emulator.revoke_access_tokens()
        sharepoint.read_marks(ref)  # refused, renewed
        issued.extend(emulator.tokens)
        for wrong in ("wrong~secret~1111111111", CLIENT_SECRET + "x"):
            try:
                listing(adapter(emulator, client_secret=wrong))
            except AuthFailed as exc:
                errors.append(str(exc))
    text = "\n".join([*map(repr, logs), caplog.text, *errors, repr(settings(emulator))])
    assert len(issued) == 2 and len(errors) == 2
    assert "http.request" in text
    for secret in [CLIENT_SECRET, "wrong~secret~1111111111", *issued]:
        assert secret not in text
    # The bearer token went to Graph only, never to the preauthenticated URLs.
    for entry in emulator.log:
        graph = entry.path.startswith("/v1.0/")
        assert ("Authorization" in entry.headers) == graph, entry.path
