"""`damdup migrate` and `damdup audit metadata` against three platform servers
on 127.0.0.1 (Drupal, S3 and ResourceSpace emulators): copies of fixture photos
placed across the units, some assets without metadata, one with a hostile name.
Every expected figure is worked out here from the placement, not read from
damdup. The HTML report is opened in Debian's chromium (Playwright); its
screenshot goes to test-artifacts/migrate/ (git ignores test-artifacts/)."""

from __future__ import annotations

import csv
import html
import json
import os
import posixpath
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from connector.core.index import AssetRow, SQLiteStore
from connector.core.tiers import Tier
from connector.engine.clusters import Cluster, Edge, Member
from connector.engine.locks import UnitLock
from connector.report.migrate import (
    CLUSTERS_SHOWN,
    AssetGap,
    Figures,
    MetadataAudit,
    MigrationReport,
    write_audit_csv,
    write_report,
)
from tests.conftest import PHOTOS, ROOT, damdup
from tests.contract.harness import Harness, start_harness
from tests.servers.config import write_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "migrate"
KINDS = {"museum": "drupal", "archive": "s3", "events": "resourcespace"}
FULL = {"location": "Kallio", "date": "2021-05-04", "department": "Kaupunginmuseo"}
HOSTILE = "<script>alert(1)</script>.jpg"

# Six different photographs (no two of one scene).
P1, P2, P3, P4, P5, P6 = (
    "hel-fi/DSC_2041.jpg",
    "hel-fi/kahvikuppi_Pikolo.jpg",
    "hel-fi/nurmikko.jpg",
    "kasvatus/kissa Chelsea.jpg",
    "kuva/IMG_0412.jpg",
    "kaupunginmuseo/kolikot_Pompeji.jpg",
)
# unit -> (upload name, photo, metadata). The museum's copies alone have
# complete metadata, so the policy makes them the canonicals.
PLACEMENT: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    "museum": [
        ("rocket.jpg", P1, FULL),
        ("coffee.jpg", P2, FULL),
        ("grass.jpg", P3, FULL),
        ("cat.jpg", P4, {"date": "2019-01-02"}),
    ],
    "archive": [
        (HOSTILE, P1, {}),
        ("coffee copy.jpg", P2, {}),
        ("astronaut.jpg", P5, FULL),
    ],
    "events": [
        ("rocket-event.jpg", P1, {}),
        ("coins.jpg", P6, {"location": "Pompeji"}),
    ],
}


def size(photo: str) -> int:
    return (PHOTOS / photo).stat().st_size


def expected_units() -> dict[str, dict[str, Any]]:
    """Per unit: every asset whose photo is also in the museum is a copy."""
    canonical_photos = {photo for _name, photo, _meta in PLACEMENT["museum"]}
    out = {}
    for unit, placed in PLACEMENT.items():
        copies = [
            photo for _n, photo, _m in placed if unit != "museum" and photo in canonical_photos
        ]
        out[unit] = {
            "assets": len(placed),
            "redundant": len(copies),
            "redundancy_pct": round(100 * len(copies) / len(placed), 1),
            "bytes_reclaimable": sum(size(photo) for photo in copies),
        }
    return out


def has(metadata: dict[str, str], name: str) -> bool:
    return bool(metadata.get(name))


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Harness]]:
    started = {unit: start_harness(kind) for unit, kind in KINDS.items()}
    yield started
    for harness in started.values():
        harness.close()


