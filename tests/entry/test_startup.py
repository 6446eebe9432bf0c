"""The commands that read the index start without what only fingerprinting,
matching and checks need: `damdup status` and `damdup clusters` are asked for
often, and on a 1,000,000-asset index most of their time was the imports
(numba and its LLVM, imagehash and its SciPy) of work they never do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# Modules only fingerprinting (imagehash), the search (numba) and the
# distributed engine (celery) need.
HEAVY = ("numba", "imagehash", "scipy", "celery", "connector.core.search", "connector.core.tones")

PROBE = """
import json, sys
from connector.cli import main
db = sys.argv[1]
codes = [main(["status", "--db", db]), main(["clusters", "--cross-unit", "--db", db])]
heavy = sorted(name for name in json.loads(sys.argv[-1]) if name in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def run_probe(probe: str, *args: str) -> str:
    """The last line a Python probe printed, run in a process of its own."""
    result = subprocess.run(
        [sys.executable, "-c", probe, *args, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    assert result.stdout.strip(), result.stderr
    return result.stdout


def test_reading_commands_do_not_import_the_matchers_machinery(
    scanned_fixtures: Path, tmp_path: Path
) -> None:
    db = tmp_path / "index.sqlite"
    shutil.copy(scanned_fixtures, db)
    printed = run_probe(PROBE, str(db))
    answer = json.loads(printed.strip().splitlines()[-1])
    assert answer["codes"] == [0, 0]
    assert answer["heavy"] == [], f"imported by status and clusters: {answer['heavy']}"
    assert "cluster" in printed  # the listing was printed: the commands did their work


def test_the_probe_sees_what_a_scan_imports(tmp_path: Path) -> None:
    """The check above can fail: the same probe after a scan finds the
    matcher's (the files are fingerprinted in worker processes)."""
    probe = (
        "import json, sys\n"
        "from connector.cli import main\n"
        "main(['scan', sys.argv[1], '--db', sys.argv[2], '-q'])\n"
        "print(json.dumps(sorted(n for n in json.loads(sys.argv[-1]) if n in sys.modules)))\n"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted((ROOT / "fixtures" / "photos").rglob("*.jpg"))[:2]:
        shutil.copy(photo, photos / photo.name)
    printed = run_probe(probe, str(photos), str(tmp_path / "i.sqlite"))
    heavy = json.loads(printed.strip().splitlines()[-1])
    assert {"numba", "connector.core.search"} <= set(heavy)
