"""Tiers of likeness and the rules that place a pair in one.

Only the first three tiers are ever called duplicates. `similar` is a
suggestion ("another shot of this scene"), never merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Tier(StrEnum):
    EXACT = "exact"
    SAME_PIXELS = "same_pixels"
    NEAR_IDENTICAL = "near_identical"
    SIMILAR = "similar"


DUPLICATE_TIERS = frozenset({Tier.EXACT, Tier.SAME_PIXELS, Tier.NEAR_IDENTICAL})
TIER_ORDER = {Tier.EXACT: 0, Tier.SAME_PIXELS: 1, Tier.NEAR_IDENTICAL: 2, Tier.SIMILAR: 3}

# Mark written to the platform for a member of each tier (until a reviewer decides).
MARK_FOR_TIER = {
    Tier.EXACT: "duplicate",
    Tier.SAME_PIXELS: "duplicate",
    Tier.NEAR_IDENTICAL: "duplicate-candidate",
    Tier.SIMILAR: "related",
}

# Candidate radius for pHash and dHash (64-bit codes), after EXIF orientation and
# also on border-trimmed codes. Research on real photos: every hash threshold that
# finds >= 90 % of real copies also pairs different shots, so this radius only
# PROPOSES pairs; the pixel check decides. Calibrated in bench/accuracy.py:
# re-encodes, resizes, format changes, brightness +-15 %, 5 % crops and corner
# watermarks of the fixture photos fall within it (see docs/calibration.md).
CANDIDATE_RADIUS = 12

# Same decoded pixels can only hold when both codes are this close; checking the
# full-pixel digest costs a full decode of both, so it is asked for only then.
SAME_PIXELS_RADIUS = 6


class Decision(StrEnum):
    SAME = "same"
    DIFFERENT = "different"
    CANONICAL = "canonical"


@dataclass(frozen=True)
class Evidence:
    """What is known about one pair, gathered lazily by the matcher."""

    same_bytes: bool
    same_payload: bool
    phash_distance: int
    dhash_distance: int
    either_flat: bool
    same_pixels: bool | None = None  # None: full decode not needed / not made
    pixel_check_passed: bool | None = None  # None: not run
    pixel_check: dict[str, Any] | None = None
    contradictions: tuple[str, ...] = ()  # every capture fact that disagrees
    other_moment: tuple[str, ...] = ()  # those that show two exposures (capture.other_moment)


@dataclass(frozen=True)
class Verdict:
    tier: Tier | None
    reasons: list[str] = field(default_factory=list)


def is_candidate(phash_distance: int, dhash_distance: int) -> bool:
    return min(phash_distance, dhash_distance) <= CANDIDATE_RADIUS


def needs_pixel_digest(evidence: Evidence, same_size: bool) -> bool:
    return (
        same_size
        and not evidence.same_bytes
        and not evidence.same_payload
        and max(evidence.phash_distance, evidence.dhash_distance) <= SAME_PIXELS_RADIUS
    )


def needs_pixel_check(evidence: Evidence) -> bool:
    return (
        not evidence.same_bytes
        and not evidence.same_payload
        and not evidence.same_pixels
        and not evidence.either_flat
        and is_candidate(evidence.phash_distance, evidence.dhash_distance)
    )


def place(evidence: Evidence) -> Verdict:
    """The tier the evidence supports, with the reasons a person can read."""
    if evidence.same_bytes:
        return Verdict(Tier.EXACT, ["identical bytes (SHA-256)"])
    if evidence.same_payload:
        return Verdict(
            Tier.SAME_PIXELS, ["identical image data, only metadata differs (payload digest)"]
        )
    if evidence.same_pixels:
        return Verdict(Tier.SAME_PIXELS, ["identical decoded pixels after EXIF orientation"])
    distances = f"pHash {evidence.phash_distance}, dHash {evidence.dhash_distance}"
    if evidence.either_flat:
        return Verdict(None, [f"flat image: hashes of flat images agree by chance ({distances})"])
    if not is_candidate(evidence.phash_distance, evidence.dhash_distance):
        return Verdict(None, [f"hashes differ beyond radius {CANDIDATE_RADIUS} ({distances})"])
    reasons = [f"hashes within radius {CANDIDATE_RADIUS} ({distances})"]
    check = evidence.pixel_check or {}
    check_reason = check.get("reason", "not run")
    if not evidence.pixel_check_passed:
        reasons.append(f"pixel check failed: {check_reason}")
        if check.get("coverage_a") == 0 and check.get("coverage_b") == 0:
            # Nothing of one image could be laid over the other: not another shot
            # of the same scene, only codes that agree by chance.
            reasons.append("the images do not align at all: unrelated")
            return Verdict(None, reasons)
        return Verdict(Tier.SIMILAR, reasons)
    reasons.append(f"pixel check passed: {check_reason}")
    if evidence.other_moment:
        # Only another moment of the same camera outweighs agreeing pixels:
        # burst frames of a still scene look like re-encodes.
        reasons.append("another exposure: " + "; ".join(evidence.other_moment))
        return Verdict(Tier.SIMILAR, reasons)
    if evidence.contradictions:
        # A rewritten camera make, another serial or GPS: what editing and
        # archive imports do to one photo's metadata. The pixels decide; a
        # person reviews (near_identical is marked duplicate-candidate).
        reasons.append("capture facts disagree, for review: " + "; ".join(evidence.contradictions))
        return Verdict(Tier.NEAR_IDENTICAL, reasons)
    reasons.append("capture facts do not contradict")
    return Verdict(Tier.NEAR_IDENTICAL, reasons)


def mark_for(tier: Tier, decision: str | None = None) -> str:
    """The mark a pair's member carries: `duplicate` for the same bytes or
    pixels, and for any duplicate-tier pair a reviewer called `same` (or whose
    canonical they chose); `duplicate-candidate` until then; `related` for
    another shot."""
    if tier in DUPLICATE_TIERS and decision in (Decision.SAME, Decision.CANONICAL):
        return "duplicate"
    return MARK_FOR_TIER[tier]


def confirmed(tier: Tier, decision: str | None = None) -> bool:
    """Whether a member is a confirmed duplicate (not awaiting review)."""
    return mark_for(tier, decision) == "duplicate"


def apply_decision(tier: Tier | None, decision: Decision | None) -> Tier | None:
    """A reviewer's word outranks automation: `same` makes a pair a duplicate,
    `different` keeps it out of every duplicate tier."""
    if decision is Decision.DIFFERENT:
        return Tier.SIMILAR if tier is not None else None
    if decision in (Decision.SAME, Decision.CANONICAL) and tier not in DUPLICATE_TIERS:
        return Tier.NEAR_IDENTICAL
    return tier
