"""What a benchmark keeps on disk: one file per finished shard, written atomically by the driver.

A run's folder holds ``benchmark.json`` (the settings and the digests of the reference and training sets: a
rerun with other ones is refused), one folder per stage with a file per finished shard (``generate/`` holds
``SampleWriter`` JSON lines, every other stage JSON), ``timings.json`` (seconds spent per stage, summed over
resumed runs) and, at the end, the report. A rerun of the same command skips every shard whose file exists.

Reference fingerprints go to a cache shared by all runs (``fingerprint_cache_dir``), keyed by the content
of the reference structures, the shard size and the matminer version: a second benchmark against the same
reference computes none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

__all__ = [
    "BenchmarkStateError",
    "ShardStore",
    "fingerprint_cache_dir",
    "fingerprint_key",
    "structures_digest",
]


class BenchmarkStateError(ValueError):
    """A benchmark folder that belongs to another run (other settings or other input structures)."""


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


class ShardStore:
    """One file per finished shard of each stage under ``root`` (``root/<stage>/<shard>.<suffix>``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, stage: str, shard: int, suffix: str = "json") -> Path:
        return self.root / stage / f"{shard:05d}.{suffix}"

    def done(self, stage: str, shard: int, suffix: str = "json") -> bool:
        return self.path(stage, shard, suffix).exists()

    def write(self, stage: str, shard: int, value) -> None:
        """Store a shard's JSON-ready result (NaN allowed) atomically."""
        atomic_write(self.path(stage, shard), json.dumps(value))

    def read(self, stage: str, shard: int):
        return json.loads(self.path(stage, shard).read_text())

    def check_settings(self, settings: dict) -> None:
        """Record ``settings`` in ``benchmark.json``, or check that they are the ones recorded there."""
        path = self.root / "benchmark.json"
        if path.exists():
            recorded = json.loads(path.read_text())
            changed = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
            if changed:
                raise BenchmarkStateError(
                    f"{self.root} holds a benchmark run with other settings ({', '.join(changed)}); rerun it "
                    "with the same ones to resume it, or choose another output folder"
                )
            return
        atomic_write(path, json.dumps(settings, indent=1))

    def add_time(self, stage: str, seconds: float, *, replace: bool = False) -> None:
        """Add ``seconds`` to the wall time recorded for ``stage`` (``timings.json``): a resumed stage's time adds
        up; ``replace`` records only this run's (a step every run redoes, such as assembling the report)."""
        path = self.root / "timings.json"
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[stage] = (0.0 if replace else timings.get(stage, 0.0)) + seconds
        atomic_write(path, json.dumps(timings, indent=1))

    def timings(self) -> dict[str, float]:
        path = self.root / "timings.json"
        return json.loads(path.read_text()) if path.exists() else {}


def structures_digest(structures: Sequence[Structure]) -> str:
    """SHA-256 of the species, lattices and fractional coordinates (rounded to 1e-6) of ``structures``, in order."""
    digest = hashlib.sha256()
    for s in structures:
        payload = {
            "species": [str(sp) for sp in s.species],
            "lattice": np.round(s.lattice.matrix, 6).tolist(),
            "frac": np.round(np.mod(s.frac_coords, 1.0), 6).tolist(),
        }
        digest.update(json.dumps(payload, sort_keys=True).encode())
    return digest.hexdigest()


def fingerprint_key(digest: str, shard_size: int) -> str:
    """Cache key of a reference set's fingerprints: its content digest, the shard size, the matminer version
    and the fingerprint presets."""
    from importlib.metadata import version

    text = f"{digest}|{shard_size}|matminer {version('matminer')}|CrystalNN ops + Magpie"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def fingerprint_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where reference fingerprints are cached: ``cache_dir``, or ``fingerprints`` under hf-crystal's cache."""
    if cache_dir is not None:
        return Path(cache_dir)
    from hf_crystal import cache

    return cache.cache_dir("fingerprints")
