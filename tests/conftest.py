from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
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
