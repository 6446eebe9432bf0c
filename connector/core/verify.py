"""Pixel-level verification of a candidate duplicate pair.

Perceptual hashes put re-encodes, resized copies and lightly edited copies of
one photograph close together, but also burst frames, stereo pairs and other
angles of the same scene. This module decides, from two small decodes,
whether B is the same exposure as A up to a similarity transform (resize,
light crop, small rotation), a global tone change and at most one local edit
in a thin strip along an edge or in a corner (watermark, caption, date).

1. Both images go to a common scale: the smaller one's long side.
2. Alignment: ORB matches -> similarity by RANSAC; with too few matches and
   matching aspect ratios, a plain resize is the start instead. ECC refines
   it (affine, half then full scale) with the regions that disagree under the
   feature alignment masked out. An affine far from a similarity fails.
3. The overlap must span most of each image's width and height.
4. B is warped into A's frame; per-channel tone curves (monotone, both
   directions, chosen by how many blocks they explain) map one onto the
   other; both are blurred slightly.
5. Per block: the sub-pixel shift that best explains the residual
   (Lucas-Kanade), and the residual left after a global sharpness term, that
   shift and a small offset, divided by a noise model that grows with the
   block's texture. Fail when the residual is high everywhere, when any
   block has shifted (parallax, other viewpoint), or when blocks differ
   outside one edge strip/corner; finally require high correlation.

Thresholds are the module constants below, each with the statistic it
bounds and what bench/verify.py measured on pairs built from the photos
bundled with scikit-image and scikit-learn. Deterministic: OpenCV's RANSAC
uses a fixed seed and nothing else is random.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Mat3 = npt.NDArray[np.float64]  # 3x3 homogeneous map, A pixel -> B pixel
Lut = npt.NDArray[np.float32]  # (1, 256, 3) lookup table for cv2.LUT

# The caller stores thumbnails with this long side. Bench at 384 px: median
# ~34 ms CPU per pair, every required case right. At 256 px the median drops
# to ~24 ms, but a 5 % crop starts failing on shift noise and a low-texture
# 10-degree viewpoint pair starts passing.
VERIFY_SIDE = 384

# --- sizes -----------------------------------------------------------------
# Smallest long side (of the smaller image) that is compared at all. With a
# 64 px copy, moved subjects reached only 0.4-0.8 of the block threshold in
# 4 of 20 photos and copies showed 0.72 px of shift noise, so smaller pairs are
# refused ("too small to verify") rather than guessed.
MIN_COMPARE_SIDE = 96
# ORB needs ~31 px patches; smaller images are upsampled to this long side for
# feature detection only (the comparison stays at the common scale).
FEATURE_SIDE = 192
# Images whose blurred grey level varies less than this (std, grey levels)
# carry too little detail to tell apart: blank scans, flat skies (any two
# flat images "match"). The flattest bench positive (a blurred photo) has 5.4.
MIN_DETAIL_STD = 3.0

# --- alignment --------------------------------------------------------------
ORB_FEATURES = 1000
# Low FAST threshold so that low-contrast photos (moon, fog, scans) still get
# keypoints; ORB keeps the strongest ORB_FEATURES anyway.
ORB_FAST_THRESHOLD = 10
# Lowe ratio for Hamming kNN matches.
MATCH_RATIO = 0.8
# RANSAC inlier distance, px at 192-384 px.
RANSAC_PX = 3.0
# Fewer similarity inliers than this is treated as "no feature alignment".
# Only the starting point depends on it (unrelated photos reach 11, tiles of
# one photo 20; they fail the pixel checks after that).
MIN_INLIERS = 12
# Without features, a plain resize is only a plausible start when the aspect
# ratios agree within this (|log ratio|); 6 % still admits a 5 % crop.
ASPECT_TOL = 0.06
# ECC and the pre-ECC outlier search first run at half scale (faster, and
# converging from a few px off) when both images' short sides reach this.
HALF_SCALE_MIN = 96
ECC_ITERS_COARSE = 40
ECC_ITERS_FINE = 8
ECC_EPS = 1e-5
# Before ECC, blocks whose residual under the feature alignment exceeds
# PRIOR_OUTLIER times a noise model that allows PRIOR_SHIFT_PX of
# misalignment are masked out, so a caption band or watermark cannot drag
# the least-squares ECC fit (it did by 3-28 px without the mask).
PRIOR_SHIFT_PX = 1.0
PRIOR_OUTLIER = 3.0
# ...unless that would leave less than this share of B for ECC.
PRIOR_MIN_KEPT = 0.25
# Max corner displacement (px at the common scale) caused by the non-
# similarity part of the refined affine. Bench positives <= 0.57 px (resize
# rounding); the negatives this check decides sit at >= 5.6 px.
MAX_DISTORTION_PX = 1.5

# --- padding ----------------------------------------------------------------
# A side of an image is padding (an added border, letterboxing) when its
# outermost lines are one colour: at least PAD_LINE_SHARE of each line within
# PAD_TOLERANCE grey levels (JPEG ringing) of the outermost line's median,
# for at least PAD_MIN_SHARE of the length across that side (a dark edge row
# of a photo is not padding). A side whose opposite side is padding of the
# same colour (a frame, bars) needs only PAD_MIN_SHARE of the short side: a
# frame is as deep on every side, sized against the short side, so a 3 %
# frame on a 16:9 photo is 1.7 % of its width (large set: such a frame's
# left side, 7 uniform columns of 384, was not padding while the other three
# sides were, and its edge read as 0.6 px of shift). Only then: a blurred
# page's own flat margin on one side, 7 columns of 384, became padding and
# misled the alignment (bench/verify.py). Padding is no content: it is left
# out of the comparison and of the coverage, with PAD_MARGIN_PX more px next to it,
# where resampling and JPEG blend the border's colour into the photo's edge
# (bench: without that margin 1-3 px of blend read as 0.6-1.3 px of shift).
# The padding itself is still compared where the other image has content
# there: a photo's own flat side can pass for padding, and something pasted
# over it in a copy is a difference.
PAD_TOLERANCE = 12.0
PAD_LINE_SHARE = 0.98
PAD_MIN_SHARE = 0.02
PAD_MARGIN_PX = 3

# --- coverage ---------------------------------------------------------------
# The overlap must span at least this share of each image's width and of its
# height (a linear measure: a 5 % crop on every side keeps 0.90 of each axis
# but only 0.81 of the area). Bench: worst positive 0.895 (5 % off every
# side), a 25 % crop on one side 0.75, 15 % off every side 0.70.
MIN_COVERAGE_EXTENT = 0.82

# --- pixel comparison -------------------------------------------------------
# Blur (px at the common scale) that hides resampling and JPEG block noise.
BLUR_SIGMA = 1.0
# ECC fits images already blurred by BLUR_SIGMA and differentiates them with a
# 3-tap filter, so the border's edge reaches ECC_PAD_MARGIN_PX into the photo:
# PAD_MARGIN_PX of blend, about 2 sigma of blur and 1 px of the gradient's tap.
# Where B's mask left that edge in, its strong gradient pulled the fit towards
# the border (large set: black bars on both sides stretched the fit by 1 % of
# the width, read as 1.3 px of "parallax" at the edges), more at half scale,
# where the same margin covers half as much of the blend.
ECC_PAD_MARGIN_PX = PAD_MARGIN_PX + math.ceil(2 * BLUR_SIGMA) + 1
# Blocks along the long side; 16 gives 24 px blocks at 384 px.
BLOCKS_LONG = 16
# A block is compared only when this share of it lies in the overlap.
MIN_BLOCK_VALID = 0.5
# Conditional-mean bins of the tone curve (must divide 256).
TONE_BINS = 128
# Grey-level distances beyond which histogram cells are ignored when refitting
# the tone curve (successive passes); brightness/gamma edits stay well inside.
TONE_OUTLIER_STEPS = (48.0, 24.0)
_OUTLIER_STEPS = np.array(TONE_OUTLIER_STEPS, dtype=np.float64)
# Bins whose mapped level is within this of 0 or 255 are clipped: the curve
# may run flat there.
TONE_CLIP_LEVEL = 2.0
# A block whose mean |mapped - target| (mean over channels, grey levels)
# exceeds TONE_BAD_BLOCK is "wrong" for a tone-curve candidate (JPEG q60
# stays < 4); error below TONE_OK_BLOCK is rounding/compression noise.
TONE_BAD_BLOCK = 10.0
TONE_OK_BLOCK = 1.5
TONE_BLOCK_CAP = 3.0
# Clipping decides the direction when the two candidates explain the pair
# about as well: a curve can clip levels, never bring clipped ones back, so
# when one image has at least TONE_CLIP_SHARE more of its values at 0 or 255
# (within TONE_CLIP_LEVEL), the candidate mapping the other onto it has its
# cost multiplied by TONE_CLIP_FAVOUR. Fixtures: a +15 % brighter copy of a
# photo with a bright sky (2.8 % of its values clipped, 0.3 % in the
# original) scored 99.8 against 100.3 the wrong way round when it came first,
# and failed on five sky blocks.
TONE_CLIP_SHARE = 0.005
TONE_CLIP_FAVOUR = 0.9
# Least slope of a tone curve between its populated levels. Gamma 1.25 still
# rises at 0.35 from level 2 up, brightness -15 % at 0.85; clipping is allowed
# (the curve is clipped to 0..255 after the fit). Without it a black caption
# band over a low-contrast photo was "explained" as a tone change.
TONE_MIN_SLOPE = 0.3
# Ridge (squared grey levels/px, per pixel and channel) of the per-block
# Lucas-Kanade shift: directions with less texture than this give ~0 shift.
LK_RIDGE = 4.0
# Grey levels of a block-wide offset (per channel) that are forgiven as a
# local tone difference rather than a content change.
DC_ALLOW = 8.0
# Noise model of a block's rms residual (after tone matching, blur, a global
# sharpness term, the block's own sub-pixel shift and up to DC_ALLOW of offset):
# sqrt(NOISE_FLOOR^2 + (SHIFT_FLOOR * rms gradient)^2), grey levels. The
# block ratio is residual / model.
NOISE_FLOOR = 1.0
SHIFT_FLOOR = 0.1
# The pair's noise level is this quantile of its block ratios.
NOISE_QUANTILE = 75
# A block differs when its ratio exceeds max(DIFF_ABS, DIFF_REL * noise).
# Bench: the worst positive block reaches 0.55 of that threshold at >= 192 px
# and 0.77 at 96 px; the faintest moved subject (noise-like texture moved onto
# the same texture, 96 px) 1.53 times it, moved subjects at 384 px >= 2.1.
DIFF_ABS = 2.5
DIFF_REL = 4.0
# A pair whose noise level exceeds this is misaligned or a different shot
# everywhere (bench: positives <= 2.0 (double JPEG), different shots 5-80).
MAX_PAIR_NOISE = 3.0
# Largest residual shift (px at the common scale) allowed in a block that
# does not differ. Bench copies: <= 0.30 px at >= 192 px, <= 0.39 px at
# 96-128 px. 10-degree viewpoint changes leave 0.75 px at the least (a
# blurred clock with texture only in the middle), most several px; stereo 5.
MAX_SHIFT_PX = 0.55
# Differing blocks are accepted only inside a strip this deep along one edge
# (share of the overlap's width/height), or a corner where two strips meet.
EDGE_STRIP_DEPTH = 0.2
# ...and only in the shapes an edit has: a compact block in a corner (logo,
# watermark, date stamp), or a caption band along one edge whose differing
# blocks span at least this share of that edge. New scene content entering
# at an edge (an arm, a passer-by) differs in a patch along the middle of
# one edge, which is neither. Bench: caption bands span 1.0, the "arm"
# negatives 0.3-0.45, with a watermark in the corner beside them up to 0.75.
CAPTION_MIN_SPAN = 0.8
# A band must also be an edit's fill in one of the two images: at least
# BAND_MIN_FLAT of its differing pixels flatter than BAND_FLAT_GRADIENT (grey
# levels/px after the blur). New content along an edge beside a watermark
# spans as far as a band but is texture. Bench: caption bands 0.25-1.0 (the
# band's boundary row and the text are not flat), the fixtures' object at an
# edge beside a corner watermark 0.16: a thin margin.
BAND_FLAT_GRADIENT = 1.0
BAND_MIN_FLAT = 0.2
# A block along one edge counts as in a corner when it reaches this close
# to either end of that edge (share of the edge): a logo wider than the
# corner square (text beside a symbol) still starts at a corner.
CORNER_REACH = 0.1
# ...and spans at most this share of it: new content along the middle of an
# edge next to a watermark in its corner is not one corner block.
CORNER_MAX_SPAN = 0.4
# A differing block that A shifted by MOVE_MIN_PX..MOVE_SEARCH_PX explains
# (its residual drops to MOVE_EXPLAINED of the unshifted one or below) is
# content that moved against the rest (parallax, a moved subject), never an
# edit: an overlay cannot be explained by moving the photo under it. The
# pair fails when at least MOVE_MIN_SHARE of the differing blocks are such
# (a caption band's boundary blocks alone can be, over dark photo content).
MOVE_SEARCH_PX = 4
MOVE_MIN_PX = 1
MOVE_EXPLAINED = 0.4
MOVE_MIN_SHARE = 0.5
# Moves the per-block shift underrates. One Lucas-Kanade step on images
# blurred by BLUR_SIGMA is linear only up to about a pixel, and the ridge
# shrinks it further where texture is faint, so a subject that moved by 3-5 px
# over a flat sky reads as 0.2-0.5 px and a residual under the block threshold
# (large set: consecutive video frames of a kite in the sky passed, the moved
# blocks at 0.65 of the threshold and 0.51 px of shift). A block is searched
# when it still shows some shift (HIDDEN_MIN_SHIFT_PX) and a residual well above
# the pair's noise (HIDDEN_MIN_NOISE times it); it moved when a shift of
# HIDDEN_MIN_PX..HIDDEN_SEARCH_PX px of A leaves at most MOVE_EXPLAINED of its
# residual, with each block's mean removed (a local tone difference is not a
# move). From HIDDEN_MIN_PX = 2 px only: a copy's residual misalignment is
# below MAX_SHIFT_PX, which a whole-pixel shift never explains. The pair fails
# when two neighbouring blocks moved alike (within 1 px): moved content is a
# region, while a single block next to an overlay or in a repetitive texture
# can be matched by chance. Bench (both labelled sets): copies' searched
# blocks keep >= 0.41 of their residual, single blocks only (beside logos);
# moved regions of video frames keep 0.15-0.38 in two or more blocks.
HIDDEN_MIN_SHIFT_PX = 0.1
HIDDEN_MIN_NOISE = 1.5
HIDDEN_MIN_PX = 2
HIDDEN_SEARCH_PX = 6
# Pearson correlation of the tone-matched, blurred images outside the strip
# (bench: positives >= 0.993). A backstop: the checks before it reject every
# bench negative first.
MIN_CORRELATION = 0.95


@dataclass(frozen=True)
class PixelCheck:
    """Outcome of :func:`verify_pair`; ``reason`` is meant for people."""

    passed: bool
    reason: str
    coverage_a: float  # share of A's area covered by the aligned overlap
    coverage_b: float
    correlation: float  # after alignment and tone matching, outside the strip
    differing_blocks: int
    total_blocks: int
    edge_strip: str | None  # where the only differing blocks sit, if anywhere
    scale: float  # B pixels per A pixel
    rotation_deg: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnostics:
    """The statistics behind a :class:`PixelCheck`, for calibration and logs.

    Computed even when an earlier check already failed; NaN where the stage
    was not reached (for instance when nothing could be aligned).
    """

    failed_check: str  # "" when passed; else the first check that failed
    compare_side: int
    detail_std: float
    inliers: int
    aligned_by: str  # "features", "resize" or "none"
    distortion_px: float
    extent_a: float  # share of A's width/height (the smaller) the overlap spans
    extent_b: float
    pair_noise: float
    max_shift_px: float
    content_excess: float  # largest block ratio / threshold away from the strip
    correlation: float


def verify_pair(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> PixelCheck:
    """Decide whether ``b`` is the same photograph as ``a`` (see module doc).

    ``a`` and ``b`` are uint8 RGB arrays (H, W, 3), EXIF-oriented, long side
    at most VERIFY_SIDE; sizes and aspect ratios may differ. Grey (H, W) and
    RGBA arrays are accepted too. Never raises: anything unusable gives
    ``passed=False`` with the reason.
    """
    return verify_pair_detailed(a, b)[0]


def verify_pair_detailed(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]
) -> tuple[PixelCheck, Diagnostics]:
    """:func:`verify_pair` plus the statistics the decision was made on."""
    try:
        return _verify(a, b)
    except Exception as exc:  # pragma: no cover - defensive
        # A verifier must not take the pipeline down, and "not verified" is
        # the safe answer for an archive.
        reason = f"verification error ({type(exc).__name__})"
        return _result(False, reason), _diag("error")


Features = tuple[Any, Any]  # ORB keypoints and their descriptors (None when none)


def features(grey: U8) -> Features:
    """ORB keypoints and descriptors of a grey image, as the alignment uses
    them: found once per image where one image is aligned with many."""
    orb = cv2.ORB.create(nfeatures=ORB_FEATURES, fastThreshold=ORB_FAST_THRESHOLD)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    return keypoints, descriptors


def similarity(a: Features, b: Features) -> tuple[Mat3 | None, int]:
    """The similarity transform from grey image ``a`` to grey image ``b``
    (pixel coordinates, given by their `features`) that ORB matches and RANSAC
    find, as step 2 of the check starts from, and its inlier count; None below
    MIN_INLIERS. The lineage (provenance.py) maps one copy's frame into the
    other's with it."""
    return _matched_transform(a, b)


