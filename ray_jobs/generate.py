"""Generate a PDEBench-layout dataset: `python -m ray_jobs.generate --config configs/burgers1d.yaml`.

Writes `data.generate` (PDE, Nu or beta, samples, resolution, frames, seed) to `data.path`,
fanning chunks out as Ray tasks.
"""

from __future__ import annotations

import os

from ray_jobs._cli import load, parser, user_errors
from ups.config import ConfigError


@user_errors
def main() -> int:
    p = parser("generate", __doc__.splitlines()[0])
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-ray", action="store_true", help="solve in this process instead of Ray tasks")
    args = p.parse_args()
    loaded, _ = load(args)
    cfg = loaded.cfg
    if cfg.data.generate is None:
        raise ConfigError(f"{loaded.path}: data.generate: missing (it says what to generate)")
    out = cfg.data.paths[0]
    if os.path.exists(out) and not args.overwrite:
        raise ConfigError(f"{loaded.path}: data.path: {out} exists (pass --overwrite to replace it)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    from ups.data.generate import generate

    use_ray = not args.no_ray
    if use_ray:
        from ups import runtime

        runtime.connect(cfg)
    generate(cfg.data.generate, out, use_ray=use_ray)
    return 0


if __name__ == "__main__":
    main()
