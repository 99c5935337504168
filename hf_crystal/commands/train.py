"""`hf-crystal train base|lora|refiner`: the rest of the command line goes to TRL's parser.

`hf-crystal train KIND ...` hands `...` to `hf_crystal.training.KIND.main`, the function
training/train_KIND.py calls: `trl.TrlParser` over (script arguments, `trl.SFTConfig`, `trl.ModelConfig`)
for base and lora, so every SFTConfig / ModelConfig flag works, and over the refiner's own arguments for
refiner; `--config FILE` reads a YAML of the same keys.
Nothing heavy is imported until a training command runs (`hf-crystal --help` stays fast).
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]

KINDS = {
    "base": "train a small LLaMA-architecture model from scratch with the crystal tokenizer",
    "lora": "fine-tune LoRA adapters on any causal LM (Hub id or local folder)",
    "refiner": "train the FlowLLM refiner (flow matching from LLM samples, or FlowMM's uniform base)",
}


def _run(args: argparse.Namespace) -> int:
    if args.kind == "base":
        from hf_crystal.training.base import main
    elif args.kind == "lora":
        from hf_crystal.training.lora import main
    else:
        from hf_crystal.training.refiner import main

    out = main(args.options, prog=f"hf-crystal train {args.kind}")
    print(f"saved to {out}")
    return 0


def add_parser(subparsers) -> None:
    """Add `train KIND [OPTIONS...]` (KIND: base, lora or refiner) to the CLI's subparsers."""
    kinds = "\n".join(f"  {kind:8}{text}" for kind, text in KINDS.items())
    train = subparsers.add_parser(
        "train",
        help="train crystal language models (from-scratch base, LoRA) and the refiner",
        description="Train crystal language models with TRL's SFTTrainer.\n\nkinds:\n" + kinds,
        epilog="Options of a kind (every trl.SFTConfig and trl.ModelConfig flag, --config FILE.yaml): "
        "hf-crystal train KIND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("kind", choices=list(KINDS), metavar="KIND", help=", ".join(KINDS))
    train.add_argument("options", nargs=argparse.REMAINDER, metavar="OPTIONS", help="options of the kind")
    train.set_defaults(func=_run)
