"""ResourceSpace specifics the contract suite does not cover: request signing,
paging and ordering requirements, older servers, renditions from
get_resource_all_image_sizes, metadata from joined fields or field data; marks
in a field and duplicates related to their canonical, without ever undoing a
person's relation."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import requests
from PIL import Image
from pydantic import ValidationError
from structlog.testing import capture_logs

from adapters.base import AssetRef, AuthFailed, Marks, NotFound, Unsupported
from adapters.resourcespace import (
    UNDATED,
    ResourceSpace,
    ResourceSpaceCursor,
    ResourceSpacePaginator,
    ResourceSpaceSettings,
)
from tests.servers.common import photo_paths
from tests.servers.faults import Forwarded
from tests.servers.resourcespace import (
    PRIVATE_KEY,
    USERNAME,
    ResourceSpaceEmulator,
    ResourceSpaceHarness,
)

PHOTOS = photo_paths(variant="original")

MakeHarness = Callable[..., ResourceSpaceHarness]


@pytest.fixture
def make_harness() -> Iterator[MakeHarness]:
    made: list[ResourceSpaceHarness] = []

    def make(**options: Any) -> ResourceSpaceHarness:
        options.setdefault("data_joins", (10,))
        harness = ResourceSpaceHarness(ResourceSpaceEmulator(**options))
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture(scope="module")
def shared_harness() -> Iterator[ResourceSpaceHarness]:
    harness = ResourceSpaceHarness()
    yield harness
    harness.close()


@pytest.fixture
def harness(shared_harness: ResourceSpaceHarness) -> ResourceSpaceHarness:
    """The contract's configuration, emptied for each test."""
    shared_harness.reset()
    shared_harness.emulator.log.clear()
    return shared_harness


def adapter(harness: ResourceSpaceHarness, **overrides: Any) -> ResourceSpace:
    made = harness.adapter(**overrides)
    assert isinstance(made, ResourceSpace)
    return made


def listing(
    source: ResourceSpace, cursor: ResourceSpaceCursor | None = None
) -> tuple[list[AssetRef], ResourceSpaceCursor | None]:
    items: list[AssetRef] = []
    last = None
    for page in source.iter_pages(cursor):
        items.extend(page.items)
        last = page
    assert last is not None and last.complete
    return items, last.cursor


def add_photos(harness: ResourceSpaceHarness, count: int) -> list[str]:
    return [
        harness.add(f"photo-{number}.jpg", path.read_bytes())
        for number, path in enumerate(PHOTOS[:count])
    ]


