"""Capture facts from EXIF: the only evidence that tells burst frames of a still
scene apart from re-encodes of one frame.

Two kinds of disagreement. :func:`other_moment` is evidence that the two files
are two exposures (the same camera, a capture time or frame number apart): it
vetoes a pixel-level match. Everything else :func:`contradictions` lists (a
rewritten camera make or model, another serial, GPS far apart, another image
id) is what editing tools and archive imports do to one photo's metadata: it
only asks a person to look."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from PIL import Image

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_MAKE = 0x010F
_MODEL = 0x0110
_DATETIME_ORIGINAL = 0x9003
_SUBSEC_ORIGINAL = 0x9291
_BODY_SERIAL = 0xA431
_IMAGE_UNIQUE_ID = 0xA420
_IMAGE_NUMBER = 0x9211  # TIFF/EP ImageNumber: the camera's frame (shutter) count

# Two GPS fixes further apart than this cannot be one exposure (phone GPS
# jitter between re-saves is zero: the tag is copied, not re-measured).
GPS_CONTRADICTION_METRES = 200.0


@dataclass(frozen=True)
class CaptureFacts:
    taken_at: str | None = None  # "YYYY:MM:DD HH:MM:SS" as EXIF writes it
    subsec: str | None = None
    make: str | None = None
    model: str | None = None
    serial: str | None = None
    unique_id: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    image_number: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureFacts:
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\0", "").strip()
    return cleaned or None


def _degrees(value: object, ref: object) -> float | None:
    try:
        degrees, minutes, seconds = (float(part) for part in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    result = degrees + minutes / 60 + seconds / 3600
    if not math.isfinite(result):
        return None
    return -result if _text(ref) in ("S", "W") else result


def read_capture_facts(image: Image.Image) -> CaptureFacts:
    """Never raises: a corrupt EXIF block gives no facts, not a lost asset."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; we drop it
            exif = image.getexif()
            base = dict(exif)
            detail = dict(exif.get_ifd(_EXIF_IFD))
            gps = dict(exif.get_ifd(_GPS_IFD))
    except Exception:
        return CaptureFacts()
    latitude = _degrees(gps.get(2), gps.get(1)) if gps else None
    longitude = _degrees(gps.get(4), gps.get(3)) if gps else None
    return CaptureFacts(
        taken_at=_text(detail.get(_DATETIME_ORIGINAL)),
        subsec=_text(detail.get(_SUBSEC_ORIGINAL)),
        make=_text(base.get(_MAKE)),
        model=_text(base.get(_MODEL)),
        serial=_text(detail.get(_BODY_SERIAL)),
        unique_id=_text(detail.get(_IMAGE_UNIQUE_ID)),
        latitude=latitude,
        longitude=longitude,
        image_number=_text(
            detail.get(_IMAGE_NUMBER) if _IMAGE_NUMBER in detail else base.get(_IMAGE_NUMBER)
        ),
    )


def _metres_apart(a: CaptureFacts, b: CaptureFacts) -> float | None:
    if a.latitude is None or a.longitude is None or b.latitude is None or b.longitude is None:
        return None
    lat1, lon1 = math.radians(a.latitude), math.radians(a.longitude)
    lat2, lon2 = math.radians(b.latitude), math.radians(b.longitude)
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 6_371_000 * 2 * math.asin(min(1.0, math.sqrt(h)))


def contradictions(a: CaptureFacts, b: CaptureFacts) -> list[str]:
    """Facts that cannot both hold for one exposure. A missing fact never
    contradicts: re-encoders often strip EXIF."""
    found: list[str] = []

    def differ(name: str, left: str | None, right: str | None) -> None:
        if left is not None and right is not None and left != right:
            found.append(f"{name} differs ({left} vs {right})")

    differ("capture time", a.taken_at, b.taken_at)
    if a.taken_at is not None and a.taken_at == b.taken_at and not _same_subsec(a.subsec, b.subsec):
        differ("sub-second capture time", a.subsec, b.subsec)
    differ("camera make", a.make, b.make)
    differ("camera model", a.model, b.model)
    differ("camera serial", a.serial, b.serial)
    differ("image unique id", a.unique_id, b.unique_id)
    differ("frame number", a.image_number, b.image_number)
    distance = _metres_apart(a, b)
    if distance is not None and distance > GPS_CONTRADICTION_METRES:
        found.append(f"GPS positions {distance:.0f} m apart")
    return found


# Two capture times of one exposure written by different tools may differ by a
# time-zone or clock correction: a whole number of quarter hours with the same
# seconds and sub-seconds. Such a pair is reviewed, not vetoed.
CLOCK_CORRECTION_STEP_S = 15 * 60


def _subsec(value: str | None) -> str | None:
    """Sub-seconds as digits without trailing zeros ("120" and "12" agree)."""
    if value is None or not value.isdigit():
        return None
    return value.rstrip("0") or "0"


def _same_subsec(a: str | None, b: str | None) -> bool:
    """Agree, or one is the other cut short (a writer kept fewer digits)."""
    left, right = _subsec(a), _subsec(b)
    if left is None or right is None:
        return True
    return left.startswith(right) or right.startswith(left)


def _instant(value: str | None) -> datetime | None:
    try:
        return datetime.strptime(value or "", "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _same_camera(a: CaptureFacts, b: CaptureFacts) -> bool:
    """Both name a camera, and nothing either names disagrees."""
    pairs = [(a.make, b.make), (a.model, b.model), (a.serial, b.serial)]
    known = [(x, y) for x, y in pairs if x is not None and y is not None]
    return bool(known) and all(x == y for x, y in known)


def other_moment(a: CaptureFacts, b: CaptureFacts) -> list[str]:
    """Evidence that ``a`` and ``b`` are two exposures of one camera: the
    only capture facts that may veto a pixel-level match (burst frames of a
    still scene look like re-encodes in pixels)."""
    if not _same_camera(a, b):
        return []
    found: list[str] = []
    if (
        a.image_number is not None
        and b.image_number is not None
        and a.image_number != b.image_number
    ):
        found.append(f"frame number differs ({a.image_number} vs {b.image_number})")
    when_a, when_b = _instant(a.taken_at), _instant(b.taken_at)
    if when_a is not None and when_b is not None:
        apart = abs((when_a - when_b).total_seconds())
        corrected = apart % CLOCK_CORRECTION_STEP_S == 0 and _subsec(a.subsec) == _subsec(b.subsec)
        if apart and not corrected:
            found.append(f"capture time differs ({a.taken_at} vs {b.taken_at})")
        elif not apart and not _same_subsec(a.subsec, b.subsec):
            found.append(f"sub-second capture time differs ({a.subsec} vs {b.subsec})")
    return found
