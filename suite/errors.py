"""Errors the CLI turns into exit code 2 (bad input, named precisely)."""

from algorithms.config import ConfigError as UserError
from algorithms.config import closest_first, unknown

__all__ = ["UserError", "closest_first", "unknown"]
