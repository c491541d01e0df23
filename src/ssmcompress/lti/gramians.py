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

Real factors: pivoting a mode and its conjugate partner together makes
``Pi conj(L) = L G`` (``Pi`` swaps the closure halves) with ``G`` block diagonal,
2 x 2 symmetric unitary per pair; with ``G = H H^T`` (``H = sqrt(G)``, closed form)
``T^-1 L H`` is real.  ``cauchy_real_factor`` does the pivoting, the Schur
complements and this mixing in one pass over half-length arrays (after each
pair step the generators are conjugate-symmetric again), which is what
``real_gramian_factors`` and balanced truncation use.
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
    "cauchy_real_factor",
    "real_gramian_factors",
    "near_real_channels",
    "complex_hankel_singular_values",
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


def check_stable(sys, what="infinite-horizon Gramians", active=None):
    """Raise ValueError naming the channels whose active modes are not asymptotically stable.

    ``active`` (bool, shape (..., n)): the modes that matter; default those with ``C B != 0``
    (the Hankel singular values); the controllability Gramian alone needs ``B != 0``, the
    observability Gramian ``C != 0``.
    """
    active = sys.residues != 0 if active is None else active
    bad = active & ~sys.stable_modes()
    rule = "|lam| < 1" if sys.is_discrete else "Re(lam) < 0"
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


def disc_den(x, y, dd_x=None, dd_y=None):
    """``1 - x conj(y)`` without cancellation, for modes near each other and the unit circle.

    ``Re = (dd_x + dd_y + |x - y|^2) / 2`` (all terms >= 0 for stable modes) and
    ``Im = Im(x conj(x - y))``, with ``dd = 1 - |.|^2`` from ``one_minus_abs2``; the plain
    formula loses ``eps / |1 - x conj(y)|`` relative (e.g. 1e-7 for two real modes at
    ``1 - 1e-9`` and ``1 - 1e-10``).  Broadcasts.
    """
    dd_x = one_minus_abs2(x) if dd_x is None else dd_x
    dd_y = one_minus_abs2(y) if dd_y is None else dd_y
    diff = x - y
    return 0.5 * (dd_x + dd_y + (diff.real * diff.real + diff.imag * diff.imag)) + 1j * (x * diff.conj()).imag


def _kernel(mu, discrete, horizon):
    """Cauchy kernel ``k_ij`` with ``P = (beta beta^*) * k`` for nodes mu, shape (..., m, m)."""
    mi, mj = mu[..., :, None], mu[..., None, :]
    if not discrete:
        return 1.0 / -(mi + mj.conj())
    dd = one_minus_abs2(mu)
    if horizon is None:
        return 1.0 / disc_den(mi, mj, dd[..., :, None], dd[..., None, :])
    return _node_geometric_sum(mi, mj, dd[..., :, None], dd[..., None, :], horizon)


def _node_geometric_sum(x, y, dd_x, dd_y, L):
    """``sum_{k<L} (x conj(y))^k`` for nodes x, y without forming ``x conj(y) - 1`` by subtraction.

    ``w = x conj(y) - 1`` comes from :func:`disc_den`; ``log(x conj(y))`` has real part
    ``(log1p(-dd_x) + log1p(-dd_y))/2`` and argument ``atan2(Im w, 1 + Re w)``, so both keep full relative
    accuracy for modes near the unit circle, also for nearby modes away from the real axis (where
    :func:`geometric_sum` of the product loses ``eps / |w|`` and a difference of angles ``eps |arg| / |w|``):
    the sum is ``L expm1(z)/z * log(1 + w)/w`` with ``z = L log(1 + w)``.  A zero node gives 1 (only ``k = 0``).
    """
    x, y = np.broadcast_arrays(np.asarray(x, np.complex128), np.asarray(y, np.complex128))
    zero = (x == 0) | (y == 0)
    w = -disc_den(x, y, dd_x, dd_y)
    with np.errstate(all="ignore"):
        def log_abs2(v, dd):           # log|v|^2: log1p(-dd) near the circle, plain log for tiny |v| (dd -> 1)
            dd = np.asarray(dd, float)
            return np.where(dd > 0.5, np.log(np.abs(v) ** 2), np.log1p(-dd))
        log_x = 0.5 * (log_abs2(x, dd_x) + log_abs2(y, dd_y)) + 1j * np.arctan2(w.imag, 1.0 + w.real)
        small = np.abs(w) < 1e-8
        r = np.where(small, 1.0 - 0.5 * w, log_x / np.where(small, 1.0, w))
        s = L * _safe_expm1_over(L * log_x) * r
    return np.where(zero, 1.0 + 0j, s)


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
    if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 1:
        raise ValueError(f"L must be a positive integer kernel length, got {L!r}.")
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
    if X.ndim < 2 or X.shape[-2] % 2:
        raise ValueError(f"to_real_coordinates needs X of shape (..., 2n, k), got {X.shape}.")
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
        check_stable(sys, "the controllability Gramian (infinite horizon)", active=sys.B != 0)
    mu, beta, _ = conjugate_closure(sys)
    P = _gramian(mu, beta, sys.is_discrete, horizon)
    return _in_basis(P, "P", basis)


