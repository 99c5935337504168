"""The whole evaluation as numbers: ``compute_metrics`` returns an ``EvaluationResult`` and writes no files.

``EvaluationResult.metrics`` is the flat dict that ``metrics.json`` holds (its keys and their meaning are
``METRICS``; they feed the model cards' eval_results), ``rows`` the per-sample results (keys
``SAMPLE_COLUMNS``, the columns of ``samples.csv``), ``relaxed`` the relaxed structures and
``distributions`` what the report's plots show. ``hf_crystal.evaluation.report.write_report`` turns a
result into files.

``compute_metrics`` runs its stages in order (validity, coverage, distributions, uniqueness and novelty,
relaxation and stability); each stage's arithmetic is a public function of precomputed per-sample results
(``validity_metrics``, ``coverage_metrics``, ``uniqueness_novelty_metrics``, ``stability_metrics``,
``evaluation_result``), which ``hf_crystal.benchmark`` calls on results computed on a Ray cluster.

The only thing written while computing is the relaxation cache of the ``BatchedRelaxer`` (its
``cache_dir``; the default relaxer uses ``~/.cache/hf_crystal/relax``): one file per structure as soon as
it is relaxed, hull references included. An interrupted evaluation therefore loses no relaxation: run it
again and the finished structures come from the cache; only the cheaper steps (validity, fingerprints,
matching) are recomputed.
"""

from __future__ import annotations

import json
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
from hf_crystal.evaluation.rates import wilson_interval
from hf_crystal.evaluation.symmetry import SYMMETRY_METRICS, SYMPRECS, symmetry_metrics
from hf_crystal.evaluation.validity import validity_flags

__all__ = [
    "METRICS",
    "SAMPLE_COLUMNS",
    "Distributions",
    "EvaluationResult",
    "Hull",
    "StabilityResult",
    "compute_metrics",
    "coverage_metrics",
    "coverage_settings",
    "evaluation_result",
    "relax_indices",
    "resolve_hull",
    "sample_rows",
    "stability_metrics",
    "uniqueness_novelty_metrics",
    "validity_metrics",
    "wilson_interval",
]

# Flat metrics.json keys and what they mean (rates are over all samples, unreadable inputs included,
# unless the description says otherwise). ``*_ci95`` keys hold [low, high]: the 95% Wilson score interval.
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
    "metastable_rate_ci95": "95% Wilson interval of metastable_rate (denominator n_stability)",
    "stable_rate_ci95": "95% Wilson interval of stable_rate (denominator n_stability)",
    "sun_rate_ci95": "95% Wilson interval of sun_rate (denominator n_stability)",
    "n_stability": "denominator of the all-sample stability rates: readable + unreadable samples",
    "hull": "which convex hull the stability numbers refer to",
    "hull_entries": "number of entries in the hull",
    "hull_skipped": "self-consistent hull: structures left out (relaxation failed or MP2020 rejected them)",
    "n_hull_covered": "samples whose chemical system (or a subsystem of it) holds a compound of the hull (an entry "
    "of >= 2 elements; single-element samples never do): the denominator of the *_covered rates",
    "hull_coverage": "n_hull_covered / n_stability: the fraction of samples the hull says more about than "
    "elemental references do (below one half, the all-sample stability rates say little)",
    "hull_coverage_ci95": "95% Wilson interval of hull_coverage",
    "metastable_rate_covered": "metastable_rate over the hull-covered samples (denominator n_hull_covered)",
    "metastable_rate_covered_ci95": "95% Wilson interval of metastable_rate_covered",
    "stable_rate_covered": "stable_rate over the hull-covered samples (denominator n_hull_covered)",
    "stable_rate_covered_ci95": "95% Wilson interval of stable_rate_covered",
    "sun_rate_covered": "sun_rate over the hull-covered samples (denominator n_hull_covered)",
    "sun_rate_covered_ci95": "95% Wilson interval of sun_rate_covered",
}
# Symmetry at symprec 0.1 and 0.01 Å, of the samples and (prefix ``relaxed_``) of their relaxed structures.
METRICS |= {
    f"{prefix}{key}_sp{symprec:g}": f"{'relaxed structures: ' if prefix else ''}{meaning} (symprec {symprec:g} Å)"
    for prefix in ("", "relaxed_")
    for symprec in SYMPRECS
    for key, meaning in SYMMETRY_METRICS.items()
}
# The intervals of the rates above that carry one, with their denominators.
METRICS |= {
    f"{key}_ci95": f"95% Wilson interval of {key} (denominator {n})"
    for key, n in (
        ("struct_valid", "n_samples + n_unreadable"),
        ("comp_valid", "n_samples + n_unreadable"),
        ("valid", "n_samples + n_unreadable"),
        ("cov_recall", "n_reference"),
        ("cov_precision", "n_samples + n_unreadable"),
        ("unique_rate", "n_samples"),
        ("novel_rate", "n_samples"),
        ("relax_success_rate", "n_relaxed"),
        ("relax_converged_rate", "n_relaxed"),
        ("match_rate_to_relaxed", "the successfully relaxed samples"),
    )
}

