"""The ingest path on a folder unit, without servers: bytes over the cap are
refused in the same words however they are read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.filesystem import Filesystem, FilesystemSettings
from connector.core.index import SQLiteStore
from connector.engine.ingest import Ingest, IngestStats, TooLarge, check_size, read_source
from connector.engine.settle import run_here

CAP = 20_000
OVER_CAP = f"file is over the {CAP:,} byte limit"


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


@pytest.mark.parametrize("from_path", [False, True], ids=["fetched", "read-by-worker"])
def test_a_file_over_the_cap_is_recorded_in_one_wording(
    folder: Path, tmp_path: Path, from_path: bool
) -> None:
    adapter = Filesystem(FilesystemSettings(root=folder))
    store = SQLiteStore(tmp_path / "index.sqlite")
    try:
        stats = IngestStats()
        ingest = Ingest(
            store,
            "photos",
            adapter,
            run_here,
            max_pixels=10_000_000,
            max_bytes=CAP,
            known={},
            sizes=set() if from_path else None,
            stats=stats,
        )
        ingested = ingest.page(adapter.list_assets(None).items)
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
