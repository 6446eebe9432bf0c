"""One run over one or more units: sync their listings, then match the index."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import structlog

from adapters.base import Adapter, AdapterError, AssetRef
from adapters.base import reason as error_text
from connector.core.fingerprint import RECIPE
from connector.core.index import AssetRow, IndexStore, ListedFigures, SchemaError
from connector.core.provenance import (
    Examiner,
    Family,
    Finding,
    RelationKey,
    Relations,
    Specimens,
    finding_from_json,
    finding_json,
    group_key,
    relation_text,
)
from connector.core.settings import Settings
from connector.engine.clusters import (
    Cluster,
    Group,
    Lineage,
    Relation,
    ShapeLookup,
    build_clusters,
)
from connector.engine.ingest import Concurrency
from connector.engine.listing import (
    PATCH_MOST,
    fresh,
    listed_items,
    listing_of,
    new_stamp,
    ordered_listing,
    patch,
    spans_units,
)
from connector.engine.pool import EngineUnavailable, Limits, Pool, WorkerPool
from connector.engine.settle import MatchStats
from connector.engine.sync import SyncStats, sync_unit

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunResult:
    syncs: list[SyncStats]
    match: MatchStats
    errors: int  # live assets of the synced units that could not be indexed
    failed_units: dict[str, str]  # unit -> why its sync stopped (credentials, outage)


class OriginalReader:
    """Reads the original bytes of some live asset with a given content digest,
    through the adapter of its unit (or its file:// address for folder scans)."""

    def __init__(self, store: IndexStore, adapters: Mapping[str, Adapter[Any]]) -> None:
        self.store = store
        self.adapters = adapters
        self._by_sha: dict[str, list[AssetRow]] = {}
        self._originals: dict[str, tuple[str, int]] = {}  # asset key -> original read
        self._asked: set[str] = set()  # asset keys whose originals were looked up

    def __call__(self, sha256: str) -> bytes | None:
        found = self.read(sha256)
        return found[1] if found is not None else None

    def prefetch(self, sha256s: Iterable[str]) -> None:
        """The live assets of these contents and the originals read for them,
        looked up in a statement or two for the reads that follow, not in
        several per content."""
        found: dict[str, list[AssetRow]] = {sha: [] for sha in sha256s if sha not in self._by_sha}
        for asset in self.store.live_assets_with(found):
            found[asset.sha256 or ""].append(asset)
        self._by_sha.update(found)
        self._originals_of([asset for assets in found.values() for asset in assets])

    def _assets(self, sha256: str) -> list[AssetRow]:
        if sha256 not in self._by_sha:
            self._by_sha[sha256] = self.store.live_assets_with([sha256])
        return self._by_sha[sha256]

    def _originals_of(self, assets: list[AssetRow]) -> dict[str, tuple[str, int]]:
        new = [asset for asset in assets if asset.key not in self._asked]
        if new:
            self._originals.update(self.store.originals(new))
            self._asked.update(asset.key for asset in new)
        return {a.key: self._originals[a.key] for a in assets if a.key in self._originals}

    def read(self, sha256: str) -> tuple[AssetRow, bytes] | None:
        """The original of the first live asset with this content that can be
        read, with that asset."""
        assets = self._assets(sha256)
        # The same original may be on this machine already: a folder unit
        # holding a byte copy of what a platform serves as a rendition. Read it
        # there rather than fetch it again.
        local = [
            other
            for original_sha, _size in self._originals_of(assets).values()
            for other in self._assets(original_sha)
            if other.url.startswith("file://")
        ]
        for asset in [*local, *assets]:
            try:
                return asset, self._read_one(asset)
            except LookupError:
                continue
            except (AdapterError, OSError) as exc:
                log.warning("original.unreadable", asset=asset.key, reason=error_text(exc))
        return None

    def _read_one(self, asset: AssetRow) -> bytes:
        """Through the unit's adapter, else a folder scan's file:// address;
        LookupError when neither can read it."""
        adapter = self.adapters.get(asset.unit)
        if adapter is not None:
            ref = AssetRef(
                id=asset.asset_id,
                version=asset.version,
                url=asset.url,
                original_url=asset.original_url,
            )
            return adapter.fetch_original(ref)
        if asset.url.startswith("file://"):
            return Path(unquote(urlparse(asset.url).path, errors="surrogateescape")).read_bytes()
        raise LookupError(asset.key)


# The nice value a sync's local workers add: a run in the background leaves
# the CPU to the webhook checks and lookups of `damdup serve` on the same host.
BACKGROUND_NICE = 10


def worker_pool(
    settings: Settings, workers: int | None = None, *, background: bool = False
) -> Pool:
    """Where the run's jobs go: this host's worker processes (`workers` of
    them, else settings.workers), or with engine "celery" the `damdup worker`s
    on the broker (connector/engine/celery_pool.py, imported only then).
    `background`: a sync or match, whose local workers run at a lower CPU
    priority (BACKGROUND_NICE) than those of checks someone waits for."""
    limits = Limits(
        seconds=settings.file_timeout_s,
        memory_bytes=settings.worker_memory_mb * 1024 * 1024,
        nice=BACKGROUND_NICE if background else 0,
    )
    if settings.engine == "celery":
        from connector.engine.celery_pool import CeleryPool

        return CeleryPool(settings)
    return WorkerPool(workers or settings.workers, limits)


def sync_and_match(
    store: IndexStore,
    adapters: dict[str, Adapter[Any]],
    settings: Settings,
    *,
    full: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
    stop: threading.Event | None = None,
    match_lock: threading.Lock | None = None,
    allow_empty: bool = False,
) -> RunResult:
    """Sync every unit (several at once, each in its own thread with its own
    index connection and workers), then match the whole index once. A unit whose
    sync stops (refused credentials, an outage) is reported; the others go on.
    Once `stop` is set, each sync saves the page under way with its cursor and
    stops, units not yet started are left for the next run, and nothing is
    matched. `match_lock`: held while matching, so that runs side by side in
    one process (the daemon's units) match one after another, the later one
    finding the pairs the earlier settled instead of settling them again.
    `allow_empty`: a full listing that finds no assets may retire all of its
    unit's (see `sync_unit`); without it that unit fails, retiring nothing."""
    overall = threading.BoundedSemaphore(settings.max_requests)
    concurrency = Concurrency(settings.fetch_concurrency, overall)
    failed: dict[str, str] = {}

    def sync_one(unit: str, adapter: Adapter[Any], in_thread: bool) -> SyncStats:
        # An SQLite connection belongs to the thread that opened it.
        own_store = store.reopen() if in_thread else store

        def report(done: int, total: int | None) -> None:
            if progress is not None:
                progress(f"indexing {unit}", done, total)

        if stop is not None and stop.is_set():
            return SyncStats(unit=unit, stopped=True)
        try:
            with worker_pool(settings, background=True) as pool:
                return sync_unit(
                    own_store,
                    adapter,
                    unit,
                    pool,
                    max_pixels=settings.max_pixels,
                    max_bytes=settings.max_file_bytes,
                    full=full,
                    progress=report,
                    concurrency=concurrency,
                    stop=stop,
                    allow_empty=allow_empty,
                )
        except AdapterError as exc:
            log.error("unit.failed", unit=unit, reason=error_text(exc))
            failed[unit] = f"{type(exc).__name__}: {error_text(exc)}"
            return SyncStats(unit=unit)
        except (EngineUnavailable, SchemaError):  # the broker or the index: no unit can go on
            raise
        except Exception as exc:  # a defect in one adapter must not stop the others
            # The traceback as text: it reaches the log whatever the renderer.
            log.error("unit.crashed", unit=unit, error=repr(exc), exception=traceback.format_exc())
            failed[unit] = f"unexpected {type(exc).__name__}: {error_text(exc)}"
            return SyncStats(unit=unit)
        finally:
            if own_store is not store:
                own_store.close()

    units = list(adapters.items())
    if len(units) > 1 and settings.units_at_once > 1:
        with ThreadPoolExecutor(settings.units_at_once, thread_name_prefix="unit") as executor:
            futures = [executor.submit(sync_one, unit, adapter, True) for unit, adapter in units]
            syncs = [future.result() for future in futures]
    else:
        syncs = [sync_one(unit, adapter, False) for unit, adapter in units]

    if stop is not None and stop.is_set():
        errors = sum(len(store.errors(unit)) for unit in adapters)
        return RunResult(syncs=syncs, match=MatchStats(), errors=errors, failed_units=failed)

    def report_match(done: int, total: int | None) -> None:
        if progress is not None:
            progress("matching", done, total)

    # The matcher (and its compiled search) only where a run matches: the
    # commands that read the index (status, clusters) import this module too.
    from connector.engine.matcher import match

    with match_lock or nullcontext(), worker_pool(settings, background=True) as pool:
        stats = match(
            store,
            pool,
            OriginalReader(store, adapters),
            max_pixels=settings.max_pixels,
            progress=report_match,
        )
    errors = sum(len(store.errors(unit)) for unit in adapters)
    return RunResult(syncs=syncs, match=stats, errors=errors, failed_units=failed)


class StoredRelations:
    """Findings of how two copies relate, kept in the index as well: the
    process that meets a group next (a webhook server after the daemon's
    clustering, a later `damdup clusters`) relates only what is new in it.
    `memory`: findings this process keeps between calls (a server's)."""

    def __init__(self, store: IndexStore, memory: Relations | None = None) -> None:
        self.store = store
        self.memory = memory if memory is not None else Relations()
        self._unsaved: dict[RelationKey, Finding] = {}

    def recall(self, keys: Iterable[RelationKey]) -> dict[RelationKey, Finding]:
        wanted = list(keys)
        found = self.memory.recall(wanted)
        rest = {relation_text(key): key for key in wanted if key not in found}
        if rest:
            saved = {
                rest[text]: finding_from_json(value)
                for text, value in self.store.relations(list(rest)).items()
            }
            self.memory.keep(saved)
            found |= saved
        return found

    def keep(self, found: dict[RelationKey, Finding]) -> None:
        """Recalled from memory at once; saved in the index by `save`."""
        self.memory.keep(found)
        self._unsaved.update(found)

    def save(self) -> None:
        self.store.save_relations(
            {relation_text(key): finding_json(value) for key, value in self._unsaved.items()}
        )
        self._unsaved.clear()


# Groups whose lineage is found together: their saved lineages read in one
# statement, and for the rest the live assets, originals and thumbnails of
# their contents (a few MB of thumbnails at most).
LINEAGE_GROUPS = 200


def lineage_of(
    store: IndexStore,
    read_original: Callable[[str], bytes | None] | None = None,
    relations: Relations | None = None,
    kept: Specimens | None = None,
) -> Lineage:
    """Which copy of each group is the original, from the images themselves:
    the original bytes where they can be read (folder scans, or through
    `read_original`), else the stored thumbnail. `relations`: findings kept
    from earlier calls (a server's checks), so a group that grows relates
    only its new copies; `kept`: the thumbnails' specimens, kept likewise.
    Saved per group: reading the clusters (status, clusters, push) never
    reads originals again. A lineage found from renditions alone is found
    again when this run can read the originals."""
    reader = read_original or OriginalReader(store, {})
    # The thumbnails of the groups being examined, read all at once when the
    # first original among them cannot be read (never, where all can).
    unread: list[str] = []
    thumbs: dict[str, bytes] = {}

    def thumbnail(sha256: str) -> bytes | None:
        if unread:
            thumbs.update(store.thumbnails(unread))
            unread.clear()
        if sha256 in thumbs:
            return thumbs[sha256]
        found = store.fingerprint(sha256)
        return found.thumb if found is not None else None

    stored = StoredRelations(store, relations)
    examiner = Examiner(reader, thumbnail, stored, kept)

    def usable(saved: tuple[str, bool] | None) -> Family | None:
        known = Family.from_json(saved[0]) if saved is not None else None
        return known if known is not None and (known.full or read_original is None) else None

    def families(groups: list[Group]) -> list[Family]:
        out: list[Family] = []
        for start in range(0, len(groups), LINEAGE_GROUPS):
            chunk = [
                (sorted(set(shas)), sizes) for shas, sizes in groups[start : start + LINEAGE_GROUPS]
            ]
            keys = [group_key(shas, sizes) for shas, sizes in chunk]
            saved = store.lineages(keys)
            found = {key: known for key in keys if (known := usable(saved.get(key))) is not None}
            todo = [
                (key, group) for key, group in zip(keys, chunk, strict=True) if key not in found
            ]
            if todo:
                contents = sorted({sha for _key, (shas, _sizes) in todo for sha in shas})
                if isinstance(reader, OriginalReader):
                    reader.prefetch(contents)
                unread[:] = contents
                made = {key: examiner.family(shas, sizes) for key, (shas, sizes) in todo}
                unread.clear()
                thumbs.clear()
                stored.save()
                store.save_lineages({key: (f.to_json(), f.full) for key, f in made.items()})
                found |= made
            out.extend(found[key] for key in keys)
        return out

    return families


def figures_of(clusters: Iterable[Cluster]) -> dict[str, dict[str, int]]:
    """Per unit: copies that duplicate a canonical (confirmed, and awaiting
    review); the canonical itself is never counted as redundant."""
    figures: dict[str, dict[str, int]] = {}
    for cluster in clusters:
        for member in cluster.members:
            entry = figures.setdefault(member.asset.unit, {"duplicates": 0, "candidates": 0})
            if member.edge.confirmed:
                entry["duplicates"] += 1
            else:
                entry["candidates"] += 1
    return figures


def current_clusters(
    store: IndexStore,
    settings: Settings,
    read_original: Callable[[str], bytes | None] | None = None,
) -> tuple[list[Cluster], list[Relation]]:
    """The clusters of the whole index, and its related pairs; saved as the
    listing `damdup clusters` and `damdup status` read."""
    # Read before the index: a change committed meanwhile stays queued for
    # the next reader, and the listing saved here is older than the queue,
    # never newer.
    saved = store.listing_saved()
    queue = store.cluster_queue(most=0)  # the rows only: all of them are answered here
    pairs = store.pairs()
    decisions = store.decisions()
    # Only the contents a cluster or relation can hold (those of related pairs
    # and of decisions, and byte copies), not every asset and fingerprint of
    # the index: the same clusters, read in time and memory that follow the
    # related pairs rather than the index's size.
    contents = {sha for pair in pairs for sha in (pair.sha_a, pair.sha_b)}
    contents.update(sha for key in decisions for sha in key)
    contents.update(store.shared_contents())
    clusters, relations = build_clusters(
        store.live_assets_with(contents),
        ShapeLookup(store.fingerprint_columns_of(RECIPE, contents)),
        pairs,
        decisions,
        settings.authoritative_units,
        lineage_of(store, read_original),
    )
    store.save_listing(
        saved[0] if saved is not None else None,
        new_stamp(settings),
        listed_items(clusters, relations),
        None,
        queue.seqs,
    )
    return clusters, relations


# Clusterings that may find another one saved meanwhile before this one
# answers from what it made itself.
TRIES = 3


def _listed_figures(
    store: IndexStore,
    settings: Settings,
    read_original: Callable[[str], bytes | None] | None = None,
) -> ListedFigures | None:
    """The saved listing made current: as it is while nothing is queued,
    else the components the queue reaches clustered again (the whole index
    past PATCH_MOST rows, or when it was made by other rules). Its figures;
    None when other clusterings kept saving first."""
    for _ in range(TRIES):
        saved = store.listing_saved()
        queue = store.cluster_queue(most=PATCH_MOST)
        if saved is not None and fresh(saved[0], settings) and not queue.everything:
            if not queue.seqs:
                return saved[1]
            figures = patch(store, settings, saved[0], queue, lineage_of(store, read_original))
            if figures is not None:
                return figures
            continue
        current_clusters(store, settings, read_original)
    return None


def cluster_counts(
    store: IndexStore,
    settings: Settings,
    read_original: Callable[[str], bytes | None] | None = None,
) -> tuple[int, int]:
    """How many clusters the index holds, and how many of them span units,
    from the saved listing made current: a sync's summary, after which only
    the groups its new and changed assets reach are clustered again, not
    the whole index (seconds at 1,000,000 assets, not half a minute)."""
    clusters = cluster_listing(store, settings, read_original)["clusters"]
    return len(clusters), sum(map(spans_units, clusters))


def unit_figures(store: IndexStore, settings: Settings) -> dict[str, dict[str, int]]:
    """`figures_of` the current clusters, from the saved listing made current."""
    listed = _listed_figures(store, settings)
    if listed is None:
        clusters, _relations = current_clusters(store, settings)
        return figures_of(clusters)
    return {
        unit: {"duplicates": confirmed, "candidates": waiting}
        for unit, (confirmed, waiting) in listed.items()
    }


def cluster_listing(
    store: IndexStore,
    settings: Settings,
    read_original: Callable[[str], bytes | None] | None = None,
) -> dict[str, Any]:
    """`listing_of` the current clusters, from the saved listing made current
    (new groups' lineage read with `read_original`, as current_clusters does)."""
    if _listed_figures(store, settings, read_original) is None:
        clusters, relations = current_clusters(store, settings, read_original)
        return listing_of(clusters, relations)
    return ordered_listing(store.listing())
