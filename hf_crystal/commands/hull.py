"""`hf-crystal hull build`: a convex-hull entries file from relaxed structures (the shipped hull's recipe).

Importing this module loads nothing heavy; the evaluation modules load in the run function.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hf_crystal.commands.relax_options import add_relax_arguments, relaxer_from_args, set_threads

__all__ = ["add_parser"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `hull` (with its `build` action) to the CLI's subparsers."""
    hull = subparsers.add_parser(
        "hull",
        help="build a convex-hull entries file for `evaluate --hull`",
        description="Convex-hull reference entries for stability (E_hull).",
    )
    actions = hull.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="CHGNet static energies of relaxed structures + relaxed elemental references, MP2020-corrected",
        description=(
            "Write a hull entries file (gzip JSON of pymatgen ComputedEntry, no structures): CHGNet static "
            "energies of SOURCES (relaxed geometries, e.g. MP-20's CSVs; deduplicated by id) in batches, "
            "plus the ASE reference states of the elements relaxed with CHGNet, all corrected with "
            "MaterialsProject2020Compatibility as `evaluate` corrects the samples. Resumable: rerun the "
            "same command and finished structures (OUT.progress.jsonl) and relaxations (the cache) are "
            "reused. The package's default hull was built with: hf-crystal hull build "
            "mp_20/train_subset.csv mp_20/train.csv mp_20/val.csv --out mp20_chgnet_hull.json.gz"
        ),
    )
    build.add_argument("sources", nargs="+", help="structure files (CDVAE .csv, .cif, CIF folder, ...)")
    build.add_argument("--out", required=True, type=Path, help="entries file to write (.json.gz)")
    build.add_argument(
        "--elements",
        choices=["all", "sources"],
        default="all",
        help="elemental references for H-Pu (all, default) or only the elements in SOURCES",
    )
    build.add_argument("--batch-size", type=int, default=32, help="structures per CHGNet forward pass (32)")
    add_relax_arguments(build, batch_flag="--relax-batch-size")
    build.set_defaults(func=run_build)
    return hull


def run_build(args: argparse.Namespace) -> int:
    from hf_crystal.evaluation.hull_build import HULL_ELEMENTS, build_hull_file
    from hf_crystal.structure_io import read_structures

    set_threads(args)
    if not args.out.name.endswith(".json.gz"):
        raise ValueError(f"--out must be a .json.gz file, got {args.out}")
    ids, structures, skipped = [], [], []
    for source in args.sources:
        if not Path(source).exists():
            raise FileNotFoundError(f"source not found: {source}")
        more_ids, more, unreadable = read_structures(source)
        print(f"{source}: {len(more)} structures, {len(unreadable)} unreadable", file=sys.stderr)
        ids += more_ids
        structures += more
        skipped += [(name, f"unreadable: {why}") for name, why in unreadable]
    relaxer = relaxer_from_args(args)
    start = time.perf_counter()
    summary = build_hull_file(
        ids,
        structures,
        args.out,
        relaxer=relaxer,
        elements=HULL_ELEMENTS if args.elements == "all" else (),
        skipped=skipped,
        sources=[Path(s).name for s in args.sources],
        batch_size=args.batch_size,
    )
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.0f} s): "
        f"{summary['n_entries']} entries; {summary['n_duplicates']} duplicate ids; {summary['n_skipped']} "
        f"skipped {summary['skipped']}",
        file=sys.stderr,
    )
    for name, why in summary["skipped_examples"]:
        print(f"  skipped {name}: {why}", file=sys.stderr)
    return 0
