"""Tone curves of the pixel check (connector/core/verify.py), compiled.

A tone curve maps one image's levels onto the other's: f(src) ~ E[dst | src]
from a joint histogram joint[src, dst] of one channel. The pixel check fits
six of them for every tone match (three channels, both directions), up to
twice per pair, and that fit was a third of its time in NumPy calls on small
arrays and a pool-adjacent-violators loop in Python. The same arithmetic in
the same order, compiled: every sum before a division is a sum of whole
counts (exact in float64 in any order), the rest is done step by step as
NumPy did it, so the curves are the same to the last bit (a test compares
them with the NumPy reference in tests/core/test_tones.py).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from connector.core.search import jit

__all__ = ["tone_curve"]

F64 = npt.NDArray[np.float64]


@jit
def _isotonic(y: F64, wt: F64) -> F64:  # pragma: no cover - compiled
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    n = y.shape[0]
    vals = np.empty(n, dtype=np.float64)
    wts = np.empty(n, dtype=np.float64)
    sizes = np.empty(n, dtype=np.int64)
    top = 0
    for i in range(n):
        vals[top] = y[i]
        wts[top] = wt[i]
        sizes[top] = 1
        top += 1
        while top > 1 and vals[top - 2] > vals[top - 1]:
            w2 = wts[top - 2] + wts[top - 1]
            v2 = (vals[top - 2] * wts[top - 2] + vals[top - 1] * wts[top - 1]) / w2
            n2 = sizes[top - 2] + sizes[top - 1]
            top -= 1
            vals[top - 1] = v2
            wts[top - 1] = w2
            sizes[top - 1] = n2
    out = np.empty(n, dtype=np.float64)
    at = 0
    for j in range(top):
        for _ in range(sizes[j]):
            out[at] = vals[j]
            at += 1
    return out


@jit
def _monotone_fit(
    bx: F64, by: F64, wt: F64, clip_level: float, min_slope: float
) -> F64:  # pragma: no cover - compiled
    """Weighted fit through binned points that rises at least `min_slope`;
    between points whose target is clipped (at 0 or 255) it may be flat."""
    n = bx.shape[0]
    offset = np.zeros(n, dtype=np.float64)
    total = 0.0
    for i in range(n - 1):
        clipped_here = by[i] <= clip_level or by[i] >= 255.0 - clip_level
        clipped_next = by[i + 1] <= clip_level or by[i + 1] >= 255.0 - clip_level
        slope = 0.0 if (clipped_here or clipped_next) else min_slope
        total += slope * (bx[i + 1] - bx[i])
        offset[i + 1] = total
    fit = _isotonic(by - offset, wt)
    return fit + offset


@jit
def _binned(joint: F64, bins: int) -> tuple[F64, F64, F64]:  # pragma: no cover - compiled
    """The used source bins: their mean level, their count, and their rows of
    the joint histogram summed."""
    per = 256 // bins
    cnt = np.zeros(256, dtype=np.float64)
    for s in range(256):
        cnt[s] = joint[s].sum()
    used = np.empty(bins, dtype=np.int64)
    bc = np.zeros(bins, dtype=np.float64)
    bxs = np.zeros(bins, dtype=np.float64)
    n = 0
    for k in range(bins):
        count = 0.0
        moment = 0.0
        for s in range(k * per, (k + 1) * per):
            count += cnt[s]
            moment += cnt[s] * s
        if count > 0:
            used[n] = k
            bc[n] = count
            bxs[n] = moment / count
            n += 1
    jb = np.zeros((n, 256), dtype=np.float64)
    for i in range(n):
        for s in range(used[i] * per, (used[i] + 1) * per):
            jb[i] += joint[s]
    return bxs[:n].copy(), bc[:n].copy(), jb


@jit
def _medians(jb: F64) -> F64:  # pragma: no cover - compiled
    """Each bin's conditional median: a minority of edited pixels in a bin
    (white caption text among white highlights) cannot move it."""
    n = jb.shape[0]
    by = np.zeros(n, dtype=np.float64)
    for i in range(n):
        half = 0.5 * jb[i].sum()
        running = 0.0
        for d in range(256):
            running += jb[i, d]
            if running >= half:
                by[i] = d
                break
    return by


@jit
def _extended(bx: F64, fit: F64, min_slope: float) -> F64:  # pragma: no cover - compiled
    """All 256 levels from binned points; beyond them rise at the least slope."""
    n = bx.shape[0]
    levels = np.arange(256).astype(np.float64)
    inner = np.interp(levels, bx, fit)
    curve = np.empty(256, dtype=np.float64)
    for v in range(256):
        if levels[v] < bx[0]:
            value = fit[0] + min_slope * (levels[v] - bx[0])
        elif levels[v] > bx[n - 1]:
            value = fit[n - 1] + min_slope * (levels[v] - bx[n - 1])
        else:
            value = inner[v]
        curve[v] = min(max(value, 0.0), 255.0)
    return curve


@jit
def tone_curve(
    joint: F64, bins: int, steps: F64, clip_level: float, min_slope: float
) -> F64:  # pragma: no cover - compiled
    """Curve f(src) ~ E[dst | src] from joint[src, dst] (256 x 256 counts):
    conditional medians over `bins` source bins, fitted to rise at least
    `min_slope`, refitted for each limit in `steps` while ignoring cells
    further than it from the curve; all 256 levels, within 0..255."""
    bx, weight, jb = _binned(joint, bins)
    n = bx.shape[0]
    if n == 0:
        return np.arange(256).astype(np.float64)
    fit = _monotone_fit(bx, _medians(jb), weight, clip_level, min_slope)
    for limit in steps:
        kc = np.zeros(n, dtype=np.float64)
        moment = np.zeros(n, dtype=np.float64)
        for i in range(n):
            for d in range(256):
                if abs(fit[i] - d) <= limit:
                    kc[i] += jb[i, d]
                    moment[i] += jb[i, d] * d
        ok = kc > 0
        if not ok.any():
            break
        ky = moment[ok] / kc[ok]
        fit = np.interp(bx, bx[ok], _monotone_fit(bx[ok], ky, kc[ok], clip_level, min_slope))
    return _extended(bx, fit, min_slope)


def ready() -> None:
    """Compile every kernel now (or load it from the cache): a worker does
    this before its memory limit applies, as the compiler reserves about
    300 MB of address space of its own."""
    joint = np.zeros((256, 256), dtype=np.float64)
    joint[10:200, 20:220] = np.eye(190, 200)
    tone_curve(joint, 128, np.array([48.0, 24.0]), 2.0, 0.3)
