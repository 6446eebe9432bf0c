"""End to end on the labelled real photos in fixtures/: the CLI as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from connector.core.index import SQLiteStore
from connector.core.tiers import DUPLICATE_TIERS, Tier
from connector.engine.clusters import Cluster, Member
from connector.report.accuracy import EDIT_KINDS, EXACT_KINDS, load_labels, score
from tests.conftest import FIXTURES, PHOTOS

Run = Callable[..., CompletedProcess[str]]
LABELS = load_labels(FIXTURES / "labels.json")


def relations(run: Run, db: Path) -> list[dict[str, str]]:
    result = run("export", "relations", "--format", "csv", "--db", str(db))
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_accuracy_on_labelled_photos(run_damdup: Run, scanned_fixtures: Path) -> None:
    rows = relations(run_damdup, scanned_fixtures)
    report = score(LABELS, ((r["id_a"], r["id_b"], Tier(r["tier"])) for r in rows))
    assert report.merged_different_shots == [], "a different shot was called a duplicate"
    assert report.precision >= 0.999, report.false_positives
    assert report.recall_of(EXACT_KINDS) >= 0.99, report.recall
    for kind in EDIT_KINDS:
        found, total = report.recall[kind]
        assert total >= 10 and found / total >= 0.9, (kind, found, total)


def test_export_header_and_ids(run_damdup: Run, scanned_fixtures: Path) -> None:
    result = run_damdup("export", "relations", "--format", "csv", "--db", str(scanned_fixtures))
    header = result.stdout.splitlines()[0]
    assert header == "unit_a,id_a,unit_b,id_b,tier,phash_distance,dhash_distance,cluster,canonical"
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and all(r["unit_a"] == "scan" and r["id_a"] in LABELS for r in rows)
    assert all("\\" not in r["id_a"] and not r["id_a"].startswith("/") for r in rows)
    jsonl = run_damdup("export", "relations", "--format", "jsonl", "--db", str(scanned_fixtures))
    assert [json.loads(line) for line in jsonl.stdout.splitlines()] == [
        {
            **r,
            "phash_distance": int(r["phash_distance"]),
            "dhash_distance": int(r["dhash_distance"]),
        }
        for r in rows
    ]


def test_clusters_are_stars_with_explained_canonicals(
    run_damdup: Run, scanned_fixtures: Path
) -> None:
    result = run_damdup("clusters", "--format", "json", "--db", str(scanned_fixtures))
    payload = json.loads(result.stdout)
    clusters = payload["clusters"]
    assert clusters
    pair_tiers = {
        frozenset((r["id_a"], r["id_b"])): r["tier"]
        for r in relations(run_damdup, scanned_fixtures)
    }
    seen: set[str] = set()
    for cluster in clusters:
        canonical = cluster["canonical"]["id"]
        assert cluster["reason"]
        assert canonical not in seen
        seen.add(canonical)
        for member in cluster["members"]:
            assert member["id"] not in seen
            seen.add(member["id"])
            assert member["tier"] in {t.value for t in DUPLICATE_TIERS}
            assert pair_tiers[frozenset((canonical, member["id"]))] == member["tier"]
            assert LABELS[member["id"]]["photo"] == LABELS[canonical]["photo"]
    for similar in payload["similar"]:
        assert similar["a"]["id"] in LABELS and similar["b"]["id"] in LABELS


def test_stereo_pair_is_related_but_never_a_duplicate(
    run_damdup: Run, scanned_fixtures: Path
) -> None:
    left = next(n for n, i in LABELS.items() if i["source"].endswith("motorcycle_left.png")
                and i["variant"] == "original")  # fmt: skip
    right = next(n for n, i in LABELS.items() if i["source"].endswith("motorcycle_right.png"))
    result = run_damdup("explain", left, right, "--format", "json", "--db", str(scanned_fixtures))
    report = json.loads(result.stdout)
    assert report["duplicate"] is False
    assert report["tier"] in (None, "similar")
    assert report["reasons"]


def test_rescan_of_an_unchanged_folder_decodes_nothing(
    run_damdup: Run, photo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "i.sqlite"
    first = json.loads(
        run_damdup("scan", str(photo_copy), "--db", str(db), "--format", "json", "-q").stdout
    )
    assert first["fingerprinted"] > 0
    second = json.loads(
        run_damdup("scan", str(photo_copy), "--db", str(db), "--format", "json", "-q").stdout
    )
    assert second["fingerprinted"] == 0
    assert second["unchanged"] == second["listed"] == first["listed"]
    assert second["pairs_checked"] == 0


def test_a_pairs_evidence_does_not_depend_on_what_else_was_checked(
    run_damdup: Run, scanned_fixtures: Path, tmp_path: Path
) -> None:
    """A run that resumes (after a kill -9, say) checks only the pairs still
    open; each pair must settle as it would have in one whole run. It did
    not: a pixel digest asked for by one pair leaked into others' evidence."""
    db = tmp_path / "resumed.sqlite"
    shutil.copyfile(scanned_fixtures, db)
    with sqlite3.connect(db) as raw:
        dropped = raw.execute("DELETE FROM pairs WHERE rowid % 3 != 0").rowcount
        # What a first scan stopped in its match leaves: a whole search to do.
        raw.execute("INSERT INTO match_queue(sha256) VALUES ('*')")
    assert dropped > 100
    resumed = json.loads(
        run_damdup("scan", str(PHOTOS), "--db", str(db), "--format", "json", "-q").stdout
    )
    assert resumed["pairs_checked"] == dropped
    whole, part = SQLiteStore(scanned_fixtures), SQLiteStore(db)
    try:
        assert part.dump()["pairs"] == whole.dump()["pairs"]
    finally:
        whole.close()
        part.close()


