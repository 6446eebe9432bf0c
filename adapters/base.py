"""The adapter contract: what every platform module provides to the engine.

An adapter imports only this module and the shared adapter modules (import-linter
checks it: pyproject.toml). Few required methods;
optional abilities are declared in `Capabilities` and the base raises
`Unsupported` for the ones a platform lacks.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator
from pydantic_settings import BaseSettings

__all__ = [
    "Adapter",
    "AdapterError",
    "AssetMetadata",
    "AssetRef",
    "AuthFailed",
    "BadAsset",
    "Capabilities",
    "HttpAdapter",
    "IMAGE_EXTENSIONS",
    "MARK_FIELDS",
    "MARK_LABELS",
    "Marks",
    "MarksDoNotFit",
    "MetadataMapping",
    "NotFound",
    "Page",
    "PublicLinkSettings",
    "RateLimited",
    "RemoteSettings",
    "Rendition",
    "RequestEvent",
    "RequestObserver",
    "Retryable",
    "Unavailable",
    "Unsupported",
    "choose_rendition",
    "has_image_extension",
    "pick",
    "reason",
    "web_link",
]


class AdapterError(Exception):
    """Base of every error an adapter may raise; no transport error crosses it."""


def reason(exc: BaseException) -> str:
    """What went wrong, for a person: the exception's own words, else its
    cause's, else its type's name; never empty (some requests and OSError
    exceptions have no text, and "...: " ending in nothing tells nobody anything)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if text:
            return text
        current = current.__cause__ or current.__context__
    return type(exc).__name__


class Retryable(AdapterError):
    """The engine tries again later."""


class RateLimited(Retryable):
    def __init__(self, retry_after: float | None, message: str = "rate limited") -> None:
        super().__init__(f"{message} (retry after {retry_after}s)" if retry_after else message)
        self.retry_after = retry_after


class Unavailable(Retryable):
    pass


class AuthFailed(AdapterError):
    """Stop this unit: credentials are wrong or lack rights."""


class NotFound(AdapterError):
    pass


class Unsupported(AdapterError):
    pass


class BadAsset(AdapterError):
    """Skip this asset and record why."""


class MarksDoNotFit(AdapterError):
    """The store has no room for damdup's marks on this asset without dropping
    someone else's (S3 allows 10 tags an object, Azure 10 index tags a blob).
    Nothing was written; the engine records the reason and tries again later."""


@dataclass(frozen=True)
class Capabilities:
    """What an adapter really does; the engine, the entry points and the
    contract suite read it. The engine calls an optional method only when its
    ability is declared, and an undeclared one raises `Unsupported`. An
    adapter whose settings take an ability away (Finna's `filters` and
    `describe`) declares less on that instance.

    incremental: a listing can start from where the last one ended and list
        only what changed since.
    deletions: an incremental listing reports assets deleted upstream
        (`Page.deleted`); without it, only a full listing notices them.
    renditions: `fetch` can return a smaller, aspect-preserving copy.
    annotate: damdup's marks can be read (`read_marks`) and written back
        (`annotate`).
    describe: one asset can be asked for by id (`describe`); without it a
        webhook's check syncs the unit instead.
    exists: whether one asset is still there can be asked (`exists`); without
        it an asset a full listing did not show is retired.
    fetch_url: an address on the platform can be read through the unit's own
        client (`fetch_url`, a lookup by URL).
    local_path: an asset is a file this machine can read (`local_path`).
    """

    incremental: bool = False
    deletions: bool = False
    renditions: bool = False
    annotate: bool = False
    describe: bool = False
    exists: bool = False
    fetch_url: bool = False
    local_path: bool = False

    def without(self, *abilities: str) -> Capabilities:
        """These capabilities less `abilities`, for an instance whose settings
        take them away."""
        unknown = [name for name in abilities if name not in self.__dataclass_fields__]
        if unknown:
            raise ValueError(f"no abilities {unknown} in Capabilities")
        return replace(self, **dict.fromkeys(abilities, False))


@dataclass(frozen=True)
class AssetMetadata:
    """The mandatory metadata every asset should carry, mapped to common fields."""

    location: str | None = None
    date: str | None = None
    department: str | None = None

    @property
    def missing(self) -> list[str]:
        return [name for name in ("location", "date", "department") if not getattr(self, name)]


