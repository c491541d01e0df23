"""Hankel singular values and balanced truncation against slycot, mpmath and the error bound."""
import zlib

import numpy as np
import pytest

from lti_cases import FAMILIES, random_systems, slycot_hsv
from ssmcompress.lti import DiagonalSSM, balanced_truncation, hankel_singular_values

DOMAINS = ("continuous", "discrete")


def assert_hsv_close(ours, ref, rtol=1e-9, atol_rel=0.0, cutoff=1e-12):
    """|ours - ref| <= rtol * ref + atol_rel * ref_max for every ref >= cutoff * its channel's largest."""
    keep = ref >= cutoff * ref[..., :1]
    err = np.abs(ours - ref)
    ok = err <= rtol * ref + atol_rel * ref[..., :1]
    assert np.all(ok | ~keep), f"worst relative error {np.max(np.where(keep, err / np.where(keep, ref, 1), 0)):.2e}"


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "near_real"])
def test_hsv_match_slycot(family, domain):
    """About 50 systems per case (400 in all), N up to 256.

    slycot's own absolute error near 1e-12 of the largest value is ~1e-18 of it (see
    test_hsv_match_extended_precision: ours are exact there), hence the absolute term.
    Not for modes near the real axis: there slycot's values are off by up to 4e-6 relative
    (ours match 40-digit references to 1e-15; test_hsv_extreme_modes_against_extended_precision).
    """
    rng = np.random.default_rng(zlib.crc32(f"{family}-{domain}".encode()))
    for N, H in ((8, 12), (16, 12), (32, 12), (64, 12), (256, 1)):
        s = random_systems(family, N, H, rng, domain)
        ours = hankel_singular_values(s)
        assert ours.shape == (H, N) and np.all(np.diff(ours, axis=-1) <= 0)
        assert_hsv_close(ours, slycot_hsv(s), rtol=1e-9, atol_rel=1e-17)


