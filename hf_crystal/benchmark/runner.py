"""The benchmark's stages on Ray, and the assembly of their shards into ``evaluate``'s metrics.

Stages, in order, each resumable shard by shard (``store.ShardStore``):

1. ``generate``: an actor pool (``workers.Generator``, one model per actor) draws ``num`` unconditional samples
   in shards of ``shard_size``, shard k seeded from (seed, k);
2. ``features``: tasks over shards of the readable samples: validity flags and fingerprints;
   ``reference``: the reference's fingerprints, tasks over its shards, cached by content (``store``);
3. ``unique`` (tasks over groups of same-formula samples) and ``novel`` (tasks over sample shards, each with
   the training structures of its formulas);
4. ``relax``: actors running ``BatchedRelaxer`` on the structurally valid samples among the first ``relax``.

The driver then hands the per-sample results to the stage functions of ``hf_crystal.evaluation.metrics``, so
the numbers are those ``compute_metrics`` (``hf-crystal evaluate``) gives on the same samples, with the
published protocol's sample counts on top: Wasserstein distances on at most ``wdist_samples`` valid samples
(drawn with the seed), stability on the first ``relax`` samples.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from hf_crystal.benchmark import workers as remote
from hf_crystal.benchmark.published import benchmark_markdown, published_figures
from hf_crystal.benchmark.store import (
    ShardStore,
    atomic_write,
    fingerprint_cache_dir,
    fingerprint_key,
    structures_digest,
)
from hf_crystal.embedded import DEFAULT_MODEL

__all__ = [
    "BENCHMARK_METRICS",
    "NUM_SAMPLES",
    "RELAX_SAMPLES",
    "WDIST_SAMPLES",
    "BenchmarkResult",
    "BenchmarkSettings",
    "fingerprint_stage",
    "ray_session",
    "relax_stage",
    "run_benchmark",
    "shard_seed",
]

# FlowMM (Miller et al. 2024), scripts_model/evaluate.py: `generate --num_samples` defaults to 10_000.
NUM_SAMPLES = 10_000
# CDVAE (Xie et al. 2022), scripts/compute_metrics.py: GenEval(n_samples=1000) draws 1,000 valid samples for the
# Wasserstein distances; FlowMM's `old_eval_metrics --gen_subsamples` defaults to 1_000 too.
WDIST_SAMPLES = 1_000
# Relaxed subset for stability and S.U.N.: `evaluate` relaxed 1,000 samples in about 45 minutes on a 2-core
# machine, so all 10,000 would take most of a working day.
RELAX_SAMPLES = 1_000

# metrics.json keys the benchmark adds to those of ``hf_crystal.evaluation.metrics.METRICS``.
BENCHMARK_METRICS = {
    "protocol": "sample counts of the run: generated samples, Wasserstein subsample, relaxed subset",
    "n_generated": "samples generated (readable and unreadable), every one counted: no resampling",
    "wdist_n_valid": "valid samples the Wasserstein distances used (at most wdist_samples, drawn with the seed)",
    "n_relax_subset": "the first samples (by index) whose structurally valid ones were relaxed: the denominator "
    "of the stability rates",
    "benchmark_model": "the model that generated the samples",
    "benchmark_refiner": "the refiner applied to them (None: the LLM's own structures)",
    "benchmark_reference": "what the reference set is (e.g. its file), printed beside the published figures",
    "seed": "the run's seed; shard k of the samples is drawn with a seed derived from (seed, k)",
}


@dataclass
class BenchmarkSettings:
    """Everything that changes a benchmark's numbers (recorded in ``benchmark.json``; a rerun must match).

    Args:
        model (`str`): folder or Hub id of the model or adapter (default: the embedded default model).
        refiner (`str`, *optional*): refiner folder or Hub id, "auto" for the model's own (only the embedded
            default has one), None for the LLM's structures.
        num (`int`): samples to generate, every one evaluated (10,000 as FlowMM).
        relax (`int`): relax the structurally valid samples among the first ``relax`` (stability, S.U.N.).
        wdist_samples (`int`): valid samples for the Wasserstein distances (1,000 as CDVAE and FlowMM).
        seed (`int`): the run's seed.
        shard_size (`int`): samples per shard (generation, fingerprints, novelty).
        relax_shard_size (`int`): structures per relaxation shard.
        generation (`dict`): crystal-generation pipeline options (``batch_size``, ``temperature``, ``top_p``,
            ``max_new_tokens``, ``max_sites``, ``constrain``, ``refine_steps``).
        relaxer (`dict`): ``BatchedRelaxer`` options (``optimizer``, ``fmax``, ``max_steps``, ``batch_size``).
        hull (`str`, *optional*): entries file of the hull; None for the shipped MP-20 hull.
        coverage_dataset (`str`): whose CDVAE coverage cutoffs apply.
        coverage_scaler (`str`): "cdvae" or "reference" (see ``compute_metrics``).
    """

    model: str = DEFAULT_MODEL
    refiner: str | None = "auto"
    num: int = NUM_SAMPLES
    relax: int = RELAX_SAMPLES
    wdist_samples: int = WDIST_SAMPLES
    seed: int = 0
    shard_size: int = 64
    relax_shard_size: int = 32
    generation: dict = field(default_factory=dict)
    relaxer: dict = field(default_factory=dict)
    hull: str | None = None
    coverage_dataset: str = "mp20"
    coverage_scaler: str = "cdvae"

    def __post_init__(self):
        if self.num < 1 or self.relax < 0 or self.wdist_samples < 1 or self.shard_size < 1:
            raise ValueError("num, wdist_samples and shard_size must be >= 1 and relax >= 0")
        if self.relax_shard_size < 1:
            raise ValueError("relax_shard_size must be >= 1")


@dataclass
class BenchmarkResult:
    """A finished benchmark: the ``EvaluationResult`` (as ``evaluate`` would give) and the wall time per stage."""

    evaluation: object  # hf_crystal.evaluation.metrics.EvaluationResult
    timings: dict[str, float]

    @property
    def metrics(self) -> dict:
        return self.evaluation.metrics


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``: a function of (seed, shard) only, so that any worker draws the same samples."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


@contextmanager
def ray_session(address: str | None = None, workers: int | None = None):
    """Connect to Ray: the running instance, the cluster at ``address``, or a new local one with ``workers``
    CPUs (default: the machine's cores). Yields how many tasks or actors to run at once (``workers``, else
    the cluster's CPUs); shuts down only what it started."""
    import ray

    started = not ray.is_initialized()
    if started:
        options = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **options)
        else:
            # "local": always a new instance, never one a `ray start` on this machine left behind.
            ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False, **options)
    try:
        yield workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()


