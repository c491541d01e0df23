"""Closed-form Gramians of diagonal systems and factors that cannot fail.

Everything is expressed on the conjugate closure of a ``DiagonalSSM`` with n
stored modes, i.e. the complex diagonal system of order m = 2n

    mu    = [lam; conj(lam)],   beta = [B; conj(B)],   gamma = [C, conj(C)],

whose transfer function ``gamma (s - mu)^-1 beta`` is the real transfer function
``2 Re(C (s - lam)^-1 B)``.  Its state ``[x; conj(x)] = T [Re x; Im x]`` with
``T = [[I, iI], [I, -iI]]`` is linked to the real block realization
(``DiagonalSSM.to_real``), so ``P_real = T^-1 P T^-*`` and ``Q_real = T^* Q T``.

Gramians (entries i, j of the closure; ``conj`` on the second index):

    continuous:              P_ij = beta_i conj(beta_j) / -(mu_i + conj(mu_j))
    discrete, infinite:      P_ij = beta_i conj(beta_j) / (1 - mu_i conj(mu_j))
    discrete, horizon L:     P_ij = beta_i conj(beta_j) (1 - (mu_i conj(mu_j))^L) / (1 - mu_i conj(mu_j))
                                   (= L beta_i conj(beta_j) where mu_i conj(mu_j) == 1)

and Q the same with ``conj(gamma)`` for ``beta`` and ``conj(mu)`` for ``mu``.
The finite-horizon Gramians are ``sum_{k<L} A^k B B^* A^*k`` exactly, for any
modes, stable or not.

Factors: the infinite-horizon Gramians are Cauchy-like matrices; their
Cholesky factor with diagonal (complete) pivoting is computed from the
generators only (the Schur complement of a Cauchy-like matrix is Cauchy-like
with generators ``g_i (mu_i - mu_p)/(mu_i + conj(mu_p))``, discrete
``g_i (mu_i - mu_p)/(1 - mu_i conj(mu_p))``).  No subtraction of matrix
entries ever happens, every pivot is a positive quantity computed to full
relative accuracy, so the factor exists for every input and is accurate
entry-wise even at condition numbers of 1e30.  The finite-horizon Gramians
are factored by Cholesky with diagonal pivoting and clipping of
non-positive pivots (rank-revealing, cannot fail).
"""
from __future__ import annotations

import numbers

import numpy as np

from .system import DiagonalSSM, _safe_expm1_over

__all__ = [
    "conjugate_closure",
    "controllability_gramian",
    "observability_gramian",
    "gramian_factors",
    "cauchy_cholesky",
    "pivoted_cholesky",
    "to_real_coordinates",
    "geometric_sum",
    "real_factor",
    "check_stable",
]


def _check_system(sys):
    if not isinstance(sys, DiagonalSSM):
        raise TypeError(f"expected a DiagonalSSM, got {type(sys).__name__}.")


def _check_horizon(sys, horizon):
    if horizon is None:
        return None
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer kernel length L, got {horizon!r}.")
    if not sys.is_discrete:
        raise ValueError("a finite horizon needs a discrete system; call discretize() first.")
    return int(horizon)


def _channel_list(mask):
    idx = np.argwhere(mask)
    shown = ", ".join(str(tuple(int(v) for v in row)) if len(row) != 1 else str(int(row[0])) for row in idx[:5])
    more = "" if len(idx) <= 5 else f" and {len(idx) - 5} more"
    return shown + more


def check_stable(sys, what="infinite-horizon Gramians"):
    """Raise ValueError naming the channels whose active modes are not asymptotically stable."""
    active = sys.residues != 0
    if sys.is_discrete:
        bad = active & ~(np.abs(sys.modes) < 1.0)
        rule = "|lam| < 1"
    else:
        bad = active & ~(sys.modes.real < 0.0)
        rule = "Re(lam) < 0"
    bad_channel = np.any(bad, -1)
    if np.any(bad_channel):
        raise ValueError(
            f"{what} need stable modes ({rule}), but channel(s) {_channel_list(bad_channel)} "
            f"have unstable modes; pass horizon=L for finite-horizon Gramians of a discrete system."
        )


def conjugate_closure(sys):
    """Conjugate closure ``(mu, beta, gamma)``, each complex of shape (..., 2n)."""
    _check_system(sys)
    mu = np.concatenate([sys.modes, sys.modes.conj()], -1)
    beta = np.concatenate([sys.B, sys.B.conj()], -1)
    gamma = np.concatenate([sys.C, sys.C.conj()], -1)
    return mu, beta, gamma


