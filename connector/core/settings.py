"""Process-wide settings: environment variables `DAMDUP_*`, each declared once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connector.core.dburl import check_db
from connector.core.fingerprint import DEFAULT_MAX_PIXELS

# The brokers damdup's Celery workers are tested on (kombu speaks more).
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAMDUP_", extra="forbid")

    db: Path | str = Field(
        Path("damdup.sqlite"),
        description="the index: a SQLite file's path, or a postgresql:// URL (no password)",
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=64, description="worker processes"
    )
    file_timeout_s: float = Field(30.0, gt=0, le=3600, description="time limit per file")
    worker_memory_mb: int = Field(
        4096,
        ge=1024,
        description="address-space limit per worker (its libraries alone take about 900 MB)",
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images are refused")
    max_file_mb: int = Field(512, ge=1, description="larger files are refused")
    fetch_concurrency: int = Field(4, ge=1, le=64, description="fetches in flight per unit")
    max_requests: int = Field(8, ge=1, le=256, description="fetches in flight over all units")
    units_at_once: int = Field(2, ge=1, le=32, description="units synced at the same time")
    webhook_workers: int = Field(2, ge=1, le=64, description="threads running webhook checks")
    webhook_queue: int = Field(
        100, ge=1, le=100_000, description="webhook checks waiting, at most (then 503)"
    )
    webhook_max_body_bytes: int = Field(
        64 * 1024, ge=1024, le=1024 * 1024, description="larger notifications are refused (413)"
    )
    serve_threads: int = Field(
        8, ge=1, le=256, description="`damdup serve`: threads answering whole requests"
    )
    serve_connections: int = Field(
        500, ge=8, le=10_000, description="`damdup serve`: open connections, at most"
    )
    serve_read_timeout_s: int = Field(
        30, ge=1, le=3600, description="`damdup serve`: a connection silent this long is closed"
    )
    engine: Literal["local", "celery"] = Field(
        "local",
        description="where fingerprints and pixel checks run: this host's processes, "
        "or `damdup worker`s reached through the broker",
    )
    broker: str | None = Field(
        None,
        description="engine celery: redis:// or amqp:// URL of the broker "
        "(a password only in $DAMDUP_BROKER)",
    )
    authoritative_units: list[str] = Field(
        default_factory=list, description="units whose copy is canonical when present"
    )

    @field_validator("db", mode="before")
    @classmethod
    def _db_is_a_path_or_postgresql(cls, value: object) -> object:
        # A URL taken as a path made a directory named "postgresql:" with a
        # SQLite file in it: never guess. A postgresql:// URL stays text (a
        # Path would fold its "//"), anything else is a path.
        return check_db(value) if isinstance(value, str) else value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(
                "a broker is a redis://, rediss://, amqp:// or amqps:// URL"
                + (f" (not {scheme}://)" if scheme else "")
            )
        try:
            urlsplit(value).port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a valid broker URL ({exc})") from None
        return value

    def engine_problem(self) -> str | None:
        """Why the engine cannot run as set, once every source is read (the
        engine may come from the environment and the broker from the file)."""
        if self.engine == "celery" and self.broker is None:
            return (
                'engine "celery" needs a broker: set broker = "redis://HOST:6379/0" or '
                '"amqp://USER@HOST:5672//" ([damdup] broker, or $DAMDUP_BROKER)'
            )
        return None

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * 1024 * 1024
