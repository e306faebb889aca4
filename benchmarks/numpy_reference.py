"""A straightforward numpy program of what ``toysim exact`` reports, the denominator of the
whole-process speed targets (``bench_whole_process.py`` runs both side by side).

It reads an instance file of the kind the speed issue names, a first-order Markov policy
(``initial_logits``, ``transition_logits``) with an automaton harm (``start``, ``transitions``,
``final_harm``), and prints one JSON object with the keys of ``toysim exact``'s report that need no
autodiff: ``expected_harm``, ``harm_variance``, ``harm_information`` (``I_t``),
``gradient_norm_by_position`` (``‖G_t‖`` over the Markov logit table, in covariance form),
``fisher_bound_by_position`` (``sqrt(I_t E[tr F_t])``), ``horizon_distribution`` (``P(τ = t)``,
``t = 0..T``), ``uniform_horizon``, ``equilibrium_kl_by_position`` (``D_t`` of the tilt) and
``equilibrium_kl``. ``toysim exact`` also computes an autodiff gradient per position, which this
program does not: the comparison favours numpy.

Two engines, written the way one would write them by hand (docs/theory.md §2-§7 for the
definitions), sharing no code with toysim:

* ``--engine enumerate``: every prefix of every length, level by level, as flat arrays in
  lexicographic order (children of prefix ``i`` are ``iV + v``);
* ``--engine dp``: the forward and backward recursions over the pairs (last token, automaton state),
  one numpy step per position.

Run: ``python benchmarks/numpy_reference.py INSTANCE.json --engine {enumerate,dp}``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _read(path: str):
    with open(path) as f:
        inst = json.load(f)
    policy, harm = inst["policy"], inst["harm"]
    if policy.get("kind") != "markov" or "transition_logits" not in policy or harm.get("kind") != "automaton":
        raise SystemExit("numpy_reference: needs a first-order Markov policy and an automaton harm")
    v, t = int(inst["vocab_size"]), int(inst["horizon"])
    log_init = _log_softmax(np.asarray(policy["initial_logits"], dtype=np.float64))
    log_trans = _log_softmax(np.asarray(policy["transition_logits"], dtype=np.float64))
    delta = np.asarray(harm["transitions"], dtype=np.int64)
    final = np.asarray(harm["final_harm"], dtype=np.float64)
    return v, t, float(inst.get("lambda", 1.0)), log_init, log_trans, int(harm.get("start", 0)), delta, final


def enumerate_reference(v, horizon, lam, log_init, log_trans, start, delta, final) -> dict:
    """Every prefix of every length, as flat arrays per level."""

    def log_cond(t):  # log π(v | p) for the prefixes p of length t - 1: (V**(t-1), V)
        return log_init[None, :] if t == 1 else np.tile(log_trans, (v ** (t - 2), 1))

    states = np.array([start])
    for _ in range(horizon):
        states = delta[states].ravel()
    h = final[states]
    del states

    # forward: log P(p) per level; backward: H_t, min and max of h below every prefix, log Z_t
    log_reach = [np.zeros(1)]
    for t in range(1, horizon + 1):
        log_reach.append((log_reach[-1][:, None] + log_cond(t)).ravel())
    H, lo, hi, log_z = ([None] * (horizon + 1) for _ in range(4))
    H[horizon], lo[horizon], hi[horizon], log_z[horizon] = h, h, h, -lam * h
    for t in range(horizon, 0, -1):
        cond = log_cond(t)
        H[t - 1] = np.sum(np.exp(cond) * H[t].reshape(-1, v), axis=1)
        lo[t - 1] = lo[t].reshape(-1, v).min(axis=1)
        hi[t - 1] = hi[t].reshape(-1, v).max(axis=1)
        log_z[t - 1] = _logsumexp(cond + log_z[t].reshape(-1, v), axis=1)

    info, grad, trace, kl = (np.zeros(horizon) for _ in range(4))
    below = np.zeros(horizon + 1)  # P(τ <= t)
    log_star = np.zeros(1)  # log P*(p) under the tilt
    for t in range(1, horizon + 1):
        cond = log_cond(t)
        p = np.exp(log_reach[t - 1])[:, None]
        pi = np.exp(cond)
        innov = H[t].reshape(-1, v) - H[t - 1][:, None]
        info[t - 1] = np.sum(p * pi * innov**2)
        contrib = p * pi * innov  # ∂E[h]/∂ℓ(row, v) summed over the prefixes reading that row
        table = contrib.sum(axis=0) if t == 1 else contrib.reshape(-1, v, v).sum(axis=0)
        grad[t - 1] = np.sqrt(np.sum(table**2))
        trace[t - 1] = np.sum(p[:, 0] * (1.0 - np.sum(pi**2, axis=1)))
        log_tilt = cond + log_z[t].reshape(-1, v) - log_z[t - 1][:, None]
        kl[t - 1] = np.sum(np.exp(log_star)[:, None] * np.exp(log_tilt) * (log_tilt - cond))
        log_star = (log_star[:, None] + log_tilt).ravel()
    for t in range(horizon + 1):
        below[t] = np.sum(np.exp(log_reach[t]) * (lo[t] == hi[t]))
    determined_all = [bool(np.all(lo[t] == hi[t])) for t in range(horizon + 1)]
    variance = float(np.sum(np.exp(log_reach[horizon]) * (h - H[0][0]) ** 2))
    return _report(H[0][0], variance, info, grad, trace, below, determined_all, kl)


def dp_reference(v, horizon, lam, log_init, log_trans, start, delta, final) -> dict:
    """Forward and backward recursions over (last token, automaton state), one step per position."""
    s = delta.shape[0]
    pi = np.exp(log_trans)
    pi0 = np.exp(log_init)
    col = np.arange(v)[None, :]
    target = col * s + delta  # flat index of the state (v, delta[q, v]) reached from q by v: (S, V)

    def gather(x):  # x over (token, state) -> x[v, delta[q, v]] as (S, V)
        return x.reshape(-1)[target]

    # backward: H_t(a, q), log Z_t(a, q) for t = T..1 (they do not depend on a at t = T)
    H = np.empty((horizon + 1, v, s))
    log_z = np.empty((horizon + 1, v, s))
    H[horizon] = final[None, :]
    log_z[horizon] = -lam * final[None, :]
    for t in range(horizon, 1, -1):
        H[t - 1] = pi @ gather(H[t]).T
        log_z[t - 1] = _logsumexp(log_trans[:, None, :] + gather(log_z[t])[None, :, :], axis=2)
    root_h = float(pi0 @ gather(H[1])[start])
    root_log_z = float(_logsumexp(log_init + gather(log_z[1])[start], axis=0))

    # reachable final harms from q in r steps: determined iff min == max
    lo, hi = final.copy(), final.copy()
    det_by_remaining = [lo == hi]
    for _ in range(horizon):
        lo, hi = lo[delta].min(axis=1), hi[delta].max(axis=1)
        det_by_remaining.append(lo == hi)

    info, grad, trace, kl = (np.zeros(horizon) for _ in range(4))
    below = np.zeros(horizon + 1)
    determined_all = [bool(det_by_remaining[horizon][start])] + [False] * horizon
    below[0] = float(det_by_remaining[horizon][start])
    reach = np.zeros((v, s))
    star = np.zeros((v, s))
    # automaton states reachable after t tokens, from the transitions alone (every token has positive
    # probability): the probabilities in `reach` can underflow to 0 at long horizons
    alive = np.zeros(s, dtype=bool)
    alive[start] = True
    for t in range(1, horizon + 1):
        hn = gather(H[t])  # (S, V)
        ln = gather(log_z[t])
        if t == 1:  # the root: one state (BOS, start)
            innov = hn[start] - root_h
            info[0] = np.sum(pi0 * innov**2)
            grad[0] = np.sqrt(np.sum((pi0 * innov) ** 2))
            trace[0] = 1.0 - np.sum(pi0**2)
            log_tilt = log_init + ln[start] - root_log_z
            kl[0] = np.sum(np.exp(log_tilt) * (log_tilt - log_init))
            reach = np.bincount(target[start], weights=pi0, minlength=v * s).reshape(v, s)
            star = np.bincount(target[start], weights=np.exp(log_tilt), minlength=v * s).reshape(v, s)
        else:
            innov = hn[None, :, :] - H[t - 1][:, :, None]  # (a, q, v)
            weighted = reach[:, :, None] * pi[:, None, :] * innov
            info[t - 1] = np.sum(weighted * innov)
            grad[t - 1] = np.sqrt(np.sum(weighted.sum(axis=1) ** 2))
            trace[t - 1] = np.sum(reach.sum(axis=1) * (1.0 - np.sum(pi**2, axis=1)))
            log_tilt = log_trans[:, None, :] + ln[None, :, :] - log_z[t - 1][:, :, None]
            tilt = np.exp(log_tilt)
            kl[t - 1] = np.sum(star[:, :, None] * tilt * (log_tilt - log_trans[:, None, :]))
            flow = (reach[:, :, None] * pi[:, None, :]).sum(axis=0)  # (q, v)
            reach = np.bincount(target.ravel(), weights=flow.ravel(), minlength=v * s).reshape(v, s)
            flow_star = (star[:, :, None] * tilt).sum(axis=0)
            star = np.bincount(target.ravel(), weights=flow_star.ravel(), minlength=v * s).reshape(v, s)
        det = det_by_remaining[horizon - t]
        below[t] = np.sum(reach * det[None, :])
        after = np.zeros(s, dtype=bool)
        after[delta[alive].ravel()] = True
        alive = after
        determined_all[t] = bool(np.all(det[alive]))
    return _report(root_h, None, info, grad, trace, below, determined_all, kl)


def _report(expected, variance, info, grad, trace, below, determined_all, kl) -> dict:
    first = next(t for t, d in enumerate(determined_all) if d)
    return {
        "expected_harm": float(expected),
        # the DP reads Var(h) off the variance decomposition, Var(h) = Σ_t I_t (docs/theory.md §3)
        "harm_variance": float(np.sum(info)) if variance is None else variance,
        "harm_information": info.tolist(),
        "gradient_norm_by_position": grad.tolist(),
        "fisher_bound_by_position": np.sqrt(info * trace).tolist(),
        "horizon_distribution": np.diff(below, prepend=0.0).tolist(),
        "uniform_horizon": first,
        "equilibrium_kl_by_position": kl.tolist(),
        "equilibrium_kl": float(np.sum(kl)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("instance")
    parser.add_argument("--engine", choices=("enumerate", "dp"), required=True)
    args = parser.parse_args(argv)
    data = _read(args.instance)
    report = (enumerate_reference if args.engine == "enumerate" else dp_reference)(*data)
    json.dump(report, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
