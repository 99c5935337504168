"""`hf-crystal benchmark`: the published protocol on Ray gives `evaluate`'s numbers, resumes, and is seeded per shard.

The Ray tests run inside a loopback-only network namespace (`scripts/loopback-only`, as `make test` does) and share
one local Ray instance per module: starting Ray and its workers is most of their time.
"""

import json
import shutil

import numpy as np
import pytest
from factories import structures

from hf_crystal.commands import main
from hf_crystal.structure_io import cif_block


def _write(path, named):
    path.write_text("".join(cif_block(s, name) + "\n" for name, s in named))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Reference and training CIF files of a few small structures."""
    root = tmp_path_factory.mktemp("structures")
    small = [(name.split(" ")[0], s) for name, s in structures().items() if len(s) <= 9]
    return {
        "reference": _write(root / "reference.cif", small[:6]),
        "train": _write(root / "train.cif", small[3:]),
    }


@pytest.fixture(scope="module")
def inputs(files, tmp_path_factory):
    """``files`` and a tiny random model."""
    from hf_crystal.testing import save_tiny_llama

    return files | {"model": save_tiny_llama(tmp_path_factory.mktemp("model") / "model")}


@pytest.fixture(scope="module")
def ray_instance(loopback_only):
    """One local Ray instance (2 CPUs) for the module; run_benchmark uses the running instance."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _benchmark(inputs, out, tmp_path, *extra):
    argv = [
        "benchmark",
        "--model",
        str(inputs["model"]),
        "--no-refiner",
        "--reference",
        str(inputs["reference"]),
    ]
    argv += [
        "--train",
        str(inputs["train"]),
        "--num",
        "8",
        "--relax",
        "6",
        "--shard-size",
        "4",
        "--max-sites",
        "6",
    ]
    argv += [
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--cache-dir",
        str(tmp_path / "fingerprints"),
        "--out",
        str(out),
    ]
    assert main([*argv, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9, abs=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.slow  # about 40 s on a quiet machine (Ray workers and actors start, CHGNet loads), 140 s under load
def test_local_run_is_evaluate_on_the_same_samples_and_resumes_identically(
    ray_instance, inputs, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_CRYSTAL_CACHE", str(tmp_path / "cache"))  # the benchmark's relaxation cache
    out = tmp_path / "run"
    metrics = _benchmark(inputs, out, tmp_path, "--workers", "2")
    table = capsys.readouterr().out
    assert "| COV-R |" in table and "0.9915" in table  # beside CDVAE's published figure
    assert metrics["n_generated"] == 8 and metrics["n_samples"] + metrics["n_unreadable"] == 8
    assert metrics["n_relax_subset"] == 6 and metrics["n_stability"] == 6
    ids = [json.loads(line)["material_id"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert ids == [f"sample-{i:06d}" for i in range(8)]  # every sample once, in order

    # `evaluate` on the same samples, with its own relaxation cache, on the samples the relaxation subset holds.
    subset = tmp_path / "first6.jsonl"
    subset.write_text("".join((out / "samples.jsonl").read_text().splitlines(keepends=True)[:6]))
    argv = ["--reference", str(inputs["reference"]), "--train", str(inputs["train"]), "--max-steps", "2"]
    argv += ["--cache-dir", str(tmp_path / "evaluate-cache")]
    assert (
        main(["evaluate", str(out / "samples.jsonl"), *argv, "--no-relax", "--out", str(tmp_path / "all")])
        == 0
    )
    assert main(["evaluate", str(subset), *argv, "--out", str(tmp_path / "first6")]) == 0
    everything = json.loads((tmp_path / "all" / "metrics.json").read_text())
    first6 = json.loads((tmp_path / "first6" / "metrics.json").read_text())
    for key, value in everything.items():
        assert _same(metrics[key], value), key
    stability_keys = [
        k for k in first6 if k not in everything
    ]  # uniqueness of the first 6 needs no later one
    assert {"e_hull_mean", "relax_converged_rate", "sun_rate", "n_stability"} <= set(stability_keys)
    for key in stability_keys:
        assert _same(metrics[key], first6[key]), key

    # Interrupted: half the shards of every stage lost, and the report. Resumed with one worker: the same files.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in ("metrics.json", "report.md", "benchmark.md"):
        (resumed / name).unlink()
    for stage in ("generate", "features", "unique", "novel", "relax"):
        for path in sorted((resumed / stage).iterdir())[1::2] or list((resumed / stage).iterdir()):
            path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in resumed.glob("*/00000.json*")}
    again = _benchmark(inputs, resumed, tmp_path, "--workers", "1")
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # done shards were not recomputed
    for path in out.glob("*/*.json*"):
        assert (resumed / path.relative_to(out)).read_bytes() == path.read_bytes(), path
    assert all(_same(again[k], v) for k, v in metrics.items())

    # A finished run, run again: nothing recomputed, the same numbers, and onto a model card.
    card = _benchmark(inputs, out, tmp_path, "--card", str(inputs["model"]))
    assert card == metrics
    readme = (inputs["model"] / "README.md").read_text()
    assert "cov_recall" in readme and "8 samples generated" in readme and "| seed |" not in readme
    assert "## Benchmark: the published protocol" in readme and "| COV-R |" in readme  # beside published rows
    _benchmark(inputs, out, tmp_path, "--card", str(inputs["model"]))
    assert (inputs["model"] / "README.md").read_text().count("## Benchmark: the published protocol") == 1


def test_a_second_run_against_the_same_reference_computes_no_fingerprint(ray_instance, files, tmp_path):
    from hf_crystal.benchmark.runner import fingerprint_stage
    from hf_crystal.benchmark.store import ShardStore, fingerprint_key, structures_digest
    from hf_crystal.evaluation.coverage import fingerprints
    from hf_crystal.structure_io import read_structures

    _, reference, _ = read_structures(files["reference"])
    store = ShardStore(tmp_path / fingerprint_key(structures_digest(reference), 2))
    flags, first = fingerprint_stage(
        reference, store, shard_size=2, validity=False, workers=2, progress=False
    )
    assert flags is None and len(list(store.root.glob("features/*.json"))) == 3
    for ours, theirs in zip(first, fingerprints(reference), strict=True):  # the same as in one process
        np.testing.assert_array_equal(ours, theirs)
    stamps = {p: p.stat().st_mtime_ns for p in store.root.glob("features/*.json")}
    _, second = fingerprint_stage(reference, store, shard_size=2, validity=False, workers=2, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_given_samples_file_gets_the_numbers_of_evaluate(ray_instance, files, tmp_path):
    """`--samples` runs the protocol on any model's samples: the same numbers as `evaluate` on that file."""
    argv = ["--reference", str(files["reference"]), "--train", str(files["train"])]
    assert (
        main(["evaluate", str(files["train"]), *argv, "--no-relax", "--out", str(tmp_path / "evaluate")]) == 0
    )
    expected = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    out = tmp_path / "run"
    argv += ["--samples", str(files["train"]), "--relax", "0", "--shard-size", "2", "--out", str(out)]
    assert main(["benchmark", *argv, "--cache-dir", str(tmp_path / "fingerprints")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark_samples"] == str(files["train"]) and metrics["benchmark_model"] is None
    assert metrics["n_generated"] == expected["n_samples"] and not (out / "samples.jsonl").exists()
    for key, value in expected.items():
        assert _same(metrics[key], value), key
    recorded = json.loads((out / "benchmark.json").read_text())
    assert "model" not in recorded and len(recorded["samples_digest"]) == 64


def test_published_figures_name_their_source_and_protocol():
    from hf_crystal.benchmark.published import TABLE_METRICS, benchmark_table, published_figures
    from hf_crystal.evaluation.metrics import METRICS

    rows = published_figures()
    shown = {key for key, _ in TABLE_METRICS}
    for row in rows:
        assert {"model", "metric", "value", "paper", "source", "protocol"} <= set(row)
        assert row["metric"] in shown and row["metric"] in METRICS  # a key our metrics.json has
    ours = {
        "cov_recall": 0.5,
        "cov_recall_ci95": [0.4, 0.6],
        "p1_rate_sp0.1": 0.2,
        "p1_rate_ci95_sp0.1": [0.1, 0.3],
    }
    table = benchmark_table(ours, rows)
    assert "| COV-R | 0.5 [0.4, 0.6] | 0.9915[^3] |" in table
    assert "| P1 share (symprec 0.1) | 0.2 [0.1, 0.3] |" in table
    assert "[^3]: CDVAE, cov_recall: Xie et al. 2022" in table
    with pytest.raises(ValueError, match="no published figures"):
        published_figures("carbon")


def test_shards_are_seeded_by_seed_and_shard_only():
    from hf_crystal.benchmark.runner import shard_seed

    seeds = {shard_seed(seed, shard) for seed in range(3) for shard in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**32 for s in seeds)
    assert shard_seed(0, 7) == shard_seed(0, 7)


def test_a_folder_of_another_run_is_refused(tmp_path):
    from hf_crystal.benchmark.store import BenchmarkStateError, ShardStore

    store = ShardStore(tmp_path)
    store.check_settings({"num": 8, "seed": 0})
    store.check_settings({"num": 8, "seed": 0})  # the same run: resumes
    with pytest.raises(BenchmarkStateError, match=r"other settings \(seed\)"):
        store.check_settings({"num": 8, "seed": 1})
    store.write("generate", 3, {"x": float("nan")})
    assert [p.name for p in (tmp_path / "generate").iterdir()] == ["00003.json"]  # no temporary file left


def test_benchmark_usage_errors_are_one_line(tmp_path, capsys):
    assert (
        main(["benchmark", "--reference", "x.cif", "--refiner", "r", "--no-refiner", "--out", str(tmp_path)])
        == 2
    )
    assert "give --refiner or --no-refiner" in capsys.readouterr().err
    assert (
        main(["benchmark", "--reference", str(tmp_path / "missing.cif"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "reference not found" in capsys.readouterr().err
    argv = ["benchmark", "--reference", "x.cif", "--samples", "s.jsonl", "--num", "5", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "--num only apply when generating" in capsys.readouterr().err
