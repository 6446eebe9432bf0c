"""The brokers of `damdup worker` for the tests: the machine's Redis and
RabbitMQ from Debian's `redis-server` and `rabbitmq-server` packages
(`tests/servers/install-debian.sh` installs them), started here when they do
not answer on 127.0.0.1. Each test works apart from any other run on the same
server: a Redis database number no one uses (emptied afterwards), or a
RabbitMQ virtual host of its own (deleted afterwards). A test that restarts
its broker runs one of its own instead (`private_redis`, `private_rabbitmq`:
a node with its own name, ports and data), never the machine's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "PrivateRabbitMQ",
    "PrivateRedis",
    "ServerError",
    "amqp_vhost",
    "private_rabbitmq",
    "private_redis",
    "redis_database",
]

HOST = "127.0.0.1"
REDIS_PORT = 6379
AMQP_PORT = 5672
START_TIMEOUT_S = 120
VHOST_PREFIX = "damdup_test_"
CLAIM = "damdup-test-claim"


class ServerError(RuntimeError):
    pass


def _answers(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
        return True
    except OSError:
        return False


def _wait(port: int, ready: object, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (_answers(port) and (ready is None or ready())):  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise ServerError(f"{what} does not answer on {HOST}:{port}")
        time.sleep(0.5)


def _need(program: str) -> None:
    if shutil.which(program) is None:
        raise ServerError(f"{program} is not installed: run tests/servers/install-debian.sh")


def redis_running() -> None:
    if _answers(REDIS_PORT):
        return
    _need("redis-server")
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", HOST, "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no"],
        check=True, capture_output=True,
    )  # fmt: skip
    _wait(REDIS_PORT, None, "redis-server")


@contextmanager
def redis_database() -> Iterator[str]:
    """A broker URL on a Redis database that holds no key, emptied afterwards."""
    import redis

    redis_running()
    for number in secrets.SystemRandom().sample(range(1, 16), 15):
        client = redis.Redis(host=HOST, port=REDIS_PORT, db=number)
        # Claimed with a key of ours: another run sees the database in use.
        if client.set(CLAIM, "1", nx=True):
            if client.dbsize() == 1:
                break
            client.delete(CLAIM)  # someone else's database
        client.close()
    else:
        raise ServerError("every Redis database 1-15 holds keys: none is free for a test")
    try:
        yield f"redis://{HOST}:{REDIS_PORT}/{number}"
    finally:
        client.flushdb()
        client.close()


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, check=False, timeout=120
    )


def rabbitmq_running() -> None:
    if _answers(AMQP_PORT):
        return
    _need("rabbitmq-server")
    subprocess.run(["rabbitmq-server", "-detached"], check=True, capture_output=True)

    def started() -> bool:
        return _rabbitmqctl("await_startup").returncode == 0

    _wait(AMQP_PORT, started, "rabbitmq-server")


@contextmanager
def amqp_vhost() -> Iterator[str]:
    """A broker URL (the guest user, its password inside: given to damdup in
    $DAMDUP_BROKER, as a deployment does) on a virtual host of its own."""
    rabbitmq_running()
    _need("rabbitmqctl")
    vhost = VHOST_PREFIX + secrets.token_hex(6)
    for args in (("add_vhost", vhost), ("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")):
        done = _rabbitmqctl(*args)
        if done.returncode != 0:
            raise ServerError(f"rabbitmqctl {args[0]}: {done.stderr.strip() or done.stdout}")
    try:
        yield f"amqp://guest:guest@{HOST}:{AMQP_PORT}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


class PrivateRedis:
    """A `redis-server` of one test's own on a free loopback port, its data
    in `where`: stopped and started again on the same port (the broker
    restarting under a run), with its queues kept (`--appendonly yes`, as a
    deployment configures it) or not."""

    def __init__(self, where: Path, persistent: bool = True) -> None:
        _need("redis-server")
        self.where = where
        self.persistent = persistent
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://{HOST}:{self.port}/0"
        self.log = where / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "running already"
        appendonly = "yes" if self.persistent else "no"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--bind", HOST, "--port", str(self.port),
                 "--dir", str(self.where), "--save", "", "--appendonly", appendonly],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"private redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self, forget: bool = False) -> None:
        """A clean shutdown (SIGTERM: what it holds is written out); `forget`:
        its data removed, so that it comes back empty."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None
        if forget:
            shutil.rmtree(self.where / "appendonlydir", ignore_errors=True)
            (self.where / "dump.rdb").unlink(missing_ok=True)

    def restart(self, pause_s: float, forget: bool = False) -> None:
        self.stop(forget)
        time.sleep(pause_s)
        self.start()


@contextmanager
def private_redis(where: Path, persistent: bool = True) -> Iterator[PrivateRedis]:
    where.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(where, persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    """A free loopback port below the ephemeral range (a client connection
    of another test may take one in that range meanwhile)."""
    for _ in range(200):
        port = 20000 + secrets.randbelow(12000)
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ServerError("no free port for a private RabbitMQ node")


class PrivateRabbitMQ:
    """A RabbitMQ node of one test's own (`rabbitmq-server` from the Debian
    package, node name and ports of its own, data in a directory of its own),
    stopped and started again (the broker restarting under a run): durable
    queues and persistent messages are kept across, as on a real restart.
    The guest user on the default virtual host, from loopback only."""

    def __init__(self) -> None:
        _need("rabbitmq-server")
        _need("rabbitmqctl")
        # Run as root, the Debian scripts run the node as the rabbitmq user:
        # its files live where that user may write.
        self.where = Path(tempfile.mkdtemp(prefix="damdup-rabbitmq-"))
        os.chmod(self.where, 0o777)
        plugins = self.where / "enabled_plugins"
        plugins.write_text("[].\n")
        plugins.chmod(0o666)
        self.port, dist = _free_port(), _free_port()
        self.node = f"damdup_test_{secrets.token_hex(4)}@localhost"
        self.url = f"amqp://guest:guest@{HOST}:{self.port}//"
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(self.where / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.where / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(self.where / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.where / "rabbitmq"),
        }

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            env=self.env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    def _log(self) -> str:
        logs = sorted((self.where / "log").glob("*.log"))
        return "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)

    def start(self) -> None:
        started = subprocess.run(
            ["rabbitmq-server", "-detached"], env=self.env, capture_output=True, text=True
        )
        if started.returncode != 0:  # e.g. the Debian script refuses a user but root
            raise ServerError(f"rabbitmq-server -detached: {started.stderr or started.stdout}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._ctl("await_startup").returncode != 0 or not _answers(self.port):
            if time.monotonic() > deadline:
                raise ServerError(f"private rabbitmq-server did not start:\n{self._log()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """A clean shutdown of the whole node (what it holds durable is kept)."""
        self._ctl("stop")
        deadline = time.monotonic() + START_TIMEOUT_S
        while _answers(self.port):
            if time.monotonic() > deadline:
                raise ServerError(f"private rabbitmq node {self.node} did not stop")
            time.sleep(0.1)

    def restart(self, pause_s: float) -> None:
        self.stop()
        time.sleep(pause_s)
        self.start()


@contextmanager
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    server = PrivateRabbitMQ()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.where, ignore_errors=True)
