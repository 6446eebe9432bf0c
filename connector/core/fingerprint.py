"""Fingerprints: every code damdup keeps for one image, from one reduced decode.

The full decoded-pixel digest is NOT part of a fingerprint: it costs a full
decode (4-5x a draft-mode decode on a 24-megapixel JPEG), so the matcher asks
for it only to settle a candidate pair (`pixel_digest`).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from connector.core.capture import CaptureFacts, read_capture_facts

if TYPE_CHECKING:
    from imagehash import ImageHash

try:  # HEIC/HEIF from phones; registered once, on import.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - declared dependency, kept optional for slim installs
    pass

# Bump when any bit of any code may change (Pillow or imagehash upgrades too):
# fingerprints of an older recipe are re-made lazily, never compared with new ones.
RECIPE = 4

# Long side of the stored thumbnail that pixel verification and review work on.
THUMB_SIDE = 384
THUMB_QUALITY = 90
# A reduced-size decode must stay at least this large on its long side.
DECODE_SIDE = THUMB_SIDE

# Grey-level standard deviation below which an image is "flat": all flat images
# hash alike, so hashes must not pair them.
FLAT_STD = 3.0
# A uniform border is trimmed when it takes at least this share of a side
# (padded / letterboxed copies); the tolerance absorbs JPEG ringing.
BORDER_MIN_SHARE = 0.02
BORDER_TOLERANCE = 12
# Codes are also taken of the central part of the image, this share of each
# side: a copy cropped by about 5 % on every side hashes like it (a 10 % smaller
# frame otherwise moves pHash by 14-18 bits, out of the candidate radius).
INNER_SHARE = 0.9

DEFAULT_MAX_PIXELS = 150_000_000

FORMATS_ORIGINAL = frozenset({"JPEG", "MPO", "HEIF", "TIFF", "DNG"})


class ImageError(Exception):
    """An asset that cannot be fingerprinted; the message says why, for a person."""


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    size_bytes: int
    recipe: int
    format: str
    width: int  # after EXIF orientation
    height: int
    payload_digest: str | None
    phash: int
    dhash: int
    phash_trim: int | None
    dhash_trim: int | None
    phash_inner: int
    dhash_inner: int
    flat: bool
    animated: bool
    capture: CaptureFacts
    thumb: bytes = field(repr=False)

    def codes(self, kind: str) -> tuple[int, ...]:
        """Every variant of one code ("phash" or "dhash"): as oriented,
        border-trimmed, central part."""
        return codes_of(self.__dict__, kind)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("thumb")
        out["phash"] = f"{self.phash:016x}"
        out["dhash"] = f"{self.dhash:016x}"
        for key in ("phash_trim", "dhash_trim", "phash_inner", "dhash_inner"):
            value = getattr(self, key)
            out[key] = None if value is None else f"{value:016x}"
        return out


def codes_of(row: dict[str, Any], kind: str) -> tuple[int, ...]:
    """Variants of one code from a fingerprint's fields or an index row."""
    values = (row[kind], row[f"{kind}_trim"], row[f"{kind}_inner"])
    return tuple(value for value in values if value is not None)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_to_int(value: ImageHash) -> int:
    bits = np.asarray(value.hash, dtype=np.uint8).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (headers only) and refuse what is over the pixel limit before any
    decoding. Pillow's own bomb check (a process-wide setting we leave alone)
    still refuses anything over twice its default."""
    try:
        with warnings.catch_warnings():
            # Corrupt EXIF and Pillow's softer bomb warning: the limit below decides.
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image format damdup can read ({_sniff(data)})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"image header claims {width}x{height} pixels, over the {max_pixels:,} limit"
        )
    return image


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def image_signature(data: bytes) -> str | None:
    """The image format the first bytes announce, whatever the file is named."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIF/AVIF"
    return None


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip()
    if not data:
        return "empty file"
    announced = image_signature(data)
    if announced is not None:
        return f"{announced} signature, but the header is damaged or unsupported"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096]):
        return "SVG vector graphics are not raster images"
    if head[:1] == b"<":
        return "looks like HTML or XML text"
    if all(32 <= byte < 127 or byte in (9, 10, 13) for byte in data[:512]):
        return "looks like plain text"
    if not data.strip(b"\0"):
        return "only zero bytes"
    return f"unknown signature {data[:8].hex()}"


