from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connector.core.capture import CaptureFacts
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AssetRow,
    DecisionRow,
    IndexMissing,
    IndexStore,
    ListingState,
    NotAnIndex,
    PairRow,
    SchemaError,
    SQLiteStore,
    to_signed,
    to_unsigned,
)
from connector.core.store import open_store


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


def test_page_and_cursor_are_saved_together_and_unseen_assets_retire(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    run = store.start_run("u", "sync")
    store.save_page(
        "u", run, [asset("a", "s1"), asset("b", None, "broken")], [fingerprint("s1")], [], "c1"
    )
    assert store.listing_state("u") == ListingState("c1", run, True, None)
    assert store.asset_versions("u")["b"][:3] == ("v1", None, "broken")
    stored = store.fingerprint("s1")
    assert stored is not None and stored.phash == 0xFFFF_0000_FFFF_0000
    assert stored.dhash == (1 << 64) - 1
    assert store.thumbnails(["s1", "s2", "s1"]) == {"s1": stored.thumb} and stored.thumb
    assert [row.asset_id for row in store.errors()] == ["b"]

    second = store.start_run("u", "sync")
    store.save_page("u", second, [], [], ["a"], None)
    assert store.retire_unseen("u", second) == 1
    assert [row.asset_id for row in store.live_assets()] == ["a"]
    assert store.listing_state("u") == ListingState(None, None, True, None)
    store.close()


def test_watermark_of_a_completed_listing_outlives_the_next_listing(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
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


def test_pairs_of_retired_assets_are_not_reported(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
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


def test_find_asset_by_unit_and_id_by_id_and_by_digest(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    run = store.start_run("u", "sync")
    sha = "ab" * 32
    store.save_page("u", run, [asset("dir/a.jpg", sha)], [fingerprint(sha)], [], None)
    for reference in ("u:dir/a.jpg", "dir/a.jpg", sha[:12]):
        found = store.find_asset(reference)
        assert found is not None and found.asset_id == "dir/a.jpg"
    assert store.find_asset("missing.jpg") is None
    # What a webhook check asks of an asset new to the index, and a digest
    # written in capitals.
    assert store.find_asset("u:dir/new-photo.jpg") is None
    assert store.find_asset(sha[:12].upper()) == store.find_asset(sha[:12])
    store.close()


def test_an_asset_new_to_the_index_and_its_pairs_are_read_through_indexes(
    tmp_path: Path,
) -> None:
    """`find_asset` of an id the index does not hold (every webhook check of a
    new asset) uses indexes: by id alone through assets_id, and no digest
    search for a reference that cannot be a digest's start; `pairs_touching`
    finds a content's pairs on the second side through pairs_b."""
    store = SQLiteStore(tmp_path / "index.sqlite")
    plan = " ".join(
        str(tuple(row))
        for row in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM assets WHERE asset_id = ? AND live = 1 LIMIT 2",
            ("u:dir/new-photo.jpg",),
        )
    )
    assert "assets_id" in plan
    # Its component: the pairs that touch its content on either side.
    plan = " ".join(
        str(tuple(row))
        for row in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM pairs WHERE recipe = ? AND sha_b IN (?)",
            (RECIPE, "ab" * 32),
        )
    )
    assert "pairs_b" in plan
    asked: list[str] = []
    store.db.set_trace_callback(asked.append)
    assert store.find_asset("u:dir/new-photo.jpg") is None
    store.db.set_trace_callback(None)
    assert not any("LIKE" in statement for statement in asked)
    store.close()


def test_an_index_of_schema_1_is_migrated_in_place(tmp_path: Path) -> None:
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


def outbox_store(index_db: str | Path) -> IndexStore:
    store = open_store(index_db, create=True)
    run = store.start_run("u", "sync")
    rows = [asset(name, f"s{name}") for name in ("a", "b", "c")]
    store.save_page("u", run, rows, [], [], None)
    return store


def pending(store: IndexStore) -> dict[str, str]:
    return {row.asset_id: row.intended for row in store.outbox(["u"])}


def test_outbox_holds_only_differences_from_what_was_written(index_db: str | Path) -> None:
    store = outbox_store(index_db)
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


def test_journal_skips_writes_that_changed_nothing_and_keeps_units_apart(
    index_db: str | Path,
) -> None:
    store = outbox_store(index_db)
    store.set_intended(["u"], {("u", "a"): "dup"})
    store.set_intended(["other"], {("u", "b"): "canon"})  # not a unit of this push: ignored
    assert pending(store) == {"a": "dup"}
    run = store.start_push(["u"], dry_run=False)
    store.record_written(run, "u", "a", "dup", "dup")  # the platform held them already
    assert store.journal(run) == []
    assert pending(store) == {}


def test_a_hold_lasts_until_the_intended_marks_change(index_db: str | Path) -> None:
    store = outbox_store(index_db)
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


def test_outbox_leaves_out_retired_assets(index_db: str | Path) -> None:
    store = outbox_store(index_db)
    store.set_intended(["u"], {("u", "a"): "dup", ("u", "c"): "canon"})
    later = store.start_run("u", "sync")
    store.save_page("u", later, [], [], ["a"], None)
    store.retire_unseen("u", later)
    assert pending(store) == {"a": "dup"}


def test_a_check_is_recorded_then_finished_with_its_verdict(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
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


def test_a_signature_is_taken_once_within_the_window(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    assert store.first_sighting("museo", "sig", now=1000.0, window_s=600)
    assert not store.first_sighting("museo", "sig", now=1100.0, window_s=600)
    assert store.first_sighting("kanslia", "sig", now=1100.0, window_s=600)  # per unit
    # Past the window it is forgotten: the timestamp check refuses it by then.
    assert store.first_sighting("museo", "sig", now=1700.0, window_s=600)


# -- every other part of the interface, on both stores ------------------------


def test_fingerprints_codes_and_watermarks(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    assert store.fingerprint_watermark() == 0
    run = store.start_run("u", "sync")
    store.save_page(
        "u", run, [asset("a", "s1"), asset("b", "s2")],
        [fingerprint("s1"), fingerprint("s2", phash=1 << 63)], [], None,
    )  # fmt: skip
    first = store.fingerprint_watermark()
    rows = store.fingerprint_rows(RECIPE)
    assert [row["sha256"] for row in rows] == ["s1", "s2"]
    assert rows[1]["phash"] == 1 << 63 and rows[0]["dhash"] == (1 << 64) - 1
    assert rows[0]["flat"] is False and rows[0]["has_capture"] is True
    assert store.known_fingerprints(["s1", "s3"], RECIPE) == {"s1"}
    assert store.known_fingerprints(["s1"], RECIPE + 1) == set()
    assert store.fingerprint_sizes() == {10}
    # A digest computed later survives the fingerprint saved again, which
    # counts as new for whoever follows the watermark.
    store.set_pixel_digest("s1", "pixels")
    assert store.pixel_digest("s1") == "pixels" and store.pixel_digest("s9") is None
    store.save_asset("u", asset("c", "s1"), fingerprint("s1"))
    assert store.pixel_digest("s1") == "pixels"
    after = store.fingerprint_rows_after(RECIPE, first)
    assert [row["sha256"] for row in after] == ["s1"]
    assert (
        after[0]["watermark"]
        > first
        == max(
            row["watermark"]
            for row in store.fingerprint_rows_after(RECIPE, 0)
            if row["sha256"] == "s2"
        )
    )
    assert store.fingerprint_watermark() == after[0]["watermark"]
    assert store.fingerprint("s9") is None
    store.close()


def test_assets_by_content_by_url_and_their_versions(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    run = store.start_run("u", "sync")
    page = AssetRow(
        unit="u", asset_id="p", version="v2", url="https://x/page", size_bytes=None,
        modified="2024-01-01", sha256="s1", error=None, metadata={"location": "Töölö"},
        live=True, original_url="https://x/file.jpg", width=4000, height=3000,
        content_hash="md5:ab",
    )  # fmt: skip
    store.save_page("u", run, [page, asset("a", "s1"), asset("b", "s2")], [], [], "c1")
    found = store.live_assets_with(["s1", "s1"])
    assert [row.asset_id for row in found] == ["a", "p"]
    assert found[1] == page
    assert [row.asset_id for row in store.assets_at_url("https://x/file.jpg")] == ["p"]
    assert [row.asset_id for row in store.assets_at_url("https://x/page")] == ["p"]
    known = store.asset_versions("u")["p"]
    assert known.version == "v2" and '"Töölö"' in known.listed and "md5:ab" in known.listed
    # An asset saved outside a listing counts as seen by the unit's last run.
    store.save_asset("u", asset("n", None, "fetch failed"), None)
    assert store.unseen_assets("u", run) == []
    later = store.start_run("u", "sync")
    store.save_page("u", later, [], [], ["a"], None)
    assert [row.asset_id for row in store.unseen_assets("u", later)] == ["b", "n", "p"]
    assert store.retire_unseen("u", later, keep=["p"]) == 2
    assert [row.asset_id for row in store.live_assets("u")] == ["a", "p"]
    store.close()


def test_pairs_touching_decisions_originals_and_lineage(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    run = store.start_run("u", "sync")
    store.save_page("u", run, [asset(n, f"s{n}") for n in "abc"], [], [], None)
    store.save_pairs(
        [PairRow("sa", "sb", "near_identical", 2, 4, {"why": ["x"]}),
         PairRow("sb", "sc", None, 30, 30, {})],
        RECIPE,
    )  # fmt: skip
    store.save_pairs([PairRow("sa", "sb", "duplicate_candidate", 2, 4, {})], RECIPE)
    assert [(p.sha_a, p.tier) for p in store.pairs()] == [("sa", "duplicate_candidate")]
    touching = store.pairs_touching(["sb"], RECIPE)
    assert [(p.sha_a, p.sha_b) for p in touching] == [("sa", "sb"), ("sb", "sc")]
    assert store.pairs_touching(["sb"], RECIPE + 1) == []

    decided = DecisionRow("sb", "sa", "same", None, "anna", "2024-05-01T10:00:00+00:00")
    store.save_decision(decided)
    store.save_decisions(
        [DecisionRow("sc", "sb", "canonical", "sc", "ben", "2024-05-02T10:00:00+00:00")]
    )
    decisions = store.decisions()
    assert decisions[("sa", "sb")].decided_by == "anna"  # stored in order
    assert decisions[("sb", "sc")].canonical_sha == "sc"
    store.save_decision(DecisionRow("sa", "sb", "different", None, "cem", "t"))
    assert store.decisions()[("sa", "sb")].decision == "different"

    a, b = store.live_assets("u")[:2]
    assert store.originals([a, b]) == {}
    store.record_original(a, "orig", 1234)
    assert store.originals([a, b]) == {"u:a": ("orig", 1234)}
    newer = AssetRow(**{**a.__dict__, "version": "v2"})
    assert store.originals([newer]) == {}, "a new version's original is not known"
    store.record_original(b, "orig-b", 99)
    assert store.originals([a, b]) == {"u:a": ("orig", 1234), "u:b": ("orig-b", 99)}
    assert store.originals([]) == {}

    assert store.lineages(["g"]) == {}
    store.save_lineages({"g": ('{"family": 1}', True), "h": ("{}", True)})
    store.save_lineages({"g": ('{"family": 2}', False)})
    store.save_lineages({})
    assert store.lineages(["g", "h", "k", "g"]) == {
        "g": ('{"family": 2}', False),
        "h": ("{}", True),
    }

    assert store.relations(["x-y", "x-z"]) == {}
    store.save_relations({"x-y": '["x", "a copy", false]', "x-z": "[null, 1, true]"})
    store.save_relations({"x-z": '[null, "a copy", true]'})
    store.save_relations({})
    assert store.relations(["x-y", "x-z", "y-z", "x-y"]) == {
        "x-y": '["x", "a copy", false]',
        "x-z": '[null, "a copy", true]',
    }
    assert store.relations([]) == {}
    many = [f"k{n}" for n in range(1200)]  # more than one statement's worth
    store.save_relations({key: "[]" for key in many})
    assert len(store.relations(many)) == 1200
    store.close()


def test_the_cluster_queue_holds_what_clusters_are_made_of_only(
    index_db: str | Path,
) -> None:
    """The cluster queue takes every committed change to what clusters are
    made of (an asset's content, liveness or metadata, a pair, a decision,
    a fingerprint), also one made through another connection (another
    host, a sync beside), and not the rest (a pair or asset saved again as
    it was, lineage, relations, checks); a saved listing clears the rows it
    read, and only those."""
    store = open_store(index_db, create=True)
    other = open_store(index_db, create=False)
    first = store.cluster_queue()
    assert first.everything, "a new index: the whole index, once"
    assert store.save_listing(None, "s1", [], None, first.seqs) == {}

    def queued() -> tuple[set[str], set[tuple[str, str]]]:
        queue = store.cluster_queue()
        assert not queue.everything
        return set(queue.contents), set(queue.assets)

    run = store.start_run("u", "sync")
    store.save_page("u", run, [asset(n, f"s{n}") for n in "ab"], [fingerprint("sa")], [], None)
    assert queued() == ({"sa", "sb"}, {("u", "a"), ("u", "b")})
    pair = PairRow("sa", "sb", "near_identical", 2, 4, {})
    store.save_pairs([pair], RECIPE)
    other.save_decision(DecisionRow("sa", "sc", "same", None, "anna", "t"))
    assert queued()[0] == {"sa", "sb", "sc"}
    queue = store.cluster_queue()
    assert store.save_listing("s1", "s2", [], None, queue.seqs) == {}
    assert queued() == (set(), set())
    store.save_pairs([pair], RECIPE)  # settled again as it was
    store.save_page("u", run, [asset("a", "sa")], [], [], None)  # listed again as it was
    store.save_lineages({"g": ("{}", True)})
    store.save_relations({"x-y": "[]"})
    store.start_check("u", "a", "test")
    assert queued() == (set(), set())
    other.save_page("u", other.start_run("u", "sync"), [asset("a", "sd")], [], [], None)
    assert queued() == ({"sa", "sd"}, {("u", "a")}), "a's content changed: both contents"
    store.save_pairs([PairRow("sa", "sb", "similar", 9, 9, {})], RECIPE)
    store.save_page("u", run, [], [], [], None, deleted=["b"])
    assert queued() == ({"sa", "sb", "sd"}, {("u", "a"), ("u", "b")})
    assert store.save_listing("s1", "s3", [], None, store.cluster_queue().seqs) is None
    assert store.listing_saved() == ("s2", {})
    read = store.cluster_queue()
    other.save_decision(DecisionRow("sa", "se", "different", None, "anna", "t"))
    assert store.save_listing("s2", "s3", [], None, read.seqs) == {}
    assert queued() == ({"sa", "se"}, set()), "rows queued after the read stay"
    other.close()
    store.close()


def test_assets_that_become_live_queue_their_contents_for_the_next_match(
    index_db: str | Path,
) -> None:
    """The match queue holds the content of every asset that became live with
    it (new, changed content, back after being gone), whichever connection
    wrote it; not what was seen again unchanged or left. A new index asks for
    a whole search; clearing drops only the rows read."""
    store = open_store(index_db, create=True)
    other = open_store(index_db, create=False)
    first = store.match_queue()
    assert first.everything and not first.contents, "a new index is searched whole"
    store.clear_match_queue(first.seqs)
    empty = store.match_queue()
    assert (list(empty.seqs), empty.contents, empty.everything) == ([], set(), False)

    run = store.start_run("u", "sync")
    store.save_page("u", run, [asset("a", "sa"), asset("b", "sb")], [], [], "p1")
    store.save_page("u", run, [asset("e", None, "not an image")], [], [], None)
    queued = store.match_queue()
    assert queued.contents == {"sa", "sb"} and not queued.everything
    assert store.match_queue(most=1).everything, "more than asked for: the whole index"
    assert not store.match_queue(most=1).contents
    store.clear_match_queue(queued.seqs)

    later = other.start_run("u", "sync")
    other.save_page("u", later, [asset("a", "sa")], [], ["b"], None)  # a saved again, b seen
    assert store.match_queue().contents == set(), "nothing became live"
    other.save_page("u", later, [asset("b", "sb2")], [], [], None)  # b's file replaced
    assert store.match_queue().contents == {"sb2"}
    assert other.retire_unseen("u", other.start_run("u", "sync")) == 3  # a, b, e gone
    assert store.match_queue().contents == {"sb2"}
    read = store.match_queue()
    store.save_asset("u", asset("a", "sa"), None)  # a back, after the queue was read
    store.clear_match_queue(read.seqs)
    assert store.match_queue().contents == {"sa"}, "a row queued after the read stays"
    other.close()
    store.close()


def test_holds_errors_intended_per_asset_and_unit_status(index_db: str | Path) -> None:
    store = outbox_store(index_db)
    changed = store.set_intended_assets({("u", "a"): "dup", ("u", "b"): ""})
    assert changed == [("u", "a")]
    assert store.set_intended_assets({("u", "a"): "dup"}) == []
    assert pending(store) == {"a": "dup"}
    run = store.start_push(["u"], dry_run=False)
    store.record_outbox_error("u", "a", "refused")
    assert store.outbox(["u"])[0].error == "refused"
    store.record_written(run, "u", "a", "", "dup")
    revert = store.start_push(["u"], dry_run=False, revert_of=run)
    store.record_written(revert, "u", "a", "dup", "", held="dup")
    store.finish_push(revert, {"written": 1})
    assert [row.asset_id for row in store.held(["u"])] == ["a"]
    assert store.release_holds(["u"]) == 1
    assert pending(store) == {"a": "dup"}
    assert [r.stats for r in store.push_runs()] == [{}, {"written": 1}]
    assert [r.units for r in store.push_runs()] == [["u"], ["u"]]
    assert [row.asset_id for row in store.outbox(["u"], pending_only=False)] == ["a"]

    sync = store.start_run("u", "sync")
    store.finish_run(sync, True, {"listed": 3})
    status = store.unit_status()["u"]
    assert (status.live_assets, status.errors, status.last_sync_complete) == (3, 0, True)
    assert status.last_sync_stats == {"listed": 3} and status.last_complete_sync is not None
    store.close()


def test_a_reopened_store_sees_the_same_index(index_db: str | Path) -> None:
    store = open_store(index_db, create=True)
    other = store.reopen()
    run = store.start_run("u", "sync")
    store.save_page("u", run, [asset("a", "s1")], [fingerprint("s1")], [], None)
    assert [row.asset_id for row in other.live_assets()] == ["a"]
    other.close()
    store.close()


def test_a_reading_command_never_makes_an_index(index_db: str | Path) -> None:
    with pytest.raises(IndexMissing):
        open_store(index_db, create=False)
    open_store(index_db, create=True).close()
    open_store(index_db, create=False).close()


def test_both_stores_hold_the_same_knowledge(tmp_path: Path, pg_url: str) -> None:
    dumps = []
    for db in (tmp_path / "index.sqlite", pg_url):
        store = open_store(db, create=True)
        run = store.start_run("u", "sync")
        store.save_page(
            "u", run, [asset("b", "s2"), asset("a", "s1"), asset("Z", None, "broken")],
            [fingerprint("s1"), fingerprint("s2", phash=(1 << 64) - 2)], [], None,
        )  # fmt: skip
        store.save_pairs([PairRow("s1", "s2", "near_identical", 2, 3, {"k": 1})], RECIPE)
        dumps.append(store.dump())  # type: ignore[attr-defined]
        store.close()
    assert dumps[0] == dumps[1]


# -- PostgreSQL's own schema ---------------------------------------------------


def test_postgresql_migrations_mirror_sqlites() -> None:
    from connector.core import pgstore

    assert len(pgstore.MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION


def test_a_new_postgresql_index_is_at_the_latest_schema(pg_url: str) -> None:
    import psycopg

    open_store(pg_url, create=True).close()
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_postgresql_index_of_schema_1_is_migrated(pg_url: str) -> None:
    import psycopg

    from connector.core import pgstore

    with psycopg.connect(pg_url) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute(pgstore.MIGRATIONS[0].encode())
        db.execute("INSERT INTO cursors VALUES ('u', 'c', 1, 't')")
    store = open_store(pg_url, create=False)
    assert store.listing_state("u") == ListingState("c", 1, True, None), (
        "migration must keep what the index held"
    )
    run = store.start_run("u", "sync")
    store.save_page("u", run, [asset("a", "s1")], [fingerprint("s1")], [], None)
    stored = store.fingerprint("s1")
    assert stored is not None and stored.phash_inner == 0xFFFF_0000_FFFF_0000
    store.close()
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_newer_postgresql_schema_is_refused(pg_url: str) -> None:
    import psycopg

    from connector.core.pgstore import close_pools

    open_store(pg_url, create=True).close()
    close_pools(pg_url)  # a new process, as it were
    with psycopg.connect(pg_url) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="newer"):
        open_store(pg_url, create=True)


def test_a_database_of_another_program_is_not_made_an_index(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as db:
        db.execute("CREATE TABLE albums (name TEXT)")
    with pytest.raises(IndexMissing, match="no damdup index in database"):
        open_store(pg_url, create=False)
    with pytest.raises(NotAnIndex, match="tables of another program"):
        open_store(pg_url, create=True)
    with psycopg.connect(pg_url) as db:
        tables = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        assert [row[0] for row in tables] == ["albums"]


def test_an_unreachable_server_is_named() -> None:
    from connector.core.pgstore import IndexUnreachable

    with pytest.raises(IndexUnreachable) as raised:
        open_store("postgresql://damdup@127.0.0.1:1/damdup", create=False)
    assert str(raised.value).startswith(
        "cannot reach PostgreSQL at 127.0.0.1:1 (database damdup): "
    )
    assert "\n" not in str(raised.value)


def test_postgresql_vacuums_a_queue_a_large_clear_emptied(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dead rows of a cleared queue would be scanned by every later read until
    autovacuum came by: a clear past VACUUM_AFTER rows vacuums the table."""
    import psycopg

    from connector.core import pgstore

    monkeypatch.setattr(pgstore, "VACUUM_AFTER", 3)
    store = open_store(pg_url, create=True)

    def vacuumed(table: str) -> bool:
        with psycopg.connect(pg_url) as db:
            row = db.execute(
                "SELECT last_vacuum FROM pg_stat_user_tables"
                " WHERE relname = %s AND schemaname = current_schema()",
                (table,),
            ).fetchone()
        return row is not None and row[0] is not None

    try:
        store.save_listing(None, "s1", [], None, store.cluster_queue().seqs)  # one row: '*'
        assert not vacuumed("cluster_queue")
        run = store.start_run("u", "sync")
        store.save_page("u", run, [asset(n, f"s{n}") for n in "abcd"], [], [], None)
        store.save_listing("s1", "s2", [], None, store.cluster_queue().seqs)
        assert vacuumed("cluster_queue")
        store.clear_match_queue(store.match_queue().seqs)
        assert vacuumed("match_queue")
    finally:
        store.close()
