"""Task prompts (Gruver et al. 2024): conditional generation and element infill.

Every task is a {"prompt", "completion"} pair, the form TRL's SFTTrainer trains on with a
completion-only loss. Prompts end with a newline because TRL joins prompt and completion with no
separator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

from hf_crystal.crystal_format import DEFAULT_FORMAT, check_format
from hf_crystal.text import as_rng, encode

__all__ = [
    "CONDITIONS",
    "FORMULA_UNITS",
    "MASK",
    "MP20_FORMULA_UNITS",
    "FormulaUnitsError",
    "GENERATION_INSTRUCTIONS",
    "TaskMix",
    "cell_formulas",
    "condition_cells",
    "check_formula_units",
    "format_formula",
    "generation_example",
    "generation_prompt",
    "infill_example",
    "infill_prompt",
    "mask_element",
    "parse_conditions",
]

MASK = "[MASK]"

GENERATION_HEADER = "Below is a description of a bulk material."
GENERATION_INSTRUCTION = (
    "Generate a description of the lengths and angles of the lattice vectors and then the element type "
    "and coordinates for each atom within the lattice:"
)
# The Wyckoff text's instruction; words outside the crystal tokenizer's vocabulary ("free", "Wyckoff", ...) are
# read character by character (the vocabulary is kept as it is: its size seeds every model built from it).
WYCKOFF_INSTRUCTION = (
    "Generate a description of the spacegroup number and the free lattice lengths and angles and then the "
    "element type, Wyckoff position and free coordinates for each orbit within the lattice:"
)
#: The generation instruction of each crystal text format.
GENERATION_INSTRUCTIONS = {"xyz": GENERATION_INSTRUCTION, "wyckoff": WYCKOFF_INSTRUCTION}
INFILL_HEADER = f'Below is a partial description of a bulk material where one element has been replaced with the string "{MASK}":'
INFILL_INSTRUCTION = f"Generate an element that could replace {MASK} in the bulk material:"

#: Conditions in the fixed order in which they appear in a prompt, with their sentence openings
#: (the wording of Gruver et al.'s prompt_lookup).
CONDITIONS: dict[str, str] = {
    "formula": "The chemical formula is",
    "spacegroup": "The spacegroup number is",
    "e_above_hull": "The energy above the convex hull is",
    "formation_energy_per_atom": "The formation energy per atom is",
    "band_gap": "The band gap is",
}
# Gruver et al. round float conditions to 4 places.
FLOAT_DECIMALS = 4
# Gruver et al.: 2/3 generation, 1/3 infill.
DEFAULT_INFILL_FRACTION = 1 / 3

#: What a formula condition means (`cell_formulas`): "any" number of formula units Z (the default), the
#: whole-cell counts as given ("cell"), or an int Z.
FORMULA_UNITS = ("any", "cell")
#: Formula units per cell (Z: count) of MP-20's training structures by atoms per formula unit, counted on the
#: 11,249 structures of train_subset.csv; the prior of `formula_units="any"`. Formulas of more atoms per unit
#: take the prior of all structures, `MP20_FORMULA_UNITS[0]`.
MP20_FORMULA_UNITS: dict[int, dict[int, int]] = {
    0: {1: 6188, 2: 3692, 3: 252, 4: 1016, 5: 9, 6: 53, 7: 2, 8: 31, 9: 1, 10: 3, 20: 2},
    1: {1: 30, 2: 18, 3: 11, 4: 17, 6: 3, 8: 3, 10: 1, 20: 2},
    2: {1: 250, 2: 113, 3: 21, 4: 65, 5: 2, 6: 18, 7: 2, 8: 28, 9: 1, 10: 2},
    3: {1: 230, 2: 564, 3: 139, 4: 407, 5: 4, 6: 32},
    4: {1: 1811, 2: 545, 3: 30, 4: 196, 5: 3},
    5: {1: 531, 2: 388, 3: 17, 4: 331},
    6: {1: 394, 2: 360, 3: 34},
    7: {1: 241, 2: 514},
    8: {1: 263, 2: 345},
    9: {1: 229, 2: 422},
    10: {1: 663, 2: 423},
}

_SENTENCE = re.compile(
    "(" + "|".join(re.escape(v) for v in CONDITIONS.values()) + r") (\S+?)\.(?=\s|$)",
)
_KEY_OF_OPENING = {v: k for k, v in CONDITIONS.items()}


def format_formula(formula: str | Composition) -> str:
    """The prompt form of a formula: every element with its count, no spaces ("NaCl" -> "Na1Cl1")."""
    try:
        composition = Composition(formula)
    except (ValueError, KeyError) as err:
        raise ValueError(f"cannot read formula {formula!r}: {err}") from None
    if not composition.valid or not composition:
        raise ValueError(f"formula {formula!r} has symbols that are not elements")
    if any(not float(n).is_integer() for n in composition.values()):
        raise ValueError(f"formula {formula!r} has fractional amounts; give whole atom counts")
    return composition.formula.replace(" ", "")


class FormulaUnitsError(ValueError):
    """A `formula_units` that is not "any", "cell" or a positive int, or that no cell of `max_sites` can hold."""


def check_formula_units(value: Any) -> str | int:
    """`value` if it is a valid `formula_units` ("any", "cell" or an int Z >= 1), else FormulaUnitsError."""
    if value in FORMULA_UNITS or (
        isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1
    ):
        return value
    raise FormulaUnitsError(f'formula_units must be "any", "cell" or a positive integer Z, got {value!r}')


def cell_formulas(
    formula: str | Composition, formula_units: str | int, max_sites: int
) -> tuple[list[str], np.ndarray]:
    """The whole-cell formulas (prompt form) a formula condition allows, with their prior probabilities.

    "cell": the formula's counts as given; an int Z: Z times the reduced formula; "any": every Z with
    Z * (atoms per formula unit) <= `max_sites`, weighted by `MP20_FORMULA_UNITS` (a Z it never saw is left
    out). FormulaUnitsError when no cell of at most `max_sites` atoms fits.
    """
    format_formula(formula)  # validates it
    check_formula_units(formula_units)
    composition = Composition(formula)
    if formula_units == "cell":
        return [format_formula(composition)], np.ones(1)
    reduced = composition.reduced_composition
    per_unit = int(reduced.num_atoms)
    smallest = 1 if formula_units == "any" else int(formula_units)
    if smallest * per_unit > max_sites:
        raise FormulaUnitsError(
            f"{smallest} formula unit(s) of {format_formula(reduced)} hold {smallest * per_unit} atoms, more "
            f"than max_sites={max_sites}"
        )
    if formula_units != "any":
        return [format_formula(reduced * smallest)], np.ones(1)
    counts = MP20_FORMULA_UNITS.get(per_unit, MP20_FORMULA_UNITS[0])
    units = [z for z in sorted(counts) if z * per_unit <= max_sites]  # Z = 1 is in every row
    weights = np.array([counts[z] for z in units], dtype=float)
    return [format_formula(reduced * z) for z in units], weights / weights.sum()


def condition_cells(
    conditions: Mapping[str, Any], formula_units: str | int, max_sites: int
) -> tuple[list[dict], np.ndarray, str | int]:
    """The condition sets a request allows, their prior probabilities and the `formula_units` that applied.

    A `formula_units` key in `conditions` wins over the argument. Without a formula: `conditions` itself; with
    one: a set per whole cell of `cell_formulas`. ValueError (FormulaUnitsError included) for bad conditions.
    """
    conditions = dict(conditions)
    formula_units = check_formula_units(conditions.pop("formula_units", formula_units))
    generation_prompt(conditions)  # unknown keys and bad values
    if conditions.get("formula") is None:
        return [conditions], np.ones(1), formula_units
    formulas, weights = cell_formulas(conditions["formula"], formula_units, max_sites)
    return [{**conditions, "formula": formula} for formula in formulas], weights, formula_units


def _format_value(key: str, value: Any) -> str:
    if key == "formula":
        return format_formula(value)
    if key == "spacegroup":
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if (isinstance(value, float) and not value.is_integer()) or not 1 <= number <= 230:
            raise ValueError(f"spacegroup must be an integer space-group number 1-230, got {value!r}")
        return str(number)
    return str(round(float(value), FLOAT_DECIMALS))


def generation_prompt(conditions: Mapping[str, Any] | None = None, format: str = DEFAULT_FORMAT) -> str:
    """The generation prompt, with condition sentences in the order of `CONDITIONS`.

    Keys other than those of `CONDITIONS` raise ValueError; None values are left out. `format` ("xyz" or
    "wyckoff") chooses the instruction line, which describes the crystal text that follows.
    """
    conditions = {k: v for k, v in (conditions or {}).items() if v is not None}
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; known: {list(CONDITIONS)}")
    sentences = [f"{CONDITIONS[k]} {_format_value(k, conditions[k])}." for k in CONDITIONS if k in conditions]
    instruction = GENERATION_INSTRUCTIONS[check_format(format)]
    return " ".join([GENERATION_HEADER, *sentences]) + "\n" + instruction + "\n"


def parse_conditions(prompt: str) -> dict[str, Any]:
    """Read the conditions back from a generation prompt (the inverse of `generation_prompt`)."""
    header = prompt.split("\n", 1)[0]
    if not header.startswith(GENERATION_HEADER):
        raise ValueError(f"not a generation prompt: it must start with {GENERATION_HEADER!r}")
    conditions: dict[str, Any] = {}
    for opening, value in _SENTENCE.findall(header):
        key = _KEY_OF_OPENING[opening]
        conditions[key] = value if key == "formula" else int(value) if key == "spacegroup" else float(value)
    return conditions


def generation_example(
    structure: Structure,
    conditions: Mapping[str, Any] | None = None,
    *,
    translate: str | None = "random",
    seed: int | np.random.Generator | None = None,
    format: str = DEFAULT_FORMAT,
) -> dict[str, str]:
    """A generation task: prompt with `conditions`, completion the (augmented) crystal text in `format`."""
    return {
        "prompt": generation_prompt(conditions, format),
        "completion": encode(structure, format=format, translate=translate, seed=seed),
    }


def mask_element(text: str, element: str, format: str = DEFAULT_FORMAT) -> str:
    """Replace `element` in crystal text by [MASK]: its element lines ("xyz"), or the element field of its
    orbit lines ("wyckoff"). Whole fields only: N never hits Na."""
    lines = text.split("\n")
    if check_format(format) == "wyckoff":
        orbits = [line.split(" ", 1) for line in lines[2:]]
        if element not in [fields[0] for fields in orbits]:
            raise ValueError(f"element {element!r} is not in the structure")
        masked = [
            " ".join([MASK, *fields[1:]]) if fields[0] == element else " ".join(fields) for fields in orbits
        ]
        return "\n".join(lines[:2] + masked)
    if element not in lines[2::2]:
        raise ValueError(f"element {element!r} is not in the structure")
    return "\n".join(
        MASK if i >= 2 and i % 2 == 0 and line == element else line for i, line in enumerate(lines)
    )


def infill_prompt(masked_text: str) -> str:
    """The infill prompt around crystal text that already holds [MASK] lines."""
    return f"{INFILL_HEADER}\n{masked_text}\n{INFILL_INSTRUCTION}\n"


def infill_example(
    structure: Structure,
    element: str | None = None,
    *,
    translate: str | None = "random",
    seed: int | np.random.Generator | None = None,
    format: str = DEFAULT_FORMAT,
) -> dict[str, str]:
    """An infill task: all sites of `element` (random if None) masked; the completion is the element."""
    rng = as_rng(seed)
    if element is None:
        symbols = sorted({site.specie.symbol for site in structure})
        element = symbols[rng.integers(len(symbols))]
    text = encode(structure, format=format, translate=translate, seed=rng)
    return {"prompt": infill_prompt(mask_element(text, element, format)), "completion": element}


class TaskMix:
    """Draws training tasks: generation with a random subset of the available conditions, or infill.

    Gruver et al. drew 0-4 of (formation energy, band gap, E_hull, space group) and added the formula
    whenever any was drawn; here the number of conditions k is uniform in 0..n over all n available
    conditions (formula included) and a random k-subset is used, so formula-only prompts occur too.
    A fresh random translation is applied at every draw.

    Args:
        infill_fraction: probability of an infill task.
        conditions: condition keys the generation prompts may use (default: all of `CONDITIONS`).
        translate: augmentation passed to `encode` ("random" or None).
        format: the crystal text format of prompts and completions ("xyz" or "wyckoff").
    """

    def __init__(
        self,
        infill_fraction: float = DEFAULT_INFILL_FRACTION,
        conditions: tuple[str, ...] = tuple(CONDITIONS),
        translate: str | None = "random",
        format: str = DEFAULT_FORMAT,
    ):
        if not 0 <= infill_fraction <= 1:
            raise ValueError(f"infill_fraction must be in [0, 1], got {infill_fraction}")
        unknown = set(conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown conditions {sorted(unknown)}; known: {list(CONDITIONS)}")
        self.infill_fraction = infill_fraction
        self.conditions = tuple(conditions)
        self.translate = translate
        self.format = check_format(format)

    def __call__(
        self,
        structure: Structure,
        properties: Mapping[str, Any] | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> dict[str, str]:
        """One task for `structure`; `properties` holds condition values (formula comes from the structure)."""
        rng = as_rng(seed)
        if rng.random() < self.infill_fraction:
            return infill_example(structure, translate=self.translate, seed=rng, format=self.format)
        values = {"formula": structure.composition, **(properties or {})}
        available = [k for k in self.conditions if _present(values.get(k))]
        k = int(rng.integers(len(available) + 1))
        chosen = {key: values[key] for key in rng.permutation(available)[:k]}
        return generation_example(structure, chosen, translate=self.translate, seed=rng, format=self.format)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))
