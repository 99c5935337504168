"""Coverage recall / precision (COV-R, COV-P) between generated and reference sets (CDVAE).

Fingerprints as in CDVAE's ``compute_metrics.py``: the structure fingerprint is the mean over sites of
matminer's CrystalNN "ops" site fingerprint; the composition fingerprint is matminer's Magpie
ElementProperty vector, standardised before distances are taken. A reference crystal is recalled (and a
generated one is precise) when its nearest neighbour in the other set lies within both cutoffs.
As in every published COV figure (CDVAE, DiffCSP, FlowMM, FlowLLM), Magpie vectors are standardised by
default with the means/stds CDVAE fitted on MP-20 (`cdvae_scaler`, data/cdvae_comp_scaler.json) and the
cutoffs are CDVAE's per dataset (`COV_CUTOFFS`); a scaler fitted on the reference set passed in is the
option (features constant over the reference get std 1; NaN becomes 0 either way).
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from importlib import resources

import numpy as np
from pymatgen.core import Composition, Structure
from scipy.spatial.distance import cdist
from tqdm.auto import tqdm

# CDVAE (Xie et al. 2022) COV cutoffs (structure, composition), compute_metrics.COV_Cutoffs.
COV_CUTOFFS = {"mp20": (0.4, 10.0), "carbon": (0.2, 4.0), "perov": (0.2, 4.0)}
STRUCTURE_CUTOFF, COMPOSITION_CUTOFF = COV_CUTOFFS["mp20"]
SCALERS = ("cdvae", "reference")


@cache
def cdvae_scaler() -> tuple[np.ndarray, np.ndarray]:
    """(means, stds) of the 132 Magpie features, as CDVAE fitted them on MP-20 (its CompScaler)."""
    data = json.loads(
        (resources.files("hf_crystal.evaluation") / "data" / "cdvae_comp_scaler.json").read_text()
    )
    return np.asarray(data["means"]), np.asarray(data["stds"])


@cache
def _crystalnn_fingerprint():
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


@cache
def _magpie():
    from matminer.featurizers.composition.composite import ElementProperty

    return ElementProperty.from_preset("magpie", impute_nan=False)


def structure_fingerprint(structure: Structure) -> np.ndarray:
    """Mean CrystalNN "ops" site fingerprint of a structure; raises on structures CrystalNN cannot handle."""
    featurizer = _crystalnn_fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
    return np.asarray(sites, dtype=float).mean(axis=0)


def composition_fingerprint(composition: Composition | Structure) -> np.ndarray:
    """Magpie ElementProperty vector of a composition (unscaled)."""
    if isinstance(composition, Structure):
        composition = composition.composition
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_magpie().featurize(Composition(composition).element_composition), dtype=float)


def fingerprints(
    structures: list[Structure], *, progress: bool = False, desc: str = "fingerprints"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structure and composition fingerprints of many structures, and a mask of those that succeeded.

    Rows of structures whose fingerprint failed are NaN and ``ok`` is False for them.
    """
    struct_fps, comp_fps, ok = [], [], []
    for s in tqdm(structures, desc=desc, disable=not progress):
        try:
            struct_fps.append(structure_fingerprint(s))
            comp_fps.append(composition_fingerprint(s))
            ok.append(True)
        except Exception:  # CrystalNN fails on pathological geometries: counted as not covered
            struct_fps.append(None)
            comp_fps.append(None)
            ok.append(False)
    return _stack(struct_fps), _stack(comp_fps), np.asarray(ok, dtype=bool)


def _stack(rows: list) -> np.ndarray:
    width = next((len(r) for r in rows if r is not None), 0)
    return np.array([r if r is not None else np.full(width, np.nan) for r in rows], dtype=float).reshape(
        len(rows), width
    )


def _computed(struct_fps: np.ndarray, comp_fps: np.ndarray) -> np.ndarray:
    """Rows whose fingerprints were computed; single NaN features (Magpie has no data for some elements,
    e.g. He) are kept and become 0 after standardisation, as CDVAE's scaler does (replace_nan_token=0)."""
    return ~np.isnan(struct_fps).all(axis=1) & ~np.isnan(comp_fps).all(axis=1)


def _standardize(
    comp: np.ndarray, ref: np.ndarray, scaler: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Both sets standardised with `scaler` (means, stds), or with one fitted on `ref` when it is None."""
    if scaler is not None:
        mean, std = scaler
    else:
        mean = np.nanmean(ref, axis=0)
        std = np.nanstd(ref, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        # A feature constant over the reference (up to round-off) is not scaled.
        std = np.where(np.isfinite(std) & (std > 1e-8 * np.maximum(1.0, np.abs(mean))), std, 1.0)
    return np.nan_to_num((comp - mean) / std), np.nan_to_num((ref - mean) / std)


def coverage(
    gen_struct_fps: np.ndarray,
    gen_comp_fps: np.ndarray,
    ref_struct_fps: np.ndarray,
    ref_comp_fps: np.ndarray,
    struct_cutoff: float = STRUCTURE_CUTOFF,
    comp_cutoff: float = COMPOSITION_CUTOFF,
    n_generated: int | None = None,
    comp_scaler: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """COV-R, COV-P and the mean nearest-neighbour distances (CDVAE's ``compute_cov``).

    All-NaN rows (failed fingerprints) are dropped; COV-P is divided by ``n_generated`` (default: all
    generated rows, failed ones included), as CDVAE does. Composition fingerprints are standardised with
    ``comp_scaler`` (e.g. `cdvae_scaler()`), or with a scaler fitted on the reference when it is None.
    """
    if n_generated is None:
        n_generated = len(gen_struct_fps)
    gen_ok, ref_ok = _computed(gen_struct_fps, gen_comp_fps), _computed(ref_struct_fps, ref_comp_fps)
    gs, gc = np.nan_to_num(gen_struct_fps[gen_ok]), gen_comp_fps[gen_ok]
    rs, rc = np.nan_to_num(ref_struct_fps[ref_ok]), ref_comp_fps[ref_ok]
    if len(gs) == 0 or len(rs) == 0:
        return {"cov_recall": 0.0, "cov_precision": 0.0}
    gc, rc = _standardize(gc, rc, comp_scaler)
    struct_d = cdist(gs, rs)
    comp_d = cdist(gc, rc)
    recall_hit = (struct_d.min(axis=0) <= struct_cutoff) & (comp_d.min(axis=0) <= comp_cutoff)
    precision_hit = (struct_d.min(axis=1) <= struct_cutoff) & (comp_d.min(axis=1) <= comp_cutoff)
    return {
        "cov_recall": float(recall_hit.sum() / len(ref_struct_fps)),
        "cov_precision": float(precision_hit.sum() / n_generated),
        "amsd_recall": float(struct_d.min(axis=0).mean()),
        "amsd_precision": float(struct_d.min(axis=1).mean()),
        "amcd_recall": float(comp_d.min(axis=0).mean()),
        "amcd_precision": float(comp_d.min(axis=1).mean()),
    }
