"""WordPress media libraries through the REST API (`/wp-json/wp/v2/media`).

Listing is keyset paging over the server's own order, the attachment's
modification time: each request asks for what was modified at or after the
last time seen, and drops the ids already handed out at exactly that second.
Page numbers would skip an asset whenever one listed before it is edited or
deleted mid-listing (everything behind it moves up a place). An edited asset
moves to the end and is listed again. A completed listing's last position is
where the next, incremental, listing starts: nothing unchanged is listed twice.
WordPress keeps whole seconds, so an asset edited again within the second it
was listed in shows only with its next edit.
https://developer.wordpress.org/rest-api/reference/media/#list-media

Marks are attachment meta kept by damdup's own plugin (adapters/wordpress_plugin),
read and replaced through its route `/wp-json/damdup/v1/marks/<id>` with GET
and PUT. Not through `POST /wp/v2/media/<id>`: that saves the whole post
(wp_update_post) and so moves its modification time, which is part of the
asset's version and the order listings follow; the plugin writes post meta only.
https://developer.wordpress.org/reference/functions/register_post_meta/
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, ClassVar
from urllib.parse import quote, urljoin

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from requests.auth import HTTPBasicAuth

from adapters.base import (
    AssetRef,
    AuthFailed,
    BadAsset,
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
    listing_started,
    reason,
)
from adapters.http import HttpClient, HttpError, Reply

__all__ = ["WordPress", "WordPressCursor", "WordPressPaginator", "WordPressSettings"]

MEDIA = "wp-json/wp/v2/media"
# Fields every listing needs; the metadata mapping's top-level fields are added.
FIELDS = ("id", "link", "modified", "modified_gmt", "mime_type", "source_url", "media_details")
SECOND = timedelta(seconds=1)
LOCAL_FORMAT = "%Y-%m-%dT%H:%M:%S"
# damdup's plugin: its REST namespace, the marks route, and the attachment
# meta it keeps with the flat names of `Marks.to_fields`.
PLUGIN_NAMESPACE = "wp-json/damdup/v1"
MARKS = PLUGIN_NAMESPACE + "/marks/{id}"
MARK_META = {
    "damdup_marks": "damdup-marks",
    "damdup_cluster": "damdup-cluster",
    "damdup_canonical": "damdup-canonical",
}
PLUGIN_HINT = (
    "install the damdup plugin (adapters/wordpress_plugin): copy that folder to "
    "wp-content/plugins/damdup and activate it under Plugins"
)


class WordPressSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_WORDPRESS_", extra="forbid")
    page_size: int = Field(100, ge=1, le=100)  # the API's maximum per_page
    # Public sites can be listed anonymously (only media attached to public posts).
    username: str | None = None
    app_password: SecretStr | None = Field(
        None, description="an application password (Users → Profile), not the login password"
    )
    # Where Helsinki's sites keep the mandatory fields: Advanced Custom Fields
    # with "Show in REST API" for location and department; the upload date.
    metadata: MetadataMapping = MetadataMapping(
        location="acf.location", date="date_gmt", department="acf.department"
    )
    media_hosts: list[str] = Field(
        default_factory=list, description="other hosts serving the uploads (a CDN), host[:port]"
    )

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> WordPressSettings:
        if (self.username is None) != (self.app_password is None):
            raise ValueError("username and app_password go together (or neither, for public sites)")
        return self


class WordPressCursor(BaseModel):
    """A position in the order of modification; a completed listing's last
    position is where the next (incremental) listing starts."""

    model_config = ConfigDict(frozen=True)
    # The boundary: a modification time in the site's zone, with its UTC
    # offset then. WordPress compares and orders the local time (`modified`),
    # so the listing reads only that; None: from the oldest.
    after: AwareDatetime | None = None
    # The ids at the boundary: already handed out at `after`'s second.
    seen_at_after: frozenset[int] = frozenset()
    # > 0 while paging by number through a second holding more than a page.
    tie_page: int = 0
    # That crowded second has been paged through: ask for what is later. Only
    # within a listing; the cursor a listing ends with looks at `after` again,
    # because the second may not have been over when it was paged.
    beyond: bool = False
    # The newest modification seen, in the site's zone then: when a newer one
    # has a smaller UTC offset, the site's clocks went back (end of summer
    # time) and the hour just past repeats in local time.
    newest: AwareDatetime | None = None
    # While listing: when this listing began. The boundary a listing ends with
    # never passes it, so a medium dated in the future cannot hide later uploads.
    started: AwareDatetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_local_times(cls, data: Any) -> Any:
        """A cursor saved before times carried their offset: `after` in naive
        local time, and `newest_gmt` (UTC) with the offset in `utc_offset_s`."""
        if not isinstance(data, dict) or not {"newest_gmt", "utc_offset_s"} & data.keys():
            return data
        data = dict(data)
        try:
            zone = timezone(timedelta(seconds=int(data.pop("utc_offset_s", None) or 0)))
            newest_gmt = data.pop("newest_gmt", None)
            if newest_gmt is not None:
                data["newest"] = _aware(newest_gmt, UTC).astimezone(zone)
            if data.get("after") is not None:
                data["after"] = _aware(data["after"], zone)  # the same local time
        except (TypeError, ValueError) as exc:  # pydantic reports a ValueError only
            raise ValueError(f"an earlier cursor's times cannot be read: {reason(exc)}") from exc
        return data


class WordPressPaginator:
    """Keyset paging on modification time (module docstring), as singer_sdk's
    paginators: it writes the query for its cursor, reads an answer into the
    next cursor, and refuses to repeat one. Closed at the start: the
    boundary's second is asked again and the ids handed out at it dropped.
    A second holding more than a page is paged by number (`tie_page`), then
    passed (`beyond`)."""

    def __init__(
        self,
        cursor: WordPressCursor | None,
        page_size: int,
    ) -> None:
        self.cursor = listing_started(cursor or WordPressCursor())
        self.page_size = page_size
        self.finished = False

    def params(self) -> dict[str, Any]:
        """The query's paging part, laid over the listing's own."""
        cursor = self.cursor
        if cursor.after is None:
            return {}
        after = _wall(cursor.after)
        # `modified_after` and `modified_before` are exclusive and whole
        # seconds: one second less includes the second `after` itself.
        if cursor.tie_page:
            return {
                "modified_after": _local(after - SECOND),
                "orderby": "id",
                "modified_before": _local(after + SECOND),
                "page": cursor.tie_page,
            }
        return {"modified_after": _local(after if cursor.beyond else after - SECOND)}

    def past_the_end(self, exc: HttpError) -> bool:
        """Whether the refusal is WordPress's to a page number past a crowded
        second's last (rest_post_invalid_page_number); then what is later."""
        if not (self.cursor.tie_page and exc.status == 400):
            return False
        self._move(_past_tie(self.cursor, []))
        return True

    def advance(self, reply: Reply) -> list[dict[str, Any]]:
        """The records to hand out; moves the cursor past the answer."""
        records = reply.json
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise Unavailable(f"{MEDIA} answered with something other than a list of media")
        last_page = self._last_page(reply, records)
        # Those handed out already at `after` come again (`exclude` would also
        # hide them after an edit has moved them on).
        fresh = [record for record in records if not self._handed_out(record)]
        if self.cursor.tie_page:
            self._tie(fresh, last_page)
        elif not fresh:
            self._nothing_new(last_page)
        else:
            return self._keyset(records, fresh, last_page)
        return fresh

    def _last_page(self, reply: Reply, records: list[dict[str, Any]]) -> bool:
        pages = reply.headers.get("X-WP-TotalPages")
        if pages is None:  # a proxy dropped the header
            return len(records) < self.page_size
        return (self.cursor.tie_page or 1) >= _int(pages)

    def _handed_out(self, record: dict[str, Any]) -> bool:
        after = self.cursor.after
        return (
            int(record["id"]) in self.cursor.seen_at_after
            and after is not None
            and _local_time(record) == _wall(after)
        )

    def _tie(self, fresh: list[dict[str, Any]], last_page: bool) -> None:
        if last_page:
            self._move(_past_tie(self.cursor, fresh))
            return
        seen = self.cursor.seen_at_after | {int(record["id"]) for record in fresh}
        self._move(
            self.cursor.model_copy(
                update={"tie_page": self.cursor.tie_page + 1, "seen_at_after": frozenset(seen)}
            )
        )

    def _nothing_new(self, last_page: bool) -> None:
        if last_page:
            self._move(self.cursor.model_copy(update={"beyond": False}), finished=True)
        else:
            # A whole page of one second, all handed out: page through that
            # second by number.
            self._move(self.cursor.model_copy(update={"tie_page": 1}))

    def _keyset(
        self, records: list[dict[str, Any]], fresh: list[dict[str, Any]], last_page: bool
    ) -> list[dict[str, Any]]:
        cursor = self.cursor
        newest = _newest(records)
        if cursor.after is not None and cursor.newest is not None and newest > cursor.newest:
            back = _offset(cursor.newest) - _offset(newest)
            if back > timedelta(0):
                # Clocks went back: what changed since carries local times
                # from before `after` too. Read that hour again.
                self._move(WordPressCursor(after=cursor.after - back, newest=newest))
                return []
        following = _advance(cursor, records)
        if cursor.newest is None or newest > cursor.newest:
            following = following.model_copy(update={"newest": newest})
        self._move(following, finished=last_page)
        return fresh

    def _move(self, following: WordPressCursor, finished: bool = False) -> None:
        if finished:
            following = _no_later_than_start(following)
        if not finished and following == self.cursor:  # a server that ignores the query
            raise Unavailable(
                f"{MEDIA} answered so that the listing would read the same page again "
                f"({following.model_dump_json()})"
            )
        self.cursor, self.finished = following, finished


