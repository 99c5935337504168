"""The ``hf-crystal evaluate`` subcommand: reads structure files, runs ``metrics.compute_metrics`` and
``report.write_report``.

Importing this module stays cheap (no torch, scipy, SMACT, matminer, CHGNet or pandas): the relaxation
defaults come from ``hf_crystal.evaluation.defaults`` and the evaluation modules load in ``run_evaluate``.
An interrupted run loses no relaxation (see ``hf_crystal.evaluation.report``): rerun the same command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError, positive_int
from hf_crystal.commands.generate import generation_record_path
from hf_crystal.commands.relax_options import add_relax_arguments, relaxer_from_args, set_threads


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` to an argparse subparsers object; ``args.func(args)`` runs it."""
    p = subparsers.add_parser(
        "evaluate",
        help="validity, coverage, novelty and CHGNet stability of generated structures",
        description=(
            "Evaluate generated structures (CDVAE's metrics and CHGNet stability) and write metrics.json, samples.csv, relaxed.cif and "
            "report.md with plots into --out. Structure files: a CIF folder, .cif, CDVAE .csv, .jsonl "
            "('cif' or 'text'), .extxyz, or a .txt of crystal-text blocks separated by blank lines."
        ),
    )
    p.add_argument("samples", help="generated structures")
    p.add_argument("--reference", required=True, help="reference (test) structures for coverage and the hull")
    p.add_argument("--train", help="training structures for novelty")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--hull",
        metavar="FILE|self-consistent",
        help="convex hull for E_hull: a pymatgen entries JSON(.gz) (e.g. Materials Project's), or "
        "'self-consistent' (--hull-set structures and ASE elements relaxed with CHGNet); default: the shipped "
        "MP-20 hull (CHGNet static energies of MP-20 train + val and relaxed elements, MP2020)",
    )
    p.add_argument(
        "--hull-set",
        choices=["reference", "train", "both"],
        help="with --hull self-consistent: its structures besides the elements (default: reference)",
    )
    p.add_argument("--no-relax", action="store_true", help="skip relaxation and stability")
    p.add_argument(
        "--relax-invalid",
        action="store_true",
        help="also relax structurally invalid samples (default: they are not relaxed and count as not stable)",
    )
    add_relax_arguments(p)
    for what in ("samples", "reference", "train"):
        p.add_argument(
            f"--limit-{what}", type=positive_int, metavar="N", help=f"use only the first N {what} structures"
        )
    p.add_argument(
        "--dataset",
        choices=["mp20", "carbon", "perov"],
        default="mp20",
        help="whose CDVAE coverage cutoffs apply (mp20: 0.4 / 10; carbon, perov: 0.2 / 4)",
    )
    p.add_argument(
        "--cov-cutoffs",
        type=_two_floats,
        metavar="STRUCT,COMP",
        help="explicit coverage cutoffs instead of --dataset's",
    )
    p.add_argument(
        "--scaler",
        choices=["cdvae", "reference"],
        default="cdvae",
        help="Magpie feature scaler for coverage: CDVAE's fixed MP-20 one (as published figures) or fitted on "
        "--reference",
    )
    p.add_argument(
        "--conditions",
        metavar="JSON",
        help='the conditions every sample was generated for, e.g. \'{"formula": "NaCl", "formula_units": "any"}\' '
        '(a formula without "formula_units" is a whole cell; default: the samples\' own conditions column, which '
        "generate writes to .csv / .jsonl)",
    )
    p.add_argument("--model", help="the model that wrote the samples: adds its IPT on --reference structures")
    p.add_argument("--ipt-n", type=int, default=64, help="reference structures for the IPT (default 64)")
    p.add_argument(
        "--card",
        metavar="MODEL",
        help="also put the results on this model's card: a local folder (README.md) or a Hub repo (pushed)",
    )
    p.set_defaults(func=run_evaluate)
    return p


def _two_floats(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two comma-separated numbers like 0.4,10, got {text!r}"
        ) from None
    return a, b


def _read(path: str, limit: int | None, what: str):
    from hf_crystal.structure_io import read_structures

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"{what} not found: {source}")
    ids, structures, skipped = read_structures(source)
    if limit is not None:
        ids, structures = ids[:limit], structures[:limit]
    if skipped:
        print(
            f"{what}: {len(skipped)} unreadable entries, e.g. {skipped[0][0]}: {skipped[0][1]}",
            file=sys.stderr,
        )
    return ids, structures, skipped


