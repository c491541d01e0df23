"""DiagonalSSM: validation, discretisation, kernel, frequency response, norms."""
import numpy as np
import pytest
import scipy.linalg as sla
from hypothesis import given, settings, strategies as st

from lti_cases import random_systems
from ssmcompress.lti import DiagonalSSM


def dense_tf(A, B, C, D, s):
    """C (sI - A)^-1 B + D for one real system at points s (F,)."""
    m = A.shape[-1]
    return np.array([(C @ np.linalg.solve(z * np.eye(m) - A, B))[0, 0] for z in s]) + D[0, 0]


def test_validation_messages():
    lam, b = np.array([-1 + 1j, -2]), np.ones(2)
    with pytest.raises(ValueError, match="domain"):
        DiagonalSSM(lam, b, b, domain="laplace")
    with pytest.raises(ValueError, match="broadcastable"):
        DiagonalSSM(lam, np.ones(3), b)
    with pytest.raises(ValueError, match="NaN"):
        DiagonalSSM(np.array([np.nan, -1]), b, b)
    with pytest.raises(ValueError, match="D must be real"):
        DiagonalSSM(lam, b, b, D=1j)
    with pytest.raises(ValueError, match="dt must be positive"):
        DiagonalSSM(lam, b, b, dt=-1.0)
    with pytest.raises(TypeError, match="numbers"):
        DiagonalSSM(["a", "b"], b, b)
    with pytest.raises(ValueError, match="needs the step size"):
        DiagonalSSM(lam, b, b).discretize()
    with pytest.raises(ValueError, match="needs the step size"):
        DiagonalSSM(lam, b, b).kernel(4)
    with pytest.raises(ValueError, match="already discrete"):
        DiagonalSSM(0.5 * lam / 3, b, b, domain="discrete").discretize()
    with pytest.raises(ValueError, match="zoh"):
        DiagonalSSM(lam, b, b, dt=0.1).discretize("euler")


def test_float32_is_computed_in_float64():
    s = DiagonalSSM(np.array([-1 + 2j], np.complex64), np.ones(1, np.float32), np.ones(1, np.float32), dt=np.float32(0.1))
    assert s.modes.dtype == np.complex128 and s.D.dtype == np.float64 and s.dt.dtype == np.float64
    assert s.kernel(3).dtype == np.float64


