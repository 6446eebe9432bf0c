from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from connector.core.fingerprint import (
    DECODE_SIDE,
    THUMB_SIDE,
    ImageError,
    _reduced_rgb,
    fingerprint_bytes,
    payload_digest,
    pixel_digest,
)
from connector.core.tiers import CANDIDATE_RADIUS


def photo_like(width: int = 640, height: int = 480, seed: int = 1) -> Image.Image:
    """Smooth structure plus grain: hashes behave as on photographs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack(
        [
            128 + 90 * np.sin(6 * x + seed) * np.cos(4 * y),
            128 + 80 * np.cos(5 * x * y + seed),
            128 + 70 * np.sin(9 * y - seed),
        ],
        axis=-1,
    )
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, kind: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def exif_with(orientation: int | None = None, taken_at: str | None = None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if taken_at is not None:
        exif.get_ifd(0x8769)[0x9003] = taken_at
    return exif


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def test_metadata_only_edit_keeps_the_payload_digest() -> None:
    image = photo_like()
    first = encode(image, quality=90, exif=exif_with(taken_at="2020:01:01 10:00:00"))
    # Same encoder, same pixels, different EXIF: only the APP1 segment differs.
    second = encode(image, quality=90, exif=exif_with(taken_at="2021:06:06 12:00:00"))
    assert first != second
    assert payload_digest(first) == payload_digest(second) is not None


def test_orientation_is_part_of_the_payload_digest() -> None:
    image = photo_like()
    upright = encode(image, quality=90, exif=exif_with(orientation=1))
    turned = encode(image, quality=90, exif=exif_with(orientation=6))
    assert payload_digest(upright) != payload_digest(turned)


def test_png_text_chunks_do_not_change_the_payload_digest() -> None:
    image = photo_like(64, 48)
    plain = encode(image, "PNG")
    info = PngInfo()
    info.add_text("Comment", "edited by the museum")
    tagged = encode(image, "PNG", pnginfo=info)
    assert plain != tagged
    assert Image.open(io.BytesIO(tagged)).info.get("Comment") == "edited by the museum"
    assert payload_digest(plain) == payload_digest(tagged) is not None


def test_payload_digest_is_none_where_the_format_needs_decoding() -> None:
    assert payload_digest(encode(photo_like(64, 48), "WEBP")) is None
    assert payload_digest(b"\xff\xd8\xff\xe0 truncated") is None


def test_large_jpeg_is_decoded_at_reduced_size_with_full_size_reported() -> None:
    data = encode(photo_like(4000, 3000), quality=85)
    reduced, full = _reduced_rgb(Image.open(io.BytesIO(data)))
    assert full == (4000, 3000)
    assert DECODE_SIDE <= max(reduced.size) <= 4000 // 4, "draft mode must scale the decode"
    fingerprint = fingerprint_bytes(data)
    assert (fingerprint.width, fingerprint.height) == (4000, 3000)
    assert max(Image.open(io.BytesIO(fingerprint.thumb)).size) == THUMB_SIDE


def test_exif_rotated_copy_hashes_like_the_original() -> None:
    image = photo_like(640, 480)
    original = fingerprint_bytes(encode(image, quality=92))
    # Pixels stored turned, with the tag that turns them back (as cameras do).
    stored = image.transpose(Image.Transpose.ROTATE_90)
    rotated = fingerprint_bytes(encode(stored, quality=92, exif=exif_with(orientation=6)))
    assert (rotated.width, rotated.height) == (640, 480)
    assert distance(original.phash, rotated.phash) <= 4
    assert distance(original.dhash, rotated.dhash) <= 6
    unrotated = fingerprint_bytes(encode(stored, quality=92))
    assert distance(original.phash, unrotated.phash) > 12


def test_padded_copy_is_found_through_the_trimmed_hash() -> None:
    image = photo_like(600, 400)
    padded = ImageOps.expand(image, border=(0, 80), fill=(0, 0, 0))
    original = fingerprint_bytes(encode(image, quality=90))
    letterboxed = fingerprint_bytes(encode(padded, quality=90))
    assert letterboxed.phash_trim is not None and original.phash_trim is None
    assert distance(original.phash, letterboxed.phash_trim) <= 6
    assert distance(original.phash, letterboxed.phash) > distance(
        original.phash, letterboxed.phash_trim
    )


def test_flat_images_are_flagged() -> None:
    assert fingerprint_bytes(encode(Image.new("RGB", (300, 200), (40, 90, 200)))).flat
    assert not fingerprint_bytes(encode(photo_like())).flat


def test_pixel_digest_sees_through_containers_and_metadata() -> None:
    image = photo_like(320, 240)
    jpeg = encode(image, quality=90)
    decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    lossless = encode(decoded, "PNG")
    assert pixel_digest(jpeg) == pixel_digest(lossless)
    assert pixel_digest(jpeg) != pixel_digest(encode(image, quality=70))


def test_pixel_digest_applies_exif_orientation() -> None:
    image = photo_like(320, 240)
    png = encode(image, "PNG")
    turned = image.transpose(Image.Transpose.ROTATE_270)
    tagged = encode(turned, "PNG", exif=exif_with(orientation=8))
    assert pixel_digest(png) == pixel_digest(tagged)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"Hello, this is a text file\n", "plain text"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"<!doctype html><html><body>502 Bad Gateway</body></html>", "HTML"),
        (b"\0" * 4096, "zero bytes"),
    ],
)
def test_non_images_get_a_clear_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        fingerprint_bytes(data)


def test_pixel_limit_refuses_huge_headers_before_decoding() -> None:
    with pytest.raises(ImageError, match="limit"):
        fingerprint_bytes(encode(photo_like(400, 300)), max_pixels=100_000)


def test_heic_from_a_phone_is_read_and_hashes_like_its_jpeg() -> None:
    import pillow_heif

    image = photo_like(640, 480)
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=80)
    heic = buffer.getvalue()
    assert heic[4:12] == b"ftypheic"
    from_heic = fingerprint_bytes(heic)
    from_jpeg = fingerprint_bytes(encode(image, quality=90))
    assert from_heic.format == "HEIF"
    assert (from_heic.width, from_heic.height) == (640, 480)
    # A candidate pair for the matcher (whose pixel check then decides).
    assert distance(from_heic.phash, from_jpeg.phash) <= CANDIDATE_RADIUS
