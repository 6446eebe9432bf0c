"""Clusters are stars: every member matches the canonical directly.

No chaining: if A~B and B~C but A and C do not match, A and C are never put in
one cluster through B. The canonical is chosen by an explained policy.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from connector.core.columns import FingerprintColumns
from connector.core.fingerprint import FORMATS_ORIGINAL
from connector.core.index import AssetRow, DecisionRow, PairRow, ordered
from connector.core.provenance import Family
from connector.core.tiers import (
    DUPLICATE_TIERS,
    TIER_ORDER,
    Decision,
    Tier,
    apply_decision,
    mark_for,
)

MANDATORY = ("location", "date", "department")


@dataclass(frozen=True)
class Edge:
    tier: Tier
    phash_distance: int
    dhash_distance: int
    decision: str | None = None
    reasons: tuple[str, ...] = ()

    @property
    def mark(self) -> str:
        """`duplicate`, `duplicate-candidate` or `related`: the tier after the
        reviewer's word, as every command shows it and push writes it."""
        return mark_for(self.tier, self.decision)

    @property
    def confirmed(self) -> bool:
        return self.mark == "duplicate"


@dataclass(frozen=True)
class Member:
    asset: AssetRow
    edge: Edge


@dataclass(frozen=True)
class Cluster:
    id: str
    canonical: AssetRow
    reason: str
    members: list[Member]  # every asset but the canonical, each with its edge to it

    @property
    def tier(self) -> Tier:
        """The loosest tier in the cluster."""
        return max((m.edge.tier for m in self.members), key=TIER_ORDER.__getitem__)


@dataclass(frozen=True)
class Relation:
    a: AssetRow
    b: AssetRow
    edge: Edge
    cluster: Cluster | None  # when both sit in one cluster


@dataclass(frozen=True)
class Shape:
    width: int
    height: int
    format: str
    has_capture: bool = False  # camera capture facts in its EXIF
    size_bytes: int = 0


def shape_at(columns: FingerprintColumns, row: int) -> Shape:
    return Shape(
        int(columns.width[row]),
        int(columns.height[row]),
        columns.format(row),
        bool(columns.has_capture[row]),
        int(columns.size_bytes[row]),
    )


class ShapeLookup(Mapping[str, Shape]):
    """sha256 -> Shape over the index's columns, made once each as asked for
    (clustering asks for each member's shape many times: a binary search and a
    new Shape every time was a third of `status` at 1,000,000 assets): no dict
    of every fingerprint's shape, only of those asked for."""

    def __init__(self, columns: FingerprintColumns) -> None:
        self.columns = columns
        self._made: dict[str, Shape] = {}

    def __getitem__(self, sha256: str) -> Shape:
        made = self._made.get(sha256)
        if made is None:
            at = self.columns.find(sha256)
            if at is None:
                raise KeyError(sha256)
            made = self._made[sha256] = shape_at(self.columns, at)
        return made

    def __iter__(self) -> Iterator[str]:
        return (sha.decode() for sha in self.columns.sha256.tolist())

    def __len__(self) -> int:
        return len(self.columns)


# One group of copies: their content digests, and the true size of each (for
# images only a reduced rendition can be read of).
Group = tuple[list[str], dict[str, tuple[int, int]]]
# The lineage of each group, in the order given (asked for all groups at once,
# so that what it reads is read in a few statements).
Lineage = Callable[[list[Group]], list[Family]]


def cluster_id(canonical: AssetRow) -> str:
    """Short, stable while the canonical stays; letters and digits only, so it
    is a valid tag value on S3 and Azure (which reject ?&%#)."""
    digest = hashlib.sha256(f"{canonical.unit}:{canonical.asset_id}".encode()).hexdigest()
    return "dd" + digest[:10]


