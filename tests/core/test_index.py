from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connector.core.capture import CaptureFacts
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import (
    SCHEMA_VERSION,
    AssetRow,
    ListingState,
    PairRow,
    SchemaError,
    SQLiteStore,
    to_signed,
    to_unsigned,
)


def fingerprint(sha: str, phash: int = 0xFFFF_0000_FFFF_0000) -> Fingerprint:
    return Fingerprint(
        sha256=sha, size_bytes=10, recipe=RECIPE, format="JPEG", width=40, height=30,
        payload_digest=None, phash=phash, dhash=(1 << 64) - 1, phash_trim=None,
        dhash_trim=None, phash_inner=phash, dhash_inner=0, flat=False, animated=False,
        capture=CaptureFacts(taken_at="x"), thumb=b"thumb",
    )  # fmt: skip


def asset(asset_id: str, sha: str | None, error: str | None = None) -> AssetRow:
    return AssetRow(
        unit="u", asset_id=asset_id, version="v1", url=f"file:///{asset_id}", size_bytes=10,
        modified=None, sha256=sha, error=error, metadata={}, live=True,
    )  # fmt: skip


def test_codes_round_trip_through_signed_integers() -> None:
    for code in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        signed = to_signed(code)
        assert signed is not None and -(1 << 63) <= signed < (1 << 63)
        assert to_unsigned(signed) == code


def test_new_index_is_wal_and_at_the_latest_schema(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "i.sqlite")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "i.sqlite"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaError, match="newer"):
        SQLiteStore(path)


def test_page_and_cursor_are_saved_together_and_unseen_assets_retire(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "i.sqlite")
    run = store.start_run("u", "sync")
    store.save_page(
        "u", run, [asset("a", "s1"), asset("b", None, "broken")], [fingerprint("s1")], [], "c1"
    )
    assert store.listing_state("u") == ListingState("c1", run, True, None)
    assert store.asset_versions("u")["b"][:3] == ("v1", None, "broken")
    stored = store.fingerprint("s1")
    assert stored is not None and stored.phash == 0xFFFF_0000_FFFF_0000
    assert stored.dhash == (1 << 64) - 1
    assert [row.asset_id for row in store.errors()] == ["b"]

    second = store.start_run("u", "sync")
    store.save_page("u", second, [], [], ["a"], None)
    assert store.retire_unseen("u", second) == 1
    assert [row.asset_id for row in store.live_assets()] == ["a"]
    assert store.listing_state("u") == ListingState(None, None, True, None)
    store.close()


def test_watermark_of_a_completed_listing_outlives_the_next_listing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "i.sqlite")
    run = store.start_run("u", "sync")
    store.save_page("u", run, [asset("a", "s1"), asset("b", "s2")], [], [], None, watermark="w1")
    assert store.listing_state("u").watermark == "w1"
    # An incremental listing interrupted after one page resumes as incremental...
    later = store.start_run("u", "sync")
    store.save_page("u", later, [], [], [], "c2", full_listing=False, deleted=["b"])
    assert store.listing_state("u") == ListingState("c2", later, False, "w1")
    assert [row.asset_id for row in store.live_assets("u")] == ["a"]
    # ...and a listing that ends without a new watermark keeps the old one.
    store.save_page("u", later, [], [], [], None, full_listing=False)
    assert store.listing_state("u") == ListingState(None, None, False, "w1")
    store.close()


def test_pairs_of_retired_assets_are_not_reported(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "i.sqlite")
    run = store.start_run("u", "sync")
    store.save_page(
        "u", run, [asset("a", "s1"), asset("b", "s2")],
        [fingerprint("s1"), fingerprint("s2")], [], None,
    )  # fmt: skip
    store.save_pairs([PairRow("s1", "s2", "near_identical", 2, 3, {})], RECIPE)
    assert len(store.pairs()) == 1
    assert store.evaluated_pairs(RECIPE) == {("s1", "s2")}
    later = store.start_run("u", "sync")
    store.save_page("u", later, [], [], ["a"], None)
    store.retire_unseen("u", later)
    assert store.pairs() == []
    store.close()


def test_find_asset_by_unit_and_id_by_id_and_by_digest(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "i.sqlite")
    run = store.start_run("u", "sync")
    sha = "ab" * 32
    store.save_page("u", run, [asset("dir/a.jpg", sha)], [fingerprint(sha)], [], None)
    for reference in ("u:dir/a.jpg", "dir/a.jpg", sha[:12]):
        found = store.find_asset(reference)
        assert found is not None and found.asset_id == "dir/a.jpg"
    assert store.find_asset("missing.jpg") is None
    store.close()


