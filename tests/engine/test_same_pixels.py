"""Same-pixel copies are still found when the thumbnails spare burst frames the
full decode (bench/hashing.py: burst folders)."""

from __future__ import annotations

import io
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pytest
from PIL import Image
from skimage import data

from connector.core.fingerprint import (
    fingerprint_bytes,
    payload_digest,
    pixel_digest,
    thumbs_rule_out_same_pixels,
)
from connector.core.tiers import Evidence, needs_pixel_digest
from connector.engine.matcher import distance

Run = Callable[..., CompletedProcess[str]]


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def photo(seed: int = 0, shift: int = 0) -> Image.Image:
    """A 1800x1200 photo with grain: large enough for the reduced (draft) decode.
    `shift` moves the camera by that many pixels and `seed` draws new grain: the
    next frame of a burst."""
    base = Image.fromarray(data.astronaut()).resize((1900, 1900), Image.Resampling.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32)[300 + shift : 1500 + shift, shift : 1800 + shift]
    rng = np.random.default_rng(seed)
    pixels = pixels + rng.standard_normal((*pixels.shape[:2], 1), dtype=np.float32) * 5
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def merged_huffman_tables(data_: bytes) -> bytes:
    """The same JPEG re-saved losslessly: its Huffman tables in one DHT segment
    instead of one each (as some tools write them). Same coefficients, same
    pixels, other bytes: the payload digest differs."""
    position, tables, out = 2, b"", bytearray(data_[:2])
    first_dht = None
    while True:
        marker = data_[position + 1]
        (length,) = struct.unpack(">H", data_[position + 2 : position + 4])
        if marker == 0xDA:
            break
        segment = data_[position : position + 2 + length]
        if marker == 0xC4:
            tables += segment[4:]
            first_dht = len(out) if first_dht is None else first_dht
        else:
            out += segment
        position += 2 + length
    assert first_dht is not None
    merged = b"\xff\xc4" + struct.pack(">H", len(tables) + 2) + tables
    return bytes(out[:first_dht]) + merged + bytes(out[first_dht:]) + data_[position:]


def test_thumbnails_rule_out_a_burst_frame_never_a_lossless_copy() -> None:
    original = jpeg(photo())
    resaved = merged_huffman_tables(original)
    assert payload_digest(resaved) != payload_digest(original)
    assert pixel_digest(resaved) == pixel_digest(original)
    decoded = Image.open(io.BytesIO(original)).convert("RGB")
    png = io.BytesIO()
    decoded.save(png, "PNG")
    burst = jpeg(photo(seed=1, shift=4))

    a, b = fingerprint_bytes(original), fingerprint_bytes(resaved)
    assert not thumbs_rule_out_same_pixels(a, b)
    # Another decode path: its thumbnail differs, so only the full decode can tell.
    assert not thumbs_rule_out_same_pixels(a, fingerprint_bytes(png.getvalue()))
    frame = fingerprint_bytes(burst)
    close = Evidence(
        same_bytes=False,
        same_payload=False,
        phash_distance=distance(a.codes("phash"), frame.codes("phash")),
        dhash_distance=distance(a.codes("dhash"), frame.codes("dhash")),
        either_flat=False,
    )
    assert needs_pixel_digest(close, True), "the frame must be close enough to need a digest"
    assert thumbs_rule_out_same_pixels(a, frame)


@pytest.mark.slow
def test_scan_finds_same_pixel_copies_and_decodes_no_burst_frame_in_full(
    run_damdup: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "shoot"
    folder.mkdir()
    original = jpeg(photo())
    (folder / "original.jpg").write_bytes(original)
    (folder / "resaved.jpg").write_bytes(merged_huffman_tables(original))
    for frame in (1, 2, 3):
        (folder / f"burst{frame}.jpg").write_bytes(jpeg(photo(seed=frame, shift=3 * frame)))
    db = tmp_path / "index.sqlite"
    run_damdup("scan", str(folder), "--db", str(db), "-q")
    with sqlite3.connect(db) as connection:
        names = dict(connection.execute("SELECT sha256, asset_id FROM assets"))
        digested = {
            names[sha]
            for (sha,) in connection.execute(
                "SELECT sha256 FROM fingerprints WHERE pixel_digest IS NOT NULL"
            )
        }
        tiers = {
            frozenset((names[a], names[b])): tier
            for a, b, tier in connection.execute("SELECT sha_a, sha_b, tier FROM pairs")
        }
    assert tiers[frozenset(("original.jpg", "resaved.jpg"))] == "same_pixels"
    assert digested == {"original.jpg", "resaved.jpg"}
    frames = [pair for pair in tiers if any(name.startswith("burst") for name in pair)]
    assert frames and all(tiers[pair] != "same_pixels" for pair in frames)


@pytest.mark.slow
def test_scan_finds_a_png_and_an_exif_rotated_copy(run_damdup: Run, tmp_path: Path) -> None:
    folder = tmp_path / "copies"
    folder.mkdir()
    original = jpeg(photo())
    (folder / "original.jpg").write_bytes(original)
    decoded = Image.open(io.BytesIO(original)).convert("RGB")
    decoded.save(folder / "copy.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the original again
    decoded.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.png", exif=exif)
    db = tmp_path / "index.sqlite"
    run_damdup("scan", str(folder), "--db", str(db), "-q")
    with sqlite3.connect(db) as connection:
        names = dict(connection.execute("SELECT sha256, asset_id FROM assets"))
        tiers = {
            frozenset((names[a], names[b])): tier
            for a, b, tier in connection.execute("SELECT sha_a, sha_b, tier FROM pairs")
        }
    assert tiers == {
        frozenset(("original.jpg", "copy.png")): "same_pixels",
        frozenset(("original.jpg", "rotated.png")): "same_pixels",
        frozenset(("copy.png", "rotated.png")): "same_pixels",
    }
