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

__all__ = ["CSV_COLUMNS", "METRICS", "write_report"]

CSV_COLUMNS = SAMPLE_COLUMNS  # the columns of samples.csv


def write_report(result: EvaluationResult, out_dir: str | Path) -> Path:
    """Write ``result`` into ``out_dir`` (created if needed): samples.csv, relaxed.cif (if relaxed), plots,
    report.md and, last, metrics.json. Returns ``out_dir`` as a Path."""
    from hf_crystal.data import cif_block

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
    return written


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)
    return path.name


def _markdown(out: Path, metrics: dict, *, plots: list[str], relaxed: bool) -> None:
    lines = ["# Evaluation report", "", "| metric | value | meaning |", "|---|---|---|"]
    for key, value in metrics.items():
        shown = f"{value:.4g}" if isinstance(value, float) else ("n/a" if value is None else str(value))
        lines.append(f"| `{key}` | {shown} | {METRICS.get(key, '')} |")
    lines += [
        "",
        f"Stability numbers refer to: **{metrics.get('hull', 'no hull (relaxation skipped)')}**.",
        f"Coverage used: **{metrics.get('coverage_settings', 'n/a')}**.",
        "",
    ]
    for png, title in [
        ("e_hull.png", "Energy above hull"),
        ("nary_density.png", "Number of elements and density"),
        ("lattice.png", "Lattice parameters"),
    ]:
        if png in plots:
            lines += [f"## {title}", "", f"![{title}]({png})", ""]
    lines += [
        "Per-sample results: `samples.csv`" + ("; relaxed structures: `relaxed.cif`." if relaxed else "."),
        "",
    ]
    with _atomic(out / "report.md") as fh:
        fh.write("\n".join(lines))
