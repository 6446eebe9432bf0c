"""The codes of every fingerprint in memory, for checks of one image at a time.

A webhook check or a lookup asks for the candidates of one image against the
whole index. The codes are held in exact Hamming indexes, built once;
fingerprints saved since (by this process or a sync elsewhere) are picked up
by the store's watermark, searched brute force in a small side list, and
folded into a rebuild once it grows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from connector.core.columns import FingerprintColumns
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import IndexStore
from connector.core.search import HammingIndex
from connector.core.tiers import CANDIDATE_RADIUS
from connector.engine.clusters import Shape, shape_at

__all__ = ["Candidate", "LiveIndex", "MatchIndex"]

log = structlog.get_logger(__name__)

# Fingerprints saved since the last build are searched one by one; past this
# many (or a twentieth of the index) the structure is rebuilt.
SIDE_LIMIT = 2000


@dataclass(frozen=True)
class Candidate:
    sha256: str
    phash_distance: int
    dhash_distance: int


def _distance(codes_a: tuple[int, ...], codes_b: tuple[int, ...]) -> int:
    return min((x ^ y).bit_count() for x in codes_a for y in codes_b)


class MatchIndex:
    """Every fingerprint's pHash and dHash variants (as oriented, border-trimmed,
    central part) in exact Hamming indexes, plus payload digests: the
    candidates of one image within the matcher's radius, found as
    `matcher.find_candidates` would find them in a whole-index run.

    The fingerprints are held as columns (`FingerprintColumns`): those of the
    build, then those added since ("the side"); a row's position in that order
    is its owner number in the Hamming indexes."""

    def __init__(self, columns: FingerprintColumns, watermark: int) -> None:
        self.base = columns
        self.built = len(columns)
        self.watermark = watermark
        self.hash_indexes = {kind: self._build(kind) for kind in ("phash", "dhash")}
        self.payloads = columns.payload_digest.lookup()
        self._pixel_lookup: Mapping[str, npt.NDArray[np.int64]] | None = None
        # Full-pixel digests computed since the build, by owner.
        self.pixel_digests: dict[int, str] = {}
        # Fingerprints added since the build: their columns, positions by
        # content, payload digests, and code variants with their owners,
        # searched by brute force (XOR and popcount).
        self._side_parts: list[FingerprintColumns] = []
        self._side_table: FingerprintColumns | None = None
        self._side_position: dict[str, int] = {}
        self._side_payloads: dict[str, list[int]] = {}
        self._side_codes: dict[str, list[npt.NDArray[np.uint64]]] = {"phash": [], "dhash": []}
        self._side_owners: dict[str, list[npt.NDArray[np.int64]]] = {"phash": [], "dhash": []}
        self._side_arrays: dict[str, tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = {}

    def __len__(self) -> int:
        return self.built + len(self._side_position)

    def _build(self, kind: str) -> HammingIndex:
        codes, owners = self.base.variants(kind)
        return HammingIndex(codes, owners)

    @property
    def side(self) -> int:
        return len(self._side_position)

    def _side_columns(self) -> FingerprintColumns:
        if self._side_table is None:
            self._side_table = FingerprintColumns.concat(self._side_parts)
            self._side_parts = [self._side_table]
        return self._side_table

    def columns(self) -> FingerprintColumns:
        """Every fingerprint held, in owner order (for a rebuild)."""
        if not self._side_position:
            return self.base
        return FingerprintColumns.concat([self.base, self._side_columns()])

    def _at(self, owner: int) -> tuple[FingerprintColumns, int]:
        if owner < self.built:
            return self.base, owner
        return self._side_columns(), owner - self.built

    def position(self, sha256: str) -> int | None:
        """The owner number of a content, or None."""
        at = self.base.find(sha256)
        return at if at is not None else self._side_position.get(sha256)

    def add_columns(self, columns: FingerprintColumns, watermark: int) -> None:
        """Fingerprints saved since: those not held yet join the side."""
        fresh: list[int] = []
        seen: set[str] = set()
        for at, sha in enumerate(columns.sha256.tolist()):
            sha256 = sha.decode()
            if self.position(sha256) is None and sha256 not in seen:
                seen.add(sha256)
                fresh.append(at)
        if fresh:
            added = columns.take(np.array(fresh, dtype=np.int64))
            first = len(self)
            for at in range(len(added)):
                self._side_position[added.sha(at)] = first + at
            for owner, digest in zip(
                added.payload_digest.owners.tolist(),
                added.payload_digest.values.tolist(),
                strict=True,
            ):
                self._side_payloads.setdefault(digest.decode(), []).append(first + owner)
            for kind in ("phash", "dhash"):
                codes, owners = added.variants(kind)
                self._side_codes[kind].append(codes)
                self._side_owners[kind].append(owners + first)
            self._side_parts.append(added)
            self._side_table = None
            self._side_arrays.clear()
            self._pixel_lookup = None
        self.watermark = max(self.watermark, watermark)

    def add_rows(self, rows: Iterable[dict[str, Any]], watermark: int) -> None:
        """`add_columns` for rows as `fingerprint_rows_after` gives them."""
        self.add_columns(FingerprintColumns.from_rows(rows), watermark)

    def _side(self, kind: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        if kind not in self._side_arrays:
            codes, owners = self._side_codes[kind], self._side_owners[kind]
            self._side_arrays[kind] = (
                np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint64),
                np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64),
            )
        return self._side_arrays[kind]

    def pixel_digest(self, sha256: str) -> str | None:
        at = self.position(sha256)
        if at is None:
            return None
        if at in self.pixel_digests:
            return self.pixel_digests[at]
        table, row = self._at(at)
        return table.pixel_digest.get(row)

    def note_pixel_digest(self, sha256: str, digest: str) -> None:
        at = self.position(sha256)
        if at is not None and self.pixel_digest(sha256) is None:
            self.pixel_digests[at] = digest

    def shape(self, sha256: str) -> Shape | None:
        at = self.position(sha256)
        if at is None:
            return None
        table, row = self._at(at)
        return shape_at(table, row)

    def candidates(self, fingerprint: Fingerprint) -> list[Candidate]:
        """Other contents within the candidate radius on pHash or dHash, or with
        the same payload digest; each with both distances."""
        query = {kind: fingerprint.codes(kind) for kind in ("phash", "dhash")}
        return self._near(fingerprint.sha256, query, fingerprint.flat, fingerprint.payload_digest)

    def candidates_at(self, table: FingerprintColumns, row: int) -> list[Candidate]:
        """`candidates` of a fingerprint given as a row of columns, and also
        the contents with the same full-pixel digest (as
        `matcher.find_candidates` pairs them)."""
        query = {kind: table.codes(row, kind) for kind in ("phash", "dhash")}
        same: set[int] = set()
        digest = table.pixel_digest.get(row)
        if digest is not None:
            if self._pixel_lookup is None:
                self._pixel_lookup = self.columns().pixel_digest.lookup()
            owners = self._pixel_lookup.get(digest)
            same.update(owners.tolist() if owners is not None else ())
        return self._near(
            table.sha(row), query, bool(table.flat[row]), table.payload_digest.get(row), same
        )

    def _near(
        self,
        sha256: str,
        query: dict[str, tuple[int, ...]],
        flat: bool,
        payload_digest: str | None,
        also: Iterable[int] = (),
    ) -> list[Candidate]:
        owners: set[int] = set(also)
        if not flat:
            for kind, codes in query.items():
                index = self.hash_indexes[kind]
                for code in codes:
                    owners.update(owner for owner, _ in index.query(code, CANDIDATE_RADIUS))
                side_codes, side_owners = self._side(kind)
                if side_codes.size:
                    for code in codes:
                        near = np.bitwise_count(side_codes ^ np.uint64(code)) <= CANDIDATE_RADIUS
                        owners.update(side_owners[near].tolist())
        if payload_digest is not None:
            same = self.payloads.get(payload_digest)
            if same is not None:
                owners.update(int(owner) for owner in same)
            owners.update(self._side_payloads.get(payload_digest, ()))
        out = []
        for owner in sorted(owners):
            table, row = self._at(owner)
            other = table.sha(row)
            if other == sha256:
                continue
            out.append(
                Candidate(
                    other,
                    _distance(query["phash"], table.codes(row, "phash")),
                    _distance(query["dhash"], table.codes(row, "dhash")),
                )
            )
        return out


class LiveIndex:
    """One MatchIndex shared by threads, kept up to date with the store."""

    def __init__(self) -> None:
        self._index: MatchIndex | None = None
        self._lock = threading.Lock()

    def current(self, store: IndexStore) -> MatchIndex:
        """The structure, up to date with every fingerprint the store holds."""
        with self._lock:
            watermark = store.fingerprint_watermark()
            index = self._index
            if index is None:
                index = MatchIndex(store.fingerprint_columns(RECIPE, after=0), watermark)
                log.info("check.index_built", fingerprints=len(index))
            elif watermark > index.watermark:
                index.add_columns(
                    store.fingerprint_columns(RECIPE, after=index.watermark), watermark
                )
                if index.side > max(SIDE_LIMIT, len(index) // 20):
                    noted = index.pixel_digests  # the owners stay the same
                    index = MatchIndex(index.columns(), index.watermark)
                    index.pixel_digests.update(noted)
                    log.info("check.index_rebuilt", fingerprints=len(index))
            self._index = index
            return index

    def note_pixel_digest(self, sha256: str, digest: str) -> None:
        with self._lock:
            if self._index is not None:
                self._index.note_pixel_digest(sha256, digest)

    def clear(self) -> None:
        with self._lock:
            self._index = None
