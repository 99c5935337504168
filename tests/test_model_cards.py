"""Model cards (base, adapter, refiner): Hub metadata, and evaluation results only where measured."""

import json

import pytest
from huggingface_hub import ModelCard

from hf_crystal.cards import MetricsFormatError, read_metrics, render_model_card

METRICS = {
    "dataset": {"name": "MP-20 test", "type": "tester/mp20", "split": "test"},
    "n_samples": 1000,
    "note": "E_hull against a CHGNet hull",
    "metrics": {
        "validity": {"structural": 0.95, "compositional": 0.81},
        "stable_rate": 0.12,
        "sun_rate": None,  # not measured
        "coverage_recall": float("nan"),  # not measured
        "hull": "chgnet",  # not a number
    },
}


def _reparsed(card: ModelCard) -> dict:
    """The metadata as the Hub reads it: from the rendered text."""
    return ModelCard(str(card)).data.to_dict()


@pytest.mark.parametrize(
    ("kind", "library"), [("base", "transformers"), ("adapter", "peft"), ("refiner", "diffusers")]
)
def test_metadata_of_each_kind(kind, library, tmp_path):
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps(METRICS))
    card = render_model_card(
        kind,
        repo_id="tester/crystal-model",
        base_model="tester/crystal-base" if kind != "base" else None,
        datasets=["tester/mp20"],
        license="mit",
        hyperparameters={"learning_rate": 1e-4, "lora_r": 8},
        training_results={"optimizer steps": 100},
        metrics=metrics_file,
        tags=["lora"],
    )
    data = _reparsed(card)
    assert data["library_name"] == library
    assert data["license"] == "mit"
    assert data["datasets"] == ["tester/mp20"]
    assert data["tags"][0] == "crystal-generation" and "lora" in data["tags"]
    assert data["hyperparameters"] == {"learning_rate": 1e-4, "lora_r": 8}
    assert data.get("base_model") == ("tester/crystal-base" if kind != "base" else None)
    results = data["model-index"][0]["results"]
    assert len(results) == 1 and results[0]["dataset"] == {
        "name": "MP-20 test",
        "type": "tester/mp20",
        "split": "test",
    }
    measured = {m["type"]: m["value"] for m in results[0]["metrics"]}
    assert measured == {"validity/structural": 0.95, "validity/compositional": 0.81, "stable_rate": 0.12}
    text = str(card)
    assert "| stable_rate | 0.12 |" in text and "1000 samples; E_hull against a CHGNet hull" in text
    assert "sun_rate" not in text and "coverage_recall" not in text


def test_without_measurements_the_card_shows_no_numbers():
    card = render_model_card("adapter", repo_id="tester/a", base_model="tester/b")
    data = _reparsed(card)
    assert "model-index" not in data and "hyperparameters" not in data and "license" not in data
    text = str(card)
    assert "## Evaluation" not in text and "## Training hyperparameters" not in text
    assert 'AutoModelForCausalLM.from_pretrained("tester/a")' in text


def test_flat_metrics_json_of_evaluate():
    flat = {
        "n_samples": 20,
        "n_unreadable": 3,
        "struct_valid": 0.85,
        "novel_rate": None,  # NaN written as null: not measured
        "stable_rate": 0.1,
        "hull": "self-consistent CHGNet hull",
        "hull_entries": 120,
        "flag": True,
    }
    values, context = read_metrics(flat)
    assert values == {"struct_valid": 0.85, "stable_rate": 0.1}
    assert context == {"dataset": {}, "n_samples": 20, "hull": "self-consistent CHGNet hull"}
    card = render_model_card("base", repo_id="tester/m", datasets=["tester/d"], metrics=flat)
    result = _reparsed(card)["model-index"][0]["results"][0]
    assert result["dataset"]["type"] == "tester/d"  # the training dataset stands in when none is named
    assert "20 samples; hull: self-consistent CHGNet hull" in str(card)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown card kind"):
        render_model_card("tokenizer", repo_id="a/b")
    with pytest.raises(ValueError, match="must be a Hub id"):
        render_model_card("adapter", repo_id="a/b", base_model=str(tmp_path))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(MetricsFormatError):
        read_metrics(tmp_path / "bad.json")
    with pytest.raises(MetricsFormatError):
        read_metrics(tmp_path / "missing.json")


def test_a_named_section_is_replaced_not_repeated_and_metrics_keep_their_own():
    from hf_crystal.cards import card_with_metrics, card_with_section

    card = render_model_card("base", repo_id="m")
    card = card_with_section(card_with_metrics(card, {"cov_recall": 0.5}), "benchmark", "## Benchmark\n\nold")
    card = card_with_section(card, "benchmark", "## Benchmark\n\nnew")
    card = card_with_metrics(card, {"cov_recall": 0.7})
    text = str(card)
    assert text.count("## Benchmark") == 1 and "new" in text and "old" not in text
    assert text.count("## Evaluation results") == 1 and "| cov_recall | 0.7 |" in text
    assert ModelCard(text).data.eval_results[0].metric_value == 0.7