def observability_gramian(sys, horizon=None, basis="real"):
    """Observability Gramian ``Q`` (``A^* Q + Q A + C^* C = 0``, discrete ``Q - A^* Q A = C^* C``,
    or ``sum_{k<L} A^*k C^* C A^k``).  Same parameters as ``controllability_gramian``."""
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if horizon is None:
        check_stable(sys, "the observability Gramian (infinite horizon)", active=sys.C != 0)
    mu, _, gamma = conjugate_closure(sys)
    Q = _gramian(mu.conj(), gamma.conj(), sys.is_discrete, horizon)
    return _in_basis(Q, "Q", basis)


def _in_basis(X, kind, basis):
    if basis == "complex":
        return X
    if basis == "real":
        return to_real_coordinates(X, kind)
    raise ValueError(f"basis must be 'real' or 'complex', got {basis!r}.")


def cauchy_cholesky(mu, g, discrete=False, conjugate_pairs=False, return_pivots=False):
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
    pivots : ndarray of int, shape (..., m), only with ``return_pivots``
        Row of the pivot of each column.
    """
    mu = np.asarray(mu, np.complex128)
    g = np.array(g, np.complex128)
    if mu.ndim < 1 or g.shape != mu.shape:
        raise ValueError(f"mu and g must have the same shape (..., m), got {mu.shape} and {g.shape}.")
    m = mu.shape[-1]
    if conjugate_pairs and m % 2:
        raise ValueError(f"conjugate_pairs needs an even closure size m = 2n, got m = {m}.")
    L = np.zeros(mu.shape + (m,), np.complex128)
    pivots = np.zeros(mu.shape, int)
    if m == 0:
        return (L, pivots) if return_pivots else L
    diag_den = one_minus_abs2(mu) if discrete else -2.0 * mu.real
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
            den = disc_den(mu, mup, diag_den, np.take_along_axis(diag_den, p, -1))
            blaschke = (mu - mup) / den
        else:
            den = -(mu + mup.conj())
            blaschke = -(mu - mup) / den
        ok = dp > 0
        scale = np.where(ok, 1.0 / np.sqrt(np.where(ok, dp, 1.0)), 0.0)
        L[..., k] = np.where(done, 0.0, g * gp.conj() / den * scale)
        g = np.where(ok, g * blaschke, g)                                     # generators of the Schur complement
        np.put_along_axis(done, p, True, -1)
        pivots[..., k] = p[..., 0]
    return (L, pivots) if return_pivots else L


def _two_product(a, b):
    """``a * b = p + e`` exactly (Dekker's splitting; float64 arrays)."""
    p = a * b
    split = 134217729.0                                                          # 2^27 + 1
    ah = split * a
    ah = ah - (ah - a)
    bh = split * b
    bh = bh - (bh - b)
    al, bl = a - ah, b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def one_minus_abs2(lam):
    """``1 - |lam|^2`` to full relative accuracy also for ``|lam|`` near 1 (discrete modes near the
    unit circle, where the plain formula loses ``eps / (1 - |lam|)`` relative)."""
    lam = np.asarray(lam, np.complex128)
    p, ep = _two_product(lam.real, lam.real)
    q, eq = _two_product(lam.imag, lam.imag)
    big, small = np.maximum(p, q), np.minimum(p, q)
    t = 1.0 - big                                                               # exact for big in [1/2, 2]
    u = t - small
    bv = u - t                                                                  # two-sum error of t - small
    eu = (t - (u - bv)) + (-small - bv)
    return u + (eu - ep - eq)


def _sqrt_sym_unitary(c, s):
    """Square root ``H`` (symmetric, unitary) of ``G = [[conj c, s], [s, -c]]``, so ``H H^T = G``.

    ``c`` complex, ``s >= 0`` real with ``|c|^2 + s^2 = 1``.  The eigenvalues of ``G`` are
    ``+-q - i t`` (``t = Im c``, ``q = sqrt(1 - t^2)``); with square roots ``r1, r2`` of them,
    ``sqrt(G) = (G + r1 r2 I) / (r1 + r2)``, the sign of ``r2`` chosen so that ``|r1 + r2| >= sqrt 2``.
    Returns the entries ``h00, h01 (= h10), h11``.
    """
    t = c.imag
    q = np.hypot(c.real, s)                                                    # = sqrt(1 - t^2), no cancellation
    r1 = np.sqrt(q - 1j * t)
    r2 = np.sqrt(-q - 1j * t)
    r2 = np.where(np.abs(r1 + r2) >= np.abs(r1 - r2), r2, -r2)
    tau = r1 + r2
    rho = r1 * r2
    return (c.conj() + rho) / tau, s / tau, (rho - c) / tau


def _pair_mixing(a, x, b):
    """Takagi mixing ``H`` (..., 2, 2) of one conjugate pair from its pivot block ``[[a, 0], [x, b]]``.

    ``L`` (pair-pivoted factor of a conjugation-symmetric Gramian) satisfies
    ``Pi conj(L) = L G`` with ``G`` block diagonal; on the pair, ``G = [[conj c, s], [s, -c]]``,
    ``c = x / a``, ``s = b / a`` (a real eigenvalue gives ``s = 0``; a zero pivot ``a = 0`` gives
    ``G = I``).  With ``H H^T = G``, ``T^-1 L H`` is real.
    """
    ok = a > 0
    safe = np.where(ok, a, 1.0)
    c = np.where(ok, x / safe, 1.0)
    s = np.where(ok, b / safe, 0.0)
    h00, h01, h11 = _sqrt_sym_unitary(c, s)
    return np.stack([np.stack([h00, h01], -1), np.stack([h01, h11], -1)], -2)


def real_factor(L, kind, pivots):
    """Real factor, in the coordinates of ``to_real()``, from a pair-pivoted closure factor.

    For a conjugation-symmetric Gramian (``Pi conj(X) Pi = X``, ``Pi`` swapping the halves) a
    factor ``L`` whose pivots come in partner pairs satisfies ``Pi conj(L) = L G`` with a block
    diagonal, symmetric unitary ``G`` (2 x 2 per pair, read off the pivot rows).  With its Takagi
    factor ``G = H H^T`` (``H = sqrt(G)``) the matrix ``T^-1 L H`` (resp. ``T^* L H``) is real,
    because ``conj(T^-1) = T^-1 Pi``.  Mixing happens only inside a pair, with O(1) coefficients,
    so the grading of the factor (and its entry-wise accuracy) is kept.

    Parameters
    ----------
    L : ndarray, complex, shape (..., m, m), m even
    kind : {"P", "Q"}
    pivots : ndarray of int, shape (..., m)
        Closure row of each column's pivot (``pivots[2j + 1]`` the partner of ``pivots[2j]``), as
        returned by ``cauchy_cholesky`` / ``pivoted_cholesky`` with ``return_pivots=True``.

    Returns
    -------
    F : ndarray, float64, shape (..., m, m), with ``F F^T`` the real-realization Gramian.
    """
    L = np.asarray(L)
    pivots = np.asarray(pivots)
    m = L.shape[-1]
    if L.ndim < 2 or L.shape[-2] != m or m % 2 or pivots.shape != L.shape[:-1]:
        raise ValueError(f"real_factor needs L of shape (..., m, m) with m even and pivots of shape (..., m), "
                         f"got {L.shape} and {pivots.shape}.")
    n = m // 2
    p1, p2 = pivots[..., 0::2], pivots[..., 1::2]                              # (..., n)
    col1, col2 = L[..., 0::2], L[..., 1::2]                                     # (..., m, n)
    a = np.take_along_axis(col1, p1[..., None, :], -2)[..., 0, :].real
    x = np.take_along_axis(col1, p2[..., None, :], -2)[..., 0, :]
    b = np.take_along_axis(col2, p2[..., None, :], -2)[..., 0, :].real
    H = _pair_mixing(a, x, b)                                                   # (..., n, 2, 2)
    W = np.stack([col1 * H[..., None, :, 0, 0] + col2 * H[..., None, :, 1, 0],
                  col1 * H[..., None, :, 0, 1] + col2 * H[..., None, :, 1, 1]], -1)  # (..., m, n, 2)
    W = W.reshape(W.shape[:-2] + (m,))
    return np.ascontiguousarray(to_real_coordinates(W, "factor_" + kind).real)


def cauchy_real_factor(lam, g, discrete=False):
    """Real factor of the real-realization Gramian of a diagonal system, from its generators.

    The controllability Gramian of ``DiagonalSSM(lam, g, ...)`` (conjugate closure: nodes
    ``[lam, conj lam]``, generators ``[g, conj g]``) factored by ``cauchy_cholesky`` with conjugate
    pairs and mixed to real form as in ``real_factor``, in one pass over half-length arrays: each
    step pivots a mode and its conjugate partner (the largest remaining Schur-complement diagonal),
    after which the Schur-complement generators are again conjugate-symmetric.  For the
    observability Gramian (``to_real()`` coordinates) use ``2 * cauchy_real_factor(conj lam, conj C)``.

    Parameters
    ----------
    lam, g : ndarray, complex, shape (F, n); stable modes (``Re lam < 0``, discrete ``|lam| < 1``)
        wherever ``g != 0``
    discrete : bool

    Returns
    -------
    F : ndarray, float64, shape (F, 2n, 2n): ``F F^T = P`` of ``to_real()``; columns ``2j, 2j + 1``
        belong to the j-th pivot pair (the first pivot of each pair, the largest remaining
        Schur-complement diagonal, does not increase from pair to pair).
    """
    lam = np.asarray(lam, np.complex128)
    g = np.array(g, np.complex128)
    if lam.ndim != 2 or g.shape != lam.shape:
        raise ValueError(f"lam and g must both have shape (F, n), got {lam.shape} and {g.shape}.")
    nb, n = lam.shape
    dd = one_minus_abs2(lam) if discrete else -2.0 * lam.real
    active = dd > 0
    if np.any(~active & (g != 0)):
        raise ValueError("cauchy_real_factor needs stable modes (Re lam < 0, discrete |lam| < 1) wherever "
                         "g != 0; the Gramian does not exist otherwise.")
    inv_dd = np.where(active, 1.0 / np.where(active, dd, 1.0), 0.0)
    dd = np.where(active, dd, 1.0)
    lam = np.where(active, lam, 0.0 if discrete else -1.0)                      # park modes without signal
    perm = np.broadcast_to(np.arange(n), (nb, n)).copy()
    out = np.zeros((nb, 2, n, n, 2))                                            # (F, re/im row, mode, pair, column)
    rows = np.arange(nb)
    r2 = rows[:, None]
    sgn = 1.0 if discrete else -1.0
    swapped = (g, lam, inv_dd, dd, perm) if discrete else (g, lam, inv_dd, perm)
    for j in range(n):
        # positions j.. hold the modes not pivoted yet (perm: position -> mode); the others' rows are zero
        gj, lj, ij = g[:, j:], lam[:, j:], inv_dd[:, j:]
        d = (gj * gj.conj()).real * ij                                          # Schur-complement diagonal
        k = j + np.argmax(d, -1)
        for arr in swapped:                                                     # pivot mode to position j
            arr[rows, j], arr[rows, k] = arr[rows, k], arr[rows, j]
        dk = d[rows, k - j]
        ok = dk > 0
        nu = lam[:, j]
        h = g[:, j]
        nuc = nu.conj()
        # it = 1/den(lam, nu), itc = 1/den(lam, conj nu); den = -(mu + conj nu) or 1 - mu conj nu
        if discrete:
            ddj, ddk = dd[:, j:], dd[:, j:j + 1]
            it = 1.0 / disc_den(lj, nu[:, None], ddj, ddk)
            itc = 1.0 / disc_den(lj, nuc[:, None], ddj, ddk)
            ibk = 1.0 / disc_den(nuc, nu, dd[:, j], dd[:, j])                   # 1/den(conj nu, nu)
        else:
            it = -1.0 / (lj + nuc[:, None])
            itc = -1.0 / (lj + nu[:, None])
            ibk = -0.5 / nuc
        a = np.sqrt(np.where(ok, dk, 1.0))
        h2 = sgn * h.conj() * (nuc - nu) * ibk                                  # partner's generator after step 1
        b = np.where(ok, np.abs(h2) * np.sqrt(inv_dd[:, j]), 0.0)
        ok2 = b > 0
        coef1 = np.where(ok, h.conj() / a, 0.0)
        coef2 = np.where(ok2, sgn * h2.conj() / np.where(ok2, b, 1.0), 0.0)
        h00, h01, h11 = _sqrt_sym_unitary(np.where(ok, coef1 * h.conj() * ibk / a, 1.0),   # c = x / a
                                          np.where(ok, b / a, 0.0))
        A1 = (coef1 * h00)[:, None]
        A2 = (coef2 * h01)[:, None]
        A3 = (coef1 * h01)[:, None]
        A4 = (coef2 * h11)[:, None]
        lmn = lj - nu[:, None]
        lmc = lj - nuc[:, None]
        it[:, 0] = inv_dd[:, j]                                                 # 1/den(nu, nu), without cancellation
        u = gj * it                                                             # top rows of column 1 / coef1
        uc = gj * itc                                                           # conj of its bottom rows
        w = u * itc
        v = w * lmn                                                             # top rows of column 2 / coef2
        vc = w * lmc                                                            # conj of its bottom rows
        # column t of the pair in real coordinates: (Re, Im) of top + conj(bottom), halved
        X = u * A1 + v * A2 + uc * A1.conj() + vc * A2.conj()
        modes = perm[:, j:]
        out[r2, 0, modes, j, 0] = X.real
        out[r2, 1, modes, j, 0] = X.imag
        X = u * A3 + v * A4 + uc * A3.conj() + vc * A4.conj()
        out[r2, 0, modes, j, 1] = X.real
        out[r2, 1, modes, j, 1] = X.imag
        if ok2.all():
            gj[...] = v * lmc                                                   # generators after both pivots
        else:
            gj[...] = np.where(ok2[:, None], v * lmc, np.where(ok[:, None], sgn * u * lmn, gj))
    out *= 0.5
    return out.reshape(nb, 2 * n, 2 * n)


def pivoted_cholesky(G, conjugate_pairs=False, return_pivots=False):
    """Cholesky factor with diagonal pivoting of Hermitian positive semi-definite ``G``.

    Non-positive remaining pivots (rounding) are clipped to zero, so the factor
    always exists; ``G ~= L L^*``.

    Parameters
    ----------
    G : ndarray, complex, shape (..., m, m)
    conjugate_pairs : bool
        As in ``cauchy_cholesky``: pivot ``i`` is followed by its partner ``(i + m/2) % m``.
    return_pivots : bool
        Also return the pivot row of each column, shape (..., m).

    Returns
    -------
    L : ndarray, complex, shape (..., m, m)
    """
    S = np.array(G, np.complex128)
    if S.ndim < 2 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"G must be square, shape (..., m, m), got {S.shape}.")
    m = S.shape[-1]
    if conjugate_pairs and m % 2:
        raise ValueError(f"conjugate_pairs needs an even size m = 2n, got m = {m}.")
    L = np.zeros_like(S)
    pivots = np.zeros(S.shape[:-1], int)
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
        pivots[..., k] = p
    return (L, pivots) if return_pivots else L


