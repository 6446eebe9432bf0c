"""One sync (or check) of a unit at a time, across processes and threads.

An exclusive `flock` on `<db>.locks/<unit>.lock`: the kernel drops it when the
holding process ends in any way, kill -9 included, so a crashed holder never
leaves a unit locked. Each open file description holds its own lock, so two
threads of one process exclude each other too. The holder writes its pid and
start time into the file, for the message of whoever finds the unit busy.

An index in PostgreSQL serves workers on several hosts, which share no
file system: there the lock is a PostgreSQL advisory lock on the unit's
name, held by a connection of its own for as long as the lock is held. The
server frees it when that connection ends, a holder killed on any host
included.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from connector.core.dburl import is_postgresql

if TYPE_CHECKING:
    from connector.core.pgstore import AdvisoryLock

__all__ = ["UnitBusy", "UnitLock", "lock_path"]

POLL_S = 0.05
ADVISORY_POLL_S = 0.2


class UnitBusy(Exception):
    """The unit's lock is held by another process or thread."""

    def __init__(
        self, unit: str, pid: int | None, since: str | None, host: str | None = None
    ) -> None:
        self.unit = unit
        self.pid = pid
        self.since = since
        self.host = host
        holder = f"process {pid}" if pid is not None else "another process"
        if pid is not None and host:  # a worker on another host, in PostgreSQL
            holder += f" on {host}"
        when = f" since {since}" if since else ""
        super().__init__(f"unit {unit} is busy: {holder} holds its lock{when}")


def lock_path(db_path: Path | str, unit: str) -> Path:
    return Path(f"{db_path}.locks") / f"{unit}.lock"


class UnitLock:
    """`with UnitLock(db_path, unit, wait_s=0.0): ...` — raises UnitBusy when
    the lock is still held after `wait_s` seconds."""

    def __init__(self, db_path: Path | str, unit: str, wait_s: float = 0.0) -> None:
        self.unit = unit
        self.url = db_path if isinstance(db_path, str) and is_postgresql(db_path) else None
        self.path = lock_path(db_path, unit)
        self.wait_s = wait_s
        self._fd: int | None = None
        self._advisory: AdvisoryLock | None = None

    def __enter__(self) -> UnitLock:
        if self.url is not None:
            return self._enter_advisory(self.url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        pid, since = self._holder(fd)
                        raise UnitBusy(self.unit, pid, since) from None
                    time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        except BaseException:
            os.close(fd)
            raise
        # The file is never removed: unlinking it would let a waiter lock an
        # inode that a newcomer no longer opens.
        holder = {"pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        advisory, self._advisory = self._advisory, None
        if advisory is not None:
            advisory.release()
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def _enter_advisory(self, url: str) -> UnitLock:
        from connector.core.pgstore import AdvisoryLock  # psycopg only where used

        lock = AdvisoryLock(url, self.unit)
        deadline = time.monotonic() + self.wait_s
        try:
            while not lock.try_acquire():
                if time.monotonic() >= deadline:
                    pid, since, host = lock.holder()
                    raise UnitBusy(
                        self.unit, pid, since, host if host != socket.gethostname() else None
                    )
                # A query per try, on the server: polled less often than a file.
                time.sleep(min(ADVISORY_POLL_S, max(0.0, deadline - time.monotonic())))
        except BaseException:
            lock.release()
            raise
        self._advisory = lock
        return self

    @staticmethod
    def _holder(fd: int) -> tuple[int | None, str | None]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            holder = json.loads(text)
            return int(holder["pid"]), str(holder["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None  # the holder is writing it, or an older file
