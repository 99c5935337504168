"""Generation throughput of pipeline("crystal-generation") by batch size, with and without constraints, for
one or several models side by side.

    python benchmarks/bench_generation.py [--model default PATH_OR_ID ...] [--num 64] [--batch-sizes 1 8 64 256]
        [--threads 1]

`--model` takes any number of models (folders or Hub ids, each in its own text format: `crystal_format` of its
config); "default" (or no `--model`) is the embedded default, exactly what `pipeline("crystal-generation")`
loads (the base with the default LoRA adapter merged). Generation only: the refiner is off for every model
(`refiner=None`), so the figures are the LLM's sampling plus decoding and scoring each text (the whole pipeline
call without refinement). For every batch size, the same number of samples (max(--num, batch)) is drawn
constrained and unconstrained (same seed) by every model, in one run (models interleaved per setting, so a
drifting machine load hits them alike); the table gives samples/s, parsed structures/s, generated tokens/s,
tokens per sample (EOS included), the fractions that decode and are structurally / compositionally valid
(CDVAE's validity, Xie et al. 2022), and:

- vs first: structures/s over those of the first model (the same batch size and constrained setting, this run);
- structs/cpu-s, cpu vs first: the same per second of this process's CPU time, which a shared machine's load
  changes far less than the wall-clock time (with one thread; a second one adds its own time, waiting included);
- gain: structures/s over those of the first batch size (the same model and constrained setting, this run);
- roofline: tokens/s as a fraction of the matmul roofline, (fp32 matmul FLOP/s) / (2 x parameters): the
  mean FLOP/s of 1024^3 torch matmuls over one second right before each batch size (the machine is shared: its
  speed drifts), with the same thread count; attention and everything else is left out of the roofline;
- bound: tokens/s as a fraction of what compute and memory traffic allow together: every generated token
  costs its share of the matmuls (2 x parameters FLOP at the measured matmul FLOP/s) plus reading its
  key/value cache (every earlier position, all layers; at the measured memory read bandwidth) and its share of
  the weights (read once per decoding step of the batch). With a small model and long texts the cache, not the
  weights, is what a large batch reads most, so the matmul roofline alone is not attainable;
- time ratio: constrained / unconstrained seconds (the cost of the constraints).

--compile wraps the model's forward in `torch.compile(dynamic=True)`: with transformers' dynamic key/value cache
the cache update breaks the graph and each layer index recompiles, and on this 2-core CPU it was slower than eager
at batch 1 and 64 (docs/benchmarks.md has the figures); the static cache that compiles whole attends over its
full length every step.

Threads: 1 by default. On a loaded machine a second torch (OpenMP) thread mostly waits for a busy core
(docs/benchmarks.md); use --threads 2 on an idle machine to measure its ceiling. The load average is printed at the start
and the end.
"""

import argparse
import os
import time

import torch
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the task)
from hf_crystal.embedded import DEFAULT_MODEL
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.loading import load_crystal_model
from hf_crystal.prompts import generation_prompt


def matmul_flops(size: int = 1024, seconds: float = 1.0) -> float:
    """fp32 FLOP/s of size^3 torch matmuls: total FLOPs over total time for about `seconds` (a mean, not a best:
    on a shared machine it carries the same share of the CPU as the generation measured next to it)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / elapsed


def read_bandwidth(megabytes: int = 256, seconds: float = 1.0) -> float:
    """Memory read bytes/s: sums of a tensor far larger than the caches, over about `seconds` (a mean, as above)."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        x.sum()
        count += 1
    return x.numel() * 4 * count / elapsed


