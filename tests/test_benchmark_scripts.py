"""Benchmark scripts run end to end on tiny models and write what they promise."""

import json
import runpy
import sys
from pathlib import Path

import pytest
from factories import structures

from hf_crystal.testing import save_tiny_llama

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run_script(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_sampling_sweep_writes_cells_table_and_heat_maps(tmp_path, monkeypatch, capsys):
    model = save_tiny_llama(tmp_path / "llm")
    reference = tmp_path / "reference.cif"
    reference.write_text("".join(s.to(fmt="cif") for s in structures().values()))
    out = tmp_path / "sweep"
    argv = ["--model", str(model), "--reference", str(reference), "--temperatures", "0.5", "1.0"]
    argv += ["--top-p", "1.0", "--num", "4", "--batch-size", "4", "--out", str(out)]
    _run_script("sweep_sampling.py", argv, monkeypatch)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 0.5 |", "| 1 |"))]
    assert len(table) == 2
    for cell in ("T0.5_p1", "T1_p1"):
        metrics = json.loads((out / f"{cell}.json").read_text())
        assert metrics["n_samples"] + metrics["n_unreadable"] == 4  # every sample counted, parsed or not
        assert 0 <= metrics["struct_valid"] <= 1
    assert (out / "sweep.png").stat().st_size > 1000
    # A rerun reuses the finished cells (their files are not rewritten).
    stamp = (out / "T1_p1.json").stat().st_mtime_ns
    _run_script("sweep_sampling.py", argv, monkeypatch)
    assert (out / "T1_p1.json").stat().st_mtime_ns == stamp


def test_loss_curves_put_stages_one_after_another(tmp_path, monkeypatch, capsys):
    for name, losses in (("s1", [3.0, 2.0, 1.0, 1.0]), ("s2", [0.9, 0.7])):
        log = [{"step": 10 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_log.json").write_text(
            json.dumps([*log, {"step": 40, "train_runtime": 1.0}])
        )
    out = tmp_path / "loss.png"
    argv = [
        f"one={tmp_path / 's1'}",
        f"two={tmp_path / 's2' / 'train_log.json'}",
        "--stages",
        "--window",
        "20",
    ]
    _run_script("loss_curves.py", [*argv, "--out", str(out)], monkeypatch)
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| one") or line.startswith("| two")
    ]
    assert rows == ["| one | 1-20 | 2.500 |", "| one | 21-40 | 1.000 |", "| two | 41-60 | 0.800 |"]
    assert out.stat().st_size > 1000


def test_loss_curves_say_what_is_missing(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _run_script("loss_curves.py", [str(tmp_path / "nowhere")], monkeypatch)
    assert "no train_log.json there" in capsys.readouterr().err


def test_anion_balance_sorts_cells_by_anion_share_and_counts_unbalanced(tmp_path, monkeypatch, capsys):
    from pymatgen.core import Lattice, Structure

    def cell(species):
        coords = [[i / len(species), 0.5, 0.5] for i in range(len(species))]
        return Structure(Lattice.cubic(3.0 * len(species)), species, coords)

    # No anion; NaCl (half anions, balanced); Na3Cl and NaCl3 (a quarter and three quarters, neither balanced).
    cells = [cell(["Na"]), cell(["Na", "Cl"]), cell(["Na", "Na", "Na", "Cl"]), cell(["Na", "Cl", "Cl", "Cl"])]
    source = tmp_path / "samples.cif"
    source.write_text("".join(s.to(fmt="cif") for s in cells))
    _run_script("anion_balance.py", [f"t={source}"], monkeypatch)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| t")]
    assert rows == ["| t | 4 | 0.250 (0.00) | 0.250 (1.00) | 0.250 (0.00) | 0.250 (1.00) | 0.500 |"]


def test_compare_bases_loads_an_adapter_on_another_base(tmp_path, monkeypatch, capsys):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hf_crystal.loading import load_crystal_model

    first, second = save_tiny_llama(tmp_path / "first", seed=0), save_tiny_llama(tmp_path / "second", seed=1)
    adapter = tmp_path / "adapter"
    lora = LoraConfig(
        r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(first), lora).save_pretrained(adapter)
    load = runpy.run_path(str(BENCHMARKS / "compare_bases.py"))["load"]

    def weights(model):
        return model.state_dict()["model.layers.0.self_attn.q_proj.weight"]

    # Merged, the adapter adds the same nonzero update to whichever base it is put on.
    on_first, on_second = load(str(adapter))[0], load(f"{adapter}@{second}")[0]
    delta_first = weights(on_first) - weights(AutoModelForCausalLM.from_pretrained(first))
    delta_second = weights(on_second) - weights(AutoModelForCausalLM.from_pretrained(second))
    assert delta_first.abs().max() > 1e-4
    torch.testing.assert_close(delta_first, delta_second)
    with pytest.raises(ValueError, match="is not an adapter"):
        load_crystal_model(first, base=second)

    argv = [str(first), f"{adapter}@{second}", "--num", "3", "--batch-size", "3", "--threads", "1"]
    _run_script("compare_bases.py", argv, monkeypatch)
    rows = [
        line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tmp_path}")
    ]
    assert [row[0] for row in rows] == [f"| {first}", f"| {adapter}@{second}"]
    for row in rows:
        assert row[1] == "3" and all("[" in cell and "]" in cell for cell in row[3:5])  # rates with intervals
