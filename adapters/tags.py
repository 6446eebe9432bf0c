"""damdup's marks as tags of an object store: S3 object tags and Azure blob
index tags share one codec. Both stores limit a tag value to 256 characters
of a small character set, so a value outside it is written as `b64:` +
URL-safe base64 and a long one continues in `<field>-2`, `<field>-3`, ...
https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html
https://learn.microsoft.com/azure/storage/blobs/storage-manage-find-blobs
"""

from __future__ import annotations

import base64
import binascii
import re

from adapters.base import MARK_FIELDS, MARK_LABELS, Marks

__all__ = [
    "TAG_VALUE_MAX",
    "decode_tag_value",
    "encode_tag_value",
    "is_mark_tag",
    "marks_to_tags",
    "tags_to_marks",
]

TAG_VALUE_MAX = 256  # characters in a tag value on S3 and Azure (ours are ASCII)
ENCODED = "b64:"
# What a tag value may hold as it is, on every store damdup knows: AWS allows
# letters, digits, space and `+ - = . _ : / @`, Azure the same without `@`,
# S3-compatible stores sometimes less (Alibaba OSS refuses `@`, some refuse
# letters outside ASCII): only this ASCII subset goes unencoded.
_PLAIN = re.compile(r"[A-Za-z0-9 +\-=._:/]*")
# damdup's tags: a field, or a continuation of a long value ("damdup-canonical-2").
_MARK_TAG = re.compile(r"(damdup-(?:marks|cluster|canonical))(?:-([2-9]|[1-9][0-9]+))?")
_BASE64 = re.compile(r"[A-Za-z0-9_-]*")


def encode_tag_value(text: str) -> str:
    """A tag value every store accepts, decoded by `decode_tag_value`.
    Labels, cluster ids and plain URLs stay readable; anything else (`?&%#~`,
    letters outside ASCII, a leading or trailing space, or a value that itself
    starts with "b64:") becomes "b64:" + URL-safe base64 of its UTF-8, without
    `=` padding: letters, digits, `-` and `_` only."""
    if _PLAIN.fullmatch(text) and not text.startswith(ENCODED) and text == text.strip():
        return text
    return ENCODED + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def decode_tag_value(text: str) -> str:
    """The inverse of `encode_tag_value`. A value damdup cannot decode (someone
    edited the tag by hand) is read as it stands."""
    if not text.startswith(ENCODED):
        return text
    body = text[len(ENCODED) :]
    if not _BASE64.fullmatch(body):
        return text
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return text


def marks_to_tags(marks: Marks) -> dict[str, str]:
    """damdup's tags for `marks`, as few as possible: one per field that has a
    value (none for `Marks()`). A value longer than 256 characters once
    encoded (a long canonical URL) continues in `<field>-2`, `<field>-3`, ...,
    each counting against the store's tag limit."""
    tags: dict[str, str] = {}
    for name, value in marks.to_fields().items():
        encoded = encode_tag_value(value)
        pieces = [encoded[at : at + TAG_VALUE_MAX] for at in range(0, len(encoded), TAG_VALUE_MAX)]
        for number, piece in enumerate(pieces, 1):
            tags[name if number == 1 else f"{name}-{number}"] = piece
    return tags


def is_mark_tag(key: str) -> bool:
    return _MARK_TAG.fullmatch(key) is not None


def tags_to_marks(tags: dict[str, str]) -> Marks:
    """damdup's marks in an object's tags; other tags are ignored. Read
    leniently: labels damdup does not know and a malformed cluster id (a hand
    edit) are dropped rather than failing the read, so the next push puts
    right marks in their place."""
    fields: dict[str, str | None] = {}
    for name in MARK_FIELDS:
        if name not in tags:
            continue
        pieces = [tags[name]]
        while f"{name}-{len(pieces) + 1}" in tags:
            pieces.append(tags[f"{name}-{len(pieces) + 1}"])
        fields[name] = decode_tag_value("".join(pieces))
    labels = tuple(
        label for label in (fields.get("damdup-marks") or "").split() if label in MARK_LABELS
    )
    canonical = fields.get("damdup-canonical") or None
    try:
        return Marks(
            labels=labels, cluster=fields.get("damdup-cluster") or None, canonical_url=canonical
        )
    except ValueError:  # the cluster id is not damdup's form
        return Marks(labels=labels, canonical_url=canonical)
