"""Amazon S3 and S3-compatible object stores: the images under a bucket's
prefix, listed with ListObjectsV2, marked with object tags.

Listing: ListObjectsV2 in key order, `MaxKeys` = `page_size`, resumed with
`StartAfter` = the last key S3 returned. A key is valid for ever, while a
`ContinuationToken` is opaque and belongs to one listing, so a sync killed
between pages resumes in another process, days later, exactly after what it
had saved. Keys with an image extension are listed; keys without an extension
are asked for their Content-Type (HeadObject); other keys and "folder/"
markers are skipped.
https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html

No incremental listing: S3 cannot list what changed since a time. Every sync is
a full listing, and `version` is the ETag plus the size, so the engine fetches
only objects whose bytes changed, and notices deletions at every sync. The
ETag of a single-part upload is the MD5 of its bytes, given as the content
hash; a multipart ETag ("<md5 of part md5s>-<parts>") is not.
https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html

User metadata (x-amz-meta-*) is not in a listing: when the metadata mapping
reads `metadata.*`, one HeadObject per listed image fetches it (a few at a
time). A mapping from the key alone (`path`, `folder`, `name`) costs nothing.
https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html

Marks are object tags (`damdup-marks`, `damdup-cluster`, `damdup-canonical`),
read with GetObjectTagging and written with PutObjectTagging, which replaces
the whole tag set: the set written holds every tag of others unchanged. S3
allows 10 tags an object and values of at most 256 characters from letters,
digits, space and `+ - = . _ : / @`; see `adapters.tags.marks_to_tags`.
https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html
https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObjectTagging.html

Credentials: `access_key_id` and `secret_access_key` (and `session_token`)
from the unit's environment variables, else boto3's default chain (AWS_*
variables, shared files, SSO, instance and container roles). They are never
logged: messages are redacted, and so are botocore's own debug lines.
boto3 sends every request; what is retried (5xx, 429, SlowDown and other
throttling codes, time-outs, broken connections), how long to wait and which
typed error an answer is are decided by `adapters.transport`, the policy of
every adapter, through botocore's event hooks (`_Hooks`): `attempts` tries in
all, Retry-After honoured up to `max_retry_after_s`.
https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any, ClassVar, Literal, NoReturn
from urllib.parse import quote, urlsplit

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from adapters import transport
from adapters.base import (
    IMAGE_EXTENSIONS,
    Adapter,
    AdapterError,
    AssetRef,
    AuthFailed,
    BadAsset,
    Capabilities,
    Marks,
    MarksDoNotFit,
    MetadataMapping,
    NotFound,
    Page,
    PublicLinkSettings,
    RequestObserver,
    Unavailable,
    name_at,
)
from adapters.tags import is_mark_tag, marks_to_tags, tags_to_marks

__all__ = [
    "S3",
    "S3Cursor",
    "S3Paginator",
    "S3Settings",
]

log = structlog.get_logger(__name__)

HEAD_WORKERS = 8  # HeadObject requests in flight while a page's metadata is read

# Marks are object tags (adapters.tags: marks_to_tags, tags_to_marks).
TAG_LIMIT = 10  # tags an object may carry


# -- settings and cursor ---------------------------------------------------------


class S3Settings(PublicLinkSettings):
    """One bucket (and prefix) of S3 or an S3-compatible store. `timeout_s` and
    `attempts` mean what they mean for every platform reached over HTTP."""

    model_config = SettingsConfigDict(env_prefix="DAMDUP_S3_", extra="forbid")
    bucket: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-_]{1,254}$", description="the bucket's name"
    )
    prefix: str = Field("", description='only keys starting with this, e.g. "kuvat/"')
    endpoint_url: HttpUrl | None = Field(
        None, description="an S3-compatible store (MinIO, Ceph, ...); unset for AWS"
    )
    region: str | None = Field(None, description="e.g. eu-north-1; unset: boto3's default")
    addressing_style: Literal["path", "virtual"] | None = Field(
        None,
        description="bucket in the path or in the host name; unset: path with endpoint_url, "
        "virtual-hosted on AWS",
    )
    page_size: int = Field(1000, ge=1, le=1000, description="MaxKeys; S3 returns at most 1000")
    timeout_s: float = Field(30.0, gt=0, le=600, description="read time-out per request")
    attempts: int = Field(
        4, ge=1, le=10, description="tries per request on 5xx, throttling, time-outs"
    )
    max_retry_after_s: float = Field(
        60.0, ge=0, description="longer Retry-After waits end the request; the sync retries later"
    )
    max_file_bytes: int = Field(
        transport.MAX_FILE_BYTES, ge=1, description="larger objects are not read"
    )
    # Secrets: only from the environment (DAMDUP_<UNIT>_ACCESS_KEY_ID, ...);
    # unset, boto3's default chain finds them (AWS_* variables, profiles, roles).
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    # `metadata.<name>`: user metadata (x-amz-meta-<name>, one HeadObject per
    # image); free of requests: `key`, `path` (relative to the prefix),
    # `folder` (the parent folder's name), `name`, `modified`, `size`, `etag`.
    metadata: MetadataMapping = MetadataMapping(
        location="metadata.location", date="metadata.date", department="metadata.department"
    )

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give access_key_id and secret_access_key together, or neither")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        return self


class S3Cursor(BaseModel):
    """Where a listing resumes: after this key (S3's StartAfter). A completed
    listing has no cursor: S3 has no incremental listing."""

    model_config = ConfigDict(frozen=True)
    after: str | None = None


class S3Paginator:
    """Paging by key (module docstring), as singer_sdk's paginators: it
    writes the request's StartAfter from its cursor and reads an answer into
    the next cursor, None once the listing is complete."""

    def __init__(self, cursor: S3Cursor | None, where: str) -> None:
        self.cursor = cursor
        self.where = where
        self.finished = False

    def params(self) -> dict[str, Any]:
        after = self.cursor.after if self.cursor else None
        return {"StartAfter": after} if after else {}

    def advance(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """The answer's objects; moves the cursor past them."""
        truncated = answer.get("IsTruncated")
        contents = answer.get("Contents", [])
        if not isinstance(truncated, bool) or not isinstance(contents, list):
            raise Unavailable(
                f"{self.where}: ListObjectsV2 answered without IsTruncated and Contents"
            )
        objects = [
            entry
            for entry in contents
            if isinstance(entry, dict) and isinstance(entry.get("Key"), str)
        ]
        if truncated and not objects:
            raise Unavailable(f"{self.where}: ListObjectsV2 said there is more but gave no keys")
        self.cursor = S3Cursor(after=str(objects[-1]["Key"])) if truncated else None
        self.finished = not truncated
        return objects


# -- the adapter ------------------------------------------------------------------

AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "InvalidSecurity",
     "AccountProblem", "UnauthorizedAccess"}
)  # fmt: skip
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
     "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "429"}
)  # fmt: skip
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "NoSuchVersion", "404"})
TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
AUTH_HINT = (
    "check the unit's credentials and their rights "
    "(s3:ListBucket, s3:GetObject, s3:GetObjectTagging, s3:PutObjectTagging)"
)


