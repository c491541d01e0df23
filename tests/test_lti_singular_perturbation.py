"""Balanced singular perturbation: references (python-control / slycot on the real block realization,
a dense Lyapunov-balanced residualisation), the error bound on dense grids, the DC gain, stability."""
import zlib

import numpy as np
import pytest
import scipy.linalg as sla

from lti_cases import FAMILIES, random_systems
from ssmcompress.lti import (DiagonalSSM, balanced_singular_perturbation, balanced_truncation,
                             hankel_singular_values)

DOMAINS = ("continuous", "discrete")


def dense_tf(A, B, C, D, pts):
    """C (zI - A)^-1 B + D of one dense real system at the points pts (F,)."""
    M = pts[:, None, None] * np.eye(A.shape[-1]) - A
    return (C @ np.linalg.solve(M, np.broadcast_to(B, (len(pts),) + B.shape)))[:, 0, 0] + D[0, 0]


def grid(domain, sys_h, points=4001):
    """Dense frequency grid for one channel: logarithmic plus every resonance and its neighbours."""
    if domain == "discrete":
        om = np.concatenate([np.linspace(0, np.pi, points), np.abs(np.angle(sys_h.modes))])
    else:
        res = np.abs(sys_h.modes.imag)
        om = np.concatenate([[0.0], np.logspace(-4, 4, points), res, res * 1.001, res * 0.999])
    return om


def gap_order(hsv_h, rng, below=20):
    """An order r at a clear gap of the Hankel singular values (r-th > 1.01 (r+1)-th, not in the noise)."""
    gaps = np.flatnonzero((hsv_h[:-1] > 1.01 * hsv_h[1:]) & (hsv_h[:-1] > 1e-8 * hsv_h[0]))
    return int(rng.choice(gaps[gaps < below])) + 1


def test_matches_python_control_matchdc():
    """Continuous: the re-diagonalised result has the transfer function of control.balred(method='matchdc')
    (slycot ab09nd, square-root SPA) on the real block realization, to 1e-8 of its peak."""
    control = pytest.importorskip("control")
    rng = np.random.default_rng(zlib.crc32(b"bsp-control"))
    count = 0
    for family in FAMILIES:
        s = random_systems(family, 24, 3, rng)
        hsv = hankel_singular_values(s)
        A, B, C, D = s.to_real()
        for h in range(3):
            r = gap_order(hsv[h], rng)
            res = balanced_singular_perturbation(s[h], order=r)
            assert res.order == r and res.method == "singular_perturbation"
            ref = control.balred(control.ss(A[h], B[h], C[h], D[h]), r, method="matchdc")
            om = grid("continuous", s[h], 301)
            want = dense_tf(ref.A, ref.B, ref.C, ref.D, 1j * om)
            got = res.system.freqresp(om)
            assert np.abs(got - want).max() <= 1e-8 * np.abs(want).max(), (family, h, r)
            count += 1
    assert count == 15


def test_matches_slycot_balancing_free_spa_discrete():
    """Discrete: against slycot ab09nd with DICO='D', JOB='N' (balancing-free square-root SPA).

    (ab09nd's square-root variant JOB='B' is off for discrete systems: it does not even match G(1);
    python-control's balred always passes DICO='C'.)"""
    slycot = pytest.importorskip("slycot")
    rng = np.random.default_rng(zlib.crc32(b"bsp-slycot"))
    for family in FAMILIES:
        s = random_systems(family, 24, 5, rng, "discrete")
        hsv = hankel_singular_values(s)
        A, B, C, D = s.to_real()
        for h in range(5):
            r = gap_order(hsv[h], rng)
            res = balanced_singular_perturbation(s[h], order=r)
            nr, Ar, Br, Cr, Dr = slycot.ab09nd("D", "N", "N", 24, 1, 1, A[h].copy(), B[h].copy(), C[h].copy(),
                                               D[h].copy(), alpha=1.0, nr=r, tol1=0.0, tol2=0.0)[:5]
            assert nr == r
            om = grid("discrete", s[h], 301)
            want = dense_tf(Ar[:r, :r], Br[:r], Cr[:, :r], Dr, np.exp(1j * om))
            got = res.system.freqresp(om)
            assert np.abs(got - want).max() <= 1e-8 * np.abs(want).max(), (family, h, r)


