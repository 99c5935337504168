"""`hf-crystal generate`: sample crystals from a model or adapter and write them as they come.

Without `--model`, the embedded default model (`hf_crystal.embedded.DEFAULT_MODEL`) with the refiner it comes
with. With a refiner (`--refiner`, or the model's own unless `--no-refiner`), `--out` gets the refined
structures and `<stem>.llm<suffix>` beside it the LLM's own (so both can be evaluated); samples the LLM did not
write parseably are passed through, and counted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_crystal.commands.errors import UsageError, positive_int
from hf_crystal.commands.refine import add_symmetry_options, case_counts, symmetry_tolerance
from hf_crystal.embedded import DEFAULT_MODEL
from hf_crystal.sampling import MAX_NEW_TOKENS, TEMPERATURE, TOP_P

__all__ = ["add_parser", "generation_record_path"]


def generation_record_path(samples: Path) -> Path:
    """Where `generate` records how a sample file was made (read by `evaluate` into metrics.json)."""
    return samples.with_name(samples.stem + ".generation.json")


def _cmd_generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm
    from transformers import pipeline  # registers the hf_crystal tasks on import (hf_crystal.registration)

    from hf_crystal.embedded import refiner_for
    from hf_crystal.loading import load_crystal_model
    from hf_crystal.structure_io import SampleWriter

    if args.no_refiner and args.refiner:
        raise UsageError("give --refiner or --no-refiner, not both")
    if not args.no_refiner and args.refiner is None:
        args.refiner = refiner_for(args.model, args.revision)
    out = Path(args.out)
    writer = SampleWriter(out)  # checks the suffix before the model loads
    llm_writer = SampleWriter(out.with_suffix(".llm" + out.suffix)) if args.refiner else None
    start = writer.next_index() if args.resume else 0
    if not args.resume and (out.exists() or (llm_writer and llm_writer.path.exists())):
        raise UsageError(f"{args.out} exists: pass --resume to continue it, or choose another --out")
    plan = _condition_plan(args)
    total = sum(count for _, count in plan)
    model, tokenizer = load_crystal_model(
        args.model, revision=args.revision, allow_pickle=args.allow_pickle, merge=True
    )
    pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer, refiner=args.refiner)
    options = {"constrain": not args.no_constrain, "batch_size": args.batch_size}
    if args.refine_steps is not None:
        options["refine_steps"] = args.refine_steps
    if args.refiner:
        options["symmetry_tolerance"] = symmetry_tolerance(args)
    for key in ("temperature", "top_p", "max_new_tokens", "max_sites", "formula_units"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    out.parent.mkdir(parents=True, exist_ok=True)  # as SampleWriter would, but the record comes first
    _write_generation_record(
        args, plan, options, pipe.model, [writer.path, *([llm_writer.path] if llm_writer else [])]
    )
    totals = {"generated": 0, "parsed": 0, "valid": 0, "refined valid": 0, "written": 0}
    cases = []  # how the refiner kept each sample's symmetry
    with tqdm(total=total, initial=min(start, total), unit=" crystals", desc="generating") as bar:
        for index, sets, per_set in _batches(plan, start, args.batch_size):
            seed = None if args.seed is None else args.seed + index  # a resumed run draws new samples
            if len(sets) == 1:  # a dict, not a list of one: a list draws other samples for the same seed
                samples = pipe(sets[0], num_return_sequences=per_set, seed=seed, **options)
            else:
                samples = [
                    s
                    for group in pipe(sets, num_return_sequences=per_set, seed=seed, **options)
                    for s in group
                ]
            n = len(samples)
            totals["generated"] += n
            totals["parsed"] += sum(s["structure"] is not None for s in samples)
            totals["valid"] += sum(s["valid"] for s in samples)
            if llm_writer is not None:
                llm_writer.write(samples, start=index)
                samples = [
                    {**s, "structure": s["refined_structure"], "valid": s["refined_valid"]} for s in samples
                ]
                totals["refined valid"] += sum(s["valid"] for s in samples)
                cases += [s["refine_symmetry"] for s in samples if s["refine_symmetry"] is not None]
            totals["written"] += writer.write(samples, start=index)
            bar.update(n)
    refined = (
        f"; refined {totals['parsed']} (valid {totals['refined valid']}), passed through "
        f"{totals['generated'] - totals['parsed']} unparsed; LLM samples in {llm_writer.path}"
        if llm_writer
        else ""
    )
    print(
        f"generated {totals['generated']}, parsed {totals['parsed']}, valid {totals['valid']}{refined}; "
        f"wrote {totals['written']} to {args.out}" + (f" (resumed at sample {start})" if start else "")
    )
    if cases:
        from hf_crystal.symmetry import GENERATION_CASES

        counts = case_counts(cases, GENERATION_CASES)
        print(f"refiner symmetry (tolerance {options['symmetry_tolerance']} Å): {counts}")
        _record_symmetry_cases(writer.path, cases, resumed=bool(start))
    return 0


def _record_symmetry_cases(samples: Path, cases: list, resumed: bool) -> None:
    """Add how the refiner kept the samples' symmetry to the generation record (shown by `evaluate`)."""
    import json

    from hf_crystal.symmetry import GENERATION_CASES

    path = generation_record_path(samples)
    record = json.loads(path.read_text())
    key = "refine_symmetry_cases" + ("_after_resume" if resumed else "")
    record[key] = {case: cases.count(case) for case in GENERATION_CASES}
    path.write_text(json.dumps(record, indent=1))


