"""Answers a user can trust (issue 12): secrets only from the environment and
never empty, no credentials inside URLs, errors that name what to fix and
keep their cause's words, `--version`, lookups of exactly the URL given, and
the WordPress plugin out of an installed package."""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from connector.cli import main
from connector.core.index import SQLiteStore
from tests.conftest import PHOTOS, ROOT, damdup
from tests.servers.common import Emulator, image_response

SECRET = "hunter2hunter2"
PHOTO = sorted((PHOTOS / "kuva").glob("*.jpg"))[0]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """damdup's exit code and everything it printed, spaces normalised (rich
    wraps long lines at the terminal's width)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: --version, usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def config(tmp_path: Path, unit: str, damdup_table: str = "") -> Path:
    path = tmp_path / "damdup.toml"
    path.write_text(
        f'[damdup]\ndb = "{tmp_path / "index.sqlite"}"\n{damdup_table}\n[units.kuva]\n{unit}\n'
    )
    return path


WORDPRESS = 'platform = "wordpress"\nbase_url = "http://127.0.0.1:9/"\nusername = "editor"'


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("DAMDUP_") and name.upper() != "DAMDUP_WORKERS":
            monkeypatch.delenv(name)
    yield
    # main() points structlog at this test's captured stderr, closed afterwards.
    structlog.reset_defaults()


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_secret_in_the_environment_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    monkeypatch.setenv("DAMDUP_KUVA_APP_PASSWORD", value)
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, WORDPRESS)))
    assert code == 2
    assert "unit kuva: the environment variable DAMDUP_KUVA_APP_PASSWORD is empty" in text


def test_an_empty_webhook_secret_stops_serve_naming_it(tmp_path: Path) -> None:
    """An empty DAMDUP_<UNIT>_WEBHOOK_SECRET (a `$(openssl rand ...)` that
    failed) is an error, not a unit quietly served without webhooks."""
    import subprocess
    import sys

    path = config(tmp_path, f'platform = "filesystem"\nroot = "{tmp_path}"')
    SQLiteStore(tmp_path / "index.sqlite").close()
    serve = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "serve", "--config", str(path), "--port", "0"],
        cwd=ROOT, env={**os.environ, "DAMDUP_KUVA_WEBHOOK_SECRET": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, stderr = serve.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        serve.kill()
        _, stderr = serve.communicate()
        pytest.fail(f"damdup serve ran with an empty webhook secret:\n{stderr}")
    assert serve.returncode == 2, stderr
    assert "unit kuva: the environment variable DAMDUP_KUVA_WEBHOOK_SECRET is empty" in stderr


@pytest.mark.parametrize("key", ["APP_PASSWORD", "App_Password"])
def test_a_secret_in_the_file_is_refused_in_any_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    unit = f'{WORDPRESS}\n{key} = "{SECRET}"'
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, unit)))
    assert code == 2
    assert f"unit kuva: {key}: a secret must not be written in the configuration file" in text
    assert "set the environment variable DAMDUP_KUVA_APP_PASSWORD instead" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("unit", "where", "instead"),
    [
        (
            'platform = "wordpress"\nbase_url = "http://editor:hunter2hunter2@127.0.0.1:9/"',
            "base_url",
            "DAMDUP_KUVA_APP_PASSWORD",
        ),
        (
            f'{WORDPRESS}\nmedia_hosts = ["https://cdn:hunter2hunter2@cdn.example/"]',
            "media_hosts",
            "DAMDUP_KUVA_APP_PASSWORD",
        ),
        (
            'platform = "finna"\nrecord_url = "https://x:hunter2hunter2@finna.fi/Record/"',
            "record_url",
            "this platform takes no credentials",
        ),
        (
            'platform = "sharepoint"\ntenant_id = "t"\nclient_id = "c"\ndrive_id = "d"\n'
            'token_url = "https://app:hunter2hunter2@login.example/token"',
            "token_url",
            "DAMDUP_KUVA_CLIENT_SECRET",
        ),
        (
            'platform = "s3"\nbucket = "kuvat"\n'
            'endpoint_url = "http://key:hunter2hunter2@127.0.0.1:9/"',
            "endpoint_url",
            "DAMDUP_KUVA_SECRET_ACCESS_KEY",
        ),
    ],
)
def test_credentials_inside_a_url_setting_are_refused_without_repeating_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unit: str, where: str, instead: str
) -> None:
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, unit)))
    assert code == 2
    assert f"unit kuva: {where}: a URL must not hold a user name or password" in text
    assert instead in text
    assert SECRET not in text


def test_credentials_inside_a_url_from_the_environment_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAMDUP_KUVA_BASE_URL", f"http://editor:{SECRET}@127.0.0.1:9/")
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, WORDPRESS)))
    assert code == 2
    assert "unit kuva: DAMDUP_KUVA_BASE_URL: a URL must not hold a user name or password" in text
    assert SECRET not in text


def test_a_database_url_with_credentials_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, WORDPRESS)
    path.write_text(path.read_text().replace('db = "', f'db = "postgresql://u:{SECRET}@db/x" #'))
    code, text = run(capsys, "sync", "--config", str(path))
    assert code == 2 and "damdup.db: a database URL must not hold a password" in text
    assert "$PGPASSWORD or ~/.pgpass" in text
    assert SECRET not in text
    monkeypatch.setenv("DAMDUP_DB", f"postgresql://u:{SECRET}@db/x")
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, WORDPRESS)))
    assert code == 2 and "$DAMDUP_DB" in text
    assert "a database URL must not hold a password" in text
    assert SECRET not in text
    monkeypatch.delenv("DAMDUP_DB")
    for url in (f"postgresql://u:{SECRET}@db/x", f"postgresql://u@db/x?password={SECRET}"):
        code, text = run(capsys, "status", "--db", url)
        assert code == 2 and "a database URL must not hold a password" in text
        assert "$PGPASSWORD or ~/.pgpass" in text and SECRET not in text


def test_a_misspelt_secret_variable_is_named_with_the_right_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAMDUP_KUVA_APP_PASWORD", SECRET)
    # Without a username the unit would have silently run anonymously.
    unit = 'platform = "wordpress"\nbase_url = "http://127.0.0.1:9/"'
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, unit)))
    assert code == 2
    assert (
        "unit kuva: DAMDUP_KUVA_APP_PASWORD is set but DAMDUP_KUVA_APP_PASSWORD is not: "
        "did you mean DAMDUP_KUVA_APP_PASSWORD?"
    ) in text
    assert SECRET not in text


def test_an_unset_secret_names_its_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = 'platform = "nextcloud"\nbase_url = "http://127.0.0.1:9/"\nusername = "u"'
    code, text = run(capsys, "sync", "--config", str(config(tmp_path, unit)))
    assert code == 2
    assert "unit kuva: app_password: Field required" in text
    assert "set DAMDUP_KUVA_APP_PASSWORD" in text


def test_a_mistyped_unit_gets_the_near_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, WORDPRESS)
    code, text = run(capsys, "sync", "--config", str(path), "--unit", "kuvaa")
    assert code == 2
    assert "unknown unit(s) kuvaa; did you mean kuva? configured: kuva" in text


def test_an_unreachable_unit_says_connection_refused(tmp_path: Path) -> None:
    unit = 'platform = "wordpress"\nbase_url = "http://127.0.0.1:9/"\nattempts = 1'
    result = damdup(
        "sync", "--config", str(config(tmp_path, unit)), "--format", "json", "-q", check=False
    )
    failed = json.loads(result.stdout)["failed_units"]["kuva"]
    assert "Connection refused" in failed
    assert "HTTPConnectionPool" not in failed


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(capsys, "--version")
    assert code == 0
    assert text == f"damdup {importlib.metadata.version('damdup')}"


# -- lookups by URL: exactly the URL given -------------------------------------


class Recorder(Emulator):
    """Records each request's target as it arrived on the wire."""

    url_map = Map([Rule("/<path:rest>", endpoint="anything")])

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def anything(self, request: Request, rest: str) -> Response:
        self.seen.append(
            (request.environ.get("RAW_URI", ""), request.headers.get("User-Agent", ""))
        )
        return image_response(PHOTO.read_bytes())


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    server.start()
    yield server
    server.stop()


