"""What the base and LoRA trainers share: option parsing, task data with fresh augmentation, the run's end.

Options are read the TRL way: `trl.TrlParser` over (script arguments, `trl.SFTConfig`, `trl.ModelConfig`),
from a YAML file (`--config`, keys as the flag names) with command-line flags on top. The script
arguments (`CrystalScriptArguments` and its subclasses) hold what is ours: the data, the task mix, the
card; every `SFTConfig` and `ModelConfig` flag is accepted as is. Our defaults (the paper's for LoRA, the
presets' for the base) are parser defaults, so YAML and flags override them.

Fresh augmentation every epoch: `task_dataset` draws, for every epoch e and every structure i, one
task of the `TaskMix` (generation with random conditions or infill, with a random translation) from
a generator seeded by (seed, e, i), and writes the epochs one after another, each in its own seeded
order. The trainer makes one sequential pass over this dataset (`num_train_epochs=1`,
`train_sampling_strategy="sequential"`), so it sees every structure once per epoch, each time with a
new augmentation, and the data are a pure function of the seed: a resumed run skips exactly the
batches it has already trained on. TRL tokenizes the prompt/completion pairs once, up front.

The output folder (`--output_dir`) is Hub-shaped; checkpoints go to its `checkpoints/` subfolder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import Dataset
from pymatgen.core import Structure
from tqdm.auto import tqdm
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from hf_crystal.cards import render_model_card
from hf_crystal.crystal_format import CRYSTAL_FORMATS, DEFAULT_FORMAT, WYCKOFF_SETTING
from hf_crystal.data import build_dataset, load_crystal_dataset
from hf_crystal.hub import CHECKPOINT_SUBDIR, push_folder
from hf_crystal.prompts import CONDITIONS, DEFAULT_INFILL_FRACTION, TaskMix
from hf_crystal.text import decode

__all__ = [
    "CHECKPOINT_SUBDIR",
    "CrystalScriptArguments",
    "TrainingConfigError",
    "TrainingParser",
    "epochs_to_draw",
    "finish_run",
    "hyperparameters",
    "json_dict",
    "load_task_structures",
    "make_parser",
    "parse_configs",
    "record_format",
    "resume_checkpoint",
    "row_structure",
    "task_dataset",
    "trainer_args",
    "training_rows",
    "validate",
]

logger = logging.getLogger(__name__)

# Gruver et al. 2024: cosine schedule with 100 warmup steps, 10 epochs.
EPOCHS = 10
COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 1,  # one pass over `epochs` freshly augmented passes (module docstring)
    "train_sampling_strategy": "sequential",
    "lr_scheduler_type": "cosine",
    "warmup_steps": 100,
    "completion_only_loss": True,
    "logging_first_step": True,
    "save_total_limit": 3,
}
_CONFIG_HELP = (
    "Options also come from a YAML file: --config FILE, keys as the flag names (underscores); flags "
    "given on the command line override it."
)


class TrainingConfigError(ValueError):
    """A training configuration or input that cannot be used; the message says what to change."""


def json_dict(value: Any, name: str) -> dict[str, Any]:
    """A dict option given as a mapping (YAML, Python) or as a JSON object string (command line)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise TrainingConfigError(
                f'{name} must be a JSON object, e.g. \'{{"key": "value"}}\': {err}'
            ) from None
    if not isinstance(value, Mapping):
        raise TrainingConfigError(f"{name} must be a mapping, got {value!r}")
    return dict(value)


@dataclass
class DataArguments:
    """Options every training run shares: its data, what to resume from, the card's dataset and license."""

    dataset: str = field(
        metadata={
            "help": "dataset folder (hf-crystal dataset build), Hub dataset id, or a CSV/CIF source file"
        }
    )
    dataset_id: str | None = field(
        default=None, metadata={"help": "the dataset's Hub id, for the card (when --dataset is local)"}
    )
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    resume: str | None = field(
        default=None,
        metadata={
            "nargs": "?",
            "const": "latest",
            "help": "resume from the latest checkpoint in <output_dir>/checkpoints, or from the checkpoint "
            "folder given",
        },
    )
    license: str | None = field(default=None, metadata={"help": "license for the card metadata"})

    def __post_init__(self) -> None:
        if self.resume is True or (
            isinstance(self.resume, str) and self.resume.lower() in ("true", "latest")
        ):
            self.resume = "latest"
        elif self.resume is False or (isinstance(self.resume, str) and self.resume.lower() in ("", "false")):
            self.resume = None

    @property
    def hub_dataset(self) -> str | None:
        """The dataset's Hub id for card metadata: `dataset_id`, or `dataset` when it is not a local path."""
        return self.dataset_id or (None if Path(self.dataset).exists() else self.dataset)


