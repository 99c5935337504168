"""LoRA fine-tuning through TRL's SFTTrainer on a tiny random LLaMA (CPU, a few steps, real task data)."""

import json
import math
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from training_helpers import crystal_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_crystal.prompts import generation_prompt
from hf_crystal.testing import save_tiny_llama
from hf_crystal.training.lora import parse_args, train_lora

STEPS = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(tiny base folder, dataset folder)."""
    tmp = tmp_path_factory.mktemp("lora")
    return save_tiny_llama(tmp / "base"), crystal_dataset(tmp / "data")


def _config(inputs, out, *argv, **kw):
    """(script arguments, SFTConfig, ModelConfig) of a short run: flags `kw` (name: value) and `argv` on top."""
    base, data = inputs
    options = {
        "model": str(base),
        "dataset": str(data),
        "output_dir": str(out),
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "save_steps": 2,
        "logging_steps": 1,
        "warmup_steps": 1,
        "learning_rate": 1e-2,
        **kw,
    }
    return parse_args(
        [item for key, value in options.items() for item in (f"--{key}", str(value))] + list(argv)
    )


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run") / "adapter"
    return out, train_lora(*_config(inputs, out))


def _losses(trainer):
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_trains_with_finite_loss_and_writes_the_adapter(run, inputs):
    out, trainer = run
    losses = _losses(trainer)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "training_args.bin").exists()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(inputs[0].resolve())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["lora_dropout"]) == (
        8,
        32,
        0.05,
    )
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}
    assert "library_name: peft" in (out / "README.md").read_text()


def test_reloaded_adapter_gives_the_logits_of_the_model_in_memory(run):
    out, trainer = run
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(
        generation_prompt({"formula": "NaCl"}) + "5.6 5.6 5.6\n90 90 90\nNa\n", return_tensors="pt"
    )
    in_memory = trainer.model.eval()
    with torch.no_grad():
        expected = in_memory(**batch).logits
        for loader in (AutoPeftModelForCausalLM, AutoModelForCausalLM):
            logits = loader.from_pretrained(out).eval()(**batch).logits
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5, msg=loader.__name__)


class _Kill(TrainerCallback):
    """Stands in for a kill: dies at the end of step 3, after checkpoint-2 was written."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_at_the_right_step(run, inputs, tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(KeyboardInterrupt):
        train_lora(*_config(inputs, out), callbacks=[_Kill()])
    assert get_last_checkpoint(str(out / "checkpoints")).endswith("checkpoint-2")
    assert not (out / "adapter_model.safetensors").exists()

    resumed = train_lora(*_config(inputs, out, "--resume"))
    assert resumed.state.global_step == STEPS
    losses = _losses(resumed)
    assert sorted(losses) == list(range(1, STEPS + 1))  # steps 1-2 from the checkpoint, 3-4 trained now
    # Same data order, same RNG state: steps 3 and 4 repeat the uninterrupted run.
    uninterrupted = _losses(run[1])
    for step in (3, 4):
        assert losses[step] == pytest.approx(uninterrupted[step], rel=1e-4)
    assert (out / "adapter_model.safetensors").exists()


def _masked_labels(trainer) -> int:
    """Label positions without loss in the first training example (no padding in a batch of one)."""
    batch = trainer.data_collator([trainer.train_dataset[0]])
    return int((batch["labels"] == -100).sum())


def test_completion_only_loss_by_default_and_full_sequence_loss_as_option(run, inputs, tmp_path):
    assert _masked_labels(run[1]) > 0  # the prompt carries no loss
    trainer = train_lora(
        *_config(inputs, tmp_path / "full", completion_only_loss=False, max_steps=1, save_steps=10)
    )
    assert _masked_labels(trainer) == 0
    assert math.isfinite(_losses(trainer)[1])


SHARED_MP20 = Path(__file__).parents[1].parent / "shared" / "data" / "mp_20" / "train.csv"


@pytest.mark.skipif(
    not SHARED_MP20.is_file(), reason=f"the MP-20 excerpt {SHARED_MP20} is not on this machine"
)
def test_a_few_steps_on_the_mp20_excerpt(inputs, tmp_path):
    """The dataset built on the fly from a CDVAE CSV, every condition column present."""
    trainer = train_lora(
        *_config(inputs, tmp_path / "mp20", dataset=str(SHARED_MP20), max_steps=3, save_steps=10)
    )
    assert trainer.state.global_step == 3
    assert all(math.isfinite(v) for v in _losses(trainer).values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a CUDA GPU")
@pytest.mark.parametrize("flag", ["--load_in_8bit", "--load_in_4bit"])
def test_quantized_loading_needs_a_gpu(flag):
    from hf_crystal.training.common import TrainingConfigError

    with pytest.raises(TrainingConfigError, match="needs a CUDA GPU"):
        parse_args(["--model", "m", "--dataset", "d", "--output_dir", "o", flag, "true"])
