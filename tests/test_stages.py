"""Each stage's objective on a tiny real problem (a generated Burgers file), run in-process:
the loss falls, validation produces finite sums, and exports feed the next stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ups import config as C
from ups.config import Config, GenerateConfig
from ups.data import views
from ups.data.generate import generate
from ups.stages import registry
from ups.train.shard import Trajectories


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "burgers.h5"
    generate(
        GenerateConfig(nu=0.02, samples=24, resolution=32, frames=9, t_end=0.8, seed=1, chunk_size=24),
        str(path),
        progress=lambda _: None,
    )
    cfg = Config.model_validate(
        {
            "data": {"path": str(path), "initial_step": 2, "test_fraction": 0.1, "val_fraction": 0.2},
            "latent": {"tokens": 4, "dim": 8},
            "model": {
                "encoder": {"patch_size": 4, "hidden": 16, "depth": 1, "heads": 2, "frequencies": 3},
                "decoder": {"hidden": 16, "depth": 1, "heads": 2, "frequencies": 4},
                "operator": {"hidden": 16, "depth": 1, "heads": 2},
                "denoiser": {"hidden": 16, "depth": 1, "heads": 2},
                "steady": {"hidden": 16, "depth": 1, "heads": 2, "steps": 2},
            },
            "stages": {"diffusion_residual": {"sample_steps": 2}, "consistency_distill": {"num_scales": 6}},
        }
    )
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    t = tasks[0]
    rows = lambda s: Trajectories(
        torch.as_tensor(t.splits[s]),
        torch.zeros(len(t.splits[s]), dtype=torch.long),  # noqa: E731
        u=torch.as_tensor(t.u[t.splits[s]]),
    )
    return cfg, meta, rows("train"), rows("val")


def fit(stage, module, train, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    n, losses = stage.num_samples(train), []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        ids = torch.randperm(n, generator=gen)[:16]
        loss, _ = module(stage.batch(train, ids, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        stage.after_step(module)
        losses.append(loss.item())
    return losses


def falls(losses: list[float], factor: float = 0.8) -> bool:
    k = max(len(losses) // 6, 3)
    return np.mean(losses[-k:]) < factor * np.mean(losses[:k])


def run_stage(name, cfg, meta, handoff, train, val, steps, lr=3e-3):
    torch.manual_seed(0)
    stage = registry.get(name)(cfg, meta, handoff, torch.device("cpu"))
    module = stage.build()
    stage.setup(train, val, lambda t: t)
    before = stage.validate(module.eval(), val, torch.arange(len(val)))[stage.val_metric]
    losses = fit(stage, module.train(), train, steps, lr)
    after = stage.validate(module.eval(), val, torch.arange(len(val)))[stage.val_metric]
    return stage, module, losses, before[0] / before[1], after[0] / after[1]


def test_every_stage_learns_and_hands_over(tiny):
    cfg, meta, train, val = tiny
    handoff = {}

    stage, ae, losses, v0, v1 = run_stage("autoencoder", cfg, meta, handoff, train, val, 150)
    assert falls(losses, 0.5) and v1 < v0, (losses[:3], losses[-3:], v0, v1)
    handoff["autoencoder"] = stage.export(ae)
    with torch.no_grad():  # the latent cache, in memory
        enc = lambda tr: Trajectories(
            tr.idx,
            tr.task,
            u=tr.u,  # noqa: E731
            z=torch.stack([ae.encoder(traj) for traj in tr.u]),
        )
        train, val = enc(train), enc(val)

    stage, op, losses, v0, v1 = run_stage("operator", cfg, meta, handoff, train, val, 300, lr=1e-3)
    assert falls(losses) and v1 < v0, (losses[:3], losses[-3:], v0, v1)
    handoff["operator"] = stage.export(op)

    stage, dn, losses, v0, v1 = run_stage("diffusion_residual", cfg, meta, handoff, train, val, 150)
    assert falls(losses) and v1 < v0, (losses[:3], losses[-3:], v0, v1)
    handoff["diffusion_residual"] = export = stage.export(dn)
    assert float(export["residual_scale"]) > 0

    stage, st, losses, v0, v1 = run_stage("consistency_distill", cfg, meta, handoff, train, val, 120)
    assert v1 < v0, (v0, v1)  # the one-step student moves toward the teacher's few-step samples
    assert set(stage.export(st)) == {"student", "residual_scale"}

    stage, pr, losses, v0, v1 = run_stage("steady_prior", cfg, meta, handoff, train, val, 120)
    assert falls(losses) and v1 < v0, (losses[:3], losses[-3:], v0, v1)


def test_a_stage_refuses_to_start_without_its_handoff(tiny):
    cfg, meta, _, _ = tiny
    with pytest.raises(RuntimeError, match="needs the output of"):
        registry.get("diffusion_residual")(cfg, meta, {}, torch.device("cpu"))


def test_operator_starts_as_persistence(tiny):
    from ups.models import factory
    from ups.models.latent import LatentOperator

    cfg, meta, _, _ = tiny
    op = factory.build("operator", cfg.model, meta, cfg.latent)
    assert isinstance(op, LatentOperator)
    z = torch.randn(3, cfg.latent.tokens, cfg.latent.dim)
    assert torch.equal(op(z, torch.full((3,), 0.1)), z)


def test_the_fno_baseline_learns_and_is_scored_beside_the_surrogate(tiny):
    from ups.eval.evaluate import build_baseline, build_surrogate, evaluate

    cfg, meta, train, val = tiny
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "baseline": cfg.model.baseline.model_copy(update={"modes": 4, "width": 8, "depth": 2})})})  # fmt: skip
    cfg = cfg.model_copy(update={"stages": cfg.stages.model_copy(update={
        "fno_baseline": cfg.stages.fno_baseline.model_copy(update={"rollout_horizon": 2})})})  # fmt: skip
    stage, fno, losses, v0, v1 = run_stage("fno_baseline", cfg, meta, {}, train, val, 150)
    assert falls(losses) and v1 < v0, (losses[:3], losses[-3:], v0, v1)

    # Scored by the same evaluation as the surrogate: fno_* metrics beside the model's and the floors.
    ae_stage, ae, _, _, _ = run_stage("autoencoder", cfg, meta, {}, train, val, 5)
    op_stage = registry.get("operator")(cfg, meta, {"autoencoder": ae_stage.export(ae)}, torch.device("cpu"))
    exports = {"autoencoder": ae_stage.export(ae), "operator": op_stage.export(op_stage.build()),
               "fno_baseline": stage.export(fno)}  # fmt: skip
    from ups.data import views

    tasks = views.load_tasks(cfg.data)
    model, baseline = build_surrogate(cfg, meta, exports), build_baseline(cfg, meta, exports)
    result = evaluate(model, tasks, "val", cfg, baseline=baseline)
    out = result.metrics.scores
    for prefix in ("fno_", "recon_", "one_step_", "persistence_", ""):
        assert 0 < out[f"{prefix}nRMSE"] < 10
    assert out["fno_nRMSE"] != out["nRMSE"] and len(result.metrics.horizon_nRMSE["fno"]) == result.metrics.horizon
    # An untrained operator is persistence, so its one-step prediction is the decoded previous frame.
    assert out["one_step_nRMSE"] != out["recon_nRMSE"]
    # The plots' arrays come back beside the metrics, never inside a record of them.
    assert set(result.arrays) == {"truth", "pred", "persistence"} and "_arrays" not in result.metrics.to_dict()


def test_fno_shapes_in_1d_and_2d():
    from ups.models.fno import FNO, FNOConfig

    cfg = FNOConfig(modes=3, width=8, depth=2)
    g1 = torch.rand(16, 1)
    assert FNO(g1, 2, 3, cfg)(torch.randn(4, 3, 16, 2)).shape == (4, 16, 2)
    g2 = torch.rand(8, 8, 2)
    net = FNO(g2, 1, 2, cfg)
    assert net(torch.randn(3, 2, 8, 8, 1)).shape == (3, 8, 8, 1)
    assert net.rollout(torch.randn(3, 2, 8, 8, 1), 4).shape == (3, 4, 8, 8, 1)


class _Affine(torch.nn.Module):
    def forward(self, z, dt, task):
        return 0.5 * z + 1.0


def test_rollout_state_residuals_follow_the_operators_own_rollout():
    from ups.stages.diffusion_residual import Residuals, rollout_starts

    torch.manual_seed(0)
    frames, init = 6, 3
    z = torch.randn(5, frames, 4, 2)
    trajs = Trajectories(torch.arange(5), torch.zeros(5, dtype=torch.long), z=z)
    dts = torch.tensor([0.1])
    true = Residuals(_Affine(), trajs, dts, torch.device("cpu"))
    assert true.per_traj == frames - 1 and len(true) == 5 * (frames - 1)
    torch.testing.assert_close(true.cond[1], 0.5 * z[0, 1] + 1)  # trajectory 0, t = 1: op(true z_1)

    roll = Residuals(_Affine(), trajs, dts, torch.device("cpu"), "rollout", init)
    starts = rollout_starts(init)
    assert starts == (0, 2) and roll.per_traj == (frames - 1) + (frames - 1 - 2)
    x, expect = z[1, 0], []
    for _ in range(frames - 1):  # trajectory 1, start 0: op applied to its own output
        x = 0.5 * x + 1
        expect.append(x)
    got = roll.cond[roll.per_traj : roll.per_traj + frames - 1]
    torch.testing.assert_close(got, torch.stack(expect))
    torch.testing.assert_close(roll.res[roll.per_traj], z[1, 1] - expect[0])
    row = roll.per_traj + frames - 1  # trajectory 1, start 2: starts again from the true z_2
    torch.testing.assert_close(roll.cond[row], 0.5 * z[1, 2] + 1)


def test_anchored_latent_trains_every_latent_stage_on_rollout_states(tiny):
    cfg, meta, train, val = tiny
    tree = C.to_dict(cfg)  # the tiny config's sizes, with anchored architectures (as `--set` would switch them)
    for item in ("latent.tokens=8", "model.encoder.arch=conv", "model.encoder.patch_size=4", "model.decoder.arch=conv",
                 "model.operator.arch=spectral", "model.operator.modes=4", "model.denoiser.arch=spectral",
                 "model.denoiser.modes=4", "stages.diffusion_residual.states=rollout"):  # fmt: skip
        tree = C.apply_override(tree, item, {})
    cfg = C.validate(tree)
    handoff = {}
    stage, ae, losses, v0, v1 = run_stage("autoencoder", cfg, meta, handoff, train, val, 100)
    assert falls(losses, 0.5) and v1 < v0, (losses[:3], losses[-3:], v0, v1)
    handoff["autoencoder"] = stage.export(ae)
    with torch.no_grad():
        enc = lambda tr: Trajectories(tr.idx, tr.task, u=tr.u, z=torch.stack([ae.encoder(x) for x in tr.u]))  # noqa: E731
        train, val = enc(train), enc(val)
    assert train.latents.shape[2:] == (8, 8)
    stage, op, losses, v0, v1 = run_stage("operator", cfg, meta, handoff, train, val, 150, lr=1e-3)
    assert falls(losses) and v1 < v0, (losses[:3], losses[-3:], v0, v1)
    handoff["operator"] = stage.export(op)
    stage, dn, losses, v0, v1 = run_stage("diffusion_residual", cfg, meta, handoff, train, val, 200)
    assert stage.num_samples(train) == len(train) * stage.train_res.per_traj > len(train) * (meta.frames - 1)
    assert falls(losses) and v1 < v0, (losses[:3], losses[-3:], v0, v1)
    handoff["diffusion_residual"] = stage.export(dn)
    stage, st, losses, v0, v1 = run_stage("consistency_distill", cfg, meta, handoff, train, val, 60)
    assert stage.num_samples(train) == len(stage.train_res) and v1 < v0, (v0, v1)
    handoff["consistency_distill"] = stage.export(st)

    # `auto` on val scores every trained corrector: the latest (consistency) as the model, the
    # diffusion one beside it, each exactly as it scores when it is the model itself.
    from ups.eval.evaluate import evaluate_split
    from ups.eval.selection import choose_corrector

    tasks = views.load_tasks(cfg.data)
    auto = evaluate_split(cfg, meta, tasks, handoff, "val", "cpu").metrics
    assert auto.corrector == "consistency" and {"diffusion_nRMSE", "operator_nRMSE"} <= auto.scores.keys()
    alone = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"corrector": "diffusion"})})
    diffusion = evaluate_split(alone, meta, tasks, handoff, "val", "cpu").metrics
    assert diffusion.nRMSE == pytest.approx(auto.scores["diffusion_nRMSE"], rel=1e-6)
    assert diffusion.scores["operator_nRMSE"] == pytest.approx(auto.scores["operator_nRMSE"], rel=1e-6)
    choice = choose_corrector(auto)
    assert set(choice.scores) == {"consistency", "diffusion", "none"}
    assert choice.kind == min(choice.scores, key=lambda k: (choice.scores[k], k == "none"))
    test = evaluate_split(cfg, meta, tasks, handoff, "test", "cpu").metrics
    assert "diffusion_nRMSE" not in test.scores  # test selects nothing


def test_a_rollout_state_corrector_corrects_the_output_and_leaves_the_rollout_to_the_operator():
    """Trained on the uncorrected rollout, the corrector must meet that rollout at inference: its
    correction goes into the output, the next step starts from the operator's own state."""
    from ups.eval.rollout import Corrector, Surrogate

    class _Shift(torch.nn.Module):  # a "denoiser" whose sample is always +1 in residual units
        def forward(self, x, sigma, cond):
            return torch.ones_like(cond)

    meta = type("M", (), {"grid": np.zeros((4, 1)), "dts": [0.1], "normalizers": [], "spatial_shape": (4,)})()
    meta.normalizers = [type("N", (), {"mean": np.zeros(1), "std": np.ones(1)})()]
    z0, task = torch.zeros(2, 4, 3), torch.zeros(2, dtype=torch.long)
    out = {}
    for feedback in (True, False):
        corr = Corrector("consistency", _Shift(), 2.0, 0.002, 5.0, 1, feedback=feedback)
        sur = Surrogate(meta, torch.nn.Identity(), _Affine(), corrector=corr)
        out[feedback] = sur.rollout(z0, 3, task)
    x, plain = z0, []
    for _ in range(3):
        x = 0.5 * x + 1
        plain.append(x)
    plain = torch.stack(plain, 1)
    torch.testing.assert_close(out[False], plain + 2.0)  # each output corrected, the chain untouched
    assert not torch.allclose(out[True], out[False])  # fed back, the chain itself moves
    torch.testing.assert_close(out[True][:, 0], plain[:, 0] + 2.0)
    torch.testing.assert_close(out[True][:, 1], 0.5 * out[True][:, 0] + 1 + 2.0)


def test_decoding_a_long_rollout_calls_the_decoder_on_bounded_batches():
    """Validation decodes whole rollouts (trajectories x steps frames): what the decoder holds at
    once must be bounded by FRAMES, not by the val set, and the frames must come out as one call's."""
    from ups.eval.rollout import FRAMES, Surrogate

    class _Decoder(torch.nn.Module):  # per-frame, records how many frames each call got
        def __init__(self):
            super().__init__()
            self.calls: list[int] = []

        def forward(self, z, points):
            self.calls.append(len(z))
            return z.sum((1, 2))[:, None, None] + points

    meta = type("M", (), {"grid": np.arange(4, dtype=np.float32).reshape(4, 1), "dts": [0.1], "spatial_shape": (4,)})()
    meta.normalizers = [type("N", (), {"mean": np.zeros(1), "std": np.ones(1)})()]
    decoder = _Decoder()
    z = torch.randn(2 * FRAMES + 7, 3, 2)
    out = Surrogate(meta, decoder, _Affine()).decode(z)
    assert max(decoder.calls) <= FRAMES and sum(decoder.calls) == len(z)
    torch.testing.assert_close(out, _Decoder()(z, torch.arange(4.0).reshape(1, 4, 1)).reshape(len(z), 4, 1))
