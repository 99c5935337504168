"""`hf-crystal mutate`: mutation search from seed structures (infill-proposed or random substitutions, CHGNet
relaxation, kept when E_hull drops), logged row by row to a CSV."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError
from hf_crystal.commands.relax_options import add_relax_arguments, relaxer_from_args, set_threads

__all__ = ["add_parser"]

ACCEPT_RULES = (
    "improve",
    "threshold",
    "metropolis",
)  # hf_crystal.mutation.ACCEPT_RULES (not imported: pymatgen)


def _hull(path: str | None):
    """The hull of --hull, or the hull shipped with the package when there is one."""
    from hf_crystal.evaluation import stability

    if path is not None:
        if not Path(path).exists():
            raise FileNotFoundError(f"hull entries file not found: {path}")
        return stability.load_hull(path)
    return stability.shipped_hull()


def _cmd_mutate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise UsageError(f"--out must end in .csv, got {out.name}")
    if out.exists() and not args.resume:
        raise UsageError(f"{out} exists: pass --resume to continue that search, or choose another --out")
    if args.proposer == "infill" and not args.model:
        raise UsageError("--proposer infill needs --model (a crystal LLM trained with infill examples)")
    if args.substitutions and args.proposer != "infill":
        raise UsageError(
            "--substitutions filters the infill proposer's candidates; --proposer random "
            "always samples from the substitution probabilities"
        )
    if args.structures and Path(args.structures).suffix.lower() not in (".cif", ".extxyz"):
        raise UsageError(f"--structures must end in .cif or .extxyz, got {Path(args.structures).name}")
    set_threads(args)

    from hf_crystal.mutation import (
        InfillProposer,
        RandomProposer,
        SubstitutionTable,
        mutation_search,
        summarize,
    )
    from hf_crystal.structure_io import append_structures, read_structures

    ids, seeds, skipped = read_structures(args.seeds)
    for name, reason in skipped:
        print(f"skipped seed {name}: {reason}", file=sys.stderr)
    if args.limit is not None:
        ids, seeds = ids[: args.limit], seeds[: args.limit]
    if not seeds:
        raise UsageError(f"{args.seeds} holds no readable structure")
    elements = None
    if args.elements:
        elements = [e.strip() for e in args.elements.split(",") if e.strip()]
    hull = _hull(args.hull)
    print(f"hull: {hull.description}", file=sys.stderr)

    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionPredictor

    table = SubstitutionTable(SubstitutionPredictor(threshold=args.substitution_threshold))
    if args.proposer == "infill":
        import hf_crystal  # noqa: F401  (registers the pipeline tasks)
        from hf_crystal.loading import load_crystal_model

        model, tokenizer = load_crystal_model(args.model, revision=args.revision)
        from transformers import pipeline

        pipe = pipeline("crystal-infill", model=model, tokenizer=tokenizer)
        proposer = InfillProposer(pipe, table, intersect=args.substitutions)
    else:
        proposer = RandomProposer(table, seed=args.seed)
    relaxer = relaxer_from_args(args)
    result = mutation_search(
        list(zip(ids, seeds, strict=True)),
        proposer,
        relaxer,
        hull,
        out,
        rounds=args.rounds,
        population=args.population,
        children=args.children,
        accept=args.accept,
        threshold=args.threshold,
        temperature=args.temperature,
        elements=elements,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if args.structures:
        _write_accepted(Path(args.structures), result.rows, append_structures, read_structures)
    stats = summarize(result.rows, threshold=args.threshold)
    best = stats["best_e_hull"]
    print(
        f"{stats['n_candidates']} candidates ({result.n_resumed} log rows resumed): {stats['n_with_e_hull']} "
        f"placed on the hull, {stats['n_failed']} failed, {stats['n_below']} below {args.threshold:g} eV/atom "
        f"({stats['n_unique_below']} formulas), {stats['n_accepted']} accepted"
        + ("" if math.isnan(best) else f", best E_hull {best:.4f} eV/atom")
        + f"; log: {out}"
    )
    return 0


def _write_accepted(path: Path, rows: list[dict], append_structures, read_structures) -> None:
    """Append the accepted candidates' relaxed structures that `path` does not hold yet."""
    import json

    from pymatgen.core import Structure

    have = set(read_structures(path)[0]) if path.exists() else set()
    new = [
        (r["id"], Structure.from_dict(json.loads(r["relaxed_structure"])))
        for r in rows
        if r["round"] >= 1 and r["accepted"] and r["id"] not in have
    ]
    append_structures(path, new)


def add_parser(subparsers) -> None:
    """Add `mutate` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "mutate",
        help="mutation search: substitute elements, relax, keep what lowers E_hull",
        description="Mask an element of each structure of the population, let the infill model (or random "
        "draws from pymatgen's substitution probabilities) propose replacements, relax them with CHGNet "
        "and keep those the acceptance rule accepts. Every seed and candidate is a row of --out, appended "
        "as soon as its fate is known (relaxed structure included); an existing --out is never overwritten: "
        "--resume replays the seeded search, keeps the rows already there and appends the rest.",
    )
    p.add_argument(
        "seeds", help="seed structures: .cif, CIF folder, .csv, .jsonl, .extxyz or crystal-text .txt"
    )
    p.add_argument("--out", required=True, help="CSV log of every seed and candidate")
    p.add_argument("--resume", action="store_true", help="continue the search logged in --out")
    p.add_argument("--model", help="crystal LLM folder or Hub id (for --proposer infill)")
    p.add_argument("--revision", help="Hub revision of --model")
    p.add_argument(
        "--proposer",
        choices=["infill", "random"],
        default="infill",
        help="infill: the model ranks replacements; random: sampled from pymatgen's substitution "
        "probabilities, uniform when it has none for the element (default infill)",
    )
    p.add_argument(
        "--substitutions",
        action="store_true",
        help="infill: rank only replacements pymatgen's SubstitutionPredictor allows (probability >= "
        "--substitution-threshold)",
    )
    p.add_argument("--substitution-threshold", type=float, default=1e-3, help="(default 0.001)")
    p.add_argument(
        "--hull",
        metavar="FILE",
        help="pymatgen entries JSON(.gz) for E_hull (default: the hull shipped with hf-crystal, if any)",
    )
    p.add_argument("--rounds", type=int, default=2, help="mutation rounds (default 2)")
    p.add_argument("--population", type=int, default=8, help="structures kept per round (default 8)")
    p.add_argument("--children", type=int, default=4, help="candidates per parent and round (default 4)")
    p.add_argument(
        "--accept",
        choices=ACCEPT_RULES,
        default="improve",
        help="improve: E_hull below the parent's; threshold: below --threshold; metropolis: lower, or "
        "higher with probability exp(-dE/--temperature) (default improve)",
    )
    p.add_argument("--threshold", type=float, default=0.1, help="eV/atom, rule threshold and summary (0.1)")
    p.add_argument("--temperature", type=float, default=0.05, help="eV/atom, metropolis rule (0.05)")
    p.add_argument("--elements", help="comma-separated replacement elements (default: all the hull covers)")
    p.add_argument("--limit", type=int, help="use only the first N seeds")
    p.add_argument("--seed", type=int, default=0, help="seeds the element draws and random proposals (0)")
    p.add_argument("--structures", help="also append accepted relaxed candidates to this .cif or .extxyz")
    add_relax_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_mutate)
