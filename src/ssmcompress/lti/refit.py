"""Reduced systems for a finite window: bring modes inside a radius, refit the output by least squares.

A sequence model convolves only the first L taps of each kernel.  A reduced system
that is good over those taps is what matters; two operations serve that:

``stabilize_modes``
    Discrete modes outside the disc of radius ``radius`` (< 1) are moved radially onto
    it (the angle, i.e. the frequency, is kept; ``B`` is kept).  Finite-horizon balanced
    truncation gives no stability guarantee, and layers whose parameterisation has
    ``Re(A) < 0`` built in cannot store ``|lam_d| >= 1``.
``refit_output``
    For fixed modes ``lam`` and ``B`` the impulse response
    ``h[l] = 2 Re(sum_i C_i B_i lam_i**l) + D delta[l]`` is linear in ``(Re C, Im C, D)``,
    so the best output vector over L taps in the 2-norm is a linear least-squares
    problem, solved exactly (pseudo-inverse by SVD of the column-scaled design matrix).
"""
from __future__ import annotations

import numbers

import numpy as np

from .system import DiagonalSSM

__all__ = ["stabilize_modes", "refit_output", "impulse_response"]


def _check_discrete(sys, what):
    if not isinstance(sys, DiagonalSSM):
        raise ValueError(f"{what} takes a DiagonalSSM, got {type(sys).__name__}.")
    if not sys.is_discrete:
        raise ValueError(f"{what} works on discrete systems, got a continuous one; discretize it first.")


def impulse_response(sys, L):
    """``h[..., l] = kernel[..., l] + D delta[l]``, shape (..., L): the whole length-L response."""
    h = np.array(sys.kernel(L), dtype=float)
    h[..., 0] += np.broadcast_to(sys.D, sys.batch_shape)
    return h


def stabilize_modes(sys, radius=1.0 - 1e-6):
    """Move discrete modes with ``|lam| > radius`` radially onto the circle of that radius.

    Parameters
    ----------
    sys : DiagonalSSM, discrete
    radius : float in (0, 1)

    Returns
    -------
    (DiagonalSSM, ndarray of int, shape (...))
        The system (B, C, D unchanged) and the number of moved modes per channel.
    """
    _check_discrete(sys, "stabilize_modes")
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not 0 < radius < 1:
        raise ValueError(f"radius must be a number in (0, 1), got {radius!r}.")
    mag = np.abs(sys.modes)
    out = mag > radius
    lam = np.where(out, sys.modes / np.where(out, mag, 1.0) * radius, sys.modes)
    return DiagonalSSM(lam, sys.B, sys.C, sys.D, sys.dt, "discrete"), out.sum(-1)


