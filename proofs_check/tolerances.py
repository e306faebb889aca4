"""Tolerances of the core checks, each with the reason for its size.

* :data:`REFERENCE` -- an engine quantity against its brute-force reference
  (``proofs_check.reference``: per-sequence sums, an explicit Jacobian). Both sides are float64
  sums of at most ``V**T ≤ 27`` terms of order one (probabilities, harms in ``[0, 1]``, score
  entries of size ``≤ 2 + |logit gradients|``), each rounded at 1.1e-16 relative; they differ by
  O(100) roundings at most, ~1e-14. 1e-10 leaves four orders of magnitude and still fails on any
  real error (a dropped term, a wrong centring, an off-by-one all change values by ≥ 1e-4 on the
  drawn instances).
* :data:`IDENTITY` -- an identity or an attained bound evaluated on the engine's own float64
  arrays (``Σ_t I_t = Var h``, equality of the Fisher bound when ``V = 2``): same size and reason.
* :data:`DP_REFERENCE` -- the automaton DP at ``T = 131`` against a plain numpy
  forward/backward recursion over (last token, automaton state): both are recursions of 131 steps
  on probabilities, each step a sum of ``≤ (V + 1) · S · V = 36`` terms of order one; the errors
  add up to ~131 · 36 · 1.1e-16 ≈ 5e-13 in the worst case (measured: below 1e-14). 1e-10 keeps
  the margin and still fails on a missing position (the values there are of order 1e-3 or more).
* :data:`EXACT` -- an exact statement (a zero that the engine produces bit for bit, a horizon that
  is an integer): tolerance 0.
* :data:`ROUNDING_VARIANCE` -- the largest variance that rounding alone gives a constant in the
  references (which compute every conditional mean as a ratio of sums, with no built-in
  constants): ``|H − c| ≤ 27`` roundings of ``ε |c| ≤ 3e-15``, squared ``≤ 1e-29``. An ``exercised``
  predicate asks for a variance above 1e-28, so a constant harm is not counted as exercising.
* :data:`BOUND_FLOOR` -- the floor of the denominator of a relative excess ``(lhs − rhs) / rhs``:
  below it the excess is absolute (a bound whose right side is 1e-12 or less is compared
  absolutely, so rounding of a vanishing ``rhs`` cannot fake a violation).
* :data:`SQUARED_ROUNDING` -- the rounding allowance of a squared quantity ``Q = ‖x‖²`` built from
  differences of values of order one (``Δ = H(p·v) − H(p)``, ``1 − Σπ²``): each difference carries
  an absolute error of at most a few dozen roundings ``ε``, so ``Q`` carries ``≈ 2 √Q · 27 ε`` —
  a *relative* error ``≈ 54 ε / √Q`` that grows without bound as ``Q → 0``. Both sides of a tight
  bound (the Fisher bound at ``V = 2``) are such squares: measured ``(lhs − rhs)/rhs = 1.4e-11``
  at ``rhs = 7e-12`` (seed 7), and an input with ``rhs ~ 1e-20`` would read ``~1e-6``. An excess is
  therefore counted only beyond ``SQUARED_ROUNDING · √max(lhs, rhs)`` (``1e3 ε``, 18 times the
  model); a real violation is relative (the planted bugs read 1e-2 to 1e10) and unaffected.
"""

REFERENCE = 1e-10
IDENTITY = 1e-10
DP_REFERENCE = 1e-10
EXACT = 0.0
BOUND_FLOOR = 1e-12
ROUNDING_VARIANCE = 1e-28
SQUARED_ROUNDING = 1e3 * 2.0**-52

REFERENCE_REASON = (
    "engine against a brute-force reference: float64 sums of ≤ 27 terms of order one, O(100) "
    "roundings (~1e-14)"
)
DP_REFERENCE_REASON = (
    "DP against a numpy recursion over 131 positions: ≤ 131·36 roundings of terms of order one "
    "(worst case ~5e-13, measured below 1e-14)"
)
