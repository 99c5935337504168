"""The `hf-crystal` command: a thin shell over the library.

A user mistake (missing file, unreadable input, bad option value) ends in one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pymatgen.io.cif import CifWriter

from hf_crystal.evaluation.command import add_evaluate_command
from hf_crystal.text import encode, try_decode
from hf_crystal.training.command import add_train_command

__all__ = ["UsageError", "main", "read_text_blocks"]


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line."""


def read_text_blocks(text: str) -> list[tuple[str | None, str]]:
    """(id, crystal text) blocks of a file in which crystals are separated by blank lines.

    A block may start with a comment line "# ID" naming it, as `hf-crystal encode` writes.
    """
    blocks = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = chunk.strip().splitlines()
        name = lines[0][1:].strip() if lines and lines[0].startswith("#") else None
        body = "\n".join(lines[1:] if name is not None else lines)
        if body.strip():
            blocks.append((name, body))
    return blocks


def _translation(value: str):
    if value == "random":
        return value
    try:
        vector = [float(x) for x in value.split(",")]
    except ValueError:
        vector = []
    if len(vector) != 3:
        raise argparse.ArgumentTypeError(f"expected 'random' or three comma-separated numbers, got {value!r}")
    return vector


def _split_fractions(value: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(x) for x in value.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions like 0.8,0.1,0.1, got {value!r}"
        )
    return fractions


def _cmd_dataset_build(args: argparse.Namespace) -> int:
    from hf_crystal.data import build_dataset, save_dataset
    from hf_crystal.hub import push_folder, render_dataset_card

    per_split = {
        k: v for k, v in (("train", args.train), ("validation", args.validation), ("test", args.test)) if v
    }
    if bool(per_split) == bool(args.source):
        raise UsageError(
            "give either one SOURCE (split with --split-fractions) or --train/--validation/--test files"
        )
    dataset, report = build_dataset(
        per_split or args.source, split_fractions=args.split_fractions, seed=args.seed
    )
    if not dataset:
        raise UsageError(f"no structure could be read; {report.summary()}")
    card = render_dataset_card(
        dataset, report, repo_id=args.push_to_hub or args.out.name, license=args.license
    )
    out = save_dataset(dataset, args.out, card=str(card))
    print(report.summary())
    print(f"saved to {out}")
    if args.push_to_hub:
        print(f"pushed: {push_folder(out, args.push_to_hub, repo_type='dataset', private=args.private)}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from hf_crystal.data import iter_records

    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - closed below
    n_ok = n_bad = 0
    try:
        for source in args.inputs:
            for record in iter_records(source):
                if record.structure is None:
                    n_bad += 1
                    print(f"skipped {record.material_id}: {record.error}", file=sys.stderr)
                    continue
                text = encode(
                    record.structure, translate=args.translate, permute=args.permute, seed=args.seed
                )
                out.write(f"# {record.material_id}\n{text}\n\n")
                n_ok += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"encoded {n_ok}, skipped {n_bad}", file=sys.stderr)
    return 0 if n_ok else 2


