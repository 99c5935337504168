"""Geometry for constrained Wyckoff decoding: the next tokens that would place atoms badly, read from the text
written so far (`WyckoffLogitsProcessor` masks them).

Once the lattice line is written, a Wyckoff label and the last free coordinate of an orbit place atoms. A choice
is blocked when

- spacing: it puts an atom closer than `min_distance` to an atom already written or to another site of its own
  orbit (a collapsed orbit). By symmetry the orbit's representative site stands for all its sites, and the atoms
  written for all of theirs, so the 100 values "0.00"-"0.99" of a coordinate are tried at once; a fixed position
  is tried when its label is written.
- symmetry, when a space group was requested: the crystal cannot end in that group at `SYMPREC` (spglib) but
  only in a larger one, e.g. four fixed positions of F-43m holding a crystal of Fd-3m. With a composition, a
  label is kept when some way of writing the rest of the composition (orbits on the positions left, free
  coordinates drawn at random) ends in the group, and the orbit that completes the composition only takes
  values that do; without one, EOS waits until the crystal written is in the group.

Earlier coordinates of an orbit are not looked ahead. When every token the grammar allows would be blocked, the
symmetry rule is dropped, then spacing: the grammar's guarantees (every sample decodes, with the requested
composition) come first.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import spglib
from pymatgen.core import Element, Lattice

from hf_crystal.orbit_counts import fillable, positions
from hf_crystal.text import CrystalParseError
from hf_crystal.text_wyckoff import (
    ANGLE_TOLERANCE,
    SYMPREC,
    WyckoffPosition,
    WyckoffText,
    _full_parameters,
    lattice_parameter_names,
    parse,
    space_group_table,
)

__all__ = ["blocked_tokens", "group_reachable"]

_VALUES = np.arange(100) / 100  # every "0.dd"
_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)
_VALUE_CHARS = frozenset("0123456789.")
_LABEL = re.compile(r"\d+[a-zA-Z]")
# Endings of a crystal tried before a label (a request) is taken as able to end in its group, and random draws of
# the free coordinates (one spglib call each) per ending.
_LABEL_BUDGET = 16
_REQUEST_BUDGET = 128
_DRAWS = 2


def _shortest(diff: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Shortest length over periodic images of fractional differences `diff` (..., k, 3), minimised over k."""
    wrapped = diff - np.round(diff)
    lengths = np.linalg.norm((wrapped[..., None, :] + _SHIFTS) @ matrix, axis=-1)  # (..., k, 27)
    return lengths.min(axis=(-1, -2), initial=np.inf)


class _Written:
    """The atoms of a parsed Wyckoff text (conventional cell): spacing and space group of candidate orbits."""

    def __init__(self, crystal: WyckoffText):
        self.number, self.matrix = crystal.spacegroup, crystal.lattice.matrix
        self.table = space_group_table(crystal.spacegroup)
        sites = [orbit.position.sites(orbit.values) for orbit in crystal.orbits]
        self.atoms = np.concatenate(sites) if sites else np.zeros((0, 3))
        self.numbers = [Element(o.element).Z for o, s in zip(crystal.orbits, sites, strict=True) for _ in s]

    def spaced(self, sites: np.ndarray, min_distance: float) -> np.ndarray:
        """(k,) bool: whether the representative `sites[:, 0]` of k candidate orbits (k, m, 3) keeps
        `min_distance` from the written atoms and from the orbit's other sites."""
        representative = sites[:, :1]
        nearest = _shortest(representative - sites[:, 1:], self.matrix)
        if len(self.atoms):
            nearest = np.minimum(nearest, _shortest(representative - self.atoms[None], self.matrix))
        return nearest >= min_distance

    def in_group(self, orbits: Sequence[tuple[str, np.ndarray]] = ()) -> bool:
        """Whether the written atoms with `orbits` ((element, sites (m, 3)), ...) are in group `number`."""
        atoms = np.concatenate([self.atoms, *(sites for _, sites in orbits)])
        numbers = [*self.numbers, *(Element(e).Z for e, sites in orbits for _ in sites)]
        data = spglib.get_symmetry_dataset(
            (self.matrix, np.mod(atoms, 1.0), numbers), symprec=SYMPREC, angle_tolerance=ANGLE_TOLERANCE
        )
        return data is not None and data.number == self.number

    def completes(
        self, orbits: list[tuple[str, WyckoffPosition]], remaining: tuple, used: frozenset[str], budget: int
    ) -> bool:
        """Whether, after `orbits` ((element, Wyckoff position), ...), the atoms left, `remaining` ((element,
        count), ...), can be written on positions other than the fixed ones `used` so that the crystal ends in
        group `number`: `budget` endings tried, general positions first, each with `_DRAWS` random draws of the
        free coordinates (a draw can fall near a special position by chance); True when undecided."""
        rng = np.random.default_rng(0)
        order = sorted(positions(self.number), key=lambda p: (-p[2], -p[1]))
        tried = 0

        def ends_in_group(path) -> bool:
            return any(
                self.in_group([(e, p.sites(rng.random(p.dof))) for e, p in path]) for _ in range(_DRAWS)
            )

        def search(orbits, remaining, used, start=0) -> bool:
            nonlocal tried
            left = [(e, n) for e, n in remaining if n]
            if not left:
                tried += 1
                return ends_in_group(orbits)
            element, count = left[0]
            for i, (label, atoms, _, fixed) in enumerate(order[start:], start):
                if atoms > count or (fixed and label in used):
                    continue
                after = tuple((e, n - atoms if e == element else n) for e, n in left)
                taken = used | {label} if fixed else used
                if not fillable(self.number, tuple(sorted(n for _, n in after if n)), taken):
                    continue
                # The element's next orbit from position i on: each set of positions tried once, in one order.
                again = i if dict(after)[element] else 0
                orbit = (element, self.table.by_letter[label[-1]])
                if search([*orbits, orbit], after, taken, again) or tried >= budget:
                    return True
            return False

        return search(list(orbits), remaining, used)


