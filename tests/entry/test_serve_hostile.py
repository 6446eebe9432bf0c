"""`damdup serve --config` against hostile callers, as they meet the real
server process: JSON nested too deeply for the parser, check ids that are no
numbers a check can have, and many connections that send half a request and
then nothing. Every one gets a clear 4xx JSON answer or is closed, each
refusal is logged, and the server's threads and memory stay bounded."""

from __future__ import annotations

import json
import select
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.conftest import PHOTOS, damdup
from tests.entry.test_webhooks import Serving, notification, wait_for
from tests.servers.config import write_config

SECRET = "archive-secret-for-the-hostile-tests"
DEEP = 100_000  # levels of nesting: far past the parser's recursion limit


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def start(folder: Path, **settings: str) -> Serving:
    """`damdup serve --config` over an empty synced unit with a webhook secret;
    `settings` are DAMDUP_* process settings."""
    (folder / "archive").mkdir()
    config = folder / "damdup.toml"
    env = write_config(
        config, folder / "index.sqlite", {"archive": ("filesystem", {"root": folder / "archive"})}
    )
    damdup("sync", "--config", str(config), "-q", env=env)
    env = {**env, "DAMDUP_ARCHIVE_WEBHOOK_SECRET": SECRET}
    env.update({f"DAMDUP_{key.upper()}": value for key, value in settings.items()})
    return Serving(config, env, folder / "serve.log")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    server = start(tmp_path_factory.mktemp("hostile"))
    try:
        yield server
    finally:
        server.stop()


def refused(server: Serving, reply: requests.Response, status: int, event: str) -> dict[str, Any]:
    """A 4xx JSON answer with a message, and its structlog line (no secret in the log)."""
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    answer = reply.json()
    assert answer["code"] and answer["error"]
    path = reply.request.path_url.split("?")[0]
    lines = wait_for(
        f"the {event} line for {path}",
        lambda: [e for e in server.events(event) if e["status"] == status and e["path"] == path],
        timeout_s=10,
    )
    assert lines[-1]["level"] == "warning" and lines[-1]["remote_addr"] == "127.0.0.1"
    text = server.log.read_text()
    assert SECRET not in text and "sha256=" not in text
    return answer


def test_deeply_nested_json_is_refused_with_400_on_every_json_endpoint(served: Serving) -> None:
    url = served.url
    decide = served.session.post(
        f"{url}/api/review/decide",
        data=nested(30_000),  # inside the review API's 64 KiB cap
        headers={"Content-Type": "application/json", "Origin": url},
        timeout=30,
    )
    assert "nested" in refused(served, decide, 400, "request.rejected")["error"]
    lookup = served.session.post(
        f"{url}/api/lookup",
        data=b'{"url": ' + nested(DEEP) + b"}",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert "nested" in refused(served, lookup, 400, "request.rejected")["error"]
    # A webhook body is parsed only once its signature holds: a sender with
    # the secret (or a defect in one) must not crash the server either.
    body = b'{"asset_id": "a.jpg", "event": "created", "x": ' + nested(30_000) + b"}"
    hook = served.post_hook("archive", body, SECRET)
    assert "nested" in refused(served, hook, 400, "webhook.rejected")["error"]
    # Still serving.
    assert served.session.get(f"{url}/api/checks", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "check_id", ["99999999999999999999999", "9223372036854775808", "-1", "0", "abc", "1.5"]
)
def test_a_check_id_that_no_check_can_have_is_refused_with_400(
    served: Serving, check_id: str
) -> None:
    reply = served.session.get(f"{served.url}/api/checks/{check_id}", timeout=30)
    answer = refused(served, reply, 400, "request.rejected")
    assert answer["code"] == "invalid" and "check id" in answer["error"]


def test_the_largest_check_id_is_looked_up(served: Serving) -> None:
    reply = served.session.get(f"{served.url}/api/checks/9223372036854775807", timeout=30)
    assert reply.status_code == 404 and reply.json()["code"] == "unknown_check"


def test_every_refusal_is_logged(served: Serving) -> None:
    url = served.url
    session = served.session
    json_post = {"Content-Type": "application/json", "Origin": url}
    cases = [
        (session.get(f"{url}/no/such/page", timeout=30), 404),
        (session.put(f"{url}/review", timeout=30), 405),
        (session.get(f"{url}/review", headers={"Host": "evil.example"}, timeout=30), 403),
        (session.get(f"{url}/api/review/queue", params={"limit": "lots"}, timeout=30), 400),
        (session.get(f"{url}/api/checks/123456", timeout=30), 404),
        (session.get(f"{url}/thumb/{'A' * 64}", timeout=30), 400),
        (
            session.post(
                f"{url}/api/review/decide",
                json={"a": "x"},
                headers={"Origin": "http://evil.example"},
                timeout=30,
            ),
            403,
        ),
        (session.post(f"{url}/api/review/decide", data={"a": "x"}, timeout=30), 415),
        (
            session.post(
                f"{url}/api/review/decide", data=b"x" * 70_000, headers=json_post, timeout=30
            ),
            413,
        ),
        (session.post(f"{url}/api/review/decide", data=b"{", headers=json_post, timeout=30), 400),
        (session.post(f"{url}/api/lookup", data=b"x", timeout=30), 415),
    ]
    for reply, status in cases:
        refused(served, reply, status, "request.rejected")
    hook = served.post_hook("archive", b'{"asset_id": "a.jpg"}', None)
    refused(served, hook, 401, "webhook.rejected")
    # The webhook logs its own refusals: once, as webhook.rejected.
    assert not [e for e in served.events("request.rejected") if e["path"] == "/hooks/archive"]


# -- a folder unit's webhook and links out of its folder ---------------------------


def test_a_folder_webhook_never_reads_through_a_link_out_of_the_folder(tmp_path: Path) -> None:
    """A signed notification names a path through a linked folder, a linked
    file or `..` out of the unit's folder: the check fails saying why, and
    nothing outside the folder reaches the index (a listing follows no such
    link, and neither may a check)."""
    server = start(tmp_path)
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        shutil.copy(PHOTOS / "kuva" / "IMG_0412.jpg", outside / "salainen.jpg")
        (tmp_path / "archive" / "kansio").symlink_to(outside)
        (tmp_path / "archive" / "ulos.jpg").symlink_to(outside / "salainen.jpg")
        for asset_id in ("kansio/salainen.jpg", "ulos.jpg", "../outside/salainen.jpg"):
            reply = server.post_hook("archive", notification(asset_id), SECRET)
            assert reply.status_code == 202, reply.text
            check = server.finished(reply.json()["check"])
            assert check["status"] == "failed" and check["verdict"] is None, check
            assert "link" in check["error"] or "not a path inside" in check["error"], check
        status = damdup("status", "--db", str(tmp_path / "index.sqlite"), "--format", "json")
        assert [(row["unit"], row["assets"]) for row in json.loads(status.stdout)] == [
            ("archive", 0)
        ]
    finally:
        server.stop()


# -- connections that send half a request and then nothing -------------------------

HALF_SENT = [
    # Headers never finished.
    b"GET /review HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/ht",
    # Headers done, a tenth of the body sent.
    b"POST /api/review/decide HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"a": "' + b"x" * 93,
    # A webhook, its body cut short.
    b"POST /hooks/archive HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n{",
]


def half_sent(port: int, count: int) -> list[socket.socket]:
    opened = []
    for number in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_SENT[number % len(HALF_SENT)])
        opened.append(sock)
    return opened


