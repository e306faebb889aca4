"""Sweeps: many instances analysed at once, one row each in a CSV table (``toysim sweep``).

A sweep spec (``toysim.sweep/1``, JSON, or TOML on Python >= 3.11; docs/sweeps.md) names a base
instance file or a family of random instances, a grid and/or random ranges of parameters, the
quantities of the exact report wanted, the engine, the chunk size and the output path. A chunk's
policies are drawn in one call and each distinct harm is parsed once, as ``toysim exact`` parses
it; :func:`sweep_instance` writes any instance as a ``toysim.instance/1`` object holding exactly
the same numbers (tests/test_sweep.py checks them bit for bit), so each row replays.

Instances of one shape (engine, policy class, ``V``, ``T``, automaton states ``S``) are analysed in
chunks by one compiled program: ``jax.vmap`` of the per-instance analysis (the tree engine's
:func:`toysim._analysis.analysis`, the product engine's :func:`toysim._dp.dp_analyze_arrays`) over
stacked parameters, harms and ``λ``, the batch axis sharded over every local device
(``NamedSharding`` over a 1-d mesh); on CPU the tree engine runs each device's share in
cache-sized sub-batches (``jax.lax.map`` over that ``jax.vmap``, :func:`sub_batch`). Chunks are
padded to the chunk size (the last instance repeated), so each shape compiles once. Rows are
appended and flushed chunk by chunk; a rerun of the same spec skips the instances already in the
table. In a run of ``n`` processes, chunk ``i`` goes to process ``i mod n``, which writes its own
part file; :func:`merge_sweep_parts` joins them.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

FORMAT = "toysim.sweep/1"

SPEC_KEYS = ("format", "base", "family", "grid", "random", "quantities", "engine", "chunk_size", "output")
FAMILY_KEYS = ("policy", "vocab_size", "horizon", "harm", "lambda", "seed")
POLICY_KEYS = ("kind", "scale", "window", "hidden")
RANDOM_KEYS = ("seed", "samples", "ranges")
RANGE_KEYS = ("low", "high", "log")

# Quantities of the exact report (toysim exact) a sweep can tabulate: one number per instance, or
# one per position (columns ``name[t]``, ``t = 1..T``; ``horizon_distribution`` has ``t = 0..T``).
SCALAR_QUANTITIES = (
    "expected_harm",
    "harm_variance",
    "gradient_autodiff_max_abs_error",
    "uniform_horizon",
    "equilibrium_kl",
)
POSITION_QUANTITIES = (
    "harm_information",
    "gradient_norm_by_position",
    "autodiff_gradient_norm_by_position",
    "fisher_bound_by_position",
    "horizon_distribution",
    "equilibrium_kl_by_position",
)
QUANTITIES = SCALAR_QUANTITIES + POSITION_QUANTITIES
# Quantities that need the autodiff reference (computed only when one of them is asked for).
_AUTODIFF = ("autodiff_gradient_norm_by_position", "gradient_autodiff_max_abs_error")
# Quantities of the parameterisation, not of the law of responses: an MLP instance replays as a
# tabular one (the same law), so these are refused for the mlp family.
_OF_PARAMETERS = ("gradient_norm_by_position", "fisher_bound_by_position") + _AUTODIFF

# Parameters a grid or random range may set: family sweeps.
_FAMILY_PARAMS = {"lambda": float, "seed": int, "vocab_size": int, "horizon": int, "scale": float}
# Largest number of instances in one sweep (the list of instances is held in memory).
MAX_INSTANCES = 10**6
# Bytes written per cell of the CSV table, an upper bound (float64 repr is at most 24 characters).
_BYTES_PER_CELL = 26
# Fraction of the available memory a chunk may use when the chunk size is "auto".
_CHUNK_MEMORY_FRACTION = 0.25
# Largest "auto" chunk: a larger one spreads the cost of a compiled call over more instances, a
# smaller one loses less to a kill. 1,024 where every shape runs on the enumeration engine (in
# sub-batches, see _SUB_BATCH_BYTES); the DP's chunk is one jax.vmap, measured up to 64 instances.
_MAX_AUTO_CHUNK = 1024
_MAX_AUTO_CHUNK_DP = 256
# Working memory of the instances analysed at once within a chunk on the enumeration engine
# (:func:`sub_batch`, on CPU): V = 3, T = 6 ran fastest at 128-256 instances (21-43 MiB by the
# estimate), V = 4, T = 7 at 8-16 (27-53 MiB); both ran 2-3x slower with the whole chunk at once.
_SUB_BATCH_BYTES = 32 * 2**20


class SweepSpec(NamedTuple):
    """A validated sweep spec (:func:`load_sweep_spec`).

    Attributes:
      base: the base instance object (a dict) or ``None`` for a family sweep.
      base_path: the base instance file as written in the spec, or ``None``.
      family: the family object with its defaults filled in, or ``None``.
      grid: parameter name to its list of values (their cartesian product is swept).
      random: ``(seed, samples, ranges)`` or ``None``; ``ranges`` maps a name to ``(low, high, log)``.
      quantities: names of exact-report fields, in column order.
      engine: ``"auto"``, ``"enumerate"`` or ``"dp"``.
      chunk_size: instances per compiled call, or ``None`` for one sized from the memory estimate.
      output: path of the CSV table.
      digest: 16 hex digits of SHA-256 over everything that decides the rows (spec and base file).
    """

    base: dict | None
    base_path: str | None
    family: dict | None
    grid: dict
    random: tuple | None
    quantities: tuple[str, ...]
    engine: str
    chunk_size: int | None
    output: str
    digest: str


# ---------------------------------------------------------------------------------- the spec


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(obj: Any, allowed: Sequence[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise ValueError(f"{where} has unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(name: str, kind: type, value: Any, where: str) -> Any:
    if kind is int and not _is_int(value):
        raise ValueError(f"{where} must be an integer, got {_show(value)}")
    if kind is float and not _is_number(value):
        raise ValueError(f"{where} must be a finite number, got {_show(value)}")
    if name == "lambda" and not value > 0:
        raise ValueError(f"{where} must be > 0, got {_show(value)}")
    if name == "seed" and not 0 <= value <= 2**63 - 1:
        raise ValueError(f"{where} must be an integer in [0, 2**63 - 1], got {_show(value)}")
    if name == "vocab_size" and value < 2:
        raise ValueError(f"{where} must be >= 2, got {_show(value)}")
    if name == "horizon" and value < 1:
        raise ValueError(f"{where} must be >= 1, got {_show(value)}")
    if name == "scale" and value < 0:
        raise ValueError(f"{where} must be >= 0, got {_show(value)}")
    return float(value) if kind is float else value


def _parameter_kinds(base: dict | None, family: dict | None) -> dict[str, type]:
    """Every parameter a grid or range may set, with its type: family settings or ``lambda`` of a
    base instance, and ``harm.<field>`` for each numeric field of the harm object."""
    kinds = dict(_FAMILY_PARAMS) if family is not None else {"lambda": float}
    harm = (family or base or {}).get("harm")
    if isinstance(harm, dict):
        if harm.get("kind") == "first_decisive":  # optional in the instance format (default 0)
            kinds["harm.undecided_harm"] = float
        for key, value in harm.items():
            if _is_number(value):
                kinds[f"harm.{key}"] = int if _is_int(value) else float
    return kinds


def _read_spec_text(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(2**24 + 1)
    except OSError as err:
        raise ValueError(f"cannot read sweep spec {path!r}: {err.strerror}") from None
    if len(raw) > 2**24:
        raise ValueError(f"sweep spec {path!r} is larger than 16 MiB")
    if path.endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ValueError(
                "TOML sweep specs need Python >= 3.11 (tomllib); write the spec as JSON"
            ) from None
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"sweep spec {path!r} is not valid TOML: {err}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"sweep spec {path!r} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"sweep spec {path!r} is not UTF-8 text: {err}") from None


def load_sweep_spec(spec: str | dict, *, output: str | None = None) -> SweepSpec:
    """Read and validate a sweep spec (docs/sweeps.md) before anything is computed or written.

    Args:
      spec: path of a JSON (``.json``) or TOML (``.toml``, Python >= 3.11) file, or the decoded
        object. A relative ``base`` or ``output`` path is read relative to the spec file's folder.
      output: overrides the spec's ``output``.

    Returns:
      :class:`SweepSpec`.

    Raises:
      ValueError: naming the key for unknown keys, wrong types, empty ranges, unknown quantities, a
        missing output folder, or a base instance file that cannot be read.

    Example:
      >>> s = load_sweep_spec({"family": {"policy": {"kind": "markov"}, "vocab_size": 2, "horizon": 3,
      ...     "harm": {"kind": "trigger", "trigger_tokens": [1]}}, "grid": {"lambda": [0.5, 2.0]},
      ...     "quantities": ["expected_harm"], "output": "out.csv"})
      >>> len(sweep_points(s))
      2
    """
    folder = ""
    if isinstance(spec, str):
        folder = os.path.dirname(os.path.abspath(spec))
        spec = _read_spec_text(spec)
    data = _check_keys(spec, SPEC_KEYS, "sweep spec")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise ValueError(f"format must be {FORMAT!r}, got {_show(fmt)}")
    if ("base" in data) == ("family" in data):
        raise ValueError("sweep spec must name exactly one of 'base' (an instance file) or 'family'")

    base = family = base_path = None
    base_bytes = b""
    if "base" in data:
        base_path = data["base"]
        if not isinstance(base_path, str) or not base_path:
            raise ValueError(f"base must be the path of an instance file, got {_show(base_path)}")
        from ._instance import loads

        path = os.path.join(folder, base_path) if folder else base_path
        try:
            with open(path, "rb") as fh:
                base_bytes = fh.read()
        except OSError as err:
            raise ValueError(f"cannot read base instance {base_path!r}: {err.strerror}") from None
        loads(base_bytes.decode("utf-8", errors="replace"))  # validated as toysim exact would
        base = json.loads(base_bytes)
    else:
        family = _family(data["family"])

    kinds = _parameter_kinds(base, family)
    grid = _grid(data.get("grid", {}), kinds)
    rand = _random(data.get("random"), kinds, grid)
    if (
        family is not None
        and "lambda" not in family
        and "lambda" not in grid
        and not (rand and "lambda" in rand[2])
    ):
        raise ValueError("family sweep needs lambda: in family, grid or random.ranges")

    quantities = data.get("quantities")
    if not isinstance(quantities, list) or not quantities:
        raise ValueError(f"quantities must be a non-empty list of names of {', '.join(QUANTITIES)}")
    for name in quantities:
        if name not in QUANTITIES:
            raise ValueError(f"quantities holds {_show(name)}; known: {', '.join(QUANTITIES)}")
    if len(set(quantities)) != len(quantities):
        raise ValueError("quantities lists a name twice")
    if family is not None and family["policy"]["kind"] == "mlp":
        bad = [q for q in quantities if q in _OF_PARAMETERS]
        if bad:
            raise ValueError(
                f"quantities: {bad[0]} depends on the MLP's parameters, but an mlp row replays as the "
                "tabular instance of the same law; ask only for quantities of the law"
            )

    engine = data.get("engine", "auto")
    if engine not in ("auto", "enumerate", "dp"):
        raise ValueError(f"engine must be 'auto', 'enumerate' or 'dp', got {_show(engine)}")
    chunk = data.get("chunk_size", "auto")
    if chunk == "auto":
        chunk = None
    elif not _is_int(chunk) or chunk < 1:
        raise ValueError(f"chunk_size must be an integer >= 1 or 'auto', got {_show(chunk)}")

    out = output if output is not None else data.get("output")
    if not isinstance(out, str) or not out.strip():
        raise ValueError(f"output must be the path of a .csv file, got {_show(out)}")
    if output is None and folder and not os.path.isabs(out):
        out = os.path.join(folder, out)
    if not out.endswith(".csv"):
        raise ValueError(f"output must end in .csv (the table is CSV), got {_show(out)}")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise ValueError(f"output folder {out_dir!r} does not exist")

    decides = {k: data[k] for k in ("base", "family", "grid", "random", "quantities") if k in data}
    decides["engine"] = engine
    text = json.dumps(decides, sort_keys=True) + hashlib.sha256(base_bytes).hexdigest()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    spec_out = SweepSpec(base, base_path, family, grid, rand, tuple(quantities), engine, chunk, out, digest)
    n = _count(spec_out)
    if n > MAX_INSTANCES:
        raise ValueError(f"the sweep has {n} instances, more than the {MAX_INSTANCES} a sweep may hold")
    return spec_out


def _family(obj: Any) -> dict:
    fam = copy.deepcopy(_check_keys(obj, FAMILY_KEYS, "family"))
    for key in ("policy", "vocab_size", "horizon", "harm"):
        if key not in fam:
            raise ValueError(f"family is missing {key!r}")
    pol = _check_keys(fam["policy"], POLICY_KEYS, "family.policy")
    kind = pol.get("kind")
    if kind not in ("tabular", "markov", "mlp"):
        raise ValueError(f"family.policy.kind must be 'tabular', 'markov' or 'mlp', got {_show(kind)}")
    if kind != "mlp" and ("window" in pol or "hidden" in pol):
        raise ValueError("family.policy: window and hidden are settings of the mlp policy only")
    pol.setdefault("scale", 1.0)
    _check_value("scale", float, pol["scale"], "family.policy.scale")
    if kind == "mlp":
        pol.setdefault("window", 2)
        pol.setdefault("hidden", 8)
        for key in ("window", "hidden"):
            if not _is_int(pol[key]) or pol[key] < 1:
                raise ValueError(f"family.policy.{key} must be an integer >= 1, got {_show(pol[key])}")
    for key, kind_ in _FAMILY_PARAMS.items():
        if key in fam:
            _check_value(key, kind_, fam[key], f"family.{key}")
    fam.setdefault("seed", 0)
    harm = fam["harm"]
    if not isinstance(harm, dict) or harm.get("kind") not in (
        "deadline",
        "trigger",
        "graded",
        "first_decisive",
        "automaton",
    ):
        raise ValueError(
            "family.harm must be a harm object of the instance format of kind 'deadline', 'trigger', "
            f"'graded', 'first_decisive' or 'automaton', got {_show(harm)}"
        )
    return fam


def _grid(obj: Any, kinds: dict[str, type]) -> dict:
    grid = _check_keys(obj, tuple(kinds), "grid")
    out = {}
    for name, values in grid.items():
        if not isinstance(values, list):
            raise ValueError(f"grid.{name} must be a list of values, got {_show(values)}")
        if not values:
            raise ValueError(f"grid.{name} is empty: give at least one value")
        out[name] = [_check_value(name, kinds[name], v, f"grid.{name}[{i}]") for i, v in enumerate(values)]
    return out


def _random(obj: Any, kinds: dict[str, type], grid: dict) -> tuple | None:
    if obj is None:
        return None
    rnd = _check_keys(obj, RANDOM_KEYS, "random")
    for key in RANDOM_KEYS:
        if key not in rnd:
            raise ValueError(f"random is missing {key!r}")
    seed, samples = rnd["seed"], rnd["samples"]
    _check_value("seed", int, seed, "random.seed")
    if not _is_int(samples) or samples < 1:
        raise ValueError(f"random.samples must be an integer >= 1, got {_show(samples)}")
    ranges = _check_keys(rnd["ranges"], tuple(kinds), "random.ranges")
    if not ranges:
        raise ValueError("random.ranges is empty: give at least one parameter range")
    out = {}
    for name, rng in ranges.items():
        if name in grid:
            raise ValueError(f"{name} is both in grid and in random.ranges")
        where = f"random.ranges.{name}"
        _check_keys(rng, RANGE_KEYS, where)
        if "low" not in rng or "high" not in rng:
            raise ValueError(f"{where} needs low and high")
        low = _check_value(name, kinds[name], rng["low"], f"{where}.low")
        high = _check_value(name, kinds[name], rng["high"], f"{where}.high")
        log = rng.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"{where}.log must be true or false, got {_show(log)}")
        if high < low or (kinds[name] is float and high == low):
            raise ValueError(f"{where} is empty: low = {low} must be below high = {high}")
        if log and not low > 0:
            raise ValueError(f"{where}.log needs low > 0, got {low}")
        out[name] = (low, high, log)
    return (seed, samples, out)


def _count(spec: SweepSpec) -> int:
    n = math.prod(len(v) for v in spec.grid.values())
    return n * (spec.random[1] if spec.random else 1)


def sweep_points(spec: SweepSpec) -> list[dict]:
    """The parameter values of every instance, in instance-id order.

    The cartesian product of the grid (in the spec's key order, the last key varying fastest),
    each point repeated for the random samples (drawn by ``numpy.random.default_rng(random.seed)``,
    sample by sample, each range in the spec's order): ``id = point · samples + sample``.
    """
    names = list(spec.grid)
    draws = [{}]
    if spec.random is not None:
        seed, samples, ranges = spec.random
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(samples):
            d = {}
            for name, (low, high, log) in ranges.items():
                if isinstance(low, int) and isinstance(high, int) and not log:
                    d[name] = int(rng.integers(low, high, endpoint=True))
                elif isinstance(low, int) and isinstance(high, int):
                    d[name] = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
                elif log:
                    d[name] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
                else:
                    d[name] = float(rng.uniform(low, high))
            draws.append(d)
    points = []
    for values in itertools.product(*(spec.grid[n] for n in names)):
        for d in draws:
            points.append({**dict(zip(names, values)), **d})
    return points


# ---------------------------------------------------------------------------------- instances


def _setting(spec: SweepSpec, point: dict, name: str) -> Any:
    if name in point:
        return point[name]
    if name == "scale":
        return spec.family["policy"]["scale"]
    if name.startswith("harm."):
        return (spec.family or spec.base)["harm"].get(name[5:], 0.0)  # undecided_harm: default 0
    return (spec.family or spec.base)[name]


def _harm_object(spec: SweepSpec, point: dict) -> dict:
    harm = dict((spec.family or spec.base)["harm"])
    for name, value in point.items():
        if name.startswith("harm."):
            harm[name[5:]] = value
    return harm


# The harm of an instance as text, by (spec digest, swept harm fields): most sweeps have a few
# distinct harms for many instances, and a chunk would otherwise encode each one per instance.
_HARM_TEXT: dict[tuple, tuple[str, str]] = {}


def _harm_texts(spec: SweepSpec, point: dict) -> tuple[str, str]:
    """``(canonical JSON, compact JSON)`` of an instance's harm object: the first keys the parsed
    harm (:func:`_parsed_harm`), the second is the table's ``harm`` cell."""
    key = (spec.digest, *((k, v) for k, v in point.items() if k.startswith("harm.")))
    texts = _HARM_TEXT.get(key)
    if texts is None:
        if len(_HARM_TEXT) > 4096:
            _HARM_TEXT.clear()
        harm = _harm_object(spec, point)
        texts = _HARM_TEXT[key] = (json.dumps(harm, sort_keys=True), json.dumps(harm, separators=(",", ":")))
    return texts


@functools.cache
def _draw_program(kind: str, vocab_size: int, horizon: int, window: int, hidden: int):
    """``(seed, scale) ↦`` the logit table of a drawn policy: Markov ``(V + 1, V)`` (row ``V`` =
    BOS), tabular and MLP ``(rows, V)``, every prefix's logits in the instance format's order.
    Vmapped over keys for tabular and Markov policies (elementwise draws: the same bits at any
    batch size); one instance per call for the MLP, whose batched matmuls round differently."""
    import jax
    import jax.numpy as jnp

    from ._policies import MarkovPolicy, MLPPolicy, TabularPolicy

    if kind == "markov":
        model = MarkovPolicy(vocab_size, horizon, order=1)
    elif kind == "tabular":
        model = TabularPolicy(vocab_size, horizon)
    else:
        model = MLPPolicy(vocab_size, horizon, window=window, hidden=hidden)

    def one(seed, scale):
        params = model.init(jax.random.key(seed), scale)
        if kind == "markov":
            return params.logits
        return jnp.concatenate([model.logits(params, t) for t in range(horizon)])

    return jax.jit(one) if kind == "mlp" else jax.jit(jax.vmap(one))


def _draw_tables(spec: SweepSpec, points: list[dict]) -> np.ndarray:
    """The logit tables of a family's instances of one ``(V, T)``, stacked: ``init(key(seed),
    scale)`` of each point's policy (:func:`_draw_program`)."""
    pol = spec.family["policy"]
    v, t = _setting(spec, points[0], "vocab_size"), _setting(spec, points[0], "horizon")
    program = _draw_program(pol["kind"], v, t, pol.get("window", 0), pol.get("hidden", 0))
    seeds = np.array([_setting(spec, p, "seed") for p in points], dtype=np.uint64)
    scales = np.array([float(_setting(spec, p, "scale")) for p in points], dtype=np.float64)
    if pol["kind"] == "mlp":
        return np.stack([np.asarray(program(k, c), dtype=np.float64) for k, c in zip(seeds, scales)])
    return np.asarray(program(seeds, scales), dtype=np.float64)


def _policy_object(kind: str, table: np.ndarray) -> dict:
    if kind == "markov":
        v = table.shape[1]
        return {
            "kind": "markov",
            "initial_logits": table[v].tolist(),
            "transition_logits": table[:v].tolist(),
        }
    return {"kind": "tabular", "logits": table.tolist()}


def sweep_instance(spec: SweepSpec, point: dict) -> dict:
    """The ``toysim.instance/1`` object of one instance of the sweep (what ``--replay`` writes).

    A base sweep overrides ``lambda`` and ``harm.<field>`` of the base instance. A family sweep
    draws the policy with ``init(jax.random.key(seed), scale)`` of :class:`toysim.TabularPolicy`,
    :class:`toysim.MarkovPolicy` (order 1) or :class:`toysim.MLPPolicy` and writes its logits:
    ``markov`` as ``initial_logits``/``transition_logits``, ``tabular`` and ``mlp`` as the tabular
    rows of every prefix (an MLP's logits at each prefix: the same law of responses). The sweep
    itself analyses the same logits, drawn for a whole chunk at once.
    """
    from ._instance import FORMAT as INSTANCE_FORMAT

    if spec.base is not None:
        out = copy.deepcopy(spec.base)
        out["lambda"] = _setting(spec, point, "lambda")
        out["harm"] = _harm_object(spec, point)
        return out
    kind = "markov" if spec.family["policy"]["kind"] == "markov" else "tabular"
    return {
        "format": INSTANCE_FORMAT,
        "vocab_size": _setting(spec, point, "vocab_size"),
        "horizon": _setting(spec, point, "horizon"),
        "lambda": _setting(spec, point, "lambda"),
        "policy": _policy_object(kind, _draw_tables(spec, [point])[0]),
        "harm": _harm_object(spec, point),
    }


def _parameter_columns(spec: SweepSpec) -> list[str]:
    swept_harm = [
        n for n in list(spec.grid) + list(spec.random[2] if spec.random else {}) if n.startswith("harm.")
    ]
    if spec.base is not None:
        return ["base", "vocab_size", "horizon", "lambda", *swept_harm, "harm"]
    extra = ["window", "hidden"] if spec.family["policy"]["kind"] == "mlp" else []
    return ["policy", *extra, "vocab_size", "horizon", "scale", "seed", "lambda", *swept_harm, "harm"]


def _parameter_value(spec: SweepSpec, point: dict, name: str) -> Any:
    """The value of parameter column ``name`` (:func:`_parameter_columns`) for one instance."""
    if name == "base":
        return spec.base_path
    if name == "policy":
        return spec.family["policy"]["kind"]
    if name in ("window", "hidden"):
        return spec.family["policy"][name]
    if name == "harm":
        return _harm_texts(spec, point)[1]
    return _setting(spec, point, name)


# ---------------------------------------------------------------------------------- shapes, memory


class _Shape(NamedTuple):
    engine: str
    policy: str  # "tabular" or "markov" (an instance file's policy kind)
    vocab_size: int
    horizon: int
    n_states: int  # automaton states (DP), 0 for the enumeration


def _shape(spec: SweepSpec, markov: bool, vocab_size: int, horizon: int, harm) -> _Shape:
    """The shape of an instance: its engine (as ``toysim exact`` chooses it), policy kind, sizes."""
    from ._harms import AutomatonHarm

    automaton = isinstance(harm, AutomatonHarm)
    if spec.engine == "dp" and not (markov and automaton):
        raise ValueError(
            "engine 'dp' needs a first-order Markov policy and an automaton harm for every instance "
            "(use engine 'enumerate' or 'auto')"
        )
    engine = ("dp" if markov and automaton else "enumerate") if spec.engine == "auto" else spec.engine
    n_states = int(np.asarray(harm.transitions).shape[0]) if engine == "dp" else 0
    return _Shape(engine, "markov" if markov else "tabular", vocab_size, horizon, n_states)


def _shape_of(spec: SweepSpec, instance) -> _Shape:
    """:func:`_shape` of a parsed :class:`toysim.Instance`."""
    from ._policies import MarkovPolicy

    policy = instance.policy
    markov = isinstance(policy, MarkovPolicy) and policy.order == 1
    return _shape(spec, markov, policy.vocab_size, policy.horizon, instance.harm)


def _shape_from_point(spec: SweepSpec, point: dict) -> _Shape:
    """The shape of an instance from its settings alone (its harm parsed, its policy not drawn)."""
    from ._policies import MarkovPolicy

    if spec.base is not None:
        base = _parsed_base(json.dumps(spec.base))
        v, t = base.policy.vocab_size, base.policy.horizon
        harm = _parsed_harm(_harm_texts(spec, point)[0], v, t)
        return _shape(spec, isinstance(base.policy, MarkovPolicy), v, t, harm)
    v, t = _setting(spec, point, "vocab_size"), _setting(spec, point, "horizon")
    markov = spec.family["policy"]["kind"] == "markov"
    if not markov:
        from ._memory import check_fits

        check_fits(v, t)  # before tabulating V**T logit rows
    harm = _parsed_harm(_harm_texts(spec, point)[0], v, t)
    return _shape(spec, markov, v, t, harm)


def _autodiff(spec: SweepSpec) -> bool:
    return any(q in _AUTODIFF for q in spec.quantities)


def instance_bytes(shape: _Shape, autodiff: bool = True) -> float:
    """Memory estimate of one instance's analysis (``toysim._memory``) for a shape."""
    from ._memory import dp_estimate_bytes, estimate_bytes

    if shape.engine == "dp":
        return float(dp_estimate_bytes(shape.vocab_size, shape.horizon, shape.n_states, autodiff))
    return estimate_bytes(shape.vocab_size, shape.horizon)


class SweepPlan(NamedTuple):
    """The instances of a sweep, grouped into chunks of one shape (:func:`plan_sweep`).

    Attributes:
      points: the parameters of each instance, by id.
      shapes: the shape of each instance, by id.
      chunks: ``(shape, ids)`` in the order they run; chunk ``i`` belongs to process ``i mod n``.
      chunk_size: instances per compiled call (each chunk is padded to it).
      columns: the table's header.
    """

    points: list
    shapes: list
    chunks: list
    chunk_size: int
    columns: list


def _quantity_columns(spec: SweepSpec, horizon: int) -> list[str]:
    cols = []
    for q in spec.quantities:
        if q in SCALAR_QUANTITIES:
            cols.append(q)
        else:
            first = 0 if q == "horizon_distribution" else 1
            cols += [f"{q}[{t}]" for t in range(first, horizon + 1)]
    return cols


def _local_device_count() -> int:
    import jax

    return jax.local_device_count()


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Every instance's parameters and shape, the chunks, and the refusals before any work.

    Raises:
      ValueError: when one instance's analysis would not fit in memory, an explicit chunk would
        not, or the table would not fit on the output's disk.
    """
    from ._memory import available_bytes, refuse_unless_fits

    points = sweep_points(spec)
    shapes = []
    cache: dict[tuple, _Shape] = {}
    for point in points:
        key = tuple(sorted((k, v) for k, v in point.items() if k not in ("lambda", "seed", "scale")))
        if key not in cache:
            cache[key] = _shape_from_point(spec, point)
        shapes.append(cache[key])
    autodiff = _autodiff(spec)
    per_instance = max(instance_bytes(s, autodiff) for s in set(shapes))
    worst = max(set(shapes), key=lambda s: instance_bytes(s, autodiff))
    refuse_unless_fits(
        per_instance,
        f"one instance of the sweep (V = {worst.vocab_size}, T = {worst.horizon}, engine {worst.engine})",
        "reduce vocab_size or horizon",
    )
    devices = _local_device_count()
    if spec.chunk_size is None:
        fit = int(available_bytes() * _CHUNK_MEMORY_FRACTION // per_instance)
        cap = _MAX_AUTO_CHUNK_DP if any(s.engine == "dp" for s in set(shapes)) else _MAX_AUTO_CHUNK
        size = max(1, min(len(points), cap, fit))
    else:
        size = spec.chunk_size
        refuse_unless_fits(
            size * per_instance,
            f"chunk_size = {size} instances of the sweep at once",
            "lower chunk_size or use 'auto'",
        )
    size = -(-size // devices) * devices  # a multiple of the local devices, for the batch sharding
    groups: dict[_Shape, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    chunks = [(shape, ids[j : j + size]) for shape, ids in groups.items() for j in range(0, len(ids), size)]
    max_t = max(s.horizon for s in shapes)
    columns = ["id", *_parameter_columns(spec), "engine", *_quantity_columns(spec, max_t), "sweep"]
    need = (len(columns) + 64 * ("harm" in columns)) * _BYTES_PER_CELL * (len(points) + 1)
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(spec.output))).free
    if need > free:
        raise ValueError(
            f"the sweep's table ({len(points)} rows of {len(columns)} columns) needs about "
            f"{need / 2**30:.3g} GiB, more than the {free / 2**30:.2f} GiB free on the output's disk"
        )
    return SweepPlan(points, shapes, chunks, size, columns)


# ---------------------------------------------------------------------------------- batched analysis


@contextlib.contextmanager
def _no_prefix_sharding() -> Iterator[None]:
    """Trace the enumeration without its own prefix-axis sharding (``TOYSIM_SHARDING=0``): a sweep
    shards the batch axis instead, over the local devices only."""
    before = os.environ.get("TOYSIM_SHARDING")
    os.environ["TOYSIM_SHARDING"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOYSIM_SHARDING"]
        else:
            os.environ["TOYSIM_SHARDING"] = before


def _fields(result, names: tuple[str, ...]) -> tuple:
    return tuple(getattr(result, n) for n in names)


def enumerate_one(policy, names: tuple[str, ...], autodiff: bool):
    """``(params, h, λ) ↦`` the fields ``names`` of one instance's tree analysis (unbatched)."""
    from ._analysis import analysis
    from ._enumerate import forward
    from ._gradient import TreeGradients

    def one(params, h, lam):
        levels = forward(policy, params)
        result = analysis(levels, TreeGradients(policy, params, levels, h), h, lam, autodiff=autodiff)
        return _fields(result, names)

    return one


def dp_one(horizon: int, names: tuple[str, ...], autodiff: bool):
    """``(logits, start, transitions, final_harm, λ) ↦`` the fields ``names`` of one instance's
    product-engine analysis (unbatched; :func:`toysim._dp.dp_analyze_arrays`)."""
    from ._dp import Automaton, dp_analyze_arrays

    unroll = 4 if horizon >= 64 else 1  # as toysim.dp_analyze

    def one(logits, start, transitions, final_harm, lam):
        aut = Automaton(start, transitions, final_harm)
        return _fields(dp_analyze_arrays(logits, aut, lam, horizon, autodiff, unroll), names)

    return one


def sub_batch(per_instance: float, per_device: int) -> int:
    """Instances analysed at once within a device's share of a chunk (:func:`_enumerate_program`).

    On CPU the largest power of two whose working memory fits in :data:`_SUB_BATCH_BYTES`, at least
    1, at most the share (a power of two divides the usual chunk sizes, and ``jax.lax.map`` traces
    the analysis a second time for a remainder): sub-batches keep the processor's cache warm. On
    an accelerator, whose memory is not a cache, the whole share (one ``jax.vmap``)."""
    import jax

    if jax.default_backend() != "cpu":
        return per_device
    fit = max(1, int(_SUB_BATCH_BYTES // per_instance))
    return min(per_device, 1 << (fit.bit_length() - 1))


@functools.cache
def _enumerate_program(policy, names: tuple[str, ...], autodiff: bool, devices: int = 1, sub: int = 1):
    """One compiled program per (policy, fields, devices, sub-batch): :func:`enumerate_one` over a
    chunk's instances, ``(params, harm table, harm row of each instance, λ)`` (:func:`_stack`).

    The chunk (its length a multiple of ``devices``) is split into one share per device, the axis
    the batch sharding splits; each share runs ``sub`` instances at a time (``jax.lax.map`` of
    ``jax.vmap``), so that the working arrays stay a few tens of MiB, in the processor's cache,
    however large the chunk. One ``jax.vmap`` over a whole chunk got slower per instance as the
    chunk grew: V = 3, T = 6, 2,048 instances ran at 35-43k instances/s on CPU, against 80-110k in
    sub-batches of 128-256 (benchmarks/bench_sweep.py). ``sub`` equal to the share is one
    ``jax.vmap`` (on accelerators, whose memory is not a CPU cache).
    """
    import jax

    one = enumerate_one(policy, names, autodiff)

    def batch(params, leaf_harms, which, lam):
        def run(x):
            return one(x[0], leaf_harms[x[1]], x[2])

        def share(*xs):  # one device's instances
            return jax.vmap(run)(xs) if sub >= len(xs[1]) else jax.lax.map(run, xs, batch_size=sub)

        shares = jax.tree_util.tree_map(lambda x: x.reshape(devices, -1, *x.shape[1:]), (params, which, lam))
        out = jax.vmap(share)(*shares)
        return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), out)

    return jax.jit(batch)


@functools.cache
def _dp_program(horizon: int, names: tuple[str, ...], autodiff: bool):
    """One compiled program per (horizon, fields): :func:`dp_one` vmapped over instances."""
    import jax

    return jax.jit(jax.vmap(dp_one(horizon, names, autodiff)))


def _batch_sharding():
    """``NamedSharding`` of the batch axis over the local devices (1-d mesh ``"batch"``)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch"))


def _table_of(params, shape: _Shape) -> np.ndarray:
    """An instance's logit table (Markov ``(V + 1, V)``, tabular rows) from its parameters."""
    if shape.policy == "markov":
        return np.asarray(params.logits, dtype=np.float64)
    return np.concatenate([np.asarray(block, dtype=np.float64) for block in params])


def _stack(shape: _Shape, tables: np.ndarray, harms: list, lam: np.ndarray) -> tuple:
    """A chunk's inputs, batch axis first: logit tables, harms and ``λ``.

    The DP gets each instance's automaton. The enumeration gets each distinct harm tabulated once
    at the leaves, ``(U, V**T)``, and each instance's row of that table: a chunk's instances mostly
    share their harm, which is then neither copied per instance nor sent to the device per
    instance."""
    from ._harms import AutomatonHarm, harm_values
    from ._policies import MarkovParams

    lam = np.asarray(lam, dtype=np.float64)
    if shape.engine == "dp":
        start = np.array([int(h.start) for h in harms], dtype=np.int32)
        trans = np.stack([np.asarray(h.transitions, dtype=np.int32) for h in harms])
        final = np.stack([np.asarray(h.final_harm, dtype=np.float64) for h in harms])
        return (tables, start, trans, final, lam)
    v, t = shape.vocab_size, shape.horizon
    rows: dict[Any, int] = {}  # row of each distinct harm: by object first (parsed harms are shared)
    tabulated: dict[tuple, int] = {}  # then by content
    table: list[np.ndarray] = []
    which = np.empty(len(harms), dtype=np.int32)
    for j, h in enumerate(harms):
        row = rows.get(id(h))
        if row is None:
            if isinstance(h, AutomatonHarm):
                key = (int(h.start), *(np.asarray(a).tobytes() for a in (h.transitions, h.final_harm)))
            else:
                key = ("table", np.asarray(h.values, dtype=np.float64).tobytes())
            row = tabulated.get(key)
            if row is None:
                row = tabulated[key] = len(table)
                table.append(np.asarray(harm_values(h, v, t), dtype=np.float64))
            rows[id(h)] = row
        which[j] = row
    leaf_harms = np.stack(table)
    if shape.policy == "markov":
        return (MarkovParams(tables), leaf_harms, which, lam)
    offsets = np.cumsum([0] + [v**i for i in range(t)])
    return (tuple(tables[:, offsets[i] : offsets[i + 1]] for i in range(t)), leaf_harms, which, lam)


def stack_instances(instances: list, shape: _Shape) -> tuple:
    """:func:`_stack` of parsed instances (:class:`toysim.Instance`) of one shape."""
    tables = np.stack([_table_of(i.params, shape) for i in instances])
    return _stack(shape, tables, [i.harm for i in instances], [float(i.lam) for i in instances])


@functools.cache
def _parsed_harm(harm_json: str, vocab_size: int, horizon: int):
    """A harm object of the instance format, validated and built as ``toysim exact`` does."""
    from ._instance import harm_from_spec

    return harm_from_spec(json.loads(harm_json), vocab_size, horizon)


@functools.cache
def _parsed_base(base_json: str):
    from ._instance import from_dict

    return from_dict(json.loads(base_json))


def chunk_inputs(spec: SweepSpec, points: list[dict], shape: _Shape) -> tuple:
    """The stacked inputs of a chunk of the sweep, without building an instance file each: the
    family's policies drawn at once (:func:`_draw_tables`), each distinct harm parsed once."""
    v, t = shape.vocab_size, shape.horizon
    harms = [_parsed_harm(_harm_texts(spec, p)[0], v, t) for p in points]
    lam = [_setting(spec, p, "lambda") for p in points]
    if spec.base is not None:
        table = _table_of(_parsed_base(json.dumps(spec.base)).params, shape)
        tables = np.broadcast_to(table, (len(points), *table.shape))
    else:
        tables = _draw_tables(spec, points)
    return _stack(shape, tables, harms, lam)


def analyze_batch(inputs: tuple, shape: _Shape, names: tuple[str, ...], autodiff: bool) -> tuple:
    """The fields ``names`` of the exact analysis of same-shape instances, in one compiled call.

    ``inputs`` are a chunk's stacked arrays (:func:`chunk_inputs`, :func:`stack_instances`); the
    batch (its length a multiple of the local device count) is sharded over the local devices.

    Returns:
      ``(arrays, devices)``: one numpy array per name with the batch axis first, and the number of
      devices that held the batch.
    """
    return _fetch(_dispatch(inputs, shape, names, autodiff))


def _fetch(out: tuple) -> tuple:
    """:func:`analyze_batch`'s result from the device arrays of :func:`_dispatch` (waits for them)."""
    import jax

    devices = len(out[0].sharding.device_set)
    return tuple(np.asarray(x) for x in jax.device_get(out)), devices


def _dispatch(inputs: tuple, shape: _Shape, names: tuple[str, ...], autodiff: bool) -> tuple:
    """Start :func:`analyze_batch`'s program and return its device arrays without waiting (JAX
    dispatches asynchronously: the caller prepares the next chunk meanwhile)."""
    import jax

    from ._policies import MarkovPolicy, TabularPolicy

    sharding = _batch_sharding()
    if shape.engine == "dp":
        inputs = jax.device_put(inputs, sharding)
    else:  # the harm table is read by every instance: a copy on each device
        replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        inputs = jax.device_put(inputs, (sharding, replicated, sharding, sharding))
    if shape.engine == "dp":
        program = _dp_program(shape.horizon, names, autodiff)
    else:
        v, t = shape.vocab_size, shape.horizon
        policy = MarkovPolicy(v, t, order=1) if shape.policy == "markov" else TabularPolicy(v, t)
        devices = len(sharding.device_set)
        which = inputs[2]  # (params, leaf harms, harm row of each instance, λ)
        sub = sub_batch(instance_bytes(shape, autodiff), len(which) // devices)
        program = _enumerate_program(policy, names, autodiff, devices, sub)
    with _no_prefix_sharding():
        return program(*inputs)


# ---------------------------------------------------------------------------------- the table


def _cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def _rows(spec: SweepSpec, plan: SweepPlan, ids: list[int], shape: _Shape, arrays: tuple) -> list[list[str]]:
    """The table rows of a chunk's instances: parameters, engine, quantities, digest (floats by
    ``repr``, which reads back to the same float64; cells past an instance's horizon empty)."""
    index = {c: k for k, c in enumerate(plan.columns)}
    template = [""] * len(plan.columns)  # the cells every instance of the chunk shares
    for name, value in (
        ("engine", shape.engine),
        ("vocab_size", shape.vocab_size),
        ("horizon", shape.horizon),
        ("sweep", spec.digest),
    ):
        template[index[name]] = _cell(value)
    swept = set(spec.grid) | set(spec.random[2] if spec.random else ())
    varying = []  # parameter columns that differ between the sweep's instances: the swept ones
    for name in _parameter_columns(spec):
        if name in ("vocab_size", "horizon"):
            continue
        if name in swept or (name == "harm" and any(n.startswith("harm.") for n in swept)):
            varying.append((index[name], name))
        else:
            template[index[name]] = _cell(_parameter_value(spec, {}, name))
    blocks = []  # (first column, cells per instance, every cell of the chunk) of each quantity
    for name, arr in zip(spec.quantities, arrays):
        values = np.asarray(arr).reshape(len(ids), -1)
        first = (
            index[name]
            if name in SCALAR_QUANTITIES
            else index[f"{name}[{0 if name == 'horizon_distribution' else 1}]"]
        )
        flat = values.ravel().tolist()  # every cell of the block at once, then a slice per row
        cells = [str(int(x)) for x in flat] if name == "uniform_horizon" else list(map(repr, flat))
        blocks.append((first, values.shape[1], cells))
    rows = []
    for j, i in enumerate(ids):
        row = template.copy()
        row[0] = str(i)
        point = plan.points[i]
        for c, name in varying:
            row[c] = _cell(_parameter_value(spec, point, name))
        for first, width, cells in blocks:
            row[first : first + width] = cells[j * width : (j + 1) * width]
        rows.append(row)
    return rows


def read_table(path: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a sweep table (a last line cut by a killed process is dropped)."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return [], []
    return rows[0], rows[1:]


def _open_table(path: str, spec: SweepSpec, columns: list[str]) -> set[int]:
    """Create the table with its header, or check an existing one and return the ids it holds.

    A last line without its newline (cut by a killed process) is removed from the file.

    Raises:
      ValueError: when the file was made from a different spec (header or ``sweep`` digest).
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return set()
    header, rows = read_table(path)
    if header != columns:
        raise ValueError(
            f"{path} holds a table of another sweep (its columns differ); remove it or choose another output"
        )
    done = set()
    for row in rows:
        if len(row) != len(columns) or row[-1] != spec.digest:
            raise ValueError(
                f"{path} holds rows of another sweep spec (sweep digest {row[-1] if row else '?'} "
                f"!= {spec.digest}); remove it or choose another output"
            )
        i = int(row[0])
        if i in done:
            raise ValueError(f"{path} holds instance id {i} twice")
        done.add(i)
    return done


def _start_table(path: str, columns: list[str]) -> None:
    """Write the header (or cut a torn last line) before any chunk is appended."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(columns)
            fh.flush()
            os.fsync(fh.fileno())
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def _append(path: str, rows: list[list[str]]) -> None:
    """Append rows and flush them to the operating system: a killed process loses nothing written.
    No ``fsync`` (it cost as much as a 256-instance chunk's analysis): after a machine crash a
    rerun recomputes what did not reach the disk, and drops a torn last line."""
    with open(path, "a", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
        fh.flush()


def part_path(output: str, process_id: int, num_processes: int) -> str:
    """Part file of process ``process_id`` of ``num_processes``: ``OUT.part<i>of<n>.csv``."""
    return f"{output[:-4]}.part{process_id}of{num_processes}.csv"


class SweepResult(NamedTuple):
    """What :func:`sweep` did.

    Attributes:
      path: the table written (the part file of this process when ``num_processes > 1``).
      computed: instances analysed by this call.
      skipped: instances already in the table (resumed).
      chunks: chunks run by this call.
      devices: local devices the batches were sharded over.
      merged: path of the merged table when this call merged the parts, else ``None``.
    """

    path: str
    computed: int
    skipped: int
    chunks: int
    devices: int
    merged: str | None


def sweep(
    spec: str | dict | SweepSpec,
    *,
    process_id: int = 0,
    num_processes: int = 1,
    progress: bool | None = None,
    wait_for_parts: float = 0.0,
) -> SweepResult:
    """Run a sweep: analyse every instance of ``spec``, one CSV row each (docs/sweeps.md).

    Rows are appended and flushed chunk by chunk; a rerun resumes where a run stopped. With
    ``num_processes > 1`` this process runs chunks ``i`` with ``i mod num_processes == process_id``
    into its part file (:func:`part_path`); process 0 then waits up to ``wait_for_parts`` seconds
    for the other parts to be complete and merges them (:func:`merge_sweep_parts`).

    Args:
      spec: a path, a spec object, or a :class:`SweepSpec` from :func:`load_sweep_spec`.
      process_id, num_processes: this process's share of the chunks.
      progress: a progress line on stderr (default: only when stderr is a terminal).
      wait_for_parts: seconds process 0 waits for the other parts before merging (0: merge only
        if they are already complete).

    Returns:
      :class:`SweepResult`.

    Raises:
      ValueError: for a bad spec, an instance or chunk that would not fit in memory, a table that
        would not fit on disk, or an output made from a different spec; nothing is written then.
    """

    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    if not (_is_int(num_processes) and num_processes >= 1 and _is_int(process_id)):
        raise ValueError("num_processes must be an integer >= 1 and process_id an integer")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    plan = plan_sweep(spec)
    path = spec.output if num_processes == 1 else part_path(spec.output, process_id, num_processes)
    done = _open_table(path, spec, plan.columns)
    mine = [c for k, c in enumerate(plan.chunks) if k % num_processes == process_id]
    todo = [(shape, ids) for shape, ids in mine if not set(ids) <= done]
    show = sys.stderr.isatty() if progress is None else progress
    total = sum(len(ids) for _, ids in mine)
    _start_table(path, plan.columns)
    computed, devices, t0 = 0, _local_device_count(), time.monotonic()
    autodiff = _autodiff(spec)

    def inputs_of(chunk):
        shape, ids = chunk
        padded = ids + [ids[-1]] * (plan.chunk_size - len(ids))
        return chunk_inputs(spec, [plan.points[i] for i in padded], shape)

    inputs = inputs_of(todo[0]) if todo else None
    for k, (shape, ids) in enumerate(todo):
        out = _dispatch(inputs, shape, spec.quantities, autodiff)
        # the next chunk's inputs are drawn while this one computes; its program starts only
        # once this chunk's rows are written, so a kill loses at most the chunk in flight
        inputs = inputs_of(todo[k + 1]) if k + 1 < len(todo) else None
        arrays, devices = _fetch(out)
        keep = [j for j, i in enumerate(ids) if i not in done]
        rows = _rows(spec, plan, [ids[j] for j in keep], shape, tuple(a[keep] for a in arrays))
        _append(path, rows)
        computed += len(keep)
        if show:
            finished = len(done & {i for _, c in mine for i in c}) + computed
            rate = computed / max(time.monotonic() - t0, 1e-9)
            print(
                f"\rtoysim sweep: {finished}/{total} instances, chunk {k + 1}/{len(todo)}, {rate:.3g} instances/s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if show and todo:
        print(file=sys.stderr)
    merged = None
    if num_processes > 1 and process_id == 0:
        deadline = time.monotonic() + wait_for_parts
        while True:
            missing = _missing_parts(spec, plan, num_processes)
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if not missing:
            merged = merge_sweep_parts(spec, num_processes, plan=plan)
    return SweepResult(path, computed, total - computed, len(todo), devices, merged)


def _missing_parts(spec: SweepSpec, plan: SweepPlan, num_processes: int) -> int:
    """Instances not yet in their process's part file."""
    missing = 0
    for p in range(num_processes):
        path = part_path(spec.output, p, num_processes)
        want = {i for k, (_, ids) in enumerate(plan.chunks) if k % num_processes == p for i in ids}
        have = set()
        if os.path.exists(path):
            _, rows = read_table(path)
            have = {int(r[0]) for r in rows if len(r) == len(plan.columns)}
        missing += len(want - have)
    return missing


def merge_sweep_parts(
    spec: str | dict | SweepSpec, num_processes: int, *, plan: SweepPlan | None = None
) -> str:
    """Join the part files of a ``num_processes``-process sweep into its output table.

    The rows are written in the order a one-process run writes them (chunk by chunk), so the merged
    table equals the table of a one-process run of the same spec; the part files are kept.

    Raises:
      ValueError: when a part is missing rows, or holds rows of another spec.
    """
    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    if not _is_int(num_processes) or num_processes < 1:
        raise ValueError(f"num_processes must be an integer >= 1, got {_show(num_processes)}")
    plan = plan or plan_sweep(spec)
    rows: dict[int, list[str]] = {}
    for p in range(num_processes):
        path = part_path(spec.output, p, num_processes)
        if not os.path.exists(path):
            raise ValueError(f"part file {path} does not exist (has process {p} run?)")
        _open_table(path, spec, plan.columns)  # refuses another spec's rows
        for row in read_table(path)[1]:
            rows[int(row[0])] = row
    missing = len(plan.points) - len(rows)
    if missing:
        raise ValueError(f"the part files lack {missing} of the sweep's {len(plan.points)} instances")
    order = [i for _, ids in plan.chunks for i in ids]
    tmp = spec.output + ".merging"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(plan.columns)
        writer.writerows(rows[i] for i in order)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, spec.output)
    return spec.output


def sweep_replay(spec: str | dict | SweepSpec, instance_id: int) -> dict:
    """The ``toysim.instance/1`` object of row ``instance_id`` (``toysim sweep SPEC --replay ID``).

    ``toysim exact --engine <the row's engine>`` on it gives the row's numbers.

    Raises:
      ValueError: for an id outside the sweep.
    """
    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    points = sweep_points(spec)
    if not _is_int(instance_id) or not 0 <= instance_id < len(points):
        raise ValueError(f"--replay must be an instance id in [0, {len(points)}), got {_show(instance_id)}")
    return sweep_instance(spec, points[instance_id])


# ---------------------------------------------------------------------------------- plotting


def sweep_plot(table_path: str, x: str, y: str, group: str | None = None, out: str | None = None):
    """Draw a quantity of a sweep table against a swept parameter, one line per group.

    Rows with equal ``(group, x)`` (several seeds, say) are averaged; the line is the mean and the
    points are the rows. Uses matplotlib with the Agg backend.

    Args:
      table_path: a table written by :func:`sweep`.
      x: a column (a swept parameter such as ``lambda``).
      y: a numeric column (a quantity such as ``expected_harm`` or ``harm_information[2]``).
      group: a column whose values give one line each, or ``None``.
      out: where to save the figure (PNG, PDF, SVG), or ``None``.

    Returns:
      The matplotlib ``Figure``.

    Raises:
      ValueError: naming a column the table lacks or a non-numeric ``x`` or ``y``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not os.path.exists(table_path):
        raise ValueError(f"sweep table {table_path!r} does not exist")
    header, rows = read_table(table_path)
    for name in (x, y) + ((group,) if group else ()):
        if name not in header:
            raise ValueError(f"sweep table has no column {name!r}; columns: {', '.join(header)}")
    if out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ValueError(f"plot folder {os.path.dirname(os.path.abspath(out))!r} does not exist")
    ix, iy = header.index(x), header.index(y)
    ig = header.index(group) if group else None
    lines: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if row[ix] == "" or row[iy] == "":
            continue
        try:
            xv, yv = float(row[ix]), float(row[iy])
        except ValueError:
            raise ValueError(
                f"columns {x!r} and {y!r} must be numeric, got {row[ix]!r}, {row[iy]!r}"
            ) from None
        lines.setdefault(row[ig] if ig is not None else "", {}).setdefault(xv, []).append(yv)
    fig, ax = plt.subplots(figsize=(5, 3.5))

    def order(name: str):  # numeric groups in numeric order (seed 10 after seed 2)
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    for name, points in sorted(lines.items(), key=lambda item: order(item[0])):
        xs = sorted(points)
        label = f"{group} = {name}" if group else None
        (line,) = ax.plot(xs, [float(np.mean(points[v])) for v in xs], marker="o", label=label)
        for v in xs:
            ax.scatter([v] * len(points[v]), points[v], s=8, color=line.get_color(), alpha=0.5)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if group:
        ax.legend(fontsize="small")
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=120)
    return fig
