"""Build the large labelled set: real photographs of 2 MP and more, with labelled copies.

    .venv/bin/python bench/largeset.py [--force]

Writes ``bench/results/large/``: ``photos/<unit>/<name>``, ``labels.json`` (the format of
fixtures/labels.json, so bench/accuracy.py scores it) and ``LICENSES.md`` (origin and
licence of every source photo, read from the Debian package that ships it). Nothing
here is committed; ``make bench`` builds it before running bench/accuracy.py, and a
second run is a no-op while the script, fixtures/build.py and the packages are unchanged.

The photographs come from three Debian packages (bench/install.sh installs them):
lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04 (CC BY / CC BY-SA / CC0 camera
photos) and plasma-workspace-wallpapers (KDE's photographic wallpapers). Renders and
illustrations in those packages are left out. A source whose long side exceeds
MAX_SIDE is reduced to it (Lanczos) to keep the build and the scan within minutes on
two cores; every source stays at 2 MP or more.

The copies are fixtures/build.py's (imported, not copied): byte_copy, reencode_q85/q60,
resize_50/25, png, webp, exif_rotated, metadata_only, crop_5, watermark, brighter_15,
darker_15, with the same EXIF conventions; plus two paddings, ``pad_border`` (a uniform
frame of 3-10 % of the short side on every side) and ``letterbox`` (black bars of 5-10 %
on two opposite sides). Different shots of one scene (``variant: different_shot``, the
scene's kind in ``scene_kind``):

- ``burst``: the next frame of a burst: fixtures/build.py's burst_frame (camera shake,
  new noise) plus a foreground region moved by 0.5-1.2 % of the long side; same camera,
  same DateTimeOriginal second, another SubSecTimeOriginal.
- ``video``: three consecutive 1920x1080 frames of a slow pan with a moving foreground
  region; frame grabs, so no EXIF at all.
- ``stereo``: a second camera beside the first (same time and sub-second, another body
  serial): the background shifted by 0.4-0.8 % of the width and a foreground region by
  1.5-2.5 %, i.e. parallax.
- ``viewpoint``: another framing from the same spot: a 62-78 % region of the photo
  (zoomed in), new noise and exposure, a later capture time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "large"
PHOTOS = OUT / "photos"
LABELS = OUT / "labels.json"
MAX_SIDE = 4096
MIN_PIXELS = 2_000_000
COPIES_PER_VARIANT = 8


def load_fixtures_build() -> ModuleType:
    """fixtures/build.py as a module (it is a script, not a package)."""
    path = ROOT / "fixtures" / "build.py"
    spec = importlib.util.spec_from_file_location("fixtures_build", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


fb = load_fixtures_build()
Camera, Capture, Shot, Original = fb.Camera, fb.Capture, fb.Shot, fb.Original

BG = "/usr/share/backgrounds/"
KDE = "/usr/share/wallpapers/"
L16, L20, PLASMA = (
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "plasma-workspace-wallpapers",
)


@dataclass(frozen=True)
class Source:
    photo: str  # photo id
    package: str  # Debian package shipping the file
    path: str  # where the package installs it
    unit: str
    stem: str
    camera: Camera
    taken: str  # "YYYY-mm-dd HH:MM:SS"
    place: str | None = None
    kind: str = ""  # burst | video | stereo | viewpoint | "" (copies only)


def kde(name: str, size: str = "2560x1600") -> str:
    return f"{KDE}{name}/contents/images/{size}.jpg"


# Second bodies for the stereo rigs: same models, other serials.
NIKON_R = Camera("NIKON CORPORATION", "NIKON D750", "6034388")
SONY_R = Camera("SONY", "ILCE-7M3", "4120451")
FUJI_R = Camera("FUJIFILM", "X-T3", "9AQ51907")
CANON_R = Camera("Canon", "Canon EOS 5D Mark IV", "032021001502")
OLYMPUS_R = Camera("OLYMPUS CORPORATION", "E-M10MarkIII", "BHR201977")
PANASONIC_R = Camera("Panasonic", "DMC-GX80", "WA6HB001301")
SECOND_BODY = {
    fb.NIKON.serial: NIKON_R,
    fb.SONY.serial: SONY_R,
    fb.FUJI.serial: FUJI_R,
    fb.CANON_5D.serial: CANON_R,
    fb.OLYMPUS.serial: OLYMPUS_R,
    fb.PANASONIC.serial: PANASONIC_R,
}

# Only photographs (checked by eye): the packages' renders (Fossa, Painting-Colors, umang,
# Altai, Shell, ...) and the painterly Autumn are left out; Picture_1A is under 2 MP.
SOURCES: list[Source] = [
    Source("bridge", L16, BG + "Bridge_by_Sander_Klootwijk.jpg", "kuva", "IMG_5120",
           fb.NIKON, "2018-05-12 14:02:11", "senaatintori", "burst"),
    Source("dragonfly", L16, BG + "Dragonfly_by_Bolly.jpg", "kasvatus", "sudenkorento",
           fb.OLYMPUS, "2018-06-30 11:20:45", "kallio", "burst"),
    Source("fig", L16, BG + "Picture_0B_by_freespace.jpg", "hel-fi", "DSC_0731",
           fb.SONY, "2018-08-02 17:44:09", None, "stereo"),
    Source("wine", L16, BG + "Wine_by_Jakkub_Mede.jpg", "kaupunginmuseo", "HKM_2018_0212",
           fb.CANON_5D, "2018-03-17 20:15:33", None, "viewpoint"),
    Source("aitzgorri", L16, BG + "aitzgorri_by_Aitzol_Berasategi.jpg", "kuva", "IMG_5388",
           fb.FUJI, "2017-10-21 12:03:51", None, "video"),
    Source("analogpattern", L16, BG + "analogpattern_by_Peter_Nerlich.jpg", "hel-fi",
           "pinta_kuvio", fb.PANASONIC, "2018-01-08 09:12:40", None),
    Source("free", L16, BG + "free_by_Peter_Nerlich.jpg", "kasvatus", "lintu katossa",
           fb.PANASONIC, "2018-01-08 10:55:02", None, "stereo"),
    Source("friends", L16, BG + "friends_by_Aitzol_Berasategi.jpg", "kasvatus", "koirat ikkunassa",
           fb.FUJI, "2017-08-14 16:31:27", "kruununhaka", "burst"),
    Source("greentock", L16, BG + "greentock_by_Peter_Nerlich.jpg", "kaupunginmuseo",
           "HKM_2018_0031", fb.PANASONIC, "2018-02-19 13:07:18", None, "viewpoint"),
    Source("life", L16, BG + "life_by_Aitzol_Berasategi.jpg", "kuva", "IMG_5402",
           fb.FUJI, "2017-05-06 10:41:13", None, "video"),
    Source("picos", L16, BG + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "hel-fi", "DSC_1187",
           fb.FUJI, "2017-07-02 15:22:48", None, "viewpoint"),
    Source("seeding", L16, BG + "seeding_by_Clements_Engelhardt.jpg", "kasvatus", "voikukat",
           fb.SONY, "2018-05-25 20:48:02", "pasila", "stereo"),
    Source("sunset", L16, BG + "sunset_by_Aitzol_Berasategi.jpg", "kuva", "IMG_5517",
           fb.FUJI, "2017-09-09 19:58:36", None, "burst"),
    Source("kleiber", L20, BG + "Kleiber_by_Lukas_Baubkus.jpg", "kaupunginmuseo",
           "HKM_2021_0415", fb.CANON_5D, "2021-02-27 08:36:55", "toolo", "stereo"),
    Source("bythewater", PLASMA, kde("BytheWater"), "hel-fi", "rantalaituri",
           fb.IPHONE, "2015-06-18 21:10:04", "kallio", "video"),
    Source("coldripple", PLASMA, kde("ColdRipple"), "kaupunginmuseo", "HKM_2014_0998",
           fb.NIKON, "2014-11-03 07:55:19", None, "viewpoint"),
    Source("cups", PLASMA, kde("ColorfulCups"), "kuva", "IMG_4410",
           fb.SONY, "2015-03-28 12:30:00", None, "burst"),
    Source("eveningglow", PLASMA, kde("EveningGlow"), "kasvatus", "veneet iltaruskossa",
           fb.NIKON, "2015-08-22 20:41:37", None, "stereo"),
    Source("fallenleaf", PLASMA, kde("FallenLeaf"), "hel-fi", "DSC_0412",
           fb.OLYMPUS, "2014-10-12 15:09:26", "toolo", "burst"),
    Source("grey", PLASMA, kde("Grey"), "kaupunginmuseo", "HKM_2014_1204",
           fb.LEICA, "2014-12-01 11:18:43", None, "viewpoint"),
    Source("kite", PLASMA, kde("Kite"), "kuva", "IMG_4477",
           fb.IPHONE, "2015-05-09 14:26:58", "senaatintori", "video"),
    Source("onestandsout", PLASMA, kde("OneStandsOut"), "kasvatus", "sammal",
           fb.NIKON, "2015-04-04 10:02:31", None),
    Source("path", PLASMA, kde("Path"), "hel-fi", "metsäpolku",
           fb.SONY, "2015-09-19 16:47:12", "pasila"),
]  # fmt: skip

EXTRA_NAMES = {
    "pad_border": ("{stem}_kehys.jpg", "{stem}_reunus.jpg"),
    "letterbox": ("{stem}_16x9.jpg", "{stem}_mustat_reunat.jpg"),
}
NAMES: dict[str, tuple[str, ...]] = {**fb.NAMES, **EXTRA_NAMES}
# A few copies of different shots: duplicates of that shot, not of the original beside it.
COPIES_OF_SHOTS = [
    ("bridge_burst", "reencode_q85"),
    ("fig_right", "byte_copy"),
    ("wine_view", "resize_50"),
    ("aitzgorri_f2", "webp"),
]


# ---------------------------------------------------------------------------------------------
# Different shots


def rng_for(key: str) -> random.Random:
    return fb.rng_for(f"large:{key}")  # type: ignore[no-any-return]


def move_region(
    base: np.ndarray,
    source: np.ndarray,
    centre: tuple[int, int],
    radii: tuple[int, int],
    shift: tuple[int, int],
) -> np.ndarray:
    """``base`` with the elliptical region of ``source`` around ``centre`` pasted moved by
    ``shift`` pixels, feathered into ``base``: a foreground element that moved."""
    h, w = base.shape[:2]
    (cx, cy), (rx, ry), (dx, dy) = centre, radii, shift
    feather = max(2.0, 0.15 * min(rx, ry))
    pad = int(3 * feather) + 2
    x0, x1 = max(0, cx + dx - rx - pad), min(w, cx + dx + rx + pad)
    y0, y1 = max(0, cy + dy - ry - pad), min(h, cy + dy + ry + pad)
    if x0 - dx < 0 or x1 - dx > w or y0 - dy < 0 or y1 - dy > h:
        raise ValueError("moved region leaves the frame")
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.ellipse(mask, (cx + dx - x0, cy + dy - y0), (rx, ry), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), feather)[..., None]
    patch = source[y0 - dy : y1 - dy, x0 - dx : x1 - dx].astype(np.float32)
    out = base.copy()
    window = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(np.rint(window * (1 - mask) + patch * mask), 0, 255)
    return out


def foreground(w: int, h: int, rng: random.Random) -> tuple[tuple[int, int], tuple[int, int]]:
    """Centre and radii of a foreground element somewhere in the middle of the frame."""
    side = min(w, h)
    centre = (round(rng.uniform(0.35, 0.65) * w), round(rng.uniform(0.35, 0.65) * h))
    radii = (round(rng.uniform(0.08, 0.14) * side), round(rng.uniform(0.08, 0.14) * side))
    return centre, radii


def burst(image: Image.Image, key: str) -> Image.Image:
    """fixtures/build.py's next burst frame, plus a foreground element that moved a little."""
    rng = rng_for(f"burst:{key}")
    frame = np.asarray(fb.burst_frame(image, key))
    w, h = image.size
    centre, radii = foreground(w, h, rng)
    step = rng.uniform(0.005, 0.012) * max(w, h)
    shift = (round(rng.choice((-1, 1)) * step), round(rng.uniform(-0.3, 0.3) * step))
    return Image.fromarray(move_region(frame, np.asarray(image), centre, radii, shift))


