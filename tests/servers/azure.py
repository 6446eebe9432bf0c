"""Azurite, Microsoft's Azure Storage emulator (the npm package `azurite`,
installed by tests/servers/install-node.sh into .damdup/node), serving Blob
Storage on 127.0.0.1 behind a FaultProxy, for the `azure_blob` adapter.

Only the blob service runs, on a port the system picks, with its data in a
temporary folder removed on close and telemetry off. Content is changed
through the SDK straight to Azurite (not through the proxy), with the
emulator's well-known development account `devstoreaccount1` and its
published key: a public test value, not a secret
(https://learn.microsoft.com/azure/storage/common/storage-use-azurite#well-known-storage-account-and-key).
Azurite supports blob index tags since 3.17 (Set/Get Blob Tags, x-ms-tags on
upload) and keeps a blob's ETag when its tags change, as Azure does.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from adapters.azure_blob import AzureBlob, AzureBlobSettings
from adapters.base import Adapter, Marks
from tests.contract.harness import Harness
from tests.servers.common import image_size
from tests.servers.faults import FaultProxy

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "AzureHarness", "Azurite"]

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "tests" / "servers" / "install-node.sh"
AZURITE_BLOB = ROOT / ".damdup" / "node" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
CONTAINER = "kuvapankki"
PREFIX = "kuvat/"
LISTENING = re.compile(rb"listens on http://127\.0\.0\.1:(\d+)")


class ServerError(RuntimeError):
    pass


class Azurite:
    """One azurite-blob process on 127.0.0.1 with a temporary workspace."""

    def __init__(self) -> None:
        self.workspace: Path | None = None
        self.url = ""  # http://127.0.0.1:<port>/devstoreaccount1
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> str:
        if not AZURITE_BLOB.exists():
            done = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=600)
            if done.returncode != 0 or not AZURITE_BLOB.exists():
                raise ServerError(f"cannot install Azurite ({INSTALL}):\n{done.stderr}")
        atexit.register(self.stop)
        self.workspace = Path(tempfile.mkdtemp(prefix="damdup-azurite-"))
        self._process = subprocess.Popen(
            [
                str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", "0",
                "--location", str(self.workspace), "--disableTelemetry",
                # Newer SDKs send service versions this Azurite has not heard of.
                "--skipApiVersionCheck", "--silent",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert self._process.stdout is not None
        found: list[int] = []
        reader = threading.Thread(
            target=_watch, args=(self._process.stdout, found), daemon=True, name="azurite-out"
        )
        reader.start()
        deadline = time.monotonic() + timeout_s
        while not found:
            if self._process.poll() is not None:
                raise ServerError(f"Azurite exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"Azurite did not listen within {timeout_s} s")
            time.sleep(0.05)
        self.port = found[0]
        self.url = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        return self.url

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None


def _watch(stream: IO[bytes], found: list[int]) -> None:
    """Reads Azurite's output to the end (a full pipe would stop it) and
    notes the port it says it listens on."""
    for line in stream:
        match = LISTENING.search(line)
        if match and not found:
            found.append(int(match.group(1)))


def read_tag_marks(tags: dict[str, str]) -> Marks:
    """damdup's marks as docs/adapters.md says they are stored: values as
    they are, or `b64:` + URL-safe base64 of UTF-8, continued in `<key>-2`,
    `<key>-3`, ... Written here from that description, apart from the
    adapter, so that the suite checks the stored form itself."""
    fields: dict[str, str | None] = {}
    for key in ("damdup-marks", "damdup-cluster", "damdup-canonical"):
        value, number = tags.get(key, ""), 2
        while f"{key}-{number}" in tags:
            value += tags[f"{key}-{number}"]
            number += 1
        if value.startswith("b64:"):  # URL-safe base64 without its `=` padding
            body = value[4:]
            value = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
        fields[key] = value
    return Marks.from_fields(fields)


class AzureHarness(Harness):
    """Each added image is a blob under `kuvat/` with its content type and
    the common metadata as blob metadata, next to a text file the adapter
    must skip; a blob outside the prefix is there too."""

    kind = "azure_blob"
    listing_path = "comp=list"

    def __init__(self) -> None:
        self.azurite = Azurite()
        self.azurite.start()
        self.proxy = FaultProxy(self.azurite.url)
        service = BlobServiceClient(self.azurite.url, credential=ACCOUNT_KEY)
        self.container: ContainerClient = service.get_container_client(CONTAINER)
        self.container.create_container()

    @property
    def base_url(self) -> str:
        assert self.proxy is not None
        return f"{self.proxy.url}{ACCOUNT}/"

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "container": CONTAINER,
            "prefix": PREFIX,
            "account_key": ACCOUNT_KEY,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return AzureBlob(AzureBlobSettings(**self.settings(**overrides)))

    def bad_credentials(self) -> dict[str, Any] | None:
        # A well-formed key of the right length that is not the account's.
        return {"account_key": base64.b64encode(b"not the key of devstoreaccount1" * 2).decode()}

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        _, _, mime = image_size(data)
        blob_name = PREFIX + name
        self.container.upload_blob(
            blob_name,
            data,
            overwrite=True,
            content_settings=ContentSettings(content_type=mime),
            metadata=dict(metadata or {}),
        )
        self.container.upload_blob(
            f"{PREFIX}{name}.txt",
            b"kuvaaja: Helsingin kaupunginmuseo\n",
            overwrite=True,
            content_settings=ContentSettings(content_type="text/plain"),
        )
        self.container.upload_blob(
            f"muut/{name}", data, overwrite=True, content_settings=ContentSettings(mime)
        )
        return blob_name

    def touch(self, asset_id: str) -> None:
        blob = self.container.get_blob_client(asset_id)
        metadata = dict(blob.get_blob_properties().metadata)
        metadata["muokattu"] = str(time.time_ns())
        blob.set_blob_metadata(metadata)  # a new ETag and Last-Modified

    def remove(self, asset_id: str) -> None:
        self.container.delete_blob(asset_id)

    def reset(self) -> None:
        for name in list(self.container.list_blob_names()):
            with contextlib.suppress(ResourceNotFoundError):
                self.container.delete_blob(name)
        assert self.proxy is not None
        self.proxy.clear()

    # -- marks -------------------------------------------------------------

    def stored_marks(self, asset_id: str) -> Marks:
        return read_tag_marks(self.container.get_blob_client(asset_id).get_blob_tags())

    def set_foreign(self, asset_id: str) -> None:
        blob = self.container.get_blob_client(asset_id)
        tags = dict(blob.get_blob_tags())
        tags.update({"projekti": "Senaatintori 2024", "lupa": "CC BY 4.0"})
        blob.set_blob_tags(tags)
        metadata = dict(blob.get_blob_properties().metadata)
        metadata["kuvaaja"] = "Helsingin kaupunginmuseo"
        blob.set_blob_metadata(metadata)

    def foreign_state(self, asset_id: str) -> Any:
        blob = self.container.get_blob_client(asset_id)
        properties = blob.get_blob_properties()
        tags = blob.get_blob_tags()
        return {
            "tags": {key: value for key, value in tags.items() if not key.startswith("damdup-")},
            "metadata": dict(properties.metadata),
            "etag": properties.etag,
            "last_modified": properties.last_modified,
            "content_type": properties.content_settings.content_type,
            "size": properties.size,
            "sha256": hashlib.sha256(blob.download_blob().readall()).hexdigest(),
        }

    def close(self) -> None:
        super().close()
        self.azurite.stop()
