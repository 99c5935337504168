"""Train the FlowLLM refiner (`hf_crystal.refiner`) with FlowMM's recipe: `hf-crystal train refiner`.

x1 is a training structure; x0 is either a sample of a fine-tuned LLM prompted with x1's formula
(`--base llm`, FlowLLM; pairs from `hf_crystal.training.pairs`, cached and resumable; a Wyckoff-text LLM is
prompted with x1's formula and space group, its atoms paired within Wyckoff orbits in one cell,
`hf_crystal.training.wyckoff_pairs`, and the flow then keeps x1's group: the base noise, the interpolant and both
coordinate velocities are projected with `hf_crystal.symmetry.SymmetryProjector`) or a draw of
FlowMM's uniform base (`--base uniform`: uniform torus coordinates, log-normal lattice lengths fitted
on the training set, uniform angles; the ablation). Each step draws a batch of pairs and a time t per
crystal, and fits the model's velocities to the conditional flow-matching targets with FlowMM's
weighted MSE; AdamW with warm-up and a cosine decay to a floor, EMA weights for inference.

Batches are a pure function of (seed, step), so `--resume` continues exactly from a checkpoint
(`<output_dir>/checkpoints/checkpoint-N`, written by `accelerate.Accelerator.save_state`: model safetensors,
optimizer, schedule, EMA weights and the loss log).
The output folder is a Hub-shaped `CrystalRefinerPipeline` (EMA weights) with a card, the loss log
(train_log.json) and its plot (loss.png).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from pymatgen.core import Structure
from tqdm.auto import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup
from transformers.trainer_utils import get_last_checkpoint

from hf_crystal.cache import cache_dir
from hf_crystal.cards import render_model_card
from hf_crystal.hub import push_folder
from hf_crystal.refiner import (
    CrystalBatch,
    CrystalFlowScheduler,
    CrystalRefinerPipeline,
    CSPNetModel,
    flow_matching_loss,
    interpolate,
)
from hf_crystal.refiner.scheduling_crystal_flow import FlowTarget
from hf_crystal.sampling import TEMPERATURE, TOP_P
from hf_crystal.symmetry import SymmetryError, SymmetryOperations, SymmetryProjector
from hf_crystal.training.common import (
    CHECKPOINT_SUBDIR,
    DataArguments,
    TrainingConfigError,
    TrainingParser,
    parse_configs,
    row_structure,
    training_rows,
)
from hf_crystal.training.pairs import PairSettings, build_pairs

__all__ = ["RefinerArguments", "main", "parse_args", "train_refiner"]

logger = logging.getLogger(__name__)

# FlowMM (scripts_model/conf): AdamW 3e-4 with a cosine decay to 1e-5, EMA 0.999, batch 128.
LEARNING_RATE = 3e-4
MIN_LEARNING_RATE = 1e-5
EMA_DECAY = 0.999
BASES = ("llm", "uniform")
MODEL_SIZES = ("hidden_dim", "edge_dim", "num_layers", "time_dim", "num_freqs")
# Options that are not hyperparameters of the model (the card lists the rest; sizes go to its architecture).
_NOT_HYPERPARAMETERS = (
    "dataset",
    "output_dir",
    "resume",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "pairs_cache_dir",
    "num_threads",
)
# A file `Accelerator.save_state` writes into every checkpoint folder.
_CHECKPOINT_MARKER = "optimizer.bin"


@dataclass(kw_only=True)
class RefinerArguments(DataArguments):
    """Options of a refiner training run (YAML keys and flags use these names)."""

    output_dir: str = field(metadata={"help": "Hub-shaped output folder; checkpoints go to its checkpoints/"})
    base: str = field(default="llm", metadata={"help": "x0: 'llm' (FlowLLM) or 'uniform' (FlowMM's base)"})
    llm: str | None = field(
        default=None, metadata={"help": "LLM or LoRA adapter (folder or Hub id) for --base llm"}
    )
    llm_revision: str | None = field(default=None, metadata={"help": "Hub revision of --llm"})
    llm_batch_size: int = field(default=64, metadata={"help": "prompts per generate call for the pairs"})
    llm_temperature: float = TEMPERATURE
    llm_top_p: float = TOP_P
    pairs_cache_dir: str | None = field(
        default=None, metadata={"help": "cache of LLM pairs (default ~/.cache/hf_crystal/refiner_pairs)"}
    )
    limit: int | None = field(default=None, metadata={"help": "train on the first N structures only"})
    hidden_dim: int | None = field(default=None, metadata={"help": "model size (default: CSPNetModel's)"})
    edge_dim: int | None = None
    num_layers: int | None = None
    time_dim: int | None = None
    num_freqs: int | None = None
    max_steps: int = 2000
    batch_size: int = field(default=64, metadata={"help": "crystals per optimizer step"})
    learning_rate: float = LEARNING_RATE
    min_learning_rate: float = MIN_LEARNING_RATE
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = EMA_DECAY
    base_noise_std: float = field(
        default=0.0,
        metadata={"help": "Gaussian noise on x0's fractional coordinates in training (std, fractional)"},
    )
    inference_noise_std: float | None = field(
        default=None,
        metadata={"help": "base noise saved in the scheduler for inference (default: --base_noise_std)"},
    )
    symmetry_projection: bool = field(
        default=True,
        metadata={
            "help": "Wyckoff-text LLM: keep x1's space group in training (project the base noise, the interpolant "
            "and both coordinate velocities with its operations)"
        },
    )
    wyckoff_attempts: int = field(
        default=1,
        metadata={
            "help": "Wyckoff-text LLM: samples drawn per structure for its pair, the first with x1's Wyckoff "
            "orbits kept (else the first)"
        },
    )
    wyckoff_fallback: bool = field(
        default=False,
        metadata={
            "help": "Wyckoff-text LLM: also train on pairs whose Wyckoff orbits differ from x1's (atoms matched "
            "by element in the shared cell, no projection)"
        },
    )
    anti_annealing_slope: float = field(default=0.0, metadata={"help": "saved in the scheduler (inference)"})
    anti_annealing_offset: float = 0.0
    logging_steps: int = 50
    save_steps: int = 500
    seed: int = 0
    num_threads: int | None = field(
        default=None, metadata={"help": "torch threads (default: torch's choice)"}
    )
    push_to_hub: bool = False
    hub_model_id: str | None = field(default=None, metadata={"help": "repo id (default: the folder's name)"})
    hub_private_repo: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base not in BASES:
            raise TrainingConfigError(f"base must be one of {BASES}, got {self.base!r}")
        if self.base == "llm" and not self.llm:
            raise TrainingConfigError("--base llm needs --llm: the model or adapter whose samples are x0")
        if self.max_steps < 1 or self.batch_size < 1 or self.wyckoff_attempts < 1:
            raise TrainingConfigError("max_steps, batch_size and wyckoff_attempts must be positive")
        if self.base_noise_std < 0 or (self.inference_noise_std or 0) < 0:
            raise TrainingConfigError("base_noise_std and inference_noise_std must be >= 0")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / CHECKPOINT_SUBDIR


@dataclass
class _Pairs:
    """Training crystals as per-crystal tensors; x0 is None for the uniform base (drawn every step).

    `operations` (Wyckoff pairs with the projection): x1's space-group operations per crystal (None: not kept).
    """

    x1: list[CrystalBatch]
    x0: list[CrystalBatch] | None
    log_length_mean: torch.Tensor
    log_length_std: torch.Tensor
    operations: list[SymmetryOperations | None] | None = None

    def batch(
        self, indices: Sequence[int], scheduler: CrystalFlowScheduler, generator: torch.Generator
    ) -> tuple[CrystalBatch, CrystalBatch, SymmetryProjector | None]:
        """(x0, x1, projector) of the crystals `indices`: x0 drawn by the scheduler's `sample_base` (projected
        onto x1's group when the pairs keep it, as at inference), and the projector (None without symmetry)."""
        x1 = _concat([self.x1[i] for i in indices])
        x0 = x1 if self.x0 is None else _concat([self.x0[i] for i in indices])
        projector = None
        if self.operations is not None:
            projector = SymmetryProjector(
                [self.operations[i] for i in indices], [len(self.x1[i].atom_types) for i in indices]
            )
        return scheduler.sample_base(x0, generator, project=projector), x1, projector