class S3(Adapter[S3Cursor]):
    kind: ClassVar[str] = "s3"
    settings_model = S3Settings
    cursor_model = S3Cursor
    capabilities = Capabilities(annotate=True, describe=True, exists=True, fetch_url=True)

    def __init__(self, settings: S3Settings, observer: RequestObserver | None = None) -> None:
        super().__init__(settings, observer)
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        key_id, secret_key, token = (
            secret.get_secret_value() if secret is not None else None
            for secret in (
                settings.access_key_id,
                settings.secret_access_key,
                settings.session_token,
            )
        )
        self._secrets = [secret for secret in (key_id, secret_key, token) if secret]
        transport.LogRedactor.install(self._secrets)
        self._policy = transport.RetryPolicy(
            attempts=settings.attempts, max_retry_after_s=settings.max_retry_after_s
        )
        endpoint = str(settings.endpoint_url).rstrip("/") if settings.endpoint_url else None
        self._style = settings.addressing_style or ("path" if endpoint else "virtual")
        # No keys given: boto3's own chain (AWS_* variables, profiles, roles).
        session = boto3.session.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            region_name=settings.region,
        )
        self._client: Any = session.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(
                connect_timeout=min(5.0, settings.timeout_s),
                read_timeout=settings.timeout_s,
                retries={"mode": "standard", "total_max_attempts": settings.attempts},
                s3={"addressing_style": self._style},
                # Proxy variables are ignored, as by every other adapter.
                proxies={},
                max_pool_connections=HEAD_WORKERS + 4,
                user_agent_extra=transport.USER_AGENT,
            ),
        )
        _Hooks(self._policy, self._secrets, observer).install(self._client)
        self._endpoint = endpoint
        mapping = settings.metadata
        paths = (mapping.location, mapping.date, mapping.department)
        self._needs_metadata = any(
            path and not path.startswith("=") and path.split(".")[0] == "metadata" for path in paths
        )

    # -- listing -------------------------------------------------------------

    def list_assets(self, cursor: S3Cursor | None) -> Page[S3Cursor]:
        paginator = S3Paginator(cursor, self._where())
        params: dict[str, Any] = {"MaxKeys": self.settings.page_size}
        if self.prefix:
            params["Prefix"] = self.prefix
        answer = self._call("list_objects_v2", None, **params, **paginator.params())
        items = self._images(paginator.advance(answer))
        return Page(items=items, cursor=paginator.cursor, complete=paginator.finished)

    def _images(self, objects: list[dict[str, Any]]) -> list[AssetRef]:
        """The objects a listing gives: keys under the prefix with an image
        extension, and keys without an extension whose type is an image."""
        chosen: list[tuple[dict[str, Any], bool]] = []  # (object, its type is to be asked)
        for entry in objects:
            key = str(entry["Key"])
            if key.endswith("/") or not key.startswith(self.prefix):
                continue
            suffix = _suffix(key)
            if suffix in IMAGE_EXTENSIONS or suffix == "":
                chosen.append((entry, suffix == ""))
        heads = self._heads(
            [str(entry["Key"]) for entry, ask in chosen if ask or self._needs_metadata]
        )
        items = []
        for entry, ask in chosen:
            head = heads.get(str(entry["Key"]))
            if (ask or self._needs_metadata) and head is None:
                continue  # deleted since the listing
            if ask and not str((head or {}).get("ContentType", "")).lower().startswith("image/"):
                continue
            items.append(self._ref(entry, head))
        return items

    def _heads(self, keys: list[str]) -> dict[str, dict[str, Any] | None]:
        """HeadObject for each key, a few at a time; None for a key gone since
        the listing."""
        if not keys:
            return {}

        def head(key: str) -> dict[str, Any] | None:
            try:
                return self._call("head_object", key, Key=key)
            except NotFound:
                return None

        with ThreadPoolExecutor(min(HEAD_WORKERS, len(keys))) as pool:
            return dict(zip(keys, pool.map(head, keys), strict=True))

    def _ref(self, entry: dict[str, Any], head: dict[str, Any] | None) -> AssetRef:
        key = str(entry["Key"])
        etag = str(entry.get("ETag") or "").strip('"')
        size = entry.get("Size")
        size = size if isinstance(size, int) and size >= 0 else None
        moment = entry.get("LastModified")
        modified = moment.isoformat() if isinstance(moment, datetime) else None
        problem = None
        if size is not None and size > self.settings.max_file_bytes:
            problem = (
                f"object is {size:,} bytes, over the {self.settings.max_file_bytes:,} byte limit"
            )
        relative = key[len(self.prefix) :]
        folder, _, name = relative.rpartition("/")
        record = {
            "key": key,
            "path": relative,
            "folder": folder.rpartition("/")[2],
            "name": name,
            "modified": modified,
            "size": size,
            "etag": etag,
            "metadata": {
                str(field).lower(): _header_text(str(value))
                for field, value in ((head or {}).get("Metadata") or {}).items()
            },
        }
        return AssetRef(
            id=key,
            # Marks are tags: writing them changes neither ETag nor size.
            version=f"{etag}|{size if size is not None else ''}",
            url=self._object_url(key),
            size_bytes=size,
            modified=modified,
            content_hash=f"md5:{etag.lower()}" if re.fullmatch(r"[0-9a-fA-F]{32}", etag) else None,
            metadata=self.settings.metadata.apply(record),
            problem=problem,
        )

    def relative_path(self, asset: AssetRef) -> str:
        return asset.id.removeprefix(self.prefix)

    def _object_url(self, key: str) -> str:
        path = quote(key, safe="/~")
        if self._endpoint:
            if self._style == "path":
                return f"{self._endpoint}/{self.bucket}/{path}"
            parts = urlsplit(self._endpoint)
            return f"{parts.scheme}://{self.bucket}.{parts.netloc}/{path}"
        region = self._client.meta.region_name or "us-east-1"
        if self._style == "path":
            return f"https://s3.{region}.amazonaws.com/{self.bucket}/{path}"
        return f"https://{self.bucket}.s3.{region}.amazonaws.com/{path}"

    def describe(self, asset_id: str) -> AssetRef:
        """The object's own listing entry: ListObjectsV2 with the key as the
        prefix and MaxKeys 1 answers with the key itself first when it exists
        (keys come in byte order, and the key sorts before every longer key it
        begins), so size, ETag and LastModified are the listing's to the
        millisecond; HeadObject's Last-Modified is rounded to seconds. Keys a
        listing skips are NotFound, and HeadObject is asked exactly when a
        listing asks it (user metadata, or the type of a key without an
        extension).
        https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html
        https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html"""
        suffix = _suffix(asset_id)
        if (
            not asset_id
            or asset_id.endswith("/")
            or not asset_id.startswith(self.prefix)
            or (suffix and suffix not in IMAGE_EXTENSIONS)
        ):
            raise NotFound(f"{self._where(asset_id)} is not an image key a listing gives")
        answer = self._call("list_objects_v2", asset_id, Prefix=asset_id, MaxKeys=1)
        contents = answer.get("Contents", [])
        if not isinstance(contents, list):
            raise Unavailable(f"{self._where(asset_id)}: ListObjectsV2 answered without Contents")
        entry = contents[0] if contents else None
        if not isinstance(entry, dict) or entry.get("Key") != asset_id:
            raise NotFound(f"{self._where(asset_id)} is not there")
        head = None
        if self._needs_metadata or not suffix:
            head = self._call("head_object", asset_id, Key=asset_id)
            if not suffix and not str(head.get("ContentType", "")).lower().startswith("image/"):
                raise NotFound(f"{self._where(asset_id)} has neither an image extension nor type")
        return self._ref(entry, head)

    def fetch_url(self, url: str) -> bytes:
        """An object of the bucket at the address a listing gives it (path or
        virtual-hosted style, as the unit is set up), read with GetObject;
        other hosts, buckets and addresses are refused."""
        key = name_at(url, self._object_url(""))
        if key is None or not key.startswith(self.settings.prefix):
            raise BadAsset(f"{url} is not an object's address in {self._where('')}")
        return self._get(key)

    # -- objects ---------------------------------------------------------------

    def fetch(self, asset: AssetRef, min_side: int) -> bytes:
        """The object itself (S3 keeps no renditions). A body cut short or
        stalled is asked for again, `attempts` times in all; botocore retries
        only up to the answer's headers."""
        return self._get(asset.id)

    def _get(self, key: str) -> bytes:
        cap = self.settings.max_file_bytes
        attempt = 0
        while True:
            attempt += 1
            answer = self._call("get_object", key, Key=key)
            body = answer["Body"]
            try:
                length = answer.get("ContentLength")
                if isinstance(length, int) and length > cap:
                    raise BadAsset(f"object is {length:,} bytes, over the {cap:,} byte limit")
                return _read(body, cap)
            except (HTTPClientError, IncompleteReadError, FlexibleChecksumError) as exc:
                wait_s = self._policy.delay(attempt)
                if wait_s is None:
                    raise Unavailable(
                        f"{self._where(key)}: the download broke off {attempt} times "
                        f"({type(exc).__name__})"
                    ) from None
                log.info("s3.download_retried", key=key, attempt=attempt, error=type(exc).__name__)
                time.sleep(wait_s)
            finally:
                body.close()

    def probe(self, asset: AssetRef) -> None:
        self._call("head_object", asset.id, Key=asset.id)

    # -- marks -----------------------------------------------------------------

    def read_marks(self, asset: AssetRef) -> Marks:
        return tags_to_marks(dict(self._tags(asset.id)))

    def annotate(self, asset: AssetRef, marks: Marks) -> bool:
        """PutObjectTagging replaces the whole set, so the set sent is every
        tag of others as read, unchanged, plus damdup's. Between the read and
        the write S3 offers no condition: a tag someone adds in that instant
        is lost (S3 has no If-Match for tags)."""
        current = self._tags(asset.id)
        foreign = [(key, value) for key, value in current if not is_mark_tag(key)]
        ours = {key: value for key, value in current if is_mark_tag(key)}
        wanted = marks_to_tags(marks)
        if ours == wanted:
            return False
        if len(foreign) + len(wanted) > TAG_LIMIT:
            raise MarksDoNotFit(
                f"{self._where(asset.id)} carries {len(foreign)} tags of others and damdup's "
                f"marks need {len(wanted)}; S3 allows {TAG_LIMIT} tags an object. Nothing was "
                "written; free a tag to let damdup mark it"
            )
        tag_set = [{"Key": key, "Value": value} for key, value in [*foreign, *wanted.items()]]
        self._call("put_object_tagging", asset.id, Key=asset.id, Tagging={"TagSet": tag_set})
        return True

    def _tags(self, key: str) -> list[tuple[str, str]]:
        answer = self._call("get_object_tagging", key, Key=key)
        tag_set = answer.get("TagSet")
        if not isinstance(tag_set, list):
            raise Unavailable(f"{self._where(key)}: GetObjectTagging answered without a TagSet")
        return [
            (str(tag.get("Key")), str(tag.get("Value") or ""))
            for tag in tag_set
            if isinstance(tag, dict) and tag.get("Key") is not None
        ]

    # -- requests ----------------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{key if key is not None else self.prefix}"

    def _call(self, operation: str, key: str | None, **params: Any) -> dict[str, Any]:
        """One S3 operation, botocore's retries included; every failure comes
        out as one of the adapter errors, with no credential in its message."""
        try:
            answer = getattr(self._client, operation)(Bucket=self.bucket, **params)
        except AdapterError:
            raise  # from _check_answer
        except ClientError as exc:
            self._fail(operation, key, exc)
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
            raise AuthFailed(
                f"{self._where(key)}: no usable AWS credentials ({type(exc).__name__}); check the "
                "unit's credentials: set DAMDUP_<UNIT>_ACCESS_KEY_ID and "
                "DAMDUP_<UNIT>_SECRET_ACCESS_KEY, or configure boto3's usual chain"
            ) from None
        except (
            HTTPClientError,
            BotoConnectionError,
            IncompleteReadError,
            ResponseParserError,
        ) as exc:
            raise Unavailable(
                f"{self._where(key)}: {_operation_name(operation)} failed after "
                f"{self.settings.attempts} tries: {self._redact(str(exc))}"
            ) from None
        except BotoCoreError as exc:
            raise AdapterError(f"{self._where(key)}: {self._redact(str(exc))}") from None
        if not isinstance(answer, dict):
            raise Unavailable(f"{self._where(key)}: {_operation_name(operation)} gave no answer")
        return answer

    def _fail(self, operation: str, key: str | None, exc: Any) -> NoReturn:
        response = exc.response if isinstance(exc.response, dict) else {}
        error = response.get("Error") or {}
        meta = response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "")
        status = int(meta.get("HTTPStatusCode") or 0)
        message = self._redact(str(error.get("Message") or ""))
        where = self._where(key)
        shown = f"{status} {code}" if code and code != str(status) else str(status)
        if code == "NoSuchBucket":
            raise NotFound(f"{where}: the bucket does not exist ({shown}); check the unit's bucket")
        headers = meta.get("HTTPHeaders") or {}
        raise transport.error_for_status(
            _status_of(status, code),
            f"{where}: {_operation_name(operation)}",
            message if message != code else "",
            retry_after=transport.parse_retry_after(headers.get("retry-after")),
            shown=shown,
            auth_hint=AUTH_HINT,
        )

    def _redact(self, text: str) -> str:
        return transport.redact_text(text, self._secrets)


