"""Property distributions and their Wasserstein distances to a reference set (CDVAE)."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure
from scipy.stats import wasserstein_distance


def densities(structures: list[Structure]) -> np.ndarray:
    """Mass densities in g/cm^3."""
    return np.array([float(s.density) for s in structures], dtype=float)


def n_ary(structures: list[Structure]) -> np.ndarray:
    """Number of distinct elements per structure."""
    return np.array([len(s.composition.elements) for s in structures], dtype=int)


def lattice_parameters(structures: list[Structure]) -> np.ndarray:
    """Rows of (a, b, c, alpha, beta, gamma) in Å and degrees."""
    return np.array([[*s.lattice.abc, *s.lattice.angles] for s in structures], dtype=float).reshape(-1, 6)


def wasserstein(values: np.ndarray, reference: np.ndarray) -> float:
    """1-D Wasserstein distance, NaN when either side is empty."""
    if len(values) == 0 or len(reference) == 0:
        return float("nan")
    return float(wasserstein_distance(values, reference))


def distribution_distances(samples: list[Structure], reference: list[Structure]) -> dict[str, float]:
    """Wasserstein distances of density and N-ary between samples and reference (``wdist_*``)."""
    return {
        "wdist_density": wasserstein(densities(samples), densities(reference)),
        "wdist_nary": wasserstein(n_ary(samples), n_ary(reference)),
    }
