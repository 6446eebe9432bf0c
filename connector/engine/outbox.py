"""Write-back: the marks each asset should carry, pushed as differences.

`plan` turns the current clusters into intended marks per asset (the outbox).
`push` writes, per unit, only what differs from what damdup last wrote, asks the
platform what it holds before each write (so the journal and a revert know the
real earlier state), and journals every applied change. A unit whose
configuration does not enable writes gets a dry run: the same reads, the same
differences, nothing sent. Platforms that cannot store marks get theirs in the
report. `revert` puts back what one push run changed.

Nothing here deletes an asset: adapters only ever replace damdup's own marks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from adapters.base import (
    Adapter,
    AdapterError,
    AssetRef,
    AuthFailed,
    BadAsset,
    Marks,
    MarksDoNotFit,
    NotFound,
    Unsupported,
)
from adapters.base import (
    reason as error_text,
)
from connector.core.index import AssetRow, IndexStore, OutboxRow
from connector.core.tiers import Tier
from connector.engine.clusters import Cluster, Relation
from connector.engine.links import default_link

log = structlog.get_logger("damdup.push")

# Every asset should carry these; one without any of them gets `metadata-missing`.
MANDATORY_METADATA = ("location", "date", "department")


def encode(marks: Marks) -> str:
    """The outbox's text for marks; "" for none."""
    return "" if marks.empty else marks.to_json()


def decode(text: str | None) -> Marks:
    return Marks.from_json(text)


def missing_metadata(asset: AssetRow) -> list[str]:
    """The mandatory fields (location, date, department) the asset lacks."""
    return [name for name in MANDATORY_METADATA if not asset.metadata.get(name)]


def intended_marks(
    clusters: Iterable[Cluster],
    relations: Iterable[Relation],
    assets: Iterable[AssetRow] = (),
    link: Callable[[AssetRow], str] = default_link,
) -> dict[tuple[str, str], Marks]:
    """Marks per (unit, asset id): `canonical` with the cluster id on each
    canonical; `duplicate` or `duplicate-candidate` (by tier, after reviewers'
    decisions) with the cluster id and the canonical's link on each member;
    `related` on both assets of every similar pair, which is never merged;
    `metadata-missing` on each of `assets` without location, date or
    contributing department."""
    labels: dict[tuple[str, str], set[str]] = {}
    cluster_of: dict[tuple[str, str], str] = {}
    canonical_of: dict[tuple[str, str], str] = {}

    def key(asset: AssetRow) -> tuple[str, str]:
        return (asset.unit, asset.asset_id)

    for cluster in clusters:
        labels.setdefault(key(cluster.canonical), set()).add("canonical")
        cluster_of[key(cluster.canonical)] = cluster.id
        for member in cluster.members:
            labels.setdefault(key(member.asset), set()).add(member.edge.mark)
            cluster_of[key(member.asset)] = cluster.id
            canonical_of[key(member.asset)] = link(cluster.canonical)
    for relation in relations:
        if relation.edge.tier == Tier.SIMILAR:
            for asset in (relation.a, relation.b):
                labels.setdefault(key(asset), set()).add("related")
    for asset in assets:
        if asset.error is None and missing_metadata(asset):
            labels.setdefault(key(asset), set()).add("metadata-missing")
    return {
        asset: Marks(
            labels=tuple(names),
            cluster=cluster_of.get(asset),
            canonical_url=canonical_of.get(asset),
        )
        for asset, names in labels.items()
    }


def plan(
    store: IndexStore,
    units: Sequence[str],
    clusters: Iterable[Cluster],
    relations: Iterable[Relation],
    link: Callable[[AssetRow], str] = default_link,
) -> None:
    """Refresh the outbox of `units` from the current clusters and the live
    assets' metadata; `push` then sends what differs from what was last written."""
    wanted = set(units)
    assets = [asset for asset in store.live_assets() if asset.unit in wanted]
    marks = intended_marks(clusters, relations, assets, link)
    store.set_intended(units, {asset: encode(m) for asset, m in marks.items()})


class Outcome(StrEnum):
    APPLIED = "applied"  # written
    ALREADY = "already"  # the platform held these marks already; nothing sent
    WOULD_CHANGE = "would-change"  # dry run
    REPORT_ONLY = "report-only"  # the platform cannot store marks
    GONE = "gone"  # the asset is no longer on the platform
    NO_ROOM = "no-room"  # the store's limits leave no room (MarksDoNotFit)
    FAILED = "failed"  # retried at the next push
    SUPERSEDED = "superseded"  # a revert skips it: a later push changed it since


@dataclass(frozen=True)
class Change:
    unit: str
    asset_id: str
    url: str
    before: Marks
    after: Marks
    outcome: Outcome
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "asset_id": self.asset_id,
            "url": self.url,
            "before": _marks_dict(self.before),
            "after": _marks_dict(self.after),
            "outcome": self.outcome.value,
            "error": self.error,
        }


def _marks_dict(marks: Marks) -> dict[str, Any]:
    return {
        "labels": list(marks.labels),
        "cluster": marks.cluster,
        "canonical_url": marks.canonical_url,
    }


