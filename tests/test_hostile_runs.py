"""Hostile run folders, registries and files, and the controls that must keep working.

A run trained without Ray (`ray_jobs.train --no-ray`, real entry point) is copied elsewhere and
evaluated from the copy with the original gone: exports are found in the run folder itself, not
through the absolute paths summary.json recorded. The same run refuses to resume on changed data.
Then the checks that need no training: HDF5 links inside a file still read, writes through a
link below a storage root are refused, a checkpoint is loaded from the bytes that were hashed, a
promotion copies only verified bytes, and a champion record is refused without digests or when
it points outside its registry slot. No test here starts Ray (`ray.init` is a tripwire).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ups import config as C
from ups import pipeline
from ups.backend.local_backend import LocalBackend
from ups.champions import ChampionStore
from ups.console import Console
from ups.contracts import BestMetric, ChampionRecord, EvalMetrics, RunSummary
from ups.data import pdebench, views
from ups.exports import read_export, write_export
from ups.gating import Candidate, Measures, decide
from ups.rundir import RunDir
from ups.schema import ConfigError, GateConfig
from ups.storage import LinkEscape, Storage
from ups.train import state

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
N, T, X = 24, 12, 32
BASE = f"""include: {TINY}
data: {{path: good.h5, generate: null, max_samples: null, initial_step: 4}}
scaling: {{num_workers: 1}}
training: {{batch_size: 8}}
stages: {{autoencoder: {{epochs: 1}}, operator: {{epochs: 1}}}}
"""


def fields(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    u = np.random.default_rng(seed).standard_normal((N, T, X)).astype(np.float32)
    return u, {"x": (np.arange(X) + 0.5) / X, "t": np.linspace(0.0, 1.0, T + 1)}


class RayStarted(BaseException):
    pass


def tripwire(*_, **__):
    raise RayStarted("ray.init was called")


def job(name: str, *argv: str, cwd: Path) -> tuple[int, str, str]:
    """Run `ray_jobs.<name>` in this process, in `cwd`, with ray.init a tripwire: (exit code, out, err)."""
    import contextlib
    import io

    import ray
    import ray._private.worker

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(ray, "init", tripwire)
        mp.setattr(ray._private.worker, "init", tripwire)
        mp.setattr(sys, "argv", [f"ray_jobs.{name}", *argv])
        mp.delenv("RAY_ADDRESS", raising=False)
        main = importlib.import_module(f"ray_jobs.{name}").main
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
            main()
    return int(e.value.code or 0), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace holding good.h5 and the finished run runs/r, trained with --no-ray."""
    ws = tmp_path_factory.mktemp("ws")
    u, c = fields()
    pdebench.write(ws / "good.h5", u, c)
    (ws / "base.yaml").write_text(BASE)
    code, out, err = job("train", "--config", "base.yaml", "--name", "r", "--storage", "runs", "--no-ray", cwd=ws)
    assert code == 0, err
    return ws


@pytest.fixture
def moved(trained, tmp_path) -> Iterator[Path]:
    """A copy of the finished run under another storage and name; the original is gone meanwhile."""
    copy = tmp_path / "archive" / "r-copy"
    shutil.copytree(trained / "runs" / "r", copy, symlinks=True)
    aside = trained / "runs-away"
    (trained / "runs").rename(aside)
    try:
        yield copy
    finally:
        aside.rename(trained / "runs")


