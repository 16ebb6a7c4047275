"""The gating policy without Ray: gate() verdicts, family names, the interleaved wall-clock timing,
and decide() with fake measurements over a registry on a local disk."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ups import gating
from ups.champions import ChampionLockError, ChampionStore
from ups.config import Config, GateConfig
from ups.contracts import ChampionRecord, Decision, EvalMetrics, RunSummary, TrialRecord
from ups.data.views import DataMeta, Normalizer, Task
from ups.eval.rollout import Surrogate
from ups.eval.timing import time_interleaved, time_rollouts
from ups.gating import Candidate, Measures, decide, family_of, gate
from ups.storage import Storage

PROTOCOL = {"split": "val", "samples": 4, "horizon": 5, "initial_step": 1}


def metrics(nrmse: float | None, **kw: Any) -> EvalMetrics:
    """A val evaluation's record; a metric that is not a number (None) is not measured."""
    run = {"split": "val", "samples": 4, "horizon": 5, "initial_step": 1, "corrector": "none"}
    return EvalMetrics.from_dict(
        {**run, "nRMSE": nrmse, "cRMSE": 1.0, "bRMSE": 1.0, "wall_clock": 0.01, "protocol": PROTOCOL, **kw}
    )


def nrmse_only(**kw: Any) -> GateConfig:
    return GateConfig(ratios={}, **kw)


# --- gate() ----------------------------------------------------------------------------------


def test_empty_registry_promotes_a_candidate_with_nrmse():
    ok, why = gate(metrics(0.5), None, GateConfig())
    assert ok and why == ["empty registry: the first candidate is promoted (nRMSE 0.5)"]


@pytest.mark.parametrize("value", [None, math.nan, math.inf, True, "0.1"])
def test_empty_registry_refuses_a_candidate_without_nrmse(value):
    cand = metrics(0.5)
    cand.scores["nRMSE"] = value  # what an edited or foreign record could hold
    assert gate(cand, None, GateConfig()) == (False, ["candidate has no nRMSE"])
    del cand.scores["nRMSE"]
    assert gate(cand, None, GateConfig()) == (False, ["candidate has no nRMSE"])


def test_protocol_mismatch_fails_before_any_metric():
    champ = metrics(1.0, protocol={**PROTOCOL, "horizon": 10})
    ok, why = gate(metrics(0.1), champ, GateConfig())
    assert not ok and len(why) == 1 and why[0].startswith("protocols differ:")


def test_nrmse_must_improve_by_the_relative_margin():
    cfg = nrmse_only(min_improvement=0.02)
    need = 1.0 * (1 - 0.02)
    ok, why = gate(metrics(need), metrics(1.0), cfg)
    assert ok and why == ["nRMSE 0.98 <= 0.98 needed (champion 1, margin 2%)"]
    ok, why = gate(metrics(math.nextafter(need, 1.0)), metrics(1.0), cfg)
    assert not ok and why[0].startswith("nRMSE 0.98 > 0.98 needed")
    assert not gate(metrics(0.99), metrics(1.0), cfg)[0]  # better, but not by the margin


def test_min_delta_is_applied_as_well():
    cfg = nrmse_only(min_improvement=0.02, min_delta=0.1)
    ok, why = gate(metrics(0.95), metrics(1.0), cfg)  # passes the 2% margin, not the 0.1 one
    assert not ok and why == ["nRMSE 0.95 > 0.9 needed (champion 1, margin 2% and 0.1)"]
    assert gate(metrics(0.9), metrics(1.0), cfg)[0]
    small = nrmse_only(min_improvement=0.5, min_delta=0.01)  # the stricter margin wins either way
    assert not gate(metrics(0.6), metrics(1.0), small)[0]