# --- results ------------------------------------------------------------------


def _result(
    passed: bool,
    reason: str,
    *,
    coverage: tuple[float, float] = (0.0, 0.0),
    correlation: float = 0.0,
    blocks: tuple[int, int] = (0, 0),
    edge_strip: str | None = None,
    scale: float = 0.0,
    rotation_deg: float = 0.0,
) -> PixelCheck:
    return PixelCheck(
        passed=passed,
        reason=reason,
        coverage_a=float(coverage[0]),
        coverage_b=float(coverage[1]),
        correlation=float(correlation),
        differing_blocks=int(blocks[0]),
        total_blocks=int(blocks[1]),
        edge_strip=edge_strip,
        scale=float(scale),
        rotation_deg=float(rotation_deg),
    )


def _diag(
    failed_check: str,
    *,
    compare_side: int = 0,
    detail_std: float = math.nan,
    inliers: int = 0,
    aligned_by: str = "none",
    distortion_px: float = math.nan,
    extent: tuple[float, float] = (math.nan, math.nan),
    pair_noise: float = math.nan,
    max_shift_px: float = math.nan,
    content_excess: float = math.nan,
    correlation: float = math.nan,
) -> Diagnostics:
    return Diagnostics(
        failed_check=failed_check,
        compare_side=int(compare_side),
        detail_std=float(detail_std),
        inliers=int(inliers),
        aligned_by=aligned_by,
        distortion_px=float(distortion_px),
        extent_a=float(extent[0]),
        extent_b=float(extent[1]),
        pair_noise=float(pair_noise),
        max_shift_px=float(max_shift_px),
        content_excess=float(content_excess),
        correlation=float(correlation),
    )


