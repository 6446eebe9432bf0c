"""A byte copy is `exact` wherever its fingerprint came from: the originals
behind a candidate pair are compared, and read only when that can pay."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from adapters.base import Adapter, AssetRef, Page, Rendition, choose_rendition
from adapters.filesystem import Filesystem, FilesystemSettings
from connector.core.index import SQLiteStore
from connector.core.settings import Settings
from connector.engine.originals import Original, same_bytes
from connector.engine.scan import sync_and_match
from tests.servers.common import photo_paths, upscaled

PHOTOS = photo_paths(variant="original")


class Nothing(BaseModel):
    pass


class RenditionSettings(BaseSettings):
    checksums: bool = False
    quality: int = 85  # of the renditions it makes


class RenditionPlatform(Adapter[Nothing]):
    """A platform that serves a 768 px rendition of each upload (as WordPress
    does) and reports the original's size and, optionally, its MD5. It counts
    the originals it is asked for."""

    kind = "renditions"
    settings_model: ClassVar[type[BaseSettings]] = RenditionSettings
    cursor_model: ClassVar[type[BaseModel]] = Nothing

    def __init__(self, settings: RenditionSettings | None = None) -> None:
        super().__init__(settings or RenditionSettings())
        self.files: dict[str, bytes] = {}
        self.originals_fetched: Counter[str] = Counter()
        self.original_bytes = 0

    def add(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def list_assets(self, cursor: Nothing | None) -> Page[Nothing]:
        refs = []
        for name, data in sorted(self.files.items()):
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            refs.append(
                AssetRef(
                    id=name,
                    version=hashlib.sha256(data).hexdigest(),
                    url=f"https://media.example/{name}",
                    size_bytes=len(data),
                    content_hash=(
                        f"md5:{hashlib.md5(data).hexdigest()}" if self.settings.checksums else None
                    ),
                    original_url=f"https://media.example/{name}",
                    width=width,
                    height=height,
                    renditions=(Rendition(f"rendition:{name}", 768, round(768 * height / width)),),
                )
            )
        return Page(items=refs, cursor=None, complete=True)

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        data = self.files[asset.id]
        if choose_rendition(asset, min_side) is not None:
            with Image.open(io.BytesIO(data)) as image:
                small = image.convert("RGB").resize(
                    (768, round(768 * image.height / image.width)), Image.Resampling.LANCZOS
                )
            out = io.BytesIO()
            small.save(out, "JPEG", quality=self.settings.quality)
            return out.getvalue()
        self.originals_fetched[asset.id] += 1
        self.original_bytes += len(data)
        return data


@pytest.fixture
def big() -> list[bytes]:
    return [upscaled(path, 1600) for path in PHOTOS[:3]]


def with_comment(data: bytes) -> bytes:
    """The same JPEG with a comment segment added: other bytes, same pixels."""
    return data[:2] + b"\xff\xfe\x00\x0fdamdup-edited" + data[2:]


def tiers(store: SQLiteStore) -> dict[frozenset[str], str | None]:
    units = {}
    for asset in store.live_assets():
        units.setdefault(asset.sha256, []).append(asset.key)
    out = {}
    for pair in store.pairs():
        for a in units.get(pair.sha_a, []):
            for b in units.get(pair.sha_b, []):
                out[frozenset((a, b))] = pair.tier
    return out


def scan(store: SQLiteStore, adapters: dict[str, Adapter[Any]]) -> Any:
    return sync_and_match(store, adapters, Settings(workers=1, units_at_once=1))


def test_a_byte_copy_hashed_from_a_rendition_is_exact(tmp_path: Path, big: list[bytes]) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "copy.jpg").write_bytes(big[0])
    (folder / "resized.jpg").write_bytes(upscaled(PHOTOS[1], 1200))
    web = RenditionPlatform()
    web.add("photo.jpg", big[0])  # the folder's copy, byte for byte
    web.add("other.jpg", big[1])  # the folder's resized.jpg at another size
    web.add("unrelated.jpg", big[2])  # a candidate of nothing
    store = SQLiteStore(tmp_path / "index.sqlite")
    adapters: dict[str, Adapter[Any]] = {
        "web": web,
        "folder": Filesystem(FilesystemSettings(root=str(folder))),
    }
    result = scan(store, adapters)
    found = tiers(store)
    assert found[frozenset(("web:photo.jpg", "folder:copy.jpg"))] == "exact"
    # Sizes differ: not the same bytes, and nothing was fetched to learn it.
    assert found[frozenset(("web:other.jpg", "folder:resized.jpg"))] == "near_identical"
    # Only the candidate's original was read, once: not the resized one's
    # (its size rules it out), not the unrelated one's.
    assert web.originals_fetched == Counter({"photo.jpg": 1})
    assert result.match.originals_read == 1
    assert result.match.originals_bytes == web.original_bytes == len(big[0])
    pair = next(p for p in store.pairs() if p.tier == "exact")
    assert {side["known_from"] for side in pair.evidence["originals"].values()} == {
        "read to settle a pair",
        "the fetched bytes were the original",
    }

    # A second platform with the same photo: the first one's original is
    # known from the index and never fetched again.
    second = RenditionPlatform()
    second.add("again.jpg", big[0])
    adapters["second"] = second
    scan(store, adapters)
    found = tiers(store)
    assert found[frozenset(("second:again.jpg", "folder:copy.jpg"))] == "exact"
    assert web.originals_fetched == Counter({"photo.jpg": 1})
    # The two renditions are the same bytes (one pipeline): one fingerprint,
    # so nothing of `second` needed reading either.
    assert second.originals_fetched == Counter()
    store.close()


def test_checksums_settle_a_pair_without_a_fetch(tmp_path: Path, big: list[bytes]) -> None:
    """Two platforms that report MD5s, each with its own renditions (other
    fingerprints): equal sizes and MD5s are the same bytes, with no original
    fetched."""
    one = RenditionPlatform(RenditionSettings(checksums=True, quality=85))
    two = RenditionPlatform(RenditionSettings(checksums=True, quality=80))
    one.add("a.jpg", big[0])
    two.add("b.jpg", big[0])
    store = SQLiteStore(tmp_path / "index.sqlite")
    result = scan(store, {"one": one, "two": two})
    assert tiers(store) == {frozenset(("one:a.jpg", "two:b.jpg")): "exact"}
    assert one.originals_fetched == two.originals_fetched == Counter()
    assert result.match.originals_read == 0
    store.close()


def test_the_same_pixels_behind_a_rendition_are_same_pixels(
    tmp_path: Path, big: list[bytes]
) -> None:
    """Sizes differ, so the bytes do; the originals' width and height agree,
    so their pixel digests are worth their fetch."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "annotated.jpg").write_bytes(with_comment(big[0]))
    web = RenditionPlatform()
    web.add("photo.jpg", big[0])
    store = SQLiteStore(tmp_path / "index.sqlite")
    result = scan(store, {"web": web, "folder": Filesystem(FilesystemSettings(root=str(folder)))})
    assert tiers(store) == {frozenset(("web:photo.jpg", "folder:annotated.jpg")): "same_pixels"}
    assert web.originals_fetched == Counter({"photo.jpg": 1})
    assert result.match.pixel_digests == 2
    store.close()