def pick(record: Any, path: str | None) -> str | None:
    """The value at a dotted path of a platform record ("acf.location",
    "field_tags.0.name"); a path starting with "=" is a literal (a unit whose
    department is always the same). Lists of values are joined with ", "."""
    if not path:
        return None
    if path.startswith("="):
        return path[1:] or None
    value: Any = record
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    if isinstance(value, list):  # taxonomy terms, subjects: their names joined
        parts = [_scalar(item) for item in value]
        value = ", ".join(part for part in parts if part)
    return _scalar(value)


def _scalar(value: Any) -> str | None:
    if isinstance(value, dict):  # a rendered field such as WordPress {"rendered": "..."}
        value = value.get("rendered", value.get("value", value.get("name")))
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


class MetadataMapping(BaseModel):
    """Where a unit keeps the mandatory metadata in its platform's records:
    dotted paths into the record as the API returns it, or "=literal"."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    location: str | None = None
    date: str | None = None
    department: str | None = None

    def apply(self, record: Any) -> AssetMetadata:
        return AssetMetadata(
            location=pick(record, self.location),
            date=pick(record, self.date),
            department=pick(record, self.department),
        )


class RemoteSettings(BaseSettings):
    """Options every platform reached over HTTP shares; each adapter's settings
    model extends it (and narrows `page_size` to its platform's limit)."""

    base_url: HttpUrl
    page_size: int = Field(100, ge=1)
    timeout_s: float = Field(30.0, gt=0, le=600, description="read time-out per request")
    attempts: int = Field(4, ge=1, le=10, description="tries per request on 429, 5xx, time-outs")
    max_retry_after_s: float = Field(
        60.0, ge=0, description="longer Retry-After waits end the request; the sync retries later"
    )
    metadata: MetadataMapping = MetadataMapping()


class PublicLinkSettings(BaseSettings):
    """For platforms whose own addresses editors cannot open (a folder on the
    damdup host, a private bucket): where the same files are published on the
    web. The link to an asset is this address followed by the asset's path
    under the unit's folder, bucket prefix or container prefix."""

    public_base_url: HttpUrl | None = Field(
        None, description="where editors open the unit's files, e.g. https://kuvat.hel.fi/arkisto/"
    )

    @field_validator("public_base_url")
    @classmethod
    def _plain_base(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is None:
            return None
        if value.username or value.password:
            raise ValueError("a URL must not hold a user name or password")
        if value.query or value.fragment:
            raise ValueError("public_base_url must have no query (?) and no fragment (#)")
        if not (value.path or "/").endswith("/"):  # a base names a folder: paths go under it
            return HttpUrl(f"{value}/")
        return value


def web_link(base_url: str, path: str) -> str:
    """`path` (segments separated by "/") under `base_url`, each segment
    percent-encoded as UTF-8 (a name's undecodable bytes as themselves), so
    that a space, `#`, `?` or `%` in a name stays part of the name."""
    return base_url + "/".join(
        quote(segment.encode("utf-8", "surrogateescape"), safe="") for segment in path.split("/")
    )


# What a listing takes for an image by its name, where the platform gives no
# type or a vague one (file stores hold any file): the extensions Pillow, with
# pillow-heif, decodes for the formats photos and web images come in (JPEG,
# PNG, GIF, WebP, TIFF, BMP, HEIF/HEIC with cameras' .hif, AVIF, JPEG 2000),
# and SVG, listed so that it is reported as not raster rather than ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp",
     ".dib", ".heic", ".heif", ".hif", ".avif", ".jp2", ".j2k", ".jpf", ".jpx", ".svg",
     ".svgz"}
)  # fmt: skip


