"""Hankel singular values, square-root balanced truncation and balanced singular perturbation.

Balanced reduction acts on the real system (the conjugate closure of order
m = 2n, coordinates of ``DiagonalSSM.to_real()``), never on the half system.

1. Real factors ``P = Fp Fp^T``, ``Q = Fq Fq^T`` of the real-realization Gramians
   (``gramians.real_gramian_factors``): pivoted Cholesky of the Cauchy-like
   Gramians from their generators, conjugate partners pivoted together and
   mixed to real form inside each pair only, so they exist for every input,
   are accurate entry-wise and keep their grading.
2. ``Fq^T Fp = U diag(sigma) V^T``: Hankel singular values sigma, descending.
   Against 40-150 digit references they are accurate to ~1e-14 relative down to
   ~1e-18 of the largest (below that to ~1e-18 of the largest, absolute; slycot's
   ab09ad: ~1e-18 of the largest, absolute, everywhere).
   Channels with a mode near the real axis but not on it (``Im lam / |lam|`` below
   ~0.05) would lose that (the forced partner pivot breaks the grading of the
   factors: 1e-5 relative measured at 1e-5 off the axis); their values come from
   complete-pivoting complex closure factors instead (``gramians.complex_hankel_singular_values``).
3. Square-root projection ``T_r = Fp V_r sigma_r^-1/2``, ``W_r = Fq U_r sigma_r^-1/2``
   (``W_r^T T_r = I``), ``A_r = W_r^T A T_r``, ``B_r = W_r^T B``, ``C_r = C T_r``: real.
   Singular perturbation (``balanced_singular_perturbation``) keeps the same r states
   and residualises the next k (up to the numerical rank; the states below it are
   numerically uncontrollable or unobservable and are truncated): with the unscaled
   ``G = (Fq U)^T A (Fp V)``, ``Bg = (Fq U)^T B``, ``Cg = C (Fp V)`` on the first r + k
   columns (so that ``A_balanced = sigma^-1/2 G sigma^-1/2``) and ``N = s0 sigma_2 - G_22``,

       A_r = S (G_11 + G_12 N^-1 G_21) S,   B_r = S (Bg_1 + G_12 N^-1 Bg_2),
       C_r = (Cg_1 + Cg_2 N^-1 G_21) S,     D_r = D + Cg_2 N^-1 Bg_2,     S = sigma_1^-1/2,

   which is ``A_11 + A_12 (s0 I - A_22)^-1 A_21`` etc. of the balanced realization with the
   fast states' ``sigma_2^-1/2`` scaling cancelled (it never enters).  ``s0 = 0`` for
   continuous systems (``x2' = 0``), ``s0 = 1`` for discrete ones (``x2[k+1] = x2[k]``,
   the discrete singular perturbation approximation): ``G_r(s0) = G(s0)``, the DC gain.
4. Re-diagonalisation (``diagonalize.diagonalize``), checked against the dense
   ``(A_r, B_r, C_r)`` at a few points.

Error bound (continuous, and discrete infinite horizon), for truncation and singular
perturbation alike: ``||G - G_r||_inf <= 2 * sum_{k > r} sigma_k``.  With a finite horizon
the singular values are those of the length-L Hankel operator and the bound is only
indicative (and the truncated system need not be stable).
"""
from __future__ import annotations

import contextlib
import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .diagonalize import PAD_MODE, diagonalize
from .gramians import (_check_horizon, _check_system, check_stable, complex_hankel_singular_values,
                       near_real_channels, real_gramian_factors)
from .system import DiagonalSSM

__all__ = ["hankel_singular_values", "balanced_truncation", "balanced_singular_perturbation",
           "BalancedReductionResult", "BalancedTruncationResult"]


def _real_factors(sys, horizon):
    """Real factors of the Gramians of ``sys.to_real()``: ``P = Fp Fp^T``, ``Q = Fq Fq^T``, and ``Fq^T Fp``."""
    Fp, Fq = real_gramian_factors(sys, horizon)
    M = np.ascontiguousarray(Fq.swapaxes(-1, -2)) @ Fp                              # (..., m, m)
    return Fp, Fq, M