# -- helpers ---------------------------------------------------------------------------


def _status_of(status: int, code: str) -> int:
    """The status S3's error code means, for the transport policy: S3
    throttles with 503 SlowDown, refuses an expired token with 400
    ExpiredToken and times out with 400 RequestTimeout; no status at all is
    an unavailable service."""
    if status == 404 or code in MISSING_CODES:
        return 404
    if status in (401, 403):
        return status
    if code in AUTH_CODES:
        return 403
    if code in THROTTLE_CODES:
        return 429
    if code in TIMEOUT_CODES:
        return 408
    return status or 503


class _Hooks:
    """botocore's event hooks that apply `adapters.transport` to every S3
    request attempt: the policy, not botocore's standard mode, decides what
    is retried and how long to wait; each attempt is logged (redacted) like
    the HTTP client's; an answer that is not XML stops before the parser.
    https://boto3.amazonaws.com/v1/documentation/api/latest/guide/events.html"""

    def __init__(
        self, policy: transport.RetryPolicy, secrets: list[str], observer: RequestObserver | None
    ) -> None:
        self.policy = policy
        self.secrets = secrets
        self.observer = observer
        self.started = threading.local()  # HeadObject runs in several threads

    def install(self, client: Any) -> None:
        events = client.meta.events
        # Replaced, not stacked: botocore's handler would retry by its own rules.
        events.unregister("needs-retry.s3", unique_id="retry-config-s3")
        events.register("needs-retry.s3", self.needs_retry, unique_id="damdup-needs-retry-s3")
        events.register("before-send.s3", self.before_send)
        events.register("before-parse.s3", _check_answer)

    def before_send(self, **_: Any) -> None:
        self.started.at = time.monotonic()  # None: botocore sends the request itself

    def needs_retry(
        self,
        attempts: int,
        request_dict: dict[str, Any] | None = None,
        response: tuple[Any, dict[str, Any]] | None = None,
        caught_exception: Exception | None = None,
        **_: Any,
    ) -> float | None:
        """After each attempt: seconds to wait before the next, or None for
        no other attempt (botocore then raises or returns the answer)."""
        started = getattr(self.started, "at", None)
        elapsed_s = time.monotonic() - started if started is not None else 0.0
        method = str((request_dict or {}).get("method") or "")
        url = transport.redact_url(str((request_dict or {}).get("url") or ""), self.secrets)
        if response is None:
            error = transport.redact_text(str(caught_exception or "no answer"), self.secrets)
            transport.record_request(
                "s3", self.observer, method=method, url=url, status=None, elapsed_s=elapsed_s,
                attempt=attempts, error=error,
            )  # fmt: skip
            # Broken connections and time-outs are retried; anything else is not a
            # transport failure (a signing error, a bug) and another try repeats it.
            if isinstance(caught_exception, (HTTPClientError, BotoConnectionError)):
                return self.policy.delay(attempts)
            return None
        http_response, parsed = response
        status = int(http_response.status_code)
        transport.record_request(
            "s3", self.observer, method=method, url=url, status=status, elapsed_s=elapsed_s,
            attempt=attempts,
        )  # fmt: skip
        code = str(((parsed or {}).get("Error") or {}).get("Code") or "")
        if status < 400 and not code:
            return None
        if not transport.retryable_status(_status_of(status, code)):
            return None
        return self.policy.delay(
            attempts, transport.parse_retry_after(http_response.headers.get("Retry-After"))
        )


