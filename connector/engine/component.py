"""The part of the index one image belongs to, and how answers show assets.

A single-asset check and a lookup answer with the clusters of the image's
connected component: every content linked to it by a related pair or a
reviewer's decision, clustered exactly as `damdup clusters` clusters the
whole index. The entries here are what both answers (and their JSON) hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import structlog

from connector.core.index import AssetRow, DecisionRow, IndexStore, PairRow
from connector.core.settings import Settings
from connector.core.tiers import Tier
from connector.engine.clusters import Cluster, Lineage, Relation, Shape, build_clusters
from connector.engine.links import default_link

__all__ = [
    "AssetEntry",
    "ClusterEntry",
    "Component",
    "asset_entry",
    "cluster_entry",
    "component_of",
    "linked",
]

log = structlog.get_logger(__name__)

# A component larger than this is still answered, but logged: a chain of
# similar shots that long is worth a look.
LARGE_COMPONENT = 500


class AssetEntry(TypedDict):
    """One asset in an answer. `url` is where damdup reads it; `link` where a
    person opens it."""

    unit: str
    asset_id: str
    url: str
    link: str
    original_url: str | None
    metadata: dict[str, str | None]
    reason: NotRequired[str]
    tier: NotRequired[str | None]
    role: NotRequired[str]
    match: NotRequired[str | None]
    sha256: NotRequired[str | None]


class ClusterEntry(TypedDict):
    id: str | None
    tier: str | None
    canonical: AssetEntry
    copies: list[AssetEntry]


def asset_entry(asset: AssetRow, link: Callable[[AssetRow], str] = default_link) -> AssetEntry:
    return {
        "unit": asset.unit,
        "asset_id": asset.asset_id,
        "url": asset.url,
        "link": link(asset),
        "original_url": asset.original_url,
        "metadata": dict(asset.metadata),
    }


def cluster_entry(
    cluster: Cluster, exclude: str | None = None, link: Callable[[AssetRow], str] = default_link
) -> ClusterEntry:
    canonical = asset_entry(cluster.canonical, link)
    canonical["reason"] = cluster.reason
    copies = []
    for member in cluster.members:
        if member.asset.key == exclude:
            continue
        copy = asset_entry(member.asset, link)
        copy["tier"] = member.edge.tier.value
        copy["role"] = member.edge.mark
        copies.append(copy)
    return {"id": cluster.id, "tier": cluster.tier.value, "canonical": canonical, "copies": copies}


@dataclass
class Component:
    """The assets linked to some contents by pairs or decisions, and their
    clusters as `damdup clusters` builds them."""

    assets: list[AssetRow]
    clusters: list[Cluster]
    relations: list[Relation]

    def cluster_of(self, key: str) -> Cluster | None:
        for cluster in self.clusters:
            if cluster.canonical.key == key or any(m.asset.key == key for m in cluster.members):
                return cluster
        return None

    def similar_to(self, keys: set[str]) -> list[AssetRow]:
        """Assets related to any of `keys` as another shot (`similar`), not in keys."""
        found: dict[str, AssetRow] = {}
        for relation in self.relations:
            if relation.edge.tier != Tier.SIMILAR:
                continue
            for mine, other in ((relation.a, relation.b), (relation.b, relation.a)):
                if mine.key in keys and other.key not in keys:
                    found[other.key] = other
        return [found[key] for key in sorted(found)]


@dataclass
class Linked:
    """The live assets linked to some contents, and what links them: the
    related pairs between their contents and the decisions touching them."""

    assets: list[AssetRow]
    pairs: list[PairRow]
    decisions: dict[tuple[str, str], DecisionRow]
    contents: set[str]  # the live contents among them


def linked(
    store: IndexStore,
    start: Iterable[str],
    decisions: dict[tuple[str, str], DecisionRow],
    from_retired: bool = False,
) -> Linked:
    """Every live content linked to `start` by a related pair or a decision
    between live contents, as the clusters of the whole index link them
    (they hold live assets only: a content no asset holds any more links
    nothing, however many pairs it was settled in). `from_retired`: `start`
    links through its pairs and decisions even where no asset holds it now,
    so that the other side of a link a change took away is reached too."""
    decided: dict[str, set[str]] = {}
    for sha_a, sha_b in decisions:
        decided.setdefault(sha_a, set()).add(sha_b)
        decided.setdefault(sha_b, set()).add(sha_a)
    seen = set(start)
    assets = store.live_assets_with(seen)
    live = {asset.sha256 for asset in assets if asset.sha256 is not None}
    frontier = set(seen) if from_retired else set(live)
    pairs: dict[tuple[str, str], PairRow] = {}
    while frontier:
        found: set[str] = set()
        for pair in store.pairs_touching(frontier):
            if pair.tier is None:
                continue
            pairs[(pair.sha_a, pair.sha_b)] = pair
            found.update((pair.sha_a, pair.sha_b))
        for sha in frontier:
            found.update(decided.get(sha, ()))
        new = found - seen
        seen |= new
        held = store.live_assets_with(new) if new else []
        assets += held
        frontier = {asset.sha256 for asset in held if asset.sha256 is not None} - live
        live |= frontier
    assets.sort(key=lambda asset: (asset.unit, asset.asset_id))
    return Linked(
        assets,
        [pair for pair in pairs.values() if pair.sha_a in live and pair.sha_b in live],
        {key: row for key, row in decisions.items() if key[0] in live or key[1] in live},
        live,
    )


def component_of(
    store: IndexStore,
    start: Iterable[str],
    shape: Callable[[str], Shape | None],
    settings: Settings,
    lineage: Lineage | None,
) -> Component:
    """The live contents linked to `start` (`linked`), and the clusters of
    their assets, built as for the whole index."""
    found = linked(store, start, store.decisions())
    if len(found.contents) > LARGE_COMPONENT:
        log.warning("check.large_component", contents=len(found.contents))
    shapes = {content: known for content in found.contents if (known := shape(content)) is not None}
    clusters, relations = build_clusters(
        found.assets, shapes, found.pairs, found.decisions, settings.authoritative_units, lineage
    )
    return Component(found.assets, clusters, relations)
