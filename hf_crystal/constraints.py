"""Constrained decoding: a transformers `LogitsProcessor` that lets a model write only crystal text that
`hf_crystal.text.decode` accepts, optionally limited to given elements or to an exact composition.

What is enforced, character by character, on the completion exactly as `hf_crystal.text.encode` writes it:

- lengths line: three numbers ``[1-9]\\d{0,2}\\.\\d`` (1.0-999.9 Å; below 1 Å no cell holds an atom) joined by " ";
- angles line: three integers 1-179 whose third closes a cell with the first two,
  ``|alpha - beta| < gamma < min(alpha + beta, 360 - alpha - beta)`` (the triples `decode` accepts);
- per site: an element symbol line, then ``0\\.\\d\\d 0\\.\\d\\d 0\\.\\d\\d``; lines joined by "\\n";
- no two sites of a crystal at the same coordinates (the last digit of a coordinates line that would repeat
  an earlier site's line is masked, unless every digit would: two atoms on one point are never a crystal,
  and small models write such repeats often);
- EOS only right after a complete coordinates line, at most `max_sites` sites (then EOS is the only choice);
  with a composition, element lines only for elements with atoms left and EOS only when none is left.

Why hand-written (benchmarks/bench_constraints.py measures it): lm-format-enforcer 0.11 does not import with
transformers 5, transformers-cfg 0.2 rejects transformers 5 tokenizers, llguidance 1.9 rejects our tokenizer's
decoder. xgrammar, outlines-core (and llguidance on BPE) enforce the regular part correctly at a cost per step
similar to this module's, but a regex cannot say which angle triples close a cell (only 28-56% of their
random-model samples decode, 100% here) nor an exact composition in any order (not a compact regular
language); a per-row counter mask on top of them would have to walk every multi-character token (" 0.",
"\nNa\n") through the format anyway. One automaton does it all.

How: a character automaton whose states are built lazily. For each state reached, the vocabulary (a trie of
every token's decoded text) is walked once and the result kept as arrays: the tokens allowed from that
state, the state each leads to and what each does to the per-row counters (sites started, element
completed, element prefix it stops in). Per step a few numpy operations gather the tables of every row's state
and apply the rows' counters to them: no Python loop over the rows or the vocabulary. States and tables are
cached per tokenizer.
"""

from __future__ import annotations

import string
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from hf_crystal.text import ELEMENT_SYMBOLS

__all__ = ["DEFAULT_MAX_SITES", "ConstraintError", "CrystalConstraint", "CrystalLogitsProcessor"]

#: Default bound on the number of sites: well above the largest cells of MP-20 (20 atoms) and carbon_24 (24).
DEFAULT_MAX_SITES = 64

LENGTH_INT_DIGITS = 3  # lengths up to 999.9 Å
MIN_ANGLE, MAX_ANGLE = 1, 179  # degrees; decode wants 0 < angle < 180
FULL_TURN = 360
COORD_PATTERN = "0.dd"  # one fractional coordinate, "d" a digit
COORDS_PER_SITE = 3
# Longest texts, in characters: "999.9 999.9 999.9\n179 179 179", then "\nXx\n0.00 0.00 0.00" per site.
_LONGEST_LENGTH = "9" * LENGTH_INT_DIGITS + ".9"
_HEAD_CHARS = len(" ".join([_LONGEST_LENGTH] * 3) + "\n" + " ".join([str(MAX_ANGLE)] * 3))
_SYMBOL_CHARS = max(map(len, ELEMENT_SYMBOLS))
_SITE_CHARS = len("\n" + "X" * _SYMBOL_CHARS + "\n" + " ".join([COORD_PATTERN] * COORDS_PER_SITE))

_SYMBOL_INDEX = {s: i for i, s in enumerate(ELEMENT_SYMBOLS)}
_PREFIXES = sorted({s[:k] for s in ELEMENT_SYMBOLS for k in range(len(s) + 1)})
_PREFIX_INDEX = {p: i for i, p in enumerate(_PREFIXES)}
# _SUBTREE[e, p]: element e starts with prefix p.
_SUBTREE = np.array([[s.startswith(p) for p in _PREFIXES] for s in ELEMENT_SYMBOLS])
_LETTERS = sorted(set("".join(ELEMENT_SYMBOLS)))
_ALPHABET = (*string.digits, ".", " ", "\n", *_LETTERS)
# Events of a transition: a new site starts (newline before an element line); other events are symbols.
_SITE = "site"
_NONE = -1  # "no element" / "not in an element line" in the token tables
# Stand-in for "unlimited" atoms of an allowed element when no composition is given.
_UNLIMITED = np.iinfo(np.int32).max // 2

