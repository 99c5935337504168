"""Constrained decoding of Wyckoff text (`hf_crystal.text_wyckoff`): a `LogitsProcessor` that lets a model
write only Wyckoff text that decodes, in the requested space group and with the requested composition.

What is enforced, character by character, on the completion exactly as `text_wyckoff.encode` writes it:

- space-group line: a number 1-230 (the requested group, or with a composition only the groups whose Wyckoff
  positions can hold it);
- lattice line: only the parameters the crystal system leaves free, lengths ``[1-9]\\d{0,2}\\.\\d``, angles
  integers 1-179 (a triclinic triple closes a cell, as in `hf_crystal.constraints`);
- orbit lines ``El NNx[ 0.dd]*``: an element (of the composition with atoms left, or of `elements`), then only
  a Wyckoff label of that group, followed by exactly as many free coordinates as the position has; a fixed
  position (no free coordinate) at most once per crystal (two orbits on one point are no crystal);
- with a composition (atoms of the primitive cell): a label only when the atoms it adds (its multiplicity over
  the centering) leave counts that the group's remaining positions can still fill, so every sample ends with
  exactly the composition; EOS only then. Without one: at most `max_sites` atoms of the primitive cell.
- geometry (`hf_crystal.constraints_geometry`), where the grammar leaves another choice: no last free coordinate
  of an orbit, and no fixed position, that would put an atom closer than `min_distance` to another; with a
  requested space group, no label or value after which the crystal can only end in a larger group.

The grammar is a character automaton over immutable states; each state's allowed tokens are found once by
walking the vocabulary trie with only the characters the state can take (cached per state and shared by equal
constraints across rows and calls, with the state's mask as a bool tensor); each row's state is advanced by its
new tokens only, and the masks of all rows are applied in one `masked_fill` (docs/benchmarks.md has the speed).
A request no orbit can meet (formula + space group), or only in a larger group, raises `ConstraintError` when the
constraint is made, before generation.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from hf_crystal.constraints import (
    DEFAULT_MAX_SITES,
    LENGTH_INT_DIGITS,
    MAX_ANGLE,
    MIN_ANGLE,
    ConstraintError,
    _angle_range,
    _can_extend,
    _token_texts,
    eos_token_id,
    per_tokenizer,
    token_trie,
)
from hf_crystal.constraints_geometry import blocked_tokens, group_reachable
from hf_crystal.evaluation.validity import MIN_INTERATOMIC_DISTANCE
from hf_crystal.orbit_counts import feasible_groups, fillable, positions
from hf_crystal.text import ELEMENT_SYMBOLS
from hf_crystal.text_wyckoff import lattice_parameter_names

__all__ = ["WyckoffConstraint", "WyckoffLogitsProcessor", "feasible_groups"]

_VALUE = "0.dd"  # a free coordinate, "d" a digit
_PREFIXES = frozenset(s[:k] for s in ELEMENT_SYMBOLS for k in range(1, len(s) + 1))
# The characters that can extend an element-symbol prefix ("" included) to a longer prefix.
_SYMBOL_NEXT = {
    p: "".join(sorted({s[len(p)] for s in ELEMENT_SYMBOLS if s.startswith(p) and len(s) > len(p)}))
    for p in {"", *_PREFIXES}
}
_DIGITS = "0123456789"
_DIGIT_SET = frozenset(_DIGITS)
_EOS = None  # the "character" EOS in the automaton


@dataclass(frozen=True)
class WyckoffConstraint:
    """What one prompt's Wyckoff-text completions may contain.

    Args:
        spacegroup: the space group to write (None: any the composition allows).
        composition: exact atom counts of the primitive cell, e.g. {"Na": 1, "Cl": 1}.
        elements: allowed element symbols when there is no composition (None: all 118).
        max_sites: most atoms of the primitive cell (without a composition).
        min_distance: closest two atoms may be written, in Å (default: the structural-validity threshold; 0
            turns spacing off).

    Raises `ConstraintError` for a request no orbits can meet.
    """

    spacegroup: int | None = None
    composition: Mapping[str, int] | None = None
    elements: tuple[str, ...] | None = None
    max_sites: int = DEFAULT_MAX_SITES
    min_distance: float = MIN_INTERATOMIC_DISTANCE

    def __post_init__(self):
        if self.spacegroup is not None and not (
            isinstance(self.spacegroup, int | np.integer) and 1 <= self.spacegroup <= 230
        ):
            raise ConstraintError(f"spacegroup must be an integer 1-230, got {self.spacegroup!r}")
        if not (isinstance(self.max_sites, int) and self.max_sites >= 1):
            raise ConstraintError(f"max_sites must be a positive integer, got {self.max_sites!r}")
        if not (isinstance(self.min_distance, int | float) and 0 <= self.min_distance < float("inf")):
            raise ConstraintError(f"min_distance must be a number of Å >= 0, got {self.min_distance!r}")
        for symbol in [*(self.elements or ()), *(self.composition or ())]:
            if symbol not in ELEMENT_SYMBOLS:
                raise ConstraintError(f"unknown element symbol {symbol!r}")
        if self.composition is None:
            return
        if not self.composition or any(int(n) != n or n < 1 for n in self.composition.values()):
            raise ConstraintError(
                f"composition counts must be whole numbers >= 1, got {dict(self.composition)}"
            )
        groups = self.groups
        if not groups:
            where = f"space group {self.spacegroup}" if self.spacegroup else "any space group"
            raise ConstraintError(
                f"no Wyckoff orbits of {where} add up to {dict(self.composition)} (atoms of the primitive cell): "
                "ask for another space group or number of formula units"
            )
        counts = tuple(sorted((s, int(n)) for s, n in self.composition.items()))
        if self.spacegroup is not None and not group_reachable(int(self.spacegroup), counts):
            raise ConstraintError(
                f"the Wyckoff orbits of space group {self.spacegroup} that add up to {dict(self.composition)} (atoms "
                "of the primitive cell) make crystals of larger groups only: ask for another number of formula units"
            )

    @property
    def groups(self) -> tuple[int, ...]:
        """The space groups a completion may write."""
        candidates = range(1, 231) if self.spacegroup is None else [int(self.spacegroup)]
        if self.composition is None:
            return tuple(candidates)
        counts = tuple(sorted(int(n) for n in self.composition.values()))
        return tuple(n for n in candidates if fillable(n, counts, frozenset()))

    @property
    def max_new_tokens(self) -> int:
        """Tokens that always suffice for a complete completion and its EOS (>= 1 character per token)."""
        sites = self.max_sites if self.composition is None else int(sum(self.composition.values()))
        header = len("230\n") + 3 * len("999.9 ") + 3 * len("179 ")
        return header + sites * len("\nXx 192l 0.00 0.00 0.00") + 1


# ------------------------------------------------------------------------------------------------- automaton
# A state is a tuple: (phase, context, ...). The context of the orbit lines is (group, remaining, used, sites):
# remaining = ((element, atoms left), ...) with a composition, else None; used = fixed labels taken; sites =
# atoms of the primitive cell so far.


class _Grammar:
    """The automaton of one constraint: `step(state, ch)` -> next state or None; ch None is EOS."""

    def __init__(self, constraint: WyckoffConstraint):
        self.groups = frozenset(constraint.groups)
        self.group_texts = tuple(str(n) for n in sorted(self.groups))
        self._group_prefixes = frozenset(t[:k] for t in self.group_texts for k in range(1, len(t) + 1))
        self.exact = constraint.composition is not None
        self.elements = frozenset(constraint.elements or ELEMENT_SYMBOLS)
        self.max_sites = constraint.max_sites
        remaining = None
        if self.exact:
            remaining = tuple(sorted((s, int(n)) for s, n in constraint.composition.items()))
        self.start = ("sg", "", remaining)
        self._startable: dict[tuple, tuple[frozenset[str], frozenset[str]]] = {}
        self._labels: dict[tuple, list[tuple[str, int, int, bool]]] = {}

    # Orbit options -------------------------------------------------------------------------------------
    def _fits(self, context, element: str, label: str, atoms: int, fixed: bool) -> bool:
        group, remaining, used, sites = context
        if fixed and label in used:
            return False
        if not self.exact:
            return element in self.elements and sites + atoms <= self.max_sites
        left = dict(remaining)
        if left.get(element, 0) < atoms:
            return False
        left[element] -= atoms
        counts = tuple(sorted(n for n in left.values() if n))
        return fillable(group, counts, used | {label} if fixed else used)

    def labels(self, context, element: str) -> list[tuple[str, int, int, bool]]:
        """The Wyckoff positions an orbit of `element` may take in `context` (cached)."""
        key = (context, element)
        if key not in self._labels:
            self._labels[key] = [
                p for p in positions(context[0]) if self._fits(context, element, p[0], p[1], p[3])
            ]
        return self._labels[key]

    def can_start_orbit(self, context, element: str | None = None) -> bool:
        """Whether another orbit line (of `element`, if given) can follow."""
        group, remaining, used, sites = context
        if self.exact:
            return any(n for _, n in remaining) if element is None else dict(remaining).get(element, 0) > 0
        if element is not None and element not in self.elements:
            return False
        return any(
            not (fixed and label in used) and sites + atoms <= self.max_sites
            for label, atoms, _, fixed in positions(group)
        )

    def startable(self, context) -> tuple[frozenset[str], frozenset[str]]:
        """The elements an orbit line may start with in `context`, and their prefixes (cached)."""
        if context not in self._startable:
            if self.exact:
                elements = frozenset(
                    e
                    for e, n in context[1]
                    if n and self.can_start_orbit(context, e) and self.labels(context, e)
                )
            else:  # every allowed element fits the same positions: all of them or none
                elements = self.elements if self.can_start_orbit(context) else frozenset()
            prefixes = frozenset(e[:k] for e in elements for k in range(1, len(e) + 1))
            self._startable[context] = elements, prefixes
        return self._startable[context]

    def after_label(self, context, element: str, position) -> tuple:
        """The orbit context once an orbit of `element` takes Wyckoff position `position` (a `labels` entry)."""
        group, remaining, used, sites = context
        label, atoms, _, fixed = position
        if remaining is not None:
            remaining = tuple((e, n - atoms if e == element else n) for e, n in remaining)
        return (group, remaining, used | {label} if fixed else used, sites + atoms)

    # Transitions ---------------------------------------------------------------------------------------
    def candidates(self, state: tuple) -> str:
        """The characters `step` may accept in `state` (a superset): the only ones the vocabulary walk tries."""
        phase = state[0]
        if phase == "sg":
            return _DIGITS + "\n"
        if phase == "lat":
            return _DIGITS + ". \n"
        if phase == "el":
            return _SYMBOL_NEXT.get(state[2], "") + " "
        if phase == "label":
            _, context, element, prefix = state
            n = len(prefix)
            return "".join(
                {p[0][n] for p in self.labels(context, element) if len(p[0]) > n and p[0].startswith(prefix)}
            )
        if phase == "value":
            k = state[3]
            if k == 0:
                return " "
            if k <= len(_VALUE):
                return _DIGITS if _VALUE[k - 1] == "d" else _VALUE[k - 1]
            return ""
        return "\n" if phase == "end" else ""

    def step(self, state: tuple, ch: str | None):
        phase = state[0]
        if phase == "sg":
            _, prefix, remaining = state
            if ch is not None and ch in _DIGIT_SET and prefix + ch in self._group_prefixes:
                return ("sg", prefix + ch, remaining)
            if ch == "\n" and prefix in self.group_texts:
                group = int(prefix)
                names = lattice_parameter_names(group)
                context = (group, remaining, frozenset(), 0)
                return ("lat", context, names, 0, "", None)
            return None
        if phase == "lat":
            return self._lattice(state, ch)
        if phase == "el":
            _, context, prefix = state
            startable, prefixes = self.startable(context)
            if ch is not None and prefix + ch in prefixes:
                return ("el", context, prefix + ch)
            if ch == " " and prefix in startable:
                return ("label", context, prefix, "")
            return None
        if phase == "label":
            _, context, element, prefix = state
            if ch is None:
                return None
            for position in self.labels(context, element):
                if position[0].startswith(prefix + ch):
                    if prefix + ch == position[0]:
                        after = self.after_label(context, element, position)
                        return ("value", after, position[2], 0) if position[2] else ("end", after)
                    return ("label", context, element, prefix + ch)
            return None
        if phase == "value":
            _, context, left, k = state
            if k == 0 and ch == " ":
                return ("value", context, left, 1)
            if 1 <= k <= len(_VALUE) and ch is not None:
                expected = _VALUE[k - 1]
                if ch in _DIGIT_SET if expected == "d" else ch == expected:
                    if k == len(_VALUE):
                        return ("value", context, left - 1, 0) if left > 1 else ("end", context)
                    return ("value", context, left, k + 1)
            return None
        if phase == "end":
            _, context = state
            if ch == "\n" and self.can_start_orbit(context):
                return ("el", context, "")
            if ch is None and not (self.exact and self.can_start_orbit(context)):
                return ("done",)
            return None
        return None

    def _lattice(self, state: tuple, ch: str | None):
        _, context, names, i, prefix, alpha = state
        if ch is None:
            return None
        name = names[i]
        last = i == len(names) - 1
        separator = "\n" if last else " "
        if len(name) == 1:  # a length: [1-9]\d{0,2}\.\d
            whole, _, fraction = prefix.partition(".")
            if "." not in prefix:
                if ch in _DIGIT_SET and len(whole) < LENGTH_INT_DIGITS and (whole or ch != "0"):
                    return ("lat", context, names, i, prefix + ch, alpha)
                if ch == "." and whole:
                    return ("lat", context, names, i, prefix + ch, alpha)
            elif not fraction and ch in _DIGIT_SET:
                return ("lat", context, names, i, prefix + ch, alpha)
            elif fraction and ch == separator:
                return ("el", context, "") if last else ("lat", context, names, i + 1, "", alpha)
            return None
        # An angle: integers 1-179; a triclinic gamma closes a cell with alpha and beta.
        lo, hi = MIN_ANGLE, MAX_ANGLE
        if name == "gamma":
            lo, hi = _angle_range(*alpha)
        if ch in _DIGIT_SET and _can_extend(prefix + ch, lo, hi):
            return ("lat", context, names, i, prefix + ch, alpha)
        if prefix and lo <= int(prefix) <= hi and ch == separator:
            if last:
                return ("el", context, "")
            seen = (*(alpha or ()), int(prefix)) if name in ("alpha", "beta") else alpha
            return ("lat", context, names, i + 1, "", seen)
        return None


class _Vocabulary:
    """A tokenizer's vocabulary as a trie of token texts, with the rules made on it (shared by every processor:
    equal constraints share their states and tables, across rows and calls)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.eos = eos_token_id(tokenizer)
        self.texts = _token_texts(tokenizer)
        self.trie = token_trie(self.texts)
        self._rules: dict[tuple, _Rule] = {}

    def rule(self, constraint: WyckoffConstraint) -> _Rule:
        """The `_Rule` of `constraint` (the last `_MAX_RULES` kept)."""
        composition = constraint.composition
        key = (
            None if constraint.spacegroup is None else int(constraint.spacegroup),
            None if composition is None else tuple(sorted((s, int(n)) for s, n in composition.items())),
            None if constraint.elements is None else frozenset(constraint.elements),
            constraint.max_sites,
            float(constraint.min_distance),
        )
        rule = self._rules.pop(key, None) or _Rule(constraint, self)
        self._rules[key] = rule  # the most recently used last
        while len(self._rules) > _MAX_RULES:
            del self._rules[next(iter(self._rules))]
        return rule


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Phases whose steps carry the orbit context along without reading it (lattice parameters, coordinates): their
# tables are walked once with the context `_ANY_CONTEXT` and the real one put into the next states.
_CONTEXT_FREE = frozenset({"lat", "value"})
_ANY_CONTEXT = ("any context",)
# Rules kept per tokenizer, and states kept per rule (then its cache starts again): bounds the memory of a
# long-lived pipeline; a batch of unconditional samples reaches a few thousand states.
_MAX_RULES = 64
# Phases where `hf_crystal.constraints_geometry` may block tokens: a coordinate, a label, the end of an orbit line.
_PLACING = frozenset({"value", "label", "end"})
_MAX_STATES = 20_000


