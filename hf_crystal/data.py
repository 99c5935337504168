"""Reading structures from files and building crystal-text datasets.

Sources: CDVAE-format CSVs (a `cif` column plus property columns), folders of CIF files, multi-block
CIF files, extended XYZ, JSON lines with a `cif` or crystal `text` field, and `.txt` files of
crystal-text blocks separated by blank lines (as `hf-crystal encode` writes them). Whatever cannot be
read is counted and reported with its reason, never dropped silently.

A built dataset is saved Hub-shaped (`data/{split}-00000-of-00001.parquet` + `README.md` card), so
`datasets.load_dataset(folder)` reads it and the same folder is what `push_to_hub` uploads.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict, Features, Value, load_dataset
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from tqdm.auto import tqdm

from hf_crystal.crystal_format import DEFAULT_FORMAT, check_format
from hf_crystal.hub_access import snapshot
from hf_crystal.text import encode, try_decode

__all__ = [
    "BuildReport",
    "DataFormatError",
    "Record",
    "SampleWriter",
    "append_structures",
    "build_dataset",
    "cif_block",
    "iter_records",
    "load_crystal_dataset",
    "read_structures",
    "read_text_blocks",
    "save_dataset",
    "unify_features",
    "verify_saved_dataset",
]

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
# Tolerance for space-group detection; 0.1 Å is what the Materials Project uses.
SYMPREC = 0.1
# Columns the builder computes; a source column with one of these names is kept as "source_<name>".
COMPUTED_COLUMNS = (
    "material_id",
    "cif",
    "text",
    "formula",
    "full_formula",
    "elements",
    "n_atoms",
    "spacegroup",
    "crystal_format",
)


class DataFormatError(ValueError):
    """A file or folder that is not one of the supported structure sources."""


@dataclass
class Record:
    """One entry of a source: its id, its structure (None if unreadable) and its other columns."""

    material_id: str
    structure: Structure | None
    properties: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cif: str | None = None


def _p1_structure(cif: str) -> Structure | None:
    """The structure of a P1 CIF with full occupancies, every listed site kept; None for any other CIF.

    CIF readers (pymatgen's, ASE's) merge sites that coincide, which loses atoms of generated samples
    (an LLM may put two atoms on one spot); a P1 block lists every atom once, so it is read as written.
    """
    from pymatgen.io.cif import CifFile

    blocks = list(CifFile.from_str(cif).data.values())
    if len(blocks) != 1:
        return None
    data = blocks[0].data
    ops = data.get("_symmetry_equiv_pos_as_xyz") or data.get("_space_group_symop_operation_xyz") or []
    if [op.replace(" ", "").lower() for op in ops] != ["x,y,z"] or "_atom_site_type_symbol" not in data:
        return None
    if any(_number(x) != 1 for x in _column(data, "_atom_site_occupancy")):
        return None
    cell = [_number(data[f"_cell_{k}"]) for k in _CELL_KEYS]
    coords = np.array([[_number(v) for v in _column(data, f"_atom_site_fract_{a}")] for a in "xyz"]).T
    return Structure(Lattice.from_parameters(*cell), _column(data, "_atom_site_type_symbol"), coords)


def _column(data: dict, key: str) -> list[str]:
    value = data.get(key, [])
    return [value] if isinstance(value, str) else list(value)


def _number(text: str) -> float:
    """A CIF number, without its standard uncertainty ("5.64(2)" -> 5.64)."""
    return float(text.split("(")[0])


_CELL_KEYS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


def _parse_cif(material_id: str, cif: str, properties: dict | None = None) -> Record:
    try:
        with warnings.catch_warnings():  # pymatgen warns about every rounded coordinate
            warnings.simplefilter("ignore", UserWarning)
            structure = _p1_structure(cif) or Structure.from_str(cif, fmt="cif")
    except Exception as err:  # pymatgen raises many types for malformed CIFs
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Record(material_id, None, properties or {}, error=f"CIF: {reason}", cif=cif)
    return Record(material_id, structure, properties or {}, cif=cif)


def _split_cif_blocks(text: str) -> list[str]:
    starts = [m.start() for m in re.finditer(r"^data_", text, flags=re.MULTILINE)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)] or [text]


def cif_block(structure: Structure, name: str | None = None) -> str:
    """The structure as a CIF data block (pymatgen's CifWriter), named `data_<name>` when a name is given."""
    block = str(CifWriter(structure))
    if name:
        block = re.sub(r"^data_\S*", "data_" + re.sub(r"\s+", "_", name), block, count=1, flags=re.M)
    return block


def read_text_blocks(text: str) -> list[tuple[str | None, str]]:
    """(id, crystal text) blocks of a text in which crystals are separated by blank lines.

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


def _records_from_text(path: Path) -> Iterator[Record]:
    for i, (name, body) in enumerate(read_text_blocks(path.read_text())):
        structure, error = try_decode(body)
        yield Record(name or f"{path.stem}-{i}", structure, error=error and f"text: {error}")


def _records_from_csv(path: Path) -> Iterator[Record]:
    frame = pd.read_csv(path)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:")])
    if "cif" not in frame.columns:
        raise DataFormatError(f"{path}: a CDVAE-format CSV needs a 'cif' column; found {list(frame.columns)}")
    for i, row in enumerate(frame.to_dict(orient="records")):
        cif = row.pop("cif")
        material_id = str(row.pop("material_id", f"{path.stem}-{i}"))
        properties = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        if not isinstance(cif, str):
            yield Record(material_id, None, properties, error="empty 'cif' cell")
        else:
            yield _parse_cif(material_id, cif, properties)


def _records_from_jsonl(path: Path) -> Iterator[Record]:
    with path.open() as handle:
        for i, line in enumerate(handle):
            if not line.strip():
                continue
            material_id = f"{path.stem}-{i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield Record(material_id, None, error=f"line {i + 1} is not JSON: {err}")
                continue
            material_id = str(row.pop("material_id", row.pop("id", material_id)))
            cif, text = row.pop("cif", None), row.pop("text", None)
            if cif:
                yield _parse_cif(material_id, cif, row)
            elif text:
                structure, error = try_decode(text)
                yield Record(material_id, structure, row, error=error and f"text: {error}")
            else:
                yield Record(material_id, None, row, error="neither 'cif' nor 'text' holds a structure")


def _records_from_xyz(path: Path) -> Iterator[Record]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    for i, atoms in enumerate(read(path, index=":")):
        material_id = str(atoms.info.pop("material_id", f"{path.stem}-{i}"))
        if not atoms.pbc.all():
            yield Record(material_id, None, dict(atoms.info), error="frame is not periodic in 3 directions")
            continue
        yield Record(material_id, AseAtomsAdaptor.get_structure(atoms), dict(atoms.info))


def iter_records(path: str | Path) -> Iterator[Record]:
    """Records of a structure source, readable or not, in file order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif")
        if not files:
            raise DataFormatError(f"{path} holds no .cif files")
        for file in files:
            blocks = _split_cif_blocks(file.read_text())
            for j, block in enumerate(blocks):
                yield _parse_cif(file.stem if len(blocks) == 1 else f"{file.stem}-{j}", block)
        return
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _records_from_csv(path)
    elif suffix == ".cif":
        for j, block in enumerate(_split_cif_blocks(path.read_text())):
            match = re.match(r"data_(\S+)", block)
            yield _parse_cif(match.group(1) if match else f"{path.stem}-{j}", block)
    elif suffix == ".jsonl":
        yield from _records_from_jsonl(path)
    elif suffix in (".extxyz", ".xyz"):
        yield from _records_from_xyz(path)
    elif suffix == ".txt":
        yield from _records_from_text(path)
    else:
        raise DataFormatError(
            f"cannot read structures from {path}: use a CIF folder, .cif, .csv (with a 'cif' column), "
            ".jsonl (with 'cif' or 'text'), .extxyz or .txt (crystal-text blocks)"
        )


def read_structures(path: str | Path) -> tuple[list[str], list[Structure], list[tuple[str, str]]]:
    """(ids, structures, skipped) of a source; `skipped` lists (id, reason) of unreadable entries."""
    ids, structures, skipped = [], [], []
    for record in iter_records(path):
        if record.structure is None:
            skipped.append((record.material_id, record.error))
        else:
            ids.append(record.material_id)
            structures.append(record.structure)
    return ids, structures, skipped


@dataclass
class BuildReport:
    """What a dataset build read, kept and skipped (skip reasons counted), per split.

    `null_counts[split][column]` is the number of empty (null) cells of every column of every split;
    `absent_columns[split]` lists the columns that split's source does not have at all (all null there,
    because every split shares one schema: the union of the sources' columns).
    """

    sources: dict[str, str]
    crystal_format: str = DEFAULT_FORMAT
    rows: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[tuple[str, str]] = field(default_factory=list)
    renamed_columns: dict[str, str] = field(default_factory=dict)
    no_spacegroup: int = 0
    null_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    absent_columns: dict[str, list[str]] = field(default_factory=dict)

    def null_columns(self) -> dict[str, dict[str, int]]:
        """{column: {split: nulls}} for the columns with at least one null cell in some split."""
        columns = dict.fromkeys(c for counts in self.null_counts.values() for c, n in counts.items() if n)
        return {c: {split: counts.get(c, 0) for split, counts in self.null_counts.items()} for c in columns}

    def summary(self) -> str:
        lines = [f"rows: {', '.join(f'{k}={v}' for k, v in self.rows.items())} (text: {self.crystal_format})"]
        lines.append(f"skipped: {sum(self.skipped.values())}")
        lines += [f"  {n} x {reason}" for reason, n in self.skipped.most_common()]
        if self.no_spacegroup:
            lines.append(f"space group undetermined (left empty): {self.no_spacegroup}")
        if self.renamed_columns:
            lines.append(f"source columns renamed: {self.renamed_columns}")
        null_columns = self.null_columns()
        if null_columns:
            lines.append("null cells per column (per split):")
            for column, counts in null_columns.items():
                shown = ", ".join(
                    f"{split}={n}"
                    + (" (not in source)" if column in self.absent_columns.get(split, ()) else "")
                    for split, n in counts.items()
                )
                lines.append(f"  {column}: {shown}")
        return "\n".join(lines)


def _row(record: Record, report: BuildReport) -> dict[str, Any] | None:
    """The dataset row of a record, or None (counted in `report`) if it cannot be used."""
    if record.structure is None:
        reason = record.error or "unreadable"
    else:
        try:
            text = encode(record.structure, format=report.crystal_format)
            reason = None
        except ValueError as err:
            reason = f"{type(err).__name__}: {str(err).split(';')[0]}"
    if reason is not None:
        report.skipped[reason[:120]] += 1
        report.skipped_examples.append((record.material_id, reason))
        return None
    structure = record.structure
    try:
        spacegroup = SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number()
    except Exception:  # spglib gives up on some distorted cells; the row is still useful
        spacegroup = None
        report.no_spacegroup += 1
    composition = structure.composition
    row = {
        "material_id": record.material_id,
        "cif": record.cif if record.cif is not None else structure.to(fmt="cif"),
        "text": text,
        "formula": composition.reduced_formula,
        "full_formula": composition.formula.replace(" ", ""),
        "elements": sorted(el.symbol for el in composition.elements),
        "n_atoms": len(structure),
        "spacegroup": spacegroup,
        "crystal_format": report.crystal_format,
    }
    for key, value in record.properties.items():
        name = f"source_{key}" if key in COMPUTED_COLUMNS else key
        if name != key:
            report.renamed_columns[key] = name
        row[name] = value
    return row


def _rows(path: Path, report: BuildReport, desc: str) -> list[dict[str, Any]]:
    rows = [_row(record, report) for record in tqdm(iter_records(path), desc=desc, unit=" structures")]
    return [row for row in rows if row is not None]


def build_dataset(
    sources: str | Path | Mapping[str, str | Path],
    *,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 42,
    format: str = DEFAULT_FORMAT,
) -> tuple[DatasetDict, BuildReport]:
    """A train/validation/test `DatasetDict` of crystal text from one source (seeded split) or one per split.

    Columns: material_id, cif, text (canonical: no augmentation; in `format`, "xyz" or "wyckoff"), formula
    (reduced), full_formula, elements, n_atoms, spacegroup (spglib, symprec 0.1), crystal_format (`format`,
    so the rows say how to read `text`) and every property column of the sources. All
    splits share one schema (`unify_features`): a property one source lacks is a null column in that
    split (counted in `BuildReport.null_counts` / `absent_columns`), never zeros.
    """
    if isinstance(sources, Mapping):
        unknown = set(sources) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use {SPLITS}")
        report = BuildReport({k: str(v) for k, v in sources.items()}, check_format(format))
        splits = {name: _rows(Path(src), report, name) for name, src in sources.items()}
    else:
        if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-9 or min(split_fractions) < 0:
            raise ValueError(
                f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions}"
            )
        report = BuildReport({"all": str(sources)}, check_format(format))
        rows = _rows(Path(sources), report, "reading")
        order = np.random.default_rng(seed).permutation(len(rows))
        bounds = np.round(np.cumsum(split_fractions) * len(rows)).astype(int)
        splits = {
            name: [rows[i] for i in order[start:stop]]
            for name, start, stop in zip(SPLITS, [0, *bounds[:2]], bounds, strict=True)
        }
    splits = {name: rows for name, rows in splits.items() if rows}
    columns = _columns(splits.values())
    dataset = unify_features(
        DatasetDict(
            {
                name: Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})
                for name, rows in splits.items()
            }
        )
    )
    report.rows = {name: len(ds) for name, ds in dataset.items()}
    report.null_counts = {
        name: {c: split.data.column(c).null_count for c in split.column_names}
        for name, split in dataset.items()
    }
    report.absent_columns = {
        name: [c for c in columns if not any(c in r for r in rows)] for name, rows in splits.items()
    }
    return dataset, report


