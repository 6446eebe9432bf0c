"""Image bytes a sync fetches, per platform: a first sync, an unchanged re-sync
(incremental where the platform can, and a full listing), and the first sync's
bytes as a share of the originals' total (target <= 10 % where renditions exist).

The peer is what a folder-based tool must do with a platform: download every
original, on every run (imagededup and plain imagehash read local files).

    .venv/bin/python bench/sync.py [--photos 10] [--long-side 4000] [--grain 3]

Servers: the real WordPress (needs `make servers`) and the emulators of
tests/servers/, all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imagehash
import structlog
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.registry import ADAPTERS
from connector.core.fingerprint import DECODE_SIDE
from connector.core.index import IndexStore
from connector.core.store import open_store
from connector.engine.pool import Limits, WorkerPool
from connector.engine.sync import SyncStats, sync_unit
from tests.contract.harness import HARNESSES, start_harness
from tests.servers.common import photo_paths, upscaled


def sync(store: IndexStore, adapter: Any, pool: WorkerPool, full: bool) -> SyncStats:
    return sync_unit(
        store, adapter, "bench", pool, max_pixels=200_000_000, max_bytes=256 * 2**20, full=full
    )


def plain_imagehash(adapter: Any) -> tuple[int, float]:
    """The peer: list the same way, download every original, pHash it with
    plain imagehash (one full decode each). Bytes and seconds."""
    started = time.perf_counter()
    fetched = 0
    for page in adapter.iter_pages(None):
        for ref in page.items:
            data = adapter.fetch_original(ref)
            fetched += len(data)
            with Image.open(io.BytesIO(data)) as image:
                imagehash.phash(image)
    return fetched, time.perf_counter() - started


def measure(platform: str, photos: list[bytes]) -> dict[str, Any]:
    server = start_harness(platform)
    try:
        for number, data in enumerate(photos):
            server.add(f"photo-{number:02d}.jpg", data)
        # A platform keeps its renditions on disk; the emulators make theirs on
        # the first request. Ask once, untimed, so that the clock measures damdup.
        warm = server.adapter()
        for page in warm.iter_pages(None):
            for ref in page.items:
                warm.fetch(ref, DECODE_SIDE)
        with tempfile.TemporaryDirectory() as folder, WorkerPool(2, Limits(seconds=120)) as pool:
            store = open_store(Path(folder) / "index.sqlite", create=True)
            list(pool.map(len, [("warm-up", (b"",))], str))  # workers up before the clock
            started = time.perf_counter()
            first = sync(store, server.adapter(), pool, full=False)
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            again = sync(store, server.adapter(), pool, full=False)
            again_s = time.perf_counter() - started
            full = sync(store, server.adapter(), pool, full=True)
            store.close()
        peer_bytes, peer_s = plain_imagehash(server.adapter())
        capabilities = server.adapter().capabilities
    finally:
        server.close()
    total = sum(len(data) for data in photos)
    return {
        "platform": platform,
        "renditions": capabilities.renditions,
        "incremental": capabilities.incremental,
        "assets": first.listed,
        "originals": total,
        "first": first.fetched_bytes,
        "share": first.fetched_bytes / total,
        "again": again.fetched_bytes,
        "again_listed": again.listed,
        "full": full.fetched_bytes,
        "errors": first.errors + again.errors + full.errors,
        "first_s": first_s,
        "again_s": again_s,
        "peer_bytes": peer_bytes,
        "peer_s": peer_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--long-side", type=int, default=4000, help="12 MP at 4000x3000")
    parser.add_argument("--grain", type=float, default=3.0, help="sensor-like noise (0: none)")
    parser.add_argument("--platform", action="append", choices=sorted(HARNESSES))
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    photos = [
        upscaled(p, args.long_side, quality=92, grain=args.grain)
        for p in photo_paths(variant="original")[: args.photos]
    ]
    mb = 1024 * 1024
    print(
        f"{len(photos)} photos, long side {args.long_side} px, grain {args.grain}: "
        f"{sum(map(len, photos)) / mb:.1f} MB of originals per platform, "
        f"{sum(map(len, photos)) / len(photos) / mb:.2f} MB each on average\n"
    )
    header = (
        f"{'platform':<14} {'renditions':>10} {'first sync':>11} {'share':>7} "
        f"{'re-sync':>8} {'listed':>6} {'full re-sync':>12} {'naive/run':>10} {'ratio':>7} "
        f"{'damdup s':>8} {'re-sync s':>9} {'peer s':>7} {'time ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    order = [
        "wordpress", "drupal", "resourcespace", "finna", "sharepoint", "nextcloud", "ckan",
        "linked_events", "s3", "azure_blob", "webdav", "filesystem",
    ]  # fmt: skip
    assert sorted(order) == sorted(ADAPTERS), "every adapter is measured"
    for platform in args.platform or order:
        row = measure(platform, photos)
        ratio = row["originals"] / row["first"] if row["first"] else float("inf")
        print(
            f"{platform:<14} {row['renditions']!s:>10} {row['first'] / mb:>9.2f}MB "
            f"{row['share']:>6.1%} {row['again']:>7,}B {row['again_listed']:>6} "
            f"{row['full']:>11,}B {row['peer_bytes'] / mb:>8.2f}MB {ratio:>6.1f}x "
            f"{row['first_s']:>8.2f} {row['again_s']:>9.2f} {row['peer_s']:>7.2f} "
            f"{row['peer_s'] / row['first_s']:>9.1f}x"
            + (f"  ({row['errors']} errors)" if row["errors"] else "")
        )
        if row["renditions"]:
            worst = max(worst, row["share"])
    print(
        "\nshare: first sync's image bytes / originals' bytes (target <= 10 % with renditions);"
        "\nre-sync and full re-sync: image bytes of an unchanged re-sync (target 0);"
        "\nnaive/run: bytes the peer (plain imagehash on downloaded originals, as a folder-"
        "\n  based tool must work) fetches on every run; ratio: those / damdup's first sync;"
        "\ndamdup s / re-sync s: wall-clock of damdup's first sync (2 worker processes: all"
        "\n  fingerprints, payload digests, capture facts) and of an unchanged re-sync;"
        "\npeer s: the peer's run (one process, pHash only); time ratio: peer s / damdup s."
    )
    print(f"\nworst share where renditions exist: {worst:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
