"""Structure files in and out: CDVAE-format CSVs (a `cif` column plus property columns), folders of CIF files,
multi-block CIF files, extended XYZ, JSON lines with a `cif` or crystal `text` field, and `.txt` files of
crystal-text blocks separated by blank lines (as `hf-crystal encode` writes them); generated samples written as
they come (`SampleWriter`). Whatever cannot be read is counted and reported with its reason, never dropped
silently.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from hf_crystal.text import try_decode

__all__ = [
    "SAMPLE_FORMATS",
    "STRUCTURE_FORMATS",
    "DataFormatError",
    "Record",
    "SampleWriter",
    "append_structures",
    "cif_block",
    "iter_records",
    "read_structures",
    "read_text_blocks",
]


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
    """The `data_` blocks of a CIF file: none for an empty file, the whole text when it has no `data_` line (so
    that it is reported as unreadable, not dropped)."""
    starts = [m.start() for m in re.finditer(r"^data_", text, flags=re.MULTILINE)]
    if not starts:
        return [text] if text.strip() else []
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


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
