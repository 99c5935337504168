"""Does refinement keep the space groups an LLM wrote? One table for the LLM's samples and their refinements.

For each structure set (the LLM's samples and one or more refined versions of them, same ids in the same order):
P1 and undetermined rates (spglib at symprec 0.1 Å), tetragonal-or-higher share, distinct groups, CDVAE structural
and compositional validity, and for the refined sets the share of samples whose group was found (as written) that
keep it or gain a larger one: every rotation spglib finds on the sample's Niggli-reduced cell (the cell the
refiner integrates and returns) is found on the refined structure, which has at least as many operations.

    python benchmarks/refiner_symmetry.py samples.llm.extxyz refined_plain.extxyz refined_symmetric.extxyz
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_crystal.evaluation.symmetry import group_metrics
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.refiner import CrystalBatch
from hf_crystal.structure_io import read_structures
from hf_crystal.symmetry import SymmetryError, space_group, symmetry_operations


def rotations(structure, symprec: float) -> tuple[set[bytes], int] | None:
    """The rotation parts (as bytes) and the number of operations spglib finds; None if it finds no group."""
    try:
        ops = symmetry_operations(structure, symprec)
    except SymmetryError:
        return None
    return {r.astype(np.int8).tobytes() for r in ops.rotations}, len(ops.rotations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("llm", help="the LLM's samples")
    parser.add_argument("refined", nargs="+", help="refined versions of them (same ids, same order)")
    parser.add_argument("--symprec", type=float, default=0.1)
    args = parser.parse_args()

    ids, llm, _ = read_structures(args.llm)
    # The refiner's own cell: Niggli-reduced, atoms in the same order.
    reduced = CrystalBatch.from_structures(llm, dtype=torch.float64).to_structures()
    before = [rotations(s, args.symprec) for s in tqdm(reduced, desc="operations: LLM")]
    groups = [space_group(s, args.symprec) for s in llm]
    header = (
        "| structures | N | P1 | undetermined | P1 or undet. | tetragonal+ | groups | struct. valid | comp. valid "
        "| kept group (of found) | kept group (of found, not P1) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = [(args.llm, llm, groups, None)]
    for path in args.refined:
        refined_ids, refined, _ = read_structures(path)
        if refined_ids != ids:
            raise SystemExit(f"{path}: ids differ from {args.llm}")
        after = [rotations(s, args.symprec) for s in tqdm(refined, desc=f"operations: {path}")]
        kept = [
            a is not None and b[0] <= a[0] and a[1] >= b[1]
            for b, a in zip(before, after, strict=True)
            if b is not None
        ]
        kept_non_p1 = [k for k, b in zip(kept, [b for b in before if b is not None], strict=True) if b[1] > 1]
        rows.append((path, refined, [space_group(s, args.symprec) for s in refined], (kept, kept_non_p1)))
    for path, structures, found, kept in rows:
        m = group_metrics(found, [], args.symprec)
        tag = f"_sp{args.symprec:g}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags = [validity_flags(s) for s in structures]
        kept_cells = ["", ""] if kept is None else [f"{np.mean(k):.3f} ({sum(k)}/{len(k)})" for k in kept]
        print(
            f"| {path} | {len(structures)} | {m['p1_rate' + tag]:.3f} | {m['undetermined_rate' + tag]:.3f} "
            f"| {m['p1_or_undetermined_rate' + tag]:.3f} | {m['tetragonal_or_higher_rate' + tag]:.3f} "
            f"| {m['n_space_groups' + tag]} | {np.mean([f['struct_valid'] for f in flags]):.3f} "
            f"| {np.mean([f['comp_valid'] for f in flags]):.3f} | {kept_cells[0]} | {kept_cells[1]} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
