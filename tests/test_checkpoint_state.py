"""Checkpoint files: a whole training state round-trips through weights_only loading, and a
truncated or altered checkpoint is detected through its manifest."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ups.config import OptimizerConfig, SchedulerConfig
from ups.train.optim import LRSchedule, build_optimizer, ema_model
from ups.train.state import (
    CorruptCheckpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    tensors_sha256,
    verify_checkpoint,
)


def state_of(model, opt, sched, ema):
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "ema": ema.state_dict(),
        "rng": [rng_state()],
        "progress": {"epoch": 3, "micro": 7},
    }


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "sgd"])
def test_training_state_round_trip_continues_identically(tmp_path, optimizer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    opt = build_optimizer(model, OptimizerConfig(name=optimizer, lr=1e-2))
    sched = LRSchedule(opt, SchedulerConfig(name="cosine", warmup_epochs=0.5), epochs=4, steps_per_epoch=4)
    ema = ema_model(model, 0.9)

    def step():
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(model)

    for _ in range(3):
        step()
    save_checkpoint(tmp_path / "ck", state_of(model, opt, sched, ema), {"stage": "test"})
    for _ in range(3):
        step()
    expected = tensors_sha256({"m": model.state_dict(), "e": ema.state_dict()})

    s = load_checkpoint(tmp_path / "ck")
    model.load_state_dict(s["model"])
    opt.load_state_dict(s["optimizer"])
    sched.load_state_dict(s["scheduler"])
    ema.load_state_dict(s["ema"])
    set_rng_state(s["rng"][0])
    for _ in range(3):
        step()
    assert tensors_sha256({"m": model.state_dict(), "e": ema.state_dict()}) == expected


def test_rng_state_restores_python_numpy_torch():
    s = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(s)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_truncated_or_altered_checkpoint_is_detected(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.arange(1000.0)}, {"stage": "x"})
    assert verify_checkpoint(tmp_path / "ck")["stage"] == "x"
    data = (tmp_path / "ck" / "state.pt").read_bytes()
    (tmp_path / "ck" / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpoint, match="bytes"):
        load_checkpoint(tmp_path / "ck")

    save_checkpoint(tmp_path / "ck2", {"w": torch.arange(1000.0)}, {"stage": "x"})
    raw = bytearray((tmp_path / "ck2" / "state.pt").read_bytes())
    raw[-20] ^= 0xFF
    (tmp_path / "ck2" / "state.pt").write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpoint, match="sha256"):
        load_checkpoint(tmp_path / "ck2")

    save_checkpoint(tmp_path / "ck3", {"w": torch.zeros(3)}, {})
    (tmp_path / "ck3" / "manifest.json").unlink()  # cut off before the manifest was written
    with pytest.raises(CorruptCheckpoint, match="manifest"):
        load_checkpoint(tmp_path / "ck3")


def test_weights_digest_sees_one_bit():
    a = {"w": torch.ones(4), "b": {"c": torch.zeros(2)}}
    b = {"w": torch.ones(4), "b": {"c": torch.zeros(2)}}
    assert tensors_sha256(a) == tensors_sha256(b)
    b["w"][2] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert tensors_sha256(a) != tensors_sha256(b)


def test_lr_schedule_warmup_then_cosine_and_plateau():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=1.0)
    s = LRSchedule(opt, SchedulerConfig(name="cosine", warmup_epochs=1, eta_min=0.0), epochs=3, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(s.lr)
        s.step()
    assert lrs[0] < lrs[1] < lrs[3] <= 1.0  # warmup
    assert lrs[4] > lrs[8] > lrs[11] >= 0.0  # cosine decay
    opt2 = torch.optim.SGD(p, lr=1.0)
    s2 = LRSchedule(opt2, SchedulerConfig(name="plateau", patience=1, factor=0.5), epochs=5, steps_per_epoch=2)
    for metric in (1.0, 0.9, 0.95, 0.96):
        s2.epoch_end(metric)
    assert s2.lr == pytest.approx(0.5)
    assert json.dumps(s2.state_dict())  # plain numbers, checkpointable
