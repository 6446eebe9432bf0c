"""Which copy is the original, on real photographs that are not the fixtures:
scikit-image's bundled photos, enlarged to 1-3 megapixels, with the edits
planners meet (re-saves at a higher quality too, where the copy is larger)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from connector.core.fingerprint import sha256_hex
from connector.core.provenance import Examiner, examine, relate

skimage_data = pytest.importorskip("skimage.data")

MAKE, MODEL, EXIF_IFD, DATE_TIME_ORIGINAL = 0x010F, 0x0110, 0x8769, 0x9003


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "NIKON CORPORATION"
    exif[MODEL] = "NIKON D750"
    exif.get_ifd(EXIF_IFD)[DATE_TIME_ORIGINAL] = "2023:05:04 10:11:12"
    return exif


def jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=camera_exif())
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def watermark(image: Image.Image) -> Image.Image:
    marked = image.copy()
    width, height = marked.size
    draw = ImageDraw.Draw(marked)
    box = (width - width // 6, height - height // 12, width - width // 50, height - height // 50)
    draw.rectangle(box, fill=(255, 255, 255))
    draw.text((box[0] + 8, box[1] + 4), "CITY (c)", fill=(20, 60, 160))
    return marked


def letterbox(image: Image.Image) -> Image.Image:
    width, height = image.size
    band = height // 8
    framed = Image.new("RGB", (width, height + 2 * band), (0, 0, 0))
    framed.paste(image, (0, band))
    return framed


def crop(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.crop((width // 20, height // 20, width, height))


def half(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


# Each derivative as the original's decoded pixels edited, then saved at a quality.
EDITS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    "re-saved at q95 (larger file)": (lambda image: image, 95),
    "re-encoded at q60": (lambda image: image, 60),
    "watermarked": (watermark, 92),
    "brightened": (lambda image: ImageEnhance.Brightness(image).enhance(1.2), 92),
    "darkened": (lambda image: ImageEnhance.Brightness(image).enhance(0.85), 95),
    "more contrast": (lambda image: ImageEnhance.Contrast(image).enhance(1.3), 92),
    "letterboxed": (letterbox, 92),
    "cropped": (crop, 92),
    "resized": (half, 92),
}


def photos() -> dict[str, Image.Image]:
    """Three real photographs at 1-3 megapixels (their bundled size is < 0.3 MP)."""
    sources = {
        "astronaut": skimage_data.astronaut(),
        "coffee": skimage_data.coffee(),
        "chelsea": skimage_data.chelsea(),
    }
    out = {}
    for name, pixels in sources.items():
        image = Image.fromarray(np.asarray(pixels)).convert("RGB")
        scale = 1800 / max(image.size)
        out[name] = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    return out


@pytest.fixture(scope="module")
def families() -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for name, photo in photos().items():
        original = jpeg(photo, 75)
        pixels = decoded(original)
        copies = {"original": original}
        for edit, (change, quality) in EDITS.items():
            copies[edit] = jpeg(change(pixels), quality)
        lossless = io.BytesIO()
        pixels.save(lossless, "PNG")
        copies["lossless PNG"] = lossless.getvalue()
        out[name] = copies
    return out


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_each_derivative_is_found_made_from_the_original(
    families: dict[str, dict[str, bytes]], edit: str
) -> None:
    for name, copies in families.items():
        original = examine("o", copies["original"])
        copy = examine("c", copies[edit])
        assert original is not None and copy is not None
        found = relate(original, copy)
        assert found.parent == "o", (name, edit, found)
        reverse = relate(copy, original)
        assert reverse.parent == "o", (name, edit, "order of the pair changed it", reverse)


def test_q95_resave_is_larger_but_still_the_copy(families: dict[str, dict[str, bytes]]) -> None:
    for copies in families.values():
        assert len(copies["re-saved at q95 (larger file)"]) > len(copies["original"])


def test_a_lossless_copy_shows_the_same_pixels(families: dict[str, dict[str, bytes]]) -> None:
    for copies in families.values():
        original = examine("o", copies["original"])
        png = examine("p", copies["lossless PNG"])
        assert original is not None and png is not None
        found = relate(original, png)
        assert found.same_pixels and found.parent is None


def test_the_original_is_the_only_root_of_its_group(
    families: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    for copies in families.values():
        by_sha = {sha256_hex(data): data for data in copies.values()}
        examiner = Examiner(by_sha.get)
        family = examiner.family(sorted(by_sha), {})
        root = sha256_hex(copies["original"])
        png = sha256_hex(copies["lossless PNG"])
        assert family.derived[root] == 0
        assert family.derived[png] == 0, "the same pixels are not a derivative"
        assert all(family.derived[sha] > 0 for sha in by_sha if sha not in (root, png))
        words = family.describe(root, [sha for sha in by_sha if sha != root])
        assert "a watermark" in words and "smaller cop" in words, words
