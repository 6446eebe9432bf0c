"""What every platform emulator shares: a photo library with its renditions, a
threaded WSGI server on 127.0.0.1, a request log, and a token-bucket rate limit.

Each emulator (`tests/servers/<platform>.py`) is a werkzeug WSGI app written
from its platform's published API documentation; this module holds only what
is the same for all of them.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PHOTOS = FIXTURES / "photos"


def utc(moment: datetime) -> str:
    """ISO 8601 with a Z, as most platforms print it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StoredAsset:
    id: str
    name: str
    data: bytes
    width: int
    height: int
    mime_type: str
    created: datetime
    modified: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False

    @property
    def aspect(self) -> float:
        return self.width / self.height


class Clock:
    """The emulators' time. Tests move it forward instead of sleeping, and every
    change gets a distinct, increasing modification time (platforms store
    seconds, so two edits in one second would otherwise tie)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def tick(self, seconds: float = 1.0) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


def image_size(data: bytes) -> tuple[int, int, str]:
    with Image.open(io.BytesIO(data)) as image:
        oriented = ImageOps.exif_transpose(image) if image.format == "JPEG" else image
        return oriented.width, oriented.height, Image.MIME.get(image.format or "", "image/jpeg")


class Library:
    """Assets of one emulated unit, thread-safe. Ids are numeric strings in
    creation order unless the emulator names them itself."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.assets: dict[str, StoredAsset] = {}
        self.lock = threading.RLock()
        self._ids = itertools.count(1)

    def add(
        self,
        name: str,
        data: bytes,
        metadata: dict[str, Any] | None = None,
        asset_id: str | None = None,
    ) -> StoredAsset:
        width, height, mime = image_size(data)
        with self.lock:
            moment = self.clock.tick()
            asset = StoredAsset(
                id=asset_id or str(next(self._ids)),
                name=name,
                data=data,
                width=width,
                height=height,
                mime_type=mime,
                created=moment,
                modified=moment,
                metadata=dict(metadata or {}),
            )
            self.assets[asset.id] = asset
            return asset

    def touch(self, asset_id: str, **metadata: Any) -> StoredAsset:
        with self.lock:
            asset = self.assets[asset_id]
            asset.metadata.update(metadata)
            asset.modified = self.clock.tick()
            return asset

    def replace(self, asset_id: str, data: bytes) -> StoredAsset:
        width, height, mime = image_size(data)
        with self.lock:
            asset = self.assets[asset_id]
            asset.data, asset.width, asset.height, asset.mime_type = data, width, height, mime
            asset.modified = self.clock.tick()
            return asset

    def remove(self, asset_id: str) -> None:
        """Deleted assets stay as tombstones so that platforms with a changes
        feed can report them; listings skip them."""
        with self.lock:
            asset = self.assets[asset_id]
            asset.deleted = True
            asset.modified = self.clock.tick()

    def live(self) -> list[StoredAsset]:
        with self.lock:
            return [asset for asset in self.assets.values() if not asset.deleted]

    def get(self, asset_id: str) -> StoredAsset | None:
        with self.lock:
            asset = self.assets.get(asset_id)
            return None if asset is None or asset.deleted else asset

    def reset(self) -> None:
        with self.lock:
            self.assets.clear()


@lru_cache(maxsize=512)
def _rendition(data: bytes, width: int, height: int, crop: bool, quality: int) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        rgb = ImageOps.exif_transpose(opened).convert("RGB")
    if crop:
        rgb = ImageOps.fit(rgb, (width, height), Image.Resampling.LANCZOS)
    else:
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def fit_within(asset: StoredAsset, box_width: int, box_height: int) -> tuple[int, int]:
    """Size of an aspect-preserving rendition that fits a box, never upscaled
    (what WordPress, Drupal `image_scale` and most platforms do)."""
    scale = min(box_width / asset.width, box_height / asset.height, 1.0)
    return max(1, round(asset.width * scale)), max(1, round(asset.height * scale))


def scaled(asset: StoredAsset, width: int, height: int, quality: int = 82) -> bytes:
    """A re-encoded, resized rendition, made as platforms make them."""
    return _rendition(asset.data, width, height, False, quality)


