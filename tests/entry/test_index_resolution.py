"""Every command finds the configuration and the index by one rule (flag,
environment, configuration file, default), and no reading command creates an
index: a missing one is an error that names the path, never an empty answer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import PHOTOS, damdup

UNIT = "hel-fi"


def write_config(path: Path, db: Path) -> Path:
    path.write_text(
        f'[damdup]\ndb = "{db}"\n\n[units.{UNIT}]\nplatform = "filesystem"\n'
        f'root = "{PHOTOS / UNIT}"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A configuration whose [damdup] db names an index that `sync` built."""
    base = tmp_path_factory.mktemp("resolution")
    config = write_config(base / "damdup.toml", base / "index" / "damdup.sqlite")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    damdup("sync", "-q", env={"DAMDUP_CONFIG": str(config)}, cwd=elsewhere)
    return config, elsewhere


def readers(tmp: Path) -> dict[str, list[str]]:
    photo = str(PHOTOS / UNIT / "DSC_2041.jpg")
    return {
        "status": ["status"],
        "clusters": ["clusters"],
        "errors": ["errors"],
        "export": ["export", "relations"],
        "review list": ["review", "list"],
        "review export": ["review", "export", "--csv", str(tmp / "queue.csv")],
        "audit metadata": ["audit", "metadata"],
        "lookup": ["lookup", photo],
        "explain": ["explain", f"{UNIT}:DSC_2041.jpg", f"{UNIT}:DSC_2041_medium.jpg"],
    }


def test_every_reading_command_reads_the_configured_index(synced: tuple[Path, Path]) -> None:
    config, elsewhere = synced
    env = {"DAMDUP_CONFIG": str(config)}
    answers = {
        name: damdup(*argv, env=env, cwd=elsewhere) for name, argv in readers(elsewhere).items()
    }
    assert not (elsewhere / "damdup.sqlite").exists(), "a reading command made an index"
    assert "canonical because" in answers["clusters"].stdout
    assert "No duplicate clusters" not in answers["clusters"].stdout
    assert f"{UNIT}:DSC_2041" in answers["export"].stdout
    assert "to review" in answers["review list"].stdout
    assert (elsewhere / "queue.csv").read_text(encoding="utf-8-sig").count("\n") > 1
    assert "DSC_2041" in answers["lookup"].stdout
    assert "pHash distance" in answers["explain"].stdout
    assert UNIT in answers["audit metadata"].stdout
    assert str(config.parent / "index" / "damdup.sqlite") in answers["status"].stdout


def test_flag_beats_environment_beats_file(synced: tuple[Path, Path], tmp_path: Path) -> None:
    config, elsewhere = synced
    other = tmp_path / "other.sqlite"
    damdup("scan", str(PHOTOS / "kuva"), "--db", str(other), "-q", "--unit", "kuva")
    env = {"DAMDUP_CONFIG": str(config)}
    by_file = json.loads(damdup("status", "--format", "json", env=env, cwd=elsewhere).stdout)
    by_env = json.loads(
        damdup("status", "--format", "json", env={**env, "DAMDUP_DB": str(other)}).stdout
    )
    by_flag = json.loads(
        damdup(
            "status", "--format", "json", "--db", str(other),
            env={**env, "DAMDUP_DB": str(tmp_path / "nowhere.sqlite")},
        ).stdout
    )  # fmt: skip
    assert {row["unit"] for row in by_file if row["assets"]} == {UNIT}
    assert {row["unit"] for row in by_env if row["assets"]} == {"kuva"}
    assert [row["assets"] for row in by_flag] == [row["assets"] for row in by_env]


