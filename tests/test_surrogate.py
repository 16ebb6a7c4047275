"""The public Surrogate: what a user loads (run folder, champion, exported artifact) rolls out
exactly what evaluation scores, and anything altered or ill-fitting is refused in one line.

One tiny pipeline (autoencoder, operator and a diffusion corrector, without Ray: conftest's `trained`)
serves every test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ups import Surrogate
from ups.artifact import LoadError, load_bundle
from ups.contracts import Decision, RunSummary
from ups.data import pdebench, views
from ups.eval.evaluate import evaluate_split
from ups.storage import Storage
from ups.surrogate import SurrogateInputError

ROOT = Path(__file__).resolve().parents[1]


def evaluated(run: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Evaluation's val predictions of the run, and the raw (physical) val trajectories they came from."""
    bundle = load_bundle(str(run))
    cfg = bundle.cfg
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, cfg.data.initial_step)
    result = evaluate_split(cfg, meta, tasks, bundle.exports, "val", device="cpu")
    strided = {"t": slice(None, None, cfg.data.t_stride), "space": slice(None, None, cfg.data.x_stride)}
    u, _ = pdebench.read(cfg.data.paths[0], samples=slice(0, len(tasks[0].u)), **strided)
    return result.arrays["pred"], u[tasks[0].splits["val"]], meta.initial_step


def test_the_run_folder_rolls_out_what_evaluate_scores_bit_for_bit(trained):
    pred, raw, init = evaluated(trained)
    s = Surrogate.load(trained, device="cpu")
    assert s.meta.corrector == "diffusion" and s.meta.kind == "run"
    assert s.meta.frames_in == init and s.meta.grid == raw.shape[2:-1] and s.meta.channels == 1
    assert s.meta.metrics["val"]["nRMSE"] > 0 and set(s.meta.digests["weights"]) == {
        "autoencoder", "operator", "diffusion_residual"}  # fmt: skip
    out = s.rollout(raw[:, :init])
    assert out.shape == pred[:, init:].shape
    assert np.array_equal(out, pred[:, init:])
    # More frames than needed: the last `frames_in` are the window; no channel axis for one channel.
    assert np.array_equal(s.rollout(np.concatenate([raw[:, :1], raw[:, :init]], 1)[..., 0], steps=3), out[:, :3])


def test_an_exported_artifact_loads_in_a_fresh_process_and_matches(trained, tmp_path):
    pred, raw, init = evaluated(trained)
    art = tmp_path / "artifact"
    cli = subprocess.run([sys.executable, "-m", "ray_jobs.export", "--model", str(trained), "--out", str(art)],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert sorted(p.name for p in art.iterdir()) == [
        "README.md", "artifact.json", "config.yaml", "meta.json", "model.safetensors"]  # fmt: skip
    card = (art / "README.md").read_text()
    assert "| val |" in card and "persistence" in card and "trained with:" in card
    assert "steps/epoch" in card and " lr " in card  # what each stage actually trained with
    np.save(tmp_path / "u0.npy", raw[:, :init])
    code = ("import sys, numpy as np; from ups import Surrogate; s = Surrogate.load(sys.argv[1], device='cpu'); "
            "assert 'ray' not in sys.modules; np.save(sys.argv[3], s.rollout(np.load(sys.argv[2])))")  # fmt: skip
    out = tmp_path / "out.npy"
    fresh = subprocess.run([sys.executable, "-c", code, str(art), str(tmp_path / "u0.npy"), str(out)],
                           cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert np.array_equal(np.load(out), pred[:, init:])
    # The same folder, moved: an artifact needs nothing outside itself.
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(str(art), moved)
    assert np.array_equal(Surrogate.load(moved, device="cpu").rollout(raw[:, :init]), pred[:, init:])


def test_a_promoted_champion_and_a_moved_run_load_and_match(trained, tmp_path):
    from ups.champions import ChampionStore

    pred, raw, init = evaluated(trained)
    summary = RunSummary.read(Storage(str(trained)))
    registry = ChampionStore(Storage(str(tmp_path / "store")), "fam")
    entry = Decision(at="now", sweep="s", trial="t", run=str(trained), weights_sha256=summary.weights_sha256())
    with registry.lock():
        registry.promote(Storage(str(trained)), summary.stages, entry)
    champ = Surrogate.load(tmp_path / "store" / "registry" / "fam", device="cpu")
    assert champ.meta.kind == "champion" and champ.meta.corrector == "diffusion"
    assert np.array_equal(champ.rollout(raw[:, :init]), pred[:, init:])
    moved = tmp_path / "copied-run"
    shutil.copytree(trained, moved)
    assert np.array_equal(Surrogate.load(moved, device="cpu").rollout(raw[:, :init]), pred[:, init:])


def test_tampered_or_incomplete_sources_are_refused(trained, tmp_path):
    art = tmp_path / "art"
    subprocess.run([sys.executable, "-m", "ray_jobs.export", "--model", str(trained), "--out", str(art)],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    weights = art / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="model.safetensors: does not match the digest"):
        Surrogate.load(art)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "stages" / "operator" / "export.pt").write_bytes(
        (run / "stages" / "autoencoder" / "export.pt").read_bytes()
    )  # a swapped export
    with pytest.raises(LoadError, match="stages/operator/export.pt: weights do not match"):
        Surrogate.load(run)
    with pytest.raises(LoadError, match="not a run folder, a registry family or an artifact"):
        Surrogate.load(tmp_path)
    shutil.copy(trained / "stages" / "operator" / "export.pt", run / "stages" / "operator" / "export.pt")
    Surrogate.load(run)  # restored: loads
    (run / "meta.json").write_text("{}")
    with pytest.raises(LoadError, match="meta.json"):
        Surrogate.load(run)


@pytest.mark.parametrize(
    "shape, fill, message",
    [
        ((2, 4, 64, 1), 0.0, "grid is \\(64,\\)"),
        ((2, 4, 128, 3), 0.0, "3 channel\\(s\\)"),
        ((2, 2, 128, 1), 0.0, "2 frame\\(s\\), the model needs 4"),
        ((2, 4, 128, 1), np.nan, "NaN/Inf \\(trajectory 0\\)"),
        ((4, 128), 0.0, "has shape \\(4, 128\\)"),
        ((0, 4, 128, 1), 0.0, "batch 0"),
    ],
)
def test_inputs_that_do_not_fit_are_one_clear_error(trained, shape, fill, message):
    s = Surrogate.load(trained, device="cpu")
    with pytest.raises(SurrogateInputError, match=message):
        s.rollout(np.full(shape, fill, np.float32))
    with pytest.raises(SurrogateInputError, match="steps must be >= 1"):
        s.rollout(np.zeros((1, 4, 128, 1), np.float32), steps=0)
    with pytest.raises(SurrogateInputError, match="task 'x'"):
        s.rollout(np.zeros((1, 4, 128, 1), np.float32), task="x")
