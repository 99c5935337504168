"""Round trip of every structure in a set of sources through a crystal text codec.

    python benchmarks/codec_roundtrip.py ../shared/data/mp_20/train.csv ../shared/data/perov_5/val.csv \
        ../shared/data/carbon_24/val.csv
    python benchmarks/codec_roundtrip.py --format wyckoff --stol 0.1 ../shared/data/mp_20/val.csv

"xyz" prints one row per source: structures, encode/decode failures, the largest lattice-length (Å),
angle (°) and periodic fractional-coordinate errors, and the fraction whose round trip still matches the
original under pymatgen's StructureMatcher. "wyckoff" prints, per source: structures, failures, the
fraction matched, the fraction whose decoded structure has, at symprec 0.01, the group the text was written
in (spglib on the original at symprec 0.1) and the original's group at 0.01; the structures spglib cannot
analyse (counted apart); the same for the 24 groups with two origin choices; how often a permuted and
translated copy encodes to the same text (`--invariance`); and the character-tokenizer tokens per crystal
against the xyz format's.
"""

import argparse
import time
import warnings

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from tqdm.auto import tqdm

from hf_crystal.structure_io import iter_records
from hf_crystal.text import decode, encode
from hf_crystal.text_wyckoff import TWO_ORIGIN_GROUPS
from hf_crystal.tokenization import build_crystal_tokenizer


def round_trip(path: str, stol: float) -> dict:
    matcher = StructureMatcher(stol=stol)
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


def _space_group(structure: Structure, symprec: float) -> int | None:
    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
    except Exception:  # spglib gives up on some cells: counted as undetermined
        return None


def _moved(structure: Structure, rng: np.random.Generator) -> Structure:
    """A permuted and translated copy of `structure`."""
    order = rng.permutation(len(structure))
    coords = structure.frac_coords[order] + rng.random(3)
    return Structure(structure.lattice, [structure[i].specie for i in order], coords)


def round_trip_wyckoff(path: str, stol: float, invariance: int, limit: int | None, seed: int) -> dict:
    matcher = StructureMatcher(stol=stol)
    tokenizer = build_crystal_tokenizer()
    rng = np.random.default_rng(seed)
    records = [r for r in iter_records(path) if r.structure is not None]
    records = records[:limit] if limit else records
    counts = dict.fromkeys(
        ["n", "failures", "matched", "same_sg", "same_sg_001", "undetermined", "n_two_origin"], 0
    )
    counts |= dict.fromkeys(["matched_two_origin", "same_sg_two_origin", "invariant", "checked"], 0)
    tokens = {"xyz": 0, "wyckoff": 0}
    misses = []
    for i, record in enumerate(tqdm(records, desc=path, unit=" structures")):
        s = record.structure
        counts["n"] += 1
        try:
            text = encode(s, format="wyckoff")
            back = decode(text, format="wyckoff")
        except Exception as err:  # counted: the point of this script
            counts["failures"] += 1
            misses.append((record.material_id, f"{type(err).__name__}: {err}"))
            continue
        tokens["wyckoff"] += len(tokenizer(text)["input_ids"])
        tokens["xyz"] += len(tokenizer(encode(s))["input_ids"])
        written = int(text.split("\n", 1)[0])
        sg_s, sg_s001, sg_back = _space_group(s, 0.1), _space_group(s, 0.01), _space_group(back, 0.01)
        if sg_s is None or sg_back is None:
            counts["undetermined"] += 1
        match = matcher.fit(s, back)
        same = sg_back == written == sg_s
        counts["matched"] += match
        counts["same_sg"] += same
        counts["same_sg_001"] += sg_back == sg_s001
        if written in TWO_ORIGIN_GROUPS:
            counts["n_two_origin"] += 1
            counts["matched_two_origin"] += match
            counts["same_sg_two_origin"] += same
        if not (match and same):
            misses.append((record.material_id, f"matched={match} sg {sg_s}->{written}->{sg_back}"))
        if i < invariance:
            counts["checked"] += 1
            counts["invariant"] += all(encode(_moved(s, rng), format="wyckoff") == text for _ in range(2))
    return {"source": path, **counts, "tokens": tokens, "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--format", choices=("xyz", "wyckoff"), default="xyz")
    parser.add_argument("--stol", type=float, default=0.3, help="StructureMatcher site tolerance")
    parser.add_argument(
        "--invariance", type=int, default=1000, help="wyckoff: structures checked for invariance"
    )
    parser.add_argument("--limit", type=int, help="wyckoff: first N structures of each source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-misses", type=int, default=20, help="wyckoff: misses listed per source")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pymatgen's CIF reader warns about rounded coordinates
    start = time.perf_counter()
    if args.format == "xyz":
        rows = [round_trip(path, args.stol) for path in args.sources]
        print(
            f"\n{'source':45s} {'n':>6s} {'fail':>5s} {'len Å':>7s} {'angle °':>8s} {'frac':>7s} {'matches':>8s}"
        )
        for r in rows:
            print(
                f"{r['source']:45s} {r['n']:6d} {r['failures']:5d} {r['max_len_err_A']:7.4f} "
                f"{r['max_angle_err_deg']:8.4f} {r['max_frac_err']:7.4f} {r['matcher_fraction']:8.4f}"
            )
    else:
        rows = [
            round_trip_wyckoff(path, args.stol, args.invariance, args.limit, args.seed)
            for path in args.sources
        ]
        print(
            f"\nWyckoff text, StructureMatcher(stol={args.stol}); 'same sg': decoded at symprec 0.01 == written "
            "== original at 0.1; 'sg@0.01': decoded == original, both at 0.01"
        )
        header = f"{'source':36s} {'n':>6s} {'fail':>4s} {'matched':>8s} {'same sg':>8s} {'sg@0.01':>8s} {'undet':>5s}"
        header += (
            f" {'2-origin n':>10s} {'matched':>8s} {'same sg':>8s} {'invariant':>10s} {'tokens/xyz':>10s}"
        )
        print(header)
        for r in rows:
            ok = max(r["n"] - r["failures"], 1)
            two = max(r["n_two_origin"], 1)
            tok = r["tokens"]
            print(
                f"{r['source']:36s} {r['n']:6d} {r['failures']:4d} {r['matched'] / ok:8.4f} "
                f"{r['same_sg'] / ok:8.4f} {r['same_sg_001'] / ok:8.4f} {r['undetermined']:5d} "
                f"{r['n_two_origin']:10d} {r['matched_two_origin'] / two:8.4f} {r['same_sg_two_origin'] / two:8.4f} "
                f"{r['invariant']:>5d}/{r['checked']:<4d} "
                f"{tok['wyckoff'] / max(tok['xyz'], 1):10.3f}"
            )
            print(f"  tokens per crystal: wyckoff {tok['wyckoff'] / ok:.1f}, xyz {tok['xyz'] / ok:.1f}")
            print(f"  not matched or not the same group ({len(r['misses'])}):")
            for material_id, why in r["misses"][: args.show_misses]:
                print(f"    {material_id}: {why}")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
