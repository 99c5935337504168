"""BatchedRelaxer vs torch-sim-atomistic's batched FIRE + Frechet cell filter, same CHGNet calls.

Both relax the same rattled structures with the same single-backward CHGNet (``chgnet_fast.FastCHGNet``;
for torch-sim through the thin ``ModelInterface`` of ``bench_relax.torchsim_model``): what differs is
the optimizer loop. BatchedRelaxer steps one ASE FIRE per structure on ``FastFrechetCellFilter`` (the
trajectory of CHGNet's StructOptimizer); torch-sim steps all structures at once in torch
(``frechet_cell_fire``, ``md_flavor="ase_fire"``, converged structures swapped out every
``steps_between_swaps`` steps, one global step limit). The contenders alternate ``--repeats`` times in one
process, so that load changes on a shared machine hit both; the table gives the median and the best of
the wall and CPU times and the largest energy difference with the sequential StructOptimizer
(``--reference``: off by default, it takes minutes) or else with BatchedRelaxer.

    python benchmarks/bench_torchsim.py --n 64 --batch-size 64 --repeats 3

Skips (exit 0) when torch_sim is not installed: pip install torch-sim-atomistic==0.3.0 (Python 3.11; keep
torch pinned, e.g. with a constraint file).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_relax import DEFAULT_DATA, load_structures, run_torchsim  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="BatchedRelaxer batch size")
    parser.add_argument("--swaps", type=int, nargs="+", default=[1, 5], help="torch-sim steps_between_swaps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--rattle", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", action="store_true", help="also run the sequential StructOptimizer")
    args = parser.parse_args()
    if importlib.util.find_spec("torch_sim") is None:
        print("torch_sim is not installed: nothing to compare (pip install torch-sim-atomistic)")
        return
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()

    import torch
    from chgnet.model import CHGNet, StructOptimizer
    from threadpoolctl import threadpool_limits

    from hf_crystal.evaluation.chgnet_fast import FastCHGNet
    from hf_crystal.evaluation.relax import BatchedRelaxer

    torch.set_num_threads(1)
    structures, source = load_structures(args.data, args.n, args.rattle, args.seed)
    print(
        f"{len(structures)} structures from {source}, fmax {args.fmax}, max {args.max_steps} steps, 1 thread"
    )
    model = CHGNet.load(verbose=False, use_device="cpu")
    calculator = FastCHGNet(model)
    reference = None
    if args.reference:
        optimizer = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu")
        optimizer.relax(structures[0], fmax=args.fmax, steps=2, verbose=False)
        with threadpool_limits(limits=1, user_api="blas"):
            reference = np.array(
                [
                    optimizer.relax(s, fmax=args.fmax, steps=args.max_steps, verbose=False)[
                        "trajectory"
                    ].energies[-1]
                    / len(s)
                    for s in structures
                ]
            )

    def batched():
        relaxer = BatchedRelaxer(model, fmax=args.fmax, max_steps=args.max_steps, batch_size=args.batch_size)
        results = relaxer.relax(structures, progress=False)
        return np.array([r.energy_per_atom for r in results]), np.array([r.converged for r in results])

    def torchsim(swaps):
        def run():
            with threadpool_limits(limits=1, user_api="blas"):
                return run_torchsim(
                    structures, calculator, args.fmax, args.max_steps, steps_between_swaps=swaps
                )

        return run

    contenders = {f"BatchedRelaxer (batch {args.batch_size})": batched}
    contenders |= {f"torch-sim frechet_cell_fire, swaps every {k}": torchsim(k) for k in args.swaps}
    times = {name: [] for name in contenders}
    energies = {}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            energies[name] = fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
            print(f"{name}: {times[name][-1][0]:.1f} s", flush=True)
    if reference is None:
        reference = energies[next(iter(contenders))][0]
        ref_name = "BatchedRelaxer"
    else:
        ref_name = "sequential StructOptimizer"
    load_after = os.getloadavg()
    print()
    print(
        f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs); {args.repeats} repeats"
    )
    print(
        "| contender | wall median (s) | wall best (s) | CPU median (s) | CPU best (s) "
        f"| max abs dE vs {ref_name} (meV/atom) | converged |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, runs in times.items():
        wall, cpu = np.array(runs).T
        e, conv = energies[name]
        de = float(np.nanmax(np.abs(e - reference))) * 1e3
        print(
            f"| {name} | {np.median(wall):.1f} | {wall.min():.1f} | {np.median(cpu):.1f} | {cpu.min():.1f} "
            f"| {de:.4f} | {np.mean(conv):.2f} |"
        )


if __name__ == "__main__":
    main()
