"""A new architecture for a role, and a new stage providing a role, are each one new module plus one
import line: written here into tmp_path, imported, and picked up by the config schema, the model
factory, the stage registry's order and the role lookups that preflight, evaluation, `evaluate` and
the artifact assemble a surrogate from (ups/stages/registry.py `provider`, `surrogate_stages`,
`weights`). Fast tier: no Ray."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ups import config as C
from ups.data.views import DataMeta, Normalizer
from ups.models import factory
from ups.models import registry as models
from ups.stages import registry

ARCH_MODULE = '''
from typing import Literal

from torch import nn

from ups.models.registry import register
from ups.schema import ArchConfig, NetSize, PosFloat


class SkipConfig(ArchConfig):
    """`model.operator` with `arch: skip_ext`: one key of its own."""

    arch: Literal["skip_ext"] = "skip_ext"
    init_scale: PosFloat = 1.0

    def estimate_parameters(self, size: NetSize) -> int:
        return 1


class SkipOperator(nn.Module):
    """z + scale * z with a learned scale: a toy operator, enough to show the new arch is the one
    built, from its own section."""

    def __init__(self, init_scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(nn.init.constant_(nn.Linear(1, 1).weight.clone(), init_scale))

    def forward(self, z, dt, task):
        return z + self.scale * z


@register("operator", "skip_ext", config=SkipConfig)
def _skip(cfg: SkipConfig, meta, latent):
    return SkipOperator(cfg.init_scale)
'''

STAGE_MODULE = '''
from ups.schema import PosInt, StageConfig
from ups.stages.base import Stage
from ups.stages.registry import register


class MultiFrameConfig(StageConfig):
    frames_in: PosInt = 3  # this stage's own key, under stages.multiframe_ext


@register
class MultiFrameOperator(Stage):
    """A stage that provides the operator role (its export's "mf_operator" key)."""

    name = "multiframe_ext"
    config_cls = MultiFrameConfig
    builds = ("encoder", "operator")
    needs = ("autoencoder",)
    val_metric = "val_nRMSE"
    export_keys = ("mf_operator",)
    provides = {"operator": "mf_operator"}
'''


def _meta(cells: int = 32) -> DataMeta:
    norm = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    grid = ((np.arange(cells, dtype=np.float32) + 0.5) / cells)[:, None]
    return DataMeta(tasks=["t"], dts=[0.05], grid=grid, lengths=[1.0], normalizers=[norm], frames=6, initial_step=2)


@pytest.fixture
def extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The two new modules, each imported by one line, as a user's package would."""
    (tmp_path / "ext_arch.py").write_text(ARCH_MODULE)
    (tmp_path / "ext_stage.py").write_text(STAGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = importlib.import_module("ext_arch")  # the one import line of the architecture
    stage = importlib.import_module("ext_stage")  # the one import line of the stage
    try:
        yield arch, stage
    finally:
        registry.unregister("multiframe_ext")
        models.unregister("operator", "skip_ext")
        sys.modules.pop("ext_arch", None)
        sys.modules.pop("ext_stage", None)


def test_a_new_architecture_validates_and_is_built_from_its_own_section(extension) -> None:
    arch, _ = extension
    assert "skip_ext" in factory.archs("operator")
    cfg = C.validate({"model": {"operator": {"arch": "skip_ext", "init_scale": 0.5}}})
    assert isinstance(cfg.model.operator, arch.SkipConfig) and cfg.model.operator.init_scale == 0.5
    net = factory.build("operator", cfg.model, _meta(), cfg.latent)
    assert isinstance(net, arch.SkipOperator)
    z = torch.randn(2, cfg.latent.tokens, cfg.latent.dim)
    assert torch.allclose(net(z, None, None), 1.5 * z)  # built from its own key
    # Its key is its own: validated there, unknown to the other operators, and theirs unknown to it.
    with pytest.raises(C.ConfigError, match=r"model\.operator\.init_scale: must be > 0"):
        C.validate({"model": {"operator": {"arch": "skip_ext", "init_scale": 0}}})
    with pytest.raises(C.ConfigError, match=r"unknown key 'model\.operator\.init_scale'"):
        C.validate({"model": {"operator": {"arch": "transformer", "init_scale": 0.5}}})
    with pytest.raises(
        C.ConfigError, match=r"unknown key 'model\.operator\.heads' \(arch skip_ext takes: init_scale\)"
    ):
        C.validate({"model": {"operator": {"arch": "skip_ext", "heads": 2}}})
    with pytest.raises(C.ConfigError, match="unknown architecture 'nope'"):
        C.validate({"model": {"operator": {"arch": "nope"}}})
    # Preflight sizes it through its own estimate; a resolved config round-trips through a file.
    assert C.to_dict(cfg)["model"]["operator"] == {"arch": "skip_ext", "init_scale": 0.5}
    assert C.validate(C.to_dict(cfg), stored=True) == cfg


def test_switching_architecture_over_an_include_keeps_only_the_keys_the_new_one_has(tmp_path: Path) -> None:
    """A recipe that includes another and changes a role's `arch` does not inherit the keys of the
    architecture it replaced; a key set beside the new `arch` that it lacks is still refused."""
    (tmp_path / "base.yaml").write_text("model:\n  operator: {arch: transformer, hidden: 48, heads: 2, depth: 2}\n")
    (tmp_path / "over.yaml").write_text("include: base.yaml\nmodel:\n  operator: {arch: spectral, modes: 8}\n")
    op = C.load_config(tmp_path / "over.yaml").cfg.model.operator
    assert (op.arch, op.hidden, op.depth, op.modes) == ("spectral", 48, 2, 8)  # type: ignore[attr-defined]
    op = C.load_config(tmp_path / "base.yaml", ["model.operator.arch=spectral"]).cfg.model.operator
    assert (op.arch, op.hidden) == ("spectral", 48)  # type: ignore[attr-defined]
    (tmp_path / "bad.yaml").write_text("include: base.yaml\nmodel:\n  operator: {arch: spectral, heads: 4}\n")
    with pytest.raises(C.ConfigError, match=r"bad\.yaml: unknown key 'model\.operator\.heads'"):
        C.load_config(tmp_path / "bad.yaml")


def test_a_config_saved_before_architectures_owned_their_keys_still_loads() -> None:
    """Run folders written when every architecture of a role shared one section name keys their
    network never read (a spectral operator's `heads`); loaded as a stored config they are dropped,
    so such a run resumes. A user's file with the same key is refused."""
    old = {
        "model": {"operator": {"arch": "spectral", "hidden": 32, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "modes": 8}}
    }
    cfg = C.validate(old, stored=True)
    kept = {"arch": "spectral", "hidden": 32, "depth": 4, "modes": 8, "positions": 0}  # positions: a later default
    assert C.to_dict(cfg)["model"]["operator"] == kept
    with pytest.raises(C.ConfigError, match="unknown key 'model.operator.heads'"):
        C.validate(old)


def test_a_new_stage_is_ordered_and_found_by_role(extension) -> None:
    _, stage = extension
    assert registry.names()[-1] == "multiframe_ext"  # planned after the stages it may need
    # Its config section exists as soon as it is registered, with its own keys checked there.
    cfg = C.validate({"stages": {"multiframe_ext": {"epochs": 2, "frames_in": 4}}})
    assert C.stage_config(cfg, "multiframe_ext").frames_in == 4  # type: ignore[attr-defined]
    with pytest.raises(C.ConfigError, match="frames_in"):
        C.validate({"stages": {"multiframe_ext": {"frames_in": 0}}})
    assert "multiframe_ext" in registry.builders("operator")  # preflight sizes its networks
    assert registry.get("multiframe_ext") is stage.MultiFrameOperator
    assert registry.providers("operator") == ("operator", "multiframe_ext")
    # Preflight and `ray_jobs.evaluate` ask which stages provide what every surrogate needs.
    assert registry.surrogate_stages() == ("autoencoder", "multiframe_ext")
    assert registry.surrogate_stages(["autoencoder", "operator"]) == ("autoencoder", "operator")
    # Evaluation loads each role from the trained stage that provides it: here the new stage's export.
    weights = {"w": torch.ones(1)}
    exports = {"autoencoder": {"encoder": {}, "decoder": {}}, "multiframe_ext": {"mf_operator": weights}}
    assert registry.weights("operator", exports) is weights
    assert registry.weights("encoder", exports) == {}
    assert registry.provider("corrector", exports) is None
    with pytest.raises(KeyError, match="no trained stage provides the baseline"):
        registry.weights("baseline", exports)


def test_a_stage_may_only_provide_what_it_exports() -> None:
    from ups.stages.base import Stage

    class Broken(Stage):
        name = "broken_ext"
        val_metric = "val_nRMSE"
        export_keys = ("a",)
        provides = {"operator": "b"}

    with pytest.raises(ValueError, match="not in its export_keys"):
        registry.register(Broken)
    assert "broken_ext" not in registry.names()
