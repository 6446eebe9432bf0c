"""`damdup daemon`: each unit synced on its schedule, matched, and its marks
pushed; `/healthz` and Prometheus `/metrics` on a local port.

A unit's cycle: take its lock (busy: skip, try at the next turn) → sync its
listing (incremental where the platform can) → match the whole index → plan
and push its marks (a dry run unless the unit has `writes = true`). At most
`units_at_once` cycles run together. The next cycle of a unit starts
`interval * (1 ± jitter)` after its last one ended; the first cycles are
spread over `interval * jitter`, so that units of one schedule do not all
start at once. SIGTERM or SIGINT: each sync under way finishes its page,
saves the cursor, and the daemon exits 0.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from adapters.base import Adapter, RequestEvent
from adapters.base import reason as error_text
from connector.core.config import Config
from connector.core.index import IndexStore
from connector.core.settings import Settings
from connector.core.store import open_store
from connector.engine.clusters import Cluster
from connector.engine.links import Links
from connector.engine.locks import UnitBusy, UnitLock
from connector.engine.outbox import Outcome, plan, push
from connector.engine.scan import OriginalReader, current_clusters, sync_and_match
from connector.units import link_adapters

__all__ = [
    "DEFAULT_JITTER",
    "DEFAULT_METRICS_HOST",
    "DEFAULT_METRICS_PORT",
    "Daemon",
    "Metrics",
    "Schedule",
    "configure_json_logging",
    "first_delay",
    "next_delay",
    "run_daemon",
]

log = structlog.get_logger(__name__)

DEFAULT_JITTER = 0.1
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9765
MAX_IDLE_S = 1.0  # the scheduler looks again at least this often

# A cycle's outcome, the `outcome` label of damdup_sync_runs_total.
OK, FAILED, CRASHED, BUSY, STOPPED = "ok", "failed", "crashed", "busy", "stopped"


def configure_json_logging(level: int = logging.INFO) -> None:
    """The daemon always logs JSON lines on stderr, whatever the terminal."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


# -- schedule ----------------------------------------------------------------


def next_delay(interval_s: float, jitter: float, draw: float) -> float:
    """`draw` in [0, 1): the delay is interval * (1 ± jitter), uniformly."""
    return interval_s * (1.0 + jitter * (2.0 * draw - 1.0))


def first_delay(interval_s: float, jitter: float, draw: float) -> float:
    """The first cycle of each unit, somewhere in [0, interval * jitter)."""
    return interval_s * jitter * draw


