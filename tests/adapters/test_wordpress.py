"""The WordPress adapter against the real WordPress (Debian's package on
MariaDB, `php -S` on 127.0.0.1) behind the fault proxy: what the contract
suite cannot say about WordPress in particular."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from PIL import Image
from pydantic import ValidationError

from adapters.base import AssetRef, AuthFailed, BadAsset, Marks, MetadataMapping, Unsupported
from adapters.wordpress import WordPress, WordPressCursor, WordPressSettings
from tests.servers.common import photo_paths, upscaled
from tests.servers.wordpress import DAMDUP_PLUGIN_ID, WordPressHarness

PHOTOS = photo_paths(variant="original")
MEDIA_PATH = "/wp-json/wp/v2/media"


@pytest.fixture(scope="session")
def wordpress() -> Iterator[WordPressHarness]:
    harness = WordPressHarness()
    yield harness
    harness.close()


@pytest.fixture
def wp(wordpress: WordPressHarness) -> WordPressHarness:
    wordpress.reset()
    return wordpress


def adapter(wp: WordPressHarness, **overrides: Any) -> WordPress:
    made = wp.adapter(**overrides)
    assert isinstance(made, WordPress)
    return made


def listing(
    made: WordPress, cursor: WordPressCursor | None = None
) -> tuple[list[AssetRef], WordPressCursor | None, int]:
    items: list[AssetRef] = []
    pages = 0
    for page in made.iter_pages(cursor):
        pages += 1
        items += page.items
        cursor = page.cursor
    return items, cursor, pages


def add_photos(wp: WordPressHarness, count: int) -> list[str]:
    return [
        wp.add(f"photo-{number:02d}.jpg", path.read_bytes())
        for number, path in enumerate(PHOTOS[:count])
    ]


def set_modified(wp: WordPressHarness, asset_id: str, local: str, gmt: str | None = None) -> None:
    """Give an attachment a modification time, local and UTC, as WordPress
    stores them (whole seconds, two columns)."""
    wp.server.sql(
        f"UPDATE wp_posts SET post_modified = '{local}', post_modified_gmt = '{gmt or local}' "
        f"WHERE ID = {int(asset_id)}"
    )


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def listing_requests(wp: WordPressHarness) -> list[str]:
    assert wp.proxy is not None
    return [r.path for r in wp.proxy.requests("GET", path_contains=MEDIA_PATH)]


# -- the server ----------------------------------------------------------------


def test_the_real_wordpress_prints_the_proxy_url(wp: WordPressHarness) -> None:
    index = wp.server.api("GET", "wp-json/")
    assert index["url"] == wp.url.rstrip("/")
    assert "wp/v2" in index["namespaces"]
    [asset_id] = add_photos(wp, 1)
    record = wp.server.api("GET", f"wp-json/wp/v2/media/{asset_id}")
    assert record["source_url"].startswith(wp.url + "wp-content/uploads/")


# -- listing -------------------------------------------------------------------


def test_pages_of_two_walk_every_image_once_across_shared_seconds(wp: WordPressHarness) -> None:
    ids = add_photos(wp, 5)
    for asset_id, second in zip(ids, (10, 10, 10, 11, 12), strict=True):
        set_modified(wp, asset_id, f"2026-01-05 08:00:{second}")
    items, cursor, pages = listing(adapter(wp, page_size=2))
    listed = [ref.id for ref in items]
    # Oldest change first; WordPress orders assets of one second as it likes.
    assert sorted(listed[:3]) == sorted(ids[:3]) and listed[3:] == ids[3:]
    assert pages >= 3
    assert len(listing_requests(wp)) == pages
    # The site's time with its offset (the test site keeps UTC).
    assert cursor is not None and cursor.after == datetime(2026, 1, 5, 8, 0, 12, tzinfo=UTC)
    assert cursor.after.utcoffset() == timedelta(0)


def test_a_second_holding_more_than_a_page_is_paged_by_number(wp: WordPressHarness) -> None:
    ids = add_photos(wp, 5)
    for asset_id in ids:
        set_modified(wp, asset_id, "2026-01-05 08:00:00")
    items, _, _ = listing(adapter(wp, page_size=2))
    assert sorted(ref.id for ref in items) == sorted(ids)
    assert len(items) == len(ids)
    assert any("orderby=id" in path for path in listing_requests(wp))


def test_a_crowded_second_that_was_still_running_is_looked_at_again(
    wp: WordPressHarness,
) -> None:
    """A second holding more than a page, paged by number, may not have been
    over: what changes in it later comes with the next incremental listing."""
    ids = add_photos(wp, 5)
    for asset_id in ids[:4]:
        set_modified(wp, asset_id, "2026-01-05 08:00:00")
    set_modified(wp, ids[4], "2026-01-05 07:00:00")
    items, watermark, _ = listing(adapter(wp, page_size=2))
    assert sorted(ref.id for ref in items) == sorted(ids)
    # Later in that same second: one more change, and one new upload.
    set_modified(wp, ids[4], "2026-01-05 08:00:00")
    added = wp.add("later.jpg", PHOTOS[5].read_bytes())
    set_modified(wp, added, "2026-01-05 08:00:00")
    changed, _, _ = listing(adapter(wp, page_size=2), watermark)
    assert sorted(ref.id for ref in changed) == sorted([ids[4], added])


def test_a_crowded_second_that_empties_while_paged_by_number_is_passed(
    wp: WordPressHarness,
) -> None:
    """Edits move media out of a crowded second while it is paged by number:
    WordPress refuses the page number now past its last (400,
    rest_post_invalid_page_number), and the listing goes on after it."""
    ids = add_photos(wp, 5)
    for asset_id in ids:
        set_modified(wp, asset_id, "2026-01-05 08:00:00")
    made = adapter(wp, page_size=2)
    cursor, listed = None, []
    while cursor is None or cursor.tie_page < 2:
        page = made.list_assets(cursor)
        listed += [ref.id for ref in page.items]
        assert not page.complete
        cursor = page.cursor
    # One stays: the second now fills one page, and page 2 is past its last.
    for asset_id in ids[1:]:
        set_modified(wp, asset_id, "2026-01-05 09:00:00")
    rest, _, _ = listing(made, cursor)
    assert sorted(set(listed + [ref.id for ref in rest])) == sorted(ids)
    assert sorted(ref.id for ref in rest if ref.id in listed) == sorted(set(listed) - {ids[0]})
    assert any("page=2" in path and "orderby=id" in path for path in listing_requests(wp))


def test_a_bad_time_filter_asks_for_wordpress_5_7(wp: WordPressHarness) -> None:
    with pytest.raises(Unsupported, match=r"WordPress 5\.7 or later"):
        adapter(wp)._get(MEDIA_PATH.lstrip("/"), {"modified_after": "not a time"})


def test_edits_and_deletions_during_a_listing_skip_nothing(wp: WordPressHarness) -> None:
    ids = add_photos(wp, 6)
    for number, asset_id in enumerate(ids):
        set_modified(wp, asset_id, f"2026-01-05 08:00:{number:02d}")
    made = adapter(wp, page_size=2)
    first = made.list_assets(None)
    assert [ref.id for ref in first.items] == ids[:2]
    # Page numbers would now skip ids[2]: two assets before it left their places.
    wp.remove(ids[0])
    wp.touch(ids[1])
    rest, _, _ = listing(made, first.cursor)
    listed = [ref.id for ref in rest]
    assert sorted(set(listed)) == sorted(ids[1:])
    assert listed[-1] == ids[1]  # the edit moved it to the end


def test_incremental_listing_asks_for_changes_only(wp: WordPressHarness) -> None:
    ids = add_photos(wp, 3)
    made = adapter(wp)
    before, cursor, _ = listing(made)
    again, cursor_again, _ = listing(made, cursor)
    assert again == [] and cursor_again == cursor
    wp.touch(ids[0])
    added = wp.add("later.jpg", PHOTOS[3].read_bytes())
    changed, _, _ = listing(adapter(wp), cursor)
    assert sorted(ref.id for ref in changed) == sorted([ids[0], added])
    old_version = next(ref.version for ref in before if ref.id == ids[0])
    assert next(ref.version for ref in changed if ref.id == ids[0]) != old_version
    assert "modified_after=" in listing_requests(wp)[-1]


def test_clocks_going_back_an_hour_reread_the_repeated_hour(wp: WordPressHarness) -> None:
    a, b, c, d = add_photos(wp, 4)
    # Helsinki, 26 Oct 2025: 04:00 summer time (UTC+3) became 03:00 (UTC+2).
    set_modified(wp, a, "2025-10-26 03:10:00", "2025-10-26 00:10:00")
    set_modified(wp, b, "2025-10-26 03:40:00", "2025-10-26 00:40:00")
    set_modified(wp, c, "2025-10-20 12:00:00")
    set_modified(wp, d, "2025-10-20 12:00:00")
    made = adapter(wp)
    first, cursor, _ = listing(made)
    assert sorted(ref.id for ref in first) == sorted([a, b, c, d])
    # Edits after the sync, in the second pass of the repeated hour and later.
    set_modified(wp, c, "2025-10-26 03:20:00", "2025-10-26 01:20:00")
    set_modified(wp, d, "2025-10-26 04:05:00", "2025-10-26 02:05:00")
    changed, _, _ = listing(made, cursor)
    assert {c, d} <= {ref.id for ref in changed}


def test_a_cursor_saved_with_local_times_resumes_where_it_was(wp: WordPressHarness) -> None:
    """Cursors saved before times carried their offset hold `after` as naive
    local time and the newest change as UTC plus `utc_offset_s`: they load as
    the same position, and a corrupt one is refused (the engine then lists in
    full) rather than misread."""
    a, b = add_photos(wp, 2)
    set_modified(wp, a, "2025-10-26 03:10:00", "2025-10-26 00:10:00")
    set_modified(wp, b, "2025-10-26 03:40:00", "2025-10-26 00:40:00")
    made = adapter(wp)
    _, cursor, _ = listing(made)
    summer = timezone(timedelta(hours=3))
    assert cursor is not None and cursor.after == datetime(2025, 10, 26, 3, 40, tzinfo=summer)
    assert cursor.newest == datetime(2025, 10, 26, 0, 40, tzinfo=UTC)
    assert cursor.newest.utcoffset() == timedelta(hours=3)
    saved = json.dumps(
        {
            "after": "2025-10-26T03:40:00",
            "seen_at_after": [int(b)],
            "tie_page": 0,
            "beyond": False,
            "newest_gmt": "2025-10-26T00:40:00Z",
            "utc_offset_s": 10800,
        }
    )
    loaded = WordPressCursor.model_validate_json(saved)
    assert loaded == cursor and loaded.newest is not None
    assert loaded.newest.utcoffset() == timedelta(hours=3)
    assert listing(made, loaded)[0] == []
    with pytest.raises(ValidationError):
        WordPressCursor.model_validate_json(saved.replace('"2025-10-26T03:40:00"', '"soon"'))


def test_only_images_are_listed(wp: WordPressHarness) -> None:
    [photo] = add_photos(wp, 1)
    wp.server.upload("notes.txt", b"minutes of the editorial meeting\n")
    items, _, _ = listing(adapter(wp))
    assert [ref.id for ref in items] == [photo]


# -- renditions ----------------------------------------------------------------


def test_renditions_are_the_smallest_large_enough_and_never_the_square_crop(
    wp: WordPressHarness,
) -> None:
    original = upscaled(PHOTOS[0], 1920)
    width, height = size_of(original)
    wp.add("big.jpg", original)
    made = adapter(wp)
    [ref] = listing(made)[0]
    assert (ref.width, ref.height) == (width, height)
    sizes = {(r.width, r.height) for r in ref.renditions}
    assert (150, 150) in sizes  # WordPress's thumbnail: a centre crop
    fetched = {}
    for min_side in (100, 150, 300, 600, 1000):
        data = made.fetch(ref, min_side)
        got_w, got_h = size_of(data)
        fetched[min_side] = (got_w, got_h)
        assert min(got_w, got_h) >= min_side
        assert abs(got_w / got_h - width / height) < 0.01, "never a crop"
        eligible = [
            (w, h) for w, h in sizes if min(w, h) >= min_side and abs(w / h - width / height) < 0.01
        ]
        assert (got_w, got_h) == min(eligible, key=lambda size: size[0] * size[1])
        assert len(data) < len(original)
    assert fetched[100] == fetched[150] == (300, round(300 * height / width))
    assert fetched[300][0] == 768 and fetched[600][0] == 1024 and fetched[1000][0] == 1536
    # Nothing smaller is large enough: the original, byte for byte.
    assert made.fetch(ref, min(width, height) - 50) == original
    assert made.fetch_original(ref) == original


def test_a_small_photo_is_fetched_as_uploaded(wp: WordPressHarness) -> None:
    data = PHOTOS[0].read_bytes()
    wp.add("small.jpg", data)
    made = adapter(wp)
    [ref] = listing(made)[0]
    width, height = size_of(data)
    medium = (300, round(300 * height / width))  # WordPress's "medium" size
    assert size_of(made.fetch(ref, medium[1])) == medium
    assert made.fetch(ref, medium[1] + 1) == data


def test_a_big_upload_serves_the_scaled_copy_and_keeps_the_original(wp: WordPressHarness) -> None:
    original = upscaled(PHOTOS[0], 3000)
    width, height = size_of(original)
    wp.add("huge.jpg", original)
    made = adapter(wp)
    [ref] = listing(made)[0]
    # WordPress serves uploads over 2560 px as a "-scaled" copy.
    assert ref.original_url is not None and ref.original_url.endswith("/huge.jpg")
    assert made.fetch_original(ref) == original
    scaled_short = round(2560 * min(width, height) / max(width, height))
    scaled = made.fetch(ref, scaled_short - 100)
    assert max(size_of(scaled)) == 2560
    assert made.fetch(ref, scaled_short + 1) == original


# -- metadata ------------------------------------------------------------------


def test_metadata_default_mapping_and_a_unit_of_its_own(wp: WordPressHarness) -> None:
    facts = {"location": "Temppeliaukio", "date": "2024-05-01", "department": "Kaupunginmuseo"}
    asset_id = wp.add("kirkko.jpg", PHOTOS[0].read_bytes(), facts)
    [ref] = listing(adapter(wp))[0]
    assert ref.id == asset_id
    assert ref.metadata.location == "Temppeliaukio"
    assert ref.metadata.department == "Kaupunginmuseo"
    assert ref.metadata.date == "2024-05-01T00:00:00"
    mapping = MetadataMapping(location="title", date="media_details.image_meta.camera")
    [custom] = listing(adapter(wp, metadata=mapping))[0]
    assert custom.metadata.location == "kirkko"  # the title WordPress gave the upload
    assert custom.metadata.date is not None  # camera model from the photo's EXIF
    assert custom.metadata.missing == ["department"]
    assert "title" in listing_requests(wp)[-1]  # asked for in `_fields`


# -- credentials ---------------------------------------------------------------


def test_a_wrong_application_password_is_auth_failed_at_once(wp: WordPressHarness) -> None:
    add_photos(wp, 1)
    wrong = "abcd efgh ijkl mnop qrst uvwx"
    with pytest.raises(AuthFailed) as caught:
        listing(adapter(wp, app_password=wrong))
    message = str(caught.value)
    assert wp.server.admin_user in message and "Application Passwords" in message
    assert wrong not in message
    assert wp.proxy is not None and len(wp.proxy.requests()) == 1


def test_a_public_site_lists_without_credentials(wp: WordPressHarness) -> None:
    ids = add_photos(wp, 2)
    items, _, _ = listing(adapter(wp, username=None, app_password=None))
    assert sorted(ref.id for ref in items) == sorted(ids)
    assert wp.proxy is not None
    assert all("context=edit" not in r.path for r in wp.proxy.requests())


def test_settings_limits() -> None:
    with pytest.raises(ValidationError, match="go together"):
        WordPressSettings(base_url="https://example.invalid/", username="someone")
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        WordPressSettings(base_url="https://example.invalid/", page_size=101)
    defaults = WordPressSettings(base_url="https://example.invalid/")
    assert defaults.metadata.date == "date_gmt"


# -- marks (damdup's plugin) ---------------------------------------------------

MARKS_PATH = "/wp-json/damdup/v1/marks/"
MARKED = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url="https://a.example/b")


def changing_requests(wp: WordPressHarness) -> list[str]:
    assert wp.proxy is not None
    return [f"{r.method} {r.path}" for r in wp.proxy.log if wp.changing(r)]


def marks_route(wp: WordPressHarness, asset_id: str) -> str:
    """The plugin's route straight on php -S, for requests the adapter would not send."""
    return f"{wp.server.url}{MARKS_PATH.lstrip('/')}{asset_id}"