def mp_hsv_minimal_real(lam, rho, dps=60):
    """HSVs of sum_i rho_i/(s - lam_i) with real lam, rho in 60-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = dps
    n = len(lam)
    P, Q = mpmath.matrix(n, n), mpmath.matrix(n, n)
    for i in range(n):
        for j in range(n):
            d = -(mpmath.mpf(lam[i]) + mpmath.mpf(lam[j]))
            P[i, j] = 1 / d
            Q[i, j] = mpmath.mpf(rho[i]) * mpmath.mpf(rho[j]) / d
    ev = mpmath.eig(P * Q, left=False, right=False)
    return np.array(sorted((float(mpmath.sqrt(abs(mpmath.re(e)))) for e in ev), reverse=True))


def mp_hsv_closure(s, dps=40):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = dps
    mu = [mpmath.mpc(x) for x in np.concatenate([s.modes, s.modes.conj()])]
    be = [mpmath.mpc(x) for x in np.concatenate([s.B, s.B.conj()])]
    ga = [mpmath.mpc(x) for x in np.concatenate([s.C, s.C.conj()])]
    m = len(mu)
    P, Q = mpmath.matrix(m, m), mpmath.matrix(m, m)
    for i in range(m):
        for j in range(m):
            if s.is_discrete:
                P[i, j] = be[i] * mpmath.conj(be[j]) / (1 - mu[i] * mpmath.conj(mu[j]))
                Q[i, j] = mpmath.conj(ga[i]) * ga[j] / (1 - mpmath.conj(mu[i]) * mu[j])
            else:
                P[i, j] = be[i] * mpmath.conj(be[j]) / -(mu[i] + mpmath.conj(mu[j]))
                Q[i, j] = mpmath.conj(ga[i]) * ga[j] / -(mpmath.conj(mu[i]) + mu[j])
    ev = mpmath.eig(P * Q, left=False, right=False)
    return np.array(sorted((float(mpmath.sqrt(abs(mpmath.re(e)))) for e in ev), reverse=True))


def test_hsv_match_extended_precision():
    """Strict: 1e-9 relative for every value >= 1e-12 of the largest, against 40-60 digit references;
    on the S4D-Real case even 1e-12 relative down to 1e-18 of the largest."""
    rng = np.random.default_rng(7)
    s = random_systems("real", 64, 1, rng)[0]
    s = DiagonalSSM(s.modes, s.B, s.C)
    ref = mp_hsv_minimal_real(s.modes.real, 2 * (s.C * s.B).real, dps=80)   # the closure's nonzero HSVs
    ours = hankel_singular_values(s)[:32]
    assert_hsv_close(ours, ref, rtol=1e-9)
    assert_hsv_close(ours, ref, rtol=1e-12, cutoff=1e-18)
    assert np.sum((ref < 1e-12 * ref[0]) & (ref >= 1e-18 * ref[0])) >= 4   # the deep check is not vacuous
    for family in ("lin", "legs", "inv"):
        s = random_systems(family, 12, 1, rng)[0]
        assert_hsv_close(hankel_singular_values(s), mp_hsv_closure(s), rtol=1e-9)


def dense_response(A, B, C, s):
    M = s[:, None, None] * np.eye(A.shape[-1]) - A
    return (C @ np.linalg.solve(M, np.broadcast_to(B, (len(s),) + B.shape)))[:, 0, 0]


@pytest.mark.parametrize("domain", DOMAINS)
def test_error_bound_and_stability_on_many_systems(domain):
    rng = np.random.default_rng(11 if domain == "continuous" else 12)
    count = 0
    for family in FAMILIES:
        for N, H in ((8, 10), (16, 10), (32, 10), (64, 8)):
            s = random_systems(family, N, H, rng, domain)
            r = rng.integers(1, N, H)                                     # per-channel orders, odd ones too
            res = balanced_truncation(s, order=r)
            err = (s - res.system).hinf_norm()
            ref = s.hinf_norm()
            assert np.all(err <= res.error_bound * (1 + 1e-8) + 1e-11 * ref), family
            assert np.all(res.system.is_stable())
            assert res.system.domain == domain
            count += H
    assert count >= 150


@pytest.mark.parametrize("domain", DOMAINS)
def test_diagonal_result_equals_dense_balanced_truncation(domain):
    """Transfer function of the re-diagonalised result == slycot ab09ad's dense reduced system."""
    import slycot

    rng = np.random.default_rng(21)
    for family in FAMILIES:
        s = random_systems(family, 32, 6, rng, domain)
        hsv = hankel_singular_values(s)
        A, B, C, D = s.to_real()
        for h in range(6):
            gaps = np.flatnonzero((hsv[h, :-1] > 1.01 * hsv[h, 1:]) & (hsv[h, :-1] > 1e-8 * hsv[h, 0]))
            r = int(rng.choice(gaps[gaps < 20])) + 1
            res = balanced_truncation(s[h], order=r)
            assert res.order == r
            nr, Ar, Br, Cr, _ = slycot.ab09ad("D" if domain == "discrete" else "C", "B", "N", 32, 1, 1,
                                              A[h].copy(), B[h].copy(), C[h].copy(), nr=r)
            assert nr == r
            om = np.concatenate([np.linspace(0, np.pi, 200)] if domain == "discrete" else
                                [np.logspace(-3, 3, 400), np.abs(s.modes[h].imag)])
            pts = np.exp(1j * om) if domain == "discrete" else 1j * om
            ref = dense_response(Ar[:r, :r], Br[:r], Cr[:, :r], pts) + D[h, 0, 0]
            ours = res.system.freqresp(om)
            assert np.abs(ours - ref).max() <= 1e-8 * np.abs(ref).max(), (family, h, r)


def test_finite_horizon_hsv_are_those_of_the_hankel_matrix_of_the_kernel():
    rng = np.random.default_rng(5)
    L = 24
    lam = np.array([[0.95 * np.exp(0.4j), 1.01 * np.exp(1.3j), 0.5, 1.0 + 0j, 0.9j]])
    s = DiagonalSSM(lam, rng.normal(size=(1, 5)) + 1j * rng.normal(size=(1, 5)),
                    rng.normal(size=(1, 5)) + 1j * rng.normal(size=(1, 5)), domain="discrete")
    K = s.kernel(2 * L - 1)[0]
    Hk = K[np.add.outer(np.arange(L), np.arange(L))]
    ref = np.linalg.svd(Hk, compute_uv=False)[:10]
    ours = hankel_singular_values(s, horizon=L)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12 * ref[0])
    res = balanced_truncation(s, order=4, horizon=L)
    assert res.order[0] == 4 and res.horizon == L
    with pytest.raises(ValueError, match=r"channel\(s\) 0"):
        hankel_singular_values(s)


