"""Notification -> verdict stored, and `damdup lookup`, against a 100,000-asset index.

    .venv/bin/python bench/webhook.py [--assets 100000] [--notifications 60]
                                      [--lookups 60] [--threads 1] [--fresh]
                                      [--sync-beside [photos|copies]]

The index: every labelled fixture photo fingerprinted for real (so a notified
copy finds its original and the other variants, and settles them with the
pixel check), plus synthetic rows up to --assets: random codes (pHash with
its 32 set bits, dHash, central-part variants a few bits away) with a real
fixture thumbnail each (≈28 KB, the real size), spread over eleven units and
inserted in bulk through the store's `save_page`, then matched and clustered
as the daemon does after each sync (which keeps each group's lineage and how
its copies relate in the index). It is cached in bench/results/ and reused
(checks add a few rows) unless --fresh.

The notified asset sits on the Drupal emulator on 127.0.0.1 (tests/servers/),
uploaded as a 2000 px JPEG, so the check describes it by id, fetches its
≥384 px rendition, fingerprints it, matches it against the whole index,
settles the candidates, builds its component's clusters and pushes (a dry
run: reads of the marks) exactly as `damdup serve` would. Timed from
`start_check` (the notification accepted) to the verdict stored. The first
`Checker.warm()` (search structure and worker processes, as at server start)
is timed apart.

With --sync-beside, another unit syncs into the same index throughout, as the
daemon would beside `damdup serve`: `damdup scan` (its own process, 2 workers)
of 225 photos as unit "beside", again and again, each round's files made new
content by a trailer after the JPEG's end (so every round fingerprints them
all and settles their candidates). It runs at the daemon's priority: `damdup
daemon` lowers its own by BACKGROUND_NICE (`--nice`), and its sync workers by
as much again. What the other unit holds:
- `photos` (the default): photos new to the index, the labelled fixture
  photos mirrored (a mirror image is no copy to the matcher, as the sync's
  own report shows), with the same groups among themselves: a sync's work,
  beside checks of other pictures.
- `copies`: the labelled fixture photos themselves, so every group a check
  meets also gains the other unit's copies, new to its lineage, while it is
  checked (the worst case: the checks and the sync work on the same groups).

When connector/webhooks.py exists, the same is measured through HTTP as
well, from a fresh copy of the same index with the very same uploads (new
asset ids) and a sync beside of its own, so that the two differ by HTTP
alone (before, the HTTP checks ran second, into groups the first ones had
grown): a signed `POST /hooks/museum` (202), the check's record polled every
20 ms until its verdict is stored (the server runs in this process: polling
it every 5 ms took a share of its CPU; 20 ms adds at most that much to a time);
and `POST /api/lookup` uploads.

Peers, side by side in the same run: the candidate search of one query
against the whole index (the notified photos' and the looked-up files'
fingerprints), through the Checker's own structure (`MatchIndex.candidates`,
HammingIndex queries of every pHash/dHash variant within CANDIDATE_RADIUS),
against numpy brute force (XOR + popcount of the query's variants against
every variant of every fingerprint; the same candidate set, asserted) and
against plain `imagehash` (`query - h` over an `ImageHash` per pHash, the
main pHash only). Printed as a second table with p50 ratios, and written
with the other numbers to bench/results/webhook.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.core.capture import CaptureFacts  # noqa: E402
from connector.core.fingerprint import (  # noqa: E402
    RECIPE,
    Fingerprint,
    fingerprint_bytes,
)
from connector.core.index import AssetRow, IndexStore  # noqa: E402
from connector.core.settings import Settings  # noqa: E402
from connector.core.store import open_store  # noqa: E402
from connector.core.tiers import CANDIDATE_RADIUS  # noqa: E402
from connector.engine.check import Checker, MatchIndex  # noqa: E402
from connector.engine.matcher import match  # noqa: E402
from connector.engine.scan import (  # noqa: E402
    BACKGROUND_NICE,
    OriginalReader,
    current_clusters,
    worker_pool,
)
from tests.contract.harness import start_harness  # noqa: E402
from tests.servers.common import photo_paths, upscaled  # noqa: E402

try:
    from connector import webhooks
except ImportError:  # pragma: no cover - before connector/webhooks.py existed
    webhooks = None  # type: ignore[assignment]

RESULTS = ROOT / "bench" / "results"
POLL_S = 0.02  # the server runs in this process: polling it more often slows its checks
BESIDE_KINDS = {"photos": "photos new to the index", "copies": "copies of the groups checked"}
UNITS = [f"unit{number:02d}" for number in range(11)]
BATCH = 2000
SEED = 20261127


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    at = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[at]


def random_phash(rng: random.Random) -> int:
    """64 bits with exactly 32 set, as every pHash has (median threshold)."""
    bits = rng.sample(range(64), 32)
    return sum(1 << bit for bit in bits)


def flip(code: int, rng: random.Random, count: int) -> int:
    for bit in rng.sample(range(64), count):
        code ^= 1 << bit
    return code


def build_index(db: Path, assets: int) -> dict[str, Any]:
    """The fixture photos for real, then synthetic rows up to `assets`."""
    rng = random.Random(SEED)
    real = []
    for path in photo_paths():
        real.append((path, fingerprint_bytes(path.read_bytes())))
    thumbs = [fp.thumb for _, fp in real]
    store = open_store(db, create=True)
    started = time.perf_counter()
    try:
        rows: list[tuple[str, AssetRow, Fingerprint]] = []
        for number, (path, fp) in enumerate(real):
            unit = UNITS[number % len(UNITS)]
            rows.append((unit, _row(unit, f"real-{number}", fp, path.name), fp))
        for number in range(max(0, assets - len(real))):
            unit = UNITS[number % len(UNITS)]
            phash, dhash = random_phash(rng), rng.getrandbits(64)
            fp = Fingerprint(
                sha256=f"{rng.getrandbits(256):064x}",
                size_bytes=rng.randint(200_000, 12_000_000),
                recipe=RECIPE,
                format="JPEG",
                width=rng.choice([6000, 4000, 3000, 1920]),
                height=rng.choice([4000, 2667, 2000, 1280]),
                payload_digest=f"{rng.getrandbits(256):064x}",
                phash=phash,
                dhash=dhash,
                phash_trim=None,
                dhash_trim=None,
                phash_inner=flip(phash, rng, rng.randint(4, 14)),
                dhash_inner=flip(dhash, rng, rng.randint(4, 14)),
                flat=False,
                animated=False,
                capture=CaptureFacts(),
                thumb=thumbs[number % len(thumbs)],
            )
            rows.append((unit, _row(unit, f"syn-{number}", fp, f"syn-{number}.jpg"), fp))
        for unit in UNITS:
            mine = [(row, fp) for u, row, fp in rows if u == unit]
            run = store.start_run(unit, "sync")
            for start in range(0, len(mine), BATCH):
                chunk = mine[start : start + BATCH]
                last = start + BATCH >= len(mine)
                store.save_page(
                    unit,
                    run,
                    [row for row, _ in chunk],
                    [fp for _, fp in chunk],
                    [],
                    None if last else f"page-{start}",
                )
            store.finish_run(run, True, {"listed": len(mine)})
        count = sum(status.live_assets for status in store.unit_status().values())
        inserted = time.perf_counter() - started
        # What the daemon does after each sync: match, then cluster (which
        # also finds and keeps each group's lineage), so that the index a
        # server checks against is one a daemon keeps.
        settings = Settings(db=db, workers=2)
        with worker_pool(settings, background=True) as pool:
            match(store, pool, OriginalReader(store, {}), max_pixels=settings.max_pixels)
        clusters, _ = current_clusters(store, settings)
    finally:
        store.close()
    return {
        "assets": count,
        "real": len(real),
        "seconds": inserted,
        "clustered_s": time.perf_counter() - started - inserted,
        "clusters": len(clusters),
    }


def _row(unit: str, asset_id: str, fp: Fingerprint, name: str) -> AssetRow:
    return AssetRow(
        unit=unit,
        asset_id=asset_id,
        version="1",
        url=f"https://{unit}.example.invalid/{name}",
        size_bytes=fp.size_bytes,
        modified="2024-01-01T00:00:00+00:00",
        sha256=fp.sha256,
        error=None,
        metadata={"location": "Helsinki", "date": "2024-01-01", "department": unit},
        live=True,
    )


def mirrored(path: Path) -> bytes:
    """The photo mirrored left to right, as a JPEG: a picture the index does not hold."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        out = io.BytesIO()
        ImageOps.mirror(image.convert("RGB")).save(out, "JPEG", quality=90)
    return out.getvalue()