def stereo_pair(image: Image.Image, key: str) -> tuple[Image.Image, Image.Image]:
    """Left and right views: the background shifts less than a foreground element."""
    rng = rng_for(f"stereo:{key}")
    w, h = image.size
    back = round(rng.uniform(0.004, 0.008) * w)
    front = round(rng.uniform(0.015, 0.025) * w)
    margin = back + 2
    pixels = np.asarray(image)
    left = pixels[:, margin : w - margin]
    right_bg = pixels[:, margin + back : w - margin + back]
    lw = w - 2 * margin
    centre, radii = foreground(lw, h, rng)
    right = move_region(right_bg, left, centre, radii, (-(front - back), 0))
    noisy = fb.add_noise(right, 1.5, f"large-stereo:{key}", gain=rng.uniform(0.97, 1.03))
    return Image.fromarray(left), noisy


def viewpoint(image: Image.Image, key: str) -> Image.Image:
    """Another framing from the same spot: a 62-78 % region, zoomed to the full size."""
    rng = rng_for(f"view:{key}")
    w, h = image.size
    scale = rng.uniform(0.62, 0.78)
    cw, ch = round(w * scale), round(h * scale)
    x0 = round(rng.choice((0.1, 0.9)) * (w - cw))
    y0 = round(rng.uniform(0.2, 0.8) * (h - ch))
    view = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.LANCZOS)
    return fb.add_noise(np.asarray(view), 1.5, f"large-view:{key}", gain=rng.uniform(0.95, 1.05))  # type: ignore[no-any-return]


