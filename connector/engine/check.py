"""Single-asset checks (a webhook notification) and lookups of one image.

`Checker.check` brings one asset of a unit into the index as the platform has
it now, matches it against the whole index, settles each candidate pair as the
matcher does, builds the clusters of its connected component (the same answer
`damdup clusters` gives) and pushes the marks of that component only.
`Checker.lookup` answers which version of an image is the authoritative one,
without saving anything.

Matching the whole index fast: the codes of every fingerprint are held in
memory in exact Hamming indexes, built once; fingerprints saved since (by this
process or a sync elsewhere) are picked up by the store's watermark, searched
brute force in a small side list, and folded into a rebuild once it grows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import structlog

from adapters.base import Adapter, AdapterError, BadAsset, NotFound
from adapters.base import reason as error_text
from connector.core.fingerprint import (
    DECODE_SIDE,
    RECIPE,
    Fingerprint,
    ImageError,
    codes_of,
    pixel_digest,
    sha256_hex,
)
from connector.core.index import AssetRow, DecisionRow, IndexStore, PairRow, SQLiteStore, ordered
from connector.core.search import HammingIndex
from connector.core.settings import Settings
from connector.core.tiers import (
    CANDIDATE_RADIUS,
    DUPLICATE_TIERS,
    TIER_ORDER,
    Evidence,
    Tier,
    needs_pixel_check,
    needs_pixel_digest,
    place,
)
from connector.core.urls import url_under
from connector.engine.clusters import Cluster, Relation, Shape, build_clusters
from connector.engine.links import Links, default_link
from connector.engine.locks import UnitBusy, UnitLock
from connector.engine.matcher import (
    basic_evidence,
    check_not_run,
    evidence_record,
    pixel_check_job,
    with_evidence,
)
from connector.engine.outbox import (
    PushReport,
    asset_ref,
    encode,
    intended_marks,
    missing_metadata,
    push_assets,
)
from connector.engine.pool import Limits, WorkerPool
from connector.engine.scan import OriginalReader, lineage_of, worker_pool
from connector.engine.sync import (
    asset_row,
    awaits_retry,
    describe_error,
    fingerprint_job,
    sync_unit,
)

__all__ = ["Checker", "LookupRefused", "MatchIndex"]

# user:password@ in a URL.
USERINFO = re.compile(r"(?<=//)[^/?#\s@]+@")

log = structlog.get_logger(__name__)

# Fingerprints saved since the last build are searched one by one; past this
# many (or a twentieth of the index) the structure is rebuilt.
SIDE_LIMIT = 2000
# A component larger than this is still answered, but logged: a chain of
# similar shots that long is worth a look.
LARGE_COMPONENT = 500
# How long a check waits for another sync of its unit (where the platform
# cannot describe one asset and the check syncs the unit instead).
SYNC_WAIT_S = 30.0


class LookupRefused(ValueError):
    """A lookup damdup will not make: the message says why, for a person."""


class CheckFailed(Exception):
    """The asset could not be checked; recorded as the check's error."""


# -- the in-memory search structure --------------------------------------------


@dataclass(frozen=True)
class Candidate:
    sha256: str
    phash_distance: int
    dhash_distance: int


def _distance(codes_a: tuple[int, ...], codes_b: tuple[int, ...]) -> int:
    return min((x ^ y).bit_count() for x in codes_a for y in codes_b)