# Fault tolerance: a task or actor call whose worker or node dies is retried (an actor restarted) by Ray.
_TASK_OPTIONS = {"num_cpus": 1, "max_retries": 3}
_ACTOR_OPTIONS = {"num_cpus": 1, "max_restarts": 3, "max_task_retries": 3, "scheduling_strategy": "SPREAD"}


def _run_tasks(
    function: Callable,
    calls: Sequence[tuple[int, Callable[[], tuple]]],
    store: ShardStore,
    stage: str,
    *,
    workers: int,
    progress: bool,
    desc: str,
    suffix: str = "json",
    write: Callable | None = None,
) -> None:
    """Run ``function(shard, *args())`` as Ray tasks for each (shard, args) whose file is missing, at most
    ``workers`` at once, and write each result as it finishes."""
    import ray

    todo = [(shard, args) for shard, args in calls if not store.done(stage, shard, suffix)]
    if not todo:
        return
    task = ray.remote(**_TASK_OPTIONS)(function)
    write = write or (lambda shard, value: store.write(stage, shard, value))
    pending: dict = {}
    started = time.perf_counter()
    with tqdm(total=len(calls), initial=len(calls) - len(todo), desc=desc, disable=not progress) as bar:
        try:
            while todo or pending:
                while todo and len(pending) < workers:
                    shard, args = todo.pop(0)
                    pending[task.remote(shard, *args())] = shard
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    del pending[ref]
                    write(*ray.get(ref))
                    bar.update(1)
        finally:
            for ref in pending:
                ray.cancel(ref)
            store.add_time(stage, time.perf_counter() - started)


