"""The hand-written package list in pyproject.toml misses no subpackage and ships the card templates."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hf_crystal").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "hf_crystal.model_cards" in listed


def test_card_templates_are_importable_resources():
    from hf_crystal.cards import template_path

    assert Path(template_path("dataset_card.md")).read_text().startswith("---")
