"""Tests for connector.core.verify on pairs built from real photographs.

The photos are the ones shipped inside the scikit-image wheel (read straight
from its data folder with Pillow, no downloads). Each pair mimics what the
caller hands over: both sides are Pillow thumbnails with a long side of at
most VERIFY_SIDE, made after the edit.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from connector.core.fingerprint import fingerprint_bytes
from connector.core.verify import PixelCheck, verify_pair, verify_pair_detailed
from tests.edits import crop, gamma, reencode, scale, thumb, viewpoint

# A declared test dependency: its wheel ships the real photos these pairs are made of.
DATA = Path(skimage.__file__).parent / "data"


def photo(name: str) -> Image.Image:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{name} not in this scikit-image wheel")
    with Image.open(path) as im:
        return im.convert("RGB")


def font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType
        return ImageFont.load_default()


def watermark(im: Image.Image) -> Image.Image:
    """Opaque light box with dark text, 12 % of the width, bottom-right corner."""
    out = im.copy()
    w, h = out.size
    bw = round(0.12 * w)
    bh = round(0.35 * bw)
    x0, y0 = w - round(0.02 * w) - bw, h - round(0.02 * w) - bh
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=(240, 240, 240))
    draw.text((x0 + 2, y0 + 0.15 * bh), "(c) CM", fill=(20, 20, 20), font=font(0.6 * bh))
    return out


def move_patch(im: Image.Image, src: tuple[float, float], dst: tuple[float, float]) -> Image.Image:
    """Copy a patch of 15 % of each side from ``src`` to ``dst`` (fractions)."""
    arr = np.asarray(im).copy()
    h, w = arr.shape[:2]
    ph, pw = round(0.15 * h), round(0.15 * w)
    sy, sx = round(src[1] * h), round(src[0] * w)
    dy, dx = round(dst[1] * h), round(dst[0] * w)
    arr[dy : dy + ph, dx : dx + pw] = arr[sy : sy + ph, sx : sx + pw].copy()
    return Image.fromarray(arr)


# Colour, grey (camera, coins) and JPEG-sourced (rocket) photos of various sizes.
PHOTOS = ["astronaut.png", "camera.png", "coffee.png", "rocket.jpg", "chelsea.png"]

POSITIVE_EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q60": lambda im: reencode(im, "JPEG", quality=60),
    "jpeg_q85": lambda im: reencode(im, "JPEG", quality=85),
    "png": lambda im: reencode(im, "PNG"),
    "webp_q75": lambda im: reencode(im, "WEBP", quality=75),
    "resize_50": lambda im: scale(im, 0.5),
    "resize_25": lambda im: scale(im, 0.25),
    "crop5_right": lambda im: crop(im, 0, 0, 0.05, 0),
    "crop5_top": lambda im: crop(im, 0, 0.05, 0, 0),
    "crop5_all_sides": lambda im: crop(im, 0.05, 0.05, 0.05, 0.05),
    "watermark": watermark,
    "brightness+15": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "brightness-15": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
    "contrast+10": lambda im: ImageEnhance.Contrast(im).enhance(1.10),
    "contrast-10": lambda im: ImageEnhance.Contrast(im).enhance(0.90),
    "gamma_0.85": lambda im: gamma(im, 0.85),
    "gamma_1.2": lambda im: gamma(im, 1.2),
}


@pytest.mark.parametrize("edit", sorted(POSITIVE_EDITS))
@pytest.mark.parametrize("name", PHOTOS)
def test_same_photograph_passes(name: str, edit: str) -> None:
    im = photo(name)
    check = verify_pair(thumb(im), thumb(POSITIVE_EDITS[edit](im)))
    assert check.passed is True, check.reason
    assert check.correlation > 0.95


def test_watermark_is_reported_as_corner_strip() -> None:
    im = photo("astronaut.png")
    check = verify_pair(thumb(im), thumb(watermark(im)))
    assert check.passed is True, check.reason
    assert check.edge_strip == "bottom-right"
    assert 0 < check.differing_blocks <= 0.05 * check.total_blocks


def test_resized_copy_reports_scale_and_coverage() -> None:
    im = photo("coffee.png")
    check = verify_pair(thumb(im), thumb(scale(im, 0.25)))
    assert check.passed is True, check.reason
    # coffee is 600 px wide: thumbnails of 384 and 150 px.
    assert check.scale == pytest.approx(150 / 384, rel=0.02)
    assert abs(check.rotation_deg) < 0.5
    assert check.coverage_a > 0.98 and check.coverage_b > 0.98


def test_crop_reports_partial_coverage() -> None:
    im = photo("chelsea.png")
    check = verify_pair(thumb(im), thumb(crop(im, 0, 0, 0.05, 0)))
    assert check.passed is True, check.reason
    assert check.coverage_a == pytest.approx(0.95, abs=0.02)
    assert check.coverage_b > 0.98


def test_grey_photo_given_as_plain_2d_array() -> None:
    im = photo("camera.png")
    a = thumb(im)[:, :, 0]
    b = thumb(reencode(im, "JPEG", quality=70))
    assert verify_pair(a, b).passed is True


def test_low_texture_photo_aligns_without_features() -> None:
    # A heavily blurred photo has no ORB corners: the plain-resize start plus
    # ECC must still verify a resized copy, and still reject a moved patch.
    soft = photo("coffee.png").filter(ImageFilter.GaussianBlur(16))
    check, diag = verify_pair_detailed(thumb(soft), thumb(scale(soft, 0.5)))
    assert diag.aligned_by == "resize"
    assert check.passed is True, check.reason
    moved = move_patch(soft, (0.1, 0.1), (0.45, 0.45))
    assert verify_pair(thumb(soft), thumb(moved)).passed is False


# --- negatives ------------------------------------------------------------------


def test_real_stereo_pair_fails() -> None:
    left, right = photo("motorcycle_left.png"), photo("motorcycle_right.png")
    check = verify_pair(thumb(left), thumb(right))
    assert check.passed is False
    # Rejected for parallax/alignment, not for lack of overlap.
    assert min(check.coverage_a, check.coverage_b) > 0.8


@pytest.mark.parametrize("name", PHOTOS)
def test_ten_degree_viewpoint_change_fails(name: str) -> None:
    a, b = viewpoint(photo(name), 10.0)
    check = verify_pair(thumb(a), thumb(b))
    assert check.passed is False
    assert min(check.coverage_a, check.coverage_b) > 0.9, "must fail on parallax, not coverage"


@pytest.mark.parametrize("name", PHOTOS)
def test_quarter_crop_fails(name: str) -> None:
    im = photo(name)
    check = verify_pair(thumb(im), thumb(crop(im, 0.25, 0, 0, 0)))
    assert check.passed is False
    assert "overlap" in check.reason


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("astronaut.png", "coffee.png"),
        ("camera.png", "coins.png"),
        ("rocket.jpg", "chelsea.png"),
        ("motorcycle_left.png", "astronaut.png"),
    ],
)
def test_different_photos_fail(a: str, b: str) -> None:
    assert verify_pair(thumb(photo(a)), thumb(photo(b))).passed is False


@pytest.mark.parametrize("name", ["hubble_deep_field.jpg", "astronaut.png", "coffee.png"])
def test_non_overlapping_tiles_of_one_photo_fail(name: str) -> None:
    im = photo(name)
    w, h = im.size
    left = im.crop((0, 0, w // 2, h))
    right = im.crop((w // 2, 0, w, h))
    assert verify_pair(thumb(left), thumb(right)).passed is False


@pytest.mark.parametrize("name", PHOTOS)
def test_moved_subject_fails(name: str) -> None:
    im = photo(name)
    moved = move_patch(im, (0.05, 0.55), (0.45, 0.35))
    check = verify_pair(thumb(im), thumb(moved))
    assert check.passed is False
    assert check.differing_blocks > 0 and check.edge_strip is None


@pytest.mark.parametrize("name", PHOTOS)
def test_mirror_flip_fails(name: str) -> None:
    im = photo(name)
    flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert verify_pair(thumb(im), thumb(flipped)).passed is False


def test_moved_subject_in_a_recompressed_copy_fails() -> None:
    im = photo("chelsea.png")
    moved = reencode(move_patch(im, (0.05, 0.05), (0.45, 0.4)), "JPEG", quality=75)
    assert verify_pair(thumb(im), thumb(moved)).passed is False


# --- robustness -----------------------------------------------------------------


def test_tiny_copy_is_refused_not_guessed() -> None:
    im = photo("astronaut.png")
    check = verify_pair(thumb(im), np.asarray(scale(im, 32 / 512)))
    assert check.passed is False
    assert "too small" in check.reason


def test_flat_images_are_refused() -> None:
    grey = np.full((200, 300, 3), 128, np.uint8)
    blue = np.zeros((200, 300, 3), np.uint8)
    blue[:, :, 2] = 200
    assert verify_pair(grey, blue).passed is False
    assert verify_pair(grey, grey.copy()).passed is False


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((100, 100, 3), np.float32),
        np.zeros((100, 100, 2), np.uint8),
        np.zeros((10, 10, 10, 3), np.uint8),
    ],
)
def test_unusable_input_returns_failure(bad: np.ndarray) -> None:
    good = thumb(photo("camera.png"))
    for a, b in ((bad, good), (good, bad)):
        check = verify_pair(a, b)
        assert isinstance(check, PixelCheck)
        assert check.passed is False
        assert check.reason


def test_noise_images_do_not_raise() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    assert verify_pair(a, b).passed is False


def test_rgba_input_is_accepted() -> None:
    im = photo("coffee.png")
    a = thumb(im)
    b = np.dstack([thumb(reencode(im, "JPEG", quality=85)), np.full(a.shape[:2], 255, np.uint8)])
    assert verify_pair(a, b).passed is True


def test_deterministic() -> None:
    im = photo("rocket.jpg")
    pairs = [
        (thumb(im), thumb(crop(reencode(im, "JPEG", quality=60), 0.05, 0, 0, 0.05))),
        (thumb(photo("motorcycle_left.png")), thumb(photo("motorcycle_right.png"))),
    ]
    for a, b in pairs:
        first = verify_pair(a, b).as_dict()
        for _ in range(2):
            assert verify_pair(a.copy(), b.copy()).as_dict() == first


def test_as_dict_has_every_field() -> None:
    im = photo("camera.png")
    d = verify_pair(thumb(im), thumb(im)).as_dict()
    assert set(d) == {
        "passed",
        "reason",
        "coverage_a",
        "coverage_b",
        "correlation",
        "differing_blocks",
        "total_blocks",
        "edge_strip",
        "scale",
        "rotation_deg",
    }
    assert d["passed"] is True
    assert str(d["reason"]).startswith("aligned, 0 of")


def test_typical_pair_is_fast() -> None:
    # Budget is ~60 ms per pair on one core; allow slack for shared CI boxes.
    im = photo("astronaut.png")
    a, b = thumb(im), thumb(reencode(im, "JPEG", quality=70))
    verify_pair(a, b)
    t0 = time.thread_time()
    for _ in range(5):
        verify_pair(a, b)
    assert (time.thread_time() - t0) / 5 < 0.25


# --- padding, translucent logos, and new content or parallax at an edge ----------


def pad(
    im: Image.Image, left: float, top: float, right: float, bottom: float, colour: int
) -> Image.Image:
    """Uniform padding of these shares of the width/height on each side."""
    w, h = im.size
    lp, tp, rp, bp = round(w * left), round(h * top), round(w * right), round(h * bottom)
    out = Image.new("RGB", (w + lp + rp, h + tp + bp), (colour,) * 3)
    out.paste(im, (lp, tp))
    return out


def letterbox(im: Image.Image) -> Image.Image:
    """Towards a square canvas (at most 10 % a side), padded with the photo enlarged
    and blurred, as social media letterbox a photo."""
    w, h = im.size
    cw, ch = (w, min(w, round(h * 1.2))) if w >= h else (min(h, round(w * 1.2)), h)
    f = max(cw / w, ch / h)
    big = im.resize((round(w * f) + 1, round(h * f) + 1))
    x0, y0 = (big.width - cw) // 2, (big.height - ch) // 2
    canvas = big.crop((x0, y0, x0 + cw, y0 + ch)).filter(ImageFilter.GaussianBlur(max(cw, ch) / 30))
    canvas.paste(im, ((cw - w) // 2, (ch - h) // 2))
    return canvas


def translucent_logo(im: Image.Image) -> Image.Image:
    base = im.convert("RGBA")
    w = base.size[0]
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    lw, lh = round(0.2 * w), round(0.06 * w)
    x0, y0 = w - round(0.03 * w) - lw, round(0.03 * w)
    draw.ellipse((x0, y0, x0 + lh, y0 + lh), fill=(255, 255, 255, 128))
    draw.text((x0 + lh + 4, y0), "HELSINKI", fill=(255, 255, 255, 128), font=font(0.8 * lh))
    return Image.alpha_composite(base, layer).convert("RGB")


def object_at_edge(im: Image.Image, donor: Image.Image) -> Image.Image:
    """A limb-like region of another photo entering along the middle of the left edge."""
    arr = np.asarray(im).astype(np.float32)
    other = np.asarray(donor.resize(im.size)).astype(np.float32)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (xx / (0.15 * w)) ** 2 + ((yy - 0.5 * h) / (0.18 * h)) ** 2 <= 1.0
    out = np.where(inside[:, :, None], other, arr)
    return Image.fromarray(out.astype(np.uint8))


def parallax(im: Image.Image, fg: tuple[float, float, float, float]) -> Image.Image:
    """Camera moved 1.5 px; a foreground ellipse in ``fg`` (shares) moved 4 px more."""
    import cv2

    arr = np.asarray(im).astype(np.float32)
    h, w = arr.shape[:2]

    def moved(x: np.ndarray, dx: float, dy: float) -> np.ndarray:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        return np.asarray(
            cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        )

    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = (fg[0] + fg[2]) / 2 * w, (fg[1] + fg[3]) / 2 * h
    rx, ry = (fg[2] - fg[0]) / 2 * w, (fg[3] - fg[1]) / 2 * h
    mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.float32)
    mask = moved(mask, 5.5, 0.5)[:, :, None]
    out = moved(arr, 5.5, 0.5) * mask + moved(arr, 1.5, 0.0) * (1 - mask)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


PADDINGS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "white_all_5": lambda im: pad(im, 0.05, 0.05, 0.05, 0.05, 255),
    "black_left_right_10": lambda im: pad(im, 0.10, 0, 0.10, 0, 0),
    "grey_top_8": lambda im: pad(im, 0, 0.08, 0, 0, 128),
    "blurred_letterbox": letterbox,
    "translucent_logo": translucent_logo,
}


@pytest.mark.parametrize("edit", sorted(PADDINGS))
@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "coffee.png", "rocket.jpg"])
def test_padded_or_logo_copy_passes(name: str, edit: str) -> None:
    im = photo(name)
    copy = reencode(PADDINGS[edit](im), "JPEG", quality=88)
    check = verify_pair(thumb(im), thumb(copy))
    assert check.passed is True, check.reason


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"])
def test_new_content_entering_at_an_edge_fails(name: str) -> None:
    im = photo(name)
    donor = photo("brick.png" if name != "brick.png" else "coffee.png")
    check = verify_pair(thumb(im), thumb(object_at_edge(im, donor)))
    assert check.passed is False, check.reason


@pytest.mark.parametrize(
    ("name", "fg"),
    [
        ("astronaut.png", (0.30, 0.25, 0.65, 0.75)),
        ("coffee.png", (0.02, 0.50, 0.30, 0.95)),  # at an edge, most of the frame static
        ("chelsea.png", (0.70, 0.05, 0.98, 0.40)),  # in a corner
    ],
)
def test_parallax_with_most_of_the_frame_static_fails(
    name: str, fg: tuple[float, float, float, float]
) -> None:
    im = photo(name)
    check = verify_pair(thumb(im), thumb(parallax(im, fg)))
    assert check.passed is False, check.reason


# --- frames round a photo, and a subject moved over a faint background -----------


def stored_thumb(im: Image.Image) -> np.ndarray:
    """The thumbnail the index stores for ``im`` saved as a JPEG (draft-mode decode
    and a bilinear reduction: more of a border blends into the photo's edge than
    in :func:`thumb`)."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    with Image.open(io.BytesIO(fingerprint_bytes(buf.getvalue()).thumb)) as out:
        return np.asarray(out.convert("RGB"))