def has_image_extension(name: str) -> bool:
    """Whether a file name, key or path ends in one of IMAGE_EXTENSIONS, in any case."""
    return name.lower().endswith(tuple(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class Rendition:
    """A smaller copy the platform already serves. Width and height as the
    platform reports them; a rendition without them is never chosen."""

    url: str
    width: int
    height: int


@dataclass(frozen=True)
class AssetRef:
    id: str  # stable within the unit
    version: str  # changes whenever the bytes may have changed (ETag, mtime+size, ...)
    url: str  # where a person opens it on its own platform
    size_bytes: int | None = None
    modified: str | None = None  # ISO 8601
    content_hash: str | None = None  # when the platform gives one, as "algo:hex"
    metadata: AssetMetadata = field(default_factory=AssetMetadata)
    # Set when the listing already knows the asset cannot be read (a dangling
    # link, a file too large): the engine records it without fetching.
    problem: str | None = None
    original_url: str | None = None  # the original file, when it differs from `url`
    width: int | None = None  # of the original, when the platform tells
    height: int | None = None
    renditions: tuple[Rendition, ...] = ()


# A rendition whose aspect ratio differs from the original's by more than this
# is a crop (square thumbnails, fixed-ratio teasers) and is never hashed.
ASPECT_TOLERANCE = 0.02


def name_at(url: str, base_url: str) -> str | None:
    """The object or blob name `url` addresses under `base_url` (a bucket's or
    container's address ending in "/"), unquoted; None for any other address:
    another scheme or host, outside the base path, a query or fragment, or a
    "folder" (no name, or one ending in "/")."""
    base, parts = urlsplit(base_url), urlsplit(url)
    if (
        (parts.scheme, parts.netloc.lower()) != (base.scheme, base.netloc.lower())
        or not parts.path.startswith(base.path)
        or parts.query
        or parts.fragment
    ):
        return None
    name = unquote(parts.path[len(base.path) :])
    return name if name and not name.endswith("/") else None


def choose_rendition(asset: AssetRef, min_side: int) -> str | None:
    """The smallest rendition whose short side is >= min_side and whose aspect
    ratio is the original's (rounding to whole pixels allowed); None when only
    the original will do. With min_side 0 the answer is always None."""
    if min_side <= 0 or not asset.width or not asset.height:
        return None
    if min(asset.width, asset.height) <= min_side:
        return None  # the original is no larger than what is asked for
    ratio = asset.width / asset.height
    best: Rendition | None = None
    for rendition in asset.renditions:
        if rendition.width <= 0 or rendition.height <= 0:
            continue
        if min(rendition.width, rendition.height) < min_side:
            continue
        # One pixel of rounding on the short side is not a crop.
        slack = 1.0 / min(rendition.width, rendition.height)
        if abs(rendition.width / rendition.height - ratio) / ratio > ASPECT_TOLERANCE + slack:
            continue
        if rendition.width * rendition.height >= asset.width * asset.height:
            continue
        if best is None or rendition.width * rendition.height < best.width * best.height:
            best = rendition
    return best.url if best else None


# Every mark damdup writes. `metadata-missing` flags an asset without location,
# date or contributing department.
MARK_LABELS = ("canonical", "duplicate", "duplicate-candidate", "related", "metadata-missing")
_CLUSTER_ID = re.compile(r"^dd[0-9a-f]{10}$")


@dataclass(frozen=True)
class Marks:
    """damdup's marks on one asset: what `annotate` writes and `read_marks` reads.

    labels: a sorted, duplicate-free subset of MARK_LABELS.
    cluster: the short cluster id ("dd" + 10 hex digits, valid as an S3 or
        Azure tag value) on the canonical and every member of its cluster.
    canonical_url: the canonical's URL on its own platform, on duplicates and
        candidates (never on the canonical itself).
    `Marks()` means nothing of damdup's on the asset: annotating with it removes
    damdup's earlier marks and leaves everything else as it is.
    """

    labels: tuple[str, ...] = ()
    cluster: str | None = None
    canonical_url: str | None = None

    def __post_init__(self) -> None:
        unknown = [label for label in self.labels if label not in MARK_LABELS]
        if unknown:
            raise ValueError(f"unknown marks {unknown}; damdup writes only {MARK_LABELS}")
        object.__setattr__(self, "labels", tuple(sorted(set(self.labels))))
        if self.cluster is not None and not _CLUSTER_ID.match(self.cluster):
            raise ValueError(f"cluster id {self.cluster!r} is not dd + 10 hex digits")

    @property
    def empty(self) -> bool:
        return not self.labels and self.cluster is None and self.canonical_url is None

    def to_fields(self) -> dict[str, str]:
        """Flat text fields, for stores that keep key/value pairs: only the
        fields that have a value. Labels are joined by single spaces."""
        fields = {"damdup-marks": " ".join(self.labels)} if self.labels else {}
        if self.cluster:
            fields["damdup-cluster"] = self.cluster
        if self.canonical_url:
            fields["damdup-canonical"] = self.canonical_url
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str | None]) -> Marks:
        """The inverse of `to_fields`; keys that are not damdup's are ignored
        and empty values count as absent."""
        labels = (fields.get("damdup-marks") or "").split()
        return cls(
            labels=tuple(labels),
            cluster=fields.get("damdup-cluster") or None,
            canonical_url=fields.get("damdup-canonical") or None,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "labels": list(self.labels),
                "cluster": self.cluster,
                "canonical_url": self.canonical_url,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> Marks:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            labels=tuple(data.get("labels") or ()),
            cluster=data.get("cluster"),
            canonical_url=data.get("canonical_url"),
        )


