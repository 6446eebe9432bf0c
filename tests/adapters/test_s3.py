"""What the contract suite does not cover for S3: the 10-tag limit, tag value
encoding, multipart ETags, throttling, credentials kept out of logs, and what
a listing takes (images under the prefix only). Against moto's real S3 server
(tests/servers/s3.py) unless a test says otherwise."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from adapters.base import (
    AdapterError,
    AssetRef,
    AuthFailed,
    Marks,
    MarksDoNotFit,
    RateLimited,
    RequestEvent,
    Unavailable,
)
from adapters.s3 import S3, S3Cursor, S3Paginator, S3Settings
from adapters.tags import decode_tag_value, encode_tag_value, marks_to_tags, tags_to_marks
from connector.core.config import ConfigError
from connector.units import build_adapter, secret_fields
from tests.servers.common import photo_paths
from tests.servers.s3 import BUCKET, PREFIX, REGION, WRONG_KEYS, S3Harness

PHOTOS = photo_paths(variant="original")
NASTY_URL = "https://www.hel.fi/kuvat/Temppeliaukion kirkko ä.jpg?size=full&v=2%20x#top"
# S3's documented pattern for tag values, without the Unicode letters that
# some S3-compatible stores refuse: what every value damdup writes must match.
S3_TAG_VALUE = re.compile(r"^[A-Za-z0-9 +\-=._:/@]{0,256}$")
FULL = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=NASTY_URL)


@pytest.fixture(scope="module")
def server() -> Iterator[S3Harness]:
    harness = S3Harness()
    yield harness
    harness.close()


@pytest.fixture
def s3(server: S3Harness) -> S3Harness:
    server.reset()
    return server


def listed(adapter: Any) -> list[AssetRef]:
    items: list[AssetRef] = []
    for page in adapter.iter_pages(None):
        items.extend(page.items)
    return items


def one_photo(s3: S3Harness, name: str = "kuva.jpg") -> AssetRef:
    key = s3.add(name, PHOTOS[0].read_bytes())
    [ref] = [ref for ref in listed(s3.adapter()) if ref.id == key]
    return ref


def foreign_tags(count: int) -> dict[str, str]:
    return {f"museo-{number}": f"arvo {number}" for number in range(count)}


# -- the 10-tag limit --------------------------------------------------------------


def test_nine_foreign_tags_leave_no_room_and_nothing_is_written(s3: S3Harness) -> None:
    ref = one_photo(s3)
    s3.put_tags(ref.id, foreign_tags(9))
    assert s3.proxy is not None
    s3.proxy.clear()
    with pytest.raises(MarksDoNotFit, match="10 tags"):
        s3.adapter().annotate(ref, FULL)
    assert s3.tags(ref.id) == foreign_tags(9)
    assert [entry.method for entry in s3.proxy.log] == ["GET"], "only the tags were read"


def test_seven_foreign_tags_leave_room_for_three_marks(s3: S3Harness) -> None:
    ref = one_photo(s3)
    s3.put_tags(ref.id, foreign_tags(7))
    adapter = s3.adapter()
    assert adapter.annotate(ref, FULL) is True
    tags = s3.tags(ref.id)
    assert len(tags) == 10
    assert {key: tags[key] for key in foreign_tags(7)} == foreign_tags(7)
    assert s3.stored_marks(ref.id) == FULL
    # A full object still takes new marks: damdup's own tags are replaced, not added to.
    moved = Marks(labels=("canonical",), cluster="ddabcdefabcd", canonical_url=None)
    assert adapter.annotate(ref, moved) is True
    assert s3.stored_marks(ref.id) == moved
    assert len(s3.tags(ref.id)) == 9


def test_a_single_mark_fits_beside_nine_foreign_tags(s3: S3Harness) -> None:
    ref = one_photo(s3)
    s3.put_tags(ref.id, foreign_tags(9))
    marks = Marks(labels=("related", "metadata-missing"))
    assert s3.adapter().annotate(ref, marks) is True
    assert s3.stored_marks(ref.id) == marks
    assert len(s3.tags(ref.id)) == 10


def test_removing_marks_from_an_object_without_any_sends_nothing(s3: S3Harness) -> None:
    ref = one_photo(s3)
    s3.put_tags(ref.id, foreign_tags(10))
    assert s3.proxy is not None
    s3.proxy.clear()
    assert s3.adapter().annotate(ref, Marks()) is False
    assert [entry.method for entry in s3.proxy.log] == ["GET"]
    assert s3.tags(ref.id) == foreign_tags(10)


@pytest.mark.xfail(
    strict=True,
    raises=Unavailable,
    reason="moto 5.2 answers 500 to PutObjectTagging with an empty TagSet (s3/responses.py "
    "_tagging_from_xml); S3 documents that an empty set removes every tag "
    "(https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html)",
)
def test_removing_the_last_marks_leaves_an_empty_tag_set(s3: S3Harness) -> None:
    ref = one_photo(s3)
    adapter = s3.adapter()
    adapter.annotate(ref, FULL)
    assert adapter.annotate(ref, Marks()) is True
    assert s3.tags(ref.id) == {}
    assert s3.proxy is not None and s3.proxy.requests("DELETE") == []


# -- tag values ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=700))
def test_any_value_encodes_to_allowed_characters_and_back(text: str) -> None:
    encoded = encode_tag_value(text)
    assert re.fullmatch(r"[A-Za-z0-9 +\-=._:/@]*", encoded)
    assert decode_tag_value(encoded) == text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=1200))
def test_marks_of_any_canonical_link_fit_tag_values_and_read_back(url: str) -> None:
    marks = Marks(labels=("duplicate-candidate",), cluster="dd00000000ff", canonical_url=url)
    tags = marks_to_tags(marks)
    assert all(S3_TAG_VALUE.match(value) for value in tags.values())
    assert tags_to_marks(tags) == marks


@pytest.mark.parametrize(
    "url",
    [
        NASTY_URL,
        "https://a.example/plain/path.jpg",  # stays readable
        "b64:not-really-encoded",  # looks encoded: must be encoded
        "https://kuvat.hel.fi/~user/kuva@2x.jpg",
        "https://finna.fi/Record/hkm.HKMS000005:km0000penx?" + "&x=" * 150,  # over 256
    ],
)
def test_canonical_links_round_trip_through_s3(s3: S3Harness, url: str) -> None:
    ref = one_photo(s3)
    marks = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=url)
    assert s3.adapter().annotate(ref, marks) is True
    tags = s3.tags(ref.id)
    assert all(S3_TAG_VALUE.match(value) for value in tags.values())
    assert s3.stored_marks(ref.id) == marks
    assert s3.adapter().read_marks(ref) == marks
    if url == "https://a.example/plain/path.jpg":
        assert tags["damdup-canonical"] == url


def test_a_long_link_takes_more_tags_and_a_shorter_one_gives_them_back(s3: S3Harness) -> None:
    ref = one_photo(s3)
    long_url = "https://www.hel.fi/" + "kuva-" * 120 + "?koko=suuri"
    adapter = s3.adapter()
    adapter.annotate(ref, Marks(labels=("duplicate",), canonical_url=long_url))
    tags = s3.tags(ref.id)
    assert {"damdup-canonical", "damdup-canonical-2", "damdup-canonical-3"} <= set(tags)
    assert adapter.read_marks(ref).canonical_url == long_url
    adapter.annotate(ref, Marks(labels=("duplicate",), canonical_url="https://a.example/b"))
    assert sorted(s3.tags(ref.id)) == ["damdup-canonical", "damdup-marks"]
    # Too long to fit beside someone else's tags: refused whole.
    s3.put_tags(ref.id, foreign_tags(8))
    with pytest.raises(MarksDoNotFit):
        adapter.annotate(ref, Marks(labels=("duplicate",), canonical_url=long_url))
    assert s3.tags(ref.id) == foreign_tags(8)


def test_hand_edited_marks_are_read_leniently_and_then_replaced(s3: S3Harness) -> None:
    ref = one_photo(s3)
    s3.put_tags(
        ref.id,
        {"damdup-marks": "duplicate bogus", "damdup-cluster": "xyz", "damdup-canonical": "b64:a"},
    )
    adapter = s3.adapter()
    assert adapter.read_marks(ref) == Marks(labels=("duplicate",), canonical_url="b64:a")
    assert adapter.annotate(ref, FULL) is True
    assert s3.stored_marks(ref.id) == FULL


# -- listing ----------------------------------------------------------------------------


def test_only_images_under_the_prefix_are_listed(s3: S3Harness) -> None:
    photo = PHOTOS[1].read_bytes()
    for key in ("kuvat/a.jpg", "kuvat/B.PNG", "kuvat/sisä/c.jpeg", "muut/d.jpg", "kuvatx/e.jpg"):
        s3.put(key, photo)
    s3.put("kuvat/muistiinpanot.txt", b"ei kuva")
    s3.put("kuvat/kansio/", b"")
    s3.put("kuvat/ilman-paatetta", photo, ContentType="image/jpeg")
    s3.put("kuvat/ilman-paatetta-teksti", b"teksti", ContentType="text/plain")
    ids = sorted(ref.id for ref in listed(s3.adapter(page_size=2)))
    assert ids == ["kuvat/B.PNG", "kuvat/a.jpg", "kuvat/ilman-paatetta", "kuvat/sisä/c.jpeg"]


def test_a_listing_resumes_after_the_last_key_and_refuses_answers_it_cannot_follow() -> None:
    where = f"s3://{BUCKET}/{PREFIX}"
    paginator = S3Paginator(None, where)
    assert paginator.params() == {}
    page = {"IsTruncated": True, "Contents": [{"Key": "a.jpg"}, {"Key": "b.jpg"}, {"Size": 3}]}
    assert [entry["Key"] for entry in paginator.advance(page)] == ["a.jpg", "b.jpg"]
    assert paginator.cursor == S3Cursor(after="b.jpg") and not paginator.finished
    last = S3Paginator(paginator.cursor, where)
    assert last.params() == {"StartAfter": "b.jpg"}
    assert last.advance({"IsTruncated": False}) == []
    assert last.finished and last.cursor is None  # no incremental listing
    with pytest.raises(Unavailable, match="more but gave no keys"):
        S3Paginator(None, where).advance({"IsTruncated": True, "Contents": [{"Size": 3}]})
    with pytest.raises(Unavailable, match="without IsTruncated"):
        S3Paginator(None, where).advance({"Contents": []})


def test_metadata_from_the_key_costs_no_request_per_object(s3: S3Harness) -> None:
    s3.put(PREFIX + "Senaatintori/kuva.jpg", PHOTOS[0].read_bytes())
    mapping = {"location": "folder", "date": "modified", "department": "=Kaupunginmuseo"}
    [ref] = listed(s3.adapter(metadata=mapping))
    assert ref.metadata.location == "Senaatintori"
    assert ref.metadata.department == "Kaupunginmuseo"
    assert ref.metadata.date == ref.modified
    assert s3.proxy is not None and s3.proxy.requests("HEAD") == []


def test_user_metadata_outside_ascii_is_decoded(s3: S3Harness) -> None:
    # S3 gives such values back as RFC 2047 encoded words.
    s3.add("kuva.jpg", PHOTOS[0].read_bytes(), {"location": "=?UTF-8?B?VMO2w7Zsw7Y=?="})
    [ref] = listed(s3.adapter())
    assert ref.metadata.location == "Töölö"


def test_a_multipart_etag_is_no_content_hash(s3: S3Harness) -> None:
    data = PHOTOS[2].read_bytes()
    single = s3.add("yksi.jpg", data)
    key = PREFIX + "moniosainen.jpg"
    upload = s3.direct.create_multipart_upload(Bucket=BUCKET, Key=key, ContentType="image/jpeg")
    half = len(data) // 2
    parts = []
    for number, chunk in enumerate((data[:half], data[half:]), 1):
        part = s3.direct.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=chunk
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    s3.direct.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    adapter = s3.adapter()
    refs = {ref.id: ref for ref in listed(adapter)}
    assert refs[single].content_hash == "md5:" + hashlib.md5(data).hexdigest()
    assert refs[key].content_hash is None
    assert refs[key].version.split("|")[0].endswith("-2")
    assert adapter.fetch_original(refs[key]) == data


# -- faults -----------------------------------------------------------------------------


def test_503_from_the_proxy_is_retried(s3: S3Harness) -> None:
    key = s3.add("kuva.jpg", PHOTOS[0].read_bytes())
    assert s3.proxy is not None
    s3.proxy.inject("503", times=2, path_contains=s3.listing_path, retry_after=0)
    assert [ref.id for ref in listed(s3.adapter())] == [key]
    faults = [entry.fault for entry in s3.proxy.requests(path_contains=s3.listing_path)]
    assert faults == ["503", "503", None]


def test_the_observer_hears_of_every_attempt(s3: S3Harness) -> None:
    s3.add("kuva.jpg", PHOTOS[0].read_bytes())
    assert s3.proxy is not None
    s3.proxy.inject("503", times=1, path_contains=s3.listing_path, retry_after=0)
    events: list[RequestEvent] = []
    listed(S3(S3Settings(**s3.settings()), observer=events.append))
    # The listing, then a HeadObject for the key's user metadata.
    assert [(e.kind, e.method, e.status) for e in events] == [
        ("s3", "GET", 503),
        ("s3", "GET", 200),
        ("s3", "HEAD", 200),
    ]


def test_a_retry_after_longer_than_allowed_ends_the_request(s3: S3Harness) -> None:
    """`max_retry_after_s`, as on every other platform: a 429 asking for
    30 s, within the default 60 s, ends the request at once when the unit
    allows 5 s; the sync comes back later."""
    s3.add("kuva.jpg", PHOTOS[0].read_bytes())
    assert s3.proxy is not None
    s3.proxy.clear()
    s3.proxy.inject("429", times=5, path_contains=s3.listing_path, retry_after=30)
    with pytest.raises(RateLimited) as caught:
        listed(s3.adapter(max_retry_after_s=5))
    assert caught.value.retry_after == 30
    assert len(s3.proxy.requests(path_contains=s3.listing_path)) == 1
    assert S3Settings(bucket=BUCKET).max_retry_after_s == 60


class SlowDownS3:
    """A bucket that only ever says SlowDown, as S3 does when a prefix gets
    more requests than it can take (the error body of
    https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message>"
        b"<RequestId>4442587FB7D0A2F9</RequestId></Error>"
    )

    def __init__(self) -> None:
        self.requests = 0
        self.server = make_server("127.0.0.1", 0, self, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        Request(environ).get_data()
        self.requests += 1
        return Response(self.BODY, 503, content_type="application/xml")(environ, start_response)


def test_slowdown_is_retried_then_rate_limited() -> None:
    slow = SlowDownS3()
    try:
        adapter = S3(
            S3Settings(
                bucket=BUCKET,
                endpoint_url=slow.url,
                region=REGION,
                access_key_id="AKIAEXAMPLEEXAMPLE00",
                secret_access_key="not-a-real-secret-key",
                attempts=3,
            )
        )
        with pytest.raises(RateLimited, match="SlowDown"):
            adapter.list_assets(None)
        assert slow.requests == 3
    finally:
        slow.server.shutdown()
        slow.server.server_close()


# -- credentials --------------------------------------------------------------------------


def test_credentials_come_from_the_environment_and_never_reach_a_log(
    s3: S3Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert secret_fields(S3Settings) == ["access_key_id", "secret_access_key", "session_token"]
    options = {k: v for k, v in s3.settings().items() if k not in WRONG_KEYS}
    with pytest.raises(ConfigError, match="DAMDUP_FOTOT_SECRET_ACCESS_KEY"):
        build_adapter("fotot", "s3", {**options, "secret_access_key": s3.secret_access_key})
    monkeypatch.setenv("DAMDUP_FOTOT_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("DAMDUP_FOTOT_SECRET_ACCESS_KEY", s3.secret_access_key)
    key = s3.add("kuva.jpg", PHOTOS[0].read_bytes())
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    with structlog.testing.capture_logs() as events:
        adapter = build_adapter("fotot", "s3", options)
        [ref] = listed(adapter)
        assert ref.id == key
        assert adapter.fetch_original(ref) == PHOTOS[0].read_bytes()
        adapter.annotate(ref, FULL)
        assert s3.proxy is not None
        s3.proxy.inject("401", times=1)
        s3.proxy.inject("500", times=10)
        for failing in (adapter.list_assets, adapter.list_assets):
            with pytest.raises(AdapterError) as caught:
                failing(None)
            errors.append(str(caught.value))
    text = caplog.text + repr(events) + " ".join(errors)
    assert "Sending http request" in caplog.text, "botocore's debug lines were captured"
    assert "REDACTED" in caplog.text
    assert s3.access_key_id not in text
    assert s3.secret_access_key not in text


def test_wrong_keys_are_auth_failed_naming_credentials(s3: S3Harness) -> None:
    one_photo(s3)
    with pytest.raises(AuthFailed, match=r"InvalidAccessKeyId.*credentials") as caught:
        s3.adapter(**WRONG_KEYS).list_assets(None)
    assert WRONG_KEYS["access_key_id"] not in str(caught.value)


def test_no_credentials_anywhere_is_auth_failed_without_a_request(
    s3: S3Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    options = {k: v for k, v in s3.settings().items() if k not in WRONG_KEYS}
    with pytest.raises(AuthFailed, match="credentials"):
        S3(S3Settings(**options)).list_assets(None)
    assert s3.proxy is not None and s3.proxy.log == []


def test_a_key_without_its_secret_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="together"):
        S3Settings(bucket=BUCKET, access_key_id="AKIAEXAMPLEEXAMPLE00")
