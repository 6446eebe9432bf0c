"""The worker pool keeps one bad job from costing more than its own result."""

from __future__ import annotations

import time
from collections.abc import Iterator

from connector.engine.pool import JOB_MODULES, Limits, WorkerPool
from tests.engine import pool_jobs


def run(
    function: object, jobs: list[tuple[str, tuple[object, ...]]], **limits: float
) -> dict[str, tuple[object, str | None]]:
    with WorkerPool(2, Limits(**limits)) as pool:  # type: ignore[arg-type]
        return {o.key: (o.value, o.error) for o in pool.map(function, jobs, str)}  # type: ignore[arg-type]


def test_results_come_back_for_every_job() -> None:
    out = run(pool_jobs.square, [(str(i), (i,)) for i in range(20)])
    assert out == {str(i): (i * i, None) for i in range(20)}


def test_a_job_over_its_time_limit_is_an_error_and_the_rest_go_on() -> None:
    jobs = [("slow", (5.0,)), ("quick", (0.01,)), ("quick2", (0.02,))]
    out = run(pool_jobs.sleep_then_return, jobs, seconds=0.5)
    assert out["quick"] == (0.01, None) and out["quick2"] == (0.02, None)
    assert out["slow"][0] is None and "longer than" in str(out["slow"][1])


def test_a_crash_among_good_jobs_in_flight_loses_none_of_them() -> None:
    values = [1, 2, -1, 3, 4, 5, 6]
    with WorkerPool(2) as pool:
        out = {
            o.key: o
            for o in pool.map(pool_jobs.square_or_die, [(str(v), (v,)) for v in values], str)
        }
        after = [o.value for o in pool.map(pool_jobs.square, [("again", (3,))], str)]
    assert {k: o.value for k, o in out.items() if k != "-1"} == {
        str(v): v * v for v in values if v > 0
    }
    assert out["-1"].value is None and "died" in str(out["-1"].error)
    assert after == [9], "the pool must recover after a worker died"


def test_a_crash_noticed_while_handing_out_jobs_loses_none_of_them() -> None:
    """The pool may break between two submissions, before any finished job
    says so: the job being handed out then must wait for the new pool."""

    def jobs() -> Iterator[tuple[str, tuple[int]]]:
        yield "-1", (-1,)
        yield "1", (1,)
        time.sleep(1.5)  # the worker is dead and the executor knows it
        yield from ((str(v), (v,)) for v in (2, 3, 4))

    with WorkerPool(2) as pool:  # room for four in flight: the third is handed out late
        out = {o.key: o for o in pool.map(pool_jobs.square_or_die, jobs(), str)}
    assert {k: o.value for k, o in out.items() if k != "-1"} == {"1": 1, "2": 4, "3": 9, "4": 16}
    assert "died" in str(out["-1"].error)


def test_memory_limit_turns_a_huge_allocation_into_an_error() -> None:
    out = run(pool_jobs.allocate, [("huge", (3000,)), ("small", (1,))], memory_bytes=1536 * 1024**2)
    assert out["small"] == (1024 * 1024, None)
    assert out["huge"][0] is None and "memory" in str(out["huge"][1])


def test_exceptions_become_reasons() -> None:
    out = run(pool_jobs.fail, [("x", ("bad header",))])
    assert out["x"] == (None, "bad header")


def test_a_syncs_workers_yield_the_cpu_to_a_checks() -> None:
    """A sync's local workers (background) run at a nice value BACKGROUND_NICE
    above a check's, whose jobs someone waits for."""
    from connector.core.settings import Settings
    from connector.engine.scan import BACKGROUND_NICE, worker_pool

    settings = Settings(workers=1)
    with worker_pool(settings) as check, worker_pool(settings, background=True) as sync:
        mine = [o.value for o in check.map(pool_jobs.niceness, [("n", ())], str)]
        theirs = [o.value for o in sync.map(pool_jobs.niceness, [("n", ())], str)]
    # Linux caps nice values at 19: under `nice pytest`, less room is left.
    assert theirs[0] == min(19, mine[0] + BACKGROUND_NICE), (mine, theirs)
    assert theirs[0] > mine[0] or mine[0] == 19, (mine, theirs)


def test_workers_start_with_the_job_modules_imported() -> None:
    """A server warms its pool with a job of no module of ours; its first
    fingerprint or pixel check must not wait while each worker imports the
    decoders, numpy and OpenCV."""
    with WorkerPool(2) as pool:
        pool.warm()
        outcomes = list(pool.map(pool_jobs.loaded, [("w", (list(JOB_MODULES),))], str))
    assert [(o.value, o.error) for o in outcomes] == [(list(JOB_MODULES), None)]
    assert "connector.engine.settle" in JOB_MODULES
