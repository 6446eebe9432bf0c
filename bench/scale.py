"""The whole-index candidate search at 1,000,000 assets: memory and time.

    .venv/bin/python bench/scale.py [--n 1000000] [--pg postgresql://root@127.0.0.1/postgres]
                                    [--queries 1000] [--old-n N] [--fresh] [--keep]

A synthetic index of --n assets is built through the store API
(`store.start_run`, `store.save_page` in pages of 10,000), in SQLite
(bench/results/scale_<n>.sqlite, reused unless --fresh) and, with --pg, in a
PostgreSQL database of its own (damdup_scale_<n>, created on the server of
that URL and dropped afterwards unless --keep). Each fingerprint: a random
64-bit pHash and dHash, a central-part variant 0-3 bits away, a
border-trimmed one (1-4 bits away) on 10 %; 5 % are near-copies of another
asset (codes 1-6 bits from its), a fifth of which keep its payload digest;
0.3 % flat; a payload digest on JPEG and PNG; a 24-byte thumbnail.

Each step runs in a fresh interpreter (a child process) and reports its own
peak RSS (resource.getrusage ru_maxrss: the interpreter, numpy and numba
included) and wall time:

  columns      `fingerprint_columns` (what a scan's matcher reads now)
  search       columns + `find_candidates`, the whole candidate search
  rows         `fingerprint_rows`: the row dicts the matcher read before
  rows_search  row dicts + the dict-based search it ran before (the peer)
  matchindex   `MatchIndex` built from the columns, then --queries
               single-image candidate queries (p50/p95)

The old row-dict steps run at --old-n (default: --n; a smaller figure is
extrapolated linearly to --n and marked so). The table is printed with the
command line and written to bench/results/scale_<n>_<stores>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

SEED = 20261215
PAGE = 10_000
TARGET_MB = 2048
STEPS = ("columns", "search", "rows", "rows_search", "matchindex")
UNITS = 4
NEW_UNIT = "u1"
NEAR_SHARE = 0.05
BUILT = "damdup scale v3 complete"


# -- the synthetic index ----------------------------------------------------------


def _flip(rng: np.random.Generator, codes: npt.NDArray[np.uint64], low: int, high: int) -> Any:
    """Each code with `low`..`high` random bits flipped (a repeated bit flips back)."""
    out = codes.copy()
    flips = rng.integers(low, high + 1, size=codes.size)
    for round_ in range(high):
        bit = rng.integers(0, 64, size=codes.size).astype(np.uint64)
        out = np.where(flips > round_, out ^ (np.uint64(1) << bit), out)
    return out


def _generate(
    rng: np.random.Generator, count: int, offset: int, pool: dict[str, Any] | None
) -> dict[str, Any]:
    """`count` rows numbered from `offset`; near-copies of rows of `pool` (the
    index already there) or, without one, of these rows."""
    top = np.iinfo(np.uint64).max
    near = rng.random(count) < NEAR_SHARE
    size = len(pool["near"]) if pool is not None else count
    source = rng.integers(0, size, size=count)
    data: dict[str, Any] = {"near": near}
    for kind in ("phash", "dhash"):
        main = rng.integers(0, top, size=count, dtype=np.uint64, endpoint=True)
        origin = pool[kind] if pool is not None else main
        main = np.where(near, _flip(rng, origin[source], 1, 6), main)
        data[kind] = main
        data[f"{kind}_inner"] = _flip(rng, main, 0, 3)
        data[f"{kind}_trim"] = _flip(rng, main, 1, 4)
        data[f"{kind}_has_trim"] = rng.random(count) < 0.10
    data["flat"] = rng.random(count) < 0.003
    data["format"] = rng.choice(np.array(["JPEG", "PNG", "WEBP"]), size=count, p=[0.8, 0.15, 0.05])
    data["width"] = rng.integers(200, 6000, size=count)
    data["height"] = rng.integers(200, 6000, size=count)
    data["size_bytes"] = rng.integers(20_000, 20_000_000, size=count)
    data["captured"] = rng.random(count) < 0.6
    keeps_payload = near & (rng.random(count) < 0.2)
    if pool is not None:
        data["payload_of"] = np.where(
            keeps_payload, pool["payload_of"][source], offset + np.arange(count)
        )
    else:
        data["payload_of"] = np.where(keeps_payload, source, np.arange(count))
    # The "thumbnail": which photograph the row shows (a near-copy shows its
    # source's), read by the stand-in pixel check (synthetic_pixel_check).
    if pool is not None:
        data["photo"] = np.where(near, pool["photo"][source], offset + np.arange(count))
    else:
        data["photo"] = np.where(near, source, np.arange(count))
    return data


def synthetic(n: int, extra: int = 0) -> dict[str, Any]:
    """The index of `n` assets (the same whatever `extra`), then `extra` new
    ones of the same kind, near-copies among them of assets of the index."""
    data = _generate(np.random.default_rng(SEED), n, 0, None)
    if extra:
        more = _generate(np.random.default_rng(SEED + 7), extra, n, data)
        data = {key: np.concatenate([data[key], more[key]]) for key in data}
    return data


def unit_of(i: int, n: int) -> str:
    """The index's assets in UNITS units of equal size (near-copies cross them)."""
    return f"u{min(i * UNITS // n, UNITS - 1)}" if i < n else NEW_UNIT


SYNTHETIC = b"damdup-synthetic-photo:"


def synthetic_thumb(photo: int) -> bytes:
    """No image: the number of the photograph the row shows (near-copies
    share their source's)."""
    return SYNTHETIC + b"%d" % photo


