"""`hf-crystal refine`: move structures (e.g. an LLM's samples) toward realistic ones with a FlowLLM refiner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError

__all__ = ["add_parser"]


def _cmd_refine(args: argparse.Namespace) -> int:
    from hf_crystal.refiner import refine
    from hf_crystal.structure_io import STRUCTURE_FORMATS, append_structures, read_structures

    out = Path(args.out)
    if out.suffix.lower() not in STRUCTURE_FORMATS:
        raise UsageError(f"--out must end in {' or '.join(STRUCTURE_FORMATS)}, got {out.name}")
    if out.exists():
        raise UsageError(f"{out} exists: choose another --out")
    ids, structures, skipped = read_structures(args.input)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not structures:
        raise UsageError(f"{args.input} holds no readable structure")
    options = {"batch_size": args.batch_size, "revision": args.revision, "seed": args.seed}
    if args.steps is not None:
        options["num_steps"] = args.steps
    refined = refine(structures, args.refiner, **options)
    written = append_structures(out, list(zip(ids, refined, strict=True)))
    print(f"refined {written} structures into {out}; skipped {len(skipped)} unreadable")
    return 0


def add_parser(subparsers) -> None:
    """Add `refine` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "refine",
        help="refine structures with a FlowLLM refiner",
        description="Move atom positions and lattices toward realistic structures (atom types never change).",
    )
    p.add_argument("input", help="structures: .cif, CIF folder, .csv, .jsonl, .extxyz or crystal-text .txt")
    p.add_argument("--refiner", required=True, help="refiner folder or Hub id (hf-crystal train refiner)")
    p.add_argument("--revision", help="Hub revision of --refiner")
    p.add_argument("--steps", type=int, help="Euler steps (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="structures integrated together (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the refiner's base noise (default 0)")
    p.add_argument("--out", required=True, help="output .cif or .extxyz (input ids kept)")
    p.set_defaults(func=_cmd_refine)
