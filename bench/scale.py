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


# -- the synthetic index ----------------------------------------------------------


def _flip(rng: np.random.Generator, codes: npt.NDArray[np.uint64], low: int, high: int) -> Any:
    """Each code with `low`..`high` random bits flipped (a repeated bit flips back)."""
    out = codes.copy()
    flips = rng.integers(low, high + 1, size=codes.size)
    for round_ in range(high):
        bit = rng.integers(0, 64, size=codes.size).astype(np.uint64)
        out = np.where(flips > round_, out ^ (np.uint64(1) << bit), out)
    return out


def synthetic(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    top = np.iinfo(np.uint64).max
    near = rng.random(n) < 0.05
    source = rng.integers(0, n, size=n)
    data: dict[str, Any] = {"near": near}
    for kind in ("phash", "dhash"):
        main = rng.integers(0, top, size=n, dtype=np.uint64, endpoint=True)
        main = np.where(near, _flip(rng, main[source], 1, 6), main)
        data[kind] = main
        data[f"{kind}_inner"] = _flip(rng, main, 0, 3)
        data[f"{kind}_trim"] = _flip(rng, main, 1, 4)
        data[f"{kind}_has_trim"] = rng.random(n) < 0.10
    data["flat"] = rng.random(n) < 0.003
    data["format"] = rng.choice(np.array(["JPEG", "PNG", "WEBP"]), size=n, p=[0.8, 0.15, 0.05])
    data["width"] = rng.integers(200, 6000, size=n)
    data["height"] = rng.integers(200, 6000, size=n)
    data["size_bytes"] = rng.integers(20_000, 20_000_000, size=n)
    data["captured"] = rng.random(n) < 0.6
    keeps_payload = near & (rng.random(n) < 0.2)
    data["payload_of"] = np.where(keeps_payload, source, np.arange(n))
    data["thumbs"] = rng.integers(0, 256, size=(n, 24), dtype=np.uint8)
    return data


def sha_of(i: int) -> str:
    return hashlib.sha256(b"damdup-scale-%d" % i).hexdigest()


def build(store: Any, n: int) -> float:
    """The synthetic index saved through the store API; seconds."""
    from connector.core.capture import CaptureFacts
    from connector.core.fingerprint import RECIPE, Fingerprint
    from connector.core.index import AssetRow

    data = synthetic(n)
    started = time.perf_counter()
    run = store.start_run("u", "sync")
    for first in range(0, n, PAGE):
        assets, prints = [], []
        for i in range(first, min(first + PAGE, n)):
            sha = sha_of(i)
            fmt = str(data["format"][i])
            payload = sha_of(-1 - int(data["payload_of"][i])) if fmt != "WEBP" else None
            row = AssetRow(
                unit="u", asset_id=f"a{i}", version="v1", url=f"file:///a{i}.jpg",
                size_bytes=int(data["size_bytes"][i]), modified=None, sha256=sha,
                error=None, metadata={}, live=True,
            )  # fmt: skip
            assets.append(row)
            codes = {
                kind: int(data[kind][i])
                for kind in ("phash", "dhash", "phash_inner", "dhash_inner")
            }
            taken = "2024:01:01 12:00:00" if data["captured"][i] else None
            fp = Fingerprint(
                sha256=sha, size_bytes=int(data["size_bytes"][i]), recipe=RECIPE,
                format=fmt, width=int(data["width"][i]), height=int(data["height"][i]),
                payload_digest=payload,
                phash_trim=int(data["phash_trim"][i]) if data["phash_has_trim"][i] else None,
                dhash_trim=int(data["dhash_trim"][i]) if data["dhash_has_trim"][i] else None,
                flat=bool(data["flat"][i]), animated=False, capture=CaptureFacts(taken_at=taken),
                thumb=data["thumbs"][i].tobytes(), **codes,
            )  # fmt: skip
            prints.append(fp)
        last = first + PAGE >= n
        store.save_page("u", run, assets, prints, [], None if last else f"page{first}")
        if (first // PAGE) % 10 == 9:
            print(f"    {first + PAGE:,} saved, {time.perf_counter() - started:.0f} s", flush=True)
    store.finish_run(run, True, {})
    return time.perf_counter() - started


# -- the steps, each in a child process ---------------------------------------------


def _peak_mb() -> float:
    import resource

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


def measure(name: str, location: str, queries: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--step", name, "--location", location]
    command += ["--queries", str(queries)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the run ---------------------------------------------------------------------------


def open_sqlite(n: int, fresh: bool, old_n: int) -> list[tuple[int, str]]:
    from connector.core.index import SQLiteStore

    out = []
    for size in sorted({n, old_n}):
        path = RESULTS / f"scale_{size}.sqlite"
        if fresh or not path.exists():
            for stale in RESULTS.glob(f"scale_{size}.sqlite*"):
                stale.unlink()
            print(f"building {size:,} assets in {path} ...", flush=True)
            store = SQLiteStore(path)
            print(f"  built in {build(store, size):.0f} s", flush=True)
            store.close()
        out.append((size, str(path)))
    return out


def open_pg(url: str, n: int, old_n: int) -> list[tuple[int, str]]:
    import psycopg

    from connector.core.pgstore import PostgreSQLStore, close_pools

    out = []
    for size in sorted({n, old_n}):
        name = f"damdup_scale_{size}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
        target = url.rsplit("/", 1)[0] + "/" + name
        print(f"building {size:,} assets in PostgreSQL {name} ...", flush=True)
        store = PostgreSQLStore(target)
        print(f"  built in {build(store, size):.0f} s", flush=True)
        store.close()
        close_pools(target)
        out.append((size, target))
    return out


def drop_pg(url: str, targets: list[tuple[int, str]]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        for _size, target in targets:
            admin.execute(f"DROP DATABASE IF EXISTS {target.rsplit('/', 1)[1]}")


def run_store(label: str, targets: list[tuple[int, str]], n: int, args: Any) -> dict[str, Any]:
    where = dict(targets)
    rows: dict[str, Any] = {}
    for name in STEPS:
        size = args.old_n if name.startswith("rows") else n
        print(f"  {label} {name} at {size:,} ...", flush=True)
        rows[name] = {"n": size, **measure(name, where[size], args.queries)}
        print(f"    {rows[name]}", flush=True)
    return rows


def table(label: str, rows: dict[str, Any], n: int) -> list[str]:
    def scaled(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if not isinstance(value, float):
            return "-"
        if row["n"] != n:  # linear in the rows, the interpreter's own part left as it is
            base = row.get("start_rss_mb", 0.0) if key == "peak_rss_mb" else 0.0
            return f"~{base + (value - base) * n / row['n']:,.0f}*"
        return f"{value:,.0f}" if key == "peak_rss_mb" else f"{value:.1f}"

    out = [
        f"{label}: {'step':<12} {'rows':>10} {'load s':>8} {'search s':>9} {'peak RSS MB':>12} "
        f"{'candidates':>11} {'vs columns':>10}",
    ]
    ours = rows["search"].get("peak_rss_mb")
    for name in STEPS:
        row = rows[name]
        if "error" in row:
            out.append(f"{label}: {name:<12} {row['n']:>10,} error: {row['error']}")
            continue
        candidates = f"{row['candidates']:,}" if "candidates" in row else "-"
        peak = scaled(row, "peak_rss_mb")
        ratio = "-"
        if name.startswith("rows") and isinstance(ours, float):
            figure = float(peak.strip("~*").replace(",", ""))
            ratio = f"{figure / ours:.1f}x"
        search = scaled(row, "search_s") if "search_s" in row else "-"
        out.append(
            f"{label}: {name:<12} {row['n']:>10,} {scaled(row, 'load_s'):>8} {search:>9} "
            f"{peak:>12} {candidates:>11} {ratio:>10}"
        )
    mi = rows["matchindex"]
    if "p50_ms" in mi:
        out.append(
            f"{label}: MatchIndex build {mi['build_s']:.1f} s after a {mi['load_s']:.1f} s load; "
            f"{mi['queries']:,} single-image queries p50 {mi['p50_ms']:.2f} ms, "
            f"p95 {mi['p95_ms']:.2f} ms, {mi['mean_candidates']:.1f} candidates each"
        )
    if "columns_mb" in rows["columns"]:
        out.append(f"{label}: the columns themselves: {rows['columns']['columns_mb']:.0f} MB")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--old-n", type=int, default=None)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--pg", default=None, help="URL of a database on the server to use")
    parser.add_argument("--fresh", action="store_true", help="rebuild the SQLite index")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--location", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(step(args.step, args.location, args.queries)))
        return 0
    n = args.n
    args.old_n = args.old_n or n
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "command": command, "n": n, "old_n": args.old_n, "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg()[0],
    }  # fmt: skip
    lines: list[str] = []
    if not args.no_sqlite:
        targets = open_sqlite(n, args.fresh, args.old_n)
        results["sqlite"] = run_store("sqlite", targets, n, args)
        lines += table("SQLite", results["sqlite"], n)
    if args.pg:
        targets = open_pg(args.pg, n, args.old_n)
        try:
            results["postgresql"] = run_store("postgresql", targets, n, args)
        finally:
            if not args.keep:
                drop_pg(args.pg, targets)
        lines += table("PostgreSQL", results["postgresql"], n)
    results["load_average_end"] = os.getloadavg()[0]
    print()
    print(f"$ .venv/bin/python {command}")
    print("\n".join(lines))
    print(
        f"* extrapolated linearly from {args.old_n:,} rows to {n:,}"
        if args.old_n != n
        else f"every step at {n:,} rows"
    )
    print(
        f"peak RSS: ru_maxrss of a fresh child process per step (interpreter, numpy, numba "
        f"kernels included); target {TARGET_MB:,} MB. load average "
        f"{results['load_average_start']:.1f} at start, {results['load_average_end']:.1f} "
        f"at end (2 shared cores)"
    )
    stores = "_".join(store for store in ("sqlite", "postgresql") if store in results)
    path = RESULTS / f"scale_{n}_{stores}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
