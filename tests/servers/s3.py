"""The real S3 API for the contract suite: moto's server mode (`moto_server`)
on 127.0.0.1, in a process of its own, behind a `FaultProxy`.

- Server mode: http://docs.getmoto.org/en/latest/docs/server_mode.html
- IAM authentication: http://docs.getmoto.org/en/latest/docs/iam.html. moto
  accepts any credentials until told otherwise; `POST /moto-api/reset-auth`
  with a count (what `INITIAL_NO_AUTH_ACTION_COUNT` sets at start) makes it
  check signatures and IAM policies after that many requests. The harness
  creates an IAM user with an access key and a policy, its bucket, then turns
  checking on: a wrong key is refused with 403 InvalidAccessKeyId, as by S3.
- Tag rules moto enforces: at most 10 tags an object, values matching its
  character pattern (S3's own rules are stricter, see adapters/s3.py).

The harness's own client talks to moto directly, so that what it does never
shows in the proxy's log; the adapter under test goes through the proxy, with
path-style addressing. Objects live under `kuvat/`, next to decoys the adapter
must skip: a CSV under the prefix and a photo outside it.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from adapters.base import Adapter, Marks
from adapters.s3 import S3, S3Settings
from tests.contract.harness import Harness
from tests.servers.common import photo_paths
from tests.servers.faults import FaultProxy

BUCKET = "damdup-kuvat"
PREFIX = "kuvat/"
REGION = "eu-north-1"
# AWS's documented example key pair: never a real one.
WRONG_KEYS = {
    "access_key_id": "AKIAIOSFODNN7EXAMPLE",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}
MARK_TAGS = ("damdup-marks", "damdup-cluster", "damdup-canonical")
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MotoServer:
    """`moto_server` in a child process with its own environment (no AWS_*
    variables of the machine reach it), on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        # Multipart parts of any size, so a test can make a multipart ETag cheaply.
        env["S3_UPLOAD_PART_MIN_SIZE"] = "1"
        executable = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                requests.get(f"{self.url}/moto-api/data.json", timeout=2)
                return
            except requests.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on {self.url}") from None
                time.sleep(0.1)

    def require_auth(self) -> None:
        reply = requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10)
        reply.raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def client(url: str, access_key_id: str, secret_access_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(s3={"addressing_style": "path"}, proxies={}),
    )


