"""WebDAV's XML (RFC 4918), shared by the webdav and nextcloud adapters:
PROPFIND and PROPPATCH bodies, the 207 multistatus answer read safely, and
damdup's marks as dead properties.
https://www.rfc-editor.org/rfc/rfc4918 (§9.1 PROPFIND, §9.2 PROPPATCH, §13 multistatus)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from adapters.base import (
    MARK_FIELDS,
    AdapterError,
    BadAsset,
    Marks,
    MarksDoNotFit,
    NotFound,
    Unavailable,
    reason,
)
from adapters.http import HttpClient, Reply
from adapters.transport import looks_like_html, redact_url

__all__ = [
    "DAMDUP_NAMESPACE",
    "DAV_XML",
    "DavMarks",
    "dav_propertyupdate",
    "dav_propfind",
    "dav_responses",
    "dav_status",
    "multistatus",
]

DAMDUP_NAMESPACE = "https://damdup.hel.fi/ns"  # damdup's dead properties
DAV_XML = {"Content-Type": "application/xml; charset=utf-8"}


def multistatus(reply: Reply) -> ET.Element:
    """The answer's 207 multistatus element. An HTML page (a proxy, login or
    maintenance page), another status, XML with a DTD (refused unread: entity
    expansion) or not in UTF-8, unreadable XML, or another root element: a
    clear `Unavailable`."""
    body = reply.content
    shown = redact_url(reply.url).split("?")[0]
    if looks_like_html(reply.content_type, body):
        raise Unavailable(
            f"{shown}: expected a WebDAV multistatus (XML) but got an HTML page "
            "(a proxy, login or maintenance page, or base_url is not a WebDAV address?)"
        )
    if reply.status != 207:
        raise Unavailable(f"{shown}: answered {reply.status}, not 207 Multi-Status")
    if b"\x00" in body or b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise Unavailable(f"{shown}: refused an XML answer with a DTD or not in UTF-8")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise Unavailable(
            f"{shown}: answered {reply.status} with unreadable XML: {reason(exc)}"
        ) from exc
    if root.tag != "{DAV:}multistatus":
        raise Unavailable(f"{shown}: answered {reply.status} with {root.tag}, not a multistatus")
    return root


def dav_responses(reply: Reply) -> list[tuple[str, dict[str, ET.Element]]]:
    """Each `response` of the multistatus: its href and the properties
    reported with status 200, by Clark name ("{DAV:}getetag")."""
    found = []
    for response in multistatus(reply).iterfind("{DAV:}response"):
        href = (response.findtext("{DAV:}href") or "").strip()
        if not href:
            continue
        props: dict[str, ET.Element] = {}
        for propstat in response.iterfind("{DAV:}propstat"):
            if dav_status(propstat.findtext("{DAV:}status")) == 200:
                props.update(
                    (element.tag, element) for element in propstat.iterfind("{DAV:}prop/*")
                )
        found.append((href, props))
    return found


class DavMarks:
    """damdup's marks as dead properties (RFC 4918) in damdup's namespace,
    one per field of `Marks.to_fields`, read with PROPFIND and replaced with
    one PROPPATCH that names no other property: the webdav and nextcloud
    adapters' marks. Dead properties change no ETag."""

    def __init__(self, http: HttpClient, max_bytes: int) -> None:
        self.http = http
        self.max_bytes = max_bytes
        self.names = [f"{{{DAMDUP_NAMESPACE}}}{name}" for name in MARK_FIELDS]

    def read(self, url: str, what: str) -> Marks:
        try:
            return Marks.from_fields(dict(self._stored(url)))
        except ValueError as exc:
            raise BadAsset(f"{what}: damdup's properties are unreadable: {reason(exc)}") from exc

    def write(self, url: str, marks: Marks, what: str) -> bool:
        stored, wanted = self._stored(url), marks.to_fields()
        if stored == wanted:
            return False
        gone = [name for name in MARK_FIELDS if name in stored and name not in wanted]
        reply = self.http.request(
            "PROPPATCH",
            url,
            data=dav_propertyupdate(DAMDUP_NAMESPACE, wanted, gone),
            headers=DAV_XML,
            expect="any",
            max_bytes=self.max_bytes,
        )
        # 207 only (RFC 4918 9.2.1), all or nothing: one refused property
        # means nothing was written.
        for status in multistatus(reply).iter("{DAV:}status"):
            code = dav_status(status.text)
            if 200 <= code < 300:
                continue
            if code == 507:
                raise MarksDoNotFit(f"{what}: the server has no room for damdup's properties (507)")
            if code == 404:
                raise NotFound(f"{what}: the server no longer has the file")
            raise AdapterError(f"{what}: the server refused damdup's properties with {code}")
        return True

    def _stored(self, url: str) -> dict[str, str]:
        reply = self.http.request(
            "PROPFIND",
            url,
            data=dav_propfind(self.names),
            headers={**DAV_XML, "Depth": "0"},
            expect="any",
            max_bytes=self.max_bytes,
        )
        fields: dict[str, str] = {}
        for _href, props in dav_responses(reply):
            for name, clark in zip(MARK_FIELDS, self.names, strict=True):
                element = props.get(clark)
                if element is not None and element.text:
                    fields[name] = element.text
        return fields


def dav_propfind(props: list[str]) -> bytes:
    """A PROPFIND body asking for `props`, given by Clark name ("{ns}name")."""
    asked = "".join(
        f'<x:{local} xmlns:x="{escape(namespace, {chr(34): "&quot;"})}"/>'
        for namespace, _, local in (name[1:].partition("}") for name in props)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop>'
        f"{asked}</d:prop></d:propfind>"
    ).encode()


def dav_propertyupdate(namespace: str, values: dict[str, str], removed: list[str]) -> bytes:
    """A PROPPATCH body setting `values` and removing `removed`, all dead
    properties of `namespace`; no other property is named."""
    parts = ['<?xml version="1.0" encoding="utf-8"?>']
    parts.append(f'<d:propertyupdate xmlns:d="DAV:" xmlns:dd="{escape(namespace)}">')
    if values:
        props = "".join(f"<dd:{name}>{escape(value)}</dd:{name}>" for name, value in values.items())
        parts.append(f"<d:set><d:prop>{props}</d:prop></d:set>")
    if removed:
        props = "".join(f"<dd:{name}/>" for name in removed)
        parts.append(f"<d:remove><d:prop>{props}</d:prop></d:remove>")
    parts.append("</d:propertyupdate>")
    return "".join(parts).encode()


def dav_status(line: str | None) -> int:
    """The code of a WebDAV status line ("HTTP/1.1 404 Not Found"); 0 if none."""
    match = re.match(r"\s*HTTP/\d(?:\.\d)?\s+(\d{3})", line or "")
    return int(match.group(1)) if match else 0
