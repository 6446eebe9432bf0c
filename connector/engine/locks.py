"""One sync (or check) of a unit at a time, across processes and threads.

An exclusive `flock` on `<db>.locks/<unit>.lock`: the kernel drops it when the
holding process ends in any way, kill -9 included, so a crashed holder never
leaves a unit locked. Each open file description holds its own lock, so two
threads of one process exclude each other too. The holder writes its pid and
start time into the file, for the message of whoever finds the unit busy.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

__all__ = ["UnitBusy", "UnitLock", "lock_path"]

POLL_S = 0.05


class UnitBusy(Exception):
    """The unit's lock is held by another process or thread."""

    def __init__(self, unit: str, pid: int | None, since: str | None) -> None:
        self.unit = unit
        self.pid = pid
        self.since = since
        holder = f"process {pid}" if pid is not None else "another process"
        when = f" since {since}" if since else ""
        super().__init__(f"unit {unit} is busy: {holder} holds its lock{when}")


def lock_path(db_path: Path | str, unit: str) -> Path:
    return Path(f"{db_path}.locks") / f"{unit}.lock"


class UnitLock:
    """`with UnitLock(db_path, unit, wait_s=0.0): ...` — raises UnitBusy when
    the lock is still held after `wait_s` seconds."""

    def __init__(self, db_path: Path | str, unit: str, wait_s: float = 0.0) -> None:
        self.unit = unit
        self.path = lock_path(db_path, unit)
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> UnitLock:
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
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    @staticmethod
    def _holder(fd: int) -> tuple[int | None, str | None]:
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            holder = json.loads(text)
            return int(holder["pid"]), str(holder["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None  # the holder is writing it, or an older file