class WordPress(HttpAdapter[WordPressCursor]):
    kind: ClassVar[str] = "wordpress"
    settings_model = WordPressSettings
    cursor_model = WordPressCursor
    capabilities = Capabilities(
        incremental=True, renditions=True, annotate=True, describe=True, fetch_url=True
    )
    http: HttpClient

    def __init__(
        self, settings: WordPressSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        password = settings.app_password.get_secret_value() if settings.app_password else None
        auth = (
            HTTPBasicAuth(settings.username, password) if settings.username and password else None
        )
        self.http = HttpClient.for_settings(
            settings,
            auth=auth,
            secrets=[password],
            allowed_hosts=settings.media_hosts,
            kind=self.kind,
            observer=observer,
        )
        roots = {path.split(".")[0] for path in _paths(settings.metadata)}
        self._fields = ",".join(sorted(set(FIELDS) | roots))
        self._signed_in = auth is not None

    # -- listing -----------------------------------------------------------

    def list_assets(self, cursor: WordPressCursor | None) -> Page[WordPressCursor]:
        paginator = WordPressPaginator(cursor, self.settings.page_size)
        try:
            reply = self._get(MEDIA, {**self._listing_params(), **paginator.params()})
        except HttpError as exc:
            if not paginator.past_the_end(exc):
                raise
            return Page(items=[], cursor=paginator.cursor, complete=False)
        fresh = paginator.advance(reply)
        items = [self._ref(record) for record in fresh if _is_image(record)]
        return Page(items=items, cursor=paginator.cursor, complete=paginator.finished)

    def _listing_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "media_type": "image",
            "per_page": self.settings.page_size,
            "orderby": "modified",
            "order": "asc",
            "_fields": self._fields,
        }
        if self._signed_in:
            # WordPress serves a wrong application password as anonymous
            # (public media only); the edit context needs a signed-in editor.
            # It also lists media attached to drafts and private posts.
            params["context"] = "edit"
        return params

    def _ref(self, record: dict[str, Any]) -> AssetRef:
        details = _media_details(record)
        source_url = record.get("source_url") or None
        width, height = _int(details.get("width")), _int(details.get("height"))
        size_bytes = _int(details.get("filesize")) or None
        original_url = source_url
        renditions = _sizes(details)
        if details.get("original_image") and source_url:
            # Uploads over 2560 px (or rotated by EXIF) are served as a
            # "-scaled"/"-rotated" copy; the file as uploaded sits beside it.
            # https://make.wordpress.org/core/2019/10/09/introducing-handling-of-big-images-in-wordpress-5-3/
            original_url = urljoin(source_url, str(details["original_image"]))
            size_bytes = None  # `filesize` is the copy's
            renditions.append(Rendition(source_url, width, height))
        modified_gmt = str(record.get("modified_gmt") or "")
        return AssetRef(
            id=str(record["id"]),
            version=f"{modified_gmt}|{details.get('filesize', '')}|{source_url or ''}",
            url=str(record.get("link") or source_url or ""),
            size_bytes=size_bytes,
            modified=f"{modified_gmt}+00:00" if modified_gmt else None,
            metadata=self.settings.metadata.apply(record),
            problem=None if source_url else "WordPress lists no file for this attachment",
            original_url=original_url,
            width=width or None,
            height=height or None,
            renditions=tuple(renditions),
        )

    def describe(self, asset_id: str) -> AssetRef:
        if not asset_id.isdigit():
            raise NotFound(f"WordPress attachment ids are numbers, not {asset_id!r}")
        params: dict[str, Any] = {"_fields": self._fields}
        if self._signed_in:
            params["context"] = "edit"
        try:
            record = self._get(f"{MEDIA}/{asset_id}", params).json
        except NotFound as exc:
            raise NotFound(f"WordPress has no attachment {asset_id}: {reason(exc)}") from exc
        if not isinstance(record, dict) or "id" not in record:
            raise Unavailable(f"{MEDIA}/{asset_id} answered with something other than a medium")
        if not _is_image(record):
            raise NotFound(f"WordPress attachment {asset_id} is not an image")
        return self._ref(record)

    # -- files ---------------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        url = choose_rendition(asset, min_side)
        if url is None and min_side > 0:
            url = self._main_copy(asset, min_side)
        url = url or asset.original_url
        if not url:
            raise BadAsset(f"WordPress lists no file for attachment {asset.id}")
        return self.http.get_bytes(url)

    @staticmethod
    def _main_copy(asset: AssetRef, min_side: int) -> str | None:
        """The scaled copy WordPress serves for a big upload, when it is large
        enough: smaller than the upload, the same picture."""
        for rendition in asset.renditions:
            if (
                (rendition.width, rendition.height) == (asset.width, asset.height)
                and min(rendition.width, rendition.height) >= min_side
                and rendition.url != asset.original_url
            ):
                return rendition.url
        return None

    # -- marks -------------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        stored = self._marks("GET", asset)
        try:
            return Marks.from_fields({MARK_META[key]: value for key, value in stored.items()})
        except ValueError as exc:  # written past the plugin, straight into the database
            raise BadAsset(
                f"WordPress attachment {asset.id} holds damdup marks damdup cannot read: "
                f"{reason(exc)}"
            ) from exc

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        """Read the marks, and replace them (one PUT of all three, which a
        retry after a 5xx may repeat harmlessly) only when they differ."""
        wanted = {key: marks.to_fields().get(field, "") for key, field in MARK_META.items()}
        if self._marks("GET", asset) == wanted:
            return False
        stored = self._marks("PUT", asset, wanted)
        if stored != wanted:
            raise Unsupported(
                f"WordPress at {self.settings.base_url} stored {stored} for attachment "
                f"{asset.id} instead of {wanted}: update the damdup plugin "
                "(adapters/wordpress_plugin)"
            )
        return True

    def _marks(
        self, method: str, asset: AssetRef, body: dict[str, str] | None = None
    ) -> dict[str, str]:
        """damdup's meta on one attachment, as the plugin's route answers a
        GET or a PUT: '' for each mark absent."""
        path = MARKS.format(id=quote(asset.id, safe=""))
        site = self.settings.base_url
        try:
            reply = self.http.request(method, path, json=body)
        except NotFound as exc:
            if not self._plugin_answers():
                raise Unsupported(
                    f"WordPress at {site} has no damdup marks route, so marks cannot be "
                    f"written back: {PLUGIN_HINT}"
                ) from exc
            raise NotFound(
                f"WordPress at {site} has no attachment {asset.id}: {reason(exc)}"
            ) from exc
        except AuthFailed as exc:
            who = (
                f"user {self.settings.username!r}"
                if self.settings.username
                else "anonymous access (set username and app_password)"
            )
            raise AuthFailed(
                f"WordPress at {site} refused {who} damdup's marks on attachment {asset.id} "
                f"({exc}). Marks need a user who may upload files and edit the attachment "
                "(an Editor, or an Administrator), signed in with an application password."
            ) from exc
        except HttpError as exc:
            if method == "PUT" and exc.status == 400:  # rest_invalid_param
                raise BadAsset(
                    f"WordPress refused damdup's marks for attachment {asset.id}: {exc.detail}"
                ) from exc
            raise
        answer = reply.json
        if not isinstance(answer, dict) or not all(
            isinstance(answer.get(key), str) for key in MARK_META
        ):
            raise Unavailable(f"{path} answered with something other than damdup's marks")
        return {key: str(answer[key]) for key in MARK_META}

    def _plugin_answers(self) -> bool:
        """Whether the plugin's namespace is there: a 404 from the marks route
        is then a missing attachment, not a missing (or inactive) plugin. Asked
        by route rather than by WordPress's message, which sites translate."""
        try:
            self.http.get(PLUGIN_NAMESPACE)
        except NotFound:
            return False
        return True

    # -- HTTP ------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any]) -> Reply:
        try:
            return self.http.get(path, params=params)
        except AuthFailed as exc:
            if self.settings.username is None:
                raise AuthFailed(
                    f"WordPress at {self.settings.base_url} refused anonymous access ({exc}); "
                    "set username and app_password"
                ) from exc
            raise AuthFailed(
                f"WordPress at {self.settings.base_url} did not accept user "
                f"{self.settings.username!r} with the configured credentials as an editor "
                f"of media ({exc}). Create an application password under Users → Profile → "
                "Application Passwords for a user who may edit media; WordPress turns them "
                "off on sites without HTTPS."
            ) from exc
        except HttpError as exc:
            # The platform's words (rest_invalid_param names the parameter), not
            # the message, whose URL names `modified_after` on every listing.
            if exc.status == 400 and "modified_" in exc.detail:
                raise Unsupported(
                    f"WordPress at {self.settings.base_url} cannot filter by modification "
                    f"time (WordPress 5.7 or later is needed): {reason(exc)}"
                ) from exc
            raise

    def close(self) -> None:
        self.http.close()


