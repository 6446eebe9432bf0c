"""The real Linked Events (the City of Helsinki's event and image API, Django
on PostgreSQL + PostGIS), run from its own source on 127.0.0.1 and set up from
nothing by the tests themselves.

The source is the snapshot in `shared/platforms/` beside the repository (CI
keeps `shared/` beside its clone; a git worktree looks beside its main
checkout; `$DAMDUP_PLATFORMS_DIR` overrides). `tests/servers/install-linkedevents.sh`
unpacks it into `.damdup/linkedevents/` with a virtualenv of its own and
installs the Debian packages it needs; without the snapshot the tests skip.

Per test session: a database of its own on the machine's PostgreSQL (created
with the postgis, hstore and pg_trgm extensions, dropped on close), set up by
Linked Events' own migrations; a data source with an API key and the
organization that owns it, made with its own models (`manage.py shell`), as an
administrator does in its admin site; and the server under uWSGI, as in
production (`.prod/uwsgi_configuration.ini`: its WSGI app, and its media folder
served by uWSGI's `static-map`). Photos are uploaded through its own upload
API (`POST /v1/image/`, multipart, `apikey` header), edited with PATCH and
deleted with DELETE, so that every record and file is the server's own.
"""

from __future__ import annotations

import atexit
import contextlib
import mimetypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from adapters.base import Adapter
from adapters.linked_events import LinkedEvents, LinkedEventsSettings
from tests.contract.harness import Harness
from tests.servers.faults import FaultProxy

__all__ = [
    "LinkedEventsRealHarness",
    "LinkedEventsServer",
    "PostgreSQL",
    "ServerError",
    "platforms_dir",
    "source_tarball",
]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".damdup" / "linkedevents"
INSTALL = "tests/servers/install-linkedevents.sh"
DB_HOST = "127.0.0.1"
DB_PORT = 5432
# The data source and organization the harness's API key belongs to.
DATA_SOURCE = "damdup"
OWNER = "damdup:tests"

# Made with Linked Events' own models, as an administrator does in its admin
# site (events/auth.py: an API key belongs to a data source; the data source's
# owner organization, and the organizations under it, are what it may publish as).
SETUP = """
import sys
from django_orghierarchy.models import Organization
from events.models import DataSource
data_source, _ = DataSource.objects.get_or_create(
    id=sys.argv[1], defaults={"name": "damdup tests", "api_key": sys.argv[3]}
)
owner, _ = Organization.objects.get_or_create(
    id=sys.argv[2],
    defaults={"origin_id": sys.argv[2].split(":")[-1], "data_source": data_source,
              "name": "damdup tests"},
)
data_source.owner = owner
data_source.save()
for org_id in sys.argv[4:]:
    Organization.objects.get_or_create(
        id=org_id,
        defaults={"origin_id": org_id, "data_source": data_source, "name": org_id,
                  "parent": owner},
    )
print("ready")
"""


class ServerError(RuntimeError):
    pass


def _main_checkout(root: Path) -> Path | None:
    """The main checkout of a git worktree (whose `.git` is a file naming
    `<main>/.git/worktrees/<name>`), else None."""
    dot_git = root / ".git"
    if not dot_git.is_file():
        return None
    text = dot_git.read_text().strip()
    if not text.startswith("gitdir:"):
        return None
    gitdir = (root / text.removeprefix("gitdir:").strip()).resolve()
    common = gitdir / "commondir"
    if not common.is_file():
        return None
    return (gitdir / common.read_text().strip()).resolve().parent


