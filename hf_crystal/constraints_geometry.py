"""Spacing for constrained Wyckoff decoding: the next tokens that would write an atom closer than `min_distance`
to another, read from the text written so far (`WyckoffLogitsProcessor` masks them).

Once the lattice line is written, two moments place atoms: the last free coordinate of an orbit (its value
places the whole orbit) and a fixed Wyckoff position (no value to choose). For the first, the 100 values
"0.00"-"0.99" are tried at once, and a token is blocked when every value it can still lead to puts the orbit's
representative site closer than `min_distance` to an atom already written or to another site of its own orbit
(a collapsed orbit); by symmetry the representative stands for every site of the orbit, and the atoms written
for every site of theirs. For the second, a fixed position whose site is that close to an atom written is
blocked. Earlier coordinates of an orbit are not looked ahead, and a position is not kept free for the orbits
still to come: when every token the grammar allows would be blocked, none is (the grammar's guarantees, every
sample decoding with the requested composition, come first) and the sample is written as without spacing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from hf_crystal.text import CrystalParseError
from hf_crystal.text_wyckoff import WyckoffPosition, WyckoffText, parse, space_group_table

__all__ = ["blocked_tokens"]

_VALUES = np.arange(100) / 100  # every "0.dd"
_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)
_VALUE_CHARS = frozenset("0123456789.")


def _shortest(diff: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Shortest length over periodic images of fractional differences `diff` (..., k, 3), minimised over k."""
    wrapped = diff - np.round(diff)
    lengths = np.linalg.norm((wrapped[..., None, :] + _SHIFTS) @ matrix, axis=-1)  # (..., k, 27)
    return lengths.min(axis=(-1, -2), initial=np.inf)


def _atoms(crystal: WyckoffText) -> np.ndarray:
    """(n, 3) conventional fractional coordinates of every site of every orbit."""
    sites = [orbit.position.sites(orbit.values) for orbit in crystal.orbits]
    return np.concatenate(sites) if sites else np.zeros((0, 3))


def _last_value_ok(
    position: WyckoffPosition,
    earlier: Sequence[float],
    atoms: np.ndarray,
    matrix: np.ndarray,
    min_distance: float,
) -> np.ndarray:
    """(100,) bool: which last free values "0.dd" keep the orbit `min_distance` from `atoms` and from itself."""
    xyz = np.zeros(3)
    xyz[list(position.free[:-1])] = earlier
    base = position.rotations @ xyz + position.translations  # (m, 3) sites at last value 0
    step = position.rotations[:, :, position.free[-1]]  # (m, 3) their change per unit of the last value
    sites = base[None] + _VALUES[:, None, None] * step[None]  # (100, m, 3)
    representative = sites[:, :1]
    nearest = _shortest(representative - sites[:, 1:], matrix)
    if len(atoms):
        nearest = np.minimum(nearest, _shortest(representative - atoms[None], matrix))
    return nearest >= min_distance


def _fixed_ok(position: WyckoffPosition, atoms: np.ndarray, matrix: np.ndarray, min_distance: float) -> bool:
    site = position.sites(())[:1]
    return not len(atoms) or bool(_shortest(site - atoms, matrix) >= min_distance)


def _value_prefix(text: str) -> str:
    """The leading characters of `text` that can belong to a coordinate value."""
    return "".join(itertools.takewhile(_VALUE_CHARS.__contains__, text))


def blocked_tokens(
    state: tuple, moves: dict[int, tuple], text: str, token_texts: Sequence[str | None], min_distance: float
) -> list[int]:
    """Tokens among `moves` ({token: next state} of the grammar state `state`, after the completion `text`) that
    would write an atom closer than `min_distance` (Å) to another; [] when none would, or when all would."""
    phase = state[0]
    if phase == "value" and state[2] == 1:  # the last free coordinate of an orbit
        blocked = _blocked_values(state[3], moves, text, token_texts, min_distance)
    elif phase == "label":
        blocked = _blocked_fixed(state, moves, text, min_distance)
    else:
        return []
    return [] if len(blocked) == len(moves) else blocked


def _blocked_values(k: int, moves, text: str, token_texts, min_distance: float) -> list[int]:
    # The orbit line so far, its last value's characters cut off (k - 1 of "0.dd" are written after its space).
    head, _, line = text.rpartition("\n")
    written = line[len(line) - (k - 1) :] if k > 1 else ""
    fields = (line[: len(line) - len(written)] if written else line).split()
    try:
        crystal = parse(head + "\n" + " ".join([*fields, "0"]))
    except CrystalParseError:
        return []
    orbit = crystal.orbits[-1]
    ok = _last_value_ok(
        orbit.position,
        orbit.values[:-1],
        _atoms(WyckoffText(crystal.spacegroup, crystal.lattice, crystal.orbits[:-1])),
        crystal.lattice.matrix,
        min_distance,
    )
    if ok.all():
        return []
    blocked = []
    for token in moves:
        reading = token_texts[token] or ""
        value = written + _value_prefix(reading[1:] if k == 0 and reading.startswith(" ") else reading)
        digits = value[2:4] if value.startswith("0.") else ""
        if len(digits) == 2:
            allowed = ok[int(digits)]
        elif len(digits) == 1:
            allowed = ok[int(digits) * 10 : int(digits) * 10 + 10].any()
        else:
            allowed = ok.any()
        if not allowed:
            blocked.append(token)
    return blocked


def _blocked_fixed(state: tuple, moves, text: str, min_distance: float) -> list[int]:
    used = state[1][2]
    placed = {
        token: next(iter(after[1][2] - used))
        for token, after in moves.items()
        if after[0] != "done" and len(after) > 1 and after[1][2] != used
    }
    if not placed:
        return []
    head = text.rpartition("\n")[0]
    if head.count("\n") < 2:  # no orbit written yet: nothing to be close to
        return []
    try:
        crystal = parse(head)
    except CrystalParseError:
        return []
    atoms, matrix = _atoms(crystal), crystal.lattice.matrix
    table = {p.label: p for p in space_group_table(crystal.spacegroup).positions}
    return [
        token for token, label in placed.items() if not _fixed_ok(table[label], atoms, matrix, min_distance)
    ]
