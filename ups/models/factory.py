"""Networks by role and architecture: `model.<role>.arch` in the config picks the class.

A new architecture is one module: its network, its config class and one
`@register("operator", "my_arch", config=MyArchConfig)` builder (ups/models/registry.py), imported
once; nothing else changes. Every network is built here, the same way in
stages, evaluation, the latent cache and benchmarks: `build(role, cfg.model, meta, cfg.latent)`.
The builder gets its own `model.<role>` section only; numbers that belong to another component
(a consistency student's sigma_min, which is the diffusion stage's) are passed by the caller.

Roles: encoder (fields -> latent tokens), decoder (tokens -> fields at any point), operator
(one latent time step), denoiser (the residual corrector and its consistency student), steady
(the steady prior), baseline (the FNO on the grid).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn

from ups.models import codec, fno, grid, spectral_codec  # noqa: F401  (the built-in networks register on import)
from ups.models import latent as _latent  # noqa: F401
from ups.models.registry import ANCHORED, CHANNELS_AS_DIM, NEEDS_ANCHORED, ROLES, LatentSpace, archs, builder, register

if TYPE_CHECKING:
    from ups.data.views import DataMeta
    from ups.schema import LatentConfig, ModelSection

__all__ = ["ROLES", "LatentSpace", "archs", "build", "latent_space", "register", "shape_errors"]


def latent_space(model: ModelSection, latent: LatentConfig, spatial_shape: tuple[int, ...]) -> LatentSpace:
    """The latent the encoder of `model` makes on this grid (`latent.tokens` x `latent.dim`, and the
    latent grid when the encoder is anchored)."""
    enc = model.encoder
    if enc.arch not in ANCHORED:
        return LatentSpace(latent.tokens, latent.dim)
    p: int = enc.patch_size  # type: ignore[attr-defined]  # registry: an anchored encoder has one
    return LatentSpace(latent.tokens, latent.dim, p, tuple(n // p for n in spatial_shape))


def shape_errors(
    model: ModelSection, latent: LatentConfig, spatial_shape: tuple[int, ...], channels: int | None = None
) -> list[tuple[str, str]]:
    """(key, message) for every network that cannot work with this latent on this grid (and, when
    given, this many field channels)."""
    errors = []
    enc = model.encoder.arch
    space = latent_space(model, latent, spatial_shape)
    if space.grid is not None and math.prod(space.grid) != latent.tokens:
        errors.append(
            (
                "latent.tokens",
                f"latent.tokens={latent.tokens}, but model.encoder.arch={enc} makes one token per patch: "
                f"{math.prod(space.grid)} on the grid {spatial_shape} with patch_size={space.patch_size}",
            )
        )
    for role in ROLES:
        arch = getattr(model, role).arch
        if (role, arch) in NEEDS_ANCHORED and space.grid is None:
            errors.append(
                (
                    f"model.{role}.arch",
                    f"model.{role}.arch={arch} reads the latent as a grid; it needs an anchored encoder "
                    f"(model.encoder.arch: {' or '.join(sorted(ANCHORED))}), not {enc}",
                )
            )
        if (role, arch) in CHANNELS_AS_DIM and channels is not None and latent.dim != channels:
            errors.append(
                (
                    "latent.dim",
                    f"latent.dim={latent.dim}, but model.{role}.arch={arch} keeps the field's channels as "
                    f"they are: latent.dim must be {channels}",
                )
            )
    return errors


def build(role: str, model: ModelSection, meta: DataMeta, latent: LatentConfig, **options: Any) -> nn.Module:
    """A freshly initialised network for `role`, of the architecture `model.<role>.arch` names.

    `options` go to the builder as they are (the denoiser's `consistency` and `sigma_min`)."""
    section = getattr(model, role)
    make = builder(role, section.arch)
    return make(section, meta, latent_space(model, latent, meta.spatial_shape), **options)
