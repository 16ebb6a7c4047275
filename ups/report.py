"""The console's end-of-run table: each stage's status, epochs, best validation metric and wall
time, then the evaluation lines."""

from __future__ import annotations

from typing import Any

from ups.contracts import stage_records
from ups.stages import registry

# What each evaluation also scores, beside the surrogate (ups/eval/evaluate.py).
RIVALS = (("FNO baseline", "fno"), ("autoencoder reconstruction", "recon"), ("one step", "one_step"))


def summary_table(summary: dict[str, Any]) -> str:
    records = stage_records(summary)
    lines = [f"{'stage':<22}{'status':<11}{'epochs':>7}  {'best validation metric':<34}{'wall s':>8}"]
    for name in registry.names():
        rec = records.get(name)
        best = rec.best if rec else None
        metric = f"{best.metric}={best.value:.4g}" if best else "-"
        wall = rec.wall_time_s if rec else None
        status = rec.status if rec else "-"
        epochs = (rec.epochs if rec else 0) or 0
        lines.append(f"{name:<22}{status:<11}{epochs:>7}  {metric:<34}{wall if wall is not None else '-':>8}")
    for key in ("eval", "eval_test"):
        ev = summary.get(key)
        if ev:
            lines.append(
                f"{key} [{ev['split']}]: nRMSE {ev['nRMSE']:.4g} | operator "
                f"{ev.get('operator_nRMSE', ev['nRMSE']):.4g} | persistence {ev['persistence_nRMSE']:.4g}"
                f" | cRMSE {ev['cRMSE']:.3g} bRMSE {ev['bRMSE']:.3g} fRMSE_high {ev['fRMSE_high']:.3g}"
            )
            shown = " | ".join(
                f"{label} {ev[f'{prefix}_nRMSE']:.4g}"
                for label, prefix in RIVALS
                if ev.get(f"{prefix}_nRMSE") is not None
            )
            if shown:
                lines.append(f"{' ' * len(key)}  nRMSE of {shown}")
            if ev.get("corrector_selection"):
                sel = " | ".join(f"{k} {v:.4g}" for k, v in ev["corrector_selection"].items())
                lines.append(f"{' ' * len(key)}  corrector (val selects; none = operator alone): {sel}")
    return "\n".join(lines)