def camera_size(im: Image.Image, f: int = 6) -> Image.Image:
    return im.resize((im.width * f, im.height * f), Image.Resampling.LANCZOS)


def frame(im: Image.Image, share: float, colour: tuple[int, int, int]) -> Image.Image:
    """A uniform frame as deep on every side: ``share`` of the short side."""
    return ImageOps.expand(im, round(share * min(im.size)), colour)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0)])
@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg"])
def test_thin_frame_round_a_wide_photo_passes(name: str, colour: tuple[int, int, int]) -> None:
    # 3 % of the short side is under 2 % of the long one: the frame's sides along
    # the short edges must count as padding too, or their edge reads as a shift.
    im = photo(name)
    check = verify_pair(thumb(im), thumb(reencode(frame(im, 0.03, colour), "JPEG", quality=90)))
    assert check.passed is True, check.reason


@pytest.mark.parametrize(("name", "share"), [("rocket.jpg", 0.03), ("rocket.jpg", 0.05)])
def test_frame_round_a_camera_photo_passes_in_stored_thumbnails(name: str, share: float) -> None:
    # The alignment must not fit the frame's edge blended into the photo (it
    # stretched the fit by up to 1 px and failed on the "shift" that left).
    im = camera_size(photo(name))
    check = verify_pair(stored_thumb(im), stored_thumb(frame(im, share, (255, 255, 255))))
    assert check.passed is True, check.reason


