"""FlowLLM's claim on our models: LLM samples vs LLM + refiner vs a uniform-base refiner, side by side.

    python benchmarks/refiner_ablation.py --llm LLM --refiner REFINER --uniform-refiner UNIFORM \\
        --reference val_report.csv --train train.csv --num 256 --out runs/ablation [--max-steps 100]

Draws `--num` unconditional samples from the LLM (`hf-crystal generate`, seeded), refines them with the
LLM-base refiner and with the uniform-base one (which keeps only the atoms of each LLM sample and starts
from FlowMM's base), then runs `hf-crystal evaluate` on the three files in parallel (one torch thread
each) and prints one table from their metrics.json: validity, coverage and the distance to the
CHGNet-relaxed structures (match rate, RMSD, energy drop, steps). `evaluate` relaxes only structurally
valid samples, so the distance columns of each row are over its own valid samples; a second table compares
the rows on the same samples: those structurally valid in every row (refining keeps the sample order).
Every step is a CLI command, printed before it runs; finished steps are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = {
    "n_samples": "N",
    "n_relaxed": "N relaxed",
    "struct_valid": "struct. valid",
    "comp_valid": "comp. valid",
    "cov_recall": "COV-R",
    "cov_precision": "COV-P",
    "match_rate_to_relaxed": "match to relaxed",
    "rmsd_to_relaxed": "RMSD to relaxed",
    "energy_drop_mean": "energy drop (eV/atom)",
    "relax_steps_mean": "relax steps",
    "relax_converged_rate": "converged",
}


def _run(argv: list[str], log: Path | None = None) -> subprocess.Popen:
    print("$ hf-crystal " + " ".join(argv), flush=True)
    out = log.open("w") if log else None
    return subprocess.Popen([sys.executable, "-m", "hf_crystal.commands", *argv], stdout=out, stderr=out)


def _wait(process: subprocess.Popen) -> None:
    if process.wait() != 0:
        sys.exit(f"failed: {' '.join(process.args)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", required=True)
    parser.add_argument("--refiner", required=True, help="refiner trained from the LLM's samples")
    parser.add_argument("--uniform-refiner", required=True, help="refiner trained from FlowMM's uniform base")
    parser.add_argument("--reference", required=True, help="reference structures (coverage)")
    parser.add_argument("--train", help="training structures (novelty)")
    parser.add_argument("--hull", help="entries file for the hull (avoids relaxing the reference)")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--refine-steps", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=100, help="relaxation steps at most")
    parser.add_argument("--limit", type=int, help="reference / train structures used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    samples = {name: args.out / f"{name}.cif" for name in ("llm", "llm+refiner", "uniform-refiner")}
    if not samples["llm"].exists():
        _wait(_run(["generate", "--model", args.llm, "--num", str(args.num), "--batch-size", "64",
                    "--seed", str(args.seed), "--out", str(samples["llm"])]))  # fmt: skip
    for name, refiner in (("llm+refiner", args.refiner), ("uniform-refiner", args.uniform_refiner)):
        if not samples[name].exists():
            _wait(_run(["refine", str(samples["llm"]), "--refiner", refiner,
                        "--steps", str(args.refine_steps), "--seed", str(args.seed), "--out", str(samples[name])]))  # fmt: skip

    jobs = []
    for name, path in samples.items():
        report = args.out / f"eval-{name}"
        if (report / "metrics.json").exists():
            continue
        argv = ["evaluate", str(path), "--reference", args.reference, "--out", str(report), "--threads", "1"]
        argv += ["--max-steps", str(args.max_steps)]
        for flag, value in (
            ("--train", args.train),
            ("--hull", args.hull),
            ("--limit-reference", args.limit),
            ("--limit-train", args.limit),
        ):
            if value is not None:
                argv += [flag, str(value)]
        jobs.append(_run(argv, log=args.out / f"eval-{name}.log"))
    for job in jobs:
        _wait(job)

    print("\n| samples | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in samples:
        metrics = json.loads((args.out / f"eval-{name}" / "metrics.json").read_text())
        cells = [metrics.get(key) for key in COLUMNS]
        print(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3g}" for v in cells) + " |")
    _paired_table(args.out, list(samples))


def _paired_table(out: Path, names: list[str]) -> None:
    """Distance to relaxed on the samples structurally valid (and relaxed) in every row."""
    rows = {
        name: {r["id"]: r for r in csv.DictReader(open(out / f"eval-{name}" / "samples.csv"))}
        for name in names
    }
    common = [i for i in rows[names[0]] if all(rows[n].get(i, {}).get("relax_error") == "" for n in names)]
    if not common:
        print("\nNo sample is structurally valid and relaxed in every row.")
        return
    print(f"\nSame samples: the {len(common)} structurally valid and relaxed in every row")
    print("| samples | match to relaxed | RMSD to relaxed (matched) | energy drop mean / median (eV/atom) |")
    print("|---|---|---|---|")
    for name in names:
        picked = [rows[name][i] for i in common]
        rmsd = [float(r["rmsd_relaxed"]) for r in picked if r["match_relaxed"] == "True"]
        drop = [float(r["energy_drop"]) for r in picked]
        match = len(rmsd) / len(picked) if picked else float("nan")
        print(
            f"| {name} | {match:.3g} | {statistics.fmean(rmsd):.3g} | {statistics.fmean(drop):.3g} / {statistics.median(drop):.3g} |"
        )


if __name__ == "__main__":
    main()
