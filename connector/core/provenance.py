"""Which copy is the original: image phylogeny over a small group of copies.

Dias, Rocha and Goldenstein ("Image Phylogeny by Minimal Spanning Trees", IEEE
TIFS 2012) orient each pair of near-duplicates with an asymmetric
dissimilarity: how well B is explained as A transformed (tone map, re-compress
with B's own quantisation tables) versus the reverse. A child carries its
parent's compression noise plus its own; the parent cannot be rebuilt from the
child. The root of the oriented graph is the original.

Before that test, evidence only a derivative carries. First the frames: the
two reduced images are aligned (ORB matches and a RANSAC similarity, as the
pixel check starts) and each one's frame is mapped into the other's. When one
whole frame lies inside the other with margins, the margins tell padding from
a crop whatever the padding looks like: margins far flatter than the picture
just inside them (a uniform border, a blurred letterbox fill) were added, so
the outer copy is the inner one padded; margins as detailed as the picture
next to them are the photo itself, so the inner copy is a crop of the outer.
Then, for what alignment cannot tell: an added uniform border, fewer pixels (a
resize or a crop). After it, for pairs the test cannot settle:
tones clipped where the other image still has texture, a web format beside a
camera format, lost camera EXIF, an image editor named in EXIF, a later EXIF
modification date. Byte size and quality factor are never evidence: a q95
re-save of a q75 original is larger and worse.

Everything here is computed for the members of one cluster only (clusters are
small) and nothing is stored.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, JpegImagePlugin

from connector.core.capture import read_capture_facts
from connector.core.fingerprint import FORMATS_ORIGINAL
from connector.core.verify import Features, Recent, features, similarity

# Long side of the reduced decode that borders and clipping are judged on.
LOOK_SIDE = 768
# Side of the central, MCU-aligned region the re-compression test works on:
# JPEG blocks are coded independently, so re-encoding a region aligned to 16 px
# gives exactly the blocks the whole image would.
REGION_SIDE = 512
# A side is "bordered" when a uniform band covers at least this share of it;
# "borderless" below the lower share (JPEG ringing and dark photo edges).
BORDER_SHARE = 0.02
BORDERLESS_SHARE = 0.005
BORDER_TOLERANCE = 10
# Two images are "the same size" within this relative difference of pixel counts.
SIZE_TOLERANCE = 0.01
# Frames. Both reduced images are aligned at this long side (the pixel check's
# scale); smaller ones (short side below FRAME_MIN_SIDE) are not aligned.
FRAME_SIDE = 384
FRAME_MIN_SIDE = 48
# One frame lies inside the other when none of its sides is more than this
# share of the other's side outside it and one at least is this far inside.
# Alignment error on same-frame fixture pairs: at most 1.05 % (a 100 px copy),
# 0.34 % with both sides above 120 px.
FRAME_TOLERANCE = 0.015
# Only a nearly upright alignment (degrees) is read as padding or a crop.
FRAME_MAX_ROTATION = 2.0
# The alignment is trusted when the inner image and the outer one's picture
# under it correlate this well (both blurred by FRAME_BLUR px).
FRAME_MIN_CORRELATION = 0.9
FRAME_BLUR = 1.0
# The margins are added when their mean grey-level gradient is below this
# share of the gradient in strips of the same width just inside the inner
# frame (FRAME_GUARD px left out on either side of the seam, where resampling
# blends them). Fixtures: padding 0.00-0.35 (a blurred letterbox of a
# motion-blurred photo is the highest), crops 0.66-1.13 (pooled over the sides).
PAD_DETAIL_RATIO = 0.5
FRAME_GUARD = 2
# Margins and inner strips both flatter than this (grey levels per px): the
# photo's own edge is as flat as the margin, nothing tells.
FLAT_DETAIL = 0.05
# Re-compression test: B is A's child when A explains B clearly better than B
# explains A (mean absolute grey-level error per pixel, trimmed of the worst
# blocks so a logo or caption does not decide it).
EXPLAIN_RATIO = 0.7
EXPLAIN_MARGIN = 0.05
TRIM_SHARE = 0.9
# Double quantisation: another image's step counts where it is this much coarser
# than the image's own; coefficients within LATTICE_ON of its multiples (in
# steps; chance gives 0.25) are its trace, beyond LATTICE_OFF none.
LATTICE_COARSER = 1.5
LATTICE_ON = 0.12
LATTICE_OFF = 0.18
LATTICE_MIN_COEFFICIENTS = 500
# A tone map moving grey levels by more than this on average is an edit.
TONE_EDIT_LEVELS = 2.0
# Blocks still this far off after the best explanation are added content.
ADDED_BLOCK_LEVELS = 12.0
ADDED_MIN_SHARE = 0.002
# Clipped tones: at least this share of pixels clipped in one image, where the
# other still varies by this many grey levels.
CLIPPED_MIN_SHARE = 0.005
CLIPPED_TEXTURE = 6.0

# Above this many pixels two images are not decoded whole to compare them.
SAME_PIXELS_MAX = 60_000_000
# Formats a camera or scanner writes; anything else was converted from one.
WEB_FORMATS = frozenset({"WEBP", "GIF", "PNG", "BMP", "AVIF"})
# Image editors that write their name into EXIF Software; camera firmware
# writes version strings there too, so only named editors count.
EDITORS = (
    "photoshop", "lightroom", "gimp", "paint.net", "affinity", "capture one", "darktable",
    "rawtherapee", "snapseed", "pixelmator", "acdsee", "imagemagick", "graphicsmagick",
    "canva", "picasa", "luminar", "dxo", "faststone", "irfanview", "xnview", "photoscape",
    "krita", "photopea", "paintshop", "corel",
)  # fmt: skip

_SOFTWARE = 0x0131
_MODIFY_DATE = 0x0132
_ORIENTATION = 0x0112


@dataclass
class Specimen:
    """What one image says about its own history."""

    sha256: str
    width: int  # as shown, after EXIF orientation
    height: int
    format: str
    orientation: int
    camera: bool  # camera make/model or capture time in EXIF
    editor: str | None  # an image editor named in EXIF Software
    modified: str | None  # EXIF DateTime, "YYYY:MM:DD HH:MM:SS"
    look: npt.NDArray[np.uint8]  # reduced, oriented grey image
    image: Image.Image | None = field(default=None, repr=False)  # the JPEG itself, undecoded
    full: bool = True  # False when only a reduced rendition could be read
    # The look at FRAME_SIDE and its ORB features, found once per specimen
    # however many copies it is aligned with.
    _work: npt.NDArray[np.uint8] | None = field(default=None, init=False, repr=False, compare=False)
    _features: Features | None = field(default=None, init=False, repr=False, compare=False)

    def working(self) -> npt.NDArray[np.uint8]:
        if self._work is None:
            self._work = _working(self.look)
        return self._work

    def features(self) -> Features:
        if self._features is None:
            self._features = features(self.working())
        return self._features

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def jpeg(self) -> bool:
        return self.full and self.format in ("JPEG", "MPO") and self.image is not None


def examine(sha256: str, data: bytes, full: bool = True) -> Specimen | None:
    """A specimen from an image's bytes, or None when they cannot be read.
    `full`: the bytes are the original (not a reduced rendition)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            image_format = (image.format or "").upper()
            exif = image.getexif()
            orientation = exif.get(_ORIENTATION, 1)
            orientation = orientation if isinstance(orientation, int) else 1
            capture = read_capture_facts(image)
            software = str(exif.get(_SOFTWARE) or "").strip()
            modified = str(exif.get(_MODIFY_DATE) or "").strip() or None
            width, height = image.size
            look = image.copy() if image_format not in ("JPEG", "MPO") else image
            if image_format in ("JPEG", "MPO"):
                # A JPEG keeps its tables after draft; decode the look from a second open.
                look = Image.open(io.BytesIO(data))
                look.draft("RGB", (LOOK_SIDE, LOOK_SIDE))
            look = look.convert("RGB")
            look.thumbnail((LOOK_SIDE, LOOK_SIDE), Image.Resampling.BILINEAR)
            look = _orient(look, orientation)
    except Exception:  # a damaged file gives no evidence, never a lost cluster
        return None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    lowered = software.lower()
    return Specimen(
        sha256=sha256,
        width=width,
        height=height,
        format=image_format,
        orientation=orientation,
        camera=bool(capture.make or capture.model or capture.taken_at),
        editor=software if any(name in lowered for name in EDITORS) else None,
        modified=modified,
        look=np.asarray(look.convert("L"), dtype=np.uint8),
        image=image,
        full=full,
    )


