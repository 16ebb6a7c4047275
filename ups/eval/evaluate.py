"""Decoded evaluation of a trained stack on one split, with PDEBench's metrics.

Protocol (PDEBench): the first `initial_step` frames are given; the surrogate encodes the last of
them and rolls out autoregressively to the end (or `eval.horizon` frames); predictions are
decoded to the grid, denormalised and scored on the predicted frames only. The persistence
baseline u(t) = u(t0) is scored beside it, and so is the bare operator when a corrector is used.
"""

from __future__ import annotations

import time
from typing import cast

import numpy as np
import torch

from ups.config import Config
from ups.contracts import EvalMetrics, EvalResult
from ups.data.views import DataMeta, Task
from ups.eval.metrics import pdebench_metrics
from ups.eval.rollout import Corrector, Surrogate, norm_stats, to_physical
from ups.exports import Exports
from ups.models import factory
from ups.models.fno import FNO
from ups.schema import CorrectorKind
from ups.stages import registry


def corrector_stages() -> dict[CorrectorKind, str]:
    """Corrector kind -> the stage that trains it, from the registry (latest-registered first)."""
    return {cls.corrector: name for name, cls in reversed(registry.stages().items()) if cls.corrector}


def trained_kinds(exports: Exports) -> list[CorrectorKind]:
    """The kinds of corrector the run trained, latest-registered first (`auto`'s candidates)."""
    return [kind for kind, stage in corrector_stages().items() if stage in exports]


def build_corrector(
    cfg: Config, meta: DataMeta, exports: Exports, kind: CorrectorKind, device: torch.device | str = "cpu"
) -> Corrector:
    stage = corrector_stages().get(kind)
    if stage is None or stage not in exports:
        raise ValueError(f"eval.corrector={kind} but stage {stage} was not trained")
    ex = exports[stage]
    diff = cfg.stages.diffusion_residual
    net = factory.build(
        "denoiser", cfg.model, meta, cfg.latent, consistency=kind == "consistency", sigma_min=diff.sigma_min
    )
    net.load_state_dict(ex[registry.get(stage).provides["corrector"]])
    return Corrector(kind, net.to(device).eval(), float(ex["residual_scale"]), diff.sigma_min, diff.sigma_max,
                     diff.sample_steps, cfg.eval.noise_scale, feedback=diff.states == "true")  # fmt: skip


def build_surrogate(cfg: Config, meta: DataMeta, exports: Exports, device: torch.device | str = "cpu") -> Surrogate:
    """The stack from stage exports; the corrector follows `eval.corrector` ("auto": the one of the
    latest trained corrector stage, the cheapest to run; the val evaluation then scores every trained
    corrector beside it and the pipeline keeps the best, or none if none beats the operator alone)."""
    enc = factory.build("encoder", cfg.model, meta, cfg.latent)
    dec = factory.build("decoder", cfg.model, meta, cfg.latent)
    # Each network from the trained stage that declares it provides the role (Stage.provides).
    enc.load_state_dict(registry.weights("encoder", exports))
    dec.load_state_dict(registry.weights("decoder", exports))
    op = factory.build("operator", cfg.model, meta, cfg.latent)
    op.load_state_dict(registry.weights("operator", exports))
    requested = cfg.eval.corrector
    kind: CorrectorKind | None
    if requested == "auto":
        kind = next(iter(trained_kinds(exports)), None)
    elif requested == "none":
        kind = None
    else:
        kind = requested
    corrector = None if kind is None else build_corrector(cfg, meta, exports, kind, device)
    for m in (enc, dec, op):
        m.to(device).eval()
    return Surrogate(meta, dec, op, encoder=enc, corrector=corrector, device=device)


def _pdebench_layout(u: np.ndarray) -> np.ndarray:
    """(B, T, X[, Y], C) -> PDEBench's (B, X[, Y], T, C)."""
    return np.moveaxis(u, 1, -2)


