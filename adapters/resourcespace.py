"""ResourceSpace (https://www.resourcespace.com) through its signed JSON API.

Every call is `GET <base>/api/?user=<u>&function=<f>&<named params>&sign=<s>`
where `s` is the sha256 hex of the user's private key followed by the query
string (https://www.resourcespace.com/knowledge-base/api/). Parameters go by
name, as the current API documentation allows, so optional ones can be left out.

Listing: `do_search` with `fetchrows="<offset>,<rows>"` (ResourceSpace 10.3+
answers {"total", "data"}), newest `modified` first. ResourceSpace has no
"modified since" search, so an incremental listing reads newest first and stops
at the first resource older than the previous listing's newest; resources that
share that second are told apart by ref. `modified` is MySQL's "YYYY-MM-DD
HH:MM:SS" in the server's time zone, which the API does not name: the cursor
keeps it as a naive datetime, compared only with the server's own times. An
empty (NULL) or unreadable `modified`, which MySQL sorts after every time in a
descending order, reads as the earliest time there is (`UNDATED`). One
`get_resource_path` call per page
(an array of refs) gives the originals' URLs. Renditions cost one
`get_resource_all_image_sizes` call, made only when an asset is fetched; its
preview sizes are scale-to-fit boxes, and padded ones (`padtosize`) are
rejected by their aspect ratio like any crop.

What the real server does beyond its documents (tests/servers/resourcespace_real.py):
`total` is a count cached for up to 30 minutes, so a listing ends at a short
page; installations with `$hide_real_filepath` (all new ones) give
download.php addresses with a one-time `access_key`, kept without it and
re-keyed with get_resource_path when fetched; a deleted resource stays, in
archive state 3, with its fields and files (and in `!list` searches), so the
archive state is checked before fetching, describing, marking or confirming
a resource; get_resource_field_data answers empty fields for a resource that
does not exist.

Metadata comes from the search rows' `field<N>` columns, which ResourceSpace
fills only for its "resource table joins" (the display fields 8 title, 3 country
and 12 date, plus the `$data_joins` of its config.php). A unit whose fields are
not joined either adds them to `$data_joins` or sets `field_data`, which reads
`get_resource_field_data` for every listed resource (one call each) and offers
the values as `fields.<shortname>`.

Marks (https://www.resourcespace.com/knowledge-base/api/update_field,
.../update_related_resource, .../get_related_resources, .../get_edit_access):
damdup's marks are one JSON object in a text field created for damdup
(`marks_field`, a field ref or shortname), written with `update_field` (a
blank value unsets the field). When the canonical link names another
resource of this ResourceSpace (its `pages/view.php?ref=` page), the resource
is also related to it with `update_related_resource`, a function call that
adds or (with add=0) removes a link between two resources, never a resource.
The field records the relations damdup made (`related`), so that a relation
that no longer holds is removed while relations people made are kept: a pair
already related when damdup first wanted the link is left out of the record
and never unrelated. The field is written before a relation is added and
after one is removed, so an interrupted annotate leaves every relation of
damdup's recorded and the next one finishes it. Reads are signed GETs; the
writes are signed POSTs (`query`, `user` and `sign` in the body, as api/index.php
reads them), so the canonical link and signature stay out of access logs.
`update_field` moves the resource's `modified`, never `file_modified`,
`file_size` or `file_checksum`, of which `version` is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections import defaultdict
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from adapters.base import (
    AssetRef,
    AuthFailed,
    Capabilities,
    HttpAdapter,
    Marks,
    MetadataMapping,
    NotFound,
    Page,
    RemoteSettings,
    Rendition,
    RequestObserver,
    Unavailable,
    Unsupported,
    choose_rendition,
    has_image_extension,
)
from adapters.http import HttpClient, Reply

__all__ = [
    "ResourceSpace",
    "ResourceSpaceCursor",
    "ResourceSpacePaginator",
    "ResourceSpaceSettings",
]

# What an empty or unreadable `modified` reads as: older than any time, as
# MySQL orders NULL after every time when sorting newest first.
UNDATED = datetime.min


class ResourceSpaceSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_RESOURCESPACE_", extra="forbid")
    username: str = Field(min_length=1, description="the API user (its login name)")
    private_key: SecretStr = Field(description="the user's API key, from their profile page")
    # No documented maximum; a thousand rows keep each answer a few megabytes.
    page_size: int = Field(100, ge=1, le=1000)
    search: str = Field("", description='ResourceSpace search string, e.g. "!collection12"')
    resource_types: str = Field("", pattern=r"^(\d+(,\d+)*)?$", description='e.g. "1" (Photo)')
    archive: str = Field("0", pattern=r"^-?\d+(,-?\d+)*$", description="archive states; 0 = live")
    field_data: bool = Field(
        False, description="read every field of each listed resource (one call per resource)"
    )
    full_checksums: bool = Field(
        False,
        description="the server sets $file_checksums_50k = false, so file_checksum is the "
        "whole file's MD5 (by default it covers only the size and the first 50 kB)",
    )
    metadata: MetadataMapping = MetadataMapping(
        location="field3", date="field12", department="field10"
    )
    marks_field: str = Field(
        "damdup",
        pattern=r"^[A-Za-z0-9_-]{1,50}$",
        description="ref or shortname of the text field created for damdup's marks",
    )
    relate_duplicates: bool = Field(
        True,
        description="relate a resource to its canonical when that is a resource of this "
        "ResourceSpace (update_related_resource)",
    )


class ResourceSpaceCursor(BaseModel):
    """A position in a newest-first listing. Times are the server's local
    `modified` as naive datetimes (module docstring); cursors saved with them
    as strings ("YYYY-MM-DD HH:MM:SS", "" for an empty one) load as the same
    times."""

    model_config = ConfigDict(frozen=True)
    offset: int = Field(0, ge=0)  # rows of this listing already read
    # The previous listing's newest `modified` and the refs seen at it: this
    # listing stops below it and skips those refs at it.
    modified_since: datetime | None = None
    seen_at_since: frozenset[str] = frozenset()
    # The newest `modified` this listing has met (its first row) and the refs at it.
    newest: datetime | None = None
    seen_at_newest: frozenset[str] = frozenset()

    @field_validator("modified_since", "newest", mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """Saved as a string: read as the listing reads `modified`."""
        return _modified(value) if isinstance(value, str) else value


class ResourceSpacePaginator:
    """Offset paging newest `modified` first (module docstring), as
    singer_sdk's paginators: it writes the page's `fetchrows` from its
    cursor and reads an answer into the next cursor. An incremental listing
    ends at the first row older than the previous listing's newest time,
    and skips the refs that listing handed out at that time."""

    def __init__(self, cursor: ResourceSpaceCursor | None, page_size: int) -> None:
        self.cursor = cursor or ResourceSpaceCursor()
        self.page_size = page_size
        self.finished = False

    def fetchrows(self) -> str:
        return f"{self.cursor.offset},{self.page_size}"

    def advance(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows to hand out; moves the cursor past the page."""
        times = [_modified(row.get("modified")) for row in rows]
        _check_newest_first(times)
        cursor = self.cursor
        since = cursor.modified_since
        newest = cursor.newest if cursor.newest is not None else next(iter(times), None)
        # Newest first: the rows before the first one older than `since`.
        current = [
            (str(row["ref"]), modified, row)
            for row, modified in itertools.takewhile(
                lambda pair: since is None or pair[1] >= since, zip(rows, times, strict=True)
            )
        ]
        seen_at_newest = cursor.seen_at_newest | {
            ref for ref, modified, _ in current if modified == newest
        }
        if len(current) < len(rows) or len(rows) < self.page_size:
            # `total` is a count ResourceSpace caches for up to 30 minutes
            # ($cache_search_count) and corrects only when a page contradicts
            # it: the listing ends at a short page, never at `total`.
            self.cursor = self._next_listing(newest, seen_at_newest)
            self.finished = True
        else:
            self.cursor = cursor.model_copy(
                update={
                    "offset": cursor.offset + len(rows),
                    "newest": newest,
                    "seen_at_newest": seen_at_newest,
                }
            )
        return [
            row
            for ref, modified, row in current
            if not (modified == since and ref in cursor.seen_at_since)
        ]

    def _next_listing(
        self, newest: datetime | None, seen_at_newest: frozenset[str]
    ) -> ResourceSpaceCursor:
        since, seen_at_since = self.cursor.modified_since, self.cursor.seen_at_since
        if newest is None or (since is not None and newest < since):
            # Nothing at or after the previous mark is left: keep it.
            return ResourceSpaceCursor(modified_since=since, seen_at_since=seen_at_since)
        refs = seen_at_newest | (seen_at_since if newest == since else frozenset())
        return ResourceSpaceCursor(modified_since=newest, seen_at_since=refs)


