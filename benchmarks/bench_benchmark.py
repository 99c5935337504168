"""Scaling of `hf-crystal benchmark`'s Ray stages: fingerprints/s and relaxations/s at 1 and 2 workers, and
the cached-reference speed-up, all in one run and one Ray instance.

    scripts/loopback-only python benchmarks/bench_benchmark.py --n 96 --relax-n 32 --max-steps 50

Structures: the first N of ``--data`` (a CDVAE CSV, default ../shared/data/mp_20/val.csv) or, when absent,
hand-made cells; relaxed ones are rattled (``--rattle`` Å) so that the relaxation has work to do. Rows:

* fingerprints (``runner.fingerprint_stage``: validity and CrystalNN / Magpie fingerprints as Ray tasks over
  shards of ``--shard-size``) at 1 and 2 workers, each into an empty store;
* the same stage a second time against the store of the first run (a cached reference: nothing computed);
* relaxations (``runner.relax_stage``: ``BatchedRelaxer`` actors over shards), actor start-up (CHGNet load)
  included, at 1 and 2 workers, without the relaxation cache.

Ray and its worker processes are started before the clock runs (a warm-up stage on two tasks). The load
average is printed beside every row: on a shared machine the ratios say more than the rates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mp_20" / "val.csv"


def load_structures(path: Path, n: int) -> tuple[list[Structure], str]:
    if path.exists():
        from hf_crystal.structure_io import read_structures

        return read_structures(path)[1][:n], str(path)
    base = [
        Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]),
        Structure(
            Lattice.cubic(3.9),
            ["Sr", "Ti", "O", "O", "O"],
            [[0] * 3, [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        ),
    ]
    return [base[i % 2].copy() for i in range(n)], "hand-made NaCl / SrTiO3 cells"


def rattled(structures: list[Structure], amount: float, seed: int) -> list[Structure]:
    rng = np.random.default_rng(seed)
    return [
        Structure(
            s.lattice,
            s.species,
            s.cart_coords + rng.normal(0, amount, (len(s), 3)),
            coords_are_cartesian=True,
        )
        for s in structures
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=96, help="structures fingerprinted")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--relax-n", type=int, default=32, help="structures relaxed")
    parser.add_argument("--relax-shard-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--rattle", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from hf_crystal.benchmark.runner import fingerprint_stage, relax_stage
    from hf_crystal.benchmark.store import ShardStore

    structures, source = load_structures(args.data, max(args.n, args.relax_n))
    to_relax = rattled(structures[: args.relax_n], args.rattle, args.seed)
    fingerprinted = structures[: args.n]
    print(
        f"structures: {source}; {len(fingerprinted)} fingerprinted, {len(to_relax)} relaxed; {os.cpu_count()} cores"
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fingerprint_stage(structures[:2], ShardStore(tmp / "warm"), shard_size=1, workers=2, progress=False)

        def timed(label: str, count: int, run) -> float:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            rows.append((label, count, seconds, count / seconds, load, os.getloadavg()[0]))
            return seconds

        stores = {}
        for workers in (1, 2):
            stores[workers] = ShardStore(tmp / f"fp{workers}")
            timed(
                f"fingerprints, {workers} worker(s)",
                len(fingerprinted),
                lambda w=workers: fingerprint_stage(
                    fingerprinted, stores[w], shard_size=args.shard_size, workers=w, progress=False
                ),
            )
        timed(
            "fingerprints, cached reference (2 workers)",
            len(fingerprinted),
            lambda: fingerprint_stage(
                fingerprinted, stores[2], shard_size=args.shard_size, workers=2, progress=False
            ),
        )
        relaxer = {"max_steps": args.max_steps, "cache_dir": None}
        for workers in (1, 2):
            timed(
                f"relaxations, {workers} worker(s)",
                len(to_relax),
                lambda w=workers: relax_stage(
                    to_relax,
                    ShardStore(tmp / f"relax{w}"),
                    relaxer,
                    shard_size=args.relax_shard_size,
                    workers=w,
                    progress=False,
                ),
            )
    ray.shutdown()
    print(
        "\n| stage | structures | seconds | structures/s | vs first row of its kind | load avg before / after |"
    )
    print("|---|---|---|---|---|---|")
    first = {}
    for label, count, seconds, rate, before, after in rows:
        kind = label.split(",")[0]
        first.setdefault(kind, rate)
        print(
            f"| {label} | {count} | {seconds:.1f} | {rate:.2f} | {rate / first[kind]:.2f}x | {before:.2f} / {after:.2f} |"
        )


if __name__ == "__main__":
    main()
