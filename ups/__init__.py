"""UPS on Ray: train latent neural PDE surrogates; `Surrogate` loads and rolls out a trained one.

`from ups import Surrogate` imports torch and the model code, not Ray; the name resolves on first
use so that `import ups.<module>` stays as light as the module itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ups.surrogate import Surrogate

__all__ = ["Surrogate"]


def __getattr__(name: str) -> Any:
    if name == "Surrogate":
        from ups.surrogate import Surrogate

        return Surrogate
    raise AttributeError(f"module 'ups' has no attribute {name!r}")
