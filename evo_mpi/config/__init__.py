"""Run configuration: the schema, the CLI, the TOML file format, validation and resume checks, one module each.

Precedence: built-in defaults < ``--config FILE`` < command-line flags.
:func:`validate` reports every problem with its offending value before any
rank does expensive work.
"""

from .cli import Parsed, build_parser, parse
from .fileformat import load_toml, merge, to_toml
from .resume import differences, from_saved
from .schema import (
    EXIT_CONFIG_ERROR,
    EXPLORE_CHOICES,
    FIELDS,
    RESUME_OVERRIDABLE,
    SELECTION_CHOICES,
    Config,
    ConfigError,
    choices_of,
)
from .validation import resolve_env, resolve_member, validate

__all__ = [
    "EXIT_CONFIG_ERROR",
    "EXPLORE_CHOICES",
    "FIELDS",
    "RESUME_OVERRIDABLE",
    "SELECTION_CHOICES",
    "Config",
    "ConfigError",
    "Parsed",
    "build_parser",
    "choices_of",
    "differences",
    "from_saved",
    "load_toml",
    "merge",
    "parse",
    "resolve_env",
    "resolve_member",
    "to_toml",
    "validate",
]