def synthetic_pixel_check(thumb_a: bytes, thumb_b: bytes) -> dict[str, Any]:
    """Stands in for settle.pixel_check_job on the synthetic index, whose rows
    have no pixels: passes where both rows show the same photograph, else
    fails as the real check fails unrelated images (nothing aligns). Its cost
    is none; the real check's is measured apart (step_pixelcheck)."""
    if not (thumb_a.startswith(SYNTHETIC) and thumb_b.startswith(SYNTHETIC)):
        from connector.engine.settle import pixel_check_job

        return pixel_check_job(thumb_a, thumb_b)
    if thumb_a == thumb_b:
        return {"passed": True, "reason": "synthetic: the same photograph"}
    return {
        "passed": False, "reason": "synthetic: another photograph", "coverage_a": 0.0,
        "coverage_b": 0.0,
    }  # fmt: skip


def sha_of(i: int) -> str:
    return hashlib.sha256(b"damdup-scale-%d" % i).hexdigest()


def page_of(data: dict[str, Any], first: int, last: int, n: int) -> tuple[list[Any], list[Any]]:
    """Asset rows and fingerprints of rows first..last-1."""
    from connector.core.capture import CaptureFacts
    from connector.core.fingerprint import RECIPE, Fingerprint
    from connector.core.index import AssetRow

    assets, prints = [], []
    for i in range(first, last):
        sha = sha_of(i)
        fmt = str(data["format"][i])
        payload = sha_of(-1 - int(data["payload_of"][i])) if fmt != "WEBP" else None
        row = AssetRow(
            unit=unit_of(i, n), asset_id=f"a{i}", version="v1", url=f"file:///nonexistent/a{i}.jpg",
            size_bytes=int(data["size_bytes"][i]), modified=None, sha256=sha,
            error=None, metadata={}, live=True,
        )  # fmt: skip
        assets.append(row)
        codes = {
            kind: int(data[kind][i]) for kind in ("phash", "dhash", "phash_inner", "dhash_inner")
        }
        taken = "2024:01:01 12:00:00" if data["captured"][i] else None
        fp = Fingerprint(
            sha256=sha, size_bytes=int(data["size_bytes"][i]), recipe=RECIPE,
            format=fmt, width=int(data["width"][i]), height=int(data["height"][i]),
            payload_digest=payload,
            phash_trim=int(data["phash_trim"][i]) if data["phash_has_trim"][i] else None,
            dhash_trim=int(data["dhash_trim"][i]) if data["dhash_has_trim"][i] else None,
            flat=bool(data["flat"][i]), animated=False, capture=CaptureFacts(taken_at=taken),
            thumb=synthetic_thumb(int(data["photo"][i])), **codes,
        )  # fmt: skip
        prints.append(fp)
    return assets, prints


