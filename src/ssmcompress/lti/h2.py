"""H2-optimal reduction of diagonal SISO systems: IRKA on the real system.

The iterative rational Krylov algorithm (Gugercin, Antoulas & Beattie 2008; discrete time:
Bunse-Gerstner, Kubalinska, Vossen & Wilczek 2010) looks for a reduced system ``G_r`` of real
order r that is a stationary point of ``||G - G_r||_2``.  Such a ``G_r`` interpolates G and its
derivative at the mirror images of its own poles ``lam_j``:

    G(s_j) = G_r(s_j),   G'(s_j) = G_r'(s_j),   s_j = -conj(lam_j)  (continuous),  1/conj(lam_j)  (discrete),

with ``D_r = D`` (the H2-optimal feed-through in both domains).  One iteration: the Petrov-Galerkin
projection ``V = [(s_j I - A)^-1 B]``, ``W = [(s_j I - A)^-T C^T]`` of the real system
(``DiagonalSSM.to_real`` coordinates), which interpolates G Hermite-wise at the shifts s_j; its
poles give the next shifts.  Everything stays real: the shifts are closed under conjugation, and a
pair ``(s, conj s)`` enters V as the two real columns ``Re`` and ``Im`` of ``(s I - A)^-1 B``
(formed without cancellation as ``(Re s - lam) / ((s - lam)(conj s - lam))`` and
``1 / ((s - lam)(conj s - lam))`` times B, per mode lam), a real shift as one column.  V and W are
orthonormalised (QR) before ``E_r = W^T V``, ``A_r = W^T A V``; the reduced system is
``(E_r^-1 A_r, E_r^-1 W^T B, C V)``.  All channels of one order iterate together (batched
LAPACK); a channel stops when its shifts move by less than ``tol`` (relative).

Stability: a reduced pole that is unstable (``Re lam >= 0``, discrete ``|lam| >= 1``) gives
the shift at its reflection into the stable region instead (continuous ``s = lam``, i.e.
``-conj`` of ``-conj(lam)``; discrete ``s = lam``, the mirror of ``1/conj(lam)``), so that every
shift lies where the mirror of a stable pole lies (right half-plane, outside the unit disk).
An unstable iterate is never returned.  The result is the fixed point where IRKA converged to a
stable one whose H2 error is no larger than the start's; otherwise (no convergence within
``maxiter``, typically two weakly observable poles that keep trading places) the stable iterate
with the smallest H2 error seen, the balanced-truncation start included.  The H2 errors are exact, from the closed-form inner products of the pole-residue
forms (``system.h2_inner``); their absolute accuracy is about ``sqrt(eps) * ||G||_2`` (the
square of a small difference of large terms).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .balanced import _apply_A, _dense_tf_check, _flatten, _map_chunks, balanced_truncation, check_order
from .diagonalize import PAD_MODE, diagonalize, eigen_residues
from .gramians import _check_system, check_stable
from .system import DiagonalSSM, h2_inner

__all__ = ["h2_optimal", "H2Result"]

#: an iterate whose eigenvector matrix is worse conditioned than this is not a candidate
COND_MAX = 1e12


@dataclass(repr=False, eq=False)
class H2Result:
    """Outcome of ``h2_optimal``.

    Attributes
    ----------
    system : DiagonalSSM
        Reduced system (same domain, dt and D), re-diagonalised, padded like the result of
        ``balanced_truncation``.
    order, n_modes : int or ndarray of int, shape (...)
        Real order and stored (non-padding) modes per channel.
    h2_error : ndarray, shape (...)
        ``||G - G_r||_2`` of the returned system.
    h2_error_start : ndarray, shape (...)
        The same for the balanced-truncation start.
    h2_norm : ndarray, shape (...)
        ``||G - D||_2`` (continuous) or ``||G - D||_2`` of the impulse response from step 1 (discrete),
        the scale of the errors.
    iterations : ndarray of int, shape (...)
        IRKA iterations run per channel (0 where the order was not reduced).
    converged : ndarray of bool, shape (...)
        The shifts moved by less than ``tol`` (True where the order was not reduced).
    best_iteration : ndarray of int, shape (...)
        Iteration of the returned system (0: the balanced-truncation start).
    """

    system: DiagonalSSM
    order: object
    n_modes: object
    h2_error: np.ndarray
    h2_error_start: np.ndarray
    h2_norm: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    best_iteration: np.ndarray

    def __repr__(self):
        return (f"H2Result(system={self.system!r}, order={self.order!r}, "
                f"converged={bool(np.all(self.converged))!r})")


def _mirror(lam, discrete):
    """Interpolation point of each reduced pole: its mirror image, reflected first if unstable."""
    if discrete:
        mag = np.abs(lam)
        inner = np.clip(np.minimum(mag, 1.0 / np.maximum(mag, 1e-300)), 1e-12, 1.0 - 1e-15)   # |pole| after reflection
        unit = np.where(mag > 0, lam / np.where(mag > 0, mag, 1.0), 1.0)
        return unit / inner                                                 # = 1/conj(lam) for |lam| < 1
    re = np.maximum(np.abs(lam.real), 1e-12 * np.maximum(np.abs(lam), 1e-300))
    return re + 1j * lam.imag                                               # = -conj(lam) for Re lam < 0


def _shifts(poles, discrete):
    """Real-order slots from reduced poles (F, r) closed under conjugation.

    Returns the shift with ``Im >= 0`` per slot, whether the slot is the imaginary part of a
    conjugate pair (the partner with ``Im < 0``), and the closed set of shifts (F, r).
    """
    upper = np.where(poles.imag < 0, poles.conj(), poles)
    s = _mirror(upper, discrete)
    im_slot = poles.imag < 0
    return s, im_slot, np.where(im_slot, s.conj(), s)


def _resolvent_columns(lam, s, im_slot):
    """Per slot the real or imaginary part of ``1 / (s - lam)`` up to scaling, shape (F, n, r).

    Real part ``(Re s - lam) / ((s - lam)(conj s - lam))``, imaginary part (over ``-Im s``)
    ``1 / ((s - lam)(conj s - lam))``: no cancellation, and no degeneration as ``Im s -> 0``.
    Multiplied by B (resp. C) per mode, the columns' real and imaginary parts give the real
    basis ``[Re; Im]`` of ``(s I - A)^-1 B`` (resp. ``[Re; -Im]`` of ``(s I - A)^-T C^T``).
    """
    sl, lk = s[:, None, :], lam[:, :, None]                               # (F, 1, r), (F, n, 1)
    inv = 1.0 / ((sl - lk) * (sl.conj() - lk))
    return np.where(im_slot[:, None, :], inv, (sl.real - lk) * inv)


def _orthonormal_real_basis(col, g):
    """Orthonormal basis (F, 2n, r) of the real columns ``[Re(g col); Im(g col)]``."""
    x = col * g[:, :, None]
    return np.linalg.qr(np.concatenate([x.real, x.imag], -2))[0]


def _solve_pencil(Er, Ar, Br):
    """``E_r^-1 A_r``, ``E_r^-1 B_r`` and where E_r is invertible (elsewhere ``-I`` and 0, never candidates).

    A nearly singular E_r needs no test here: whatever system comes out is judged by its own
    exact H2 error, stability and eigenvector condition.
    """
    rhs = np.concatenate([Ar, Br[..., None]], -1)
    try:
        sol = np.linalg.solve(Er, rhs)
        ok = np.ones(Er.shape[0], bool)
    except np.linalg.LinAlgError:                                            # an exactly singular E_r somewhere
        ok = np.linalg.matrix_rank(Er) == Er.shape[-1]
        sol = np.zeros_like(rhs)
        sol[:, :, :-1] = -np.eye(Er.shape[-1])
        if np.any(ok):
            sol[ok] = np.linalg.solve(Er[ok], rhs[ok])
    ok &= np.all(np.isfinite(sol), (-1, -2))
    sol[~ok, :, :-1], sol[~ok, :, -1] = -np.eye(Er.shape[-1]), 0.0
    return sol[..., :-1], sol[..., -1], ok


def _shift_change(new, old):
    """Largest relative distance between two closed shift sets (F, r), both ways."""
    d = np.abs(new[:, :, None] - old[:, None, :]) / np.maximum(np.abs(old[:, None, :]), 1e-300)
    return np.maximum(d.min(-1).max(-1), d.min(-2).max(-1))


def _closure(sys):
    """Poles and residues of the conjugate closure, (F, 2k) each (a real mode's two halves add up)."""
    return (np.concatenate([sys.modes, sys.modes.conj()], -1),
            np.concatenate([sys.residues, sys.residues.conj()], -1))


def _irka_group(sys, start, start_count, r, norm2, tol, maxiter):
    """IRKA for a flat batch ``sys`` (F channels, all of real order r) from the diagonal ``start``.

    ``norm2``: ``||G - D||_2^2`` per channel.  Returns the best dense iterates (A, B, C) of shapes
    (F, r, r), (F, r), (F, r) (unset where the start stays best), their H2 errors, the start's,
    the iterations run, convergence and the best iteration.
    """
    discrete = sys.is_discrete
    F, n = sys.batch_shape[0], sys.n_modes
    active_modes = sys.residues != 0
    lam = np.where(active_modes, sys.modes, PAD_MODE[sys.domain])      # signal-free modes parked (no effect on G)
    b = np.where(active_modes, sys.B, 0.0)
    c = np.where(active_modes, sys.C, 0.0)
    B_real = np.concatenate([b.real, b.imag], -1)                       # to_real() coordinates
    C_real = 2.0 * np.concatenate([c.real, -c.imag], -1)
    flip = np.concatenate([np.ones(n), -np.ones(n)])[:, None]          # W's real form is [Re; -Im]
    rho = b * c

    def h2_error(poles, residues, rows):
        # <G, G_r> over G's closure is twice the real part over its stored modes (G_r's poles are closed)
        cross = 2.0 * h2_inner(lam[rows], rho[rows], poles, residues, discrete).real
        own = h2_inner(poles, residues, poles, residues, discrete).real
        return np.sqrt(np.maximum(norm2[rows] - 2.0 * cross + own, 0.0))

    err_start = h2_error(*_closure(start), np.arange(F))
    # the start's r poles, closed under conjugation: each pair as (lam, conj lam), a real one once
    used = np.arange(start.n_modes)[None, :] < start_count[:, None]
    valid = np.concatenate([used, used & (start.modes.imag != 0)], -1)
    pick = np.argsort(~valid, -1, kind="stable")[:, :r]
    poles = np.take_along_axis(np.concatenate([start.modes, start.modes.conj()], -1), pick, -1)

    best_err = err_start.copy()
    best_it = np.zeros(F, int)
    A_best, B_best, C_best = np.zeros((F, r, r)), np.zeros((F, r)), np.zeros((F, r))
    iterations = np.zeros(F, int)
    converged = np.zeros(F, bool)
    s, im_slot, closed = _shifts(poles, discrete)
    live = np.arange(F)
    for it in range(1, maxiter + 1):
        if live.size == 0:
            break
        col = _resolvent_columns(lam[live], s, im_slot)
        Qv = _orthonormal_real_basis(col, b[live])                                      # (L, 2n, r)
        Qw = flip * _orthonormal_real_basis(col, c[live])
        Qwt = np.ascontiguousarray(Qw.swapaxes(-1, -2))
        Er = Qwt @ Qv
        Ar = Qwt @ _apply_A(lam[live], Qv)
        Br = (Qwt @ B_real[live][..., None])[..., 0]
        Cr = (C_real[live][:, None, :] @ Qv)[:, 0, :]
        A_it, B_it, ok = _solve_pencil(Er, Ar, Br)
        poles, Bt, Ct, cond = eigen_residues(A_it, B_it, Cr)
        stable = (np.abs(poles) < 1.0) if discrete else (poles.real < 0.0)
        good = ok & (cond <= COND_MAX) & np.all(stable, -1)
        err = np.where(good, h2_error(poles, Ct * Bt, live), np.inf)
        s, im_slot, new_closed = _shifts(poles, discrete)
        still = ok & (_shift_change(new_closed, closed) > tol)
        # a stable fixed point no worse than the start is the answer; before that, the best iterate
        fixed = ok & ~still & good & (err <= err_start[live])
        better = (good & (err < best_err[live])) | fixed
        idx = live[better]
        best_err[idx], best_it[idx] = err[better], it
        A_best[idx], B_best[idx], C_best[idx] = A_it[better], B_it[better], Cr[better]
        iterations[live] = it
        converged[live] = ok & ~still
        live, s, im_slot, closed = live[still], s[still], im_slot[still], new_closed[still]
    return A_best, B_best, C_best, best_err, err_start, iterations, converged, best_it


def h2_optimal(sys, order, tol=1e-4, maxiter=100, start="bt", check_rtol=1e-6, workers=None):
    """H2-optimal reduction (IRKA) of every channel's real system, started from balanced truncation.

    Parameters
    ----------
    sys : DiagonalSSM, batch shape (...), stable, n stored modes (real order m = 2n)
    order : int or array_like of int, broadcastable to (...)
        Real order r (reduced poles closed under conjugation; r odd means a real pole).
        ``r >= 2n``: the channel is returned as it is.  The balanced-truncation start can come
        out lower (numerical rank), and then so does the result.
    tol : float
        Stop a channel when its shifts (mirrored reduced poles) move by less than this,
        relative, between iterations.
    maxiter : int
        Iteration cap.
    start : {"bt"}
        Initial reduced system: balanced truncation to the same order.
    check_rtol : float
        The re-diagonalised result is checked against its dense form, as in ``balanced_truncation``.
    workers : int, optional
        Threads over chunks of the batch (as in ``balanced_truncation``); default: the number of CPUs.

    Returns
    -------
    H2Result
        ``.system``, ``.order``, ``.n_modes``, ``.h2_error``, ``.h2_error_start``, ``.h2_norm``,
        ``.iterations``, ``.converged``, ``.best_iteration``.
    """
    _check_system(sys)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0.0 < tol < 1.0):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}.")
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative integer, got {maxiter!r}.")
    if start != "bt":
        raise ValueError(f"start must be 'bt' (balanced truncation), got {start!r}.")
    check_stable(sys, "H2-optimal reduction")
    batch, n = sys.batch_shape, sys.n_modes
    r_req = check_order(order, batch)
    bt = balanced_truncation(sys, order=r_req, check_rtol=check_rtol, workers=workers)
    flat = int(np.prod(batch, dtype=int))
    fsys, fbt = _flatten(sys), _flatten(bt.system)
    r_eff = np.asarray(bt.order).reshape(flat)
    counts = np.asarray(bt.n_modes).reshape(flat).copy()
    as_is = r_eff >= 2 * n
    norm = DiagonalSSM(fsys.modes, fsys.B, fsys.C, domain=sys.domain).h2_norm()      # ||G - D||_2
    h2_err = np.where(r_eff == 0, norm, 0.0)
    h2_start = h2_err.copy()
    iterations = np.zeros(flat, int)
    converged = np.ones(flat, bool)
    best_it = np.zeros(flat, int)
    width = max([fbt.n_modes] + [r for r in np.unique(r_eff[~as_is]).tolist()])
    lam = np.full((flat, width), PAD_MODE[sys.domain], np.complex128)
    Bo = np.zeros((flat, width), np.complex128)
    Co = np.zeros((flat, width), np.complex128)
    lam[:, :fbt.n_modes], Bo[:, :fbt.n_modes], Co[:, :fbt.n_modes] = fbt.modes, fbt.B, fbt.C
    for r in np.unique(r_eff[~as_is & (r_eff > 0)]).tolist():
        idx = np.flatnonzero((r_eff == r) & ~as_is)

        def work(sl, idx=idx, r=r):
            part = idx[sl]
            start_sys = DiagonalSSM(fbt.modes[part], fbt.B[part], fbt.C[part], domain=sys.domain)
            return _irka_group(fsys[part], start_sys, counts[part], r, norm[part] ** 2, tol, maxiter)

        parts = _map_chunks(work, idx.size, 2 * n, workers)                  # channels iterate independently
        A_b, B_b, C_b, err, err0, its, conv, bi = (np.concatenate(x) for x in zip(*parts))
        h2_err[idx], h2_start[idx], iterations[idx], converged[idx], best_it[idx] = err, err0, its, conv, bi
        moved = idx[bi > 0]
        if moved.size:
            sel = bi > 0
            red, cnt = diagonalize(A_b[sel], B_b[sel], C_b[sel], None, None, sys.domain, return_counts=True)
            mismatch = _dense_tf_check(A_b[sel], B_b[sel], C_b[sel], red, sys.domain)
            if np.any(mismatch > check_rtol):
                raise ValueError(f"re-diagonalising an order-{r} IRKA iterate changed its transfer function "
                                 f"by {float(mismatch.max()):.1e} (relative); choose another order.")
            k = red.n_modes
            lam[moved], Bo[moved], Co[moved] = PAD_MODE[sys.domain], 0.0, 0.0
            lam[moved, :k], Bo[moved, :k], Co[moved, :k] = red.modes, red.B, red.C
            counts[moved] = cnt
    n_out = int(counts.max()) if flat else 0
    system = DiagonalSSM(lam[:, :n_out].reshape(batch + (n_out,)), Bo[:, :n_out].reshape(batch + (n_out,)),
                         Co[:, :n_out].reshape(batch + (n_out,)), np.broadcast_to(sys.D, batch),
                         None if sys.dt is None else np.broadcast_to(sys.dt, batch), sys.domain)

    def out(x):
        return x.reshape(batch) if batch else x.reshape(())[()]

    return H2Result(system, out(r_eff) if batch else int(r_eff[0]), out(counts) if batch else int(counts[0]),
                    out(h2_err), out(h2_start), out(norm), out(iterations), out(converged), out(best_it))