def _concat(crystals: Sequence[CrystalBatch]) -> CrystalBatch:
    return CrystalBatch(
        atom_types=torch.cat([c.atom_types for c in crystals]),
        frac_coords=torch.cat([c.frac_coords for c in crystals]),
        lattice=torch.cat([c.lattice for c in crystals]),
        crystal_index=torch.cat([torch.full_like(c.crystal_index, i) for i, c in enumerate(crystals)]),
    )


def _singles(structures: Sequence[Structure]) -> list[CrystalBatch]:
    """One CrystalBatch per structure, already Niggli-reduced (pairs are reduced before pairing)."""
    return [CrystalBatch.from_structures([s], niggli=False) for s in structures]


def _training_structures(args: RefinerArguments) -> tuple[list[str], list[Structure]]:
    rows = training_rows(args.dataset, args.train_split, args.seed)
    if args.limit is not None:
        rows = rows.select(range(min(args.limit, len(rows))))
    ids = [str(r.get("material_id", i)) for i, r in enumerate(rows)]
    return ids, [row_structure(r) for r in tqdm(rows, desc="reading structures", unit=" structures")]


def load_pairs(args: RefinerArguments) -> tuple[_Pairs, dict]:
    """The training crystals (and LLM pairs) of a run, and figures about them for the card and log."""
    ids, structures = _training_structures(args)
    info: dict = {"training structures": len(structures)}
    if args.base == "llm":
        from transformers import pipeline

        from hf_crystal.loading import load_crystal_model

        model, tokenizer = load_crystal_model(args.llm, revision=args.llm_revision)
        pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer)
        settings = PairSettings(
            args.llm_temperature, args.llm_top_p, args.seed, args.llm_batch_size, args.wyckoff_attempts
        )
        cache = Path(args.pairs_cache_dir or cache_dir("refiner_pairs"))
        pairs = build_pairs(
            pipe, ids, structures, cache, settings, model_name=args.llm, revision=args.llm_revision
        )
        operations = None
        if "matched" in pairs.column_names:  # a Wyckoff-text LLM
            usable, operations = _wyckoff_pairs(pairs, args, info)
        else:
            usable = pairs.filter(lambda row: row["x0"] is not None)
            info["pairs without an LLM sample (skipped)"] = len(pairs) - len(usable)
            info["mean transport cost, index pairing"] = round(float(np.mean(usable["cost_index"])), 5)
            info["mean transport cost, optimal assignment"] = round(
                float(np.mean(usable["cost_assigned"])), 5
            )
        x1 = [Structure.from_str(c, fmt="json") for c in usable["x1"]]
        x0 = _singles([Structure.from_str(c, fmt="json") for c in usable["x0"]])
    else:
        x1, x0, operations = [s.get_reduced_structure() for s in structures], None, None
    if operations is not None:
        operations = [None if row is None else _operations(x1[i], *row) for i, row in enumerate(operations)]
        info["usable pairs whose operations were not found (trained without projection)"] = operations.count(
            None
        )
    x1 = _singles(x1)
    log_lengths = torch.cat([c.lattice[:, :3] for c in x1])
    return _Pairs(x1, x0, log_lengths.mean(0), log_lengths.std(0), operations), info


