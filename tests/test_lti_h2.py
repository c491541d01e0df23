"""H2-optimal reduction (IRKA): interpolation at the fixed point, H2 errors against balanced truncation
on held-out systems, exactness of the reported errors, stability, edge cases."""
import zlib

import numpy as np
import pytest

from lti_cases import FAMILIES, random_systems
from ssmcompress.lti import DiagonalSSM, balanced_truncation, h2_optimal

DOMAINS = ("continuous", "discrete")


def response(sys, x, derivative=False):
    """G(x) (with D) or G'(x) of every channel at its own points x (..., k), from the modes."""
    lam, rho, x = sys.modes[..., :, None], sys.residues[..., :, None], x[..., None, :]
    if derivative:
        return -(rho / (x - lam) ** 2 + rho.conj() / (x - lam.conj()) ** 2).sum(-2)
    return (rho / (x - lam) + rho.conj() / (x - lam.conj())).sum(-2) + sys.D[..., None]


def strictly_proper(sys):
    return DiagonalSSM(sys.modes, sys.B, sys.C, domain=sys.domain)


@pytest.mark.parametrize("domain", DOMAINS)
def test_fixed_point_interpolates_at_the_mirrored_poles(domain):
    """Where IRKA converged, G_r matches G and G' at -conj(lam_j) (continuous) or 1/conj(lam_j) (discrete)
    for every reduced pole lam_j: the first-order conditions of H2 optimality."""
    rng = np.random.default_rng(zlib.crc32(f"irka-interp-{domain}".encode()))
    checked = 0
    for family in FAMILIES:
        s = random_systems(family, 32, 12, rng, domain)
        res = h2_optimal(s, order=rng.choice([5, 8, 10]), tol=1e-10, maxiter=300)
        red = res.system
        fixed = res.converged & (res.best_iteration == res.iterations) & (res.iterations > 0)
        lam = red.modes
        with np.errstate(divide="ignore", invalid="ignore"):
            x = 1.0 / lam.conj() if domain == "discrete" else -lam.conj()
        x = np.where(red.B != 0, x, 2.0)                                    # padding: any harmless point
        for deriv, rtol in ((False, 1e-9), (True, 1e-6)):
            g, gr = response(s, x, deriv), response(red, x, deriv)
            rel = np.where(red.B != 0, np.abs(g - gr) / np.abs(g), 0.0).max(-1)
            assert np.all(rel[fixed] < rtol), (family, deriv, rel[fixed].max())
        checked += fixed.sum()
    assert checked >= 30                                                    # of 60 channels


@pytest.mark.parametrize("domain", DOMAINS)
def test_h2_error_no_worse_than_balanced_truncation_on_held_out_systems(domain):
    """Held-out seeds, every family, 200 channels per domain: the H2 errors, computed independently as
    ||G - G_r||_2 of the difference system, have a median no worse than balanced truncation's (and
    clearly better on the oscillatory families); every result is stable; the reported errors are the
    exact ones (to the sqrt(eps) floor of any H2 difference)."""
    rng = np.random.default_rng(zlib.crc32(f"irka-held-out-{domain}".encode()))
    ratios = {}
    for family in FAMILIES:
        s = random_systems(family, 32, 40, rng, domain)
        r = 8
        res = h2_optimal(s, order=r)
        bt = balanced_truncation(s, order=r)
        assert np.all(res.system.is_stable()), family
        scale = strictly_proper(s).h2_norm()
        e_irka = strictly_proper(s - res.system).h2_norm() / scale
        e_bt = strictly_proper(s - bt.system).h2_norm() / scale
        np.testing.assert_allclose(res.h2_error / scale, e_irka, rtol=0, atol=1e-6)
        np.testing.assert_allclose(res.h2_error_start / scale, e_bt, rtol=0, atol=1e-6)
        np.testing.assert_allclose(res.h2_norm, scale, rtol=1e-12)
        assert np.median(e_irka) <= np.median(e_bt) + 1e-7, family
        ratios[family] = np.median(e_irka) / np.median(e_bt)
    for family in ("lin", "inv", "legs"):
        assert ratios[family] < 0.95, ratios


