"""Find candidate pairs in the index and settle each one into a tier.

Stage 1 proposes: identical payload digests, and pHash or dHash within the
candidate radius (on EXIF-oriented and border-trimmed codes), found by an exact
sub-quadratic Hamming search. Stage 2 settles: the full-pixel digest where the
pixels may be identical, else the pixel check on the stored small decodes, and
capture facts. Each settled pair is cached by the content digests of its two
images, so a re-scan re-checks nothing and a re-upload inherits the result.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import structlog

from connector.core.fingerprint import RECIPE, Fingerprint, codes_of
from connector.core.index import IndexStore, PairRow, ordered
from connector.core.search import pairs_within
from connector.core.tiers import CANDIDATE_RADIUS, Evidence, Verdict, place
from connector.engine.ingest import describe_error
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


def distance(codes_a: Iterable[int], codes_b: Iterable[int]) -> int:
    """Smallest Hamming distance between any variant of A's code and any of B's."""
    right = list(codes_b)
    return min((x ^ y).bit_count() for x in codes_a for y in right)


def _hash_pairs(rows: list[dict[str, Any]], key: str) -> set[tuple[int, int]]:
    codes: list[int] = []
    owners: list[int] = []
    for owner, row in enumerate(rows):
        if row["flat"]:  # flat images all hash alike
            continue
        for variant in codes_of(row, key):
            codes.append(variant)
            owners.append(owner)
    if len(codes) < 2:
        return set()
    found = pairs_within(np.array(codes, dtype=np.uint64), CANDIDATE_RADIUS)
    owner_array = np.array(owners, dtype=np.int64)
    left, right = owner_array[found[:, 0]], owner_array[found[:, 1]]
    keep = left != right
    low, high = np.minimum(left, right)[keep], np.maximum(left, right)[keep]
    return set(zip(low.tolist(), high.tolist(), strict=True))


def find_candidates(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """Candidate content pairs (sha_a < sha_b) with their pHash and dHash distances."""
    index_pairs = _hash_pairs(rows, "phash") | _hash_pairs(rows, "dhash")
    for key in ("payload_digest", "pixel_digest"):
        groups: dict[str, list[int]] = defaultdict(list)
        for owner, row in enumerate(rows):
            if row[key] is not None:
                groups[row[key]].append(owner)
        for members in groups.values():
            index_pairs.update(
                (members[i], members[j])
                for i in range(len(members))
                for j in range(i + 1, len(members))
            )
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for i, j in index_pairs:
        a, b = rows[i], rows[j]
        pair = ordered(a["sha256"], b["sha256"])
        out[pair] = (
            distance(codes_of(a, "phash"), codes_of(b, "phash")),
            distance(codes_of(a, "dhash"), codes_of(b, "dhash")),
        )
    return out


def match(
    store: IndexStore,
    pool: Pool,
    read_original: ReadOriginal,
    *,
    max_pixels: int,
    progress: Callable[[int, int | None], None] | None = None,
) -> MatchStats:
    stats = MatchStats()
    rows = store.fingerprint_rows(RECIPE)
    stats.fingerprints = len(rows)
    candidates = find_candidates(rows)
    stats.candidates = len(candidates)
    done = store.evaluated_pairs(RECIPE)
    todo = sorted(pair for pair in candidates if pair not in done)
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
    for done_pair in settler.settle({pair: candidates[pair] for pair in todo}):
        settled.append(done_pair.row)
        if len(settled) >= SAVE_BATCH:
            store.save_pairs(settled, RECIPE)
            settled.clear()
        if progress is not None:
            progress(stats.evaluated, len(todo))
    store.save_pairs(settled, RECIPE)
    cache.clear()
    return stats


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