# Keys of the per-sample rows = columns of samples.csv, in order (stability keys stay None without relaxation).
SAMPLE_COLUMNS = [
    "id", "formula", "n_atoms", "n_elements", "density", "struct_valid", "comp_valid", "valid", "unique",
    "novel", "relax_error", "converged", "steps", "energy_per_atom", "energy_drop", "corrected_energy_per_atom",
    "e_hull", "hull_error", "hull_covered", "metastable", "stable", "sun", "match_relaxed", "rmsd_relaxed",
    "formation_energy_per_atom", "conditions", "condition_results", "space_group", "space_group_sp0.01",
    "relaxed_space_group",
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
    conditions: Sequence[dict | str] | None = None,
    unreadable_conditions: Sequence[dict | str] = (),
    symmetry: bool = True,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate ``samples`` against ``reference`` (coverage, distributions) and ``train`` (novelty).

    Args:
        sample_ids: names of the samples (default ``sample-0``, ``sample-1``, ...).
        n_unreadable: samples the reader could not parse; they count as invalid and unstable.
        hull_entries: the hull: None for the shipped MP-20 hull (``stability.SHIPPED_HULL``), pymatgen entries or
            a JSON file of them, or ``"self-consistent"`` to build one from ``hull_structures`` (default:
            ``reference``) and ASE elemental references with ``relaxer``.
        relaxer: a ``BatchedRelaxer`` (default: CHGNet with its default settings and the user cache).
        relax: False skips relaxation and stability (fast structural metrics only).
        relax_invalid: also relax structurally invalid samples (by default they are not relaxed and count as
            not stable: their relaxations are slow, often fail, and say nothing about the model's crystals).
        coverage_dataset: whose CDVAE COV cutoffs apply ("mp20", "carbon", "perov"), unless ``coverage_cutoffs``
            (structure, composition) are given.
        coverage_scaler: "cdvae" (CDVAE's fixed MP-20 Magpie scaler, as published figures) or "reference"
            (fitted on ``reference``).
        conditions: the conditions each sample was generated for (dicts or the JSON ``conditions`` cells that
            ``hf-crystal generate`` writes); ``unreadable_conditions`` those of the unreadable samples, which
            count as misses. Satisfaction metrics: ``hf_crystal.evaluation.conditions``.
        symmetry: space-group metrics (``hf_crystal.evaluation.symmetry``) of the samples and, when relaxing,
            of the relaxed structures, at symprec 0.1 and 0.01 Å.

    Writes no files (besides the relaxer's cache, see the module docstring).
    """
    samples, reference, train = list(samples), list(reference), list(train)
    ids = list(sample_ids) if sample_ids is not None else [f"sample-{i}" for i in range(len(samples))]
    if len(ids) != len(samples):
        raise ValueError(f"{len(ids)} sample ids for {len(samples)} samples")
    n_total = len(samples) + n_unreadable
    metrics: dict = {"n_samples": len(samples), "n_unreadable": n_unreadable}
    metrics |= {"n_reference": len(reference), "n_train": len(train)}
    rows = sample_rows(ids, samples)
    with warnings.catch_warnings():  # pymatgen warns about elements without some property data
        warnings.simplefilter("ignore")
        flags = [validity_flags(s) for s in tqdm(samples, desc="validity", disable=not progress)]
    valid, validity = validity_metrics(samples, rows, flags, n_total=n_total)
    metrics |= validity
    settings, cutoffs, scaler = coverage_settings(coverage_dataset, coverage_cutoffs, coverage_scaler)
    metrics |= settings
    if samples and reference:
        gen = cov.fingerprints(samples, progress=progress, desc="fingerprints: samples")
        ref = cov.fingerprints(reference, progress=progress, desc="fingerprints: reference")
        metrics |= coverage_metrics(gen, ref, n_total=n_total, cutoffs=cutoffs, scaler=scaler)
    else:
        metrics |= {"cov_recall": float("nan"), "cov_precision": float("nan")}
    metrics |= distribution_distances(valid, reference)
    matcher = default_matcher()
    unique = unique_flags(samples, matcher, progress=progress)
    novel = novel_flags(samples, train, matcher, progress=progress)
    metrics |= uniqueness_novelty_metrics(rows, unique, novel if train else None)
    reference_groups = None
    if symmetry:
        found, reference_groups = sample_symmetry(samples, reference, rows, progress=progress)
        metrics |= found
    relaxed: list[tuple[str, Structure]] | None = None
    if relax:
        hull = resolve_hull(
            hull_entries,
            hull_structures=hull_structures or reference,
            samples=samples,
            relaxer=relaxer,
            progress=progress,
        )
        todo = relax_indices(rows, relax_invalid=relax_invalid)
        results = hull.relaxer.relax([samples[i] for i in todo], progress=progress, desc="relax samples")
        stability = stability_metrics(
            samples, rows, todo, results, hull=hull, n_total=n_total, progress=progress
        )
        metrics |= stability.metrics
        relaxed = stability.relaxed
        if symmetry:
            metrics |= relaxed_symmetry(relaxed, reference, rows, reference_groups, progress=progress)
    if conditions is not None:
        metrics |= _conditions(
            samples, rows, list(conditions), list(unreadable_conditions), relaxed=relax, progress=progress
        )
    return evaluation_result(metrics, rows, samples, valid, reference, relaxed)


def sample_symmetry(
    samples, reference, rows, *, progress: bool = True, groups=None, reference_groups=None
) -> tuple[dict, dict]:
    """Symmetry metrics of the samples (``hf_crystal.evaluation.symmetry``); fills ``space_group`` and
    ``space_group_sp0.01`` of ``rows``. ``groups`` / ``reference_groups``: space groups per symprec computed
    elsewhere (e.g. on Ray). Returns the metrics and the reference's space groups per symprec."""
    found, groups, reference_groups = symmetry_metrics(
        samples, reference, progress=progress, groups=groups, reference_groups=reference_groups
    )
    for row, g, g_fine in zip(rows, groups[0.1], groups[0.01], strict=True):
        row |= {"space_group": g, "space_group_sp0.01": g_fine}
    return found, reference_groups


def relaxed_symmetry(relaxed, reference, rows, reference_groups, *, progress: bool = True) -> dict:
    """Symmetry metrics (``relaxed_`` keys) of the relaxed (id, structure) pairs; fills ``relaxed_space_group``."""
    found, groups, _ = symmetry_metrics(
        [structure for _, structure in relaxed],
        reference,
        prefix="relaxed_",
        reference_groups=reference_groups,
        progress=progress,
    )
    by_id = dict(zip([name for name, _ in relaxed], groups[0.1], strict=True))
    for row in rows:
        row["relaxed_space_group"] = by_id.get(row["id"])
    return found


# The stages of ``compute_metrics`` on precomputed per-sample results, so that a distributed run
# (``hf_crystal.benchmark``) computes the flags, fingerprints and relaxations where it likes and gets the
# same numbers from the same code.


def sample_rows(ids: Sequence[str], samples: Sequence[Structure]) -> list[dict]:
    """The per-sample rows ``compute_metrics`` fills, one per readable sample."""
    return [
        {"id": i, "formula": s.composition.reduced_formula, "n_atoms": len(s)}
        for i, s in zip(ids, samples, strict=True)
    ]


def validity_metrics(
    samples: Sequence[Structure], rows: list[dict], flags: Sequence[dict], *, n_total: int
) -> tuple[list[Structure], dict]:
    """Fills the validity, n_elements and density of ``rows`` from ``validity.validity_flags`` results.

    Args:
        flags (`Sequence[dict]`): ``validity_flags`` of each sample, in order.
        n_total (`int`): the denominator of the rates: readable and unreadable samples.

    Returns:
        The valid samples and the rates with their Wilson intervals.
    """
    for row, f, s, d in zip(rows, flags, samples, densities(samples), strict=True):
        row |= f | {"n_elements": len(s.composition.elements), "density": d}
    rates = {}
    for key in ("struct_valid", "comp_valid", "valid"):
        rates |= _rate_with_ci(key, sum(f[key] for f in flags), n_total)
    return [s for s, f in zip(samples, flags, strict=True) if f["valid"]], rates


def coverage_settings(
    dataset: str = "mp20", cutoffs: tuple[float, float] | None = None, scaler: str = "cdvae"
) -> tuple[dict, tuple[float, float], tuple[np.ndarray, np.ndarray] | None]:
    """(the ``coverage_settings`` metric, the cutoffs, the Magpie scaler) for ``compute_metrics``' coverage
    options; ValueError for an unknown dataset or scaler."""
    if scaler not in cov.SCALERS or dataset not in cov.COV_CUTOFFS:
        raise ValueError(
            f"coverage_scaler must be one of {cov.SCALERS} and coverage_dataset one of {list(cov.COV_CUTOFFS)}"
        )
    used = cutoffs or cov.COV_CUTOFFS[dataset]
    text = (
        f"cutoffs {used[0]} / {used[1]}"
        + ("" if cutoffs else f" (CDVAE, {dataset})")
        + f"; Magpie scaler: {'CDVAE MP-20' if scaler == 'cdvae' else 'fitted on the reference'}"
    )
    return {"coverage_settings": text}, used, cov.cdvae_scaler() if scaler == "cdvae" else None


def coverage_metrics(gen: tuple, ref: tuple, *, n_total: int, cutoffs, scaler) -> dict:
    """COV-R / COV-P with Wilson intervals, mean distances and failure counts from the
    ``coverage.fingerprints`` (structure, composition, ok) of the samples (``gen``) and the reference."""
    out = cov.coverage(gen[0], gen[1], ref[0], ref[1], *cutoffs, n_generated=n_total, comp_scaler=scaler)
    for key, n in (("cov_recall", len(ref[0])), ("cov_precision", n_total)):  # the rates with their intervals
        out |= _rate_with_ci(key, round(out[key] * n), n)
    return out | {
        "fingerprint_failed_samples": int((~gen[2]).sum()),
        "fingerprint_failed_reference": int((~ref[2]).sum()),
    }


def uniqueness_novelty_metrics(
    rows: list[dict], unique: Sequence[bool], novel: Sequence[bool] | None
) -> dict:
    """Fills ``unique`` and ``novel`` of ``rows`` from ``novelty.unique_flags`` / ``novel_flags`` (``novel``
    None without a training set); returns the rates."""
    for row, u, n in zip(rows, unique, novel if novel is not None else [None] * len(rows), strict=True):
        row |= {"unique": u, "novel": n}
    rates = _rate_with_ci("unique_rate", sum(unique), len(rows))
    return rates | (
        _rate_with_ci("novel_rate", sum(novel), len(rows))
        if novel is not None
        else {"novel_rate": float("nan"), "novel_rate_ci95": None}
    )


def relax_indices(rows: list[dict], *, relax_invalid: bool = False) -> list[int]:
    """Indices of the samples ``compute_metrics`` relaxes: the structurally valid ones, or all."""
    return [i for i, row in enumerate(rows) if relax_invalid or row["struct_valid"]]


def evaluation_result(
    metrics: dict,
    rows: list[dict],
    samples: Sequence[Structure],
    valid: Sequence[Structure],
    reference: Sequence[Structure],
    relaxed: list[tuple[str, Structure]] | None,
) -> EvaluationResult:
    """The ``EvaluationResult`` of filled rows and metrics (values made JSON-ready)."""
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


def _rate_with_ci(name: str, count: int, total: int) -> dict:
    """``name``: ``count`` / ``total``, and ``name_ci95``: its Wilson interval."""
    return {name: _rate(count, total), f"{name}_ci95": [_plain(x) for x in wilson_interval(count, total)]}


def _plain(value):
    """A JSON / CSV value: NaN and infinities become None, numpy scalars Python ones."""
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


@dataclass
class Hull:
    """The hull the stability numbers refer to, the relaxer that relaxes the samples, and hull counts."""

    reference: object  # stability.HullReference
    relaxer: object  # relax.BatchedRelaxer
    summary: dict = field(default_factory=dict)


def resolve_hull(hull_entries, *, hull_structures, samples, relaxer, progress: bool = True) -> Hull:
    """The ``Hull`` of ``compute_metrics``' ``hull_entries`` option (a default CHGNet relaxer when ``relaxer`` is
    None); a self-consistent hull is built here, relaxing ``hull_structures`` and the elements."""
    from hf_crystal.cache import cache_dir
    from hf_crystal.evaluation.hull_build import default_hull
    from hf_crystal.evaluation.relax import BatchedRelaxer
    from hf_crystal.evaluation.stability import SELF_CONSISTENT, HullReference, load_hull, shipped_hull

    relaxer = relaxer or BatchedRelaxer(cache_dir=cache_dir("relax"))
    if hull_entries is None:
        return Hull(shipped_hull(), relaxer)
    if not isinstance(hull_entries, str | Path):
        return Hull(HullReference(hull_entries, f"user-supplied entries ({len(hull_entries)})"), relaxer)
    if str(hull_entries) != SELF_CONSISTENT:
        return Hull(load_hull(hull_entries), relaxer)
    sample_elements = {el.symbol for s in samples for el in s.composition.elements}
    reference, summary = default_hull(hull_structures, sample_elements, relaxer, progress=progress)
    return Hull(reference, relaxer, {k: v for k, v in summary.items() if k != "hull_skipped_examples"})


# Condition metrics that only a relaxation can measure.
_NEEDS_RELAXATION = ("cond_spacegroup_relaxed", "cond_e_above_hull_", "cond_formation_energy_per_atom_")
_NOT_RELAXED = "not relaxed: structurally invalid (relax_invalid=True / --relax-invalid relaxes it)"


@dataclass
class StabilityResult:
    """The stability metrics and the (sample id, relaxed structure) pairs of the relaxed samples."""

    metrics: dict
    relaxed: list[tuple[str, Structure]]


def stability_metrics(
    samples, rows, todo: Sequence[int], results, *, hull: Hull, n_total: int, progress: bool = True
) -> StabilityResult:
    """Fills the stability and distance-to-relaxed keys of ``rows`` from the relaxations ``results``
    (``relax.RelaxResult``) of the samples ``todo`` (``relax_indices``); samples left unrelaxed count as not
    stable. ``n_total``: the denominator of the all-sample rates (readable and unreadable samples)."""
    from hf_crystal.evaluation.stability import HullError, corrected_entries, stability_flags

    entries = corrected_entries([r.structure for r in results], [r.energy for r in results])
    for row, s in zip(rows, samples, strict=True):
        row |= {"relax_error": _NOT_RELAXED, "metastable": False, "stable": False, "sun": False}
        row["hull_covered"] = hull.reference.covers(el.symbol for el in s.composition.elements)
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
                row["formation_energy_per_atom"] = hull.reference.formation_energy_per_atom(e)
            except HullError as exc:
                hull_error = str(exc)
        row |= {"e_hull": e_hull, "hull_error": hull_error}
        row |= stability_flags(e_hull, row["n_elements"])
        row["sun"] = row["stable"] and row["unique"] and bool(row["novel"])
        if r.structure is not None:
            row |= _distance_to_relaxed(matcher, s, r.structure)
            row["relaxed_structure"] = r.structure  # for a space-group condition; not a column
            relaxed.append((row["id"], r.structure))
    return StabilityResult(_stability_metrics(rows, results, n_total=n_total, hull=hull), relaxed)


def _stability_metrics(rows, results, *, n_total: int, hull: Hull) -> dict:
    n_relaxed = len(results)
    ok = [r for r in results if r.error is None]
    e_hulls = np.array([row.get("e_hull", np.nan) for row in rows], dtype=float)
    e_hulls = e_hulls[np.isfinite(e_hulls)]
    matched = [row for row in rows if row.get("match_relaxed")]
    nan = float("nan")
    return {
        "n_relaxed": n_relaxed,
        **_rate_with_ci("relax_success_rate", len(ok), n_relaxed),
        **_rate_with_ci("relax_converged_rate", sum(r.converged for r in results), n_relaxed),
        "relax_steps_mean": float(np.mean([r.steps for r in ok])) if ok else nan,
        "energy_drop_mean": float(np.mean([r.energy_drop_per_atom for r in ok])) if ok else nan,
        **_rate_with_ci("match_rate_to_relaxed", len(matched), len(ok)),
        "rmsd_to_relaxed": float(np.mean([row["rmsd_relaxed"] for row in matched])) if matched else nan,
        "e_hull_mean": float(e_hulls.mean()) if len(e_hulls) else nan,
        "e_hull_median": float(np.median(e_hulls)) if len(e_hulls) else nan,
        **_stability_rates(rows, n_total=n_total),
        "hull": hull.reference.description,
        "hull_entries": hull.reference.n_entries,
        **hull.summary,
    }


def _stability_rates(rows, *, n_total: int) -> dict:
    """Metastable / stable / S.U.N. rates over all samples and over the hull-covered ones, with denominators
    and Wilson intervals, and the hull coverage."""
    covered = [row for row in rows if row["hull_covered"]]
    out = {"n_stability": n_total, "n_hull_covered": len(covered)}
    out |= _rate_with_ci("hull_coverage", len(covered), n_total)
    novelty_known = all(row["novel"] is not None for row in rows)
    for suffix, subset, total in (("", rows, n_total), ("_covered", covered, len(covered))):
        for key in ("metastable", "stable", "sun"):
            name = f"{key}_rate{suffix}"
            if key == "sun" and not novelty_known:  # without a training set novelty is unknown, so is S.U.N.
                out |= {name: float("nan"), f"{name}_ci95": None}
            else:
                out |= _rate_with_ci(name, sum(bool(row[key]) for row in subset), total)
    return out


def _conditions(samples, rows, conditions, unreadable, *, relaxed: bool, progress: bool) -> dict:
    """Fills ``conditions`` / ``condition_results`` of ``rows``; returns the satisfaction metrics (rates with
    Wilson intervals over every sample that asked for a condition, unreadable ones included). Without
    relaxation the rates that need it (relaxed space group, E_hull, formation energy) are left out."""
    from hf_crystal.evaluation.conditions import condition_counts, condition_flags, parse_sample_conditions

    if len(conditions) != len(samples):
        raise ValueError(f"{len(conditions)} condition sets for {len(samples)} samples")
    asked = [parse_sample_conditions(c) for c in [*conditions, *unreadable]]
    flags = []
    for row, s, c in tqdm(
        zip(rows, samples, asked[: len(samples)], strict=True),
        total=len(rows),
        desc="conditions",
        disable=not progress,
    ):
        achieved = {
            "e_above_hull": row.get("e_hull"),
            "formation_energy_per_atom": row.get("formation_energy_per_atom"),
        }
        flags.append(condition_flags(s, c, relaxed=row.get("relaxed_structure"), achieved=achieved))
        row |= {"conditions": json.dumps(c), "condition_results": json.dumps(flags[-1])}
    flags += [condition_flags(None, c) for c in asked[len(samples) :]]
    out = {}
    for name, value in condition_counts(asked, flags).items():
        if not relaxed and name.startswith(_NEEDS_RELAXATION):
            continue
        out |= _rate_with_ci(name, *value) if isinstance(value, tuple) else {name: value}
    return out


def _distance_to_relaxed(matcher, structure: Structure, relaxed: Structure) -> dict:
    try:
        rms = matcher.get_rms_dist(structure, relaxed)
    except Exception:  # the matcher can fail on degenerate cells: counted as unmatched
        rms = None
    return {"match_relaxed": rms is not None, "rmsd_relaxed": None if rms is None else float(rms[0])}
