"""Batched CHGNet relaxation vs a sequential loop of CHGNet's own StructOptimizer.

Same structures, same optimizer (FIRE + FrechetCellFilter), same fmax and max steps. Prints one table:
wall and CPU time, throughput (structures/s), speed-up over the sequential loop, and the largest
disagreement of the final energies (meV/atom) with the sequential run. Rows:

* ``sequential StructOptimizer``: CHGNet's ``StructOptimizer.relax`` per structure (the reference);
* ``BatchedRelaxer``: ``hf_crystal.evaluation.relax`` at each ``--batch-sizes`` (one forward and one
  backward per step, ``chgnet_fast.FastCHGNet``);
* ``before: CHGNet predict_graph``: the same relaxer with the previous force call, kept here only
  (``--legacy-batch-sizes``): CHGNet's graph converter and ``CHGNet.predict_graph`` (two backward passes
  with ``create_graph=True``);
* ``torch-sim frechet_cell_fire``: torch-sim-atomistic's batched ASE-flavoured FIRE on its Frechet cell
  filter (``ts.optimize``, all structures in one in-flight batch, convergence checked every step) with a
  thin ``ModelInterface`` over the same ``FastCHGNet``, when torch_sim is installed (``--no-torch-sim``
  skips it).

    python benchmarks/bench_relax.py --n 64 --batch-sizes 16 64 256 --fmax 0.1 --max-steps 100

Structures: the first N of ``--data`` (a CDVAE CSV, default ../shared/data/mp_20/train.csv) or, when
absent, hand-made rock-salt / perovskite cells; every structure is rattled (``--rattle`` Å) so that the
relaxation has work to do. The load average is printed before and after: on a shared machine compare
ratios from one run, and prefer the CPU-time columns (this process only).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mp_20" / "train.csv"
EV_A3_PER_GPA = 1 / 160.21766208


def load_structures(path: Path, n: int, rattle: float, seed: int) -> tuple[list[Structure], str]:
    if path.exists():
        from hf_crystal.structure_io import read_structures

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


def legacy_relaxer_class():
    """BatchedRelaxer with the force call it had before chgnet_fast (kept for this comparison only)."""
    from hf_crystal.evaluation.relax import BatchedRelaxer

    class LegacyRelaxer(BatchedRelaxer):
        def _predict(self, slots):
            outcomes, graphs, owners = ["" for _ in slots], [], []
            converter = self.model.graph_converter
            previous, converter.on_isolated_atoms = converter.on_isolated_atoms, "error"
            try:
                for k, slot in enumerate(slots):
                    try:
                        graphs.append(converter(slot.structure()))
                        owners.append(k)
                    except Exception as exc:
                        outcomes[k] = f"graph construction failed: {exc}"
            finally:
                converter.on_isolated_atoms = previous
            if graphs:
                preds = self.model.predict_graph(graphs, task="efs", batch_size=len(graphs))
                for k, pred in zip(owners, [preds] if isinstance(preds, dict) else preds, strict=True):
                    outcomes[k] = pred
            return outcomes

    return LegacyRelaxer


def torchsim_model(calculator):
    """A torch-sim ``ModelInterface`` over ``FastCHGNet``: one forward and one backward per call."""
    import torch
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface

    class CHGNetModel(ModelInterface):
        def __init__(self):
            super().__init__()
            self._device, self._dtype = torch.device("cpu"), torch.float64
            self._compute_stress = self._compute_forces = True
            self._memory_scales_with = "n_atoms"
            self.calculator = calculator

        def forward(self, state, **kwargs):
            if not isinstance(state, ts.SimState):
                state = ts.SimState(**state)
            positions = state.positions.detach().cpu().numpy()
            cells = state.row_vector_cell.detach().cpu().numpy()
            numbers = state.atomic_numbers.cpu().numpy()
            counts = np.bincount(state.system_idx.cpu().numpy(), minlength=len(cells))
            bounds = np.concatenate([[0], np.cumsum(counts)])
            graphs = [
                calculator.graph(numbers[a:b], positions[a:b], cell)
                for a, b, cell in zip(bounds[:-1], bounds[1:], cells, strict=True)
            ]
            preds = calculator.predict(graphs)
            scale = counts if calculator.model.is_intensive else np.ones_like(counts)
            as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=self._dtype)  # noqa: E731
            return {
                "energy": as_tensor([float(p["e"]) * n for p, n in zip(preds, scale, strict=True)]),
                "forces": as_tensor(np.concatenate([p["f"] for p in preds])),
                "stress": as_tensor(np.stack([p["s"] for p in preds]) * EV_A3_PER_GPA),
            }

    return CHGNetModel()


def run_torchsim(structures, calculator, fmax: float, max_steps: int, steps_between_swaps: int = 1):
    """Relax with torch-sim's batched FIRE + Frechet cell filter; (energies/atom, converged flags).

    All structures in one in-flight batch; torch-sim's ``max_steps`` counts the steps of the whole run.
    """
    import torch
    import torch_sim as ts

    model = torchsim_model(calculator)
    state = ts.io.structures_to_state(structures, torch.device("cpu"), torch.float64)
    convergence = ts.runners.generate_force_convergence_fn(force_tol=fmax, include_cell_forces=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = ts.optimize(
            system=state,
            model=model,
            optimizer=ts.optimizers.frechet_cell_fire,
            convergence_fn=convergence,
            max_steps=max_steps,
            steps_between_swaps=steps_between_swaps,
        )
    counts = final.system_idx.bincount().numpy()
    energies = final.energy.detach().numpy() / counts
    return energies, convergence(final).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=64, help="number of structures")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument(
        "--legacy-batch-sizes",
        type=int,
        nargs="*",
        default=[16, 64],
        help="batch sizes of the previous force call (CHGNet.predict_graph, double backward); none: skip",
    )
    parser.add_argument("--no-torch-sim", action="store_true", help="skip torch-sim even if installed")
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--rattle", type=float, default=0.05, help="Gaussian displacement std (Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (on a shared 2-core machine, 2 oversubscribe)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()

    import torch
    from chgnet.model import CHGNet, StructOptimizer
    from threadpoolctl import threadpool_limits

    from hf_crystal.evaluation.chgnet_fast import FastCHGNet
    from hf_crystal.evaluation.relax import BatchedRelaxer

    torch.set_num_threads(args.threads)

    structures, source = load_structures(args.data, args.n, args.rattle, args.seed)
    n_atoms = np.array([len(s) for s in structures])
    print(
        f"{len(structures)} structures from {source}, {n_atoms.sum()} atoms (max {n_atoms.max()}), "
        f"fmax {args.fmax} eV/Å, max {args.max_steps} steps, torch threads {torch.get_num_threads()}"
    )
    model = CHGNet.load(verbose=False, use_device="cpu")
    optimizer = StructOptimizer(model, optimizer_class="FIRE", use_device="cpu")
    optimizer.relax(structures[0], fmax=args.fmax, steps=2, verbose=False)  # warm-up, loads ASE/scipy
    # One BLAS thread for every contender (set after the imports and the warm-up, so that every loaded
    # BLAS is limited): the optimizers' 3x3 linear algebra gains nothing from threads and loses a lot to
    # thread hand-offs on a busy machine (BatchedRelaxer does this itself).
    threadpool_limits(limits=1, user_api="blas")

    t0, c0 = time.perf_counter(), time.process_time()
    seq, seq_converged = [], []
    for s in structures:
        out = optimizer.relax(s, fmax=args.fmax, steps=args.max_steps, verbose=False)
        seq.append(out["trajectory"].energies[-1] / len(s))
        # The trajectory holds the initial state, one entry per step and a final repeat.
        seq_converged.append(len(out["trajectory"]) - 2 < args.max_steps)
    t_seq, c_seq = time.perf_counter() - t0, time.process_time() - c0
    seq = np.array(seq)
    rows = [("sequential StructOptimizer", "1", t_seq, c_seq, 0.0, float(np.mean(seq_converged)))]
    print(f"sequential done in {t_seq:.1f} s", flush=True)

    def add_row(name, batch, t, c, energies, converged):
        de = float(np.nanmax(np.abs(np.asarray(energies) - seq))) * 1e3
        rows.append((name, str(batch), t, c, de, float(np.mean(converged))))
        print(f"{name} (batch {batch}) done in {t:.1f} s", flush=True)

    contenders = [
        ("before: CHGNet predict_graph", legacy_relaxer_class(), b) for b in args.legacy_batch_sizes
    ]
    contenders += [("BatchedRelaxer", BatchedRelaxer, b) for b in args.batch_sizes]
    for name, cls, batch in contenders:
        relaxer = cls(model, fmax=args.fmax, max_steps=args.max_steps, batch_size=batch)
        t0, c0 = time.perf_counter(), time.process_time()
        results = relaxer.relax(structures, progress=False)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        failed = sum(r.error is not None for r in results)
        label = name if not failed else f"{name} ({failed} failed)"
        add_row(label, batch, t, c, [r.energy_per_atom for r in results], [r.converged for r in results])

    if importlib.util.find_spec("torch_sim") is None or args.no_torch_sim:
        print("torch-sim: not installed or skipped (pip install torch-sim-atomistic to compare)")
    else:
        calculator = FastCHGNet(model)
        t0, c0 = time.perf_counter(), time.process_time()
        energies, converged = run_torchsim(structures, calculator, args.fmax, args.max_steps)
        t, c = time.perf_counter() - t0, time.process_time() - c0
        add_row("torch-sim frechet_cell_fire + FastCHGNet", len(structures), t, c, energies, converged)

    load_after = os.getloadavg()
    print()
    print(
        f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs)"
    )
    print(
        "| mode | batch | wall (s) | CPU (s) | structures/s (wall) | speed-up (wall) | speed-up (CPU) "
        "| max abs dE vs sequential (meV/atom) | converged |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, batch, t, c, de, conv in rows:
        print(
            f"| {mode} | {batch} | {t:.1f} | {c:.1f} | {len(structures) / t:.3f} | {t_seq / t:.2f}x "
            f"| {c_seq / c:.2f}x | {de:.4f} | {conv:.2f} |"
        )


if __name__ == "__main__":
    main()
