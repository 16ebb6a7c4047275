"""Flags shared by every job, and the rule that a user error is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from ups.config import ConfigError, LoadedConfig, load_config
from ups.run import default_name


def parser(job: str, description: str, *, config_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m ray_jobs.{job}", description=description)
    p.add_argument("--config", required=config_required, metavar="PATH", help="YAML config (may `include:` others)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a dotted key with a YAML value; repeatable",
    )
    p.add_argument("--name", help="run name (default: config name + UTC time); the same name resumes the run")
    p.add_argument(
        "--storage",
        default="runs",
        metavar="PATH_OR_URI",
        help="where runs live: a folder, or s3://, gs://, file:// (default: runs/)",
    )
    return p


def load(args: argparse.Namespace) -> tuple[LoadedConfig, str]:
    loaded = load_config(args.config, args.overrides)
    return loaded, args.name or default_name(loaded.name)


def user_errors(main: Callable[[], int | None]) -> Callable[[], None]:
    """Turn ConfigError (bad config, flag or data file) into one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapped() -> None:
        try:
            code = main()
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(code or 0)

    return wrapped
