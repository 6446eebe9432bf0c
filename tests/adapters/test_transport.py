"""The transport policy every adapter shares (adapters/transport.py): the
decisions themselves, without a server. The HTTP client, S3 and Azure tests
show each library applying them."""

from __future__ import annotations

import logging

import pytest

from adapters.base import AuthFailed, BadAsset, NotFound, RateLimited, Unavailable
from adapters.transport import (
    HttpError,
    LogRedactor,
    RetryPolicy,
    check_body,
    error_for_status,
    redact_text,
    redact_url,
    retryable_status,
)


@pytest.mark.parametrize(
    ("status", "retried"),
    [(400, False), (401, False), (404, False), (408, True), (409, False), (429, True),
     (500, True), (502, True), (503, True), (504, True)],
)  # fmt: skip
def test_what_is_retried(status: int, retried: bool) -> None:
    assert retryable_status(status) is retried


def test_waits_honour_retry_after_up_to_the_cap_and_back_off_otherwise() -> None:
    policy = RetryPolicy(attempts=3, backoff_s=0.5, max_backoff_s=30.0, max_retry_after_s=60.0)
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert policy.delay(1, retry_after=61.0) is None  # the engine comes back later
    assert policy.delay(3) is None  # no attempt left
    for attempt in (1, 2):
        wait = policy.delay(attempt)
        assert wait is not None and 0 <= wait <= 0.5 * 2 ** (attempt - 1)
    assert RetryPolicy(attempts=0).attempts == 1


@pytest.mark.parametrize(
    ("status", "retry_after", "error"),
    [(401, None, AuthFailed), (403, None, AuthFailed), (404, None, NotFound),
     (410, None, NotFound), (429, None, RateLimited), (503, 5.0, RateLimited),
     (500, None, Unavailable), (503, None, Unavailable), (408, None, Unavailable),
     (400, None, HttpError), (409, None, HttpError)],
)  # fmt: skip
def test_status_to_error(status: int, retry_after: float | None, error: type[Exception]) -> None:
    made = error_for_status(status, "GET https://x.example/", "words", retry_after=retry_after)
    assert type(made) is error
    assert "words" in str(made)
    if isinstance(made, RateLimited):
        assert made.retry_after == retry_after


def test_a_store_code_is_named_beside_the_status() -> None:
    made = error_for_status(429, "s3://b/k: GetObject", "reduce", shown="503 SlowDown")
    assert isinstance(made, RateLimited)
    assert "503 SlowDown: reduce" in str(made)


def test_an_html_page_where_xml_or_json_was_expected() -> None:
    page = b"<!DOCTYPE html><html><head><title> Kirjaudu\n sis\xc3\xa4\xc3\xa4n </title>"
    for expect in ("xml", "json"):
        with pytest.raises(Unavailable, match="HTML page titled 'Kirjaudu sisään'"):
            check_body("GET u", "text/html; charset=utf-8", page, expect)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="expected XML but got application/json"):
        check_body("GET u", "application/json", b"{}", "xml")
    check_body("GET u", "application/xml", b"<a/>", "xml")
    check_body("GET u", "", b'<?xml version="1.0"?><a/>', "xml")
    check_body("PUT u", "", b"", "xml")  # nothing to misread
    check_body("GET u", "application/problem+json", b"{}", "json")
    with pytest.raises(BadAsset, match="expected a file but got text/plain: gone"):
        check_body("GET u", "text/plain", b"gone", "file", lambda: "gone")
    check_body("GET u", "image/jpeg", b"\xff\xd8", "file")


def test_secrets_are_redacted_from_urls_and_any_text() -> None:
    sas = "sv=2024-08-04&ss=b&sig=AbC%2Bdef%2F123%3D&se=2030"
    url = f"https://editor:pw@acct.blob.core.windows.net/c/kuva.jpg?{sas}"
    assert redact_url(url) == (
        "https://acct.blob.core.windows.net/c/kuva.jpg?sv=2024-08-04&ss=b&sig=REDACTED&se=2030"
    )
    presigned = (
        "GET https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1&X-Amz-Signature=abc123 failed"
    )
    shown = redact_text(presigned)
    assert "AKIAEXAMPLE" not in shown and "abc123" not in shown
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in shown
    assert redact_text("url=/c?restype=container&sig%3Dxyz%2B1 end") == (
        "url=/c?restype=container&sig%3DREDACTED end"
    )
    botocore_line = (
        "headers={'X-Amz-Date': b'20240101T000000Z', 'Authorization': b'AWS4-HMAC-SHA256 "
        "Credential=AKIAEXAMPLE/20240101/us-east-1/s3/aws4_request, Signature=ff00'}"
    )
    shown = redact_text(botocore_line)
    assert "AKIAEXAMPLE" not in shown and "ff00" not in shown and "20240101T000000Z" in shown
    assert redact_text("Authorization: Bearer eyJabc\r\nHost: x") == (
        "Authorization: REDACTED\r\nHost: x"
    )
    assert redact_text("key a+b/c= and a%2Bb%2Fc%3D", ["a+b/c="]) == "key REDACTED and REDACTED"
    assert redact_text("the word abc stays", ["abc"]) == "the word abc stays"  # too short


def test_library_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    LogRedactor.install(["s3cr3t-value"])
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug(
        '%s "GET /c?comp=list&sig=%s HTTP/1.1" 200', "http://127.0.0.1:1", "Zm9v"
    )
    logging.getLogger("botocore.endpoint").debug("token %s", "s3cr3t-value")
    assert "Zm9v" not in caplog.text and "s3cr3t-value" not in caplog.text
    assert caplog.text.count("REDACTED") == 2
