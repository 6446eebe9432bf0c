"""The real ResourceSpace, from its makers' source, on MariaDB, served by
`php -S` on 127.0.0.1 and set up from nothing by the tests themselves.

The source is the snapshot in `shared/platforms/resourcespace-*.tar.gz`
beside the repository (`$DAMDUP_PLATFORMS_DIR` names another folder instead; a
git worktree also looks beside its main checkout). It is never copied into the
repository: each test session unpacks it into `.damdup/resourcespace/`
(git-ignored) and removes it on close. Without it the tests skip, saying
where it goes. `tests/servers/install-resourcespace.sh` installs PHP's
extensions, ImageMagick, Ghostscript and ExifTool from Debian's packages.

Set-up, every step ResourceSpace's own code:
- a database and its user on the machine's MariaDB, created here and
  dropped on close;
- `pages/setup.php`, ResourceSpace's installer, POSTed as a person fills in
  its form: it writes `include/config.php`, builds the tables from
  `dbstruct/` and creates the super admin;
- lines an administrator adds to `config.php` (`$data_joins`);
- `tests/servers/resourcespace/bootstrap.php`, run by PHP with the site
  loaded, calls `new_user()` and `create_resource_type_field()`: damdup's API
  user (Administrators), a read-only user (General Users) and the text field
  `damdup` for the marks;
- photos arrive through the API as any client sends them: `create_resource`
  then `upload_multipart`, so ImageMagick makes the previews on the server.

Composer's `vendor/` cannot be fetched here; `vendor/autoload.php` is
`tests/servers/resourcespace/autoload.php`, which loads nothing and writes
down every class asked of it (`missing_classes()`); see docs/adapters.md,
"Real ResourceSpace in tests".
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from adapters.base import Adapter, Marks
from adapters.resourcespace import ResourceSpace, ResourceSpaceSettings
from tests.contract.harness import Harness
from tests.servers.faults import FaultProxy, Forwarded
from tests.servers.resourcespace import READING_FUNCTIONS
from tests.servers.wordpress import DB_HOST, DB_PORT, MariaDB, ServerError, _free_port

__all__ = [
    "ResourceSpaceRealHarness",
    "ResourceSpaceServer",
    "platform_sources",
    "resourcespace_tarball",
]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "resourcespace"
SITES = ROOT / ".damdup" / "resourcespace"
# The folder holding the platforms' source snapshots, when not the usual one;
# the second name is the one this module read first (both ResourceSpace's and
# Linked Events' tests read both, so one setting moves or hides both).
SOURCES_VARIABLE = "DAMDUP_PLATFORMS_DIR"
SOURCES_VARIABLES = (SOURCES_VARIABLE, "DAMDUP_PLATFORM_SOURCES")
PHP = Path("/usr/bin/php")
# What ResourceSpace's composer.json requires of PHP, and the tools it runs.
EXTENSIONS = ("mysqli", "gd", "mbstring", "intl", "curl", "dom", "zip")
TOOLS = (Path("/usr/bin/convert"), Path("/usr/bin/identify"), Path("/usr/bin/gs"),
         Path("/usr/bin/exiftool"))  # fmt: skip
# Resource type 1 is "Photo" in dbstruct/data_resource_type.txt.
PHOTO = 1
# Archive states: 0 live, 3 deleted ($resource_deletion_state), and the rest.
ALL_STATES = "-2,-1,0,1,2,3"


def platform_sources() -> list[Path]:
    """Where the platforms' source snapshots may be, first match wins:
    `$DAMDUP_PLATFORMS_DIR` (or `$DAMDUP_PLATFORM_SOURCES`) alone when set,
    else `shared/platforms` beside the repository (as CI lays it out), and
    beside the main checkout when this is a worktree."""
    for variable in SOURCES_VARIABLES:
        if os.environ.get(variable):
            return [Path(os.environ[variable])]
    places = [ROOT.parent / "shared" / "platforms"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        common = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if common:
            places.append(Path(common).parent.parent / "shared" / "platforms")
    return list(dict.fromkeys(places))


def resourcespace_tarball() -> Path | None:
    for place in platform_sources():
        found = sorted(place.glob("resourcespace-*.tar.gz"))
        if found:
            return found[-1]
    return None


def skip_reason() -> str | None:
    """Why the real ResourceSpace cannot run here, or None when it can."""
    if resourcespace_tarball() is None:
        places = ", ".join(str(place) for place in platform_sources())
        return (
            "the real ResourceSpace needs its source, resourcespace-<commit>.tar.gz, in "
            f"shared/platforms beside the repository (looked in {places}; "
            f"${SOURCES_VARIABLE} names another folder)"
        )
    if not PHP.exists():
        return "PHP is missing: run tests/servers/install-resourcespace.sh"
    loaded = subprocess.run([str(PHP), "-m"], capture_output=True, text=True).stdout.lower()
    missing = [name for name in EXTENSIONS if name not in loaded.split()]
    missing += [str(tool) for tool in TOOLS if not tool.exists()]
    if missing:
        return (
            f"ResourceSpace needs {', '.join(missing)}: run tests/servers/install-resourcespace.sh"
        )
    return None


class ResourceSpaceServer:
    """One ResourceSpace site: its own unpacked source, database, users and
    filestore. `start(public_url)` names the address clients use (a fault
    proxy's), which becomes `$baseurl`: ResourceSpace builds every URL it
    answers from it."""

    admin_user = "admin"
    api_user = "damdup"
    reader_user = "damdup-reader"

    def __init__(self) -> None:
        self.db = MariaDB()
        self.site: Path | None = None
        self.url = ""  # where php -S listens
        self.public_url = ""
        self.keys: dict[str, str] = {}
        self.marks_field = 0
        self.setup_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        suffix = secrets.token_hex(4)
        self.db_name = f"damdup_rs_{suffix}"
        self.db_user = f"damdup_rs_{suffix}"
        self.db_password = secrets.token_urlsafe(18)
        self.admin_password = f"Rs-{secrets.token_urlsafe(12)}-9a"
        self._created_db = False
        self.session = requests.Session()
        self.session.trust_env = False
        self.port = _free_port()

    # -- life cycle ------------------------------------------------------

    def start(self, public_url: str | None = None, timeout_s: float = 60.0) -> str:
        reason = skip_reason()
        if reason is not None:
            raise ServerError(reason)
        began = time.monotonic()
        atexit.register(self.close)
        self.db.ensure_running()
        self._create_database()
        self.site = self._unpack()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.public_url = (public_url or self.url).rstrip("/") + "/"
        log = (self.site.parent / f"{self.site.name}-php.log").open("wb")
        self._process = subprocess.Popen(
            [str(PHP), "-S", f"127.0.0.1:{self.port}", "-t", str(self.site),
             str(HERE / "router.php")],
            cwd=self.site,
            # The installer fetches its own license.txt to check the base URL:
            # one worker would wait for itself.
            env={**self._env(), "PHP_CLI_SERVER_WORKERS": "4"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self._wait_ready(time.monotonic() + timeout_s)
        self._install()
        self._configure()
        self._bootstrap()
        self.setup_seconds = time.monotonic() - began
        return self.url

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.site),
            "TZ": "UTC",
        }

    def _unpack(self) -> Path:
        tarball = resourcespace_tarball()
        assert tarball is not None
        SITES.mkdir(parents=True, exist_ok=True)
        target = SITES / f"site-{self.db_name.removeprefix('damdup_rs_')}"
        target.mkdir()
        with tarfile.open(tarball) as archive:
            archive.extractall(target, filter="data")
        [site] = [path for path in target.iterdir() if path.is_dir()]
        # The repository has no filestore; the install guide has the
        # administrator create it, writable by the web server.
        (site / "filestore").mkdir(exist_ok=True)
        (site / "vendor").mkdir(exist_ok=True)
        shutil.copyfile(HERE / "autoload.php", site / "vendor" / "autoload.php")
        return site

    def _create_database(self) -> None:
        user = f"'{self.db_user}'"
        self.db.admin(
            f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4; "
            f"CREATE USER {user}@'127.0.0.1' IDENTIFIED BY '{self.db_password}'; "
            f"CREATE USER {user}@'localhost' IDENTIFIED BY '{self.db_password}'; "
            f"GRANT ALL ON `{self.db_name}`.* TO {user}@'127.0.0.1'; "
            f"GRANT ALL ON `{self.db_name}`.* TO {user}@'localhost';"
        )
        self._created_db = True

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise ServerError(f"php -S exited ({self._process.returncode}): {self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if self.session.get(self.url + "license.txt", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"php -S did not answer on {self.url}: {self.log_tail()}")
            time.sleep(0.05)

    def _install(self) -> None:
        """pages/setup.php, as a person submits its form."""
        form = {
            "defaultlanguage": "en",
            "mysql_server": DB_HOST if DB_PORT == 3306 else f"{DB_HOST}:{DB_PORT}",
            "mysql_username": self.db_user,
            "mysql_password": self.db_password,
            "mysql_db": self.db_name,
            "mysql_bin_path": "",
            "applicationname": "Kuvapankki (damdup tests)",
            "baseurl": self.public_url.rstrip("/"),
            "admin_fullname": "Admin user",
            "admin_email": "admin@example.invalid",
            "admin_username": self.admin_user,
            "admin_password": self.admin_password,
            "email_from": "resourcespace@example.invalid",
            "imagemagick_path": "/usr/bin",
            "ghostscript_path": "/usr/bin",
            "exiftool_path": "/usr/bin",
            "ffmpeg_path": "",
            "pdftotext_path": "",
            "submit": "Begin installation!",
        }
        reply = self.session.post(self.url + "pages/setup.php", data=form, timeout=300)
        assert self.site is not None
        # Errors keep the form; PHP's are reported in the page, status 200.
        failed = 'action="setup.php"' in reply.text or "an error has occurred" in reply.text
        if (
            reply.status_code != 200
            or failed
            or not (self.site / "include" / "config.php").exists()
        ):
            raise ServerError(
                f"ResourceSpace's setup.php failed ({reply.status_code}): "
                f"{_text_of(reply.text)[-1500:]}\n{self.log_tail()}"
            )

    def _configure(self) -> None:
        """What Kuvapankki's administrator adds to include/config.php: the
        credit field (10, where the default mapping reads the department)
        joined into search results, as docs/adapters.md asks."""
        assert self.site is not None
        with (self.site / "include" / "config.php").open("a") as config:
            config.write(
                "\n# Added by damdup's test harness, as an administrator would.\n"
                "$data_joins = array(10);\n"
            )

    def _bootstrap(self) -> None:
        assert self.site is not None
        done = subprocess.run(
            [str(PHP), str(HERE / "bootstrap.php"), str(self.site)],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = done.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if done.returncode == 0 and lines else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ServerError(f"bootstrap.php failed:\n{done.stdout}\n{done.stderr}")
        self.keys = {name: user["key"] for name, user in answer["users"].items()}
        self.marks_field = int(answer["marks_field"])

    def log_tail(self, lines: int = 20) -> str:
        if self.site is None:
            return ""
        log = self.site.parent / f"{self.site.name}-php.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def php_errors(self) -> list[str]:
        """PHP's own warnings and errors in the server's log."""
        if self.site is None:
            return []
        log = self.site.parent / f"{self.site.name}-php.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [
            line
            for line in text.splitlines()
            if "PHP " in line and "Development Server" not in line
        ]

    def missing_classes(self) -> list[dict[str, str]]:
        """Every class ResourceSpace asked the stand-in autoloader for."""
        if self.site is None:
            return []
        log = self.site / "vendor" / "missing-classes.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
            self._process = None
        self.session.close()
        if self._created_db:
            with contextlib.suppress(ServerError):
                self.db.admin(
                    f"DROP DATABASE IF EXISTS `{self.db_name}`; "
                    f"DROP USER IF EXISTS '{self.db_user}'@'127.0.0.1'; "
                    f"DROP USER IF EXISTS '{self.db_user}'@'localhost';"
                )
            self._created_db = False
        if self.site is not None:
            shutil.rmtree(self.site.parent, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.site.parent.parent / f"{self.site.name}-php.log").unlink()
            self.site = None

    def __enter__(self) -> ResourceSpaceServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API, signed, straight to php -S (never through a proxy) ---------

    def signed(self, function: str, user: str, params: dict[str, Any]) -> tuple[str, str]:
        query = urlencode(
            [("user", user), ("function", function)]
            + [(name, str(value)) for name, value in params.items()]
        )
        return query, hashlib.sha256((self.keys[user] + query).encode()).hexdigest()

    def request(
        self,
        function: str,
        *,
        user: str | None = None,
        method: str = "GET",
        files: dict[str, Any] | None = None,
        **params: Any,
    ) -> requests.Response:
        user = user or self.admin_user
        query, sign = self.signed(function, user, params)
        if method == "GET":
            return self.session.get(f"{self.url}api/?{query}&sign={sign}", timeout=120)
        data = {"user": user, "query": query, "sign": sign}
        return self.session.post(f"{self.url}api/", data=data, files=files, timeout=120)

    def api(self, function: str, *, user: str | None = None, method: str = "GET",
            **params: Any) -> Any:  # fmt: skip
        reply = self.request(function, user=user, method=method, **params)
        if reply.status_code >= 400:
            raise ServerError(f"{function}: {reply.status_code} {reply.text[:500]}")
        if not reply.content.strip():
            return None
        try:
            return reply.json()
        except ValueError:
            raise ServerError(f"{function}: not JSON: {reply.text[:1000]}") from None

    def upload(self, name: str, data: bytes, fields: dict[str, str] | None = None) -> str:
        """A photo as an API client uploads one: a new Photo resource, live,
        then its file by upload_multipart (EXIF read in, previews made by
        ImageMagick), then field values by update_field."""
        ref = self.api("create_resource", method="POST", resource_type=PHOTO, archive=0)
        if not isinstance(ref, int):
            raise ServerError(f"create_resource answered {ref!r}")
        reply = self.request(
            "upload_multipart",
            method="POST",
            files={"file": (name, data)},
            ref=ref,
            no_exif=0,
            revert=0,
        )
        if reply.status_code != 204:
            raise ServerError(f"upload_multipart: {reply.status_code} {reply.text[:500]}")
        for field, value in (fields or {}).items():
            self.set_field(str(ref), field, value)
        return str(ref)

    def set_field(self, ref: str, field: str, value: str, user: str | None = None) -> None:
        done = self.api("update_field", user=user, method="POST", resource=ref, field=field,
                        value=value)  # fmt: skip
        if done is not True:
            raise ServerError(f"update_field {field} of {ref} answered {done!r}")

    def field_values(self, ref: str) -> dict[str, str]:
        answer = self.api("get_resource_field_data", resource=ref)
        return {str(field["name"]): str(field["value"] or "") for field in answer}

    def refs(self, archive: str = ALL_STATES) -> list[str]:
        answer = self.api("do_search", search="", archive=archive, fetchrows="0,100000")
        return [str(row["ref"]) for row in answer["data"]]

    def delete(self, ref: str) -> None:
        """delete_resource, as a person deletes: with the default
        $resource_deletion_state = 3 the resource moves to the "Deleted"
        state; a second delete removes it for good."""
        if self.api("delete_resource", method="POST", resource=ref) is not True:
            raise ServerError(f"delete_resource {ref} failed")

    def purge(self) -> None:
        for ref in self.refs():
            data = self.api("get_resource_data", resource=ref)
            if isinstance(data, dict) and int(data.get("archive", 0)) != 3:
                self.delete(ref)
            self.delete(ref)

    def db_now(self) -> str:
        return self.db.admin("SELECT NOW()").strip()


def _text_of(html: str) -> str:
    import re

    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


class ResourceSpaceRealHarness(Harness):
    """The contract suite's real ResourceSpace behind a FaultProxy. Location,
    date and department go into fields 3 (country), 12 (date) and 10 (credit),
    where the adapter's default mapping reads them; credit is joined into
    search results by `$data_joins`. Content changes through the API as the
    super admin; the adapter signs as damdup's own user."""

    kind = "resourcespace"
    listing_path = "/api/"  # every API call; files come from pages/download.php
    FIELD_OF: ClassVar[dict[str, str]] = {"location": "3", "date": "12", "department": "10"}
    FOREIGN_FIELD = "caption"

    def __init__(self) -> None:
        reason = skip_reason()
        if reason is not None:
            pytest.skip(reason)
        self.server = ResourceSpaceServer()
        # The proxy first: its address is ResourceSpace's $baseurl.
        self.proxy = FaultProxy(f"http://127.0.0.1:{self.server.port}/")
        try:
            self.server.start(public_url=self.proxy.url)
        except BaseException:
            self.proxy.close()
            self.server.close()
            raise

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "username": self.server.api_user,
            "private_key": self.server.keys[self.server.api_user],
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return ResourceSpace(ResourceSpaceSettings(**self.settings(**overrides)))

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"private_key": "0" * 64}

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        fields = {self.FIELD_OF[key]: value for key, value in (metadata or {}).items()}
        return self.server.upload(name, data, fields)

    def touch(self, asset_id: str) -> None:
        # `modified` keeps whole seconds of the database's clock: wait for the
        # next one, so that the edit shows as a newer modification time.
        modified = str(self.server.api("get_resource_data", resource=asset_id)["modified"])
        while self.server.db_now() <= modified:
            time.sleep(0.1)
        self.server.set_field(asset_id, "title", f"edited {time.time()}")

    def remove(self, asset_id: str) -> None:
        self.server.delete(asset_id)

    def reset(self) -> None:
        self.server.purge()
        assert self.proxy is not None
        self.proxy.clear()

    # -- marks -------------------------------------------------------------

    def stored_marks(self, asset_id: str) -> Marks:
        return Marks.from_json(self.server.field_values(asset_id).get("damdup") or None)

    def set_foreign(self, asset_id: str) -> None:
        caption = "Temppeliaukion kirkko, kuvaaja ~ tuntematon & ?"
        self.server.set_field(asset_id, self.FOREIGN_FIELD, caption)

    def foreign_state(self, asset_id: str) -> Any:
        """Every field but damdup's, the file columns, and the original's
        bytes, as the API gives them to the super admin."""
        fields = {
            name: value for name, value in self.server.field_values(asset_id).items()
            if name != "damdup"
        }  # fmt: skip
        data = self.server.api("get_resource_data", resource=asset_id)
        files = {key: data[key] for key in ("file_modified", "file_size", "file_checksum")}
        url = self.server.api("get_resource_path", ref=asset_id, size="", extension="jpg")
        local = str(url).replace(self.server.public_url, self.server.url, 1)
        original = self.server.session.get(local, timeout=60)
        original.raise_for_status()
        return fields, files, hashlib.sha256(original.content).hexdigest()

    def complaints(self) -> list[str]:
        """Over the whole session: a class ResourceSpace asked the stand-in
        autoloader for (a Composer library left out, docs/adapters.md) or an
        error PHP logged, on any path the tests took."""
        found = [
            f"class asked of the missing vendor/: {entry}"
            for entry in self.server.missing_classes()
        ]
        return found + [f"PHP: {line}" for line in self.server.php_errors()]

    def changing(self, entry: Forwarded) -> bool:
        if entry.method != "GET":
            return True
        if not urlsplit(entry.path).path.startswith("/api/"):
            return False
        functions = parse_qs(urlsplit(entry.path).query).get("function", [])
        return any(function not in READING_FUNCTIONS for function in functions)

    def close(self) -> None:
        super().close()
        self.server.close()
