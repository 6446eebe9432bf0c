"""Settle candidate pairs into tiers: one sequence for a whole scan's matcher,
a webhook check of one asset and a lookup of an uploaded image.

For a set of candidate pairs (content digests and their pHash and dHash
distances): the evidence the fingerprints carry, then the originals behind
each pair (byte copies are `exact` on every platform: connector/engine/
originals.py), full-pixel digests where the pixels may be identical (the
stored thumbnails rule most such pairs out cheaply), and the pixel check on
the stored small decodes for the rest. Jobs run through the caller's
`RunJobs`: the scan's worker pool, or the server's shared one.

A pair's evidence depends on that pair alone, never on which other pairs
were settled in the same call: a resumed scan, a webhook check and a whole
run agree pair by pair.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from PIL import Image

from connector.core.capture import contradictions, other_moment
from connector.core.fingerprint import Fingerprint, pixel_digest, thumbs_rule_out_same_pixels
from connector.core.index import IndexStore, PairRow
from connector.core.tiers import Evidence, Verdict, needs_pixel_check, needs_pixel_digest, place
from connector.core.verify import verify_pair
from connector.engine.ingest import describe_error
from connector.engine.originals import Original, Originals, ReadsOriginals
from connector.engine.pool import Jobs, Outcome, RunJobs

__all__ = ["Pair", "Settled", "Settler", "run_here"]

log = structlog.get_logger(__name__)

Pair = tuple[str, str]


def pixel_digest_job(data: bytes, max_pixels: int) -> str:
    return pixel_digest(data, max_pixels=max_pixels)


@dataclass
class MatchStats:
    fingerprints: int = 0  # searched: the whole index's, or the queued ones
    searched: str = ""  # "whole index" or "queued" (connector/engine/matcher.py)
    candidates: int = 0
    evaluated: int = 0
    cached: int = 0
    pixel_digests: int = 0
    pixel_checks: int = 0
    originals_read: int = 0  # originals fetched to settle candidate pairs
    originals_bytes: int = 0
    tiers: dict[str, int] = field(default_factory=dict)


def _thumb_array(thumb: bytes) -> npt.NDArray[np.uint8]:
    with Image.open(io.BytesIO(thumb)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pixel_check_job(thumb_a: bytes, thumb_b: bytes) -> dict[str, Any]:
    return verify_pair(_thumb_array(thumb_a), _thumb_array(thumb_b)).as_dict()


def check_not_run(reason: object) -> dict[str, Any]:
    """The record of a pixel check that could not run (a crash, a time-out):
    it did not pass."""
    return {"passed": False, "reason": f"pixel check could not run: {reason}"}


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


def run_here(function: Callable[..., Any], jobs: Jobs) -> Iterator[Outcome[Any]]:
    """Jobs run one by one in this process (`damdup explain`, one pair)."""
    for key, args in jobs:
        try:
            yield Outcome(key, function(*args))
        except Exception as exc:  # as a worker's failure is reported
            yield Outcome(key, error=describe_error(exc))


@dataclass(frozen=True)
class Settled:
    """One settled pair: the row the index keeps and the evidence behind it."""

    row: PairRow
    evidence: Evidence


class Settler:
    """Settles pairs against one index. `keep=False` (a lookup): nothing is
    written, neither the originals read nor the pixel digests computed."""

    def __init__(
        self,
        store: IndexStore,
        load: Callable[[str], Fingerprint],
        reader: ReadsOriginals,
        run_jobs: RunJobs,
        *,
        max_pixels: int,
        keep: bool = True,
        stats: MatchStats | None = None,
    ) -> None:
        self.store = store
        self.load = load
        self.run_jobs = run_jobs
        self.max_pixels = max_pixels
        self.keep = keep
        self.stats = stats if stats is not None else MatchStats()
        self.originals = Originals(store, reader, load, record=keep)
        self.digests: dict[str, str] = {}  # computed here, for the caller's search index

    def known_original(self, sha256: str, original: Original) -> None:
        """What the caller knows of an original already (a lookup's own bytes)."""
        self.originals.known[sha256] = original

    def settle(self, candidates: Mapping[Pair, tuple[int, int]]) -> Iterator[Settled]:
        """Each pair settled, those without a pixel check first."""
        evidences = {
            pair: basic_evidence(self.load(pair[0]), self.load(pair[1]), *distances)
            for pair, distances in sorted(candidates.items())
        }
        # The originals behind each pair (fingerprints may be of renditions): the
        # same bytes are `exact`; only candidates' originals are read, each once.
        self.originals.settle(evidences)
        self._same_pixels(evidences)
        self._count_originals()
        # The pixel check reads the two stored thumbnails and nothing else: pairs
        # whose thumbnails are the same two images (copies with the same pixels,
        # such as one photo re-saved with other metadata) share one check.
        jobs: dict[tuple[str, str], tuple[Any, ...]] = {}
        sharing: dict[tuple[str, str], list[Pair]] = {}
        for pair, evidence in evidences.items():
            if needs_pixel_check(evidence):
                thumbs = (self.load(pair[0]).thumb, self.load(pair[1]).thumb)
                key = (_digest(thumbs[0]), _digest(thumbs[1]))
                jobs.setdefault(key, thumbs)
                sharing.setdefault(key, []).append(pair)
            else:
                yield self._settled(pair, evidence)
        for outcome in self.run_jobs(pixel_check_job, list(jobs.items())):
            self.stats.pixel_checks += 1
            check: dict[str, Any] = (
                outcome.value if outcome.error is None else check_not_run(outcome.error)
            )
            for pair in sharing[outcome.key]:
                evidence = with_evidence(
                    evidences[pair],
                    pixel_check_passed=bool(check.get("passed")),
                    pixel_check=check,
                )
                yield self._settled(pair, evidence)

    def _settled(self, pair: Pair, evidence: Evidence) -> Settled:
        verdict = place(evidence)
        tier = verdict.tier.value if verdict.tier else None
        self.stats.tiers[str(tier)] = self.stats.tiers.get(str(tier), 0) + 1
        self.stats.evaluated += 1
        row = PairRow(
            sha_a=pair[0],
            sha_b=pair[1],
            tier=tier,
            phash_distance=evidence.phash_distance,
            dhash_distance=evidence.dhash_distance,
            evidence=evidence_record(evidence, verdict) | self.originals.record(pair),
        )
        return Settled(row, evidence)

    def _count_originals(self) -> None:
        self.stats.originals_read = self.originals.fetched
        self.stats.originals_bytes = self.originals.fetched_bytes

    def _same_pixels(self, evidences: dict[Pair, Evidence]) -> None:
        """Full-pixel digests of the pairs whose pixels may be identical. Only
        the pairs that ask for digests take them."""
        asking: set[Pair] = set()
        for pair, evidence in evidences.items():
            if not needs_pixel_digest(evidence, self.originals.same_shape(pair)):
                continue
            # The thumbnails rule most such pairs out (burst frames) without the
            # full decode of both images that a digest costs.
            if thumbs_rule_out_same_pixels(self.load(pair[0]), self.load(pair[1])):
                evidences[pair] = with_evidence(evidence, same_pixels=False)
            else:
                asking.add(pair)
        wanted = {sha for pair in asking for sha in pair}
        self.originals.release(wanted)
        digests = self._pixel_digests(wanted)
        for pair in asking:
            if pair[0] in digests and pair[1] in digests:
                same = digests[pair[0]] == digests[pair[1]]
                evidences[pair] = with_evidence(evidences[pair], same_pixels=same)

    def _pixel_digests(self, wanted: set[str]) -> dict[str, str]:
        digests: dict[str, str] = {}
        missing: list[str] = []
        for sha in sorted(wanted):
            known = self.store.pixel_digest(sha)
            if known is not None:
                digests[sha] = known
            else:
                missing.append(sha)

        def jobs() -> Iterator[tuple[str, tuple[bytes, int]]]:
            for sha in missing:  # read as the workers take them: memory stays flat
                data = self.originals(sha)
                if data is not None:
                    yield sha, (data, self.max_pixels)

        for outcome in self.run_jobs(pixel_digest_job, jobs()):
            if outcome.error is not None:
                log.warning("pixel_digest.failed", sha256=outcome.key, reason=outcome.error)
                continue
            digests[outcome.key] = self.digests[outcome.key] = outcome.value
            if self.keep:
                self.store.set_pixel_digest(outcome.key, outcome.value)
            self.stats.pixel_digests += 1
        return digests