def _run_actors(
    actor_class: type,
    init: tuple,
    method: str,
    calls: Sequence[tuple[int, Callable[[], tuple]]],
    store: ShardStore,
    stage: str,
    *,
    workers: int,
    progress: bool,
    desc: str,
    suffix: str = "json",
    write: Callable | None = None,
) -> None:
    """Like ``_run_tasks``, on a ``ray.util.ActorPool`` of ``actor_class(*init)`` actors (at most ``workers``)."""
    import ray
    from ray.util import ActorPool

    todo = [(shard, args) for shard, args in calls if not store.done(stage, shard, suffix)]
    if not todo:
        return
    write = write or (lambda shard, value: store.write(stage, shard, value))
    started = time.perf_counter()
    actor = ray.remote(**_ACTOR_OPTIONS)(actor_class)
    actors = [actor.remote(*init) for _ in range(min(workers, len(todo)))]
    pool = ActorPool(actors)
    try:
        for job in todo:
            pool.submit(lambda a, job: getattr(a, method).remote(job[0], *job[1]()), job)
        with tqdm(total=len(calls), initial=len(calls) - len(todo), desc=desc, disable=not progress) as bar:
            while pool.has_next():
                write(*pool.get_next_unordered())
                bar.update(1)
    finally:
        for a in actors:
            ray.kill(a)
        store.add_time(stage, time.perf_counter() - started)


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def _stack(rows: list) -> np.ndarray:
    width = next((len(r) for r in rows if r is not None), 0)
    return np.array([r if r is not None else [np.nan] * width for r in rows], dtype=float).reshape(
        len(rows), width
    )