class _LastValue:
    """The choices of an orbit's last free coordinate: spacing of all 100 values at once, the group on demand."""

    def __init__(self, text: str, min_distance: float, final: bool):
        crystal = parse(text)  # the orbit's last value written as 0
        orbit = crystal.orbits[-1]
        self.written = _Written(WyckoffText(crystal.spacegroup, crystal.lattice, crystal.orbits[:-1]))
        self.element, position = orbit.element, orbit.position
        base = np.zeros(3)
        base[list(position.free)] = [*orbit.values[:-1], 0.0]
        step = position.rotations[:, :, position.free[-1]]  # (m, 3): the sites' change per unit of the value
        self.sites = (position.rotations @ base + position.translations)[None] + _VALUES[:, None, None] * step
        self.spaced = self.written.spaced(self.sites, min_distance)
        self.final = final
        self._in_group: dict[int, bool] = {}

    def ok(self, values: range, symmetry: bool) -> bool:
        """Whether any of the values with indices `values` (hundredths) is allowed."""
        return any(self.spaced[i] and (not (symmetry and self.final) or self._group(i)) for i in values)

    def _group(self, i: int) -> bool:
        if i not in self._in_group:
            self._in_group[i] = self.written.in_group([(self.element, self.sites[i])])
        return self._in_group[i]


@lru_cache(maxsize=256)
def _last_value(text: str, min_distance: float, final: bool) -> _LastValue:
    return _LastValue(text, min_distance, final)


@lru_cache(maxsize=256)
def _written(text: str) -> _Written:
    """The atoms of complete Wyckoff text `text`, which may end after its lattice line."""
    lines = text.split("\n")
    if (
        len(lines) == 2
    ):  # no orbit yet: the lattice, read with a placeholder orbit on position "a" then dropped
        a = space_group_table(int(lines[0])).positions[0]
        crystal = parse("\n".join([*lines, f"H {a.label}" + " 0" * a.dof]))
        return _Written(WyckoffText(crystal.spacegroup, crystal.lattice, ()))
    return _Written(parse(text))


# Lattice parameters of no special metric, for `group_reachable` (the lattice the model writes is not known yet).
# Lengths of about twice MP-20's, so that random coordinates rarely fall within `SYMPREC` of a special position.
_GENERIC = {"a": 10.1, "b": 11.9, "c": 13.7, "alpha": 83.0, "beta": 97.0, "gamma": 104.0}


@lru_cache(maxsize=1024)
def group_reachable(number: int, composition: tuple[tuple[str, int], ...]) -> bool:
    """Whether orbits of group `number` can hold `composition` ((element, atoms of the primitive cell), ...) in a
    crystal of that group, not only of a larger one (2 Tl + 2 Sb on the four fixed positions of F-43m make
    Fd-3m or Fm-3m crystals; 1 + 1 make zincblende, F-43m). See `_Written.completes`."""
    free = [_GENERIC[name] for name in lattice_parameter_names(number)]
    lattice = Lattice.from_parameters(*itertools.chain(*_full_parameters(number, free)))
    return _Written(WyckoffText(number, lattice, ())).completes([], composition, frozenset(), _REQUEST_BUDGET)


