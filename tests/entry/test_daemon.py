"""`damdup daemon` as a real child process against the real WordPress and the
Drupal and CKAN emulators on 127.0.0.1: changes upstream indexed and marked
within one cycle, /metrics equal to what the index says, SIGTERM in the middle
of a listing saves the cursor and the next run resumes from it, a busy unit is
skipped. The schedule itself is tested on an injected clock and random source."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from adapters.base import Marks
from connector.core.config import load_config
from connector.core.index import SQLiteStore
from connector.core.settings import Settings
from connector.daemon import Daemon, Schedule, first_delay, next_delay
from connector.engine.locks import UnitLock
from connector.engine.scan import current_clusters
from connector.units import build_adapters
from tests.conftest import ROOT
from tests.contract.harness import Harness, start_harness
from tests.entry.test_push import expected as expected_marks
from tests.servers.common import PHOTOS
from tests.servers.config import write_config
from tests.servers.wordpress import WordPressHarness

KINDS = {"site": "wordpress", "museum": "drupal", "opendata": "ckan"}
WRITABLE = "site"  # the one unit with writes = true
DEADLINE_S = 120.0


def originals() -> list[Path]:
    """One original photo of each of several different scenes."""
    labels = json.loads((PHOTOS.parent / "labels.json").read_text())["files"]
    seen: dict[str, str] = {}
    for name, label in labels.items():
        if label["variant"] == "original":
            seen.setdefault(label["scene"], name)
    return [PHOTOS / name for name in seen.values()]


PHOTO = originals()


# -- the schedule, on an injected clock ----------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Draws(random.Random):
    """`random()` answers from a list, in order."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_delays_stay_within_interval_times_one_plus_minus_jitter() -> None:
    assert next_delay(600, 0.1, 0.0) == pytest.approx(540)
    assert next_delay(600, 0.1, 0.5) == pytest.approx(600)
    assert next_delay(600, 0.1, 0.999999) == pytest.approx(660, abs=0.01)
    assert next_delay(600, 0.0, 0.9) == 600
    assert first_delay(600, 0.1, 0.0) == 0
    assert first_delay(600, 0.1, 0.5) == pytest.approx(30)
    draws = random.Random(7)
    delays = [next_delay(900, 0.2, draws.random()) for _ in range(2000)]
    assert 720 <= min(delays) < 740 and 1060 < max(delays) <= 1080


def test_first_runs_are_spread_and_each_unit_comes_round_on_its_interval() -> None:
    clock = FakeClock()
    schedule = Schedule({"a": 100, "b": 100, "c": 3600}, 0.1, clock, Draws([0.9, 0.1, 0.5]))
    # First runs within interval * jitter: a at +9 s, b at +1 s, c at +180 s.
    assert schedule.due() == []
    assert schedule.wait_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert schedule.due() == ["b"]
    clock.now += 8.0
    assert schedule.due() == ["b", "a"]  # the longest waiting first
    schedule.started("b")
    assert schedule.due() == ["a"]  # a running unit is never due
    assert schedule.next_run_in_s("b") is None
    schedule.started("a")
    assert schedule.due() == []
    schedule.rng = Draws([0.0, 1.0])
    clock.now = 1050.0
    schedule.finished("b")  # next: 90 s after it ended (100 * (1 - 0.1))
    schedule.finished("a")  # 110 s
    assert schedule.next_run_in_s("b") == pytest.approx(90)
    assert schedule.next_run_in_s("a") == pytest.approx(110)
    clock.now = 1050.0 + 89.9
    assert schedule.due() == []
    clock.now = 1050.0 + 90.0
    assert schedule.due() == ["b"]
    clock.now = 1180.0
    assert schedule.due() == ["b", "a", "c"]  # due at 1140, 1160 and 1180


def test_jitter_zero_starts_every_unit_at_once_and_bad_jitter_is_refused() -> None:
    clock = FakeClock()
    schedule = Schedule({"a": 60, "b": 3600}, 0.0, clock, random.Random(1))
    assert schedule.due() == ["a", "b"]
    for jitter in (-0.1, 1.0, 2.5):
        with pytest.raises(ValueError, match="jitter"):
            Schedule({"a": 60}, jitter, clock)


