"""Benchmark scripts run end to end on tiny models and write what they promise."""

import json
import runpy
import sys
from pathlib import Path

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
