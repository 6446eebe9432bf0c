"""A real WebDAV server for the tests: WsgiDAV (https://wsgidav.readthedocs.io/)
serving a temporary folder on 127.0.0.1, behind a `FaultProxy`.

WsgiDAV is configured as a unit's share would be
(https://wsgidav.readthedocs.io/en/latest/user_guide_configure.html):
`FilesystemProvider` over the folder at `/kuvat`, HTTP Basic only through its
`SimpleDomainController` (a test user; anyone else is answered 401), and its
in-memory `PropertyManager`, without which it keeps no dead properties and
refuses PROPPATCH. It runs on werkzeug's threaded server (WsgiDAV's own
cheroot is not installed), which passes every method, PROPFIND included, to
the application.

The harness reads and writes dead properties with its own PROPFIND and
PROPPATCH straight to WsgiDAV (never through the adapter nor the proxy), and
deletes with WsgiDAV's DELETE, which drops a file's properties with it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import requests
from werkzeug.serving import BaseWSGIServer, make_server
from wsgidav.wsgidav_app import WsgiDAVApp

from adapters.base import Adapter, Marks
from adapters.webdav import NAMESPACE, WebDav, WebDavSettings
from tests.contract.harness import Harness
from tests.servers.faults import FaultProxy

SHARE = "kuvat"
USER, PASSWORD = "damdup", "fake-webdav-password-for-tests"
# Someone else's dead properties, which damdup must leave as they are.
FOREIGN = {
    "{http://purl.org/dc/elements/1.1/}title": "Tuomiokirkko talvella",
    "{urn:x-helsinki:kuvapankki}kuvaaja": "Maija Meikäläinen",
}
# Contract assets go round these folders, so every listing walks a tree.
FOLDERS = ("", "tapahtumat/", "tapahtumat/2024/kevät/")


class WebDavServer:
    """WsgiDAV over a temporary folder on an ephemeral 127.0.0.1 port."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="damdup-webdav-"))
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        users = users if users is not None else {USER: PASSWORD}
        self.app = WsgiDAVApp(
            {
                "provider_mapping": {f"/{SHARE}": str(self.root)},
                "http_authenticator": {
                    "domain_controller": None,  # SimpleDomainController
                    "accept_basic": True,
                    "accept_digest": False,
                    "default_to_digest": False,
                },
                "simple_dc": {
                    "user_mapping": {
                        "*": {name: {"password": secret} for name, secret in users.items()}
                    }
                },
                "property_manager": True,
                "lock_storage": True,
                "verbose": 1,
                "logging": {"enable": False},
                "dir_browser": {"enable": False},
            }
        )
        # (method, path, Depth header, body) of every request WsgiDAV received.
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._record, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/"
        self.share_url = f"{self.base_url}{SHARE}/"
        self.session = requests.Session()
        self.session.auth = (USER, users.get(USER, PASSWORD))
        self.session.trust_env = False

    def _record(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        self.requests.append((method, path, environ.get("HTTP_DEPTH"), body))
        return self.app(environ, start_response)

    def url(self, path: str) -> str:
        return urljoin(self.share_url, quote(path))

    def put(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def delete(self, path: str) -> None:
        self.session.delete(self.url(path), timeout=10).raise_for_status()

    def dead_properties(self, path: str) -> dict[str, str]:
        """Every dead property of a file, read with WsgiDAV's own allprop
        PROPFIND (RFC 4918 §9.1: allprop includes dead properties)."""
        found: dict[str, str] = {}
        for prop in self._propfind(path).iter("{DAV:}prop"):
            for element in prop:
                if not element.tag.startswith("{DAV:}"):
                    found[element.tag] = element.text or ""
        return found

    def set_properties(self, path: str, values: dict[str, str]) -> None:
        update = ET.Element("{DAV:}propertyupdate")
        prop = ET.SubElement(ET.SubElement(update, "{DAV:}set"), "{DAV:}prop")
        for name, value in values.items():
            ET.SubElement(prop, name).text = value
        answer = self.session.request(
            "PROPPATCH",
            self.url(path),
            data=ET.tostring(update, encoding="utf-8"),
            headers={"Content-Type": "application/xml"},
            timeout=10,
        )
        assert answer.status_code == 207 and b"200 OK" in answer.content, answer.text

    def etag(self, path: str) -> str:
        return self._propfind(path).findtext(".//{DAV:}getetag") or ""

    def _propfind(self, path: str) -> ET.Element:
        """An allprop PROPFIND of one file (no body: RFC 4918 §9.1)."""
        answer = self.session.request(
            "PROPFIND", self.url(path), headers={"Depth": "0"}, timeout=10
        )
        answer.raise_for_status()
        return ET.fromstring(answer.content)

    def clear(self) -> None:
        for child in sorted(self.root.iterdir()):
            self.delete(child.name + ("/" if child.is_dir() else ""))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.session.close()
        shutil.rmtree(self.root, ignore_errors=True)


class WebDavHarness(Harness):
    kind = "webdav"
    metadata = False  # a share has no location, date or department fields
    listing_path = f"/{SHARE}/"  # PROPFIND and GET share their paths

    def __init__(self) -> None:
        self.server = WebDavServer()
        self.proxy = FaultProxy(self.server.base_url)
        self._added = 0

    def settings(self, **overrides: Any) -> dict[str, Any]:
        assert self.proxy is not None
        return {
            "base_url": f"{self.proxy.url}{SHARE}/",
            "username": USER,
            "password": PASSWORD,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return WebDav(WebDavSettings(**self.settings(**overrides)))

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        path = FOLDERS[self._added % len(FOLDERS)] + name
        self._added += 1
        self.server.put(path, data)
        return path

    def touch(self, asset_id: str) -> None:
        path = self.server.root / asset_id
        info = path.stat()
        # WsgiDAV's ETag holds whole seconds of the modification time.
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 2_000_000_000))

    def remove(self, asset_id: str) -> None:
        self.server.delete(asset_id)

    def reset(self) -> None:
        self.server.clear()
        self._added = 0
        assert self.proxy is not None
        self.proxy.clear()

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"password": "wrong-password-for-tests"}

    def stored_marks(self, asset_id: str) -> Marks:
        properties = self.server.dead_properties(asset_id)
        return Marks.from_fields(
            {
                name: properties.get(f"{{{NAMESPACE}}}{name}")
                for name in ("damdup-marks", "damdup-cluster", "damdup-canonical")
            }
        )

    def set_foreign(self, asset_id: str) -> None:
        self.server.set_properties(asset_id, FOREIGN)

    def foreign_state(self, asset_id: str) -> Any:
        properties = self.server.dead_properties(asset_id)
        others = {name: value for name, value in properties.items() if NAMESPACE not in name}
        data = (self.server.root / asset_id).read_bytes()
        return others, hashlib.sha256(data).hexdigest(), self.server.etag(asset_id)

    def close(self) -> None:
        super().close()
        self.server.stop()
