"""Networks by role and architecture: `model.<role>.arch` in the config picks the class.

A new architecture is a new class plus one `@register("operator", "my_arch")` builder next to it;
nothing else changes. Builders take the whole config and the data's metadata, so every network
is built the same way in stages, evaluation, the latent cache and benchmarks.

Roles: encoder (fields -> latent tokens), decoder (tokens -> fields at any point), operator
(one latent time step), denoiser (the residual corrector and its consistency student), steady
(the steady prior).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from ups.config import Config
    from ups.data.views import DataMeta

ROLES = ("encoder", "decoder", "operator", "denoiser", "steady", "baseline")
Builder = Callable[..., nn.Module]
TokenRule = Callable[["Config", tuple[int, ...]], int]
_BUILDERS: dict[tuple[str, str], Builder] = {}
_TOKENS: dict[str, TokenRule] = {}  # encoders whose token count the grid fixes (anchored latents)
_NEEDS_ANCHORED: set[tuple[str, str]] = set()  # networks that read tokens as a grid


def register(
    role: str, arch: str, *, tokens: TokenRule | None = None, needs_anchored: bool = False
) -> Callable[[Builder], Builder]:
    """Register `builder(cfg, meta, **options) -> nn.Module` as architecture `arch` for `role`.

    `tokens` (encoders): the token count this encoder produces on a grid, which `latent.tokens`
    must then equal. `needs_anchored` (other roles): the network reshapes tokens into the latent
    grid, so it only works behind an encoder registered with `tokens`.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r} (roles: {', '.join(ROLES)})")

    def add(builder: Builder) -> Builder:
        if (role, arch) in _BUILDERS:
            raise ValueError(f"architecture {arch!r} is already registered for {role}")
        _BUILDERS[(role, arch)] = builder
        if tokens is not None:
            _TOKENS[arch] = tokens
        if needs_anchored:
            _NEEDS_ANCHORED.add((role, arch))
        return builder

    return add


def shape_errors(cfg: Config, spatial_shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """(key, message) for every network that cannot work with this latent on this grid."""
    _load_builtin()
    errors = []
    enc = cfg.model.encoder.arch
    rule = _TOKENS.get(enc)
    if rule is not None and rule(cfg, spatial_shape) != cfg.latent.tokens:
        p = cfg.model.encoder.patch_size
        errors.append(
            (
                "latent.tokens",
                f"latent.tokens={cfg.latent.tokens}, but model.encoder.arch={enc} makes one token per patch: "
                f"{rule(cfg, spatial_shape)} on the grid {spatial_shape} with patch_size={p}",
            )
        )
    for role in ROLES:
        arch = getattr(cfg.model, role).arch
        if (role, arch) in _NEEDS_ANCHORED and rule is None:
            errors.append(
                (
                    f"model.{role}.arch",
                    f"model.{role}.arch={arch} reads the latent as a grid; it needs an anchored encoder "
                    f"(model.encoder.arch: {' or '.join(sorted(_TOKENS))}), not {enc}",
                )
            )
    return errors


def archs(role: str) -> list[str]:
    """The architectures registered for a role (what `model.<role>.arch` may name)."""
    _load_builtin()
    return sorted(a for r, a in _BUILDERS if r == role)


def build(role: str, cfg: Config, meta: DataMeta, **options: Any) -> nn.Module:
    """A freshly initialised network for `role`, of the architecture the config names."""
    _load_builtin()
    arch = getattr(cfg.model, role).arch
    try:
        builder = _BUILDERS[(role, arch)]
    except KeyError:
        raise ValueError(f"model.{role}.arch={arch!r} is not registered (known: {', '.join(archs(role))})") from None
    return builder(cfg, meta, **options)


def _load_builtin() -> None:
    # The built-in networks register on import; importing them here keeps the factory usable
    # from modules that the model modules themselves import.
    from ups.models import codec, fno, grid, latent  # noqa: F401
