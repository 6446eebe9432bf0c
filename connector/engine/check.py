"""Single-asset checks: a webhook notification about one asset.

`Checker.check` brings one asset of a unit into the index as the platform has
it now, matches it against the whole index (connector/engine/memindex.py),
settles each candidate pair as the matcher does, builds the clusters of its
connected component (the same answer `damdup clusters` gives) and pushes the
marks of that component only. `Checker.lookup` (connector/engine/lookup.py)
answers which version of an image is the authoritative one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import structlog

from adapters.base import Adapter, AdapterError, NotFound
from adapters.base import reason as error_text
from connector.core.fingerprint import RECIPE, Fingerprint
from connector.core.index import AssetRow, IndexStore, ordered
from connector.core.settings import Settings
from connector.engine.component import AssetEntry, Component, asset_entry, cluster_entry
from connector.engine.ingest import Ingest, IngestStats, awaits_retry, known_of
from connector.engine.locks import UnitBusy, UnitLock
from connector.engine.lookup import LookupAnswer, LookupRefused, lookup
from connector.engine.memindex import MatchIndex
from connector.engine.outbox import (
    PushReport,
    encode,
    intended_marks,
    missing_metadata,
    push_assets,
)
from connector.engine.scan import worker_pool
from connector.engine.sync import sync_unit
from connector.engine.workbench import Workbench

__all__ = [
    "CheckError",
    "CheckFailed",
    "CheckResult",
    "CheckVerdict",
    "Checker",
    "LookupRefused",
    "MatchIndex",
]

log = structlog.get_logger(__name__)

# How long a check waits for another sync of its unit (where the platform
# cannot describe one asset and the check syncs the unit instead).
SYNC_WAIT_S = 30.0


class CheckFailed(Exception):
    """The asset could not be checked; recorded as the check's error."""


class MarkEntry(TypedDict):
    unit: str
    asset_id: str
    labels: list[str]
    cluster: str | None
    canonical_url: str | None
    outcome: str
    dry_run: bool
    error: str | None


class CheckVerdict(TypedDict):
    """What a check found about one asset (stored as the check's result)."""

    unit: str
    asset_id: str
    asset: AssetEntry
    role: str  # unique, canonical, duplicate, duplicate-candidate
    tier: str | None
    cluster: str | None
    canonical: AssetEntry | None
    copies: list[AssetEntry]
    similar: list[AssetEntry]
    metadata_missing: list[str]
    marks: list[MarkEntry]


class CheckError(TypedDict):
    """Why one asset could not be checked (stored as the check's error)."""

    unit: str
    asset_id: str
    error: str


# What `Checker.check` returns: the verdict, or why there is none.
CheckResult = CheckVerdict | CheckError


