"""Export a trained surrogate as a self-contained artifact:
`python -m ray_jobs.export --model runs/NAME --out DIR`.

The artifact (weights as safetensors, the resolved config, the data's metadata and normaliser,
digests, a model card) is all `ups.Surrogate.load(DIR)` needs: no run folder, no data, no Ray.
"""

from __future__ import annotations

import argparse
import posixpath
import shlex
import sys
import uuid

from ray_jobs._cli import model_source, user_errors, validated
from ups.config import ConfigError


@user_errors
def main() -> int:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.export", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="RUN|registry/FAMILY",
                   help="a run folder, or registry/FAMILY (its champion) under --storage")  # fmt: skip
    p.add_argument("--storage", default="runs", metavar="PATH_OR_URI", help="where registry/FAMILY lives (runs/)")
    p.add_argument("--out", required=True, metavar="DIR", help="the artifact folder to write (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --out")
    p.add_argument("--validate-only", action="store_true", help="load and verify the model; print what it would write")
    args = p.parse_args()

    from ups.artifact import ARTIFACT_FILE, load_bundle, write_artifact
    from ups.storage import Storage, check_storage, redact

    bundle = load_bundle(model_source(args.model, args.storage))  # verified before anything is written
    out = args.out.rstrip("/")
    parent, name = posixpath.split(out)
    check_storage(parent or ".", "--out")
    if not name:
        raise ConfigError(f"--out {redact(args.out)!r}: name a folder")
    target = Storage(parent or ".")
    if target.exists(name) and not args.overwrite:
        what = "an artifact" if target.exists(name, ARTIFACT_FILE) else "something"
        raise ConfigError(f"--out {redact(out)!r}: {what} is already there; pass --overwrite to replace it")
    if args.validate_only:
        return validated([
            f"model    {bundle.source} ({bundle.kind}); stages {', '.join(sorted(bundle.exports))} verified",
            f"corrector {bundle.cfg.eval.corrector}; grid {bundle.meta.spatial_shape}, "
            f"{bundle.meta.channels} channel(s)",
            f"writes   {redact(out)}/",
        ])  # fmt: skip
    # Written beside the target and moved into place: an interrupted export never leaves a half artifact
    # under --out (and an object store, which cannot rename, gets artifact.json last).
    tmp = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    command = " ".join(["python -m ray_jobs.export", *(shlex.quote(redact(a)) for a in sys.argv[1:])])
    try:
        record = write_artifact(bundle, target.sub(tmp), command=command)
        if target.exists(name):
            target.delete_dir(name)
        target.move((tmp,), (name,))
    finally:
        if target.exists(tmp):
            target.delete_dir(tmp)
    print(f"exported {bundle.kind} {bundle.source} -> {redact(out)}/ "
          f"({', '.join(record['stages'])}; corrector {record['corrector']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    main()
