"""Config loading and the CLI's contract for bad input: exit 2, one line on stderr naming the
file and key, before any Ray resource is used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ups.config import Config, ConfigError, digest, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_includes_merge_and_lists_replace(tmp_path):
    write(tmp_path, "base.yaml", "training: {batch_size: 64, seed: 3}\nlogging: {wandb: {tags: [a, b]}}\n")
    write(tmp_path, "mid.yaml", "include: base.yaml\ntraining: {seed: 5}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    top = write(sub, "top.yaml", "include: [../mid.yaml]\nlogging: {wandb: {tags: [c]}}\n")
    cfg = load_config(top).cfg
    assert cfg.training.batch_size == 64  # from base, through two levels
    assert cfg.training.seed == 5  # mid overrides base
    assert cfg.logging.wandb.tags == ["c"]  # lists replace, not append
    assert cfg.stages.operator.epochs == Config().stages.operator.epochs  # defaults fill the rest


def test_set_overrides_are_yaml_typed(tmp_path):
    f = write(tmp_path, "c.yaml", "training: {batch_size: 8}\n")
    cfg = load_config(
        f,
        [
            "stages.operator.optimizer.lr=2e-4",
            "scaling.num_workers=[1, 2]",
            "logging.wandb.tags=[x]",
            "eval.horizon=null",
        ],
    ).cfg
    assert cfg.stages.operator.optimizer.lr == pytest.approx(2e-4)
    assert cfg.scaling.num_workers == (1, 2)
    assert cfg.logging.wandb.tags == ["x"] and cfg.eval.horizon is None


def test_digest_follows_what_is_computed_not_how_it_is_watched(tmp_path):
    f = write(tmp_path, "c.yaml", "")
    base = digest(load_config(f).cfg)
    assert digest(load_config(f, ["logging.wandb.project=other"]).cfg) == base
    assert digest(load_config(f, ["ray.dashboard=true"]).cfg) == base  # watching the run, not running it
    assert digest(load_config(f, ["training.seed=1"]).cfg) != base


@pytest.mark.parametrize(
    "text, overrides, expect",
    [
        (
            "stages:\n  operator:\n    optimzer: {lr: 1}\n",
            [],
            ["c.yaml", "unknown key 'stages.operator.optimzer'", "did you mean 'optimizer'"],
        ),
        ("training: {batch_size: sixty}\n", [], ["c.yaml", "training.batch_size"]),
        ("stages: {operator: {optimizer: {lr: -1e-3}}}\n", [], ["c.yaml", "stages.operator.optimizer.lr", "> 0"]),
        ("", ["scaling.num_workers=0"], ["--set", "scaling.num_workers", ">= 1"]),
        ("", ["scaling.num_workers=[3, 1]"], ["--set", "scaling.num_workers", "min <= max"]),
        ("model: {operator: {hidden: 100, heads: 8}}\n", [], ["c.yaml", "model.operator", "not divisible by heads"]),
        ("training: {batch_size: 10}\nscaling: {num_workers: 4}\n", [], ["training.batch_size", "world size 4"]),
        ("", ["training.amp=fp8"], ["--set", "training.amp", "fp8"]),
        ("", ["stages"], ["--set 'stages'", "dotted.key=value"]),
        ("", ["a.b=[1"], ["--set a.b", "not valid YAML"]),
        ("include: nothere.yaml\n", [], ["c.yaml", "include", "nothere.yaml"]),
        ("training:\n  batch_size: 3\n   bad: [\n", [], ["c.yaml:3", "YAML syntax error"]),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, overrides, expect):
    f = write(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(f, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    for part in expect:
        assert part in msg, msg


def test_include_cycle_is_named(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match=r"include cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # An address where no Ray listens: if the job tried to use Ray, it would fail differently.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "case", ["missing_config", "missing_data", "bad_key", "bad_set", "syntax", "patch", "stage_dependency"]
)
def test_cli_exits_2_with_one_line_and_no_ray(tmp_path, case):
    good = "data: {path: %s}\n" % (tmp_path / "nope.h5")
    files = {
        "missing_config": (None, []),
        "missing_data": (good, []),
        "bad_key": ("trainig: {seed: 1}\n", []),
        "bad_set": ("", ["training.seed"]),
        "syntax": ("a: [\n", []),
        "patch": (f"include: {ROOT}/configs/smoke.yaml\nmodel: {{encoder: {{patch_size: 3}}}}\n", []),
        "stage_dependency": (
            f"include: {ROOT}/configs/smoke.yaml\nstages: {{diffusion_residual: {{epochs: 0}}}}\n",
            [],
        ),
    }
    text, sets = files[case]
    cfg = tmp_path / "c.yaml"
    if text is not None:
        cfg.write_text(text)
    args = ["--config", str(cfg), "--storage", str(tmp_path / "runs")]
    for s in sets:
        args += ["--set", s]
    r = run_cli(args, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    expect = {
        "missing_config": "config file not found",
        "missing_data": "data.path: file not found",
        "bad_key": "did you mean 'training'",
        "bad_set": "--set 'training.seed'",
        "syntax": "c.yaml:2: YAML syntax error",
        "patch": "model.encoder.patch_size=3",
        "stage_dependency": "stages.consistency_distill needs",
    }[case]
    assert expect in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_help_works():
    r = subprocess.run(
        [sys.executable, "-m", "ray_jobs.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert r.returncode == 0 and "--config" in r.stdout and "--storage" in r.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_passes_preflight(name, monkeypatch):
    """A recipe in configs/ (make run's among them) is a promise: it validates, and one whose data
    it generates itself passes every check a run makes before Ray starts, on this machine."""
    from ups.preflight import preflight

    monkeypatch.chdir(ROOT)  # data paths are relative to the repository, as `make run` uses them
    loaded = load_config(ROOT / "configs" / name)
    if loaded.cfg.data.generate is not None:
        preflight(loaded, ray=True)