#: conjugate pairs whose partner pivot is below this fraction of the first (modes this close to
#: the real axis, but not on it) break the grading of the pair-pivoted real factors
NEAR_REAL = 0.05


def partner_ratio(sys):
    """``|b(conj lam, lam)|`` per mode: the partner's pivot over the first one in a pair step.

    Continuous ``|Im lam| / |lam|``, discrete ``2 |Im lam| / |1 - conj(lam)^2|``; 0 for real modes,
    near 1 for modes far from the real axis.  Shape (..., n).
    """
    lam = sys.modes
    if sys.is_discrete:
        den = np.abs(1.0 - lam.conj() ** 2)
        return np.where(den > 0, 2.0 * np.abs(lam.imag) / np.where(den > 0, den, 1.0), 0.0)
    return np.where(lam != 0, np.abs(lam.imag) / np.where(lam != 0, np.abs(lam), 1.0), 0.0)


def near_real_channels(sys):
    """Channels with a mode that carries signal and is near the real axis but not on it.

    For them the pair-pivoted real factors lose their grading (the small partner pivot is forced
    next to its large partner) and the small Hankel singular values of ``Fq^T Fp`` lose relative
    accuracy (measured: 1e-5 at ``Im lam / |lam| = 1e-5``); ``complex_hankel_singular_values``
    serves them.  Boolean array, shape (...).
    """
    ratio = partner_ratio(sys)
    active = (sys.B != 0) | (sys.C != 0)
    return np.any(active & (ratio > 0) & (ratio < NEAR_REAL), -1)