def video_frames(image: Image.Image, key: str, count: int = 3) -> list[Image.Image]:
    """Consecutive 1920x1080 frames of a slow pan over the photo, a foreground moving."""
    rng = rng_for(f"video:{key}")
    w, h = image.size
    cw = min(w, round(h * 16 / 9)) * 0.86
    ch = cw * 9 / 16
    pan = rng.choice((-1, 1)) * rng.uniform(0.004, 0.008) * w
    x_start = (w - cw) / 2 - pan * (count - 1) / 2
    y_top = (h - ch) / 2
    pixels = np.asarray(image)
    centre, radii = foreground(w, h, rng)
    step = rng.uniform(0.006, 0.012) * w
    frames = []
    for k in range(count):
        moved = move_region(pixels, pixels, centre, radii, (round(k * step), 0)) if k else pixels
        x0 = x_start + k * pan
        box = (round(x0), round(y_top), round(x0 + cw), round(y_top + ch))
        frame = Image.fromarray(moved).crop(box).resize((1920, 1080), Image.Resampling.LANCZOS)
        frames.append(fb.add_noise(np.asarray(frame), 2.0, f"large-video:{key}:{k}"))
    return frames


# ---------------------------------------------------------------------------------------------
# Copies


def padded(image: Image.Image, variant: str, rng: random.Random) -> Image.Image:
    """A frame on every side (pad_border) or bars on two opposite sides (letterbox)."""
    w, h = image.size
    if variant == "pad_border":
        border = round(rng.uniform(0.03, 0.10) * min(w, h))
        colour = rng.choice(((255, 255, 255), (0, 0, 0), (236, 234, 228)))
        return ImageOps.expand(image, border, colour)
    if rng.random() < 0.5:  # letterbox: bars above and below
        bar = round(rng.uniform(0.05, 0.10) * h)
        return ImageOps.expand(image, (0, bar, 0, bar), (0, 0, 0))
    bar = round(rng.uniform(0.05, 0.10) * w)  # pillarbox: bars left and right
    return ImageOps.expand(image, (bar, 0, bar, 0), (0, 0, 0))


