"""Training throughput (tokens/s) of the from-scratch presets, full fine-tuning and LoRA, on this machine.

    python benchmarks/bench_training_throughput.py [--dataset ../shared/data/mp_20/train.csv] [--steps 20]

Tokens are the non-padding tokens TRL counts (`num_tokens`), time is the trainer's `train_runtime`
(data preparation and saving excluded). LoRA runs on a randomly initialized model of the same preset.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from transformers import LlamaForCausalLM

from hf_crystal.tokenization import build_crystal_tokenizer
from hf_crystal.training import base, lora
from hf_crystal.training.presets import llama_config

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "mp_20" / "train.csv"


def _measure(out: Path) -> tuple[float, float, float]:
    log = json.loads((out / "train_log.json").read_text())
    tokens = max(entry.get("num_tokens", 0) for entry in log)
    runtime = next(entry["train_runtime"] for entry in log if "train_runtime" in entry)
    return tokens, runtime, tokens / runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    common = [
        *("--dataset", args.dataset, "--max_steps", str(args.steps)),
        *("--per_device_train_batch_size", str(args.batch_size), "--logging_steps", str(args.steps)),
        *("--save_steps", str(10**9), "--warmup_steps", "0"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            out = Path(tmp) / f"{preset}-full"
            base.train_base(*base.parse_args(["--preset", preset, "--output_dir", str(out), *common]))
            params = LlamaForCausalLM.from_pretrained(out).num_parameters()
            rows.append((preset, "full", params, *_measure(out)))

            random_base = Path(tmp) / f"{preset}-random"
            tokenizer = build_crystal_tokenizer()
            LlamaForCausalLM(llama_config(preset, tokenizer)).save_pretrained(random_base)
            tokenizer.save_pretrained(random_base)
            out = Path(tmp) / f"{preset}-lora"
            lora.train_lora(
                *lora.parse_args(["--model", str(random_base), "--output_dir", str(out), *common])
            )
            rows.append((preset, "lora (r=8, q_proj/v_proj)", params, *_measure(out)))

    print(f"\nsteps {args.steps}, batch {args.batch_size}, dataset {args.dataset}\n")
    print("| preset | training | parameters | tokens | seconds | tokens/s |")
    print("|---|---|---|---|---|---|")
    for preset, mode, params, tokens, seconds, rate in rows:
        print(f"| {preset} | {mode} | {params:,} | {tokens:,.0f} | {seconds:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
