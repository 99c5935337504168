"""Sampling sweep: temperature x top_p for one model; validity, uniqueness, novelty, coverage (and stability).

    python benchmarks/sweep_sampling.py --model MODEL --reference val_select.csv --train train.csv \\
        --temperatures 0.5 0.7 0.9 1.0 --top-p 0.9 1.0 --num 256 --out runs/sweep [--stability --hull H]

Gruver et al. sample at temperature 0.7 and top_p 0.9 / temperature 1.0 and top_p 0.7 (their table 1);
select on a selection split, never on the split you report. Each cell draws `--num` unconditional samples
(`pipeline("crystal-generation")`, same seed for every cell), writes them to `--out/T{t}_p{p}.cif` and its
metrics (`compute_metrics`; `--stability` adds CHGNet relaxation and E_hull) to `--out/T{t}_p{p}.json`
as soon as the cell is done; a rerun skips finished cells. Prints one table and saves a heat map per
metric in `--out/sweep.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal.evaluation.metrics import compute_metrics
from hf_crystal.loading import load_crystal_model
from hf_crystal.structure_io import append_structures, read_structures

COLUMNS = {
    "struct_valid": "struct. valid",
    "comp_valid": "comp. valid",
    "valid": "valid",
    "unique_rate": "unique",
    "novel_rate": "novel",
    "cov_recall": "COV-R",
    "cov_precision": "COV-P",
    "metastable_rate": "metastable",
}


def _cell(args, pipe, reference, train, temperature: float, top_p: float) -> dict:
    stem = f"T{temperature:g}_p{top_p:g}"
    result, cif = args.out / f"{stem}.json", args.out / f"{stem}.cif"
    if result.exists():
        return json.loads(result.read_text())
    samples = pipe(args.num, temperature=temperature, top_p=top_p, seed=args.seed, batch_size=args.batch_size)
    parsed = [
        (f"sample-{i:06d}", s["structure"]) for i, s in enumerate(samples) if s["structure"] is not None
    ]
    cif.unlink(missing_ok=True)
    append_structures(cif, parsed)
    metrics = compute_metrics(
        [s for _, s in parsed],
        reference,
        train,
        sample_ids=[name for name, _ in parsed],
        n_unreadable=len(samples) - len(parsed),
        hull_entries=args.hull,
        relax=args.stability,
        progress=False,
    ).metrics
    result.write_text(json.dumps(metrics, indent=1))
    return metrics


def _heat_maps(cells: dict, temperatures: list[float], top_ps: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in COLUMNS if any(cells[c].get(k) is not None for c in cells)]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 0.6 * len(temperatures) + 1.6))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        grid = np.array([[cells[t, p].get(key) or np.nan for p in top_ps] for t in temperatures], dtype=float)
        ax.imshow(grid, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(title=COLUMNS[key], xlabel="top_p", ylabel="temperature")
        ax.set_xticks(range(len(top_ps)), [f"{p:g}" for p in top_ps])
        ax.set_yticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--reference", required=True, help="reference structures (coverage)")
    parser.add_argument("--train", help="training structures (novelty)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.7, 0.9, 1.0])
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.7, 0.9, 1.0])
    parser.add_argument("--num", type=int, default=256, help="samples per cell")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="reference / train structures used")
    parser.add_argument("--stability", action="store_true", help="relax with CHGNet: metastable rate")
    parser.add_argument("--hull", help="entries file for the hull (with --stability)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reference = read_structures(args.reference)[1][: args.limit]
    train = read_structures(args.train)[1][: args.limit] if args.train else []
    model, tokenizer = load_crystal_model(args.model, merge=True)  # adapters too, their base by Hub id
    pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer, refiner=None)
    cells = {(t, p): _cell(args, pipe, reference, train, t, p) for t in args.temperatures for p in args.top_p}
    print(
        f"\n{args.num} samples per cell, seed {args.seed}; reference {len(reference)}, train {len(train)}\n"
    )
    keys = [k for k in COLUMNS if any(m.get(k) is not None for m in cells.values())]
    print("| temperature | top_p | " + " | ".join(COLUMNS[k] for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for (t, p), m in cells.items():
        values = ["–" if m.get(k) is None else f"{m[k]:.3f}" for k in keys]
        print(f"| {t:g} | {p:g} | " + " | ".join(values) + " |")
    _heat_maps(cells, args.temperatures, args.top_p, args.out / "sweep.png")
    print(f"\nheat maps: {args.out / 'sweep.png'}")


if __name__ == "__main__":
    main()