def make_copy(original: Original, variant: str, nth: int, rng: random.Random) -> bytes:
    if variant in EXTRA_NAMES:
        exif = fb.copy_exif(original.shot, rng, edited=True)
        return fb.jpeg(padded(original.image, variant, rng), 90, exif)  # type: ignore[no-any-return]
    return fb.make_copy(original, variant, nth, rng)  # type: ignore[no-any-return]


Labels = dict[str, dict[str, str]]


class Writer:
    def __init__(self) -> None:
        self.labels: Labels = {}
        self.originals: dict[str, Original] = {}
        self.kinds: dict[str, str] = {}  # scene -> kind of its different shots

    def write(self, unit: str, name: str, data: bytes, shot: Shot, variant: str) -> None:
        relative = f"{unit}/{name}"
        if relative in self.labels:
            raise RuntimeError(f"two files want the path {relative}")
        (PHOTOS / unit).mkdir(parents=True, exist_ok=True)
        (PHOTOS / relative).write_bytes(data)
        self.labels[relative] = {
            "photo": shot.photo,
            "scene": shot.scene_id,
            "variant": variant,
            "source": shot.source,
        }

    def shoot(self, shot: Shot, pixels: Image.Image, *, exif: bool = True) -> None:
        data = fb.jpeg(pixels, 92, fb.make_exif(shot.capture) if exif else None)
        self.write(shot.unit, f"{shot.stem}.jpg", data, shot, shot.variant)
        self.originals[shot.photo] = Original(shot, data, fb.decode(data))

    def copy(self, photo: str, variant: str, nth: int) -> None:
        original = self.originals[photo]
        rng = rng_for(f"{variant}:{photo}")
        shot = original.shot
        unit = shot.unit if rng.random() < 0.35 else rng.choice(fb.UNITS)
        name = rng.choice(NAMES[variant]).format(stem=shot.stem)
        self.write(unit, name, make_copy(original, variant, nth, rng), shot, variant)

    def finish(self) -> Labels:
        for label in self.labels.values():
            if label["scene"] in self.kinds:
                label["scene_kind"] = self.kinds[label["scene"]]
        return self.labels