class Policy:
    """Canonical choice: a reviewer's choice; else the authoritative unit; else
    the original the others were made from (image phylogeny: a derivative never
    wins over it, whatever its size or metadata); among copies with the
    original's pixels, complete mandatory metadata; then largest resolution,
    original format, camera capture facts kept, earliest upload; ties by unit
    and id. Byte size is not evidence: a q95 re-save of a q75 original is larger
    and worse."""

    def __init__(
        self,
        shapes: Mapping[str, Shape],
        authoritative_units: Iterable[str],
        reviewer_choices: set[str],
        families: dict[str, Family] | None = None,
    ) -> None:
        self.shapes = shapes
        self.authoritative = set(authoritative_units)
        self.reviewer_choices = reviewer_choices
        self.families = families or {}  # sha256 -> the lineage of its group

    def _shape(self, asset: AssetRow) -> Shape:
        return self.shapes.get(asset.sha256 or "") or Shape(0, 0, "")

    def _pixels(self, asset: AssetRow) -> int:
        # The platform's own figure for the original: the fingerprint may have
        # been taken from a smaller rendition.
        if asset.width and asset.height:
            return asset.width * asset.height
        shape = self._shape(asset)
        return shape.width * shape.height

    def _original(self, asset: AssetRow) -> bool:
        return self._shape(asset).format in FORMATS_ORIGINAL

    def _complete(self, asset: AssetRow) -> bool:
        return all(asset.metadata.get(name) for name in MANDATORY)

    def _derived(self, asset: AssetRow) -> int:
        """How many copies in its group it was found made from (0: an original)."""
        sha = asset.sha256 or ""
        family = self.families.get(sha)
        return family.derived.get(sha, 0) if family is not None else 0

    def key(self, asset: AssetRow) -> tuple[Any, ...]:
        return (
            asset.sha256 not in self.reviewer_choices,
            asset.unit not in self.authoritative,
            self._derived(asset),
            not self._complete(asset),
            -self._pixels(asset),
            not self._original(asset),
            not self._shape(asset).has_capture,
            _instant(asset.modified),
            asset.unit,
            asset.asset_id,
        )

    def reason(self, canonical: AssetRow, others: list[AssetRow]) -> str:
        if not others:
            return "only member"
        runner = min(others, key=self.key)
        mine, theirs = self.key(canonical), self.key(runner)
        if mine[0] != theirs[0]:
            return "a reviewer chose it as the canonical version"
        if mine[1] != theirs[1]:
            return f"unit {canonical.unit} is configured as authoritative"
        lineage = self._lineage(canonical, others)
        if mine[2] != theirs[2]:
            return lineage
        why = self._tie_break(canonical, runner, mine, theirs)
        if lineage and mine[2] == 0 and any(self._derived(o) for o in others):
            return f"{lineage}; {why}"
        return why

    def _lineage(self, canonical: AssetRow, others: list[AssetRow]) -> str:
        family = self.families.get(canonical.sha256 or "")
        if family is None:
            return ""
        exact = sum(1 for other in others if other.sha256 == canonical.sha256)
        words = family.describe(
            canonical.sha256 or "",
            [o.sha256 or "" for o in others if o.sha256 != canonical.sha256],
        )
        if exact:
            copies = "an exact copy" if exact == 1 else f"{exact} exact copies"
            words = f"{words} and {copies}" if words else copies
        return f"the original: the others are {words}"

    def _tie_break(
        self, canonical: AssetRow, runner: AssetRow, mine: tuple[Any, ...], theirs: tuple[Any, ...]
    ) -> str:
        if mine[3] != theirs[3]:
            return "it has complete mandatory metadata (location, date, department)"
        if mine[4] != theirs[4]:
            return f"largest resolution ({self._describe(canonical)} vs {self._describe(runner)})"
        if mine[5] != theirs[5]:
            return f"original format ({self._shape(canonical).format})"
        if mine[6] != theirs[6]:
            return "it keeps the camera's capture facts (EXIF); the others lost them"
        if mine[7] != theirs[7]:
            return f"earliest upload ({canonical.modified})"
        return "all else equal: first by unit and id"

    def _describe(self, asset: AssetRow) -> str:
        if asset.width and asset.height:
            return f"{asset.width}x{asset.height}"
        shape = self._shape(asset)
        return f"{shape.width}x{shape.height}"


def _instant(stamp: str | None) -> str:
    """A modification time comparable across platforms: UTC, or last when
    unknown. Platforms print local time with an offset, or UTC with a Z."""
    if not stamp:
        return "9999"
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _strength(pair: PairRow) -> tuple[float, ...]:
    """How sure a duplicate link is: its tier, then how well the pixels agree."""
    check = pair.evidence.get("pixel_check") or {}
    correlation = check.get("correlation")
    return (
        -TIER_ORDER[Tier(pair.tier)] if pair.tier else -99.0,
        float(correlation) if isinstance(correlation, int | float) else 0.0,
        -float(pair.phash_distance + pair.dhash_distance),
    )


