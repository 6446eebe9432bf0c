"""The codes of every fingerprint in memory, for checks of one image at a time.

A webhook check or a lookup asks for the candidates of one image against the
whole index. The codes are held in exact Hamming indexes, built once;
fingerprints saved since (by this process or a sync elsewhere) are picked up
by the store's watermark, searched brute force in a small side list, and
folded into a rebuild once it grows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from connector.core.fingerprint import RECIPE, Fingerprint, codes_of
from connector.core.index import IndexStore
from connector.core.search import HammingIndex
from connector.core.tiers import CANDIDATE_RADIUS
from connector.engine.clusters import Shape

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
    central part) in exact Hamming indexes, plus payload and pixel digests:
    the candidates of one image within the matcher's radius, found as
    `matcher.find_candidates` would find them in a whole-index run."""

    def __init__(self, rows: list[dict[str, Any]], watermark: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.position: dict[str, int] = {}
        self.payloads: dict[str, list[int]] = {}
        self.pixels: dict[str, list[int]] = {}
        for row in rows:
            self._add(row)
        self.built = len(self.rows)
        self.watermark = watermark
        self.hash_indexes = {kind: self._build(kind) for kind in ("phash", "dhash")}
        # Fingerprints added since the build ("the side list"): their code
        # variants and owners, searched by brute force (XOR and popcount).
        self._side_codes: dict[str, list[int]] = {"phash": [], "dhash": []}
        self._side_owners: dict[str, list[int]] = {"phash": [], "dhash": []}
        self._side_arrays: dict[str, tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = {}

    def _add(self, row: dict[str, Any]) -> None:
        sha = row["sha256"]
        if sha in self.position:
            return
        self.position[sha] = len(self.rows)
        self.rows.append(row)
        for key, table in (("payload_digest", self.payloads), ("pixel_digest", self.pixels)):
            if row.get(key) is not None:
                table.setdefault(row[key], []).append(self.position[sha])

    def _build(self, kind: str) -> HammingIndex:
        codes: list[int] = []
        owners: list[int] = []
        for owner, row in enumerate(self.rows):
            if row["flat"]:  # flat images all hash alike
                continue
            for variant in codes_of(row, kind):
                codes.append(variant)
                owners.append(owner)
        return HammingIndex(np.array(codes, dtype=np.uint64), np.array(owners, dtype=np.int64))

    @property
    def side(self) -> int:
        return len(self.rows) - self.built

    def add_rows(self, rows: Iterable[dict[str, Any]], watermark: int) -> None:
        before = len(self.rows)
        for row in rows:
            self._add(row)
        for owner in range(before, len(self.rows)):
            if self.rows[owner]["flat"]:
                continue
            for kind in ("phash", "dhash"):
                for variant in codes_of(self.rows[owner], kind):
                    self._side_codes[kind].append(variant)
                    self._side_owners[kind].append(owner)
        if len(self.rows) > before:
            self._side_arrays.clear()
        self.watermark = max(self.watermark, watermark)

    def _side(self, kind: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        if kind not in self._side_arrays:
            self._side_arrays[kind] = (
                np.array(self._side_codes[kind], dtype=np.uint64),
                np.array(self._side_owners[kind], dtype=np.int64),
            )
        return self._side_arrays[kind]

    def note_pixel_digest(self, sha256: str, digest: str) -> None:
        at = self.position.get(sha256)
        if at is not None and self.rows[at].get("pixel_digest") is None:
            self.rows[at]["pixel_digest"] = digest
            self.pixels.setdefault(digest, []).append(at)

    def shape(self, sha256: str) -> Shape | None:
        at = self.position.get(sha256)
        if at is None:
            return None
        row = self.rows[at]
        return Shape(
            row["width"], row["height"], row["format"], row["has_capture"], row["size_bytes"]
        )

    def candidates(self, fingerprint: Fingerprint) -> list[Candidate]:
        """Other contents within the candidate radius on pHash or dHash, or with
        the same payload or pixel digest; each with both distances."""
        owners: set[int] = set()
        query = {kind: fingerprint.codes(kind) for kind in ("phash", "dhash")}
        if not fingerprint.flat:
            for kind, codes in query.items():
                index = self.hash_indexes[kind]
                for code in codes:
                    owners.update(owner for owner, _ in index.query(code, CANDIDATE_RADIUS))
                side_codes, side_owners = self._side(kind)
                if side_codes.size:
                    for code in codes:
                        near = np.bitwise_count(side_codes ^ np.uint64(code)) <= CANDIDATE_RADIUS
                        owners.update(side_owners[near].tolist())
        if fingerprint.payload_digest is not None:
            owners.update(self.payloads.get(fingerprint.payload_digest, ()))
        out = []
        for owner in sorted(owners):
            row = self.rows[owner]
            if row["sha256"] == fingerprint.sha256:
                continue
            out.append(
                Candidate(
                    row["sha256"],
                    _distance(query["phash"], codes_of(row, "phash")),
                    _distance(query["dhash"], codes_of(row, "dhash")),
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
                index = MatchIndex(store.fingerprint_rows_after(RECIPE, 0), watermark)
                log.info("check.index_built", fingerprints=len(index.rows))
            elif watermark > index.watermark:
                index.add_rows(store.fingerprint_rows_after(RECIPE, index.watermark), watermark)
                if index.side > max(SIDE_LIMIT, len(index.rows) // 20):
                    index = MatchIndex(index.rows, index.watermark)
                    log.info("check.index_rebuilt", fingerprints=len(index.rows))
            self._index = index
            return index

    def note_pixel_digest(self, sha256: str, digest: str) -> None:
        with self._lock:
            if self._index is not None:
                self._index.note_pixel_digest(sha256, digest)

    def clear(self) -> None:
        with self._lock:
            self._index = None