def server_side(process: psutil.Process, port: int) -> int:
    """Connections the server process holds open on its port."""
    return sum(
        1
        for connection in process.net_connections(kind="tcp")
        if connection.laddr and connection.laddr.port == port and connection.raddr
    )


def closed_by_server(sockets: list[socket.socket]) -> bool:
    """Each socket has seen the server close it (end of stream or reset)."""
    for sock in sockets:
        if sock.fileno() == -1:
            continue
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:  # an answer (none is expected to a half request): keep reading
            return False
        sock.close()
    return True


def test_half_sent_connections_hold_no_threads_and_are_closed_after_the_read_timeout(
    tmp_path: Path,
) -> None:
    count = 300
    server = start(tmp_path, serve_read_timeout_s="2", serve_connections="400", serve_threads="4")
    opened: list[socket.socket] = []
    try:
        port = int(server.url.rsplit(":", 1)[1])
        process = psutil.Process(server.process.pid)
        assert requests.get(server.url + "/api/review/queue", timeout=30).status_code == 200
        threads_before = process.num_threads()
        memory_before = process.memory_info().rss

        opened = half_sent(port, count)
        wait_for(
            "the server to accept every connection",
            lambda: server_side(process, port) >= count,
            timeout_s=60,
        )
        # Held connections cost no thread and little memory (a thread per
        # connection costs ~200 KiB of stack and bookkeeping each).
        assert process.num_threads() <= threads_before + 2
        assert process.memory_info().rss - memory_before < count * 64 * 1024
        answer = requests.get(server.url + "/api/review/queue", timeout=30)
        assert answer.status_code == 200 and answer.json()["total"] == 0

        # Silent for longer than the read time-out: each is closed.
        wait_for("the server to close every half-sent connection", lambda: closed_by_server(opened))
        wait_for("the server to let go of them", lambda: server_side(process, port) == 0)
        assert requests.get(server.url + "/api/review/queue", timeout=30).status_code == 200
    finally:
        for sock in opened:
            sock.close()
        server.stop()


def test_connections_beyond_the_limit_wait_and_are_served_in_turn(tmp_path: Path) -> None:
    limit = 20
    server = start(tmp_path, serve_read_timeout_s="2", serve_connections=str(limit))
    opened: list[socket.socket] = []
    try:
        port = int(server.url.rsplit(":", 1)[1])
        process = psutil.Process(server.process.pid)
        opened = half_sent(port, 3 * limit)
        held = wait_for(
            "the server to take connections up to its limit",
            lambda: (found := server_side(process, port)) >= limit and found,
            timeout_s=60,
        )
        assert held <= limit
        # A caller queued behind them is answered once the stalled ones time out.
        answer = requests.get(server.url + "/api/review/queue", timeout=120)
        assert answer.status_code == 200
        assert server_side(process, port) <= limit
        wait_for("every stalled connection to be closed", lambda: closed_by_server(opened))
    finally:
        for sock in opened:
            sock.close()
        server.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_the_server_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    server = start(tmp_path)
    try:
        assert requests.get(server.url + "/api/checks", timeout=30).status_code == 200
        server.process.send_signal(stop)
        assert server.process.wait(timeout=30) == 0, server.log.read_text()
    finally:
        server.stop()