_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _orient(image: Image.Image, orientation: int) -> Image.Image:
    for step in _TRANSPOSE.get(orientation, ()):
        image = image.transpose(step)
    return image


@dataclass(frozen=True)
class Finding:
    """How two copies relate. `parent`: the sha256 the other was made from, or
    None when undecided or when they show the same pixels. `kind`: the child
    in words a planner reads ("a watermarked copy")."""

    parent: str | None
    kind: str
    same_pixels: bool = False


UNDECIDED = Finding(None, "a copy")


def border_share(grey: npt.NDArray[np.uint8]) -> float:
    """Largest share of a side taken by a uniform band along the image's edge."""
    height, width = grey.shape
    if min(height, width) < 16:
        return 0.0
    corners = np.array([grey[0, 0], grey[0, -1], grey[-1, 0], grey[-1, -1]], dtype=np.int16)
    background = int(np.median(corners))
    content = np.abs(grey.astype(np.int16) - background) > BORDER_TOLERANCE
    rows = np.flatnonzero(content.mean(axis=1) > 0.01)
    cols = np.flatnonzero(content.mean(axis=0) > 0.01)
    if rows.size == 0 or cols.size == 0:
        return 0.0
    top, bottom = int(rows[0]), height - 1 - int(rows[-1])
    left, right = int(cols[0]), width - 1 - int(cols[-1])
    return float(max(top / height, bottom / height, left / width, right / width))