def _no_later_than_start(cursor: WordPressCursor) -> WordPressCursor:
    """The cursor a listing ends with: its boundary no later than the listing's
    start (a medium dated in the future is listed again, unchanged, rather
    than hiding what is uploaded before its date)."""
    started, after = cursor.started, cursor.after
    if started is not None and after is not None and after > started:
        # WordPress keeps whole seconds: the boundary is the second it began in.
        boundary = started.astimezone(after.tzinfo).replace(microsecond=0)
        return WordPressCursor(after=boundary, newest=cursor.newest)
    return cursor.model_copy(update={"started": None})


def _past_tie(cursor: WordPressCursor, fresh: list[dict[str, Any]]) -> WordPressCursor:
    """After paging a crowded second by number: what is later than it. The
    second's ids are kept, so that a listing that looks at it again (the next
    incremental one: the second may still have been running) hands out only
    what changed in it since."""
    assert cursor.after is not None
    seen = cursor.seen_at_after | {int(record["id"]) for record in fresh}
    return cursor.model_copy(
        update={"tie_page": 0, "beyond": True, "seen_at_after": frozenset(seen)}
    )


def _media_details(record: dict[str, Any]) -> dict[str, Any]:
    details = record.get("media_details") or {}
    return details if isinstance(details, dict) else {}  # WordPress prints {} as [] for some files


