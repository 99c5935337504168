"""Writing an evaluation: ``write_report(result, out_dir)`` turns an ``EvaluationResult`` into files.

Files in ``out_dir``: ``samples.csv`` (one row per sample, columns ``SAMPLE_COLUMNS``), ``relaxed.cif``
(relaxed structures, one block per sample named after it; only when relaxation ran), the PNG plots
(``e_hull.png`` when there are energies above hull, ``nary_density.png``, ``lattice.png``), ``report.md``
and ``metrics.json`` (the flat keys of ``METRICS``, which feed the model cards' eval_results).

Interruption: ``compute_metrics`` does all the work and writes nothing but the relaxation cache, so an
interrupt during it leaves ``out_dir`` untouched while keeping every finished relaxation in the
``BatchedRelaxer`` cache; the rerun resumes from there. ``write_report`` takes seconds; each file is
written to a temporary name and renamed, and ``metrics.json`` comes last, so a folder with a
``metrics.json`` holds a complete report (of this run or of an earlier one).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np

from hf_crystal.evaluation.metrics import METRICS, SAMPLE_COLUMNS, EvaluationResult
from hf_crystal.evaluation.stability import SHIPPED_HULL
from hf_crystal.prompts import CONDITIONS

__all__ = ["CSV_COLUMNS", "METRICS", "SHIPPED_HULL_CHECK", "write_report"]

CSV_COLUMNS = SAMPLE_COLUMNS  # the columns of samples.csv
# How the shipped hull compares with Materials Project's DFT E_hull: `python benchmarks/hull_dft_check.py`.
SHIPPED_HULL_CHECK = (
    "Shipped hull against Materials Project DFT (benchmarks/hull_dft_check.py; the 7140 MP-20 val structures "
    "with MP's e_above_hull, each held out of the hull in turn): MAE 0.012 eV/atom (ours - MP: -0.009 on "
    "average), metastable-label (E_hull < 0.1) agreement 99.6%, stable-label (E_hull <= 0) agreement 67.7% "
    "(stable here: 5412, in MP: 3510, both: 3309). The hull holds MP-20's ~20k structures, not all of MP's "
    "competing phases, so it lies higher (E_hull lower) and calls more structures stable; all 7140 lie within "
    "0.08 eV/atom of MP's hull, so the check cannot show false metastable calls."
)


def write_report(result: EvaluationResult, out_dir: str | Path) -> Path:
    """Write ``result`` into ``out_dir`` (created if needed): samples.csv, relaxed.cif (if relaxed), plots,
    report.md and, last, metrics.json. Returns ``out_dir`` as a Path."""
    from hf_crystal.structure_io import cif_block

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _atomic(out / "samples.csv", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in CSV_COLUMNS} for row in result.rows)
    if result.relaxed is not None:  # relaxation ran (possibly with every sample failing)
        with _atomic(out / "relaxed.cif") as fh:
            fh.writelines(cif_block(structure, name) + "\n" for name, structure in result.relaxed)
    plots = _plots(out, result)
    _markdown(out, result.metrics, plots=plots, relaxed=result.relaxed is not None)
    with _atomic(out / "metrics.json") as fh:
        fh.write(json.dumps(result.metrics, indent=2) + "\n")
    return out


class _atomic:  # noqa: N801 - used like open()
    """``open(path, "w")`` that writes ``path.tmp<pid>`` and renames it over ``path`` on success."""

    def __init__(self, path: Path, **kwargs):
        self.path, self.tmp, self.kwargs = path, path.with_name(f"{path.name}.tmp{os.getpid()}"), kwargs

    def __enter__(self):
        self.handle = open(self.tmp, "w", **self.kwargs)  # noqa: SIM115
        return self.handle

    def __exit__(self, exc_type, exc, tb):
        self.handle.close()
        if exc_type is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _plots(out: Path, result: EvaluationResult) -> list[str]:
    """Writes the plots; returns the names of the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.distributions
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = np.array(result.e_hulls, dtype=float)
        if len(e):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.hist(np.clip(e, -0.5, 2.0), bins=50, color="tab:blue")
            ax.axvline(0.1, color="k", ls="--", lw=1, label="metastable (0.1 eV/atom)")
            ax.set(xlabel="E_hull (eV/atom, clipped to [-0.5, 2])", ylabel="samples")
            ax.legend()
            written.append(_save(fig, out / "e_hull.png"))
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        bins = np.arange(0.5, max([*d.nary_valid, *d.nary_reference, 1]) + 1.5)
        axes[0].hist(
            [d.nary_valid, d.nary_reference], bins=bins, density=True, label=["samples (valid)", "reference"]
        )
        axes[0].set(xlabel="number of elements", ylabel="fraction")
        axes[0].legend()
        axes[1].hist(
            [d.density_valid, d.density_reference], bins=40, density=True, label=["samples", "reference"]
        )
        axes[1].set(xlabel="density (g/cm^3)", ylabel="probability density")
        axes[1].legend()
        written.append(_save(fig, out / "nary_density.png"))
        fig, axes = plt.subplots(2, 3, figsize=(11, 6))
        lat_s, lat_r = d.lattice_samples, d.lattice_reference
        for k, (ax, name) in enumerate(
            zip(axes.flat, ["a (Å)", "b (Å)", "c (Å)", "α (°)", "β (°)", "γ (°)"], strict=True)
        ):
            ax.hist([lat_s[:, k], lat_r[:, k]], bins=40, density=True, label=["samples", "reference"])
            ax.set(xlabel=name)
        axes[0, 0].legend()
        written.append(_save(fig, out / "lattice.png"))
        if _conditions_plot(plt, result.rows, out / "conditions.png"):
            written.append("conditions.png")
        if _crystal_system_plot(plt, result.metrics, out / "crystal_systems.png"):
            written.append("crystal_systems.png")
    return written