def square_crop(asset: StoredAsset, side: int, quality: int = 82) -> bytes:
    """A centre-cropped square thumbnail: the kind damdup must never hash."""
    return _rendition(asset.data, side, side, True, quality)


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    query: str
    status: int
    headers: dict[str, str]
    body: bytes
    sent_bytes: int


class TokenBucket:
    """`rate` requests a second with bursts up to `burst`; `take()` answers how
    many seconds the caller must wait (0 when the request may go)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class Emulator:
    """Base of every emulator: a werkzeug URL map, a request log, optional rate
    limit, and start/stop on an ephemeral 127.0.0.1 port.

    Subclasses set `url_map` (endpoints are method names) and may override
    `rate_limited(request, wait_s)` to answer in their platform's own way."""

    url_map: Map

    def __init__(self, library: Library | None = None, rate: TokenBucket | None = None) -> None:
        self.library = library or Library()
        self.rate = rate
        self.log: list[Logged] = []
        self._log_lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- serving ---------------------------------------------------------

    def start(self, port: int = 0) -> str:
        # The request log is ours (`self.log`); werkzeug's access lines are noise.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = make_server("127.0.0.1", port, self, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data(cache=True)
        response = self.dispatch(request)
        with self._log_lock:
            self.log.append(
                Logged(
                    request.method,
                    request.path,
                    request.query_string.decode("latin-1"),
                    response.status_code,
                    dict(request.headers),
                    body,
                    response.calculate_content_length() or 0,
                )
            )
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        if self.rate is not None:
            wait_s = self.rate.take()
            if wait_s > 0:
                return self.rate_limited(request, wait_s)
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
            result: Response = getattr(self, endpoint)(request, **values)
            return result
        except HTTPException as exc:
            return self.http_error(request, exc)

    # -- answers a subclass may shape ------------------------------------

    def rate_limited(self, request: Request, wait_s: float) -> Response:
        return json_response(
            {"error": "rate limit exceeded"},
            status=429,
            headers={"Retry-After": str(max(1, round(wait_s + 0.5)))},
        )

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        return json_response(
            {"error": exc.name, "message": exc.description}, status=exc.code or 500
        )

    def public_url(self, request: Request, path: str) -> str:
        """An absolute URL as the client reached us (through a proxy too)."""
        return request.host_url + path.lstrip("/")

    def requests_for(self, method: str | None = None, path_prefix: str = "") -> list[Logged]:
        with self._log_lock:
            return [
                entry
                for entry in self.log
                if (method is None or entry.method == method) and entry.path.startswith(path_prefix)
            ]


def json_response(
    payload: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Response:
    return Response(
        json.dumps(payload, ensure_ascii=False),
        status=status,
        headers=headers,
        content_type=f"{content_type}; charset=utf-8",
    )


def image_response(data: bytes, mime_type: str = "image/jpeg") -> Response:
    return Response(data, content_type=mime_type, headers={"Cache-Control": "max-age=3600"})


def upscaled(path: Path, long_side: int, quality: int = 90, grain: float = 0.0) -> bytes:
    """A real photo made large (the fixtures are at most 741 px), as a JPEG.
    An upscaled photo is smoother than a camera's: `grain`, the standard
    deviation of added noise in levels, brings its JPEG to a camera's size."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    scale = long_side / max(rgb.size)
    rgb = rgb.resize(
        (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
    )
    if grain > 0:
        pixels = np.asarray(rgb, dtype=np.float32)
        noise = np.random.default_rng(pixels.size).normal(0, grain, pixels.shape)
        rgb = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def photo_paths(variant: str | None = None, limit: int | None = None) -> list[Path]:
    """Real labelled photos of fixtures/photos (see fixtures/labels.json), in a
    stable order; `variant="original"` keeps only the unedited originals."""
    labels = json.loads((FIXTURES / "labels.json").read_text())["files"]
    names = sorted(
        name for name, label in labels.items() if variant is None or label["variant"] == variant
    )
    paths = [PHOTOS / name for name in names if (PHOTOS / name).is_file()]
    return paths[:limit] if limit else paths
