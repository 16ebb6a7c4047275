"""Elastic training on a simulated multi-node cluster: a node removed during an elastic run, and
the run completes with fewer workers (global batch fixed, per-worker batch adapts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_node_removed_mid_run_completes_with_fewer_workers(smoke_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "elastic_driver.py"), str(smoke_data), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("ELASTIC ")), None)
    assert line, (r.stdout + r.stderr)[-4000:]
    result = json.loads(line.removeprefix("ELASTIC "))
    assert result["error"] is None, result
    ae = result["stages"]["autoencoder"]
    assert ae["status"] == "completed" and ae["world_sizes"][-1] == 1, result
    # Ray's elastic group starts on what is schedulable when it starts; on a loaded 2-core box the
    # second node's slot is sometimes not yet in view and the group starts on one worker. Either way
    # the run must complete on the smaller group; when it did start on two, it must have restarted.
    if ae["world_sizes"][0] == 2:
        assert ae["restarts"] >= 1, result  # restarted from its checkpoint on the smaller group
    assert result["stages"]["operator"] == {"world_sizes": [1], "restarts": 0, "status": "completed"}
    assert all(w == 1 for stage, _, w in result["world_sizes"] if stage == "operator")
    assert result["eval_nRMSE"] is not None
