"""The per-unit lock: one holder at a time across processes and threads, and a
holder killed with SIGKILL leaves the unit takeable. The same on both stores:
a file lock beside a SQLite index, an advisory lock in PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.engine.locks import UnitBusy, UnitLock, lock_path
from tests.conftest import ROOT

HOLDER = """
import sys
from connector.engine.locks import UnitLock
lock = UnitLock(sys.argv[1], sys.argv[2])
lock.__enter__()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin, or kills us
"""


def hold_in_child(db: Path | str, unit: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), unit],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.fixture
def db(index_db: Path | str) -> Path | str:
    return index_db


@pytest.fixture
def holder(db: Path | str) -> Iterator[subprocess.Popen[str]]:
    child = hold_in_child(db, "museum")
    yield child
    if child.poll() is None:
        child.kill()
    child.wait(timeout=30)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


def test_a_live_holder_makes_the_unit_busy_and_is_named(
    db: Path | str, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(UnitBusy) as caught, UnitLock(db, "museum"):
        pytest.fail("took a lock another process holds")
    assert caught.value.pid == holder.pid
    assert caught.value.unit == "museum"
    assert f"process {holder.pid}" in str(caught.value)
    assert caught.value.since is not None
    # Other units are not affected.
    with UnitLock(db, "opendata"):
        pass


def test_a_holder_killed_with_sigkill_leaves_the_lock_takeable(
    db: Path | str, holder: subprocess.Popen[str]
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    with UnitLock(db, "museum"):
        if isinstance(db, Path):
            written = json.loads(lock_path(db, "museum").read_text())
            assert written["pid"] == os.getpid()


def test_a_holder_that_exits_releases_and_a_waiter_takes_it(
    db: Path | str, holder: subprocess.Popen[str]
) -> None:
    assert holder.stdin is not None
    holder.stdin.close()  # the holder's read ends: it exits without unlocking by hand
    with UnitLock(db, "museum", wait_s=60.0):
        # (A server frees its lock as the holder's connection closes, maybe
        # a moment before the process is gone.)
        assert holder.wait(timeout=30) is not None


def test_two_threads_of_one_process_exclude_each_other(db: Path | str) -> None:
    entered = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with UnitLock(db, "museum"):
                entered.set()
                release.wait(30)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
            entered.set()

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(30)
    try:
        with pytest.raises(UnitBusy) as caught, UnitLock(db, "museum"):
            pytest.fail("two holders at once")
        assert caught.value.pid == os.getpid()
    finally:
        release.set()
        thread.join(30)
    assert errors == []
    with UnitLock(db, "museum"):
        pass


def test_wait_s_waits_for_the_holder_to_let_go(db: Path | str) -> None:
    taken = threading.Event()
    order: list[str] = []

    def hold_briefly() -> None:
        with UnitLock(db, "museum"):
            taken.set()
            deadline = time.monotonic() + 30
            # Let go only once the main thread has started waiting.
            while "waiting" not in order and time.monotonic() < deadline:
                time.sleep(0.01)
            order.append("released")

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    assert taken.wait(30)
    order.append("waiting")
    with UnitLock(db, "museum", wait_s=30.0):
        order.append("taken")
    thread.join(30)
    assert order == ["waiting", "released", "taken"]


def test_the_lock_is_released_when_the_block_raises(db: Path | str) -> None:
    with pytest.raises(RuntimeError), UnitLock(db, "museum"):
        raise RuntimeError("sync failed")
    with UnitLock(db, "museum"):
        if isinstance(db, Path):
            assert lock_path(db, "museum").parent == Path(f"{db}.locks")


def test_postgresql_locks_are_per_unit_and_leave_no_file(pg_url: str, tmp_path: Path) -> None:
    busy = f"unit museum is busy: process {os.getpid()} holds"
    with UnitLock(pg_url, "museum"), UnitLock(pg_url, "opendata"):  # noqa: SIM117
        with pytest.raises(UnitBusy, match=busy), UnitLock(pg_url, "museum", wait_s=0.3):
            pytest.fail("two holders at once")
    assert not list(tmp_path.iterdir()) and not Path(f"{pg_url}.locks").exists()
