"""Dense real SISO systems -> diagonal half-conjugate modes (``DiagonalSSM``).

A real ``r x r`` matrix ``A`` has eigenvalues in exact conjugate pairs
(LAPACK ``geev`` returns them so) and real eigenvalues.  With ``A = S diag(w) S^-1``,
``B~ = S^-1 B`` and ``C~ = C S`` the transfer function is
``sum_k C~_k B~_k / (s - w_k)``, and:

* a conjugate pair ``(w, conj w)`` becomes ONE stored mode ``lam = w`` (``Im w > 0``)
  with ``B = B~_k``, ``C = C~_k``; ``2 Re(C x)`` reproduces both terms;
* a real eigenvalue becomes one stored mode with ``Im lam = 0``,
  ``B = B~_k`` and ``C = C~_k / 2`` ("C halved": ``2 Re(C x)`` doubles it back).

Order -> stored modes rule: a real order ``r = 2p + q`` with ``p`` conjugate
pairs and ``q`` real eigenvalues needs ``p + q`` stored modes, i.e. between
``ceil(r/2)`` and ``r``.  In a batch the result has the maximum count over
the batch; the other channels are padded with inactive modes (``B = C = 0``,
eigenvalue -1 when continuous, 0 when discrete).

Each stored mode is scaled so that ``|B| == |C|`` (the split of the residue
``C B`` between B and C is free).

A defective (or numerically defective) ``A`` has no eigenvector basis; such
channels raise ``ValueError`` naming them (lower or raise the order by one to
get a diagonalisable reduced system).
"""
from __future__ import annotations

import numpy as np

from .system import DiagonalSSM

__all__ = ["diagonalize", "eigen_residues", "pack_modes", "PAD_MODE"]

#: eigenvalue of an inactive padding mode, per domain
PAD_MODE = {"continuous": -1.0, "discrete": 0.0}


def pack_modes(lam, B, C, keep, domain):
    """Move the modes with ``keep`` to the front and cut to the largest kept count.

    Parameters
    ----------
    lam, B, C : ndarray, complex, shape (batch, k)
    keep : ndarray of bool, shape (batch, k)
    domain : str

    Returns
    -------
    lam, B, C : ndarray, shape (batch, n_max); padded slots are inactive modes
    counts : ndarray of int, shape (batch,), kept modes per channel
    """
    counts = keep.sum(-1)
    n_max = int(counts.max()) if counts.size else 0
    order = np.argsort(~keep, axis=-1, kind="stable")[..., :n_max]
    valid = np.take_along_axis(keep, order, -1)
    lam = np.where(valid, np.take_along_axis(lam, order, -1), PAD_MODE[domain])
    B = np.where(valid, np.take_along_axis(B, order, -1), 0.0)
    C = np.where(valid, np.take_along_axis(C, order, -1), 0.0)
    return lam, B, C, counts


def eigen_residues(A, B, C):
    """Eigenvalues and pole residues of dense real SISO systems, without any check.

    ``A = S diag(w) S^-1``; the transfer function is ``sum_k Ct_k Bt_k / (s - w_k)`` with
    ``Bt = S^-1 B``, ``Ct = C S``.  LAPACK's real ``geev`` returns complex eigenvalues in exact
    conjugate pairs and real ones with ``Im == 0``.

    Parameters
    ----------
    A : ndarray, float64, shape (F, r, r);  B, C : ndarray, float64, shape (F, r)

    Returns
    -------
    w, Bt, Ct : ndarray, complex128, shape (F, r)
    cond : ndarray, float64, shape (F,)
        1-norm condition number of the eigenvector matrix (LAPACK normalises its columns);
        ``inf`` where it is singular.  Large values mean a (numerically) defective A.
    """
    w, S = np.linalg.eig(A)                                                # (F, r), (F, r, r)
    w = w.astype(np.complex128)
    S = S.astype(np.complex128)
    try:
        S_inv = np.linalg.inv(S)
        cond = np.abs(S).sum(-2).max(-1) * np.abs(S_inv).sum(-2).max(-1)      # 1-norm condition number
    except np.linalg.LinAlgError:                                           # an exactly singular S somewhere
        cond = np.linalg.cond(S, 1)
        ok = np.isfinite(cond)
        S_inv = np.zeros_like(S)
        if np.any(ok):
            S_inv[ok] = np.linalg.inv(S[ok])
        cond = np.where(ok, cond, np.inf)
    Bt = (S_inv @ B[..., None].astype(np.complex128))[..., 0]                # S^-1 B
    Ct = np.einsum("fi,fik->fk", C.astype(np.complex128), S)                 # C S
    return w, Bt, Ct, cond