@torch.no_grad()
def evaluate(
    model: Surrogate,
    tasks: list[Task],
    split: str,
    cfg: Config,
    seed: int = 0,
    baseline: FNO | None = None,
    rivals: dict[CorrectorKind, Corrector] | None = None,
) -> EvalResult:
    """Metrics on `split`, overall and per task, of the model and of what bounds or rivals it:
    the bare operator (when a corrector is used), persistence, the FNO baseline (when trained),
    the stack with each other corrector in `rivals` (`diffusion_`, `consistency_`), and two floors
    under every rollout: `recon_` (each true frame encoded and decoded: the autoencoder's error)
    and `one_step_` (each frame predicted from the true previous one). The arrays the plots are
    drawn from come back beside the metrics, never inside them."""
    t_start = time.perf_counter()
    meta, init = model.meta, model.meta.initial_step
    steps = meta.frames - init if cfg.eval.horizon is None else min(cfg.eval.horizon, meta.frames - init)
    rivals = rivals or {}
    names = ["model", "operator", "persistence", "recon", "one_step", "fno", *rivals]
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    # Each rival draws its sampler noise from its own generator with the same seed, so it scores
    # exactly as it would as the model.
    rival_models = {kind: (model.with_corrector(c), torch.Generator().manual_seed(seed)) for kind, c in rivals.items()}
    truths: list[torch.Tensor] = []
    task_ids: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(seed)
    for ti, task in enumerate(tasks):
        rows = task.splits[split][: cfg.eval.max_samples]
        u = torch.as_tensor(task.u[rows])
        for chunk in u.split(cfg.eval.batch_size):
            chunk = chunk.to(model.device)
            tid = torch.full((len(chunk),), ti, dtype=torch.long, device=model.device)
            truth = model.denormalize(chunk[:, : init + steps], tid)
            z0 = model.encode(chunk[:, init - 1])
            given = truth[:, :init]
            # The model's prediction is `forecast`, exactly what `Surrogate.rollout` returns to a user.
            preds["model"].append(torch.cat([given, model.forecast(chunk[:, :init], steps, tid, gen)], 1).cpu())
            for kind, (rival, rival_gen) in rival_models.items():
                preds[kind].append(torch.cat([given, rival.predict_fields(z0, steps, tid, rival_gen)], 1).cpu())
            if model.corrector is not None or rivals:
                preds["operator"].append(
                    torch.cat([given, model.predict_fields(z0, steps, tid, correct=False)], 1).cpu()
                )
            preds["persistence"].append(torch.cat([given, given[:, -1:].expand(-1, steps, *given.shape[2:])], 1).cpu())
            for name, frames in _floors(model, chunk, tid, init, steps).items():
                preds[name].append(torch.cat([given, frames], 1).cpu())
            if baseline is not None:
                fno = model.denormalize(baseline.rollout(chunk[:, :init], steps), tid)
                preds["fno"].append(torch.cat([given, fno], 1).cpu())
            truths.append(truth.cpu())
            task_ids.append(tid.cpu())
    truth_all = torch.cat(truths).numpy()
    task_all = torch.cat(task_ids).numpy()
    lx = meta.lengths[0]
    scores: dict[str, float] = {}
    per_task: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    for name, p in preds.items():
        if not p:
            continue
        pred_all = torch.cat(p).numpy()
        prefix = "" if name == "model" else f"{name}_"
        layout_pred, layout_truth = _pdebench_layout(pred_all), _pdebench_layout(truth_all)
        for k, v in pdebench_metrics(layout_pred, layout_truth, init, Lx=lx).items():
            scores[prefix + k] = v
        curves[name] = pdebench_metrics(layout_pred, layout_truth, init, Lx=lx, per_time=True)["nRMSE"].tolist()
        if len(tasks) > 1:
            for ti, t in enumerate(tasks):
                m = task_all == ti
                r = pdebench_metrics(_pdebench_layout(pred_all[m]), _pdebench_layout(truth_all[m]), init, Lx=lx)
                per_task.setdefault(t.name, {})[prefix + "nRMSE"] = r["nRMSE"]
    samples = int(len(truth_all))
    wall = round(time.perf_counter() - t_start, 3)
    metrics = EvalMetrics(
        split=split, samples=samples, horizon=steps, initial_step=init,
        corrector=model.corrector.kind if model.corrector else "none",
        scores=scores, horizon_nRMSE=curves, per_task=per_task or None, wall_time_s=wall,
        wall_clock=wall / max(samples, 1),  # seconds per trajectory, all predictors
        protocol={"split": split, "samples": samples, "horizon": steps, "initial_step": init},
    )  # fmt: skip
    arrays = {
        "truth": truth_all,
        "pred": torch.cat(preds["model"]).numpy(),
        "persistence": torch.cat(preds["persistence"]).numpy(),
    }
    return EvalResult(metrics, arrays)


@torch.no_grad()
def _floors(model: Surrogate, u: torch.Tensor, task: torch.Tensor, init: int, steps: int) -> dict[str, torch.Tensor]:
    """Decoded reconstructions of the true predicted frames, and one-step predictions from the true
    previous frames, in physical units: (B, steps, X.., C) each."""
    b = len(u)
    rep = task.repeat_interleave(steps)
    shape = (b, steps, *u.shape[2:])
    recon = model.decode(model.encode(u[:, init : init + steps].flatten(0, 1))).reshape(shape)
    z_prev = model.encode(u[:, init - 1 : init - 1 + steps].flatten(0, 1))
    one_step = model.decode(model.operator(z_prev, model.dts[rep], rep)).reshape(shape)
    return {"recon": model.denormalize(recon, task), "one_step": model.denormalize(one_step, task)}


