"""Generation throughput of pipeline("crystal-generation") by batch size, with and without constraints.

    python benchmarks/bench_generation.py --model PATH_OR_ID [--num 64] [--batch-sizes 1 8 32 64]

For every batch size, the same number of samples is drawn constrained and unconstrained (same seed)
in one run; the table gives samples/s, parsed structures/s, generated tokens/s, the fractions that
decode and are structurally / compositionally valid (SPEC 5), and the constrained/unconstrained
time ratio (the cost of the constraints).
"""

import argparse
import time

from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.hub import load_crystal_model


def run(pipe, num: int, batch_size: int, constrain: bool, seed: int) -> dict:
    start = time.perf_counter()
    samples = pipe(num, batch_size=batch_size, constrain=constrain, seed=seed)
    elapsed = time.perf_counter() - start
    tokens = sum(len(pipe.tokenizer(s["text"], add_special_tokens=False)["input_ids"]) + 1 for s in samples)
    structures = [s["structure"] for s in samples if s["structure"] is not None]
    flags = [validity_flags(s) for s in structures]
    return {
        "seconds": elapsed,
        "samples/s": num / elapsed,
        "structures/s": len(structures) / elapsed,
        "tokens/s": tokens / elapsed,
        "decoded": len(structures) / num,
        "struct valid": sum(f["struct_valid"] for f in flags) / num,
        "comp valid": sum(f["comp_valid"] for f in flags) / num,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--num", type=int, default=64, help="samples per setting")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, tokenizer = load_crystal_model(args.model)
    pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer)
    for constrain in (False, True):  # warm-up of both paths
        pipe(2, batch_size=2, constrain=constrain)
    print(
        f"{'batch':>5s} {'constrained':>11s} {'samples/s':>10s} {'structs/s':>10s} {'tokens/s':>9s} "
        f"{'decoded':>8s} {'struct ok':>9s} {'comp ok':>8s} {'time ratio':>10s}"
    )
    for batch_size in args.batch_sizes:
        free = run(pipe, args.num, batch_size, constrain=False, seed=args.seed)
        bound = run(pipe, args.num, batch_size, constrain=True, seed=args.seed)
        for name, row in (("no", free), ("yes", bound)):
            ratio = f"{bound['seconds'] / free['seconds']:10.2f}" if name == "yes" else f"{'':10s}"
            print(
                f"{batch_size:5d} {name:>11s} {row['samples/s']:10.2f} {row['structures/s']:10.2f} "
                f"{row['tokens/s']:9.0f} {row['decoded']:8.1%} {row['struct valid']:9.1%} "
                f"{row['comp valid']:8.1%} {ratio}",
                flush=True,
            )


if __name__ == "__main__":
    main()
