"""Fingerprint throughput on 24-megapixel JPEGs: damdup beside its peers, one run.

    .venv/bin/python bench/hashing.py [--repeat 3] [--workers 2] [--profile]
                                      [--max-other 0.1] [--retries 3]

Rows, all over the same folder of camera-like JPEGs (6000x4000, quality 90):
  damdup       damdup's scan job (connector.engine.ingest.fingerprint_job) through its
               own WorkerPool: a folder scan hands each worker the path of a file no
               indexed content has the size of, and the worker reads it; also with
               the bytes piped from the parent (as for remote assets), and
               fingerprint_bytes in one process for reference.
  imagededup   PHash().encode_images(image_dir) with num_enc_workers=2 (its default is
               cpu_count()), and PHash().encode_image per file over a 2-process Pool with
               chunksize 1: encode_images hands files out in chunks of 100, so on a
               folder of fewer than 200 files one worker does everything.
  imagehash    imagehash.phash(Image.open(path)) in one process and over 2 processes.
  floor        the bare reduced decode damdup starts from: Image.open, draft('RGB',
               (w//8, h//8)), load() - the 1/8 scale that damdup's own draft request
               (long side >= 384) picks for 6000x4000 - over the same 2 processes.

The images are upscaled real photographs, 24 different ones: eleven that ship inside
the scikit-image and scikit-learn wheels and thirteen of Debian's wallpaper photos
(bench/install.sh installs them), with added luminance and chroma grain so that they compress
like camera files (6-10 MB each); most carry camera EXIF, some an Orientation tag
(portrait frames stored sideways, as cameras do). They are cached in
bench/results/hashing_images/ (git-ignored) and remade when the recipe changes.

Every method is warmed up once, then all are timed over the whole set in turn, for
`--repeat` rounds; the median counts. The machine may be shared: a run during which
processes outside this one's tree used more than `--max-other` cores (from /proc/stat
less this tree's own CPU) is redone, up to `--retries` times, and the most any kept run
saw is printed per row; before a redo it waits (up to 2 min, 15 in all) for
the others to go quiet. Results go to bench/results/hashing.json. Targets: damdup >= 4x
imagededup, and damdup within 1.3x of the floor; when the floor target is missed the
script times damdup's stages one by one (or always, with --profile).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pickle
import platform
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import Pool, cpu_count
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
IMAGES = RESULTS / "hashing_images"
# Beside the folder, not in it: imagededup encodes every file in the folder.
MANIFEST = RESULTS / "hashing_images.json"
BURSTS = RESULTS / "burst_images"
SCANS = RESULTS / "scan_folders"

WIDTH, HEIGHT = 6000, 4000
QUALITY = 90
MAX_PIXELS = 150_000_000
MAX_BYTES = 512 * 1024 * 1024
# Bump when the images below would come out different.
IMAGE_RECIPE = 2
SEED = 20241126

# Real photographs, each a different one (a folder of distinct photos must hold no
# copies): eleven bundled in the scikit-image and scikit-learn wheels and thirteen
# of Debian's wallpaper photographs, the large set's own sources (bench/largeset.py,
# installed by bench/install.sh). (package, file); a wallpaper's file is its path.
SOURCES = [
    ("skimage", "astronaut.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "retina.jpg"),
    ("skimage", "ihc.png"),
    ("skimage", "camera.png"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    *(
        ("wallpaper", f"/usr/share/backgrounds/{name}.jpg")
        for name in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Wine_by_Jakkub_Mede",
            "aitzgorri_by_Aitzol_Berasategi", "friends_by_Aitzol_Berasategi",
            "greentock_by_Peter_Nerlich", "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
            "Kleiber_by_Lukas_Baubkus",
        )
    ),
    *(
        ("wallpaper", f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg")
        for name in ("BytheWater", "ColorfulCups", "Kite")
    ),
]  # fmt: skip
# Per frame: (crop zoom, horizontal shift, vertical shift, EXIF Orientation or None
# for no EXIF at all). Orientation 6/8 frames hold a portrait crop stored sideways.
FRAMES = [
    (1.00, 0.0, 0.0, 1),
    (0.80, 0.3, -0.2, 6),
    (0.90, -0.2, 0.1, None),
    (0.75, 0.2, 0.3, 8),
    (0.85, -0.3, -0.1, 3),
    (0.95, 0.1, 0.2, 1),
]
GRAIN_LUMA = 6.0  # grey-level standard deviation of the shared (luminance) grain
GRAIN_CHROMA = 2.5  # and of the independent per-channel grain

TARGET_VS_IMAGEDEDUP = 4.0
TARGET_VS_FLOOR = 1.3


# -- the image set --------------------------------------------------------------


def _source_path(package: str, name: str) -> Path:
    if package == "wallpaper":
        if not Path(name).exists():
            raise SystemExit(f"{name} is missing: run bench/install.sh (make bench does)")
        return Path(name)
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / name


def _crop(image: Any, aspect: float, zoom: float, dx: float, dy: float) -> Any:
    """The largest `aspect` (w/h) box, scaled by `zoom`, shifted by dx/dy of the slack."""
    width, height = image.size
    box_w = min(width, height * aspect) * zoom
    box_h = box_w / aspect
    left = (width - box_w) / 2 * (1 + dx)
    top = (height - box_h) / 2 * (1 + dy)
    return image.crop((round(left), round(top), round(left + box_w), round(top + box_h)))


def _make_image(task: tuple[int, str, str, int]) -> tuple[str, int]:
    from PIL import Image

    index, package, name, frame = task
    zoom, dx, dy, orientation = FRAMES[frame]
    portrait = orientation in (6, 8)
    photo = Image.open(_source_path(package, name)).convert("RGB")
    photo = _crop(photo, 2 / 3 if portrait else 3 / 2, zoom, dx, dy)
    shown = (HEIGHT, WIDTH) if portrait else (WIDTH, HEIGHT)
    big = photo.resize(shown, Image.Resampling.BICUBIC)
    # Stored pixels are what the camera wrote; the viewer applies the Orientation.
    if orientation == 6:
        big = big.transpose(Image.Transpose.ROTATE_90)
    elif orientation == 8:
        big = big.transpose(Image.Transpose.ROTATE_270)
    elif orientation == 3:
        big = big.transpose(Image.Transpose.ROTATE_180)
    rng = np.random.default_rng([SEED, index])
    pixels = np.asarray(big, dtype=np.float32)
    grain = rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32) * GRAIN_LUMA
    grain = grain + rng.standard_normal((HEIGHT, WIDTH, 3), dtype=np.float32) * GRAIN_CHROMA
    pixels += grain
    pixels += 0.5
    np.clip(pixels, 0, 255, out=pixels)
    out = Image.fromarray(pixels.astype(np.uint8), "RGB")
    del pixels, grain
    exif = Image.Exif()
    if orientation is not None:
        exif[0x010F] = "BenchCam"  # Make
        exif[0x0110] = f"BC-{index % 3 + 1}"  # Model
        exif[0x0131] = "damdup bench/hashing.py"  # Software
        exif[0x0112] = orientation
        detail = exif.get_ifd(0x8769)
        detail[0x9003] = f"2024:06:{1 + index % 28:02d} 10:{index % 60:02d}:00"  # DateTimeOriginal
        detail[0x9291] = f"{index * 7 % 100:02d}"  # SubSecTimeOriginal
        detail[0xA431] = f"SN{1000 + index % 3}"  # BodySerialNumber
        if index % 2:
            gps = exif.get_ifd(0x8825)
            gps[1], gps[3] = "N", "E"
            gps[2] = (52.0, 31.0, float(index))
            gps[4] = (13.0, 24.0, float(index))
    path = IMAGES / f"{index:02d}_{Path(name).stem}_{frame}.jpg"
    out.save(path, "JPEG", quality=QUALITY, exif=exif.tobytes() if len(exif) else b"")
    return path.name, path.stat().st_size


def _plan(count: int) -> list[tuple[int, str, str, int]]:
    return [
        (index, *SOURCES[index % len(SOURCES)], (index // len(SOURCES) + index) % len(FRAMES))
        for index in range(count)
    ]


def ensure_images(count: int, workers: int) -> list[Path]:
    manifest_path = MANIFEST
    (IMAGES / "manifest.json").unlink(missing_ok=True)  # where recipe 1 kept it
    recipe = {
        "recipe": IMAGE_RECIPE,
        "count": count,
        "size": [WIDTH, HEIGHT],
        "quality": QUALITY,
        "sources": SOURCES,
        "frames": FRAMES,
        "grain": [GRAIN_LUMA, GRAIN_CHROMA],
        "seed": SEED,
    }
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        paths = [IMAGES / name for name in manifest.get("files", [])]
        if manifest.get("recipe") == json.loads(json.dumps(recipe)) and all(
            p.exists() for p in paths
        ):
            return paths
    IMAGES.mkdir(parents=True, exist_ok=True)
    for old in IMAGES.glob("*.jpg"):
        old.unlink()
    print(f"making {count} JPEGs of {WIDTH}x{HEIGHT} in {IMAGES} ...", flush=True)
    started = time.perf_counter()
    with Pool(workers) as pool:
        made = pool.map(_make_image, _plan(count), chunksize=1)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    manifest_path.write_text(json.dumps({"recipe": recipe, "files": [n for n, _ in made]}))
    return [IMAGES / name for name, _ in made]


# Burst-like folder: each of these photos (by index in the set above) is followed
# by BURST_FRAMES - 1 further frames of a hand-held burst.
BURST_SOURCES = [0, 1, 2, 3, 4, 5]
BURST_FRAMES = 4
BURST_RECIPE = 2
# Camera shake between frames, as a share of the long side (6-24 px at 6000 px),
# a region that moves (a walking subject) and new sensor grain.
BURST_SHAKE = (0.001, 0.004)
BURST_GRAIN = 4.0


def _make_burst_frame(task: tuple[str, int, str]) -> str:
    from PIL import Image

    source, frame, out = task
    with Image.open(IMAGES / source) as image:
        exif = image.getexif()
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    rng = np.random.default_rng([SEED, frame, len(source)])
    height, width = pixels.shape[:2]
    shake = [
        int(rng.choice((-1, 1)) * rng.uniform(*BURST_SHAKE) * max(width, height)) for _ in range(2)
    ]
    pixels = np.roll(pixels, shake, axis=(0, 1))
    top, left = int(rng.uniform(0.3, 0.6) * height), int(rng.uniform(0.3, 0.6) * width)
    box = (slice(top, top + height // 5), slice(left, left + width // 5))
    pixels[box] = np.roll(pixels[box], int(rng.uniform(0.004, 0.008) * width), axis=1)
    pixels += rng.standard_normal((height, width, 1), dtype=np.float32) * BURST_GRAIN
    pixels += 0.5
    np.clip(pixels, 0, 255, out=pixels)
    detail = exif.get_ifd(0x8769)
    if detail:
        detail[0x9291] = f"{frame * 10 + 1:02d}"  # SubSecTimeOriginal: the next frame
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(
        BURSTS / out, "JPEG", quality=QUALITY, exif=exif.tobytes() if len(exif) else b""
    )
    return out


def ensure_bursts(paths: list[Path], workers: int) -> list[list[Path]]:
    """A burst of BURST_FRAMES files for each of BURST_SOURCES: the photo of the
    set above, then frames made from it. Kept in bench/results/burst_images/."""
    paths = [paths[i] for i in BURST_SOURCES]
    groups = len(paths)
    recipe = {
        "recipe": BURST_RECIPE,
        "groups": groups,
        "frames": BURST_FRAMES,
        "shake": BURST_SHAKE,
        "grain": BURST_GRAIN,
        "sources": [p.name for p in paths],
    }
    plan = [
        [paths[g].name] + [f"{paths[g].stem}_burst{f}.jpg" for f in range(1, BURST_FRAMES)]
        for g in range(groups)
    ]
    manifest = BURSTS / "manifest.json"
    if not (
        manifest.exists()
        and json.loads(manifest.read_text()) == json.loads(json.dumps(recipe))
        and all((BURSTS / name).exists() for group in plan for name in group)
    ):
        BURSTS.mkdir(parents=True, exist_ok=True)
        for old in BURSTS.glob("*.jpg"):
            old.unlink()
        print(f"making {groups} bursts of {BURST_FRAMES} frames in {BURSTS} ...", flush=True)
        tasks = [(group[0], f, group[f]) for group in plan for f in range(1, BURST_FRAMES)]
        with Pool(workers) as pool:
            pool.map(_make_burst_frame, tasks, chunksize=1)
        for group in plan:
            os.link(IMAGES / group[0], BURSTS / group[0])
        manifest.write_text(json.dumps(recipe))
    return [[BURSTS / name for name in group] for group in plan]


def _scan_folder(name: str, files: list[Path]) -> Path:
    """A folder of hard links to `files` (a scan does not follow links out of it)."""
    folder = SCANS / name
    if folder.exists() and sorted(p.name for p in folder.iterdir()) == sorted(
        f.name for f in files
    ):
        return folder
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        os.link(path, folder / path.name)
    return folder


def _damdup_command() -> list[str]:
    """`damdup` as a user runs it: the console script beside this Python, else -m."""
    script = Path(sys.executable).parent / "damdup"
    return [str(script)] if script.exists() else [sys.executable, "-m", "connector.cli"]


# Runs a command as a child subreaper (prctl PR_SET_CHILD_SUBREAPER): every
# descendant that outlives its parent (the forkserver, its workers) is re-parented
# here and reaped, so RUSAGE_CHILDREN holds the CPU of the whole process tree.
_TREE_CPU = r"""
import ctypes, json, os, resource, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=False)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-2000:],
                  "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def _whole_scan(folder: Path, workers: int, stats: dict[str, Any]) -> int:
    """One whole `damdup scan` of `folder` into a new index, a process of its own;
    its process tree's CPU seconds are added to stats["cpu_s"]."""
    import subprocess
    import tempfile

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with tempfile.TemporaryDirectory(prefix="damdup-bench-") as tmp:
        done = subprocess.run(
            [sys.executable, "-c", _TREE_CPU, *_damdup_command(), "scan", str(folder),
             "--db", f"{tmp}/index.sqlite", "-q", "--format", "json", "--workers", str(workers)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    tree = json.loads(done.stdout)
    if tree["rc"] != 0:
        raise RuntimeError(f"damdup scan {folder} failed: {tree['stderr']}")
    summary = json.loads(tree["stdout"])
    stats.update(candidates=summary["candidates"], pairs_checked=summary["pairs_checked"])
    stats.setdefault("cpu_s", []).append(tree["cpu_s"])
    return int(summary["fingerprinted"])


# -- the methods (module level: the worker processes import them) ----------------


def _noop_job(data: bytes | str, max_pixels: int, max_bytes: int) -> int:
    """A job that only receives the bytes: damdup's pool and pipe cost on its own."""
    return len(data)


def _floor_decode(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        image.draft("RGB", (width // 8, height // 8))
        image.load()
        return image.size


def _floor_cpu_ms(paths: list[Path], repeat: int) -> float:
    """The floor's CPU time per file in this process (time.process_time: what
    other processes do on the machine does not count), median of `repeat`."""
    rounds = []
    for _ in range(max(1, repeat)):
        started = time.process_time()
        for path in paths:
            _floor_decode(str(path))
        rounds.append((time.process_time() - started) / len(paths))
    return 1000 * statistics.median(rounds)


def _imagehash_phash(path: str) -> str:
    import imagehash
    from PIL import Image

    with Image.open(path) as image:
        return str(imagehash.phash(image))


_PHASHER: Any = None


def _imagededup_encode(path: str) -> str:
    global _PHASHER
    if _PHASHER is None:
        from imagededup.methods import PHash

        _PHASHER = PHash(verbose=False)
    return str(_PHASHER.encode_image(image_file=path))


def _hwm_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of one process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _damdup_workers() -> list[Any]:
    """damdup's pool workers: the children of the forkserver that this process started."""
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "forkserver" in " ".join(child.cmdline()):
                return list(child.children())
    return []


def _damdup_cpu() -> tuple[float, float]:
    """CPU seconds so far of this (parent) process and of damdup's live workers."""
    import psutil

    parent = psutil.Process().cpu_times()
    workers = 0.0
    for worker in _damdup_workers():
        with contextlib.suppress(psutil.Error):
            times = worker.cpu_times()
            workers += times.user + times.system
    return parent.user + parent.system, workers


def _busy_ticks() -> int:
    """CPU ticks the whole machine spent busy so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def _own_cpu() -> tuple[float, dict[int, float]]:
    """CPU seconds of this process and its reaped children, and of each live descendant."""
    import psutil

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    mine = sum(u.ru_utime + u.ru_stime for u in usage)
    live: dict[int, float] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            live[child.pid] = times.user + times.system
    return mine, live


class _Clock:
    """Times one run, and how much CPU processes outside this tree used meanwhile
    (the machine may be shared with other sessions)."""

    def __enter__(self) -> _Clock:
        self._ticks = _busy_ticks()
        self._own = _own_cpu()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        ticks = _busy_ticks() - self._ticks
        own_after = _own_cpu()
        # A child reaped meanwhile moves from the live sum into RUSAGE_CHILDREN.
        own = own_after[0] - self._own[0] + sum(own_after[1].values()) - sum(self._own[1].values())
        other = ticks / os.sysconf("SC_CLK_TCK") - own
        self.other_cores = max(0.0, other / self.seconds) if self.seconds > 0 else 0.0


def _wait_for_quiet(max_other: float, limit: float) -> float:
    """Sleep until other processes use at most `max_other` cores over a second (this
    tree idles meanwhile), or `limit` seconds pass; return the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        with _Clock() as clock:
            time.sleep(1.0)
        if clock.other_cores <= max_other:
            break
    return time.perf_counter() - started


@dataclass
class _Method:
    key: str
    label: str
    processes: int
    run: Callable[[], int]
    seconds: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)
    retried: int = 0
    more: dict[str, Any] = field(default_factory=dict)
    expect: int | None = None  # results a run gives; None: every file of the set


def measure(
    paths: list[Path],
    workers: int,
    repeat: int,
    max_other: float,
    retries: int,
    scans: dict[str, list[Path]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from connector.core.fingerprint import fingerprint_bytes
    from connector.engine.ingest import fingerprint_job
    from connector.engine.pool import WorkerPool

    names = [str(p) for p in paths]
    count = len(paths)
    extra: dict[str, Any] = {}
    methods: list[_Method] = []

    def damdup_run(pool: WorkerPool, function: Callable[..., Any], by_path: bool = False) -> int:
        def jobs() -> Iterator[tuple[str, tuple[Any, int, int]]]:
            # A folder scan hands a worker the path of a file whose size no indexed
            # content has (it cannot be a byte copy); other adapters send bytes.
            for path in paths:
                source = str(path) if by_path else path.read_bytes()
                yield path.name, (source, MAX_PIXELS, MAX_BYTES)

        ok = 0
        for outcome in pool.map(function, jobs(), describe_error=str):
            if outcome.error is not None:
                raise RuntimeError(f"damdup failed on {outcome.key}: {outcome.error}")
            ok += 1
        return ok

    with contextlib.ExitStack() as stack:
        # Pools start before anything imports torch (imagededup), so their workers stay lean.
        pool = stack.enter_context(Pool(workers))
        started = time.perf_counter()
        dpool = stack.enter_context(WorkerPool(workers))
        damdup_run(dpool, _noop_job)
        extra["damdup_pool_start_s"] = time.perf_counter() - started

        methods += [
            _Method(
                "floor",
                f"floor: draft 1/8 decode, {workers} procs",
                workers,
                lambda: len(pool.map(_floor_decode, names, chunksize=1)),
            ),
            _Method(
                "floor_1",
                "floor: draft 1/8 decode, 1 proc",
                1,
                lambda: sum(1 for n in names if _floor_decode(n)),
            ),
            _Method(
                "damdup",
                f"damdup folder scan: workers read the files, WorkerPool({workers})",
                workers,
                lambda: damdup_run(dpool, fingerprint_job, by_path=True),
            ),
            _Method(
                "damdup_bytes",
                f"  (damdup, bytes piped to the workers as for remote assets, {workers} procs)",
                workers,
                lambda: damdup_run(dpool, fingerprint_job),
            ),
            _Method(
                "damdup_pipe",
                f"  (damdup pool + pipe only: no-op job, {workers} procs)",
                workers,
                lambda: damdup_run(dpool, _noop_job),
            ),
            _Method(
                "damdup_1",
                "damdup fingerprint_bytes, 1 proc",
                1,
                lambda: sum(1 for p in paths if fingerprint_bytes(p.read_bytes(), MAX_PIXELS)),
            ),
            _Method(
                "imagehash",
                f"imagehash.phash(Image.open(f)), {workers} procs",
                workers,
                lambda: len(pool.map(_imagehash_phash, names, chunksize=1)),
            ),
            _Method(
                "imagehash_1",
                "imagehash.phash(Image.open(f)), 1 proc",
                1,
                lambda: sum(1 for n in names if _imagehash_phash(n)),
            ),
        ]
        for key, files in scans.items():
            folder = _scan_folder(key, files)
            method = _Method(
                key,
                f"whole `damdup scan` of {folder.name}/ ({len(files)} files)",
                workers,
                lambda: 0,
                expect=len(files),
            )
            method.run = lambda folder=folder, more=method.more: _whole_scan(folder, workers, more)
            methods.append(method)
        # damdup's warm-up, then the parent's peak before torch can inflate it.
        damdup_run(dpool, fingerprint_job, by_path=True)
        extra["damdup_parent_peak_rss_mb"] = _hwm_mb(os.getpid())

        from peers import imagededup_available

        why_not = imagededup_available()
        if why_not is not None:
            print(f"imagededup skipped: {why_not}", flush=True)
            extra["imagededup_skipped"] = why_not
        else:
            import imagededup
            from imagededup.methods import PHash

            extra["imagededup_version"] = imagededup.__version__
            extra["imagededup_default_num_enc_workers"] = cpu_count()
            for name in list(logging.root.manager.loggerDict):  # its modules log INFO
                if name.startswith("imagededup"):
                    logging.getLogger(name).setLevel(logging.WARNING)
            phasher = PHash(verbose=False)
            folder = str(paths[0].parent)
            for enc in [workers] if cpu_count() == workers else [workers, cpu_count()]:
                default = " (its default)" if enc == cpu_count() else ""
                methods.append(
                    _Method(
                        f"imagededup_w{enc}",
                        f"imagededup PHash.encode_images, num_enc_workers={enc}{default}",
                        enc,
                        lambda enc=enc: len(phasher.encode_images(folder, num_enc_workers=enc)),
                    )
                )
            idd_pool = stack.enter_context(Pool(workers))
            methods.append(
                _Method(
                    "imagededup_files",
                    f"imagededup PHash.encode_image per file, {workers} procs",
                    workers,
                    lambda: len(idd_pool.map(_imagededup_encode, names, chunksize=1)),
                )
            )

        print(
            f"timing {count} files: a warm-up, then {repeat} rounds of every method in turn; "
            f"a run during which other processes used > {max_other} cores is redone "
            f"(up to {retries} times)",
            flush=True,
        )
        for method in methods:
            if method.run() != (method.expect or count):
                raise RuntimeError(f"{method.key}: warm-up did not give {count} results")
        damdup_cpu = [0.0, 0.0]
        waited, budget = 0.0, 900.0  # seconds spent waiting for others to finish, at most
        for round_ in range(repeat):
            for method in methods:
                for attempt in range(retries + 1):
                    cpu = _damdup_cpu() if method.key == "damdup" else (0.0, 0.0)
                    with _Clock() as clock:
                        done = method.run()
                    if method.key == "damdup":
                        after = _damdup_cpu()
                        damdup_cpu = [
                            damdup_cpu[0] + after[0] - cpu[0],
                            damdup_cpu[1] + after[1] - cpu[1],
                        ]
                    if done != (method.expect or count):
                        raise RuntimeError(f"{method.key}: {done} results, expected {count}")
                    if clock.other_cores <= max_other or attempt == retries:
                        break
                    method.retried += 1
                    waited += _wait_for_quiet(max_other, min(120.0, max(0.0, budget - waited)))
                method.seconds.append(clock.seconds)
                method.other_cores.append(clock.other_cores)
            print(
                f"  round {round_ + 1}: "
                + ", ".join(f"{m.key} {m.seconds[-1]:.2f}s" for m in methods),
                flush=True,
            )
        extra["waited_for_quiet_s"] = waited
        damdup = next(m for m in methods if m.key == "damdup")
        runs = len(damdup.seconds) + damdup.retried
        extra["damdup_cpu_s_per_run"] = {
            "parent": damdup_cpu[0] / runs,
            "workers": damdup_cpu[1] / runs,
        }
        extra["damdup_workers_peak_rss_mb"] = [_hwm_mb(w.pid) for w in _damdup_workers()]

    rows = []
    for method in methods:
        rows.append(
            {
                "key": method.key,
                "label": method.label,
                "processes": method.processes,
                "seconds": method.seconds,
                "other_cores": method.other_cores,
                "retried_runs": method.retried,
                "files": method.expect or count,
                **method.more,
            }
        )
    return rows, extra


# -- where damdup's time goes ---------------------------------------------------


def stage_breakdown(paths: list[Path]) -> dict[str, float] | None:
    """fingerprint_bytes taken apart, in one process: ms per file for each stage.
    Uses the module's private helpers; None when they have changed."""
    import imagehash
    from PIL import ImageOps

    from connector.core import capture
    from connector.core import fingerprint as fp

    needed = ("sha256_hex", "_open", "payload_digest", "_to_rgb", "_trim_box", "_thumb_bytes")
    if not all(hasattr(fp, name) for name in needed):
        return None
    totals: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        started = time.process_time()  # CPU time: robust to a shared machine
        yield
        totals[name] = totals.get(name, 0.0) + time.process_time() - started

    for _ in range(2):  # the first pass warms up; the second is recorded
        totals.clear()
        for path in paths:
            with stage("read file (page cache)"):
                data = path.read_bytes()
            with stage("sha256 of the file"):
                fp.sha256_hex(data)
            with stage("Image.open (header)"):
                image = fp._open(data, MAX_PIXELS)
            with stage("EXIF capture facts"):
                capture.read_capture_facts(image)
            with stage("payload_digest (sha256 of the JPEG scan)"):
                fp.payload_digest(data)
            width, height = image.size
            scale = max(width, height) / fp.DECODE_SIDE
            with stage("draft decode (1/8 scale) + load"):
                image.draft("RGB", (int(width / scale * 1.01) + 1, int(height / scale * 1.01) + 1))
                image.load()
            with stage("exif_transpose + RGB"):
                oriented = fp._to_rgb(ImageOps.exif_transpose(image))
            with stage("grey + std"):
                grey = np.asarray(oriented.convert("L"))
                float(grey.std())
            with stage("imagehash.phash"):
                imagehash.phash(oriented)
            with stage("imagehash.dhash"):
                imagehash.dhash(oriented)
            with stage("trim box"):
                box = fp._trim_box(grey)
            if box is not None:
                with stage("phash + dhash of the trimmed image"):
                    inner = oriented.crop(box)
                    imagehash.phash(inner)
                    imagehash.dhash(inner)
            inner_share = getattr(fp, "INNER_SHARE", None)  # recipe 3: centre-part codes
            if inner_share is not None:
                with stage("phash + dhash of the centre crop"):
                    margin_x = round(oriented.width * (1 - inner_share) / 2)
                    margin_y = round(oriented.height * (1 - inner_share) / 2)
                    centre = oriented.crop(
                        (margin_x, margin_y, oriented.width - margin_x, oriented.height - margin_y)
                    )
                    imagehash.phash(centre)
                    imagehash.dhash(centre)
            with stage("thumbnail (LANCZOS to 384 + JPEG q90)"):
                fp._thumb_bytes(oriented)
            with stage("pickle the bytes (pipe to a worker)"):
                pickle.dumps((data, MAX_PIXELS), 5)
            result = fp.fingerprint_bytes(data, MAX_PIXELS)
            with stage("pickle the result (pipe back)"):
                pickle.dumps(result, 5)
            with stage("whole fingerprint_bytes"):
                fp.fingerprint_bytes(data, MAX_PIXELS)
            image.close()
    return {name: 1000 * seconds / len(paths) for name, seconds in totals.items()}


def cprofile_top(paths: list[Path], limit: int = 14) -> list[tuple[str, float, float]]:
    """cProfile of fingerprint_bytes over the set: (function, tottime ms/file, cumtime ms/file)."""
    from connector.core.fingerprint import fingerprint_bytes

    blobs = [p.read_bytes() for p in paths]
    for blob in blobs[:2]:
        fingerprint_bytes(blob, MAX_PIXELS)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for blob in blobs:
        fingerprint_bytes(blob, MAX_PIXELS)
    profile.disable()
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, function), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(filename).name}:{line}({function})" if line else function
        rows.append((where, 1000 * tottime / len(paths), 1000 * cumtime / len(paths)))
    rows.sort(key=lambda row: -row[1])
    return rows[:limit]


# -- report ---------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("damdup", "pillow", "imagehash", "numpy", "scipy", "imagededup", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    try:
        from PIL import features

        out["libjpeg"] = str(features.version("jpg"))
        out["libjpeg_turbo"] = str(features.check_feature("libjpeg_turbo"))
    except Exception:
        pass
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24, help="how many 24 MP JPEGs")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method")
    parser.add_argument("--workers", type=int, default=2, help="processes for parallel rows")
    parser.add_argument("--profile", action="store_true", help="always time damdup's stages")
    parser.add_argument("--out", type=Path, default=RESULTS / "hashing.json")
    parser.add_argument(
        "--max-other", type=float, default=0.1, help="cores others may use during a kept run"
    )
    parser.add_argument("--retries", type=int, default=3, help="redos of a run others disturbed")
    parser.add_argument("--no-scan", action="store_true", help="leave out the whole-scan rows")
    args = parser.parse_args(argv)

    paths = ensure_images(args.images, args.workers)
    sizes = [p.stat().st_size for p in paths]
    total_mb = sum(sizes) / 1e6
    print(
        f"{len(paths)} JPEGs {WIDTH}x{HEIGHT} q{QUALITY}: {min(sizes) / 1e6:.1f}-"
        f"{max(sizes) / 1e6:.1f} MB each, {total_mb:.0f} MB in all; "
        f"{os.cpu_count()} CPUs ({_cpu()})",
        flush=True,
    )

    half = len(paths) // 2
    bursts = ensure_bursts(paths, args.workers)
    scans = {
        "distinct_n": paths[:half],
        "distinct_2n": paths,
        "burst_n": [p for group in bursts[: len(bursts) // 2] for p in group],
        "burst_2n": [p for group in bursts for p in group],
    }
    if args.no_scan:
        scans = {}
    rows, extra = measure(paths, args.workers, args.repeat, args.max_other, args.retries, scans)
    by_key = {row["key"]: row for row in rows}
    for row in rows:
        row["median_s"] = statistics.median(row["seconds"])
        row["files_per_s"] = row["files"] / row["median_s"]
        mb = (
            total_mb
            if row["key"] not in scans
            else sum(p.stat().st_size for p in scans[row["key"]]) / 1e6
        )
        row["mb_per_s"] = mb / row["median_s"]
    damdup = by_key["damdup"]
    floor = by_key["floor"]
    for row in rows:
        row["damdup_speedup"] = damdup["files_per_s"] / row["files_per_s"]

    print()
    header = (
        f"{'method':<66}{'procs':>5}{'median s':>9}{'files/s':>9}{'MB/s':>8}{'damdup is':>11}"
        f"{'others':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = "-" if row is damdup else f"{row['damdup_speedup']:.2f}x"
        print(
            f"{row['label']:<66}{row['processes']:>5}{row['median_s']:>9.2f}"
            f"{row['files_per_s']:>9.2f}{row['mb_per_s']:>8.1f}{ratio:>11}"
            f"{max(row['other_cores']):>8.2f}"
        )
    retried = sum(row["retried_runs"] for row in rows)
    if retried:
        print(
            f"({retried} runs were redone because other processes were busy; "
            f"{extra['waited_for_quiet_s']:.0f} s spent waiting for them)"
        )
    worst = max(max(row["other_cores"]) for row in rows)
    print(
        "('damdup is' = damdup's files/s over the row's; 'others' = the most CPU, in cores, "
        "that other processes used during a kept run of the row)"
    )
    if worst > args.max_other:
        print(
            f"WARNING: other processes used up to {worst:.2f} cores during kept runs even after "
            f"{args.retries} redos: the machine was shared, ratios are unreliable"
        )
    print()

    vs_floor = damdup["median_s"] / floor["median_s"]
    single_vs_floor = by_key["damdup_1"]["median_s"] / by_key["floor_1"]["median_s"]
    targets: dict[str, Any] = {
        "vs_floor": {
            "target": f"damdup time <= {TARGET_VS_FLOOR}x the floor's ({args.workers} procs each)",
            "value": vs_floor,
            "met": vs_floor <= TARGET_VS_FLOOR,
        }
    }
    print(
        f"damdup / floor time, {args.workers} procs: {vs_floor:.2f}x "
        f"(target <= {TARGET_VS_FLOOR}x: {'MET' if vs_floor <= TARGET_VS_FLOOR else 'MISSED'}); "
        f"1 proc: {single_vs_floor:.2f}x"
    )
    idd_key = f"imagededup_w{args.workers}"
    if idd_key in by_key:
        speedup = by_key[idd_key]["damdup_speedup"]
        fair = by_key["imagededup_files"]["damdup_speedup"]
        targets["vs_imagededup"] = {
            "target": f"damdup >= {TARGET_VS_IMAGEDEDUP}x imagededup PHash.encode_images",
            "value": speedup,
            "value_vs_per_file_pool": fair,
            "met": speedup >= TARGET_VS_IMAGEDEDUP,
        }
        print(
            f"damdup / imagededup encode_images speed: {speedup:.2f}x "
            f"(target >= {TARGET_VS_IMAGEDEDUP}x: "
            f"{'MET' if speedup >= TARGET_VS_IMAGEDEDUP else 'MISSED'}); "
            f"vs its encoder over a chunksize-1 pool: {fair:.2f}x"
        )
    else:
        print(f"damdup vs imagededup: not measured ({extra.get('imagededup_skipped')})")
    scan_figures: dict[str, Any] = {}
    floor_ms = 1000 * floor["median_s"] / len(paths)
    floor_cpu_ms = _floor_cpu_ms(paths, args.repeat)
    for kind in ("distinct", "burst"):
        if f"{kind}_n" not in by_key:
            continue
        small, large = by_key[f"{kind}_n"], by_key[f"{kind}_2n"]
        added = large["files"] - small["files"]
        marginal_ms = 1000 * (large["median_s"] - small["median_s"]) / added
        fixed_s = small["median_s"] - small["files"] * marginal_ms / 1000
        scan_figures[kind] = {
            "marginal_ms_per_image": marginal_ms,
            "vs_floor": marginal_ms / floor_ms,
            "fixed_s": fixed_s,
            "candidates": [small.get("candidates"), large.get("candidates")],
        }
        # CPU of the whole process tree, beside the floor's on one process: what
        # the wall clock says only on a quiet machine.
        cpu_ms = 1000 * (statistics.median(large["cpu_s"]) - statistics.median(small["cpu_s"]))
        cpu_ms /= added
        scan_figures[kind] |= {
            "marginal_cpu_ms_per_image": cpu_ms,
            "cpu_vs_floor": cpu_ms / floor_cpu_ms,
        }
        print(
            f"whole `damdup scan`, {kind} photos, marginal cost per image ({small['files']} vs "
            f"{large['files']} files): {marginal_ms:.0f} ms = {marginal_ms / floor_ms:.2f}x the "
            f"floor's {floor_ms:.1f} ms/file on {args.workers} procs; in CPU {cpu_ms:.0f} ms = "
            f"{cpu_ms / floor_cpu_ms:.2f}x the floor's {floor_cpu_ms:.1f} ms of CPU; fixed cost "
            f"{fixed_s:.2f} s; candidate pairs {small.get('candidates')} and "
            f"{large.get('candidates')}"
        )
    targets["scan"] = scan_figures
    workers_rss = extra["damdup_workers_peak_rss_mb"]
    print(
        f"damdup peak RSS (VmHWM): parent {extra['damdup_parent_peak_rss_mb']:.0f} MB, workers "
        + " + ".join(f"{mb:.0f}" for mb in workers_rss)
        + f" MB; at most {extra['damdup_parent_peak_rss_mb'] + sum(workers_rss):.0f} MB in all"
    )
    cpu = extra["damdup_cpu_s_per_run"]
    print(
        f"damdup CPU per run of {len(paths)} files: parent {cpu['parent']:.2f} s, workers "
        f"{cpu['workers']:.2f} s (wall {damdup['median_s']:.2f} s on {args.workers} procs); "
        f"pool start-up {extra['damdup_pool_start_s']:.2f} s, not in the timings"
    )

    breakdown = None
    profile_rows = None
    if args.profile or vs_floor > TARGET_VS_FLOOR:
        breakdown = stage_breakdown(paths)
        profile_rows = cprofile_top(paths)
        print("\nwhere damdup's time goes, 1 process, CPU ms per file:")
        if breakdown is None:
            print("  (stage timing unavailable: fingerprint.py's helpers changed)")
        else:
            whole = breakdown.get("whole fingerprint_bytes", 0.0)
            parts = {k: v for k, v in breakdown.items() if k != "whole fingerprint_bytes"}
            inside = sum(v for k, v in parts.items() if not k.startswith(("read", "pickle")))
            breakdown = {
                **parts,
                "whole minus the stages (call overhead)": whole - inside,
                "whole fingerprint_bytes": whole,
            }
            for stage, ms in breakdown.items():
                share = (
                    f"{100 * ms / whole:5.1f}%"
                    if whole and stage != "whole fingerprint_bytes"
                    else ""
                )
                print(f"  {stage:<44}{ms:8.2f}  {share}")
        print(
            "\ncProfile of fingerprint_bytes, top by own CPU time, ms per file (own / cumulative):"
        )
        for where, own, cumulative in profile_rows:
            print(f"  {where:<64}{own:8.2f}{cumulative:9.2f}")

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu(), "platform": platform.platform()},
        "versions": _versions(),
        "images": {
            "count": len(paths),
            "size": [WIDTH, HEIGHT],
            "quality": QUALITY,
            "total_mb": total_mb,
            "min_mb": min(sizes) / 1e6,
            "max_mb": max(sizes) / 1e6,
            "folder": str(IMAGES.relative_to(ROOT)),
            "generation": "24 different real photographs (scikit-image, scikit-learn, "
            "Debian wallpapers), upscaled, with luminance and chroma grain; "
            "camera EXIF on most, Orientation 1/3/6/8",
        },
        "repeat": args.repeat,
        "workers": args.workers,
        "rows": rows,
        "targets": targets,
        "damdup_vs_floor_1proc": single_vs_floor,
        **extra,
        "max_other_cores": args.max_other,
        "stage_ms_per_file": breakdown,
        "cprofile_top_ms_per_file": profile_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
