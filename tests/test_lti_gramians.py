"""Closed-form Gramians and their factors."""
import numpy as np
import pytest
import scipy.linalg as sla
from hypothesis import given, settings, strategies as st

from lti_cases import random_systems
from ssmcompress.lti import (DiagonalSSM, controllability_gramian, gramian_factors,
                             observability_gramian)
from ssmcompress.lti.gramians import cauchy_real_factor, geometric_sum, real_factor, real_gramian_factors


def test_continuous_gramians_solve_lyapunov():
    rng = np.random.default_rng(0)
    s = random_systems("legs", 8, 3, rng)
    P, Q = controllability_gramian(s), observability_gramian(s)
    A, B, C, _ = s.to_real()
    for h in range(3):
        np.testing.assert_allclose(A[h] @ P[h] + P[h] @ A[h].T, -B[h] @ B[h].T, atol=1e-10 * np.abs(P[h]).max())
        np.testing.assert_allclose(A[h].T @ Q[h] + Q[h] @ A[h], -C[h].T @ C[h], atol=1e-10 * np.abs(Q[h]).max())


def test_discrete_gramians_solve_stein():
    rng = np.random.default_rng(1)
    s = random_systems("lin", 8, 3, rng, "discrete")
    P, Q = controllability_gramian(s), observability_gramian(s)
    A, B, C, _ = s.to_real()
    for h in range(3):
        np.testing.assert_allclose(P[h], sla.solve_discrete_lyapunov(A[h], B[h] @ B[h].T), rtol=1e-7,
                                   atol=1e-9 * np.abs(P[h]).max())
        np.testing.assert_allclose(Q[h], sla.solve_discrete_lyapunov(A[h].T, C[h].T @ C[h]), rtol=1e-7,
                                   atol=1e-9 * np.abs(Q[h]).max())


@pytest.mark.parametrize("L", [1, 7, 64])
def test_finite_horizon_equals_its_sum_also_unstable(L):
    rng = np.random.default_rng(2)
    lam = np.array([[0.9 * np.exp(0.3j), 1.02 * np.exp(1.1j), 1.0 + 0j, 0.0 + 0j]])
    s = DiagonalSSM(lam, rng.normal(size=(1, 4)) + 1j * rng.normal(size=(1, 4)),
                    rng.normal(size=(1, 4)) + 1j * rng.normal(size=(1, 4)), domain="discrete")
    P, Q = controllability_gramian(s, horizon=L), observability_gramian(s, horizon=L)
    A, B, C, _ = s.to_real()
    Pr = sum(np.linalg.matrix_power(A[0], k) @ B[0] @ B[0].T @ np.linalg.matrix_power(A[0], k).T for k in range(L))
    Qr = sum(np.linalg.matrix_power(A[0], k).T @ C[0].T @ C[0] @ np.linalg.matrix_power(A[0], k) for k in range(L))
    np.testing.assert_allclose(P[0], Pr, rtol=1e-10, atol=1e-12 * np.abs(Pr).max())
    np.testing.assert_allclose(Q[0], Qr, rtol=1e-10, atol=1e-12 * np.abs(Qr).max())


def test_geometric_sum_near_one():
    x = np.array([1.0, 1 - 1e-12, np.exp(1e-9j), 0.5, 0.0, 2.0])
    L = 1000
    ref = [L, L - L * (L - 1) / 2 * 1e-12, None, (1 - 0.5 ** L) / 0.5, 1.0, 2.0 ** L - 1]
    got = geometric_sum(x, L)
    for g, r in zip(got, ref):
        if r is not None:
            assert abs(g - r) <= 1e-12 * abs(r)
    assert abs(got[2] - sum(np.exp(1e-9j * k) for k in range(L))) < 1e-10


