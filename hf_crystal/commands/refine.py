"""`hf-crystal refine`: move structures (e.g. an LLM's samples) toward realistic ones with a FlowLLM refiner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError

__all__ = ["add_parser", "add_symmetry_options", "case_counts", "symmetry_tolerance"]


def symmetry_tolerance(args: argparse.Namespace) -> float | None:
    """The refiner's symmetry tolerance from `--symmetry-tolerance` / `--no-symmetry` (see `add_symmetry_options`)."""
    if args.no_symmetry and args.symmetry_tolerance is not None:
        raise UsageError("give --symmetry-tolerance or --no-symmetry, not both")
    if args.symmetry_tolerance is not None and not args.symmetry_tolerance > 0:
        raise UsageError(f"--symmetry-tolerance must be positive, got {args.symmetry_tolerance}")
    from hf_crystal.refiner.pipeline_refiner import DEFAULT_SYMMETRY_TOLERANCE

    return None if args.no_symmetry else (args.symmetry_tolerance or DEFAULT_SYMMETRY_TOLERANCE)


def add_symmetry_options(parser: argparse.ArgumentParser) -> None:
    """`--symmetry-tolerance` and `--no-symmetry`, shared by `refine` and `generate`."""
    parser.add_argument(
        "--symmetry-tolerance",
        type=float,
        help="the refiner keeps each structure's space group found at this tolerance in Å (default 0.1)",
    )
    parser.add_argument(
        "--no-symmetry", action="store_true", help="refine without keeping space groups (the plain flow)"
    )


def _cmd_refine(args: argparse.Namespace) -> int:
    import torch

    from hf_crystal.refiner import CrystalRefinerPipeline
    from hf_crystal.structure_io import STRUCTURE_FORMATS, append_structures, read_structures

    out = Path(args.out)
    if out.suffix.lower() not in STRUCTURE_FORMATS:
        raise UsageError(f"--out must end in {' or '.join(STRUCTURE_FORMATS)}, got {out.name}")
    if out.exists():
        raise UsageError(f"{out} exists: choose another --out")
    tolerance = symmetry_tolerance(args)
    ids, structures, skipped = read_structures(args.input)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not structures:
        raise UsageError(f"{args.input} holds no readable structure")
    refiner = CrystalRefinerPipeline.from_pretrained(args.refiner, revision=args.revision)
    options = {"batch_size": args.batch_size, "symmetry_tolerance": tolerance}
    if args.steps is not None:
        options["num_inference_steps"] = args.steps
    result = refiner(structures, generator=torch.Generator().manual_seed(args.seed), **options)
    written = append_structures(out, list(zip(ids, result.structures, strict=True)))
    print(f"refined {written} structures into {out}; skipped {len(skipped)} unreadable")
    if result.symmetry_cases is not None:
        print(f"symmetry (tolerance {tolerance} Å): {case_counts(result.symmetry_cases)}")
    return 0


def case_counts(cases: list, names: tuple[str, ...] | None = None) -> str:
    """'tolerance: 9, tolerance/10: 1, ...': how many structures kept their group at which tolerance (`names`:
    the cases listed, default `hf_crystal.symmetry.REFINE_CASES`)."""
    from hf_crystal.symmetry import REFINE_CASES

    return ", ".join(f"{case}: {cases.count(case)}" for case in names or REFINE_CASES)


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
    add_symmetry_options(p)
    p.add_argument("--out", required=True, help="output .cif or .extxyz (input ids kept)")
    p.set_defaults(func=_cmd_refine)