def test_healthz_is_503_once_the_scheduler_thread_died(tmp_path: Path) -> None:
    config_path = tmp_path / "damdup.toml"
    root = tmp_path / "photos"
    root.mkdir()
    write_config(config_path, tmp_path / "index.sqlite", {"photos": ("filesystem", {"root": root})})
    config = load_config(config_path)
    calls = {"n": 0}

    def broken_clock() -> float:
        calls["n"] += 1
        if calls["n"] > 1:  # the constructor's first reading works
            raise RuntimeError("clock broke")
        return 0.0

    daemon = Daemon(config, build_adapters(config), jitter=0.0, clock=broken_clock)
    client = Client(daemon.wsgi)
    daemon.start()
    try:
        assert daemon.thread is not None
        daemon.thread.join(30)
        response = client.get("/healthz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "scheduler stopped"
        assert "clock broke" in body["error"]
        assert client.get("/metrics").status_code == 200
        assert client.post("/healthz").status_code == 405
    finally:
        daemon.close()


# -- the daemon as a child process ---------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Harness]]:
    started: dict[str, Harness] = {}
    try:
        for unit, kind in KINDS.items():
            started[unit] = start_harness(kind)
        yield started
    finally:
        for harness in started.values():
            harness.close()


def configure(
    servers: dict[str, Harness], tmp: Path, units: dict[str, dict[str, Any]] | None = None
) -> tuple[Path, Path, dict[str, str]]:
    units = units or {unit: {} for unit in KINDS}
    db = tmp / "index.sqlite"
    config = tmp / "damdup.toml"
    env = write_config(
        config,
        db,
        {
            unit: (
                KINDS[unit],
                {"schedule": "2s", "writes": unit == WRITABLE, **servers[unit].settings(), **extra},
            )
            for unit, extra in units.items()
        },
        workers=2,
    )
    return config, db, env


class DaemonProcess:
    """`damdup daemon` in a child process; its JSON log goes to a file (a pipe
    could fill up and stall it)."""

    def __init__(self, config: Path, env: dict[str, str], tmp: Path, *extra: str) -> None:
        self.port_file = tmp / f"port-{time.monotonic_ns()}"
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "connector.cli", "daemon", "--config", str(config),
                "--metrics-port", "0", "--port-file", str(self.port_file), "--jitter", "0.1",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            env={**os.environ, **env},
            cwd=ROOT,
        )  # fmt: skip
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            wait_for(lambda: self.port_file.exists() and self.port_file.read_text().strip(), self)
            self._port = int(self.port_file.read_text())
        return f"http://127.0.0.1:{self._port}"

    def health(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/healthz", timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = requests.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def cycles(self, unit: str) -> int:
        count: int = self.health()["units"][unit]["cycles"]
        return count

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def log_text(self) -> str:
        return self.log_path.read_text()[-4000:]

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=DEADLINE_S)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log_file.close()


def wait_for(condition: Callable[[], Any], daemon: DaemonProcess | None = None) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if daemon is not None and daemon.process.poll() is not None:
            raise AssertionError(
                f"daemon exited ({daemon.process.returncode}):\n{daemon.log_text()}"
            )
        time.sleep(0.05)
    detail = daemon.log_text() if daemon is not None else ""
    raise AssertionError(f"condition not met within {DEADLINE_S} s\n{detail}")


def index_rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return list(connection.execute(sql, params))


def index_figures(db: Path) -> dict[str, dict[str, int]]:
    """Per unit, straight from the index: live assets, those with an error,
    and copies in duplicate clusters (every member but the canonical)."""
    figures = {unit: {"assets": 0, "errors": 0, "duplicates": 0} for unit in KINDS}
    for unit, live, errors in index_rows(
        db, "SELECT unit, COUNT(*), COUNT(error) FROM assets WHERE live = 1 GROUP BY unit"
    ):
        figures[unit].update(assets=live, errors=errors)
    store = SQLiteStore(db)
    try:
        clusters, _relations = current_clusters(store, Settings(db=db))
    finally:
        store.close()
    for cluster in clusters:
        for member in cluster.members:
            figures[member.asset.unit]["duplicates"] += 1
    return figures


def metric_figures(daemon: DaemonProcess) -> dict[str, dict[str, int]]:
    samples = daemon.metrics()
    names = {"assets": "damdup_assets", "errors": "damdup_asset_errors",
             "duplicates": "damdup_duplicates"}  # fmt: skip
    return {
        unit: {key: int(samples[(name, (("unit", unit),))]) for key, name in names.items()}
        for unit in KINDS
    }


def after_cycles(daemon: DaemonProcess, unit: str, since: int) -> int:
    """Wait for two more cycles of `unit`: the second began after `since` was read."""
    return int(wait_for(lambda: daemon.cycles(unit) >= since + 2 and daemon.cycles(unit), daemon))


