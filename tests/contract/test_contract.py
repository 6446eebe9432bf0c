"""The adapter contract, checked the same way for every platform.

Each test runs once per adapter against its server (tests/contract/conftest.py).
Abilities an adapter lacks are skipped by its declared `Capabilities` alone,
never by catching `Unsupported`, and each undeclared one must raise it; fault
tests need HTTP and skip the folder adapter.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from adapters.base import (
    Adapter,
    AdapterError,
    AssetRef,
    AuthFailed,
    Marks,
    NotFound,
    Unavailable,
    Unsupported,
)
from adapters.registry import ADAPTERS, adapter_class
from connector.core.fingerprint import DECODE_SIDE, fingerprint_bytes
from connector.core.index import SQLiteStore
from connector.core.tiers import CANDIDATE_RADIUS
from connector.core.verify import verify_pair
from connector.engine.pool import Limits, WorkerPool
from connector.engine.sync import sync_unit
from tests.contract.harness import HARNESSES, Harness, harness_kind
from tests.servers.common import photo_paths, upscaled

PHOTOS = photo_paths(variant="original")
MAX_PIXELS = 100_000_000
MAX_BYTES = 64 * 1024 * 1024


def listing(adapter: Adapter[Any], cursor: Any = None) -> tuple[list[AssetRef], Any, int]:
    """Every item of one listing, the cursor its last page returned, and the
    number of pages."""
    items: list[AssetRef] = []
    pages = 0
    last = None
    for page in adapter.iter_pages(cursor):
        pages += 1
        items.extend(page.items)
        last = page
    assert last is not None and last.complete
    return items, last.cursor, pages


def add_photos(harness: Harness, count: int, metadata: bool = False) -> list[str]:
    ids = []
    for number, path in enumerate(PHOTOS[:count]):
        facts = (
            {
                "location": f"Senaatintori {number}",
                "date": f"2024-05-{number + 1:02d}",
                "department": "Kaupunginmuseo",
            }
            if metadata
            else None
        )
        ids.append(harness.add(f"photo-{number:02d}{path.suffix}", path.read_bytes(), facts))
    return ids


def big_photo(long_side: int = 1600) -> bytes:
    """A large JPEG from a real photo, so that the platform makes renditions."""
    return upscaled(PHOTOS[0], long_side, quality=92)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(2, Limits(seconds=60)) as workers:
        yield workers


def sync(store: SQLiteStore, adapter: Adapter[Any], pool: WorkerPool, full: bool = False) -> Any:
    return sync_unit(
        store,
        adapter,
        "unit",
        pool,
        max_pixels=MAX_PIXELS,
        max_bytes=MAX_BYTES,
        full=full,
    )


# -- listing -----------------------------------------------------------------


def test_listing_pages_through_every_asset_once(harness: Harness) -> None:
    ids = add_photos(harness, 7)
    items, _, pages = listing(harness.adapter(page_size=3))
    assert sorted(ref.id for ref in items) == sorted(ids)
    assert pages >= 3
    for ref in items:
        assert ref.version and ref.url and ref.problem is None


def test_listing_resumes_from_a_saved_cursor(harness: Harness) -> None:
    ids = add_photos(harness, 5)
    adapter = harness.adapter(page_size=2)
    first = adapter.list_assets(None)
    assert not first.complete and first.cursor is not None
    saved = first.cursor.model_dump_json()
    # A new process: a fresh adapter, the cursor read back from its JSON.
    fresh = harness.adapter(page_size=2)
    rest, _, _ = listing(fresh, fresh.cursor_model.model_validate_json(saved))
    assert sorted(ref.id for ref in first.items + rest) == sorted(ids)


def test_metadata_is_mapped_to_common_fields(harness: Harness) -> None:
    if not harness.metadata:
        pytest.skip(f"{harness.kind} has no metadata fields")
    [asset_id] = add_photos(harness, 1, metadata=True)
    [ref], _, _ = listing(harness.adapter())
    assert ref.id == asset_id
    assert ref.metadata.location == "Senaatintori 0"
    assert ref.metadata.department == "Kaupunginmuseo"
    assert ref.metadata.date is not None and ref.metadata.date.startswith("2024-05-01")
    assert ref.metadata.missing == []


def test_incremental_listing_returns_only_what_changed(harness: Harness) -> None:
    adapter = harness.adapter(page_size=2)
    if not adapter.capabilities.incremental:
        pytest.skip(f"{harness.kind} declares no incremental listing")
    ids = add_photos(harness, 5)
    _, watermark, _ = listing(adapter)
    assert watermark is not None, "a completed listing returns where the next one starts"
    nothing, watermark_again, _ = listing(harness.adapter(page_size=2), watermark)
    assert nothing == []
    harness.touch(ids[1])
    added = harness.add("later.jpg", PHOTOS[6].read_bytes())
    changed, _, _ = listing(harness.adapter(page_size=2), watermark_again or watermark)
    assert sorted(ref.id for ref in changed) == sorted([ids[1], added])


def test_missing_asset_raises_not_found(harness: Harness) -> None:
    [asset_id] = add_photos(harness, 1)
    adapter = harness.adapter()
    [ref], _, _ = listing(adapter)
    harness.remove(asset_id)
    with pytest.raises(NotFound):
        adapter.fetch(ref, DECODE_SIDE)


# -- renditions ----------------------------------------------------------------


def test_rendition_hashes_as_the_original(harness: Harness) -> None:
    adapter = harness.adapter()
    if not adapter.capabilities.renditions:
        pytest.skip(f"{harness.kind} declares no renditions")
    original = big_photo()
    harness.add("big.jpg", original)
    [ref], _, _ = listing(adapter)
    small = adapter.fetch(ref, DECODE_SIDE)
    assert len(small) < len(original) / 2, "a rendition was fetched, not the original"
    with Image.open(io.BytesIO(small)) as image:
        width, height = image.size
    assert min(width, height) >= DECODE_SIDE
    with Image.open(io.BytesIO(original)) as image:
        assert abs(width / height - image.width / image.height) < 0.02, "never a crop"
    a, b = fingerprint_bytes(original), fingerprint_bytes(small)
    assert bin(a.phash ^ b.phash).count("1") <= CANDIDATE_RADIUS
    assert bin(a.dhash ^ b.dhash).count("1") <= CANDIDATE_RADIUS
    check = verify_pair(_array(a.thumb), _array(b.thumb))
    assert check.passed, check.reason


def test_fetch_with_no_minimum_returns_the_original(harness: Harness) -> None:
    original = big_photo(1000)
    harness.add("big.jpg", original)
    [ref], _, _ = listing(harness.adapter())
    assert harness.adapter().fetch_original(ref) == original


def test_fetch_url_reads_the_platforms_own_address_and_no_other(harness: Harness) -> None:
    """A lookup by URL: the original's address, as the listing gives it, read
    through the adapter's own client; an address elsewhere is refused."""
    original = big_photo(600)
    harness.add("addressed.jpg", original)
    adapter = harness.adapter()
    if not adapter.capabilities.fetch_url:
        pytest.skip(f"{harness.kind} declares no fetch_url: a lookup by URL is refused")
    [ref], _, _ = listing(adapter)
    with pytest.raises(AdapterError) as refused:
        adapter.fetch_url("http://192.0.2.1/elsewhere.jpg")
    assert str(refused.value) and not isinstance(refused.value, Unsupported)
    address = ref.original_url or ref.url
    if address.startswith("file:"):
        pytest.skip(f"{harness.kind} gives file addresses, not URLs")
    assert adapter.fetch_url(address) == original


