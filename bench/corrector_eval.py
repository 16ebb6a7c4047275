"""Re-evaluate a finished run under other corrector sampler settings, without retraining.

    python bench/corrector_eval.py --run /tmp/exp/cpu20-b --noise-scale 0 --sample-steps 1

Prints the decoded rollout nRMSE with the corrector and of the operator alone on the split, so a
sampler setting can be judged before a recipe spends its budget on it.
"""

from __future__ import annotations

import argparse

import torch

from ups.data import views
from ups.eval.evaluate import build_surrogate, evaluate
from ups.pipeline import load_exports
from ups.rundir import RunDir
from ups.storage import Storage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the run folder, {storage}/{name}")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--corrector", default="diffusion", choices=("diffusion", "consistency"))
    ap.add_argument("--noise-scale", type=float, help="eval.noise_scale (default: the run's)")
    ap.add_argument("--sample-steps", type=int, help="stages.diffusion_residual.sample_steps (default: the run's)")
    ap.add_argument("--feedback", choices=("on", "off"), help="feed the corrected state back (default: by states)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    root, name = args.run.rstrip("/").rsplit("/", 1)
    rundir = RunDir(Storage(root), name)
    cfg = rundir.config()
    exports = load_exports(rundir, rundir.summary())
    ev = {"corrector": args.corrector}
    if args.noise_scale is not None:
        ev["noise_scale"] = args.noise_scale
    diff = cfg.stages.diffusion_residual
    if args.sample_steps is not None:
        diff = diff.model_copy(update={"sample_steps": args.sample_steps})
    cfg = cfg.model_copy(update={
        "eval": cfg.eval.model_copy(update=ev),
        "stages": cfg.stages.model_copy(update={"diffusion_residual": diff}),
    })  # fmt: skip
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    model = build_surrogate(cfg, meta, exports, "cpu")
    if args.feedback is not None and model.corrector is not None:
        model.corrector.feedback = args.feedback == "on"
    r = evaluate(model, tasks, args.split, cfg).metrics
    print(f"{args.split}: nRMSE {r.nRMSE:.4f} with the {r.corrector} corrector "
          f"(noise_scale {cfg.eval.noise_scale}, {diff.sample_steps} steps, feedback "
          f"{model.corrector.feedback if model.corrector else '-'}) | operator alone "
          f"{r.scores['operator_nRMSE']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
