"""The whole evaluation run: per-sample results (CSV), flat metrics (JSON) and a Markdown report with plots.

``evaluate`` takes structures (reading files is the caller's job) and writes into ``out_dir``:
``samples.csv`` (one row per sample, written row by row), ``relaxed.cif`` (relaxed structures),
``metrics.json`` (the flat keys of ``METRICS``, which feed the model cards' eval_results), ``report.md``
and its PNG plots.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedEntry
from tqdm.auto import tqdm

from hf_crystal.evaluation import coverage as cov
from hf_crystal.evaluation.distributions import densities, distribution_distances, lattice_parameters, n_ary
from hf_crystal.evaluation.novelty import default_matcher, novel_flags, unique_flags
from hf_crystal.evaluation.validity import validity_flags

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
    "fingerprint_failed_samples": "samples whose CrystalNN fingerprint failed (never covered)",
    "fingerprint_failed_reference": "reference structures whose CrystalNN fingerprint failed (never recalled)",
    "wdist_density": "Wasserstein distance of density (g/cm^3), valid samples vs reference",
    "wdist_nary": "Wasserstein distance of the number of elements, valid samples vs reference",
    "unique_rate": "fraction of readable samples that match no earlier sample (StructureMatcher, FlowMM tol.)",
    "novel_rate": "fraction of readable samples that match no training structure",
    "relax_success_rate": "fraction of readable samples relaxed without error",
    "relax_converged_rate": "fraction of readable samples whose relaxation converged below fmax",
    "relax_steps_mean": "mean number of relaxation steps (successful relaxations)",
    "energy_drop_mean": "mean CHGNet energy drop initial -> relaxed (eV/atom)",
    "match_rate_to_relaxed": "fraction of relaxed samples that still match their relaxed structure",
    "rmsd_to_relaxed": "mean StructureMatcher RMS distance sample -> relaxed (normalised by (V/N)^(1/3))",
    "e_hull_mean": "mean energy above hull (eV/atom) of samples with one",
    "e_hull_median": "median energy above hull (eV/atom)",
    "metastable_rate": "fraction with E_hull < 0.1 eV/atom (Gruver et al.)",
    "stable_rate": "fraction with E_hull < 0 and >= 2 elements (FlowLLM)",
    "sun_rate": "fraction stable, unique and novel (S.U.N.)",
    "hull": "which convex hull the stability numbers refer to",
    "hull_entries": "number of entries in the hull",
    "hull_skipped": "self-consistent hull: structures left out (relaxation failed or MP2020 rejected them)",
}


# Columns of samples.csv, in order (stability columns stay empty when relaxation is skipped).
CSV_COLUMNS = [
    "id", "formula", "n_atoms", "n_elements", "density", "struct_valid", "comp_valid", "valid", "unique",
    "novel", "relax_error", "converged", "steps", "energy_per_atom", "energy_drop", "corrected_energy_per_atom",
    "e_hull", "hull_error", "metastable", "stable", "sun", "match_relaxed", "rmsd_relaxed",
]  # fmt: skip


def evaluate(
    samples: Sequence[Structure],
    reference: Sequence[Structure],
    train: Sequence[Structure] = (),
    *,
    out_dir: str | Path,
    sample_ids: Sequence[str] | None = None,
    n_unreadable: int = 0,
    hull_entries: str | Path | Sequence[ComputedEntry] | None = None,
    hull_structures: Sequence[Structure] | None = None,
    relaxer=None,
    relax: bool = True,
    progress: bool = True,
) -> dict:
    """Evaluate ``samples`` against ``reference`` (coverage, distributions) and ``train`` (novelty).

    Args:
        hull_entries: pymatgen entries (or a JSON file of them) for the hull; None builds the self-consistent hull
            from ``hull_structures`` (default: ``reference``) and ASE elemental references.
        relaxer: a ``BatchedRelaxer`` (default: CHGNet with its default settings and the user cache).
        relax: False skips relaxation and stability (fast structural metrics only).
        n_unreadable: samples the reader could not parse; they count as invalid and unstable.

    Returns the flat metrics dict, also written to ``out_dir/metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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

    with warnings.catch_warnings():  # pymatgen warns about elements without some property data
        warnings.simplefilter("ignore")
        flags = [validity_flags(s) for s in tqdm(samples, desc="validity", disable=not progress)]
    for key in ("struct_valid", "comp_valid", "valid"):
        metrics[key] = _rate(sum(f[key] for f in flags), n_total)
    for row, f, s, d in zip(rows, flags, samples, densities(samples), strict=True):
        row |= f | {"n_elements": len(s.composition.elements), "density": d}

    valid = [s for s, f in zip(samples, flags, strict=True) if f["valid"]]
    metrics |= _coverage(samples, reference, n_total, progress)
    metrics |= distribution_distances(valid, reference)

    matcher = default_matcher()
    unique = unique_flags(samples, matcher, progress=progress)
    novel = novel_flags(samples, train, matcher, progress=progress)
    metrics["unique_rate"] = _rate(sum(unique), len(samples))
    metrics["novel_rate"] = _rate(sum(novel), len(samples)) if train else float("nan")
    for row, u, n in zip(rows, unique, novel, strict=True):
        row |= {"unique": u, "novel": n if train else None}

    with open(out / "samples.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()

        def emit(row: dict) -> None:  # one row as soon as it is complete: an interrupt loses nothing
            writer.writerow({k: _plain(v) for k, v in row.items()})
            fh.flush()

        if relax:
            metrics |= _stability(
                samples,
                rows,
                relaxer,
                hull_entries,
                hull_structures or reference,
                n_total,
                out,
                progress,
                emit,
            )
        else:
            for row in rows:
                emit(row)
    metrics = {k: _plain(v) for k, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plots(out, samples, valid, reference, [r.get("e_hull") for r in rows])
    _markdown(out, metrics)
    return metrics


def _rate(count: float, total: int) -> float:
    return float(count) / total if total else float("nan")


def _plain(value):
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _coverage(samples, reference, n_total, progress) -> dict:
    if not samples or not reference:
        return {"cov_recall": float("nan"), "cov_precision": float("nan")}
    gen = cov.fingerprints(samples, progress=progress, desc="fingerprints: samples")
    ref = cov.fingerprints(reference, progress=progress, desc="fingerprints: reference")
    out = cov.coverage(gen[0], gen[1], ref[0], ref[1], n_generated=n_total)
    return out | {
        "fingerprint_failed_samples": int((~gen[2]).sum()),
        "fingerprint_failed_reference": int((~ref[2]).sum()),
    }


def _stability(samples, rows, relaxer, hull_entries, hull_structures, n_total, out, progress, emit) -> dict:
    from pymatgen.io.cif import CifWriter

    from hf_crystal.evaluation.relax import BatchedRelaxer, default_cache_dir
    from hf_crystal.evaluation.stability import (
        HullError,
        HullReference,
        corrected_entries,
        default_hull,
        load_entries,
        stability_flags,
    )

    relaxer = relaxer or BatchedRelaxer(cache_dir=default_cache_dir() / "relax")
    if isinstance(hull_entries, str | Path):
        hull = HullReference(load_entries(hull_entries), f"user-supplied entries: {Path(hull_entries).name}")
        hull_summary = {}
    elif hull_entries is not None:
        hull = HullReference(hull_entries, f"user-supplied entries ({len(hull_entries)})")
        hull_summary = {}
    else:
        sample_elements = {el.symbol for s in samples for el in s.composition.elements}
        hull, hull_summary = default_hull(hull_structures, sample_elements, relaxer, progress=progress)
    results = relaxer.relax(samples, progress=progress, desc="relax samples")
    entries = corrected_entries([r.structure for r in results], [r.energy for r in results])
    matcher = default_matcher()
    with open(out / "relaxed.cif", "w") as cif:
        for row, s, r, e in tqdm(
            zip(rows, samples, results, entries, strict=True),
            total=len(rows),
            desc="E_hull",
            disable=not progress,
        ):
            row |= {"relax_error": r.error, "converged": r.converged, "steps": r.steps}
            row |= {"energy_per_atom": r.energy_per_atom, "energy_drop": r.energy_drop_per_atom}
            e_hull, hull_error = float("nan"), None
            if e is not None:
                row["corrected_energy_per_atom"] = e.energy_per_atom
                try:
                    e_hull = hull.e_above_hull(e)
                except HullError as exc:
                    hull_error = str(exc)
            row |= {"e_hull": e_hull, "hull_error": hull_error}
            row |= stability_flags(e_hull, row["n_elements"])
            row["sun"] = row["stable"] and row["unique"] and bool(row["novel"])
            if r.structure is not None:
                row |= _distance_to_relaxed(matcher, s, r.structure)
                cif.write(str(CifWriter(r.structure)).replace("data_", f"data_{row['id']}_", 1) + "\n")
            emit(row)
    ok = [r for r in results if r.error is None]
    e_hulls = np.array([row["e_hull"] for row in rows], dtype=float)
    e_hulls = e_hulls[np.isfinite(e_hulls)]
    matched = [row for row in rows if row.get("match_relaxed")]
    return {
        "relax_success_rate": _rate(len(ok), len(samples)),
        "relax_converged_rate": _rate(sum(r.converged for r in results), len(samples)),
        "relax_steps_mean": float(np.mean([r.steps for r in ok])) if ok else float("nan"),
        "energy_drop_mean": float(np.mean([r.energy_drop_per_atom for r in ok])) if ok else float("nan"),
        "match_rate_to_relaxed": _rate(len(matched), len(ok)),
        "rmsd_to_relaxed": float(np.mean([row["rmsd_relaxed"] for row in matched]))
        if matched
        else float("nan"),
        "e_hull_mean": float(e_hulls.mean()) if len(e_hulls) else float("nan"),
        "e_hull_median": float(np.median(e_hulls)) if len(e_hulls) else float("nan"),
        "metastable_rate": _rate(sum(row["metastable"] for row in rows), n_total),
        "stable_rate": _rate(sum(row["stable"] for row in rows), n_total),
        # Without a training set novelty is unknown, and so is S.U.N.
        "sun_rate": _rate(sum(row["sun"] for row in rows), n_total)
        if all(row["novel"] is not None for row in rows)
        else float("nan"),
        "hull": hull.description,
        "hull_entries": hull.n_entries,
        **{k: v for k, v in hull_summary.items() if k != "hull_skipped_examples"},
    }


def _distance_to_relaxed(matcher, structure: Structure, relaxed: Structure) -> dict:
    try:
        rms = matcher.get_rms_dist(structure, relaxed)
    except Exception:  # the matcher can fail on degenerate cells: counted as unmatched
        rms = None
    return {"match_relaxed": rms is not None, "rmsd_relaxed": None if rms is None else float(rms[0])}


def _plots(out: Path, samples, valid, reference, e_hulls) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = np.array([x for x in e_hulls if x is not None and np.isfinite(x)], dtype=float)
        if len(e):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.hist(np.clip(e, -0.5, 2.0), bins=50, color="tab:blue")
            ax.axvline(0.1, color="k", ls="--", lw=1, label="metastable (0.1 eV/atom)")
            ax.set(xlabel="E_hull (eV/atom, clipped to [-0.5, 2])", ylabel="samples")
            ax.legend()
            _save(fig, out / "e_hull.png")
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        nary_s, nary_r = n_ary(valid), n_ary(reference)
        bins = np.arange(0.5, max([*nary_s, *nary_r, 1]) + 1.5)
        axes[0].hist([nary_s, nary_r], bins=bins, density=True, label=["samples (valid)", "reference"])
        axes[0].set(xlabel="number of elements", ylabel="fraction")
        axes[0].legend()
        axes[1].hist(
            [densities(valid), densities(reference)], bins=40, density=True, label=["samples", "reference"]
        )
        axes[1].set(xlabel="density (g/cm^3)", ylabel="probability density")
        axes[1].legend()
        _save(fig, out / "nary_density.png")
        fig, axes = plt.subplots(2, 3, figsize=(11, 6))
        lat_s, lat_r = lattice_parameters(samples), lattice_parameters(reference)
        for k, (ax, name) in enumerate(
            zip(axes.flat, ["a (Å)", "b (Å)", "c (Å)", "α (°)", "β (°)", "γ (°)"], strict=True)
        ):
            ax.hist([lat_s[:, k], lat_r[:, k]], bins=40, density=True, label=["samples", "reference"])
            ax.set(xlabel=name)
        axes[0, 0].legend()
        _save(fig, out / "lattice.png")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _markdown(out: Path, metrics: dict) -> None:
    lines = ["# Evaluation report", "", "| metric | value | meaning |", "|---|---|---|"]
    for key, value in metrics.items():
        shown = f"{value:.4g}" if isinstance(value, float) else ("n/a" if value is None else str(value))
        lines.append(f"| `{key}` | {shown} | {METRICS.get(key, '')} |")
    lines += [
        "",
        f"Stability numbers refer to: **{metrics.get('hull', 'no hull (relaxation skipped)')}**.",
        "",
    ]
    for png, title in [
        ("e_hull.png", "Energy above hull"),
        ("nary_density.png", "Number of elements and density"),
        ("lattice.png", "Lattice parameters"),
    ]:
        if (out / png).exists():
            lines += [f"## {title}", "", f"![{title}]({png})", ""]
    lines += ["Per-sample results: `samples.csv`; relaxed structures: `relaxed.cif`.", ""]
    (out / "report.md").write_text("\n".join(lines))
