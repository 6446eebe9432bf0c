"""Syncing a platform through `damdup sync`: a kill -9 mid-sync loses nothing
and refetches at most one page; fetches in flight stay within their bounds."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from connector.core.index import SQLiteStore
from connector.engine.ingest import Concurrency
from connector.engine.pool import Limits, WorkerPool
from connector.engine.sync import sync_unit
from tests.conftest import ROOT, damdup
from tests.servers.common import TokenBucket, photo_paths
from tests.servers.config import write_config
from tests.servers.drupal import DrupalHarness

PAGE = 3
PHOTOS = photo_paths(variant="original")[:12]
FILES = "/sites/default/files"


@pytest.fixture(scope="module")
def drupal() -> Iterator[DrupalHarness]:
    harness = DrupalHarness()
    yield harness
    harness.close()


@pytest.fixture
def library(drupal: DrupalHarness) -> DrupalHarness:
    drupal.reset()
    for number, path in enumerate(PHOTOS):
        drupal.add(f"photo-{number:02d}{path.suffix}", path.read_bytes())
    return drupal


def downloads(harness: DrupalHarness) -> int:
    assert harness.proxy is not None
    return len([r for r in harness.proxy.requests("GET") if r.path.startswith(FILES)])


def saved_assets(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM assets").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_kill_9_mid_sync_loses_nothing_and_refetches_at_most_a_page(
    library: DrupalHarness, tmp_path: Path
) -> None:
    db = tmp_path / "index.sqlite"
    config = tmp_path / "damdup.toml"
    env = write_config(config, db, {"hel-fi": ("drupal", library.settings(page_size=PAGE))})
    assert library.proxy is not None
    library.proxy.inject("slow", times=1000, path_contains="/jsonapi/media", delay_s=0.5)
    child = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "sync", "--config", str(config), "-q"],
        cwd=ROOT,
        env={**os.environ, **env, "DAMDUP_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while saved_assets(db) < 2 * PAGE and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    saved_before = saved_assets(db)
    assert 2 * PAGE <= saved_before < len(PHOTOS), "killed after some pages, before the end"
    fetched_before = downloads(library)

    library.proxy.clear()
    resumed = damdup("sync", "--config", str(config), "--format", "json", "-q", env=env)
    report = json.loads(resumed.stdout)["units"][0]
    assert report["resumed"] is True and report["complete"] is True
    store = SQLiteStore(db)
    live = store.live_assets("hel-fi")
    store.close()
    assert len(live) == len(PHOTOS) and all(row.sha256 for row in live)
    # What the killed run saved is not fetched again; what it fetched but had not
    # saved yet (at most the page in progress) is.
    assert downloads(library) <= len(PHOTOS) - saved_before + PAGE
    assert fetched_before + downloads(library) <= len(PHOTOS) + PAGE


def sync_once(store: SQLiteStore, adapter: Any, unit: str, pool: WorkerPool, **options: Any) -> Any:
    return sync_unit(
        store, adapter, unit, pool, max_pixels=100_000_000, max_bytes=64 * 2**20, **options
    )


def sync_with(harness: DrupalHarness, concurrency: Concurrency, db: Path) -> int:
    assert harness.proxy is not None
    harness.proxy.clear()
    harness.proxy.inject("slow", times=1000, path_contains=FILES, delay_s=0.3)
    store = SQLiteStore(db)
    try:
        with WorkerPool(2, Limits(seconds=60)) as pool:
            stats = sync_once(
                store, harness.adapter(page_size=6), "hel-fi", pool, concurrency=concurrency
            )
    finally:
        store.close()
    assert stats.fetched == len(PHOTOS) and stats.errors == 0
    return harness.proxy.max_in_flight


def test_fetches_in_flight_per_unit_are_bounded(library: DrupalHarness, tmp_path: Path) -> None:
    assert sync_with(library, Concurrency(per_unit=3), tmp_path / "a.sqlite") == 3


def test_fetches_in_flight_overall_are_bounded(library: DrupalHarness, tmp_path: Path) -> None:
    overall = threading.BoundedSemaphore(1)
    assert sync_with(library, Concurrency(per_unit=4, overall=overall), tmp_path / "b.sqlite") == 1


def test_metadata_edited_upstream_is_taken_in_without_fetching(
    library: DrupalHarness, tmp_path: Path
) -> None:
    db = tmp_path / "meta.sqlite"
    sync_with(library, Concurrency(per_unit=2), db)
    store = SQLiteStore(db)
    target = store.live_assets("hel-fi")[0]
    store.close()
    assert target.metadata["location"] is None
    placed = library.place_metadata({"location": "Temppeliaukio", "department": "KUVA"})
    library.emulator.library.touch(library.drupal.library_id(target.asset_id), **placed)
    assert library.proxy is not None
    library.proxy.clear()
    store = SQLiteStore(db)
    try:
        with WorkerPool(1, Limits(seconds=60)) as pool:
            stats = sync_once(store, library.adapter(page_size=6), "hel-fi", pool)
        refreshed = store.find_asset(f"hel-fi:{target.asset_id}")
    finally:
        store.close()
    assert stats.fetched == 0 and stats.fetched_bytes == 0
    assert downloads(library) == 0
    assert refreshed is not None and refreshed.sha256 == target.sha256
    assert refreshed.metadata["location"] == "Temppeliaukio"
    assert refreshed.metadata["department"] == "KUVA"


def test_an_asset_a_paged_listing_skips_is_not_retired(tmp_path: Path) -> None:
    """Linked Events pages by number: deleting an image already listed shifts
    the rest, and the next page starts one too far. The skipped image is still
    on the platform, so it stays live. The deleted one was listed before it
    went; the next full listing retires it, and only it."""
    from adapters.linked_events import LinkedEvents
    from tests.servers.linked_events import LinkedEventsHarness

    harness = LinkedEventsHarness()
    try:
        ids = [harness.add(f"p{n}.jpg", path.read_bytes()) for n, path in enumerate(PHOTOS[:6])]
        store = SQLiteStore(tmp_path / "le.sqlite")
        with WorkerPool(1, Limits(seconds=60)) as pool:
            sync_once(store, harness.adapter(page_size=2), "le", pool)
            first_page: list[str] = []

            class DeletingMidListing(LinkedEvents):
                def list_assets(self, cursor: Any) -> Any:
                    page = super().list_assets(cursor)
                    if not first_page:
                        first_page.extend(ref.id for ref in page.items)
                        harness.remove(page.items[0].id)
                    return page

            adapter = DeletingMidListing(harness.adapter(page_size=2).settings)
            stats = sync_once(store, adapter, "le", pool, full=True)
            live = {row.asset_id for row in store.live_assets("le")}
            after = sync_once(store, harness.adapter(page_size=2), "le", pool, full=True)
        live_after = {row.asset_id for row in store.live_assets("le")}
        store.close()
    finally:
        harness.close()
    # Listed: the deleted image (on the first page) and all but one of the rest.
    assert stats.listed == len(ids) - 1, "the listing did skip a live asset"
    assert live == set(ids) and stats.retired == 0
    assert live_after == set(ids) - {first_page[0]} and after.retired == 1


def test_a_rate_limited_platform_syncs_completely(library: DrupalHarness, tmp_path: Path) -> None:
    """The emulator's own limit (a token bucket answering 429 with
    Retry-After) against fetches in flight: every asset arrives, none fails."""
    library.emulator.rate = TokenBucket(rate=8, burst=2)
    try:
        sync_with(library, Concurrency(per_unit=4), tmp_path / "rate.sqlite")
    finally:
        library.emulator.rate = None
    limited = [entry for entry in library.emulator.log if entry.status == 429]
    assert limited, "the platform did answer 429"
    assert library.proxy is not None
    assert downloads(library) >= len(PHOTOS)


def test_a_saved_cursor_that_no_longer_fits_starts_a_full_listing(
    library: DrupalHarness, tmp_path: Path
) -> None:
    """After an upgrade that changed an adapter's cursor, the saved one is
    dropped with a warning: a full listing, nothing refetched, nothing lost."""
    db = tmp_path / "cursor.sqlite"
    sync_with(library, Concurrency(per_unit=2), db)
    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE cursors SET cursor = ?, watermark = ?",
            ('{"page": "x"', '{"changed_since": "yesterday"}'),
        )
    store = SQLiteStore(db)
    try:
        with WorkerPool(1, Limits(seconds=60)) as pool:
            stats = sync_once(store, library.adapter(page_size=6), "hel-fi", pool)
        live = store.live_assets("hel-fi")
    finally:
        store.close()
    assert stats.complete and not stats.incremental
    assert stats.listed == len(PHOTOS) and stats.fetched == 0 and stats.retired == 0
    assert len(live) == len(PHOTOS)


def test_a_fetch_that_keeps_failing_is_recorded_and_retried_next_sync(
    library: DrupalHarness, tmp_path: Path
) -> None:
    """The shared client's retries run out on one file: that asset is recorded
    with the reason, the others are indexed, and the next sync fetches it."""
    assert library.proxy is not None
    store = SQLiteStore(tmp_path / "retry.sqlite")
    adapter = library.adapter(page_size=6, attempts=2)
    [victim] = [ref for ref in adapter.list_assets(None).items][:1]
    path = urlsplit(victim.original_url or "").path
    try:
        with WorkerPool(1, Limits(seconds=60)) as pool:
            library.proxy.clear()
            library.proxy.inject("500", times=1000, path_contains=path)
            first = sync_once(store, adapter, "hel-fi", pool)
            failed = store.find_asset(f"hel-fi:{victim.id}")
            library.proxy.clear()
            second = sync_once(store, library.adapter(page_size=6), "hel-fi", pool)
            healed = store.find_asset(f"hel-fi:{victim.id}")
    finally:
        store.close()
    assert first.errors == 1 and first.fingerprinted == len(PHOTOS) - 1
    assert failed is not None and failed.error is not None
    assert "will retry next sync" in failed.error and "500" in failed.error
    assert second.fetched == 1 and second.errors == 0
    assert healed is not None and healed.error is None and healed.sha256