def _columns(splits) -> list[str]:
    """The union of the rows' keys: the computed columns first, then the properties in first-seen order."""
    seen = dict.fromkeys(COMPUTED_COLUMNS)
    for rows in splits:
        for row in rows:
            seen.update(dict.fromkeys(row))
    return list(seen)


_NUMERIC = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_FLOATS = ("float16", "float32", "float64")


def _unify(column: str, types: dict[str, Any]) -> Any:
    """One feature type for a column typed differently by different splits (nulls take the other type)."""
    known = {split: t for split, t in types.items() if not (isinstance(t, Value) and t.dtype == "null")}
    if not known:
        return Value("null")
    distinct = []
    for t in known.values():
        if t not in distinct:
            distinct.append(t)
    if len(distinct) == 1:
        return distinct[0]
    if all(isinstance(t, Value) for t in distinct):
        dtypes = {t.dtype for t in distinct}
        if dtypes <= {*_NUMERIC, *_FLOATS}:
            return Value("float64") if dtypes & set(_FLOATS) else Value("int64")
        return Value("string")
    raise DataFormatError(
        f"column {column!r} has incompatible types in different splits: "
        + ", ".join(f"{split}: {t}" for split, t in known.items())
    )


def unify_features(dataset: DatasetDict) -> DatasetDict:
    """`dataset` with one schema for all splits: the union of their columns in one order, missing columns
    added as nulls (never zeros), and each column cast to one type (a null-only column takes the type it
    has elsewhere; integers and floats meet as float64; other mixed scalars as strings)."""
    if not dataset:
        return dataset
    columns = list(dict.fromkeys(c for split in dataset.values() for c in split.column_names))
    features = Features(
        {
            c: _unify(c, {name: split.features[c] for name, split in dataset.items() if c in split.features})
            for c in columns
        }
    )
    out = {}
    for name, split in dataset.items():
        for c in columns:
            if c not in split.column_names:
                split = split.add_column(c, [None] * len(split))
        split = split.select_columns(columns)
        out[name] = split if split.features == features else split.cast(features)
    return DatasetDict(out)


