"""The folder adapter's metadata: what a share has is its folders and times."""

from __future__ import annotations

import shutil
from pathlib import Path

from adapters.base import MetadataMapping
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
