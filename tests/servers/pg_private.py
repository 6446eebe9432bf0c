"""A PostgreSQL server of the test's own, for fault tests that crash or restart
it: Debian's `postgresql` binaries (`tests/servers/install-debian.sh`), a new
data directory made by `initdb`, a free port on 127.0.0.1 and a socket
directory of its own. The machine's shared server is never touched, so other
tests (and other runs) keep theirs.

PostgreSQL refuses to run as root: as root the server runs as the `postgres`
system user that Debian's package makes.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg

__all__ = ["PrivateServer"]

START_TIMEOUT_S = 60


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run tests/servers/install-debian.sh")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateServer:
    """`start()`, `url(database)`, `crash_restart()`, `stop()`."""

    def __init__(self, workdir: Path) -> None:
        self.bin = _binaries()
        self.data = workdir / "pgdata"
        self.sockets = workdir / "pgsock"
        self.log = workdir / "postgresql.log"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> PrivateServer:
        for folder in (self.data, self.sockets):
            folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(folder, "postgres", "postgres")
                shutil.chown(folder.parent, "postgres", "postgres")
        if os.geteuid() == 0:
            self.log.touch()
            shutil.chown(self.log, "postgres", "postgres")
        made = self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8"
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr}")
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._run(
            "pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", str(START_TIMEOUT_S), *extra,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {action} failed: {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def crash_restart(self) -> None:
        """Stop as a crash does (every backend killed, no checkpoint), then start:
        the server recovers from its write-ahead log."""
        self._pg_ctl("restart", "-m", "immediate")

    def wait_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
