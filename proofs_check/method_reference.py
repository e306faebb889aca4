"""Brute-force references for the alignment methods of docs/theory.md §11, one sequence at a time.

Shared by the §11 check pages (reweighting_shallow, dpo_optimum, dpo_gradient_flow, sft_coverage,
kl_harm_frontier), which never import each other. Nothing here reads the library's weights or
engine: every method's law is written as a distribution over whole sequences from its definition
(the tilt ``π_0 e^{−λh}``, DPO's ``e^{−(β_r/β)h}``, IPO's ``e^{g(h)/β}`` with ``g`` a sum over
responses, rejection ``1[h ≤ c]``, best-of-N by enumerating every ``N``-tuple of responses and
keeping the least harmful, ties uniform), and per-prefix conditionals are ratios of sums of those
sequence probabilities. The base policy's leaf probabilities and conditionals come from
:func:`proofs_check.reference.brute_force` (the policy's definition, products of softmaxes).
"""

from __future__ import annotations

import itertools

import numpy as np

METHODS = ("tilt", "dpo", "ipo", "rejection_sampling", "best_of_n")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1/(1 + e^{−x})`` (numpy, no overflow)."""
    return np.exp(-np.logaddexp(0.0, -x))


def ipo_g(leaf: np.ndarray, h: np.ndarray, beta_r: float) -> np.ndarray:
    """``g(y) = Σ_{y'} π_0(y') σ(β_r (h(y') − h(y)))`` for every sequence ``y`` (one sum per ``y``)."""
    p = leaf / leaf.sum()
    return np.asarray([float(np.sum(p * sigmoid(beta_r * (h - hy)))) for hy in h])


def best_of_n_law(leaf: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """The law of the least harmful of ``n`` i.i.d. draws from ``π_0``, ties broken uniformly.

    Every ``n``-tuple of responses is enumerated (``L**n`` tuples for ``L`` responses): the tuple
    has probability ``Π π_0(y_i)``; among its draws with the least harm each is chosen with
    probability ``1/#ties``, and the chosen draw's response receives that mass.
    """
    p = leaf / leaf.sum()
    size = p.size
    law = np.zeros(size)
    tuples = np.asarray(list(itertools.product(range(size), repeat=n)), dtype=np.int64).reshape(-1, n)
    prob = np.prod(p[tuples], axis=1)
    harms = h[tuples]
    best = harms.min(axis=1, keepdims=True)
    winners = harms == best
    share = prob / winners.sum(axis=1)
    for i in range(n):
        np.add.at(law, tuples[:, i], np.where(winners[:, i], share, 0.0))
    return law


def method_law(name: str, leaf: np.ndarray, h: np.ndarray, settings: dict) -> np.ndarray:
    """The method's optimum ``π(y)`` over whole sequences, normalised (see the module docstring).

    ``settings``: ``lam`` (tilt), ``beta`` and ``beta_r`` (DPO, IPO), ``threshold`` (rejection),
    ``n`` (best-of-N).
    """
    if name == "best_of_n":
        return best_of_n_law(leaf, h, settings["n"])
    if name == "tilt":
        log_f = -settings["lam"] * h
    elif name == "dpo":
        log_f = -(settings["beta_r"] / settings["beta"]) * h
    elif name == "ipo":
        log_f = ipo_g(leaf, h, settings["beta_r"]) / settings["beta"]
    elif name == "rejection_sampling":
        log_f = np.where(h <= settings["threshold"], 0.0, -np.inf)
    else:
        raise ValueError(f"unknown method {name!r}")
    log_f = log_f - np.max(log_f)
    weight = leaf * np.exp(log_f)
    return weight / weight.sum()


def conditionals(law: np.ndarray, cond0: list, vocab_size: int):
    """``(π(v|p) per level, per-prefix KL(π(·|p) ‖ π_0(·|p)) per level, D_t, P(p) per level)`` of a
    sequence law.

    ``π(v|p) = P(p·v)/P(p)`` from sums of the law below each prefix; a prefix of mass zero keeps
    ``π_0(·|p)`` (the convention of every reweighting, docs/theory.md §11). Every prefix is computed
    by the same sums (a determined prefix's zero KL is not assumed: it comes out rounded).
    """
    T = len(cond0)
    cond, prefix_kl, d, mass = [], [], [], []
    for t in range(T):
        m = law.reshape(vocab_size**t, -1).sum(axis=1)
        child = law.reshape(vocab_size ** (t + 1), -1).sum(axis=1).reshape(-1, vocab_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            pi = np.where(m[:, None] > 0, child / m[:, None], cond0[t])
            terms = np.where(pi > 0, pi * np.log(pi / cond0[t]), 0.0)
        kl = terms.sum(axis=1)
        cond.append(pi)
        prefix_kl.append(kl)
        mass.append(m)
        d.append(float(np.sum(m * kl)))
    return cond, prefix_kl, np.asarray(d), mass


def sequence_kl(law: np.ndarray, leaf: np.ndarray) -> float:
    """``KL(π ‖ π_0) = Σ_y π(y) log(π(y)/π_0(y))`` over sequences (``0 log 0 = 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(np.where(law > 0, law * np.log(law / leaf), 0.0)))


def bernoulli_kl(c: float, p: float) -> float:
    """``c log(c/p) + (1 − c) log((1 − c)/(1 − p))`` (``0 log 0 = 0``): the KL–harm frontier of a
    binary harm with ``P_0(h = 1) = p`` at ``E[h] = c``."""
    out = 0.0
    if c > 0:
        out += c * np.log(c / p)
    if c < 1:
        out += (1 - c) * np.log((1 - c) / (1 - p))
    return float(out)


def tilt_frontier(leaf: np.ndarray, h: np.ndarray, target: float) -> float:
    """``min{KL(π‖π_0) : E_π[h] ≤ target}`` by bisection on the sequence-level tilt ``π_0 e^{−λh}``
    (numpy; the minimiser is a tilt, docs/theory.md §11). ``0`` when ``target ≥ E_0[h]``;
    ``−log P_0(h = h_min)`` at ``h_min``; ``nan`` below ``h_min``."""
    p = leaf / leaf.sum()
    e0, h_min = float(np.sum(p * h)), float(np.min(h[p > 0]))
    if target >= e0:
        return 0.0
    if target < h_min:
        return float("nan")
    if target == h_min:
        return float(-np.log(np.sum(p[h == h_min])))

    def tilted(lam):
        w = np.log(p) - lam * (h - h_min)
        w = np.exp(w - np.max(w))
        return w / w.sum()

    lo, hi = 0.0, 1.0
    while np.sum(tilted(hi) * h) > target:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if np.sum(tilted(mid) * h) > target:
            lo = mid
        else:
            hi = mid
    return sequence_kl(tilted(0.5 * (lo + hi)), p)
