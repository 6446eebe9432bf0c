"""Settling candidate pairs (connector/engine/settle.py)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance
from skimage import data

from connector.core.fingerprint import Fingerprint, fingerprint_bytes
from connector.core.index import AssetRow, ordered
from connector.core.store import open_store
from connector.engine.matcher import distance
from connector.engine.pool import Outcome
from connector.engine.settle import Settler, run_here


def jpeg(image: Image.Image, comment: bytes = b"") -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, comment=comment)
    return out.getvalue()


class NoOriginals:
    """No original can be read: the pairs settle on their fingerprints."""

    def __call__(self, sha256: str) -> bytes | None:
        return None

    def read(self, sha256: str) -> tuple[AssetRow, bytes] | None:
        return None


def test_pairs_with_the_same_two_thumbnails_share_one_pixel_check(tmp_path: Path) -> None:
    """Two byte-different copies with the same pixels, each paired with one
    edited copy: the pixel check reads only the two thumbnails, so it runs
    once and both pairs get its answer."""
    image = Image.fromarray(data.astronaut())
    first, second = jpeg(image, b"copy one"), jpeg(image, b"copy two")
    edited = jpeg(ImageEnhance.Brightness(image).enhance(1.15))
    prints = {fp.sha256: fp for fp in (fingerprint_bytes(d) for d in (first, second, edited))}
    one, two, other = (fingerprint_bytes(d).sha256 for d in (first, second, edited))
    assert len({one, two, other}) == 3
    assert prints[one].thumb == prints[two].thumb, "same pixels, same thumbnail"

    ran: list[Any] = []

    def run_jobs(function: Callable[..., Any], jobs: Iterable[Any]) -> list[Outcome[Any]]:
        listed = list(jobs)
        ran.extend(key for key, _ in listed)
        return list(run_here(function, listed))

    def pair(a: Fingerprint, b: Fingerprint) -> tuple[tuple[str, str], tuple[int, int]]:
        return ordered(a.sha256, b.sha256), (
            distance(a.codes("phash"), b.codes("phash")),
            distance(a.codes("dhash"), b.codes("dhash")),
        )

    store = open_store(tmp_path / "index.sqlite", create=True)
    try:
        settler = Settler(
            store, prints.__getitem__, NoOriginals(), run_jobs, max_pixels=10**8, keep=False
        )
        candidates = dict(pair(prints[x], prints[other]) for x in (one, two))
        settled = {s.row.sha_a + s.row.sha_b: s for s in settler.settle(candidates)}
    finally:
        store.close()
    assert len(ran) == 1, ran
    assert settler.stats.pixel_checks == 1
    assert len(settled) == 2
    checks = [s.evidence.pixel_check for s in settled.values()]
    assert checks[0] == checks[1] and checks[0] is not None
    assert all(s.evidence.pixel_check_passed for s in settled.values())
    assert all(s.row.tier == "near_identical" for s in settled.values()), [
        s.row.tier for s in settled.values()
    ]
    assert np.isfinite(settled[next(iter(settled))].row.phash_distance)
