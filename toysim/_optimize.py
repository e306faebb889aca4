"""Full-batch minimisation of exact objectives with optax.

One small driver, :func:`minimize`, shared by every training routine (standard alignment in
``toysim._training``, deep alignment in ``toysim._recovery``). The loss is an exact, differentiable
function of the parameters; there is no sampling, so a run is deterministic.

Every run ends with a :class:`Certificate` (:func:`certify`): the final ``‖∇L‖``, the smallest
curvature ``μ_min`` of the explicit Hessian off the gauge directions (parameter moves that leave the
policy unchanged, e.g. a constant added to one row of logits) and the local bounds
``‖θ − θ*‖ ≲ ‖∇L‖/μ_min`` and ``L − L* ≲ ‖∇L‖²/(2μ_min)``. A run is *converged* only when the
gradient is below the tolerance, the curvature is positive and the loss did not end above its start.

The default optimizer ``"auto"`` is a damped Newton method on the explicit Hessian (these problems
have at most a few hundred parameters; it reaches rounding-level gradients in tens of steps where
L-BFGS can stall), and L-BFGS above :data:`NEWTON_MAX_PARAMS` parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _aot
from ._types import PyTree

if TYPE_CHECKING:  # optax is imported where an optimizer is built: most runs (Newton, every
    # `toysim exact`) never need it, and importing it costs ~0.17 s of every process's start-up
    import optax

OPTIMIZERS = ("auto", "newton", "lbfgs", "adam", "sgd")
# Newton (and the curvature of the certificate) build the explicit n × n Hessian: n^2 floats and
# n Hessian-vector products per step. 2000 parameters is 32 MB and well under a second per step.
NEWTON_MAX_PARAMS = 2000
# ‖∇L‖ below which a run counts as converged, unless the caller states another tolerance. The
# objectives are O(1) sums of O(1) terms, so rounding leaves ‖∇L‖ ~1e-15; 1e-8 keeps the local
# distance bound ‖∇L‖/μ_min small for curvatures down to ~1e-4 and separates stalled runs
# (measured ‖∇L‖ >= 1e-5 for the L-BFGS stalls of issue 16) by three orders.
CERTIFY_TOL = 1e-8
# Relative cut-offs (fractions of the largest singular value / eigenvalue), float64 rounding ~1e-16
# times the matrix size: below GAUGE_RTOL a Jacobian direction is a gauge (the policy does not move),
# below FLAT_RTOL a Hessian direction is flat (the loss does not see it to second order).
GAUGE_RTOL = 1e-10
FLAT_RTOL = 1e-12


class Certificate(NamedTuple):
    """What a training run can vouch for about its final parameters (see :func:`certify`).

    Attributes:
      grad_norm: ``‖∇L(θ)‖₂`` at the final parameters.
      min_curvature: ``μ_min``, the smallest eigenvalue of the Hessian restricted to the directions
        that move the policy and that the loss sees (``nan`` where not computed: too many
        parameters).
      distance_bound: ``‖∇L‖/μ_min``, the local bound on the distance ``‖θ − θ*‖`` to the nearest
        optimum in those directions (``inf`` where ``μ_min <= 0`` or not computed).
      loss_gap_bound: ``‖∇L‖²/(2μ_min)``, the local bound on ``L(θ) − L*`` from the gradient alone
        (``inf`` likewise).
      loss_gap: the exact ``L(θ) − L*`` where the optimum is known in closed form (the tabular
        alignment objective: ``KL(π_θ ‖ π*)``), else ``None``.
      converged: ``grad_norm <= tol``, ``μ_min > 0`` (where computed), the exact gap (where known)
        ``<= tol`` and the final loss not above the starting loss.
      tol: the gradient tolerance used.
      steps: the optimizer steps run.
      start_loss: ``L`` at step 0.
      final_loss: ``L`` at the final parameters.
      gauge_dims: number of directions dropped as gauge (policy unchanged) or flat (loss unchanged
        to second order).
      reason: why the run is not converged (``""`` when it is).
    """

    grad_norm: float
    min_curvature: float
    distance_bound: float
    loss_gap_bound: float
    loss_gap: float | None
    converged: bool
    tol: float
    steps: int
    start_loss: float
    final_loss: float
    gauge_dims: int
    reason: str

    def message(self) -> str:
        """One line for a user: ``did not converge: ‖∇L‖ = 3.2e-03 > 1e-08 after 200 steps ...``."""
        if self.converged:
            return f"converged: ‖∇L‖ = {self.grad_norm:.1e} <= {self.tol:g} after {self.steps} steps"
        return f"did not converge: {self.reason} after {self.steps} steps (try --steps or another optimizer)"

    def to_dict(self) -> dict:
        """JSON-ready (``inf``/``nan`` as ``None``)."""

        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            return x

        return {key: clean(value) for key, value in self._asdict().items()}


class OptimizeResult(NamedTuple):
    """Result of :func:`minimize`.

    Attributes:
      params: the final parameters.
      steps: the recorded step numbers.
      losses: the loss at each recorded step.
      grad_norms: ``‖∇L‖₂`` at each recorded step.
      certificate: the :class:`Certificate` of the final parameters.
    """

    params: PyTree
    steps: list[int]
    losses: list[float]
    grad_norms: list[float]
    certificate: Certificate | None = None


def make_optimizer(name: str, learning_rate: float | None) -> optax.GradientTransformation:
    """An optax optimizer by name: ``"lbfgs"`` (zoom line search), ``"adam"`` or ``"sgd"``.

    (``"newton"`` is not an optax transformation: :func:`minimize` runs it itself.)

    Raises:
      ValueError: for an unknown name or a non-positive learning rate.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    import optax

    if name in ("auto", "newton"):
        return optax.identity()
    if name == "lbfgs":
        return optax.lbfgs(learning_rate=learning_rate)
    if name == "adam":
        return optax.adam(0.05 if learning_rate is None else learning_rate)
    return optax.sgd(0.5 if learning_rate is None else learning_rate)


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss with its static configuration, hashable so compiled steps are reused.

    ``Objective(fn, static)(params, *args) = fn(*static, params, *args)``. Two objectives with the
    same module-level ``fn`` and equal ``static`` (e.g. the same frozen policy object) share one
    compiled optimiser step; the array arguments ``args`` are traced, so a new instance of the same
    shapes trains without recompiling.

    Example:
      >>> def quadratic(center, x, scale):
      ...     return scale * jnp.sum((x - center) ** 2)
      >>> Objective(quadratic, (3.0,))(jnp.zeros(2), 1.0)
      Array(18., dtype=float64)
    """

    fn: Callable
    static: tuple = ()

    def __call__(self, params, *args):
        return self.fn(*self.static, params, *args)


@dataclasses.dataclass(frozen=True)
class _Unravel:
    """Flat vector -> pytree, hashable (a static argument of the compiled Newton step)."""

    treedef: Any
    shapes: tuple
    dtypes: tuple

    @staticmethod
    def of(params: PyTree) -> _Unravel:
        leaves, treedef = jax.tree_util.tree_flatten(params)
        return _Unravel(
            treedef, tuple(jnp.shape(x) for x in leaves), tuple(jnp.asarray(x).dtype for x in leaves)
        )

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def ravel(self, params: PyTree) -> np.ndarray:
        """Concrete parameters as one flat vector, on the host (numpy: no program to compile)."""
        leaves = [
            np.asarray(x, dtype=d).reshape(-1) for x, d in zip(jax.tree_util.tree_leaves(params), self.dtypes)
        ]
        return np.concatenate(leaves) if leaves else np.zeros(0)

    def host(self, flat: Any) -> PyTree:
        """A concrete flat vector back to the pytree (sliced on the host, then handed to JAX)."""
        return jax.tree_util.tree_map(jax.device_put, self(np.asarray(flat)))

    def __call__(self, flat: jax.Array) -> PyTree:
        out, i = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            n = math.prod(shape)
            out.append(flat[i : i + n].reshape(shape).astype(dtype))
            i += n
        return jax.tree_util.tree_unflatten(self.treedef, out)


# Line search of the Newton step: the largest 2^-j, j = 0..40, with sufficient decrease (Armijo).
_ALPHAS = 2.0 ** -np.arange(41)
_ARMIJO = 1e-4
# Largest move of any parameter in one Newton step (logit units: probabilities change by at most a
# factor e^2 per step). The tilt moves logits by at most λ·(max h − min h); a few capped steps get there.
_TRUST = 1.0
# A predicted decrease below this fraction of |L| is beneath the loss's float64 rounding (~1e-16
# per term, summed over a few hundred terms).
_ROUNDING = 1e-13


@functools.partial(jax.jit, static_argnames=("loss_fn", "unravel"))
def _newton_step(x, args, *, loss_fn, unravel):
    """One damped Newton step on the explicit Hessian (saddle-free: curvatures taken as ``|w|``).

    Directions of curvature below ``FLAT_RTOL`` of the largest (the softmax gauge, where ``L`` is
    constant, and prefixes the loss does not weigh) are left alone: their gradient is zero up to
    rounding, and dividing rounding by a near-zero curvature would only add noise. A backtracking
    line search over ``2^-j`` keeps the step whose loss decreases (Armijo); when none decreases the
    loss (rounding level reached), the parameters stay where they are.
    """

    def f(v):
        return loss_fn(unravel(v), *args)

    value, g = jax.value_and_grad(f)(x)
    hess = jax.hessian(f)(x)
    w, u = jnp.linalg.eigh(0.5 * (hess + hess.T))
    aw = jnp.abs(w)
    keep = aw > FLAT_RTOL * jnp.max(aw)
    gu = u.T @ g
    d = -u @ jnp.where(keep, gu / jnp.where(keep, aw, 1.0), 0.0)
    # trust region: no parameter moves by more than _TRUST per step. A full Newton step taken from
    # a poor quadratic model can throw a logit far out, where the softmax saturates and the gradient
    # vanishes without the loss being optimal (seen: ‖∇L‖ 6e-14 at KL(π‖π*) = 1.2e-4).
    d = d * jnp.minimum(1.0, _TRUST / jnp.maximum(jnp.max(jnp.abs(d)), 1e-300))
    slope = g @ d
    alphas = jnp.asarray(_ALPHAS, dtype=x.dtype)
    values = jax.vmap(lambda a: f(x + a * d))(alphas)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    armijo = values <= value + _ARMIJO * alphas * slope
    first = jnp.argmax(armijo)
    best = jnp.argmin(values)
    alpha = jnp.where(jnp.any(armijo), alphas[first], jnp.where(values[best] < value, alphas[best], 0.0))
    # In the quadratic regime the predicted decrease -slope is below the loss's rounding, so no
    # line search can see it: take the full (trust-capped) Newton step, which converges
    # quadratically, as long as it stays finite.
    rounding = -slope <= _ROUNDING * jnp.maximum(1.0, jnp.abs(value))
    alpha = jnp.where(rounding & jnp.isfinite(values[0]) & (slope < 0), 1.0, alpha)
    return x + alpha * d


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "learning_rate"))
def _step(params, state, args, *, loss_fn, optimizer, learning_rate):
    import optax

    opt = make_optimizer(optimizer, learning_rate)

    def f(p):
        return loss_fn(p, *args)

    if optimizer == "lbfgs":
        value, grad = optax.value_and_grad_from_state(f)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
    else:
        value, grad = jax.value_and_grad(f)(params)
        updates, state = opt.update(grad, state, params)
    return optax.apply_updates(params, updates), state


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _evaluate(params, args, *, loss_fn):
    import optax

    value, grad = jax.value_and_grad(lambda p: loss_fn(p, *args))(params)
    return value, optax.tree.norm(grad)


@functools.partial(jax.jit, static_argnames=("loss_fn", "unravel", "gauge", "curvature"))
def _certificate_arrays(x, args, *, loss_fn, unravel, gauge, curvature):
    def f(v):
        return loss_fn(unravel(v), *args)

    value, g = jax.value_and_grad(f)(x)
    if not curvature:
        return value, g, None, None
    hess = jax.hessian(f)(x)
    jac = None if gauge is None else jax.jacfwd(lambda v: gauge(unravel(v)))(x)
    return value, g, hess, jac


def certify(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    args: tuple = (),
    gauge: Callable[[PyTree], jax.Array] | None = None,
    tol: float = CERTIFY_TOL,
    steps: int = 0,
    start_loss: float | None = None,
    loss_gap: float | None = None,
) -> Certificate:
    """The convergence certificate of ``params`` as a minimiser of ``loss_fn(params, *args)``.

    With ``g = ∇L(θ)`` and ``H = ∇²L(θ)`` explicit, let ``P`` project onto the directions that move
    the policy (the row space of the Jacobian of ``gauge(θ)``, e.g. all log-probabilities ``log π(v|p)``;
    its null space holds the softmax gauge: a constant added to one row of logits changes nothing)
    and that the loss sees (``|eigenvalue| > FLAT_RTOL · max``). ``μ_min`` is the smallest eigenvalue
    of ``PHP`` there. If ``L`` is within its quadratic model on the segment from ``θ`` to the nearest
    optimum ``θ*`` (true near a non-degenerate minimum, which is what a small ``‖g‖`` with
    ``μ_min > 0`` indicates), then ``‖P(θ − θ*)‖ <= ‖g‖/μ_min`` and ``L(θ) − L* <= ‖g‖²/(2μ_min)``.

    Assumptions, stated honestly: the bounds are local (second-order Taylor), not global; they say
    nothing about other minima (the MLP objective is not convex); directions cut as gauge or flat
    are measured only by the relative thresholds ``GAUGE_RTOL`` and ``FLAT_RTOL``. For the tabular
    alignment objective the exact gap is known (``L − L* = KL(π_θ ‖ π*)``, pass it as ``loss_gap``)
    and needs no assumption.

    Args:
      loss_fn: ``(params, *args) -> scalar``, as for :func:`minimize`.
      params: the parameters to certify.
      args: array arguments of the loss.
      gauge: ``params -> array`` whose Jacobian's null space is the gauge (``None``: no gauge).
        Pass a hashable callable (an :class:`Objective`) so the compiled program is reused.
      tol: gradient tolerance for ``converged``.
      steps: optimizer steps that produced ``params`` (reported only).
      start_loss: the loss at step 0 (``None``: not checked).
      loss_gap: the exact ``L − L*`` where known; it must also be ``<= tol`` (a gap, in units of the
        loss, is held to the same number as the gradient: both are ~1e-16 at convergence).

    Returns:
      :class:`Certificate`. With more than ``NEWTON_MAX_PARAMS`` parameters the curvature is not
      computed (``μ_min = nan``, bounds ``inf``) and ``converged`` rests on the gradient alone.

    Example:
      >>> c = certify(lambda x: jnp.sum((x - 3.0) ** 2), jnp.full(2, 3.0))
      >>> c.converged, c.min_curvature, c.distance_bound
      (True, 2.0, 0.0)
    """
    unravel = _Unravel.of(params)
    x = unravel.ravel(params)
    curvature = unravel.size <= NEWTON_MAX_PARAMS
    value, g, hess, jac = _aot.call(
        "certificate",
        _certificate_arrays,
        (x, tuple(args)),
        kwargs={"loss_fn": loss_fn, "unravel": unravel, "gauge": gauge, "curvature": curvature},
    )
    value, g = float(value), np.asarray(g)
    gnorm = float(np.linalg.norm(g))
    mu, dims = math.nan, 0
    if curvature:
        hess = np.asarray(hess)
        hess = 0.5 * (hess + hess.T)
        if jac is not None:
            jac = np.asarray(jac).reshape(-1, unravel.size)
            _, s, vt = np.linalg.svd(jac, full_matrices=False)
            basis = vt[s > GAUGE_RTOL * (s[0] if s.size else 0.0)].T  # directions that move π
        else:
            basis = np.eye(unravel.size)
        w = np.linalg.eigvalsh(basis.T @ hess @ basis) if basis.shape[1] else np.zeros(0)
        seen = np.abs(w) > FLAT_RTOL * (np.max(np.abs(w)) if w.size else 0.0)
        dims = unravel.size - int(np.sum(seen))
        # nothing seen while the policy can move: a flat (saturated-softmax) plateau, not a minimum
        mu = float(np.min(w[seen])) if np.any(seen) else (0.0 if basis.shape[1] else math.inf)
    bound = gnorm / mu if mu > 0 else math.inf
    gap_bound = gnorm**2 / (2 * mu) if mu > 0 else math.inf
    reasons = []
    if not (math.isfinite(value) and math.isfinite(gnorm)):
        reasons.append(f"non-finite loss {value} or gradient {gnorm}")
    elif not gnorm <= tol:
        reasons.append(f"‖∇L‖ = {gnorm:.1e} > {tol:g}")
    if curvature and not mu > 0:
        reasons.append(f"the Hessian is not positive off the gauge (μ_min = {mu:.1e}): not a minimum")
    if loss_gap is not None and not loss_gap <= tol:
        reasons.append(f"exact gap L − L* = {loss_gap:.1e} > {tol:g}")
    if start_loss is not None and value > start_loss:
        reasons.append(f"final loss {value:.6g} above the start {start_loss:.6g}")
    return Certificate(
        grad_norm=gnorm,
        min_curvature=mu,
        distance_bound=bound,
        loss_gap_bound=gap_bound,
        loss_gap=None if loss_gap is None else float(loss_gap),
        converged=not reasons,
        tol=float(tol),
        steps=int(steps),
        start_loss=value if start_loss is None else float(start_loss),
        final_loss=value,
        gauge_dims=dims,
        reason="; ".join(reasons),
    )


@functools.partial(jax.jit, static_argnames=("loss_fn", "unravel", "gauge", "value_fn"))
def _value_arrays(x, args, value_args, *, loss_fn, unravel, gauge, value_fn):
    def f(v):
        return loss_fn(unravel(v), *args)

    def values(v):
        return jnp.ravel(value_fn(unravel(v), *value_args))

    g = jax.grad(f)(x)
    hess = jax.hessian(f)(x)
    jac = None if gauge is None else jax.jacfwd(lambda v: gauge(unravel(v)))(x)
    return values(x), g, hess, jac, jax.jacfwd(values)(x), jax.hessian(values)(x)


def certify_values(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    value_fn: Callable[..., jax.Array],
    *,
    args: tuple = (),
    value_args: tuple = (),
    gauge: Callable[[PyTree], jax.Array] | None = None,
    rounding: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Values ``f_i(θ)`` of a trained ``θ`` and local bounds on ``|f_i(θ) − f_i(θ*)|``.

    In the quadratic model of ``L`` at ``θ`` (restricted, as in :func:`certify`, to the directions
    that move the policy and that the loss sees, with ``H`` positive definite there) the optimum is
    ``θ* ≈ θ − δ``, ``δ = H⁻¹g``. Then ``|∇f_i · δ| <= sqrt(∇f_iᵀ H⁻¹ ∇f_i) · sqrt(gᵀ H⁻¹ g)``
    (Cauchy–Schwarz in the ``H`` metric; the second factor is the Newton decrement) and the
    remainder is bounded by ``‖∇²f_i‖ ‖δ‖²`` (twice the Taylor term, for the model's own error).
    The bound is ``first + second + rounding``. Much tighter than ``‖∇f‖ · ‖g‖/μ_min`` when the
    small curvatures belong to prefixes that ``f`` barely weighs. Same assumptions as
    :func:`certify`: local, for a non-degenerate minimum; directions that the loss does not see are
    taken as fixed (the optimizer never moves them: their gradient is zero).

    Args:
      loss_fn, params, args, gauge: as for :func:`certify`.
      value_fn: ``(params, *value_args) -> array``, smooth in ``params`` (hashable, e.g. an
        :class:`Objective`).
      value_args: its array arguments.
      rounding: added to every bound (the float64 error of evaluating ``f`` itself).

    Returns:
      ``(values, bounds)``, flat arrays; bounds are ``inf`` if ``H`` is not positive definite on the
      restricted directions.
    """
    unravel = _Unravel.of(params)
    if unravel.size > NEWTON_MAX_PARAMS:
        raise ValueError(f"certify_values builds the Hessian: at most {NEWTON_MAX_PARAMS} parameters")
    x = unravel.ravel(params)
    vals, g, hess, jac, vjac, vhess = (
        None if a is None else np.asarray(a)
        for a in _aot.call(
            "certificate_values",
            _value_arrays,
            (x, tuple(args), tuple(value_args)),
            kwargs={"loss_fn": loss_fn, "unravel": unravel, "gauge": gauge, "value_fn": value_fn},
        )
    )
    hess = 0.5 * (hess + hess.T)
    if jac is not None:
        _, sv, vt = np.linalg.svd(jac.reshape(-1, unravel.size), full_matrices=False)
        basis = vt[sv > GAUGE_RTOL * (sv[0] if sv.size else 0.0)].T
    else:
        basis = np.eye(unravel.size)
    w, u = np.linalg.eigh(basis.T @ hess @ basis)
    seen = np.abs(w) > FLAT_RTOL * (np.max(np.abs(w)) if w.size else 0.0)
    if not np.all(w[seen] > 0):
        return vals, np.full(vals.shape, np.inf)
    q = basis @ u[:, seen]  # orthonormal: the directions that move π and that L sees
    inv = 1.0 / w[seen]
    gq = q.T @ g
    decrement = float(np.sqrt(np.sum(inv * gq**2)))
    step = float(np.linalg.norm(inv * gq))
    fq = vjac @ q  # (values, seen)
    first = np.sqrt(np.sum(inv * fq**2, axis=1)) * decrement
    second = np.linalg.norm(vhess, ord=2, axis=(1, 2)) * step**2
    return vals, first + second + rounding


