"""The CKAN adapter against the CKAN emulator behind the fault proxy: what the
contract suite cannot say about CKAN in particular (datasets holding several
resources, keyset paging in Solr's order, resource-level change times, the
token CKAN silently ignores, hri.fi's metadata, marks as resource keys written
with resource_patch)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from PIL import Image
from pydantic import ValidationError

from adapters.base import AssetRef, AuthFailed, Marks, MetadataMapping, NotFound, Unavailable
from adapters.ckan import Ckan, CkanCursor, CkanPaginator, CkanSettings
from adapters.http import HttpError
from tests.servers.ckan import (
    DAMDUP_TOKEN,
    EDITOR_TOKEN,
    SYSADMIN_TOKEN,
    CkanEmulator,
    CkanHarness,
)
from tests.servers.common import Clock, Library, photo_paths

PHOTOS = photo_paths(variant="original")
SEARCH = "/api/3/action/package_search"


@pytest.fixture(scope="module")
def server() -> Iterator[CkanHarness]:
    harness = CkanHarness()
    yield harness
    harness.close()


@pytest.fixture
def ckan(server: CkanHarness) -> CkanHarness:
    server.reset()
    server.emulator.log.clear()
    return server


def adapter(ckan: CkanHarness, **overrides: Any) -> Ckan:
    """Anonymous unless a token is given, as hri.fi is read (the harness's
    own unit carries the token that writes marks)."""
    overrides.setdefault("api_token", None)
    made = ckan.adapter(**overrides)
    assert isinstance(made, Ckan)
    return made


def listing(made: Ckan, cursor: CkanCursor | None = None) -> tuple[list[AssetRef], CkanCursor]:
    items: list[AssetRef] = []
    last = None
    for page in made.iter_pages(cursor):
        items += page.items
        last = page
    assert last is not None and last.complete and last.cursor is not None
    return items, last.cursor


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def searches(emulator: CkanEmulator) -> list[dict[str, list[str]]]:
    return [parse_qs(entry.query) for entry in emulator.requests_for("GET", SEARCH)]


# -- paging ----------------------------------------------------------------------


def test_search_pages_by_keyset_in_solr_order(ckan: CkanHarness) -> None:
    ids = [ckan.add(f"kuva-{n}.jpg", PHOTOS[n].read_bytes()) for n in range(5)]
    items, _ = listing(adapter(ckan, page_size=2))
    assert sorted(ref.id for ref in items) == sorted(ids)
    asked = searches(ckan.emulator)
    assert len(asked) == 3
    assert all(query["sort"] == ["metadata_modified asc, id asc"] for query in asked)
    assert all(query["rows"] == ["2"] for query in asked)
    assert all("start" not in query for query in asked), "offsets skip datasets edited meanwhile"
    assert "fq" not in asked[0]
    # The second page starts after the second dataset, by time and then id.
    second = ckan.emulator.datasets[ckan.emulator.owner[ids[1]]]
    assert f'id:{{"{second.id}" TO *]' in asked[1]["fq"][0]


def test_page_size_is_capped_at_ckan_rows_max(ckan: CkanHarness) -> None:
    assert CkanSettings(base_url=ckan.url).page_size == 1000
    with pytest.raises(ValidationError, match="1000"):
        CkanSettings(base_url=ckan.url, page_size=1001)


def test_datasets_edited_mid_listing_are_not_skipped(ckan: CkanHarness) -> None:
    ids = [ckan.add(f"kuva-{n}.png", png((40 * n, 90, 120))) for n in range(6)]
    made = adapter(ckan, page_size=2)
    first = made.list_assets(None)
    assert [ref.id for ref in first.items] == ids[:2]
    # Editing a dataset already listed moves it to the end of the order: with
    # `start` offsets the third dataset would slide onto the page just read.
    ckan.touch(ids[0])
    rest, _ = listing(made, first.cursor)
    assert set(ids) <= {ref.id for ref in first.items + rest}
    assert ids[2] in {ref.id for ref in rest}


def test_datasets_modified_in_the_same_millisecond_are_paged_by_id() -> None:
    class StoppedClock(Clock):
        def tick(self, seconds: float = 1.0) -> datetime:
            return self.now()  # a harvest saving many datasets at one instant

    emulator = CkanEmulator(Library(StoppedClock()))
    emulator.start()
    try:
        ids = []
        for n in range(5):
            dataset = emulator.add_dataset(f"Kuva {n}", "Kaupunginmuseo")
            ids.append(emulator.add_image(dataset.id, f"{n}.png", png((n * 50, 0, 0))).id)
        made = Ckan(CkanSettings(base_url=emulator.base_url, page_size=2))
        pages = list(made.iter_pages())
        listed = [ref.id for page in pages for ref in page.items]
        assert sorted(listed) == sorted(ids) and len(listed) == len(set(listed))
        assert len(pages) == 3
    finally:
        emulator.stop()


def test_a_cursor_saved_with_string_times_resumes_where_it_was(ckan: CkanHarness) -> None:
    """Cursors saved before times were typed kept them as fixed-width UTC
    strings; they load as the same times, so a listing resumes exactly."""
    ids = [ckan.add(f"kuva-{n}.png", png((40 * n, 90, 120))) for n in range(5)]
    made = adapter(ckan, page_size=2)
    first = made.list_assets(None)
    assert not first.complete and first.cursor is not None
    cursor = first.cursor
    assert cursor.newest is not None and cursor.after_modified is not None
    assert cursor.newest.utcoffset() == timedelta(0)
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    saved = json.dumps(
        {
            "since": None,
            "seen": {key: value.strftime(stamp) for key, value in cursor.seen.items()},
            "after_modified": cursor.after_modified.strftime(stamp)[:23] + "Z",
            "after_id": cursor.after_id,
            "newest": cursor.newest.strftime(stamp),
        }
    )
    loaded = CkanCursor.model_validate_json(saved)
    assert loaded == cursor.model_copy(update={"started": None})  # old cursors had no start
    rest, _ = listing(adapter(ckan, page_size=2), loaded)
    assert sorted(ref.id for ref in first.items + rest) == sorted(ids)


def test_a_search_that_ignores_the_keyset_stops_instead_of_looping() -> None:
    modified = "2026-01-05T08:00:00.123456"
    packages = [{"id": f"d{n}", "metadata_modified": modified, "resources": []} for n in range(2)]
    paginator = CkanPaginator(None, rows=2, overlap=timedelta(0))
    assert paginator.advance(packages, count=5) == [] and not paginator.finished
    assert paginator.cursor.after_id == "d1"
    assert paginator.cursor.after_modified == datetime(2026, 1, 5, 8, 0, 0, 123000, tzinfo=UTC)
    assert "2026-01-05T08:00:00.123Z" in paginator.clauses()[0]
    with pytest.raises(Unavailable, match="same page again"):
        paginator.advance(packages, count=5)


# -- what counts as an asset ------------------------------------------------------------


def test_only_image_resources_are_listed(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    dataset = emulator.add_dataset("Kaupunkikuvia", "Kaupunginmuseo")
    jpeg = emulator.add_image(dataset.id, "tori.jpg", PHOTOS[0].read_bytes())
    # Mimetype missing: the format label tells; both missing: the file name.
    by_format = emulator.add_image(
        dataset.id, "puisto", png((0, 120, 0)), {"mimetype": None, "format": "png"}
    )
    by_name = emulator.add_image(
        dataset.id, "katu.png", png((0, 0, 120)), {"mimetype": None, "format": ""}
    )
    emulator.add_file(dataset.id, "kuvaluettelo.csv", "CSV", "text/csv")
    emulator.add_file(dataset.id, "selostus.pdf", "PDF", "application/pdf")
    emulator.add_file(dataset.id, "rajapinta", "API", None, url="https://api.hel.fi/kuvat/")
    items, _ = listing(adapter(ckan))
    assert sorted(ref.id for ref in items) == sorted([jpeg.id, by_format.id, by_name.id])


def test_each_image_of_a_dataset_is_an_asset_with_the_dataset_metadata(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    dataset = emulator.add_dataset(
        "Senaatintori 1960-luvulla",
        "Helsingin kaupunginmuseo",
        extras={"geographic_coverage": "Kruununhaka", "date_released": "2024-05-01"},
    )
    ids = [
        emulator.add_image(dataset.id, f"senaatintori-{n}.jpg", PHOTOS[n].read_bytes()).id
        for n in range(3)
    ]
    items, _ = listing(adapter(ckan))
    assert [ref.id for ref in items] == ids  # in the dataset's resource order
    for ref in items:
        assert ref.metadata.location == "Kruununhaka"
        assert ref.metadata.date == "2024-05-01"
        assert ref.metadata.department == "Helsingin kaupunginmuseo"
        assert ref.url == f"{ckan.url}dataset/{dataset.name}/resource/{ref.id}"
        assert ref.original_url is not None and "/download/senaatintori-" in ref.original_url


def test_mapping_reads_scheming_fields_and_resource_keys(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    # ckanext-scheming puts custom fields at the top level instead of `extras`.
    dataset = emulator.add_dataset(
        "Kallion kadut", "Kaupunkiympäristön toimiala", fields={"geographic_coverage": "Kallio"}
    )
    emulator.add_image(
        dataset.id, "kuva.jpg", PHOTOS[0].read_bytes(), {"kuvauspaikka": "Fleminginkatu 1"}
    )
    [ref], _ = listing(adapter(ckan))
    assert ref.metadata.location == "Kallio"
    assert ref.metadata.department == "Kaupunkiympäristön toimiala"
    assert ref.metadata.date is None
    mapping = MetadataMapping(location="kuvauspaikka", date="created", department="=Kymp")
    [ref], _ = listing(adapter(ckan, metadata=mapping))
    assert ref.metadata.location == "Fleminginkatu 1"
    assert ref.metadata.date is not None and ref.metadata.date.startswith("2026-01-05")
    assert ref.metadata.department == "Kymp"


def test_image_linked_from_another_host_is_reported_not_fetched(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    dataset = emulator.add_dataset("Linkitetyt", "Kaupunginmuseo")
    emulator.add_image(
        dataset.id,
        "linkki.jpg",
        PHOTOS[0].read_bytes(),
        {"url": "https://kuvat.example.org/linkki.jpg", "url_type": ""},
    )
    [ref], _ = listing(adapter(ckan))
    assert ref.problem is not None and "file_hosts" in ref.problem
    assert ref.original_url == "https://kuvat.example.org/linkki.jpg"
    [ref], _ = listing(adapter(ckan, file_hosts=["kuvat.example.org"]))
    assert ref.problem is None


# -- incremental listing ------------------------------------------------------------------


def test_incremental_lists_only_resources_that_changed_themselves(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    first = emulator.add_dataset("Kaksi kuvaa", "Kaupunginmuseo")
    one = emulator.add_image(first.id, "1.png", png((200, 0, 0)), {"description": "yksi"})
    two = emulator.add_image(first.id, "2.png", png((0, 200, 0)))
    other = emulator.add_dataset("Toinen", "Kaupunginmuseo")
    three = emulator.add_image(other.id, "3.png", png((0, 0, 200)))
    _, watermark = listing(adapter(ckan))
    # Without an overlap window only the change times tell: the cursor keeps
    # just what sits at the watermark itself.
    _, exact = listing(adapter(ckan, incremental_overlap_s=0))
    assert exact.seen == {three.id: exact.since}
    # Each of these bumps the dataset's metadata_modified: only the last
    # changes a resource.
    emulator.add_file(first.id, "luettelo.csv", "CSV", "text/csv")
    assert not emulator.patch_resource(one.id, {"description": "yksi"})
    assert emulator.patch_resource(two.id, {"description": "kaksi"})
    changed, _ = listing(adapter(ckan), watermark)
    assert [ref.id for ref in changed] == [two.id]
    # The search itself asked only for datasets modified since the watermark.
    assert "+metadata_modified:[" in searches(emulator)[-1]["fq"][0]
    changed, _ = listing(adapter(ckan, incremental_overlap_s=0), exact)
    assert [ref.id for ref in changed] == [two.id]


def test_a_change_saved_out_of_order_is_caught_by_the_overlap(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    ckan.add("vanha.png", png((10, 10, 10)))
    _, watermark = listing(adapter(ckan))
    # A transaction that took its time before another committed after it: its
    # dataset and resource carry a time older than the watermark.
    dataset = emulator.add_dataset("Myöhässä", "Kaupunginmuseo")
    late = emulator.add_image(dataset.id, "myohassa.png", png((90, 90, 90)))
    assert watermark.since is not None and watermark.since.utcoffset() == timedelta(0)
    earlier = watermark.since - timedelta(seconds=60)
    with emulator.library.lock:
        late.created = late.modified = earlier
        emulator.file_modified[late.id] = earlier
        emulator.set_modified(dataset.id, earlier)
    missed, _ = listing(adapter(ckan, incremental_overlap_s=0), watermark)
    assert missed == []
    caught, again = listing(adapter(ckan), watermark)
    assert [ref.id for ref in caught] == [late.id]
    assert listing(adapter(ckan), again)[0] == [], "handed out once, not at every sync"


def test_version_ignores_edits_but_follows_new_uploads(ckan: CkanHarness) -> None:
    asset_id = ckan.add("kuva.png", png((1, 2, 3)))
    made = adapter(ckan)
    [before], _ = listing(made)
    ckan.touch(asset_id)
    [edited], _ = listing(made)
    assert edited.version == before.version and edited.modified != before.modified
    replacement = png((200, 100, 0), (80, 60))
    ckan.emulator.replace_image(asset_id, replacement)
    [uploaded], _ = listing(made)
    assert uploaded.version != before.version
    assert made.fetch_original(uploaded) == replacement


def test_deleted_dataset_leaves_only_the_full_listing(ckan: CkanHarness) -> None:
    kept = ckan.add("jaa.png", png((5, 5, 5)))
    gone = ckan.add("poistuu.png", png((250, 5, 5)))
    made = adapter(ckan)
    before, watermark = listing(made)
    ckan.emulator.delete_dataset(ckan.emulator.owner[gone])
    with pytest.raises(NotFound):
        made.fetch_original(next(ref for ref in before if ref.id == gone))
    pages = list(made.iter_pages(watermark))
    assert [ref for page in pages for ref in page.items] == []
    assert all(page.deleted == [] for page in pages), "CKAN reports no deletions"
    assert not made.capabilities.deletions
    assert [ref.id for ref in listing(made)[0]] == [kept]


# -- fetching ----------------------------------------------------------------------------


def test_fetch_needs_only_the_original_url(ckan: CkanHarness) -> None:
    original = PHOTOS[1].read_bytes()
    ckan.add("kuva.jpg", original)
    [ref], _ = listing(adapter(ckan))
    rebuilt = AssetRef(id=ref.id, version=ref.version, url=ref.url, original_url=ref.original_url)
    assert adapter(ckan).fetch_original(rebuilt) == original
    # No renditions: whatever the minimum, the original.
    assert adapter(ckan).fetch(replace(ref), 384) == original


def test_content_hash_comes_from_a_hex_hash(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    dataset = emulator.add_dataset("Tiivisteet", "Kaupunginmuseo")
    digest = "0f343b0931126a20f133d67c2b018a3b"
    hashed = emulator.add_image(dataset.id, "a.png", png((1, 1, 1)), {"hash": digest.upper()})
    emulator.add_image(dataset.id, "b.png", png((2, 2, 2)))
    refs = {ref.id: ref for ref in listing(adapter(ckan))[0]}
    assert refs.pop(hashed.id).content_hash == f"md5:{digest}"
    assert [ref.content_hash for ref in refs.values()] == [None]  # CKAN leaves it empty


# -- credentials ---------------------------------------------------------------------------


def test_unknown_token_stops_before_anything_is_listed(ckan: CkanHarness) -> None:
    ckan.add("kuva.png", png((9, 9, 9)))
    with pytest.raises(AuthFailed, match="api_token"):
        listing(adapter(ckan, api_token="ckan-test-revoked-token-0000"))
    # CKAN would have answered the search anonymously, without the private datasets.
    assert ckan.emulator.requests_for("GET", SEARCH) == []


def test_token_lists_the_private_datasets_of_its_organizations(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    public = ckan.add("julkinen.png", png((0, 50, 0)))
    museum = emulator.add_organization("Kaupunginmuseo")
    emulator.add_user("toimittaja", EDITOR_TOKEN, memberships={museum.name: "editor"})
    hidden = emulator.add_dataset("Luonnos", museum.title, private=True)
    secret = emulator.add_image(hidden.id, "luonnos.png", png((50, 0, 0)))
    anonymous, _ = listing(adapter(ckan))
    assert [ref.id for ref in anonymous] == [public]
    made = adapter(ckan, api_token=EDITOR_TOKEN)
    items, _ = listing(made)
    assert sorted(ref.id for ref in items) == sorted([public, secret.id])
    [search] = [e for e in emulator.log if e.path == SEARCH][-1:]
    assert search.headers["Authorization"] == EDITOR_TOKEN  # the bare token, no "Bearer"
    assert parse_qs(search.query)["include_private"] == ["true"]
    private_ref = next(ref for ref in items if ref.id == secret.id)
    assert made.fetch_original(private_ref) == secret.data
    with pytest.raises(AuthFailed):
        adapter(ckan).fetch_original(private_ref)


# -- errors ---------------------------------------------------------------------------------


def test_refused_filter_names_the_setting(ckan: CkanHarness) -> None:
    ckan.add("kuva.png", png((3, 3, 3)))
    with pytest.raises(HttpError, match="filter_query") as caught:
        listing(adapter(ckan, filter_query="tags:(valokuvat"))
    assert caught.value.status == 409 and "Search error" in str(caught.value)


def test_organization_and_filter_query_narrow_the_search(ckan: CkanHarness) -> None:
    emulator = ckan.emulator
    photos = emulator.add_dataset("Valokuvia", "Kaupunginmuseo", tags=["valokuvat"])
    wanted = emulator.add_image(photos.id, "a.png", png((1, 100, 1)))
    plain = emulator.add_dataset("Muuta", "Kaupunginmuseo")
    emulator.add_image(plain.id, "b.png", png((1, 1, 100)))
    elsewhere = emulator.add_dataset("Kartat", "Kaupunkimittauspalvelut", tags=["valokuvat"])
    emulator.add_image(elsewhere.id, "c.png", png((100, 1, 1)))
    items, _ = listing(adapter(ckan, organization="kaupunginmuseo", filter_query="tags:valokuvat"))
    assert [ref.id for ref in items] == [wanted.id]
    with pytest.raises(ValidationError):
        CkanSettings(base_url=ckan.url, organization="Kaupungin museo")


def test_emulator_answers_errors_in_ckans_shapes(ckan: CkanHarness) -> None:
    base = ckan.emulator.base_url + "api/3/action/"
    refused = requests.get(base + "package_search", params={"rows": "-1"}, timeout=10)
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "__type": "Validation Error",
        "rows": ["Must be a natural number"],
    }
    unknown = requests.get(base + "package_search", params={"page": "2"}, timeout=10)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["__type"] == "Search Query Error"
    assert requests.get(base + "no_such_action", timeout=10).status_code == 400
    post_only = requests.get(base + "resource_patch", params={"id": "x"}, timeout=10)
    assert post_only.status_code == 400 and "POST" in post_only.json()


def test_resource_patch_keeps_the_keys_it_is_not_given(ckan: CkanHarness) -> None:
    """The later write-back stores damdup's marks with resource_patch."""
    asset_id = ckan.add("kuva.png", png((7, 70, 7)))
    base = ckan.emulator.base_url + "api/3/action/"
    shown = requests.get(base + "resource_show", params={"id": asset_id}, timeout=10).json()
    before = shown["result"]
    anonymous = requests.post(
        base + "resource_patch", json={"id": asset_id, "damdup": "duplicate"}, timeout=10
    )
    assert anonymous.status_code == 403
    assert anonymous.json()["error"]["__type"] == "Authorization Error"
    patched = requests.post(
        base + "resource_patch",
        json={"id": asset_id, "damdup": "duplicate"},
        headers={"Authorization": SYSADMIN_TOKEN},
        timeout=10,
    ).json()["result"]
    assert patched["damdup"] == "duplicate"
    for key in ("name", "url", "format", "size", "created", "last_modified", "description"):
        assert patched[key] == before[key]
    assert patched["metadata_modified"] > before["metadata_modified"]