def test_the_plugin_is_a_real_installable_plugin(wp: WordPressHarness) -> None:
    [plugin] = [
        record
        for record in wp.server.api("GET", "wp-json/wp/v2/plugins")
        if record["plugin"] == DAMDUP_PLUGIN_ID
    ]
    assert plugin["status"] == "active"
    assert plugin["name"] == "damdup" and plugin["version"]
    assert plugin["requires_wp"] and plugin["requires_php"]
    assert "damdup/v1" in wp.server.api("GET", "wp-json/")["namespaces"]


def test_without_the_plugin_marks_fail_clearly_and_nothing_is_sent(wp: WordPressHarness) -> None:
    [asset_id] = add_photos(wp, 1)
    [ref] = listing(adapter(wp))[0]
    assert adapter(wp).annotate(ref, MARKED) is True
    wp.server.set_plugin_active(DAMDUP_PLUGIN_ID, False)
    try:
        assert wp.proxy is not None
        wp.proxy.clear()
        for attempt in (
            lambda: adapter(wp).annotate(ref, Marks(labels=("canonical",))),
            lambda: adapter(wp).read_marks(ref),
        ):
            with pytest.raises(Unsupported) as caught:
                attempt()
            assert "install the damdup plugin (adapters/wordpress_plugin)" in str(caught.value)
        assert changing_requests(wp) == []
    finally:
        wp.server.set_plugin_active(DAMDUP_PLUGIN_ID, True)
    # The marks were kept while the plugin was off.
    assert wp.stored_marks(asset_id) == MARKED