def _reduced_rgb(image: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    """Decode once at the smallest size that still serves every code; return it
    EXIF-oriented with the oriented full size."""
    full_width, full_height = image.size
    if image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly from DCT data.
        scale = max(full_width, full_height) / DECODE_SIDE
        if scale >= 2:
            image.draft(
                image.mode if image.mode in ("L", "CMYK") else "RGB",
                (int(full_width / scale * 1.01) + 1, int(full_height / scale * 1.01) + 1),
            )
    _load(image)
    orientation = _orientation(image)
    # Formats without draft mode decode at full size; shrink before any copy so a
    # 9000x9000 PNG costs one decode, not a decode plus full-size RGB and rotation.
    factor = max(image.size) // (2 * DECODE_SIDE)
    if factor >= 2:
        if image.mode == "1":
            image = image.convert("L")  # a byte a pixel, not the three of RGB
        elif image.mode in ("P", "I;16", "I;16B", "I;16L"):  # reduce() refuses these
            image = _to_rgb(image)
        image = image.reduce(factor)
    image = _orient(image, orientation)
    if orientation in (5, 6, 7, 8):
        full_width, full_height = full_height, full_width
    return _to_rgb(image), (full_width, full_height)


def _load(image: Image.Image) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd EXIF; facts are read apart
        image.load()


def _orient(image: Image.Image, orientation: int) -> Image.Image:
    """What exif_transpose does, from an orientation read beforehand: a reduced
    image no longer carries the tag."""
    for step in _ORIENTATION_STEPS.get(orientation, ()):
        image = image.transpose(step)
    return image


_ORIENTATION_STEPS = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) or 1.0
        image = Image.fromarray((array * (255.0 / max(top, 255.0))).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _trim_box(grey: np.ndarray) -> tuple[int, int, int, int] | None:
    """Box inside a uniform border, or None when there is no real border."""
    height, width = grey.shape
    if min(height, width) < 16:
        return None
    corners = np.array([grey[0, 0], grey[0, -1], grey[-1, 0], grey[-1, -1]], dtype=np.int16)
    background = int(np.median(corners))
    content = np.abs(grey.astype(np.int16) - background) > BORDER_TOLERANCE
    rows = np.flatnonzero(content.mean(axis=1) > 0.01)
    cols = np.flatnonzero(content.mean(axis=0) > 0.01)
    if rows.size == 0 or cols.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    trimmed_share = max(top / height, 1 - bottom / height, left / width, 1 - right / width)
    if trimmed_share < BORDER_MIN_SHARE or (bottom - top) < 8 or (right - left) < 8:
        return None
    return left, top, right, bottom


def _thumb_bytes(thumb: Image.Image) -> bytes:
    """The stored thumbnail: its pixels and nothing of the file's own (Pillow
    would carry a JPEG comment over), so that copies with the same pixels
    store the same thumbnail and share their pixel checks."""
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=THUMB_QUALITY, optimize=False, comment=b"")
    return out.getvalue()


