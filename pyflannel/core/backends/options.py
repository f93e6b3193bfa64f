"""Decoding a Backend object's options the way Go's JSON decoder does, with errors naming the field and value.

Keys are case-insensitive (Go matches struct fields that way); a missing key means the default; a value of
the wrong type or out of range is a ConfigError prefixed as flannel prefixes that backend's errors.
"""

from __future__ import annotations

from typing import Any

from pyflannel.core.errors import ConfigError, shorten_json


class BackendOptions:
    """The Backend object of one config, read field by field."""

    def __init__(self, backend: dict[str, Any], prefix: str) -> None:
        self.d = {k.lower(): v for k, v in backend.items()}
        self.prefix = prefix  # e.g. "error decoding VXLAN backend config"

    def get(self, name: str) -> Any:
        return self.d.get(name.lower())

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.prefix}: {name} must be an integer, got {shorten_json(v)}")
        if not lo <= v <= hi:
            raise ConfigError(f"{self.prefix}: {name} out of range {lo}..{hi}, got {v}")
        return v

    def flag(self, name: str) -> bool:
        v = self.get(name)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise ConfigError(f"{self.prefix}: {name} must be true or false, got {shorten_json(v)}")
        return v