def bound_seconds(
    lengths: list[int], prompt: int, batch_size: int, model, flops: float, bandwidth: float
) -> float:
    """Seconds that `lengths` generated tokens (per sample, after a `prompt`-token prompt) need at least: matmul
    FLOPs at `flops`, and at `bandwidth` the key/value cache of every earlier position plus the weights once per
    decoding step of each batch (its longest sample's length)."""
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * kv_heads * head_dim * 4  # keys and values, fp32
    params = sum(p.numel() for p in model.parameters())
    positions = sum(n * prompt + n * (n - 1) // 2 for n in lengths)
    steps = sum(max(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))
    return 2 * params * sum(lengths) / flops + (positions * per_position + steps * params * 4) / bandwidth


def run(pipe, num: int, batch_size: int, constrain: bool, seed: int) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    samples = pipe(num, batch_size=batch_size, constrain=constrain, seed=seed)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    lengths = [len(pipe.tokenizer(s["text"], add_special_tokens=False)["input_ids"]) + 1 for s in samples]
    tokens = sum(lengths)
    structures = [s["structure"] for s in samples if s["structure"] is not None]
    flags = [validity_flags(s) for s in structures]
    return {
        "seconds": elapsed,
        "lengths": lengths,
        "samples/s": num / elapsed,
        "structures/s": len(structures) / elapsed,
        "structures/cpu-s": len(structures) / cpu,
        "tokens/s": tokens / elapsed,
        "tokens/sample": tokens / num,
        "decoded": len(structures) / num,
        "struct valid": sum(f["struct_valid"] for f in flags) / num,
        "comp valid": sum(f["comp_valid"] for f in flags) / num,
    }


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        nargs="*",
        default=["default"],
        help='models to compare, the first one the reference of "vs first" ("default": the embedded default)',
    )
    parser.add_argument("--num", type=int, default=64, help="samples per setting (at least one batch)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile(dynamic=True) the model's forward (slower on this CPU, see the docstring)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.model or ["default"]
    pipes, prompts = {}, {}
    for name in names:
        model, tokenizer = load_crystal_model(DEFAULT_MODEL if name == "default" else name, merge=True)
        if args.compile:
            model.forward = torch.compile(model.forward, dynamic=True)
        pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer, refiner=None)
        prompts[name] = len(
            tokenizer(generation_prompt(None, pipe.crystal_format), add_special_tokens=False)["input_ids"]
        )
        for constrain in (False, True):  # warm-up of both paths
            pipe(2, batch_size=2, constrain=constrain)
        pipes[name] = pipe
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {pipe.crystal_format} text, {params / 1e6:.2f}M parameters")
    width = max(len(name) for name in names)
    print(f"{torch.get_num_threads()} thread(s), refiner off, {load()}")
    print(
        f"{'model':<{width}s} {'batch':>5s} {'constrained':>11s} {'samples/s':>10s} {'structs/s':>10s} "
        f"{'vs first':>8s} {'structs/cpu-s':>13s} {'cpu vs first':>12s} {'tokens/s':>9s} {'tok/sample':>10s} {'gain':>6s} {'GFLOP/s':>8s} {'roofline':>8s} "
        f"{'GB/s':>5s} {'bound':>6s} {'decoded':>8s} {'struct ok':>9s} {'comp ok':>8s} {'time ratio':>10s}"
    )
    first = {}
    for batch_size in args.batch_sizes:
        flops, bandwidth = matmul_flops(), read_bandwidth()
        num = max(args.num, batch_size)
        rows = {}
        for constrain in (False, True):
            for name in names:
                rows[name, constrain] = run(pipes[name], num, batch_size, constrain=constrain, seed=args.seed)
        for name in names:
            model = pipes[name].model
            params = sum(p.numel() for p in model.parameters())
            for constrain in (False, True):
                row = rows[name, constrain]
                ratio = rows[name, True]["seconds"] / rows[name, False]["seconds"]
                ratio = f"{ratio:10.2f}" if constrain else f"{'':10s}"
                gain = row["structures/s"] / max(
                    first.setdefault((name, constrain), row)["structures/s"], 1e-12
                )
                versus = row["structures/s"] / max(rows[names[0], constrain]["structures/s"], 1e-12)
                cpu_versus = row["structures/cpu-s"] / max(
                    rows[names[0], constrain]["structures/cpu-s"], 1e-12
                )
                roofline = row["tokens/s"] * 2 * params / flops
                seconds = bound_seconds(row["lengths"], prompts[name], batch_size, model, flops, bandwidth)
                print(
                    f"{name:<{width}s} {batch_size:5d} {'yes' if constrain else 'no':>11s} "
                    f"{row['samples/s']:10.2f} {row['structures/s']:10.2f} {versus:8.2f} "
                    f"{row['structures/cpu-s']:13.2f} {cpu_versus:12.2f} {row['tokens/s']:9.0f} "
                    f"{row['tokens/sample']:10.1f} {gain:6.1f} {flops / 1e9:8.1f} {roofline:8.1%} "
                    f"{bandwidth / 1e9:5.1f} {seconds / row['seconds']:6.1%} {row['decoded']:8.1%} "
                    f"{row['struct valid']:9.1%} {row['comp valid']:8.1%} {ratio}",
                    flush=True,
                )
    print(load())


if __name__ == "__main__":
    main()
