"""Instance files: the ``toysim.instance/1`` JSON contract read by ``toysim exact``.

Every field is validated at this boundary; a malformed file raises ``ValueError`` whose message
names the field and what was expected. Numbers are read as float64.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np

from ._harms import (
    Harm,
    TableHarm,
    automaton_harm,
    deadline_harm,
    first_decisive_harm,
    graded_harm,
    table_harm,
    trigger_harm,
    unreachable_states,
)
from ._policies import MarkovParams, MarkovPolicy, TabularPolicy

FORMAT = "toysim.instance/1"


class Instance(NamedTuple):
    """A parsed instance: a policy with its parameters, a harm, and ``λ``."""

    policy: Any
    params: Any
    harm: Harm
    lam: float


def _reject_constant(name: str):
    raise ValueError(f"instance holds {name}; numbers must be finite")


def loads(text: str) -> Instance:
    """Parse and validate an instance from JSON text.

    Raises:
      ValueError: naming the offending field.
    """
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"instance is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    return from_dict(data)


def load(path: str) -> Instance:
    """Read an instance file (see :func:`loads`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read instance file {path!r}: {err}") from None
    return loads(text)


def _get(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"missing field {where}{key}")
    return obj[key]


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _array(value: Any, name: str, shape: tuple[int, ...], integer: bool = False) -> np.ndarray:
    """A nested list of numbers with exactly ``shape``."""

    def walk(v, depth, path):
        if depth == len(shape):
            if integer:
                return _int(v, f"{name}{path}", -(2**62))
            return _number(v, f"{name}{path}")
        if not isinstance(v, list):
            raise ValueError(f"{name}{path} must be a list of length {shape[depth]}, got {type(v).__name__}")
        if len(v) != shape[depth]:
            raise ValueError(f"{name}{path} must have length {shape[depth]}, got {len(v)}")
        return [walk(x, depth + 1, f"{path}[{i}]") for i, x in enumerate(v)]

    return np.asarray(walk(value, 0, ""), dtype=np.int64 if integer else np.float64).reshape(shape)


def _token_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of tokens")
    return [_int(v, f"{name}[{i}]", 0) for i, v in enumerate(value)]


def _policy(spec: Any, vocab: int, horizon: int):
    if not isinstance(spec, dict):
        raise ValueError("policy must be an object")
    kind = _get(spec, "kind", "policy.")
    if kind == "tabular":
        policy = TabularPolicy(vocab, horizon)
        rows = _array(_get(spec, "logits", "policy."), "policy.logits", (policy.num_rows, vocab))
        return policy, policy.from_rows(rows)
    if kind == "markov":
        policy = MarkovPolicy(vocab, horizon, order=1)
        initial = _array(_get(spec, "initial_logits", "policy."), "policy.initial_logits", (vocab,))
        trans = _array(_get(spec, "transition_logits", "policy."), "policy.transition_logits", (vocab, vocab))
        return policy, MarkovParams(np.concatenate([trans, initial[None, :]], axis=0))
    raise ValueError(f"policy.kind must be 'tabular' or 'markov', got {kind!r}")


def _harm(spec: Any, vocab: int, horizon: int) -> Harm:
    if not isinstance(spec, dict):
        raise ValueError("harm must be an object")
    kind = _get(spec, "kind", "harm.")
    if kind == "table":
        return table_harm(
            _array(_get(spec, "values", "harm."), "harm.values", (vocab**horizon,)), vocab, horizon
        )
    if kind == "automaton":
        trans = _get(spec, "transitions", "harm.")
        if not isinstance(trans, list) or not trans:
            raise ValueError("harm.transitions must be a non-empty list of rows")
        n_states = len(trans)
        harm = automaton_harm(
            _int(_get(spec, "start", "harm."), "harm.start", 0),
            _array(trans, "harm.transitions", (n_states, vocab), integer=True),
            _array(_get(spec, "final_harm", "harm."), "harm.final_harm", (n_states,)),
            vocab,
        )
        # In a file, a state that no token sequence reaches is almost always a typo in the
        # transitions (the Python API accepts them: padding to a fixed S reuses compiled programs).
        lost = unreachable_states(harm)
        if lost:
            raise ValueError(
                f"harm.transitions: state(s) {lost} cannot be reached from the start state "
                f"{harm.start} (check the transitions, or remove those states)"
            )
        return harm
    if kind == "deadline":
        return deadline_harm(
            vocab,
            _token_list(_get(spec, "harmful_tokens", "harm."), "harm.harmful_tokens"),
            _int(_get(spec, "deadline", "harm."), "harm.deadline", 1),
        )
    if kind == "first_decisive":
        undecided = _number(spec.get("undecided_harm", 0.0), "harm.undecided_harm")
        return first_decisive_harm(
            vocab,
            _token_list(_get(spec, "comply_tokens", "harm."), "harm.comply_tokens"),
            _token_list(_get(spec, "refuse_tokens", "harm."), "harm.refuse_tokens"),
            undecided,
        )
    if kind == "trigger":
        return trigger_harm(vocab, _token_list(_get(spec, "trigger_tokens", "harm."), "harm.trigger_tokens"))
    if kind == "graded":
        return graded_harm(
            vocab, horizon, _token_list(_get(spec, "harmful_tokens", "harm."), "harm.harmful_tokens")
        )
    raise ValueError(
        "harm.kind must be one of 'table', 'automaton', 'deadline', 'first_decisive', "
        f"'trigger', 'graded'; got {kind!r}"
    )


def from_dict(data: Any) -> Instance:
    """Validate a decoded instance object (see the README for the format)."""
    if not isinstance(data, dict):
        raise ValueError("instance must be a JSON object")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise ValueError(f"format must be {FORMAT!r}, got {fmt!r}")
    vocab = _int(_get(data, "vocab_size", ""), "vocab_size", 2)
    horizon = _int(_get(data, "horizon", ""), "horizon", 1)
    lam = _number(_get(data, "lambda", ""), "lambda")
    if lam <= 0:
        raise ValueError(f"lambda must be > 0, got {lam}")
    policy_spec, harm_spec = _get(data, "policy", ""), _get(data, "harm", "")
    tabular = isinstance(policy_spec, dict) and policy_spec.get("kind") == "tabular"
    table = isinstance(harm_spec, dict) and harm_spec.get("kind") == "table"
    if (tabular or table) and horizon * math.log(vocab) > 40 * math.log(2):
        # a file listing V**T numbers this large cannot exist; refuse before shaping it
        raise ValueError(
            f"a {'tabular policy' if tabular else 'harm table'} over vocab_size**horizon = {vocab}**{horizon} sequences is too large"
        )
    policy, params = _policy(policy_spec, vocab, horizon)
    harm = _harm(harm_spec, vocab, horizon)
    return Instance(policy, params, harm, lam)


def to_dict(instance: Instance) -> dict:
    """The JSON object of an instance (tabular or first-order Markov policy)."""
    policy, params, harm = instance.policy, instance.params, instance.harm
    v = policy.vocab_size
    out: dict[str, Any] = {
        "format": FORMAT,
        "vocab_size": v,
        "horizon": policy.horizon,
        "lambda": float(instance.lam),
    }
    if isinstance(policy, TabularPolicy):
        rows = np.concatenate([np.asarray(p, dtype=np.float64) for p in params], axis=0)
        out["policy"] = {"kind": "tabular", "logits": rows.tolist()}
    elif isinstance(policy, MarkovPolicy) and policy.order == 1:
        table = np.asarray(params.logits, dtype=np.float64)
        out["policy"] = {
            "kind": "markov",
            "initial_logits": table[v].tolist(),
            "transition_logits": table[:v].tolist(),
        }
    else:
        raise ValueError(f"instance files hold tabular or first-order Markov policies, not {policy!r}")
    if isinstance(harm, TableHarm):
        out["harm"] = {"kind": "table", "values": np.asarray(harm.values, dtype=np.float64).tolist()}
    else:
        out["harm"] = {
            "kind": "automaton",
            "start": int(harm.start),
            "transitions": np.asarray(harm.transitions).tolist(),
            "final_harm": np.asarray(harm.final_harm, dtype=np.float64).tolist(),
        }
    return out


def dumps(instance: Instance) -> str:
    """JSON text of an instance; floats round-trip exactly (``repr`` precision)."""
    return json.dumps(to_dict(instance), indent=1)
