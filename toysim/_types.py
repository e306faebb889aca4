"""Shared type names: the pytree alias and the :class:`Policy` interface (docs/theory.md §1).

Every policy family (``TabularPolicy``, ``MarkovPolicy``, ``MLPPolicy``) implements
:class:`Policy`, and the engines and the sampler read a policy only through it. A new family (a
small transformer, say) needs no change to the library: write a hashable class with these
attributes and methods and pass it to ``toysim.forward`` or ``toysim.sample_sequences``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
from jaxtyping import Array, Float, Int

PyTree = Any  # a JAX pytree of arrays (nested tuples, NamedTuples, dicts): parameters, gradients


@runtime_checkable
class Policy(Protocol):
    """An autoregressive softmax policy over ``V`` tokens and ``T`` positions.

    ``π_θ(y_t | y_<t) = softmax(logits_θ(y_<t))_{y_t}``. The policy object holds only static
    configuration and must be hashable (it is a static argument of ``jax.jit``; a frozen
    dataclass is the usual form); its parameters ``θ`` are a separate pytree. Prefixes of length
    ``t`` are ordered lexicographically with the first token most significant: prefix
    ``(y_0, .., y_{t-1})`` has index ``Σ_j y_j V^{t-1-j}`` (``toysim.prefix_digits``).

    ``isinstance(obj, Policy)`` checks that the attributes and methods below exist (not their
    signatures), as ``typing.runtime_checkable`` does.

    Optional: ``log_probs(params, t)``, ``log π(·|p)`` of all prefixes of length ``t``, where the
    family has a cheaper form equal to ``log_softmax(logits(params, t))`` row by row (the Markov
    family normalises its table once and tiles it); the engine uses it when present.

    Attributes:
      vocab_size: ``V >= 2``.
      horizon: ``T >= 1``, the number of positions.
      is_lookup: ``True`` when every prefix's logits are one row of a parameter table, read
        as is (``logits(p) = θ[r(p)]``; rows may be shared by several prefixes). The score at
        ``p`` is then ``e_v − π(·|p)`` in row ``r(p)``, so the conditional Fisher trace is
        ``1 − ‖π(·|p)‖²`` and ``‖Cov(H_t, s_t | p)‖² = Σ_v π(v|p)² Δ_t(p, v)²`` without a
        Jacobian (read by ``toysim.prefix_covariance_sq_norm``). ``False`` for any other form.
      level_reads_own_block: ``True`` when the parameters are a tuple of ``T`` arrays and the
        logits of level ``t`` are exactly block ``t`` (untied across positions), so the
        per-position gradient ``G_t`` is the level's cotangent itself (read by
        ``toysim.covariance_gradient``). ``False`` for any other form.
    """

    vocab_size: int
    horizon: int
    is_lookup: bool
    level_reads_own_block: bool

    def init(self, key: jax.Array) -> PyTree:
        """Parameters drawn from ``key`` (the families also take a ``scale`` keyword)."""
        ...

    def logits(self, params: PyTree, t: int) -> Float[Array, "prefix vocab"]:
        """Logits of all ``V**t`` prefixes of length ``t`` (``0 <= t < T``), shape ``(V**t, V)``."""
        ...

    def prefix_logits(self, params: PyTree, prefixes: Int[Array, "n t"]) -> Float[Array, "n vocab"]:
        """Logits of a batch of prefixes of one length ``t``, shape ``(N, V)``.

        ``prefixes`` is an integer array ``(N, t)``, ``0 <= t < T``, tokens in ``0..V-1``. Row
        ``i`` equals ``logits(params, t)[index of prefixes[i]]``, without enumerating the level.
        """
        ...

    def fisher_trace(self, params: PyTree, t: int) -> Float[Array, " prefix"]:
        """Conditional Fisher trace ``tr F_t(p) = Σ_v π(v|p) ‖∇_θ log π(v|p)‖²`` of every prefix.

        Shape ``(V**t,)`` for prefixes of length ``t``; ``toysim._policies.generic_fisher_trace``
        computes it from the Jacobian of :meth:`logits` for any policy.
        """
        ...
