"""`hf-crystal benchmark` on a two-node Ray cluster (`ray.cluster_utils.Cluster`, both nodes on 127.0.0.1) that
loses a node mid-run: Ray retries the lost tasks and restarts the lost actors, and every sample is kept once."""

import json
import threading
import time

import pytest
from factories import structures


@pytest.mark.slow  # a two-node cluster, its workers and actors: about a minute
def test_a_node_removed_mid_run_loses_no_sample_and_repeats_none(loopback_only, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from hf_crystal.benchmark.runner import BenchmarkSettings, run_benchmark
    from hf_crystal.testing import save_tiny_llama

    monkeypatch.setenv("HF_CRYSTAL_CACHE", str(tmp_path / "cache"))
    model = save_tiny_llama(tmp_path / "model")
    reference = [s for s in structures().values() if len(s) <= 9][:6]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out = tmp_path / "run"
    removed = threading.Event()

    def remove_when_the_first_shard_is_written():
        deadline = time.monotonic() + 300
        while not list(out.glob("generate/*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        cluster.remove_node(node)
        removed.set()

    thread = threading.Thread(target=remove_when_the_first_shard_is_written, daemon=True)
    try:
        thread.start()
        settings = BenchmarkSettings(
            model=str(model),
            refiner=None,
            num=8,  # the samples of test_benchmark.py's run (same model, seed, shards): none is slow to fingerprint
            relax=4,
            shard_size=4,
            relax_shard_size=2,
            generation={"max_sites": 6, "batch_size": 4},
            relaxer={"max_steps": 2},
        )
        result = run_benchmark(
            settings, reference, [], out, workers=2, cache_dir=tmp_path / "fp", progress=False
        )
        thread.join(timeout=60)
        assert removed.is_set() and len([n for n in ray.nodes() if n["Alive"]]) == 1
    finally:
        ray.shutdown()
        cluster.shutdown()
    ids = [json.loads(line)["material_id"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert ids == [f"sample-{i:06d}" for i in range(8)]  # every sample exactly once
    assert result.metrics["n_samples"] + result.metrics["n_unreadable"] == 8
    assert len(list((out / "generate").glob("*.jsonl"))) == 2 and result.metrics["n_relax_subset"] == 4
