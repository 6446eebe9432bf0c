"""The compiled tone curves give the curves of the NumPy code they replace,
to the last bit: the pixel check's thresholds were calibrated on those."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from connector.core import verify
from connector.core.tones import tone_curve

F64 = npt.NDArray[np.float64]
BINS, STEPS = verify.TONE_BINS, verify.TONE_OUTLIER_STEPS
CLIP, SLOPE = verify.TONE_CLIP_LEVEL, verify.TONE_MIN_SLOPE


# -- the NumPy reference: connector/core/verify.py before the compiled curves ---


def _isotonic(y: F64, wt: F64) -> F64:
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), wt.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w2 = wts[-2] + wts[-1]
            v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w2
            n2 = sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
            vals[-1], wts[-1], sizes[-1] = v2, w2, n2
    return np.repeat(np.array(vals, dtype=np.float64), sizes)


def _monotone_fit(bx: F64, by: F64, wt: F64) -> F64:
    clipped = (by <= CLIP) | (by >= 255.0 - CLIP)
    slope = np.where(clipped[:-1] | clipped[1:], 0.0, SLOPE)
    offset = np.concatenate(([0.0], np.cumsum(slope * np.diff(bx))))
    return _isotonic(by - offset, wt) + offset


def reference(joint: F64) -> F64:
    levels = np.arange(256, dtype=np.float64)
    cnt = joint.sum(axis=1)
    bc = cnt.reshape(BINS, -1).sum(axis=1)
    used = bc > 0
    if not np.any(used):
        return levels.copy()
    bx = (cnt * levels).reshape(BINS, -1).sum(axis=1)[used] / bc[used]
    jb = joint.reshape(BINS, -1, 256).sum(axis=1)[used]
    cum = np.cumsum(jb, axis=1)
    by = np.argmax(cum >= 0.5 * cum[:, -1:], axis=1).astype(np.float64)
    fit = _monotone_fit(bx, by, bc[used])
    for limit in STEPS:
        kept = jb * (np.abs(fit[:, None] - levels[None, :]) <= limit)
        kc = kept.sum(axis=1)
        ok = kc > 0
        if not np.any(ok):
            break
        ky = (kept[ok] @ levels) / kc[ok]
        fit = np.interp(bx, bx[ok], _monotone_fit(bx[ok], ky, kc[ok]))
    inner = np.interp(levels, bx, fit)
    lo = fit[0] + SLOPE * (levels - bx[0])
    hi = fit[-1] + SLOPE * (levels - bx[-1])
    curve = np.where(levels < bx[0], lo, np.where(levels > bx[-1], hi, inner))
    return np.clip(curve, 0.0, 255.0)


# -- joint histograms as the pixel check makes them -----------------------------


def joint_of(src: npt.NDArray[np.uint8], dst: npt.NDArray[np.uint8]) -> F64:
    joint = np.zeros((256, 256), dtype=np.float64)
    np.add.at(joint, (src.ravel(), dst.ravel()), 1.0)
    return joint


def edits(rng: np.random.Generator) -> list[tuple[str, F64]]:
    image = np.asarray(
        Image.effect_mandelbrot((160, 120), (-2.0, -1.2, 1.0, 1.2), 60), dtype=np.float64
    )
    grey = np.clip(image * 0.8 + rng.normal(0, 12, image.shape) + 20, 0, 255).astype(np.uint8)
    out: list[tuple[str, F64]] = []
    for name, edited in (
        ("same", grey.astype(np.float64)),
        ("brighter, clipped", grey * 1.4 + 30),
        ("darker", grey * 0.6),
        ("gamma", 255.0 * (grey / 255.0) ** 0.6),
        ("inverted band", np.where(np.arange(grey.shape[0])[:, None] < 20, 255 - grey, grey)),
        ("noise", grey + rng.normal(0, 25, grey.shape)),
        ("flat", np.full(grey.shape, 128.0)),
    ):
        dst = np.clip(np.round(edited), 0, 255).astype(np.uint8)
        out.append((name, joint_of(grey, dst)))
    out.append(("empty", np.zeros((256, 256), dtype=np.float64)))
    one = np.zeros((256, 256), dtype=np.float64)
    one[7, 200] = 3.0
    out.append(("one cell", one))
    for n in range(12):  # sparse random histograms: odd bins, violators to pool
        sparse = np.zeros((256, 256), dtype=np.float64)
        cells = rng.integers(0, 256, size=(int(rng.integers(1, 400)), 2))
        sparse[cells[:, 0], cells[:, 1]] += rng.integers(1, 50, size=len(cells))
        out.append((f"random {n}", sparse))
    return out


@pytest.mark.parametrize("transposed", [False, True], ids=["a-to-b", "b-to-a"])
def test_compiled_curves_equal_the_numpy_reference_bit_for_bit(transposed: bool) -> None:
    for name, joint in edits(np.random.default_rng(20261207)):
        given = joint.T if transposed else joint
        expected = reference(given)
        got = tone_curve(np.ascontiguousarray(given), BINS, np.array(STEPS), CLIP, SLOPE)
        assert got.dtype == np.float64 and got.shape == (256,), name
        assert np.array_equal(got, expected), (name, np.abs(got - expected).max())
        assert np.array_equal(verify._tone_curve(given), expected), name


def test_a_curve_rises_and_stays_within_the_levels() -> None:
    for name, joint in edits(np.random.default_rng(7)):
        curve = tone_curve(joint, BINS, np.array(STEPS), CLIP, SLOPE)
        assert curve.min() >= 0.0 and curve.max() <= 255.0, name
        assert np.all(np.diff(curve) >= -1e-9), name
