"""What a full listing may retire, whatever the platform: nothing under a
folder it could not read, and nothing at all when it found nothing, unless
the run confirms that the unit is empty."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from adapters.base import Adapter, AssetRef, Capabilities, Page
from connector.core.index import SQLiteStore
from connector.engine.pool import Limits, WorkerPool
from connector.engine.sync import EmptyListing, SyncStats, sync_unit
from tests.conftest import PHOTOS

PHOTO_FILES = sorted((PHOTOS / "kuva").glob("*.jpg"))[:3]


class Nothing(BaseModel):
    pass


class Shelf(Adapter[Nothing]):
    """A platform of files by path, listed whole on one page; it answers
    whether one asset is still there as its listing would."""

    kind = "shelf"
    settings_model: ClassVar[type[BaseSettings]] = BaseSettings
    cursor_model: ClassVar[type[BaseModel]] = Nothing
    capabilities = Capabilities(exists=True)

    def __init__(self) -> None:
        super().__init__(BaseSettings())
        self.files: dict[str, bytes] = {}
        self.unlisted: list[str] = []

    def refs(self, paths: list[str]) -> list[AssetRef]:
        return [
            AssetRef(
                id=path,
                version=hashlib.sha256(self.files[path]).hexdigest(),
                url=f"https://shelf.example/{path}",
                size_bytes=len(self.files[path]),
            )
            for path in paths
        ]

    def list_assets(self, cursor: Nothing | None) -> Page[Nothing]:
        items = self.refs(sorted(self.files))
        return Page(items=items, cursor=None, complete=True, unlisted=list(self.unlisted))

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        return self.files[asset.id]

    def exists(self, asset: AssetRef) -> bool:
        return asset.id in self.files


class Offset(BaseModel):
    page: int


class PagedShelf(Shelf):
    """The same, paged: `pages` holds the paths of each page, in order."""

    cursor_model: ClassVar[type[BaseModel]] = Offset

    def __init__(self) -> None:
        super().__init__()
        self.pages: list[list[str]] = []

    def list_assets(self, cursor: Any) -> Page[Any]:
        number = cursor.page if cursor is not None else 0
        last = number + 1 >= len(self.pages)
        items = self.refs(self.pages[number]) if self.pages else []
        return Page(items=items, cursor=None if last else Offset(page=number + 1), complete=last)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    index = SQLiteStore(tmp_path / "i.sqlite")
    yield index
    index.close()


def sync(store: SQLiteStore, adapter: Shelf, **options: Any) -> SyncStats:
    with WorkerPool(1, Limits(seconds=60)) as pool:
        return sync_unit(
            store, adapter, "shelf", pool, max_pixels=100_000_000, max_bytes=64 * 2**20,
            **options,
        )  # fmt: skip


def live(store: SQLiteStore) -> set[str]:
    return {row.asset_id for row in store.live_assets("shelf")}


def test_a_folder_the_listing_could_not_read_keeps_its_assets(store: SQLiteStore) -> None:
    shelf = Shelf()
    paths = ["a.jpg", "tapahtumat/c.jpg", "tapahtumat/kesä/d.jpg"]
    for path, photo in zip(paths, PHOTO_FILES, strict=True):
        shelf.files[path] = photo.read_bytes()
    assert sync(store, shelf).fingerprinted == 3

    # The folder did not answer: its files are missing from the listing, and
    # asked one by one the platform cannot find them either.
    for path in paths[1:]:
        del shelf.files[path]
    shelf.unlisted = ["tapahtumat"]
    stats = sync(store, shelf)
    assert stats.complete and stats.retired == 0 and stats.unlisted == 1
    assert live(store) == set(paths)

    shelf.unlisted = []  # read again, and really empty
    assert sync(store, shelf).retired == 2
    assert live(store) == {"a.jpg"}


def test_a_folder_named_like_another_keeps_only_its_own(store: SQLiteStore) -> None:
    shelf = Shelf()
    for path, photo in zip(["a.jpg", "kesä/b.jpg", "kesä2/c.jpg"], PHOTO_FILES, strict=True):
        shelf.files[path] = photo.read_bytes()
    sync(store, shelf)
    del shelf.files["kesä/b.jpg"]
    del shelf.files["kesä2/c.jpg"]
    shelf.unlisted = ["kesä"]
    assert sync(store, shelf).retired == 1
    assert live(store) == {"a.jpg", "kesä/b.jpg"}


def test_a_listing_that_finds_nothing_retires_nothing_unless_confirmed(
    store: SQLiteStore,
) -> None:
    shelf = Shelf()
    for path, photo in zip(["a.jpg", "b.jpg", "c.jpg"], PHOTO_FILES, strict=True):
        shelf.files[path] = photo.read_bytes()
    sync(store, shelf)
    emptied = dict(shelf.files)
    shelf.files.clear()  # every answer now: nothing here
    with pytest.raises(EmptyListing, match=r"holds 3 live asset\(s\) of unit shelf.*--allow-empty"):
        sync(store, shelf)
    assert live(store) == {"a.jpg", "b.jpg", "c.jpg"}
    with pytest.raises(EmptyListing):
        sync(store, shelf, full=True)  # refused again: nothing was saved as done

    shelf.files = {"c.jpg": emptied["c.jpg"]}  # one found: the listing decides
    assert sync(store, shelf).retired == 2
    shelf.files.clear()
    assert sync(store, shelf, allow_empty=True).retired == 1
    assert live(store) == set()
    assert sync(store, shelf).retired == 0  # an empty index of the unit: nothing to guard


def test_a_resumed_listing_counts_the_pages_saved_before(store: SQLiteStore) -> None:
    shelf = PagedShelf()
    for path, photo in zip(["a.jpg", "b.jpg", "c.jpg"], PHOTO_FILES, strict=True):
        shelf.files[path] = photo.read_bytes()
    shelf.pages = [["a.jpg"], ["b.jpg", "c.jpg"]]
    sync(store, shelf)

    # Stopped after a first page that showed "a.jpg": the resumed listing's
    # last page is empty, but the listing as a whole found something.
    stop = threading.Event()
    stop.set()
    shelf.pages = [["a.jpg"], []]
    shelf.files = {"a.jpg": shelf.files["a.jpg"]}
    assert sync(store, shelf, stop=stop).stopped
    stats = sync(store, shelf)
    assert stats.resumed and stats.retired == 2
    assert live(store) == {"a.jpg"}

    # Stopped after an empty first page: resumed, the listing found nothing.
    shelf.pages = [[], []]
    assert sync(store, shelf, stop=stop).stopped
    with pytest.raises(EmptyListing, match="holds 1 live"):
        sync(store, shelf)
    assert live(store) == {"a.jpg"}
