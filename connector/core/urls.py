"""Whether an address lies under a unit's configured base URL: the only
addresses damdup fetches on a caller's word (webhooks, lookups by URL)."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MAX_URL_CHARS = 4096
CONTROL = re.compile(r"[\x00-\x20\x7f\\]")


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else {"http": 80, "https": 443}.get(scheme)


def url_under(url: str, base: str) -> str | None:
    """None when `url` is on `base`'s scheme, host and port and under its path;
    else why not. Dot segments, encoded slashes, backslashes, user names and
    control characters are refused rather than interpreted: what a server
    would make of them differs between servers."""
    if len(url) > MAX_URL_CHARS:
        return f"the url is longer than {MAX_URL_CHARS} characters"
    if CONTROL.search(url):
        return "the url holds spaces, control characters or backslashes"
    try:
        target, root = urlsplit(url), urlsplit(base)
        target_port, root_port = target.port, root.port
    except ValueError as exc:
        return f"the url cannot be parsed: {exc}"
    if target.scheme.lower() not in ("http", "https"):
        return "only http(s) addresses are accepted"
    if "@" in target.netloc:
        return "the url names a user"
    if (
        target.scheme.lower() != root.scheme.lower()
        or (target.hostname or "") != (root.hostname or "")
        or _port(target.scheme.lower(), target_port) != _port(root.scheme.lower(), root_port)
    ):
        return "the url is on another scheme, host or port than the unit's base URL"
    lowered = target.path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        return "the url's path holds an encoded slash"
    if any(unquote(segment) in (".", "..") for segment in target.path.split("/")):
        return "the url's path holds . or .. segments"
    prefix = root.path if root.path.endswith("/") else root.path + "/"
    if not (target.path == root.path or target.path.startswith(prefix)):
        return f"the url is not under the unit's base path {prefix}"
    return None