class Schedule:
    """When each unit is due, on an injected monotonic clock and random source
    (the tests drive both). A unit that is running is never due."""

    def __init__(
        self,
        intervals: dict[str, float],
        jitter: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be at least 0 and below 1, not {jitter}")
        self.intervals = dict(intervals)
        self.jitter = jitter
        self.clock = clock
        self.rng = rng or random.Random()
        now = clock()
        self.next_at = {
            unit: now + first_delay(interval, jitter, self.rng.random())
            for unit, interval in self.intervals.items()
        }
        self.running: set[str] = set()

    def due(self) -> list[str]:
        """Units whose time has come, the longest waiting first."""
        now = self.clock()
        waiting = [u for u, at in self.next_at.items() if at <= now and u not in self.running]
        return sorted(waiting, key=lambda unit: (self.next_at[unit], unit))

    def started(self, unit: str) -> None:
        self.running.add(unit)

    def finished(self, unit: str) -> None:
        self.running.discard(unit)
        delay = next_delay(self.intervals[unit], self.jitter, self.rng.random())
        self.next_at[unit] = self.clock() + delay

    def wait_s(self) -> float:
        """Until the next unit is due (0 when one is), or MAX_IDLE_S."""
        idle = [at for unit, at in self.next_at.items() if unit not in self.running]
        if not idle:
            return MAX_IDLE_S
        return max(0.0, min(MAX_IDLE_S, min(idle) - self.clock()))

    def next_run_in_s(self, unit: str) -> float | None:
        if unit in self.running:
            return None
        return round(max(0.0, self.next_at[unit] - self.clock()), 3)


# -- metrics -----------------------------------------------------------------


class Metrics:
    """The daemon's own Prometheus registry (nothing process-global)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.assets = Gauge(
            "damdup_assets", "Live assets of the unit in the index", ["unit"],
            registry=self.registry,
        )  # fmt: skip
        self.duplicates = Gauge(
            "damdup_duplicates",
            "Assets of the unit in a duplicate cluster as a copy of its canonical",
            ["unit"],
            registry=self.registry,
        )
        self.asset_errors = Gauge(
            "damdup_asset_errors", "Live assets of the unit that could not be indexed", ["unit"],
            registry=self.registry,
        )  # fmt: skip
        self.last_success = Gauge(
            "damdup_last_success_timestamp_seconds",
            "When the unit's last successful cycle (or, before one, its last complete sync) ended",
            ["unit"],
            registry=self.registry,
        )
        self.sync_runs = Counter(
            "damdup_sync_runs_total", "Cycles of the unit by outcome", ["unit", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "damdup_http_request_seconds",
            "Platform HTTP request attempts, seconds to the whole answer",
            ["platform", "method"],
            registry=self.registry,
        )

    def observe_request(self, event: RequestEvent) -> None:
        """The observer the units' adapters are built with (`build_adapters`)."""
        self.http_seconds.labels(event.kind or "other", event.method).observe(event.elapsed_s)

    def refresh(
        self, store: IndexStore, units: Iterable[str], clusters: list[Cluster] | None = None
    ) -> None:
        """Figures of `units` as the index has them now."""
        status = store.unit_status()
        copies = Tally(member.asset.unit for c in clusters or [] for member in c.members)
        for unit in units:
            state = status.get(unit)
            self.assets.labels(unit).set(state.live_assets if state else 0)
            self.asset_errors.labels(unit).set(state.errors if state else 0)
            if clusters is not None:
                self.duplicates.labels(unit).set(copies.get(unit, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- the daemon ----------------------------------------------------------------


@dataclass
class UnitState:
    platform: str
    writes: bool
    interval_s: int
    state: str = "scheduled"  # scheduled | running
    last_outcome: str | None = None
    last_error: str | None = None
    last_started: str | None = None
    last_finished: str | None = None
    last_success: str | None = None
    cycles: int = 0
    failures: int = 0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Daemon:
    """The scheduler thread, the units' cycles (in a pool of `units_at_once`
    threads, each with its own index connection) and the health/metrics app."""

    def __init__(
        self,
        config: Config,
        adapters: dict[str, Adapter[Any]],
        *,
        jitter: float = DEFAULT_JITTER,
        once: bool = False,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings: Settings = config.settings
        self.adapters = adapters
        # Canonicals may sit on units this daemon does not sync.
        self.links = Links(link_adapters(config, adapters))
        self.once = once
        self.units = list(adapters)
        self.writes = {unit: config.units[unit].writes for unit in self.units}
        self.schedule = Schedule(
            {unit: config.units[unit].interval_s for unit in self.units}, jitter, clock, rng
        )
        self.states = {
            unit: UnitState(adapter.kind, self.writes[unit], config.units[unit].interval_s)
            for unit, adapter in adapters.items()
        }
        # Request times reach it from adapters built with its `observe_request`
        # as their observer (cmd_daemon).
        self.metrics = metrics or Metrics()
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._match_lock = threading.Lock()  # units match one after another
        self.thread: threading.Thread | None = None
        self.scheduler_error: str | None = None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        store = open_store(self.settings.db, create=True)
        try:
            clusters, _relations = current_clusters(store, self.settings)
            self.metrics.refresh(store, self.units, clusters)
            for unit, state in store.unit_status().items():
                if unit in self.states and state.last_complete_sync:
                    finished = datetime.fromisoformat(state.last_complete_sync)
                    self.metrics.last_success.labels(unit).set(finished.timestamp())
        finally:
            store.close()
        thread = threading.Thread(target=self._scheduler, name="scheduler", daemon=True)
        thread.start()
        self.thread = thread  # only once started: /healthz reads a thread not alive as dead

    def request_stop(self) -> None:
        self.stop.set()
        self._wake.set()

    def wait(self, poll_s: float = 0.2) -> None:
        """Until the scheduler ends (stopped, or --once done); short waits so
        that signal handlers run in the main thread meanwhile."""
        assert self.thread is not None
        while self.thread.is_alive():
            self.thread.join(poll_s)

    def close(self) -> None:
        """Nothing process-wide to undo: the adapters hold the observer."""

    # -- scheduling ------------------------------------------------------

    def _scheduler(self) -> None:
        try:
            with ThreadPoolExecutor(self.settings.units_at_once, "cycle") as pool:
                if self.once:
                    futures = [self._submit(pool, unit) for unit in self._take(self.units)]
                    for future in futures:
                        future.result()
                    return
                while not self.stop.is_set():
                    with self._lock:
                        due = self.schedule.due()
                    for unit in self._take(due):
                        self._submit(pool, unit)
                    with self._lock:
                        wait_s = self.schedule.wait_s()
                    self._wake.wait(wait_s)
                    self._wake.clear()
                # Cycles not yet begun are dropped; those under way stop at a page's end.
                pool.shutdown(wait=True, cancel_futures=True)
        except BaseException as exc:
            # Recorded, not raised: /healthz answers 503 from now on.
            self.scheduler_error = f"{type(exc).__name__}: {error_text(exc)}"
            log.exception("scheduler.died")
        finally:
            log.info("scheduler.stopped", stopping=self.stop.is_set())

    def _take(self, units: list[str]) -> list[str]:
        with self._lock:
            for unit in units:
                self.schedule.started(unit)
        return units

    def _submit(self, pool: ThreadPoolExecutor, unit: str) -> Future[str]:
        future = pool.submit(self._cycle, unit)

        def done(_future: Future[str]) -> None:
            with self._lock:
                self.schedule.finished(unit)
            self._wake.set()

        future.add_done_callback(done)
        return future

    # -- one unit's cycle ----------------------------------------------------

    def _cycle(self, unit: str) -> str:
        if self.stop.is_set():
            return STOPPED
        adapter = self.adapters[unit]
        state = self.states[unit]
        with self._lock:
            state.state, state.last_started = "running", _now_iso()
        log.info("cycle.started", unit=unit, platform=adapter.kind)
        outcome, error = self._run_cycle(unit, adapter)
        with self._lock:
            state.state, state.last_finished = "scheduled", _now_iso()
            state.last_outcome, state.last_error = outcome, error
            if outcome != BUSY:
                state.cycles += 1
            if outcome in (FAILED, CRASHED):
                state.failures += 1
            if outcome == OK:
                state.last_success = state.last_finished
        self.metrics.sync_runs.labels(unit, outcome).inc()
        if outcome == OK:
            self.metrics.last_success.labels(unit).set(time.time())
        event = log.info if outcome in (OK, STOPPED) else log.warning
        event("cycle.finished", unit=unit, outcome=outcome, error=error)
        return outcome

    def _run_cycle(self, unit: str, adapter: Adapter[Any]) -> tuple[str, str | None]:
        store: IndexStore | None = None
        try:
            with UnitLock(self.settings.db, unit):
                store = open_store(self.settings.db, create=True)
                result = sync_and_match(
                    store, {unit: adapter}, self.settings, stop=self.stop,
                    match_lock=self._match_lock,
                )  # fmt: skip
                if unit in result.failed_units:
                    self.metrics.refresh(store, [unit])
                    return FAILED, result.failed_units[unit]
                if self.stop.is_set():
                    return STOPPED, None
                clusters, relations = current_clusters(
                    store, self.settings, OriginalReader(store, self.adapters)
                )
                plan(store, [unit], clusters, relations, self.links)
                report = push(
                    store,
                    {unit: adapter},
                    {unit: self.writes[unit]},
                    concurrency=self.settings.fetch_concurrency,
                )
                # Clusters span units: every unit's figures may have moved.
                self.metrics.refresh(store, self.units, clusters)
                sync = result.syncs[0]
                log.info(
                    "cycle.synced", unit=unit, listed=sync.listed, fetched=sync.fetched,
                    errors=result.errors, resumed=sync.resumed, incremental=sync.incremental,
                    candidates=result.match.candidates, marks=report.stats()["outcomes"],
                    dry_run=unit in report.dry_run_units,
                )  # fmt: skip
                if unit in report.failed_units:
                    return FAILED, f"push: {report.failed_units[unit]}"
                failed_marks = report.count(Outcome.FAILED, unit)
                if failed_marks:
                    return FAILED, f"push: marks of {failed_marks} asset(s) could not be written"
                return OK, None
        except UnitBusy as exc:
            log.warning("cycle.skipped", unit=unit, reason=error_text(exc), holder_pid=exc.pid)
            return BUSY, error_text(exc)
        except Exception as exc:  # one unit's defect must not stop the others
            log.exception("cycle.crashed", unit=unit)
            return CRASHED, f"unexpected {type(exc).__name__}: {error_text(exc)}"
        finally:
            if store is not None:
                store.close()

    # -- health and metrics over HTTP ---------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        # Before start() (the index being read) counts as alive: starting.
        thread = self.thread
        alive = thread is None or thread.is_alive() or self.once or self.stopping
        ok = alive and self.scheduler_error is None
        with self._lock:
            units = {
                unit: {
                    **asdict(state),
                    "next_run_in_s": self.schedule.next_run_in_s(unit) if ok else None,
                }
                for unit, state in self.states.items()
            }
        payload: dict[str, Any] = {
            "status": ("ok" if thread is not None else "starting") if ok else "scheduler stopped",
            "stopping": self.stopping,
            "units": units,
        }
        if self.scheduler_error is not None:
            payload["error"] = self.scheduler_error
        return (200 if ok else 503), payload

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.method not in ("GET", "HEAD"):
            response = Response("method not allowed\n", status=405, headers={"Allow": "GET"})
        elif request.path == "/healthz":
            status, payload = self.health()
            response = Response(json.dumps(payload), status=status, mimetype="application/json")
        elif request.path == "/metrics":
            response = Response(self.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
        else:
            response = Response("not found: try /healthz or /metrics\n", status=404)
        response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not logged (every few seconds, forever); errors are, as JSON
    like everything else the daemon says."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log(self, type: str, message: str, *args: Any) -> None:
        log.warning("metrics.http", level_name=type, message=message % args)


def run_daemon(
    config: Config,
    adapters: dict[str, Adapter[Any]],
    *,
    jitter: float = DEFAULT_JITTER,
    once: bool = False,
    host: str = DEFAULT_METRICS_HOST,
    port: int = DEFAULT_METRICS_PORT,
    port_file: Path | None = None,
    metrics: Metrics | None = None,
    nice: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or, with `once`, until every unit had one
    cycle). 0 when stopped or every cycle succeeded; 3 when a --once cycle
    failed or was skipped; 1 when the scheduler itself died. `metrics`: the
    registry the adapters' observer feeds (`Metrics.observe_request`); `nice`:
    the process's priority, for the log."""
    daemon = Daemon(config, adapters, jitter=jitter, once=once, metrics=metrics)

    def on_signal(number: int, _frame: FrameType | None) -> None:
        log.info("daemon.stopping", signal=signal.Signals(number).name)
        daemon.request_stop()

    # Handlers first: a SIGTERM at any moment from here on is a clean stop.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server: BaseWSGIServer | None = None
    try:
        # Bound here, so that a taken port is an OSError (werkzeug would exit).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family)
        bound_port = int(listening.getsockname()[1])
        server = make_server(
            host, bound_port, daemon.wsgi, threaded=True, request_handler=_QuietHandler,
            fd=listening.fileno(),
        )  # fmt: skip
        listening.close()  # the server holds its own duplicate
        bound = f"http://{host}:{bound_port}"
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        if port_file is not None:
            port_file.write_text(f"{bound_port}\n", encoding="utf-8")
        log.info(
            "daemon.started", metrics=f"{bound}/metrics", healthz=f"{bound}/healthz",
            units={unit: state.interval_s for unit, state in daemon.states.items()},
            once=once, jitter=jitter, db=str(config.settings.db), nice=nice,
        )  # fmt: skip
        if not daemon.stopping:
            daemon.start()
            daemon.wait()
        if daemon.scheduler_error is not None and not once:
            # /healthz says 503 until the supervisor restarts us.
            while not daemon.stop.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
        daemon.close()
    if daemon.scheduler_error is not None:
        return 1
    outcomes = [state.last_outcome for state in daemon.states.values()]
    log.info("daemon.stopped", outcomes=dict(zip(daemon.units, outcomes, strict=True)))
    if once and not daemon.stopping and any(o not in (OK, STOPPED) for o in outcomes):
        return 3
    return 0
