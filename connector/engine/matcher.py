"""Find candidate pairs in the index and settle each one into a tier.

Stage 1 proposes: identical payload digests, and pHash or dHash within the
candidate radius (on EXIF-oriented and border-trimmed codes), found by an exact
sub-quadratic Hamming search. Stage 2 settles: the full-pixel digest where the
pixels may be identical, else the pixel check on the stored small decodes, and
capture facts. Each settled pair is cached by the content digests of its two
images, so a re-scan re-checks nothing and a re-upload inherits the result.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from PIL import Image

from connector.core.capture import contradictions, other_moment
from connector.core.fingerprint import (
    RECIPE,
    Fingerprint,
    codes_of,
    pixel_digest,
    thumbs_rule_out_same_pixels,
)
from connector.core.index import IndexStore, PairRow, ordered
from connector.core.search import pairs_within
from connector.core.tiers import (
    CANDIDATE_RADIUS,
    Evidence,
    Verdict,
    needs_pixel_check,
    needs_pixel_digest,
    place,
)
from connector.core.verify import verify_pair
from connector.engine.originals import Originals, ReadsOriginals
from connector.engine.pool import WorkerPool
from connector.engine.sync import describe_error

log = structlog.get_logger(__name__)

# sha256 -> the original bytes of some live asset with that content, or None;
# `read(sha256)` gives the asset read as well (scan.OriginalReader).
ReadOriginal = ReadsOriginals

SAVE_BATCH = 200


@dataclass
class MatchStats:
    fingerprints: int = 0
    candidates: int = 0
    evaluated: int = 0
    cached: int = 0
    pixel_digests: int = 0
    pixel_checks: int = 0
    originals_read: int = 0  # originals fetched to settle candidate pairs
    originals_bytes: int = 0
    tiers: dict[str, int] = field(default_factory=dict)


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


def _thumb_array(thumb: bytes) -> npt.NDArray[np.uint8]:
    with Image.open(io.BytesIO(thumb)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def pixel_check_job(thumb_a: bytes, thumb_b: bytes) -> dict[str, Any]:
    return verify_pair(_thumb_array(thumb_a), _thumb_array(thumb_b)).as_dict()


def check_not_run(reason: object) -> dict[str, Any]:
    """The record of a pixel check that could not run (a crash, a time-out):
    it did not pass."""
    return {"passed": False, "reason": f"pixel check could not run: {reason}"}


def pixel_digest_job(data: bytes, max_pixels: int) -> str:
    return pixel_digest(data, max_pixels=max_pixels)


def basic_evidence(
    a: Fingerprint, b: Fingerprint, phash_distance: int, dhash_distance: int
) -> Evidence:
    return Evidence(
        same_bytes=a.sha256 == b.sha256,
        same_payload=a.payload_digest is not None and a.payload_digest == b.payload_digest,
        phash_distance=phash_distance,
        dhash_distance=dhash_distance,
        either_flat=a.flat or b.flat,
        contradictions=tuple(contradictions(a.capture, b.capture)),
        other_moment=tuple(other_moment(a.capture, b.capture)),
    )


def with_evidence(evidence: Evidence, **changes: Any) -> Evidence:
    return Evidence(**{**evidence.__dict__, **changes})


def evidence_record(evidence: Evidence, verdict: Verdict) -> dict[str, Any]:
    return {
        "same_payload": evidence.same_payload,
        "same_pixels": evidence.same_pixels,
        "pixel_check": evidence.pixel_check,
        "contradictions": list(evidence.contradictions),
        "other_moment": list(evidence.other_moment),
        "reasons": verdict.reasons,
    }


def match(
    store: IndexStore,
    pool: WorkerPool,
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

    evidences: dict[tuple[str, str], Evidence] = {}
    for pair in todo:
        evidences[pair] = basic_evidence(load(pair[0]), load(pair[1]), *candidates[pair])
    # The originals behind each pair (fingerprints may be of renditions): the
    # same bytes are `exact`; only candidates' originals are read, each once.
    originals = Originals(store, read_original, load)
    originals.settle(evidences)
    stats.originals_read, stats.originals_bytes = originals.fetched, originals.fetched_bytes
    digest_wanted: set[str] = set()
    digest_pairs: set[tuple[str, str]] = set()
    for pair, evidence in evidences.items():
        if not needs_pixel_digest(evidence, originals.same_shape(pair)):
            continue
        # The thumbnails rule most such pairs out (burst frames) without the
        # full decode of both images that a digest costs.
        if thumbs_rule_out_same_pixels(load(pair[0]), load(pair[1])):
            evidences[pair] = with_evidence(evidence, same_pixels=False)
        else:
            digest_pairs.add(pair)
            digest_wanted.update(pair)
    originals.release(digest_wanted)
    digests = _pixel_digests(store, pool, originals, digest_wanted, max_pixels, stats)
    stats.originals_read, stats.originals_bytes = originals.fetched, originals.fetched_bytes

    check_jobs: list[tuple[tuple[str, str], tuple[bytes, bytes]]] = []
    for pair, evidence in evidences.items():
        # Only the pairs that asked for digests take them: a pair's evidence
        # never depends on which other pairs were checked in the same run.
        if pair in digest_pairs and pair[0] in digests and pair[1] in digests:
            evidence = with_evidence(evidence, same_pixels=digests[pair[0]] == digests[pair[1]])
            evidences[pair] = evidence
        if needs_pixel_check(evidence):
            check_jobs.append((pair, (load(pair[0]).thumb, load(pair[1]).thumb)))
    cache.clear()  # thumbnails are in the jobs now; keep memory flat

    settled: list[PairRow] = []
    finished = 0

    def settle(pair: tuple[str, str], evidence: Evidence) -> None:
        nonlocal finished
        verdict = place(evidence)
        tier = verdict.tier.value if verdict.tier else None
        stats.tiers[str(tier)] = stats.tiers.get(str(tier), 0) + 1
        settled.append(
            PairRow(
                sha_a=pair[0],
                sha_b=pair[1],
                tier=tier,
                phash_distance=evidence.phash_distance,
                dhash_distance=evidence.dhash_distance,
                evidence=evidence_record(evidence, verdict) | originals.record(pair),
            )
        )
        finished += 1
        if len(settled) >= SAVE_BATCH:
            store.save_pairs(settled, RECIPE)
            settled.clear()
        if progress is not None:
            progress(finished, len(todo))

    checked = {pair for pair, _ in check_jobs}
    for pair, evidence in evidences.items():
        if pair not in checked:
            settle(pair, evidence)
    for outcome in pool.map(pixel_check_job, check_jobs, describe_error):
        stats.pixel_checks += 1
        check: dict[str, Any] = (
            outcome.value if outcome.error is None else check_not_run(outcome.error)
        )
        settle(
            outcome.key,
            with_evidence(
                evidences[outcome.key],
                pixel_check_passed=bool(check.get("passed")),
                pixel_check=check,
            ),
        )
    store.save_pairs(settled, RECIPE)
    stats.evaluated = finished
    return stats


def _pixel_digests(
    store: IndexStore,
    pool: WorkerPool,
    read_original: Callable[[str], bytes | None],
    wanted: set[str],
    max_pixels: int,
    stats: MatchStats,
) -> dict[str, str]:
    digests: dict[str, str] = {}
    missing: list[str] = []
    for sha in sorted(wanted):
        known = store.pixel_digest(sha)
        if known is not None:
            digests[sha] = known
        else:
            missing.append(sha)

    def jobs() -> Iterator[tuple[str, tuple[bytes, int]]]:
        for sha in missing:
            data = read_original(sha)
            if data is not None:
                yield sha, (data, max_pixels)

    for outcome in pool.map(pixel_digest_job, jobs(), describe_error):
        if outcome.error is not None:
            log.warning("pixel_digest.failed", sha256=outcome.key, reason=outcome.error)
            continue
        digests[outcome.key] = outcome.value
        store.set_pixel_digest(outcome.key, outcome.value)
        stats.pixel_digests += 1
    return digests


def explain_pair(
    a: Fingerprint,
    b: Fingerprint,
    read_original: ReadOriginal,
    max_pixels: int,
    store: IndexStore | None = None,
) -> tuple[Evidence, Verdict, dict[str, Any]]:
    """Every piece of evidence for one pair, computed now, in this process;
    with `store`, what it knows of the originals too (and the originals'
    part of the record)."""
    phash_distance = distance(a.codes("phash"), b.codes("phash"))
    dhash_distance = distance(a.codes("dhash"), b.codes("dhash"))
    evidence = basic_evidence(a, b, phash_distance, dhash_distance)
    same_shape = (a.width, a.height) == (b.width, b.height)
    read_bytes: Callable[[str], bytes | None] = read_original
    record: dict[str, Any] = {}
    pair = ordered(a.sha256, b.sha256)
    if store is not None and a.sha256 != b.sha256:
        fingerprints = {a.sha256: a, b.sha256: b}
        originals = Originals(store, read_original, fingerprints.__getitem__)
        settled = {pair: evidence}
        originals.settle(settled)
        evidence, same_shape = settled[pair], originals.same_shape(pair)
        record = originals.record(pair)
        read_bytes = originals
    if needs_pixel_digest(evidence, same_shape):
        data_a, data_b = read_bytes(a.sha256), read_bytes(b.sha256)
        if data_a is not None and data_b is not None:
            same = pixel_digest(data_a, max_pixels) == pixel_digest(data_b, max_pixels)
            evidence = with_evidence(evidence, same_pixels=same)
    if not evidence.either_flat and not evidence.same_bytes:
        check = pixel_check_job(a.thumb, b.thumb)
        evidence = with_evidence(
            evidence, pixel_check_passed=bool(check["passed"]), pixel_check=check
        )
    return evidence, place(evidence), record
