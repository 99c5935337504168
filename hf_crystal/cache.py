"""The project's cache folder: relaxations, refiner training pairs, reference fingerprints."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$HF_CRYSTAL_CACHE/parts...`, by default `~/.cache/hf_crystal/parts...` (`$XDG_CACHE_HOME` honoured).

    Args:
        parts (`str`): Sub-folders, e.g. `cache_dir("relax")`.
    """
    root = (
        os.environ.get("HF_CRYSTAL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_crystal"
    )
    return Path(root, *parts)
