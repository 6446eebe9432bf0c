"""How an asset a platform lists or describes enters the index: fetch only what
changed, cap, hash, fingerprint, and the row to save. One path for a sync's
page (connector/engine/sync.py) and a webhook check of one asset
(connector/engine/check.py); a lookup's image (connector/engine/lookup.py),
which is not the index's and is not saved, is capped, hashed and
fingerprinted by the same steps (`fingerprint_image`).

For each asset reference:
- the platform reports a problem (no file, a wrong type): an error row;
- the version is the one indexed (and its fingerprint is there, or it failed
  for good): nothing fetched; metadata edited on the platform is taken in;
- else the bytes are fetched (a few at a time, in listing order), capped at
  the configured size, hashed, and fingerprinted in a worker process unless
  their content is indexed already. A folder's new file of a size never seen
  is read by the worker itself from its path (no copy through the pipe).
"""

from __future__ import annotations

import struct
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from PIL import Image

from adapters.base import Adapter, AdapterError, AssetRef, AuthFailed, Retryable
from adapters.base import reason as error_text
from connector.core.fingerprint import (
    DECODE_SIDE,
    RECIPE,
    Fingerprint,
    ImageError,
    fingerprint_bytes,
    sha256_hex,
)
from connector.core.index import AssetRow, IndexStore, Known, listed_facts
from connector.engine.pool import Outcome, RunJobs

__all__ = [
    "RETRY_REASON",
    "Concurrency",
    "ImageLimits",
    "Ingest",
    "Ingested",
    "IngestStats",
    "TooLarge",
    "asset_row",
    "awaits_retry",
    "check_size",
    "describe_error",
    "fingerprint_image",
    "fingerprint_job",
    "fingerprint_of",
    "known_of",
    "read_source",
]

log = structlog.get_logger(__name__)

# A transient fetch failure is recorded with this reason; the next sync tries
# the asset again, even when its listing would not show it (an incremental
# listing shows only what changed upstream).
RETRY_REASON = "fetch failed, will retry next sync"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ImageError):
        return error_text(exc)
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb refused: {error_text(exc)}"
    if isinstance(exc, (OSError, ValueError, SyntaxError, struct.error, EOFError)):
        return f"damaged image data: {error_text(exc)}"
    log.error("fingerprint.crashed", error=repr(exc), exc_info=exc)
    return f"unexpected {type(exc).__name__} while decoding: {error_text(exc)}"


class TooLarge(ImageError):
    """Image bytes over the configured cap (`max_file_mb`)."""


def check_size(size: int, max_bytes: int) -> None:
    """The byte cap of an image, wherever its bytes come from (a fetch, a file
    a worker reads, an upload, a looked-up URL): TooLarge over it."""
    if size > max_bytes:
        raise TooLarge(f"file is over the {max_bytes:,} byte limit")