def next_video_frame(
    im: Image.Image, centre: tuple[float, float], shift: float, seed: int
) -> Image.Image:
    """The next frame: an elliptical region (12 % x 18 % of the frame around
    ``centre``) moved right by ``shift`` of the width, feathered, new sensor noise."""
    import cv2

    arr = np.asarray(im).astype(np.float32)
    h, w = arr.shape[:2]
    dx = shift * w
    mask = np.zeros((h, w), np.float32)
    axes = (round(0.06 * w), round(0.09 * h))
    cv2.ellipse(mask, (round(centre[0] * w + dx), round(centre[1] * h)), axes, 0, 0, 360, 1.0, -1)
    mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), 0.15 * min(axes)))[:, :, None]
    moved = cv2.warpAffine(arr, np.float32([[1, 0, dx], [0, 1, 0]]), (w, h))
    out = arr * (1 - mask) + np.asarray(moved) * mask
    out += np.random.default_rng(seed).normal(0.0, 2.0, out.shape)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("centre", "shift"), [((0.65, 0.25), 0.009), ((0.65, 0.35), 0.006), ((0.65, 0.25), 0.012)]
)
def test_subject_moved_over_a_faint_background_fails(
    centre: tuple[float, float], shift: float
) -> None:
    # Two consecutive video frames: a region of the astronaut's mottled backdrop
    # (faint texture, like thin cloud in a flat sky) moved by 0.6-1.2 % of the
    # width, 2-5 px in the thumbnails. Little texture keeps the per-block shift
    # estimate (0.15-0.4 px) and the residual under their thresholds; a direct
    # search of whole-pixel shifts finds the move.
    im = camera_size(photo("astronaut.png"), 3)
    first = next_video_frame(im, centre, 0.0, seed=1)
    second = next_video_frame(im, centre, shift, seed=2)
    a = thumb(reencode(first, "JPEG", quality=90))
    b = thumb(reencode(second, "JPEG", quality=90))
    check = verify_pair(a, b)
    assert check.passed is False, check.reason


