"""Peak memory of a 2D pipeline run at N and 4N trajectories, `data.mode` memory vs stream.

Issue 16 asks that memory not grow with the dataset: the driver holds metadata only, the workers
read their shards in chunks and spill them to local disk. This script runs the whole pipeline
(`python -m ray_jobs.train`, embedded local Ray, autoencoder + latent cache + operator; the other
stages off) on generated 2D advection data and samples, every 0.2 s, every process the run
started (the driver and its descendants: the Ray head, training workers, Ray Data tasks, the
encoder actors):

- peak RSS (VmHWM) of the driver and of the largest training worker and Ray task process;
- peak private memory (RssAnon: heap, not the shared object store nor the page cache);
- peak /dev/shm use (Ray's object store lives there) above what it was before the run.

The figure is each mode's peak at 4N over its peak at N, per role (goal: <= 1.3 for stream),
and the autoencoder's and operator's training throughput, stream over memory (goal: >= 0.8).
Runs alternate modes (memory N, stream N, memory 4N, stream 4N) so drift hits both alike.

    .venv/bin/python bench/memory.py             # N = 250 trajectories of 21 x 64 x 64 (86 MB; 4N 344 MB)
    .venv/bin/python bench/memory.py --n 60      # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import OUT, ROOT, emit

BENCH = OUT / "memory"


def generate(n: int, resolution: int, frames: int) -> tuple[Path, list[str]]:
    """The N-trajectory file (generated once, outside the measurement) and the overrides that
    describe it, so a missing file would be generated with the same fields."""
    from ups.data.generate import generate as write
    from ups.schema import GenerateConfig

    gen = {"pde": "advection2d", "beta": 1.0, "beta_y": 0.5, "samples": n, "resolution": resolution,
           "frames": frames, "t_end": 1.0, "seed": 0, "chunk_size": 100}  # fmt: skip
    path = BENCH / f"advection2d_n{n}_r{resolution}_f{frames}.h5"
    if not path.exists():
        BENCH.mkdir(parents=True, exist_ok=True)
        write(GenerateConfig(**gen), str(path), progress=lambda _m: None)
    return path, [f"data.generate.{k}={v}" for k, v in gen.items()]


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _tree(root: int) -> dict[int, str]:
    """pid -> command line of `root` and all its descendants, now."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    cmds = {}
    for pid in tree:
        try:
            cmds[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return cmds


def role(pid: int, root: int, cmd: str) -> str:
    if pid == root:
        return "driver"
    if "RayTrainWorker" in cmd:
        return "train_worker"
    if cmd.startswith("ray::"):
        return "ray_task"  # Ray Data tasks, the encoder actors, the train controller, idle workers
    return "ray_system"  # gcs_server, raylet, dashboard, log monitor


def shm_used() -> int:
    s = os.statvfs("/dev/shm")
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def measure(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run `cmd`, sampling its process tree; per role the peak VmHWM and RssAnon of one process."""
    peaks: dict[str, dict[str, int]] = {}
    shm0, shm_peak, private_total = shm_used(), 0, 0
    t0 = time.perf_counter()
    with log.open("w") as sink:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        while p.poll() is None:
            total = 0
            for pid, line in _tree(p.pid).items():
                try:
                    st = _status(pid)
                except (OSError, ValueError):
                    continue
                r = peaks.setdefault(role(pid, p.pid, line), {"VmHWM": 0, "RssAnon": 0})
                r["VmHWM"] = max(r["VmHWM"], st.get("VmHWM", 0))
                r["RssAnon"] = max(r["RssAnon"], st.get("RssAnon", 0))
                total += st.get("RssAnon", 0)
            private_total = max(private_total, total)
            shm_peak = max(shm_peak, shm_used() - shm0)
            time.sleep(0.2)
    if p.returncode != 0:
        raise SystemExit(f"memory bench: the run failed ({p.returncode}); see {log}")
    mib = 1 << 20
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": {k: round(v["VmHWM"] / mib) for k, v in sorted(peaks.items())},
        "peak_private_mib": {k: round(v["RssAnon"] / mib) for k, v in sorted(peaks.items())},
        "peak_private_total_mib": round(private_total / mib),
        "peak_shm_mib": round(shm_peak / mib),
    }


def throughput(run: Path, stage: str) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return statistics.median(r["samples_per_s"] for r in rows if r["stage"] == stage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=250, help="trajectories in the small run (the large has 4x)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--frames", type=int, default=21)
    args = ap.parse_args()

    runs: dict[str, dict[str, Any]] = {}
    for n in (args.n, 4 * args.n):
        path, gen = generate(n, args.resolution, args.frames)
        for mode in ("memory", "stream"):
            name = f"{mode}-{n}-{int(time.time())}"
            overrides = [
                f"data.path={path}", *gen, f"data.mode={mode}", f"data.spill_dir={BENCH / 'spill'}",
                "stages.autoencoder.epochs=1", "stages.operator.epochs=2", "stages.diffusion_residual.epochs=0",
                "stages.consistency_distill.epochs=0", "stages.steady_prior.epochs=0", "stages.fno_baseline.epochs=0",
                "eval.test=false", "eval.plots=false", "eval.max_samples=16", "logging.wandb.enabled=false",
                "checkpoint.every_steps=null",
                # Small networks: memory is about bytes, so the bench buys bytes (64 x 64 frames) with
                # little compute per byte. One token per 4 x 4 patch.
                f"latent.tokens={(args.resolution // 4) ** 2}", "model.encoder.hidden=8", "model.encoder.depth=1",
                "model.decoder.hidden=8", "model.decoder.depth=1", "model.operator.hidden=16", "model.operator.depth=2",
            ]  # fmt: skip
            cmd = [sys.executable, "-m", "ray_jobs.train", "--config", "configs/advection2d.yaml",
                   "--name", name, "--storage", str(BENCH / "runs")]  # fmt: skip
            for o in overrides:
                cmd += ["--set", o]
            env_free = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # embedded Ray, every run
            os.environ.clear()
            os.environ.update(env_free)
            r = measure(cmd, BENCH / f"{name}.log")
            run = BENCH / "runs" / name
            r["autoencoder_samples_per_s"] = throughput(run, "autoencoder")
            r["operator_samples_per_s"] = throughput(run, "operator")
            r["data_mib"] = round(path.stat().st_size / (1 << 20))
            runs[f"{mode}_{n}"] = r
            print(json.dumps({f"{mode}_{n}": r}), file=sys.stderr, flush=True)

    small, large = args.n, 4 * args.n

    def growth(mode: str, role_: str, key: str = "peak_rss_mib") -> float | None:
        """Peak at 4N / peak at N, for one role's largest process (role "" for a run-wide figure)."""
        a, b = runs[f"{mode}_{small}"][key], runs[f"{mode}_{large}"][key]
        a, b = (a.get(role_), b.get(role_)) if role_ else (a, b)
        return round(b / a, 2) if a and b else None

    figures = {
        "growth_4n_over_n": {
            mode: {
                "driver_rss": growth(mode, "driver"),
                "train_worker_rss": growth(mode, "train_worker"),
                "ray_task_rss": growth(mode, "ray_task"),
                "driver_private": growth(mode, "driver", "peak_private_mib"),
                "train_worker_private": growth(mode, "train_worker", "peak_private_mib"),
                "shm": growth(mode, "", "peak_shm_mib"),
            }
            for mode in ("memory", "stream")
        },
        "throughput_stream_over_memory_4n": {
            stage: round(runs[f"stream_{large}"][key] / runs[f"memory_{large}"][key], 2)
            for stage in ("autoencoder", "operator")
            for key in [f"{stage}_samples_per_s"]
        },
    }  # fmt: skip
    emit("memory", figures, runs=runs, n=small, resolution=args.resolution, frames=args.frames)


if __name__ == "__main__":
    main()
