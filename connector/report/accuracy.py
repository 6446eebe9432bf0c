"""Accuracy against labelled photos: recall per kind of copy, precision over the
pairs damdup calls duplicates, and every different shot it wrongly merged.

And which copy each cluster names canonical: the original of its photo, or a
derivative.

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

from connector.core.fingerprint import FORMATS_ORIGINAL, RECIPE
from connector.core.index import AssetRow, IndexStore
from connector.core.settings import Settings
from connector.core.tiers import DUPLICATE_TIERS, Tier
from connector.engine.clusters import MANDATORY, Cluster, Policy, Shape, ShapeLookup
from connector.engine.scan import current_clusters

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
    missed: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, copy, original)

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
            "missed": self.missed,
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
        else:
            report.missed.append((variant, name, original))
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


# Copies with the original's pixels: naming one of them canonical is naming the
# original (`exif_rotated` shows the same pixels once turned upright).
SAME_PIXEL_KINDS = ("original", "byte_copy", "metadata_only", "png", "exif_rotated")


@dataclass
class CanonicalReport:
    groups: int = 0  # clusters holding the original of their photo
    original: int = 0  # ... whose canonical is it (or a copy with its pixels)
    legacy_original: int = 0  # ... whose canonical by the old rule would have been
    wrong: list[tuple[str, str]] = field(default_factory=list)  # (canonical, its variant)
    without_original: int = 0  # clusters whose photo's original sits elsewhere

    @property
    def share(self) -> float:
        return self.original / self.groups if self.groups else 1.0

    @property
    def legacy_share(self) -> float:
        return self.legacy_original / self.groups if self.groups else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "canonical_is_original": self.original,
            "share": self.share,
            "legacy_share": self.legacy_share,
            "wrong": self.wrong,
            "clusters_without_their_original": self.without_original,
        }


def canonical_score(
    labels: dict[str, dict[str, str]], clusters: Iterable[Cluster], policy: Policy | None = None
) -> CanonicalReport:
    """How often each cluster's canonical is the original of its photo (or a
    copy with the same pixels), over clusters that hold that original; beside
    it, what the rule before image phylogeny (largest, then original format,
    capture facts, then least compressed) would have named in the same clusters.
    `policy`: gives the shapes the old rule ranks on."""
    report = CanonicalReport()
    for cluster in clusters:
        members = [cluster.canonical, *(m.asset for m in cluster.members)]
        known = [a for a in members if a.asset_id in labels]
        if not known:
            continue
        photos = [labels[a.asset_id]["photo"] for a in known]
        photo = max(sorted(set(photos)), key=photos.count)
        if not any(
            labels[a.asset_id]["photo"] == photo and labels[a.asset_id]["variant"] == "original"
            for a in known
        ):
            report.without_original += 1
            continue
        report.groups += 1

        def is_original(asset: AssetRow, photo: str = photo) -> bool:
            label = labels.get(asset.asset_id)
            return (
                label is not None
                and label["photo"] == photo
                and label["variant"] in SAME_PIXEL_KINDS
            )

        if is_original(cluster.canonical):
            report.original += 1
        else:
            variant = labels.get(cluster.canonical.asset_id, {}).get("variant", "?")
            report.wrong.append((cluster.canonical.asset_id, variant))
        if policy is not None and is_original(min(members, key=lambda a: legacy_key(policy, a))):
            report.legacy_original += 1
    return report


def legacy_key(policy: Policy, asset: AssetRow) -> tuple[Any, ...]:
    """The canonical rule before image phylogeny, kept to measure against:
    complete metadata, largest resolution, original format, capture facts,
    then the most bytes ("least compressed")."""
    shape = policy.shapes.get(asset.sha256 or "") or Shape(0, 0, "")
    pixels = (asset.width or 0) * (asset.height or 0) or shape.width * shape.height
    return (
        asset.sha256 not in policy.reviewer_choices,
        asset.unit not in policy.authoritative,
        not all(asset.metadata.get(name) for name in MANDATORY),
        -pixels,
        shape.format not in FORMATS_ORIGINAL,
        not shape.has_capture,
        -(asset.size_bytes or shape.size_bytes),
        asset.modified or "9999",
        asset.unit,
        asset.asset_id,
    )


def canonical_report(store: IndexStore, labels: dict[str, dict[str, str]]) -> CanonicalReport:
    """Canonical shares of an index of labelled files (asset ids = label paths)."""
    clusters, _relations = current_clusters(store, Settings(db=Path(":memory:")))
    shapes = ShapeLookup(store.fingerprint_columns(RECIPE))
    return canonical_score(labels, clusters, Policy(shapes, (), set()))
