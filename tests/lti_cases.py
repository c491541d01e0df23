"""Random diagonal systems for the lti tests: S4D-Lin, S4D-Inv, S4D-Real and Skew-HiPPO
initialisations, perturbed as training would, and references through slycot."""
import numpy as np

from ssmcompress.lti import DiagonalSSM

FAMILIES = ("lin", "inv", "real", "legs", "near_real")


def skew_hippo_modes(N):
    """Im > 0 half of the eigenvalues of the normal part of HiPPO-LegS (size N): -1/2 + i w."""
    q = np.sqrt(2.0 * np.arange(N) + 1.0)
    skew = 0.5 * (np.tril(np.outer(q, q), -1) - np.triu(np.outer(q, q), 1))
    w = np.sort(np.linalg.eigvalsh(-1j * skew))
    return -0.5 + 1j * w[w > 0][: N // 2]


def init_modes(family, N):
    n, k = N // 2, np.arange(N // 2)
    if family == "lin":
        return -0.5 + 1j * np.pi * k
    if family == "inv":
        return -0.5 + 1j * N / np.pi * (N / (2 * k + 1) - 1)
    if family == "real":
        return -(k + 1.0) + 0j
    if family == "legs":
        return skew_hippo_modes(N)
    if family == "near_real":     # S4D-Real whose imaginary parts training moved off zero a little
        return -(k + 1.0) + 0j
    raise ValueError(family)


def random_systems(family, N, H, rng, domain="continuous", perturb=True):
    """H channels of one family at state size N (n = N/2 modes), B and C random."""
    n = N // 2
    lam = np.broadcast_to(init_modes(family, N), (H, n)).copy()
    if perturb:   # training moves log(-Re lam) and Im lam a little, per channel and mode
        re = lam.real * np.exp(rng.normal(0.0, 0.5, (H, n)))
        im = lam.imag * (1.0 + 0.05 * rng.normal(size=(H, n))) + (lam.imag != 0) * 0.01 * rng.normal(size=(H, n))
        lam = re + 1j * im
        if family == "near_real":
            lam = lam.real * (1 + 1j * 10 ** rng.uniform(-9, -2, (H, n)) * rng.choice([-1, 1], (H, n)))
    B = rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))
    C = (rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))) * np.exp(rng.normal(0, 1, (H, 1)))
    if family == "real" and rng.random() < 0.5:
        B, C = B.real + 0j, C.real + 0j
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
    sys = DiagonalSSM(lam, B, C, D=rng.normal(size=H), dt=dt)
    return sys.discretize("zoh") if domain == "discrete" else sys


def slycot_hsv(sys):
    """Hankel singular values by slycot ab09ad on to_real(), shape (H, 2n)."""
    import slycot

    A, B, C, _ = sys.to_real()
    A, B, C = A.reshape(-1, *A.shape[-2:]), B.reshape(-1, *B.shape[-2:]), C.reshape(-1, *C.shape[-2:])
    m = A.shape[-1]
    out = np.zeros((A.shape[0], m))
    for h in range(A.shape[0]):
        res = slycot.ab09ad("D" if sys.is_discrete else "C", "B", "N", m, 1, 1,
                            A[h].copy(), B[h].copy(), C[h].copy(), nr=1)
        out[h, : len(res[-1])] = res[-1]
    return out
