"""engine = "celery": `damdup worker`s on a real broker (Redis, RabbitMQ on
127.0.0.1, tests/servers/broker.py) index exactly as the local pool does,
lose no job when one is killed, and survive hostile files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from connector.core.config import ConfigError, load_config
from tests.conftest import BAD, PHOTOS, ROOT, damdup
from tests.servers.broker import ServerError, amqp_vhost, redis_database

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 90
# Short per-job limits: a killed worker's jobs come back from Redis after the
# visibility timeout, just over the hard limit (2 x 5 + 10 s).
FAST = {"DAMDUP_FILE_TIMEOUT_S": "5"}


@pytest.fixture
def redis_broker() -> Iterator[str]:
    try:
        with redis_database() as url:
            yield url
    except ServerError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def amqp_broker() -> Iterator[str]:
    try:
        with amqp_vhost() as url:
            yield url
    except ServerError as exc:
        pytest.skip(str(exc))


def start_worker(
    broker: str, where: Path, number: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`damdup worker --concurrency 1`, logging to where/worker{number}.log."""
    with (where / f"worker{number}.log").open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "-v", "worker", "--concurrency", "1"],
            stdout=handle, stderr=subprocess.STDOUT, cwd=where,
            env={**os.environ, "PYTHONPATH": str(ROOT), "DAMDUP_BROKER": broker, **(env or {})},
        )  # fmt: skip


