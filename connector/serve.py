"""`damdup serve`: the review page and its JSON API, on 127.0.0.1 by default.

Routes (more are added with `App.add`: `damdup serve --config` mounts the
platforms' webhooks, the checks and the lookup of connector/webhooks.py):

- `GET /review`: the page; plain HTML and a little JavaScript, all inline
  (no CDN, nothing fetched from elsewhere).
- `GET /api/review/queue?decided=1&limit=N`: the pairs to review.
- `POST /api/review/decide`: JSON `{a, b, decision, by, a_sha256?, b_sha256?}`.
- `GET /thumb/<sha256>`: the thumbnail the index keeps of that content.

The server holds the index and writes decisions, so it guards against other
sites in the reviewer's browser: the Host header must name this machine (a
DNS-rebinding page cannot pass), and a POST must carry JSON (a plain HTML form
cannot) and, when the browser says where it comes from, come from this origin.
Routes that other servers call (webhooks) opt out of both and check their
callers themselves.
Errors are JSON `{"error": message, "code": name}` with status 400, 403, 404,
405, 409, 413 or 415 (500 only for a defect), and each is logged as a
`request.rejected` event (a route that logs its own, a webhook, says
`webhook.rejected` instead).
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import structlog
from waitress import wasyncore
from waitress.server import create_server
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from adapters.base import reason as error_text
from connector.core.index import IndexMissing, IndexStore, SchemaError
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.engine.review import (
    InvalidInput,
    ReviewError,
    StalePair,
    UnknownAsset,
    decide,
    decision_dict,
    queue,
)

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_BODY_BYTES = 64 * 1024
QUEUE_LIMIT = 200  # pairs sent to the page at once; it asks again when they are done
QUEUE_LIMIT_MAX = 5000
LOGGED_PATH_CHARS = 200
SERVER_BODY_BYTES = 1024 * 1024  # the webhook body cap's largest setting
MAX_HEADER_BYTES = 32 * 1024  # request line and headers; browsers send a few KiB
LOOP_S = 1.0  # the server loop looks at its stop flag at least this often
SHUTDOWN_S = 5.0  # requests under way finish within this at shutdown

Handler = Callable[[Request, IndexStore, Mapping[str, Any]], Response]


class Route(NamedTuple):
    handler: Handler
    same_origin: bool
    any_host: bool
    max_body_bytes: int | None
    logs_refusals: bool


class ServeError(Exception):
    """The server cannot start as asked (no index, a refused address)."""


def json_response(payload: Any, status: int = 200) -> Response:
    response = Response(
        json.dumps(payload, ensure_ascii=False), status=status, mimetype="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


class ErrorResponse(Response):
    """A JSON error answer that remembers what it said, for the log."""

    code: str
    reason: str


def json_error(status: int, code: str, message: str) -> ErrorResponse:
    response = ErrorResponse(
        json.dumps({"error": message, "code": code}, ensure_ascii=False),
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    response.code, response.reason = code, message
    return response


def json_body(request: Request) -> Any:
    """The body parsed as JSON, None when it is not JSON. JSON nested deeper
    than the parser's recursion limit is refused (400), not a crash."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise InvalidInput("the JSON is nested too deeply") from None


ERROR_STATUS: dict[type[ReviewError], tuple[int, str]] = {
    InvalidInput: (400, "invalid"),
    UnknownAsset: (404, "unknown_asset"),
    StalePair: (409, "stale_pair"),
}


