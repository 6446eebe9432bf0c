"""CKAN catalogues (Helsinki Region Infoshare, hri.fi): the image resources of
datasets, through the Action API (v3).

Each image resource of a dataset (mimetype image/*, or an image format or file
extension when the mimetype is missing) is one asset, its id the resource id;
CSV, PDF and other resources are skipped. CKAN makes no smaller copies, so the
original is always fetched.

Listing pages through `package_search` in `metadata_modified asc, id asc`
order with a keyset filter rather than `start` offsets: a dataset edited during
the sync moves to the end and would otherwise shift the ones behind it past
the reader. Solr keeps `metadata_modified` to the millisecond (CKAN prints
microseconds), so ties are broken by id.

Incremental listing: a changed resource bumps its dataset's
`metadata_modified`, but so does any other edit of the dataset, so the search
asks for the datasets modified since the watermark and the adapter keeps the
image resources whose own change time (`created`, `last_modified`,
`metadata_modified`) is newer. The search starts `incremental_overlap_s`
before the watermark, for edits committed in another order than their times;
resources already handed out in that window (kept in the cursor with their
change times) are not handed out again.

Deleted resources vanish from their dataset and deleted datasets from the
search, so deletions are noticed only by a full listing.

An API token goes in the `Authorization` header (the bare token). CKAN answers
requests with a token it does not know as if anonymous, which would silently
leave out the private datasets, so a configured token is checked first.
https://docs.ckan.org/en/latest/api/index.html

Marks (https://docs.ckan.org/en/latest/api/index.html#ckan.logic.action.patch.resource_patch):
three keys of the image resource (`damdup_marks`, `damdup_cluster`,
`damdup_canonical` by default), which CKAN keeps as the resource's extras and
`resource_show` prints beside its core keys. `annotate` reads the resource
and POSTs `resource_patch` with the keys that differ, and only those:
resource_patch is resource_show plus the given keys, then resource_update, so
every other key stays. A patch cannot remove a key: marks that no longer hold
become empty strings, which read as absent. Writing needs a token whose user
may update the dataset (editor or admin of its organization); the update
moves `metadata_modified` (of the resource and its dataset), never
`last_modified`, which CKAN sets only when a file is uploaded, so `version`
is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote, urljoin, urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from adapters.base import (
    IMAGE_EXTENSIONS,
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
    RequestObserver,
    Unavailable,
    choose_rendition,
    has_image_extension,
    listing_started,
    reason,
)
from adapters.http import HttpClient, HttpError

__all__ = ["Ckan", "CkanCursor", "CkanPaginator", "CkanSettings"]

ACTION = "api/3/action/"
SEARCH = ACTION + "package_search"
SORT = "metadata_modified asc, id asc"
# Format labels publishers give image resources, lower case: CKAN's
# resource_formats list and what people type name them by their extensions.
IMAGE_FORMATS = frozenset(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
# Mimetypes that say nothing: CKAN guesses the mimetype from the URL.
VAGUE_MIMETYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
HASH_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
# Columns of CKAN's resource table and keys resource_show adds: a marks key
# named like one of them would overwrite it.
CORE_RESOURCE_KEYS = frozenset(
    {"id", "package_id", "url", "format", "description", "hash", "name", "resource_type",
     "mimetype", "mimetype_inner", "cache_url", "size", "created", "last_modified",
     "metadata_modified", "cache_last_updated", "url_type", "extras", "state", "position",
     "datastore_active", "tracking_summary"}
)  # fmt: skip
MARK_KEY = r"^[a-z][a-z0-9_]{0,99}$"


class CkanSettings(RemoteSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_CKAN_", extra="forbid")
    page_size: int = Field(
        1000, ge=1, le=1000, description="datasets per package_search (CKAN's rows, at most 1000)"
    )
    # hri.fi's datasets are public; a token also lists the private datasets of
    # the organizations its user belongs to.
    api_token: SecretStr | None = Field(None, description="a CKAN API token (user → API tokens)")
    organization: str | None = Field(
        None,
        pattern=r"^[a-z0-9_-]{2,100}$",
        description="only datasets of this organization: its name, as in /organization/<name>",
    )
    filter_query: str | None = Field(
        None, description="a Solr filter added to every search, e.g. tags:valokuvat"
    )
    incremental_overlap_s: float = Field(
        300,
        ge=0,
        le=86_400,
        description="an incremental listing re-reads datasets modified this long before its "
        "watermark (edits saved out of order); what was already listed is not repeated",
    )
    file_hosts: list[str] = Field(
        default_factory=list,
        description="other hosts serving the files (cloud storage): host[:port] or https://host",
    )
    marks_key: str = Field("damdup_marks", pattern=MARK_KEY, description="resource key: labels")
    cluster_key: str = Field("damdup_cluster", pattern=MARK_KEY, description="resource key")
    canonical_key: str = Field("damdup_canonical", pattern=MARK_KEY, description="resource key")
    # hri.fi's dataset fields: the area the dataset covers, its release date
    # and the publishing organization (a city division or unit). The adapter
    # reads a record made of the resource's own keys (extra keys included)
    # plus `package`: its dataset, with `extras` as a mapping whose keys are
    # also copied to the top level (ckanext-scheming fields are there already).
    metadata: MetadataMapping = MetadataMapping(
        location="package.geographic_coverage",
        date="package.date_released",
        department="package.organization.title",
    )

    @model_validator(mode="after")
    def _marks_keys_are_damdups(self) -> CkanSettings:
        keys = [self.marks_key, self.cluster_key, self.canonical_key]
        if len(set(keys)) != 3:
            raise ValueError("marks_key, cluster_key and canonical_key must differ")
        taken = sorted(set(keys) & CORE_RESOURCE_KEYS)
        if taken:
            raise ValueError(f"{', '.join(taken)}: a core CKAN resource key, not damdup's")
        return self


class CkanCursor(BaseModel):
    """A position in a listing. A completed listing's cursor has only `since`
    and `seen`: where the next, incremental, listing starts. Times are UTC, to
    the microsecond as CKAN prints them; cursors saved as strings ("…Z") load
    as the same times."""

    model_config = ConfigDict(frozen=True)
    # Incremental: resources changed at or after this time; None: everything.
    since: AwareDatetime | None = None
    # The ids at the boundary: resources handed out whose change time lies in
    # the overlap window, with that time.
    seen: dict[str, AwareDatetime] = Field(default_factory=dict)
    # While listing: the last dataset handed out, as Solr orders them
    # (metadata_modified to the millisecond, then id), and the newest change seen.
    after_modified: AwareDatetime | None = None
    after_id: str | None = None
    newest: AwareDatetime | None = None
    # While listing: when this listing began. The watermark never passes it,
    # so a resource dated in the future cannot hide later uploads.
    started: AwareDatetime | None = None


class CkanPaginator:
    """Keyset paging over `package_search` in Solr's order (module docstring),
    as singer_sdk's paginators: it writes the search's paging clauses from its
    cursor, reads an answer into the next cursor, and refuses to repeat one.
    Closed at the start: an incremental search starts `overlap` before the
    watermark, and a resource is handed out only when its change time is new
    for its id."""

    def __init__(
        self,
        cursor: CkanCursor | None,
        rows: int,
        overlap: timedelta,
    ) -> None:
        self.cursor = listing_started(cursor or CkanCursor())
        self.rows = rows
        self.overlap = overlap
        self.finished = False

    def clauses(self) -> list[str]:
        clauses = []
        cursor = self.cursor
        if cursor.since is not None:
            clauses.append(f"+metadata_modified:[{_solr(cursor.since - self.overlap)} TO *]")
        if cursor.after_modified and cursor.after_id:
            after = _solr(cursor.after_modified)
            after_id = _quoted(cursor.after_id)
            clauses.append(
                f"+(metadata_modified:{{{after} TO *] OR "
                f"(metadata_modified:[{after} TO {after}] AND id:{{{after_id} TO *]))"
            )
        return clauses

    def advance(
        self, packages: list[dict[str, Any]], count: int
    ) -> list[tuple[dict[str, Any], dict[str, Any], datetime]]:
        """The resources to hand out, each with its dataset and change time;
        moves the cursor past the answer."""
        cursor = self.cursor
        window_start = cursor.since - self.overlap if cursor.since else None
        newest = cursor.newest or cursor.since
        seen = dict(cursor.seen)
        handed: list[tuple[dict[str, Any], dict[str, Any], datetime]] = []
        for package in packages:
            package_modified = _package_modified(package)
            newest = max(newest or package_modified, package_modified)
            for resource, changed in _images(package, package_modified):
                newest = max(newest, changed)
                if window_start is not None and changed < window_start:
                    continue  # unchanged: the dataset was modified for another reason
                if seen.get(str(resource["id"])) == changed:
                    continue  # already handed out (the overlap, or a dataset listed twice)
                seen[str(resource["id"])] = changed
                handed.append((resource, package, changed))
        if len(packages) < self.rows or count <= len(packages):
            self._finish(seen, newest)
        else:
            assert newest is not None  # packages is not empty here
            self._follow(seen, window_start or newest - self.overlap, newest, packages[-1])
        return handed

    def _finish(self, seen: dict[str, datetime], newest: datetime | None) -> None:
        """The watermark: the newest change seen, with the ids handed out in
        the overlap before it."""
        if newest is not None and self.cursor.started is not None:
            newest = min(newest, self.cursor.started)
        if newest is not None:
            seen = _within(seen, newest - self.overlap)
        self.cursor = CkanCursor(since=newest, seen=seen)
        self.finished = True

    def _follow(
        self,
        seen: dict[str, datetime],
        window_start: datetime,
        newest: datetime,
        last: dict[str, Any],
    ) -> None:
        following = CkanCursor(
            since=self.cursor.since,
            # Entries from before the window may still be met in this listing.
            seen=_within(seen, window_start),
            after_modified=_millisecond(_package_modified(last)),
            after_id=str(last["id"]),
            newest=newest,
            started=self.cursor.started,
        )
        if following == self.cursor:  # a search that ignores the keyset would loop
            raise Unavailable(
                f"{SEARCH} answered the same page again after dataset {last['id']} "
                "(it ignores the fq paging clause)"
            )
        self.cursor = following


class Ckan(HttpAdapter[CkanCursor]):
    kind: ClassVar[str] = "ckan"
    settings_model = CkanSettings
    cursor_model = CkanCursor
    capabilities = Capabilities(incremental=True, annotate=True, describe=True, fetch_url=True)
    http: HttpClient

    def __init__(self, settings: CkanSettings, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer)
        self._token = settings.api_token.get_secret_value() if settings.api_token else None
        self.http = HttpClient.for_settings(
            settings,
            headers={"Authorization": self._token} if self._token else None,
            secrets=[self._token],
            allowed_hosts=_origins(settings.file_hosts),
            kind=self.kind,
            observer=observer,
        )
        self._overlap = timedelta(seconds=settings.incremental_overlap_s)
        self._token_checked = self._token is None

    # -- listing -------------------------------------------------------------

    def list_assets(self, cursor: CkanCursor | None) -> Page[CkanCursor]:
        self._check_token()
        paginator = CkanPaginator(cursor, self.settings.page_size, self._overlap)
        packages, count = self._search(paginator.clauses())
        handed = paginator.advance(packages, count)
        items = [self._ref(resource, package, changed) for resource, package, changed in handed]
        return Page(items=items, cursor=paginator.cursor, complete=paginator.finished)

    def _search(self, paging: list[str]) -> tuple[list[dict[str, Any]], int]:
        """One page of `package_search`: its datasets and the count matching."""
        params: dict[str, Any] = {"q": "*:*", "sort": SORT, "rows": self.settings.page_size}
        search_filter = " ".join(self._filter() + paging)
        if search_filter:
            params["fq"] = search_filter
        if self._token:
            params["include_private"] = "true"
        result = self._action("package_search", params)
        packages = result.get("results") if isinstance(result, dict) else None
        count = result.get("count") if isinstance(result, dict) else None
        if (
            not isinstance(packages, list)
            or not isinstance(count, int)
            or not all(isinstance(package, dict) for package in packages)
        ):
            raise Unavailable(f"{SEARCH} answered without `count` and a list of `results`")
        return packages, count

    def _filter(self) -> list[str]:
        """The unit's Solr clauses, each required (+): CKAN adds its own
        (public, active)."""
        clauses = []
        if self.settings.organization:
            clauses.append(f"+organization:{self.settings.organization}")
        if self.settings.filter_query:
            clauses.append(f"+({self.settings.filter_query})")
        return clauses

    def _ref(
        self, resource: dict[str, Any], package: dict[str, Any], changed: datetime
    ) -> AssetRef:
        resource_id = str(resource["id"])
        dataset = str(package.get("name") or package["id"])
        page = urljoin(
            self.http.base_url, f"dataset/{quote(dataset)}/resource/{quote(resource_id)}"
        )
        original, problem = self._file(resource, package)
        size = _int(resource.get("size"))
        checksum = str(resource.get("hash") or "").strip()
        # A new upload changes last_modified (and the URL when the name differs);
        # edits of the description or other keys change neither.
        file_time = resource.get("last_modified") or resource.get("created") or ""
        version = f"{file_time}|{size if size is not None else ''}|{checksum}|{original or ''}"
        return AssetRef(
            id=resource_id,
            version=version,
            url=page,
            size_bytes=size,
            modified=changed.isoformat(),
            content_hash=_content_hash(checksum),
            metadata=self.settings.metadata.apply(_record(resource, package)),
            problem=problem,
            original_url=original,
        )

    def _file(
        self, resource: dict[str, Any], package: dict[str, Any]
    ) -> tuple[str | None, str | None]:
        url = str(resource.get("url") or "").strip()
        if not url:
            return None, "the resource has no file URL"
        if resource.get("url_type") == "upload" and "://" not in url:
            # Some extensions leave an upload's bare file name; CKAN's own download path.
            url = (
                f"dataset/{quote(str(package['id']))}/resource/"
                f"{quote(str(resource['id']))}/download/{quote(url)}"
            )
        url = urljoin(self.http.base_url, url)
        if urlsplit(url).scheme not in ("http", "https"):
            return url, f"the resource links to {url.split(':')[0]}:, not to a web address"
        try:
            self.http.url(url)
        except BadAsset:
            host = urlsplit(url).netloc
            return url, (
                f"the file is on {host}, not on this CKAN; "
                "add the host to file_hosts to fetch it from there"
            )
        return url, None

    def describe(self, asset_id: str) -> AssetRef:
        """resource_show, then package_show for the dataset's fields the
        metadata mapping and the page address need.
        https://docs.ckan.org/en/2.10/api/index.html#ckan.logic.action.get.resource_show"""
        self._check_token()
        resource = self._action("resource_show", {"id": asset_id})
        if not isinstance(resource, dict) or not resource.get("package_id"):
            raise Unavailable(f"resource_show {asset_id} answered without a package_id")
        package = self._action("package_show", {"id": resource["package_id"]})
        if not isinstance(package, dict) or not package.get("id"):
            raise Unavailable(f"package_show {resource['package_id']} answered without an id")
        if resource.get("state", "active") != "active" or not _is_image(resource):
            raise NotFound(f"CKAN resource {asset_id} is not an active image")
        modified = _moment(package.get("metadata_modified"))
        if modified is None:
            raise Unavailable(f"package_show {package['id']} answered without metadata_modified")
        return self._ref(resource, package, _changed(resource, modified))

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        url = choose_rendition(asset, min_side) or asset.original_url
        if not url:
            raise BadAsset(f"resource {asset.id} has no file URL")
        return self.http.get_bytes(url)

    # -- marks ----------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        return self._stored(self._action("resource_show", {"id": asset.id}))

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        if self._token is None:
            raise AuthFailed(
                f"{self.http.base_url}: writing marks needs the unit's api_token, of a user "
                "who may edit the datasets (an editor or admin of their organization)"
            )
        resource = self._action("resource_show", {"id": asset.id})
        if not isinstance(resource, dict):
            raise Unavailable(f"{ACTION}resource_show answered without a resource")
        fields = marks.to_fields()
        wanted = {
            self.settings.marks_key: fields.get("damdup-marks", ""),
            self.settings.cluster_key: fields.get("damdup-cluster", ""),
            self.settings.canonical_key: fields.get("damdup-canonical", ""),
        }
        changes = {key: value for key, value in wanted.items() if _text(resource.get(key)) != value}
        if not changes:
            return False
        try:
            self.http.request("POST", ACTION + "resource_patch", json={"id": asset.id, **changes})
        except AuthFailed as exc:
            raise AuthFailed(
                f"{exc}. Writing marks needs a token whose user is an editor or admin of the "
                "dataset's organization"
            ) from None
        except HttpError as exc:
            raise HttpError(
                f"CKAN refused resource_patch (a resource schema that rejects the keys "
                f"{', '.join(wanted)}?): {reason(exc)}",
                exc.status,
                exc.detail,
            ) from None
        return True

    def _stored(self, resource: Any) -> Marks:
        if not isinstance(resource, dict):
            raise Unavailable(f"{ACTION}resource_show answered without a resource")
        try:
            return Marks.from_fields(
                {
                    "damdup-marks": _text(resource.get(self.settings.marks_key)),
                    "damdup-cluster": _text(resource.get(self.settings.cluster_key)),
                    "damdup-canonical": _text(resource.get(self.settings.canonical_key)),
                }
            )
        except ValueError:
            # Keys edited by hand into something that is no mark: nothing of
            # damdup's; the next annotate writes them over.
            return Marks()

    # -- requests -------------------------------------------------------------

    def _check_token(self) -> None:
        """CKAN runs a request with an unknown, expired or revoked token as
        anonymous: its user's organizations are the way to tell."""
        if self._token_checked:
            return
        organizations = self._action("organization_list_for_user", {"permission": "read"})
        if not isinstance(organizations, list):
            raise Unavailable(f"{ACTION}organization_list_for_user answered without a list")
        if not organizations:
            raise AuthFailed(
                f"{self.http.base_url}: CKAN does not know the API token (unknown, expired or "
                "revoked), or its user belongs to no organization and sees nothing more than "
                "anonymous users; check the unit's credentials (api_token)"
            )
        self._token_checked = True

    def _action(self, name: str, params: dict[str, Any]) -> Any:
        try:
            reply = self.http.get(ACTION + name, params)
        except HttpError as exc:
            hint = (
                " (check the unit's organization and filter_query)"
                if name == "package_search"
                else ""
            )
            raise HttpError(f"CKAN refused {name}{hint}: {reason(exc)}", exc.status) from None
        body = reply.json
        if not isinstance(body, dict) or body.get("success") is not True or "result" not in body:
            raise Unavailable(
                f"{ACTION}{name} answered without a CKAN result; base_url must be the CKAN "
                "root (where /api/3/action/ is), e.g. https://hri.fi/data/"
            )
        return body["result"]