# Automaton states are tuples: (kind, ...).
_LEN, _LEN_DOT, _LEN_END, _ANGLE, _ELEMENT, _COORD = "len", "len.", "len.d", "angle", "element", "coord"
_START = (_LEN, 0, 0)
_ACCEPT = (_COORD, COORDS_PER_SITE - 1, len(COORD_PATTERN))
_COLUMNS = 8  # fields of an automaton table entry (see `_Automaton`)


class ConstraintError(ValueError):
    """A constraint that cannot be satisfied, or a tokenizer that cannot write crystal text."""


@dataclass(frozen=True)
class CrystalConstraint:
    """What one prompt's completions may contain.

    Args:
        elements: allowed element symbols (None: all 118).
        composition: exact atom counts, e.g. {"Na": 4, "Cl": 4} from a formula condition; implies `elements`
            (if both are given, the composition's elements must be among them).
        max_sites: most sites a crystal may have (EOS is forced after that many).
    """

    elements: tuple[str, ...] | None = None
    composition: Mapping[str, int] | None = None
    max_sites: int = DEFAULT_MAX_SITES

    def __post_init__(self):
        if not (isinstance(self.max_sites, int) and self.max_sites >= 1):
            raise ConstraintError(f"max_sites must be a positive integer, got {self.max_sites!r}")
        if self.elements is not None:
            if isinstance(self.elements, str) or not self.elements:
                raise ConstraintError(
                    f"elements must be a non-empty sequence of symbols, got {self.elements!r}"
                )
            _check_symbols(self.elements, "elements")
        if self.composition is None:
            return
        if not self.composition:
            raise ConstraintError("composition is empty")
        _check_symbols(self.composition, "composition")
        bad = {
            s: n
            for s, n in self.composition.items()
            if not (isinstance(n, int | float | np.integer) and float(n).is_integer() and n >= 1)
        }
        if bad:
            raise ConstraintError(f"composition counts must be whole numbers >= 1, got {bad}")
        if self.elements is not None and set(self.composition) - set(self.elements):
            raise ConstraintError(
                f"composition elements {sorted(set(self.composition) - set(self.elements))} are not in elements {self.elements}"
            )
        total = int(sum(self.composition.values()))
        if total > self.max_sites:
            raise ConstraintError(f"composition has {total} atoms, more than max_sites={self.max_sites}")

    @property
    def max_new_tokens(self) -> int:
        """Tokens that always suffice for a complete completion and its EOS (every token writes >= 1 character).

        Pass it (the largest over a batch) to `generate`: a smaller budget can cut a crystal short.
        """
        sites = self.max_sites if self.composition is None else int(sum(self.composition.values()))
        return _HEAD_CHARS + _SITE_CHARS * sites + 1


def _check_symbols(symbols, what: str):
    unknown = sorted(set(symbols) - set(ELEMENT_SYMBOLS))
    if unknown:
        raise ConstraintError(f"{what} has unknown element symbols {unknown}")


def _angle_range(alpha: int, beta: int) -> tuple[int, int]:
    """Integer gammas that close a cell with alpha and beta (never empty for 1 <= alpha, beta <= 179)."""
    return abs(alpha - beta) + 1, min(alpha + beta, FULL_TURN - alpha - beta) - 1


def _can_extend(prefix: str, lo: int, hi: int) -> bool:
    """Whether some integer in [lo, hi] is written `prefix` + more digits (no leading zero)."""
    if prefix.startswith("0"):
        return False
    value = int(prefix)
    return any(
        value * 10**k <= hi and (value + 1) * 10**k - 1 >= lo for k in range(len(str(hi)) - len(prefix) + 1)
    )


