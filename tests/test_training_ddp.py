"""Two CPU processes under `accelerate launch` (DDP over gloo): disjoint data, equal weights, one checkpoint,
an exact resume and a single push, for the LoRA and the base trainer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from training_helpers import crystal_dataset

from hf_crystal.testing import save_tiny_llama

PROBE = Path(__file__).with_name("ddp_probe.py")
pytestmark = pytest.mark.slow  # two processes per run: about a minute each on 2 cores


def _launch(record, kind, argv):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [*command, str(PROBE), str(record), kind, *argv], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads((record / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("kind", ["lora", "base"])
def test_two_processes(kind, tmp_path, hub_server):
    data = crystal_dataset(tmp_path / "data")
    out, repo_id = tmp_path / "out", hub_server.repo_id(f"ddp-{kind}")
    argv = ["--dataset", str(data), "--output_dir", str(out), "--per_device_train_batch_size", "2"]
    argv += ["--logging_steps", "1", "--save_steps", "2", "--seed", "0", "--epochs", "2"]
    if kind == "lora":
        base = save_tiny_llama(tmp_path / "base")
        argv += ["--model", str(base), "--base_model_id", "tester/base", "--learning_rate", "1e-2"]
    else:
        argv += ["--preset", "tiny", "--model_overrides", '{"hidden_size": 32, "intermediate_size": 64}']

    ranks = _launch(tmp_path / "first", kind, [*argv, "--max_steps", "2"])
    seen = [set(r["examples"]) for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # each rank trains on its own shard
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients are all-reduced
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]

    ranks = _launch(tmp_path / "resumed", kind, [*argv, "--max_steps", "4", "--resume", "--push_to_hub",
                                                 "--hub_model_id", repo_id])  # fmt: skip
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    whole = [a if a != str(out) else str(tmp_path / "whole") for a in argv]
    uninterrupted = _launch(tmp_path / "uninterrupted", kind, [*whole, "--max_steps", "4"])
    assert uninterrupted[0]["weights"] == ranks[0]["weights"]  # the resume continued exactly
    commits = HfApi().list_repo_commits(repo_id)
    assert len(commits) == 2  # the repo's creation and one push, from the main process only
