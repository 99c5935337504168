"""The whole evaluation as numbers: ``compute_metrics`` returns an ``EvaluationResult`` and writes no files.

``EvaluationResult.metrics`` is the flat dict that ``metrics.json`` holds (its keys and their meaning are
``METRICS``; they feed the model cards' eval_results), ``rows`` the per-sample results (keys
``SAMPLE_COLUMNS``, the columns of ``samples.csv``), ``relaxed`` the relaxed structures and
``distributions`` what the report's plots show. ``hf_crystal.evaluation.report.write_report`` turns a
result into files.

The only thing written while computing is the relaxation cache of the ``BatchedRelaxer`` (its
``cache_dir``; the default relaxer uses ``~/.cache/hf_crystal/relax``): one file per structure as soon as
it is relaxed, hull references included. An interrupted evaluation therefore loses no relaxation: run it
again and the finished structures come from the cache; only the cheaper steps (validity, fingerprints,
matching) are recomputed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedEntry
from tqdm.auto import tqdm

from hf_crystal.evaluation import coverage as cov
from hf_crystal.evaluation.distributions import densities, distribution_distances, lattice_parameters, n_ary
from hf_crystal.evaluation.novelty import default_matcher, novel_flags, unique_flags
from hf_crystal.evaluation.validity import validity_flags

__all__ = ["METRICS", "SAMPLE_COLUMNS", "Distributions", "EvaluationResult", "compute_metrics"]

# Flat metrics.json keys and what they mean (rates are over all samples, unreadable inputs included,
# unless the description says otherwise).
METRICS = {
    "n_samples": "samples evaluated (readable)",
    "n_unreadable": "samples that could not be read or parsed (count as invalid and unstable)",
    "n_reference": "reference (test) structures",
    "n_train": "training structures used for novelty",
    "struct_valid": "fraction structurally valid (min distance >= 0.5 Å, volume >= 0.1 Å^3; CDVAE)",
    "comp_valid": "fraction compositionally valid (SMACT charge balance + Pauling test; CDVAE)",
    "valid": "fraction structurally and compositionally valid",
    "cov_recall": "COV-R: fraction of reference structures with a sample within both fingerprint cutoffs",
    "cov_precision": "COV-P: fraction of samples with a reference structure within both fingerprint cutoffs",
    "amsd_recall": "mean structure-fingerprint distance from each reference to its nearest sample",
    "amsd_precision": "mean structure-fingerprint distance from each sample to its nearest reference",
    "amcd_recall": "mean composition-fingerprint distance from each reference to its nearest sample",
    "amcd_precision": "mean composition-fingerprint distance from each sample to its nearest reference",
    "coverage_settings": "COV cutoffs (structure / composition) and the Magpie scaler the coverage keys used",
    "fingerprint_failed_samples": "samples whose CrystalNN fingerprint failed (never covered)",
    "fingerprint_failed_reference": "reference structures whose CrystalNN fingerprint failed (never recalled)",
    "wdist_density": "Wasserstein distance of density (g/cm^3), valid samples vs reference",
    "wdist_nary": "Wasserstein distance of the number of elements, valid samples vs reference",
    "unique_rate": "fraction of readable samples that match no earlier sample (StructureMatcher, FlowMM tol.)",
    "novel_rate": "fraction of readable samples that match no training structure",
    "n_relaxed": "samples relaxed (structurally invalid ones are not, unless relax_invalid)",
    "relax_success_rate": "fraction of the relaxed samples relaxed without error",
    "relax_converged_rate": "fraction of the relaxed samples whose relaxation converged below fmax",
    "relax_steps_mean": "mean number of relaxation steps (successful relaxations)",
    "energy_drop_mean": "mean CHGNet energy drop initial -> relaxed (eV/atom)",
    "match_rate_to_relaxed": "fraction of successfully relaxed samples that still match their relaxed structure",
    "rmsd_to_relaxed": "mean StructureMatcher RMS distance sample -> relaxed (normalised by (V/N)^(1/3))",
    "e_hull_mean": "mean energy above hull (eV/atom) of samples with one",
    "e_hull_median": "median energy above hull (eV/atom)",
    "metastable_rate": "fraction with E_hull < 0.1 eV/atom (Gruver et al.; over all samples, unrelaxed ones count as not)",
    "stable_rate": "fraction with E_hull < 0 and >= 2 elements (FlowLLM)",
    "sun_rate": "fraction stable, unique and novel (S.U.N.)",
    "hull": "which convex hull the stability numbers refer to",
    "hull_entries": "number of entries in the hull",
    "hull_skipped": "self-consistent hull: structures left out (relaxation failed or MP2020 rejected them)",
}

# Keys of the per-sample rows = columns of samples.csv, in order (stability keys stay None without relaxation).
SAMPLE_COLUMNS = [
    "id", "formula", "n_atoms", "n_elements", "density", "struct_valid", "comp_valid", "valid", "unique",
    "novel", "relax_error", "converged", "steps", "energy_per_atom", "energy_drop", "corrected_energy_per_atom",
    "e_hull", "hull_error", "metastable", "stable", "sun", "match_relaxed", "rmsd_relaxed",
]  # fmt: skip


@dataclass
class Distributions:
    """What the report's histograms show: per-structure values of the samples and of the reference."""

    nary_valid: np.ndarray
    nary_reference: np.ndarray
    density_valid: np.ndarray
    density_reference: np.ndarray
    lattice_samples: np.ndarray  # (n, 6): a, b, c, alpha, beta, gamma
    lattice_reference: np.ndarray