def test_a_brightened_copy_with_clipped_sky_passes_in_either_order() -> None:
    """The fixtures' +15 % copy of the cameraman, whose sky clips (2.8 % of
    its values at 255, 0.3 % in the original): checked with the copy first,
    the tone curve mapped the clipped copy onto the original (clipped levels
    cannot come back) and five sky blocks differed. Both orders pass."""
    photos = Path(__file__).resolve().parents[2] / "fixtures" / "photos" / "kaupunginmuseo"
    original = fingerprint_bytes((photos / "HKM_1987_0043.jpg").read_bytes())
    brighter = fingerprint_bytes((photos / "HKM_1987_0043_vaalea.jpg").read_bytes())

    def pixels(thumb: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(thumb)) as image:
            return np.asarray(image.convert("RGB"))

    a, b = pixels(original.thumb), pixels(brighter.thumb)
    forward, backward = verify_pair(a, b), verify_pair(b, a)
    assert forward.passed, forward.reason
    assert backward.passed, backward.reason


def test_one_image_checked_against_several_finds_its_features_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A webhook check sends one image against its ten candidates: its ORB
    features are found once, and every answer is the one found afresh."""
    from connector.core import verify

    base = photo("coffee.png")
    query = thumb(base)
    others = [
        thumb(reencode(base, "JPEG", quality=60)),
        thumb(watermark(base)),
        thumb(crop(base, 0.05, 0.0, 0.0, 0.05)),
    ]
    monkeypatch.setattr(verify, "_RECENT", verify._RecentFeatures(0))  # keeps nothing
    fresh = [verify_pair_detailed(query, other) for other in others]
    calls: list[tuple[int, ...]] = []
    real = verify.features

    def counted(grey: np.ndarray) -> verify.Features:
        calls.append(grey.shape)
        return real(grey)

    monkeypatch.setattr(verify, "features", counted)
    monkeypatch.setattr(verify, "_RECENT", verify._RecentFeatures(32))
    again = [verify_pair_detailed(query, other) for other in others]
    assert [repr(x) for x in again] == [repr(x) for x in fresh]
    assert len(calls) == 1 + len(others), calls
