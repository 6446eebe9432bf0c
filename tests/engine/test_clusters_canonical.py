"""The canonical is the original the others were made from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from connector.core.fingerprint import sha256_hex
from connector.core.index import AssetRow, PairRow, SQLiteStore
from connector.core.provenance import Family, Finding
from connector.core.tiers import Tier
from connector.engine.clusters import Group, Lineage, Shape, build_clusters
from connector.report.accuracy import SAME_PIXEL_KINDS, canonical_report, load_labels
from tests.conftest import FIXTURES, damdup

LABELS = load_labels(FIXTURES / "labels.json")
DERIVATIVES = (
    "reencode_q85", "reencode_q60", "resize_50", "resize_25", "webp", "crop_5", "watermark",
    "brighter_15", "darker_15",
)  # fmt: skip


def asset(index: int, sha: str, **metadata: str) -> AssetRow:
    return AssetRow(
        unit="u", asset_id=f"a{index}", version="1", url="", size_bytes=None, modified=None,
        sha256=sha, error=None, metadata=dict(metadata), live=True,
    )  # fmt: skip


COMPLETE = {"location": "Oodi", "date": "2024-01-01", "department": "kuva"}


def lineage(kind: str, same_pixels: bool = False) -> Lineage:
    def families(groups: list[Group]) -> list[Family]:
        assert [shas for shas, _sizes in groups] == [["copy", "orig"]]
        found = Finding(None if same_pixels else "orig", kind, same_pixels)
        derived = {"orig": 0, "copy": 0 if same_pixels else 1}
        return [Family(derived=derived, findings={("copy", "orig"): found})]

    return families


def test_a_derivative_never_wins_over_its_original_whatever_its_metadata() -> None:
    assets = [asset(0, "orig"), asset(1, "copy", **COMPLETE)]
    big_copy = {"orig": Shape(100, 100, "JPEG"), "copy": Shape(100, 100, "JPEG", True, 10**7)}
    pairs = [PairRow("copy", "orig", Tier.NEAR_IDENTICAL.value, 2, 2, {})]
    without, _ = build_clusters(assets, big_copy, pairs, {})
    assert without[0].canonical.sha256 == "copy"  # metadata decides when nothing else tells
    clusters, _ = build_clusters(assets, big_copy, pairs, {}, (), lineage("a watermarked copy"))
    assert clusters[0].canonical.sha256 == "orig"
    assert clusters[0].reason == "the original: the others are a watermarked copy"


def test_a_same_pixel_copy_with_complete_metadata_may_win() -> None:
    assets = [asset(0, "orig"), asset(1, "copy", **COMPLETE)]
    same = {"orig": Shape(100, 100, "JPEG", True), "copy": Shape(100, 100, "PNG")}
    pairs = [PairRow("copy", "orig", Tier.SAME_PIXELS.value, 0, 0, {})]
    found = lineage("a copy with the same pixels", same_pixels=True)
    clusters, _ = build_clusters(assets, same, pairs, {}, (), found)
    assert clusters[0].canonical.sha256 == "copy"
    assert "complete mandatory metadata" in clusters[0].reason


def test_the_authoritative_unit_still_comes_first() -> None:
    assets = [asset(0, "orig"), replace_unit(asset(1, "copy"), "kuva")]
    shapes = {"orig": Shape(100, 100, "JPEG"), "copy": Shape(100, 100, "JPEG")}
    pairs = [PairRow("copy", "orig", Tier.NEAR_IDENTICAL.value, 2, 2, {})]
    clusters, _ = build_clusters(assets, shapes, pairs, {}, ["kuva"], lineage("a copy"))
    assert clusters[0].canonical.sha256 == "copy"


def replace_unit(row: AssetRow, unit: str) -> AssetRow:
    from dataclasses import replace

    return replace(row, unit=unit)


def test_canonical_is_the_original_on_the_labelled_fixtures(scanned_fixtures: Path) -> None:
    store = SQLiteStore(scanned_fixtures)
    try:
        report = canonical_report(store, LABELS)
    finally:
        store.close()
    assert report.groups >= 15
    assert report.share >= 0.95, report.wrong
    named = {variant for _name, variant in report.wrong}
    assert not named & set(DERIVATIVES), report.wrong
    assert SAME_PIXEL_KINDS[0] == "original"


def test_clusters_command_says_why(scanned_fixtures: Path) -> None:
    shown = damdup("clusters", "--db", str(scanned_fixtures))
    assert "canonical because: the original: the others are" in shown.stdout
    payload = json.loads(
        damdup("clusters", "--format", "json", "--db", str(scanned_fixtures)).stdout
    )
    reasons = [cluster["reason"] for cluster in payload["clusters"]]
    assert any("watermark" in reason for reason in reasons), reasons


def test_a_groups_lineage_is_found_once_then_read_from_the_index(tmp_path: Path) -> None:
    """Reading the clusters (status, clusters, push) must not read every
    copy's original again: the lineage of each group is saved in the index."""
    from connector.core.settings import Settings
    from connector.engine.scan import OriginalReader, current_clusters

    db = tmp_path / "index.sqlite"
    damdup("scan", str(FIXTURES / "photos" / "hel-fi"), "--db", str(db), "-q")
    store = SQLiteStore(db)
    try:
        store.db.execute("DELETE FROM lineage")
        reader = OriginalReader(store, {})
        reads: list[str] = []

        def counting(sha256: str) -> bytes | None:
            reads.append(sha256)
            return reader(sha256)

        settings = Settings(db=db)
        first, _ = current_clusters(store, settings, counting)
        assert reads, "the first reading finds the lineage from the originals"
        reads.clear()
        again, _ = current_clusters(store, settings, counting)
        assert reads == []
        assert [(c.canonical.key, c.reason) for c in again] == [
            (c.canonical.key, c.reason) for c in first
        ]
        plain, _ = current_clusters(store, settings)  # as a reading command does
        assert [c.reason for c in plain] == [c.reason for c in first]
    finally:
        store.close()