# --- helpers ------------------------------------------------------------------


def _as_rgb(x: npt.NDArray[np.uint8]) -> U8 | None:
    arr = np.asarray(x)
    if arr.dtype != np.uint8 or arr.size == 0:
        return None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        return None
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _resize_long(img: U8, long_side: int) -> U8:
    h, w = img.shape[:2]
    cur = max(h, w)
    if cur == long_side:
        return img
    f = long_side / cur
    size = (max(1, round(w * f)), max(1, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(img, size, interpolation=interp), dtype=np.uint8)


def _scale_map(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Mat3:
    """Pixel-centre map from an image to a resized copy of it."""
    fx = dst_hw[1] / src_hw[1]
    fy = dst_hw[0] / src_hw[0]
    return np.array(
        [[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def _gray(img: U8) -> U8:
    return np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def _feature_transform(ga: U8, gb: U8) -> tuple[Mat3 | None, int]:
    """Similarity A->B (pixel coords of ga/gb) from ORB matches, and inlier count."""
    return _matched_transform(_RECENT.features(ga), _RECENT.features(gb))


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """The last `size` values by key, least recently used first out;
    thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._kept[key] = value
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


class _RecentFeatures:
    """The features of the last few images aligned, by their content: one
    image is checked against its ten candidates in a row (a webhook check, a
    burst), and ORB finds the same features in the same pixels every time."""

    def __init__(self, size: int) -> None:
        self._found: Recent[tuple[bytes, tuple[int, ...]], Features] = Recent(size)

    def features(self, grey: U8) -> Features:
        key = (
            hashlib.blake2b(np.ascontiguousarray(grey).data, digest_size=16).digest(),
            grey.shape,
        )
        found = self._found.get(key)
        if found is None:
            found = features(grey)
            self._found.put(key, found)
        return found


_RECENT = _RecentFeatures(32)


def _matched_transform(a: Features, b: Features) -> tuple[Mat3 | None, int]:
    (ka, da), (kb, db) = a, b
    if da is None or db is None or len(ka) < MIN_INLIERS or len(kb) < MIN_INLIERS:
        return None, 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < MATCH_RATIO * p[1].distance]
    if len(good) < MIN_INLIERS:
        return None, len(good)
    pa = np.array([ka[m.queryIdx].pt for m in good], dtype=np.float32)
    pb = np.array([kb[m.trainIdx].pt for m in good], dtype=np.float32)
    # OpenCV's RANSAC draws from a fixed-seed RNG, so this is deterministic.
    m, inl = cv2.estimateAffinePartial2D(
        pa,
        pb,
        method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_PX,
        maxIters=2000,
        confidence=0.999,
        refineIters=10,
    )
    if m is None or inl is None:
        return None, 0
    n = int(np.count_nonzero(inl))
    if n < MIN_INLIERS:
        return None, n
    out = np.eye(3, dtype=np.float64)
    out[:2] = np.asarray(m, dtype=np.float64)
    return out, n


def _ecc(tmpl: F32, inp: F32, w: Mat3, iters: int, mask_b: U8 | None) -> Mat3:
    """Refine the A->B affine ``w`` with ECC; keep ``w`` if ECC fails.

    ``mask_b`` (B's frame) leaves out regions already known to differ, so a
    caption band or watermark cannot drag the least-squares fit.
    """
    if mask_b is None:
        mask_b = np.full(inp.shape[:2], 255, dtype=np.uint8)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iters, ECC_EPS)
    try:
        # The images are blurred already: filter size 1.
        _, found = cv2.findTransformECC(
            tmpl, inp, np.asarray(w[:2], np.float32), cv2.MOTION_AFFINE, crit, mask_b, 1
        )
    except cv2.error:
        return w
    out = np.eye(3, dtype=np.float64)
    out[:2] = np.asarray(found, dtype=np.float64)
    return out if bool(np.all(np.isfinite(out))) else w


def _refine(ga: F32, gb: F32, w: Mat3, mask_b: U8 | None) -> Mat3:
    """Coarse-to-fine ECC: the half-scale pass converges from a few px off."""
    if min(*ga.shape, *gb.shape) >= HALF_SCALE_MIN:
        ha = cv2.resize(ga, (ga.shape[1] // 2, ga.shape[0] // 2), interpolation=cv2.INTER_AREA)
        hb = cv2.resize(gb, (gb.shape[1] // 2, gb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        hm = None
        if mask_b is not None:
            hm = np.asarray(
                cv2.resize(mask_b, (hb.shape[1], hb.shape[0]), interpolation=cv2.INTER_NEAREST),
                dtype=np.uint8,
            )
        sa = _scale_map(ga.shape[:2], ha.shape[:2])
        sb = _scale_map(gb.shape[:2], hb.shape[:2])
        wh = sb @ w @ np.linalg.inv(sa)
        wh = _ecc(np.asarray(ha, np.float32), np.asarray(hb, np.float32), wh, ECC_ITERS_COARSE, hm)
        w = np.linalg.inv(sb) @ wh @ sa
        return _ecc(ga, gb, w, ECC_ITERS_FINE, mask_b)
    return _ecc(ga, gb, w, ECC_ITERS_COARSE, mask_b)


def _similarity_parts(w: Mat3) -> tuple[float, float, float]:
    """Scale, rotation (deg) and non-similarity size of the 2x2 part of ``w``."""
    a, b, c, d = w[0, 0], w[0, 1], w[1, 0], w[1, 1]
    p = (a + d) / 2.0
    q = (c - b) / 2.0
    scale = math.hypot(p, q)
    rot = math.degrees(math.atan2(q, p))
    resid = np.array([[a - p, b + q], [c - q, d - p]], dtype=np.float64)
    return scale, rot, float(np.linalg.norm(resid, 2))


def _rect(box: Box) -> F64:
    x0, y0, x1, y1 = box
    return np.array(
        [[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5], [x0 - 0.5, y1 - 0.5]],
        dtype=np.float64,
    )


def _overlap(w: Mat3, box_a: Box, box_b: Box) -> tuple[F32, float]:
    """Overlap of the two images' content (padding left out) as a polygon in
    A's frame, and its area (A px^2)."""
    rect_a = _rect(box_a)
    rect_b = _rect(box_b)
    inv = np.linalg.inv(w)
    b_in_a = (inv[:2, :2] @ rect_b.T).T + inv[:2, 2]
    area, poly = cv2.intersectConvexConvex(
        rect_a.astype(np.float32), b_in_a.astype(np.float32), handleNested=True
    )
    if poly is None or area <= 0:
        return np.zeros((0, 2), dtype=np.float32), 0.0
    return np.asarray(poly, dtype=np.float32).reshape(-1, 2), float(area)


def _extent(poly: F32, box: Box) -> float:
    """Smallest share of the content's width/height that ``poly`` spans."""
    if len(poly) == 0:
        return 0.0
    span = poly.max(axis=0) - poly.min(axis=0)
    return float(min(span[0] / (box[2] - box[0]), span[1] / (box[3] - box[1])))


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive), pixels


def _content_box(grey: U8) -> Box:
    """The image inside any uniform padding on each side (see PAD_*)."""
    h, w = grey.shape
    g = grey.astype(np.float32)

    def run(lines: F32) -> tuple[int, float]:
        """Leading lines of ``lines`` (line index first) of the outermost
        line's colour, and that colour."""
        ref = float(np.median(lines[0]))
        near = np.abs(lines - ref) <= PAD_TOLERANCE
        uniform = near.mean(axis=1) >= PAD_LINE_SHARE
        return (int(np.argmin(uniform)) if not uniform.all() else len(uniform)), ref

    short = PAD_MIN_SHARE * min(h, w)

    def depths(one: tuple[int, float], other: tuple[int, float], across: int) -> tuple[int, int]:
        """Padding on two opposite sides: see PAD_MIN_SHARE."""
        paired = min(one[0], other[0]) >= short and abs(one[1] - other[1]) <= PAD_TOLERANCE
        least = short if paired else PAD_MIN_SHARE * across
        return (one[0] if one[0] >= least else 0), (other[0] if other[0] >= least else 0)

    top, bottom = depths(run(g), run(g[::-1]), h)
    left, right = depths(run(g.T), run(g.T[::-1]), w)
    if h - top - bottom < 16 or w - left - right < 16:
        return 0, 0, w, h  # (nearly) all one colour: leave it to the detail check
    return left, top, w - right, h - bottom


def _is_full(box: Box, hw: tuple[int, int]) -> bool:
    return box == (0, 0, hw[1], hw[0])


def _content_mask(
    box: Box, hw: tuple[int, int], *, band_only: bool = False, margin: int = PAD_MARGIN_PX
) -> F32:
    """1 inside ``box`` less ``margin`` px on padded sides, else 0; with
    ``band_only`` the padding itself is kept and only the PAD_MARGIN_PX band
    on either side of where it meets the photo is 0 (content pasted over one
    image's padding is still compared)."""
    x0, y0, x1, y1 = box
    h, w = hw
    m = margin
    mask = np.zeros(hw, dtype=np.float32)
    mask[
        y0 + (m if y0 > 0 else 0) : y1 - (m if y1 < h else 0),
        x0 + (m if x0 > 0 else 0) : x1 - (m if x1 < w else 0),
    ] = 1.0
    if not band_only:
        return mask
    out = np.ones(hw, dtype=np.float32)
    for side, edge, ext in ((0, y0, h), (0, y1, h), (1, x0, w), (1, x1, w)):
        if 0 < edge < ext:
            lo, hi = max(0, edge - m), min(ext, edge + m)
            if side == 0:
                out[lo:hi, x0:x1] = 0.0
            else:
                out[y0:y1, lo:hi] = 0.0
    return out


def _tone_curve(joint: F64) -> F64:
    """Curve f(src) ~ E[dst | src] from a joint histogram joint[src, dst].

    Conditional means over TONE_BINS source bins, constrained to rise at least
    TONE_MIN_SLOPE (a brightness, contrast, gamma or levels edit never
    flattens a stretch of mid-tones; a caption band or a box at a level of its
    own would otherwise be "explained" as a tone change), refitted while
    ignoring histogram cells far from the curve. Between points whose target
    is clipped (at 0 or 255) the curve may be flat: brightening clips the
    highlights to one level. Compiled: connector/core/tones.py, imported
    here: its numba is needed by pixel checks, not by every reader of this module.
    """
    from connector.core.tones import tone_curve

    return tone_curve(
        np.ascontiguousarray(joint, dtype=np.float64),
        TONE_BINS,
        _OUTLIER_STEPS,
        TONE_CLIP_LEVEL,
        TONE_MIN_SLOPE,
    )


def _fit_luts(a: U8, b: U8, mask: npt.NDArray[np.bool_]) -> tuple[Lut, Lut]:
    """Per-channel tone LUTs A->B and B->A fitted over ``mask``."""
    m8 = mask.astype(np.uint8)
    lut_ab = np.empty((1, 256, 3), dtype=np.float32)
    lut_ba = np.empty((1, 256, 3), dtype=np.float32)
    for c in range(3):
        joint = np.asarray(
            cv2.calcHist([a, b], [c, 3 + c], m8, [256, 256], [0, 256, 0, 256]), dtype=np.float64
        )
        lut_ab[0, :, c] = _tone_curve(joint)
        lut_ba[0, :, c] = _tone_curve(joint.T)
    return lut_ab, lut_ba


def _match_tones(
    a: U8, b: U8, valid: npt.NDArray[np.bool_], bs: int
) -> tuple[F32, F32, npt.NDArray[np.bool_]]:
    """A and B as float, one mapped onto the other's tones, and the blocks
    the chosen tone curve could not explain.

    A lookup per channel absorbs brightness, contrast, gamma and white-balance
    changes. Clipping makes the relation a function in one direction only (the
    brighter copy's highlights cannot be un-clipped), so both directions are
    fitted. An edit can also own a whole tone range (a black caption band over
    the darkest part of the photo), which no per-level fit can see through, so
    the curves are refitted without the blocks each candidate gets wrong, and
    the candidate with the smallest block error (truncated per block) wins:
    a spatial consensus that a per-level histogram fit cannot provide.
    """
    af = a.astype(np.float32)
    bf = b.astype(np.float32)
    vm = valid.astype(np.float32)
    n = np.maximum(_block_sums(vm, bs), 1.0)

    third = np.full((1, 3), 1.0 / 3.0, dtype=np.float32)

    def score(lut: Lut, src: U8, dst: F32) -> tuple[F32, F64]:
        mapped = np.asarray(cv2.LUT(src, lut), dtype=np.float32)
        err = np.asarray(cv2.transform(cv2.absdiff(mapped, dst), third), np.float32) * vm
        return mapped, _block_sums(err, bs) / n

    # Which candidate maps onto the more clipped image, if either clearly is.
    clipped_a, clipped_b = _clipped_share(a, valid), _clipped_share(b, valid)
    favour = {
        True: TONE_CLIP_FAVOUR if clipped_b - clipped_a >= TONE_CLIP_SHARE else 1.0,
        False: TONE_CLIP_FAVOUR if clipped_a - clipped_b >= TONE_CLIP_SHARE else 1.0,
    }
    best: tuple[float, F32, F32, npt.NDArray[np.bool_]] | None = None
    masks = [valid]
    tried = 0
    while tried < len(masks):
        lut_ab, lut_ba = _fit_luts(a, b, masks[tried])
        tried += 1
        for lut, src, dst, mapped_is_a in ((lut_ab, a, bf, True), (lut_ba, b, af, False)):
            mapped, blk_err = score(lut, src, dst)
            bad = blk_err > TONE_BAD_BLOCK
            # Only error beyond TONE_OK_BLOCK counts (rounding and JPEG noise
            # are alike under every candidate), and at most TONE_BLOCK_CAP per
            # block, so that a candidate cannot win by half-explaining an
            # edited region: in effect, the count of blocks a curve explains.
            cost = float(np.clip(blk_err - TONE_OK_BLOCK, 0.0, TONE_BLOCK_CAP).sum())
            cost *= favour[mapped_is_a]
            if best is None or cost < best[0]:
                p, q = (mapped, bf) if mapped_is_a else (af, mapped)
                best = (cost, p, q, bad)
            if tried == 1 and bad.any():
                masks.append(valid & ~_expand(_dilate(bad), bs, valid.shape))
    assert best is not None
    return best[1], best[2], best[3]


def _clipped_share(img: U8, valid: npt.NDArray[np.bool_]) -> float:
    """Share of the values over ``valid`` at 0 or 255, within TONE_CLIP_LEVEL."""
    mask = valid.astype(np.uint8)
    channels = img.shape[2] if img.ndim == 3 else 1
    total = int(np.count_nonzero(mask)) * channels
    if total == 0:
        return 0.0
    low, high = int(TONE_CLIP_LEVEL), math.ceil(255.0 - TONE_CLIP_LEVEL)
    clipped = 0
    for c in range(channels):  # counted by histogram: no copy of the values
        hist = cv2.calcHist([img], [c], mask, [256], [0, 256])
        clipped += int(hist[: low + 1].sum()) + int(hist[high:].sum())
    return clipped / total


def _block_sums(x: F32, bs: int) -> F64:
    """Sum of ``x`` over bs x bs blocks (last row/column may be partial)."""
    h, w = x.shape
    ys = np.arange(0, h, bs)
    xs = np.arange(0, w, bs)
    return np.add.reduceat(np.add.reduceat(x.astype(np.float64), ys, axis=0), xs, axis=1)


def _expand(blocks: npt.NDArray[np.bool_], bs: int, hw: tuple[int, int]) -> npt.NDArray[np.bool_]:
    return np.kron(blocks, np.ones((bs, bs), dtype=bool))[: hw[0], : hw[1]].astype(bool)


def _dilate(blocks: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    k = np.ones((3, 3), np.uint8)
    return np.asarray(cv2.dilate(blocks.astype(np.uint8), k), dtype=np.uint8).astype(bool)


@dataclass
class _Blocks:
    """Per-block comparison of A and B warped into A's frame."""

    ratio: F64  # compensated residual / noise model; > threshold = differs
    loose: F64  # raw residual / a model allowing PRIOR_SHIFT_PX misalignment
    shift: F64  # residual displacement (px) by one Lucas-Kanade step
    counted: npt.NDArray[np.bool_]  # blocks mostly inside the overlap
    pb: F32  # A (or A mapped onto B's tones), blurred
    qb: F32  # B warped into A's frame (or mapped onto A's tones), blurred
    valid: npt.NDArray[np.bool_]


def _compare(
    a: U8, b: U8, w: Mat3, bs: int, boxes: tuple[Box, Box] | None = None
) -> _Blocks | None:
    """Warp B into A, match tones, blur, compare block by block; ``boxes``
    (A's and B's content inside any padding) leave the padding out."""
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    bw = np.asarray(
        cv2.warpAffine(
            b,
            w[:2],
            (wa, ha),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        ),
        dtype=np.uint8,
    )
    ones_b = np.ones((hb, wb), dtype=np.float32)
    own_a = np.ones((ha, wa), dtype=np.float32)
    if boxes is not None:
        ones_b = _content_mask(boxes[1], (hb, wb), band_only=True)
        own_a = _content_mask(boxes[0], (ha, wa), band_only=True)
    cover = cv2.warpAffine(ones_b, w[:2], (wa, ha), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    valid8 = ((np.asarray(cover) > 0.999) & (own_a > 0)).astype(np.uint8)
    # One pixel in from the overlap border: interpolation there mixes in black.
    valid = np.asarray(cv2.erode(valid8, np.ones((3, 3), np.uint8)), dtype=np.uint8).astype(bool)
    if int(valid.sum()) < 64:
        return None
    p, q, tone_bad = _match_tones(a, bw, valid, bs)
    # Outside the overlap copy P so the blur does not smear a border into Q.
    q = np.where(valid[:, :, None], q, p).astype(np.float32)
    pb = np.asarray(cv2.GaussianBlur(p, (0, 0), BLUR_SIGMA), dtype=np.float32)
    qb = np.asarray(cv2.GaussianBlur(q, (0, 0), BLUR_SIGMA), dtype=np.float32)

    vm = valid.astype(np.float32)
    ones3 = np.ones((1, 3), dtype=np.float32)

    def bsum(x: F32) -> F64:
        """Block sums of a 3-channel product, channels pooled, overlap only."""
        return _block_sums(np.asarray(cv2.transform(x, ones3), np.float32) * vm, bs)

    r = pb - qb
    mean_img = (pb + qb) * 0.5
    gx = np.asarray(cv2.Sobel(mean_img, cv2.CV_32F, 1, 0, ksize=1), np.float32) * 0.5
    gy = np.asarray(cv2.Sobel(mean_img, cv2.CV_32F, 0, 1, ksize=1), np.float32) * 0.5
    lap = np.asarray(cv2.Laplacian(mean_img, cv2.CV_32F, ksize=1), np.float32)

    n = _block_sums(vm, bs)
    counted = n >= MIN_BLOCK_VALID * bs * bs
    nn3 = 3.0 * np.maximum(n, 1.0)
    srr = bsum(r * r)
    sxx = bsum(gx * gx)
    syy = bsum(gy * gy)
    sxy = bsum(gx * gy)
    sxr = bsum(gx * r)
    syr = bsum(gy * r)
    sll = bsum(lap * lap)
    slr = bsum(lap * r)
    sxl = bsum(gx * lap)
    syl = bsum(gy * lap)

    rms = np.where(counted, np.sqrt(srr / nn3), 0.0)
    gms = np.where(counted, (sxx + syy) / nn3, 0.0)
    loose = rms / np.sqrt(NOISE_FLOOR**2 + PRIOR_SHIFT_PX**2 * gms)

    # One global sharpness term c * Laplacian: copies resized with another
    # kernel, or lightly sharpened/softened, differ from the original by about
    # that everywhere. A weighted median over the blocks the tone curve
    # explains keeps edited blocks (high-contrast caption text) from setting it.
    w_blk = np.where(counted & ~_dilate(tone_bad), sll, 0.0).ravel()
    c_blk = (slr / np.maximum(sll, 1e-9)).ravel()
    order = np.argsort(c_blk)
    cum = np.cumsum(w_blk[order])
    sharp = float(c_blk[order][np.searchsorted(cum, 0.5 * cum[-1])]) if cum[-1] > 0 else 0.0
    srr = srr - 2.0 * sharp * slr + sharp * sharp * sll
    sxr = sxr - sharp * sxl
    syr = syr - sharp * syl

    # Residual displacement per block (one Lucas-Kanade step, channels
    # pooled): after a correct similarity it is ~0 everywhere; parallax and
    # viewpoint changes leave a smooth field of 0.5-several px. The ridge term
    # keeps shifts along directions without texture at ~0 (aperture problem).
    ridge = LK_RIDGE * nn3
    ax = sxx + ridge
    ay = syy + ridge
    det = ax * ay - sxy * sxy
    dx = (ay * sxr - sxy * syr) / det
    dy = (ax * syr - sxy * sxr) / det
    shift = np.where(counted, np.hypot(dx, dy), 0.0)
    # What is left after the sharpness term and the local shift:
    # sum (r - g.d)^2 = sum r^2 - 2 d.b + d'Sd.
    e2c = srr - 2.0 * (dx * sxr + dy * syr) + dx * dx * sxx + 2.0 * dx * dy * sxy + dy * dy * syy
    # A small block-wide offset per channel is a local tone difference
    # (vignetting, dodge/burn, the global curve missing a level), not a
    # content change; only DC_ALLOW grey levels of it are forgiven, so a flat
    # area painted over in another tone still counts.
    nn1 = np.maximum(n, 1.0)
    for ch in range(3):
        s_ch = _block_sums(r[:, :, ch] * vm, bs)
        m_ch = s_ch / nn1
        c_ch = np.clip(m_ch, -DC_ALLOW, DC_ALLOW)
        e2c = e2c - nn1 * (2.0 * m_ch * c_ch - c_ch * c_ch)
    rms_c = np.where(counted, np.sqrt(np.maximum(e2c, 0.0) / nn3), 0.0)
    ratio = rms_c / np.sqrt(NOISE_FLOOR**2 + SHIFT_FLOOR**2 * gms)
    return _Blocks(ratio, loose, shift, counted, pb, qb, valid)


def _differs(blk: _Blocks) -> tuple[npt.NDArray[np.bool_], float, float]:
    """Blocks that differ beyond the pair's own noise, that noise, the threshold."""
    noise = float(np.percentile(blk.ratio[blk.counted], NOISE_QUANTILE))
    thr = max(DIFF_ABS, DIFF_REL * noise)
    return blk.counted & (blk.ratio > thr), noise, thr


def _edge_strip(
    diff: npt.NDArray[np.bool_], bs: int, bbox: tuple[float, float, float, float]
) -> str | None:
    """Name of the edge strip/corner holding all differing blocks, if any."""
    x0, y0, x1, y1 = bbox
    rows, cols = np.nonzero(diff)
    top = rows * bs
    bottom = np.minimum((rows + 1) * bs, y1 + 0.5)
    left = cols * bs
    right = np.minimum((cols + 1) * bs, x1 + 0.5)
    # Blocks quantise the strip: a strip shallower than one block still
    # occupies a whole block.
    dy = max(EDGE_STRIP_DEPTH * (y1 - y0), float(bs)) + 0.5
    dx = max(EDGE_STRIP_DEPTH * (x1 - x0), float(bs)) + 0.5
    vert = None
    if np.all(bottom <= y0 + dy):
        vert = "top"
    elif np.all(top >= y1 - dy):
        vert = "bottom"
    horiz = None
    if np.all(right <= x0 + dx):
        horiz = "left"
    elif np.all(left >= x1 - dx):
        horiz = "right"
    if vert and horiz:
        return f"{vert}-{horiz}"

    def shape(lo: float, hi: float, start: float, end: float, q: float) -> str:
        """ "caption", "corner" or "" for a region lo..hi along an edge start..end."""
        length = max(end - start, 1.0)
        if (hi - lo) / length >= CAPTION_MIN_SPAN:
            return "caption"
        reach = max(CORNER_REACH * length, q) + 0.5
        compact = hi - lo <= max(CORNER_MAX_SPAN * length, q) + 0.5
        if compact and (lo <= start + reach or hi >= end - reach):
            return "corner"
        return ""

    if vert:
        kind = shape(float(left.min()), float(right.max()), x0, x1, float(bs))
    elif horiz:
        kind = shape(float(top.min()), float(bottom.max()), y0, y1, float(bs))
    else:
        return None
    edge = vert or horiz
    return None if not kind else f"{edge} band" if kind == "caption" else edge


def _flat_share(blk: _Blocks, diff: npt.NDArray[np.bool_], bs: int) -> float:
    """Of the differing blocks' pixels, the larger share (over A and B) that is
    flat: a caption band is a fill with text on it, scene content is texture."""
    px = _expand(diff, bs, blk.valid.shape) & blk.valid
    if not px.any():
        return 0.0
    shares = []
    for img in (blk.pb, blk.qb):
        grey = np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), np.float32)
        gx = np.asarray(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=1), np.float32) * 0.5
        gy = np.asarray(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=1), np.float32) * 0.5
        shares.append(float(np.mean(np.hypot(gx, gy)[px] < BAND_FLAT_GRADIENT)))
    return max(shares)


def _move_explained(blk: _Blocks, blocks: npt.NDArray[np.bool_], bs: int, reach: int) -> F64:
    """Per block of ``blocks``: the least mean |A shifted - B| over shifts of
    MOVE_MIN_PX..``reach`` px, over the unshifted one (inf where not measured)."""
    r = reach
    p = cv2.transform(blk.pb, np.full((1, 3), 1.0 / 3.0, np.float32))
    q = cv2.transform(blk.qb, np.full((1, 3), 1.0 / 3.0, np.float32))
    pp = np.pad(np.asarray(p, np.float32), r, mode="edge")
    qa = np.asarray(q, np.float32)
    h, w = blk.valid.shape
    out = np.full(blocks.shape, math.inf, dtype=np.float64)
    for by, bx in zip(*np.nonzero(blocks), strict=True):
        y0, x0 = int(by) * bs, int(bx) * bs
        y1, x1 = min(y0 + bs, h), min(x0 + bs, w)
        ok = blk.valid[y0:y1, x0:x1]
        if ok.sum() < 4:
            continue
        target = qa[y0:y1, x0:x1]
        best, still = math.inf, math.inf
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                src = pp[y0 + r + dy : y1 + r + dy, x0 + r + dx : x1 + r + dx]
                e = float(np.mean(np.abs(src - target)[ok]))
                if dy == 0 and dx == 0:
                    still = e
                elif max(abs(dy), abs(dx)) >= MOVE_MIN_PX and e < best:
                    best = e
        out[by, bx] = best / still if still > 0 else math.inf
    return out


def _hidden_moves(blk: _Blocks, blocks: npt.NDArray[np.bool_], bs: int) -> int:
    """How many of ``blocks`` hold content moved by HIDDEN_MIN_PX..HIDDEN_SEARCH_PX
    px alike with a neighbour (see HIDDEN_*)."""
    r = HIDDEN_SEARCH_PX
    third = np.full((1, 3), 1.0 / 3.0, np.float32)
    pp = np.pad(np.asarray(cv2.transform(blk.pb, third), np.float32), r, mode="edge")
    q = np.asarray(cv2.transform(blk.qb, third), np.float32)
    h, w = blk.valid.shape
    offsets = np.arange(-r, r + 1)
    far = np.maximum(np.abs(offsets)[:, None], np.abs(offsets)[None, :]) >= HIDDEN_MIN_PX
    moves: dict[tuple[int, int], tuple[int, int]] = {}
    for by, bx in zip(*np.nonzero(blocks), strict=True):
        y0, x0 = int(by) * bs, int(bx) * bs
        y1, x1 = min(y0 + bs, h), min(x0 + bs, w)
        ok = blk.valid[y0:y1, x0:x1]
        if ok.sum() < 4:
            continue
        target = q[y0:y1, x0:x1][ok]
        target = target - target.mean()
        # Every shift of A's block at once: windows[dy, dx] is A moved by (dy, dx).
        region = pp[y0 : y1 + 2 * r, x0 : x1 + 2 * r]
        windows = np.lib.stride_tricks.sliding_window_view(region, (y1 - y0, x1 - x0))[:, :, ok]
        windows = windows - windows.mean(axis=2, keepdims=True)
        err = np.abs(windows - target).mean(axis=2)
        still = float(err[r, r])
        err = np.where(far, err, np.inf)
        k = int(np.argmin(err))
        if still > 0 and float(err.flat[k]) <= MOVE_EXPLAINED * still:
            moves[(int(by), int(bx))] = (
                int(offsets[k // len(offsets)]),
                int(offsets[k % len(offsets)]),
            )

    def near(u: tuple[int, int], v: tuple[int, int]) -> bool:
        return abs(u[0] - v[0]) <= 1 and abs(u[1] - v[1]) <= 1

    return sum(
        any(other != at and near(other, at) and near(moves[other], move) for other in moves)
        for at, move in moves.items()
    )


def _moved_blocks(blk: _Blocks, diff: npt.NDArray[np.bool_], bs: int) -> int:
    """How many differing blocks a small shift of A explains (see MOVE_*)."""
    return int(np.count_nonzero(_move_explained(blk, diff, bs, MOVE_SEARCH_PX) <= MOVE_EXPLAINED))


def _correlation(blk: _Blocks, keep: npt.NDArray[np.bool_], bs: int) -> float:
    """Pearson correlation of P and Q over ``keep`` blocks, channels pooled."""
    px = (_expand(keep, bs, blk.valid.shape) & blk.valid).astype(np.uint8)
    if int(px.sum()) < 2:
        return 0.0
    mp, sp = cv2.meanStdDev(blk.pb, mask=px)
    mq, sq = cv2.meanStdDev(blk.qb, mask=px)
    mpq = np.array(cv2.mean(blk.pb * blk.qb, mask=px)[:3], dtype=np.float64)
    cov = float((mpq - (mp * mq).ravel()).sum())
    denom = math.sqrt(float((sp * sp).sum()) * float((sq * sq).sum()))
    return cov / denom if denom > 0 else 0.0


def _prior_mask(a: U8, b: U8, w0: Mat3, bs: int) -> U8 | None:
    """B-frame mask of what agrees with A under the feature alignment ``w0``."""
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    if min(ha, wa, hb, wb) >= HALF_SCALE_MIN and bs >= 4:
        ah = np.asarray(cv2.resize(a, (wa // 2, ha // 2), interpolation=cv2.INTER_AREA), np.uint8)
        bh = np.asarray(cv2.resize(b, (wb // 2, hb // 2), interpolation=cv2.INTER_AREA), np.uint8)
        wh = (
            _scale_map(b.shape[:2], bh.shape[:2])
            @ w0
            @ np.linalg.inv(_scale_map(a.shape[:2], ah.shape[:2]))
        )
        prior = _compare(ah, bh, wh, bs // 2)
        grid_hw = ah.shape[:2]
        grid_bs = bs // 2
    else:
        prior = _compare(a, b, w0, bs)
        grid_hw = (ha, wa)
        grid_bs = bs
    if prior is None:
        return None
    bad = _dilate(prior.counted & (prior.loose > PRIOR_OUTLIER))
    if not bad.any():
        return None
    good = (~_expand(bad, grid_bs, grid_hw)).astype(np.uint8)
    good_a = np.asarray(cv2.resize(good, (wa, ha), interpolation=cv2.INTER_NEAREST), np.uint8)
    mask_b = np.asarray(
        cv2.warpAffine(good_a, w0[:2], (wb, hb), flags=cv2.INTER_NEAREST), dtype=np.uint8
    )
    # With most of B masked ECC has too little to work on; better unmasked.
    return mask_b if int(mask_b.sum()) >= PRIOR_MIN_KEPT * wb * hb else None


def _verify(  # noqa: C901 - the pixel check's one pass; splitting it is open work
    a_in: npt.NDArray[np.uint8], b_in: npt.NDArray[np.uint8]
) -> tuple[PixelCheck, Diagnostics]:
    a0 = _as_rgb(a_in)
    b0 = _as_rgb(b_in)
    if a0 is None or b0 is None:
        return _result(False, "not a uint8 RGB image"), _diag("input")

    # Common scale: the smaller image's long side (never above VERIFY_SIDE,
    # which bounds the cost when a caller passes larger arrays).
    side = min(max(a0.shape[:2]), max(b0.shape[:2]), VERIFY_SIDE)
    if side < MIN_COMPARE_SIDE or min(a0.shape[:2]) < 8 or min(b0.shape[:2]) < 8:
        reason = f"too small to verify ({side} px; need {MIN_COMPARE_SIDE})"
        return _result(False, reason), _diag("size", compare_side=side)
    a = _resize_long(a0, side)
    b = _resize_long(b0, side)
    ga8 = _gray(a)
    gb8 = _gray(b)
    ga = np.asarray(cv2.GaussianBlur(ga8.astype(np.float32), (0, 0), BLUR_SIGMA), np.float32)
    gb = np.asarray(cv2.GaussianBlur(gb8.astype(np.float32), (0, 0), BLUR_SIGMA), np.float32)
    detail = float(min(cv2.meanStdDev(ga)[1][0, 0], cv2.meanStdDev(gb)[1][0, 0]))
    if detail < MIN_DETAIL_STD:
        reason = "too little detail to verify"
        return _result(False, reason), _diag("detail", compare_side=side, detail_std=detail)
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    bs = max(2, round(max(ha, wa) / BLOCKS_LONG))
    boxes = (_content_box(ga8), _content_box(gb8))

    # --- alignment -------------------------------------------------------------
    if side >= FEATURE_SIDE:
        fa, fb = ga8, gb8
    else:
        fa = _gray(_resize_long(a0, FEATURE_SIDE))
        fb = _gray(_resize_long(b0, FEATURE_SIDE))
    m_feat, inliers = _feature_transform(fa, fb)
    mask_b = None
    if m_feat is not None:
        aligned_by = "features"
        w0 = (
            np.linalg.inv(_scale_map(b.shape[:2], fb.shape[:2]))
            @ m_feat
            @ _scale_map(a.shape[:2], fa.shape[:2])
        )
        mask_b = _prior_mask(a, b, w0, bs)
    else:
        # Without features: content box onto content box (a padded copy's
        # frame has another aspect than its photo).
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
        ar_a, ar_b = (ax1 - ax0) / (ay1 - ay0), (bx1 - bx0) / (by1 - by0)
        if abs(math.log(ar_a / ar_b)) > ASPECT_TOL:
            reason = (
                f"too few feature matches ({inliers}) and aspect ratios differ"
                f" ({ar_a:.2f} vs {ar_b:.2f})"
            )
            diag = _diag("alignment", compare_side=side, detail_std=detail, inliers=inliers)
            return _result(False, reason), diag
        aligned_by = "resize"
        shift_a = np.array([[1.0, 0.0, -ax0], [0.0, 1.0, -ay0], [0.0, 0.0, 1.0]])
        shift_b = np.array([[1.0, 0.0, bx0], [0.0, 1.0, by0], [0.0, 0.0, 1.0]])
        w0 = shift_b @ _scale_map((ay1 - ay0, ax1 - ax0), (by1 - by0, bx1 - bx0)) @ shift_a

    if not _is_full(boxes[1], (hb, wb)):
        # ECC must not fit B's padding or the photo's edge blended into it.
        pad = (_content_mask(boxes[1], (hb, wb), margin=ECC_PAD_MARGIN_PX) * 255).astype(np.uint8)
        mask_b = pad if mask_b is None else np.minimum(mask_b, pad)
    w = _refine(ga, gb, w0, mask_b)
    scale_w, rot, nonsim = _similarity_parts(w)
    if not (math.isfinite(scale_w) and scale_w > 1e-3 and np.linalg.det(w[:2, :2]) > 0):
        diag = _diag(
            "alignment",
            compare_side=side,
            detail_std=detail,
            inliers=inliers,
            aligned_by=aligned_by,
        )
        return _result(False, "alignment did not converge"), diag
    # The non-similar part of the affine, as displacement at A's corners.
    distortion = nonsim * math.hypot(wa, ha) / 2.0 / scale_w
    scale_ab = scale_w * max(b0.shape[:2]) / max(a0.shape[:2])

    # Each image's coverage: how much of its own content (padding left out)
    # the other image's whole frame shows.
    full = ((0, 0, wa, ha), (0, 0, wb, hb))
    poly, area = _overlap(w, boxes[0], full[1])
    poly_o, area_o = _overlap(w, full[0], boxes[1])
    content = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]
    cov = (area / content[0], min(1.0, area_o * float(np.linalg.det(w[:2, :2])) / content[1]))
    poly_b = (w[:2, :2] @ poly_o.T.astype(np.float64)).T + w[:2, 2] if len(poly_o) else poly_o
    ext = (_extent(poly, boxes[0]), _extent(np.asarray(poly_b, np.float32), boxes[1]))
    poly, area = _overlap(w, *boxes)

    padded = not (_is_full(boxes[0], (ha, wa)) and _is_full(boxes[1], (hb, wb)))
    blk = _compare(a, b, w, bs, boxes if padded else None) if area > 0 else None
    if blk is None or not blk.counted.any():
        reason = "images do not overlap after alignment"
        check = _result(False, reason, coverage=cov, scale=scale_ab, rotation_deg=rot)
        diag = _diag(
            "coverage",
            compare_side=side,
            detail_std=detail,
            inliers=inliers,
            aligned_by=aligned_by,
            distortion_px=distortion,
            extent=ext,
        )
        return check, diag

    # --- statistics --------------------------------------------------------------
    differs, noise, thr = _differs(blk)
    total = int(blk.counted.sum())
    n_diff = int(differs.sum())
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    strip = _edge_strip(differs, bs, (float(x0), float(y0), float(x1), float(y1)))
    if n_diff == 0 or (
        strip is not None
        and strip.endswith(" band")
        and _flat_share(blk, differs, bs) < BAND_MIN_FLAT
    ):
        strip = None
    # Blocks next to a differing block share some of its pixels (blur, block
    # grid); they are judged like any block but left out of the statistics
    # that describe the rest of the picture.
    still = blk.counted & ~_dilate(differs)
    keep = blk.counted & ~differs if strip is not None else blk.counted
    rest = still if strip is not None else blk.counted
    excess = float(blk.ratio[rest].max() / thr) if rest.any() else 0.0
    corr = _correlation(blk, keep, bs)
    max_shift = float(blk.shift[still].max()) if still.any() else 0.0

    # --- decision: the first failing check gives the reason -----------------------
    failed = ""
    if distortion > MAX_DISTORTION_PX:
        failed = "distortion"
        reason = f"alignment needs {distortion:.1f} px of shear/stretch beyond a similarity"
    elif min(ext) < MIN_COVERAGE_EXTENT:
        which, e = ("A", ext[0]) if ext[0] <= ext[1] else ("B", ext[1])
        failed = "coverage"
        reason = f"overlap spans only {e:.0%} of {which}'s width or height"
    elif noise > MAX_PAIR_NOISE:
        failed = "noise"
        reason = f"residual high everywhere (noise ratio {noise:.1f}): not the same exposure"
    elif max_shift > MAX_SHIFT_PX:
        failed = "shift"
        reason = (
            f"content shifts by up to {max_shift:.1f} px after alignment"
            " (parallax or another viewpoint)"
        )
    elif n_hidden := _hidden_moves(
        blk,
        still & (blk.shift > HIDDEN_MIN_SHIFT_PX) & (blk.ratio > HIDDEN_MIN_NOISE * noise),
        bs,
    ):
        failed = "shift"
        reason = (
            f"content in {n_hidden} blocks moved by {HIDDEN_MIN_PX}-{HIDDEN_SEARCH_PX} px"
            " against the rest (a moved subject or parallax)"
        )
    elif (
        n_diff
        and strip is not None
        and (n_moved := _moved_blocks(blk, differs, bs)) >= MOVE_MIN_SHARE * n_diff
    ):
        failed = "shift"
        reason = (
            f"{n_moved} of {n_diff} differing blocks in the {strip} edge strip are content"
            " shifted against the rest (parallax or a moved subject)"
        )
    elif n_diff and strip is None:
        failed = "blocks"
        reason = f"{n_diff} of {total} blocks differ outside any edge strip"
    elif corr < MIN_CORRELATION:
        failed = "correlation"
        reason = f"correlation too low ({corr:.3f})"
    elif n_diff:
        reason = f"aligned, {n_diff} of {total} blocks differ, all in the {strip} edge strip"
    else:
        reason = f"aligned, 0 of {total} blocks differ"
    check = _result(
        not failed,
        reason,
        coverage=cov,
        correlation=corr,
        blocks=(n_diff, total),
        edge_strip=strip,
        scale=scale_ab,
        rotation_deg=rot,
    )
    diag = _diag(
        failed,
        compare_side=side,
        detail_std=detail,
        inliers=inliers,
        aligned_by=aligned_by,
        distortion_px=distortion,
        extent=ext,
        pair_noise=noise,
        max_shift_px=max_shift,
        content_excess=excess,
        correlation=corr,
    )
    return check, diag
