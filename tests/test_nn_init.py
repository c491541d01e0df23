"""Initialisations of the diagonal A and of B."""
import numpy as np
import pytest
import torch

from ssmcompress.nn import INITS, init_inv, init_legs, init_lin, init_random, init_real, initial_modes


def hippo_legs_normal_numpy(N):
    """Dense normal part of HiPPO-LegS, straight from the definition."""
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            if n > k:
                A[n, k] = -np.sqrt(2 * n + 1) * np.sqrt(2 * k + 1)
            elif n == k:
                A[n, k] = -(n + 1)
    P = np.sqrt(np.arange(N) + 0.5)
    return A + np.outer(P, P)


@pytest.mark.parametrize("N", [2, 8, 64, 128])
def test_legs_are_eigenvalues_of_normal_hippo(N):
    S = hippo_legs_normal_numpy(N)
    np.testing.assert_allclose(S + S.T, -np.eye(N), atol=1e-12)  # -I/2 + skew
    ev = np.linalg.eigvals(S)
    ev = np.sort_complex(ev[ev.imag > 0])
    ev = ev[np.argsort(ev.imag)]
    A, B = init_legs(N, H=3)
    assert A.shape == (3, N // 2) and A.dtype == torch.complex128
    np.testing.assert_allclose(A[0].numpy(), ev, rtol=1e-9, atol=1e-9)
    assert torch.equal(A[0], A[2])
    # B = V^H b reproduces the real system's transfer function b^T (sI - S)^{-1} b
    b = np.sqrt(2 * np.arange(N) + 1.0)
    for s in (0.7, 3.0 + 2.0j):
        full = b @ np.linalg.solve(s * np.eye(N) - S, b)
        half = (np.abs(B[0].numpy()) ** 2 / (s - A[0].numpy())).sum() + (np.abs(B[0].numpy()) ** 2 / (s - A[0].numpy().conj())).sum()
        np.testing.assert_allclose(half, full, rtol=1e-8)


def test_s4d_formulas():
    N = 16
    k = np.arange(N // 2)
    np.testing.assert_allclose(init_lin(N)[0][0].numpy(), -0.5 + 1j * np.pi * k)
    np.testing.assert_allclose(init_inv(N)[0][0].numpy(), -0.5 + 1j * (N / np.pi) * (N / (2 * k + 1) - 1))
    np.testing.assert_allclose(init_real(N)[0][0].numpy(), -(k + 1.0))
    for f in (init_lin, init_inv, init_real, init_random):
        A, B = f(N, H=4)
        assert A.shape == B.shape == (4, N // 2)
        assert (A.real < 0).all() and (A.imag >= 0).all()
        assert torch.equal(B, torch.ones_like(B))


def test_random_init_differs_per_channel():
    torch.manual_seed(0)
    A, _ = init_random(8, H=3)
    assert not torch.equal(A[0], A[1])
    assert (A.imag.diff(dim=-1) >= 0).all()


def test_initial_modes_validation():
    assert set(INITS) == {"legs", "lin", "inv", "real", "random"}
    with pytest.raises(ValueError, match="inv, legs, lin, random, real"):
        initial_modes("hippo", 8, 2)
    with pytest.raises(ValueError, match="even"):
        initial_modes("legs", 9, 2)
