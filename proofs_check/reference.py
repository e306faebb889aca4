"""Slow, obviously-correct references for the core checks: every sequence, one at a time.

Nothing here reads the engine's arrays (``toysim.forward``, ``harm_martingale``, ``fisher_trace``,
``generic_fisher_trace``, ``covariance_gradient``, ``determined_masks``, the DP): the logits of
each prefix come from the policy's definition written out in numpy (:func:`prefix_logits`, as in
``tests/reference.py``), the probability of each sequence is a product of softmaxes, every
conditional expectation is a sum over the sequences that extend a prefix, and the score vectors
are an explicit Jacobian (complex-step derivatives of ``log_softmax`` of each prefix's logits with
respect to the flattened parameters, one row per prefix and token), and the autodiff references of
the gradient are complex-step derivatives of ``E[h]`` written one term per sequence. Nothing here
is JAX-compiled, so the references add no compilation to ``toysim check``. :func:`brute_force` returns every
quantity of docs/theory.md §2–7 per prefix and per position.

The only shared conventions are the instance's own: the lexicographic order of prefixes (first
token most significant) and ``toysim.harm_values`` (the harm's definition as a table).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toysim import MarkovPolicy, MLPPolicy, TabularPolicy, harm_values


def lex_index(prefix, vocab_size: int) -> int:
    """Row of ``prefix`` among the prefixes of its length (first token most significant)."""
    index = 0
    for tok in prefix:
        index = index * vocab_size + tok
    return index


def prefix_logits(policy, params, prefix) -> np.ndarray:
    """Logits of one prefix (a tuple of tokens), straight from the policy's definition."""
    v, t = policy.vocab_size, len(prefix)
    if isinstance(policy, TabularPolicy):
        return np.asarray(params[t][lex_index(prefix, v)])
    if isinstance(policy, MarkovPolicy):
        context = 0
        for j in range(policy.order):  # j = 0 is the most recent token, BOS = V pads
            tok = prefix[t - 1 - j] if j < t else v
            context += tok * (v + 1) ** j
        return np.asarray(params.logits[context])
    if isinstance(policy, MLPPolicy):
        feats = []
        for j in range(policy.window):
            onehot = np.zeros(v + 1)
            onehot[prefix[t - 1 - j] if j < t else v] = 1.0
            feats.append(onehot)
        freq = np.zeros(v)
        for tok in prefix:
            freq[tok] += 1.0 / t
        x = np.concatenate(feats + [freq])
        w_in, b_in, w_out, b_out = (np.asarray(a) for a in params)
        return np.tanh(x @ w_in + b_in) @ w_out + b_out
    raise TypeError(f"no reference for policy {type(policy).__name__}")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def log_softmax(z: np.ndarray) -> np.ndarray:
    """``z − log Σ exp z`` along the last axis; analytic, so it accepts complex ``z`` (complex step)."""
    top = np.max(np.real(z), axis=-1, keepdims=True)
    return z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))


# Complex-step differentiation: for f analytic and real on real inputs,
# f'(x) = Im f(x + i·h) / h + O(h²) with no subtraction, so the derivative is exact to float64
# rounding for any tiny h (no step-size trade-off as with finite differences).
COMPLEX_STEP = 1e-30


