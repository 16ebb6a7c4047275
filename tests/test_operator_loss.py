"""The operator's step loss: `stages.operator.loss` picks the latent MSE (default) or the relative L2
per sample that nRMSE scores."""

import torch

from ups.stages.base import relative_l2
from ups.stages.operator import OperatorObjective, OperatorStageConfig


class Shift(torch.nn.Module):
    """z -> z + b: an operator whose error is the same offset at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, z, dt, task):
        return z + self.b


def batch(scale: torch.Tensor) -> dict[str, torch.Tensor]:
    base = torch.linspace(1.0, 2.0, 8).reshape(1, 1, 4, 2)
    seq = (base * scale.reshape(-1, 1, 1, 1)).expand(-1, 4, -1, -1).contiguous()  # a fixed point
    return {"z": seq, "dt": torch.ones(len(scale)), "task": torch.zeros(len(scale), dtype=torch.long)}


def test_relative_l2_weighs_every_sample_alike_and_mse_lets_the_largest_decide():
    small, large = batch(torch.tensor([1.0])), batch(torch.tensor([100.0]))
    rel = OperatorObjective(Shift(), 1.0, "relative_l2")
    mse = OperatorObjective(Shift(), 1.0)
    # The same absolute error is 100x larger relative to the small state than to the large one.
    assert torch.isclose(rel(small)[0], 100 * rel(large)[0], rtol=1e-3)  # float32: 100 + 0.1
    assert torch.isclose(mse(small)[0], mse(large)[0], rtol=1e-3)
    both = batch(torch.tensor([1.0, 100.0]))
    assert torch.isclose(rel(both)[0], (rel(small)[0] + rel(large)[0]) / 2, rtol=1e-3)


def test_relative_l2_is_the_norm_ratio_per_leading_index():
    pred, target = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    per_frame = relative_l2(pred, target, start=2)
    assert per_frame.shape == (3, 5)
    expected = (pred - target)[1, 2].norm() / target[1, 2].norm()
    assert torch.isclose(per_frame[1, 2], expected)
    assert relative_l2(target, target).eq(0).all()


def test_the_stage_config_defaults_to_mse_and_rejects_other_losses():
    import pydantic
    import pytest

    assert OperatorStageConfig().loss == "mse"
    assert OperatorStageConfig(loss="relative_l2").loss == "relative_l2"
    with pytest.raises(pydantic.ValidationError):
        OperatorStageConfig(loss="l1")