def landscape_jpeg(long_side: int = 1600) -> bytes:
    with Image.open(PHOTOS[0]) as image:
        rgb = image.convert("RGB")
    if rgb.height > rgb.width:
        rgb = rgb.transpose(Image.Transpose.ROTATE_90)
    scale = long_side / rgb.width
    rgb = rgb.resize((long_side, round(rgb.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=92)
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """A ResourceSpace preview size: scaled to fit its box."""
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return round(size[0] * scale), round(size[1] * scale)


def api_queries(harness: ResourceSpaceHarness, function: str | None = None) -> list[str]:
    return [
        entry.query
        for entry in harness.emulator.requests_for("GET", "/api/")
        if function is None or parse_qs(entry.query).get("function") == [function]
    ]


# -- signing -----------------------------------------------------------------


def test_every_call_is_signed_and_the_private_key_never_travels(
    harness: ResourceSpaceHarness,
) -> None:
    add_photos(harness, 2)
    source = adapter(harness)
    [ref, _], _ = listing(source)
    source.fetch(ref, 384)
    queries = api_queries(harness)
    # do_search, get_resource_path; get_resource_data (deleted resources keep
    # their files), get_resource_all_image_sizes
    assert len(queries) == 4
    for query in queries:
        unsigned, sign = query.rsplit("&sign=", 1)
        assert sign == hashlib.sha256((PRIVATE_KEY + unsigned).encode()).hexdigest()
        assert unsigned.startswith(f"user={USERNAME}&function=")
        assert PRIVATE_KEY not in query


def test_a_wrong_key_is_auth_failed_with_the_servers_words_and_nothing_secret(
    harness: ResourceSpaceHarness,
) -> None:
    add_photos(harness, 1)
    wrong_key = "wrong-private-key-0000"
    with capture_logs() as logs, pytest.raises(AuthFailed) as caught:
        listing(adapter(harness, private_key=wrong_key))
    message = str(caught.value)
    assert "401" in message and "Invalid signature" in message
    [query] = api_queries(harness)
    sign = parse_qs(query)["sign"][0]
    shown = message + repr(logs)
    assert wrong_key not in shown and sign not in shown
    assert "sign=REDACTED" in message


def test_the_emulator_checks_signatures_as_resourcespace_does(
    harness: ResourceSpaceHarness,
) -> None:
    """401 with a bare "Invalid signature" under a JSON content type; `pretty`
    and `authmode` are not part of what was signed."""
    add_photos(harness, 1)
    query = urlencode({"user": USERNAME, "function": "do_search", "search": "", "fetchrows": "0,1"})
    sign = hashlib.sha256((PRIVATE_KEY + query).encode()).hexdigest()
    refused = requests.get(f"{harness.url}api/?{query}&sign={'0' * 64}", timeout=5)
    assert refused.status_code == 401
    assert refused.text == "Invalid signature"
    assert refused.headers["Content-Type"] == "application/json"
    accepted = requests.get(f"{harness.url}api/?{query}&sign={sign}&pretty=true", timeout=5)
    assert accepted.status_code == 200
    assert accepted.json()["total"] == 1 and "\n    " in accepted.text


def test_a_server_with_the_api_turned_off_is_auth_failed(make_harness: MakeHarness) -> None:
    harness = make_harness(enable_remote_apis=False)
    with pytest.raises(AuthFailed, match="API not enabled"):
        listing(adapter(harness))


# -- listing -------------------------------------------------------------------


def test_pages_are_read_newest_first_with_offset_fetchrows_and_one_path_call_each(
    harness: ResourceSpaceHarness,
) -> None:
    ids = add_photos(harness, 5)
    harness.touch(ids[0])
    items, _ = listing(adapter(harness, page_size=2))
    assert [ref.id for ref in items] == [ids[0], ids[4], ids[3], ids[2], ids[1]]
    searches = [parse_qs(query) for query in api_queries(harness, "do_search")]
    assert [search["fetchrows"] for search in searches] == [["0,2"], ["2,2"], ["4,2"]]
    assert all(s["order_by"] == ["modified"] and s["sort"] == ["desc"] for s in searches)
    # Originals' URLs come one call per page, never one per resource.
    assert len(api_queries(harness, "get_resource_path")) == 3
    assert api_queries(harness, "get_resource_all_image_sizes") == []


def test_page_size_is_limited(harness: ResourceSpaceHarness) -> None:
    with pytest.raises(ValidationError):
        ResourceSpaceSettings(**harness.settings(page_size=1001))


def test_refs_point_at_the_view_page_and_the_scrambled_filestore(
    make_harness: MakeHarness,
) -> None:
    # An older installation, without $hide_real_filepath.
    harness = make_harness(hide_real_filepath=False)
    [asset_id] = add_photos(harness, 1)
    [ref], _ = listing(adapter(harness))
    assert ref.url == f"{harness.url}pages/view.php?ref={asset_id}"
    assert ref.original_url is not None
    # One folder per digit of the ref, the last one scrambled (get_resource_path).
    folders = "".join(f"{digit}/" for digit in asset_id[:-1]) + asset_id[-1]
    assert re.search(
        rf"/filestore/{folders}_[0-9a-f]{{15}}/{asset_id}_[0-9a-f]{{15}}\.jpg\?v=\d+$",
        ref.original_url,
    )
    stored = harness.emulator.library.assets[asset_id]
    assert ref.modified == stored.modified.strftime("%Y-%m-%dT%H:%M:%S")
    assert ref.size_bytes == len(PHOTOS[0].read_bytes())
    assert requests.get(ref.url, timeout=5).status_code == 200


def test_download_addresses_are_listed_without_their_one_time_key(
    harness: ResourceSpaceHarness,
) -> None:
    """$hide_real_filepath (new installations): files come from download.php
    with an access key made anew at every call; the listing keeps the address
    without it, so it stays the same, and fetching asks for a fresh key."""
    [asset_id] = add_photos(harness, 1)
    [ref], _ = listing(adapter(harness))
    [again], _ = listing(adapter(harness))
    assert ref.original_url == again.original_url
    assert ref.original_url is not None and "access_key" not in ref.original_url
    assert f"pages/download.php?ref={asset_id}&size=&ext=jpg&" in ref.original_url
    # No key, no file: download.php sends the client to log in.
    refused = requests.get(ref.original_url, timeout=5, allow_redirects=False)
    assert refused.status_code == 302 and "/login.php?url=" in refused.headers["Location"]
    assert adapter(harness).fetch_url(ref.original_url) == PHOTOS[0].read_bytes()
    keyed = [entry.query for entry in harness.emulator.requests_for("GET", "/pages/download.php")]
    # The test's own request first, then the adapter's, with a fresh key.
    assert len(keyed) == 2 and "access_key=" in keyed[1]
    # Downloading an original is logged, which moves `modified`, not the version.
    [after], _ = listing(adapter(harness))
    assert after.modified != ref.modified and after.version == ref.version


def test_a_server_before_10_3_is_unsupported(make_harness: MakeHarness) -> None:
    harness = make_harness(structured_fetchrows=False)
    add_photos(harness, 2)
    with pytest.raises(Unsupported, match=r"10\.3"):
        listing(adapter(harness))


def test_a_server_that_ignores_order_by_modified_is_unsupported(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(order_by_modified=False)
    ids = add_photos(harness, 3)
    harness.touch(ids[0])  # newest by modified, last by relevance (ref descending)
    with pytest.raises(Unsupported, match="order_by=modified"):
        listing(adapter(harness))


def test_an_unknown_function_is_unsupported(harness: ResourceSpaceHarness) -> None:
    with pytest.raises(Unsupported, match="no_such_function"):
        adapter(harness).call("no_such_function")


def test_only_images_are_listed(harness: ResourceSpaceHarness) -> None:
    ids = add_photos(harness, 3)
    harness.emulator.extensions[ids[1]] = "pdf"
    items, _ = listing(adapter(harness))
    assert sorted(ref.id for ref in items) == sorted([ids[0], ids[2]])


def test_a_resource_without_download_access_is_listed_with_a_problem(
    harness: ResourceSpaceHarness,
) -> None:
    ids = add_photos(harness, 2)
    harness.emulator.download_denied.add(ids[1])
    items = {ref.id: ref for ref in listing(adapter(harness))[0]}
    assert items[ids[0]].problem is None
    assert items[ids[1]].original_url is None
    assert "download" in (items[ids[1]].problem or "")


def test_version_follows_the_file_not_metadata_edits(harness: ResourceSpaceHarness) -> None:
    [asset_id] = add_photos(harness, 1)
    [before], _ = listing(adapter(harness))
    assert adapter(harness).call("update_field", resource=asset_id, field=8, value="Uusi") is True
    [edited], _ = listing(adapter(harness))
    assert edited.version == before.version and edited.modified != before.modified
    harness.emulator.library.replace(asset_id, PHOTOS[1].read_bytes())
    [replaced], _ = listing(adapter(harness))
    assert replaced.version != before.version


def test_resources_sharing_the_boundary_second_are_neither_lost_nor_repeated(
    harness: ResourceSpaceHarness,
) -> None:
    ids = add_photos(harness, 4)
    library = harness.emulator.library
    second = library.assets[ids[3]].modified
    for asset_id in ids[1:3]:
        library.assets[asset_id].modified = second
    first, cursor = listing(adapter(harness, page_size=1))
    assert len(first) == 4
    assert cursor is not None and cursor.seen_at_since == frozenset(ids[1:])
    late = harness.add("late.jpg", PHOTOS[5].read_bytes())
    library.assets[late].modified = second  # the same second, after the listing
    changed, cursor = listing(adapter(harness, page_size=1), cursor)
    assert [ref.id for ref in changed] == [late]
    nothing, _ = listing(adapter(harness, page_size=1), cursor)
    assert nothing == []


def test_a_change_during_a_listing_is_caught_by_the_next_listing(
    harness: ResourceSpaceHarness,
) -> None:
    ids = add_photos(harness, 4)
    source = adapter(harness, page_size=2)
    first = source.list_assets(None)
    assert [ref.id for ref in first.items] == [ids[3], ids[2]]
    harness.touch(ids[0])  # jumps ahead of the offset: this listing cannot see it again
    rest, cursor = listing(source, first.cursor)
    # Newest-first offset paging reads one row twice and loses none.
    assert [ref.id for ref in rest] == [ids[2], ids[1]]
    changed, _ = listing(adapter(harness, page_size=2), cursor)
    assert [ref.id for ref in changed] == [ids[0]]


def test_a_cursor_saved_with_string_times_resumes_where_it_was(
    harness: ResourceSpaceHarness,
) -> None:
    """Cursors saved before times were typed held `modified` as the server
    writes it ("YYYY-MM-DD HH:MM:SS"); they load as the same times, so a
    listing resumes exactly and an incremental one starts where it did."""
    ids = add_photos(harness, 5)
    first = adapter(harness, page_size=2).list_assets(None)
    cursor = first.cursor
    assert not first.complete and cursor is not None and cursor.newest is not None
    mysql = "%Y-%m-%d %H:%M:%S"
    saved = {"offset": 2, "modified_since": None, "seen_at_since": []}
    saved |= {"newest": cursor.newest.strftime(mysql), "seen_at_newest": [ids[4]]}
    loaded = ResourceSpaceCursor.model_validate_json(json.dumps(saved))
    assert loaded == cursor
    rest, done = listing(adapter(harness, page_size=2), loaded)
    assert sorted(ref.id for ref in first.items + rest) == sorted(ids)
    assert done is not None and done.modified_since is not None
    saved = {"offset": 0, "modified_since": done.modified_since.strftime(mysql)}
    saved |= {"seen_at_since": [ids[4]], "newest": None, "seen_at_newest": []}
    watermark = ResourceSpaceCursor.model_validate_json(json.dumps(saved))
    assert watermark == done
    nothing, _ = listing(adapter(harness), watermark)
    assert nothing == []
    harness.touch(ids[0])
    [changed], _ = listing(adapter(harness), watermark)
    assert changed.id == ids[0]


def test_an_empty_modified_reads_as_the_earliest_time() -> None:
    """Some resources have no `modified` (NULL, sorted last newest first):
    they read as UNDATED, older than every time, as the empty string that
    cursors saved before times were typed held for them."""
    rows: list[dict[str, Any]] = [
        {"ref": 3, "modified": "2026-01-05 08:00:00"},
        {"ref": 2, "modified": ""},
        {"ref": 1, "modified": None},
    ]
    paginator = ResourceSpacePaginator(None, page_size=5)
    assert [row["ref"] for row in paginator.advance(rows)] == [3, 2, 1]
    assert paginator.finished
    since = datetime(2026, 1, 5, 8, 0, 0)
    assert paginator.cursor == ResourceSpaceCursor(
        modified_since=since, seen_at_since=frozenset({"3"})
    )
    again = ResourceSpacePaginator(paginator.cursor, page_size=5)
    assert again.advance(rows) == [] and again.finished  # stops at the undated rows
    undated = ResourceSpacePaginator(None, page_size=5)
    undated.advance(rows[1:])
    assert undated.cursor.modified_since == UNDATED
    saved = '{"offset": 0, "modified_since": "", "seen_at_since": ["1", "2"], "newest": null}'
    assert ResourceSpaceCursor.model_validate_json(saved) == undated.cursor
    resumed = ResourceSpaceCursor.model_validate_json(undated.cursor.model_dump_json())
    later = ResourceSpacePaginator(resumed, page_size=5)
    assert [row["ref"] for row in later.advance([{"ref": 4, "modified": ""}, *rows[1:]])] == [4]


# -- metadata ------------------------------------------------------------------


def test_fields_outside_the_joins_need_field_data(make_harness: MakeHarness) -> None:
    harness = make_harness(data_joins=())  # a default installation
    harness.emulator.add_field(88, "location", "Location")
    asset_id = harness.add(
        "photo.jpg",
        PHOTOS[0].read_bytes(),
        {"location": "Senaatintori", "date": "2024-05-01", "department": "Kaupunginmuseo"},
    )
    harness.emulator.library.touch(asset_id, **{"88": "Senaatintori, Helsinki"})
    [plain], _ = listing(adapter(harness))
    assert plain.metadata.date == "2024-05-01"
    assert plain.metadata.department is None  # field 10 is not joined by default
    mapping = {"location": "fields.location", "date": "field12", "department": "fields.credit"}
    source = adapter(harness, field_data=True, metadata=mapping)
    [full], _ = listing(source)
    assert full.metadata.location == "Senaatintori, Helsinki"
    assert full.metadata.department == "Kaupunginmuseo"
    assert len(api_queries(harness, "get_resource_field_data")) == 1


def test_full_checksums_give_a_content_hash(make_harness: MakeHarness) -> None:
    harness = make_harness(file_checksums_50k=False)
    [asset_id] = add_photos(harness, 1)
    [default], _ = listing(adapter(harness))
    assert default.content_hash is None  # a 50 kB checksum is not the file's
    [ref], _ = listing(adapter(harness, full_checksums=True))
    data = harness.emulator.library.assets[asset_id].data
    assert ref.content_hash == "md5:" + hashlib.md5(data).hexdigest()


def test_write_back_functions_are_emulated(harness: ResourceSpaceHarness) -> None:
    ids = add_photos(harness, 2)
    source = adapter(harness)
    _, cursor = listing(source)
    assert source.call("update_field", resource=ids[0], field="credit", value="Kaupunginmuseo")
    assert source.call("update_field", resource=ids[0], field="nonexistent", value="x") is False
    assert source.call("update_related_resource", ref=ids[0], related=ids[1]) is True
    assert frozenset(ids) in harness.emulator.related
    [changed], _ = listing(adapter(harness), cursor)
    assert changed.id == ids[0] and changed.metadata.department == "Kaupunginmuseo"


# -- renditions ----------------------------------------------------------------


def test_the_smallest_preview_with_the_short_side_is_fetched(
    harness: ResourceSpaceHarness,
) -> None:
    original = landscape_jpeg()
    harness.add("big.jpg", original)
    source = adapter(harness)
    [ref], _ = listing(source)
    assert ref.renditions == ()  # looked up only when fetching
    assert size_of(source.fetch(ref, 384)) == fit(size_of(original), (900, 540))  # pre
    assert len(api_queries(harness, "get_resource_all_image_sizes")) == 1
    assert size_of(source.fetch(ref, 600)) == fit(size_of(original), (1400, 800))  # scr


def test_a_padded_preview_is_never_fetched(make_harness: MakeHarness) -> None:
    harness = make_harness(padded=("pre",))
    original = landscape_jpeg()
    harness.add("big.jpg", original)
    source = adapter(harness)
    [ref], _ = listing(source)
    sizes = source.call("get_resource_all_image_sizes", resource=ref.id)
    pre = next(size for size in sizes if size["size_code"] == "pre")
    assert (pre["width"], pre["height"]) == (900, 540)
    # scr, not the 900x540 padded pre
    assert size_of(source.fetch(ref, 384)) == fit(size_of(original), (1400, 800))


def test_fetch_works_from_a_ref_rebuilt_from_the_index(harness: ResourceSpaceHarness) -> None:
    original = landscape_jpeg()
    harness.add("big.jpg", original)
    [listed], _ = listing(adapter(harness))
    rebuilt = AssetRef(
        id=listed.id, version=listed.version, url=listed.url, original_url=listed.original_url
    )
    fresh = adapter(harness)
    assert fresh.fetch_original(rebuilt) == original
    assert min(size_of(fresh.fetch(rebuilt, 384))) == 540


def test_a_deleted_resource_is_not_found_before_any_download(
    harness: ResourceSpaceHarness,
) -> None:
    [asset_id] = add_photos(harness, 1)
    [ref], _ = listing(adapter(harness))
    harness.remove(asset_id)
    with pytest.raises(NotFound, match="deleted"):
        adapter(harness).fetch(ref, 384)
    assert harness.emulator.requests_for("GET", "/filestore/") == []
    assert harness.emulator.requests_for("GET", "/pages/download.php") == []


# -- marks -------------------------------------------------------------------


def marked(harness: ResourceSpaceHarness, count: int) -> tuple[ResourceSpace, list[AssetRef]]:
    """`count` resources, listed in the order they were added."""
    ids = add_photos(harness, count)
    source = adapter(harness)
    items, _ = listing(source)
    refs = {ref.id: ref for ref in items}
    return source, [refs[asset_id] for asset_id in ids]


def related(harness: ResourceSpaceHarness, ref: str) -> set[str]:
    """Read back through the API, as any client of this ResourceSpace reads it."""
    return {str(other) for other in harness.api("get_related_resources", ref=ref)}


def field_text(harness: ResourceSpaceHarness, ref: str) -> str:
    fields = harness.api("get_resource_field_data", resource=ref)
    return str(next(field["value"] for field in fields if field["name"] == "damdup"))


def writes(harness: ResourceSpaceHarness) -> list[dict[str, list[str]]]:
    """The write calls the adapter POSTed, as ResourceSpace parses them."""
    return [
        parse_qs(parse_qs(entry.body.decode())["query"][0])
        for entry in harness.emulator.requests_for("POST", "/api/")
    ]


def test_a_duplicate_is_marked_and_related_to_its_canonical(harness: ResourceSpaceHarness) -> None:
    source, [canonical, duplicate, other, person_s] = marked(harness, 4)
    # A person related the duplicate to another resource before damdup came.
    harness.api("update_related_resource", ref=duplicate.id, related=person_s.id)
    harness.set_foreign(duplicate.id)
    foreign = harness.foreign_state(duplicate.id)
    first = Marks(("duplicate",), "dd0123456789", canonical.url)

    assert source.annotate(duplicate, first) is True
    assert harness.stored_marks(duplicate.id) == first
    assert json.loads(field_text(harness, duplicate.id))["related"] == [canonical.id]
    assert related(harness, duplicate.id) == {canonical.id, person_s.id}
    assert related(harness, canonical.id) == {duplicate.id}
    assert [call["function"] for call in writes(harness)] == [
        ["update_field"],
        ["update_related_resource"],
    ]

    # Again: reads only.
    assert harness.proxy is not None
    sent = len(harness.proxy.log)
    assert adapter(harness).annotate(duplicate, first) is False
    assert not any(harness.changing(entry) for entry in harness.proxy.log[sent:])

    # The cluster's canonical moves to another resource: the stale relation
    # goes, the person's stays.
    moved = Marks(("duplicate-candidate",), "ddabcdefabcd", other.url)
    assert source.annotate(duplicate, moved) is True
    assert harness.stored_marks(duplicate.id) == moved
    assert related(harness, duplicate.id) == {other.id, person_s.id}
    assert related(harness, canonical.id) == set()

    assert source.annotate(duplicate, Marks()) is True
    assert field_text(harness, duplicate.id) == ""
    assert source.read_marks(duplicate) == Marks()
    assert related(harness, duplicate.id) == {person_s.id}

    assert harness.foreign_state(duplicate.id) == foreign
    assert harness.emulator.requests_for("DELETE") == []
    functions = {call["function"][0] for call in writes(harness)}
    assert functions == {"update_field", "update_related_resource"}
    assert {call["field"][0] for call in writes(harness) if "field" in call} == {"90"}
    # The adapter's own traffic (the harness's calls bypass the proxy): every
    # GET only reads; the writes were POSTed, so no link or signature is in a URL.
    assert not any(harness.changing(entry) for entry in harness.proxy.requests("GET"))
    assert len(harness.proxy.requests("POST")) == len(writes(harness)) == 9
    # The field records a relation before it is made and forgets it after it
    # is undone, so an interrupted annotate leaves nothing of damdup's unrecorded.
    steps = [(call["function"][0], call.get("add", [""])[0]) for call in writes(harness)]
    assert steps[2:] == [
        ("update_field", ""),  # moved: both relations recorded
        ("update_related_resource", "1"),
        ("update_related_resource", "0"),
        ("update_field", ""),
        ("update_field", ""),  # removed: the last relation still recorded
        ("update_related_resource", "0"),
        ("update_field", ""),
    ]


def test_a_relation_a_person_made_first_is_never_undone(harness: ResourceSpaceHarness) -> None:
    source, [canonical, duplicate] = marked(harness, 2)
    harness.api("update_related_resource", ref=canonical.id, related=duplicate.id)
    marks = Marks(("duplicate",), "dd0123456789", canonical.url)
    assert source.annotate(duplicate, marks) is True
    assert "related" not in json.loads(field_text(harness, duplicate.id))
    assert [call["function"] for call in writes(harness)] == [["update_field"]]
    assert source.annotate(duplicate, Marks()) is True
    assert related(harness, duplicate.id) == {canonical.id}


def test_relating_can_be_turned_off(harness: ResourceSpaceHarness) -> None:
    _, [canonical, duplicate] = marked(harness, 2)
    source = adapter(harness, relate_duplicates=False)
    assert source.annotate(duplicate, Marks(("duplicate",), "dd0123456789", canonical.url))
    assert related(harness, duplicate.id) == set()
    assert [call["function"] for call in writes(harness)] == [["update_field"]]


def test_a_relation_refused_midway_is_finished_by_the_next_annotate(
    harness: ResourceSpaceHarness,
) -> None:
    source, [canonical, duplicate] = marked(harness, 2)
    marks = Marks(("duplicate",), "dd0123456789", canonical.url)
    harness.emulator.enable_related_resources = False
    with pytest.raises(Unsupported, match="relate_duplicates"):
        source.annotate(duplicate, marks)
    # The intent was recorded before the relation was asked for.
    assert json.loads(field_text(harness, duplicate.id))["related"] == [canonical.id]
    harness.emulator.enable_related_resources = True
    assert source.annotate(duplicate, marks) is True
    assert related(harness, duplicate.id) == {canonical.id}
    assert source.annotate(duplicate, marks) is False


def test_a_read_only_user_is_auth_failed_and_changes_nothing(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(
        users={USERNAME: PRIVATE_KEY, "lukija": "lukijan-avain"}, read_only_users=("lukija",)
    )
    ids = add_photos(harness, 2)
    reader = adapter(harness, username="lukija", private_key="lukijan-avain")
    items, _ = listing(reader)  # reading is allowed
    canonical, duplicate = sorted(items, key=lambda ref: ids.index(ref.id))
    with pytest.raises(AuthFailed, match=r"may not edit resource.*credentials"):
        reader.annotate(duplicate, Marks(("duplicate",), "dd0123456789", canonical.url))
    assert harness.stored_marks(duplicate.id) == Marks()
    assert harness.emulator.related == set()


def test_a_missing_field_is_a_clear_error(harness: ResourceSpaceHarness) -> None:
    _, [ref] = marked(harness, 1)
    with pytest.raises(Unsupported, match=r"no field 'duplikaatit'.*marks_field"):
        adapter(harness, marks_field="duplikaatit").read_marks(ref)
    by_ref = adapter(harness, marks_field="90")
    assert by_ref.annotate(ref, Marks(("canonical",), "dd0123456789")) is True
    assert adapter(harness).read_marks(ref) == Marks(("canonical",), "dd0123456789")
    with pytest.raises(ValidationError):
        ResourceSpaceSettings(
            base_url=harness.url, username="u", private_key="k", marks_field="a b"
        )


def test_a_link_resourcespace_would_read_as_translations_round_trips(
    harness: ResourceSpaceHarness,
) -> None:
    """ResourceSpace answers "~en:…" values in the user's language; the
    marks' "~" are escaped so the link comes back exactly."""
    source, [ref] = marked(harness, 1)
    marks = Marks(("duplicate",), "dd0123456789", "https://kuvat.hel.fi/~en:a,b~fi:c")
    assert source.annotate(ref, marks) is True
    assert "~" not in field_text(harness, ref.id)
    assert adapter(harness).read_marks(ref) == marks
    assert source.annotate(ref, marks) is False


def test_function_calls_that_change_something_are_told_apart(
    harness: ResourceSpaceHarness,
) -> None:
    def get(query: str) -> Forwarded:
        return Forwarded("GET", f"/api/?{query}", 200, None, 0)

    assert not harness.changing(get("user=u&function=do_search&sign=x"))
    assert not harness.changing(get("user=u&function=get_related_resources&ref=1"))
    assert harness.changing(get("user=u&function=update_field&resource=1&field=90&value="))
    assert harness.changing(get("user=u&function=delete_resource&resource=1"))
    assert harness.changing(Forwarded("POST", "/api/", 200, None, 0))
    assert not harness.changing(Forwarded("GET", "/filestore/1_abc/1_abc.jpg", 200, None, 0))


def test_without_its_source_the_real_server_skips_saying_where_it_goes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from tests.servers import resourcespace_real

    monkeypatch.setattr(resourcespace_real, "platform_sources", lambda: [tmp_path])
    reason = resourcespace_real.skip_reason()
    assert reason is not None
    assert "resourcespace-<commit>.tar.gz" in reason and "shared/platforms" in reason
    assert str(tmp_path) in reason and "DAMDUP_PLATFORMS_DIR" in reason
    with pytest.raises(pytest.skip.Exception, match="shared/platforms"):
        resourcespace_real.ResourceSpaceRealHarness()


@pytest.mark.parametrize("variable", ["DAMDUP_PLATFORMS_DIR", "DAMDUP_PLATFORM_SOURCES"])
def test_one_setting_moves_both_real_platforms_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, variable: str
) -> None:
    """Either name, set, is the only place both real servers' tests look
    (so a folder without the snapshots makes them skip, as on a machine
    without them), and Linked Events' skip says where its source goes."""
    from tests.servers import linked_events_real, resourcespace_real

    for name in ("DAMDUP_PLATFORMS_DIR", "DAMDUP_PLATFORM_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path))
    assert resourcespace_real.platform_sources() == [tmp_path]
    assert resourcespace_real.resourcespace_tarball() is None
    assert linked_events_real.platforms_dir() == tmp_path
    assert linked_events_real.source_tarball() is None
    with pytest.raises(pytest.skip.Exception, match=r"linkedevents-<commit>\.tar\.gz") as skipped:
        linked_events_real.start_server()
    assert str(tmp_path) in str(skipped.value) and "DAMDUP_PLATFORMS_DIR" in str(skipped.value)
    (tmp_path / "resourcespace-0000000.tar.gz").write_bytes(b"")
    (tmp_path / "linkedevents-0000000.tar.gz").write_bytes(b"")
    assert resourcespace_real.resourcespace_tarball() == tmp_path / "resourcespace-0000000.tar.gz"
    assert linked_events_real.source_tarball() == tmp_path / "linkedevents-0000000.tar.gz"