def build_baseline(cfg: Config, meta: DataMeta, exports: dict[str, dict], device: str = "cpu") -> FNO | None:
    """The FNO baseline from its export, if the run trained a stage that provides the baseline."""
    if registry.provider("baseline", exports) is None:
        return None
    net = cast(FNO, factory.build("baseline", cfg.model, meta, cfg.latent))
    net.load_state_dict(registry.weights("baseline", exports))
    return net.to(device).eval()


@torch.no_grad()
def evaluate_baseline(baseline: FNO, meta: DataMeta, tasks: list[Task], split: str, cfg: Config) -> EvalResult:
    """A run that trained the baseline alone (`train --only fno_baseline`): the FNO is the run's
    model, scored with the same metrics, split and horizon as a surrogate, beside persistence; the
    same numbers appear as `fno_*`, so tables read the baseline from either kind of run alike."""
    t_start = time.perf_counter()
    init = meta.initial_step
    steps = meta.frames - init if cfg.eval.horizon is None else min(cfg.eval.horizon, meta.frames - init)
    device = next(baseline.parameters()).device
    stats = norm_stats(meta, device)
    preds: dict[str, list[torch.Tensor]] = {"model": [], "persistence": []}
    truths: list[torch.Tensor] = []
    for ti, task in enumerate(tasks):
        rows = task.splits[split][: cfg.eval.max_samples]
        for chunk in torch.as_tensor(task.u[rows]).split(cfg.eval.batch_size):
            chunk = chunk.to(device)
            tid = torch.full((len(chunk),), ti, dtype=torch.long, device=device)
            truth = to_physical(chunk[:, : init + steps], tid, *stats)
            given = truth[:, :init]
            fno = to_physical(baseline.rollout(chunk[:, :init], steps), tid, *stats)
            preds["model"].append(torch.cat([given, fno], 1).cpu())
            preds["persistence"].append(torch.cat([given, given[:, -1:].expand(-1, steps, *given.shape[2:])], 1).cpu())
            truths.append(truth.cpu())
    truth_raw = torch.cat(truths).numpy()
    truth_all = _pdebench_layout(truth_raw)
    scores: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    for name, p in preds.items():
        pred_all = _pdebench_layout(torch.cat(p).numpy())
        for k, v in pdebench_metrics(pred_all, truth_all, init, Lx=meta.lengths[0]).items():
            scores[("" if name == "model" else f"{name}_") + k] = v
            if name == "model":
                scores[f"fno_{k}"] = v
        curves[name] = pdebench_metrics(pred_all, truth_all, init, Lx=meta.lengths[0], per_time=True)["nRMSE"].tolist()
    samples = int(len(truth_all))
    wall = round(time.perf_counter() - t_start, 3)
    metrics = EvalMetrics(
        split=split, samples=samples, horizon=steps, initial_step=init, corrector="none", scores=scores,
        horizon_nRMSE=curves, wall_time_s=wall, wall_clock=wall / max(samples, 1),
        protocol={"split": split, "samples": samples, "horizon": steps, "initial_step": init, "model": "fno_baseline"},
    )  # fmt: skip
    arrays = {"truth": truth_raw, "pred": torch.cat(preds["model"]).numpy(),
              "persistence": torch.cat(preds["persistence"]).numpy()}  # fmt: skip
    return EvalResult(metrics, arrays)


def evaluate_split(
    cfg: Config, meta: DataMeta, tasks: list[Task], exports: dict[str, dict], split: str, device: str | None = None
) -> EvalResult:
    """Build the stack from exports and evaluate it on a split, in this process (the local
    backend calls it directly, the Ray backend inside a task)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    baseline = build_baseline(cfg, meta, exports, device)
    if registry.provider("operator", exports) is None and baseline is not None:  # the baseline trained alone
        return evaluate_baseline(baseline, meta, tasks, split, cfg)
    model = build_surrogate(cfg, meta, exports, device)
    rivals = None
    if cfg.eval.corrector == "auto" and split == "val":  # val selects: score every trained corrector
        own = model.corrector.kind if model.corrector else None
        rivals = {k: build_corrector(cfg, meta, exports, k, device) for k in trained_kinds(exports) if k != own}
    return evaluate(model, tasks, split, cfg, baseline=baseline, rivals=rivals)
