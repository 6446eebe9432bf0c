"""Worker processes for the CPU-heavy steps (fingerprints, pixel checks).

Each job runs under a per-file time limit and a per-process memory limit, so a
hostile file costs one recorded error, never a hung or swollen scan. A worker
that dies (a decoder crash, the memory limit) takes only the job it was running
with it: the other jobs in flight are re-run one at a time to find the culprit.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

KeyT = TypeVar("KeyT")


class JobTimeout(Exception):
    pass


class EngineUnavailable(Exception):
    """The jobs cannot be sent: the broker of engine "celery" stays out of
    reach. One line for a person, naming it (its password masked)."""


@dataclass(frozen=True)
class Limits:
    seconds: float = 30.0
    memory_bytes: int = 4 * 1024**3
    # Added to the workers' nice value: a sync's workers yield the CPU to the
    # jobs of webhook checks and lookups that someone waits for.
    nice: int = 0


@dataclass(frozen=True)
class Outcome(Generic[KeyT]):
    key: KeyT
    value: Any = None
    error: str | None = None


# Jobs as callers hand them over, and how a caller has them run: `function(*args)`
# for each (key, args), outcomes as they finish (WorkerPool.map with an error
# description, or one by one in the calling process).
Jobs = Iterable[tuple[Any, tuple[Any, ...]]]
RunJobs = Callable[[Callable[..., Any], Jobs], Iterable["Outcome[Any]"]]


class Pool(Protocol):
    """What runs the jobs of a scan, a sync or the server: this host's
    WorkerPool, or a CeleryPool (connector/engine/celery_pool.py) sending them
    to `damdup worker`s."""

    def map(
        self,
        function: Callable[..., Any],
        jobs: Iterable[tuple[KeyT, tuple[Any, ...]]],
        describe_error: Callable[[BaseException], str],
    ) -> Iterator[Outcome[KeyT]]: ...

    def warm(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Pool: ...

    def __exit__(self, *exc: object) -> None: ...


def _alarm(signum: int, frame: object) -> None:
    raise JobTimeout


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(owner: int) -> None:
    """End this worker when the process that owns the pool ends, however it
    ends (kill -9 included).

    The forkserver, not the owner, forks the workers, and each worker holds
    the write ends of its own job queue, of the forkserver's liveness pipe
    and of the resource tracker's pipe. Once the owner is killed, none of
    them reaches end of file: workers, forkserver and tracker would all live
    on, a worker with its ~200 MB. So each worker watches the owner itself;
    when the workers are gone, the forkserver and the tracker read end of
    file and exit on their own. The owner is watched through a pidfd, not
    with PR_SET_PDEATHSIG: that follows the thread that forked the
    forkserver (a unit's thread, which ends long before the process), and
    the worker's own parent is the forkserver. PR_SET_PDEATHSIG still ends a
    worker whose forkserver is killed."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        handle: int | None = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)  # the owner died before this worker started
    except (AttributeError, OSError):  # no pidfd (not Linux, or before 5.3): poll
        handle = None
    threading.Thread(target=_watch, args=(owner, handle), name="owner-watch", daemon=True).start()


def _watch(owner: int, handle: int | None) -> None:
    if handle is not None:
        select.select([handle], [], [])  # readable once the owner has exited
    else:
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive, under another user (a reused pid)
                pass
            time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)  # at once, even mid-decode


def _init_worker(limits: Limits, owner: int | None = None) -> None:
    if owner is not None:
        _die_with(owner)  # its thread is started before the memory limit applies
    # Threads inside a worker would only fight the other worker for the 2 cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGALRM, _alarm)
    # The pixel check's compiled kernels, loaded before the limit: loading
    # them reserves about 300 MB of address space, which under the limit
    # would abort the worker (LLVM cannot fail softly).
    from connector.core.tones import ready

    ready()
    with contextlib.suppress(ValueError, OSError):  # a lower hard limit already applies
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    if limits.nice:
        os.nice(limits.nice)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - declared dependency
        pass