# -- marks ---------------------------------------------------------------------------------


def shown(ckan: CkanHarness, resource_id: str) -> dict[str, Any]:
    """resource_show, as any API client reads it."""
    result: dict[str, Any] = ckan.action("resource_show", id=resource_id)
    return result


def patched(ckan: CkanHarness) -> list[dict[str, Any]]:
    return [
        json.loads(entry.body)
        for entry in ckan.emulator.requests_for("POST", "/api/3/action/resource_patch")
    ]


def test_marks_are_resource_keys_patched_only_when_they_change(ckan: CkanHarness) -> None:
    target = ckan.add("kuva.png", png((9, 90, 9)))
    neighbour = ckan.add("toinen.png", png((90, 9, 9)))
    ckan.set_foreign(target)
    foreign = ckan.foreign_state(target)
    made = adapter(ckan, api_token=DAMDUP_TOKEN)
    before, _ = listing(made)
    ref = next(item for item in before if item.id == target)
    assert ckan.proxy is not None
    ckan.proxy.clear()  # from here on, the adapter's own requests (the harness's bypass it)
    ckan.emulator.log.clear()
    first = Marks(("duplicate",), "dd0123456789", "https://hri.fi/data/a b.png?x=1&y=ä#z")

    assert made.annotate(ref, first) is True
    assert patched(ckan) == [
        {
            "id": target,
            "damdup_marks": "duplicate",
            "damdup_cluster": "dd0123456789",
            "damdup_canonical": first.canonical_url,
        }
    ]
    resource = shown(ckan, target)
    assert (resource["damdup_marks"], resource["damdup_cluster"]) == ("duplicate", "dd0123456789")
    assert resource["damdup_canonical"] == first.canonical_url
    assert made.read_marks(ref) == first

    assert adapter(ckan, api_token=DAMDUP_TOKEN).annotate(ref, first) is False
    assert len(patched(ckan)) == 1

    # Another cluster, same label: only the keys that differ are sent.
    moved = Marks(("duplicate",), "ddabcdefabcd", "https://hri.fi/data/b.png")
    assert made.annotate(ref, moved) is True
    assert set(patched(ckan)[-1]) == {"id", "damdup_cluster", "damdup_canonical"}
    assert ckan.stored_marks(target) == moved
    # Gone altogether: resource_patch cannot drop a key, so they are emptied.
    assert made.annotate(ref, Marks()) is True
    resource = shown(ckan, target)
    assert [resource[key] for key in ("damdup_marks", "damdup_cluster", "damdup_canonical")] == [
        "",
        "",
        "",
    ]
    assert made.read_marks(ref) == Marks()
    assert made.annotate(ref, Marks()) is False

    assert ckan.foreign_state(target) == foreign
    assert "damdup_marks" not in shown(ckan, neighbour)
    actions = [entry.path.split("?")[0].rsplit("/", 1)[-1] for entry in ckan.proxy.log]
    assert set(actions) == {"resource_show", "resource_patch"}
    assert actions.count("resource_patch") == 3
    assert ckan.proxy.requests("DELETE") == [] and ckan.emulator.requests_for("DELETE") == []
    # metadata_modified moved with each patch; last_modified (the file) did not.
    after, _ = listing(made)
    assert {item.id: item.version for item in after} == {item.id: item.version for item in before}
    assert shown(ckan, target)["last_modified"] == resource["created"]


