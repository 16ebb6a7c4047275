"""Predict every trajectory of a PDEBench file with a trained surrogate:
`python -m ray_jobs.predict --model RUN|ARTIFACT|registry/FAMILY --data IN.h5 --out OUT.h5`.

From each trajectory's first input frames, the surrogate predicts `--steps` frames (default: the
rest of the file); OUT is a PDEBench single-file HDF5 on the input's (strided) coordinates, the
input frames followed by the predictions. Chunks of trajectories go to an actor pool on Ray Data
(`--no-ray`: this process). See ups/predict.py.
"""

from __future__ import annotations

import argparse
import os

from ray_jobs._cli import model_source, user_errors, validated
from ups.config import ConfigError


@user_errors
def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="RUN|ARTIFACT|registry/FAMILY",
                   help="a run folder, an exported artifact, or registry/FAMILY (its champion) "
                        "under --storage")  # fmt: skip
    p.add_argument("--storage", default="runs", metavar="PATH_OR_URI", help="where registry/FAMILY lives (runs/)")
    p.add_argument("--data", required=True, metavar="IN.h5", help="a PDEBench file: a path, file://, s3:// or gs://")
    p.add_argument("--out", required=True, metavar="OUT.h5", help="the HDF5 file to write (a local path)")
    p.add_argument("--steps", type=int, metavar="N", help="frames to predict (default: the file's remaining frames)")
    p.add_argument("--task", metavar="NAME", help="the model's task for this file (default: the file's name)")
    p.add_argument("--chunk", type=int, default=32, metavar="N",
                   help="trajectories per chunk (default 32; a multiple of the model's eval.batch_size predicts "
                        "in evaluation's batches)")  # fmt: skip
    p.add_argument("--actors", type=int, metavar="N", help="actors in the pool (default 2, or 1 with --gpu)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="N", help="CPUs each actor holds (1)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="one GPU per actor (default: the model's scaling.use_gpu)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-ray", action="store_true", help="predict in this process, chunk after chunk")
    p.add_argument("--validate-only", action="store_true", help="check the model, the file and --out; print the plan")
    p.add_argument("--verbose", action="store_true", help="show Ray's own console output (its logs are on disk)")
    args = p.parse_args()
    if args.verbose:
        os.environ["UPS_VERBOSE"] = "1"
    for flag, value in (("--actors", args.actors), ("--cpus-per-actor", args.cpus_per_actor)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0 (got {value:g})")

    from ups import predict
    from ups.artifact import load_bundle
    from ups.console import Console

    # Everything is read and verified before Ray starts: the model's digests, the file, --out.
    bundle = load_bundle(model_source(args.model, args.storage))
    plan = predict.plan(bundle, args.data, args.out, steps=args.steps, task=args.task, chunk=args.chunk,
                        overwrite=args.overwrite)  # fmt: skip
    gpu = bundle.cfg.scaling.use_gpu if args.gpu is None else args.gpu
    opts = predict.Options(ray=not args.no_ray, actors=args.actors or (1 if gpu else 2),
                           cpus_per_actor=args.cpus_per_actor, gpu=gpu)  # fmt: skip
    predict.check_resources(opts)
    if args.validate_only:
        return validated(predict.describe(plan, opts))
    predict.run(plan, bundle, opts, Console().say)
    return 0


if __name__ == "__main__":
    main()
