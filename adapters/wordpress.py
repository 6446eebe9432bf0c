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

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote, urljoin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict
from requests.auth import HTTPBasicAuth

from adapters.base import (
    Adapter,
    AssetRef,
    AuthFailed,
    BadAsset,
    Capabilities,
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
)
from adapters.http import HttpClient, HttpError, Reply

__all__ = ["WordPress", "WordPressCursor", "WordPressSettings"]

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
    # Modification time in the site's local time, as the API prints `modified`
    # and as WordPress compares and orders it; None: from the oldest.
    after: datetime | None = None
    seen_at_after: frozenset[int] = frozenset()  # already handed out at `after`
    # > 0 while paging by number through a second holding more than a page.
    tie_page: int = 0
    # That crowded second has been paged through: ask for what is later. Only
    # within a listing; the cursor a listing ends with looks at `after` again,
    # because the second may not have been over when it was paged.
    beyond: bool = False
    # The newest modification seen (UTC) and the site's UTC offset then: when
    # a newer one has a smaller offset, the site's clocks went back (end of
    # summer time) and the hour just past repeats in local time.
    newest_gmt: datetime | None = None
    utc_offset_s: int | None = None


class WordPress(Adapter[WordPressCursor]):
    kind: ClassVar[str] = "wordpress"
    settings_model = WordPressSettings
    cursor_model = WordPressCursor
    capabilities = Capabilities(
        incremental=True, deletions=False, renditions=True, annotate=True, webhooks=False
    )

    def __init__(
        self, settings: WordPressSettings, observer: RequestObserver | None = None
    ) -> None:
        self.settings = settings
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
        cursor = cursor or WordPressCursor()
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
        if cursor.after is not None:
            # `modified_after` is exclusive and whole seconds: one second less
            # includes the second `after` itself.
            params["modified_after"] = _local(
                cursor.after if cursor.beyond and not cursor.tie_page else cursor.after - SECOND
            )
            if cursor.tie_page:
                params.update(
                    orderby="id",
                    modified_before=_local(cursor.after + SECOND),
                    page=cursor.tie_page,
                )
        try:
            reply = self._get(MEDIA, params)
        except HttpError as exc:
            if cursor.tie_page and exc.status == 400:  # rest_post_invalid_page_number
                return Page(items=[], cursor=_past_tie(cursor, []), complete=False)
            raise
        records = reply.json
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise Unavailable(f"{MEDIA} answered with something other than a list of media")
        pages = reply.headers.get("X-WP-TotalPages")
        last_page = (
            len(records) < self.settings.page_size  # a proxy dropped the header
            if pages is None
            else (cursor.tie_page or 1) >= _int(pages)
        )
        # Those handed out already at `after` come again (`exclude` would also
        # hide them after an edit has moved them on).
        fresh = [
            record
            for record in records
            if not (
                int(record["id"]) in cursor.seen_at_after and _local_time(record) == cursor.after
            )
        ]
        items = [self._ref(record) for record in fresh if _is_image(record)]
        if cursor.tie_page:
            if last_page:
                return Page(items=items, cursor=_past_tie(cursor, fresh), complete=False)
            seen = cursor.seen_at_after | {int(record["id"]) for record in fresh}
            following = cursor.model_copy(
                update={"tie_page": cursor.tie_page + 1, "seen_at_after": frozenset(seen)}
            )
            return Page(items=items, cursor=following, complete=False)
        if not fresh:
            if last_page:
                return Page(
                    items=[], cursor=cursor.model_copy(update={"beyond": False}), complete=True
                )
            # A whole page of one second, all handed out: page through that
            # second by number.
            return Page(items=[], cursor=cursor.model_copy(update={"tie_page": 1}), complete=False)
        newest_gmt, offset_s = _newest(records)
        if (
            cursor.after is not None
            and cursor.newest_gmt is not None
            and cursor.utc_offset_s is not None
            and newest_gmt > cursor.newest_gmt
            and offset_s < cursor.utc_offset_s
        ):
            # Clocks went back: what changed since carries local times from
            # before `after` too. Read that hour again.
            back = timedelta(seconds=cursor.utc_offset_s - offset_s)
            again = WordPressCursor(
                after=cursor.after - back, newest_gmt=newest_gmt, utc_offset_s=offset_s
            )
            return Page(items=[], cursor=again, complete=False)
        following = self._advance(cursor, records)
        if cursor.newest_gmt is None or newest_gmt > cursor.newest_gmt:
            following = following.model_copy(
                update={"newest_gmt": newest_gmt, "utc_offset_s": offset_s}
            )
        return Page(items=items, cursor=following, complete=last_page)

    def _advance(self, cursor: WordPressCursor, records: list[dict[str, Any]]) -> WordPressCursor:
        times = [_local_time(record) for record in records]
        if cursor.after is not None and min(times) < cursor.after:
            raise Unsupported(
                "this WordPress ignores `modified_after` (added in WordPress 5.7); "
                "upgrade it to list its media"
            )
        last = max(times)
        seen = {
            int(record["id"])
            for record, moment in zip(records, times, strict=True)
            if moment == last
        }
        if last == cursor.after:
            seen |= cursor.seen_at_after
        return cursor.model_copy(
            update={"after": last, "seen_at_after": frozenset(seen), "beyond": False}
        )

    def _ref(self, record: dict[str, Any]) -> AssetRef:
        details = record.get("media_details") or {}
        if not isinstance(details, dict):  # WordPress prints {} as [] for some files
            details = {}
        source_url = record.get("source_url") or None
        width, height = _int(details.get("width")), _int(details.get("height"))
        size_bytes = _int(details.get("filesize")) or None
        original_url = source_url
        renditions: list[Rendition] = []
        sizes = details.get("sizes")
        if not isinstance(sizes, dict):
            sizes = {}
        for name, size in sorted(sizes.items()):
            if name == "full" or not isinstance(size, dict) or not size.get("source_url"):
                continue
            renditions.append(
                Rendition(
                    str(size["source_url"]), _int(size.get("width")), _int(size.get("height"))
                )
            )
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
            raise NotFound(f"WordPress has no attachment {asset_id}: {exc}") from exc
        if not isinstance(record, dict) or "id" not in record:
            raise Unavailable(f"{MEDIA}/{asset_id} answered with something other than a medium")
        if not _is_image(record):
            raise NotFound(f"WordPress attachment {asset_id} is not an image")
        return self._ref(record)

    # -- files ---------------------------------------------------------------

    def fetch_url(self, url: str) -> bytes:
        return self.http.get_bytes(url)

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
                f"WordPress attachment {asset.id} holds damdup marks damdup cannot read: {exc}"
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
            raise NotFound(f"WordPress at {site} has no attachment {asset.id}: {exc}") from exc
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
            if exc.status == 400 and "modified_" in str(exc):
                raise Unsupported(
                    f"WordPress at {self.settings.base_url} cannot filter by modification "
                    f"time (WordPress 5.7 or later is needed): {exc}"
                ) from exc
            raise

    def close(self) -> None:
        self.http.close()


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


def _newest(records: list[dict[str, Any]]) -> tuple[datetime, int]:
    """The newest modification (UTC) of a page and the site's UTC offset then."""
    newest_gmt: datetime | None = None
    offset_s = 0
    for record in records:
        try:
            gmt = datetime.strptime(str(record["modified_gmt"])[:19], LOCAL_FORMAT)
        except (KeyError, ValueError) as exc:
            raise Unavailable(f"media {record.get('id')} has no readable `modified_gmt`") from exc
        if newest_gmt is None or gmt > newest_gmt:
            newest_gmt = gmt
            # Offsets are whole minutes; the two times may straddle a second.
            offset_s = round((_local_time(record) - gmt).total_seconds() / 60) * 60
    assert newest_gmt is not None
    return newest_gmt.replace(tzinfo=UTC), offset_s


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
