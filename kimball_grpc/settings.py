"""Settings: parsed and validated once at start-up into one typed object.

Sources, later ones winning: built-in defaults, the original's Erlang-terms
config file (``app.config``: ``[{features, [...]}]``), environment variables,
command-line flags. Nothing else in Kimball reads the environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from kimball_grpc.counter_config import CounterConfig
from kimball_grpc.erlang_terms import Atom, ErlangTermError, parse_terms_with_lines
from kimball_grpc.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/kimball/app.config")


class Mode(StrEnum):
    API = "api"
    SIDECAR = "sidecar"


@dataclass(frozen=True)
class PredictionTarget:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start."""

    grpc_host: str = "[::]"
    grpc_port: int = 50051
    api_port: int = 8080
    data_dir: Path = Path("kimball-data")
    config_path: Path | None = None
    mode: Mode = Mode.API
    analytics_host: str = ""
    namespace: str = "default"
    additional_namespaces: tuple[str, ...] = ()
    storage_path_prefix: str = ""
    log_level: str = "INFO"
    kubernetes_memory_limit: int | None = None
    site: str = ""
    cluster: str = ""
    counter_config: CounterConfig = field(default_factory=CounterConfig)
    counter_startup_delay_ms: int = 0
    api_auth: bool = True
    api_auth_tokens: tuple[str, ...] = ()
    external_grpc_event_targets: tuple[tuple[str, int], ...] = ()
    external_grpc_prediction_targets: tuple[PredictionTarget, ...] = ()


def load_settings(
    environ: Mapping[str, str],
    config_path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Defaults, then the config file, then ``environ``, then ``overrides`` (CLI flags)."""
    settings = Settings()
    path = config_path or _env_path(environ, "KIMBALL_CONFIG")
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        settings = replace(settings, config_path=path, **read_config_file(path))
    settings = replace(settings, **_from_environment(environ))
    return replace(settings, **{k: v for k, v in (overrides or {}).items() if v is not None})


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "")
    return Path(value) if value else None


def _whole_number(name: str, value: str, meaning: str) -> int:
    # int() would also take "1_000", " 80" and non-ASCII digits.
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(f"{name} must be {meaning}, got {value!r}")
    return int(value)


def parse_port(name: str, value: str) -> int:
    """A port number from text (a flag or a variable called ``name``), or ``ConfigError``."""
    port = _whole_number(name, value, "a port number")
    if port > 65535:
        raise ConfigError(f"{name} must be between 0 and 65535, got {port}")
    return port


def _from_environment(environ: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    api_port = environ.get("API_PORT") or environ.get("PORT")
    if api_port:
        out["api_port"] = parse_port("API_PORT" if environ.get("API_PORT") else "PORT", api_port)
    if environ.get("GRPC_PORT"):
        out["grpc_port"] = parse_port("GRPC_PORT", environ["GRPC_PORT"])
    if environ.get("FEATURES_MODE"):
        try:
            out["mode"] = Mode(environ["FEATURES_MODE"])
        except ValueError:
            raise ConfigError(
                f"FEATURES_MODE must be api or sidecar, got {environ['FEATURES_MODE']!r}"
            ) from None
    if environ.get("ANALYTICS_HOST"):
        out["analytics_host"] = environ["ANALYTICS_HOST"]
    if environ.get("NAMESPACE"):
        out["namespace"] = environ["NAMESPACE"]
    if environ.get("ADDITIONAL_NAMESPACES"):
        names = [n.strip() for n in environ["ADDITIONAL_NAMESPACES"].split(",")]
        out["additional_namespaces"] = tuple(n for n in names if n)
    if environ.get("STORAGE_PATH_PREFIX"):
        out["storage_path_prefix"] = environ["STORAGE_PATH_PREFIX"]
    if environ.get("LOG_LEVEL"):
        level = environ["LOG_LEVEL"].upper()
        if level not in logging.getLevelNamesMapping():
            raise ConfigError(f"LOG_LEVEL {environ['LOG_LEVEL']!r} is not a log level")
        out["log_level"] = level
    if environ.get("KUBERNETES_MEMORY_LIMIT"):
        limit = _whole_number(
            "KUBERNETES_MEMORY_LIMIT", environ["KUBERNETES_MEMORY_LIMIT"], "a number of bytes"
        )
        if limit < 1:
            raise ConfigError(f"KUBERNETES_MEMORY_LIMIT must be at least 1 byte, got '{limit}'")
        out["kubernetes_memory_limit"] = limit
    if environ.get("KIMBALL_DATA_DIR"):
        out["data_dir"] = Path(environ["KIMBALL_DATA_DIR"])
    return out


def read_config_file(path: Path) -> dict[str, object]:
    """Settings from an ``app.config`` file; ``ConfigError`` names the file and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        terms, line_of = parse_terms_with_lines(text, str(path))
    except ErlangTermError as exc:
        raise ConfigError(str(exc)) from None
    features: list[object] = []
    for term in terms:
        if not isinstance(term, list):
            raise ConfigError(f"{path}: expected a list like [{{features, [...]}}]")
        for app in term:
            if isinstance(app, tuple) and len(app) == 2 and app[0] == Atom("features"):
                if not isinstance(app[1], list):
                    raise ConfigError(f"{path}: {{features, ...}} must hold a list")
                features.extend(app[1])
    return _features(path, features, line_of)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, Atom):
        return value.name
    return None


