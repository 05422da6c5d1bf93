"""Config files for `--config`: JSON or TOML by suffix, read into a dict whose errors name the file and line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_SUFFIXES", "ConfigFileError", "read_config_file"]

CONFIG_SUFFIXES = (".json", ".toml")


class ConfigFileError(ValueError):
    """A config file that cannot be read as a table of settings; the message starts with the file."""


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The top-level table of a .json or .toml file; a parse error names the file and the line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigFileError(f"{path}: a config file must end in .json or .toml, not {path.suffix or 'nothing'!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path}: cannot read it ({err})") from None
    try:
        values = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigFileError(f"{path}: line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None
    except tomllib.TOMLDecodeError as err:  # its message ends in "(at line L, column C)"
        raise ConfigFileError(f"{path}: not valid TOML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"{path}: must hold a table of settings (an object), not a {type(values).__name__}")
    return values
