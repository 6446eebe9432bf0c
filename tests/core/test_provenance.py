"""Which copy is the original, on real photographs that are not the fixtures:
scikit-image's bundled photos, enlarged to 1-3 megapixels, with the edits
planners meet (re-saves at a higher quality too, where the copy is larger)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from connector.core import provenance
from connector.core.fingerprint import sha256_hex
from connector.core.provenance import (
    Examiner,
    Finding,
    Relations,
    Specimen,
    Specimens,
    examine,
    relate,
)

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


def test_a_group_that_grows_relates_only_its_new_copies(
    families: dict[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's checks see one group grow a copy at a time: findings kept in
    a shared `Relations` are not found again, and the answer is the same as
    finding every relation anew."""
    copies = families["coffee"]
    by_sha = {sha256_hex(data): data for data in copies.values()}
    last = sha256_hex(copies["watermarked"])  # the copy the group gains
    members = [*sorted(set(by_sha) - {last}), last]
    calls: list[tuple[str, str]] = []
    real = provenance.relate

    def counted(a: Specimen, b: Specimen) -> Finding:
        calls.append((a.sha256, b.sha256))
        return real(a, b)

    monkeypatch.setattr(provenance, "relate", counted)
    kept = Relations()
    Examiner(by_sha.get, relations=kept).family(members[:-1], {})
    before = len(calls)
    assert before > 0
    grown = Examiner(by_sha.get, relations=kept).family(members, {})
    new = calls[before:]
    assert new, "the new copy is related to the others"
    assert all(last in pair for pair in new), new
    afresh = Examiner(by_sha.get).family(members, {})
    assert grown.derived == afresh.derived
    assert grown.findings == afresh.findings


def without_exif(data: bytes, note: int) -> bytes:
    """The same JPEG with its EXIF segment taken out (what a CMS that strips
    metadata stores): the very same pixels; `note` goes into a comment."""
    assert data[:2] == b"\xff\xd8"
    out, at = bytearray(data[:2]), 2
    while data[at] == 0xFF and data[at + 1] != 0xDA:  # up to the scan
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] != 0xE1:  # APP1: EXIF
            out += data[at : at + 2 + length]
        at += 2 + length
    comment = f"copy {note}".encode()
    out += b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return bytes(out + data[at:])