def _wyckoff_pairs(pairs, args: RefinerArguments, info: dict) -> tuple:
    """The pairs of a Wyckoff-text LLM to train on, and (space group, cell) per pair for the projection (None
    where it is off or the pair's orbits differ); counts go to `info`."""
    counts = Counter(pairs["matched"])
    kinds = ("orbits", "elements") if args.wyckoff_fallback else ("orbits",)
    info["pairs with x1's Wyckoff orbits (usable)"] = counts["orbits"]
    what = "atoms matched by element" if args.wyckoff_fallback else "skipped"
    info[f"pairs whose Wyckoff orbits differ ({what})"] = counts["elements"]
    info["pairs without an LLM sample (skipped)"] = counts[None]
    info["x1 whose Wyckoff text does not round-trip"] = pairs["x1_roundtrip"].count(False)
    orbits = pairs.filter(lambda row: row["matched"] == "orbits")
    if len(orbits):
        info["mean transport cost, element pairing in Niggli cells"] = round(
            float(np.mean(orbits["cost_xyz"])), 5
        )
        info["mean transport cost, orbit pairing"] = round(float(np.mean(orbits["cost_assigned"])), 5)
    usable = pairs.filter(lambda row: row["matched"] in kinds)
    if not len(usable):
        raise TrainingConfigError(
            f"none of the LLM's {len(pairs)} samples has its x1's Wyckoff orbits: draw more per structure "
            "(--wyckoff_attempts) or train on the others too (--wyckoff_fallback)"
        )
    if not args.symmetry_projection:
        return usable, None
    rows = zip(usable["matched"], usable["spacegroup"], usable["cell"], strict=True)
    return usable, [(group, cell) if matched == "orbits" else None for matched, group, cell in rows]


