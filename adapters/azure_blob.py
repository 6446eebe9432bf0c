"""Azure Blob Storage: the images of one container (optionally under a name
prefix), read and marked through the Azure SDK (azure-storage-blob).

Blob Storage speaks a signed protocol (SharedKey, SAS, Microsoft Entra ID
tokens) with its own XML paging and tag API, so this adapter uses Microsoft's
SDK rather than `adapters.http`. The SDK sends every request; what is
retried, how long to wait (Retry-After honoured up to `max_retry_after_s`),
which typed error an answer is, which answers are of the wrong type and what
is redacted are decided by `adapters.transport`, the policy of every adapter,
through the SDK's pipeline (`_Retry`, `_check_answer`) and its errors
(`_translate`).

Listing: `List Blobs` in pages of `page_size` (`maxresults`, at most 5000);
the cursor is the service's continuation marker. Blobs are listed in name
order and the marker names the next blob, so a blob deleted or added during a
listing never makes another one skipped. Only images are listed: a blob whose
content type is `image/*`, or a vague one (`application/octet-stream`, none)
with an image file extension. There is no "modified since" listing, so every
sync lists the whole container; the engine compares each blob's `version`
(its ETag and size) with the index and fetches only what changed.

Marks are blob index tags (`Set Blob Tags` replaces all of a blob's tags, so
the tags of others are always sent back unchanged). Azure allows 10 tags a
blob, keys of 1-128 and values of 0-256 characters from letters, digits,
space and `+ - . / : = _`. A value outside that set (a canonical URL with
`?&%#` or "ä") is written as `b64:` + URL-safe base64 of its UTF-8, and a
value longer than 256 characters continues in `<key>-2`, `<key>-3`, ...: the
same tags as on S3 (`adapters.tags.marks_to_tags`). When the other tags leave no room, nothing is
written and `MarksDoNotFit` says why. Setting tags changes neither the
blob's ETag nor its Last-Modified time, so marks never change `version`.

Credentials, in this order: `account_key` (Shared Key), `sas_token`, else
Microsoft Entra ID through `azure.identity.DefaultAzureCredential` when the
azure-identity package is installed (managed identity, workload identity,
environment, Azure CLI), else none (a container with public read access).
Key and SAS come only from the environment (`DAMDUP_<UNIT>_ACCOUNT_KEY`,
`DAMDUP_<UNIT>_SAS_TOKEN`); neither ever reaches a log or an error message.

Docs: List Blobs https://learn.microsoft.com/rest/api/storageservices/list-blobs,
Set Blob Tags https://learn.microsoft.com/rest/api/storageservices/set-blob-tags,
index tags https://learn.microsoft.com/azure/storage/blobs/storage-manage-find-blobs,
errors https://learn.microsoft.com/rest/api/storageservices/blob-service-error-codes,
SDK https://learn.microsoft.com/python/api/overview/azure/storage-blob-readme.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobProperties, ContainerClient, ExponentialRetry
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from adapters import transport
from adapters.base import (
    Adapter,
    AdapterError,
    AssetRef,
    BadAsset,
    Capabilities,
    Marks,
    MarksDoNotFit,
    MetadataMapping,
    NotFound,
    Page,
    PublicLinkSettings,
    RemoteSettings,
    RequestObserver,
    Unavailable,
    has_image_extension,
    name_at,
)
from adapters.tags import is_mark_tag, marks_to_tags, tags_to_marks

__all__ = [
    "AzureBlob",
    "AzureBlobCursor",
    "AzureBlobSettings",
    "MAX_TAGS",
]

MAX_TAGS = 10  # index tags a blob may carry
VAGUE_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
AUTH_HINT = (
    "check the unit's credentials (account_key, sas_token or the Azure identity) and their rights"
)
# Failures below the retry policy worth another attempt: the connection
# broke or timed out, or the answer's body was cut short.
TRANSIENT = (ServiceRequestError, ServiceResponseError, IncompleteReadError)

T = TypeVar("T")


class AzureBlobSettings(RemoteSettings, PublicLinkSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_AZURE_BLOB_", extra="forbid")
    # base_url: the account's blob endpoint, https://<account>.blob.core.windows.net/
    # (Azurite: http://127.0.0.1:10000/devstoreaccount1/).
    container: str = Field(
        pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$",
        min_length=3,
        max_length=63,
        description="the container's name (3-63 lower-case letters, digits and single hyphens)",
    )
    prefix: str = Field("", description="only blobs whose names start with this, e.g. kuvat/")
    page_size: int = Field(1000, ge=1, le=5000, description="blobs per List Blobs (at most 5000)")
    account_name: str | None = Field(
        None,
        description="for account_key when base_url does not name the account (a custom domain)",
    )
    account_key: SecretStr | None = Field(None, description="the storage account's access key")
    sas_token: SecretStr | None = Field(
        None, description="a SAS token (sv=...&sig=...): list and read, plus tag to write marks"
    )
    max_file_bytes: int = Field(
        transport.MAX_FILE_BYTES, ge=1, description="larger blobs are skipped"
    )
    # Blob Storage has no fields for these: units keep them in blob metadata
    # (x-ms-meta-*). The record is the blob: name, content_type, size,
    # last_modified, created, metadata.<key> and, when a path asks, tags.<key>.
    metadata: MetadataMapping = MetadataMapping(
        location="metadata.location", date="metadata.date", department="metadata.department"
    )

    @field_validator("base_url")
    @classmethod
    def _no_query(cls, value: Any) -> Any:
        if urlsplit(str(value)).query:
            raise ValueError(
                "base_url must not carry a query (a SAS token is a secret: set it in the "
                "environment as sas_token)"
            )
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> AzureBlobSettings:
        if self.account_key is not None and self.sas_token is not None:
            raise ValueError("give account_key or sas_token, not both")
        return self


class AzureBlobCursor(BaseModel):
    """Where a listing resumes: the service's continuation marker. A
    completed listing returns no cursor (every sync is a full listing)."""

    model_config = ConfigDict(frozen=True)
    marker: str | None = None


class AzureBlob(Adapter[AzureBlobCursor]):
    kind: ClassVar[str] = "azure_blob"
    settings_model = AzureBlobSettings
    cursor_model = AzureBlobCursor
    capabilities = Capabilities(annotate=True, describe=True, exists=True, fetch_url=True)

    def __init__(
        self, settings: AzureBlobSettings, observer: RequestObserver | None = None
    ) -> None:
        super().__init__(settings, observer)
        self.secrets = [
            secret.get_secret_value()
            for secret in (settings.account_key, settings.sas_token)
            if secret is not None
        ]
        transport.LogRedactor.install(self.secrets)
        account_url = str(settings.base_url).rstrip("/")
        credential = self._credential()
        self.anonymous = credential is None
        self.container = ContainerClient(
            account_url,
            settings.container,
            credential=credential,
            retry_policy=_Retry(
                transport.RetryPolicy(
                    attempts=settings.attempts, max_retry_after_s=settings.max_retry_after_s
                ),
                self.secrets,
                observer,
            ),
            # Proxies from the environment never see the unit's credentials.
            transport=RequestsTransport(
                use_env_settings=False,
                connection_timeout=min(5.0, settings.timeout_s),
                read_timeout=settings.timeout_s,
            ),
            user_agent=transport.USER_AGENT,
            raw_response_hook=_check_answer,
        )
        self._include = ["metadata"]
        paths = [settings.metadata.location, settings.metadata.date, settings.metadata.department]
        if any(path and path.startswith("tags.") for path in paths):
            self._include.append("tags")  # Get Blob Tags rights needed for listing then

    def _credential(self) -> Any:
        settings = self.settings
        if settings.account_key is not None:
            key = settings.account_key.get_secret_value()
            if settings.account_name:
                return {"account_name": settings.account_name, "account_key": key}
            return key  # the SDK takes the account's name from base_url
        if settings.sas_token is not None:
            return AzureSasCredential(settings.sas_token.get_secret_value().lstrip("?"))
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            return None  # anonymous: a container with public read access
        return DefaultAzureCredential()

    # -- listing ---------------------------------------------------------------

    def list_assets(self, cursor: AzureBlobCursor | None) -> Page[AzureBlobCursor]:
        marker = cursor.marker if cursor else None
        what = f"listing container {self.settings.container}"

        def one_page() -> tuple[list[BlobProperties], str | None]:
            pages = self.container.list_blobs(
                name_starts_with=self.settings.prefix or None,
                include=self._include,
                results_per_page=self.settings.page_size,
            ).by_page(continuation_token=marker)
            blobs = list(next(pages))
            token: str | None = pages.continuation_token  # type: ignore[attr-defined]
            return blobs, token or None

        blobs, following = self._call(what, one_page)
        items = [self._ref(blob) for blob in blobs if _is_image(blob)]
        if following is None:
            return Page(items=items, cursor=None, complete=True)
        return Page(items=items, cursor=AzureBlobCursor(marker=following), complete=False)

    def _ref(self, blob: BlobProperties) -> AssetRef:
        name = str(blob.name)
        etag = str(blob.etag or "").strip('"')
        size = int(blob.size) if blob.size is not None else None
        md5 = blob.content_settings.content_md5
        modified = blob.last_modified.isoformat() if blob.last_modified else None
        record = {
            "name": name,
            "content_type": blob.content_settings.content_type,
            "size": size,
            "last_modified": modified,
            "created": blob.creation_time.isoformat() if blob.creation_time else None,
            "metadata": dict(blob.metadata or {}),
            "tags": dict(blob.tags or {}),
        }
        too_large = size is not None and size > self.settings.max_file_bytes
        return AssetRef(
            id=name,
            # Tags change neither; metadata and content changes move the ETag.
            version=f"{etag}|{size if size is not None else ''}",
            url=self._blob_url(name),
            size_bytes=size,
            modified=modified,
            content_hash=f"md5:{bytes(md5).hex()}" if md5 else None,
            metadata=self.settings.metadata.apply(record),
            problem=(
                f"the blob has {size:,} bytes, over the unit's max_file_bytes "
                f"({self.settings.max_file_bytes:,})"
                if too_large
                else None
            ),
        )

    def describe(self, asset_id: str) -> AssetRef:
        """The blob's own listing entry: List Blobs with the name as the
        prefix and maxresults 1 answers with the blob itself first when it
        exists (names come in order, and a name sorts before every longer one
        it begins), with the metadata and tags a listing includes, so the ref
        is the listing's. Get Blob Properties would need a second request for
        the tags it only counts.
        https://learn.microsoft.com/rest/api/storageservices/list-blobs"""
        if not asset_id or not asset_id.startswith(self.settings.prefix):
            raise NotFound(f"blob {asset_id!r} is outside the unit's prefix")

        def first() -> list[BlobProperties]:
            pages = self.container.list_blobs(
                name_starts_with=asset_id, include=self._include, results_per_page=1
            ).by_page()
            return list(next(pages))

        blobs = self._call(f"reading blob {asset_id}", first)
        if not blobs or blobs[0].name != asset_id:
            raise NotFound(f"blob {asset_id} is not in container {self.settings.container}")
        if not _is_image(blobs[0]):
            raise NotFound(f"blob {asset_id} is not an image")
        return self._ref(blobs[0])

    def fetch_url(self, url: str) -> bytes:
        """A blob of the unit's container at its address, read with the
        unit's client; other hosts and containers are refused."""
        name = name_at(url, self.container.url.split("?")[0] + "/")
        if name is None or not name.startswith(self.settings.prefix):
            raise BadAsset(f"{url} is not a blob's address in container {self.settings.container}")
        return self._download(name, None)

    def relative_path(self, asset: AssetRef) -> str:
        return asset.id.removeprefix(self.settings.prefix)

    def _blob_url(self, name: str) -> str:
        return f"{self.container.url.split('?')[0]}/{quote(name, safe='~/')}"

    # -- reading ---------------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        """The original: Blob Storage keeps no smaller copies."""
        return self._download(asset.id, asset.size_bytes)

    def _download(self, name: str, size: int | None) -> bytes:
        cap = self.settings.max_file_bytes
        if size is not None and size > cap:
            raise BadAsset(f"blob {name} has {size:,} bytes, over {cap:,}")
        blob = self.container.get_blob_client(name)
        what = f"downloading blob {name}"
        # The first request brings the size (and up to 32 MiB); the rest only
        # when it is under the cap.
        downloader = self._call(what, lambda: blob.download_blob(max_concurrency=1))
        if downloader.size > cap:
            raise BadAsset(f"blob {name} has {downloader.size:,} bytes, over {cap:,}")
        data: bytes = self._call(what, downloader.readall)
        return data

    def probe(self, asset: AssetRef) -> None:
        blob = self.container.get_blob_client(asset.id)
        self._call(f"reading blob {asset.id}", blob.get_blob_properties)

    # -- marks -----------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        return tags_to_marks(self._tags(asset.id))

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        current = self._tags(asset.id)
        others = {key: value for key, value in current.items() if not is_mark_tag(key)}
        ours = marks_to_tags(marks)
        wanted = {**others, **ours}
        if wanted == current:
            return False
        if len(wanted) > MAX_TAGS:
            raise MarksDoNotFit(
                f"blob {asset.id} carries {len(others)} index tags of others and damdup's marks "
                f"need {len(ours)}; Azure allows {MAX_TAGS} a blob. Nothing was written."
            )
        blob = self.container.get_blob_client(asset.id)
        # Set Blob Tags replaces the whole set: the others' tags go back as read.
        self._call(f"setting the tags of blob {asset.id}", lambda: blob.set_blob_tags(wanted))
        return True

    def _tags(self, name: str) -> dict[str, str]:
        blob = self.container.get_blob_client(name)
        tags: dict[str, str] = self._call(f"reading the tags of blob {name}", blob.get_blob_tags)
        return dict(tags)

    # -- errors ----------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one SDK call (retried inside by `_Retry`); its errors become
        the typed errors of `adapters.base`, secrets removed from every word."""
        try:
            return action()
        except AdapterError:
            raise
        except AzureError as exc:
            raise self._translate(what, exc) from None
        except (StopIteration, AttributeError, TypeError, ValueError, KeyError) as exc:
            # The SDK met an answer of a shape it does not know (a proxy's, a
            # misrouted request's): never an empty listing that retires all.
            raise Unavailable(
                f"{what}: the answer was not what Blob Storage sends "
                f"({type(exc).__name__}: {self._redact(str(exc))[:200]})"
            ) from None

    def _translate(self, what: str, exc: AzureError) -> AdapterError:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        code = getattr(exc, "error_code", None) or ""
        code = str(getattr(code, "value", code))  # the SDK's StorageErrorCode is an enum
        text = self._redact(_first_line(exc))
        shown = f"{status or ''} {code}".strip()
        where = f"{what} at {self._redact(self.container.url)}"
        anonymous = (
            " (the unit has no credentials: set account_key or sas_token in the environment, "
            "or install azure-identity)"
            if self.anonymous
            else ""
        )
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            # No status: the credential found no token to send.
            effective = status if status in (401, 403) else 401
            shown = shown or "no token"
        elif isinstance(exc, ResourceNotFoundError) or status == 404:
            if code == "ContainerNotFound" or (status == 404 and "comp=list" in _url_of(exc)):
                return NotFound(
                    f"{where}: the container does not exist ({shown})"
                    + (f", or it is private{anonymous}" if anonymous else "")
                )
            effective = 404
        elif isinstance(exc, HttpResponseError) and status is not None and status >= 400:
            effective = status
        elif isinstance(exc, DecodeError):
            return Unavailable(f"{where}: the answer could not be read: {text}")
        elif isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return Unavailable(f"{where} failed: {text}")
        else:
            return Unavailable(f"{where}: {type(exc).__name__}: {text}")
        return transport.error_for_status(
            effective,
            where,
            text,
            retry_after=_retry_after(exc),
            shown=shown or None,
            auth_hint=AUTH_HINT + anonymous,
        )

    def _redact(self, text: str) -> str:
        return transport.redact_text(text, self.secrets)


# -- the SDK's pipeline ----------------------------------------------------------


class _Retry(ExponentialRetry):
    """The storage SDK's retry policy, deciding by `adapters.transport`: a
    status the policy retries, or a broken connection, time-out or cut body
    (`TRANSIENT`), is tried again `attempts` times in all, waiting what the
    policy says (Retry-After, else backoff with full jitter); a Retry-After
    longer than `max_retry_after_s` ends the request. Each attempt is
    recorded like the HTTP client's. The SDK's own policy retries no 429 and
    waits 15 s and more between tries. The base class keeps its bookkeeping
    (history, rewinding a request body)."""

    def __init__(
        self, policy: transport.RetryPolicy, secrets: list[str], observer: RequestObserver | None
    ) -> None:
        retries = policy.attempts - 1
        super().__init__(
            retry_total=retries,
            retry_connect=retries,
            retry_read=retries,
            retry_status=retries,
            retry_to_secondary=False,
        )
        self.policy = policy
        self.secrets = secrets
        self.observer = observer

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        settings = self.configure_retries(request)
        sender = request.context.transport  # the SDK's, which sleeps
        http_request = request.http_request
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                response = self.next.send(request)
            except ClientAuthenticationError:
                raise  # a token that cannot be had: no retry makes one
            except AzureError as exc:
                self._record(http_request, None, started, attempt, _first_line(exc))
                wait_s = self.policy.delay(attempt) if isinstance(exc, TRANSIENT) else None
                if wait_s is not None and self.increment(settings, request=http_request, error=exc):
                    self._pause(wait_s, sender)
                    continue
                raise
            status = response.http_response.status_code
            self._record(http_request, status, started, attempt, None)
            if transport.retryable_status(status):
                retry_after = transport.parse_retry_after(
                    response.http_response.headers.get("Retry-After")
                )
                wait_s = self.policy.delay(attempt, retry_after)
                if wait_s is not None and self.increment(
                    settings, request=http_request, response=response.http_response
                ):
                    self._pause(wait_s, sender)
                    continue
            break
        if settings["history"]:
            response.context["history"] = settings["history"]
        response.http_response.location_mode = settings["mode"]
        return response

    @staticmethod
    def _pause(wait_s: float, sender: Any) -> None:
        if wait_s > 0:
            sender.sleep(wait_s)

    def _record(
        self, http_request: Any, status: int | None, started: float, attempt: int, error: str | None
    ) -> None:
        transport.record_request(
            "azure_blob",
            self.observer,
            method=str(http_request.method),
            url=transport.redact_url(str(http_request.url), self.secrets),
            status=status,
            elapsed_s=time.monotonic() - started,
            attempt=attempt,
            error=transport.redact_text(error, self.secrets) if error else None,
        )


def _check_answer(response: PipelineResponse[Any, Any]) -> None:
    """A listing or tag set that is not XML (a proxy's login page, a
    misrouted request's JSON) stops with a clear error instead of reaching
    the SDK's parser."""
    http_request, http_response = response.http_request, response.http_response
    if http_request.method != "GET" or not 200 <= http_response.status_code < 300:
        return
    comp = dict(parse_qsl(urlsplit(http_request.url).query)).get("comp")
    if comp not in ("list", "tags"):
        return
    transport.check_body(
        f"GET {transport.redact_url(http_request.url)}",
        http_response.headers.get("Content-Type") or "",
        http_response.body(),
        "xml",
    )


# -- helpers ---------------------------------------------------------------------


def _is_image(blob: BlobProperties) -> bool:
    kind = (blob.content_settings.content_type or "").split(";")[0].strip().lower()
    if kind.startswith("image/"):
        return True
    if kind not in VAGUE_TYPES:
        return False
    return has_image_extension(str(blob.name))


def _first_line(exc: BaseException) -> str:
    """The SDK's message without the XML body it appends."""
    message = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    # "(None) Service unavailable": an error body without Azure's error code.
    first = re.sub(r"^\(None\)\s*", "", lines[0]) if lines else ""
    return first[:300] or type(exc).__name__


def _url_of(exc: AzureError) -> str:
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    return str(getattr(request, "url", "") or "")


def _retry_after(exc: AzureError) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    return transport.parse_retry_after(headers.get("Retry-After"))
