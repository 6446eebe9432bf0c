"""One contract suite, parametrised over every adapter and its server (as
rclone's fstests run for every backend). A harness is started once per session
and emptied before each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.contract.harness import HARNESSES, Harness, start_harness

_started: dict[str, Harness] = {}


def _harness(kind: str) -> Harness:
    if kind not in _started:
        _started[kind] = start_harness(kind)
    return _started[kind]


@pytest.fixture(scope="session", autouse=True)
def _close_harnesses() -> Iterator[None]:
    yield
    # What a real server reported over the session (ResourceSpace: a missing
    # library reached, PHP errors) fails the run, read before it is closed.
    complaints = [
        f"{kind}: {line}" for kind, harness in _started.items() for line in harness.complaints()
    ]
    for harness in _started.values():
        harness.close()
    _started.clear()
    assert not complaints, "\n".join(complaints[:20])


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    server = _harness(request.param)
    server.reset()
    return server


@pytest.fixture
def started() -> Callable[[str], Harness]:
    """Harnesses by id, for tests of one platform beside the suite: the
    session's own (started once), emptied."""

    def get(kind: str) -> Harness:
        server = _harness(kind)
        server.reset()
        return server

    return get
