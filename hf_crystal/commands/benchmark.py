"""`hf-crystal benchmark`: generate and evaluate with the published protocol's sample counts, on Ray.

Local by default (a Ray instance with the machine's cores), `--address` joins an existing cluster. Every shard
is written to `--out` as it finishes: rerun the same command to resume. The numbers are those of
`hf-crystal evaluate` on the same samples (`--out/samples.jsonl`); `--out/benchmark.md` prints them beside
the published figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError
from hf_crystal.commands.refine import add_symmetry_options, symmetry_tolerance
from hf_crystal.commands.relax_options import add_relax_arguments, relaxer_options
from hf_crystal.embedded import DEFAULT_MODEL

__all__ = ["add_parser"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `benchmark` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "benchmark",
        help="the published evaluation protocol (10,000 samples) in one command, on Ray",
        description=(
            "Generate --num unconditional samples and evaluate every one as `hf-crystal evaluate` does, with the "
            "published protocol's sample counts (Wasserstein distances on 1,000 valid samples, stability on the "
            "first --relax samples). Runs on Ray: a local instance by default, a cluster with --address. "
            "Resumable: every finished shard is kept in --out; rerun the same command to continue."
        ),
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"model or adapter, folder or Hub id (default {DEFAULT_MODEL})")
    source.add_argument(
        "--samples",
        help="evaluate this samples file (any format evaluate reads, e.g. `hf-crystal refine` output) instead of "
        "generating: the protocol for any model's samples",
    )
    p.add_argument("--refiner", help="refiner folder or Hub id (default: the model's own, if it has one)")
    p.add_argument("--no-refiner", action="store_true", help="evaluate the LLM's own structures")
    p.add_argument(
        "--reference", required=True, help="reference (test) structures, any format evaluate reads"
    )
    p.add_argument(
        "--reference-label",
        help="what the reference is, stated beside the published figures (default: the --reference path)",
    )
    p.add_argument("--train", help="training structures for novelty (without: novelty and S.U.N. are n/a)")
    p.add_argument("--num", type=int, help="samples to generate and evaluate (default 10000)")
    p.add_argument(
        "--relax", type=int, default=1_000, help="relax the first N samples for stability (default 1000)"
    )
    p.add_argument(
        "--wdist-samples", type=int, default=1_000, help="valid samples for Wasserstein distances (1000)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the run (shard k: a seed derived from seed and k)"
    )
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard (default 64)")
    p.add_argument("--out", required=True, type=Path, help="the run's folder (shards, report, benchmark.md)")
    p.add_argument(
        "--address", help="Ray cluster to join, e.g. 10.0.0.1:6379 or 'auto' (default: a local instance)"
    )
    p.add_argument("--workers", type=int, help="tasks and actors at once (default: the cluster's CPUs)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="reference fingerprint cache (default ~/.cache/hf_crystal/fingerprints)",
    )
    p.add_argument(
        "--hull",
        metavar="FILE",
        help="pymatgen entries JSON(.gz) of the hull (default: the shipped MP-20 hull)",
    )
    gen = p.add_argument_group("generation")
    gen.add_argument("--batch-size", type=int, help="samples per generate call (default 64)")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--max-sites", type=int)
    gen.add_argument("--refine-steps", type=int)
    gen.add_argument("--no-constrain", action="store_true", help="turn constrained decoding off")
    add_symmetry_options(gen)
    # Relaxation runs on Ray actors (one torch thread each), cached in hf-crystal's relaxation cache.
    add_relax_arguments(p.add_argument_group("relaxation"), batch_flag="--relax-batch-size", in_process=False)
    p.add_argument(
        "--card",
        metavar="MODEL",
        help="also put the results on this model's card: a local folder (README.md) or a Hub repo (pushed)",
    )
    p.set_defaults(func=run_benchmark_command)
    return p


# CDVAE's dataset names (its data folders) for the coverage datasets: how cards name the evaluation dataset.
_DATASETS = {"mp20": "mp_20", "perov": "perov_5", "carbon": "carbon_24"}

# Flags that only apply when the benchmark generates (refused with --samples).
_GENERATION_FLAGS = (
    "num",
    "refiner",
    "no_refiner",
    "batch_size",
    "temperature",
    "top_p",
    "max_new_tokens",
    "max_sites",
    "refine_steps",
    "no_constrain",
    "symmetry_tolerance",
    "no_symmetry",
)


def _structures(path: str, what: str) -> list:
    from hf_crystal.structure_io import read_structures

    if not Path(path).exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    _, structures, skipped = read_structures(path)
    if skipped:
        print(
            f"{what}: {len(skipped)} unreadable entries skipped, e.g. {skipped[0][0]}: {skipped[0][1]}",
            file=sys.stderr,
        )
    return structures


def run_benchmark_command(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("hf-crystal benchmark runs on Ray: pip install 'hf-crystal[benchmark]'") from None
    from hf_crystal.benchmark.published import (
        TABLE_METRICS,
        benchmark_markdown,
        benchmark_table,
        published_figures,
    )
    from hf_crystal.benchmark.runner import NUM_SAMPLES, BenchmarkSettings, run_benchmark

    if args.no_refiner and args.refiner:
        raise UsageError("give --refiner or --no-refiner, not both")
    if args.samples:
        generating = [
            f"--{k.replace('_', '-')}" for k in _GENERATION_FLAGS if getattr(args, k) not in (None, False)
        ]
        if generating:
            raise UsageError(
                f"--samples evaluates a file: {', '.join(generating)} only apply when generating"
            )
        if not Path(args.samples).is_file():
            raise FileNotFoundError(f"samples file not found: {args.samples}")
    if args.hull and not Path(args.hull).exists():
        raise FileNotFoundError(f"hull entries file not found: {args.hull}")
    generation = {"batch_size": args.batch_size or 64, "constrain": not args.no_constrain}
    for key in ("temperature", "top_p", "max_new_tokens", "max_sites", "refine_steps"):
        if getattr(args, key) is not None:
            generation[key] = getattr(args, key)
    if not args.no_refiner:  # recorded: a rerun with another tolerance must not mix refinements
        generation["symmetry_tolerance"] = symmetry_tolerance(args)
    settings = BenchmarkSettings(
        model=None if args.samples else (args.model or DEFAULT_MODEL),
        refiner=None if args.no_refiner or args.samples else (args.refiner or "auto"),
        num=args.num or NUM_SAMPLES,
        samples=args.samples,
        relax=args.relax,
        wdist_samples=args.wdist_samples,
        seed=args.seed,
        shard_size=args.shard_size,
        generation=generation,
        relaxer=relaxer_options(args),
        hull=args.hull,
    )
    reference = _structures(args.reference, "reference")
    train = _structures(args.train, "train") if args.train else []
    result = run_benchmark(
        settings,
        reference,
        train,
        args.out,
        address=args.address,
        workers=args.workers,
        cache_dir=args.cache_dir,
        reference_label=args.reference_label or args.reference,
    )
    print(benchmark_table(result.metrics, published_figures()))
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()))
    written = "metrics.json, samples.csv" + ("" if args.samples else ", samples.jsonl") + " and report.md"
    print(f"wrote {args.out}/benchmark.md, {written}", file=sys.stderr)
    if args.card:
        from hf_crystal.hub import update_card

        metrics = result.metrics
        card_metrics = {  # the table's metrics: a card's model-index holds the headline numbers, not every key
            "metrics": {key: metrics[key] for key, _ in TABLE_METRICS if metrics.get(key) is not None},
            "dataset": {"name": _DATASETS.get(settings.coverage_dataset, settings.coverage_dataset)},
            "n_samples": metrics["n_generated"],
            "hull": metrics.get("hull"),
            "note": f"{metrics['protocol']}; reference {metrics['benchmark_reference']} ({metrics['n_reference']} "
            "structures)",
        }
        what = (
            f"--samples {args.samples}" if args.samples else f"--model {settings.model} --num {settings.num}"
        )
        source = f"hf-crystal benchmark {what} --reference {args.reference}"
        section = benchmark_markdown(
            metrics, result.timings, published_figures(), title="## Benchmark: the published protocol"
        )
        section = section.replace("\n\n", f"\n\nCommand: `{source}`\n\n", 1)
        update_card(
            args.card,
            card_metrics,
            push=not Path(args.card).is_dir(),
            source=source,
            sections={"benchmark": section},
        )
        print(f"benchmark results written to the card of {args.card}", file=sys.stderr)
    return 0
