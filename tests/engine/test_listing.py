"""The saved cluster listing kept current a component at a time: after any
sequence of changes (assets new, copied, changed, retired and back; pairs
settled and settled again; reviewers' decisions, metadata, a fingerprint),
`damdup clusters` and `damdup status` answer exactly what clustering the
whole index answers, on SQLite and on PostgreSQL, without clustering the
whole index."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from connector.core.capture import CaptureFacts
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import AssetRow, DecisionRow, IndexStore, PairRow, ordered
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.engine import scan

CONTENTS = [f"{n:02x}" * 32 for n in range(1, 25)]  # 24 contents
TIERS = ["exact", "same_pixels", "near_identical", "similar", None]


def fingerprint(sha: str, width: int) -> Fingerprint:
    return Fingerprint(
        sha256=sha, size_bytes=1000 + width, recipe=RECIPE, format="JPEG", width=width,
        height=width * 3 // 4, payload_digest=None, phash=int(sha[:16], 16), dhash=0,
        phash_trim=None, dhash_trim=None, phash_inner=None, dhash_inner=None, flat=False,
        animated=False, capture=CaptureFacts(), thumb=b"t",
    )  # fmt: skip


def asset(unit: str, asset_id: str, sha: str, metadata: dict[str, str]) -> AssetRow:
    return AssetRow(
        unit=unit, asset_id=asset_id, version="v1", url=f"https://{unit}.test/{asset_id}",
        size_bytes=10, modified=f"2026-0{1 + len(asset_id) % 9}-01T00:00:00Z", sha256=sha,
        error=None, metadata=metadata, live=True,
    )  # fmt: skip


class Index:
    """An index changed at random, as syncs, matches and reviewers change it."""

    def __init__(self, store: IndexStore, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.assets: dict[tuple[str, str], AssetRow] = {}
        self.live: set[tuple[str, str]] = set()
        self.runs = {unit: store.start_run(unit, "sync") for unit in ("north", "south")}
        self.made = 0

    def _save(self, row: AssetRow, deleted: tuple[str, ...] = ()) -> None:
        sha = row.sha256 or ""
        self.store.save_page(
            row.unit, self.runs[row.unit], [row], [fingerprint(sha, 200 + int(sha[:2], 16))], [],
            None, deleted=deleted,
        )  # fmt: skip

    def new_asset(self) -> str:
        self.made += 1
        unit = self.rng.choice(["north", "south"])
        row = asset(unit, f"img{self.made}", self.rng.choice(CONTENTS), self._metadata())
        self._save(row)
        self.assets[(unit, row.asset_id)] = row
        self.live.add((unit, row.asset_id))
        return f"new asset {row.key}"

    def _metadata(self) -> dict[str, str]:
        names = ("location", "date", "department")
        return {name: "x" for name in names if self.rng.random() < 0.7}

    def change_asset(self) -> str:
        key = self.rng.choice(sorted(self.assets))
        old = self.assets[key]
        what = self.rng.choice(["content", "metadata", "retire", "back"])
        if what == "retire" and key in self.live:
            self.store.save_page(key[0], self.runs[key[0]], [], [], [], None, deleted=[key[1]])
            self.live.discard(key)
            return f"retired {old.key}"
        if what == "content":
            new = AssetRow(**{**old.__dict__, "sha256": self.rng.choice(CONTENTS)})
        else:
            new = AssetRow(**{**old.__dict__, "metadata": self._metadata()})
        self._save(new)
        self.assets[key] = new
        self.live.add(key)
        return f"{what} of {old.key}"

    def settle_pairs(self) -> str:
        pairs = []
        for _ in range(self.rng.randint(1, 4)):
            a, b = ordered(*self.rng.sample(CONTENTS, 2))
            tier = self.rng.choice(TIERS)
            evidence: dict[str, Any] = {"reasons": [f"r{self.rng.randint(0, 3)}"]}
            if tier == "similar" and self.rng.random() < 0.4:
                evidence["contradictions"] = ["taken at other times"]
            if self.rng.random() < 0.5:
                evidence["pixel_check"] = {"correlation": self.rng.random()}
            pairs.append(PairRow(a, b, tier, self.rng.randint(0, 12), self.rng.randint(0, 12),
                                 evidence))  # fmt: skip
        self.store.save_pairs(pairs, RECIPE)
        return f"{len(pairs)} pairs"

    def decide(self) -> str:
        a, b = ordered(*self.rng.sample(CONTENTS, 2))
        decision = self.rng.choice(["same", "different", "canonical"])
        chosen = self.rng.choice([a, b]) if decision == "canonical" else None
        self.store.save_decision(DecisionRow(a, b, decision, chosen, "anna", "2026-12-07"))
        return f"{decision} {a[:4]} {b[:4]}"

    def step(self) -> str:
        moves = [self.new_asset, self.settle_pairs, self.decide]
        if self.assets:
            moves.append(self.change_asset)
        return self.rng.choice(moves)()


def populated(index_db: str | Path, seed: int) -> tuple[IndexStore, Index]:
    """A new index of ten assets and a few pairs."""
    store = open_store(index_db, create=True)
    index = Index(store, seed)
    for _ in range(10):
        index.new_asset()
    index.settle_pairs()
    return store, index


def whole(store: IndexStore, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The listing and figures of clustering the whole index, through another
    connection that saves nothing (so that the listing under test stays as
    its own reading left it)."""
    other = store.reopen()
    other.save_listing = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        clusters, relations = scan.current_clusters(other, settings)
    finally:
        other.close()
    return json.loads(json.dumps(scan.listing_of(clusters, relations))), scan.figures_of(clusters)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_listing_kept_a_component_at_a_time_is_the_whole_clustering(
    index_db: str | Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(index_db, create=True)
    index = Index(store, seed)
    units = ["south"] if seed == 3 else []
    settings = Settings(db=Path("unused.sqlite"), authoritative_units=units)
    try:
        for _ in range(12):
            index.new_asset()
        index.settle_pairs()
        assert scan.cluster_listing(store, settings) == whole(store, settings)[0]

        wholes: list[str] = []
        real = scan.current_clusters

        def counted(on: IndexStore, *args: Any, **kwargs: Any) -> Any:
            if on is store:  # not `whole`'s own
                wholes.append("whole")
            return real(on, *args, **kwargs)

        monkeypatch.setattr(scan, "current_clusters", counted)
        done = []
        for number in range(60):
            done.append(index.step())
            if number % 3 == 2:  # a few changes between two readings, then one
                continue
            expected_listing, expected_figures = whole(store, settings)
            listed = (
                scan.cluster_listing(store, settings)
                if number % 2
                else scan.unit_figures(store, settings)
            )
            after = done[-3:]
            if number % 2:
                assert listed == expected_listing, after
            else:
                assert listed == expected_figures, after
        # Every reading patched the listing: none clustered the whole index.
        assert wholes == []
        assert scan.cluster_listing(store, settings) == whole(store, settings)[0]
        assert store.cluster_queue().seqs.tolist() == []
        assert any(listing for listing in whole(store, settings)[0].values())
    finally:
        store.close()


def test_a_listing_saved_meanwhile_is_not_overwritten(index_db: str | Path) -> None:
    """Two readings at once: the one that read the listing as it no longer is
    saves nothing (its rows stay queued), the other's listing stands."""
    store, index = populated(index_db, 7)
    settings = Settings(db=Path("unused.sqlite"))
    try:
        scan.cluster_listing(store, settings)
        saved = store.listing_saved()
        assert saved is not None
        index.decide()
        queue = store.cluster_queue()
        assert queue.seqs.tolist() and not queue.everything
        scan.unit_figures(store, settings)  # another reader patches first
        assert store.save_listing(saved[0], "late", [], None, queue.seqs) is None
        now = store.listing_saved()
        assert now is not None and now[0] != "late"
        assert scan.cluster_listing(store, settings) == whole(store, settings)[0]
    finally:
        store.close()


def test_rules_changed_or_too_much_queued_cluster_the_whole_index(
    index_db: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, index = populated(index_db, 11)
    settings = Settings(db=Path("unused.sqlite"))
    try:
        queued = store.cluster_queue()
        assert queued.everything, "a new index lists nothing yet: the whole index"
        scan.unit_figures(store, settings)
        wholes: list[int] = []
        real = scan.current_clusters

        def counted(on: IndexStore, *args: Any, **kwargs: Any) -> Any:
            if on is store:  # not `whole`'s own
                wholes.append(1)
            return real(on, *args, **kwargs)

        monkeypatch.setattr(scan, "current_clusters", counted)
        other = Settings(db=Path("unused.sqlite"), authoritative_units=["north"])
        assert scan.cluster_listing(store, other) == whole(store, other)[0]
        assert wholes == [1], "made by other rules: clustered whole"
        monkeypatch.setattr(scan, "PATCH_MOST", 2)
        for _ in range(3):
            index.new_asset()
        assert scan.unit_figures(store, other) == whole(store, other)[1]
        assert wholes == [1, 1], "more queued than PATCH_MOST: clustered whole"
        assert store.cluster_queue().seqs.tolist() == []
    finally:
        store.close()


def test_a_cluster_whose_every_asset_went_at_once_leaves_the_listing(
    index_db: str | Path,
) -> None:
    """Two byte copies, then both retired before the next reading: no asset
    of the cluster is live any more, so no component reaches it; the rows
    queued for the assets themselves take it out."""
    store = open_store(index_db, create=True)
    index = Index(store, 5)
    settings = Settings(db=Path("unused.sqlite"))
    try:
        sha = CONTENTS[0]
        rows = [asset("north", name, sha, {}) for name in ("first", "second")]
        for row in rows:
            index._save(row)
        listed = scan.cluster_listing(store, settings)["clusters"]
        assert [(c["canonical"]["id"], len(c["members"])) for c in listed] == [("first", 1)]
        store.save_page("north", index.runs["north"], [], [], [], None, deleted=["first", "second"])
        assert scan.cluster_listing(store, settings) == {"clusters": [], "similar": []}
        assert scan.unit_figures(store, settings) == {}
    finally:
        store.close()
