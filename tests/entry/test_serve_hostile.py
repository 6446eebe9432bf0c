"""`damdup serve --config` against hostile callers, as they meet the real
server process: JSON nested too deeply for the parser, check ids that are no
numbers a check can have, and many connections that send half a request and
then nothing. Every one gets a clear 4xx JSON answer or is closed, each
refusal is logged, and the server's threads and memory stay bounded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import damdup
from tests.entry.test_webhooks import Serving, wait_for
from tests.servers.config import write_config

SECRET = "archive-secret-for-the-hostile-tests"
DEEP = 100_000  # levels of nesting: far past the parser's recursion limit


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "archive").mkdir()
    config = folder / "damdup.toml"
    env = write_config(
        config, folder / "index.sqlite", {"archive": ("filesystem", {"root": folder / "archive"})}
    )
    damdup("sync", "--config", str(config), "-q", env=env)
    server = Serving(config, {**env, "DAMDUP_ARCHIVE_WEBHOOK_SECRET": SECRET}, folder / "serve.log")
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