def _operations(x1: Structure, group: int, cell: list[float]) -> SymmetryOperations | None:
    from hf_crystal.training.wyckoff_pairs import pair_operations

    try:
        return pair_operations(x1, group, cell)
    except SymmetryError:
        return None


def _batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Indices of step `step`: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    perms: dict[int, np.ndarray] = {}
    out = []
    for p in positions:
        epoch = p // n
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(perms[epoch][p % n]))
    return out


class _Progress:
    """The step reached and the loss log: saved and restored with the checkpoint (`register_for_checkpointing`)."""

    def __init__(self):
        self.step, self.log = 0, []

    def state_dict(self) -> dict:
        return {"step": self.step, "log": self.log}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.log = state["step"], state["log"]


def _resume_folder(args: RefinerArguments) -> str | None:
    if not args.resume:
        return None
    if args.resume != "latest":
        folder = args.resume
    else:
        folder = args.checkpoint_dir.is_dir() and get_last_checkpoint(str(args.checkpoint_dir))
        if not folder:
            raise TrainingConfigError(f"nothing to resume: no checkpoint-* folder in {args.checkpoint_dir}")
    if not (Path(folder) / _CHECKPOINT_MARKER).exists():
        raise TrainingConfigError(f"{folder} is not a refiner checkpoint (no {_CHECKPOINT_MARKER})")
    return folder


def _scheduler(args: RefinerArguments, pairs: _Pairs, noise_std: float) -> CrystalFlowScheduler:
    """The scheduler of this run's base distribution, with base noise `noise_std`."""
    base = {"base_noise_std": noise_std}
    if args.base == "uniform":
        base = {
            "base_distribution": "uniform",
            "log_length_mean": pairs.log_length_mean.tolist(),
            "log_length_std": pairs.log_length_std.tolist(),
        }
    return CrystalFlowScheduler(
        anti_annealing_slope=args.anti_annealing_slope,
        anti_annealing_offset=args.anti_annealing_offset,
        **base,
    )