def measure_http(
    checker: Checker,
    server: Any,
    settings: Settings,
    db: Path,
    ids: list[str],
    lookup_files: list[Path],
) -> tuple[list[float], list[float]]:
    """The same through `damdup serve`'s routes (connector/webhooks.py): a
    signed notification answered 202, then the check's record polled until
    its verdict is stored; and lookups posted as uploads."""
    assert webhooks is not None
    import requests

    from connector.serve import make_review_server

    secret = "bench-secret-0123456789abcdef"
    service = webhooks.WebhookService(
        checker, {"museum": secret.encode()}, {"museum": server.settings()["base_url"]}, settings
    )
    http = make_review_server(db, "127.0.0.1", 0, extend=service.mount)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{http.server_port}"
    session = requests.Session()
    notified: list[float] = []
    looked: list[float] = []
    try:
        for asset_id in ids:
            body = json.dumps({"asset_id": asset_id, "event": "created"}).encode()
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                webhooks.TIMESTAMP_HEADER: stamp,
                webhooks.SIGNATURE_HEADER: webhooks.sign(secret.encode(), stamp, body),
            }
            started = time.perf_counter()
            reply = session.post(f"{base}/hooks/museum", data=body, headers=headers, timeout=30)
            assert reply.status_code == 202, reply.text
            href = reply.json()["href"]
            deadline = started + 60
            while True:
                record = session.get(base + href, timeout=30).json()
                if record["status"] != "queued":
                    break
                assert time.perf_counter() < deadline, f"no verdict for {asset_id} in 60 s"
                time.sleep(POLL_S)
            notified.append(time.perf_counter() - started)
            assert record["status"] == "done", record
        for path in lookup_files:
            started = time.perf_counter()
            reply = session.post(
                f"{base}/api/lookup",
                files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                timeout=30,
            )
            looked.append(time.perf_counter() - started)
            assert reply.status_code == 200, reply.text
    finally:
        http.shutdown()
        http.server_close()
        service.close()  # also closes the checker
    return notified, looked