class Checker(Workbench):
    """Checks and lookups on one shared workbench (thread-safe)."""

    def __init__(
        self,
        db_path: Path | str,
        settings: Settings,
        adapters: Mapping[str, Adapter[Any]],
        writes: Mapping[str, bool],
    ) -> None:
        super().__init__(db_path, settings, adapters)
        self.writes = dict(writes)

    def lookup(self, data: bytes | None = None, url: str | None = None) -> LookupAnswer:
        return lookup(self, data=data, url=url)

    def check(self, unit: str, asset_id: str, check_id: int) -> CheckResult:
        """The verdict on one asset, also stored as the check's result; a bad
        asset or a platform error is recorded and returned as a CheckError."""
        store = self.open_store()
        try:
            with structlog.contextvars.bound_contextvars(unit=unit, asset_id=asset_id):
                try:
                    verdict = self._check(store, unit, asset_id)
                except CheckFailed as exc:
                    error = error_text(exc)
                except AdapterError as exc:
                    error = f"{type(exc).__name__}: {error_text(exc)}"
                except Exception as exc:  # a defect must not kill the worker thread
                    log.exception("check.crashed")
                    error = f"unexpected {type(exc).__name__}: {error_text(exc)}"
                else:
                    store.finish_check(check_id, dict(verdict))
                    log.info("check.finished", role=verdict["role"], tier=verdict["tier"])
                    return verdict
                log.warning("check.failed", reason=error)
                store.finish_check(check_id, None, error)
                return {"unit": unit, "asset_id": asset_id, "error": error}
        finally:
            store.close()

    def _current(
        self, store: IndexStore, unit: str, adapter: Adapter[Any], asset_id: str
    ) -> AssetRow:
        """The asset as the platform has it now, brought into the index as a
        sync brings a page (connector/engine/ingest.py)."""
        if not adapter.capabilities.describe:
            return self._synced(store, unit, adapter, asset_id)
        try:
            ref = adapter.describe(asset_id)
        except NotFound as exc:
            raise CheckFailed(f"{unit} has no asset {asset_id}: {error_text(exc)}") from exc
        before = store.find_asset(f"{unit}:{asset_id}")
        ingest = Ingest(
            store,
            unit,
            adapter,
            self._run_jobs,
            max_pixels=self.settings.max_pixels,
            max_bytes=self.settings.max_file_bytes,
            known={asset_id: known_of(before)} if before is not None and before.live else {},
            sizes=None,
            stats=IngestStats(),
        )
        ingested = ingest.page([ref])
        fingerprints = {fingerprint.sha256: fingerprint for fingerprint in ingested.fingerprints}
        for row in ingested.rows:
            store.save_asset(unit, row, fingerprints.get(row.sha256 or ""))
        return _usable(unit, asset_id, store.find_asset(f"{unit}:{asset_id}"))

    def _synced(
        self, store: IndexStore, unit: str, adapter: Adapter[Any], asset_id: str
    ) -> AssetRow:
        """Where the platform cannot describe one asset: an incremental sync of
        the unit (one at a time per unit), then the asset as the index has it."""
        try:
            with (
                UnitLock(self.db_path, unit, wait_s=SYNC_WAIT_S),
                worker_pool(self.settings, workers=1) as pool,
            ):
                sync_unit(
                    store,
                    adapter,
                    unit,
                    pool,
                    max_pixels=self.settings.max_pixels,
                    max_bytes=self.settings.max_file_bytes,
                )
        except UnitBusy as exc:
            raise CheckFailed(f"{error_text(exc)}; its sync will index {asset_id}") from exc
        return _usable(unit, asset_id, store.find_asset(f"{unit}:{asset_id}"))

    def _check(self, store: IndexStore, unit: str, asset_id: str) -> CheckVerdict:
        adapter = self.adapters.get(unit)
        if adapter is None:
            raise CheckFailed(f"unknown unit {unit!r}; configured: {', '.join(self.adapters)}")
        asset = self._current(store, unit, adapter, asset_id)
        assert asset.sha256 is not None
        fingerprint = store.fingerprint(asset.sha256)
        if fingerprint is None:
            raise CheckFailed(f"the fingerprint of {asset.key} vanished from the index")
        index = self.index.current(store)
        self._settle(store, index, fingerprint)
        component = self.component(store, index, [fingerprint.sha256])
        marks = self._push(store, component, (asset.unit, asset.asset_id))
        return self._verdict(asset, component, marks)

    def _settle(self, store: IndexStore, index: MatchIndex, fingerprint: Fingerprint) -> None:
        """Evaluate and save every candidate pair of `fingerprint` not yet evaluated."""
        done = {
            (pair.sha_a, pair.sha_b) for pair in store.pairs_touching([fingerprint.sha256], RECIPE)
        }
        todo = [
            candidate
            for candidate in index.candidates(fingerprint)
            if ordered(fingerprint.sha256, candidate.sha256) not in done
        ]
        rows = [settled.row for settled in self.settle(store, fingerprint, todo)]
        if rows:
            store.save_pairs(rows, RECIPE)

    def _push(
        self, store: IndexStore, component: Component, asset_key: tuple[str, str]
    ) -> PushReport:
        """The component's intended marks into the outbox (its assets only), then
        pushed where the unit writes, else a dry run."""
        marks = intended_marks(
            component.clusters, component.relations, component.assets, self.links
        )
        keys = [(asset.unit, asset.asset_id) for asset in component.assets]
        changed = store.set_intended_assets(
            {key: encode(marks[key]) if key in marks else "" for key in keys}
        )
        # Only what this check changed, and the asset itself: marks still
        # pending from before (a dry-run unit, a failed write) are the next
        # `damdup push`'s, not read again on every notification.
        return push_assets(store, self.adapters, self.writes, {*changed, asset_key})

    def _verdict(self, asset: AssetRow, component: Component, report: PushReport) -> CheckVerdict:
        cluster = component.cluster_of(asset.key)
        tier: str | None = None
        role = "unique"
        if cluster is not None:
            if cluster.canonical.key == asset.key:
                role = "canonical"
                tier = cluster.tier.value
            else:
                edge = next(m.edge for m in cluster.members if m.asset.key == asset.key)
                role, tier = edge.mark, edge.tier.value
        keys = {asset.key}
        copies: list[AssetEntry] = []
        canonical: AssetEntry | None = None
        if cluster is not None:
            keys |= {cluster.canonical.key} | {m.asset.key for m in cluster.members}
            entry = cluster_entry(cluster, exclude=asset.key, link=self.links)
            canonical = entry["canonical"]
            if cluster.canonical.key != asset.key:
                first = asset_entry(cluster.canonical, self.links)
                first["tier"] = "canonical"
                first["role"] = "canonical"
                copies.append(first)
            copies += entry["copies"]
        me = asset_entry(asset, self.links)
        me["sha256"] = asset.sha256
        return {
            "unit": asset.unit,
            "asset_id": asset.asset_id,
            "asset": me,
            "role": role,
            "tier": tier,
            "cluster": cluster.id if cluster is not None else None,
            "canonical": canonical,
            "copies": copies,
            "similar": [asset_entry(other, self.links) for other in component.similar_to(keys)],
            "metadata_missing": missing_metadata(asset),
            "marks": [
                {
                    "unit": change.unit,
                    "asset_id": change.asset_id,
                    "labels": list(change.after.labels),
                    "cluster": change.after.cluster,
                    "canonical_url": change.after.canonical_url,
                    "outcome": change.outcome.value,
                    "dry_run": change.unit in report.dry_run_units,
                    "error": change.error,
                }
                for change in report.changes
            ],
        }


def _usable(unit: str, asset_id: str, row: AssetRow | None) -> AssetRow:
    """The asset's row once it is in the index, or why the check cannot go on."""
    if row is None or not row.live:
        raise CheckFailed(f"{unit} has no asset {asset_id} (not in its listing)")
    if row.error is not None or row.sha256 is None:
        if awaits_retry(row.error):
            raise CheckFailed(f"{unit}:{asset_id} could not be fetched: {row.error}")
        raise CheckFailed(f"{unit}:{asset_id} cannot be read: {row.error}")
    return row