def _cmd_decode(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    blocks = read_text_blocks(text)
    if not blocks:
        raise UsageError(f"{args.input} holds no crystal text")
    n_ok = 0
    with open(args.out, "w") as out:
        for i, (name, body) in enumerate(blocks):
            structure, error = try_decode(body)
            if error is not None:
                print(f"skipped block {i + 1} ({name or 'unnamed'}): {error}", file=sys.stderr)
                continue
            block = str(CifWriter(structure))
            if name:
                block = re.sub(r"^data_\S*", "data_" + re.sub(r"\s+", "_", name), block, count=1, flags=re.M)
            out.write(block + "\n")
            n_ok += 1
    print(f"decoded {n_ok} of {len(blocks)} into {args.out}", file=sys.stderr)
    return 0 if n_ok else 2


def _cmd_generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm
    from transformers import pipeline

    import hf_crystal.pipeline_crystal  # noqa: F401  (registers the task)
    from hf_crystal.data import SampleWriter
    from hf_crystal.hub import load_crystal_model

    writer = SampleWriter(args.out)  # checks the suffix before the model loads
    start = writer.next_index() if args.resume else 0
    if not args.resume and Path(args.out).exists():
        raise UsageError(f"{args.out} exists: pass --resume to continue it, or choose another --out")
    conditions = {
        key: value
        for key, value in (
            ("formula", args.formula),
            ("spacegroup", args.spacegroup),
            ("e_above_hull", args.e_above_hull),
            ("formation_energy_per_atom", args.formation_energy),
            ("band_gap", args.band_gap),
        )
        if value is not None
    }
    model, tokenizer = load_crystal_model(args.model, revision=args.revision)
    pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer)
    options = {"constrain": not args.no_constrain, "batch_size": args.batch_size}
    for key in ("temperature", "top_p", "max_new_tokens"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    totals = {"generated": 0, "parsed": 0, "valid": 0, "written": 0}
    with tqdm(total=args.num, initial=min(start, args.num), unit=" crystals", desc="generating") as bar:
        for index in range(start, args.num, args.batch_size):
            n = min(args.batch_size, args.num - index)
            seed = None if args.seed is None else args.seed + index  # a resumed run draws new samples
            samples = pipe(conditions, num_return_sequences=n, seed=seed, **options)
            totals["written"] += writer.write(samples, start=index)
            totals["generated"] += n
            totals["parsed"] += sum(s["structure"] is not None for s in samples)
            totals["valid"] += sum(s["valid"] for s in samples)
            bar.update(n)
    print(
        f"generated {totals['generated']}, parsed {totals['parsed']}, valid {totals['valid']}; "
        f"wrote {totals['written']} to {args.out}" + (f" (resumed at sample {start})" if start else "")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-crystal", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dataset = commands.add_parser("dataset", help="build crystal-text datasets")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    build = dataset_commands.add_parser(
        "build",
        help="CDVAE CSV or CIF folder -> train/validation/test dataset (Hub-shaped folder)",
        description="Build a crystal-text DatasetDict from a CDVAE-format CSV or a folder of CIF files.",
    )
    build.add_argument("source", nargs="?", help="one CSV / CIF folder, split with --split-fractions")
    build.add_argument("--train", help="source of the train split (instead of SOURCE)")
    build.add_argument("--validation", help="source of the validation split")
    build.add_argument("--test", help="source of the test split")
    build.add_argument(
        "--out", type=Path, required=True, help="output folder (parquet per split + README.md)"
    )
    build.add_argument("--split-fractions", type=_split_fractions, default=(0.8, 0.1, 0.1), metavar="F,F,F")
    build.add_argument("--seed", type=int, default=42, help="seed of the split")
    build.add_argument("--license", default="other", help="license for the card metadata")
    build.add_argument("--push-to-hub", metavar="REPO_ID", help="also push to this Hub dataset repo")
    build.add_argument("--private", action="store_true", help="create the Hub repo private")
    build.set_defaults(func=_cmd_dataset_build)

    enc = commands.add_parser(
        "encode",
        help="structures (CIF, CSV, extxyz, jsonl) -> crystal text",
        description="Write structures as crystal text, one block per structure, separated by blank lines.",
    )
    enc.add_argument("inputs", nargs="+", help="CIF files or folders, CDVAE CSVs, .extxyz or .jsonl")
    enc.add_argument("--out", help="output text file (default: stdout)")
    enc.add_argument("--translate", type=_translation, help="'random' or a fractional shift 'x,y,z'")
    enc.add_argument("--permute", action="store_true", help="shuffle the site order")
    enc.add_argument("--seed", type=int, help="seed for --translate random / --permute")
    enc.set_defaults(func=_cmd_encode)

    dec = commands.add_parser(
        "decode",
        help="crystal text -> CIF",
        description="Decode crystal-text blocks (separated by blank lines) into one multi-block CIF file.",
    )
    dec.add_argument("input", help="text file, or - for stdin")
    dec.add_argument("--out", required=True, help="output .cif file")
    dec.set_defaults(func=_cmd_decode)
    gen = commands.add_parser(
        "generate",
        help="sample crystals from a model or LoRA adapter",
        description="Generate crystals and write them as they come (.cif, .extxyz, .csv or .jsonl by suffix).",
    )
    gen.add_argument("--model", required=True, help="local folder or Hub id of a model or LoRA adapter")
    gen.add_argument("--revision", help="Hub revision (branch, tag or commit) of --model")
    gen.add_argument("--num", type=int, default=10, help="number of samples (default 10)")
    gen.add_argument("--formula", help="condition: chemical formula, e.g. NaCl (constrains the composition)")
    gen.add_argument("--spacegroup", type=int, help="condition: space-group number 1-230")
    gen.add_argument("--e-above-hull", type=float, help="condition: energy above hull, eV/atom")
    gen.add_argument("--formation-energy", type=float, help="condition: formation energy per atom, eV/atom")
    gen.add_argument("--band-gap", type=float, help="condition: band gap, eV")
    gen.add_argument("--temperature", type=float, help="sampling temperature (0: greedy; default 0.9)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling (default 0.9)")
    gen.add_argument("--max-new-tokens", type=int, help="token budget per sample (default 1024)")
    gen.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    gen.add_argument("--seed", type=int, help="seed for reproducible sampling")
    gen.add_argument("--no-constrain", action="store_true", help="turn constrained decoding off")
    gen.add_argument("--resume", action="store_true", help="continue an interrupted run up to --num")
    gen.add_argument("--out", required=True, help="output file: .cif, .extxyz, .csv or .jsonl")
    gen.set_defaults(func=_cmd_generate)
    add_train_command(commands)
    add_evaluate_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("hf-crystal: interrupted", file=sys.stderr)
        return 130
    except (UsageError, OSError, ValueError) as err:  # CrystalParseError is a ValueError
        print(f"hf-crystal: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
