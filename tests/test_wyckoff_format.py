"""The crystal format travels: dataset build -> training -> model config -> pipeline, prompts, sample files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from factories import rocksalt, sodium_nitride
from pymatgen.analysis.structure_matcher import StructureMatcher
from training_helpers import crystal_dataset
from transformers import AutoConfig, LogitsProcessor, LogitsProcessorList, pipeline

from hf_crystal.commands import main
from hf_crystal.data import build_dataset, load_crystal_dataset
from hf_crystal.prompts import GENERATION_INSTRUCTIONS, TaskMix, mask_element
from hf_crystal.structure_io import SampleWriter
from hf_crystal.testing import save_tiny_llama
from hf_crystal.text import decode, encode


class _Write(LogitsProcessor):
    """Forces the model to write `text` then EOS; records the prompt it was given."""

    def __init__(self, tokenizer, text: str):
        self.ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        self.width = None
        self.prompt = None

    def __call__(self, input_ids, scores):
        if self.width is None:
            self.width, self.prompt = input_ids.shape[1], input_ids[0]
        step = min(input_ids.shape[1] - self.width, len(self.ids) - 1)
        forced = torch.full_like(scores, -torch.inf)
        forced[:, self.ids[step]] = 0
        return forced


def test_dataset_build_records_the_format(tmp_path):
    source = tmp_path / "src.cif"
    source.write_text(rocksalt().to(fmt="cif") + sodium_nitride().to(fmt="cif"))
    out = tmp_path / "ds"
    assert main(["dataset", "build", str(source), "--out", str(out), "--format", "wyckoff"]) == 0
    rows = [row for split in load_crystal_dataset(out).values() for row in split]
    assert {row["crystal_format"] for row in rows} == {"wyckoff"}
    assert {row["text"] for row in rows} == {encode(rocksalt(), format="wyckoff"), "221\n3.8\nN 1a\nNa 3d"}
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["crystal_format"] == "wyckoff"
    assert 'decode(ds["train"][0]["text"], format="wyckoff")' in card
    # Without --format: xyz, as before.
    xyz, report = build_dataset(source, split_fractions=(1.0, 0.0, 0.0))
    assert report.crystal_format == "xyz" and set(xyz["train"]["crystal_format"]) == {"xyz"}
    assert decode(xyz["train"][0]["text"])


def test_tasks_and_infill_masks_in_wyckoff_text():
    task = TaskMix(infill_fraction=0.0, format="wyckoff")(rocksalt(), seed=0)
    assert task["prompt"].endswith(GENERATION_INSTRUCTIONS["wyckoff"] + "\n")
    assert decode(task["completion"], format="wyckoff").composition.reduced_formula == "NaCl"
    # Whole element fields: masking N leaves Na alone.
    masked = mask_element(encode(sodium_nitride(), format="wyckoff"), "N", format="wyckoff")
    assert masked == "221\n3.8\n[MASK] 1a\nNa 3d"
    with pytest.raises(ValueError, match="not in the structure"):
        mask_element(masked, "Cl", format="wyckoff")


@pytest.fixture(scope="module")
def wyckoff_base(tmp_path_factory):
    """A tiny base trained 2 steps on a Wyckoff dataset (the format comes from the dataset, no flag)."""
    tmp = tmp_path_factory.mktemp("wyckoff")
    data = crystal_dataset(tmp / "data", format="wyckoff")
    out = tmp / "model"
    argv = ["train", "base", "--preset", "tiny", "--dataset", str(data), "--output_dir", str(out)]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "2", "--save_steps", "10"]
    assert main(argv) == 0
    return out


def test_training_copies_the_format_into_the_config(wyckoff_base):
    config = AutoConfig.from_pretrained(wyckoff_base)
    assert config.crystal_format == "wyckoff"
    assert "origin choice 2" in config.crystal_format_setting


def test_pipeline_prompts_decodes_and_writes_in_the_models_format(wyckoff_base, tmp_path):
    pipe = pipeline("crystal-generation", model=str(wyckoff_base))
    assert pipe.crystal_format == "wyckoff"
    force = _Write(pipe.tokenizer, "225\n5.6\nNa 4a\nCl 4b")
    # constrain=True (the default): the Wyckoff grammar allows this text.
    [sample] = pipe(logits_processor=LogitsProcessorList([force]), temperature=0)
    assert GENERATION_INSTRUCTIONS["wyckoff"] in pipe.tokenizer.decode(force.prompt)
    assert sample["error"] is None and sample["spacegroup"] == 225 and sample["wyckoff"] == ["4a", "4b"]
    assert len(sample["structure"]) == 2 and StructureMatcher().fit(sample["structure"], rocksalt())
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"samples{suffix}"
        SampleWriter(path).write([sample], 0)
        row = (
            pd.read_csv(path).iloc[0].to_dict()
            if suffix == ".csv"
            else json.loads(path.read_text().splitlines()[0])
        )
        assert row["spacegroup"] == 225 and row["wyckoff"] == "4a 4b"


def test_pipeline_of_a_model_without_format_is_xyz(tmp_path):
    pipe = pipeline("crystal-generation", model=str(save_tiny_llama(tmp_path / "m")))
    assert pipe.crystal_format == "xyz"
    force = _Write(pipe.tokenizer, encode(rocksalt()))
    [sample] = pipe(logits_processor=LogitsProcessorList([force]), temperature=0, constrain=False)
    assert sample["error"] is None and sample["spacegroup"] is None and sample["wyckoff"] is None


def test_lora_adapter_takes_its_bases_format(tmp_path, capsys):
    base = save_tiny_llama(tmp_path / "base")  # no crystal_format: xyz
    data = crystal_dataset(tmp_path / "data")
    argv = [
        "train",
        "lora",
        "--model",
        str(base),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path / "a"),
    ]
    assert main([*argv, "--crystal_format", "wyckoff"]) == 2
    assert "writes xyz text" in capsys.readouterr().err