def complex_hankel_singular_values(sys, horizon=None):
    """Hankel singular values from complete-pivoting (not pair-forced) closure factors.

    ``Lq^* Lp`` with ``P = Lp Lp^*``, ``Q = Lq Lq^*`` on the conjugate closure, factored with
    plain diagonal pivoting so that the factors stay graded for every set of modes; its complex
    SVD (about 4x the cost of the real one) gives the singular values.  Shape (..., 2n), descending.
    """
    Lp, Lq = gramian_factors(sys, horizon)
    if sys.order == 0:
        return np.zeros(sys.batch_shape + (0,))
    return np.linalg.svd(Lq.conj().swapaxes(-1, -2) @ Lp, compute_uv=False)


def _parked_closure(sys):
    """Conjugate closure with unstable modes that carry no signal parked (harmless for the Gramians)."""
    mu, beta, gamma = conjugate_closure(sys)
    inactive = np.concatenate([sys.residues == 0] * 2, -1)
    park = -1.0 if not sys.is_discrete else 0.0
    unstable = np.concatenate([~sys.stable_modes()] * 2, -1)
    mu = np.where(inactive & unstable, park, mu)
    beta = np.where(inactive & unstable, 0.0, beta)
    gamma = np.where(inactive & unstable, 0.0, gamma)
    return mu, beta, gamma


