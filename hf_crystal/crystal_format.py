"""The crystal text formats a model or dataset can be in, and how it says which (`crystal_format`).

A dataset records its format in its card and info, a model in its config (`config.crystal_format`, with
`config.crystal_format_setting` for the Wyckoff setting); readers that find none assume `DEFAULT_FORMAT`,
the format of every model trained before the Wyckoff text existed. Light on purpose: the command line
imports it at start.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CRYSTAL_FORMATS",
    "DEFAULT_FORMAT",
    "FORMAT_DESCRIPTIONS",
    "WYCKOFF_SETTING",
    "check_format",
    "format_of",
]

#: The crystal text formats: Gruver et al.'s coordinates ("xyz") and Wyckoff text ("wyckoff").
CRYSTAL_FORMATS = ("xyz", "wyckoff")
#: The format of a model or dataset that does not name one.
DEFAULT_FORMAT = "xyz"
#: The one setting every Wyckoff text is written in; a model's config carries it as `crystal_format_setting`.
WYCKOFF_SETTING = (
    "ITA standard, origin choice 2, hexagonal axes for R, unique axis b (pyxtal 1.1 Hall numbers)"
)
#: One line per format, for help texts and cards.
FORMAT_DESCRIPTIONS = {
    "xyz": "lattice lengths and angles, then element and fractional coordinates of every site (Gruver et al.)",
    "wyckoff": "space group, free lattice parameters, then element, Wyckoff label and free coordinates per orbit",
}


def check_format(format: str) -> str:
    """`format` if it is one of `CRYSTAL_FORMATS`, else ValueError."""
    if format not in CRYSTAL_FORMATS:
        raise ValueError(f"unknown crystal format {format!r}; use one of {', '.join(CRYSTAL_FORMATS)}")
    return format


def format_of(config: Any) -> str:
    """The `crystal_format` of a model config (or any object or mapping holding one); "xyz" if absent."""
    value = (
        config.get("crystal_format") if isinstance(config, dict) else getattr(config, "crystal_format", None)
    )
    return check_format(value or DEFAULT_FORMAT)