def _run(function: Callable[..., Any], args: tuple[Any, ...], seconds: float) -> Any:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return function(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# The modules whose functions the pools run as jobs (fingerprints, pixel
# digests, pixel checks): the forkserver imports them once for every worker.
JOB_MODULES = ("connector.engine.ingest", "connector.engine.settle")


def _preload(function: Callable[..., Any]) -> list[str]:
    """Modules the forkserver imports once, so that every worker it forks has
    them: the job modules, and with them the decoders, numpy and OpenCV.
    Without it, each worker imports all of them again at its first job (0.7 s
    of a server's first check, after `warm` started the workers with a job
    of no module of ours). The main module itself is not named: a worker runs
    it again as `__mp_main__`, and would warn that it was already imported."""
    named = [] if function.__module__ in ("builtins", "__main__") else [function.__module__]
    return ["__main__", *JOB_MODULES, *named]


class WorkerPool:
    """A bounded pipeline over a process pool: at most 2 jobs per worker in flight."""

    def __init__(self, workers: int, limits: Limits | None = None) -> None:
        self.workers = max(1, workers)
        self.limits = limits or Limits()
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm(self) -> None:
        """Start the worker processes now, not at the first job."""
        for _ in self.map(len, [("warm", (b"",))], lambda exc: repr(exc)):
            pass

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self, function: Callable[..., Any]) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context("forkserver")
            # Takes effect when the process's forkserver starts (its first pool).
            context.set_forkserver_preload(_preload(function))
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(self.limits, os.getpid()),
            )
        return self._executor

    def _kill(self) -> None:
        executor = self._executor
        self._executor = None
        if executor is None:
            return
        # The executor has no public way to stop a worker stuck inside C code.
        processes = getattr(executor, "_processes", None) or {}
        for process in list(processes.values()):
            process.kill()
        executor.shutdown(wait=True, cancel_futures=True)

    def map(
        self,
        function: Callable[..., Any],
        jobs: Iterable[tuple[KeyT, tuple[Any, ...]]],
        describe_error: Callable[[BaseException], str],
    ) -> Iterator[Outcome[KeyT]]:
        """Run `function(*args)` for each job; yield outcomes as they finish.
        `describe_error` turns a job's exception into a reason for a person."""
        hard_limit = self.limits.seconds * 2 + 10
        pending = iter(jobs)
        in_flight: dict[Future[Any], tuple[KeyT, tuple[Any, ...], float]] = {}
        suspects: list[tuple[KeyT, tuple[Any, ...]]] = []
        exhausted = False
        while True:
            broken = False
            while not exhausted and len(in_flight) < 2 * self.workers:
                try:
                    key, args = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    future = self._pool(function).submit(_run, function, args, self.limits.seconds)
                except BrokenProcessPool:
                    # A worker died after the last wait: this job never ran,
                    # so it goes first into the new pool; the ones in flight
                    # are suspects, settled below.
                    pending = itertools.chain([(key, args)], pending)
                    broken = True
                    break
                in_flight[future] = (key, args, time.monotonic())
            if not in_flight and not broken:
                break
            done, _ = wait(list(in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                key, args, _started = in_flight.pop(future)
                try:
                    yield self._settle(key, future, None, describe_error)
                except BrokenProcessPool:
                    broken = True
                    suspects.append((key, args))
            now = time.monotonic()
            stuck = [f for f, (_k, _a, started) in in_flight.items() if now - started > hard_limit]
            if broken or stuck:
                for future, (key, args, _started) in list(in_flight.items()):
                    if future in stuck:
                        yield Outcome(key, error=f"took longer than {hard_limit:g} s (killed)")
                    else:
                        suspects.append((key, args))
                in_flight.clear()
                self._kill()
                yield from self._isolate(function, suspects, describe_error)
                suspects = []

    def _isolate(
        self,
        function: Callable[..., Any],
        suspects: list[tuple[KeyT, tuple[Any, ...]]],
        describe_error: Callable[[BaseException], str],
    ) -> Iterator[Outcome[KeyT]]:
        """Re-run jobs that were in flight when a worker died, one at a time."""
        for key, args in suspects:
            future = self._pool(function).submit(_run, function, args, self.limits.seconds)
            try:
                yield self._settle(key, future, self.limits.seconds * 2 + 10, describe_error)
            except (BrokenProcessPool, TimeoutError):
                log.warning("worker.died", job=str(key))
                self._kill()
                yield Outcome(key, error="crashed or hung the decoder (worker process died)")

    def _settle(
        self,
        key: KeyT,
        future: Future[Any],
        timeout: float | None,
        describe_error: Callable[[BaseException], str],
    ) -> Outcome[KeyT]:
        """The outcome of a finished job; a dead worker is left to the caller."""
        try:
            return Outcome(key, value=future.result(timeout=timeout))
        except JobTimeout:
            return Outcome(key, error=f"took longer than {self.limits.seconds:g} s")
        except MemoryError:
            return Outcome(key, error="needs more memory than the per-file limit")
        except (BrokenProcessPool, TimeoutError):
            raise
        except Exception as exc:
            return Outcome(key, error=describe_error(exc))
