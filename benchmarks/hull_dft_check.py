"""Checks of the hull: our E_hull against Materials Project's DFT values, and static against relaxed energies.

DFT check (default): on the rows of MP-20's val.csv that carry MP's ``e_above_hull``, compares our E_hull
(CHGNet + MP2020 hull, the shipped one unless ``--hull``) with MP's, two ways:

- leave-one-out: each val structure is held out of the hull in turn (train and the rest of val stay in);
- 2-fold: the fixed val split (val_select_ids.txt / val_report_ids.txt) as folds, each fold scored against
  a hull of train + the other fold.

MP's value puts the material in its own hull, so it is never negative; ours is compared clipped at 0
(``max(E_hull, 0)``, which for a single held-out entry is exactly its E_hull with it put back), and a
structure is stable when E_hull <= 0 (1e-8 eV/atom tolerance), metastable when E_hull < 0.1 eV/atom.
MP-20 holds only materials with MP E_hull < 0.08 eV/atom, so every MP label here is metastable: the
metastable agreement counts structures our hull wrongly calls unstable, not the reverse.

    python benchmarks/hull_dft_check.py [--hull FILE] [--data ../shared/data/mp_20]

Static vs relaxed (``--static-vs-relaxed N``): for N random val structures (seed 0), CHGNet's static energy
at MP's relaxed geometry against the energy after relaxing with CHGNet (``BatchedRelaxer``, default
settings, relaxation cache ``~/.cache/hf_crystal/relax``): the evidence for building the hull from static
energies.

    python benchmarks/hull_dft_check.py --static-vs-relaxed 300 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20"
ON_HULL_TOL = 1e-8


def _table(header: list[str], rows: list[list]) -> str:
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in cells)])


def _system(entry) -> frozenset[str]:
    return frozenset(el.symbol for el in entry.composition.elements)


def _e_hull_without(entry, by_system: dict, excluded: set[str]) -> float:
    """E_hull of ``entry`` against the entries of its chemical system (and subsystems) whose id is not in
    ``excluded``."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    system = sorted(_system(entry))
    pool = [
        e
        for r in range(1, len(system) + 1)
        for sub in itertools.combinations(system, r)
        for e in by_system.get(frozenset(sub), [])
        if e.entry_id not in excluded
    ]
    return float(PhaseDiagram(pool).get_e_above_hull(entry, allow_negative=True))


def _scores(ours: np.ndarray, mp: np.ndarray) -> list:
    clipped = np.maximum(ours, 0.0)
    return [
        len(ours),
        float(np.mean(np.abs(clipped - mp))),
        float(np.mean(clipped - mp)),
        float(np.mean((ours < 0.1) == (mp < 0.1))),
        float(np.mean((ours <= ON_HULL_TOL) == (mp <= 0.0))),
        f"{int(((ours <= ON_HULL_TOL) & (mp <= 0)).sum())} / {int((ours <= ON_HULL_TOL).sum())} / {int((mp <= 0).sum())}",
    ]


