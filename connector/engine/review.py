"""Reviewer decisions: the queue of pairs a person should look at, recording a
decision, and a CSV round trip for reviewers who work in spreadsheets.

A decision is keyed by the content digests of the two images (who and when
kept with it), so it holds for every asset with those bytes, a re-upload
included, and automation never writes one. Every way in (the CLI, the review
page, a CSV import) goes through the same checks here: the assets must exist
and be live, the pair must be one the index relates, and where the caller saw
the pair earlier (the page, an exported sheet) the contents must not have
changed since. A check that fails changes nothing.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from adapters.base import reason as error_text
from connector.core.fingerprint import RECIPE
from connector.core.index import AssetRow, DecisionRow, IndexStore, PairRow, ordered
from connector.core.settings import Settings
from connector.core.sheets import uncell, write_csv
from connector.core.tiers import TIER_ORDER, Decision, Tier
from connector.engine.clusters import MANDATORY, Shape, ShapeLookup, resolve_conflicts
from connector.engine.scan import cluster_listing

# The tiers a person settles: `duplicate-candidate` (near-identical: a copy
# until a reviewer says otherwise) and `similar` (another shot, never merged
# unless a reviewer says it is the same image).
QUEUE_TIERS = (Tier.NEAR_IDENTICAL, Tier.SIMILAR)
LABELS = {Tier.NEAR_IDENTICAL: "duplicate-candidate", Tier.SIMILAR: "similar"}

MAX_NAME_CHARS = 200

CSV_FIELDS = [
    "a", "b", "a_sha256", "b_sha256", "tier", "phash_distance", "dhash_distance",
    "a_url", "b_url",
    *(f"a_{name}" for name in MANDATORY), *(f"b_{name}" for name in MANDATORY),
    "a_size", "b_size", "reasons", "decision", "decided_by", "decided_at",
]  # fmt: skip
CSV_REQUIRED = ("a", "b", "a_sha256", "b_sha256", "decision")


# Spreadsheets run a cell that starts with one of these as a formula; text
# from the platforms (titles, places, URLs) must never do that on the reviewer's
# machine, so such cells are written with a leading apostrophe.
class ReviewError(Exception):
    """A decision that cannot be taken; the message says why, for a person."""


class InvalidInput(ReviewError):
    """The request itself is wrong (no reviewer name, unknown decision, bad row)."""


class UnknownAsset(ReviewError):
    """No asset in the index answers to the reference."""


class StalePair(ReviewError):
    """The pair is not (or no longer) one the index relates between live assets,
    or its contents changed since the caller saw it."""


class ImportRejected(ReviewError):
    """A CSV import with at least one bad row; nothing was imported."""

    def __init__(self, problems: Sequence[tuple[int, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  line {line}: {message}" for line, message in self.problems)
        super().__init__(f"{len(self.problems)} problem(s); nothing was imported:\n{lines}")


@dataclass(frozen=True)
class AssetView:
    """One side of a pair as a reviewer sees it."""

    key: str  # unit:id
    unit: str
    asset_id: str
    sha256: str
    url: str
    original_url: str | None
    metadata: dict[str, str | None]
    width: int | None
    height: int | None
    size_bytes: int | None
    format: str | None
    copies: tuple[str, ...]  # other live assets with the same bytes (they share the decision)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "unit": self.unit,
            "id": self.asset_id,
            "sha256": self.sha256,
            "url": self.url,
            "original_url": self.original_url,
            "metadata": {**dict.fromkeys(MANDATORY), **self.metadata},
            "width": self.width,
            "height": self.height,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "copies": list(self.copies),
        }


@dataclass(frozen=True)
class ReviewItem:
    a: AssetView
    b: AssetView
    tier: Tier  # what automation says, after conflicts between pairs are resolved
    phash_distance: int
    dhash_distance: int
    reasons: tuple[str, ...]
    decision: DecisionRow | None = None

    @property
    def label(self) -> str:
        return LABELS.get(self.tier, self.tier.value)

    @property
    def decided(self) -> bool:
        return self.decision is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "tier": self.tier.value,
            "label": self.label,
            "phash_distance": self.phash_distance,
            "dhash_distance": self.dhash_distance,
            "reasons": list(self.reasons),
            "decided": self.decided,
            "decision": decision_dict(self.decision) if self.decision else None,
        }


def decision_dict(row: DecisionRow) -> dict[str, Any]:
    return {
        "sha_a": row.sha_a,
        "sha_b": row.sha_b,
        "decision": row.decision,
        "canonical_sha": row.canonical_sha,
        "decided_by": row.decided_by,
        "decided_at": row.decided_at,
    }


@dataclass(frozen=True)
class ImportSummary:
    recorded: int  # new or changed decisions
    unchanged: int  # rows that repeat a decision already held (its who and when are kept)
    skipped: int  # rows without a decision

    def as_dict(self) -> dict[str, int]:
        return {"recorded": self.recorded, "unchanged": self.unchanged, "skipped": self.skipped}


# -- looking things up ---------------------------------------------------------


def resolve(store: IndexStore, reference: str) -> AssetRow:
    """The indexed asset a person means by `unit:id`, an id or a digest prefix."""
    asset = store.find_asset(reference)
    if asset is None:
        # A mistyped unit: the id alone may name one asset, of another unit.
        _unit, _, asset_id = reference.partition(":")
        near = store.find_asset(asset_id) if asset_id else None
        hint = f"; did you mean {near.key!r}?" if near is not None else ""
        raise UnknownAsset(
            f"no asset {reference!r} in the index{hint} (give unit:id, an id, or a digest prefix)"
        )
    if asset.sha256 is None:
        raise StalePair(f"{asset.key} could not be indexed: {asset.error}")
    return asset


class _Index:
    """What the checks need, read once: live pairs and decisions (a CSV import
    checks many rows against the same state)."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.pairs = {(p.sha_a, p.sha_b): p for p in store.pairs()}
        self.decisions = store.decisions()

    def check(
        self,
        a_ref: str,
        b_ref: str,
        decision: str,
        by: str,
        expect: tuple[str, str] | None,
        decided_at: str,
    ) -> tuple[DecisionRow, bool]:
        """The decision row, and whether it needs storing (identical bytes are
        always the same image; a repeated decision keeps its who and when)."""
        name = _reviewer(by)
        wanted = _decision(decision)
        (a, sha_a), (b, sha_b) = self._live(a_ref), self._live(b_ref)
        if expect is not None:
            for asset, now, listed in ((a, sha_a, expect[0]), (b, sha_b, expect[1])):
                if now != listed.strip().lower():
                    raise StalePair(
                        f"{asset.key} has changed since the pair was listed "
                        f"(content {now[:12]} now, {listed.strip()[:12]!r} listed)"
                    )
        row = DecisionRow(
            sha_a=sha_a,
            sha_b=sha_b,
            decision=wanted.value,
            canonical_sha=sha_a if wanted is Decision.CANONICAL else None,
            decided_by=name,
            decided_at=decided_at,
        )
        if sha_a == sha_b:
            if wanted is not Decision.SAME:
                raise InvalidInput(f"{a.key} and {b.key} have identical bytes; only `same` applies")
            return row, False
        key = ordered(sha_a, sha_b)
        if key not in self.pairs:
            raise StalePair(
                f"{a.key} and {b.key} are not a pair in the index (never found related, "
                "or no longer: list the queue again)"
            )
        held = self.decisions.get(key)
        repeated = (
            held is not None
            and _verdict(held) == _verdict(row)
            and held.decided_by == row.decided_by
        )
        return row, not repeated

    def _live(self, reference: str) -> tuple[AssetRow, str]:
        asset = resolve(self.store, reference)
        if not asset.live or asset.sha256 is None:
            raise StalePair(f"{asset.key} is no longer in its unit (gone since it was listed)")
        return asset, asset.sha256


