"""The shared HTTP client against a real local server behind the fault proxy."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
import requests
from structlog.testing import capture_logs
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from adapters.base import (
    AuthFailed,
    BadAsset,
    NotFound,
    RateLimited,
    RequestEvent,
    Unavailable,
)
from adapters.http import HttpClient, HttpError
from adapters.transport import parse_retry_after, redact_url
from tests.servers.common import Emulator, image_response, json_response
from tests.servers.faults import FaultProxy

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 5000


class Echo(Emulator):
    url_map = Map(
        [
            Rule("/items", endpoint="items"),
            Rule("/file.jpg", endpoint="file"),
            Rule("/status/<int:code>", endpoint="status"),
            Rule("/away", endpoint="away"),
            Rule("/text", endpoint="text"),
        ]
    )

    def items(self, request: Request) -> Response:
        return json_response({"items": [1, 2, 3], "asked": dict(request.args)})

    def file(self, request: Request) -> Response:
        return image_response(JPEG)

    def status(self, request: Request, code: int) -> Response:
        # Platforms often repeat the address asked for in their error message.
        said = f"platform says {code} {request.args.get('next', '')}".strip()
        return json_response({"message": said}, status=code)

    def away(self, request: Request) -> Response:
        return redirect("http://example.invalid/elsewhere")

    def text(self, request: Request) -> Response:
        return Response("plain words", content_type="text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[FaultProxy]:
    echo = Echo()
    echo.start()
    proxy = FaultProxy(echo.base_url)
    yield proxy
    proxy.close()
    echo.stop()


@pytest.fixture
def proxy(server: FaultProxy) -> FaultProxy:
    server.clear()
    return server


def client(proxy: FaultProxy, **options: object) -> HttpClient:
    # Generous time-outs: a loaded machine must not turn a test into a retry.
    settings: dict[str, object] = {"attempts": 3, "backoff_s": 0.01, "timeout": (10.0, 10.0)}
    settings.update(options)
    return HttpClient(proxy.url, **settings)  # type: ignore[arg-type]


def test_a_client_resetting_the_proxy_prints_no_traceback(
    proxy: FaultProxy, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client resetting its connection printed socketserver's traceback,
    once in the middle of `make demo`'s output; the proxy goes on serving."""
    peer = socket.create_connection(("127.0.0.1", proxy.server.server_port))
    peer.sendall(b"GET /items HTTP/1.1\r\nHost: x\r\n")  # half a request
    time.sleep(0.2)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # with SO_LINGER 0: a reset, not a FIN
    time.sleep(0.3)
    assert "Traceback" not in capfd.readouterr().err
    assert requests.get(proxy.url + "items", timeout=5).status_code == 200


def test_json_and_bytes(proxy: FaultProxy) -> None:
    http = client(proxy)
    assert http.get_json("items", {"page": 2})["asked"] == {"page": "2"}
    assert http.get_bytes("file.jpg") == JPEG


def test_the_proxy_keeps_a_head_answers_length(proxy: FaultProxy) -> None:
    """HEAD answers carry the length a GET would have (RFC 9110 9.3.2);
    adapters that read sizes from HEAD must see them through the proxy."""
    reply = client(proxy).request("HEAD", "file.jpg", expect="any")
    assert reply.headers["Content-Length"] == str(len(JPEG))
    assert client(proxy).get_bytes("file.jpg") == JPEG


def test_retry_after_is_honoured(proxy: FaultProxy) -> None:
    waits: list[float] = []
    proxy.inject("429", times=1, retry_after=7)
    assert client(proxy, sleep=waits.append).get_json("items")["items"] == [1, 2, 3]
    assert [r.fault for r in proxy.requests()] == ["429", None]
    assert waits == [7.0], "the client waited exactly the Retry-After it was given"


def test_server_errors_back_off_with_jitter_within_bounds(proxy: FaultProxy) -> None:
    waits: list[float] = []
    proxy.inject("500", times=3)
    http = client(proxy, attempts=4, backoff_s=0.5, max_backoff_s=30.0, sleep=waits.append)
    assert http.get_json("items")["items"] == [1, 2, 3]
    assert len(waits) == 3
    # Full jitter: each wait lies between 0 and the exponential bound of its attempt.
    for attempt, wait in enumerate(waits, start=1):
        assert 0 <= wait <= 0.5 * 2 ** (attempt - 1)


def test_long_retry_after_is_left_to_the_engine(proxy: FaultProxy) -> None:
    proxy.inject("429", times=1, retry_after=3600)
    with pytest.raises(RateLimited) as caught:
        client(proxy, max_retry_after_s=60).get_json("items")
    assert caught.value.retry_after == 3600
    assert len(proxy.requests()) == 1


def test_server_errors_are_retried_then_reported(proxy: FaultProxy) -> None:
    proxy.inject("500", times=10)
    with pytest.raises(Unavailable, match="500"):
        client(proxy, attempts=3).get_json("items")
    assert len(proxy.requests()) == 3


