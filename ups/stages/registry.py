"""The one list of stages. Everything that used to be a hand-kept list derives from it: the
pipeline's order, the `stages.*` config schema (ups/config.py), which stages a later one reads,
which exports evaluation assembles, and each stage's seed (a function of its name).

A stage module defines a `Stage` subclass (name, config class, inputs, needs, val metric, the
roles its export provides to the surrogate: `provides`) and
decorates it with `@register`; the pipeline order is registration order, and a stage may only
need stages registered before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ups.stages.base import Role, Stage

StageClass = TypeVar("StageClass", bound="type[Stage[Any, Any]]")

_STAGES: dict[str, type[Stage[Any, Any]]] = {}
# Called after every register/unregister: ups/config.py re-derives the `stages.*` schema, so a stage
# registered after import (a plugin, a test's toy stage) has its config section like a built-in one.
# A callback, not an import: the config sits above the registry it is assembled from.
_ON_CHANGE: list[Callable[[], None]] = []


def on_change(callback: Callable[[], None]) -> None:
    _ON_CHANGE.append(callback)


def _changed() -> None:
    for callback in _ON_CHANGE:
        callback()


def register(cls: StageClass) -> StageClass:
    """Add a stage at the end of the pipeline."""
    if cls.name in _STAGES:
        raise ValueError(f"stage {cls.name!r} is already registered")
    missing = [n for n in cls.needs if n not in _STAGES]
    if missing:
        raise ValueError(f"stage {cls.name!r} needs {missing}, which must be registered before it")
    unexported = [key for key in cls.provides.values() if key not in cls.export_keys]
    if unexported:
        raise ValueError(f"stage {cls.name!r} provides roles from {unexported}, which are not in its export_keys")
    _STAGES[cls.name] = cls
    _changed()
    return cls


def unregister(name: str) -> None:
    """Remove a stage (tests that register a toy stage clean up after themselves)."""
    dependents = [s.name for s in _STAGES.values() if name in s.needs]
    if dependents:
        raise ValueError(f"stage {name!r} is needed by {dependents}")
    del _STAGES[name]
    _changed()


def stages() -> dict[str, type[Stage[Any, Any]]]:
    """Name -> stage class, in pipeline order."""
    return dict(_STAGES)


def names() -> tuple[str, ...]:
    return tuple(_STAGES)


def get(name: str) -> type[Stage[Any, Any]]:
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"no stage named {name!r} (registered: {', '.join(_STAGES)})") from None


def providers(role: Role) -> tuple[str, ...]:
    """The stages whose export provides `role` to the surrogate, in pipeline order."""
    return tuple(name for name, cls in _STAGES.items() if role in cls.provides)


def builders(network: str) -> tuple[str, ...]:
    """The stages that hold the `model.<network>` network in memory while they train (Stage.builds)."""
    return tuple(name for name, cls in _STAGES.items() if network in cls.builds)


def provider(role: Role, among: Iterable[str] | None = None) -> str | None:
    """The stage that provides `role`: the latest-registered provider, restricted to `among` (the
    stages a run trained, or its active ones) when given; None when no such stage provides it."""
    pool = None if among is None else set(among)
    found = [name for name in providers(role) if pool is None or name in pool]
    return found[-1] if found else None


def surrogate_stages(among: Iterable[str] | None = None) -> tuple[str, ...]:
    """The stages that provide what every surrogate needs (encoder, decoder, operator), in pipeline
    order, once each; a role no stage provides is left out (callers name what is missing)."""
    from ups.stages.base import SURROGATE_ROLES

    out: list[str] = []
    for role in SURROGATE_ROLES:
        stage = provider(role, among)
        if stage is not None and stage not in out:
            out.append(stage)
    return tuple(sorted(out, key=list(_STAGES).index))


def weights(role: Role, exports: Any) -> Any:
    """The weights that provide `role` among a run's exports (stage -> export dict), or KeyError
    naming the role when no trained stage provides it."""
    stage = provider(role, exports)
    if stage is None:
        raise KeyError(f"no trained stage provides the {role} (providers: {', '.join(providers(role)) or 'none'})")
    return exports[stage][_STAGES[stage].provides[role]]
