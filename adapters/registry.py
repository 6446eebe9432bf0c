"""Every adapter by its kind, imported only when a unit uses it."""

from __future__ import annotations

import importlib
from typing import Any

from adapters.base import Adapter

__all__ = ["ADAPTERS", "UnknownPlatform", "adapter_class"]

ADAPTERS = {
    "azure_blob": "adapters.azure_blob:AzureBlob",
    "ckan": "adapters.ckan:Ckan",
    "drupal": "adapters.drupal:Drupal",
    "filesystem": "adapters.filesystem:Filesystem",
    "finna": "adapters.finna:Finna",
    "linked_events": "adapters.linked_events:LinkedEvents",
    "nextcloud": "adapters.nextcloud:Nextcloud",
    "resourcespace": "adapters.resourcespace:ResourceSpace",
    "s3": "adapters.s3:S3",
    "sharepoint": "adapters.sharepoint:SharePoint",
    "webdav": "adapters.webdav:WebDav",
    "wordpress": "adapters.wordpress:WordPress",
}


class UnknownPlatform(KeyError):
    def __str__(self) -> str:
        return f"unknown platform {self.args[0]!r}; known: {', '.join(sorted(ADAPTERS))}"


def adapter_class(kind: str) -> type[Adapter[Any]]:
    if kind not in ADAPTERS:
        raise UnknownPlatform(kind)
    module, name = ADAPTERS[kind].split(":")
    cls: type[Adapter[Any]] = getattr(importlib.import_module(module), name)
    return cls