@pytest.mark.slow
def test_changes_upstream_are_indexed_and_marked_within_one_cycle(
    servers: dict[str, Harness], tmp_path: Path
) -> None:
    for harness in servers.values():
        harness.reset()
    wordpress, drupal = servers["site"], servers["museum"]
    original, other = PHOTO[0], PHOTO[1]
    site_ids = [wordpress.add(path.name, path.read_bytes()) for path in (original, other)]
    drupal.add(PHOTO[2].name, PHOTO[2].read_bytes())
    servers["opendata"].add(PHOTO[3].name, PHOTO[3].read_bytes())
    config, db, env = configure(servers, tmp_path)

    daemon = DaemonProcess(config, env, tmp_path)
    try:
        for unit in KINDS:
            wait_for(lambda unit=unit: daemon.health()["units"][unit]["last_outcome"], daemon)
        health = daemon.health()
        assert health["status"] == "ok"
        outcomes = {u: s["last_outcome"] for u, s in health["units"].items()}
        assert outcomes == dict.fromkeys(KINDS, "ok"), (health, daemon.log_text())
        # Nothing duplicated yet: the photos carry only damdup's metadata mark.
        assert [wordpress.stored_marks(i).labels for i in site_ids] == [
            ("metadata-missing",),
            ("metadata-missing",),
        ]

        # Upstream: Drupal gets a byte copy of the WordPress photo, and the
        # other WordPress photo is given its location and department.
        drupal.add("kopio.jpg", original.read_bytes())
        assert isinstance(wordpress, WordPressHarness)
        wordpress.server.update(
            site_ids[1],
            wordpress.fields({"location": "Senaatintori", "department": "Kaupunginmuseo"}),
        )
        after_cycles(daemon, "museum", daemon.cycles("museum"))
        after_cycles(daemon, "site", daemon.cycles("site"))

        copies = index_rows(
            db,
            "SELECT b.asset_id FROM assets a JOIN assets b ON a.sha256 = b.sha256 "
            "WHERE a.unit = 'site' AND a.asset_id = ? AND b.unit = 'museum' AND b.live = 1",
            site_ids[0],
        )
        assert len(copies) == 1
        [(metadata,)] = index_rows(
            db, "SELECT metadata FROM assets WHERE unit = 'site' AND asset_id = ?", site_ids[1]
        )
        assert json.loads(metadata)["location"] == "Senaatintori"

        want = expected_marks(db)
        marked = wordpress.stored_marks(site_ids[0])
        assert marked == want[("site", site_ids[0])]
        assert marked.cluster and {"canonical", "duplicate"} & set(marked.labels)
        # Complete metadata, no copies: nothing of damdup's is left on it.
        assert ("site", site_ids[1]) not in want
        assert wordpress.stored_marks(site_ids[1]) == Marks()
        # The Drupal unit is a dry run: nothing was sent to it that changes anything.
        assert drupal.proxy is not None
        assert [e for e in drupal.proxy.log if drupal.changing(e)] == []

        # /metrics says what the index says (read again should a cycle be ending).
        figures = wait_for(
            lambda: metric_figures(daemon) == index_figures(db) and index_figures(db), daemon
        )
        assert figures["museum"]["assets"] == 2 and figures["site"]["assets"] == 2
        # One pair of byte copies: one is the canonical, the other a duplicate.
        assert sum(unit["duplicates"] for unit in figures.values()) == 1
        samples = daemon.metrics()
        for unit in KINDS:
            assert samples[("damdup_sync_runs_total", (("outcome", "ok"), ("unit", unit)))] >= 2
            assert samples[("damdup_last_success_timestamp_seconds", (("unit", unit),))] > 0
        for platform in ("wordpress", "drupal", "ckan"):
            key = ("damdup_http_request_seconds_count", (("method", "GET"), ("platform", platform)))
            assert samples[key] > 0
        # The marks written to WordPress were timed too, under their own method.
        assert wordpress.proxy is not None
        writing = {e.method for e in wordpress.proxy.log if wordpress.changing(e)}
        assert writing
        for method in writing:
            key = (
                "damdup_http_request_seconds_count",
                (("method", method), ("platform", "wordpress")),
            )
            assert samples[key] > 0

        assert daemon.terminate() == 0
        events = daemon.events()  # every line of the log is JSON
        names = {event["event"] for event in events}
        assert {"daemon.started", "cycle.finished", "daemon.stopping", "daemon.stopped"} <= names
        assert all("app_password" not in json.dumps(event) for event in events)
    finally:
        daemon.close()


def listing(harness: Harness) -> list[str]:
    assert harness.proxy is not None
    return [e.path for e in harness.proxy.requests("GET", "include=field_media_image")]