def wait_ready(process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while " ready." not in log.read_text(errors="replace"):
        assert process.poll() is None, f"worker exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"worker not ready:\n{log.read_text()}"
        time.sleep(0.1)


def stop_workers(started: list[subprocess.Popen[bytes]]) -> None:
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def workers(
    broker: str, where: Path, count: int = 2, env: dict[str, str] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` `damdup worker --concurrency 1`, each ready to take jobs."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for number in range(count):
            started.append(start_worker(broker, where, number, env))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for number, process in enumerate(started):
            wait_ready(process, where / f"worker{number}.log", deadline)
        yield started
    finally:
        stop_workers(started)


def jobs_run(where: Path) -> int:
    """Jobs the workers logged as taken."""
    return sum(
        len(re.findall(r"damdup\.jobs\[[0-9a-f-]+\] received", log.read_text(errors="replace")))
        for log in where.glob("worker*.log")
    )


def relations(db: Path | str) -> str:
    return damdup("export", "relations", "--db", str(db), "--format", "csv").stdout


def celery_env(broker: str) -> dict[str, str]:
    return {"DAMDUP_ENGINE": "celery", "DAMDUP_BROKER": broker, **FAST}


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A smaller folder of photos, and the relations a local scan finds in it."""
    root = tmp_path_factory.mktemp("subset")
    folder = root / "photos"
    folder.mkdir()
    shutil.copytree(PHOTOS / "hel-fi", folder / "hel-fi", symlinks=True)
    damdup("scan", str(folder), "--db", str(root / "local.sqlite"), "-q")
    found = relations(root / "local.sqlite")
    assert found.count("\n") > 5, "the subset holds duplicates to find"
    return folder, found


# -- the same relations as the local pool --------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_redis_workers_index_as_the_local_pool(
    request: pytest.FixtureRequest,
    redis_broker: str,
    scanned_fixtures: Path,
    tmp_path: Path,
    store: str,
) -> None:
    if store == "sqlite":
        db: Path | str = tmp_path / "index.sqlite"
    else:
        try:
            db = request.getfixturevalue("pg_url")
        except Exception as exc:  # no PostgreSQL on this machine
            pytest.skip(f"PostgreSQL: {exc}")
    with workers(redis_broker, tmp_path) as running:
        scan = damdup("scan", str(PHOTOS), "--db", str(db), "-q", env=celery_env(redis_broker))
        assert all(process.poll() is None for process in running)
    assert "213 fingerprinted" in scan.stdout, scan.stdout
    assert relations(db) == relations(scanned_fixtures)


def test_rabbitmq_workers_index_as_the_local_pool(
    amqp_broker: str, subset: tuple[Path, str], tmp_path: Path
) -> None:
    folder, local = subset
    db = tmp_path / "index.sqlite"
    # The broker's password in $DAMDUP_BROKER: never in a file, never shown.
    with workers(amqp_broker, tmp_path) as running:
        scan = damdup("scan", str(folder), "--db", str(db), "-q", env=celery_env(amqp_broker))
        assert all(process.poll() is None for process in running)
    assert relations(db) == local
    assert "guest:guest" not in scan.stdout + scan.stderr
    for log in tmp_path.glob("worker*.log"):
        assert "guest:guest" not in log.read_text(errors="replace")


# -- a worker killed mid-job --------------------------------------------------------


def test_a_worker_killed_mid_job_loses_nothing(
    redis_broker: str, subset: tuple[Path, str], tmp_path: Path
) -> None:
    folder, local = subset
    db = tmp_path / "index.sqlite"
    with workers(redis_broker, tmp_path, env=FAST) as running:
        victim, log = running[0], tmp_path / "worker0.log"
        processes = psutil.Process(victim.pid).children(recursive=True)
        scan = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "scan", str(folder), "--db", str(db), "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), **celery_env(redis_broker)},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "damdup.jobs[" not in log.read_text(errors="replace"):  # it has a job
            assert scan.poll() is None, "the scan ended before the worker had a job"
            assert time.monotonic() < deadline, "the worker got no job"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        # Its worker processes end with it: nothing left holding memory.
        _gone, alive = psutil.wait_procs(processes, timeout=15)
        assert not alive, f"worker processes outlived their worker: {alive}"
        _out, err = scan.communicate(timeout=400)
        assert scan.returncode == 0, err
        assert running[1].poll() is None
    # What the killed worker had taken, the other one ran (the same task ids).
    taken = set(re.findall(r"damdup\.jobs\[([0-9a-f-]+)\] received", log.read_text()))
    redelivered = re.findall(
        r"damdup\.jobs\[([0-9a-f-]+)\] received", (tmp_path / "worker1.log").read_text()
    )
    assert taken & set(redelivered), "no job of the killed worker was redelivered"
    assert relations(db) == local


# -- hostile files ------------------------------------------------------------


def test_hostile_files_are_error_rows_and_workers_survive(
    redis_broker: str, tmp_path: Path
) -> None:
    local_db, remote_db = tmp_path / "local.sqlite", tmp_path / "remote.sqlite"
    damdup("scan", str(BAD), "--db", str(local_db), "-q")
    with workers(redis_broker, tmp_path) as running:
        scan = damdup("scan", str(BAD), "--db", str(remote_db), "-q", env={
            "DAMDUP_ENGINE": "celery", "DAMDUP_BROKER": redis_broker,
        })  # fmt: skip
        assert scan.returncode == 3, scan.stderr  # some files could not be indexed
        assert all(process.poll() is None for process in running), "a worker died"
        # And they still work.
        again = damdup(
            "scan", str(PHOTOS / "hel-fi"), "--db", str(tmp_path / "after.sqlite"), "-q",
            env={"DAMDUP_ENGINE": "celery", "DAMDUP_BROKER": redis_broker},
        )  # fmt: skip
        assert again.returncode == 0, again.stderr

    def errors(db: Path) -> list[tuple[str, str]]:
        listed = json.loads(damdup("errors", "--db", str(db), "--format", "json").stdout)
        return sorted((row["id"], row["reason"]) for row in listed)

    remote = errors(remote_db)
    assert any("bomb" in asset for asset, _ in remote)
    assert remote == errors(local_db)
    assert relations(remote_db) == relations(local_db)


# -- configuration ----------------------------------------------------------------

UNIT = """
[units.museum]
platform = "filesystem"
root = "/tmp"
"""


def test_celery_without_a_broker_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "damdup.toml"
    config.write_text('[damdup]\nengine = "celery"\n' + UNIT)
    with pytest.raises(ConfigError, match=r"damdup\.broker"):
        load_config(config)
    for args, extra in (
        (["--config", str(config)], {}),
        (["--db", str(tmp_path / "x.sqlite")], {"DAMDUP_ENGINE": "celery"}),
    ):
        result = damdup("status", *args, check=False, env=extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "broker" in result.stderr


def test_a_broker_password_in_the_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAMDUP_BROKER", raising=False)
    config = tmp_path / "damdup.toml"
    for url in ("redis://:s3cret@127.0.0.1:6379/0", "amqp://damdup:s3cret@mq.example//"):
        config.write_text(f'[damdup]\nengine = "celery"\nbroker = "{url}"\n' + UNIT)
        with pytest.raises(ConfigError, match="DAMDUP_BROKER") as refused:
            load_config(config)
        assert "s3cret" not in str(refused.value)
        result = damdup("status", "--config", str(config), check=False, cwd=tmp_path)
        assert result.returncode == 2 and "damdup.broker" in result.stderr
        assert "s3cret" not in result.stderr
    # A user name is no secret; the password belongs in the environment.
    config.write_text('[damdup]\nengine = "celery"\nbroker = "amqp://damdup@mq.example//"\n' + UNIT)
    assert load_config(config).settings.broker == "amqp://damdup@mq.example//"
    monkeypatch.setenv("DAMDUP_BROKER", "amqp://damdup:s3cret@mq.example//")
    assert load_config(config).settings.broker == "amqp://damdup:s3cret@mq.example//"


def test_an_unknown_broker_is_refused(tmp_path: Path) -> None:
    result = damdup("status", "--db", str(tmp_path / "x.sqlite"), check=False, cwd=tmp_path,
                    env={"DAMDUP_ENGINE": "celery", "DAMDUP_BROKER": "kafka://q:9092"})  # fmt: skip
    assert result.returncode == 2 and "broker" in result.stderr


# -- a webhook check ----------------------------------------------------------------


def test_a_webhook_check_on_workers_gives_the_local_verdict(
    redis_broker: str, tmp_path: Path
) -> None:
    """A check of one new asset (what a webhook starts) fingerprints and
    settles it on the workers, with the verdict of the local pool."""
    from connector.core.index import SQLiteStore
    from connector.core.settings import Settings
    from connector.engine.check import Checker
    from connector.engine.scan import sync_and_match
    from tests.contract.harness import start_harness

    museum, opendata = start_harness("drupal"), start_harness("ckan")
    hel_fi = PHOTOS / "hel-fi"
    verdicts = []
    try:
        adapters = {"museum": museum.adapter(), "opendata": opendata.adapter()}
        with workers(redis_broker, tmp_path):
            for engine in ("local", "celery"):
                museum.reset()
                opendata.reset()
                museum.add("a.jpg", (hel_fi / "DSC_2041.jpg").read_bytes(), {"location": "X"})
                museum.add("b.jpg", (hel_fi / "DSC_2047.jpg").read_bytes(), None)
                db = tmp_path / f"{engine}.sqlite"
                settings = Settings(db=db, workers=2, engine=engine, broker=redis_broker)
                store = SQLiteStore(db)
                sync_and_match(store, adapters, settings)
                # New after the sync: the check fetches, fingerprints and settles it.
                new = opendata.add("copy.jpg", (hel_fi / "DSC_2041_medium.jpg").read_bytes(), None)
                checker = Checker(db, settings, adapters, {"museum": False, "opendata": False})
                try:
                    checker.warm()
                    check_id = store.start_check("opendata", new, "test")
                    before = jobs_run(tmp_path)
                    verdicts.append(checker.check("opendata", new, check_id))
                    if engine == "celery":  # its fingerprint at least, on a worker
                        assert jobs_run(tmp_path) > before
                finally:
                    checker.close()
                    store.close()
    finally:
        museum.close()
        opendata.close()
    local, remote = verdicts
    assert "error" not in remote, remote
    assert remote["tier"] == local["tier"] and remote["tier"] is not None
    assert remote["role"] == local["role"]

    def copies(verdict: dict[str, object]) -> list[tuple[object, object]]:
        listed = verdict["copies"]
        assert isinstance(listed, list)
        return sorted((copy["unit"], copy["tier"]) for copy in listed)

    assert copies(remote) == copies(local) and copies(remote)
