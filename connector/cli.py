"""`damdup` command line: scan, sync, status, clusters, explain, errors, export, review."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from adapters.base import AdapterError, Marks
from adapters.base import reason as error_text
from adapters.filesystem import Filesystem, FilesystemSettings
from connector.core.config import Config, ConfigError, load_config
from connector.core.dburl import DatabaseUrlError
from connector.core.index import IndexMissing, IndexStore, SchemaError, ordered
from connector.core.settings import Settings
from connector.core.sheets import write_csv
from connector.core.store import describe_db, migrate_to_postgresql
from connector.core.store import open_store as open_index
from connector.core.tiers import DUPLICATE_TIERS, Decision, Tier
from connector.daemon import (
    DEFAULT_JITTER,
    DEFAULT_METRICS_HOST,
    DEFAULT_METRICS_PORT,
    Metrics,
    configure_json_logging,
    run_daemon,
)
from connector.engine.clusters import Cluster, Relation
from connector.engine.links import Links
from connector.engine.listing import spans_units
from connector.engine.locks import UnitBusy, UnitLock
from connector.engine.outbox import Outcome, PushReport, UnknownRun, plan, push, revert
from connector.engine.pool import EngineUnavailable
from connector.engine.review import (
    ReviewError,
    Standing,
    decide,
    export_csv,
    import_csv,
    queue,
    resolve,
    standing,
)
from connector.engine.scan import (
    BACKGROUND_NICE,
    OriginalReader,
    RunResult,
    cluster_counts,
    cluster_listing,
    current_clusters,
    sync_and_match,
    unit_figures,
)
from connector.engine.settle import MatchStats
from connector.plugin import PluginExists, write_plugin
from connector.report import migrate as migration
from connector.serve import DEFAULT_PORT, ServeError, serve
from connector.units import build_adapters, link_adapters

if TYPE_CHECKING:
    from connector.engine.lookup import LookupAnswer

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3  # the run finished, but some assets or units could not be indexed
DEFAULT_CONFIG = Path("config/damdup.toml")
SIMILAR_SHOWN = 20  # related pairs listed under the clusters unless --all

RELATION_FIELDS = [
    "unit_a", "id_a", "unit_b", "id_b", "tier", "phash_distance", "dhash_distance",
    "cluster", "canonical",
]  # fmt: skip

# Off a terminal, rich would wrap at 80 columns and break file paths apart.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)  # messages are never broken mid-path


def shown(value: str) -> str:
    """A file name or id as one line of plain text: a control character in it
    (newline, carriage return, escape) is written as an escape, never acted on."""
    if value.isprintable():
        return value
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in value
    )


def plain(value: str) -> Text:
    """A table cell shown as it is: no rich markup read into a file name
    (`[red]x.jpg`), and control characters shown escaped (`shown`) instead of
    breaking the row."""
    return Text(shown(value))


def named(value: str) -> str:
    """A file name or id inside a line printed with rich markup: `shown`, with
    its brackets escaped, so `[red]x.jpg` is printed as it is, not read."""
    return escape(shown(value))


class UsageError(Exception):
    pass


class Busy(Exception):
    """Another run holds a unit this command needs; nothing was done."""


def configure_logging(verbose: bool) -> None:
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,  # a crash's traceback, as text
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    if not enabled:
        yield lambda stage, done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, Any] = {}
    with bar:

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


@dataclass(frozen=True)
class Context:
    """What every command resolves the same way: the configuration file (if
    any), the process settings and the index, each with where it came from."""

    settings: Settings
    config: Config | None
    db_source: str

    @property
    def db(self) -> Path | str:
        return self.settings.db

    @property
    def index_line(self) -> str:
        return f"index {self.settings.db} ({self.db_source})"

    def need_config(self) -> Config:
        if self.config is None:
            raise UsageError(
                f"no configuration at {DEFAULT_CONFIG}: copy config/damdup.example.toml there, "
                "or give --config FILE (or $DAMDUP_CONFIG)"
            )
        return self.config


def config_path(args: argparse.Namespace) -> tuple[Path, str] | None:
    """The configuration file: --config, then $DAMDUP_CONFIG, then
    config/damdup.toml when it exists; None when there is none."""
    if getattr(args, "config", None):
        return Path(args.config), "--config"
    if os.environ.get("DAMDUP_CONFIG"):
        return Path(os.environ["DAMDUP_CONFIG"]), "$DAMDUP_CONFIG"
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG, "default"
    return None


def resolve_context(args: argparse.Namespace) -> Context:
    """One rule for every command: a flag, then the environment, then the
    configuration file, then the default."""
    overrides: dict[str, Any] = {}
    if getattr(args, "db", None):
        overrides["db"] = args.db
    if getattr(args, "workers", None):
        overrides["workers"] = args.workers
    settings = Settings(**overrides)
    config: Config | None = None
    found = config_path(args)
    if found is not None:
        path, origin = found
        if not path.exists():
            raise UsageError(f"no configuration file at {path} (from {origin})")
        config = load_config(path, settings)
        settings = config.settings
    problem = settings.engine_problem()
    if problem is not None:
        raise UsageError(f"bad setting broker: {problem}")
    if getattr(args, "db", None):
        source = "from --db"
    elif os.environ.get("DAMDUP_DB"):
        source = "from $DAMDUP_DB"
    elif config is not None and "db" in config.settings.model_fields_set:
        source = f"from {config.path}"
    else:
        source = "the default; give --db, $DAMDUP_DB or [damdup] db"
    return Context(settings=settings, config=config, db_source=source)


def open_store(ctx: Context, create: bool = False) -> IndexStore:
    """The index; only commands that build one (`scan`, `sync`, `migrate`,
    `daemon`) create it. Reading a missing index is an error naming the path
    (or the database and its server)."""
    try:
        return open_index(ctx.db, create=create)
    except IndexMissing as exc:
        raise UsageError(
            f"{exc} ({ctx.db_source}): build one with `damdup scan PATH` or "
            "`damdup sync`, or point --db, $DAMDUP_DB or the configuration's [damdup] db at it"
        ) from exc
    except SchemaError as exc:  # not ours, newer, or a server out of reach
        raise UsageError(f"{exc} ({ctx.db_source})") from exc


# -- commands ----------------------------------------------------------------


def candidate_pairs(stats: MatchStats) -> str:
    """What the match searched, in words: the whole index, or what changed."""
    if stats.searched == "queued":
        return (
            f"{stats.candidates} candidate pairs of {stats.fingerprints} new or changed "
            "images (searched against the whole index)"
        )
    return f"{stats.candidates} candidate pairs in the whole index"


def cmd_scan(args: argparse.Namespace, ctx: Context) -> int:
    settings = ctx.settings
    root = Path(args.path)
    unit = args.unit or "scan"
    try:
        adapter = Filesystem(FilesystemSettings(root=root, max_file_bytes=settings.max_file_bytes))
    except AdapterError as exc:
        raise UsageError(error_text(exc)) from exc
    store = open_store(ctx, create=True)
    try:
        # Two scans of one unit into one index would each retire what the
        # other listed: the later one waits for the unit's lock.
        adapters: dict[str, Any] = {unit: adapter}
        with ExitStack() as locks:
            busy = lock_units(locks, settings, adapters, wait_s=args.lock_wait)
            if busy:
                raise Busy(
                    f"{busy[unit]}: try again when it has finished (or a longer --lock-wait)"
                )
            with progress_bar(err.is_terminal and not args.quiet) as progress:
                result = sync_and_match(
                    store, adapters, settings, progress=progress, allow_empty=args.allow_empty
                )
        sync = result.syncs[0]
        summary = {
            "unit": unit,
            "listed": sync.listed,
            "unchanged": sync.unchanged,
            "fingerprinted": sync.fingerprinted,
            "reused": sync.reused,
            "retired": sync.retired,
            "unlisted_folders": sync.unlisted,
            "errors": result.errors,
            "failed_units": result.failed_units,
            "candidates": result.match.candidates,
            "searched": result.match.searched,
            "pairs_checked": result.match.evaluated,
            "db": str(settings.db),
        }
        # A scan that stopped must say so even with --format json: its index is incomplete.
        for reason in result.failed_units.values():
            err.print(f"{unit}: scan stopped: {reason}", style="red", markup=False)
        if args.format == "json":
            out.print_json(json.dumps(summary))
        else:
            out.print(
                f"{unit}: {sync.listed} files listed, {sync.fingerprinted} fingerprinted, "
                f"{sync.unchanged} unchanged, {sync.reused} known content, "
                f"{sync.retired} gone; {candidate_pairs(result.match)}, "
                f"{result.match.evaluated} newly checked; index {settings.db}",
                markup=False,
                highlight=False,
            )
            if sync.unlisted:  # each an error row too
                err.print(
                    f"{sync.unlisted} folder(s) could not be read: their files were not "
                    "listed, and those in the index are kept as they were; see `damdup errors`",
                    style="yellow",
                )
            if result.errors > sync.unlisted:
                err.print(
                    f"{result.errors - sync.unlisted} file(s) could not be indexed: "
                    "see `damdup errors`",
                    style="yellow",
                )
        return EXIT_SOME_FAILED if result.errors or result.failed_units else EXIT_OK
    finally:
        store.close()


def lock_units(
    locks: ExitStack, settings: Settings, adapters: dict[str, Any], wait_s: float = 0.0
) -> dict[str, str]:
    """Take each unit's lock into `locks`; a unit another process holds is
    dropped from `adapters` and returned with the holder named."""
    busy: dict[str, str] = {}
    for unit in list(adapters):
        try:
            locks.enter_context(UnitLock(settings.db, unit, wait_s=wait_s))
        except UnitBusy as exc:
            busy[unit] = error_text(exc)
            del adapters[unit]
    return busy


def cmd_sync(args: argparse.Namespace, ctx: Context) -> int:
    config, settings = ctx.need_config(), ctx.settings
    adapters = build_adapters(config, args.unit)
    store = open_store(ctx, create=True)
    try:
        with ExitStack() as locks:
            # Units another sync (a daemon, a webhook check) holds are skipped.
            busy = lock_units(locks, settings, adapters)
            with progress_bar(err.is_terminal and not args.quiet) as progress:
                result = sync_and_match(
                    store, adapters, settings, full=args.full, progress=progress,
                    allow_empty=args.allow_empty,
                )  # fmt: skip
            # The units' originals tell which copy is the original (read once
            # per group of copies; saved in the index). Only the groups the
            # sync's assets reach are clustered again.
            clusters, cross_unit = cluster_counts(store, settings, OriginalReader(store, adapters))
    finally:
        store.close()
    if args.format == "json":
        payload = {
            "units": [sync.as_dict() for sync in result.syncs],
            "failed_units": result.failed_units,
            "busy_units": busy,
            "errors": result.errors,
            "candidates": result.match.candidates,
            "searched": result.match.searched,
            "pairs_checked": result.match.evaluated,
            "originals_read": result.match.originals_read,
            "originals_bytes": result.match.originals_bytes,
            "clusters": clusters,
            "cross_unit_clusters": cross_unit,
            "db": str(settings.db),
        }
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        _print_sync(result, settings, clusters, cross_unit)
        for unit, reason in busy.items():
            err.print(f"{shown(unit)}: skipped: {shown(reason)}", style="yellow", markup=False)
    return EXIT_SOME_FAILED if result.errors or result.failed_units or busy else EXIT_OK


def _print_sync(result: RunResult, settings: Settings, clusters: int, cross_unit: int) -> None:
    table = Table(title="sync", title_justify="left")
    for column in ("unit", "listing", "listed", "unchanged", "fetched", "image bytes",
                   "fingerprinted", "gone", "errors"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("unit", "listing") else "right")
    for sync in result.syncs:
        if sync.unit in result.failed_units:
            kind = "failed"
        elif sync.incremental:
            kind = "changes"
        else:
            kind = "full"
        if sync.resumed:
            kind += " (resumed)"
        table.add_row(
            sync.unit, kind, str(sync.listed), str(sync.unchanged), str(sync.fetched),
            f"{sync.fetched_bytes:,}", str(sync.fingerprinted), str(sync.retired),
            str(sync.errors),
        )  # fmt: skip
    out.print(table)
    for unit, reason in result.failed_units.items():
        err.print(f"{shown(unit)}: sync stopped: {shown(reason)}", style="red", markup=False)
    for sync in result.syncs:
        if sync.unlisted:
            err.print(
                f"{shown(sync.unit)}: {sync.unlisted} folder(s) could not be read: their files "
                "were not listed, and those in the index are kept as they were",
                style="yellow",
                markup=False,
            )
    out.print(
        f"{candidate_pairs(result.match)}, {result.match.evaluated} newly checked; "
        f"{clusters} duplicate clusters, {cross_unit} across units; index {settings.db}",
        markup=False,
        highlight=False,
    )
    if result.errors:
        err.print(
            f"{result.errors} asset(s) could not be indexed: see `damdup errors`", style="yellow"
        )


def _age(stamp: str | None) -> str:
    if not stamp:
        return ""
    from datetime import UTC, datetime

    seconds = (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    settings = ctx.settings
    configured: dict[str, str] = {}
    if ctx.config is not None:
        configured = {name: unit.platform for name, unit in ctx.config.units.items()}
    store = open_store(ctx)
    try:
        status = store.unit_status()
        figures = unit_figures(store, settings)
        held: dict[str, int] = {}
        for holding in store.held(sorted(set(status) | set(configured))):
            held[holding.unit] = held.get(holding.unit, 0) + 1
    finally:
        store.close()
    rows: list[dict[str, Any]] = []
    for unit in list(configured) + sorted(set(status) - set(configured)):
        state = status.get(unit)
        counts = figures.get(unit, {"duplicates": 0, "candidates": 0})
        live = state.live_assets if state else 0
        redundant = counts["duplicates"] + counts["candidates"]
        rows.append(
            {
                "unit": unit,
                "platform": configured.get(unit, ""),
                "last_sync": state.last_sync_finished or state.last_sync_started if state else None,
                "last_sync_complete": state.last_sync_complete if state else False,
                "last_complete_sync": state.last_complete_sync if state else None,
                "assets": live,
                "errors": state.errors if state else 0,
                "cursor_age": _age(state.cursor_updated) if state else "",
                "duplicates": counts["duplicates"],
                "candidates": counts["candidates"],
                "redundancy_pct": round(100.0 * redundant / live, 1) if live else 0.0,
                "held": held.get(unit, 0),
            }
        )
    if args.format == "json":
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return EXIT_OK
    table = Table(title=ctx.index_line, title_justify="left")
    for column in ("unit", "platform", "last sync", "assets", "errors", "cursor age",
                   "duplicates", "to review", "redundancy", "held"):  # fmt: skip
        table.add_column(
            column, justify="right" if column not in ("unit", "platform", "last sync") else "left"
        )
    for row in rows:
        last = row["last_sync"] or "never"
        if row["last_sync"] and not row["last_sync_complete"]:
            last += " (unfinished)"
        table.add_row(
            row["unit"], row["platform"], last, str(row["assets"]), str(row["errors"]),
            row["cursor_age"], str(row["duplicates"]), str(row["candidates"]),
            f"{row['redundancy_pct']:.1f} %", str(row["held"]),
        )  # fmt: skip
    out.print(table)
    if any(row["held"] for row in rows):
        out.print(
            "held: assets whose marks a revert holds back; `damdup push --release` writes them",
            markup=False,
            highlight=False,
        )
    return EXIT_OK


def load_clusters(ctx: Context) -> tuple[list[Cluster], list[Relation]]:
    store = open_store(ctx)
    try:
        return current_clusters(store, ctx.settings)
    finally:
        store.close()


def cluster_lines(cluster: dict[str, Any]) -> list[str]:
    """One cluster as plain aligned lines (a table per cluster cost ~2 ms each:
    minutes for the tens of thousands of a city's index)."""
    canonical = cluster["canonical"]
    rows = [("canonical", shown(canonical["unit"]), shown(canonical["id"]), "", "")]
    rows += [
        (
            member["mark"],
            shown(member["unit"]),
            shown(member["id"]),
            member["tier"],
            f"pHash {member['phash_distance']}  dHash {member['dhash_distance']}",
        )
        for member in cluster["members"]
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [
        f"cluster {cluster['cluster']} · {len(cluster['members']) + 1} copies · {cluster['tier']}"
    ]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append(("  " + "  ".join([*cells, row[4]])).rstrip())
    lines.append(f"  canonical because: {cluster['reason']}")
    lines.append("")
    return lines


def load_listing(ctx: Context) -> dict[str, Any]:
    store = open_store(ctx)
    try:
        return cluster_listing(store, ctx.settings)
    finally:
        store.close()


def cmd_clusters(args: argparse.Namespace, ctx: Context) -> int:
    listing = load_listing(ctx)
    clusters: list[dict[str, Any]] = listing["clusters"]
    similar: list[dict[str, Any]] = listing["similar"]
    if args.tier:
        clusters = [c for c in clusters if any(m["tier"] == args.tier for m in c["members"])]
    if args.cross_unit:
        clusters = [c for c in clusters if spans_units(c)]
        similar = [r for r in similar if r["a"]["unit"] != r["b"]["unit"]]
    if args.format == "json":
        payload = {"clusters": clusters, "similar": similar}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        return EXIT_OK
    if not clusters:
        out.print(f"No duplicate clusters in {ctx.index_line}.", markup=False, highlight=False)
    lines = [line for cluster in clusters for line in cluster_lines(cluster)]
    if similar and args.tier in (None, Tier.SIMILAR.value):
        lines.append(f"Other shots of the same scene (related, never merged): {len(similar)}")
        listed = similar if args.all else similar[:SIMILAR_SHOWN]
        lines += [
            f"  {shown(r['a']['unit'])}:{shown(r['a']['id'])}  ~  "
            f"{shown(r['b']['unit'])}:{shown(r['b']['id'])}  "
            f"(pHash {r['phash_distance']}, dHash {r['dhash_distance']})"
            for r in listed
        ]
        if len(listed) < len(similar):
            lines.append(
                f"  ... and {len(similar) - len(listed)} more (--all, or `damdup export relations`)"
            )
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, ctx: Context) -> int:
    settings = ctx.settings
    store = open_store(ctx)
    try:
        a, b = resolve(store, args.a), resolve(store, args.b)
        assert a.sha256 is not None and b.sha256 is not None  # resolve refuses unindexed assets
        fa, fb = store.fingerprint(a.sha256), store.fingerprint(b.sha256)
        if fa is None or fb is None:
            raise UsageError("fingerprint missing: scan again")
        from connector.engine.matcher import explain_pair  # with its compiled search

        evidence, verdict, originals = explain_pair(
            fa, fb, OriginalReader(store, {}), settings.max_pixels, store
        )
        decision = store.decisions().get(ordered(fa.sha256, fb.sha256))
        _clusters, relations = current_clusters(store, settings)
    finally:
        store.close()
    indexed = next((r for r in relations if {r.a.key, r.b.key} == {a.key, b.key}), None)
    report = {
        "a": {"asset": a.key, **fa.as_dict()},
        "b": {"asset": b.key, **fb.as_dict()},
        "phash_distance": evidence.phash_distance,
        "dhash_distance": evidence.dhash_distance,
        "same_bytes": evidence.same_bytes,
        "same_payload": evidence.same_payload,
        "same_pixels": evidence.same_pixels,
        "pixel_check": evidence.pixel_check,
        "capture_contradictions": list(evidence.contradictions),
        **originals,
        "tier": verdict.tier.value if verdict.tier else None,
        "duplicate": verdict.tier in DUPLICATE_TIERS,
        "reasons": verdict.reasons,
        "decision": decision.__dict__ if decision else None,
        "index_tier": indexed.edge.tier.value if indexed else None,
        "index_reasons": list(indexed.edge.reasons) if indexed else [],
    }
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
        return EXIT_OK
    out.print(f"[bold]{named(a.key)}[/]  vs  [bold]{named(b.key)}[/]")
    out.print(
        f"  sizes: {fa.width}x{fa.height} {fa.format}  vs  {fb.width}x{fb.height} {fb.format}"
    )
    out.print(
        f"  pHash distance {evidence.phash_distance}, dHash distance {evidence.dhash_distance}"
    )
    out.print(f"  same bytes: {evidence.same_bytes}; same payload: {evidence.same_payload}; "
              f"same decoded pixels: {_maybe(evidence.same_pixels)}")  # fmt: skip
    if evidence.pixel_check:
        check = evidence.pixel_check
        out.print(
            f"  pixel check: {'passed' if check.get('passed') else 'failed'}: {check.get('reason')}"
        )
    out.print(f"  capture facts A: {fa.capture.as_dict() or 'none'}")
    out.print(f"  capture facts B: {fb.capture.as_dict() or 'none'}")
    tier = verdict.tier.value if verdict.tier else "not related"
    label = "duplicate" if verdict.tier in DUPLICATE_TIERS else "not a duplicate"
    out.print(f"  [bold]tier: {tier}[/] ({label})")
    for reason in verdict.reasons:
        out.print(f"   - {reason}")
    if decision:
        out.print(
            f"  reviewer decision: {decision.decision} by {decision.decided_by} "
            f"at {decision.decided_at} (outranks the tier above)"
        )
    if indexed is not None and (indexed.edge.tier != verdict.tier or decision):
        out.print(f"  [bold]in the index: {indexed.edge.tier.value}[/]")
        for reason in indexed.edge.reasons[len(verdict.reasons) :]:
            out.print(f"   - {reason}")
    return EXIT_OK


def _maybe(value: bool | None) -> str:
    return "not needed" if value is None else str(value)


def cmd_errors(args: argparse.Namespace, ctx: Context) -> int:
    store = open_store(ctx)
    try:
        rows = store.errors(args.unit)
    finally:
        store.close()
    if args.format == "json":
        payload = [{"unit": r.unit, "id": r.asset_id, "reason": r.error} for r in rows]
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    elif not rows:
        out.print(f"No errors in {ctx.index_line}.", markup=False, highlight=False)
    else:
        table = Table(title=f"{len(rows)} asset(s) could not be indexed", title_justify="left")
        table.add_column("unit")
        table.add_column("id", overflow="fold")
        table.add_column("reason", overflow="fold")
        for row in rows:
            table.add_row(row.unit, plain(row.asset_id), plain(row.error or ""))
        out.print(table)
    return EXIT_SOME_FAILED if rows else EXIT_OK


def relation_rows(relations: list[Relation]) -> Iterator[dict[str, Any]]:
    for relation in relations:
        cluster = relation.cluster
        yield {
            "unit_a": relation.a.unit,
            "id_a": relation.a.asset_id,
            "unit_b": relation.b.unit,
            "id_b": relation.b.asset_id,
            "tier": relation.edge.tier.value,
            "phash_distance": relation.edge.phash_distance,
            "dhash_distance": relation.edge.dhash_distance,
            "cluster": cluster.id if cluster else "",
            "canonical": cluster.canonical.key if cluster else "",
        }


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    _clusters, relations = load_clusters(ctx)
    target: TextIO = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        if args.format == "csv":
            write_csv(target, RELATION_FIELDS, relation_rows(relations))
        else:
            for row in relation_rows(relations):
                target.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if target is not sys.stdout:
            target.close()
    if not relations:  # an empty file is an answer too: say which index gave it
        err.print(
            f"damdup: no related pairs in {ctx.index_line}"
            + (": only the header was written" if args.format == "csv" else ""),
            markup=False,
            highlight=False,
        )
    elif args.output:
        err.print(
            f"damdup: {len(relations)} relations written to {args.output} ({ctx.index_line})",
            markup=False,
            highlight=False,
        )
    return EXIT_OK


def _marks_text(marks: Marks) -> str:
    if marks.empty:
        return "(none)"
    parts = [" ".join(marks.labels) or "-"]
    if marks.cluster:
        parts.append(marks.cluster)
    if marks.canonical_url:
        parts.append(f"canonical {marks.canonical_url}")
    return " · ".join(parts)


PUSH_COLUMNS = [o for o in Outcome]


def cmd_push(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.need_config()
    adapters = build_adapters(config, args.unit)
    writes = {name: unit.writes for name, unit in config.units.items()}
    store = open_store(ctx)
    try:
        if args.history:
            return _print_push_history(store)
        return _push(args, ctx, store, adapters, writes)
    finally:
        store.close()


def _push(
    args: argparse.Namespace,
    ctx: Context,
    store: IndexStore,
    adapters: dict[str, Any],
    writes: dict[str, bool],
) -> int:
    settings = ctx.settings
    with ExitStack() as locks:
        # A push beside a sync or another push of a unit would journal marks
        # that the other is changing: wait for each unit's lock, then skip it.
        busy = lock_units(locks, settings, adapters, wait_s=args.lock_wait)
        released = 0
        if args.release and (args.dry_run or args.revert is not None):
            raise UsageError("--release ends holds and pushes: not with --dry-run or --revert")
        if args.release:
            released = store.release_holds(list(adapters))
        if args.revert is not None:
            try:
                report = revert(
                    store,
                    adapters,
                    writes,
                    args.revert,
                    dry_run=args.dry_run,
                    concurrency=settings.fetch_concurrency,
                )
            except UnknownRun as exc:
                raise UsageError(error_text(exc)) from exc
        else:
            clusters, relations = current_clusters(store, settings)
            links = Links(link_adapters(ctx.config, adapters))
            plan(store, list(adapters), clusters, relations, links)
            report = push(
                store,
                adapters,
                writes,
                dry_run=args.dry_run,
                concurrency=settings.fetch_concurrency,
            )
    report.failed_units.update(busy)
    if args.report:
        _write_push_report(report, Path(args.report))
    if args.format == "json":
        payload = {
            "run": report.run,
            "revert_of": args.revert,
            "dry_run_units": report.dry_run_units,
            "report_only_units": report.report_only_units,
            "failed_units": report.failed_units,
            "released": released,
            "held": [{"unit": unit, "asset_id": asset_id} for unit, asset_id in report.held],
            "changes": [change.as_dict() for change in report.changes],
        }
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        if released:
            out.print(f"released {released} held asset(s)")
        _print_push(report, list(adapters), args.revert, writes)
    return EXIT_SOME_FAILED if report.failed_units or report.count(Outcome.FAILED) else EXIT_OK


def _print_push(
    report: PushReport, units: list[str], revert_of: int | None, writes: dict[str, bool]
) -> None:
    what = f"revert of push run {revert_of}" if revert_of is not None else "push"
    out.print(f"[bold]{what}[/]: run {report.run}")
    table = Table(title_justify="left")
    table.add_column("unit")
    table.add_column("mode")
    for outcome in PUSH_COLUMNS:
        table.add_column(outcome.value, justify="right")
    for unit in units:
        if unit in report.report_only_units:
            mode = "read-only: marks in report"
        elif unit in report.dry_run_units:
            mode = "dry run"
        else:
            mode = "writes"
        table.add_row(unit, mode, *(str(report.count(o, unit)) for o in PUSH_COLUMNS))
    out.print(table)
    # Every asset this run changed or would change, and why any was not: a
    # real push says what it wrote as plainly as a dry run says what it would.
    listed = [c for c in report.changes if c.outcome not in (Outcome.ALREADY, Outcome.REPORT_ONLY)]
    for change in listed:
        line = (
            f"  {change.outcome.value:>12}  {shown(change.unit)}:{shown(change.asset_id)}  "
            f"{shown(_marks_text(change.before))}  →  {shown(_marks_text(change.after))}"
        )
        if change.error:
            line += f"  ({shown(change.error)})"
        out.print(line, markup=False, highlight=False)
    for unit in report.report_only_units:
        if report.count(Outcome.REPORT_ONLY, unit):
            out.print(
                f"{unit}: read-only platform; the marks of its "
                f"{report.count(Outcome.REPORT_ONLY, unit)} asset(s) are in the report "
                "(--report FILE.csv, or --format json)"
            )
    for unit, reason in report.failed_units.items():
        err.print(f"{unit}: push stopped: {shown(reason)}", style="red", markup=False)
    if report.held:
        held_units = sorted({unit for unit, _ in report.held})
        out.print(
            f"{len(report.held)} asset(s) held back by a revert in {', '.join(held_units)}: "
            "their marks are not written until they change; `damdup push --release` "
            "writes them now (docs/writeback.md, Revert)",
            markup=False,
            highlight=False,
        )
    would = {c.unit for c in report.changes if c.outcome == Outcome.WOULD_CHANGE}
    writes_off = [u for u in report.dry_run_units if u in would and not writes.get(u, False)]
    asked = [u for u in report.dry_run_units if u in would and writes.get(u, False)]
    if asked:
        out.print("Dry run (--dry-run): nothing was sent to " + ", ".join(asked) + ".")
    if writes_off:
        out.print(
            "Dry run: nothing was sent to "
            + ", ".join(writes_off)
            + ". Set `writes = true` in a unit's configuration to write its marks."
        )


PUSH_REPORT_FIELDS = [
    "run", "unit", "asset_id", "url", "outcome", "before_marks", "before_cluster",
    "before_canonical", "marks", "cluster", "canonical", "error",
]  # fmt: skip


def _write_push_report(report: PushReport, path: Path) -> None:
    """Every change of the run, read-only units' marks included, as CSV."""
    with path.open("w", newline="", encoding="utf-8") as target:
        write_csv(
            target,
            PUSH_REPORT_FIELDS,
            (
                {
                    "run": report.run,
                    "unit": change.unit,
                    "asset_id": change.asset_id,
                    "url": change.url,
                    "outcome": change.outcome.value,
                    "before_marks": " ".join(change.before.labels),
                    "before_cluster": change.before.cluster or "",
                    "before_canonical": change.before.canonical_url or "",
                    "marks": " ".join(change.after.labels),
                    "cluster": change.after.cluster or "",
                    "canonical": change.after.canonical_url or "",
                    "error": change.error or "",
                }
                for change in report.changes
            ),
        )


def _print_push_history(store: IndexStore) -> int:
    table = Table(title="push runs", title_justify="left")
    for column in ("run", "started", "mode", "units", "outcomes"):
        table.add_column(column)
    for entry in store.push_runs():
        mode = "dry run" if entry.dry_run else "writes"
        if entry.revert_of is not None:
            mode += f", revert of {entry.revert_of}"
        outcomes = ", ".join(f"{k} {v}" for k, v in entry.stats.get("outcomes", {}).items())
        table.add_row(str(entry.id), entry.started_at, mode, " ".join(entry.units), outcomes)
    out.print(table)
    return EXIT_OK


def cmd_review_decide(args: argparse.Namespace, ctx: Context) -> int:
    store = open_store(ctx)
    try:
        decide(store, args.a, args.b, args.decision, args.by)
        now = standing(store, ctx.settings, [resolve(store, args.a), resolve(store, args.b)])
    finally:
        store.close()
    out.print(
        f"recorded: {named(args.a)} / {named(args.b)}: {args.decision} by {named(args.by.strip())}"
    )
    for place in now:
        out.print(f"  {_standing_line(place)}")
    return EXIT_OK


def _standing_line(place: Standing) -> str:
    """What a decision left an asset as: said plainly where it changed no mark
    (two duplicate candidates of one canonical judged the same stay
    candidates of it until a decision on one of them and the canonical)."""
    key = named(place.asset.key)
    canonical = named(place.canonical or "")
    if place.mark == "canonical":
        return f"{key}: the canonical of its cluster"
    if place.mark == "duplicate":
        return f"{key}: a confirmed duplicate of {canonical}"
    if place.mark == "duplicate-candidate":
        return (
            f"{key}: still a candidate duplicate of {canonical}; a decision on the two"
            f" confirms it (damdup review decide {canonical} {key} same)"
        )
    return f"{key}: in no cluster of duplicates"


def cmd_review_list(args: argparse.Namespace, ctx: Context) -> int:
    store = open_store(ctx)
    try:
        items = queue(store, include_decided=args.all, limit=args.limit)
    finally:
        store.close()
    if args.format == "json":
        sys.stdout.write(
            json.dumps([item.as_dict() for item in items], indent=2, ensure_ascii=False) + "\n"
        )
        return EXIT_OK
    if not items:
        out.print(f"Nothing to review in {ctx.index_line}.", markup=False, highlight=False)
        return EXIT_OK
    table = Table(title=f"{len(items)} pair(s) to review", title_justify="left")
    for column in ("kind", "a", "b", "pHash", "dHash", "decision"):
        table.add_column(column, overflow="fold", justify="right" if "Hash" in column else "left")
    for item in items:
        decided = f"{item.decision.decision} by {item.decision.decided_by}" if item.decision else ""
        table.add_row(
            item.label, plain(item.a.key), plain(item.b.key), str(item.phash_distance),
            str(item.dhash_distance), decided,
        )  # fmt: skip
    out.print(table)
    out.print("Decide with: damdup review decide A B same|different|canonical --by NAME")
    return EXIT_OK


def cmd_review_export(args: argparse.Namespace, ctx: Context) -> int:
    store = open_store(ctx)
    try:
        # utf-8-sig: spreadsheets read ä and ö right only with the byte order mark.
        with open(args.csv, "w", newline="", encoding="utf-8-sig") as target:
            written = export_csv(store, target, include_decided=args.all)
    finally:
        store.close()
    out.print(f"{written} pair(s) written to {args.csv}; fill in `decision` and import it")
    return EXIT_OK


def cmd_review_import(args: argparse.Namespace, ctx: Context) -> int:
    try:
        source = open(args.file, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from exc
    store = open_store(ctx)
    try:
        with source:
            summary = import_csv(store, source, default_by=args.by)
    finally:
        store.close()
    out.print(
        f"{summary.recorded} decision(s) recorded, {summary.unchanged} unchanged, "
        f"{summary.skipped} row(s) without a decision"
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, ctx: Context) -> int:
    settings = ctx.settings
    from connector.webhooks import WebhookService  # with the search of its checks

    open_store(ctx).close()  # the review page and the checks read an index that exists
    service: WebhookService | None = None
    if ctx.config is not None:
        # With a configuration: the units' webhooks, their checks and lookups too.
        service = WebhookService.from_config(ctx.config)

    def announce(url: str) -> None:
        err.print(f"damdup: review page at {url} (Ctrl-C stops it); {ctx.index_line}")
        if service is not None:
            base = url.removesuffix("/review")
            units = ", ".join(service.hook_units) or "none (no DAMDUP_<UNIT>_WEBHOOK_SECRET set)"
            err.print(f"damdup: webhooks at {base}/hooks/<unit> for: {units}")

    try:
        serve(
            settings.db, host=args.host, port=args.port,
            allowed_hosts=args.allow_host or (), announce=announce,
            extend=service.mount if service is not None else None, settings=settings,
        )  # fmt: skip
    except ServeError as exc:
        raise UsageError(error_text(exc)) from exc
    finally:
        if service is not None:
            service.close()
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.need_config()
    # Every request attempt of every unit's adapter is timed for /metrics.
    metrics = Metrics()
    adapters = build_adapters(config, args.unit, observer=metrics.observe_request)
    if not 0.0 <= args.jitter < 1.0:
        raise UsageError(f"--jitter {args.jitter}: give a fraction from 0 up to (not) 1")
    if not 0 <= args.nice <= 19:
        raise UsageError(f"--nice {args.nice}: give 0 (as started) to 19")
    configure_json_logging()
    # The daemon's syncs are background work: `damdup serve`'s webhook checks
    # and lookups, which someone waits for, get the CPU first.
    nice = os.nice(args.nice)
    try:
        return run_daemon(
            config, adapters, jitter=args.jitter, once=args.once, host=args.metrics_host,
            port=args.metrics_port, port_file=Path(args.port_file) if args.port_file else None,
            metrics=metrics, nice=nice,
        )  # fmt: skip
    except OSError as exc:  # the metrics port is taken, the port file cannot be written
        raise UsageError(f"daemon: {error_text(exc)}") from exc


def cmd_worker(args: argparse.Namespace, ctx: Context) -> int:
    """A Celery worker: fingerprints and pixel checks for the runs of any host
    whose engine is "celery" on the same broker."""
    settings = ctx.settings
    if settings.broker is None:
        raise UsageError(
            "damdup worker needs a broker: set [damdup] broker or $DAMDUP_BROKER "
            "(redis://HOST:6379/0 or amqp://USER@HOST:5672//)"
        )
    if args.concurrency is not None and not 1 <= args.concurrency <= 256:
        raise UsageError(f"--concurrency {args.concurrency}: give 1 to 256 worker processes")
    queues = [name.strip() for name in args.queues.split(",") if name.strip()]
    if not queues:
        raise UsageError("--queues: name at least one queue")
    from connector.engine.celery_app import run_worker  # Celery only where it is used

    run_worker(settings, args.concurrency or settings.workers, queues, verbose=args.verbose)
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    config, settings = ctx.need_config(), ctx.settings
    units = [name.strip() for name in args.units.split(",") if name.strip()]
    if not units:
        raise UsageError("--units: name at least one configured unit (A,B,...)")
    adapters = build_adapters(config, units)
    directory = Path(args.report)
    store = open_store(ctx, create=True)
    try:
        with ExitStack() as locks:
            # A migration covers every chosen unit: wait a while for a sync under way.
            busy = lock_units(locks, settings, adapters, wait_s=args.lock_wait)
            if busy:
                raise UsageError("; ".join(busy.values()) + ": try again when it has finished")
            with progress_bar(err.is_terminal and not args.quiet) as progress:
                result = sync_and_match(
                    store, adapters, settings, full=args.full, progress=progress,
                    allow_empty=args.allow_empty,
                )  # fmt: skip
        links = Links(link_adapters(config, adapters))
        report = migration.build_report(
            store, settings, list(adapters), result.failed_units, links,
            OriginalReader(store, adapters),
        )  # fmt: skip
        try:
            migration.write_report(report, store, directory)
        except OSError as exc:
            raise UsageError(
                f"cannot write the report into {directory}: {error_text(exc)}"
            ) from exc
    finally:
        store.close()
    migration.print_summary(report, out)
    for unit, reason in result.failed_units.items():
        err.print(f"{shown(unit)}: sync stopped: {shown(reason)}", style="red", markup=False)
    if result.errors:
        err.print(
            f"{result.errors} asset(s) could not be indexed: see `damdup errors`", style="yellow"
        )
    out.print(f"report: {directory / 'report.html'}", markup=False, highlight=False)
    return EXIT_SOME_FAILED if result.errors or result.failed_units else EXIT_OK


def cmd_lookup(args: argparse.Namespace, ctx: Context) -> int:
    """Which version of an image is the authoritative one."""
    settings = ctx.settings
    target: str = args.image
    if ctx.config is not None and "://" in target:  # every unit must be usable for a URL
        adapters = build_adapters(ctx.config)
    else:  # for the links only: a unit that cannot be built is left out
        adapters = link_adapters(ctx.config)
    open_store(ctx).close()
    # The lookup's modules (and their compiled search) only where it runs.
    from connector.engine.check import Checker
    from connector.engine.lookup import LookupRefused

    checker = Checker(settings.db, settings, adapters, {})
    try:
        if "://" in target:
            answer = checker.lookup(url=target)
        else:
            try:
                with open(target, "rb") as handle:
                    data = handle.read(settings.max_file_bytes + 1)
            except OSError as exc:
                raise UsageError(f"cannot read {target}: {exc.strerror or exc}") from exc
            answer = checker.lookup(data=data)
    except LookupRefused as exc:
        raise UsageError(f"lookup refused: {error_text(exc)}") from exc
    finally:
        checker.close()
    if args.format == "json":
        sys.stdout.write(json.dumps(answer, indent=2, ensure_ascii=False) + "\n")
    else:
        _print_lookup(answer, ctx.index_line)
    return EXIT_OK


def _print_lookup(answer: LookupAnswer, index_line: str) -> None:
    if not answer["match"]:  # an answer about one index: say which
        out.print(f"[bold]no match[/] in {escape(index_line)}: no indexed asset is this image")
    for cluster in answer["clusters"]:
        canonical = cluster["canonical"]
        title = f"cluster {cluster['id']}" if cluster["id"] else "single copy"
        out.print(
            f"[bold]{title}[/]: canonical {named(canonical['unit'])}:{named(canonical['asset_id'])}"
        )
        out.print(f"  {shown(canonical['link'])}", markup=False, highlight=False)
        out.print(f"  why: {canonical['reason']}", markup=False, highlight=False)
        facts = ", ".join(
            f"{name} {canonical['metadata'].get(name) or '(missing)'}"
            for name in ("location", "date", "department")
        )
        out.print(f"  {facts}", markup=False, highlight=False)
        table = Table(title_justify="left")
        for column in ("unit", "asset id", "role", "tier", "this image", "link"):
            table.add_column(column)
        table.add_row(
            canonical["unit"], plain(canonical["asset_id"]), "canonical", "",
            canonical.get("match") or "", plain(canonical["link"]),
        )  # fmt: skip
        for row in cluster["copies"]:
            table.add_row(
                row["unit"], plain(row["asset_id"]), row.get("role", ""), row.get("tier") or "",
                row.get("match") or "", plain(row["link"]),
            )  # fmt: skip
        out.print(table)
    if answer["similar"]:
        out.print("[bold]other shots of this scene[/] (not copies):")
        for other in answer["similar"]:
            out.print(
                f"  {shown(other['unit'])}:{shown(other['asset_id'])}  {shown(other['link'])}",
                markup=False,
                highlight=False,
            )


def cmd_audit_metadata(args: argparse.Namespace, ctx: Context) -> int:
    units = args.unit
    config = ctx.config
    if config is not None:  # its units in its order (no secrets needed)
        unknown = [name for name in units or () if name not in config.units]
        if unknown:
            raise UsageError(
                f"unknown unit(s) {', '.join(unknown)}; configured: {', '.join(config.units)}"
            )
        units = units or list(config.units)
    store = open_store(ctx)
    try:
        audit = migration.audit_metadata(store, units)
    finally:
        store.close()
    if args.csv:
        try:
            written = migration.write_audit_csv(audit, Path(args.csv))
        except OSError as exc:
            raise UsageError(f"cannot write {args.csv}: {exc.strerror}") from exc
    if args.format == "json":
        sys.stdout.write(json.dumps(audit.as_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        migration.print_audit(audit, out)
        if args.csv:
            out.print(f"{written} asset(s) listed in {args.csv}", markup=False, highlight=False)
    return EXIT_OK


# -- parser ------------------------------------------------------------------

ALLOW_EMPTY_HELP = (
    "let a listing that finds no assets at all retire every asset the index holds of its "
    "unit (an emptied folder or platform); without it such a unit fails and nothing is retired"
)


def index_options(sub: argparse.ArgumentParser) -> None:
    """--db and --config, on every command, resolved by one rule (`resolve_context`)."""
    sub.add_argument(
        "--db",
        help="index: a SQLite file or a postgresql:// URL (else $DAMDUP_DB, else the "
        "configuration's [damdup] db, else damdup.sqlite)",
    )
    sub.add_argument(
        "--config",
        help=f"configuration file (else $DAMDUP_CONFIG, else {DEFAULT_CONFIG} when it exists)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="damdup", description="Find duplicate images across asset libraries."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress events")
    parser.add_argument("--version", action="version", version=f"damdup {damdup_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        index_options(sub)
        return sub

    scan = command("scan", "index every image under a folder and match it")
    scan.add_argument("path")
    scan.add_argument("--unit", help="unit name the folder's assets are filed under (scan)")
    scan.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    scan.add_argument("--format", choices=["text", "json"], default="text")
    scan.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    scan.add_argument("--allow-empty", action="store_true", help=ALLOW_EMPTY_HELP)
    scan.add_argument(
        "--lock-wait", type=float, default=600.0, metavar="SECONDS",
        help="how long to wait for another scan or sync of the same unit (default 600)",
    )  # fmt: skip
    scan.set_defaults(handler=cmd_scan)

    sync = command("sync", "bring the index up to date with the configured units, then match")
    sync.add_argument("--unit", action="append", help="only this unit (repeatable)")
    sync.add_argument("--full", action="store_true", help="list everything, not only changes")
    sync.add_argument("--allow-empty", action="store_true", help=ALLOW_EMPTY_HELP)
    sync.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    sync.add_argument("--format", choices=["text", "json"], default="text")
    sync.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sync.set_defaults(handler=cmd_sync)

    status = command("status", "per unit: last sync, assets, errors, duplicates, redundancy")
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.set_defaults(handler=cmd_status)

    clusters = command("clusters", "duplicate clusters with canonical and reason")
    clusters.add_argument("--tier", choices=[t.value for t in Tier])
    clusters.add_argument(
        "--cross-unit", action="store_true", help="only clusters that span several units"
    )
    clusters.add_argument(
        "--all", action="store_true", help=f"every related pair, not the first {SIMILAR_SHOWN}"
    )
    clusters.add_argument("--format", choices=["table", "json"], default="table")
    clusters.set_defaults(handler=cmd_clusters)

    explain = command("explain", "why two assets are or are not duplicates")
    explain.add_argument("a", help="unit:id, id or content digest prefix")
    explain.add_argument("b")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(handler=cmd_explain)

    errors = command("errors", "assets that could not be indexed, with the reason")
    errors.add_argument("--unit")
    errors.add_argument("--format", choices=["table", "json"], default="table")
    errors.set_defaults(handler=cmd_errors)

    export = command("export", "export what the index knows")
    export.add_argument("what", choices=["relations"])
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.set_defaults(handler=cmd_export)

    push_cmd = command("push", "write duplicate marks and canonical links back to the platforms")
    push_cmd.add_argument("--unit", action="append", help="only this unit (repeatable)")
    push_cmd.add_argument(
        "--dry-run", action="store_true", help="show what would change, even where writes are on"
    )
    push_cmd.add_argument(
        "--revert", type=int, metavar="RUN", help="put back what push run RUN changed"
    )
    push_cmd.add_argument("--history", action="store_true", help="list earlier push runs")
    push_cmd.add_argument(
        "--release", action="store_true",
        help="end every hold a revert left, then push the marks the index holds",
    )  # fmt: skip
    push_cmd.add_argument(
        "--report", metavar="FILE", help="every change as CSV, read-only units' marks included"
    )
    push_cmd.add_argument("--format", choices=["text", "json"], default="text")
    push_cmd.add_argument(
        "--lock-wait", type=float, default=120.0, metavar="SECONDS",
        help="how long to wait for a sync or push of a unit under way (default 120)",
    )  # fmt: skip
    push_cmd.set_defaults(handler=cmd_push)

    review = commands.add_parser("review", help="reviewer decisions")
    review_commands = review.add_subparsers(dest="review_command", required=True)

    def review_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = review_commands.add_parser(name, help=help_text, description=help_text)
        index_options(sub)
        return sub

    listing = review_command("list", "pairs awaiting a decision: duplicate-candidates, similar")
    listing.add_argument("--all", action="store_true", help="decided pairs too")
    listing.add_argument("--limit", type=int, help="at most this many pairs")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    listing.set_defaults(handler=cmd_review_list)
    decide_cmd = review_command("decide", "record a decision on two assets")
    decide_cmd.add_argument("a", help="unit:id, id or content digest prefix")
    decide_cmd.add_argument("b")
    decide_cmd.add_argument(
        "decision", choices=[d.value for d in Decision], help="canonical: A is the canonical"
    )
    decide_cmd.add_argument("--by", required=True, help="who decides")
    decide_cmd.set_defaults(handler=cmd_review_decide)
    export_cmd = review_command("export", "the review queue as CSV, for a spreadsheet")
    export_cmd.add_argument("--csv", required=True, metavar="FILE", help="file to write")
    export_cmd.add_argument("--all", action="store_true", help="decided pairs too")
    export_cmd.set_defaults(handler=cmd_review_export)
    import_cmd = review_command("import", "decisions from a CSV file made by `review export`")
    import_cmd.add_argument("file")
    import_cmd.add_argument("--by", help="who decided, for rows without decided_by")
    import_cmd.set_defaults(handler=cmd_review_import)

    serve_cmd = command("serve", "the review page on this machine (http://127.0.0.1:PORT/review)")
    serve_cmd.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve_cmd.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    serve_cmd.add_argument(
        "--allow-host", action="append", metavar="NAME",
        help="a further name browsers reach this server by (with --host; repeatable)",
    )  # fmt: skip
    serve_cmd.set_defaults(handler=cmd_serve)

    daemon_cmd = command("daemon", "sync, match and push each unit on its schedule")
    daemon_cmd.add_argument("--unit", action="append", help="only this unit (repeatable)")
    daemon_cmd.add_argument("--once", action="store_true", help="one cycle of each unit, then exit")
    daemon_cmd.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
        help=f"port of /healthz and /metrics (default {DEFAULT_METRICS_PORT}; 0: any free port)",
    )  # fmt: skip
    daemon_cmd.add_argument(
        "--metrics-host", default=DEFAULT_METRICS_HOST, help="address of /healthz and /metrics"
    )
    daemon_cmd.add_argument("--port-file", metavar="FILE", help="write the bound port there")
    daemon_cmd.add_argument(
        "--jitter", type=float, default=DEFAULT_JITTER,
        help=f"each interval varies by this fraction either way (default {DEFAULT_JITTER})",
    )  # fmt: skip
    daemon_cmd.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    daemon_cmd.add_argument(
        "--nice", type=int, default=BACKGROUND_NICE, metavar="N",
        help=f"lower the daemon's priority by N, so that `damdup serve` answers webhooks and "
        f"lookups first (default {BACKGROUND_NICE}; 0: as started; its sync workers add "
        f"{BACKGROUND_NICE} more)",
    )  # fmt: skip
    daemon_cmd.set_defaults(handler=cmd_daemon)

    migrate_cmd = command("migrate", "full sync of some units, then a redundancy report")
    migrate_cmd.add_argument("--units", required=True, metavar="A,B", help="units, comma-separated")
    migrate_cmd.add_argument("--report", required=True, metavar="DIR", help="folder to write into")
    migrate_cmd.add_argument(
        "--full", action=argparse.BooleanOptionalAction, default=True,
        help="list everything (default), or only changes since the last sync",
    )  # fmt: skip
    migrate_cmd.add_argument("--allow-empty", action="store_true", help=ALLOW_EMPTY_HELP)
    migrate_cmd.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    migrate_cmd.add_argument(
        "--lock-wait", type=float, default=120.0, metavar="SECONDS",
        help="how long to wait for a sync of a chosen unit that is under way (default 120)",
    )  # fmt: skip
    migrate_cmd.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    migrate_cmd.set_defaults(handler=cmd_migrate)

    worker_cmd = command(
        "worker",
        "run jobs (fingerprints, pixel checks) for runs whose engine is celery, on any host",
    )
    worker_cmd.add_argument(
        "--concurrency", type=int, metavar="N",
        help="worker processes (default: $DAMDUP_WORKERS, else all cores)",
    )  # fmt: skip
    worker_cmd.add_argument(
        "--queues", default="damdup", metavar="Q1,Q2",
        help="queues to take jobs from, comma-separated (default: damdup, where runs send them)",
    )  # fmt: skip
    worker_cmd.set_defaults(handler=cmd_worker)

    lookup_cmd = command("lookup", "which indexed version of an image is the authoritative one")
    lookup_cmd.add_argument("image", metavar="IMAGE_FILE|URL")
    lookup_cmd.add_argument("--format", choices=["text", "json"], default="text")
    lookup_cmd.set_defaults(handler=cmd_lookup)

    audit = commands.add_parser("audit", help="audits of the index")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_metadata = audit_commands.add_parser(
        "metadata", help="assets missing location, date or department, per unit"
    )
    index_options(audit_metadata)
    audit_metadata.add_argument("--unit", action="append", help="only this unit (repeatable)")
    audit_metadata.add_argument("--csv", metavar="FILE", help="every such asset as CSV")
    audit_metadata.add_argument("--format", choices=["text", "json"], default="text")
    audit_metadata.set_defaults(handler=cmd_audit_metadata)

    db_cmd = commands.add_parser("db", help="the index itself")
    db_commands = db_cmd.add_subparsers(dest="db_command", required=True)
    db_migrate = db_commands.add_parser(
        "migrate", help="copy the index (SQLite) into an empty PostgreSQL database",
        description="copy the index (--db, $DAMDUP_DB or [damdup] db; SQLite) whole into an "
        "empty PostgreSQL database: decisions, journal and outbox included",
    )  # fmt: skip
    index_options(db_migrate)
    db_migrate.add_argument(
        "--to", required=True, metavar="postgresql://USER@HOST/DATABASE",
        help="the database; its password from $PGPASSWORD or ~/.pgpass, never the URL",
    )  # fmt: skip
    db_migrate.add_argument("--format", choices=["text", "json"], default="text")
    db_migrate.set_defaults(handler=cmd_db_migrate)

    plugin_cmd = commands.add_parser(
        "wordpress-plugin", help="write damdup's WordPress plugin into a folder",
        description="write damdup's WordPress plugin into a folder "
        "(wp-content/plugins/damdup on the site), then activate it in WordPress",
    )  # fmt: skip
    plugin_cmd.add_argument("--output", required=True, metavar="DIR", help="folder to write into")
    plugin_cmd.add_argument("--force", action="store_true", help="replace files already there")
    plugin_cmd.set_defaults(handler=cmd_wordpress_plugin)
    return parser


def damdup_version() -> str:
    try:
        return importlib.metadata.version("damdup")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


def cmd_db_migrate(args: argparse.Namespace, ctx: Context) -> int:
    """The resolved SQLite index copied whole into an empty PostgreSQL
    database: a pilot grows without fetching anything again."""
    try:
        counts = migrate_to_postgresql(ctx.db, args.to)
    except IndexMissing as exc:
        raise UsageError(f"{exc} ({ctx.db_source}): nothing to migrate") from exc
    except DatabaseUrlError as exc:
        raise UsageError(f"--to: {error_text(exc)}") from exc
    except SchemaError as exc:
        raise UsageError(str(exc)) from exc
    if args.format == "json":
        out.print_json(json.dumps({"from": str(ctx.db), "to": args.to, "rows": counts}))
        return EXIT_OK
    out.print(
        f"copied {counts['assets']} assets, {counts['fingerprints']} fingerprints, "
        f"{counts['pairs']} pairs, {counts['decisions']} decisions, {counts['outbox']} outbox "
        f"rows and {counts['push_runs']} push runs from {ctx.db} into {describe_db(args.to)}; "
        f"point --db, $DAMDUP_DB or [damdup] db at {args.to} to use it",
        markup=False,
        highlight=False,
    )
    return EXIT_OK


def cmd_wordpress_plugin(args: argparse.Namespace, ctx: Context) -> int:
    try:
        written = write_plugin(Path(args.output), force=args.force)
    except PluginExists as exc:
        raise UsageError(error_text(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write into {args.output}: {exc.strerror or exc}") from exc
    for path in written:
        out.print(str(path), markup=False, highlight=False)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        ctx = resolve_context(args)
        handler: Callable[[argparse.Namespace, Context], int] = args.handler
        return handler(args, ctx)
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            err.print(
                f"damdup: bad setting {name} (${'DAMDUP_' + name.upper()} or [damdup] {name}): "
                f"{message}",
                style="red",
                markup=False,
                highlight=False,
            )
        return EXIT_USAGE
    except (UsageError, SchemaError, ConfigError, ReviewError) as exc:
        err.print(f"damdup: {error_text(exc)}", style="red", markup=False, highlight=False)
        return EXIT_USAGE
    except Busy as exc:
        err.print(f"damdup: {error_text(exc)}", style="red", markup=False, highlight=False)
        return EXIT_SOME_FAILED
    except EngineUnavailable as exc:  # the broker: what was indexed stays indexed
        err.print(
            f"damdup: {error_text(exc).rstrip('.')}; the run stopped, what it indexed is kept: "
            "run it again",
            style="red",
            markup=False,
            highlight=False,
        )
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        err.print("damdup: interrupted; the index keeps every page saved so far")
        return 130
    except BrokenPipeError:
        # `damdup export relations | head`: the reader has what it wanted.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
