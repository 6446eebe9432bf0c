"""What a user sees from the CLI on bad input and on reviewer decisions."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from tests.conftest import PHOTOS

Run = Callable[..., CompletedProcess[str]]


def test_missing_folder_is_a_clear_usage_error(run_damdup: Run, tmp_path: Path) -> None:
    result = run_damdup("scan", str(tmp_path / "nowhere"), "--db", str(tmp_path / "i.sqlite"),
                        check=False)  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_names_the_setting(run_damdup: Run, tmp_path: Path) -> None:
    result = run_damdup(
        "scan", str(PHOTOS), "--db", str(tmp_path / "i.sqlite"),
        check=False, env={"DAMDUP_WORKERS": "many"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "workers" in result.stderr and "Traceback" not in result.stderr


def test_unknown_asset_is_a_clear_error(run_damdup: Run, tmp_path: Path) -> None:
    db = tmp_path / "i.sqlite"
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(PHOTOS / "kuva" / "IMG_0412.jpg", folder / "a.jpg")
    run_damdup("scan", str(folder), "--db", str(db), "-q")
    result = run_damdup("explain", "a.jpg", "missing.jpg", "--db", str(db), check=False)
    assert result.returncode == 2
    assert "no asset 'missing.jpg'" in result.stderr


def test_reviewer_decisions_split_and_join_and_outrank_automation(
    run_damdup: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "pair"
    folder.mkdir()
    shutil.copy(PHOTOS / "kuva" / "IMG_0412.jpg", folder / "original.jpg")
    shutil.copy(PHOTOS / "kaupunginmuseo" / "IMG_0412_puolikas.jpg", folder / "half.jpg")
    db = tmp_path / "i.sqlite"
    run_damdup("scan", str(folder), "--db", str(db), "-q")

    def clusters() -> list[dict[str, object]]:
        result = run_damdup("clusters", "--format", "json", "--db", str(db))
        found: list[dict[str, object]] = json.loads(result.stdout)["clusters"]
        return found

    assert len(clusters()) == 1, "a 50 % resize is a near-identical copy"
    run_damdup("review", "decide", "original.jpg", "half.jpg", "different", "--by", "archivist",
               "--db", str(db))  # fmt: skip
    assert clusters() == []
    explained = json.loads(
        run_damdup(
            "explain", "original.jpg", "half.jpg", "--format", "json", "--db", str(db)
        ).stdout
    )
    assert explained["decision"]["decision"] == "different"
    assert explained["decision"]["decided_by"] == "archivist"
    # A re-scan (automation) never overrides the reviewer.
    run_damdup("scan", str(folder), "--db", str(db), "-q")
    assert clusters() == []
    run_damdup("review", "decide", "half.jpg", "original.jpg", "canonical", "--by", "archivist",
               "--db", str(db))  # fmt: skip
    (cluster,) = clusters()
    assert cluster["canonical"] == {"unit": "scan", "id": "half.jpg"}
    assert "reviewer" in str(cluster["reason"])


def test_review_from_the_terminal_and_a_spreadsheet(run_damdup: Run, tmp_path: Path) -> None:
    folder = tmp_path / "pair"
    folder.mkdir()
    shutil.copy(PHOTOS / "kuva" / "IMG_0412.jpg", folder / "original.jpg")
    shutil.copy(PHOTOS / "kaupunginmuseo" / "IMG_0412_puolikas.jpg", folder / "half.jpg")
    shutil.copy(PHOTOS / "hel-fi" / "kahvikuppi_Pikolo.jpg", folder / "coffee.jpg")
    shutil.copy(PHOTOS / "kuva" / "kahvikuppi_Pikolo_2.jpg", folder / "coffee_burst.jpg")
    db = str(tmp_path / "i.sqlite")
    run_damdup("scan", str(folder), "--db", db, "-q")
    listed = json.loads(run_damdup("review", "list", "--format", "json", "--db", db).stdout)
    assert sorted(item["label"] for item in listed) == ["duplicate-candidate", "similar"]
    stale = run_damdup("review", "decide", "original.jpg", "coffee.jpg", "same", "--by", "Aino",
                       "--db", db, check=False)  # fmt: skip
    assert stale.returncode == 2 and "not a pair in the index" in stale.stderr
    sheet = tmp_path / "review.csv"
    run_damdup("review", "export", "--csv", str(sheet), "--db", db)
    with sheet.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["decision"] = "different" if row["tier"] == "similar" else "same"
    with sheet.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_damdup("review", "import", str(sheet), "--by", "Aino", "--db", db)
    assert "2 decision(s) recorded" in result.stdout
    assert json.loads(run_damdup("review", "list", "--format", "json", "--db", db).stdout) == []
    rows[0]["a_sha256"] = "0" * 64
    with sheet.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    refused = run_damdup("review", "import", str(sheet), "--by", "Aino", "--db", db, check=False)
    assert refused.returncode == 2 and "line 2:" in refused.stderr
    assert "nothing was imported" in refused.stderr
