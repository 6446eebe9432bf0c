"""Accuracy against labelled photos: recall per kind of copy, precision over the
pairs damdup calls duplicates, and every different shot it wrongly merged.

Labels (fixtures/labels.json): two files are duplicates iff they show the same
`photo`; the same `scene` with another `photo` is a different shot.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.core.tiers import DUPLICATE_TIERS, Tier

# Copies that must be found (issue targets): recall >= 0.99 on the first group,
# >= 0.9 on the light edits.
EXACT_KINDS = (
    "byte_copy", "reencode_q60", "reencode_q85", "resize_50", "resize_25", "png", "webp",
    "exif_rotated", "metadata_only",
)  # fmt: skip
EDIT_KINDS = ("crop_5", "watermark", "brighter_15", "darker_15")


@dataclass
class AccuracyReport:
    recall: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (found, total)
    true_positives: int = 0
    false_positives: list[tuple[str, str]] = field(default_factory=list)
    merged_different_shots: list[tuple[str, str]] = field(default_factory=list)
    similar_different_shots: int = 0
    different_shot_pairs: int = 0

    @property
    def precision(self) -> float:
        called = self.true_positives + len(self.false_positives)
        return self.true_positives / called if called else 1.0

    def recall_of(self, kinds: Iterable[str]) -> float:
        found = sum(self.recall.get(kind, (0, 0))[0] for kind in kinds)
        total = sum(self.recall.get(kind, (0, 0))[1] for kind in kinds)
        return found / total if total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "recall": {k: {"found": f, "total": t} for k, (f, t) in sorted(self.recall.items())},
            "recall_copies": self.recall_of(EXACT_KINDS),
            "recall_edits": self.recall_of(EDIT_KINDS),
            "precision": self.precision,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "merged_different_shots": self.merged_different_shots,
            "different_shot_pairs": self.different_shot_pairs,
            "different_shots_marked_similar": self.similar_different_shots,
        }


def load_labels(path: Path) -> dict[str, dict[str, str]]:
    files: dict[str, dict[str, str]] = json.loads(path.read_text())["files"]
    return files


def score(
    labels: dict[str, dict[str, str]], related: Iterable[tuple[str, str, Tier]]
) -> AccuracyReport:
    """`related`: (file, file, tier) for every pair damdup relates, files named
    as in the labels."""
    tiers: dict[frozenset[str], Tier] = {}
    for a, b, tier in related:
        tiers[frozenset((a, b))] = tier
    report = AccuracyReport()
    for pair, tier in tiers.items():
        if tier not in DUPLICATE_TIERS:
            continue
        a, b = sorted(pair)
        if a not in labels or b not in labels:
            continue
        if labels[a]["photo"] == labels[b]["photo"]:
            report.true_positives += 1
        else:
            report.false_positives.append((a, b))
            if labels[a]["scene"] == labels[b]["scene"]:
                report.merged_different_shots.append((a, b))
    originals = {
        info["photo"]: name for name, info in labels.items() if info["variant"] == "original"
    }
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, info in labels.items():
        variant = info["variant"]
        if variant in ("original", "different_shot"):
            continue
        original = originals.get(info["photo"])
        if original is None:
            continue
        counts[variant][1] += 1
        if tiers.get(frozenset((name, original))) in DUPLICATE_TIERS:
            counts[variant][0] += 1
    report.recall = {kind: (found, total) for kind, (found, total) in counts.items()}
    names = sorted(labels)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if (
                labels[a]["scene"] == labels[b]["scene"]
                and labels[a]["photo"] != labels[b]["photo"]
            ):
                report.different_shot_pairs += 1
                if tiers.get(frozenset((a, b))) is Tier.SIMILAR:
                    report.similar_different_shots += 1
    return report