def _step(state: tuple, ch: str):
    """(next state, event) after writing `ch` in `state`, or None if `ch` cannot come next."""
    kind = state[0]
    if kind == _LEN:
        _, i, n = state
        if ch.isdigit() and n < LENGTH_INT_DIGITS and (n or ch != "0"):
            return (_LEN, i, n + 1), None
        if ch == "." and n:
            return (_LEN_DOT, i), None
    elif kind == _LEN_DOT:
        if ch.isdigit():
            return (_LEN_END, state[1]), None
    elif kind == _LEN_END:
        i = state[1]
        if ch == (" " if i < 2 else "\n"):
            return ((_LEN, i + 1, 0) if i < 2 else (_ANGLE, 0, "", MIN_ANGLE, MAX_ANGLE, None)), None
    elif kind == _ANGLE:
        _, i, prefix, lo, hi, alpha = state
        if ch.isdigit() and _can_extend(prefix + ch, lo, hi):
            return (_ANGLE, i, prefix + ch, lo, hi, alpha), None
        if prefix and lo <= int(prefix) <= hi and ch == (" " if i < 2 else "\n"):
            if i == 0:
                return (_ANGLE, 1, "", MIN_ANGLE, MAX_ANGLE, int(prefix)), None
            if i == 1:
                return (_ANGLE, 2, "", *_angle_range(alpha, int(prefix)), None), None
            return (_ELEMENT, ""), _SITE
    elif kind == _ELEMENT:
        prefix = state[1]
        if prefix + ch in _PREFIX_INDEX:
            return (_ELEMENT, prefix + ch), None
        if ch == "\n" and prefix in _SYMBOL_INDEX:
            return (_COORD, 0, 0), prefix
    elif kind == _COORD:
        _, i, k = state
        if k < len(COORD_PATTERN):
            expected = COORD_PATTERN[k]
            if ch.isdigit() if expected == "d" else ch == expected:
                return (_COORD, i, k + 1), None
        elif i < COORDS_PER_SITE - 1 and ch == " ":
            return (_COORD, i + 1, 0), None
        elif i == COORDS_PER_SITE - 1 and ch == "\n":
            return (_ELEMENT, ""), _SITE
    return None


