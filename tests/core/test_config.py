"""The configuration file: every mistake names the file, the unit and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.core.config import ConfigError, load_config

GOOD = """
[damdup]
workers = 1
authoritative_units = ["museum"]

[units.museum]
platform = "filesystem"
root = "/tmp"
schedule = "30m"

[units.hel-fi]
platform = "wordpress"
base_url = "https://www.hel.fi/"
writes = true
[units.hel-fi.metadata]
location = "acf.location"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "damdup.toml"
    path.write_text(text)
    return path


def test_a_good_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert list(config.units) == ["museum", "hel-fi"]
    museum, helfi = config.units["museum"], config.units["hel-fi"]
    assert museum.interval_s == 1800 and museum.writes is False
    assert helfi.writes is True and helfi.interval_s == 6 * 3600
    assert helfi.adapter_options == {
        "base_url": "https://www.hel.fi/",
        "metadata": {"location": "acf.location"},
    }
    assert config.settings.workers == 1
    assert config.settings.authoritative_units == ["museum"]


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAMDUP_WORKERS", "3")
    assert load_config(write(tmp_path, GOOD)).settings.workers == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[units.a]\nplatform = 'filesystem'\nschedule = 'often'", "unit a: schedule: .*'often'"),
        ("[units.a]\nschedule = '1h'", "unit a: platform: Field required"),
        ("[units.A]\nplatform = 'filesystem'", "unit name 'A'"),
        ("[damdup]\nworkers = 0\n[units.a]\nplatform = 'x'", "damdup.workers: .*greater"),
        ("[damdup]\nauthoritative_units = ['b']\n[units.a]\nplatform = 'x'", "unknown unit 'b'"),
        ("[damdup]\nworkers = 1", "no \\[units.<name>\\] tables"),
        ("[units.a]\nplatform = 'filesystem'\nwrites = 'maybe'", "unit a: writes"),
        ("[unit.a]\nplatform = 'filesystem'", "unknown table"),
        ("[units.a\nplatform = 1", "not valid TOML"),
    ],
)
def test_bad_files_name_unit_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write(tmp_path, text))
    assert "damdup.toml" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_two_units_that_would_share_environment_variables(tmp_path: Path) -> None:
    text = "[units.hel-fi]\nplatform = 'filesystem'\n[units.hel_fi]\nplatform = 'filesystem'"
    with pytest.raises(ConfigError, match="'hel-fi' and 'hel_fi' would read the same"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("schedule", "seconds"), [("90s", 90), ("15m", 900), ("6h", 21600), ("1d", 86400)]
)
def test_schedules_in_seconds_minutes_hours_days(
    tmp_path: Path, schedule: str, seconds: int
) -> None:
    text = f"[units.a]\nplatform = 'filesystem'\nschedule = '{schedule}'"
    assert load_config(write(tmp_path, text)).units["a"].interval_s == seconds


def test_a_schedule_of_zero_seconds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unit a: schedule: .*'0s'"):
        load_config(write(tmp_path, "[units.a]\nplatform = 'filesystem'\nschedule = '0s'"))
