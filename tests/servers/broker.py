"""The brokers of `damdup worker` for the tests: the machine's Redis and
RabbitMQ from Debian's `redis-server` and `rabbitmq-server` packages
(`tests/servers/install-debian.sh` installs them), started here when they do
not answer on 127.0.0.1. Each test works apart from any other run on the same
server: a Redis database number no one uses (emptied afterwards), or a
RabbitMQ virtual host of its own (deleted afterwards).
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ServerError", "amqp_vhost", "redis_database"]

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
