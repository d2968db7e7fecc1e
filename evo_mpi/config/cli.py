"""The command line: argparse flags mirroring :class:`~.schema.Config` 1:1, and ``--config`` / ``--resume``.

Precedence: built-in defaults < ``--config FILE`` < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .fileformat import load_toml
from .schema import (
    DICT_FIELDS,
    FIELDS,
    RESUME_OVERRIDABLE,
    TUPLE_FIELDS,
    Config,
    ConfigError,
    choices_of,
    parse_json_object,
    parse_tuple,
)


def _parse_hparam(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"invalid --search-space {text!r}: expected NAME=PRIOR")
    return name.strip(), spec.strip()


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every option shows its default, none sets one (files may)."""
    parser = argparse.ArgumentParser(
        prog="evo-mpi",
        description="Population-Based Training of SB3 agents over MPI. "
        "Run under 'mpiexec -n N' or as a single process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    defaults = Config()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"help": f.metadata["help"] + f" (default: {_show(default)})"}
        if f.name in TUPLE_FIELDS:
            kwargs["type"] = parse_tuple(f.name, TUPLE_FIELDS[f.name])
        elif f.name == "search_space":
            kwargs.update(type=_parse_hparam, action="append", metavar="NAME=PRIOR")
            kwargs["help"] = f.metadata["help"]
        elif f.name in DICT_FIELDS:
            kwargs.update(type=parse_json_object(f.name), metavar="JSON")
        elif isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(default)
        if "choices" in f.metadata:
            kwargs["choices"] = choices_of(f.name)
            kwargs["type"] = str.lower  # --algo SAC names the same algorithm as --algo sac
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--config", metavar="FILE", help="TOML file with any of the options above (flags override it).")
    parser.add_argument(
        "--print-config", action="store_true", help="Print the resolved configuration as TOML and exit."
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="Continue the run in RUN_DIR from its last complete checkpoint with its saved options; only "
        + ", ".join("--" + n.replace("_", "-") for n in RESUME_OVERRIDABLE if n != "run_dir")
        + " may change.",
    )
    return parser


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value == "" or value == {}:
        return "see description"
    return str(value)


@dataclass(frozen=True)
class Parsed:
    """The raw inputs: config-file values, CLI values, and CLI-only switches."""

    file_values: dict[str, Any]
    cli_values: dict[str, Any]
    config_file: str | None
    print_config: bool
    resume: str | None


def parse(argv: Sequence[str] | None) -> Parsed:
    """Parse argv and read ``--config``; raise ConfigError (never exit) on a bad flag."""
    parser = build_parser()

    def fail(message: str) -> None:
        raise ConfigError([message])

    parser.error = fail  # type: ignore[method-assign,assignment]
    args = parser.parse_args(argv)
    config_file = getattr(args, "config", None)
    file_values = load_toml(config_file) if config_file else {}
    cli = {k: v for k, v in vars(args).items() if k in FIELDS}
    return Parsed(
        file_values, cli, config_file, bool(getattr(args, "print_config", False)), getattr(args, "resume", None)
    )