def test_marks_need_a_token_of_an_editor(ckan: CkanHarness) -> None:
    target = ckan.add("kuva.png", png((9, 9, 90)))
    [ref], _ = listing(adapter(ckan))
    marks = Marks(("canonical",), "dd0123456789")
    ckan.emulator.log.clear()
    with pytest.raises(AuthFailed, match="api_token"):
        adapter(ckan).annotate(ref, marks)
    assert ckan.emulator.log == []  # nothing asked without a token
    organization = ckan.emulator.datasets[ckan.emulator.owner[target]].organization or ""
    ckan.emulator.add_user("lukija", EDITOR_TOKEN, memberships={organization: "member"})
    with pytest.raises(AuthFailed, match="editor or admin"):
        adapter(ckan, api_token=EDITOR_TOKEN).annotate(ref, marks)
    assert ckan.stored_marks(target) == Marks()
    assert adapter(ckan, api_token=DAMDUP_TOKEN).annotate(ref, marks) is True


def test_marks_of_a_deleted_resource_are_not_found(ckan: CkanHarness) -> None:
    target = ckan.add("kuva.png", png((90, 90, 9)))
    [ref], _ = listing(adapter(ckan))
    ckan.remove(target)
    with pytest.raises(NotFound):
        adapter(ckan, api_token=DAMDUP_TOKEN).annotate(ref, Marks(("duplicate",)))
    assert patched(ckan) == []