@pytest.mark.parametrize("domain", ["continuous", "discrete"])
@pytest.mark.parametrize("family", ["real", "lin"])
def test_factors_reproduce_gramians(domain, family):
    rng = np.random.default_rng(3)
    s = random_systems(family, 16, 4, rng, domain)
    Lp, Lq, pp, pq = gramian_factors(s, pairs=True, return_pivots=True)
    Pc, Qc = controllability_gramian(s, basis="complex"), observability_gramian(s, basis="complex")
    np.testing.assert_allclose(Lp @ Lp.conj().swapaxes(-1, -2), Pc, atol=1e-13 * np.abs(Pc).max())
    np.testing.assert_allclose(Lq @ Lq.conj().swapaxes(-1, -2), Qc, atol=1e-13 * np.abs(Qc).max())
    P, Q = controllability_gramian(s), observability_gramian(s)
    Fp, Fq = real_factor(Lp, "P", pp), real_factor(Lq, "Q", pq)
    # the one-pass factor from the generators is the same factor (same pivots, same mixing)
    Gp, Gq = real_gramian_factors(s)
    np.testing.assert_allclose(Gp, Fp, rtol=1e-12, atol=1e-14 * np.abs(Fp).max())
    np.testing.assert_allclose(Gq, Fq, rtol=1e-12, atol=1e-14 * np.abs(Fq).max())
    for F, X in ((Fp, P), (Fq, Q), (Gp, P), (Gq, Q)):
        np.testing.assert_allclose(F @ F.swapaxes(-1, -2), X, atol=1e-13 * np.abs(X).max())


@pytest.mark.parametrize("L", [3, 50])
def test_finite_horizon_real_factors(L):
    rng = np.random.default_rng(4)
    s = random_systems("lin", 12, 3, rng, "discrete")
    lam = s.modes.copy()
    lam[:, 0] = 1.01 * np.exp(0.2j)                                  # unstable modes are fine with a horizon
    lam[:, 1] = 0.7                                                  # and real ones
    s = DiagonalSSM(lam, s.B, s.C, domain="discrete")
    Fp, Fq = real_gramian_factors(s, horizon=L)
    P, Q = controllability_gramian(s, horizon=L), observability_gramian(s, horizon=L)
    np.testing.assert_allclose(Fp @ Fp.swapaxes(-1, -2), P, atol=1e-13 * np.abs(P).max())
    np.testing.assert_allclose(Fq @ Fq.swapaxes(-1, -2), Q, atol=1e-13 * np.abs(Q).max())


def test_real_factor_degenerate_modes():
    """Real modes, a repeated mode, a nearly real mode and a zero channel keep F F^T = P."""
    lam = np.array([[-1 + 0j, -2 + 1j, -2 + 1j, -0.5 + 1e-9j], [-1, -2, -3, -4], [-1 + 1j, -1 + 2j, -1 + 3j, -1 + 4j]])
    B = np.array([[1, 1j, 2, 1 + 1j], [1, 2, 3, 4], [0, 0, 0, 0]], complex)
    for domain, modes in (("continuous", lam), ("discrete", np.exp(0.3 * lam))):
        s = DiagonalSSM(modes, B, 1.5 * B.conj(), domain=domain)
        Fp, Fq = real_gramian_factors(s)
        P, Q = controllability_gramian(s), observability_gramian(s)
        np.testing.assert_allclose(Fp @ Fp.swapaxes(-1, -2), P, atol=1e-14 * np.abs(P).max())
        np.testing.assert_allclose(Fq @ Fq.swapaxes(-1, -2), Q, atol=1e-14 * np.abs(Q).max())
        assert not np.any(Fp[2]) and not np.any(Fq[2])


def test_unstable_infinite_horizon_names_the_channel():
    lam = np.array([[-1 + 1j, -2], [-1, 0.5 + 1j], [-1, -1]])
    s = DiagonalSSM(lam, np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match=r"channel\(s\) 1 "):
        controllability_gramian(s)
    with pytest.raises(ValueError, match="discrete"):
        controllability_gramian(s, horizon=4)
    with pytest.raises(ValueError, match="positive integer"):
        controllability_gramian(DiagonalSSM(lam / 4, 1, 1, domain="discrete"), horizon=0)


_mode_kind = st.sampled_from(["complex", "real", "repeat", "near_real", "zero_b"])


