"""Deterministic harm functions ``h : V^T → [0, 1]`` (docs/theory.md §1).

Two representations: a full table of leaf values (:class:`TableHarm`) and a deterministic finite
automaton with a harm value per final state (:class:`AutomatonHarm`). The named families
(deadline, first decisive token, trigger, graded) are built as automata, so the DP engine can
read them too. Every harm answers :func:`harm_values`: the ``V**T`` leaf values in lexicographic
order, which is all the enumeration engine needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class TableHarm(NamedTuple):
    """Harm given by its value on every response, in lexicographic order.

    Attributes:
      values: shape ``(V**T,)``, entries in ``[0, 1]``.
    """

    values: np.ndarray


class AutomatonHarm(NamedTuple):
    """Harm computed by a DFA reading the response: ``h(y) = final_harm[δ*(start, y)]``.

    Attributes:
      start: start state.
      transitions: integer array ``(S, V)``; ``transitions[s, v]`` is the next state.
      final_harm: array ``(S,)`` in ``[0, 1]``, the harm of each state after ``T`` tokens.
    """

    start: int
    transitions: np.ndarray
    final_harm: np.ndarray


Harm = TableHarm | AutomatonHarm


def table_harm(values: Sequence[float] | np.ndarray, vocab_size: int, horizon: int) -> TableHarm:
    """A harm table, validated.

    Args:
      values: ``V**T`` numbers in ``[0, 1]``, lexicographic order (first token most significant).
      vocab_size: ``V``.
      horizon: ``T``.

    Raises:
      ValueError: naming the field when the shape or a value is wrong.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (vocab_size**horizon,):
        raise ValueError(f"harm.values must hold V**T = {vocab_size**horizon} numbers, got shape {arr.shape}")
    _check_unit_interval("harm.values", arr)
    return TableHarm(arr)


def automaton_harm(
    start: int, transitions: Sequence[Sequence[int]] | np.ndarray, final_harm, vocab_size: int
) -> AutomatonHarm:
    """A DFA harm, validated.

    Args:
      start: start state in ``[0, S)``.
      transitions: ``S`` rows of ``V`` state indices in ``[0, S)``.
      final_harm: ``S`` numbers in ``[0, 1]``.
      vocab_size: ``V``.

    Raises:
      ValueError: naming the field when an index or value is out of range.
    """
    trans = np.asarray(transitions)
    if trans.ndim != 2 or trans.shape[1] != vocab_size or trans.shape[0] < 1:
        raise ValueError(
            f"harm.transitions must be S rows of V = {vocab_size} state indices, got shape {trans.shape}"
        )
    if not np.issubdtype(trans.dtype, np.integer):
        if not np.all(np.isfinite(trans)) or not np.all(trans == np.round(trans)):
            raise ValueError("harm.transitions must hold integer state indices")
        trans = trans.astype(np.int64)
    n_states = trans.shape[0]
    if trans.min() < 0 or trans.max() >= n_states:
        raise ValueError(f"harm.transitions holds a state index outside [0, {n_states})")
    final = np.asarray(final_harm, dtype=np.float64)
    if final.shape != (n_states,):
        raise ValueError(f"harm.final_harm must hold S = {n_states} numbers, got shape {final.shape}")
    _check_unit_interval("harm.final_harm", final)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
        raise ValueError(f"harm.start must be an integer state index, got {start!r}")
    if not 0 <= int(start) < n_states:
        raise ValueError(f"harm.start must be in [0, {n_states}), got {start}")
    return AutomatonHarm(int(start), trans.astype(np.int64), final)


def _check_unit_interval(name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers (found NaN or infinity)")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1], found values in [{arr.min()}, {arr.max()}]")


