from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core.index import AssetRow, DecisionRow, PairRow, ordered
from connector.core.settings import Settings
from connector.core.tiers import DUPLICATE_TIERS, Tier
from connector.engine.clusters import Cluster, Shape, build_clusters
from connector.engine.component import component_of

TIERS = [t.value for t in Tier]


def asset(index: int, sha: str, unit: str = "u", **metadata: str) -> AssetRow:
    return AssetRow(
        unit=unit, asset_id=f"a{index}", version="1", url="", size_bytes=None, modified=None,
        sha256=sha, error=None, metadata=dict(metadata), live=True,
    )  # fmt: skip


def shapes(count: int, big: int | None = None) -> dict[str, Shape]:
    return {
        f"s{i}": Shape(4000 if i == big else 100, 3000 if i == big else 100, "JPEG")
        for i in range(count)
    }


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[AssetRow], list[PairRow]]:
    count = draw(st.integers(2, 9))
    shas = [f"s{draw(st.integers(0, count - 1))}" for _ in range(count)]
    assets = [asset(i, sha) for i, sha in enumerate(shas)]
    distinct = sorted(set(shas))
    pairs = {}
    for _ in range(draw(st.integers(0, 12))):
        a, b = draw(st.sampled_from(distinct)), draw(st.sampled_from(distinct))
        if a != b:
            pairs[ordered(a, b)] = draw(st.sampled_from(TIERS))
    return assets, [PairRow(a, b, tier, 2, 2, {}) for (a, b), tier in pairs.items()]


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_clusters_are_stars_and_disjoint(graph: tuple[list[AssetRow], list[PairRow]]) -> None:
    assets, pairs = graph
    clusters, relations = build_clusters(assets, shapes(10), pairs, {})
    tiers = {(p.sha_a, p.sha_b): Tier(p.tier) for p in pairs}
    seen: set[str] = set()
    for cluster in clusters:
        keys = [cluster.canonical.key] + [m.asset.key for m in cluster.members]
        assert not seen & set(keys), "an asset sits in two clusters"
        seen.update(keys)
        for member in cluster.members:
            a, b = cluster.canonical.sha256, member.asset.sha256
            assert a is not None and b is not None
            direct = Tier.EXACT if a == b else tiers.get(ordered(a, b))
            assert direct in DUPLICATE_TIERS, "member does not match the canonical directly"
            assert member.edge.tier == direct
    # Maximal: no two unclustered assets that match each other are left over.
    loose = [a for a in assets if a.key not in seen]
    for x in loose:
        for y in loose:
            if x.key < y.key and x.sha256 and y.sha256:
                direct = (
                    Tier.EXACT if x.sha256 == y.sha256 else tiers.get(ordered(x.sha256, y.sha256))
                )
                assert direct not in DUPLICATE_TIERS
    assert all(r.edge.tier is not None for r in relations)


def test_no_chaining_through_a_middle_image() -> None:
    assets = [asset(0, "s0"), asset(1, "s1"), asset(2, "s2")]
    pairs = [
        PairRow("s0", "s1", "near_identical", 4, 4, {}),
        PairRow("s1", "s2", "near_identical", 4, 4, {}),
    ]
    clusters, _ = build_clusters(assets, shapes(3, big=1), pairs, {})
    assert len(clusters) == 1
    assert clusters[0].canonical.asset_id == "a1"  # largest resolution joins both
    clusters, _ = build_clusters(assets, shapes(3, big=0), pairs, {})
    members = {m.asset.asset_id for c in clusters for m in c.members}
    canonicals = {c.canonical.asset_id for c in clusters}
    assert canonicals == {"a0"} and members == {"a1"}, "a2 must not join a0 through a1"


def test_similar_pairs_never_form_clusters() -> None:
    assets = [asset(0, "s0"), asset(1, "s1")]
    clusters, relations = build_clusters(
        assets, shapes(2), [PairRow("s0", "s1", "similar", 2, 2, {})], {}
    )
    assert clusters == []
    assert [r.edge.tier for r in relations] == [Tier.SIMILAR]


def test_canonical_policy_order_and_reasons() -> None:
    pairs = [PairRow("s0", "s1", "near_identical", 4, 4, {})]
    plain = [asset(0, "s0"), asset(1, "s1")]
    clusters, _ = build_clusters(plain, shapes(2, big=1), pairs, {})
    assert clusters[0].canonical.asset_id == "a1"
    assert "largest resolution" in clusters[0].reason

    complete = [asset(0, "s0", location="Senaatintori", date="2020", department="KYMP"),
                asset(1, "s1")]  # fmt: skip
    clusters, _ = build_clusters(complete, shapes(2, big=1), pairs, {})
    assert clusters[0].canonical.asset_id == "a0"
    assert "metadata" in clusters[0].reason

    units = [asset(0, "s0", unit="kuva"), asset(1, "s1", unit="hel")]
    clusters, _ = build_clusters(units, shapes(2, big=1), pairs, {}, ["kuva"])
    assert clusters[0].canonical.unit == "kuva" and "authoritative" in clusters[0].reason

    camera = {"s0": Shape(100, 100, "JPEG", True, 10), "s1": Shape(100, 100, "JPEG", False, 20)}
    clusters, _ = build_clusters(plain, camera, pairs, {})
    assert clusters[0].canonical.asset_id == "a0" and "capture facts" in clusters[0].reason
    camera["s0"] = Shape(100, 100, "JPEG", False, 10)
    clusters, _ = build_clusters(plain, camera, pairs, {})
    # Byte size is not evidence (a q95 re-save of a q75 original is larger).
    assert clusters[0].canonical.asset_id == "a0" and "bytes" not in clusters[0].reason

    chosen = {("s0", "s1"): DecisionRow("s0", "s1", "canonical", "s0", "archivist", "t")}
    clusters, _ = build_clusters(plain, shapes(2, big=1), pairs, chosen)
    assert clusters[0].canonical.asset_id == "a0" and "reviewer" in clusters[0].reason


