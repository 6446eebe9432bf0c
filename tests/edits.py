"""Edits that make a copy, or another shot, of a real photo: shared by the
pixel-check tests and bench/verify.py so both judge the same things."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from connector.core.verify import VERIFY_SIDE


def thumb(im: Image.Image, side: int = VERIFY_SIDE) -> npt.NDArray[np.uint8]:
    """What the index stores: Pillow's thumbnail, long side <= side."""
    t = im.copy()
    t.thumbnail((side, side))
    return np.asarray(t.convert("RGB"))


def reencode(im: Image.Image, fmt: str, **kw: object) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def crop(im: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Cut these shares of the width/height off each side."""
    w, h = im.size
    return im.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def scale(im: Image.Image, f: float) -> Image.Image:
    w, h = im.size
    return im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)


def gamma(im: Image.Image, g: float) -> Image.Image:
    return im.point([min(255, round(255 * (i / 255) ** g)) for i in range(256)] * 3)


def viewpoint(im: Image.Image, deg: float) -> tuple[Image.Image, Image.Image]:
    """The scene seen from ``deg`` further round (60-degree lens, centre kept).

    The plane-induced homography of turning the camera about the vertical
    axis, re-centred as when walking round the subject; both views cropped to
    the central 80 % so that neither has invented borders.
    """
    arr = np.asarray(im)
    h, w = arr.shape[:2]
    f = (w / 2) / math.tan(math.radians(30))
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    t = math.radians(deg)
    rot = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    hom = k @ rot @ np.linalg.inv(k)
    c = hom @ np.array([w / 2, h / 2, 1.0])
    shift = np.array([[1, 0, w / 2 - c[0] / c[2]], [0, 1, h / 2 - c[1] / c[2]], [0, 0, 1]])
    warped = cv2.warpPerspective(
        arr, shift @ hom, (w, h), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT
    )
    box = (round(0.1 * w), round(0.1 * h), round(0.9 * w), round(0.9 * h))
    return im.crop(box), Image.fromarray(warped).crop(box)
