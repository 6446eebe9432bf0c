"""One photo, byte for byte, on the real WordPress, a shared folder, S3 (moto)
and SharePoint (the Graph emulator): every pair is `exact`, although WordPress
and SharePoint were hashed from their renditions. Only the candidates'
originals are fetched to learn it, once, counted on the platforms' proxies."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import damdup
from tests.servers.common import photo_paths, upscaled
from tests.servers.config import write_config
from tests.servers.faults import FaultProxy
from tests.servers.s3 import S3Harness
from tests.servers.sharepoint import SharePointHarness
from tests.servers.wordpress import WordPressHarness

PHOTOS = photo_paths(variant="original")


@pytest.fixture(scope="module")
def platforms() -> Iterator[dict[str, Any]]:
    made: dict[str, Any] = {}
    try:
        made["wordpress"] = WordPressHarness()
        made["s3"] = S3Harness()
        made["sharepoint"] = SharePointHarness()
        yield made
    finally:
        for harness in made.values():
            harness.close()


def downloads_of(proxy: FaultProxy, size: int) -> int:
    """Files of exactly `size` bytes the platform sent (a GET answered in full)."""
    return sum(1 for r in proxy.requests("GET") if r.status == 200 and r.response_bytes == size)


def image_bytes(proxy: FaultProxy, sizes: set[int]) -> int:
    return sum(r.response_bytes for r in proxy.requests("GET") if r.response_bytes in sizes)


def test_a_byte_copy_is_exact_on_every_platform(platforms: dict[str, Any], tmp_path: Path) -> None:
    wordpress, s3, sharepoint = platforms["wordpress"], platforms["s3"], platforms["sharepoint"]
    for harness in platforms.values():
        harness.reset()
    # Large enough that WordPress and SharePoint serve renditions (768 and
    # 800 px) instead of the file; the folder and S3 have none.
    photo = upscaled(PHOTOS[0], 1920, grain=2.0)
    other = upscaled(PHOTOS[1], 1920, grain=2.0)  # on WordPress only: no candidate
    assert len(photo) != len(other)
    ids = {
        "wp": wordpress.add("tuomiokirkko.jpg", photo),
        "s3": s3.add("tuomiokirkko.jpg", photo),
        "sp": sharepoint.add("tuomiokirkko.jpg", photo),
    }
    wordpress.add("kahvikuppi.jpg", other)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "tuomiokirkko.jpg").write_bytes(photo)
    ids["folder"] = "tuomiokirkko.jpg"
    for harness in platforms.values():
        harness.proxy.clear()

    db, config = tmp_path / "index.sqlite", tmp_path / "damdup.toml"
    env = write_config(
        config,
        db,
        {
            "wp": ("wordpress", wordpress.settings()),
            "folder": ("filesystem", {"root": str(folder)}),
            "s3": ("s3", s3.settings()),
            "sp": ("sharepoint", sharepoint.settings()),
        },
    )
    synced = json.loads(
        damdup("sync", "--config", str(config), "--format", "json", "-q", env=env).stdout
    )
    assert all(unit["errors"] == 0 for unit in synced["units"])
    # To settle the pairs: the originals of WordPress and SharePoint, once each.
    assert (synced["originals_read"], synced["originals_bytes"]) == (2, 2 * len(photo))

    clusters = json.loads(
        damdup("clusters", "--config", str(config), "--format", "json", env=env).stdout
    )["clusters"]
    assert len(clusters) == 1 and clusters[0]["tier"] == "exact"
    members = {(m["unit"], m["id"]) for m in clusters[0]["members"]}
    canonical = clusters[0]["canonical"]
    assert members | {(canonical["unit"], canonical["id"])} == set(ids.items())

    lines = damdup("export", "relations", "--format", "jsonl", "--config", str(config), env=env)
    pairs = {
        frozenset(((row["unit_a"], row["id_a"]), (row["unit_b"], row["id_b"]))): row["tier"]
        for row in map(json.loads, lines.stdout.splitlines())
    }
    every = {frozenset(pair) for pair in itertools.combinations(ids.items(), 2)}
    assert {pair: pairs.get(pair) for pair in every} == dict.fromkeys(every, "exact")

    for a, b in (("wp", "folder"), ("sp", "s3"), ("wp", "sp")):
        explained = json.loads(
            damdup(
                "explain", f"{a}:{ids[a]}", f"{b}:{ids[b]}", "--config", str(config),
                "--format", "json", env=env,
            ).stdout
        )  # fmt: skip
        assert explained["tier"] == explained["index_tier"] == "exact", explained
        assert explained["same_bytes"] is True

    # Bytes fetched: the renditions WordPress and SharePoint serve, S3's
    # object (it has no renditions), and to settle the pairs the originals
    # of WordPress and SharePoint, once each; the unrelated photo's never.
    assert downloads_of(wordpress.proxy, len(photo)) == 1
    assert downloads_of(sharepoint.proxy, len(photo)) == 1
    assert downloads_of(s3.proxy, len(photo)) == 1
    assert downloads_of(wordpress.proxy, len(other)) == 0
    print(
        f"photo {len(photo):,} bytes; originals read to settle pairs "
        f"{synced['originals_bytes']:,} bytes; S3 object {len(photo):,} bytes"
    )

    # Again: nothing changed, nothing fetched, no original read twice.
    for harness in platforms.values():
        harness.proxy.clear()
    damdup("sync", "--config", str(config), "-q", env=env)
    assert all(image_bytes(h.proxy, {len(photo), len(other)}) == 0 for h in platforms.values())