class MatchIndex:
    """Every fingerprint's pHash and dHash variants (as oriented, border-trimmed,
    central part) in exact Hamming indexes, plus payload and pixel digests:
    the candidates of one image within the matcher's radius, found as
    `matcher.find_candidates` would find them in a whole-index run."""

    def __init__(self, rows: list[dict[str, Any]], watermark: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.position: dict[str, int] = {}
        self.payloads: dict[str, list[int]] = {}
        self.pixels: dict[str, list[int]] = {}
        for row in rows:
            self._add(row)
        self.built = len(self.rows)
        self.watermark = watermark
        self.hash_indexes = {kind: self._build(kind) for kind in ("phash", "dhash")}
        # Fingerprints added since the build ("the side list"): their code
        # variants and owners, searched by brute force (XOR and popcount).
        self._side_codes: dict[str, list[int]] = {"phash": [], "dhash": []}
        self._side_owners: dict[str, list[int]] = {"phash": [], "dhash": []}
        self._side_arrays: dict[str, tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = {}

    def _add(self, row: dict[str, Any]) -> None:
        sha = row["sha256"]
        if sha in self.position:
            return
        self.position[sha] = len(self.rows)
        self.rows.append(row)
        for key, table in (("payload_digest", self.payloads), ("pixel_digest", self.pixels)):
            if row.get(key) is not None:
                table.setdefault(row[key], []).append(self.position[sha])

    def _build(self, kind: str) -> HammingIndex:
        codes: list[int] = []
        owners: list[int] = []
        for owner, row in enumerate(self.rows):
            if row["flat"]:  # flat images all hash alike
                continue
            for variant in codes_of(row, kind):
                codes.append(variant)
                owners.append(owner)
        return HammingIndex(np.array(codes, dtype=np.uint64), np.array(owners, dtype=np.int64))

    @property
    def side(self) -> int:
        return len(self.rows) - self.built

    def add_rows(self, rows: Iterable[dict[str, Any]], watermark: int) -> None:
        before = len(self.rows)
        for row in rows:
            self._add(row)
        for owner in range(before, len(self.rows)):
            if self.rows[owner]["flat"]:
                continue
            for kind in ("phash", "dhash"):
                for variant in codes_of(self.rows[owner], kind):
                    self._side_codes[kind].append(variant)
                    self._side_owners[kind].append(owner)
        if len(self.rows) > before:
            self._side_arrays.clear()
        self.watermark = max(self.watermark, watermark)

    def _side(self, kind: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        if kind not in self._side_arrays:
            self._side_arrays[kind] = (
                np.array(self._side_codes[kind], dtype=np.uint64),
                np.array(self._side_owners[kind], dtype=np.int64),
            )
        return self._side_arrays[kind]

    def note_pixel_digest(self, sha256: str, digest: str) -> None:
        at = self.position.get(sha256)
        if at is not None and self.rows[at].get("pixel_digest") is None:
            self.rows[at]["pixel_digest"] = digest
            self.pixels.setdefault(digest, []).append(at)

    def shape(self, sha256: str) -> Shape | None:
        at = self.position.get(sha256)
        if at is None:
            return None
        row = self.rows[at]
        return Shape(
            row["width"], row["height"], row["format"], row["has_capture"], row["size_bytes"]
        )

    def candidates(self, fingerprint: Fingerprint) -> list[Candidate]:
        """Other contents within the candidate radius on pHash or dHash, or with
        the same payload or pixel digest; each with both distances."""
        owners: set[int] = set()
        query = {kind: fingerprint.codes(kind) for kind in ("phash", "dhash")}
        if not fingerprint.flat:
            for kind, codes in query.items():
                index = self.hash_indexes[kind]
                for code in codes:
                    owners.update(owner for owner, _ in index.query(code, CANDIDATE_RADIUS))
                side_codes, side_owners = self._side(kind)
                if side_codes.size:
                    for code in codes:
                        near = np.bitwise_count(side_codes ^ np.uint64(code)) <= CANDIDATE_RADIUS
                        owners.update(side_owners[near].tolist())
        if fingerprint.payload_digest is not None:
            owners.update(self.payloads.get(fingerprint.payload_digest, ()))
        out = []
        for owner in sorted(owners):
            row = self.rows[owner]
            if row["sha256"] == fingerprint.sha256:
                continue
            out.append(
                Candidate(
                    row["sha256"],
                    _distance(query["phash"], codes_of(row, "phash")),
                    _distance(query["dhash"], codes_of(row, "dhash")),
                )
            )
        return out


# -- the checker ----------------------------------------------------------------


def asset_dict(
    asset: AssetRow, link: Callable[[AssetRow], str] = default_link, **extra: Any
) -> dict[str, Any]:
    """`url` is where damdup reads the asset; `link` where a person opens it."""
    return {
        "unit": asset.unit,
        "asset_id": asset.asset_id,
        "url": asset.url,
        "link": link(asset),
        "original_url": asset.original_url,
        "metadata": asset.metadata,
        **extra,
    }


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


def cluster_dict(
    cluster: Cluster, exclude: str | None = None, link: Callable[[AssetRow], str] = default_link
) -> dict[str, Any]:
    return {
        "id": cluster.id,
        "tier": cluster.tier.value,
        "canonical": asset_dict(cluster.canonical, link, reason=cluster.reason),
        "copies": [
            asset_dict(member.asset, link, tier=member.edge.tier.value, role=member.edge.mark)
            for member in cluster.members
            if member.asset.key != exclude
        ],
    }


class Checker:
    """Thread-safe: several worker threads call check() at once. Each call
    opens its own index connection; the search structure is shared."""

    def __init__(
        self,
        db_path: Path,
        settings: Settings,
        adapters: Mapping[str, Adapter[Any]],
        writes: Mapping[str, bool],
    ) -> None:
        self.db_path = Path(db_path)
        self.settings = settings
        self.adapters = dict(adapters)
        self.links = Links(self.adapters)
        self.writes = dict(writes)
        self._index: MatchIndex | None = None
        self._index_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._pool_lock = threading.Lock()

    def warm(self) -> None:
        """Build the search structure and start the worker processes now, so
        that the first notification does not wait for them."""
        store = SQLiteStore(self.db_path)
        try:
            self._matcher(store)
        finally:
            store.close()
        with self._pool_lock:
            for _ in self._worker_pool().map(len, [("warm", (b"",))], describe_error):
                pass

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        with self._index_lock:
            self._index = None

    # -- the search structure -------------------------------------------------

    def _matcher(self, store: IndexStore) -> MatchIndex:
        """The structure, up to date with every fingerprint the store holds."""
        with self._index_lock:
            watermark = store.fingerprint_watermark()
            index = self._index
            if index is None:
                index = MatchIndex(store.fingerprint_rows_after(RECIPE, 0), watermark)
                log.info("check.index_built", fingerprints=len(index.rows))
            elif watermark > index.watermark:
                index.add_rows(store.fingerprint_rows_after(RECIPE, index.watermark), watermark)
                if index.side > max(SIDE_LIMIT, len(index.rows) // 20):
                    index = MatchIndex(index.rows, index.watermark)
                    log.info("check.index_rebuilt", fingerprints=len(index.rows))
            self._index = index
            return index

    # -- check -----------------------------------------------------------------

    def check(self, unit: str, asset_id: str, check_id: int) -> dict[str, Any]:
        """The verdict on one asset, also stored as the check's result; a bad
        asset or a platform error is recorded and returned as {"error": ...}."""
        store = SQLiteStore(self.db_path)
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
                    store.finish_check(check_id, verdict)
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
        """The asset as the platform has it now, fingerprinted into the index."""
        if not adapter.capabilities.describe:
            return self._synced(store, unit, adapter, asset_id)
        try:
            ref = adapter.describe(asset_id)
        except NotFound as exc:
            raise CheckFailed(f"{unit} has no asset {asset_id}: {error_text(exc)}") from exc
        if ref.problem is not None:
            store.save_asset(unit, asset_row(unit, ref, None, ref.problem), None)
            raise CheckFailed(f"{unit}:{asset_id} cannot be read: {ref.problem}")
        known = store.find_asset(f"{unit}:{asset_id}")
        if (
            known is not None
            and known.version == ref.version
            and known.sha256 is not None
            and store.known_fingerprints([known.sha256], RECIPE)
        ):
            row = asset_row(unit, ref, known.sha256, None)  # metadata may have changed
            store.save_asset(unit, row, None)
            return row
        try:
            data = adapter.fetch(ref, min_side=DECODE_SIDE)
        except AdapterError as exc:
            store.save_asset(
                unit, asset_row(unit, ref, None, f"fetch failed: {error_text(exc)}"), None
            )
            raise
        if len(data) > self.settings.max_file_bytes:
            error = f"file is over the {self.settings.max_file_bytes:,} byte limit"
            store.save_asset(unit, asset_row(unit, ref, None, error), None)
            raise CheckFailed(error)
        sha = sha256_hex(data)
        fingerprint = None
        if not store.known_fingerprints([sha], RECIPE):
            try:
                fingerprint = self._fingerprint(data)
            except ImageError as exc:
                error = error_text(exc)
                store.save_asset(unit, asset_row(unit, ref, None, error), None)
                raise CheckFailed(f"{unit}:{asset_id}: {error}") from exc
        row = asset_row(unit, ref, sha, None)
        store.save_asset(unit, row, fingerprint)
        return row

    def _synced(
        self, store: IndexStore, unit: str, adapter: Adapter[Any], asset_id: str
    ) -> AssetRow:
        """Where the platform cannot describe one asset: an incremental sync of
        the unit (one at a time per unit), then the asset as the index has it."""
        limits = Limits(
            seconds=self.settings.file_timeout_s,
            memory_bytes=self.settings.worker_memory_mb * 1024 * 1024,
        )
        try:
            with UnitLock(self.db_path, unit, wait_s=SYNC_WAIT_S), WorkerPool(1, limits) as pool:
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
        row = store.find_asset(f"{unit}:{asset_id}")
        if row is None or not row.live:
            raise CheckFailed(f"{unit} has no asset {asset_id} (not in its listing)")
        if row.error is not None or row.sha256 is None:
            if awaits_retry(row.error):
                raise CheckFailed(f"{unit}:{asset_id} could not be fetched: {row.error}")
            raise CheckFailed(f"{unit}:{asset_id} cannot be read: {row.error}")
        return row

    def _check(self, store: IndexStore, unit: str, asset_id: str) -> dict[str, Any]:
        adapter = self.adapters.get(unit)
        if adapter is None:
            raise CheckFailed(f"unknown unit {unit!r}; configured: {', '.join(self.adapters)}")
        asset = self._current(store, unit, adapter, asset_id)
        assert asset.sha256 is not None
        fingerprint = store.fingerprint(asset.sha256)
        if fingerprint is None:
            raise CheckFailed(f"the fingerprint of {asset.key} vanished from the index")
        index = self._matcher(store)
        self._settle(store, index, fingerprint)
        component = self._component(store, index, [fingerprint.sha256])
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
        rows: list[PairRow] = []
        for (sha_a, sha_b), evidence in self._settle_pairs(store, index, fingerprint, todo, None):
            verdict = place(evidence)
            rows.append(
                PairRow(
                    sha_a=sha_a,
                    sha_b=sha_b,
                    tier=verdict.tier.value if verdict.tier else None,
                    phash_distance=evidence.phash_distance,
                    dhash_distance=evidence.dhash_distance,
                    evidence=evidence_record(evidence, verdict),
                )
            )
        if rows:
            store.save_pairs(rows, RECIPE)

    def _settle_pairs(
        self,
        store: IndexStore,
        index: MatchIndex,
        fingerprint: Fingerprint,
        candidates: list[Candidate],
        query_data: tuple[str, bytes] | None,
    ) -> list[tuple[tuple[str, str], Evidence]]:
        """Settle pairs of `fingerprint` as the matcher does: digests of the
        full pixels where they may be identical, else the pixel check on the
        small decodes (in the worker processes, all pairs at once).
        `query_data`: the original bytes of a looked-up image, by its sha."""
        settled: dict[tuple[str, str], Evidence] = {}
        jobs: list[tuple[tuple[str, str], tuple[bytes, bytes]]] = []
        for candidate in candidates:
            other = store.fingerprint(candidate.sha256)
            if other is None:
                continue
            key = ordered(fingerprint.sha256, candidate.sha256)
            a, b = (fingerprint, other) if key[0] == fingerprint.sha256 else (other, fingerprint)
            evidence = basic_evidence(a, b, candidate.phash_distance, candidate.dhash_distance)
            if needs_pixel_digest(evidence, (a.width, a.height) == (b.width, b.height)):
                digest_a = self._pixel_digest(store, index, a.sha256, query_data)
                digest_b = self._pixel_digest(store, index, b.sha256, query_data)
                if digest_a is not None and digest_b is not None:
                    evidence = with_evidence(evidence, same_pixels=digest_a == digest_b)
            settled[key] = evidence
            if needs_pixel_check(evidence):
                jobs.append((key, (a.thumb, b.thumb)))
        for key, check in self._pixel_checks(jobs).items():
            settled[key] = with_evidence(
                settled[key], pixel_check_passed=bool(check.get("passed")), pixel_check=check
            )
        return sorted(settled.items())

    def _pixel_checks(
        self, jobs: list[tuple[tuple[str, str], tuple[bytes, bytes]]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The pixel check of each pair, in the worker processes (time and
        memory limits, a crash costs one pair); one pair alone runs here."""
        if len(jobs) == 1:
            key, (thumb_a, thumb_b) = jobs[0]
            try:
                return {key: pixel_check_job(thumb_a, thumb_b)}
            except Exception as exc:
                return {key: check_not_run(exc)}
        results: dict[tuple[str, str], dict[str, Any]] = {}
        if not jobs:
            return results
        with self._pool_lock:  # WorkerPool.map is one caller's at a time
            for outcome in self._worker_pool().map(pixel_check_job, jobs, describe_error):
                results[outcome.key] = (
                    outcome.value if outcome.error is None else check_not_run(outcome.error)
                )
        return results

    def _fingerprint(self, data: bytes) -> Fingerprint:
        """Fingerprinted in a worker process under the limits a sync uses (time,
        memory, pixels, bytes): a hostile upload cannot stall or exhaust the
        server. ImageError says why it could not be."""
        job = ("image", (data, self.settings.max_pixels, self.settings.max_file_bytes))
        with self._pool_lock:  # WorkerPool.map is one caller's at a time
            outcomes = list(self._worker_pool().map(fingerprint_job, [job], describe_error))
        if not outcomes:
            raise ImageError("the fingerprint worker returned nothing")
        if outcomes[0].error is not None:
            raise ImageError(outcomes[0].error)
        fingerprint: Fingerprint = outcomes[0].value
        return fingerprint

    def _worker_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = worker_pool(self.settings)
        return self._pool

    def _pixel_digest(
        self,
        store: IndexStore,
        index: MatchIndex,
        sha256: str,
        query_data: tuple[str, bytes] | None,
    ) -> str | None:
        if query_data is not None and query_data[0] == sha256:
            try:
                return pixel_digest(query_data[1], self.settings.max_pixels)
            except Exception as exc:
                log.warning("pixel_digest.failed", sha256=sha256, reason=describe_error(exc))
                return None
        known = store.pixel_digest(sha256)
        if known is not None:
            return known
        for asset in store.live_assets_with([sha256]):
            adapter = self.adapters.get(asset.unit)
            if adapter is None:
                continue
            try:
                data = adapter.fetch_original(asset_ref(asset))
                digest = pixel_digest(data, self.settings.max_pixels)
            except (AdapterError, ImageError, OSError, ValueError) as exc:
                log.warning("pixel_digest.failed", asset=asset.key, reason=error_text(exc))
                continue
            if query_data is None:  # a lookup saves nothing
                store.set_pixel_digest(sha256, digest)
            with self._index_lock:
                index.note_pixel_digest(sha256, digest)
            return digest
        return None

    def _component(self, store: IndexStore, index: MatchIndex, start: Iterable[str]) -> Component:
        """Every content linked to `start` by a related pair or a decision, and
        the clusters of their live assets, built as for the whole index."""
        decisions = store.decisions()
        decided: dict[str, set[str]] = {}
        for sha_a, sha_b in decisions:
            decided.setdefault(sha_a, set()).add(sha_b)
            decided.setdefault(sha_b, set()).add(sha_a)
        seen = set(start)
        frontier = set(seen)
        pairs: dict[tuple[str, str], PairRow] = {}
        while frontier:
            found: set[str] = set()
            for pair in store.pairs_touching(frontier, RECIPE):
                if pair.tier is None:
                    continue
                pairs[(pair.sha_a, pair.sha_b)] = pair
                found.update((pair.sha_a, pair.sha_b))
            for sha in frontier:
                found.update(decided.get(sha, ()))
            frontier = found - seen
            seen |= frontier
        if len(seen) > LARGE_COMPONENT:
            log.warning("check.large_component", contents=len(seen))
        assets = store.live_assets_with(seen)
        live = {asset.sha256 for asset in assets if asset.sha256 is not None}
        kept = [pair for pair in pairs.values() if pair.sha_a in live and pair.sha_b in live]
        shapes: dict[str, Shape] = {}
        for content in live:
            shape = index.shape(content)
            if shape is not None:
                shapes[content] = shape
        component_decisions: dict[tuple[str, str], DecisionRow] = {
            key: row for key, row in decisions.items() if key[0] in seen or key[1] in seen
        }
        clusters, relations = build_clusters(
            assets,
            shapes,
            kept,
            component_decisions,
            self.settings.authoritative_units,
            lineage_of(store, OriginalReader(store, self.adapters)),
        )
        return Component(assets, clusters, relations)

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

    def _verdict(self, asset: AssetRow, component: Component, report: PushReport) -> dict[str, Any]:
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
        if cluster is not None:
            keys |= {cluster.canonical.key} | {m.asset.key for m in cluster.members}
        copies = []
        if cluster is not None:
            if cluster.canonical.key != asset.key:
                copies.append(
                    asset_dict(cluster.canonical, self.links, tier="canonical", role="canonical")
                )
            copies += cluster_dict(cluster, exclude=asset.key, link=self.links)["copies"]
        return {
            "unit": asset.unit,
            "asset_id": asset.asset_id,
            "asset": asset_dict(asset, self.links, sha256=asset.sha256),
            "role": role,
            "tier": tier,
            "cluster": cluster.id if cluster is not None else None,
            "canonical": (
                asset_dict(cluster.canonical, self.links, reason=cluster.reason)
                if cluster is not None
                else None
            ),
            "copies": copies,
            "similar": [asset_dict(other, self.links) for other in component.similar_to(keys)],
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

    # -- lookup ----------------------------------------------------------------

    def lookup(self, data: bytes | None = None, url: str | None = None) -> dict[str, Any]:
        """Which indexed assets an image is: the matching cluster's canonical,
        every copy with its unit and tier, other shots of the scene apart.
        Saves nothing. Raises LookupRefused for what it will not look up."""
        if (data is None) == (url is None):
            raise LookupRefused("give either an image or a URL")
        store = SQLiteStore(self.db_path)
        try:
            if url is not None:
                indexed = [a for a in store.assets_at_url(url) if a.sha256 is not None]
                if indexed:
                    return self._lookup_indexed(store, indexed[0])
                data = self._fetch_url(url)
            assert data is not None
            return self._lookup_bytes(store, data)
        finally:
            store.close()

    def _fetch_url(self, url: str) -> bytes:
        # The URL is fetched exactly as given; a user name and password in it
        # (refused below) are never repeated in a message.
        shown = USERINFO.sub("", url)
        if urlsplit(url).scheme not in ("http", "https"):
            raise LookupRefused(f"only http(s) addresses can be looked up, not {shown!r}")
        for unit, adapter in self.adapters.items():
            base = getattr(adapter.settings, "base_url", None)
            if base is None or url_under(url, str(base)) is not None:
                continue
            if not adapter.capabilities.fetch_url:
                raise LookupRefused(f"unit {unit} ({adapter.kind}) cannot fetch by URL")
            try:
                return adapter.fetch_url(url)
            except AdapterError as exc:
                raise LookupRefused(
                    f"could not fetch {shown} from unit {unit}: {error_text(exc)}"
                ) from exc
        # Object stores have no base URL: each adapter knows its bucket's or
        # container's address and reads only an object under it (BadAsset else).
        for adapter in self.adapters.values():
            if (
                getattr(adapter.settings, "base_url", None) is not None
                or not adapter.capabilities.fetch_url
            ):
                continue
            try:
                return adapter.fetch_url(url)
            except BadAsset:
                continue
            except AdapterError as exc:
                raise LookupRefused(f"could not fetch {shown}: {error_text(exc)}") from exc
        raise LookupRefused(
            f"{shown} is not under the base URL of any configured unit; "
            "damdup fetches only from the units' own platforms"
        )

    def _lookup_indexed(self, store: IndexStore, asset: AssetRow) -> dict[str, Any]:
        assert asset.sha256 is not None
        index = self._matcher(store)
        component = self._component(store, index, [asset.sha256])
        matches = {sha: Tier.EXACT for sha in [asset.sha256]}
        return self._answer(component, matches, query={"sha256": asset.sha256, "indexed": True})

    def _lookup_bytes(self, store: IndexStore, data: bytes) -> dict[str, Any]:
        if len(data) > self.settings.max_file_bytes:
            raise LookupRefused(
                f"the image is over the {self.settings.max_file_bytes:,} byte limit"
            )
        try:
            fingerprint = self._fingerprint(data)
        except ImageError as exc:
            raise LookupRefused(f"not an image damdup can read: {error_text(exc)}") from exc
        index = self._matcher(store)
        matches: dict[str, Tier] = {}
        known = store.fingerprint(fingerprint.sha256)
        if known is not None and store.live_assets_with([fingerprint.sha256]):
            matches[fingerprint.sha256] = Tier.EXACT
        settled = self._settle_pairs(
            store, index, fingerprint, index.candidates(fingerprint), (fingerprint.sha256, data)
        )
        for (sha_a, sha_b), evidence in settled:
            verdict = place(evidence)
            if verdict.tier is not None:
                matches[sha_b if sha_a == fingerprint.sha256 else sha_a] = verdict.tier
        query = {
            "sha256": fingerprint.sha256,
            "indexed": fingerprint.sha256 in matches,
            "width": fingerprint.width,
            "height": fingerprint.height,
            "format": fingerprint.format,
        }
        component = self._component(store, index, matches)
        return self._answer(component, matches, query)

    def _answer(
        self, component: Component, matches: dict[str, Tier], query: dict[str, Any]
    ) -> dict[str, Any]:
        """Clusters holding a duplicate of the query, best match first; assets
        that are duplicates of it but in no cluster stand as their own
        canonical; `similar` shots are listed apart."""
        by_sha: dict[str, list[AssetRow]] = {}
        for asset in component.assets:
            if asset.sha256 is not None:
                by_sha.setdefault(asset.sha256, []).append(asset)
        duplicates = sorted(
            (sha for sha, tier in matches.items() if tier in DUPLICATE_TIERS and sha in by_sha),
            key=lambda sha: (TIER_ORDER[matches[sha]], sha),
        )
        answers: list[dict[str, Any]] = []
        placed: set[str] = set()
        for sha in duplicates:
            for asset in by_sha[sha]:
                if asset.key in placed:
                    continue
                cluster = component.cluster_of(asset.key)
                if cluster is None:
                    placed.add(asset.key)
                    answers.append(
                        {
                            "id": None,
                            "tier": None,
                            "canonical": asset_dict(
                                asset,
                                self.links,
                                reason="the only copy in the index",
                                match=matches[sha].value,
                            ),
                            "copies": [],
                        }
                    )
                    continue
                members = [cluster.canonical] + [m.asset for m in cluster.members]
                placed.update(member.key for member in members)
                answer = cluster_dict(cluster, link=self.links)
                answer["canonical"]["match"] = _match(matches, cluster.canonical)
                for copy, member in zip(answer["copies"], cluster.members, strict=True):
                    copy["match"] = _match(matches, member.asset)
                answers.append(answer)
        similar_keys = {
            asset.key
            for sha, tier in matches.items()
            if tier == Tier.SIMILAR
            for asset in by_sha.get(sha, [])
        }
        similar = [
            asset_dict(asset, self.links, match=Tier.SIMILAR.value)
            for asset in component.assets
            if asset.key in similar_keys and asset.key not in placed
        ]
        first = answers[0] if answers else None
        return {
            "query": query,
            "match": bool(answers),
            "canonical": first["canonical"] if first else None,
            "cluster": first["id"] if first else None,
            "copies": first["copies"] if first else [],
            "clusters": answers,
            "similar": similar,
        }


def _match(matches: dict[str, Tier], asset: AssetRow) -> str | None:
    """How the looked-up image matches this asset directly, if it does."""
    tier = matches.get(asset.sha256 or "")
    return tier.value if tier is not None else None
