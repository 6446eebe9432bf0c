"""What checks of one image share: the units' adapters, the in-memory index of
every fingerprint, the worker processes, and settling an image's candidate
pairs as the matcher settles them.

A webhook check (connector/engine/check.py) and a lookup
(connector/engine/lookup.py) run on one Workbench, so that the server holds
one search structure and one pool of workers for both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from adapters.base import Adapter
from connector.core.fingerprint import Fingerprint
from connector.core.index import AssetRow, IndexStore, ordered
from connector.core.provenance import Relations, Specimens
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.engine.component import Component, component_of
from connector.engine.ingest import ImageLimits, describe_error, fingerprint_image
from connector.engine.links import Links
from connector.engine.memindex import Candidate, LiveIndex, MatchIndex
from connector.engine.originals import Original
from connector.engine.pool import Outcome, Pool
from connector.engine.scan import OriginalReader, lineage_of, worker_pool
from connector.engine.settle import Settled, Settler, pixel_check_job, run_here

__all__ = ["Workbench"]

Job = tuple[Any, tuple[Any, ...]]

log = structlog.get_logger(__name__)


class Workbench:
    """Thread-safe: several worker threads use it at once. Each call opens its
    own index connection; the search structure and the workers are shared."""

    def __init__(
        self, db_path: Path | str, settings: Settings, adapters: Mapping[str, Adapter[Any]]
    ) -> None:
        self.db_path = db_path  # a path, or a postgresql:// URL
        self.settings = settings
        self.adapters = dict(adapters)
        self.links = Links(self.adapters)
        self.index = LiveIndex()
        self.relations = Relations()  # lineage findings, kept from check to check
        self.specimens = Specimens()  # and the thumbnails' specimens they were found on
        self._pool: Pool | None = None
        self._pool_lock = threading.Lock()

    def open_store(self) -> IndexStore:
        return open_store(self.db_path, create=True)

    def warm(self) -> None:
        """Build the search structure and start the worker processes now, so
        that the first notification does not wait for them."""
        store = self.open_store()
        try:
            self.index.current(store)
        finally:
            store.close()
        with self._pool_lock:
            self._worker_pool().warm()

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        self.index.clear()

    def _worker_pool(self) -> Pool:
        if self._pool is None:
            self._pool = worker_pool(self.settings)
        return self._pool

    # -- work in the worker processes -------------------------------------------

    def fingerprint(self, store: IndexStore, data: bytes) -> Fingerprint:
        """The fingerprint of bytes not to be saved (a lookup's), taken as a
        sync takes fetched bytes (connector/engine/ingest.py): capped, hashed,
        the index's if it has the content, else made in a worker process under
        the limits a sync uses (time, memory, pixels), so that a hostile upload
        cannot stall or exhaust the server. ImageError says why there is none
        (TooLarge: over the byte cap)."""
        limits = ImageLimits(self.settings.max_pixels, self.settings.max_file_bytes)
        return fingerprint_image(data, limits, store, self._run_jobs)

    def _run_jobs(self, function: Callable[..., Any], jobs: Iterable[Job]) -> list[Outcome[Any]]:
        """Jobs in the worker processes (time and memory limits, a crash costs
        one job); one pixel check alone runs here."""
        listed = list(jobs)
        if not listed:
            return []
        if len(listed) == 1 and function is pixel_check_job:
            return list(run_here(function, listed))
        with self._pool_lock:  # a pool's map is one caller's at a time
            return list(self._worker_pool().map(function, listed, describe_error))

    # -- settling pairs -----------------------------------------------------------

    def settle(
        self,
        store: IndexStore,
        fingerprint: Fingerprint,
        candidates: Iterable[Candidate],
        query: bytes | None = None,
    ) -> list[Settled]:
        """Settle the candidate pairs of `fingerprint` as a scan settles them
        (connector/engine/settle.py): byte copies by their originals, digests
        of the full pixels where they may be identical, else the pixel check.
        `query`: the bytes of a looked-up image, which is not in the index;
        then nothing is saved."""
        known: dict[str, Fingerprint] = {fingerprint.sha256: fingerprint}
        pairs: dict[tuple[str, str], tuple[int, int]] = {}
        listed = list(candidates)
        # The search structure also holds contents no asset holds any more (a
        # file replaced, a unit's asset gone): as for the matcher, which
        # searches live fingerprints only, those are nobody's duplicates.
        held = {asset.sha256 for asset in store.live_assets_with(c.sha256 for c in listed)}
        for candidate in listed:
            if candidate.sha256 not in held:
                continue
            other = store.fingerprint(candidate.sha256)
            if other is None:
                continue  # gone since the search structure was built
            known[other.sha256] = other
            key = ordered(fingerprint.sha256, other.sha256)
            pairs[key] = (candidate.phash_distance, candidate.dhash_distance)
        reader = OriginalReader(store, self.adapters)
        settler = Settler(
            store,
            known.__getitem__,
            reader if query is None else _WithQuery(reader, fingerprint.sha256, query),
            self._run_jobs,
            max_pixels=self.settings.max_pixels,
            keep=query is None,
        )
        if query is not None:
            settler.known_original(
                fingerprint.sha256,
                Original(
                    sha256=fingerprint.sha256,
                    size_bytes=len(query),
                    width=fingerprint.width,
                    height=fingerprint.height,
                    how="the looked-up bytes",
                ),
            )
        settled = list(settler.settle(pairs))
        for sha256, digest in settler.digests.items():
            self.index.note_pixel_digest(sha256, digest)
        return settled

    # -- the answer's part of the index ---------------------------------------------

    def component(self, store: IndexStore, index: MatchIndex, start: Iterable[str]) -> Component:
        return component_of(
            store,
            start,
            index.shape,
            self.settings,
            lineage_of(store, OriginalReader(store, self.adapters), self.relations, self.specimens),
        )


class _WithQuery:
    """The original reader of a lookup: the looked-up bytes for their own
    digest, the index's assets for the rest."""

    def __init__(self, reader: OriginalReader, sha256: str, data: bytes) -> None:
        self.reader, self.sha256, self.data = reader, sha256, data

    def __call__(self, sha256: str) -> bytes | None:
        return self.data if sha256 == self.sha256 else self.reader(sha256)

    def read(self, sha256: str) -> tuple[AssetRow, bytes] | None:
        return self.reader.read(sha256)
