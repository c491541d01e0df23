"""Modal truncation: per-mode scores against brute force, order counting, the error bound."""
import zlib

import numpy as np
import pytest
import scipy.linalg as sla

from lti_cases import FAMILIES, random_systems
from ssmcompress.lti import DiagonalSSM, modal_truncation, mode_scores

DOMAINS = ("continuous", "discrete")


def single_modes(s):
    return DiagonalSSM(s.modes[..., None], s.B[..., None], s.C[..., None], domain=s.domain)


def dense_peak(s):
    """max |g_i| of every mode's real subsystem on a dense grid, shape (H, n): a uniform (discrete) or
    logarithmic (continuous) grid plus, per mode, 20001 points within 5 half-widths of its resonance."""
    one = single_modes(s)
    if s.is_discrete:
        om = np.linspace(0.0, np.pi, 100001)
        centre, width = np.abs(np.angle(s.modes)), 1 - np.abs(s.modes)
    else:
        om = np.concatenate([[0.0], np.logspace(-5, 5, 100000)])
        centre, width = np.abs(s.modes.imag), -s.modes.real
    local = np.abs(centre[..., None] + width[..., None] * np.linspace(-5, 5, 20001))
    return np.maximum(np.abs(one.freqresp(om)).max(-1), np.abs(one.freqresp(local)).max(-1))


@pytest.mark.parametrize("domain", DOMAINS)
def test_hinf_score_is_the_peak_gain_of_each_mode(domain):
    """"hinf" is the exact peak of each mode's real subsystem: never below the dense-grid maximum, above it
    by no more than the grid's resolution, and equal to hinf_norm's golden-section peak to 1e-9."""
    rng = np.random.default_rng(zlib.crc32(f"modal-peak-{domain}".encode()))
    for family in FAMILIES:
        s = random_systems(family, 16, 6, rng, domain)
        sc = mode_scores(s, "hinf")
        grid = dense_peak(s)
        assert np.all(grid <= sc * (1 + 1e-12)), family
        assert np.all(grid >= sc * (1 - 1e-6)), family
        np.testing.assert_allclose(sc, single_modes(s).hinf_norm(), rtol=1e-9)


def test_hinf_score_closed_forms_and_the_last_bound():
    """Real modes ("C halved"): 2 |Re(c b)| / |lam| (continuous), 2 |Re(c b)| / (1 - |lam|) (discrete), and
    the bound equals the score.  Complex modes: the bound 2 |c b| / dist is at least the peak, and about
    twice it for lightly damped modes (the two terms of the 2 Re output peak at opposite frequencies)."""
    lam_c = np.array([-0.5, -3.0, -0.01 + 20j, -0.1 + 3j])
    lam_d = np.array([0.9, -0.7, 0.999 * np.exp(0.8j), 0.95 * np.exp(2.5j)])
    b = np.array([1.0 + 2j, -0.5 + 1j, 2.0 - 1j, 0.3 + 0.3j])
    c = np.array([0.5 - 1j, 2.0 + 0j, 1.0 + 1j, -1.0 + 2j])
    for lam, domain in ((lam_c, "continuous"), (lam_d, "discrete")):
        s = DiagonalSSM(lam, b, c, domain=domain)
        dist = (1 - np.abs(lam)) if domain == "discrete" else -lam.real
        sc, bound = mode_scores(s, "hinf"), mode_scores(s, "hinf_bound")
        real = lam.imag == 0
        np.testing.assert_allclose(sc[real], 2 * np.abs((c * b).real[real]) / dist[real], rtol=1e-12)
        np.testing.assert_allclose(bound[real], sc[real], rtol=1e-12)
        np.testing.assert_allclose(bound[~real], 2 * np.abs(c * b)[~real] / dist[~real], rtol=1e-12)
        assert np.all(bound[~real] >= sc[~real])
        np.testing.assert_allclose(bound[2] / sc[2], 2.0, rtol=2e-3)          # lightly damped


def test_h2_score_matches_lyapunov():
    rng = np.random.default_rng(3)
    for domain in DOMAINS:
        s = random_systems("lin", 8, 3, rng, domain)
        sc = mode_scores(s, "h2")
        for h in range(3):
            for i in range(4):
                A, B, C, _ = single_modes(s[h])[i].to_real()
                if domain == "discrete":
                    P = sla.solve_discrete_lyapunov(A, B @ B.T)
                else:
                    P = sla.solve_continuous_lyapunov(A, -B @ B.T)
                np.testing.assert_allclose(sc[h, i], np.sqrt((C @ P @ C.T)[0, 0]), rtol=1e-9)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("score", ["hinf", "hinf_bound", "h2"])
