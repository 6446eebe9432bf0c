"""The folder adapter's metadata: what a share has is its folders and times."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AssetRef, BadAsset, MetadataMapping, NotFound, Unavailable
from adapters.filesystem import Filesystem, FilesystemSettings
from tests.servers.common import photo_paths


def test_folder_and_literal_mapping(tmp_path: Path) -> None:
    place = tmp_path / "Senaatintori"
    place.mkdir()
    photo = photo_paths(variant="original")[0]
    shutil.copy(photo, place / "kuva.jpg")
    shutil.copy(photo, tmp_path / "irrallinen.jpg")
    mapping = MetadataMapping(location="folder", date="modified", department="=Viestintä")
    adapter = Filesystem(FilesystemSettings(root=tmp_path, metadata=mapping))
    refs = {ref.id: ref for ref in adapter.list_assets(None).items}
    filed = refs["Senaatintori/kuva.jpg"].metadata
    assert filed.location == "Senaatintori" and filed.department == "Viestintä"
    assert filed.date == refs["Senaatintori/kuva.jpg"].modified and filed.missing == []
    loose = refs["irrallinen.jpg"].metadata
    assert loose.location is None and loose.missing == ["location"]


def test_no_mapping_means_no_metadata(tmp_path: Path) -> None:
    shutil.copy(photo_paths(variant="original")[0], tmp_path / "kuva.jpg")
    [ref] = Filesystem(FilesystemSettings(root=tmp_path)).list_assets(None).items
    assert ref.metadata.missing == ["location", "date", "department"]


# -- nothing outside the root -------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> Filesystem:
    """A root with a photo, a link to it, and links out: a linked folder and a
    linked file, both leading to a photo outside the root."""
    photo = photo_paths(variant="original")[0]
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(photo, root / "a.jpg")
    shutil.copy(photo, outside / "secret.jpg")
    (root / "sisalla.jpg").symlink_to(root / "a.jpg")
    (root / "kansio").symlink_to(outside)
    (root / "sub" / "kansio").symlink_to("../sub")  # a linked folder inside the root
    (root / "ulos.jpg").symlink_to(outside / "secret.jpg")
    return Filesystem(FilesystemSettings(root=root))


OUT_OF_ROOT = [
    "kansio/secret.jpg",  # through a linked folder
    "ulos.jpg",  # a linked file
    "../outside/secret.jpg",
    "sub/../../outside/secret.jpg",
    "sub/kansio/../a.jpg",
    "sub/kansio/kansio/../../a.jpg",
]


def test_listing_never_follows_a_linked_folder(linked: Filesystem) -> None:
    refs = {ref.id: ref for ref in linked.list_assets(None).items}
    assert sorted(refs) == ["a.jpg", "sisalla.jpg", "ulos.jpg"]
    assert refs["sisalla.jpg"].problem is None
    assert "outside" in (refs["ulos.jpg"].problem or "")


@pytest.mark.parametrize("asset_id", OUT_OF_ROOT)
def test_no_single_asset_call_reads_outside_the_root(linked: Filesystem, asset_id: str) -> None:
    ref = AssetRef(id=asset_id, version="1", url="")
    calls: dict[str, Callable[[], object]] = {
        "describe": lambda: linked.describe(asset_id),
        "exists": lambda: linked.exists(ref),
        "local_path": lambda: linked.local_path(ref),
        "fetch": lambda: linked.fetch(ref, min_side=0),
        "fetch_original": lambda: linked.fetch_original(ref),
        "fetch_url": lambda: linked.fetch_url((linked.root / asset_id).as_uri()),
    }
    for name, call in calls.items():
        with pytest.raises((NotFound, BadAsset)) as refused:
            call()
        reason = str(refused.value)
        assert "link" in reason or "not a path inside" in reason or "not in the folder" in reason, (
            f"{name}: {reason}"
        )


def test_what_a_listing_shows_can_be_asked_for_one_by_one(linked: Filesystem) -> None:
    for ref in linked.list_assets(None).items:
        if ref.problem is None:
            assert linked.describe(ref.id) == ref
            assert linked.exists(ref) is True
            data = linked.fetch(ref, min_side=0)
            assert linked.fetch_url((linked.root / ref.id).as_uri()) == data
            assert Path(linked.local_path(ref) or "").read_bytes() == data


def test_only_file_addresses_in_the_folder_are_fetched(linked: Filesystem, tmp_path: Path) -> None:
    for url in (
        "http://127.0.0.1:1/a.jpg",
        (tmp_path / "outside" / "secret.jpg").as_uri(),
        (linked.root / "a.jpg").as_uri() + "?x=1",
    ):
        with pytest.raises(BadAsset):
            linked.fetch_url(url)


def test_a_name_that_is_not_utf8_has_a_readable_id_that_leads_back(tmp_path: Path) -> None:
    photo = photo_paths(variant="original")[0]
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \\ kuva.jpg"
    shutil.copy(photo, raw)
    shutil.copy(photo, tmp_path / "caf\\xe9 \\\\ kuva.jpg")  # its readable form, really named so
    adapter = Filesystem(FilesystemSettings(root=tmp_path))
    refs = {ref.id: ref for ref in adapter.list_assets(None).items}
    # The file really named with the escapes gets its backslashes escaped too.
    assert sorted(refs) == ["caf\\\\xe9 \\\\\\\\ kuva.jpg", "caf\\xe9 \\\\ kuva.jpg"]
    ref = refs["caf\\xe9 \\\\ kuva.jpg"]
    ref.id.encode("utf-8")  # storable, printable
    assert adapter.describe(ref.id) == ref
    assert os.fsencode(adapter.local_path(ref) or "") == raw
    assert adapter.fetch(ref, min_side=0) == Path(photo).read_bytes()
    typed = refs["caf\\\\xe9 \\\\\\\\ kuva.jpg"]
    assert adapter.describe(typed.id) == typed
    assert adapter.local_path(typed) == str(tmp_path / "caf\\xe9 \\\\ kuva.jpg")
    assert adapter.relative_path(typed) == "caf\\xe9 \\\\ kuva.jpg"
    # An escape no listing writes (`\\x41` for "A") names nothing.
    shutil.copy(photo, tmp_path / "A.jpg")
    with pytest.raises(NotFound):
        adapter.describe("\\x41.jpg")
    assert adapter.describe("A.jpg").id == "A.jpg"


def test_a_folder_that_cannot_be_read_is_a_problem_and_unlisted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = photo_paths(variant="original")[0]
    for path in ("a.jpg", "jaettu/b.jpg", "poistettu/c.jpg"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        shutil.copy(photo, tmp_path / path)
    real = os.scandir
    refused = {
        str(tmp_path / "jaettu"): errno.EIO,  # a share that stopped answering
        str(tmp_path / "poistettu"): errno.ENOENT,  # removed after its parent was read
    }

    def scandir(path: Any = ".") -> Any:
        code = refused.get(os.fsdecode(path))
        if code is not None:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    page = Filesystem(FilesystemSettings(root=tmp_path)).list_assets(None)
    assert [ref.id for ref in page.items] == ["a.jpg", "jaettu/"]
    assert page.unlisted == ["jaettu"]
    problem = page.items[1].problem or ""
    assert problem.startswith("folder cannot be read (Input/output error)"), problem

    refused[str(tmp_path)] = errno.EACCES
    with pytest.raises(Unavailable, match="cannot be read: permission denied"):
        Filesystem(FilesystemSettings(root=tmp_path)).list_assets(None)