def test_an_index_of_schema_1_is_migrated_in_place(tmp_path: Path) -> None:
    from connector.core.index import MIGRATIONS

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO cursors VALUES ('u', 'c', 1, 't')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    columns = {row[1] for row in store.db.execute("PRAGMA table_info(fingerprints)")}
    assert {"phash_inner", "dhash_inner"} <= columns
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.listing_state("u") == ListingState("c", 1, True, None), (
        "migration must keep what the index held"
    )
    asset_columns = {row[1] for row in store.db.execute("PRAGMA table_info(assets)")}
    assert {"original_url", "width", "height"} <= asset_columns
    store.close()


# -- write-back outbox -------------------------------------------------------


def outbox_store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "index.sqlite")
    run = store.start_run("u", "sync")
    rows = [asset(name, f"s{name}") for name in ("a", "b", "c")]
    store.save_page("u", run, rows, [], [], None)
    return store


def pending(store: SQLiteStore) -> dict[str, str]:
    return {row.asset_id: row.intended for row in store.outbox(["u"])}


def test_outbox_holds_only_differences_from_what_was_written(tmp_path: Path) -> None:
    store = outbox_store(tmp_path)
    store.set_intended(["u"], {("u", "a"): "dup", ("u", "b"): "canon"})
    assert pending(store) == {"a": "dup", "b": "canon"}
    run = store.start_push(["u"], dry_run=False)
    store.record_written(run, "u", "a", "", "dup")
    assert pending(store) == {"b": "canon"}
    # Marks that no longer hold become a pending removal ("" means none)...
    store.set_intended(["u"], {("u", "b"): "canon"})
    assert pending(store) == {"a": "", "b": "canon"}
    store.record_written(run, "u", "a", "dup", "")
    # ... and an asset that never carried marks and should carry none is no row.
    assert pending(store) == {"b": "canon"}
    assert [(j.asset_id, j.before, j.after) for j in store.journal(run)] == [("a", "dup", "")]


def test_journal_skips_writes_that_changed_nothing_and_keeps_units_apart(tmp_path: Path) -> None:
    store = outbox_store(tmp_path)
    store.set_intended(["u"], {("u", "a"): "dup"})
    store.set_intended(["other"], {("u", "b"): "canon"})  # not a unit of this push: ignored
    assert pending(store) == {"a": "dup"}
    run = store.start_push(["u"], dry_run=False)
    store.record_written(run, "u", "a", "dup", "dup")  # the platform held them already
    assert store.journal(run) == []
    assert pending(store) == {}


def test_a_hold_lasts_until_the_intended_marks_change(tmp_path: Path) -> None:
    store = outbox_store(tmp_path)
    store.set_intended(["u"], {("u", "a"): "dup"})
    run = store.start_push(["u"], dry_run=False)
    store.record_written(run, "u", "a", "", "dup")
    revert = store.start_push(["u"], dry_run=False, revert_of=run)
    store.record_written(revert, "u", "a", "dup", "", held="dup")
    store.set_intended(["u"], {("u", "a"): "dup"})
    assert pending(store) == {}, "a reverted run is not redone by the next push"
    store.set_intended(["u"], {("u", "a"): "candidate"})
    assert pending(store) == {"a": "candidate"}
    runs = store.push_runs()
    assert [(r.id, r.revert_of) for r in runs] == [(run, None), (revert, run)]


def test_outbox_leaves_out_retired_assets(tmp_path: Path) -> None:
    store = outbox_store(tmp_path)
    store.set_intended(["u"], {("u", "a"): "dup", ("u", "c"): "canon"})
    later = store.start_run("u", "sync")
    store.save_page("u", later, [], [], ["a"], None)
    store.retire_unseen("u", later)
    assert pending(store) == {"a": "dup"}


def test_a_check_is_recorded_then_finished_with_its_verdict(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    first = store.start_check("museo", "41", "webhook")
    second = store.start_check("museo", "42", "webhook")
    assert store.checks(asset_id="41")[0].finished_at is None
    store.finish_check(first, {"duplicates": 2})
    store.finish_check(second, None, "fetch failed")
    rows = store.checks(unit="museo")
    assert [row.id for row in rows] == [second, first]  # newest first
    assert rows[1].verdict == {"duplicates": 2} and rows[1].error is None
    assert rows[0].verdict is None and rows[0].error == "fetch failed"
    assert store.checks(unit="other") == []
    assert store.check(first) == rows[1] and store.check(second + 1) is None


def test_a_signature_is_taken_once_within_the_window(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    assert store.first_sighting("museo", "sig", now=1000.0, window_s=600)
    assert not store.first_sighting("museo", "sig", now=1100.0, window_s=600)
    assert store.first_sighting("kanslia", "sig", now=1100.0, window_s=600)  # per unit
    # Past the window it is forgotten: the timestamp check refuses it by then.
    assert store.first_sighting("museo", "sig", now=1700.0, window_s=600)
