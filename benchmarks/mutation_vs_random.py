"""Mutation search: infill-proposed substitutions vs random ones from pymatgen's substitution table, same budget.

    python benchmarks/mutation_vs_random.py --model models/crystal-llm-mp20-small --hull HULL.json.gz \\
        --perov perov_5/val.csv --mp20 mp_20/val.csv --mp20-ids mp_20/val_report_ids.txt \\
        --n-perov 4 --n-mp20 4 --rounds 2 --population 8 --children 4 --out runs/mutate/bench

Draws the seeds (seeded, at most --max-atoms atoms each) from the Perov-5 and MP-20 files into
OUT/seeds.cif, then runs `hf-crystal mutate` once per proposer (in parallel, one torch thread each) with
the same seeds, rounds, population, children, acceptance rule and seed, so each row spends the same
budget of candidates (relaxations), and prints one table from the logs: candidates, how many got an
E_hull, how many end below --threshold (and how many distinct formulas), accepted, median and best
E_hull, wall time; with --hull, how many of the candidates below the threshold lie in a chemical system
in which the hull holds a compound (elsewhere E_hull is measured against lower-order systems only, so
it is optimistic). --pool adds a table over the logs of several finished output folders.
Proposers: `infill` (the model ranks replacements), `infill+subs` (the model ranks only replacements
pymatgen's SubstitutionPredictor allows) and `random` (replacements sampled from SubstitutionPredictor's
probabilities). Each command is printed before it runs; a rerun resumes the logs
(`--resume`) and skips proposers whose run finished.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROPOSERS = {
    "infill": ["--proposer", "infill"],
    "infill+subs": ["--proposer", "infill", "--substitutions"],
    "random": ["--proposer", "random"],
}


def _seeds(args: argparse.Namespace, out: Path) -> int:
    """Write OUT/seeds.cif (ids perov-<id> / mp20-<id>) unless it exists; returns the number of seeds."""
    from hf_crystal.structure_io import append_structures, read_structures

    path = out / "seeds.cif"
    if path.exists():
        return len(read_structures(path)[0])
    rng = np.random.default_rng(args.seed)
    chosen = []
    for prefix, source, n, id_file in (
        ("perov", args.perov, args.n_perov, None),
        ("mp20", args.mp20, args.n_mp20, args.mp20_ids),
    ):
        if not n:
            continue
        ids, structures, _ = read_structures(source)
        keep = set(Path(id_file).read_text().split()) if id_file else None
        pool = [
            (i, s)
            for i, s in zip(ids, structures, strict=True)
            if len(s) <= args.max_atoms and (keep is None or i in keep)
        ]
        for k in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False)):
            chosen.append((f"{prefix}-{pool[k][0]}", pool[k][1]))
    append_structures(path, chosen)
    return len(chosen)


def _hull_systems(path: str | None) -> set[frozenset[str]] | None:
    """Chemical systems in which the hull file holds at least one compound (None without --hull)."""
    if not path:
        return None
    from hf_crystal.evaluation.stability import load_entries

    return {
        frozenset(el.symbol for el in e.composition.elements)
        for e in load_entries(path)
        if len(e.composition.elements) > 1
    }


def _row(name: str, logs: list[Path], seconds: float | None, args, systems) -> list[str]:
    """One table row over the logs of one proposer (several output folders pool their candidates)."""
    from pymatgen.core import Composition

    from hf_crystal.mutation import read_log, summarize

    rows = [r for log in logs for r in read_log(log)]
    s = summarize(rows, threshold=args.threshold)
    seeds = [r for r in rows if r["round"] == 0]
    below = [r for r in rows if r["round"] >= 1 and r["e_hull"] < args.threshold]

    def f(x):
        return "-" if math.isnan(x) else f"{x:.3f}"

    covered = "-"
    if systems is not None:
        n = sum(frozenset(el.symbol for el in Composition(r["formula"]).elements) in systems for r in below)
        covered = str(n)
    return [
        name,
        str(len(seeds)),
        str(s["n_candidates"]),
        str(s["n_with_e_hull"]),
        f"{s['n_below']} ({s['n_below'] / s['n_candidates']:.0%})" if s["n_candidates"] else "0",
        str(s["n_unique_below"]),
        covered,
        str(s["n_accepted"]),
        f(s["median_e_hull"]),
        f(s["best_e_hull"]),
        "-" if seconds is None else f"{seconds / 60:.1f}",
    ]


def _table(args, folders: list[Path], timings: dict, systems) -> None:
    header = ["proposer", "seeds", "candidates", "with E_hull", f"E_hull < {args.threshold:g}"]
    header += ["formulas < thr.", "< thr., system in hull", "accepted", "median E_hull", "best E_hull"]
    header += ["wall min"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in args.proposers:
        logs = [folder / f"{name}.csv" for folder in folders]
        row = _row(name, logs, timings.get(name) if len(folders) == 1 else None, args, systems)
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="crystal LLM trained with infill examples")
    parser.add_argument("--hull", help="entries file for E_hull (default: mutate's default)")
    parser.add_argument("--perov", help="Perov-5 CSV")
    parser.add_argument("--mp20", help="MP-20 CSV")
    parser.add_argument("--mp20-ids", help="keep only these MP-20 ids (e.g. val_report_ids.txt)")
    parser.add_argument("--n-perov", type=int, default=4)
    parser.add_argument("--n-mp20", type=int, default=4)
    parser.add_argument("--max-atoms", type=int, default=12, help="largest seed (atoms per cell)")
    parser.add_argument("--proposers", nargs="+", choices=list(PROPOSERS), default=["infill", "random"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--accept", default="improve")
    parser.add_argument("--threshold", type=float, default=0.1, help="E_hull counted as a hit (eV/atom)")
    parser.add_argument("--max-steps", type=int, help="relaxation steps (default: mutate's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequential", action="store_true", help="one proposer at a time")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pool", nargs="+", type=Path, help="finished output folders to pool with --out")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    n_seeds = _seeds(args, args.out)
    print(f"{n_seeds} seeds in {args.out / 'seeds.cif'}", flush=True)
    common = [str(args.out / "seeds.cif"), "--model", args.model, "--rounds", str(args.rounds)]
    common += ["--population", str(args.population), "--children", str(args.children)]
    common += ["--accept", args.accept, "--threshold", str(args.threshold), "--seed", str(args.seed)]
    common += ["--threads", "1", "--no-progress", "--cache-dir", str(args.out / "relax-cache")]
    if args.hull:
        common += ["--hull", args.hull]
    if args.max_steps is not None:
        common += ["--max-steps", str(args.max_steps)]
    timings_path = args.out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    running = {}
    for name in args.proposers:
        if name in timings:
            continue  # finished in an earlier run
        log = args.out / f"{name}.csv"
        argv = ["mutate", *common, *PROPOSERS[name], "--out", str(log)]
        argv += ["--structures", str(args.out / f"{name}-accepted.cif")]
        if log.exists():
            argv.append("--resume")
        print("$ hf-crystal " + " ".join(argv), flush=True)
        handle = (args.out / f"{name}.log").open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "hf_crystal.commands", *argv], stdout=handle, stderr=handle
        )
        running[name] = (process, time.time())
        if args.sequential:
            process.wait()
    while running:  # each run's wall time ends when it does, whatever the order
        for name, (process, start) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            if process.returncode != 0:
                sys.exit(f"{name} failed: see {args.out / (name + '.log')}")
            timings[name] = time.time() - start
            timings_path.write_text(json.dumps(timings, indent=1))
        time.sleep(1)
    systems = _hull_systems(args.hull)
    _table(args, [args.out], timings, systems)
    if args.pool:
        print(f"\npooled over {', '.join(str(p) for p in [args.out, *args.pool])}:")
        _table(args, [args.out, *args.pool], {}, systems)


if __name__ == "__main__":
    main()