def _kernel(mu, discrete, horizon):
    """Cauchy kernel ``k_ij`` with ``P = (beta beta^*) * k`` for nodes mu, shape (..., m, m)."""
    mi, mj = mu[..., :, None], mu[..., None, :].conj()
    if not discrete:
        return 1.0 / -(mi + mj)
    x = mi * mj
    if horizon is None:
        return 1.0 / (1.0 - x)
    return geometric_sum(x, horizon)


def _log1p_over(w):
    """``log(1 + w) / w`` for complex ``w`` without cancellation (limit 1 at w = 0)."""
    re, im = w.real, w.imag
    log1p = 0.5 * np.log1p(2.0 * re + re * re + im * im) + 1j * np.arctan2(im, 1.0 + re)
    small = np.abs(w) < 1e-8
    return np.where(small, 1.0 - 0.5 * w, log1p / np.where(small, 1.0, w))


def geometric_sum(x, L):
    """``sum_{k<L} x^k = (1 - x^L)/(1 - x)`` elementwise, accurate also for ``x`` near 1 (limit L).

    Evaluated as ``L * expm1(z)/z * log(1+w)/w`` with ``w = x - 1``, ``z = L log(1 + w)``,
    which has no cancellation; ``x == 0`` gives 1.
    """
    x = np.asarray(x, np.complex128)
    zero = x == 0
    w = np.where(zero, 0.5, x) - 1.0
    with np.errstate(all="ignore"):
        r = _log1p_over(w)
        z = L * w * r
        s = L * _safe_expm1_over(z) * r
    return np.where(zero, 1.0 + 0j, s)


def _gramian(mu, g, discrete, horizon):
    return g[..., :, None] * g[..., None, :].conj() * _kernel(mu, discrete, horizon)


def to_real_coordinates(X, kind):
    """Map a matrix on the conjugate-closure state to the real block realization state.

    ``kind="P"``: ``T^-1 X T^-*`` (controllability-type, also for factors use ``kind="factor_P"``);
    ``kind="Q"``: ``T^* X T``; ``kind="factor_P"``: ``T^-1 X``; ``kind="factor_Q"``: ``T^* X``.
    ``T = [[I, iI], [I, -iI]]``, ``T^-1 = 1/2 [[I, I], [-iI, iI]]``.
    """
    n = X.shape[-2] // 2
    top, bot = X[..., :n, :], X[..., n:, :]
    if kind in ("P", "factor_P"):
        Y = np.concatenate([0.5 * (top + bot), -0.5j * (top - bot)], -2)
    elif kind in ("Q", "factor_Q"):
        Y = np.concatenate([top + bot, -1j * (top - bot)], -2)
    else:
        raise ValueError(f"kind must be 'P', 'Q', 'factor_P' or 'factor_Q', got {kind!r}.")
    if kind in ("factor_P", "factor_Q"):
        return Y
    Yh = Y.conj().swapaxes(-1, -2)
    Z = to_real_coordinates(Yh, "factor_" + kind)
    return Z.conj().swapaxes(-1, -2).real


def controllability_gramian(sys, horizon=None, basis="real"):
    """Controllability Gramian ``P`` of the conjugate closure, in closed form.

    Parameters
    ----------
    sys : DiagonalSSM
    horizon : int, optional
        Discrete systems only: ``P = sum_{k<L} A^k B B^* A^*k`` for ``L = horizon``
        (valid for unstable modes).  Default: infinite horizon (stable modes needed).
    basis : {"real", "complex"}
        "real": state of ``sys.to_real()``, real (..., 2n, 2n);
        "complex": conjugate-closure state ``[x; conj x]``, complex (..., 2n, 2n).
    """
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if horizon is None:
        check_stable(sys)
    mu, beta, _ = conjugate_closure(sys)
    P = _gramian(mu, beta, sys.is_discrete, horizon)
    return _in_basis(P, "P", basis)


def observability_gramian(sys, horizon=None, basis="real"):
    """Observability Gramian ``Q`` (``A^* Q + Q A + C^* C = 0``, discrete ``Q - A^* Q A = C^* C``,
    or ``sum_{k<L} A^*k C^* C A^k``).  Same parameters as ``controllability_gramian``."""
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if horizon is None:
        check_stable(sys)
    mu, _, gamma = conjugate_closure(sys)
    Q = _gramian(mu.conj(), gamma.conj(), sys.is_discrete, horizon)
    return _in_basis(Q, "Q", basis)


def _in_basis(X, kind, basis):
    if basis == "complex":
        return X
    if basis == "real":
        return to_real_coordinates(X, kind)
    raise ValueError(f"basis must be 'real' or 'complex', got {basis!r}.")