def _verdict(row: DecisionRow) -> tuple[str, str | None]:
    return row.decision, row.canonical_sha


def _reviewer(by: str) -> str:
    name = by.strip()
    if not name:
        raise InvalidInput("say who decides: a reviewer name is required (--by NAME)")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"reviewer name longer than {MAX_NAME_CHARS} characters")
    if any(not char.isprintable() for char in name):
        raise InvalidInput("reviewer name has control characters")
    return name


def _decision(value: str) -> Decision:
    try:
        return Decision(value.strip().lower())
    except ValueError:
        choices = ", ".join(d.value for d in Decision)
        raise InvalidInput(f"unknown decision {value!r}: use one of {choices}") from None


def _stamp(now: datetime | None) -> str:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


# -- the queue ------------------------------------------------------------------


def queue(
    store: IndexStore, *, include_decided: bool = False, limit: int | None = None
) -> list[ReviewItem]:
    """Pairs of live assets that automation calls `near_identical` (shown as
    duplicate-candidate) or `similar`, closest first, duplicate-candidates
    before similar ones; decided pairs only with `include_decided` (after the
    undecided ones). One item per pair of contents: copies with the same bytes
    are listed on the item, as they share its decision."""
    decisions = store.decisions()
    by_sha: dict[str, list[AssetRow]] = defaultdict(list)
    for asset in store.live_assets():
        if asset.sha256 is not None:
            by_sha[asset.sha256].append(asset)
    shapes = ShapeLookup(store.fingerprint_columns(RECIPE))
    items: list[ReviewItem] = []
    for pair in resolve_conflicts(store.pairs(), decisions):
        if pair.tier not in QUEUE_TIERS or not by_sha.get(pair.sha_a) or not by_sha.get(pair.sha_b):
            continue
        tier = Tier(pair.tier)
        decision = decisions.get((pair.sha_a, pair.sha_b))
        if decision is not None and not include_decided:
            continue
        items.append(_item(pair, tier, decision, by_sha, shapes))
    items.sort(
        key=lambda item: (
            item.decided,
            TIER_ORDER[item.tier],
            item.phash_distance + item.dhash_distance,
            item.a.key,
            item.b.key,
        )
    )
    return items if limit is None else items[:limit]


