"""Sync one unit's listing into the index: page by page from the saved cursor,
each page ingested (connector/engine/ingest.py) and saved with its cursor in
one transaction; assets a full listing no longer shows leave the live set,
but for those under a folder it could not read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from adapters.base import Adapter, AdapterError, AssetMetadata, AssetRef, NotFound
from adapters.base import reason as error_text
from connector.core.index import AssetRow, IndexStore
from connector.engine.ingest import (
    Concurrency,
    Ingest,
    IngestStats,
    awaits_retry,
    describe_error,
)
from connector.engine.pool import Pool

log = structlog.get_logger(__name__)


def _retry_refs(store: IndexStore, unit: str, listed: set[str]) -> list[AssetRef]:
    """Assets whose last fetch failed transiently, as the index knows them, for
    a listing that did not show them."""
    return [
        AssetRef(
            id=row.asset_id,
            version=row.version,
            url=row.url,
            size_bytes=row.size_bytes,
            modified=row.modified,
            metadata=AssetMetadata(**row.metadata),
            original_url=row.original_url,
            width=row.width,
            height=row.height,
            content_hash=row.content_hash,
        )
        for row in store.errors(unit)
        if awaits_retry(row.error) and row.asset_id not in listed
    ]


class EmptyListing(AdapterError):
    """A full listing found no assets at all while the index holds live ones
    of the unit: an emptied or unmounted share, a wrong root or prefix, a
    platform answering with nothing. Nothing was retired; the unit fails
    until a run confirms (`allow_empty`)."""


def _refuse_empty(store: IndexStore, unit: str, run: int) -> None:
    """Raise EmptyListing when the run's listing (its earlier pages too, when
    it resumed) showed none of the unit's live assets and no new one."""
    unseen = store.unseen_assets(unit, run)
    if unseen and len(unseen) == len(store.live_assets(unit)):
        raise EmptyListing(
            f"the listing found no assets, but the index holds {len(unseen)} live "
            f"asset(s) of unit {unit}; nothing was retired. An emptied or unmounted "
            "share, a wrong folder or a platform that answers with nothing looks the "
            "same: if they really are gone, run the same sync or scan again with "
            "--allow-empty"
        )


@dataclass
class SyncStats(IngestStats):
    unit: str = ""
    listed: int = 0
    retired: int = 0
    resumed: bool = False
    incremental: bool = False
    complete: bool = False
    stopped: bool = False  # asked to stop: the listing resumes from the saved cursor
    unlisted: int = 0  # folders the listing could not read (each a recorded error)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int, int | None], None]


def _cursor(adapter: Adapter[Any], saved: str | None) -> Any:
    """A saved cursor, or None when there is none or it no longer fits the
    adapter's cursor (an upgrade changed it): then the listing starts over in
    full, which loses nothing and fetches nothing unchanged."""
    if saved is None:
        return None
    try:
        return adapter.cursor_model.model_validate_json(saved)
    except ValidationError as exc:
        log.warning("cursor.unusable", reason=error_text(exc).splitlines()[0], cursor=saved[:200])
        return None


def _unseen_ref(row: AssetRow) -> AssetRef:
    return AssetRef(
        id=row.asset_id, version=row.version, url=row.url, original_url=row.original_url
    )


def _under(path: str, folders: set[str]) -> bool:
    for folder in folders:
        prefix = folder.strip("/")
        if not prefix or path.startswith(prefix + "/"):
            return True
    return False


def _retire_unseen(
    store: IndexStore, adapter: Adapter[Any], unit: str, run: int, unlisted: set[str]
) -> int:
    """After a complete full listing: the assets it did not show leave the
    live set, but for those under a folder it could not read (`Page.unlisted`)
    and those the platform says are still there."""
    unseen = store.unseen_assets(unit, run)
    keep = [
        row.asset_id
        for row in unseen
        if unlisted and _under(adapter.relative_path(_unseen_ref(row)), unlisted)
    ]
    if keep:
        log.warning("assets.kept_unlisted", assets=len(keep), folders=sorted(unlisted))
    kept = set(keep)
    keep += _still_there(adapter, [row for row in unseen if row.asset_id not in kept])
    return store.retire_unseen(unit, run, keep)


