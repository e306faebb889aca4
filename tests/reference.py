"""A slow, obviously-correct reference: plain numpy over every sequence, one at a time.

Nothing here uses the engine's level layout: logits are computed per prefix (a tuple of tokens)
from the policy's definition, probabilities per sequence as a product of softmaxes, and every
conditional expectation by summing over the sequences that extend a prefix.
"""

from __future__ import annotations

import itertools

import numpy as np

# the per-prefix logits are the checks' own reference (one definition of each policy family)
from proofs_check.reference import lex_index, prefix_logits


def softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def sequences(vocab_size, length):
    return list(itertools.product(range(vocab_size), repeat=length))


def cond_probs(policy, params_by_position, prefix):
    """π(·|prefix), the position ``len(prefix)`` reading ``params_by_position[len(prefix)]``."""
    return softmax(prefix_logits(policy, params_by_position[len(prefix)], prefix))


def sequence_probs(policy, params, untied=None):
    """``{y: P(y)}`` over all ``V**T`` sequences."""
    by_pos = untied if untied is not None else [params] * policy.horizon
    out = {}
    for y in sequences(policy.vocab_size, policy.horizon):
        p = 1.0
        for t in range(policy.horizon):
            p *= cond_probs(policy, by_pos, y[:t])[y[t]]
        out[y] = p
    return out


def conditional_mean(probs, values, prefix):
    """``E[f(Y) | Y starts with prefix]`` by summing over the extending sequences."""
    num = den = 0.0
    for y, p in probs.items():
        if y[: len(prefix)] == prefix:
            num += p * values[y]
            den += p
    return num / den


def martingale(policy, params, h_table):
    """``{prefix: H(prefix)}`` for every prefix of every length."""
    probs = sequence_probs(policy, params)
    h = {y: h_table[lex_index(y, policy.vocab_size)] for y in probs}
    return {
        prefix: conditional_mean(probs, h, prefix)
        for t in range(policy.horizon + 1)
        for prefix in sequences(policy.vocab_size, t)
    }


def prefix_prob(probs, prefix):
    return sum(p for y, p in probs.items() if y[: len(prefix)] == prefix)


def harm_information(policy, params, h_table):
    probs = sequence_probs(policy, params)
    H = martingale(policy, params, h_table)
    out = []
    for t in range(1, policy.horizon + 1):
        total = 0.0
        for p in sequences(policy.vocab_size, t - 1):
            pi = cond_probs(policy, [params] * policy.horizon, p)
            total += prefix_prob(probs, p) * sum(
                pi[v] * (H[p + (v,)] - H[p]) ** 2 for v in range(policy.vocab_size)
            )
        out.append(total)
    return np.array(out)


def horizon(policy, h_table):
    """``{y: τ(y)}`` by checking every continuation."""
    v, T = policy.vocab_size, policy.horizon
    out = {}
    for y in sequences(v, T):
        for t in range(T + 1):
            vals = {h_table[lex_index(y[:t] + c, v)] for c in sequences(v, T - t)}
            if len(vals) == 1:
                out[y] = t
                break
    return out


def expected_harm(policy, params, h_table, untied=None):
    probs = sequence_probs(policy, params, untied)
    return sum(p * h_table[lex_index(y, policy.vocab_size)] for y, p in probs.items())


def tilt_kl_by_position(policy, params, h_table, lam):
    """``D_t`` of the tilt from sequence-level probabilities ``π0(y) e^{−λ h(y)} / Z``."""
    v, T = policy.vocab_size, policy.horizon
    base = sequence_probs(policy, params)
    w = {y: p * np.exp(-lam * h_table[lex_index(y, v)]) for y, p in base.items()}
    z = sum(w.values())
    star = {y: x / z for y, x in w.items()}
    out = []
    for t in range(T):
        total = 0.0
        for p in sequences(v, t):
            ps, pb = prefix_prob(star, p), prefix_prob(base, p)
            for tok in range(v):
                qs = prefix_prob(star, p + (tok,)) / ps
                qb = prefix_prob(base, p + (tok,)) / pb
                total += ps * qs * np.log(qs / qb)
        out.append(total)
    return np.array(out), sum(s * np.log(s / base[y]) for y, s in star.items())