def _item(
    pair: PairRow,
    tier: Tier,
    decision: DecisionRow | None,
    by_sha: Mapping[str, list[AssetRow]],
    shapes: Mapping[str, Shape],
) -> ReviewItem:
    first, second = pair.sha_a, pair.sha_b
    if decision is not None and decision.canonical_sha == second:
        first, second = second, first  # the chosen canonical on the left, as `canonical` reads
    return ReviewItem(
        a=_view(by_sha[first], shapes.get(first)),
        b=_view(by_sha[second], shapes.get(second)),
        tier=tier,
        phash_distance=pair.phash_distance,
        dhash_distance=pair.dhash_distance,
        reasons=tuple(pair.evidence.get("reasons", ())),
        decision=decision,
    )


def _view(assets: list[AssetRow], shape: Shape | None) -> AssetView:
    asset, *others = assets
    assert asset.sha256 is not None
    # The platform's own figures for the original; the fingerprint's when it
    # gives none (it may have been taken from a smaller rendition).
    return AssetView(
        key=asset.key,
        unit=asset.unit,
        asset_id=asset.asset_id,
        sha256=asset.sha256,
        url=asset.url,
        original_url=asset.original_url,
        metadata=dict(asset.metadata),
        width=asset.width or (shape.width if shape else None),
        height=asset.height or (shape.height if shape else None),
        size_bytes=asset.size_bytes or (shape.size_bytes if shape else None),
        format=shape.format if shape else None,
        copies=tuple(other.key for other in others),
    )