@pytest.fixture(scope="module")
def site(servers: dict[str, Harness], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("migrate")
    ids: dict[str, dict[str, str]] = {}
    for unit, placed in PLACEMENT.items():
        servers[unit].reset()
        ids[unit] = {
            servers[unit].add(name, (PHOTOS / photo).read_bytes(), metadata): name
            for name, photo, metadata in placed
        }
    db = tmp / "index.sqlite"
    config = tmp / "damdup.toml"
    units = {unit: (kind, servers[unit].settings()) for unit, kind in KINDS.items()}
    # A fourth unit whose credentials ResourceSpace refuses.
    bad = servers["events"].bad_credentials()
    assert bad is not None
    units["broken"] = ("resourcespace", servers["events"].settings(**bad))
    env = write_config(config, db, units)
    return {"ids": ids, "db": db, "config": config, "env": env, "tmp": tmp}


def migrate(site: dict[str, Any], units: str, report: Path) -> subprocess.CompletedProcess[str]:
    return damdup(
        "migrate", "--units", units, "--config", str(site["config"]), "--report", str(report),
        "-q", env=site["env"], check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def migrated(site: dict[str, Any]) -> dict[str, Any]:
    report = site["tmp"] / "report"
    result = migrate(site, "museum,archive,events", report)
    assert result.returncode == 0, result.stderr
    return {"dir": report, "stdout": result.stdout}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as source:
        return list(csv.DictReader(source))


def test_units_csv_matches_the_placement(migrated: dict[str, Any]) -> None:
    rows = {row["unit"]: row for row in read_csv(migrated["dir"] / "units.csv")}
    assert list(rows) == ["museum", "archive", "events"]
    for unit, want in expected_units().items():
        row = rows[unit]
        assert int(row["assets"]) == want["assets"], unit
        assert int(row["redundant"]) == want["redundant"], unit
        assert float(row["redundancy_pct"]) == want["redundancy_pct"], unit
        assert int(row["bytes_reclaimable"]) == want["bytes_reclaimable"], unit
        assert (
            int(row["redundant_confirmed"]) + int(row["redundant_to_review"]) == want["redundant"]
        )
        assert int(row["bytes_confirmed"]) + int(row["bytes_to_review"]) == int(
            row["bytes_reclaimable"]
        )
    # 2 of 3 archive assets and 1 of 2 events assets are copies.
    assert float(rows["archive"]["redundancy_pct"]) == 66.7
    assert float(rows["events"]["redundancy_pct"]) == 50.0
    assert int(rows["events"]["bytes_reclaimable"]) == size(P1)
    # The summary names the totals and the report.
    total = sum(w["bytes_reclaimable"] for w in expected_units().values())
    assert f"({total:,} bytes) reclaimable" in migrated["stdout"]
    assert "3 units, 9 assets, 2 clusters, 33.3 % redundant" in migrated["stdout"]
    assert str(migrated["dir"] / "report.html") in migrated["stdout"]


def test_clusters_csv_has_every_member_with_the_museum_canonical(
    migrated: dict[str, Any], site: dict[str, Any]
) -> None:
    rows = read_csv(migrated["dir"] / "clusters.csv")
    name = {(unit, asset_id): n for unit, ids in site["ids"].items() for asset_id, n in ids.items()}
    clusters: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = clusters.setdefault(row["cluster"], {"canonical": None, "copies": set()})
        placed = (row["unit"], name[(row["unit"], row["asset_id"])])
        if row["role"] == "canonical":
            entry["canonical"] = placed
            assert "metadata" in row["reason"], row["reason"]
        else:
            assert row["mark"] in ("duplicate", "duplicate-candidate")
            entry["copies"].add(placed)
    got = {c["canonical"]: c["copies"] for c in clusters.values()}
    assert got == {
        ("museum", "rocket.jpg"): {("archive", HOSTILE), ("events", "rocket-event.jpg")},
        ("museum", "coffee.jpg"): {("archive", "coffee copy.jpg")},
    }
    sizes = {(r["unit"], name[(r["unit"], r["asset_id"])]): int(r["size_bytes"]) for r in rows}
    assert sizes[("archive", HOSTILE)] == size(P1)
    assert sizes[("archive", "coffee copy.jpg")] == size(P2)


def test_folders_csv_sums_to_the_units(migrated: dict[str, Any]) -> None:
    folders = read_csv(migrated["dir"] / "folders.csv")
    units = {row["unit"]: row for row in read_csv(migrated["dir"] / "units.csv")}
    for unit, row in units.items():
        mine = [f for f in folders if f["unit"] == unit]
        assert sum(int(f["assets"]) for f in mine) == int(row["assets"])
        assert sum(int(f["redundant"]) for f in mine) == int(row["redundant"])
        assert sum(int(f["bytes_reclaimable"]) for f in mine) == int(row["bytes_reclaimable"])
    # S3 keys are paths: the hostile name's "/" puts it in a folder of its own.
    archive = {f["folder"]: f for f in folders if f["unit"] == "archive"}
    prefix = next(folder for folder in archive if folder.endswith("/kuvat"))
    hostile = f"{prefix}/{posixpath.dirname(HOSTILE)}"
    assert set(archive) == {prefix, hostile}
    assert (int(archive[prefix]["assets"]), int(archive[prefix]["redundant"])) == (2, 1)
    assert float(archive[prefix]["redundancy_pct"]) == 50.0
    assert int(archive[prefix]["bytes_reclaimable"]) == size(P2)
    assert (int(archive[hostile]["assets"]), int(archive[hostile]["redundant"])) == (1, 1)


def test_metadata_csv_shares(migrated: dict[str, Any]) -> None:
    rows = {row["unit"]: row for row in read_csv(migrated["dir"] / "metadata.csv")}
    for unit, placed in PLACEMENT.items():
        row = rows[unit]
        assert int(row["assets"]) == len(placed)
        for field in ("location", "department"):
            want = sum(has(meta, field) for _n, _p, meta in placed)
            assert int(row[f"with_{field}"]) == want, (unit, field)
            assert float(row[f"{field}_pct"]) == round(100 * want / len(placed), 1)
    # Drupal fills a missing date from the upload ("Authored on"): every museum
    # asset is dated; the museum's cat lacks location and department.
    assert int(rows["museum"]["with_date"]) == 4
    assert float(rows["museum"]["complete_pct"]) == 75.0
    assert int(rows["archive"]["complete"]) == 1
    assert float(rows["archive"]["complete_pct"]) == 33.3
    # ResourceSpace reads the date from the photo's EXIF on upload: both events
    # photos carry one (DateTimeOriginal), neither a department.
    assert int(rows["events"]["with_date"]) == 2
    assert int(rows["events"]["complete"]) == 0


def test_chart_files(migrated: dict[str, Any]) -> None:
    svg = (migrated["dir"] / "redundancy.svg").read_text()
    assert svg.count('class="bar"') == 3
    assert 'data-unit="archive" data-pct="66.7"' in svg
    with Image.open(migrated["dir"] / "redundancy.png") as image:
        assert image.format == "PNG"
        colours = {colour for _count, colour in image.convert("RGB").getcolors(1 << 16) or []}
    assert (0xC8, 0x55, 0x3D) in colours  # the bars were drawn


def test_a_hostile_name_is_escaped_everywhere(migrated: dict[str, Any]) -> None:
    page = (migrated["dir"] / "report.html").read_text()
    assert "<script" not in page.lower()
    assert html.escape(HOSTILE) in page
    clusters = (migrated["dir"] / "clusters.csv").read_text(encoding="utf-8-sig")
    assert HOSTILE in clusters  # CSV keeps the name as it is: a spreadsheet runs no HTML


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_report_opens_in_chromium_without_fetching_anything(migrated: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    page_url = (migrated["dir"] / "report.html").as_uri()
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_url)
            page.wait_for_load_state("load")
            images = page.evaluate(
                "() => [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])"
            )
            bars = page.locator("#chart svg rect.bar").count()
            scripts = page.locator("script").count()
            captions = page.locator("figcaption").all_inner_texts()
            failed = page.locator("#failed-units").count()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert [url for url in requested if not url.startswith("data:")] == [page_url]
    # Two clusters: the rocket's three copies and the coffee's two.
    assert len(images) == 5
    assert all(complete and width > 0 for complete, width, _alt in images), images
    assert bars == 3
    assert scripts == 0
    assert any(HOSTILE in caption for caption in captions)
    assert failed == 0


def test_a_failed_unit_exits_3_and_the_report_names_it(site: dict[str, Any]) -> None:
    report = site["tmp"] / "report-broken"
    result = migrate(site, "museum,broken", report)
    assert result.returncode == 3, result.stderr
    assert "broken: sync stopped" in result.stderr
    page = (report / "report.html").read_text()
    assert 'id="failed-units"' in page and "broken" in page
    rows = {row["unit"]: row for row in read_csv(report / "units.csv")}
    assert int(rows["museum"]["assets"]) == 4
    assert int(rows["broken"]["assets"]) == 0


def test_audit_metadata_counts_and_csv(
    migrated: dict[str, Any], site: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "missing.csv"
    result = damdup(
        "audit", "metadata", "--db", str(site["db"]), "--unit", "museum", "--unit", "archive",
        "--unit", "events", "--csv", str(target), "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    counts = {entry["unit"]: entry for entry in payload["units"]}
    want_rows = set()
    for unit, placed in PLACEMENT.items():
        # Drupal dates every upload; ResourceSpace dates these from their EXIF.
        dated = unit in ("museum", "events")
        missing = {
            name: [
                n for n, _p, meta in placed
                if not has(meta, name) and not (name == "date" and dated)
            ]
            for name in ("location", "date", "department")
        }  # fmt: skip
        for name, names in missing.items():
            assert counts[unit][f"missing_{name}"] == len(names), (unit, name)
        lacking = {n for names in missing.values() for n in names}
        assert counts[unit]["missing_any"] == len(lacking)
        assert counts[unit]["assets"] == len(placed)
        for n in lacking:
            fields = " ".join(f for f in ("location", "date", "department") if n in missing[f])
            want_rows.add((unit, n, fields))
    name = {(unit, asset_id): n for unit, ids in site["ids"].items() for asset_id, n in ids.items()}
    rows = read_csv(target)
    assert {(r["unit"], name[(r["unit"], r["asset_id"])], r["missing"]) for r in rows} == want_rows
    assert all(r["url"].startswith("http://127.0.0.1:") for r in rows)
    # The table on the terminal, for every unit in the index.
    text = damdup("audit", "metadata", "--db", str(site["db"]))
    assert text.returncode == 0
    for unit in PLACEMENT:
        assert unit in text.stdout


def test_audit_csv_cells_cannot_become_formulas(tmp_path: Path) -> None:
    audit = MetadataAudit(
        {"u": {"assets": 1}},
        [AssetGap("u", '=HYPERLINK("http://x")', "@SUM(1)", ("location",))],
    )
    target = tmp_path / "audit.csv"
    assert write_audit_csv(audit, target) == 1
    row = read_csv(target)[0]
    assert row["asset_id"] == '\'=HYPERLINK("http://x")'
    assert row["url"] == "'@SUM(1)"


def test_a_unit_another_process_syncs_is_refused_naming_it(site: dict[str, Any]) -> None:
    report = site["tmp"] / "report-busy"
    with UnitLock(site["db"], "archive"):
        result = damdup(
            "migrate", "--units", "museum,archive", "--config", str(site["config"]),
            "--report", str(report), "--lock-wait", "0", "-q", env=site["env"], check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"unit archive is busy: process {os.getpid()} holds its lock" in result.stderr
    assert not report.exists()


def test_an_unknown_unit_is_a_usage_error(site: dict[str, Any]) -> None:
    report = site["tmp"] / "report-unknown"
    result = migrate(site, "museum,nowhere", report)
    assert result.returncode == 2
    assert "unknown unit(s) nowhere" in result.stderr
    assert not report.exists()


def test_audit_with_the_configuration_reads_its_index_and_units(site: dict[str, Any]) -> None:
    result = damdup(
        "audit", "metadata", "--config", str(site["config"]), "--unit", "archive",
        "--format", "json",
    )  # fmt: skip  # no secrets in the environment: the audit needs none
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [entry["unit"] for entry in payload["units"]] == ["archive"]
    assert {gap["unit"] for gap in payload["assets"]} == {"archive"}
    assert len(payload["assets"]) == 2
    every = damdup("audit", "metadata", "--config", str(site["config"]), "--format", "json")
    listed = [entry["unit"] for entry in json.loads(every.stdout)["units"]]
    assert listed == ["museum", "archive", "events", "broken"]  # the file's order
    unknown = damdup(
        "audit", "metadata", "--config", str(site["config"]), "--unit", "nowhere", check=False
    )
    assert unknown.returncode == 2 and "unknown unit(s) nowhere" in unknown.stderr


def test_a_large_report_caps_the_clusters_shown(tmp_path: Path) -> None:
    """The HTML shows the largest CLUSTERS_SHOWN clusters and says so; the CSV
    has every one. Links whose scheme could run code stay text."""

    def asset(unit: str, number: int, url: str) -> AssetRow:
        return AssetRow(unit, f"a{number}", "1", url, 1000 + number, None, None, None, {}, True)

    clusters = []
    for number in range(CLUSTERS_SHOWN + 2):
        canonical = asset("one", number, f"http://127.0.0.1/one/{number}.jpg")
        copy = asset("two", number, "javascript:alert(1)")
        edge = Edge(Tier.EXACT, 0, 0)
        clusters.append(Cluster(f"dd{number:010d}", canonical, "only test", [Member(copy, edge)]))
    store = SQLiteStore(tmp_path / "empty.sqlite")
    try:
        report = MigrationReport(
            units=["one", "two"], per_unit={"one": Figures(), "two": Figures()}, per_folder={},
            total=Figures(), clusters=clusters, sizes={}, failed_units={}, generated_at="now",
        )  # fmt: skip
        written = write_report(report, store, tmp_path / "report")
    finally:
        store.close()
    page = written[0].read_text()
    assert page.count('<section class="cluster"') == CLUSTERS_SHOWN
    assert 'id="clusters-capped"' in page
    assert 'href="javascript' not in page and "javascript:alert(1)" in page
    rows = read_csv(tmp_path / "report" / "clusters.csv")
    assert len(rows) == 2 * (CLUSTERS_SHOWN + 2)
