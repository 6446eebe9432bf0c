"""The hash index: assets, their fingerprints, evaluated pairs, decisions, cursors.

SQLite in WAL mode is the embedded default. Every write the engine makes for a
page of assets (and that page's cursor) is one transaction, so a kill -9 at any
moment leaves the last committed page intact and nothing half-written.
The `IndexStore` interface is what the engine sees; PostgreSQL can serve it too.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from connector.core.capture import CaptureFacts
from connector.core.columns import COLUMNS_SELECT, FETCH_CHUNK, ColumnsBuilder, FingerprintColumns
from connector.core.fingerprint import Fingerprint

SIGNED = 1 << 63


def to_signed(code: int | None) -> int | None:
    """SQLite integers are signed 64-bit; hashes are unsigned."""
    return None if code is None else (code - (1 << 64) if code >= SIGNED else code)


def to_unsigned(code: int | None) -> int | None:
    return None if code is None else code & 0xFFFFFFFFFFFFFFFF


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AssetRow:
    unit: str
    asset_id: str
    version: str
    url: str
    size_bytes: int | None
    modified: str | None
    sha256: str | None
    error: str | None
    metadata: dict[str, str | None]
    live: bool
    original_url: str | None = None  # the file, when `url` is a page about it
    width: int | None = None  # of the original, as the platform reports it
    height: int | None = None
    content_hash: str | None = None  # the platform's checksum of the original, "algo:hex"

    @property
    def key(self) -> str:
        return f"{self.unit}:{self.asset_id}"


@dataclass(frozen=True)
class PairRow:
    sha_a: str
    sha_b: str
    tier: str | None
    phash_distance: int
    dhash_distance: int
    evidence: dict[str, Any]


@dataclass(frozen=True)
class DecisionRow:
    sha_a: str
    sha_b: str
    decision: str
    canonical_sha: str | None
    decided_by: str
    decided_at: str


@dataclass(frozen=True)
class OutboxRow:
    """The marks an asset should carry (`intended`) and what damdup last wrote
    (`applied`, None before the first write), both as the engine's JSON text.
    `held`: intended marks a revert took back; push leaves them until the
    intended marks change. `error`: why the last attempt did not write."""

    unit: str
    asset_id: str
    intended: str
    applied: str | None
    held: str | None
    error: str | None
    updated_at: str


@dataclass(frozen=True)
class JournalRow:
    run: int
    unit: str
    asset_id: str
    before: str
    after: str
    at: str


@dataclass(frozen=True)
class CheckRow:
    """One check of a single asset (a webhook notification): `verdict` is the
    engine's JSON once it finished, `error` why it could not."""

    id: int
    unit: str
    asset_id: str
    source: str
    received_at: str
    finished_at: str | None
    verdict: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class PushRun:
    id: int
    started_at: str
    finished_at: str | None
    dry_run: bool
    revert_of: int | None
    units: list[str]
    stats: dict[str, Any]


def ordered(sha_a: str, sha_b: str) -> tuple[str, str]:
    return (sha_a, sha_b) if sha_a <= sha_b else (sha_b, sha_a)


MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE fingerprints (
        sha256 TEXT PRIMARY KEY,
        recipe INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        format TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        payload_digest TEXT,
        pixel_digest TEXT,
        phash INTEGER NOT NULL,
        dhash INTEGER NOT NULL,
        phash_trim INTEGER,
        dhash_trim INTEGER,
        flat INTEGER NOT NULL,
        animated INTEGER NOT NULL,
        capture TEXT NOT NULL,
        thumb BLOB NOT NULL
    );
    CREATE INDEX fingerprints_payload ON fingerprints(payload_digest);
    CREATE TABLE assets (
        unit TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        version TEXT NOT NULL,
        url TEXT NOT NULL,
        size_bytes INTEGER,
        modified TEXT,
        sha256 TEXT,
        error TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        live INTEGER NOT NULL DEFAULT 1,
        seen_run INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (unit, asset_id)
    );
    CREATE INDEX assets_sha ON assets(sha256);
    CREATE TABLE pairs (
        sha_a TEXT NOT NULL,
        sha_b TEXT NOT NULL,
        recipe INTEGER NOT NULL,
        tier TEXT,
        phash_distance INTEGER NOT NULL,
        dhash_distance INTEGER NOT NULL,
        evidence TEXT NOT NULL,
        PRIMARY KEY (sha_a, sha_b),
        CHECK (sha_a < sha_b)
    );
    CREATE TABLE decisions (
        sha_a TEXT NOT NULL,
        sha_b TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('same', 'different', 'canonical')),
        canonical_sha TEXT,
        decided_by TEXT NOT NULL,
        decided_at TEXT NOT NULL,
        PRIMARY KEY (sha_a, sha_b)
    );
    CREATE TABLE cursors (
        unit TEXT PRIMARY KEY,
        cursor TEXT,
        run INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        unit TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        complete INTEGER NOT NULL DEFAULT 0,
        stats TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: codes of the central part (recipe 2)
    """
    ALTER TABLE fingerprints ADD COLUMN phash_inner INTEGER;
    ALTER TABLE fingerprints ADD COLUMN dhash_inner INTEGER;
    """,
    # 3: platforms: original file address and size apart from the page link and
    # from the rendition that was hashed; where the next incremental listing starts
    """
    ALTER TABLE assets ADD COLUMN original_url TEXT;
    ALTER TABLE assets ADD COLUMN width INTEGER;
    ALTER TABLE assets ADD COLUMN height INTEGER;
    ALTER TABLE cursors ADD COLUMN watermark TEXT;
    ALTER TABLE cursors ADD COLUMN full_listing INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX runs_unit ON runs(unit, id);
    """,
    # 4: write-back: the marks each asset should carry (outbox), what was last
    # written, and a journal of every applied change per push run
    """
    CREATE TABLE outbox (
        unit TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        intended TEXT NOT NULL,
        applied TEXT,
        held TEXT,
        error TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (unit, asset_id)
    );
    CREATE TABLE push_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        dry_run INTEGER NOT NULL,
        revert_of INTEGER,
        units TEXT NOT NULL,
        stats TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE journal (
        run INTEGER NOT NULL REFERENCES push_runs(id),
        unit TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (run, unit, asset_id)
    );
    """,
    # 5: webhook-triggered checks of single assets and their verdicts; the
    # signatures of notifications already taken (replays are refused)
    """
    CREATE TABLE checks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        unit TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        source TEXT NOT NULL,
        received_at TEXT NOT NULL,
        finished_at TEXT,
        verdict TEXT,
        error TEXT
    );
    CREATE INDEX checks_asset ON checks(unit, asset_id, id);
    CREATE TABLE webhook_seen (
        unit TEXT NOT NULL,
        signature TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (unit, signature)
    );
    CREATE INDEX webhook_seen_at ON webhook_seen(seen_at);
    """,
    # 6: the checksum a platform reports of an original, and the SHA-256 of an
    # original damdup fetched to settle a candidate pair, for the version read
    """
    ALTER TABLE assets ADD COLUMN content_hash TEXT;
    CREATE TABLE originals (
        unit TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        PRIMARY KEY (unit, asset_id)
    );
    """,
    # 7: the lineage of each group of copies (which one the others were made
    # from), kept so that reading the clusters never reads originals again
    """
    CREATE TABLE lineage (
        group_key TEXT PRIMARY KEY,
        family TEXT NOT NULL,
        full INTEGER NOT NULL,
        made_at TEXT NOT NULL
    );
    """,
    # 8: assets by id alone (`find_asset`, as a webhook check looks up an asset
    # new to the index) and pairs by their second content (`pairs_touching`,
    # a check's component), without reading every asset or pair
    """
    CREATE INDEX assets_id ON assets(asset_id);
    CREATE INDEX pairs_b ON pairs(sha_b);
    """,
    # 9: a count of the changes to what clusters are made of (assets, pairs,
    # decisions), kept by triggers, and summaries of the clusters saved with
    # the count they were made at: `damdup status` answers from the summary
    # while nothing has changed since, instead of clustering the index again
    """
    CREATE TABLE changes (n INTEGER NOT NULL);
    INSERT INTO changes VALUES (0);
    CREATE TRIGGER assets_inserted AFTER INSERT ON assets BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER assets_updated AFTER UPDATE ON assets BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER assets_deleted AFTER DELETE ON assets BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER pairs_inserted AFTER INSERT ON pairs BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER pairs_updated AFTER UPDATE ON pairs BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER pairs_deleted AFTER DELETE ON pairs BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER decisions_inserted AFTER INSERT ON decisions
        BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER decisions_updated AFTER UPDATE ON decisions
        BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TRIGGER decisions_deleted AFTER DELETE ON decisions
        BEGIN UPDATE changes SET n = n + 1; END;
    CREATE TABLE summaries (
        name TEXT PRIMARY KEY,
        stamp TEXT NOT NULL,
        data TEXT NOT NULL,
        made_at TEXT NOT NULL
    );
    """,
    # 10: how two copies relate (which was made from which), by the two
    # images as they were judged: a group that gains a copy relates only the
    # new one to the others, in whichever process meets it next
    """
    CREATE TABLE relations (
        judged TEXT PRIMARY KEY,
        finding TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 11: the contents a match has still to search, queued by triggers
    # whenever an asset becomes live with a content (new, changed, back
    # again) or a fingerprint is saved (a newer recipe), and when a flat
    # image gets its full-pixel digest (flat images pair by digests alone; for
    # the others the same pixels give the same codes): a sync's match searches
    # those against the index instead of searching the whole index again. '*'
    # asks for the whole index (an index made or migrated before the queue
    # existed may hold unsearched contents).
    """
    CREATE TABLE match_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL
    );
    INSERT INTO match_queue(sha256) VALUES ('*');
    CREATE TRIGGER assets_match_inserted AFTER INSERT ON assets
        WHEN NEW.live = 1 AND NEW.sha256 IS NOT NULL
        BEGIN INSERT INTO match_queue(sha256) VALUES (NEW.sha256); END;
    CREATE TRIGGER assets_match_updated AFTER UPDATE OF sha256, live ON assets
        WHEN NEW.live = 1 AND NEW.sha256 IS NOT NULL
            AND (OLD.live = 0 OR OLD.sha256 IS NOT NEW.sha256)
        BEGIN INSERT INTO match_queue(sha256) VALUES (NEW.sha256); END;
    CREATE TRIGGER fingerprints_match_inserted AFTER INSERT ON fingerprints
        BEGIN INSERT INTO match_queue(sha256) VALUES (NEW.sha256); END;
    CREATE TRIGGER fingerprints_match_digest AFTER UPDATE OF pixel_digest ON fingerprints
        WHEN NEW.flat = 1 AND NEW.pixel_digest IS NOT OLD.pixel_digest
        BEGIN INSERT INTO match_queue(sha256) VALUES (NEW.sha256); END;
    """,
    # 12: the clusters as the last clustering listed them, a row per cluster
    # and per pair of other shots of a scene (with the assets each holds),
    # and the contents whose clusters may have changed since, queued by
    # triggers on what clusters are made of (an asset's content, liveness,
    # metadata, size and time; pairs; decisions; fingerprints): `status`
    # and `clusters` cluster again only the components those reach, not the
    # whole index. The queue replaces 9's count of changes. '*' asks for
    # the whole index (nothing is listed yet).
    """
    DROP TRIGGER assets_inserted;
    DROP TRIGGER assets_updated;
    DROP TRIGGER assets_deleted;
    DROP TRIGGER pairs_inserted;
    DROP TRIGGER pairs_updated;
    DROP TRIGGER pairs_deleted;
    DROP TRIGGER decisions_inserted;
    DROP TRIGGER decisions_updated;
    DROP TRIGGER decisions_deleted;
    DROP TABLE changes;
    DELETE FROM summaries WHERE name IN ('unit_figures', 'cluster_listing');
    CREATE TABLE listing (
        item TEXT PRIMARY KEY,
        is_similar INTEGER NOT NULL,
        record TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE listing_assets (
        unit TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        item TEXT NOT NULL,
        copy INTEGER,
        PRIMARY KEY (unit, asset_id, item)
    ) WITHOUT ROWID;
    CREATE INDEX listing_assets_item ON listing_assets(item);
    CREATE TABLE cluster_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256 TEXT NOT NULL,
        unit TEXT,
        asset_id TEXT
    );
    INSERT INTO cluster_queue(sha256) VALUES ('*');
    CREATE TRIGGER assets_cluster_inserted AFTER INSERT ON assets
        WHEN NEW.sha256 IS NOT NULL
        BEGIN INSERT INTO cluster_queue(sha256, unit, asset_id)
            VALUES (NEW.sha256, NEW.unit, NEW.asset_id); END;
    CREATE TRIGGER assets_cluster_updated
        AFTER UPDATE OF sha256, live, metadata, width, height, modified ON assets
        WHEN OLD.sha256 IS NOT NEW.sha256 OR OLD.live IS NOT NEW.live
            OR OLD.metadata IS NOT NEW.metadata OR OLD.width IS NOT NEW.width
            OR OLD.height IS NOT NEW.height OR OLD.modified IS NOT NEW.modified
        BEGIN
            INSERT INTO cluster_queue(sha256, unit, asset_id)
                SELECT OLD.sha256, OLD.unit, OLD.asset_id WHERE OLD.sha256 IS NOT NULL;
            INSERT INTO cluster_queue(sha256, unit, asset_id)
                SELECT NEW.sha256, NEW.unit, NEW.asset_id
                WHERE NEW.sha256 IS NOT NULL AND NEW.sha256 IS NOT OLD.sha256;
        END;
    CREATE TRIGGER assets_cluster_deleted AFTER DELETE ON assets
        WHEN OLD.sha256 IS NOT NULL
        BEGIN INSERT INTO cluster_queue(sha256, unit, asset_id)
            VALUES (OLD.sha256, OLD.unit, OLD.asset_id); END;
    CREATE TRIGGER pairs_cluster_inserted AFTER INSERT ON pairs
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (NEW.sha_a), (NEW.sha_b); END;
    CREATE TRIGGER pairs_cluster_updated AFTER UPDATE ON pairs
        WHEN OLD.tier IS NOT NEW.tier OR OLD.evidence IS NOT NEW.evidence
            OR OLD.phash_distance IS NOT NEW.phash_distance
            OR OLD.dhash_distance IS NOT NEW.dhash_distance
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (NEW.sha_a), (NEW.sha_b); END;
    CREATE TRIGGER pairs_cluster_deleted AFTER DELETE ON pairs
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (OLD.sha_a), (OLD.sha_b); END;
    CREATE TRIGGER decisions_cluster_inserted AFTER INSERT ON decisions
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (NEW.sha_a), (NEW.sha_b); END;
    CREATE TRIGGER decisions_cluster_updated AFTER UPDATE ON decisions
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (NEW.sha_a), (NEW.sha_b); END;
    CREATE TRIGGER decisions_cluster_deleted AFTER DELETE ON decisions
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (OLD.sha_a), (OLD.sha_b); END;
    CREATE TRIGGER fingerprints_cluster_inserted AFTER INSERT ON fingerprints
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (NEW.sha256); END;
    CREATE TRIGGER fingerprints_cluster_updated AFTER UPDATE ON fingerprints
        WHEN OLD.width IS NOT NEW.width OR OLD.height IS NOT NEW.height
            OR OLD.format IS NOT NEW.format OR OLD.capture IS NOT NEW.capture
            OR OLD.size_bytes IS NOT NEW.size_bytes OR OLD.recipe IS NOT NEW.recipe
        BEGIN INSERT INTO cluster_queue(sha256) VALUES (NEW.sha256); END;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# The summaries row that holds the saved listing's stamp and figures.
LISTING_SUMMARY = "cluster_listing"


