"""The clusters as `damdup clusters` and `damdup status` read them, kept
current a component at a time.

Every clustering of the whole index saves its listing, an entry per cluster
and per pair of other shots of a scene. The index's triggers then queue
every content whose clusters a change may move (an asset new, changed or
retired; a pair settled; a reviewer's decision; a fingerprint). Reading the
listing clusters again only the components those contents reach, exactly
as the whole index would cluster them there (`linked`: closed under every
link, so a component is taken whole), replaces the entries that hold any
of their assets, and clears the queue rows it read, in one transaction:
the saved listing together with the rows still queued always tells the
index as it is. A change no clustering has seen costs its components, not
the whole index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from connector.core.fingerprint import RECIPE
from connector.core.index import ClusterQueue, IndexStore, ListedFigures, ListedItem
from connector.core.provenance import LINEAGE_VERSION
from connector.core.settings import Settings
from connector.core.tiers import TIER_ORDER, Tier
from connector.engine.clusters import Cluster, Lineage, Relation, ShapeLookup, build_clusters
from connector.engine.component import linked

__all__ = [
    "PATCH_MOST",
    "cluster_record",
    "fresh",
    "listed_items",
    "listing_of",
    "new_stamp",
    "ordered_listing",
    "patch",
    "spans_units",
]

# What the saved listing is made by: a rule that changes it changes this.
FIGURES_VERSION = 2

# Queue rows past which the whole index is clustered again rather than the
# components they reach (a full match, a first sync of a large unit).
PATCH_MOST = 50_000


def _rules(settings: Settings) -> str:
    """What else the clusters depend on: the authoritative units, and the
    rules of this damdup."""
    units = ",".join(sorted(settings.authoritative_units))
    return f"{units}|{LINEAGE_VERSION}.{FIGURES_VERSION}"


def new_stamp(settings: Settings) -> str:
    """A stamp for a listing about to be saved: its rules, and a mark of its
    own (two clusterings at once: only the one that read the listing as it
    still is saves)."""
    return f"{_rules(settings)}#{uuid4().hex}"


def fresh(stamp: str, settings: Settings) -> bool:
    """Whether a listing saved with `stamp` was made by these rules."""
    return stamp.rpartition("#")[0] == _rules(settings)


def cluster_record(cluster: Cluster) -> dict[str, Any]:
    """One cluster as `damdup clusters --format json` gives it."""
    return {
        "cluster": cluster.id,
        "tier": cluster.tier.value,
        "canonical": {"unit": cluster.canonical.unit, "id": cluster.canonical.asset_id},
        "reason": cluster.reason,
        "members": [
            {
                "unit": member.asset.unit,
                "id": member.asset.asset_id,
                "tier": member.edge.tier.value,
                "mark": member.edge.mark,
                "phash_distance": member.edge.phash_distance,
                "dhash_distance": member.edge.dhash_distance,
                "decision": member.edge.decision,
            }
            for member in cluster.members
        ],
    }


def _similar_record(relation: Relation) -> dict[str, Any]:
    return {
        "a": {"unit": relation.a.unit, "id": relation.a.asset_id},
        "b": {"unit": relation.b.unit, "id": relation.b.asset_id},
        "phash_distance": relation.edge.phash_distance,
        "dhash_distance": relation.edge.dhash_distance,
    }


def listing_of(clusters: Iterable[Cluster], relations: Iterable[Relation]) -> dict[str, Any]:
    """The clusters, and the other shots of a scene (related, never merged)."""
    return {
        "clusters": [cluster_record(cluster) for cluster in clusters],
        "similar": [_similar_record(r) for r in relations if r.edge.tier == Tier.SIMILAR],
    }


def listed_items(clusters: Iterable[Cluster], relations: Iterable[Relation]) -> list[ListedItem]:
    """The listing's entries, each with the assets it holds."""
    items = [
        ListedItem(
            json.dumps(["cluster", cluster.canonical.unit, cluster.canonical.asset_id]),
            False,
            json.dumps(cluster_record(cluster)),
            (
                (cluster.canonical.unit, cluster.canonical.asset_id, None),
                *(
                    (member.asset.unit, member.asset.asset_id, int(member.edge.confirmed))
                    for member in cluster.members
                ),
            ),
        )
        for cluster in clusters
    ]
    items.extend(
        ListedItem(
            json.dumps(["similar", r.a.unit, r.a.asset_id, r.b.unit, r.b.asset_id]),
            True,
            json.dumps(_similar_record(r)),
            ((r.a.unit, r.a.asset_id, None), (r.b.unit, r.b.asset_id, None)),
        )
        for r in relations
        if r.edge.tier == Tier.SIMILAR
    )
    return items


def _key(asset: dict[str, str]) -> str:
    return f"{asset['unit']}:{asset['id']}"  # AssetRow.key


def spans_units(record: dict[str, Any]) -> bool:
    """Whether a listed cluster holds copies in more than one unit."""
    return len({record["canonical"]["unit"], *(m["unit"] for m in record["members"])}) > 1


def ordered_listing(entries: Iterable[tuple[bool, str]]) -> dict[str, Any]:
    """The saved entries as `listing_of` orders them: clusters by their
    loosest tier, then canonical; other shots by their two assets."""
    clusters: list[dict[str, Any]] = []
    similar: list[dict[str, Any]] = []
    for is_similar, record in entries:
        (similar if is_similar else clusters).append(json.loads(record))
    clusters.sort(key=lambda c: (TIER_ORDER[Tier(c["tier"])], _key(c["canonical"])))
    similar.sort(key=lambda s: (_key(s["a"]), _key(s["b"])))
    return {"clusters": clusters, "similar": similar}


def patch(
    store: IndexStore,
    settings: Settings,
    expected: str,
    queue: ClusterQueue,
    lineage: Lineage | None,
) -> ListedFigures | None:
    """The saved listing (stamp `expected`) made current for what `queue`
    holds: the components its contents reach clustered again and their
    entries replaced. The figures then listed; None when another
    clustering saved meanwhile (nothing saved)."""
    component = linked(store, queue.contents, store.decisions(), from_retired=True)
    clusters, relations = build_clusters(
        component.assets,
        ShapeLookup(store.fingerprint_columns_of(RECIPE, component.contents)),
        component.pairs,
        component.decisions,
        settings.authoritative_units,
        lineage,
    )
    # Every entry that held one of these assets: those of the components
    # reached, and those of assets changed (retired, or moved to another
    # content) that no longer belong there.
    replacing = {(asset.unit, asset.asset_id) for asset in component.assets} | queue.assets
    return store.save_listing(
        expected, new_stamp(settings), listed_items(clusters, relations), replacing, queue.seqs
    )
