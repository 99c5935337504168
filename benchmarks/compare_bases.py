"""Unconditional samples of models side by side, as written (no refiner): parsed, structurally and
compositionally valid (95% Wilson intervals), P1 and undetermined shares (spglib at 0.1 Å), distinct space groups,
tokens per crystal and crystals/s. Constrained decoding in each model's own text format (`crystal_format` of its
config), every model at the same seed.

A model is a folder or Hub id (a base, or an adapter on the base its adapter_config names), or `ADAPTER@BASE`: an
adapter merged into another base, e.g. an adapter on an earlier stage than the embedded one. At validity rates near
0.8 a draw of 500 samples is uncertain by +-0.035 (95%), a difference of two by +-0.05: compare with --num 2048.

    python benchmarks/compare_bases.py models/crystal-llm-mp20-wyckoff-small models/crystal-llm-mp20-small
    python benchmarks/compare_bases.py hf-crystal/crystal-lora-mp20-wyckoff-small OLD_ADAPTER@OLD_BASE --num 2048
"""

import argparse
import time

import torch
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal.evaluation.rates import format_rate
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.loading import load_crystal_model
from hf_crystal.symmetry import space_group


def load(spec: str):
    """(model, tokenizer) of a folder or Hub id, or of `ADAPTER@BASE` (the adapter merged into BASE)."""
    adapter, _, base = spec.partition("@")
    return load_crystal_model(adapter, merge=True, base=base or None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model folders, Hub ids or ADAPTER@BASE")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-sites", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| model | N | parsed | struct. valid | comp. valid | P1 | undetermined | groups | tokens/crystal | crystals/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        llm, tokenizer = load(model)
        pipe = pipeline("crystal-generation", model=llm, tokenizer=tokenizer, refiner=None)
        start = time.perf_counter()
        samples = pipe(args.num, seed=args.seed, batch_size=args.batch_size, max_sites=args.max_sites)
        seconds = time.perf_counter() - start
        parsed = [s["structure"] for s in samples if s["structure"] is not None]
        flags = [validity_flags(s) for s in parsed]
        groups = [space_group(s, 0.1) for s in parsed]
        tokens = [len(pipe.tokenizer(s["text"], add_special_tokens=False)["input_ids"]) for s in samples]
        n = len(samples)
        print(
            f"| {model} | {n} | {len(parsed) / n:.3f} | {format_rate(sum(f['struct_valid'] for f in flags), n)} "
            f"| {format_rate(sum(f['comp_valid'] for f in flags), n)} | {sum(g == 1 for g in groups) / n:.3f} "
            f"| {sum(g is None for g in groups) / n:.3f} | {len(set(groups) - {None})} "
            f"| {sum(tokens) / n:.1f} | {n / seconds:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