def diagonalize(A, B, C, D=None, dt=None, domain="continuous", cond_max=1e12, return_counts=False):
    """Diagonalise dense real SISO systems into half-conjugate modes.

    Parameters
    ----------
    A : array_like, real, shape (..., r, r)
    B : array_like, real, shape (..., r, 1) or (..., r)
    C : array_like, real, shape (..., 1, r) or (..., r)
    D : array_like, real, shape (...), optional
    dt : optional, passed to the result
    domain : {"continuous", "discrete"}
    cond_max : float
        Largest accepted 1-norm condition number of the (column-normalised)
        eigenvector matrix; above it the channel counts as defective.
    return_counts : bool
        Also return the number of stored (non-padding) modes per channel.

    Returns
    -------
    DiagonalSSM with batch shape (...) and ``n = max_b (p_b + q_b)`` stored modes
    counts : ndarray of int, shape (...), only with ``return_counts``
    """
    if domain not in PAD_MODE:
        raise ValueError(f"domain must be 'continuous' or 'discrete', got {domain!r}.")
    A = np.asarray(A)
    if np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C):
        raise TypeError("diagonalize() expects a real dense realization (A, B, C); got complex arrays.")
    A = np.asarray(A, np.float64)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must have shape (..., r, r), got {A.shape}.")
    r = A.shape[-1]
    batch = A.shape[:-2]
    B, C = np.asarray(B, np.float64), np.asarray(C, np.float64)
    if B.size != int(np.prod(batch + (r,), dtype=int)) or C.size != B.size:
        raise ValueError(f"B and C must have shape {batch + (r,)} (or {batch + (r, 1)} and {batch + (1, r)}) "
                         f"for A of shape {A.shape}, got {B.shape} and {C.shape}.")
    B, C = B.reshape(batch + (r,)), C.reshape(batch + (r,))
    if D is None:
        D = np.zeros(batch)
    else:
        D = np.asarray(D, np.float64)
        if D.ndim == len(batch) + 2:                                         # (..., 1, 1) as from to_real()
            D = D[..., 0, 0]
        try:
            D = np.broadcast_to(D, batch)
        except ValueError:
            raise ValueError(f"D must be broadcastable to the batch shape {batch}, got shape {D.shape}.") from None
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B)) and np.all(np.isfinite(C))):
        raise ValueError("diagonalize() got NaN or infinite entries in (A, B, C).")

    flat = int(np.prod(batch, dtype=int))
    Af, Bf, Cf = A.reshape(flat, r, r), B.reshape(flat, r), C.reshape(flat, r)
    if r == 0:
        lam = np.zeros((flat, 0), complex)
        out = DiagonalSSM(lam.reshape(batch + (0,)), lam.reshape(batch + (0,)), lam.reshape(batch + (0,)),
                          D, dt, domain)
        return (out, np.zeros(batch, int)) if return_counts else out

    w, Bt, Ct, cond = eigen_residues(Af, Bf, Cf)
    bad = ~(cond <= cond_max)
    if np.any(bad):
        idx = np.unravel_index(np.flatnonzero(bad), batch) if batch else ()
        where = ", ".join(str(tuple(int(i[k]) for i in idx)) for k in range(min(5, int(bad.sum())))) if batch else "0"
        raise ValueError(
            f"the reduced A of channel(s) {where} is defective (eigenvector condition number "
            f"{float(np.max(np.where(bad, cond, 0))):.1e} > {cond_max:.0e}), so it has no diagonal form; "
            f"reduce to an order one lower or higher."
        )
    real = w.imag == 0
    upper = w.imag > 0
    keep = real | upper
    Bt = np.where(real, Bt.real, Bt)
    Ct = np.where(real, 0.5 * Ct.real, Ct)
    w = np.where(real, w.real, w)
    # split each residue evenly between B and C
    nb, nc = np.abs(Bt), np.abs(Ct)
    ok = (nb > 0) & (nc > 0)
    s = np.sqrt(np.where(ok, nc, 1.0) / np.where(ok, nb, 1.0))
    Bt, Ct = Bt * s, Ct / s

    lam, Bo, Co, counts = pack_modes(w, Bt, Ct, keep, domain)
    n = lam.shape[-1]
    out = DiagonalSSM(lam.reshape(batch + (n,)), Bo.reshape(batch + (n,)), Co.reshape(batch + (n,)),
                      D, dt, domain)
    return (out, counts.reshape(batch)) if return_counts else out