# -- helpers ---------------------------------------------------------------------


def _moment(value: Any) -> datetime | None:
    """CKAN prints naive UTC (`2024-05-01T10:00:00.123456`, no fraction when it
    is zero); extensions and our cursor may add Z or an offset."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _package_modified(package: dict[str, Any]) -> datetime:
    modified = _moment(package.get("metadata_modified"))
    if modified is None or not package.get("id"):
        raise Unavailable(f"{SEARCH} answered with a dataset without id or modified time")
    return modified


def _images(
    package: dict[str, Any], package_modified: datetime
) -> Iterator[tuple[dict[str, Any], datetime]]:
    """The dataset's active image resources, each with its change time."""
    for resource in package.get("resources") or []:
        if not isinstance(resource, dict) or not resource.get("id"):
            continue
        if resource.get("state", "active") != "active" or not _is_image(resource):
            continue
        yield resource, _changed(resource, package_modified)


def _millisecond(moment: datetime) -> datetime:
    """Cut to the millisecond, as Solr keeps CKAN's times."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _solr(moment: datetime) -> str:
    """A Solr date to the millisecond, cut (not rounded) as Solr cuts CKAN's
    microseconds, so a bound from a dataset's own time still includes it."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _within(seen: dict[str, datetime], start: datetime) -> dict[str, datetime]:
    return {key: value for key, value in seen.items() if value >= start}


