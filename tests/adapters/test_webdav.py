"""WebDAV behaviour the contract suite does not reach: deep trees walked
folder by folder and resumed anywhere, a file deleted mid-folder, the depth
guard, hostile XML answers, someone else's dead properties, a server with no
room for marks, and the password kept out of logs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from PIL import Image
from pydantic import SecretStr
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import (
    AdapterError,
    AssetRef,
    AuthFailed,
    BadAsset,
    Marks,
    MarksDoNotFit,
    Unavailable,
)
from adapters.webdav import NAMESPACE, WebDav, WebDavCursor, WebDavSettings
from tests.servers.common import Emulator
from tests.servers.webdav import FOREIGN, PASSWORD, SHARE, USER, WebDavServer

# Billion laughs: ten levels of ten, a gigabyte of "lol" from 1 kB.
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (n, (b"&lol%d;" % (n - 1) if n > 1 else b"&lol;") * 10)
        for n in range(1, 10)
    )
    + b']><d:multistatus xmlns:d="DAV:"><d:response><d:href>&lol9;</d:href>'
    b"</d:response></d:multistatus>"
)
EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>&x;</d:href></d:response>'
    b"</d:multistatus>"
)


def jpeg(shade: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), (shade % 256, 100, 150)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server() -> Iterator[WebDavServer]:
    running = WebDavServer()
    yield running
    running.stop()


@pytest.fixture
def dav(server: WebDavServer) -> WebDavServer:
    server.clear()
    server.requests.clear()
    return server


def adapter(server: WebDavServer, **overrides: Any) -> WebDav:
    settings = {"base_url": server.share_url, "username": USER, "password": PASSWORD}
    return WebDav(WebDavSettings(**{**settings, **overrides}))


def walk(webdav: WebDav, cursor: WebDavCursor | None = None) -> tuple[list[AssetRef], int]:
    items: list[AssetRef] = []
    pages = 0
    for page in webdav.iter_pages(cursor):
        items.extend(page.items)
        pages += 1
    return items, pages


# -- listing -------------------------------------------------------------------

TREE = [
    "a.jpg",
    "2024/kevät/Senaatintori ä #1.jpg",
    "2024/kevät/Senaatintori ä #2.jpg",
    "2024/kevät/syvä/syvempi/syvin/pohja/kuva.png",
    "2024/syksy/1.jpg",
    "2024/syksy/2.jpg",
    "2024/syksy/3.jpg",
    "2024/syksy/4.jpg",
    "2024/syksy/5.jpg",
    "tyhjä/",
    "z/y/x/w/v.jpg",
]


def build(dav: WebDavServer) -> list[str]:
    files = []
    for number, path in enumerate(TREE):
        if path.endswith("/"):
            (dav.root / path).mkdir(parents=True, exist_ok=True)
            continue
        data = jpeg(number)
        if path.endswith(".png"):
            out = io.BytesIO()
            Image.new("RGB", (20, 20)).save(out, "PNG")
            data = out.getvalue()
        dav.put(path, data)
        files.append(path)
    dav.put("2024/muistio.txt", b"not an image")
    dav.put("2024/raportti.pdf", b"%PDF-1.4 not an image")
    return files


def test_a_deep_tree_is_walked_folder_by_folder_with_depth_one(dav: WebDavServer) -> None:
    files = build(dav)
    items, pages = walk(adapter(dav, page_size=2))
    assert sorted(ref.id for ref in items) == sorted(files)  # no text, no PDF, no folders
    assert pages >= len(files) // 2
    depths = {depth for method, _, depth, _ in dav.requests if method == "PROPFIND"}
    assert depths == {"1"}, "never Depth: infinity"
    # A name with spaces, ä and # round-trips: the file is fetched by its id.
    ref = next(ref for ref in items if ref.id.endswith("#1.jpg"))
    assert adapter(dav).fetch(ref, 0) == (dav.root / ref.id).read_bytes()
    assert ref.metadata == adapter(dav).settings.metadata.apply({})  # nothing mapped by default


@pytest.mark.parametrize("page_size", [1, 2, 3, 7])
def test_a_walk_resumed_from_any_saved_cursor_lists_each_file_once(
    dav: WebDavServer, page_size: int
) -> None:
    files = build(dav)
    cursor: WebDavCursor | None = None
    seen: list[str] = []
    for _ in range(100):
        # A new process at every page: a fresh adapter, the cursor from JSON.
        fresh = adapter(dav, page_size=page_size)
        page = fresh.list_assets(cursor)
        seen.extend(ref.id for ref in page.items)
        assert len(page.items) <= page_size
        if page.complete:
            assert page.cursor is None
            break
        assert page.cursor is not None
        cursor = WebDavCursor.model_validate_json(page.cursor.model_dump_json())
    else:
        pytest.fail("the walk never completed")
    assert sorted(seen) == sorted(files)
    assert len(seen) == len(set(seen))


def test_a_file_deleted_mid_folder_moves_no_page_boundary(dav: WebDavServer) -> None:
    for number in range(1, 6):
        dav.put(f"syksy/{number}.jpg", jpeg(number))
    webdav = adapter(dav, page_size=2)
    first = webdav.list_assets(None)
    assert [ref.id for ref in first.items] == ["syksy/1.jpg", "syksy/2.jpg"]
    dav.delete("syksy/1.jpg")  # an offset would now skip 3.jpg
    rest, _ = walk(adapter(dav, page_size=2), first.cursor)
    assert [ref.id for ref in rest] == ["syksy/3.jpg", "syksy/4.jpg", "syksy/5.jpg"]


def test_folders_deeper_than_max_depth_are_not_entered(dav: WebDavServer) -> None:
    dav.put("1/2/3/4/kuva.jpg", jpeg())
    dav.put("1/matala.jpg", jpeg(1))
    with structlog.testing.capture_logs() as logs:
        items, _ = walk(adapter(dav, max_depth=3))
    assert [ref.id for ref in items] == ["1/matala.jpg"]
    assert any(e["event"] == "webdav.folder_skipped" and e["folder"] == "1/2/3/4/" for e in logs)


def test_an_unchanged_file_keeps_its_version_and_a_rewrite_changes_it(dav: WebDavServer) -> None:
    dav.put("kuva.jpg", jpeg(1))
    [before], _ = walk(adapter(dav))
    [again], _ = walk(adapter(dav))
    assert again.version == before.version
    dav.put("kuva.jpg", jpeg(200) + b"\0" * 10)
    [after], _ = walk(adapter(dav))
    assert after.version != before.version


# -- marks -------------------------------------------------------------------


def test_marks_leave_every_other_property_alone(dav: WebDavServer) -> None:
    dav.put("kuva.jpg", jpeg())
    theirs = {**FOREIGN, f"{{{NAMESPACE}}}muistiinpano": "ei damdupin"}
    dav.set_properties("kuva.jpg", theirs)
    webdav = adapter(dav)
    [ref], _ = walk(webdav)
    dav.requests.clear()
    marks = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url="https://a/b ä?c#d")
    assert webdav.annotate(ref, marks) is True
    stored = dav.dead_properties("kuva.jpg")
    assert {name: stored[name] for name in theirs} == theirs
    assert stored[f"{{{NAMESPACE}}}damdup-canonical"] == "https://a/b ä?c#d"
    assert webdav.annotate(ref, Marks()) is True
    assert dav.dead_properties("kuva.jpg") == theirs
    assert webdav.read_marks(ref) == Marks()
    # Two PROPPATCHes, naming damdup's three properties and nothing else.
    patches = [body for method, _, _, body in dav.requests if method == "PROPPATCH"]
    assert len(patches) == 2
    assert b"<dd:damdup-canonical/>" in patches[1] and b"<d:remove>" in patches[1]
    for body in patches:
        assert b"muistiinpano" not in body and b"kuvaaja" not in body and b"title" not in body
    assert "DELETE" not in [method for method, _, _, _ in dav.requests]


def test_unreadable_marks_are_an_error_and_are_replaced_by_annotate(dav: WebDavServer) -> None:
    dav.put("kuva.jpg", jpeg())
    dav.set_properties("kuva.jpg", {f"{{{NAMESPACE}}}damdup-cluster": "not-a-cluster"})
    webdav = adapter(dav)
    [ref], _ = walk(webdav)
    with pytest.raises(AdapterError, match="unreadable"):
        webdav.read_marks(ref)
    marks = Marks(labels=("related",), cluster="dd00000000aa")
    assert webdav.annotate(ref, marks) is True
    assert webdav.read_marks(ref) == marks


# -- hostile answers -----------------------------------------------------------


class Hostile(Emulator):
    """Answers every PROPFIND with `body` and every PROPPATCH with a 507."""

    url_map = Map(
        [
            Rule("/", defaults={"path": ""}, methods=["PROPFIND"], endpoint="answer"),
            Rule("/<path:path>", methods=["PROPFIND", "PROPPATCH"], endpoint="answer"),
        ]
    )

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def answer(self, request: Request, path: str) -> Response:
        if request.method == "PROPPATCH":
            refused = (
                b'<d:multistatus xmlns:d="DAV:"><d:response><d:href>/x</d:href><d:propstat>'
                b"<d:prop/><d:status>HTTP/1.1 507 Insufficient Storage</d:status>"
                b"</d:propstat></d:response></d:multistatus>"
            )
            return Response(refused, status=207, content_type="application/xml")
        return Response(self.body, status=207, content_type="application/xml")


@pytest.fixture
def hostile() -> Iterator[Any]:
    started: list[Hostile] = []

    def run(body: bytes) -> WebDav:
        emulator = Hostile(body)
        emulator.start()
        started.append(emulator)
        return WebDav(WebDavSettings(base_url=emulator.base_url, attempts=1))

    yield run
    for emulator in started:
        emulator.stop()


@pytest.mark.parametrize("body", [LAUGHS, EXTERNAL], ids=["billion-laughs", "external-entity"])
def test_xml_with_entities_is_refused_unread(hostile: Any, body: bytes) -> None:
    with pytest.raises(Unavailable, match="DTD"):
        hostile(body).list_assets(None)


def test_xml_in_utf16_cannot_slip_a_dtd_past_the_check(hostile: Any) -> None:
    body = LAUGHS.decode().replace('"1.0"?>', '"1.0" encoding="UTF-16"?>').encode("utf-16")
    assert b"<!DOCTYPE" not in body  # a byte search alone would miss it
    with pytest.raises(Unavailable, match="DTD or not in UTF-8"):
        hostile(body).list_assets(None)


def test_a_huge_answer_is_cut_at_the_cap(hostile: Any) -> None:
    body = b'<d:multistatus xmlns:d="DAV:">' + b" " * (33 * 1024 * 1024) + b"</d:multistatus>"
    with pytest.raises(BadAsset, match="byte cap"):
        hostile(body).list_assets(None)


def test_an_answer_that_is_no_multistatus_is_a_clear_error(hostile: Any) -> None:
    with pytest.raises(Unavailable, match="not a multistatus"):
        hostile(b"<root/>").list_assets(None)
    with pytest.raises(Unavailable, match="unreadable XML"):
        hostile(b"<d:multistatus xmlns:d='DAV:'>").list_assets(None)


def test_a_server_without_room_raises_marks_do_not_fit(hostile: Any) -> None:
    webdav = hostile(b'<d:multistatus xmlns:d="DAV:"/>')
    ref = AssetRef(id="kuva.jpg", version="1", url=webdav._url("kuva.jpg"))
    with pytest.raises(MarksDoNotFit):
        webdav.annotate(ref, Marks(labels=("duplicate",), cluster="dd0123456789"))


# -- credentials ---------------------------------------------------------------


def test_the_password_never_reaches_logs_or_errors(dav: WebDavServer) -> None:
    secret = "väärä-salasana-1234"
    dav.put("kuva.jpg", jpeg())
    with structlog.testing.capture_logs() as logs, pytest.raises(AuthFailed) as caught:
        walk(adapter(dav, password=secret))
    assert logs, "the refused request was logged"
    assert secret not in repr(logs) and secret not in str(caught.value)
    settings = WebDavSettings(base_url=dav.share_url, username=USER, password=SecretStr(secret))
    assert secret not in repr(settings) and secret not in settings.model_dump_json()


def test_username_and_password_come_together() -> None:
    with pytest.raises(ValueError, match="both"):
        WebDavSettings(base_url=f"http://127.0.0.1/{SHARE}/", username=USER)