def read_source(source: bytes | str, max_bytes: int) -> bytes:
    """A job's image bytes: given, or read from a local file's path (at most
    `max_bytes`); ImageError says why it cannot be read."""
    if isinstance(source, bytes):
        return source
    try:
        with open(source, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    check_size(len(data), max_bytes)
    return data


def fingerprint_job(source: bytes | str, max_pixels: int, max_bytes: int) -> Fingerprint:
    """In a worker: fingerprint bytes, or a local file the worker reads itself
    (no copy of the bytes through the pipe: 14 ms a 7 MB file). A worker on
    another host (connector/engine/celery_pool.py) is sent the bytes instead."""
    return fingerprint_bytes(read_source(source, max_bytes), max_pixels=max_pixels)


def fingerprint_of(outcome: Outcome[Any]) -> Fingerprint:
    """A fingerprint job's fingerprint; ImageError in the worker's words
    (`describe_error`, or the pool's) when it has none."""
    if outcome.error is not None:
        raise ImageError(outcome.error)
    fingerprint: Fingerprint = outcome.value
    return fingerprint


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be to be fingerprinted: bytes read, pixels decoded."""

    max_pixels: int
    max_bytes: int

    def admit(self, data: bytes) -> str:
        """Bytes in hand, capped and hashed: their SHA-256; TooLarge over the cap."""
        check_size(len(data), self.max_bytes)
        return sha256_hex(data)

    def job(self, source: bytes | str) -> tuple[bytes | str, int, int]:
        """The arguments of `fingerprint_job` for these bytes or this local file."""
        return (source, self.max_pixels, self.max_bytes)


def fingerprint_image(
    data: bytes, limits: ImageLimits, store: IndexStore, run_jobs: RunJobs
) -> Fingerprint:
    """One image's bytes taken as a page takes fetched bytes (capped, hashed,
    the index's fingerprint of the content if it has one, else one made in a
    worker), for a caller that saves nothing: a lookup. ImageError says why
    there is none (TooLarge: over the cap)."""
    sha = limits.admit(data)
    indexed = store.fingerprint(sha)
    if indexed is not None and indexed.recipe == RECIPE:
        return indexed
    for outcome in run_jobs(fingerprint_job, [(sha, limits.job(data))]):
        return fingerprint_of(outcome)
    raise ImageError("the fingerprint worker returned nothing")


def awaits_retry(error: str | None) -> bool:
    return error is not None and error.startswith(RETRY_REASON)


def asset_row(
    unit: str, ref: AssetRef, sha256: str | None, error: str | None, version: str | None = None
) -> AssetRow:
    """The index row of a listed asset: fingerprinted as `sha256`, or not
    indexed for `error`."""
    return AssetRow(
        unit=unit,
        asset_id=ref.id,
        version=ref.version if version is None else version,
        url=ref.url,
        size_bytes=ref.size_bytes,
        modified=ref.modified,
        sha256=sha256,
        error=error,
        metadata=asdict(ref.metadata),
        live=True,
        original_url=ref.original_url,
        width=ref.width,
        height=ref.height,
        content_hash=ref.content_hash,
    )


def known_of(row: AssetRow) -> Known:
    """What the index holds of one asset, as `IndexStore.asset_versions` gives it."""
    return Known(
        row.version,
        row.sha256,
        row.error,
        listed_facts(row.url, row.original_url, row.metadata, row.content_hash),
    )


@dataclass(frozen=True)
class Concurrency:
    """Fetches in flight: at most `per_unit` for one unit, and at most what
    `overall` (shared by every unit synced at once) lets through."""

    per_unit: int = 4
    overall: threading.BoundedSemaphore | None = None

    def gate(self) -> AbstractContextManager[Any]:
        return self.overall if self.overall is not None else nullcontext()


@dataclass
class IngestStats:
    unchanged: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    fingerprinted: int = 0
    reused: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Ingested:
    """One page's outcome: rows to save (new, changed or failed assets), new
    fingerprints, and the ids of unchanged assets the listing showed."""

    rows: list[AssetRow]
    fingerprints: list[Fingerprint]
    touched: list[str]


def _fetch(adapter: Adapter[Any], ref: AssetRef, concurrency: Concurrency) -> bytes:
    # Retries belong to the shared HTTP client, which already waited out what
    # it could; a Retryable that still arrives is recorded for the next sync.
    with concurrency.gate():
        return adapter.fetch(ref, min_side=DECODE_SIDE)


def _prefetch(
    adapter: Adapter[Any], refs: list[AssetRef], concurrency: Concurrency
) -> Iterator[tuple[AssetRef, bytes | None, AdapterError | None]]:
    """Fetch in a few threads, in listing order, holding at most twice the
    concurrency in memory. An AuthFailed stops the unit at once."""
    if not refs:
        return
    if len(refs) == 1:  # one asset: no thread to start
        try:
            yield refs[0], _fetch(adapter, refs[0], concurrency), None
        except AuthFailed:
            raise
        except AdapterError as exc:
            yield refs[0], None, exc
        return
    width = max(1, concurrency.per_unit)
    with ThreadPoolExecutor(width, thread_name_prefix="fetch") as executor:
        pending = iter(refs)
        window: deque[tuple[AssetRef, Future[bytes]]] = deque()

        def submit_next() -> None:
            ref = next(pending, None)
            if ref is not None:
                window.append((ref, executor.submit(_fetch, adapter, ref, concurrency)))

        for _ in range(2 * width):
            submit_next()
        try:
            while window:
                ref, future = window.popleft()
                try:
                    yield ref, future.result(), None
                except AuthFailed:
                    raise
                except AdapterError as exc:
                    yield ref, None, exc
                submit_next()
        finally:
            for _ref, future in window:
                future.cancel()


class Ingest:
    """Brings assets of one unit into the index, page by page.

    `known`: the index's view of the unit's assets by id (updated as pages
    go); `sizes`: byte sizes of every content indexed or under way, or None
    not to read files from their paths (a byte copy has its original's size,
    so an asset of a size never seen cannot be one)."""

    def __init__(
        self,
        store: IndexStore,
        unit: str,
        adapter: Adapter[Any],
        run_jobs: RunJobs,
        *,
        max_pixels: int,
        max_bytes: int,
        known: dict[str, Known],
        sizes: set[int] | None,
        stats: IngestStats,
        concurrency: Concurrency | None = None,
    ) -> None:
        self.store = store
        self.unit = unit
        self.adapter = adapter
        self.run_jobs = run_jobs
        self.limits = ImageLimits(max_pixels, max_bytes)
        self.known = known
        self.sizes = sizes
        self.stats = stats
        self.concurrency = concurrency or Concurrency()

    def page(self, refs: list[AssetRef]) -> Ingested:
        page = _Page(self, refs)
        for outcome in self.run_jobs(fingerprint_job, page.jobs()):
            page.fingerprinted(outcome)
        return page.finish()


class _Page:
    """The work on one page: what to fetch, what to fingerprint, the rows."""

    def __init__(self, ingest: Ingest, refs: list[AssetRef]) -> None:
        self.ingest = ingest
        self.stats = ingest.stats
        self.refs = refs
        self.rows: dict[str, AssetRow] = {}
        self.touched: list[str] = []
        # asset id -> (ref, sha256 when this process read the bytes) to fingerprint
        self.fresh: dict[str, tuple[AssetRef, str | None]] = {}
        self.page_sizes = Counter(ref.size_bytes for ref in refs)
        self.submitted: set[str] = set()
        self.waiting: list[tuple[AssetRef, str]] = []  # exact copies within the page
        self.failed: dict[str, str] = {}  # sha256 -> why it could not be fingerprinted
        self.fingerprints: dict[str, Fingerprint] = {}
        self.current = ingest.store.known_fingerprints(
            [ingest.known[ref.id].sha256 or "" for ref in refs if ref.id in ingest.known], RECIPE
        )

    def record(self, ref: AssetRef, sha: str | None, error: str | None) -> None:
        if error is not None:
            kind = error.split(":")[0]
            self.stats.errors += 1
            self.stats.error_reasons[kind] = self.stats.error_reasons.get(kind, 0) + 1
            log.warning("asset.failed", asset_id=ref.id, reason=error)
        self.rows[ref.id] = asset_row(self.ingest.unit, ref, sha, error)

    def _settled_before(self, ref: AssetRef) -> bool:
        """Whether the index holds this version already (or its problem):
        nothing is fetched; changed metadata is still taken in."""
        before = self.ingest.known.get(ref.id)
        if ref.problem is not None:
            if before is None or before.version != ref.version or before.error != ref.problem:
                self.record(ref, None, ref.problem)
            else:
                self.touched.append(ref.id)
            return True
        if before is None or before.version != ref.version or awaits_retry(before.error):
            return False
        if before.error is None and before.sha256 not in self.current:
            return False  # its fingerprint is of an older recipe: fetch again
        self.stats.unchanged += 1
        facts = listed_facts(ref.url, ref.original_url, asdict(ref.metadata), ref.content_hash)
        if before.error is None and facts != before.listed:
            self.record(ref, before.sha256, None)
        else:
            self.touched.append(ref.id)
        return True

    def _local_path(self, ref: AssetRef) -> str | None:
        """A new file the worker may read itself: on this machine, of a size
        no content indexed or under way has, alone of its size on the page."""
        sizes, size = self.ingest.sizes, ref.size_bytes
        if sizes is None or size is None or size in sizes or self.page_sizes[size] != 1:
            return None
        adapter = self.ingest.adapter
        path = adapter.local_path(ref) if adapter.capabilities.local_path else None
        if path is not None:
            sizes.add(size)
        return path

    def _fetched(self, ref: AssetRef, data: bytes) -> bool:
        """Cap and hash fetched bytes; True when they need a fingerprint."""
        self.stats.fetched += 1
        self.stats.fetched_bytes += len(data)
        try:
            sha = self.ingest.limits.admit(data)
        except TooLarge as exc:
            self.record(ref, None, str(exc))
            return False
        if self.ingest.sizes is not None:
            self.ingest.sizes.add(len(data))
        if sha in self.current or self.ingest.store.known_fingerprints([sha], RECIPE):
            self.stats.reused += 1
            self.record(ref, sha, None)
            return False
        if sha in self.submitted:  # an exact copy within the page: decode once
            self.waiting.append((ref, sha))
            return False
        self.submitted.add(sha)
        self.fresh[ref.id] = (ref, sha)
        return True

    def jobs(self) -> Iterator[tuple[str, tuple[bytes | str, int, int]]]:
        # A generator, so that the pool pulls one asset's bytes at a time and a
        # page never holds more than the jobs and fetches in flight.
        remote: list[AssetRef] = []
        for ref in self.refs:
            if self._settled_before(ref):
                continue
            path = self._local_path(ref)
            if path is None:
                remote.append(ref)
                continue
            self.stats.fetched += 1
            self.stats.fetched_bytes += ref.size_bytes or 0
            self.fresh[ref.id] = (ref, None)
            yield ref.id, self.ingest.limits.job(path)
        fetched = _prefetch(self.ingest.adapter, remote, self.ingest.concurrency)
        for ref, data, error in fetched:
            if error is not None or data is None:
                retry = f"{RETRY_REASON}: {error}" if isinstance(error, Retryable) else None
                self.record(ref, None, retry or str(error))
            elif self._fetched(ref, data):
                yield ref.id, self.ingest.limits.job(data)

    def fingerprinted(self, outcome: Outcome[Any]) -> None:
        ref, sha = self.fresh[outcome.key]
        try:
            fingerprint = fingerprint_of(outcome)
        except ImageError as exc:
            if sha is not None:
                self.failed[sha] = str(exc)
            self.record(ref, None, str(exc))
            return
        self.fingerprints[fingerprint.sha256] = fingerprint
        self.stats.fingerprinted += 1
        self.record(ref, fingerprint.sha256, None)

    def finish(self) -> Ingested:
        for ref, sha in self.waiting:
            self.stats.reused += 1
            error = self.failed.get(sha)
            self.record(ref, None if error else sha, error)
        for asset_id, row in self.rows.items():
            self.ingest.known[asset_id] = known_of(row)
        return Ingested(list(self.rows.values()), list(self.fingerprints.values()), self.touched)
