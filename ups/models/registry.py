"""The table of networks by role and architecture, which the model modules fill as they load.

A builder is registered with `@register(role, arch)` next to its network and receives only what
that network needs: its own `model.<role>` section, the data's metadata, the latent space it works
in (`LatentSpace`) and any options its caller passes (a consistency student's sigma_min). It never
sees the rest of the config, so a network cannot come to depend on another component's settings.
This module imports nothing of the project: model modules import it to register, and
`ups.models.factory` (which imports the built-in model modules) looks builders up in it.

Not yet done (issue 28): each architecture owning its config class (a pydantic discriminated union
on `arch`). Today there is one `model.<role>` section per role in ups/schema.py, shared by every
architecture of that role, so an architecture with keys of its own adds them to that section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ROLES = ("encoder", "decoder", "operator", "denoiser", "steady", "baseline")
Builder = Callable[..., nn.Module]

_BUILDERS: dict[tuple[str, str], Builder] = {}
ANCHORED: set[str] = set()  # encoders that make one token per patch of the grid, in grid order
NEEDS_ANCHORED: set[tuple[str, str]] = set()  # networks that read tokens as a grid
CHANNELS_AS_DIM: set[tuple[str, str]] = set()  # codecs whose token holds one number per field channel


@dataclass(frozen=True)
class LatentSpace:
    """The latent every network of a stack shares: `tokens` tokens of `dim` numbers each.

    With an anchored encoder, token i is the patch of `patch_size` cells per axis at position i of
    the latent grid `grid` (row-major); otherwise both are None and the tokens have no place.
    """

    tokens: int
    dim: int
    patch_size: int | None = None
    grid: tuple[int, ...] | None = None


def register(
    role: str, arch: str, *, anchored: bool = False, needs_anchored: bool = False, channels_as_dim: bool = False
) -> Callable[[Builder], Builder]:
    """Register `builder(role_cfg, meta, latent, **options) -> nn.Module` as architecture `arch` for `role`.

    `anchored` (encoders): one token per patch of `model.encoder.patch_size` cells, so the grid fixes
    the token count, which `latent.tokens` must then equal. `needs_anchored` (other roles): the
    network reshapes tokens into the latent grid, so it only works behind an anchored encoder.
    `channels_as_dim` (codecs): a token holds the field's channels as they are (a fixed codec), so
    `latent.dim` must equal the number of channels.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r} (roles: {', '.join(ROLES)})")

    def add(builder: Builder) -> Builder:
        if (role, arch) in _BUILDERS:
            raise ValueError(f"architecture {arch!r} is already registered for {role}")
        _BUILDERS[(role, arch)] = builder
        if anchored:
            ANCHORED.add(arch)
        if needs_anchored:
            NEEDS_ANCHORED.add((role, arch))
        if channels_as_dim:
            CHANNELS_AS_DIM.add((role, arch))
        return builder

    return add


def archs(role: str) -> list[str]:
    """The architectures registered for a role."""
    return sorted(a for r, a in _BUILDERS if r == role)


def builder(role: str, arch: str) -> Builder:
    try:
        return _BUILDERS[(role, arch)]
    except KeyError:
        raise ValueError(f"model.{role}.arch={arch!r} is not registered (known: {', '.join(archs(role))})") from None
