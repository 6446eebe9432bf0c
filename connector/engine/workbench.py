"""What checks of one image share: the units' adapters, the in-memory index of
every fingerprint, the worker processes, and settling an image's candidate
pairs as the matcher settles them.

A webhook check (connector/engine/check.py) and a lookup
(connector/engine/lookup.py) run on one Workbench, so that the server holds
one search structure and one pool of workers for both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from adapters.base import Adapter, AdapterError
from adapters.base import reason as error_text
from connector.core.fingerprint import Fingerprint, ImageError, pixel_digest
from connector.core.index import IndexStore, ordered
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.core.tiers import Evidence, needs_pixel_check, needs_pixel_digest
from connector.engine.component import Component, component_of
from connector.engine.links import Links
from connector.engine.matcher import basic_evidence, check_not_run, pixel_check_job, with_evidence
from connector.engine.memindex import Candidate, LiveIndex, MatchIndex
from connector.engine.outbox import asset_ref
from connector.engine.pool import WorkerPool
from connector.engine.scan import OriginalReader, lineage_of, worker_pool
from connector.engine.sync import describe_error, fingerprint_job

__all__ = ["Workbench"]

log = structlog.get_logger(__name__)

Jobs = list[tuple[tuple[str, str], tuple[bytes, bytes]]]


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
        self._pool: WorkerPool | None = None
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
            for _ in self._worker_pool().map(len, [("warm", (b"",))], describe_error):
                pass

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        self.index.clear()

    def _worker_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = worker_pool(self.settings)
        return self._pool

    # -- work in the worker processes -------------------------------------------

    def fingerprint(self, data: bytes) -> Fingerprint:
        """Fingerprinted in a worker process under the limits a sync uses (time,
        memory, pixels, bytes): a hostile upload cannot stall or exhaust the
        server. ImageError says why it could not be."""
        job = ("image", (data, self.settings.max_pixels, self.settings.max_file_bytes))
        with self._pool_lock:  # WorkerPool.map is one caller's at a time
            outcomes = list(self._worker_pool().map(fingerprint_job, [job], describe_error))
        if not outcomes:
            raise ImageError("the fingerprint worker returned nothing")
        if outcomes[0].error is not None:
            raise ImageError(outcomes[0].error)
        fingerprint: Fingerprint = outcomes[0].value
        return fingerprint

    def pixel_checks(self, jobs: Jobs) -> dict[tuple[str, str], dict[str, Any]]:
        """The pixel check of each pair, in the worker processes (time and
        memory limits, a crash costs one pair); one pair alone runs here."""
        if len(jobs) == 1:
            key, (thumb_a, thumb_b) = jobs[0]
            try:
                return {key: pixel_check_job(thumb_a, thumb_b)}
            except Exception as exc:
                return {key: check_not_run(exc)}
        results: dict[tuple[str, str], dict[str, Any]] = {}
        if not jobs:
            return results
        with self._pool_lock:
            for outcome in self._worker_pool().map(pixel_check_job, jobs, describe_error):
                results[outcome.key] = (
                    outcome.value if outcome.error is None else check_not_run(outcome.error)
                )
        return results

    # -- settling pairs -----------------------------------------------------------

    def settle_pairs(
        self,
        store: IndexStore,
        fingerprint: Fingerprint,
        candidates: list[Candidate],
        query_data: tuple[str, bytes] | None,
    ) -> list[tuple[tuple[str, str], Evidence]]:
        """Settle pairs of `fingerprint` as the matcher does: digests of the
        full pixels where they may be identical, else the pixel check on the
        small decodes (in the worker processes, all pairs at once).
        `query_data`: the original bytes of a looked-up image, by its sha."""
        settled: dict[tuple[str, str], Evidence] = {}
        jobs: Jobs = []
        for candidate in candidates:
            other = store.fingerprint(candidate.sha256)
            if other is None:
                continue
            key = ordered(fingerprint.sha256, candidate.sha256)
            a, b = (fingerprint, other) if key[0] == fingerprint.sha256 else (other, fingerprint)
            evidence = basic_evidence(a, b, candidate.phash_distance, candidate.dhash_distance)
            if needs_pixel_digest(evidence, (a.width, a.height) == (b.width, b.height)):
                digest_a = self._pixel_digest(store, a.sha256, query_data)
                digest_b = self._pixel_digest(store, b.sha256, query_data)
                if digest_a is not None and digest_b is not None:
                    evidence = with_evidence(evidence, same_pixels=digest_a == digest_b)
            settled[key] = evidence
            if needs_pixel_check(evidence):
                jobs.append((key, (a.thumb, b.thumb)))
        for key, check in self.pixel_checks(jobs).items():
            settled[key] = with_evidence(
                settled[key], pixel_check_passed=bool(check.get("passed")), pixel_check=check
            )
        return sorted(settled.items())

    def _pixel_digest(
        self, store: IndexStore, sha256: str, query_data: tuple[str, bytes] | None
    ) -> str | None:
        if query_data is not None and query_data[0] == sha256:
            try:
                return pixel_digest(query_data[1], self.settings.max_pixels)
            except Exception as exc:
                log.warning("pixel_digest.failed", sha256=sha256, reason=describe_error(exc))
                return None
        known = store.pixel_digest(sha256)
        if known is not None:
            return known
        for asset in store.live_assets_with([sha256]):
            adapter = self.adapters.get(asset.unit)
            if adapter is None:
                continue
            try:
                data = adapter.fetch_original(asset_ref(asset))
                digest = pixel_digest(data, self.settings.max_pixels)
            except (AdapterError, ImageError, OSError, ValueError) as exc:
                log.warning("pixel_digest.failed", asset=asset.key, reason=error_text(exc))
                continue
            if query_data is None:  # a lookup saves nothing
                store.set_pixel_digest(sha256, digest)
            self.index.note_pixel_digest(sha256, digest)
            return digest
        return None

    # -- the answer's part of the index ---------------------------------------------

    def component(self, store: IndexStore, index: MatchIndex, start: Iterable[str]) -> Component:
        return component_of(
            store,
            start,
            index.shape,
            self.settings,
            lineage_of(store, OriginalReader(store, self.adapters)),
        )
