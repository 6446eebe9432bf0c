"""What the `db` setting names: a SQLite file's path, or a PostgreSQL database
by URL. Only the parsing and the checks; the stores open them (`store.py`)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "POSTGRESQL_SCHEMES",
    "DatabaseUrlError",
    "check_db",
    "describe_url",
    "holds_password",
    "is_postgresql",
]

POSTGRESQL_SCHEMES = ("postgresql", "postgres")

# libpq reads a password from these URL parameters too.
_PASSWORD_PARAMETERS = {"password", "sslpassword"}


class DatabaseUrlError(ValueError):
    """The `db` value is a URL damdup cannot use; the message never repeats it."""


def is_postgresql(db: str | Path) -> bool:
    return (
        isinstance(db, str)
        and "://" in db
        and db.partition("://")[0].lower() in (POSTGRESQL_SCHEMES)
    )


def check_db(value: str) -> str | Path:
    """A postgresql:// URL as it is, any other text as a SQLite file's path.
    Refused: an unknown scheme (taken as a path it made a folder named
    "postgresql:"), and a URL holding a password (it would be printed in
    messages and logs: libpq reads it from $PGPASSWORD or ~/.pgpass)."""
    value = value.strip()
    if "://" not in value:
        if value.partition(":")[0].lower() in POSTGRESQL_SCHEMES:
            raise DatabaseUrlError("a postgresql:// URL has two slashes after its scheme")
        return Path(value)
    scheme = value.split("://", 1)[0]
    if scheme.lower() not in POSTGRESQL_SCHEMES:
        raise DatabaseUrlError(
            f"{scheme}:// is not a kind of index damdup knows; db is the SQLite index "
            "file's path or a postgresql:// URL"
        )
    if holds_password(value):
        raise DatabaseUrlError(
            "a database URL must not hold a password: give it in $PGPASSWORD or ~/.pgpass"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise DatabaseUrlError(f"not a valid postgresql:// URL ({exc})") from None
    return value


def holds_password(value: str) -> bool:
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    if parts.password is not None:
        return True
    return any(key.lower() in _PASSWORD_PARAMETERS for key, _ in parse_qsl(parts.query))


def describe_url(url: str) -> tuple[str, str]:
    """(database, server) of a URL, for messages: libpq's defaults where the
    URL names none (the user name as database, the local socket)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or unquote(parts.hostname or "") or os.environ.get("PGHOST", "")
    port = query.get("port") or (str(parts.port) if parts.port else os.environ.get("PGPORT", ""))
    user = query.get("user") or unquote(parts.username or "") or os.environ.get("PGUSER", "")
    database = unquote(parts.path.lstrip("/")) or query.get("dbname") or user
    database = database or os.environ.get("PGDATABASE", "") or "(the user's own)"
    server = f"{host or 'the local socket'}:{port or 5432}"
    return database, server
