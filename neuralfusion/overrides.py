"""`--config FILE.json|.toml` and `--set key=value` applied to any settings dataclass (TrainConfig, CgaConfig,
the encoder's configs), one parser for every command.

Unknown keys and values that do not parse as the field's type are errors that list what is allowed
(nanoGPT's configurator behaviour, without exec), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from neuralfusion.config_file import read_config_file

__all__ = ["apply_overrides"]


def apply_overrides(base: Any, pairs: list[str] | tuple[str, ...], config_path: Path | None = None) -> Any:
    """A copy of dataclass `base` updated from a config file (JSON or TOML, `read_config_file`) and then from
    `key=value` strings.

    Values are parsed as JSON (so `lr=1e-3`, `periods=[40,16]`, `fusion="concat"` or `fusion=concat`
    work) and must match the field's current type; unknown keys are refused, listing the known ones.
    """
    fields = {f.name: f for f in dataclasses.fields(base)}
    updates: dict[str, Any] = read_config_file(config_path) if config_path else {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"override {pair!r} is not key=value")
        try:
            updates[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            updates[key.strip()] = raw  # a bare word is a string
    unknown = sorted(set(updates) - set(fields))
    if unknown:
        raise ValueError(f"{type(base).__name__}: unknown keys {unknown}; known keys are {sorted(fields)}")
    for key, value in updates.items():
        current = getattr(base, key)
        if isinstance(current, tuple) and isinstance(value, list):
            updates[key] = tuple(value)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            updates[key] = float(value)
        elif type(current) is not type(updates[key]):
            raise ValueError(f"{type(base).__name__}.{key} must be {type(current).__name__}, got {value!r}")
    return dataclasses.replace(base, **updates)
