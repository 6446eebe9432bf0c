"""The real WordPress from Debian's `wordpress` package, on MariaDB, served by
`php -S` on 127.0.0.1, set up from nothing by the tests themselves.

Nothing system-wide is configured: the site is a temporary folder (uploads,
the public URL) plus the PHP files of `tests/servers/wordpress/` (our own
wp-config, a router for `php -S`, an install script, a must-use plugin), and a
database with its own user, dropped on close. `tests/servers/install-debian.sh`
installs the packages.

The contract harness installs damdup's own WordPress plugin
(`adapters/wordpress_plugin/`) as an administrator would: its folder copied
into the site's `wp-content/plugins/damdup`, then activated through
WordPress's plugins endpoint (https://developer.wordpress.org/rest-api/reference/plugins/).
The marks it keeps are read back through `/wp/v2/media/<id>?context=edit`,
where the plugin registers them as attachment meta.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import mimetypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from adapters.base import Adapter, Marks
from adapters.wordpress import WordPress, WordPressSettings
from tests.contract.harness import Harness
from tests.servers.faults import FaultProxy

__all__ = ["MariaDB", "WordPressHarness", "WordPressServer"]

HERE = Path(__file__).resolve().parent / "wordpress"
WORDPRESS = Path("/usr/share/wordpress")
MARIADBD = Path("/usr/sbin/mariadbd")
DB_HOST = "127.0.0.1"
DB_PORT = 3306
MEDIA = "wp-json/wp/v2/media"
# damdup's plugin, as shipped, and its id in WordPress ("folder/file" minus .php).
DAMDUP_PLUGIN = Path(__file__).resolve().parents[2] / "adapters" / "wordpress_plugin"
DAMDUP_PLUGIN_ID = "damdup/damdup"
# The attachment meta the plugin registers, and the names Marks.to_fields uses;
# written out here, not taken from the adapter, so that the harness checks it.
MARK_META = {"damdup_marks": "damdup-marks", "damdup_cluster": "damdup-cluster",
             "damdup_canonical": "damdup-canonical"}  # fmt: skip


class ServerError(RuntimeError):
    pass


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


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


class MariaDB:
    """The local MariaDB on 127.0.0.1:3306, started when it is not running.
    Administration goes through the `mariadb` client, as root over TCP with an
    empty password (as on this project's machines) or over the socket as the
    system's root (Debian's default `unix_socket` authentication)."""

    def __init__(self) -> None:
        self._admin: list[str] | None = None

    def ensure_running(self, timeout_s: float = 30.0) -> None:
        if _answers(DB_HOST, DB_PORT):
            return
        if not MARIADBD.exists():
            raise ServerError("mariadbd is not installed: run tests/servers/install-debian.sh")
        datadir = self._datadir()
        if not (datadir / "mysql").is_dir():
            datadir.mkdir(parents=True, exist_ok=True)
            shutil.chown(datadir, "mysql", "mysql")
            done = _run(
                ["mariadb-install-db", "--user=mysql", f"--datadir={datadir}", "--skip-test-db"]
            )
            if done.returncode != 0:
                raise ServerError(f"mariadb-install-db failed:\n{done.stderr}")
        run_dir = Path("/run/mysqld")
        if not run_dir.is_dir():
            run_dir.mkdir(parents=True)
            shutil.chown(run_dir, "mysql", "mysql")
        started = _run(
            [
                "start-stop-daemon", "--start", "--oknodo", "--background",
                "--exec", str(MARIADBD), "--", "--user=mysql",
                f"--bind-address={DB_HOST}", f"--port={DB_PORT}",
            ]
        )  # fmt: skip
        if started.returncode != 0:
            raise ServerError(f"cannot start mariadbd:\n{started.stderr}")
        deadline = time.monotonic() + timeout_s
        while not _answers(DB_HOST, DB_PORT):
            if time.monotonic() > deadline:
                raise ServerError(f"MariaDB did not answer on {DB_HOST}:{DB_PORT} in {timeout_s} s")
            time.sleep(0.2)

    @staticmethod
    def _datadir() -> Path:
        found = _run(["my_print_defaults", "--mysqld"])
        for line in found.stdout.splitlines():
            if line.startswith("--datadir="):
                return Path(line.split("=", 1)[1])
        return Path("/var/lib/mysql")

    def admin(self, sql: str) -> str:
        if self._admin is None:
            for command in (
                ["mariadb", "--protocol=tcp", f"-h{DB_HOST}", f"-P{DB_PORT}", "-uroot"],
                ["mariadb", "-uroot"],  # the socket, as the system's root
            ):
                if _run([*command, "-e", "SELECT 1"]).returncode == 0:
                    self._admin = command
                    break
            else:
                raise ServerError(
                    "cannot administer MariaDB as root over 127.0.0.1 (empty password) "
                    "or its socket"
                )
        done = _run([*self._admin, "--batch", "--skip-column-names", "-e", sql])
        if done.returncode != 0:
            raise ServerError(f"MariaDB refused {sql!r}: {done.stderr.strip()}")
        return done.stdout


class WordPressServer:
    """One WordPress site with a fresh database, an administrator and an
    application password. `start(public_url)` names the URL clients use (a
    fault proxy's): WordPress builds every absolute URL it prints from it."""

    admin_user = "damdup-admin"

    def __init__(self) -> None:
        self.db = MariaDB()
        self.site: Path | None = None
        self.url = ""  # where php -S listens
        self.public_url = ""
        self.app_password = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._suffix = secrets.token_hex(4)
        self.db_name = f"damdup_wp_{self._suffix}"
        self.db_user = f"damdup_wp_{self._suffix}"
        self.db_password = secrets.token_urlsafe(18)
        self._created_db = False
        self.session = requests.Session()
        self.session.trust_env = False

    # -- life cycle ------------------------------------------------------

    def start(self, public_url: str | None = None, timeout_s: float = 20.0) -> str:
        began = time.monotonic()
        for needed in (WORDPRESS / "wp-settings.php", Path("/usr/bin/php")):
            if not needed.exists():
                raise ServerError(f"{needed} is missing: run tests/servers/install-debian.sh")
        atexit.register(self.close)
        self.db.ensure_running()
        self._create_database()
        self.site = Path(tempfile.mkdtemp(prefix="damdup-wordpress-"))
        (self.site / "wp-content" / "uploads").mkdir(parents=True)
        (self.site / "client.cnf").write_text(
            f"[client]\nhost={DB_HOST}\nport={DB_PORT}\nuser={self.db_user}\n"
            f"password={self.db_password}\n"
        )
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.set_public_url(public_url or self.url)
        installed = subprocess.run(
            ["php", str(HERE / "install.php")],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if installed.returncode != 0:
            raise ServerError(f"WordPress install failed:\n{installed.stdout}\n{installed.stderr}")
        self.app_password = json.loads(installed.stdout.strip().splitlines()[-1])["app_password"]
        self.session.auth = (self.admin_user, self.app_password)
        log = (self.site / "php-server.log").open("wb")
        self._process = subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{port}", "-t", str(self.site), str(HERE / "router.php")],
            env={**self._env(), "PHP_CLI_SERVER_WORKERS": "4"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(began + timeout_s)
        return self.url

    def _env(self) -> dict[str, str]:
        assert self.site is not None
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.site),
            "DAMDUP_WP_SITE": str(self.site),
            "DAMDUP_WP_DB_NAME": self.db_name,
            "DAMDUP_WP_DB_USER": self.db_user,
            "DAMDUP_WP_DB_PASSWORD": self.db_password,
            "DAMDUP_WP_DB_HOST": f"{DB_HOST}:{DB_PORT}",
            "DAMDUP_WP_SALT": self._suffix,
            "DAMDUP_WP_ADMIN": self.admin_user,
        }

    def _create_database(self) -> None:
        user = f"'{self.db_user}'"
        self.db.admin(
            f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4; "
            # 'localhost' too: without skip-name-resolve, 127.0.0.1 is seen as localhost.
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
                if self.session.get(self.url + "wp-json/", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"WordPress did not answer on {self.url}: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if self.site is None or not (self.site / "php-server.log").exists():
            return ""
        text = (self.site / "php-server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def set_public_url(self, url: str) -> None:
        assert self.site is not None
        self.public_url = url.rstrip("/") + "/"
        (self.site / "public-url").write_text(self.public_url.rstrip("/") + "\n")

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
            shutil.rmtree(self.site, ignore_errors=True)
            self.site = None

    def __enter__(self) -> WordPressServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the platform's own API, straight to php -S (never through a proxy) --

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, self.url + path, timeout=60, **kwargs)
        if response.status_code >= 400:
            raise ServerError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def upload(
        self, name: str, data: bytes, fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """POST /wp/v2/media as a person's upload; WordPress makes its
        renditions with GD. `fields` are further attachment fields."""
        filename = Path(name).name
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        record: dict[str, Any] = self.api(
            "POST",
            MEDIA,
            data=data,
            headers={
                "Content-Type": mime,
                "Content-Disposition": f'attachment; filename="{filename}"',
            },
        )
        if fields:
            record = self.api("POST", f"{MEDIA}/{record['id']}", json=fields)
        return record

    def update(self, media_id: int | str, fields: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = self.api("POST", f"{MEDIA}/{media_id}", json=fields)
        return record

    def delete(self, media_id: int | str) -> None:
        self.api("DELETE", f"{MEDIA}/{media_id}", params={"force": "true"})

    def media_ids(self) -> list[int]:
        ids: list[int] = []
        page = 1
        while True:
            params = {"per_page": "100", "page": str(page), "_fields": "id", "context": "edit"}
            response = self.session.get(self.url + MEDIA, params=params, timeout=60)
            response.raise_for_status()
            ids += [record["id"] for record in response.json()]
            if page >= int(response.headers.get("X-WP-TotalPages", "1")):
                return ids
            page += 1

    # -- plugins and users, as an administrator adds them --------------------

    def install_plugin(self, source: Path, folder: str) -> None:
        """Copy a plugin's folder into the site's plugins folder, as an
        administrator does by hand (or by unpacking its zip). Inactive until
        `set_plugin_active`."""
        assert self.site is not None
        target = self.site / "wp-content" / "plugins" / folder
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)

    def set_plugin_active(self, plugin: str, active: bool) -> dict[str, Any]:
        """Activate or deactivate an installed plugin through WordPress's
        plugins endpoint (what Plugins → Activate does); returns WordPress's
        record of the plugin, with the name and version from its header."""
        record: dict[str, Any] = self.api(
            "POST",
            f"wp-json/wp/v2/plugins/{plugin}",
            json={"status": "active" if active else "inactive"},
        )
        return record

    def add_user(self, role: str) -> tuple[str, str]:
        """A new user with `role` and an application password, created through
        the users endpoints as the administrator: (username, app password)."""
        name = f"damdup-{role}-{secrets.token_hex(3)}"
        user = self.api(
            "POST",
            "wp-json/wp/v2/users",
            json={
                "username": name,
                "email": f"{name}@example.invalid",
                "password": secrets.token_urlsafe(18),
                "roles": [role],
            },
        )
        created = self.api(
            "POST",
            f"wp-json/wp/v2/users/{user['id']}/application-passwords",
            json={"name": "damdup tests"},
        )
        return name, str(created["password"])

    def php(self, code: str) -> str:
        """PHP run with the site loaded (as `wp eval` would): what it prints."""
        done = subprocess.run(
            ["php", "-r", f"require {str(HERE / 'wp-config.php')!r}; {code}"],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerError(f"php failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def sql(self, statement: str) -> str:
        """A statement on the site's database, as the site's own user."""
        assert self.site is not None
        done = _run(
            [
                "mariadb", f"--defaults-extra-file={self.site / 'client.cnf'}", "--protocol=tcp",
                "--batch", "--skip-column-names", self.db_name, "-e", statement,
            ]
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"{statement!r}: {done.stderr.strip()}")
        return done.stdout


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WordPressHarness(Harness):
    """The contract suite's WordPress: the real server behind a FaultProxy.
    Location and department live in the `acf` fields of the test site's
    must-use plugin (where the adapter's default mapping reads them), the date
    in the attachment's own `date_gmt`. damdup's plugin is installed and
    activated as an administrator would, and keeps the marks."""

    kind = "wordpress"
    listing_path = "/wp-json/wp/v2/media"

    def __init__(self) -> None:
        self.server = WordPressServer()
        self.server.start()
        self.proxy = FaultProxy(self.server.url)
        self.server.set_public_url(self.proxy.url)
        self.server.install_plugin(DAMDUP_PLUGIN, DAMDUP_PLUGIN_ID.split("/")[0])
        self.server.set_plugin_active(DAMDUP_PLUGIN_ID, True)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "username": self.server.admin_user,
            "app_password": self.server.app_password,
            **overrides,
        }

    def adapter(self, **overrides: Any) -> Adapter[Any]:
        return WordPress(WordPressSettings(**self.settings(**overrides)))

    def bad_credentials(self) -> dict[str, Any] | None:
        return {"app_password": "abcd efgh ijkl mnop qrst uvwx"}

    @staticmethod
    def fields(metadata: dict[str, str]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        acf = {name: metadata[name] for name in ("location", "department") if name in metadata}
        if acf:
            fields["acf"] = acf
        if metadata.get("date"):
            date = metadata["date"]
            fields["date_gmt"] = date if "T" in date else f"{date}T00:00:00"
        return fields

    def add(self, name: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        record = self.server.upload(name, data, self.fields(metadata or {}))
        return str(record["id"])

    def touch(self, asset_id: str) -> None:
        # WordPress keeps whole seconds: wait for the next one, so that the
        # edit is visible as a new modification time.
        record = self.server.api("GET", f"{MEDIA}/{asset_id}", params={"context": "edit"})
        modified = datetime.fromisoformat(record["modified_gmt"]).replace(tzinfo=UTC)
        wait_s = (modified + timedelta(seconds=1) - _utc_now()).total_seconds()
        if wait_s > 0:
            time.sleep(wait_s + 0.01)
        self.server.update(asset_id, {"title": f"{record['title']['raw']} (edited)"})

    def remove(self, asset_id: str) -> None:
        self.server.delete(asset_id)

    # -- marks -----------------------------------------------------------------

    def _record(self, asset_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.server.api(
            "GET", f"{MEDIA}/{asset_id}", params={"context": "edit"}
        )
        return record

    def stored_marks(self, asset_id: str) -> Marks:
        """The plugin's attachment meta, as WordPress's media endpoint shows
        it to an editor (not the plugin's own route, which the adapter uses)."""
        meta = self._record(asset_id).get("meta") or {}
        return Marks.from_fields({field: meta.get(key) for key, field in MARK_META.items()})

    def set_foreign(self, asset_id: str) -> None:
        """What an editor gives a photo in the media library: alternative
        text, a caption, a description, and the department field (post meta
        of the site's own, beside damdup's)."""
        self.server.update(
            asset_id,
            {
                "alt_text": "Tuomiokirkko ja Senaatintori talvella",
                "caption": "Kuva: Helsingin kaupunginmuseo",
                "description": "Ostettu 2019; käyttöoikeus CC BY 4.0.",
                "acf": {"department": "Kaupunginmuseo"},
            },
        )

    def foreign_state(self, asset_id: str) -> Any:
        """The attachment as its media endpoint shows an editor, modification
        time included (marks are no edit), minus damdup's meta; the site's
        other post meta rows, read from its database; and the file's bytes."""
        record = self._record(asset_id)
        meta = record.get("meta") or {}
        record["meta"] = {key: value for key, value in meta.items() if key not in MARK_META}
        skipped = ", ".join(f"'{key}'" for key in MARK_META)
        rows = self.server.sql(
            f"SELECT meta_key, meta_value FROM wp_postmeta WHERE post_id = {int(asset_id)} "
            f"AND meta_key NOT IN ({skipped}) ORDER BY meta_id"
        )
        # The file straight from php -S: the proxy logs only the adapter's requests.
        source = str(record["source_url"]).replace(self.server.public_url, self.server.url, 1)
        response = self.server.session.get(source, timeout=60)
        response.raise_for_status()
        return {"record": record, "postmeta": rows, "file": response.content}

    def reset(self) -> None:
        for media_id in self.server.media_ids():
            self.server.delete(media_id)
        assert self.proxy is not None
        self.proxy.clear()

    def close(self) -> None:
        super().close()
        self.server.close()
