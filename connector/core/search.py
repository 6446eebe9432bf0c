"""Exact Hamming-radius search over 64-bit perceptual hashes.

Both the all-pairs join and the single-code index use multi-index hashing with
the generalised pigeonhole principle: the 64 bits are cut into chunks with
thresholds t_c such that sum(t_c + 1) == radius + 1. Two codes within the radius
then differ by at most t_c bits in at least one chunk c, so every true pair
shows up as a candidate in some chunk's table, and verifying the full distance
of each candidate makes the result exact (recall 1.0), whatever the data.

A chunk's table is the codes sorted by that chunk's key plus an offset array
over all 2**width keys (sorted arrays, no dicts): probing a key is two loads,
and a bucket's codes sit contiguously for the popcount loop. A pair is kept
only in the first chunk where it qualifies, so no set is needed to drop the
copies the other chunks find. Identical codes are folded together first,
because real photo libraries hold many exact copies and each group of n copies
would otherwise cost n**2 candidate checks in every chunk.

Chunk widths and thresholds come from a cost model (candidate checks plus key
probes plus table size), so a 1M-code join at radius 12 and a 50-code unit test
both get a sensible layout; bits are assigned to chunks most-balanced first,
which keeps pHash's constant DC bit from wasting a slot of a busy chunk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import combinations
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

__all__ = ["HammingIndex", "brute_force_pairs", "hamming", "pairs_within"]

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]
I32Array = npt.NDArray[np.int32]
U8Array = npt.NDArray[np.uint8]

# One key table holds 2**MAX_CHUNK_BITS int64 offsets (32 MiB); wider chunks
# would only pay off beyond ~4M distinct codes.
MAX_CHUNK_BITS = 22
# The matcher's radius; HammingIndex tunes its chunking for it by default.
# Queries at any other radius stay exact, only the layout may be less ideal.
MATCHER_RADIUS = 12

# Relative costs for the planner, measured on an AVX-512 EPYC: one popcount
# check of a candidate, one probe of a neighbouring key, one table slot built.
_COST_CHECK = 1.0
_COST_PROBE = 2.0
_COST_SLOT = 1.0

# Pairs buffered per call of the join kernel before it hands them back.
_JOIN_BUFFER = 1 << 18
# Row ranges per chunk handed to the thread pool; more ranges balance better
# when a few buckets are huge, at a small per-range cost.
_RANGES_PER_CHUNK = 32

_F = TypeVar("_F", bound=Callable[..., Any])


def jit(fn: _F) -> _F:
    # nogil so the thread pool runs kernels on all cores; cache so the compile
    # (seconds) is paid once per install, not on every small scan.
    return cast(_F, numba.njit(cache=True, nogil=True)(fn))


def _popcount_intrinsic(typingctx: Any, x: Any) -> tuple[Any, Callable[..., Any]]:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


# numba has no popcount of its own; LLVM's ctpop becomes one POPCNT instruction.
_popcount = cast(Callable[[np.uint64], int], intrinsic(_popcount_intrinsic))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit codes."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


def _as_codes(codes: npt.ArrayLike) -> U64Array:
    arr = np.asarray(codes)
    if arr.ndim != 1:
        raise ValueError(f"codes must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.uint64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"codes must be integers, got {arr.dtype}")
    # Signed storage (SQLite INTEGER) holds the same 64 bits: reinterpret, don't clip.
    return np.ascontiguousarray(arr.astype(np.uint64, copy=False))


def _check_radius(radius: int) -> int:
    if not 0 <= radius <= 64:
        raise ValueError(f"radius must be in 0..64, got {radius}")
    return int(radius)


def _empty_pairs() -> I64Array:
    return np.empty((0, 3), dtype=np.int64)


def brute_force_pairs(codes: npt.ArrayLike, radius: int) -> I64Array:
    """Reference all-pairs search by full comparison; same output as pairs_within."""
    arr = _as_codes(codes)
    radius = _check_radius(radius)
    n = arr.shape[0]
    found: list[I64Array] = []
    block = max(16, (1 << 22) // max(n, 1))  # rows per step: ~32 MiB of XORs at a time
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        dist = np.bitwise_count(arr[lo:hi, None] ^ arr[None, lo:])
        upper = np.arange(lo, n)[None, :] > np.arange(lo, hi)[:, None]
        rows, cols = np.nonzero((dist <= radius) & upper)
        found.append(np.stack([rows + lo, cols + lo, dist[rows, cols]], axis=1).astype(np.int64))
    if not found:
        return _empty_pairs()
    return np.concatenate(found)  # blocks are row-ordered, nonzero is (row, col) ordered


# --------------------------------------------------------------------------- planning


@cache
def _ball_size(width: int, threshold: int) -> int:
    return sum(math.comb(width, k) for k in range(min(width, threshold) + 1))


@lru_cache(maxsize=64)
def _flips(width: int, threshold: int) -> I64Array:
    """All width-bit masks with at most threshold bits set, ascending."""
    masks = [
        sum(1 << bit for bit in bits)
        for k in range(min(width, threshold) + 1)
        for bits in combinations(range(width), k)
    ]
    out = np.array(sorted(masks), dtype=np.int64)
    out.flags.writeable = False
    return out


def _thresholds(widths: tuple[int, ...], radius: int) -> tuple[int, ...]:
    """Split radius + 1 pigeonhole units over the chunks, wider chunks first.

    A chunk given no unit gets threshold -1 and is never probed.
    """
    m = len(widths)
    units = [(radius + 1) // m] * m
    for c in sorted(range(m), key=lambda c: (-widths[c], c))[: (radius + 1) % m]:
        units[c] += 1
    return tuple(u - 1 for u in units)


def _cost(widths: tuple[int, ...], radius: int, n: int, join: bool) -> float:
    # A join checks each of n*(n-1)/2 pairs with probability ball/2**width and
    # probes the ball around every distinct key; a query does so for one code.
    pairs = n * (n - 1) / 2.0 if join else float(n)
    total = 0.0
    for width, t in zip(widths, _thresholds(widths, radius), strict=True):
        if t < 0:
            continue
        ball = _ball_size(width, t)
        total += _COST_CHECK * pairs * ball / 2.0**width
        total += _COST_PROBE * ball * (min(n, 2**width) if join else 1)
        if join:  # an index's tables are built once and serve many queries
            total += _COST_SLOT * 2.0**width
    return total


@lru_cache(maxsize=256)
def _plan(n: int, radius: int, join: bool) -> tuple[int, ...]:
    """Chunk widths minimising the modelled cost of a join or of one query.

    At most radius + 1 chunks, so each gets a threshold of 0 or more.
    """
    best: tuple[float, tuple[int, ...]] | None = None
    for m in range(1, min(radius + 1, 64) + 1):
        extra = (radius + 1) % m  # chunks that get one more unit deserve more bits
        for low in range(1, min(MAX_CHUNK_BITS, 64 // m) + 1):
            for high in range(low, MAX_CHUNK_BITS + 1) if extra else (low,):
                if extra * high + (m - extra) * low > 64:
                    break
                widths = (high,) * extra + (low,) * (m - extra)
                cost = _cost(widths, radius, n, join)
                if best is None or cost < best[0]:
                    best = (cost, widths)
    assert best is not None
    return best[1]


# --------------------------------------------------------------------------- kernels


@jit
def _bit_ones(codes: U64Array) -> I64Array:
    ones = np.zeros(64, dtype=np.int64)
    for x in codes:
        for bit in range(64):
            ones[bit] += (x >> np.uint64(bit)) & np.uint64(1)
    return ones


@jit
def _permute(codes: U64Array, source_bit: I64Array) -> U64Array:
    out = np.empty_like(codes)
    for i in range(codes.shape[0]):
        x = codes[i]
        y = np.uint64(0)
        for bit in range(64):
            y |= ((x >> np.uint64(source_bit[bit])) & np.uint64(1)) << np.uint64(bit)
        out[i] = y
    return out


@jit
def _join_range(
    sorted_codes: U64Array,
    order: I32Array,
    starts: I64Array,
    shift: int,
    key_mask: int,
    flips: I64Array,
    first: int,
    stop: int,
    radius: int,
    earlier_masks: U64Array,
    earlier_thresholds: I64Array,
    out_i: I32Array,
    out_j: I32Array,
    out_d: U8Array,
) -> tuple[int, int]:
    """Pairs with one member in sorted rows [first, stop) of one chunk's table.

    Returns (pairs written, row to resume at): when the buffers fill up the
    kernel stops at the start of the key it could not finish, so the caller
    can drain the buffers and call again from there.
    """
    capacity = out_i.shape[0]
    written = 0
    row = first
    while row < stop:
        key = np.int64((sorted_codes[row] >> np.uint64(shift)) & np.uint64(key_mask))
        row_end = min(starts[key + 1], stop)
        mark = written
        for flip in flips:
            other = key ^ flip
            if other < key:  # the pair is found from the smaller key
                continue
            lo = starts[other]
            hi = starts[other + 1]
            for a in range(row, row_end):
                x = sorted_codes[a]
                for b in range(a + 1 if other == key else lo, hi):
                    diff = x ^ sorted_codes[b]
                    d = _popcount(diff)
                    if d > radius:
                        continue
                    seen = False
                    for c in range(earlier_masks.shape[0]):
                        if _popcount(diff & earlier_masks[c]) <= earlier_thresholds[c]:
                            seen = True
                            break
                    if seen:
                        continue
                    if written < capacity:
                        out_i[written] = order[a]
                        out_j[written] = order[b]
                        out_d[written] = d
                    written += 1
        if written > capacity:
            return mark, row
        row = row_end
    return written, stop


@jit
def _query_kernel(
    code: np.uint64,
    radius: int,
    source_bit: I64Array,
    sorted_codes: U64Array,
    order: I32Array,
    starts: I64Array,
    start_offsets: I64Array,
    shifts: I64Array,
    widths: I64Array,
    thresholds: I64Array,
    flips: I64Array,
    flip_offsets: I64Array,
    out_index: I64Array,
    out_dist: I64Array,
) -> int:
    """Matches of one code; writes at most len(out_index), returns how many exist."""
    q = np.uint64(0)
    for bit in range(64):
        q |= ((code >> np.uint64(source_bit[bit])) & np.uint64(1)) << np.uint64(bit)
    n = order.shape[0] // shifts.shape[0]
    capacity = out_index.shape[0]
    found = 0
    for c in range(shifts.shape[0]):
        if thresholds[c] < 0:
            continue
        key_mask = (np.int64(1) << widths[c]) - 1
        key = np.int64((q >> np.uint64(shifts[c])) & np.uint64(key_mask))
        base = c * n
        table = start_offsets[c]
        for f in range(flip_offsets[c], flip_offsets[c + 1]):
            other = key ^ flips[f]
            for b in range(base + starts[table + other], base + starts[table + other + 1]):
                diff = q ^ sorted_codes[b]
                d = _popcount(diff)
                if d > radius:
                    continue
                seen = False
                for c2 in range(c):
                    if thresholds[c2] < 0:
                        continue
                    mask = np.uint64(((np.int64(1) << widths[c2]) - 1) << shifts[c2])
                    if _popcount(diff & mask) <= thresholds[c2]:
                        seen = True
                        break
                if seen:
                    continue
                if found < capacity:
                    out_index[found] = order[b]
                    out_dist[found] = d
                found += 1
    return found


@jit
def _count_rows(
    pair_i: I32Array, pair_j: I32Array, group_start: I64Array, members: I64Array, rows: I64Array
) -> None:
    for p in range(pair_i.shape[0]):
        ga = pair_i[p]
        gb = pair_j[p]
        for x in range(group_start[ga], group_start[ga + 1]):
            for y in range(group_start[gb], group_start[gb + 1]):
                rows[min(members[x], members[y]) + 1] += 1


@jit
def _fill_rows(
    pair_i: I32Array,
    pair_j: I32Array,
    pair_d: U8Array,
    group_start: I64Array,
    members: I64Array,
    cursor: I64Array,
    out: I64Array,
) -> None:
    for p in range(pair_i.shape[0]):
        ga = pair_i[p]
        gb = pair_j[p]
        for x in range(group_start[ga], group_start[ga + 1]):
            for y in range(group_start[gb], group_start[gb + 1]):
                i = min(members[x], members[y])
                k = cursor[i]
                out[k, 0] = i
                out[k, 1] = max(members[x], members[y])
                out[k, 2] = pair_d[p]
                cursor[i] = k + 1


@jit
def _count_copies(group_start: I64Array, members: I64Array, rows: I64Array) -> None:
    for g in range(group_start.shape[0] - 1):
        first = group_start[g]
        size = group_start[g + 1] - first
        for k in range(size - 1):
            rows[members[first + k] + 1] += size - 1 - k


@jit
def _fill_copies(group_start: I64Array, members: I64Array, cursor: I64Array, out: I64Array) -> None:
    for g in range(group_start.shape[0] - 1):
        for x in range(group_start[g], group_start[g + 1]):
            i = members[x]
            for y in range(x + 1, group_start[g + 1]):
                k = cursor[i]
                out[k, 0] = i
                out[k, 1] = members[y]
                out[k, 2] = 0
                cursor[i] = k + 1


@jit
def _sort_rows(row_start: I64Array, out: I64Array) -> None:
    for i in range(row_start.shape[0] - 1):
        lo = row_start[i]
        hi = row_start[i + 1]
        if hi - lo < 2:
            continue
        if hi - lo <= 32:
            for k in range(lo + 1, hi):  # insertion sort: most rows are a handful
                j = out[k, 1]
                d = out[k, 2]
                q = k - 1
                while q >= lo and out[q, 1] > j:
                    out[q + 1, 1] = out[q, 1]
                    out[q + 1, 2] = out[q, 2]
                    q -= 1
                out[q + 1, 1] = j
                out[q + 1, 2] = d
        else:
            perm = np.argsort(out[lo:hi, 1])
            cols = out[lo:hi, 1:].copy()
            for k in range(hi - lo):
                out[lo + k, 1] = cols[perm[k], 0]
                out[lo + k, 2] = cols[perm[k], 1]


# --------------------------------------------------------------------------- tables


def _bit_order(codes: U64Array) -> I64Array:
    """Bit positions, most balanced (most informative for a key) first."""
    ones = _bit_ones(codes) if codes.shape[0] else np.zeros(64, dtype=np.int64)
    imbalance = np.abs(2 * ones - codes.shape[0])
    return np.argsort(imbalance, kind="stable").astype(np.int64)


def _layout(order: I64Array, widths: tuple[int, ...]) -> tuple[I64Array, tuple[int, ...]]:
    """Deal the bits round-robin to chunks so that correlated neighbours spread out.

    Returns source_bit (destination bit -> source bit, chunks contiguous from bit 0
    in the permuted code, unused bits last) and each chunk's shift.
    """
    dealt: list[list[int]] = [[] for _ in widths]
    rest = iter(order.tolist())
    for _ in range(max(widths)):
        for c, width in enumerate(widths):
            if len(dealt[c]) < width:
                dealt[c].append(next(rest))
    source = [bit for chunk in dealt for bit in chunk] + list(rest)
    shifts = tuple(int(s) for s in np.cumsum((0, *widths[:-1])))
    return np.array(source, dtype=np.int64), shifts


@dataclass(frozen=True)
class _Tables:
    """One sorted copy of the codes per chunk, with its key offsets."""

    source_bit: I64Array
    widths: tuple[int, ...]
    shifts: tuple[int, ...]
    sorted_codes: U64Array  # (chunks, n): permuted codes, each row sorted by its chunk key
    order: I32Array  # (chunks, n): input position of each sorted code
    starts: list[I64Array]  # per chunk, 2**width + 1 offsets into its row

    @classmethod
    def build(cls, codes: U64Array, widths: tuple[int, ...]) -> _Tables:
        if codes.shape[0] >= 2**31:
            raise ValueError("at most 2**31 - 1 codes: positions are stored as int32")
        source_bit, shifts = _layout(_bit_order(codes), widths)
        permuted = _permute(codes, source_bit)
        m, n = len(widths), codes.shape[0]
        sorted_codes = np.empty((m, n), dtype=np.uint64)
        order = np.empty((m, n), dtype=np.int32)
        starts: list[I64Array] = []
        for c, (width, shift) in enumerate(zip(widths, shifts, strict=True)):
            keys = ((permuted >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
            by_key = np.argsort(keys, kind="stable")
            order[c] = by_key
            sorted_codes[c] = permuted[by_key]
            counts = np.bincount(keys, minlength=1 << width)
            starts.append(np.concatenate(([0], np.cumsum(counts))).astype(np.int64))
        return cls(source_bit, widths, shifts, sorted_codes, order, starts)

    def chunk_mask(self, c: int) -> int:
        return ((1 << self.widths[c]) - 1) << self.shifts[c]


# --------------------------------------------------------------------------- join


def _workers() -> int:
    if hasattr(os, "sched_getaffinity"):  # honours taskset and container CPU limits
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _join_unique(
    codes: U64Array, radius: int, workers: int
) -> list[tuple[I32Array, I32Array, U8Array]]:
    """All pairs of distinct codes within radius, as (i, j, distance) chunks of arrays."""
    n = codes.shape[0]
    widths = _plan(n, radius, True)
    thresholds = _thresholds(widths, radius)
    tables = _Tables.build(codes, widths)

    def run(task: tuple[int, int, int]) -> list[tuple[I32Array, I32Array, U8Array]]:
        c, first, stop = task
        masks = np.array([tables.chunk_mask(c2) for c2 in range(c)], dtype=np.uint64)
        limits = np.array(thresholds[:c], dtype=np.int64)
        capacity = _JOIN_BUFFER
        out: list[tuple[I32Array, I32Array, U8Array]] = []
        while first < stop:
            out_i = np.empty(capacity, dtype=np.int32)
            out_j = np.empty(capacity, dtype=np.int32)
            out_d = np.empty(capacity, dtype=np.uint8)
            written, resume = _join_range(
                tables.sorted_codes[c], tables.order[c], tables.starts[c],
                tables.shifts[c], (1 << widths[c]) - 1, _flips(widths[c], thresholds[c]),
                first, stop, radius, masks, limits, out_i, out_j, out_d,
            )  # fmt: skip
            if written:
                out.append((out_i[:written].copy(), out_j[:written].copy(), out_d[:written].copy()))
            elif resume == first:  # one key alone overflows: give it room
                capacity *= 4
            first = resume
        return out

    step = max(1, -(-n // _RANGES_PER_CHUNK))
    tasks = [
        (c, first, min(n, first + step)) for c in range(len(widths)) for first in range(0, n, step)
    ]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [part for parts in pool.map(run, tasks) for part in parts]


def pairs_within(codes: npt.ArrayLike, radius: int, *, workers: int | None = None) -> I64Array:
    """Every pair i < j with hamming(codes[i], codes[j]) <= radius, exactly.

    Returns an int64 array of rows (i, j, distance) sorted by (i, j). workers is
    the number of threads (default: the CPUs this process may use).
    """
    arr = _as_codes(codes)
    radius = _check_radius(radius)
    n = arr.shape[0]
    if n < 2:
        return _empty_pairs()
    unique, inverse = np.unique(arr, return_inverse=True)
    members = np.argsort(inverse, kind="stable").astype(np.int64)
    group_start = np.concatenate(([0], np.cumsum(np.bincount(inverse)))).astype(np.int64)
    parts = _join_unique(unique, radius, workers or _workers()) if unique.shape[0] > 1 else []

    # Counting sort by i straight into the output, so peak memory is the
    # compact pair lists plus the result, never a second full-size copy.
    rows = np.zeros(n + 1, dtype=np.int64)
    _count_copies(group_start, members, rows)
    for pair_i, pair_j, _ in parts:
        _count_rows(pair_i, pair_j, group_start, members, rows)
    row_start = np.cumsum(rows)
    out = np.empty((int(row_start[-1]), 3), dtype=np.int64)
    cursor = row_start[:-1].copy()
    _fill_copies(group_start, members, cursor, out)
    while parts:
        pair_i, pair_j, pair_d = parts.pop()
        _fill_rows(pair_i, pair_j, pair_d, group_start, members, cursor, out)
    _sort_rows(row_start, out)
    return out


# --------------------------------------------------------------------------- index


class HammingIndex:
    """Codes held for repeated exact radius queries of single codes."""

    def __init__(
        self,
        codes: npt.ArrayLike,
        ids: npt.ArrayLike | None = None,
        *,
        tuned_for_radius: int = MATCHER_RADIUS,
    ) -> None:
        self._codes = _as_codes(codes)
        n = self._codes.shape[0]
        self._ids: I64Array = (
            np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        )
        if self._ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {self._ids.shape}")
        widths = _plan(max(n, 2), _check_radius(tuned_for_radius), False)
        self._tables = _Tables.build(self._codes, widths)
        t = self._tables
        self._shifts = np.array(t.shifts, dtype=np.int64)
        self._widths = np.array(t.widths, dtype=np.int64)
        self._starts = np.concatenate(t.starts)
        self._start_offsets = np.cumsum([0] + [s.shape[0] for s in t.starts[:-1]]).astype(np.int64)
        self._flat_codes = t.sorted_codes.reshape(-1)
        self._flat_order = t.order.reshape(-1)
        self._probes: dict[int, tuple[I64Array, I64Array, I64Array]] = {}

    def __len__(self) -> int:
        return int(self._codes.shape[0])

    def _probe_set(self, radius: int) -> tuple[I64Array, I64Array, I64Array]:
        if radius not in self._probes:
            widths = self._tables.widths
            thresholds = _thresholds(widths, radius)
            flips = [
                _flips(w, t) if t >= 0 else np.empty(0, dtype=np.int64)
                for w, t in zip(widths, thresholds, strict=True)
            ]
            offsets = np.cumsum([0] + [f.shape[0] for f in flips]).astype(np.int64)
            self._probes[radius] = (
                np.array(thresholds, dtype=np.int64),
                np.concatenate(flips),
                offsets,
            )
        return self._probes[radius]

    def query(self, code: int, radius: int) -> list[tuple[int, int]]:
        """(id, distance) of every held code within radius, by distance then id."""
        radius = _check_radius(radius)
        if not len(self):
            return []
        thresholds, flips, flip_offsets = self._probe_set(radius)
        query = np.uint64(int(code) & 0xFFFF_FFFF_FFFF_FFFF)
        capacity = 1024
        while True:
            index = np.empty(capacity, dtype=np.int64)
            dist = np.empty(capacity, dtype=np.int64)
            found = _query_kernel(
                query, radius, self._tables.source_bit, self._flat_codes, self._flat_order,
                self._starts, self._start_offsets, self._shifts, self._widths,
                thresholds, flips, flip_offsets, index, dist,
            )  # fmt: skip
            if found <= capacity:
                break
            capacity = found
        ids = self._ids[index[:found]]
        by = np.lexsort((ids, dist[:found]))
        return list(zip(ids[by].tolist(), dist[:found][by].tolist(), strict=True))
