"""The console's end-of-run table: each stage's status, epochs, best validation metric and wall
time, then the evaluation lines."""

from __future__ import annotations

from ups.contracts import RunSummary
from ups.stages import registry

# What each evaluation also scores, beside the surrogate (ups/eval/evaluate.py).
RIVALS = (("FNO baseline", "fno"), ("autoencoder reconstruction", "recon"), ("one step", "one_step"))


def summary_table(summary: RunSummary) -> str:
    records = summary.stages
    lines = [f"{'stage':<22}{'status':<11}{'epochs':>7}  {'best validation metric':<34}{'wall s':>8}"]
    for name in registry.names():
        rec = records.get(name)
        best = rec.best if rec else None
        metric = f"{best.metric}={best.value:.4g}" if best else "-"
        wall = rec.wall_time_s if rec else None
        status = rec.status if rec else "-"
        epochs = (rec.epochs if rec else 0) or 0
        lines.append(f"{name:<22}{status:<11}{epochs:>7}  {metric:<34}{wall if wall is not None else '-':>8}")
    for key, ev in (("eval", summary.eval), ("eval_test", summary.eval_test)):
        if ev:
            operator = ev.score("operator_nRMSE")
            lines.append(
                f"{key} [{ev.split}]: nRMSE {ev.nRMSE:.4g} | operator "
                f"{ev.nRMSE if operator is None else operator:.4g} | persistence {ev.persistence_nRMSE:.4g}"
                f" | cRMSE {ev.scores['cRMSE']:.3g} bRMSE {ev.scores['bRMSE']:.3g}"
                f" fRMSE_high {ev.scores['fRMSE_high']:.3g}"
            )
            rivals = {label: ev.score(f"{prefix}_nRMSE") for label, prefix in RIVALS}
            shown = " | ".join(f"{label} {score:.4g}" for label, score in rivals.items() if score is not None)
            if shown:
                lines.append(f"{' ' * len(key)}  nRMSE of {shown}")
            if ev.corrector_selection:
                sel = " | ".join(f"{k} {v:.4g}" for k, v in ev.corrector_selection.items())
                lines.append(f"{' ' * len(key)}  corrector (val selects; none = operator alone): {sel}")
    lines.extend(_equal_time_line(summary))
    return "\n".join(lines)


def _equal_time_line(summary: RunSummary) -> list[str]:
    """With `stages.fno_baseline.equal_time`: the two models' test scores beside the time each
    trained, so the comparison the run was set up for reads in one line."""
    fno = summary.stages.get("fno_baseline")
    ev = summary.eval_test or summary.eval
    if fno is None or not fno.completed or ev is None or ev.score("fno_nRMSE") is None:
        return []
    budget = (fno.trained_with or {}).get("time_budget_s")
    if budget is None:
        return []
    surrogate = [(n, r) for n, r in summary.stages.items() if n != "fno_baseline" and r.completed and r.train_s]
    spent = " + ".join(f"{n} {r.train_s:.0f}s" for n, r in surrogate)
    return [
        f"at equal training time [{ev.split}]: surrogate nRMSE {ev.nRMSE:.4g} ({spent}) | "
        f"FNO baseline {ev.score('fno_nRMSE'):.4g} ({fno.train_s or 0:.0f}s of a {budget:g}s budget, "
        f"{fno.epochs} epochs)"
    ]