def _vocabulary(tokenizer: PreTrainedTokenizerBase) -> _Vocabulary:
    return per_tokenizer(_VOCABULARIES, tokenizer, _Vocabulary)


class _Node:
    """One state of a rule as the processor uses it: the allowed tokens and where each leads (`moves`), the nodes
    reached so far (`next`) and the mask of the tokens not allowed, per width of the scores."""

    __slots__ = ("state", "moves", "next", "_blocked")

    def __init__(self, state: tuple, moves: dict[int, tuple], blocked: dict[int, torch.Tensor] | None = None):
        self.state, self.moves, self.next = state, moves, {}
        self._blocked = {} if blocked is None else blocked  # shared by nodes that allow the same tokens

    def blocked(self, width: int) -> torch.Tensor:
        """Bool tensor of `width` scores: True where the token is not allowed in this state."""
        mask = self._blocked.get(width)
        if mask is None:
            mask = self._blocked[width] = torch.ones(width, dtype=torch.bool)
            mask[list(self.moves)] = False
        return mask


class _Rule:
    """A constraint's grammar with its per-state nodes: allowed tokens, where each leads, masks."""

    def __init__(self, constraint: WyckoffConstraint, vocabulary: _Vocabulary):
        self.grammar = _Grammar(constraint)
        self.vocabulary = vocabulary
        self.min_distance = float(constraint.min_distance)
        self.keep_group = constraint.spacegroup is not None
        self._nodes: dict[tuple, _Node] = {}
        self._templates: dict[tuple, _Node | None] = {}  # per state of a context-free phase, any context

    def node(self, state: tuple) -> _Node:
        """The node of `state`, its tokens found once by walking the vocabulary trie (for the lattice and the
        coordinates, once for every orbit context: see `_CONTEXT_FREE`)."""
        node = self._nodes.get(state)
        if node is None:
            if len(self._nodes) >= _MAX_STATES:
                self._nodes.clear()
                self._templates.clear()
            node = self._nodes[state] = self._make(state)
        return node

    def _make(self, state: tuple) -> _Node:
        if state[0] in _CONTEXT_FREE:
            general = (state[0], _ANY_CONTEXT, *state[2:])
            if general not in self._templates:
                moves = self._moves(general, context_free=True)
                self._templates[general] = None if moves is None else _Node(general, moves)
            template = self._templates[general]
            if template is not None:
                context = state[1]
                moves = {
                    token: (after[0], context, *after[2:]) if after[1:2] == (_ANY_CONTEXT,) else after
                    for token, after in template.moves.items()
                }
                return _Node(state, moves, template._blocked)
        return _Node(state, self._moves(state))

    def table(self, state: tuple) -> dict[int, tuple]:
        """{token id: next state} of the tokens allowed in `state` (EOS -> ("done",))."""
        return self.node(state).moves

    def advance(self, node: _Node, token: int) -> _Node:
        """The node after `token` in `node` (ConstraintError when the token is not allowed there)."""
        after = node.next.get(token)
        if after is None:
            if token not in node.moves:
                raise ConstraintError(
                    f"token {token} cannot follow the text written so far: it was not allowed by this processor"
                )
            after = node.next[token] = self.node(node.moves[token])
        return after

    def _moves(self, state: tuple, context_free: bool = False) -> dict[int, tuple] | None:
        """{token id: next state} of `state`, by walking the trie; with `context_free` (a state whose context is
        `_ANY_CONTEXT`), None when a token reads on past the phase (its context would decide)."""
        moves: dict[int, tuple] = {}
        stack = [(self.vocabulary.trie, state)]
        while stack:
            node, current = stack.pop()
            if node is not self.vocabulary.trie:
                for token in node.get(None, ()):
                    moves.setdefault(token, current)
            if context_free and current[0] not in _CONTEXT_FREE:
                if any(ch is not None for ch in node):
                    return None
                continue
            for ch in self.grammar.candidates(current):
                child = node.get(ch)
                if child is not None:
                    nxt = self.grammar.step(current, ch)
                    if nxt is not None:
                        stack.append((child, nxt))
        if self.grammar.step(state, _EOS) is not None:
            moves[self.vocabulary.eos] = ("done",)
        return moves


