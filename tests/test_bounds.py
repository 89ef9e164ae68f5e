"""PAC-Bayes bounds: known values, kl / kl^-1 round trip, ordering, certificates, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skkprior.bounds import (
    Certificate,
    catoni,
    catoni_grid,
    certificate_from_errors,
    kl,
    kl_bound,
    kl_divergence_bernoulli,
    kl_inv,
    mcallester,
    paper_protocol_bound,
    sample_convergence,
    union_cost,
)

mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp


# -- high-precision references ------------------------------------------------------------------
def kl_mp(q, p):
    q, p = mp.mpf(q), mp.mpf(p)
    out = mp.mpf(0)
    if q > 0:
        out += q * mp.log(q / p)
    if q < 1:
        out += (1 - q) * mp.log((1 - q) / (1 - p))
    return out


def kl_inv_mp(q, c, iterations=120):
    """Bisection in 50-digit arithmetic: the largest p in [q, 1] with kl(q || p) <= c."""
    with mp.workdps(50):
        c = mp.mpf(c)
        lo, hi = mp.mpf(q), mp.mpf(1)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if kl_mp(q, mid) > c:
                hi = mid
            else:
                lo = mid
        return lo


Q_GRID = [0.0, 1e-9, 1e-6, 1e-3, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999999]
C_GRID = [1e-14, 1e-10, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0]


# -- kl -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("q,p", [(0.1, 0.2), (0.5, 0.01), (0.0, 0.3), (1.0, 0.4), (0.3, 0.3 + 1e-9),
                                 (1e-8, 0.5), (0.999, 0.5)])
def test_kl_matches_high_precision(q, p):
    with mp.workdps(40):
        expected = float(kl_mp(q, p))
    assert kl(q, p) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_kl_edge_values():
    assert kl(0.3, 0.3) == 0.0
    assert kl(0.0, 0.0) == 0.0 and kl(1.0, 1.0) == 0.0
    assert kl(0.0, 0.5) == pytest.approx(math.log(2.0), rel=1e-15)
    assert kl(0.2, 0.0) == math.inf and kl(0.2, 1.0) == math.inf
    assert kl_divergence_bernoulli is kl


# -- kl_inv -------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", C_GRID + [50.0, 700.0])
def test_kl_inv_closed_form_at_zero(c):
    closed = -math.expm1(-c)
    got = kl_inv(0.0, c)
    # the closed form, rounded up by at most a few ulps so that it stays an upper bound
    assert closed <= got <= min(1.0, closed * (1 + 128 * 2.0**-52) + math.ulp(closed))
    assert got == pytest.approx(1.0 - math.exp(-c), rel=1e-13, abs=1e-16)


@pytest.mark.parametrize("q,c", list(itertools.product(Q_GRID, C_GRID)))
def test_kl_inv_matches_bisection_and_is_an_upper_bound(q, c):
    exact = kl_inv_mp(q, c)
    got = kl_inv(q, c)
    assert abs(got - float(exact)) <= 1e-12, (got, float(exact))
    # Newton from the right, rounded up: never below the exact inverse
    assert got == 1.0 or mp.mpf(got) >= exact
    assert q <= got <= 1.0


@pytest.mark.parametrize("q,c", [(0.1, 0.05), (0.5, 1e-8), (1e-6, 2.0), (0.9, 0.01),
                                 (0.02, 0.3)])
def test_every_newton_iterate_is_an_upper_bound(q, c, monkeypatch):
    import skkprior.bounds as bounds

    visited = []
    original = bounds._kl_unchecked

    def recording(q_, p_):
        visited.append(p_)
        return original(q_, p_)

    monkeypatch.setattr(bounds, "_kl_unchecked", recording)
    result = kl_inv(q, c)
    exact = kl_inv_mp(q, c)
    lowest = visited.index(min(visited))
    newton, round_up = visited[: lowest + 1], visited[lowest:]
    assert len(newton) >= 2
    assert all(a > b for a, b in zip(newton, newton[1:]))  # Newton decreases monotonically
    assert all(a <= b for a, b in zip(round_up, round_up[1:]))  # the round-up only moves right
    # every iterate is an upper bound, up to the rounding of its last step
    assert all(mp.mpf(p) >= exact - 2 * math.ulp(float(exact)) for p in visited)
    assert mp.mpf(result) >= exact and result == visited[-1]


def test_kl_inv_iterate_is_valid_upper_bound_in_float():
    for q, c in itertools.product(Q_GRID, C_GRID):
        p = kl_inv(q, c)
        assert p == 1.0 or kl(q, p) >= c


def test_kl_inv_special_cases():
    assert kl_inv(0.3, 0.0) == 0.3
    assert kl_inv(1.0, 0.5) == 1.0
    assert kl_inv(0.2, math.inf) == 1.0
    assert kl_inv(0.5, 100.0) == 1.0  # vacuous
    assert kl_inv(np.float64(0.1), np.float64(0.05)) == kl_inv(0.1, 0.05)


@settings(max_examples=200, deadline=None)
@given(q=st.floats(0.0, 0.999), c=st.floats(1e-8, 5.0))
def test_kl_round_trip(q, c):
    p = kl_inv(q, c)
    if p < 1.0:
        # kl(q, p) = c up to the float resolution of p: p is at most 256 ulps right of the root
        assert kl(q, p) >= c
        assert kl(q, max(q, p - 256 * math.ulp(p))) <= c
        if p < 0.999:
            assert kl(q, p) == pytest.approx(c, rel=1e-10)


@settings(max_examples=150, deadline=None)
@given(q1=st.floats(0.0, 1.0), q2=st.floats(0.0, 1.0), c=st.floats(0.0, 10.0))
def test_kl_inv_monotone_in_q(q1, q2, c):
    lo, hi = sorted((q1, q2))
    assert kl_inv(lo, c) <= kl_inv(hi, c)


@settings(max_examples=150, deadline=None)
@given(q=st.floats(0.0, 1.0), c1=st.floats(0.0, 10.0), c2=st.floats(0.0, 10.0))
def test_kl_inv_monotone_in_c(q, c1, c2):
    lo, hi = sorted((c1, c2))
    assert kl_inv(q, lo) <= kl_inv(q, hi)


# -- the bounds -----------------------------------------------------------------------------------
R_GRID = [0.0, 0.001, 0.02, 0.1, 0.3, 0.6]
KL_GRID = [0.0, 1.0, 30.0, 500.0, 5e4]
N_GRID = [8, 100, 1000, 60_000]
DELTA = 0.025


def test_bound_values_match_formulas():
    r, k, n, d, C = 0.07, 123.4, 5000, 0.05, 2.5
    with mp.workdps(50):
        eps = mp.mpf(k) + mp.log(2 * mp.sqrt(n) / mp.mpf(d))
        exp_mca = float(mp.mpf(r) + mp.sqrt(eps / (2 * n)))
        exp_kl = float(kl_inv_mp(r, eps / n))
        exp_cat = float((1 - mp.exp(-C * mp.mpf(r) - (k + mp.log(1 / mp.mpf(d))) / n))
                        / (1 - mp.exp(-mp.mpf(C))))
    assert mcallester(r, k, n, d) == pytest.approx(exp_mca, abs=1e-14)
    assert kl_bound(r, k, n, d) == pytest.approx(exp_kl, abs=1e-12)
    assert catoni(r, k, n, d, C) == pytest.approx(exp_cat, abs=1e-14)


@pytest.mark.parametrize("r,k,n", list(itertools.product(R_GRID, KL_GRID, N_GRID)))
def test_bound_ordering(r, k, n):
    kb = kl_bound(r, k, n, DELTA)
    mca = mcallester(r, k, n, DELTA)
    # Pinsker: the kl bound is never looser than McAllester
    assert r <= kb <= mca <= 1.0
    for C in (0.1, 1.0, 3.0, 10.0):
        cat = catoni(r, k, n, DELTA, C)
        assert r <= cat <= 1.0
        # Catoni is a linear relaxation of kl: never tighter at the same complexity term
        assert cat >= kl_inv(r, (k + math.log(1 / DELTA)) / n) - 1e-12
        # ... and with Maurer's extra ln(2 sqrt(n)) it is never tighter than the kl bound
        assert catoni(r, k + math.log(2 * math.sqrt(n)), n, DELTA, C) >= kb - 1e-12


def test_bounds_monotone():
    r_values = np.linspace(0.0, 0.5, 11)
    for f in (kl_bound, mcallester, lambda r, k, n, d: catoni(r, k, n, d, 2.0)):
        in_r = [f(float(r), 20.0, 1000, DELTA) for r in r_values]
        in_kl = [f(0.1, float(k), 1000, DELTA) for k in (0.0, 1.0, 10.0, 100.0)]
        in_n = [f(0.1, 20.0, n, DELTA) for n in (100, 1000, 10_000)]
        in_delta = [f(0.1, 20.0, 1000, d) for d in (0.2, 0.05, 0.01)]
        for seq in (in_r, in_kl, in_delta):
            assert all(a <= b for a, b in zip(seq, seq[1:]))
        assert all(a >= b for a, b in zip(in_n, in_n[1:]))


def test_bounds_clipped_to_one():
    assert mcallester(0.4, 1e5, 100, DELTA) == 1.0
    assert kl_bound(0.4, 1e5, 100, DELTA) == 1.0
    assert catoni(0.9, 1e5, 100, DELTA, 1.0) == 1.0


def test_union_cost_equals_smaller_delta():
    assert union_cost(1) == 0.0
    assert union_cost(7) == math.log(7)
    a = kl_bound(0.05, 30.0 + union_cost(10), 2000, DELTA)
    b = kl_bound(0.05, 30.0, 2000, DELTA / 10)
    assert a == pytest.approx(b, abs=1e-14)


def test_catoni_grid_pays_for_its_union():
    r, k, n, grid = 0.08, 40.0, 3000, [0.25, 0.5, 1.0, 2.0, 4.0]
    res = catoni_grid(r, k, n, DELTA, grid)
    paid = [catoni(r, k + math.log(len(grid)), n, DELTA, C) for C in grid]
    free = [catoni(r, k, n, DELTA, C) for C in grid]
    assert res.C in grid
    assert res.bound == min(paid) == catoni(r, k + math.log(5), n, DELTA, res.C)
    assert res.bound > min(free)  # the union is not free
    bound, C = res  # unpacks as a tuple
    assert (bound, C) == (res.bound, res.C)
    single = catoni_grid(r, k, n, DELTA, [2.0])
    assert single.bound == catoni(r, k, n, DELTA, 2.0) and single.C == 2.0


@settings(max_examples=100, deadline=None)
@given(r=st.floats(0.0, 1.0), m=st.integers(1, 10**6), delta_mc=st.floats(1e-6, 0.5))
def test_sample_convergence_upper_confidence(r, m, delta_mc):
    r_plus = sample_convergence(r, m, delta_mc)
    assert r <= r_plus <= 1.0
    assert r_plus == kl_inv(r, math.log(2 / delta_mc) / m)


def test_sample_convergence_shrinks_with_m():
    values = [sample_convergence(0.1, m, 0.01) for m in (100, 1000, 10_000, 100_000)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] - 0.1 < 0.005


# -- certificates ---------------------------------------------------------------------------------
CERT_CASES = [
    dict(bound="kl"),
    dict(bound="mcallester"),
    dict(bound="catoni", C=2.0),
    dict(bound="catoni", catoni_grid=[0.5, 1.0, 2.0, 4.0]),
    dict(bound="kl", union_size=12, kl_per_group={"conv1": 10.25, "fc1": 20.5, "fc2": 3.0}),
]


@pytest.mark.parametrize("kwargs", CERT_CASES)
def test_certificate_recompute_and_json_round_trip(kwargs):
    cert = certificate_from_errors(321, 6000, 2000, 33.75, **kwargs)
    assert cert.recompute() == cert.risk_bound
    cert.verify()
    assert cert.protocol == "certificate" and cert.risk_estimate == "gibbs"
    assert cert.confidence == pytest.approx(1 - 0.025 - 0.01, abs=1e-15)
    assert cert.empirical_gibbs_risk == 321 / 6000
    assert cert.corrected_risk == sample_convergence(321 / 6000, 6000, 0.01)
    text = cert.to_json()
    data = json.loads(text)
    assert data["confidence"] == cert.confidence
    back = Certificate.from_json(text)
    assert back == cert
    assert back.recompute() == cert.risk_bound
    assert Certificate.from_dict(cert.to_dict()) == cert
    assert hash(back) == hash(cert)


def test_kl_given_as_zero_dim_array_or_tensor():
    torch = pytest.importorskip("torch")
    groups = {"a": torch.tensor(1.5, dtype=torch.float64), "b": np.float64(2.0)}
    cert = certificate_from_errors(3, 100, 100, torch.tensor(3.5, dtype=torch.float64),
                                   kl_per_group=groups)
    assert cert.kl == 3.5 and cert.kl_per_group == {"a": 1.5, "b": 2.0}
    assert json.loads(cert.to_json())["kl_per_group"] == {"a": 1.5, "b": 2.0}
    assert kl_bound(0.1, np.float64(2.0), 100, DELTA) == kl_bound(0.1, 2.0, 100, DELTA)


def test_certificate_values_use_corrected_risk_and_union():
    cert = certificate_from_errors(100, 4000, 2000, 25.0, union_size=6, delta=0.02,
                                   delta_mc=0.005)
    r_plus = sample_convergence(100 / 4000, 4000, 0.005)
    assert cert.risk_bound == kl_bound(r_plus, 25.0 + math.log(6), 2000, 0.02)
    assert cert.corrected_risk > cert.empirical_gibbs_risk
    assert cert.confidence == pytest.approx(0.975, abs=1e-15)
    assert cert.epsilon == pytest.approx(25.0 + math.log(6) + math.log(2 * math.sqrt(2000) / 0.02))
    grid = certificate_from_errors(100, 4000, 2000, 25.0, bound="catoni",
                                   catoni_grid=[1.0, 2.0])
    assert grid.catoni_C in (1.0, 2.0) and grid.catoni_grid == (1.0, 2.0)
    assert grid.risk_bound == catoni_grid(grid.corrected_risk, 25.0, 2000, 0.025,
                                          [1.0, 2.0]).bound


# A certificate as it would be published: the logged inputs and the reported bound. The
# expected numbers below are recomputed independently in 50-digit arithmetic.
PUBLISHED = """{
  "bound": "kl", "protocol": "certificate", "risk_estimate": "gibbs", "format_version": 1,
  "n": 10000, "m": 50000, "n_errors": 4123, "kl": 812.5,
  "kl_per_group": {"conv1": 12.5, "conv2": 300.0, "fc1": 450.0, "fc2": 50.0},
  "delta": 0.025, "delta_mc": 0.01, "confidence": 0.965, "union_size": 3,
  "catoni_C": null, "catoni_grid": null,
  "empirical_gibbs_risk": 0.08246,
  "corrected_risk": 0.0856290000000000,
  "risk_bound": 0.2
}"""


def test_published_certificate_recomputed_from_logged_inputs():
    data = json.loads(PUBLISHED)
    with mp.workdps(50):
        r_plus = kl_inv_mp(mp.mpf(4123) / 50000, mp.log(2 / mp.mpf("0.01")) / 50000)
        eps = mp.mpf("812.5") + mp.log(3) + mp.log(2 * mp.sqrt(10000) / mp.mpf("0.025"))
        expected = float(kl_inv_mp(float(r_plus), eps / 10000))
    data["corrected_risk"] = float(r_plus)
    data["risk_bound"] = expected
    cert = Certificate.from_dict(data)
    assert cert.recompute() == pytest.approx(expected, abs=1e-12)
    cert.verify()
    # a tampered bound is caught
    with pytest.raises(ValueError, match="reproducible from its logged inputs"):
        dataclasses.replace(cert, risk_bound=cert.risk_bound - 0.01).verify()
    with pytest.raises(ValueError, match="reproducible from its logged inputs"):
        Certificate.from_json(PUBLISHED).verify()  # the placeholder numbers above are wrong


def test_paper_protocol():
    diag = paper_protocol_bound(0.03, 150.0, 50_000)
    assert diag.protocol == "paper" and diag.risk_estimate == "model_average"
    assert diag.m is None and diag.n_errors is None and diag.delta_mc == 0.0
    assert diag.confidence == pytest.approx(0.9)
    assert diag.risk_bound == mcallester(0.03, 150.0, 50_000, 0.1)
    assert diag.recompute() == diag.risk_bound
    assert Certificate.from_json(diag.to_json()) == diag
    cat = paper_protocol_bound(0.03, 150.0, 50_000, bound="catoni", C=1.5)
    assert cat.risk_bound == catoni(0.03, 150.0, 50_000, 0.1, 1.5) and cat.catoni_C == 1.5
    assert cat.recompute() == cat.risk_bound
    # the honest certificate at the same error rate is looser
    honest = certificate_from_errors(1500, 50_000, 50_000, 150.0, bound="mcallester")
    assert honest.risk_bound > diag.risk_bound


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_delta(delta):
    for f in (mcallester, kl_bound):
        with pytest.raises(ValueError,
                           match=r"delta must be a number in the open interval \(0, 1\)"):
            f(0.1, 10.0, 100, delta)
    with pytest.raises(ValueError, match="delta must be"):
        catoni(0.1, 10.0, 100, delta, 1.0)


@pytest.mark.parametrize("n", [1, 7, 0, -5])
def test_kl_bound_needs_eight_points(n):
    with pytest.raises(ValueError, match=r"n \(number of bound points\) must be an integer of "
                                         r"at least 8\. Got .* instead\. .*Maurer"):
        kl_bound(0.1, 1.0, n, DELTA)
    with pytest.raises(ValueError, match="at least 8"):
        mcallester(0.1, 1.0, n, DELTA)


def test_catoni_allows_few_points_but_not_zero():
    assert 0.0 < catoni(0.0, 1.0, 1, DELTA, 1.0) <= 1.0
    with pytest.raises(ValueError, match="must be a positive integer"):
        catoni(0.1, 1.0, 0, DELTA, 1.0)


@pytest.mark.parametrize("k", [-1e-3, float("nan"), float("inf"), -math.inf])
def test_bad_kl(k):
    for f in (mcallester, kl_bound):
        with pytest.raises(ValueError, match=r"kl must be a finite non-negative number\. Got"):
            f(0.1, k, 100, DELTA)
    with pytest.raises(ValueError, match="kl must be a finite non-negative number"):
        certificate_from_errors(1, 100, 100, k)


@pytest.mark.parametrize("r", [-0.01, 1.01, float("nan"), None])
def test_bad_risk(r):
    with pytest.raises(ValueError, match=r"empirical_risk must be a number in the closed "
                                         r"interval \[0, 1\]"):
        kl_bound(r, 1.0, 100, DELTA)
    with pytest.raises(ValueError, match="must be a number in the closed interval"):
        sample_convergence(r, 100, 0.01)


@pytest.mark.parametrize("n", [100.0, "100", None, True])
def test_n_must_be_an_integer(n):
    with pytest.raises(TypeError, match=r"n \(number of bound points\) must be an integer"):
        kl_bound(0.1, 1.0, n, DELTA)


def test_bad_m_and_counts():
    with pytest.raises(ValueError, match=r"m \(number of Monte-Carlo predictions\) must be a "
                                         "positive integer"):
        sample_convergence(0.1, 0, 0.01)
    with pytest.raises(TypeError, match="must be an integer"):
        sample_convergence(0.1, 10.5, 0.01)
    with pytest.raises(ValueError, match="delta_mc must be"):
        sample_convergence(0.1, 10, 0.0)
    with pytest.raises(ValueError, match="n_errors must be at most m = 10"):
        certificate_from_errors(11, 10, 100, 1.0)
    with pytest.raises(ValueError, match="n_errors must be an integer of at least 0"):
        certificate_from_errors(-1, 10, 100, 1.0)
    with pytest.raises(ValueError, match=r"K \(size of the union\) must be a positive integer"):
        union_cost(0)


def test_bad_catoni_arguments():
    with pytest.raises(ValueError, match=r"C \(Catoni constant\) must be a finite positive"):
        catoni(0.1, 1.0, 100, DELTA, 0.0)
    with pytest.raises(ValueError, match="catoni_grid must be a non-empty sequence"):
        catoni_grid(0.1, 1.0, 100, DELTA, [])
    with pytest.raises(ValueError, match="every C in catoni_grid must be"):
        catoni_grid(0.1, 1.0, 100, DELTA, [1.0, -2.0])
    with pytest.raises(ValueError, match="either as C .* or as catoni_grid"):
        certificate_from_errors(1, 100, 100, 1.0, bound="catoni")
    with pytest.raises(ValueError, match="either as C .* or as catoni_grid"):
        certificate_from_errors(1, 100, 100, 1.0, bound="catoni", C=1.0, catoni_grid=[1.0])
    with pytest.raises(ValueError, match="None unless bound='catoni'"):
        certificate_from_errors(1, 100, 100, 1.0, C=1.0)
    with pytest.raises(ValueError, match="C must be a positive number when bound='catoni'"):
        paper_protocol_bound(0.1, 1.0, 100, bound="catoni")


def test_bad_certificate_inputs():
    with pytest.raises(ValueError, match="bound must be one of 'kl', 'mcallester', 'catoni'"):
        certificate_from_errors(1, 100, 100, 1.0, bound="seeger")
    with pytest.raises(ValueError, match="delta \\+ delta_mc must be less than 1"):
        certificate_from_errors(1, 100, 100, 1.0, delta=0.5, delta_mc=0.6)
    with pytest.raises(ValueError, match="the sum of kl_per_group must be equal to kl"):
        certificate_from_errors(1, 100, 100, 3.0, kl_per_group={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"kl_per_group\['a'\] must be a finite non-negative"):
        certificate_from_errors(1, 100, 100, 0.0, kl_per_group={"a": -1.0, "b": 1.0})
    with pytest.raises(ValueError, match="n_errors and delta_mc of a paper-protocol"):
        dataclasses.replace(paper_protocol_bound(0.1, 1.0, 100), m=100)


def test_bad_certificate_records():
    data = certificate_from_errors(5, 100, 100, 2.0).to_dict()
    with pytest.raises(ValueError, match=r"the keys of a Certificate must be among .* "
                                         r"Got \['extra'\] instead"):
        Certificate.from_dict({**data, "extra": 1})
    partial = {k: v for k, v in data.items() if k != "kl"}
    with pytest.raises(ValueError, match=r"missing keys \['kl'\]"):
        Certificate.from_dict(partial)
    with pytest.raises(ValueError, match="confidence of Certificate must be"):
        Certificate.from_dict({**data, "confidence": 0.99})
    with pytest.raises(ValueError, match="format_version of Certificate must be 1"):
        Certificate.from_dict({**data, "format_version": 2})
    with pytest.raises(ValueError, match="protocol of Certificate must be"):
        Certificate.from_dict({**data, "protocol": "optimistic"})
    with pytest.raises(TypeError, match="must be a mapping"):
        Certificate.from_dict([("kl", 1.0)])


def test_bad_kl_inputs():
    with pytest.raises(ValueError, match=r"q must be a number in the closed interval \[0, 1\]"):
        kl(1.5, 0.5)
    with pytest.raises(ValueError, match=r"p must be a number in the closed interval"):
        kl(0.5, -0.1)
    with pytest.raises(ValueError, match=r"c \(budget of kl_inv\) must be a non-negative number"):
        kl_inv(0.1, -1e-3)
    with pytest.raises(ValueError, match=r"c \(budget of kl_inv\) must be"):
        kl_inv(0.1, float("nan"))


# Cases where the float64 kl erred by more than the old 32-eps round-up margin: kl_inv returned
# a value 1 ulp below the exact inverse (found by a search over 20,000 random (q, c) against a
# 60-digit mpmath kl). Each must now be an upper bound in exact arithmetic.
@pytest.mark.parametrize("q,c", [(1.873750245401362e-05, 1.3316135904338196e-09), (0.516, 5.45984456823834e-05),
                                 (0.092, 5.599573556422041e-06), (0.7510649144151589, 4.327870109947057e-05),
                                 (1.5498449098215876e-06, 9.405510765937522e-11)])
def test_kl_inv_never_below_the_exact_inverse_where_kl_rounds_down(q, c):
    p = kl_inv(q, c)
    with mp.workdps(60):
        assert kl_mp(q, p) >= mp.mpf(c)
        assert p - float(kl_inv_mp(q, c)) <= 64 * math.ulp(p)  # and still tight


@settings(max_examples=300, deadline=None)
@given(q=st.floats(0.0, 0.999), c=st.floats(1e-12, 20.0))
def test_kl_inv_is_an_exact_upper_bound_property(q, c):
    p = kl_inv(q, c)
    with mp.workdps(60):
        assert p == 1.0 or kl_mp(q, p) >= mp.mpf(c)