def _still_there(adapter: Adapter[Any], unseen: list[AssetRow]) -> list[str]:
    """Assets a full listing did not show that the platform still has (asked
    one by one, where the adapter can tell): they stay live. An asset whose
    answer fails stays live too, until a listing decides."""
    keep: list[str] = []
    if not adapter.capabilities.exists:
        return keep  # the listing decides
    for row in unseen:
        ref = _unseen_ref(row)
        try:
            there = adapter.exists(ref)
        except NotFound:
            there = False
        except AdapterError as exc:
            log.warning("asset.unconfirmed", asset_id=row.asset_id, reason=error_text(exc))
            there = True
        if there:
            log.warning("asset.missed_by_listing", asset_id=row.asset_id)
            keep.append(row.asset_id)
    return keep


def sync_unit(
    store: IndexStore,
    adapter: Adapter[Any],
    unit: str,
    pool: Pool,
    *,
    max_pixels: int,
    max_bytes: int,
    full: bool = False,
    progress: Progress | None = None,
    concurrency: Concurrency | None = None,
    stop: threading.Event | None = None,
    allow_empty: bool = False,
) -> SyncStats:
    """Bring the index up to date with one unit. Resumes an interrupted listing
    from its saved cursor; else lists what changed since the last completed
    listing when the platform can (`full` lists everything). Assets that a full
    listing no longer shows, or that the platform reports deleted, leave the
    live set, but for those under a folder the listing could not read
    (`Page.unlisted`); nothing else is dropped. A full listing that finds no
    assets at all while the index holds live ones of the unit retires none
    and raises EmptyListing, unless `allow_empty` confirms that they are
    gone. Once `stop` is set, the page under way is finished and saved with
    its cursor, and the listing stops there."""
    concurrency = concurrency or Concurrency()
    stats = SyncStats(unit=unit)
    state = store.listing_state(unit)
    cursor = None
    saved = _cursor(adapter, state.cursor) if state.run is not None and not full else None
    if saved is not None and state.run is not None:
        cursor, run, full_listing = saved, state.run, state.full_listing
        stats.resumed = True
    else:
        run = store.start_run(unit, "sync")
        watermark = _cursor(adapter, state.watermark)
        full_listing = full or watermark is None or not adapter.capabilities.incremental
        if not full_listing:
            cursor = watermark
    stats.incremental = not full_listing
    ingest = Ingest(
        store,
        unit,
        adapter,
        lambda function, jobs: pool.map(function, jobs, describe_error),
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        known=store.asset_versions(unit),
        sizes=store.fingerprint_sizes(),
        stats=stats,
        concurrency=concurrency,
    )
    structlog.contextvars.bind_contextvars(unit=unit, adapter=adapter.kind)
    unlisted: set[str] = set()
    try:
        for page in adapter.iter_pages(cursor):
            unlisted.update(page.unlisted)
            refs = page.items
            if page.complete and not full_listing:
                refs = refs + _retry_refs(store, unit, {ref.id for ref in refs})
            if page.complete and full_listing and not (allow_empty or refs or stats.listed):
                _refuse_empty(store, unit, run)  # before the page's cursor is saved
            ingested = ingest.page(refs)
            next_cursor = page.cursor.model_dump_json() if page.cursor else None
            deleted = [asset_id for asset_id in page.deleted if asset_id in ingest.known]
            store.save_page(
                unit,
                run,
                ingested.rows,
                ingested.fingerprints,
                ingested.touched,
                None if page.complete else next_cursor,
                full_listing=full_listing,
                watermark=next_cursor if page.complete else None,
                deleted=deleted,
            )
            stats.retired += len(deleted)
            stats.listed += len(page.items)
            if progress is not None:
                progress(stats.listed, None)
            log.info("page.saved", assets=len(page.items), changed=len(ingested.rows))
            if page.complete:
                if full_listing:
                    stats.retired += _retire_unseen(store, adapter, unit, run, unlisted)
                stats.unlisted = len(unlisted)
                stats.complete = True
            elif stop is not None and stop.is_set():
                stats.stopped = True
                log.info("sync.stopped", listed=stats.listed, cursor_saved=next_cursor is not None)
                break
    finally:
        structlog.contextvars.unbind_contextvars("unit", "adapter")
        store.finish_run(run, stats.complete, stats.as_dict())
    return stats