# The flat field names of `Marks.to_fields`, also the tag and property names.
MARK_FIELDS = ("damdup-marks", "damdup-cluster", "damdup-canonical")


@dataclass(frozen=True)
class RequestEvent:
    """One request attempt an adapter made, for its unit's observer (the
    daemon's latency histogram): the adapter's `kind`, the HTTP method, the
    status (None when no answer came) and the seconds to the whole answer."""

    kind: str
    method: str
    status: int | None
    elapsed_s: float


# Given to an adapter when it is built and called after each request attempt
# (adapters.transport.record_request); quick, and never raising.
RequestObserver = Callable[[RequestEvent], None]


CursorT = TypeVar("CursorT", bound=BaseModel)


def listing_started(cursor: CursorT) -> CursorT:
    """The cursor with the time its listing began (a `started` field), set on
    the listing's first page: a finished listing's watermark never passes it,
    so an item dated in the future cannot hide later uploads."""
    if getattr(cursor, "started", None) is None:
        return cursor.model_copy(update={"started": datetime.now(UTC)})
    return cursor


@dataclass(frozen=True)
class Page(Generic[CursorT]):
    """One page of a listing.

    `list_assets(None)` starts a full listing; a listing started from the cursor
    that a completed listing returned is incremental (what changed since). While
    a listing runs, `cursor` is the resume point after this page. On the last
    page (`complete`), `cursor` is where the next incremental listing starts
    (None for a platform without one); it never passes the time the listing
    started, so nothing changed during a sync is missed.

    `unlisted`: folders the listing could not read (a folder refused, a
    share that did not answer), as paths like those `relative_path` gives
    ("" for all of what the unit reads), on any page. A full listing retires
    no asset it did not show under one of them: their assets may all be
    there still. The adapter reports each as an asset with a `problem` as
    well, so that it is a recorded error, not a log line.
    """

    items: list[AssetRef]
    cursor: CursorT | None
    complete: bool
    deleted: list[str] = field(default_factory=list)  # ids the platform reports gone
    unlisted: list[str] = field(default_factory=list)


