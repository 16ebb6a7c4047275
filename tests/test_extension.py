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
from torch import nn

from ups.models.registry import register


class SkipOperator(nn.Module):
    """z + a learned scale times z: a toy operator, enough to show the new arch is the one built."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(nn.init.zeros_(nn.Linear(dim, 1).weight[:1, :1].clone()))

    def forward(self, z, dt, task):
        return z + self.scale * z


@register("operator", "skip_ext")
def _skip(cfg, meta, latent):
    return SkipOperator(latent.dim)
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
        models._BUILDERS.pop(("operator", "skip_ext"), None)
        sys.modules.pop("ext_arch", None)
        sys.modules.pop("ext_stage", None)


def test_a_new_architecture_validates_and_is_built_from_its_own_section(extension) -> None:
    arch, _ = extension
    assert "skip_ext" in factory.archs("operator")
    cfg = C.validate({"model": {"operator": {"arch": "skip_ext"}}})
    assert cfg.model.operator.arch == "skip_ext"
    net = factory.build("operator", cfg.model, _meta(), cfg.latent)
    assert isinstance(net, arch.SkipOperator)
    z = torch.randn(2, cfg.latent.tokens, cfg.latent.dim)
    assert torch.equal(net(z, None, None), z)  # a zero scale: the identity, as the toy defines it
    with pytest.raises(C.ConfigError, match="unknown architecture 'nope'"):
        C.validate({"model": {"operator": {"arch": "nope"}}})


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
