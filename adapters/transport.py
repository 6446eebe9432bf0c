"""The one transport policy of every adapter, whichever library sends its
requests: `adapters.http` (requests + tenacity), the S3 adapter (boto3) and
the Azure Blob Storage adapter (the Azure SDK). Each keeps its library's own
transport and asks this module the same questions:

- what is retried: 408, 429 and every 5xx (`retryable_status`), broken
  connections, time-outs and bodies cut short; nothing else;
- how long to wait (`RetryPolicy`): `Retry-After` when the answer gives one
  (seconds or an HTTP date, `parse_retry_after`), unless it is longer than
  `max_retry_after_s`, which ends the request (the engine comes back later);
  else exponential backoff with full jitter; `attempts` tries in all;
- which typed error a status is (`error_for_status`): 401/403 AuthFailed,
  404/410 NotFound, 429 (or any retried status with a Retry-After)
  RateLimited, 408 and 5xx Unavailable, other 4xx HttpError;
- whether an answer is of the type asked for (`check_body`): a proxy's,
  login or maintenance HTML page where JSON or XML was expected is a clear
  Unavailable, never an empty listing that retires every asset;
- what a person may read (`redact_url`, `redact_text`, `LogRedactor`): no
  user info in URLs, no secret query value (API keys, `sign`, SAS `sig`,
  `X-Amz-Signature`, tokens), no Authorization header, no unit secret in any
  message, log line or third-party library's debug output;
- what each request attempt tells the log and the unit's observer
  (`record_request`): method, status, seconds, attempt, platform.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import unescape
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import structlog

from adapters.base import (
    AdapterError,
    AuthFailed,
    BadAsset,
    NotFound,
    RateLimited,
    RequestEvent,
    RequestObserver,
    Unavailable,
)

__all__ = [
    "AUTH_HINT",
    "CHUNK_BYTES",
    "HttpError",
    "LogRedactor",
    "MAX_FILE_BYTES",
    "RetryPolicy",
    "SECRET_PARAMS",
    "USER_AGENT",
    "check_body",
    "error_for_status",
    "looks_like_html",
    "parse_retry_after",
    "record_request",
    "redact_text",
    "redact_url",
    "retryable_status",
]

log = structlog.get_logger(__name__)


def _version() -> str:
    try:
        return importlib.metadata.version("damdup")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


USER_AGENT = f"damdup/{_version()} (+duplicate-image connector)"
MAX_FILE_BYTES = 512 * 1024 * 1024
CHUNK_BYTES = 256 * 1024


# -- what is retried, and when ------------------------------------------------------


def retryable_status(status: int) -> bool:
    """Worth another attempt: 408 Request Timeout, 429 Too Many Requests and
    every 5xx (Azure Storage throttles with 503 ServerBusy and 500
    OperationTimedOut, S3 with 503 SlowDown)."""
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait, from a Retry-After of seconds or an HTTP date
    (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a retryable failure is tried again."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attempts", max(1, self.attempts))

    def backoff(self, retry: int) -> float:
        """Full jitter: between 0 and `backoff_s * 2**(retry - 1)`, at most
        `max_backoff_s`, before retry number `retry` (1 for the first)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return random.uniform(0, ceiling)  # jitter, not secrecy

    def waits_for(self, retry_after: float | None) -> bool:
        """A Retry-After longer than `max_retry_after_s` is not waited for
        here: the request ends and the engine comes back later."""
        return retry_after is None or retry_after <= self.max_retry_after_s

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait after retryable failed attempt `attempt` (1 for
        the first) before the next; None when no attempt is left or the
        platform asks for a longer wait than this policy allows."""
        if attempt >= self.attempts or not self.waits_for(retry_after):
            return None
        return retry_after if retry_after is not None else self.backoff(attempt)


# -- status codes to typed errors ----------------------------------------------------

AUTH_HINT = "check the unit's credentials and their rights"


class HttpError(AdapterError):
    """A 4xx answer that is not about credentials, absence or rate: the request
    itself was refused (a bad parameter, a platform rule)."""

    def __init__(self, message: str, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail  # the platform's own words, when it gave any


def error_for_status(
    status: int,
    subject: str,
    detail: str = "",
    *,
    retry_after: float | None = None,
    shown: str | None = None,
    auth_hint: str = AUTH_HINT,
) -> AdapterError:
    """The typed error of an answer with `status` (400 or more) to `subject`
    ("GET https://…", "s3://bucket/key: HeadObject"). `detail` is the
    platform's own words, already redacted; `shown` how the status is named
    in the message when it is more than the number ("503 SlowDown"). A
    store's error code that means a status (S3's SlowDown is a 429 whatever
    its status) is mapped to that status by the caller."""
    named = shown or str(status)
    said = f"{named}{': ' + detail if detail else ''}"
    if status in (401, 403):
        return AuthFailed(f"{subject} was refused with {said}; {auth_hint}")
    if status in (404, 410):
        return NotFound(f"{subject}: {named} not found{': ' + detail if detail else ''}")
    if retryable_status(status):
        if status == 429 or retry_after is not None:
            return RateLimited(retry_after, f"{subject}: {said}")
        return Unavailable(f"{subject}: {said}")
    return HttpError(f"{subject}: {said}", status, detail)


# -- answers of the wrong type ---------------------------------------------------------

Expect = Literal["json", "xml", "file"]
JSON_TYPES = re.compile(r"^application/([\w.+-]+\+)?json$|^text/json$")
XML_TYPES = re.compile(r"^(application|text)/([\w.+-]+\+)?xml$")
_EXPECTED = {"json": "JSON", "xml": "XML", "file": "a file"}
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def looks_like_html(content_type: str, body: bytes) -> bool:
    """A web page (a proxy's, login or maintenance page), by its type or
    its first bytes."""
    return "html" in content_type or body[:300].lstrip().lower().startswith(
        (b"<!doctype html", b"<html")
    )


def check_body(
    subject: str,
    content_type: str,
    body: bytes,
    expect: Expect,
    detail: Callable[[], str] = str,
) -> None:
    """Raises when a successful answer is not of the type asked for: JSON
    (`application/json`, `*+json`), XML (`*/xml`, `*+xml`, or untyped XML;
    an empty body has nothing to misread) or a file (anything but text and
    JSON). An HTML page or another type where JSON or XML was expected is
    Unavailable (a proxy, login or maintenance page: later it may be right);
    text where a file was expected is BadAsset, with the text's `detail`."""
    kind = content_type.split(";")[0].strip().lower()
    if expect == "file":
        if kind.startswith("text/") or JSON_TYPES.match(kind):
            words = detail()
            raise BadAsset(
                f"{subject}: expected a file but got {kind}{': ' + words if words else ''}"
            )
        return
    if expect == "json" and JSON_TYPES.match(kind):
        return
    if expect == "xml" and (
        XML_TYPES.match(kind)
        or not body.strip()
        or (not kind and body.lstrip().startswith(b"<?xml"))
    ):
        return
    title = _TITLE.search(body[:4096])
    if looks_like_html(kind, body) or title:
        named = unescape(title.group(1).decode("utf-8", "replace")) if title else ""
        named = " ".join(named.split())
        raise Unavailable(
            f"{subject}: expected {_EXPECTED[expect]} but got an HTML page"
            f"{' titled ' + repr(named[:100]) if named else ''}"
            " (a proxy, login or maintenance page?)"
        )
    raise Unavailable(
        f"{subject}: expected {_EXPECTED[expect]} but got {kind or 'no content type'}"
    )


# -- secrets ---------------------------------------------------------------------------

# Query parameters whose values are credentials on some platform (ResourceSpace
# `sign`, Azure SAS `sig`, S3 presigned `X-Amz-Signature` and `X-Amz-Credential`,
# which names the access key).
SECRET_PARAMS = frozenset(
    {"key", "apikey", "api_key", "sign", "signature", "token", "access_token", "password",
     "pass", "secret", "client_secret", "sig", "code", "user_key", "auth", "tempauth",
     "x-amz-signature", "x-amz-credential", "x-amz-security-token"}
)  # fmt: skip
SECRET_HEADERS = ("authorization", "proxy-authorization", "x-amz-security-token", "cookie")
# user:password@ in a URL anywhere in a text.
USERINFO = re.compile(r"(?<=//)[^/?#\s@]+@")
# A secret query parameter anywhere in a text, raw or percent-encoded ("sig%3D").
_PARAM_IN_TEXT = re.compile(
    r"(?i)(?<![\w-])("
    + "|".join(re.escape(name) for name in sorted(SECRET_PARAMS, key=len, reverse=True))
    + r")(=|%3D)[^&\s'\"<>)]+"
)
# A secret header as a library logs it: "Authorization: …", "'Authorization': b'…'".
_HEADER_IN_TEXT = re.compile(
    r"(?i)((?<![\w-])(?:"
    + "|".join(SECRET_HEADERS)
    + r")['\"]?\s*:\s*(?:(?-i:b)?['\"])?)[^'\"\r\n]+"
)


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """The URL without user info and with secret query values replaced."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = urlencode(
        [
            (name, "REDACTED" if name.lower() in SECRET_PARAMS else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
    )
    text = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return redact_text(text, secrets)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without user info in URLs, secret query values, secret
    headers' values and any of `secrets` (as given or percent-encoded;
    secrets under 4 characters would blank ordinary words)."""
    text = USERINFO.sub("", text)
    text = _PARAM_IN_TEXT.sub(r"\1\2REDACTED", text)
    text = _HEADER_IN_TEXT.sub(r"\1REDACTED", text)
    forms = {form for secret in secrets if secret for form in (secret, quote(secret, safe=""))}
    for form in sorted(forms, key=len, reverse=True):  # a secret inside another: longest first
        if len(form) >= 4:
            text = text.replace(form, "REDACTED")
    return text


class LogRedactor(logging.Filter):
    """Redacts the log records of the libraries under the SDK adapters:
    at DEBUG botocore logs each request with its Authorization header (which
    names the access key id) and a session token, urllib3 every request line
    with its query (a SAS signature). One filter for the process, holding
    every unit's secrets; `install` is called by each adapter that brings
    secrets (and again picks up loggers created since)."""

    LOGGERS = ("azure", "boto3", "botocore", "s3transfer", "urllib3")
    # Those that log requests, filtered even before their library has made them.
    CHATTY = ("botocore.auth", "botocore.endpoint", "botocore.hooks", "urllib3.connectionpool")
    _instance: LogRedactor | None = None
    _creating = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.lock = threading.Lock()

    @classmethod
    def install(cls, secrets: Iterable[str | None] = ()) -> LogRedactor:
        with cls._creating:
            if cls._instance is None:
                cls._instance = cls()
            redactor = cls._instance
        with redactor.lock:
            redactor.secrets.update(secret for secret in secrets if secret and len(secret) >= 4)
        manager = logging.Logger.manager
        # A filter sees only its own logger's records: each library logger gets it.
        for name in [*cls.LOGGERS, *cls.CHATTY, *list(manager.loggerDict)]:
            if name.split(".")[0] in cls.LOGGERS:
                logger = logging.getLogger(name)
                if redactor not in logger.filters:
                    logger.addFilter(redactor)
        return redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        with self.lock:
            secrets = list(self.secrets)
        cleaned = redact_text(message, secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# -- what each attempt tells ---------------------------------------------------------------


def record_request(
    kind: str,
    observer: RequestObserver | None,
    *,
    method: str,
    url: str,
    status: int | None,
    elapsed_s: float,
    attempt: int,
    error: str | None = None,
    size_bytes: int | None = None,
) -> None:
    """One request attempt, finished or failed: an `http.request` event
    (`url` already redacted) and the unit's observer (the daemon's latency
    histogram), which must be quick and must not raise."""
    if observer is not None:
        observer(RequestEvent(kind=kind, method=method, status=status, elapsed_s=elapsed_s))
    event = log.warning if error or (status or 0) >= 400 else log.debug
    event(
        "http.request",
        method=method,
        url=url,
        status=status,
        elapsed_ms=round(elapsed_s * 1000, 1),
        attempt=attempt,
        size_bytes=size_bytes,
        error=error,
    )