def resolve_conflicts(
    pairs: list[PairRow], decisions: dict[tuple[str, str], DecisionRow]
) -> list[PairRow]:
    """An image cannot be a copy of two different exposures. When X matches both
    Y and Z, but Y and Z are known to be different shots (their capture facts
    contradict, or a reviewer said so), X keeps only its closer link; the other
    becomes `similar`. This is how a copy stripped of EXIF is kept away from the
    burst frame next to its original."""

    def decided(a: str, b: str) -> str | None:
        decision = decisions.get(ordered(a, b))
        return decision.decision if decision else None

    conflicts = {
        (p.sha_a, p.sha_b)
        for p in pairs
        if p.tier == Tier.SIMILAR and p.evidence.get("contradictions")
    }
    conflicts.update(key for key, d in decisions.items() if d.decision == Decision.DIFFERENT)
    if not conflicts:
        return pairs
    by_key = {(p.sha_a, p.sha_b): p for p in pairs}
    links: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        if pair.tier in DUPLICATE_TIERS and decided(pair.sha_a, pair.sha_b) != Decision.DIFFERENT:
            links[pair.sha_a].add(pair.sha_b)
            links[pair.sha_b].add(pair.sha_a)
    demoted: dict[tuple[str, str], str] = {}
    for y, z in sorted(conflicts):
        for x in sorted(links[y] & links[z]):
            to_y, to_z = by_key[ordered(x, y)], by_key[ordered(x, z)]
            candidates = [p for p in (to_y, to_z) if decided(p.sha_a, p.sha_b) is None]
            if not candidates:
                continue
            weaker = min(candidates, key=_strength)
            other = to_z if weaker is to_y else to_y
            kept = other.sha_b if other.sha_a == x else other.sha_a
            demoted[(weaker.sha_a, weaker.sha_b)] = (
                f"closer to {kept[:12]}, a different exposure of the same scene"
            )
            lost = weaker.sha_b if weaker.sha_a == x else weaker.sha_a
            links[x].discard(lost)
            links[lost].discard(x)
    out = []
    for pair in pairs:
        reason = demoted.get((pair.sha_a, pair.sha_b))
        if reason is None:
            out.append(pair)
            continue
        evidence = dict(pair.evidence)
        evidence["reasons"] = [*evidence.get("reasons", []), f"demoted: {reason}"]
        out.append(replace(pair, tier=Tier.SIMILAR.value, evidence=evidence))
    return out


def _edges(
    assets: list[AssetRow],
    pairs: list[PairRow],
    decisions: dict[tuple[str, str], DecisionRow],
) -> dict[str, dict[str, Edge]]:
    """Asset key -> neighbour key -> edge, for every related pair of live assets."""
    by_sha: dict[str, list[AssetRow]] = defaultdict(list)
    for asset in assets:
        if asset.sha256 is not None:
            by_sha[asset.sha256].append(asset)
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)

    def link(left: list[AssetRow], right: list[AssetRow], edge: Edge) -> None:
        for x in left:
            for y in right:
                if x.key != y.key:
                    graph[x.key][y.key] = edge
                    graph[y.key][x.key] = edge

    for group in by_sha.values():
        link(group, group, Edge(Tier.EXACT, 0, 0))
    for pair in pairs:
        decision = decisions.get((pair.sha_a, pair.sha_b))
        tier = apply_decision(
            Tier(pair.tier) if pair.tier else None,
            Decision(decision.decision) if decision else None,
        )
        if tier is not None:
            edge = Edge(
                tier,
                pair.phash_distance,
                pair.dhash_distance,
                decision.decision if decision else None,
                tuple(pair.evidence.get("reasons", ())),
            )
            link(by_sha.get(pair.sha_a, []), by_sha.get(pair.sha_b, []), edge)
    proposed = {(pair.sha_a, pair.sha_b) for pair in pairs}
    for (sha_a, sha_b), decision in decisions.items():
        # A reviewer may join two images that automation never proposed.
        if (sha_a, sha_b) in proposed:
            continue
        tier = apply_decision(None, Decision(decision.decision))
        if tier is not None:
            edge = Edge(tier, -1, -1, decision.decision)
            link(by_sha.get(sha_a, []), by_sha.get(sha_b, []), edge)
    return graph