def platforms_dir(root: Path = ROOT) -> Path:
    """`shared/platforms` beside the repository, as CI has it; for a git
    worktree, beside its main checkout; `$DAMDUP_PLATFORMS_DIR` (or
    `$DAMDUP_PLATFORM_SOURCES`, as ResourceSpace's tests read it) overrides."""
    for variable in ("DAMDUP_PLATFORMS_DIR", "DAMDUP_PLATFORM_SOURCES"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    beside = root.parent / "shared" / "platforms"
    main = _main_checkout(root)
    if not beside.is_dir() and main is not None:
        return main.parent / "shared" / "platforms"
    return beside


def source_tarball(root: Path = ROOT) -> Path | None:
    found = sorted(platforms_dir(root).glob("linkedevents-*.tar.gz"))
    return found[-1] if found else None


def _answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(
    command: list[str], timeout_s: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, **kwargs)


class PostgreSQL:
    """The machine's PostgreSQL on 127.0.0.1:5432, started when it is not
    running. Administration goes through `psql` as `postgres`: over TCP (where
    127.0.0.1 is trusted, as on this project's machines) or over the socket as
    the system's postgres user (Debian's default peer authentication)."""

    def __init__(self) -> None:
        self._admin: list[str] | None = None

    def ensure_running(self, timeout_s: float = 60.0) -> None:
        if _answers(DB_HOST, DB_PORT):
            return
        clusters = sorted(Path("/etc/postgresql").glob("*/main"))
        if not clusters or not shutil.which("pg_ctlcluster"):
            raise ServerError(f"PostgreSQL is not installed: run {INSTALL}")
        for cluster in clusters:
            started = _run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", cluster.parent.name, "main", "start"]
            )
            if started.returncode != 0 and "already running" not in started.stderr:
                raise ServerError(
                    f"cannot start PostgreSQL {cluster.parent.name}:\n{started.stderr}"
                )
        deadline = time.monotonic() + timeout_s
        while not _answers(DB_HOST, DB_PORT):
            if time.monotonic() > deadline:
                raise ServerError(
                    f"PostgreSQL did not answer on {DB_HOST}:{DB_PORT} in {timeout_s} s"
                )
            time.sleep(0.2)

    def admin(self, *statements: str, database: str = "postgres") -> str:
        """Each statement on its own (CREATE DATABASE runs outside a transaction)."""
        if self._admin is None:
            for command in (
                ["psql", "-h", DB_HOST, "-p", str(DB_PORT), "-U", "postgres", "-w"],
                ["runuser", "-u", "postgres", "--", "psql", "-p", str(DB_PORT)],
            ):
                if _run([*command, "-X", "-tA", "-c", "SELECT 1"]).returncode == 0:
                    self._admin = command
                    break
            else:
                raise ServerError(
                    f"cannot administer PostgreSQL as postgres over {DB_HOST} or its socket"
                )
        commands = [part for statement in statements for part in ("-c", statement)]
        done = _run([*self._admin, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", database,
                     *commands])  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"PostgreSQL refused {statements!r}: {done.stderr.strip()}")
        return done.stdout