def test_keys_edited_by_hand_read_as_no_marks_and_are_written_over(ckan: CkanHarness) -> None:
    target = ckan.add("kuva.png", png((9, 90, 90)))
    ckan.action("resource_patch", id=target, damdup_marks="kopio")
    [ref], _ = listing(adapter(ckan))
    made = adapter(ckan, api_token=DAMDUP_TOKEN)
    assert made.read_marks(ref) == Marks()
    assert made.annotate(ref, Marks()) is True
    assert shown(ckan, target)["damdup_marks"] == ""


def test_mark_keys_are_configurable_but_never_core_keys(ckan: CkanHarness) -> None:
    target = ckan.add("kuva.png", png((90, 9, 90)))
    [ref], _ = listing(adapter(ckan))
    made = adapter(
        ckan,
        api_token=DAMDUP_TOKEN,
        marks_key="kaksoiskappale",
        cluster_key="ryhma",
        canonical_key="alkuperainen",
    )
    assert made.annotate(ref, Marks(("canonical",), "dd0123456789")) is True
    assert shown(ckan, target)["kaksoiskappale"] == "canonical"
    assert "damdup_marks" not in shown(ckan, target)
    with pytest.raises(ValidationError, match="core CKAN resource key"):
        CkanSettings(base_url=ckan.url, marks_key="description")
    with pytest.raises(ValidationError, match="must differ"):
        CkanSettings(base_url=ckan.url, marks_key="damdup", cluster_key="damdup")


