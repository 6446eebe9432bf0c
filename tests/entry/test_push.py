"""`damdup push` against platform servers on 127.0.0.1: dry run first, then
marks written natively and read back through each platform's own API, a
second push that sends nothing, stale marks removed when a cluster changes,
a revert, and no DELETE or foreign change anywhere.

Two writable units (Drupal and CKAN emulators) share copies of one photograph;
a Finna unit (read-only) gets its marks in the report."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Marks
from connector.core.index import SQLiteStore
from connector.core.settings import Settings
from connector.engine.outbox import intended_marks
from connector.engine.scan import current_clusters
from tests.conftest import ROOT, damdup
from tests.contract.harness import Harness, start_harness
from tests.servers.common import PHOTOS
from tests.servers.config import write_config

WRITABLE = {"museum": "drupal", "opendata": "ckan"}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Harness]]:
    started = {unit: start_harness(kind) for unit, kind in {**WRITABLE, "finna": "finna"}.items()}
    yield started
    for harness in started.values():
        harness.close()


def _fixture_names() -> dict[str, list[str]]:
    """One photograph as each unit has it: the original and a different shot
    of the same scene in one; a byte copy, a re-encode and an unrelated photo
    in the other; a half-size copy on Finna."""
    labels = json.loads((PHOTOS.parent / "labels.json").read_text())["files"]
    china = {label["variant"]: name for name, label in labels.items() if label["photo"] == "china"}
    shot = next(
        name
        for name, label in labels.items()
        if label["scene"] == "china" and label["variant"] == "different_shot"
    )
    other = next(
        name
        for name, label in labels.items()
        if label["variant"] == "original" and label["scene"] != "china"
    )
    return {
        "museum": [china["original"], shot],
        "opendata": [china["byte_copy"], china["reencode_q60"], other],
        "finna": [china["resize_25"]],
    }


@pytest.fixture
def site(servers: dict[str, Harness], tmp_path: Path) -> dict[str, Any]:
    ids: dict[str, list[str]] = {}
    for unit, names in _fixture_names().items():
        servers[unit].reset()
        ids[unit] = [
            servers[unit].add(Path(name).name, (PHOTOS / name).read_bytes(), None) for name in names
        ]
    for unit in WRITABLE:
        for asset_id in ids[unit]:
            servers[unit].set_foreign(asset_id)
    db = tmp_path / "index.sqlite"
    return {"servers": servers, "ids": ids, "db": db, "tmp": tmp_path}


def configure(site: dict[str, Any], writes: bool) -> tuple[Path, dict[str, str]]:
    config = site["tmp"] / "damdup.toml"
    units = {
        unit: (kind, {**site["servers"][unit].settings(), "writes": writes})
        for unit, kind in {**WRITABLE, "finna": "finna"}.items()
    }
    env = write_config(config, site["db"], units)
    return config, env


def expected(db: Path) -> dict[tuple[str, str], Marks]:
    store = SQLiteStore(db)
    try:
        clusters, relations = current_clusters(store, Settings(db=db))
        return intended_marks(clusters, relations, store.live_assets())
    finally:
        store.close()


def stored(site: dict[str, Any]) -> dict[tuple[str, str], Marks]:
    return {
        (unit, asset_id): site["servers"][unit].stored_marks(asset_id)
        for unit in WRITABLE
        for asset_id in site["ids"][unit]
    }


def changing_requests(site: dict[str, Any]) -> int:
    total = 0
    for unit in WRITABLE:
        harness = site["servers"][unit]
        total += len([entry for entry in harness.proxy.log if harness.changing(entry)])
    return total


def deletes(site: dict[str, Any]) -> list[str]:
    return [
        entry.path for unit in WRITABLE for entry in site["servers"][unit].proxy.requests("DELETE")
    ]


def foreign(site: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (unit, asset_id): site["servers"][unit].foreign_state(asset_id)
        for unit in WRITABLE
        for asset_id in site["ids"][unit]
    }


def push(config: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    result = damdup("push", "--config", str(config), "--format", "json", *extra, env=env)
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def outcomes(report: dict[str, Any], unit: str | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for change in report["changes"]:
        if unit is None or change["unit"] == unit:
            counts[change["outcome"]] = counts.get(change["outcome"], 0) + 1
    return counts


def test_push_is_a_dry_run_until_writes_are_enabled(site: dict[str, Any]) -> None:
    config, env = configure(site, writes=False)
    damdup("sync", "--config", str(config), "-q", env=env)
    want = expected(site["db"])
    assert any("canonical" in m.labels for m in want.values())
    for harness in site["servers"].values():
        harness.proxy.clear()

    report = push(config, env)
    assert sorted(report["dry_run_units"]) == ["finna", "museum", "opendata"]
    would = {
        (c["unit"], c["asset_id"]): c["after"]
        for c in report["changes"]
        if c["outcome"] == "would-change"
    }
    writable_want = {key: m for key, m in want.items() if key[0] in WRITABLE}
    assert set(would) == set(writable_want)
    for key, after in would.items():
        assert after["labels"] == list(writable_want[key].labels)
    assert outcomes(report, "finna") == {"report-only": 1}
    assert changing_requests(site) == 0
    assert all(marks == Marks() for marks in stored(site).values())

    sheet = site["tmp"] / "marks.csv"
    text = damdup("push", "--config", str(config), "--report", str(sheet), env=env).stdout
    assert "would-change" in text and "Dry run: nothing was sent" in text
    assert "finna: read-only platform; the marks of its 1 asset(s) are in the report" in text
    with sheet.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    finna = [row for row in rows if row["unit"] == "finna"]
    [finna_key] = [key for key in want if key[0] == "finna"]
    assert [(row["outcome"], row["marks"]) for row in finna] == [
        ("report-only", " ".join(want[finna_key].labels))
    ]
    assert changing_requests(site) == 0


def test_push_writes_marks_once_and_a_second_push_sends_nothing(site: dict[str, Any]) -> None:
    config, env = configure(site, writes=True)
    damdup("sync", "--config", str(config), "-q", env=env)
    before_foreign = foreign(site)
    for harness in site["servers"].values():
        harness.proxy.clear()

    report = push(config, env)
    want = expected(site["db"])
    assert report["dry_run_units"] == [] and report["report_only_units"] == ["finna"]
    have = stored(site)
    for key, marks in have.items():
        assert marks == want.get(key, Marks()), key
    duplicates = [m for m in have.values() if "duplicate" in m.labels]
    assert duplicates and all(m.canonical_url for m in duplicates)
    # The photos were uploaded without location, date or department.
    assert all("metadata-missing" in m.labels for m in have.values())
    assert outcomes(report, "museum").get("applied", 0) + outcomes(report, "opendata").get(
        "applied", 0
    ) == len([k for k in want if k[0] in WRITABLE])
    assert foreign(site) == before_foreign
    assert deletes(site) == []

    writes_after_first = changing_requests(site)
    again = push(config, env)
    assert changing_requests(site) == writes_after_first, "a second push changes nothing"
    assert outcomes(again, "museum") == {} and outcomes(again, "opendata") == {}
    assert outcomes(again, "finna") == {"report-only": 1}


def test_a_changed_cluster_removes_stale_marks_and_revert_restores(site: dict[str, Any]) -> None:
    config, env = configure(site, writes=True)
    damdup("sync", "--config", str(config), "-q", env=env)
    first = push(config, env)
    marked = stored(site)
    before_foreign = foreign(site)

    # A reviewer says the re-encode and its canonical are not the same image:
    # the cluster changes and the re-encode's marks no longer hold.
    want = expected(site["db"])
    copy = ("opendata", site["ids"]["opendata"][1])
    assert {"duplicate", "duplicate-candidate"} & set(want[copy].labels)
    canonical = next(
        key
        for key, m in want.items()
        if "canonical" in m.labels and m.cluster == want[copy].cluster
    )
    damdup(
        "review", "decide", f"{copy[0]}:{copy[1]}", f"{canonical[0]}:{canonical[1]}",
        "different", "--by", "archivist", "--db", str(site["db"]),
    )  # fmt: skip
    second = push(config, env)
    now = stored(site)
    want_now = expected(site["db"])
    assert not {"duplicate", "duplicate-candidate"} & set(now[copy].labels)
    for key, marks in now.items():
        assert marks == want_now.get(key, Marks()), key
    assert foreign(site) == before_foreign
    assert deletes(site) == []

    # Reverting the second run puts back exactly what it changed.
    reverted = push(config, env, "--revert", str(second["run"]))
    assert reverted["run"] > second["run"]
    assert stored(site) == marked
    # ... and the next push does not redo it until the intended marks change.
    held = push(config, env)
    assert outcomes(held, "museum") == {} and outcomes(held, "opendata") == {}
    assert stored(site) == marked
    assert first["run"] < second["run"]

    history = damdup("push", "--config", str(config), "--history", env=env).stdout
    assert f"revert of {second['run']}" in history


def test_revert_of_an_unknown_run_is_a_clear_error(site: dict[str, Any]) -> None:
    config, env = configure(site, writes=True)
    result = damdup("push", "--config", str(config), "--revert", "999", check=False, env=env)
    assert result.returncode == 2
    assert f"no index at {site['db']}" in result.stderr, "nothing synced yet: no index"
    damdup("sync", "--config", str(config), "-q", env=env)
    result = damdup("push", "--config", str(config), "--revert", "999", check=False, env=env)
    assert result.returncode == 2
    assert "no push run 999" in result.stderr


def test_a_unit_with_bad_credentials_fails_alone(site: dict[str, Any]) -> None:
    config, env = configure(site, writes=True)
    damdup("sync", "--config", str(config), "-q", env=env)
    museum = site["servers"]["museum"]
    bad = museum.bad_credentials()
    assert bad is not None
    units = {
        "museum": ("drupal", {**museum.settings(**bad), "writes": True}),
        "opendata": ("ckan", {**site["servers"]["opendata"].settings(), "writes": True}),
    }
    env = write_config(config, site["db"], units)
    result = damdup("push", "--config", str(config), "--format", "json", check=False, env=env)
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert "museum" in report["failed_units"]
    assert outcomes(report, "opendata").get("applied", 0) > 0
    assert all(
        site["servers"]["museum"].stored_marks(asset_id) == Marks()
        for asset_id in site["ids"]["museum"]
    )


def journalled(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM journal").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_kill_9_mid_push_then_push_finishes_without_writing_twice(site: dict[str, Any]) -> None:
    config, env = configure(site, writes=True)
    damdup("sync", "--config", str(config), "-q", env=env)
    want = {k: m for k, m in expected(site["db"]).items() if k[0] in WRITABLE}
    assert len(want) >= 3
    for harness in site["servers"].values():
        harness.proxy.clear()
        harness.proxy.inject("slow", times=1000, delay_s=0.4)
    child = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "push", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, **env, "DAMDUP_FETCH_CONCURRENCY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while journalled(site["db"]) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 1 <= journalled(site["db"]) < len(want), "killed part-way"
    for harness in site["servers"].values():
        harness.proxy.faults.clear()

    push(config, env)
    have = stored(site)
    for key, marks in have.items():
        assert marks == want.get(key, Marks()), key
    # Every asset was written once: the one in flight at the kill is found
    # already holding its marks by the second push.
    assert changing_requests(site) == len(want)


def test_a_full_tag_set_is_recorded_as_no_room_and_loses_no_tag(tmp_path: Path) -> None:
    """S3 allows 10 tags an object: where the owner's tags leave no room,
    push writes nothing there, records why, and keeps every tag; the other
    copy is marked, and the next push tries the full one again."""
    s3 = start_harness("s3")
    try:
        s3.reset()
        photo = (PHOTOS / _fixture_names()["museum"][0]).read_bytes()
        full, roomy = s3.add("kopio-1.jpg", photo, None), s3.add("kopio-2.jpg", photo, None)
        owners = {f"owner-{number}": "kaupunginmuseo" for number in range(10)}
        s3.put_tags(full, owners)  # type: ignore[attr-defined]
        config = tmp_path / "damdup.toml"
        db = tmp_path / "index.sqlite"
        env = write_config(config, db, {"pilvi": ("s3", {**s3.settings(), "writes": True})})
        damdup("sync", "--config", str(config), "-q", env=env)

        report = push(config, env)
        by_id = {change["asset_id"]: change for change in report["changes"]}
        assert by_id[full]["outcome"] == "no-room" and "10" in by_id[full]["error"]
        assert by_id[roomy]["outcome"] == "applied"
        assert s3.tags(full) == owners  # type: ignore[attr-defined]
        assert s3.stored_marks(roomy) != Marks()
        store = SQLiteStore(db)
        try:
            [row] = [r for r in store.outbox(["pilvi"]) if r.asset_id == full]
        finally:
            store.close()
        assert row.error is not None and row.error.startswith("no room")
        assert outcomes(push(config, env)) == {"no-room": 1}
    finally:
        s3.close()


def test_marks_damdup_cannot_read_are_replaced_by_push(tmp_path: Path) -> None:
    """Someone edited damdup's own property by hand into something damdup
    cannot read: push neither stops nor fails on it, it writes the right marks."""
    from adapters.webdav import NAMESPACE

    dav = start_harness("webdav")
    try:
        dav.reset()
        photo = (PHOTOS / _fixture_names()["museum"][0]).read_bytes()
        edited, other = dav.add("kopio-1.jpg", photo, None), dav.add("kopio-2.jpg", photo, None)
        dav.server.set_properties(  # type: ignore[attr-defined]
            edited, {f"{{{NAMESPACE}}}damdup-cluster": "ei-klusteri"}
        )
        config = tmp_path / "damdup.toml"
        db = tmp_path / "index.sqlite"
        env = write_config(config, db, {"jaettu": ("webdav", {**dav.settings(), "writes": True})})
        damdup("sync", "--config", str(config), "-q", env=env)

        report = push(config, env)
        assert outcomes(report) == {"applied": 2}
        want = expected(db)
        assert dav.stored_marks(edited) == want[("jaettu", edited)] != Marks()
        assert dav.stored_marks(other) == want[("jaettu", other)]
    finally:
        dav.close()


def test_writes_in_flight_stay_within_the_unit_bound(tmp_path: Path) -> None:
    """`fetch_concurrency` bounds a unit's marks requests as it bounds its
    fetches: with 3, the proxy sees exactly 3 at once, and every copy ends marked."""
    drupal = start_harness("drupal")
    try:
        drupal.reset()
        photo = (PHOTOS / _fixture_names()["museum"][0]).read_bytes()
        ids = [drupal.add(f"kopio-{n}.jpg", photo, None) for n in range(8)]
        config = tmp_path / "damdup.toml"
        db = tmp_path / "index.sqlite"
        env = write_config(config, db, {"museo": ("drupal", {**drupal.settings(), "writes": True})})
        damdup("sync", "--config", str(config), "-q", env=env)
        assert drupal.proxy is not None
        drupal.proxy.clear()
        drupal.proxy.inject("slow", times=1000, path_contains="/jsonapi/media", delay_s=0.3)

        report = push(config, env | {"DAMDUP_FETCH_CONCURRENCY": "3"})
        assert outcomes(report) == {"applied": 8}
        assert drupal.proxy.max_in_flight == 3
        want = expected(db)
        assert [drupal.stored_marks(i) for i in ids] == [want[("museo", i)] for i in ids]
    finally:
        drupal.close()


def test_revert_rules_hold_release_and_converge(site: dict[str, Any]) -> None:
    """A revert never replays marks over an asset a later push changed; the
    assets it holds back are shown (push, status) and released on request;
    reverting a revert brings its assets to the marks the index holds."""
    config, env = configure(site, writes=True)
    damdup("sync", "--config", str(config), "-q", env=env)
    first = push(config, env)
    want = expected(site["db"])
    copy = ("opendata", site["ids"]["opendata"][1])
    canonical = next(
        key
        for key, m in want.items()
        if "canonical" in m.labels and m.cluster == want[copy].cluster
    )

    # Revert the first run: everything it wrote is taken back and held.
    reverted = push(config, env, "--revert", str(first["run"]))
    assert all(marks == Marks() for marks in stored(site).values())
    held_keys = {(h["unit"], h["asset_id"]) for h in reverted["held"]}
    assert held_keys == {
        (c["unit"], c["asset_id"]) for c in first["changes"] if c["outcome"] == "applied"
    }
    shown = damdup("push", "--config", str(config), "--dry-run", env=env).stdout
    assert f"{len(held_keys)} asset(s) held back by a revert" in shown
    assert "damdup push --release" in shown
    rows = json.loads(damdup("status", "--config", str(config), "--format", "json").stdout)
    assert sum(row["held"] for row in rows) == len(held_keys)

    # A reviewer decides on one pair: its assets' marks change, their hold
    # ends, and the next push writes them.
    damdup(
        "review", "decide", f"{copy[0]}:{copy[1]}", f"{canonical[0]}:{canonical[1]}",
        "different", "--by", "archivist", "--config", str(config),
    )  # fmt: skip
    later = push(config, env)
    changed_later = {
        (c["unit"], c["asset_id"]) for c in later["changes"] if c["outcome"] == "applied"
    }
    assert copy in changed_later

    # Reverting the revert: assets a later push changed are left as they are
    # (superseded); the others get the marks the index holds now, not the
    # marks from before the first revert.
    undo = push(config, env, "--revert", str(reverted["run"]))
    superseded = {
        (c["unit"], c["asset_id"]) for c in undo["changes"] if c["outcome"] == "superseded"
    }
    assert superseded == changed_later & held_keys
    assert copy in superseded
    want_now = expected(site["db"])
    for key, marks in stored(site).items():
        assert marks == want_now.get(key, Marks()), key
    assert undo["held"] == []
    again = push(config, env)
    assert outcomes(again, "museum") == {} and outcomes(again, "opendata") == {}

    # Revert the reviewer's push, then release: push converges to the index.
    back = push(config, env, "--revert", str(later["run"]))
    assert copy in {(h["unit"], h["asset_id"]) for h in back["held"]}
    text = damdup("push", "--config", str(config), "--release", env=env).stdout
    assert f"released {len(back['held'])} held asset(s)" in text
    assert "applied" in text, "a real push lists what it wrote"
    assert "Set `writes = true`" not in text, "writes are on: no dry-run advice"
    for key, marks in stored(site).items():
        assert marks == want_now.get(key, Marks()), key
    rows = json.loads(damdup("status", "--config", str(config), "--format", "json").stdout)
    assert sum(row["held"] for row in rows) == 0
    assert deletes(site) == []
