"""The Linked Events emulator answers as the real Linked Events does.

The same photos go into both (each through its harness: the real server's own
upload API, the emulator's library), then the same requests go to both, through
their fault proxies as the adapter's do, and the answers are compared: status,
content type, every key in its order, every value's type, paging links, error
bodies and headers, file names and bytes. What must differ (ports, ids, the
harnesses' own data source and organization, times) is put in placeholders
first; everything else must be equal, so the emulator cannot drift from the
server. The tests skip, as the contract suite does, without the real server's
source (tests/servers/linked_events_real.py says where it goes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from adapters.base import NotFound
from tests.contract.harness import Harness
from tests.servers.common import photo_paths
from tests.servers.linked_events_real import DATA_SOURCE, OWNER

PHOTOS = photo_paths(variant="original")
REAL = "linked_events-real"
EMULATED = "linked_events"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
# Django's storage makes a name in use unique with "_" and 7 letters or digits.
SUFFIX = re.compile(r"_[A-Za-z0-9]{7}(\.[a-z]+)$")
# The data source and publisher each harness's images get when none is given.
DEFAULTS = {
    REAL: {"data_source": DATA_SOURCE, "publisher": OWNER},
    EMULATED: {"data_source": "helsinki", "publisher": "ahjo:u4804001010"},
}
# The photos both get: a name used twice (Django's storage renames the second
# file), a name with a space and a letter outside ASCII, one with metadata.
UPLOADS = [
    ("photo-00.jpg", 0, None),
    ("photo-00.jpg", 1, None),
    ("Temppeliaukion kirkko ä.jpg", 2, None),
    ("museo.jpg", 3, {"location": "Senaatintori", "date": "2024-05-01", "department": "museo"}),
]


@dataclass
class Side:
    """One server, the photos given to it, and its answers in placeholders."""

    name: str
    harness: Harness
    ids: list[str] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.trust_env = False
        self.key = str(self.harness.settings()["api_key"])
        self.base = self.harness.settings()["base_url"].removesuffix("v1/")

    def upload_all(self) -> None:
        for file_name, photo, metadata in UPLOADS:
            self.ids.append(self.harness.add(file_name, PHOTOS[photo].read_bytes(), metadata))

    def path(self, template: str) -> str:
        """`{0}`, `{1}` ... in a path are the ids of the uploads, in order."""
        return template.format(*self.ids)

    def get(self, template: str, key: str | None = "valid") -> requests.Response:
        headers = {"Accept": "application/json"}
        if key is not None:
            headers["apikey"] = self.key if key == "valid" else key
        return self.session.get(self.base + self.path(template), headers=headers, timeout=60)

    def answer(self, template: str, key: str | None = "valid") -> dict[str, Any]:
        response = self.get(template, key)
        answer: dict[str, Any] = {
            "status": response.status_code,
            "content_type": response.headers.get("Content-Type"),
            "www_authenticate": response.headers.get("WWW-Authenticate"),
        }
        if (response.headers.get("Content-Type") or "").startswith("application/json"):
            answer["body"] = self.placeholders(response.json())
        return answer

    def placeholders(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {name: self.placeholders(item, name) for name, item in value.items()}
        if isinstance(value, list):
            return [self.placeholders(item) for item in value]
        if key == "id" and str(value) in self.ids:
            return f"<upload {self.ids.index(str(value))}: {type(value).__name__}>"
        if key in DEFAULTS[self.name] and value == DEFAULTS[self.name][key]:
            return f"<the harness's {key}>"
        if isinstance(value, str):
            if TIME.match(value):
                return "<time>"
            text = value.replace(self.base, "<server>/")
            for number, asset_id in enumerate(self.ids):
                text = text.replace(f"/v1/image/{asset_id}/", f"/v1/image/<upload {number}>/")
            return SUFFIX.sub(r"_<7 characters>\1", text)
        return value


@pytest.fixture
def sides(started: Callable[[str], Harness]) -> tuple[Side, Side]:
    real = Side(REAL, started(REAL))
    emulated = Side(EMULATED, started(EMULATED))
    for side in (real, emulated):
        side.upload_all()
    return real, emulated


def compare(sides: tuple[Side, Side], template: str, key: str | None = "valid") -> None:
    real, emulated = sides
    expected, answered = real.answer(template, key), emulated.answer(template, key)
    assert answered == expected, f"GET {template} (key: {key})"
    # Equal dicts may still list their keys in another order.
    assert json.dumps(answered) == json.dumps(expected), f"GET {template}: keys in another order"


@pytest.mark.parametrize("server", [REAL])
def test_listing_pages_and_links_answer_alike(sides: tuple[Side, Side], server: str) -> None:
    for template in (
        "v1/image/?page_size=2&sort=id",
        "v1/image/?sort=id&page=2&page_size=2",  # links come back sorted, page 1 without page
        "v1/image/?page_size=5000&sort=id",  # over the maximum: clamped
        "v1/image/?page_size=abc&sort=id",  # not a number: the default
        "v1/image/?sort=bogus",  # an unknown field: the default order
        "v1/image/?sort=-last_modified_time&page_size=1",
        "v1/image/?publisher=museo&sort=id",
        "v1/image/?publisher=MUSEO,nobody&sort=id",  # lowercased by the server
        "v1/image/?data_source=nothing",
    ):
        compare(sides, template)


@pytest.mark.parametrize("server", [REAL])
def test_records_answer_alike_with_and_without_a_key(sides: tuple[Side, Side], server: str) -> None:
    for number in range(len(UPLOADS)):
        compare(sides, f"v1/image/{{{number}}}/")
        # Without a key the admin-only fields (created_by, last_modified_by) go.
        compare(sides, f"v1/image/{{{number}}}/", key=None)
    compare(sides, "v1/image/?sort=id", key=None)


@pytest.mark.parametrize("server", [REAL])
def test_errors_answer_alike(sides: tuple[Side, Side], server: str) -> None:
    for template in (
        "v1/image/?page=3&page_size=2&sort=id",  # past the end
        "v1/image/?page=0",
        "v1/image/?page=x",
        "v1/image/999999999/",
        "v1/image/abc/",
        "v1/nothing/",
    ):
        compare(sides, template)
    compare(sides, "v1/image/?sort=id", key="not-a-data-source-key")
    compare(sides, "v1/image/{0}/", key="not-a-data-source-key")


@pytest.mark.parametrize("server", [REAL])
def test_files_and_deleted_images_answer_alike(sides: tuple[Side, Side], server: str) -> None:
    for side in sides:
        files = [record["url"] for record in side.get("v1/image/?sort=id").json()["data"]]
        for (_, photo, _), url in zip(UPLOADS, files, strict=True):
            response = side.session.get(url, timeout=60)
            assert response.status_code == 200, (side.name, url)
            assert response.headers["Content-Type"] == "image/jpeg"
            assert "Last-Modified" in response.headers
            assert "Cache-Control" not in response.headers
            assert response.content == PHOTOS[photo].read_bytes()
    gone = {side.name: side.get("v1/image/{0}/").json()["url"] for side in sides}
    for side in sides:
        side.harness.remove(side.ids[0])
    # The record, its file (deleted with it) and the listing without it.
    compare(sides, "v1/image/{0}/")
    compare(sides, "v1/image/?sort=id")
    answers = []
    for side in sides:
        response = side.session.get(gone[side.name], timeout=60)
        answers.append((response.status_code, response.headers.get("Content-Type")))
        with pytest.raises(NotFound):
            side.harness.adapter().fetch_url(gone[side.name])
    assert answers[0] == answers[1] == (404, "text/html; charset=utf-8")
    # A new upload under the freed name gets it back, unsuffixed, on both. Its
    # id joins the uploads' so that it is compared as a placeholder: the two
    # servers number it alike only when nothing was uploaded to them before.
    for side in sides:
        side.ids.append(side.harness.add("photo-00.jpg", PHOTOS[4].read_bytes()))
    compare(sides, "v1/image/?sort=id")