def test_a_stripped_copy_does_not_speak_for_its_original(
    families: dict[str, dict[str, bytes]],
) -> None:
    """Same-pixel copies are one image to the lineage and speak with the most
    complete file: the original's EXIF, not a stripped copy's lack of it,
    is weighed against an edited copy's editor tag."""
    copies = families["coffee"]
    original = copies["original"]
    # A logo stamped on and saved as the original was (same quality): the
    # re-compression test cannot tell them apart, the files' metadata does.
    exif = camera_exif()
    exif[0x0131] = "Adobe Photoshop Lightroom Classic 12.4 (Windows)"
    buffer = io.BytesIO()
    stamped = decoded(original)
    width, height = stamped.size
    box = (width // 40, height // 40, width // 40 + width // 7, height // 40 + height // 14)
    ImageDraw.Draw(stamped).rectangle(box, fill=(40, 90, 160))  # no clipped tones
    stamped.save(buffer, "JPEG", quality=75, exif=exif)
    edited = buffer.getvalue()
    # A stripped copy whose digest sorts before the original's (the order
    # that made the stripped one speak before).
    stripped = next(
        copy
        for copy in (without_exif(original, n) for n in range(64))
        if sha256_hex(copy) < sha256_hex(original)
    )
    by_sha = {sha256_hex(data): data for data in (original, stripped, edited)}
    assert examine("s", stripped) is not None and not examine("s", stripped).camera  # type: ignore[union-attr]
    family = Examiner(by_sha.get).family(sorted(by_sha), {})
    assert family.finding(sha256_hex(original), sha256_hex(stripped)).same_pixels
    assert family.derived[sha256_hex(original)] == 0
    assert family.derived[sha256_hex(edited)] > 0, family.findings


# --- padding and crops told apart by the frames --------------------------------


def blurred_letterbox(image: Image.Image, aspect: float) -> Image.Image:
    """A social-media canvas of another aspect (width / height): the photo on an
    enlarged, blurred copy of itself (4:5 when the photo has that aspect already)."""
    width, height = image.size
    if abs(aspect - width / height) < 0.01:
        aspect = 0.8
    if aspect > width / height:
        canvas_size = (round(height * aspect), height)
    else:
        canvas_size = (width, round(width / aspect))
    scale = max(canvas_size[0] / width, canvas_size[1] / height) * 1.05
    big = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left, top = (big.width - canvas_size[0]) // 2, (big.height - canvas_size[1]) // 2
    canvas = big.crop((left, top, left + canvas_size[0], top + canvas_size[1]))
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(canvas_size) / 40))
    canvas.paste(image, ((canvas_size[0] - width) // 2, (canvas_size[1] - height) // 2))
    return canvas


def edge_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour of the photo's outermost rows and columns."""
    pixels = np.asarray(image.convert("RGB"))
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    red, green, blue = (int(v) for v in np.median(edge, axis=0))
    return red, green, blue


def bordered(image: Image.Image, shares: dict[str, float]) -> Image.Image:
    """Uniform padding in the photo's own edge colour: `shares` of a side per side."""
    width, height = image.size
    left, right = round(width * shares.get("left", 0)), round(width * shares.get("right", 0))
    top, bottom = round(height * shares.get("top", 0)), round(height * shares.get("bottom", 0))
    framed = Image.new("RGB", (width + left + right, height + top + bottom), edge_colour(image))
    framed.paste(image, (left, top))
    return framed


def cropped(image: Image.Image, shares: dict[str, float]) -> Image.Image:
    width, height = image.size
    left, right = round(width * shares.get("left", 0)), round(width * shares.get("right", 0))
    top, bottom = round(height * shares.get("top", 0)), round(height * shares.get("bottom", 0))
    return image.crop((left, top, width - right, height - bottom))


def dark_edged_photos() -> dict[str, Image.Image]:
    """Two real photographs whose own edges are dark (a fundus photo in its black
    surround, a deep-sky field), at 2.5-3 megapixels."""
    out = {}
    for name, pixels in (
        ("retina", skimage_data.retina()),
        ("hubble", skimage_data.hubble_deep_field()),
    ):
        image = Image.fromarray(np.asarray(pixels)).convert("RGB")
        scale = 1700 / max(image.size)
        out[name] = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    return out


FRAMED: dict[str, Callable[[Image.Image], Image.Image]] = {
    "letterboxed square, blurred fill": lambda image: blurred_letterbox(image, 1.0),
    "letterboxed 4:5, blurred fill": lambda image: blurred_letterbox(image, 0.8),
    "letterboxed 16:9, blurred fill": lambda image: blurred_letterbox(image, 16 / 9),
}
EDGE_BORDERS: dict[str, dict[str, float]] = {
    "top": {"top": 0.05},
    "left and right": {"left": 0.04, "right": 0.07},
    "all sides": {"left": 0.03, "top": 0.06, "right": 0.05, "bottom": 0.08},
}
CROPS: dict[str, dict[str, float]] = {
    "left": {"left": 0.05},
    "all sides": {"left": 0.05, "top": 0.04, "right": 0.06, "bottom": 0.05},
}


def assert_made_from_original(original: bytes, copy: bytes, kind: str, label: object) -> None:
    first, second = examine("o", original), examine("c", copy)
    assert first is not None and second is not None
    for found in (relate(first, second), relate(second, first)):
        assert found.parent == "o", (label, found)
        assert found.kind == kind, (label, found)


@pytest.mark.parametrize("frame", sorted(FRAMED))
def test_a_letterboxed_copy_has_more_pixels_but_is_the_copy(frame: str) -> None:
    for name, photo in photos().items():
        original = jpeg(photo, 85)
        framed = FRAMED[frame](decoded(original))
        assert framed.width * framed.height > photo.width * photo.height
        assert_made_from_original(
            original, jpeg(framed, 88), "a copy with added borders", (name, frame)
        )


@pytest.mark.parametrize("sides", sorted(EDGE_BORDERS))
def test_a_border_in_the_photos_own_edge_colour_is_added(sides: str) -> None:
    for name, photo in dark_edged_photos().items():
        original = jpeg(photo, 85)
        framed = bordered(decoded(original), EDGE_BORDERS[sides])
        assert_made_from_original(
            original, jpeg(framed, 90), "a copy with added borders", (name, sides)
        )


@pytest.mark.parametrize("sides", sorted(CROPS))
def test_a_crop_of_a_dark_edged_photo_is_still_the_crop(sides: str) -> None:
    for name, photo in dark_edged_photos().items():
        original = jpeg(photo, 85)
        copy = jpeg(cropped(decoded(original), CROPS[sides]), 90)
        assert_made_from_original(original, copy, "a cropped copy", (name, sides))


def test_a_crop_scaled_up_past_the_originals_size_is_still_the_crop() -> None:
    """More pixels, no border: the frames say which is the crop."""
    for name, photo in photos().items():
        original = jpeg(photo, 85)
        crop_of = cropped(decoded(original), CROPS["all sides"])
        enlarged = crop_of.resize(
            (round(crop_of.width * 1.25), round(crop_of.height * 1.25)), Image.Resampling.LANCZOS
        )
        assert enlarged.width * enlarged.height > photo.width * photo.height
        assert_made_from_original(original, jpeg(enlarged, 90), "a cropped copy", name)


def test_a_group_with_padded_and_cropped_copies_has_the_original_as_its_only_root() -> None:
    for name, photo in dark_edged_photos().items():
        original = jpeg(photo, 85)
        pixels = decoded(original)
        copies = [
            original,
            jpeg(blurred_letterbox(pixels, 1.25 if photo.width > photo.height else 0.8), 88),
            jpeg(bordered(pixels, EDGE_BORDERS["all sides"]), 90),
            jpeg(cropped(pixels, CROPS["left"]), 90),
            jpeg(half(pixels), 90),
        ]
        by_sha = {sha256_hex(data): data for data in copies}
        family = Examiner(by_sha.get).family(sorted(by_sha), {})
        roots = [sha for sha, count in family.derived.items() if count == 0]
        assert roots == [sha256_hex(original)], (name, family.findings)


def test_thumbnails_specimens_are_kept_between_families(
    families: dict[str, dict[str, bytes]],
) -> None:
    """A server meets one group again and again: the specimens of copies known
    only by their thumbnails are read once, each family still gets its own
    sizes, and the answer is the one found afresh."""
    copies = families["coffee"]
    thumbs = {sha256_hex(data): _thumbnail(data) for data in copies.values()}
    members = sorted(thumbs)
    sizes = {sha: (4000 + n, 3000 + n) for n, sha in enumerate(members)}
    reads: list[str] = []

    def reduced(sha: str) -> bytes | None:
        reads.append(sha)
        return thumbs.get(sha)

    kept = Specimens()
    first = Examiner(lambda sha: None, reduced, kept=kept).family(members, sizes)
    assert sorted(reads) == members
    reads.clear()
    again = Examiner(lambda sha: None, reduced, kept=kept).family(members, sizes)
    assert reads == [], "every thumbnail's specimen was kept"
    afresh = Examiner(lambda sha: None, thumbs.get).family(members, sizes)
    assert again.derived == first.derived == afresh.derived
    assert again.findings == afresh.findings
    other = {sha: (width * 2, height * 2) for sha, (width, height) in sizes.items()}
    examiner = Examiner(lambda sha: None, reduced, kept=kept)
    examiner.family(members, other)
    assert all(
        (spec.width, spec.height) == other[sha] for sha, spec in examiner._specimens.items() if spec
    )
    assert reads == []
    unsized = Examiner(lambda sha: None, reduced, kept=kept)
    unsized.family(members[:1], {})
    spec = unsized._specimens[members[0]]
    assert (
        spec is not None
        and (spec.width, spec.height) == Image.open(io.BytesIO(thumbs[members[0]])).size
    ), "a kept specimen comes back with its own size, not the last family's"


def _thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((384, 384))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
    return out.getvalue()
