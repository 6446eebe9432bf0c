"""Drupal JSON:API behaviour the contract suite does not reach: the 50-item
page cap, basic_auth's silent fall-back to anonymous, omitted and unpublished
media, keyset paging through deletions, timestamps in filters, Consumer Image
Styles links and their sizes, itok, files on another host; marks written by a
PATCH of one field, and the ways a site refuses it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image
from pydantic import ValidationError

from adapters.base import AssetRef, AuthFailed, BadAsset, Marks, NotFound, Unsupported
from adapters.drupal import Drupal, DrupalCursor, DrupalSettings, scale_dimensions
from adapters.http import HttpError
from tests.servers.common import photo_paths
from tests.servers.drupal import STYLE_BOXES, STYLES, DrupalEmulator
from tests.servers.faults import FaultProxy

PHOTO = photo_paths(variant="original")[0]  # 640 x 427
USER, PASSWORD = "damdup-reader", "fake-password-for-tests"
EDITOR, EDITOR_PASSWORD = "damdup-editor", "fake-editor-password-for-tests"
MARKS = "field_damdup_marks"


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
    assert f"%5Bvalue%5D={cursor.since}&" in sent[-1]
    assert str(cursor.since).isdigit()
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


def test_a_cursor_saved_before_the_watermark_was_shared_resumes(start: Any) -> None:
    """Cursors saved before adapters.watermark named `since` `changed_since`;
    they load as the same cursors, mid-listing and at a listing's end."""
    emulator = start()
    ids = add(emulator, 5)
    first = adapter(emulator, page_size=2).list_assets(None)
    cursor = first.cursor
    assert not first.complete and cursor is not None and cursor.watermark is not None
    saved = {"changed_since": 0, "skip_ids": [], "watermark": cursor.watermark}
    saved |= {"boundary": sorted(cursor.boundary), "after_mid": cursor.after_mid, "offset": 0}
    loaded = DrupalCursor.model_validate_json(json.dumps(saved))
    assert loaded == cursor
    rest, done = listing(adapter(emulator, page_size=2), loaded)
    assert mids(first.items + rest) == ids
    saved = {"changed_since": done.since, "skip_ids": sorted(done.skip_ids), "watermark": None}
    saved |= {"boundary": [], "after_mid": 0, "offset": 0}
    watermark = DrupalCursor.model_validate_json(json.dumps(saved))
    assert watermark == done
    nothing, _ = listing(adapter(emulator), watermark)
    assert nothing == []
    emulator.library.touch(ids[1], field_photographer="Maija Meikäläinen")
    changed, _ = listing(adapter(emulator), watermark)
    assert mids(changed) == [ids[1]]


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


# -- marks -------------------------------------------------------------------


def writable(start: Any, **options: Any) -> DrupalEmulator:
    """A site that accepts JSON:API writes, its media type with damdup's field,
    a reader and an editor."""
    options.setdefault("write_enabled", True)
    emulator: DrupalEmulator = start(
        users={USER: PASSWORD, EDITOR: EDITOR_PASSWORD},
        editors={EDITOR},
        fields=("field_photographer", MARKS),
        **options,
    )
    return emulator


def editor(emulator: DrupalEmulator, **overrides: Any) -> Drupal:
    return adapter(emulator, username=EDITOR, password=EDITOR_PASSWORD, **overrides)


def shown(emulator: DrupalEmulator, media_id: str) -> dict[str, Any]:
    """The media item's attributes, read as any JSON:API client reads them."""
    reply = requests.get(
        f"{emulator.base_url}jsonapi/media/image/{media_id}",
        auth=(EDITOR, EDITOR_PASSWORD),
        timeout=10,
    )
    reply.raise_for_status()
    attributes: dict[str, Any] = reply.json()["data"]["attributes"]
    return attributes


def patches(emulator: DrupalEmulator) -> list[dict[str, Any]]:
    return [json.loads(entry.body) for entry in emulator.requests_for("PATCH")]


def test_marks_are_one_field_patched_only_when_they_change(start: Any) -> None:
    emulator = writable(start)
    [mid, other] = add(emulator, 2, field_photographer="Sakari Kiuru")
    drupal = editor(emulator)
    before, _ = listing(drupal)
    ref = next(item for item in before if item.url.endswith(f"/media/{mid}/edit"))
    first = Marks(("duplicate",), "dd0123456789", "https://www.hel.fi/kuvat/a b.jpg?x=1&y=ä#z")

    assert drupal.annotate(ref, first) is True
    [patch] = patches(emulator)
    assert patch == {
        "data": {"type": "media--image", "id": ref.id, "attributes": {MARKS: first.to_json()}}
    }
    assert emulator.requests_for("PATCH")[0].headers["Content-Type"] == "application/vnd.api+json"
    stored = shown(emulator, ref.id)
    assert Marks.from_json(stored[MARKS]) == first
    assert stored["field_photographer"] == "Sakari Kiuru"

    # Again: one read of the field, nothing sent.
    assert editor(emulator).annotate(ref, first) is False
    assert len(patches(emulator)) == 1
    read = emulator.requests_for("GET", f"/jsonapi/media/image/{ref.id}")[-1]
    assert read.query == f"fields%5Bmedia--image%5D={MARKS}"

    # Another cluster: the stale marks are replaced, then removed altogether.
    moved = Marks(("duplicate-candidate",), "ddabcdefabcd", "https://www.hel.fi/b.jpg")
    assert drupal.annotate(ref, moved) is True
    assert Marks.from_json(shown(emulator, ref.id)[MARKS]) == moved
    assert drupal.annotate(ref, Marks()) is True
    assert shown(emulator, ref.id)[MARKS] is None
    assert drupal.read_marks(ref) == Marks()

    assert [list(p["data"]["attributes"]) for p in patches(emulator)] == [[MARKS]] * 3
    assert emulator.requests_for("DELETE") == []
    assert shown(emulator, ref.id)["field_photographer"] == "Sakari Kiuru"
    untouched = emulator.library.assets[other]
    assert MARKS not in untouched.metadata and untouched.modified == untouched.created
    # Drupal moved `changed` on each save; the version follows the file.
    after, _ = listing(drupal)
    assert {item.id: item.version for item in after} == {item.id: item.version for item in before}
    assert next(item for item in after if item.id == ref.id).modified != ref.modified