@dataclass
class PushReport:
    run: int
    dry_run_units: list[str]
    report_only_units: list[str]
    changes: list[Change] = field(default_factory=list)
    failed_units: dict[str, str] = field(default_factory=dict)
    # (unit, asset id) whose intended marks a revert holds back: not written.
    held: list[tuple[str, str]] = field(default_factory=list)

    def count(self, outcome: Outcome, unit: str | None = None) -> int:
        return len(
            [c for c in self.changes if c.outcome == outcome and (unit is None or c.unit == unit)]
        )

    def stats(self) -> dict[str, Any]:
        return {
            "outcomes": {o.value: self.count(o) for o in Outcome if self.count(o)},
            "failed_units": self.failed_units,
            "dry_run_units": self.dry_run_units,
            "held": len(self.held),
        }


def asset_ref(asset: AssetRow) -> AssetRef:
    return AssetRef(
        id=asset.asset_id,
        version=asset.version,
        url=asset.url,
        size_bytes=asset.size_bytes,
        modified=asset.modified,
        original_url=asset.original_url,
        width=asset.width,
        height=asset.height,
    )


@dataclass(frozen=True)
class Target:
    """One asset to bring to `after`; `held` is what the outbox should keep
    held back afterwards (a revert)."""

    row: OutboxRow
    asset: AssetRow
    after: Marks
    held: str | None = None


def _write_unit(
    store: IndexStore,
    run: int,
    unit: str,
    adapter: Adapter[Any],
    targets: Sequence[Target],
    dry_run: bool,
    report: PushReport,
    concurrency: int,
) -> None:
    """Read and write `concurrency` assets at a time; results are recorded
    (outbox, journal) by this thread, batch by batch, so a stop loses at most
    the journal lines of one batch: their assets are found already marked."""
    if not adapter.capabilities.annotate:
        for target in targets:
            report.changes.append(
                Change(
                    unit,
                    target.asset.asset_id,
                    target.asset.url,
                    decode(target.row.applied),
                    target.after,
                    Outcome.REPORT_ONLY,
                )
            )
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"push-{unit}") as pool:
        for start in range(0, len(targets), concurrency):
            batch = targets[start : start + concurrency]
            # Credentials refused or the plugin missing: raised here, after at
            # most one batch of requests, and the whole unit stops.
            results = list(pool.map(lambda t: _write_one(adapter, t, dry_run), batch))
            for target, (before, outcome, error) in zip(batch, results, strict=True):
                asset_id = target.asset.asset_id
                if outcome in (Outcome.APPLIED, Outcome.ALREADY) and not dry_run:
                    store.record_written(
                        run, unit, asset_id, encode(before), encode(target.after), target.held
                    )
                if error is not None:
                    store.record_outbox_error(unit, asset_id, error)
                    log.warning("push.not_written", unit=unit, asset=asset_id, error=error)
                report.changes.append(
                    Change(unit, asset_id, target.asset.url, before, target.after, outcome, error)
                )


def _write_one(
    adapter: Adapter[Any], target: Target, dry_run: bool
) -> tuple[Marks, Outcome, str | None]:
    """One asset: the marks it had, what happened, and why not, if not."""
    before = decode(target.row.applied)
    try:
        before = _platform_marks(adapter, target)
        if not dry_run:
            adapter.annotate(asset_ref(target.asset), target.after)
    except NotFound:
        return before, Outcome.GONE, "not on the platform any more"
    except MarksDoNotFit as exc:
        return before, Outcome.NO_ROOM, f"no room: {error_text(exc)}"
    except (AuthFailed, Unsupported):
        # The whole unit stops: every other write would fail the same way. The
        # unit declares `annotate` (checked before any write), so Unsupported
        # is the platform refusing at run time: WordPress without damdup's
        # plugin, a Drupal, ResourceSpace or SharePoint field not set up.
        raise
    except AdapterError as exc:
        return before, Outcome.FAILED, error_text(exc)
    if before == target.after:
        return before, Outcome.ALREADY, None
    return before, Outcome.WOULD_CHANGE if dry_run else Outcome.APPLIED, None


def _platform_marks(adapter: Adapter[Any], target: Target) -> Marks:
    """What the platform holds now. Marks damdup cannot read (a hand edit of
    its own field or tags) count as none: annotate replaces them, and the
    journal keeps what damdup last wrote there."""
    try:
        return adapter.read_marks(asset_ref(target.asset))
    except BadAsset as exc:
        log.warning("push.unreadable_marks", asset=target.asset.key, error=error_text(exc))
        return decode(target.row.applied)


