"""What an embedded Ray costs while nothing runs on it: the CPU its own processes (GCS, raylet,
dashboard and its agents, prestarted idle workers) burn per second, with the dashboard on (the
project's default) and off, in fresh Ray sessions one after the other. On 2 cores every wake-up
of one of them takes a core from a 2-thread training worker at an OpenMP barrier, which is
one candidate for the step gap of bench/RESULTS.md "Ray workers at nice 15".

    .venv/bin/python bench/ray_idle.py [--seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import ROOT, emit

TICK = os.sysconf("SC_CLK_TCK")


def ray_cpu_s() -> float:
    """User + system CPU seconds of every process whose command line names Ray (its binaries all
    live under .../ray/, so that covers the raylet and gcs_server too)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Not this process nor the bench driver waiting on it (their command lines name ray_idle.py).
        if int(pid) not in (os.getpid(), os.getppid()) and "ray" in cmd:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def one(dashboard: bool, seconds: float) -> float:
    """CPU share (of one core) of an idle embedded Ray, measured after it settled."""
    import ray

    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address="local", num_cpus=4, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    time.sleep(15)  # start-up done, prestarted workers idle
    before = ray_cpu_s()
    time.sleep(seconds)
    share = (ray_cpu_s() - before) / seconds
    ray.shutdown()
    return share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)  # internal: one fresh session
    args = ap.parse_args()
    if args.one:
        print(one(args.one == "on", args.seconds))
        return
    shares: dict[str, list[float]] = {"dashboard_on": [], "dashboard_off": []}
    for _ in range(args.rounds):
        for key, flag in (("dashboard_on", "on"), ("dashboard_off", "off")):
            out = subprocess.run(
                [sys.executable, __file__, "--one", flag, "--seconds", str(args.seconds)],
                cwd=ROOT, check=True, capture_output=True, text=True,
            )  # fmt: skip
            shares[key].append(float(out.stdout.strip().splitlines()[-1]))
    emit(
        "ray_idle",
        {f"{k}_core_share": round(statistics.median(v), 3) for k, v in shares.items()}
        | {f"{k}_rounds": [round(x, 3) for x in v] for k, v in shares.items()},
        setting={"seconds": args.seconds, "rounds": args.rounds, "num_cpus": 4, "worker_niceness": 0},
    )


if __name__ == "__main__":
    main()