def _fingerprints(values: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(structure, composition, ok) as ``coverage.fingerprints`` returns them, from shard results in order."""
    struct = [row for v in values for row in v["struct"]]
    comp = [row for v in values for row in v["comp"]]
    return _stack(struct), _stack(comp), np.array([row is not None for row in struct], dtype=bool)


def fingerprint_stage(
    structures: Sequence[Structure],
    store: ShardStore,
    *,
    stage: str = "features",
    shard_size: int = 64,
    validity: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> tuple[list[dict] | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Validity flags (None unless ``validity``) and fingerprints of ``structures``, computed as Ray tasks over
    shards (``workers.features``) whose results ``store`` keeps under ``stage``."""
    shards = _chunks(len(structures), shard_size)
    calls = [(k, lambda r=r: ([structures[i] for i in r], validity)) for k, r in enumerate(shards)]
    _run_tasks(
        remote.features,
        calls,
        store,
        stage,
        workers=workers,
        progress=progress,
        desc=f"fingerprints ({stage})",
    )
    values = [store.read(stage, k) for k in range(len(shards))]
    flags = [f for v in values for f in v["flags"]] if validity else None
    return flags, _fingerprints(values)


def relax_stage(
    structures: Sequence[Structure],
    store: ShardStore,
    relaxer: dict,
    *,
    shard_size: int = 32,
    workers: int = 1,
    progress: bool = True,
) -> list:
    """``RelaxResult`` of each structure, relaxed by ``BatchedRelaxer(**relaxer)`` actors over shards."""
    from hf_crystal.evaluation.relax import RelaxResult

    shards = _chunks(len(structures), shard_size)
    calls = [(k, lambda r=r: ([structures[i] for i in r],)) for k, r in enumerate(shards)]
    _run_actors(
        remote.Relaxer,
        (relaxer,),
        "relax",
        calls,
        store,
        "relax",
        workers=workers,
        progress=progress,
        desc="relax",
    )
    return [RelaxResult.from_dict(d) for k in range(len(shards)) for d in store.read("relax", k)]


def _generate(
    settings: BenchmarkSettings, refiner: str | None, store: ShardStore, *, workers: int, progress: bool
):
    from hf_crystal.structure_io import SampleWriter

    shards = _chunks(settings.num, settings.shard_size)

    def write(shard: int, samples: list[dict]) -> None:
        start = shards[shard].start
        if refiner is not None:  # the LLM's own structures first: the refined file marks the shard done
            _write_samples(SampleWriter, store.path("generate_llm", shard, "jsonl"), samples, start)
            samples = [
                {**s, "structure": s["refined_structure"], "valid": s["refined_valid"]} for s in samples
            ]
        _write_samples(SampleWriter, store.path("generate", shard, "jsonl"), samples, start)

    calls = [(k, lambda r=r, k=k: (len(r), shard_seed(settings.seed, k))) for k, r in enumerate(shards)]
    options = {"constrain": True, **settings.generation}
    _run_actors(
        remote.Generator,
        (settings.model, refiner, options),
        "generate",
        calls,
        store,
        "generate",
        workers=workers,
        progress=progress,
        desc="generate",
        suffix="jsonl",
        write=write,
    )
    return [store.path("generate", k, "jsonl") for k in range(len(shards))]


def _write_samples(writer_class, path: Path, samples: list[dict], start: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    tmp.unlink(missing_ok=True)
    writer_class(tmp).write(samples, start=start)
    tmp.replace(path)


def _read_samples(paths: list[Path]) -> tuple[list[str], list[Structure], list[tuple[str, str]]]:
    """The samples of the generation shards as ``evaluate`` reads them: (ids, structures, unreadable)."""
    from hf_crystal.structure_io import read_structures

    ids, structures, skipped = [], [], []
    for path in paths:
        i, s, k = read_structures(path)
        ids += i
        structures += s
        skipped += k
    return ids, structures, skipped


def _uniqueness(samples, store, *, shard_size, workers, progress) -> list[bool]:
    """``unique_flags`` of ``samples``, computed per formula group (as ``unique_flags`` itself groups them)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.composition.reduced_formula].append(i)
    chunks, current, size = [], [], 0
    for members in groups.values():  # insertion order: first occurrence, deterministic
        current.append(members)
        size += len(members)
        if size >= shard_size:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    calls = [
        (k, lambda c=c: ([[samples[i] for i in members] for members in c],)) for k, c in enumerate(chunks)
    ]
    _run_tasks(
        remote.uniqueness, calls, store, "unique", workers=workers, progress=progress, desc="uniqueness"
    )
    unique = [False] * len(samples)
    for k, chunk in enumerate(chunks):
        for members, flags in zip(chunk, store.read("unique", k), strict=True):
            for i, flag in zip(members, flags, strict=True):
                unique[i] = flag
    return unique


def _novelty(samples, train, store, *, shard_size, workers, progress) -> list[bool]:
    """``novel_flags`` of ``samples`` against ``train``, each shard given the training structures of its formulas."""
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for t in train:
        by_formula[t.composition.reduced_formula].append(t)

    def args(r: range) -> tuple:
        shard = [samples[i] for i in r]
        formulas = dict.fromkeys(s.composition.reduced_formula for s in shard)
        return shard, [t for f in formulas for t in by_formula.get(f, [])]

    shards = _chunks(len(samples), shard_size)
    calls = [(k, lambda r=r: args(r)) for k, r in enumerate(shards)]
    _run_tasks(remote.novelty, calls, store, "novel", workers=workers, progress=progress, desc="novelty")
    return [flag for k in range(len(shards)) for flag in store.read("novel", k)]


def _hull(path: str | None):
    from hf_crystal.evaluation.metrics import Hull
    from hf_crystal.evaluation.stability import load_hull, shipped_hull

    return Hull(shipped_hull() if path is None else load_hull(path), relaxer=None)


def run_benchmark(
    settings: BenchmarkSettings,
    reference: Sequence[Structure],
    train: Sequence[Structure],
    out: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    reference_label: str = "",
    progress: bool = True,
) -> BenchmarkResult:
    """Generate and evaluate with the published protocol's sample counts, on Ray; resumable in ``out``.

    Args:
        settings (`BenchmarkSettings`): the model, sample counts, seed and evaluation options.
        reference (`Sequence[Structure]`): the test structures (coverage, Wasserstein distances).
        train (`Sequence[Structure]`): training structures for novelty (empty: novelty and S.U.N. unknown).
        out (`str` or `os.PathLike`): the run's folder: shards as they finish, then the report (``metrics.json``,
            ``samples.csv``, ``report.md``, plots) and ``samples.jsonl`` (the samples, readable by ``evaluate``).
        address (`str`, *optional*): a Ray cluster to join (``ray.init(address=...)``); default a local Ray
            instance with ``workers`` CPUs, or the Ray instance already initialised in this process.
        workers (`int`, *optional*): tasks and actors at once (default: the cluster's CPUs).
        cache_dir (`str` or `os.PathLike`, *optional*): the reference fingerprint cache (default
            ``~/.cache/hf_crystal/fingerprints``); relaxations use the relaxer's cache (``relax/`` beside it).
        reference_label (`str`): what the reference is (e.g. "MP-20 val_report half"), stated beside the
            published figures, which use MP-20's 9,046-structure test split.

    Returns:
        A ``BenchmarkResult``; nothing is printed.
    """
    from hf_crystal import cache
    from hf_crystal.embedded import refiner_for
    from hf_crystal.evaluation import metrics as m
    from hf_crystal.evaluation.distributions import distribution_distances
    from hf_crystal.evaluation.report import write_report

    reference, train = list(reference), list(train)
    if not reference:
        raise ValueError("the benchmark needs reference structures")
    refiner = refiner_for(settings.model) if settings.refiner == "auto" else settings.refiner
    store = ShardStore(out)
    reference_digest = structures_digest(reference)
    recorded = asdict(settings) | {
        "refiner": refiner,
        "reference": reference_digest,
        "n_reference": len(reference),
    }
    recorded |= {"train": structures_digest(train), "n_train": len(train)}
    store.check_settings(json.loads(json.dumps(recorded)))
    relaxer = {**settings.relaxer, "cache_dir": str(cache.cache_dir("relax"))}
    ref_store = ShardStore(
        fingerprint_cache_dir(cache_dir) / fingerprint_key(reference_digest, settings.shard_size)
    )

    with ray_session(address, workers) as n:
        paths = _generate(settings, refiner, store, workers=n, progress=progress)
        ids, samples, skipped = _read_samples(paths)
        options = {"shard_size": settings.shard_size, "workers": n, "progress": progress}
        flags, gen = fingerprint_stage(samples, store, stage="features", **options)
        _, ref = fingerprint_stage(reference, ref_store, stage="reference", validity=False, **options)
        unique = _uniqueness(samples, store, **options)
        novel = _novelty(samples, train, store, **options) if train else None
        indices = [int(i.rsplit("-", 1)[1]) for i in ids]
        subset = sum(index < settings.relax for index in indices)  # readable samples among the first `relax`
        rows = m.sample_rows(ids, samples)
        n_total = len(samples) + len(skipped)
        valid, validity = m.validity_metrics(samples, rows, flags, n_total=n_total)
        todo = m.relax_indices(rows[:subset])
        results = relax_stage(
            [samples[i] for i in todo],
            store,
            relaxer,
            shard_size=settings.relax_shard_size,
            workers=n,
            progress=progress,
        )

    started = time.perf_counter()
    metrics: dict = {"n_samples": len(samples), "n_unreadable": len(skipped)}
    metrics |= {"n_reference": len(reference), "n_train": len(train)}
    metrics |= validity
    coverage, cutoffs, scaler = m.coverage_settings(settings.coverage_dataset, None, settings.coverage_scaler)
    metrics |= coverage
    if samples:
        metrics |= m.coverage_metrics(gen, ref, n_total=n_total, cutoffs=cutoffs, scaler=scaler)
    else:
        metrics |= {"cov_recall": float("nan"), "cov_precision": float("nan")}
    picked = valid
    if len(valid) > settings.wdist_samples:  # CDVAE / FlowMM: a random subset of the valid samples
        rng = np.random.default_rng(settings.seed)
        picked = [valid[i] for i in sorted(rng.choice(len(valid), settings.wdist_samples, replace=False))]
    metrics |= distribution_distances(picked, reference)
    metrics |= m.uniqueness_novelty_metrics(rows, unique, novel)
    found, reference_groups = m.sample_symmetry(samples, reference, rows, progress=progress)
    metrics |= found
    n_subset = min(settings.relax, settings.num)
    relaxed = None
    if settings.relax:
        stability = m.stability_metrics(
            samples[:subset],
            rows[:subset],
            todo,
            results,
            hull=_hull(settings.hull),
            n_total=n_subset,
            progress=progress,
        )
        metrics |= stability.metrics
        relaxed = stability.relaxed
        metrics |= m.relaxed_symmetry(relaxed, reference, rows, reference_groups, progress=progress)
    metrics |= {
        "protocol": f"{settings.num} samples generated, Wasserstein distances on {len(picked)} valid samples, "
        f"stability on the first {n_subset} samples",
        "n_generated": settings.num,
        "wdist_n_valid": len(picked),
        "n_relax_subset": n_subset,
        "benchmark_model": settings.model,
        "benchmark_refiner": refiner,
        "benchmark_reference": reference_label or f"{len(reference)} structures",
        "seed": settings.seed,
    }
    result = m.evaluation_result(metrics, rows, samples, valid, reference, relaxed)
    atomic_write(store.root / "samples.jsonl", "".join(p.read_text() for p in paths))
    store.add_time("metrics", time.perf_counter() - started)
    write_report(result, store.root)
    atomic_write(
        store.root / "benchmark.md", benchmark_markdown(result.metrics, store.timings(), published_figures())
    )
    return BenchmarkResult(result, store.timings())
