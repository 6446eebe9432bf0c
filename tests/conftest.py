from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PHOTOS = FIXTURES / "photos"
BAD = FIXTURES / "bad"


def damdup(
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child process, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "DAMDUP_WORKERS": "2",
            "PYTHONPATH": str(ROOT),  # this checkout, wherever the command runs
            **(env or {}),
        },
        cwd=cwd or ROOT,
        timeout=600,
    )
    if check and result.returncode not in (0, 3):
        raise AssertionError(f"damdup {args} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture
def run_damdup() -> Callable[..., subprocess.CompletedProcess[str]]:
    return damdup


@pytest.fixture
def photo_copy(tmp_path: Path) -> Path:
    target = tmp_path / "photos"
    shutil.copytree(PHOTOS, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def scanned_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labelled fixture photos scanned once for the whole session."""
    db = tmp_path_factory.mktemp("scan") / "index.sqlite"
    damdup("scan", str(PHOTOS), "--db", str(db), "-q")
    return db


# -- the index in PostgreSQL ---------------------------------------------------


@pytest.fixture(scope="session")
def postgresql() -> str:
    """The URL of a database on the tests' PostgreSQL server, running."""
    from tests.servers.postgresql import admin_url

    return admin_url()


@pytest.fixture(scope="module")
def pg_database(postgresql: str) -> Iterator[str]:
    """A new database for the module's tests, dropped afterwards."""
    from tests.servers.postgresql import create_database, drop_database

    url = create_database(postgresql)
    yield url
    drop_database(postgresql, url)


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """An empty index location of this test's own: a schema of the module's
    database (a new database per test costs seconds), dropped afterwards."""
    from connector.core.pgstore import close_pools
    from tests.servers.postgresql import create_schema, drop_schema

    url = create_schema(pg_database)
    yield url
    close_pools(url)
    drop_schema(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where an index under test lives: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "index.sqlite"
    url: str = request.getfixturevalue("pg_url")
    return url
