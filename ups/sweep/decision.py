"""After the sweep: the gating policy (ups/gating.py) on the best trial, its measurements bound to
Ray tasks (evaluations of both stacks, and both timed in turns in one Ray task); then the champion's
test metrics, which are reported and never select anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from ups import config as C
from ups import gating
from ups.champions import ChampionStore
from ups.config import Config
from ups.contracts import ChampionRecord, EvalMetrics, TrialRecord
from ups.data import views
from ups.eval.timing import time_rollouts
from ups.exports import read_export
from ups.gating import family_of
from ups.storage import Storage


def decide(
    cfg: Config,
    meta: views.DataMeta,
    tasks: list[views.Task],
    root: Storage,
    sweep: str,
    trials: list[TrialRecord],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The gating policy (ups/gating.py) on the best trial, its measurements bound to Ray tasks;
    then the champion's test metrics, which are reported and never select anything."""
    from ups import pipeline
    from ups.rundir import RunDir

    family = family_of(cfg, meta)
    out: dict[str, Any] = {
        "family": family,
        "best": None,
        "gate": {"passed": False, "reasons": []},
        "promoted": False,
        "champion": None,
        "champion_test": None,
    }
    best = gating.best_trial(trials)
    if best is None:
        out["gate"]["reasons"] = ["no trial completed"]
        return out
    out["best"] = best.to_dict()
    run_root, run_name = best.run.rsplit("/", 1)
    cand_run = RunDir(Storage(run_root), run_name)
    cand_summary = cand_run.summary()
    cand_cfg = cand_run.config()
    cand_exports = pipeline.load_exports(cand_run, cand_summary)

    def evaluate(c: Config, exports: dict[str, dict], small: bool) -> EvalMetrics:
        max_samples, horizon = (cfg.gate.small.max_samples, cfg.gate.small.horizon) if small else (None, None)
        r = pipeline.evaluate_exports(c, meta, tasks, exports, "val", max_samples=max_samples, horizon=horizon)
        return r.metrics

    def measure(champ: ChampionRecord | None) -> gating.Measures:
        """Measurements bound to the champion the policy read under the registry's lock."""
        sides = {"candidate": (cand_cfg, cand_exports)}
        metrics = lambda side, small: evaluate(*sides[side], small)
        if champ is None:
            return gating.Measures(metrics)
        sides["champion"] = (_champion_config(champions, champ), _champion_exports(champions, champ))
        return gating.Measures(
            metrics, lambda: _time_inference(cfg, meta, tasks, sides["candidate"], sides["champion"])
        )

    candidate = gating.Candidate(best.trial, best.run, cand_summary, best.metrics)
    champions = ChampionStore(root, family)
    d = gating.decide(cfg.gate, champions, candidate, measure, sweep=sweep, say=say)
    champ = d.champion
    test = None
    if champ:  # the champion's test metrics are reported; they never select anything
        r = pipeline.evaluate_exports(_champion_config(champions, champ), meta, tasks,
                                      _champion_exports(champions, champ), "test")  # fmt: skip
        test = r.metrics.scalars()
    out.update(
        gate={"passed": d.passed, "reasons": d.reasons, "steps": d.steps},
        promoted=d.passed,
        champion={"trial": champ.trial, "sweep": champ.sweep, "checkpoint": champ.checkpoint} if champ else None,
        champion_test=test,
    )
    return out


def _champion_config(champions: ChampionStore, champ: ChampionRecord) -> Config:
    """The champion's config, read from its own folder of the registry."""
    config_uri, _ = champions.champion_files(champ)
    return C.validate(yaml.safe_load(Storage(config_uri).read_text()), stored=True)


def _champion_exports(champions: ChampionStore, champ: ChampionRecord) -> dict[str, dict]:
    """The champion's weights, from its own folder of the registry, verified against the digests
    its record holds (a record without one, or pointing elsewhere, is refused)."""
    _, found = champions.champion_files(champ)
    return {n: read_export(uri, sha) for n, (uri, sha) in found.items()}


def _time_inference(
    cfg: Config,
    meta: views.DataMeta,
    tasks: list[views.Task],
    candidate: tuple[Config, dict[str, dict]],
    champion: tuple[Config, dict[str, dict]],
) -> dict[str, Any]:
    """Both stacks timed in turns in one Ray task, on the device evaluation runs on (a GPU one when
    the run uses GPUs), on gate.small's trajectories and horizon."""
    import ray

    from ups.backend.ray_backend import task_options

    opts = task_options(cfg)
    (cand_cfg, cand_exports), (champ_cfg, champ_exports) = candidate, champion
    ref = (
        ray.remote(_timing_job)
        .options(**opts)
        .remote(
            C.to_wire(cand_cfg),
            C.to_wire(champ_cfg),
            meta.to_dict(),
            cand_exports,
            champ_exports,
            tasks,
            cfg.gate.small.max_samples,
            cfg.gate.small.horizon,
        )
    )
    return ray.get(ref)


def _timing_job(
    cand_cfg: dict,
    champ_cfg: dict,
    meta_dict: dict,
    cand_exports: dict[str, dict],
    champ_exports: dict[str, dict],
    tasks: list[views.Task],
    samples: int,
    horizon: int,
) -> dict[str, Any]:
    """Runs on a Ray worker: both stacks built in this one process, so they share its state and moment."""
    import torch

    from ups.eval.evaluate import build_surrogate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = views.DataMeta.from_dict(meta_dict)
    cand = build_surrogate(C.from_dict(cand_cfg), meta, cand_exports, device)
    champ = build_surrogate(C.from_dict(champ_cfg), meta, champ_exports, device)
    return time_rollouts(cand, champ, tasks, samples, horizon)
