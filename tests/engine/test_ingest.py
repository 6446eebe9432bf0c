"""The ingest path on a folder unit, without servers: bytes over the cap are
refused in the same words however they are read, and a lookup's bytes are
capped and fingerprinted by the steps a page takes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.filesystem import Filesystem, FilesystemSettings
from connector.core.fingerprint import ImageError, sha256_hex
from connector.core.index import SQLiteStore
from connector.engine.ingest import (
    ImageLimits,
    Ingest,
    Ingested,
    IngestStats,
    TooLarge,
    check_size,
    fingerprint_image,
    read_source,
)
from connector.engine.pool import Jobs, Outcome
from connector.engine.settle import run_here

CAP = 20_000
OVER_CAP = f"file is over the {CAP:,} byte limit"
LIMITS = ImageLimits(max_pixels=10_000_000, max_bytes=CAP)


def image_bytes(side: int, seed: int) -> bytes:
    """A PNG of noise: about 3 * side**2 bytes, none like another seed's."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "small.png").write_bytes(image_bytes(32, 1))
    (root / "large.png").write_bytes(image_bytes(128, 2))
    assert (root / "small.png").stat().st_size < CAP < (root / "large.png").stat().st_size
    return root


def page(store: SQLiteStore, root: Path, stats: IngestStats, from_path: bool = False) -> Ingested:
    """A folder's one page, fetched (or read by the worker from its path)."""
    adapter = Filesystem(FilesystemSettings(root=root))
    ingest = Ingest(
        store,
        "photos",
        adapter,
        run_here,
        max_pixels=LIMITS.max_pixels,
        max_bytes=LIMITS.max_bytes,
        known={},
        sizes=set() if from_path else None,
        stats=stats,
    )
    return ingest.page(adapter.list_assets(None).items)


def no_jobs(function: object, jobs: Jobs) -> list[Outcome[object]]:
    raise AssertionError(f"a job was sent: {[key for key, _args in jobs]}")


@pytest.mark.parametrize("from_path", [False, True], ids=["fetched", "read-by-worker"])
def test_a_file_over_the_cap_is_recorded_in_one_wording(
    folder: Path, tmp_path: Path, from_path: bool
) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    try:
        stats = IngestStats()
        ingested = page(store, folder, stats, from_path)
    finally:
        store.close()
    rows = {row.asset_id: row for row in ingested.rows}
    assert rows["large.png"].error == OVER_CAP and rows["large.png"].sha256 is None
    assert rows["small.png"].error is None and rows["small.png"].sha256 is not None
    assert [fingerprint.sha256 for fingerprint in ingested.fingerprints] == [
        rows["small.png"].sha256
    ]
    assert stats.errors == 1 and stats.error_reasons == {OVER_CAP: 1}


def test_the_cap_lets_its_own_size_through_and_refuses_one_byte_more(tmp_path: Path) -> None:
    check_size(CAP, CAP)
    with pytest.raises(TooLarge) as refused:
        check_size(CAP + 1, CAP)
    assert str(refused.value) == OVER_CAP
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (CAP + 1))
    with pytest.raises(TooLarge, match=f"^{OVER_CAP}$"):
        read_source(str(path), CAP)
    path.write_bytes(b"x" * CAP)
    assert len(read_source(str(path), CAP)) == CAP


def test_a_lookups_bytes_are_capped_and_fingerprinted_as_a_pages(
    folder: Path, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    try:
        with pytest.raises(TooLarge, match=f"^{OVER_CAP}$"):
            fingerprint_image((folder / "large.png").read_bytes(), LIMITS, store, no_jobs)
        fresh = image_bytes(24, 3)
        made = fingerprint_image(fresh, LIMITS, store, run_here)
        assert made.sha256 == sha256_hex(fresh)
        assert store.fingerprint(made.sha256) is None  # nothing saved
        # Content the index holds: its fingerprint, no job.
        ingested = page(store, folder, IngestStats())
        made_here = {fingerprint.sha256: fingerprint for fingerprint in ingested.fingerprints}
        for row in ingested.rows:
            store.save_asset("photos", row, made_here.get(row.sha256 or ""))
        small = (folder / "small.png").read_bytes()
        assert fingerprint_image(small, LIMITS, store, no_jobs) == ingested.fingerprints[0]
        # An image that cannot be read: in the words a page records for it.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "broken.png").write_bytes(small[: len(small) // 2])
        [row] = page(store, broken, IngestStats()).rows
        assert row.error is not None and "damaged" in row.error
        with pytest.raises(ImageError) as refused:
            fingerprint_image((broken / "broken.png").read_bytes(), LIMITS, store, run_here)
        assert str(refused.value) == row.error
    finally:
        store.close()
