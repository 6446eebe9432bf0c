"""The canonical link as editors meet it: `damdup push --dry-run`, its
`--report`, `damdup lookup` and the migration report, for a folder unit whose
canonical lives on the damdup host. Never a `file://` address: the unit's
`public_base_url` or `share_path`, else the unit and path in words."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PHOTOS, damdup

# A name with everything that must be encoded in a URL: a space, ä and ö, `#`,
# `?` and `%`.
FOLDER = "Töölö kesä"
NAME = "kello #2 ?50%.jpg"
ENCODED = "T%C3%B6%C3%B6l%C3%B6%20kes%C3%A4/kello%20%232%20%3F50%25.jpg"
PHOTO = PHOTOS / "kuva" / "kello liike_medium.jpg"


def write_config(tmp: Path, archive_link: str = "") -> Path:
    config = tmp / f"damdup-{abs(hash(archive_link))}.toml"
    config.write_text(
        f"""
[damdup]
db = "{tmp / "index.sqlite"}"
authoritative_units = ["kuva-arkisto"]

[units.kuva-arkisto]
platform = "filesystem"
root = "{tmp / "arkisto"}"
{archive_link}

[units.viestinta]
platform = "filesystem"
root = "{tmp / "viestinta"}"
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folder units holding the same photo, synced once: the archive's
    copy is the canonical. Each test reconfigures only how editors reach the
    archive, which takes effect without another sync."""
    tmp = tmp_path_factory.mktemp("link")
    (tmp / "arkisto" / FOLDER).mkdir(parents=True)
    (tmp / "viestinta").mkdir()
    shutil.copyfile(PHOTO, tmp / "arkisto" / FOLDER / NAME)
    shutil.copyfile(PHOTO, tmp / "viestinta" / "kello.jpg")
    damdup("sync", "--config", str(write_config(tmp)), "-q")
    return tmp


def push_dry_run(config: Path, report: Path) -> dict[str, Any]:
    result = damdup(
        "push", "--config", str(config), "--dry-run", "--report", str(report), "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def canonical_links(payload: dict[str, Any], report: Path) -> tuple[str, str]:
    """The canonical link push would write on the copy, in its JSON and its CSV."""
    (change,) = [c for c in payload["changes"] if c["unit"] == "viestinta"]
    with report.open(encoding="utf-8") as source:
        (row,) = [r for r in csv.DictReader(source) if r["unit"] == "viestinta"]
    assert "duplicate" in change["after"]["labels"]
    return change["after"]["canonical_url"], row["canonical"]


def lookup(config: Path, *extra: str) -> str:
    result = damdup("lookup", str(PHOTO), "--config", str(config), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            'public_base_url = "https://kuvat.hel.fi/arkisto"',
            "https://kuvat.hel.fi/arkisto/" + ENCODED,
        ),
        (
            "share_path = '\\\\fileserver\\kuvat\\'",
            f"\\\\fileserver\\kuvat\\{FOLDER}\\{NAME}",
        ),
        ("share_path = '/Volumes/kuvat'", f"/Volumes/kuvat/{FOLDER}/{NAME}"),
        ("", f"unit kuva-arkisto: {FOLDER}/{NAME}"),
    ],
    ids=["public-base-url", "unc-share", "mount-point", "in-words"],
)
def test_the_canonical_link_is_one_an_editor_can_follow(
    synced: Path, setting: str, expected: str
) -> None:
    config = write_config(synced, setting)
    report = synced / f"push-{abs(hash(setting))}.csv"
    payload = push_dry_run(config, report)
    assert canonical_links(payload, report) == (expected, expected)

    answer = json.loads(lookup(config, "--format", "json"))
    assert answer["canonical"]["unit"] == "kuva-arkisto"
    assert answer["canonical"]["link"] == expected
    text = lookup(config)
    assert expected in text
    assert "file://" not in text


def test_the_migration_report_shows_the_same_link(synced: Path, tmp_path: Path) -> None:
    config = write_config(synced, 'public_base_url = "https://kuvat.hel.fi/arkisto/"')
    result = damdup(
        "migrate", "--units", "kuva-arkisto,viestinta", "--report", str(tmp_path), "--config",
        str(config), "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (tmp_path / "clusters.csv").open(encoding="utf-8-sig") as source:
        rows = {row["role"]: row for row in csv.DictReader(source)}
    assert rows["canonical"]["link"] == "https://kuvat.hel.fi/arkisto/" + ENCODED
    assert rows["copy"]["link"] == "unit viestinta: kello.jpg"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f'href="https://kuvat.hel.fi/arkisto/{ENCODED}"' in page
    assert 'href="file:' not in page


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        (
            'public_base_url = "https://kuvaaja:salasana@kuvat.hel.fi/"',
            "must not hold a user name or password",
        ),
        ('public_base_url = "https://kuvat.hel.fi/?token=x"', "no query"),
        ("public_base_url = \"https://kuvat.hel.fi/\"\nshare_path = '/mnt/kuvat'", "not both"),
        ('share_path = "kuvat"', "UNC path"),
        ('share_path = "smb://fileserver/kuvat"', "public_base_url"),
    ],
    ids=["credentials", "query", "both", "relative-share", "url-as-share"],
)
def test_a_wrong_link_setting_stops_damdup_naming_it(
    synced: Path, setting: str, words: str
) -> None:
    config = write_config(synced, setting)
    result = damdup("push", "--config", str(config), "--dry-run", check=False)
    assert result.returncode == 2, result.stderr
    assert "kuva-arkisto" in result.stderr and words in result.stderr
    assert "salasana" not in result.stderr
