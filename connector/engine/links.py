"""Where people open an asset: the canonical link damdup writes on copies and
shows in lookups and reports.

The asset's own unit decides (`Adapter.link`), from its configuration as it is
now, so a unit that declares `public_base_url` or `share_path` gets its links
at the next push without a sync. An asset's `url` is the address damdup reads
it from, which for a folder is a `file://` path on the damdup host: no
editor can open it, so it is never shown as the link.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from adapters.base import Adapter, AssetRef
from connector.core.index import AssetRow

__all__ = ["Links", "default_link", "link_in_words"]


def link_in_words(unit: str, path: str) -> str:
    """The unit and the asset's path, for a platform with no address to open."""
    return f"unit {unit}: {path}"


def default_link(asset: AssetRow) -> str:
    """The link of an asset whose unit has no adapter here (a `damdup scan`
    folder, a unit left out of the configuration): its URL, unless that is a
    file on the damdup host."""
    if urlsplit(asset.url).scheme.lower() in ("file", ""):
        return link_in_words(asset.unit, asset.asset_id)
    return asset.url


class Links:
    """The link of each asset, asked of its own unit's adapter."""

    def __init__(self, adapters: Mapping[str, Adapter[Any]] | None = None) -> None:
        self.adapters = dict(adapters or {})

    def __call__(self, asset: AssetRow) -> str:
        adapter = self.adapters.get(asset.unit)
        if adapter is None:
            return default_link(asset)
        ref = AssetRef(
            id=asset.asset_id,
            version=asset.version,
            url=asset.url,
            original_url=asset.original_url,
        )
        return adapter.link(ref) or link_in_words(asset.unit, asset.asset_id)
