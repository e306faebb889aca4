"""Plain optax training runs over tabular logits, step by step, for the §11 invariance checks.

Shared by dpo_gradient_flow.py and sft_coverage.py (pages never import each other): both run ``K``
steps of an optax optimiser on a loss of the policy on the tree from ``θ^0`` and inspect the
gradient and the logits at every step, so the run lives here.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax

import toysim
from toysim import TabularPolicy


@functools.partial(jax.jit, static_argnames=("loss", "optimizer", "steps"))
def _trajectory(theta0, args, loss, optimizer, steps):
    policy = TabularPolicy(theta0[-1].shape[-1], len(theta0))

    def objective(theta):
        return loss(toysim.forward(policy, theta), *args)

    def step(carry, _):
        theta, state = carry
        grad = jax.grad(objective)(theta)
        updates, state = optimizer.update(grad, state, theta)
        return (optax.apply_updates(theta, updates), state), (theta, grad)

    (final, _), (thetas, grads) = jax.lax.scan(step, (theta0, optimizer.init(theta0)), None, length=steps)
    return final, thetas, grads


def trajectory(theta0, args: tuple, loss, optimizer, steps: int) -> dict:
    """``steps`` optimiser steps of ``loss(forward(TabularPolicy, θ), *args)`` from ``theta0``.

    ``loss`` must be a module-level function and ``optimizer`` a module-level optax transformation
    (both are static: one compilation per loss, optimiser and shape).

    Returns:
      ``{"thetas": per level (steps + 1, rows, V), the logits before each step and after the last;
      "grads": per level (steps, rows, V), the gradient at each step}`` (numpy).
    """
    theta0 = tuple(jax.numpy.asarray(x) for x in theta0)
    final, thetas, grads = _trajectory(theta0, tuple(args), loss, optimizer, steps)
    return {
        "thetas": [np.concatenate([np.asarray(a), np.asarray(f)[None]]) for a, f in zip(thetas, final)],
        "grads": [np.asarray(g) for g in grads],
    }


def masked_max(arrays, masks) -> float:
    """``max |a[:, rows]|`` over levels, the rows of each level selected by its mask (0 if none)."""
    return max(float(np.max(np.abs(a[:, m]), initial=0.0)) for a, m in zip(arrays, masks))


def drift(run: dict, theta0, masks) -> float:
    """``max_k |θ_p^k − θ_p^0|`` over the rows selected by ``masks``."""
    moved = [np.abs(t - np.asarray(x)[None]) for t, x in zip(run["thetas"], theta0)]
    return masked_max(moved, masks)
