"""The search space: which config keys a trial may change, each value a trial can draw checked
before Ray, a trial's config, and the space in Tune's terms."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from ups import config as C
from ups.config import Config, ConfigError
from ups.data.pdebench import FileInfo
from ups.preflight import check_config

# Sections a trial may not change, in whole or in part: they define the family and the protocol
# (data, eval, gate), the sweep itself, or what was checked against the machine (scaling, ray).
FORBIDDEN_SECTIONS = ("data", "eval", "sweep", "gate", "scaling", "ray", "logging")
FORBIDDEN_PREFIXES = tuple(f"{s}." for s in FORBIDDEN_SECTIONS)
MAX_RUNGS = 32  # ASHA's rungs: log(max_t / grace_period) / log(reduction_factor)


def check_space(loaded: C.LoadedConfig, infos: dict[str, FileInfo | None]) -> None:
    """Every key of the search space is a config key a trial may change, and every value a trial can
    draw passes the checks the sweep itself passed: each `choice`/`grid` value, and the bounds and an
    interior (non-integer) point of each numeric domain, one key at a time, through the config
    schema and preflight's config checks against the data (`infos`)."""
    cfg, base = loaded.cfg, C.to_wire(loaded.cfg)
    where = C.source_of("sweep.space", loaded.sources, str(loaded.path))
    if not cfg.sweep.space:
        raise ConfigError(f"{where}: sweep.space: empty (nothing to search)")
    for key, spec in cfg.sweep.space.items():
        if key in FORBIDDEN_SECTIONS or key.startswith(FORBIDDEN_PREFIXES):
            raise ConfigError(
                f"{where}: sweep.space.{key}: trials may not change data, eval, gate, scaling, ray, logging "
                f"or sweep settings (they define the family and the protocol, or were checked against the machine)"
            )
        if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in key.split(".")):
            raise ConfigError(f"{where}: sweep.space: {key!r} is not a dotted config key")
        kind, args = next(iter(spec.items()))
        values = [(v, "") for v in (args if kind in ("choice", "grid") else args[:2])]
        if kind in ("uniform", "loguniform"):  # what a draw looks like: not an integer
            values.append((math.nextafter(float(args[0]), float(args[1])), f" (a draw from {kind} {args})"))
        for value, note in values:
            try:
                check_config(trial_config(base, {key: value}, "check"), infos, lambda _: where)
            except ConfigError as e:
                raise ConfigError(
                    f"{where}: sweep.space.{key}: value {_short(value)}{note}: {str(e).split(': ', 1)[-1]}"
                ) from None
    sc = cfg.sweep.scheduler
    epochs = getattr(cfg.stages, sc.stage).epochs
    src = lambda key: C.source_of(key, loaded.sources, str(loaded.path))
    if epochs == 0:
        raise ConfigError(
            f"{src('sweep.scheduler.stage')}: sweep.scheduler.stage: {sc.stage} has 0 epochs, nothing to watch"
        )
    if sc.name == "asha":
        max_t = epochs + 1  # what `run` gives ASHA: the watched stage's epochs, then the final report
        key = "sweep.scheduler.grace_period"
        if sc.grace_period > max_t:
            raise ConfigError(
                f"{src(key)}: {key}: {sc.grace_period} epochs is more than stages.{sc.stage} runs "
                f"({epochs} epochs); ASHA needs grace_period <= epochs + 1"
            )
        key = "sweep.scheduler.reduction_factor"
        rungs = math.log(max_t / sc.grace_period) / math.log(sc.reduction_factor)
        if rungs > MAX_RUNGS:
            raise ConfigError(
                f"{src(key)}: {key}: {sc.reduction_factor} makes {rungs:.3g} ASHA rungs over {max_t} epochs "
                f"(at most {MAX_RUNGS}); use 2 to 4"
            )


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:55] + "..."


def trial_config(base: dict, params: dict[str, Any], sweep: str) -> Config:
    tree = copy.deepcopy(base)
    for key, value in params.items():
        node = tree
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"sweep.space.{key}: '{'.'.join(parents[: i + 1])}' is not a section")
        node[leaf] = value
    cfg = C.validate(tree)
    return cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(update={"test": False}),  # trials never look at the test split
            "logging": cfg.logging.model_copy(update={"wandb": cfg.logging.wandb.model_copy(update={"group": sweep})}),
        }
    )


def param_space(cfg: Config) -> dict:
    """`sweep.space` as Tune's search space."""
    from ray import tune

    make = {
        "choice": tune.choice,
        "grid": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),
    }
    return {key: make[kind](args) for key, spec in cfg.sweep.space.items() for kind, args in spec.items()}