@dataclass
class EvaluationResult:
    """Everything an evaluation found; ``write_report`` writes it, nothing else is needed.

    Attributes:
        metrics: the flat metrics (keys and meanings: ``METRICS``), JSON-ready (NaN is None), exactly what
            ``metrics.json`` holds.
        rows: one dict per readable sample, in input order, keys ``SAMPLE_COLUMNS`` (NaN is None).
        relaxed: (sample id, relaxed structure) of every sample that relaxed, in input order; None when
            relaxation was skipped (``relax=False``).
        distributions: number of elements, density and lattice parameters of samples and reference.
    """

    metrics: dict
    rows: list[dict]
    distributions: Distributions
    relaxed: list[tuple[str, Structure]] | None = None

    @property
    def e_hulls(self) -> list[float]:
        """The finite energies above hull of the samples (eV/atom)."""
        return [r["e_hull"] for r in self.rows if r.get("e_hull") is not None]


def compute_metrics(
    samples: Sequence[Structure],
    reference: Sequence[Structure],
    train: Sequence[Structure] = (),
    *,
    sample_ids: Sequence[str] | None = None,
    n_unreadable: int = 0,
    hull_entries: str | Path | Sequence[ComputedEntry] | None = None,
    hull_structures: Sequence[Structure] | None = None,
    relaxer=None,
    relax: bool = True,
    relax_invalid: bool = False,
    coverage_dataset: str = "mp20",
    coverage_cutoffs: tuple[float, float] | None = None,
    coverage_scaler: str = "cdvae",
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate ``samples`` against ``reference`` (coverage, distributions) and ``train`` (novelty).

    Args:
        sample_ids: names of the samples (default ``sample-0``, ``sample-1``, ...).
        n_unreadable: samples the reader could not parse; they count as invalid and unstable.
        hull_entries: pymatgen entries (or a JSON file of them) for the hull; None builds the self-consistent hull
            from ``hull_structures`` (default: ``reference``) and ASE elemental references.
        relaxer: a ``BatchedRelaxer`` (default: CHGNet with its default settings and the user cache).
        relax: False skips relaxation and stability (fast structural metrics only).
        relax_invalid: also relax structurally invalid samples (by default they are not relaxed and count as
            not stable: their relaxations are slow, often fail, and say nothing about the model's crystals).
        coverage_dataset: whose CDVAE COV cutoffs apply ("mp20", "carbon", "perov"), unless ``coverage_cutoffs``
            (structure, composition) are given.
        coverage_scaler: "cdvae" (CDVAE's fixed MP-20 Magpie scaler, as published figures) or "reference"
            (fitted on ``reference``).

    Writes no files (besides the relaxer's cache, see the module docstring).
    """
    samples, reference, train = list(samples), list(reference), list(train)
    ids = list(sample_ids) if sample_ids is not None else [f"sample-{i}" for i in range(len(samples))]
    if len(ids) != len(samples):
        raise ValueError(f"{len(ids)} sample ids for {len(samples)} samples")
    n_total = len(samples) + n_unreadable
    metrics: dict = {"n_samples": len(samples), "n_unreadable": n_unreadable}
    metrics |= {"n_reference": len(reference), "n_train": len(train)}
    rows = [
        {"id": i, "formula": s.composition.reduced_formula, "n_atoms": len(s)}
        for i, s in zip(ids, samples, strict=True)
    ]
    valid, validity = _validity(samples, rows, n_total=n_total, progress=progress)
    metrics |= validity
    if coverage_scaler not in cov.SCALERS or coverage_dataset not in cov.COV_CUTOFFS:
        raise ValueError(
            f"coverage_scaler must be one of {cov.SCALERS} and coverage_dataset one of {list(cov.COV_CUTOFFS)}"
        )
    cutoffs = coverage_cutoffs or cov.COV_CUTOFFS[coverage_dataset]
    metrics["coverage_settings"] = (
        f"cutoffs {cutoffs[0]} / {cutoffs[1]}"
        + ("" if coverage_cutoffs else f" (CDVAE, {coverage_dataset})")
        + f"; Magpie scaler: {'CDVAE MP-20' if coverage_scaler == 'cdvae' else 'fitted on the reference'}"
    )
    scaler = cov.cdvae_scaler() if coverage_scaler == "cdvae" else None
    metrics |= _coverage(
        samples, reference, n_total=n_total, cutoffs=cutoffs, scaler=scaler, progress=progress
    )
    metrics |= distribution_distances(valid, reference)
    metrics |= _uniqueness_novelty(samples, train, rows, progress=progress)
    relaxed: list[tuple[str, Structure]] | None = None
    if relax:
        hull = _hull(
            hull_entries,
            hull_structures=hull_structures or reference,
            samples=samples,
            relaxer=relaxer,
            progress=progress,
        )
        stability = _stability(
            samples, rows, hull=hull, n_total=n_total, relax_invalid=relax_invalid, progress=progress
        )
        metrics |= stability.metrics
        relaxed = stability.relaxed
    return EvaluationResult(
        metrics={k: _plain(v) for k, v in metrics.items()},
        rows=[{k: _plain(row.get(k)) for k in SAMPLE_COLUMNS} for row in rows],
        distributions=Distributions(
            nary_valid=n_ary(valid),
            nary_reference=n_ary(reference),
            density_valid=densities(valid),
            density_reference=densities(reference),
            lattice_samples=lattice_parameters(samples),
            lattice_reference=lattice_parameters(reference),
        ),
        relaxed=relaxed,
    )


def _rate(count: float, total: int) -> float:
    return float(count) / total if total else float("nan")


def _plain(value):
    """A JSON / CSV value: NaN and infinities become None, numpy scalars Python ones."""
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _validity(samples, rows, *, n_total: int, progress: bool) -> tuple[list[Structure], dict]:
    """Fills the validity, n_elements and density of ``rows``; returns the valid samples and the rates."""
    with warnings.catch_warnings():  # pymatgen warns about elements without some property data
        warnings.simplefilter("ignore")
        flags = [validity_flags(s) for s in tqdm(samples, desc="validity", disable=not progress)]
    for row, f, s, d in zip(rows, flags, samples, densities(samples), strict=True):
        row |= f | {"n_elements": len(s.composition.elements), "density": d}
    rates = {
        key: _rate(sum(f[key] for f in flags), n_total) for key in ("struct_valid", "comp_valid", "valid")
    }
    return [s for s, f in zip(samples, flags, strict=True) if f["valid"]], rates


def _coverage(samples, reference, *, n_total: int, cutoffs, scaler, progress: bool) -> dict:
    if not samples or not reference:
        return {"cov_recall": float("nan"), "cov_precision": float("nan")}
    gen = cov.fingerprints(samples, progress=progress, desc="fingerprints: samples")
    ref = cov.fingerprints(reference, progress=progress, desc="fingerprints: reference")
    out = cov.coverage(gen[0], gen[1], ref[0], ref[1], *cutoffs, n_generated=n_total, comp_scaler=scaler)
    return out | {
        "fingerprint_failed_samples": int((~gen[2]).sum()),
        "fingerprint_failed_reference": int((~ref[2]).sum()),
    }


def _uniqueness_novelty(samples, train, rows, *, progress: bool) -> dict:
    """Fills ``unique`` and ``novel`` (None without a training set) of ``rows``; returns the rates."""
    matcher = default_matcher()
    unique = unique_flags(samples, matcher, progress=progress)
    novel = novel_flags(samples, train, matcher, progress=progress)
    for row, u, n in zip(rows, unique, novel, strict=True):
        row |= {"unique": u, "novel": n if train else None}
    return {
        "unique_rate": _rate(sum(unique), len(samples)),
        "novel_rate": _rate(sum(novel), len(samples)) if train else float("nan"),
    }


@dataclass
class _Hull:
    """The hull the stability numbers refer to, the relaxer that relaxes the samples, and hull counts."""

    reference: object  # stability.HullReference
    relaxer: object  # relax.BatchedRelaxer
    summary: dict = field(default_factory=dict)


def _hull(hull_entries, *, hull_structures, samples, relaxer, progress: bool) -> _Hull:
    from hf_crystal.evaluation.relax import BatchedRelaxer, default_cache_dir
    from hf_crystal.evaluation.stability import HullReference, default_hull, load_entries

    relaxer = relaxer or BatchedRelaxer(cache_dir=default_cache_dir() / "relax")
    if isinstance(hull_entries, str | Path):
        entries = load_entries(hull_entries)
        return _Hull(HullReference(entries, f"user-supplied entries: {Path(hull_entries).name}"), relaxer)
    if hull_entries is not None:
        return _Hull(HullReference(hull_entries, f"user-supplied entries ({len(hull_entries)})"), relaxer)
    sample_elements = {el.symbol for s in samples for el in s.composition.elements}
    reference, summary = default_hull(hull_structures, sample_elements, relaxer, progress=progress)
    return _Hull(reference, relaxer, {k: v for k, v in summary.items() if k != "hull_skipped_examples"})


_NOT_RELAXED = "not relaxed: structurally invalid (relax_invalid=True / --relax-invalid relaxes it)"


@dataclass
class _Stability:
    metrics: dict
    relaxed: list[tuple[str, Structure]]


def _stability(
    samples, rows, *, hull: _Hull, n_total: int, relax_invalid: bool, progress: bool
) -> _Stability:
    """Relaxes the samples (structurally valid ones only unless ``relax_invalid``), fills the stability and
    distance-to-relaxed keys of ``rows``; samples left unrelaxed count as not stable."""
    from hf_crystal.evaluation.stability import HullError, corrected_entries, stability_flags

    todo = [i for i, row in enumerate(rows) if relax_invalid or row["struct_valid"]]
    results = hull.relaxer.relax([samples[i] for i in todo], progress=progress, desc="relax samples")
    entries = corrected_entries([r.structure for r in results], [r.energy for r in results])
    for row in rows:
        row |= {"relax_error": _NOT_RELAXED, "metastable": False, "stable": False, "sun": False}
    matcher = default_matcher()
    relaxed = []
    for i, r, e in tqdm(
        zip(todo, results, entries, strict=True),
        total=len(todo),
        desc="E_hull",
        disable=not progress,
    ):
        row, s = rows[i], samples[i]
        row |= {"relax_error": r.error, "converged": r.converged, "steps": r.steps}
        row |= {"energy_per_atom": r.energy_per_atom, "energy_drop": r.energy_drop_per_atom}
        e_hull, hull_error = float("nan"), None
        if e is not None:
            row["corrected_energy_per_atom"] = e.energy_per_atom
            try:
                e_hull = hull.reference.e_above_hull(e)
            except HullError as exc:
                hull_error = str(exc)
        row |= {"e_hull": e_hull, "hull_error": hull_error}
        row |= stability_flags(e_hull, row["n_elements"])
        row["sun"] = row["stable"] and row["unique"] and bool(row["novel"])
        if r.structure is not None:
            row |= _distance_to_relaxed(matcher, s, r.structure)
            relaxed.append((row["id"], r.structure))
    return _Stability(_stability_metrics(rows, results, n_total=n_total, hull=hull), relaxed)


def _stability_metrics(rows, results, *, n_total: int, hull: _Hull) -> dict:
    n_relaxed = len(results)
    ok = [r for r in results if r.error is None]
    e_hulls = np.array([row.get("e_hull", np.nan) for row in rows], dtype=float)
    e_hulls = e_hulls[np.isfinite(e_hulls)]
    matched = [row for row in rows if row.get("match_relaxed")]
    nan = float("nan")
    return {
        "n_relaxed": n_relaxed,
        "relax_success_rate": _rate(len(ok), n_relaxed),
        "relax_converged_rate": _rate(sum(r.converged for r in results), n_relaxed),
        "relax_steps_mean": float(np.mean([r.steps for r in ok])) if ok else nan,
        "energy_drop_mean": float(np.mean([r.energy_drop_per_atom for r in ok])) if ok else nan,
        "match_rate_to_relaxed": _rate(len(matched), len(ok)),
        "rmsd_to_relaxed": float(np.mean([row["rmsd_relaxed"] for row in matched])) if matched else nan,
        "e_hull_mean": float(e_hulls.mean()) if len(e_hulls) else nan,
        "e_hull_median": float(np.median(e_hulls)) if len(e_hulls) else nan,
        "metastable_rate": _rate(sum(row["metastable"] for row in rows), n_total),
        "stable_rate": _rate(sum(row["stable"] for row in rows), n_total),
        # Without a training set novelty is unknown, and so is S.U.N.
        "sun_rate": _rate(sum(row["sun"] for row in rows), n_total)
        if all(row["novel"] is not None for row in rows)
        else nan,
        "hull": hull.reference.description,
        "hull_entries": hull.reference.n_entries,
        **hull.summary,
    }


def _distance_to_relaxed(matcher, structure: Structure, relaxed: Structure) -> dict:
    try:
        rms = matcher.get_rms_dist(structure, relaxed)
    except Exception:  # the matcher can fail on degenerate cells: counted as unmatched
        rms = None
    return {"match_relaxed": rms is not None, "rmsd_relaxed": None if rms is None else float(rms[0])}
