"""Calibration bench for connector.core.verify.

Builds positive pairs (same photograph: re-encodes, resizes, light crops, tone
edits, corner watermark) and negative pairs (other shots / real edits of
content: stereo, viewpoint change, heavy crop, other photos, tiles, moved
subject, mirror) from every photograph bundled with scikit-image and
scikit-learn, runs ``verify_pair`` on one core and prints:

* pass rate per category (positives should be 100 %, negatives 0 %),
* per-pair milliseconds (median, p95),
* the thresholds in use,
* for each decisive statistic the worst positive, the threshold and the best
  negative, so the margins are visible,
* how many independent checks reject each negative category.

Run: ``.venv/bin/python bench/verify.py [--quick] [--verbose]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.core import verify as V
from tests.edits import crop as crop_frac
from tests.edits import gamma, reencode, thumb, viewpoint
from tests.edits import scale as resize_frac

# Photographs only: synthetic images (chessboard, color wheel, logo, phantom,
# horse silhouette, tiny gifs/tifs) are not what an archive holds.
SKIMAGE_PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]


def photo_paths() -> list[Path]:
    import skimage

    out = [Path(skimage.__file__).parent / "data" / n for n in SKIMAGE_PHOTOS]
    try:
        import sklearn

        out += [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in SKLEARN_PHOTOS]
    except ImportError:
        pass
    return [p for p in out if p.exists()]


def load(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


CORNERS = ["bottom-right", "top-left", "bottom-left", "top-right"]


def watermark(im: Image.Image, corner: str, width: float = 0.12) -> Image.Image:
    """Opaque box with text, ~12 % of the width, in a corner."""
    out = im.copy()
    w, h = out.size
    bw = round(w * width)
    bh = max(6, round(bw * 0.35))
    m = round(0.02 * w)
    x0 = m if "left" in corner else w - m - bw
    y0 = m if "top" in corner else h - m - bh
    d = ImageDraw.Draw(out)
    d.rectangle((x0, y0, x0 + bw, y0 + bh), fill=(240, 240, 240))
    font = ImageFont.load_default(size=max(6, bh * 0.6))
    d.text((x0 + 2, y0 + bh * 0.15), "(c) CM", fill=(20, 20, 20), font=font)
    return out


def caption(im: Image.Image, depth: float = 0.08) -> Image.Image:
    """Full-width caption band along the bottom edge."""
    out = im.copy()
    w, h = out.size
    bh = round(h * depth)
    d = ImageDraw.Draw(out)
    d.rectangle((0, h - bh, w, h), fill=(0, 0, 0))
    font = ImageFont.load_default(size=max(6, bh * 0.6))
    d.text(
        (round(w * 0.03), h - bh + bh * 0.15), "City Museum 1923", fill=(255, 255, 255), font=font
    )
    return out


def move_subject(im: Image.Image, size: float = 0.15, seed: int = 0) -> Image.Image | None:
    """Paste a patch (``size`` of each side) from one place to an interior place.

    The patch must visibly change the destination (mean difference of at
    least MIN_MOVE_CHANGE grey levels): moving flat background onto flat
    background changes nothing, and such a pair is no negative. None when no
    such patch is found.
    """
    rng = np.random.default_rng(seed)
    arr = np.asarray(im).copy()
    h, w = arr.shape[:2]
    ph, pw = round(h * size), round(w * size)
    for _ in range(50):
        # Destination well inside the frame (not an edge strip), source elsewhere.
        dy = int(rng.integers(round(h * 0.3), round(h * 0.7) - ph + 1))
        dx = int(rng.integers(round(w * 0.3), round(w * 0.7) - pw + 1))
        sy = int(rng.integers(0, h - ph))
        sx = int(rng.integers(0, w - pw))
        if abs(sy - dy) <= ph and abs(sx - dx) <= pw:
            continue
        src = arr[sy : sy + ph, sx : sx + pw].astype(np.float64)
        dst = arr[dy : dy + ph, dx : dx + pw].astype(np.float64)
        if np.abs(src - dst).mean() >= MIN_MOVE_CHANGE:
            arr[dy : dy + ph, dx : dx + pw] = arr[sy : sy + ph, sx : sx + pw]
            return Image.fromarray(arr)
    return None


# Grey levels a moved patch must change its destination by, on average.
MIN_MOVE_CHANGE = 8.0


def nudge_subject(im: Image.Image, size: float, by: float, seed: int = 0) -> Image.Image:
    """Move an interior region (``size`` of each side) sideways by ``by`` of the width.

    Like a person who moved a little between two frames: the region keeps its
    content, it is just somewhere else by a few pixels.
    """
    rng = np.random.default_rng(seed)
    arr = np.asarray(im).copy()
    h, w = arr.shape[:2]
    ph, pw = round(h * size), round(w * size)
    dx = max(2, round(w * by))
    y = int(rng.integers(round(h * 0.3), round(h * 0.7) - ph + 1))
    x = int(rng.integers(round(w * 0.3), round(w * 0.7) - pw - dx + 1))
    arr[y : y + ph, x + dx : x + dx + pw] = np.asarray(im)[y : y + ph, x : x + pw]
    return Image.fromarray(arr)


@dataclass
class Pair:
    category: str
    expect: bool
    name: str
    a: np.ndarray
    b: np.ndarray


def pairs_for(path: Path, idx: int, others: list[Path]) -> Iterator[Pair]:
    im = load(path)
    n = path.stem
    ta = thumb(im)

    def pos(cat: str, b: Image.Image | np.ndarray, a: np.ndarray | None = None) -> Pair:
        bb = thumb(b) if isinstance(b, Image.Image) else b
        return Pair(cat, True, n, ta if a is None else a, bb)

    def neg(cat: str, b: Image.Image | np.ndarray, a: np.ndarray | None = None) -> Pair:
        bb = thumb(b) if isinstance(b, Image.Image) else b
        return Pair(cat, False, n, ta if a is None else a, bb)

    # --- positives ---------------------------------------------------------
    yield pos("jpeg_q60", reencode(im, "JPEG", quality=60))
    yield pos("jpeg_q85", reencode(im, "JPEG", quality=85))
    yield pos("png", reencode(im, "PNG"))
    yield pos("webp_q75", reencode(im, "WEBP", quality=75))
    yield pos("resize_50", resize_frac(im, 0.5))
    yield pos("resize_25", resize_frac(im, 0.25))
    side = ["left", "top", "right", "bottom"][idx % 4]
    fr = {s: 0.0 for s in ("left", "top", "right", "bottom")}
    fr[side] = 0.05
    yield pos("crop5_one_side", crop_frac(im, fr["left"], fr["top"], fr["right"], fr["bottom"]))
    yield pos("crop5_all_sides", crop_frac(im, 0.05, 0.05, 0.05, 0.05))
    yield pos("watermark_corner", watermark(im, CORNERS[idx % 4]))
    yield pos("caption_strip", caption(im))
    yield pos("brightness+15", ImageEnhance.Brightness(im).enhance(1.15))
    yield pos("brightness-15", ImageEnhance.Brightness(im).enhance(0.85))
    yield pos("contrast+15", ImageEnhance.Contrast(im).enhance(1.15))
    yield pos("gamma_0.8", gamma(im, 0.8))
    yield pos("gamma_1.25", gamma(im, 1.25))
    # Both thumbnails stored as JPEG q75 as well (the caller's cache may be).
    yield pos(
        "jpeg_q60+thumbs_q75",
        np.asarray(
            reencode(Image.fromarray(thumb(reencode(im, "JPEG", quality=60))), "JPEG", quality=75)
        ),
        np.asarray(reencode(Image.fromarray(ta), "JPEG", quality=75)),
    )
    yield pos("rotate1+crop", crop_frac(im.rotate(1.0, Image.Resampling.BICUBIC), *(0.03,) * 4))
    # Low texture: ORB finds (almost) nothing, alignment starts from a resize.
    soft = im.filter(ImageFilter.GaussianBlur(max(im.size) / 60))
    soft_a = thumb(soft)
    yield pos("lowtex_jpeg85", reencode(soft, "JPEG", quality=85), soft_a)
    yield pos("lowtex_resize50", resize_frac(soft, 0.5), soft_a)
    yield pos("tiny_128", resize_frac(im, 128 / max(im.size)))
    yield pos("tiny_96", resize_frac(im, 96 / max(im.size)))
    # Same photograph, but below MIN_COMPARE_SIDE: refused by design.
    yield neg("tiny_64_refused", resize_frac(im, 64 / max(im.size)))

    # --- negatives -----------------------------------------------------------
    a10, b10 = viewpoint(im, 10.0)
    yield neg("viewpoint_10deg", b10, thumb(a10))
    a5, b5 = viewpoint(im, 5.0)
    yield neg("viewpoint_5deg", b5, thumb(a5))
    fr = {s: 0.0 for s in ("left", "top", "right", "bottom")}
    fr[side] = 0.25
    yield neg("crop25_one_side", crop_frac(im, fr["left"], fr["top"], fr["right"], fr["bottom"]))
    yield neg("crop30_all_sides", crop_frac(im, 0.15, 0.15, 0.15, 0.15))
    other = others[(idx + 1) % len(others)]
    if other != path:
        yield neg("different_photo", thumb(load(other)))
    w, h = im.size
    yield neg(
        "tiles_left_right",
        im.crop((w // 2, 0, w, h)),
        thumb(im.crop((0, 0, w // 2, h))),
    )
    yield neg(
        "tiles_top_bottom",
        im.crop((0, h // 2, w, h)),
        thumb(im.crop((0, 0, w, h // 2))),
    )
    for cat, moved, a_ in (
        ("moved_subject_15", move_subject(im, 0.15, seed=idx), None),
        ("moved_subject_10", move_subject(im, 0.10, seed=idx + 100), None),
        ("lowtex_moved", move_subject(soft, 0.15, seed=idx), soft_a),
        ("tiny_96_moved", move_subject(im, 0.15, seed=idx), None),
    ):
        if moved is not None:
            tiny = cat.startswith("tiny")
            yield neg(cat, resize_frac(moved, 96 / max(im.size)) if tiny else moved, a_)
    yield neg("mirror", im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    yield neg("subject_nudged", nudge_subject(im, 0.2, 0.03, seed=idx))
    sa10, sb10 = viewpoint(soft, 10.0)
    yield neg("lowtex_viewpoint10", sb10, thumb(sa10))
    yield neg(
        "tiny_128_viewpoint10",
        resize_frac(b10, 128 / max(b10.size)),
        thumb(a10),
    )


def stereo_pairs() -> Iterator[Pair]:
    import skimage

    d = Path(skimage.__file__).parent / "data"
    left = load(d / "motorcycle_left.png")
    right = load(d / "motorcycle_right.png")
    yield Pair("stereo", False, "motorcycle", thumb(left), thumb(right))
    yield Pair("stereo", False, "motorcycle_r_l", thumb(right), thumb(left))
    yield Pair(
        "stereo",
        False,
        "motorcycle_q60",
        thumb(left),
        thumb(reencode(right, "JPEG", quality=60)),
    )
    yield Pair("stereo", False, "motorcycle_half", thumb(left), thumb(resize_frac(right, 0.5)))


def all_pairs(quick: bool) -> list[Pair]:
    paths = photo_paths()
    if quick:
        paths = paths[::3]
    out: list[Pair] = []
    for i, p in enumerate(paths):
        out.extend(pairs_for(p, i, paths))
    out.extend(stereo_pairs())
    return out


# Decisive statistics in the order verify_pair checks them: (check name as in
# Diagnostics.failed_check, label, getter, +1 if larger passes, threshold).
Getter = Callable[[V.PixelCheck, V.Diagnostics], float]
STATS: list[tuple[str, str, Getter, int, float]] = [
    ("distortion", "affine distortion px", lambda c, d: d.distortion_px, -1, V.MAX_DISTORTION_PX),
    (
        "coverage",
        "overlap extent (min of A, B)",
        lambda c, d: min(d.extent_a, d.extent_b),
        +1,
        V.MIN_COVERAGE_EXTENT,
    ),
    ("noise", "pair noise ratio", lambda c, d: d.pair_noise, -1, V.MAX_PAIR_NOISE),
    ("shift", "max block shift px", lambda c, d: d.max_shift_px, -1, V.MAX_SHIFT_PX),
    ("blocks", "content excess (block ratio/thr)", lambda c, d: d.content_excess, -1, 1.0),
    ("correlation", "correlation", lambda c, d: d.correlation, +1, V.MIN_CORRELATION),
]

Result = tuple[Pair, V.PixelCheck, V.Diagnostics, float]


def run(pairs: list[Pair], verbose: bool) -> list[Result]:
    results: list[Result] = []
    for p in pairs:
        V.verify_pair_detailed(p.a, p.b)  # warm caches so timing is per pair
        # CPU time of this thread: OpenCV runs single-threaded here, and CPU
        # time does not count waiting for a busy machine's other processes.
        t0 = time.thread_time()
        check, diag = V.verify_pair_detailed(p.a, p.b)
        ms = (time.thread_time() - t0) * 1000
        results.append((p, check, diag, ms))
        if verbose:
            ok = "ok " if check.passed == p.expect else "BAD"
            print(
                f"{ok} {p.category:22s} {p.name:18s} {check.passed!s:5s} {ms:6.1f}ms "
                f"{diag.aligned_by:8s} inl={diag.inliers:4d} dist={diag.distortion_px:5.2f} "
                f"ext={min(diag.extent_a, diag.extent_b):.3f} noise={diag.pair_noise:5.2f} "
                f"shift={diag.max_shift_px:5.2f} exc={diag.content_excess:6.2f} "
                f"corr={diag.correlation:.4f} | {check.reason}"
            )
    return results


def report(results: list[Result], n_photos: int) -> None:
    print(f"\n{len(results)} pairs from {n_photos} photos\n")
    by_cat: dict[tuple[bool, str], list[Result]] = defaultdict(list)
    for r in results:
        by_cat[(r[0].expect, r[0].category)].append(r)
    print(f"{'category':24s} {'expect':6s} {'n':>3s} {'passed':>7s}  {'failed at':34s} wrong")
    for (expect, cat), rows in sorted(by_cat.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        npass = sum(c.passed for _, c, _, _ in rows)
        wrong = [p.name for p, c, _, _ in rows if c.passed != expect]
        checks = Counter(d.failed_check for _, c, d, _ in rows if not c.passed)
        at = ", ".join(f"{k} {v}" for k, v in checks.most_common())
        print(
            f"{cat:24s} {'pass' if expect else 'fail':6s} {len(rows):3d} "
            f"{npass / len(rows):7.0%}  {at:34s} {', '.join(wrong)}"
        )

    times = sorted(ms for *_, ms in results)
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    print(
        f"\nCPU ms per pair (one thread): median {statistics.median(times):.1f}, "
        f"p95 {p95:.1f}, max {times[-1]:.1f}"
    )
    pos = [r for r in results if r[0].expect]
    neg = [r for r in results if not r[0].expect]
    print(
        f"positives passed {sum(r[1].passed for r in pos)}/{len(pos)}, "
        f"negatives passed {sum(r[1].passed for r in neg)}/{len(neg)}"
    )

    print("\nthresholds:")
    for k in sorted(vars(V)):
        v = getattr(V, k)
        if k.isupper() and isinstance(v, int | float | tuple):
            print(f"  {k} = {v}")

    print(
        "\nmargins. Each check's statistic is scaled so that 1.0 is its threshold and"
        "\n> 1 rejects (coverage and correlation by their shortfall from 1, e.g."
        "\n(1 - r) / (1 - MIN_CORRELATION)). A positive's"
        "\nscore is its highest value over all checks (must stay < 1); a negative's is"
        "\nalso its highest value (must exceed 1): how clearly its most decisive check"
        "\nrejects it. Refusals before any statistic (no alignment, too small) are inf."
    )
    print(f"\n  {'category':22s} {'score':>7s}  {'check':11s} pair")
    for (expect, cat), rows in sorted(by_cat.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        scored = [(strongest(c, d), p) for p, c, d, _ in rows]
        (val, chk), p = (max if expect else min)(scored, key=lambda t: t[0][0])
        tag = "worst" if expect else "weakest"
        print(f"  {cat:22s} {val:7.2f}  {chk:11s} {tag}: {p.name}")

    print("\n  per check: worst positive, and the negatives it is the most decisive check for")
    for name, label, _get, _sign, thr in STATS:
        pv = [(scaled(name, c, d), p) for p, c, d, _ in pos]
        pv = [t for t in pv if math.isfinite(t[0])]
        worst = max(pv, key=lambda t: t[0])
        decided = [(strongest(c, d)[0], p) for p, c, d, _ in neg if strongest(c, d)[1] == name]
        print(
            f"  {label:34s} threshold {thr:6.3f}  worst positive {worst[0]:5.2f} "
            f"({worst[1].category}/{worst[1].name})"
        )
        if decided:
            weakest = min(decided, key=lambda t: t[0])
            print(
                f"  {'':34s} {len(decided):3d} negatives decided here, weakest "
                f"{weakest[0]:.2f} ({weakest[1].category}/{weakest[1].name})"
            )


def scaled(name: str, c: V.PixelCheck, d: V.Diagnostics) -> float:
    """Statistic of check ``name`` scaled so that 1.0 is the threshold, > 1 rejects."""
    # Shortfalls from 1: a full overlap / perfect correlation scores 0.
    if name == "correlation":
        return (1.0 - d.correlation) / (1.0 - V.MIN_CORRELATION)
    if name == "coverage":
        return (1.0 - min(d.extent_a, d.extent_b)) / (1.0 - V.MIN_COVERAGE_EXTENT)
    for n, _, get, sign, thr in STATS:
        if n == name:
            v = get(c, d)
            if not math.isfinite(v):
                return math.nan
            if sign > 0:
                return thr / v if v > 0 else math.inf
            return v / thr
    raise KeyError(name)


def strongest(c: V.PixelCheck, d: V.Diagnostics) -> tuple[float, str]:
    """The check that rejects the pair most clearly, and its scaled value."""
    if d.failed_check in ("input", "size", "detail", "alignment", "error"):
        return math.inf, d.failed_check
    best = (-math.inf, "")
    for name, *_ in STATS:
        v = scaled(name, c, d)
        if math.isfinite(v) and v > best[0]:
            best = (v, name)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="every third photo only")
    ap.add_argument("--verbose", action="store_true", help="one line per pair")
    ap.add_argument("--dump", type=Path, help="write one JSON line per pair here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    results = run(all_pairs(args.quick), args.verbose)
    if args.dump:
        with args.dump.open("w") as fh:
            for p, c, d, ms in results:
                row = {"category": p.category, "expect": p.expect, "name": p.name, "ms": ms}
                row.update(c.as_dict())
                row.update({f"d_{k}": v for k, v in asdict(d).items()})
                fh.write(json.dumps(row) + "\n")
    report(results, len(photo_paths()) // (3 if args.quick else 1))


if __name__ == "__main__":
    main()
