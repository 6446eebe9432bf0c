"""The jobs `damdup worker` runs for other hosts, and the Celery app both sides
share (the callers' side is connector/engine/celery_pool.py).

Only the jobs named in JOBS run: a message names a job, never code, and its
arguments are bytes and numbers. Messages and results travel as msgpack,
which carries bytes as they are (no base64 inflation as in JSON) and builds
nothing but plain values on reading: Celery's pickle would run whatever a
message on the broker asked for, and is refused (`accept_content`).

The limits of the local pool (connector/engine/pool.py) apply in each worker
process: the address-space limit, a time limit per job (the caller's
file_timeout_s; past twice that plus 10 s Celery kills the process), and each
process ends with its worker. A hostile image costs one recorded error.

Nothing is lost when a worker dies: messages are acknowledged once the job
has run (acks_late), so a worker killed mid-job (kill -9, a lost host) leaves
its jobs unacknowledged and the broker hands them to another worker (RabbitMQ
at once, when the connection drops; Redis once `visibility_timeout` has
passed). A worker *process* that dies under a job while its worker lives (a
decoder crash) is that job's recorded error, as in the local pool: sending it
again (task_reject_on_worker_lost) would crash worker after worker.

Through Redis, a message's image bytes do not travel in the message itself:
kombu's Redis transport carries a message as base64 inside JSON, and encoding,
copying and decoding that cost a fifth more CPU than the fingerprints
(bench/scale.py, "Fingerprints"). The caller keeps them beside the message in
the same Redis, as plain values under keys of their own (`Stash`, an hour at
most), the message names the keys, and the worker reads them; the caller
deletes them once the message's result is taken. A message whose bytes are
gone (Redis restarted while a worker held the message) answers "lost", and
the caller sends it again with its bytes. Through RabbitMQ the bytes travel
in the message (msgpack: as they are).

Results come back through Redis when the broker is Redis (the same server),
else through RabbitMQ itself (`rpc://`: a reply queue per caller, no other
server). The callers take them as they arrive (Redis pub/sub, or the reply
queue) and delete them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from connector.core.capture import CaptureFacts
from connector.core.fingerprint import Fingerprint
from connector.core.settings import Settings
from connector.engine.ingest import describe_error, fingerprint_job, read_source
from connector.engine.pool import JobTimeout, Limits, _init_worker, _run
from connector.engine.settle import pixel_check_job, pixel_digest_job

__all__ = [
    "BATCH_JOBS", "JOBS", "QUEUE", "TASK", "Stash", "hard_limit", "job_name", "make_app",
    "run_worker", "uses_redis",
]  # fmt: skip

QUEUE = "damdup"
# One message carries up to BATCH_JOBS jobs of one kind: Celery spends about
# as much on each message (its receipt, the hand-over to a worker process,
# the result published, the acknowledgement, the next message fetched) as
# the fingerprint of a rendition itself (bench/scale.py, "Fingerprints").
TASK = "damdup.jobs"
BATCH_JOBS = 16
SERIALIZER = "msgpack"


# A job sent while the broker is out of reach (restarting) is sent again for
# about a minute (0, 1, 2, 3, 4, then every 5 s) before the run stops.
PUBLISH_RETRY = {"max_retries": 15, "interval_start": 0, "interval_step": 1, "interval_max": 5}


# Image bytes kept in Redis beside their message: the key's prefix, and how
# long they are kept at most (as long as results are; a caller waiting on
# workers keeps them again).
STASH_PREFIX = "damdup:stash:"
STASH_TTL_S = 3600
# A stash write while Redis is out of reach is tried again every second for
# about as long as a publish is (PUBLISH_RETRY).
STASH_RETRIES = 60


def uses_redis(broker: str) -> bool:
    return broker.partition("://")[0].lower() in ("redis", "rediss")


class Stash:
    """A message's image bytes as plain Redis values, under keys of their own.
    The caller puts them before it publishes the message and drops them once
    its result is taken; a worker takes them by the names the message gives."""

    def __init__(self, url: str) -> None:
        import redis
        from redis.backoff import ConstantBackoff, NoBackoff
        from redis.retry import Retry

        self.pid = os.getpid()
        # What a job needs waits for Redis as a publish does; what only saves
        # memory (a drop, a keep again) is tried once: a run stopping because
        # Redis is away must not wait a minute for each of its messages.
        self.client = redis.Redis.from_url(
            url,
            retry=Retry(ConstantBackoff(1.0), STASH_RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.once = redis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2.0, socket_timeout=5.0
        )

    @staticmethod
    def name() -> str:
        return STASH_PREFIX + uuid.uuid4().hex

    def put(self, values: dict[str, bytes], patient: bool = True) -> None:
        """Keep (or keep again, for another hour) these values; tried once
        unless `patient`."""
        if not values:
            return
        pipe = (self.client if patient else self.once).pipeline(transaction=False)
        for key, value in values.items():
            pipe.set(key, value, ex=STASH_TTL_S)
        pipe.execute()

    def take(self, keys: list[str]) -> list[bytes | None]:
        """The values of these keys; None for one that is gone."""
        if not keys:
            return []
        return [value if isinstance(value, bytes) else None for value in self.client.mget(keys)]

    def drop(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.once.delete(*keys)

    def close(self) -> None:
        self.client.close()
        self.once.close()


# The worker's Redis, where its messages' image bytes are (run_worker); a
# connection of its own in each worker process.
_stash_url: str | None = None
_stash: Stash | None = None


def _worker_stash() -> Stash | None:
    global _stash
    if _stash_url is None:
        return None
    if _stash is None or _stash.pid != os.getpid():  # not a connection of the parent
        _stash = Stash(_stash_url)
    return _stash


def _stashed(value: Any) -> str | None:
    """The key a message gives for an image's bytes, else None."""
    if isinstance(value, dict) and len(value) == 1:
        key = value.get("stash")
        if isinstance(key, str) and key.startswith(STASH_PREFIX) and len(key) < 100:
            return key
    return None


