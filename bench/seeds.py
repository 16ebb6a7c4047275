"""Headline figures over training seeds: each variant of a recipe trained once per seed with the
real CLI (`python -m ray_jobs.train`, embedded Ray unless --no-ray), the split fixed, and a table
of mean ± std per variant. Val selects (it is what the stages and the corrector choice read);
test is reported beside it, never used to choose.

    python bench/seeds.py --config configs/ns2d_cpu20.yaml --seeds 0 1 2 \\
        --variant surrogate \\
        --variant "fno=@only=fno_baseline stages.fno_baseline.epochs=500 stages.fno_baseline.time_budget_s=1140"

A variant is `label` (the config as it is) or `label=KEY=VALUE ...` (`--set`s; `@only=STAGES` becomes
`--only STAGES`). Runs go to bench/out/seeds/runs/<name>/<label>-s<seed>, seed by seed with the
variants alternating; a run already finished there is read, not repeated, so an interrupted bench
resumes. The table goes to bench/out/seeds/<name>.md and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import OUT, ROOT, context, emit

KEYS = ("nRMSE", "persistence_nRMSE", "recon_nRMSE", "one_step_nRMSE")


def parse_variant(text: str) -> tuple[str, list[str]]:
    label, _, rest = text.partition("=")
    flags: list[str] = []
    for item in rest.split():
        if item.startswith("@only="):
            flags += ["--only", item.removeprefix("@only=")]
        else:
            flags += ["--set", item]
    return label, flags


def run_one(config: str, label: str, flags: list[str], seed: int, storage: Path, no_ray: bool) -> dict:
    name = f"{label}-s{seed}"
    summary_path = storage / name / "summary.json"
    if summary_path.exists():
        done = json.loads(summary_path.read_text())
        if done.get("eval_test"):
            return done
    cmd = [sys.executable, "-m", "ray_jobs.train", "--config", config, "--storage", str(storage), "--name", name,
           "--set", f"training.seed={seed}", *flags, *(["--no-ray"] if no_ray else [])]  # fmt: skip
    print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    out = json.loads(summary_path.read_text())
    out["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    summary_path.with_name("bench_wall.json").write_text(json.dumps({"wall_s": out["bench_wall_s"]}))
    return out


def wall_of(storage: Path, label: str, seed: int, summary: dict) -> float | None:
    if "bench_wall_s" in summary:
        return summary["bench_wall_s"]
    f = storage / f"{label}-s{seed}" / "bench_wall.json"
    return json.loads(f.read_text())["wall_s"] if f.exists() else None


def scores(ev: dict) -> dict:
    """An evaluation's figures: summary.json keeps them at the top of `eval` (older runs: under `scores`)."""
    return ev.get("scores", ev)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variant", action="append", required=True, help="label or label=KEY=VALUE ...")
    p.add_argument("--name", help="table name (default: the config's stem)")
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()
    name = args.name or Path(args.config).stem
    storage = OUT / "seeds" / "runs" / name
    storage.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(text) for text in args.variant]
    # Seed-major, variants alternating within a seed: the VM drifts by +-25% over minutes, so each
    # variant's runs sit in the same stretches of time as the others' (what the time budgets read).
    done: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:
        for label, flags in variants:
            done[label, seed] = run_one(args.config, label, flags, seed, storage, args.no_ray)
    rows, figures = [], {}
    for label, flags in variants:
        per: dict[str, list[float]] = {"val": [], "test": [], "wall": []}
        extra: dict[str, list[float]] = {k: [] for k in KEYS[1:]}
        for seed in args.seeds:
            s = done[label, seed]
            per["val"].append(scores(s["eval"])["nRMSE"])
            per["test"].append(scores(s["eval_test"])["nRMSE"])
            wall = wall_of(storage, label, seed, s)
            if wall is not None:
                per["wall"].append(wall)
            for k in extra:
                if k in scores(s["eval_test"]):
                    extra[k].append(scores(s["eval_test"])[k])
        cmd = " ".join(["python -m ray_jobs.train --config", args.config, *flags, "--set training.seed=S"])
        wall = f"{statistics.mean(per['wall']):.0f}" if per["wall"] else "-"
        floors = f"{mean_std(extra['persistence_nRMSE'])} | {mean_std(extra['recon_nRMSE'])}"
        rows.append(f"| {label} | {mean_std(per['val'])} | {mean_std(per['test'])} | {floors} | {wall} | `{cmd}` |")
        figures[label] = {"val": per["val"], "test": per["test"], "wall_s": per["wall"]}
    ctx = context()
    head = [f"# {name}: mean ± std over seeds {args.seeds} (split fixed; val selects, test reported)", "",
            f"{ctx}", "",
            "| variant | val nRMSE | test nRMSE | persistence (test) | codec floor (test) | wall s | command |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    table = "\n".join(head + rows) + "\n"
    (OUT / "seeds" / f"{name}.md").write_text(table)
    print(table, file=sys.stderr)
    emit("seeds", figures, config=args.config, seeds=args.seeds)


if __name__ == "__main__":
    main()