def real_gramian_factors(sys, horizon=None):
    """Real factors ``P = Fp Fp^T``, ``Q = Fq Fq^T`` of the Gramians of ``sys.to_real()``.

    Infinite horizon: ``cauchy_real_factor`` (generators only, pair pivoting, one pass).
    Finite horizon ``L``: pair-pivoted Cholesky of the closed-form Gramians, made real by
    ``real_factor``.  Both keep the grading of the factors (only the two columns of a
    conjugate pair are mixed).

    Parameters
    ----------
    sys : DiagonalSSM with batch shape (F,)
    horizon : int, optional

    Returns
    -------
    Fp, Fq : ndarray, float64, shape (F, 2n, 2n)
    """
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if horizon is None:
        check_stable(sys, "Hankel singular values and balanced truncation with an infinite horizon")
        mu, beta, gamma = _parked_closure(sys)
        n, nb = sys.n_modes, mu.shape[0]
        # both factors in one pass (twice the rows per numpy call)
        F = cauchy_real_factor(np.concatenate([mu[..., :n], mu[..., :n].conj()]),
                               np.concatenate([beta[..., :n], gamma[..., :n].conj()]), sys.is_discrete)
        return F[:nb], 2.0 * F[nb:]
    Lp, Lq, pp, pq = gramian_factors(sys, horizon, pairs=True, return_pivots=True)
    return real_factor(Lp, "P", pp), real_factor(Lq, "Q", pq)


