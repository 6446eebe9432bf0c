"""One way to open the index, whatever the `db` setting names: a SQLite
file's path, or a PostgreSQL database by its postgresql:// URL."""

from __future__ import annotations

from pathlib import Path

from connector.core.dburl import check_db, describe_url, is_postgresql
from connector.core.index import IndexStore, SchemaError, SQLiteStore

__all__ = ["describe_db", "migrate_to_postgresql", "open_store"]


def open_store(db: str | Path, create: bool = False) -> IndexStore:
    """The index `db` names. With `create` false a missing index is
    IndexMissing (a file not there, a database without damdup's schema);
    an unknown URL scheme or a URL holding a password is a ValueError."""
    target = check_db(db) if isinstance(db, str) else db
    if isinstance(target, str):
        # psycopg loads only where PostgreSQL is used.
        from connector.core.pgstore import PostgreSQLStore

        return PostgreSQLStore(target, create=create)
    return SQLiteStore(target, create=create)


def describe_db(db: str | Path) -> str:
    """The index for messages: its path, or its database and server."""
    if is_postgresql(db):
        database, server = describe_url(str(db))
        return f"database {database} on {server}"
    return str(db)


def migrate_to_postgresql(source: str | Path, url: str) -> dict[str, int]:
    """Copy the SQLite index at `source` into the empty PostgreSQL database
    at `url` (damdup's schema is made there): decisions, journal, outbox and
    all, so nothing has to be fetched again. Rows per table."""
    if is_postgresql(source):
        raise SchemaError(f"the index is already in PostgreSQL ({describe_db(source)})")
    target = check_db(url)
    if not isinstance(target, str):
        raise SchemaError("--to takes a postgresql:// URL")
    SQLiteStore(source, create=False).close()  # there, and at the latest schema
    from connector.core.pgstore import copy_from_sqlite

    return copy_from_sqlite(Path(source), target)