# ---------------------------------------------------------------- edge cases
def test_zero_channel():
    rng = np.random.default_rng(0)
    s = random_systems("lin", 16, 3, rng)
    B = s.B.copy()
    B[1] = 0
    s = DiagonalSSM(s.modes, B, s.C, s.D, s.dt)
    res = balanced_truncation(s, order=6)
    assert np.all(res.hsv[1] == 0) and res.order[1] == 0 and res.error_bound[1] == 0
    assert np.all(res.system.B[1] == 0) and res.system.D[1] == s.D[1]
    assert np.allclose(res.system.freqresp([0.0, 1.0])[1], s.D[1])
    assert balanced_truncation(s, energy=0.9).order[1] == 0


def test_order_at_least_full_returns_system_unchanged():
    rng = np.random.default_rng(1)
    s = random_systems("legs", 8, 2, rng)
    res = balanced_truncation(s, order=8)
    np.testing.assert_array_equal(res.system.modes, s.modes)
    np.testing.assert_array_equal(res.system.C, s.C)
    assert np.all(res.order == 8) and np.all(res.error_bound == 0)
    res = balanced_truncation(s, order=np.array([3, 100]))               # mixed in one batch
    np.testing.assert_array_equal(res.system.modes[1], s.modes[1])
    assert res.order.tolist() == [3, 8]


def test_order_zero_and_odd_orders():
    rng = np.random.default_rng(2)
    s = random_systems("inv", 16, 4, rng)
    res = balanced_truncation(s, order=0)
    assert res.system.n_modes == 0 and np.all(res.order == 0)
    np.testing.assert_allclose(res.error_bound, 2 * res.hsv.sum(-1))
    np.testing.assert_allclose(res.system.freqresp([1.0])[:, 0], s.D)
    res = balanced_truncation(s, order=5)
    assert np.all(res.order == 5)
    n_real = np.sum((res.system.modes.imag == 0) & (res.system.B != 0), -1)
    assert np.all(n_real % 2 == 1)                                         # odd order => a real eigenvalue
    assert np.all(res.n_modes >= 3) and res.system.n_modes == res.n_modes.max()
    pad = np.arange(res.system.n_modes)[None] >= res.n_modes[:, None]
    assert np.all(res.system.B[pad] == 0) and np.all(res.system.modes[pad] == -1)


def test_repeated_modes():
    lam = np.array([-1 + 2j, -1 + 2j, -0.5 + 1j, -0.5 + 1j])
    s = DiagonalSSM(lam, np.array([1, 2, 1j, 1]), np.array([1, 1, 1, 1 + 1j]))
    hsv = hankel_singular_values(s)
    assert np.sum(hsv > 1e-12 * hsv[0]) == 4                               # minimal order 4 of 8
    res = balanced_truncation(s, order=6)
    assert res.order == 4 and abs((s - res.system).hinf_norm()) < 1e-12 * s.hinf_norm()


def test_unstable_modes_with_infinite_horizon_name_the_channel():
    lam = np.array([[-1 + 1j, -2 + 0j], [0.3 + 1j, -1 + 0j]])
    s = DiagonalSSM(lam, np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match=r"channel\(s\) 1 have unstable"):
        balanced_truncation(s, order=2)
    # an unstable mode that carries no signal (B = 0) is harmless
    s = DiagonalSSM(lam, np.array([[1, 1], [0, 1]]), np.ones(2))
    assert balanced_truncation(s, order=2).system.is_stable().all()


