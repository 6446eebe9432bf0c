"""Benchmark of connector.core.search on pHashes of real photographs.

    .venv/bin/python bench/search.py [--n 1000000] [--radius 12]

The codes are imagehash.phash of crops of the photographs that ship inside the
scikit-image and scikit-learn wheels, so they cluster the way real pHashes do
(smooth regions, textures, near-duplicate groups) instead of being uniform bits.
They are cached in bench/results/codes_<n>.npy because making 1M takes minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from multiprocessing import Pool, get_context
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

SKIMAGE_PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
    "clock_motion.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
    "motorcycle_right.png", "retina.jpg", "rocket.jpg",
]  # fmt: skip
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]

CHUNK = 2000  # codes per worker task; each task is seeded by its index, so the set is
# the same for any worker count and a smaller N is a prefix of a larger one.
SEED = 20240611

GENERATION = (
    "imagehash.phash (8x8, 64 bits) of variants of {k} real photographs bundled in "
    "scikit-image ({ski}) and scikit-learn ({skl}). Each 'scene' is a random crop "
    "(side log-uniform in 10-100% of the short side, aspect 0.8-1.25, random position) "
    "in one of the 8 flip/90-degree orientations; 40% of scenes get 2-6 near-duplicate "
    "copies (crop jitter +-3%, rescale to 48-160 px, rotation +-3 deg with p=0.3, "
    "brightness x0.8-1.2, JPEG q40-95 with p=0.7), which every copy including the first "
    "also receives."
)

_photos: list[object] = []


def _load_photos() -> list[object]:
    from PIL import Image

    if not _photos:
        import skimage
        import sklearn.datasets

        dirs = [
            (Path(skimage.__file__).parent / "data", SKIMAGE_PHOTOS),
            (Path(sklearn.datasets.__file__).parent / "images", SKLEARN_PHOTOS),
        ]
        for folder, names in dirs:
            for name in names:
                # pHash looks only at luminance, so decode once to L and crop from that.
                with Image.open(folder / name) as im:
                    _photos.append(im.convert("L"))
    return _photos


def _make_codes(task: tuple[int, int]) -> npt.NDArray[np.uint64]:
    import imagehash
    from PIL import Image, ImageOps

    index, count = task
    photos = _load_photos()
    rng = np.random.default_rng([SEED, index])
    orientations = [
        None,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_180,
        Image.Transpose.ROTATE_270,
    ]
    out = np.empty(count, dtype=np.uint64)
    k = 0
    while k < count:
        im: Image.Image = photos[int(rng.integers(len(photos)))]  # type: ignore[assignment]
        width, height = im.size
        side = float(np.exp(rng.uniform(np.log(0.1), 0.0))) * min(width, height)
        w = min(width, side * rng.uniform(0.8, 1.25))
        h = side
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        mirror = bool(rng.random() < 0.5)
        orient = orientations[int(rng.integers(4))]
        copies = 1 if rng.random() < 0.6 else int(rng.integers(2, 7))
        for _ in range(min(copies, count - k)):
            jx, jy = rng.uniform(-0.03, 0.03, 2) * w
            box = (
                max(0.0, x + jx),
                max(0.0, y + jy),
                min(width, x + jx + w),
                min(height, y + jy + h),
            )
            px = int(rng.integers(48, 161))
            c = im.resize((px, px), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
            if rng.random() < 0.3:
                c = c.rotate(rng.uniform(-3, 3), resample=Image.Resampling.BILINEAR)
            gain = rng.uniform(0.8, 1.2)
            c = c.point([min(255, int(v * gain)) for v in range(256)])
            if rng.random() < 0.7:
                buf = io.BytesIO()
                c.save(buf, "JPEG", quality=int(rng.integers(40, 96)))
                buf.seek(0)
                c = Image.open(buf)
            if mirror:
                c = ImageOps.mirror(c)
            if orient is not None:
                c = c.transpose(orient)
            bits = imagehash.phash(c).hash.flatten()
            out[k] = int.from_bytes(np.packbits(bits).tobytes(), "big")
            k += 1
    return out


def real_photo_codes(n: int) -> npt.NDArray[np.uint64]:
    """The first n real-photo pHash codes, generating only what no cache holds yet."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    cached = sorted(
        (int(p.stem.split("_")[1]), p)
        for p in RESULTS.glob("codes_*.npy")
        if p.stem.split("_")[1].isdigit()
    )
    for size, path in cached:
        if size >= n:
            held: npt.NDArray[np.uint64] = np.load(path)
            return held[:n]
    have: npt.NDArray[np.uint64] = (
        np.load(cached[-1][1]) if cached else np.empty(0, dtype=np.uint64)
    )
    first_chunk = have.shape[0] // CHUNK  # a partial last chunk is made again
    have = have[: first_chunk * CHUNK]
    tasks = [(i, min(CHUNK, n - i * CHUNK)) for i in range(first_chunk, (n + CHUNK - 1) // CHUNK)]
    t0 = time.perf_counter()
    print(f"generating {n - have.shape[0]:,} pHash codes with 2 worker processes ...", flush=True)
    with Pool(2) as pool:
        parts = pool.map(_make_codes, tasks, chunksize=1)
    codes = np.concatenate([have, *parts])
    np.save(RESULTS / f"codes_{n}.npy", codes)
    print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return codes


# --------------------------------------------------------------------------- measurements
#
# Every measurement runs in a fresh spawned interpreter. "peak MB" is
# resource.getrusage(RUSAGE_SELF).ru_maxrss after the run minus the RSS just
# before it (codes loaded, libraries imported, kernels warmed up), with the
# kernel's high-water mark reset in between through /proc/self/clear_refs so
# that import-time peaks don't hide the run's own. tracemalloc would miss
# numba's and FAISS's native allocations.
MEMORY_METHOD = (
    "peak MB = resource.getrusage ru_maxrss after the run minus RSS before it, "
    "high-water mark reset via /proc/self/clear_refs, each row in a fresh interpreter "
    "(not tracemalloc, which misses numba/FAISS native allocations)"
)


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start_peak() -> float:
    """Reset the RSS high-water mark and return the current RSS in MB (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hex(code: int) -> str:
    return format(code, "016x")


def _job_ours_pairs(codes: npt.NDArray[np.uint64], radius: int) -> dict[str, object]:
    from connector.core.search import pairs_within

    pairs_within(codes[:2000], radius)  # load the compiled kernels before measuring
    base = _start_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = pairs_within(codes, radius)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds, "cpu_seconds": cpu, "peak_mb": _rss_mb() - base,
        "peak_rss_mb": _rss_mb(), "pairs": int(pairs.shape[0]),
        "unique_codes": int(np.unique(codes).shape[0]),
    }  # fmt: skip


def _job_ours_query(loaded: npt.NDArray[np.uint64], radius: int, held: int) -> dict[str, object]:
    from connector.core.search import HammingIndex

    codes, queries = loaded[:held], loaded[held:]
    HammingIndex(codes[:2000]).query(int(queries[0]), radius)
    base = _start_peak()
    t0 = time.perf_counter()
    index = HammingIndex(codes)
    build = time.perf_counter() - t0
    peak = _rss_mb() - base
    index.query(int(queries[0]), radius)
    latency, results = [], []
    for q in queries.tolist():
        t0 = time.perf_counter()
        results.append(index.query(q, radius))
        latency.append(time.perf_counter() - t0)
    # Brute force per query, for the ratio and to check every answer.
    brute, missing, extra = [], 0, 0
    for q, got in zip(queries.tolist(), results, strict=True):
        t0 = time.perf_counter()
        dist = np.bitwise_count(codes ^ np.uint64(q))
        hits = np.flatnonzero(dist <= radius)
        brute.append(time.perf_counter() - t0)
        want = set(zip(hits.tolist(), dist[hits].tolist(), strict=True))
        have = set(got)
        missing += len(want - have)
        extra += len(have - want)
    found = sum(len(r) for r in results)
    return {
        "build_seconds": build, "peak_mb": peak,
        "median_ms": 1e3 * float(np.median(latency)),
        "p99_ms": 1e3 * float(np.percentile(latency, 99)),
        "brute_median_ms": 1e3 * float(np.median(brute)),
        "brute_p99_ms": 1e3 * float(np.percentile(brute, 99)),
        "queries": len(latency), "mean_hits": found / len(latency),
        "recall": 1.0 - missing / max(1, found + missing - extra), "wrong": extra,
    }  # fmt: skip


def _job_faiss_flat(codes: npt.NDArray[np.uint64], radius: int) -> dict[str, object]:
    try:
        import faiss
    except ImportError as exc:
        return {"skipped": f"faiss not importable ({exc}); pip install faiss-cpu"}
    faiss.omp_set_num_threads(2)
    x = np.ascontiguousarray(codes).view(np.uint8).reshape(-1, 8)
    base = _start_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    index = faiss.IndexBinaryFlat(64)
    index.add(x)
    # FAISS's binary range_search keeps distances strictly below the radius.
    lims, _, found = index.range_search(x, radius + 1)
    rows = np.repeat(
        np.arange(codes.shape[0]), np.diff(np.asarray(lims, dtype=np.int64)).astype(np.int64)
    )
    pairs = int(np.count_nonzero(rows < found))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": _rss_mb() - base, "pairs": pairs}


def _job_imagededup(
    codes: npt.NDArray[np.uint64], radius: int, method: str, budget: float
) -> dict[str, object]:
    """imagededup's own search over the same codes as hex strings, as it stores them.

    Querying all codes would take hours, so it runs queries for `budget` seconds
    and extrapolates; the sampled answers are checked against brute force.
    """
    try:
        from imagededup.methods.hashing import Hashing

        if method == "bktree":
            from imagededup.handlers.search.bktree import BKTree as Search
        else:
            from imagededup.handlers.search.brute_force_cython import (
                BruteForceCython as Search,
            )
    except Exception as exc:  # an optional, separately installed package
        return {"skipped": f"imagededup not importable ({type(exc).__name__}: {exc})"}
    hashes = {str(i): _hex(int(c)) for i, c in enumerate(codes.tolist())}
    base = _start_peak()
    t0 = time.perf_counter()
    search = Search(hashes, Hashing.hamming_distance)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    sample = rng.permutation(codes.shape[0])
    t0 = time.perf_counter()
    done, wrong = 0, 0
    while done < sample.shape[0] and time.perf_counter() - t0 < budget:
        i = int(sample[done])
        got = {(int(k), int(d)) for k, d in search.search(hashes[str(i)], tol=radius)}
        dist = np.bitwise_count(codes ^ codes[i])
        hits = np.flatnonzero(dist <= radius)
        wrong += got != set(zip(hits.tolist(), dist[hits].tolist(), strict=True))
        done += 1
    per_query = (time.perf_counter() - t0) / max(1, done)
    return {
        "seconds": build + per_query * codes.shape[0], "extrapolated": True,
        "build_seconds": build, "per_query_seconds": per_query, "queries_run": done,
        "queries_wrong": wrong, "peak_mb": _rss_mb() - base,
    }  # fmt: skip


def _job_numpy_brute(codes: npt.NDArray[np.uint64], radius: int) -> dict[str, object]:
    from connector.core.search import brute_force_pairs

    base = _start_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = brute_force_pairs(codes, radius)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds, "cpu_seconds": cpu, "peak_mb": _rss_mb() - base,
        "pairs": int(pairs.shape[0]),
    }  # fmt: skip


def _job_recall(codes: npt.NDArray[np.uint64], radius: int) -> dict[str, object]:
    from connector.core.search import brute_force_pairs, pairs_within

    ours = pairs_within(codes, radius)
    truth = brute_force_pairs(codes, radius)
    as_set = {tuple(row) for row in ours.tolist()}
    want = {tuple(row) for row in truth.tolist()}
    return {
        "codes": int(codes.shape[0]), "pairs": len(want),
        "recall": len(as_set & want) / max(1, len(want)),
        "precision": len(as_set & want) / max(1, len(as_set)),
        "identical_output": bool(np.array_equal(ours, truth)),
    }  # fmt: skip


JOBS = {
    "ours_pairs": _job_ours_pairs,
    "ours_query": _job_ours_query,
    "faiss_flat": _job_faiss_flat,
    "imagededup": _job_imagededup,
    "numpy_brute": _job_numpy_brute,
    "recall": _job_recall,
}


def _child(name: str, path: str, n: int, kwargs: dict[str, object], queue: Any) -> None:
    sys.path.insert(0, str(ROOT))
    codes = np.load(path)[:n]
    try:
        queue.put(JOBS[name](codes, **kwargs))  # type: ignore[operator]
    except Exception as exc:
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(name: str, path: Path, n: int, **kwargs: object) -> dict[str, object]:
    """Run one job in a fresh interpreter and return what it reports."""
    ctx = get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, str(path), n, kwargs, queue))
    proc.start()
    result: dict[str, object] = queue.get()
    proc.join()
    return result


# --------------------------------------------------------------------------- report


def _fmt_s(v: object) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--radius", type=int, default=12)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--compare-n", type=int, default=100_000)
    parser.add_argument("--recall-n", type=int, default=20_000)
    parser.add_argument("--imagededup-budget", type=float, default=60.0, help="seconds per method")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args(argv)
    n, radius = args.n, args.radius
    compare_n, recall_n = min(n, args.compare_n), min(n, args.recall_n)

    all_codes = real_photo_codes(n + args.queries)
    if args.generate_only:
        return 0
    path = RESULTS / f"bench_codes_{n + args.queries}.npy"
    np.save(path, all_codes)
    codes = all_codes[:n]
    photos = len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)
    how = GENERATION.format(k=photos, ski=", ".join(SKIMAGE_PHOTOS), skl=", ".join(SKLEARN_PHOTOS))
    print(f"codes: {how}")
    print(
        f"N = {n:,} codes ({np.unique(codes).shape[0]:,} distinct), radius = {radius}, "
        f"{args.queries:,} held-out query codes made the same way; machine: "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(MEMORY_METHOD + "\n", flush=True)

    results: dict[str, Any] = {
        "generation": how, "n": n, "radius": radius, "queries": args.queries,
        "cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0],
        "peak_memory_method": MEMORY_METHOD,
    }  # fmt: skip
    results["ours_pairs_n"] = measure("ours_pairs", path, n, radius=radius)
    print(f"  ours pairs_within at {n:,}: {results['ours_pairs_n']}", flush=True)
    results["ours_query_n"] = measure("ours_query", path, n + args.queries, radius=radius, held=n)
    print(f"  ours query at {n:,}: {results['ours_query_n']}", flush=True)
    rows_at_compare = {
        "ours pairs_within": measure("ours_pairs", path, compare_n, radius=radius),
        "FAISS IndexBinaryFlat range_search (2 threads)": measure(
            "faiss_flat", path, compare_n, radius=radius
        ),
        "imagededup BKTree (per-query, extrapolated)": measure(
            "imagededup", path, compare_n, radius=radius, method="bktree",
            budget=args.imagededup_budget,
        ),
        "imagededup BruteForceCython (per-query, extrapolated)": measure(
            "imagededup", path, compare_n, radius=radius, method="cython",
            budget=args.imagededup_budget,
        ),
        "numpy brute force (brute_force_pairs, 1 thread)": measure(
            "numpy_brute", path, compare_n, radius=radius
        ),
    }  # fmt: skip
    for label, row in rows_at_compare.items():
        print(f"  {label} at {compare_n:,}: {row}", flush=True)
    results["at_compare_n"] = {"n": compare_n, **rows_at_compare}
    results["recall"] = measure("recall", path, recall_n, radius=radius)
    print(f"  recall at {recall_n:,}: {results['recall']}\n", flush=True)
    results["load_average_end"] = os.getloadavg()[0]
    path.unlink()

    brute = rows_at_compare["numpy brute force (brute_force_pairs, 1 thread)"]
    brute_s = brute.get("seconds")
    brute_at_n = brute_s * (n / compare_n) ** 2 if isinstance(brute_s, float) else None
    results["numpy_brute_estimated_at_n_seconds"] = brute_at_n

    def ratio(seconds: object, reference: object) -> str:
        if not (isinstance(seconds, float) and isinstance(reference, float) and seconds > 0):
            return "-"
        speedup = reference / seconds
        if speedup >= 10:
            return f"{speedup:,.0f}x"
        return f"{speedup:.1f}x" if speedup >= 0.1 else f"1/{1 / speedup:,.0f}"

    header = (
        f"{'what':<58} {'codes':>9} {'seconds':>9} {'cpu s':>8} {'peak MB':>8} "
        f"{'pairs':>11} {'vs brute':>9}"
    )
    lines = [header, "-" * len(header)]

    def line(label: str, size: int, row: dict[str, Any], reference: object) -> None:
        if "skipped" in row or "error" in row:
            lines.append(f"{label:<58} {size:>9,} skipped: {row.get('skipped', row.get('error'))}")
            return
        pairs = f"{row['pairs']:,}" if isinstance(row.get("pairs"), int) else "-"
        lines.append(
            f"{label:<58} {size:>9,} {_fmt_s(row.get('seconds')):>9} "
            f"{_fmt_s(row.get('cpu_seconds')):>8} {_fmt_s(row.get('peak_mb')):>8} "
            f"{pairs:>11} {ratio(row.get('seconds'), reference):>9}"
        )

    line("ours pairs_within (2 threads)", n, results["ours_pairs_n"], brute_at_n)
    if n != compare_n:
        lines.append(
            f"{'numpy brute force (estimated: time at compare n x (N/n)^2)':<58} {n:>9,} "
            f"{_fmt_s(brute_at_n):>9}"
        )
    for label, row in rows_at_compare.items():
        line(label, compare_n, row, brute_s)
    q = results["ours_query_n"]
    lines.append("")
    if "error" in q:
        lines.append(f"single query: {q['error']}")
    else:
        lines.append(
            f"single query against {n:,} codes ({q['queries']:,} held-out codes, radius {radius}, "
            f"{q['mean_hits']:.1f} hits on average): median {q['median_ms']:.3f} ms, "
            f"p99 {q['p99_ms']:.3f} ms; index build {q['build_seconds']:.2f} s, "
            f"+{q['peak_mb']:.0f} MB; numpy brute force per query median "
            f"{q['brute_median_ms']:.2f} ms (x{q['brute_median_ms'] / q['median_ms']:.0f}); "
            f"query recall {q['recall']:.4f}, wrong hits {q['wrong']}"
        )
    rec = results["recall"]
    if "error" in rec:
        lines.append(f"recall: {rec['error']}")
    else:
        lines.append(
            f"recall of pairs_within vs brute_force_pairs on the first {rec['codes']:,} codes: "
            f"{rec['recall']:.4f} ({rec['pairs']:,} pairs, precision {rec['precision']:.4f}, "
            f"identical output: {rec['identical_output']})"
        )
    for label, row in rows_at_compare.items():
        if row.get("extrapolated"):
            per_query = cast(float, row["per_query_seconds"])
            lines.append(
                f"{label}: tree/list build {row['build_seconds']:.1f} s, "
                f"{per_query * 1e3:.1f} ms per query over {row['queries_run']} "
                f"sampled queries ({row['queries_wrong']} differing from brute force)"
            )
    lines.append(
        f"load average {results['load_average_start']:.1f} at start, "
        f"{results['load_average_end']:.1f} at end (other processes share the 2 cores)"
    )
    print("\n".join(lines))
    (RESULTS / "search.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten {RESULTS / 'search.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