def _groups(
    graph: dict[str, dict[str, Edge]], duplicates_of: Callable[[str], list[str]]
) -> list[list[str]]:
    """Connected groups of duplicates (before they are cut into stars)."""
    seen: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in seen or not duplicates_of(start):
            continue
        group, todo = [], [start]
        seen.add(start)
        while todo:
            key = todo.pop()
            group.append(key)
            for neighbour in duplicates_of(key):
                if neighbour not in seen:
                    seen.add(neighbour)
                    todo.append(neighbour)
        groups.append(sorted(group))
    return groups


def _size(
    sha: str, group: list[str], by_key: dict[str, AssetRow], shapes: Mapping[str, Shape]
) -> tuple[int, int]:
    for key in group:
        asset = by_key[key]
        if asset.sha256 == sha and asset.width and asset.height:
            return asset.width, asset.height
    shape = shapes.get(sha) or Shape(0, 0, "")
    return shape.width, shape.height


def build_clusters(
    assets: list[AssetRow],
    shapes: Mapping[str, Shape],
    pairs: list[PairRow],
    decisions: dict[tuple[str, str], DecisionRow],
    authoritative_units: Iterable[str] = (),
    lineage: Lineage | None = None,
) -> tuple[list[Cluster], list[Relation]]:
    """Stars around canonicals, and every related pair (similar ones included).
    `lineage`: tells which copy of a group is the original; without it every
    copy counts as a possible original."""
    live = [asset for asset in assets if asset.sha256 is not None and asset.live]
    by_key = {asset.key: asset for asset in live}
    graph = _edges(live, resolve_conflicts(pairs, decisions), decisions)
    choices = {d.canonical_sha for d in decisions.values() if d.canonical_sha}

    def duplicates_of(key: str) -> list[str]:
        return [k for k, e in graph.get(key, {}).items() if e.tier in DUPLICATE_TIERS]

    families: dict[str, Family] = {}
    if lineage is not None:
        groups: list[Group] = []
        for group in _groups(graph, duplicates_of):
            shas = sorted({by_key[k].sha256 or "" for k in group})
            if len(shas) >= 2:
                groups.append((shas, {sha: _size(sha, group, by_key, shapes) for sha in shas}))
        for (shas, _sizes), family in zip(groups, lineage(groups), strict=True):
            families.update(dict.fromkeys(shas, family))
    policy = Policy(shapes, authoritative_units, choices, families)

    # The best-ranked asset with any duplicate becomes a canonical and takes its
    # direct matches; what is left forms further stars the same way.
    assigned: set[str] = set()
    clusters: list[Cluster] = []
    for asset in sorted((by_key[k] for k in graph if duplicates_of(k)), key=policy.key):
        if asset.key in assigned:
            continue
        members = [by_key[k] for k in duplicates_of(asset.key) if k not in assigned]
        if not members:
            continue
        assigned.add(asset.key)
        assigned.update(member.key for member in members)
        members.sort(key=lambda m: (TIER_ORDER[graph[asset.key][m.key].tier], m.key))
        clusters.append(
            Cluster(
                id=cluster_id(asset),
                canonical=asset,
                reason=policy.reason(asset, members),
                members=[Member(m, graph[asset.key][m.key]) for m in members],
            )
        )
    home: dict[str, Cluster] = {}
    for cluster in clusters:
        home[cluster.canonical.key] = cluster
        for member in cluster.members:
            home[member.asset.key] = cluster
    relations: list[Relation] = []
    for key_a in sorted(graph):
        for key_b in sorted(graph[key_a]):
            if key_a < key_b:
                cluster_a, cluster_b = home.get(key_a), home.get(key_b)
                shared = cluster_a if cluster_a is not None and cluster_a is cluster_b else None
                relations.append(
                    Relation(by_key[key_a], by_key[key_b], graph[key_a][key_b], shared)
                )
    clusters.sort(key=lambda c: (TIER_ORDER[c.tier], c.canonical.key))
    return clusters, relations
