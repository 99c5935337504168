"""The relaxation options of `evaluate`, `mutate` and `hull build`: one set of flags, one way to build the relaxer.

Importing this module stays cheap: the defaults come from `hf_crystal.evaluation.defaults` (no torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_crystal.evaluation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FMAX,
    DEFAULT_MAX_STEPS,
    DEFAULT_OPTIMIZER,
    OPTIMIZERS,
)

__all__ = ["add_relax_arguments", "relaxer_from_args", "relaxer_options", "set_threads"]


def add_relax_arguments(parser, *, batch_flag: str = "--batch-size", in_process: bool = True) -> None:
    """Add CHGNet relaxation flags to a parser or argument group (--fmax, --max-steps, --optimizer,
    --relax-symmetry, the batch size) and, for a relaxation in this process (`in_process`), --cache-dir and
    --threads."""
    parser.add_argument(
        "--fmax", type=float, default=DEFAULT_FMAX, help=f"force threshold eV/Å ({DEFAULT_FMAX})"
    )
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help=f"({DEFAULT_MAX_STEPS})")
    parser.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, choices=OPTIMIZERS)
    parser.add_argument(
        "--relax-symmetry",
        type=float,
        nargs="?",
        const=0.1,
        metavar="SYMPREC",
        help="relax keeping each structure's space group found at SYMPREC Å (default 0.1; ASE FixSymmetry)",
    )
    parser.add_argument(
        batch_flag,
        dest="relax_batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"structures relaxed together ({DEFAULT_BATCH_SIZE})",
    )
    if in_process:
        parser.add_argument(
            "--cache-dir", type=Path, help="relaxation cache (default: ~/.cache/hf_crystal/relax)"
        )
        parser.add_argument("--threads", type=int, help="torch threads for CHGNet (default: torch's choice)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads to torch (before any model runs)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def relaxer_options(args: argparse.Namespace) -> dict:
    """The `BatchedRelaxer` keyword arguments the flags of `add_relax_arguments` describe (no cache folder); the
    symmetry options only when --relax-symmetry is given."""
    options = {
        "optimizer": args.optimizer,
        "fmax": args.fmax,
        "max_steps": args.max_steps,
        "batch_size": args.relax_batch_size,
    }
    if args.relax_symmetry is not None:
        options |= {"fix_symmetry": True, "symprec": args.relax_symmetry}
    return options


def relaxer_from_args(args: argparse.Namespace):
    """The `BatchedRelaxer` the flags of `add_relax_arguments` describe (cached in `cache_dir("relax")` by
    default)."""
    from hf_crystal.cache import cache_dir
    from hf_crystal.evaluation.relax import BatchedRelaxer

    return BatchedRelaxer(**relaxer_options(args), cache_dir=args.cache_dir or cache_dir("relax"))