def _unstash(batch: list[Any]) -> tuple[list[Any], str | None]:
    """A message's jobs with their image bytes in place of their keys; or
    why they cannot be had (the message is then "lost": sent again)."""
    wanted = [key for args in batch for key in map(_stashed, args) if key is not None]
    if not wanted:
        return batch, None
    stash = _worker_stash()
    if stash is None:
        return batch, "this worker has no Redis to take the image bytes from"
    found = dict(zip(wanted, stash.take(wanted), strict=True))
    if any(value is None for value in found.values()):
        return batch, "the image bytes are gone from Redis (restarted, or kept past an hour)"
    return [[found.get(_stashed(arg) or "", arg) for arg in args] for args in batch], None


def hard_limit(seconds: float) -> float:
    """When a job's worker process is killed (the local pool's limit too)."""
    return seconds * 2 + 10


def _fingerprint_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # A local path means nothing on another host: the bytes travel instead,
    # read here under the same byte limit (ImageError says why they cannot be).
    source, max_pixels, max_bytes = args
    return (read_source(source, max_bytes), max_pixels, max_bytes)


def _fingerprint_out(value: Fingerprint) -> dict[str, Any]:
    return asdict(value)  # the capture facts as a table of their own


def _fingerprint_in(value: dict[str, Any]) -> Fingerprint:
    fields = dict(value)
    fields["capture"] = CaptureFacts.from_dict(fields["capture"])
    return Fingerprint(**fields)


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Job:
    """A job the workers run: its function, the types of the arguments as they
    travel, and how its arguments and value are put into plain values."""

    function: Callable[..., Any]
    types: tuple[type, ...]
    send: Callable[[tuple[Any, ...]], tuple[Any, ...]] = _same
    encode: Callable[[Any], Any] = _same
    decode: Callable[[Any], Any] = _same


JOBS: dict[str, Job] = {
    "fingerprint": Job(
        fingerprint_job,
        (bytes, int, int),
        send=_fingerprint_args,
        encode=_fingerprint_out,
        decode=_fingerprint_in,
    ),
    "pixel_check": Job(pixel_check_job, (bytes, bytes)),
    "pixel_digest": Job(pixel_digest_job, (bytes, int)),
}


def job_name(function: Callable[..., Any]) -> str:
    for name, job in JOBS.items():
        if job.function is function:
            return name
    raise ValueError(f"{getattr(function, '__name__', function)!r} is not a job workers run")


def run_job(name: str, args: list[Any], seconds: float) -> dict[str, Any]:
    """The task: in a worker process, one job of JOBS under the time limit.
    {"value": ...} or {"error": why, for a person}."""
    job = JOBS.get(name)
    if job is None:
        return {"error": f"unknown job {name!r}"}
    if len(args) != len(job.types) or not all(
        isinstance(arg, kind) and not isinstance(arg, bool)
        for arg, kind in zip(args, job.types, strict=False)
    ):
        return {"error": f"malformed arguments for job {name!r}"}
    if not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
        return {"error": "malformed time limit"}
    try:
        value = _run(job.function, tuple(args), float(seconds))
    except JobTimeout:
        return {"error": f"took longer than {seconds:g} s"}
    except MemoryError:
        return {"error": "needs more memory than the per-file limit"}
    except Exception as exc:
        return {"error": describe_error(exc)}
    return {"value": job.encode(value)}