def test_a_ratio_gate_fails_alone():
    cfg = GateConfig(ratios={"cRMSE": 1.25})
    ok, why = gate(metrics(0.5, cRMSE=1.3), metrics(1.0, cRMSE=1.0), cfg)
    assert not ok
    assert why[0].startswith("nRMSE 0.5 <= ") and why[1] == "cRMSE 1.3 > 1.25 x champion 1"
    ok, why = gate(metrics(0.5, cRMSE=1.25), metrics(1.0, cRMSE=1.0), cfg)
    assert ok and why[1] == "cRMSE 1.25 <= 1.25 x champion 1"


@pytest.mark.parametrize("value", [None, math.nan, -math.inf, False, "1.0", "absent"])
@pytest.mark.parametrize("side", ["candidate", "champion"])
def test_a_missing_metric_fails_its_gate(value, side):
    cfg = GateConfig(ratios={"cRMSE": 1.25, "bRMSE": 1.25})
    cand, champ = metrics(0.5), metrics(1.0)
    target = cand if side == "candidate" else champ
    if value == "absent":
        del target.scores["cRMSE"]
    else:
        target.scores["cRMSE"] = value
    ok, why = gate(cand, champ, cfg)
    assert not ok
    assert why[1].startswith("cRMSE missing (candidate ") and why[2].startswith("bRMSE 1 <= ")  # the others still run


def test_a_missing_nrmse_on_either_side_fails():
    assert gate(metrics(0.5), metrics(math.nan), nrmse_only()) == (
        False,
        ["nRMSE missing (candidate 0.5, champion nan)"],
    )
    assert not gate(metrics(None), metrics(1.0), nrmse_only())[0]


def test_a_champion_metric_of_zero_allows_only_zero():
    cfg = GateConfig(ratios={"cRMSE": 2.0})
    assert gate(metrics(0.5, cRMSE=0.0), metrics(1.0, cRMSE=0.0), cfg)[0]
    ok, why = gate(metrics(0.5, cRMSE=1e-6), metrics(1.0, cRMSE=0.0), cfg)
    assert not ok and why[1] == "cRMSE 1e-06 > 2 x champion 0"


# --- family_of -------------------------------------------------------------------------------


def meta_of(tasks: list[str], nx: int = 16, frames: int = 8, initial_step: int = 1) -> DataMeta:
    grid = ((np.arange(nx, dtype=np.float32) + 0.5) / nx)[:, None]
    norm = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    return DataMeta(tasks, [0.1] * len(tasks), grid, [1.0], [norm] * len(tasks), frames, initial_step)


def test_family_is_gate_family_when_set():
    cfg = Config.model_validate({"gate": {"family": "burgers-main"}})
    assert family_of(cfg, meta_of(["burgers"])) == "burgers-main"


def test_derived_family_names_the_protocol_in_one_safe_path_segment(tmp_path):
    cfg = Config.model_validate({"data": {"initial_step": 1, "test_fraction": 0.1, "val_fraction": 0.2}})
    fam = family_of(cfg, meta_of(["../../etc/passwd", "a b"]))
    assert "/" not in fam and " " not in fam and fam not in (".", "..")
    assert "-g16-t8-in1-test0.1-val0.2" in fam
    reg = ChampionStore(Storage(str(tmp_path)), fam)
    assert os.path.dirname(reg.dir.root) == str(tmp_path / "registry")
    other = family_of(cfg, meta_of(["burgers"], nx=32))
    assert other != family_of(cfg, meta_of(["burgers"], nx=16))  # another grid is another family
    many = [f"pdebench_task_with_a_long_name_{i}" for i in range(8)]
    long_a, long_b = family_of(cfg, meta_of(many)), family_of(cfg, meta_of(many[:-1] + ["other"]))
    assert len(long_a) <= 100 and len(long_b) <= 100 and long_a != long_b  # bounded, still distinct


# --- interleaved timing ----------------------------------------------------------------------