def train_refiner(args: RefinerArguments) -> Path:
    """Train, save the Hub-shaped refiner (EMA weights) to `args.output_dir`, push it if asked."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    folder = _resume_folder(args)  # before the pairs: a wrong --resume fails at once
    pairs, info = load_pairs(args)
    scheduler = _scheduler(args, pairs, args.base_noise_std)
    torch.manual_seed(args.seed)
    sizes = {k: getattr(args, k) for k in MODEL_SIZES if getattr(args, k) is not None}
    model = CSPNetModel(**sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, args.warmup_steps, args.max_steps, min_lr=args.min_learning_rate
    )
    accelerator = Accelerator()
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    ema = EMAModel(model.parameters(), decay=args.ema_decay)
    progress = _Progress()
    accelerator.register_for_checkpointing(ema, progress)
    if folder is not None:
        accelerator.load_state(folder)
        logger.info("resumed from %s at step %d", folder, progress.step)
    model.train()
    n = len(pairs.x1)
    running, began = [], time.perf_counter()
    for step in tqdm(
        range(progress.step, args.max_steps),
        initial=progress.step,
        total=args.max_steps,
        desc="refiner",
        unit=" steps",
    ):
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x0, x1, project = pairs.batch(
            _batch_indices(step, args.batch_size, n, args.seed), scheduler, generator
        )
        t = torch.rand(x1.num_crystals, generator=generator)
        x0, x1, t = x0.to(accelerator.device), x1.to(accelerator.device), t.to(accelerator.device)
        target = interpolate((x0.frac_coords, x0.lattice), (x1.frac_coords, x1.lattice), t, x1.crystal_index)
        if project is not None:
            target = _symmetric_target(target, project)
        prediction = model(x1.atom_types, target.frac_coords, target.lattice, t, x1.crystal_index)
        if project is not None:  # as at inference: only the projected velocity moves the structure
            coord_velocity, lattice_velocity = prediction.to_tuple()
            prediction = (project.project_velocity(coord_velocity), lattice_velocity)
        loss = flow_matching_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        ema.step(model.parameters())
        running.append(loss.item())
        progress.step = step + 1
        if progress.step % args.logging_steps == 0 or progress.step == args.max_steps:
            progress.log.append(
                {
                    "step": progress.step,
                    "loss": float(np.mean(running)),
                    "learning_rate": schedule.get_last_lr()[0],
                    "seconds": round(time.perf_counter() - began, 1),
                }
            )
            running = []
        if progress.step % args.save_steps == 0 and progress.step < args.max_steps:
            accelerator.save_state(str(args.checkpoint_dir / f"checkpoint-{progress.step}"))
    model = accelerator.unwrap_model(model)
    inference = _scheduler(args, pairs, _inference_noise(args))
    return _finish(args, model, ema, inference, progress.log, info)


def _symmetric_target(target: FlowTarget, project: SymmetryProjector) -> FlowTarget:
    """The flow-matching state and coordinate velocity projected onto the pair's group.

    With x0 and x1 in one group and cell and their orbits paired, both already keep it, except where a shortest
    torus displacement and its image under an operation differ by a lattice vector (the pairs' `target_asymmetry`).
    """
    frac_coords, lattice = project(target.frac_coords, target.lattice)
    return FlowTarget(
        frac_coords=frac_coords,
        lattice=lattice,
        coord_velocity=project.project_velocity(target.coord_velocity),
        lattice_velocity=target.lattice_velocity,
    )


def _inference_noise(args: RefinerArguments) -> float:
    return args.base_noise_std if args.inference_noise_std is None else args.inference_noise_std


def _finish(
    args: RefinerArguments,
    model: CSPNetModel,
    ema: EMAModel,
    scheduler: CrystalFlowScheduler,
    log: list[dict],
    info: dict,
) -> Path:
    out = Path(args.output_dir)
    ema.copy_to(model.parameters())
    CrystalRefinerPipeline(model=model.eval(), scheduler=scheduler).save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    _plot_loss(log, out / "loss.png")
    repo_id = args.hub_model_id or out.name
    hyperparameters = {
        k: v for k, v in asdict(args).items() if v is not None and k not in _NOT_HYPERPARAMETERS + MODEL_SIZES
    }
    results = {
        **info,
        "optimizer steps": log[-1]["step"] if log else 0,
        "first logged loss": round(log[0]["loss"], 4) if log else None,
        "last logged loss": round(log[-1]["loss"], 4) if log else None,
    }
    dataset = args.dataset_id or (None if Path(args.dataset).exists() else args.dataset)
    llm_id = args.llm if args.base == "llm" and args.llm and not Path(args.llm).exists() else None
    card = render_model_card(
        "refiner",
        repo_id=repo_id,
        base_model=llm_id,
        datasets=[dataset] if dataset else [],
        license=args.license,
        hyperparameters=hyperparameters,
        training_results={k: v for k, v in results.items() if v is not None},
        architecture={k: v for k, v in model.config.items() if not k.startswith("_")},
    )
    card.save(out / "README.md")
    if args.push_to_hub:
        url = push_folder(out, repo_id, private=args.hub_private_repo)
        logger.info("pushed %s to %s", out, url)
    return out


def _plot_loss(log: list[dict], path: Path) -> None:
    if not log:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([e["step"] for e in log], [e["loss"] for e in log])
    ax.set(xlabel="step", ylabel="flow-matching loss", yscale="log", title="refiner training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> RefinerArguments:
    """`RefinerArguments` from `argv` (default: sys.argv[1:]), a `--config` YAML included."""
    (args,) = parse_configs(TrainingParser((RefinerArguments,), prog=prog), argv)
    return args


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> Path:
    """`hf-crystal train refiner` and training/train_refiner.py: parse `argv`, train; returns the output folder."""
    return train_refiner(parse_args(argv, prog))
