"""CeleryPool's bookkeeping without a broker: a job the broker lost is sent
again and its outcome given once, a job never answered becomes an error
instead of a wait without end, and a job's bytes fit its broker's message
limit. The pool against real brokers and workers: tests/entry/test_celery*.py.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError, WorkerLostError
from kombu.exceptions import OperationalError
from kombu.serialization import dumps

from connector.core.settings import Settings
from connector.engine import celery_pool
from connector.engine.celery_app import BATCH_JOBS, QUEUE, TASK, make_app, run_jobs
from connector.engine.celery_pool import BATCH_BYTES, SENDS, CeleryPool, max_message_bytes
from connector.engine.pool import EngineUnavailable
from connector.engine.settle import pixel_digest_job

MiB = 1024 * 1024
WAIT_AT_MOST_S = 10.0  # the waits here are 0.1-0.8 s


class FakeResult:
    """The result of one message: the jobs it carried."""

    def __init__(self, task_id: str, jobs: list[int]) -> None:
        self.id = task_id
        self.jobs = jobs
        self.job = jobs[0]
        self._state: str | None = None
        self.result: Any = None
        self.callbacks: list[Callable[[FakeResult], None]] = []
        self.forgotten = False
        self.answered = False

    def then(self, callback: Callable[[FakeResult], None]) -> None:
        self.callbacks.append(callback)

    @property
    def state(self) -> str | None:
        # Celery's AsyncResult asks the backend again for a forgotten result's
        # state (rpc://: on a pooled connection, dead after a broker restart).
        assert not self.forgotten, "a forgotten result's state asked of the broker again"
        return self._state

    @state.setter
    def state(self, value: str | None) -> None:
        self._state = value

    def forget(self) -> None:
        # As Celery's AsyncResult: what it held is dropped with it.
        self.forgotten = True
        self._state, self.result = ("PENDING" if self.answered else None), None

    def answer(self, revoked: bool = False, died: bool = False, runs: int = BATCH_JOBS) -> None:
        self.answered = True
        if revoked:  # what a worker that lost the broker stores for its running job
            self.state, self.result = "REVOKED", TaskRevokedError("terminated")
        elif died:  # its worker process died under it
            self.state, self.result = "FAILURE", WorkerLostError("signal 9 (SIGKILL)")
        else:
            values = [{"value": f"digest {job}"} for job in self.jobs[:runs]]
            self.state, self.result = "SUCCESS", {"values": values}
        for callback in self.callbacks:
            callback(self)


class FakeBroker:
    """A broker and its workers: `answers(send number of the job)` says
    whether that send of a job's message is run (its result arrives at the
    next drain), or lost; with `late`, a lost send's result arrives after
    all, once another send of the job has been answered. A message that
    carries a job in `crashes` kills its worker process."""

    def __init__(
        self,
        answers: Callable[[int], bool],
        late: bool = False,
        revoked: Callable[[int], bool] = lambda send: False,
        crashes: frozenset[int] = frozenset(),
        runs: int = BATCH_JOBS,
        away: tuple[int, int] = (0, 0),
    ) -> None:
        self.answers = answers
        self.late = late
        self.revoked = revoked
        self.crashes = crashes
        self.runs = runs  # jobs of a message its worker has time for
        # The broker goes away at drain number away[0] (its results'
        # connection lost, Celery's own reconnection refused) and refuses
        # away[1] reconnections in all.
        self.drains = 0
        self.away_at, self.refusals = away
        self.reconnects = 0
        self.ids = itertools.count()
        self.sent: dict[int, list[FakeResult]] = {}
        self.messages: list[list[int]] = []
        self.ready: list[FakeResult] = []
        self.lost: list[FakeResult] = []
        self.backend = self
        self.result_consumer = self
        self.began = time.monotonic()

    def send_task(self, name: str, args: tuple[Any, ...], queue: str, time_limit: float) -> Any:
        assert (name, queue) == (TASK, QUEUE)
        job, batch, _seconds = args
        assert job == "pixel_digest" and 0 < len(batch) <= BATCH_JOBS
        jobs = [int(each[1]) for each in batch]  # pixel_digest(data, max_pixels): its number
        self.messages.append(jobs)
        result = FakeResult(f"task-{next(self.ids)}", jobs)
        for number in jobs:
            self.sent.setdefault(number, []).append(result)
        (self.ready if self.answers(len(self.sent[jobs[0]])) else self.lost).append(result)
        return result

    def drain_events(self, timeout: float) -> None:
        assert time.monotonic() - self.began < WAIT_AT_MOST_S, "the pool waits without end"
        assert self.reconnects >= self.refusals or self.drains < self.away_at, "drained while away"
        time.sleep(0.005)
        self.drains += 1
        if self.drains == self.away_at:
            self._reconnect()
        if not self.ready and self.late:  # a lost send's answer, once another's came
            for result in self.lost:
                if any(other.answered for other in self.sent[result.job]):
                    self.lost.remove(result)
                    self.ready.append(result)
                    break
        if not self.ready:
            raise TimeoutError
        result = self.ready.pop(0)
        result.answer(
            self.revoked(len(self.sent[result.job])),
            died=bool(self.crashes & set(result.jobs)),
            runs=self.runs,
        )

    def _reconnect(self) -> None:
        assert time.monotonic() - self.began < WAIT_AT_MOST_S, "the pool waits without end"
        self.reconnects += 1
        if self.reconnects <= self.refusals:
            raise OperationalError("[Errno 111] Connection refused")


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


def run(broker: FakeBroker, jobs: int | Iterable[tuple[int, tuple[Any, ...]]]) -> list[Any]:
    pool = CeleryPool(Settings(engine="celery", broker="redis://127.0.0.1:1/0"))
    pool._app = broker
    listed = [(n, (b"x", n)) for n in range(jobs)] if isinstance(jobs, int) else jobs
    outcomes = list(pool.map(pixel_digest_job, listed, repr))
    pool._app = None
    return outcomes


def test_a_job_the_broker_lost_is_sent_again_and_counted_once(
    fast: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every job's first send is lost; its answer comes after all, once the
    # second send's has been taken: dropped. (A job to a message, so that
    # answers come while others are awaited.)
    monkeypatch.setattr(celery_pool, "BATCH_JOBS", 1)
    broker = FakeBroker(lambda send: send > 1, late=True)
    outcomes = run(broker, 6)
    assert sorted(outcome.key for outcome in outcomes) == list(range(6))
    assert all(outcome.value == f"digest {outcome.key}" for outcome in outcomes)
    assert {job: len(sends) for job, sends in broker.sent.items()} == dict.fromkeys(range(6), 2)
    # The late answers came (but for the last jobs', after the run) and were dropped.
    assert sum(sends[0].answered for sends in broker.sent.values()) >= 3
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


def test_results_are_awaited_again_once_the_broker_is_back(
    fast: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker restarting while results are awaited: the result backend's
    own reconnection is refused (RabbitMQ's rpc:// raises kombu's
    OperationalError), and is tried again until the broker is back. (A run
    stopped here with "unexpected OperationalError" in CI.) The messages in
    flight then are sent again at once: their results may have gone with
    the broker."""
    monkeypatch.setattr(celery_pool, "BROKER_RETRY_S", 0.01)
    monkeypatch.setattr(celery_pool, "RESEND_MARGIN_S", 3600)  # none of it is a lost job
    broker = FakeBroker(lambda send: True, away=(2, 4))
    outcomes = run(broker, 40)
    assert sorted((outcome.key, outcome.value) for outcome in outcomes) == [
        (n, f"digest {n}") for n in range(40)
    ]
    assert broker.reconnects == 5  # four refused, the fifth made
    # Three messages of 14 jobs; the first answered before the broker went.
    assert {job: len(sends) for job, sends in broker.sent.items()} == {
        job: 1 if job < 14 else 2 for job in range(40)
    }


