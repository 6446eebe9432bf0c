"""Every fingerprint's codes as columns: what a whole-index search reads.

A row dict per fingerprint (`IndexStore.fingerprint_rows`) costs about 1 KB
in Python objects; a million of them do not fit the 2 GB a scan of a million
assets may take. `FingerprintColumns` holds the same facts in numpy arrays,
filled chunk by chunk from a database cursor (`ColumnsBuilder`), about
200 bytes a fingerprint:

- sha256 as fixed-width ASCII bytes (numpy "S64" for real digests): 64 bytes
  a row and no Python object per row. An object array of str costs 8 bytes a
  pointer plus 113 bytes a str; raw 32-byte digests would halve the 64 but
  not every index key is a hex digest (tests and old tools use others), and
  the bytes sort as the text does, so a sorted column is searched directly.
- pHash and dHash as (n, 3) uint64: as oriented, border-trimmed, central
  part (`codes_of`'s order), each with a validity mask: the trimmed variant is
  NULL for an image without a uniform border.
- payload and pixel digests as `Digests`: only the non-null ones, with their
  row positions (the pixel digest is NULL for most fingerprints).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["COLUMNS_SELECT", "FETCH_CHUNK", "ColumnsBuilder", "Digests", "FingerprintColumns"]

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Text = npt.NDArray[np.bytes_]

KINDS = ("phash", "dhash")
VARIANTS = ("", "_trim", "_inner")  # codes_of's order
# Rows read from a cursor at a time: the Python tuples of one chunk only.
FETCH_CHUNK = 20_000

# The select list both stores read the columns with, in `ColumnsBuilder.add`'s
# order: the NULLs of the code variants are read as 0 plus a flag.
COLUMNS_SELECT = """sha256, format, width, height, size_bytes, flat,
    capture != '{}' AS has_capture, payload_digest, pixel_digest,
    COALESCE(phash, 0), phash IS NOT NULL,
    COALESCE(phash_trim, 0), phash_trim IS NOT NULL,
    COALESCE(phash_inner, 0), phash_inner IS NOT NULL,
    COALESCE(dhash, 0), dhash IS NOT NULL,
    COALESCE(dhash_trim, 0), dhash_trim IS NOT NULL,
    COALESCE(dhash_inner, 0), dhash_inner IS NOT NULL"""


def _text(values: Sequence[str]) -> Text:
    # Width of the longest value: nothing is ever cut short.
    if not values:
        return np.array([], dtype="S1")
    return np.array([value.encode() for value in values], dtype=np.bytes_)


@dataclass(frozen=True, eq=False)
class Digests:
    """The non-null digests of one column: `owners` (row positions, ascending)
    and their `values`."""

    owners: I64
    values: Text

    @classmethod
    def empty(cls) -> Digests:
        return cls(np.zeros(0, dtype=np.int64), np.array([], dtype="S1"))

    def __len__(self) -> int:
        return int(self.owners.size)

    def get(self, position: int) -> str | None:
        at = int(np.searchsorted(self.owners, position))
        if at < self.owners.size and int(self.owners[at]) == position:
            return bytes(self.values[at]).decode()
        return None

    def groups(self) -> Iterator[I64]:
        """Owners (ascending) of each digest held by two rows or more."""
        if self.values.size < 2:
            return
        order = np.argsort(self.values, kind="stable")
        ordered = self.values[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], ordered.size]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if end - start > 1:
                yield np.sort(self.owners[order[start:end]])

    def lookup(self) -> Mapping[str, I64]:
        """Digest -> owners, for one digest at a time."""
        return _DigestLookup(self)


class _DigestLookup(Mapping[str, I64]):
    def __init__(self, digests: Digests) -> None:
        self._order = np.argsort(digests.values, kind="stable")
        self._sorted = digests.values[self._order]
        self._owners = digests.owners

    def __getitem__(self, digest: str) -> I64:
        key = np.array(digest.encode(), dtype=np.bytes_)
        low = int(np.searchsorted(self._sorted, key, side="left"))
        high = int(np.searchsorted(self._sorted, key, side="right"))
        if low == high:
            raise KeyError(digest)
        return np.sort(self._owners[self._order[low:high]])

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(bytes(value).decode() for value in self._sorted))

    def __len__(self) -> int:
        return int(np.unique(self._sorted).size)


@dataclass(frozen=True, eq=False)
class FingerprintColumns:
    """The facts `fingerprint_rows` gives (no thumbnails), one array each,
    row i of every array the same fingerprint."""

    sha256: Text
    phash: U64  # (n, 3): as oriented, border-trimmed, central part
    phash_valid: Bools  # (n, 3): False where the variant is NULL
    dhash: U64
    dhash_valid: Bools
    flat: Bools
    width: npt.NDArray[np.int32]
    height: npt.NDArray[np.int32]
    size_bytes: I64
    format_code: npt.NDArray[np.int16]  # index into `formats`
    formats: tuple[str, ...]
    has_capture: Bools
    payload_digest: Digests
    pixel_digest: Digests
    _positions: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.sha256.size)

    # -- one row -------------------------------------------------------------

    def sha(self, position: int) -> str:
        return bytes(self.sha256[position]).decode()

    def format(self, position: int) -> str:
        return self.formats[int(self.format_code[position])]

    def codes(self, position: int, kind: str) -> tuple[int, ...]:
        """Variants of one code, as `codes_of` gives them from a row."""
        codes, valid = self._codes(kind)
        return tuple(
            int(code)
            for code, ok in zip(codes[position].tolist(), valid[position].tolist(), strict=True)
            if ok
        )

    def row(self, position: int) -> dict[str, Any]:
        """The row as `fingerprint_rows` gives it."""
        out: dict[str, Any] = {
            "sha256": self.sha(position),
            "format": self.format(position),
            "width": int(self.width[position]),
            "height": int(self.height[position]),
            "payload_digest": self.payload_digest.get(position),
            "pixel_digest": self.pixel_digest.get(position),
        }
        for kind in KINDS:
            codes, valid = self._codes(kind)
            for column, suffix in enumerate(VARIANTS):
                ok = bool(valid[position, column])
                out[kind + suffix] = int(codes[position, column]) if ok else None
        out["flat"] = bool(self.flat[position])
        out["size_bytes"] = int(self.size_bytes[position])
        out["has_capture"] = bool(self.has_capture[position])
        return out

    def find(self, sha256: str) -> int | None:
        """The position of a content, or None (a binary search)."""
        if "order" not in self._positions:
            keys = self.sha256
            ascending = keys.size < 2 or bool(np.all(keys[:-1] <= keys[1:]))
            order = None if ascending else np.argsort(keys, kind="stable")
            self._positions["order"] = order
            self._positions["sorted"] = keys if order is None else keys[order]
        order, ordered = self._positions["order"], self._positions["sorted"]
        encoded = sha256.encode()
        if len(encoded) > ordered.dtype.itemsize or ordered.size == 0:
            return None
        at = int(np.searchsorted(ordered, np.array(encoded, dtype=np.bytes_)))
        if at < ordered.size and bytes(ordered[at]) == encoded:
            return at if order is None else int(order[at])
        return None

    # -- whole columns ---------------------------------------------------------

    def _codes(self, kind: str) -> tuple[U64, Bools]:
        if kind == "phash":
            return self.phash, self.phash_valid
        if kind == "dhash":
            return self.dhash, self.dhash_valid
        raise ValueError(f"no code {kind!r}")

    def variants(self, kind: str) -> tuple[U64, I64]:
        """Every variant of one code of every image that is not flat (flat
        images all hash alike), with the row it belongs to."""
        codes, valid = self._codes(kind)
        keep = valid & ~self.flat[:, None]
        owners = np.broadcast_to(np.arange(len(self), dtype=np.int64)[:, None], keep.shape)
        return codes[keep], owners[keep]

    def distances(self, left: I64, right: I64, kind: str) -> I64:
        """Per pair of rows: the smallest Hamming distance between any variant
        of one's code and any of the other's (`matcher.distance`)."""
        codes, valid = self._codes(kind)
        best = np.full(left.size, 65, dtype=np.int64)  # no pair of variants: above any distance
        for a in range(3):
            for b in range(3):
                near = np.bitwise_count(codes[left, a] ^ codes[right, b]).astype(np.int64)
                ok = valid[left, a] & valid[right, b]
                best = np.where(ok, np.minimum(best, near), best)
        return best

    def take(self, positions: I64) -> FingerprintColumns:
        """The rows at `positions` (ascending), as a table of their own."""
        keep = np.zeros(len(self), dtype=np.bool_)
        keep[positions] = True
        renumber = np.cumsum(keep) - 1

        def digests(found: Digests) -> Digests:
            mask = keep[found.owners]
            return Digests(renumber[found.owners[mask]].astype(np.int64), found.values[mask])

        return FingerprintColumns(
            sha256=self.sha256[positions],
            phash=self.phash[positions],
            phash_valid=self.phash_valid[positions],
            dhash=self.dhash[positions],
            dhash_valid=self.dhash_valid[positions],
            flat=self.flat[positions],
            width=self.width[positions],
            height=self.height[positions],
            size_bytes=self.size_bytes[positions],
            format_code=self.format_code[positions],
            formats=self.formats,
            has_capture=self.has_capture[positions],
            payload_digest=digests(self.payload_digest),
            pixel_digest=digests(self.pixel_digest),
        )

    @classmethod
    def concat(cls, parts: Sequence[FingerprintColumns]) -> FingerprintColumns:
        """The rows of every part, in order."""
        if not parts:
            return ColumnsBuilder().build()
        if len(parts) == 1:
            return parts[0]
        formats: list[str] = []
        codes: list[npt.NDArray[np.int16]] = []
        for part in parts:
            mapping = []
            for name in part.formats:
                if name not in formats:
                    formats.append(name)
                mapping.append(formats.index(name))
            table = np.array(mapping or [0], dtype=np.int16)
            codes.append(table[part.format_code] if part.format_code.size else part.format_code)
        starts = np.cumsum([0] + [len(part) for part in parts])

        def digests(name: str) -> Digests:
            found = [getattr(part, name) for part in parts]
            return Digests(
                np.concatenate([d.owners + start for d, start in zip(found, starts, strict=False)]),
                np.concatenate([d.values for d in found]),
            )

        def joined(name: str) -> Any:
            return np.concatenate([getattr(part, name) for part in parts])

        return cls(
            sha256=joined("sha256"),
            phash=joined("phash"),
            phash_valid=joined("phash_valid"),
            dhash=joined("dhash"),
            dhash_valid=joined("dhash_valid"),
            flat=joined("flat"),
            width=joined("width"),
            height=joined("height"),
            size_bytes=joined("size_bytes"),
            format_code=np.concatenate(codes).astype(np.int16),
            formats=tuple(formats),
            has_capture=joined("has_capture"),
            payload_digest=digests("payload_digest"),
            pixel_digest=digests("pixel_digest"),
        )

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> FingerprintColumns:
        """The columns of rows as `fingerprint_rows` gives them (unsigned
        codes); missing shape facts are 0, "" and False."""
        builder = ColumnsBuilder()
        chunk: list[tuple[Any, ...]] = []
        for row in rows:
            values: list[Any] = [
                row["sha256"],
                row.get("format", ""),
                row.get("width", 0),
                row.get("height", 0),
                row.get("size_bytes", 0),
                row["flat"],
                row.get("has_capture", False),
                row.get("payload_digest"),
                row.get("pixel_digest"),
            ]
            for kind in KINDS:
                for suffix in VARIANTS:
                    code = row[kind + suffix]
                    values += [0, False] if code is None else [code, True]
            chunk.append(tuple(values))
            if len(chunk) >= FETCH_CHUNK:
                builder.add(chunk, signed=False)
                chunk = []
        builder.add(chunk, signed=False)
        return builder.build()


class ColumnsBuilder:
    """Columns filled a chunk of cursor rows at a time (`COLUMNS_SELECT`'s
    order, codes as the stores keep them: signed 64-bit), so that only one
    chunk's tuples are ever alive."""

    def __init__(self) -> None:
        self._parts: list[dict[str, Any]] = []
        self._formats: dict[str, int] = {}
        self._count = 0

    def add(self, rows: Sequence[Sequence[Any]], *, signed: bool = True) -> None:
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        base = self._count
        self._count += len(rows)
        part: dict[str, Any] = {
            "sha256": _text(columns[0]),
            "format_code": np.array(
                [self._formats.setdefault(name, len(self._formats)) for name in columns[1]],
                dtype=np.int16,
            ),
            "width": np.array(columns[2], dtype=np.int32),
            "height": np.array(columns[3], dtype=np.int32),
            "size_bytes": np.array([value or 0 for value in columns[4]], dtype=np.int64),
            "flat": np.array(columns[5], dtype=np.bool_),
            "has_capture": np.array(columns[6], dtype=np.bool_),
        }
        for name, at in (("payload_digest", 7), ("pixel_digest", 8)):
            present = [
                (base + i, value) for i, value in enumerate(columns[at]) if value is not None
            ]
            part[name] = Digests(
                np.array([i for i, _ in present], dtype=np.int64),
                _text([value for _, value in present]),
            )
        for k, kind in enumerate(KINDS):
            first = 9 + 6 * k
            stacked = [columns[first + 2 * v] for v in range(3)]
            if signed:
                codes = np.array(stacked, dtype=np.int64).T.view(np.uint64)
            else:
                codes = np.array(stacked, dtype=np.uint64).T
            part[kind] = np.ascontiguousarray(codes)
            part[f"{kind}_valid"] = np.ascontiguousarray(
                np.array([columns[first + 2 * v + 1] for v in range(3)], dtype=np.bool_).T
            )
        self._parts.append(part)

    def build(self) -> FingerprintColumns:
        parts = self._parts
        self._parts = []

        def joined(name: str, dtype: Any, shape: tuple[int, ...] = (0,)) -> Any:
            if not parts:
                return np.zeros(shape, dtype=dtype)
            out = np.concatenate([part.pop(name) for part in parts])
            return out if out.dtype.kind == "S" else out.astype(dtype, copy=False)

        def digests(name: str) -> Digests:
            found = [part.pop(name) for part in parts]
            if not found:
                return Digests.empty()
            return Digests(
                np.concatenate([d.owners for d in found]),
                np.concatenate([d.values for d in found]),
            )

        return FingerprintColumns(
            sha256=joined("sha256", np.bytes_) if parts else np.array([], dtype="S1"),
            phash=joined("phash", np.uint64, (0, 3)),
            phash_valid=joined("phash_valid", np.bool_, (0, 3)),
            dhash=joined("dhash", np.uint64, (0, 3)),
            dhash_valid=joined("dhash_valid", np.bool_, (0, 3)),
            flat=joined("flat", np.bool_),
            width=joined("width", np.int32),
            height=joined("height", np.int32),
            size_bytes=joined("size_bytes", np.int64),
            format_code=joined("format_code", np.int16),
            formats=tuple(self._formats),
            has_capture=joined("has_capture", np.bool_),
            payload_digest=digests("payload_digest"),
            pixel_digest=digests("pixel_digest"),
        )