def save_dataset(dataset: DatasetDict, out_dir: str | Path, card: str | None = None) -> Path:
    """Write `dataset` Hub-shaped: one parquet file per split under data/, and the card as README.md.

    All splits are written with one schema (`unify_features`), so `datasets.load_dataset(out_dir)` can read
    them together.
    """
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, split in unify_features(dataset).items():
        split.to_parquet(out / "data" / f"{name}-00000-of-00001.parquet")
    if card is not None:
        (out / "README.md").write_text(card)
    return out


def verify_saved_dataset(out_dir: str | Path, dataset: DatasetDict) -> DatasetDict:
    """Load `out_dir` back with `load_crystal_dataset` and check it holds `dataset`'s splits, row counts and
    columns; raises `DataFormatError` (saying what differs) if it does not load or differs."""
    try:
        loaded = load_crystal_dataset(out_dir)
    except Exception as err:  # datasets raises many types (CastError, DatasetGenerationError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataFormatError(
            f"{out_dir} was written but load_crystal_dataset cannot read it back: {type(err).__name__}: {reason}"
        ) from err
    expected = {name: (len(split), split.column_names) for name, split in dataset.items()}
    found = {name: (len(split), split.column_names) for name, split in loaded.items()}
    if expected != found:
        raise DataFormatError(
            f"{out_dir} loads back differently from what was built: expected (rows, columns) {expected}, "
            f"loaded {found}"
        )
    return loaded