def hankel_singular_values(sys, horizon=None, workers=None):
    """Hankel singular values of the real system (conjugate closure, order 2n).

    Parameters
    ----------
    sys : DiagonalSSM
        Stable, or any discrete system when ``horizon`` is given.
    horizon : int, optional
        Discrete systems: use the Gramians of the length-``horizon`` kernel.
    workers : int, optional
        Threads over chunks of the batch (default: the number of CPUs).

    Returns
    -------
    ndarray, float64, shape (..., 2n), descending per channel.
    """
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if horizon is None:
        check_stable(sys, "Hankel singular values with an infinite horizon")
    batch, m = sys.batch_shape, sys.order
    if m == 0:
        return np.zeros(batch + (0,))
    flat_sys = _flatten(sys)

    def work(sl):
        part = flat_sys[sl]
        if horizon is not None:              # the values only: no real factors to form and throw away
            return complex_hankel_singular_values(part, horizon)
        return _near_real_fix(part, np.linalg.svd(_real_factors(part, horizon)[2], compute_uv=False), horizon)

    parts = _map_chunks(work, flat_sys.batch_shape[0], m, workers)
    return np.concatenate(parts).reshape(batch + (m,)) if parts else np.zeros(batch + (m,))


@dataclass(repr=False, eq=False)
class BalancedReductionResult:
    """Outcome of ``balanced_truncation`` and ``balanced_singular_perturbation``.

    Attributes
    ----------
    system : DiagonalSSM
        Reduced system, same domain and dt, batch shape (...), ``n_out`` stored
        modes (maximum over the batch; inactive padding elsewhere).  Truncation
        keeps D; singular perturbation changes it (per channel).
    hsv : ndarray, shape (..., 2n)
        Hankel singular values of the original real system, descending.
    order : int or ndarray of int, shape (...)
        Real order of each reduced channel (a plain int when the batch shape is ()).
    n_modes : int or ndarray of int, shape (...)
        Stored (active, non-padding) modes of each reduced channel.
    horizon : int or None
    method : str
        ``"truncation"`` or ``"singular_perturbation"``.
    """

    system: DiagonalSSM
    hsv: np.ndarray
    order: object
    n_modes: object
    horizon: object
    method: str = "truncation"

    @property
    def error_bound(self):
        """``2 * sum of the discarded Hankel singular values`` per channel, shape (...)."""
        bounds = self.error_bounds()
        r = np.asarray(self.order)
        return np.take_along_axis(bounds, r[..., None], -1)[..., 0] if bounds.ndim > 1 else bounds[int(r)]

    def error_bounds(self):
        """Error bound of every order from the same factorisation.

        Returns
        -------
        ndarray, shape (..., 2n + 1)
            Entry r is ``2 * sum_{k >= r} hsv[k]`` (0-based), the bound for real order r.
        """
        tail = np.cumsum(self.hsv[..., ::-1], -1)[..., ::-1]
        return 2.0 * np.concatenate([tail, np.zeros(self.hsv.shape[:-1] + (1,))], -1)

    def __repr__(self):
        return f"BalancedReductionResult(method={self.method!r}, system={self.system!r}, order={self.order!r})"


#: the name under which the result of ``balanced_truncation`` was introduced
BalancedTruncationResult = BalancedReductionResult


def check_order(order, batch):
    """Real orders per channel: ``order`` (non-negative int or int array) broadcast to ``batch``."""
    arr = np.asarray(order)
    if order is None or arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(int)
        else:
            raise TypeError(f"order must be a non-negative integer (or integer array), got {order!r}.")
    if np.any(arr < 0):
        raise ValueError(f"order must be non-negative, got minimum {int(arr.min())}.")
    try:
        return np.broadcast_to(arr, batch).astype(int)
    except ValueError:
        raise ValueError(f"order must be broadcastable to the batch shape {batch}, got shape {arr.shape}.") from None


def _requested_orders(sys, hsv, order, energy):
    batch, m = hsv.shape[:-1], hsv.shape[-1]
    if (order is None) == (energy is None):
        raise ValueError("give exactly one of order=r (real order) or energy=fraction, "
                         f"got order={order!r} and energy={energy!r}.")
    if order is not None:
        return check_order(order, batch)
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not (0.0 < energy <= 1.0):
        raise ValueError(f"energy must be a fraction in (0, 1], got {energy!r}.")
    cs = np.cumsum(hsv, -1)
    total = cs[..., -1:] if m else np.zeros(batch + (1,))
    r = np.sum(cs < energy * total, -1) + 1
    return np.where(total[..., 0] > 0, np.minimum(r, m), 0).astype(int)