def test_a_broker_away_too_long_while_results_are_awaited_stops_the_run(
    fast: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celery_pool, "BROKER_RETRY_S", 0.01)
    monkeypatch.setattr(celery_pool, "BROKER_AWAY_S", 0.3)
    broker = FakeBroker(lambda send: True, away=(1, 10_000))
    with pytest.raises(EngineUnavailable) as stopped:
        run(broker, 4)
    assert str(stopped.value) == (
        "the broker redis://127.0.0.1:1/0 does not answer: [Errno 111] Connection refused"
    )
    assert 10 < broker.reconnects < 100


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
    """RabbitMQ 4 refuses messages over 16 MiB (its default max_message_size).
    Through Redis the bytes are kept beside the message (celery_app.Stash);
    were they carried in it, kombu's base64 in JSON would still keep it
    within 64 MiB."""
    limit = max_message_bytes(broker)
    assert limit > 10 * MiB  # a camera's JPEG still goes to the workers
    app = make_app(Settings(engine="celery", broker=broker))
    message = app.amqp.create_task_message(
        "0" * 36, TASK, ("fingerprint", [[b"\xff" * limit, 10**9, 10**9]], 3600.0), {},
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
    assert celery_pool._image_bytes((b"\xff" * (limit + 1), 1, 1)) > limit


# -- jobs a few to a message ----------------------------------------------------------


def test_jobs_travel_a_few_to_a_message(fast: dict[str, int]) -> None:
    """Celery's cost per message is a rendition's fingerprint: a long run's
    jobs go BATCH_JOBS to a message; a short list is spread over the worker
    processes (three messages each in flight) rather than packed into one."""
    broker = FakeBroker(lambda send: True)
    outcomes = run(broker, ((n, (b"x", n)) for n in range(3 * BATCH_JOBS + 1)))  # a generator
    assert sorted((o.key, o.value) for o in outcomes) == [
        (n, f"digest {n}") for n in range(3 * BATCH_JOBS + 1)
    ]
    assert [len(jobs) for jobs in broker.messages] == [BATCH_JOBS] * 3 + [1]
    fast["processes"] = 2  # six messages in flight
    broker = FakeBroker(lambda send: True)
    run(broker, 20)
    assert [len(jobs) for jobs in broker.messages] == [4] * 5


def test_a_message_holds_few_bytes_and_a_large_image_goes_alone(fast: dict[str, int]) -> None:
    broker = FakeBroker(lambda send: True)
    large, small = b"x" * (BATCH_BYTES - 100), b"x" * 1000
    jobs = ((n, (large if n == 2 else small, n)) for n in range(6))
    outcomes = run(broker, jobs)
    assert sorted(o.key for o in outcomes if o.error is None) == list(range(6))
    assert broker.messages == [[0, 1], [2], [3, 4, 5]]


def test_a_message_whose_worker_process_died_is_sent_again_job_by_job(
    fast: dict[str, int],
) -> None:
    """A decoder crash kills the worker process and with it the message's
    other jobs: each is sent again on its own, and only the culprit is
    recorded as the crash (as the local pool finds it)."""
    broker = FakeBroker(lambda send: True, crashes=frozenset({5}))
    outcomes = run(broker, ((n, (b"x", n)) for n in range(BATCH_JOBS)))
    by_key = {o.key: o for o in outcomes}
    assert sorted(by_key) == list(range(BATCH_JOBS))
    assert by_key[5].error == "crashed or hung the decoder (worker process died)"
    assert all(by_key[n].value == f"digest {n}" for n in by_key if n != 5)
    assert broker.messages[0] == list(range(BATCH_JOBS))
    assert sorted(map(tuple, broker.messages[1:])) == [(n,) for n in range(BATCH_JOBS)]


def test_the_task_runs_each_job_of_its_message_and_refuses_a_malformed_one() -> None:
    """What a worker process does with a message: each job under its own
    limits, the values in the order sent; a message that is no list of
    jobs, or too long a list, is refused whole."""
    from PIL import Image

    from connector.engine.settle import pixel_digest_job

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")
    good, bad = png.getvalue(), b"not an image"
    answer = run_jobs("pixel_digest", [[good, 10**6], [bad, 10**6], [good, 10**6]], 10.0)
    values = answer["values"]
    assert values[0] == values[2] == {"value": pixel_digest_job(good, 10**6)}
    assert values[1]["error"]
    assert run_jobs("pixel_digest", [[good, 10**6]] * (BATCH_JOBS + 1), 10.0) == {
        "error": "malformed batch"
    }
    assert run_jobs("pixel_digest", "not a list", 10.0) == {"error": "malformed batch"}  # type: ignore[arg-type]
    assert run_jobs("pixel_digest", [b"flat"], 10.0) == {
        "error": "malformed arguments for job 'pixel_digest'"
    }


def test_a_message_stops_taking_jobs_once_it_has_run_a_jobs_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However slow its files, a message runs no longer than one job may
    (the hard limit stays that of a job): once it has run for the time
    limit, it starts no more jobs and gives back the values it has."""
    from connector.engine import celery_app

    started: list[float] = []

    def slow_job(name: str, args: list[Any], seconds: float) -> dict[str, Any]:
        started.append(time.monotonic())
        time.sleep(0.05)
        return {"value": args[1]}

    monkeypatch.setattr(celery_app, "run_job", slow_job)
    answer = run_jobs("pixel_digest", [[b"x", n] for n in range(BATCH_JOBS)], 0.12)
    assert answer["values"] == [{"value": n} for n in range(3)]  # begun at 0, 0.05, 0.1 s
    assert started[-1] - started[0] < 0.12


def test_the_jobs_a_message_had_no_time_for_are_sent_again(fast: dict[str, int]) -> None:
    broker = FakeBroker(lambda send: True, runs=3)
    outcomes = run(broker, ((n, (b"x", n)) for n in range(BATCH_JOBS)))
    assert sorted((o.key, o.value) for o in outcomes) == [
        (n, f"digest {n}") for n in range(BATCH_JOBS)
    ]
    # Each message gives back three values; the rest go again, in one message.
    assert broker.messages == [list(range(first, BATCH_JOBS)) for first in range(0, BATCH_JOBS, 3)]
