"""Evaluate a finished run: `python -m ray_jobs.evaluate --run runs/NAME [--split test]`.

Decoded autoregressive rollout with PDEBench's metrics and the persistence baseline; writes
`{run}/eval/{split}/metrics.json` and plots. Selection uses val; test is for the final report.
"""

from __future__ import annotations

import argparse
import json
import posixpath

from ray_jobs._cli import user_errors
from ups.config import ConfigError


@user_errors
def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="PATH_OR_URI", help="the run folder, {storage}/{name}")
    p.add_argument("--split", choices=["val", "test"], default="val")
    args = p.parse_args()

    from ups import pipeline
    from ups.backend.ray_backend import RayBackend
    from ups.contracts import stage_records
    from ups.data import views
    from ups.run import RunDir
    from ups.storage import Storage

    uri = args.run.rstrip("/")
    parent, name = posixpath.split(uri)
    rundir = RunDir(Storage(parent or "."), name)
    if not rundir.dir.exists("summary.json"):
        raise ConfigError(f"{uri}: not a run folder (no summary.json)")
    cfg, summary = rundir.config(), rundir.summary()
    records = stage_records(summary)
    for stage in ("autoencoder", "operator"):
        if stage not in records or not records[stage].completed:
            raise ConfigError(f"{uri}: stage {stage} has not completed; nothing to evaluate")
    chosen = summary.get("eval", {}).get("corrector")
    if cfg.eval.corrector == "auto" and chosen:  # the corrector the run chose on val
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"corrector": chosen})})
    backend = RayBackend()
    backend.start(cfg, rundir)
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    exports = pipeline.load_exports(rundir, summary)
    result = pipeline.evaluate_run(backend, rundir, cfg, meta, tasks, exports, args.split, print)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


if __name__ == "__main__":
    main()