def test_a_resource_dated_in_the_future_hides_no_later_upload(ckan: CkanHarness) -> None:
    """The watermark never passes the listing's start: a resource whose time
    lies in the future (a wrong clock, a hand edit) must not make every later
    incremental listing skip what is uploaded before that date."""
    emulator = ckan.emulator
    dataset = emulator.add_dataset("Tulevaisuus", "Kaupunginmuseo")
    future = emulator.add_image(dataset.id, "2030.png", png((1, 2, 3)))
    later = datetime(2030, 1, 1, tzinfo=UTC)
    with emulator.library.lock:
        future.created = future.modified = later
        emulator.file_modified[future.id] = later
        emulator.set_modified(dataset.id, later)
    first, watermark = listing(adapter(ckan))
    assert [ref.id for ref in first] == [future.id]
    assert watermark.since is not None and watermark.since < later
    assert watermark.started is None, "a finished listing's cursor keeps no start"
    # An upload after that listing, at the server's own time (the emulator's
    # clock is brought to the real one, as a real CKAN's runs).
    clock = emulator.library.clock
    clock.tick((datetime.now(UTC) - clock.now()).total_seconds() + 5)
    fresh = emulator.add_dataset("Uusi", "Kaupunginmuseo")
    new = emulator.add_image(fresh.id, "uusi.png", png((200, 100, 0)))
    found, again = listing(adapter(ckan), watermark)
    assert [ref.id for ref in found] == [new.id], "the new upload is listed, the 2030 one not again"
    assert listing(adapter(ckan), again)[0] == []
