"""Batched CHGNet relaxation vs a sequential loop of CHGNet's own StructOptimizer.

Same structures, same optimizer (FIRE + FrechetCellFilter), same fmax and max steps. Prints one table:
wall time, throughput (structures/s), speed-up over the sequential loop, and the largest disagreement of
the final energies (eV/atom) with the sequential run.

    python benchmarks/bench_relax.py --n 64 --batch-sizes 16 64 --fmax 0.1 --max-steps 100

Structures: the first N of ``--data`` (a CDVAE CSV, default ../shared/data/mp_20/train.csv) or, when
absent, hand-made rock-salt / perovskite cells; every structure is rattled (``--rattle`` Å) so that the
relaxation has work to do.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mp_20" / "train.csv"


def load_structures(path: Path, n: int, rattle: float, seed: int) -> tuple[list[Structure], str]:
    if path.exists():
        from hf_crystal.data import read_structures

        _, structures, _ = read_structures(path)
        source = str(path)
    else:
        base = [
            Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]),
            Structure(
                Lattice.cubic(3.9),
                ["Sr", "Ti", "O", "O", "O"],
                [[0] * 3, [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            ),
        ]
        structures = [base[i % 2].copy() for i in range(n)]
        source = "hand-made NaCl / SrTiO3 cells"
    rng = np.random.default_rng(seed)
    out = [
        Structure(
            s.lattice,
            s.species,
            s.cart_coords + rng.normal(0, rattle, (len(s), 3)),
            coords_are_cartesian=True,
        )
        for s in structures[:n]
    ]
    return out, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=64, help="number of structures")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian displacement std (Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (on a shared 2-core machine, 2 oversubscribe)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    from chgnet.model import CHGNet, StructOptimizer
    from threadpoolctl import threadpool_limits

    from hf_crystal.evaluation.relax import BatchedRelaxer

    torch.set_num_threads(args.threads)
    # One BLAS thread for both contenders: the optimizers' 3x3 linear algebra gains nothing from threads
    # and loses a lot to thread hand-offs on a busy machine (BatchedRelaxer does this itself).
    threadpool_limits(limits=1, user_api="blas")

    structures, source = load_structures(args.data, args.n, args.rattle, args.seed)
    n_atoms = np.array([len(s) for s in structures])
    print(
        f"{len(structures)} structures from {source}, {n_atoms.sum()} atoms (max {n_atoms.max()}), "
        f"fmax {args.fmax} eV/Å, max {args.max_steps} steps, torch threads {torch.get_num_threads()}"
    )
    model = CHGNet.load(verbose=False, use_device="cpu")
    model.graph_converter(structures[0])  # warm-up
    model.predict_structure(structures[:2], task="efs")

    optimizer = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    seq, seq_converged = [], []
    for s in structures:
        out = optimizer.relax(s, fmax=args.fmax, steps=args.max_steps, verbose=False)
        seq.append(out["trajectory"].energies[-1] / len(s))
        # The trajectory holds the initial state, one entry per step and a final repeat.
        seq_converged.append(len(out["trajectory"]) - 2 < args.max_steps)
    t_seq, c_seq = time.perf_counter() - t0, time.process_time() - c0
    seq = np.array(seq)
    rows = [("sequential StructOptimizer", 1, t_seq, c_seq, 0.0, float(np.mean(seq_converged)))]
    print(f"sequential done in {t_seq:.1f} s", flush=True)
    for batch in args.batch_sizes:
        relaxer = BatchedRelaxer(model, fmax=args.fmax, max_steps=args.max_steps, batch_size=batch)
        t0, c0 = time.perf_counter(), time.process_time()
        results = relaxer.relax(structures, progress=False)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        energies = np.array([r.energy_per_atom for r in results])
        failed = sum(r.error is not None for r in results)
        converged = np.mean([r.converged for r in results])
        de = float(np.nanmax(np.abs(energies - seq)))
        rows.append((f"batched ({failed} failed)", batch, t, c, de, converged))
        print(f"batch {batch} done in {t:.1f} s", flush=True)

    # CPU time of this process is the fairer clock on a machine shared with other jobs.
    print()
    print(
        "| mode | batch | wall (s) | CPU (s) | structures/s (wall) | speed-up (wall) | speed-up (CPU) "
        "| max abs dE (eV/atom) | converged |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, batch, t, c, de, conv in rows:
        print(
            f"| {mode} | {batch} | {t:.1f} | {c:.1f} | {len(structures) / t:.3f} | {t_seq / t:.2f}x "
            f"| {c_seq / c:.2f}x | {de:.2e} | {conv:.2f} |"
        )


if __name__ == "__main__":
    main()
