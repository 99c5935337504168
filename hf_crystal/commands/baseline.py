"""`hf-crystal baseline random`: pyxtal random crystals with the compositions (optionally the space groups) of a
sample file, to read any evaluation against random structures of the same compositions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError

__all__ = ["add_parser"]

DEFAULT_ATTEMPTS = 10  # hf_crystal.baseline.DEFAULT_ATTEMPTS (not imported: it loads pymatgen)


def _cmd_random(args: argparse.Namespace) -> int:
    from hf_crystal.structure_io import STRUCTURE_FORMATS, append_structures, read_structures

    out = Path(args.out)
    if out.suffix.lower() not in STRUCTURE_FORMATS:
        raise UsageError(f"--out must end in {' or '.join(STRUCTURE_FORMATS)}, got {out.name}")
    if out.exists():
        raise UsageError(f"{out} exists: choose another --out")
    if args.attempts < 1:
        raise UsageError("--attempts must be >= 1")
    ids, structures, skipped = read_structures(args.like)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if args.limit is not None:
        ids, structures = ids[: args.limit], structures[: args.limit]
    if not structures:
        raise UsageError(f"{args.like} holds no readable structure")

    from hf_crystal.baseline import random_like

    result = random_like(
        list(zip(ids, structures, strict=True)),
        same_spacegroup=args.same_spacegroup,
        attempts=args.attempts,
        seed=args.seed,
        symprec=args.symprec,
        progress=not args.no_progress,
    )
    for name, reason in result.failures:
        print(f"not built {name}: {reason}", file=sys.stderr)
    written = append_structures(out, result.structures)
    what = "compositions and space groups" if args.same_spacegroup else "compositions"
    print(
        f"wrote {written} random structures with the {what} of {len(structures)} samples into {out}; "
        f"{len(result.failures)} not built in {args.attempts} attempts; {len(skipped)} unreadable samples"
    )
    return 0


def add_parser(subparsers) -> None:
    """Add `baseline` (with its `random` action) to the CLI's subparsers."""
    baseline = subparsers.add_parser(
        "baseline",
        help="baseline structures to read evaluations against",
        description="Baseline structure files with the same ids as a sample file.",
    )
    actions = baseline.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "random",
        help="pyxtal random crystals with the samples' compositions (and space groups)",
        description="For each sample, a pyxtal random crystal with exactly its composition (atoms of each "
        "element in the cell), in a random compatible space group or, with --same-spacegroup, in the "
        "sample's (pymatgen SpacegroupAnalyzer at --symprec). Seeded; samples pyxtal cannot build in "
        "--attempts tries are listed on stderr and counted; the others keep their sample ids.",
    )
    p.add_argument("--like", required=True, help="samples: .cif, CIF folder, .csv, .jsonl, .extxyz or .txt")
    p.add_argument("--out", required=True, help="output .cif or .extxyz")
    p.add_argument("--same-spacegroup", action="store_true", help="keep each sample's space group")
    p.add_argument(
        "--attempts", type=int, default=DEFAULT_ATTEMPTS, help=f"pyxtal tries per sample ({DEFAULT_ATTEMPTS})"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--symprec", type=float, default=0.1, help="space-group tolerance in Å (default 0.1)")
    p.add_argument("--limit", type=int, help="use only the first N samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_random)
