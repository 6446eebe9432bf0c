"""Whether the originals behind a candidate pair are the same bytes.

A fingerprint is taken from the smallest rendition a platform serves, so one
photo uploaded byte for byte to WordPress and to a shared folder has two content
digests (WordPress's 768 px rendition, the folder's file) and, without this
step, the two settle as `near_identical`. For each candidate pair this step
finds what is known of the two originals without fetching anything:

- an original's SHA-256: the fetched bytes were the original (the platform's
  size for the original is theirs, and so are its width and height where it
  reports them), the platform reports a SHA-256, or damdup read the original
  before (kept per asset version in the index);
- the original's byte size and the platform's checksums (S3 ETag and Azure
  Content-MD5, SharePoint's QuickXorHash, CKAN's and ResourceSpace's hashes).

Two known SHA-256 decide. Otherwise sizes that differ, or checksums of one
algorithm that differ, mean different bytes with nothing fetched; an MD5,
SHA-1 or SHA-256 that agrees on equal sizes means the same bytes. What is
still open is settled by reading the unknown originals, and only when a fetch
can pay: the pair's codes are within `SAME_PIXELS_RADIUS` (the same bytes are
the same picture) and no size rules it out. Each original read is hashed and
recorded for its asset, so it is never fetched again for that version; bytes a
pixel digest will need next are kept for it instead of being fetched twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from connector.core.fingerprint import Fingerprint, sha256_hex
from connector.core.index import AssetRow, IndexStore
from connector.core.tiers import SAME_PIXELS_RADIUS, Evidence

log = structlog.get_logger(__name__)

# Checksums whose agreement on equal sizes is taken as the same bytes. A
# QuickXorHash is no cryptographic digest: it can only tell bytes apart.
AGREEING = frozenset({"md5", "sha1", "sha256"})
_CHECKSUM = re.compile(r"([a-z0-9-]+):([0-9a-f]+)")
# Bytes of originals kept in memory between reading them here and their pixel
# digest; beyond it an original is read again for its digest.
HELD_BYTES = 128 * 1024 * 1024


class ReadsOriginals(Protocol):
    """The engine's reader of originals (`scan.OriginalReader`)."""

    def __call__(self, sha256: str) -> bytes | None: ...

    def read(self, sha256: str) -> tuple[AssetRow, bytes] | None: ...


@dataclass
class Original:
    """What is known of the original file behind one content digest."""

    sha256: str | None = None
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    how: str = ""  # where the SHA-256 came from, for the evidence record
    conflict: bool = False  # assets with this content report different originals

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "checksums": dict(sorted(self.checksums.items())),
            "known_from": self.how or None,
        }


def checksum(text: str | None) -> tuple[str, str] | None:
    """("md5", hex) of an "algo:hex" content hash; None for anything else."""
    found = _CHECKSUM.fullmatch((text or "").strip().lower())
    return (found.group(1), found.group(2)) if found else None


def _is_original(asset: AssetRow, fingerprint: Fingerprint) -> bool:
    """Whether the fingerprinted bytes were the asset's original: the platform's
    size of the original is theirs, and so are its width and height (either
    way round: EXIF orientation) when it reports them. A rendition is smaller."""
    if asset.size_bytes is None or asset.size_bytes != fingerprint.size_bytes:
        return False
    if asset.width and asset.height:
        return sorted((asset.width, asset.height)) == sorted(
            (fingerprint.width, fingerprint.height)
        )
    return True


def _merge(original: Original, field_name: str, value: Any) -> None:
    if value is None:
        return
    known = getattr(original, field_name)
    if known is None:
        setattr(original, field_name, value)
    elif known != value:
        original.conflict = True


def describe(
    fingerprint: Fingerprint, assets: Iterable[AssetRow], recorded: dict[str, tuple[str, int]]
) -> Original:
    """What the live assets with this content say of their original."""
    original = Original()
    for asset in assets:
        if asset.sha256 != fingerprint.sha256:
            continue
        sha: str | None = None
        how = ""
        size = asset.size_bytes
        parsed = checksum(asset.content_hash)
        if asset.key in recorded:
            sha, size = recorded[asset.key]
            how = "read to settle a pair"
        elif parsed is not None and parsed[0] == "sha256":
            sha, how = parsed[1], "the platform's SHA-256"
        elif _is_original(asset, fingerprint):
            sha, how = fingerprint.sha256, "the fetched bytes were the original"
        if sha is not None and original.sha256 is None:
            original.how = how
        _merge(original, "sha256", sha)
        _merge(original, "size_bytes", size)
        if parsed is not None:
            algorithm, digest = parsed
            if original.checksums.setdefault(algorithm, digest) != digest:
                original.conflict = True
        if asset.width and asset.height and original.width is None:
            original.width, original.height = asset.width, asset.height
    if original.width is None:
        original.width, original.height = fingerprint.width, fingerprint.height
    return original


def same_bytes(a: Original, b: Original) -> bool | None:
    """Whether the two originals are the same bytes, from what is known
    without a fetch; None when only reading them can tell."""
    if a.conflict or b.conflict:
        return False  # no single original on a side: leave it to the pixel check
    if a.sha256 is not None and b.sha256 is not None:
        return a.sha256 == b.sha256
    if a.size_bytes is not None and b.size_bytes is not None and a.size_bytes != b.size_bytes:
        return False
    shared = a.checksums.keys() & b.checksums.keys()
    if any(a.checksums[name] != b.checksums[name] for name in shared):
        return False
    if a.size_bytes is not None and a.size_bytes == b.size_bytes and shared & AGREEING:
        return True
    return None