class _Automaton:
    """The crystal automaton for one tokenizer: lazily built states and their token tables.

    Each state's table (the tokens allowed from it, sorted by id, and what each
    does: next state, sites started, element completed, element prefix it stops in) is built on first use by
    walking the vocabulary trie, and stored in flat arrays (`columns`, one row per field) at `offset[state]`,
    `count[state]` entries long, so that the tables of many rows can be gathered in one numpy operation.
    """

    # Rows of `columns`. SHIFT, ADD: the coordinate digits the token writes, as code -> code * SHIFT + ADD on the
    # site's code (its six coordinate digits read as one integer); CLOSE: the token completes a coordinates line.
    IDS, NEXT, SITES, ELEMENT, PREFIX, SHIFT, ADD, CLOSE = range(_COLUMNS)

    def __init__(self, trie: dict):
        self._trie = trie
        self._states: dict[tuple, int] = {}
        self._keys: list[tuple] = []
        self._transitions: dict[tuple, dict] = {}
        self._size = 0
        self.columns = np.zeros((_COLUMNS, 1024), dtype=np.int64)
        self.offset = np.zeros(64, dtype=np.int64)
        self.count = np.zeros(64, dtype=np.int64)
        self.accept = np.zeros(
            64, dtype=bool
        )  # the text so far is complete: EOS may follow (counters permitting)
        self.built = np.zeros(64, dtype=bool)
        self.start = self.state_id(_START)

    def state_id(self, key: tuple) -> int:
        if key not in self._states:
            self._states[key] = len(self._keys)
            self._keys.append(key)
            if len(self._keys) > len(self.built):
                grow = len(self.built)
                self.offset = np.append(self.offset, np.zeros(grow, dtype=np.int64))
                self.count = np.append(self.count, np.zeros(grow, dtype=np.int64))
                self.accept = np.append(self.accept, np.zeros(grow, dtype=bool))
                self.built = np.append(self.built, np.zeros(grow, dtype=bool))
        return self._states[key]

    def _moves(self, state: tuple) -> dict:
        if state not in self._transitions:
            moves = {ch: _step(state, ch) for ch in _ALPHABET}
            self._transitions[state] = {ch: m for ch, m in moves.items() if m is not None}
        return self._transitions[state]

    def ensure(self, states: np.ndarray) -> None:
        """Build the tables of `states` that are not built yet."""
        missing = states[~self.built[states]]
        for state_id in np.unique(missing).tolist():
            self._build(state_id)

    def _build(self, state_id: int) -> None:
        """Walk the vocabulary trie from a state: every token whose whole text the automaton accepts."""
        state = self._keys[state_id]
        rows = []
        # (trie node, state, sites started, element completed, coordinate code shift and add, line completed)
        stack = [(self._trie, state, 0, _NONE, 1, 0, 0)]  # the trie root holds no token: no token is empty
        while stack:
            node, current, sites, element, shift, add, close = stack.pop()
            # A token that completes an element and stops inside the next one would need the counters
            # updated mid-token; such tokens are left out (single characters always remain).
            stops_in = _PREFIX_INDEX[current[1]] if current[0] == _ELEMENT else _NONE
            if not (element != _NONE and stops_in != _NONE):
                rows.extend(
                    (t, self.state_id(current), sites, element, stops_in, shift, add, close)
                    for t in node.get(None, ())
                )
            for ch, (nxt, event) in self._moves(current).items():
                child = node.get(ch)
                if child is None:
                    continue
                if current[0] == _COORD and ch.isdigit():
                    if close:  # digits of the next site after a completed line: left out, as above
                        continue
                    stack.append((child, nxt, sites, element, shift * 10, add * 10 + int(ch), nxt == _ACCEPT))
                elif event == _SITE:
                    stack.append((child, nxt, sites + 1, element, shift, add, close))
                elif event is None:
                    stack.append((child, nxt, sites, element, shift, add, close))
                elif element == _NONE:  # at most one element completed per token
                    stack.append((child, nxt, sites, _SYMBOL_INDEX[event], shift, add, close))
        rows.sort()
        table = np.array(rows, dtype=np.int64).reshape(-1, _COLUMNS).T
        size, n = self._size, table.shape[1]
        if size + n > self.columns.shape[1]:
            grown = np.zeros((_COLUMNS, max(2 * self.columns.shape[1], size + n)), dtype=np.int64)
            grown[:, :size] = self.columns[:, :size]
            self.columns = grown
        self.columns[:, size : size + n] = table
        self._size = size + n
        self.offset[state_id], self.count[state_id] = size, n
        self.accept[state_id] = state == _ACCEPT
        self.built[state_id] = True

    def entries(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The table entries of each state of `states` (built): (index into `states`, column in `columns`)."""
        counts = self.count[states]
        row = np.repeat(np.arange(len(states)), counts)
        # Column of entry k of row r: offset[states[r]] + k, with k counted from the row's first entry.
        shift = np.repeat(self.offset[states] - (np.cumsum(counts) - counts), counts)
        return row, np.arange(len(row)) + shift


def _token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """Each token's text as it reads inside a sequence (None for special tokens).

    Decoding a token alone can lose a leading space (SentencePiece "▁x" decodes to "x"), so every token is
    decoded after a "0" token and the "0" removed; byte tokens such as <0x0A> become their character.
    """
    zero = [i for i in tokenizer.encode("0", add_special_tokens=False) if tokenizer.decode([i]) == "0"]
    if not zero:
        raise ConstraintError(f"{type(tokenizer).__name__} has no token for the digit '0'")
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode(
        [[zero[0], t] for t in range(len(tokenizer))],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    return [None if t in special or not x.startswith("0") else x[1:] for t, x in enumerate(texts)]


def eos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's EOS id; ConstraintError when it has none (generation could never stop)."""
    if tokenizer.eos_token_id is None:
        raise ConstraintError(f"{type(tokenizer).__name__} has no EOS token: generation could never stop")
    return tokenizer.eos_token_id


def token_trie(texts: Sequence[str | None]) -> dict:
    """Token texts (`_token_texts`) as a trie: each node maps a character to a child, and None to the ids of the
    tokens that end there."""
    trie: dict = {}
    for token_id, text in enumerate(texts):
        if text:
            node = trie
            for ch in text:
                node = node.setdefault(ch, {})
            node.setdefault(None, []).append(token_id)
    return trie


def per_tokenizer(cache: weakref.WeakKeyDictionary, tokenizer: PreTrainedTokenizerBase, build):
    """`build(tokenizer)`, kept in `cache` per tokenizer (built again if tokens were added since)."""
    cached = cache.get(tokenizer)
    if cached is None or cached[0] != len(tokenizer):
        cached = cache[tokenizer] = (len(tokenizer), build(tokenizer))
    return cached[1]


class _Vocabulary:
    """A tokenizer's vocabulary as a trie of token texts, with its automaton."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.eos = eos_token_id(tokenizer)
        texts = _token_texts(tokenizer)
        missing = sorted(set(_ALPHABET) - {t for t in texts if t is not None and len(t) == 1})
        if missing:
            raise ConstraintError(
                f"{type(tokenizer).__name__} cannot write crystal text: no single token for {missing} "
                "(constrained decoding needs each digit, '.', ' ', '\\n' and each letter of the element symbols)"
            )
        self.automaton = _Automaton(token_trie(texts))


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vocabulary(tokenizer: PreTrainedTokenizerBase) -> _Vocabulary:
    """The cached `_Vocabulary` of `tokenizer`."""
    return per_tokenizer(_VOCABULARIES, tokenizer, _Vocabulary)


class _Rows:
    """Where each generated sequence of a batch stands, as arrays (one entry per row): automaton state, sites
    started, atoms left per element, which element prefixes can still complete, EOS written, the code of the
    coordinate digits written on the current site so far and the codes of the completed sites (-1: none)."""

    FIELDS = ("state", "sites", "remaining", "live", "finished", "code", "seen")

    def __init__(self, state, sites, remaining, live, finished, code, seen):
        self.state, self.sites, self.remaining, self.live = state, sites, remaining, live
        self.finished, self.code, self.seen = finished, code, seen

    @classmethod
    def start(cls, automaton: _Automaton, rules: list[_Rule]) -> _Rows:
        remaining = np.stack([rule.remaining for rule in rules])
        return cls(
            np.full(len(rules), automaton.start, dtype=np.int64),
            np.zeros(len(rules), dtype=np.int64),
            remaining,
            _live(remaining),
            np.zeros(len(rules), dtype=bool),
            np.zeros(len(rules), dtype=np.int64),
            np.full((len(rules), max(rule.limit for rule in rules)), -1, dtype=np.int64),
        )

    def take(self, index: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, name)[index] for name in self.FIELDS))


def _live(remaining: np.ndarray) -> np.ndarray:
    """live[r, p]: some element with atoms left in row r starts with prefix p; the last column answers _NONE."""
    live = np.ones((remaining.shape[0], _SUBTREE.shape[1] + 1), dtype=bool)
    live[:, :-1] = (remaining[:, :-1] > 0) @ _SUBTREE
    return live


class _Rule:
    """A `CrystalConstraint` in the form the processor applies."""

    def __init__(self, constraint: CrystalConstraint):
        # remaining atoms per element; the extra last entry answers _NONE ("no element completed").
        self.remaining = np.zeros(len(ELEMENT_SYMBOLS) + 1, dtype=np.int64)
        self.remaining[-1] = 1
        if constraint.composition is not None:
            for symbol, count in constraint.composition.items():
                self.remaining[_SYMBOL_INDEX[symbol]] = int(count)
            self.limit, self.exact = int(sum(constraint.composition.values())), True
        else:
            for symbol in constraint.elements or ELEMENT_SYMBOLS:
                self.remaining[_SYMBOL_INDEX[symbol]] = _UNLIMITED
            self.limit, self.exact = constraint.max_sites, False


class CrystalLogitsProcessor(LogitsProcessor):
    """Masks every token that would make the completion stop being valid crystal text (see module docstring).

    Args:
        tokenizer: the model's tokenizer; it needs single tokens for the digits, ".", " ", "\\n", the letters
            of the element symbols, and an EOS token (ConstraintError otherwise).
        constraints: one `CrystalConstraint` for every row, or one per row (expand the prompts to one row per
            sample, as `hf_crystal.generation_utils.generate_rows` expects, rather than `num_return_sequences`).
        prompt_length: width of the (left-padded) prompt batch: generated tokens start at this column.

    Works with sampling, greedy and beam search: rows are recognised by their generated tokens, not by
    position. Rows that have written EOS are left alone (generate pads them).

    Per step, the rows' states are advanced by the new column of tokens and the allowed tokens of every row are
    gathered from the automaton's tables in a few numpy operations over the whole batch (no Python loop over
    rows or over the vocabulary). When the rows continue those of the previous call (sampling, greedy) only the
    new tokens are applied; otherwise (beam search reorders rows) each row's state is found from its parent's by
    its generated tokens, or replayed from the start. `select(rows)` gives the processor of a subset of the rows,
    states included, for a `generate` call that continues those rows only.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        constraints: CrystalConstraint | Sequence[CrystalConstraint],
        prompt_length: int,
    ):
        if prompt_length < 0:
            raise ConstraintError(f"prompt_length must be >= 0, got {prompt_length}")
        vocabulary = _vocabulary(tokenizer)
        self._single = isinstance(constraints, CrystalConstraint)
        constraints = [constraints] if self._single else list(constraints)
        if not constraints or not all(isinstance(c, CrystalConstraint) for c in constraints):
            raise ConstraintError("constraints must be a CrystalConstraint or a non-empty sequence of them")
        self._automaton = vocabulary.automaton
        self._rules = [_Rule(c) for c in constraints]
        self._eos = vocabulary.eos
        self._vocab_size = len(tokenizer)
        self._prompt_length = prompt_length
        self._row_rules: list[_Rule] | None = (
            None  # the rule of each row, fixed by the first call (or select)
        )
        self._limit = self._exact = None
        self._rows: _Rows | None = None  # state of each row after `_generated`
        self._generated: torch.Tensor | None = None  # generated tokens of the rows at the last call

    def _bind(self, batch: int) -> None:
        """Fix the rule of each of `batch` rows."""
        if self._single:
            rules = self._rules * batch
        elif batch != len(self._rules):
            raise ConstraintError(
                f"batch of {batch} rows, but {len(self._rules)} constraints: give one per row (or a single one)"
            )
        else:
            rules = self._rules
        self._row_rules = rules
        self._limit = np.array([rule.limit for rule in rules], dtype=np.int64)
        self._exact = np.array([rule.exact for rule in rules], dtype=bool)

    def select(self, rows: Sequence[int]) -> CrystalLogitsProcessor:
        """The processor of rows `rows` only (in that order), with their states: for a `generate` call that
        continues these rows (the same prompt width, every token generated so far in its input_ids)."""
        if self._rows is None:
            raise ConstraintError("select() needs a processor that has been applied at least once")
        index = np.asarray(rows, dtype=np.int64)
        other = object.__new__(CrystalLogitsProcessor)
        other.__dict__.update(self.__dict__)
        other._single = False
        other._rules = [self._row_rules[i] for i in index]
        other._row_rules = other._rules
        other._limit, other._exact = self._limit[index], self._exact[index]
        other._rows = self._rows.take(index)
        other._generated = self._generated[torch.from_numpy(index)]
        return other

    def _advance(self, rows: _Rows, index: np.ndarray, tokens: np.ndarray) -> None:
        """Rows `index` of `rows` write `tokens` (one each), in place."""
        eos = tokens == self._eos
        going = ~rows.finished[index]
        rows.finished[index[eos & going]] = True
        moving = going & ~eos
        index, tokens = index[moving], tokens[moving]
        if not len(index):
            return
        automaton = self._automaton
        states = rows.state[index]
        automaton.ensure(states)
        row, column = automaton.entries(states)
        hit = automaton.columns[automaton.IDS, column] == tokens[row]
        found = np.zeros(len(index), dtype=bool)
        found[row[hit]] = True
        if not found.all():
            raise ConstraintError(
                f"token {int(tokens[~found][0])} cannot follow the text written so far: it was not allowed by this "
                "processor (another processor or a forced token overrode the mask?)"
            )
        column = column[hit]  # one entry per row, in row order: a token appears once in a table
        code = (
            rows.code[index] * automaton.columns[automaton.SHIFT, column]
            + automaton.columns[automaton.ADD, column]
        )
        close = automaton.columns[automaton.CLOSE, column] == 1
        rows.seen[index[close], rows.sites[index[close]] - 1] = code[close]  # `sites` counts the closed site
        rows.code[index] = np.where(close, 0, code)
        rows.state[index] = automaton.columns[automaton.NEXT, column]
        rows.sites[index] += automaton.columns[automaton.SITES, column]
        element = automaton.columns[automaton.ELEMENT, column]
        done = element != _NONE
        if done.any():
            changed = index[done]
            rows.remaining[changed, element[done]] -= 1
            rows.live[changed] = _live(rows.remaining[changed])

    def _follow(self, generated: torch.Tensor) -> _Rows:
        """The state of every row after its `generated` tokens."""
        previous, rows = self._generated, self._rows
        batch, width = generated.shape
        tokens = generated.numpy()
        if (
            previous is not None
            and previous.shape[0] == batch
            and previous.shape[1] <= width
            and torch.equal(generated[:, : previous.shape[1]], previous)
        ):  # the same rows, some tokens further: apply the new tokens
            start = previous.shape[1]
        else:  # reordered rows (beam search) or a new batch: each row from its parent's state, else from scratch
            start = 0
            parents = np.full(batch, -1)
            if previous is not None and width and previous.shape[1] == width - 1:
                known = {bytes(row): i for i, row in enumerate(previous.numpy())}
                parents = np.array([known.get(bytes(row), -1) for row in tokens[:, :-1]])
            if (parents >= 0).all():
                rows, start = rows.take(parents), width - 1
            else:
                fresh = _Rows.start(self._automaton, self._row_rules)
                if (parents >= 0).any():
                    # Replay the orphans from the start, take the others from their parents.
                    orphans = np.flatnonzero(parents < 0)
                    for column in range(width):
                        self._advance(fresh, orphans, tokens[orphans, column])
                    adopted = np.flatnonzero(parents >= 0)
                    parent_rows = rows.take(parents[adopted])
                    self._advance(parent_rows, np.arange(len(adopted)), tokens[adopted, -1])
                    for name in _Rows.FIELDS:
                        getattr(fresh, name)[adopted] = getattr(parent_rows, name)
                    return fresh
                rows = fresh
        everyone = np.arange(batch)
        for column in range(start, width):
            self._advance(rows, everyone, tokens[:, column])
        return rows

    @staticmethod
    def _distinct_sites(ok, entry, row, close, code, rows: _Rows, may_end) -> np.ndarray:
        """`ok` without the entries that complete a coordinates line equal to an earlier site's of the row,
        except in rows (`entry` indexes `may_end`) that would then have no choice left."""
        repeat = np.zeros_like(ok)
        repeat[close] = (rows.seen[row[close]] == code[close, None]).any(axis=1)
        if not (repeat & ok).any():
            return ok
        distinct = ok & ~repeat
        stuck = (np.bincount(entry[distinct], minlength=len(may_end)) == 0) & ~may_end
        return distinct | (ok & stuck[entry])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] < self._vocab_size:
            raise ConstraintError(
                f"scores have {scores.shape[-1]} columns but the tokenizer has {self._vocab_size} tokens: "
                "resize the model's embeddings (model.resize_token_embeddings(len(tokenizer)))"
            )
        generated = input_ids[:, self._prompt_length :].cpu()
        if self._row_rules is None or len(self._row_rules) != generated.shape[0]:
            self._bind(generated.shape[0])
            self._rows = self._generated = None
        rows = self._rows = self._follow(generated)
        self._generated = generated
        # Allowed tokens of every unfinished row, from its state's table and its counters.
        active = np.flatnonzero(~rows.finished)
        automaton = self._automaton
        states = rows.state[active]
        automaton.ensure(states)
        entry, column = automaton.entries(states)
        row = active[entry]
        ids, _, sites, element, prefix, shift, add, close = automaton.columns[:, column]
        ok = (
            rows.live[row, prefix]
            & (rows.remaining[row, element] > 0)
            & (rows.sites[row] + sites <= self._limit[row])
        )
        may_end = automaton.accept[states] & (~self._exact[active] | ~rows.remaining[active, :-1].any(axis=1))
        ok = self._distinct_sites(ok, entry, row, close == 1, rows.code[row] * shift + add, rows, may_end)
        ending = active[may_end]
        # Copy the allowed scores into a -inf tensor: cheaper than building and applying a full boolean mask.
        masked = torch.full_like(scores, float("-inf"))
        index = (
            torch.from_numpy(np.concatenate([row[ok], ending])).to(scores.device),
            torch.from_numpy(np.concatenate([ids[ok], np.full(len(ending), self._eos)])).to(scores.device),
        )
        masked[index] = scores[index]
        finished = np.flatnonzero(rows.finished)
        if len(finished):
            finished = torch.from_numpy(finished).to(scores.device)
            masked[finished] = scores[finished]
        return masked
