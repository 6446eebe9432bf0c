"""The azure_blob adapter against Azurite behind the fault proxy: what the
contract suite cannot say about Blob Storage in particular (the 10-tag limit,
the tag character set, ServerBusy, SAS tokens, secrets kept out of logs,
which blobs count as images)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.blob import ContainerSasPermissions, ContentSettings, generate_container_sas
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from adapters.azure_blob import (
    MAX_TAGS,
    AzureBlob,
    AzureBlobSettings,
)
from adapters.base import (
    MARK_LABELS,
    AssetRef,
    AuthFailed,
    BadAsset,
    Marks,
    MarksDoNotFit,
    NotFound,
    RateLimited,
    RequestEvent,
    Retryable,
    Unavailable,
)
from adapters.tags import marks_to_tags, tags_to_marks
from connector.core.config import ConfigError
from connector.units import unit_settings
from tests.servers.azure import (
    ACCOUNT,
    ACCOUNT_KEY,
    CONTAINER,
    PREFIX,
    AzureHarness,
    read_tag_marks,
)
from tests.servers.common import photo_paths

PHOTOS = photo_paths(variant="original")
TAG_TEXT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 +-./:=_")
NASTY_URL = "https://www.hel.fi/kuvat/Temppeliaukion kirkko ä.jpg?size=full&v=2%20x#top"
FULL = Marks(labels=("duplicate",), cluster="dd0123456789", canonical_url=NASTY_URL)


@pytest.fixture(scope="module")
def server() -> Iterator[AzureHarness]:
    harness = AzureHarness()
    yield harness
    harness.close()


@pytest.fixture
def azure(server: AzureHarness) -> AzureHarness:
    server.reset()
    return server


def adapter(azure: AzureHarness, **overrides: Any) -> AzureBlob:
    made = azure.adapter(**overrides)
    assert isinstance(made, AzureBlob)
    return made


def listing(made: AzureBlob) -> list[AssetRef]:
    items: list[AssetRef] = []
    for page in made.iter_pages():
        items += page.items
    return items


def one(azure: AzureHarness, name: str = "photo.jpg") -> AssetRef:
    asset_id = azure.add(name, PHOTOS[0].read_bytes())
    [ref] = [ref for ref in listing(adapter(azure)) if ref.id == asset_id]
    return ref


def changing(azure: AzureHarness) -> list[str]:
    assert azure.proxy is not None
    return [entry.path for entry in azure.proxy.log if azure.changing(entry)]


def foreign_tags(count: int) -> dict[str, str]:
    return {f"luokka{number}": f"arvo {number}" for number in range(count)}


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def sas(permission: ContainerSasPermissions) -> str:
    return generate_container_sas(
        ACCOUNT,
        CONTAINER,
        account_key=ACCOUNT_KEY,
        permission=permission,
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def signature(token: str) -> str:
    [value] = [part[4:] for part in token.split("&") if part.startswith("sig=")]
    return value


# -- the 10-tag limit --------------------------------------------------------------


def test_marks_that_do_not_fit_beside_nine_foreign_tags_write_nothing(
    azure: AzureHarness,
) -> None:
    ref = one(azure)
    blob = azure.container.get_blob_client(ref.id)
    blob.set_blob_tags(foreign_tags(9))
    azure.proxy.clear()  # type: ignore[union-attr]
    made = adapter(azure)
    with pytest.raises(MarksDoNotFit, match="9 index tags of others"):
        made.annotate(ref, FULL)
    assert blob.get_blob_tags() == foreign_tags(9)
    assert changing(azure) == []
    # One label alone is one tag: the tenth fits.
    assert made.annotate(ref, Marks(labels=("related",))) is True
    assert blob.get_blob_tags() == {**foreign_tags(9), "damdup-marks": "related"}


def test_damdup_s_own_earlier_tags_leave_room_for_its_new_ones(azure: AzureHarness) -> None:
    ref = one(azure)
    blob = azure.container.get_blob_client(ref.id)
    made = adapter(azure)
    blob.set_blob_tags(foreign_tags(7))
    assert made.annotate(ref, FULL) is True
    assert len(blob.get_blob_tags()) == MAX_TAGS
    moved = Marks(labels=("duplicate-candidate",), cluster="ddabcdefabcd", canonical_url=NASTY_URL)
    assert made.annotate(ref, moved) is True
    tags = blob.get_blob_tags()
    assert len(tags) == MAX_TAGS
    assert read_tag_marks(tags) == moved
    assert {key: value for key, value in tags.items() if not key.startswith("damdup-")} == (
        foreign_tags(7)
    )


def test_removing_marks_from_a_blob_full_of_foreign_tags_sends_nothing(
    azure: AzureHarness,
) -> None:
    ref = one(azure)
    blob = azure.container.get_blob_client(ref.id)
    blob.set_blob_tags(foreign_tags(MAX_TAGS))
    azure.proxy.clear()  # type: ignore[union-attr]
    assert adapter(azure).annotate(ref, Marks()) is False
    assert changing(azure) == []
    assert blob.get_blob_tags() == foreign_tags(MAX_TAGS)


# -- the tag character set --------------------------------------------------------

urls = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=700)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.sets(st.sampled_from(MARK_LABELS)),
    cluster=st.none() | st.from_regex(r"dd[0-9a-f]{10}", fullmatch=True),
    canonical=st.none() | urls,
)
def test_every_mark_encodes_to_valid_tags_and_back(
    labels: set[str], cluster: str | None, canonical: str | None
) -> None:
    marks = Marks(labels=tuple(labels), cluster=cluster, canonical_url=canonical)
    tags = marks_to_tags(marks)
    for key, value in tags.items():
        assert key.startswith("damdup-") and 1 <= len(key) <= 128
        assert len(value) <= 256 and set(value) <= TAG_TEXT
    assert tags_to_marks(tags) == marks
    assert read_tag_marks(tags) == marks  # the documented form, read apart from the adapter


def test_plain_values_stay_readable_and_others_are_base64() -> None:
    plain = marks_to_tags(
        Marks(labels=("canonical", "related"), canonical_url="https://kuvat.hel.fi/a/b-1.jpg")
    )
    assert plain == {
        "damdup-marks": "canonical related",
        "damdup-canonical": "https://kuvat.hel.fi/a/b-1.jpg",
    }
    tags = marks_to_tags(Marks(canonical_url=NASTY_URL))
    assert tags["damdup-canonical"].startswith("b64:")
    assert base64.urlsafe_b64decode(tags["damdup-canonical"][4:]).decode() == NASTY_URL
    # A link that itself starts like an encoded value is encoded too.
    tricky = Marks(canonical_url="b64:aGVq")
    assert marks_to_tags(tricky)["damdup-canonical"] != "b64:aGVq"
    assert tags_to_marks(marks_to_tags(tricky)) == tricky


def test_a_long_canonical_link_round_trips_through_azurite(azure: AzureHarness) -> None:
    ref = one(azure)
    long_url = "https://www.hel.fi/kuvat/" + "Ääkkönen/" * 60 + "kuva.jpg?koko=iso#alku"
    marks = Marks(labels=("duplicate",), cluster="dd00000000ff", canonical_url=long_url)
    made = adapter(azure)
    assert made.annotate(ref, marks) is True
    stored = azure.container.get_blob_client(ref.id).get_blob_tags()
    assert {"damdup-canonical", "damdup-canonical-2", "damdup-canonical-3"} <= set(stored)
    assert azure.stored_marks(ref.id) == marks
    assert adapter(azure).read_marks(ref) == marks
    assert made.annotate(ref, marks) is False


def test_tags_damdup_cannot_read_are_read_leniently_and_replaced(azure: AzureHarness) -> None:
    ref = one(azure)
    azure.container.get_blob_client(ref.id).set_blob_tags({"damdup-marks": "kaksoiskappale"})
    # An unknown label (a hand edit) reads as no marks, so a push puts the right ones back.
    assert adapter(azure).read_marks(ref) == Marks()
    # annotate still replaces them: they are damdup's.
    assert adapter(azure).annotate(ref, Marks(labels=("related",))) is True
    assert azure.stored_marks(ref.id) == Marks(labels=("related",))


# -- faults ------------------------------------------------------------------------


def test_server_busy_is_retried(azure: AzureHarness) -> None:
    ids = [azure.add(f"kuva-{n}.jpg", PHOTOS[n].read_bytes()) for n in range(2)]
    proxy = azure.proxy
    assert proxy is not None
    proxy.clear()
    proxy.inject("503", times=2, path_contains="comp=list", retry_after=0)
    assert sorted(ref.id for ref in listing(adapter(azure))) == sorted(ids)
    assert [entry.fault for entry in proxy.requests(path_contains="comp=list")] == [
        "503",
        "503",
        None,
    ]


def test_the_observer_hears_of_every_attempt(azure: AzureHarness) -> None:
    azure.add("kuva.jpg", PHOTOS[0].read_bytes())
    proxy = azure.proxy
    assert proxy is not None
    proxy.clear()
    proxy.inject("503", times=1, path_contains="comp=list", retry_after=0)
    events: list[RequestEvent] = []
    listing(AzureBlob(AzureBlobSettings(**azure.settings()), observer=events.append))
    assert [(e.kind, e.method, e.status) for e in events] == [
        ("azure_blob", "GET", 503),
        ("azure_blob", "GET", 200),
    ]


def test_server_busy_that_lasts_ends_after_the_configured_attempts(azure: AzureHarness) -> None:
    azure.add("kuva.jpg", PHOTOS[0].read_bytes())
    proxy = azure.proxy
    assert proxy is not None
    proxy.clear()
    proxy.inject("503", times=50, path_contains="comp=list", retry_after=0)
    with pytest.raises(Retryable, match="503"):
        listing(adapter(azure, attempts=3))
    assert len(proxy.requests(path_contains="comp=list")) == 3


def test_a_retry_after_longer_than_allowed_ends_the_request(azure: AzureHarness) -> None:
    ref = one(azure)
    proxy = azure.proxy
    assert proxy is not None
    proxy.clear()
    proxy.inject("429", times=5, retry_after=120)
    with pytest.raises(RateLimited) as caught:
        adapter(azure, max_retry_after_s=5).read_marks(ref)
    assert caught.value.retry_after == 120
    assert len(proxy.log) == 1


def test_a_wrong_account_key_is_auth_failed(azure: AzureHarness) -> None:
    ref = one(azure)
    overrides = azure.bad_credentials()
    assert overrides is not None
    made = adapter(azure, **overrides)
    # Azure answers 403 AuthenticationFailed, Azurite 403 AuthorizationFailure.
    with pytest.raises(AuthFailed, match="403"):
        listing(made)
    with pytest.raises(AuthFailed, match="credentials"):
        made.annotate(ref, FULL)


def test_a_sas_token_without_tag_rights_cannot_mark(azure: AzureHarness) -> None:
    ref = one(azure)
    token = sas(ContainerSasPermissions(read=True, list=True))
    made = adapter(azure, account_key=None, sas_token=token)
    assert [item.id for item in listing(made)] == [ref.id]
    assert made.fetch_original(ref) == PHOTOS[0].read_bytes()
    with pytest.raises(AuthFailed, match="403"):
        made.annotate(ref, FULL)
    assert azure.stored_marks(ref.id) == Marks()


def test_a_sas_token_with_tag_rights_marks(azure: AzureHarness) -> None:
    ref = one(azure)
    token = sas(ContainerSasPermissions(read=True, list=True, tag=True))
    made = adapter(azure, account_key=None, sas_token="?" + token)
    assert made.annotate(ref, FULL) is True
    assert azure.stored_marks(ref.id) == FULL


def test_a_missing_container_is_named(azure: AzureHarness) -> None:
    with pytest.raises(NotFound, match="container does not exist"):
        listing(adapter(azure, container="ei-ole"))


def test_removed_blob_is_gone_for_exists_fetch_and_marks(azure: AzureHarness) -> None:
    ref = one(azure)
    made = adapter(azure)
    assert made.exists(ref) is True
    azure.remove(ref.id)
    assert made.exists(ref) is False
    with pytest.raises(NotFound):
        made.read_marks(ref)


# -- secrets -----------------------------------------------------------------------


def test_neither_key_nor_sas_reaches_a_log_or_an_error(
    azure: AzureHarness, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    ref = one(azure)
    token = sas(ContainerSasPermissions(read=True, list=True, tag=True))
    proxy = azure.proxy
    assert proxy is not None
    messages: list[str] = []
    for credentials in ({"account_key": ACCOUNT_KEY}, {"account_key": None, "sas_token": token}):
        made = adapter(azure, **credentials)
        proxy.inject("500", times=1, retry_after=0)  # a retry, logged with its URL
        listing(made)
        made.fetch_original(ref)
        made.annotate(ref, FULL)
        made.annotate(ref, Marks())
        proxy.inject("503", times=20, retry_after=0)
        with pytest.raises(Retryable) as busy:
            adapter(azure, attempts=2, **credentials).read_marks(ref)
        messages.append(str(busy.value))
        proxy.clear()
    # Nothing listens here: the transport's own error names the URL it tried.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    refused = adapter(
        azure,
        base_url=f"http://127.0.0.1:{closed}/{ACCOUNT}/",
        account_key=None,
        sas_token=token,
        attempts=1,
    )
    with pytest.raises(Unavailable) as caught:
        listing(refused)
    messages.append(str(caught.value))
    assert "127.0.0.1" in messages[-1]
    wrong = adapter(azure, account_key=base64.b64encode(b"x" * 64).decode())
    with pytest.raises(AuthFailed) as denied:
        listing(wrong)
    messages.append(str(denied.value))
    printed = capsys.readouterr()
    everything = "\n".join([caplog.text, printed.out, printed.err, *messages])
    assert "http.request" in everything  # the retries were logged
    sig = signature(token)
    for secret in (ACCOUNT_KEY, ACCOUNT_KEY[:20], sig, sig.replace("%2B", "+"), sig[:16]):
        assert secret not in everything


def test_secrets_cannot_be_written_in_the_configuration_file() -> None:
    with pytest.raises(ConfigError, match="DAMDUP_KUVAT_ACCOUNT_KEY"):
        unit_settings(
            "kuvat",
            "azure_blob",
            {
                "base_url": "https://x.blob.core.windows.net/",
                "container": "kuvat",
                "account_key": "k",
            },
        )
    with pytest.raises(ValidationError, match="SAS token is a secret"):
        AzureBlobSettings(
            base_url="https://x.blob.core.windows.net/?sv=2024&sig=abc", container="kuvat"
        )
    with pytest.raises(ValidationError, match="not both"):
        AzureBlobSettings(
            base_url="https://x.blob.core.windows.net/",
            container="kuvat",
            account_key="a2V5",
            sas_token="sv=1&sig=2",
        )


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAMDUP_KUVAT_ACCOUNT_KEY", ACCOUNT_KEY)
    _, settings_ = unit_settings(
        "kuvat",
        "azure_blob",
        {"base_url": "https://x.blob.core.windows.net/", "container": "kuvat"},
    )
    assert isinstance(settings_, AzureBlobSettings) and settings_.account_key is not None
    assert settings_.account_key.get_secret_value() == ACCOUNT_KEY
    assert ACCOUNT_KEY not in repr(settings_)


# -- which blobs are listed --------------------------------------------------------


def test_only_images_under_the_prefix_are_listed(azure: AzureHarness) -> None:
    jpeg, png = PHOTOS[0].read_bytes(), png_bytes()
    put = azure.container.upload_blob

    def upload(name: str, data: bytes, kind: str | None) -> None:
        put(name, data, overwrite=True, content_settings=ContentSettings(content_type=kind))

    upload(f"{PREFIX}vague.jpg", jpeg, "application/octet-stream")
    upload(f"{PREFIX}no-extension", png, "image/png")
    upload(f"{PREFIX}notes.jpg", b"not an image", "text/plain")
    upload(f"{PREFIX}vague.txt", b"not an image", "application/octet-stream")
    upload(f"{PREFIX}kansio/", b"", "application/octet-stream")
    upload("muut/outside.jpg", jpeg, "image/jpeg")
    listed = sorted(ref.id for ref in listing(adapter(azure)))
    assert listed == [f"{PREFIX}no-extension", f"{PREFIX}vague.jpg"]
    everywhere = sorted(ref.id for ref in listing(adapter(azure, prefix="")))
    assert everywhere == ["kuvat/no-extension", "kuvat/vague.jpg", "muut/outside.jpg"]


def test_a_listed_blob_carries_its_hash_version_url_and_metadata(azure: AzureHarness) -> None:
    data = PHOTOS[1].read_bytes()
    asset_id = azure.add("Tuomiokirkko ä.jpg", data, {"location": "Senaatintori"})
    [ref] = [ref for ref in listing(adapter(azure, page_size=1)) if ref.id == asset_id]
    assert ref.content_hash == "md5:" + hashlib.md5(data).hexdigest()
    assert ref.size_bytes == len(data)
    assert ref.url.endswith(f"/{ACCOUNT}/{CONTAINER}/kuvat/Tuomiokirkko%20%C3%A4.jpg")
    assert ref.metadata.location == "Senaatintori" and ref.metadata.department is None
    assert adapter(azure).fetch_original(ref) == data
    azure.touch(asset_id)
    [again] = [item for item in listing(adapter(azure)) if item.id == asset_id]
    assert again.version != ref.version


def test_a_blob_over_the_size_cap_is_recorded_not_fetched(azure: AzureHarness) -> None:
    ref = one(azure)
    made = adapter(azure, max_file_bytes=1000)
    [listed] = listing(made)
    assert listed.problem is not None and "max_file_bytes" in listed.problem
    with pytest.raises(BadAsset, match="over"):
        made.fetch_original(ref)


def test_a_public_container_lists_without_credentials(azure: AzureHarness) -> None:
    if importlib.util.find_spec("azure.identity") is not None:
        pytest.skip("azure-identity is installed: no credentials means DefaultAzureCredential")
    azure.container.set_container_access_policy({}, public_access="container")
    try:
        ref = one(azure)
        made = adapter(azure, account_key=None)
        assert [item.id for item in listing(made)] == [ref.id]
        with pytest.raises((AuthFailed, NotFound)):
            made.annotate(ref, FULL)
    finally:
        azure.container.set_container_access_policy({}, public_access=None)
    # Azure answers a private container's anonymous listing 404, Azurite 403.
    with pytest.raises((NotFound, AuthFailed), match="the unit has no credentials"):
        listing(adapter(azure, account_key=None))