def _check_answer(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
    """Before botocore parses a successful answer: S3 answers in XML. An HTML
    page (a proxy, login or maintenance page) would parse as an empty listing,
    and an empty listing retires every asset, so anything else is an error."""
    status = int(response_dict.get("status_code") or 0)
    body = response_dict.get("body")
    if not 200 <= status < 300 or getattr(operation_model, "has_streaming_output", False):
        return
    if not isinstance(body, bytes):
        return
    headers = response_dict.get("headers") or {}
    name = getattr(operation_model, "name", "S3")
    transport.check_body(name, str(headers.get("content-type") or ""), body, "xml")


def _read(body: Any, cap: int) -> bytes:
    """The whole body, at most `cap` bytes; botocore checks its length (and
    checksum, when S3 sent one) once the body ends."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = body.read(transport.CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cap:
            raise BadAsset(f"object is over the {cap:,} byte limit")
        chunks.append(bytes(chunk))


def _suffix(key: str) -> str:
    name = key.rpartition("/")[2]
    stem, dot, extension = name.rpartition(".")
    return f".{extension.lower()}" if dot and stem else ""


def _header_text(value: str) -> str:
    """S3 returns user metadata with letters outside US-ASCII as RFC 2047
    encoded words (=?UTF-8?B?...?=)."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
        return value


def _operation_name(operation: str) -> str:
    """list_objects_v2 -> ListObjectsV2, as S3's documentation names it."""
    return "".join(part[:1].upper() + part[1:] for part in operation.split("_"))
