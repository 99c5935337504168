"""`hf-crystal dataset build`: structure sources -> a Hub-shaped crystal-text dataset.

The build reports success only after the saved folder loads back through `load_crystal_dataset`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_crystal.commands.errors import UsageError
from hf_crystal.crystal_format import CRYSTAL_FORMATS, DEFAULT_FORMAT

__all__ = ["add_parser"]


def _split_fractions(value: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(x) for x in value.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions like 0.8,0.1,0.1, got {value!r}"
        )
    return fractions


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    from hf_crystal.cards import render_dataset_card
    from hf_crystal.data import build_dataset, save_dataset, verify_saved_dataset
    from hf_crystal.hub import push_folder

    per_split = {
        k: v for k, v in (("train", args.train), ("validation", args.validation), ("test", args.test)) if v
    }
    if bool(per_split) == bool(args.source):
        raise UsageError(
            "give either one SOURCE (split with --split-fractions) or --train/--validation/--test files"
        )
    dataset, report = build_dataset(
        per_split or args.source, split_fractions=args.split_fractions, seed=args.seed, format=args.format
    )
    if not dataset:
        raise UsageError(f"no structure could be read; {report.summary()}")
    card = render_dataset_card(
        dataset, report, repo_id=args.push_to_hub or args.out.name, license=args.license
    )
    out = save_dataset(dataset, args.out, card=str(card))
    print(report.summary())
    verify_saved_dataset(out, dataset)  # success means load_crystal_dataset(out) reads what was built
    print(f"saved to {out} (loads back: {', '.join(f'{k}={v}' for k, v in report.rows.items())} rows)")
    if args.push_to_hub:
        print(f"pushed: {push_folder(out, args.push_to_hub, repo_type='dataset', private=args.private)}")
    return 0


def add_parser(subparsers) -> None:
    """Add `dataset build` to the CLI's subparsers."""
    commands = subparsers
    dataset = commands.add_parser("dataset", help="build crystal-text datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    build = dataset_commands.add_parser(
        "build",
        help="CDVAE CSV or CIF folder -> train/validation/test dataset (Hub-shaped folder)",
        description="Build a crystal-text DatasetDict from a CDVAE-format CSV or a folder of CIF files.",
    )
    build.add_argument("source", nargs="?", help="one CSV / CIF folder, split with --split-fractions")
    build.add_argument("--train", help="source of the train split (instead of SOURCE)")
    build.add_argument("--validation", help="source of the validation split")
    build.add_argument("--test", help="source of the test split")
    build.add_argument(
        "--out", type=Path, required=True, help="output folder (parquet per split + README.md)"
    )
    build.add_argument("--split-fractions", type=_split_fractions, default=(0.8, 0.1, 0.1), metavar="F,F,F")
    build.add_argument("--seed", type=int, default=42, help="seed of the split")
    build.add_argument(
        "--format",
        choices=CRYSTAL_FORMATS,
        default=DEFAULT_FORMAT,
        help="crystal text format of the text column: xyz (Gruver et al.) or wyckoff (space group + Wyckoff "
        "orbits); recorded in the dataset (crystal_format column, card), where training reads it",
    )
    build.add_argument("--license", default="other", help="license for the card metadata")
    build.add_argument("--push-to-hub", metavar="REPO_ID", help="also push to this Hub dataset repo")
    build.add_argument("--private", action="store_true", help="create the Hub repo private")
    build.set_defaults(func=_cmd_dataset_build)
