"""A fault-injecting HTTP proxy on 127.0.0.1, put in front of every test server
(the real WordPress and each emulator), so that one contract suite can make any
platform answer 429 with Retry-After, 500, 401, an HTML page instead of JSON,
too slowly, or with a body cut short.

The proxy forwards the Host header unchanged, so servers build their absolute
URLs with the proxy's address, and it logs every request it forwards.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)

FAULTS = (
    "429", "500", "503", "401", "html", "timeout", "truncated", "reset", "slow", "shape",
)  # fmt: skip


@dataclass
class Fault:
    kind: str
    times: int
    path_contains: str
    retry_after: int
    delay_s: float


@dataclass(frozen=True)
class Forwarded:
    method: str
    path: str  # with its query string
    status: int
    fault: str | None
    response_bytes: int


class _QuietServer(ThreadingHTTPServer):
    """A client that resets its connection mid-request is no error of the
    proxy's: socketserver printed its traceback to stderr (one appeared in
    the middle of `make demo`'s output, as the real servers were filled)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults: list[Fault] = []
        self.log: list[Forwarded] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests handled at once since clear()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET
            # WebDAV's methods (RFC 4918, RFC 5323 SEARCH) for webdav and nextcloud.
            do_PROPFIND = do_PROPPATCH = do_SEARCH = do_REPORT = do_MKCOL = do_GET
            do_COPY = do_MOVE = do_GET

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(
        self,
        kind: str,
        times: int = 1,
        path_contains: str = "",
        retry_after: int = 1,
        delay_s: float = 3.0,
    ) -> None:
        """The next `times` requests whose path contains `path_contains` get
        this fault instead of (or, for `truncated`, as well as) the server's answer."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind}; one of {FAULTS}")
        with self.lock:
            self.faults.append(Fault(kind, times, path_contains, retry_after, delay_s))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()
            self.max_in_flight = 0

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Forwarded]:
        with self.lock:
            return [
                entry
                for entry in self.log
                if (method is None or entry.method == method) and path_contains in entry.path
            ]

    def _take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.path_contains in path:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _record(self, method: str, path: str, status: int, fault: str | None, size: int) -> None:
        with self.lock:
            self.log.append(Forwarded(method, path, status, fault, size))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._forward(handler)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        method, path = handler.command, handler.path
        fault = self._take_fault(path)
        if fault is not None and fault.kind == "slow":  # the real answer, late
            time.sleep(fault.delay_s)
            fault = None
        if fault is not None and fault.kind != "truncated":
            # Logged before answering: a time-out answers only after its delay,
            # when the client's retry may already be logged.
            self._record(method, path, _FAULT_STATUS.get(fault.kind, 0), fault.kind, 0)
            self._answer_fault(handler, fault)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            upstream.request(method, path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            status = response.status
            # A HEAD answer has no body but the length a GET would have: keep it.
            keep_length = method == "HEAD"
            reply_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in HOP_HEADERS and (keep_length or k.lower() != "content-length")
            ]
        except OSError as exc:
            self._record(method, path, 502, None, 0)
            self._send(handler, 502, [("Content-Type", "text/plain")], f"upstream: {exc}".encode())
            return
        finally:
            upstream.close()
        if fault is not None:  # truncated: promise the whole body, send half, hang up
            # Logged first: the client's retry may arrive before the hang-up ends.
            self._record(method, path, status, "truncated", len(payload) // 2)
            handler.send_response(status)
            for key, value in reply_headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            _hang_up(handler)
            return
        # Logged before answering: the client may read the log the moment it
        # has its answer.
        self._record(method, path, status, None, len(payload))
        self._send(handler, status, reply_headers, payload)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], payload: bytes
    ) -> None:
        handler.send_response(status)
        for key, value in headers:
            handler.send_header(key, value)
        if not any(key.lower() == "content-length" for key, _ in headers):
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)

    def _answer_fault(self, handler: BaseHTTPRequestHandler, fault: Fault) -> None:
        kind = fault.kind
        if kind == "timeout":
            time.sleep(fault.delay_s)
            handler.close_connection = True
            _hang_up(handler)
            return
        if kind == "reset":
            handler.close_connection = True
            _hang_up(handler)
            return
        if kind == "shape":  # valid JSON, 200, but nothing the platform would say
            body = b'{"unexpected": ["shape"], "data": "not a list", "result": 3}'
            self._send(handler, 200, [("Content-Type", "application/json")], body)
            return
        if kind == "html":
            page = (
                b"<!DOCTYPE html><html><head><title>Service temporarily in maintenance"
                b"</title></head><body><h1>Maintenance</h1></body></html>"
            )
            self._send(handler, 200, [("Content-Type", "text/html; charset=utf-8")], page)
            return
        status = _FAULT_STATUS[kind]
        headers = [("Content-Type", "application/json")]
        if kind in ("429", "503"):
            headers.append(("Retry-After", str(fault.retry_after)))
        message = {
            "429": b'{"message": "Too many requests"}',
            "500": b'{"message": "Internal server error"}',
            "503": b'{"message": "Service unavailable"}',
            "401": b'{"message": "Invalid credentials"}',
        }[kind]
        self._send(handler, status, headers, message)


_FAULT_STATUS = {"429": 429, "500": 500, "503": 503, "401": 401, "html": 200, "shape": 200}


def _hang_up(handler: BaseHTTPRequestHandler) -> None:
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)
