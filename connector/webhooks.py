"""`damdup serve --config`: platforms' webhooks, the checks they start, and lookups.

Routes mounted on the review server (connector/serve.py `App`):

- `POST /hooks/<unit>`: a signed notification that an asset of the unit is new
  or changed, JSON `{"asset_id": ..., "event": "created"|"updated", "url"?: ...}`.
  Answered 202 at once with the check's id; a bounded queue served by worker
  threads runs `Checker.check`. docs/webhooks.md is the integrators' guide.
- `GET /api/checks/<id>`, `GET /api/checks?unit=&asset_id=&limit=`: stored checks.
- `POST /api/lookup`: which indexed asset an image is (an upload, or JSON
  `{"url": ...}` under a configured unit's base URL).

A webhook is called by platform hosts, not by a reviewer's browser, so it
skips the review routes' Host and same-origin checks: the HMAC is its
protection. Its checks run in this order, and a refused request changes
nothing (no check, no remembered signature, nothing fetched):

    413 body over the cap            404 unit unknown or without a secret
    401 unsigned, stale, forged      400 not JSON, wrong shape
    422 `url` outside the base URL   503 queue full (Retry-After)
    409 replay (signature already taken)

The replay check comes last, with the queue place already reserved: the
signature is remembered only for a notification that is accepted, so a sender
may resend one that was refused for a full queue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import structlog
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter
from adapters.base import reason as error_text
from connector.core.config import Config, ConfigError, env_prefix
from connector.core.index import CheckRow, IndexStore
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.core.urls import url_under
from connector.engine.check import Checker, LookupRefused
from connector.engine.ingest import TooLarge, check_size
from connector.serve import App, json_body, json_error, json_response
from connector.units import build_adapters

__all__ = [
    "REPLAY_WINDOW_S",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TIMESTAMP_WINDOW_S",
    "WebhookService",
    "secret_variable",
    "sign",
    "url_under",
]

log = structlog.get_logger(__name__)

TIMESTAMP_HEADER = "X-Damdup-Timestamp"
SIGNATURE_HEADER = "X-Damdup-Signature"
SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
TIMESTAMP = re.compile(r"-?[0-9]{1,12}")
TIMESTAMP_WINDOW_S = 300
# Longer than the two-sided timestamp window: a signature still inside the
# window is always remembered.
REPLAY_WINDOW_S = 2 * TIMESTAMP_WINDOW_S
MIN_SECRET_CHARS = 16
EVENTS = frozenset({"created", "updated"})
MAX_ASSET_ID_CHARS = 512
RETRY_AFTER_S = 5
RESUME_LIMIT = 10_000  # newest checks looked at for unfinished ones when the server starts
CHECKS_LIMIT_MAX = 1000
CHECK_ID = re.compile(r"[0-9]{1,19}")
MAX_CHECK_ID = 2**63 - 1  # SQLite's largest INTEGER
# Multipart framing around an uploaded image, on top of max_file_mb.
UPLOAD_OVERHEAD_BYTES = 64 * 1024
IMAGE_TYPES = re.compile(r"image/[a-z0-9.+-]+")
CONTROL = re.compile(r"[\x00-\x20\x7f\\]")


def secret_variable(unit: str) -> str:
    return f"{env_prefix(unit)}WEBHOOK_SECRET"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The `X-Damdup-Signature` value: HMAC-SHA256 over "<timestamp>.<body>"."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def check_dict(row: CheckRow) -> dict[str, Any]:
    status = "queued" if row.finished_at is None else ("failed" if row.error else "done")
    return {**asdict(row), "status": status, "href": f"/api/checks/{row.id}"}


class Refused(Exception):
    """A notification refused: `reason` for the caller, `logged` (when it
    says more than the caller may learn) for the operator."""

    def __init__(self, status: int, code: str, reason: str, logged: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason
        self.logged = logged or reason


class WebhookService:
    """The routes of this module over one Checker and its worker threads."""

    def __init__(
        self,
        checker: Checker,
        secrets: Mapping[str, bytes],
        base_urls: Mapping[str, str | None],
        settings: Settings,
    ) -> None:
        self.checker = checker
        self.secrets = dict(secrets)
        self.base_urls = dict(base_urls)
        self.settings = settings
        self.jobs: queue.Queue[tuple[str, str, int] | None] = queue.Queue(
            maxsize=self.settings.webhook_queue
        )
        # A place in the queue is taken before anything is recorded, so that a
        # full queue refuses a notification without a trace.
        self.places = threading.BoundedSemaphore(self.settings.webhook_queue)
        self.workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> WebhookService:
        """Adapters for every configured unit; webhook secrets from the
        environment only (`DAMDUP_<UNIT>_WEBHOOK_SECRET`)."""
        adapters = build_adapters(config)
        secrets: dict[str, bytes] = {}
        for unit in config.units:
            value = os.environ.get(secret_variable(unit))
            if value is None:
                continue
            if not value.strip():
                # Set but empty (a `$(openssl rand ...)` that failed): an
                # error, as for a unit's other secrets, not a unit served
                # without webhooks.
                raise ConfigError(
                    f"unit {unit}: the environment variable {secret_variable(unit)} is empty; "
                    "set it to a long random value, or unset it for no webhooks"
                )
            if len(value) < MIN_SECRET_CHARS:
                raise ConfigError(
                    f"unit {unit}: {secret_variable(unit)} is shorter than "
                    f"{MIN_SECRET_CHARS} characters; use a long random value"
                )
            secrets[unit] = value.encode("utf-8")
        writes = {name: unit.writes for name, unit in config.units.items()}
        checker = Checker(config.settings.db, config.settings, adapters, writes)
        return cls(checker, secrets, _base_urls(adapters), config.settings)

    @property
    def hook_units(self) -> list[str]:
        return sorted(self.secrets)

    # -- life cycle --------------------------------------------------------------

    def mount(self, app: App) -> None:
        """Add the routes to `app` and start the workers."""
        app.add(
            "/hooks/<unit>",
            self.receive,
            ["POST"],
            same_origin=False,
            any_host=True,
            max_body_bytes=None,
            logs_refusals=True,  # as webhook.rejected
        )
        app.add("/api/checks", self.list_checks, ["GET"])
        # Any path segment: an id that is no number a check can have gets a 400
        # that says so, not a 404 for a missing page (or a crash past SQLite's range).
        app.add("/api/checks/<check_id>", self.one_check, ["GET"])
        app.add(
            "/api/lookup",
            self.lookup,
            ["POST"],
            same_origin=False,  # an upload is multipart; a lookup changes nothing
            max_body_bytes=self.settings.max_file_bytes + UPLOAD_OVERHEAD_BYTES,
        )
        self.start()

    def start(self) -> None:
        with self._lock:
            first = not self.workers
            while len(self.workers) < self.settings.webhook_workers:
                worker = threading.Thread(
                    target=self._work, name=f"damdup-check-{len(self.workers)}", daemon=True
                )
                worker.start()
                self.workers.append(worker)
        if first:
            self._resume()

    def _resume(self) -> None:
        """Checks accepted (202) but never finished, because the server was
        stopped or killed, are queued again, oldest first, as far as the queue
        has room; the rest stay recorded as queued until the next start."""
        store = open_store(self.checker.db_path, create=True)
        try:
            waiting = [
                row
                for row in reversed(store.checks(limit=RESUME_LIMIT))
                if row.finished_at is None and row.unit in self.checker.adapters
            ]
        finally:
            store.close()
        for row in waiting:
            if not self.places.acquire(blocking=False):
                log.warning("check.resume_deferred", waiting=len(waiting))
                return
            self.jobs.put((row.unit, row.asset_id, row.id))
            log.warning("check.resumed", unit=row.unit, asset_id=row.asset_id, check=row.id)

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the checks under way, then stop; checks still waiting stay
        recorded as received (queued) in the index."""
        with self._lock:
            workers, self.workers = self.workers, []
        while True:  # drop what waits: its rows stay queued in the index
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        for _ in workers:
            self.jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.checker.close()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self.places.release()
            unit, asset_id, check_id = job
            try:
                self.checker.check(unit, asset_id, check_id)
            except Exception as exc:  # the Checker records its own errors; this is a defect
                log.exception("check.crashed", unit=unit, asset_id=asset_id, check=check_id)
                store = open_store(self.checker.db_path, create=True)
                try:
                    store.finish_check(
                        check_id, None, f"unexpected {type(exc).__name__}: {error_text(exc)}"
                    )
                finally:
                    store.close()

    # -- POST /hooks/<unit> --------------------------------------------------------

    def receive(
        self, request: Request, store: IndexStore, arguments: Mapping[str, Any]
    ) -> Response:
        unit = str(arguments["unit"])
        try:
            return self._receive(request, store, unit)
        except Refused as refused:
            log.warning(
                "webhook.rejected",
                unit=unit[:100],
                path=request.path[:200],
                status=refused.status,
                reason=refused.logged,
                remote_addr=request.remote_addr,
            )
            response = json_error(refused.status, refused.code, refused.reason)
            if refused.status == 503:
                response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response

    def _receive(self, request: Request, store: IndexStore, unit: str) -> Response:
        body = self._body(request)
        secret = self.secrets.get(unit)
        if secret is None:
            # Unknown units and units without a secret look the same from outside.
            raise Refused(
                404,
                "unknown_unit",
                f"no unit {unit} accepts webhooks here",
                logged=f"unit {unit} has no {secret_variable(unit)}"
                if unit in self.base_urls
                else f"no unit {unit} is configured",
            )
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)
        if not timestamp or not signature:
            raise Refused(
                401, "unsigned", f"the {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are needed"
            )
        timestamp = timestamp.strip()
        if not TIMESTAMP.fullmatch(timestamp):
            raise Refused(401, "stale", f"{TIMESTAMP_HEADER} must be whole Unix seconds")
        now = time.time()
        if abs(now - int(timestamp)) > TIMESTAMP_WINDOW_S:
            raise Refused(
                401,
                "stale",
                f"stale timestamp: more than {TIMESTAMP_WINDOW_S} s from this server's clock",
            )
        given = SIGNATURE.fullmatch(signature.strip())
        expected = sign(secret, timestamp, body)
        if given is None or not hmac.compare_digest(expected, f"sha256={given.group(1).lower()}"):
            raise Refused(401, "signature", "the signature does not match the body")
        asset_id, event, url = self._notification(body)
        if url is not None:
            base = self.base_urls.get(unit)
            why = "the unit has no base URL: send no url" if base is None else url_under(url, base)
            if why is not None:
                raise Refused(422, "url", f"url refused, nothing fetched: {why}")
        if not self.places.acquire(blocking=False):
            raise Refused(503, "busy", f"{self.settings.webhook_queue} checks are waiting already")
        try:
            if not store.first_sighting(unit, expected, now, REPLAY_WINDOW_S):
                raise Refused(409, "replay", "this notification was received already")
            check_id = store.start_check(unit, asset_id, "webhook")
            self.jobs.put_nowait((unit, asset_id, check_id))
        except BaseException:
            self.places.release()
            raise
        log.info("webhook.accepted", unit=unit, asset_id=asset_id, kind=event, check=check_id)
        return json_response(
            {"check": check_id, "status": "queued", "href": f"/api/checks/{check_id}"}, 202
        )

    def _body(self, request: Request) -> bytes:
        cap = self.settings.webhook_max_body_bytes
        length = request.content_length
        if length is not None and length > cap:
            raise Refused(413, "too_large", f"the body is over {cap} bytes")
        stream = request.stream
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            chunk = stream.read(cap + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise Refused(413, "too_large", f"the body is over {cap} bytes")
        return b"".join(chunks)

    @staticmethod
    def _notification(body: bytes) -> tuple[str, str, str | None]:
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused(400, "invalid", f"the body is not JSON: {error_text(exc)}") from None
        except RecursionError:
            raise Refused(400, "invalid", "the body is JSON nested too deeply") from None
        if not isinstance(payload, dict):
            raise Refused(400, "invalid", "the body must be a JSON object")
        unknown = sorted(set(payload) - {"asset_id", "event", "url"})
        if unknown:
            raise Refused(400, "invalid", f"unknown field(s): {', '.join(unknown)}")
        asset_id = payload.get("asset_id")
        if isinstance(asset_id, int) and not isinstance(asset_id, bool):
            asset_id = str(asset_id)
        if not isinstance(asset_id, str) or not asset_id.strip():
            raise Refused(400, "invalid", "asset_id (a non-empty string) is required")
        if len(asset_id) > MAX_ASSET_ID_CHARS or CONTROL.search(asset_id.replace(" ", "")):
            raise Refused(400, "invalid", "asset_id is too long or holds control characters")
        event = payload.get("event")
        if event not in EVENTS:
            raise Refused(400, "invalid", f"event must be one of {', '.join(sorted(EVENTS))}")
        url = payload.get("url")
        if url is not None and not isinstance(url, str):
            raise Refused(400, "invalid", "url must be a string")
        return asset_id, str(event), url

    # -- GET /api/checks ------------------------------------------------------------

    def list_checks(
        self, request: Request, store: IndexStore, arguments: Mapping[str, Any]
    ) -> Response:
        try:
            limit = int(request.args.get("limit", 100))
        except ValueError:
            return json_error(400, "invalid", "limit must be a whole number")
        if not 1 <= limit <= CHECKS_LIMIT_MAX:
            return json_error(400, "invalid", f"limit must be between 1 and {CHECKS_LIMIT_MAX}")
        rows = store.checks(
            request.args.get("unit") or None, request.args.get("asset_id") or None, limit
        )
        return json_response({"checks": [check_dict(row) for row in rows]})

    def one_check(
        self, request: Request, store: IndexStore, arguments: Mapping[str, Any]
    ) -> Response:
        text = str(arguments["check_id"])
        if not CHECK_ID.fullmatch(text) or not 1 <= int(text) <= MAX_CHECK_ID:
            return json_error(
                400, "invalid", f"a check id is a whole number from 1 to {MAX_CHECK_ID}"
            )
        row = store.check(int(text))
        if row is None:
            return json_error(404, "unknown_check", f"no check {arguments['check_id']}")
        return json_response(check_dict(row))

    # -- POST /api/lookup -----------------------------------------------------------

    def lookup(self, request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
        data: bytes | None = None
        url: str | None = None
        mimetype = request.mimetype
        if mimetype == "multipart/form-data":
            upload = request.files.get("file")
            if upload is None:
                return json_error(400, "invalid", "send the image as the form field `file`")
            data = upload.read(self.settings.max_file_bytes + 1)
        elif IMAGE_TYPES.fullmatch(mimetype):
            data = request.get_data(cache=False)
        elif mimetype == "application/json":
            payload = json_body(request)
            if not isinstance(payload, dict) or not isinstance(payload.get("url"), str):
                return json_error(400, "invalid", 'send JSON {"url": "..."}')
            url = payload["url"]
        else:
            return json_error(
                415,
                "content_type",
                "send an image (multipart field `file`, or a body of type image/*) "
                'or JSON {"url": ...}',
            )
        if data is not None:  # an upload over the cap, or empty: refused before any work
            try:
                check_size(len(data), self.settings.max_file_bytes)
            except TooLarge as exc:
                return json_error(413, "too_large", error_text(exc))
            if not data:
                return json_error(400, "invalid", "the image is empty")
        try:
            answer = self.checker.lookup(data=data, url=url)
        except LookupRefused as exc:
            log.info("lookup.refused", reason=error_text(exc), remote_addr=request.remote_addr)
            return json_error(422, "refused", error_text(exc))
        return json_response(answer)


def _base_urls(adapters: Mapping[str, Adapter[Any]]) -> dict[str, str | None]:
    urls: dict[str, str | None] = {}
    for unit, adapter in adapters.items():
        base = getattr(adapter.settings, "base_url", None)
        urls[unit] = str(base) if base is not None else None
    return urls
