"""Fuzz the decoder with random and mutated crystal texts; count what escapes besides CrystalParseError.

    python benchmarks/fuzz_decode.py --examples 200000 [--source ../shared/data/mp_20/train.csv]
    python benchmarks/fuzz_decode.py --format wyckoff --examples 100000 --source ../shared/data/mp_20/val.csv

Mutations of real texts: character insertions, deletions and substitutions from an alphabet of digits,
signs, dots, letters, spaces and newlines; line deletions, duplications and swaps; numbers replaced by
nan / inf / huge / negative values; plus purely random strings; for "wyckoff" also space-group numbers
and Wyckoff labels swapped for others. Prints a table of outcomes.
"""

import argparse
import time
from collections import Counter

import numpy as np
from pymatgen.core import Lattice, Structure

from hf_crystal.structure_io import read_structures
from hf_crystal.text import CrystalParseError, decode, encode

ALPHABET = list("0123456789-+.eE naNifINFXxLn[]MASK\n\t") + ["Na", "Cl", "Og", "1e400", "nan", "-0"]
# Wyckoff text: letters, labels and space-group numbers, valid or not for the group at hand.
ALPHABET_WYCKOFF = ALPHABET + list("abcdefghijklmnopqrstuvwxyzA") + ["4a", "8c", "192l", "1a", "6e", "0a"]
ALPHABET_WYCKOFF += ["1", "2", "14", "166", "194", "225", "227", "230", "231", "0"]
SPECIAL_NUMBERS = ["nan", "inf", "-inf", "1e400", "-1", "0", "1e-320", "180", "359.9", "0.0001", "1" * 50]


def mutate(text: str, rng: np.random.Generator, alphabet: list[str] = ALPHABET) -> str:
    for _ in range(rng.integers(1, 6)):
        op = rng.integers(6)
        lines = text.split("\n")
        if op == 0 and text:  # replace a character
            i = rng.integers(len(text))
            text = text[:i] + alphabet[rng.integers(len(alphabet))] + text[i + 1 :]
        elif op == 1:  # insert a character
            i = rng.integers(len(text) + 1)
            text = text[:i] + alphabet[rng.integers(len(alphabet))] + text[i:]
        elif op == 2 and text:  # delete a span
            i = rng.integers(len(text))
            text = text[:i] + text[i + rng.integers(1, 8) :]
        elif op == 3:  # delete, duplicate or swap lines
            i, j = rng.integers(len(lines), size=2)
            choice = rng.integers(3)
            if choice == 0:
                del lines[i]
            elif choice == 1:
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == 4:  # a special number (or, for Wyckoff text, a label or group) in a field
            i = rng.integers(len(lines))
            fields = lines[i].split()
            if fields:
                pool = SPECIAL_NUMBERS if alphabet is ALPHABET or rng.random() < 0.5 else alphabet[-16:]
                fields[rng.integers(len(fields))] = pool[rng.integers(len(pool))]
                lines[i] = " ".join(fields)
            text = "\n".join(lines)
        else:  # random string
            text = "".join(rng.choice(alphabet, size=rng.integers(0, 60)))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--source", help="structures to mutate (default: a few built here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("xyz", "wyckoff"), default="xyz")
    parser.add_argument("--limit", type=int, help="use the first N structures of --source")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.source:
        structures = read_structures(args.source)[1][: args.limit]
    else:
        structures = [
            Structure(Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]),
            Structure(Lattice.from_parameters(4, 5, 6, 80, 95, 110), ["Ca", "Ti", "O"], rng.random((3, 3))),
        ]
    texts = [encode(s, format=args.format) for s in structures]
    alphabet = ALPHABET_WYCKOFF if args.format == "wyckoff" else ALPHABET
    outcomes: Counter = Counter()
    start = time.perf_counter()
    for _ in range(args.examples):
        text = mutate(texts[rng.integers(len(texts))], rng, alphabet)
        try:
            decode(text, format=args.format)
            outcomes["Structure"] += 1
        except CrystalParseError:
            outcomes["CrystalParseError"] += 1
        except Exception as err:  # the thing this script hunts for
            outcomes[f"OTHER {type(err).__name__}: {err}"[:100]] += 1
    elapsed = time.perf_counter() - start
    print(f"{'outcome':60s} {'count':>8s}")
    for outcome, count in outcomes.most_common():
        print(f"{outcome:60s} {count:8d}")
    other = sum(c for o, c in outcomes.items() if o.startswith("OTHER"))
    print(f"examples {args.examples}, other exceptions {other}, {args.examples / elapsed:.0f} texts/s")


if __name__ == "__main__":
    main()