@settings(max_examples=60, deadline=None)
@given(st.lists(_mode_kind, min_size=1, max_size=7), st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_real_factor_any_mode_mix(kinds, discrete, seed):
    """F F^T = P on the real realization for any mix of complex, real, repeated, nearly real and
    signal-free modes, in both domains; one-pass factor == closure factor + Takagi mixing."""
    rng = np.random.default_rng(seed)
    lam, B = [], []
    for kind in kinds:
        z = -np.exp(rng.normal(0, 1)) + 1j * rng.normal(0, 5)
        if kind == "real":
            z = z.real + 0j
        elif kind == "near_real":
            z = z.real + 1e-9j
        elif kind == "repeat" and lam:
            z = lam[int(rng.integers(len(lam)))]
        lam.append(z)
        B.append(0j if kind == "zero_b" else rng.normal() + 1j * rng.normal())
    lam, B = np.array([lam]), np.array([B])
    if discrete:
        lam = np.exp(0.2 * lam)
    s = DiagonalSSM(lam, B, rng.normal(size=B.shape) + 1j * rng.normal(size=B.shape),
                    domain="discrete" if discrete else "continuous")
    Fp, Fq = real_gramian_factors(s)
    P, Q = controllability_gramian(s), observability_gramian(s)
    for F, X in ((Fp, P), (Fq, Q)):
        np.testing.assert_allclose(F @ F.swapaxes(-1, -2), X, atol=1e-13 * max(np.abs(X).max(), 1e-300))
    Lp, Lq, pp, pq = gramian_factors(s, pairs=True, return_pivots=True)
    np.testing.assert_allclose(real_factor(Lp, "P", pp) @ real_factor(Lp, "P", pp).swapaxes(-1, -2), P,
                               atol=1e-13 * max(np.abs(P).max(), 1e-300))


def test_factor_argument_errors():
    with pytest.raises(ValueError, match=r"shape \(F, n\)"):
        cauchy_real_factor(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="m even"):
        real_factor(np.ones((2, 3, 3)), "P", np.zeros((2, 3), int))


def test_gramian_needs_only_the_modes_it_uses_to_be_stable():
    """P needs the modes with B != 0 stable, Q those with C != 0 (an unstable mode with C = 0 used
    to give an indefinite P)."""
    s = DiagonalSSM(np.array([[0.5 + 1j, -1.0]]), np.array([[1.0, 1.0]]), np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"controllability Gramian .* channel\(s\) 0 "):
        controllability_gramian(s)
    Q = observability_gramian(s)
    assert np.all(np.linalg.eigvalsh(Q) >= -1e-15)
    with pytest.raises(ValueError, match="stable modes"):
        cauchy_real_factor(np.array([[0.5 + 1j]]), np.array([[1.0 + 0j]]))
    with pytest.raises(ValueError, match="positive integer"):
        geometric_sum(0.5, -2)


def _geometric_60_digits(x, y, L):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    q = mpmath.mpc(complex(x)) * mpmath.conj(mpmath.mpc(complex(y)))
    return complex(L if q == 1 else (1 - q ** L) / (1 - q))


@pytest.mark.parametrize("x, y, L", [
    (-1.0000000000022504 + 7.306e-9j, -1.000000000083123 - 7.306e-9j, 100000),   # conjugate pair near -1
    ((1 - 1e-9) * np.exp(2j), (1 - 2e-9) * np.exp(2.00000001j), 100000),         # close modes away from the axis
    ((1 - 1e-7) * np.exp(0.3j), (1 - 1e-7) * np.exp(0.3j), 784),                  # a mode with itself: real sum
    (1.01 * np.exp(0.2j), 0.5 + 0.1j, 120),                                         # growing mode
    (1e-9 + 0j, 0.5 + 0j, 10),                                                      # tiny node: |x|^2 rounds dd to 1
    (0j, 0.9 + 0j, 10),                                                             # zero node: only k = 0
])
def test_node_geometric_sum_to_60_digits(x, y, L):
    from ssmcompress.lti.gramians import _node_geometric_sum, one_minus_abs2

    x, y = np.complex128(x), np.complex128(y)
    got = complex(_node_geometric_sum(x, y, one_minus_abs2(x), one_minus_abs2(y), L))
    ref = _geometric_60_digits(x, y, L)
    assert abs(got - ref) <= 1e-13 * abs(ref)


def test_node_geometric_sum_near_the_circle_random():
    """Nodes within 1e-4 of the unit circle with random angles and small angle gaps: relative accuracy ~eps."""
    from ssmcompress.lti.gramians import _node_geometric_sum, one_minus_abs2

    rng = np.random.default_rng(5)
    worst = 0.0
    for _ in range(200):
        r1, r2 = 1 - 10 ** rng.uniform(-12, -4, 2)
        a1 = rng.uniform(-np.pi, np.pi)
        a2 = a1 + rng.choice([-1, 1]) * 10 ** rng.uniform(-10, -1)
        x, y = r1 * np.exp(1j * a1), r2 * np.exp(1j * a2)
        L = int(rng.integers(2, 100000))
        got = complex(_node_geometric_sum(x, y, one_minus_abs2(x), one_minus_abs2(y), L))
        ref = _geometric_60_digits(x, y, L)
        worst = max(worst, abs(got - ref) / abs(ref))
    assert worst < 1e-12