def decode_tag_value(value: str) -> str:
    """The documented form (docs/adapters.md, S3): "b64:" + URL-safe base64
    without padding, else the value as it is. Written here again, from the
    documentation, so that the suite does not check the adapter with itself."""
    if not value.startswith("b64:"):
        return value
    body = value[4:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")


def stored_marks_of(tags: dict[str, str]) -> Marks:
    fields: dict[str, str | None] = {}
    for name in MARK_TAGS:
        if name in tags:
            pieces, number = [tags[name]], 2
            while f"{name}-{number}" in tags:
                pieces.append(tags[f"{name}-{number}"])
                number += 1
            fields[name] = decode_tag_value("".join(pieces))
    return Marks.from_fields(fields)


def is_mark_tag(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}-") for name in MARK_TAGS)


class S3Harness(Harness):
    kind = "s3"
    # ListObjectsV2 is GET /<bucket>?list-type=2&...; no object request has it.
    listing_path = "list-type=2"

    def __init__(self) -> None:
        self.server = MotoServer()
        try:
            self._set_up()
        except Exception:
            self.server.stop()
            raise

    def _set_up(self) -> None:
        anyone = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", endpoint_url=self.server.url, region_name=REGION, **anyone)
        iam.create_user(UserName="damdup")
        key = iam.create_access_key(UserName="damdup")["AccessKey"]
        iam.put_user_policy(
            UserName="damdup",
            PolicyName="kuvat",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        self.access_key_id = str(key["AccessKeyId"])
        self.secret_access_key = str(key["SecretAccessKey"])
        self.direct = client(self.server.url, self.access_key_id, self.secret_access_key)
        self.direct.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        self.server.require_auth()
        self.proxy = FaultProxy(self.server.url + "/")
        self.reset()

    @property
    def endpoint(self) -> str:
        assert self.proxy is not None
        return self.proxy.url.rstrip("/")

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "bucket": BUCKET,
            "prefix": PREFIX,
            "endpoint_url": self.endpoint,
            "region": REGION,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return S3(S3Settings(**self.settings(**overrides)))

    def bad_credentials(self) -> dict[str, Any] | None:
        return dict(WRONG_KEYS)

    # -- content -------------------------------------------------------------

    def put(
        self, key: str, data: bytes, metadata: dict[str, str] | None = None, **extra: Any
    ) -> None:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        self.direct.put_object(
            Bucket=BUCKET,
            Key=key,
            Body=data,
            ContentType=extra.pop("ContentType", content_type),
            Metadata=metadata or {},
            **extra,
        )

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        """Location, date and department as user metadata (x-amz-meta-*), where
        the adapter's default mapping reads them."""
        key = PREFIX + name
        self.put(key, data, dict(metadata or {}))
        return key

    def touch(self, asset_id: str) -> None:
        """A metadata edit: S3 can only copy the object onto itself (a new
        LastModified, the same bytes and ETag)."""
        head = self.direct.head_object(Bucket=BUCKET, Key=asset_id)
        self.direct.copy_object(
            Bucket=BUCKET,
            Key=asset_id,
            CopySource={"Bucket": BUCKET, "Key": asset_id},
            Metadata={**head["Metadata"], "edited": uuid.uuid4().hex[:8]},
            MetadataDirective="REPLACE",
            ContentType=head["ContentType"],
        )

    def remove(self, asset_id: str) -> None:
        self.direct.delete_object(Bucket=BUCKET, Key=asset_id)

    def reset(self) -> None:
        keys = [
            {"Key": entry["Key"]}
            for page in self.direct.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for entry in page.get("Contents", [])
        ]
        for start in range(0, len(keys), 1000):
            self.direct.delete_objects(
                Bucket=BUCKET, Delete={"Objects": keys[start : start + 1000]}
            )
        decoy = photo_paths(variant="original")[-1].read_bytes()
        self.put(PREFIX + "kuvaluettelo.csv", b"nimi;paikka\nkuva;Senaatintori\n")
        self.put("arkisto/ei-listata.jpg", decoy)
        assert self.proxy is not None
        self.proxy.clear()

    # -- marks -----------------------------------------------------------------

    def tags(self, asset_id: str) -> dict[str, str]:
        answer = self.direct.get_object_tagging(Bucket=BUCKET, Key=asset_id)
        return {str(tag["Key"]): str(tag["Value"]) for tag in answer["TagSet"]}

    def put_tags(self, asset_id: str, tags: dict[str, str]) -> None:
        tag_set = [{"Key": key, "Value": value} for key, value in tags.items()]
        self.direct.put_object_tagging(Bucket=BUCKET, Key=asset_id, Tagging={"TagSet": tag_set})

    def stored_marks(self, asset_id: str) -> Marks:
        return stored_marks_of(self.tags(asset_id))

    def set_foreign(self, asset_id: str) -> None:
        """The museum's own tag and a photographer in the user metadata."""
        head = self.direct.head_object(Bucket=BUCKET, Key=asset_id)
        self.direct.copy_object(
            Bucket=BUCKET,
            Key=asset_id,
            CopySource={"Bucket": BUCKET, "Key": asset_id},
            Metadata={**head["Metadata"], "photographer": "Simo Rista"},
            MetadataDirective="REPLACE",
            ContentType=head["ContentType"],
        )
        self.put_tags(
            asset_id, {**self.tags(asset_id), "owner": "kaupunginmuseo", "license": "CC BY 4.0"}
        )

    def foreign_state(self, asset_id: str) -> Any:
        head = self.direct.head_object(Bucket=BUCKET, Key=asset_id)
        tags = {key: value for key, value in self.tags(asset_id).items() if not is_mark_tag(key)}
        return {
            "tags": tags,
            "metadata": head["Metadata"],
            "etag": head["ETag"],
            "content_type": head["ContentType"],
        }

    def close(self) -> None:
        super().close()
        self.server.stop()
