"""The adapter contract: what every platform module provides to the engine.

An adapter imports only this module and `adapters.http`. Few required methods;
optional abilities are declared in `Capabilities` and the base raises
`Unsupported` for the ones a platform lacks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from pydantic_settings import BaseSettings

__all__ = [
    "Adapter",
    "AdapterError",
    "AssetMetadata",
    "AssetRef",
    "AuthFailed",
    "BadAsset",
    "Capabilities",
    "NotFound",
    "Page",
    "RateLimited",
    "Retryable",
    "Unavailable",
    "Unsupported",
]


class AdapterError(Exception):
    """Base of every error an adapter may raise; no transport error crosses it."""


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


@dataclass(frozen=True)
class Capabilities:
    incremental: bool = False
    deletions: bool = False
    renditions: bool = False
    annotate: bool = False
    webhooks: bool = False


@dataclass(frozen=True)
class AssetMetadata:
    """The mandatory metadata every asset should carry, mapped to common fields."""

    location: str | None = None
    date: str | None = None
    department: str | None = None

    @property
    def missing(self) -> list[str]:
        return [name for name in ("location", "date", "department") if not getattr(self, name)]


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


CursorT = TypeVar("CursorT", bound=BaseModel)


@dataclass(frozen=True)
class Page(Generic[CursorT]):
    items: list[AssetRef]
    cursor: CursorT | None  # resume point after this page; None when listing is over
    complete: bool  # True on the last page of a full listing


class Adapter(ABC, Generic[CursorT]):
    kind: ClassVar[str]
    settings_model: ClassVar[type[BaseSettings]]
    cursor_model: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities] = Capabilities()

    @abstractmethod
    def list_assets(self, cursor: CursorT | None) -> Page[CursorT]: ...

    @abstractmethod
    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        """The smallest aspect-preserving rendition with short side >= min_side;
        the original when none exists. Never a square-cropped thumbnail."""

    def fetch_original(self, asset: AssetRef) -> bytes:
        return self.fetch(asset, min_side=0)

    def local_path(self, asset: AssetRef) -> str | None:
        """A file this machine can read for the asset, when there is one: the
        engine's workers then read it themselves instead of being sent its bytes."""
        return None

    def iter_pages(self, cursor: CursorT | None = None) -> Iterator[Page[CursorT]]:
        seen: set[str] = set()
        while True:
            page = self.list_assets(cursor)
            yield page
            if page.cursor is None or page.complete:
                return
            token = page.cursor.model_dump_json()
            if token in seen:  # a paginator that repeats would loop forever
                raise Unavailable(f"{self.kind}: listing repeated cursor {token}")
            seen.add(token)
            cursor = page.cursor

    def annotate(self, asset: AssetRef, marks: dict[str, Any]) -> None:
        raise Unsupported(f"{self.kind} cannot store marks")

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> list[str]:
        raise Unsupported(f"{self.kind} does not send webhooks")