class LinkedEventsServer:
    """One Linked Events with a fresh database, an API key and uWSGI on an
    ephemeral 127.0.0.1 port."""

    def __init__(self, tarball: Path) -> None:
        self.release = tarball.name.removesuffix(".tar.gz")
        self.source = CACHE / "src"
        self.python = CACHE / "venv" / "bin" / "python"
        self.uwsgi = CACHE / "venv" / "bin" / "uwsgi"
        self.db = PostgreSQL()
        suffix = secrets.token_hex(4)
        self.db_name = self.db_user = f"damdup_le_{suffix}"
        self.db_password = secrets.token_urlsafe(18)
        self.api_key = secrets.token_urlsafe(24)
        self.secret_key = secrets.token_urlsafe(40)
        self.workdir: Path | None = None
        self.url = ""
        self.organizations: set[str] = {OWNER}
        self.setup_s = 0.0
        self._created_db = False
        self._process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.trust_env = False

    # -- life cycle ------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> str:
        began = time.monotonic()
        installed = CACHE / "installed"
        if not installed.is_file() or installed.read_text().strip() != self.release:
            raise ServerError(f"{self.release} is not installed in {CACHE}: run {INSTALL}")
        for needed in (self.python, self.uwsgi, self.source / "manage.py"):
            if not needed.exists():
                raise ServerError(f"{needed} is missing: run {INSTALL}")
        atexit.register(self.close)
        self.db.ensure_running()
        self._create_database()
        self.workdir = Path(tempfile.mkdtemp(prefix="damdup-linkedevents-"))
        (self.workdir / "media").mkdir()
        self.manage("migrate", "--noinput", timeout_s=600)
        self.django(SETUP, DATA_SOURCE, OWNER, self.api_key)
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/"
        log = (self.workdir / "uwsgi.log").open("wb")
        # uWSGI's HTTP router (production's `http = :8000`, with no keep-alive)
        # hangs up after each answer without saying so, and a client that
        # reuses the connection is reset: `Connection: close` says it.
        command = [
            str(self.uwsgi), "--strict", "--master", "--need-app", "--die-on-term",
            "--http", f"127.0.0.1:{port}", "--http-timeout", "60",
            "--add-header", "Connection: close",
            "--chdir", str(self.source), "--module", "linkedevents.wsgi:application",
            "--static-map", f"/media={self.workdir / 'media'}",
            "--processes", "2", "--threads", "2", "--buffer-size", "65535",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(time.monotonic() + timeout_s)
        self.setup_s = time.monotonic() - began
        return self.url

    def _env(self) -> dict[str, str]:
        assert self.workdir is not None
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
            "DATABASE_URL": (
                f"postgis://{self.db_user}:{self.db_password}@{DB_HOST}:{DB_PORT}/{self.db_name}"
            ),
            "SECRET_KEY": self.secret_key,
            "DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MEDIA_ROOT": str(self.workdir / "media"),
            "MEDIA_URL": "/media/",
            "STATIC_ROOT": str(self.workdir / "static"),
            "FIELD_ENCRYPTION_KEYS": secrets.token_hex(32),
            # Its settings ask git for a release name otherwise (and would find ours).
            "OPENSHIFT_BUILD_COMMIT": self.release,
            "DJANGO_LOG_LEVEL": "WARNING",
        }

    def _create_database(self) -> None:
        self.db.admin(
            f"CREATE ROLE {self.db_user} LOGIN PASSWORD '{self.db_password}'",
            f"CREATE DATABASE {self.db_name} OWNER {self.db_user} ENCODING 'UTF8' "
            "TEMPLATE template0",
        )
        self._created_db = True
        # PostGIS is no trusted extension: the administrator creates it, as
        # Linked Events' README says (its migrations add hstore and pg_trgm).
        self.db.admin(
            "CREATE EXTENSION postgis",
            "CREATE EXTENSION hstore",
            "CREATE EXTENSION pg_trgm",
            database=self.db_name,
        )

    def manage(self, *args: str, timeout_s: float = 120) -> str:
        """`python manage.py ARGS` in Linked Events' own virtualenv: its output."""
        done = _run(
            [str(self.python), "manage.py", *args],
            timeout_s=timeout_s,
            cwd=self.source,
            env=self._env(),
        )
        if done.returncode != 0:
            raise ServerError(
                f"manage.py {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def django(self, code: str, *argv: str) -> str:
        """Python run with Linked Events loaded (`manage.py shell`), `argv`
        as its sys.argv[1:]."""
        script = f"import sys\nsys.argv = ['shell', *{list(argv)!r}]\n{code}"
        return self.manage("shell", "--no-imports", "-c", script)

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise ServerError(f"uWSGI exited ({self._process.returncode}): {self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if self.session.get(self.url + "v1/image/", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"Linked Events did not answer on {self.url}: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None or not (self.workdir / "uwsgi.log").exists():
            return ""
        text = (self.workdir / "uwsgi.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
            self._process = None
        self.session.close()
        if self._created_db:
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self.db.admin(
                    f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)",
                    f"DROP ROLE IF EXISTS {self.db_user}",
                )
            self._created_db = False
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- its own API, straight to uWSGI (never through a proxy) ------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"apikey": self.api_key, "Accept": "application/json"}
        response = self.session.request(
            method, self.url + path, headers=headers, timeout=60, **kwargs
        )
        if response.status_code >= 400:
            raise ServerError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def upload(self, name: str, data: bytes, fields: dict[str, str] | None = None) -> Any:
        """`POST /v1/image/` as multipart, the way its UI uploads a photo."""
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return self.api("POST", "v1/image/", files={"image": (name, data, mime)}, data=fields or {})

    def update(self, image_id: int | str, fields: dict[str, Any]) -> Any:
        return self.api("PATCH", f"v1/image/{image_id}/", json=fields)

    def delete(self, image_id: int | str) -> None:
        self.api("DELETE", f"v1/image/{image_id}/")

    def image_ids(self) -> list[int]:
        ids: list[int] = []
        page = 1
        while True:
            body = self.api("GET", "v1/image/", params={"page": page, "page_size": 1000})
            ids += [record["id"] for record in body["data"]]
            if not body["meta"]["next"]:
                return ids
            page += 1

    def ensure_organization(self, org_id: str) -> None:
        """An organization under the API key's own, so that images can be
        published as it (Linked Events lets a key publish as its data
        source's owner and the organizations below it)."""
        if org_id not in self.organizations:
            self.django(SETUP, DATA_SOURCE, OWNER, self.api_key, org_id)
            self.organizations.add(org_id)

    def sql(self, statement: str) -> str:
        """A statement on Linked Events' database, as its own user."""
        done = _run(
            ["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", DB_HOST, "-p", str(DB_PORT),
             "-U", self.db_user, "-d", self.db_name, "-c", statement],
            env={**os.environ, "PGPASSWORD": self.db_password},
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"{statement!r}: {done.stderr.strip()}")
        return done.stdout


# One start per process: a server that failed to start is not tried again
# for every test.
_failure: str | None = None


def start_server() -> LinkedEventsServer:
    """A started server, or a skip when the sources are absent."""
    global _failure
    tarball = source_tarball()
    if tarball is None:
        pytest.skip(
            f"the real Linked Events needs its source: put linkedevents-<commit>.tar.gz in "
            f"{platforms_dir()} (shared/platforms beside the repository, or set "
            f"DAMDUP_PLATFORMS_DIR), then run {INSTALL}"
        )
    if _failure is not None:
        raise ServerError(f"Linked Events did not start earlier in this session: {_failure}")
    server = LinkedEventsServer(tarball)
    try:
        server.start()
    except Exception as exc:
        server.close()
        _failure = str(exc)
        raise
    return server


class LinkedEventsRealHarness(Harness):
    """The contract suite's Linked Events: the real server behind a
    FaultProxy. Metadata goes where the emulator's harness puts it: the place
    in the alternative text (sent with the upload), the department as the
    publishing organization (one under the API key's, made once), the date as
    `created_time`. Linked Events sets `created_time` itself and ignores it in
    a POST or PATCH (`system_generated_fields` in linkedevents/serializers.py),
    so a photo with an earlier date gets it in the database, as an import
    from an older system would."""

    kind = "linked_events"
    listing_path = "/v1/image/"
    unit_metadata: ClassVar[dict[str, str]] = {
        "location": "alt_text",
        "date": "created_time",
        "department": "publisher",
    }

    def __init__(self) -> None:
        self.server = start_server()
        self.proxy = FaultProxy(self.server.url)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url + "v1/",
            "api_key": self.server.api_key,
            "metadata": dict(self.unit_metadata),
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return LinkedEvents(LinkedEventsSettings(**self.settings(**overrides)))

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        metadata = metadata or {}
        fields: dict[str, str] = {}
        if "location" in metadata:
            fields["alt_text"] = metadata["location"]
        if "department" in metadata:
            self.server.ensure_organization(metadata["department"])
            fields["publisher"] = metadata["department"]
        record = self.server.upload(name, data, fields)
        if "date" in metadata:
            date = metadata["date"]
            moment = f"{date}T00:00:00Z" if len(date) == 10 else date
            self.server.sql(
                f"UPDATE events_image SET created_time = '{moment}' WHERE id = {int(record['id'])}"
            )
        return str(record["id"])

    def touch(self, asset_id: str) -> None:
        record = self.server.api("GET", f"v1/image/{asset_id}/")
        self.server.update(asset_id, {"name": f"{record['name']} (edited)"})

    def remove(self, asset_id: str) -> None:
        self.server.delete(asset_id)

    def reset(self) -> None:
        for image_id in self.server.image_ids():
            self.server.delete(image_id)
        assert self.proxy is not None
        self.proxy.clear()

    def bad_credentials(self) -> dict[str, Any] | None:
        # Reading needs no key, but a wrong one is refused (ApiKeyAuthentication).
        return {"api_key": "wrong-key-for-linked-events"}

    def close(self) -> None:
        super().close()
        self.server.close()