def load(source: Source) -> Image.Image:
    with Image.open(source.path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    if image.width * image.height < MIN_PIXELS:
        sys.exit(f"{source.path}: {image.width}x{image.height} is under 2 MP")
    return image


def label_source(source: Source) -> str:
    return f"debian:{source.package}:{source.path}"


def shot_of(
    source: Source, photo: str, stem: str, capture: Capture, variant: str, unit: str = ""
) -> Shot:
    """A photograph of ``source``'s scene."""
    return Shot(
        photo, label_source(source), unit or source.unit, stem, capture, source.photo, variant
    )


def later(capture: Capture, delay: timedelta, subsec: str, camera: Camera | None = None) -> Capture:
    return Capture(camera or capture.camera, capture.taken + delay, subsec, capture.gps)


def build() -> Labels:
    shutil.rmtree(PHOTOS, ignore_errors=True)
    writer = Writer()
    with_copies: list[str] = []
    for source in SOURCES:
        image = load(source)
        rng = rng_for(f"capture:{source.photo}")
        gps = fb.PLACES[source.place] if source.place else None
        capture = Capture(source.camera, fb.at(source.taken), f"{rng.randrange(1000):03d}", gps)

        shot = partial(shot_of, source)
        first = shot(source.photo, source.stem, capture, "original")
        if source.kind:
            writer.kinds[source.photo] = source.kind
        if source.kind == "video":  # frame grabs: no original still, no EXIF
            for k, frame in enumerate(video_frames(image, source.photo), start=1):
                variant = "original" if k == 1 else "different_shot"
                photo = source.photo if k == 1 else f"{source.photo}_f{k}"
                grab = shot(photo, f"{source.stem}_frame{k:04d}", capture, variant)
                writer.shoot(grab, frame, exif=False)
            continue
        if source.kind == "stereo":
            left, right = stereo_pair(image, source.photo)
            writer.shoot(first, left)
            body = SECOND_BODY[source.camera.serial]
            units = [u for u in fb.UNITS if u != source.unit]
            twin = later(capture, timedelta(), capture.subsec, body)
            unit = rng.choice(units)
            writer.shoot(
                shot(f"{source.photo}_right", f"{source.stem}_R", twin, "different_shot", unit),
                right,
            )
        else:
            writer.shoot(first, image)
        with_copies.append(source.photo)
        if source.kind == "burst":
            subsec = f"{(int(capture.subsec) + rng.randint(80, 300)) % 1000:03d}"
            next_frame = later(capture, timedelta(), subsec)
            frame = burst(image, source.photo)
            writer.shoot(
                shot(f"{source.photo}_burst", f"{source.stem}_2", next_frame, "different_shot"),
                frame,
            )
        if source.kind == "viewpoint":
            delay = timedelta(seconds=rng.randint(8, 400))
            view = later(capture, delay, f"{rng.randrange(1000):03d}")
            other = viewpoint(image, source.photo)
            writer.shoot(
                shot(f"{source.photo}_view", f"{source.stem}_b", view, "different_shot"), other
            )
    plan = assign_variants(with_copies)
    for variant, photos in plan.items():
        for nth, photo in enumerate(photos):
            writer.copy(photo, variant, nth)
    for photo, variant in COPIES_OF_SHOTS:
        writer.copy(photo, variant, 0)
    return writer.finish()


def assign_variants(photos: list[str]) -> dict[str, list[str]]:
    """For each kind of copy, the photos that get one, spreading the load evenly."""
    rng = rng_for("assign")
    load_: Counter[str] = Counter()
    plan: dict[str, list[str]] = {}
    for variant in NAMES:
        order = photos.copy()
        rng.shuffle(order)
        order.sort(key=load_.__getitem__)
        plan[variant] = order[:COPIES_PER_VARIANT]
        load_.update(plan[variant])
    return plan


# ---------------------------------------------------------------------------------------------
# Licences, read from the packages


def package_version(package: str) -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def dep5_entry(package: str, name: str) -> tuple[str, str]:
    """(Copyright, License) of the debian/copyright paragraph whose Files names ``name``."""
    text = Path(f"/usr/share/doc/{package}/copyright").read_text(encoding="utf-8")
    for paragraph in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^(Files|Copyright|License):[ \t]*(.*)$", paragraph, re.M))
        if "Files" in fields and any(f.endswith("/" + name) or f == name
                                     for f in fields["Files"].split()):  # fmt: skip
            return fields.get("Copyright", "").strip(), fields.get("License", "").strip()
    return "", ""


def licence_of(source: Source) -> tuple[str, str]:
    """(origin, licence) of one source photo, as the package states them."""
    if source.package == PLASMA:
        folder = Path(source.path).parents[2]
        plugin = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))["KPlugin"]
        authors = ", ".join(
            f"{a['Name']}" + (f" <{a['Email']}>" if a.get("Email") else "")
            for a in plugin.get("Authors", [])
        )
        copyright_, licence = dep5_entry(source.package, "*")
        return (
            f'KDE wallpaper "{plugin.get("Name", folder.name)}" by {authors} '
            f"(metadata.json of {folder.name}).",
            f"metadata.json says {plugin.get('License', '?')}; the package's debian/copyright "
            f"says {licence or '?'} ({copyright_ or 'KDE Visual Design Group'}) for all files.",
        )
    copyright_, licence = dep5_entry(source.package, Path(source.path).name)
    return f"{Path(source.path).name}, © {copyright_}.", licence or "?"


