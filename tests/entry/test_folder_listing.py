"""What `damdup scan` says when it could not list all of a folder: a
subfolder it may not read is a recorded error and a failed exit, and what the
index holds under it stays as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.core.index import SQLiteStore
from tests.conftest import PHOTOS, ROOT

PHOTO_FILES = sorted((PHOTOS / "kuva").glob("*.jpg"))[:4]


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    """`damdup` as a service account runs it: file modes hold even for root
    (the capabilities that bypass them dropped, as test_resilience does)."""
    command = [sys.executable, "-m", "connector.cli", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv reads every folder")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "DAMDUP_WORKERS": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Path]:
    """Two photos at the top, two in `tapahtumat/`; its modes put back after."""
    folder = tmp_path / "kuvat"
    (folder / "tapahtumat").mkdir(parents=True)
    for photo, name in zip(PHOTO_FILES, ("a.jpg", "b.jpg"), strict=False):
        shutil.copy(photo, folder / name)
    for photo, name in zip(PHOTO_FILES[2:], ("c.jpg", "d.jpg"), strict=False):
        shutil.copy(photo, folder / "tapahtumat" / name)
    yield folder
    if (folder / "tapahtumat").exists():
        (folder / "tapahtumat").chmod(0o755)


def live(db: Path) -> set[str]:
    store = SQLiteStore(db)
    try:
        return {row.asset_id for row in store.live_assets("scan") if row.sha256}
    finally:
        store.close()


def errors(db: Path) -> dict[str, str]:
    result = scan("errors", "--db", str(db), "--format", "json")
    return {row["id"]: row["reason"] for row in json.loads(result.stdout)}


@pytest.mark.parametrize("mode", [0o000, 0o311], ids=["no-access", "enter-only"])
def test_an_unreadable_folder_is_an_error_and_its_assets_stay(
    library: Path, tmp_path: Path, mode: int
) -> None:
    db = tmp_path / "i.sqlite"
    first = scan("scan", str(library), "--db", str(db), "-q")
    assert first.returncode == 0, first.stderr
    everything = {"a.jpg", "b.jpg", "tapahtumat/c.jpg", "tapahtumat/d.jpg"}
    assert live(db) == everything

    (library / "tapahtumat").chmod(mode)
    again = scan("scan", str(library), "--db", str(db), "-q", "--format", "json")
    assert again.returncode == 3, again.stderr
    summary = json.loads(again.stdout)
    assert summary["retired"] == 0 and summary["failed_units"] == {}
    assert summary["unlisted_folders"] == 1
    found = errors(db)
    assert list(found) == ["tapahtumat/"], found
    assert "permission denied" in found["tapahtumat/"]
    assert "not listed" in found["tapahtumat/"]
    assert live(db) == everything  # nothing the folder held was retired

    (library / "tapahtumat").chmod(0o755)
    readable = scan("scan", str(library), "--db", str(db), "-q")
    assert readable.returncode == 0, readable.stderr
    assert errors(db) == {}
    assert live(db) == everything


def test_a_first_scan_says_which_folder_it_could_not_read(library: Path, tmp_path: Path) -> None:
    (library / "tapahtumat").chmod(0)
    db = tmp_path / "i.sqlite"
    result = scan("scan", str(library), "--db", str(db), "-q")
    assert result.returncode == 3, result.stderr
    assert "1 folder(s) could not be read" in " ".join(result.stderr.split())
    assert list(errors(db)) == ["tapahtumat/"]
    assert live(db) == {"a.jpg", "b.jpg"}


def test_a_root_that_cannot_be_read_fails_the_scan(library: Path, tmp_path: Path) -> None:
    library.chmod(0o311)  # entered, not listed
    try:
        result = scan("scan", str(library), "--db", str(tmp_path / "i.sqlite"), "-q")
    finally:
        library.chmod(0o755)
    assert result.returncode == 3, result.stderr
    assert f"folder {library} cannot be read: permission denied" in " ".join(result.stderr.split())


def test_an_emptied_folder_retires_nothing_until_confirmed(library: Path, tmp_path: Path) -> None:
    db = tmp_path / "i.sqlite"
    assert scan("scan", str(library), "--db", str(db), "-q").returncode == 0
    everything = live(db)
    assert len(everything) == 4
    away = tmp_path / "away"
    library.rename(away)
    library.mkdir()  # the mount point, with the share not mounted

    result = scan("scan", str(library), "--db", str(db), "-q", "--format", "json")
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["retired"] == 0
    reason = summary["failed_units"]["scan"]
    assert "found no assets, but the index holds 4 live asset(s) of unit scan" in reason
    assert "--allow-empty" in reason
    assert "--allow-empty" in " ".join(result.stderr.split())  # said in words too
    assert live(db) == everything

    confirmed = scan("scan", str(library), "--db", str(db), "-q", "--allow-empty")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "4 gone" in confirmed.stdout
    assert live(db) == set()


def test_an_emptied_unit_fails_a_sync_and_the_others_go_on(library: Path, tmp_path: Path) -> None:
    other = tmp_path / "muut"
    other.mkdir()
    shutil.copy(PHOTO_FILES[0], other / "e.jpg")
    config = tmp_path / "damdup.toml"
    config.write_text(
        f'[damdup]\ndb = "{tmp_path / "index.sqlite"}"\n'
        f'[units.arkisto]\nplatform = "filesystem"\nroot = "{library}"\n'
        f'[units.muut]\nplatform = "filesystem"\nroot = "{other}"\n'
    )
    sync = ["sync", "--config", str(config), "-q", "--format", "json"]
    assert scan(*sync).returncode == 0
    for photo in library.rglob("*.jpg"):
        photo.unlink()
    shutil.copy(PHOTO_FILES[1], other / "f.jpg")

    result = scan(*sync)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert list(report["failed_units"]) == ["arkisto"]
    assert "holds 4 live asset(s) of unit arkisto" in report["failed_units"]["arkisto"]
    [muut] = [unit for unit in report["units"] if unit["unit"] == "muut"]
    assert muut["listed"] == 2 and muut["complete"]

    confirmed = scan(*sync, "--unit", "arkisto", "--allow-empty")
    assert confirmed.returncode == 0, confirmed.stderr
    assert json.loads(confirmed.stdout)["units"][0]["retired"] == 4
