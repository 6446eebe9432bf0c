"""The matcher proposes exactly the pairs within the candidate radius: no more,
none missed (checked against brute force over every code variant)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.tiers import CANDIDATE_RADIUS
from connector.engine.matcher import distance, find_candidates

SEEDS = [0x0F0F_F0F0_3C3C_C3C3, 0x1234_5678_9ABC_DEF0]


@st.composite
def codes(draw: st.DrawFn) -> int:
    seed = draw(st.sampled_from(SEEDS))
    flips = draw(st.lists(st.integers(0, 63), max_size=16))
    for bit in flips:
        seed ^= 1 << bit
    return seed


@st.composite
def rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 12))
    out = []
    for index in range(count):
        out.append(
            {
                "sha256": f"{index:064x}",
                "phash": draw(codes()),
                "dhash": draw(codes()),
                "phash_trim": draw(st.none() | codes()),
                "dhash_trim": draw(st.none() | codes()),
                "phash_inner": draw(codes()),
                "dhash_inner": draw(codes()),
                "flat": draw(st.booleans()),
                "payload_digest": draw(st.none() | st.sampled_from(["p1", "p2"])),
                "pixel_digest": None,
            }
        )
    return out


def variants(row: dict[str, Any], kind: str) -> list[int]:
    return [c for c in (row[kind], row[f"{kind}_trim"], row[f"{kind}_inner"]) if c is not None]


@settings(max_examples=200, deadline=None)
@given(rows())
def test_candidates_equal_brute_force(table: list[dict[str, Any]]) -> None:
    expected = {}
    for i, a in enumerate(table):
        for b in table[i + 1 :]:
            p = distance(variants(a, "phash"), variants(b, "phash"))
            d = distance(variants(a, "dhash"), variants(b, "dhash"))
            close = not (a["flat"] or b["flat"]) and min(p, d) <= CANDIDATE_RADIUS
            same_payload = a["payload_digest"] is not None and (
                a["payload_digest"] == b["payload_digest"]
            )
            if close or same_payload:
                expected[(a["sha256"], b["sha256"])] = (p, d)
    assert find_candidates(table) == expected