@pytest.mark.parametrize("name", sorted(readers(Path("/tmp"))))
def test_a_missing_index_is_an_error_naming_it(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "index.sqlite"
    config = write_config(tmp_path / "damdup.toml", missing)
    result = damdup(
        *readers(tmp_path)[name], env={"DAMDUP_CONFIG": str(config)}, cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stdout
    assert f"no index at {missing}" in result.stderr
    assert str(config) in result.stderr  # where the path came from
    assert not missing.exists() and not missing.parent.exists()
    assert not (tmp_path / "damdup.sqlite").exists()


NOT_BUILDERS = {
    "push": ["push", "--dry-run"],
    "push history": ["push", "--history"],
    "review decide": [
        "review", "decide", f"{UNIT}:DSC_2041.jpg", f"{UNIT}:DSC_2041_medium.jpg", "same",
        "--by", "archivist",
    ],
    "serve": ["serve", "--port", "0"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NOT_BUILDERS))
def test_commands_that_write_to_an_index_never_make_one(name: str, tmp_path: Path) -> None:
    """Only scan, sync, migrate and the daemon build an index: push, a
    decision and the server stop naming the missing one."""
    missing = tmp_path / "gone" / "index.sqlite"
    config = write_config(tmp_path / "damdup.toml", missing)
    result = damdup(
        *NOT_BUILDERS[name], env={"DAMDUP_CONFIG": str(config)}, cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stdout
    assert f"no index at {missing} (from {config})" in result.stderr
    assert not missing.parent.exists() and not (tmp_path / "damdup.sqlite").exists()


def test_a_file_that_is_not_an_index_is_refused(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "photos.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE albums (name TEXT)")
    result = damdup("clusters", "--db", str(other), check=False)
    assert result.returncode == 2
    assert "not a damdup index" in result.stderr
    with sqlite3.connect(other) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"albums"}, "damdup added its tables to another program's database"
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all " * 100)
    result = damdup("errors", "--db", str(text), check=False)
    assert result.returncode == 2
    assert "not a damdup index" in result.stderr


def test_a_configuration_named_but_missing_is_an_error(tmp_path: Path) -> None:
    result = damdup(
        "clusters", env={"DAMDUP_CONFIG": str(tmp_path / "nope.toml")}, cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert f"no configuration file at {tmp_path / 'nope.toml'} (from $DAMDUP_CONFIG)" in (
        result.stderr
    )
    assert not os.listdir(tmp_path)


def test_two_scans_of_one_folder_wait_for_each_other(tmp_path: Path) -> None:
    """The later scan waits for the unit's lock, so neither retires what the
    other listed; with no wait it says the unit is busy and exits non-zero."""
    import fcntl
    import subprocess
    import sys
    import time

    from connector.engine.locks import lock_path

    db = tmp_path / "index.sqlite"
    folder = PHOTOS / "kuva"
    argv = [sys.executable, "-m", "connector.cli", "scan", str(folder), "--db", str(db), "-q"]
    env = {**os.environ, "DAMDUP_WORKERS": "1"}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as sink:
            return subprocess.Popen(argv, env=env, stdout=sink, stderr=sink)

    first = start(logs[0])
    lock = lock_path(db, "scan")
    deadline = time.monotonic() + 120
    while True:  # until the first scan holds the unit's lock
        assert first.poll() is None, logs[0].read_text()
        if lock.exists():
            with lock.open("rb") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(handle, fcntl.LOCK_UN)
                except BlockingIOError:
                    break
        assert time.monotonic() < deadline, "the first scan never took the unit's lock"
        time.sleep(0.02)
    refused = damdup("scan", str(folder), "--db", str(db), "-q", "--lock-wait", "0", check=False)
    second = start(logs[1])
    assert first.wait(timeout=600) == 0, logs[0].read_text()
    assert second.wait(timeout=600) == 0, logs[1].read_text()
    assert refused.returncode == 3
    assert "unit scan is busy" in refused.stderr
    status = json.loads(damdup("status", "--db", str(db), "--format", "json").stdout)
    assert [(row["unit"], row["assets"]) for row in status] == [
        ("scan", len([p for p in folder.iterdir() if p.is_file()]))
    ]


@pytest.mark.parametrize("how", ["--db", "DAMDUP_DB"])
def test_a_database_url_is_never_taken_as_a_path(how: str, tmp_path: Path) -> None:
    url = "mysql://damdup@db.example/damdup"
    argv, env = (["--db", url], {}) if how == "--db" else ([], {"DAMDUP_DB": url})
    result = damdup("scan", str(PHOTOS / "kuva"), *argv, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "mysql:// is not a kind of index damdup knows" in result.stderr
    assert not os.listdir(tmp_path), "a folder named after the URL was made"


@pytest.mark.parametrize("how", ["--db", "DAMDUP_DB", "config"])
def test_an_unreachable_postgresql_server_is_one_line_naming_it(how: str, tmp_path: Path) -> None:
    url = "postgresql://damdup@127.0.0.1:1/damdup"  # nothing listens on port 1
    argv: list[str] = []
    env: dict[str, str] = {}
    if how == "--db":
        argv = ["--db", url]
    elif how == "DAMDUP_DB":
        env = {"DAMDUP_DB": url}
    else:
        config = write_config(tmp_path / "damdup.toml", tmp_path / "x.sqlite")
        config.write_text(config.read_text().replace(str(tmp_path / "x.sqlite"), url))
        env = {"DAMDUP_CONFIG": str(config)}
    source = {"--db": "from --db", "DAMDUP_DB": "from $DAMDUP_DB", "config": "from "}[how]
    for argv_ in (["status", *argv], ["scan", str(PHOTOS / "kuva"), "-q", *argv]):
        result = damdup(*argv_, env=env, cwd=tmp_path, check=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert lines[0].startswith(
            "damdup: cannot reach PostgreSQL at 127.0.0.1:1 (database damdup)"
        )
        assert f"({source}" in lines[0]


def test_a_reading_command_on_an_empty_postgresql_database_makes_no_index(pg_url: str) -> None:
    import psycopg

    result = damdup("status", "--db", pg_url, check=False)
    assert result.returncode == 2
    assert "damdup: no damdup index in database " in result.stderr
    assert "(from --db)" in result.stderr
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT to_regclass('schema_version')").fetchone() == (None,)


def test_a_lookup_without_a_match_names_the_index_it_searched(
    synced: tuple[Path, Path], tmp_path: Path
) -> None:
    """A lookup's "no match" is about one index: it says which, as the other
    empty answers do, so an answer from the wrong index shows."""
    import numpy as np
    from PIL import Image

    config, elsewhere = synced
    photo = tmp_path / "kohina.png"
    noise = np.random.default_rng(12).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photo)
    answer = damdup("lookup", str(photo), env={"DAMDUP_CONFIG": str(config)}, cwd=elsewhere)
    index = config.parent / "index" / "damdup.sqlite"
    assert f"no match in index {index} (from {config})" in answer.stdout


def test_an_export_without_relations_names_the_index_it_read(tmp_path: Path) -> None:
    """An export of no relations is a file with only its header: said on
    stderr, with the index, so that an empty file from the wrong index shows."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "kuvat"
    folder.mkdir()
    for seed in (1, 2):  # two unrelated images: nothing to relate
        noise = np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"kohina{seed}.png")
    db = tmp_path / "index.sqlite"
    damdup("scan", str(folder), "--db", str(db), "-q")
    empty = damdup("export", "relations", "--db", str(db))
    assert empty.stdout.count("\n") == 1  # the header
    said = " ".join(empty.stderr.split())
    assert f"no related pairs in index {db} (from --db): only the header was written" in said
    related = tmp_path / "photos.sqlite"
    damdup("scan", str(PHOTOS / UNIT), "--db", str(related), "-q")
    out = tmp_path / "out.csv"
    written = damdup("export", "relations", "--db", str(related), "--output", str(out))
    rows = out.read_text().count("\n") - 1
    assert rows > 0
    assert f"{rows} relations written to {out}" in " ".join(written.stderr.split())