def _sizes(details: dict[str, Any]) -> list[Rendition]:
    """The smaller copies WordPress made of an upload (`full` is the file itself)."""
    sizes = details.get("sizes")
    if not isinstance(sizes, dict):
        return []
    return [
        Rendition(str(size["source_url"]), _int(size.get("width")), _int(size.get("height")))
        for name, size in sorted(sizes.items())
        if name != "full" and isinstance(size, dict) and size.get("source_url")
    ]


def _paths(mapping: MetadataMapping) -> list[str]:
    paths = (mapping.location, mapping.date, mapping.department)
    return [path for path in paths if path and not path.startswith("=")]


def _is_image(record: dict[str, Any]) -> bool:
    return str(record.get("mime_type", "")).startswith("image/")


def _local(moment: datetime) -> str:
    """A time in the site's own zone, as WordPress reads a time without offset."""
    return moment.strftime(LOCAL_FORMAT)


def _local_time(record: dict[str, Any]) -> datetime:
    try:
        return datetime.strptime(str(record["modified"])[:19], LOCAL_FORMAT)
    except (KeyError, ValueError) as exc:
        raise Unavailable(f"media {record.get('id')} has no readable `modified` time") from exc


def _gmt(record: dict[str, Any]) -> datetime:
    try:
        gmt = datetime.strptime(str(record["modified_gmt"])[:19], LOCAL_FORMAT)
    except (KeyError, ValueError) as exc:
        raise Unavailable(f"media {record.get('id')} has no readable `modified_gmt`") from exc
    return gmt.replace(tzinfo=UTC)


