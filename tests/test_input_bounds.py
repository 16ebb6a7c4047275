"""The parts behind tests/test_bad_input.py's hostile cases, one at a time: redaction of signed URLs,
spill folder names and their clean-up per host, bounded YAML, RAY_ADDRESS, key files, and the
estimates preflight refuses sizes by (split sizes, model parameters)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from ups import config as C
from ups import preflight
from ups.data import pdebench, views
from ups.models import factory
from ups.ray_session import address_problem
from ups.storage import redact, redact_all
from ups.tracking import read_key_file
from ups.train.spill import SpillFolder, host_tag, spill_owner

# --- redaction: every credential-bearing query parameter -----------------------------------------


@pytest.mark.parametrize(
    "uri, shown",
    [
        (  # AWS SigV4 pre-signed URL
            "s3://b/k.h5?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101%2Fus-east-1"
            "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            "&X-Amz-Security-Token=FwoG&X-Amz-Signature=abc123",
            "s3://b/k.h5?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Date=20240101T000000Z"
            "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=***&X-Amz-Signature=***",
        ),
        (  # AWS SigV2 query authentication
            "s3://b/k.h5?AWSAccessKeyId=AKIA&Expires=1700000000&Signature=abc%2B",
            "s3://b/k.h5?AWSAccessKeyId=***&Expires=1700000000&Signature=***",
        ),
        (  # GCS V4 signed URL
            "gs://b/k.h5?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=0a1b",
            "gs://b/k.h5?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=***&X-Goog-Signature=***",
        ),
        (  # Azure SAS: only `sig` is the secret
            "abfss://fs@acct.dfs.core.windows.net/k?sv=2022-11-02&se=2025-01-01&sp=r&sig=AbC%3D",
            "abfss://***@acct.dfs.core.windows.net/k?sv=2022-11-02&se=2025-01-01&sp=r&sig=***",
        ),
        ("s3://b/k?X%2DAmz%2DSignature=abc", "s3://b/k?X%2DAmz%2DSignature=***"),  # an escaped name
        ("s3://b/k?x-amz-signature=abc", "s3://b/k?x-amz-signature=***"),  # any case
        ("s3://b/k?region=eu&scheme=http&sig_count=2", "s3://b/k?region=eu&scheme=http&sig_count=2"),
    ],
)
def test_redact_covers_signed_urls(uri, shown):
    assert redact(uri) == shown


def test_redact_all_reaches_nested_records():
    rec = {"runs": [{"uri": "gs://b/r?X-Goog-Signature=S3cret"}], "n": 1}
    assert "S3cret" not in str(redact_all(rec)) and redact_all(rec)["n"] == 1


def test_a_config_error_never_shows_a_signature(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {path: 's3://b/x.h5?X-Amz-Signature=S3cret&X-Amz-Credential=AKIA'}\n")
    with pytest.raises(C.ConfigError) as e:
        C.load_config(cfg)
    assert "S3cret" not in str(e.value) and "AKIA" not in str(e.value) and "data.path" in str(e.value)


# --- spill folders: named by host and pid, cleaned only on their own host -------------------------


def test_spill_folder_names_carry_host_and_pid(tmp_path):
    folder = SpillFolder(str(tmp_path))
    assert spill_owner(os.path.basename(folder.path)) == (host_tag(), os.getpid())
    folder.close()


@pytest.mark.parametrize(
    "name, owner",
    [
        ("ups-shard-node-a.example-123-ab_9xyz", ("node-a.example", 123)),
        ("ups-shard-ip-10-0-0-1-77-zz", ("ip-10-0-0-1", 77)),
        ("ups-shard-123-abcdefgh", None),  # the old name: no host, so never taken for this host's
        ("ups-shard-host-notapid-abc", None),
        ("other-host-1-abc", None),
    ],
)
def test_spill_owner_parses_names(name, owner):
    assert spill_owner(name) == owner


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_orphans_of_this_host_only_are_removed(tmp_path):
    dead, me = _dead_pid(), host_tag()
    mine_dead = tmp_path / f"ups-shard-{me}-{dead}-aaaaaaaa"
    mine_live = tmp_path / f"ups-shard-{me}-{os.getpid()}-bbbbbbbb"
    other_dead = tmp_path / f"ups-shard-{me}x-{dead}-cccccccc"  # another node on a shared spill_dir
    legacy = tmp_path / f"ups-shard-{dead}-dddddddd"
    huge_pid = tmp_path / f"ups-shard-{me}-{10**30}-eeeeeeee"
    for d in (mine_dead, mine_live, other_dead, legacy, huge_pid):
        d.mkdir()
    new = SpillFolder(str(tmp_path))
    assert not mine_dead.exists()
    assert mine_live.exists() and other_dead.exists() and legacy.exists() and huge_pid.exists()
    new.close()


# --- YAML: bounded, and anchors within the bounds still work --------------------------------------


def test_yaml_anchors_within_bounds_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stages:\n  autoencoder: {optimizer: &o {lr: 0.002}}\n  operator: {optimizer: *o}\n")
    cfg = C.load_config(p).cfg
    assert cfg.stages.operator.optimizer.lr == cfg.stages.autoencoder.optimizer.lr == 0.002


@pytest.mark.parametrize(
    "text, word",
    [
        ("x: " + "[" * (C.MAX_DEPTH + 1) + "]" * (C.MAX_DEPTH + 1), "nested deeper"),
        ("a: &a [" + "1, " * 200 + "]\nb: &b [" + "*a, " * 60 + "]\n", "values once"),  # 12k values
        ("a: &a [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]\nb: [[[[[[[[[[[[[[*a]]]]]]]]]]]]]]\n", "nested deeper"),
        ("a: &a {b: *a}\n", "contains it"),
    ],
)
def test_yaml_beyond_bounds_is_refused_by_its_size_not_its_expansion(text, word):
    with pytest.raises(Exception) as e:
        C.parse_yaml_value(text)
    assert isinstance(e.value, C.YamlTooLarge) and word in str(e.value)


# --- RAY_ADDRESS and key files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, ok",
    [
        ("auto", True),
        ("local", True),
        ("127.0.0.1:6379", True),
        ("head.cluster.local:6379", True),
        ("[::1]:6379", True),
        ("ray://head:10001", True),
        ("ray://head", True),
        ("http://127.0.0.1:8265", False),
        ("headnode", False),
        ("head:0", False),
        ("head:65536", False),
        ("head:" + "9" * 5000, False),
        ("a b:1", False),
        ("ray://", False),
        ("nosuchmodule_xyz://h:1", False),
    ],
)
def test_ray_address(address, ok):
    assert (address_problem(address) is None) == ok


def test_key_file_is_read_bounded_and_never_from_a_fifo(tmp_path):
    key = tmp_path / "key"
    key.write_text("  abc123\n")
    assert read_key_file(str(key)) == "abc123"
    key.write_bytes(b"x" * 10_000)
    with pytest.raises(ValueError, match="too large"):
        read_key_file(str(key))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_key_file(str(fifo))
        except ValueError as e:
            result.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=30)  # a blocking open would hang here; the check is that it returned at all
    assert not t.is_alive() and result and "regular file" in str(result[0])


# --- the estimates preflight refuses sizes by -----------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 9, 10, 11, 24, 99, 1000, 12345])
@pytest.mark.parametrize("test, val", [(0.1, 0.1), (0.0, 0.2), (0.25, 0.0), (0.5, 0.5)])
def test_split_sizes_match_split_indices(n, test, val):
    idx = views.split_indices(n, test, val)
    assert preflight.split_sizes(n, test, val) == {k: len(v) for k, v in idx.items()}


def _floats(module: torch.nn.Module) -> int:
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in module.parameters())


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.operator.hidden=256", "model.operator.depth=6"],
        ["model.encoder.arch=conv", "model.decoder.arch=conv", "model.operator.arch=spectral", "latent.tokens=8"],
        ["model.encoder.arch=conv", "model.operator.arch=spectral", "model.operator.positions=3", "latent.tokens=8"],
        ["stages.diffusion_residual.epochs=1", "model.denoiser.hidden=128"],
        ["stages.fno_baseline.epochs=1"],
    ],
)
def test_parameter_estimate_is_within_a_small_factor_of_the_built_networks(tmp_path, overrides):
    u = np.random.default_rng(0).standard_normal((24, 12, 32)).astype(np.float32)
    path = tmp_path / "d.h5"
    pdebench.write(path, u, {"x": (np.arange(32) + 0.5) / 32, "t": np.linspace(0, 1, 13)})
    tiny = os.path.join(os.path.dirname(__file__), "configs", "tiny.yaml")
    base = [f"data.path={path}", "data.max_samples=null", "data.initial_step=4", "training.batch_size=8"]
    cfg = C.load_config(tiny, base + overrides).cfg
    meta = views.DataMeta.from_tasks(views.load_tasks(cfg.data), cfg.data.initial_step)
    estimate = preflight.estimate_parameters(cfg, dims=1, channels=1)
    assert {"encoder", "decoder", "operator"} <= set(estimate)
    for role, n in estimate.items():
        built = _floats(factory.build(role, cfg.model, meta, cfg.latent))
        assert built / 3 <= n <= built * 3, (role, n, built)