def _array(thumb: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    with Image.open(io.BytesIO(thumb)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


# -- through the sync engine -------------------------------------------------


def test_unchanged_resync_fetches_no_image_bytes(
    harness: Harness, pool: WorkerPool, tmp_path: Path
) -> None:
    add_photos(harness, 4)
    store = SQLiteStore(tmp_path / "index.sqlite")
    first = sync(store, harness.adapter(page_size=3), pool)
    assert first.fingerprinted == 4 and first.errors == 0
    downloads_before = _downloads(harness)
    second = sync(store, harness.adapter(page_size=3), pool, full=True)
    assert second.fetched_bytes == 0 and second.fetched == 0
    assert second.unchanged == 4
    assert _downloads(harness) == downloads_before


def test_deleted_upstream_leaves_the_live_set_and_nothing_else(
    harness: Harness, pool: WorkerPool, tmp_path: Path
) -> None:
    ids = add_photos(harness, 4)
    store = SQLiteStore(tmp_path / "index.sqlite")
    sync(store, harness.adapter(page_size=3), pool)
    before = {row.asset_id: row for row in store.live_assets("unit")}
    harness.remove(ids[2])
    adapter = harness.adapter(page_size=3)
    # A platform that reports deletions shows them in an incremental listing;
    # any other needs the full listing that `damdup sync --full` makes.
    stats = sync(store, adapter, pool, full=not adapter.capabilities.deletions)
    after = {row.asset_id: row for row in store.live_assets("unit")}
    assert set(after) == set(before) - {ids[2]}
    assert stats.retired == 1
    for asset_id, row in after.items():
        assert row.sha256 == before[asset_id].sha256
    gone = store.find_asset(f"unit:{ids[2]}")
    assert gone is not None and not gone.live and gone.sha256 == before[ids[2]].sha256


def _downloads(harness: Harness) -> int:
    if harness.proxy is None:
        return 0
    listing_path = harness.listing_path
    return len([r for r in harness.proxy.requests("GET") if listing_path not in r.path])


# -- faults ------------------------------------------------------------------


def http_only(harness: Harness) -> Any:
    if harness.proxy is None:
        pytest.skip(f"{harness.kind} speaks no HTTP")
    return harness.proxy


def test_429_with_retry_after_is_waited_out(harness: Harness) -> None:
    proxy = http_only(harness)
    ids = add_photos(harness, 2)
    proxy.inject("429", times=1, path_contains=harness.listing_path, retry_after=1)
    items, _, _ = listing(harness.adapter())
    assert sorted(ref.id for ref in items) == sorted(ids)
    faults = [r.fault for r in proxy.requests(path_contains=harness.listing_path)]
    assert faults[:2] == ["429", None]


def test_500_then_success(harness: Harness) -> None:
    proxy = http_only(harness)
    ids = add_photos(harness, 2)
    proxy.inject("500", times=2, path_contains=harness.listing_path)
    items, _, _ = listing(harness.adapter())
    assert sorted(ref.id for ref in items) == sorted(ids)
    faults = [r.fault for r in proxy.requests(path_contains=harness.listing_path)]
    assert faults[:3] == ["500", "500", None]


def test_401_is_auth_failed_without_a_retry_storm(harness: Harness) -> None:
    proxy = http_only(harness)
    add_photos(harness, 1)
    proxy.inject("401", times=50)
    with pytest.raises(AuthFailed, match="credentials"):
        listing(harness.adapter())
    assert len(proxy.requests()) == 1


def test_wrong_credentials_are_auth_failed(harness: Harness) -> None:
    http_only(harness)
    overrides = harness.bad_credentials()
    if overrides is None:
        pytest.skip(f"{harness.kind} lists without credentials")
    add_photos(harness, 1)
    with pytest.raises(AuthFailed, match="credentials"):
        listing(harness.adapter(**overrides))
    assert harness.proxy is not None and len(harness.proxy.requests()) <= 2


def test_html_instead_of_json_is_a_clear_error(harness: Harness) -> None:
    proxy = http_only(harness)
    add_photos(harness, 1)
    proxy.inject("html", times=50, path_contains=harness.listing_path)
    with pytest.raises(Unavailable, match="HTML page"):
        listing(harness.adapter())


def test_timeout_is_retried(harness: Harness) -> None:
    proxy = http_only(harness)
    ids = add_photos(harness, 2)
    proxy.inject("timeout", times=1, path_contains=harness.listing_path, delay_s=2.5)
    items, _, _ = listing(harness.adapter(timeout_s=1))
    assert sorted(ref.id for ref in items) == sorted(ids)
    assert proxy.requests(path_contains=harness.listing_path)[0].fault == "timeout"


def test_truncated_download_is_retried_and_complete(harness: Harness) -> None:
    proxy = http_only(harness)
    original = PHOTOS[3].read_bytes()
    harness.add("photo.jpg", original)
    adapter = harness.adapter()
    [ref], _, _ = listing(adapter)
    clean = adapter.fetch_original(ref)
    assert clean == original
    path = _path_of(ref.original_url or ref.url)
    proxy.inject("truncated", times=1, path_contains=path)
    assert adapter.fetch_original(ref) == original
    assert [r.fault for r in proxy.requests(path_contains=path)][-2:] == ["truncated", None]


def _path_of(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).path


def test_every_registered_adapter_is_under_the_contract() -> None:
    assert sorted({harness_kind(name) for name in HARNESSES}) == sorted(ADAPTERS)
    assert set(ADAPTERS) <= set(HARNESSES), "every kind has a harness of its own name"


# -- optional abilities ------------------------------------------------------

# Each optional method: the capability that declares it, and a call of it.
ABILITIES: dict[str, tuple[str, Callable[[Adapter[Any], AssetRef], object]]] = {
    "annotate": ("annotate", lambda adapter, ref: adapter.annotate(ref, Marks())),
    "describe": ("describe", lambda adapter, ref: adapter.describe(ref.id)),
    "exists": ("exists", lambda adapter, ref: adapter.exists(ref)),
    "fetch_url": ("fetch_url", lambda adapter, ref: adapter.fetch_url(ref.original_url or ref.url)),
    "local_path": ("local_path", lambda adapter, ref: adapter.local_path(ref)),
    "read_marks": ("annotate", lambda adapter, ref: adapter.read_marks(ref)),
}


def _declares(adapter: Adapter[Any] | type[Adapter[Any]], method: str) -> bool:
    declared: bool = getattr(adapter.capabilities, ABILITIES[method][0])
    return declared


def _implements(cls: type[Adapter[Any]], method: str) -> bool:
    # The base derives `exists` from `probe`: giving either implements it.
    given = ("exists", "probe") if method == "exists" else (method,)
    return any(getattr(cls, name) is not getattr(Adapter, name) for name in given)


# (harness, method) for every method a harness's adapter kind leaves undeclared.
UNDECLARED = [
    (name, method)
    for name in sorted(HARNESSES)
    for method in sorted(ABILITIES)
    if not _declares(adapter_class(harness_kind(name)), method)
]


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_an_adapter_declares_exactly_the_abilities_it_implements(kind: str) -> None:
    """A declared ability is implemented and an implemented one declared, so
    that the engine, which calls only what is declared, misses nothing."""
    cls = adapter_class(kind)
    for method in ABILITIES:
        assert _declares(cls, method) == _implements(cls, method), f"{kind}: {method}"


@pytest.mark.parametrize(("harness", "method"), UNDECLARED, indirect=["harness"])
def test_an_undeclared_ability_raises_unsupported(harness: Harness, method: str) -> None:
    add_photos(harness, 1)
    adapter = harness.adapter()
    assert not _declares(adapter, method)
    [ref], _, _ = listing(adapter)
    with pytest.raises(Unsupported):
        ABILITIES[method][1](adapter, ref)


def test_exists_answers_for_a_live_and_a_removed_asset(harness: Harness) -> None:
    adapter = harness.adapter()
    if not adapter.capabilities.exists:
        pytest.skip(f"{harness.kind} tells what is gone by its listing only")
    ids = add_photos(harness, 2)
    items, _, _ = listing(adapter)
    refs = {ref.id: ref for ref in items}
    harness.remove(ids[1])
    assert adapter.exists(refs[ids[0]]) is True
    assert adapter.exists(refs[ids[1]]) is False


def test_describe_gives_the_listings_ref_and_not_found_once_removed(harness: Harness) -> None:
    adapter = harness.adapter()
    if not adapter.capabilities.describe:
        pytest.skip(f"{harness.kind} has no record endpoint: a check syncs the unit instead")
    ids = add_photos(harness, 2, metadata=harness.metadata)
    items, _, _ = listing(adapter)
    refs = {ref.id: ref for ref in items}
    assert adapter.describe(ids[0]) == refs[ids[0]]
    assert adapter.describe(ids[1]) == refs[ids[1]]
    harness.remove(ids[1])
    with pytest.raises(NotFound):
        adapter.describe(ids[1])


def test_an_answer_of_the_wrong_shape_is_a_clear_error(harness: Harness) -> None:
    """Valid JSON that is not what the platform says (a misrouted proxy, an
    API change) stops the listing with an adapter error, never a crash and
    never an empty listing that would retire every asset."""
    proxy = http_only(harness)
    add_photos(harness, 2)
    proxy.inject("shape", times=50, path_contains=harness.listing_path)
    with pytest.raises(AdapterError) as caught:
        listing(harness.adapter())
    assert str(caught.value)


def test_a_listing_resumed_anywhere_equals_the_whole_listing(harness: Harness) -> None:
    """A property: whatever the page size and wherever a listing is cut (a
    kill -9 between pages), resuming from the saved cursor's JSON in a fresh
    adapter lists exactly what one uninterrupted listing lists, each once."""
    ids = add_photos(harness, 6)

    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(page_size=st.integers(1, 4), cut=st.integers(0, 4))
    def resumed_equals_whole(page_size: int, cut: int) -> None:
        adapter = harness.adapter(page_size=page_size)
        seen: list[str] = []
        cursor = None
        for _ in range(cut):
            page = adapter.list_assets(cursor)
            seen.extend(ref.id for ref in page.items)
            if page.complete:
                break
            cursor = page.cursor
        else:
            fresh = harness.adapter(page_size=page_size)
            saved = cursor.model_dump_json() if cursor is not None else None
            rest, _, _ = listing(
                fresh, fresh.cursor_model.model_validate_json(saved) if saved else None
            )
            seen.extend(ref.id for ref in rest)
        assert sorted(seen) == sorted(ids)

    resumed_equals_whole()


# -- marks (write-back) ------------------------------------------------------

# A canonical link as hostile as real ones get: query, fragment, percent
# escapes, spaces and letters outside ASCII. Stores with restricted character
# sets (S3 and Azure tags) must still give it back exactly.
NASTY_URL = "https://www.hel.fi/kuvat/Temppeliaukion kirkko ä.jpg?size=full&v=2%20x#top"


def annotating(harness: Harness) -> Adapter[Any]:
    adapter = harness.adapter()
    if not adapter.capabilities.annotate:
        pytest.skip(f"{harness.kind} is read-only: its marks go into the report")
    return adapter


def _changing(harness: Harness) -> int:
    if harness.proxy is None:
        return 0
    return len([entry for entry in harness.proxy.log if harness.changing(entry)])


def _deletes(harness: Harness) -> list[str]:
    if harness.proxy is None:
        return []
    return [entry.path for entry in harness.proxy.requests("DELETE")]


def test_marks_round_trip_through_the_platform(harness: Harness) -> None:
    adapter = annotating(harness)
    ids = add_photos(harness, 2)
    items, _, _ = listing(adapter)
    refs = {ref.id: ref for ref in items}
    target = refs[ids[0]]
    harness.set_foreign(target.id)
    foreign = harness.foreign_state(target.id)
    assert adapter.read_marks(target) == Marks()
    marks = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=NASTY_URL)

    assert adapter.annotate(target, marks) is True
    assert harness.stored_marks(target.id) == marks
    assert harness.adapter().read_marks(target) == marks
    assert harness.foreign_state(target.id) == foreign
    # The other asset is untouched.
    assert harness.stored_marks(ids[1]) == Marks()
    assert _deletes(harness) == []


def test_annotating_again_sends_no_changing_request(harness: Harness) -> None:
    adapter = annotating(harness)
    [asset_id] = add_photos(harness, 1)
    [ref], _, _ = listing(adapter)
    marks = Marks(labels=("canonical", "related"), cluster="dd00000000ff")
    assert adapter.annotate(ref, marks) is True
    before = _changing(harness)
    assert harness.adapter().annotate(ref, marks) is False
    assert _changing(harness) == before
    assert harness.stored_marks(asset_id) == marks


def test_changed_marks_replace_stale_ones_and_empty_marks_remove_them(harness: Harness) -> None:
    adapter = annotating(harness)
    [asset_id] = add_photos(harness, 1)
    [ref], _, _ = listing(adapter)
    harness.set_foreign(asset_id)
    foreign = harness.foreign_state(asset_id)
    adapter.annotate(
        ref, Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=NASTY_URL)
    )
    moved = Marks(
        labels=("duplicate-candidate",), cluster="ddabcdefabcd", canonical_url="https://a.example/b"
    )
    assert adapter.annotate(ref, moved) is True
    assert harness.stored_marks(asset_id) == moved
    assert adapter.annotate(ref, Marks()) is True
    assert harness.stored_marks(asset_id) == Marks()
    assert adapter.read_marks(ref) == Marks()
    assert harness.foreign_state(asset_id) == foreign
    assert _deletes(harness) == []


