"""The FlowLLM refiner: Riemannian flow matching on crystals as diffusers components.

Not imported by `hf_crystal` itself (it needs torch and diffusers): `from hf_crystal.refiner import ...`.
"""

from hf_crystal.refiner.batching import CrystalBatch
from hf_crystal.refiner.manifold import (
    angles_to_unconstrained,
    lattice_to_unconstrained,
    remove_mean,
    torus_displacement,
    unconstrained_to_angles,
    unconstrained_to_lattice,
    wrap,
)
from hf_crystal.refiner.modeling_cspnet import CSPNetModel, CSPNetOutput
from hf_crystal.refiner.pipeline_refiner import CrystalRefinerPipeline, CrystalRefinerPipelineOutput, refine
from hf_crystal.refiner.scheduling_crystal_flow import (
    CrystalFlowScheduler,
    CrystalFlowSchedulerOutput,
    FlowTarget,
    flow_matching_loss,
    interpolate,
    sample_uniform_base,
)

__all__ = [
    "CSPNetModel",
    "CSPNetOutput",
    "CrystalBatch",
    "CrystalFlowScheduler",
    "CrystalFlowSchedulerOutput",
    "CrystalRefinerPipeline",
    "CrystalRefinerPipelineOutput",
    "FlowTarget",
    "angles_to_unconstrained",
    "flow_matching_loss",
    "interpolate",
    "lattice_to_unconstrained",
    "refine",
    "remove_mean",
    "sample_uniform_base",
    "torus_displacement",
    "unconstrained_to_angles",
    "unconstrained_to_lattice",
    "wrap",
]
