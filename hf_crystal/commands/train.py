"""`hf-crystal train base|lora`: the command-line shell over `train_base` and `train_lora`.

Options come from a YAML file (`--config`) with command-line flags on top; flags left out keep the
YAML value or the default. `--sft KEY=VALUE` passes any further `trl.SFTConfig` argument.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

__all__ = ["add_parser"]


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options (keys as the long flags, with underscores)")
    parser.add_argument(
        "--dataset", help="dataset folder (hf-crystal dataset build), Hub dataset id, or a CSV/CIF source"
    )
    parser.add_argument(
        "--output-dir", help="Hub-shaped output folder; checkpoints go to its checkpoints/ subfolder"
    )
    parser.add_argument("--dataset-id", help="the dataset's Hub id, for the card (when --dataset is local)")
    parser.add_argument("--train-split", help="split to train on (default train)")
    parser.add_argument(
        "--epochs", type=int, help="passes over the data, each freshly augmented (default 10)"
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--lr-scheduler-type", help="e.g. cosine (default), linear, constant")
    parser.add_argument("--warmup-steps", type=int, help="default 100")
    parser.add_argument("--batch-size", dest="per_device_train_batch_size", type=int, help="per device")
    parser.add_argument("--gradient-accumulation-steps", type=int)
    parser.add_argument("--max-length", type=int, help="truncate tokenized examples to this length")
    parser.add_argument(
        "--full-sequence-loss",
        dest="completion_only_loss",
        action="store_false",
        default=None,
        help="loss on prompt and completion (the paper's choice) instead of the completion only",
    )
    parser.add_argument("--infill-fraction", type=float, help="share of infill tasks (default 1/3)")
    parser.add_argument(
        "--conditions", type=lambda s: s.split(","), help="comma-separated condition keys prompts may use"
    )
    parser.add_argument(
        "--property-column",
        dest="property_columns",
        type=_key_value,
        action="append",
        metavar="CONDITION=COLUMN",
        help="read a condition from another column, e.g. formation_energy_per_atom=heat_ref",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--logging-steps", type=int)
    parser.add_argument("--save-steps", type=int, help="checkpoint every this many steps")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="CHECKPOINT",
        help="resume from the latest checkpoint in the output folder, or from CHECKPOINT",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="push the output folder to this Hub repo")
    parser.add_argument("--private", action="store_true", default=None, help="create the Hub repo private")
    parser.add_argument("--license", help="license for the card metadata")
    parser.add_argument("--metrics", help="metrics JSON (hf-crystal evaluate) whose numbers go on the card")
    parser.add_argument(
        "--sft",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="any further trl.SFTConfig argument, e.g. --sft bf16=true --sft eval_strategy=steps",
    )


def _overrides(args: argparse.Namespace, skip: tuple[str, ...]) -> dict[str, Any]:
    values = {k: v for k, v in vars(args).items() if k not in skip}
    for key in ("property_columns", "sft"):
        if values.get(key) is not None:
            values[key] = dict(values[key])
    return values


_SKIP = ("config", "func", "command", "train_command")


def _run_base(args: argparse.Namespace) -> int:
    from hf_crystal.training.base import BaseTrainingConfig, train_base

    config = BaseTrainingConfig.load(args.config, **_overrides(args, _SKIP))
    train_base(config)
    print(f"saved to {config.output_dir}")
    return 0


def _run_lora(args: argparse.Namespace) -> int:
    from hf_crystal.training.lora import LoraTrainingConfig, train_lora

    config = LoraTrainingConfig.load(args.config, **_overrides(args, _SKIP))
    train_lora(config)
    print(f"saved to {config.output_dir}")
    return 0


def add_parser(subparsers) -> None:
    """Add `train` with its `base` and `lora` subcommands to the CLI's subparsers."""
    from hf_crystal.training.presets import MODEL_PRESETS

    train = subparsers.add_parser("train", help="train crystal language models (from-scratch base, LoRA)")
    kinds = train.add_subparsers(dest="train_command", required=True, metavar="KIND")

    base = kinds.add_parser(
        "base",
        help="train a small LLaMA-architecture model from scratch with the crystal tokenizer",
        description="Train a LLaMA-architecture causal LM from scratch on crystal text (TRL SFTTrainer).",
    )
    base.add_argument("--preset", choices=list(MODEL_PRESETS), help="model size (default small)")
    _add_common_arguments(base)
    base.set_defaults(func=_run_base)

    lora = kinds.add_parser(
        "lora",
        help="fine-tune LoRA adapters on any causal LM (Hub id or local folder)",
        description="Fine-tune a LoRA adapter with TRL SFTTrainer + PEFT; runs under `accelerate launch`.",
    )
    lora.add_argument("--model", help="base causal LM: Hub id or local folder")
    lora.add_argument("--revision", help="revision of the base on the Hub")
    lora.add_argument(
        "--base-model-id", help="Hub id of the base when --model is a local folder (recorded in the adapter)"
    )
    lora.add_argument("--tokenizer", help="tokenizer to use instead of the base's (pushed with the adapter)")
    lora.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    lora.add_argument("--lora-alpha", type=int, help="default 32")
    lora.add_argument("--lora-dropout", type=float, help="default 0.05")
    lora.add_argument(
        "--target-modules", type=lambda s: s.split(","), help="comma-separated (default q_proj,v_proj)"
    )
    _add_common_arguments(lora)
    lora.set_defaults(func=_run_lora)
