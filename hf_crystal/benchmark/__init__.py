"""The published evaluation protocol as one run, on Ray: ``run_benchmark`` (the ``hf-crystal benchmark`` command).

Generation on an actor pool (one model per actor), validity and fingerprints as tasks over shards,
relaxations on actors running ``BatchedRelaxer``; every shard written to the run's folder as it finishes, so a
rerun resumes; the numbers are those of ``hf-crystal evaluate`` on the same samples, with the published
protocol's sample counts (``runner``), printed beside the published figures (``published``).

Modules: ``runner`` (settings, stages, assembly), ``workers`` (what runs on Ray's workers), ``store`` (shard
files, the reference fingerprint cache) and ``published`` (published figures and the table). Importing this
package loads neither Ray nor torch.
"""

import importlib

_LAZY = {
    "BenchmarkResult": "hf_crystal.benchmark.runner",
    "BenchmarkSettings": "hf_crystal.benchmark.runner",
    "run_benchmark": "hf_crystal.benchmark.runner",
    "benchmark_table": "hf_crystal.benchmark.published",
    "published_figures": "hf_crystal.benchmark.published",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_crystal.benchmark' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
