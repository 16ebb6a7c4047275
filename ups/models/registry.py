"""The table of networks by role and architecture, which the model modules fill as they load.

An architecture is a network, its own config class and a builder, all in one module:
`@register(role, arch, config=MyArchConfig)` on the builder. The config class (a subclass of
`ups.schema.ArchConfig` whose `arch` is `Literal[arch]`) holds every key that network reads and
nothing else; ups/config.py makes `model.<role>` the union of the role's registered classes, told
apart by `arch`, so a new architecture's keys are validated, defaulted and digested like any other.
The builder receives only what its network needs: that section, the data's metadata, the latent
space it works in (`LatentSpace`) and any options its caller passes (a consistency student's
sigma_min). It never sees the rest of the config, so a network cannot come to depend on another
component's settings.

This module imports only the schema's base class: model modules import it to register, and
`ups.models.factory` (which imports the built-in model modules) looks builders up in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

from torch import nn

from ups.schema import ArchConfig

ROLES = ("encoder", "decoder", "operator", "denoiser", "steady", "baseline")
# The architecture a role gets when its section names none.
DEFAULT_ARCH = {
    "encoder": "patch_attention",
    "decoder": "cross_attention",
    "operator": "transformer",
    "denoiser": "transformer",
    "steady": "transformer",
    "baseline": "fno",
}
Builder = Callable[..., nn.Module]

_BUILDERS: dict[tuple[str, str], Builder] = {}
_CONFIGS: dict[tuple[str, str], type[ArchConfig]] = {}
_ON_CHANGE: list[Callable[[], None]] = []  # the config schema, rebuilt when an architecture arrives
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
    role: str,
    arch: str,
    *,
    config: type[ArchConfig],
    anchored: bool = False,
    needs_anchored: bool = False,
    channels_as_dim: bool = False,
) -> Callable[[Builder], Builder]:
    """Register `builder(section, meta, latent, **options) -> nn.Module` as architecture `arch` for
    `role`, configured by `config` (its `model.<role>` section).

    `anchored` (encoders): one token per patch of the section's `patch_size` cells, so the grid
    fixes the token count, which `latent.tokens` must then equal. `needs_anchored` (other roles):
    the network reshapes tokens into the latent grid, so it only works behind an anchored encoder.
    `channels_as_dim` (codecs): a token holds the field's channels as they are (a fixed codec), so
    `latent.dim` must equal the number of channels.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r} (roles: {', '.join(ROLES)})")
    named = get_args(config.model_fields["arch"].annotation)
    if named != (arch,) or config.model_fields["arch"].default != arch:
        raise ValueError(f"{config.__name__}.arch must be `Literal[{arch!r}] = {arch!r}` to configure {arch!r}")
    if anchored and "patch_size" not in config.model_fields:
        raise ValueError(f"{config.__name__}: an anchored encoder's config needs a patch_size")

    def add(builder: Builder) -> Builder:
        if (role, arch) in _BUILDERS:
            raise ValueError(f"architecture {arch!r} is already registered for {role}")
        _BUILDERS[(role, arch)] = builder
        _CONFIGS[(role, arch)] = config
        if anchored:
            ANCHORED.add(arch)
        if needs_anchored:
            NEEDS_ANCHORED.add((role, arch))
        if channels_as_dim:
            CHANNELS_AS_DIM.add((role, arch))
        _changed()
        return builder

    return add


def unregister(role: str, arch: str) -> None:
    """Remove an architecture (tests that register a toy one clean up after themselves)."""
    del _BUILDERS[(role, arch)], _CONFIGS[(role, arch)]
    if role == "encoder":
        ANCHORED.discard(arch)
    NEEDS_ANCHORED.discard((role, arch))
    CHANNELS_AS_DIM.discard((role, arch))
    _changed()


def on_change(callback: Callable[[], None]) -> None:
    _ON_CHANGE.append(callback)


def _changed() -> None:
    for callback in _ON_CHANGE:
        callback()


def archs(role: str) -> list[str]:
    """The architectures registered for a role."""
    return sorted(a for r, a in _BUILDERS if r == role)


def configs(role: str) -> dict[str, type[ArchConfig]]:
    """Each registered architecture of `role` and its config class."""
    return {a: c for (r, a), c in sorted(_CONFIGS.items()) if r == role}


def builder(role: str, arch: str) -> Builder:
    try:
        return _BUILDERS[(role, arch)]
    except KeyError:
        raise ValueError(f"model.{role}.arch={arch!r} is not registered (known: {', '.join(archs(role))})") from None
