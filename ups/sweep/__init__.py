"""Ray Tune around the pipeline: a sweep, then gating and promotion of its best trial.

Each trial runs the whole pipeline (a TorchTrainer per stage) with sampled config keys; the
watched stage's per-epoch validation metric reaches Tune, so ASHA can stop a bad trial early.
Trials keep their own run folders under `{storage}/{sweep}/trials/`, so an interrupted sweep is
resumed by running the same command: Tune restores finished trials and each unfinished trial's
pipeline resumes its interrupted stage from its checkpoint.

After the sweep: best trial by val nRMSE -> small evaluation (val subset, short horizon) next to
the champion -> gate -> full evaluation (whole val split, full horizon) -> gate -> promote.

One module per job: `space` (the search space and a trial's config), `trial` (one Tune trial),
`decision` (the gate on the best trial, bound to Ray tasks), `summary` (trial records, the W&B
table), `tune` (the driver: checks, Tune, the lock).
"""

from ups.sweep.decision import decide
from ups.sweep.space import check_space, trial_config
from ups.sweep.tune import check_sweep_name, run, validate

__all__ = ["check_space", "check_sweep_name", "decide", "run", "trial_config", "validate"]
