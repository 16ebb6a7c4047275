"""Generate a PDEBench-layout dataset: `python -m ray_jobs.generate --config configs/burgers1d.yaml`.

Writes `data.generate` (PDE, Nu or beta, samples, resolution, frames, seed) to `data.path`,
fanning chunks out as Ray tasks.
"""

from __future__ import annotations

import os

from ray_jobs._cli import load, parser, print_config, user_errors, validated
from ups.config import ConfigError, GenerateConfig
from ups.storage import check_creatable_parent


@user_errors
def main() -> int:
    p = parser("generate", __doc__.splitlines()[0], run_flags=False)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-ray", action="store_true", help="solve in this process instead of Ray tasks")
    args = p.parse_args()
    loaded, _ = load(args)
    cfg = loaded.cfg
    if cfg.data.generate is None:
        raise ConfigError(f"{loaded.path}: data.generate: missing (it says what to generate)")
    out = cfg.data.paths[0]
    if args.print_config:
        return print_config(loaded)
    if os.path.exists(out) and not args.overwrite:
        raise ConfigError(f"{loaded.path}: data.path: {out} exists (pass --overwrite to replace it)")
    if os.path.isdir(out) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise ConfigError(f"{loaded.path}: data.path: {out} cannot be replaced (a folder, or not writable)")
    check_creatable_parent(f"{loaded.path}: data.path {out}", out)
    g = cfg.data.generate
    from ups.config import source_of
    from ups.preflight import check_generate_size

    where = lambda key: source_of(key, loaded.sources, str(loaded.path))
    check_generate_size(g, out, where, allow_large=cfg.scaling.allow_large)  # TiBs are refused, not attempted
    if args.validate_only:
        cells = "x".join(map(str, g.spatial_shape))
        return validated([
            f"config   {loaded.path}",
            f"writes   {out}: {g.samples} {g.pde} trajectories x {g.frames} frames x {cells} cells, t in [0, "
            f"{g.t_end:g}], {_coefficients(g)}, "
            f"seed {g.seed}, {-(-g.samples // g.chunk_size)} chunk(s) of {g.chunk_size}"
            + (" (replacing the file)" if os.path.exists(out) else ""),
            f"runs on  {'this process' if args.no_ray else 'Ray tasks'}",
        ])  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    from ups.data.generate import generate

    use_ray = not args.no_ray
    if use_ray:
        from ups import ray_session

        ray_session.connect(cfg)
    generate(cfg.data.generate, out, use_ray=use_ray)
    return 0


def _coefficients(g: GenerateConfig) -> str:
    if g.pde == "burgers":
        return f"nu = {g.nu:g}"
    if g.pde == "navier_stokes2d":
        return f"nu = {g.nu:g}, dt = {g.dt:g}"
    return f"beta = ({g.beta:g}, {g.beta_y:g})" if g.pde == "advection2d" else f"beta = {g.beta:g}"


if __name__ == "__main__":
    main()
