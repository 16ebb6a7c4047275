"""The UPS stages. Importing this package registers them, in pipeline order: the order of the
imports below is the order the pipeline runs them (ups/stages/registry.py)."""

# isort: off
from ups.stages import autoencoder  # noqa: F401
from ups.stages import operator  # noqa: F401
from ups.stages import diffusion_residual  # noqa: F401
from ups.stages import consistency_distill  # noqa: F401
from ups.stages import steady_prior  # noqa: F401
from ups.stages import fno_baseline  # noqa: F401

# isort: on
from ups.stages import registry
from ups.stages.base import Stage

__all__ = ["Stage", "registry"]