def query_fingerprints(
    store: IndexStore, notified: list[str], looked_up: list[bytes]
) -> list[Fingerprint]:
    """The fingerprints the checks and lookups searched with: the notified
    assets' as stored by their checks, the looked-up files' computed again
    (a lookup saves nothing)."""
    out: list[Fingerprint] = []
    for asset_id in notified:
        asset = store.find_asset(f"museum:{asset_id}")
        assert asset is not None and asset.sha256 is not None, asset_id
        fingerprint = store.fingerprint(asset.sha256)
        assert fingerprint is not None, asset_id
        out.append(fingerprint)
    out.extend(fingerprint_bytes(data) for data in looked_up)
    return out


def as_imagehash(codes: np.ndarray) -> list[imagehash.ImageHash]:
    """64-bit codes back to 8x8 `ImageHash`es (the inverse of `hash_to_int`)."""
    bits = np.unpackbits(codes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
    return [imagehash.ImageHash(row.astype(bool).reshape(8, 8)) for row in bits]


def measure_peers(index: MatchIndex, queries: list[Fingerprint]) -> dict[str, Any]:
    """The candidate search of each query against the whole index: damdup as
    the Checker runs it, numpy brute force, plain imagehash; seconds per query."""
    radius = CANDIDATE_RADIUS
    table = index.columns()
    shas = [sha.decode() for sha in table.sha256.tolist()]

    started = time.perf_counter()
    # As MatchIndex: flat images all hash alike, so they are left out.
    variants = {kind: table.variants(kind) for kind in ("phash", "dhash")}
    brute_setup = time.perf_counter() - started

    started = time.perf_counter()
    main_phash = table.phash[:, 0].copy()
    hashes = as_imagehash(main_phash)
    imagehash_setup = time.perf_counter() - started

    def damdup(fp: Fingerprint) -> set[str]:
        return {candidate.sha256 for candidate in index.candidates(fp)}

    def damdup_bare(fp: Fingerprint) -> set[int]:
        owners: set[int] = set()
        if not fp.flat:
            for kind in ("phash", "dhash"):
                hamming = index.hash_indexes[kind]
                for code in fp.codes(kind):
                    owners.update(owner for owner, _ in hamming.query(code, radius))
        return owners

    def brute(fp: Fingerprint) -> np.ndarray:
        if fp.flat:
            return np.empty(0, dtype=np.int64)
        hits = []
        for kind in ("phash", "dhash"):
            codes_k, owners_k = variants[kind]
            for code in fp.codes(kind):
                near = np.bitwise_count(codes_k ^ np.uint64(code)) <= radius
                hits.append(owners_k[near])
        return np.unique(np.concatenate(hits))

    def plain(query: imagehash.ImageHash) -> list[int]:
        return [owner for owner, h in enumerate(hashes) if query - h <= radius]

    times: dict[str, list[float]] = {"damdup": [], "bare": [], "brute": [], "imagehash": []}
    found = {"damdup": 0, "bare": 0, "brute": 0, "imagehash": 0}
    # One untimed round of each, so no first-call cost lands in a sample.
    damdup(queries[0]), damdup_bare(queries[0]), brute(queries[0])
    plain(as_imagehash(np.array([queries[0].phash], dtype=np.uint64))[0])
    for fp in queries:
        started = time.perf_counter()
        candidates = index.candidates(fp)
        times["damdup"].append(time.perf_counter() - started)
        mine = {candidate.sha256 for candidate in candidates}

        started = time.perf_counter()
        bare = damdup_bare(fp)
        times["bare"].append(time.perf_counter() - started)

        started = time.perf_counter()
        brute_owners = brute(fp)
        times["brute"].append(time.perf_counter() - started)
        theirs = {shas[owner] for owner in brute_owners.tolist()} - {fp.sha256}
        assert mine == theirs, (
            f"candidate sets differ for {fp.sha256[:12]}: "
            f"{len(mine - theirs)} only damdup, {len(theirs - mine)} only brute force"
        )
        built = {owner for owner in brute_owners.tolist() if owner < index.built}
        assert bare == built, f"HammingIndex queries differ from brute force for {fp.sha256[:12]}"

        query = as_imagehash(np.array([fp.phash], dtype=np.uint64))[0]
        started = time.perf_counter()
        near = plain(query)
        times["imagehash"].append(time.perf_counter() - started)
        wanted = np.flatnonzero(np.bitwise_count(main_phash ^ np.uint64(fp.phash)) <= radius)
        assert near == wanted.tolist(), "imagehash disagrees with the same pHash distance"

        found["damdup"] += len(mine)
        found["bare"] += len({shas[owner] for owner in bare} - {fp.sha256})
        found["brute"] += len(theirs)
        found["imagehash"] += len({shas[owner] for owner in near} - {fp.sha256})
    return {
        "queries": len(queries),
        "rows": len(index),
        "side": index.side,
        "codes": {kind: int(codes_k.shape[0]) for kind, (codes_k, _) in variants.items()},
        "brute_setup_s": brute_setup,
        "imagehash_setup_s": imagehash_setup,
        "times": times,
        "found": found,
    }


def peer_table(peers: dict[str, Any]) -> str:
    codes = peers["codes"]
    rows = [
        (
            "damdup: `MatchIndex.candidates`, as `Checker` calls it (HammingIndex "
            "per pHash/dHash variant, side list, payload digest, both distances)",
            "damdup",
        ),
        (
            "damdup, the HammingIndex queries alone (built part only, no side list, no distances)",
            "bare",
        ),
        (
            f"numpy {np.__version__} brute force: XOR + `np.bitwise_count` over all "
            f"{codes['phash']:,} pHash + {codes['dhash']:,} dHash variants; "
            "same candidate set (asserted)",
            "brute",
        ),
        (
            f"imagehash {imagehash.__version__}: `query - h` over {peers['rows']:,} "
            "`ImageHash` objects, **main pHash only** (no dHash, no trimmed/central "
            "variants: finds fewer)",
            "imagehash",
        ),
    ]
    reference = percentile(peers["times"]["damdup"], 0.5)
    lines = [
        "| what | queries | p50 ms | p95 ms | p50 ratio (this / damdup) | candidates found |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, key in rows:
        values = peers["times"][key]
        p50 = percentile(values, 0.5)
        lines.append(
            f"| {name} | {len(values)} | {p50 * 1000:.3f} | {percentile(values, 0.95) * 1000:.3f} "
            f"| {p50 / reference:.2f} | {peers['found'][key]:,} |"
        )
    return "\n".join(lines)


def table(rows: list[tuple[str, list[float]]]) -> str:
    lines = [
        "| what | n | p50 ms | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in rows:
        ms = [value * 1000 for value in values]
        lines.append(
            f"| {name} | {len(ms)} | {percentile(ms, 0.5):.0f} | {percentile(ms, 0.95):.0f} "
            f"| {max(ms):.0f} |"
        )
    return "\n".join(lines)


class SyncBeside:
    """`damdup scan` of another unit into the same index, round after round,
    until stopped: every round's files are new content."""

    def __init__(self, db: Path, kind: str = "photos") -> None:
        self.db = db
        self.kind = kind
        self.rounds = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._scratch = tempfile.TemporaryDirectory(prefix="damdup-beside-")

    def __enter__(self) -> SyncBeside:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # the round under way is of no more use
        self._thread.join()
        self._scratch.cleanup()

    def _folder(self, number: int) -> Path:
        folder = Path(self._scratch.name) / "beside"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for n, data in enumerate(self._photos()):
            trailer = f"damdup-bench round {number}".encode()
            (folder / f"{n:03d}.jpg").write_bytes(data + trailer)
        return folder

    def _photos(self) -> list[bytes]:
        if not hasattr(self, "_made"):
            self._made = [
                path.read_bytes() if self.kind == "copies" else mirrored(path)
                for path in photo_paths()
            ]
        return self._made

    def _run(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        while not self._stop.is_set():
            folder = self._folder(self.rounds)
            self._process = subprocess.Popen(
                ["nice", "-n", str(BACKGROUND_NICE), sys.executable, "-m", "connector.cli",
                 "scan", str(folder), "--db", str(self.db), "--unit", "beside", "--workers",
                 "2", "-q"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            _out, err = self._process.communicate()
            if self._stop.is_set():
                return
            if self._process.returncode != 0:
                self.failures.append(err.strip()[-300:])
                return
            self.rounds += 1


class Phase:
    """One measured phase: a fresh copy of the cached index, a Checker on it
    as `damdup serve` holds one, and the sync beside it when asked for."""

    def __init__(
        self,
        cached: Path,
        db: Path,
        adapter: Any,
        settings: Settings,
        beside: str | None,
    ) -> None:
        for path in db.parent.glob(db.name + "*"):  # the index, its WAL, its unit locks
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        shutil.copyfile(cached, db)  # every phase starts from the same index
        self.db = db
        self.checker = Checker(db, settings, {"museum": adapter}, {"museum": False})
        self.store = open_store(db, create=False)
        self.beside = SyncBeside(db, beside) if beside else None
        self.roles: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sidecar = contextlib.ExitStack()

    def __enter__(self) -> Phase:
        if self.beside is not None:
            self._sidecar.enter_context(self.beside)
            time.sleep(3)  # its scan under way before the first check
        return self

    def __exit__(self, *exc: object) -> None:
        self._sidecar.close()
        self.checker.close()
        self.store.close()

    def notify(self, asset_id: str) -> float:
        """One check in process, timed from the notification accepted to the
        verdict stored."""
        own = open_store(self.db, create=False)
        try:
            started = time.perf_counter()
            check_id = own.start_check("museum", asset_id, "bench")
            verdict = self.checker.check("museum", asset_id, check_id)
            elapsed = time.perf_counter() - started
        finally:
            own.close()
        with self._lock:
            key = verdict.get("role") or f"error: {verdict.get('error')}"
            self.roles[key] = self.roles.get(key, 0) + 1
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument("--notifications", type=int, default=60)
    parser.add_argument("--lookups", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="checks at once")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached index")
    parser.add_argument(
        "--sync-beside",
        nargs="?",
        const="photos",
        choices=["photos", "copies"],
        help="another unit syncs into the index meanwhile: photos new to it, or copies of "
        "the groups checked",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    RESULTS.mkdir(parents=True, exist_ok=True)
    cached = RESULTS / f"webhook_index_{args.assets}_clustered.sqlite"
    db = RESULTS / "webhook_run.sqlite"
    if args.fresh or not cached.exists():
        for path in cached.parent.glob(cached.name + "*"):
            path.unlink()
        built = build_index(cached, args.assets)
        print(
            f"index: {built['assets']:,} assets ({built['real']} real fixture photos) "
            f"inserted in {built['seconds']:.1f} s; matched and clustered as the daemon "
            f"would in {built['clustered_s']:.1f} s ({built['clusters']} clusters)",
            file=sys.stderr,
        )
    server = start_harness("drupal")
    try:
        adapter = server.adapter()
        settings = Settings(db=db, workers=2)
        rng = random.Random(SEED)
        chosen = [rng.choice(photo_paths()) for _ in range(args.notifications + 1)]
        uploads = [upscaled(path, 2000, quality=90, grain=2.0) for path in chosen]
        lookup_files = [rng.choice(photo_paths()) for _ in range(args.lookups)]
        # In process first, then the very same uploads over HTTP (new asset
        # ids), each from a fresh copy of the index with its own sync beside:
        # the two differ by HTTP alone, not by groups the first grew.
        run = Phase(cached, db, adapter, settings, args.sync_beside)
        with run:
            ids = [server.add(f"upload-{n}.jpg", data, None) for n, data in enumerate(uploads)]
            started = time.perf_counter()
            run.checker.warm()  # what `damdup serve` does at start
            cold = time.perf_counter() - started
            first = run.notify(ids[0])
            if args.threads > 1:
                with ThreadPoolExecutor(args.threads) as pool:
                    warm = list(pool.map(run.notify, ids[1:]))
            else:
                warm = [run.notify(asset_id) for asset_id in ids[1:]]
            stored = [row for row in run.store.checks(limit=10_000) if row.finished_at is not None]
            assert len(stored) == len(ids), "every notification has its verdict stored"

            looked: list[float] = []
            lookup_matches = 0
            lookup_data = [
                upscaled(path, 1200, quality=85) if n % 2 else path.read_bytes()
                for n, path in enumerate(lookup_files)
            ]
            for data in lookup_data:
                started = time.perf_counter()
                answer = run.checker.lookup(data=data)
                looked.append(time.perf_counter() - started)
                lookup_matches += bool(answer["match"])

            # Peers: the candidate search alone, on the Checker's own structure.
            peers = measure_peers(
                run.checker.index.current(run.store),
                query_fingerprints(run.store, ids, lookup_data),
            )
        roles = run.roles
        beside = run.beside
        over_http: list[float] = []
        http_lookups: list[float] = []
        if webhooks is not None:
            http_run = Phase(cached, db, adapter, settings, args.sync_beside)
            with http_run:
                http_ids = [
                    server.add(f"http-{n}.jpg", data, None) for n, data in enumerate(uploads[1:])
                ]
                http_run.checker.warm()
                over_http, http_lookups = measure_http(
                    http_run.checker, server, settings, db, http_ids, lookup_files
                )
            if http_run.beside is not None and http_run.beside.failures:
                raise SystemExit(f"the sync beside failed: {http_run.beside.failures[0]}")
    finally:
        server.close()

    rows = [
        ("notification → verdict stored (warm)", warm),
        ("lookup of an image file (warm)", looked),
    ]
    if over_http:
        rows.append(("signed POST /hooks → verdict stored, over HTTP", over_http))
        rows.append(("POST /api/lookup of an image file, over HTTP", http_lookups))
    command = (
        f"`.venv/bin/python bench/webhook.py --assets {args.assets} "
        f"--notifications {args.notifications} --lookups {args.lookups} "
        f"--threads {args.threads}"
        f"{f' --sync-beside {args.sync_beside}' if args.sync_beside else ''}`"
    )
    if beside is not None and beside.failures:
        raise SystemExit(f"the sync beside failed: {beside.failures[0]}")
    alongside = (
        f" Throughout, another unit synced into the same index: {beside.rounds} whole "
        f"`damdup scan` rounds of {len(photo_paths())} new files each (2 workers; "
        f"{BESIDE_KINDS[beside.kind]}), and one more stopped when the checks ended."
        if beside is not None
        else ""
    )
    machine = (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    report = (
        f"## bench/webhook.py — {args.assets:,}-asset index\n\n"
        f"{command}\n\n"
        f"{machine}; the asset on the Drupal emulator on "
        f"127.0.0.1; checks {args.threads} at a time.{alongside}\n\n"
        + table(rows)
        + f"\n\nWarm-up (search structure over the whole index, worker processes): "
        f"{cold * 1000:.0f} ms; first check after it: {first * 1000:.0f} ms. "
        f"Verdicts: {', '.join(f'{k} {v}' for k, v in sorted(roles.items()))}. "
        f"Lookups that matched: {lookup_matches} of {len(looked)}.\n\n"
        f"### Candidate search of one query against the whole index, with peers\n\n"
        f"{command}\n\n"
        f"{machine}; one thread each, same process, same run. Queries: the "
        f"{len(ids)} notified assets' fingerprints (as stored by their checks) and "
        f"the {len(lookup_data)} looked-up files'; radius {CANDIDATE_RADIUS}. "
        f"Index: {peers['rows']:,} fingerprints ({peers['side']} in the side list "
        f"since the build).\n\n"
        + peer_table(peers)
        + f"\n\nNot in the per-query times: building the brute-force arrays "
        f"{peers['brute_setup_s'] * 1000:.0f} ms, the ImageHash list "
        f"{peers['imagehash_setup_s'] * 1000:.0f} ms (damdup's structure: the "
        f"warm-up above). Candidates found are summed over the queries, the query's "
        f"own content excluded.\n"
    )
    print(report)
    out = RESULTS / "webhook.json"
    summary = {
        name: {
            "n": len(values),
            "p50_s": percentile(values, 0.5),
            "p95_s": percentile(values, 0.95),
            "max_s": max(values),
        }
        for name, values in rows
    }
    out.write_text(
        json.dumps(
            {
                "command": command.strip("`"),
                "machine": machine,
                "warm_up_s": cold,
                "sync_beside_rounds": beside.rounds if beside is not None else None,
                "first_check_s": first,
                "rows": summary,
                "peers": {
                    **{key: value for key, value in peers.items() if key != "times"},
                    "p50_s": {k: percentile(v, 0.5) for k, v in peers["times"].items()},
                    "p95_s": {k: percentile(v, 0.95) for k, v in peers["times"].items()},
                    "times_s": peers["times"],
                },
                "report": report,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