def parameter_vector(params):
    """``(θ, unflatten)``: the parameters as one float64 vector (``jax.flatten_util.ravel_pytree``
    order: the leaves of ``jax.tree_util.tree_flatten``, each raveled) and a numpy inverse that
    keeps the dtype (complex perturbations survive)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    arrays = [np.asarray(x, dtype=np.float64) for x in leaves]
    theta = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)

    def unflatten(vector):
        out, start = [], 0
        for a in arrays:
            out.append(vector[start : start + a.size].reshape(a.shape))
            start += a.size
        return jax.tree_util.tree_unflatten(treedef, out)

    return theta, unflatten


def complex_step_jacobian(f, x: np.ndarray) -> np.ndarray:
    """``∂f/∂x`` of a real-analytic ``f: R^n → R^m`` (numpy, complex-capable), shape ``(m…, n)``,
    one complex evaluation per coordinate."""
    cols = []
    for k in range(x.shape[0]):
        z = x.astype(np.complex128)
        z[k] += 1j * COMPLEX_STEP
        cols.append(np.imag(f(z)) / COMPLEX_STEP)
    return np.stack(cols, axis=-1)


def sequences(vocab_size: int, length: int) -> list[tuple[int, ...]]:
    """Every sequence of ``length`` tokens, in lexicographic order."""
    return list(itertools.product(range(vocab_size), repeat=length))


def scores(policy, params, t: int) -> np.ndarray:
    """Score vectors ``∇_θ log π(v | p)`` of every prefix ``p`` of length ``t``: ``(V**t, V, |θ|)``.

    An explicit Jacobian, by complex-step differentiation of ``log_softmax`` of each prefix's
    logits from the policy's definition (:func:`prefix_logits`), with respect to the flattened
    parameters (:func:`parameter_vector`). No JAX autodiff, nothing compiled.
    """
    theta, unflatten = parameter_vector(params)
    prefixes = sequences(policy.vocab_size, t)

    def log_probs(vector):
        p = unflatten(vector)
        return np.stack([log_softmax(prefix_logits(policy, p, prefix)) for prefix in prefixes])

    return complex_step_jacobian(log_probs, theta)


def flat(tree) -> np.ndarray:
    """A pytree flattened in the order of :func:`scores` (:func:`parameter_vector`)."""
    return parameter_vector(tree)[0]


class Reference(NamedTuple):
    """Brute-force quantities of one instance (lists indexed by position ``t = 1..T`` as ``t − 1``
    unless stated otherwise).

    Attributes:
      cond: ``π(v|p)`` per level, ``(V**(t−1), V)``.
      leaf: ``P(y)`` per sequence, ``(V**T,)``.
      h: ``h(y)``, ``(V**T,)``.
      mass: ``P(p)`` for prefix lengths ``0..T`` (``T + 1`` arrays).
      H: ``E[h | p]`` for prefix lengths ``0..T``.
      var_prefix: ``Var(H_t | p) = Σ_v π(v|p) (H(p·v) − H(p))²`` per level.
      trace: ``tr F_t(p) = Σ_v π(v|p) ‖∇ log π(v|p)‖²`` per level (explicit Jacobian).
      cov: ``Cov(H_t, s_t | p) = Σ_v π (H(p·v) − E H)(s_v − E s)`` per level, ``(V**(t−1), |θ|)``.
      cov_sq: ``‖Cov(H_t, s_t | p)‖²`` per level.
      information: ``I_t = Σ_p P(p) Var(H_t | p)``, ``(T,)``.
      gradient: ``G_t = Σ_p P(p) Cov(H_t, s_t | p)``, ``(T, |θ|)``.
      mean_trace: ``E_p[tr F_t(p)]``, ``(T,)``.
      variance: ``Var(h)`` from the leaves.
      tau: ``τ(y)``, the smallest ``t`` with ``h(y_≤t, c)`` the same for every continuation ``c``.
      horizon: ``k = max_y τ(y)``.
      tau_distribution: ``P(τ = t)`` for ``t = 0..T``.
      determined: per prefix length ``0..T``, whether ``h`` is constant below the prefix.
    """

    cond: list
    leaf: np.ndarray
    h: np.ndarray
    mass: list
    H: list
    var_prefix: list
    trace: list
    cov: list
    cov_sq: list
    information: np.ndarray
    gradient: np.ndarray
    mean_trace: np.ndarray
    variance: float
    tau: np.ndarray
    horizon: int
    tau_distribution: np.ndarray
    determined: list


def conditional_means(leaf: np.ndarray, f: np.ndarray, vocab_size: int, t: int) -> np.ndarray:
    """``E[f(Y) | Y_≤t = p]`` for every prefix ``p`` of length ``t``, summed over the leaves below.

    Every prefix is computed the same way, as a ratio of sums, including prefixes below which
    ``f`` is constant: the reference does not build in the zeros the theorems are about (a
    constant comes back rounded, within a few ε of the value; checks that need exact zeros compare
    the reference with a stated float tolerance and the library exactly).
    """
    block = leaf.reshape(vocab_size**t, -1)
    values = f.reshape(vocab_size**t, -1)
    return (block * values).sum(axis=1) / block.sum(axis=1)


def horizons(h: np.ndarray, vocab_size: int, horizon: int):
    """``(determined, τ)``: for each length ``t = 0..T`` whether each prefix fixes ``h`` (every
    continuation gives the same value), and per sequence ``τ(y) = min{t : y_≤t determined}``."""
    determined = []
    for t in range(horizon + 1):
        below = h.reshape(vocab_size**t, -1)
        determined.append(np.all(below == below[:, :1], axis=1))
    tau = np.empty(vocab_size**horizon, dtype=np.int64)
    for i, y in enumerate(sequences(vocab_size, horizon)):
        tau[i] = min(t for t in range(horizon + 1) if determined[t][lex_index(y[:t], vocab_size)])
    return determined, tau


def brute_force(policy, params, harm: Any, with_scores: bool = True) -> Reference:
    """Every reference quantity of one instance (see :class:`Reference`).

    Args:
      policy, params: the policy and its parameters.
      harm: the harm (any family ``toysim.harm_values`` reads).
      with_scores: compute the Jacobian quantities (``trace``, ``cov``, ``cov_sq``, ``gradient``,
        ``mean_trace``); ``None`` there otherwise.
    """
    v, T = policy.vocab_size, policy.horizon
    h = np.asarray(harm_values(harm, v, T), dtype=np.float64)
    cond = []
    for t in range(T):
        cond.append(
            np.stack([softmax(prefix_logits(policy, params, p).astype(np.float64)) for p in sequences(v, t)])
        )
    leaf = np.empty(v**T)
    for i, y in enumerate(sequences(v, T)):
        prob = 1.0
        for t in range(T):
            prob *= cond[t][lex_index(y[:t], v), y[t]]
        leaf[i] = prob
    mass = [leaf.reshape(v**t, -1).sum(axis=1) for t in range(T + 1)]
    H = [conditional_means(leaf, h, v, t) for t in range(T + 1)]
    var_prefix, trace, cov, cov_sq = [], [], [], []
    for t in range(T):
        child = H[t + 1].reshape(-1, v)
        var_prefix.append(np.sum(cond[t] * (child - H[t][:, None]) ** 2, axis=1))
        if with_scores:
            s = scores(policy, params, t)  # (V**t, V, |θ|)
            trace.append(np.einsum("pv,pvk->p", cond[t], s**2))
            mean_h = np.sum(cond[t] * child, axis=1, keepdims=True)
            mean_s = np.einsum("pv,pvk->pk", cond[t], s)
            c = np.einsum("pv,pvk->pk", cond[t] * (child - mean_h), s - mean_s[:, None, :])
            cov.append(c)
            cov_sq.append(np.sum(c**2, axis=1))
    information = np.asarray([np.sum(mass[t] * var_prefix[t]) for t in range(T)])
    gradient = mean_trace = None
    if with_scores:
        gradient = np.stack([mass[t] @ cov[t] for t in range(T)])
        mean_trace = np.asarray([np.sum(mass[t] * trace[t]) for t in range(T)])
    mean = np.sum(leaf * h)
    determined, tau = horizons(h, v, T)
    tau_distribution = np.asarray([np.sum(leaf[tau == t]) for t in range(T + 1)])
    return Reference(
        cond=cond,
        leaf=leaf,
        h=h,
        mass=mass,
        H=H,
        var_prefix=var_prefix,
        trace=trace or None,
        cov=cov or None,
        cov_sq=cov_sq or None,
        information=information,
        gradient=gradient,
        mean_trace=mean_trace,
        variance=float(np.sum(leaf * (h - mean) ** 2)),
        tau=tau,
        horizon=int(tau.max()),
        tau_distribution=tau_distribution,
        determined=determined,
    )


def tilt_kl(cond: list, leaf: np.ndarray, h: np.ndarray, lam: float, vocab_size: int):
    """``(D_t for t = 1..T, per-prefix KL per level, KL(π*‖π_0))`` of the tilt
    ``π*(y) ∝ π_0(y) e^{−λh(y)}``, from sequence-level probabilities.

    ``π*(v|p) = P*(p·v) / P*(p)`` with ``P*`` summed over the leaves below each prefix; the KL of a
    row is ``Σ_v π* log(π*/π_0)``. Every prefix is computed by these sums, including determined ones
    (every leaf below ``p`` with the same harm), where the KL is then zero only up to rounding
    (measured below 1e-15; see ``zero_kl.REFERENCE_ZERO``): the theorem's zero is not assumed.
    """
    T = len(cond)
    weight = leaf * np.exp(-lam * h)
    star = weight / weight.sum()
    prefix_kl, d = [], []
    for t in range(T):
        m_star = star.reshape(vocab_size**t, -1).sum(axis=1)
        child = star.reshape(vocab_size ** (t + 1), -1).sum(axis=1).reshape(-1, vocab_size)
        pi_star = child / m_star[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pi_star > 0, pi_star * np.log(pi_star / cond[t]), 0.0)
        kl = terms.sum(axis=1)
        prefix_kl.append(kl)
        d.append(float(np.sum(m_star * kl)))
    with np.errstate(divide="ignore", invalid="ignore"):
        seq = float(np.sum(np.where(star > 0, star * np.log(star / leaf), 0.0)))
    return np.asarray(d), prefix_kl, seq


def scaled_error(actual, reference) -> float:
    """``max |actual − reference| / max(1, max |reference|)``; ``inf`` on a shape mismatch (a
    quantity with a missing or extra position is as wrong as a wrong value)."""
    actual, reference = np.asarray(actual, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        return float("inf")
    scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    return float(np.max(np.abs(actual - reference), initial=0.0)) / scale


def max_error(pairs) -> float:
    """The largest :func:`scaled_error` over ``(actual, reference)`` pairs (lists compared entry by
    entry; a list of another length is a mismatch)."""
    worst = 0.0
    for actual, reference in pairs:
        if isinstance(reference, (list, tuple)):
            if len(actual) != len(reference):
                return float("inf")
            for a, r in zip(actual, reference):
                worst = max(worst, scaled_error(a, r))
        else:
            worst = max(worst, scaled_error(actual, reference))
    return worst


def as_numpy(xs) -> list:
    return [np.asarray(x, dtype=np.float64) for x in xs]


def jnp_h(inst) -> jnp.ndarray:
    """The harm table of an instance as a float64 JAX array (input of the engine)."""
    return jnp.asarray(harm_values(inst.harm, inst.policy.vocab_size, inst.policy.horizon))


def markov_automaton(logits, transitions, final_harm, start: int, horizon: int, lam: float) -> dict:
    """Every per-position quantity of a first-order Markov policy with a DFA harm, by a plain numpy
    forward/backward recursion over the product state ``(last token c, automaton state s)``,
    written independently of ``toysim._dp`` (probability space, no constant rule, no chunks).

    Args:
      logits: ``(V + 1, V)`` logit table (row ``V`` = beginning of sequence).
      transitions: ``(S, V)`` next states; final_harm: ``(S,)``; start: start state.
      horizon: ``T``; lam: ``λ`` of the tilt.

    Returns:
      ``expected_harm``, ``harm_variance``, ``harm_information`` (``I_t``), ``gradient`` (``G_t``,
      ``(T, V + 1, V)``), ``gradient_norm_by_position``, ``fisher_bound_by_position``,
      ``horizon_distribution`` (``P(τ = t)``, ``t = 0..T``), ``uniform_horizon``,
      ``equilibrium_kl_by_position`` (``D_t``), ``equilibrium_kl``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    trans = np.asarray(transitions, dtype=np.int64)
    final = np.asarray(final_harm, dtype=np.float64)
    v1, v = logits.shape
    n_states = trans.shape[0]
    pi = np.stack([softmax(row) for row in logits])  # (V+1, V)
    # tr F per logit row from an explicit Jacobian (complex step) of log_softmax w.r.t. the table
    jac = complex_step_jacobian(lambda x: log_softmax(x.reshape(v1, v)), logits.reshape(-1))
    trace_row = np.einsum("cv,cvk->c", pi, jac**2)
    tokens = np.broadcast_to(np.arange(v)[None, :], trans.shape)

    def forward(step_law):
        p = np.zeros((v1, n_states))
        p[v1 - 1, start] = 1.0
        out = [p]
        for t in range(1, horizon + 1):
            flow = np.einsum("cs,csv->sv", p, step_law(t))  # P(state s, next token v)
            p = np.zeros((v1, n_states))
            np.add.at(p, (tokens, trans), flow)
            out.append(p)
        return out

    def children(values):  # values[v, δ(s, v)] as (S, V)
        return values[tokens, trans]

    law = np.broadcast_to(pi[:, None, :], (v1, n_states, v))
    P = forward(lambda t: law)
    H = [None] * (horizon + 1)
    Z = [None] * (horizon + 1)
    H[horizon] = np.broadcast_to(final[None, :], (v1, n_states)).copy()
    Z[horizon] = np.exp(-lam * H[horizon])
    for t in range(horizon, 0, -1):
        H[t - 1] = pi @ children(H[t]).T
        Z[t - 1] = pi @ children(Z[t]).T
    information, gradient, mean_trace = [], [], []
    for t in range(1, horizon + 1):
        delta = children(H[t])[None, :, :] - H[t - 1][:, :, None]  # (V+1, S, V)
        information.append(float(np.sum(P[t - 1][:, :, None] * law * delta**2)))
        gradient.append(np.einsum("cs,csv->cv", P[t - 1], law * delta))
        mean_trace.append(float(np.sum(P[t - 1] * trace_row[:, None])))
    information, gradient = np.asarray(information), np.stack(gradient)
    # determination: the set of final harms reachable from s in exactly T − t steps
    reach_sets = [None] * (horizon + 1)
    reach_sets[horizon] = [{float(final[s])} for s in range(n_states)]
    for t in range(horizon, 0, -1):
        reach_sets[t - 1] = [
            set().union(*(reach_sets[t][trans[s, u]] for u in range(v))) for s in range(n_states)
        ]
    det = [np.asarray([len(x) == 1 for x in level]) for level in reach_sets]
    tau = [float(det[0][start])]
    for t in range(1, horizon + 1):
        newly = det[t][trans] & ~det[t - 1][:, None]  # (S, V)
        tau.append(float(np.sum(P[t - 1][:, :, None] * law * newly[None, :, :])))
    reachable = {start}
    k = None
    for t in range(horizon + 1):
        if k is None and all(det[t][s] for s in reachable):
            k = t
        reachable = {int(trans[s, u]) for s in reachable for u in range(v)}
    # the tilt as a time-dependent chain π*_t(v | c, s) = π(v|c) Z_t(v, δ(s, v)) / Z_{t−1}(c, s)
    star = [None] + [law * children(Z[t])[None, :, :] / Z[t - 1][:, :, None] for t in range(1, horizon + 1)]
    P_star = forward(lambda t: star[t])
    kl = []
    for t in range(1, horizon + 1):
        terms = star[t] * np.log(star[t] / law)
        kl.append(float(np.sum(P_star[t - 1][:, :, None] * terms)))
    mean = float(np.sum(P[horizon] * final[None, :]))
    return {
        "expected_harm": mean,
        "harm_variance": float(np.sum(P[horizon] * (final[None, :] - mean) ** 2)),
        "harm_information": information,
        "gradient": gradient,
        "gradient_norm_by_position": np.sqrt(np.sum(gradient**2, axis=(1, 2))),
        "fisher_bound_by_position": np.sqrt(information * np.asarray(mean_trace)),
        "horizon_distribution": np.asarray(tau),
        "uniform_horizon": k,
        "equilibrium_kl_by_position": np.asarray(kl),
        "equilibrium_kl": float(np.sum(kl)),
    }


