"""The five UPS stages, in pipeline order."""

from ups.stages.autoencoder import AutoencoderStage
from ups.stages.base import Stage
from ups.stages.consistency_distill import ConsistencyDistillStage
from ups.stages.diffusion_residual import DiffusionResidualStage
from ups.stages.operator import OperatorStage
from ups.stages.steady_prior import SteadyPriorStage

STAGES: dict[str, type[Stage]] = {
    s.name: s
    for s in (AutoencoderStage, OperatorStage, DiffusionResidualStage, ConsistencyDistillStage, SteadyPriorStage)
}

__all__ = ["STAGES", "Stage"]
