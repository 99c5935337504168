"""Free vs symmetry-keeping CHGNet relaxation of the same structures: energies, stability and space groups.

Relaxes the first `--n` structurally valid structures of a file twice with `BatchedRelaxer` (free, and with
`fix_symmetry=True`: projected onto the group spglib finds at `--symprec`, then ASE's FixSymmetry), and prints for
each: P1 and undetermined rates (symprec 0.1 and 0.01 Å), mean CHGNet energy per atom, metastable (E_hull < 0.1
eV/atom) and stable rates on the shipped MP-20 hull, and the per-structure energy difference (kept - free).

    python benchmarks/relax_symmetry.py refined.extxyz --n 100
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from hf_crystal.cache import cache_dir
from hf_crystal.evaluation.rates import format_rate, wilson_interval
from hf_crystal.evaluation.relax import BatchedRelaxer
from hf_crystal.evaluation.stability import HullError, corrected_entries, shipped_hull, stability_flags
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.structure_io import read_structures
from hf_crystal.symmetry import space_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument(
        "--symprec", type=float, default=0.1, help="tolerance of the symmetry-keeping relaxation"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    _, structures, _ = read_structures(args.samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        valid = [s for s in structures if validity_flags(s)["struct_valid"]][: args.n]
    hull = shipped_hull()
    rows, energies = [], {}
    for name, fix in (("free", False), ("symmetry kept", True)):
        relaxer = BatchedRelaxer(
            fix_symmetry=fix,
            symprec=args.symprec,
            batch_size=args.batch_size,
            cache_dir=cache_dir("relax"),
        )
        results = relaxer.relax(valid, desc=f"relax ({name})")
        ok = [r for r in results if r.error is None]
        entries = corrected_entries([r.structure for r in results], [r.energy for r in results])
        flags = []
        for r, e in zip(results, entries, strict=True):
            e_hull = float("nan")
            if e is not None:
                try:
                    e_hull = hull.e_above_hull(e)
                except HullError:
                    pass
            flags.append(stability_flags(e_hull, 0 if r.structure is None else len(r.structure.composition)))
        energies[name] = np.array([r.energy_per_atom if r.error is None else np.nan for r in results])
        cells = [f"{name}", f"{len(valid)}", f"{len(ok)}"]
        for symprec in (0.1, 0.01):
            groups = [space_group(r.structure, symprec) for r in ok]
            p1 = sum(g == 1 for g in groups)
            cells += [
                format_rate(p1, len(ok)),
                f"{sum(g is None for g in groups) / len(ok):.3f}",
            ]
        n = len(valid)
        metastable, stable = sum(f["metastable"] for f in flags), sum(f["stable"] for f in flags)
        cells += [
            f"{np.nanmean(energies[name]):.4f}",
            f"{metastable / n:.3f} {[round(x, 3) for x in wilson_interval(metastable, n)]}",
            f"{stable / n:.3f}",
        ]
        rows.append(cells)
    print(
        "| relaxation | N | relaxed | P1 (0.1) [95% CI] | undet. (0.1) | P1 (0.01) [95% CI] | undet. (0.01) "
        "| mean E (eV/atom) | metastable [95% CI] | stable |"
    )
    print("|---" * 10 + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    diff = energies["symmetry kept"] - energies["free"]
    diff = diff[np.isfinite(diff)]
    print(
        f"\nE(symmetry kept) - E(free) per structure, eV/atom, over {len(diff)} relaxed both ways: mean "
        f"{diff.mean():.4f}, median {np.median(diff):.4f}, max {diff.max():.4f}; "
        f"{(diff > 0.01).mean():.3f} above 0.01 eV/atom"
    )


if __name__ == "__main__":
    main()
