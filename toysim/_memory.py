"""Memory: every estimate of what a computation will hold, and the one refusal before it starts.

Each estimate is measured (the comment beside it says how) and rounded up; a computation whose
estimate exceeds :func:`available_bytes` is refused with a ``ValueError`` naming the sizes, the
estimate and what is available, before anything is allocated (the command line turns it into one
line and exit code 2). ``TOYSIM_MAX_BYTES`` caps what counts as available.
"""

from __future__ import annotations

import math
import os


def available_bytes() -> int:
    """Memory this process may use: ``TOYSIM_MAX_BYTES`` if set, else the machine's free memory."""
    env = os.environ.get("TOYSIM_MAX_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError as err:
            raise ValueError(f"TOYSIM_MAX_BYTES must be a number of bytes, got {env!r}") from err
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refuse_unless_fits(need: float, what: str, advice: str) -> None:
    """Raise ``ValueError("<what> needs about … GiB, more than the … GiB available (<advice>)")``
    when ``need`` bytes exceed :func:`available_bytes`."""
    have = available_bytes()
    if need > have:
        raise ValueError(
            f"{what} needs about {need / 2**30:.3g} GiB, more than the {have / 2**30:.2f} GiB available ({advice})"
        )


# ---------------------------------------------------------------------------------- enumeration

# Bytes held per leaf by the full `toysim exact` analysis, measured by benchmarks/bench_exact.py
# (peak resident memory over leaves at V**T ≈ 1.7e7 on CPU, float64), rounded up.
BYTES_PER_LEAF_ANALYSIS = 160


def estimate_bytes(vocab_size: int, horizon: int, bytes_per_leaf: int = BYTES_PER_LEAF_ANALYSIS) -> float:
    """Predicted peak memory of an enumeration over ``V**T`` leaves.

    Levels shorter than ``T`` add a factor ``V / (V − 1)`` to the leaf count.
    """
    log_nodes = math.log(vocab_size) * (horizon + 1) - math.log(vocab_size - 1)  # upper bound
    if log_nodes > 700:  # beyond any machine; avoid an overflow in the arithmetic below
        return math.inf
    nodes = sum(vocab_size**t for t in range(horizon + 1))
    return float(nodes) * bytes_per_leaf


def check_fits(vocab_size: int, horizon: int, bytes_per_leaf: int = BYTES_PER_LEAF_ANALYSIS) -> None:
    """Refuse an enumeration that would not fit in memory, before allocating it.

    Raises:
      ValueError: with the estimate and the available memory in the message.
    """
    refuse_unless_fits(
        estimate_bytes(vocab_size, horizon, bytes_per_leaf),
        f"enumeration over V**T = {vocab_size}**{horizon} leaves",
        "reduce vocab_size or horizon, or use a Markov policy with an automaton harm and the DP engine",
    )


# ---------------------------------------------------------------------------------- the DP engine

# Float64 numbers held per position by the DP analysis (toysim._dp.dp_analyze_arrays), per product
# state ``(V + 1) · S``: the stacks H, log Z and log P with the scan outputs they are assembled from,
# the autodiff adjoints with their zero perturbation and the carries saved by reverse mode; per edge
# ``S · V``: the children saved by reverse mode. About twice the measured growth, as a margin for
# XLA temporaries: peak resident memory grows by 6.7 (5.2 without autodiff) floats per state and
# position between T = 10^4 and 2 · 10^4 at V = 64, S = 8 (CPU); the whole process peaks at
# 0.68 GB (0.57 GB) at T = 10^4, of which about 0.35 GB is the interpreter, JAX and compilation,
# not in the estimate.
_FLOATS_PER_STATE = 14
_FLOATS_PER_STATE_NO_AUTODIFF = 11
_FLOATS_PER_EDGE = 2
# Bytes per entry of the one-hot transition tensor (S, V, S) that the forward, reachability and
# autodiff scans contract with: XLA's memory analysis of each compiled pass shows 16.1 to 16.7
# bytes per entry at S = 200..800, V = 2..8 (the boolean one-hot and its float64 copy,
# transposed); two such passes run side by side (dp_analyze_concurrent).
_BYTES_PER_ONEHOT_ENTRY = 32
# The recovery report (toysim deep --engine dp) adds, per state and position, H, log P, log Z,
# log Q and three no-recovery passes, with one float of margin: 8 floats.
_FLOATS_PER_STATE_DEEP = 8


def dp_automaton_bytes(vocab_size: int, n_states: int) -> int:
    """Memory of the DP passes' one-hot transition tensors: ``32 · S² · V`` bytes.

    Independent of ``T`` and quadratic in the number of automaton states ``S``: a DFA with 20,000
    states over 4 tokens needs about 51 GB, whatever the horizon.
    """
    return int(_BYTES_PER_ONEHOT_ENTRY * n_states * n_states * vocab_size)


def dp_estimate_bytes(vocab_size: int, horizon: int, n_states: int, autodiff: bool = True) -> int:
    """Predicted peak memory of the DP analysis (``toysim.dp_analyze``), independent of ``V**T``.

    ``8 · (T + 1) · (a · (V + 1) · S + b · S · V) + 32 · S² · V`` bytes, with ``a = 14, b = 2``
    (``a = 11, b = 0`` without the autodiff references): the per-position arrays, linear in ``T``,
    plus the one-hot transition tensors of :func:`dp_automaton_bytes`, quadratic in ``S``. Nothing
    of size ``(T, V + 1, V)`` is stored by the analysis (per-position gradients are reduced to
    norms chunk by chunk); ``dp_covariance_gradients`` and ``dp_untied_gradients`` do return
    ``T · (V + 1) · V`` numbers.
    """
    per_state = _FLOATS_PER_STATE if autodiff else _FLOATS_PER_STATE_NO_AUTODIFF
    per_edge = _FLOATS_PER_EDGE if autodiff else 0
    per_pos = per_state * (vocab_size + 1) * n_states + per_edge * n_states * vocab_size
    return int(8 * (horizon + 1) * per_pos) + dp_automaton_bytes(vocab_size, n_states)


def dp_check_fits(vocab_size: int, horizon: int, n_states: int, autodiff: bool = True) -> None:
    """Refuse a DP analysis whose arrays would not fit in memory (:func:`dp_estimate_bytes`).

    Raises:
      ValueError: with the estimate and the available memory.
    """
    refuse_unless_fits(
        dp_estimate_bytes(vocab_size, horizon, n_states, autodiff),
        f"DP analysis over T = {horizon} positions, V = {vocab_size}, S = {n_states} automaton states",
        "reduce horizon or vocab_size",
    )


def dp_deep_check_fits(vocab_size: int, horizon: int, n_states: int) -> None:
    """Refuse a DP recovery report (``toysim deep --engine dp``) that would not fit in memory: the
    analysis without autodiff plus :data:`_FLOATS_PER_STATE_DEEP` floats per state and position."""
    extra = 8 * (horizon + 1) * _FLOATS_PER_STATE_DEEP * (vocab_size + 1) * n_states
    refuse_unless_fits(
        dp_estimate_bytes(vocab_size, horizon, n_states, autodiff=False) + extra,
        f"DP deep report over T = {horizon}, V = {vocab_size}, S = {n_states}",
        "reduce horizon or vocab_size",
    )


def check_automaton_fits(n_states: int, vocab_size: int, what: str) -> None:
    """Refuse, before building it, a family automaton too large for the DP engine's passes.

    Only a huge ``deadline`` (clamped to the horizon first) or a huge horizon (the graded harm's
    counter) makes one; an instance that large has a horizon no enumeration can reach either.
    """
    refuse_unless_fits(
        dp_automaton_bytes(vocab_size, n_states),
        f"{what} makes an automaton with S = {n_states} states over V = {vocab_size} tokens; the DP "
        "engine's (S, V, S) transition tensor",
        "reduce horizon",
    )


# ---------------------------------------------------------------------------------- sampling


# Bytes per sampled sequence held by one REINFORCE estimate (``reinforce_gradients``), read from
# XLA's memory analysis of the compiled program (temporaries and outputs, N = 10^5 and 10^7):
# Markov 224 (V = 2, T = 4), 368 (4, 4), 516 (8, 3), 536 (2, 10), 432 (3, 6); tabular 208, 336,
# 452, 520, 408. The bound 8 · (3·T·V + 2·T + 4) is above each, by a factor 1.2 to 1.3.
def sampling_estimate_bytes(vocab_size: int, horizon: int, num_samples: int) -> int:
    """Predicted memory of one REINFORCE estimate over ``num_samples`` sequences (tabular or Markov)."""
    return 8 * (3 * horizon * vocab_size + 2 * horizon + 4) * num_samples


def check_samples_fit(vocab_size: int, horizon: int, num_samples: int) -> None:
    """Refuse a sample size whose estimate would not fit in memory, before sampling anything."""
    refuse_unless_fits(
        sampling_estimate_bytes(vocab_size, horizon, num_samples),
        f"--samples {num_samples}: one REINFORCE estimate over {num_samples} sequences of length "
        f"T = {horizon}, V = {vocab_size}",
        "use fewer samples",
    )
