"""engine = "celery" under faults, with real processes: `damdup worker`s
killed with SIGKILL again and again under a run of 2,000 images, and the
broker restarted under a run: Redis with its queues kept or lost, and a
RabbitMQ node. Each run must
index what a local scan indexes: every asset once, its fingerprint once,
the same relations.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
from PIL import Image

from connector.engine.celery_app import QUEUE
from tests.conftest import PHOTOS, ROOT, damdup
from tests.entry.test_celery import (
    FAST,
    READY_TIMEOUT_S,
    amqp_broker,
    celery_env,
    relations,
    start_worker,
    stop_workers,
    wait_ready,
    workers,
)
from tests.servers.broker import (
    PrivateRabbitMQ,
    PrivateRedis,
    ServerError,
    private_rabbitmq,
    private_redis,
)

__all__ = ["amqp_broker"]  # a fixture of test_celery.py, used here

pytestmark = pytest.mark.slow

ASSETS = 4000  # a run long enough for ten kills on a quiet machine (2,000 ran out)
COPY_EVERY = 9  # every ninth image has a smaller, recompressed copy
KILLS = 10
RUN_TIMEOUT_S = 400
# Longer than a job the broker forgot takes to be sent again (hard limit + margin).
RESTART_TIMEOUT_S = 240
# Messages (of up to 16 jobs) taken by the workers before the broker restarts:
# about a quarter of the run.
RESTART_AFTER = 60
RECEIVED = re.compile(r"damdup\.jobs\[([0-9a-f-]+)\] received")
DONE = re.compile(r"damdup\.jobs\[([0-9a-f-]+)\] (?:succeeded|raised)")


def build_images(folder: Path, count: int) -> None:
    """`count` small JPEGs (64-160 px, cheap to decode), the same on every
    run; every ninth with a near-copy, so that there are relations to find."""
    folder.mkdir(parents=True)
    made = number = 0
    while made < count:
        rng = np.random.default_rng(number)
        width, height = (int(side) for side in rng.integers(64, 161, size=2))
        coarse = Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
        noise = rng.integers(-12, 13, size=(height, width, 3))
        image = Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))
        image.save(folder / f"img{number:05d}.jpg", quality=88)
        made += 1
        if made < count and number % COPY_EVERY == 0:
            smaller = image.resize((width * 3 // 4, height * 3 // 4), Image.Resampling.LANCZOS)
            smaller.save(folder / f"img{number:05d}_copy.jpg", quality=70)
            made += 1
        number += 1


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2,000 images and their local scan (this host's pool): the reference."""
    root = tmp_path_factory.mktemp("many")
    folder = root / "images"
    build_images(folder, ASSETS)
    local = root / "local.sqlite"
    damdup("scan", str(folder), "--db", str(local), "-q")
    assert relations(local).count("\n") > 100, "the images hold duplicates to find"
    return folder, local


@contextmanager
def scanning(folder: Path, db: Path, broker: str, where: Path) -> Iterator[subprocess.Popen[str]]:
    """`damdup scan` with engine = "celery", ended if the test stops first."""
    scan = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "scan", str(folder), "--db", str(db), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=where,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DAMDUP_WORKERS": "2",
             **celery_env(broker)},
    )  # fmt: skip
    try:
        yield scan
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.communicate()


def index_rows(db: Path) -> dict[str, object]:
    """What an index holds, as SQL sees it."""
    with sqlite3.connect(db) as conn:
        assets, ids, errors, unfingerprinted = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT unit || '/' || asset_id),"
            " COUNT(error), COUNT(*) - COUNT(sha256) FROM assets"
        ).fetchone()
        # Each asset's fingerprint rows (the content digest is their key).
        per_asset = conn.execute(
            "SELECT n, COUNT(*) FROM (SELECT COUNT(f.sha256) AS n FROM assets a"
            " LEFT JOIN fingerprints f ON f.sha256 = a.sha256 GROUP BY a.unit, a.asset_id)"
            " GROUP BY n"
        ).fetchall()
        codes = conn.execute(
            "SELECT sha256, phash, dhash, width, height FROM fingerprints ORDER BY sha256"
        ).fetchall()
    return {
        "assets": assets,
        "distinct ids": ids,
        "error rows": errors,
        "without a digest": unfingerprinted,
        "fingerprint rows per asset": dict(per_asset),
        "fingerprints": codes,
    }


