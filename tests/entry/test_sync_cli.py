"""`damdup sync` and `damdup status` as a user runs them, on folder units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.registry import adapter_class
from connector.core.config import env_prefix, load_config
from connector.units import secret_fields, unit_settings
from tests.conftest import PHOTOS, ROOT, damdup

FOLDERS = sorted(path.name for path in PHOTOS.iterdir() if path.is_dir())


def config(tmp_path: Path, extra: str = "") -> Path:
    units = "".join(
        f'\n[units.{name}]\nplatform = "filesystem"\nroot = "{PHOTOS / name}"\n' for name in FOLDERS
    )
    path = tmp_path / "damdup.toml"
    path.write_text(f'[damdup]\ndb = "{tmp_path / "index.sqlite"}"\n{units}{extra}')
    return path


def test_sync_then_resync_then_status(tmp_path: Path) -> None:
    path = config(tmp_path)
    first = damdup("sync", "--config", str(path), "--format", "json", "-q")
    report = json.loads(first.stdout)
    assert [unit["unit"] for unit in report["units"]] == FOLDERS
    assert sum(unit["fingerprinted"] for unit in report["units"]) > 100
    assert report["cross_unit_clusters"] >= 1
    assert report["failed_units"] == {}

    again = json.loads(damdup("sync", "--config", str(path), "--format", "json", "-q").stdout)
    assert all(unit["fetched_bytes"] == 0 for unit in again["units"])
    assert all(unit["fetched"] == 0 for unit in again["units"])

    status = json.loads(damdup("status", "--config", str(path), "--format", "json").stdout)
    assert [row["unit"] for row in status] == FOLDERS
    listed = {unit["unit"]: unit["listed"] for unit in report["units"]}
    for row in status:
        assert row["assets"] == listed[row["unit"]]
        assert row["last_sync_complete"] is True
        redundant = row["duplicates"] + row["candidates"]
        assert row["redundancy_pct"] == round(100.0 * redundant / row["assets"], 1)
    assert sum(row["duplicates"] + row["candidates"] for row in status) > 0

    db = str(tmp_path / "index.sqlite")
    table = damdup("clusters", "--db", db, "--cross-unit")
    assert "canonical because" in table.stdout
    similar = json.loads(damdup("clusters", "--db", db, "--cross-unit", "--format", "json").stdout)
    related = len(similar["similar"])
    assert related > 20, "the fixtures hold burst frames and other angles across folders"
    assert f"... and {related - 20} more" in table.stdout
    every = damdup("clusters", "--db", db, "--cross-unit", "--all").stdout
    assert "more (--all" not in every
    assert every.count("  ~  ") == related


def test_one_unit_only(tmp_path: Path) -> None:
    path = config(tmp_path)
    result = damdup("sync", "--config", str(path), "--unit", FOLDERS[0], "--format", "json", "-q")
    assert [unit["unit"] for unit in json.loads(result.stdout)["units"]] == [FOLDERS[0]]


def test_unknown_unit_is_a_usage_error(tmp_path: Path) -> None:
    result = damdup("sync", "--config", str(config(tmp_path)), "--unit", "nope", check=False)
    assert result.returncode == 2
    assert "unknown unit(s) nope" in result.stderr


def test_bad_unit_settings_name_unit_and_key(tmp_path: Path) -> None:
    path = config(tmp_path, '\n[units.broken]\nplatform = "wordpress"\nbase_url = "not a url"\n')
    result = damdup("sync", "--config", str(path), check=False)
    assert result.returncode == 2
    assert "unit broken: base_url" in result.stderr


def test_unknown_platform(tmp_path: Path) -> None:
    path = config(tmp_path, '\n[units.odd]\nplatform = "myspace"\n')
    result = damdup("sync", "--config", str(path), check=False)
    assert result.returncode == 2
    assert "unit odd: platform: unknown platform 'myspace'" in result.stderr


def test_a_secret_in_the_file_is_refused(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '\n[units.rs]\nplatform = "resourcespace"\nbase_url = "http://127.0.0.1:9/"\n'
        'username = "u"\nprivate_key = "hunter2hunter2"\n',
    )
    result = damdup("sync", "--config", str(path), check=False)
    assert result.returncode == 2
    assert "unit rs: private_key: a secret must not be written" in result.stderr
    assert "DAMDUP_RS_PRIVATE_KEY" in result.stderr
    assert "hunter2hunter2" not in result.stderr + result.stdout


def test_a_unit_that_cannot_be_reached_is_reported_and_the_others_sync(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        '\n[units.down]\nplatform = "wordpress"\nbase_url = "http://127.0.0.1:9/"\nattempts = 1\n',
    )
    result = damdup("sync", "--config", str(path), "--format", "json", "-q", check=False)
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert "Unavailable" in report["failed_units"]["down"]
    assert sum(unit["fingerprinted"] for unit in report["units"]) > 100


def test_no_configuration(tmp_path: Path) -> None:
    result = damdup(
        "sync", "--db", str(tmp_path / "x.sqlite"), check=False, env={"DAMDUP_CONFIG": ""}
    )
    assert result.returncode == 2
    assert "no configuration at config/damdup.toml" in result.stderr


def test_the_example_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """All eleven units, each checked by its own adapter's settings model, with
    the secrets the file's comments name set in the environment."""
    example = ROOT / "config" / "damdup.example.toml"
    config = load_config(example)
    assert len(config.units) == 11
    assert all(not unit.writes for unit in config.units.values()), "writes start off"
    platforms = {unit.platform for unit in config.units.values()}
    assert {"wordpress", "drupal", "resourcespace", "ckan", "linked_events", "finna"} <= platforms
    for name, unit in config.units.items():
        cls = adapter_class(unit.platform)
        fields = cls.settings_model.model_fields
        for key in secret_fields(cls.settings_model):
            # Required secrets, and passwords that go with a configured user name.
            if fields[key].is_required() or "username" in unit.adapter_options:
                monkeypatch.setenv(f"{env_prefix(name)}{key.upper()}", "example-secret")
        _cls, settings = unit_settings(name, unit.platform, unit.adapter_options)
        assert settings.model_dump()  # every key was accepted by the platform's model
        mapping = unit.adapter_options.get("metadata", {})
        assert set(mapping) == {"location", "date", "department"}, f"{name} maps all three"