def test_keeps_the_best_modes_unchanged_within_the_order(domain, score):
    rng = np.random.default_rng(zlib.crc32(f"modal-keep-{domain}-{score}".encode()))
    for family in FAMILIES:
        s = random_systems(family, 32, 12, rng, domain)
        r = rng.integers(0, 33, 12)
        res = modal_truncation(s, order=r, score=score)
        sc = mode_scores(s, score)
        cost = np.where(s.modes.imag == 0, 1, 2)
        for h in range(12):
            kept = res.kept[h]
            assert res.order[h] == (cost[h] * kept).sum() <= r[h]
            if r[h] < 32:                                      # plain greedy in descending score
                want, left = np.zeros(16, bool), r[h]
                for i in sorted(range(16), key=lambda i: -sc[h, i]):
                    if sc[h, i] > 0 and cost[h, i] <= left:
                        want[i], left = True, left - cost[h, i]
                np.testing.assert_array_equal(kept, want)
            k = res.n_modes[h]
            assert k == kept.sum()
            # kept modes as they were, in their original order, then inactive padding
            np.testing.assert_array_equal(res.system.modes[h, :k], s.modes[h][kept])
            np.testing.assert_array_equal(res.system.B[h, :k], s.B[h][kept])
            np.testing.assert_array_equal(res.system.C[h, :k], s.C[h][kept])
            assert np.all(res.system.B[h, k:] == 0)
        np.testing.assert_array_equal(res.system.D, s.D)
        assert np.all(res.system.is_stable())
        # the reported bound: sum of the discarded modes' peaks bounds the H-infinity error
        err = (s - res.system).hinf_norm()
        assert np.all(err <= res.error_bound * (1 + 1e-9) + 1e-12 * s.hinf_norm())


def test_greedy_skips_a_complex_mode_that_does_not_fit():
    lam = np.array([-0.1 + 5j, -1.0, -0.2 + 1j, -3.0])
    s = DiagonalSSM(lam, np.ones(4), np.array([10.0, 1.0, 5.0, 0.1]))
    sc = mode_scores(s)
    assert np.argsort(-sc).tolist() == [0, 2, 1, 3]
    res = modal_truncation(s, order=3)                        # complex (2), then the next complex does not fit
    assert res.kept.tolist() == [True, True, False, False] and res.order == 3 and res.n_modes == 2
    res = modal_truncation(s, order=1)
    assert res.kept.tolist() == [False, True, False, False] and res.order == 1


def test_full_order_and_signal_free_modes():
    rng = np.random.default_rng(7)
    s = random_systems("legs", 16, 3, rng)
    res = modal_truncation(s, order=16)
    np.testing.assert_array_equal(res.system.modes, s.modes)
    assert np.all(res.error_bound == 0) and np.all(res.order == 16)
    C = s.C.copy()
    C[:, :3] = 0                                              # three modes without signal
    s2 = DiagonalSSM(s.modes, s.B, C, s.D, s.dt)
    res = modal_truncation(s2, order=15)
    assert not res.kept[:, :3].any() and np.all(res.order == 10)
    assert np.all(mode_scores(s2)[:, :3] == 0)


def test_argument_errors():
    s = DiagonalSSM(np.array([-1 + 1j]), 1, 1)
    with pytest.raises(ValueError, match="score"):
        modal_truncation(s, 1, score="hankel")
    with pytest.raises(TypeError, match="integer"):
        modal_truncation(s, None)
    with pytest.raises(ValueError, match="non-negative"):
        modal_truncation(s, -2)
    with pytest.raises(ValueError, match=r"channel\(s\) 1 have unstable"):
        mode_scores(DiagonalSSM(np.array([[-1 + 1j], [0.5 + 1j]]), 1, 1))


def test_hinf_score_of_extreme_modes():
    """Modes 1e-9..1e-3 from the unit circle (near z = 1, z = -1 and in between), continuous modes with
    damping 1e-8..1 of their frequency, and near-real ones: the closed form is as accurate as |g| itself
    can be evaluated in double precision (relative ``eps / (1 - |lam|)``, continuous ``eps |lam| / |Re lam|``),
    against hinf_norm's golden-section search, and never below a fine local grid."""
    rng = np.random.default_rng(17)
    n = 200
    radius = 1 - 10 ** rng.uniform(-9, -3, n)
    angle = np.concatenate([10 ** rng.uniform(-9, -2, n // 4), np.pi - 10 ** rng.uniform(-9, -2, n // 4),
                            rng.uniform(0, np.pi, n // 2)])
    cont = -10 ** rng.uniform(-8, 0, n) * 10 ** rng.uniform(-2, 2, n) + 1j * 10 ** rng.uniform(-2, 2, n)
    for lam, domain in ((radius * np.exp(1j * angle), "discrete"), (cont, "continuous"),
                        (-10 ** rng.uniform(-2, 2, n) * np.exp(1j * 10 ** rng.uniform(-9, -3, n)), "continuous")):
        rho = (rng.normal(size=n) + 1j * rng.normal(size=n))
        s = DiagonalSSM(lam, rho, np.ones(n), domain=domain)
        sc = mode_scores(s, "hinf")
        centre = np.abs(np.angle(lam)) if domain == "discrete" else np.abs(lam.imag)
        width = (1 - np.abs(lam)) if domain == "discrete" else -lam.real
        rtol = 1e-10 + 1e-14 * (1.0 if domain == "discrete" else np.abs(lam)) / width
        assert np.all(np.abs(sc - single_modes(s).hinf_norm(rtol=1e-12)) <= rtol * sc)
        local = np.clip(centre[:, None] + width[:, None] * np.linspace(-5, 5, 4001), 0,
                        np.pi if domain == "discrete" else None)
        assert np.all(np.abs(single_modes(s).freqresp(local)).max(-1) <= sc * (1 + rtol))
