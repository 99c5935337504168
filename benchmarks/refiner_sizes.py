"""Refiner size x Euler steps: quality (validity, distance to relaxed) and speed, on the same LLM samples.

    python benchmarks/refiner_sizes.py --samples llm.cif --refiners runs/ref-64x3 runs/ref-128x4 \\
        --steps 10 100 --reference val_report.csv [--num 256] [--relax 64] [--threads 1]

Every refiner refines the first `--num` readable samples at every step count (timed: structures/s);
validity (CDVAE's, Xie et al. 2022) is measured on all of them, and the distance to the CHGNet-relaxed structures
(`compute_metrics`: match rate, RMSD, energy drop, with `--max-steps` relaxation steps at most) on the
structurally valid ones among the first `--relax` (n_relaxed; 0 skips it). The LLM samples themselves are
the "0 steps" row. Prints one table.
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_crystal.cache import cache_dir
from hf_crystal.evaluation.metrics import compute_metrics
from hf_crystal.evaluation.relax import BatchedRelaxer
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.refiner import CrystalRefinerPipeline
from hf_crystal.structure_io import read_structures

COLUMNS = (
    "struct_valid",
    "comp_valid",
    "n_relaxed",
    "match_rate_to_relaxed",
    "rmsd_to_relaxed",
    "energy_drop_mean",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", required=True, help="LLM samples (any file read_structures reads)")
    parser.add_argument("--refiners", nargs="+", required=True, help="refiner folders or Hub ids")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--reference", required=True, help="reference structures (compute_metrics needs one)")
    parser.add_argument("--hull", help="entries file for the hull (default: the shipped MP-20 hull)")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument(
        "--relax", type=int, default=64, help="samples relaxed for the distance to relaxed (0: none)"
    )
    parser.add_argument("--max-steps", type=int, default=100, help="relaxation steps at most")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, samples, skipped = read_structures(args.samples)
    samples = samples[: args.num]
    _, reference, _ = read_structures(args.reference)
    relaxer = BatchedRelaxer(max_steps=args.max_steps, cache_dir=cache_dir("relax"))  # resumable

    def quality(structures) -> dict:
        flags = [validity_flags(s) for s in structures]
        out = {k: sum(f[k] for f in flags) / len(flags) for k in COLUMNS[:2]}
        if not args.relax:
            return out | dict.fromkeys(COLUMNS[2:])
        near = compute_metrics(
            structures[: args.relax],
            reference[:1],  # coverage is not reported here
            hull_entries=args.hull,
            relaxer=relaxer,
            progress=False,
        ).metrics
        return out | {k: near.get(k) for k in COLUMNS[2:]}

    rows = [("LLM samples", "-", 0, None, quality(samples))]
    for name in args.refiners:
        refiner = CrystalRefinerPipeline.from_pretrained(name)
        refiner.set_progress_bar_config(disable=True)
        size = "x".join(
            str(refiner.model.config[k]) for k in ("hidden_dim", "num_layers", "edge_dim", "num_freqs")
        )
        for steps in args.steps:
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(0)  # the same base noise for every row
            refined = refiner(samples, num_inference_steps=steps, generator=generator).structures
            rate = len(samples) / (time.perf_counter() - start)
            rows.append((name, size, steps, rate, quality(refined)))
    print(f"\n{len(samples)} samples ({len(skipped)} unreadable skipped); distance to relaxed on {args.relax}, "
          f"at most {args.max_steps} relaxation steps; {args.threads} torch thread(s)\n")  # fmt: skip
    print(
        "| refiner | size (hidden x layers x edge x freqs) | steps | structures/s | "
        + " | ".join(COLUMNS)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(COLUMNS))
    for name, size, steps, rate, values in rows:
        cells = ["–" if values[k] is None else f"{values[k]:.3g}" for k in COLUMNS]
        speed = "–" if rate is None else f"{rate:.1f}"
        print(f"| {name} | {size} | {steps} | {speed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