def gramian_factors(sys, horizon=None, pairs=False, return_pivots=False):
    """Factors of both Gramians of the conjugate closure: ``P = Lp Lp^*``, ``Q = Lq Lq^*``.

    Parameters
    ----------
    sys : DiagonalSSM
    horizon : int, optional
        Kernel length L for finite-horizon Gramians of a discrete system.
    pairs : bool
        Pivot conjugate partners together (needed by ``real_factor``).
    return_pivots : bool
        Also return the pivot rows ``(pp, pq)``, each of shape (..., 2n).

    Returns
    -------
    Lp, Lq : ndarray, complex, shape (..., 2n, 2n)
        Factors on the conjugate-closure state (``to_real_coordinates(Lp, "factor_P")``
        gives a factor of the real-realization Gramian).
    pp, pq : ndarray of int, only with ``return_pivots``
    """
    _check_system(sys)
    horizon = _check_horizon(sys, horizon)
    if horizon is None:
        check_stable(sys, "Hankel singular values and balanced truncation with an infinite horizon")
        mu, beta, gamma = _parked_closure(sys)
        Lp, pp = cauchy_cholesky(mu, beta, sys.is_discrete, conjugate_pairs=pairs, return_pivots=True)
        Lq, pq = cauchy_cholesky(mu.conj(), gamma.conj(), sys.is_discrete, conjugate_pairs=pairs,
                                 return_pivots=True)
    else:
        mu, beta, gamma = conjugate_closure(sys)
        Lp, pp = pivoted_cholesky(_gramian(mu, beta, True, horizon), conjugate_pairs=pairs, return_pivots=True)
        Lq, pq = pivoted_cholesky(_gramian(mu.conj(), gamma.conj(), True, horizon), conjugate_pairs=pairs,
                                  return_pivots=True)
    return (Lp, Lq, pp, pq) if return_pivots else (Lp, Lq)
