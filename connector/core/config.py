"""The configuration file: process settings and the editorial units.

```toml
[damdup]                     # any Settings field; DAMDUP_* variables win
db = ".damdup/index.sqlite"

[units.kaupunginmuseo]
platform = "resourcespace"   # a kind of adapters/registry.py
schedule = "6h"              # how often the daemon syncs it
writes = false               # write-back stays a dry run until this is true
base_url = "https://..."     # the rest is the adapter's own settings
[units.kaupunginmuseo.metadata]
location = "field3"
```

Secrets never live in the file: each unit reads them from the environment as
`DAMDUP_<UNIT>_<KEY>` (the unit name upper-cased, `-` as `_`). Any other key
may come from there too, and the environment wins over the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connector.core.dburl import holds_password
from connector.core.settings import Settings

UNIT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
SCHEDULE = re.compile(r"^(\d+)\s*(s|m|h|d)$")
SCHEDULE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """A bad configuration, with the unit and key it is about."""


class UnitConfig(BaseModel):
    """What every unit has, whatever its platform; the rest of the unit's table
    is its adapter's settings, checked by that adapter's model."""

    model_config = ConfigDict(extra="allow", frozen=True)

    platform: str
    title: str | None = None
    # `damdup daemon` syncs the unit every `schedule` (with jitter); push and
    # webhook checks write marks only where `writes` is true.
    schedule: str = Field(
        "6h", description="sync interval: seconds, minutes, hours or days (90s, 15m, 6h, 1d)"
    )
    writes: bool = Field(False, description="write marks back to the platform (else dry run)")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        match = SCHEDULE.match(value.strip())
        if not match or int(match.group(1)) == 0:
            raise ValueError(f"{value!r} is not an interval such as 90s, 15m, 6h or 1d")
        return value.strip()

    @property
    def interval_s(self) -> int:
        match = SCHEDULE.match(self.schedule)
        assert match is not None
        return int(match.group(1)) * SCHEDULE_SECONDS[match.group(2)]

    @property
    def adapter_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path | None = None
    settings: Settings
    units: dict[str, UnitConfig]


def env_prefix(unit: str) -> str:
    return f"DAMDUP_{unit.upper().replace('-', '_')}_"


def _where(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def describe(exc: ValidationError, prefix: str) -> str:
    return "; ".join(f"{prefix}{_where(error['loc'])}: {error['msg']}" for error in exc.errors())


def holds_credentials(value: Any) -> bool:
    """Whether a value is (or holds) a URL with a user name or password."""
    if isinstance(value, dict):
        return any(holds_credentials(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds_credentials(item) for item in value)
    if not isinstance(value, str) or "://" not in value:
        return False
    try:
        return "@" in urlsplit(value.strip()).netloc
    except ValueError:
        return False


def _refuse_credentials(path: Path, process: dict[str, Any]) -> None:
    """No process setting takes credentials: a URL holding a user name or
    password would be printed in messages and logs. The database URL in db
    may name its role (not a secret), never its password: libpq reads that
    from $PGPASSWORD or ~/.pgpass. Refused, naming the setting and never
    repeating the value."""

    def refused(field: str, value: Any) -> bool:
        if field in ("db", "broker"):
            return isinstance(value, str) and "://" in value and holds_password(value)
        return holds_credentials(value)

    where = [f"damdup.{key}" for key, value in process.items() if refused(key, value)]
    where += [
        f"DAMDUP_{field.upper()}"
        for field in Settings.model_fields
        # The broker's password has nowhere else to go: $DAMDUP_BROKER is its place.
        if field != "broker" and refused(field, os.environ.get(f"DAMDUP_{field.upper()}"))
    ]
    if not where:
        return
    if all(name in ("damdup.db", "DAMDUP_DB") for name in where):
        raise ConfigError(
            f"{path}: {', '.join(where)}: a database URL must not hold a password: "
            "give it in $PGPASSWORD or ~/.pgpass"
        )
    if where == ["damdup.broker"]:
        raise ConfigError(
            f"{path}: damdup.broker: a broker URL in the file must not hold a password: "
            "give the whole URL in $DAMDUP_BROKER instead"
        )
    raise ConfigError(f"{path}: {', '.join(where)}: a URL must not hold a user name or password")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"{path}: cannot be read: {why}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot be read: not UTF-8 ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _process_settings(path: Path, process: Any, base: Settings | None) -> Settings:
    """The [damdup] table under the environment and `base`'s explicit values."""
    if not isinstance(process, dict):
        raise ConfigError(f"{path}: [damdup] must be a table")
    _refuse_credentials(path, process)
    # Environment variables win over the file, as operators expect.
    from_file = {k: v for k, v in process.items() if f"DAMDUP_{k.upper()}" not in os.environ}
    overrides = base.model_dump(exclude_unset=True) if base is not None else {}
    try:
        settings = Settings(**{**from_file, **overrides})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc, 'damdup.')}") from exc
    problem = settings.engine_problem()
    if problem is not None:
        raise ConfigError(f"{path}: damdup.broker: {problem}")
    return settings


def _units(path: Path, units_table: Any) -> dict[str, UnitConfig]:
    if not isinstance(units_table, dict) or not units_table:
        raise ConfigError(f"{path}: no [units.<name>] tables: nothing to sync")
    units: dict[str, UnitConfig] = {}
    for name, table in units_table.items():
        if not UNIT_NAME.match(name):
            raise ConfigError(
                f"{path}: unit name {name!r}: use lower-case letters, digits, - and _ "
                "(it becomes part of environment variable names)"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: units.{name} must be a table")
        clash = next((other for other in units if env_prefix(other) == env_prefix(name)), None)
        if clash is not None:
            raise ConfigError(
                f"{path}: units {clash!r} and {name!r} would read the same environment "
                f"variables ({env_prefix(name)}*); rename one"
            )
        try:
            units[name] = UnitConfig(**table)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {describe(exc, f'unit {name}: ')}") from exc
    return units


def load_config(path: Path | str, base: Settings | None = None) -> Config:
    """Read and check a configuration file. Every problem is a ConfigError
    that names the file, the unit and the key."""
    path = Path(path)
    raw = _read_toml(path)
    unknown = set(raw) - {"damdup", "units"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; expected [damdup], [units]")
    settings = _process_settings(path, raw.get("damdup", {}), base)
    units = _units(path, raw.get("units", {}))
    for unit in settings.authoritative_units:
        if unit not in units:
            raise ConfigError(f"{path}: damdup.authoritative_units names unknown unit {unit!r}")
    return Config(path=path, settings=settings, units=units)
