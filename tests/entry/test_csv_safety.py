"""CSV files damdup writes open in a spreadsheet as data: a carriage return in
a name keeps its row whole, and a name that looks like a formula stays text."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from connector.core.sheets import uncell
from tests.conftest import PHOTOS, damdup

ORIGINAL = PHOTOS / "hel-fi" / "DSC_2041.jpg"
COPY = PHOTOS / "hel-fi" / "DSC_2041_medium.jpg"
HOSTILE = ["=HYPERLINK(1)", "@SUM(A1)", "+1", "-2", "cr\rname"]


def test_export_and_push_report_quote_and_neutralise(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in HOSTILE:
        shutil.copy(ORIGINAL, folder / f"{name}.jpg")
        shutil.copy(COPY, folder / f"{name} copy.jpg")
    db = tmp_path / "index.sqlite"
    damdup("scan", str(folder), "--db", str(db), "-q", "--unit", "share")

    exported = tmp_path / "relations.csv"
    damdup("export", "relations", "--db", str(db), "--output", str(exported))
    with exported.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = {uncell(row[key]) for row in rows for key in ("id_a", "id_b")}
    assert {f"{name}.jpg" for name in HOSTILE} <= names
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "@", "+", "-")), value

    config = tmp_path / "damdup.toml"
    config.write_text(
        f'[damdup]\ndb = "{db}"\n\n[units.share]\nplatform = "filesystem"\nroot = "{folder}"\n'
    )
    report = tmp_path / "push.csv"
    damdup("push", "--config", str(config), "--report", str(report))
    with report.open(newline="", encoding="utf-8") as handle:
        pushed = list(csv.DictReader(handle))
    assert {uncell(row["asset_id"]) for row in pushed} >= {f"{name}.jpg" for name in HOSTILE}
    assert all(not row["asset_id"].startswith(("=", "@", "+", "-")) for row in pushed)


def test_tables_show_names_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "[red]rikki\nkuva.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    shutil.copy(ORIGINAL, folder / "[bold]alkuperäinen.jpg")
    shutil.copy(COPY, folder / "kopio.jpg")
    db = tmp_path / "index.sqlite"
    damdup("scan", str(folder), "--db", str(db), "-q")
    errors = damdup("errors", "--db", str(db), check=False)
    assert errors.returncode == 3
    assert "[red]rikki\\nkuva.jpg" in errors.stdout
    clusters = damdup("clusters", "--db", str(db)).stdout
    assert "[bold]alkuperäinen.jpg" in clusters


def test_lookup_explain_and_decide_name_assets_as_they_are(tmp_path: Path) -> None:
    """What a user reads to act on (the canonical a lookup names, the pair an
    explanation or a recorded decision names) keeps a name's brackets: rich
    markup is never read into it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(ORIGINAL, folder / "[red]alkuperäinen.jpg")
    shutil.copy(COPY, folder / "kopio.jpg")
    db = str(tmp_path / "index.sqlite")
    damdup("scan", str(folder), "--db", db, "-q")
    original, copy = "scan:[red]alkuperäinen.jpg", "scan:kopio.jpg"

    lookup = damdup("lookup", str(folder / "kopio.jpg"), "--db", db).stdout
    assert f"canonical {original}\n" in lookup
    explain = damdup("explain", original, copy, "--db", db).stdout
    assert explain.startswith(f"{original}  vs  {copy}\n")
    decide = damdup("review", "decide", original, copy, "same", "--by", "[i]Aino", "--db", db)
    assert f"recorded: {original} / {copy}: same by [i]Aino" in decide.stdout
