"""Configuration files for test servers, written as a user would write them:
unit tables in TOML, secrets moved into the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.registry import adapter_class
from connector.core.config import env_prefix
from connector.units import secret_fields


def write_config(
    path: Path, db: Path, units: dict[str, tuple[str, dict[str, Any]]], **process: Any
) -> dict[str, str]:
    """Write `path` for `units` (name -> (platform, settings)); return the
    environment variables that carry the units' secrets."""
    env: dict[str, str] = {}
    lines = [f"[damdup]\ndb = {toml_value(str(db))}"]
    lines.extend(f"{key} = {toml_value(value)}" for key, value in process.items())
    lines.append("")
    for unit, (platform, given) in units.items():
        settings = dict(given)
        for key in secret_fields(adapter_class(platform).settings_model):
            if settings.get(key) is not None:
                env[f"{env_prefix(unit)}{key.upper()}"] = str(settings.pop(key))
        lines.append(unit_table(unit, platform, settings))
    path.write_text("\n".join(lines))
    return env


def unit_table(unit: str, platform: str, settings: dict[str, Any]) -> str:
    body = [f"[units.{unit}]", f'platform = "{platform}"']
    nested: list[str] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            nested.append(f"[units.{unit}.{key}]")
            nested.extend(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        elif value is not None:
            body.append(f"{key} = {toml_value(value)}")
    return "\n".join(body + nested) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string