def minimize(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    args: tuple = (),
    optimizer: str = "auto",
    learning_rate: float | None = None,
    steps: int = 500,
    record_every: int = 0,
    callback: Callable[[int, PyTree], None] | None = None,
    progress: bool | None = None,
    tol: float = 0.0,
    gauge: Callable[[PyTree], jax.Array] | None = None,
    certify_tol: float = CERTIFY_TOL,
    loss_gap: Callable[[PyTree], float] | None = None,
) -> OptimizeResult:
    """Minimise an exact loss by full-batch steps and certify the result.

    Args:
      loss_fn: ``(params, *args) -> scalar``, differentiable. Pass an :class:`Objective` (or any
        module-level function) and put the arrays in ``args`` so that the compiled step is reused
        across calls; a fresh closure works too but compiles anew each call.
      params: starting parameters.
      args: array arguments of the loss (traced, not baked into the compiled step).
      optimizer: ``"auto"`` (default: ``"newton"`` up to ``NEWTON_MAX_PARAMS`` parameters, else
        ``"lbfgs"``), ``"newton"`` (damped Newton on the explicit Hessian with a backtracking line
        search), ``"lbfgs"`` (optax, zoom line search), ``"adam"`` or ``"sgd"``.
      learning_rate: step size (``None``: the optimizer's default; Newton and L-BFGS search).
      steps: maximal number of steps, ``>= 1``.
      record_every: record loss and gradient norm every this many steps (``0``: first and last).
      callback: called as ``callback(step, params)`` at every recorded step.
      progress: draw a progress bar on stderr (default: when stderr is a terminal).
      tol: stop early once ``‖∇L‖₂ <= tol`` at a recorded step (with Newton, checked every step).
      gauge: ``params -> array`` (e.g. every ``log π(v|p)``) whose Jacobian's null space is the
        gauge, for the certificate (:func:`certify`).
      certify_tol: gradient tolerance of the certificate.
      loss_gap: ``params -> L(params) − L*`` where the optimum is known in closed form.

    Returns:
      :class:`OptimizeResult` with its :class:`Certificate`.

    Raises:
      ValueError: for bad settings, or when the loss or the parameters become NaN or infinite
        (typically a learning rate too large); the message names the step and the setting.

    Example:
      >>> res = minimize(lambda x: jnp.sum((x - 3.0) ** 2), jnp.zeros(2), steps=20)
      >>> [round(float(v), 6) for v in res.params], res.certificate.converged
      ([3.0, 3.0], True)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 0:
        raise ValueError(f"record_every must be an integer >= 0, got {record_every!r}")
    opt = make_optimizer(optimizer, learning_rate)
    unravel = _Unravel.of(params)
    if optimizer == "auto":
        optimizer = "newton" if unravel.size <= NEWTON_MAX_PARAMS else "lbfgs"
    if optimizer == "newton" and unravel.size > NEWTON_MAX_PARAMS:
        raise ValueError(
            f"optimizer 'newton' builds the explicit Hessian: at most {NEWTON_MAX_PARAMS} parameters, "
            f"got {unravel.size}; use optimizer 'lbfgs'"
        )
    lr = None if learning_rate is None else float(learning_rate)
    args = tuple(args)
    show = sys.stderr.isatty() if progress is None else progress
    newton = optimizer == "newton"
    if newton:
        x = unravel.ravel(params)
    else:
        # Strongly typed state: optax initialises some fields as weakly typed scalars, which the
        # first step returns strongly typed; without this the step would compile twice per shape.
        state = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype=jnp.asarray(v).dtype), opt.init(params))
    result = OptimizeResult(params, [], [], [])

    def record(i, p):
        value, gnorm = (
            float(v) for v in _aot.call("evaluate", _evaluate, (p, args), kwargs={"loss_fn": loss_fn})
        )
        if not (math.isfinite(value) and math.isfinite(gnorm)):
            raise ValueError(
                f"training diverged by step {i} (loss {value}, gradient norm {gnorm}) with "
                f"optimizer={optimizer!r}, learning_rate={learning_rate}; lower the learning rate"
            )
        result.steps.append(i)
        result.losses.append(value)
        result.grad_norms.append(gnorm)
        if callback is not None:
            callback(i, p)
        return gnorm

    record(0, params)
    for i in range(1, steps + 1):
        if newton:
            x_new = _aot.call(
                "newton_step", _newton_step, (x, args), kwargs={"loss_fn": loss_fn, "unravel": unravel}
            )
            # a step that leaves x unchanged (no decrease left) is a fixed point: every later step
            # would return the same x, so stopping here changes nothing but the time spent
            x_new = np.asarray(x_new)
            fixed = bool(np.array_equal(x_new, x))
            x = x_new
            params = unravel.host(x)
            if fixed:
                record(i, params)
                break
        else:
            params, state = _step(params, state, args, loss_fn=loss_fn, optimizer=optimizer, learning_rate=lr)
        last = i == steps
        # Newton steps cost a Hessian each: checking the gradient every step is cheap beside it.
        every = record_every or (1 if newton and tol else 0)
        if last or (every and i % every == 0):
            gnorm = record(i, params)
            if tol and gnorm <= tol:
                break
        if show and (i % max(1, steps // 50) == 0 or last):
            done = int(30 * i / steps)
            print(f"\r[{'#' * done}{'.' * (30 - done)}] step {i}/{steps}", end="", file=sys.stderr)
    if show:
        print(file=sys.stderr)
    if not all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(params)):
        raise ValueError(
            f"training produced NaN parameters with optimizer={optimizer!r}, learning_rate={learning_rate}"
        )
    certificate = certify(
        loss_fn,
        params,
        args=args,
        gauge=gauge,
        tol=certify_tol,
        steps=result.steps[-1],
        start_loss=result.losses[0],
        loss_gap=None if loss_gap is None else loss_gap(params),
    )
    return result._replace(params=params, certificate=certificate)
