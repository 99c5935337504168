"""Figures of a Wyckoff-text LLM's refiner pairs (`hf_crystal.training.wyckoff_pairs`), read from a pair cache folder.

Prints a table: how many pairs have x1's Wyckoff orbits (usable), differ (element fallback) or have no x0; x1
that do not round-trip through the text; which of x0's equivalent origins was kept; pairs whose velocity target
is not exactly symmetric; the mean transport cost of the orbit pairing beside `pairs.py`'s element pairing of the
same two crystals in their Niggli cells; the pairing time per pair; and, by space group, the usable share.

    python benchmarks/wyckoff_pairs_report.py /work/runs/wrefiner/pairs/<key> [--top 10]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np


def _rows(folder: Path) -> list[dict]:
    paths = sorted(folder.glob("pairs-*.jsonl"))
    if not paths:
        raise SystemExit(f"no pairs-*.jsonl shards in {folder}")
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def _share(k: int, n: int) -> str:
    return f"{k} / {n} = {k / n:.3f}" if n else "0 / 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a pair cache folder (holds pairs-00000.jsonl, ...)")
    parser.add_argument("--top", type=int, default=10, help="space groups listed (most frequent first)")
    args = parser.parse_args()
    rows = _rows(args.folder)
    n = len(rows)
    matched = Counter(row["matched"] for row in rows)
    orbits = [row for row in rows if row["matched"] == "orbits"]
    elements = [row for row in rows if row["matched"] == "elements"]
    print(f"| pairs | {n} |\n|---|---|")
    print(f"| x0 has x1's Wyckoff orbits (usable) | {_share(matched['orbits'], n)} |")
    kept = Counter(row["origin"] for row in orbits)
    print(f"| ... of which at x0's written origin / another origin | {kept[0]} / {len(orbits) - kept[0]} |")
    print(f"| x0's orbits differ (element fallback) | {_share(matched['elements'], n)} |")
    print(f"| no x0 (error) | {_share(matched[None], n)} |")
    print(f"| x1 not round-tripping through the text | {sum(not row['x1_roundtrip'] for row in rows)} |")
    asymmetric = sum(row["target_asymmetry"] > 1e-6 for row in orbits)
    print(
        f"| usable pairs whose velocity target is not exactly symmetric | {_share(asymmetric, len(orbits))} |"
    )
    for name, subset in (("usable", orbits), ("fallback", elements)):
        if subset:
            xyz = np.mean([row["cost_xyz"] for row in subset])
            ours = np.mean([row["cost_assigned"] for row in subset])
            print(
                f"| mean transport cost, {name}: element pairing in Niggli cells / this pairing | {xyz:.4f} / "
                f"{ours:.4f} |"
            )
    seconds = [row["seconds"] for row in rows if row["seconds"] is not None]
    print(
        f"| pairing time per pair (LLM excluded), mean / max | {np.mean(seconds):.3f} s / {max(seconds):.3f} s |"
    )
    print("\n| space group | pairs | usable share |\n|---|---|---|")
    groups = Counter(row["spacegroup"] for row in rows)
    for group, count in groups.most_common(args.top):
        usable = sum(row["spacegroup"] == group and row["matched"] == "orbits" for row in rows)
        print(f"| {group} | {count} | {usable / count:.3f} |")


if __name__ == "__main__":
    main()
