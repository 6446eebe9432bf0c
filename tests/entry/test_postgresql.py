"""The index in PostgreSQL, end to end through the command line: the same
scan gives the same answers as on SQLite, and `damdup db migrate` moves a
pilot's SQLite index there whole (decisions, journal and outbox included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from connector.core.index import SQLiteStore
from connector.core.store import open_store
from tests.conftest import PHOTOS, damdup

EXPORTS = [("export", "relations", "--format", "csv"), ("export", "relations", "--format", "jsonl")]


def answers(db: str | Path) -> dict[str, str]:
    """What the reading commands print of an index."""
    shown = {" ".join(argv): damdup(*argv, "--db", str(db)).stdout for argv in EXPORTS}
    for argv in (("clusters", "--format", "json"), ("review", "list", "--all", "--format", "json")):
        shown[" ".join(argv)] = damdup(*argv, "--db", str(db)).stdout
    status = json.loads(damdup("status", "--format", "json", "--db", str(db)).stdout)
    for unit in status:
        unit.pop("cursor_age")  # how long ago, by the clock
    shown["status"] = json.dumps(status, sort_keys=True)
    return shown


@pytest.mark.slow
def test_a_scan_answers_the_same_on_sqlite_and_postgresql(
    scanned_fixtures: Path, pg_url: str
) -> None:
    damdup("scan", str(PHOTOS), "--db", pg_url, "-q")
    for argv in EXPORTS:
        on_sqlite = damdup(*argv, "--db", str(scanned_fixtures)).stdout
        on_postgresql = damdup(*argv, "--db", pg_url).stdout
        assert on_sqlite.count("\n") > 20, "the fixtures have related pairs"
        assert on_postgresql == on_sqlite, f"{' '.join(argv)} differs"
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT count(*) FROM assets").fetchone() == (
            len(SQLiteStore(scanned_fixtures).live_assets()),
        )


@pytest.fixture
def pilot(scanned_fixtures: Path, tmp_path: Path) -> Path:
    """A pilot's SQLite index: the scanned fixtures, a reviewer's decision,
    intended marks, and a push run that wrote and journalled some."""
    db = tmp_path / "pilot.sqlite"
    shutil.copyfile(scanned_fixtures, db)
    queue = json.loads(damdup("review", "list", "--format", "json", "--db", str(db)).stdout)
    first = queue[0]
    a, b = first["a"]["key"], first["b"]["key"]
    damdup("review", "decide", a, b, "different", "--by", "anna", "--db", str(db))
    store = open_store(db)
    try:
        assets = store.live_assets()[:3]
        intended = {(a.unit, a.asset_id): f"marks of {a.asset_id}" for a in assets}
        store.set_intended(["scan"], intended)
        run = store.start_push(["scan"], dry_run=False)
        for unit, asset_id in list(intended)[:2]:
            store.record_written(run, unit, asset_id, "", intended[(unit, asset_id)])
        store.record_outbox_error(assets[2].unit, assets[2].asset_id, "refused: 403")
        store.finish_push(run, {"written": 2, "failed": 1})
        check = store.start_check("scan", assets[0].asset_id, "webhook")
        store.finish_check(check, {"verdict": "unique"})
        store.record_original(assets[0], "ab" * 32, 1234)
    finally:
        store.close()
    return db


def knowledge(db: str | Path) -> dict[str, object]:
    store = open_store(db)
    try:
        runs = store.push_runs()
        return {
            "decisions": store.decisions(),
            "outbox": store.outbox(["scan"], pending_only=False),
            "push_runs": runs,
            "journal": [store.journal(run.id) for run in runs],
            "checks": store.checks(),
            "originals": store.originals(store.live_assets()),
            "dump": store.dump(),  # type: ignore[attr-defined]
        }
    finally:
        store.close()


@pytest.mark.slow
def test_db_migrate_moves_a_pilot_into_postgresql_whole(pilot: Path, pg_url: str) -> None:
    before, known = answers(pilot), knowledge(pilot)
    moved = damdup("db", "migrate", "--to", pg_url, "--db", str(pilot), "--format", "json")
    rows = json.loads(moved.stdout)["rows"]
    assert rows["decisions"] == 1 and rows["journal"] == 2 and rows["push_runs"] == 1
    assert rows["outbox"] == 3 and rows["assets"] > 20
    assert answers(pg_url) == before
    assert knowledge(pg_url) == known
    # The index goes on growing there: new runs number after the copied ones.
    store = open_store(pg_url)
    try:
        assert store.start_push(["scan"], dry_run=True) == 2
        assert store.start_check("scan", "x", "webhook") == 2
    finally:
        store.close()
    # Into a database that holds an index already: refused, nothing changed.
    again = damdup("db", "migrate", "--to", pg_url, "--db", str(pilot), check=False)
    assert again.returncode == 2 and "already holds a damdup index" in again.stderr
    assert answers(pg_url) == before


def test_db_migrate_needs_an_index_and_a_postgresql_url(tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "none.sqlite"
    result = damdup("db", "migrate", "--to", pg_url, "--db", str(missing), check=False)
    assert result.returncode == 2
    assert f"no index at {missing} (from --db): nothing to migrate" in result.stderr
    assert not missing.exists()
    open_store(missing, create=True).close()
    for to, message in (
        ("mysql://db/x", "mysql:// is not a kind of index"),
        ("postgresql://u:hunter2@db/x", "must not hold a password"),
    ):
        result = damdup("db", "migrate", "--to", to, "--db", str(missing), check=False)
        assert result.returncode == 2 and message in result.stderr
        assert "hunter2" not in result.stderr
    result = damdup("db", "migrate", "--to", pg_url, "--db", pg_url, check=False)
    assert result.returncode == 2 and "already in PostgreSQL" in result.stderr
