"""Find candidate pairs in the index and settle each one into a tier.

Stage 1 proposes: identical payload digests, and pHash or dHash within the
candidate radius (on EXIF-oriented and border-trimmed codes), found by an exact
sub-quadratic Hamming search. Stage 2 settles: the full-pixel digest where the
pixels may be identical, else the pixel check on the stored small decodes, and
capture facts. Each settled pair is cached by the content digests of its two
images, so a re-scan re-checks nothing and a re-upload inherits the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from connector.core.columns import Digests, FingerprintColumns
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import IndexStore, MatchQueue, PairRow, ordered
from connector.core.search import pairs_within
from connector.core.tiers import CANDIDATE_RADIUS, Evidence, Verdict, place
from connector.engine.ingest import describe_error
from connector.engine.memindex import MatchIndex
from connector.engine.originals import ReadsOriginals
from connector.engine.pool import Jobs, Outcome, Pool
from connector.engine.settle import (
    MatchStats,
    Settler,
    pixel_check_job,
    run_here,
    with_evidence,
)

log = structlog.get_logger(__name__)

# sha256 -> the original bytes of some live asset with that content, or None;
# `read(sha256)` gives the asset read as well (scan.OriginalReader).
ReadOriginal = ReadsOriginals

SAVE_BATCH = 200
# Pairs settled per round: the fingerprints a round loads (each with its
# thumbnail, ~25 KB) are held until it ends, not for the whole match.
SETTLE_BATCH = 5_000
# Past this share of the index's fingerprints queued (a first scan, a large
# migration) the whole index is searched against itself: one join costs less
# than that many single searches.
WHOLE_SEARCH_SHARE = 0.2

I64 = npt.NDArray[np.int64]


def distance(codes_a: Iterable[int], codes_b: Iterable[int]) -> int:
    """Smallest Hamming distance between any variant of A's code and any of B's."""
    right = list(codes_b)
    return min((x ^ y).bit_count() for x in codes_a for y in right)


def _hash_pairs(columns: FingerprintColumns, kind: str) -> I64:
    """Rows (low, high) with a variant of the code within the radius."""
    codes, owners = columns.variants(kind)
    if codes.size < 2:
        return np.zeros((0, 2), dtype=np.int64)
    found = pairs_within(codes, CANDIDATE_RADIUS)
    left, right = owners[found[:, 0]], owners[found[:, 1]]
    keep = left != right
    low, high = np.minimum(left, right)[keep], np.maximum(left, right)[keep]
    return np.stack([low, high], axis=1)


def _digest_pairs(digests: Digests) -> I64:
    """Rows (low, high) with the same digest."""
    out = [np.zeros((0, 2), dtype=np.int64)]
    for members in digests.groups():
        i, j = np.triu_indices(members.size, k=1)
        out.append(np.stack([members[i], members[j]], axis=1))
    return np.concatenate(out)


def find_candidates(
    table: FingerprintColumns | Sequence[Mapping[str, Any]],
) -> dict[tuple[str, str], tuple[int, int]]:
    """Candidate content pairs (sha_a < sha_b) with their pHash and dHash
    distances, from the index's columns (or rows as `fingerprint_rows` gives
    them)."""
    columns = (
        table if isinstance(table, FingerprintColumns) else FingerprintColumns.from_rows(table)
    )
    found = np.concatenate(
        [
            _hash_pairs(columns, "phash"),
            _hash_pairs(columns, "dhash"),
            _digest_pairs(columns.payload_digest),
            _digest_pairs(columns.pixel_digest),
        ]
    )
    # Each pair of rows once: (low, high) as one number.
    keys = np.unique(found[:, 0] * max(len(columns), 1) + found[:, 1])
    left, right = np.divmod(keys, max(len(columns), 1))
    phash = columns.distances(left, right, "phash").tolist()
    dhash = columns.distances(left, right, "dhash").tolist()
    shas = columns.sha256
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for a, b, p, d in zip(shas[left].tolist(), shas[right].tolist(), phash, dhash, strict=True):
        out[ordered(a.decode(), b.decode())] = (p, d)
    return out


def match(
    store: IndexStore,
    pool: Pool,
    read_original: ReadOriginal,
    *,
    max_pixels: int,
    progress: Callable[[int, int | None], None] | None = None,
) -> MatchStats:
    """Settle every candidate pair not settled yet. The contents queued since
    the last completed match (`IndexStore.match_queue`: assets new, changed
    or back) are searched against the whole index; the whole index is
    searched against itself when the queue asks for it or holds more than
    WHOLE_SEARCH_SHARE of the index. Either way every candidate pair among
    live contents is found: the queue holds every content that became live
    since the last search, and is cleared only once every pair is saved."""
    stats = MatchStats()
    # Read before the index: what is queued meanwhile is searched next time.
    queue = store.match_queue(most=int(WHOLE_SEARCH_SHARE * store.fingerprint_watermark()))
    queued = None if queue.everything else _queued_candidates(store, queue)
    if queued is None:
        columns = store.fingerprint_columns(RECIPE)
        stats.fingerprints = len(columns)
        candidates = find_candidates(columns)
        del columns
        done = store.evaluated_pairs(RECIPE)
    else:
        stats.fingerprints, candidates = queued
        done = {
            (pair.sha_a, pair.sha_b)
            for pair in store.pairs_touching({sha for pair in candidates for sha in pair}, RECIPE)
        }
    stats.searched = "whole index" if queued is None else "queued"
    stats.candidates = len(candidates)
    todo = sorted(pair for pair in candidates if pair not in done)
    del done
    stats.cached = len(candidates) - len(todo)
    log.info("match.candidates", candidates=len(candidates), new=len(todo))

    cache: dict[str, Fingerprint] = {}

    def load(sha: str) -> Fingerprint:
        if sha not in cache:
            found = store.fingerprint(sha)
            if found is None:
                raise LookupError(f"fingerprint {sha} vanished from the index")
            cache[sha] = found
        return cache[sha]

    def run_jobs(function: Callable[..., Any], jobs: Jobs) -> Iterator[Outcome[Any]]:
        return pool.map(function, jobs, describe_error)

    settler = Settler(store, load, read_original, run_jobs, max_pixels=max_pixels, stats=stats)
    settled: list[PairRow] = []
    # A pair's evidence depends on that pair alone: settled round by round,
    # each pair settles as in one whole run.
    for first in range(0, len(todo), SETTLE_BATCH):
        batch = {pair: candidates.pop(pair) for pair in todo[first : first + SETTLE_BATCH]}
        for done_pair in settler.settle(batch):
            settled.append(done_pair.row)
            if len(settled) >= SAVE_BATCH:
                store.save_pairs(settled, RECIPE)
                settled.clear()
            if progress is not None:
                progress(stats.evaluated, len(todo))
        cache.clear()
    store.save_pairs(settled, RECIPE)
    store.clear_match_queue(queue.seqs)
    return stats


def _queued_candidates(
    store: IndexStore, queue: MatchQueue
) -> tuple[int, dict[tuple[str, str], tuple[int, int]]]:
    """The candidate pairs of the queued contents that are live, each searched
    against every fingerprint of the index (as a webhook check searches one),
    with their distances."""
    if not queue.contents:
        return 0, {}
    live = {asset.sha256 for asset in store.live_assets_with(queue.contents) if asset.sha256}
    queries = store.fingerprint_columns_of(RECIPE, sorted(live & queue.contents))
    if not len(queries):
        return 0, {}
    index = MatchIndex(store.fingerprint_columns(RECIPE, after=0), store.fingerprint_watermark())
    found: dict[tuple[str, str], tuple[int, int]] = {}
    for row in range(len(queries)):
        sha256 = queries.sha(row)
        for candidate in index.candidates_at(queries, row):
            found.setdefault(
                ordered(sha256, candidate.sha256),
                (candidate.phash_distance, candidate.dhash_distance),
            )
    # The search structure holds every fingerprint saved: those of contents
    # no live asset holds are nobody's duplicates (the whole-index search
    # reads live ones only).
    others = {sha for pair in found for sha in pair} - live
    held = {asset.sha256 for asset in store.live_assets_with(others) if asset.sha256}
    return len(queries), {
        pair: distances
        for pair, distances in found.items()
        if all(sha in live or sha in held for sha in pair)
    }


def explain_pair(
    a: Fingerprint,
    b: Fingerprint,
    read_original: ReadOriginal,
    max_pixels: int,
    store: IndexStore,
) -> tuple[Evidence, Verdict, dict[str, Any]]:
    """The pair settled now, in this process, as a scan settles it (nothing is
    saved), with the originals' part of the record; the pixel check is shown
    even where the tier did not need it."""
    pair = ordered(a.sha256, b.sha256)
    distances = (
        distance(a.codes("phash"), b.codes("phash")),
        distance(a.codes("dhash"), b.codes("dhash")),
    )
    fingerprints = {a.sha256: a, b.sha256: b}
    settler = Settler(
        store, fingerprints.__getitem__, read_original, run_here, max_pixels=max_pixels, keep=False
    )
    (settled,) = settler.settle({pair: distances})
    evidence = settled.evidence
    if evidence.pixel_check is None and not evidence.either_flat and not evidence.same_bytes:
        check = pixel_check_job(a.thumb, b.thumb)
        evidence = with_evidence(
            evidence, pixel_check_passed=bool(check["passed"]), pixel_check=check
        )
    return evidence, place(evidence), settler.originals.record(pair)