def _crystal_system_plot(plt, metrics: dict, path: Path) -> bool:
    """Crystal-system shares (symprec 0.1) of the samples, the relaxed samples and the reference; False when the
    symmetry metrics were not computed."""
    from hf_crystal.symmetry import CRYSTAL_SYSTEMS

    sets = {
        "samples": metrics.get("crystal_systems_sp0.1"),
        "relaxed": metrics.get("relaxed_crystal_systems_sp0.1"),
        "reference": metrics.get("reference_crystal_systems_sp0.1"),
    }
    sets = {name: shares for name, shares in sets.items() if shares}
    if not sets:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(sets)
    x = np.arange(len(CRYSTAL_SYSTEMS))
    for k, (name, shares) in enumerate(sets.items()):
        ax.bar(x + (k - (len(sets) - 1) / 2) * width, [shares[c] for c in CRYSTAL_SYSTEMS], width, label=name)
    ax.set_xticks(x, CRYSTAL_SYSTEMS, rotation=20)
    ax.set(ylabel="share of structures with a group", title="crystal systems (spglib, symprec 0.1 Å)")
    ax.legend()
    _save(fig, path)
    return True


def _conditions_plot(plt, rows: list[dict], path: Path) -> bool:
    """Requested vs achieved, one panel per condition the samples asked for; False when none did."""
    pairs = [
        (json.loads(r["conditions"]), json.loads(r["condition_results"])) for r in rows if r.get("conditions")
    ]
    keys = [
        k
        for k in ("formula", "spacegroup", "e_above_hull", "formation_energy_per_atom")
        if any(k in c for c, _ in pairs)
    ]
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        picked = [(c, f) for c, f in pairs if key in c]
        if key == "formula":
            bars = {"reduced formula": np.mean([f["formula_reduced_match"] for _, f in picked])}
            cells = [f["formula_cell_match"] for _, f in picked if f["formula_cell_match"] is not None]
            if cells:  # n/a where the number of formula units was free
                bars[f"whole cell (N={len(cells)})"] = np.mean(cells)
            ax.bar(list(bars), list(bars.values()), color="tab:blue")
            ax.set(ylim=(0, 1), ylabel="fraction matching", title=f"formula (N={len(picked)} readable)")
            continue
        found_key = "spacegroup_0.1" if key == "spacegroup" else f"{key}_achieved"
        xy = np.array(
            [(c[key], f[found_key]) for c, f in picked if f.get(found_key) is not None], dtype=float
        )
        if len(xy):
            ax.scatter(xy[:, 0], xy[:, 1], s=10, alpha=0.5)
            low, high = float(xy.min()), float(xy.max())
            ax.plot([low, high], [low, high], "k--", lw=1)
        label = "space group (symprec 0.1)" if key == "spacegroup" else key
        ax.set(xlabel=f"requested {label}", ylabel="achieved", title=f"{label} (N={len(xy)} measured)")
    _save(fig, path)
    return True


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)
    return path.name


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_shown(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)


def _stability_lines(metrics: dict) -> list[str]:
    """The hull, its coverage of the samples (a warning below one half) and the stability rates in words."""
    if "hull" not in metrics:
        return ["Stability: not computed (relaxation skipped)."]
    lines = [f"Stability numbers refer to: **{metrics['hull']}**."]
    if metrics["hull"].startswith(f"shipped hull {SHIPPED_HULL.name}"):
        lines += ["", SHIPPED_HULL_CHECK]
    coverage = metrics["hull_coverage"]
    lines += [
        "",
        f"Hull coverage: {metrics['n_hull_covered']} of {metrics['n_stability']} samples "
        f"({_shown(coverage)}, 95% CI {_shown(metrics['hull_coverage_ci95'])}) have a compound of the hull in "
        "their chemical system or a subsystem of it.",
    ]
    for key, what in (("metastable", "metastable"), ("stable", "stable"), ("sun", "S.U.N.")):
        if key == "sun" and metrics["sun_rate"] is None:
            lines.append(f"- {what}: n/a (novelty needs a training set)")
            continue
        lines.append(
            f"- {what}: {_shown(metrics[f'{key}_rate'])} {_shown(metrics[f'{key}_rate_ci95'])} of all "
            f"{metrics['n_stability']}; {_shown(metrics[f'{key}_rate_covered'])} "
            f"{_shown(metrics[f'{key}_rate_covered_ci95'])} of the {metrics['n_hull_covered']} covered"
        )
    if coverage is None or coverage < 0.5:
        lines += [
            "",
            "**Warning: the hull covers fewer than half of the samples' chemical systems.** For an uncovered "
            "sample E_hull is measured against elemental references only, so any compound with a negative "
            "formation energy counts as stable: the all-sample stability rates overstate stability. Read the "
            "rates over covered samples, or evaluate against a hull that holds these chemistries (--hull FILE).",
        ]
    return lines