def _plain(value: object) -> object:
    """Erlang terms to plain Python: atoms and binaries become str, recursively."""
    if isinstance(value, Atom | bytes):
        return _text(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _features(
    path: Path, entries: list[object], line_of: Callable[[object], int | None]
) -> dict[str, object]:
    out: dict[str, object] = {}
    for entry in entries:
        where = f"{path}:{line_of(entry)}" if line_of(entry) else str(path)
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Atom)):
            raise ConfigError(f"{where}: each setting must be {{key, value}}, got {entry!r}")
        key, raw = entry[0].name, entry[1]
        value = _plain(raw)

        def fail(problem: str, key: str = key, where: str = where) -> ConfigError:
            return ConfigError(f"{where}: setting {key}: {problem}")

        if key in ("site", "cluster"):
            if not isinstance(value, str):
                raise fail("must be a string")
            out[key] = value
        elif key == "counters":
            if not isinstance(value, dict) or not isinstance(value.get("init", []), list):
                raise fail("must be a map #{init => [rule, ...]}")
            try:
                out["counter_config"] = CounterConfig.from_mappings(value.get("init", []))
            except ConfigError as exc:
                # Point at the rule itself: its map in the file, by its 1-based number.
                rules = raw.get(Atom("init"), []) if isinstance(raw, dict) else []
                number = int(exc.details.get("rule", "0"))
                line = line_of(rules[number - 1]) if 0 < number <= len(rules) else None
                raise fail(exc.message, where=f"{path}:{line}" if line else where) from None
        elif key == "counter_startup_delay":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail("must be a whole number of milliseconds >= 0")
            out["counter_startup_delay_ms"] = value
        elif key == "api_auth":
            if value not in ("enable", "disable"):
                raise fail("must be enable or disable")
            out["api_auth"] = value == "enable"
        elif key == "api_auth_tokens":
            if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
                raise fail('must be a list of tokens like [<<"SECRET">>]')
            out["api_auth_tokens"] = tuple(value)
        elif key == "external_grpc_event_targets":
            out["external_grpc_event_targets"] = tuple(
                _target(fail, t, named=False) for t in _list(fail, value)
            )
        elif key == "external_grpc_prediction_targets":
            out["external_grpc_prediction_targets"] = tuple(
                PredictionTarget(*_target(fail, t, named=True)) for t in _list(fail, value)
            )
        else:
            raise fail("unknown setting")
    return out


def _list(fail, value: object) -> list[object]:
    if not isinstance(value, list):
        raise fail("must be a list")
    return value


def _target(fail, value: object, *, named: bool) -> tuple:
    shape = '{"name", "host", port}' if named else '{"host", port}'
    size = 3 if named else 2
    if not (isinstance(value, tuple) and len(value) == size):
        raise fail(f"each target must be {shape}, got {value!r}")
    *texts, port = value
    if not all(isinstance(t, str) and t for t in texts):
        raise fail(f"each target must be {shape}, got {value!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise fail(f"port must be between 1 and 65535, got {port!r}")
    return (*texts, port)


def environment() -> Mapping[str, str]:
    """The process environment: read here, at start-up, and nowhere else."""
    return os.environ