@dataclass
class CrystalScriptArguments(DataArguments):
    """The options of an LLM training run that are ours (the trainer's are `SFTConfig`, the model's
    `ModelConfig`)."""

    epochs: int = field(
        default=EPOCHS,
        metadata={
            "help": "passes over the data, each freshly augmented (the trainer makes one pass over all of "
            "them: num_train_epochs stays 1); max_steps, when set, decides instead"
        },
    )
    infill_fraction: float = field(
        default=DEFAULT_INFILL_FRACTION, metadata={"help": "share of infill tasks"}
    )
    conditions: list[str] = field(
        default_factory=lambda: list(CONDITIONS),
        metadata={"help": "condition keys generation prompts may use"},
    )
    property_columns: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "read conditions from other columns: JSON object CONDITION: COLUMN, e.g. "
            '\'{"formation_energy_per_atom": "heat_ref"}\''
        },
    )
    crystal_format: str | None = field(
        default=None,
        metadata={
            "help": f"crystal text format to train in ({', '.join(CRYSTAL_FORMATS)}); default: the dataset's "
            "crystal_format column, else xyz. Saved in the model's config (crystal_format), where the "
            "pipeline and the commands read it"
        },
    )
    metrics: str | None = field(
        default=None, metadata={"help": "metrics JSON (hf-crystal evaluate) whose numbers go on the card"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.property_columns = json_dict(self.property_columns, "property_columns")
        if isinstance(self.conditions, str):
            self.conditions = [self.conditions]
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown:
            raise TrainingConfigError(f"unknown conditions {sorted(unknown)}; known: {list(CONDITIONS)}")
        if not 0 <= self.infill_fraction <= 1:
            raise TrainingConfigError(f"infill_fraction must be in [0, 1], got {self.infill_fraction}")
        if self.crystal_format is not None and self.crystal_format not in CRYSTAL_FORMATS:
            raise TrainingConfigError(
                f"crystal_format must be one of {', '.join(CRYSTAL_FORMATS)}, got {self.crystal_format!r}"
            )


class TrainingParser(TrlParser):
    """`TrlParser` whose usage errors raise `TrainingConfigError` instead of exiting."""

    def error(self, message: str):
        raise TrainingConfigError(f"{message} (options: {self.prog} --help)")


def make_parser(
    script_arguments: type[CrystalScriptArguments],
    defaults: Mapping[str, Any],
    *,
    prog: str | None = None,
    description: str | None = None,
) -> TrlParser:
    """A `TrlParser` over (`script_arguments`, `SFTConfig`, `ModelConfig`) with our defaults.

    `defaults` (and `COMMON_DEFAULTS`, and CPU/GPU detection: `use_cpu`, `bf16` when the GPU supports it)
    become parser defaults: a YAML `--config` and command-line flags override them. `--output_dir` is
    required. Optional booleans (`--bf16`, `--completion_only_loss`, ...) may be given without a value.
    """
    cpu = not torch.cuda.is_available()
    parser = TrainingParser(
        (script_arguments, SFTConfig, ModelConfig), prog=prog, description=description, epilog=_CONFIG_HELP
    )
    parser.set_defaults(
        **{"use_cpu": cpu, "bf16": not cpu and torch.cuda.is_bf16_supported(), **COMMON_DEFAULTS, **defaults}
    )
    for action in parser._actions:
        if action.dest == "output_dir":
            action.required = True
            action.help = "Hub-shaped output folder; checkpoints go to its checkpoints/ subfolder"
        # `bool | None` fields (bf16, completion_only_loss, ...) take a value in HfArgumentParser: let `--bf16` mean true
        elif (
            isinstance(action, argparse._StoreAction)
            and action.nargs is None
            and getattr(action.type, "__name__", "") == "string_to_bool"
        ):
            action.nargs, action.const = "?", True
    return parser


def parse_configs(parser: TrlParser, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """`parser.parse_args_and_config(argv)`, every reading or parsing mistake a `TrainingConfigError`."""
    argv = list(argv) if argv is not None else None
    if argv is not None and argv[-1:] == ["--config"]:
        raise TrainingConfigError("--config needs a YAML file")
    with warnings.catch_warnings():
        # Our checkpointing defaults go to `gradient_checkpointing` (TRL's own default is there), so that both
        # `--activation_checkpointing` and the deprecated `--gradient_checkpointing` still override them.
        warnings.filterwarnings(
            "ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning
        )
        try:
            return parser.parse_args_and_config(argv)
        except TrainingConfigError:
            raise
        except (OSError, yaml.YAMLError) as err:
            raise TrainingConfigError(f"cannot read the config: {err}") from None
        except (TypeError, ValueError) as err:
            raise TrainingConfigError(str(err)) from None


def validate(script_args: CrystalScriptArguments, training_args: SFTConfig) -> None:
    """Raise TrainingConfigError for options that contradict each other or our data mechanism."""
    if training_args.num_train_epochs != 1:
        raise TrainingConfigError(
            "num_train_epochs must stay 1: the trainer makes one pass over `epochs` freshly augmented passes "
            "of the data; set --epochs instead"
        )
    if script_args.epochs < 1 and training_args.max_steps <= 0:
        raise TrainingConfigError("give epochs >= 1 or max_steps > 0")


def checkpoint_dir(training_args: SFTConfig) -> Path:
    return Path(training_args.output_dir) / CHECKPOINT_SUBDIR


def trainer_args(training_args: SFTConfig, **changes: Any) -> SFTConfig:
    """The arguments the trainer runs with: checkpoints in the checkpoint subfolder, no pushes of its own.

    The Hub-shaped folder is pushed by `finish_run` (the trainer would push its checkpoint folder).
    """
    try:
        return dataclasses.replace(
            training_args, output_dir=str(checkpoint_dir(training_args)), push_to_hub=False, **changes
        )
    except (TypeError, ValueError) as err:
        raise TrainingConfigError(f"invalid trainer options: {err}") from None


def training_rows(dataset: str, split: str = "train", seed: int = 42) -> Dataset:
    """The rows of `split` of a dataset folder or Hub id, or of a structure source file built on the fly
    (split with `seed`)."""
    source = Path(dataset)
    try:
        if source.is_file():
            built, _ = build_dataset(source, seed=seed)
            return built[split]
        return load_crystal_dataset(dataset, split=split)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise TrainingConfigError(f"cannot load split {split!r} of dataset {dataset!r}: {err}") from None


def row_structure(row: Mapping[str, Any]) -> Structure:
    """The structure of a dataset row: its `cif` (exact) or else its crystal `text`."""
    with (
        warnings.catch_warnings()
    ):  # pymatgen warns about every CIF coordinate it snaps to a special position
        warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
        cif = row.get("cif")
        return Structure.from_str(cif, fmt="cif") if cif else decode(row["text"])


def load_task_structures(
    script_args: CrystalScriptArguments, *, seed: int = 42
) -> tuple[list[Structure], list[dict[str, Any]]]:
    """The structures of the training split and, for each, the condition values the task mix may use.

    `seed` splits a structure source file that is built on the fly. A `script_args.crystal_format` left
    None is set to the dataset's (its `crystal_format` column; "xyz" for a dataset without one).
    """
    rows = training_rows(script_args.dataset, script_args.train_split, seed)
    if script_args.crystal_format is None:
        formats = set(rows["crystal_format"]) if "crystal_format" in rows.column_names else set()
        if len(formats) > 1:
            raise TrainingConfigError(
                f"dataset {script_args.dataset!r} mixes crystal formats {sorted(formats)}: give --crystal_format"
            )
        script_args.crystal_format = formats.pop() if formats else DEFAULT_FORMAT
    property_columns = script_args.property_columns
    missing = sorted({c for c in property_columns.values() if c not in rows.column_names})
    if missing or ("cif" not in rows.column_names and "text" not in rows.column_names):
        raise TrainingConfigError(
            f"dataset {script_args.dataset!r} lacks columns {missing or ['cif or text']}; it has {rows.column_names}"
        )
    columns = {key: property_columns.get(key, key) for key in script_args.conditions if key != "formula"}
    structures, properties = [], []
    for row in tqdm(rows, desc="reading structures", unit=" structures"):
        structures.append(row_structure(row))
        properties.append({key: row.get(column) for key, column in columns.items()})
    if not structures:
        raise TrainingConfigError(f"split {script_args.train_split!r} of {script_args.dataset!r} is empty")
    return structures, properties


def task_dataset(
    structures: list[Structure],
    properties: list[Mapping[str, Any]],
    task_mix: TaskMix,
    *,
    epochs: int,
    seed: int,
) -> Dataset:
    """Prompt/completion pairs: `epochs` passes over the structures, each freshly augmented and ordered."""
    prompts, completions = [], []
    for epoch in tqdm(range(epochs), desc="drawing tasks", unit=" epochs"):
        for i in np.random.default_rng([seed, epoch]).permutation(len(structures)):
            task = task_mix(structures[i], properties[i], seed=np.random.default_rng([seed, epoch, int(i)]))
            prompts.append(task["prompt"])
            completions.append(task["completion"])
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def record_format(config: Any, crystal_format: str) -> None:
    """Write `crystal_format` (and, for Wyckoff text, its setting) into a model config, for the pipeline."""
    config.crystal_format = crystal_format
    if crystal_format == "wyckoff":
        config.crystal_format_setting = WYCKOFF_SETTING


def epochs_to_draw(script_args: CrystalScriptArguments, training_args: SFTConfig, n_structures: int) -> int:
    """Epochs of tasks to draw: `script_args.epochs`, or as many as `max_steps` consumes when it is set."""
    if training_args.max_steps <= 0:
        return script_args.epochs
    per_step = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    return math.ceil(training_args.max_steps * per_step / n_structures)


def resume_checkpoint(script_args: CrystalScriptArguments, training_args: SFTConfig) -> str | None:
    """The checkpoint to resume from: None, the latest in the checkpoint folder (`--resume`), or a path.

    `--resume PATH` and SFTConfig's `--resume_from_checkpoint PATH` name a checkpoint folder.
    """
    resume = script_args.resume or training_args.resume_from_checkpoint
    if not resume:
        return None
    if resume == "latest":
        folder = checkpoint_dir(training_args)
        found = folder.is_dir() and get_last_checkpoint(str(folder))
        if not found:
            raise TrainingConfigError(f"nothing to resume: no checkpoint-* folder in {folder}")
        return found
    if not Path(resume).is_dir():
        raise TrainingConfigError(f"checkpoint {resume} does not exist")
    return str(resume)


def hyperparameters(script_args: CrystalScriptArguments, training_args: SFTConfig) -> dict[str, Any]:
    """The training hyperparameters a model card reports."""
    scheduler = training_args.lr_scheduler_type
    values = {
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": getattr(scheduler, "value", scheduler),
        "warmup_steps": training_args.warmup_steps,
        "epochs": script_args.epochs,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "max_length": training_args.max_length,
        "completion_only_loss": training_args.completion_only_loss,
        "infill_fraction": script_args.infill_fraction,
        "conditions": list(script_args.conditions),
        "seed": training_args.seed,
    }
    del values["max_steps" if training_args.max_steps <= 0 else "epochs"]  # max_steps overrides epochs
    return values


def finish_run(
    trainer: SFTTrainer,
    script_args: CrystalScriptArguments,
    training_args: SFTConfig,
    kind: str,
    *,
    n_structures: int,
    hyperparameters: Mapping[str, Any],
    base_model: str | None = None,
    push_ignore: tuple[str, ...] = (),
    **card_kwargs: Any,
) -> Path:
    """Save the final model Hub-shaped to `output_dir` with its card and loss log, push it if asked.

    Pushes (`--push_to_hub`) go to `hub_model_id` (default: the output folder's name), private with
    `--hub_private_repo`. The trainer's training_args.bin (a pickle) is removed; checkpoints stay out of
    the push. Returns the output folder.
    """
    out = Path(training_args.output_dir)
    repo_id = training_args.hub_model_id or out.name
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        (out / TRAINING_ARGS_NAME).unlink(missing_ok=True)
        (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        training_results = {
            "training structures": n_structures,
            "optimizer steps": trainer.state.global_step,
            "first logged loss": round(losses[0], 4) if losses else None,
            "last logged loss": round(losses[-1], 4) if losses else None,
        }
        card = render_model_card(
            kind,
            repo_id=repo_id,
            base_model=base_model,
            datasets=[script_args.hub_dataset] if script_args.hub_dataset else [],
            license=script_args.license,
            hyperparameters=hyperparameters,
            training_results={k: v for k, v in training_results.items() if v is not None},
            metrics=script_args.metrics,
            **card_kwargs,
        )
        card.save(out / "README.md")
        if training_args.push_to_hub:
            private = bool(training_args.hub_private_repo)
            url = push_folder(out, repo_id, private=private, ignore_patterns=push_ignore)
            logger.info("pushed %s to %s", out, url)
    trainer.accelerator.wait_for_everyone()
    return out
