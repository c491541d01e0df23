"""Modal truncation of diagonal systems: keep, per channel, the modes with the largest scores.

Every stored mode is a real subsystem of its own (the conjugate closure is a sum over modes):

    g_i(s) = rho_i / (s - lam_i) + conj(rho_i) / (s - conj(lam_i)),   rho_i = C_i B_i,

of real order 2 for a complex mode (``Im lam != 0``) and of real order 1 for a real mode
(``Im lam == 0``; then ``g_i = 2 Re(rho_i) / (s - lam_i)``, the "C halved" convention of
``DiagonalSSM``).  A real order r therefore buys r/2 complex modes, or one real mode per unit.

Scores (``mode_scores``), per stored mode, all of the real subsystem ``g_i``:

``"hinf"``
    its H-infinity norm ``sup_omega |g_i|``, exactly (closed form: the peak of a second-order
    real system is at omega = 0, at the end of the band (discrete), or at the root of a quadratic
    in a variable chosen so that nothing cancels; the candidates are evaluated directly).
    Real modes: ``2 |Re rho| / |lam|`` (continuous), ``2 |Re rho| / (1 - |lam|)`` (discrete).
``"hinf_bound"``
    LAST's score with the factor of the ``2 Re`` output: ``2 |rho| / |Re lam|`` (continuous),
    ``2 |rho| / (1 - |lam|)`` (discrete) for a complex mode, ``2 |Re rho| / ...`` for a real mode.
    It bounds ``"hinf"`` from above (triangle inequality; equal for real modes); for a lightly
    damped complex mode the two terms of ``g_i`` peak at opposite frequencies and the true peak is
    about half of it.
``"h2"``
    its H2 norm ``||g_i||_2`` (closed form, ``DiagonalSSM.h2_norm`` of the single mode).

The kept modes are not changed (no re-diagonalisation), D is kept, and
``||G - G_r||_inf <= sum of the "hinf" scores of the discarded modes`` (triangle inequality)
is reported as ``error_bound`` whatever score chose the modes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .balanced import check_order
from .diagonalize import pack_modes
from .gramians import _check_system, check_stable
from .system import DiagonalSSM

__all__ = ["mode_scores", "modal_truncation", "ModalTruncationResult"]

SCORES = ("hinf", "hinf_bound", "h2")


def _single_modes(sys):
    """Each stored mode as a system of its own: batch shape (..., n), one mode, no D."""
    return DiagonalSSM(sys.modes[..., None], sys.B[..., None], sys.C[..., None], domain=sys.domain)


def _quadratic_roots(p, q, r):
    """Real roots of ``p x^2 + q x + r = 0`` elementwise (NaN where there is none), without cancellation.

    Returns two arrays; for ``p == 0`` the single root of ``q x + r`` is given twice.
    """
    with np.errstate(all="ignore"):
        disc = q * q - 4.0 * p * r
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        t = -0.5 * (q + np.where(q >= 0, sq, -sq))
        x1 = np.where(p != 0, t / p, -r / q)
        x2 = np.where(p != 0, r / t, -r / q)
    return x1, x2


def _peak_gains(sys):
    """Exact ``sup_omega |g_i|`` of every stored mode's real subsystem, shape (..., n).

    ``g_i = (alpha s + beta) / (s^2 - 2 a s + |lam|^2)`` with ``alpha = 2 Re rho``,
    ``beta = -2 Re(rho conj(lam))``, ``a = Re lam``, ``w = Im lam``, ``q = |lam|^2``.

    Continuous, ``x = omega^2``: ``|g|^2 = (alpha^2 x + beta^2) / ((x - q)^2 + 4 a^2 x)``, stationary
    where ``alpha^2 x^2 + 2 beta^2 x - (alpha^2 q^2 - 2 beta^2 (a^2 - w^2)) = 0``.

    Discrete, ``x = 1 - cos(omega) = 2 sin(omega/2)^2`` (so that nothing cancels near z = 1; a mode
    with ``Re lam < 0`` is first mirrored, ``z -> -z``, which maps its peak near z = -1 there):
    ``|g|^2 = (N0 + N1 x) / (P0 + P1 x + P2 x^2)`` with ``N0 = (2 Re(rho (1 - conj lam)))^2``,
    ``N1 = -2 alpha beta``, ``P0 = |1 - lam|^4``, ``P1 = 4 (a (1 - a)^2 - (2 - a) w^2)``, ``P2 = 4 q``,
    stationary where ``N1 P2 x^2 + 2 N0 P2 x - (N1 P0 - N0 P1) = 0``.

    The candidates (the ends of the band and the stationary points inside it) are evaluated directly.
    """
    lam, rho = sys.modes, sys.residues
    if sys.is_discrete:
        flip = lam.real < 0
        lam, rho = np.where(flip, -lam, lam), np.where(flip, -rho, rho)
    a, w = lam.real, lam.imag
    alpha = 2.0 * rho.real
    beta = -2.0 * (rho * lam.conj()).real
    if sys.is_discrete:
        d1 = (1.0 - a) ** 2 + w * w                                        # |1 - lam|^2
        N0, N1 = (2.0 * (rho * (1.0 - lam.conj())).real) ** 2, -2.0 * alpha * beta
        P0, P1, P2 = d1 * d1, 4.0 * (a * (1.0 - a) ** 2 - (2.0 - a) * w * w), 4.0 * (a * a + w * w)
        x1, x2 = _quadratic_roots(N1 * P2, 2.0 * N0 * P2, -(N1 * P0 - N0 * P1))
        cands = [np.zeros_like(a), np.full_like(a, 2.0)] + [np.where((x > 0) & (x < 2), x, 0.0) for x in (x1, x2)]
        omega = 2.0 * np.arcsin(np.sqrt(0.5 * np.stack(cands, -1)))
    else:
        q = a * a + w * w
        p = 2.0 * (a - w) * (a + w)
        x1, x2 = _quadratic_roots(alpha * alpha, 2.0 * beta * beta, -(alpha * alpha * q * q - beta * beta * p))
        cands = [np.zeros_like(a)] + [np.where(x > 0, x, 0.0) for x in (x1, x2)]
        omega = np.sqrt(np.stack(cands, -1))
    one = DiagonalSSM(lam[..., None], np.ones_like(rho)[..., None], rho[..., None], domain=sys.domain)
    with np.errstate(all="ignore"):
        g = np.abs(one.freqresp(omega))                                   # (..., n, K)
    peak = np.nanmax(np.where(np.isfinite(g), g, np.nan), -1)
    return np.where(rho != 0, peak, 0.0)


def mode_scores(sys, score="hinf"):
    """Score of every stored mode's real subsystem (see the module notes), shape (..., n).

    Parameters
    ----------
    sys : DiagonalSSM
        Modes that carry signal (``C B != 0``) must be stable; the others score 0.
    score : {"hinf", "hinf_bound", "h2"}

    Returns
    -------
    ndarray, float64, shape (..., n)
    """
    _check_system(sys)
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(map(repr, SCORES))}, got {score!r}.")
    check_stable(sys, "mode scores")
    rho = sys.residues
    active = rho != 0
    if score == "hinf":
        return _peak_gains(sys)
    if score == "h2":
        return np.where(active, _single_modes(sys).h2_norm(), 0.0)
    lam = sys.modes
    dist = (1.0 - np.abs(lam)) if sys.is_discrete else -lam.real      # distance to the stability boundary
    weight = np.where(lam.imag == 0, np.abs(rho.real), np.abs(rho))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(active, 2.0 * weight / np.where(active, dist, 1.0), 0.0)


@dataclass(repr=False, eq=False)
class ModalTruncationResult:
    """Outcome of ``modal_truncation``.

    Attributes
    ----------
    system : DiagonalSSM
        Kept modes as they were (same B, C, D, dt, domain), moved to the front, padded with
        inactive modes to the largest count in the batch.
    order : int or ndarray of int, shape (...)
        Real order kept per channel (2 per complex mode, 1 per real mode); at most the requested one.
    n_modes : int or ndarray of int, shape (...)
        Kept stored modes per channel.
    kept : ndarray of bool, shape (..., n)
        Which of the original stored modes were kept.
    scores : ndarray, shape (..., n)
        The score of every original mode.
    error_bound : ndarray, shape (...)
        ``||G - G_r||_inf <=`` the sum of the exact peak gains of the discarded modes.
    """

    system: DiagonalSSM
    order: object
    n_modes: object
    kept: np.ndarray
    scores: np.ndarray
    error_bound: np.ndarray

    def __repr__(self):
        return f"ModalTruncationResult(system={self.system!r}, order={self.order!r})"


def modal_truncation(sys, order, score="hinf"):
    """Keep, per channel, the stored modes with the largest scores within a real order.

    Modes are taken in descending score; one that no longer fits (a complex mode, real
    order 2, when one unit is left) is skipped and the next ones are tried, so the kept
    real order is at most ``order`` (lower only when the remaining modes do not fit, or
    carry no signal: modes with ``C B == 0`` are never kept).

    Parameters
    ----------
    sys : DiagonalSSM, batch shape (...), n stored modes (real order 2n)
        Modes that carry signal must be stable.
    order : int or array_like of int, broadcastable to (...)
        Real order r per channel.  ``r`` at least the channel's full order (2 per complex mode,
        1 per real mode, at most 2n): the channel is returned as it is.
    score : {"hinf", "hinf_bound", "h2"}
        See ``mode_scores``.

    Returns
    -------
    ModalTruncationResult
    """
    _check_system(sys)
    batch, n = sys.batch_shape, sys.n_modes
    r_req = check_order(order, batch)
    scores = mode_scores(sys, score)
    peaks = scores if score == "hinf" else mode_scores(sys, "hinf")
    flat = int(np.prod(batch, dtype=int))
    sc = scores.reshape(flat, n)
    cost = np.where(sys.modes.imag == 0, 1, 2).reshape(flat, n)
    r = r_req.reshape(flat)
    as_is = r >= cost.sum(-1)

    by_score = np.argsort(-sc, axis=-1, kind="stable")                  # (F, n) mode indices
    left = r.copy()
    kept = np.zeros((flat, n), bool)
    rows = np.arange(flat)
    for j in range(n):
        i = by_score[:, j]
        c = cost[rows, i]
        take = (c <= left) & (sc[rows, i] > 0)
        kept[rows, i] = take
        left = left - np.where(take, c, 0)
    kept[as_is] = True
    order_out = (cost * kept).sum(-1)

    lam, B, C, counts = pack_modes(sys.modes.reshape(flat, n), sys.B.reshape(flat, n), sys.C.reshape(flat, n),
                                   kept, sys.domain)
    k = lam.shape[-1]
    D = np.broadcast_to(sys.D, batch)
    dt = None if sys.dt is None else np.broadcast_to(sys.dt, batch)
    system = DiagonalSSM(lam.reshape(batch + (k,)), B.reshape(batch + (k,)), C.reshape(batch + (k,)), D, dt,
                         sys.domain)
    bound = np.where(kept, 0.0, peaks.reshape(flat, n)).sum(-1)
    kept = kept.reshape(batch + (n,))
    if batch:
        return ModalTruncationResult(system, order_out.reshape(batch), counts.reshape(batch), kept, scores,
                                     bound.reshape(batch))
    return ModalTruncationResult(system, int(order_out[0]), int(counts[0]), kept, scores, bound.reshape(()))