def test_trained_like_layer_at_the_benchmark_sizes():
    """256 channels of a Skew-HiPPO-like layer with spread real parts, N = 64 -> r = 16 (the benchmark's
    setting, one layer): stable, median H2 error below balanced truncation's."""
    rng = np.random.default_rng(zlib.crc32(b"irka-trained-like"))
    s = random_systems("legs", 64, 256, rng)
    res = h2_optimal(s, order=16)
    assert np.all(res.system.is_stable()) and np.all(res.order == 16)
    assert np.median(res.h2_error / res.h2_norm) < 0.95 * np.median(res.h2_error_start / res.h2_norm)
    assert res.converged.mean() > 0.5


def test_unchanged_at_full_order_order_zero_and_per_channel_orders():
    rng = np.random.default_rng(8)
    for domain in DOMAINS:
        s = random_systems("inv", 16, 4, rng, domain)
        res = h2_optimal(s, order=np.array([16, 30, 0, 5]))
        for h in (0, 1):
            np.testing.assert_array_equal(res.system.modes[h, :8], s.modes[h])
            np.testing.assert_array_equal(res.system.C[h, :8], s.C[h])
        assert res.order.tolist() == [16, 16, 0, 5]
        assert np.all(res.system.B[2] == 0) and np.all(res.system.D == s.D)
        assert res.h2_error[0] == 0 and res.iterations[0] == 0
        np.testing.assert_allclose(res.h2_error[2], res.h2_norm[2])
        n_real = np.sum((res.system.modes[3].imag == 0) & (res.system.B[3] != 0))
        assert n_real % 2 == 1 and res.n_modes[3] == (5 - n_real) // 2 + n_real


def test_maxiter_zero_returns_balanced_truncation():
    s = random_systems("legs", 16, 3, np.random.default_rng(9))
    res, bt = h2_optimal(s, order=6, maxiter=0), balanced_truncation(s, order=6)
    om = np.linspace(0, 20, 50)
    np.testing.assert_allclose(res.system.freqresp(om), bt.system.freqresp(om), rtol=1e-13)
    assert np.all(res.best_iteration == 0) and np.all(res.h2_error == res.h2_error_start)


def test_shifts_of_unstable_poles_are_reflected():
    """A stable pole's shift is its mirror image; an unstable one is first reflected into the stable
    region, so every shift lies in the right half-plane (continuous) or outside the unit disk (discrete)."""
    from ssmcompress.lti.h2 import _mirror

    c = np.array([-2 + 3j, -0.5, 1.5 - 2j, 0.7])
    np.testing.assert_allclose(_mirror(c, False), [2 + 3j, 0.5, 1.5 - 2j, 0.7])
    d = np.array([0.5 * np.exp(1j), -0.25, 2.0 * np.exp(-0.3j), 1.25])
    np.testing.assert_allclose(_mirror(d, True), [2 * np.exp(1j), -4.0, 2.0 * np.exp(-0.3j), 1.25])
    assert np.all(_mirror(np.array([0.0, 1.0 + 0j]), True) != np.inf)


def test_argument_errors():
    s = DiagonalSSM(np.array([-1 + 1j, -2 + 3j]), 1, 1)
    with pytest.raises(ValueError, match="tol"):
        h2_optimal(s, 2, tol=0)
    with pytest.raises(ValueError, match="maxiter"):
        h2_optimal(s, 2, maxiter=-1)
    with pytest.raises(ValueError, match="start"):
        h2_optimal(s, 2, start="random")
    with pytest.raises(TypeError, match="integer"):
        h2_optimal(s, None)
    with pytest.raises(ValueError, match=r"channel\(s\) 1 have unstable"):
        h2_optimal(DiagonalSSM(np.array([[-1 + 1j], [0.5 + 1j]]), 1, 1), 1)