def test_a_moved_run_folder_validates_and_evaluates_from_its_own_exports(trained, moved):
    recorded = json.loads((moved / "summary.json").read_text())
    assert str(trained / "runs" / "r") in recorded["stages"]["operator"]["export"]  # absolute, now stale
    code, out, err = job("evaluate", "--run", str(moved), "--validate-only", cwd=trained)
    assert code == 0, err
    assert "2 export(s) verified" in out and out.strip().endswith("OK")
    # The whole evaluation, on this process instead of Ray (the Ray path: `make test`, lead's check).
    rundir = RunDir(Storage(str(moved.parent)), moved.name)
    summary = rundir.summary()
    cfg = rundir.config()
    exports = pipeline.load_exports(rundir, summary)
    assert set(exports) == {"autoencoder", "operator"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(trained)  # data.path is relative to where the run was started
        tasks = views.load_tasks(cfg.data)
        meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
        result = pipeline.evaluate_run(
            LocalBackend("cpu"), rundir, cfg, meta, tasks, exports, "val", Console(quiet=True)
        )
    assert np.isfinite(result.nRMSE) and (moved / "eval" / "val" / "metrics.json").exists()


def test_resume_runs_on_the_same_data_and_refuses_changed_data(trained, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws, symlinks=True)
    argv = ("--config", "base.yaml", "--name", "r", "--storage", "runs", "--no-ray")
    code, out, err = job("train", *argv, cwd=ws)
    assert code == 0 and "completed earlier" in out, err  # the control: same data, the run resumes
    u, c = fields(seed=1)
    pdebench.write(ws / "good.h5", u, c)  # same shape and every check passes; only the values differ
    before = (ws / "runs" / "r" / "summary.json").read_bytes()
    code, out, err = job("train", *argv, cwd=ws)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    recorded = json.loads(before)["data_sha256"]
    assert "data.path good.h5" in lines[0] and recorded[:12] in lines[0]
    assert (ws / "runs" / "r" / "summary.json").read_bytes() == before  # the recorded digest is kept
    code, _, err = job("train", *argv, "--validate-only", cwd=ws)
    assert code == 2 and "the data changed" in err


def test_accept_config_change_keeps_a_run_whose_architecture_is_unchanged(trained):
    rundir = RunDir(Storage(str(trained / "runs")), "r")
    changed = C.load_config(trained / "base.yaml", ["training.seed=7"]).cfg
    assert rundir.check(changed, accept_change=True) == "accept"
    arch = C.load_config(trained / "base.yaml", ["model.decoder.hidden=64"]).cfg
    with pytest.raises(ConfigError, match="needs --restart"):
        rundir.check(arch, accept_change=True)
    assert rundir.check(arch, restart=True) == "restart"


# --- HDF5: links that stay inside the file are data like any other -----------------------------


def test_soft_links_inside_the_file_still_read(tmp_path):
    u, c = fields()
    p = tmp_path / "soft.h5"
    with h5py.File(p, "w") as f:
        f["store/u"], f["store/x"], f["t-coordinate"] = u, c["x"], c["t"]
        f["tensor"] = h5py.SoftLink("/store/u")
        f["x-coordinate"] = h5py.SoftLink("store/x")  # relative to the root
    info = pdebench.inspect(p)
    pdebench.scan_values(p, info.n_samples)
    got, coords = pdebench.read(p, samples=slice(2, 5))
    np.testing.assert_array_equal(got[..., 0], u[2:5])
    np.testing.assert_array_equal(coords["x"], c["x"])


def test_a_soft_link_cycle_is_one_line(tmp_path):
    p = tmp_path / "cycle.h5"
    with h5py.File(p, "w") as f:
        f["tensor"], f["loop"] = h5py.SoftLink("/loop"), h5py.SoftLink("/tensor")
    with pytest.raises(pdebench.PDEBenchFormatError, match="chain of more than 8 soft links"):
        pdebench.inspect(p)


def test_float64_values_within_float32_range_pass(tmp_path):
    u, c = fields()
    u64 = u.astype(np.float64)
    u64[3, 2, 1] = 3e38  # large, but float32 holds it
    p = tmp_path / "f64.h5"
    with h5py.File(p, "w") as f:
        f["tensor"], f["x-coordinate"], f["t-coordinate"] = u64, c["x"], c["t"]
    pdebench.scan_values(p, N)
    assert np.isfinite(pdebench.read(p)[0]).all()


# --- storage: no write passes through a link below the root ------------------------------------


def test_writes_through_a_link_below_the_root_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "stages").symlink_to(outside)
    run = Storage(str(tmp_path / "runs")).sub("r")
    with pytest.raises(LinkEscape, match="symbolic link"):
        run.write_json({"a": 1}, "stages", "x.json")
    (tmp_path / "runs" / "r" / "config.yaml").symlink_to(outside / "c.yaml")
    with pytest.raises(LinkEscape):
        run.write_text("a: 1\n", "config.yaml")
    with pytest.raises(LinkEscape):
        run.delete_dir("stages")
    assert list(outside.iterdir()) == []
    assert RunDir(Storage(str(tmp_path / "runs")), "r").dir.links_below() == ["config.yaml", "stages"]


def test_a_storage_root_that_is_a_link_is_the_users_choice(tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "big")
    store = Storage(str(tmp_path / "runs"))
    store.sub("r").write_json({"a": 1}, "run.json")
    assert json.loads((tmp_path / "big" / "r" / "run.json").read_text()) == {"a": 1}


# --- checkpoints: what is loaded is what was hashed --------------------------------------------


