"""The jobs of a run sent to `damdup worker`s through the broker, on any
number of hosts ([damdup] engine = "celery"): the same map/close interface
as the local WorkerPool (connector/engine/pool.py), the same outcomes and
error texts, so a run indexes alike wherever its jobs ran.

Jobs travel a few to a message (up to BATCH_JOBS, BATCH_BYTES of images):
Celery's cost per message is as large as a rendition's fingerprint. At most
IN_FLIGHT messages per worker process are in flight (the processes the workers
on the broker report, asked again every minute), so a big run holds a few
images in memory, not its whole listing. Outcomes are yielded as their
results arrive, in any order. A message whose worker process died or was
killed (a decoder crash, a hang past the hard limit) is sent again job by
job, so that only the culprit is recorded. What the workers do and why is
in connector/engine/celery_app.py.

A message with no result for longer than it may run (its hard limit, plus a
margin for a dead worker's message to come back from Redis) while workers
answer is sent again: the broker lost it (restarted without its queues,
say). At most SENDS times, then it is its jobs' recorded error. Sending a
job again is safe: what a job returns is keyed by the content digest of its image (a
fingerprint row's key; pairs by their two digests) and stored with an
upsert, so a job run twice is stored once; the first result taken counts and
later ones are dropped. A broker out of reach is waited for (the publish is
retried, celery_app.PUBLISH_RETRY; the results' connection is made again,
BROKER_AWAY_S) and then stops the run with EngineUnavailable, one line
naming the broker.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from kombu.exceptions import OperationalError

from adapters.base import reason
from connector.core.settings import Settings
from connector.engine.celery_app import (
    BATCH_JOBS,
    JOBS,
    QUEUE,
    TASK,
    Stash,
    hard_limit,
    job_name,
    make_app,
    uses_redis,
)
from connector.engine.pool import EngineUnavailable, Limits, Outcome, WorkerPool

__all__ = ["CeleryPool", "max_message_bytes"]

log = structlog.get_logger(__name__)

KeyT = TypeVar("KeyT")

CAPACITY_TTL_S = 60.0  # how long the workers' reported processes are trusted
INSPECT_TIMEOUT_S = 1.0
STALL_WARNING_S = 60.0

# A job of more image bytes than its broker takes runs in one local worker
# process instead (same limits, same outcome); a few such files are not worth
# another host. RabbitMQ refuses messages over its max_message_size (4's
# default 16 MiB, 3's 128 MiB): the bytes go as they are (msgpack), with a
# little room for the rest of the message. Redis would take values up to
# 512 MB, but holds everything in memory: 48 MiB of image at most, the
# bound of the days when kombu carried the bytes inside a 64 MiB message as
# base64 (3 bytes in 4); they now wait beside it (celery_app.Stash).
AMQP_MESSAGE_BYTES = 16 * 1024 * 1024
REDIS_MESSAGE_BYTES = 64 * 1024 * 1024
MESSAGE_ROOM_BYTES = 64 * 1024  # the task's name, numbers, headers, envelope
# Image bytes gathered into one message at most: a batch of renditions, while
# a camera original goes alone (and a batch's worker holds little memory).
BATCH_BYTES = 4 * 1024 * 1024


def max_message_bytes(broker: str) -> int:
    """The most image bytes one job may carry through this broker."""
    if uses_redis(broker):
        return (REDIS_MESSAGE_BYTES - MESSAGE_ROOM_BYTES) // 4 * 3  # as with base64
    return AMQP_MESSAGE_BYTES - MESSAGE_ROOM_BYTES


# A job with no result this long past the hard limit is sent again; longer
# than a dead worker's job takes to come back from Redis (visibility_timeout,
# hard limit + 20 s, then the restore interval), so that a killed worker's
# jobs are not sent twice.
RESEND_MARGIN_S = 30.0
SENDS = 3  # sends of one job at most (each wait twice the one before)

# The broker out of reach while results are awaited: the results' connection
# is tried again every BROKER_RETRY_S for this long (about as long as a publish is
# retried, celery_app.PUBLISH_RETRY), then the run stops.
BROKER_AWAY_S = 60.0
BROKER_RETRY_S = 1.0

# Messages in flight per worker process: the two each process holds (the one
# it runs and the next, celery_app's prefetch) and one waiting in the broker,
# at hand when a process takes its next.
IN_FLIGHT = 3

# Per broker, for every pool of this process: (when asked, worker processes).
_capacity: dict[str, tuple[float, int]] = {}
_capacity_lock = threading.Lock()


def worker_processes(app: Any, broker: str, fresh: bool = False) -> int:
    """The worker processes of the workers that answer on the broker; 0 when
    none answers."""
    with _capacity_lock:
        known = _capacity.get(broker)
        if known is not None and not fresh and time.monotonic() - known[0] < CAPACITY_TTL_S:
            return known[1]
    stats = app.control.inspect(timeout=INSPECT_TIMEOUT_S).stats() or {}
    total = 0
    for node in stats.values():
        pool = node.get("pool", {}) if isinstance(node, dict) else {}
        total += int(pool.get("max-concurrency", 1) or 1)
    with _capacity_lock:
        _capacity[broker] = (time.monotonic(), total)
    return total


class CeleryPool:
    def __init__(self, settings: Settings) -> None:
        assert settings.broker is not None, "checked with the settings (engine_problem)"
        self.settings = settings
        self.broker = settings.broker
        self.seconds = settings.file_timeout_s
        self.max_bytes = max_message_bytes(settings.broker)
        self._app: Any = None
        # Redis: where the messages' image bytes are kept (celery_app.Stash).
        self.stash: Stash | None = None
        self._backends: list[Any] = []
        self._local_pool: WorkerPool | None = None
        # What the broker's client raises when the broker is out of reach.
        self.broker_errors: tuple[type[BaseException], ...] = (OperationalError, OSError)

    def __enter__(self) -> CeleryPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _local(self) -> WorkerPool:
        if self._local_pool is None:
            limits = Limits(
                seconds=self.seconds, memory_bytes=self.settings.worker_memory_mb * 1024 * 1024
            )
            self._local_pool = WorkerPool(1, limits)
        return self._local_pool

    def close(self) -> None:
        if self._local_pool is not None:
            self._local_pool.close()
            self._local_pool = None
        if self._app is not None:
            # Each thread that ran jobs has its own result backend and with it
            # a connection for the results (pub/sub, or a reply queue).
            for backend in self._backends:
                with contextlib.suppress(Exception):
                    backend.result_consumer.stop()
            self._backends.clear()
            self._app.close()
            self._app = None
        if self.stash is not None:
            self.stash.close()
            self.stash = None

    def app(self) -> Any:
        if self._app is None:
            self._app = make_app(self.settings)
            if uses_redis(self.broker):
                self.stash = Stash(self.broker)
            with self._app.connection_for_write() as connection:  # not connected yet
                self.broker_errors = (
                    OperationalError, OSError, *connection.connection_errors
                )  # fmt: skip
        return self._app

    def warm(self) -> None:
        """Reach the broker now and learn the workers, not at the first job."""
        self._in_flight_limit(fresh=True)

    def _worker_processes(self, fresh: bool = False) -> int:
        try:
            return worker_processes(self.app(), self.broker, fresh)
        except self.broker_errors as exc:
            raise EngineUnavailable(
                f"the broker {_safe(self.broker)} does not answer: {reason(exc)}"
            ) from exc

    def _in_flight_limit(self, fresh: bool = False) -> int:
        processes = self._worker_processes(fresh)
        if processes == 0:
            log.warning(
                "celery.no_workers",
                broker=_safe(self.broker),
                note="no damdup worker answers; jobs wait in the queue until one starts",
            )
            processes = self.settings.workers
        return IN_FLIGHT * processes

    def map(
        self,
        function: Callable[..., Any],
        jobs: Iterable[tuple[KeyT, tuple[Any, ...]]],
        describe_error: Callable[[BaseException], str],
    ) -> Iterator[Outcome[KeyT]]:
        """Send `function(*args)` for each job to the workers, a few jobs to
        a message; yield outcomes as they finish. `describe_error` turns an
        exception raised here (preparing a job's arguments) into a reason
        for a person."""
        name = job_name(function)
        job = JOBS[name]
        run: _Run[KeyT] = _Run(self, name)
        batch = _Batch[KeyT](_batch_jobs(jobs, run.limit), min(BATCH_BYTES, self.max_bytes))
        pending = iter(jobs)
        exhausted = False
        try:
            while True:
                while not exhausted and len(run.flights) < run.limit:
                    try:
                        key, args = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    try:
                        sent = job.send(args)
                    except Exception as exc:  # the file cannot be read here
                        yield Outcome(key, error=describe_error(exc))
                        continue
                    if _image_bytes(sent) > self.max_bytes:  # this host's pool, same limits
                        yield from self._local().map(function, [(key, args)], describe_error)
                        continue
                    for full in batch.add(key, list(sent)):
                        run.send(full)
                if exhausted and batch.items and len(run.flights) < run.limit:
                    run.send(batch.take())  # the last jobs
                if not run.flights:
                    break
                yield from run.arrived()
                yield from run.overdue()
                run.keep_watch()
        finally:
            # Stopped early (an error, the caller gone): the results still
            # coming are of no use to anyone.
            run.forget_all()

    def _outcome(self, key: KeyT, entry: Any, job: Any) -> Outcome[KeyT]:
        """One job's entry of a message's result."""
        if not isinstance(entry, dict) or ("value" not in entry and entry.get("error") is None):
            return Outcome(key, error="the worker returned no result")
        if entry.get("error") is not None:
            return Outcome(key, error=str(entry["error"]))
        return Outcome(key, value=job.decode(entry["value"]))


def _batch_jobs(jobs: Iterable[Any], in_flight: int) -> int:
    """Jobs per message: BATCH_JOBS, or fewer where the jobs are few enough
    that full messages would leave worker processes idle."""
    if not isinstance(jobs, Sized):
        return BATCH_JOBS
    return max(1, min(BATCH_JOBS, -(-len(jobs) // in_flight)))


@dataclass(eq=False)
class _Flight(Generic[KeyT]):
    """The jobs of one message in flight (their keys and arguments as sent),
    the task ids it was sent as, when it was sent last and how many times."""

    items: list[tuple[KeyT, list[Any]]]
    ids: list[str] = field(default_factory=list)
    sent_at: float = 0.0
    sends: int = 0
    # Through Redis: the jobs as the message carries them (keys in place of
    # image bytes) and the bytes kept under those keys.
    carried: list[list[Any]] | None = None
    stashed: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        first = str(self.items[0][0])
        return first if len(self.items) == 1 else f"{first} and {len(self.items) - 1} more"


class _Batch(Generic[KeyT]):
    """Jobs gathered into one message: at most `jobs` of them, and at most
    `max_bytes` of image bytes (a big original goes alone)."""

    def __init__(self, jobs: int, max_bytes: int) -> None:
        self.jobs = jobs
        self.max_bytes = max_bytes
        self.items: list[tuple[KeyT, list[Any]]] = []
        self.bytes = 0

    def add(self, key: KeyT, args: list[Any]) -> Iterator[_Flight[KeyT]]:
        """Take a job; yield the message(s) that are full."""
        weight = _image_bytes(args)
        if self.items and self.bytes + weight > self.max_bytes:
            yield self.take()
        self.items.append((key, args))
        self.bytes += weight
        if len(self.items) >= self.jobs:
            yield self.take()

    def take(self) -> _Flight[KeyT]:
        flight = _Flight(self.items)
        self.items, self.bytes = [], 0
        return flight


class _Run(Generic[KeyT]):
    """The messages of one CeleryPool.map in flight, their results as they come."""

    def __init__(self, pool: CeleryPool, name: str) -> None:
        self.pool = pool
        self.name = name
        self.app = pool.app()
        self.job = JOBS[name]
        # A Celery app's result backend is per thread: this call's, throughout.
        self.backend = self.app.backend
        if all(known is not self.backend for known in pool._backends):
            pool._backends.append(self.backend)
        self.hard = hard_limit(pool.seconds)
        self.finished: deque[Any] = deque()
        self.flights: set[_Flight[KeyT]] = set()
        self.by_id: dict[str, _Flight[KeyT]] = {}
        self.results: dict[str, Any] = {}
        self.limit = pool._in_flight_limit()
        self.limit_at = self.last_progress = time.monotonic()
        self.away_since: float | None = None  # the results' connection lost, since

    def _carried(self, flight: _Flight[KeyT]) -> list[list[Any]]:
        """The jobs as the message carries them: through Redis, each image's
        bytes kept beside it (again, at a send again: Redis may have lost them)."""
        stash = self.pool.stash
        if stash is None:
            return [args for _key, args in flight.items]
        if flight.carried is None:
            flight.carried = []
            for _key, args in flight.items:
                carried: list[Any] = []
                for arg in args:
                    if isinstance(arg, bytes):
                        name = stash.name()
                        flight.stashed[name] = arg
                        arg = {"stash": name}
                    carried.append(arg)
                flight.carried.append(carried)
        stash.put(flight.stashed)
        return flight.carried

    def send(self, flight: _Flight[KeyT]) -> None:
        try:
            message = (self.name, self._carried(flight), self.pool.seconds)
            result = self.app.send_task(TASK, args=message, queue=QUEUE, time_limit=self.hard)
        except self.pool.broker_errors as exc:  # retried already (PUBLISH_RETRY)
            raise EngineUnavailable(
                f"the broker {_safe(self.pool.broker)} does not answer: {reason(exc)}"
            ) from exc
        flight.ids.append(result.id)
        flight.sent_at = time.monotonic()
        flight.sends += 1
        self.flights.add(flight)
        self.by_id[result.id] = flight
        self.results[result.id] = result
        result.then(self.finished.append)

    def arrived(self) -> Iterator[Outcome[KeyT]]:
        if not self.finished and self._drain():
            yield from self._in_flight_again()
        while self.finished:
            result = self.finished.popleft()
            flight = self.by_id.get(result.id)
            if flight is None:  # a later answer of a message sent again: taken already
                self._forget(result.id)
                continue
            self.last_progress = time.monotonic()
            # Read before the result is forgotten: a forgotten result's state
            # is asked of the broker again (rpc://: on a pooled connection
            # that may have died with a broker restart).
            state = result.state
            lost = _lost(result) if state == "SUCCESS" else None
            if state == "REVOKED" or lost is not None:
                # Cancelled by its worker on losing the broker (its message is
                # handed out again, but its result would reach no one), or its
                # image bytes gone from Redis (restarted while a worker held
                # the message): sent again, with them, counted as a send.
                if lost is None:
                    log.warning("celery.cancelled", job=flight.name)
                else:
                    log.warning("celery.resent", job=flight.name, sends=flight.sends + 1,
                                reason=lost)  # fmt: skip
                self.by_id.pop(result.id, None)
                self._forget(result.id)
                yield from self._again(flight)
                continue
            outcomes, again = self._outcomes(flight, result)
            self._done(flight)  # its result read: forgotten
            if len(again) > 1 and not outcomes:
                # One of its jobs killed or hung its process: each again on
                # its own, so that only that one is recorded as the culprit.
                log.warning("celery.batch_split", job=flight.name, state=state)
                for item in again:
                    self.send(_Flight([item]))
            elif again:  # the jobs its worker had no time left for
                self.send(_Flight(again))
            yield from outcomes

    def _in_flight_again(self) -> Iterator[Outcome[KeyT]]:
        """The results' connection made again: the results of the messages in
        flight may have gone with the broker (RabbitMQ's reply queues do not
        outlive a restart, and a result published before the queue is
        declared again is dropped). Each is sent again now, not after a wait
        of its hard limit: safe, as any send again is; the first result
        taken counts."""
        for waiting in list(self.flights):
            log.warning("celery.resent", job=waiting.name, sends=waiting.sends + 1,
                        reason="the results' connection made again")  # fmt: skip
            yield from self._again(waiting)

    def _outcomes(
        self, flight: _Flight[KeyT], result: Any
    ) -> tuple[list[Outcome[KeyT]], list[tuple[KeyT, list[Any]]]]:
        """The outcomes of a message's jobs, and the jobs to send again: those
        its worker had no time left for, or, when the worker process of a
        message of several jobs died under it, all of them."""
        keys = [key for key, _args in flight.items]
        if result.state == "SUCCESS":
            payload = result.result
            values = payload.get("values") if isinstance(payload, dict) else None
            if isinstance(values, list) and 0 < len(values) <= len(keys):
                outcomes = [
                    self.pool._outcome(key, entry, self.job)
                    for key, entry in zip(keys, values, strict=False)
                ]
                return outcomes, flight.items[len(values) :]
            whole = payload if isinstance(payload, dict) and "error" in payload else None
            return [self.pool._outcome(key, whole, self.job) for key in keys], []
        kind = type(result.result).__name__
        if kind in ("TimeLimitExceeded", "WorkerLostError") and len(keys) > 1:
            return [], flight.items
        if kind == "TimeLimitExceeded":
            error = f"took longer than {self.hard:g} s (killed)"
        elif kind == "WorkerLostError":
            log.warning("worker.died", job=flight.name)
            error = "crashed or hung the decoder (worker process died)"
        else:
            error = f"the worker failed: {kind}: {result.result}"
        return [Outcome(key, error=error) for key in keys], []

    def overdue(self) -> Iterator[Outcome[KeyT]]:
        """Messages the broker lost: sent again, or after SENDS their jobs' error."""
        now = time.monotonic()
        late = [flight for flight in self.flights if now - flight.sent_at > self._wait(flight)]
        if not late:
            return
        if self._workers() == 0:  # they wait in the queue for a worker to start
            for flight in late:
                flight.sent_at = now
                self._keep(flight)  # and their image bytes wait with them
            return
        for flight in late:
            log.warning("celery.resent", job=flight.name, sends=flight.sends + 1,
                        waited_s=round(now - flight.sent_at))  # fmt: skip
            yield from self._again(flight)

    def _again(self, flight: _Flight[KeyT]) -> Iterator[Outcome[KeyT]]:
        """Send a message again, or after SENDS sends give its jobs' error."""
        if flight.sends < SENDS:
            self.send(flight)
            return
        self._done(flight)
        for key, _args in flight.items:
            yield Outcome(
                key, error=f"the broker lost the job: no result after {flight.sends} sends"
            )

    def keep_watch(self) -> None:
        now = time.monotonic()
        if now - self.limit_at > CAPACITY_TTL_S:  # a worker host may have come or gone
            with contextlib.suppress(EngineUnavailable):  # away for now: the limit as it was
                self.limit = self.pool._in_flight_limit()
            self.limit_at = now
        if now - self.last_progress > STALL_WARNING_S:
            log.warning(
                "celery.waiting",
                messages=len(self.flights),
                worker_processes=self._workers(),
                waited_s=round(now - self.last_progress),
            )
            self.last_progress = now

    def forget_all(self) -> None:
        for task_id in list(self.results):
            self._forget(task_id)
        for flight in list(self.flights):
            self._drop(flight)

    def _drain(self) -> bool:
        """Wait up to a second for results to arrive; True when the results'
        connection, lost, has just been made again. The connection
        lost (the broker restarting), the result backend reconnects at once
        (Celery's reconnect_on_error); while the broker is still away that
        fails, and it is tried again here every BROKER_RETRY_S, for as long
        as a publish is retried (BROKER_AWAY_S), before the run stops."""
        consumer = self.backend.result_consumer
        try:
            if self.away_since is None:
                consumer.drain_events(timeout=1.0)
                return False
            consumer._reconnect()  # the subscriptions of the lost connection, anew
        except TimeoutError:  # an OSError: before the broker's errors
            return False
        except RuntimeError as exc:  # the backend's own reconnection failed
            if not isinstance(exc.__cause__, self.pool.broker_errors):
                raise
            self._away(exc.__cause__)
            return False
        except self.pool.broker_errors as exc:
            self._away(exc)
            return False
        log.warning("celery.reconnected", away_s=round(time.monotonic() - self.away_since, 1))
        self.away_since = None
        return True

    def _away(self, exc: BaseException) -> None:
        """The broker out of reach while results are awaited: wait a while,
        or stop the run once it has been away for BROKER_AWAY_S."""
        now = time.monotonic()
        if self.away_since is None:
            self.away_since = now
        if now - self.away_since > BROKER_AWAY_S:
            raise EngineUnavailable(
                f"the broker {_safe(self.pool.broker)} does not answer: {reason(exc)}"
            ) from exc
        log.warning("celery.connection", reason=reason(exc))
        time.sleep(BROKER_RETRY_S)

    def _wait(self, flight: _Flight[KeyT]) -> float:
        return (self.hard + RESEND_MARGIN_S) * 2.0 ** (flight.sends - 1)

    def _workers(self) -> int:
        try:
            return self.pool._worker_processes(fresh=True)
        except EngineUnavailable as exc:  # the broker is away: none to be seen
            log.warning("celery.connection", reason=str(exc))
            return 0

    def _done(self, flight: _Flight[KeyT]) -> None:
        self.flights.discard(flight)
        for task_id in flight.ids:
            self.by_id.pop(task_id, None)
            self._forget(task_id)
        self._drop(flight)

    def _keep(self, flight: _Flight[KeyT]) -> None:
        """Its image bytes kept in Redis for another hour; when Redis does
        not answer now, the next send puts them again."""
        if self.pool.stash is not None and flight.stashed:
            try:
                self.pool.stash.put(flight.stashed, patient=False)
            except Exception as exc:
                log.info("celery.stash_not_kept", reason=reason(exc))

    def _drop(self, flight: _Flight[KeyT]) -> None:
        """Its image bytes kept in Redis, no longer needed (else they expire)."""
        if self.pool.stash is not None and flight.stashed:
            try:
                self.pool.stash.drop(flight.stashed)
            except Exception as exc:
                log.info("celery.stash_left", reason=reason(exc))
            flight.stashed = {}
            flight.carried = None

    def _forget(self, task_id: str) -> None:
        result = self.results.pop(task_id, None)
        if result is not None:
            _forget(result)


def _lost(result: Any) -> str | None:
    """Why a message's image bytes could not be had by its worker, if so."""
    payload = result.result
    if isinstance(payload, dict) and isinstance(payload.get("lost"), str):
        return str(payload["lost"])
    return None


def _image_bytes(args: Iterable[Any]) -> int:
    return sum(len(arg) for arg in args if isinstance(arg, bytes))


def _forget(result: Any) -> None:
    try:
        result.forget()
    except NotImplementedError:  # rpc://: the result was a message, already taken
        pass
    except Exception as exc:  # a result left behind expires (result_expires)
        log.info("celery.forget_failed", reason=str(exc))


def _safe(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
