"""Which indexed version of an image is the authoritative one.

`lookup` takes an image's bytes or an address on a unit's platform and answers
with the matching cluster's canonical, every copy with its unit and tier, and
other shots of the scene apart. It saves nothing.
"""

from __future__ import annotations

import re
from typing import TypedDict
from urllib.parse import urlsplit

from adapters.base import AdapterError, BadAsset
from adapters.base import reason as error_text
from connector.core.fingerprint import ImageError
from connector.core.index import AssetRow, IndexStore
from connector.core.tiers import DUPLICATE_TIERS, TIER_ORDER, Tier
from connector.core.urls import url_under
from connector.engine.component import (
    AssetEntry,
    ClusterEntry,
    Component,
    asset_entry,
    cluster_entry,
)
from connector.engine.ingest import TooLarge
from connector.engine.workbench import Workbench

__all__ = ["LookupAnswer", "LookupRefused", "lookup"]

# user:password@ in a URL.
USERINFO = re.compile(r"(?<=//)[^/?#\s@]+@")


class LookupRefused(ValueError):
    """A lookup damdup will not make: the message says why, for a person."""


class Query(TypedDict, total=False):
    sha256: str
    indexed: bool
    width: int
    height: int
    format: str


class LookupAnswer(TypedDict):
    query: Query
    match: bool
    canonical: AssetEntry | None
    cluster: str | None
    copies: list[AssetEntry]
    clusters: list[ClusterEntry]
    similar: list[AssetEntry]


def lookup(bench: Workbench, data: bytes | None = None, url: str | None = None) -> LookupAnswer:
    """Which indexed assets an image is: the matching cluster's canonical,
    every copy with its unit and tier, other shots of the scene apart.
    Saves nothing. Raises LookupRefused for what it will not look up."""
    if (data is None) == (url is None):
        raise LookupRefused("give either an image or a URL")
    store = bench.open_store()
    try:
        if url is not None:
            indexed = [a for a in store.assets_at_url(url) if a.sha256 is not None]
            if indexed:
                return _indexed(bench, store, indexed[0])
            data = _fetch_url(bench, url)
        assert data is not None
        return _by_bytes(bench, store, data)
    finally:
        store.close()


def _fetch_url(bench: Workbench, url: str) -> bytes:
    # The URL is fetched exactly as given; a user name and password in it
    # (refused below) are never repeated in a message.
    shown = USERINFO.sub("", url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise LookupRefused(f"only http(s) addresses can be looked up, not {shown!r}")
    for unit, adapter in bench.adapters.items():
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
    for adapter in bench.adapters.values():
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


def _indexed(bench: Workbench, store: IndexStore, asset: AssetRow) -> LookupAnswer:
    assert asset.sha256 is not None
    index = bench.index.current(store)
    component = bench.component(store, index, [asset.sha256])
    return _answer(
        bench, component, {asset.sha256: Tier.EXACT}, {"sha256": asset.sha256, "indexed": True}
    )


def _by_bytes(bench: Workbench, store: IndexStore, data: bytes) -> LookupAnswer:
    try:
        fingerprint = bench.fingerprint(store, data)
    except TooLarge as exc:
        raise LookupRefused(error_text(exc)) from exc
    except ImageError as exc:
        raise LookupRefused(f"not an image damdup can read: {error_text(exc)}") from exc
    index = bench.index.current(store)
    matches: dict[str, Tier] = {}
    if store.fingerprint(fingerprint.sha256) is not None and store.live_assets_with(
        [fingerprint.sha256]
    ):
        matches[fingerprint.sha256] = Tier.EXACT
    for settled in bench.settle(store, fingerprint, index.candidates(fingerprint), query=data):
        row = settled.row
        if row.tier is not None:
            matches[row.sha_b if row.sha_a == fingerprint.sha256 else row.sha_a] = Tier(row.tier)
    query: Query = {
        "sha256": fingerprint.sha256,
        "indexed": fingerprint.sha256 in matches,
        "width": fingerprint.width,
        "height": fingerprint.height,
        "format": fingerprint.format,
    }
    component = bench.component(store, index, matches)
    return _answer(bench, component, matches, query)


def _answer(
    bench: Workbench, component: Component, matches: dict[str, Tier], query: Query
) -> LookupAnswer:
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
    answers: list[ClusterEntry] = []
    placed: set[str] = set()
    for sha in duplicates:
        for asset in by_sha[sha]:
            if asset.key in placed:
                continue
            cluster = component.cluster_of(asset.key)
            if cluster is None:
                placed.add(asset.key)
                alone = asset_entry(asset, bench.links)
                alone["reason"] = "the only copy in the index"
                alone["match"] = matches[sha].value
                answers.append({"id": None, "tier": None, "canonical": alone, "copies": []})
                continue
            members = [cluster.canonical] + [m.asset for m in cluster.members]
            placed.update(member.key for member in members)
            answer = cluster_entry(cluster, link=bench.links)
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
    similar = []
    for asset in component.assets:
        if asset.key in similar_keys and asset.key not in placed:
            entry = asset_entry(asset, bench.links)
            entry["match"] = Tier.SIMILAR.value
            similar.append(entry)
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