@pytest.mark.parametrize("domain", DOMAINS)
def test_matches_dense_lyapunov_balanced_residualisation(domain):
    """Against the textbook construction: Lyapunov Gramians (scipy), Cholesky balancing, then
    A11 + A12 (g I - A22)^-1 A21 etc. with g = 0 (continuous) or 1 (discrete).  Small, well-conditioned
    systems without real modes (the dense route needs definite Gramians)."""
    rng = np.random.default_rng(zlib.crc32(f"bsp-dense-{domain}".encode()))
    g = 1.0 if domain == "discrete" else 0.0
    for family in ("legs", "inv"):                 # no real modes: the real Gramians are definite
        s = random_systems(family, 8, 4, rng, domain)
        A, B, C, D = s.to_real()
        for h in range(4):
            if domain == "discrete":
                P = sla.solve_discrete_lyapunov(A[h], B[h] @ B[h].T)
                Q = sla.solve_discrete_lyapunov(A[h].T, C[h].T @ C[h])
            else:
                P = sla.solve_continuous_lyapunov(A[h], -B[h] @ B[h].T)
                Q = sla.solve_continuous_lyapunov(A[h].T, -C[h].T @ C[h])
            Lp, Lq = np.linalg.cholesky(P), np.linalg.cholesky(Q)
            U, sg, Vt = np.linalg.svd(Lq.T @ Lp)
            T, Ti = Lp @ Vt.T / np.sqrt(sg), (U / np.sqrt(sg)).T @ Lq.T
            Ab, Bb, Cb = Ti @ A[h] @ T, Ti @ B[h], C[h] @ T
            r = 3
            X = np.linalg.inv(g * np.eye(8 - r) - Ab[r:, r:])
            Ar = Ab[:r, :r] + Ab[:r, r:] @ X @ Ab[r:, :r]
            Br = Bb[:r] + Ab[:r, r:] @ X @ Bb[r:]
            Cr = Cb[:, :r] + Cb[:, r:] @ X @ Ab[r:, :r]
            Dr = D[h] + Cb[:, r:] @ X @ Bb[r:]
            res = balanced_singular_perturbation(s[h], order=r)
            np.testing.assert_allclose(res.system.D, Dr[0, 0], rtol=1e-9)
            om = grid(domain, s[h])
            pts = np.exp(1j * om) if domain == "discrete" else 1j * om
            want = dense_tf(Ar, Br, Cr, Dr, pts)
            assert np.abs(res.system.freqresp(om) - want).max() <= 1e-9 * np.abs(want).max()


@pytest.mark.parametrize("domain", DOMAINS)
def test_error_bound_dc_gain_and_stability_on_many_systems(domain):
    """The bound 2 * sum of the discarded HSVs holds (H-infinity norm of the difference, and the plain
    maximum over a dense grid), G_r(s0) = G(s0) at s0 = 0 (continuous) or z = 1 (discrete), the result
    is stable, D changes; about 200 systems with per-channel (odd and even) orders."""
    rng = np.random.default_rng(zlib.crc32(f"bsp-bound-{domain}".encode()))
    s0 = 0.0
    count = 0
    for family in FAMILIES:
        for N, H in ((8, 10), (16, 10), (32, 10), (64, 10)):
            s = random_systems(family, N, H, rng, domain)
            r = rng.integers(0, N, H)
            res = balanced_singular_perturbation(s, order=r)
            bt = balanced_truncation(s, order=r)
            np.testing.assert_array_equal(res.order, bt.order)
            np.testing.assert_array_equal(res.hsv, bt.hsv)
            np.testing.assert_array_equal(res.error_bound, bt.error_bound)
            ref = s.hinf_norm()
            slack = res.error_bound * (1 + 1e-8) + 1e-11 * ref
            assert np.all((s - res.system).hinf_norm() <= slack), family
            for h in range(H):
                om = grid(domain, s[h])
                assert np.abs(s[h].freqresp(om) - res.system[h].freqresp(om)).max() <= slack[h]
            dc, dc_r = s.freqresp([s0])[:, 0], res.system.freqresp([s0])[:, 0]
            # exact up to the states below the numerical rank (truncated) and rounding
            assert np.all(np.abs(dc - dc_r) <= 1e-9 * ref), family
            assert np.all(res.system.is_stable())
            count += H
    assert count == 200