def test_a_group_that_gains_a_copy_relates_only_the_new_one_in_a_new_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How two copies relate is kept in the index, by the two images as
    judged: after the daemon's clustering, the next process to meet a grown
    group (a webhook server, `damdup clusters`) relates only its new copy to
    the others, and finds what relating all of them anew finds."""
    from connector.core import provenance
    from connector.core.settings import Settings
    from connector.engine.scan import current_clusters

    folder = tmp_path / "share"
    folder.mkdir()
    for suffix in ("", "_lowq", "_kehys", "_vaalea"):
        name = f"kahvikuppi_Pikolo{suffix}.jpg"
        shutil.copyfile(FIXTURES / "photos" / "hel-fi" / name, folder / name)
    db = tmp_path / "index.sqlite"
    settings = Settings(db=db)
    damdup("scan", str(folder), "--db", str(db), "-q")
    store = SQLiteStore(db)
    try:
        current_clusters(store, settings)  # what the daemon does after its sync
        assert store.db.execute("SELECT count(*) FROM relations").fetchone()[0] > 0
    finally:
        store.close()
    with Image.open(folder / "kahvikuppi_Pikolo.jpg") as image:
        image.resize((image.width // 2, image.height // 2)).save(folder / "pieni.jpg", quality=80)
    damdup("scan", str(folder), "--db", str(db), "-q")
    new = sha256_hex((folder / "pieni.jpg").read_bytes())

    related: list[tuple[str, str]] = []
    real = provenance.relate

    def counted(a: provenance.Specimen, b: provenance.Specimen) -> provenance.Finding:
        related.append((a.sha256, b.sha256))
        return real(a, b)

    monkeypatch.setattr(provenance, "relate", counted)
    store = SQLiteStore(db)  # another process: nothing kept in memory
    try:
        grown, _ = current_clusters(store, settings)
        assert related, "the new copy is related to the others"
        assert all(new in pair for pair in related), related
        store.db.execute("DELETE FROM relations")
        store.db.execute("DELETE FROM lineage")
        related.clear()
        afresh, _ = current_clusters(store, settings)
        assert any(new not in pair for pair in related)
    finally:
        store.close()
    assert len(grown) == len(afresh) == 1
    assert new in {member.asset.sha256 for member in grown[0].members}
    assert [(c.canonical.key, c.reason) for c in grown] == [
        (c.canonical.key, c.reason) for c in afresh
    ]


def test_the_lineage_of_many_groups_is_read_in_a_few_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The groups' saved lineages, and for the groups without one the live
    assets, originals and thumbnails of their contents, are read a chunk of
    groups at a time, not a statement or more per content (on PostgreSQL,
    each a round trip: status after a sync had hundreds). What is found is
    what finding each group alone finds."""
    from connector.core.settings import Settings
    from connector.engine import scan
    from connector.engine.scan import current_clusters

    db = tmp_path / "index.sqlite"
    damdup("scan", str(FIXTURES / "photos" / "hel-fi"), "--db", str(db), "-q")
    settings = Settings(db=db)
    store = SQLiteStore(db)
    try:
        store.db.execute("DELETE FROM lineage")
        store.db.execute("DELETE FROM relations")
        one_by_one, _ = current_clusters(store, settings)  # LINEAGE_GROUPS: all in one chunk
        groups = store.db.execute("SELECT count(*) FROM lineage").fetchone()[0]
        assert groups >= 7, "enough groups for several chunks"
        store.db.execute("DELETE FROM lineage")
        store.db.execute("DELETE FROM relations")

        calls: dict[str, int] = {}
        for name in ("lineages", "save_lineages", "live_assets_with", "originals", "fingerprint",
                     "thumbnails", "save_relations"):  # fmt: skip
            real = getattr(store, name)

            def counted(*args: Any, _name: str = name, _real: Any = real) -> Any:
                calls[_name] = calls.get(_name, 0) + 1
                return _real(*args)

            monkeypatch.setattr(store, name, counted)
        monkeypatch.setattr(scan, "LINEAGE_GROUPS", 3)
        chunked, _ = current_clusters(store, settings)
        read = dict(calls)
        # No original readable: each chunk's thumbnails, read at once.
        store.db.execute("DELETE FROM lineage")
        store.db.execute("DELETE FROM relations")
        calls.clear()
        current_clusters(store, settings, lambda sha256: None)
        unreadable = dict(calls)
    finally:
        store.close()
    chunks = -(-groups // 3)
    # The originals were read: no thumbnail was needed.
    assert read == {
        "live_assets_with": 1 + chunks,  # the clusters' assets, then each chunk's
        "lineages": chunks,
        "save_relations": chunks,
        "save_lineages": chunks,
        "originals": chunks,
    }, read
    assert unreadable == {
        "live_assets_with": 1, "lineages": chunks, "thumbnails": chunks,
        "save_relations": chunks, "save_lineages": chunks,
    }, unreadable  # fmt: skip
    assert [(c.canonical.key, c.reason) for c in chunked] == [
        (c.canonical.key, c.reason) for c in one_by_one
    ]