def _hostname(host: str) -> str:
    """`Host` without its port; IPv6 literals come in brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower() if "]" in host else host.lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


class App:
    """A small router over one index: each request opens its own connection
    (an SQLite connection belongs to the thread that made it, and the server
    answers requests in several threads)."""

    def __init__(self, db_path: Path | str, allowed_hosts: Iterable[str] = ()) -> None:
        self.db_path = db_path
        self.allowed_hosts = LOOPBACK_NAMES | {_hostname(h) for h in allowed_hosts}
        self.url_map = Map(strict_slashes=False)
        self.handlers: dict[str, Route] = {}

    def add(
        self,
        rule: str,
        handler: Handler,
        methods: Sequence[str],
        *,
        same_origin: bool = True,
        any_host: bool = False,
        max_body_bytes: int | None = MAX_BODY_BYTES,
        logs_refusals: bool = False,
    ) -> None:
        """Route `rule` to `handler`. A POST to a `same_origin` route must be
        JSON from this origin; a route called by other servers (a webhook)
        passes False and checks its callers itself. An `any_host` route is
        reached by whatever name the caller uses (platform hosts calling a
        webhook: the signature protects it, not the Host check).
        `max_body_bytes`: larger bodies are refused with 413 (None: the
        handler reads and limits the body itself). `logs_refusals`: the
        handler logs the errors it answers with itself."""
        endpoint = f"{handler.__module__}.{handler.__qualname__}:{rule}"
        self.url_map.add(Rule(rule, endpoint=endpoint, methods=list(methods)))
        self.handlers[endpoint] = Route(
            handler, same_origin, any_host, max_body_bytes, logs_refusals
        )

    @property
    def max_request_bytes(self) -> int:
        """The largest body the server reads before the app sees a request:
        the largest any route takes, and at least SERVER_BODY_BYTES, so that
        every route answers its own JSON 413 to a body a little over its cap.
        A larger body gets waitress's plain-text 413, unread."""
        caps = [route.max_body_bytes or 0 for route in self.handlers.values()]
        return max([SERVER_BODY_BYTES, *caps])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES
        response = self.dispatch(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        """The route's answer; every error answer is logged once."""
        try:
            response, logged = self._dispatch(request)
        except Exception:
            log.exception(
                "request.failed",
                method=request.method,
                path=request.path[:LOGGED_PATH_CHARS],
                remote_addr=request.remote_addr,
            )
            return json_error(500, "internal", "the server failed on this request; see its log")
        if isinstance(response, ErrorResponse) and not logged:
            log.warning(
                "request.rejected",
                method=request.method,
                path=request.path[:LOGGED_PATH_CHARS],
                status=response.status_code,
                code=response.code,
                reason=response.reason[: LOGGED_PATH_CHARS * 2],
                remote_addr=request.remote_addr,
            )
        return response

    def _dispatch(self, request: Request) -> tuple[Response, bool]:
        """The answer, and whether the handler logged it already."""
        known_host = _hostname(request.host) in self.allowed_hosts

        def refused_host() -> Response:
            names = ", ".join(sorted(self.allowed_hosts))
            return json_error(403, "host", f"this server answers only to {names}")

        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, arguments = adapter.match()
        except NotFound:
            if not known_host:
                return refused_host(), False
            return json_error(404, "not_found", f"no such page: {request.path}"), False
        except MethodNotAllowed as exc:
            if not known_host:
                return refused_host(), False
            response = json_error(405, "method", f"{request.method} is not allowed here")
            response.headers["Allow"] = ", ".join(exc.valid_methods or ())
            return response, False
        except HTTPException as exc:  # a redirect to the canonical URL
            if not known_host:
                return refused_host(), False
            return exc.get_response(request.environ), False
        handler, same_origin, any_host, max_body_bytes, logs_refusals = self.handlers[endpoint]
        if not known_host and not any_host:
            return refused_host(), False
        request.max_content_length = max_body_bytes
        if same_origin and request.method not in ("GET", "HEAD", "OPTIONS"):
            refused = self._cross_site(request)
            if refused is not None:
                return refused, False
        store = open_store(self.db_path, create=True)
        try:
            return handler(request, store, arguments), logs_refusals
        except ReviewError as exc:
            status, code = ERROR_STATUS.get(type(exc), (400, "invalid"))
            return json_error(status, code, error_text(exc)), False
        except HTTPException as exc:  # a body over MAX_BODY_BYTES
            return json_error(exc.code or 400, "request", exc.description or exc.name), False
        finally:
            store.close()

    @staticmethod
    def _cross_site(request: Request) -> Response | None:
        """A forged request from another site: refused before anything is read."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return json_error(403, "cross_origin", f"requests from {origin} are refused")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if origin is None and fetch_site not in (None, "same-origin", "none"):
            return json_error(403, "cross_origin", "requests from other sites are refused")
        if request.mimetype != "application/json":
            return json_error(415, "content_type", "send JSON (Content-Type: application/json)")
        return None


# -- review routes ----------------------------------------------------------------


def review_page(request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
    nonce = secrets.token_urlsafe(16)
    response = Response(PAGE.replace("{nonce}", nonce), mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; "
        f"script-src 'nonce-{nonce}'; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def to_review(request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
    return Response(status=302, headers={"Location": "/review"})


def review_queue(request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
    decided = request.args.get("decided", "0").lower() in ("1", "true", "yes")
    try:
        limit = int(request.args.get("limit", QUEUE_LIMIT))
    except ValueError:
        raise InvalidInput("limit must be a whole number") from None
    if not 1 <= limit <= QUEUE_LIMIT_MAX:
        raise InvalidInput(f"limit must be between 1 and {QUEUE_LIMIT_MAX}")
    items = queue(store, include_decided=decided)
    return json_response(
        {
            "total": len(items),
            "undecided": sum(not item.decided for item in items),
            "items": [item.as_dict() for item in items[:limit]],
        }
    )


def review_decide(request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
    body = json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object {a, b, decision, by}")
    fields: dict[str, str] = {}
    for name in ("a", "b", "decision", "by", "a_sha256", "b_sha256"):
        value = body.get(name)
        if value is None and name in ("a_sha256", "b_sha256"):
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"field {name!r}: a string is required")
        fields[name] = value
    expect = None
    if "a_sha256" in fields or "b_sha256" in fields:
        expect = (fields.get("a_sha256", ""), fields.get("b_sha256", ""))
    row = decide(store, fields["a"], fields["b"], fields["decision"], fields["by"], expect=expect)
    return json_response({"a": fields["a"], "b": fields["b"], "decision": decision_dict(row)})


def thumbnail(request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
    digest = str(arguments["sha256"])
    if not SHA256_HEX.fullmatch(digest):
        raise InvalidInput("a thumbnail is addressed by a SHA-256 digest: 64 lowercase hex digits")
    fingerprint = store.fingerprint(digest)
    if fingerprint is None:
        return json_error(404, "unknown_content", f"no image with digest {digest} in the index")
    response = Response(fingerprint.thumb, mimetype="image/jpeg")
    # Addressed by content: the bytes behind a digest never change.
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return response


def no_icon(request: Request, store: IndexStore, arguments: Mapping[str, Any]) -> Response:
    return Response(status=204)


def make_app(
    db_path: str | Path,
    allowed_hosts: Iterable[str] = (),
    extend: Callable[[App], None] | None = None,
) -> App:
    """The review server's WSGI application over the index at `db_path`.
    `allowed_hosts`: names besides the loopback ones that the Host header may
    carry (the name of a machine it is served from). `extend` adds further
    routes (connector.webhooks: webhooks, checks, lookup)."""
    try:  # refuses a missing index, or one of a newer schema, now, not per request
        open_store(db_path, create=False).close()
    except IndexMissing as exc:
        raise ServeError(f"{exc}: run `damdup scan` or `damdup sync` first") from exc
    except SchemaError as exc:
        raise ServeError(str(exc)) from exc
    app = App(db_path, allowed_hosts)
    app.add("/", to_review, ["GET"])
    app.add("/review", review_page, ["GET"])
    app.add("/api/review/queue", review_queue, ["GET"])
    app.add("/api/review/decide", review_decide, ["POST"])
    app.add("/thumb/<sha256>", thumbnail, ["GET"])
    app.add("/favicon.ico", no_icon, ["GET"])
    if extend is not None:
        extend(app)
    return app


class ReviewServer:
    """The app behind waitress, bounded: `threads` threads answer whole
    requests (waitress reads each request completely before a thread sees
    it, so a slow or stalled sender holds no thread), at most `connections`
    are open (more wait in the kernel's listen backlog until one closes), and
    a connection that sends nothing for `read_timeout_s` while its request is
    incomplete, or while idle between requests, is closed.

    socketserver's shape, for callers of the werkzeug server this replaced:
    `server_port`, `serve_forever()`, `shutdown()` (from another thread;
    returns once the loop stopped), `server_close()`."""

    def __init__(self, app: App, host: str, port: int, settings: Settings) -> None:
        listener = _listening_socket(host, port)
        self._map: dict[int, Any] = {}
        timeout_s = settings.serve_read_timeout_s
        try:
            self.server: Any = create_server(
                app,
                map=self._map,
                sockets=[listener],
                threads=settings.serve_threads,
                # The listener and waitress's wake-up pipe count as two.
                connection_limit=settings.serve_connections + 2,
                channel_timeout=timeout_s,
                cleanup_interval=max(1, min(timeout_s // 4, 30)),
                # poll(2): select(2) fails past 1024 open descriptors.
                asyncore_use_poll=True,
                # Buffered per connection before the request is whole: small, so
                # many stalled senders cannot hold much memory (bodies spill to
                # a temporary file beyond inbuf_overflow).
                max_request_header_size=MAX_HEADER_BYTES,
                inbuf_overflow=MAX_BODY_BYTES,
                max_request_body_size=app.max_request_bytes,
                ident="damdup",
            )
        except BaseException:
            listener.close()
            raise
        self.server_port: int = self.server.effective_port
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=LOOP_S, use_poll=True, map=self._map, count=1)
        finally:
            self._stopped.set()

    def stop(self) -> None:
        """Ask the loop to stop within LOOP_S; safe in a signal handler."""
        self._stop.set()

    def shutdown(self) -> None:
        self._stop.set()
        self.server.pull_trigger()  # wakes the loop's poll
        self._stopped.wait()

    def server_close(self) -> None:
        self.server.task_dispatcher.shutdown(timeout=SHUTDOWN_S)
        self.server.close()  # the listener and the wake-up pipe
        for channel in list(self._map.values()):
            channel.handle_close()


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound to the first address `host` resolves to, as werkzeug did (waitress
    would listen on every one, each with its own port 0)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


def make_review_server(
    db_path: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allowed_hosts: Iterable[str] = (),
    extend: Callable[[App], None] | None = None,
    settings: Settings | None = None,
) -> ReviewServer:
    """A server bound to `host:port` (port 0: a free one, see
    `server.server_port`), limited by `settings` (default: from the
    environment); `serve_forever()` runs it, `shutdown()` stops it."""
    app = make_app(db_path, allowed_hosts=[host, *allowed_hosts], extend=extend)
    return ReviewServer(app, host, port, settings or Settings())


def serve(
    db_path: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allowed_hosts: Iterable[str] = (),
    announce: Callable[[str], None] | None = None,
    extend: Callable[[App], None] | None = None,
    settings: Settings | None = None,
) -> None:
    """Serve the review page until Ctrl-C or SIGTERM, then return once the
    requests under way are answered; `announce` is told its address once the
    server listens (ServeError before that: no index, port taken)."""
    server = make_review_server(db_path, host, port, allowed_hosts, extend, settings)
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # A flag the loop looks at, not an exception inside one of its handlers.
        previous = {sig: signal.signal(sig, lambda *_: server.stop()) for sig in stopping}
    try:
        if announce is not None:
            shown = f"[{host}]" if ":" in host else host
            announce(f"http://{shown}:{server.server_port}/review")
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>damdup review</title>
<style nonce="{nonce}">
  :root { font-family: system-ui, sans-serif; color: #1a1a1a; background: #f4f4f2; }
  body { margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem 3rem; }
  header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: baseline;
           justify-content: space-between; }
  h1 { font-size: 1.4rem; margin: 0.5rem 0; }
  label { font-weight: 600; }
  input { font: inherit; padding: 0.3rem 0.5rem; margin-left: 0.4rem; }
  #status { min-height: 1.4rem; margin: 0.5rem 0; }
  #status.error { color: #a4000f; font-weight: 600; }
  .pair { background: #fff; border: 1px solid #ccc; border-radius: 6px; margin: 1rem 0;
          padding: 0.8rem 1rem; }
  .pair > h2 { font-size: 1rem; margin: 0 0 0.6rem; display: flex; gap: 0.8rem;
               align-items: baseline; flex-wrap: wrap; }
  .label { border-radius: 4px; padding: 0.1rem 0.5rem; font-size: 0.85rem; }
  .label.duplicate-candidate { background: #ffe3b3; }
  .label.similar { background: #d9e8ff; }
  .sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
  figure { margin: 0; }
  .frame { height: 300px; display: flex; align-items: center; justify-content: center;
           background: #eee; margin-bottom: 0.4rem; }
  .frame img { display: block; max-width: 100%; max-height: 100%; }
  figcaption { font-size: 0.9rem; overflow-wrap: anywhere; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 0.6rem;
       margin: 0.4rem 0; font-size: 0.9rem; }
  dt { color: #555; }
  dd { margin: 0; overflow-wrap: anywhere; }
  .missing { color: #a4000f; }
  ul.reasons { font-size: 0.85rem; color: #444; margin: 0.5rem 0; }
  .actions { display: flex; gap: 0.6rem; margin-top: 0.4rem; }
  button { font: inherit; padding: 0.35rem 1rem; border-radius: 4px; border: 1px solid #666;
           background: #fafafa; cursor: pointer; }
  button:hover:not(:disabled) { background: #e8e8e8; }
  button:disabled { opacity: 0.5; cursor: wait; }
  button.same { border-color: #2d6a2d; }
  button.different { border-color: #8a1c1c; }
  .empty { font-size: 1.1rem; padding: 2rem 0; }
</style>
</head>
<body>
<header>
  <h1>damdup review</h1>
  <div><label for="reviewer">Reviewer</label><input id="reviewer" name="reviewer"
    autocomplete="name" placeholder="your name" maxlength="200"></div>
</header>
<p id="count" aria-live="polite">Loading…</p>
<p id="status" role="status"></p>
<main id="queue"></main>
<script nonce="{nonce}">
"use strict";
const NAME_KEY = "damdup.reviewer";
const nameField = document.getElementById("reviewer");
const list = document.getElementById("queue");
const count = document.getElementById("count");
const statusLine = document.getElementById("status");
let remaining = 0;

nameField.value = localStorage.getItem(NAME_KEY) || "";
nameField.addEventListener("input", () => {
  localStorage.setItem(NAME_KEY, nameField.value.trim());
});

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

function webLink(url) {
  // Only http(s) addresses become links: a platform's text is never run.
  try {
    const parsed = new URL(url);
    if (parsed.protocol === "http:" || parsed.protocol === "https:") {
      return el("a", {href: parsed.href, target: "_blank", rel: "noopener noreferrer"}, url);
    }
  } catch (error) { /* not a URL: shown as text */ }
  return document.createTextNode(url);
}

function bytes(size) {
  if (!size) return "unknown";
  return size >= 1048576 ? (size / 1048576).toFixed(1) + " MB"
       : size >= 1024 ? Math.round(size / 1024) + " KB" : size + " bytes";
}

function side(asset, name, item) {
  const facts = el("dl", {});
  const row = (term, value, missing) => {
    facts.append(el("dt", {}, term),
                 el("dd", missing ? {class: "missing"} : {}, value));
  };
  for (const field of ["location", "date", "department"]) {
    const value = asset.metadata[field];
    row(field, value ? String(value) : "missing", !value);
  }
  row("size", asset.width && asset.height ? asset.width + " \u00d7 " + asset.height + " px"
              : "unknown", false);
  row("file", bytes(asset.size_bytes) + (asset.format ? " · " + asset.format : ""), false);
  if (asset.copies.length) row("same bytes at", asset.copies.join(", "), false);
  const canonical = el("button", {type: "button", class: "canonical",
                                  "data-side": name, title: "make " + asset.key +
                                  " the canonical version"}, "make canonical");
  canonical.addEventListener("click", () => decide(item, "canonical", name));
  return el("figure", {"data-side": name},
    el("div", {class: "frame"},
       el("img", {src: "/thumb/" + asset.sha256, alt: asset.key, loading: "lazy"})),
    el("figcaption", {}, el("strong", {}, asset.key), el("br"), webLink(asset.url)),
    facts, canonical);
}

function card(item) {
  const node = el("article", {class: "pair", "data-a": item.a.key, "data-b": item.b.key,
                              "data-label": item.label});
  node.append(
    el("h2", {}, el("span", {class: "label " + item.label}, item.label),
       el("span", {}, "pHash distance " + item.phash_distance +
                      " · dHash distance " + item.dhash_distance)),
    el("div", {class: "sides"}, side(item.a, "a", item), side(item.b, "b", item)),
    el("ul", {class: "reasons"}, ...item.reasons.map((reason) => el("li", {}, reason))));
  const actions = el("div", {class: "actions"});
  const titles = {same: "one image: the copy is a duplicate",
                  different: "not the same image: never merge these two"};
  for (const decision of ["same", "different"]) {
    const button = el("button", {type: "button", class: decision, title: titles[decision]},
                      decision);
    button.addEventListener("click", () => decide(item, decision, "a"));
    actions.append(button);
  }
  node.append(actions);
  item.node = node;
  return node;
}

function showCount() {
  count.textContent = remaining === 1 ? "1 pair to review"
                    : remaining + " pairs to review";
}

async function load() {
  const response = await fetch("/api/review/queue", {headers: {Accept: "application/json"}});
  const data = await response.json();
  if (!response.ok) { say(data.error, true); return; }
  remaining = data.undecided;
  list.replaceChildren(...data.items.map(card));
  if (!data.items.length) list.append(el("p", {class: "empty"}, "Nothing left to review."));
  showCount();
}

async function decide(item, decision, canonicalSide) {
  const by = nameField.value.trim();
  if (!by) {
    say("Type your name in the Reviewer field first: every decision records who made it.", true);
    nameField.focus();
    return;
  }
  let [first, second] = [item.a, item.b];
  if (canonicalSide === "b") [first, second] = [second, first];
  const buttons = item.node.querySelectorAll("button");
  buttons.forEach((button) => { button.disabled = true; });
  try {
    const response = await fetch("/api/review/decide", {
      method: "POST",
      headers: {"Content-Type": "application/json", Accept: "application/json"},
      body: JSON.stringify({a: first.key, b: second.key, a_sha256: first.sha256,
                            b_sha256: second.sha256, decision: decision, by: by}),
    });
    const data = await response.json();
    if (!response.ok) {
      say(data.error, true);
      if (response.status === 404 || response.status === 409) await load();
      return;
    }
    const what = decision === "canonical" ? first.key + " is canonical" : decision;
    say("Recorded: " + item.a.key + " / " + item.b.key + ": " + what + " (by " + by + ")",
        false);
    item.node.remove();
    remaining -= 1;
    showCount();
    if (!list.querySelector("article")) await load();
  } catch (error) {
    say("The server did not answer: " + error, true);
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

load().catch((error) => say("Could not load the queue: " + error, true));
</script>
</body>
</html>
"""