def _changed(resource: dict[str, Any], package_modified: datetime) -> datetime:
    """When the resource last changed: created, a new file, or an edit of its
    keys. Without its own metadata_modified (CKAN before 2.9) only its
    dataset's time tells."""
    times = [
        _moment(resource.get(key)) for key in ("created", "last_modified", "metadata_modified")
    ]
    if not resource.get("metadata_modified"):
        times.append(package_modified)
    known = [moment for moment in times if moment is not None]
    return max(known) if known else package_modified


def _is_image(resource: dict[str, Any]) -> bool:
    mimetype = str(resource.get("mimetype") or "").strip().lower()
    if mimetype.startswith("image/"):
        return True
    if mimetype not in VAGUE_MIMETYPES:
        return False
    label = str(resource.get("format") or "").strip().lower().lstrip(".")
    if label:
        return label in IMAGE_FORMATS or label.startswith("image/")
    path = urlsplit(str(resource.get("url") or "")).path.lower()
    return has_image_extension(path)


def _record(resource: dict[str, Any], package: dict[str, Any]) -> dict[str, Any]:
    """What the metadata mapping reads: the resource's keys and its dataset."""
    dataset = {key: value for key, value in package.items() if key != "resources"}
    extras = package.get("extras")
    if isinstance(extras, list):
        flat = {
            str(extra["key"]): extra.get("value")
            for extra in extras
            if isinstance(extra, dict) and "key" in extra
        }
        dataset["extras"] = flat
        for key, value in flat.items():
            dataset.setdefault(key, value)
    return {**resource, "package": dataset}


def _content_hash(checksum: str) -> str | None:
    """CKAN's `hash` is free text, often empty; a bare hex digest is named by
    its length, an "algorithm:hex" one kept."""
    if re.fullmatch(r"[a-z0-9-]+:[0-9a-fA-F]+", checksum):
        return checksum.lower()
    algorithm = HASH_ALGORITHMS.get(len(checksum))
    if algorithm and re.fullmatch(r"[0-9a-fA-F]+", checksum):
        return f"{algorithm}:{checksum.lower()}"
    return None


def _origins(hosts: list[str]) -> list[str]:
    """`host[:port]` or a URL: a bare host may serve either scheme."""
    origins = []
    for host in hosts:
        if "//" in host:
            origins.append(host)
        else:
            origins += [f"https://{host}", f"http://{host}"]
    return origins


def _text(value: Any) -> str:
    """An extra's value as text; a missing key or null reads as empty."""
    return "" if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None
