"""Euler integration of the crystal flow on (torus x lattice space), and the training-time probability path.

Time runs from 0 (base: an LLM sample, or the uniform base of FlowMM) to 1 (data). Coordinates move on the flat
torus (wrapped after every step), lattice parameters linearly in the unconstrained space of `manifold`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from hf_crystal.refiner.batching import CrystalBatch
from hf_crystal.refiner.manifold import (
    ANGLE_MARGIN,
    ANGLE_MAX,
    ANGLE_MIN,
    angles_to_unconstrained,
    remove_mean,
    torus_displacement,
    wrap,
)

# FlowMM (its training configuration): the coordinate term of the loss weighs 400 times the lattice term.
COORD_LOSS_WEIGHT = 400.0
LATTICE_LOSS_WEIGHT = 1.0
BASE_DISTRIBUTIONS = ("llm", "uniform")


@dataclass
class CrystalFlowSchedulerOutput(BaseOutput):
    """State after one Euler step (the `prev_sample` of diffusers' schedulers).

    Args:
        frac_coords (`torch.Tensor` of shape `(N, 3)`): Fractional coordinates, wrapped into [0, 1).
        lattice (`torch.Tensor` of shape `(B, 6)`): Unconstrained lattice parameters.
    """

    frac_coords: torch.Tensor
    lattice: torch.Tensor


@dataclass
class FlowTarget(BaseOutput):
    """A point of the probability path between x0 and x1 at time t, and the velocity the model should predict.

    Args:
        frac_coords (`torch.Tensor` of shape `(N, 3)`): `F_t = wrap(F_0 + t d)`, `d` the shortest torus
            displacement from `F_0` to `F_1`.
        lattice (`torch.Tensor` of shape `(B, 6)`): `L_t = L_0 + t (L_1 - L_0)` in the unconstrained space.
        coord_velocity (`torch.Tensor` of shape `(N, 3)`): `d` minus its per-crystal mean (velocities are defined up
            to a common translation, which the translation-invariant model cannot predict).
        lattice_velocity (`torch.Tensor` of shape `(B, 6)`): `L_1 - L_0`.
    """

    frac_coords: torch.Tensor
    lattice: torch.Tensor
    coord_velocity: torch.Tensor
    lattice_velocity: torch.Tensor


class CrystalFlowScheduler(SchedulerMixin, ConfigMixin):
    """Euler steps from t = 0 to t = 1 for fractional coordinates (on the torus) and lattice parameters.

    Args:
        anti_annealing_slope (`float`, defaults to 0, off):
            FlowMM/FlowLLM inference anti-annealing: the coordinate velocity is multiplied by
            `1 + anti_annealing_slope * relu(t - anti_annealing_offset)`, which sharpens the end of the flow.
        anti_annealing_offset (`float`, defaults to 0):
            Time after which anti-annealing starts.
        base_distribution (`str`, defaults to "llm"):
            Where the flow starts: "llm", the given structures (FlowLLM); "uniform", a draw of FlowMM's base
            (`sample_uniform_base`) with the given structures' atoms, for a refiner trained from that base.
        log_length_mean, log_length_std (`list[float]` of 3, only for the uniform base):
            Mean and std of log(lattice length in Å) of the log-normal base, fitted on the training set.
        base_noise_std (`float`, defaults to 0):
            Std of Gaussian noise added to the given structures' fractional coordinates before the flow (FlowLLM
            tried 0.01-0.04). It matters for LLM samples with two atoms on one spot: an equivariant vector field
            gives such atoms the same velocity, so without noise they never separate. It may differ from the noise
            the refiner was trained with (`hf-crystal train refiner --inference_noise_std`).

    `sample_base` draws the start of the flow (training and inference alike); call `set_timesteps` before
    sampling. A scheduler tracks the current step and should not be shared by
    concurrent generations.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        anti_annealing_slope: float = 0.0,
        anti_annealing_offset: float = 0.0,
        base_distribution: str = "llm",
        log_length_mean: list[float] | None = None,
        log_length_std: list[float] | None = None,
        base_noise_std: float = 0.0,
    ):
        if base_distribution not in BASE_DISTRIBUTIONS:
            raise ValueError(
                f"base_distribution must be one of {BASE_DISTRIBUTIONS}, got {base_distribution!r}"
            )
        if base_distribution == "uniform" and (log_length_mean is None or log_length_std is None):
            raise ValueError("the uniform base needs log_length_mean and log_length_std (3 values each)")
        self.timesteps = None
        self._times = None
        self._step_index = None

    def sample_base(
        self,
        batch: CrystalBatch,
        generator: torch.Generator | None = None,
        project: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> CrystalBatch:
        """The start of the flow (t = 0) for the crystals of `batch`.

        Args:
            batch (`CrystalBatch`): The given structures (an LLM's samples, or a training pair's x0); for the
                uniform base only their atoms are kept.
            generator (`torch.Generator`, *optional*): Source of the uniform base or of the base noise.
            project (`Callable`, *optional*): Maps the drawn (fractional coordinates, lattice) to new ones, e.g.
                `hf_crystal.symmetry.SymmetryProjector` onto the structures that keep a space group.
        """
        config = self.config
        if config.base_distribution == "uniform":
            coords, lattice, _ = sample_uniform_base(
                batch.num_atoms, config.log_length_mean, config.log_length_std, generator=generator
            )
            batch = batch.replace(frac_coords=coords.to(batch.frac_coords), lattice=lattice.to(batch.lattice))
        elif config.base_noise_std > 0:
            coords = batch.frac_coords
            noise = torch.randn(coords.shape, generator=generator, dtype=coords.dtype)
            batch = batch.replace(frac_coords=wrap(coords + config.base_noise_std * noise.to(coords.device)))
        if project is not None:
            coords, lattice = project(batch.frac_coords, batch.lattice)
            batch = batch.replace(frac_coords=coords, lattice=lattice)
        return batch

    @property
    def step_index(self) -> int | None:
        """Index of the next Euler step."""
        return self._step_index

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Equal steps from 0 to 1; `timesteps` holds the start time of each step."""
        if type(num_inference_steps) is not int or num_inference_steps < 1:
            raise ValueError("num_inference_steps must be a positive integer.")
        self._times = torch.linspace(0, 1, num_inference_steps + 1, dtype=torch.float64)
        self.timesteps = self._times[:-1].to(device=device, dtype=torch.float32)
        self._step_index = 0

    def step(
        self,
        model_output: BaseOutput | tuple[torch.Tensor, torch.Tensor],
        timestep: float | torch.Tensor,
        sample: tuple[torch.Tensor, torch.Tensor],
        return_dict: bool = True,
    ) -> CrystalFlowSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step from `timestep` to the next time.

        Args:
            model_output (`tuple`): (coordinate velocity `(N, 3)`, lattice velocity `(B, 6)`), e.g. a
                `CSPNetOutput` or the model's tuple output.
            timestep (`float` or `torch.Tensor`): The next element of `timesteps`.
            sample (`tuple`): Current (fractional coordinates `(N, 3)`, unconstrained lattice `(B, 6)`).
            return_dict (`bool`): Return a `CrystalFlowSchedulerOutput` rather than a tuple.
        """
        if self._step_index is None:
            raise ValueError("Call set_timesteps before step.")
        if self._step_index >= len(self.timesteps):
            raise ValueError("The trajectory is complete; call set_timesteps to start another.")
        t = float(timestep)
        if abs(t - float(self._times[self._step_index])) > 1e-6:
            raise ValueError("timestep must be the next element of timesteps.")
        coord_velocity, lattice_velocity = (
            model_output.to_tuple() if isinstance(model_output, BaseOutput) else model_output
        )
        frac_coords, lattice = sample
        dt = float(self._times[self._step_index + 1] - self._times[self._step_index])
        scale = 1.0 + self.config.anti_annealing_slope * max(t - self.config.anti_annealing_offset, 0.0)
        frac_coords = wrap(frac_coords + (dt * scale) * coord_velocity)
        lattice = lattice + dt * lattice_velocity
        self._step_index += 1
        if not return_dict:
            return frac_coords, lattice
        return CrystalFlowSchedulerOutput(frac_coords=frac_coords, lattice=lattice)


def interpolate(
    x0: tuple[torch.Tensor, torch.Tensor],
    x1: tuple[torch.Tensor, torch.Tensor],
    t: torch.Tensor,
    crystal_index: torch.Tensor,
) -> FlowTarget:
    """The conditional flow-matching path (FlowMM) from `x0` to `x1` at per-crystal times `t` `(B,)`.

    `x0` and `x1` are (fractional coordinates `(N, 3)`, unconstrained lattice `(B, 6)`) with atom i of x0 paired
    with atom i of x1.
    """
    (coords0, lattice0), (coords1, lattice1) = x0, x1
    displacement = torus_displacement(coords0, coords1)
    t = t.to(lattice0.dtype)
    return FlowTarget(
        frac_coords=wrap(coords0 + t[crystal_index, None] * displacement),
        lattice=lattice0 + t[:, None] * (lattice1 - lattice0),
        coord_velocity=remove_mean(displacement, crystal_index, lattice0.shape[0]),
        lattice_velocity=lattice1 - lattice0,
    )


def flow_matching_loss(
    prediction: BaseOutput | tuple[torch.Tensor, torch.Tensor],
    target: FlowTarget,
    coord_weight: float = COORD_LOSS_WEIGHT,
    lattice_weight: float = LATTICE_LOSS_WEIGHT,
) -> torch.Tensor:
    """Weighted sum of the mean squared errors of the coordinate and lattice velocities (FlowMM's weights)."""
    coord_velocity, lattice_velocity = (
        prediction.to_tuple() if isinstance(prediction, BaseOutput) else prediction
    )
    coord_loss = (coord_velocity - target.coord_velocity).square().mean()
    lattice_loss = (lattice_velocity - target.lattice_velocity).square().mean()
    return coord_weight * coord_loss + lattice_weight * lattice_loss


def sample_uniform_base(
    num_atoms: torch.Tensor,
    log_length_mean: torch.Tensor | float,
    log_length_std: torch.Tensor | float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlowMM's base distribution (the ablation without an LLM), for crystals of `num_atoms` `(B,)` atoms.

    Coordinates uniform on the torus; lengths log-normal with the given mean and std of log(length in Å) (scalars
    or `(3,)`, e.g. fitted on the training set); angles uniform in the refiner's interval, mapped through the
    angle bijection. Returns (fractional coordinates `(N, 3)`, unconstrained lattice `(B, 6)`, crystal_index
    `(N,)`).
    """
    n_crystals = len(num_atoms)
    crystal_index = torch.repeat_interleave(torch.arange(n_crystals), num_atoms.cpu())
    frac_coords = torch.rand((len(crystal_index), 3), generator=generator, dtype=dtype)
    mean = torch.as_tensor(log_length_mean, dtype=dtype)
    std = torch.as_tensor(log_length_std, dtype=dtype)
    log_lengths = mean + std * torch.randn((n_crystals, 3), generator=generator, dtype=dtype)
    low, high = ANGLE_MIN + ANGLE_MARGIN, ANGLE_MAX - ANGLE_MARGIN
    angles = low + (high - low) * torch.rand((n_crystals, 3), generator=generator, dtype=dtype)
    return frac_coords, torch.cat([log_lengths, angles_to_unconstrained(angles)], -1), crystal_index
