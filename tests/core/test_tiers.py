from __future__ import annotations

import pytest

from connector.core.tiers import (
    CANDIDATE_RADIUS,
    DUPLICATE_TIERS,
    Decision,
    Evidence,
    Tier,
    apply_decision,
    needs_pixel_check,
    needs_pixel_digest,
    place,
)


def evidence(**changes: object) -> Evidence:
    base: dict[str, object] = {
        "same_bytes": False,
        "same_payload": False,
        "phash_distance": 4,
        "dhash_distance": 6,
        "either_flat": False,
    }
    base.update(changes)
    return Evidence(**base)  # type: ignore[arg-type]


def test_identical_bytes_are_exact() -> None:
    assert place(evidence(same_bytes=True, phash_distance=0, dhash_distance=0)).tier is Tier.EXACT


def test_same_payload_or_pixels_is_same_pixels() -> None:
    assert place(evidence(same_payload=True)).tier is Tier.SAME_PIXELS
    assert place(evidence(same_pixels=True)).tier is Tier.SAME_PIXELS


def test_near_identical_needs_the_pixel_check() -> None:
    assert place(evidence(pixel_check_passed=True, pixel_check={"reason": "ok"})).tier is (
        Tier.NEAR_IDENTICAL
    )
    failed = place(evidence(pixel_check_passed=False, pixel_check={"reason": "parallax"}))
    assert failed.tier is Tier.SIMILAR
    assert any("parallax" in reason for reason in failed.reasons)


def test_codes_that_agree_by_chance_on_images_that_do_not_align_are_unrelated() -> None:
    unaligned = {"reason": "too few feature matches (2)", "coverage_a": 0.0, "coverage_b": 0.0}
    verdict = place(evidence(pixel_check_passed=False, pixel_check=unaligned))
    assert verdict.tier is None and "unrelated" in verdict.reasons[-1]
    other_angle = {"reason": "parallax", "coverage_a": 0.93, "coverage_b": 0.9}
    assert place(evidence(pixel_check_passed=False, pixel_check=other_angle)).tier is Tier.SIMILAR


def test_another_moment_keeps_a_pair_out_of_duplicates() -> None:
    burst = "sub-second capture time differs (12 vs 45)"
    verdict = place(
        evidence(
            pixel_check_passed=True,
            pixel_check={"reason": "aligned"},
            contradictions=(burst,),
            other_moment=(burst,),
        )
    )
    assert verdict.tier is Tier.SIMILAR
    assert verdict.tier not in DUPLICATE_TIERS


def test_other_metadata_disagreements_send_a_pixel_match_to_review() -> None:
    rewritten = "camera make differs (Canon vs Adobe)"
    verdict = place(
        evidence(
            pixel_check_passed=True, pixel_check={"reason": "aligned"}, contradictions=(rewritten,)
        )
    )
    assert verdict.tier is Tier.NEAR_IDENTICAL  # marked duplicate-candidate, for review
    assert any("review" in reason and rewritten in reason for reason in verdict.reasons)


def test_beyond_radius_is_unrelated_and_flat_images_are_never_paired() -> None:
    far = CANDIDATE_RADIUS + 1
    assert place(evidence(phash_distance=far, dhash_distance=far)).tier is None
    assert place(evidence(either_flat=True, pixel_check_passed=True)).tier is None


def test_expensive_checks_are_asked_for_only_when_they_can_matter() -> None:
    assert needs_pixel_digest(evidence(phash_distance=2, dhash_distance=2), same_size=True)
    assert not needs_pixel_digest(evidence(phash_distance=2, dhash_distance=2), same_size=False)
    assert not needs_pixel_digest(evidence(phash_distance=10, dhash_distance=2), same_size=True)
    assert needs_pixel_check(evidence())
    assert not needs_pixel_check(evidence(same_pixels=True))
    assert not needs_pixel_check(evidence(either_flat=True))


@pytest.mark.parametrize("tier", [None, *Tier])
def test_reviewer_decisions_outrank_automation(tier: Tier | None) -> None:
    different = apply_decision(tier, Decision.DIFFERENT)
    assert different not in DUPLICATE_TIERS
    assert apply_decision(tier, Decision.SAME) in DUPLICATE_TIERS
    assert apply_decision(tier, None) is tier
