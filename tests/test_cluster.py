"""Cluster and job submission: cluster.yaml against Ray's own schema (offline), and the tiny
pipeline submitted with `ray job submit`'s client to a real local head, writing to a `file://`
storage URI (the same command, interrupted and run locally, must end with its weights: see
test_fault_tolerance)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def validate_cluster(cfg: dict) -> dict:
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    prepared = prepare_config(copy.deepcopy(cfg))  # merges provider defaults; no cloud calls
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid_for_the_autoscaler():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = validate_cluster(cfg)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"]  # a CPU head
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t.get("min_workers", 0) == 0 and t["max_workers"] > 0 for t in gpu)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu)
    assert any("InstanceMarketOptions" not in t["node_config"] for t in gpu)  # on-demand fallback
    starts = [c for c in cfg["head_start_ray_commands"] if "ray start" in c and "--head" in c]
    assert starts and all("--dashboard-host=127.0.0.1" in c for c in starts)  # the dashboard only via a tunnel
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])


@pytest.mark.parametrize(
    "breakage, error, match",
    [
        ("typo", jsonschema.ValidationError, "'setup_comands' was unexpected"),  # Ray's JSON schema
        ("fraction", jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        ("head_type", ValueError, "`head_node_type` must be one of `available_node_types`"),  # Ray's own checks
    ],
)
def test_schema_check_catches_mistakes(breakage, error, match):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    if breakage == "typo":
        cfg["setup_comands"] = cfg.pop("setup_commands")
    elif breakage == "fraction":
        cfg["available_node_types"]["gpu_spot"]["resources"]["CPU"] = 0.5
    else:
        cfg["head_node_type"] = "nope"
    with pytest.raises(error, match=re.escape(match)):
        validate_cluster(cfg)


@pytest.mark.ray
def test_job_submit_runs_the_pipeline_on_a_local_head(tiny_reference):
    """The session fixture submitted the tiny pipeline as a Ray job writing to a file:// URI; the
    fault-tolerance test runs the same command locally, interrupted, and must match its weights."""
    run, logs = tiny_reference.runs / "reference", tiny_reference.logs
    assert "== autoencoder:" in logs and "eval [val]" in logs
    summary = tiny_reference.summary
    assert summary["eval"]["nRMSE"] < summary["eval"]["persistence_nRMSE"]
    for stage in ("autoencoder", "operator"):
        rec = summary["stages"][stage]
        assert rec["status"] == "completed" and rec["world_size"] == 2 and len(rec["weights_sha256"]) == 64
        assert rec["checkpoint"].startswith(str(run / "ray"))  # Ray's storage is under the URI given
    assert (run / "latent_cache" / "manifest.json").exists() and (run / "metrics.jsonl").exists()