def dft_check(hull_path: Path, data: Path) -> None:
    import pandas as pd
    from tqdm.auto import tqdm

    from hf_crystal.evaluation.stability import HullReference, load_entries

    t0 = time.perf_counter()
    entries = load_entries(hull_path)
    by_id = {e.entry_id: e for e in entries}
    by_system = defaultdict(list)
    for e in entries:
        by_system[_system(e)].append(e)
    val = pd.read_csv(data / "val.csv", usecols=["material_id", "e_above_hull"]).dropna()
    missing = [m for m in val.material_id if m not in by_id]
    val = val[val.material_id.isin(by_id)]
    mp = val.e_above_hull.to_numpy(float)
    ids = val.material_id.tolist()

    # Leave-one-out: an entry above our hull does not shape it, so its E_hull with or without itself is the
    # same; only the entries on the hull need a diagram without them.
    full = HullReference(entries, "all entries")
    loo = np.empty(len(ids))
    for k, m in enumerate(tqdm(ids, desc="leave-one-out")):
        e = full.e_above_hull(by_id[m])
        loo[k] = e if e > ON_HULL_TOL else _e_hull_without(by_id[m], by_system, {m})

    folds = [set((data / f"val_{name}_ids.txt").read_text().split()) for name in ("select", "report")]
    twofold = np.empty(len(ids))
    for k, m in enumerate(tqdm(ids, desc="2-fold")):
        held_out = folds[0] if m in folds[0] else folds[1]
        twofold[k] = _e_hull_without(by_id[m], by_system, held_out)

    header = [
        "split",
        "N",
        "MAE (eV/atom)",
        "mean ours-MP",
        "metastable agree",
        "stable agree",
        "stable: both / ours / MP",
    ]
    print(f"\nhull: {hull_path} ({len(entries)} entries); val rows with MP e_above_hull: "
          f"{len(ids) + len(missing)}, not in the hull (skipped when it was built): {len(missing)}\n")  # fmt: skip
    print(
        _table(
            header,
            [
                ["leave-one-out (train + rest of val)", *_scores(loo, mp)],
                ["2-fold (val_select / val_report, train in)", *_scores(twofold, mp)],
            ],
        )
    )
    print(f"\n({time.perf_counter() - t0:.0f} s)")


def static_vs_relaxed(n: int, data: Path, batch_size: int) -> None:
    from chgnet.model import CHGNet

    from hf_crystal.cache import cache_dir
    from hf_crystal.evaluation.hull_build import static_energies
    from hf_crystal.evaluation.relax import BatchedRelaxer
    from hf_crystal.structure_io import read_structures

    ids, structures, _ = read_structures(data / "val.csv")
    pick = np.random.default_rng(0).permutation(len(structures))[:n]
    structures = [structures[i] for i in pick]
    model = CHGNet.load(verbose=False, use_device="cpu")
    t0 = time.perf_counter()
    static = [
        e
        for start in range(0, len(structures), batch_size)
        for e, _ in static_energies(structures[start : start + batch_size], model)
    ]
    t_static = time.perf_counter() - t0
    relaxer = BatchedRelaxer(model, cache_dir=cache_dir("relax"))
    t0 = time.perf_counter()
    results = relaxer.relax(structures, desc="relax")
    t_relax = time.perf_counter() - t0
    n_cached = sum(r.cached for r in results)
    ok = [
        (e / len(s), r.energy_per_atom, r.steps, r.converged)
        for s, e, r in zip(structures, static, results, strict=True)
        if r.error is None and np.isfinite(e)
    ]
    s_e, r_e, steps, conv = (np.array(x, dtype=float) for x in zip(*ok, strict=True))
    diff = s_e - r_e
    print(
        f"\n{len(structures)} random val structures (seed 0); compared: {len(ok)}; relaxer: {relaxer.settings}"
    )
    print(
        _table(
            ["N", "MAE static-relaxed (eV/atom)", "mean", "median", "95th pct", "max", "> 0.05", "steps (mean)",
             "converged"],
            [[len(ok), float(np.abs(diff).mean()), float(diff.mean()), float(np.median(diff)),
              float(np.percentile(diff, 95)), float(diff.max()), int((diff > 0.05).sum()), float(steps.mean()),
              float(conv.mean())]],
        )
    )  # fmt: skip
    print(
        f"\nstatic: {t_static:.1f} s ({len(structures) / t_static:.1f} structures/s); relaxed: {t_relax:.1f} s "
        f"({n_cached} of {len(structures)} from the cache)"
    )


def main() -> None:
    from hf_crystal.evaluation.stability import SHIPPED_HULL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hull", type=Path, default=SHIPPED_HULL, help="entries file (default: the shipped hull)"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="MP-20 folder (val.csv, fold id lists)"
    )
    parser.add_argument(
        "--static-vs-relaxed", type=int, metavar="N", help="compare static and relaxed energies"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.static_vs_relaxed:
        static_vs_relaxed(args.static_vs_relaxed, args.data, args.batch_size)
    else:
        dft_check(args.hull, args.data)


if __name__ == "__main__":
    main()