class FakeClock:
    """Time that moves only when a fake call says so, and a log of who was called."""

    def __init__(self) -> None:
        self.now, self.log = 0.0, []

    def __call__(self) -> float:
        return self.now

    def call(self, name: str, cost: float, spikes: dict[int, float] | None = None):
        count = [0]

        def fn() -> None:
            count[0] += 1
            self.log.append(name)
            self.now += (spikes or {}).get(count[0], cost)

        return fn


def test_timing_alternates_sides_and_takes_medians_over_long_enough_repeats():
    clock = FakeClock()
    # candidate: 3 s a call, a slow first call (lazy init) and one huge spike; champion: 1 s a call
    cand, champ = clock.call("c", 3.0, spikes={1: 1000.0, 6: 1000.0}), clock.call("b", 1.0)
    r = time_interleaved(cand, champ, repeats=5, warmup=1, min_repeat_s=10.0, per=2, clock=clock)
    assert [name for name, _ in itertools.groupby(clock.log)] == ["c", "b"] * 6  # cand, champ, cand, champ, ...
    assert r["calls"]["champion"] == [10] * 5  # each repeat lasts >= 10 s; the warm-up round is not kept
    assert r["calls"]["candidate"] == [4, 1, 4, 4, 4]  # the spike ended its repeat early
    assert r["candidate_s"] == 3.0 / 2 and r["champion_s"] == 1.0 / 2  # per item; slow start and spike ignored
    assert r["ratio"] == 3.0 and r["repeats"] == 5
    assert max(r["samples_s"]["candidate"]) == 500.0  # the spike is recorded, not gated on


def test_timing_of_real_sleeps_orders_the_sides():
    r = time_interleaved(lambda: time.sleep(0.006), lambda: time.sleep(0.002), repeats=5, min_repeat_s=0.03)
    assert r["candidate_s"] > r["champion_s"] >= 0.002
    assert r["ratio"] > 1
    assert all(n >= 1 for n in r["calls"]["champion"]) and len(r["samples_s"]["candidate"]) == 5


def test_timing_rejects_a_degenerate_protocol():
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_interleaved(lambda: None, lambda: None, repeats=0)


class Encoder(nn.Module):
    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        self.seen.append(u.clone())
        return u.mean((1, 2)).reshape(-1, 1, 1).expand(-1, 2, 3).clone()