def test_the_environment_wins_over_the_file_for_unit_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAMDUP_HEL_FI_PAGE_SIZE", "7")
    _cls, settings = unit_settings(
        "hel-fi", "wordpress", {"base_url": "http://h/", "page_size": 50}
    )
    assert settings.page_size == 7  # type: ignore[attr-defined]


def test_a_sync_clusters_again_only_what_its_assets_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sync's summary counts the clusters from the saved listing made
    current for what the sync changed, not from a clustering of the whole
    index (half a minute at 1,000,000 assets): the same counts a whole
    clustering gives, with no whole clustering after the first."""
    import shutil

    import structlog

    from connector.cli import main
    from connector.core.settings import Settings
    from connector.core.store import open_store
    from connector.engine import scan

    units = {name: tmp_path / name for name in ("a", "b")}
    shutil.copytree(PHOTOS / "hel-fi", units["a"])
    shutil.copytree(PHOTOS / "kuva", units["b"])
    path = tmp_path / "damdup.toml"
    db = tmp_path / "index.sqlite"
    path.write_text(
        f'[damdup]\ndb = "{db}"\n'
        + "".join(f'[units.{n}]\nplatform = "filesystem"\nroot = "{r}"\n' for n, r in units.items())
    )
    whole = scan.current_clusters
    calls: list[int] = []
    monkeypatch.setattr(scan, "current_clusters", lambda *a, **k: calls.append(1) or whole(*a, **k))

    def sync() -> dict[str, int]:
        assert main(["sync", "--config", str(path), "--format", "json", "-q"]) == 0
        report = json.loads(capsys.readouterr().out)
        return {key: report[key] for key in ("clusters", "cross_unit_clusters")}

    def counted_whole() -> dict[str, int]:
        store = open_store(db)
        try:
            clusters, _relations = whole(store, Settings(db=db))
        finally:
            store.close()
        spans = [{c.canonical.unit, *(m.asset.unit for m in c.members)} for c in clusters]
        return {"clusters": len(clusters), "cross_unit_clusters": sum(len(s) > 1 for s in spans)}

    try:
        first = sync()
        assert calls == [1]  # no listing yet: the whole index, once
        # A copy of one of a's photos arrives in b: a new cross-unit duplicate.
        photo = sorted(units["a"].glob("*.jpg"))[0]
        shutil.copy(photo, units["b"] / f"copy of {photo.name}")
        calls.clear()
        second = sync()
        assert calls == [], "the sync clustered the whole index again"
    finally:
        structlog.reset_defaults()
    assert second == counted_whole()
    assert second["cross_unit_clusters"] >= first["cross_unit_clusters"] >= 1