def same_shape(a: Original, b: Original) -> bool:
    """The originals have the same width and height (either way round when a
    platform reports the stored, not the EXIF-oriented, size)."""
    if not (a.width and a.height and b.width and b.height):
        return False
    return sorted((a.width, a.height)) == sorted((b.width, b.height))


class Originals:
    """The originals step of one match: what is known, what must be read, and
    the bytes read, recorded once per asset version."""

    def __init__(
        self,
        store: IndexStore,
        reader: ReadsOriginals,
        load: Callable[[str], Fingerprint],
        *,
        record: bool = True,
    ) -> None:
        """`record=False`: the originals read are not recorded (a lookup)."""
        self.store = store
        self.record_reads = record
        self.reader = reader
        self.load = load
        self.known: dict[str, Original] = {}
        self.fetched_bytes = 0
        self.fetched = 0
        self._held: dict[str, bytes] = {}
        self._held_size = 0
        self._unreadable: set[str] = set()

    def prepare(self, sha256s: Iterable[str]) -> None:
        # Only the digests not known yet: no copy of `known`, which holds every
        # digest of the match's pairs and is asked about once per side of a pair.
        wanted = sorted({sha for sha in sha256s if sha not in self.known})
        if not wanted:
            return
        assets = self.store.live_assets_with(wanted)
        recorded = self.store.originals(assets)
        by_sha: dict[str, list[AssetRow]] = {}
        for asset in assets:
            by_sha.setdefault(asset.sha256 or "", []).append(asset)
        for sha in wanted:
            self.known[sha] = describe(self.load(sha), by_sha.get(sha, []), recorded)

    def original(self, sha256: str) -> Original:
        if sha256 not in self.known:
            self.prepare([sha256])
        return self.known[sha256]

    def same_shape(self, pair: tuple[str, str]) -> bool:
        return same_shape(self.original(pair[0]), self.original(pair[1]))

    def decide(self, pair: tuple[str, str], evidence: Evidence) -> bool | None:
        """The pair's evidence of the same bytes from what is known now."""
        if evidence.same_bytes:
            return True
        return same_bytes(self.original(pair[0]), self.original(pair[1]))

    def worth_reading(self, pair: tuple[str, str], evidence: Evidence) -> list[str]:
        """The sides whose originals to read to settle the pair, when a fetch
        can pay: nothing known decides it, and the codes are close enough
        for the same picture."""
        if self.decide(pair, evidence) is not None:
            return []
        if max(evidence.phash_distance, evidence.dhash_distance) > SAME_PIXELS_RADIUS:
            return []
        return [sha for sha in pair if self.original(sha).sha256 is None]

    def read_for_sha(self, sha256: str, keep: bool) -> None:
        """Read the original behind `sha256`, hash it and record it for its
        asset; `keep`: hold the bytes for the pixel digest that follows."""
        original = self.original(sha256)
        if original.sha256 is not None or sha256 in self._unreadable:
            return
        found = self.reader.read(sha256)
        if found is None:
            self._unreadable.add(sha256)
            return
        asset, data = found
        self.fetched += 1
        self.fetched_bytes += len(data)
        digest = sha256_hex(data)
        if self.record_reads:
            self.store.record_original(asset, digest, len(data))
        original.sha256, original.how = digest, "read to settle a pair"
        _merge(original, "size_bytes", len(data))
        log.info("original.read", asset=asset.key, bytes=len(data), sha256=digest)
        if keep and self._held_size + len(data) <= HELD_BYTES:
            self._held[sha256] = data
            self._held_size += len(data)

    def settle(self, evidences: dict[tuple[str, str], Evidence]) -> None:
        """Mark the pairs whose originals are the same bytes, reading the
        originals only of the pairs worth it, each at most once."""
        self.prepare(sha for pair in evidences for sha in pair)
        for pair in sorted(evidences):
            evidence = evidences[pair]
            for sha in self.worth_reading(pair, evidence):
                self.read_for_sha(sha, keep=self.same_shape(pair))
            if not evidence.same_bytes and self.decide(pair, evidence):
                evidences[pair] = replace(evidence, same_bytes=True)

    def release(self, keep: set[str]) -> None:
        """Drop the bytes held for pixel digests that will not be computed."""
        for sha in [sha for sha in self._held if sha not in keep]:
            self._held_size -= len(self._held.pop(sha))

    def __call__(self, sha256: str) -> bytes | None:
        """The original's bytes for a pixel digest: held ones first, once."""
        held = self._held.pop(sha256, None)
        if held is not None:
            self._held_size -= len(held)
            return held
        found = self.reader.read(sha256)
        if found is None:
            return None
        asset, data = found
        self.fetched += 1
        self.fetched_bytes += len(data)
        original = self.original(sha256)
        if original.sha256 is None:
            digest = sha256_hex(data)
            if self.record_reads:
                self.store.record_original(asset, digest, len(data))
            original.sha256, original.how = digest, "read for its pixel digest"
        return data

    def record(self, pair: tuple[str, str]) -> dict[str, Any]:
        """The originals' part of the pair's evidence record."""
        return {
            "originals": {
                "a": self.original(pair[0]).as_dict(),
                "b": self.original(pair[1]).as_dict(),
            }
        }