def test_a_user_who_may_not_upload_or_edit_it_is_refused_and_nothing_changes(
    wp: WordPressHarness,
) -> None:
    [asset_id] = add_photos(wp, 1)
    [ref] = listing(adapter(wp))[0]
    adapter(wp).annotate(ref, MARKED)
    other = Marks(labels=("canonical",), cluster="ddffffffffff")
    # A contributor may not upload at all; an author may, but not edit the
    # administrator's attachment.
    for role in ("contributor", "author"):
        username, password = wp.server.add_user(role)
        with pytest.raises(AuthFailed) as caught:
            adapter(wp, username=username, app_password=password).annotate(ref, other)
        assert username in str(caught.value) and "upload files" in str(caught.value)
        assert password not in str(caught.value)
        # The plugin refuses the write itself, not only the adapter's reading first.
        refused = requests.put(
            marks_route(wp, asset_id),
            json={"damdup_marks": "canonical", "damdup_cluster": "ddffffffffff"},
            auth=(username, password),
            timeout=30,
        )
        assert refused.status_code == 403 and refused.json()["code"] == "rest_forbidden"
        # Nor through the media endpoint's `meta`, where the plugin's meta shows.
        refused = requests.post(
            f"{wp.server.url}wp-json/wp/v2/media/{asset_id}",
            json={"meta": {"damdup_marks": "canonical"}},
            auth=(username, password),
            timeout=30,
        )
        assert refused.status_code == 403
    assert wp.stored_marks(asset_id) == MARKED
    with pytest.raises(AuthFailed, match="set username and app_password"):
        adapter(wp, username=None, app_password=None).read_marks(ref)


