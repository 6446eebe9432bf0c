"""The one HTTP client every adapter reached over plain HTTP uses: requests +
tenacity.

Time-outs always; response size caps; redirects checked against the unit's
hosts. What is retried and how long to wait, which typed error a status is,
which answers are of the wrong type and what is redacted are the transport
policy every adapter shares (`adapters.transport`); this client applies it
with requests and tenacity, as the S3 and Azure adapters do with their SDKs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urljoin, urlsplit

import requests
import tenacity
from requests.auth import AuthBase

from adapters.base import (
    AdapterError,
    BadAsset,
    RemoteSettings,
    RequestObserver,
    Unavailable,
    reason,
)
from adapters.transport import (
    CHUNK_BYTES,
    JSON_TYPES,
    MAX_FILE_BYTES,
    USER_AGENT,
    HttpError,
    RetryPolicy,
    check_body,
    error_for_status,
    parse_retry_after,
    record_request,
    redact_text,
    redact_url,
    retryable_status,
)

__all__ = [
    "HttpClient",
    "HttpError",
    "Reply",
    "redact_url",
]

MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 5

# A URL that needs no quoting: only the characters RFC 3986 allows, each %
# starting an escape. Such a URL is sent exactly as given; requests would
# otherwise decode escapes of unreserved characters (%7E to ~) and drop dot
# segments, and a signed or pre-authenticated address no longer matches.
VALID_URL = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")

Expect = Literal["json", "bytes", "any"]


@dataclass(frozen=True)
class Reply:
    status: int
    url: str
    headers: Mapping[str, str]
    content: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def json(self) -> Any:
        import json

        try:
            return json.loads(self.content)
        except ValueError as exc:
            raise Unavailable(
                f"{redact_url(self.url)} answered with invalid JSON: {reason(exc)}"
            ) from exc


class _Transient(Exception):
    """Inside the retry loop only: worth another attempt."""

    def __init__(self, error: AdapterError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class HttpClient:
    """One session per adapter instance. Paths are resolved against `base_url`;
    absolute URLs must be on the base URL's host or on `allowed_hosts` (an
    adapter never fetches an address a platform's answer merely names)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: AuthBase | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        allowed_hosts: Iterable[str] = (),
        secrets: Iterable[str | None] = (),
        max_file_bytes: int = MAX_FILE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        kind: str = "",
        observer: RequestObserver | None = None,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        base = urlsplit(self.base_url)
        if base.scheme not in ("http", "https") or not base.hostname:
            raise ValueError(f"base URL must be http(s)://host/...: {redact_url(base_url)}")
        self.hosts = {_origin(self.base_url)}
        for host in allowed_hosts:
            # A bare host[:port] is allowed over either scheme.
            forms = [host] if "//" in host else [f"http://{host}", f"https://{host}"]
            self.hosts.update(_origin(form) for form in forms)
        self.timeout = timeout
        self.policy = RetryPolicy(attempts, backoff_s, max_backoff_s, max_retry_after_s)
        self.max_file_bytes = max_file_bytes
        self.sleep = sleep  # how waits between attempts are spent
        self.kind = kind  # the adapter's, for the observer
        self.observer = observer  # told of every attempt (adapters.transport.record_request)
        self.secrets = [s for s in secrets if s]
        # Settings refuse credentials in URLs; a caller's URL may still hold some.
        self.secrets += [unquote(part) for part in (base.username, base.password) if part]
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers.update(headers or {})
        # Proxies from the environment never see the unit's credentials.
        self.session.trust_env = False

    @classmethod
    def for_settings(
        cls,
        settings: RemoteSettings,
        *,
        auth: AuthBase | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
        allowed_hosts: Iterable[str] = (),
        kind: str = "",
        observer: RequestObserver | None = None,
    ) -> HttpClient:
        return cls(
            str(settings.base_url),
            auth=auth,
            headers=headers,
            timeout=(min(5.0, settings.timeout_s), settings.timeout_s),
            attempts=settings.attempts,
            max_retry_after_s=settings.max_retry_after_s,
            secrets=secrets,
            allowed_hosts=allowed_hosts,
            kind=kind,
            observer=observer,
        )

    def close(self) -> None:
        self.session.close()

    def url(self, path_or_url: str) -> str:
        url = urljoin(self.base_url, path_or_url)
        if _origin(url) not in self.hosts:
            raise BadAsset(
                f"refusing to fetch {redact_url(url, self.secrets)}: "
                f"its host is not the unit's configured base URL"
            )
        return url

    def get_json(self, path_or_url: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path_or_url, params=params, expect="json").json

    def get_bytes(
        self,
        path_or_url: str,
        params: Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
    ) -> bytes:
        return self.request(
            "GET", path_or_url, params=params, expect="bytes", max_bytes=max_bytes
        ).content

    def get(
        self, path_or_url: str, params: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Reply:
        return self.request("GET", path_or_url, params=params, **kwargs)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        expect: Expect = "json",
        max_bytes: int | None = None,
    ) -> Reply:
        url = self.url(path_or_url)
        limit = max_bytes or (MAX_JSON_BYTES if expect == "json" else self.max_file_bytes)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Transient),
            reraise=True,
            sleep=self.sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    return self._once(
                        method, url, params, json, data, headers, expect, limit, number
                    )
        except _Transient as exc:
            raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return exc.retry_after
        return self.policy.backoff(state.attempt_number)

    def _once(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        expect: Expect,
        limit: int,
        attempt: int,
    ) -> Reply:
        started = time.monotonic()
        shown = redact_url(url, self.secrets)
        try:
            response = self._follow(method, url, params, json, data, headers)
        except requests.Timeout as exc:
            self._log(method, shown, None, started, attempt, "timed out")
            raise _Transient(
                Unavailable(f"{method} {shown} timed out ({self.timeout[1]} s)")
            ) from exc
        except requests.RequestException as exc:
            why = redact_text(_short(exc), self.secrets)
            self._log(method, shown, None, started, attempt, why)
            raise _Transient(Unavailable(f"{method} {shown} failed: {why}")) from exc
        with response:
            shown = redact_url(response.url, self.secrets)
            status = response.status_code
            try:
                content = self._read(response, limit, method, shown)
            except _Transient:
                self._log(method, shown, status, started, attempt, "body cut short")
                raise
            self._log(method, shown, status, started, attempt, None, len(content))
            reply = Reply(status, response.url, response.headers, content)
        if status >= 400:
            self._raise_for(method, shown, reply)
        self._check_type(method, shown, reply, expect)
        return reply

    def _follow(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
    ) -> requests.Response:
        """Redirects are followed here, not by requests, so that each hop is
        checked against the unit's hosts before anything is sent there."""
        for _hop in range(MAX_REDIRECTS + 1):
            prepared = self.session.prepare_request(
                requests.Request(method, url, params=params, json=json, data=data, headers=headers)
            )
            if not params and VALID_URL.fullmatch(url):
                prepared.url = url  # exactly as given (VALID_URL says why)
            send = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
            response = self.session.send(
                prepared, timeout=self.timeout, allow_redirects=False, **send
            )
            location = response.headers.get("Location")
            if not response.is_redirect or not location:
                return response
            response.close()
            url = urljoin(response.url, location)
            if _origin(url) not in self.hosts:
                raise BadAsset(
                    f"{method} {redact_url(url, self.secrets)}: redirected to a host "
                    "outside the unit's configured base URL"
                )
            params = None  # the Location carries its own query
            if response.status_code in (301, 302, 303) and method != "HEAD":
                method, json, data = "GET", None, None
        raise Unavailable(f"{method} {redact_url(url, self.secrets)}: too many redirects")

    def _read(self, response: requests.Response, limit: int, method: str, shown: str) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadAsset(
                f"{method} {shown}: answer of {int(declared):,} bytes "
                f"is over the {limit:,} byte cap"
            )
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                total += len(chunk)
                if total > limit:
                    raise BadAsset(f"{method} {shown}: answer is over the {limit:,} byte cap")
                chunks.append(chunk)
        except requests.RequestException as exc:
            # urllib3 enforces Content-Length: a body cut short lands here.
            raise _Transient(
                Unavailable(
                    f"{method} {shown}: answer cut short ({total:,} bytes read): {_short(exc)}"
                )
            ) from exc
        return b"".join(chunks)

    def _raise_for(self, method: str, shown: str, reply: Reply) -> None:
        retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        error = error_for_status(
            reply.status,
            f"{method} {shown}",
            redact_text(_excerpt(reply), self.secrets),
            retry_after=retry_after,
        )
        if retryable_status(reply.status) and self.policy.waits_for(retry_after):
            raise _Transient(error, retry_after)
        raise error  # not worth another try here, or not soon: the engine comes back later

    def _check_type(self, method: str, shown: str, reply: Reply, expect: Expect) -> None:
        if expect == "any":
            return
        check_body(
            f"{method} {shown}",
            reply.content_type,
            reply.content,
            "json" if expect == "json" else "file",
            lambda: redact_text(_excerpt(reply), self.secrets),
        )

    def _log(
        self,
        method: str,
        shown: str,
        status: int | None,
        started: float,
        attempt: int,
        error: str | None,
        size_bytes: int | None = None,
    ) -> None:
        record_request(
            self.kind,
            self.observer,
            method=method,
            url=shown,
            status=status,
            elapsed_s=time.monotonic() - started,
            attempt=attempt,
            error=error,
            size_bytes=size_bytes,
        )