def test_a_checkpoint_is_loaded_from_the_bytes_that_were_hashed(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    state.save_checkpoint(ck, {"w": torch.zeros(4)}, {"stage": "x"})
    (tmp_path / "other").mkdir()
    swap = tmp_path / "other" / state.STATE_FILE
    torch.save({"w": torch.ones(4)}, swap)  # another valid state of the same size
    assert swap.stat().st_size == (ck / state.STATE_FILE).stat().st_size
    real = hashlib.sha256

    class Swapping:
        """hashlib.sha256 that replaces state.pt right after its digest is taken: the window between
        checking a file and opening it again."""

        def __init__(self, data: bytes = b"") -> None:
            self.h = real(data)

        def update(self, data: bytes) -> None:
            self.h.update(data)

        def hexdigest(self) -> str:
            if swap.exists():
                swap.replace(ck / state.STATE_FILE)
            return self.h.hexdigest()

    monkeypatch.setattr(state.hashlib, "sha256", Swapping)
    loaded = state.load_checkpoint(ck, stage="x")
    assert not swap.exists()  # the file was replaced between the check and the load
    assert torch.equal(loaded["w"], torch.zeros(4))  # and the verified bytes were loaded, not the new file


# --- gating: promotion copies verified bytes; champion records are checked ---------------------

PROTOCOL = {"split": "val", "samples": 4, "horizon": 5, "initial_step": 1}


def run_folder(root: Path, name: str, fill: float) -> Candidate:
    run = root / "runs" / name
    stages = {}
    for stage in ("autoencoder", "operator"):
        sha = write_export(str(run / "stages" / stage / "export.pt"), stage, {"w": torch.full((3,), fill)},
                           BestMetric("val", 1.0, 1), "d")  # fmt: skip
        stages[stage] = {"status": "completed", "weights_sha256": sha}
    summary = {"stages": stages, "data_sha256": "data-1", "config_digest": "c"}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text("# run\n")
    return Candidate(name, str(run), RunSummary.read(Storage(str(run))), {"eval_nRMSE": 0.5})


def measures(_: ChampionRecord | None) -> Measures:
    return Measures(
        lambda side, small: EvalMetrics.from_dict(
            {
                **PROTOCOL,
                "corrector": "none",
                "nRMSE": 0.5,
                "wall_clock": 0.01,
                "protocol": {**PROTOCOL, "small": small},
            }
        )
    )


def test_promotion_refuses_an_export_altered_after_evaluation(tmp_path):
    registry = ChampionStore(Storage(str(tmp_path / "store")), "fam")
    cand = run_folder(tmp_path, "t1", 0.0)
    write_export(str(Path(cand.run) / "stages" / "operator" / "export.pt"), "operator", {"w": torch.ones(3)},
                 BestMetric("val", 1.0, 1), "d")  # fmt: skip
    with pytest.raises(ConfigError, match="changed after it was evaluated; not promoted"):
        decide(GateConfig(ratios={}), registry, cand, measures, sweep="s")
    assert registry.champion() is None
    assert not [n for n in registry.dir.listdir() if n.startswith("champion-")]  # the half-made slot is gone


def test_a_champion_record_without_digests_or_pointing_elsewhere_is_refused(tmp_path):
    registry = ChampionStore(Storage(str(tmp_path / "store")), "fam")
    assert decide(GateConfig(ratios={}), registry, run_folder(tmp_path, "t1", 0.0), measures, sweep="s").passed
    champ = registry.champion()
    assert champ is not None
    config_uri, files = registry.champion_files(champ)  # the control: a promoted champion loads, verified
    assert config_uri.endswith("config.yaml") and Path(config_uri).exists()
    assert {n: read_export(u, sha)["w"].sum().item() for n, (u, sha) in files.items()} == {
        "autoencoder": 0.0,
        "operator": 0.0,
    }
    no_digest = dataclasses.replace(champ, weights_sha256={**champ.weights_sha256, "operator": None})
    with pytest.raises(ConfigError, match="operator's export has no recorded weights digest"):
        registry.champion_files(no_digest)
    with pytest.raises(ConfigError, match="autoencoder's export has no recorded weights digest"):
        registry.champion_files(dataclasses.replace(champ, weights_sha256={}))
    other = run_folder(tmp_path, "t2", 1.0)
    elsewhere = dataclasses.replace(
        champ, exports={**champ.exports, "operator": str(Path(other.run) / "stages/operator/export.pt")}
    )
    with pytest.raises(ConfigError, match="not in the champion's folder"):
        registry.champion_files(elsewhere)
    with pytest.raises(ConfigError, match="not a champion folder of this registry"):
        registry.champion_files(dataclasses.replace(champ, checkpoint=other.run))
