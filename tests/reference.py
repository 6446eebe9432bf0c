"""The whole-index candidate search as it was before the index was read as
columns (one dict per fingerprint): the reference that tests/core/
test_columns.py and bench/scale.py hold the columnar search to."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from connector.core.fingerprint import codes_of
from connector.core.index import ordered
from connector.core.search import pairs_within
from connector.core.tiers import CANDIDATE_RADIUS
from connector.engine.matcher import distance

__all__ = ["dict_candidates"]


def dict_candidates(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """`matcher.find_candidates` as it was on a list of row dicts."""

    def hash_pairs(key: str) -> set[tuple[int, int]]:
        codes: list[int] = []
        owners: list[int] = []
        for owner, row in enumerate(rows):
            if row["flat"]:
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

    index_pairs = hash_pairs("phash") | hash_pairs("dhash")
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
    out = {}
    for i, j in index_pairs:
        a, b = rows[i], rows[j]
        out[ordered(a["sha256"], b["sha256"])] = (
            distance(codes_of(a, "phash"), codes_of(b, "phash")),
            distance(codes_of(a, "dhash"), codes_of(b, "dhash")),
        )
    return out
