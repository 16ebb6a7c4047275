"""Evaluate a finished run: `python -m ray_jobs.evaluate --run runs/NAME [--split test]`.

Decoded autoregressive rollout with PDEBench's metrics and the persistence baseline; writes
`{run}/eval/{split}/metrics.json` and plots. Selection uses val; test is for the final report.
"""

from __future__ import annotations

import argparse
import json
import os

from ray_jobs._cli import run_folder, user_errors, validated
from ups.config import ConfigError


@user_errors
def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="PATH_OR_URI", help="the run folder, {storage}/{name}")
    p.add_argument("--split", choices=["val", "test"], default="val", help="val (default) or test, the report split")
    p.add_argument(
        "--validate-only", action="store_true", help="check the run folder, exports and data; print what would run"
    )
    p.add_argument(
        "--verbose", action="store_true", help="show Ray's own console output (its logs are on disk either way)"
    )
    args = p.parse_args()
    if args.verbose:
        os.environ["UPS_VERBOSE"] = "1"

    from ups import pipeline
    from ups.backend.ray_backend import RayBackend
    from ups.console import Console
    from ups.data import views
    from ups.preflight import check_consistent, check_resources
    from ups.rundir import RunDir
    from ups.stages import registry
    from ups.storage import Storage, redact

    parent, name = run_folder(args.run)
    uri = redact(args.run.rstrip("/"))
    # Everything is read and verified before Ray starts: the run's files, its exports, its data.
    rundir = RunDir(Storage(parent), name)
    rundir.check_folder()
    if not rundir.dir.exists("summary.json"):
        raise ConfigError(f"--run {uri}: not a run folder (no summary.json)")
    cfg, summary = rundir.config(), rundir.summary()  # summary.json's records checked as it is read
    records = summary.stages
    for stage in registry.surrogate_stages():  # those providing the encoder, decoder and operator
        if stage not in records or not records[stage].completed:
            raise ConfigError(f"--run {uri}: stage {stage} has not completed; nothing to evaluate")
    if cfg.eval.corrector == "auto" and summary.corrector:  # the corrector the run chose on val
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"corrector": summary.corrector})})
    exports = pipeline.load_exports(rundir, summary)
    infos = {p: views.check_file(p, cfg.data, rundir.dir.uri_of("config.yaml")) for p in cfg.data.paths}
    check_consistent(cfg, dict(infos), rundir.dir.uri_of("config.yaml"))
    check_resources(cfg, lambda key: f"{uri}/config.yaml")  # e.g. a GPU run evaluated where there is none
    tasks = views.load_tasks(cfg.data)
    pipeline.check_data_digest(rundir, summary, cfg.data.paths, views.data_digest(tasks), "evaluate")
    if args.validate_only:
        return validated([
            f"run      {uri}",
            f"stages   {', '.join(f'{n} ({r.epochs} epochs)' for n, r in records.items() if r.completed)}; "
            f"{len(exports)} export(s) verified against their recorded digests",
            f"data     {', '.join(cfg.data.paths)} (digest {str(summary.data_sha256)[:12]}, as recorded)",
            f"split    {args.split}, corrector {cfg.eval.corrector}, writes {uri}/eval/{args.split}/",
        ])  # fmt: skip
    backend = RayBackend()
    backend.start(cfg, rundir)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    result = pipeline.evaluate_run(backend, rundir, cfg, meta, tasks, exports, args.split, Console())
    print(json.dumps({k: v for k, v in result.to_dict().items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


if __name__ == "__main__":
    main()
