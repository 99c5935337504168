"""Crystal datasets for the training tests, built in the test itself (tiny models: `hf_crystal.testing`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from factories import structures

from hf_crystal.data import build_dataset, save_dataset


def crystal_dataset(out: Path, format: str = "xyz") -> Path:
    """A dataset folder (as `hf-crystal dataset build` writes it) of the small factory structures with properties,
    its text in `format`."""
    rng = np.random.default_rng(0)
    small = {name: s for name, s in structures().items() if len(s) <= 16}
    frame = pd.DataFrame(
        {
            "material_id": [f"test-{i}" for i in range(len(small))],
            "cif": [s.to(fmt="cif") for s in small.values()],
            "band_gap": rng.uniform(0, 5, len(small)).round(3),
            "formation_energy_per_atom": rng.uniform(-3, 0, len(small)).round(3),
            "e_above_hull": rng.uniform(0, 0.2, len(small)).round(3),
        }
    )
    csv = out.parent / f"{out.name}.csv"
    frame.to_csv(csv)
    dataset, _ = build_dataset(csv, split_fractions=(1.0, 0.0, 0.0), format=format)
    return save_dataset(dataset, out)