def _write_generation_record(args, plan, options, model, paths) -> None:
    """Provenance of the samples beside each output file: model, sampling settings, seed, conditions."""
    import json
    from importlib.metadata import version

    config = model.generation_config
    record = {
        "model": args.model,
        "revision": args.revision,
        "constrained": not args.no_constrain,
        "formula_units": args.formula_units,
        "max_sites": args.max_sites,
        "seed": args.seed,
        "sampling": {
            key: options[key] for key in ("temperature", "top_p", "max_new_tokens") if key in options
        },
        "model_generation_config": {"temperature": config.temperature, "top_p": config.top_p},
        "condition_sets": [{**conditions, "count": count} for conditions, count in plan],
        "hf_crystal": version("hf-crystal"),
    }
    for path in paths:
        refined = path == Path(args.out) and args.refiner
        extra = (
            {
                "refiner": args.refiner,
                "refine_steps": args.refine_steps,
                "symmetry_tolerance": options.get("symmetry_tolerance"),
            }
            if refined
            else {}
        )
        generation_record_path(path).write_text(json.dumps(record | extra, indent=1))


_FLAGS = {
    "formula": "formula",
    "spacegroup": "spacegroup",
    "e_above_hull": "e_above_hull",
    "formation_energy_per_atom": "formation_energy",
    "band_gap": "band_gap",
}


def _check_conditions(conditions: dict, args: argparse.Namespace) -> None:
    """ValueError (FormulaUnitsError) for conditions the pipeline would refuse, before the model loads."""
    from hf_crystal.constraints import DEFAULT_MAX_SITES
    from hf_crystal.prompts import condition_cells

    condition_cells(conditions, args.formula_units, args.max_sites or DEFAULT_MAX_SITES)


def _condition_plan(args: argparse.Namespace) -> list[tuple[dict, int]]:
    """(conditions, count) per condition set: the command-line flags, or each line of --conditions-file (whose
    lines may set their own "formula_units")."""
    flags = {key: getattr(args, flag) for key, flag in _FLAGS.items() if getattr(args, flag) is not None}
    if not args.conditions_file:
        _check_conditions(flags, args)
        return [(flags, args.num)]
    import json

    if flags:
        raise UsageError("give conditions either as flags or in --conditions-file, not both")
    if Path(args.out).suffix.lower() not in (".csv", ".jsonl"):
        raise UsageError(
            "with --conditions-file, --out must be .csv or .jsonl (they keep each sample's conditions)"
        )
    plan = []
    for number, line in enumerate(Path(args.conditions_file).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{args.conditions_file}, line {number}"
        try:
            conditions = json.loads(line)
            count = conditions.pop("count", args.num) if isinstance(conditions, dict) else None
            if not isinstance(count, int) or count < 1:
                raise ValueError('each line must be a JSON object with an optional positive integer "count"')
            _check_conditions(conditions, args)  # fails here, with the line
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise UsageError(f"{where}: {exc}") from None
        plan.append((conditions, count))
    if not plan:
        raise UsageError(f"{args.conditions_file} holds no condition sets")
    return plan


def _formula_units(value: str) -> str | int:
    """--formula-units: "any", "cell" or a positive integer."""
    if value in ("any", "cell"):
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f'"any", "cell" or a positive integer, got {value!r}')


