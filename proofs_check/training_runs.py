"""The exact training run shared by the §7 training checks (docs/theory.md §7).

Shared by training_convergence.py (training reaches the equilibrium tilt, with a certificate) and
spillover.py (training leaves determined prefixes at ``π_0``; spillover of shared parameters):
both train the same way, from ``π_0`` on the exact ``L(θ) = λ E_{π_θ}[h] + KL(π_θ ‖ π_0)``, so the
run's settings (``STEPS``, ``GRAD_TOL``) and :func:`train` live here rather than in either check
page, and a change to them reaches both checks.
"""

from __future__ import annotations

import jax.numpy as jnp

import toysim
from toysim import train_alignment

STEPS = 100
GRAD_TOL = 1e-13  # stop once ‖∇L‖ <= 1e-13 (optimality gap ~1e-26); Newton checks every step


def train(inst, optimizer="auto"):
    """Leaf harms and the training run from ``π_0`` used by the §7 training checks."""
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    res = train_alignment(
        policy,
        None,
        inst.params,
        h,
        inst.lam,
        optimizer=optimizer,
        steps=STEPS,
        record_every=1 if optimizer in ("auto", "newton") else 10,
        tol=GRAD_TOL,
        progress=False,
    )
    return h, res