def _sample_conditions(args: argparse.Namespace, ids: list[str], skipped: list) -> tuple[list | None, list]:
    """The conditions of the readable and of the unreadable samples: --conditions for all, else the samples'
    own ``conditions`` column; (None, []) when there are none."""
    if args.conditions:
        try:
            one = json.loads(args.conditions)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--conditions must be a JSON object: {exc}") from None
        return [one] * len(ids), [one] * len(skipped)
    from hf_crystal.structure_io import iter_records

    cells = {r.material_id: r.properties.get("conditions") for r in iter_records(args.samples)}
    if not any(cells.values()):
        return None, []
    return [cells.get(i) for i in ids], [cells.get(name) for name, _ in skipped]


def _ipt(model_id: str, structures: list) -> dict:
    """The model's IPT and perplexity (Gruver et al.) on ``structures``."""
    import numpy as np

    from hf_crystal.evaluation.ipt import ipt
    from hf_crystal.loading import load_crystal_model

    model, tokenizer = load_crystal_model(model_id)
    values = ipt(model, tokenizer, structures)
    return {
        "ipt_n": len(structures),
        "ipt_mean": float(np.mean(values["ipt"])),
        "perplexity_mean": float(np.mean(values["perplexity"])),
        "ipt_model": model_id,
    }


def run_evaluate(args: argparse.Namespace) -> int:
    if args.relax_symmetry is not None and (args.no_relax or args.relax_symmetry <= 0):
        raise UsageError("--relax-symmetry needs relaxation (no --no-relax) and a positive SYMPREC")
    from hf_crystal.evaluation.metrics import compute_metrics
    from hf_crystal.evaluation.report import write_report

    self_consistent = (
        args.hull == "self-consistent"
    )  # stability.SELF_CONSISTENT (not imported: it loads pymatgen)
    if args.hull_set and not self_consistent:
        raise UsageError("--hull-set chooses the structures of --hull self-consistent; add that option")
    if args.hull and not self_consistent and not Path(args.hull).exists():
        raise FileNotFoundError(f"hull entries file not found: {args.hull}")
    set_threads(args)
    ids, samples, skipped = _read(args.samples, args.limit_samples, "samples")
    _, reference, _ = _read(args.reference, args.limit_reference, "reference")
    train = _read(args.train, args.limit_train, "train")[1] if args.train else []
    if not samples and not skipped:
        raise ValueError(f"{args.samples} holds no structures")
    if not reference:
        raise ValueError(f"{args.reference} holds no readable reference structures")
    hull_set = args.hull_set or "reference"
    hull_structures = {"reference": reference, "train": train, "both": [*reference, *train]}[hull_set]
    args.out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after the relaxations
    relaxer = None
    if not args.no_relax:
        relaxer = relaxer_from_args(args)
    asked, unreadable_asked = _sample_conditions(args, ids, skipped)
    result = compute_metrics(
        samples,
        reference,
        train,
        sample_ids=ids,
        n_unreadable=len(skipped),
        hull_entries=args.hull,
        hull_structures=hull_structures,
        relaxer=relaxer,
        relax=not args.no_relax,
        relax_invalid=args.relax_invalid,
        coverage_dataset=args.dataset,
        coverage_cutoffs=args.cov_cutoffs,
        coverage_scaler=args.scaler,
        conditions=asked,
        unreadable_conditions=unreadable_asked,
    )
    if args.model:
        result.metrics |= _ipt(args.model, reference[: args.ipt_n])
    if (record := generation_record_path(Path(args.samples))).exists():
        result.metrics["provenance"] = json.loads(record.read_text())
    write_report(result, args.out)
    print(json.dumps(result.metrics, indent=2))
    print(f"wrote {args.out}/metrics.json, samples.csv and report.md", file=sys.stderr)
    if args.card:
        from hf_crystal.hub import update_card

        source = f"hf-crystal evaluate {args.samples} --reference {args.reference}"
        update_card(args.card, result.metrics, push=not Path(args.card).is_dir(), source=source)
        print(f"evaluation results written to the card of {args.card}", file=sys.stderr)
    return 0