def write_licenses(labels: Labels) -> None:
    photos: dict[str, set[str]] = {}
    for label in labels.values():
        photos.setdefault(label["source"], set()).add(label["photo"])
    lines = [
        "# Licences of the large set's source photos",
        "",
        "Written by `bench/largeset.py` from the Debian packages that ship each photo",
        "(`/usr/share/doc/<package>/copyright`, and KDE's `metadata.json` for",
        "plasma-workspace-wallpapers). Every file under `photos/` is a modified version:",
        f"reduced to at most {MAX_SIDE} px on the long side, re-encoded, resized, cropped,",
        "padded, watermarked, brightness-adjusted, locally shifted (bursts, stereo, video",
        "frames), noise-added and given invented EXIF. The EXIF capture facts are fictional.",
        "",
    ]
    for source in SOURCES:
        key = label_source(source)
        origin, licence = licence_of(source)
        lines += [
            f"## `{source.photo}`: {source.path}",
            "",
            f"- Package: {source.package} {package_version(source.package)} (Debian)",
            f"- Origin: {origin}",
            f"- Licence: {licence}",
            f"- Photos in the set: {', '.join(f'`{p}`' for p in sorted(photos.get(key, ())))}",
            "",
        ]
    (OUT / "LICENSES.md").write_text("\n".join(lines), encoding="utf-8")


def fingerprint() -> str:
    """What the set is built from: this script, fixtures/build.py, the packages' versions."""
    digest = hashlib.sha256()
    for path in (Path(__file__), ROOT / "fixtures" / "build.py"):
        digest.update(path.read_bytes())
    for package in sorted({s.package for s in SOURCES}):
        digest.update(f"{package}={package_version(package)}".encode())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args()
    missing = sorted({s.package for s in SOURCES if not Path(s.path).is_file()})
    if missing:
        sys.exit(f"missing Debian packages: {' '.join(missing)} (run bench/install.sh)")
    built_from = fingerprint()
    if (
        not args.force
        and LABELS.is_file()
        and json.loads(LABELS.read_text()).get("built_from") == built_from
    ):
        print(f"large set up to date in {OUT}")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    labels = build()
    fb.write_json(LABELS, {"version": 1, "built_from": built_from, "files": labels})
    write_licenses(labels)
    counts = Counter(label["variant"] for label in labels.values())
    size = sum(p.stat().st_size for p in PHOTOS.rglob("*") if p.is_file())
    print(f"{len(labels)} files from {len(SOURCES)} photos, {size / 1e6:.0f} MB, in {PHOTOS}")
    for variant, count in sorted(counts.items()):
        print(f"  {variant:15} {count}")


if __name__ == "__main__":
    main()
