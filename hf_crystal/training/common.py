"""What the base and LoRA trainers share: configuration, task data with fresh augmentation, SFTConfig.

Fresh augmentation every epoch: `task_dataset` draws, for every epoch e and every structure i, one
task of the `TaskMix` (generation with random conditions or infill, with a random translation) from
a generator seeded by (seed, e, i), and writes the epochs one after another, each in its own seeded
order. The trainer makes one sequential pass over this dataset (`num_train_epochs=1`,
`train_sampling_strategy="sequential"`), so it sees every structure once per epoch, each time with a
new augmentation, and the data are a pure function of the seed: a resumed run skips exactly the
batches it has already trained on. TRL tokenizes the prompt/completion pairs once, up front.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
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
from trl import SFTConfig, SFTTrainer

from hf_crystal.data import build_dataset, load_crystal_dataset
from hf_crystal.hub import push_folder, render_model_card
from hf_crystal.prompts import CONDITIONS, DEFAULT_INFILL_FRACTION, TaskMix
from hf_crystal.text import decode

__all__ = [
    "CHECKPOINT_SUBDIR",
    "TrainingConfig",
    "TrainingConfigError",
    "epochs_to_draw",
    "finish_run",
    "load_task_structures",
    "resume_checkpoint",
    "sft_config",
    "task_dataset",
]

#: Checkpoints live in this folder inside the output folder, so the output folder stays Hub-shaped.
CHECKPOINT_SUBDIR = "checkpoints"
# Gruver et al. 2024 (SPEC 3): lr 1e-4, cosine schedule with 100 warmup steps, 10 epochs, batch 1.
LEARNING_RATE = 1e-4
WARMUP_STEPS = 100
EPOCHS = 10
BATCH_SIZE = 1


class TrainingConfigError(ValueError):
    """A training configuration or input that cannot be used; the message says what to change."""


@dataclass
class TrainingConfig:
    """Options shared by the base and LoRA trainers; YAML keys and CLI flags use these names.

    `sft` holds any further `trl.SFTConfig` arguments (e.g. bf16, deepspeed, fsdp, eval_strategy);
    they override the values derived here.
    """

    dataset: str | None = None
    output_dir: str | None = None
    dataset_id: str | None = None
    train_split: str = "train"
    epochs: int = EPOCHS
    max_steps: int = -1
    learning_rate: float = LEARNING_RATE
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = WARMUP_STEPS
    per_device_train_batch_size: int = BATCH_SIZE
    gradient_accumulation_steps: int = 1
    max_length: int | None = None
    completion_only_loss: bool = True
    activation_checkpointing: bool | None = None
    infill_fraction: float = DEFAULT_INFILL_FRACTION
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    property_columns: dict[str, str] = field(default_factory=dict)
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 3
    resume: bool | str = False
    push_to_hub: str | None = None
    private: bool = False
    license: str | None = None
    metrics: str | None = None
    sft: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any):
        """The config from a YAML file (optional) with `overrides` (None values ignored) on top."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                values = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise TrainingConfigError(f"cannot read config {path}: {err}") from None
            if not isinstance(values, dict):
                raise TrainingConfigError(f"{path} must hold a mapping of option: value")
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}  # e.g. --sft bf16=true adds to the YAML's sft
            elif value is not None:
                values[key] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingConfigError(f"unknown options {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise TrainingConfigError for a missing or inconsistent option."""
        for name in ("dataset", "output_dir"):
            if not getattr(self, name):
                raise TrainingConfigError(f"'{name}' is required (YAML key or --{name.replace('_', '-')})")
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown:
            raise TrainingConfigError(f"unknown conditions {sorted(unknown)}; known: {list(CONDITIONS)}")
        if not 0 <= self.infill_fraction <= 1:
            raise TrainingConfigError(f"infill_fraction must be in [0, 1], got {self.infill_fraction}")
        if self.epochs < 1 and self.max_steps <= 0:
            raise TrainingConfigError("give epochs >= 1 or max_steps > 0")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / CHECKPOINT_SUBDIR

    @property
    def hub_dataset(self) -> str | None:
        """The dataset's Hub id for card metadata: `dataset_id`, or `dataset` when it is not a local path."""
        return self.dataset_id or (None if Path(self.dataset).exists() else self.dataset)

    def hyperparameters(self) -> dict[str, Any]:
        """The training hyperparameters a model card reports."""
        keys = (
            "learning_rate",
            "lr_scheduler_type",
            "warmup_steps",
            "epochs",
            "max_steps",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "completion_only_loss",
            "infill_fraction",
            "conditions",
            "seed",
        )
        values = {k: getattr(self, k) for k in keys}
        del values["max_steps" if self.max_steps <= 0 else "epochs"]  # max_steps overrides epochs
        return values


def _rows(config: TrainingConfig) -> Dataset:
    source = Path(config.dataset)
    try:
        if source.is_file():  # a structure source (CSV, CIF, ...): build the dataset on the fly
            dataset, _ = build_dataset(source, seed=config.seed)
            return dataset[config.train_split]
        return load_crystal_dataset(config.dataset, split=config.train_split)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise TrainingConfigError(
            f"cannot load split {config.train_split!r} of dataset {config.dataset!r}: {err}"
        ) from None


def load_task_structures(config: TrainingConfig) -> tuple[list[Structure], list[dict[str, Any]]]:
    """The structures of the training split and, for each, the condition values the task mix may use."""
    rows = _rows(config)
    missing = sorted({c for c in config.property_columns.values() if c not in rows.column_names})
    if missing or ("cif" not in rows.column_names and "text" not in rows.column_names):
        raise TrainingConfigError(
            f"dataset {config.dataset!r} lacks columns {missing or ['cif or text']}; it has {rows.column_names}"
        )
    columns = {key: config.property_columns.get(key, key) for key in config.conditions if key != "formula"}
    structures, properties = [], []
    with (
        warnings.catch_warnings()
    ):  # pymatgen warns about every CIF coordinate it snaps to a special position
        warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
        for row in tqdm(rows, desc="reading structures", unit=" structures"):
            cif = row.get("cif")
            structures.append(Structure.from_str(cif, fmt="cif") if cif else decode(row["text"]))
            properties.append({key: row.get(column) for key, column in columns.items()})
    if not structures:
        raise TrainingConfigError(f"split {config.train_split!r} of {config.dataset!r} is empty")
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


def epochs_to_draw(config: TrainingConfig, args: SFTConfig, n_structures: int) -> int:
    """Epochs of tasks to draw: `config.epochs`, or as many as `max_steps` consumes when it is set."""
    if args.max_steps <= 0:
        return config.epochs
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return math.ceil(args.max_steps * per_step / n_structures)


def sft_config(config: TrainingConfig, **defaults: Any) -> SFTConfig:
    """The SFTConfig of a run: one sequential pass over the task dataset (see the module docstring).

    CPU vs GPU is detected (`use_cpu`, bf16 when the GPU supports it); `defaults` fill what the config
    leaves open and `config.sft` overrides everything.
    """
    cpu = not torch.cuda.is_available()
    kwargs = {
        "output_dir": str(config.checkpoint_dir),
        "num_train_epochs": 1,
        "train_sampling_strategy": "sequential",
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type,
        "warmup_steps": config.warmup_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "completion_only_loss": config.completion_only_loss,
        "activation_checkpointing": not cpu
        if config.activation_checkpointing is None
        else config.activation_checkpointing,
        "use_cpu": cpu,
        "bf16": not cpu and torch.cuda.is_bf16_supported(),
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "report_to": "none",
        **defaults,
    }
    if config.max_length is not None:
        kwargs["max_length"] = config.max_length
    kwargs.update(config.sft)
    try:
        return SFTConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise TrainingConfigError(f"invalid trainer options: {err}") from None


def resume_checkpoint(config: TrainingConfig) -> str | None:
    """The checkpoint to resume from: None, the latest in the checkpoint folder (resume=True), or a path."""
    if not config.resume:
        return None
    if config.resume is True:
        found = config.checkpoint_dir.is_dir() and get_last_checkpoint(str(config.checkpoint_dir))
        if not found:
            raise TrainingConfigError(f"nothing to resume: no checkpoint-* folder in {config.checkpoint_dir}")
        return found
    if not Path(config.resume).is_dir():
        raise TrainingConfigError(f"checkpoint {config.resume} does not exist")
    return str(config.resume)


def finish_run(
    trainer: SFTTrainer,
    config: TrainingConfig,
    kind: str,
    *,
    n_structures: int,
    base_model: str | None = None,
    push_ignore: tuple[str, ...] = (),
    **card_kwargs: Any,
) -> Path:
    """Save the final model Hub-shaped with its card and loss log, push it if asked; returns the folder.

    The trainer's training_args.bin (a pickle) is removed; checkpoints stay out of the push.
    """
    out = Path(config.output_dir)
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
            repo_id=config.push_to_hub or out.name,
            base_model=base_model,
            datasets=[config.hub_dataset] if config.hub_dataset else [],
            license=config.license,
            hyperparameters=config.hyperparameters(),
            training_results={k: v for k, v in training_results.items() if v is not None},
            metrics=config.metrics,
            **card_kwargs,
        )
        card.save(out / "README.md")
        if config.push_to_hub:
            ignore = [f"{CHECKPOINT_SUBDIR}/*", "train_log.json", *push_ignore]
            url = push_folder(out, config.push_to_hub, private=config.private, ignore_patterns=ignore)
            print(f"pushed to {url}")
    trainer.accelerator.wait_for_everyone()
    return out
