"""What the contract suite needs from each platform's test server.

A harness owns one server (the real one, or an emulator from tests/servers/)
behind a `FaultProxy`, and makes adapters that talk to it. Content is changed
through the platform's own API where the server is real, and through the
emulator's library where it is ours.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from adapters.base import Adapter, Marks
from tests.servers.common import Emulator
from tests.servers.faults import FaultProxy, Forwarded

# Methods that read; any other request the proxy forwards changes something.
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PROPFIND", "SEARCH", "REPORT"})

# Every adapter kind and its test server's harness, "module:Class"; and, as
# "<kind>-real", the platform's real server where the kind's own harness is an
# emulator (its source in shared/platforms/: the tests skip without it).
HARNESSES = {
    "azure_blob": "tests.servers.azure:AzureHarness",
    "ckan": "tests.servers.ckan:CkanHarness",
    "drupal": "tests.servers.drupal:DrupalHarness",
    "filesystem": "tests.contract.filesystem:FilesystemHarness",
    "finna": "tests.servers.finna:FinnaHarness",
    "linked_events": "tests.servers.linked_events:LinkedEventsHarness",
    "linked_events-real": "tests.servers.linked_events_real:LinkedEventsRealHarness",
    "nextcloud": "tests.servers.nextcloud:NextcloudHarness",
    "resourcespace": "tests.servers.resourcespace:ResourceSpaceHarness",
    # The real ResourceSpace from its makers' source; skips without it.
    "resourcespace-real": "tests.servers.resourcespace_real:ResourceSpaceRealHarness",
    "s3": "tests.servers.s3:S3Harness",
    "sharepoint": "tests.servers.sharepoint:SharePointHarness",
    "webdav": "tests.servers.webdav:WebDavHarness",
    "wordpress": "tests.servers.wordpress:WordPressHarness",
}


def harness_kind(harness_id: str) -> str:
    """The adapter kind a harness id is for ("linked_events-real": linked_events)."""
    return harness_id.partition("-")[0]


def start_harness(kind: str) -> Harness:
    """Start the server of one adapter kind (and its fault proxy)."""
    module, name = HARNESSES[kind].split(":")
    harness: Harness = getattr(importlib.import_module(module), name)()
    return harness


class Harness(ABC):
    kind: ClassVar[str]
    # None for adapters that speak no HTTP (folders): the fault tests skip them.
    proxy: FaultProxy | None = None
    # Listing paths, to aim faults at the listing rather than at file downloads.
    listing_path: ClassVar[str] = ""
    # False where the platform has no fields for location, date, department.
    metadata: ClassVar[bool] = True

    @abstractmethod
    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The unit's settings for this server, as a config file would give
        them (secrets included: the demo moves those into the environment)."""

    @abstractmethod
    def adapter(self, **overrides: Any) -> Adapter[Any]:
        """A fresh adapter for this server; `overrides` are settings such as
        page_size=2, timeout_s=1 or a wrong credential."""

    @abstractmethod
    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        """Upload an image; `metadata` uses the common names location, date and
        department, placed where the adapter's default mapping reads them.
        Returns the id the adapter will list."""

    @abstractmethod
    def touch(self, asset_id: str) -> None:
        """Change the asset's record so that the platform counts it modified."""

    @abstractmethod
    def remove(self, asset_id: str) -> None:
        """Delete upstream (the harness may; damdup never does)."""

    @abstractmethod
    def reset(self) -> None:
        """An empty library, faults cleared."""

    def bad_credentials(self) -> dict[str, Any] | None:
        """Settings overrides that the server refuses with 401/403, or None
        when the platform can be listed without credentials."""
        return None

    # -- marks (adapters whose Capabilities say annotate) ------------------

    def stored_marks(self, asset_id: str) -> Marks:
        """damdup's marks on the asset, read through the platform's own API
        or storage (never through the adapter under test)."""
        raise NotImplementedError(f"{self.kind}: the harness cannot read marks")

    def set_foreign(self, asset_id: str) -> None:
        """Give the asset a value that is not damdup's (a caption, someone
        else's tag or property), through the platform's own API, so that the
        suite can check damdup leaves it alone."""
        raise NotImplementedError(f"{self.kind}: the harness cannot set foreign fields")

    def foreign_state(self, asset_id: str) -> Any:
        """Everything about the asset that damdup must never change (its
        other fields, tags, properties and bytes), read through the
        platform's own API; compared before and after annotating."""
        raise NotImplementedError(f"{self.kind}: the harness cannot read foreign fields")

    def changing(self, entry: Forwarded) -> bool:
        """Whether a request the proxy forwarded changes something upstream.
        Platforms whose API changes things through GET (ResourceSpace's
        function calls) override this."""
        return entry.method not in READING_METHODS

    def complaints(self) -> list[str]:
        """What the server itself reported as wrong over the whole session
        (a real server's own errors, a library it lacked); checked once the
        session's tests are done."""
        return []

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()


class EmulatorHarness(Harness):
    """A harness for one of our emulators: content goes straight into its
    library. Subclasses say how common metadata names map to the platform's
    fields (`place_metadata`) and how to build an adapter (`adapter`)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.emulator.start()
        self.proxy = FaultProxy(self.emulator.base_url)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def place_metadata(self, metadata: dict[str, str]) -> dict[str, Any]:
        return dict(metadata)

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        return self.emulator.library.add(name, data, self.place_metadata(metadata or {})).id

    def touch(self, asset_id: str) -> None:
        self.emulator.library.touch(asset_id)

    def remove(self, asset_id: str) -> None:
        self.emulator.library.remove(asset_id)

    def reset(self) -> None:
        self.emulator.library.reset()
        assert self.proxy is not None
        self.proxy.clear()

    def close(self) -> None:
        super().close()
        self.emulator.stop()