def _run_units(
    store: IndexStore,
    adapters: Mapping[str, Adapter[Any]],
    writes: Mapping[str, bool],
    targets_of: Callable[[str], list[Target]],
    revert_of: int | None,
    dry_run: bool,
    concurrency: int,
) -> PushReport:
    units = list(adapters)
    dry = [u for u in units if dry_run or not writes.get(u, False)]
    report_only = [u for u in units if not adapters[u].capabilities.annotate]
    run = store.start_push(units, dry_run=len(dry) == len(units), revert_of=revert_of)
    report = PushReport(run, dry, report_only)
    for unit in units:
        try:
            _write_unit(
                store, run, unit, adapters[unit], targets_of(unit), unit in dry, report, concurrency
            )
        except AdapterError as exc:
            report.failed_units[unit] = error_text(exc)
            log.error("push.unit_failed", unit=unit, error=error_text(exc))
        except Exception as exc:  # an adapter's bug stops its unit, not the run
            report.failed_units[unit] = f"unexpected error: {exc!r}"
            log.exception("push.unit_failed", unit=unit)
    store.finish_push(run, report.stats())
    return report


def push(
    store: IndexStore,
    adapters: Mapping[str, Adapter[Any]],
    writes: Mapping[str, bool],
    dry_run: bool = False,
    concurrency: int = 4,
) -> PushReport:
    """Bring every unit's marks to what the outbox intends (see `plan`),
    `concurrency` assets of a unit at a time, units one after another."""
    assets = {(a.unit, a.asset_id): a for a in store.live_assets()}

    def targets(unit: str) -> list[Target]:
        return [
            Target(row, assets[(row.unit, row.asset_id)], decode(row.intended))
            for row in store.outbox([unit])
            if (row.unit, row.asset_id) in assets
        ]

    report = _run_units(store, adapters, writes, targets, None, dry_run, concurrency)
    report.held = [(row.unit, row.asset_id) for row in store.held(list(adapters))]
    return report


def push_assets(
    store: IndexStore,
    adapters: Mapping[str, Adapter[Any]],
    writes: Mapping[str, bool],
    keys: Iterable[tuple[str, str]],
    concurrency: int = 4,
) -> PushReport:
    """`push` for the given (unit, asset id) only (a single-asset check): the
    same reads, differences, dry runs and journal, for just their outbox rows."""
    wanted = {key for key in keys if key[0] in adapters}
    by_unit: dict[str, list[Target]] = {}
    for row in store.outbox(sorted({unit for unit, _ in wanted})) if wanted else []:
        if (row.unit, row.asset_id) not in wanted:
            continue
        asset = store.find_asset(f"{row.unit}:{row.asset_id}")
        if asset is not None and asset.live:
            by_unit.setdefault(row.unit, []).append(Target(row, asset, decode(row.intended)))
    if not by_unit:  # nothing differs: no push run is recorded
        return PushReport(0, [], [])
    involved = {unit: adapters[unit] for unit in by_unit}
    return _run_units(store, involved, writes, by_unit.__getitem__, None, False, concurrency)


class UnknownRun(ValueError):
    pass


def revert(
    store: IndexStore,
    adapters: Mapping[str, Adapter[Any]],
    writes: Mapping[str, bool],
    run: int,
    dry_run: bool = False,
    concurrency: int = 4,
) -> PushReport:
    """Put back the marks push run `run` changed, on the assets no later push
    has changed since (those are `superseded` and left as they are: replaying
    older marks over them would undo a newer decision). The outbox holds the
    reverted assets' intended marks back, so the next push does not redo the
    run; the hold ends when an asset's intended marks change, or with
    `push --release`. Reverting a revert ends its holds and brings its assets
    to the marks the index holds now, never to marks from before."""
    runs = {r.id: r for r in store.push_runs()}
    if run not in runs:
        raise UnknownRun(f"no push run {run}; runs: {', '.join(map(str, runs)) or 'none'}")
    entries = store.journal(run)
    if not entries and runs[run].dry_run:
        raise UnknownRun(f"push run {run} was a dry run: it changed nothing")
    undoing_a_revert = runs[run].revert_of is not None
    assets = {(a.unit, a.asset_id): a for a in store.live_assets()}
    rows = {(r.unit, r.asset_id): r for r in store.outbox(list(adapters), pending_only=False)}
    chosen: dict[str, list[Target]] = {}
    superseded: list[Change] = []
    for entry in entries:
        key = (entry.unit, entry.asset_id)
        if entry.unit not in adapters or key not in assets or key not in rows:
            continue
        row, asset = rows[key], assets[key]
        if (row.applied or "") != entry.after:
            superseded.append(
                Change(
                    entry.unit,
                    entry.asset_id,
                    asset.url,
                    decode(row.applied),
                    decode(entry.before),
                    Outcome.SUPERSEDED,
                    f"changed by a later push since run {run}: left as it is",
                )
            )
            continue
        if undoing_a_revert:
            target = Target(row, asset, decode(row.intended), None)
        else:
            target = Target(row, asset, decode(entry.before), row.intended)
        chosen.setdefault(entry.unit, []).append(target)
    involved = {entry.unit: adapters[entry.unit] for entry in entries if entry.unit in adapters}
    report = _run_units(
        store, involved, writes, lambda unit: chosen.get(unit, []), run, dry_run, concurrency
    )
    report.changes.extend(superseded)
    report.held = [(row.unit, row.asset_id) for row in store.held(list(adapters))]
    return report
