"""Accuracy on the labelled real photos in fixtures/, damdup beside its peers.

    .venv/bin/python bench/accuracy.py [--photos fixtures/photos] [--labels fixtures/labels.json]
                                       [--set large] [--out accuracy.json]

Prints, in one run: damdup's recall per kind of copy, precision over the pairs it
puts in the three duplicate tiers, and different shots merged; the same for
imagededup's PHash at its default threshold and for plain pHash thresholds; and
the calibration sweep behind damdup's candidate radius (how many true copies
each radius proposes, and how many different shots a hash-only rule would merge
at that radius); and how often a cluster's canonical is the original of its photo,
beside the share the old rule (least compressed) reached in the same clusters.
Point --photos/--labels at any labelled folder of real photos
to judge it beyond the fixtures. Results also go to bench/results/accuracy.json.

--set large also scores the large set (photos of 2 MP and more that bench/largeset.py
builds into bench/results/large/) in the same run, with the same output for it, and ends
with damdup's figures on both sets side by side (its results: accuracy_large.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from connector.core.fingerprint import RECIPE, codes_of  # noqa: E402
from connector.core.index import SQLiteStore  # noqa: E402
from connector.core.tiers import CANDIDATE_RADIUS, Tier  # noqa: E402
from connector.engine.matcher import distance  # noqa: E402
from connector.report.accuracy import (  # noqa: E402
    EDIT_KINDS,
    EXACT_KINDS,
    AccuracyReport,
    canonical_report,
    load_labels,
    score,
)


def damdup_relations(photos: Path, db: Path) -> list[tuple[str, str, Tier]]:
    subprocess.run(
        [sys.executable, "-m", "connector.cli", "scan", str(photos), "--db", str(db), "-q"],
        check=False,
        cwd=ROOT,
    )
    out = subprocess.run(
        [sys.executable, "-m", "connector.cli", "export", "relations", "--format", "jsonl",
         "--db", str(db)],
        check=True, cwd=ROOT, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    return [(r["id_a"], r["id_b"], Tier(r["tier"])) for r in rows]


def distances(db: Path) -> dict[frozenset[str], tuple[int, int]]:
    """pHash and dHash distance (over all code variants) of every pair of files."""
    store = SQLiteStore(db)
    try:
        rows = {row["sha256"]: row for row in store.fingerprint_rows(RECIPE)}
        assets = [a for a in store.live_assets() if a.sha256 in rows]
    finally:
        store.close()
    out: dict[frozenset[str], tuple[int, int]] = {}
    for i, a in enumerate(assets):
        for b in assets[i + 1 :]:
            ra, rb = rows[a.sha256 or ""], rows[b.sha256 or ""]
            if ra["flat"] or rb["flat"]:
                continue
            out[frozenset((a.asset_id, b.asset_id))] = (
                distance(codes_of(ra, "phash"), codes_of(rb, "phash")),
                distance(codes_of(ra, "dhash"), codes_of(rb, "dhash")),
            )
    return out


def as_duplicates(pairs: Iterable[frozenset[str]]) -> list[tuple[str, str, Tier]]:
    return [(*sorted(pair), Tier.NEAR_IDENTICAL) for pair in pairs]  # type: ignore[misc]


def row(name: str, report: AccuracyReport, seconds: float | None = None) -> dict[str, object]:
    return {
        "method": name,
        "recall_copies": round(report.recall_of(EXACT_KINDS), 4),
        "recall_edits": round(report.recall_of(EDIT_KINDS), 4),
        "precision": round(report.precision, 4),
        "false_positives": len(report.false_positives),
        "different_shots_merged": len(report.merged_different_shots),
        "seconds": None if seconds is None else round(seconds, 1),
    }


LARGE = ROOT / "bench" / "results" / "large"


def merged_by_kind(labels: dict[str, dict[str, str]], report: AccuracyReport) -> dict[str, int]:
    """Different shots merged, by the kind of their scene (the large set's `scene_kind`)."""
    merged: dict[str, int] = {}
    for a, _ in report.merged_different_shots:
        kind = labels[a].get("scene_kind", "unlabelled")
        merged[kind] = merged.get(kind, 0) + 1
    return merged


def run_large() -> dict[str, Any]:
    """This script on the large set, in a child process; its results."""
    if not (LARGE / "labels.json").is_file():
        sys.exit("no large set: run bench/largeset.py first")
    subprocess.run(
        [sys.executable, __file__, "--photos", str(LARGE / "photos"),
         "--labels", str(LARGE / "labels.json"), "--out", "accuracy_large.json"],
        check=True, cwd=ROOT,
    )  # fmt: skip
    large: dict[str, Any] = json.loads((ROOT / "bench/results/accuracy_large.json").read_text())
    return large


def side_by_side(sets: dict[str, dict[str, Any]]) -> None:
    """damdup's recall per kind, precision and different shots merged, one column a set."""
    ours = [result["damdup"] for result in sets.values()]
    rows = [("files", [str(result["files"]) for result in sets.values()])]
    for kind in sorted({kind for r in ours for kind in r["recall"]}):
        hits = [r["recall"].get(kind) for r in ours]
        rows.append((f"recall {kind}", [f"{h['found']}/{h['total']}" if h else "-" for h in hits]))
    for key in ("recall_copies", "recall_edits", "precision"):
        rows.append((key, [f"{r[key]:.3f}" for r in ours]))
    rows.append(("false positives", [str(len(r["false_positives"])) for r in ours]))
    rows.append(("different-shot pairs", [str(r["different_shot_pairs"]) for r in ours]))
    rows.append(("different shots merged", [str(len(r["merged_different_shots"])) for r in ours]))
    for kind in sorted({kind for r in ours for kind in r.get("merged_by_kind", {})}):
        rows.append((f"  of them {kind}", [str(r["merged_by_kind"].get(kind, 0)) for r in ours]))
    rows.append(("marked similar", [str(r["different_shots_marked_similar"]) for r in ours]))
    width = max(len(label) for label, _ in rows)
    print("\ndamdup on both sets (tiers exact+same_pixels+near_identical)\n")
    print(f"{'':<{width}} | " + " | ".join(f"{name:>12}" for name in sets))
    for label, cells in rows:
        print(f"{label:<{width}} | " + " | ".join(f"{cell:>12}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT / "fixtures" / "photos")
    parser.add_argument("--labels", type=Path, default=ROOT / "fixtures" / "labels.json")
    parser.add_argument(
        "--set",
        choices=("fixtures", "large"),
        default="fixtures",
        help="large: also the large set (bench/largeset.py), side by side",
    )
    parser.add_argument("--out", default="accuracy.json", help="file name in bench/results/")
    args = parser.parse_args()
    labels = load_labels(args.labels)
    results: dict[str, object] = {"photos": str(args.photos), "files": len(labels)}
    table: list[dict[str, object]] = []

    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "accuracy.sqlite"
        started = time.perf_counter()
        ours = score(labels, damdup_relations(args.photos, db))
        table.append(row("damdup (tiers exact+same_pixels+near_identical)", ours,
                         time.perf_counter() - started))  # fmt: skip
        results["damdup"] = {**ours.as_dict(), "merged_by_kind": merged_by_kind(labels, ours)}
        pair_distances = distances(db)
        store = SQLiteStore(db)
        try:
            canon = canonical_report(store, labels)
        finally:
            store.close()
        results["canonical"] = canon.as_dict()

    try:
        from peers import imagededup_available, imagededup_phash_duplicates

        missing = imagededup_available()
    except ImportError as exc:
        missing = str(exc)
    if missing is None:
        started = time.perf_counter()
        theirs = score(labels, as_duplicates(imagededup_phash_duplicates(args.photos)))
        table.append(row("imagededup PHash (default threshold 10)", theirs,
                         time.perf_counter() - started))  # fmt: skip
        results["imagededup_phash"] = theirs.as_dict()
    else:
        print(f"imagededup row skipped: {missing}")

    sweep = []
    for radius in range(0, 19, 2):
        proposed = [pair for pair, (p, d) in pair_distances.items() if min(p, d) <= radius]
        report = score(labels, as_duplicates(proposed))
        sweep.append({"radius": radius, "candidates": len(proposed), **row("", report)})
        if radius in (8, 10, 12):
            table.append(row(f"hash only: pHash or dHash <= {radius}", report))
    results["sweep"] = sweep
    results["table"] = table

    print(f"\nAccuracy on {len(labels)} labelled files in {args.photos}\n")
    header = ["method", "recall_copies", "recall_edits", "precision", "false_positives",
              "different_shots_merged", "seconds"]  # fmt: skip
    print(" | ".join(header))
    for entry in table:
        print(" | ".join(str(entry[key]) for key in header))
    print("\nRecall per kind of copy (damdup):")
    for kind, (found, total) in sorted(ours.recall.items()):
        print(f"  {kind:<14} {found}/{total}")
    for kind, name, original in sorted(ours.missed):
        print(f"  missed, {kind}: {name} (original {original})")
    for kind, count in sorted(merged_by_kind(labels, ours).items()):
        print(f"  different shots merged, {kind}: {count}")
    print(
        f"\nCalibration of the candidate radius (damdup uses {CANDIDATE_RADIUS}): a radius "
        "only PROPOSES pairs; the pixel check and capture facts decide.\n"
        "radius | candidates | copies proposed | edits proposed | hash-only precision | "
        "hash-only different shots merged"
    )
    for entry in sweep:
        print(
            f"{entry['radius']:>6} | {entry['candidates']:>10} | {entry['recall_copies']:>15} | "
            f"{entry['recall_edits']:>14} | {entry['precision']:>19} | "
            f"{entry['different_shots_merged']:>6}"
        )
    print(
        f"\nCanonical is the original (or a copy with its pixels) in {canon.original} of "
        f"{canon.groups} clusters holding their original: {canon.share:.1%} "
        f"(the old rule, least compressed: {canon.legacy_share:.1%})"
    )
    for name, variant in canon.wrong:
        print(f"  canonical is a derivative: {name} ({variant})")
    target = ROOT / "bench" / "results"
    target.mkdir(parents=True, exist_ok=True)
    (target / args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {target / args.out}")
    if args.set == "large":
        side_by_side({args.photos.parent.name: results, "large": run_large()})


if __name__ == "__main__":
    main()
