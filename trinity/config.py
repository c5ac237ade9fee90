"""Configuration trees (pydantic-settings): one model per process, filled from flags, then the
environment, then a TOML or JSON file, then the defaults.

``PoolConfig.load(path, port=9000)`` reads ``path`` (optional) underneath the environment and
the keyword overrides; nested sections merge key by key at every level.
"""

from __future__ import annotations

import contextvars
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["Section", "Settings", "config_error", "read_config_file"]

_FILE_DATA: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("trinity_config_file", default=None)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (``*.toml``) or JSON config file as nested dicts."""
    text = Path(path).read_text()
    data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings")
    return data


def _check_keys(model: type[BaseModel], data: Any) -> Any:
    if isinstance(data, Mapping):
        known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        if unknown := set(data) - known:
            raise ValueError(f"{model.__name__}: unknown keys {sorted(unknown)}")
    return data


class Section(BaseModel):
    """A frozen section of a configuration tree; unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _check_keys(cls, data)


class _ConfigFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get() or {})


class Settings(BaseSettings):
    """The root of a process's configuration tree (``env_prefix`` set by each subclass)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_nested_delimiter="__",
                                      nested_model_default_partial_update=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _check_keys(cls, data)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, *cls.extra_sources(settings_cls), _ConfigFileSource(settings_cls)

    @classmethod
    def extra_sources(cls, settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
        """Sources between the environment and the file (e.g. a well-known variable of another tool)."""
        return ()

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """Defaults < ``path`` < environment < ``overrides`` (keys whose value is ``None`` are ignored)."""
        token = _FILE_DATA.set(read_config_file(path) if path else {})
        try:
            return cls(**_drop_none(overrides))
        finally:
            _FILE_DATA.reset(token)


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def config_error(exc: Exception) -> str:
    """A one-line reason for a configuration that does not validate (``field: problem; ...``)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors())

