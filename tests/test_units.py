"""Small units that everything else trusts: the PDEBench split, the normaliser, metrics.jsonl
rewrites and the learning-rate schedule. No Ray, no training."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from ups.config import DataConfig, SchedulerConfig
from ups.data import pdebench
from ups.data.views import Normalizer, load_task, split_indices
from ups.storage import Storage
from ups.tracking import METRICS_FILE, MetricsLog, read_jsonl
from ups.train.optim import LRSchedule

# --- split_indices ---------------------------------------------------------------------------


def test_split_puts_the_first_samples_in_test_then_val_then_train():
    s = split_indices(20, test_fraction=0.1, val_fraction=0.2)
    np.testing.assert_array_equal(s["test"], [0, 1])  # PDEBench: the first 10% are the test set
    np.testing.assert_array_equal(s["val"], [2, 3, 4, 5])  # 20% of the 18 that remain
    np.testing.assert_array_equal(s["train"], np.arange(6, 20))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 101])
@pytest.mark.parametrize("fractions", [(0.1, 0.1), (0.5, 0.5), (0.0, 0.0), (0.3, 0.0), (0.0, 1.0)])
def test_splits_are_disjoint_ordered_and_cover_every_sample(n, fractions):
    s = split_indices(n, *fractions)
    # test, then val, then train, each a contiguous run: disjoint, and every sample in one
    np.testing.assert_array_equal(np.concatenate([s["test"], s["val"], s["train"]]), np.arange(n))
    assert len(s["test"]) == round(n * fractions[0])
    assert len(s["val"]) == round((n - len(s["test"])) * fractions[1])


def test_small_datasets():
    s = split_indices(1, 0.1, 0.1)
    assert s["test"].size == 0 and s["val"].size == 0 and s["train"].tolist() == [0]
    s = split_indices(3, 0.34, 0.5)
    assert (s["test"].tolist(), s["val"].tolist(), s["train"].tolist()) == ([0], [1], [2])
    assert all(v.dtype.kind == "i" for v in split_indices(0, 0.1, 0.1).values())  # usable as indices


# --- Normalizer ------------------------------------------------------------------------------


def test_normalizer_round_trips_and_standardises_its_fit_data():
    rng = np.random.default_rng(0)
    u = rng.normal([3.0, -2.0], [2.0, 0.5], size=(50, 6, 2)).astype(np.float32)
    n = Normalizer.fit(u)
    z = n.normalize(u)
    np.testing.assert_allclose(z.reshape(-1, 2).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(-1, 2).std(0), 1, atol=1e-4)
    np.testing.assert_allclose(n.denormalize(z), u, atol=1e-5)
    back = Normalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    np.testing.assert_array_equal(back.mean, n.mean)
    np.testing.assert_array_equal(back.std, n.std)


def test_disabled_normalizer_is_the_identity():
    u = np.random.default_rng(1).normal(5, 3, size=(4, 3, 2)).astype(np.float32)
    n = Normalizer.fit(u, enabled=False)
    np.testing.assert_array_equal(n.normalize(u), u)
    np.testing.assert_array_equal(n.denormalize(u), u)


def test_a_constant_channel_is_not_divided_by_zero():
    u = np.stack([np.full((4, 5), 7.0), np.arange(20.0).reshape(4, 5)], -1).astype(np.float32)
    n = Normalizer.fit(u)
    assert n.std[0] == 1.0 and n.mean[0] == 7.0
    z = n.normalize(u)
    assert np.isfinite(z).all() and (z[..., 0] == 0).all()
    np.testing.assert_allclose(n.denormalize(z), u, atol=1e-5)


def test_load_task_fits_the_normalizer_on_the_training_split_only(tmp_path):
    n, frames, nx = 10, 4, 8
    u = np.ones((n, frames, nx), np.float32)
    u[:2] = 1000.0  # test samples (the first 20%)
    u[2:4] = -1000.0  # val samples (25% of the rest)
    u[4:] = np.random.default_rng(2).normal(3.0, 2.0, size=(6, frames, nx))
    path = tmp_path / "toy.h5"
    pdebench.write(path, u, {"x": (np.arange(nx) + 0.5) / nx, "t": np.arange(frames) * 0.1})
    task = load_task(str(path), DataConfig(path=str(path), test_fraction=0.2, val_fraction=0.25, initial_step=1))
    assert task.splits["test"].tolist() == [0, 1] and task.splits["val"].tolist() == [2, 3]
    np.testing.assert_allclose(task.normalizer.mean, [u[4:].mean()], rtol=1e-5)
    np.testing.assert_allclose(task.normalizer.std, [u[4:].std()], rtol=1e-4)
    train = task.u[task.splits["train"]]
    assert abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-4
    assert task.u[0].min() > 100  # test samples are normalised with train's statistics, not their own


# --- MetricsLog ------------------------------------------------------------------------------


def rows(stage: str, epochs: range, **kw) -> list[dict]:
    return [{"stage": stage, "epoch": e, **kw} for e in epochs]


def test_metrics_log_keeps_other_stages_and_replaces_its_own(tmp_path):
    run = Storage(str(tmp_path))
    MetricsLog(run, "autoencoder").write(rows("autoencoder", range(3)))
    MetricsLog(run, "operator").write(rows("operator", range(2), loss=1.0))
    assert [(r["stage"], r["epoch"]) for r in read_jsonl(run, METRICS_FILE)] == [
        ("autoencoder", 0),
        ("autoencoder", 1),
        ("autoencoder", 2),
        ("operator", 0),
        ("operator", 1),
    ]
    # A resumed operator stage rewrites its history: its old rows go, nobody else's.
    log = MetricsLog(run, "operator")
    log.write(rows("operator", range(1), loss=0.5))
    log.write(rows("operator", range(3), loss=0.5))  # each epoch rewrites the whole file
    got = read_jsonl(run, METRICS_FILE)
    assert [r["epoch"] for r in got if r["stage"] == "autoencoder"] == [0, 1, 2]
    assert [(r["epoch"], r["loss"]) for r in got if r["stage"] == "operator"] == [(0, 0.5), (1, 0.5), (2, 0.5)]
    assert len(got) == 6


def test_metrics_log_keeps_rows_without_a_stage(tmp_path):
    run = Storage(str(tmp_path))
    run.write_text(json.dumps({"event": "start"}) + "\n", METRICS_FILE)
    MetricsLog(run, "autoencoder").write(rows("autoencoder", range(1)))
    assert read_jsonl(run, METRICS_FILE) == [{"event": "start"}, {"stage": "autoencoder", "epoch": 0}]


# --- LRSchedule ------------------------------------------------------------------------------


def schedule(cfg: SchedulerConfig, epochs: int = 10, steps_per_epoch: int = 3, lr: float = 0.1) -> LRSchedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return LRSchedule(opt, cfg, epochs, steps_per_epoch)


def lrs(s: LRSchedule, steps: int) -> list[float]:
    out = [s.lr]
    for _ in range(steps):
        s.step()
        out.append(s.lr)
    return out


def test_step_schedule_halves_every_step_size_epochs_of_optimizer_steps():
    s = schedule(SchedulerConfig(name="step", step_size=2, gamma=0.5), steps_per_epoch=3)
    got = lrs(s, 13)
    # 2 epochs x 3 steps = 6 optimizer steps per decay
    assert got == pytest.approx([0.1] * 6 + [0.05] * 6 + [0.025] * 2)
    assert s.opt.param_groups[0]["lr"] == pytest.approx(0.025)  # applied to the optimizer, not only reported


def test_step_schedule_counts_from_the_end_of_warmup():
    s = schedule(SchedulerConfig(name="step", step_size=1, gamma=0.5, warmup_epochs=1), steps_per_epoch=3)
    got = lrs(s, 9)
    assert got[:3] == pytest.approx([0.025, 0.05, 0.075])  # linear warmup over 3 steps, never 0
    assert got[3:] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])


def test_cosine_schedule_reaches_eta_min_at_t_max_and_stays():
    s = schedule(SchedulerConfig(name="cosine", eta_min=0.01), epochs=4, steps_per_epoch=5)
    got = lrs(s, 25)
    assert got[0] == pytest.approx(0.1)
    assert got[10] == pytest.approx(0.01 + 0.09 * 0.5)  # halfway through 20 steps
    assert got[5] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    assert got[20:] == pytest.approx([0.01] * 6)
    assert all(a >= b for a, b in zip(got, got[1:]))


def test_cosine_with_warmup_and_t_max_in_epochs():
    s = schedule(SchedulerConfig(name="cosine", warmup_epochs=1, t_max=3), epochs=10, steps_per_epoch=4)
    got = lrs(s, 14)
    assert got[:4] == pytest.approx([0.02, 0.04, 0.06, 0.08])
    assert got[4] == pytest.approx(0.1) and got[8] == pytest.approx(0.05)  # 12 - 4 = 8 steps of cosine
    assert got[12:] == pytest.approx([0.0] * 3)


@pytest.mark.parametrize("name", ["step", "cosine", "plateau"])
def test_schedule_state_round_trips(name):
    cfg = SchedulerConfig(name=name, step_size=1, warmup_epochs=0.5, patience=0, factor=0.5)
    a = schedule(cfg, steps_per_epoch=4)
    for val in (1.0, 2.0, 3.0):  # improving, then worse twice
        for _ in range(4):
            a.step()
        a.epoch_end(val)
    assert a.lr < 0.1  # a state worth restoring
    b = schedule(cfg, steps_per_epoch=4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.lr == pytest.approx(a.lr) and b.step_count == a.step_count == 12
    assert (b.best, b.bad_epochs, b.plateau_scale) == (a.best, a.bad_epochs, a.plateau_scale)
    if name == "plateau":
        assert a.plateau_scale == 0.25  # two bad epochs with patience 0
    assert lrs(b, 5) == pytest.approx(lrs(a, 5))  # and they stay in step


# --- W&B mode and key --------------------------------------------------------------------------


def test_wandb_auto_mode_respects_wandb_mode_and_reads_the_key_from_a_file(tmp_path, monkeypatch):
    from ups import tracking

    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_API_KEY_FILE"):
        monkeypatch.setenv(k, "")  # recorded, so the key this test loads is removed afterwards
        monkeypatch.delenv(k)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert tracking.wandb_mode("auto") == "offline"  # no key anywhere
    key = tmp_path / "key"
    key.write_text("k" * 40 + "\n")
    monkeypatch.setenv("WANDB_API_KEY_FILE", str(key))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.wandb_mode("auto") == "offline"  # the user's choice wins over an available key
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert tracking.wandb_mode("auto") == "online"  # the key came from the file...
    assert tracking.api_key() == "k" * 40 and "WANDB_API_KEY" not in os.environ  # ...not into the environment
    assert tracking.wandb_mode("offline") == "offline"  # an explicit mode is kept
