"""Full-batch minimisation of exact objectives with optax.

One small driver, :func:`minimize`, shared by every training routine (standard alignment in
``toysim._training``, deep alignment in ``toysim._recovery``). The loss is an exact, differentiable
function of the parameters; there is no sampling, so a run is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any

OPTIMIZERS = ("lbfgs", "adam", "sgd")


class OptimizeResult(NamedTuple):
    """Result of :func:`minimize`.

    Attributes:
      params: the final parameters.
      steps: the recorded step numbers.
      losses: the loss at each recorded step.
      grad_norms: ``‖∇L‖₂`` at each recorded step.
    """

    params: PyTree
    steps: list[int]
    losses: list[float]
    grad_norms: list[float]


def make_optimizer(name: str, learning_rate: float | None) -> optax.GradientTransformation:
    """An optax optimizer by name: ``"lbfgs"`` (zoom line search), ``"adam"`` or ``"sgd"``.

    Raises:
      ValueError: for an unknown name or a non-positive learning rate.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
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


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "learning_rate"))
def _step(params, state, args, *, loss_fn, optimizer, learning_rate):
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
    value, grad = jax.value_and_grad(lambda p: loss_fn(p, *args))(params)
    return value, optax.tree.norm(grad)


def minimize(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    args: tuple = (),
    optimizer: str = "lbfgs",
    learning_rate: float | None = None,
    steps: int = 500,
    record_every: int = 0,
    callback: Callable[[int, PyTree], None] | None = None,
    progress: bool | None = None,
    tol: float = 0.0,
) -> OptimizeResult:
    """Minimise an exact loss by full-batch optax steps.

    Args:
      loss_fn: ``(params, *args) -> scalar``, differentiable. Pass an :class:`Objective` (or any
        module-level function) and put the arrays in ``args`` so that the compiled step is reused
        across calls; a fresh closure works too but compiles anew each call.
      params: starting parameters.
      args: array arguments of the loss (traced, not baked into the compiled step).
      optimizer: ``"lbfgs"`` (default; converges to float64 precision on these smooth, small
        problems), ``"adam"`` or ``"sgd"``.
      learning_rate: step size (``None``: the optimizer's default; L-BFGS uses a line search).
      steps: number of steps, ``>= 1``.
      record_every: record loss and gradient norm every this many steps (``0``: first and last).
      callback: called as ``callback(step, params)`` at every recorded step.
      progress: draw a progress bar on stderr (default: when stderr is a terminal).
      tol: stop early once ``‖∇L‖₂ <= tol`` at a recorded step.

    Returns:
      :class:`OptimizeResult`.

    Raises:
      ValueError: for bad settings, or when the loss or the parameters become NaN or infinite
        (typically a learning rate too large); the message names the step and the setting.

    Example:
      >>> res = minimize(lambda x: jnp.sum((x - 3.0) ** 2), jnp.zeros(2), steps=20)
      >>> [round(float(v), 6) for v in res.params]
      [3.0, 3.0]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 0:
        raise ValueError(f"record_every must be an integer >= 0, got {record_every!r}")
    opt = make_optimizer(optimizer, learning_rate)
    lr = None if learning_rate is None else float(learning_rate)
    args = tuple(args)
    show = sys.stderr.isatty() if progress is None else progress
    # Strongly typed state: optax initialises some fields as weakly typed scalars, which the first
    # step returns strongly typed; without this the step would compile twice per shape.
    state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), opt.init(params))
    result = OptimizeResult(params, [], [], [])

    def record(i, p):
        value, gnorm = (float(x) for x in _evaluate(p, args, loss_fn=loss_fn))
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
        params, state = _step(params, state, args, loss_fn=loss_fn, optimizer=optimizer, learning_rate=lr)
        last = i == steps
        if last or (record_every and i % record_every == 0):
            gnorm = record(i, params)
            if tol and gnorm <= tol:
                break
        if show and (i % max(1, steps // 50) == 0 or last):
            done = int(30 * i / steps)
            print(f"\r[{'#' * done}{'.' * (30 - done)}] step {i}/{steps}", end="", file=sys.stderr)
    if show:
        print(file=sys.stderr)
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(params)):
        raise ValueError(
            f"training produced NaN parameters with optimizer={optimizer!r}, learning_rate={learning_rate}"
        )
    return result._replace(params=params)