def _apply_A(sys_modes, V):
    """``A_real @ V`` for the block realization ``[[a, -w], [w, a]]`` without forming A."""
    n = sys_modes.shape[-1]
    a, w = sys_modes.real[..., :, None], sys_modes.imag[..., :, None]
    V1, V2 = V[..., :n, :], V[..., n:, :]
    return np.concatenate([a * V1 - w * V2, w * V1 + a * V2], -2)


def _dense_tf_check(A, B, C, red, domain):
    """Max relative difference between dense (A, B, C) and diagonal ``red`` transfer functions.

    Evaluated at points beyond all poles (continuous: right of them, discrete: outside a circle
    containing them), where both evaluations are well conditioned.
    """
    lam = red.modes                                                          # (g, k)
    t = np.array([0.0, 0.3, 1.0, 3.0, 10.0])
    if domain == "discrete":
        R = 1.5 * np.maximum(1.0, np.abs(lam).max(-1, initial=0.0))[:, None]
        s = R * np.exp(1j * np.pi * t / 10.0)                                 # (g, F)
    else:
        rho = np.maximum(np.abs(lam).max(-1, initial=0.0), 1e-12)[:, None]
        x0 = np.maximum(lam.real.max(-1, initial=0.0), 0.0)[:, None] + 0.5 * rho
        s = x0 + 1j * rho * t
    r = A.shape[-1]
    M = s[..., None, None] * np.eye(r) - A[:, None]                          # (g, F, r, r)
    rhs = np.broadcast_to(B[:, None, :, None], M.shape[:-1] + (1,))
    dense = (C[:, None, None, :] @ np.linalg.solve(M, rhs))[..., 0, 0]
    res = red.residues[:, None, :]
    sk = s[..., None]
    diag = (res / (sk - lam[:, None, :]) + res.conj() / (sk - lam.conj()[:, None, :])).sum(-1)
    scale = np.maximum(np.abs(dense).max(-1), 1e-300)
    return np.abs(diag - dense).max(-1) / scale


def balanced_truncation(sys, order=None, energy=None, horizon=None, check_rtol=1e-6, workers=None):
    """Square-root balanced truncation of every channel, re-diagonalised.

    Parameters
    ----------
    sys : DiagonalSSM, batch shape (...), n stored modes (real order m = 2n)
    order : int or array_like of int, broadcastable to (...), optional
        Real order r of the reduced systems.  ``r >= 2n``: the channel is returned
        as it is.  ``r = 0``: no modes (only D).  States whose Hankel singular value
        is at most ``2n * eps * hsv[0]`` are never kept (they are numerically
        uncontrollable or unobservable), so the order can come out lower.
    energy : float in (0, 1], optional
        Instead of ``order``: the smallest r whose kept Hankel singular values
        reach this fraction of their sum (0 for a zero channel).
    horizon : int, optional
        Discrete systems: balance the Gramians of the length-``horizon`` kernel
        (serves unstable modes as well; the result need not be stable).
    check_rtol : float
        The diagonal result's transfer function is compared with the dense
        reduced one at a few points; a relative difference above this
        raises ValueError (numerically defective reduced A).
    workers : int, optional
        Threads over chunks of the batch (numpy's LAPACK calls release the GIL);
        default: the number of CPUs.  Chunks also bound the memory to ~256 MB.

    Returns
    -------
    BalancedReductionResult
        ``.system`` (DiagonalSSM, same domain, dt and D; stored modes = max over the
        batch of ``p + q`` for p conjugate pairs and q real eigenvalues, padded with
        inactive modes), ``.hsv`` (..., 2n), ``.order``, ``.n_modes``,
        ``.error_bound`` (...), ``.error_bounds()`` (..., 2n + 1).
    """
    return _balanced_reduction(sys, order, energy, horizon, check_rtol, workers, residualise=False)


def balanced_singular_perturbation(sys, order=None, energy=None, check_rtol=1e-6, workers=None):
    """Balanced singular perturbation (balanced residualisation) of every channel, re-diagonalised.

    The same balancing as ``balanced_truncation`` (same Hankel singular values, same
    kept states, same error bound ``2 * sum of the discarded Hankel singular values``),
    but the discarded states are set to their steady state instead of zero:
    continuous ``A_r = A_11 - A_12 A_22^-1 A_21``, ``D_r = D - C_2 A_22^-1 B_2``;
    discrete ``A_r = A_11 + A_12 (I - A_22)^-1 A_21``, ``D_r = D + C_2 (I - A_22)^-1 B_2``
    (and B_r, C_r alike; see the module notes).  The reduced system matches the DC gain,
    ``G_r(0) = G(0)`` (continuous) or ``G_r(1) = G(1)`` (discrete), up to the states below
    the numerical rank (truncated, worth at most ``2 * sum`` of their tiny singular values),
    and is stable.  Infinite-horizon Gramians only (stable systems).

    Parameters
    ----------
    sys : DiagonalSSM, batch shape (...), stable, n stored modes (real order m = 2n)
    order, energy : as in ``balanced_truncation`` (exactly one of them)
        ``r >= 2n`` returns the channel as it is; ``r = 0`` gives the constant ``G(s0)``.
    check_rtol, workers : as in ``balanced_truncation``

    Returns
    -------
    BalancedReductionResult
        As for ``balanced_truncation``, with ``method == "singular_perturbation"`` and
        ``.system.D`` the reduced feed-through (per channel).
    """
    return _balanced_reduction(sys, order, energy, None, check_rtol, workers, residualise=True)


