"""File names a file system allows, however odd, and a unit that crashes:
what `damdup scan`, `damdup errors` and `damdup clusters` tell a user."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import structlog

import connector.engine.scan
from connector import cli
from connector.core.index import SQLiteStore
from tests.conftest import PHOTOS

Run = Callable[..., CompletedProcess[str]]

PHOTO = PHOTOS / "kuva" / "IMG_0412.jpg"
LONG = "pitkä_" * 35 + ".jpg"  # 249 bytes: near the 255-byte limit of a name
# What each odd name's id is, as every command shows it.
ODD_NAMES: dict[bytes, str] = {
    b"caf\xe9.jpg": "caf\\xe9.jpg",  # Latin-1, from an old Windows share
    b"kansio\xff/kuva.jpg": "kansio\\xff/kuva.jpg",  # a folder so named
    b"vino\\viiva\xe4.jpg": "vino\\\\viiva\\xe4.jpg",
    b"rivin\nvaihto.jpg": "rivin\nvaihto.jpg",
    b"=HYPERLINK(1).jpg": "=HYPERLINK(1).jpg",
    b"@SUM(1).jpg": "@SUM(1).jpg",
    b"+358 kuva.jpg": "+358 kuva.jpg",
    b"-rf.jpg": "-rf.jpg",
    LONG.encode(): LONG,
}


def odd_folder(root: Path) -> Path:
    """The photo under each odd name, beside one plain copy and one broken file
    whose name is not UTF-8 either. Made here: git stores such names badly."""
    folder = root / "odd"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "tavallinen.jpg")
    base = os.fsencode(folder)
    for name in ODD_NAMES:
        target = base + b"/" + name
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(PHOTO, target)
    with open(base + b"/rikki\xf6.jpg", "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


def test_odd_names_are_indexed_and_a_broken_one_is_an_error_of_its_own(
    run_damdup: Run, tmp_path: Path
) -> None:
    folder = odd_folder(tmp_path)
    db = str(tmp_path / "i.sqlite")
    scan = run_damdup("scan", str(folder), "--db", db, "--format", "json", check=False)
    assert scan.returncode == 3, scan.stderr  # the broken file, and nothing else
    summary = json.loads(scan.stdout)
    assert summary["listed"] == len(ODD_NAMES) + 2
    assert summary["errors"] == 1 and summary["failed_units"] == {}

    errors = run_damdup("errors", "--db", db, "--format", "json", check=False)
    [error] = json.loads(errors.stdout)
    assert error["id"] == "rikki\\xf6.jpg"
    assert "damaged" in error["reason"] or "cannot" in error["reason"], error
    assert "rikki\\xf6.jpg" in run_damdup("errors", "--db", db, check=False).stdout

    clusters = run_damdup("clusters", "--db", db, "--format", "json", "--all")
    [cluster] = json.loads(clusters.stdout)["clusters"]
    ids = {cluster["canonical"]["id"]} | {member["id"] for member in cluster["members"]}
    assert ids == {"tavallinen.jpg", *ODD_NAMES.values()}

    again = run_damdup("scan", str(folder), "--db", db, "--format", "json", check=False)
    assert json.loads(again.stdout)["unchanged"] == len(ODD_NAMES) + 2


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """cli.main configures structlog to write to this test's captured stderr,
    which is closed once the test ends: later tests must not log there."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("logging_restored")
def test_a_crashed_unit_fails_the_scan_with_its_reason_and_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def defect(*args: Any, **kwargs: Any) -> Any:
        raise UnicodeEncodeError("utf-8", "caf\udce9.jpg", 3, 4, "surrogates not allowed")

    monkeypatch.setattr(connector.engine.scan, "sync_unit", defect)
    monkeypatch.setenv("DAMDUP_WORKERS", "1")
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "a.jpg")
    status = cli.main(["scan", str(folder), "--db", str(tmp_path / "i.sqlite"), "-q"])
    stderr = capsys.readouterr().err
    assert status == cli.EXIT_SOME_FAILED
    assert "scan: scan stopped: unexpected UnicodeEncodeError" in stderr
    [crash] = [json.loads(line) for line in stderr.splitlines() if "unit.crashed" in line]
    assert crash["unit"] == "scan"
    assert "Traceback" in crash["exception"]
    assert "raise UnicodeEncodeError" in crash["exception"]


def test_a_name_that_is_another_names_readable_id_is_indexed_too(
    run_damdup: Run, tmp_path: Path
) -> None:
    """`caf\\xe9.jpg` typed with a backslash beside `caf` + byte E9 + `.jpg`:
    both are indexed, each under an id of its own that leads to its own
    bytes; a backslash that escapes nothing leaves the id the name."""
    folder = tmp_path / "kaksi"
    folder.mkdir()
    photos = sorted((PHOTOS / "kuva").glob("*.jpg"))[:3]
    names = {
        "caf\\xe9.jpg": os.fsencode(folder) + b"/caf\xe9.jpg",  # Latin-1
        "caf\\\\xe9.jpg": os.fsencode(folder / "caf\\xe9.jpg"),  # really named so
        "vino\\viiva.jpg": os.fsencode(folder / "vino\\viiva.jpg"),
    }
    for photo, target in zip(photos, names.values(), strict=True):
        shutil.copy(photo, target)
    db = tmp_path / "i.sqlite"
    scan = run_damdup("scan", str(folder), "--db", str(db), "--format", "json", check=False)
    assert scan.returncode == 0, scan.stderr
    assert json.loads(scan.stdout)["listed"] == 3
    assert "No errors" in run_damdup("errors", "--db", str(db)).stdout

    store = SQLiteStore(db)
    try:
        contents = {row.asset_id: row.sha256 for row in store.live_assets("scan")}
    finally:
        store.close()
    assert contents == {
        asset_id: hashlib.sha256(Path(os.fsdecode(target)).read_bytes()).hexdigest()
        for asset_id, target in names.items()
    }
    again = run_damdup("scan", str(folder), "--db", str(db), "--format", "json", check=False)
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"] == 3