def test_same_bytes_from_what_is_known() -> None:
    md5 = {"md5": "0" * 32}
    assert same_bytes(Original(sha256="a"), Original(sha256="a")) is True
    assert same_bytes(Original(sha256="a"), Original(sha256="b")) is False
    assert same_bytes(Original(size_bytes=10), Original(size_bytes=11)) is False
    assert same_bytes(Original(size_bytes=10), Original(size_bytes=10)) is None
    assert same_bytes(Original(size_bytes=10), Original()) is None
    assert same_bytes(
        Original(size_bytes=10, checksums=md5), Original(size_bytes=10, checksums=md5)
    )
    assert not same_bytes(
        Original(size_bytes=10, checksums=md5),
        Original(size_bytes=10, checksums={"md5": "1" * 32}),
    )
    quick = {"quickxor": "ab" * 20}
    # A QuickXorHash tells bytes apart but is no proof they are the same.
    assert (
        same_bytes(
            Original(size_bytes=10, checksums=quick), Original(size_bytes=10, checksums=quick)
        )
        is None
    )
    assert same_bytes(Original(sha256="a", conflict=True), Original(sha256="a")) is False


def test_each_digest_is_described_once() -> None:
    """A match asks about both sides of every pair, many times over: what is
    known already is neither looked up again nor described anew, and a mix of
    known and new digests looks up only the new ones."""
    from connector.core.fingerprint import fingerprint_bytes
    from connector.engine.originals import Originals

    image = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(image, "PNG")
    fingerprint = fingerprint_bytes(image.getvalue())
    asked: list[list[str]] = []

    class Store:
        def live_assets_with(self, sha256s: list[str]) -> list[Any]:
            asked.append(list(sha256s))
            return []

        def originals(self, assets: list[Any]) -> dict[str, Any]:
            return {}

    def reader(sha256: str) -> bytes | None:
        return None

    originals = Originals(Store(), reader, lambda sha: fingerprint)  # type: ignore[arg-type]
    originals.prepare(["b", "a", "b"])
    first = originals.original("a")
    assert asked == [["a", "b"]]
    originals.prepare(["c", "b", "a"])
    assert asked == [["a", "b"], ["c"]]
    for _ in range(3):
        assert originals.original("a") is first
        originals.same_shape(("a", "c"))
    assert asked == [["a", "b"], ["c"]]
    assert (originals.original("c").width, originals.original("c").height) == (64, 48)

    class NoCopies(dict[str, Any]):
        """`known` grows to every digest of a match: a copy per question made
        the match quadratic in its pairs."""

        def __iter__(self) -> Any:
            raise AssertionError("the known originals were copied")

    originals.known = NoCopies(originals.known)
    originals.prepare(["a", "d"])
    assert asked[-1] == ["d"]
    assert originals.original("d") is originals.known["d"]
