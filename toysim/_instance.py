"""Instance files: the ``toysim.instance/1`` JSON contract read by ``toysim exact``.

Every field is validated at this boundary; a malformed file raises ``ValueError`` whose message
names the field and what was expected. Numbers are read as float64.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from ._harms import (
    Harm,
    TableHarm,
    automaton_harm,
    deadline_harm,
    first_decisive_harm,
    graded_harm,
    prune_unreachable,
    table_harm,
    trigger_harm,
    unreachable_states,
)
from ._memory import check_automaton_fits
from ._policies import MarkovParams, MarkovPolicy, TabularPolicy
from ._types import Policy, PyTree

FORMAT = "toysim.instance/1"

# Largest instance file read (bytes), unless TOYSIM_MAX_FILE_BYTES says otherwise. A harm table or
# tabular policy big enough to need more describes an enumeration far beyond any machine (2^24
# leaves at 21 characters a number are 350 MB), and Python's parse holds several times the text.
MAX_FILE_BYTES = 2**28
_INT32_MAX = 2**31 - 1


class Instance(NamedTuple):
    """A parsed instance: a policy with its parameters, a harm, and ``λ``."""

    policy: Policy
    params: PyTree
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
    except ValueError as err:
        if "integer string conversion" in str(err):  # Python refuses ints of more than 4300 digits
            raise ValueError(
                "instance holds an integer with thousands of digits; numbers must fit float64 or int32"
            ) from None
        raise
    except RecursionError:  # the decoder recurses once per nesting level
        raise ValueError(
            "instance is nested too deeply to be a toysim.instance/1 file (at most 4 levels of lists and objects)"
        ) from None
    return from_dict(data)


def max_file_bytes() -> int:
    """The largest instance file :func:`load` reads: ``TOYSIM_MAX_FILE_BYTES`` or :data:`MAX_FILE_BYTES`."""
    env = os.environ.get("TOYSIM_MAX_FILE_BYTES")
    if not env:
        return MAX_FILE_BYTES
    try:
        return int(float(env))
    except ValueError:
        raise ValueError(f"TOYSIM_MAX_FILE_BYTES must be a number of bytes, got {env!r}") from None


def load(path: str) -> Instance:
    """Read an instance file (see :func:`loads`), at most :func:`max_file_bytes` bytes.

    The size is checked before reading: from the file's metadata for a regular file, by reading at
    most one byte more than the limit otherwise (a pipe or a device such as ``/dev/zero``).
    """
    cap = max_file_bytes()
    too_big = (
        f"instance file {path!r} is larger than {cap} bytes (TOYSIM_MAX_FILE_BYTES); "
        "an instance that large describes an enumeration beyond any machine"
    )
    try:
        with open(path, "rb") as fh:
            if os.path.isfile(path) and os.fstat(fh.fileno()).st_size > cap:
                raise ValueError(too_big)
            raw = fh.read(cap + 1)
        if len(raw) > cap:
            raise ValueError(too_big)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read instance file {path!r}: {err}") from None
    return loads(text)


def _get(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"missing field {where}{key}")
    return obj[key]


def _show(value: Any) -> str:
    """``repr`` of a value from the file, shortened (an integer may have thousands of digits)."""
    text = (
        repr(value)
        if not isinstance(value, int) or abs(value) < 10**40
        else f"an integer of {len(str(abs(value)))} digits"
    )
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {_show(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {_show(value)}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {_show(value)}")
    try:
        out = float(value)
    except OverflowError:  # an integer beyond the float64 range
        raise ValueError(f"{name} must be a finite float64 number, got {_show(value)}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {_show(value)}")
    return out


def _array(value: Any, name: str, shape: tuple[int, ...], index_below: int | None = None) -> np.ndarray:
    """A nested list of numbers with exactly ``shape``; of integers in ``[0, index_below)`` if given."""

    def walk(v, depth, path):
        if depth == len(shape):
            if index_below is not None:
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < index_below:
                    raise ValueError(
                        f"{name}{path} must be an integer state index in [0, {index_below}), got {_show(v)}"
                    )
                return v
            return _number(v, f"{name}{path}")
        if not isinstance(v, list):
            raise ValueError(f"{name}{path} must be a list of length {shape[depth]}, got {type(v).__name__}")
        if len(v) != shape[depth]:
            raise ValueError(f"{name}{path} must have length {shape[depth]}, got {len(v)}")
        return [walk(x, depth + 1, f"{path}[{i}]") for i, x in enumerate(v)]

    dtype = np.float64 if index_below is None else np.int64
    return np.asarray(walk(value, 0, ""), dtype=dtype).reshape(shape)


def _token_list(value: Any, name: str, vocab: int) -> list[int]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of tokens")
    return [_int(v, f"{name}[{i}]", 0, vocab - 1) for i, v in enumerate(value)]


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


def harm_from_spec(spec: Any, vocab: int, horizon: int) -> Harm:
    """The harm of an instance file's ``harm`` object, validated and built as ``toysim exact``
    builds it (also the sweep's, :func:`toysim._sweep._parsed_harm`).

    Raises:
      ValueError: one line naming the field, for a malformed object.
    """
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
            _int(_get(spec, "start", "harm."), "harm.start", 0, n_states - 1),
            _array(trans, "harm.transitions", (n_states, vocab), index_below=n_states),
            _array(_get(spec, "final_harm", "harm."), "harm.final_harm", (n_states,)),
            vocab,
        )
        # States the start state cannot reach are valid (a product of two automata, a generated or
        # minimised DFA, a padded one): they never change h. Dropped, with one line on stderr.
        lost = unreachable_states(harm)
        if lost:
            shown = ", ".join(map(str, lost[:10])) + (", ..." if len(lost) > 10 else "")
            print(
                f"toysim: warning: harm.transitions: {len(lost)} state(s) cannot be reached from the "
                f"start state {harm.start} and are ignored ({shown})",
                file=sys.stderr,
            )
            harm = prune_unreachable(harm)
        return harm
    if kind == "deadline":
        tokens = _token_list(_get(spec, "harmful_tokens", "harm."), "harm.harmful_tokens", vocab)
        given = _int(_get(spec, "deadline", "harm."), "harm.deadline", 1)
        # Every deadline >= T gives the same h on responses of length T (harmful iff a harmful
        # token occurs at all): clamp, so the automaton has T + 2 states at most, not deadline + 2.
        deadline = min(given, horizon)
        what = f"harm.deadline = {_show(given)}" + (
            f" (clamped to horizon = {horizon})" if given > horizon else ""
        )
        check_automaton_fits(deadline + 2, vocab, what)
        return deadline_harm(vocab, tokens, deadline)
    if kind == "first_decisive":
        undecided = _number(spec.get("undecided_harm", 0.0), "harm.undecided_harm")
        return first_decisive_harm(
            vocab,
            _token_list(_get(spec, "comply_tokens", "harm."), "harm.comply_tokens", vocab),
            _token_list(_get(spec, "refuse_tokens", "harm."), "harm.refuse_tokens", vocab),
            undecided,
        )
    if kind == "trigger":
        return trigger_harm(
            vocab, _token_list(_get(spec, "trigger_tokens", "harm."), "harm.trigger_tokens", vocab)
        )
    if kind == "graded":
        tokens = _token_list(_get(spec, "harmful_tokens", "harm."), "harm.harmful_tokens", vocab)
        check_automaton_fits(horizon + 1, vocab, f"harm.kind = 'graded' with horizon = {horizon}")
        return graded_harm(vocab, horizon, tokens)
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
    # the engines index tokens, positions and automaton states with int32
    vocab = _int(_get(data, "vocab_size", ""), "vocab_size", 2, _INT32_MAX)
    horizon = _int(_get(data, "horizon", ""), "horizon", 1, _INT32_MAX)
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
    harm = harm_from_spec(harm_spec, vocab, horizon)
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