def _condition_lines(metrics: dict) -> list[str]:
    """Condition satisfaction as a table (rates over every sample that asked, with 95% Wilson intervals)."""
    rates = [k for k in metrics if k.startswith("cond_") and f"{k}_ci95" in metrics]
    if not rates:
        return []
    lines = ["## Condition satisfaction", ""]
    lines += [
        "Rates are over every sample that asked for the condition (unreadable and unrelaxed ones miss).",
        "",
    ]
    lines += ["| condition | asked | rate | 95% CI |", "|---|---|---|---|"]
    for key in rates:
        condition = next(c for c in CONDITIONS if key.startswith(f"cond_{c}"))
        asked = metrics.get(
            f"{key}_n", metrics[f"cond_{condition}_n"]
        )  # cond_formula_cell: the whole cells asked
        lines.append(f"| `{key}` | {asked} | {_shown(metrics[key])} | {_shown(metrics[f'{key}_ci95'])} |")
    for key in (k for k in metrics if k.startswith("cond_") and k.endswith("_mae")):
        measured = metrics[key.replace("_mae", "_measured")]
        lines.append(
            f"\nMean absolute error `{key}`: {_shown(metrics[key])} over {measured} measured samples."
        )
    return [*lines, ""]


def _symmetry_lines(metrics: dict) -> list[str]:
    """P1 / undetermined rates and the space-group chi-square as a table, per structure set and symprec."""
    rows = []
    for prefix, name in (("", "samples"), ("relaxed_", "relaxed samples")):
        for symprec in ("0.1", "0.01"):
            key = f"{prefix}{{}}_sp{symprec}"
            if key.format("n_symmetry") not in metrics:
                continue
            rows.append(
                f"| {name} | {symprec} | {metrics[key.format('n_symmetry')]} | "
                f"{_shown(metrics[key.format('p1_rate')])} {_shown(metrics[key.format('p1_rate_ci95')])} | "
                f"{_shown(metrics[key.format('undetermined_rate')])} | "
                f"{_shown(metrics[key.format('tetragonal_or_higher_rate')])} | "
                f"{metrics[key.format('n_space_groups')]} | {_shown(metrics[key.format('sg_chi2')])} "
                f"(data floor {_shown(metrics[key.format('sg_chi2_floor')])}) | "
                f"{_shown(metrics[key.format('reference_p1_rate')])} |"
            )
    if not rows:
        return []
    return [
        "## Symmetry",
        "",
        "Space groups by spglib (pymatgen SpacegroupAnalyzer); chi-square as WyckoffTransformer's get_sg_chi2, "
        "beside what as many reference structures drawn from the reference score (it shrinks as N grows).",
        "",
        "| structures | symprec (Å) | N | P1 (95% CI) | undetermined | tetragonal or higher | groups "
        "| SG chi-square | reference P1 |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _markdown(out: Path, metrics: dict, *, plots: list[str], relaxed: bool) -> None:
    lines = ["# Evaluation report", "", *_stability_lines(metrics), "", *_condition_lines(metrics)]
    lines += _symmetry_lines(metrics)
    lines += ["| metric | value | meaning |", "|---|---|---|"]
    for key, value in metrics.items():
        lines.append(f"| `{key}` | {_shown(value)} | {METRICS.get(key, '')} |")
    lines += [
        "",
        f"Coverage used: **{metrics.get('coverage_settings', 'n/a')}**.",
        "",
    ]
    for png, title in [
        ("e_hull.png", "Energy above hull"),
        ("nary_density.png", "Number of elements and density"),
        ("lattice.png", "Lattice parameters"),
        ("conditions.png", "Requested vs achieved conditions"),
        ("crystal_systems.png", "Crystal systems"),
    ]:
        if png in plots:
            lines += [f"## {title}", "", f"![{title}]({png})", ""]
    lines += [
        "Per-sample results: `samples.csv`" + ("; relaxed structures: `relaxed.cif`." if relaxed else "."),
        "",
    ]
    with _atomic(out / "report.md") as fh:
        fh.write("\n".join(lines))
