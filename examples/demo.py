"""Demo of what hf-crystal does so far: a few crystals -> dataset -> text -> prompts -> back to structures."""

from pathlib import Path

from pymatgen.core import Lattice, Structure

from hf_crystal.data import build_dataset, save_dataset
from hf_crystal.hub import render_dataset_card
from hf_crystal.prompts import generation_prompt, infill_example
from hf_crystal.text import decode

OUT = Path("outputs/demo")


def crystals() -> dict[str, Structure]:
    return {
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]),
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]),
        "SrTiO3": Structure.from_spacegroup(
            "Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
        ),
        "ZnO": Structure.from_spacegroup(
            "P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]]
        ),
    }


def main() -> None:
    cif_dir = OUT / "cifs"
    cif_dir.mkdir(parents=True, exist_ok=True)
    for name, structure in crystals().items():
        structure.to(filename=str(cif_dir / f"{name}.cif"))
    dataset, report = build_dataset({"train": cif_dir})
    folder = save_dataset(dataset, OUT / "dataset", card=str(render_dataset_card(dataset, report)))
    print(f"dataset saved to {folder}: {report.summary()}\n")
    for row in dataset["train"]:
        back = decode(row["text"])
        print(f"## {row['material_id']}  (space group {row['spacegroup']}, {row['n_atoms']} atoms)")
        print(row["text"])
        print(f"-> decoded back: {back.composition.reduced_formula}, volume {back.volume:.1f} Å^3\n")
    print("## A conditional generation prompt")
    print(generation_prompt({"formula": "SrTiO3", "spacegroup": 221, "band_gap": 3.2}))
    print("## An infill task (all O sites masked)")
    example = infill_example(crystals()["SrTiO3"], "O", seed=0)
    print(example["prompt"] + example["completion"])


if __name__ == "__main__":
    main()