def test_marks_leave_the_version_alone(harness: Harness) -> None:
    """Marks are not content: an asset marked upstream lists with the same
    version, so the next sync fetches no image bytes for it."""
    adapter = annotating(harness)
    add_photos(harness, 2)
    before, _, _ = listing(adapter)
    # Platforms that keep whole seconds (WordPress) would hide a write that
    # moves the modification time when it lands in the upload's second.
    time.sleep(1.1)
    for ref in before:
        adapter.annotate(ref, Marks(labels=("related",), cluster="dd0123456789"))
    after, _, _ = listing(harness.adapter())
    assert {ref.id: ref.version for ref in after} == {ref.id: ref.version for ref in before}


def test_marks_on_a_removed_asset_raise_not_found(harness: Harness) -> None:
    adapter = annotating(harness)
    [asset_id] = add_photos(harness, 1)
    [ref], _, _ = listing(adapter)
    harness.remove(asset_id)
    with pytest.raises(NotFound):
        adapter.annotate(ref, Marks(labels=("duplicate",), cluster="dd0123456789"))
    assert _deletes(harness) == []


def test_a_server_error_while_annotating_is_retried(harness: Harness) -> None:
    adapter = annotating(harness)
    proxy = http_only(harness)
    [asset_id] = add_photos(harness, 1)
    [ref], _, _ = listing(adapter)
    proxy.clear()
    proxy.inject("503", times=1, retry_after=0)
    marks = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=NASTY_URL)
    assert adapter.annotate(ref, marks) is True
    assert proxy.log[0].fault == "503"
    assert harness.stored_marks(asset_id) == marks