def test_float32_input_and_scalar_batch():
    rng = np.random.default_rng(3)
    s = random_systems("legs", 16, 1, rng)[0]
    s32 = DiagonalSSM(s.modes.astype(np.complex64), s.B.astype(np.complex64), s.C.astype(np.complex64),
                      np.float32(s.D), np.float32(s.dt))
    res = balanced_truncation(s32, order=4)
    assert isinstance(res.order, int) and res.hsv.dtype == np.float64 and res.system.modes.dtype == np.complex128
    assert res.error_bound.shape == () and res.error_bounds().shape == (17,)


def test_energy_and_error_bounds():
    rng = np.random.default_rng(4)
    s = random_systems("lin", 32, 5, rng)
    res = balanced_truncation(s, energy=0.9)
    cs = np.cumsum(res.hsv, -1) / res.hsv.sum(-1, keepdims=True)
    for h in range(5):
        r = res.order[h]
        assert cs[h, r - 1] >= 0.9 and (r == 1 or cs[h, r - 2] < 0.9)
    eb = res.error_bounds()
    assert eb.shape == (5, 33) and np.all(np.diff(eb, axis=-1) <= 0)
    np.testing.assert_allclose(eb[np.arange(5), res.order], res.error_bound)


def test_argument_errors():
    s = DiagonalSSM(np.array([-1 + 1j]), 1, 1)
    with pytest.raises(ValueError, match="exactly one"):
        balanced_truncation(s)
    with pytest.raises(ValueError, match="exactly one"):
        balanced_truncation(s, order=1, energy=0.5)
    with pytest.raises(ValueError, match="energy"):
        balanced_truncation(s, energy=1.5)
    with pytest.raises(TypeError, match="integer"):
        balanced_truncation(s, order=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        balanced_truncation(s, order=-1)
    with pytest.raises(TypeError, match="DiagonalSSM"):
        hankel_singular_values(np.eye(2))


@pytest.mark.parametrize("A", [
    [[-1.0, 1.0], [0.0, -1.0]],                                   # Jordan block: eigenvectors exactly parallel
    [[-1.0, 1.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, -1.0]],       # order-3 Jordan block
])
def test_defective_reduced_system_names_the_channel(A):
    from ssmcompress.lti import diagonalize

    A = np.array(A)
    r = A.shape[0]
    good = np.diag(-np.arange(1.0, r + 1))
    batch = np.stack([good, A, good])
    with pytest.raises(ValueError, match=r"channel\(s\) \(1,\) is defective"):
        diagonalize(batch, np.ones((3, r)), np.ones((3, r)))
    out = diagonalize(batch[[0, 2]], np.ones((2, r)), np.ones((2, r)))   # the others are fine
    assert out.n_modes == r


def test_chunks_and_threads_do_not_change_results(monkeypatch):
    """Each channel is reduced on its own: chunking and worker threads give the same numbers."""
    import ssmcompress.lti.balanced as bal

    rng = np.random.default_rng(31)
    s = DiagonalSSM(*(np.concatenate(parts) for parts in zip(
        *((x.modes, x.B, x.C) for x in (random_systems(f, 16, 40, rng) for f in FAMILIES)))))
    one = balanced_truncation(s, order=6, workers=1)
    monkeypatch.setattr(bal, "_CHUNK_SYSTEMS", 7)
    many = balanced_truncation(s, order=6, workers=2)
    np.testing.assert_allclose(many.hsv, one.hsv, rtol=1e-13, atol=0)
    np.testing.assert_allclose(many.system.freqresp(np.linspace(0, 5, 7)),
                               one.system.freqresp(np.linspace(0, 5, 7)), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(many.order, one.order)
    np.testing.assert_allclose(hankel_singular_values(s, workers=2), one.hsv, rtol=1e-13, atol=0)


@pytest.mark.parametrize("domain", DOMAINS)
def test_hsv_invariant_under_mode_order_and_residue_split(domain):
    """The same system written differently (modes permuted, C B split differently between B and C)
    has the same Hankel singular values to ~1e-12 relative, down to the smallest one.  (slycot's
    ab09ad moves the smallest values of 256-state systems by ~1e-8 under a mere state permutation.)"""
    rng = np.random.default_rng(41)
    for family in FAMILIES:
        s = random_systems(family, 64, 4, rng, domain)
        p = rng.permutation(s.n_modes)
        k = np.exp(rng.normal(size=s.n_modes) + 1j * rng.normal(size=s.n_modes))
        s2 = DiagonalSSM(s.modes[:, p], s.B[:, p] * k[p], s.C[:, p] / k[p], domain=domain)
        h1, h2 = hankel_singular_values(s), hankel_singular_values(s2)
        keep = h1 >= 1e-12 * h1[:, :1]
        assert np.max(np.abs(h1 - h2)[keep] / h1[keep]) < 1e-11, family


def test_hsv_extreme_modes_against_extended_precision():
    """Discrete modes up to 1e-10 from the unit circle (1 - |lam|^2 is formed without cancellation),
    continuous modes spread over 8 decades, and modes 1e-7..1e-3 (relative) off the real axis, with
    B spread over 6 decades: 1e-9 relative against 40 digits, from hankel_singular_values and from
    balanced_truncation."""
    rng = np.random.default_rng(51)
    n, H = 6, 12
    cases = [
        ((1 - 10 ** rng.uniform(-10, -1, (H, n))) * np.exp(1j * rng.uniform(0, np.pi, (H, n))), "discrete"),
        (-10 ** rng.uniform(-4, 4, (H, n)) + 1j * 10 ** rng.uniform(-3, 5, (H, n)), "continuous"),
        # near the real axis but not on it: the pair-pivoted real factors lose their grading there
        (-10 ** rng.uniform(-2, 2, (H, n)) * np.exp(1j * 10 ** rng.uniform(-7, -3, (H, n))), "continuous"),
        (rng.uniform(-0.99, 0.99, (H, n)) * np.exp(1j * 10 ** rng.uniform(-7, -3, (H, n))), "discrete"),
        # real and nearly real discrete modes crowded at z = 1 (1 - x conj(y) formed without cancellation)
        ((1 - 10 ** rng.uniform(-10, -8, (H, n))) + 0j, "discrete"),
        ((1 - 10 ** rng.uniform(-10, -8, (H, n))) * np.exp(1j * 10 ** rng.uniform(-13, -11, (H, n))), "discrete"),
    ]
    for lam, domain in cases:
        B = (rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))) * 10 ** rng.uniform(-3, 3, (H, n))
        s = DiagonalSSM(lam, B, rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n)), domain=domain)
        ours, bt = hankel_singular_values(s), balanced_truncation(s, order=3).hsv
        for h in range(H):
            ref = mp_hsv_closure(s[h])
            assert_hsv_close(ours[h], ref, rtol=1e-9)
            assert_hsv_close(bt[h], ref, rtol=1e-9)