def _balanced_reduction(sys, order, energy, horizon, check_rtol, workers, residualise):
    """Balanced truncation (``residualise=False``) or singular perturbation, over chunks of the batch."""
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if isinstance(check_rtol, bool) or not isinstance(check_rtol, numbers.Real) or not check_rtol > 0:
        raise ValueError(f"check_rtol must be a positive number, got {check_rtol!r}.")
    method = "singular_perturbation" if residualise else "truncation"
    if horizon is None:
        what = "balanced singular perturbation" if residualise else "balanced truncation"
        check_stable(sys, f"Hankel singular values and {what} with an infinite horizon")
    batch, n = sys.batch_shape, sys.n_modes
    m = 2 * n
    flat = int(np.prod(batch, dtype=int))
    r_checked = _requested_orders(sys, np.zeros(batch + (m,)), order, energy)  # validate early
    r_req = None if order is None else r_checked.reshape(flat)
    flat_sys = _flatten(sys)

    def work(sl):
        r = None if r_req is None else r_req[sl]
        return _reduce_chunk(flat_sys[sl], sl.start, batch, r, energy, horizon, check_rtol, residualise)

    parts = _map_chunks(work, flat, m, workers)
    hsv = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, m))
    r_eff = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, int)
    counts = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, int)
    D = np.concatenate([p[6] for p in parts]) if parts else np.zeros(0)
    n_out = int(counts.max()) if flat else 0
    lam = np.full((flat, n_out), PAD_MODE[sys.domain], np.complex128)
    Bo = np.zeros((flat, n_out), np.complex128)
    Co = np.zeros((flat, n_out), np.complex128)
    for (sl, part) in zip(_chunks(flat, m, workers), parts):
        k = part[3].shape[-1]
        lam[sl, :k], Bo[sl, :k], Co[sl, :k] = part[3], part[4], part[5]
    system = DiagonalSSM(lam.reshape(batch + (n_out,)), Bo.reshape(batch + (n_out,)),
                         Co.reshape(batch + (n_out,)), D.reshape(batch),
                         None if sys.dt is None else np.broadcast_to(sys.dt, batch), sys.domain)
    hsv = hsv.reshape(batch + (m,))
    if batch:
        order_out, modes_out = r_eff.reshape(batch), counts.reshape(batch)
    else:
        order_out, modes_out = int(r_eff[0]), int(counts[0])
    return BalancedReductionResult(system, hsv, order_out, modes_out, horizon, method)


def _near_real_fix(sys, hsv, horizon):
    """Replace the Hankel singular values of near-real channels (flat batch) by the accurate ones
    (with a finite horizon: of every channel).

    The pair-pivoted real factors are graded, and the small singular values of ``Fq^T Fp``
    accurate, unless a mode lies close to the real axis without being on it
    (``gramians.near_real_channels``); those channels get ``complex_hankel_singular_values``.
    Their singular vectors (used only for the dominant subspaces) are still the real ones.
    """
    if not hsv.shape[-1]:
        return hsv
    if horizon is not None:
        # Finite horizon: the pair-pivoted Cholesky of the formed Gramians must take a partner's pivot
        # even when it is far below the largest one left, which costs up to ~1e-6 relative on the smaller
        # values (against 60-digit references); the unpaired complex factors keep ~1e-9.
        return complex_hankel_singular_values(sys, horizon)
    bad = np.flatnonzero(near_real_channels(sys))
    if bad.size:
        hsv = hsv.copy()
        hsv[bad] = complex_hankel_singular_values(sys[bad], horizon)
    return hsv


