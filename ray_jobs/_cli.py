"""Flags shared by every job, and the rule that a user error is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import functools
import os
import posixpath
import sys
from collections.abc import Callable

from ups.config import ConfigError, LoadedConfig, load_config
from ups.names import MAX_LEN, check_name, slug
from ups.rundir import default_name
from ups.storage import check_storage, redact


def parser(job: str, description: str, *, run_flags: bool = True) -> argparse.ArgumentParser:
    """The flags every config-driven job takes; `run_flags`: also --name and --storage (jobs that
    write a run or a sweep)."""
    p = argparse.ArgumentParser(prog=f"python -m ray_jobs.{job}", description=description)
    p.add_argument("--config", required=True, metavar="PATH", help="YAML config (may `include:` others)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a dotted key with a YAML value; repeatable",
    )
    if run_flags:
        p.add_argument("--name", help="run name (default: config name + UTC time); the same name resumes the run")
        p.add_argument(
            "--storage",
            default="runs",
            metavar="PATH_OR_URI",
            help="where runs live: a folder (relative to the working directory), or s3://, gs://, file:///abs "
            "(default: runs/)",
        )
    p.add_argument("--validate-only", action="store_true", help="check config, flags and data; print what would run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.add_argument(
        "--verbose", action="store_true", help="show Ray's own console output (its logs are on disk either way)"
    )
    return p


def environment() -> None:
    """The environment variables every job reads, put right or refused before anything uses them:
    WANDB_MODE in W&B's own spelling (`OFFLINE` -> offline, empty -> unset), RAY_ADDRESS well-formed."""
    from ups.ray_session import check_address
    from ups.tracking import normalise_env

    normalise_env()
    check_address()


def load(args: argparse.Namespace) -> tuple[LoadedConfig, str]:
    """The config and the run name, after the flags that become paths are checked (before Ray, before writes)."""
    if getattr(args, "verbose", False):
        os.environ["UPS_VERBOSE"] = "1"  # read by ups.ray_session when it starts or joins Ray
    environment()
    name = getattr(args, "name", None)
    if hasattr(args, "storage"):
        check_storage(args.storage)
    if name is not None:  # `--name ''` is a bad name, not "no name"
        check_name("--name", name)
        from ups.champions import REGISTRY

        if name == REGISTRY:
            where = f"{redact(args.storage)}/{REGISTRY}/" if hasattr(args, "storage") else f"{{storage}}/{REGISTRY}/"
            raise ConfigError(f"--name {name}: reserved for the champions' registry ({where})")
    loaded = load_config(args.config, args.overrides)
    if name is not None:
        return loaded, name
    # The config file's stem may hold anything a file name can; the default must still be one segment.
    stem = slug(loaded.name, MAX_LEN - len(default_name("")))
    return loaded, check_name("--name", default_name(stem))


def print_config(loaded: LoadedConfig) -> int:
    from ups.config import digest, to_yaml

    print(to_yaml(loaded.cfg) + f"# digest: {digest(loaded.cfg)}")
    return 0


def validated(lines: list[str]) -> int:
    """`--validate-only`'s report: what would run, then OK (an error ends earlier, with its one line)."""
    print("\n".join(lines))
    print("OK")
    return 0


def run_folder(run: str) -> tuple[str, str]:
    """`--run {storage}/{name}` as (storage, name), both checked like --storage and --name are."""
    environment()
    base, sep, query = run.partition("?")  # a cloud URI's query (region, endpoint) belongs to the storage
    parent, name = posixpath.split(base.rstrip("/"))
    storage = (parent or ".") + sep + query
    check_storage(storage, "--run")
    check_name("--run", name)
    return storage, name


def model_source(model: str, storage: str) -> str:
    """`--model`: a run folder, an artifact folder or a registry family, as a path or URI; a bare
    `registry/FAMILY` that is not a folder here is the family under `--storage`."""
    check_storage(model, "--model") if "://" in model else None
    parts = model.rstrip("/").split("/")
    if len(parts) == 2 and parts[0] == "registry" and not os.path.exists(model):
        check_name("--model", parts[1])
        check_storage(storage)
        return posixpath.join(storage.rstrip("/"), model.rstrip("/"))
    return model


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
