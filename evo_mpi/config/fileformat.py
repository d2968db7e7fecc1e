"""The TOML file format (``--config FILE``, ``RUN_DIR/config.toml``) and merging file values with flags."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

import tomli_w

from .schema import DICT_FIELDS, FIELDS, TUPLE_FIELDS, Config, ConfigError, parse_json_object, parse_tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def load_toml(path: str) -> dict[str, Any]:
    """Read a config file; errors name the file and the problem."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"--config {path!r}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"--config {path!r}: invalid TOML ({exc})"]) from None


def _coerce(name: str, value: Any, problems: list[str]) -> Any:
    """Type-check one file value against the dataclass default's type."""
    default = getattr(Config(), name)
    if name in TUPLE_FIELDS:
        cast = TUPLE_FIELDS[name]
        if isinstance(value, str):
            try:
                return parse_tuple(name, cast)(value)
            except argparse.ArgumentTypeError as exc:
                problems.append(str(exc))
                return default
        kinds = (int, float) if cast is float else (int,)
        if isinstance(value, list) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
            return tuple(cast(v) for v in value)
        problems.append(f"{name} = {value!r}: expected a list of {cast.__name__} values")
        return default
    if name in DICT_FIELDS:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):  # how to_toml writes a table TOML cannot hold (null)
            try:
                return parse_json_object(name)(value)
            except argparse.ArgumentTypeError as exc:
                problems.append(str(exc))
                return default
        problems.append(f"{name} = {value!r}: expected a table")
        return default
    if "choices" in FIELDS[name].metadata and isinstance(value, str):
        value = value.lower()
    if name == "search_space":
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        problems.append(f"search_space = {value!r}: expected a table of NAME = PRIOR")
        return default
    if name in ("target_fitness", "time_limit") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)  # text options that are usually numbers: target_fitness = 195, time_limit = 3600
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        problems.append(f"{name} = {value!r}: expected {type(default).__name__}")
        return default
    return value


def merge(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> Config:
    """Combine file and CLI values into a Config (no range checks; see :func:`validate`)."""
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in file_values.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            problems.append(f"unknown key {key!r} in config file")
            continue
        kwargs[name] = _coerce(name, value, problems)
    for name, value in cli_values.items():
        if name == "search_space":
            merged = dict(kwargs.get("search_space", {}))
            merged.update(dict(value))
            kwargs[name] = merged
        else:
            kwargs[name] = value
    if problems:
        raise ConfigError(problems)
    return Config(**kwargs)


def to_toml(cfg: Config) -> str:
    """Serialise a config as TOML that ``--config`` reads back.

    ``env_kwargs`` is written as a table when TOML can hold it, otherwise (a
    JSON null, say) as its JSON text, which ``--config`` also accepts.
    """
    data = cfg.to_dict()
    space = data.pop("search_space")
    for name in DICT_FIELDS:
        try:
            tomli_w.dumps({name: data[name]})
        except TypeError:
            data[name] = json.dumps(data[name])
    data["search_space"] = {key: space[key] for key in sorted(space)}
    return tomli_w.dumps(data)