@pytest.mark.slow
def test_sigterm_mid_listing_saves_the_cursor_and_the_next_run_resumes(
    servers: dict[str, Harness], tmp_path: Path
) -> None:
    drupal = servers["museum"]
    drupal.reset()
    for path in PHOTO[:8]:
        drupal.add(path.name, path.read_bytes())
    config, db, env = configure(servers, tmp_path, {"museum": {"page_size": 1}})
    assert drupal.proxy is not None
    drupal.proxy.inject("slow", times=100, path_contains="include=field_media_image", delay_s=0.3)

    first = DaemonProcess(config, env, tmp_path, "--once")
    try:
        wait_for(lambda: len(listing(drupal)) >= 2, first)
        assert first.terminate() == 0
    finally:
        first.close()
    first_listing = listing(drupal)
    [(cursor,)] = index_rows(db, "SELECT cursor FROM cursors WHERE unit = 'museum'")
    assert cursor is not None  # an unfinished listing's place
    [(complete, stats)] = index_rows(
        db, "SELECT complete, stats FROM runs WHERE unit = 'museum' ORDER BY id DESC LIMIT 1"
    )
    assert complete == 0 and json.loads(stats)["stopped"] is True
    indexed = index_rows(db, "SELECT COUNT(*) FROM assets WHERE unit = 'museum'")[0][0]
    assert 0 < indexed < 8
    said = {(e["event"], e.get("signal")) for e in first.events()}
    assert {("daemon.stopping", "SIGTERM"), ("sync.stopped", None)} <= said
    (started,) = [e for e in first.events() if e["event"] == "daemon.started"]
    # Ten steps below this process, as far as the kernel goes (19): pytest run
    # under `nice` leaves fewer. Only at 19 already is no lowering to be seen.
    own = os.nice(0)
    assert started["nice"] == min(19, own + 10), "background work: lower priority than serve"

    drupal.proxy.clear()
    second = DaemonProcess(config, env, tmp_path, "--once")
    try:
        assert second.process.wait(timeout=DEADLINE_S) == 0, second.log_text()
    finally:
        second.close()
    resumed = listing(drupal)
    assert resumed and not set(resumed) & set(first_listing)  # not one page listed again
    assert all("filter%5Bafter%5D" in path for path in resumed)  # none from the start
    [(complete, stats)] = index_rows(
        db, "SELECT complete, stats FROM runs WHERE unit = 'museum' ORDER BY id DESC LIMIT 1"
    )
    assert complete == 1 and json.loads(stats)["resumed"] is True
    assert index_rows(db, "SELECT COUNT(*) FROM assets WHERE unit = 'museum' AND live = 1") == [
        (8,)
    ]
    assert index_rows(db, "SELECT cursor FROM cursors WHERE unit = 'museum'") == [(None,)]


@pytest.mark.slow
def test_a_busy_unit_is_skipped_with_the_holders_pid(
    servers: dict[str, Harness], tmp_path: Path
) -> None:
    for unit in ("museum", "opendata"):
        servers[unit].reset()
        servers[unit].add(PHOTO[4].name, PHOTO[4].read_bytes())
    config, db, env = configure(servers, tmp_path, {"museum": {}, "opendata": {}})
    with UnitLock(db, "museum"):
        daemon = DaemonProcess(config, env, tmp_path, "--once")
        try:
            assert daemon.process.wait(timeout=DEADLINE_S) == 3
            skipped = [e for e in daemon.events() if e["event"] == "cycle.skipped"]
            finished = {e["unit"]: e["outcome"] for e in daemon.events()
                        if e["event"] == "cycle.finished"}  # fmt: skip
        finally:
            daemon.close()
        assert [(e["unit"], e["holder_pid"]) for e in skipped] == [("museum", os.getpid())]
        assert f"unit museum is busy: process {os.getpid()} holds its lock" in skipped[0]["reason"]
        assert finished == {"museum": "busy", "opendata": "ok"}

        sync = subprocess.run(
            [sys.executable, "-m", "connector.cli", "sync", "--config", str(config), "-q",
             "--format", "json"],
            capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert sync.returncode == 3, sync.stderr
        payload = json.loads(sync.stdout)
        assert list(payload["busy_units"]) == ["museum"]
        assert f"process {os.getpid()}" in payload["busy_units"]["museum"]
        assert [unit["unit"] for unit in payload["units"]] == ["opendata"]
    # Released: the next run takes the unit.
    assert index_rows(db, "SELECT COUNT(*) FROM assets WHERE unit = 'museum'") == [(0,)]
    again = DaemonProcess(config, env, tmp_path, "--once", "--unit", "museum")
    try:
        assert again.process.wait(timeout=DEADLINE_S) == 0, again.log_text()
    finally:
        again.close()
    assert index_rows(db, "SELECT COUNT(*) FROM assets WHERE unit = 'museum'") == [(1,)]


def test_a_taken_metrics_port_is_a_clear_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "damdup.toml"
    write_config(config, tmp_path / "index.sqlite", {"photos": ("filesystem", {"root": PHOTOS})})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "connector.cli", "daemon", "--config", str(config), "--once",
             "--metrics-port", str(port)],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
    assert result.returncode == 2
    assert "damdup: daemon:" in result.stderr and "in use" in result.stderr
    assert not (tmp_path / "index.sqlite").exists()  # nothing was synced
