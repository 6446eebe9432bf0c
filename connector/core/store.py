"""One way to open the index, whatever the `db` setting names: a SQLite
file's path, or a PostgreSQL database by its postgresql:// URL."""

from __future__ import annotations

from pathlib import Path

from connector.core.dburl import check_db, describe_url, is_postgresql
from connector.core.index import IndexStore, SQLiteStore

__all__ = ["describe_db", "open_store"]


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