def run_jobs(name: str, batch: list[Any], seconds: float) -> dict[str, Any]:
    """The task: the jobs of one message, one after another, each under its
    own time limit; {"values": [{"value": ...} or {"error": ...}, ...]} in
    the order sent, {"error": why} for the whole message, or {"lost": why}
    when its image bytes cannot be had from Redis (the caller sends it again).

    No job starts once the message has run for `seconds`: the values of the
    jobs run come back, and the caller sends the rest again. So a message
    runs no longer than one job may (the hard limit: its last job started
    before `seconds`, and stopped by its alarm `seconds` later), however
    slow its files, and the hard limit and Redis's visibility timeout hold
    for a message as they do for one job."""
    if not isinstance(batch, list) or not 0 < len(batch) <= BATCH_JOBS:
        return {"error": "malformed batch"}
    if not all(isinstance(args, list) for args in batch):
        return {"error": f"malformed arguments for job {name!r}"}
    try:
        batch, gone = _unstash(batch)
    except Exception as exc:  # Redis out of reach past its retries
        gone = f"the image bytes cannot be read from Redis: {describe_error(exc)}"
    if gone is not None:
        return {"lost": gone}
    began = time.monotonic()
    values: list[dict[str, Any]] = []
    for args in batch:
        if values and time.monotonic() - began >= seconds:
            break
        values.append(run_job(name, args, seconds))
    return {"values": values}


def result_backend(broker: str) -> str:
    """Redis keeps results where it queues jobs; with RabbitMQ they come back
    as messages to the caller's own reply queue."""
    return broker if uses_redis(broker) else "rpc://"


def make_app(settings: Settings) -> Any:
    """The Celery app of the callers and the workers: same broker, same
    serializer, same delivery rules."""
    from celery import Celery

    assert settings.broker is not None, "checked with the settings (engine_problem)"
    app = Celery(
        "damdup",
        broker=settings.broker,
        backend=result_backend(settings.broker),
        set_as_current=False,
    )
    hard = hard_limit(settings.file_timeout_s)
    app.conf.update(
        task_serializer=SERIALIZER,
        result_serializer=SERIALIZER,
        accept_content=[SERIALIZER],
        result_accept_content=[SERIALIZER],
        task_default_queue=QUEUE,
        task_time_limit=hard,
        task_publish_retry_policy=PUBLISH_RETRY,
        # Acknowledged when run: a killed worker's jobs go to another worker.
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=False,
        # Two messages per process: the one it runs, and the next, at hand
        # when that ends (one would leave each process idle for a round trip
        # to the broker after every message). A dead worker's go back to the
        # queue, unacknowledged.
        worker_prefetch_multiplier=2,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis: a message unacknowledged this long is handed out again.
            # Longer than any message may run (the hard limit, run_jobs), so
            # only a dead worker's are.
            "visibility_timeout": int(hard + 20),
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        # Callers delete the results they take; these are left by callers that died.
        result_expires=3600,
    )
    app.task(name=TASK, acks_late=True)(run_jobs)
    return app


def run_worker(settings: Settings, concurrency: int, queues: list[str], verbose: bool) -> None:
    """`damdup worker`: a Celery worker in this process, with `concurrency`
    worker processes under this host's limits, until a signal stops it."""
    from celery.signals import worker_process_init

    limits = Limits(
        seconds=settings.file_timeout_s, memory_bytes=settings.worker_memory_mb * 1024 * 1024
    )

    def limit_process(**_: Any) -> None:
        # Each worker process: the memory limit, the SIGALRM time limit, and
        # its end with the worker (kill -9 included).
        _init_worker(limits, os.getppid())

    worker_process_init.connect(limit_process, weak=False)
    global _stash_url
    assert settings.broker is not None, "checked with the settings (engine_problem)"
    _stash_url = settings.broker if uses_redis(settings.broker) else None
    app = make_app(settings)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={','.join(queues)}",
            f"--hostname=damdup-{os.getpid()}@%h",
            f"--loglevel={'INFO' if verbose else 'WARNING'}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
        ]
    )