class Operator(nn.Module):
    def __init__(self, sleep_s: float = 0.0):
        super().__init__()
        self.sleep_s, self.steps = sleep_s, 0

    def forward(self, z: torch.Tensor, dt: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        time.sleep(self.sleep_s)
        return z + dt.reshape(-1, 1, 1)


class Decoder(nn.Module):
    def forward(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return z[:, :1, :1].expand(-1, points.shape[1], 1)


def toy_task(name: str, n: int, frames: int, nx: int) -> Task:
    u = np.arange(n * frames * nx, dtype=np.float32).reshape(n, frames, nx, 1)
    grid = ((np.arange(nx, dtype=np.float32) + 0.5) / nx)[:, None]
    splits = {"test": np.arange(0, 1), "val": np.arange(1, 4), "train": np.arange(4, n)}
    norm = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    return Task(name, f"{name}.h5", u, np.arange(frames) * 0.1, grid, [1.0], norm, splits)


def test_rollout_timing_runs_both_stacks_on_the_same_val_trajectories():
    tasks = [toy_task("a", 6, 8, 4), toy_task("b", 6, 8, 4)]
    meta = DataMeta.from_tasks(tasks, initial_step=2)
    seen_c, seen_b = [], []
    op_c, op_b = Operator(), Operator(sleep_s=0.002)
    cand = Surrogate(meta, Decoder(), op_c, encoder=Encoder(seen_c))
    champ = Surrogate(meta, Decoder(), op_b, encoder=Encoder(seen_b))
    threads = torch.get_num_threads()
    r = time_rollouts(cand, champ, tasks, samples=5, horizon=50, repeats=3, min_repeat_s=0.02)
    assert r["threads"] == 1 and torch.get_num_threads() == threads  # one thread while timing, then restored
    assert r["trajectories"] == 5 and r["horizon"] == 6 and r["per"] == 5 and r["device"] == "cpu"
    want = np.concatenate([tasks[0].u[1:4, 1], tasks[1].u[1:3, 1]])  # val rows, frame initial_step - 1
    np.testing.assert_array_equal(seen_c[0].numpy(), want)
    np.testing.assert_array_equal(seen_b[0].numpy(), want)
    assert op_c.steps == 6 * len(seen_c)  # every pass rolls the whole horizon out
    assert r["champion_s"] > r["candidate_s"]  # the sleeping operator is the slow one


# --- decide() with fake measurements ---------------------------------------------------------


def fake_run(root: Path, name: str, weights: str, data: str = "data-1") -> Candidate:
    """A run folder as the pipeline leaves it: exports (real ones, whose tensors spell `weights`),
    config and summary."""
    from ups.contracts import BestMetric
    from ups.exports import write_export

    run = root / "runs" / name
    stages = {}
    for stage in ("autoencoder", "operator"):
        tensors = {"w": torch.tensor(list(f"{weights}-{stage}".encode()), dtype=torch.uint8)}
        sha = write_export(str(run / "stages" / stage / "export.pt"), stage, tensors, BestMetric("val", 1.0, 1), "d")
        stages[stage] = {"status": "completed", "weights_sha256": sha}
    stages["steady_prior"] = {"status": "skipped"}
    summary = {"stages": stages, "data_sha256": data, "config_digest": f"cfg-{name}"}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(f"# {name}\n")
    return Candidate(name, str(run), RunSummary.read(Storage(str(run))), {"eval_nRMSE": 0.5})


def entry(trial: str, sweep: str) -> Decision:
    return Decision(at="2025-01-01T00:00:00Z", sweep=sweep, trial=trial, run=f"runs/{trial}")


class Fakes:
    """Measurements from tables: metrics per (side, small), one timing record; calls are logged."""

    def __init__(self, table: dict[tuple[str, bool], EvalMetrics], timing: dict | None = None):
        self.table, self.timing_record, self.calls, self.bound = table, timing, [], []

    def __call__(self, champion: ChampionRecord | None) -> Measures:
        self.bound.append(champion)

        def metrics_of(side: str, small: bool) -> EvalMetrics:
            self.calls.append((side, small))
            return copy.deepcopy(self.table[(side, small)])

        def timing() -> dict:
            self.calls.append(("timing", None))
            assert self.timing_record is not None
            return self.timing_record

        return Measures(metrics_of, timing if self.timing_record else None)


def both_phases(cand: EvalMetrics, champ: EvalMetrics | None = None) -> dict:
    def on(m: EvalMetrics, small: bool) -> EvalMetrics:
        return dataclasses.replace(copy.deepcopy(m), protocol={**PROTOCOL, "small": small})

    table = {("candidate", s): on(cand, s) for s in (True, False)}
    if champ:
        table.update({("champion", s): on(champ, s) for s in (True, False)})
    return table


def timing(cand_s: float, champ_s: float) -> dict:
    return {"candidate_s": cand_s, "champion_s": champ_s, "ratio": cand_s / champ_s, "repeats": 7}


@pytest.fixture
def registry(tmp_path) -> ChampionStore:
    return ChampionStore(Storage(str(tmp_path / "store")), "fam")


def promote_first(tmp_path: Path, registry: ChampionStore) -> Candidate:
    first = fake_run(tmp_path, "t1", "w1")
    d = decide(GateConfig(), registry, first, Fakes(both_phases(metrics(1.0))), sweep="s1")
    assert d.passed
    return first


def test_empty_registry_promotes_and_writes_champion_and_history(tmp_path, registry):
    cand = fake_run(tmp_path, "t1", "w1")
    fakes, said = Fakes(both_phases(metrics(0.5))), []
    d = decide(GateConfig(), registry, cand, fakes, sweep="s1", say=said.append)
    assert d.passed and d.reasons[0].startswith("small: empty registry") and d.reasons[1].startswith("full:")
    assert fakes.bound == [None] and fakes.calls == [("candidate", True), ("candidate", False)]
    champ = json.loads(Path(registry.dir.path("champion.json")).read_text())
    assert champ["trial"] == "t1" and champ["sweep"] == "s1" and champ == d.champion.to_dict()
    assert champ["weights_sha256"] == cand.weights_sha256
    assert set(champ["weights_sha256"]) == {"autoencoder", "operator"}
    assert set(champ["exports"]) == {"autoencoder", "operator"}  # only completed stages are copied
    copied = Path(champ["exports"]["operator"]).read_bytes()
    assert copied == (Path(cand.run) / "stages" / "operator" / "export.pt").read_bytes()
    assert Path(champ["checkpoint"]).is_relative_to(Path(registry.dir.root))
    assert (Path(champ["checkpoint"]) / "config.yaml").exists()
    history = registry.history()
    assert [h["promoted"] for h in history] == [True] and history[0]["champion_before"] is None
    assert history[0]["metrics"]["nRMSE"] == 0.5  # the full evaluation's, not the trial's
    assert said[-1] == "promoted trial t1 to champion of fam"


def test_self_comparison_is_refused_without_measuring(tmp_path, registry):
    first = promote_first(tmp_path, registry)
    before = registry.champion()
    fakes = Fakes(both_phases(metrics(0.1), metrics(1.0)))
    d = decide(GateConfig(), registry, first, fakes, sweep="s2")
    assert not d.passed and d.reasons == ["the candidate is the current champion (trial t1, same weights)"]
    assert fakes.bound == [] and d.steps == {}
    assert registry.champion() == before and d.champion == before
    assert [h["promoted"] for h in registry.history()] == [True, False]


def test_a_champion_of_other_data_is_refused(tmp_path, registry):
    promote_first(tmp_path, registry)
    other = fake_run(tmp_path, "t2", "w2", data="data-2")
    fakes = Fakes(both_phases(metrics(0.1), metrics(1.0)))
    d = decide(GateConfig(), registry, other, fakes, sweep="s2")
    assert not d.passed and fakes.bound == []
    assert d.reasons == [
        "the champion was trained on other data (digest data-1); set gate.family to start a new family"
    ]
    assert registry.champion().trial == "t1"


def test_a_failing_small_gate_stops_before_the_full_evaluation(tmp_path, registry):
    promote_first(tmp_path, registry)
    table = both_phases(metrics(0.5), metrics(1.0))
    table[("candidate", True)].scores["nRMSE"] = 1.1  # worse on the small protocol
    fakes = Fakes(table, timing(0.001, 0.001))
    d = decide(GateConfig(), registry, fake_run(tmp_path, "t2", "w2"), fakes, sweep="s2")
    assert not d.passed and set(d.steps) == {"small"}
    assert ("candidate", False) not in fakes.calls and ("champion", False) not in fakes.calls  # no full evaluation
    assert d.reasons[0].startswith("small: nRMSE 1.1 > ")
    assert registry.champion().trial == "t1" and registry.history()[-1]["reasons"] == d.reasons


def test_a_better_candidate_replaces_the_champion(tmp_path, registry):
    promote_first(tmp_path, registry)
    old_slot = Path(registry.champion().checkpoint)
    fakes = Fakes(both_phases(metrics(0.5), metrics(1.0)), timing(0.001, 0.001))
    d = decide(GateConfig(), registry, fake_run(tmp_path, "t2", "w2"), fakes, sweep="s2")
    assert d.passed and any(r.startswith("full: nRMSE 0.5 <= ") for r in d.reasons)
    assert fakes.bound[0].trial == "t1"  # measured against the champion read under the lock
    champ = registry.champion()
    assert champ.trial == "t2" and champ.champion_before == {"trial": "t1", "sweep": "s1"}
    assert not old_slot.exists() and Path(champ.checkpoint).exists()  # the old weights are dropped
    assert [h["promoted"] for h in registry.history()] == [True, True]


def test_wall_clock_is_gated_on_the_interleaved_timing_not_the_evals_own(tmp_path, registry):
    promote_first(tmp_path, registry)
    # One-off eval timings that a loaded machine produced: 2.3x the champion's.
    table = both_phases(metrics(0.5, wall_clock=0.00575), metrics(1.0, wall_clock=0.0025))
    fakes = Fakes(table, timing(0.0026, 0.0025))
    d = decide(GateConfig(), registry, fake_run(tmp_path, "t2", "w2"), fakes, sweep="s2")
    assert d.passed, d.reasons
    assert fakes.calls.count(("timing", None)) == 1  # measured once, both phases gate on it
    for phase in ("small", "full"):
        step = d.steps[phase]
        assert step["timing"]["candidate_s"] == 0.0026 and step["timing"]["repeats"] == 7
        assert step["candidate"]["wall_clock"] == 0.00575  # the eval's own number stays reported
        assert "wall_clock 0.0026 <= 2 x champion 0.0025" in step["reasons"]


def test_a_slower_candidate_fails_the_wall_clock_gate(tmp_path, registry):
    promote_first(tmp_path, registry)
    fakes = Fakes(both_phases(metrics(0.5), metrics(1.0)), timing(0.0075, 0.0025))
    d = decide(GateConfig(), registry, fake_run(tmp_path, "t2", "w2"), fakes, sweep="s2")
    assert not d.passed and "small: wall_clock 0.0075 > 2 x champion 0.0025" in d.reasons


def test_without_a_timing_the_wall_clock_gate_fails_as_missing(tmp_path, registry):
    promote_first(tmp_path, registry)
    d = decide(
        GateConfig(),
        registry,
        fake_run(tmp_path, "t2", "w2"),
        Fakes(both_phases(metrics(0.5), metrics(1.0))),
        sweep="s2",
    )
    assert not d.passed and "small: wall_clock missing (candidate None, champion None)" in d.reasons
    no_wall = GateConfig(ratios={"cRMSE": 1.25})  # not gated: no timing needed
    d = decide(
        no_wall, registry, fake_run(tmp_path, "t3", "w3"), Fakes(both_phases(metrics(0.5), metrics(1.0))), sweep="s3"
    )
    assert d.passed and "timing" not in d.steps["full"]


def test_best_trial_is_the_lowest_val_nrmse_among_completed_trials():
    trials = [
        TrialRecord("a", {}, "completed", 3, {"eval_nRMSE": 0.3}, "runs/a"),
        TrialRecord("b", {}, "stopped", 1, {"eval_nRMSE": 0.1}, "runs/b"),
        TrialRecord("c", {}, "completed", 3, {"eval_nRMSE": 0.2}, "runs/c"),
        TrialRecord("d", {}, "completed", 3, {}, "runs/d"),
    ]
    assert gating.best_trial(trials).trial == "c"
    assert gating.best_trial(trials[1:2] + trials[3:]) is None


# --- the registry on a local disk ------------------------------------------------------------


def test_registry_history_appends_and_starts_empty(registry):
    assert registry.champion() is None and registry.history() == []
    registry.record({"n": 1})
    registry.record({"n": 2})
    assert registry.history() == [{"n": 1}, {"n": 2}]


def test_registry_lock_excludes_another_holder(registry):
    got = threading.Event()

    def contender() -> None:
        with registry.lock():
            got.set()

    with registry.lock():
        t = threading.Thread(target=contender)
        t.start()
        assert not got.wait(0.3)  # blocked while held
    assert got.wait(5)
    t.join()


def test_registry_history_keeps_order_and_reads_a_legacy_history_jsonl_first(registry):
    registry.dir.write_text('{"n": 0}\n\n{"n": 1}\n', "history.jsonl")  # a registry from before history/
    for n in range(2, 7):
        registry.record({"n": n})
    assert registry.history() == [{"n": n} for n in range(7)]
    assert registry.dir.read_text("history.jsonl") == '{"n": 0}\n\n{"n": 1}\n'  # never rewritten


def assert_refused(reg: ChampionStore, match: str = "is locked") -> None:
    """A lock with a 0.5 s timeout is refused, and promptly: it did not wait on the holder."""
    t0 = time.monotonic()
    with pytest.raises(ChampionLockError, match=match), reg.lock(timeout_s=0.5):
        pass
    assert time.monotonic() - t0 < 60


def test_local_lock_gives_up_after_its_timeout_while_another_process_holds_it(registry):
    registry.dir.makedirs()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(120)",
            registry.dir.path(".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert_refused(registry, match=r"champion store .*fam is locked by another driver \(waited 0.5 s\)")
    finally:
        holder.kill()
        holder.wait()
    with registry.lock(timeout_s=60):  # the kernel dropped the dead holder's lock
        pass


# --- the registry on an object store ---------------------------------------------------------
# A Storage with local=False takes the object-store paths (the lease, plain whole-object writes
# that are not atomic here) over a real folder.


def object_registry(tmp_path: Path, lease_s: float = 30.0, delay_s: float = 0.05) -> ChampionStore:
    store = Storage(str(tmp_path / "bucket"))
    store.local = False
    return ChampionStore(store, "fam", lease_s=lease_s, delay_s=delay_s)


def lease_of(reg: ChampionStore) -> dict[str, Any]:
    return json.loads(Path(reg.dir.path(".lease")).read_text())


def put_lease(reg: ChampionStore, holder: str, expires_in: float) -> None:
    reg.dir.write_json({"holder": holder, "expires_at": time.time() + expires_in}, ".lease")


@pytest.mark.parametrize("dead_holder", [False, True])
def test_object_store_lock_admits_one_driver_at_a_time(tmp_path, dead_holder):
    drivers = [object_registry(tmp_path, delay_s=0.2) for _ in range(3)]  # one ChampionStore per driver
    if dead_holder:
        put_lease(drivers[0], "dead", -1.0)  # every driver races to take it over
    inside, most, done, errors = [0], [0], [], []
    count = threading.Lock()

    def driver(reg: ChampionStore, i: int) -> None:
        try:
            for n in range(3):
                with reg.lock(timeout_s=300):
                    with count:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.02)
                    with count:
                        inside[0] -= 1
                    done.append((i, n))
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=driver, args=(reg, i)) for i, reg in enumerate(drivers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors and len(done) == 9
    assert most[0] == 1  # never two drivers inside
    assert not os.path.exists(drivers[0].dir.path(".lease"))  # each released its own lease


def test_a_live_lease_of_another_driver_is_waited_for_then_refused(tmp_path):
    reg = object_registry(tmp_path)
    put_lease(reg, "other", 600)
    assert_refused(reg, match=r"is locked by another driver \(waited 0.5 s\)")
    assert lease_of(reg)["holder"] == "other"


def test_an_unreadable_lease_never_counts_as_free(tmp_path):
    reg = object_registry(tmp_path)
    reg.dir.write_text("{not json", ".lease")
    assert_refused(reg)


def test_an_expired_lease_of_a_dead_holder_is_taken_over(tmp_path):
    reg = object_registry(tmp_path)
    put_lease(reg, "dead", -1.0)
    with reg.lock(timeout_s=60):
        lease = lease_of(reg)
        assert lease["holder"] != "dead" and lease["expires_at"] > time.time()
    assert not os.path.exists(reg.dir.path(".lease"))


def test_a_long_hold_is_renewed_and_never_expires(tmp_path):
    reg = object_registry(tmp_path, lease_s=2.4, delay_s=0.05)  # renewed every 0.8 s
    rival = object_registry(tmp_path, lease_s=2.4, delay_s=0.05)
    with reg.lock(timeout_s=60):
        time.sleep(5.0)  # twice the lease: only the renewals keep it alive
        assert_refused(rival)
        reg._fence()  # the lease still carries our token: a promote would go ahead
    with rival.lock(timeout_s=60):  # released: the rival gets it
        pass


def test_release_leaves_the_lease_of_a_driver_that_took_over(tmp_path):
    reg = object_registry(tmp_path)
    with reg.lock(timeout_s=60):
        put_lease(reg, "other", 600)  # another driver now holds it (ours was lost)
    assert lease_of(reg)["holder"] == "other"


def test_a_promote_after_the_lease_was_lost_switches_nothing(tmp_path):
    reg = object_registry(tmp_path)
    first = promote_first(tmp_path, reg)
    before = reg.champion()
    second = fake_run(tmp_path, "t2", "w2")
    with reg.lock(timeout_s=60):
        put_lease(reg, "other", 600)
        with pytest.raises(ChampionLockError, match="lost its lock to another driver"):
            reg.promote(Storage(second.run), second.summary.stages, entry("t2", "s2"))
    assert reg.champion() == before and Path(before.checkpoint).exists()
    assert [n for n in reg.dir.listdir() if n.startswith("champion-")] == [os.path.basename(before.checkpoint)]
    with pytest.raises(ChampionLockError, match="without its lock"):  # and never without the lock at all
        reg.promote(Storage(first.run), first.summary.stages, entry("t1", "s1"))


def test_decide_on_an_object_store_replaces_the_champion(tmp_path):
    reg = object_registry(tmp_path)
    promote_first(tmp_path, reg)
    old_slot = Path(reg.champion().checkpoint)
    fakes = Fakes(both_phases(metrics(0.5), metrics(1.0)), timing(0.001, 0.001))
    d = decide(GateConfig(), reg, fake_run(tmp_path, "t2", "w2"), fakes, sweep="s2")
    assert d.passed and reg.champion().trial == "t2" and not old_slot.exists()
    assert [h["trial"] for h in reg.history()] == ["t1", "t2"]
    assert not os.path.exists(reg.dir.path(".lease"))


@pytest.mark.parametrize("where", ["local", "object store"])
def test_concurrent_records_lose_no_entry_and_keep_each_writers_order(tmp_path, where):
    reg = ChampionStore(Storage(str(tmp_path / "store")), "fam") if where == "local" else object_registry(tmp_path)
    threads = [threading.Thread(target=lambda w=w: [reg.record({"w": w, "n": n}) for n in range(10)]) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    history = reg.history()
    assert len(history) == 40
    for w in range(4):
        assert [h["n"] for h in history if h["w"] == w] == list(range(10))


@pytest.mark.parametrize("target", ["outside", "history", "registry", "parent", "dotdot", "not a string"])
def test_promote_deletes_only_a_champion_slot_directly_in_the_registry(tmp_path, registry, target):
    first = promote_first(tmp_path, registry)
    victim = tmp_path / "victim"
    (victim / "champion-1").mkdir(parents=True)
    (victim / "champion-1" / "keep").write_text("x")
    points_at = {
        "outside": str(victim / "champion-1"),
        "history": registry.dir.uri_of("history"),
        "registry": registry.dir.uri,
        "parent": os.path.dirname(registry.dir.uri),
        "dotdot": registry.dir.uri + "/champion-x/../..",
        "not a string": ["champion-1"],
    }[target]
    tampered = {**registry.champion().to_dict(), "checkpoint": points_at}
    registry.dir.write_json(tampered, "champion.json")
    second = fake_run(tmp_path, "t2", "w2")
    champ = registry.promote(Storage(second.run), second.summary.stages, entry("t2", "s2"))
    assert (victim / "champion-1" / "keep").exists()
    assert len(registry.history()) == 1 and registry.champion() == champ and Path(champ.checkpoint).exists()
    assert Path(first.run).exists()