class Adapter(ABC, Generic[CursorT]):
    kind: ClassVar[str]
    settings_model: ClassVar[type[BaseSettings]]
    cursor_model: ClassVar[type[BaseModel]]
    # Per class; an instance whose settings take an ability away replaces it.
    capabilities: Capabilities = Capabilities()

    def __init__(self, settings: Any, observer: RequestObserver | None = None) -> None:
        """Every adapter is built from its `settings_model`; none contacts
        the platform here. The `observer`, when given, is told of each
        request attempt the adapter makes (the daemon's metrics)."""
        self.settings = settings
        self.observer = observer

    @abstractmethod
    def list_assets(self, cursor: CursorT | None) -> Page[CursorT]: ...

    @abstractmethod
    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        """The smallest aspect-preserving rendition with short side >= min_side;
        the original when none exists. Never a square-cropped thumbnail."""

    def fetch_original(self, asset: AssetRef) -> bytes:
        return self.fetch(asset, min_side=0)

    def exists(self, asset: AssetRef) -> bool:
        """Whether the asset is still on the platform, asked one by one
        (`Capabilities.exists`). The engine asks before it retires an asset
        that a full listing did not show: a listing paged by offsets skips a
        live asset when one before it is deleted meanwhile. An adapter that
        declares it gives `probe`, or overrides this where the platform's
        answer says more than found or not found."""
        try:
            self.probe(asset)
        except NotFound:
            return False
        return True

    def probe(self, asset: AssetRef) -> None:
        """Ask the platform for the asset alone, with its cheapest request;
        NotFound when it is gone. Only `exists` calls it."""
        raise Unsupported(f"{self.kind} cannot tell whether one asset is there outside a listing")

    def describe(self, asset_id: str) -> AssetRef:
        """One asset as a listing gives it, asked by id (a webhook's check;
        `Capabilities.describe`); NotFound when it is gone."""
        raise Unsupported(f"{self.kind} cannot describe one asset outside a listing")

    def fetch_url(self, url: str) -> bytes:
        """The bytes at `url`, an address on this unit's platform (a lookup by
        URL; `Capabilities.fetch_url`), through the adapter's own client, which
        refuses other hosts."""
        raise Unsupported(f"{self.kind} cannot fetch an address by URL")

    def link(self, asset: AssetRef) -> str | None:
        """Where a person opens the asset: the canonical link written on its
        copies and shown by lookup and reports. The unit's `public_base_url`
        when its settings have one and it is set, else the asset's own `url`.
        None when the platform has no address a person can open (a folder on
        the damdup host): the engine then names the unit and the path in words."""
        base = getattr(self.settings, "public_base_url", None)
        if base is not None:
            return web_link(str(base), self.relative_path(asset))
        return asset.url

    def relative_path(self, asset: AssetRef) -> str:
        """The asset's path under what the unit reads (its folder, or its bucket's
        or container's prefix), "/"-separated; `link` appends it to the unit's
        public base URL."""
        return asset.id

    def local_path(self, asset: AssetRef) -> str:
        """A file this machine can read for the asset (`Capabilities.local_path`):
        the engine's workers then read it themselves instead of being sent its bytes."""
        raise Unsupported(f"{self.kind} has no files on this machine")

    def iter_pages(self, cursor: CursorT | None = None) -> Iterator[Page[CursorT]]:
        seen: set[str] = set()
        while True:
            page = self.list_assets(cursor)
            yield page
            if page.complete:
                return
            if page.cursor is None:
                raise Unavailable(f"{self.kind}: listing ended without its last page")
            token = page.cursor.model_dump_json()
            if token in seen:  # a paginator that repeats would loop forever
                raise Unavailable(f"{self.kind}: listing repeated cursor {token}")
            seen.add(token)
            cursor = page.cursor

    def read_marks(self, asset: AssetRef) -> Marks:
        """damdup's marks on the asset as the platform holds them now
        (`Capabilities.annotate`)."""
        raise Unsupported(f"{self.kind} cannot store marks")

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        """Make damdup's marks on the asset exactly `marks` (`Marks()` removes
        them), replacing only damdup's own earlier marks: every other field,
        tag or property stays as it was. Returns False when the platform
        already held exactly these marks and no changing request was sent.

        Never deletes an asset, and never sends an HTTP DELETE. Writing marks
        must not change the asset's `version` (its bytes did not change).
        Raises NotFound for an asset gone upstream and MarksDoNotFit when the
        store's limits leave no room without dropping someone else's data."""
        raise Unsupported(f"{self.kind} cannot store marks")


class _ByteClient(Protocol):
    """What `HttpAdapter` needs of its client, `adapters.http.HttpClient`
    (which imports this module, so it cannot be imported here)."""

    def get_bytes(self, url: str, /) -> bytes: ...


class HttpAdapter(Adapter[CursorT]):
    """A platform reached through the shared HTTP client, which `__init__`
    sets as `http` (annotate it as `HttpClient` in the subclass). The client
    refuses every host but the unit's, so an address on the platform is
    fetched as it is given (declare `fetch_url`)."""

    http: _ByteClient

    def fetch_url(self, url: str) -> bytes:
        return self.http.get_bytes(url)
