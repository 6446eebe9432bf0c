"""What `damdup scan` tells a user when a unit crashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import connector.engine.scan
from connector import cli
from tests.conftest import PHOTOS

PHOTO = PHOTOS / "kuva" / "IMG_0412.jpg"


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
