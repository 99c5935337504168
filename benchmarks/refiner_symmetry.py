"""Does refinement keep the space groups an LLM wrote? One table for the LLM's samples and their refinements.

For each structure set (the LLM's samples and one or more refined versions of them, same ids in the same order):
P1 and undetermined rates (spglib at symprec 0.1 Å), tetragonal-or-higher share, distinct groups, CDVAE structural
and compositional validity, and for the refined sets the share of samples whose group was found (as written) that
keep it or gain a larger one: every rotation spglib finds on the sample's Niggli-reduced cell (the cell the
refiner integrates and returns) is found on the refined structure, which has at least as many operations.

    python benchmarks/refiner_symmetry.py samples.llm.extxyz refined_plain.extxyz refined_symmetric.extxyz

Rates come with their 95% Wilson intervals. For samples generated with space-group conditions
(`hf-crystal generate --conditions-file ... --out samples.jsonl`), `--requested samples.jsonl` adds the share of
each set whose space group (at `--symprec`) is the one its sample was asked for:

    python benchmarks/refiner_symmetry.py samples.jsonl refined_plain.extxyz refined_symmetric.extxyz \
        --requested samples.jsonl
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_crystal.evaluation.rates import format_rate
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.refiner import CrystalBatch
from hf_crystal.structure_io import read_structures
from hf_crystal.symmetry import (
    CRYSTAL_SYSTEMS,
    SymmetryError,
    crystal_system,
    space_group,
    symmetry_operations,
)

# Tetragonal, trigonal, hexagonal, cubic: "tetragonal or higher" (as `hf_crystal.evaluation.symmetry`).
HIGH = CRYSTAL_SYSTEMS[3:]


def rotations(structure, symprec: float) -> tuple[set[bytes], int] | None:
    """The rotation parts (as bytes) and the number of operations spglib finds; None if it finds no group."""
    try:
        ops = symmetry_operations(structure, symprec)
    except SymmetryError:
        return None
    return {r.astype(np.int8).tobytes() for r in ops.rotations}, len(ops.rotations)


def rate(flags: list[bool]) -> str:
    """'0.584 [0.540, 0.626] (292/500)': share with its 95% Wilson interval."""
    return f"{format_rate(sum(flags), len(flags))} ({sum(flags)}/{len(flags)})"


def requested_groups(path: str) -> dict[str, int]:
    """Space group each sample of a `generate --conditions-file` output (.jsonl) was asked for, by id."""
    requested = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            conditions = row.get("conditions") or {}
            conditions = json.loads(conditions) if isinstance(conditions, str) else conditions
            if "spacegroup" in conditions:
                requested[row["material_id"]] = int(conditions["spacegroup"])
    return requested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("llm", help="the LLM's samples")
    parser.add_argument("refined", nargs="+", help="refined versions of them (same ids, same order)")
    parser.add_argument("--symprec", type=float, default=0.1)
    parser.add_argument(
        "--requested", help="generate --conditions-file output (.jsonl): space-group hit column"
    )
    args = parser.parse_args()

    ids, llm, _ = read_structures(args.llm)
    # The refiner's own cell: Niggli-reduced, atoms in the same order.
    reduced = CrystalBatch.from_structures(llm, dtype=torch.float64).to_structures()
    before = [rotations(s, args.symprec) for s in tqdm(reduced, desc="operations: LLM")]
    groups = [space_group(s, args.symprec) for s in llm]
    requested = requested_groups(args.requested) if args.requested else None
    header = (
        "| structures | N | P1 | undetermined | P1 or undet. | tetragonal+ | groups | struct. valid | comp. valid "
        "| kept group (of found) | kept group (of found, not P1) |"
        + (" space-group hit |" if requested else "")
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags = [validity_flags(s) for s in structures]
        cells = [
            rate([g == 1 for g in found]),
            rate([g is None for g in found]),
            rate([g in (1, None) for g in found]),
            rate([g is not None and crystal_system(g) in HIGH for g in found]),
            str(len({g for g in found if g is not None})),
            rate([f["struct_valid"] for f in flags]),
            f"{np.mean([f['comp_valid'] for f in flags]):.3f}",
            *(["", ""] if kept is None else [rate(k) for k in kept]),
        ]
        if requested:
            cells.append(rate([requested[i] == g for i, g in zip(ids, found, strict=True) if i in requested]))
        print(f"| {path} | {len(structures)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
