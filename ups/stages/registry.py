"""The one list of stages. Everything that used to be a hand-kept list derives from it: the
pipeline's order, the `stages.*` config schema (ups/config.py), which stages a later one reads,
which exports evaluation assembles, and each stage's seed (a function of its name).

A stage module defines a `Stage` subclass (name, config class, inputs, needs, val metric) and
decorates it with `@register`; the pipeline order is registration order, and a stage may only
need stages registered before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ups.stages.base import Stage

StageClass = TypeVar("StageClass", bound="type[Stage[Any, Any]]")

_STAGES: dict[str, type[Stage[Any, Any]]] = {}


def register(cls: StageClass) -> StageClass:
    """Add a stage at the end of the pipeline."""
    if cls.name in _STAGES:
        raise ValueError(f"stage {cls.name!r} is already registered")
    missing = [n for n in cls.needs if n not in _STAGES]
    if missing:
        raise ValueError(f"stage {cls.name!r} needs {missing}, which must be registered before it")
    _STAGES[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a stage (tests that register a toy stage clean up after themselves)."""
    dependents = [s.name for s in _STAGES.values() if name in s.needs]
    if dependents:
        raise ValueError(f"stage {name!r} is needed by {dependents}")
    del _STAGES[name]


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
