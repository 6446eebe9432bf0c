"""`damdup serve --config`: signed webhooks start checks, /api/checks shows them,
/api/lookup answers which version is authoritative.

The server runs as a child process (`damdup serve --config F --port 0`), as an
operator starts it; platforms are the Drupal emulator and the real WordPress
(its damdup plugin sends the notifications), each behind a fault proxy whose
request log shows what damdup fetched. A refused notification must leave the
index, the platforms' marks and the proxy log exactly as they were.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connector.core.index import SQLiteStore
from connector.core.urls import url_under
from connector.webhooks import sign
from tests.conftest import PHOTOS, ROOT, damdup
from tests.contract.harness import Harness, start_harness
from tests.servers.config import write_config

LABELS = json.loads((PHOTOS.parent / "labels.json").read_text())["files"]
MUSEUM_SECRET = secrets.token_urlsafe(24)
METADATA = {"location": "Kauppatori", "date": "2024-05-01", "department": "Kaupunginmuseo"}


def photo(name: str, variant: str) -> bytes:
    for path, label in sorted(LABELS.items()):
        if label["photo"] == name and label["variant"] == variant:
            return (PHOTOS / path).read_bytes()
    raise LookupError(f"no {variant} of {name}")


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Serving:
    """`damdup serve --config` in a child process on a free port; its
    structlog lines (JSON on stderr) are read back from a file."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.session = requests.Session()
        self.session.trust_env = False
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "connector.cli", "serve", "--config", str(config),
                 "--port", "0"],
                cwd=ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )  # fmt: skip
        found = wait_for("the server's address", self._announced, timeout_s=60)
        self.url = found

    def _announced(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"damdup serve exited:\n{self.log.read_text()}")
        match = re.search(r"review page at (http://[^\s]+)/review", self.log.read_text())
        return match.group(1) if match else None

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    found.append(record)
        return found

    def post_hook(
        self,
        unit: str,
        body: bytes,
        secret: str | None,
        timestamp: int | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if secret is not None:
            stamp = str(int(time.time()) if timestamp is None else timestamp)
            sent["X-Damdup-Timestamp"] = stamp
            sent["X-Damdup-Signature"] = sign(secret.encode(), stamp, body)
        return self.session.post(f"{self.url}/hooks/{unit}", data=body, headers=sent, timeout=30)

    def check(self, check_id: int) -> dict[str, Any]:
        reply = self.session.get(f"{self.url}/api/checks/{check_id}", timeout=30)
        assert reply.status_code == 200, reply.text
        record: dict[str, Any] = reply.json()
        return record

    def finished(self, check_id: int, timeout_s: float = 60.0) -> dict[str, Any]:
        record: dict[str, Any] = wait_for(
            f"check {check_id}",
            lambda: (found := self.check(check_id))["status"] != "queued" and found,
            timeout_s,
        )
        return record

    def stop(self) -> None:
        self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def notification(asset_id: str, event: str = "created", **extra: Any) -> bytes:
    return json.dumps({"asset_id": asset_id, "event": event, **extra}).encode()


def synced(
    folder: Path, units: dict[str, tuple[str, dict[str, Any]]]
) -> tuple[Path, Path, dict[str, str]]:
    """A configuration of `units` in `folder`, synced once: (config, index, env)."""
    db = folder / "index.sqlite"
    config = folder / "damdup.toml"
    env = write_config(config, db, units)
    damdup("sync", "--config", str(config), "-q", env=env)
    return config, db, env


# -- the Drupal site: rejections, checks and lookups ------------------------------


@pytest.fixture(scope="module")
def museum(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Drupal unit (writes on) holding the original with its metadata, and
    a second configured unit without a webhook secret; synced once; served
    with one worker and a queue of one."""
    harness = start_harness("drupal")
    folder = tmp_path_factory.mktemp("webhooks")
    original = harness.add("P1030112.jpg", photo("china", "original"), METADATA)
    (folder / "archive").mkdir()
    config, db, env = synced(
        folder,
        {
            "museum": ("drupal", {**harness.settings(), "writes": True}),
            "archive": ("filesystem", {"root": str(folder / "archive")}),
        },
    )
    server = Serving(
        config,
        {
            **env,
            "DAMDUP_MUSEUM_WEBHOOK_SECRET": MUSEUM_SECRET,
            "DAMDUP_WEBHOOK_WORKERS": "1",
            "DAMDUP_WEBHOOK_QUEUE": "1",
        },
        folder / "serve.log",
    )
    try:
        yield {
            "harness": harness, "server": server, "db": db, "original": original,
            "config": config, "env": env,
        }  # fmt: skip
    finally:
        server.stop()
        harness.close()


def state(site: dict[str, Any]) -> dict[str, Any]:
    """Everything a refused notification must leave alone."""
    with sqlite3.connect(f"file:{site['db']}?mode=ro", uri=True) as db:
        tables = {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("checks", "webhook_seen", "assets", "fingerprints", "outbox")
        }
    db.close()
    harness: Harness = site["harness"]
    assert harness.proxy is not None
    return {
        **tables,
        "marks": harness.stored_marks(site["original"]),
        "platform_requests": harness.proxy.requests(),
    }


def rejected(site: dict[str, Any], reply: requests.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json()["code"] == code
    server: Serving = site["server"]
    lines = wait_for(
        "the rejection's log line",
        lambda: [e for e in server.events("webhook.rejected") if e["status"] == status],
        timeout_s=10,
    )
    line = lines[-1]
    assert line["remote_addr"] == "127.0.0.1" and line["level"] == "warning"
    text = server.log.read_text()
    assert MUSEUM_SECRET not in text and "sha256=" not in text


@pytest.fixture
def site(museum: dict[str, Any]) -> dict[str, Any]:
    assert museum["harness"].proxy is not None
    museum["harness"].proxy.clear()
    return museum


def _cases(original: str, base: str) -> list[tuple[str, dict[str, Any], int, str]]:
    body = notification(original)
    host_port = base.split("//", 1)[1].rstrip("/")
    return [
        ("unsigned", {"secret": None}, 401, "unsigned"),
        ("forged", {"secret": "not-the-museum-secret-at-all"}, 401, "signature"),
        ("stale", {"timestamp": int(time.time()) - 400}, 401, "stale"),
        ("future", {"timestamp": int(time.time()) + 400}, 401, "stale"),
        ("fractional timestamp", {"timestamp": "1700000000.5"}, 401, "stale"),
        ("oversized", {"body": body + b" " * 65536}, 413, "too_large"),
        ("malformed JSON", {"body": b'{"asset_id": '}, 400, "invalid"),
        ("a list", {"body": b"[1, 2]"}, 400, "invalid"),
        ("no asset_id", {"body": b'{"event": "created"}'}, 400, "invalid"),
        ("unknown event", {"body": notification(original, "deleted")}, 400, "invalid"),
        ("unknown unit", {"unit": "nosuchunit"}, 404, "unknown_unit"),
        ("unit without a secret", {"unit": "archive"}, 404, "unknown_unit"),
        ("url on another host", {"url": "http://169.254.169.254/latest/"}, 422, "url"),
        ("url on another port", {"url": "http://127.0.0.1:1/x.jpg"}, 422, "url"),
        ("url climbing out", {"url": f"{base}sites/../../etc/passwd"}, 422, "url"),
        ("url with encoded dots", {"url": f"{base}%2e%2e/admin"}, 422, "url"),
        ("url with a user", {"url": f"http://{host_port}@evil.example/"}, 422, "url"),
    ]


CASE_NAMES = [case[0] for case in _cases("x", "http://127.0.0.1:9/")]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_refused_notification_is_logged_and_changes_nothing(
    site: dict[str, Any], case: str
) -> None:
    harness: Harness = site["harness"]
    base = harness.settings()["base_url"]
    _, how, status, code = next(c for c in _cases(site["original"], base) if c[0] == case)
    before = state(site)
    extra = {"url": how["url"]} if "url" in how else {}
    body = how.get("body", notification(site["original"], **extra))
    secret = how.get("secret", MUSEUM_SECRET)
    reply = site["server"].post_hook(how.get("unit", "museum"), body, secret, how.get("timestamp"))
    rejected(site, reply, status, code)
    assert state(site) == before
    assert before["platform_requests"] == []  # nothing fetched


def test_a_tampered_body_fails_its_signature(site: dict[str, Any]) -> None:
    server: Serving = site["server"]
    stamp = str(int(time.time()))
    signed = sign(MUSEUM_SECRET.encode(), stamp, notification(site["original"]))
    before = state(site)
    reply = server.session.post(
        f"{server.url}/hooks/museum",
        data=notification("someone-else"),
        headers={"X-Damdup-Timestamp": stamp, "X-Damdup-Signature": signed},
        timeout=30,
    )
    rejected(site, reply, 401, "signature")
    assert state(site) == before


def test_an_oversized_chunked_body_is_refused_without_a_length(site: dict[str, Any]) -> None:
    server: Serving = site["server"]
    before = state(site)
    chunks = iter([b'{"asset_id": "', b"x" * 40000, b"x" * 40000, b'"}'])
    reply = server.session.post(
        f"{server.url}/hooks/museum",
        data=chunks,
        headers={"X-Damdup-Timestamp": str(int(time.time())), "X-Damdup-Signature": "sha256=0"},
        timeout=30,
    )
    rejected(site, reply, 413, "too_large")
    assert state(site) == before


def test_a_notification_is_checked_once_and_its_replay_refused(site: dict[str, Any]) -> None:
    server: Serving = site["server"]
    harness: Harness = site["harness"]
    copy = harness.add("P1030112 (1).jpg", photo("china", "byte_copy"), None)
    base = harness.settings()["base_url"]
    body = notification(copy, url=f"{base}sites/default/files/P1030112%20(1).jpg")
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Damdup-Timestamp": stamp,
        "X-Damdup-Signature": sign(MUSEUM_SECRET.encode(), stamp, body),
    }
    accepted = server.session.post(
        f"{server.url}/hooks/museum", data=body, headers=headers, timeout=30
    )
    assert accepted.status_code == 202, accepted.text
    answer = accepted.json()
    assert answer["status"] == "queued" and answer["href"] == f"/api/checks/{answer['check']}"
    record = server.finished(answer["check"])
    assert record["status"] == "done" and record["source"] == "webhook", record
    verdict = record["verdict"]
    # The original has the metadata: it is canonical; the new byte copy is a duplicate.
    assert verdict["role"] == "duplicate" and verdict["tier"] == "exact"
    assert verdict["canonical"]["asset_id"] == site["original"]
    assert {"location", "department"} <= set(verdict["metadata_missing"])
    assert {"duplicate", "metadata-missing"} <= set(harness.stored_marks(copy).labels)
    assert "canonical" in harness.stored_marks(site["original"]).labels
    listed = server.session.get(
        f"{server.url}/api/checks", params={"unit": "museum", "asset_id": copy}, timeout=30
    ).json()["checks"]
    assert [row["id"] for row in listed] == [answer["check"]]

    before = state(site)
    replay = server.session.post(
        f"{server.url}/hooks/museum", data=body, headers=headers, timeout=30
    )
    rejected(site, replay, 409, "replay")
    assert state(site) == before


def test_a_check_accepted_before_a_crash_is_run_at_the_next_start(
    site: dict[str, Any], tmp_path: Path
) -> None:
    """A server killed after its 202 leaves the check recorded as queued;
    the next server to start on the index runs it."""
    harness: Harness = site["harness"]
    copy = harness.add("P1030112 (2).jpg", photo("china", "byte_copy"), None)
    store = SQLiteStore(site["db"])
    try:
        check_id = store.start_check("museum", copy, "webhook")
    finally:
        store.close()
    env = {**site["env"], "DAMDUP_MUSEUM_WEBHOOK_SECRET": MUSEUM_SECRET}
    again = Serving(site["config"], env, tmp_path / "restart.log")
    try:
        record = again.finished(check_id)
        assert [e["check"] for e in again.events("check.resumed")] == [check_id]
    finally:
        again.stop()
    assert record["status"] == "done", record
    assert record["verdict"]["role"] == "duplicate"
    assert "duplicate" in harness.stored_marks(copy).labels


def test_a_full_queue_answers_503_and_keeps_nothing(site: dict[str, Any]) -> None:
    """One worker, a queue of one: the worker is held by a slow platform
    answer, the next notification waits, the third is refused."""
    server: Serving = site["server"]
    harness: Harness = site["harness"]
    assert harness.proxy is not None
    harness.proxy.inject("slow", times=1, path_contains="/jsonapi/media/image/", delay_s=3.0)
    first = server.post_hook("museum", notification(site["original"]), MUSEUM_SECRET)
    assert first.status_code == 202, first.text
    wait_for("the worker to be inside the slow request", lambda: harness.proxy.in_flight >= 1)
    second = server.post_hook("museum", notification(site["original"], "updated"), MUSEUM_SECRET)
    assert second.status_code == 202, second.text
    before = state(site)
    third = server.post_hook("museum", notification(site["original"], "created"), MUSEUM_SECRET)
    assert third.headers["Retry-After"].isdigit()
    rejected(site, third, 503, "busy")
    after = state(site)
    assert {k: v for k, v in after.items() if k != "platform_requests"} == {
        k: v for k, v in before.items() if k != "platform_requests"
    }
    for reply in (first, second):
        assert server.finished(reply.json()["check"])["status"] == "done"


def test_checks_api_answers_unknown_ids_and_bad_limits(site: dict[str, Any]) -> None:
    server: Serving = site["server"]
    missing = server.session.get(f"{server.url}/api/checks/999999", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_check"
    bad = server.session.get(f"{server.url}/api/checks", params={"limit": "x"}, timeout=30)
    assert bad.status_code == 400


def test_hooks_answer_any_host_name_and_the_review_routes_do_not(site: dict[str, Any]) -> None:
    """A platform host calls damdup by its network name: the webhook answers
    (here: 401, unsigned), while the review and checks routes keep refusing a
    Host that is not this machine's (DNS rebinding)."""
    server: Serving = site["server"]
    foreign = {"Host": "damdup.internal.example:8765"}
    hook = server.post_hook("museum", notification(site["original"]), None, headers=foreign)
    rejected(site, hook, 401, "unsigned")
    for path in ("/api/checks", "/review"):
        reply = server.session.get(server.url + path, headers=foreign, timeout=30)
        assert reply.status_code == 403 and reply.json()["code"] == "host", path


def test_lookup_of_an_uploaded_copy_names_the_canonical(site: dict[str, Any]) -> None:
    server: Serving = site["server"]
    before = state(site)
    reply = server.session.post(
        f"{server.url}/api/lookup",
        files={"file": ("copy.jpg", photo("china", "reencode_q60"), "image/jpeg")},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["match"] is True
    assert answer["canonical"]["unit"] == "museum"
    assert answer["canonical"]["asset_id"] == site["original"]
    after = state(site)
    assert after["checks"] == before["checks"] and after["assets"] == before["assets"]
    not_image = server.session.post(
        f"{server.url}/api/lookup", data=b"GIF89a broken", headers={"Content-Type": "image/gif"}
    )
    assert not_image.status_code == 422 and not_image.json()["code"] == "refused"


def test_lookup_of_an_upload_over_the_cap_is_413(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config, _db, env = synced(
        tmp_path, {"empty": ("filesystem", {"root": str(tmp_path / "empty")})}
    )
    server = Serving(config, {**env, "DAMDUP_MAX_FILE_MB": "1"}, tmp_path / "serve.log")
    try:
        big = photo("china", "original").ljust(2**20 + 1, b"\0")
        for sent in (
            {"data": big, "headers": {"Content-Type": "image/jpeg"}},
            {"files": {"file": ("big.jpg", big, "image/jpeg")}},
        ):
            reply = server.session.post(f"{server.url}/api/lookup", timeout=60, **sent)
            assert reply.status_code == 413, reply.text
            assert reply.json() == {
                "code": "too_large",
                "error": "file is over the 1,048,576 byte limit",
            }
    finally:
        server.stop()


def test_lookup_by_url_fetches_only_under_a_unit(site: dict[str, Any]) -> None:
    server: Serving = site["server"]
    harness: Harness = site["harness"]
    assert harness.proxy is not None
    store = SQLiteStore(site["db"])
    try:
        asset = store.find_asset(f"museum:{site['original']}")
    finally:
        store.close()
    assert asset is not None and asset.original_url is not None
    reply = server.session.post(
        f"{server.url}/api/lookup", json={"url": asset.original_url}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["canonical"]["asset_id"] == site["original"]
    harness.proxy.clear()
    outside = server.session.post(
        f"{server.url}/api/lookup", json={"url": "http://127.0.0.1:1/secret.jpg"}, timeout=60
    )
    assert outside.status_code == 422 and outside.json()["code"] == "refused"
    assert harness.proxy.requests() == []


def test_url_under_refuses_tricks() -> None:
    base = "https://media.hel.fi/wp/"
    assert url_under("https://media.hel.fi/wp/uploads/a.jpg", base) is None
    assert url_under("https://MEDIA.hel.fi:443/wp/a.jpg", base) is None
    for url in (
        "https://media.hel.fi/wpx/a.jpg",
        "https://media.hel.fi/wp/../admin",
        "https://media.hel.fi/wp/%2E%2E/admin",
        "https://media.hel.fi/wp/a%2fb",
        "https://media.hel.fi.evil.example/wp/a.jpg",
        "https://media.hel.fi@evil.example/wp/a.jpg",
        "http://media.hel.fi/wp/a.jpg",
        "https://media.hel.fi:8443/wp/a.jpg",
        "https://media.hel.fi/wp/a b.jpg",
        "https://media.hel.fi/wp\\..\\admin",
        "file:///etc/passwd",
        "https://media.hel.fi:99999/wp/",
    ):
        assert url_under(url, base) is not None, url


# -- the real WordPress: the damdup plugin notifies, damdup checks and marks --------


@pytest.mark.slow
def test_a_wordpress_upload_is_checked_and_marked(tmp_path: Path) -> None:
    wordpress = start_harness("wordpress")
    drupal = start_harness("drupal")
    server: Serving | None = None
    try:
        original = drupal.add("P1030112.jpg", photo("china", "original"), METADATA)
        config, _db, env = synced(
            tmp_path,
            {
                "wp": ("wordpress", {**wordpress.settings(), "writes": True}),
                "museum": ("drupal", {**drupal.settings(), "writes": True}),
            },
        )
        secret = secrets.token_urlsafe(24)
        server = Serving(config, {**env, "DAMDUP_WP_WEBHOOK_SECRET": secret}, tmp_path / "log")
        site = wordpress.server  # type: ignore[attr-defined]
        site.php(
            f"update_option('damdup_webhook_url', {json.dumps(server.url + '/hooks/wp')}); "
            f"update_option('damdup_webhook_secret', {json.dumps(secret)});"
        )

        # An editor's upload through the REST API, without location or department.
        record = site.upload("P1030112 (1).jpg", photo("china", "byte_copy"))
        asset_id = str(record["id"])

        def verdict() -> dict[str, Any] | None:
            rows = server.session.get(  # type: ignore[union-attr]
                f"{server.url}/api/checks",  # type: ignore[union-attr]
                params={"unit": "wp", "asset_id": asset_id},
                timeout=30,
            ).json()["checks"]
            done = [row for row in rows if row["status"] != "queued"]
            return done[0] if done else None

        check = wait_for("the upload's verdict", verdict, timeout_s=90)
        assert check["status"] == "done" and check["source"] == "webhook", check
        found = check["verdict"]
        assert found["role"] == "duplicate" and found["tier"] == "exact"
        assert (found["canonical"]["unit"], found["canonical"]["asset_id"]) == ("museum", original)
        assert {"location", "department"} <= set(found["metadata_missing"])
        marks = wordpress.stored_marks(asset_id)
        assert {"duplicate", "metadata-missing"} <= set(marks.labels)
        assert marks.canonical_url == found["canonical"]["url"]
        assert "canonical" in drupal.stored_marks(original).labels
        assert [e["unit"] for e in server.events("webhook.rejected")] == []

        # A wrong secret: damdup refuses and logs it; the upload itself succeeds.
        site.php("update_option('damdup_webhook_secret', 'not-the-secret-damdup-has');")
        other = site.upload("other.jpg", photo("china", "reencode_q60"))
        assert other["id"]
        refused = wait_for(
            "the refused notification",
            lambda: [e for e in server.events("webhook.rejected") if e["unit"] == "wp"],  # type: ignore[union-attr]
        )
        assert refused[0]["status"] == 401
        assert "refused with HTTP 401" in site.log_tail(200)
        assert (
            verdict() is not None
            and len(
                server.session.get(
                    f"{server.url}/api/checks", params={"unit": "wp"}, timeout=30
                ).json()["checks"]
            )
            == 1
        )
    finally:
        if server is not None:
            server.stop()
        wordpress.close()
        drupal.close()
