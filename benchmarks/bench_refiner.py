"""Refiner throughput (structures/s) by number of Euler steps, batch size and model size, on random weights.

End to end through `CrystalRefinerPipeline` (Niggli reduction, Euler steps, back to pymatgen), MP-20-sized
crystals: the first structures of ``--data`` (a CDVAE CSV, default ../shared/data/mp_20/val.csv) or, when absent,
random structures of 4-20 atoms. Throughput does not depend on training, so the weights are random.

    python benchmarks/bench_refiner.py --threads 1
    python benchmarks/bench_refiner.py --sizes 64x3 128x3x64 --steps 10 100 --batch-sizes 64 --threads 2
    python benchmarks/bench_refiner.py --sizes default --steps 10 --batch-sizes 64 --symmetry none 0.1 --threads 1

`--symmetry` times the plain flow ("none") and the symmetry-preserving one at the given tolerances (Å) in one run
(finding the operations, the projection and the projected steps; `hf_crystal.symmetry`). `--repeats N` times each
setting N times, interleaved (plain, symmetric, plain, ...), and reports the median rate, every rate, and the median
time per structure relative to the plain flow's ("x plain"). A row "search T" times only what the symmetric flow
cannot skip, spglib's search for the operations at tolerance T on each Niggli-reduced cell
(`hf_crystal.symmetry.symmetry_operations`; the cells are reduced outside the timing): its "x plain" is the floor of
the symmetric flow's cost on those structures.

    python benchmarks/bench_refiner.py --sizes default --steps 10 --batch-sizes 64 --symmetry none 0.1 --repeats 5 \
        --threads 1 --data samples.extxyz

With symmetry, structures whose refined output is structurally invalid are refined again (a rung lower on the
symmetry ladder), so the time depends on the weights: `--refiner ID` times a trained refiner (a folder or Hub id,
e.g. the embedded hf-crystal/crystal-refiner-mp20-lora) instead of random weights of `--sizes`:

    python benchmarks/bench_refiner.py --refiner hf-crystal/crystal-refiner-mp20-lora --steps 10 --batch-sizes 64 \
        --symmetry none 0.1 --repeats 5 --threads 1 --data samples.extxyz

A size is HIDDENxLAYERS[xEDGE[xFREQS]] (edge width, default HIDDEN // 2; Fourier frequencies, default the model's);
"default" is the model's default configuration.

On a CPU shared with other jobs, OpenMP threads that spin-wait for a busy core stall every small op: with two
threads on a loaded 2-core machine the default model fell from ~60 to ~1 structure/s. Use ``--threads 1`` or set
``OMP_WAIT_POLICY=PASSIVE`` before starting Python.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Element, Lattice, Structure

from hf_crystal.refiner import CrystalFlowScheduler, CrystalRefinerPipeline, CSPNetModel
from hf_crystal.refiner.batching import niggli_reduced
from hf_crystal.symmetry import SymmetryError, symmetry_operations

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mp_20" / "val.csv"
# MP-20: at most 20 atoms per cell.
MIN_ATOMS, MAX_ATOMS = 4, 20
# Structures timed at batch size 1 (larger batches time exactly one batch).
SINGLE_STRUCTURES = 8


def random_structures(n: int, seed: int) -> list[Structure]:
    """Random cells of 4-20 atoms at a typical density (about 15 Å^3 per atom), angles 70-110°."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = int(rng.integers(MIN_ATOMS, MAX_ATOMS + 1))
        length = (15.0 * atoms) ** (1 / 3)
        lattice = Lattice.from_parameters(*(length * rng.uniform(0.8, 1.2, 3)), *rng.uniform(70, 110, 3))
        species = [Element.from_Z(int(z)) for z in rng.integers(1, 84, atoms)]
        out.append(Structure(lattice, species, rng.random((atoms, 3))))
    return out


