"""The spatially anchored networks (ups/models/grid.py): what makes them anchored, checked.

Shift-equivariance is the point of the design (periodic Burgers is translation-symmetric), the
decoder must read the grid exactly and interpolate between nodes, the untrained operator must be
persistence, and a latent that does not match the grid must be refused by name.
"""

from __future__ import annotations

import pytest
import torch

from ups import config as C
from ups.models import factory
from ups.models.grid import ConvDecoder, ConvEncoder, SpectralTrunk, sample_periodic
from ups.models.latent import LatentOperator
from ups.schema import DecoderConfig, EncoderConfig, OperatorNetConfig


def grid1d(n: int) -> torch.Tensor:
    return ((torch.arange(n) + 0.5) / n)[:, None]


def grid2d(nx: int, ny: int) -> torch.Tensor:
    axes = [(torch.arange(nx) + 0.5) / nx, (torch.arange(ny) + 0.5) / ny]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def codec(shape: tuple[int, ...], channels: int = 1, dim: int = 8, p: int = 4) -> tuple[ConvEncoder, ConvDecoder]:
    torch.manual_seed(0)
    grid = grid1d(shape[0]) if len(shape) == 1 else grid2d(*shape)
    enc = ConvEncoder(shape, channels, dim, EncoderConfig(arch="conv", hidden=16, depth=1, patch_size=p))
    dec = ConvDecoder(grid, channels, dim, DecoderConfig(arch="conv", hidden=16, depth=1), p)
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
    cfg = OperatorNetConfig(arch="spectral", hidden=8, depth=2, modes=4)
    op = LatentOperator(8, 4, cfg, trunk=SpectralTrunk((8,), 4, 4, cfg.hidden, cfg.depth, cfg.modes))
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
    errors = factory.shape_errors(_cfg(**model), (32,))
    assert [k for k, _ in errors] == ([key] if key else [])
