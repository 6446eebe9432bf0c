"""The real ResourceSpace (tests/servers/resourcespace_real.py) beside our
emulator: the same requests to both must give answers of the same shape, so
that the emulator cannot drift from the server; every API path damdup uses
runs ResourceSpace's own code without reaching a Composer package that is not
there; and damdup's marks are written, read back through ResourceSpace's own
API, seen on its resource page, and reverted.

Skipped, saying where the source goes, when shared/platforms has no
ResourceSpace snapshot. The server is the contract suite's (one per session).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from adapters.base import Marks, NotFound
from adapters.resourcespace import ResourceSpace
from tests.conftest import ROOT, damdup
from tests.contract import conftest as contract
from tests.servers.common import PHOTOS, photo_paths, upscaled
from tests.servers.config import write_config
from tests.servers.resourcespace import (
    DEFAULT_FIELDS,
    PRIVATE_KEY,
    USERNAME,
    ResourceSpaceEmulator,
    ResourceSpaceHarness,
)
from tests.servers.resourcespace_real import ResourceSpaceRealHarness, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

ORIGINALS = photo_paths(variant="original")
ARTIFACTS = ROOT / "test-artifacts" / "resourcespace"
# The fields the emulator has (the real server has every default field, such
# as `camera`, which damdup's default mapping does not read).
EMULATED_FIELDS = {field.name for field in DEFAULT_FIELDS} | {"damdup"}


@pytest.fixture(scope="module")
def real() -> ResourceSpaceRealHarness:
    harness = contract._harness("resourcespace-real")
    assert isinstance(harness, ResourceSpaceRealHarness)
    return harness


@pytest.fixture
def both(real: ResourceSpaceRealHarness) -> Iterator[tuple[Any, Any]]:
    real.reset()
    emulated = ResourceSpaceHarness(ResourceSpaceEmulator(data_joins=(10,)))
    try:
        yield _Real(real), _Emulated(emulated)
    finally:
        emulated.close()


class _Real:
    name = "real"

    def __init__(self, harness: ResourceSpaceRealHarness) -> None:
        self.harness = harness
        self.server = harness.server

    def add(self, path: Path, metadata: dict[str, str] | None = None) -> str:
        return self.harness.add(path.name, path.read_bytes(), metadata)

    def remove(self, ref: str) -> None:
        self.harness.remove(ref)

    def call(self, function: str, method: str = "GET", key: str | None = None,
             **params: Any) -> requests.Response:  # fmt: skip
        user = self.server.api_user
        saved = self.server.keys[user]
        if key is not None:
            self.server.keys[user] = key
        try:
            return self.server.request(function, user=user, method=method, **params)
        finally:
            self.server.keys[user] = saved

    def get(self, url: str) -> requests.Response:
        return self.server.session.get(url.replace(self.server.public_url, self.server.url, 1))


class _Emulated:
    name = "emulator"

    def __init__(self, harness: ResourceSpaceHarness) -> None:
        self.harness = harness
        self.base = harness.emulator.base_url

    def add(self, path: Path, metadata: dict[str, str] | None = None) -> str:
        return self.harness.add(path.name, path.read_bytes(), metadata)

    def remove(self, ref: str) -> None:
        self.harness.remove(ref)

    def call(self, function: str, method: str = "GET", key: str | None = None,
             **params: Any) -> requests.Response:  # fmt: skip
        query = "&".join(
            f"{name}={requests.utils.quote(str(value), safe='')}"
            for name, value in [("user", USERNAME), ("function", function), *params.items()]
        )
        sign = hashlib.sha256(((key or PRIVATE_KEY) + query).encode()).hexdigest()
        if method == "GET":
            return requests.get(f"{self.base}api/?{query}&sign={sign}", timeout=30)
        data = {"user": USERNAME, "query": query, "sign": sign}
        return requests.post(f"{self.base}api/", data=data, timeout=30)

    def get(self, url: str) -> requests.Response:
        return requests.get(url, timeout=30)


def shape(value: Any) -> Any:
    """What a client can rely on: keys, JSON types, list lengths, and which
    values are null (a column the server leaves empty, such as a field the
    upload did not fill from the photo's EXIF, must be empty on both)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if value is None:
        return None
    return type(value).__name__


def same_shape(real: Any, emulated: Any, where: str = "") -> list[str]:
    if real is None or emulated is None:
        return [] if real is emulated else [f"{where}: {real} real, {emulated} emulated"]
    if isinstance(real, dict) and isinstance(emulated, dict):
        problems = []
        if set(real) != set(emulated):
            problems.append(
                f"{where}: keys only real {sorted(set(real) - set(emulated))}, "
                f"only emulator {sorted(set(emulated) - set(real))}"
            )
        for key in set(real) & set(emulated):
            problems += same_shape(real[key], emulated[key], f"{where}.{key}")
        return problems
    if isinstance(real, list) and isinstance(emulated, list):
        if len(real) != len(emulated):
            return [f"{where}: {len(real)} items real, {len(emulated)} emulated"]
        return [
            p
            for n, (a, b) in enumerate(zip(real, emulated, strict=True))
            for p in same_shape(a, b, f"{where}[{n}]")
        ]
    return [] if real == emulated else [f"{where}: {real} real, {emulated} emulated"]


def answer(reply: requests.Response) -> tuple[int, str, Any]:
    kind = reply.headers.get("Content-Type", "").split(";")[0]
    try:
        body: Any = shape(reply.json()) if reply.content.strip() else ""
    except ValueError:
        body = reply.text.strip()
    return reply.status_code, kind, body


def test_the_emulator_answers_as_the_real_server(both: tuple[Any, Any]) -> None:
    """Every function damdup calls, and the answers to what goes wrong, on
    resources made alike on both: status, content type and the answer's
    shape must match (values differ: refs, times, keys)."""
    results: dict[str, list[tuple[str, Any]]] = {}
    for server in both:
        big = server.add(ORIGINALS[0], {"location": "Senaatintori", "date": "2024-05-01",
                                        "department": "Kaupunginmuseo"})  # fmt: skip
        small = server.add(ORIGINALS[1])
        gone = server.add(ORIGINALS[2])
        server.remove(gone)
        missing = str(int(gone) + 1000)
        requests_made = [
            ("search 0,2", "do_search", {"search": "", "archive": 0, "fetchrows": "0,2",
                                         "order_by": "modified", "sort": "desc"}),
            ("search 1,1", "do_search", {"search": "", "archive": 0, "fetchrows": "1,1",
                                         "order_by": "modified", "sort": "desc"}),
            ("search 2,1", "do_search", {"search": "", "archive": 0, "fetchrows": "2,1",
                                         "order_by": "modified", "sort": "desc"}),
            ("search deleted", "do_search", {"search": "", "archive": 3, "fetchrows": "0,5"}),
            ("list deleted", "do_search", {"search": f"!list{gone}", "archive": 0,
                                           "fetchrows": "0,1"}),
            ("path one", "get_resource_path", {"ref": json.dumps([int(big)]), "size": "",
                                               "extension": "jpg"}),
            ("path two", "get_resource_path", {"ref": json.dumps([int(big), int(small)]),
                                               "size": "", "extension": "jpg"}),
            ("path missing", "get_resource_path", {"ref": missing, "size": ""}),
            ("sizes", "get_resource_all_image_sizes", {"resource": big}),
            ("sizes deleted", "get_resource_all_image_sizes", {"resource": gone}),
            ("sizes missing", "get_resource_all_image_sizes", {"resource": missing}),
            ("data", "get_resource_data", {"resource": big}),
            ("data deleted", "get_resource_data", {"resource": gone}),
            ("data missing", "get_resource_data", {"resource": missing}),
            ("edit access", "get_edit_access", {"resource": big}),
            ("related none", "get_related_resources", {"ref": big}),
            ("no such function", "no_such_function", {}),
        ]  # fmt: skip
        got = []
        for label, function, params in requests_made:
            got.append((label, answer(server.call(function, **params))))
        fields = server.call("get_resource_field_data", resource=big).json()
        got.append(("field", shape(next(f for f in fields if f["name"] == "damdup"))))
        # Which of the emulator's fields the upload filled (EXIF's date, the
        # file name; never a title the photo does not carry).
        filled = [f["name"] for f in fields if f["value"] and f["name"] in EMULATED_FIELDS]
        got.append(("fields filled", sorted(filled)))
        # The preview sizes made, their sizes (the boxes ImageMagick fits) and
        # their order (the widest box first).
        sizes = server.call("get_resource_all_image_sizes", resource=big).json()
        got.append(("size boxes", [(s["size_code"], s["width"], s["height"]) for s in sizes]))
        empty = server.call("get_resource_field_data", resource=missing).json()
        got.append(("fields missing", (type(empty).__name__, {f["value"] for f in empty})))
        for label, function, params in [
            ("update", "update_field", {"resource": big, "field": "damdup", "value": "x"}),
            ("update unknown field", "update_field", {"resource": big, "field": "nosuch",
                                                      "value": "x"}),
            ("update missing", "update_field", {"resource": missing, "field": "damdup",
                                                "value": "x"}),
            ("relate", "update_related_resource", {"ref": big, "related": small, "add": 1}),
            ("relate bad add", "update_related_resource", {"ref": big, "related": small,
                                                           "add": 2}),
        ]:  # fmt: skip
            got.append((label, answer(server.call(function, method="POST", **params))))
        got.append(("related", answer(server.call("get_related_resources", ref=small))))
        got.append(("bad signature", answer(server.call("do_search", key="0" * 64, search=""))))
        # Files: an address from the API, with and without its key.
        url = server.call("get_resource_path", ref=big, size="", extension="jpg").json()
        with_key = server.get(url)
        without = server.get(re.sub(r"&access_key=[^&]*$", "", url))
        got.append(("file", (with_key.status_code, with_key.headers["Content-Type"])))
        got.append(("file without key", (without.status_code, without.headers.get("Content-Type"),
                                         without.url.rsplit("/", 1)[-1][:40])))  # fmt: skip
        got.append(("key changes", url != server.call(
            "get_resource_path", ref=big, size="", extension="jpg").json()))  # fmt: skip
        results[server.name] = got

    problems = []
    for (label, real_answer), (_, emulated_answer) in zip(
        results["real"], results["emulator"], strict=True
    ):
        if isinstance(real_answer, tuple) and len(real_answer) == 3:
            status_kind = (real_answer[0], real_answer[1])
            if status_kind != (emulated_answer[0], emulated_answer[1]):
                problems.append(f"{label}: {status_kind} real, {emulated_answer[:2]} emulated")
            problems += same_shape(real_answer[2], emulated_answer[2], label)
        else:
            problems += same_shape(real_answer, emulated_answer, label)
    assert problems == [], "\n".join(problems)


def test_paths_damdup_uses_never_reach_a_missing_library(real: ResourceSpaceRealHarness) -> None:
    """Every API function the adapter calls, through the adapter (listing,
    field data, renditions, originals, marks, relations, a gone resource),
    and the harness's own (create_resource, upload_multipart, update_field,
    delete_resource): ResourceSpace asks the stand-in autoloader for no class
    and PHP reports no error."""
    real.reset()
    before = len(real.server.missing_classes())
    # The first large enough for a preview smaller than itself.
    ids = [real.add("big.jpg", upscaled(ORIGINALS[0], 1600, quality=90))]
    ids += [real.add(path.name, path.read_bytes()) for path in ORIGINALS[1:3]]
    source = real.adapter(field_data=True, page_size=2)
    assert isinstance(source, ResourceSpace)
    items = [ref for page in source.iter_pages(None) for ref in page.items]
    refs = {ref.id: ref for ref in items}
    assert sorted(refs) == sorted(ids)
    assert source.describe(ids[1]) == refs[ids[1]]
    source.fetch(refs[ids[0]], 384)  # a preview
    assert source.describe(ids[0]) == refs[ids[0]]
    source.fetch_original(refs[ids[0]])
    source.fetch_url(refs[ids[1]].original_url or "")
    # Downloading an original is logged, and that moves `modified` (not the
    # version): the next incremental listing lists the resource again.
    moved = source.describe(ids[0])
    assert moved.modified != refs[ids[0]].modified and moved.version == refs[ids[0]].version
    canonical = f"{real.url}pages/view.php?ref={ids[0]}"
    assert source.annotate(refs[ids[1]], Marks(("duplicate",), "dd0123456789", canonical))
    assert source.read_marks(refs[ids[1]]).labels == ("duplicate",)
    assert source.annotate(refs[ids[1]], Marks())
    real.remove(ids[2])
    assert source.exists(refs[ids[2]]) is False
    with pytest.raises(NotFound):
        source.fetch(refs[ids[2]], 384)
    assert real.server.missing_classes()[before:] == []
    assert real.server.php_errors() == []


def test_marks_are_written_shown_on_the_resource_page_and_reverted(
    real: ResourceSpaceRealHarness, tmp_path: Path
) -> None:
    """`damdup push` on a unit with writes on: the duplicate's field holds
    damdup's marks and canonical link, read back through ResourceSpace's own
    API and shown on its resource page (screenshot in test-artifacts/); the
    duplicate is related to its canonical; nothing is deleted; a revert gives
    the field its earlier value (an earlier run's marks) back and removes the
    relation."""
    real.reset()
    labels = json.loads((PHOTOS.parent / "labels.json").read_text())["files"]
    china = {label["variant"]: name for name, label in labels.items() if label["photo"] == "china"}
    original = real.add("china.jpg", (PHOTOS / china["original"]).read_bytes())
    copy = real.add("china-copy.jpg", (PHOTOS / china["reencode_q60"]).read_bytes())
    server = real.server
    # The copy's field already holds marks (an earlier damdup's): the revert
    # must give back exactly this text, not an empty field.
    earlier = Marks(("metadata-missing",), "dd0123456789", None).to_json()
    server.set_field(copy, "damdup", earlier)
    assert server.field_values(copy)["damdup"] == earlier

    db = tmp_path / "index.sqlite"
    config = tmp_path / "damdup.toml"
    unit = ("resourcespace", {**real.settings(), "writes": True})
    env = write_config(config, db, {"kuvapankki": unit})
    damdup("sync", "--config", str(config), "-q", env=env)
    assert real.proxy is not None
    real.proxy.clear()
    pushed = json.loads(damdup("push", "--config", str(config), "--format", "json", env=env).stdout)
    applied = {c["asset_id"] for c in pushed["changes"] if c["outcome"] == "applied"}
    assert copy in applied

    marks = Marks.from_json(server.field_values(copy)["damdup"])
    assert set(marks.labels) & {"duplicate", "duplicate-candidate"}
    assert marks.canonical_url == f"{real.url}pages/view.php?ref={original}"
    assert "canonical" in Marks.from_json(server.field_values(original)["damdup"]).labels
    assert int(original) in server.api("get_related_resources", ref=copy)
    # ResourceSpace deletes with a function call (delete_resource moves a
    # resource to archive state 3), not an HTTP DELETE: both stay live.
    assert real.proxy.requests("DELETE") == []
    assert live_states(real) == {original: 0, copy: 0}

    page = _screenshot(real, copy, ARTIFACTS / f"view-{copy}-marked.png", marks.cluster)
    assert marks.cluster in page and "duplicate" in page

    reverted = json.loads(
        damdup("push", "--config", str(config), "--format", "json", "--revert",
               str(pushed["run"]), env=env).stdout
    )  # fmt: skip
    assert reverted["run"] > pushed["run"]
    assert server.field_values(copy)["damdup"] == earlier
    assert int(original) not in server.api("get_related_resources", ref=copy)
    assert real.proxy.requests("DELETE") == []
    assert live_states(real) == {original: 0, copy: 0}
    page = _screenshot(real, copy, ARTIFACTS / f"view-{copy}-reverted.png", "Metadata")
    assert marks.cluster not in page and "dd0123456789" in page


def live_states(real: ResourceSpaceRealHarness) -> dict[str, int]:
    """Every resource in any archive state, with its state, through the API;
    and no delete_resource in the adapter's GETs through the proxy."""
    assert real.proxy is not None
    assert not any("delete_resource" in entry.path for entry in real.proxy.requests("GET"))
    return {
        ref: int(real.server.api("get_resource_data", resource=ref)["archive"])
        for ref in real.server.refs()
    }


def _screenshot(real: ResourceSpaceRealHarness, ref: str, path: Path, near: str) -> str:
    """The resource page as the super admin sees it in Debian's chromium,
    scrolled to the text `near` (the page scrolls inside its own panel, so a
    full-page shot would not show it); the page's text."""
    from playwright.sync_api import sync_playwright

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{real.url}login.php", wait_until="domcontentloaded")
            page.fill("#username", real.server.admin_user)
            page.fill("#password", real.server.admin_password)
            page.press("#password", "Enter")
            page.wait_for_load_state("domcontentloaded")
            page.goto(f"{real.url}pages/view.php?ref={ref}", wait_until="networkidle")
            page.get_by_text(near).first.scroll_into_view_if_needed()
            page.screenshot(path=str(path))
            return page.inner_text("body")
        finally:
            browser.close()