def test_marks_need_an_account_and_a_site_that_accept_writes(start: Any) -> None:
    emulator = writable(start, write_enabled=False)
    add(emulator, 1)
    [ref], _ = listing(editor(emulator))
    marks = Marks(("canonical",), "dd0123456789")
    before = len(emulator.log)
    with pytest.raises(AuthFailed, match="username and password"):
        adapter(emulator).annotate(ref, marks)
    assert len(emulator.log) == before  # refused before asking anything
    with pytest.raises(AuthFailed, match="admin/config/services/jsonapi"):
        editor(emulator).annotate(ref, marks)
    emulator.write_enabled = True
    with pytest.raises(AuthFailed, match=r"edit any image media.*image: Edit any media"):
        adapter(emulator, username=USER, password=PASSWORD).annotate(ref, marks)
    assert MARKS not in emulator.library.assets[str(mids([ref])[0])].metadata
    assert editor(emulator).annotate(ref, marks) is True


def test_a_media_type_without_the_field_is_a_clear_error(start: Any) -> None:
    emulator = writable(start)
    add(emulator, 1)
    [ref], _ = listing(editor(emulator))
    with pytest.raises(Unsupported, match=r"no field field_duplicates.*Text \(plain, long\)"):
        editor(emulator, marks_field="field_duplicates").annotate(ref, Marks(("related",)))
    assert emulator.requests_for("PATCH") == []
    with pytest.raises(ValidationError):
        DrupalSettings(base_url="https://www.hel.fi/", marks_field="field-with-dash")


def test_marks_of_a_removed_media_item_are_not_found(start: Any) -> None:
    emulator = writable(start)
    [mid] = add(emulator, 1)
    [ref], _ = listing(editor(emulator))
    emulator.library.remove(mid)
    with pytest.raises(NotFound):
        editor(emulator).read_marks(ref)
    with pytest.raises(NotFound):
        editor(emulator).annotate(ref, Marks(("duplicate",), "dd0123456789"))
    assert emulator.requests_for("PATCH") == []


def test_text_that_is_not_damdups_json_is_written_over(start: Any) -> None:
    emulator = writable(start)
    [mid] = add(emulator, 1, **{MARKS: "kopio, katso kuva 12"})
    [ref], _ = listing(editor(emulator))
    assert editor(emulator).read_marks(ref) == Marks()
    assert editor(emulator).annotate(ref, Marks()) is True
    assert emulator.library.assets[mid].metadata[MARKS] is None


def test_the_emulated_patch_refuses_as_drupal_does(start: Any) -> None:
    emulator = writable(start)
    add(emulator, 1)
    [ref], _ = listing(editor(emulator))
    url = f"{emulator.base_url}jsonapi/media/image/{ref.id}"

    def send(attributes: dict[str, Any], **changes: Any) -> requests.Response:
        data = {"type": "media--image", "id": ref.id, "attributes": attributes, **changes}
        return requests.patch(
            url,
            data=json.dumps({"data": data}),
            headers={"Content-Type": "application/vnd.api+json"},
            auth=(EDITOR, EDITOR_PASSWORD),
            timeout=10,
        )

    def detail(reply: requests.Response) -> str:
        return str(reply.json()["errors"][0]["detail"])

    wrong_type = requests.patch(url, json={"data": {}}, auth=(EDITOR, EDITOR_PASSWORD), timeout=10)
    assert wrong_type.status_code == 415
    assert send({}, type="node--article").status_code == 409
    mismatch = send({}, id="00000000-0000-0000-0000-000000000000")
    assert mismatch.status_code == 400 and "does not match the ID" in detail(mismatch)
    unknown = send({"field_nope": "x"})
    assert unknown.status_code == 422 and "does not exist" in detail(unknown)
    locked = send({"drupal_internal__mid": 999})
    assert locked.status_code == 403 and "(drupal_internal__mid)" in detail(locked)
    same = shown(emulator, ref.id)["drupal_internal__mid"]
    assert send({"drupal_internal__mid": same}).status_code == 200  # unchanged: allowed
    assert send({MARKS: ["not", "text"]}).status_code == 422
    anonymous = requests.patch(
        url, data="{}", headers={"Content-Type": "application/vnd.api+json"}, timeout=10
    )
    assert anonymous.status_code == 401
    changed = shown(emulator, ref.id)["changed"]
    assert send({MARKS: None}).status_code == 200  # nothing changed, nothing saved
    assert shown(emulator, ref.id)["changed"] == changed