def test_to_real_shapes_and_block_form():
    rng = np.random.default_rng(0)
    s = random_systems("legs", 8, 6, rng).__getitem__(slice(None))
    A, B, C, D = s.to_real()
    assert A.shape == (6, 8, 8) and B.shape == (6, 8, 1) and C.shape == (6, 1, 8) and D.shape == (6, 1, 1)
    np.testing.assert_allclose(np.sort_complex(np.linalg.eigvals(A[0])),
                               np.sort_complex(np.concatenate([s.modes[0], s.modes[0].conj()])), rtol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_discretize_matches_dense(method):
    rng = np.random.default_rng(1)
    s = random_systems("lin", 8, 5, rng)
    d = s.discretize(method)
    A, B, C, _ = s.to_real()
    Ad, Bd, Cd, _ = d.to_real()
    for h in range(5):
        dt, m = s.dt[h], A.shape[-1]
        if method == "zoh":
            E = sla.expm(np.block([[A[h] * dt, B[h] * dt], [np.zeros((1, m + 1))]]))
            ref_A, ref_B = E[:m, :m], E[:m, m:]
        else:
            M = np.linalg.inv(np.eye(m) - A[h] * dt / 2)
            ref_A, ref_B = M @ (np.eye(m) + A[h] * dt / 2), M @ B[h] * dt
        np.testing.assert_allclose(Ad[h], ref_A, atol=1e-13)
        np.testing.assert_allclose(Bd[h], ref_B, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(Cd[h], C[h])


def test_zoh_limit_at_zero_mode():
    s = DiagonalSSM(np.array([0.0, 1e-12 + 0j]), np.array([2.0, 2.0]), np.ones(2), dt=0.5)
    d = s.discretize("zoh")
    np.testing.assert_allclose(d.B, [1.0, 1.0], rtol=1e-11)
    np.testing.assert_allclose(d.modes, [1.0, 1.0], rtol=1e-11)


@pytest.mark.parametrize("domain", ["continuous", "discrete"])
def test_kernel_and_freqresp_match_dense(domain):
    rng = np.random.default_rng(2)
    s = random_systems("inv", 8, 4, rng, domain)
    d = s if domain == "discrete" else s.discretize("zoh")
    K = s.kernel(20)
    Ad, Bd, Cd, _ = d.to_real()
    for h in range(4):
        ref = [(Cd[h] @ np.linalg.matrix_power(Ad[h], l) @ Bd[h])[0, 0] for l in range(20)]
        np.testing.assert_allclose(K[h], ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    om = np.linspace(0.01, 3.0, 7)
    G = s.freqresp(om)
    A, B, C, D = s.to_real()
    pts = np.exp(1j * om) if domain == "discrete" else 1j * om
    for h in range(4):
        np.testing.assert_allclose(G[h], dense_tf(A[h], B[h], C[h], D[h], pts), rtol=1e-10)


def test_h2_norm_matches_lyapunov():
    rng = np.random.default_rng(3)
    s = random_systems("legs", 8, 4, rng)
    s = DiagonalSSM(s.modes, s.B, s.C, dt=s.dt)                     # D = 0
    A, B, C, _ = s.to_real()
    for h, v in enumerate(s.h2_norm()):
        P = sla.solve_continuous_lyapunov(A[h], -B[h] @ B[h].T)
        np.testing.assert_allclose(v, np.sqrt((C[h] @ P @ C[h].T)[0, 0]), rtol=1e-9)
    d = random_systems("lin", 8, 3, rng, "discrete")
    A, B, C, D = d.to_real()
    for h, v in enumerate(d.h2_norm()):
        P = sla.solve_discrete_lyapunov(A[h], B[h] @ B[h].T)
        np.testing.assert_allclose(v, np.sqrt((C[h] @ P @ C[h].T)[0, 0] + D[h, 0, 0] ** 2), rtol=1e-8)
    assert np.all(np.isinf(random_systems("lin", 8, 2, rng).h2_norm()))   # D != 0 continuous


@pytest.mark.parametrize("domain", ["continuous", "discrete"])
def test_hinf_norm_matches_slycot(domain):
    import slycot

    rng = np.random.default_rng(4)
    systems = [random_systems(f, N, 6, rng, domain) for f in ("lin", "inv", "real", "legs") for N in (8, 32)]
    for s in systems:
        ours = s.hinf_norm()
        A, B, C, D = s.to_real()
        m = A.shape[-1]
        for h in range(A.shape[0]):
            ref = slycot.ab13dd("D" if domain == "discrete" else "C", "I", "N", "D", m, 1, 1,
                                A[h], np.eye(m), B[h], C[h], D[h], tol=1e-12)[0]
            assert abs(ours[h] - ref) <= 1e-6 * ref, (ours[h], ref)


def test_is_stable_and_unstable_norms():
    s = DiagonalSSM(np.array([[-1 + 1j, -2], [0.1 + 1j, -1]]), np.ones(2), np.ones(2))
    np.testing.assert_array_equal(s.is_stable(), [True, False])
    assert np.isinf(s.hinf_norm()[1]) and np.isfinite(s.hinf_norm()[0])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.floats(-3, -0.01), st.floats(0, 20), st.integers(0, 2**31 - 1))
def test_freqresp_property(n, re, im, seed):
    rng = np.random.default_rng(seed)
    lam = re * rng.uniform(0.5, 2, n) + 1j * im * rng.uniform(0, 1, n)
    s = DiagonalSSM(lam, rng.normal(size=n) + 1j * rng.normal(size=n), rng.normal(size=n) + 0j, D=rng.normal())
    A, B, C, D = s.to_real()
    om = np.array([0.0, 0.7, 5.0])
    np.testing.assert_allclose(s.freqresp(om), dense_tf(A, B, C, D, 1j * om), rtol=1e-9, atol=1e-12)
    assert s.hinf_norm() >= np.abs(s.freqresp(np.linspace(0, 50, 501))).max() * (1 - 1e-12)


def test_batch_indexing_with_arrays_masks_and_ellipsis():
    rng = np.random.default_rng(12)
    lam = -rng.uniform(0.1, 1, (4, 3, 5)) + 1j * rng.normal(size=(4, 3, 5))
    B, C = rng.normal(size=(4, 3, 5)) + 1j * rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5)) + 0j
    D, dt = rng.normal(size=(4, 3)), rng.uniform(0.01, 0.1, (4, 3))
    s = DiagonalSSM(lam, B, C, D=D, dt=dt)
    cases = [  # (batch index, the same index on the (..., n) mode arrays)
        (np.array([0, 2]), (np.array([0, 2]), Ellipsis)),
        (np.array([True, False, True, True]), (np.array([True, False, True, True]), Ellipsis)),
        ((slice(1, 3), 2), (slice(1, 3), 2, slice(None))),
        ((Ellipsis, 1), (Ellipsis, 1, slice(None))),
        ((np.array([3, 0]), np.array([1, 2])), (np.array([3, 0]), np.array([1, 2]), slice(None))),
    ]
    for index, on_modes in cases:
        sub = s[index]
        for got, full in ((sub.modes, lam), (sub.B, B), (sub.C, C)):
            np.testing.assert_array_equal(got, full[on_modes])
        np.testing.assert_array_equal(sub.dt, dt[index])
        np.testing.assert_array_equal(sub.D, D[index])
        assert sub.batch_shape == D[index].shape


def test_norms_ignore_signal_free_unstable_modes_and_empty_systems():
    """A mode with no signal (B or C zero) does not make a channel unstable for the norms, as for
    the Hankel singular values; no modes at all gives |D|; different dt cannot be subtracted."""
    s = DiagonalSSM(np.array([[-1 + 1j, 0.5]]), np.array([[1.0, 0.0]]), np.ones((1, 2)))
    ref = DiagonalSSM(np.array([[-1 + 1j]]), np.ones((1, 1)), np.ones((1, 1)))
    np.testing.assert_allclose(s.h2_norm(), ref.h2_norm(), rtol=1e-14)
    np.testing.assert_allclose(s.hinf_norm(), ref.hinf_norm(), rtol=1e-12)
    assert np.isinf(DiagonalSSM(np.array([[-1 + 1j, 0.5]]), np.ones((1, 2)), np.ones((1, 2))).hinf_norm()[0])
    empty = DiagonalSSM(np.zeros((2, 0)), np.zeros((2, 0)), np.zeros((2, 0)), D=np.array([0.3, -2.0]))
    np.testing.assert_array_equal(empty.hinf_norm(), [0.3, 2.0])
    assert DiagonalSSM(-np.ones((0, 3)), np.ones((0, 3)), np.ones((0, 3))).hinf_norm().shape == (0,)
    with pytest.raises(ValueError, match="different dt"):
        DiagonalSSM(np.array([-1.0 + 0j]), 1, 1, dt=0.1) - DiagonalSSM(np.array([-1.0 + 0j]), 1, 1, dt=0.5)
    with pytest.raises(ValueError, match="rtol"):
        ref.hinf_norm(rtol="x")
