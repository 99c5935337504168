"""Models side by side on one split of MP-20 val, every row measured the same way (issue 25: the xyz default and
the Wyckoff model, each as written and refined, beside the pyxtal random baseline).

    scripts/loopback-only nice -n 10 .venv/bin/python benchmarks/side_by_side.py \\
        default default+none \\
        wyckoff+none=models/crystal-llm-mp20-wyckoff-small+none \\
        wyckoff=models/crystal-llm-mp20-wyckoff-small+hf-crystal/crystal-refiner-mp20-lora \\
        pyxtal --split report --train /work/runs/data/mp20_train.csv --num 1000 --relax 500 --out runs/side

A row is ``[NAME=]MODEL[+REFINER|+none]`` (MODEL a folder or Hub id, ``default`` for the embedded default;
without ``+`` the model's own refiner, if it has one; ``+none``: the LLM's structures as written) or ``pyxtal``.
Each row is measured by the project's own commands, so every row meets one evaluator:

- unconditional: ``hf-crystal benchmark`` (Ray; ``--num`` samples, no resampling, the first ``--relax`` relaxed
  with CHGNet against the shipped hull; the reference is the whole split): validity, COV-R/P, Wasserstein
  distances, unique / novel, metastable / stable / S.U.N., P1 rate and space-group chi-square (symprec 0.1).
  The pyxtal row: ``hf-crystal baseline random`` with the compositions of ``--num`` split structures (drawn with
  the seed; random space groups), then ``hf-crystal benchmark --samples``; structures pyxtal cannot build stay
  in the file as unreadable samples, so they count as invalid;
- conditioned: ``hf-crystal generate --conditions-file`` with the formula and space group (the split's
  ``pretty_formula`` and ``spacegroup.number``) of the split's first ``--conditions`` rows, one sample each
  (64 condition sets per batch, as the benchmark's batches), scored by ``hf_crystal.evaluation.conditions``
  (space group at symprec 0.1, reduced formula); a row as written scores the LLM's own samples of a refined
  row of the same model when there is one (generated once);
- tokens per crystal: the unconditional samples' texts, in the model's tokenizer;
- crystals/s: timed ``pipeline("crystal-generation")`` calls (``bench_generation.run``: constrained, batch
  ``--speed-batch-size``, refiner included when the row has one, one torch thread), every row in one process,
  in ``--speed-rounds`` interleaved rounds so that the machine's drift meets every row alike;
- infill: ``pipeline("crystal-infill")`` on ``--infill`` split structures (drawn with the seed), one element of
  each (drawn with the seed) masked; how often it comes back first / in the top 5 of all elements
  (``exclude_masked=False``).

Resumable: every finished part is kept in ``--out/parts`` with the settings it was made with; a rerun skips
it (and refuses other settings), and ``hf-crystal benchmark`` / ``generate`` resume their own shards. Writes
``side_by_side.md`` (the tables, rates with 95% Wilson intervals) and ``side_by_side.json`` (every number).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mp_20" / "val.csv"
SPLIT_IDS = {"report": "val_report_ids.txt", "select": "val_select_ids.txt"}
NONE, PYXTAL = "none", "pyxtal"
_NAME = re.compile(r"[A-Za-z0-9._+-]+")
TOP_K = 5


class PartError(RuntimeError):
    """A part of the run failed, or ``--out`` holds a part made with other settings."""


@dataclass(frozen=True)
class Row:
    """One row of the table: ``model`` (None for the pyxtal baseline) and ``refiner`` (None: as written)."""

    name: str
    model: str | None
    refiner: str | None

    @property
    def generated(self) -> bool:
        return self.model is not None


def parse_row(spec: str, refiner_for: Callable[[str], str | None] | None = None) -> Row:
    """A ``Row`` from ``[NAME=]MODEL[+REFINER|+none]`` or ``[NAME=]pyxtal``; ``default`` is the embedded default
    model, and a model without ``+`` gets ``refiner_for(model)`` (its own refiner, None if it has none)."""
    from hf_crystal.embedded import DEFAULT_MODEL

    name, equals, body = spec.partition("=")
    if not equals:
        name, body = spec, spec
    model, plus, refiner = body.partition("+")
    if not name or not model or (plus and not refiner):
        raise ValueError(f"row {spec!r}: expected [NAME=]MODEL[+REFINER|+none] or pyxtal")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"row {spec!r}: the name {name!r} names a folder: letters, digits and . _ + - only "
            "(give one as NAME=...)"
        )
    if model == PYXTAL:
        if plus:
            raise ValueError(f"row {spec!r}: the pyxtal baseline takes no refiner")
        return Row(name, None, None)
    model = DEFAULT_MODEL if model == "default" else model
    if not plus:
        if refiner_for is None:
            from hf_crystal.embedded import refiner_for
        refiner = refiner_for(model)
    return Row(name, model, None if refiner == NONE else refiner)


def parse_rows(specs: list[str], refiner_for: Callable[[str], str | None] | None = None) -> list[Row]:
    """``parse_row`` of each spec; names must differ."""
    rows = [parse_row(spec, refiner_for) for spec in specs]
    names = [row.name for row in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"row names must differ: {', '.join(repeated)} given twice (use NAME=...)")
    return rows


class Parts:
    """Finished parts of a run (``root/parts/<key>.json``: the settings and the result), for resuming."""

    def __init__(self, root: Path):
        self.root = Path(root) / "parts"
        self.seconds: dict[str, float] = {}  # wall time of each part, measured when it ran

    def run(self, key: str, spec: dict, compute: Callable[[], dict]) -> dict:
        """The result of part ``key``: read back when it was made with ``spec``, else ``compute()`` and kept."""
        from hf_crystal.benchmark.store import atomic_write

        spec = json.loads(json.dumps(spec))
        path = self.root / f"{key}.json"
        if path.exists():
            done = json.loads(path.read_text())
            if done["spec"] != spec:
                changed = sorted(k for k in {*spec, *done["spec"]} if spec.get(k) != done["spec"].get(k))
                raise PartError(
                    f"{path} was made with other settings ({', '.join(changed)}): use another --out, or delete "
                    "the part to redo it"
                )
            print(f"[side-by-side] {key}: done before, skipped", file=sys.stderr)
            self.seconds[key] = done["result"]["seconds"]
            return done["result"]
        print(f"[side-by-side] {key} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = compute()
        result["seconds"] = time.perf_counter() - started
        atomic_write(path, json.dumps({"spec": spec, "result": result}, indent=1))
        self.seconds[key] = result["seconds"]
        return result


def _cli(argv: list[str], log: Path) -> None:
    """``hf-crystal ARGV`` in a child process (this interpreter), its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "hf_crystal.commands", *argv]
    with log.open("a") as handle:
        handle.write(f"$ hf-crystal {' '.join(argv)}\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise PartError(f"hf-crystal {argv[0]} failed (exit {code}); {log} ends with:\n{tail}")


# Inputs: the split, the conditions and the infill tasks, all drawn from val.csv.


def split_inputs(val: Path, ids_file: Path, out: Path, *, num: int, conditions: int, infill: int, seed: int):
    """Write the split's rows (``reference.csv``, val.csv's order), the compositions for the pyxtal row
    (``pyxtal_like.csv``: ``num`` rows drawn with ``seed``), ``conditions.jsonl`` (formula and space group of
    the first ``conditions`` rows, one sample each) and ``infill.jsonl`` (``infill`` rows drawn with ``seed``,
    each with a masked element drawn with ``seed``). Returns their digests."""
    import hashlib

    import pandas as pd
    from pymatgen.core import Structure

    table = pd.read_csv(val, index_col=0)
    wanted = set(ids_file.read_text().split())
    split = table[table["material_id"].isin(wanted)]
    if len(split) != len(wanted):
        raise PartError(f"{ids_file}: {len(wanted) - len(split)} of its ids are not in {val}")
    if max(num, conditions, infill) > len(split):
        raise PartError(
            f"the split holds {len(split)} structures: --num, --conditions, --infill must not exceed it"
        )
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    split.to_csv(out / "reference.csv")
    split.iloc[np.sort(rng.permutation(len(split))[:num])].to_csv(out / "pyxtal_like.csv")
    lines = [
        json.dumps({"formula": r["pretty_formula"], "spacegroup": int(r["spacegroup.number"]), "count": 1})
        for _, r in split.head(conditions).iterrows()
    ]
    (out / "conditions.jsonl").write_text("".join(line + "\n" for line in lines))
    tasks = []
    for _, r in split.iloc[np.sort(rng.permutation(len(split))[:infill])].iterrows():
        elements = sorted(el.symbol for el in Structure.from_str(r["cif"], fmt="cif").composition.elements)
        tasks.append(
            {"material_id": r["material_id"], "mask_element": str(rng.choice(elements)), "cif": r["cif"]}
        )
    (out / "infill.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    names = ("reference.csv", "pyxtal_like.csv", "conditions.jsonl", "infill.jsonl")
    return {n: hashlib.sha256((out / n).read_bytes()).hexdigest()[:16] for n in names}


# The parts of a row.


def conditions_source(row: Row, rows: list[Row]) -> tuple[Row, bool]:
    """The row whose conditioned samples ``row`` scores, and whether they are that row's LLM samples: a row as
    written scores the LLM samples of the first refined row of its model (``generate`` writes both), if any."""
    if row.refiner is None:
        for other in rows:
            if other.model == row.model and other.refiner is not None:
                return other, True
    return row, False


def pyxtal_samples(like: Path, out: Path, seed: int) -> dict:
    """``hf-crystal baseline random --like LIKE``, written as ``out/samples.jsonl`` holding every entry of
    ``like`` in order: the built structure, or no structure (an unreadable sample) where pyxtal built none."""
    from hf_crystal.structure_io import cif_block, read_structures

    built_file = out / "pyxtal.cif"
    built_file.unlink(missing_ok=True)  # a half-written file of an interrupted run
    argv = ["baseline", "random", "--like", str(like), "--out", str(built_file), "--seed", str(seed)]
    _cli([*argv, "--no-progress"], out / "pyxtal.log")
    like_ids, _, _ = read_structures(like)
    built = dict(zip(*read_structures(built_file)[:2], strict=True))
    lines = [
        {"material_id": i, "cif": cif_block(built[i], i)}
        if i in built
        else {"material_id": i, "error": "pyxtal built no structure"}
        for i in like_ids
    ]
    (out / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"n": len(like_ids), "built": len(built)}


def benchmark_argv(row: Row, args: argparse.Namespace, reference: Path, out: Path) -> list[str]:
    """The ``hf-crystal benchmark`` arguments of ``row`` (``--workers`` changes no number: left to the caller)."""
    argv = [
        "benchmark",
        "--reference",
        str(reference),
        "--train",
        str(args.train),
        "--relax",
        str(args.relax),
    ]
    argv += ["--seed", str(args.seed), "--out", str(out), "--reference-label", f"MP-20 val_{args.split}"]
    if row.generated:
        argv += ["--model", row.model, "--num", str(args.num)]
        argv += ["--refiner", row.refiner] if row.refiner else ["--no-refiner"]
    else:
        argv += ["--samples", str(out.parent / "samples.jsonl")]
    return argv


def benchmark_result(out: Path) -> dict:
    return {
        "metrics": json.loads((out / "metrics.json").read_text()),
        "timings": json.loads((out / "timings.json").read_text()),
    }


def condition_rates(samples: Path) -> dict:
    """Space-group hit (symprec 0.1) and reduced-formula match of a ``generate --conditions-file`` output, with
    Wilson intervals; unreadable samples miss."""
    from hf_crystal.evaluation.conditions import condition_counts, condition_flags, parse_sample_conditions
    from hf_crystal.evaluation.rates import wilson_interval
    from hf_crystal.structure_io import iter_records

    asked, flags = [], []
    for record in iter_records(samples):
        conditions = parse_sample_conditions(record.properties.get("conditions"))
        asked.append(conditions)
        flags.append(condition_flags(record.structure, conditions))
    counts = condition_counts(asked, flags)
    out = {"n": len(asked)}
    for name, key in (("sg_hit", "cond_spacegroup_0.1"), ("formula_match", "cond_formula_reduced")):
        hits, n = counts[key]
        out |= {name: hits / n, f"{name}_ci95": wilson_interval(hits, n), f"{name}_count": hits}
    both = sum(f["spacegroup_0.1_hit"] and f["formula_reduced_match"] for f in flags)
    out |= {"both": both / len(flags), "both_ci95": wilson_interval(both, len(flags))}
    return out


def tokens_per_crystal(samples: Path, tokenizer) -> dict:
    """Mean tokens of the samples' texts (every sample, parsed or not) in ``tokenizer``."""
    texts = [json.loads(line)["text"] for line in samples.read_text().splitlines() if line.strip()]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return {
        "n": len(lengths),
        "tokens_per_crystal": float(np.mean(lengths)),
        "median": float(np.median(lengths)),
    }


def infill_recovery(pipe, tasks: list[tuple[object, str]], k: int = TOP_K) -> dict:
    """How often the masked element of each (structure, element) task is ranked first and within the first
    ``k`` of all elements by ``pipe`` (a ``crystal-infill`` pipeline, ``exclude_masked=False``)."""
    from hf_crystal.evaluation.rates import wilson_interval

    ranks = []
    for structure, element in tasks:
        answer = pipe(structure, mask_element=element, exclude_masked=False, num_candidates=k)
        ranked = [c["element"] for c in answer["candidates"]]
        ranks.append(ranked.index(element) if element in ranked else None)
    n = len(ranks)
    top1, topk = sum(r == 0 for r in ranks), sum(r is not None for r in ranks)
    return {
        "n": n,
        "top1": top1 / n,
        "top1_ci95": wilson_interval(top1, n),
        f"top{k}": topk / n,
        f"top{k}_ci95": wilson_interval(topk, n),
        "ranks": ranks,
    }


def generation_speed(rows: list[Row], num: int, batch_size: int, rounds: int, seed: int) -> dict:
    """Crystals/s of each generating row's pipeline (``bench_generation.run``), rows interleaved in ``rounds``."""
    import torch
    from bench_generation import run as timed_generation
    from transformers import pipeline

    import hf_crystal  # noqa: F401  (registers the tasks)
    from hf_crystal.loading import load_crystal_model

    torch.set_num_threads(1)
    pipes = {}
    for row in rows:
        model, tokenizer = load_crystal_model(row.model, merge=True)
        pipes[row.name] = pipeline(
            "crystal-generation", model=model, tokenizer=tokenizer, refiner=row.refiner
        )
        pipes[row.name](2, batch_size=2, seed=seed)  # warm-up
    seconds = dict.fromkeys(pipes, 0.0)
    for r in range(rounds):
        for name, pipe in pipes.items():
            seconds[name] += timed_generation(pipe, num, batch_size, constrain=True, seed=seed + r)["seconds"]
    return {
        name: {"crystals_per_s": rounds * num / s, "samples": rounds * num, "seconds": s}
        for name, s in seconds.items()
    } | {"load_average_after": list(os.getloadavg())}


# The tables.


def _rate(value, interval=None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if interval is None or interval[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict, args: argparse.Namespace) -> str:
    """The two tables (unconditional; conditioned, infill, tokens, speed) and the default choice line."""
    lines = [
        f"Split: MP-20 val_{args.split} (reference: all of it); seed {args.seed}. Rates with 95% Wilson intervals. "
        "`benchmarks/side_by_side.py` (see its docstring for how each column is measured).",
        "",
        "| row | model | refiner | N | struct. valid | comp. valid | COV-R | COV-P | wdist density | wdist N-ary "
        "| unique | novel | N relaxed subset | metastable | stable | S.U.N. | P1 (0.1) | SG chi2 (floor) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["rows"].items():
        m = r["benchmark"]["metrics"]
        model = r["row"]["model"] or "pyxtal random (split compositions)"
        cells = [name, model, r["row"]["refiner"] or "as written", str(m["n_generated"])]
        cells += [
            _rate(m.get(k), m.get(f"{k}_ci95"))
            for k in ("struct_valid", "comp_valid", "cov_recall", "cov_precision")
        ]
        cells += [_number(m.get("wdist_density")), _number(m.get("wdist_nary"))]
        cells += [_rate(m.get(k), m.get(f"{k}_ci95")) for k in ("unique_rate", "novel_rate")]
        cells += [str(m.get("n_stability", "n/a"))]
        cells += [_rate(m.get(k), m.get(f"{k}_ci95")) for k in ("metastable_rate", "stable_rate", "sun_rate")]
        cells += [_rate(m.get("p1_rate_sp0.1"), m.get("p1_rate_ci95_sp0.1"))]
        cells += [f"{_number(m.get('sg_chi2_sp0.1'), 2)} ({_number(m.get('sg_chi2_floor_sp0.1'), 2)})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| row | conditions N | space-group hit (0.1) | formula match | both | infill N | top-1 | top-5 "
        "| tokens/crystal | crystals/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["rows"].items():
        c, i, t, s = (r.get(k) or {} for k in ("conditions", "infill", "tokens", "speed"))
        cells = [name, str(c.get("n", "n/a"))]
        cells += [_rate(c.get(k), c.get(f"{k}_ci95")) for k in ("sg_hit", "formula_match", "both")]
        cells += [str(i.get("n", "n/a")), _rate(i.get("top1"), i.get("top1_ci95"))]
        cells += [_rate(i.get(f"top{TOP_K}"), i.get(f"top{TOP_K}_ci95"))]
        cells += [_number(t.get("tokens_per_crystal"), 1), _number(s.get("crystals_per_s"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    eligible = {
        name: r["benchmark"]["metrics"].get("sun_rate")
        for name, r in results["rows"].items()
        if r["row"]["model"]
        and (r["benchmark"]["metrics"].get("struct_valid") or 0) >= 0.95
        and (r["benchmark"]["metrics"].get("comp_valid") or 0) >= 0.85
    }
    best = max(eligible, key=lambda n: eligible[n] or 0) if eligible else None
    lines += [
        "",
        "Highest S.U.N. among the model rows that meet the validity targets (structural >= 0.95, compositional "
        f">= 0.85): {f'{best} ({eligible[best]:.3f})' if best else 'none meets them'}.",
        "",
        "Wall time of each part (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items() if v is not None),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rows", nargs="+", help="[NAME=]MODEL[+REFINER|+none] or pyxtal (see the docstring)")
    parser.add_argument("--split", choices=sorted(SPLIT_IDS), default="report")
    parser.add_argument("--val", type=Path, default=VAL, help=f"MP-20 val.csv (default {VAL})")
    parser.add_argument("--train", type=Path, required=True, help="training structures for novelty (CSV)")
    parser.add_argument("--num", type=int, default=1000, help="unconditional samples per row (default 1000)")
    parser.add_argument("--relax", type=int, default=500, help="relaxed subset: the first N samples (500)")
    parser.add_argument(
        "--conditions", type=int, default=256, help="space-group + formula conditions (256; 0: no such part)"
    )
    parser.add_argument("--infill", type=int, default=200, help="infill structures (200; 0: no infill part)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-num", type=int, default=64, help="samples per row and round for crystals/s")
    parser.add_argument("--speed-batch-size", type=int, default=64)
    parser.add_argument("--speed-rounds", type=int, default=2, help="0: no crystals/s part")
    parser.add_argument("--workers", type=int, default=1, help="Ray workers of the benchmarks (default 1)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        rows = parse_rows(args.rows)
    except ValueError as exc:
        parser.error(str(exc))
    if min(args.num, args.relax, args.conditions, args.infill, args.speed_rounds) < 0 or args.num < 1:
        parser.error("--num must be positive; --relax, --conditions, --infill and --speed-rounds >= 0")
    if not args.train.is_file():
        parser.error(f"--train: {args.train} not found")

    out, parts = args.out, Parts(args.out)
    ids_file = args.val.parent / SPLIT_IDS[args.split]
    inputs = out / "inputs"
    draw = {"num": args.num, "conditions": args.conditions, "infill": args.infill, "seed": args.seed}
    spec = {"val": str(args.val), "ids": str(ids_file), **draw}
    digests = parts.run("inputs", spec, lambda: split_inputs(args.val, ids_file, inputs, **draw))
    common = {"inputs": {k: v for k, v in digests.items() if k != "seconds"}}
    results: dict = {"settings": vars(args) | {"rows": [asdict(r) for r in rows]}, "rows": {}}
    tokenizers: dict = {}
    for row in rows:
        folder = out / "rows" / row.name
        entry = results["rows"][row.name] = {"row": asdict(row)}
        if not row.generated:
            build = lambda f=folder: pyxtal_samples(inputs / "pyxtal_like.csv", f, args.seed)  # noqa: E731
            parts.run(f"{row.name}.pyxtal", common | {"seed": args.seed}, build)
        bench_out = folder / "benchmark"
        bench = benchmark_argv(row, args, inputs / "reference.csv", bench_out)

        def benchmark(bench=bench, bench_out=bench_out, folder=folder) -> dict:
            _cli([*bench, "--workers", str(args.workers)], folder / "benchmark.log")
            return benchmark_result(bench_out)

        entry["benchmark"] = parts.run(f"{row.name}.benchmark", common | {"argv": bench}, benchmark)
        if not row.generated:
            continue
        if args.conditions:
            # A row as written scores the LLM's own samples of a refined row of its model when there is one
            # (`generate` writes them beside the refined ones): the same samples, generated once.
            source, llm = conditions_source(row, rows)
            source_folder = out / "rows" / source.name
            gen = ["generate", "--model", row.model, "--conditions-file", str(inputs / "conditions.jsonl")]
            gen += ["--refiner", source.refiner] if source.refiner else ["--no-refiner"]
            gen += ["--seed", str(args.seed), "--batch-size", "64"]
            gen += ["--out", str(source_folder / "conditioned.jsonl"), "--resume"]
            scored = source_folder / ("conditioned.llm.jsonl" if llm else "conditioned.jsonl")

            def conditions(gen=gen, log=source_folder / "conditioned.log", scored=scored) -> dict:
                _cli(gen, log)  # a finished file is resumed at its end: nothing is generated again
                return condition_rates(scored)

            spec = common | {"argv": gen, "scored": scored.name}
            entry["conditions"] = parts.run(f"{row.name}.conditions", spec, conditions)

        def tokens(row=row, bench_out=bench_out) -> dict:
            from hf_crystal.loading import load_crystal_model

            if row.model not in tokenizers:
                tokenizers[row.model] = load_crystal_model(row.model)[1]
            return tokens_per_crystal(bench_out / "samples.jsonl", tokenizers[row.model])

        entry["tokens"] = parts.run(f"{row.name}.tokens", common | {"argv": bench}, tokens)

    generating = [row for row in rows if row.generated]
    models = list(dict.fromkeys(row.model for row in generating))
    for model in models if args.infill else []:  # the refiner plays no part in infill: once per model

        def infill(model=model) -> dict:
            from pymatgen.core import Structure
            from transformers import pipeline

            from hf_crystal.loading import load_crystal_model

            llm, tokenizer = load_crystal_model(model, merge=True)
            pipe = pipeline("crystal-infill", model=llm, tokenizer=tokenizer)
            lines = [json.loads(line) for line in (inputs / "infill.jsonl").read_text().splitlines()]
            tasks = [(Structure.from_str(t["cif"], fmt="cif"), t["mask_element"]) for t in lines]
            return infill_recovery(pipe, tasks)

        key = "infill." + re.sub(r"[^A-Za-z0-9._-]+", "_", model)
        result = parts.run(key, common | {"model": model}, infill)
        for row in generating:
            if row.model == model:
                results["rows"][row.name]["infill"] = result
    if generating and args.speed_rounds:
        speed_spec = common | {
            "rows": [asdict(r) for r in generating],
            **{k: getattr(args, k) for k in ("speed_num", "speed_batch_size", "speed_rounds", "seed")},
        }
        speed = parts.run(
            "speed",
            speed_spec,
            lambda: generation_speed(
                generating, args.speed_num, args.speed_batch_size, args.speed_rounds, args.seed
            ),
        )
        results["speed_load_average_after"] = speed["load_average_after"]
        for row in generating:
            results["rows"][row.name]["speed"] = speed[row.name]
    results["seconds"] = parts.seconds
    results["settings"] = json.loads(json.dumps(results["settings"], default=str))
    table = markdown(results, args)
    (out / "side_by_side.json").write_text(json.dumps(results, indent=1))
    (out / "side_by_side.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