def _batches(plan: list[tuple[dict, int]], start: int, batch_size: int):
    """(first sample index, condition sets, samples per set) of every batch still to draw, from sample `start` on.

    A set of `batch_size` samples or more is split into batches of its own; consecutive smaller sets of the same
    count share a batch (one prompt each), so that a conditions file of many small sets runs batched too.
    """
    offset, shared, shared_count = 0, [], 0  # shared: (first index, conditions) of small sets of one batch
    for conditions, count in plan:
        end = offset + count
        if shared and (count != shared_count or (len(shared) + 1) * count > batch_size):
            yield shared[0][0], [c for _, c in shared], shared_count
            shared = []
        if start <= offset and count < batch_size:
            shared.append((offset, conditions))
            shared_count = count
        else:
            for index in range(max(start, offset), end, batch_size):
                yield index, [conditions], min(batch_size, end - index)
        offset = end
    if shared:
        yield shared[0][0], [c for _, c in shared], shared_count


def add_parser(subparsers) -> None:
    """Add `generate` to the CLI's subparsers."""
    commands = subparsers
    gen = commands.add_parser(
        "generate",
        help="sample crystals from a model or LoRA adapter",
        description="Generate crystals and write them as they come (.cif, .extxyz, .csv or .jsonl by suffix).",
    )
    gen.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"local folder or Hub id of a model or LoRA adapter (default: the embedded {DEFAULT_MODEL})",
    )
    gen.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    gen.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle weights (pytorch_model.bin) when a model has no safetensors: only for sources you trust",
    )
    gen.add_argument("--num", type=positive_int, default=10, help="number of samples (default 10)")
    gen.add_argument(
        "--formula",
        help="condition: chemical formula, e.g. NaCl (constrains the composition, see --formula-units)",
    )
    gen.add_argument(
        "--formula-units",
        type=_formula_units,
        default="any",
        help='what --formula means: "any" number of formula units Z within --max-sites (default; Z drawn per '
        'sample from MP-20\'s frequencies), "cell" for the counts as given, or an integer Z',
    )
    gen.add_argument("--spacegroup", type=int, help="condition: space-group number 1-230")
    gen.add_argument("--e-above-hull", type=float, help="condition: energy above hull, eV/atom")
    gen.add_argument("--formation-energy", type=float, help="condition: formation energy per atom, eV/atom")
    gen.add_argument("--band-gap", type=float, help="condition: band gap, eV")
    gen.add_argument(
        "--conditions-file",
        help='JSONL of condition sets, one per line with a count, e.g. {"formula": "NaCl", "count": 20} '
        '(a conditional benchmark in one run; --num is the count of lines without one; "formula_units" on a '
        "line overrides --formula-units)",
    )
    gen.add_argument(
        "--temperature",
        type=float,
        help=f"sampling temperature (0: greedy; default: the model's, else {TEMPERATURE})",
    )
    gen.add_argument("--top-p", type=float, help=f"nucleus sampling (default: the model's, else {TOP_P})")
    gen.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help=f"token budget per sample (default: the constraint's, else the model's, else {MAX_NEW_TOKENS})",
    )
    gen.add_argument(
        "--batch-size", type=positive_int, default=8, help="samples per generate call (default 8)"
    )
    gen.add_argument("--seed", type=int, help="seed for reproducible sampling")
    gen.add_argument("--no-constrain", action="store_true", help="turn constrained decoding off")
    gen.add_argument(
        "--max-sites",
        type=positive_int,
        help="most sites per crystal (default: the model's generation config, e.g. 20 for the MP-20 models; else 64)",
    )
    gen.add_argument(
        "--refiner",
        help="FlowLLM refiner (folder or Hub id) applied to every parsed sample (default: the one the model "
        "comes with, which only the embedded default model has)",
    )
    gen.add_argument("--no-refiner", action="store_true", help="no refiner, not even the model's own")
    gen.add_argument(
        "--refine-steps",
        type=positive_int,
        help="Euler steps of the refiner (default: the model's generation config, else the refiner's: 10)",
    )
    add_symmetry_options(gen)
    gen.add_argument("--resume", action="store_true", help="continue an interrupted run up to --num")
    gen.add_argument("--out", required=True, help="output file: .cif, .extxyz, .csv or .jsonl")
    gen.set_defaults(func=_cmd_generate)
