"""One contract suite, parametrised over every adapter and its server (as
rclone's fstests run for every backend). A harness is started once per session
and emptied before each test."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from tests.contract.harness import Harness

# kind -> "module:HarnessClass". Every adapter in adapters/registry.py is here.
HARNESSES = {
    "ckan": "tests.servers.ckan:CkanHarness",
    "drupal": "tests.servers.drupal:DrupalHarness",
    "filesystem": "tests.contract.filesystem:FilesystemHarness",
    "finna": "tests.servers.finna:FinnaHarness",
    "linked_events": "tests.servers.linked_events:LinkedEventsHarness",
    "resourcespace": "tests.servers.resourcespace:ResourceSpaceHarness",
    "wordpress": "tests.servers.wordpress:WordPressHarness",
}

_started: dict[str, Harness] = {}


def _harness(kind: str) -> Harness:
    if kind not in _started:
        module, name = HARNESSES[kind].split(":")
        _started[kind] = getattr(importlib.import_module(module), name)()
    return _started[kind]


@pytest.fixture(scope="session", autouse=True)
def _close_harnesses() -> Iterator[None]:
    yield
    for harness in _started.values():
        harness.close()
    _started.clear()


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    server = _harness(request.param)
    server.reset()
    return server
