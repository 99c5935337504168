"""Stoichiometry of generated crystals against the data: the share of structures by the anion fraction of the cell,
and how many of each class are not charge-balanced (SMACT, CDVAE's compositional validity).

A model can write anions as often as the data does and still miss their proportion to the cations; this shows
where its compositionally invalid samples sit. Sources are sample files or CDVAE CSVs (anything
`hf_crystal.structure_io.read_structures` reads), each as ``[LABEL=]PATH``:

    python benchmarks/anion_balance.py wyckoff=runs/side/report/rows/wyckoff+none/benchmark/samples.jsonl \\
        xyz=runs/side/report/rows/default+none/benchmark/samples.jsonl \\
        data=../shared/data/mp_20/train_subset.csv --limit 3000
"""

from __future__ import annotations

import argparse
from collections import Counter

from pymatgen.core import Composition

from hf_crystal.evaluation.validity import composition_validity
from hf_crystal.structure_io import read_structures

# Main-group elements that take the anion's place in MP-20's ionic compounds (nitrides, chalcogenides, halides).
ANIONS = frozenset({"N", "O", "F", "S", "Cl", "Se", "Br", "Te", "I"})
CLASSES = ("no anion", "anion < 0.5", "anion 0.5-0.75", "anion >= 0.75")


def anion_class(composition: Composition) -> str:
    """Which of `CLASSES` a composition is in, by the anions' share of its atoms."""
    anions = sum(amount for element, amount in composition.items() if element.symbol in ANIONS)
    if anions == 0:
        return CLASSES[0]
    share = anions / composition.num_atoms
    return CLASSES[1] if share < 0.5 else CLASSES[2] if share < 0.75 else CLASSES[3]


def balance(compositions: list[Composition]) -> dict[str, tuple[float, float]]:
    """Per class: (share of the compositions, share of that class not charge-balanced)."""
    total, invalid = Counter(), Counter()
    for composition in compositions:
        kind = anion_class(composition)
        total[kind] += 1
        invalid[kind] += not composition_validity(composition)
    n = max(len(compositions), 1)
    return {kind: (total[kind] / n, invalid[kind] / total[kind] if total[kind] else 0.0) for kind in CLASSES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", help="[LABEL=]PATH of samples or a CDVAE CSV")
    parser.add_argument("--limit", type=int, help="count only the first N structures of each source")
    args = parser.parse_args()
    print(f"| source | N | {' | '.join(CLASSES)} | not balanced |")
    print("|" + "---|" * (len(CLASSES) + 3))
    for spec in args.sources:
        label, _, path = spec.rpartition("=")
        _, structures, skipped = read_structures(path)
        compositions = [s.composition for s in structures[: args.limit]]
        cells = balance(compositions)
        not_balanced = sum(share * bad for share, bad in cells.values())
        row = " | ".join(f"{share:.3f} ({bad:.2f})" for share, bad in cells.values())
        note = f" ({len(skipped)} unreadable, left out)" if skipped else ""
        print(f"| {label or path}{note} | {len(compositions)} | {row} | {not_balanced:.3f} |")
    print("Each class: share of the source's structures (share of that class not charge-balanced).")


if __name__ == "__main__":
    main()