def refit_output(sys, target, fit_D=True, active=None, rcond=1e-10, ridge=1e-3):
    """Least-squares output vector C (and D) of a discrete diagonal system over L taps.

    Minimises ``||h - target||_2^2 + (ridge * s_max)^2 ||z - z_0||^2`` over ``Re C, Im C``
    of the active modes (and D), where ``h`` is the length-L impulse response including
    ``D`` at lag 0, ``z`` the coefficients in column-scaled coordinates, ``z_0`` those of
    the system's own C (and D) and ``s_max`` the largest singular value of the scaled
    design matrix.  The ridge toward the given C keeps the fit from trading accuracy for
    huge, cancelling coefficients (nearly collinear modes give a design matrix with
    condition numbers of 1e10 and more; float32 layers cannot carry such C), and the
    result is never worse than the given C: ``||h - target||`` does not increase.
    ``ridge=0`` gives the plain minimum-norm least-squares solution.

    Parameters
    ----------
    sys : DiagonalSSM, discrete, batch shape (...), n modes
    target : array_like, shape (..., L)
        The response to match, ``D`` included at lag 0 (see :func:`impulse_response`).
    fit_D : bool
        Also refit the feed-through D (else D is kept and subtracted from the target).
    active : array_like of bool, shape (..., n), optional
        Modes that may carry output; the others get ``C = 0`` (default: ``C * B != 0``).
    rcond : float
        Relative cut-off of the singular values of the column-scaled design matrix.
    ridge : float
        Relative Tikhonov weight toward the given C and D (0 = plain least squares).

    Returns
    -------
    DiagonalSSM
        Same modes and B, new C (and D).
    """
    _check_discrete(sys, "refit_output")
    target = np.asarray(target, dtype=float)
    batch, n = sys.batch_shape, sys.n_modes
    if target.ndim != len(batch) + 1 or target.shape[:-1] != batch or target.shape[-1] < 1:
        raise ValueError(f"target must have shape {batch + ('L',)} with L >= 1, got {target.shape}.")
    if not np.all(np.isfinite(target)):
        raise ValueError("target contains non-finite values.")
    if isinstance(rcond, bool) or not isinstance(rcond, numbers.Real) or not 0 < rcond < 1:
        raise ValueError(f"rcond must be a number in (0, 1), got {rcond!r}.")
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not 0 <= ridge < 1:
        raise ValueError(f"ridge must be a number in [0, 1), got {ridge!r}.")
    L = target.shape[-1]
    B = np.broadcast_to(sys.B, batch + (n,))
    if active is None:
        active = (np.broadcast_to(sys.C, batch + (n,)) * B) != 0
    active = np.asarray(active, dtype=bool)
    if active.shape != batch + (n,):
        raise ValueError(f"active must have shape {batch + (n,)}, got {active.shape}.")
    D = np.broadcast_to(np.asarray(sys.D, dtype=float), batch).copy()

    flat = int(np.prod(batch, dtype=int))
    lam = sys.modes.reshape(flat, n)
    Bf = B.reshape(flat, n)
    act = active.reshape(flat, n)
    y = target.reshape(flat, L).copy()
    if not fit_D:
        y[:, 0] -= D.reshape(flat)
    C0 = np.broadcast_to(sys.C, batch + (n,)).reshape(flat, n)
    Cnew = np.zeros((flat, n), np.complex128)
    Dnew = D.reshape(flat).copy()
    # chunks keep the (chunk, L, 2n + 1) design matrix near 32 MB
    chunk = max(1, int(4e6 // max(1, L * (2 * n + 1))))
    ell = np.arange(L)
    for s in range(0, flat, chunk):
        sl = slice(s, min(s + chunk, flat))
        with np.errstate(under="ignore"):
            w = Bf[sl, None, :] * np.power(lam[sl, None, :], ell[None, :, None])  # (c, L, n): B lam^l
        w = np.where(act[sl, None, :], w, 0.0)
        # h = sum_i 2 (Re C_i Re w_i - Im C_i Im w_i) [+ D delta_0]
        cols = [2.0 * w.real, -2.0 * w.imag]
        if fit_D:
            e0 = np.zeros((w.shape[0], L, 1))
            e0[:, 0, 0] = 1.0
            cols.append(e0)
        Phi = np.concatenate(cols, -1)                                     # (c, L, 2n [+1])
        # columns at rounding level (e.g. Im of a real mode) carry no information: drop them
        scale = np.linalg.norm(Phi, axis=1, keepdims=True)
        dead = scale <= 1e-12 * scale.max(-1, keepdims=True)
        Phi = np.where(dead, 0.0, Phi)
        scale = np.where(dead | (scale == 0), 1.0, scale)
        Phis = Phi / scale
        z0 = np.concatenate([C0[sl].real, C0[sl].imag] + ([Dnew[sl, None]] if fit_D else []), -1) * scale[:, 0, :]
        z0 = np.where(dead[:, 0, :] | (ridge == 0), 0.0, z0)   # ridge = 0: minimum-norm least squares
        U, S, Vh = np.linalg.svd(Phis, full_matrices=False)                 # (c, L, p), (c, p), (c, p, p)
        smax = S[:, :1]
        alpha = (ridge * smax) ** 2
        keep = S > rcond * smax
        gain = np.where(keep, S / np.where(keep, S * S + alpha, 1.0), 0.0)
        resid = y[sl] - (Phis @ z0[..., None])[..., 0]
        dz = (Vh.swapaxes(-1, -2) @ (gain * (U.swapaxes(-1, -2) @ resid[..., None])[..., 0])[..., None])[..., 0]
        coef = (z0 + dz) / scale[:, 0, :]
        Cnew[sl] = np.where(act[sl], coef[:, :n] + 1j * coef[:, n:2 * n], 0.0)
        if fit_D:
            Dnew[sl] = coef[:, 2 * n]
    return DiagonalSSM(sys.modes, sys.B, Cnew.reshape(batch + (n,)), Dnew.reshape(batch), sys.dt, "discrete")
