"""Through Redis, a message's image bytes are kept beside it as plain values
(celery_app.Stash), not carried base64-encoded inside the message: the caller
puts them before it publishes and drops them once the result is taken, the
worker takes them by the keys the message gives, and a message whose bytes
are gone is sent again with them. On a real Redis (tests/servers/broker.py);
the broker and its workers are the fakes of test_celery_pool.py."""

from __future__ import annotations

import io
from typing import Any

import pytest
import redis
from PIL import Image

from connector.core.settings import Settings
from connector.engine import celery_app
from connector.engine.celery_app import STASH_PREFIX, Stash, run_jobs
from connector.engine.celery_pool import SENDS, CeleryPool
from connector.engine.settle import pixel_digest_job
from tests.engine.test_celery_pool import FakeBroker, FakeResult, fast
from tests.entry.test_celery import redis_broker

__all__ = ["fast", "redis_broker"]  # fixtures of other test modules, used here


def stashed_keys(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=STASH_PREFIX + "*"))
    finally:
        client.close()


def png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 90, 200)).save(out, format="PNG")
    return out.getvalue()


class StashCheckingBroker(FakeBroker):
    """A FakeBroker that also checks, for every message, that it carries no
    image bytes and that the bytes its keys name are in Redis as sent; with
    `lose`, the worker of a job's first send finds its bytes gone."""

    def __init__(self, url: str, lose: frozenset[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(lambda send: True, **kwargs)
        self.client = redis.Redis.from_url(url)
        self.lose = lose
        self.carried: list[list[Any]] = []

    def send_task(self, name: str, args: tuple[Any, ...], queue: str, time_limit: float) -> Any:
        job, batch, seconds = args
        for data, number in batch:
            assert not isinstance(data, bytes), "image bytes inside the message"
            key = data["stash"]
            assert key.startswith(STASH_PREFIX)
            assert self.client.get(key) == b"image %d" % number
        self.carried.append(batch)
        # The fake's own bookkeeping reads the job's number, not its bytes.
        return super().send_task(name, (job, batch, seconds), queue, time_limit)

    def drain_events(self, timeout: float) -> None:
        if self.ready and self.ready[0].job in self.lose and len(self.sent[self.ready[0].job]) == 1:
            result: FakeResult = self.ready.pop(0)
            result.answered = True
            result.state, result.result = "SUCCESS", {"lost": "the image bytes are gone from Redis"}
            for callback in result.callbacks:
                callback(result)
            return
        super().drain_events(timeout)


def run_stashed(url: str, broker: StashCheckingBroker, jobs: int) -> list[Any]:
    pool = CeleryPool(Settings(engine="celery", broker=url))
    pool._app = broker
    pool.stash = Stash(url)
    try:
        listed = [(n, (b"image %d" % n, n)) for n in range(jobs)]
        return list(pool.map(pixel_digest_job, listed, repr))
    finally:
        pool._app = None
        pool.close()


@pytest.mark.usefixtures("fast")
def test_image_bytes_wait_beside_the_message_and_are_dropped_once_taken(redis_broker: str) -> None:
    broker = StashCheckingBroker(redis_broker)
    outcomes = run_stashed(redis_broker, broker, 40)
    assert sorted((o.key, o.value) for o in outcomes) == [(n, f"digest {n}") for n in range(40)]
    assert sum(len(batch) for batch in broker.carried) == 40
    assert stashed_keys(redis_broker) == []  # nothing left in Redis once the run is done


@pytest.mark.usefixtures("fast")
def test_a_message_whose_bytes_are_gone_is_sent_again_with_them(redis_broker: str) -> None:
    broker = StashCheckingBroker(redis_broker, lose=frozenset({0}))
    outcomes = run_stashed(redis_broker, broker, 3)
    assert sorted((o.key, o.value) for o in outcomes) == [(n, f"digest {n}") for n in range(3)]
    assert len(broker.sent[0]) == 2  # sent again once, its bytes put again (checked at the send)
    assert stashed_keys(redis_broker) == []


@pytest.mark.usefixtures("fast")
def test_bytes_gone_at_every_send_end_as_the_jobs_error_not_a_loop(redis_broker: str) -> None:
    class AlwaysLost(StashCheckingBroker):
        def drain_events(self, timeout: float) -> None:
            if self.ready:
                self.sent[self.ready[0].job] = self.sent[self.ready[0].job][:1]
            super().drain_events(timeout)

    broker = AlwaysLost(redis_broker, lose=frozenset({0}))
    outcomes = run_stashed(redis_broker, broker, 1)
    assert [(o.key, o.error) for o in outcomes] == [
        (0, f"the broker lost the job: no result after {SENDS} sends")
    ]
    assert stashed_keys(redis_broker) == []


def test_a_worker_takes_the_bytes_by_their_keys(
    redis_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celery_app, "_stash_url", redis_broker)
    monkeypatch.setattr(celery_app, "_stash", None)
    stash = Stash(redis_broker)
    images = [png(10), png(200)]
    keys = [stash.name(), stash.name()]
    stash.put(dict(zip(keys, images, strict=True)))
    answer = run_jobs("pixel_digest", [[{"stash": key}, 10**6] for key in keys], 30.0)
    assert answer == {"values": [{"value": pixel_digest_job(image, 10**6)} for image in images]}
    # One gone: the message is "lost" (the caller sends it again), no job is run.
    stash.drop(keys[:1])
    assert set(run_jobs("pixel_digest", [[{"stash": keys[0]}, 10**6]], 30.0)) == {"lost"}
    # A key outside damdup's own is no image of ours: a malformed job, not a read.
    foreign = run_jobs("pixel_digest", [[{"stash": "celery-task-meta-x"}, 10**6]], 30.0)
    assert foreign == {"values": [{"error": "malformed arguments for job 'pixel_digest'"}]}
    stash.drop(keys)
    stash.close()


def test_what_only_saves_memory_is_tried_once_when_redis_does_not_answer() -> None:
    """A drop (or a keep again) while Redis is away is tried once: a run
    stopping because the broker is gone must not wait a minute of retries
    for each of its messages before it says so."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    tries: list[int] = []

    def refuse() -> None:  # every connection closed at once: Redis gone mid-answer
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            tries.append(1)
            conn.close()

    threading.Thread(target=refuse, daemon=True).start()
    stash = Stash(f"redis://127.0.0.1:{server.getsockname()[1]}/0")
    try:
        with pytest.raises(redis.ConnectionError):
            stash.drop([STASH_PREFIX + "x"])
        assert len(tries) == 1
        with pytest.raises(redis.ConnectionError):
            stash.put({STASH_PREFIX + "x": b"image"}, patient=False)
        assert len(tries) == 2
    finally:
        stash.close()
        server.close()
