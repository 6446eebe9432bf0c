"""kill -9 of `damdup scan` leaves nothing of it running: no worker, no
forkserver, no resource tracker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import ROOT


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, waiting to be reaped
    except psutil.NoSuchProcess:
        return True


def test_kill_9_of_a_scan_ends_its_workers_forkserver_and_tracker(
    photo_copy: Path, tmp_path: Path
) -> None:
    scan = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "scan", str(photo_copy),
         "--db", str(tmp_path / "i.sqlite"), "-q"],
        cwd=ROOT, env={**os.environ, "DAMDUP_WORKERS": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parent = psutil.Process(scan.pid)
    descendants: dict[int, psutil.Process] = {}
    names: dict[int, str] = {}
    try:
        workers: list[psutil.Process] = []
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and scan.poll() is None:
            for child in parent.children(recursive=True):
                if child.pid not in descendants:
                    descendants[child.pid] = child
                    with contextlib.suppress(psutil.Error):  # one that has just ended
                        names[child.pid] = " ".join(child.cmdline())
            # Workers are the forkserver's children, the scan's grandchildren.
            workers = [p for p in descendants.values() if p.ppid() in descendants]
            time.sleep(0.05)
        assert scan.poll() is None, "the scan ended before its workers were seen"
        assert len(workers) == 2, f"no workers within the time: {descendants}"
    finally:
        scan.send_signal(signal.SIGKILL)
        scan.wait()
    assert any("multiprocessing.forkserver" in name for name in names.values())
    assert any("resource_tracker" in name for name in names.values())

    deadline = time.monotonic() + 60
    alive = list(descendants.values())
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not gone(p)]
        time.sleep(0.1)
    try:
        left = [names.get(p.pid, str(p.pid))[:80] for p in alive]
        assert not alive, f"still running after the scan was killed: {left}"
    finally:
        for process in alive:  # do not leave them to the next test
            process.kill()


def test_kill_9_of_serve_ends_the_workers_its_lookups_started(tmp_path: Path) -> None:
    """`damdup serve` fingerprints uploads for lookups in worker processes:
    they, the forkserver and the tracker end with it when it is killed."""
    import re

    import requests

    from tests.conftest import PHOTOS, damdup

    db = tmp_path / "index.sqlite"
    folder = PHOTOS / "hel-fi"
    damdup("scan", str(folder), "--db", str(db), "-q", "--unit", "kuvat")
    config = tmp_path / "damdup.toml"
    config.write_text(
        f'[damdup]\ndb = "{db}"\n\n[units.kuvat]\nplatform = "filesystem"\nroot = "{folder}"\n'
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        serve = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "serve", "--config", str(config),
             "--port", "0"],
            cwd=ROOT, env={**os.environ, "DAMDUP_WORKERS": "2"},
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    parent = psutil.Process(serve.pid)
    descendants: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            assert serve.poll() is None, log.read_text()
            found = re.search(r"review page at (http://\S+)/review", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.05)
        assert url is not None, "the server never said where it listens"
        photo = (folder / "DSC_2041_medium.jpg").read_bytes()
        reply = requests.post(
            f"{url}/api/lookup", files={"file": ("x.jpg", photo, "image/jpeg")}, timeout=120
        )
        assert reply.status_code == 200, reply.text
        for child in parent.children(recursive=True):
            descendants[child.pid] = child
        workers = [p for p in descendants.values() if p.ppid() in descendants]
        assert workers, f"the lookup started no worker: {descendants}"
    finally:
        serve.send_signal(signal.SIGKILL)
        serve.wait()
    deadline = time.monotonic() + 60
    alive = list(descendants.values())
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not gone(p)]
        time.sleep(0.1)
    try:
        assert not alive, f"still running after serve was killed: {[p.pid for p in alive]}"
    finally:
        for process in alive:
            process.kill()
