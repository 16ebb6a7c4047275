"""The spatially anchored networks (ups/models/grid.py): what makes them anchored, checked.

Shift-equivariance is the point of the design (periodic Burgers is translation-symmetric), the
decoder must read the grid exactly and interpolate between nodes, the untrained operator must be
persistence, and a latent that does not match the grid must be refused by name. The factory builds
every network from its own `model.<role>` section and the latent alone; a number that belongs to
another component (the consistency student's sigma_min) comes from the caller.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ups import config as C
from ups.config import ModelConfig
from ups.data.views import DataMeta, Normalizer
from ups.models import factory
from ups.models.grid import (
    ConvDecoder,
    ConvDecoderConfig,
    ConvEncoder,
    ConvEncoderConfig,
    SpectralOperatorConfig,
    SpectralTrunk,
    sample_periodic,
)
from ups.models.latent import LatentOperator
from ups.schema import LatentConfig


def grid1d(n: int) -> torch.Tensor:
    return ((torch.arange(n) + 0.5) / n)[:, None]


def grid2d(nx: int, ny: int) -> torch.Tensor:
    axes = [(torch.arange(nx) + 0.5) / nx, (torch.arange(ny) + 0.5) / ny]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def codec(shape: tuple[int, ...], channels: int = 1, dim: int = 8, p: int = 4) -> tuple[ConvEncoder, ConvDecoder]:
    torch.manual_seed(0)
    grid = grid1d(shape[0]) if len(shape) == 1 else grid2d(*shape)
    enc = ConvEncoder(shape, channels, dim, ConvEncoderConfig(hidden=16, depth=1, patch_size=p))
    dec = ConvDecoder(grid, channels, dim, ConvDecoderConfig(hidden=16, depth=1), p)
    return enc, dec


def test_encoder_is_shift_equivariant_by_whole_patches() -> None:
    enc, dec = codec((32,))
    u = torch.randn(2, 32, 1)
    z = enc(u)
    assert z.shape == (2, 8, 8)
    shifted = enc(torch.roll(u, 4, dims=1))  # one patch
    torch.testing.assert_close(shifted, torch.roll(z, 1, dims=1))
    torch.testing.assert_close(dec.field(shifted), torch.roll(dec.field(z), 4, dims=1))


def test_decoder_reads_grid_nodes_exactly_and_interpolates_between_them() -> None:
    enc, dec = codec((8, 12), channels=2)
    grid = grid2d(8, 12)
    z = enc(torch.randn(3, 8, 12, 2))
    field = dec.field(z)
    torch.testing.assert_close(dec(z, grid.reshape(1, -1, 2)), field.reshape(3, -1, 2))
    # halfway between x-nodes 7 and 0 (across the periodic boundary), on y-node 5
    mid = torch.tensor([[[(7.5 + 0.5) / 8 % 1.0, 5.5 / 12]]])
    torch.testing.assert_close(dec(z, mid)[:, 0], (field[:, 7, 5] + field[:, 0, 5]) / 2)


def test_sample_periodic_is_linear_in_1d() -> None:
    u = torch.arange(4.0).reshape(1, 4, 1)  # nodes at 1/8, 3/8, 5/8, 7/8
    pts = torch.tensor([[[1 / 8], [2 / 8], [7 / 8], [0.0]]])
    out = sample_periodic(u, pts, torch.tensor([1 / 8]))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 0.5, 3.0, 1.5]))


def test_untrained_spectral_operator_is_persistence_and_training_moves_it() -> None:
    torch.manual_seed(0)
    cfg = SpectralOperatorConfig(hidden=8, depth=2, modes=4)
    op = LatentOperator(cfg.hidden, lambda: SpectralTrunk((8,), 4, 4, cfg.hidden, cfg.depth, cfg.modes))
    z, dt = torch.randn(5, 8, 4), torch.full((5,), 0.05)
    torch.testing.assert_close(op(z, dt), z)
    target = torch.roll(z, 1, dims=1)
    opt = torch.optim.Adam(op.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        loss = (op(z, dt) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def _shifted(u: torch.Tensor, k: int) -> torch.Tensor:  # (B, 8 x 8 tokens, C) shifted by k cells along x
    return torch.roll(u.reshape(len(u), 8, 8, -1), k, dims=1).reshape(u.shape)


@pytest.mark.parametrize("positions", [0, 2])
def test_position_features_are_what_breaks_shift_equivariance(positions: int) -> None:
    """Without position features the trunk commutes with shifts of the latent grid (what a
    shift-invariant PDE needs); with them it does not, which a forcing that depends on x needs."""
    torch.manual_seed(0)
    trunk = SpectralTrunk((8, 8), 1, 1, hidden=8, depth=2, modes=3, positions=positions)
    for p in trunk.parameters():  # past the zero-initialised output layer and FiLM
        torch.nn.init.normal_(p, std=0.3)
    z, cond = torch.randn(2, 64, 1), torch.randn(2, 8)
    gap = (trunk(_shifted(z, 3), cond) - _shifted(trunk(z, cond), 3)).abs().max().item()
    assert (gap < 1e-5) == (positions == 0), gap
    assert trunk.pos_features.shape == (1, 2 * 2 * positions, 8, 8)
    assert "pos_features" not in trunk.state_dict()  # a function of the grid, not a weight


def test_position_features_let_the_operator_learn_a_forcing_fixed_in_space() -> None:
    """The FNO paper's Navier–Stokes forcing, 0.1 (sin 2π(x+y) + cos 2π(x+y)), adds the same field
    every step wherever the flow is: an equivariant operator cannot add it, one with positions can."""
    x = torch.arange(8) / 8
    phase = 2 * torch.pi * (x[:, None] + x[None, :])
    forcing = (torch.sin(phase) + torch.cos(phase)).reshape(1, 64, 1)
    losses = {}
    for positions in (0, 1):
        torch.manual_seed(0)
        op = LatentOperator(16, lambda: SpectralTrunk((8, 8), 1, 1, 16, 2, 4, positions))  # noqa: B023
        opt = torch.optim.Adam(op.parameters(), lr=1e-2)
        for _ in range(150):
            z = torch.randn(8, 64, 1)
            loss = (op(z, torch.ones(8)) - (z + forcing)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[positions] = loss.item()
    assert losses[1] < 0.1 * losses[0], losses


def _cfg(**model: dict) -> C.Config:
    return C.Config.model_validate({"latent": {"tokens": 8, "dim": 4}, "model": model})


@pytest.mark.parametrize(
    ("model", "tokens", "key"),
    [
        ({"encoder": {"arch": "conv", "patch_size": 4}}, 8, None),
        ({"encoder": {"arch": "conv", "patch_size": 2}}, 8, "latent.tokens"),
        ({"operator": {"arch": "spectral"}}, 8, "model.operator.arch"),
        ({"decoder": {"arch": "conv"}}, 8, "model.decoder.arch"),
        ({"denoiser": {"arch": "spectral"}}, 8, "model.denoiser.arch"),
    ],
)
def test_shape_errors_name_the_key(model: dict, tokens: int, key: str | None) -> None:
    cfg = _cfg(**model)
    errors = factory.shape_errors(cfg.model, cfg.latent, (32,))
    assert [k for k, _ in errors] == ([key] if key else [])


def _meta(cells: int = 32) -> DataMeta:
    norm = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    return DataMeta(tasks=["t"], dts=[0.05], grid=grid1d(cells).numpy(), lengths=[1.0], normalizers=[norm],
                    frames=6, initial_step=2)  # fmt: skip


@pytest.mark.parametrize("anchored", [False, True])
def test_factory_builds_every_role_from_the_model_and_latent_sections_alone(anchored: bool) -> None:
    """No builder reads beyond its own section (the config's other components are not even given)."""
    model = ModelConfig.model_validate(
        {"encoder": {"arch": "conv", "patch_size": 4}, "decoder": {"arch": "conv"}, "operator": {"arch": "spectral"},
         "denoiser": {"arch": "spectral", "modes": 4}} if anchored else {}
    )  # fmt: skip
    latent, meta = LatentConfig(tokens=8, dim=4), _meta()
    assert factory.shape_errors(model, latent, meta.spatial_shape) == []
    z = factory.build("encoder", model, meta, latent)(torch.randn(2, 32, 1))
    assert z.shape == (2, 8, 4)
    assert factory.build("decoder", model, meta, latent)(z, torch.rand(1, 5, 1)).shape == (2, 5, 1)
    assert factory.build("operator", model, meta, latent)(z, torch.full((2,), 0.05)).shape == z.shape
    assert factory.build("steady", model, meta, latent)(z).shape == z.shape
    assert factory.build("baseline", model, meta, latent)(torch.randn(2, 2, 32, 1)).shape == (2, 32, 1)


def test_consistency_student_takes_sigma_min_from_its_caller() -> None:
    """The student's boundary condition f(x, sigma_min) = x holds at the sigma_min its caller passes
    (the diffusion stage's), and a student without one is refused rather than given a default."""
    torch.manual_seed(0)
    model, latent, meta = ModelConfig(), LatentConfig(tokens=8, dim=4), _meta()
    x, cond = torch.randn(3, 8, 4), torch.randn(3, 8, 4)
    for sigma_min, other in ((0.002, 0.05), (0.05, 0.002)):
        student = factory.build("denoiser", model, meta, latent, consistency=True, sigma_min=sigma_min)
        for p in student.parameters():  # a trained student, not the zero-output one a build starts as
            torch.nn.init.normal_(p, std=0.1)
        with torch.no_grad():
            torch.testing.assert_close(student(x, torch.full((3,), sigma_min), cond), x)
            assert (student(x, torch.full((3,), other), cond) - x).abs().max() > 1e-3
    with pytest.raises(ValueError, match="sigma_min"):
        factory.build("denoiser", model, meta, latent, consistency=True)


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 4, 9)])
def test_mode_mixing_is_the_einsum_bit_for_bit(shape: tuple[int, ...]) -> None:
    """mix_modes is a faster layout of the spectral convolution's einsum, not new numerics: trained
    models and the README's digits stay as they were."""
    from ups.models.fno import mix_modes

    torch.manual_seed(0)
    f = torch.randn(*shape, dtype=torch.cfloat, requires_grad=True)
    w = torch.randn(shape[1], 4, *shape[2:], dtype=torch.cfloat, requires_grad=True)
    spec = "bixy,ioxy->boxy" if len(shape) == 4 else "bix,iox->box"
    ref, new = torch.einsum(spec, f, w), mix_modes(f, w)
    assert torch.equal(ref, new)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, (f, w), g), torch.autograd.grad(new, (f, w), g)):
        assert torch.equal(a, b)
