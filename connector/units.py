"""From a configuration to live adapters, one per unit: the registry finds the
platform's adapter, its settings model checks the unit's keys, and secrets
come from the environment only."""

from __future__ import annotations

import os
import typing
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from adapters.base import Adapter, AdapterError
from adapters.registry import UnknownPlatform, adapter_class
from connector.core.config import Config, ConfigError, describe, env_prefix


def secret_fields(model: type[Any]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if annotation is SecretStr or SecretStr in typing.get_args(annotation):
            names.append(name)
    return names


def build_adapters(config: Config, only: list[str] | None = None) -> dict[str, Adapter[Any]]:
    """Adapters of the configured units (or of `only`), in the file's order."""
    if only:
        unknown = [name for name in only if name not in config.units]
        if unknown:
            raise ConfigError(
                f"unknown unit(s) {', '.join(unknown)}; configured: {', '.join(config.units)}"
            )
    adapters: dict[str, Adapter[Any]] = {}
    for name, unit in config.units.items():
        if only and name not in only:
            continue
        adapters[name] = build_adapter(name, unit.platform, unit.adapter_options)
    return adapters


def build_adapter(name: str, platform: str, options: dict[str, Any]) -> Adapter[Any]:
    cls, settings = unit_settings(name, platform, options)
    try:
        return cls(settings)
    except AdapterError as exc:
        raise ConfigError(f"unit {name}: {exc}") from exc


def unit_settings(
    name: str, platform: str, options: dict[str, Any]
) -> tuple[type[Adapter[Any]], BaseSettings]:
    """The unit's adapter class and its checked settings (secrets from the
    environment), without contacting the platform."""
    try:
        cls = adapter_class(platform)
    except UnknownPlatform as exc:
        raise ConfigError(f"unit {name}: platform: {exc}") from exc
    model = cls.settings_model
    prefix = env_prefix(name)
    for key in secret_fields(model):
        if key in options:
            raise ConfigError(
                f"unit {name}: {key}: a secret must not be written in the configuration "
                f"file; set the environment variable {prefix}{key.upper()} instead"
            )
    # As for the process settings, the environment wins over the file.
    given = {key: value for key, value in options.items() if prefix + key.upper() not in os.environ}
    try:
        settings = model(_env_prefix=prefix, **given)
    except ValidationError as exc:
        raise ConfigError(describe(exc, f"unit {name}: ")) from exc
    return cls, settings