def _statements(script: str) -> Iterator[str]:
    """A migration's statements one by one (a trigger's body holds ';' too)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"an incomplete statement in a migration: {pending!r}")


class SchemaError(Exception):
    pass


class IndexMissing(SchemaError):
    """A reading command named an index that does not exist: it never creates one."""


class NotAnIndex(SchemaError):
    """The file is not a damdup index (another program's database, or not SQLite)."""


class Known(NamedTuple):
    """What the index holds of an asset, to tell what a listing changed."""

    version: str
    sha256: str | None
    error: str | None
    listed: str  # the listing's facts besides the bytes: addresses and metadata


def listed_facts(
    url: str, original_url: str | None, metadata: dict[str, Any], content_hash: str | None = None
) -> str:
    # The checksum only where there is one: assets without change nothing; an
    # index from before checksums were kept takes them in at the next listing.
    facts: list[Any] = [url, original_url, metadata]
    if content_hash:
        facts.append(content_hash)
    return json.dumps(facts, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class UnitStatus:
    unit: str
    live_assets: int
    errors: int
    last_sync_started: str | None
    last_sync_finished: str | None
    last_sync_complete: bool
    last_sync_stats: dict[str, Any]
    last_complete_sync: str | None  # when the last listing that ran to its end finished
    cursor_updated: str | None  # when a page was last saved


@dataclass(frozen=True)
class ListingState:
    """Where a unit's listing stands: `cursor` and `run` of a listing that was
    interrupted (resume there), whether that listing was a full one, and the
    watermark a completed listing left for the next incremental one."""

    cursor: str | None
    run: int | None
    full_listing: bool
    watermark: str | None


@dataclass(frozen=True)
class MatchQueue:
    """Contents a match has still to search against the index: those of
    assets that became live (new, changed content, back again) since the
    last match that completed. `everything`: the whole index is to be
    searched (a new or migrated index, or more contents queued than asked
    for; `contents` is then left empty). `seqs`: the queue's rows read, for
    `clear_match_queue` once the match has saved every pair."""

    seqs: array[int]
    contents: frozenset[str]
    everything: bool


def queue_of(chunks: Iterable[Sequence[Sequence[Any]]], most: int | None) -> MatchQueue:
    """The queue from its rows (seq, sha256), read a chunk at a time: '*', or
    more than `most` contents, asks for the whole index."""
    seqs: array[int] = array("q")
    contents: set[str] = set()
    everything = False
    for rows in chunks:
        for seq, sha256 in rows:
            seqs.append(int(seq))
            if everything:
                continue
            if sha256 == "*":
                everything = True
                contents.clear()
            else:
                contents.add(str(sha256))
                if most is not None and len(contents) > most:
                    everything = True
                    contents.clear()
    return MatchQueue(seqs, frozenset(contents), everything)


@dataclass(frozen=True)
class ClusterQueue:
    """Contents whose clusters may have changed since the saved listing was
    made (and the assets, unit and id, whose own row changed): the listing
    is current once the components they reach are clustered again.
    `everything`: cluster the whole index ('*', or more than asked for).
    `seqs`: the rows read, cleared when the listing they led to is saved."""

    seqs: array[int]
    contents: frozenset[str]
    assets: frozenset[tuple[str, str]]
    everything: bool


def cluster_queue_of(chunks: Iterable[Sequence[Sequence[Any]]], most: int | None) -> ClusterQueue:
    """The queue from its rows (seq, sha256, unit, asset_id), a chunk at a time."""
    seqs: array[int] = array("q")
    contents: set[str] = set()
    assets: set[tuple[str, str]] = set()
    everything = False
    for rows in chunks:
        for seq, sha256, unit, asset_id in rows:
            seqs.append(int(seq))
            if everything:
                continue
            if sha256 == "*" or (most is not None and len(seqs) > most):
                everything = True
                contents.clear()
                assets.clear()
                continue
            contents.add(str(sha256))
            if unit is not None:
                assets.add((str(unit), str(asset_id)))
    return ClusterQueue(seqs, frozenset(contents), frozenset(assets), everything)


@dataclass(frozen=True)
class ListedItem:
    """One entry of the saved cluster listing: a cluster or a pair of other
    shots of a scene. `item`: its key; `record`: its JSON as listed;
    `assets`: (unit, asset_id, copy) of each asset it holds, `copy` 1 for a
    confirmed duplicate of the canonical, 0 for one awaiting review, None
    for a canonical or another shot."""

    item: str
    similar: bool
    record: str
    assets: tuple[tuple[str, str, int | None], ...]


# Per unit: (confirmed duplicates, duplicates awaiting review) in the listing.
ListedFigures = dict[str, tuple[int, int]]


def figures_from_json(text: str) -> ListedFigures:
    """The figures as a store saves them (JSON: unit -> [confirmed, waiting])."""
    return {unit: (int(n[0]), int(n[1])) for unit, n in json.loads(text).items()}


class IndexStore(ABC):
    """What the engine needs from an index, whatever database serves it."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def reopen(self) -> IndexStore:
        """Another connection to the same index, for another thread."""

    @abstractmethod
    def start_run(self, unit: str, kind: str) -> int: ...

    @abstractmethod
    def finish_run(self, run: int, complete: bool, stats: dict[str, Any]) -> None: ...

    @abstractmethod
    def listing_state(self, unit: str) -> ListingState: ...

    @abstractmethod
    def asset_versions(self, unit: str) -> dict[str, Known]:
        """Every asset of the unit by id."""

    @abstractmethod
    def known_fingerprints(self, sha256s: Iterable[str], recipe: int) -> set[str]: ...

    @abstractmethod
    def fingerprint_sizes(self) -> set[int]:
        """Byte sizes of every fingerprinted content."""

    @abstractmethod
    def save_page(
        self,
        unit: str,
        run: int,
        assets: Sequence[AssetRow],
        fingerprints: Sequence[Fingerprint],
        touched: Sequence[str],
        cursor: str | None,
        *,
        full_listing: bool = True,
        watermark: str | None = None,
        deleted: Sequence[str] = (),
    ) -> None:
        """One transaction: new and changed assets, their fingerprints, the
        unchanged assets seen again (`touched`), assets the platform reported
        deleted, and the cursor after the page (see `ListingState`)."""

    @abstractmethod
    def unseen_assets(self, unit: str, run: int) -> list[AssetRow]:
        """Live assets of the unit that the run's listing did not show."""

    @abstractmethod
    def retire_unseen(self, unit: str, run: int, keep: Sequence[str] = ()) -> int:
        """After a complete listing: assets not seen in it leave the live set,
        but for `keep` (the platform says they are still there)."""

    @abstractmethod
    def live_assets(self, unit: str | None = None) -> list[AssetRow]: ...

    @abstractmethod
    def find_asset(self, reference: str) -> AssetRow | None: ...

    @abstractmethod
    def fingerprint_rows(self, recipe: int) -> list[dict[str, Any]]:
        """Codes of every live fingerprint of the recipe (no thumbnails)."""

    @abstractmethod
    def fingerprint_columns(self, recipe: int, after: int | None = None) -> FingerprintColumns:
        """What `fingerprint_rows` gives, as columns, read a chunk at a time
        (no list of every row is ever held): with `after` None the live
        fingerprints in sha256 order; else, as `fingerprint_rows_after`, every
        fingerprint saved after that watermark (live or not), in saving order."""

    @abstractmethod
    def fingerprint(self, sha256: str) -> Fingerprint | None: ...

    @abstractmethod
    def pixel_digest(self, sha256: str) -> str | None: ...

    @abstractmethod
    def set_pixel_digest(self, sha256: str, digest: str) -> None: ...

    def originals(self, assets: Iterable[AssetRow]) -> dict[str, tuple[str, int]]:
        """Asset key -> (SHA-256, byte size) of the original damdup read for the
        asset's current version; nothing for an asset whose original it never
        read, or whose version has changed since."""
        raise NotImplementedError

    def record_original(self, asset: AssetRow, sha256: str, size_bytes: int) -> None:
        """Keep the SHA-256 of the original read for the asset's version, so
        that it is never fetched again for that version."""
        raise NotImplementedError

    @abstractmethod
    def evaluated_pairs(self, recipe: int) -> set[tuple[str, str]]: ...

    @abstractmethod
    def save_pairs(self, pairs: Sequence[PairRow], recipe: int) -> None: ...

    @abstractmethod
    def pairs(self) -> list[PairRow]: ...

    @abstractmethod
    def decisions(self) -> dict[tuple[str, str], DecisionRow]: ...

    @abstractmethod
    def save_decision(self, row: DecisionRow) -> None: ...

    @abstractmethod
    def save_decisions(self, rows: Sequence[DecisionRow]) -> None:
        """Several decisions in one transaction: a reviewer's import lands whole or not at all."""

    # -- write-back ------------------------------------------------------

    @abstractmethod
    def set_intended(self, units: Sequence[str], intended: dict[tuple[str, str], str]) -> None:
        """The marks every asset of `units` should carry; an asset left out
        should carry none (marks are opaque text here, "" meaning none)."""

    @abstractmethod
    def outbox(self, units: Sequence[str], pending_only: bool = True) -> list[OutboxRow]:
        """Rows of live assets; pending ones differ from what was last written
        and are not held back by a revert."""

    @abstractmethod
    def lineages(self, group_keys: Sequence[str]) -> dict[str, tuple[str, bool]]:
        """Groups' lineages as saved (opaque JSON) and whether each was made
        from the originals, by group key; keys not saved are left out."""

    @abstractmethod
    def save_lineages(self, found: Mapping[str, tuple[str, bool]]) -> None:
        """Group key -> (lineage, made from the originals), in one transaction."""

    @abstractmethod
    def thumbnails(self, sha256s: Iterable[str]) -> dict[str, bytes]:
        """The stored thumbnails of these contents (those fingerprinted)."""

    @abstractmethod
    def relations(self, keys: Sequence[str]) -> dict[str, str]:
        """Saved findings of how two copies relate, by key (opaque text both);
        keys not saved are left out."""

    @abstractmethod
    def save_relations(self, found: Mapping[str, str]) -> None: ...

    @abstractmethod
    def match_queue(self, most: int | None = None) -> MatchQueue:
        """What the next match has to search (kept by triggers on assets and
        fingerprints); past `most` contents, the whole index."""

    @abstractmethod
    def clear_match_queue(self, seqs: Sequence[int]) -> None:
        """Drop the queue rows a completed match read; rows queued since stay."""

    @abstractmethod
    def cluster_queue(self, most: int | None = None) -> ClusterQueue:
        """What changed since the saved listing was made (kept by triggers on
        assets, pairs, decisions and fingerprints); past `most` rows, the
        whole index."""

    @abstractmethod
    def listing_saved(self) -> tuple[str, ListedFigures] | None:
        """The stamp the saved listing was made with, and its figures per
        unit; None before the first listing."""

    @abstractmethod
    def listing(self) -> list[tuple[bool, str]]:
        """Every entry of the saved listing: (similar, record), unordered."""

    @abstractmethod
    def save_listing(
        self,
        expected: str | None,
        stamp: str,
        items: Sequence[ListedItem],
        replacing: Iterable[tuple[str, str]] | None,
        seqs: Sequence[int],
    ) -> ListedFigures | None:
        """In one transaction, only while the saved listing's stamp is still
        `expected` (another clustering saved none meanwhile): drop the
        entries holding any asset of `replacing` (every entry when None), add
        `items`, clear the queue rows `seqs`, and save `stamp`. The figures
        then listed; None (nothing saved) when the stamp had moved."""

    @abstractmethod
    def held(self, units: Sequence[str]) -> list[OutboxRow]:
        """Rows of live assets whose intended marks a revert holds back: push
        leaves them until their intended marks change or they are released."""

    @abstractmethod
    def release_holds(self, units: Sequence[str]) -> int:
        """End every hold of `units`; how many assets were held."""

    @abstractmethod
    def start_push(
        self, units: Sequence[str], dry_run: bool, revert_of: int | None = None
    ) -> int: ...

    @abstractmethod
    def finish_push(self, run: int, stats: dict[str, Any]) -> None: ...

    @abstractmethod
    def record_written(
        self, run: int, unit: str, asset_id: str, before: str, after: str, held: str | None = None
    ) -> None:
        """After a successful write: journal it (when something changed) and
        remember `after` as applied, in one transaction."""

    @abstractmethod
    def record_outbox_error(self, unit: str, asset_id: str, error: str) -> None: ...

    @abstractmethod
    def journal(self, run: int) -> list[JournalRow]: ...

    @abstractmethod
    def push_runs(self) -> list[PushRun]: ...

    # -- single-asset checks (webhooks) -----------------------------------

    @abstractmethod
    def start_check(self, unit: str, asset_id: str, source: str) -> int:
        """Record a check as received; its id."""

    @abstractmethod
    def finish_check(
        self, check: int, verdict: dict[str, Any] | None, error: str | None = None
    ) -> None: ...

    @abstractmethod
    def checks(
        self, unit: str | None = None, asset_id: str | None = None, limit: int = 100
    ) -> list[CheckRow]:
        """The newest checks first."""

    @abstractmethod
    def check(self, check: int) -> CheckRow | None: ...

    @abstractmethod
    def first_sighting(self, unit: str, signature: str, now: float, window_s: float) -> bool:
        """True, remembering it, when this signature was not seen within the
        window; False for a replay. Older sightings are forgotten."""

    @abstractmethod
    def fingerprint_watermark(self) -> int:
        """Grows whenever a fingerprint is saved: an in-memory search structure
        compares it to know what it has not seen yet."""

    @abstractmethod
    def fingerprint_rows_after(self, recipe: int, watermark: int) -> list[dict[str, Any]]:
        """Codes of fingerprints saved after `watermark` (live or not), each with
        its own `watermark`; the same keys as `fingerprint_rows`."""

    @abstractmethod
    def save_asset(self, unit: str, row: AssetRow, fingerprint: Fingerprint | None) -> None:
        """One asset (and its fingerprint) in one transaction, outside any
        listing: the unit's cursor is left alone."""

    @abstractmethod
    def live_assets_with(self, sha256s: Iterable[str]) -> list[AssetRow]: ...

    @abstractmethod
    def shared_contents(self) -> set[str]:
        """The content digests that more than one live asset holds (byte copies)."""

    @abstractmethod
    def fingerprint_columns_of(self, recipe: int, sha256s: Iterable[str]) -> FingerprintColumns:
        """The columns of these contents' fingerprints only, in sha256 order."""

    @abstractmethod
    def assets_at_url(self, url: str) -> list[AssetRow]:
        """Live assets whose page or file address is `url`."""

    @abstractmethod
    def pairs_touching(self, sha256s: Iterable[str], recipe: int | None = None) -> list[PairRow]:
        """Evaluated pairs (of `recipe`, when given) with either side in
        `sha256s`, unrelated ones (tier None) included."""

    @abstractmethod
    def set_intended_assets(self, intended: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
        """The marks the given assets should carry ("" none); other assets'
        outbox rows are left as they are (unlike `set_intended`). Returns the
        assets whose intended marks changed."""

    @abstractmethod
    def errors(self, unit: str | None = None) -> list[AssetRow]: ...

    @abstractmethod
    def unit_status(self) -> dict[str, UnitStatus]:
        """Per unit: assets, errors and how its syncs went."""


# A fingerprint saved again keeps the full-pixel digest computed for it meanwhile.
_SAVE_FINGERPRINT = """INSERT OR REPLACE INTO fingerprints(sha256, recipe, size_bytes, format,
       width, height, payload_digest, pixel_digest, phash, dhash, phash_trim,
       dhash_trim, flat, animated, capture, thumb, phash_inner, dhash_inner)
   VALUES (?, ?, ?, ?, ?, ?, ?,
    (SELECT pixel_digest FROM fingerprints WHERE sha256 = ?),
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

# `seen_run` NULL: a new asset counts as seen by the unit's latest run (a
# listing under way does not retire it) and a known one keeps its own.
_SAVE_ASSET = """INSERT INTO assets(unit, asset_id, version, url, size_bytes, modified,
       sha256, error, metadata, live, seen_run, updated_at, original_url, width, height,
       content_hash)
   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1,
       COALESCE(?, (SELECT COALESCE(MAX(id), 0) FROM runs WHERE unit = ?)), ?, ?, ?, ?, ?)
   ON CONFLICT(unit, asset_id) DO UPDATE SET
       version = excluded.version, url = excluded.url,
       size_bytes = excluded.size_bytes, modified = excluded.modified,
       sha256 = excluded.sha256, error = excluded.error,
       metadata = excluded.metadata, live = 1,
       seen_run = COALESCE(?, assets.seen_run), updated_at = excluded.updated_at,
       original_url = excluded.original_url, width = excluded.width,
       height = excluded.height, content_hash = excluded.content_hash"""


def _fingerprint_values(fp: Fingerprint) -> tuple[Any, ...]:
    return (
        fp.sha256, fp.recipe, fp.size_bytes, fp.format, fp.width, fp.height,
        fp.payload_digest, fp.sha256, to_signed(fp.phash), to_signed(fp.dhash),
        to_signed(fp.phash_trim), to_signed(fp.dhash_trim), int(fp.flat),
        int(fp.animated), json.dumps(fp.capture.as_dict(), sort_keys=True),
        fp.thumb, to_signed(fp.phash_inner), to_signed(fp.dhash_inner),
    )  # fmt: skip


def _asset_values(unit: str, row: AssetRow, run: int | None, stamp: str) -> tuple[Any, ...]:
    return (
        unit, row.asset_id, row.version, row.url, row.size_bytes, row.modified,
        row.sha256, row.error, json.dumps(row.metadata, sort_keys=True), run, unit,
        stamp, row.original_url, row.width, row.height, row.content_hash, run,
    )  # fmt: skip


class Row(Protocol):
    """A database row read by column name: sqlite3.Row, or psycopg's dict row."""

    def __getitem__(self, key: str) -> Any: ...

    def keys(self) -> Iterable[str]: ...


def fingerprint_of(row: Row) -> Fingerprint:
    """A `fingerprints` row as both stores read it."""
    return Fingerprint(
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        recipe=row["recipe"],
        format=row["format"],
        width=row["width"],
        height=row["height"],
        payload_digest=row["payload_digest"],
        phash=to_unsigned(row["phash"]) or 0,
        dhash=to_unsigned(row["dhash"]) or 0,
        phash_trim=to_unsigned(row["phash_trim"]),
        dhash_trim=to_unsigned(row["dhash_trim"]),
        phash_inner=to_unsigned(row["phash_inner"]) or 0,
        dhash_inner=to_unsigned(row["dhash_inner"]) or 0,
        flat=bool(row["flat"]),
        animated=bool(row["animated"]),
        capture=CaptureFacts.from_dict(json.loads(row["capture"])),
        thumb=bytes(row["thumb"]),
    )


def asset_of(row: Row) -> AssetRow:
    """An `assets` row as both stores read it."""
    return AssetRow(
        unit=row["unit"],
        asset_id=row["asset_id"],
        version=row["version"],
        url=row["url"],
        size_bytes=row["size_bytes"],
        modified=row["modified"],
        sha256=row["sha256"],
        error=row["error"],
        metadata=json.loads(row["metadata"]),
        live=bool(row["live"]),
        original_url=row["original_url"],
        width=row["width"],
        height=row["height"],
        content_hash=row["content_hash"],
    )


def pair_of(row: Row) -> PairRow:
    """A `pairs` row as both stores read it."""
    return PairRow(
        sha_a=row["sha_a"],
        sha_b=row["sha_b"],
        tier=row["tier"],
        phash_distance=row["phash_distance"],
        dhash_distance=row["dhash_distance"],
        evidence=json.loads(row["evidence"]),
    )


def is_digest_prefix(reference: str) -> bool:
    """Whether a reference can be the start of a content digest (lowercase hex
    once lowered): no other is looked for among the digests, which costs a
    read of every asset."""
    return all(char in "0123456789abcdef" for char in reference.lower())


def _clear(db: sqlite3.Connection, queue: str, seqs: Sequence[int]) -> None:
    """Drop the rows `seqs` of a queue table (match_queue, cluster_queue)."""
    listed = list(seqs)
    for start in range(0, len(listed), 500):
        chunk = listed[start : start + 500]
        marks = ",".join("?" * len(chunk))
        db.execute(f"DELETE FROM {queue} WHERE seq IN ({marks})", chunk)


def _chunks(values: Iterable[str], size: int = 400) -> Iterator[tuple[list[str], str]]:
    """Distinct values, sorted, in chunks small enough for SQLite's parameter
    limit, each with its "?,?,..." placeholders."""
    wanted = sorted(set(values))
    for start in range(0, len(wanted), size):
        chunk = wanted[start : start + size]
        yield chunk, ",".join("?" * len(chunk))


def code_row(row: Row) -> dict[str, Any]:
    """A fingerprint's codes as `fingerprint_rows` gives them: unsigned, flags as bools."""
    item: dict[str, Any] = dict(row)
    for key in ("phash", "dhash", "phash_trim", "dhash_trim", "phash_inner", "dhash_inner"):
        item[key] = to_unsigned(item[key])
    item["flat"] = bool(item["flat"])
    item["has_capture"] = bool(item["has_capture"])
    return item


class SQLiteStore(IndexStore):
    def __init__(self, path: Path | str, create: bool = True) -> None:
        """Open the index at `path`; with `create` false a missing file is
        IndexMissing instead of a new, empty index."""
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise IndexMissing(f"no index at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self._check_ours()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise NotAnIndex(f"{self.path} is not a damdup index ({exc})") from exc
        except NotAnIndex:
            self.db.close()
            raise
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode is durable against a killed process (not a power cut).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _check_ours(self) -> None:
        """Refuse a database another program made: damdup adds its tables only
        to a new file or to one of its own indexes."""
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables:
            raise NotAnIndex(f"{self.path} is a database of another program, not a damdup index")

    def close(self) -> None:
        self.db.close()

    def reopen(self) -> SQLiteStore:
        return SQLiteStore(self.path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {version}, newer than this damdup "
                f"({SCHEMA_VERSION}); upgrade damdup"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction() as db:
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # -- runs and cursors ------------------------------------------------

    def start_run(self, unit: str, kind: str) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs(unit, kind, started_at) VALUES (?, ?, ?)",
                (unit, kind, now_iso()),
            )
            return int(cursor.lastrowid or 0)

    def finish_run(self, run: int, complete: bool, stats: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, complete = ?, stats = ? WHERE id = ?",
                (now_iso(), int(complete), json.dumps(stats, sort_keys=True), run),
            )

    def listing_state(self, unit: str) -> ListingState:
        row = self.db.execute(
            "SELECT cursor, run, full_listing, watermark FROM cursors WHERE unit = ?", (unit,)
        ).fetchone()
        if row is None:
            return ListingState(None, None, True, None)
        return ListingState(
            row["cursor"], row["run"] if row["cursor"] else None, bool(row["full_listing"]),
            row["watermark"],
        )  # fmt: skip

    # -- assets ----------------------------------------------------------

    def asset_versions(self, unit: str) -> dict[str, Known]:
        rows = self.db.execute(
            "SELECT asset_id, version, sha256, error, url, original_url, metadata, content_hash "
            "FROM assets WHERE unit = ?",
            (unit,),
        )
        return {
            row["asset_id"]: Known(
                row["version"],
                row["sha256"],
                row["error"],
                listed_facts(
                    row["url"],
                    row["original_url"],
                    json.loads(row["metadata"]),
                    row["content_hash"],
                ),
            )
            for row in rows
        }

    def known_fingerprints(self, sha256s: Iterable[str], recipe: int) -> set[str]:
        found: set[str] = set()
        for chunk, marks in _chunks(sha256s):
            rows = self.db.execute(
                f"SELECT sha256 FROM fingerprints WHERE recipe = ? AND sha256 IN ({marks})",
                (recipe, *chunk),
            )
            found.update(row[0] for row in rows)
        return found

    def fingerprint_sizes(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT size_bytes FROM fingerprints")}

    def save_page(
        self,
        unit: str,
        run: int,
        assets: Sequence[AssetRow],
        fingerprints: Sequence[Fingerprint],
        touched: Sequence[str],
        cursor: str | None,
        *,
        full_listing: bool = True,
        watermark: str | None = None,
        deleted: Sequence[str] = (),
    ) -> None:
        """One page in one transaction: its assets, their fingerprints, and
        where the listing resumes. On a listing's last page `cursor` is None and
        `watermark` is where the next incremental listing starts."""
        stamp = now_iso()
        with self._transaction() as db:
            db.executemany(_SAVE_FINGERPRINT, [_fingerprint_values(fp) for fp in fingerprints])
            db.executemany(_SAVE_ASSET, [_asset_values(unit, row, run, stamp) for row in assets])
            db.executemany(
                "UPDATE assets SET seen_run = ?, live = 1 WHERE unit = ? AND asset_id = ?",
                [(run, unit, asset_id) for asset_id in touched],
            )
            db.executemany(
                "UPDATE assets SET live = 0, updated_at = ? "
                "WHERE unit = ? AND asset_id = ? AND live = 1",
                [(stamp, unit, asset_id) for asset_id in deleted],
            )
            if cursor is None:  # the listing is over: keep the previous watermark if none
                db.execute(
                    """INSERT INTO cursors(unit, cursor, run, updated_at, full_listing, watermark)
                       VALUES (?, NULL, ?, ?, ?, ?)
                       ON CONFLICT(unit) DO UPDATE SET cursor = NULL, run = excluded.run,
                           updated_at = excluded.updated_at,
                           full_listing = excluded.full_listing,
                           watermark = COALESCE(excluded.watermark, cursors.watermark)""",
                    (unit, run, stamp, int(full_listing), watermark),
                )
            else:
                db.execute(
                    """INSERT INTO cursors(unit, cursor, run, updated_at, full_listing)
                       VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT(unit) DO UPDATE SET cursor = excluded.cursor,
                           run = excluded.run, updated_at = excluded.updated_at,
                           full_listing = excluded.full_listing""",
                    (unit, cursor, run, stamp, int(full_listing)),
                )

    def unseen_assets(self, unit: str, run: int) -> list[AssetRow]:
        rows = self.db.execute(
            "SELECT * FROM assets WHERE unit = ? AND live = 1 AND seen_run != ? ORDER BY asset_id",
            (unit, run),
        )
        return [asset_of(row) for row in rows]

    def retire_unseen(self, unit: str, run: int, keep: Sequence[str] = ()) -> int:
        with self._transaction() as db:
            db.executemany(
                "UPDATE assets SET seen_run = ? WHERE unit = ? AND asset_id = ?",
                [(run, unit, asset_id) for asset_id in keep],
            )
            changed = db.execute(
                "UPDATE assets SET live = 0, updated_at = ? "
                "WHERE unit = ? AND live = 1 AND seen_run != ?",
                (now_iso(), unit, run),
            ).rowcount
            db.execute("UPDATE cursors SET cursor = NULL WHERE unit = ?", (unit,))
            return int(changed)

    def live_assets(self, unit: str | None = None) -> list[AssetRow]:
        query = "SELECT * FROM assets WHERE live = 1"
        params: tuple[str, ...] = ()
        if unit is not None:
            query += " AND unit = ?"
            params = (unit,)
        rows = self.db.execute(query + " ORDER BY unit, asset_id", params)
        return [asset_of(row) for row in rows]

    def find_asset(self, reference: str) -> AssetRow | None:
        """By `unit:id`, by id alone when it is unique, or by a content digest prefix."""
        unit, _, asset_id = reference.partition(":")
        if asset_id:
            row = self.db.execute(
                "SELECT * FROM assets WHERE unit = ? AND asset_id = ?", (unit, asset_id)
            ).fetchone()
            if row:
                return asset_of(row)
        rows = self.db.execute(
            "SELECT * FROM assets WHERE asset_id = ? AND live = 1 LIMIT 2", (reference,)
        ).fetchall()
        if len(rows) == 1:
            return asset_of(rows[0])
        if len(reference) >= 8 and is_digest_prefix(reference):
            rows = self.db.execute(
                "SELECT * FROM assets WHERE sha256 LIKE ? AND live = 1 LIMIT 2",
                (reference.lower() + "%",),
            ).fetchall()
            if len(rows) == 1:
                return asset_of(rows[0])
        return None

    # -- fingerprints ----------------------------------------------------

    def fingerprint_rows(self, recipe: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            """SELECT sha256, format, width, height, payload_digest, pixel_digest, phash, dhash,
                      phash_trim, dhash_trim, phash_inner, dhash_inner, flat, size_bytes,
                      capture != '{}' AS has_capture
               FROM fingerprints WHERE recipe = ? AND sha256 IN
                   (SELECT sha256 FROM assets WHERE live = 1 AND sha256 IS NOT NULL)
               ORDER BY sha256""",
            (recipe,),
        )
        return [code_row(row) for row in rows]

    def fingerprint_columns(self, recipe: int, after: int | None = None) -> FingerprintColumns:
        if after is None:
            query = f"""SELECT {COLUMNS_SELECT}
                FROM fingerprints WHERE recipe = ? AND sha256 IN
                    (SELECT sha256 FROM assets WHERE live = 1 AND sha256 IS NOT NULL)
                ORDER BY sha256"""
            parameters: tuple[int, ...] = (recipe,)
        else:
            query = f"""SELECT {COLUMNS_SELECT}
                FROM fingerprints WHERE recipe = ? AND rowid > ? ORDER BY rowid"""
            parameters = (recipe, after)
        builder = ColumnsBuilder()
        cursor = self.db.cursor()
        cursor.row_factory = None  # plain tuples
        try:
            # One statement: one read snapshot for every chunk.
            cursor.execute(query, parameters)
            while rows := cursor.fetchmany(FETCH_CHUNK):
                builder.add(rows)
        finally:
            cursor.close()
        return builder.build()

    def fingerprint(self, sha256: str) -> Fingerprint | None:
        row = self.db.execute("SELECT * FROM fingerprints WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return None
        return fingerprint_of(row)

    def pixel_digest(self, sha256: str) -> str | None:
        row = self.db.execute(
            "SELECT pixel_digest FROM fingerprints WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return row[0] if row else None

    def set_pixel_digest(self, sha256: str, digest: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE fingerprints SET pixel_digest = ? WHERE sha256 = ?", (digest, sha256)
            )

    # -- originals read to settle candidate pairs ---------------------------

    def originals(self, assets: Iterable[AssetRow]) -> dict[str, tuple[str, int]]:
        wanted = {(asset.unit, asset.asset_id): asset.version for asset in assets}
        found: dict[str, tuple[str, int]] = {}
        for (unit, asset_id), version in wanted.items():
            row = self.db.execute(
                "SELECT sha256, size_bytes FROM originals "
                "WHERE unit = ? AND asset_id = ? AND version = ?",
                (unit, asset_id, version),
            ).fetchone()
            if row is not None:
                found[f"{unit}:{asset_id}"] = (row["sha256"], row["size_bytes"])
        return found

    def record_original(self, asset: AssetRow, sha256: str, size_bytes: int) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO originals VALUES (?, ?, ?, ?, ?)",
                (asset.unit, asset.asset_id, asset.version, sha256, size_bytes),
            )

    # -- pairs and decisions --------------------------------------------

    def evaluated_pairs(self, recipe: int) -> set[tuple[str, str]]:
        rows = self.db.execute("SELECT sha_a, sha_b FROM pairs WHERE recipe = ?", (recipe,))
        return {(row[0], row[1]) for row in rows}

    def save_pairs(self, pairs: Sequence[PairRow], recipe: int) -> None:
        with self._transaction() as db:
            db.executemany(
                # An update, not a replace: a pair saved again as it was
                # queues nothing for the clusters (cluster_queue's triggers).
                """INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (sha_a, sha_b) DO UPDATE SET recipe = excluded.recipe,
                       tier = excluded.tier, phash_distance = excluded.phash_distance,
                       dhash_distance = excluded.dhash_distance, evidence = excluded.evidence""",
                [
                    (
                        pair.sha_a, pair.sha_b, recipe, pair.tier, pair.phash_distance,
                        pair.dhash_distance, json.dumps(pair.evidence, sort_keys=True),
                    )
                    for pair in pairs
                ],
            )  # fmt: skip

    def pairs(self) -> list[PairRow]:
        rows = self.db.execute(
            """SELECT * FROM pairs p WHERE tier IS NOT NULL
                 AND EXISTS (SELECT 1 FROM assets WHERE sha256 = p.sha_a AND live = 1)
                 AND EXISTS (SELECT 1 FROM assets WHERE sha256 = p.sha_b AND live = 1)
               ORDER BY sha_a, sha_b"""
        )
        return [pair_of(row) for row in rows]

    def decisions(self) -> dict[tuple[str, str], DecisionRow]:
        rows = self.db.execute("SELECT * FROM decisions")
        return {
            (row["sha_a"], row["sha_b"]): DecisionRow(
                sha_a=row["sha_a"],
                sha_b=row["sha_b"],
                decision=row["decision"],
                canonical_sha=row["canonical_sha"],
                decided_by=row["decided_by"],
                decided_at=row["decided_at"],
            )
            for row in rows
        }

    def save_decision(self, row: DecisionRow) -> None:
        sha_a, sha_b = ordered(row.sha_a, row.sha_b)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                (sha_a, sha_b, row.decision, row.canonical_sha, row.decided_by, row.decided_at),
            )

    def save_decisions(self, rows: Sequence[DecisionRow]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (*ordered(row.sha_a, row.sha_b), row.decision, row.canonical_sha,
                     row.decided_by, row.decided_at)
                    for row in rows
                ],
            )  # fmt: skip

    # -- write-back ------------------------------------------------------

    def set_intended(self, units: Sequence[str], intended: dict[tuple[str, str], str]) -> None:
        stamp = now_iso()
        with self._transaction() as db:
            for unit in units:
                db.execute(
                    "UPDATE outbox SET intended = '', updated_at = ? "
                    "WHERE unit = ? AND intended != ''",
                    (stamp, unit),
                )
            db.executemany(
                """INSERT INTO outbox(unit, asset_id, intended, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT(unit, asset_id) DO UPDATE SET intended = excluded.intended,
                       updated_at = CASE WHEN outbox.intended = excluded.intended
                                         THEN outbox.updated_at ELSE excluded.updated_at END""",
                [
                    (unit, asset_id, marks, stamp)
                    for (unit, asset_id), marks in intended.items()
                    if unit in units and marks
                ],
            )
            # Rows that never carried anything and should carry nothing are noise.
            db.execute("DELETE FROM outbox WHERE intended = '' AND applied IS NULL")
            db.execute("UPDATE outbox SET held = NULL WHERE held IS NOT NULL AND held != intended")

    def outbox(self, units: Sequence[str], pending_only: bool = True) -> list[OutboxRow]:
        marks = ",".join("?" for _ in units)
        query = f"""SELECT o.* FROM outbox o JOIN assets a USING (unit, asset_id)
                    WHERE a.live = 1 AND o.unit IN ({marks})"""
        if pending_only:
            query += """ AND o.intended != COALESCE(o.applied, '')
                         AND (o.held IS NULL OR o.held != o.intended)"""
        rows = self.db.execute(query + " ORDER BY o.unit, o.asset_id", tuple(units))
        return [OutboxRow(**dict(row)) for row in rows]  # the columns are its fields

    def lineages(self, group_keys: Sequence[str]) -> dict[str, tuple[str, bool]]:
        found: dict[str, tuple[str, bool]] = {}
        for chunk, marks in _chunks(group_keys):
            for row in self.db.execute(
                f"SELECT group_key, family, full FROM lineage WHERE group_key IN ({marks})", chunk
            ):
                found[str(row[0])] = (str(row[1]), bool(row[2]))
        return found

    def save_lineages(self, found: Mapping[str, tuple[str, bool]]) -> None:
        if not found:
            return
        made = now_iso()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO lineage VALUES (?, ?, ?, ?)",
                [(key, family, int(full), made) for key, (family, full) in sorted(found.items())],
            )

    def thumbnails(self, sha256s: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for chunk, marks in _chunks(sha256s):
            for row in self.db.execute(
                f"SELECT sha256, thumb FROM fingerprints WHERE sha256 IN ({marks})", chunk
            ):
                found[str(row[0])] = bytes(row[1])
        return found

    def relations(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = sorted(set(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT judged, finding FROM relations WHERE judged IN ({marks})", chunk
            ):
                found[str(row[0])] = str(row[1])
        return found

    def save_relations(self, found: Mapping[str, str]) -> None:
        if not found:
            return
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO relations VALUES (?, ?)", found.items())

    def match_queue(self, most: int | None = None) -> MatchQueue:
        cursor = self.db.cursor()
        cursor.row_factory = None
        try:
            cursor.execute("SELECT seq, sha256 FROM match_queue")
            return queue_of(iter(lambda: cursor.fetchmany(FETCH_CHUNK), []), most)
        finally:
            cursor.close()

    def clear_match_queue(self, seqs: Sequence[int]) -> None:
        with self._transaction() as db:
            _clear(db, "match_queue", seqs)

    def cluster_queue(self, most: int | None = None) -> ClusterQueue:
        cursor = self.db.cursor()
        cursor.row_factory = None
        try:
            cursor.execute("SELECT seq, sha256, unit, asset_id FROM cluster_queue")
            return cluster_queue_of(iter(lambda: cursor.fetchmany(FETCH_CHUNK), []), most)
        finally:
            cursor.close()

    def listing_saved(self) -> tuple[str, ListedFigures] | None:
        row = self.db.execute(
            "SELECT stamp, data FROM summaries WHERE name = ?", (LISTING_SUMMARY,)
        ).fetchone()
        if row is None:
            return None
        return str(row[0]), figures_from_json(row[1])

    def listing(self) -> list[tuple[bool, str]]:
        return [(bool(row[0]), row[1]) for row in self.db.execute(
            "SELECT is_similar, record FROM listing"
        )]  # fmt: skip

    def save_listing(
        self,
        expected: str | None,
        stamp: str,
        items: Sequence[ListedItem],
        replacing: Iterable[tuple[str, str]] | None,
        seqs: Sequence[int],
    ) -> ListedFigures | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT stamp FROM summaries WHERE name = ?", (LISTING_SUMMARY,)
            ).fetchone()
            if (row[0] if row is not None else None) != expected:
                return None
            if replacing is None:
                db.execute("DELETE FROM listing")
                db.execute("DELETE FROM listing_assets")
            else:
                gone = {
                    found[0]
                    for key in replacing
                    for found in db.execute(
                        "SELECT item FROM listing_assets WHERE unit = ? AND asset_id = ?", key
                    )
                }
                for chunk, marks in _chunks(gone):
                    db.execute(f"DELETE FROM listing WHERE item IN ({marks})", chunk)
                    db.execute(f"DELETE FROM listing_assets WHERE item IN ({marks})", chunk)
            db.executemany(
                "INSERT INTO listing VALUES (?, ?, ?)",
                [(item.item, int(item.similar), item.record) for item in items],
            )
            db.executemany(
                "INSERT OR IGNORE INTO listing_assets VALUES (?, ?, ?, ?)",
                [(unit, asset_id, item.item, copy)
                 for item in items for unit, asset_id, copy in item.assets],
            )  # fmt: skip
            _clear(db, "cluster_queue", seqs)
            figures: ListedFigures = {
                unit: (int(confirmed), int(waiting))
                for unit, confirmed, waiting in db.execute(
                    """SELECT unit, SUM(copy), SUM(1 - copy) FROM listing_assets
                       WHERE copy IS NOT NULL GROUP BY unit ORDER BY unit"""
                )
            }
            db.execute(
                "INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?)",
                (LISTING_SUMMARY, stamp, json.dumps(figures), now_iso()),
            )
        return figures

    def held(self, units: Sequence[str]) -> list[OutboxRow]:
        marks = ",".join("?" for _ in units)
        rows = self.db.execute(
            f"""SELECT o.* FROM outbox o JOIN assets a USING (unit, asset_id)
                WHERE a.live = 1 AND o.unit IN ({marks}) AND o.held = o.intended
                  AND o.intended != COALESCE(o.applied, '')
                ORDER BY o.unit, o.asset_id""",
            tuple(units),
        )
        return [OutboxRow(**dict(row)) for row in rows]

    def release_holds(self, units: Sequence[str]) -> int:
        marks = ",".join("?" for _ in units)
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE outbox SET held = NULL WHERE held IS NOT NULL AND unit IN ({marks})",
                tuple(units),
            )
            return int(cursor.rowcount)

    def start_push(self, units: Sequence[str], dry_run: bool, revert_of: int | None = None) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO push_runs(started_at, dry_run, revert_of, units) VALUES (?, ?, ?, ?)",
                (now_iso(), int(dry_run), revert_of, json.dumps(list(units))),
            )
            return int(cursor.lastrowid or 0)

    def finish_push(self, run: int, stats: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE push_runs SET finished_at = ?, stats = ? WHERE id = ?",
                (now_iso(), json.dumps(stats, sort_keys=True), run),
            )

    def record_written(
        self, run: int, unit: str, asset_id: str, before: str, after: str, held: str | None = None
    ) -> None:
        stamp = now_iso()
        with self._transaction() as db:
            if before != after:
                db.execute(
                    "INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?, ?, ?)",
                    (run, unit, asset_id, before, after, stamp),
                )
            db.execute(
                """INSERT INTO outbox(unit, asset_id, intended, applied, held, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(unit, asset_id) DO UPDATE SET applied = excluded.applied,
                       held = excluded.held, error = NULL, updated_at = excluded.updated_at""",
                (unit, asset_id, after, after, held, stamp),
            )

    def record_outbox_error(self, unit: str, asset_id: str, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET error = ?, updated_at = ? WHERE unit = ? AND asset_id = ?",
                (error, now_iso(), unit, asset_id),
            )

    def journal(self, run: int) -> list[JournalRow]:
        rows = self.db.execute(
            "SELECT * FROM journal WHERE run = ? ORDER BY unit, asset_id", (run,)
        )
        return [JournalRow(**dict(row)) for row in rows]  # the columns are its fields

    def push_runs(self) -> list[PushRun]:
        rows = self.db.execute("SELECT * FROM push_runs ORDER BY id")
        return [
            PushRun(
                id=row["id"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                dry_run=bool(row["dry_run"]),
                revert_of=row["revert_of"],
                units=json.loads(row["units"]),
                stats=json.loads(row["stats"]),
            )
            for row in rows
        ]

    # -- single-asset checks (webhooks) -----------------------------------

    def start_check(self, unit: str, asset_id: str, source: str) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO checks(unit, asset_id, source, received_at) VALUES (?, ?, ?, ?)",
                (unit, asset_id, source, now_iso()),
            )
            return int(cursor.lastrowid or 0)

    def finish_check(
        self, check: int, verdict: dict[str, Any] | None, error: str | None = None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE checks SET finished_at = ?, verdict = ?, error = ? WHERE id = ?",
                (
                    now_iso(),
                    None if verdict is None else json.dumps(verdict, sort_keys=True),
                    error,
                    check,
                ),
            )

    def checks(
        self, unit: str | None = None, asset_id: str | None = None, limit: int = 100
    ) -> list[CheckRow]:
        query = "SELECT * FROM checks WHERE (? IS NULL OR unit = ?) AND (? IS NULL OR asset_id = ?)"
        rows = self.db.execute(
            query + " ORDER BY id DESC LIMIT ?", (unit, unit, asset_id, asset_id, limit)
        )
        return [self._check_row(row) for row in rows]

    def check(self, check: int) -> CheckRow | None:
        row = self.db.execute("SELECT * FROM checks WHERE id = ?", (check,)).fetchone()
        return None if row is None else self._check_row(row)

    @staticmethod
    def _check_row(row: sqlite3.Row) -> CheckRow:
        # The columns are its fields; the verdict is stored as JSON text.
        return CheckRow(
            **{**dict(row), "verdict": json.loads(row["verdict"]) if row["verdict"] else None}
        )

    def first_sighting(self, unit: str, signature: str, now: float, window_s: float) -> bool:
        with self._transaction() as db:
            db.execute("DELETE FROM webhook_seen WHERE seen_at < ?", (now - window_s,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO webhook_seen VALUES (?, ?, ?)", (unit, signature, now)
            )
            return cursor.rowcount == 1

    # -- single assets (webhook checks, lookups) ----------------------------

    def fingerprint_watermark(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM fingerprints").fetchone()
        return int(row[0])

    def fingerprint_rows_after(self, recipe: int, watermark: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            """SELECT rowid AS watermark, sha256, format, width, height, payload_digest,
                      pixel_digest, phash, dhash, phash_trim, dhash_trim, phash_inner,
                      dhash_inner, flat, size_bytes, capture != '{}' AS has_capture
               FROM fingerprints WHERE recipe = ? AND rowid > ? ORDER BY rowid""",
            (recipe, watermark),
        )
        return [code_row(row) for row in rows]

    def save_asset(self, unit: str, row: AssetRow, fingerprint: Fingerprint | None) -> None:
        stamp = now_iso()
        with self._transaction() as db:
            if fingerprint is not None:
                db.execute(_SAVE_FINGERPRINT, _fingerprint_values(fingerprint))
            db.execute(_SAVE_ASSET, _asset_values(unit, row, None, stamp))

    def live_assets_with(self, sha256s: Iterable[str]) -> list[AssetRow]:
        out: list[AssetRow] = []
        for chunk, marks in _chunks(sha256s):
            rows = self.db.execute(
                f"SELECT * FROM assets WHERE live = 1 AND sha256 IN ({marks})", chunk
            )
            out.extend(asset_of(row) for row in rows)
        return sorted(out, key=lambda asset: (asset.unit, asset.asset_id))

    def shared_contents(self) -> set[str]:
        rows = self.db.execute(
            """SELECT sha256 FROM assets WHERE live = 1 AND sha256 IS NOT NULL
               GROUP BY sha256 HAVING COUNT(*) > 1"""
        )
        return {row[0] for row in rows}

    def fingerprint_columns_of(self, recipe: int, sha256s: Iterable[str]) -> FingerprintColumns:
        builder = ColumnsBuilder()
        cursor = self.db.cursor()
        cursor.row_factory = None  # plain tuples
        try:
            for chunk, marks in _chunks(sha256s):
                cursor.execute(
                    f"""SELECT {COLUMNS_SELECT} FROM fingerprints
                        WHERE recipe = ? AND sha256 IN ({marks}) ORDER BY sha256""",
                    (recipe, *chunk),
                )
                builder.add(cursor.fetchall())
        finally:
            cursor.close()
        return builder.build()

    def assets_at_url(self, url: str) -> list[AssetRow]:
        rows = self.db.execute(
            "SELECT * FROM assets WHERE live = 1 AND (url = ? OR original_url = ?) "
            "ORDER BY unit, asset_id",
            (url, url),
        )
        return [asset_of(row) for row in rows]

    def pairs_touching(self, sha256s: Iterable[str], recipe: int | None = None) -> list[PairRow]:
        found: dict[tuple[str, str], PairRow] = {}
        for chunk, marks in _chunks(sha256s):
            rows = self.db.execute(
                f"""SELECT * FROM pairs WHERE recipe IS COALESCE(?, recipe) AND sha_a IN ({marks})
                    UNION ALL SELECT * FROM pairs
                    WHERE recipe IS COALESCE(?, recipe) AND sha_b IN ({marks})""",
                (recipe, *chunk, recipe, *chunk),
            )
            for row in rows:
                found[(row["sha_a"], row["sha_b"])] = pair_of(row)
        return [found[key] for key in sorted(found)]

    def set_intended_assets(self, intended: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
        stamp = now_iso()
        with self._transaction() as db:
            changed = []
            for (unit, asset_id), marks in intended.items():
                row = db.execute(
                    "SELECT intended FROM outbox WHERE unit = ? AND asset_id = ?", (unit, asset_id)
                ).fetchone()
                if (row[0] if row else "") != marks:
                    changed.append((unit, asset_id))
            db.executemany(
                """INSERT INTO outbox(unit, asset_id, intended, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT(unit, asset_id) DO UPDATE SET intended = excluded.intended,
                       updated_at = CASE WHEN outbox.intended = excluded.intended
                                         THEN outbox.updated_at ELSE excluded.updated_at END""",
                [(unit, asset_id, marks, stamp) for (unit, asset_id), marks in intended.items()],
            )
            db.executemany(
                "DELETE FROM outbox WHERE unit = ? AND asset_id = ? "
                "AND intended = '' AND applied IS NULL",
                list(intended),
            )
            db.executemany(
                "UPDATE outbox SET held = NULL WHERE unit = ? AND asset_id = ? "
                "AND held IS NOT NULL AND held != intended",
                list(intended),
            )
            return changed

    # -- reporting -------------------------------------------------------

    def errors(self, unit: str | None = None) -> list[AssetRow]:
        return [row for row in self.live_assets(unit) if row.error is not None]

    def unit_status(self) -> dict[str, UnitStatus]:
        counts = {
            row["unit"]: (row["live"], row["errors"])
            for row in self.db.execute(
                "SELECT unit, COUNT(*) AS live, COUNT(error) AS errors "
                "FROM assets WHERE live = 1 GROUP BY unit"
            )
        }
        last = {
            row["unit"]: row
            for row in self.db.execute(
                "SELECT r.* FROM runs r JOIN (SELECT unit, MAX(id) AS id FROM runs "
                "WHERE kind = 'sync' GROUP BY unit) m ON r.id = m.id"
            )
        }
        complete = {
            row["unit"]: row["finished"]
            for row in self.db.execute(
                "SELECT unit, MAX(finished_at) AS finished FROM runs "
                "WHERE kind = 'sync' AND complete = 1 GROUP BY unit"
            )
        }
        cursors = {
            row["unit"]: row["updated_at"]
            for row in self.db.execute("SELECT unit, updated_at FROM cursors")
        }
        result: dict[str, UnitStatus] = {}
        for unit in sorted(set(counts) | set(last) | set(cursors)):
            run = last.get(unit)
            live, errors = counts.get(unit, (0, 0))
            result[unit] = UnitStatus(
                unit=unit,
                live_assets=live,
                errors=errors,
                last_sync_started=run["started_at"] if run else None,
                last_sync_finished=run["finished_at"] if run else None,
                last_sync_complete=bool(run["complete"]) if run else False,
                last_sync_stats=json.loads(run["stats"]) if run else {},
                last_complete_sync=complete.get(unit),
                cursor_updated=cursors.get(unit),
            )
        return result

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Content of every table without timestamps or run numbers: two indexes
        that hold the same knowledge dump equal."""
        return {
            "assets": [
                tuple(row)
                for row in self.db.execute(
                    "SELECT unit, asset_id, version, url, size_bytes, modified, sha256, error,"
                    " metadata, live FROM assets ORDER BY unit, asset_id"
                )
            ],
            "fingerprints": [
                tuple(row) for row in self.db.execute("SELECT * FROM fingerprints ORDER BY sha256")
            ],
            "pairs": [
                tuple(row) for row in self.db.execute("SELECT * FROM pairs ORDER BY sha_a, sha_b")
            ],
        }
