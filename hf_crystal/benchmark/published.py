"""Published figures to print a benchmark beside, and the table that does it.

The figures live in ``hf_crystal/evaluation/data/published_<dataset>.json``: one row per number with the model,
the metric (a ``metrics.json`` key), the value, the paper, where this project read it and the protocol behind it.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["TABLE_METRICS", "benchmark_table", "published_figures"]

# The rows of the benchmark table, in order: (metrics.json key, label).
TABLE_METRICS = (
    ("struct_valid", "structural validity"),
    ("comp_valid", "compositional validity"),
    ("valid", "validity"),
    ("cov_recall", "COV-R"),
    ("cov_precision", "COV-P"),
    ("wdist_density", "W density (g/cm^3)"),
    ("wdist_nary", "W N-ary"),
    ("unique_rate", "unique"),
    ("novel_rate", "novel"),
    ("metastable_rate", "metastable (E_hull < 0.1)"),
    ("stable_rate", "stable (E_hull < 0, N-ary >= 2)"),
    ("sun_rate", "S.U.N."),
    ("rmsd_to_relaxed", "RMSD to relaxed"),
    ("p1_rate", "P1 share (symprec 0.1)"),
    ("sg_chi2", "space-group chi-square"),
)


def published_figures(dataset: str = "mp20") -> list[dict]:
    """The published rows for ``dataset`` (keys model, metric, value, paper, source, protocol)."""
    path = resources.files("hf_crystal.evaluation") / "data" / f"published_{dataset}.json"
    if not path.is_file():
        raise ValueError(f"no published figures for dataset {dataset!r} (have: mp20)")
    return json.loads(path.read_text())["rows"]


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def benchmark_table(metrics: dict, published: list[dict], *, label: str = "this run") -> str:
    """A Markdown table of ``metrics`` beside the published figures (one column per published model), with a
    numbered footnote per published number saying where it comes from and under which protocol."""
    models = list(dict.fromkeys(row["model"] for row in published))
    notes: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for row in published:
        notes.append(
            f"{row['model']}, {row['metric']}: {row['paper']}; read in {row['source']}; {row['protocol']}."
        )
        cells[row["model"], row["metric"]] = f"{_cell(row['value'])}[^{len(notes)}]"
    lines = [f"| metric | {label} | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
    for key, name in TABLE_METRICS:
        ours = metrics.get(key)
        if ours is None and not any((model, key) in cells for model in models):
            continue
        interval = metrics.get(f"{key}_ci95")
        shown = _cell(ours) or "n/a"
        if ours is not None and interval and None not in interval:
            shown += f" [{interval[0]:.3g}, {interval[1]:.3g}]"
        lines.append(
            f"| {name} | {shown} | " + " | ".join(cells.get((model, key), "") for model in models) + " |"
        )
    lines += ["", *(f"[^{i}]: {note}" for i, note in enumerate(notes, start=1))]
    return "\n".join(lines) + "\n"


def benchmark_markdown(metrics: dict, timings: dict[str, float], published: list[dict]) -> str:
    """``benchmark.md``: the protocol of the run, its table beside the published figures, the wall time per stage."""
    lines = [
        "# Benchmark",
        "",
        f"Model: `{metrics.get('benchmark_model')}`, refiner: `{metrics.get('benchmark_refiner')}`, seed "
        f"{metrics.get('seed')}. Protocol: {metrics.get('protocol')}; reference: {metrics.get('benchmark_reference')} "
        f"({metrics.get('n_reference')} structures; the published rows use MP-20's 9,046-structure test split), "
        f"{metrics.get('n_train')} training structures; {metrics.get('n_unreadable')} unreadable samples counted as "
        "invalid.",
        "",
        f"Stability refers to: {metrics.get('hull', 'n/a (no relaxation)')}.",
        "",
        benchmark_table(metrics, published),
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()),
        "",
    ]
    return "\n".join(lines)