class ResourceSpace(HttpAdapter[ResourceSpaceCursor]):
    kind: ClassVar[str] = "resourcespace"
    settings_model = ResourceSpaceSettings
    cursor_model = ResourceSpaceCursor
    capabilities = Capabilities(
        incremental=True, renditions=True, annotate=True, describe=True, exists=True, fetch_url=True
    )
    http: HttpClient

    def __init__(
        self, settings: ResourceSpaceSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        self._private_key = settings.private_key.get_secret_value()
        self.http = HttpClient.for_settings(
            settings, secrets=[self._private_key], kind=self.kind, observer=observer
        )
        self._archive_states = {int(state) for state in settings.archive.split(",")}
        if settings.search.strip().startswith("!"):  # cannot be combined with !list (describe)
            self.capabilities = self.capabilities.without("describe")

    # -- the API -------------------------------------------------------------

    def call(self, function: str, **params: str | int) -> Any:
        """One signed API call. The signature covers the query string exactly
        as sent, so it is encoded here rather than by the HTTP library."""
        query, sign = self._signed(function, params)
        return self._answer(function, self.http.get(f"api/?{query}&sign={sign}"))

    def post(self, function: str, **params: str | int) -> Any:
        """A signed call that changes something, POSTed: api/index.php takes
        the signed query string from a POSTed `query` and `user` and `sign`
        beside it."""
        query, sign = self._signed(function, params)
        data = {"user": self.settings.username, "query": query, "sign": sign}
        return self._answer(function, self.http.request("POST", "api/", data=data))

    def _signed(self, function: str, params: dict[str, str | int]) -> tuple[str, str]:
        query = urlencode(
            [("user", self.settings.username), ("function", function)]
            + [(name, str(value)) for name, value in params.items()]
        )
        return query, hashlib.sha256((self._private_key + query).encode()).hexdigest()

    @staticmethod
    def _answer(function: str, reply: Reply) -> Any:
        if not reply.content.strip():
            # execute_api_call() echoes PHP false for a function it lacks.
            raise Unsupported(
                f"resourcespace: the server has no API function {function} "
                "(a plugin or a newer ResourceSpace may be needed)"
            )
        return reply.json

    # -- listing ---------------------------------------------------------------

    def list_assets(self, cursor: ResourceSpaceCursor | None) -> Page[ResourceSpaceCursor]:
        paginator = ResourceSpacePaginator(cursor, self.settings.page_size)
        rows, _ = self._search(
            self.settings.search, paginator.fetchrows(), order_by="modified", sort="desc"
        )
        fresh = paginator.advance(rows)
        items = self._refs([row for row in fresh if _is_image(row)])
        return Page(items, paginator.cursor, complete=paginator.finished)

    def _refs(self, rows: list[dict[str, Any]]) -> list[AssetRef]:
        originals = self._original_urls(rows)
        refs: list[AssetRef] = []
        for row in rows:
            ref = str(row["ref"])
            record = dict(row)
            if self.settings.field_data:
                record["fields"] = self._field_data(ref)
            original = originals.get(ref) or None
            checksum = str(row.get("file_checksum") or "")
            refs.append(
                AssetRef(
                    id=ref,
                    # file_modified and file_size change when the file is
                    # uploaded or replaced; metadata edits touch neither.
                    version="|".join(
                        str(row.get(name) or "")
                        for name in ("file_modified", "file_size", "file_checksum")
                    ),
                    url=urljoin(self.http.base_url, f"pages/view.php?ref={ref}"),
                    size_bytes=_integer(row.get("file_size")),
                    modified=_iso(row.get("modified")),
                    content_hash=f"md5:{checksum}"
                    if self.settings.full_checksums and checksum
                    else None,
                    metadata=self.settings.metadata.apply(record),
                    problem=None
                    if original
                    else "ResourceSpace gives no file path (no file, or no download access)",
                    original_url=original,
                )
            )
        return refs

    def _original_urls(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """get_resource_path takes an array of refs that share an extension."""
        by_extension: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            by_extension[str(row.get("file_extension") or "")].append(int(row["ref"]))
        urls: dict[str, str] = {}
        for extension, numbers in by_extension.items():
            answer = self.call(
                "get_resource_path", ref=json.dumps(numbers), size="", extension=extension
            )
            if isinstance(answer, dict):
                urls.update({str(key): _keyless(str(value or "")) for key, value in answer.items()})
            elif isinstance(answer, str) and len(numbers) == 1:  # one ref: a bare string
                urls[str(numbers[0])] = _keyless(answer)
            else:
                raise Unavailable(f"resourcespace: get_resource_path answered {answer!r:.100}")
        return urls

    def _field_data(self, ref: str) -> dict[str, str]:
        answer = self.call("get_resource_field_data", resource=ref)
        if not isinstance(answer, list):
            return {}  # false: gone since the search, or not visible to this user
        return {
            str(field["name"]): str(field.get("value") or "")
            for field in answer
            if isinstance(field, dict) and field.get("name")
        }

    def _search(
        self, search: str, fetchrows: str, **order: str
    ) -> tuple[list[dict[str, Any]], int]:
        """The resources of a do_search within the unit's types and archive
        state, `fetchrows` "offset,rows" of them, and how many it found in all."""
        answer = self.call(
            "do_search",
            search=search,
            restypes=self.settings.resource_types,
            archive=self.settings.archive,
            fetchrows=fetchrows,
            **order,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise Unsupported(
                "resourcespace: do_search did not answer {total, data}; paging with "
                'fetchrows "offset,rows" needs ResourceSpace 10.3 or later'
            )
        rows = [
            row
            for row in answer["data"]
            if isinstance(row, dict) and str(row.get("ref") or "").isdigit()
        ]
        return rows, _integer(answer.get("total")) or 0

    def describe(self, asset_id: str) -> AssetRef:
        """The listing's search restricted to one ref: do_search with the
        special search `!list<ref>` (search_special) followed by the unit's
        keywords, the same resource types and archive states, so the row and
        its ref are the listing's and a resource that left the unit's search
        is not found. A unit whose search is itself a special search
        ("!collection12") cannot be combined with !list: it is Unsupported."""
        if not asset_id.isdigit():
            raise NotFound(f"resourcespace: resource refs are numbers, not {asset_id!r}")
        unit_search = self.settings.search.strip()
        if unit_search.startswith("!"):
            raise Unsupported(
                f"resourcespace: the unit's search {unit_search!r} is a special search, "
                "which do_search cannot combine with !list; a check syncs the unit instead"
            )
        search = f"!list{asset_id} {unit_search}" if unit_search not in ("", "*") else ""
        # !list matches resources in any archive state (search_special):
        # the unit's states are checked here.
        rows = [
            row
            for row in self._search(search or f"!list{asset_id}", "0,1")[0]
            if str(row["ref"]) == asset_id and _integer(row.get("archive")) in self._archive_states
        ]
        if not rows:
            raise NotFound(
                f"resourcespace: no resource {asset_id} in the unit's search (gone, archived, "
                "or not visible to this user)"
            )
        if not _is_image(rows[0]):
            raise NotFound(f"resourcespace: resource {asset_id} is not an image")
        return self._refs(rows[:1])[0]

    def fetch_url(self, url: str) -> bytes:
        return self._get_file(url)

    def _get_file(self, url: str) -> bytes:
        """A file by its address. ResourceSpace with `$hide_real_filepath`
        (on for every installation since 10.x) gives download.php addresses
        carrying a temporary `access_key` (new at every call, valid
        `$api_resource_path_expiry_hours`); listings keep the address without
        it, and a fresh key is asked for here with get_resource_path."""
        parts = urlsplit(url)
        download = urljoin(self.http.base_url, "pages/download.php")
        query = parse_qs(parts.query, keep_blank_values=True)
        if f"{parts.scheme}://{parts.netloc}{parts.path}" == download and "access_key" not in query:
            ref = (query.get("ref") or [""])[0]
            if not ref.isdigit():
                raise NotFound(f"resourcespace: {url} names no resource")
            answer = self.call(
                "get_resource_path",
                ref=ref,
                size=(query.get("size") or [""])[0],
                extension=(query.get("ext") or ["jpg"])[0],
            )
            if not isinstance(answer, str) or not answer:
                raise NotFound(
                    f"resourcespace: no file for resource {ref} (gone, or no download access)"
                )
            url = answer
        return self.http.get_bytes(url)

    # -- marks -------------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        marks, _ = _decode(self._marks_value(asset)[1])
        return marks or Marks()

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        field, text = self._marks_value(asset)
        old_marks, recorded = _decode(text)
        wanted = self._canonical_refs(asset, marks)
        adds: set[str] = set()
        removes: set[str] = set()
        keep: set[str] = set()
        if wanted or recorded:
            related = set(self._related(asset.id))
            adds = wanted - related
            # Already related without damdup's record: a person's link, kept off the record.
            keep = {ref for ref in wanted if ref in recorded or ref not in related}
            removes = (recorded - wanted) & related
        if old_marks == marks and recorded == keep and not adds and not removes:
            return False
        if (old_marks, recorded) != (marks, keep | removes):
            self._update_field(asset, field, _encode(marks, keep | removes))
        for ref in sorted(adds):
            self._relate(asset, ref, add=True)
        if removes:
            self._relate(asset, ",".join(sorted(removes)), add=False)
            self._update_field(asset, field, _encode(marks, keep))
        return True

    def _marks_value(self, asset: AssetRef) -> tuple[str, str]:
        """The marks field of the resource (its ref) and its text now.
        get_resource_field_data answers every field, values empty, for a
        resource that does not exist, so the resource is looked up first."""
        self._require_live(asset.id)
        answer = self.call("get_resource_field_data", resource=asset.id)
        if not isinstance(answer, list):
            raise NotFound(
                f"resourcespace: resource {asset.id} is gone (or not visible to this user)"
            )
        wanted = self.settings.marks_field
        for field in answer:
            if isinstance(field, dict) and wanted in (str(field.get("ref")), field.get("name")):
                return str(field.get("ref")), str(field.get("value") or "")
        raise Unsupported(
            f"resourcespace: resource {asset.id} has no field {wanted!r} (not created, not "
            "used by its resource type, or hidden from the API user): create a text field for "
            "damdup's marks and name it, by ref or shortname, in the unit's marks_field"
        )

    def _canonical_refs(self, asset: AssetRef, marks: Marks) -> set[str]:
        """The resource of this ResourceSpace that the canonical link names,
        when relating is on and it is another resource."""
        url = marks.canonical_url
        page = urljoin(self.http.base_url, "pages/view.php")
        if not self.settings.relate_duplicates or not url:
            return set()
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}{parts.path}" != page:
            return set()
        refs = parse_qs(parts.query).get("ref", [])
        if len(refs) != 1 or not refs[0].isdigit() or refs[0] == asset.id:
            return set()
        return {refs[0]}

    def _related(self, ref: str) -> list[str]:
        answer = self.call("get_related_resources", ref=ref)
        if not isinstance(answer, list):
            raise Unavailable(f"resourcespace: get_related_resources answered {answer!r:.100}")
        return [str(item) for item in answer]

    def _update_field(self, asset: AssetRef, field: str, value: str) -> None:
        if self.post("update_field", resource=asset.id, field=field, value=value) is not True:
            self._refused(
                asset,
                "update_field",
                f"field {self.settings.marks_field!r} may not be a text field, or the user's "
                "group may not edit it",
            )

    def _relate(self, asset: AssetRef, related: str, add: bool) -> None:
        done = self.post("update_related_resource", ref=asset.id, related=related, add=int(add))
        if done is not True:
            self._refused(
                asset,
                "update_related_resource",
                f"resource {related} may be gone, or $enable_related_resources is off (then "
                "set the unit's relate_duplicates = false)",
            )

    def _refused(self, asset: AssetRef, function: str, hint: str) -> None:
        """ResourceSpace answers a refused write with a bare false: edit
        access tells a read-only user from everything else."""
        if self.call("get_edit_access", resource=asset.id) is not True:
            raise AuthFailed(
                f"resourcespace: user {self.settings.username!r} may not edit resource "
                f"{asset.id} ({function} answered false); writing marks needs a user whose "
                "group may edit the unit's resources; check the unit's credentials"
            )
        raise Unsupported(
            f"resourcespace: {function} answered false for resource {asset.id}: {hint}"
        )

    def probe(self, asset: AssetRef) -> None:
        self._require_live(asset.id)

    def _require_live(self, ref: str) -> None:
        """NotFound unless the resource exists in one of the unit's archive
        states. get_resource_data answers PHP false for a resource that is
        gone or hidden; a deleted one ($resource_deletion_state, 3 by default)
        keeps its row, fields and files, in archive state 3."""
        try:
            answer = self.call("get_resource_data", resource=ref)
        except Unsupported:
            answer = None
        if not isinstance(answer, dict) or not answer:
            raise NotFound(f"resourcespace: resource {ref} is gone (or not visible to this user)")
        state = _integer(answer.get("archive"))
        if state not in self._archive_states:
            raise NotFound(
                f"resourcespace: resource {ref} is in archive state {state} (3 is deleted), "
                "outside the unit's archive states"
            )

    # -- fetching ----------------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        # A deleted resource keeps its files and answers for them.
        self._require_live(asset.id)
        url = asset.original_url
        if min_side > 0 or not url:
            sized = asset if asset.renditions else self._with_sizes(asset)
            url = choose_rendition(sized, min_side) or sized.original_url
        if not url:
            raise NotFound(f"resourcespace: resource {asset.id} has no file")
        return self._get_file(url)

    def _with_sizes(self, asset: AssetRef) -> AssetRef:
        answer = self.call("get_resource_all_image_sizes", resource=asset.id)
        if not isinstance(answer, list) or not answer:
            raise NotFound(
                f"resourcespace: resource {asset.id} has no files "
                "(deleted, or not visible to this user)"
            )
        original_url, width, height = asset.original_url, asset.width, asset.height
        renditions: list[Rendition] = []
        for size in answer:
            if not isinstance(size, dict) or not size.get("url"):
                continue
            size_width, size_height = _integer(size.get("width")), _integer(size.get("height"))
            if size.get("size_code") == "original":
                # This answer's address: a listing's has no access key.
                original_url = str(size["url"])
                width, height = size_width or width, size_height or height
            elif size_width and size_height:
                renditions.append(Rendition(str(size["url"]), size_width, size_height))
        return dataclasses.replace(
            asset,
            original_url=original_url,
            width=width,
            height=height,
            renditions=tuple(renditions),
        )


def _keyless(url: str) -> str:
    """A download address without its temporary `access_key` (the last
    parameter api_get_resource_path appends), so that a resource's address
    stays the same from one listing to the next."""
    head, separator, key = url.rpartition("&access_key=")
    return head if separator and "&" not in key else url


def _encode(marks: Marks, related: set[str]) -> str:
    """The marks field's text: Marks.to_json's keys plus the relations damdup
    made; empty when there is nothing (update_field then unsets the field).
    "~" is escaped because ResourceSpace reads "~en:...~fi:..." in a value as
    translations when it answers get_resource_field_data."""
    if marks.empty and not related:
        return ""
    data = json.loads(marks.to_json())
    if related:
        data["related"] = sorted(related, key=int)
    return json.dumps(data, sort_keys=True, ensure_ascii=False).replace("~", "\\u007e")


def _decode(text: str) -> tuple[Marks | None, set[str]]:
    """The marks and damdup's relations a field holds; marks None when the
    text is not damdup's (the next annotate writes it over)."""
    if not text.strip():
        return Marks(), set()
    try:
        data = json.loads(text)
        related = {str(int(ref)) for ref in data.get("related") or ()}
        return Marks.from_json(text), related
    except (ValueError, TypeError, AttributeError):
        return None, set()


def _check_newest_first(times: list[datetime]) -> None:
    """Servers that lack order_by "modified" silently order by relevance; an
    incremental listing that trusted them would stop too early."""
    if any(later > earlier for earlier, later in itertools.pairwise(times)):
        raise Unsupported(
            "resourcespace: do_search ignored order_by=modified (an older ResourceSpace); "
            "listings cannot be read newest first"
        )


def _modified(value: Any) -> datetime:
    """A resource's `modified` as the server's local time (naive): MySQL's
    "YYYY-MM-DD HH:MM:SS", or the ISO form a saved cursor holds. Empty or
    unreadable (MySQL's zero date): UNDATED, the earliest time. An offset,
    which ResourceSpace never gives, is dropped: the wall time is kept."""
    try:
        return datetime.fromisoformat(str(value or "").strip()).replace(tzinfo=None)
    except ValueError:
        return UNDATED


def _is_image(row: dict[str, Any]) -> bool:
    return has_image_extension("." + str(row.get("file_extension") or ""))


def _integer(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _iso(value: Any) -> str | None:
    """MySQL "YYYY-MM-DD HH:MM:SS" in the server's time zone, which the API
    does not name: ISO 8601 without an offset."""
    text = str(value or "").strip()
    return text.replace(" ", "T", 1) if text else None
