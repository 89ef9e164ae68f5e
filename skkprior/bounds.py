r"""PAC-Bayes bounds on the 0-1 risk of a Gibbs classifier, and a certificate record.

Every bound is a pure function of plain numbers, called as ``f(empirical_risk, kl, n, delta)``
(Catoni also takes its constant ``C``), and returns a Python ``float`` in ``[0, 1]``. Nothing
here needs torch: the inputs are Python or numpy scalars, the arithmetic is float64.

Setting and notation
--------------------
A *Gibbs classifier* draws fresh weights :math:`\theta \sim Q` for every prediction. Its true
risk is :math:`R(Q) = \mathbb{E}_{\theta \sim Q} \Pr_{(x, y)}[h_\theta(x) \ne y]` and its
empirical risk on ``n`` bound points is :math:`r(Q)`. The prior :math:`P` must not depend on the
bound points; the posterior :math:`Q` may. With probability at least ``1 - delta`` over the
draw of the ``n`` i.i.d. bound points, simultaneously for all ``Q``:

- kl bound (Seeger 2002; Maurer 2004), with
  :math:`\varepsilon = \mathrm{KL}(Q \| P) + \ln(2 \sqrt{n} / \delta)`:
  :math:`\mathrm{kl}(r \| R) \le \varepsilon / n`, so
  :math:`R \le \mathrm{kl}^{-1}(r, \varepsilon / n)`;
- McAllester (1999) in Maurer's form, the kl bound relaxed by Pinsker's inequality
  :math:`\mathrm{kl}(r \| R) \ge 2 (R - r)^2`: :math:`R \le r + \sqrt{\varepsilon / (2 n)}`;
- Catoni (2007) for a constant ``C > 0`` fixed before seeing the bound points:
  :math:`R \le (1 - \exp(-C r - (\mathrm{KL} + \ln(1/\delta)) / n)) / (1 - e^{-C})`.

The binary KL is :math:`\mathrm{kl}(q \| p) = q \ln(q/p) + (1 - q) \ln((1-q)/(1-p))` with
:math:`0 \ln 0 = 0`;
:math:`\mathrm{kl}^{-1}(q, c) = \max\{p \in [q, 1] : \mathrm{kl}(q \| p) \le c\}`.

Two corrections make a certificate honest (docs/concepts.md, section 6):

- the empirical Gibbs risk is itself estimated with ``m`` Monte-Carlo draws (one fresh
  posterior sample per prediction); its estimate ``r_m`` is replaced by the upper confidence
  value :math:`r^+ = \mathrm{kl}^{-1}(r_m, \ln(2/\delta_{mc}) / m)` (Langford and Caruana
  2002), which holds with probability ``1 - delta_mc``, so the final confidence is
  ``1 - delta - delta_mc``;
- every choice made on the bound data that changes the *prior* (a grid of ``K`` prior scales, a
  Catoni constant picked from a grid) is paid by a union bound: ``ln K`` is added to the
  complexity term, which is the same as running each bound at confidence ``delta / K``.

References
----------
.. [1] D. McAllester, "PAC-Bayesian model averaging", COLT 1999.
.. [2] M. Seeger, "PAC-Bayesian generalisation error bounds for Gaussian process
   classification", JMLR 3, 2002.
.. [3] A. Maurer, "A note on the PAC Bayesian theorem", arXiv:cs/0411099, 2004.
.. [4] O. Catoni, "PAC-Bayesian supervised classification: the thermodynamics of statistical
   learning", IMS Lecture Notes 56, 2007.
.. [5] J. Langford and R. Caruana, "(Not) bounding the true error", NeurIPS 2002.
.. [6] G. K. Dziugaite and D. M. Roy, "Computing nonvacuous generalization bounds for deep
   (stochastic) neural networks with many more parameters than training data", UAI 2017.
.. [7] D. Schnaus, J. Lee, D. Cremers, R. Triebel, "Learning expressive priors for
   generalization and uncertainty estimation in neural networks", ICML 2023.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
from numbers import Integral, Real
from typing import Any, Literal, Mapping, NamedTuple, Sequence

from ._validation import check_positive, check_probability, error_message

__all__ = [
    "Certificate",
    "CatoniGridResult",
    "catoni",
    "catoni_grid",
    "certificate_from_errors",
    "kl",
    "kl_bound",
    "kl_divergence_bernoulli",
    "kl_inv",
    "mcallester",
    "paper_protocol_bound",
    "sample_convergence",
    "union_cost",
]

#: Smallest number of bound points for Maurer's constant ``2 sqrt(n)``.
MIN_N_MAURER = 8

_MAX_NEWTON = 200
_ROUND_UP_MARGIN = 32.0 * 2.0**-52
_TINY = 2.2250738585072014e-308  # smallest normal float64
_BOUND_NAMES = ("kl", "mcallester", "catoni")
_PROTOCOLS = ("certificate", "paper")
_FORMAT_VERSION = 1


# -- input checks ---------------------------------------------------------------------------
def _check_unit(value: Any, name: str, fix: str = "") -> float:
    """A finite real number in the closed interval [0, 1]."""
    ok = (isinstance(value, Real) and not isinstance(value, bool)
          and math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0)
    if not ok:
        raise ValueError(error_message(name, "a number in the closed interval [0, 1]", value,
                                       fix or f"Pass {name} as a fraction, e.g. 0.05."))
    return float(value)


def _check_kl(value: Any, name: str = "kl") -> float:
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d numpy / torch
        value = value.item()
    return check_positive(
        value, name, allow_zero=True,
        fix="KL(Q || P) is never negative or infinite; such a value points to a bug upstream "
            "(never clamp it).")


def _check_count(value: Any, name: str, minimum: int = 1, fix: str = "") -> int:
    """An integer (Python or numpy, not bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(error_message(name, "an integer", value,
                                      fix or f"Pass {name} as an int, e.g. {name}=1000."))
    if int(value) < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(error_message(name, expected, value, fix or f"Pass {name} >= {minimum}."))
    return int(value)


def _check_n_maurer(n: Any, bound: str) -> int:
    return _check_count(
        n, "n (number of bound points)", MIN_N_MAURER,
        f"The {bound} bound uses Maurer's constant 2 sqrt(n), proved for n >= {MIN_N_MAURER}; "
        "use catoni(...) for fewer points.")


def _check_C(C: Any, name: str = "C (Catoni constant)") -> float:
    return check_positive(C, name, fix="Pass a constant C > 0 fixed before seeing the bound data, "
                                      "e.g. C=1.0, or use catoni_grid(...).")


# -- the binary KL and its inverse ----------------------------------------------------------
def _log1p_minus_x(x: float) -> float:
    """``log1p(x) - x`` without cancellation for small ``|x|`` (alternating series)."""
    if abs(x) >= 1e-2:
        return math.log1p(x) - x
    total, term = 0.0, x
    for k in range(2, 12):
        term *= -x
        total += term / k
    return total


def _kl_unchecked(q: float, p: float) -> float:
    """Binary KL in float64 with ``0 ln 0 = 0``, accurate for ``p`` near ``q`` too."""
    if q == 0.0:
        return math.inf if p >= 1.0 else -math.log1p(-p)
    if q == 1.0:
        return math.inf if p <= 0.0 else -math.log(p)
    if p <= 0.0 or p >= 1.0:
        return math.inf
    # u = (p - q) / q and v = (p - q) / (1 - p): q / p = 1 / (1 + u), (1 - q) / (1 - p) = 1 + v
    d = p - q
    u, v = d / q, d / (1.0 - p)
    if abs(u) < 0.5 and abs(v) < 0.5:
        # kl = -q log1p(u) + (1 - q) log1p(v)
        #    = d^2 / (1 - p) - q (log1p(u) - u) + (1 - q) (log1p(v) - v), free of cancellation
        out = d * d / (1.0 - p) - q * _log1p_minus_x(u) + (1.0 - q) * _log1p_minus_x(v)
    else:
        # log1p where it is accurate, else the log of the ratio (a difference of logs when
        # the ratio under- or overflows; the difference is then > 700, so it cannot cancel)
        if -0.5 < u <= 1.0:
            out = -q * math.log1p(u)
        else:
            ratio = q / p
            out = q * (math.log(ratio) if _TINY <= ratio < math.inf
                       else math.log(q) - math.log(p))
        out += (1.0 - q) * (math.log1p(v) if v > -0.5 else math.log((1.0 - q) / (1.0 - p)))
    return max(out, 0.0)


def kl(q: float, p: float) -> float:
    r"""Binary Kullback-Leibler divergence ``kl(q || p)`` between Bernoulli(q) and Bernoulli(p).

    Parameters
    ----------
    q : float
        First success probability (the empirical risk), in ``[0, 1]``.
    p : float
        Second success probability (the true risk), in ``[0, 1]``.

    Returns
    -------
    float
        :math:`q \ln(q/p) + (1-q) \ln((1-q)/(1-p))` in nats, with :math:`0 \ln 0 = 0`;
        ``inf`` when ``p`` is 0 or 1 and ``q`` is not equal to it.

    Raises
    ------
    ValueError
        If ``q`` or ``p`` is not a number in ``[0, 1]``.

    See Also
    --------
    kl_inv : the inverse in the second argument.

    Notes
    -----
    With :math:`d = p - q`, :math:`u = d/q`, :math:`v = d/(1-p)` and
    :math:`L(x) = \mathrm{log1p}(x) - x` (a series for small :math:`|x|`), the divergence is
    evaluated as :math:`d^2/(1-p) - q L(u) + (1-q) L(v)` when :math:`|u|, |v| < 1/2`: a sum of
    terms without cancellation, so small divergences keep full relative precision (about
    ``1e-15``). Farther apart, ``log1p`` or the log of a ratio is used, whichever is exact.

    Examples
    --------
    >>> kl(0.5, 0.5)
    0.0
    >>> round(kl(0.0, 0.5), 12) == round(math.log(2.0), 12)
    True
    >>> kl(0.1, 0.0)
    inf
    """
    return _kl_unchecked(_check_unit(q, "q"), _check_unit(p, "p"))


#: Alias of :func:`kl` with a self-explanatory name.
kl_divergence_bernoulli = kl


def _entropy(q: float) -> float:
    """Bernoulli entropy in nats."""
    h = 0.0
    if q > 0.0:
        h -= q * math.log(q)
    if q < 1.0:
        h -= (1.0 - q) * math.log1p(-q)
    return h


def _kl_inv_unchecked(q: float, c: float) -> float:
    if c == 0.0 or q >= 1.0:
        return q
    if math.isinf(c):
        return 1.0
    if q == 0.0:  # closed form, kl(0 || p) = -ln(1 - p)
        return _round_up_to_root(q, -math.expm1(-c), c)
    # Two upper bounds on the root, so Newton starts on its right:
    # Pinsker, kl(q || p) >= 2 (p - q)^2; and, at the root,
    # (1 - q) ln(1 / (1 - p)) = c + H(q) + q ln p <= c + H(q).
    p = min(q + math.sqrt(0.5 * c), -math.expm1(-(c + _entropy(q)) / (1.0 - q)))
    if p >= 1.0:
        return 1.0
    # f(p) = kl(q || p) - c is convex and increasing on [q, 1): Newton from the right decreases
    # monotonically to the root, so every iterate is an upper bound on kl^-1 (in exact
    # arithmetic; the final round-up makes the returned float one as well).
    for _ in range(_MAX_NEWTON):
        f = _kl_unchecked(q, p) - c
        if f <= c * _ROUND_UP_MARGIN:  # at the root up to rounding: hand over to the round-up
            break
        step = f / (((p - q) / p) / (1.0 - p))  # f / f'(p), ordered to avoid underflow
        nxt = max(p - step, q)
        if not nxt < p:
            break
        p = nxt
    return _round_up_to_root(q, p, c)


def _round_up_to_root(q: float, p: float, c: float) -> float:
    """Move ``p`` right until ``kl(q || p) >= c`` holds in exact arithmetic.

    Rounding in the closed form or the last Newton step may land a few ulps left of the root.
    First ``p`` moves right (doubling steps from one ulp) until the float64 ``kl(q || p)``
    exceeds ``c (1 + 32 eps)``; then the condition is verified with :func:`_kl_exceeds`, which
    evaluates ``kl`` from the exact values of ``q`` and ``p`` in 400-digit decimal arithmetic
    (the float64 ``kl`` can err by more than 32 eps relative where its terms cancel: 5 in
    20,000 random cases ended 1 ulp below the root), and ``p`` moves on by one ulp at a time
    until it holds.
    """
    target = c * (1.0 + _ROUND_UP_MARGIN)
    gap = math.ulp(p)
    while p < 1.0 and _kl_unchecked(q, p) < target:
        p = min(1.0, p + gap)
        gap *= 2.0
    while p < 1.0 and not _kl_exceeds(q, p, c):
        p = math.nextafter(p, 2.0)
    return min(p, 1.0)


def _kl_exceeds(q: float, p: float, c: float) -> bool:
    """``kl(q || p) > c`` for the exact float values, decided in 400-digit decimal arithmetic.

    400 digits hold ``1 - p`` for any float64 ``p`` with all its significant digits (a subnormal
    ``p`` sits 324 places after the point), and Decimal's ``ln`` is correctly rounded, so the
    computed divergence errs by less than ``1e-60`` relative to its terms, far below the spacing
    of float64 numbers near ``c``; a difference that small counts as not exceeding (so the
    caller moves on by one more ulp). About a millisecond per call.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 400
        Q, P, C = decimal.Decimal(q), decimal.Decimal(p), decimal.Decimal(c)
        one = decimal.Decimal(1)
        total = decimal.Decimal(0)
        if Q > 0:
            total += Q * (Q / P).ln()
        if Q < one:
            total += (one - Q) * ((one - Q) / (one - P)).ln()
        return total - C > C * decimal.Decimal("1e-40")


def kl_inv(q: float, c: float) -> float:
    r"""Upper inverse of the binary KL: the largest ``p >= q`` with ``kl(q || p) <= c``.

    Parameters
    ----------
    q : float
        Empirical risk, in ``[0, 1]``.
    c : float
        Budget, ``>= 0`` (``inf`` allowed, giving 1).

    Returns
    -------
    float
        :math:`\mathrm{kl}^{-1}(q, c) = \max\{p \in [q, 1] : \mathrm{kl}(q \| p) \le c\}`,
        within about ``1e-15`` of the exact value and never below it; 1.0 when the bound is
        vacuous (the root rounds to 1).

    Raises
    ------
    ValueError
        If ``q`` is not in ``[0, 1]`` or ``c`` is negative or NaN.

    Notes
    -----
    ``f(p) = kl(q || p) - c`` is convex and increasing on ``[q, 1)`` with derivative
    :math:`(p - q) / (p (1 - p))`. Newton's method started to the right of the root therefore
    decreases monotonically to it: every iterate is a valid upper bound. The start is the
    smaller of two upper bounds, Pinsker's :math:`q + \sqrt{c/2}` and
    :math:`1 - \exp(-(c + H(q)) / (1 - q))` (drop :math:`q \ln p \le 0` from the equation),
    which stays below 1 for large ``c``. At ``q = 0`` the closed form
    :math:`1 - e^{-c}` is used; ``c = 0`` gives ``q``. The result is finally moved right by
    a few ulps if needed, until ``kl(q || p) > c`` holds for the exact float values (checked in
    400-digit decimal arithmetic), so rounding never puts it below the root. The iteration is
    float64 scalar arithmetic.

    Examples
    --------
    >>> abs(kl_inv(0.0, 1.0) - (1.0 - math.exp(-1.0))) < 1e-14
    True
    >>> p = kl_inv(0.1, 0.05)
    >>> round(p, 6), abs(kl(0.1, p) - 0.05) < 1e-14
    (0.220079, True)
    >>> kl_inv(0.3, 0.0), kl_inv(0.5, 1e6)
    (0.3, 1.0)
    """
    q = _check_unit(q, "q (empirical risk)")
    if isinstance(c, bool) or not isinstance(c, Real) or math.isnan(float(c)) or float(c) < 0:
        raise ValueError(error_message("c (budget of kl_inv)", "a non-negative number", c,
                                       "Pass c = (KL + ln(2 sqrt(n)/delta)) / n >= 0."))
    return _kl_inv_unchecked(q, float(c))


# -- the bounds ------------------------------------------------------------------------------
def union_cost(K: int) -> float:
    r"""Cost ``ln K`` of a union bound over ``K`` choices fixed in advance.

    Parameters
    ----------
    K : int
        Number of candidates (prior scales, checkpoints, Catoni constants), ``>= 1``.

    Returns
    -------
    float
        :math:`\ln K`, added to the complexity term ``KL + ln(...)``; equivalent to running
        each of the ``K`` bounds at confidence ``delta / K``.

    Examples
    --------
    >>> union_cost(1)
    0.0
    >>> union_cost(10) == math.log(10)
    True
    """
    return math.log(_check_count(K, "K (size of the union)"))


def _mcallester(r: float, kl_: float, n: int, delta: float) -> float:
    eps = kl_ + math.log(2.0 * math.sqrt(n) / delta)
    return min(1.0, r + math.sqrt(eps / (2.0 * n)))


def _kl_bound(r: float, kl_: float, n: int, delta: float) -> float:
    eps = kl_ + math.log(2.0 * math.sqrt(n) / delta)
    return _kl_inv_unchecked(r, eps / n)


def _catoni(r: float, kl_: float, n: int, delta: float, C: float) -> float:
    eps = kl_ + math.log(1.0 / delta)
    return min(1.0, math.expm1(-C * r - eps / n) / math.expm1(-C))


def mcallester(empirical_risk: float, kl: float, n: int, delta: float) -> float:
    r"""McAllester's PAC-Bayes bound (with Maurer's constant) on the Gibbs risk.

    Parameters
    ----------
    empirical_risk : float
        Empirical Gibbs 0-1 risk ``r`` on the ``n`` bound points, in ``[0, 1]``.
    kl : float
        ``KL(Q || P)`` in nats, finite and ``>= 0`` (add :func:`union_cost` for prior choices).
    n : int
        Number of bound points, ``>= 8``.
    delta : float
        ``1 -`` confidence, in ``(0, 1)``.

    Returns
    -------
    float
        :math:`\min(1, r + \sqrt{\varepsilon / (2n)})`,
        :math:`\varepsilon = \mathrm{KL} + \ln(2\sqrt{n}/\delta)`.

    Raises
    ------
    ValueError
        On a risk outside ``[0, 1]``, a negative or non-finite KL, ``n < 8``, or ``delta``
        outside ``(0, 1)``.
    TypeError
        If ``n`` is not an integer.

    Notes
    -----
    Assumptions: i.i.d. bound points, a prior independent of them, the 0-1 loss. The bound is
    the kl bound (:func:`kl_bound`) relaxed by Pinsker's inequality
    :math:`\mathrm{kl}(r \| R) \ge 2 (R - r)^2`, so it is never tighter than :func:`kl_bound`.
    It inherits Maurer's constant :math:`2\sqrt{n}`, proved for ``n >= 8``.

    References
    ----------
    .. [1] D. McAllester, "PAC-Bayesian model averaging", COLT 1999.
    .. [2] A. Maurer, "A note on the PAC Bayesian theorem", arXiv:cs/0411099, 2004.

    Examples
    --------
    >>> round(mcallester(0.1, 50.0, 10_000, 0.025), 6)
    0.154308
    >>> mcallester(0.1, 1e6, 100, 0.025)
    1.0
    """
    r = _check_unit(empirical_risk, "empirical_risk")
    k = _check_kl(kl)
    n = _check_n_maurer(n, "McAllester")
    d = check_probability(delta, "delta")
    return _mcallester(r, k, n, d)


def kl_bound(empirical_risk: float, kl: float, n: int, delta: float) -> float:
    r"""The kl (Seeger / Maurer) PAC-Bayes bound on the Gibbs risk.

    Parameters
    ----------
    empirical_risk : float
        Empirical Gibbs 0-1 risk ``r`` on the ``n`` bound points, in ``[0, 1]``.
    kl : float
        ``KL(Q || P)`` in nats, finite and ``>= 0`` (add :func:`union_cost` for prior choices).
    n : int
        Number of bound points, ``>= 8``.
    delta : float
        ``1 -`` confidence, in ``(0, 1)``.

    Returns
    -------
    float
        :math:`\mathrm{kl}^{-1}(r, \varepsilon / n)`,
        :math:`\varepsilon = \mathrm{KL} + \ln(2\sqrt{n}/\delta)`.

    Raises
    ------
    ValueError
        On a risk outside ``[0, 1]``, a negative or non-finite KL, ``n < 8``, or ``delta``
        outside ``(0, 1)``.
    TypeError
        If ``n`` is not an integer.

    Notes
    -----
    Assumptions: i.i.d. bound points, a prior independent of them, a loss in ``[0, 1]``
    (here the 0-1 loss). Maurer (2004) proved
    :math:`\mathbb{E}\, e^{n\,\mathrm{kl}(r \| R)} \le 2\sqrt{n}` for ``n >= 8``, whence
    :math:`\mathrm{kl}(r \| R) \le \varepsilon / n` with probability ``1 - delta`` for all ``Q``.
    It is the tightest of the three bounds here at equal complexity term: Pinsker gives
    McAllester, and Catoni's bound for any ``C`` is a linear relaxation of ``kl``.

    References
    ----------
    .. [1] M. Seeger, "PAC-Bayesian generalisation error bounds for Gaussian process
       classification", JMLR 3, 2002.
    .. [2] A. Maurer, "A note on the PAC Bayesian theorem", arXiv:cs/0411099, 2004.

    Examples
    --------
    >>> round(kl_bound(0.1, 50.0, 10_000, 0.025), 6)
    0.135697
    >>> kl_bound(0.1, 50.0, 10_000, 0.025) <= mcallester(0.1, 50.0, 10_000, 0.025)
    True
    """
    r = _check_unit(empirical_risk, "empirical_risk")
    k = _check_kl(kl)
    n = _check_n_maurer(n, "kl")
    d = check_probability(delta, "delta")
    return _kl_bound(r, k, n, d)


def catoni(empirical_risk: float, kl: float, n: int, delta: float, C: float) -> float:
    r"""Catoni's PAC-Bayes bound on the Gibbs risk for a constant ``C`` fixed in advance.

    Parameters
    ----------
    empirical_risk : float
        Empirical Gibbs 0-1 risk ``r`` on the ``n`` bound points, in ``[0, 1]``.
    kl : float
        ``KL(Q || P)`` in nats, finite and ``>= 0`` (add :func:`union_cost` for prior choices).
    n : int
        Number of bound points, ``>= 1``.
    delta : float
        ``1 -`` confidence, in ``(0, 1)``.
    C : float
        Catoni's constant, ``> 0``, chosen without looking at the bound points.

    Returns
    -------
    float
        :math:`\min\big(1, (1 - \exp(-C r - (\mathrm{KL} + \ln(1/\delta))/n)) / (1 - e^{-C})\big)`.

    Raises
    ------
    ValueError
        On a risk outside ``[0, 1]``, a negative or non-finite KL, ``n < 1``, ``delta``
        outside ``(0, 1)``, or ``C <= 0``.
    TypeError
        If ``n`` is not an integer.

    Notes
    -----
    Assumptions: i.i.d. bound points, a prior independent of them, a loss in ``[0, 1]``, and
    ``C`` fixed before the data are seen. A ``C`` tuned on the bound data needs a union bound
    over a grid fixed in advance: :func:`catoni_grid`. With
    :math:`F_C(p) = -\ln(1 - p (1 - e^{-C}))` one has
    :math:`\mathrm{kl}(r \| p) = \sup_C [F_C(p) - C r]`, so at equal complexity term the Catoni
    bound is never tighter than ``kl^-1(r, (KL + ln(1/delta)) / n)``; it can beat
    :func:`kl_bound` only through its smaller constant ``ln(1/delta)`` versus
    ``ln(2 sqrt(n)/delta)``.

    References
    ----------
    .. [1] O. Catoni, "PAC-Bayesian supervised classification: the thermodynamics of
       statistical learning", IMS Lecture Notes 56, 2007, Theorem 1.2.6.

    Examples
    --------
    >>> round(catoni(0.1, 50.0, 10_000, 0.025, C=1.0), 6)
    0.15821
    """
    r = _check_unit(empirical_risk, "empirical_risk")
    k = _check_kl(kl)
    n = _check_count(n, "n (number of bound points)")
    d = check_probability(delta, "delta")
    return _catoni(r, k, n, d, _check_C(C))


class CatoniGridResult(NamedTuple):
    """Result of :func:`catoni_grid`: the bound and the constant that attains it."""

    bound: float
    C: float


def _check_grid(grid: Any) -> tuple[float, ...]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) == 0:
        raise ValueError(error_message(
            "catoni_grid", "a non-empty sequence of positive constants fixed in advance",
            grid, "Pass e.g. catoni_grid=[0.5, 1.0, 2.0, 4.0]."))
    return tuple(_check_C(C, "every C in catoni_grid") for C in grid)


def catoni_grid(empirical_risk: float, kl: float, n: int, delta: float,
                grid: Sequence[float]) -> CatoniGridResult:
    r"""The best Catoni bound over a grid of constants fixed in advance, union bound included.

    Parameters
    ----------
    empirical_risk : float
        Empirical Gibbs 0-1 risk ``r`` on the ``n`` bound points, in ``[0, 1]``.
    kl : float
        ``KL(Q || P)`` in nats, finite and ``>= 0``.
    n : int
        Number of bound points, ``>= 1``.
    delta : float
        ``1 -`` confidence of the whole grid, in ``(0, 1)``.
    grid : sequence of float
        The ``K`` candidate constants, all ``> 0``, chosen before seeing the bound points.

    Returns
    -------
    CatoniGridResult
        ``(bound, C)``: :math:`\min_{C \in \text{grid}}` of :func:`catoni` with
        ``kl + ln K``, and the first constant attaining it.

    Notes
    -----
    A union bound over the ``K`` constants, each at confidence ``delta / K``, holds
    simultaneously with probability ``1 - delta``; so choosing the best ``C`` after seeing
    ``r`` is allowed and costs ``ln K`` in the complexity term (``ln K`` is counted with
    repeats, which is conservative).

    Examples
    --------
    >>> res = catoni_grid(0.1, 50.0, 10_000, 0.025, [0.5, 1.0, 2.0])
    >>> res.C, round(res.bound, 6)
    (0.5, 0.137159)
    >>> res.bound >= min(catoni(0.1, 50.0, 10_000, 0.025, C) for C in [0.5, 1.0, 2.0])
    True
    """
    r = _check_unit(empirical_risk, "empirical_risk")
    k = _check_kl(kl)
    n = _check_count(n, "n (number of bound points)")
    d = check_probability(delta, "delta")
    grid_ = _check_grid(grid)
    return _catoni_grid(r, k, n, d, grid_)


def _catoni_grid(r: float, kl_: float, n: int, delta: float,
                 grid: tuple[float, ...]) -> CatoniGridResult:
    k = kl_ + math.log(len(grid))
    best = min(range(len(grid)), key=lambda i: (_catoni(r, k, n, delta, grid[i]), i))
    return CatoniGridResult(_catoni(r, k, n, delta, grid[best]), grid[best])


def sample_convergence(empirical_risk: float, m: int, delta_mc: float) -> float:
    r"""Upper confidence value of a Monte-Carlo estimate of the empirical Gibbs risk.

    Parameters
    ----------
    empirical_risk : float
        ``r_m``: the fraction of errors among ``m`` predictions, each made with a fresh draw
        from ``Q``, in ``[0, 1]``.
    m : int
        Number of Monte-Carlo predictions, ``>= 1`` (``passes x n`` with one draw per example).
    delta_mc : float
        Failure probability of the correction, in ``(0, 1)``.

    Returns
    -------
    float
        :math:`r^+ = \mathrm{kl}^{-1}(r_m, \ln(2/\delta_{mc}) / m) \ge r_m`.

    Notes
    -----
    Each prediction is a Bernoulli trial with success probability the empirical Gibbs risk
    ``r`` (the draws are independent given the bound data), so the Chernoff bound for the
    binomial tail gives :math:`r \le r^+` with probability ``1 - delta_mc`` (Langford and
    Caruana 2002; the constant ``ln(2/delta_mc)`` follows Dziugaite and Roy 2017). Combined
    with a PAC-Bayes bound at ``delta`` the confidence is ``1 - delta - delta_mc``.

    References
    ----------
    .. [1] J. Langford and R. Caruana, "(Not) bounding the true error", NeurIPS 2002.
    .. [2] G. K. Dziugaite and D. M. Roy, UAI 2017, section 3.

    Examples
    --------
    >>> r_plus = sample_convergence(0.1, 10_000, 0.01)
    >>> round(r_plus, 6), r_plus >= 0.1
    (0.110048, True)
    """
    r = _check_unit(empirical_risk, "empirical_risk (r_m)")
    m = _check_count(m, "m (number of Monte-Carlo predictions)")
    d = check_probability(delta_mc, "delta_mc")
    return _kl_inv_unchecked(r, math.log(2.0 / d) / m)


# -- certificates ---------------------------------------------------------------------------
def _risk_bound(bound: str, r: float, kl_: float, n: int, delta: float, union_size: int,
                C: float | None, grid: tuple[float, ...] | None) -> tuple[float, float | None]:
    """The bound named ``bound`` with the union cost; returns (value, Catoni C used)."""
    k = kl_ + math.log(union_size)
    if bound == "kl":
        return _kl_bound(r, k, n, delta), None
    if bound == "mcallester":
        return _mcallester(r, k, n, delta), None
    if grid is not None:
        res = _catoni_grid(r, k, n, delta, grid)
        return res.bound, res.C
    assert C is not None
    return _catoni(r, k, n, delta, C), C


def _check_bound_name(bound: Any, allowed: Sequence[str] = _BOUND_NAMES) -> str:
    if bound not in allowed:
        raise ValueError(error_message("bound", "one of " + ", ".join(repr(b) for b in allowed),
                                       bound, "The kl bound is the tightest; use bound='kl'."))
    return str(bound)


def _check_catoni_args(bound: str, C: Any, grid: Any) -> tuple[float | None,
                                                               tuple[float, ...] | None]:
    if bound != "catoni":
        if C is not None or grid is not None:
            raise ValueError(error_message(
                "C and catoni_grid", "None unless bound='catoni'",
                f"C={C!r}, catoni_grid={grid!r} with bound={bound!r}",
                "Drop them, or pass bound='catoni'."))
        return None, None
    if (C is None) == (grid is None):
        raise ValueError(error_message(
            "the Catoni constant", "given either as C (fixed in advance) or as catoni_grid "
            "(a grid fixed in advance, paid by a union bound), not both or neither",
            f"C={C!r}, catoni_grid={grid!r}", "Pass C=1.0 or catoni_grid=[0.5, 1.0, 2.0]."))
    if grid is not None:
        return None, _check_grid(grid)
    return _check_C(C), None


def _check_groups(kl_per_group: Any, kl_total: float) -> dict[str, float] | None:
    if kl_per_group is None:
        return None
    if not isinstance(kl_per_group, Mapping):
        raise TypeError(error_message("kl_per_group", "a mapping from group name to KL",
                                      type(kl_per_group).__name__,
                                      "Pass e.g. {'conv1': 3.2, 'fc': 10.5}."))
    groups = {str(name): _check_kl(value, f"kl_per_group[{name!r}]")
              for name, value in kl_per_group.items()}
    total = math.fsum(groups.values())
    if not math.isclose(total, kl_total, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(error_message(
            "the sum of kl_per_group", f"equal to kl = {kl_total!r}", repr(total),
            "The KL of a block-diagonal Gaussian is the sum of its blocks; pass matching values."))
    return groups


@dataclasses.dataclass(frozen=True)
class Certificate:
    r"""A PAC-Bayes risk certificate and every input needed to recompute it.

    Build one with :func:`certificate_from_errors` (the honest protocol) or
    :func:`paper_protocol_bound` (the paper's optimistic diagnostic); store it with
    :meth:`to_json` and check a stored one with :meth:`recompute` or :meth:`verify`.

    Parameters
    ----------
    risk_bound : float
        The certified upper bound on the Gibbs 0-1 risk, in ``[0, 1]``.
    bound : {"kl", "mcallester", "catoni"}
        Which PAC-Bayes bound produced it.
    protocol : {"certificate", "paper"}
        ``"certificate"``: Monte-Carlo Gibbs risk, sample-convergence correction, union bound.
        ``"paper"``: the paper's evaluation (training error of the model average, no
        correction, no union bound); a diagnostic, not a certificate.
    n : int
        Number of bound points.
    kl : float
        Total ``KL(Q || P)`` in nats.
    delta : float
        Failure probability of the PAC-Bayes bound.
    empirical_gibbs_risk : float
        ``r_m``, the Monte-Carlo Gibbs error on the bound points (for ``protocol="paper"``: the
        training error the paper plugs in, see ``risk_estimate``).
    corrected_risk : float
        ``r+``, the risk entering the bound (equal to ``empirical_gibbs_risk`` for the paper
        protocol).
    m : int or None, default=None
        Number of Monte-Carlo predictions behind ``r_m`` (None for the paper protocol).
    n_errors : int or None, default=None
        Number of errors among the ``m`` predictions (``r_m = n_errors / m``).
    delta_mc : float, default=0.0
        Failure probability of the sample-convergence correction (0 when there is none).
    union_size : int, default=1
        Number of prior choices paid by a union bound (``ln union_size`` added to the KL term).
    kl_per_group : dict of str to float or None, default=None
        The KL split by parameter group (layer); sums to ``kl``.
    catoni_C : float or None, default=None
        The Catoni constant used (the chosen one when ``catoni_grid`` is set).
    catoni_grid : tuple of float or None, default=None
        The grid of Catoni constants fixed in advance; its size is paid by a union bound.
    risk_estimate : {"gibbs", "model_average"}, default="gibbs"
        What ``empirical_gibbs_risk`` measures.
    format_version : int, default=1
        Version of the serialized format.

    Attributes
    ----------
    confidence : float
        ``1 - delta - delta_mc``, the probability with which the certificate holds.

    Examples
    --------
    >>> cert = certificate_from_errors(120, 1000, 1000, 25.0)
    >>> cert.confidence, cert.protocol, cert.bound
    (0.965, 'certificate', 'kl')
    >>> cert.recompute() == cert.risk_bound
    True
    >>> Certificate.from_json(cert.to_json()) == cert
    True
    """

    risk_bound: float
    bound: str
    protocol: str
    n: int
    kl: float
    delta: float
    empirical_gibbs_risk: float
    corrected_risk: float
    m: int | None = None
    n_errors: int | None = None
    delta_mc: float = 0.0
    union_size: int = 1
    kl_per_group: dict[str, float] | None = dataclasses.field(default=None, hash=False)
    catoni_C: float | None = None
    catoni_grid: tuple[float, ...] | None = None
    risk_estimate: str = "gibbs"
    format_version: int = _FORMAT_VERSION
    confidence: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "risk_bound", _check_unit(self.risk_bound, "risk_bound of Certificate"))
        set_(self, "bound", _check_bound_name(self.bound))
        if self.protocol not in _PROTOCOLS:
            raise ValueError(error_message("protocol of Certificate",
                                           "'certificate' or 'paper'", self.protocol))
        set_(self, "n", _check_count(self.n, "n of Certificate"))
        set_(self, "kl", _check_kl(self.kl, "kl of Certificate"))
        set_(self, "delta", check_probability(self.delta, "delta of Certificate"))
        set_(self, "empirical_gibbs_risk",
             _check_unit(self.empirical_gibbs_risk, "empirical_gibbs_risk of Certificate"))
        set_(self, "corrected_risk",
             _check_unit(self.corrected_risk, "corrected_risk of Certificate"))
        set_(self, "union_size", _check_count(self.union_size, "union_size of Certificate"))
        if self.protocol == "certificate":
            set_(self, "m", _check_count(self.m, "m of Certificate"))
            set_(self, "delta_mc", check_probability(self.delta_mc, "delta_mc of Certificate"))
            if self.n_errors is not None:
                set_(self, "n_errors", _check_count(self.n_errors, "n_errors of Certificate", 0))
        elif self.m is not None or self.n_errors is not None or self.delta_mc != 0.0:
            raise ValueError(error_message(
                "m, n_errors and delta_mc of a paper-protocol Certificate", "None, None and 0",
                f"m={self.m!r}, n_errors={self.n_errors!r}, delta_mc={self.delta_mc!r}",
                "The paper protocol has no Monte-Carlo correction; use protocol='certificate'."))
        else:
            set_(self, "delta_mc", 0.0)
        if self.format_version != _FORMAT_VERSION:
            raise ValueError(error_message("format_version of Certificate",
                                           str(_FORMAT_VERSION), self.format_version,
                                           "Recreate the certificate with this version."))
        if self.risk_estimate not in ("gibbs", "model_average"):
            raise ValueError(error_message("risk_estimate of Certificate",
                                           "'gibbs' or 'model_average'", self.risk_estimate))
        set_(self, "kl_per_group", _check_groups(self.kl_per_group, self.kl))
        if self.catoni_grid is not None:
            set_(self, "catoni_grid", _check_grid(list(self.catoni_grid)))
        if self.catoni_C is not None:
            set_(self, "catoni_C", _check_C(self.catoni_C, "catoni_C of Certificate"))
        if self.bound == "catoni" and self.catoni_C is None:
            raise ValueError(error_message("catoni_C of a Catoni Certificate", "a positive number",
                                           None, "Record the constant used."))
        confidence = 1.0 - self.delta - self.delta_mc
        if not confidence > 0.0:
            raise ValueError(error_message("delta + delta_mc", "less than 1",
                                           repr(self.delta + self.delta_mc),
                                           "Use e.g. delta=0.025, delta_mc=0.01."))
        set_(self, "confidence", confidence)

    # -- recomputation ----------------------------------------------------------------------
    def recompute(self) -> float:
        """Recompute the risk bound from the logged inputs alone.

        For the certificate protocol ``r+`` is recomputed from ``n_errors / m`` (or from the
        logged ``empirical_gibbs_risk`` when ``n_errors`` is absent) and ``delta_mc``; the
        bound from ``r+``, ``kl + ln(union_size)``, ``n``, ``delta`` and the Catoni constant or
        grid.

        Returns
        -------
        float
            The recomputed bound; equal to ``risk_bound`` for an untampered certificate.

        Examples
        --------
        >>> cert = certificate_from_errors(7, 2000, 1000, 12.5, bound="mcallester")
        >>> cert.recompute() == cert.risk_bound
        True
        """
        return self._recompute()[0]

    def _recompute(self) -> tuple[float, float]:
        if self.protocol == "certificate":
            assert self.m is not None
            r_m = (self.n_errors / self.m if self.n_errors is not None
                   else self.empirical_gibbs_risk)
            r_plus = _kl_inv_unchecked(r_m, math.log(2.0 / self.delta_mc) / self.m)
        else:
            r_plus = self.empirical_gibbs_risk
        grid = self.catoni_grid
        C = None if grid is not None else self.catoni_C
        value, _ = _risk_bound(self.bound, r_plus, self.kl, self.n, self.delta,
                               self.union_size, C, grid)
        return value, r_plus

    def verify(self, *, atol: float = 1e-12) -> None:
        """Raise a ``ValueError`` unless the logged inputs reproduce the logged results.

        Parameters
        ----------
        atol : float, default=1e-12
            Absolute tolerance on ``risk_bound`` and ``corrected_risk``.

        Examples
        --------
        >>> certificate_from_errors(30, 1000, 1000, 5.0).verify()
        """
        value, r_plus = self._recompute()
        problems = []
        if abs(value - self.risk_bound) > atol:
            problems.append(f"risk_bound {self.risk_bound!r} (recomputed {value!r})")
        if abs(r_plus - self.corrected_risk) > atol:
            problems.append(f"corrected_risk {self.corrected_risk!r} (recomputed {r_plus!r})")
        if (self.n_errors is not None and self.m is not None
                and abs(self.n_errors / self.m - self.empirical_gibbs_risk) > atol):
            problems.append(f"empirical_gibbs_risk {self.empirical_gibbs_risk!r} "
                            f"(n_errors / m = {self.n_errors / self.m!r})")
        if problems:
            raise ValueError(error_message(
                "the logged results of the Certificate", "reproducible from its logged inputs",
                "; ".join(problems), "The certificate was altered or built by other code."))

    @property
    def epsilon(self) -> float:
        """The complexity term of the bound, union cost included (in nats).

        ``KL + ln(2 sqrt(n)/delta) + ln(union_size)`` for the kl and McAllester bounds,
        ``KL + ln(1/delta) + ln(union_size) (+ ln |catoni_grid|)`` for Catoni.
        """
        k = self.kl + math.log(self.union_size)
        if self.bound == "catoni":
            grid_cost = math.log(len(self.catoni_grid)) if self.catoni_grid else 0.0
            return k + math.log(1.0 / self.delta) + grid_cost
        return k + math.log(2.0 * math.sqrt(self.n) / self.delta)

    # -- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict of JSON types (the grid as a list), ``confidence`` included.

        Examples
        --------
        >>> d = certificate_from_errors(3, 100, 100, 1.0).to_dict()
        >>> d["protocol"], d["confidence"]
        ('certificate', 0.965)
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["catoni_grid"] is not None:
            out["catoni_grid"] = list(out["catoni_grid"])
        if out["kl_per_group"] is not None:
            out["kl_per_group"] = dict(out["kl_per_group"])
        return out

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keys sorted, ``indent=2`` unless given)."""
        kwargs.setdefault("indent", 2)
        kwargs.setdefault("sort_keys", True)
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Certificate":
        """Rebuild a certificate from :meth:`to_dict` output (unknown keys are an error).

        ``confidence`` is derived; when present it must match ``1 - delta - delta_mc``.
        """
        if not isinstance(data, Mapping):
            raise TypeError(error_message("data of Certificate.from_dict", "a mapping",
                                          type(data).__name__, "Pass json.loads(text)."))
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - fields - {"confidence"})
        if unknown:
            raise ValueError(error_message("the keys of a Certificate", "among "
                                           + ", ".join(sorted(fields)), repr(unknown),
                                           "Remove the unknown keys."))
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.init
                         and f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise ValueError(error_message("a Certificate record", "complete",
                                           f"missing keys {missing}", "Log every field."))
        kwargs = {k: v for k, v in data.items() if k != "confidence"}
        if kwargs.get("catoni_grid") is not None:
            kwargs["catoni_grid"] = tuple(kwargs["catoni_grid"])
        cert = cls(**kwargs)
        if "confidence" in data and not math.isclose(float(data["confidence"]), cert.confidence,
                                                     rel_tol=0.0, abs_tol=1e-12):
            raise ValueError(error_message("confidence of Certificate",
                                           f"1 - delta - delta_mc = {cert.confidence!r}",
                                           repr(data["confidence"])))
        return cert

    @classmethod
    def from_json(cls, text: str) -> "Certificate":
        """Rebuild a certificate from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))


def certificate_from_errors(
    n_errors: int,
    m: int,
    n: int,
    kl: float,
    *,
    delta: float = 0.025,
    delta_mc: float = 0.01,
    union_size: int = 1,
    bound: Literal["kl", "mcallester", "catoni"] = "kl",
    kl_per_group: Mapping[str, float] | None = None,
    C: float | None = None,
    catoni_grid: Sequence[float] | None = None,
) -> Certificate:
    r"""Assemble an honest risk certificate from Monte-Carlo error counts.

    Parameters
    ----------
    n_errors : int
        Errors of the Gibbs classifier among ``m`` predictions on the bound points, each with
        a fresh posterior draw.
    m : int
        Number of predictions (``passes x n`` with one draw per example and pass).
    n : int
        Number of bound points (``>= 8`` for the kl and McAllester bounds).
    kl : float
        Total ``KL(Q || P)`` in nats, exact.
    delta : float, default=0.025
        Failure probability of the PAC-Bayes bound.
    delta_mc : float, default=0.01
        Failure probability of the sample-convergence correction.
    union_size : int, default=1
        Number of prior choices made on the bound data (grid of prior scales, checkpoints);
        ``ln(union_size)`` is added to the complexity term.
    bound : {"kl", "mcallester", "catoni"}, default="kl"
        The PAC-Bayes bound; ``"kl"`` is the tightest at equal complexity term.
    kl_per_group : mapping of str to float, optional
        The KL split by parameter group; must sum to ``kl``.
    C : float, optional
        Catoni constant fixed in advance (``bound="catoni"`` only; exclusive with
        ``catoni_grid``).
    catoni_grid : sequence of float, optional
        Grid of Catoni constants fixed in advance; the best is taken and ``ln len(grid)`` paid.

    Returns
    -------
    Certificate
        With ``protocol="certificate"`` and confidence ``1 - delta - delta_mc``.

    Notes
    -----
    :math:`r_m = n_{err} / m`, :math:`r^+ = \mathrm{kl}^{-1}(r_m, \ln(2/\delta_{mc})/m)`, then the
    chosen bound at :math:`r^+` with :math:`\mathrm{KL} + \ln(\text{union\_size})`. The two
    failure events are combined by a union bound. Choices that change only the posterior
    (its scales, temperature, the training objective) are free and need no ``union_size``.

    Examples
    --------
    >>> cert = certificate_from_errors(150, 3000, 1000, 40.0, union_size=4)
    >>> round(cert.empirical_gibbs_risk, 6), round(cert.corrected_risk, 6)
    (0.05, 0.064021)
    >>> round(cert.risk_bound, 6), cert.confidence
    (0.169026, 0.965)
    """
    m = _check_count(m, "m (number of Monte-Carlo predictions)")
    n_errors = _check_count(n_errors, "n_errors", 0)
    if n_errors > m:
        raise ValueError(error_message("n_errors", f"at most m = {m}", n_errors,
                                       "Count at most one error per prediction."))
    bound = _check_bound_name(bound)
    n = (_check_n_maurer(n, bound) if bound != "catoni"
         else _check_count(n, "n (number of bound points)"))
    kl_ = _check_kl(kl)
    delta = check_probability(delta, "delta")
    delta_mc = check_probability(delta_mc, "delta_mc")
    union_size = _check_count(union_size, "union_size")
    C_, grid = _check_catoni_args(bound, C, catoni_grid)
    groups = _check_groups(kl_per_group, kl_)
    r_m = n_errors / m
    r_plus = _kl_inv_unchecked(r_m, math.log(2.0 / delta_mc) / m)
    value, C_used = _risk_bound(bound, r_plus, kl_, n, delta, union_size, C_, grid)
    return Certificate(
        risk_bound=value, bound=bound, protocol="certificate", n=n, kl=kl_, delta=delta,
        empirical_gibbs_risk=r_m, corrected_risk=r_plus, m=m, n_errors=n_errors,
        delta_mc=delta_mc, union_size=union_size, kl_per_group=groups, catoni_C=C_used,
        catoni_grid=grid, risk_estimate="gibbs")


def paper_protocol_bound(
    train_error: float,
    kl: float,
    n: int,
    *,
    delta: float = 0.1,
    bound: Literal["mcallester", "catoni", "kl"] = "mcallester",
    C: float | None = None,
    kl_per_group: Mapping[str, float] | None = None,
) -> Certificate:
    r"""The paper's optimistic evaluation of a PAC-Bayes bound, as a labeled diagnostic.

    Parameters
    ----------
    train_error : float
        Training error of the Bayesian model average (the paper averages 100 posterior
        samples), in ``[0, 1]``.
    kl : float
        Total ``KL(Q || P)`` in nats.
    n : int
        Number of training points.
    delta : float, default=0.1
        Failure probability (the paper reports confidence 0.9).
    bound : {"mcallester", "catoni", "kl"}, default="mcallester"
        The bound the paper's number is computed with.
    C : float, optional
        Catoni constant, required for ``bound="catoni"``.
    kl_per_group : mapping of str to float, optional
        The KL split by parameter group.

    Returns
    -------
    Certificate
        With ``protocol="paper"``, ``risk_estimate="model_average"``, no Monte-Carlo correction
        (``m=None``, ``delta_mc=0``) and ``union_size=1``.

    Notes
    -----
    This is **not** a certificate: the bounds hold for the Gibbs classifier, whereas the
    training error of the model average is a different quantity (it can be lower); the error
    is measured without the sample-convergence correction; and choices made on the same data
    (prior scales, ``C``) are not paid for. It reproduces the numbers of Schnaus et al. (2023)
    for comparison next to :func:`certificate_from_errors`.

    Examples
    --------
    >>> diag = paper_protocol_bound(0.05, 40.0, 1000)
    >>> diag.protocol, diag.confidence, round(diag.risk_bound, 6)
    ('paper', 0.9, 0.202397)
    """
    r = _check_unit(train_error, "train_error")
    bound = _check_bound_name(bound)
    n = (_check_n_maurer(n, bound) if bound != "catoni"
         else _check_count(n, "n (number of bound points)"))
    kl_ = _check_kl(kl)
    delta = check_probability(delta, "delta")
    if bound == "catoni" and C is None:
        raise ValueError(error_message("C", "a positive number when bound='catoni'", None,
                                       "Pass the Catoni constant used, e.g. C=1.0."))
    C_, _ = _check_catoni_args(bound, C, None)
    groups = _check_groups(kl_per_group, kl_)
    value, C_used = _risk_bound(bound, r, kl_, n, delta, 1, C_, None)
    return Certificate(
        risk_bound=value, bound=bound, protocol="paper", n=n, kl=kl_, delta=delta,
        empirical_gibbs_risk=r, corrected_risk=r, m=None, n_errors=None, delta_mc=0.0,
        union_size=1, kl_per_group=groups, catoni_C=C_used, catoni_grid=None,
        risk_estimate="model_average")