def test_dc_gain_exact_where_truncation_misses_it():
    """Truncation misses the DC gain by about the discarded HSVs; singular perturbation hits it."""
    rng = np.random.default_rng(3)
    for domain in DOMAINS:
        s = random_systems("legs", 32, 8, rng, domain)
        sp, bt = balanced_singular_perturbation(s, order=6), balanced_truncation(s, order=6)
        dc = s.freqresp([0.0])[:, 0]
        err_sp = np.abs(sp.system.freqresp([0.0])[:, 0] - dc) / np.abs(dc)
        err_bt = np.abs(bt.system.freqresp([0.0])[:, 0] - dc) / np.abs(dc)
        assert np.all(err_sp < 1e-10) and np.median(err_bt) > 1e-4
        assert np.all(sp.system.D != s.D)


def test_order_zero_is_the_dc_gain_and_full_order_is_unchanged():
    rng = np.random.default_rng(4)
    for domain in DOMAINS:
        s = random_systems("inv", 16, 4, rng, domain)
        res = balanced_singular_perturbation(s, order=0)
        assert res.system.n_modes == 0 and np.all(res.order == 0)
        np.testing.assert_allclose(res.system.D, s.freqresp([0.0])[:, 0].real, rtol=1e-10)
        res = balanced_singular_perturbation(s, order=np.array([16, 40, 5, 16]))
        for h in (0, 1, 3):
            np.testing.assert_array_equal(res.system.modes[h, :8], s.modes[h])
            np.testing.assert_array_equal(res.system.C[h, :8], s.C[h])
            assert res.system.D[h] == s.D[h]
        assert res.order.tolist() == [16, 16, 5, 16] and np.all(res.error_bound[[0, 1, 3]] == 0)


def test_energy_rank_deficient_channels_and_scalar_batch():
    rng = np.random.default_rng(5)
    s = random_systems("lin", 16, 3, rng)
    B = s.B.copy()
    B[1] = 0                                                                  # a zero channel
    s = DiagonalSSM(s.modes, B, s.C, s.D, s.dt)
    res = balanced_singular_perturbation(s, energy=0.95)
    assert res.order[1] == 0 and res.system.D[1] == s.D[1]
    np.testing.assert_array_equal(res.order, balanced_truncation(s, energy=0.95).order)
    one = balanced_singular_perturbation(s[0], order=4)
    assert isinstance(one.order, int) and one.system.batch_shape == () and one.error_bound.shape == ()
    om = np.linspace(0, 3, 5)
    np.testing.assert_allclose(one.system.freqresp(om), balanced_singular_perturbation(s, order=4).system[0].freqresp(om),
                               rtol=1e-10)


def test_argument_errors():
    s = DiagonalSSM(np.array([-1 + 1j]), 1, 1)
    with pytest.raises(ValueError, match="exactly one"):
        balanced_singular_perturbation(s)
    with pytest.raises(TypeError, match="integer"):
        balanced_singular_perturbation(s, order=1.5)
    with pytest.raises(ValueError, match="check_rtol"):
        balanced_singular_perturbation(s, order=1, check_rtol=0)
    with pytest.raises(ValueError, match=r"channel\(s\) 1 have unstable"):
        balanced_singular_perturbation(DiagonalSSM(np.array([[-1 + 1j], [0.5 + 1j]]), 1, 1), order=1)
