"""The Ray Data latent cache: built from the encoder, reused when digests match, rebuilt when not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ups.config import Config
from ups.data import views
from ups.latent_cache import build_or_reuse
from ups.models.codec import GridEncoder
from ups.storage import Storage
from ups.train.shard import collect
from ups.train.state import tensors_sha256, to_bytes


@pytest.mark.ray
def test_cache_reused_and_invalidated(ray_session, smoke_data, tmp_path):
    cfg = Config.model_validate(
        {
            "data": {"path": str(smoke_data), "max_samples": 24},
            "latent": {"tokens": 4, "dim": 8},
            "model": {"encoder": {"hidden": 16, "heads": 2}},
        }
    )
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, 4)
    run = Storage(str(tmp_path / "run"))

    def export(seed: int) -> tuple[str, str, GridEncoder]:
        torch.manual_seed(seed)
        enc = GridEncoder(torch.as_tensor(meta.grid), 1, 4, 8, cfg.model.encoder)
        tensors = {"encoder": enc.state_dict(), "decoder": {}}
        run.write_bytes(to_bytes({"tensors": tensors}), f"enc{seed}.pt")
        return run.uri_of(f"enc{seed}.pt"), tensors_sha256(tensors), enc.eval()

    uri, sha, enc = export(0)
    data_sha = views.data_digest(tasks)
    cache, reused = build_or_reuse(run, tasks, meta, cfg, uri, sha, data_sha)
    assert not reused and cache.manifest["rows"] == {s: len(tasks[0].splits[s]) for s in views.SPLITS}
    val = collect(cache.dataset("val").iterator())
    with torch.no_grad():
        expect = torch.stack([enc(torch.as_tensor(tasks[0].u[i])) for i in val.idx.tolist()])
    assert val.z.shape == (len(tasks[0].splits["val"]), meta.frames, 4, 8)
    torch.testing.assert_close(val.z, expect)
    np.testing.assert_array_equal(val.u.numpy(), tasks[0].u[val.idx.numpy()])
    built = cache.manifest["build_time_s"]

    again, reused = build_or_reuse(run, tasks, meta, cfg, uri, sha, data_sha)
    assert reused and again.manifest["build_time_s"] == built

    uri1, sha1, enc1 = export(1)  # a retrained encoder
    rebuilt, reused = build_or_reuse(run, tasks, meta, cfg, uri1, sha1, data_sha)
    assert not reused and rebuilt.manifest["encoder_sha256"] == sha1
    z1 = collect(rebuilt.dataset("val").iterator()).z
    assert not torch.allclose(z1, val.z)

    _, reused = build_or_reuse(run, tasks, meta, cfg, uri1, sha1, "other-data")
    assert not reused
    assert sorted(d for d in run.listdir() if d.startswith("latent_cache")) == ["latent_cache"]  # no temp left


def test_cache_without_ray_matches_and_is_verified_against_its_files(smoke_data, tmp_path):
    """The in-process build (`--no-ray`) writes the same rows; a reused cache whose file was
    altered is rebuilt, not trusted for its recorded digests."""
    tree = {"data": {"path": str(smoke_data), "max_samples": 24}, "latent": {"tokens": 4, "dim": 8},
            "model": {"encoder": {"hidden": 16, "heads": 2}}}  # fmt: skip
    cfg = Config.model_validate(tree)
    tasks = views.load_tasks(cfg.data)
    meta = views.DataMeta.from_tasks(tasks, 4)
    run = Storage(str(tmp_path / "run"))
    torch.manual_seed(0)
    enc = GridEncoder(torch.as_tensor(meta.grid), 1, 4, 8, cfg.model.encoder).eval()
    tensors = {"encoder": enc.state_dict(), "decoder": {}}
    run.write_bytes(to_bytes({"tensors": tensors}), "enc.pt")
    args = (run, tasks, meta, cfg, run.uri_of("enc.pt"), tensors_sha256(tensors), views.data_digest(tasks))
    cache, reused = build_or_reuse(*args, use_ray=False)
    assert not reused
    val = cache.trajectories("val")
    with torch.no_grad():
        expect = torch.stack([enc(torch.as_tensor(tasks[0].u[i])) for i in val.idx.tolist()])
    torch.testing.assert_close(val.z, expect)
    assert cache.trajectories("train").u is None  # the train split carries latents only
    assert build_or_reuse(*args, use_ray=False)[1] is True

    part = tmp_path / "run" / "latent_cache" / cache.manifest["files"]["val"][0]
    part.write_bytes(part.read_bytes()[:-8] + b"tampered")
    said: list[str] = []
    rebuilt, reused = build_or_reuse(*args, use_ray=False, say=said.append)
    assert not reused and "does not match its sha256" in said[0]
    torch.testing.assert_close(rebuilt.trajectories("val").z, val.z)