class WyckoffLogitsProcessor(LogitsProcessor):
    """Masks every token that would make the completion stop being valid Wyckoff text (see module docstring).

    Args:
        tokenizer: the model's tokenizer (single tokens for the digits, ".", " ", "\\n", the letters; an EOS).
        constraints: one `WyckoffConstraint` for every row, or one per row (one row per sample, as
            `hf_crystal.generation_utils.generate_rows` expects).
        prompt_length: width of the (left-padded) prompt batch: generated tokens start at this column.

    Each row keeps its state node and the tokens it was reached by; a call compares the rows' generated tokens
    with the last call's in one tensor operation and applies only the new ones (a row whose tokens do not
    continue its last ones is replayed from the start), so sampling, greedy and beam search work. The masks of
    the rows' states (one tensor per state, made once) are stacked and applied in one `masked_fill`. States and
    masks are shared by equal constraints, across rows and calls. `select(rows)` gives the processor of a subset
    of the rows, for a `generate` call that continues those rows only.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        constraints: WyckoffConstraint | Sequence[WyckoffConstraint],
        prompt_length: int,
    ):
        vocabulary = _vocabulary(tokenizer)
        constraints = [constraints] if isinstance(constraints, WyckoffConstraint) else list(constraints)
        if not constraints or not all(isinstance(c, WyckoffConstraint) for c in constraints):
            raise ConstraintError("constraints must be a WyckoffConstraint or a non-empty sequence of them")
        self._rules = [vocabulary.rule(c) for c in constraints]
        self._single = len(constraints) == 1
        self._prompt_length = prompt_length
        self._eos = vocabulary.eos
        self._vocab_size = len(tokenizer)
        self._row_rules: list[_Rule] | None = None
        self._nodes: list[_Node | None] = []  # per row: its state after `_generated` (None: EOS written)
        self._generated: torch.Tensor | None = None  # the rows' generated tokens at the last call

    @property
    def _history(self) -> list[tuple[tuple[int, ...], tuple]]:
        """Per row: (tokens applied, state)."""
        rows = [] if self._generated is None else self._generated.tolist()
        return [
            (tuple(tokens), ("done",) if node is None else node.state)
            for tokens, node in zip(rows, self._nodes, strict=True)
        ]

    def select(self, rows: Sequence[int]) -> WyckoffLogitsProcessor:
        """The processor of rows `rows` only (in that order), with their states."""
        other = object.__new__(WyckoffLogitsProcessor)
        other.__dict__.update(self.__dict__)
        other._row_rules = [self._row_rules[i] for i in rows]
        other._nodes = [self._nodes[i] for i in rows]
        if self._generated is not None:
            other._generated = self._generated[torch.as_tensor(rows, dtype=torch.long)]
        return other

    def _follow(self, generated: torch.Tensor) -> None:
        """Bring every row's node to the end of its `generated` tokens."""
        previous, batch = self._generated, generated.shape[0]
        start = 0
        if previous is not None and previous.shape[1] <= generated.shape[1]:
            start = previous.shape[1]
            continues = (generated[:, :start] == previous).all(dim=1).tolist()
            for row in (row for row, same in enumerate(continues) if not same):  # replayed from the start
                self._nodes[row] = self._row_rules[row].node(self._row_rules[row].grammar.start)
                self._replay(row, generated[row].tolist())
        else:
            continues = [True] * batch
            self._nodes = [rule.node(rule.grammar.start) for rule in self._row_rules]
        if start < generated.shape[1]:
            for row, tokens in enumerate(generated[:, start:].tolist()):
                if continues[row]:
                    self._replay(row, tokens)
        self._generated = generated

    def _replay(self, row: int, tokens: list[int]) -> None:
        node, rule = self._nodes[row], self._row_rules[row]
        for token in tokens:
            if node is None:  # EOS written: generate pads the row
                break
            node = None if token == self._eos else rule.advance(node, token)
        self._nodes[row] = node

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width = scores.shape[-1]
        if width < self._vocab_size:
            raise ConstraintError(
                f"scores have {width} columns but the tokenizer has {self._vocab_size} tokens"
            )
        generated = input_ids[:, self._prompt_length :].cpu()
        batch = generated.shape[0]
        if self._row_rules is None or len(self._row_rules) != batch:
            if self._single:
                self._row_rules = self._rules * batch
            elif batch != len(self._rules):
                raise ConstraintError(
                    f"batch of {batch} rows, but {len(self._rules)} constraints: give one per row "
                    "(or a single one)"
                )
            else:
                self._row_rules = list(self._rules)
            self._generated = None
        self._follow(generated)
        free = torch.zeros(width, dtype=torch.bool)  # a finished row: generate pads it
        blocked = torch.stack([free if node is None else node.blocked(width) for node in self._nodes])
        self._space(blocked, generated)
        return scores.masked_fill(blocked.to(scores.device), float("-inf"))

    def _space(self, blocked: torch.Tensor, generated: torch.Tensor) -> None:
        """Add to `blocked` the tokens that would place atoms badly (`hf_crystal.constraints_geometry`): too close,
        or, where a space group was requested, so that the crystal cannot end in it."""
        for row, node in enumerate(self._nodes):
            rule = self._row_rules[row]
            if node is None or node.state[0] not in _PLACING or not (rule.min_distance or rule.keep_group):
                continue
            texts = rule.vocabulary.texts
            text = "".join(texts[t] or "" for t in generated[row].tolist())
            tokens = blocked_tokens(
                node.state, node.moves, text, texts, rule.grammar, rule.min_distance, rule.keep_group
            )
            if tokens:
                blocked[row, tokens] = True