# -- deciding -------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """Where an asset stands in the clusters: its mark ("canonical",
    "duplicate", "duplicate-candidate", or "" in none) and its cluster's
    canonical (unit:id)."""

    asset: AssetRow
    mark: str
    canonical: str | None


def standing(store: IndexStore, settings: Settings, assets: Sequence[AssetRow]) -> list[Standing]:
    """Each asset's place in the current clusters (after a decision: what it
    changed, and what it did not)."""
    found: dict[str, tuple[str, str]] = {}
    for cluster in cluster_listing(store, settings)["clusters"]:
        canonical = f"{cluster['canonical']['unit']}:{cluster['canonical']['id']}"
        found[canonical] = ("canonical", canonical)
        for member in cluster["members"]:
            found[f"{member['unit']}:{member['id']}"] = (member["mark"], canonical)
    return [Standing(asset, *found.get(asset.key, ("", None))) for asset in assets]


def decide(
    store: IndexStore,
    a: str,
    b: str,
    decision: str,
    by: str,
    now: datetime | None = None,
    *,
    expect: tuple[str, str] | None = None,
) -> DecisionRow:
    """Record a reviewer's decision on assets `a` and `b` (`unit:id`, an id or
    a digest prefix): `same`, `different`, or `canonical` (a is the canonical
    version and the two are the same image). `expect` holds the contents'
    digests as the caller saw them: a pair that changed since is refused.
    Raises InvalidInput, UnknownAsset or StalePair and then changes nothing.
    Identical bytes accept only `same`, which they already are: nothing is
    stored for them."""
    row, store_it = _Index(store).check(a, b, decision, by, expect, _stamp(now))
    if store_it:
        store.save_decision(row)
    return row


# -- spreadsheets ---------------------------------------------------------------


def _size(view: AssetView) -> str:
    return f"{view.width}x{view.height}" if view.width and view.height else ""


def export_csv(store: IndexStore, stream: TextIO, *, include_decided: bool = False) -> int:
    """The queue as CSV, one row per pair; fill in `decision` (and `decided_by`)
    and import it back. Returns the number of rows written."""
    items = queue(store, include_decided=include_decided)
    rows: list[dict[str, object]] = []
    for item in items:
        row: dict[str, object] = {
            "a": item.a.key,
            "b": item.b.key,
            "a_sha256": item.a.sha256,
            "b_sha256": item.b.sha256,
            "tier": item.label,
            "phash_distance": item.phash_distance,
            "dhash_distance": item.dhash_distance,
            "a_url": item.a.url,
            "b_url": item.b.url,
            "a_size": _size(item.a),
            "b_size": _size(item.b),
            "reasons": "; ".join(item.reasons),
            "decision": item.decision.decision if item.decision else "",
            "decided_by": item.decision.decided_by if item.decision else "",
            "decided_at": item.decision.decided_at if item.decision else "",
        }
        for name in MANDATORY:
            row[f"a_{name}"] = item.a.metadata.get(name)
            row[f"b_{name}"] = item.b.metadata.get(name)
        rows.append(row)
    return write_csv(stream, CSV_FIELDS, rows)


@dataclass
class _Rows:
    """Rows of a sheet with the line each starts on."""

    header: list[str]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)


def _read_sheet(stream: TextIO) -> _Rows:
    text = stream.read().removeprefix("\ufeff")  # Excel's UTF-8 byte order mark
    first = text.split("\n", 1)[0]
    # A spreadsheet in a Finnish (or any comma-decimal) locale saves with `;`.
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            raise ImportRejected([(1, "the file is empty: no header row")])
        sheet = _Rows([name.strip() for name in header])
        line = reader.line_num + 1
        for values in reader:
            if any(value.strip() for value in values):
                sheet.rows.append((line, values))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise ImportRejected([(line, f"not valid CSV: {error_text(exc)}")]) from None
    return sheet


def import_csv(
    store: IndexStore, stream: TextIO, default_by: str | None = None, now: datetime | None = None
) -> ImportSummary:
    """Decisions from a sheet made by `export_csv` (other columns are ignored,
    so reviewers may add their own). Every row is checked before anything is
    stored; on any problem ImportRejected lists each bad line and nothing
    changes. Rows with an empty `decision` are skipped. `decided_by` falls back
    to `default_by`. All decisions are stored in one transaction."""
    sheet = _read_sheet(stream)
    missing = [name for name in CSV_REQUIRED if name not in sheet.header]
    if missing:
        raise ImportRejected([(1, f"missing column(s): {', '.join(missing)}")])
    column = {name: sheet.header.index(name) for name in sheet.header}
    index = _Index(store)
    stamp = _stamp(now)
    problems: list[tuple[int, str]] = []
    seen: dict[tuple[str, str], tuple[int, tuple[str, str | None]]] = {}
    to_store: dict[tuple[str, str], DecisionRow] = {}
    unchanged = skipped = 0
    for line, values in sheet.rows:
        if len(values) != len(sheet.header):
            problems.append(
                (line, f"{len(values)} fields where the header has {len(sheet.header)}")
            )
            continue
        row = {name: uncell(values[position].strip()) for name, position in column.items()}
        if not row["decision"]:
            skipped += 1
            continue
        empty = [name for name in ("a", "b", "a_sha256", "b_sha256") if not row[name]]
        if empty:
            problems.append((line, f"empty {', '.join(empty)}"))
            continue
        by = row.get("decided_by") or default_by or ""
        try:
            decision, changes = index.check(
                row["a"], row["b"], row["decision"], by, (row["a_sha256"], row["b_sha256"]), stamp
            )
        except ReviewError as exc:
            problems.append((line, error_text(exc)))
            continue
        key = ordered(decision.sha_a, decision.sha_b)
        verdict = _verdict(decision)
        earlier = seen.setdefault(key, (line, verdict))
        if earlier[1] != verdict:
            problems.append((line, f"the same pair is decided otherwise on line {earlier[0]}"))
            continue
        if changes:
            to_store[key] = decision
        else:
            unchanged += 1
    if problems:
        raise ImportRejected(problems)
    store.save_decisions(list(to_store.values()))
    return ImportSummary(recorded=len(to_store), unchanged=unchanged, skipped=skipped)