def test_platform_figures_of_the_original_outrank_the_hashed_rendition() -> None:
    """A platform's asset is hashed from a rendition: its resolution, size and
    upload time come from the platform, compared across time zones."""
    pairs = [PairRow("s0", "s1", "near_identical", 4, 4, {})]
    rendition = {"s0": Shape(480, 360, "JPEG"), "s1": Shape(800, 600, "JPEG")}
    big_original = replace(asset(0, "s0", unit="wp"), width=4000, height=3000)
    clusters, _ = build_clusters([big_original, asset(1, "s1")], rendition, pairs, {})
    assert clusters[0].canonical.asset_id == "a0"
    assert "4000x3000" in clusters[0].reason

    same = {"s0": Shape(100, 100, "JPEG"), "s1": Shape(100, 100, "JPEG")}
    # 10:00 in Helsinki (UTC+2) is 08:00 UTC: earlier than 09:00 UTC.
    helsinki = replace(asset(0, "s0"), modified="2026-01-05T10:00:00+02:00")
    utc = replace(asset(1, "s1"), modified="2026-01-05T09:00:00Z")
    clusters, _ = build_clusters([utc, helsinki], same, pairs, {})
    assert clusters[0].canonical.asset_id == "a0"
    assert "earliest upload" in clusters[0].reason


def test_reviewer_different_splits_and_same_joins() -> None:
    assets = [asset(0, "s0"), asset(1, "s1")]
    pairs = [PairRow("s0", "s1", "near_identical", 4, 4, {})]
    different = {("s0", "s1"): DecisionRow("s0", "s1", "different", None, "r", "t")}
    clusters, _ = build_clusters(assets, shapes(2), pairs, different)
    assert clusters == []
    same = {("s0", "s1"): DecisionRow("s0", "s1", "same", None, "r", "t")}
    clusters, _ = build_clusters(assets, shapes(2), [], same)
    assert len(clusters) == 1 and clusters[0].members[0].edge.decision == "same"


class GraphStore:
    """What `component_of` reads of an index, over a list of assets and pairs."""

    def __init__(self, assets: list[AssetRow], pairs: list[PairRow]) -> None:
        self.assets, self.pairs = assets, pairs
        self.walked: set[str] = set()  # the contents whose pairs were read

    def decisions(self) -> dict[tuple[str, str], DecisionRow]:
        return {}

    def pairs_touching(self, shas: set[str], recipe: int | None = None) -> list[PairRow]:
        self.walked |= shas
        return [p for p in self.pairs if p.sha_a in shas or p.sha_b in shas]

    def live_assets_with(self, shas: set[str]) -> list[AssetRow]:
        found = [a for a in self.assets if a.live and a.sha256 in shas]
        return sorted(found, key=lambda a: (a.unit, a.asset_id))


@settings(max_examples=300, deadline=None)
@given(graphs(), st.data())
def test_a_component_holds_what_the_whole_index_clusters_hold(
    graph: tuple[list[AssetRow], list[PairRow]], data: st.DataObject
) -> None:
    """A check's component (connector/engine/component.py) gives the clusters
    the whole index gives for its assets, also where contents no live asset
    holds any more sit between them (they link nothing)."""
    assets, pairs = graph
    dead = data.draw(st.sets(st.sampled_from([a.asset_id for a in assets])))
    assets = [replace(a, live=False) if a.asset_id in dead else a for a in assets]
    whole, _ = build_clusters([a for a in assets if a.live], shapes(10), pairs, {})
    start = data.draw(st.sampled_from(assets))
    assert start.sha256 is not None
    store = GraphStore(assets, pairs)
    part = component_of(
        store,  # type: ignore[arg-type]
        [start.sha256],
        shapes(10).get,
        Settings(),
        None,
    )

    def members(clusters: list[Cluster]) -> set[frozenset[str]]:
        return {frozenset([c.canonical.key, *(m.asset.key for m in c.members)]) for c in clusters}

    mine = {a.key for a in part.assets}
    assert all(a.live for a in part.assets)
    expected = {group for group in members(whole) if group & mine}
    assert members(part.clusters) == expected
    held = {a.sha256 for a in assets if a.live}
    assert store.walked <= held, "the walk went through contents no asset holds"
    if start.sha256 not in held:
        assert not part.assets