def _zone(record: dict[str, Any]) -> timezone:
    """The site's UTC offset when the record was modified. Offsets are whole
    minutes; the two times may straddle a second."""
    local = _local_time(record).replace(tzinfo=UTC)
    minutes = round((local - _gmt(record)).total_seconds() / 60)
    if abs(minutes) >= 24 * 60:  # no zone's offset: times edited by hand; read as UTC
        minutes = 0
    return timezone(timedelta(minutes=minutes))


def _newest(records: list[dict[str, Any]]) -> datetime:
    """The newest modification of a page, in the site's zone then."""
    record = max(records, key=_gmt)
    return _gmt(record).astimezone(_zone(record))


def _advance(cursor: WordPressCursor, records: list[dict[str, Any]]) -> WordPressCursor:
    """The position after a page read in order of modification: its last
    time, and the ids at it."""
    times = [_local_time(record) for record in records]
    if cursor.after is not None and min(times) < _wall(cursor.after):
        raise Unsupported(
            "this WordPress ignores `modified_after` (added in WordPress 5.7); "
            "upgrade it to list its media"
        )
    last = max(times)
    at_last = [record for record, moment in zip(records, times, strict=True) if moment == last]
    seen = {int(record["id"]) for record in at_last}
    if cursor.after is not None and last == _wall(cursor.after):
        seen |= cursor.seen_at_after
    after = last.replace(tzinfo=_zone(max(at_last, key=_gmt)))
    return cursor.model_copy(
        update={"after": after, "seen_at_after": frozenset(seen), "beyond": False}
    )


def _wall(moment: datetime) -> datetime:
    """The local time alone, as WordPress compares it."""
    return moment.replace(tzinfo=None)


def _offset(moment: datetime) -> timedelta:
    return moment.utcoffset() or timedelta(0)


def _aware(value: Any, zone: tzinfo) -> datetime:
    """A saved time, read in `zone` when it has no offset of its own."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        raise ValueError(f"{value!r} is not a time")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