def cauchy_cholesky(mu, g, discrete=False, conjugate_pairs=False):
    """Pivoted Cholesky factor of the Cauchy-like Gramian, from its generators only.

    ``G_ij = g_i conj(g_j) k(mu_i, mu_j)`` with ``k = 1/-(mu_i + conj mu_j)`` (continuous,
    ``Re mu < 0``) or ``k = 1/(1 - mu_i conj mu_j)`` (discrete, ``|mu| < 1``).

    Parameters
    ----------
    mu, g : ndarray, complex, shape (..., m)
    discrete : bool
    conjugate_pairs : bool
        ``mu, g`` are a conjugate closure (``m = 2n``, entry ``i + n`` is the conjugate
        of entry ``i``): every pivot is followed at once by its partner, so that
        columns ``2j, 2j+1`` span a conjugation-invariant space (see ``real_factor``).

    Returns
    -------
    L : ndarray, complex, shape (..., m, m)
        ``G = L L^*``; column k is the k-th pivot step (the largest remaining
        Schur-complement diagonal, or the partner of the previous pivot),
        zero once the remaining diagonal is exactly zero.
    """
    mu = np.asarray(mu, np.complex128)
    g = np.array(g, np.complex128)
    m = mu.shape[-1]
    L = np.zeros(mu.shape + (m,), np.complex128)
    if m == 0:
        return L
    diag_den = (1.0 - np.abs(mu) ** 2) if discrete else -2.0 * mu.real
    done = np.zeros(mu.shape, bool)
    p = None
    for k in range(m):
        d = np.where(done, -1.0, np.abs(g) ** 2 / diag_den)                   # Schur-complement diagonal
        if conjugate_pairs and k % 2 == 1:
            p = (p + m // 2) % m                                              # the partner of the last pivot
        else:
            p = np.argmax(d, -1)[..., None]
        dp = np.take_along_axis(d, p, -1)                                     # (..., 1)
        mup = np.take_along_axis(mu, p, -1)
        gp = np.take_along_axis(g, p, -1)
        if discrete:
            den = 1.0 - mu * mup.conj()
            blaschke = (mu - mup) / den
        else:
            den = -(mu + mup.conj())
            blaschke = -(mu - mup) / den
        ok = dp > 0
        scale = np.where(ok, 1.0 / np.sqrt(np.where(ok, dp, 1.0)), 0.0)
        L[..., k] = np.where(done, 0.0, g * gp.conj() / den * scale)
        g = np.where(ok, g * blaschke, g)                                     # generators of the Schur complement
        np.put_along_axis(done, p, True, -1)
    return L


def real_factor(L, kind):
    """Real factor, in the coordinates of ``to_real()``, from a pair-pivoted closure factor.

    For ``L`` from ``cauchy_cholesky(..., conjugate_pairs=True)`` the columns ``2j, 2j+1``
    map (``T^-1``, resp. ``T^*``) to ``f, g`` with ``span{f, g} = span{Re f, Im f}``; the four
    real vectors ``[Re f, Im f, Re g, Im g]`` (rank 2) are reduced to two by a
    pivoted, re-orthogonalised Gram-Schmidt per pair.  Mixing happens only inside a pair, so the
    grading of the factor (and its entry-wise accuracy) is kept.

    Parameters
    ----------
    L : ndarray, complex, shape (..., m, m), m even
    kind : {"P", "Q"}

    Returns
    -------
    F : ndarray, float64, shape (..., m, m), with ``F F^T`` the real-realization Gramian.
    """
    m = L.shape[-1]
    Z = to_real_coordinates(L, "factor_" + kind)                                # (..., m, m)
    Z = Z.reshape(Z.shape[:-1] + (m // 2, 2))                                   # (..., m, pair, 2)
    A = np.concatenate([Z.real, Z.imag], -1)                                    # (..., m, pair, 4), rank 2
    F = _rank2_factor(np.ascontiguousarray(np.moveaxis(A, -3, -1)))             # (..., pair, 2, m)
    F = np.moveaxis(F, -1, -3)                                                  # (..., m, pair, 2)
    return np.ascontiguousarray(F.reshape(F.shape[:-2] + (m,)))


def _orthogonalize(u, a):
    """Remove the component along unit vectors ``u`` (..., m) from ``a`` (..., k, m), twice."""
    for _ in range(2):
        a = a - (a @ u[..., :, None]) * u[..., None, :]
    return a


def _pick_largest(a):
    """Row of ``a`` (..., k, m) with the largest norm, and that norm."""
    nrm = np.sqrt(np.sum(a * a, -1))
    p = np.argmax(nrm, -1)[..., None]
    v = np.take_along_axis(a, p[..., None], -2)[..., 0, :]
    return v, np.take_along_axis(nrm, p, -1)[..., 0]


def _rank2_factor(a):
    """Two vectors ``f1, f2`` (..., 2, m) with ``f1 f1^T + f2 f2^T = sum_k a_k a_k^T`` for rank-2 ``a`` (..., 4, m).

    Gram-Schmidt with pivoting (largest vector first, re-orthogonalised): ``a = K^T U``
    with orthonormal ``U`` (2, m) and coefficients ``K`` (2, 4); then ``K K^T = L L^T`` with
    ``L`` from a second pivot-free Gram-Schmidt on the rows of ``K``; ``f = L^T U``.
    """
    v1, n1 = _pick_largest(a)
    u1 = v1 / np.where(n1 > 0, n1, 1.0)[..., None]
    r = _orthogonalize(u1, a)
    v2, n2 = _pick_largest(r)
    u2 = v2 / np.where(n2 > 0, n2, 1.0)[..., None]
    c = (a @ u1[..., :, None])[..., 0]                                          # (..., 4)
    d = (a @ u2[..., :, None])[..., 0]
    # K = [c; d] (2 x 4); L L^T = K K^T with L lower triangular, by Gram-Schmidt on c, d
    l11 = np.sqrt(np.einsum("...k,...k->...", c, c))
    e = c / np.where(l11 > 0, l11, 1.0)[..., None]
    l21 = np.einsum("...k,...k->...", d, e)
    res = d - l21[..., None] * e
    l22 = np.sqrt(np.einsum("...k,...k->...", res, res))
    f1 = l11[..., None] * u1 + l21[..., None] * u2
    f2 = l22[..., None] * u2
    return np.stack([f1, f2], -2)


def pivoted_cholesky(G, conjugate_pairs=False):
    """Cholesky factor with diagonal pivoting of Hermitian positive semi-definite ``G``.

    Non-positive remaining pivots (rounding) are clipped to zero, so the factor
    always exists; ``G ~= L L^*``.

    Parameters
    ----------
    G : ndarray, complex, shape (..., m, m)
    conjugate_pairs : bool
        As in ``cauchy_cholesky``: pivot ``i`` is followed by its partner ``(i + m/2) % m``.

    Returns
    -------
    L : ndarray, complex, shape (..., m, m)
    """
    S = np.array(G, np.complex128)
    m = S.shape[-1]
    L = np.zeros_like(S)
    done = np.zeros(S.shape[:-1], bool)
    tiny = np.finfo(float).tiny
    p = None
    for k in range(m):
        d = np.where(done, -np.inf, np.diagonal(S, axis1=-2, axis2=-1).real)
        p = (p + m // 2) % m if (conjugate_pairs and k % 2 == 1) else np.argmax(d, -1)
        dp = np.take_along_axis(d, p[..., None], -1)[..., 0]
        col = np.take_along_axis(S, p[..., None, None], -1)[..., 0]          # (..., m)
        ok = dp > tiny
        col = np.where(ok[..., None] & ~done, col / np.sqrt(np.where(ok, dp, 1.0))[..., None], 0.0)
        L[..., k] = col
        S -= col[..., :, None] * col[..., None, :].conj()
        np.put_along_axis(done, p[..., None], True, -1)
    return L


def gramian_factors(sys, horizon=None, pairs=False):
    """Factors of both Gramians of the conjugate closure: ``P = Lp Lp^*``, ``Q = Lq Lq^*``.

    Parameters
    ----------
    sys : DiagonalSSM
    horizon : int, optional
        Kernel length L for finite-horizon Gramians of a discrete system.
    pairs : bool
        Pivot conjugate partners together (needed by ``real_factor``).

    Returns
    -------
    Lp, Lq : ndarray, complex, shape (..., 2n, 2n)
        Factors on the conjugate-closure state (``to_real_coordinates(Lp, "factor_P")``
        gives a factor of the real-realization Gramian).
    """
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    mu, beta, gamma = conjugate_closure(sys)
    if horizon is None:
        check_stable(sys, "Hankel singular values and balanced truncation with an infinite horizon")
        # modes that carry no signal (B = 0 or C = 0) are harmless even when unstable: park them
        inactive = np.concatenate([sys.residues == 0] * 2, -1)
        park = -1.0 if not sys.is_discrete else 0.0
        unstable = ~(np.abs(mu) < 1.0) if sys.is_discrete else ~(mu.real < 0.0)
        mu = np.where(inactive & unstable, park, mu)
        beta = np.where(inactive & unstable, 0.0, beta)
        gamma = np.where(inactive & unstable, 0.0, gamma)
        Lp = cauchy_cholesky(mu, beta, sys.is_discrete, conjugate_pairs=pairs)
        Lq = cauchy_cholesky(mu.conj(), gamma.conj(), sys.is_discrete, conjugate_pairs=pairs)
        return Lp, Lq
    Lp = pivoted_cholesky(_gramian(mu, beta, True, horizon), conjugate_pairs=pairs)
    Lq = pivoted_cholesky(_gramian(mu.conj(), gamma.conj(), True, horizon), conjugate_pairs=pairs)
    return Lp, Lq
