"""The City of Helsinki's Linked Events API: the images its events use (read-only).

API: https://api.hel.fi/linkedevents/v1/image/ (source and endpoint docs:
https://github.com/City-of-Helsinki/linkedevents, `events/api.py` `ImageViewSet`,
`events/api_pagination.py`). Images are public; the `apikey` header is only
needed to write, but a wrong key is refused with 401 even on a read, so a
configured key is checked on every request.

Each image record has one file (`url`, often on another host such as
www.hel.fi) and no smaller sizes, so every fetch reads the original. The
endpoint has no "modified since" filter but sorts by `last_modified_time`: an
incremental listing walks newest first and stops at the previous listing's
watermark. A full listing walks `sort=id`, which an edit during the walk cannot
reorder; an image deleted during the walk can still shift a page boundary, as
with any page-numbered API.

Metadata: an image has no place of its own (its events do), so the default
mapping leaves location unset; date is `created_time` (when the image was added)
and department is `publisher`, the organization id (e.g. "ahjo:u480400"; names
are at /v1/organization/).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from adapters.base import (
    AssetRef,
    BadAsset,
    Capabilities,
    HttpAdapter,
    MetadataMapping,
    NotFound,
    Page,
    RemoteSettings,
    RequestObserver,
    Unavailable,
    choose_rendition,
    reason,
)
from adapters.http import HttpClient

__all__ = ["LinkedEvents", "LinkedEventsCursor", "LinkedEventsSettings"]

MAX_PAGE_SIZE = 1000  # LargeResultsSetPagination.max_page_size


class LinkedEventsSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_LINKED_EVENTS_", extra="forbid")
    base_url: HttpUrl = HttpUrl("https://api.hel.fi/linkedevents/v1/")
    # Only writes need a key; leave it unset for a read-only unit.
    api_key: SecretStr | None = None
    page_size: int = Field(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    publisher: str | None = Field(None, description="organization ids, comma separated")
    data_source: str | None = Field(None, description="data source ids, comma separated")
    image_hosts: list[str] = Field(
        default_factory=list,
        description="other hosts the image files may be fetched from, e.g. https://www.hel.fi",
    )
    metadata: MetadataMapping = MetadataMapping(date="created_time", department="publisher")

    @field_validator("image_hosts")
    @classmethod
    def _with_scheme(cls, hosts: list[str]) -> list[str]:
        # A bare host name would never match: the client compares host and port.
        return [host if "//" in host else f"https://{host}" for host in hosts]


class LinkedEventsCursor(BaseModel):
    """The listing in progress. A full listing (`since` unset) walks `sort=id`;
    an incremental one walks newest first until it passes `since`. `until` is
    where the next incremental listing starts: the newest modification seen
    when this listing began, so nothing changed during it is missed."""

    page: int = Field(1, ge=1)
    since: datetime | None = None
    ids_at_since: frozenset[str] = frozenset()
    until: datetime | None = None
    ids_at_until: frozenset[str] = frozenset()


class LinkedEvents(HttpAdapter[LinkedEventsCursor]):
    kind: ClassVar[str] = "linked_events"
    settings_model = LinkedEventsSettings
    cursor_model = LinkedEventsCursor
    capabilities = Capabilities(incremental=True, describe=True, exists=True, fetch_url=True)
    http: HttpClient

    def __init__(
        self, settings: LinkedEventsSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        key = settings.api_key.get_secret_value() if settings.api_key else None
        headers = {"Accept": "application/json"}
        if key:
            headers["apikey"] = key
        self.http = HttpClient.for_settings(
            settings,
            headers=headers,
            secrets=[key],
            allowed_hosts=settings.image_hosts,
            kind=self.kind,
            observer=observer,
        )

    # -- listing ---------------------------------------------------------

    def list_assets(self, cursor: LinkedEventsCursor | None) -> Page[LinkedEventsCursor]:
        if cursor is None:
            until, ids = self._newest()
            cursor = LinkedEventsCursor(until=until, ids_at_until=ids)
        if cursor.since is None:
            return self._full_page(cursor)
        return self._changes_page(cursor)

    def _newest(self) -> tuple[datetime | None, frozenset[str]]:
        """The latest modification before a full listing starts: the next
        incremental listing begins there."""
        records, _ = self._page(1, "-last_modified_time", page_size=1)
        if not records:
            return None, frozenset()
        return _modified(records[0]), frozenset({str(records[0]["id"])})

    def _full_page(self, cursor: LinkedEventsCursor) -> Page[LinkedEventsCursor]:
        records, more = self._page(cursor.page, "id")
        items = [self._ref(record) for record in records]
        if more:
            return Page(items, cursor.model_copy(update={"page": cursor.page + 1}), False)
        if cursor.until is None:  # nothing was there when the listing began
            return Page(items, None, True)
        done = LinkedEventsCursor(since=cursor.until, ids_at_since=cursor.ids_at_until)
        return Page(items, done, True)

    def _changes_page(self, cursor: LinkedEventsCursor) -> Page[LinkedEventsCursor]:
        assert cursor.since is not None
        since, seen_at_since = cursor.since, cursor.ids_at_since
        records, more = self._page(cursor.page, "-last_modified_time")
        if cursor.page == 1:
            # Newest first: the first record is the newest change there is now.
            newest = max([since, *(_modified(record) for record in records[:1])])
            at_newest = {str(r["id"]) for r in records if _modified(r) == newest}
            ids = frozenset(at_newest | (seen_at_since if newest == since else set()))
            cursor = cursor.model_copy(update={"until": newest, "ids_at_until": ids})
        items: list[AssetRef] = []
        reached = False
        for record in records:
            modified = _modified(record)
            if modified < since:
                reached = True
                break
            if modified == since and str(record["id"]) in seen_at_since:
                continue  # listed by the previous listing, at its watermark
            items.append(self._ref(record))
        if more and not reached:
            return Page(items, cursor.model_copy(update={"page": cursor.page + 1}), False)
        done = LinkedEventsCursor(since=cursor.until, ids_at_since=cursor.ids_at_until)
        return Page(items, done, True)

    def _page(
        self, page: int, sort: str, page_size: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        params: dict[str, Any] = {
            "page": page,
            "page_size": page_size or self.settings.page_size,
            "sort": sort,
        }
        if self.settings.publisher:
            params["publisher"] = self.settings.publisher
        if self.settings.data_source:
            params["data_source"] = self.settings.data_source
        try:
            body = self.http.get_json("image/", params)
        except NotFound:
            if page == 1:
                raise
            # Images deleted while the listing ran leave fewer pages than it
            # counted: Django REST framework answers 404 there ("Invalid
            # page.", which Linked Events says in Finnish: "Epäkelpo sivu.").
            return [], False
        meta = body.get("meta") if isinstance(body, dict) else None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(meta, dict) or not isinstance(data, list):
            raise Unavailable("linked_events: the image list answer has no meta and data")
        records = [r for r in data if isinstance(r, dict) and "id" in r]
        return records, bool(meta.get("next"))

    def _ref(self, record: dict[str, Any]) -> AssetRef:
        file_url = record.get("url") or None
        modified = str(record.get("last_modified_time") or "")
        problem = None
        if not file_url:
            problem = "the image record has no file URL"
        else:
            try:
                self.http.url(file_url)
            except BadAsset:
                host = urlsplit(file_url).hostname
                problem = (
                    f"the image file is on {host}, which is not the API's host: "
                    f"add https://{host} to the unit's image_hosts to read it"
                )
        return AssetRef(
            id=str(record["id"]),
            # Any change of the record, the file's URL included, moves this.
            version=modified or str(file_url),
            url=str(record.get("@id") or file_url or ""),
            modified=modified or None,
            metadata=self.settings.metadata.apply(record),
            problem=problem,
            original_url=file_url,
        )

    def describe(self, asset_id: str) -> AssetRef:
        """`GET image/{id}/`, the record the list gives, with the unit's
        publisher and data_source filters applied to it as the list applies
        them: an image outside them is not the unit's."""
        if not asset_id.isdigit():
            raise NotFound(f"linked_events: image ids are numbers, not {asset_id!r}")
        try:
            record = self.http.get_json(f"image/{asset_id}/")
        except NotFound as exc:
            raise NotFound(f"linked_events: no image {asset_id}: {reason(exc)}") from exc
        if not isinstance(record, dict) or str(record.get("id")) != asset_id:
            raise Unavailable(f"linked_events: image/{asset_id}/ answered with another record")
        for name in ("publisher", "data_source"):
            wanted = getattr(self.settings, name)
            # As the list filters (ImageViewSet.get_queryset): the wanted ids
            # lowercased, the record's id as it is, so an id with capitals is
            # never the unit's, in a listing or here.
            if wanted and str(record.get(name) or "") not in {
                value.strip().lower() for value in wanted.split(",")
            }:
                raise NotFound(
                    f"linked_events: image {asset_id} has {name} {record.get(name)!r}, "
                    f"not the unit's {wanted!r}"
                )
        return self._ref(record)

    # -- files -----------------------------------------------------------

    def probe(self, asset: AssetRef) -> None:
        self.http.get_json(f"image/{asset.id}/")

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        # Linked Events keeps one file per image: there is no smaller size.
        url = choose_rendition(asset, min_side) or asset.original_url
        if not url:
            raise BadAsset(f"linked_events image {asset.id} has no file URL")
        return self.http.get_bytes(url)


def _modified(record: dict[str, Any]) -> datetime:
    text = record.get("last_modified_time")
    try:
        return datetime.fromisoformat(str(text))
    except ValueError as exc:
        raise Unavailable(
            f"linked_events: image {record.get('id')} has no valid last_modified_time: {text!r}"
        ) from exc
