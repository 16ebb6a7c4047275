"""What every benchmark shares: the machine/version context printed beside its figures, the one
JSON line it emits, and the pipeline configs it runs (the smoke recipe, shrunk per bench)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def context() -> dict[str, Any]:
    import numpy
    import torch

    ctx = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    try:
        import ray

        ctx["ray"] = ray.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        ctx["gpu"] = torch.cuda.get_device_name()
    return ctx


def emit(bench: str, figures: dict[str, Any], **extra: Any) -> None:
    print(json.dumps({"bench": bench, **figures, **extra, "context": context()}), flush=True)


def smoke(*overrides: str):
    """configs/smoke.yaml with its data generated if missing, plus per-bench overrides."""
    from ups.config import load_config

    base = ["logging.wandb.enabled=false", "eval.test=false", "eval.plots=false", "checkpoint.every_steps=null"]
    return load_config(ROOT / "configs" / "smoke.yaml", [*base, *overrides])


def run_pipeline(loaded, name: str) -> dict:
    from ups import pipeline

    return pipeline.run(
        loaded, pipeline.PipelineOptions(name=f"{name}-{int(time.time())}", storage=str(OUT), quiet=True)
    )


def stage_rows(summary: dict, stage: str) -> list[dict]:
    run = Path(OUT) / summary["name"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]
