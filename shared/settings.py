"""Settings: one pydantic-settings class per service, env vars over a YAML file over code defaults.

Each service subclasses ``ServiceSettings`` with its own ``env_prefix`` (``INTERFACE_``, ``LLM_``,
``SELFIE_``, ``IMAGE_``) and ``yaml_section``. ``CONFIG_FILE`` names an optional YAML file whose
``common:`` section applies to every service and whose ``<yaml_section>:`` section applies to one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "changethis", "secret", "token", "password", "xxx"}


def parse_str_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string, so one env var can replace a pod URL."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _strip_url(url: Any) -> Any:
    return url.strip().rstrip("/") if isinstance(url, str) else url


def parse_url_list(value: Any) -> Any:
    value = parse_str_list(value)
    if isinstance(value, list):
        return [_strip_url(v) for v in value]
    return value


UrlList = Annotated[list[str], NoDecode, BeforeValidator(parse_url_list)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(parse_str_list)]


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


# A model repo's revision (a commit pins it; a tag or branch follows it). deploy.env's empty "KEY=" is
# none: the main branch at fetch time, never the revision "".
Revision = Annotated[str | None, BeforeValidator(_blank_is_none)]


class YamlSectionSource(PydanticBaseSettingsSource):
    """Reads ``common`` then ``<section>`` from the YAML file named by ``CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        self._data = self._load(section)

    @staticmethod
    def _load(section: str) -> dict[str, Any]:
        path = os.environ.get("CONFIG_FILE")
        if not path:
            return {}
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"CONFIG_FILE={path} does not exist")
        doc = yaml.safe_load(file.read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"CONFIG_FILE={path} must hold a mapping")
        merged: dict[str, Any] = {}
        for key in ("common", section):
            part = doc.get(key) or {}
            if not isinstance(part, dict):
                raise ValueError(f"CONFIG_FILE={path}: section {key!r} must be a mapping")
            merged.update(part)
        return merged

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {k: v for k, v in self._data.items() if k in fields}


class LayeredSettings(BaseSettings):
    """Env vars over the ``CONFIG_FILE`` YAML (``common:`` then ``<yaml_section>:``) over code defaults."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "common"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            YamlSectionSource(settings_cls, cls.yaml_section),
            file_secret_settings,
        )


class ServiceSettings(LayeredSettings):
    """What every service has: how it logs, the internal token, body limits, drain.

    Where a service listens, and how its connections are bounded, is the server's business
    (``shared/serve.py`` with ``shared/edge_limits.py``), so it is not here.
    """

    log_level: str = "info"
    # Workers and the LLM demand it on every route but /healthz; the interface sends it on every call.
    internal_token: SecretStr | None = None
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Non-multipart bodies (JSON): the largest valid request (50 history turns) is about 100 kB.
    max_json_bytes: int = Field(1024 * 1024, ge=1024)
    # On SIGTERM: readiness drops, new requests get 503 + Retry-After, accepted ones may run this long.
    # At least the longest request timeout of the service; the pod's stop grace period must exceed it.
    drain_timeout_s: float = Field(330.0, gt=0)
    # Tests only: exposes /v1/test/gate, which parks requests at a known point (shared/test_hooks.py).
    test_hooks: bool = False

    @field_validator("internal_token")
    @classmethod
    def _refuse_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if not raw:
            return None
        if raw.lower() in _PLACEHOLDER_SECRETS:
            raise ValueError("internal_token is a placeholder; set a real secret or leave it unset")
        return SecretStr(raw)
