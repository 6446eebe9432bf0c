"""A reviewer's `same` (or `canonical`) confirms a duplicate everywhere damdup
shows or writes it: clusters, status, push, lookup and the migration report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from connector.core.sheets import uncell
from tests.conftest import PHOTOS, damdup

UNIT = "arkisto"
FILES = {
    "DSC_2041.jpg": PHOTOS / "hel-fi" / "DSC_2041.jpg",  # the original
    "DSC_2041_medium.jpg": PHOTOS / "hel-fi" / "DSC_2041_medium.jpg",  # resized: a candidate
    "DSC_2041_web.jpg": PHOTOS / "kaupunginmuseo" / "DSC_2041_web.jpg",  # re-encoded: a candidate
}


def marks(config: Path) -> dict[str, str]:
    payload = json.loads(damdup("clusters", "--config", str(config), "--format", "json").stdout)
    found = {}
    for cluster in payload["clusters"]:
        found[cluster["canonical"]["id"]] = "canonical"
        for member in cluster["members"]:
            found[member["id"]] = member["mark"]
    return found


def status(config: Path) -> dict[str, Any]:
    rows = json.loads(damdup("status", "--config", str(config), "--format", "json").stdout)
    return next(row for row in rows if row["unit"] == UNIT)


def pushed(config: Path) -> dict[str, list[str]]:
    payload = json.loads(
        damdup("push", "--config", str(config), "--dry-run", "--format", "json").stdout
    )
    return {change["asset_id"]: change["after"]["labels"] for change in payload["changes"]}


def synced(tmp_path: Path) -> tuple[Path, Path]:
    """FILES in a folder unit, synced: the folder and the config file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, source in FILES.items():
        shutil.copy(source, folder / name)
    config = tmp_path / "damdup.toml"
    config.write_text(
        f'[damdup]\ndb = "{tmp_path / "index.sqlite"}"\n\n'
        f'[units.{UNIT}]\nplatform = "filesystem"\nroot = "{folder}"\n',
        encoding="utf-8",
    )
    damdup("sync", "--config", str(config), "-q")
    return folder, config


@pytest.mark.parametrize("decision", ["same", "canonical"])
def test_same_confirms_the_duplicate_everywhere(tmp_path: Path, decision: str) -> None:
    """`canonical` names the original, A, as the canonical it already is."""
    folder, config = synced(tmp_path)
    before = marks(config)
    assert before == {
        "DSC_2041.jpg": "canonical",
        "DSC_2041_medium.jpg": "duplicate-candidate",
        "DSC_2041_web.jpg": "duplicate-candidate",
    }
    assert (status(config)["duplicates"], status(config)["candidates"]) == (0, 2)

    damdup(
        "review", "decide", f"{UNIT}:DSC_2041.jpg", f"{UNIT}:DSC_2041_medium.jpg", decision,
        "--by", "archivist", "--config", str(config),
    )  # fmt: skip

    after = marks(config)
    assert after["DSC_2041_medium.jpg"] == "duplicate"
    assert after["DSC_2041_web.jpg"] == "duplicate-candidate", "only the decided pair changes"
    row = status(config)
    assert (row["duplicates"], row["candidates"]) == (1, 1)
    labels = pushed(config)
    assert "duplicate" in labels["DSC_2041_medium.jpg"]
    assert "duplicate-candidate" not in labels["DSC_2041_medium.jpg"]
    assert "duplicate-candidate" in labels["DSC_2041_web.jpg"]

    lookup = json.loads(
        damdup(
            "lookup", str(folder / "DSC_2041_medium.jpg"), "--config", str(config),
            "--format", "json",
        ).stdout
    )  # fmt: skip
    roles = {
        copy["asset_id"]: copy["role"]
        for cluster in lookup["clusters"]
        for copy in cluster["copies"]
    }
    assert roles["DSC_2041_medium.jpg"] == "duplicate"
    assert roles["DSC_2041_web.jpg"] == "duplicate-candidate"

    report = tmp_path / "report"
    damdup("migrate", "--config", str(config), "--units", UNIT, "--report", str(report), "-q")
    with (report / "clusters.csv").open(newline="", encoding="utf-8-sig") as handle:
        rows = {uncell(r["asset_id"]): r["mark"] for r in csv.DictReader(handle)}
    assert rows["DSC_2041_medium.jpg"] == "duplicate"
    assert rows["DSC_2041_web.jpg"] == "duplicate-candidate"
    with (report / "units.csv").open(newline="", encoding="utf-8-sig") as handle:
        unit_row = next(r for r in csv.DictReader(handle) if r["unit"] == UNIT)
    assert (unit_row["redundant_confirmed"], unit_row["redundant_to_review"]) == ("1", "1")


def test_a_decision_says_where_both_assets_stand_after_it(tmp_path: Path) -> None:
    """Two duplicate candidates of one canonical judged the same stay its
    candidates (the reviewer said nothing of the canonical): `decide` says so,
    and how to confirm them, rather than leaving a decision that changed no
    mark to look like one that did."""
    _folder, config = synced(tmp_path)
    medium, web, original = (f"{UNIT}:DSC_2041{part}.jpg" for part in ("_medium", "_web", ""))
    between = damdup(
        "review", "decide", medium, web, "same", "--by", "archivist", "--config", str(config)
    ).stdout
    assert between.splitlines()[1:] == [
        f"  {medium}: still a candidate duplicate of {original}; a decision on the two confirms"
        f" it (damdup review decide {original} {medium} same)",
        f"  {web}: still a candidate duplicate of {original}; a decision on the two confirms"
        f" it (damdup review decide {original} {web} same)",
    ], between
    assert marks(config)["DSC_2041_medium.jpg"] == "duplicate-candidate"

    confirmed = damdup(
        "review", "decide", original, medium, "same", "--by", "archivist", "--config", str(config)
    ).stdout
    assert f"  {original}: the canonical of its cluster" in confirmed
    assert f"  {medium}: a confirmed duplicate of {original}" in confirmed
    assert marks(config)["DSC_2041_medium.jpg"] == "duplicate"

    apart = damdup(
        "review", "decide", original, web, "different", "--by", "archivist", "--config", str(config)
    ).stdout
    assert f"  {web}: in no cluster of duplicates" in apart, apart