def test_marks_leave_the_media_librarys_other_fields_and_times_alone(
    wp: WordPressHarness,
) -> None:
    """An attachment last edited long ago keeps its modification time (the
    listing's order and the asset's version), every field and every other
    meta row, while its marks are written, changed and removed; an
    incremental listing then has nothing new."""
    [asset_id] = add_photos(wp, 1)
    wp.set_foreign(asset_id)
    set_modified(wp, asset_id, "2024-03-01 10:00:00")
    before = wp.foreign_state(asset_id)
    assert before["record"]["modified_gmt"] == "2024-03-01T10:00:00"
    made = adapter(wp)
    [ref], cursor, _ = listing(made)
    for marks in (MARKED, Marks(labels=("canonical", "related"), cluster="dd0123456789"), Marks()):
        assert made.annotate(ref, marks) is True
        assert wp.stored_marks(asset_id) == marks
        assert wp.foreign_state(asset_id) == before
    assert listing(adapter(wp), cursor)[0] == []
    assert [ref.version for ref in listing(adapter(wp))[0]] == [ref.version]
    assert all(request.startswith("PUT ") for request in changing_requests(wp))


def test_links_come_back_exactly_and_the_plugin_refuses_what_it_cannot_keep(
    wp: WordPressHarness,
) -> None:
    [asset_id] = add_photos(wp, 1)
    [ref] = listing(adapter(wp))[0]
    made = adapter(wp)
    # Backslashes and quotes survive WordPress's slashing of meta values.
    odd = Marks(labels=("duplicate",), canonical_url="file:///srv/kuvat/a\\b 'c' \"d\" %41.jpg")
    assert made.annotate(ref, odd) is True
    assert wp.stored_marks(asset_id) == odd and made.read_marks(ref) == odd
    # A canonical with no web address (a file on a share) is named in words.
    words = Marks(labels=("duplicate",), canonical_url="unit arkisto: kuvat/Töölö <b>1</b>.jpg")
    assert made.annotate(ref, words) is True
    assert wp.stored_marks(asset_id) == words and made.read_marks(ref) == words
    cell = wp.server.php(f"do_action('manage_media_custom_column', 'damdup', {int(asset_id)});")
    assert "canonical image: unit arkisto: kuvat/Töölö &lt;b&gt;1&lt;/b&gt;.jpg" in cell
    assert made.annotate(ref, odd) is True
    # A line break is no URL: refused, and what was stored stays.
    with pytest.raises(BadAsset, match="damdup_canonical"):
        made.annotate(ref, Marks(labels=("duplicate",), canonical_url="https://a.example/\nb"))
    assert wp.stored_marks(asset_id) == odd
    unknown = requests.put(
        marks_route(wp, asset_id),
        json={"damdup_marks": "duplicate keeper", "damdup_cluster": "dd0123456789"},
        auth=(wp.server.admin_user, wp.server.app_password),
        timeout=30,
    )
    assert unknown.status_code == 400 and "keeper" in unknown.text
    assert wp.stored_marks(asset_id) == odd


