from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core import search
from connector.core.search import HammingIndex, brute_force_pairs, hamming, pairs_within

MASK = (1 << 64) - 1
CODES = st.integers(min_value=0, max_value=MASK)
RADII = st.integers(min_value=0, max_value=16)
# The kernels are compiled (or loaded from numba's cache) on first use; that
# one-off cost must not trip hypothesis's per-example deadline.
FAST = settings(deadline=None, max_examples=60)


def as_array(codes: list[int]) -> npt.NDArray[np.uint64]:
    return np.array(codes, dtype=np.uint64)


def flip(code: int, bits: list[int]) -> int:
    for bit in bits:
        code ^= 1 << bit
    return code


@st.composite
def clustered(draw: st.DrawFn) -> list[int]:
    """Groups of codes a few bits from a seed, the way one photo's copies hash."""
    seeds = draw(st.lists(CODES, min_size=1, max_size=6))
    members = st.tuples(st.integers(0, len(seeds) - 1), st.lists(st.integers(0, 63), max_size=10))
    return [flip(seeds[s], bits) for s, bits in draw(st.lists(members, max_size=150))]


@st.composite
def phash_like(draw: st.DrawFn) -> list[int]:
    """Clustered codes with exactly 32 of 64 bits set, as imagehash's pHash gives."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    seeds = [
        rng.permutation(np.r_[np.ones(32), np.zeros(32)]) for _ in range(draw(st.integers(1, 5)))
    ]
    codes = []
    for _ in range(draw(st.integers(0, 150))):
        bits = seeds[int(rng.integers(len(seeds)))].copy()
        for _ in range(int(rng.integers(0, 6))):  # swap a set and a clear bit: still 32 set
            bits[rng.choice(np.flatnonzero(bits == 1))] = 0
            bits[rng.choice(np.flatnonzero(bits == 0))] = 1
        codes.append(int("".join("1" if b else "0" for b in bits), 2))
    return codes


def reference_query(
    codes: list[int], ids: list[int], code: int, radius: int
) -> list[tuple[int, int]]:
    hits = [(i, hamming(c, code)) for i, c in zip(ids, codes, strict=True)]
    return sorted(((i, d) for i, d in hits if d <= radius), key=lambda h: (h[1], h[0]))


def assert_pairs_match(codes: list[int], radius: int) -> None:
    got = pairs_within(as_array(codes), radius)
    assert got.dtype == np.int64 and got.shape[1:] == (3,)
    np.testing.assert_array_equal(got, brute_force_pairs(as_array(codes), radius))


@FAST
@given(st.lists(CODES, max_size=120), RADII)
def test_pairs_match_brute_force_on_random_codes(codes: list[int], radius: int) -> None:
    assert_pairs_match(codes, radius)


@FAST
@given(clustered(), RADII)
def test_pairs_match_brute_force_on_clustered_codes(codes: list[int], radius: int) -> None:
    assert_pairs_match(codes, radius)


@FAST
@given(phash_like(), RADII)
def test_pairs_match_brute_force_on_phash_like_codes(codes: list[int], radius: int) -> None:
    assert all(code.bit_count() == 32 for code in codes)
    assert_pairs_match(codes, radius)


@FAST
@given(clustered(), RADII)
def test_brute_force_reference_is_a_plain_double_loop(codes: list[int], radius: int) -> None:
    codes = codes[:40]
    expected = [
        [i, j, hamming(codes[i], codes[j])]
        for i in range(len(codes))
        for j in range(i + 1, len(codes))
        if hamming(codes[i], codes[j]) <= radius
    ]
    got = brute_force_pairs(as_array(codes), radius)
    assert got.tolist() == expected


@FAST
@given(clustered(), RADII, st.lists(CODES, min_size=1, max_size=5), st.data())
def test_query_matches_brute_force(
    codes: list[int], radius: int, queries: list[int], data: st.DataObject
) -> None:
    ids = data.draw(
        st.lists(st.integers(-(2**40), 2**40), min_size=len(codes), max_size=len(codes))
    )
    index = HammingIndex(as_array(codes), np.array(ids, dtype=np.int64))
    assert len(index) == len(codes)
    # Codes from the set itself and their near neighbours are the interesting queries.
    for code in queries + codes[:3] + [flip(c, [5, 40]) for c in codes[:2]]:
        assert index.query(code, radius) == reference_query(codes, ids, code, radius)


@FAST
@given(CODES, CODES, RADII)
def test_distance_is_symmetric(a: int, b: int, radius: int) -> None:
    assert hamming(a, b) == hamming(b, a) == bin(a ^ b).count("1")
    index_a, index_b = HammingIndex(as_array([a])), HammingIndex(as_array([b]))
    assert index_a.query(b, radius) == [(0, hamming(a, b))] * (hamming(a, b) <= radius)
    assert index_a.query(b, radius) == index_b.query(a, radius)


@pytest.mark.parametrize("radius", [0, 1, 12, 16])
def test_empty_and_single_code(radius: int) -> None:
    for codes in ([], [0xDEAD_BEEF]):
        assert pairs_within(as_array(codes), radius).shape == (0, 3)
        assert brute_force_pairs(as_array(codes), radius).shape == (0, 3)
        assert HammingIndex(as_array(codes)).query(0xDEAD_BEEF, radius) == [(0, 0)] * len(codes)


def test_identical_codes_pair_at_distance_zero() -> None:
    n = 40
    got = pairs_within(as_array([0xF0F0_F0F0_0F0F_0F0F] * n), 0)
    i, j = np.triu_indices(n, k=1)
    np.testing.assert_array_equal(got, np.stack([i, j, np.zeros_like(i)], axis=1))
    assert HammingIndex(as_array([7] * 3)).query(7, 0) == [(0, 0), (1, 0), (2, 0)]


@pytest.mark.parametrize("radius", range(17))
def test_boundary_distance_r_is_in_and_r_plus_1_is_out(radius: int) -> None:
    base = 0x0123_4567_89AB_CDEF
    at_r = flip(base, list(range(0, 2 * radius, 2)))
    beyond = flip(base, list(range(1, 2 * radius + 3, 2)))
    assert hamming(base, at_r) == radius and hamming(base, beyond) == radius + 1
    got = pairs_within(as_array([base, at_r, beyond]), radius)
    np.testing.assert_array_equal(got, np.array([[0, 1, radius]], dtype=np.int64))
    assert HammingIndex(as_array([at_r, beyond])).query(base, radius) == [(0, radius)]


def test_signed_storage_gives_the_same_pairs() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2**64, 200, dtype=np.uint64)
    codes[100:] = codes[:100] ^ np.uint64(0b1011 << 60)  # high bits: negative as int64
    np.testing.assert_array_equal(pairs_within(codes.view(np.int64), 6), pairs_within(codes, 6))
    assert HammingIndex(codes.view(np.int64)).query(int(codes.view(np.int64)[0]), 3) == [
        (0, 0),
        (100, 3),
    ]


def test_large_clusters_spill_the_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny join buffer forces the resume path, including a key whose pairs
    # alone overflow it; 1500 neighbours overflow the query's first buffer.
    monkeypatch.setattr(search, "_JOIN_BUFFER", 3)
    rng = np.random.default_rng(5)
    seeds = rng.integers(0, 2**64, 4, dtype=np.uint64)
    shifts = rng.integers(0, 64, size=(1500, 3)).astype(np.uint64)
    noise = np.bitwise_xor.reduce(np.uint64(1) << shifts, axis=1)
    noise[rng.random(1500) < 0.1] = 0  # exact copies too
    codes = seeds[rng.integers(0, 4, 1500)] ^ noise
    for radius in (3, 12):
        np.testing.assert_array_equal(
            pairs_within(codes, radius, workers=1), brute_force_pairs(codes, radius)
        )
    index = HammingIndex(codes)
    for code, radius in [(int(seeds[0]), 6), (int(seeds[1]), 64)]:
        want = reference_query([int(c) for c in codes], list(range(1500)), code, radius)
        assert index.query(code, radius) == want


def test_a_few_thousand_phash_like_codes_at_the_matcher_radius() -> None:
    rng = np.random.default_rng(11)
    seeds = np.array([rng.permutation(64)[:32] for _ in range(300)])
    groups = rng.integers(0, 300, 5000)
    codes = np.zeros(5000, dtype=np.uint64)
    for k, g in enumerate(groups):
        bits = set(seeds[g].tolist())
        for _ in range(int(rng.integers(0, 5))):
            bits.remove(int(rng.choice(sorted(bits))))
            bits.add(int(rng.choice(sorted(set(range(64)) - bits))))
        codes[k] = sum(1 << b for b in bits)
    expected = brute_force_pairs(codes, 12)
    assert len(expected) > 5000
    np.testing.assert_array_equal(pairs_within(codes, 12), expected)


@pytest.mark.parametrize("radius", [-1, 65])
def test_radius_out_of_range_is_refused(radius: int) -> None:
    with pytest.raises(ValueError, match="radius"):
        pairs_within(as_array([1, 2]), radius)
    with pytest.raises(ValueError, match="radius"):
        HammingIndex(as_array([1, 2])).query(1, radius)


def test_ids_must_match_codes() -> None:
    with pytest.raises(ValueError, match="ids"):
        HammingIndex(as_array([1, 2]), np.array([1], dtype=np.int64))