def _value_prefix(text: str) -> str:
    """The leading characters of `text` that can belong to a coordinate value."""
    return "".join(itertools.takewhile(_VALUE_CHARS.__contains__, text))


def _final(context: tuple) -> bool:
    """Whether a grammar context (after an orbit's label) has the whole composition written."""
    remaining = context[1]
    return remaining is not None and not any(n for _, n in remaining)


def blocked_tokens(
    state: tuple,
    moves: dict[int, tuple],
    text: str,
    token_texts: Sequence[str | None],
    grammar,
    min_distance: float,
    keep_group: bool,
) -> list[int]:
    """Tokens among `moves` ({token: next state} of `grammar`'s state `state`, after the completion `text`) that
    would place atoms badly (module docstring): closer than `min_distance` (Å), or, with `keep_group`, so that
    the crystal cannot end in the group its text names. [] when none would, or all would even by spacing."""
    if len(moves) < 2:
        return []
    phase = state[0]
    try:
        if phase == "value" and state[2] == 1 and (min_distance or keep_group and _final(state[1])):
            # the last free coordinate of an orbit
            rule = _value_rule(state, text, token_texts, min_distance)
        elif phase == "label":
            rule = _label_rule(state, moves, text, token_texts, grammar, min_distance, keep_group)
        elif phase == "end" and keep_group and state[1][1] is None:
            rule = _end_rule(moves, text)
        else:
            return []
    except CrystalParseError:
        return []
    if rule is None:
        return []
    for symmetry in (keep_group, False):
        blocked = [token for token in moves if not rule(token, symmetry)]
        if len(blocked) < len(moves):
            return blocked
    return []


def _value_rule(state: tuple, text: str, token_texts, min_distance: float):
    # The orbit line so far, its last value's characters cut off (k - 1 of "0.dd" are written after its space).
    k = state[3]
    head, _, line = text.rpartition("\n")
    written = line[len(line) - (k - 1) :] if k > 1 else ""
    fields = (line[: len(line) - len(written)] if written else line).split()
    choices = _last_value(head + "\n" + " ".join([*fields, "0"]), min_distance, _final(state[1]))

    def allowed(token: int, symmetry: bool) -> bool:
        reading = token_texts[token] or ""
        value = written + _value_prefix(reading[1:] if k == 0 and reading.startswith(" ") else reading)
        digits = value[2:4] if value.startswith("0.") else ""
        if len(digits) == 2:
            return choices.ok(range(int(digits), int(digits) + 1), symmetry)
        if digits:
            return choices.ok(range(10 * int(digits), 10 * int(digits) + 10), symmetry)
        return choices.ok(range(100), symmetry)

    return allowed


def _label_rule(state: tuple, moves, text: str, token_texts, grammar, min_distance: float, keep_group: bool):
    _, context, element, prefix = state
    symmetric = keep_group and context[1] is not None
    if not (min_distance or symmetric):
        return None
    written = _written(text.rpartition("\n")[0])
    choices = grammar.labels(context, element)
    verdicts: dict[str, dict[bool, bool]] = {}

    def label_ok(position, symmetry: bool) -> bool:
        label, _, _, fixed = position
        verdict = verdicts.setdefault(label, {})
        if symmetry not in verdict:
            wyckoff = written.table.by_letter[label[-1]]
            ok = not (fixed and min_distance) or bool(
                written.spaced(wyckoff.sites(())[None], min_distance)[0]
            )
            if ok and symmetry and symmetric:
                _, remaining, used, _ = grammar.after_label(context, element, position)
                ok = written.completes([(element, wyckoff)], remaining, used, _LABEL_BUDGET)
            verdict[symmetry] = ok
        return verdict[symmetry]

    def allowed(token: int, symmetry: bool) -> bool:
        reading = prefix + (token_texts[token] or "")
        complete = _LABEL.match(reading)
        start = complete.group() if complete else reading
        return any(
            label_ok(p, symmetry) for p in choices if (p[0] == start if complete else p[0].startswith(start))
        )

    return allowed


def _end_rule(moves, text: str):
    written = _written(text)

    def allowed(token: int, symmetry: bool) -> bool:
        return moves[token] != ("done",) or not symmetry or written.in_group()

    return allowed