def fingerprint_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Fingerprint:
    """All of one image's codes from one reduced decode. Raises ImageError."""
    digest = sha256_hex(data)
    image = _open(data, max_pixels)
    image_format = image.format or "unknown"
    animated = bool(getattr(image, "is_animated", False))
    capture = read_capture_facts(image)
    payload = payload_digest(data)
    try:
        rgb, (width, height) = _reduced_rgb(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageError(f"{image_format} data is damaged: {exc}") from exc
    except MemoryError as exc:
        raise ImageError("image needs more memory than the per-file limit") from exc
    # Imported here, not with the module: every command reads RECIPE and the
    # types from here, only fingerprinting needs imagehash (and its SciPy).
    import imagehash

    # Every code comes from the thumbnail that is stored for the pixel check:
    # the same input whatever scale draft mode decoded at, and half the work.
    rgb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    # imagehash converts to grey first; converting once serves every code.
    luma = rgb.convert("L")
    grey = np.asarray(luma)
    flat = float(grey.std()) < FLAT_STD
    phash = hash_to_int(imagehash.phash(luma))
    dhash = hash_to_int(imagehash.dhash(luma))
    phash_trim = dhash_trim = None
    box = _trim_box(grey)
    if box is not None:
        inner = luma.crop(box)
        phash_trim = hash_to_int(imagehash.phash(inner))
        dhash_trim = hash_to_int(imagehash.dhash(inner))
    margin_x = round(luma.width * (1 - INNER_SHARE) / 2)
    margin_y = round(luma.height * (1 - INNER_SHARE) / 2)
    centre = luma.crop((margin_x, margin_y, luma.width - margin_x, luma.height - margin_y))
    return Fingerprint(
        sha256=digest,
        size_bytes=len(data),
        recipe=RECIPE,
        format=image_format,
        width=width,
        height=height,
        payload_digest=payload,
        phash=phash,
        dhash=dhash,
        phash_trim=phash_trim,
        dhash_trim=dhash_trim,
        phash_inner=hash_to_int(imagehash.phash(centre)),
        dhash_inner=hash_to_int(imagehash.dhash(centre)),
        flat=flat,
        animated=animated,
        capture=capture,
        thumb=_thumb_bytes(rgb),
    )


def pixel_digest(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """SHA-256 of the fully decoded, EXIF-oriented pixels: equal digests mean the
    same picture whatever the container, metadata or lossless encoding."""
    image = _open(data, max_pixels)
    try:
        _load(image)
        oriented = _orient(image, _orientation(image))
        if oriented.mode not in ("RGB", "RGBA", "L", "LA"):
            has_alpha = "A" in oriented.getbands() or "transparency" in oriented.info
            oriented = oriented.convert("RGBA" if has_alpha else "RGB")
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageError(f"damaged image data: {exc}") from exc
    hasher = hashlib.sha256()
    hasher.update(f"{oriented.mode}:{oriented.size[0]}x{oriented.size[1]}:".encode())
    hasher.update(oriented.tobytes())
    return hasher.hexdigest()


# Two JPEGs with the same decoded pixels have, in practice, the same DCT
# coefficients (a lossless re-save: another Huffman table, progressive order,
# restart markers), so their reduced decodes and stored thumbnails are the
# same bytes; a lossless rotation under a compensating EXIF tag moves the
# thumbnail by rounding only (mean difference about 0.1 grey level). The next
# frame of a burst differs by about 1 grey level even on a tripod (new sensor
# noise), more once anything moved. Above this mean difference, two JPEG
# thumbnails cannot come from the same pixels.
SAME_PIXELS_THUMB_DIFFERENCE = 0.5


def thumbs_rule_out_same_pixels(a: Fingerprint, b: Fingerprint) -> bool:
    """Whether the stored thumbnails alone show that two images cannot have the
    same decoded pixels, sparing the full decode of both (5x a reduced one on a
    24-megapixel JPEG). Only between JPEGs, which take the same reduced decode:
    a PNG of a JPEG's pixels is reduced another way and its thumbnail differs by
    as much as a burst frame's, so such pairs still need the full decode. False
    whenever unsure. Were a same-pixel pair ever ruled out here, it would miss
    only the `same_pixels` tier: the pixel check still settles it."""
    if a.format != "JPEG" or b.format != "JPEG" or (a.width, a.height) != (b.width, b.height):
        return False
    try:
        with Image.open(io.BytesIO(a.thumb)) as thumb_a, Image.open(io.BytesIO(b.thumb)) as thumb_b:
            if thumb_a.size != thumb_b.size or thumb_a.mode != thumb_b.mode:
                return False
            pixels_a = np.asarray(thumb_a, dtype=np.int16)
            pixels_b = np.asarray(thumb_b, dtype=np.int16)
    except (OSError, ValueError, SyntaxError, struct.error, EOFError):
        return False
    difference = float(np.abs(pixels_a - pixels_b).mean())
    return difference > SAME_PIXELS_THUMB_DIFFERENCE


# -- payload digests: pixels-defining bytes only, without decoding -------------

_JPEG_METADATA = frozenset({0xFE, *range(0xE0, 0xF0)})  # COM, APP0..APP15
_PNG_METADATA = frozenset(
    {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf", b"iCCP", b"pHYs", b"sRGB", b"gAMA", b"cHRM"}
)


def payload_digest(data: bytes) -> str | None:
    """A digest that ignores metadata, where the format allows it without
    decoding: a JPEG's tables and entropy-coded scans, a PNG's IHDR/PLTE/tRNS/IDAT.
    The EXIF orientation is folded in because it changes what is shown."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_payload(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_payload(data)
    except (IndexError, struct.error, ValueError):
        return None
    return None


def _exif_orientation_from_tiff(tiff: bytes) -> int:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    endian = "<" if tiff[:2] == b"II" else ">"
    (offset,) = struct.unpack(endian + "I", tiff[4:8])
    if offset + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(endian + "H", tiff[offset : offset + 2])
    for index in range(min(count, 512)):
        entry = tiff[offset + 2 + 12 * index : offset + 14 + 12 * index]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:
            (value,) = struct.unpack(endian + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1


def _jpeg_payload(data: bytes) -> str | None:
    hasher = hashlib.sha256(b"jpeg:")
    orientation = 1
    position = 2
    length_total = len(data)
    while position + 4 <= length_total:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            orientation = _exif_orientation_from_tiff(segment[6:])
        if marker == 0xDA:
            end = data.rfind(b"\xff\xd9")
            if end < position:
                return None  # truncated: let the decoder say what is wrong
            hasher.update(data[position : end + 2])
            hasher.update(f":o{orientation}".encode())
            return hasher.hexdigest()
        if marker not in _JPEG_METADATA:
            hasher.update(data[position : position + 2 + length])
        position += 2 + length
    return None


def _png_payload(data: bytes) -> str | None:
    hasher = hashlib.sha256(b"png:")
    orientation = 1
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        chunk = data[position + 8 : position + 8 + length]
        if len(chunk) < length:
            return None
        if kind == b"eXIf":
            orientation = _exif_orientation_from_tiff(chunk)
        elif kind == b"IEND":
            hasher.update(f":o{orientation}".encode())
            return hasher.hexdigest()
        elif kind not in _PNG_METADATA and kind[0:1].isupper():
            # Critical chunks and tRNS define pixels; ancillary ones are metadata.
            hasher.update(kind + chunk)
        elif kind == b"tRNS":
            hasher.update(kind + chunk)
        position += 12 + length
    return None
