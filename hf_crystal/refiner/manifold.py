"""The refiner's manifolds: the flat torus of fractional coordinates and the unconstrained lattice space.

Pure torch, batched over crystals of different sizes without padding: atoms of all crystals are stacked along
dim 0 and `crystal_index` (N,) long says which crystal each atom belongs to.
"""

from __future__ import annotations

import torch

# FlowMM (Miller et al. 2024): lattice angles live in this open interval (degrees), mapped to R by a bijection.
ANGLE_MIN = 59.9
ANGLE_MAX = 120.1
# Angles are clamped this far (degrees) inside the interval before the bijection, so that an LLM's 30° or 150°
# gives a finite value (the angle of the interval's edge) instead of inf/NaN.
ANGLE_MARGIN = 1e-3


def wrap(x: torch.Tensor) -> torch.Tensor:
    """`x` mod 1, always in [0, 1): `remainder` rounds tiny negatives (-1e-9 in float32) up to 1.0, sent to 0."""
    y = torch.remainder(x, 1.0)
    return torch.where(y >= 1.0, torch.zeros_like(y), y)


def torus_displacement(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Shortest displacement from `x0` to `x1` on the unit torus, `((x1 - x0 + 0.5) mod 1) - 0.5`, in [-0.5, 0.5)."""
    return wrap(x1 - x0 + 0.5) - 0.5


def crystal_sum(values: torch.Tensor, crystal_index: torch.Tensor, n_crystals: int) -> torch.Tensor:
    """Per-crystal sum of per-atom `values` (N, ...) -> (n_crystals, ...)."""
    out = values.new_zeros((n_crystals, *values.shape[1:]))
    return out.index_add_(0, crystal_index, values)


def remove_mean(v: torch.Tensor, crystal_index: torch.Tensor, n_crystals: int) -> torch.Tensor:
    """`v` (N, D) minus its per-crystal mean: velocities on the torus are defined up to a common translation."""
    counts = torch.bincount(crystal_index, minlength=n_crystals).clamp(min=1).to(v.dtype)
    mean = crystal_sum(v, crystal_index, n_crystals) / counts[:, None]
    return v - mean[crystal_index]


def angles_to_unconstrained(angles: torch.Tensor) -> torch.Tensor:
    """Angles in degrees -> R: logit of the angle scaled from (ANGLE_MIN, ANGLE_MAX) to (0, 1).

    Defined for every input: angles are first clamped to [ANGLE_MIN + ANGLE_MARGIN, ANGLE_MAX - ANGLE_MARGIN]
    (the refiner Niggli-reduces structures first, which brings angles into about 60-120°).
    """
    clamped = angles.clamp(ANGLE_MIN + ANGLE_MARGIN, ANGLE_MAX - ANGLE_MARGIN)
    return torch.logit((clamped - ANGLE_MIN) / (ANGLE_MAX - ANGLE_MIN))


def unconstrained_to_angles(z: torch.Tensor) -> torch.Tensor:
    """Inverse of `angles_to_unconstrained`: R -> angles in degrees in (ANGLE_MIN, ANGLE_MAX)."""
    return ANGLE_MIN + (ANGLE_MAX - ANGLE_MIN) * torch.sigmoid(z)


def lattice_to_unconstrained(params: torch.Tensor) -> torch.Tensor:
    """Lattice parameters (..., 6) = (a, b, c in Å, alpha, beta, gamma in degrees) -> (..., 6) in R^6.

    Lengths go to their logarithm (clamped to a tiny positive length first, so a zero stays finite), angles
    through `angles_to_unconstrained`. Exact inverse of `unconstrained_to_lattice` for positive lengths and angles
    inside the interval (up to the clamping margin).
    """
    lengths, angles = params[..., :3], params[..., 3:]
    return torch.cat(
        [lengths.clamp(min=torch.finfo(params.dtype).tiny).log(), angles_to_unconstrained(angles)], -1
    )


def unconstrained_to_lattice(z: torch.Tensor) -> torch.Tensor:
    """Inverse of `lattice_to_unconstrained`: (..., 6) in R^6 -> lattice parameters (Å, degrees)."""
    return torch.cat([z[..., :3].exp(), unconstrained_to_angles(z[..., 3:])], -1)
