"""From a configuration to live adapters, one per unit: the registry finds the
platform's adapter, its settings model checks the unit's keys, and secrets
come from the environment only."""

from __future__ import annotations

import difflib
import os
import typing
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from adapters.base import Adapter, AdapterError, RequestObserver, reason
from adapters.registry import UnknownPlatform, adapter_class
from connector.core.config import Config, ConfigError, describe, env_prefix, holds_credentials


def secret_fields(model: type[Any]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if annotation is SecretStr or SecretStr in typing.get_args(annotation):
            names.append(name)
    return names


def build_adapters(
    config: Config, only: list[str] | None = None, observer: RequestObserver | None = None
) -> dict[str, Adapter[Any]]:
    """Adapters of the configured units (or of `only`), in the file's order;
    each tells `observer` of every request attempt it makes."""
    if only:
        unknown = [name for name in only if name not in config.units]
        if unknown:
            hints = "".join(
                f"did you mean {near[0]}? "
                for near in (difflib.get_close_matches(name, config.units, n=1) for name in unknown)
                if near
            )
            raise ConfigError(
                f"unknown unit(s) {', '.join(unknown)}; {hints}"
                f"configured: {', '.join(config.units)}"
            )
    adapters: dict[str, Adapter[Any]] = {}
    for name, unit in config.units.items():
        if only and name not in only:
            continue
        adapters[name] = build_adapter(name, unit.platform, unit.adapter_options, observer)
    return adapters


def link_adapters(
    config: Config | None, built: dict[str, Adapter[Any]] | None = None
) -> dict[str, Adapter[Any]]:
    """An adapter for every configured unit, for the links to its assets
    (`Adapter.link`): those already `built`, and the others built here. A
    canonical may sit on a unit the command does not read or write. A unit
    that cannot be built (a secret unset for a command that needs none of it)
    is left out: its assets get the link the engine gives without an adapter."""
    adapters = dict(built or {})
    if config is None:
        return adapters
    for name, unit in config.units.items():
        if name in adapters:
            continue
        try:
            adapters[name] = build_adapter(name, unit.platform, unit.adapter_options)
        except ConfigError:
            continue
    return adapters


def build_adapter(
    name: str, platform: str, options: dict[str, Any], observer: RequestObserver | None = None
) -> Adapter[Any]:
    cls, settings = unit_settings(name, platform, options)
    try:
        return cls(settings, observer=observer)
    except AdapterError as exc:
        raise ConfigError(f"unit {name}: {reason(exc)}") from exc


def unit_settings(
    name: str, platform: str, options: dict[str, Any]
) -> tuple[type[Adapter[Any]], BaseSettings]:
    """The unit's adapter class and its checked settings (secrets from the
    environment), without contacting the platform."""
    try:
        cls = adapter_class(platform)
    except UnknownPlatform as exc:
        raise ConfigError(f"unit {name}: platform: {reason(exc)}") from exc
    model = cls.settings_model
    prefix = env_prefix(name)
    secrets = secret_fields(model)
    # pydantic-settings matches keys without regard to case (case_sensitive is
    # False): APP_PASSWORD in the file would be read as app_password.
    for key in options:
        if key.lower() in secrets:
            raise ConfigError(
                f"unit {name}: {key}: a secret must not be written in the configuration "
                f"file; set the environment variable {prefix}{key.upper()} instead"
            )
    environment = {key.upper(): value for key, value in os.environ.items()}
    _refuse_credentials_in_urls(name, prefix, secrets, options, environment)
    for key in secrets:
        variable = prefix + key.upper()
        if variable in environment and not environment[variable].strip():
            raise ConfigError(
                f"unit {name}: the environment variable {variable} is empty; "
                "set it to the secret, or unset it"
            )
        if variable not in environment:
            near = _near_variable(variable, prefix, model, environment)
            if near:
                raise ConfigError(
                    f"unit {name}: {near} is set but {variable} is not: did you mean {variable}?"
                )
    # As for the process settings, the environment wins over the file.
    given = {
        key: value for key, value in options.items() if prefix + key.upper() not in environment
    }
    try:
        settings = model(_env_prefix=prefix, **given)
    except ValidationError as exc:
        message = describe(exc, f"unit {name}: ")
        unset = [
            prefix + key.upper()
            for key in secrets
            if prefix + key.upper() not in environment and key in message
        ]
        if unset:
            message += f" (secrets come from the environment: set {', '.join(unset)})"
        raise ConfigError(message) from exc
    return cls, settings


# Variables of a unit's prefix that are read elsewhere than its settings model.
OTHER_UNIT_VARIABLES = ("WEBHOOK_SECRET",)


def _near_variable(
    variable: str, prefix: str, model: type[BaseSettings], environment: dict[str, str]
) -> str | None:
    """A set DAMDUP_<UNIT>_* variable that reads like a mis-spelling of
    `variable` and is no other known name."""
    known = {prefix + field.upper() for field in model.model_fields}
    known.update(prefix + other for other in OTHER_UNIT_VARIABLES)
    candidates = [name for name in environment if name.startswith(prefix) and name not in known]
    near = difflib.get_close_matches(variable, candidates, n=1, cutoff=0.85)
    return near[0] if near else None


def _refuse_credentials_in_urls(
    name: str,
    prefix: str,
    secrets: list[str],
    options: dict[str, Any],
    environment: dict[str, str],
) -> None:
    """A user name or password inside a URL would be sent and logged with
    every address made from it; it is refused, without repeating it."""
    where = [key for key, value in options.items() if holds_credentials(value)]
    where += [
        variable
        for variable, value in environment.items()
        if variable.startswith(prefix)
        and variable.removeprefix(prefix).lower() not in secrets
        and holds_credentials(value)
    ]
    if not where:
        return
    if secrets:
        instead = "put the secret in the environment instead: " + ", ".join(
            prefix + key.upper() for key in secrets
        )
    else:
        instead = "this platform takes no credentials"
    raise ConfigError(
        f"unit {name}: {', '.join(where)}: a URL must not hold a user name or password; {instead}"
    )
