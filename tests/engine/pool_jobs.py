"""Jobs for the worker-pool tests; a module of their own so workers can import them."""

from __future__ import annotations

import os
import time


def square(value: int) -> int:
    return value * value


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def square_or_die(value: int) -> int:
    if value < 0:
        os._exit(9)  # as a decoder crash would: no exception, the process is gone
    return value * value


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 1024 * 1024))


def fail(message: str) -> None:
    raise ValueError(message)


def niceness() -> int:
    return os.nice(0)


def loaded(names: list[str]) -> list[str]:
    """Which of `names` this worker had imported before this job ran."""
    import sys

    return [name for name in names if name in sys.modules]
