"""Sweep, gate and promote: `python -m ray_jobs.tune --config configs/sweep_smoke.yaml`.

Each trial trains the whole pipeline with sampled `sweep.space` keys; ASHA stops bad trials on the
watched stage's validation metric. The best trial is gated against its family's champion
(small evaluation, then full, both on val) and promoted into `{storage}/registry/`. Running the
same command with the same --name resumes an interrupted sweep.
"""

from __future__ import annotations

import json

from ray_jobs._cli import load, parser, print_config, user_errors, validated


@user_errors
def main() -> int:
    p = parser("tune", __doc__.splitlines()[0])
    args = p.parse_args()
    loaded, name = load(args)

    from ups import sweep

    if args.print_config:
        return print_config(loaded)
    if args.validate_only:
        return validated(sweep.validate(loaded, name, args.storage))

    summary = sweep.run(loaded, name, args.storage)
    print(
        json.dumps(
            {k: summary[k] for k in ("sweep", "family", "promoted", "gate", "champion_test")}, indent=2, default=str
        )
    )
    return 0


if __name__ == "__main__":
    main()
