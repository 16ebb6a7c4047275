"""Hyperparameter sweep with gating and promotion: `python -m ray_jobs.tune --config configs/sweep_smoke.yaml`."""

from __future__ import annotations

from ray_jobs._cli import load, parser, user_errors
from ups.config import ConfigError


@user_errors
def main() -> int:
    p = parser("tune", __doc__.splitlines()[0])
    args = p.parse_args()
    loaded, _ = load(args)
    raise ConfigError(f"{loaded.path}: ray_jobs.tune is not implemented yet (issue: Ray Tune sweeps and gating)")


if __name__ == "__main__":
    main()
