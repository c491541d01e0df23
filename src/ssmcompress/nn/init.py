"""Initialisations of the diagonal state matrix A and of B for DSS layers.

Every function returns the n = N/2 stored half-conjugate modes of a real
system of order N (``state_dim``), as complex128 torch tensors:

- ``A`` (H, n): continuous-time eigenvalues, ``Im(A) >= 0``;
- ``B`` (H, n): input vector in the eigenbasis.

The output vector C is not part of an initialisation: layers draw it from a
standard complex normal (S4D convention).

Names (S4D paper, Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"):

``legs``    Skew-HiPPO: eigenvalues of the normal part of HiPPO-LegS,
            ``-1/2 + i w``; B = V^H B_hippo (S4D-LegS, also the DSS init).
``lin``     S4D-Lin: ``A_k = -1/2 + i pi k``; B = 1.
``inv``     S4D-Inv: ``A_k = -1/2 + i (N/pi) (N/(2k+1) - 1)``; B = 1.
``real``    S4D-Real: ``A_k = -(k+1)``; B = 1.
``random``  ``A_k = -1/2 + i pi n U(0, 1)``, drawn per channel and mode from
            torch's global generator, sorted by frequency; B = 1.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "INITS",
    "hippo_legs_normal",
    "init_legs",
    "init_lin",
    "init_inv",
    "init_real",
    "init_random",
    "initial_modes",
]


def hippo_legs_normal(N: int) -> torch.Tensor:
    """Normal part ``S = A + P P^T`` of the HiPPO-LegS matrix, real (N, N) float64.

    ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` for n > k, ``-(n+1)`` for n = k, 0 above
    the diagonal, ``P_n = sqrt(n + 1/2)``; S equals ``-I/2`` plus a skew-symmetric matrix.
    """
    q = torch.sqrt(2.0 * torch.arange(N, dtype=torch.float64) + 1.0)
    A = -torch.tril(torch.outer(q, q), diagonal=-1) - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
    P = q / math.sqrt(2.0)
    return A + torch.outer(P, P)


def init_legs(N: int, H: int = 1):
    """Skew-HiPPO: the N/2 eigenvalues of the normal part of HiPPO-LegS with Im > 0.

    Returns ``A, B`` complex128 of shape (H, N/2), sorted by increasing Im(A);
    ``B = V^H b`` with ``b_n = sqrt(2n+1)`` the HiPPO-LegS input vector and V the
    orthonormal eigenvectors of the kept modes.
    """
    S = hippo_legs_normal(N)
    # S = -I/2 + K with K skew-symmetric; -iK is Hermitian with real eigenvalues w, K v = i w v.
    K = S + 0.5 * torch.eye(N, dtype=torch.float64)
    w, V = torch.linalg.eigh(-1j * K.to(torch.complex128))
    order = torch.argsort(w, descending=True)[: N // 2]
    order = order[torch.argsort(w[order])]  # keep the positive half, sorted by increasing frequency
    A = torch.complex(torch.full((N // 2,), -0.5, dtype=torch.float64), w[order])
    b = torch.sqrt(2.0 * torch.arange(N, dtype=torch.float64) + 1.0).to(torch.complex128)
    B = V[:, order].conj().T @ b
    return A.expand(H, -1).clone(), B.expand(H, -1).clone()


def init_lin(N: int, H: int = 1):
    """S4D-Lin: ``A_k = -1/2 + i pi k``, k = 0..N/2-1; B = 1."""
    k = torch.arange(N // 2, dtype=torch.float64)
    A = torch.complex(torch.full_like(k, -0.5), math.pi * k)
    return A.expand(H, -1).clone(), torch.ones(H, N // 2, dtype=torch.complex128)


def init_inv(N: int, H: int = 1):
    """S4D-Inv: ``A_k = -1/2 + i (N/pi) (N/(2k+1) - 1)``, k = 0..N/2-1; B = 1."""
    k = torch.arange(N // 2, dtype=torch.float64)
    A = torch.complex(torch.full_like(k, -0.5), (N / math.pi) * (N / (2 * k + 1) - 1))
    return A.expand(H, -1).clone(), torch.ones(H, N // 2, dtype=torch.complex128)


def init_real(N: int, H: int = 1):
    """S4D-Real: ``A_k = -(k+1)``, k = 0..N/2-1 (real modes); B = 1."""
    k = torch.arange(N // 2, dtype=torch.float64)
    A = torch.complex(-(k + 1), torch.zeros_like(k))
    return A.expand(H, -1).clone(), torch.ones(H, N // 2, dtype=torch.complex128)


def init_random(N: int, H: int = 1):
    """Random frequencies: ``A = -1/2 + i pi (N/2) U(0, 1)`` per channel and mode, sorted; B = 1."""
    n = N // 2
    imag = torch.sort(math.pi * n * torch.rand(H, n, dtype=torch.float64), dim=-1).values
    A = torch.complex(torch.full_like(imag, -0.5), imag)
    return A, torch.ones(H, n, dtype=torch.complex128)


INITS = {
    "legs": init_legs,
    "lin": init_lin,
    "inv": init_inv,
    "real": init_real,
    "random": init_random,
}


def initial_modes(init: str, state_dim: int, H: int):
    """``A, B`` complex128 (H, state_dim/2) for the initialisation named ``init``."""
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}; choose one of {', '.join(sorted(INITS))}.")
    if not isinstance(state_dim, int) or state_dim < 2 or state_dim % 2:
        raise ValueError(f"state_dim must be a positive even integer (the real order, 2 per stored mode), got {state_dim!r}.")
    return INITS[init](state_dim, H)