def test_overlapping_calls_restore_the_blas_threads():
    """The one-BLAS-thread limit of the worker pools is shared by overlapping calls and lifted
    by the last one: afterwards the process has its original BLAS settings."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import threading

    s = random_systems("legs", 32, 800, np.random.default_rng(3))
    hankel_singular_values(s[:4], workers=2)                         # every library loaded

    def settings():
        return sorted((i["internal_api"], i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info())

    before = settings()
    results, start = [], threading.Barrier(4)

    def run():
        start.wait()
        results.append(hankel_singular_values(s, workers=2))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, results[0]) for r in results)
    assert settings() == before


def test_diagonalize_argument_errors():
    from ssmcompress.lti import diagonalize

    A = -np.eye(3)[None].repeat(2, 0)
    with pytest.raises(ValueError, match="B and C must have shape"):
        diagonalize(A, np.ones((2, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="D must be broadcastable"):
        diagonalize(A, np.ones((2, 3)), np.ones((2, 3)), D=np.ones(3))
    with pytest.raises(ValueError, match="domain"):
        diagonalize(A, np.ones((2, 3)), np.ones((2, 3)), domain="z")
    with pytest.raises(ValueError, match="check_rtol"):
        balanced_truncation(DiagonalSSM(np.array([-1.0 + 1j]), 1, 1), order=1, check_rtol="x")
