"""Train the whole UPS stack: `python -m ray_jobs.train --config configs/smoke.yaml`.

Runs on an embedded local Ray when RAY_ADDRESS is unset, and on the cluster under
`ray job submit`. Re-running with the same --name and --storage resumes the run.
"""

from __future__ import annotations

import sys

from ray_jobs._cli import load, parser, print_config, user_errors, validated


@user_errors
def main() -> int:
    p = parser("train", __doc__.splitlines()[0])
    p.add_argument("--restart", action="store_true", help="config changed: move the old run aside and start over")
    p.add_argument(
        "--accept-config-change",
        action="store_true",
        help="config changed: keep finished stages and continue under the new config",
    )
    p.add_argument(
        "--no-ray",
        action="store_true",
        help="train in this process without Ray (one worker; same files, checkpoints and resume)",
    )
    p.add_argument(
        "--only",
        metavar="STAGE[,STAGE]",
        help="train only these stages (every other stage's epochs set to 0), e.g. fno_baseline alone",
    )
    args = p.parse_args()
    if args.only is not None:
        args.overrides += only_stages(args.only)
    loaded, name = load(args)

    from ups import pipeline

    if args.print_config:
        return print_config(loaded)
    if args.validate_only:
        from ups.preflight import describe, preflight
        from ups.rundir import RunDir
        from ups.storage import Storage

        infos = preflight(loaded, ray=not args.no_ray)
        rundir = RunDir(Storage(args.storage), name)
        action = rundir.check(
            loaded.cfg, restart=args.restart, accept_change=args.accept_config_change
        )  # a resume that would be refused is refused here too, data that changed under it included
        summary = None if action == "restart" else rundir.summary()
        if summary is not None and summary.data_sha256 and all(i is not None for i in infos.values()):
            from ups.console import Console

            pipeline.load_data(loaded.cfg, rundir, summary, Console(quiet=True))
        return validated(describe(loaded, infos, storage=args.storage, name=name))
    backend = None
    if args.no_ray:
        from ups.backend.local_backend import LocalBackend

        backend = LocalBackend()
    opts = pipeline.PipelineOptions(
        name=name, storage=args.storage, restart=args.restart, accept_config_change=args.accept_config_change,
        backend=backend,
    )  # fmt: skip
    try:
        pipeline.run(loaded, opts)
    except pipeline.Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return 143  # 128 + SIGTERM: not finished, state saved
    return 0


def only_stages(flag: str) -> list[str]:
    """`--only a,b` as the `--set` keys that turn every other stage off (checked before anything runs)."""
    from ups.config import ConfigError
    from ups.stages import registry

    wanted = [s.strip() for s in flag.split(",")]
    unknown = [s for s in wanted if s not in registry.names()]
    if unknown or not wanted:
        raise ConfigError(f"--only {flag}: no stage named {unknown[0] if unknown else repr('')} "
                          f"(stages: {', '.join(registry.names())})")  # fmt: skip
    return [f"stages.{s}.epochs=0" for s in registry.names() if s not in wanted]


if __name__ == "__main__":
    main()