def test_a_lookup_fetches_exactly_the_url_given_with_damdups_version(
    tmp_path: Path, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = f'platform = "webdav"\nbase_url = "{recorder.base_url}dav/"'
    path = config(tmp_path, unit)
    SQLiteStore(tmp_path / "index.sqlite").close()
    target = "/dav/kuvat/a%7Eb/%41%C3%A4.jpg?sig=a%2Bb%3D&x=1&x=2&empty="
    code, text = run(
        capsys, "lookup", recorder.base_url.rstrip("/") + target, "--config", str(path)
    )
    assert code == 0, text
    assert [raw for raw, _ in recorder.seen] == [target]
    user_agent = recorder.seen[0][1]
    assert user_agent.startswith(f"damdup/{importlib.metadata.version('damdup')} ")


# -- the WordPress plugin ------------------------------------------------------


def test_the_wordpress_plugin_is_written_out_and_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ROOT / "adapters" / "wordpress_plugin"
    expected = {
        str(p.relative_to(source)): p.read_bytes()
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    target = tmp_path / "wp-content" / "plugins" / "damdup"
    code, _ = run(capsys, "wordpress-plugin", "--output", str(target))
    assert code == 0
    written = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*")}
    assert written == expected and "damdup.php" in written

    (target / "damdup.php").write_text("edited")
    code, text = run(capsys, "wordpress-plugin", "--output", str(target))
    assert code == 2 and "exists; give --force" in text
    assert (target / "damdup.php").read_text() == "edited"
    code, _ = run(capsys, "wordpress-plugin", "--output", str(target), "--force")
    assert code == 0 and (target / "damdup.php").read_bytes() == expected["damdup.php"]


def test_the_wordpress_plugin_is_package_data() -> None:
    import tomllib
    from fnmatch import fnmatchcase

    # Every file of the plugin is named by a pattern that setuptools puts in
    # the wheel ("*" stops at a "/": a file in a subfolder needs its own).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["adapters"]
    files = [
        path.relative_to(ROOT / "adapters").as_posix()
        for path in (ROOT / "adapters" / "wordpress_plugin").rglob("*")
        if path.is_file()
    ]
    assert "wordpress_plugin/damdup.php" in files
    unpacked = [
        name
        for name in files
        if not any(
            fnmatchcase(name, pattern) and name.count("/") == pattern.count("/")
            for pattern in patterns
        )
    ]
    assert not unpacked, f"not in the wheel: {unpacked}"


# -- names and server text in push's lines ----------------------------------------


def test_push_prints_names_and_reasons_on_one_line_each_without_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An object name may hold a newline (S3, WebDAV) or brackets, and a
    server's reason anything: each change stays one line, nothing in them is
    read as rich markup."""
    from adapters.base import Marks
    from connector.cli import _print_push
    from connector.engine.outbox import Change, Outcome, PushReport

    report = PushReport(run=7, dry_run_units=[], report_only_units=[])
    report.changes.append(
        Change(
            "s3",
            "kuvat/a\nb [red]x.jpg",
            "http://x/",
            Marks(),
            Marks(labels=("duplicate",)),
            Outcome.FAILED,
            error="403 [bold]Forbidden\r\nretry",
        )
    )
    report.failed_units["s3"] = "HTTP 500: [link=http://evil/]click[/link]\nmore"
    _print_push(report, ["s3"], None, {"s3": True})
    captured = capsys.readouterr()
    line = next(text for text in captured.out.splitlines() if "failed  s3:" in text)
    assert "s3:kuvat/a\\nb [red]x.jpg" in line
    assert "(403 [bold]Forbidden\\r\\nretry)" in line
    assert "s3: push stopped: HTTP 500: [link=http://evil/]click[/link]\\nmore" in captured.err