def test_503_without_retry_after_backs_off_and_recovers(proxy: FaultProxy) -> None:
    proxy.inject("503", times=1, retry_after=0)
    assert client(proxy).get_json("items")["items"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("code", "error"), [(401, AuthFailed), (403, AuthFailed), (404, NotFound), (400, HttpError)]
)
def test_client_errors_are_typed_and_not_retried(
    proxy: FaultProxy, code: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"platform says {code}"):
        client(proxy).get_json(f"status/{code}")
    assert len(proxy.requests()) == 1


def test_html_page_where_json_was_expected(proxy: FaultProxy) -> None:
    proxy.inject("html", times=1)
    with pytest.raises(Unavailable, match="HTML page titled 'Service temporarily in maintenance'"):
        client(proxy).get_json("items")


def test_text_where_a_file_was_expected(proxy: FaultProxy) -> None:
    with pytest.raises(BadAsset, match="expected a file but got text/plain"):
        client(proxy).get_bytes("text")


def test_truncated_body_is_retried(proxy: FaultProxy) -> None:
    proxy.inject("truncated", times=1, path_contains="file.jpg")
    assert client(proxy).get_bytes("file.jpg") == JPEG
    assert [r.fault for r in proxy.requests()] == ["truncated", None]


def test_timeout_is_retried_then_reported(proxy: FaultProxy) -> None:
    proxy.inject("timeout", times=5, delay_s=1.5)
    with pytest.raises(Unavailable, match="timed out"):
        client(proxy, attempts=2, timeout=(1.0, 1.0)).get_json("items")


def test_connection_reset_is_retried(proxy: FaultProxy) -> None:
    proxy.inject("reset", times=1)
    assert client(proxy).get_json("items")["items"] == [1, 2, 3]


def test_size_cap(proxy: FaultProxy) -> None:
    with pytest.raises(BadAsset, match="over the 100 byte cap"):
        client(proxy).get_bytes("file.jpg", max_bytes=100)


def test_other_hosts_are_refused(proxy: FaultProxy) -> None:
    http = client(proxy)
    with pytest.raises(BadAsset, match="not the unit's configured base URL"):
        http.get_bytes("http://169.254.169.254/latest/meta-data")
    with pytest.raises(BadAsset, match="redirected to a host outside the unit"):
        http.get_json("away")


def test_allowed_hosts_are_fetched(proxy: FaultProxy) -> None:
    other = HttpClient("http://images.example.invalid/", allowed_hosts=[proxy.url])
    assert other.get_bytes(proxy.url + "file.jpg") == JPEG


def test_the_observer_hears_of_every_attempt(proxy: FaultProxy) -> None:
    events: list[RequestEvent] = []
    proxy.inject("500", times=1)
    http = client(proxy, kind="wordpress", observer=events.append, sleep=lambda _: None)
    http.get_json("items")
    assert [(e.kind, e.method, e.status) for e in events] == [
        ("wordpress", "GET", 500),
        ("wordpress", "GET", 200),
    ]
    assert all(e.elapsed_s >= 0 for e in events)


def test_secrets_never_reach_the_log(proxy: FaultProxy) -> None:
    proxy.inject("500", times=1)
    with capture_logs() as logs:
        http = client(proxy, secrets=["s3cr3t-token-value"])
        http.get_json("items", {"apikey": "s3cr3t-token-value", "q": "x"})
    text = repr(logs)
    assert "s3cr3t-token-value" not in text
    assert "apikey=REDACTED" in text


def test_redact_url() -> None:
    assert (
        redact_url("https://user:pw@host.example/api/?function=x&sign=abc&user=u")
        == "https://host.example/api/?function=x&sign=REDACTED&user=u"
    )
    assert redact_url("http://h/p?q=mysecret", ["mysecret"]) == "http://h/p?q=REDACTED"


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    in_ten = parse_retry_after(formatdate(time.time() + 10, usegmt=True))
    assert in_ten is not None and 8 <= in_ten <= 10
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_bare_allowed_host_matches_either_scheme(proxy: FaultProxy) -> None:
    bare = proxy.url.removeprefix("http://").rstrip("/")
    other = HttpClient("https://images.example.invalid/", allowed_hosts=[bare])
    assert other.get_bytes(proxy.url + "file.jpg") == JPEG


def test_user_info_in_urls_never_reaches_messages_or_the_log(proxy: FaultProxy) -> None:
    with_user = proxy.url.replace("http://", "http://editor:pa55w0rd-in-url@")
    http = HttpClient(with_user, attempts=1, timeout=(10.0, 10.0))
    with capture_logs() as logs, pytest.raises(NotFound) as caught:
        # The platform's answer repeats the address with its user info.
        http.get_json("status/404?next=" + with_user)
    assert "pa55w0rd-in-url" not in str(caught.value) + repr(logs)


def test_a_transport_error_without_words_still_says_what_it_was(proxy: FaultProxy) -> None:
    class Silent(requests.adapters.HTTPAdapter):
        def send(self, *args: object, **kwargs: object) -> requests.Response:
            raise requests.ConnectionError()

    http = client(proxy, attempts=1)
    http.session.mount("http://", Silent())
    with pytest.raises(Unavailable) as caught:
        http.get_json("items")
    assert str(caught.value).endswith("failed: ConnectionError")