def _flatten(sys):
    batch, n = sys.batch_shape, sys.n_modes
    flat = int(np.prod(batch, dtype=int))
    return DiagonalSSM(sys.modes.reshape(flat, n), sys.B.reshape(flat, n), sys.C.reshape(flat, n),
                       np.broadcast_to(sys.D, batch).reshape(flat),
                       None if sys.dt is None else np.broadcast_to(sys.dt, batch).reshape(flat), sys.domain)


_CHUNK_BYTES = 256 * 2 ** 20
_CHUNK_SYSTEMS = 256


def _chunks(flat, m, workers):
    """Slices of the flat batch: at least one per worker, each within the memory budget.

    At most ``_CHUNK_SYSTEMS`` systems per chunk: the factor loop works on (chunk, n) arrays,
    which then stay in cache.
    """
    workers = _n_workers(workers)
    per_system = max(1, 8 * 16 * m * m)                                       # ~8 complex (m, m) arrays live
    size = max(1, min(_CHUNK_BYTES // per_system, _CHUNK_SYSTEMS, -(-flat // workers)))
    return [slice(i, min(i + size, flat)) for i in range(0, flat, size)]


def _n_workers(workers):
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    return int(workers)


def _map_chunks(fn, flat, m, workers):
    """``fn`` over the chunks of the flat batch, on ``workers`` threads.

    With more than one worker the BLAS/LAPACK thread pools are limited to one thread for the
    duration (process-wide, through threadpoolctl when installed): the matrices are small,
    and nested BLAS threads on top of the workers oversubscribe the CPUs (measured: the batched
    SVD of 1536 64x64 matrices 3.5x slower on 2 CPUs).
    """
    chunks = _chunks(flat, m, workers)
    nw = min(_n_workers(workers), len(chunks))
    if nw <= 1:
        return [fn(sl) for sl in chunks]
    with _single_threaded_blas(), ThreadPoolExecutor(nw) as pool:
        return list(pool.map(fn, chunks))


_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMITER = None


@contextlib.contextmanager
def _single_threaded_blas():
    """One BLAS thread while any call here runs its worker pool; the caller's setting afterwards.

    The limit is process-wide, so overlapping calls (from the user's own threads) share one
    limiter: the first sets it, the last restores the original setting.
    """
    global _BLAS_USERS, _BLAS_LIMITER
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                                        # pragma: no cover
        yield
        return
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_LIMITER = threadpool_limits(1)
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                _BLAS_LIMITER.restore_original_limits()
                _BLAS_LIMITER = None


class _Balancing:
    """The shared balance step of a flat chunk (batch shape (F,)).

    ``Fp, Fq`` real Gramian factors (F, m, m); ``U, sig, Vh`` the SVD of ``Fq^T Fp``;
    ``hsv`` the reported Hankel singular values (accurate ones for near-real channels);
    ``rank`` the numerical rank (states above ``m * eps`` of the largest value);
    ``order`` the kept real order per channel (``m`` where the channel is kept as it is);
    ``as_is`` channels whose requested order is at least m.
    """

    def __init__(self, sys, r_req, energy, horizon):
        flat, m = sys.batch_shape[0], sys.order
        self.Fp, self.Fq, M = _real_factors(sys, horizon)
        if m:
            self.U, self.sig, self.Vh = np.linalg.svd(M)         # sig goes with U, Vh in the projection
        else:
            self.U, self.sig, self.Vh = M, np.zeros((flat, 0)), M
        self.hsv = _near_real_fix(sys, self.sig, horizon)        # reported values, order choice and bounds
        if r_req is None:
            r_req = _requested_orders(sys, self.hsv, None, energy)
        eps_m = m * np.finfo(float).eps
        self.rank = (np.minimum(np.sum(self.hsv > eps_m * self.hsv[:, :1], -1),
                                np.sum(self.sig > eps_m * self.sig[:, :1], -1)) if m else np.zeros(flat, int))
        self.as_is = r_req >= m
        self.order = np.where(self.as_is, m, np.minimum(r_req, self.rank))

    def project(self, idx, r, k, lam, B_real, C_real, D, s0):
        """Dense real reduced systems of channels ``idx``: keep r balanced states, residualise the next k.

        ``k = 0`` is truncation.  Returns ``A_r`` (g, r, r), ``B_r`` (g, r), ``C_r`` (g, r), ``D_r`` (g,).
        """
        q = r + k
        FpV = self.Fp[idx] @ self.Vh[idx, :q].swapaxes(-1, -2)                   # (g, m, q), T without sigma
        FqUt = np.ascontiguousarray((self.Fq[idx] @ self.U[idx, :, :q]).swapaxes(-1, -2))
        G = FqUt @ _apply_A(lam[idx], FpV)                                      # (g, q, q)
        Bg = FqUt @ B_real[idx][..., None]                                      # (g, q, 1)
        Cg = C_real[idx][:, None, :] @ FpV                                      # (g, 1, q)
        Dr = np.array(D[idx], np.float64)
        if k:
            N = s0 * (self.sig[idx, r:q, None] * np.eye(k)) - G[:, r:, r:]      # s0 sigma_2 - G_22
            try:
                Z = np.linalg.solve(N, np.concatenate([G[:, r:, :r], Bg[:, r:]], -1))   # (g, k, r + 1)
            except np.linalg.LinAlgError:
                raise ValueError(f"singular perturbation to order {int(r)}: the residualised block "
                                 "s0 I - A_22 is singular for some channel; choose another order.") from None
            Dr = Dr + (Cg[..., r:] @ Z[..., r:])[:, 0, 0]
            G, Bg, Cg = (G[:, :r, :r] + G[:, :r, r:] @ Z[..., :r], Bg[:, :r] + G[:, :r, r:] @ Z[..., r:],
                         Cg[..., :r] + Cg[..., r:] @ Z[..., :r])
        s_inv = 1.0 / np.sqrt(self.sig[idx, :r])
        return (s_inv[:, :, None] * G * s_inv[:, None, :], s_inv * Bg[..., 0], Cg[:, 0, :] * s_inv, Dr)


def _reduce_chunk(sys, offset, batch, r_req, energy, horizon, check_rtol, residualise):
    """Balanced reduction of a flat chunk (batch shape (F,)); returns hsv, r_eff, counts, lam, B, C, D."""
    flat, n = sys.batch_shape[0], sys.n_modes
    bal = _Balancing(sys, r_req, energy, horizon)
    r_eff, as_is = bal.order, bal.as_is
    fast = np.where(as_is, 0, bal.rank - r_eff) if residualise else np.zeros(flat, int)
    s0 = 1.0 if sys.is_discrete else 0.0

    lam_in, B_in, C_in = sys.modes, sys.B, sys.C
    B_real = np.concatenate([B_in.real, B_in.imag], -1)                     # [Re b; Im b]
    C_real = 2.0 * np.concatenate([C_in.real, -C_in.imag], -1)              # 2 [Re c, -Im c]
    D_out = np.array(sys.D, np.float64)

    pieces = []                                                               # (index array, lam, B, C)
    counts = np.zeros(flat, int)
    if np.any(as_is):
        idx = np.flatnonzero(as_is)
        pieces.append((idx, lam_in[idx], B_in[idx], C_in[idx]))
        counts[idx] = n
    for r, k in sorted(set(zip(r_eff[~as_is].tolist(), fast[~as_is].tolist()))):
        idx = np.flatnonzero((r_eff == r) & (fast == k) & ~as_is)
        if r == 0 and k == 0:
            continue
        Ar, Br, Cr, D_out[idx] = bal.project(idx, r, k, lam_in, B_real, C_real, sys.D, s0)
        if r == 0:
            continue
        red, cnt = diagonalize(Ar, Br, Cr, None, None, sys.domain, return_counts=True)
        mismatch = _dense_tf_check(Ar, Br, Cr, red, sys.domain)
        if np.any(mismatch > check_rtol):
            bad = idx[mismatch > check_rtol] + offset
            where = ", ".join(str(tuple(int(i) for i in np.unravel_index(int(b), batch))) if batch else "0"
                              for b in bad[:5])
            raise ValueError(
                f"re-diagonalising the order-{int(r)} reduced system of channel(s) {where} changed its transfer "
                f"function by {float(mismatch.max()):.1e} (relative): its A is numerically defective; "
                f"choose an order one lower or higher."
            )
        pieces.append((idx, red.modes, red.B, red.C))
        counts[idx] = cnt

    n_out = int(counts.max()) if flat else 0
    lam = np.full((flat, n_out), PAD_MODE[sys.domain], np.complex128)
    Bo = np.zeros((flat, n_out), np.complex128)
    Co = np.zeros((flat, n_out), np.complex128)
    for idx, l, b, c in pieces:
        k = l.shape[-1]
        lam[idx, :k], Bo[idx, :k], Co[idx, :k] = l, b, c
    return bal.hsv, r_eff, counts, lam, Bo, Co, D_out
