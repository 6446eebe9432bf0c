"""Faults of a shared PostgreSQL index, through the command line: the server
crashes in the middle of a scan, and two daemons (as on two hosts) work on one
index at once. Nothing may be lost or doubled, and a run that lost work says
so with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PHOTOS, ROOT, damdup
from tests.servers.config import write_config
from tests.servers.pg_private import PrivateServer

EXPORTS = [("export", "relations", "--format", "csv"), ("export", "relations", "--format", "jsonl")]
UNITS = ("hel-fi", "kuva", "kasvatus")


@pytest.fixture
def private_pg() -> Iterator[PrivateServer]:
    """A server of this test's own: crashing it disturbs no other test."""
    workdir = Path(tempfile.mkdtemp(prefix="damdup-pg-"))
    workdir.chmod(0o755)  # the server runs as `postgres` when the tests run as root
    server = PrivateServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def count(url: str, query: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as db:
            return int(db.execute(query).fetchone()[0])  # type: ignore[index]
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return 0


@pytest.mark.slow
def test_a_scan_across_a_postgresql_crash_loses_nothing(
    private_pg: PrivateServer, scanned_fixtures: Path
) -> None:
    url = private_pg.create_database("crash")
    env = {**os.environ, "DAMDUP_WORKERS": "2", "DAMDUP_FILESYSTEM_PAGE_SIZE": "16"}
    command = [sys.executable, "-m", "connector.cli", "scan", str(PHOTOS), "--db", url, "-q"]
    scan = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while count(url, "SELECT count(*) FROM assets") < 32 and scan.poll() is None:
        assert time.monotonic() < deadline, "the scan saved nothing in 5 minutes"
        time.sleep(0.1)
    assert scan.poll() is None, "the scan ended before the crash: the test proves nothing"
    private_pg.crash_restart()
    _out, err = scan.communicate(timeout=600)
    if scan.returncode != 0:
        # Work was lost: said plainly, in a line a person reads, not a traceback.
        assert scan.returncode in (1, 2, 3), err
        assert "Traceback" not in err, err
        assert err.strip(), "a failed scan must say why"
    private_pg.wait_up()
    again = damdup("scan", str(PHOTOS), "--db", url, "-q", check=False)
    assert again.returncode == 0, again.stderr
    for argv in EXPORTS:
        on_sqlite = damdup(*argv, "--db", str(scanned_fixtures)).stdout
        assert on_sqlite.count("\n") > 20
        assert damdup(*argv, "--db", url).stdout == on_sqlite, f"{' '.join(argv)} differs"


def events(path: Path) -> list[dict[str, object]]:
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.mark.slow
def test_two_daemons_on_one_postgresql_index(pg_url: str, tmp_path: Path) -> None:
    """As on two hosts: each unit is synced by one daemon at a time (the other
    is told the unit is busy, naming the holder, and exits 3 for work it did
    not do), and the index ends as one daemon alone would leave it."""
    config = tmp_path / "damdup.toml"
    units = {unit: ("filesystem", {"root": str(PHOTOS / unit)}) for unit in UNITS}
    write_config(config, tmp_path / "unused.sqlite", units)
    env = {**os.environ, "DAMDUP_WORKERS": "1", "DAMDUP_DB": pg_url}
    runs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for number in range(2):
        log = tmp_path / f"daemon-{number}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "connector.cli", "daemon", "--config", str(config),
                 "--once", "--jitter", "0", "--metrics-port", "0"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=handle,
            )  # fmt: skip
        runs.append((process, log))
    pids = {process.pid for process, _log in runs}
    outcomes: dict[str, list[str]] = {unit: [] for unit in UNITS}
    for process, log in runs:
        code = process.wait(timeout=600)
        seen = events(log)
        skipped = [event for event in seen if event["event"] == "cycle.skipped"]
        assert code == (3 if skipped else 0), log.read_text()[-3000:]
        for event in skipped:
            assert event["holder_pid"] in pids - {process.pid}, event
            assert "busy" in str(event["reason"])
        for event in seen:
            if event["event"] == "cycle.finished":
                outcomes[str(event["unit"])].append(str(event["outcome"]))
    for unit, found in outcomes.items():
        assert "ok" in found and set(found) <= {"ok", "busy"}, (unit, found)
    # The same index one process gives, asset for asset and pair for pair.
    reference = tmp_path / "reference.sqlite"
    alone = damdup("sync", "--config", str(config), "--db", str(reference), "-q", check=False)
    assert alone.returncode == 0, alone.stderr
    for argv in EXPORTS:
        assert damdup(*argv, "--db", pg_url).stdout == damdup(*argv, "--db", str(reference)).stdout
    with psycopg.connect(pg_url) as db:
        doubled = db.execute(
            "SELECT unit, asset_id FROM assets GROUP BY unit, asset_id HAVING count(*) > 1"
        ).fetchall()
    assert doubled == []