def load_crystal_dataset(path_or_repo_id: str | Path, split: str | None = None, revision: str | None = None):
    """A crystal dataset from a local folder (as `save_dataset` writes it) or a Hub dataset id.

    A Hub dataset goes through the local Hub cache (`hf-crystal pull --repo-type dataset` fills it), so
    it loads offline once downloaded.
    """
    folder = Path(path_or_repo_id)
    if not folder.is_dir():
        folder = snapshot(str(path_or_repo_id), repo_type="dataset", revision=revision)
    return load_dataset(str(folder), split=split)


SAMPLE_FORMATS = (".cif", ".extxyz", ".csv", ".jsonl")
_SAMPLE_ID = re.compile(r"sample-(\d+)")
_CSV_COLUMNS = (
    "material_id",
    "text",
    "valid",
    "error",
    "conditions",
    "attempts",
    "formula",
    "spacegroup",
    "wyckoff",
    "cif",
)


#: Files that hold structures only (no text, no errors): what `append_structures` writes.
STRUCTURE_FORMATS = (".cif", ".extxyz")


def append_structures(
    path: str | Path, named: Sequence[tuple[str, Structure]], valid: Sequence[bool] | None = None
) -> int:
    """Append (name, structure) pairs to a multi-block .cif or an .extxyz file; returns how many.

    Names become the CIF block names (`data_<name>`) or the extxyz `material_id`; `valid` flags go to extxyz.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STRUCTURE_FORMATS:
        raise DataFormatError(f"cannot write structures to {path}: use one of {', '.join(STRUCTURE_FORMATS)}")
    if suffix == ".cif":
        with path.open("a") as handle:
            handle.writelines(cif_block(structure, name) + "\n" for name, structure in named)
        return len(named)
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for i, (name, structure) in enumerate(named):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info["material_id"] = name
        if valid is not None:
            atoms.info["valid"] = bool(valid[i])
        frames.append(atoms)
    if frames:
        write(path, frames, format="extxyz", append=True)
    return len(frames)


class SampleWriter:
    """Appends generated samples to a .cif (multi-block), .extxyz, .csv or .jsonl file, one flush per batch.

    Samples are dicts as `pipeline("crystal-generation")` returns them. CSV and JSON lines keep every
    sample (text, error, validity); CIF and extxyz can only hold the ones that parsed. Each sample is
    named `sample-NNNNNN`, so `next_index` lets an interrupted run resume after the last one written.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in SAMPLE_FORMATS:
            raise DataFormatError(
                f"cannot write samples to {self.path}: use one of {', '.join(SAMPLE_FORMATS)}"
            )

    def next_index(self) -> int:
        """One past the highest sample index already in the file (0 for a new file)."""
        if not self.path.exists():
            return 0
        indices = [int(m) for m in _SAMPLE_ID.findall(self.path.read_text())]
        return max(indices) + 1 if indices else 0

    def write(self, samples: list[dict[str, Any]], start: int) -> int:
        """Append `samples` numbered from `start`; returns how many entries the file gained."""
        rows = [(f"sample-{start + i:06d}", sample) for i, sample in enumerate(samples)]
        if self.suffix in STRUCTURE_FORMATS:
            parsed = [(name, s) for name, s in rows if s.get("structure") is not None]
            return append_structures(
                self.path,
                [(name, s["structure"]) for name, s in parsed],
                valid=[s["valid"] for _, s in parsed],
            )
        records = [self._record(name, sample) for name, sample in rows]
        if self.suffix == ".jsonl":
            with self.path.open("a") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)
        else:
            new = not self.path.exists()
            pd.DataFrame(records, columns=_CSV_COLUMNS).to_csv(self.path, mode="a", header=new, index=False)
        return len(records)

    @staticmethod
    def _record(name: str, sample: dict[str, Any]) -> dict[str, Any]:
        structure = sample.get("structure")
        return {
            "material_id": name,
            "text": sample["text"],
            "valid": bool(sample["valid"]),
            "error": sample.get("error"),
            "conditions": json.dumps(sample.get("conditions") or {}),
            "attempts": sample.get("attempts", 1),
            "formula": structure.composition.formula.replace(" ", "") if structure is not None else None,
            # Wyckoff text: the space group written and the Wyckoff label of each orbit (None for xyz text).
            "spacegroup": sample.get("spacegroup"),
            "wyckoff": " ".join(sample["wyckoff"]) if sample.get("wyckoff") else None,
            "cif": cif_block(structure, name) if structure is not None else None,
        }