def assert_indexed_as_local(db: Path, local: Path, scan_output: str) -> None:
    found, expected = index_rows(db), index_rows(local)
    assert found["assets"] == found["distinct ids"] == ASSETS
    assert found["error rows"] == 0 and found["without a digest"] == 0
    assert found["fingerprint rows per asset"] == {1: ASSETS}
    assert found == expected
    # One outcome per asset reached the index: none lost, none counted twice.
    assert f"{ASSETS} fingerprinted" in scan_output, scan_output
    assert relations(db) == relations(local)


def wait_for(condition: object, what: str, scan: subprocess.Popen[str], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        assert scan.poll() is None, f"the scan ended before {what}: {scan.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {limit_s:g} s"
        time.sleep(0.02)


def received(log: Path) -> list[str]:
    return RECEIVED.findall(log.read_text(errors="replace"))


def running(log: Path) -> list[str]:
    """The jobs a worker's log shows taken and not finished."""
    text = log.read_text(errors="replace")
    return sorted(set(RECEIVED.findall(text)) - set(DONE.findall(text)))


def kill_under_a_job(
    workers: dict[int, subprocess.Popen[bytes]], where: Path, scan: subprocess.Popen[str]
) -> tuple[int, list[str], list[psutil.Process]]:
    """SIGKILL to the main process of whichever of `workers` first holds a job
    it has not acknowledged: its number, and that job's id. Stopped first
    (SIGSTOP), so that what its log shows is what it holds: it acknowledges
    a job after the job's "succeeded" line, and a stopped worker
    acknowledges nothing. (Whichever holds one, not a given one: waiting for
    a just-started worker to take a job let a fast run end before its tenth
    kill.) Its worker processes are returned, not waited for here: their end
    is seen a while after it (here, about 2 s), which would let the run end
    before its tenth kill."""

    def log(number: int) -> Path:
        return where / f"worker{number}.log"

    while True:
        wait_for(lambda: any(running(log(n)) for n in workers), "a job for a worker", scan, 120)
        number = next((n for n in workers if running(log(n))), None)
        if number is None:
            continue  # finished meanwhile
        victim = workers[number]
        victim.send_signal(signal.SIGSTOP)
        held = running(log(number))
        if held:
            break
        victim.send_signal(signal.SIGCONT)  # done meanwhile: the next one
    children = psutil.Process(victim.pid).children(recursive=True)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return number, held, children


# -- workers killed, again and again ---------------------------------------------


def test_workers_killed_ten_times_lose_and_double_nothing(
    amqp_broker: str, many: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGKILL to a worker's main process, as when its host is lost, 10 times
    under a run: its child (the worker process running the job) ends with
    it, RabbitMQ hands the unacknowledged job to another worker at once, and
    a new worker takes the dead one's place. (A worker process killed under
    a job while its worker lives is that job's recorded error instead, as a
    decoder crash is: test_celery.py's hostile files.)"""
    folder, local = many
    db = tmp_path / "index.sqlite"
    started: list[subprocess.Popen[bytes]] = []
    in_flight_at_death: list[str] = []
    orphans: list[psutil.Process] = []
    try:
        for number in range(2):
            started.append(start_worker(amqp_broker, tmp_path, number, FAST))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for number, process in enumerate(started):
            wait_ready(process, tmp_path / f"worker{number}.log", deadline)
        began = time.monotonic()
        with scanning(folder, db, amqp_broker, tmp_path) as scan:
            live = [0, 1]  # the numbers of the running workers
            for kill in range(KILLS):
                number, held, children = kill_under_a_job(
                    {n: started[n] for n in live}, tmp_path, scan
                )
                live.remove(number)
                in_flight_at_death.extend(held)
                orphans.extend(children)
                # Its place taken at once; the next kill needs no wait for it to be
                # ready (the other worker runs the jobs meanwhile), only for a
                # worker to hold a job.
                replacement = 2 + kill
                started.append(start_worker(amqp_broker, tmp_path, replacement, FAST))
                live.append(replacement)
            out, err = scan.communicate(timeout=RUN_TIMEOUT_S)
            took = time.monotonic() - began
            assert scan.returncode == 0, err
            assert all(started[number].poll() is None for number in live)
            # The worker processes of the killed workers ended with them:
            # nothing left holding memory (the live workers' still run).
            _gone, alive = psutil.wait_procs(orphans, timeout=15)
            assert not alive, f"worker processes outlived their worker: {alive}"
    finally:
        stop_workers(started)
    # The kills hit jobs under way, and each of those was run again elsewhere.
    runs: dict[str, int] = {}
    for log in tmp_path.glob("worker*.log"):
        for task in received(log):
            runs[task] = runs.get(task, 0) + 1
    twice = sum(count > 1 for count in runs.values())
    print(f"{KILLS} kills, {twice} jobs received twice, run of {ASSETS} images: {took:.1f} s")
    assert len(in_flight_at_death) >= KILLS, in_flight_at_death  # each kill, under a job
    assert all(runs[task] >= 2 for task in in_flight_at_death), in_flight_at_death
    assert_indexed_as_local(db, local, out)


# -- the broker restarted ------------------------------------------------------------


Restart = Callable[[list[subprocess.Popen[bytes]], subprocess.Popen[str]], None]


@contextmanager
def supervised(
    started: list[subprocess.Popen[bytes]], broker: str, where: Path
) -> Iterator[list[int]]:
    """Each worker that exits replaced by a new one, as the worker's systemd
    unit does (docs/deploy.md, Restart=always): kombu 5.7's Redis transport
    can end a worker whose connection drops while it holds messages
    ("Unrecoverable error: AttributeError: 'NoneType' object has no attribute
    'hostname'", in restore_unacked on closing the channel; seen here with
    and without this project's changes). Yields the numbers of the workers
    that exited; the replacements are stopped with the others."""
    exited: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            for index, process in enumerate(started):
                if process.poll() is not None:
                    exited.append(index)
                    started[index] = start_worker(broker, where, 100 + len(exited), FAST)

    watcher = threading.Thread(target=watch, name="supervisor", daemon=True)
    watcher.start()
    try:
        yield exited
    finally:
        stop.set()
        watcher.join()


def run_through_a_restart(
    broker: str, restart: Restart, folder: Path, db: Path, where: Path
) -> tuple[str, str, int, int]:
    """A Celery scan of `folder` on two workers, the broker restarted (by
    `restart`, given the workers and the scan) once RESTART_AFTER messages
    have run: the scan's output, its log, and how many jobs it sent again
    and how many their workers cancelled."""
    with workers(broker, where, env=FAST) as started, scanning(folder, db, broker, where) as scan:
        began = time.monotonic()
        wait_for(
            lambda: sum(len(received(log)) for log in where.glob("worker*.log")) > RESTART_AFTER,
            f"{RESTART_AFTER} messages run",
            scan,
            120,
        )
        with supervised(started, broker, where) as exited:
            restart(started, scan)
            out, err = scan.communicate(timeout=RESTART_TIMEOUT_S)
        took = time.monotonic() - began
    (where / "scan.err").write_text(err)
    assert scan.returncode == 0, err
    resent, cancelled = err.count('"celery.resent"'), err.count('"celery.cancelled"')
    print(f"broker restarted: run of {ASSETS} images {took:.1f} s, {resent} jobs sent again,"
          f" {cancelled} cancelled by their worker, {len(exited)} worker(s) exited and"
          " were replaced")  # fmt: skip
    return out, err, resent, cancelled


@contextmanager
def own_redis(where: Path, persistent: bool) -> Iterator[PrivateRedis]:
    try:
        with private_redis(where, persistent) as server:
            yield server
    except ServerError as exc:
        pytest.skip(str(exc))


def waiting_in_redis(url: str) -> int:
    """Messages in the damdup queue of a Redis broker: sent, not yet taken
    by a worker (kombu keeps a queue as lists named after it, one per
    priority step)."""
    client = redis.Redis.from_url(url)
    try:
        return sum(
            client.llen(key) for key in client.scan_iter(f"{QUEUE}*") if client.type(key) == b"list"
        )
    finally:
        client.close()


@contextmanager
def stopped(started: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """The workers and their worker processes stopped (SIGSTOP): they take
    and finish nothing until the block ends."""
    processes = [psutil.Process(worker.pid) for worker in started]
    processes += [child for worker in list(processes) for child in worker.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            if process.is_running():
                process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("kept", [True, False], ids=["queues-kept", "comes-back-empty"])
def test_a_broker_restarted_mid_run_loses_nothing(
    many: tuple[Path, Path], tmp_path: Path, kept: bool
) -> None:
    """Redis stopped mid-run and started again 3 s later on the same port:
    with its queues kept (appendonly, as docs/deploy.md asks), or empty (its
    jobs and results lost). The run goes on once the broker is back; a job
    the broker forgot is sent again once it has had no result for longer
    than any job may run. Nothing is lost, nothing stored twice."""
    folder, local = many
    db = tmp_path / "index.sqlite"
    forgotten: list[int] = []

    def restart(started: list[subprocess.Popen[bytes]], scan: subprocess.Popen[str]) -> None:
        if kept:
            server.restart(pause_s=3)
            return
        # Certain to lose jobs: the workers stopped, so that what the broker
        # holds stays there; it goes once the scan has sent a message no
        # worker has taken. (Left to timing, a run whose workers held every
        # message lost nothing, and proved nothing.)
        with stopped(started):
            wait_for(lambda: waiting_in_redis(server.url) > 0, "a message waiting", scan, 60)
            forgotten.append(waiting_in_redis(server.url))
            server.restart(pause_s=3, forget=True)

    with own_redis(tmp_path / "redis", persistent=kept) as server:
        out, err, resent, _cancelled = run_through_a_restart(
            server.url, restart, folder, db, tmp_path
        )
    if not kept:
        # The messages waiting in the broker went with it: their jobs are
        # sent again once they have had no result for longer than they may run.
        print(f"{forgotten[0]} messages waiting when the broker went")
        assert forgotten[0] > 0 and resent > 0, err
    assert_indexed_as_local(db, local, out)


@contextmanager
def own_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    try:
        with private_rabbitmq() as server:
            yield server
    except ServerError as exc:
        pytest.skip(str(exc))


def test_rabbitmq_restarted_mid_run_loses_nothing(many: tuple[Path, Path], tmp_path: Path) -> None:
    """RabbitMQ (a node of the test's own) stopped mid-run and started again
    3 s later on the same port, as a restart does: its durable queue and
    persistent messages come back with it. The run goes on once the broker
    is back; nothing is lost, nothing stored twice.

    The workers are stopped across the restart, so that the scan is waiting
    for results the whole time the broker is away: its results' connection
    lost, and made again only once the broker is back. (Left to timing, a
    scan that happened to be publishing then waited in the publish's retries
    instead; one in three runs stopped with "unexpected OperationalError".)"""
    folder, local = many
    db = tmp_path / "index.sqlite"

    def restart(started: list[subprocess.Popen[bytes]], _scan: subprocess.Popen[str]) -> None:
        with stopped(started):
            time.sleep(1.0)  # every message the scan may have in flight, sent
            server.restart(pause_s=3)

    with own_rabbitmq() as server:
        out, err, _resent, _cancelled = run_through_a_restart(
            server.url, restart, folder, db, tmp_path
        )
    assert '"celery.connection"' in err and '"celery.reconnected"' in err, err
    assert_indexed_as_local(db, local, out)


def test_a_broker_out_of_reach_stops_the_run_with_one_line(tmp_path: Path) -> None:
    """Away past the retries (here: never there): one line naming it, exit 3."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    scan = damdup(
        "scan", str(PHOTOS / "hel-fi"), "--db", str(tmp_path / "index.sqlite"), "-q",
        env=celery_env(url), check=False,
    )  # fmt: skip
    assert scan.returncode == 3, scan.stderr
    assert scan.stderr.splitlines() == [
        f"damdup: the broker {url} does not answer: Error 111 connecting to 127.0.0.1:{port}. "
        "Connection refused; the run stopped, what it indexed is kept: run it again"
    ]