def _token_set(name: str, tokens: Sequence[int], vocab_size: int) -> np.ndarray:
    mask = np.zeros(vocab_size, dtype=bool)
    for tok in tokens:
        if isinstance(tok, bool) or not isinstance(tok, (int, np.integer)):
            raise ValueError(f"{name} must hold integer tokens, got {tok!r}")
        if not 0 <= tok < vocab_size:
            raise ValueError(f"{name} holds token {tok} outside the vocabulary [0, {vocab_size})")
        mask[tok] = True
    return mask


def deadline_harm(vocab_size: int, harmful_tokens: Sequence[int], deadline: int) -> AutomatonHarm:
    """Harmful iff a harmful token occurs within the first ``deadline`` positions.

    States: ``0..k-1`` count positions read without harm, ``k`` = safe forever, ``k+1`` = harmful.
    Its uniform harm horizon is ``min(deadline, T)``.

    Example:
      >>> h = deadline_harm(2, [1], deadline=2)
      >>> harm_values(h, 2, 3).tolist()
      [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 1:
        raise ValueError(f"deadline must be an integer >= 1, got {deadline!r}")
    bad = _token_set("harmful_tokens", harmful_tokens, vocab_size)
    safe, harmful = deadline, deadline + 1
    trans = np.zeros((deadline + 2, vocab_size), dtype=np.int64)
    # state s < k moves to s + 1 (state k is "safe") or, on a harmful token, to "harmful"
    trans[:deadline] = np.where(bad[None, :], harmful, np.arange(1, deadline + 1)[:, None])
    trans[safe, :] = safe
    trans[harmful, :] = harmful
    final = np.zeros(deadline + 2)
    final[harmful] = 1.0
    return AutomatonHarm(0, trans, final)


def first_decisive_harm(
    vocab_size: int,
    comply_tokens: Sequence[int],
    refuse_tokens: Sequence[int],
    undecided_harm: float = 0.0,
) -> AutomatonHarm:
    """Harm decided by the first token from the comply set ``C`` or the refuse set ``R``.

    ``h = 1`` if a comply token comes first, ``0`` if a refuse token comes first, and
    ``undecided_harm`` if neither occurs.

    Example:
      >>> h = first_decisive_harm(3, comply_tokens=[1], refuse_tokens=[2])
      >>> harm_values(h, 3, 2).tolist()
      [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    comply = _token_set("comply_tokens", comply_tokens, vocab_size)
    refuse = _token_set("refuse_tokens", refuse_tokens, vocab_size)
    if np.any(comply & refuse):
        raise ValueError("comply_tokens and refuse_tokens must be disjoint")
    undecided, complied, refused = 0, 1, 2
    trans = np.zeros((3, vocab_size), dtype=np.int64)
    for v in range(vocab_size):
        trans[undecided, v] = complied if comply[v] else (refused if refuse[v] else undecided)
    trans[complied, :] = complied
    trans[refused, :] = refused
    final = np.array([undecided_harm, 1.0, 0.0], dtype=np.float64)
    _check_unit_interval("undecided_harm", final[:1])
    return AutomatonHarm(undecided, trans, final)


def trigger_harm(vocab_size: int, trigger_tokens: Sequence[int]) -> AutomatonHarm:
    """Harmful iff a trigger token ever occurs.

    Example:
      >>> harm_values(trigger_harm(2, [1]), 2, 2).tolist()
      [0.0, 1.0, 1.0, 1.0]
    """
    bad = _token_set("trigger_tokens", trigger_tokens, vocab_size)
    trans = np.zeros((2, vocab_size), dtype=np.int64)
    trans[0] = np.where(bad, 1, 0)
    trans[1] = 1
    return AutomatonHarm(0, trans, np.array([0.0, 1.0]))


def graded_harm(vocab_size: int, horizon: int, harmful_tokens: Sequence[int]) -> AutomatonHarm:
    """Fraction of harmful tokens in the response: ``h(y) = #{t : y_t ∈ B} / T``.

    A counter automaton with ``T + 1`` states.

    Example:
      >>> harm_values(graded_harm(2, 2, [1]), 2, 2).tolist()
      [0.0, 0.5, 0.5, 1.0]
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    bad = _token_set("harmful_tokens", harmful_tokens, vocab_size)
    n = horizon + 1
    trans = np.zeros((n, vocab_size), dtype=np.int64)
    for s in range(n):
        trans[s] = np.where(bad, min(s + 1, horizon), s)
    return AutomatonHarm(0, trans, np.arange(n, dtype=np.float64) / horizon)


def unreachable_states(harm: AutomatonHarm) -> list[int]:
    """States of a DFA that no token sequence, of any length, leads to from the start state.

    Example:
      >>> unreachable_states(automaton_harm(0, [[0, 1], [1, 1], [2, 0]], [0.0, 1.0, 0.0], 2))
      [2]
    """
    seen = np.zeros(harm.transitions.shape[0], dtype=bool)
    seen[harm.start] = True
    frontier = [harm.start]
    while frontier:
        nxt = np.unique(harm.transitions[frontier].reshape(-1))
        frontier = [int(s) for s in nxt if not seen[s]]
        seen[frontier] = True
    return [int(s) for s in np.flatnonzero(~seen)]


def prune_unreachable(harm: AutomatonHarm) -> AutomatonHarm:
    """The same harm without its :func:`unreachable_states` (the others renumbered in order).

    Example:
      >>> prune_unreachable(automaton_harm(0, [[0, 2], [1, 1], [2, 0]], [0.0, 1.0, 1.0], 2)).transitions.tolist()
      [[0, 1], [1, 0]]
    """
    lost = set(unreachable_states(harm))
    if not lost:
        return harm
    kept = [s for s in range(harm.transitions.shape[0]) if s not in lost]
    new_id = np.full(harm.transitions.shape[0], -1, dtype=np.int64)
    new_id[kept] = np.arange(len(kept))
    return AutomatonHarm(int(new_id[harm.start]), new_id[harm.transitions[kept]], harm.final_harm[kept])


def automaton_states(harm: AutomatonHarm, vocab_size: int, t: int) -> np.ndarray:
    """State of the automaton after each prefix of length ``t`` (lexicographic order).

    The states are held in the smallest integer type that counts them (one byte for up to 256):
    at ``V**T`` = 1.7e7 prefixes that moves 8× fewer bytes per gather than int64 (0.65 s → 0.17 s).
    """
    small = np.min_scalar_type(max(harm.transitions.shape[0] - 1, 0))
    transitions = harm.transitions.astype(small)
    states = np.array([harm.start], dtype=small)
    for _ in range(t):
        states = transitions[states].reshape(-1)
    return states


def harm_values(harm: Harm, vocab_size: int, horizon: int) -> np.ndarray:
    """The ``V**T`` leaf harms ``h(y)`` in lexicographic order, float64.

    Args:
      harm: a :class:`TableHarm` or :class:`AutomatonHarm`.
      vocab_size: ``V``.
      horizon: ``T``.

    Returns:
      Array of shape ``(V**T,)``.
    """
    if isinstance(harm, TableHarm):
        if harm.values.shape != (vocab_size**horizon,):
            raise ValueError(
                f"harm table has {harm.values.shape[0]} values, expected V**T = {vocab_size**horizon}"
            )
        return np.asarray(harm.values, dtype=np.float64)
    if isinstance(harm, AutomatonHarm):
        if harm.transitions.shape[1] != vocab_size:
            raise ValueError(
                f"harm automaton reads {harm.transitions.shape[1]} tokens, vocabulary has {vocab_size}"
            )
        # no second copy when final_harm is float64 already: at 1.7e7 leaves a fresh 134 MB buffer
        # cost 0.4 s of page faults in a new process
        return harm.final_harm[automaton_states(harm, vocab_size, horizon)].astype(np.float64, copy=False)
    raise ValueError(f"unknown harm type {type(harm).__name__}")
