"""Round trip of every structure in a set of sources through the crystal text codec.

    python benchmarks/codec_roundtrip.py ../shared/data/mp_20/train.csv ../shared/data/perov_5/val.csv \
        ../shared/data/carbon_24/val.csv

Prints one row per source: structures, encode/decode failures, the largest lattice-length (Å), angle (°)
and periodic fractional-coordinate errors, and the fraction whose round trip still matches the original
under pymatgen's StructureMatcher (default tolerances).
"""

import argparse
import time

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from tqdm.auto import tqdm

from hf_crystal.structure_io import iter_records
from hf_crystal.text import decode, encode


def round_trip(path: str) -> dict:
    matcher = StructureMatcher()
    n = failures = matched = 0
    err_len = err_ang = err_frac = 0.0
    for record in tqdm(list(iter_records(path)), desc=path, unit=" structures"):
        n += 1
        try:
            back = decode(encode(record.structure))
        except Exception:  # counted: the point of this script
            failures += 1
            continue
        s = record.structure
        err_len = max(err_len, np.abs(np.subtract(back.lattice.abc, s.lattice.abc)).max())
        err_ang = max(err_ang, np.abs(np.subtract(back.lattice.angles, s.lattice.angles)).max())
        d = np.abs(back.frac_coords - s.frac_coords) % 1.0
        err_frac = max(err_frac, np.minimum(d, 1 - d).max())
        matched += matcher.fit(s, back)
    return {
        "source": path,
        "n": n,
        "failures": failures,
        "max_len_err_A": err_len,
        "max_angle_err_deg": err_ang,
        "max_frac_err": err_frac,
        "matcher_fraction": matched / max(n - failures, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [round_trip(path) for path in args.sources]
    print(
        f"\n{'source':45s} {'n':>6s} {'fail':>5s} {'len Å':>7s} {'angle °':>8s} {'frac':>7s} {'matches':>8s}"
    )
    for r in rows:
        print(
            f"{r['source']:45s} {r['n']:6d} {r['failures']:5d} {r['max_len_err_A']:7.4f} "
            f"{r['max_angle_err_deg']:8.4f} {r['max_frac_err']:7.4f} {r['matcher_fraction']:8.4f}"
        )
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