def test_deleted_and_changed_files_are_noticed(
    run_damdup: Run, photo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "i.sqlite"
    run_damdup("scan", str(photo_copy), "--db", str(db), "-q")
    victim = sorted(photo_copy.rglob("*.jpg"))[0]
    victim.unlink()
    summary = json.loads(
        run_damdup("scan", str(photo_copy), "--db", str(db), "--format", "json", "-q").stdout
    )
    assert summary["retired"] == 1
    with sqlite3.connect(db) as connection:
        live = connection.execute(
            "SELECT live FROM assets WHERE asset_id = ?",
            (victim.relative_to(photo_copy).as_posix(),),
        ).fetchone()
    assert live == (0,)


def test_pairs_settled_round_by_round_settle_as_in_one_round(
    scanned_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The matcher settles its pairs a round at a time (memory: the
    fingerprints of one round, thumbnails included); rounds of a few pairs
    give every pair the evidence and tier of the one whole run."""
    from connector.core.settings import Settings
    from connector.engine import matcher
    from connector.engine.pool import WorkerPool
    from connector.engine.scan import OriginalReader

    db = tmp_path / "rounds.sqlite"
    shutil.copyfile(scanned_fixtures, db)
    with sqlite3.connect(db) as raw:
        dropped = raw.execute("DELETE FROM pairs").rowcount
        raw.execute("INSERT INTO match_queue(sha256) VALUES ('*')")  # search the whole index
    assert dropped > 100
    monkeypatch.setattr(matcher, "SETTLE_BATCH", 7)
    whole, rounds = SQLiteStore(scanned_fixtures), SQLiteStore(db)
    try:
        with WorkerPool(2) as pool:
            stats = matcher.match(
                rounds, pool, OriginalReader(rounds, {}), max_pixels=Settings().max_pixels
            )
        assert stats.evaluated == dropped
        assert rounds.dump()["pairs"] == whole.dump()["pairs"]
    finally:
        whole.close()
        rounds.close()


def test_a_match_searches_the_contents_a_sync_brought_and_finds_every_pair(
    scanned_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a completed match nothing is queued; contents that became live
    since (here: assets gone and back) are searched against the index alone,
    not the whole index against itself, and get exactly the pairs a whole
    search gives them. A match that fails leaves the queue for the next."""
    from connector.core.settings import Settings
    from connector.engine import matcher
    from connector.engine.pool import WorkerPool
    from connector.engine.scan import OriginalReader

    db = tmp_path / "queued.sqlite"
    shutil.copyfile(scanned_fixtures, db)
    store, whole = SQLiteStore(db), SQLiteStore(scanned_fixtures)
    assert store.match_queue().contents == frozenset() and not store.match_queue().everything
    with sqlite3.connect(db) as raw:
        chosen = [
            row[0]
            for row in raw.execute(
                """SELECT DISTINCT sha256 FROM assets WHERE live = 1 AND sha256 IS NOT NULL
                   ORDER BY sha256 LIMIT 15"""
            )
        ]
        marks = ",".join("?" * len(chosen))
        dropped = raw.execute(
            f"DELETE FROM pairs WHERE sha_a IN ({marks}) OR sha_b IN ({marks})", chosen * 2
        ).rowcount
        raw.execute(f"UPDATE assets SET live = 0 WHERE sha256 IN ({marks})", chosen)
        raw.execute(f"UPDATE assets SET live = 1 WHERE sha256 IN ({marks})", chosen)
    assert dropped > 20
    assert store.match_queue().contents == set(chosen)

    def no_whole_search(*args: object) -> None:
        raise AssertionError("the whole index was searched")

    monkeypatch.setattr(matcher, "find_candidates", no_whole_search)
    settings = Settings()
    try:
        with WorkerPool(2) as pool:
            real_save = store.save_pairs

            def disk_full(*args: object) -> None:
                raise OSError("disk full")

            monkeypatch.setattr(store, "save_pairs", disk_full)
            with pytest.raises(OSError):
                matcher.match(
                    store, pool, OriginalReader(store, {}), max_pixels=settings.max_pixels
                )
            assert store.match_queue().contents == set(chosen), "kept after a failed match"
            monkeypatch.setattr(store, "save_pairs", real_save)
            stats = matcher.match(
                store, pool, OriginalReader(store, {}), max_pixels=settings.max_pixels
            )
        assert (stats.searched, stats.fingerprints) == ("queued", len(chosen))
        assert stats.evaluated == dropped
        assert store.dump()["pairs"] == whole.dump()["pairs"]
        assert store.match_queue().contents == frozenset()
    finally:
        whole.close()
        store.close()


def confirm_a_candidate(store: SQLiteStore, clustered: list[Cluster]) -> Member:
    """A reviewer's `same` on the first member awaiting review: the member."""
    from connector.core.index import DecisionRow

    member = next(m for c in clustered for m in c.members if not m.edge.confirmed)
    canonical = next(c for c in clustered if member in c.members).canonical
    assert member.asset.sha256 is not None and canonical.sha256 is not None
    a, b = sorted((member.asset.sha256, canonical.sha256))
    store.save_decision(DecisionRow(a, b, "same", None, "anna", "2026-12-07T00:00:00+00:00"))
    return member


def test_status_figures_and_the_cluster_listing_are_kept_until_the_index_changes(
    scanned_fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`damdup status` reads the per-unit figures, and `damdup clusters` the
    listing, that the last clustering saved (the same as clustering again);
    a reviewer's decision clusters again only the part of the index it
    touches, and shows in both; other rules cluster the whole index."""
    from connector.core.settings import Settings
    from connector.engine import scan

    db = tmp_path / "index.sqlite"
    shutil.copyfile(scanned_fixtures, db)
    settings = Settings(db=db)
    store = SQLiteStore(db)
    try:
        clustered, relations = scan.current_clusters(store, settings)
        expected = scan.figures_of(clustered)
        listed = json.loads(json.dumps(scan.listing_of(clustered, relations)))
        (unit,) = expected
        assert expected[unit]["candidates"] > 0
        assert listed["clusters"] and listed["similar"]

        def no_clustering(*args: object, **kwargs: object) -> None:
            raise AssertionError("clustered again")

        monkeypatch.setattr(scan, "current_clusters", no_clustering)
        assert scan.unit_figures(store, settings) == expected
        assert scan.cluster_listing(store, settings) == listed
        other = Settings(db=db, authoritative_units=[unit])
        with pytest.raises(AssertionError, match="clustered again"):
            scan.unit_figures(store, other)  # figures of other settings
        member = confirm_a_candidate(store, clustered)
        after = scan.unit_figures(store, settings)
        assert after[unit]["duplicates"] == expected[unit]["duplicates"] + 1
        assert after[unit]["candidates"] == expected[unit]["candidates"] - 1
        now = scan.cluster_listing(store, settings)
        decided = [
            m["decision"]
            for c in now["clusters"]
            for m in c["members"]
            if (m["unit"], m["id"]) == (member.asset.unit, member.asset.asset_id)
        ]
        assert decided == ["same"]
        monkeypatch.undo()
        again, relations = scan.current_clusters(store, settings)
        assert now == json.loads(json.dumps(scan.listing_of(again, relations)))
    finally:
        store.close()
