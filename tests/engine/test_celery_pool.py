"""CeleryPool's bookkeeping without a broker: a job the broker lost is sent
again and its outcome given once, a job never answered becomes an error
instead of a wait without end, and a job's bytes fit its broker's message
limit. The pool against real brokers and workers: tests/entry/test_celery*.py.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError
from kombu.serialization import dumps

from connector.core.settings import Settings
from connector.engine import celery_pool
from connector.engine.celery_app import QUEUE, TASK, make_app
from connector.engine.celery_pool import SENDS, CeleryPool, max_message_bytes
from connector.engine.settle import pixel_digest_job

MiB = 1024 * 1024
WAIT_AT_MOST_S = 10.0  # the waits here are 0.1-0.8 s


class FakeResult:
    def __init__(self, task_id: str, job: int) -> None:
        self.id = task_id
        self.job = job
        self.state: str | None = None
        self.result: Any = None
        self.callbacks: list[Callable[[FakeResult], None]] = []
        self.forgotten = False

    def then(self, callback: Callable[[FakeResult], None]) -> None:
        self.callbacks.append(callback)

    def forget(self) -> None:
        self.forgotten = True

    def answer(self, revoked: bool = False) -> None:
        if revoked:  # what a worker that lost the broker stores for its running job
            self.state, self.result = "REVOKED", TaskRevokedError("terminated")
        else:
            self.state, self.result = "SUCCESS", {"value": f"digest {self.job}"}
        for callback in self.callbacks:
            callback(self)


class FakeBroker:
    """A broker and its workers: `answers(send number of the job)` says
    whether that send of a job is run (its result arrives at the next drain),
    or lost; with `late`, a lost send's result arrives after all, once
    another send of the job has been answered."""

    def __init__(
        self,
        answers: Callable[[int], bool],
        late: bool = False,
        revoked: Callable[[int], bool] = lambda send: False,
    ) -> None:
        self.answers = answers
        self.late = late
        self.revoked = revoked
        self.ids = itertools.count()
        self.sent: dict[int, list[FakeResult]] = {}
        self.ready: list[FakeResult] = []
        self.lost: list[FakeResult] = []
        self.backend = self
        self.result_consumer = self
        self.began = time.monotonic()

    def send_task(self, name: str, args: tuple[Any, ...], queue: str, time_limit: float) -> Any:
        assert (name, queue) == (TASK, QUEUE)
        job = int(args[1][1])  # pixel_digest(data, max_pixels): the job's number here
        result = FakeResult(f"task-{next(self.ids)}", job)
        sends = self.sent.setdefault(job, [])
        sends.append(result)
        (self.ready if self.answers(len(sends)) else self.lost).append(result)
        return result

    def drain_events(self, timeout: float) -> None:
        assert time.monotonic() - self.began < WAIT_AT_MOST_S, "the pool waits without end"
        time.sleep(0.005)
        if not self.ready and self.late:  # a lost send's answer, once another's came
            for result in self.lost:
                if any(other.state for other in self.sent[result.job]):
                    self.lost.remove(result)
                    self.ready.append(result)
                    break
        if not self.ready:
            raise TimeoutError
        result = self.ready.pop(0)
        result.answer(self.revoked(len(self.sent[result.job])))


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Jobs sent again after 0.1 s, then 0.2 s, ...; workers as `workers` says."""
    workers = {"processes": 1, "asked": 0}

    def worker_processes(app: object, broker: str, fresh: bool = False) -> int:
        workers["asked"] += 1
        return workers["processes"]

    monkeypatch.setattr(celery_pool, "hard_limit", lambda seconds: 0.05)
    monkeypatch.setattr(celery_pool, "RESEND_MARGIN_S", 0.05)
    monkeypatch.setattr(celery_pool, "worker_processes", worker_processes)
    yield workers


def run(broker: FakeBroker, jobs: int) -> list[Any]:
    pool = CeleryPool(Settings(engine="celery", broker="redis://127.0.0.1:1/0"))
    pool._app = broker
    outcomes = list(pool.map(pixel_digest_job, [(n, (b"x", n)) for n in range(jobs)], repr))
    pool._app = None
    return outcomes


