"""`make demo`: six platforms on this machine, the same photos across units.

Starts the real WordPress (when its Debian packages are installed: `make
servers`) and the emulators of Drupal, ResourceSpace, CKAN, Linked Events and
Finna on 127.0.0.1, fills them with the labelled fixture photos so that copies
and edits of one photograph sit in several units, writes a configuration for
them (secrets in the environment, never in the file), then runs what a user
runs: `damdup sync`, `damdup status` and `damdup clusters --cross-unit`.
Then write-back: a dry run of `damdup push` for the WordPress unit, the same
push with writes enabled on every unit, a second push that has nothing left to
send, and the push history. Copies also sit in object storage (S3 on moto's
server), a SharePoint library (Graph emulator) and a WebDAV share (wsgidav),
as after a cloud consolidation: `damdup migrate` reports on those three
(.damdup/demo/migration/report.html), and `damdup audit metadata` lists the
assets that lack location, date or department; `damdup lookup` finds the
authoritative version of a planner's copy of a photo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.contract.harness import Harness, start_harness
from tests.servers.common import FIXTURES, PHOTOS
from tests.servers.config import write_config

ROOT = Path(__file__).resolve().parents[2]

# Fixture folder -> the demo unit that holds it, and the unit's platform.
HOMES = {
    "hel-fi": ("hel-fi", "drupal"),
    "kasvatus": ("kasvatus", "wordpress"),
    "kaupunginmuseo": ("kaupunginmuseo", "finna"),
    "kuva": ("kuvapankki", "resourcespace"),
}
# Units that receive copies of photos homed elsewhere: (unit, platform, variants).
BORROWERS = [
    ("hri", "ckan", {"original", "byte_copy", "png"}),
    ("tapahtumat", "linked_events", {"resize_50", "reencode_q85", "webp"}),
    ("verkkolevy", "filesystem", {"metadata_only", "exif_rotated", "different_shot"}),
    ("pilviarkisto", "s3", {"darker_15", "byte_copy"}),
    ("kanslia", "sharepoint", {"watermark", "brighter_15"}),
    ("jaettu", "webdav", {"crop_5", "reencode_q60"}),
]
DEPARTMENTS = {
    "hel-fi": "Kaupunginkanslia",
    "kasvatus": "Kasvatuksen ja koulutuksen toimiala",
    "kaupunginmuseo": "Helsingin kaupunginmuseo",
    "kuvapankki": "Kaupunkiympäristön toimiala",
    "hri": "Helsingin kaupunki",
    "tapahtumat": "Kulttuurin ja vapaa-ajan toimiala",
    "verkkolevy": "Viestintä",
    "pilviarkisto": "Helsingin kaupunginmuseo",
    "kanslia": "Kaupunginkanslia",
    "jaettu": "Kaupunkiympäristön toimiala",
}


def real_harness(platform: str) -> str:
    """The harness id to start for a platform: its real server where the
    platform's source is in shared/platforms/ (ResourceSpace, Linked Events),
    else its emulator."""
    if platform == "resourcespace":
        from tests.servers.resourcespace_real import skip_reason

        return "resourcespace-real" if skip_reason() is None else platform
    if platform == "linked_events":
        from tests.servers.linked_events_real import source_tarball

        return "linked_events-real" if source_tarball() is not None else platform
    return platform


def wordpress_available() -> bool:
    return shutil.which("php") is not None and Path("/usr/share/wordpress").is_dir()


def plan() -> dict[str, list[tuple[str, Path]]]:
    """Unit -> (name, photo) to upload. Every fixture photo lives in its home
    unit; the borrowers get the variants they are listed with."""
    labels: dict[str, dict[str, str]] = json.loads((FIXTURES / "labels.json").read_text())["files"]
    content: dict[str, list[tuple[str, Path]]] = {}
    for relative in sorted(labels):
        folder = relative.split("/")[0]
        unit = HOMES[folder][0]
        content.setdefault(unit, []).append((Path(relative).name, PHOTOS / relative))
        for borrower, _platform, variants in BORROWERS:
            if labels[relative]["variant"] in variants:
                content.setdefault(borrower, []).append((Path(relative).name, PHOTOS / relative))
    return content


def lookup_photo() -> Path:
    """A planner's copy of a photograph (half size): which version is authoritative?"""
    labels: dict[str, dict[str, str]] = json.loads((FIXTURES / "labels.json").read_text())["files"]
    return PHOTOS / next(name for name in sorted(labels) if labels[name]["variant"] == "resize_50")


def metadata(unit: str, number: int) -> dict[str, str] | None:
    """Two assets in three carry the mandatory metadata; the rest lack some."""
    if number % 3 == 2:
        return None
    facts = {"location": "Senaatintori, Helsinki", "date": f"2024-0{number % 9 + 1}-15"}
    if number % 3 == 0:
        facts["department"] = DEPARTMENTS[unit]
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=".damdup/demo", help="index and configuration")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    platforms = {unit: platform for unit, platform in HOMES.values()}
    platforms.update({unit: platform for unit, platform, _v in BORROWERS})
    if not wordpress_available():
        print("WordPress is not installed (`make servers`): its unit goes to Drupal.")
        platforms["kasvatus"] = "drupal"
    harnesses: dict[str, Harness] = {}
    units: dict[str, tuple[str, dict[str, Any]]] = {}
    try:
        for unit, files in plan().items():
            chosen = real_harness(platforms[unit])
            harness = start_harness(chosen)
            harnesses[unit] = harness
            for number, (name, path) in enumerate(files):
                harness.add(name, path.read_bytes(), metadata(unit, number))
            units[unit] = (platforms[unit], harness.settings())
            real = " (the real server, from its source)" if chosen.endswith("-real") else ""
            print(f"{unit:>15}: {platforms[unit]:<14} {len(files):>3} photos{real}")
        config = workdir / "damdup.toml"
        db = workdir / "index.sqlite"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAMDUP_")}
        env.update(write_config(config, db, units, workers=2))
        code = run(
            env,
            ["sync", "--config", str(config), "-q"],
            ["status", "--config", str(config)],
            ["clusters", "--db", str(db), "--cross-unit"],
            ["push", "--config", str(config), "--unit", "kasvatus"],
        )
        # The units' administrators have set up damdup's field, plugin or
        # columns: writes on, everywhere.
        writable = {
            name: (kind, {**given, "writes": True}) for name, (kind, given) in units.items()
        }
        env.update(write_config(config, db, writable, workers=2))
        return code or run(
            env,
            ["push", "--config", str(config)],
            ["push", "--config", str(config)],
            ["push", "--config", str(config), "--history"],
            ["migrate", "--config", str(config), "--units", "pilviarkisto,kanslia,jaettu",
             "--report", str(workdir / "migration"), "-q"],
            ["audit", "metadata", "--config", str(config), "--csv",
             str(workdir / "metadata-missing.csv")],
            ["lookup", "--config", str(config), str(lookup_photo())],
        )  # fmt: skip
    finally:
        for harness in harnesses.values():
            harness.close()


def run(env: dict[str, str], *commands: list[str]) -> int:
    """Each command as a user types it; the first real failure's status (3,
    some assets or units failed, is reported by damdup itself)."""
    code = 0
    for command in commands:
        print(f"\n$ damdup {' '.join(command)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "connector.cli", *command], env=env, cwd=ROOT)
        code = code or (done.returncode if done.returncode not in (0, 3) else 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
