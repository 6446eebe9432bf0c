"""PostgreSQL for the tests: the machine's own server from Debian's
`postgresql` package (`tests/servers/install-debian.sh` installs it), started
here when it is down. The tests reach it over its local socket as the user
they run as; each test works in a database of its own, made here with a
random name and dropped afterwards.

`$DAMDUP_TEST_POSTGRESQL` names another server instead: a URL of a database
on it whose user may create databases (the password, if any, in $PGPASSWORD
or ~/.pgpass).
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import subprocess
import time
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

__all__ = [
    "ServerError",
    "admin_url",
    "create_database",
    "create_schema",
    "drop_database",
    "drop_schema",
]

SOCKET_DIR = "/var/run/postgresql"
PREFIX = "damdup_test_"
START_TIMEOUT_S = 60


class ServerError(RuntimeError):
    pass


def _cluster() -> tuple[str, str, int, str]:
    """(version, name, port, status) of the machine's first cluster."""
    if shutil.which("pg_lsclusters") is None:
        raise ServerError("PostgreSQL is not installed: run tests/servers/install-debian.sh")
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout.split()
    if len(listed) < 4:
        raise ServerError("PostgreSQL has no cluster: run tests/servers/install-debian.sh")
    return listed[0], listed[1], int(listed[2]), listed[3]


def _connects(url: str) -> str | None:
    """None when `url` connects, else why not."""
    try:
        psycopg.connect(url, connect_timeout=5).close()
        return None
    except psycopg.OperationalError as exc:
        return str(exc)


def admin_url() -> str:
    """A database URL on a running server whose user may create databases."""
    given = os.environ.get("DAMDUP_TEST_POSTGRESQL")
    if given:
        why = _connects(given)
        if why is not None:
            raise ServerError(f"$DAMDUP_TEST_POSTGRESQL does not connect: {why}")
        return given
    version, name, port, status = _cluster()
    url = f"postgresql:///postgres?host={SOCKET_DIR}&port={port}"
    if status != "online":
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
            capture_output=True,
            check=False,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while (why := _connects(url)) is not None:
        user = getpass.getuser()
        if f'role "{user}" does not exist' in why and os.geteuid() == 0:
            # A new Debian server knows only the postgres role, by peer
            # authentication on its socket: the tests' user gets its own.
            subprocess.run(
                ["runuser", "-u", "postgres", "--", "psql", "-p", str(port), "-c",
                 f'CREATE ROLE "{user}" LOGIN CREATEDB'],
                capture_output=True, check=True,
            )  # fmt: skip
            continue
        if time.monotonic() > deadline:
            raise ServerError(f"PostgreSQL {version}/{name} does not answer: {why}")
        time.sleep(0.2)
    return url


def create_database(admin: str) -> str:
    """A new, empty database; its URL."""
    name = PREFIX + secrets.token_hex(6)
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(admin)  # (urlunsplit drops the "//" of an empty host)
    return f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")


def drop_database(admin: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith(PREFIX), "only the tests' own databases are dropped"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_schema(database: str) -> str:
    """A new, empty schema in `database`; the URL of the database with the
    schema as its search path, where damdup makes its tables."""
    name = PREFIX + secrets.token_hex(6)
    with psycopg.connect(database, autocommit=True) as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    joiner = "&" if "?" in database else "?"
    return f"{database}{joiner}options=-csearch_path%3D{name}"


def drop_schema(url: str) -> None:
    name = url.rsplit("%3D", 1)[1]
    assert name.startswith(PREFIX), "only the tests' own schemas are dropped"
    database = url.rsplit("&options=", 1)[0].rsplit("?options=", 1)[0]
    with psycopg.connect(database, autocommit=True) as db:
        # The server's own sessions on it (a lock held by a test) end first.
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