def test_a_job_the_broker_lost_is_sent_again_and_counted_once(fast: dict[str, int]) -> None:
    # Every job's first send is lost; its answer comes after all, once the
    # second send's has been taken: dropped.
    broker = FakeBroker(lambda send: send > 1, late=True)
    outcomes = run(broker, 6)
    assert sorted(outcome.key for outcome in outcomes) == list(range(6))
    assert all(outcome.value == f"digest {outcome.key}" for outcome in outcomes)
    assert {job: len(sends) for job, sends in broker.sent.items()} == dict.fromkeys(range(6), 2)
    # The late answers came (but for the last jobs', after the run) and were dropped.
    assert sum(bool(sends[0].state) for sends in broker.sent.values()) >= 4
    # Every result taken or dropped is deleted from the backend.
    assert all(result.forgotten for sends in broker.sent.values() for result in sends)


def test_a_job_its_worker_cancelled_is_sent_again_at_once(
    fast: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that loses the broker cancels its job (stored as REVOKED); the
    broker hands the message out again, but its result would reach no one."""
    monkeypatch.setattr(celery_pool, "RESEND_MARGIN_S", 3600)  # no wait for a late job
    broker = FakeBroker(lambda send: True, revoked=lambda sends: sends == 1)
    outcomes = run(broker, 4)
    assert sorted((outcome.key, outcome.value) for outcome in outcomes) == [
        (n, f"digest {n}") for n in range(4)
    ]
    assert all(len(sends) == 2 for sends in broker.sent.values())


def test_a_job_never_answered_is_an_error_not_a_wait_without_end(fast: dict[str, int]) -> None:
    broker = FakeBroker(lambda send: False)
    began = time.monotonic()
    outcomes = run(broker, 3)
    assert time.monotonic() - began < 5
    assert sorted(outcome.key for outcome in outcomes) == [0, 1, 2]
    assert {outcome.error for outcome in outcomes} == {
        f"the broker lost the job: no result after {SENDS} sends"
    }
    assert all(len(sends) == SENDS for sends in broker.sent.values())


def test_with_no_worker_answering_a_job_waits_without_being_sent_again(
    fast: dict[str, int],
) -> None:
    # No worker for 0.8 s (the job would be sent again after 0.1 s): it
    # waits in the queue, then a worker starts and runs it.
    fast["processes"] = 0
    began = time.monotonic()
    broker = FakeBroker(lambda send: False)
    drain = broker.drain_events

    def worker_starts(timeout: float) -> None:
        if time.monotonic() - began > 0.8:
            broker.ready, broker.lost = broker.ready + broker.lost, []
        drain(timeout)

    broker.drain_events = worker_starts  # type: ignore[method-assign]
    outcomes = run(broker, 1)
    assert [(outcome.key, outcome.value) for outcome in outcomes] == [(0, "digest 0")]
    assert len(broker.sent[0]) == 1
    assert fast["asked"] >= 3  # the workers were asked for, and none answered


@pytest.mark.parametrize("broker", ["amqp://guest@mq.example//", "redis://mq.example:6379/0"])
def test_the_largest_job_fits_the_broker(broker: str) -> None:
    """RabbitMQ 4 refuses messages over 16 MiB (its default max_message_size);
    Redis carries the message base64-encoded in JSON, kept within 64 MiB."""
    limit = max_message_bytes(broker)
    assert limit > 10 * MiB  # a camera's JPEG still goes to the workers
    app = make_app(Settings(engine="celery", broker=broker))
    message = app.amqp.create_task_message(
        "0" * 36, TASK, ("fingerprint", [b"\xff" * limit, 10**9, 10**9], 3600.0), {},
        time_limit=3600, eta=None, expires=None,
    )  # fmt: skip
    _type, _encoding, body = dumps(message.body, serializer="msgpack")
    headers = json.dumps(message.headers, default=str).encode()
    if broker.startswith("amqp"):
        assert len(body) + len(headers) < 16 * MiB
    else:
        # kombu's Redis transport: {"body": base64, "headers": ..., "properties": ...}
        envelope = json.dumps(
            {"body": base64.b64encode(body).decode(), "headers": message.headers,
             "properties": message.properties, "content-encoding": "binary"},
            default=str,
        )  # fmt: skip
        assert len(envelope) <= 64 * MiB
    app.close()
    # And a job of a byte more runs on this host.
    assert celery_pool._oversize((b"\xff" * (limit + 1), 1, 1), limit)
    assert not celery_pool._oversize((b"\xff" * limit, 1, 1), limit)
