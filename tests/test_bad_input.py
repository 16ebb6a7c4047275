"""Every kind of bad input, through the real entry points: exit 2, one line on stderr that names
what is wrong, before Ray starts and before anything is written.

A case is a job, its flags, a setup that makes the bad input inside a fresh workspace, and a word
the line must contain. The jobs run in this process (fast) with `ray.init` replaced by a tripwire,
so "Ray did not start" is checked, not assumed; the workspace's files (names, sizes, contents)
are compared before and after, so "nothing written" is too. A few cases at the end run as real
subprocesses to pin the process-level contract (no traceback, exit code 2).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ups import config as C
from ups.data import pdebench, views
from ups.exports import write_export

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
N, T, X = 24, 12, 32

BASE = f"""include: {TINY}
data: {{path: good.h5, generate: null, max_samples: null, initial_step: 4}}
scaling: {{num_workers: 1}}
training: {{batch_size: 8}}
"""
SWEEP = """include: base.yaml
sweep:
  space: {stages.operator.optimizer.lr: {choice: [0.001, 0.002]}}
  scheduler: {stage: operator}
"""
GENERATE = """include: base.yaml
data:
  path: gen.h5
  generate: {pde: burgers, samples: 8, resolution: 32, frames: 6}
"""


def fields(n: int = N, t: int = T, x: int = X) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    u = rng.standard_normal((n, t, x)).astype(np.float32)
    return u, {"x": (np.arange(x) + 0.5) / x, "t": np.linspace(0.0, 1.0, t + 1)}


def h5(path: Path, **over: np.ndarray) -> None:
    """A PDEBench `tensor` file, with datasets replaced or added by keyword (raw, no checks)."""
    u, c = fields()
    data = {"tensor": u, "x-coordinate": c["x"], "t-coordinate": c["t"], **over}
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f[k] = v


def good_file(path: Path, n: int = N, t: int = T, x: int = X) -> None:
    u, c = fields(n, t, x)
    pdebench.write(path, u, c)


@dataclass
class Case:
    id: str
    job: str  # train | tune | generate | evaluate
    args: list[str]
    expect: str  # a word the one line must contain
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    config: str | None = "base.yaml"  # None: the job takes no --config (evaluate)


def write(rel: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for s in setups:
            s(ws)

    return setup


def data(build: Callable[[Path], None]) -> Callable[[Path], None]:
    """Make `bad.h5` with `build`; the case points data.path at it."""
    return lambda ws: build(ws / "bad.h5")


def truncated(p: Path) -> None:
    good_file(p)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 3])


def unreadable(p: Path) -> None:
    good_file(p)
    p.chmod(0)


def nan_at(sample: int, value: float) -> Callable[[Path], None]:
    def build(p: Path) -> None:
        u, _ = fields()
        u[sample, 3, 5] = value
        h5(p, tensor=u)

    return build


def huge_coordinate(p: Path) -> None:
    """An x-coordinate that declares 7 TiB (chunked, never written: the file stays a few KiB)."""
    h5(p, **{"x-coordinate": None})
    with h5py.File(p, "a") as f:
        f.create_dataset("x-coordinate", shape=(7 * 2**40 // 8,), dtype="f8", chunks=(1 << 16,))


def float64_beyond_float32(p: Path) -> None:
    u = fields()[0].astype(np.float64)
    u[5, 3, 2] = 1e39  # finite in the file, inf once training casts it to float32
    h5(p, tensor=u)


def linked(make: Callable[[h5py.File, Path], None]) -> Callable[[Path], None]:
    """A `tensor` file whose `tensor` is made by `make` (a link, external storage, a virtual dataset)."""

    def build(p: Path) -> None:
        h5(p, tensor=None)
        with h5py.File(p, "a") as f:
            make(f, p.parent)

    return build


def external_link(f: h5py.File, ws: Path) -> None:
    f["tensor"] = h5py.ExternalLink(str(ws / "good.h5"), "/tensor")


def soft_link_dangling(f: h5py.File, ws: Path) -> None:
    f["tensor"] = h5py.SoftLink("/elsewhere/tensor")


def soft_link_through_external(f: h5py.File, ws: Path) -> None:
    f["outside"] = h5py.ExternalLink(str(ws / "good.h5"), "/")
    f["tensor"] = h5py.SoftLink("/outside/tensor")


def external_storage(f: h5py.File, ws: Path) -> None:
    u = fields()[0]
    (ws / "raw.bin").write_bytes(u.tobytes())
    f.create_dataset("tensor", u.shape, "f4", external=[(str(ws / "raw.bin"), 0, u.nbytes)])


def virtual(f: h5py.File, ws: Path) -> None:
    layout = h5py.VirtualLayout((N, T, X), "f4")
    layout[:] = h5py.VirtualSource(str(ws / "good.h5"), "tensor", shape=(N, T, X))
    f.create_virtual_dataset("tensor", layout)


def per_seed_external(p: Path) -> None:
    """Per-seed layout whose second seed group is an external link."""
    u, c = fields()
    with h5py.File(p, "w") as f:
        for i in range(N):
            if i == 1:
                f[f"{i:04d}"] = h5py.ExternalLink(str(p.parent / "good.h5"), "/")
                continue
            g = f.create_group(f"{i:04d}")
            g["data"] = u[i][..., None]
            g["grid/x"], g["grid/t"] = c["x"], c["t"]


BAD = ["--set", "data.path=bad.h5"]


def bad_yaml(id: str, expect: str, text: str | bytes) -> Case:
    """`train --config bad.yaml`, the file holding `text`."""
    return Case(id, "train", [], expect, write("bad.yaml", text), config="bad.yaml")


# --- run folders: a finished-looking run under runs/r, damaged one way per case ----------------


def finished_run(ws: Path, *, damage: Callable[[Path], None] | None = None) -> None:
    cfg = C.load_config(ws / "base.yaml").cfg
    run = ws / "runs" / "r"
    (run / "stages").mkdir(parents=True)
    (run / "config.yaml").write_text(C.to_yaml(cfg))
    (run / "run.json").write_text(json.dumps({"name": "r", "config_digest": C.digest(cfg), "wandb_id": "r-1"}))
    stages = {}
    for s in ("autoencoder", "operator"):
        from ups.contracts import BestMetric

        uri = str(run / "stages" / s / "export.pt")
        sha = write_export(uri, s, {"w": torch.zeros(3)}, BestMetric("val_loss", 1.0, 1), "d")
        stages[s] = {"status": "completed", "epochs": 1, "export": uri, "weights_sha256": sha}
    data_sha = views.data_digest(views.load_tasks(cfg.data))  # what the run recorded when it started
    (run / "summary.json").write_text(json.dumps({"name": "r", "stages": stages, "data_sha256": data_sha}))
    if damage:
        damage(run)


def damaged(how: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda ws: finished_run(ws, damage=how)


def put(rel: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / rel).write_text(text)


def summary_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def how(run: Path) -> None:
        s = json.loads((run / "summary.json").read_text())
        edit(s)
        (run / "summary.json").write_text(json.dumps(s))

    return how


def tamper_export(run: Path) -> None:
    """Other weights under the same name: a valid export whose digest is not the recorded one."""
    from ups.contracts import BestMetric

    write_export(str(run / "stages" / "operator" / "export.pt"), "operator", {"w": torch.ones(3)},
                 BestMetric("val_loss", 1.0, 1), "d")  # fmt: skip


def corrupt_export(run: Path) -> None:
    p = run / "stages" / "operator" / "export.pt"
    p.write_bytes(p.read_bytes()[:-100])  # cut off: the zip's directory is gone


def hold_lock(ws: Path) -> None:
    """Another driver holds run r (a real flock, taken by this process for the case's duration)."""
    from ups.runlock import RunLock
    from ups.storage import Storage

    lock = RunLock(Storage(str(ws / "runs")), "r")
    lock.acquire(say=lambda _: None)
    HELD.append(lock)


HELD: list = []
NESTED = '{"stages": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


def change_data(ws: Path) -> None:
    """good.h5 rewritten with other values, same shape: every check passes but the digest."""
    u, c = fields()
    pdebench.write(ws / "good.h5", u[::-1].copy(), c)


def as_folder(name: str) -> Callable[[Path], None]:
    def how(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()

    return how


def run_elsewhere(ws: Path) -> None:
    """runs/r is a link to a finished run that lives outside --storage."""
    finished_run(ws)
    (ws / "runs" / "r").rename(ws / "elsewhere")
    (ws / "runs" / "r").symlink_to(ws / "elsewhere")


def link_to_empty(ws: Path) -> None:
    (ws / "outside").mkdir()
    (ws / "runs").mkdir()
    (ws / "runs" / "r").symlink_to(ws / "outside")


def stages_linked(run: Path) -> None:
    (run / "stages").rename(run.parent.parent / "outside")
    (run / "stages").symlink_to(run.parent.parent / "outside")


def export_linked(run: Path) -> None:
    p = run / "stages" / "operator" / "export.pt"
    p.rename(run.parent.parent / "op.pt")
    p.symlink_to(run.parent.parent / "op.pt")


RUN = ["--name", "r", "--storage", "runs"]
EVAL = ["--run", "runs/r"]


# --- hostile input: sizes declared, not written; YAML that expands; names of special files ------

# Ten levels of nine aliases each: under 700 bytes, 9^10 (3.5e9) keys once expanded.
LAUGHS = "a: &a {a: 1, b: 1, c: 1, d: 1, e: 1, f: 1, g: 1, h: 1, i: 1}\n" + "".join(
    f"{y}: &{y} {{{', '.join(f'{k}: *{x}' for k in 'abcdefghi')}}}\n" for x, y in zip("abcdefghi", "bcdefghij")
)
DEEP = "[" * 5000 + "]" * 5000


def declared(n: int) -> Callable[[Path], None]:
    """`bad.h5` declaring `n` trajectories of the usual frames and grid, none of them written: a
    chunked dataset costs nothing on disk until written, so the file is tiny whatever `n` says."""

    def build(p: Path) -> None:
        _, c = fields()
        with h5py.File(p, "w") as f:
            f.create_dataset("tensor", shape=(n, T, X), dtype="f4", chunks=(1, T, X))
            f["x-coordinate"], f["t-coordinate"] = c["x"], c["t"]

    return build


def include_chain(n: int) -> Callable[[Path], None]:
    """bad.yaml includes c1.yaml includes ... c{n}.yaml includes base.yaml."""

    def setup(ws: Path) -> None:
        names = ["bad.yaml", *(f"c{i}.yaml" for i in range(1, n + 1)), "base.yaml"]
        for a, b in zip(names[:-1], names[1:]):
            (ws / a).write_text(f"include: {b}\n")

    return setup


def include_fanout(ws: Path) -> None:
    """Three levels of eight includes of one file: 512 reads of a 3-file config."""
    (ws / "bad.yaml").write_text("include: [f.yaml" + ", f.yaml" * 7 + "]\n")
    (ws / "f.yaml").write_text("include: [g.yaml" + ", g.yaml" * 7 + "]\n")
    (ws / "g.yaml").write_text("include: [base.yaml" + ", base.yaml" * 7 + "]\n")


def fifo(rel: str) -> Callable[[Path], None]:
    return lambda ws: os.mkfifo(ws / rel)


def holding(name: str) -> Callable[[Path], None]:
    """Another driver holds the lock on `name` under runs/ (a real flock, for the case's duration)."""

    def setup(ws: Path) -> None:
        from ups.runlock import RunLock
        from ups.storage import Storage

        lock = RunLock(Storage(str(ws / "runs")), name)
        lock.acquire(say=lambda _: None)
        HELD.append(lock)

    return setup


W_YAML = write("w.yaml", "include: base.yaml\nlogging: {wandb: {enabled: true}}\n")
HUGE = 10**12  # trajectories: 1.4 PiB of float32 at 12 frames x 32 cells
PRESIGNED = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=Sh0uldNotLeak"

CASES = [
    # data files
    Case("data-text-file", "train", BAD, "not an HDF5 file", write("bad.h5", "just text\n")),
    Case("data-empty-file", "train", BAD, "empty", write("bad.h5", b"")),
    Case("data-directory", "train", BAD, "directory", lambda ws: (ws / "bad.h5").mkdir()),
    Case("data-truncated", "train", BAD, "truncated", data(truncated)),
    Case("data-nan", "train", BAD, "NaN/Inf", data(nan_at(7, np.nan))),
    Case("data-inf", "train", BAD, "sample 9", data(nan_at(9, np.inf))),
    Case("data-string-dtype", "train", BAD, "dtype", data(lambda p: h5(p, tensor=np.full((N, T, X), b"ab")))),
    Case("data-complex-dtype", "train", BAD, "dtype", data(lambda p: h5(p, tensor=fields()[0].astype(np.complex64)))),
    Case("data-bool-dtype", "train", BAD, "dtype", data(lambda p: h5(p, tensor=fields()[0] > 0))),
    Case("data-nan-x", "train", BAD, "x-coordinate", data(lambda p: h5(p, **{"x-coordinate": np.full(X, np.nan)}))),
    Case(
        "data-dt-zero", "train", BAD, "strictly increasing", data(lambda p: h5(p, **{"t-coordinate": np.zeros(T + 1)}))
    ),  # fmt: skip
    Case(
        "data-t-decreasing",
        "train",
        BAD,
        "t-coordinate",
        data(lambda p: h5(p, **{"t-coordinate": np.linspace(1, 0, T + 1)})),
    ),  # fmt: skip
    Case("data-no-t", "train", BAD, "t-coordinate", data(lambda p: h5(p, **{"t-coordinate": None}))),
    Case("data-x-length", "train", BAD, "x-coordinate", data(lambda p: h5(p, **{"x-coordinate": np.arange(5.0)}))),
    Case("data-rank-2", "train", BAD, "rank", data(lambda p: h5(p, tensor=np.zeros((N, T), np.float32)))),
    Case(
        "data-unknown-layout", "train", BAD, "unknown layout", data(lambda p: h5(p, tensor=None, other=np.zeros(3)))
    ),  # fmt: skip
    Case("data-missing", "train", ["--set", "data.path=nowhere.h5"], "file not found"),
    Case("data-initial-step", "train", ["--set", "data.initial_step=12"], "data.initial_step"),
    Case("data-patch-size", "train", ["--set", "model.encoder.patch_size=5"], "patch_size"),
    Case("only-unknown-stage", "train", ["--only", "fno_baselin"], "--only fno_baselin: no stage named"),
    Case("only-nothing-to-train", "train", ["--only", "fno_baseline"], "nothing to train"),
    Case(
        "equal-time-alone",
        "train",
        [
            "--only",
            "fno_baseline",
            "--set",
            "stages.fno_baseline.epochs=3",
            "--set",
            "stages.fno_baseline.equal_time=true",
        ],
        "stages.fno_baseline.equal_time",
    ),  # fmt: skip
    Case(
        "equal-time-and-budget",
        "train",
        ["--set", "stages.fno_baseline.equal_time=true", "--set", "stages.fno_baseline.time_budget_s=30"],
        "stages.fno_baseline",
    ),  # fmt: skip
    Case(
        "fourier-latent-dim",
        "train",
        ["--set", "model.encoder.arch=fourier", "--set", "model.decoder.arch=fourier"],
        "latent.dim",
    ),  # fmt: skip
    Case(
        "anchored-tokens", "train", ["--set", "model.encoder.arch=conv", "--set", "latent.tokens=5"], "latent.tokens=5"
    ),  # fmt: skip
    Case("needs-anchored", "train", ["--set", "model.operator.arch=spectral"], "model.operator.arch=spectral"),
    Case(
        "data-list-grids",
        "train",
        ["--set", "data.path=[good.h5, other.h5]"],
        "one shape",
        lambda ws: good_file(ws / "other.h5", x=16),
    ),  # fmt: skip
    Case(
        "data-list-frames",
        "train",
        ["--set", "data.path=[good.h5, other.h5]"],
        "one shape",
        lambda ws: good_file(ws / "other.h5", t=8),
    ),  # fmt: skip
    Case(
        "data-list-same-stem",
        "train",
        ["--set", "data.path=[good.h5, sub/good.h5]"],
        "share the name",
        lambda ws: (ws / "sub").mkdir() or good_file(ws / "sub" / "good.h5"),
    ),  # fmt: skip
    Case("data-list-empty", "train", ["--set", "data.path=[]"], "data.path"),
    Case("data-s3-credentials", "train", ["--set", "data.path=s3://AK:Sh0uldNotLeak@bucket/good.h5"], "credentials"),
    Case("data-file-uri-relative", "train", ["--set", "data.path=file://good.h5"], "absolute path"),
    Case("data-file-uri-missing", "train", ["--set", "data.path=file:///nowhere/good.h5"], "file not found"),
    Case("data-unreadable", "train", BAD, "permission", data(unreadable)),
    Case("data-coordinate-7tib", "train", BAD, "'x-coordinate' has 962072674304 entries", data(huge_coordinate)),
    Case("data-float64-beyond-float32", "train", BAD, "1e+39 at sample 5", data(float64_beyond_float32)),
    Case("data-external-link", "train", BAD, "'tensor' is an external link", data(linked(external_link))),
    Case("data-soft-link-dangling", "train", BAD, "soft link to '/elsewhere/tensor'", data(linked(soft_link_dangling))),
    Case("data-soft-link-to-external", "train", BAD, "external link", data(linked(soft_link_through_external))),
    Case("data-external-storage", "train", BAD, "external file", data(linked(external_storage))),
    Case("data-virtual-dataset", "train", BAD, "virtual dataset", data(linked(virtual))),
    Case("data-per-seed-external", "train", BAD, "'0001' is an external link", data(per_seed_external)),
    Case(
        "data-zero-samples",
        "train",
        BAD,
        "bad.h5: dataset 'tensor' has shape (0, 12, 32): no samples",
        data(lambda p: h5(p, tensor=np.zeros((0, T, X), np.float32))),
    ),  # fmt: skip
    # YAML and flags
    bad_yaml("yaml-not-utf8", "UTF-8", b"include: base.yaml\nx: \xff\xfe\n"),
    Case(
        "yaml-include-not-utf8",
        "train",
        [],
        "UTF-8",
        both(write("inc.yaml", b"a: \xe9\n"), write("bad.yaml", "include: [base.yaml, inc.yaml]\n")),
        config="bad.yaml",
    ),  # fmt: skip
    bad_yaml(
        "yaml-duplicate-key", "duplicate key", "include: base.yaml\ntraining:\n  batch_size: 8\n  batch_size: 16\n"
    ),
    bad_yaml("yaml-dotted-key", "dotted keys", "include: base.yaml\ntraining.batch_size: 8\n"),
    bad_yaml("yaml-syntax", "YAML syntax", "training: {batch_size: 8\n"),
    bad_yaml("yaml-top-level-list", "mapping", "- a\n- b\n"),
    bad_yaml("yaml-include-missing", "include", "include: nope.yaml\n"),
    Case(
        "yaml-include-cycle",
        "train",
        [],
        "cycle",
        both(write("a.yaml", "include: b.yaml\n"), write("b.yaml", "include: a.yaml\n")),
        config="a.yaml",
    ),  # fmt: skip
    bad_yaml("yaml-unknown-key", "did you mean", "include: base.yaml\ntraining: {batch_sise: 8}\n"),
    Case("yaml-missing-file", "train", [], "not found", config="nope.yaml"),
    Case("yaml-directory", "train", [], "directory", lambda ws: (ws / "d.yaml").mkdir(), config="d.yaml"),
    Case("set-no-equals", "train", ["--set", "training.batch_size"], "--set"),
    Case("set-bad-yaml", "train", ["--set", "training.batch_size=[1"], "--set"),
    Case("set-unknown-key", "train", ["--set", "training.lr=1"], "--set: unknown key"),
    Case("set-blamed-not-file", "train", ["--set", "scaling.num_workers=3"], "--set: training.batch_size"),
    bad_yaml("yaml-unhashable-key", "plain value", "include: base.yaml\n[1, 2]: 3\n"),
    # impossible values
    Case("betas", "train", ["--set", "stages.operator.optimizer.betas=[0.9, 1.5]"], "betas"),
    Case("lr-inf", "train", ["--set", "stages.operator.optimizer.lr=.inf"], "finite"),
    Case("lr-nan", "train", ["--set", "stages.autoencoder.optimizer.lr=.nan"], "finite"),
    Case("lambda-rollout", "train", ["--set", "stages.operator.lambda_rollout=-1"], "lambda_rollout"),
    Case("plateau-patience", "train", ["--set", "stages.operator.scheduler.patience=-2"], "patience"),
    Case("grad-clip", "train", ["--set", "training.grad_clip=-1"], "grad_clip"),
    Case("corrector-off", "train", ["--set", "eval.corrector=diffusion"], "eval.corrector"),
    Case("ray-cpus", "train", ["--set", "ray.num_cpus=1", "--set", "scaling.num_workers=2"], "ray.num_cpus"),
    Case("gate-ratio-metric", "train", ["--set", "gate.ratios={nRMSEE: 1.1}"], "gate.ratios"),
    Case("batch-too-big", "train", ["--set", "training.batch_size=4096"], "training.batch_size"),
    Case("stage-batch-too-big", "train", ["--set", "stages.operator.batch_size=4096"], "stages.operator.batch_size"),
    Case(
        "stage-batch-indivisible",
        "train",
        ["--set", "scaling.num_workers=2", "--set", "stages.autoencoder.batch_size=7"],
        "stages.autoencoder.batch_size",
    ),  # fmt: skip
    Case("stage-needs", "train", ["--set", "stages.autoencoder.epochs=0"], "stages.autoencoder"),
    Case("unknown-arch", "train", ["--set", "model.operator.arch=unet9"], "model.operator.arch"),
    Case("workers-range", "train", ["--set", "scaling.num_workers=[3, 1]"], "num_workers"),
    Case("seed-negative", "train", ["--set", "training.seed=-1"], "training.seed"),
    Case(
        "wandb-mode-env",
        "train",
        [],
        "WANDB_MODE",
        env={"WANDB_MODE": "sometimes"},
        setup=write("w.yaml", "include: base.yaml\nlogging: {wandb: {enabled: true}}\n"),
        config="w.yaml",
    ),  # fmt: skip
    Case(
        "wandb-key-file",
        "train",
        [],
        "WANDB_API_KEY_FILE",
        env={"WANDB_API_KEY_FILE": "/nonexistent/key"},
        setup=write("w.yaml", "include: base.yaml\nlogging: {wandb: {enabled: true}}\n"),
        config="w.yaml",
    ),  # fmt: skip
    Case("resources-negative", "train", ["--set", "scaling.resources={node: -1}"], "scaling.resources"),
    Case("resources-reserved", "train", ["--set", "scaling.resources={CPU: 1}"], "cpus_per_worker"),
    Case(
        "gen-output-under-file",
        "generate",
        ["--set", "data.path=afile/gen.h5"],
        "not a folder",
        write("afile", "x"),
        config="gen.yaml",
    ),  # fmt: skip
    Case(
        "train-generated-under-file",
        "train",
        ["--set", "data.path=afile/gen.h5", "--set", "data.generate={samples: 8, resolution: 32, frames: 6}"],
        "not a folder",
        write("afile", "x"),
    ),  # fmt: skip
    # names and storage
    Case("name-traversal", "train", ["--name", "../../x"], "--name"),
    Case("name-slash", "train", ["--name", "a/b"], "--name"),
    Case("name-too-long", "train", ["--name", "n" * 300], "--name"),
    Case("name-empty", "train", ["--name", ""], "--name"),
    Case("storage-empty", "train", ["--storage", ""], "--storage"),
    Case("storage-is-file", "train", ["--storage", "afile"], "--storage", write("afile", "x")),
    Case("storage-under-file", "train", ["--storage", "afile/runs"], "--storage", write("afile", "x")),
    Case("storage-scheme", "train", ["--storage", "foo://bucket/runs"], "unknown scheme"),
    Case("storage-relative-file-uri", "train", ["--storage", "file://runs"], "--storage"),
    Case("storage-credentials", "train", ["--storage", "s3://AK:Sh0uldNotLeak@bucket/runs"], "credentials"),
    Case("tune-name-traversal", "tune", ["--name", "../../x"], "--name", config="sweep.yaml"),
    Case("gate-family-path", "tune", ["--set", "gate.family=/etc"], "gate.family", config="sweep.yaml"),
    Case("gate-family-dotdot", "train", ["--set", "gate.family=.."], "gate.family"),
    # run folders: resuming a damaged run, evaluating one
    Case("resume-corrupt-run-json", "train", RUN, "run.json", damaged(put("run.json", "{not json"))),
    Case("resume-run-json-no-digest", "train", RUN, "config_digest", damaged(put("run.json", "{}"))),
    Case("resume-corrupt-summary", "train", RUN, "summary.json", damaged(put("summary.json", "[1, 2"))),
    Case("resume-summary-stages-list", "train", RUN, "summary.json", damaged(put("summary.json", '{"stages": []}'))),
    Case(
        "resume-bad-stage-record",
        "train",
        RUN,
        "stage record",
        damaged(summary_edit(lambda s: s["stages"].update(operator={"epochs": 3}))),
    ),  # fmt: skip
    Case(
        "resume-changed-corrupt-config",
        "train",
        [*RUN, "--set", "training.seed=5", "--accept-config-change"],
        "config.yaml",
        damaged(put("config.yaml", "a: [1,\n")),
    ),  # fmt: skip
    Case(
        "resume-changed-config", "train", [*RUN, "--set", "training.seed=5"], "config differs", damaged(lambda r: None)
    ),
    Case("run-locked", "train", RUN, "in use by", both(damaged(lambda r: None), hold_lock)),
    Case(
        "resume-data-changed",
        "train",
        RUN,
        "the data changed since the run started",
        both(damaged(lambda r: None), change_data),
    ),
    Case("run-folder-is-file", "train", RUN, "is a file, not a run folder", write("runs/r", "x")),
    Case("run-json-is-folder", "train", RUN, "run.json: is a folder", damaged(as_folder("run.json"))),
    Case("summary-is-folder", "train", RUN, "summary.json: is a folder", damaged(as_folder("summary.json"))),
    Case("resume-summary-nested", "train", RUN, "nested too deeply", damaged(put("summary.json", NESTED))),
    Case("run-folder-symlink", "train", RUN, "the run folder is a symbolic link", run_elsewhere),
    Case("run-new-folder-symlink", "train", RUN, "the run folder is a symbolic link", link_to_empty),
    Case("run-inner-symlink", "train", RUN, "stages: is a symbolic link", damaged(stages_linked)),
    Case(
        "accept-architecture-change",
        "train",
        [*RUN, "--set", "model.operator.hidden=32", "--accept-config-change"],
        "model.operator.hidden); this change needs --restart",
        damaged(lambda r: None),
    ),  # fmt: skip
    Case(
        "accept-latent-change",
        "train",
        [*RUN, "--set", "latent.dim=32", "--accept-config-change"],
        "needs --restart",
        damaged(lambda r: None),
    ),  # fmt: skip
    Case(
        "eval-not-a-run",
        "evaluate",
        EVAL,
        "not a run folder",
        lambda ws: (ws / "runs" / "r").mkdir(parents=True),
        config=None,
    ),  # fmt: skip
    Case("eval-corrupt-summary", "evaluate", EVAL, "summary.json", damaged(put("summary.json", "{")), config=None),
    Case(
        "eval-incomplete",
        "evaluate",
        EVAL,
        "has not completed",
        damaged(summary_edit(lambda s: s["stages"].pop("operator"))),
        config=None,
    ),  # fmt: skip
    Case(
        "eval-export-missing",
        "evaluate",
        EVAL,
        "missing",
        damaged(lambda r: (r / "stages" / "operator" / "export.pt").unlink()),
        config=None,
    ),  # fmt: skip
    Case("eval-export-corrupt", "evaluate", EVAL, "cannot be read", damaged(corrupt_export), config=None),
    Case("eval-export-tampered", "evaluate", EVAL, "altered", damaged(tamper_export), config=None),
    Case(
        "eval-no-digest",
        "evaluate",
        EVAL,
        "digest",
        damaged(summary_edit(lambda s: s["stages"]["operator"].pop("weights_sha256"))),
        config=None,
    ),  # fmt: skip
    Case("eval-corrupt-config", "evaluate", EVAL, "config.yaml", damaged(put("config.yaml", "{{{")), config=None),
    Case(
        "eval-config-unknown-key",
        "evaluate",
        EVAL,
        "unknown key",
        damaged(put("config.yaml", "bogus: 1\n")),
        config=None,
    ),  # fmt: skip
    Case(
        "eval-bad-corrector",
        "evaluate",
        EVAL,
        "corrector",
        damaged(summary_edit(lambda s: s.update(eval={"corrector": "magic"}))),
        config=None,
    ),  # fmt: skip
    Case("eval-run-traversal", "evaluate", ["--run", "runs/.."], "--run", config=None),
    Case("eval-run-is-file", "evaluate", EVAL, "is a file, not a run folder", write("runs/r", "x"), config=None),
    Case(
        "eval-summary-nested", "evaluate", EVAL, "nested too deeply", damaged(put("summary.json", NESTED)), config=None
    ),  # fmt: skip
    Case("eval-run-symlink", "evaluate", EVAL, "symbolic link", run_elsewhere, config=None),
    Case("eval-export-symlink", "evaluate", EVAL, "export.pt: is a symbolic link", damaged(export_linked), config=None),
    Case(
        "eval-export-outside",
        "evaluate",
        EVAL,
        "refusing an export from outside the run",
        damaged(summary_edit(lambda s: s["stages"]["operator"].update(export="/etc/passwd"))),
        config=None,
    ),  # fmt: skip
    Case(
        "eval-completed-no-export",
        "evaluate",
        EVAL,
        "stage operator is recorded as completed but records no export",
        damaged(summary_edit(lambda s: s["stages"]["operator"].pop("export"))),
        config=None,
    ),  # fmt: skip
    Case(
        "eval-data-changed",
        "evaluate",
        EVAL,
        "the data changed since the run started",
        both(damaged(lambda r: None), change_data),
        config=None,
    ),  # fmt: skip
    Case(
        "eval-no-data-digest",
        "evaluate",
        EVAL,
        "records no data digest",
        damaged(summary_edit(lambda s: s.pop("data_sha256"))),
        config=None,
    ),  # fmt: skip
    Case(
        "eval-data-gone",
        "evaluate",
        EVAL,
        "file not found",
        both(damaged(lambda r: None), lambda ws: (ws / "good.h5").unlink()),
        config=None,
    ),  # fmt: skip
    # sweeps and generation
    Case(
        "sweep-randint-order",
        "tune",
        ["--set", "sweep.space={training.seed: {randint: [5, 1]}}"],
        "randint",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-uniform-strings",
        "tune",
        ["--set", "sweep.space={stages.operator.optimizer.lr: {uniform: [adam, sgd]}}"],
        "uniform",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-loguniform-zero",
        "tune",
        ["--set", "sweep.space={stages.operator.optimizer.lr: {loguniform: [0, 1]}}"],
        "loguniform",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-choice-empty",
        "tune",
        ["--set", "sweep.space={training.seed: {choice: []}}"],
        "choice",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-forbidden-key",
        "tune",
        ["--set", "sweep.space={data.x_stride: {choice: [1, 2]}}"],
        "data.x_stride",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-value-invalid",
        "tune",
        ["--set", "sweep.space={training.batch_size: {choice: [8, -1]}}"],
        "training.batch_size",
        config="sweep.yaml",
    ),  # fmt: skip
    Case("sweep-empty", "tune", ["--set", "sweep.space={}"], "empty", config="sweep.yaml"),
    Case(
        "sweep-ray-cpus",
        "tune",
        ["--set", "ray.num_cpus=2", "--set", "sweep.max_concurrent_trials=2"],
        "ray.num_cpus",
        config="sweep.yaml",
    ),  # fmt: skip
    Case("gen-seed-negative", "generate", ["--set", "data.generate.seed=-1"], "seed", config="gen.yaml"),
    Case("gen-resolution", "generate", ["--set", "data.generate.resolution=1"], "resolution", config="gen.yaml"),
    Case("gen-nu-inf", "generate", ["--set", "data.generate.nu=.inf"], "nu", config="gen.yaml"),
    Case("gen-frames", "generate", ["--set", "data.generate.frames=1"], "frames", config="gen.yaml"),
    Case("gen-missing-section", "generate", [], "data.generate"),
    Case("gen-exists", "generate", ["--set", "data.path=good.h5"], "exists", config="gen.yaml"),
    # hostile config files: bounded parsing (aliases, depth, includes, special files)
    bad_yaml("yaml-billion-laughs", "aliases are expanded", LAUGHS),
    bad_yaml("yaml-deep-flow", "nested deeper than", f"x: {DEEP}\n"),
    bad_yaml("yaml-recursive-alias", "contains it", "a: &a [1, *a]\n"),
    Case("set-deep-value", "train", ["--set", f"training.batch_size={DEEP}"], "--set training.batch_size"),
    Case("set-deep-key", "train", ["--set", "a." * 40 + "b=1"], "dotted parts"),
    Case("yaml-include-chain", "train", [], "levels deep", include_chain(40), config="bad.yaml"),
    Case("yaml-include-fanout", "train", [], "more than 64 files", include_fanout, config="bad.yaml"),
    bad_yaml("yaml-include-nul", "cannot be a file name", 'include: "a\\0b.yaml"\n'),
    bad_yaml("yaml-include-long-name", "cannot be a file name", f"include: {'n' * 5000}.yaml\n"),
    Case("yaml-device", "train", [], "larger than 1 MiB", config="/dev/zero"),
    # absurd sizes, against this machine
    Case(
        "workers-beyond-cpus",
        "train",
        ["--set", "scaling.num_workers=100000", "--set", "training.batch_size=100000"],
        "scaling.num_workers",
    ),  # fmt: skip
    Case("model-huge", "train", ["--set", "model.operator.hidden=1000000"], "scaling.allow_large"),
    Case(
        "sweep-model-huge",
        "tune",
        ["--set", "sweep.space={model.operator.hidden: {choice: [64, 1000000]}}"],
        "value 1000000",
        config="sweep.yaml",
    ),  # fmt: skip
    Case("data-memory-declared-huge", "train", BAD, "data.mode: memory", data(declared(HUGE))),
    Case(
        "data-auto-budget-huge",
        "train",
        [*BAD, "--set", "data.mode=auto", "--set", "data.memory_budget_mb=1e15"],
        "data.memory_budget_mb",
        data(declared(HUGE)),
    ),  # fmt: skip
    Case(
        "data-stream-spill-800PB",
        "train",
        [*BAD, "--set", "data.mode=stream", "--validate-only"],
        "data.spill_dir",
        data(declared(5 * 10**14)),
    ),  # fmt: skip
    Case(
        "gen-800PB-validate-only",
        "generate",
        ["--set", "data.generate={samples: 1000000000, resolution: 1000000, frames: 201}", "--validate-only"],
        "data.generate",
        config="gen.yaml",
    ),  # fmt: skip
    Case(
        "train-generate-huge",
        "train",
        ["--set", "data.path=new.h5", "--set", "data.generate={samples: 1000000000, resolution: 1000000}"],
        "data.generate",
    ),  # fmt: skip
    Case("object-store-tiny", "train", ["--set", "ray.object_store_mb=10"], "ray.object_store_mb"),
    Case("object-store-huge", "train", ["--set", "ray.object_store_mb=1000000000"], "ray.object_store_mb"),
    # sweeps: protected sections, every value a trial can draw, ASHA, the sweep's name and lock
    Case(
        "sweep-bare-scaling",
        "tune",
        ["--set", "sweep.space={scaling: {choice: [{num_workers: 2}]}}"],
        "sweep.space.scaling",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-bare-data",
        "tune",
        ["--set", "sweep.space={data: {choice: [{path: other.h5}]}}"],
        "sweep.space.data",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-batch-beyond-data",
        "tune",
        ["--set", "sweep.space={training.batch_size: {grid: [8, 4096]}}"],
        "value 4096",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-corrector-stage-off",
        "tune",
        [
            "--set",
            "eval.corrector=diffusion",
            "--set",
            "stages.diffusion_residual.epochs=1",
            "--set",
            "sweep.space={stages.diffusion_residual.epochs: {choice: [1, 0]}}",
        ],
        "eval.corrector",
        config="sweep.yaml",
    ),  # fmt: skip
    Case(
        "sweep-uniform-int-key",
        "tune",
        ["--set", "sweep.space={training.batch_size: {uniform: [8, 16]}}"],
        "training.batch_size",
        config="sweep.yaml",
    ),  # fmt: skip
    Case("asha-grace", "tune", ["--set", "sweep.scheduler.grace_period=100"], "grace_period", config="sweep.yaml"),
    Case("asha-factor-one", "tune", ["--set", "sweep.scheduler.reduction_factor=1"], "> 1", config="sweep.yaml"),
    Case(
        "asha-rungs",
        "tune",
        ["--set", "sweep.scheduler.reduction_factor=1.000001"],
        "rungs",
        config="sweep.yaml",
    ),  # fmt: skip
    Case("sweep-named-registry", "tune", ["--name", "registry"], "reserved", config="sweep.yaml"),
    Case("train-named-registry", "train", ["--name", "registry"], "reserved"),
    Case("sweep-named-like-run", "tune", RUN, "training run", damaged(lambda r: None), config="sweep.yaml"),
    Case("sweep-locked", "tune", ["--name", "s", "--storage", "runs"], "in use by", holding("s"), config="sweep.yaml"),
    # W&B and the environment
    Case("wandb-project-slash", "train", ["--set", "logging.wandb.project=team/proj"], "logging.wandb.project"),
    Case("wandb-project-hash", "train", ["--set", "logging.wandb.project='a#b'"], "logging.wandb.project"),
    Case(
        "wandb-key-fifo",
        "train",
        [],
        "not a regular file",
        both(W_YAML, fifo("key.fifo")),
        env={"WANDB_API_KEY_FILE": "key.fifo"},
        config="w.yaml",
    ),  # fmt: skip
    Case(
        "wandb-key-device",
        "train",
        [],
        "not a regular file",
        W_YAML,
        env={"WANDB_API_KEY_FILE": "/dev/zero"},
        config="w.yaml",
    ),  # fmt: skip
    Case("ray-address-http", "train", [], "RAY_ADDRESS", env={"RAY_ADDRESS": "http://127.0.0.1:8265"}),
    Case("ray-address-no-port", "train", [], "RAY_ADDRESS", env={"RAY_ADDRESS": "headnode"}),
    Case("ray-address-bad-port", "tune", [], "RAY_ADDRESS", env={"RAY_ADDRESS": "10.0.0.1:99999"}, config="sweep.yaml"),
    Case("ray-address-generate", "generate", [], "RAY_ADDRESS", env={"RAY_ADDRESS": "a b:1"}, config="gen.yaml"),
    Case(
        "ray-address-evaluate",
        "evaluate",
        EVAL,
        "RAY_ADDRESS",
        damaged(lambda r: None),
        env={"RAY_ADDRESS": "ray://"},
        config=None,
    ),  # fmt: skip
    # secrets in URIs: signed URLs' parameters are credentials, a data URI takes no query
    Case("data-presigned-s3", "train", ["--set", f"data.path=s3://bucket/good.h5?{PRESIGNED}"], "credentials"),
    Case(
        "data-signed-gcs",
        "train",
        ["--set", "data.path=gs://bucket/good.h5?X-Goog-Signature=Sh0uldNotLeak"],
        "credentials",
    ),  # fmt: skip
    Case("data-query", "train", ["--set", "data.path=s3://bucket/good.h5?region=eu"], "query string"),
    Case("data-file-uri-query", "train", ["--set", "data.path=file:///tmp/good.h5?sig=Sh0uldNotLeak"], "query"),
    Case("storage-presigned", "train", ["--storage", f"s3://bucket/runs?{PRESIGNED}"], "credentials"),
    Case("storage-sas", "train", ["--storage", "s3://bucket/runs?sv=2024&sig=Sh0uldNotLeak"], "credentials"),
    # spill folders
    Case("spill-dir-is-file", "train", ["--set", "data.spill_dir=afile"], "data.spill_dir", write("afile", "x")),
    Case("spill-dir-under-file", "train", ["--set", "data.spill_dir=afile/sub"], "not a folder", write("afile", "x")),
    Case("spill-dir-uri", "train", ["--set", "data.spill_dir=s3://b/spill"], "local disk"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with a digest of its contents (folders as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = "dir"
        elif not p.is_file():  # a FIFO: reading it would wait for a writer
            out[rel] = "special"
        else:
            try:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:
                out[rel] = f"unreadable:{p.stat().st_size}"
    return out


class RayStarted(BaseException):
    """Raised by the tripwire: a BaseException, so no `except Exception` in the code can hide it."""


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    good_file(ws / "good.h5")
    (ws / "base.yaml").write_text(BASE)
    (ws / "sweep.yaml").write_text(SWEEP)
    (ws / "gen.yaml").write_text(GENERATE)
    monkeypatch.chdir(ws)
    for k in ("RAY_ADDRESS", "WANDB_MODE", "WANDB_API_KEY", "WANDB_API_KEY_FILE"):
        monkeypatch.delenv(k, raising=False)
    yield ws
    while HELD:
        HELD.pop().release()
    for p in ws.rglob("*"):  # undo chmod 0, so pytest can clean up
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture
def no_ray(monkeypatch):
    """`ray.init` (however it is reached) raises instead of starting anything."""
    import ray
    import ray._private.worker

    def tripwire(*_, **__):
        raise RayStarted("ray.init was called")

    monkeypatch.setattr(ray, "init", tripwire)
    monkeypatch.setattr(ray._private.worker, "init", tripwire)


def test_enough_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_before_ray_and_writes_nothing(case, workspace, no_ray, monkeypatch, capsys):
    if case.id == "data-unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    if case.setup:
        case.setup(workspace)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(workspace.parent)
    argv = (["--config", case.config] if case.config else []) + case.args
    monkeypatch.setattr(sys, "argv", [f"ray_jobs.{case.job}", *argv])
    job = importlib.import_module(f"ray_jobs.{case.job}")
    with pytest.raises(SystemExit) as exit_:
        job.main()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect in lines[0], lines[0]
    assert "Sh0uldNotLeak" not in err
    assert snapshot(workspace.parent) == before, "the job wrote something"


FITS = "{training.batch_size: {grid: [8, 16]}, stages.operator.optimizer.lr: {loguniform: [1e-4, 1e-2]}}"

# Must-work controls: inputs as users write them, next to the refused ones, that must still pass.
CONTROLS = [
    # (id, job, args, env, a word stdout must hold)
    ("wandb-mode-upper-case", "train", ["--config", "w.yaml"], {"WANDB_MODE": "OFFLINE"}, "W&B      offline"),
    ("wandb-mode-empty", "train", ["--config", "w.yaml"], {"WANDB_MODE": ""}, "W&B      "),
    ("ray-address-host-port", "train", ["--config", "base.yaml"], {"RAY_ADDRESS": "10.0.0.1:6379"}, "OK"),
    ("ray-address-client", "train", ["--config", "base.yaml"], {"RAY_ADDRESS": "ray://head:10001"}, "OK"),
    (
        "allow-large-model",
        "train",
        ["--config", "base.yaml", "--set", "model.operator.hidden=1000000", "--set", "scaling.allow_large=true"],
        {},
        "OK",
    ),
    (
        "stream-to-new-spill-dir",
        "train",
        ["--config", "base.yaml", "--set", "data.mode=stream", "--set", "data.spill_dir=spill/here"],
        {},
        "OK",
    ),
    ("yaml-anchors", "train", ["--config", "anchors.yaml"], {}, "OK"),
    ("sweep-every-value-fits", "tune", ["--config", "sweep.yaml", "--set", f"sweep.space={FITS}"], {}, "OK"),
]


@pytest.mark.parametrize("id, job, args, env, expect", CONTROLS, ids=[c[0] for c in CONTROLS])
def test_inputs_as_users_write_them_validate(id, job, args, env, expect, workspace, no_ray, monkeypatch, capsys):
    """`--validate-only` passes (exit 0, OK), before Ray and without writing anything, and W&B accepts
    the environment the job leaves: WANDB_MODE=OFFLINE is offline, an empty WANDB_MODE is unset."""
    (workspace / "w.yaml").write_text("include: base.yaml\nlogging: {wandb: {enabled: true}}\n")
    (workspace / "anchors.yaml").write_text(
        "include: base.yaml\nstages:\n  autoencoder: {optimizer: &opt {lr: 0.002, name: adam}}\n"
        "  operator: {optimizer: *opt}\n"
    )
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(workspace.parent)
    monkeypatch.setattr(sys, "argv", [f"ray_jobs.{job}", *args, "--validate-only"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"ray_jobs.{job}").main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    assert expect in out and out.rstrip().endswith("OK"), out
    assert snapshot(workspace.parent) == before, "the job wrote something"
    if "WANDB_MODE" in env:
        assert os.environ.get("WANDB_MODE") == (env["WANDB_MODE"].lower() or None)
        import wandb

        wandb.Settings().update_from_env_vars(dict(os.environ))  # W&B itself refuses 'OFFLINE' and ''


@pytest.mark.parametrize(
    "job, args",
    [
        ("train", ["--config", "base.yaml", "--set", "data.path=bad.h5"]),
        ("tune", ["--config", "sweep.yaml", "--set", "sweep.space={training.seed: {randint: [5, 1]}}"]),
        ("generate", ["--config", "gen.yaml", "--set", "data.generate.nu=.inf"]),
        ("evaluate", ["--run", "runs/missing"]),
    ],
)
def test_process_contract_exit_2_one_line_no_traceback(job, args, workspace):
    (workspace / "bad.h5").write_text("not hdf5")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens there
    r = subprocess.run([sys.executable, "-m", f"ray_jobs.{job}", *args], cwd=workspace, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
