"""`public_base_url` on the object stores and WebDAV: the link is the base
followed by the asset's path under the unit's prefix or base_url, each
segment percent-encoded; unset, the asset's own address. (Folders are tested
through the CLI in tests/entry/test_canonical_link.py.) Building the adapters
contacts nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from adapters.azure_blob import AzureBlob, AzureBlobSettings
from adapters.base import Adapter, AssetRef
from adapters.s3 import S3, S3Settings
from adapters.webdav import WebDav, WebDavSettings


def ref(asset_id: str) -> AssetRef:
    return AssetRef(id=asset_id, version="1", url="https://store.example/own-address")


def s3(**link: str) -> S3:
    return S3(
        S3Settings(
            bucket="kuvat",
            prefix="arkisto/",
            region="eu-north-1",
            access_key_id="key-id",
            secret_access_key="secret",
            **link,
        )
    )


def azure(**link: str) -> AzureBlob:
    return AzureBlob(
        AzureBlobSettings(
            base_url="http://127.0.0.1:10000/devstoreaccount1/",
            container="kuvat",
            prefix="arkisto/",
            **link,
        )
    )


def webdav(**link: str) -> WebDav:
    return WebDav(WebDavSettings(base_url="http://127.0.0.1:8/dav/", **link))


@pytest.mark.parametrize("build", [s3, azure, webdav], ids=["s3", "azure_blob", "webdav"])
def test_public_base_url_links_the_path_under_the_unit(build: Callable[..., Adapter[Any]]) -> None:
    asset_id = "Töölö kesä/kello #2 ?50%.jpg"
    if build is not webdav:
        asset_id = "arkisto/" + asset_id
    adapter = build(public_base_url="https://kuvat.hel.fi/julkiset")
    assert adapter.link(ref(asset_id)) == (
        "https://kuvat.hel.fi/julkiset/T%C3%B6%C3%B6l%C3%B6%20kes%C3%A4/kello%20%232%20%3F50%25.jpg"
    )
    assert build().link(ref(asset_id)) == "https://store.example/own-address"