def sequence_expected_harm(policy, params_by_position, h) -> float | complex:
    """``E[h] = Σ_y Π_t π_{θ_t}(y_t | y_<t) h(y)``, one term per sequence, in numpy.

    Position ``t`` reads ``params_by_position[t]`` (all equal for the tied objective): each
    sequence multiplies its own rows of ``softmax(prefix_logits)``. Analytic in the parameters, so
    complex parameters give the complex-step derivative.
    """
    v, T = policy.vocab_size, policy.horizon
    seqs = np.asarray(sequences(v, T), dtype=np.int64).reshape(-1, T)
    log_p = np.zeros(seqs.shape[0], dtype=np.complex128)
    for t in range(T):
        rows = np.zeros(seqs.shape[0], dtype=np.int64)
        for j in range(t):
            rows = rows * v + seqs[:, j]
        level = np.stack(
            [log_softmax(prefix_logits(policy, params_by_position[t], p)) for p in sequences(v, t)]
        )
        log_p = log_p + level[rows, seqs[:, t]]
    return np.sum(np.exp(log_p) * np.asarray(h, dtype=np.float64))


def tied_gradient(policy, params, h) -> np.ndarray:
    """``∇_θ E[h]`` of :func:`sequence_expected_harm` by complex step (flattened, :func:`flat`
    order)."""
    theta, unflatten = parameter_vector(params)
    return complex_step_jacobian(
        lambda x: sequence_expected_harm(policy, [unflatten(x)] * policy.horizon, h), theta
    )


def untied_gradients(policy, params, h) -> np.ndarray:
    """``∂E[h]/∂θ_t`` at ``θ_1 = … = θ_T = θ``: position ``t``'s own copy of the parameters moved
    (complex step), the others fixed. Shape ``(T, |θ|)``."""
    theta, unflatten = parameter_vector(params)
    base = unflatten(theta)
    out = []
    for t in range(policy.horizon):

        def at_t(x, t=t):
            copies = [base] * policy.horizon
            copies[t] = unflatten(x)
            return sequence_expected_harm(policy, copies, h)

        out.append(complex_step_jacobian(at_t, theta))
    return np.stack(out)