def _origin(url: str) -> str:
    parts = urlsplit(url if "//" in url else "//" + url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.hostname}:{port}"


def _short(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else _last_words(exc)
    # The end of a transport error says what happened ("Connection refused"):
    # a long text loses its middle, never its end.
    return text if len(text) <= 200 else text[:80] + " … " + text[-117:]


def _last_words(exc: BaseException) -> str:
    """The innermost cause's own words: requests wraps urllib3's
    MaxRetryError, which wraps the socket's error, each repeating the URL and
    an object's repr ("HTTPConnection(host=..., port=9): Failed to establish
    a new connection: [Errno 111] Connection refused")."""
    inner: BaseException = exc
    for _depth in range(8):
        nested = getattr(inner, "reason", None)
        if not isinstance(nested, BaseException) and inner.args:
            nested = inner.args[0]
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    text = reason(inner)
    text = re.sub(r"^(?:<[^>]*>|\w+\([^()]*\)):\s*", "", text)
    return text or reason(exc)


def _excerpt(reply: Reply) -> str:
    """A platform's own error message, for the person reading the log."""
    if JSON_TYPES.match(reply.content_type):
        try:
            body = reply.json
        except Unavailable:
            body = None
        if isinstance(body, dict):
            # WordPress and most: message; CKAN: error; JSON:API: errors;
            # VuFind (Finna): statusMessage.
            for key in ("message", "error", "detail", "errors", "title", "statusMessage"):
                value = body.get(key)
                if isinstance(value, dict):
                    value = value.get("message") or value.get("title") or value
                if isinstance(value, list) and value and isinstance(value[0], dict):
                    value = value[0].get("detail") or value[0].get("title")
                if value:
                    return _short(str(value))
    text = reply.content[:300].decode("utf-8", "replace")
    text = re.sub(r"<[^>]+>", " ", text)
    return _short(" ".join(text.split()))
