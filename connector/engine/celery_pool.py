"""The jobs of a run sent to `damdup worker`s through the broker, on any
number of hosts ([damdup] engine = "celery"): the same map/close interface
as the local WorkerPool (connector/engine/pool.py), the same outcomes and
error texts, so a run indexes alike wherever its jobs ran.

At most two jobs per worker process are in flight (the processes the workers
on the broker report, asked again every minute), so a big run holds a few
images in memory, not its whole listing. Outcomes are yielded as their
results arrive, in any order. What the workers do and why is in
connector/engine/celery_app.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import structlog

from connector.core.settings import Settings
from connector.engine.celery_app import JOBS, QUEUE, TASK, hard_limit, job_name, make_app
from connector.engine.pool import Limits, Outcome, WorkerPool

__all__ = ["CeleryPool"]

log = structlog.get_logger(__name__)

KeyT = TypeVar("KeyT")

CAPACITY_TTL_S = 60.0  # how long the workers' reported processes are trusted
INSPECT_TIMEOUT_S = 1.0
STALL_WARNING_S = 60.0

# Larger jobs run in one local worker process (same limits, same outcome): a
# broker refuses big messages (RabbitMQ 3's default is 128 MiB, 4's 16 MiB;
# Redis carries them base64-encoded, a third larger), and a few such files
# are not worth another host.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

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
        self._app: Any = None
        self._backends: list[Any] = []
        self._local_pool: WorkerPool | None = None

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

    def app(self) -> Any:
        if self._app is None:
            self._app = make_app(self.settings)
        return self._app

    def warm(self) -> None:
        """Reach the broker now and learn the workers, not at the first job."""
        self._in_flight_limit(fresh=True)

    def _in_flight_limit(self, fresh: bool = False) -> int:
        processes = worker_processes(self.app(), self.broker, fresh)
        if processes == 0:
            log.warning(
                "celery.no_workers",
                broker=_safe(self.broker),
                note="no damdup worker answers; jobs wait in the queue until one starts",
            )
            processes = self.settings.workers
        return 2 * processes

    def map(
        self,
        function: Callable[..., Any],
        jobs: Iterable[tuple[KeyT, tuple[Any, ...]]],
        describe_error: Callable[[BaseException], str],
    ) -> Iterator[Outcome[KeyT]]:
        """Send `function(*args)` for each job to the workers; yield outcomes
        as they finish. `describe_error` turns an exception raised here
        (preparing a job's arguments) into a reason for a person."""
        name = job_name(function)
        job = JOBS[name]
        app = self.app()
        # A Celery app's result backend is per thread: this call's, throughout.
        backend = app.backend
        if all(known is not backend for known in self._backends):
            self._backends.append(backend)
        hard = hard_limit(self.seconds)
        finished: deque[Any] = deque()
        in_flight: dict[str, KeyT] = {}
        results: dict[str, Any] = {}
        pending = iter(jobs)
        exhausted = False
        limit = self._in_flight_limit()
        limit_at = last_progress = time.monotonic()
        try:
            while True:
                while not exhausted and len(in_flight) < limit:
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
                    if _oversize(sent):  # this host's pool, under the same limits
                        yield from self._local().map(function, [(key, args)], describe_error)
                        continue
                    result = app.send_task(
                        TASK, args=(name, list(sent), self.seconds), queue=QUEUE, time_limit=hard
                    )
                    in_flight[result.id] = key
                    results[result.id] = result
                    result.then(finished.append)
                if not in_flight:
                    break
                if not finished:
                    _drain(backend)
                while finished:
                    result = finished.popleft()
                    key = in_flight.pop(result.id)
                    results.pop(result.id, None)
                    yield self._outcome(key, result, job, hard)
                    _forget(result)
                    last_progress = time.monotonic()
                now = time.monotonic()
                if now - limit_at > CAPACITY_TTL_S:  # a worker host may have come or gone
                    limit, limit_at = self._in_flight_limit(), now
                if now - last_progress > STALL_WARNING_S:
                    log.warning(
                        "celery.waiting",
                        jobs=len(in_flight),
                        worker_processes=worker_processes(app, self.broker, fresh=True),
                        waited_s=round(now - last_progress),
                    )
                    last_progress = now
        finally:
            # Stopped early (an error, the caller gone): the results still
            # coming are of no use to anyone.
            for result in results.values():
                _forget(result)

    def _outcome(self, key: KeyT, result: Any, job: Any, hard: float) -> Outcome[KeyT]:
        if result.state == "SUCCESS":
            payload = result.result
            if not isinstance(payload, dict):
                return Outcome(key, error="the worker returned no result")
            if payload.get("error") is not None:
                return Outcome(key, error=str(payload["error"]))
            return Outcome(key, value=job.decode(payload["value"]))
        exc = result.result
        kind = type(exc).__name__
        if kind == "TimeLimitExceeded":
            return Outcome(key, error=f"took longer than {hard:g} s (killed)")
        if kind == "WorkerLostError":
            log.warning("worker.died", job=str(key))
            return Outcome(key, error="crashed or hung the decoder (worker process died)")
        return Outcome(key, error=f"the worker failed: {kind}: {exc}")


def _oversize(args: tuple[Any, ...]) -> bool:
    return sum(len(arg) for arg in args if isinstance(arg, bytes)) > MAX_MESSAGE_BYTES


def _drain(backend: Any) -> None:
    """Wait up to a second for results to arrive."""
    try:
        backend.result_consumer.drain_events(timeout=1.0)
    except TimeoutError:
        pass
    except OSError as exc:  # the broker restarts: Celery reconnects on the next call
        log.warning("celery.connection", reason=str(exc))
        time.sleep(1.0)


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