def save_rows(store: Any, data: dict[str, Any], first: int, last: int, n: int, page: int) -> None:
    """Rows first..last-1 saved as syncs save them: one run per unit, pages
    of `page` assets."""
    started = time.perf_counter()
    by_unit: dict[str, list[int]] = {}
    for i in range(first, last):
        by_unit.setdefault(unit_of(i, n), []).append(i)
    done = 0
    for unit, members in by_unit.items():
        run = store.start_run(unit, "sync")
        for at in range(0, len(members), page):
            chunk = members[at : at + page]
            assets, prints = page_of(data, chunk[0], chunk[-1] + 1, n)
            complete = at + page >= len(members)
            store.save_page(unit, run, assets, prints, [], None if complete else f"p{at}")
            done += len(chunk)
            if last - first > 100_000 and (done // page) % 20 == 0:
                print(f"    {done:,} saved, {time.perf_counter() - started:.0f} s", flush=True)
        store.finish_run(run, True, {})


def build(store: Any, n: int) -> float:
    """The synthetic index saved through the store API; seconds."""
    data = synthetic(n)
    started = time.perf_counter()
    save_rows(store, data, 0, n, n, PAGE)
    return time.perf_counter() - started


# -- the steps, each in a child process ---------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(name: str, location: str, queries: int) -> dict[str, Any]:
    from connector.core.fingerprint import RECIPE
    from connector.core.search import HammingIndex, pairs_within
    from connector.core.store import open_store
    from connector.engine.matcher import find_candidates
    from connector.engine.memindex import MatchIndex
    from tests.reference import dict_candidates

    # The compiled kernels loaded before anything is timed.
    warm = np.arange(1, 3000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    pairs_within(warm, 12)
    HammingIndex(warm).query(int(warm[0]), 12)
    store = open_store(location)
    out: dict[str, Any] = {"start_rss_mb": _peak_mb()}
    started = time.perf_counter()
    if name in ("columns", "search"):
        columns = store.fingerprint_columns(RECIPE)
        out["load_s"] = time.perf_counter() - started
        out["fingerprints"] = len(columns)
        out["columns_mb"] = (
            sum(value.nbytes for value in vars(columns).values() if isinstance(value, np.ndarray))
            + sum(
                d.owners.nbytes + d.values.nbytes
                for d in (columns.payload_digest, columns.pixel_digest)
            )
        ) / 2**20
        if name == "search":
            searched = time.perf_counter()
            out["candidates"] = len(find_candidates(columns))
            out["search_s"] = time.perf_counter() - searched
    elif name in ("rows", "rows_search"):
        rows = store.fingerprint_rows(RECIPE)
        out["load_s"] = time.perf_counter() - started
        out["fingerprints"] = len(rows)
        if name == "rows_search":
            searched = time.perf_counter()
            out["candidates"] = len(dict_candidates(rows))
            out["search_s"] = time.perf_counter() - searched
    elif name == "matchindex":
        columns = store.fingerprint_columns(RECIPE, after=0)
        out["load_s"] = time.perf_counter() - started
        built = time.perf_counter()
        index = MatchIndex(columns, store.fingerprint_watermark())
        out["build_s"] = time.perf_counter() - built
        out["fingerprints"] = len(index)
        rng = np.random.default_rng(SEED + 1)
        picks = rng.choice(len(columns), size=min(queries, len(columns)), replace=False)
        prints = [store.fingerprint(columns.sha(int(at))) for at in picks]
        latencies, found = [], 0
        for fp in prints:
            assert fp is not None
            t0 = time.perf_counter()
            found += len(index.candidates(fp))
            latencies.append(time.perf_counter() - t0)
        ms = np.array(latencies) * 1e3
        out |= {
            "queries": len(prints), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_candidates": found / len(prints),
        }  # fmt: skip
    out["total_s"] = time.perf_counter() - started
    out["peak_rss_mb"] = _peak_mb()
    store.close()
    return out


def _quiet() -> None:
    """Warnings off in the children: unreadable synthetic originals would log
    one line each."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


class _Timed:
    """Seconds spent in one function, while patched in."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.seconds = owner, name, 0.0
        self.function = getattr(owner, name)
        setattr(owner, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def undo(self) -> None:
        setattr(self.owner, self.name, self.function)


def _match_once(store: Any, workers: int, summary: bool = False) -> dict[str, Any]:
    """`match()` as `damdup scan`/`sync` runs it after the syncs (the index's
    search, the new pairs settled through a local worker pool, saved), then
    the clusters built (the first match), or with `summary` the counts
    `damdup sync` prints (the listing made current); seconds of each part."""
    from connector.core.settings import Settings
    from connector.engine import matcher, settle
    from connector.engine.pool import WorkerPool
    from connector.engine.scan import OriginalReader, cluster_counts, current_clusters

    settings = Settings()
    out: dict[str, Any] = {}
    # The stand-in by the name `scale.synthetic_pixel_check`, which the pool's
    # workers import (this file runs as __main__ here).
    import scale

    settle.pixel_check_job = scale.synthetic_pixel_check
    load = _Timed(store, "fingerprint_columns")
    search = _Timed(matcher, "find_candidates")
    queued = _Timed(matcher, "_queued_candidates")  # its columns load timed as load
    try:
        with WorkerPool(workers) as pool:
            pool.warm()
            started = time.perf_counter()
            stats = matcher.match(
                store, pool, OriginalReader(store, {}), max_pixels=settings.max_pixels
            )
            out["match_s"] = time.perf_counter() - started
    finally:
        load.undo()
        search.undo()
        queued.undo()
    out["load_s"] = load.seconds
    out["search_s"] = search.seconds + max(0.0, queued.seconds - load.seconds)
    out["settle_s"] = out["match_s"] - out["load_s"] - out["search_s"]
    out["searched"] = stats.searched
    out["match_peak_rss_mb"] = _peak_mb()
    started = time.perf_counter()
    if summary:
        out["clusters"], out["cross_unit"] = cluster_counts(store, settings)
        out["summary_s"] = time.perf_counter() - started
    else:
        clusters, relations = current_clusters(store, settings)
        out["cluster_s"] = time.perf_counter() - started
        out["clusters"], out["relations"] = len(clusters), len(relations)
    out |= {
        "candidates": stats.candidates, "evaluated": stats.evaluated, "cached": stats.cached,
        "pixel_checks": stats.pixel_checks, "pixel_digests": stats.pixel_digests,
        "originals_read": stats.originals_read, "tiers": stats.tiers,
    }  # fmt: skip
    return out


def step_match(location: str, spec: dict[str, Any]) -> dict[str, Any]:
    from connector.core.store import open_store

    store = open_store(location)
    try:
        out = _match_once(store, spec["workers"])
    finally:
        store.close()
    out["peak_rss_mb"] = _peak_mb()
    return out


def step_sync(location: str, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec["new"]` new assets saved through the store as a sync of one unit
    saves them (pages of 250), then matched as the sync's run matches."""
    from connector.core.store import open_store

    n, new = spec["n"], spec["new"]
    data = synthetic(n, extra=new)
    store = open_store(location)
    try:
        started = time.perf_counter()
        # What sync_unit reads before its first page (Ingest's known versions
        # and fingerprint sizes), then the pages saved.
        store.listing_state(NEW_UNIT)
        store.asset_versions(NEW_UNIT)
        store.fingerprint_sizes()
        prepared = time.perf_counter() - started
        save_rows(store, data, n, n + new, n, 250)
        saved = time.perf_counter() - started
        out = _match_once(store, spec["workers"], summary=True)
    finally:
        store.close()
    out["prepare_s"], out["save_s"] = prepared, saved
    # The whole sync after its fingerprints: pages saved, match, the summary.
    out["sync_s"] = saved + out["match_s"] + out["summary_s"]
    out["peak_rss_mb"] = _peak_mb()
    return out


def _unclustered_change(location: str, spec: dict[str, Any]) -> None:
    """A change no clustering has seen yet. "decision": a reviewer's `same`
    on one related pair; "sync": `spec["new"]` more new assets saved and
    matched, as a sync stopped before its clustering (or webhook checks)
    leaves them."""
    from connector.core.index import DecisionRow, now_iso
    from connector.core.settings import Settings
    from connector.core.store import open_store
    from connector.engine import matcher, settle
    from connector.engine.pool import WorkerPool
    from connector.engine.scan import OriginalReader

    store = open_store(location)
    try:
        if spec["changed"] == "decision":
            pair = next(p for p in store.pairs() if p.tier != "similar")
            decided = DecisionRow(pair.sha_a, pair.sha_b, "same", None, "bench", now_iso())
            store.save_decision(decided)
            return
        n, new = spec["n"], spec["new"]
        # The first block of `new` rows not saved yet (the sync step's is the
        # block 0): a step run again on a kept copy changes the index again.
        saved = store.asset_versions(NEW_UNIT)
        block = 1
        while f"a{n + block * new}" in saved:
            block += 1
        first = n + block * new
        save_rows(store, synthetic(n, extra=(block + 1) * new), first, first + new, n, 250)
        import scale

        settle.pixel_check_job = scale.synthetic_pixel_check
        with WorkerPool(spec["workers"]) as pool:
            matcher.match(store, pool, OriginalReader(store, {}), max_pixels=Settings().max_pixels)
    finally:
        store.close()


TIMED = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
used = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    json.dump([seconds, used.ru_utime, used.ru_stime, used.ru_maxrss], out)
sys.exit(code)
"""


def step_cli(location: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A damdup command as a whole process (interpreter start included),
    after `_unclustered_change` when `spec["changed"]` names one."""
    import tempfile

    if spec.get("changed"):
        _unclustered_change(location, spec)

    command = [sys.executable, "-m", "connector.cli", *spec["args"], "--db", location]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DAMDUP_CONFIG", None)
    with tempfile.TemporaryDirectory() as where:  # no config/damdup.toml found there
        # The command's own time, CPU and peak memory, taken by a parent of
        # its own: RUSAGE_CHILDREN here would also count the worker processes
        # of the change's match.
        timed = Path(where) / "rusage.json"
        done = subprocess.run(
            [sys.executable, "-c", TIMED, str(timed), *command],
            capture_output=True, text=True, env=env, cwd=where,
        )  # fmt: skip
        seconds, user, system, peak_kb = json.loads(timed.read_text())
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-300:])
    return {
        "command_s": seconds,
        "command_cpu_s": user + system,
        "command_peak_rss_mb": peak_kb / 1024,
        "output_lines": done.stdout.count("\n"),
    }


def step_webhook(location: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Webhook checks (`Checker.check`, what `damdup serve` runs for a
    notification) of real renditions in a folder unit, against the index."""
    from adapters.filesystem import Filesystem, FilesystemSettings
    from connector.core.settings import Settings
    from connector.core.store import open_store
    from connector.engine.check import Checker

    folder = Path(spec["folder"])
    adapter = Filesystem(FilesystemSettings(root=folder))
    settings = Settings(db=location, workers=2)
    checker = Checker(location, settings, {"web": adapter}, {"web": False})
    started = time.perf_counter()
    checker.warm()
    warm = time.perf_counter() - started
    store = open_store(location)
    seconds: list[float] = []
    roles: dict[str, int] = {}
    try:
        for path in sorted(folder.iterdir()):
            started = time.perf_counter()
            check_id = store.start_check("web", path.name, "bench")
            verdict = checker.check("web", path.name, check_id)
            seconds.append(time.perf_counter() - started)
            role = str(verdict.get("role") or f"error: {verdict.get('error')}")
            roles[role] = roles.get(role, 0) + 1
    finally:
        store.close()
        checker.close()
    ms = np.array(seconds) * 1e3
    return {
        "warm_s": warm, "checks": len(seconds), "check_p50_ms": float(np.percentile(ms, 50)),
        "check_p95_ms": float(np.percentile(ms, 95)), "check_max_ms": float(ms.max()),
        "roles": roles, "peak_rss_mb": _peak_mb(),
    }  # fmt: skip


def step_fingerprint(_location: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Fingerprints of every file of a folder through a local WorkerPool or
    the Celery workers on the broker (`damdup worker`s started by the parent)."""
    from connector.core.settings import Settings
    from connector.engine.ingest import describe_error, fingerprint_job
    from connector.engine.pool import WorkerPool

    settings = Settings()
    files = sorted(Path(spec["folder"]).glob("*.jpg"))
    data = [path.read_bytes() for path in files]
    jobs = [
        (i, (blob, settings.max_pixels, settings.max_file_bytes)) for i, blob in enumerate(data)
    ]
    pool: Any
    if spec["engine"] == "celery":
        from connector.engine.celery_pool import CeleryPool

        pool = CeleryPool(Settings(engine="celery", broker=spec["broker"]))
    else:
        pool = WorkerPool(spec["processes"])
    with pool:
        pool.warm()
        # Worker processes started and their imports done before the clock runs.
        warm = jobs[: 4 * spec["processes"]]
        assert all(o.error is None for o in pool.map(fingerprint_job, warm, describe_error))
        started = time.perf_counter()
        outcomes = list(pool.map(fingerprint_job, jobs, describe_error))
        seconds = time.perf_counter() - started
    failed = [o.error for o in outcomes if o.error is not None]
    assert not failed, failed[:3]
    out = {
        "files": len(files), "seconds": seconds, "per_s": len(files) / seconds,
        "mb": sum(map(len, data)) / 2**20, "peak_rss_mb": _peak_mb(),
        "caller_cpu_ms": 1e3 * time.process_time() / len(files),
    }  # fmt: skip
    if spec["engine"] == "local" and spec["processes"] == 1:
        # The job itself, in this process: what either engine must spend.
        from connector.core.fingerprint import fingerprint_bytes

        started = time.process_time()
        for blob in data[:200]:
            fingerprint_bytes(blob, max_pixels=settings.max_pixels)
        out["job_cpu_ms"] = 1e3 * (time.process_time() - started) / min(200, len(data))
    return out


def step_pixelcheck(_location: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a pixel check costs on real 384 px thumbnails, which the synthetic
    index lacks: pairs of renditions of one photo (near-copies) and of two
    photos (codes agreeing by chance), each checked in this process."""
    from connector.core.fingerprint import fingerprint_bytes
    from connector.engine.settle import pixel_check_job

    files = sorted(Path(spec["folder"]).glob("*.jpg"))
    thumbs = [fingerprint_bytes(path.read_bytes()).thumb for path in files]
    pixel_check_job(thumbs[0], thumbs[1])  # imports and kernels loaded
    out: dict[str, Any] = {}
    for kind, pairs in (
        ("same_photo", [(i, i + 1) for i in range(0, len(thumbs) - 1, 2)]),
        ("other_photo", [(i, i + 2) for i in range(1, len(thumbs) - 2, 2)]),
    ):
        seconds, passed = [], 0
        for i, j in pairs:
            started = time.perf_counter()
            passed += bool(pixel_check_job(thumbs[i], thumbs[j])["passed"])
            seconds.append(time.perf_counter() - started)
        out[kind] = {
            "pairs": len(pairs), "passed": passed, "mean_ms": 1e3 * float(np.mean(seconds)),
            "p95_ms": 1e3 * float(np.percentile(seconds, 95)),
        }  # fmt: skip
    out["thumb_kb"] = sum(map(len, thumbs)) / len(thumbs) / 1024
    return out


ALL_STEPS = (
    "search", "columns", "matchindex", "rows", "rows_search", "match", "sync", "status",
    "status_changed", "clusters_changed", "status_synced", "clusters", "clusters_json",
    "webhook",
)  # fmt: skip
NEW_STEPS = {
    "match": step_match, "sync": step_sync, "cli": step_cli, "webhook": step_webhook,
    "fingerprint": step_fingerprint, "pixelcheck": step_pixelcheck,
}  # fmt: skip


def measure(
    name: str,
    location: str,
    queries: int,
    spec: dict[str, Any] | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--step", name, "--location", location]
    command += ["--queries", str(queries), "--spec", json.dumps(spec or {})]
    if profile:
        command += ["--profile-to", profile]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if profile:
        Path(profile).with_suffix(".txt").write_text(done.stderr)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average"] = os.getloadavg()[0]
    result["cpu_s"] = cpu  # the step's processes, its workers and commands included
    return result


def run_step(
    name: str, location: str, queries: int, spec: dict[str, Any], profile: str | None
) -> dict[str, Any]:
    """One step in this (child) process, under cProfile when asked."""
    _quiet()

    def run() -> dict[str, Any]:
        if name in NEW_STEPS:
            return NEW_STEPS[name](location, spec)
        return step(name, location, queries)

    if not profile:
        return run()
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(run)
    profiler.dump_stats(profile)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    return result


# -- the run ---------------------------------------------------------------------------


def base_sqlite(size: int, fresh: bool) -> str:
    """The synthetic index of `size` assets in SQLite, built unless there."""
    from connector.core.index import SQLiteStore

    path = RESULTS / f"scale_v3_{size}.sqlite"
    if fresh or not path.exists():
        for stale in RESULTS.glob(f"scale_v3_{size}.sqlite*"):
            stale.unlink()
        print(f"building {size:,} assets in {path} ...", flush=True)
        partial = path.with_suffix(".partial")
        for stale in RESULTS.glob(partial.name + "*"):
            stale.unlink()
        store = SQLiteStore(partial)
        print(f"  built in {build(store, size):.0f} s", flush=True)
        store.close()
        partial.rename(path)
    return str(path)


def base_pg(url: str, size: int, fresh: bool) -> str:
    """The synthetic index in a PostgreSQL database of its own
    (damdup_scale_v3_<size>), built unless there (a complete build is marked
    by the database's comment)."""
    import psycopg

    from connector.core.pgstore import PostgreSQLStore, close_pools

    name = f"damdup_scale_v3_{size}"
    target = url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        if row is not None and row[0] == BUILT and not fresh:
            return target
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    print(f"building {size:,} assets in PostgreSQL {name} ...", flush=True)
    store = PostgreSQLStore(target)
    print(f"  built in {build(store, size):.0f} s", flush=True)
    store.close()
    close_pools(target)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"COMMENT ON DATABASE {name} IS '{BUILT}'")
    return target


def work_copy(base: str, url: str | None, reuse: bool = False, tag: str = "") -> str:
    """A copy of the index that the steps change (pairs settled, assets
    added): the base stays as built, for the next run. `reuse`: the copy a
    --keep-work run left, where there is one."""
    if base.startswith("postgresql"):
        import psycopg

        name = base.rsplit("/", 1)[1]
        work = name.replace("damdup_scale_v3_", "damdup_scale_work_") + (f"_{tag}" if tag else "")
        with psycopg.connect(url or base, autocommit=True) as admin:
            there = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (work,))
            if reuse and there.fetchone() is not None:
                return base.rsplit("/", 1)[0] + "/" + work
            admin.execute(f"DROP DATABASE IF EXISTS {work}")
            admin.execute(f"CREATE DATABASE {work} TEMPLATE {name}")
        return base.rsplit("/", 1)[0] + "/" + work
    path = Path(base)
    work_path = path.with_name(
        path.name.replace("scale_v3_", "scale_work_").replace(".sqlite", f"{tag}.sqlite")
    )
    if reuse and work_path.exists():
        return str(work_path)
    for stale in RESULTS.glob(work_path.name + "*"):
        stale.unlink()
    shutil.copyfile(path, work_path)
    return str(work_path)


def drop_work(url: str, work: str) -> None:
    import psycopg

    from connector.core.pgstore import close_pools

    close_pools(work)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {work.rsplit('/', 1)[1]}")


def run_size(label: str, base: str, size: int, top: bool, args: Any) -> dict[str, Any]:
    """Every step at one size on one store; the changing ones on a copy."""
    rows: dict[str, Any] = {}

    def one(name: str, step_name: str, location: str, spec: dict[str, Any] | None = None) -> None:
        print(f"  {label} {name} at {size:,} ...", flush=True)
        profile = None
        if name in args.profile:
            profile = str(RESULTS / f"scale_{name}_{label}_{size}.prof")
        rows[name] = {"n": size, **measure(step_name, location, args.queries, spec, profile)}
        print(f"    {rows[name]}", flush=True)

    wanted = set(args.steps)
    reading = ["search"] + (["columns", "matchindex"] if top else [])
    reading += ["rows", "rows_search"] if args.old and top else []
    for name in reading:
        if name in wanted:
            one(name, name, base)
    changing = [
        ("match", "match", {"workers": args.workers}),
        ("sync", "sync", {"n": size, "new": args.new, "workers": args.workers}),
        ("status", "cli", {"args": ["status"]}),
        ("clusters", "cli", {"args": ["clusters", "--cross-unit"]}),
        ("status_changed", "cli", {"args": ["status"], "changed": "decision"}),
        ("clusters_changed", "cli", {"args": ["clusters", "--cross-unit"], "changed": "decision"}),
        (
            "status_synced",
            "cli",
            {
                "args": ["status"],
                "changed": "sync",
                "n": size,
                "new": args.new,
                "workers": args.workers,
            },
        ),
        ("clusters_json", "cli", {"args": ["clusters", "--cross-unit", "--format", "json"]}),
    ]
    if top and args.checks:
        folder = hook_folder(args.checks, args.hook_side)
        changing.append(("webhook", "webhook", {"folder": str(folder)}))
    changing = [step_ for step_ in changing if step_[0] in wanted]
    if not changing:
        return rows
    # Without the match, the steps run on the copy a --keep-work run left.
    work = work_copy(base, args.pg, reuse="match" not in wanted, tag=args.tag)
    try:
        for name, step_name, spec in changing:
            one(name, step_name, work, spec)
    finally:
        if not args.keep_work:
            if work.startswith("postgresql"):
                drop_work(args.pg, work)
            else:
                for stale in RESULTS.glob(Path(work).name + "*"):
                    stale.unlink()
    return rows


# -- real renditions: fingerprint throughput, webhook checks ----------------------------


def renditions(
    count: int, folder: Path, side: int = 1024, per_photo: int = 1, prefix: str = "r"
) -> Path:
    """`count` distinct JPEGs of about `side` px made from the fixture photos,
    `per_photo` from each (a random crop of 70-100 % of each side, resized,
    quality 80-92)."""
    from PIL import Image

    if folder.exists() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    photos = sorted(p for p in (ROOT / "fixtures" / "photos").rglob("*") if p.is_file())
    rng = np.random.default_rng(SEED + 3)
    made = 0
    while made < count:
        source = photos[(made // per_photo) % len(photos)]
        try:
            with Image.open(source) as image:
                image.load()
                rgb = image.convert("RGB")
        except OSError:
            photos.remove(source)
            continue
        w, h = rgb.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = rgb.crop((x, y, x + cw, y + ch))
        long_side = int(side * rng.uniform(0.94, 1.06))
        scale = long_side / max(cw, ch)
        crop = crop.resize(
            (max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.LANCZOS
        )
        crop.save(folder / f"{prefix}{made:05d}.jpg", "JPEG", quality=int(rng.integers(80, 93)))
        made += 1
    return folder


def hook_folder(count: int, side: int = 800) -> Path:
    """The notified assets: two renditions of each of count/2 fixture photos
    (the second finds the first and settles it with the pixel check), of
    about `side` px; another side gives other files, new to an index that
    was checked before (a check of a known, unchanged asset does little)."""
    name = f"scale_hooks_{count}" + (f"_{side}" if side != 800 else "")
    prefix = "r" if side == 800 else f"s{side}-"
    return renditions(count, RESULTS / name, side=side, per_photo=2, prefix=prefix)


def start_worker(broker: str, processes: int, log: Path) -> subprocess.Popen[bytes]:
    """`damdup worker --concurrency N` on the broker (its log at the default
    level: -v would log every result), once it answers with its processes."""
    from connector.core.settings import Settings
    from connector.engine.celery_app import make_app
    from connector.engine.celery_pool import worker_processes

    with log.open("wb") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "worker", "--concurrency", str(processes)],
            stdout=handle, stderr=subprocess.STDOUT, cwd=RESULTS,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DAMDUP_BROKER": broker},
        )  # fmt: skip
    app = make_app(Settings(engine="celery", broker=broker))
    deadline = time.monotonic() + 120
    try:
        while worker_processes(app, broker, fresh=True) < processes:
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.kill()
                raise RuntimeError(f"worker not ready: {log.read_text()[-500:]}")
            time.sleep(0.5)
    finally:
        app.close()
    return worker


def fingerprint_throughput(count: int, broker: str) -> dict[str, Any]:
    folder = renditions(count, RESULTS / f"scale_renditions_{count}")
    out: dict[str, Any] = {}
    for processes in (1, 2):
        spec = {"folder": str(folder), "engine": "local", "processes": processes}
        print(f"  fingerprints: local pool, {processes} process(es) ...", flush=True)
        out[f"local_{processes}"] = measure("fingerprint", "-", 0, spec)
        print(f"    {out[f'local_{processes}']}", flush=True)
        print(f"  fingerprints: Celery, 1 worker with {processes} process(es) ...", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker = start_worker(broker, processes, RESULTS / f"scale_worker_{processes}.log")
        try:
            spec |= {"engine": "celery", "broker": broker}
            out[f"celery_{processes}"] = measure("fingerprint", "-", 0, spec)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        celery = out[f"celery_{processes}"]
        if "files" in celery:
            # The worker and its processes, start and warm-up included.
            used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            celery["worker_cpu_ms"] = 1e3 * (used - celery["cpu_s"]) / celery["files"]
        print(f"    {out[f'celery_{processes}']}", flush=True)
    print("  pixel check on real thumbnails ...", flush=True)
    out["pixelcheck"] = measure("pixelcheck", "-", 0, {"folder": str(hook_folder(40))})
    print(f"    {out['pixelcheck']}", flush=True)
    return out


# -- the report ---------------------------------------------------------------------------


def _f(row: dict[str, Any], key: str, digits: int = 1) -> str:
    value = row.get(key)
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return "-"


def table(label: str, sizes: dict[str, Any]) -> list[str]:
    out = []
    for size_text, rows in sizes.items():
        size = int(size_text)
        tag = f"{label} {size:>9,}"
        for name, row in rows.items():
            if "error" in row:
                out.append(f"{tag} {name:<10} error: {row['error']}")
        search, match, sync = rows.get("search", {}), rows.get("match", {}), rows.get("sync", {})
        if "search_s" in search:
            out.append(
                f"{tag} search     load {_f(search, 'load_s')} s + find_candidates "
                f"{_f(search, 'search_s')} s, peak {_f(search, 'peak_rss_mb', 0)} MB, "
                f"{search.get('candidates', 0):,} candidates  [load {_f(search, 'load_average')}]"
            )
        if "match_s" in match:
            m = match
            out.append(
                f"{tag} match      {_f(m, 'match_s')} s (load {_f(m, 'load_s')} + search "
                f"{_f(m, 'search_s')} + settle {_f(m, 'settle_s')}: {m['evaluated']:,} pairs, "
                f"{m['pixel_checks']:,} pixel checks) + clusters {_f(m, 'cluster_s')} s = "
                f"{m['match_s'] + m['cluster_s']:.1f} s, peak {_f(m, 'peak_rss_mb', 0)} MB "
                f"(match alone {_f(m, 'match_peak_rss_mb', 0)})  [load {_f(m, 'load_average')}]"
            )
            out.append(f"{tag}            tiers {m['tiers']}, {m['clusters']:,} clusters")
        if "sync_s" in sync:
            y = sync
            out.append(
                f"{tag} sync +new  {_f(y, 'sync_s')} s (save {_f(y, 'save_s')}, of which reads "
                f"before the first page {_f(y, 'prepare_s')}, + match "
                f"{_f(y, 'match_s')}: load {_f(y, 'load_s')} + search {_f(y, 'search_s')} "
                f"({y.get('searched') or 'whole index'}), {y['evaluated']:,} new pairs "
                f"settled in {_f(y, 'settle_s')}) + summary's clusters "
                f"{_f(y, 'summary_s') if 'summary_s' in y else _f(y, 'cluster_s')} s, "
                f"peak {_f(y, 'peak_rss_mb', 0)} MB  [load {_f(y, 'load_average')}]"
            )
        for name in (
            "status", "clusters", "clusters_json", "status_changed", "clusters_changed",
            "status_synced",
        ):  # fmt: skip
            row = rows.get(name, {})
            if "command_s" in row:
                out.append(
                    f"{tag} {name:<14} {_f(row, 'command_s')} s whole process "
                    f"({_f(row, 'command_cpu_s')} s CPU), peak "
                    f"{_f(row, 'command_peak_rss_mb', 0)} MB  [load {_f(row, 'load_average')}]"
                )
        hook = rows.get("webhook", {})
        if "check_p95_ms" in hook:
            out.append(
                f"{tag} webhook    {hook['checks']} checks p50 {_f(hook, 'check_p50_ms', 0)} ms, "
                f"p95 {_f(hook, 'check_p95_ms', 0)} ms (warm {_f(hook, 'warm_s')} s), "
                f"{hook['roles']}  [load {_f(hook, 'load_average')}]"
            )
        mi = rows.get("matchindex", {})
        if "p50_ms" in mi:
            out.append(
                f"{tag} MatchIndex build {mi['build_s']:.1f} s after a {mi['load_s']:.1f} s load; "
                f"{mi['queries']:,} queries p50 {mi['p50_ms']:.2f} ms, p95 {mi['p95_ms']:.2f} ms"
            )
        for name in ("rows", "rows_search"):
            row = rows.get(name, {})
            if "load_s" in row:
                out.append(
                    f"{tag} {name:<10} load {_f(row, 'load_s')} s search {_f(row, 'search_s')} s, "
                    f"peak {_f(row, 'peak_rss_mb', 0)} MB (before the columns)"
                )
    return out


GROWTH = (
    ("search", "search_s"), ("match", "match_s"), ("match", "settle_s"), ("match", "cluster_s"),
    ("sync", "sync_s"), ("status", "command_s"), ("status", "command_cpu_s"),
    ("status_changed", "command_s"), ("clusters_changed", "command_s"),
    ("status_synced", "command_s"), ("clusters", "command_s"), ("clusters_json", "command_s"),
)  # fmt: skip


def growth(label: str, sizes: dict[str, Any]) -> list[str]:
    """The exponent k of seconds ~ n^k (least squares on log-log) per figure."""
    if len(sizes) < 2:
        return []
    parts = []
    for name, key in GROWTH:
        points = [
            (int(size), rows[name][key])
            for size, rows in sizes.items()
            if isinstance(rows.get(name, {}).get(key), float) and rows[name][key] > 0
        ]
        if len(points) >= 2:
            x = np.log([p[0] for p in points])
            y = np.log([p[1] for p in points])
            slope = float(np.polyfit(x, y, 1)[0])
            parts.append(f"{name}.{key.removesuffix('_s')} n^{slope:.2f}")
    return [f"{label} growth over {', '.join(f'{int(s):,}' for s in sizes)}: " + ", ".join(parts)]


def fingerprint_lines(found: dict[str, Any]) -> list[str]:
    lines = []
    for processes in (1, 2):
        local, celery = found.get(f"local_{processes}", {}), found.get(f"celery_{processes}", {})
        if "seconds" in local and "seconds" in celery:
            lines.append(
                f"fingerprints {local['files']:,} renditions, {processes} process(es): local "
                f"{local['per_s']:.1f}/s, Celery {celery['per_s']:.1f}/s, Celery's overhead "
                f"{100 * (celery['seconds'] / local['seconds'] - 1):+.1f} %  "
                f"[load {_f(local, 'load_average')} / {_f(celery, 'load_average')}]"
            )
        else:
            lines.append(f"fingerprints {processes}: {local} {celery}")
    local, celery = found.get("local_1", {}), found.get("celery_1", {})
    if "job_cpu_ms" in local and "worker_cpu_ms" in celery:
        lines.append(
            f"CPU per fingerprint: the job {local['job_cpu_ms']:.1f} ms; the caller's process "
            f"{local['caller_cpu_ms']:.1f} ms (local pool) / {celery['caller_cpu_ms']:.1f} ms "
            f"(Celery); Celery's worker {celery['worker_cpu_ms']:.1f} ms, i.e. "
            f"{celery['worker_cpu_ms'] - local['job_cpu_ms']:+.1f} ms over the job"
        )
    check = found.get("pixelcheck", {})
    for kind in ("same_photo", "other_photo"):
        if kind in check:
            row = check[kind]
            lines.append(
                f"pixel check, real {check['thumb_kb']:.0f} KB thumbnails, {kind}: "
                f"{row['pairs']} pairs, mean {row['mean_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms "
                f"[load {_f(check, 'load_average')}]"
            )
    return lines


def report(paths: list[str]) -> None:
    """The tables of results files, merged per store and size."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        print(f"# {results['command']}")
        if "fingerprints" in results:
            print("\n".join(fingerprint_lines(results["fingerprints"])))
        for store in ("sqlite", "postgresql"):
            for size, rows in results.get(store, {}).items():
                merged.setdefault(store, {}).setdefault(size, {}).update(rows)
    for store, sizes in merged.items():
        label = "SQLite" if store == "sqlite" else "PostgreSQL"
        ordered_sizes = {size: sizes[size] for size in sorted(sizes, key=int)}
        print("\n".join(table(label, ordered_sizes) + growth(label, ordered_sizes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument(
        "--also", default="", help="smaller sizes for the growth, e.g. 100000,300000"
    )
    parser.add_argument("--new", type=int, default=1000, help="assets of the incremental sync")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the match")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=40, help="webhook checks (0: none)")
    parser.add_argument("--hook-side", type=int, default=800, help="px of the checked files")
    parser.add_argument("--fingerprints", type=int, default=2000, help="renditions (0: none)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--pg", default=None, help="URL of a database on the server to use")
    parser.add_argument("--fresh", action="store_true", help="rebuild the indexes")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--old", action="store_true", help="also the row-dict load and search")
    parser.add_argument(
        "--profile", default="", help="steps to run under cProfile, e.g. match,sync"
    )
    parser.add_argument("--steps", default=",".join(ALL_STEPS), help="steps to run")
    parser.add_argument("--keep-work", action="store_true", help="keep the changed copies")
    parser.add_argument("--tag", default="", help="suffix of the results file's name")
    parser.add_argument("--report", nargs="*", help="print the tables of saved results")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--location", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        spec = json.loads(args.spec)
        print(json.dumps(run_step(args.step, args.location, args.queries, spec, args.profile_to)))
        return 0
    if args.report:
        report(args.report)
        return 0
    args.profile = [name for name in args.profile.split(",") if name]
    args.steps = [name for name in args.steps.split(",") if name]
    n = args.n
    sizes = sorted({n, *(int(size) for size in args.also.split(",") if size)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "command": command, "n": n, "sizes": sizes, "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg()[0],
    }  # fmt: skip
    lines: list[str] = []
    if args.fingerprints:
        found = fingerprint_throughput(args.fingerprints, args.broker)
        results["fingerprints"] = found
        lines += fingerprint_lines(found)
    stores = [] if args.no_sqlite else ["sqlite"]
    stores += ["postgresql"] if args.pg else []
    for store in stores:
        label = "SQLite" if store == "sqlite" else "PostgreSQL"
        results[store] = {}
        for size in sizes:
            base = (
                base_sqlite(size, args.fresh)
                if store == "sqlite"
                else base_pg(args.pg, size, args.fresh)
            )
            results[store][str(size)] = run_size(store, base, size, size == n, args)
        lines += table(label, results[store])
        lines += growth(label, results[store])
    results["load_average_end"] = os.getloadavg()[0]
    print()
    print(f"$ .venv/bin/python {command}")
    print("\n".join(lines))
    print(
        f"peak RSS: ru_maxrss of a fresh child process per step (interpreter, numpy, numba "
        f"kernels included); target {TARGET_MB:,} MB. [load: 1-minute load average at the "
        f"end of each step]; {results['load_average_start']:.1f} at start, "
        f"{results['load_average_end']:.1f} at end (2 shared cores)"
    )
    name = "_".join(stores) or "fingerprints"
    path = RESULTS / f"scale_{n}_{name}{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
