"""`make demo`: crystals from the default model, offline, on a CPU.

`pipeline("crystal-generation")` without a model is the embedded default (`hf_crystal.embedded`): a LoRA adapter
on a small crystal LLM, with its FlowLLM refiner. Half of the crystals are unconditional, half are asked for a
formula; all are written to `OUT/samples.cif` (refined) and `OUT/samples.llm.cif` (as the LLM wrote them), as
`hf-crystal generate` writes them, and summarised in a table.

    python examples/demo.py [--num 16] [--out outputs/demo] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from transformers import pipeline

import hf_crystal  # noqa: F401  (registers the crystal tasks)
from hf_crystal.evaluation.validity import validity_flags
from hf_crystal.structure_io import SampleWriter

FORMULAS = ("SrTiO3", "LiFePO4")  # MP-20 compositions: a perovskite and an olivine


def spacegroup(structure) -> str:
    """The Hermann-Mauguin symbol spglib finds at symprec 0.1 Å (as `hf-crystal evaluate`; coordinates written
    with two decimals are rarely symmetric at pymatgen's default 0.01)."""
    try:
        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
    except Exception:  # spglib gives up on some badly distorted cells
        return "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--num", type=int, default=16, help="crystals to generate, half for a formula (default 16)"
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the model is small, and on a busy CPU more threads mostly wait)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("samples.cif", "samples.llm.cif"):
        (out / name).unlink(missing_ok=True)

    pipe = pipeline("crystal-generation")  # the embedded default model and its refiner, offline
    unconditional = args.num - args.num // 2
    plan = [({}, unconditional)]
    for i, formula in enumerate(FORMULAS):
        count = args.num // 2 // len(FORMULAS) + (i < args.num // 2 % len(FORMULAS))
        plan.append(({"formula": formula}, count))
    samples, asked = [], []
    for conditions, count in plan:
        if count:
            samples += pipe(conditions, num_return_sequences=count, seed=args.seed)
            asked += [conditions.get("formula", "-")] * count
    refined = [{**s, "structure": s["refined_structure"], "valid": s["refined_valid"]} for s in samples]
    SampleWriter(out / "samples.llm.cif").write(samples, start=0)
    SampleWriter(out / "samples.cif").write(refined, start=0)

    print(f"{'#':>2}  {'asked for':<9}  {'formula':<12}  {'space group':<22}  structurally valid")
    print(f"{'':>2}  {'':<9}  {'':<12}  {'LLM / refined':<22}  LLM / refined")
    counts = [0, 0]
    for i, (sample, formula_asked) in enumerate(zip(samples, asked, strict=True)):
        pair = (sample["structure"], sample["refined_structure"])  # both None when the text did not parse
        formula = pair[0].composition.reduced_formula if pair[0] is not None else "(unparsed)"
        symmetry = " / ".join(spacegroup(s) if s is not None else "-" for s in pair)
        valid = [s is not None and validity_flags(s)["struct_valid"] for s in pair]
        counts = [n + v for n, v in zip(counts, valid, strict=True)]
        flags = " / ".join("yes" if v else "no" for v in valid)
        print(f"{i:>2}  {formula_asked:<9}  {formula:<12}  {symmetry:<22}  {flags}")
    print(
        f"\n{len(samples)} crystals in {time.perf_counter() - start:.1f} s (model loading included), structurally "
        f"valid: {counts[0]} as the LLM wrote them, {counts[1]} refined. Written to {out / 'samples.cif'} "
        f"(refined) and {out / 'samples.llm.cif'}."
    )


if __name__ == "__main__":
    main()
