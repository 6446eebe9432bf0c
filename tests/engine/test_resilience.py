"""Hostile files, unreadable files and kill -9: recorded errors, nothing lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from connector.core.index import SQLiteStore
from tests.conftest import BAD, ROOT

Run = Callable[..., CompletedProcess[str]]
EXPECTED: dict[str, dict[str, str]] = json.loads((BAD / "EXPECTED.json").read_text())
# (name, its id, the fixture copied to it, expectation)
NOT_UTF8 = [
    (b"caf\xe9.jpg", "caf\\xe9.jpg", "..jpg", "ok"),  # Latin-1, from an old Windows share
    (b"\xff\xfe.jpg", "\\xff\\xfe.jpg", "empty.jpg", "error"),
]


def test_bad_corpus_is_large_enough() -> None:
    assert len(EXPECTED) >= 30
    assert sum(1 for e in EXPECTED.values() if e["expect"] == "error") >= 20


def test_every_hostile_file_is_a_recorded_error_and_the_scan_goes_on(
    run_damdup: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(BAD, folder, symlinks=True)
    # Names that are not UTF-8 are made here, not stored in git (fixtures/README.md).
    expected = dict(EXPECTED)
    for name, asset_id, source, expect in NOT_UTF8:
        shutil.copyfile(BAD / source, os.fsencode(folder) + b"/" + name)
        expected[asset_id] = {"expect": expect, "why": f"name {name!r} is not UTF-8"}
    db = tmp_path / "i.sqlite"
    result = run_damdup(
        "scan", str(folder), "--db", str(db), "-q",
        env={"DAMDUP_FILE_TIMEOUT_S": "20", "DAMDUP_WORKER_MEMORY_MB": "1536"},
    )  # fmt: skip
    assert result.returncode == 3, "the exit status must say that some files failed"
    errors = json.loads(run_damdup("errors", "--db", str(db), "--format", "json").stdout)
    failed = {row["id"]: row["reason"] for row in errors}
    store = SQLiteStore(db)
    indexed = {row.asset_id for row in store.live_assets() if row.sha256 is not None}
    store.close()
    for name, expectation in expected.items():
        if name.endswith("/") or (BAD / name).is_dir():
            continue
        if expectation["expect"] == "error":
            assert name in failed, f"{name} ({expectation['why']}) was not recorded as an error"
            assert len(failed[name]) > 10, f"{name}: reason too vague: {failed[name]!r}"
        else:
            assert name in indexed, f"{name} should index: {failed.get(name)}"
    assert all("Traceback" not in reason for reason in failed.values())


def test_unreadable_file_is_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(
        next(iter(sorted((ROOT / "fixtures" / "photos").rglob("*.jpg")))), folder / "ok.jpg"
    )
    secret = folder / "secret.jpg"
    shutil.copy(folder / "ok.jpg", secret)
    secret.chmod(0)
    db = tmp_path / "i.sqlite"
    command = [sys.executable, "-m", "connector.cli", "scan", str(folder), "--db", str(db), "-q"]
    if os.geteuid() == 0:
        # root reads any file: drop the capabilities that bypass file modes, as a
        # service account would not have them.
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "DAMDUP_WORKERS": "1"},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    store = SQLiteStore(db)
    errors = {row.asset_id: row.error for row in store.errors()}
    store.close()
    assert list(errors) == ["secret.jpg"]
    assert "permission denied" in (errors["secret.jpg"] or "")


@pytest.mark.slow
def test_kill_9_at_any_moment_then_rescan_gives_the_same_index(
    run_damdup: Run, photo_copy: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "DAMDUP_WORKERS": "2", "DAMDUP_FILESYSTEM_PAGE_SIZE": "16"}
    reference = tmp_path / "reference.sqlite"
    run_damdup("scan", str(photo_copy), "--db", str(reference), "-q")
    victim = tmp_path / "killed.sqlite"
    command = [
        sys.executable,
        "-m",
        "connector.cli",
        "scan",
        str(photo_copy),
        "--db",
        str(victim),
        "-q",
    ]
    kills = 0
    # Early kills land while pages are indexed, later ones while pairs are checked.
    for delay in (0.8, 1.6, 2.4, 3.5, 5.0, 9.0):
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the scan and its workers, mid-write
            kills += 1
        process.wait()
    assert kills >= 2, "the scan finished before it could be killed: the test proves nothing"
    run_damdup("scan", str(photo_copy), "--db", str(victim), "-q")
    expected, actual = SQLiteStore(reference), SQLiteStore(victim)
    try:
        assert actual.dump() == expected.dump()
        assert actual.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        expected.close()
        actual.close()