def load_structures(path: Path, n: int, seed: int) -> tuple[list[Structure], str]:
    if path.exists():
        from hf_crystal.structure_io import read_structures

        _, structures, _ = read_structures(path)
        return structures[:n], str(path)
    return random_structures(n, seed), f"random structures, {MIN_ATOMS}-{MAX_ATOMS} atoms"


def search(structures: list[Structure], tolerance: float) -> None:
    """spglib's search for the operations of each structure at `tolerance` (Å), as the symmetric flow's first rung."""
    for structure in structures:
        try:
            symmetry_operations(structure, tolerance)
        except SymmetryError:
            pass


def model_config(size: str) -> dict:
    if size == "default":
        return {}
    hidden, layers, *rest = (int(part) for part in size.split("x"))
    config = {"hidden_dim": hidden, "num_layers": layers, "edge_dim": rest[0] if rest else hidden // 2}
    return config | ({"num_freqs": rest[1]} if len(rest) > 1 else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", nargs="+", default=["default", "128x3", "128x4x64"])
    parser.add_argument("--refiner", help="time this trained refiner (folder or Hub id) instead of --sizes")
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--symmetry", nargs="+", default=["none"], help='symmetry tolerances in Å, "none" for the plain flow'
    )
    parser.add_argument("--repeats", type=int, default=1, help="timings of each setting, interleaved")
    parser.add_argument("--num", type=int, help="structures per timing (default: one batch)")
    args = parser.parse_args()
    tolerances = list(dict.fromkeys(None if t == "none" else float(t) for t in args.symmetry))

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    structures, source = load_structures(args.data, args.num or max(args.batch_sizes), args.seed)
    sizes = np.array([len(s) for s in structures])
    print(f"structures: {source}; {len(structures)} with {sizes.mean():.1f} atoms on average")
    print(f"torch threads: {torch.get_num_threads()}; load average at start: {os.getloadavg()}")

    header = (
        f"| {'model':<26} | {'params':>8} | {'steps':>5} | {'batch':>5} | {'symmetry':>10} | {'structures/s':>12} "
        f"| {'x plain':>7} | every run (structures/s) |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for size in [args.refiner] if args.refiner else args.sizes:
        if args.refiner:
            pipe = CrystalRefinerPipeline.from_pretrained(args.refiner)
            model = pipe.model
        else:
            model = CSPNetModel(**model_config(size)).eval()
            pipe = CrystalRefinerPipeline(model=model, scheduler=CrystalFlowScheduler())
        config = model.config
        name = f"{config.hidden_dim}x{config.num_layers} edge {config.edge_dim} k {config.num_freqs}"
        params = sum(p.numel() for p in model.parameters())
        pipe.set_progress_bar_config(disable=True)
        pipe(structures[:2], num_inference_steps=2)  # warm-up
        for steps in args.steps:
            for batch_size in args.batch_sizes:
                chunk = structures[: args.num or (batch_size if batch_size > 1 else SINGLE_STRUCTURES)]
                cells = [niggli_reduced(s) for s in chunk] if any(tolerances) else []
                rates = {setting: [] for setting in tolerances + [f"search {t}" for t in tolerances if t]}
                for _ in range(args.repeats):
                    for setting in rates:
                        start = time.perf_counter()
                        if isinstance(setting, str):
                            search(cells, float(setting.split()[1]))
                        else:
                            pipe(
                                chunk,
                                num_inference_steps=steps,
                                batch_size=batch_size,
                                symmetry_tolerance=setting,
                            )
                        rates[setting].append(len(chunk) / (time.perf_counter() - start))
                for setting, runs in rates.items():
                    rate = float(np.median(runs))
                    ratio = f"{np.median(rates[None]) / rate:.2f}" if None in rates else "-"
                    every = ", ".join(f"{r:.1f}" for r in runs)
                    print(
                        f"| {name:<26} | {params:>8} | {steps:>5} | {batch_size:>5} | {str(setting):>10} "
                        f"| {rate:>12.1f} | {ratio:>7} | {every} |",
                        flush=True,
                    )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