def _working(grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A reduced image at FRAME_SIDE long side."""
    height, width = grey.shape
    scale = FRAME_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(grey, size, interpolation=interpolation), dtype=np.uint8)


Box = tuple[float, float, float, float]  # left, top, right, bottom in pixel-edge coordinates


def _mapped_frame(w: npt.NDArray[np.float64], shape: tuple[int, ...]) -> Box:
    """The bounding box of an image's frame (shape: height, width) mapped by the
    pixel-centre similarity `w` into another image."""
    height, width = shape[:2]
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    mapped = (corners - 0.5) @ w[:2, :2].T + w[:2, 2] + 0.5
    return (
        float(mapped[:, 0].min()),
        float(mapped[:, 1].min()),
        float(mapped[:, 0].max()),
        float(mapped[:, 1].max()),
    )


def _margins(box: Box, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """Share of each side (left, top, right, bottom) between the image's edge
    and `box`; negative where the box reaches beyond the edge."""
    height, width = shape[:2]
    left, top, right, bottom = box
    return left / width, top / height, (width - right) / width, (height - bottom) / height


def _correlation(
    inner: npt.NDArray[np.uint8], outer: npt.NDArray[np.uint8], w: npt.NDArray[np.float64]
) -> float:
    """Correlation of the inner image with the outer one's picture under it."""
    height, width = outer.shape
    warped = cv2.warpAffine(
        inner.astype(np.float32), w[:2].astype(np.float32), (width, height),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0,
    )  # fmt: skip
    inside = cv2.erode((warped >= 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if int(inside.sum()) < 256:
        return 0.0
    x = cv2.GaussianBlur(warped, (0, 0), FRAME_BLUR)[inside]
    y = cv2.GaussianBlur(outer.astype(np.float32), (0, 0), FRAME_BLUR)[inside]
    if float(x.std()) < 1e-3 or float(y.std()) < 1e-3:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _gradient(parts: list[npt.NDArray[np.float32]]) -> float | None:
    """Mean absolute grey-level step between neighbouring pixels, pooled."""
    total, count = 0.0, 0
    for part in parts:
        for axis in (0, 1):
            if part.shape[axis] > 1 and part.shape[1 - axis] > 0:
                steps = np.abs(np.diff(part, axis=axis))
                total += float(steps.sum())
                count += steps.size
    return total / count if count else None


def _margins_added(outer: npt.NDArray[np.uint8], box: Box) -> bool | None:
    """Whether the outer image's margins around `box` (the inner frame) were
    added (padding) rather than being the photo (the inner is a crop); None when
    neither tells."""
    height, width = outer.shape
    grey = outer.astype(np.float32)
    g = FRAME_GUARD
    left, top = max(0, math.ceil(box[0])), max(0, math.ceil(box[1]))
    right, bottom = min(width, math.floor(box[2])), min(height, math.floor(box[3]))
    if right - left < 16 or bottom - top < 16:
        return None
    share = _margins(box, outer.shape)
    margins: list[npt.NDArray[np.float32]] = []
    inside: list[npt.NDArray[np.float32]] = []
    if share[0] > FRAME_TOLERANCE:
        depth = max(4, left - g)
        margins.append(grey[top:bottom, : left - g])
        inside.append(grey[top:bottom, left + g : left + g + depth])
    if share[2] > FRAME_TOLERANCE:
        depth = max(4, width - right - g)
        margins.append(grey[top:bottom, right + g :])
        inside.append(grey[top:bottom, max(left, right - g - depth) : right - g])
    if share[1] > FRAME_TOLERANCE:
        depth = max(4, top - g)
        margins.append(grey[: top - g, left:right])
        inside.append(grey[top + g : top + g + depth, left:right])
    if share[3] > FRAME_TOLERANCE:
        depth = max(4, height - bottom - g)
        margins.append(grey[bottom + g :, left:right])
        inside.append(grey[max(top, bottom - g - depth) : bottom - g, left:right])
    margin, strip = _gradient(margins), _gradient(inside)
    if margin is None or strip is None:
        return None
    if margin < FLAT_DETAIL and strip < FLAT_DETAIL:
        return None
    return margin < PAD_DETAIL_RATIO * strip


def _frames(a: Specimen, b: Specimen) -> Finding | None:
    """Padding or a crop, from where each copy's frame lands in the other's;
    None when the frames match, when one does not lie inside the other, or when
    the two cannot be aligned."""
    if min(a.look.shape) < FRAME_MIN_SIDE or min(b.look.shape) < FRAME_MIN_SIDE:
        return None
    grey_a, grey_b = a.working(), b.working()
    try:
        w, _inliers = similarity(a.features(), b.features())
    except cv2.error:
        return None
    if w is None or abs(math.degrees(math.atan2(w[1, 0], w[0, 0]))) > FRAME_MAX_ROTATION:
        return None
    share = _margins(_mapped_frame(w, grey_a.shape), grey_b.shape)
    if min(share) >= -FRAME_TOLERANCE and max(share) > FRAME_TOLERANCE:
        inner, outer, grey_in, grey_out = a, b, grey_a, grey_b
    elif max(share) <= FRAME_TOLERANCE and min(share) < -FRAME_TOLERANCE:
        inner, outer, grey_in, grey_out = b, a, grey_b, grey_a
        w = np.asarray(np.linalg.inv(w), dtype=np.float64)
    else:
        return None
    if _correlation(grey_in, grey_out, w) < FRAME_MIN_CORRELATION:
        return None
    added = _margins_added(grey_out, _mapped_frame(w, grey_in.shape))
    if added is None:
        return None
    if added:
        return Finding(inner.sha256, "a copy with added borders")
    return Finding(outer.sha256, "a cropped copy")


def _same_look(a: Specimen, b: Specimen) -> tuple[npt.NDArray[np.float32], ...] | None:
    """Both reduced images at one size, when they frame the same view."""
    if abs(a.width / a.height - b.width / b.height) > 0.01 * (a.width / a.height):
        return None
    height, width = min(a.look.shape[0], b.look.shape[0]), min(a.look.shape[1], b.look.shape[1])

    def fit(grey: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        if grey.shape != (height, width):
            grey = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BOX))
        return grey.astype(np.float32)

    return fit(a.look), fit(b.look)


def _added(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> bool:
    """Whether some blocks differ far more than a re-encode would: a logo, text."""
    shift = float(np.median(y - x))
    far = _block_error((x + shift)[..., None], y[..., None]) > ADDED_BLOCK_LEVELS
    return float(far.mean()) >= ADDED_MIN_SHARE


def _clipped_loss(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> float:
    """Share of pixels clipped to white or black in X where Y still shows texture."""
    lost = 0.0
    for mask in (x >= 253, x <= 2):
        share = float(mask.mean())
        if share < CLIPPED_MIN_SHARE:
            continue
        if float(y[mask].std()) > CLIPPED_TEXTURE:
            lost += share
    return lost


def _region(spec: Specimen) -> tuple[int, int, int, int]:
    assert spec.image is not None
    width, height = spec.image.size
    side_x, side_y = min(REGION_SIDE, width // 16 * 16), min(REGION_SIDE, height // 16 * 16)
    left = (width - side_x) // 2 // 16 * 16
    top = (height - side_y) // 2 // 16 * 16
    return left, top, left + side_x, top + side_y


def _decoded_region(spec: Specimen) -> Image.Image:
    assert spec.image is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.image.load()
    return spec.image.crop(_region(spec))


def _tone_map(
    source: npt.NDArray[np.uint8], target: npt.NDArray[np.uint8], keep: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.uint8], float]:
    """The per-channel tone curve that best takes source to target (mean target
    level for each source level, over the `keep` pixels), applied to source; and
    how far it moves levels on average."""
    out = np.empty_like(source)
    moved = 0.0
    weights = keep.ravel().astype(np.float64)
    for channel in range(source.shape[2]):
        src = source[..., channel].ravel()
        dst = target[..., channel].ravel().astype(np.float64)
        counts = np.bincount(src, weights=weights, minlength=256)
        sums = np.bincount(src, weights=dst * weights, minlength=256)
        present = np.flatnonzero(counts)
        if present.size == 0:
            return source.copy(), 0.0
        curve = np.interp(np.arange(256), present, sums[present] / counts[present])
        curve = np.clip(np.rint(curve), 0, 255).astype(np.uint8)
        out[..., channel] = curve[source[..., channel]]
        moved += float((np.abs(curve.astype(np.float64) - np.arange(256)) * counts).sum())
    return out, moved / max(1.0, float(weights.sum()) * source.shape[2])


def _block_error(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    """Mean absolute difference per 8x8 block."""
    error = np.abs(x - y).mean(axis=2)
    height, width = error.shape[0] // 8 * 8, error.shape[1] // 8 * 8
    blocks = error[:height, :width].reshape(height // 8, 8, width // 8, 8)
    means: npt.NDArray[Any] = blocks.mean(axis=(1, 3))
    return means


def _recompressed(
    pixels: npt.NDArray[np.uint8], mode: str, target_spec: Specimen
) -> npt.NDArray[np.float32]:
    assert target_spec.image is not None
    rebuilt = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    params: dict[str, Any] = {"qtables": target_spec.image.quantization}  # type: ignore[attr-defined]
    if mode != "L":
        sampling = JpegImagePlugin.get_sampling(target_spec.image)
        if sampling >= 0:
            params["subsampling"] = sampling
    rebuilt.save(buffer, "JPEG", **params)
    with Image.open(buffer) as again:
        result = np.asarray(again.convert(mode), dtype=np.float32)
    return result[..., None] if result.ndim == 2 else result


def _explain(
    source: Image.Image, target: Image.Image, target_spec: Specimen
) -> tuple[float, float, float]:
    """How well `target` is explained as `source` (tone-mapped or not) and
    re-compressed with the target's own tables: (trimmed error, tone change,
    share of blocks still far off)."""
    mode = target.mode
    src = np.asarray(source.convert(mode), dtype=np.uint8)
    dst = np.asarray(target, dtype=np.uint8)
    if src.ndim == 2:
        src, dst = src[..., None], dst[..., None]
    # Added content (a logo) must not bend the tone curve: fit, drop the blocks
    # the curve cannot explain, fit again on the rest.
    keep = np.ones(src.shape[:2], dtype=bool)
    mapped, moved = _tone_map(src, dst, keep)
    far_blocks = _block_error(mapped.astype(np.float32), dst.astype(np.float32))
    far_blocks = far_blocks > ADDED_BLOCK_LEVELS / 2
    keep[: far_blocks.shape[0] * 8, : far_blocks.shape[1] * 8] = ~np.repeat(
        np.repeat(far_blocks, 8, axis=0), 8, axis=1
    )
    mapped, moved = _tone_map(src, dst, keep)
    best: tuple[float, float, float] | None = None
    for candidate, tone in ((src, 0.0), (mapped, moved)):
        per_block = np.sort(
            _block_error(
                _recompressed(candidate, mode, target_spec), dst.astype(np.float32)
            ).ravel()
        )
        kept = per_block[: max(1, int(len(per_block) * TRIM_SHARE))]
        far = float((per_block > ADDED_BLOCK_LEVELS).mean())
        result = (float(kept.mean()), tone, far)
        if best is None or result[0] < best[0]:
            best = result
    assert best is not None
    return best


def _dct_matrix() -> npt.NDArray[np.float64]:
    k = np.arange(8)
    matrix = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    matrix[0] /= np.sqrt(2)
    out: npt.NDArray[np.float64] = matrix
    return out


_DCT = _dct_matrix()


def _lattice_distance(
    pixels: npt.NDArray[np.uint8], coarse: list[int], own: list[int]
) -> float | None:
    """Double quantisation: how close the luma DCT coefficients of `pixels` lie
    to multiples of another image's (coarser) quantisation steps, in steps (0:
    on that lattice; about 0.25: no trace of it). Only where the other step is
    clearly coarser than the image's own and the coefficient is not ~0. None
    when too few coefficients tell."""
    steps, mine = np.asarray(coarse, dtype=np.float64), np.asarray(own, dtype=np.float64)
    if steps.size != 64 or mine.size != 64:
        return None
    useful = (steps >= LATTICE_COARSER * mine).reshape(8, 8)
    useful[0, 0] = False  # DC also carries the level shift's rounding
    if not useful.any():
        return None
    grey = pixels.astype(np.float64)
    if grey.ndim == 3:
        grey = grey[..., 0] * 0.299 + grey[..., 1] * 0.587 + grey[..., 2] * 0.114
    height, width = grey.shape[0] // 8 * 8, grey.shape[1] // 8 * 8
    tiled = (grey[:height, :width] - 128).reshape(height // 8, 8, width // 8, 8)
    blocks = tiled.transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    coefficients = _DCT @ blocks @ _DCT.T
    scaled = coefficients[:, useful] / steps.reshape(8, 8)[useful]
    scaled = scaled[np.abs(scaled) >= 0.75]
    if scaled.size < LATTICE_MIN_COEFFICIENTS:
        return None
    return float(np.abs(scaled - np.rint(scaled)).mean())


def _recompression(a: Specimen, b: Specimen) -> Finding | None:
    """The asymmetric re-compression test on two JPEGs of one stored size."""
    if not (a.jpeg and b.jpeg) or a.image is None or b.image is None:
        return None
    if a.image.size != b.image.size or a.orientation != b.orientation:
        return None
    if a.image.mode not in ("RGB", "L") or a.image.mode != b.image.mode:
        return None
    try:
        region_a, region_b = _decoded_region(a), _decoded_region(b)
        if min(region_a.size) < 16:
            return None
        a_to_b, tone_ab, far_ab = _explain(region_a, region_b, b)
        b_to_a, tone_ba, far_ba = _explain(region_b, region_a, a)
    except (OSError, ValueError, TypeError):
        return None
    if np.array_equal(np.asarray(region_a), np.asarray(region_b)) and a_to_b == b_to_a == 0:
        return None
    if a_to_b < EXPLAIN_RATIO * b_to_a and b_to_a - a_to_b > EXPLAIN_MARGIN:
        return Finding(a.sha256, _edit_words(tone_ab, far_ab))
    if b_to_a < EXPLAIN_RATIO * a_to_b and a_to_b - b_to_a > EXPLAIN_MARGIN:
        return Finding(b.sha256, _edit_words(tone_ba, far_ba))
    # Each explains the other (the copy was saved finer than the original):
    # the copy still carries the original's coarser quantisation.
    luma_a = list(a.image.quantization[0])  # type: ignore[attr-defined]
    luma_b = list(b.image.quantization[0])  # type: ignore[attr-defined]
    arr_a = np.asarray(region_a.convert("RGB"), dtype=np.uint8)
    arr_b = np.asarray(region_b.convert("RGB"), dtype=np.uint8)
    keep = np.ones(arr_a.shape[:2], dtype=bool)
    b_as_a, _ = _tone_map(arr_b, arr_a, keep)
    a_as_b, _ = _tone_map(arr_a, arr_b, keep)
    b_on_a = _lattice_distance(b_as_a, luma_a, luma_b)
    a_on_b = _lattice_distance(a_as_b, luma_b, luma_a)
    if b_on_a is not None and b_on_a < LATTICE_ON and (a_on_b is None or a_on_b > LATTICE_OFF):
        return Finding(a.sha256, _edit_words(tone_ab, far_ab))
    if a_on_b is not None and a_on_b < LATTICE_ON and (b_on_a is None or b_on_a > LATTICE_OFF):
        return Finding(b.sha256, _edit_words(tone_ba, far_ba))
    return None


def _edit_words(tone: float, far: float) -> str:
    if far >= ADDED_MIN_SHARE:
        return "a copy with added content (a watermark, logo or text)"
    if tone >= TONE_EDIT_LEVELS:
        return "a brightness- or colour-edited copy"
    return "a re-encoded copy"


Look = tuple[npt.NDArray[np.float32], ...] | None  # _same_look's answer


def relate(a: Specimen, b: Specimen) -> Finding:
    """Which of two copies was made from the other, on the first evidence that
    tells; evidence in the order of how much it can be trusted."""
    same = _same_look(a, b)
    for evidence in (_by_pixels, _by_frame, _by_size, _by_recompression, _by_file):
        found = evidence(a, b, same)
        if found is not None:
            return found
    return UNDECIDED


def _by_pixels(a: Specimen, b: Specimen, same: Look) -> Finding | None:
    if (
        a.full
        and b.full
        and a.image is not None
        and b.image is not None
        and a.image.size == b.image.size
        and a.orientation == b.orientation
        and a.pixels <= SAME_PIXELS_MAX
        and _same_pixels(a, b)
    ):
        return Finding(None, "a copy with the same pixels", same_pixels=True)
    return None


def _by_frame(a: Specimen, b: Specimen, same: Look) -> Finding | None:
    # One frame inside the other: padding or a crop, whatever the padding shows.
    if _frames_may_differ(a, b):
        framed = _frames(a, b)
        if framed is not None:
            return framed
    # An added uniform border (letterboxing, a passe-partout), when alignment fails.
    share_a, share_b = border_share(a.look), border_share(b.look)
    if share_a >= BORDER_SHARE and share_b < BORDERLESS_SHARE:
        return Finding(b.sha256, "a copy with added borders")
    if share_b >= BORDER_SHARE and share_a < BORDERLESS_SHARE:
        return Finding(a.sha256, "a copy with added borders")
    return None


def _by_size(a: Specimen, b: Specimen, same: Look) -> Finding | None:
    # Fewer pixels: nothing adds detail back.
    if abs(a.pixels - b.pixels) > SIZE_TOLERANCE * max(a.pixels, b.pixels):
        large = b if a.pixels < b.pixels else a
        kind = "a smaller copy" if same is not None else "a cropped copy"
        return Finding(large.sha256, kind)
    return None


def _by_recompression(a: Specimen, b: Specimen, same: Look) -> Finding | None:
    found = _recompression(a, b)
    # The re-compression test saw the centre; the look sees the corners.
    if (
        found is not None
        and same is not None
        and found.kind == "a re-encoded copy"
        and _added(*same)
    ):
        return Finding(found.parent, _edit_words(0.0, 1.0))
    return found


def _by_file(a: Specimen, b: Specimen, same: Look) -> Finding | None:
    """What the files say: format, clipped tones, the camera's EXIF, the
    editing software, the modification time."""
    if not (a.full and b.full):
        return UNDECIDED  # a thumbnail carries no format or EXIF of its own
    web_a, web_b = a.format in WEB_FORMATS, b.format in WEB_FORMATS
    if web_a != web_b and (a.format in FORMATS_ORIGINAL or b.format in FORMATS_ORIGINAL):
        child = a if web_a else b
        return Finding(b.sha256 if web_a else a.sha256, f"a copy converted to {child.format}")
    if same is not None:
        lost_a, lost_b = _clipped_loss(*same), _clipped_loss(same[1], same[0])
        if lost_a > lost_b + CLIPPED_MIN_SHARE:
            return Finding(b.sha256, "a brightness-edited copy (clipped tones)")
        if lost_b > lost_a + CLIPPED_MIN_SHARE:
            return Finding(a.sha256, "a brightness-edited copy (clipped tones)")
    if a.camera != b.camera:
        return Finding(a.sha256 if a.camera else b.sha256, "a copy without the camera's EXIF")
    if (a.editor is None) != (b.editor is None):
        child = a if a.editor else b
        return Finding(b.sha256 if a.editor else a.sha256, f"a copy saved by {child.editor}")
    if a.modified and b.modified and a.modified != b.modified:
        child = a if a.modified > b.modified else b
        return Finding(b.sha256 if child is a else a.sha256, "a later-modified copy")
    return None


def _completeness(spec: Specimen | None) -> tuple[bool, bool, bool]:
    """Sorts the most complete file of same-pixel copies first."""
    assert spec is not None
    return (spec.format not in FORMATS_ORIGINAL, not spec.camera, spec.editor is not None)


def _frames_may_differ(a: Specimen, b: Specimen) -> bool:
    """Whether padding or a crop could tell the two apart: their sizes or their
    aspect ratios differ."""
    if abs(a.pixels - b.pixels) > SIZE_TOLERANCE * max(a.pixels, b.pixels):
        return True
    return abs(math.log((a.width * b.height) / (a.height * b.width))) > FRAME_TOLERANCE / 2


def _same_pixels(a: Specimen, b: Specimen) -> bool:
    assert a.image is not None and b.image is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.image.load()
            b.image.load()
        if a.image.mode != b.image.mode:
            return False
        return bool(np.array_equal(np.asarray(a.image), np.asarray(b.image)))
    except (OSError, ValueError):
        return False


# Bump when a rule above may find a group's lineage otherwise: saved families
# of an older version are found again.
LINEAGE_VERSION = 3


def group_key(shas: Iterable[str], sizes: dict[str, tuple[int, int]] | None = None) -> str:
    """The key a group's family is saved under: its members' content digests
    (and the sizes told for reduced renditions), in order."""
    text = "|".join(
        f"{sha}:{sizes[sha][0]}x{sizes[sha][1]}" if sizes and sha in sizes else sha
        for sha in sorted(set(shas))
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Family:
    """The lineage of one group of copies: for each image, how many of the
    others it was found made from (0: an original), and every pair's finding."""

    derived: dict[str, int] = field(default_factory=dict)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    # True when every copy's original was read (not only a reduced rendition):
    # a family found from renditions is worth finding again from originals.
    full: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": LINEAGE_VERSION,
                "derived": self.derived,
                "findings": [
                    [a, b, f.parent, f.kind, f.same_pixels]
                    for (a, b), f in sorted(self.findings.items())
                ],
                "full": self.full,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Family | None:
        """None for a family saved by another version of these rules."""
        data = json.loads(text)
        if data.get("version") != LINEAGE_VERSION:
            return None
        return cls(
            derived={str(k): int(v) for k, v in data["derived"].items()},
            findings={
                (a, b): Finding(parent, kind, bool(same))
                for a, b, parent, kind, same in data["findings"]
            },
            full=bool(data["full"]),
        )

    def finding(self, a: str, b: str) -> Finding:
        return self.findings.get((a, b) if a < b else (b, a), UNDECIDED)

    def describe(self, root: str, others: Iterable[str]) -> str:
        """The others in words, as the root's relatives: "a watermarked copy and
        2 re-encoded copies"."""
        counts: dict[str, int] = {}
        for other in others:
            found = self.finding(root, other)
            kind = found.kind if found.parent in (root, None) else "a copy"
            counts[kind] = counts.get(kind, 0) + 1
        parts = [
            kind if count == 1 else f"{count} {_plural(kind)}" for kind, count in counts.items()
        ]
        if len(parts) <= 1:
            return "".join(parts)
        return ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural(kind: str) -> str:
    words = kind.removeprefix("a ").removeprefix("an ")
    return words.replace("copy", "copies", 1)


# sha256 -> bytes of the original (None when unreadable), and a reduced rendition.
ReadBytes = Callable[[str], bytes | None]

RelationKey = tuple[str, str, bool, bool, int, int, int, int]


def relation_key(x: Specimen, y: Specimen) -> RelationKey:
    return (x.sha256, y.sha256, x.full, y.full, x.width, x.height, y.width, y.height)


def relation_text(key: RelationKey) -> str:
    """A finding's key as the index keeps it, with the rules' version: a
    finding of older rules is not found."""
    sha_x, sha_y, full_x, full_y, wx, hx, wy, hy = key
    judged = f"{'f' if full_x else 'r'}{wx}x{hx}-{'f' if full_y else 'r'}{wy}x{hy}"
    return f"{sha_x}-{sha_y}-{judged}-v{LINEAGE_VERSION}"


def finding_json(found: Finding) -> str:
    return json.dumps([found.parent, found.kind, found.same_pixels])


def finding_from_json(text: str) -> Finding:
    parent, kind, same = json.loads(text)
    return Finding(None if parent is None else str(parent), str(kind), bool(same))


class RelationMemory(Protocol):
    """Where an Examiner keeps findings: asked once per family for every pair
    it needs, told once what was found new."""

    def recall(self, keys: Iterable[RelationKey]) -> dict[RelationKey, Finding]: ...

    def keep(self, found: dict[RelationKey, Finding]) -> None: ...


class Relations:
    """Findings of `relate` by the two specimens they were found on (content
    digests, whether each was the original, the sizes they were judged at):
    the same two specimens always give the same finding, so a finding is
    kept for whoever examines them next (a webhook server's checks of one
    growing group). Bounded: past `limit` findings it starts again.
    (connector/engine/scan.py keeps them in the index as well, for the next
    process.)"""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._found: dict[RelationKey, Finding] = {}
        self._lock = threading.Lock()

    def recall(self, keys: Iterable[RelationKey]) -> dict[RelationKey, Finding]:
        found = self._found
        return {key: found[key] for key in keys if key in found}

    def keep(self, found: dict[RelationKey, Finding]) -> None:
        with self._lock:
            if len(self._found) + len(found) > self.limit:
                self._found.clear()
            self._found.update(found)


class Specimens:
    """Specimens of stored thumbnails (the copies whose originals cannot be
    read), kept between families with the features found on them: a
    server's checks meet the same groups again and again. Bounded, least
    recently used first out; only thumbnails, so a few megabytes at most.
    Each taker gets a copy of its own (a family sets a thumbnail's true size
    on it)."""

    def __init__(self, limit: int = 256) -> None:
        self._kept: Recent[str, tuple[Specimen, int, int]] = Recent(limit)

    def get(self, sha256: str) -> Specimen | None:
        entry = self._kept.get(sha256)
        if entry is None:
            return None
        spec, width, height = entry
        mine = copy.copy(spec)
        mine.width, mine.height = width, height
        return mine

    def put(self, spec: Specimen, width: int, height: int) -> None:
        self._kept.put(spec.sha256, (copy.copy(spec), width, height))


class Examiner:
    """Specimens read once per content digest, and the lineage of groups."""

    def __init__(
        self,
        read_original: ReadBytes,
        read_reduced: ReadBytes | None = None,
        relations: RelationMemory | None = None,
        kept: Specimens | None = None,
    ) -> None:
        self.read_original = read_original
        self.read_reduced = read_reduced
        self._specimens: dict[str, Specimen | None] = {}
        self._sizes: dict[str, tuple[int, int]] = {}  # reduced ones, as read
        self.relations: RelationMemory = relations if relations is not None else Relations()
        self.kept = kept

    def _relate_all(self, pairs: list[tuple[Specimen, Specimen]]) -> dict[RelationKey, Finding]:
        """`relate` of each pair, found once per pair of specimens as read (a
        group that gains a copy relates only the new one to the others)."""
        keys = {relation_key(x, y): (x, y) for x, y in pairs}
        known = self.relations.recall(keys)
        new = {key: relate(x, y) for key, (x, y) in keys.items() if key not in known}
        if new:
            self.relations.keep(new)
        return known | new

    def specimen(self, sha256: str) -> Specimen | None:
        if sha256 not in self._specimens:
            found = None
            data = self.read_original(sha256)
            if data is not None:
                found = examine(sha256, data)
            elif self.read_reduced is not None:
                found = self.kept.get(sha256) if self.kept is not None else None
                if found is None:
                    reduced = self.read_reduced(sha256)
                    if reduced is not None:
                        found = examine(sha256, reduced, full=False)
                if found is not None:
                    self._sizes[sha256] = (found.width, found.height)
            self._specimens[sha256] = found
        return self._specimens[sha256]

    def _keep(self, specimens: Iterable[Specimen | None]) -> None:
        """The thumbnails' specimens, with what was found on them, for the next family."""
        if self.kept is not None:
            for spec in specimens:
                if spec is not None and not spec.full:
                    self.kept.put(spec, *self._sizes[spec.sha256])

    def family(
        self, shas: Iterable[str], sizes: dict[str, tuple[int, int]] | None = None
    ) -> Family:
        """`sizes`: the true size of images only a reduced rendition was read of."""
        members = sorted(set(shas))
        specimens = {sha: self.specimen(sha) for sha in members}
        for sha, spec in specimens.items():
            if spec is not None and not spec.full and sizes and sha in sizes:
                spec.width, spec.height = sizes[sha]
        out = Family(
            derived=dict.fromkeys(members, 0),
            full=all(spec is not None and spec.full for spec in specimens.values()),
        )
        readable = [sha for sha in members if specimens[sha] is not None]
        # Copies with the same pixels are one image to the lineage: each takes
        # the relations of the one in a camera format (a PNG of the original is
        # not "converted" from a re-encode of it). `relate` finds the same
        # pixels first, by `_by_pixels`, so that test alone decides here.
        same: dict[str, str] = {sha: sha for sha in readable}
        for i, a in enumerate(readable):
            for b in readable[i + 1 :]:
                spec_a, spec_b = specimens[a], specimens[b]
                assert spec_a is not None and spec_b is not None
                if same[a] == a and same[b] == b:
                    found = _by_pixels(spec_a, spec_b, None)
                    if found is not None:
                        same[b] = same[a]
                        out.findings[(a, b)] = found
        classes: dict[str, list[str]] = {}
        for sha in readable:
            classes.setdefault(same[sha], []).append(sha)
        # The class speaks with its most complete file: a camera format, the
        # camera's EXIF, no editor named (a metadata-stripped byte-for-byte
        # copy of the original must not make the original "without EXIF").
        speaker = {}
        for group in classes.values():
            best = min(group, key=lambda sha: _completeness(specimens[sha]))
            for sha in group:
                speaker[sha] = best
        between: dict[tuple[str, str], tuple[Specimen, Specimen]] = {}
        for i, a in enumerate(readable):
            for b in readable[i + 1 :]:
                if same[a] != same[b]:
                    x, y = sorted((speaker[a], speaker[b]))
                    spec_x, spec_y = specimens[x], specimens[y]
                    assert spec_x is not None and spec_y is not None
                    between[(a, b)] = (spec_x, spec_y)
        related = self._relate_all(list(between.values()))
        for (a, b), (spec_x, spec_y) in between.items():
            found = related[relation_key(spec_x, spec_y)]
            if found.parent is not None:
                parent = a if found.parent == speaker[a] else b
                found = Finding(parent, found.kind)
                out.derived[b if parent == a else a] += 1
            out.findings[(a, b)] = found
        self._keep(specimens.values())
        return out
