"""stabilize_modes and refit_output: closed forms and least-squares optimality."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ssmcompress.lti import DiagonalSSM
from ssmcompress.lti.refit import impulse_response, refit_output, stabilize_modes


def _random_discrete(rng, H, n, rmax=0.98):
    lam = rng.uniform(0.2, rmax, (H, n)) * np.exp(1j * rng.uniform(0.05, np.pi - 0.05, (H, n)))
    B = rng.standard_normal((H, n)) + 1j * rng.standard_normal((H, n))
    C = rng.standard_normal((H, n)) + 1j * rng.standard_normal((H, n))
    return DiagonalSSM(lam, B, C, rng.standard_normal(H), 0.01, "discrete")


def test_impulse_response_is_kernel_plus_feedthrough():
    sys = _random_discrete(np.random.default_rng(0), 3, 4)
    h = impulse_response(sys, 20)
    K = sys.kernel(20)
    np.testing.assert_allclose(h[:, 1:], K[:, 1:])
    np.testing.assert_allclose(h[:, 0], K[:, 0] + sys.D)
    # brute force: simulate the recurrence on a unit impulse
    x = np.zeros((3, 4), complex)
    for l in range(20):
        u = 1.0 if l == 0 else 0.0
        x = sys.modes * x + sys.B * u
        y = 2 * (sys.C * x).sum(-1).real + sys.D * u
        # the recurrence's state after the input already includes lam^0 B u
        np.testing.assert_allclose(y, h[:, l], atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), L=st.integers(8, 200), fit_D=st.booleans())
def test_refit_recovers_an_exactly_representable_response(seed, n, L, fit_D):
    """When the target is produced by the same modes, the refit finds its C (and D) exactly."""
    rng = np.random.default_rng(seed)
    true = _random_discrete(rng, 2, n)
    wrong = DiagonalSSM(true.modes, true.B, rng.standard_normal((2, n)) + 0j, true.D if not fit_D else 0.0,
                        0.01, "discrete")
    fitted = refit_output(wrong, impulse_response(true, L), fit_D=fit_D, ridge=0.0)
    if L >= 2 * n + 1:
        np.testing.assert_allclose(impulse_response(fitted, L), impulse_response(true, L), rtol=0,
                                   atol=1e-8 * np.abs(impulse_response(true, L)).max())


def test_refit_is_never_worse_and_matches_numpy_lstsq():
    rng = np.random.default_rng(1)
    big = _random_discrete(rng, 5, 12)
    small = _random_discrete(rng, 5, 3)
    target = impulse_response(big, 150)
    fitted = refit_output(small, target, ridge=0.0)
    err = lambda s: np.linalg.norm(impulse_response(s, 150) - target, axis=-1)
    assert np.all(err(fitted) <= err(small) + 1e-12)
    ridged = refit_output(small, target)                 # the default ridge: never worse, close to the optimum
    assert np.all(err(ridged) <= err(small) + 1e-12) and np.all(err(ridged) <= 1.05 * err(fitted) + 1e-12)
    for h in range(5):           # per channel: the same optimum as a dense least-squares solve
        w = small.B[h] * small.modes[h][None, :] ** np.arange(150)[:, None]
        Phi = np.concatenate([2 * w.real, -2 * w.imag, (np.arange(150) == 0)[:, None] * 1.0], 1)
        coef, *_ = np.linalg.lstsq(Phi, target[h], rcond=None)
        assert err(fitted)[h] == pytest.approx(np.linalg.norm(Phi @ coef - target[h]), rel=1e-8)


def test_refit_handles_real_modes_and_inactive_slots():
    rng = np.random.default_rng(2)
    lam = np.array([[-0.3 + 0j, 0.9 * np.exp(0.4j), 0.5 + 0j]])
    B = np.array([[0.7 + 0.2j, 1.0 + 0j, 1.0 + 0j]])
    sys = DiagonalSSM(lam, B, np.array([[0.3 + 0j, 0.2 - 0.1j, 0.0]]), 0.0, 0.1, "discrete")
    target = impulse_response(_random_discrete(rng, 1, 5), 60)
    fitted = refit_output(sys, target, active=np.array([[True, True, False]]))
    assert fitted.C[0, 2] == 0                      # inactive slot keeps zero output
    assert np.all(np.isfinite(fitted.C)) and np.abs(fitted.C).max() < 1e6


def test_stabilize_moves_only_modes_outside_the_radius():
    lam = np.array([[1.02 * np.exp(0.3j), 0.5 * np.exp(1j), 1.0 + 0j, -1.5 + 0j]])
    sys = DiagonalSSM(lam, 1.0, 1.0, 0.0, 0.1, "discrete")
    out, moved = stabilize_modes(sys, 0.99)
    assert moved.tolist() == [3]
    np.testing.assert_allclose(np.abs(out.modes[0]), [0.99, 0.5, 0.99, 0.99])
    np.testing.assert_allclose(np.angle(out.modes[0]), np.angle(lam[0]))
    assert np.all(out.is_stable())


def test_refit_and_stabilize_reject_bad_input():
    sys = _random_discrete(np.random.default_rng(3), 2, 3)
    with pytest.raises(ValueError, match="shape"):
        refit_output(sys, np.zeros((3, 10)))
    with pytest.raises(ValueError, match="non-finite"):
        refit_output(sys, np.full((2, 10), np.nan))
    with pytest.raises(ValueError, match="ridge"):
        refit_output(sys, np.zeros((2, 10)), ridge=-1.0)
    with pytest.raises(ValueError, match="radius"):
        stabilize_modes(sys, 1.0)
    cont = DiagonalSSM(-np.ones((1, 2)), 1.0, 1.0)
    with pytest.raises(ValueError, match="discrete"):
        refit_output(cont, np.zeros((1, 5)))


def test_the_ridge_keeps_coefficients_bounded_on_nearly_collinear_modes():
    """Modes 1e-7 apart make plain least squares trade a tiny gain for enormous, cancelling C."""
    rng = np.random.default_rng(4)
    base = 0.97 * np.exp(1j * np.array([0.3, 0.3 + 1e-7, 0.9, 0.9 + 2e-7]))
    sys = DiagonalSSM(base[None, :], 1.0, np.array([[0.5, 0.5, 0.2, 0.2]]) + 0j, 0.0, 0.1, "discrete")
    target = impulse_response(_random_discrete(rng, 1, 6), 80)
    plain = refit_output(sys, target, ridge=0.0, rcond=1e-14)
    ridged = refit_output(sys, target)
    err = lambda s: np.linalg.norm(impulse_response(s, 80) - target)
    assert np.abs(plain.C).max() > 1e4
    assert np.abs(ridged.C).max() < 100 * np.abs(target).max()
    assert err(ridged) <= err(sys) + 1e-12
    # float32 storage of the ridged C changes the response at rounding level only
    c32 = DiagonalSSM(sys.modes, 1.0, ridged.C.astype(np.complex64), ridged.D, 0.1, "discrete")
    assert np.abs(impulse_response(c32, 80) - impulse_response(ridged, 80)).max() < 1e-5 * np.abs(target).max()