def test_marks_are_for_editors_not_for_the_public(wp: WordPressHarness) -> None:
    [asset_id] = add_photos(wp, 1)
    [ref] = listing(adapter(wp))[0]
    adapter(wp).annotate(ref, MARKED)
    public = requests.get(f"{wp.server.url}wp-json/wp/v2/media/{asset_id}", timeout=30).json()
    assert public["id"] == int(asset_id)
    assert not any(key.startswith("damdup") for key in public.get("meta") or {})
    assert wp.stored_marks(asset_id) == MARKED  # what an editor sees (context=edit)


def test_the_media_library_list_shows_the_marks_escaped(wp: WordPressHarness) -> None:
    [asset_id] = add_photos(wp, 1)
    [ref] = listing(adapter(wp))[0]
    link = 'https://a.example/"><script>x</script>'
    adapter(wp).annotate(
        ref, Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=link)
    )
    columns = wp.server.php("echo json_encode(apply_filters('manage_media_columns', array()));")
    assert "damdup" in json.loads(columns)
    cell = wp.server.php(f"do_action('manage_media_custom_column', 'damdup', {int(asset_id)});")
    assert "duplicate" in cell and "dd0123456789" in cell
    assert "<script>" not in cell and 'href="https://a.example/' in cell


def test_a_medium_dated_in_the_future_hides_no_later_upload(wp: WordPressHarness) -> None:
    """The boundary a listing ends with never passes the listing's start: a
    medium whose modification time lies in the future (a wrong clock, a hand
    edit) must not make later incremental listings skip new uploads."""
    [dated] = add_photos(wp, 1)
    set_modified(wp, dated, "2030-01-01 00:00:00")
    items, cursor, _ = listing(adapter(wp))
    assert [ref.id for ref in items] == [dated]
    assert cursor is not None and cursor.after is not None
    assert cursor.after < datetime(2030, 1, 1, tzinfo=UTC)
    assert cursor.started is None, "a finished listing's cursor keeps no start"
    new = wp.add("uusi.jpg", PHOTOS[1].read_bytes())
    found, again, _ = listing(adapter(wp), cursor)
    assert new in [ref.id for ref in found]
    # What comes again (the 2030 medium, anything of the second the listing
    # began in) comes unchanged: the engine skips it by its version.
    versions = {ref.id: ref.version for ref in found}
    later, _, _ = listing(adapter(wp), again)
    assert all(versions.get(ref.id) == ref.version for ref in later)
