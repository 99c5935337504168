"""The embedded default bundle (`hf_crystal.embedded`): Hub ids resolved to the package's folders, the task defaults
and `hf-crystal generate` offline with no Hub reachable, the demo, and the installed wheel.

Offline runs are fresh interpreters (the Hub libraries read HF_HUB_OFFLINE and HF_ENDPOINT when imported) with
an unreachable endpoint and an empty cache. Until the default adapter is in `models/`, they use a temporary
models folder: the package's base and refiner plus a throwaway adapter on the base.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pymatgen.core import Composition
from transformers import AutoModelForCausalLM

from hf_crystal import embedded
from hf_crystal.embedded import (
    BASE_MODEL,
    DEFAULT_MODEL,
    DEFAULT_REFINER,
    EMBEDDED,
    WYCKOFF_BASE,
    WYCKOFF_MODEL,
    WYCKOFF_REFINER,
)
from hf_crystal.hub import folder_kind
from hf_crystal.structure_io import read_structures

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    BASE_MODEL: "base",
    DEFAULT_MODEL: "adapter",
    DEFAULT_REFINER: "refiner",
    WYCKOFF_BASE: "base",
    WYCKOFF_MODEL: "adapter",
    WYCKOFF_REFINER: "refiner",
}


def _name(repo_id: str) -> str:
    return repo_id.split("/")[-1]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The models folder to test with: the package's own once it holds the default adapter, else a temporary one."""
    own = embedded.models_dir()
    if (own / _name(DEFAULT_MODEL)).is_dir():
        return own
    folder = tmp_path_factory.mktemp("models")
    for repo_id in (BASE_MODEL, DEFAULT_REFINER):
        (folder / _name(repo_id)).symlink_to(own / _name(repo_id))
    torch.manual_seed(0)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(own / _name(BASE_MODEL)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    adapter.save_pretrained(folder / _name(DEFAULT_MODEL))
    config = (
        folder / _name(DEFAULT_MODEL) / "adapter_config.json"
    )  # the base by Hub id, as `train lora` writes it
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": BASE_MODEL}))
    return folder


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No Hub (an unreachable endpoint, offline) and an empty cache."""
    home = tmp_path / "hf-home"
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    return env | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }


def _run(code: str, bundle: Path, tmp_path: Path, python: str = sys.executable) -> str:
    """Standard output of `code` in a fresh offline interpreter run from `tmp_path`, with `bundle` as the models."""
    prelude = "import torch\ntorch.set_num_threads(1)\n"
    if bundle != embedded.models_dir():
        prelude += f"import hf_crystal.embedded\nhf_crystal.embedded.models_dir = lambda: __import__('pathlib').Path({str(bundle)!r})\n"
    result = subprocess.run(
        [python, "-c", prelude + code],
        cwd=tmp_path,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_embedded_ids_resolve_to_the_package_folders(tmp_path, monkeypatch, bundle):
    base = embedded.models_dir() / _name(BASE_MODEL)
    assert (base / "config.json").is_file()  # installed as package data (hf_crystal.models)
    assert embedded.resolve(BASE_MODEL) == embedded.resolve(BASE_MODEL, "main") == (str(base), None)
    assert embedded.resolve(BASE_MODEL, "v2") == (BASE_MODEL, "v2")  # an explicit revision goes to the Hub
    assert embedded.resolve("someone/crystal-llm") == ("someone/crystal-llm", None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / BASE_MODEL).mkdir(parents=True)
    assert embedded.resolve(BASE_MODEL) == (BASE_MODEL, None)  # a local folder of that name wins
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(embedded, "models_dir", lambda: bundle)
    assert embedded.refiner_for(DEFAULT_MODEL) == DEFAULT_REFINER
    assert embedded.refiner_for(DEFAULT_MODEL, "v2") is None and embedded.refiner_for(BASE_MODEL) is None


def test_bundle_folders_are_what_the_registry_says(bundle):
    for repo_id, entry in EMBEDDED.items():
        folder = bundle / _name(repo_id)
        assert folder_kind(folder) == KINDS[repo_id]
        if entry.base is not None:
            config = json.loads((folder / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == entry.base
            if (
                folder / "tokenizer.json"
            ).exists():  # a task default reads the base's tokenizer (EmbeddedDefault)
                base_tokenizer = bundle / _name(entry.base) / "tokenizer.json"
                assert (folder / "tokenizer.json").read_bytes() == base_tokenizer.read_bytes()
        if entry.refiner is not None:
            assert KINDS[entry.refiner] == "refiner"


def test_a_default_that_cannot_load_fails_clearly_instead_of_loading_the_bare_base(tmp_path, monkeypatch):
    from transformers import pipeline

    (tmp_path / _name(BASE_MODEL)).symlink_to(embedded.models_dir() / _name(BASE_MODEL))
    monkeypatch.setattr(embedded, "models_dir", lambda: tmp_path)  # no adapter in this installation
    with pytest.raises(
        embedded.EmbeddedModelError, match=f"the default model {DEFAULT_MODEL} is not in this installation"
    ):
        pipeline("crystal-infill")


_DEFAULTS = """
import json
from pymatgen.core import Composition, Lattice, Structure
from transformers import pipeline
import hf_crystal
from hf_crystal.commands import main
from hf_crystal.evaluation.validity import validity_flags

pipe = pipeline("crystal-generation")
conditions = [{"formula": f} for f in ("NaCl", "MgO", "ZnS")]
greedy = [group[0] for group in pipe(conditions, temperature=0)]
greedy_again = [group[0] for group in pipe(conditions, do_sample=False, batch_size=3)]
sampled = pipe(2, seed=0)
plain = pipeline("crystal-generation", refiner=None)
infill = pipeline("crystal-infill")
nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
ranked = infill(nacl, mask_element="Na", num_candidates=5)["candidates"]
codes = [
    main(["generate", "--num", "2", "--formula", "NaCl", "--temperature", "0", "--out", "refined.cif"]),
    main(["generate", "--num", "2", "--no-refiner", "--seed", "0", "--out", "plain.cif"]),
]
print(json.dumps({
    "models": [p.model.name_or_path for p in (pipe, plain, infill)],
    "refiners": [p.refiner is not None for p in (pipe, plain)],
    "greedy": [
        {
            "asked": c["formula"],
            "formula": s["structure"].composition.formula if s["structure"] else None,
            "llm_valid": s["structure"] is not None and validity_flags(s["structure"])["struct_valid"],
            "refined_valid": s["refined_structure"] is not None
            and validity_flags(s["refined_structure"])["struct_valid"],
            "refined_formula": s["refined_structure"].composition.formula if s["refined_structure"] else None,
        }
        for c, s in zip(conditions, greedy)
    ],
    "greedy_same": [s["text"] for s in greedy] == [s["text"] for s in greedy_again],
    "sampled_refined": all("refined_structure" in s for s in sampled),
    "plain_keys": sorted(plain(1, seed=0)[0]),
    "infill": ranked,
    "codes": codes,
}))
"""


def test_default_pipelines_and_generate_work_offline(bundle, tmp_path):
    result = json.loads(_run(_DEFAULTS, bundle, tmp_path).splitlines()[-1])
    assert result["models"] == [DEFAULT_MODEL] * 3 and result["refiners"] == [True, False]
    for sample in result["greedy"]:  # temperature 0: greedy, constrained to the formula
        assert sample["formula"] == sample["refined_formula"]
        assert Composition(sample["formula"]).reduced_formula == sample["asked"]
        assert sample["llm_valid"] and sample["refined_valid"], sample
    assert result["greedy_same"] and result["sampled_refined"]
    assert "refined_structure" not in result["plain_keys"]  # refiner=None switches the default's refiner off
    probabilities = [c["probability"] for c in result["infill"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert "Na" not in {c["element"] for c in result["infill"]}
    assert result["codes"] == [0, 0]
    record = json.loads((tmp_path / "refined.generation.json").read_text())
    assert (record["model"], record["refiner"]) == (DEFAULT_MODEL, DEFAULT_REFINER)
    _, structures, _ = read_structures(tmp_path / "refined.cif")
    assert [s.composition.reduced_formula for s in structures] == ["NaCl"] * 2
    assert (tmp_path / "refined.llm.cif").exists() and not (tmp_path / "plain.llm.cif").exists()


_WYCKOFF = """
import json
from transformers import pipeline
import hf_crystal
from hf_crystal.embedded import WYCKOFF_MODEL
from hf_crystal.loading import load_crystal_model

model, tokenizer = load_crystal_model(WYCKOFF_MODEL, merge=True)
pipe = pipeline("crystal-generation", model=model, tokenizer=tokenizer)
sample = pipe({"formula": "NaCl", "spacegroup": 225}, temperature=0)[0]
print(json.dumps({
    "format": pipe.crystal_format,
    "refiner": pipe.refiner is not None,
    "spacegroup": sample["spacegroup"],
    "formula": sample["refined_structure"].composition.reduced_formula,
    "refined_group": sample["refined_structure"].get_space_group_info(symprec=0.01)[1],
}))
"""


def test_the_wyckoff_model_loads_by_id_offline_with_its_refiner(bundle, tmp_path):
    if not (bundle / _name(WYCKOFF_MODEL)).is_dir():
        pytest.skip("the Wyckoff adapter is not in this models folder")
    result = json.loads(_run(_WYCKOFF, bundle, tmp_path).splitlines()[-1])
    assert result["format"] == "wyckoff" and result["refiner"]
    # Constrained to the group and formula; the refiner keeps the group the text wrote.
    assert result["spacegroup"] == result["refined_group"] == 225 and result["formula"] == "NaCl"


def test_demo_runs_end_to_end(bundle, tmp_path):
    demo = ROOT / "examples" / "demo.py"
    code = f"import runpy, sys\nsys.argv = ['demo.py', '--num', '4']\nrunpy.run_path({str(demo)!r}, run_name='__main__')"
    printed = _run(code, bundle, tmp_path)
    rows = [line.split() for line in printed.splitlines() if line[:2].strip().isdigit() and line[2:4] == "  "]
    assert [row[1] for row in rows] == ["-", "-", "SrTiO3", "LiFePO4"], printed
    assert "4 crystals in" in printed
    ids, structures, skipped = read_structures(tmp_path / "outputs" / "demo" / "samples.cif")
    assert len(ids) + len(skipped) <= 4 and [s.composition.reduced_formula for s in structures[-2:]] == [
        "SrTiO3",
        "LiFePO4",
    ]


def _repo_files() -> list[str]:
    """What a clean clone holds, plus files not yet committed (but not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.mark.slow  # builds and installs a wheel (about 16 s); tests/test_packaging.py checks the package data fast
def test_wheel_installs_and_generates_offline(bundle, tmp_path):
    start = time.perf_counter()
    source = tmp_path / "source"
    for name in _repo_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    adapter = source / "models" / _name(DEFAULT_MODEL)
    if not adapter.exists():
        shutil.copytree(bundle / _name(DEFAULT_MODEL), adapter)
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", tmp_path], check=True
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = str(venv / "bin" / "python")
    wheel = next(tmp_path.glob("hf_crystal-*.whl"))
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True)
    # torch, transformers, ... from this environment; hf_crystal only from the wheel.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = """
import json
import hf_crystal
from transformers import pipeline
from hf_crystal.embedded import models_dir
pipe = pipeline("crystal-generation")
samples = pipe({"formula": "NaCl"}, num_return_sequences=2, temperature=0)
print(json.dumps({
    "file": hf_crystal.__file__, "models": str(models_dir()), "model": pipe.model.name_or_path,
    "formulas": [s["refined_structure"].composition.reduced_formula for s in samples],
    "valid": [s["refined_valid"] for s in samples],
}))
"""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = json.loads(_run(code, embedded.models_dir(), elsewhere, python=python).splitlines()[-1])
    assert Path(result["file"]).is_relative_to(venv) and Path(result["models"]).is_relative_to(venv)
    assert result["model"] == DEFAULT_MODEL
    assert result["formulas"] == ["NaCl"] * 2 and all(result["valid"])
    print(f"wheel build, install and offline generation: {time.perf_counter() - start:.1f} s")
