"""Batched diagonal linear time-invariant systems with half-conjugate modes.

One channel is a single-input single-output system stored as ``n`` modes

    continuous:  x'(t)   = diag(lam) x(t) + B u(t),   y = 2 Re(C x) + D u
    discrete:    x[k+1]  = diag(lam) x[k] + B u[k],   y = 2 Re(C x) + D u

with ``lam, B, C`` complex of shape ``(..., n)`` and ``D`` real of shape ``(...)``.
The output ``2 Re(C x)`` makes the system real: it is the conjugate closure of
order ``2n`` (modes ``lam`` and ``conj(lam)``), which is what the model's
``state_dim`` counts.  A mode with ``Im(lam) == 0`` is a real mode; it still
contributes ``2 Re(C B) / (s - lam)`` to the transfer function, so a real pole
with residue ``rho`` is stored with ``C B = rho / 2`` ("C halved").

All numerics run in float64 / complex128 whatever the input precision.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["DiagonalSSM", "h2_inner"]

_DOMAINS = ("continuous", "discrete")


def _as_complex(name, value):
    """Convert ``value`` to a complex128 array, rejecting non-numeric and non-finite input."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}.") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be an array of numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.complex128)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; all entries must be finite.")
    return arr


def _as_real(name, value):
    """Convert ``value`` to a float64 array; complex input must have zero imaginary part."""
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        if np.any(arr.imag != 0):
            raise ValueError(f"{name} must be real, got complex values with non-zero imaginary part.")
        arr = arr.real
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; all entries must be finite.")
    return arr


def _safe_expm1_over(z):
    """Return ``expm1(z) / z`` elementwise for complex ``z``, with the limit 1 at ``z == 0``.

    ``expm1`` is evaluated in a cancellation-free complex form:
    ``expm1(x + iy) = expm1(x) cos(y) - 2 sin(y/2)^2 + i exp(x) sin(y)``.
    """
    x, y = z.real, z.imag
    e = np.expm1(x) * np.cos(y) - 2.0 * np.sin(0.5 * y) ** 2 + 1j * np.exp(x) * np.sin(y)
    small = np.abs(z) < 1e-8
    zs = np.where(small, 1.0, z)
    return np.where(small, 1.0 + 0.5 * z, e / zs)


def h2_inner(mu_a, rho_a, mu_b, rho_b, discrete):
    """H2 inner product of two pole-residue sums, ``<sum_i rho_a_i/(s - mu_a_i), sum_j rho_b_j/(s - mu_b_j)>``.

    ``sum_ij rho_a_i conj(rho_b_j) / den_ij`` with ``den_ij = -(mu_a_i + conj(mu_b_j))`` (continuous)
    or ``1 - mu_a_i conj(mu_b_j)`` (discrete; the l2 inner product of the impulse responses from
    step 1 on).  Terms with a zero residue count 0 whatever their poles.  Pass conjugate closures
    (all poles, each with its own residue) to get inner products of the real systems.

    Parameters
    ----------
    mu_a, rho_a : ndarray, complex, shape (..., p)
    mu_b, rho_b : ndarray, complex, shape (..., q)
    discrete : bool

    Returns
    -------
    ndarray, complex128, shape (...)
    """
    mi, mj = mu_a[..., :, None], np.conj(mu_b[..., None, :])
    den = (1.0 - mi * mj) if discrete else -(mi + mj)
    num = rho_a[..., :, None] * np.conj(rho_b[..., None, :])
    terms = np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape), np.complex128),
                      where=num != 0)
    return terms.sum((-1, -2))


class DiagonalSSM:
    """A batch of real SISO systems in diagonal half-conjugate form.

    Parameters
    ----------
    modes : array_like, complex, shape (..., n)
        Eigenvalues ``lam`` (one per conjugate pair, or a real eigenvalue with
        ``Im == 0``).  Continuous: poles in the s-plane; discrete: in the z-plane.
    B, C : array_like, complex, shape (..., n)
        Input and output vectors.  ``modes``, ``B`` and ``C`` are broadcast
        against each other.
    D : array_like, real, shape (...), optional
        Feed-through, broadcast to the batch shape; default 0.
    dt : float or array_like, shape (...), optional
        Step size per channel (> 0).  Needed by ``discretize`` and by
        ``kernel`` of a continuous system; kept as information for discrete ones.
    domain : {"continuous", "discrete"}
        Time domain of the modes.

    Attributes
    ----------
    modes, B, C : ndarray, complex128, shape (..., n)
    D : ndarray, float64, shape (...)
    dt : ndarray, float64, shape (...), or None
    domain : str
    batch_shape : tuple
    n_modes : int, stored modes n
    order : int, real order 2n of the conjugate closure
    """

    def __init__(self, modes, B, C, D=None, dt=None, domain="continuous"):
        if not isinstance(domain, str) or domain not in _DOMAINS:
            raise ValueError(f"domain must be 'continuous' or 'discrete', got {domain!r}.")
        lam = _as_complex("modes", modes)
        b = _as_complex("B", B)
        c = _as_complex("C", C)
        if lam.ndim == 0:
            raise ValueError("modes must have shape (..., n) with at least one dimension, got a scalar.")
        try:
            lam, b, c = np.broadcast_arrays(lam, b, c)
        except ValueError:
            raise ValueError(
                f"modes, B and C must have broadcastable shapes (..., n), got {np.shape(modes)}, "
                f"{np.shape(B)} and {np.shape(C)}."
            ) from None
        batch = lam.shape[:-1]
        d = np.zeros(batch) if D is None else _as_real("D", D)
        try:
            d = np.broadcast_to(d, batch)
        except ValueError:
            raise ValueError(f"D must have shape broadcastable to the batch shape {batch}, got {d.shape}.") from None
        if dt is not None:
            dt_arr = _as_real("dt", dt)
            if np.any(dt_arr <= 0):
                raise ValueError(f"dt must be positive, got minimum {dt_arr.min()}.")
            try:
                dt_arr = np.broadcast_to(dt_arr, batch)
            except ValueError:
                raise ValueError(
                    f"dt must be a scalar or have shape broadcastable to the batch shape {batch}, got {dt_arr.shape}."
                ) from None
            dt = np.array(dt_arr, dtype=np.float64)
        self.modes = np.array(lam, dtype=np.complex128)
        self.B = np.array(b, dtype=np.complex128)
        self.C = np.array(c, dtype=np.complex128)
        self.D = np.array(d, dtype=np.float64)
        self.dt = dt
        self.domain = domain

    # ------------------------------------------------------------------ basics
    @property
    def batch_shape(self):
        return self.modes.shape[:-1]

    @property
    def n_modes(self):
        return self.modes.shape[-1]

    @property
    def order(self):
        return 2 * self.n_modes

    @property
    def is_discrete(self):
        return self.domain == "discrete"

    def __repr__(self):
        dt = "None" if self.dt is None else f"array{self.dt.shape}"
        return (f"DiagonalSSM(domain={self.domain!r}, batch_shape={self.batch_shape}, "
                f"n_modes={self.n_modes}, dt={dt})")

    def __getitem__(self, index):
        """Index the batch dimensions (never the mode axis): ``sys[3]``, ``sys[:, 1:4]``, ``sys[[0, 2]]``."""
        if not isinstance(index, tuple):
            index = (index,)
        if len(self.batch_shape) == 0:
            raise IndexError("a DiagonalSSM with scalar batch shape cannot be indexed.")
        has_ellipsis = any(i is Ellipsis for i in index)                   # (`in` would compare arrays)
        idx_modes = index + (slice(None),) if has_ellipsis else index + (Ellipsis, slice(None))
        dt = None if self.dt is None else self.dt[index]
        return DiagonalSSM(self.modes[idx_modes], self.B[idx_modes], self.C[idx_modes],
                           self.D[index], dt, self.domain)

    def _check_compatible(self, other):
        if not isinstance(other, DiagonalSSM):
            raise TypeError(f"expected a DiagonalSSM, got {type(other).__name__}.")
        if other.domain != self.domain:
            raise ValueError(f"cannot combine a {self.domain} system with a {other.domain} system.")

    def __sub__(self, other):
        """Difference ``G - H`` as one diagonal system (modes of both, C of H negated)."""
        self._check_compatible(other)
        batch = np.broadcast_shapes(self.batch_shape, other.batch_shape)
        if (self.dt is None) != (other.dt is None) or (
                self.dt is not None and not np.array_equal(np.broadcast_to(self.dt, batch),
                                                           np.broadcast_to(other.dt, batch))):
            raise ValueError("cannot subtract systems with different dt (one difference system has one dt "
                             "per channel); discretize both with the same dt first.")

        def bc(x, n):
            return np.broadcast_to(x, batch + (n,))

        lam = np.concatenate([bc(self.modes, self.n_modes), bc(other.modes, other.n_modes)], -1)
        b = np.concatenate([bc(self.B, self.n_modes), bc(other.B, other.n_modes)], -1)
        c = np.concatenate([bc(self.C, self.n_modes), -bc(other.C, other.n_modes)], -1)
        return DiagonalSSM(lam, b, c, self.D - other.D, self.dt, self.domain)

    @property
    def residues(self):
        """``C * B``, shape (..., n): the residue of each stored pole."""
        return self.C * self.B

    # ------------------------------------------------------------ conversions
    def discretize(self, method="zoh"):
        """Discretise a continuous system with step ``dt``.

        ZOH:      ``lam_d = exp(lam dt)``, ``B_d = (exp(lam dt) - 1) / lam * B``
                  (evaluated as ``dt * expm1(lam dt)/(lam dt) * B``, exact limit ``dt B`` at ``lam = 0``).
        Bilinear: ``lam_d = (1 + lam dt/2) / (1 - lam dt/2)``, ``B_d = dt / (1 - lam dt/2) * B``.

        Returns
        -------
        DiagonalSSM, domain "discrete", same C, D and dt.
        """
        if self.is_discrete:
            raise ValueError("discretize() needs a continuous system, got one that is already discrete.")
        if self.dt is None:
            raise ValueError("discretize() needs the step size: construct the system with dt=... (positive).")
        dt = self.dt[..., None]
        lam = self.modes
        if method == "zoh":
            z = lam * dt
            lam_d = np.exp(z)
            b_d = dt * _safe_expm1_over(z) * self.B
        elif method == "bilinear":
            den = 1.0 - 0.5 * lam * dt
            if np.any(den == 0):
                raise ValueError("bilinear discretisation is undefined for a mode with lam * dt == 2.")
            lam_d = (1.0 + 0.5 * lam * dt) / den
            b_d = dt / den * self.B
        else:
            raise ValueError(f"method must be 'zoh' or 'bilinear', got {method!r}.")
        return DiagonalSSM(lam_d, b_d, self.C, self.D, self.dt, "discrete")

    def to_real(self):
        """Real block realization of the conjugate closure.

        State ``[Re x; Im x]`` (all real parts, then all imaginary parts):
        ``A = [[a, -w], [w, a]]`` with ``a = diag(Re lam)``, ``w = diag(Im lam)``,
        ``B = [Re b; Im b]``, ``C = 2 [Re c, -Im c]``, ``D = D``.

        Returns
        -------
        A : ndarray, shape (..., 2n, 2n)
        B : ndarray, shape (..., 2n, 1)
        C : ndarray, shape (..., 1, 2n)
        D : ndarray, shape (..., 1, 1)
        """
        n = self.n_modes
        a, w = self.modes.real, self.modes.imag
        A = np.zeros(self.batch_shape + (2 * n, 2 * n))
        i = np.arange(n)
        A[..., i, i] = a
        A[..., i + n, i + n] = a
        A[..., i, i + n] = -w
        A[..., i + n, i] = w
        B = np.concatenate([self.B.real, self.B.imag], -1)[..., :, None]
        C = 2.0 * np.concatenate([self.C.real, -self.C.imag], -1)[..., None, :]
        D = self.D[..., None, None].copy()
        return A, B, C, D

    # ------------------------------------------------------------- responses
    def kernel(self, L):
        """Convolution kernel ``K[l] = 2 Re(sum_i C_i B_i lam_i^l)``, ``l = 0..L-1`` (without D).

        A continuous system is first discretised with ZOH and its ``dt``.

        Returns
        -------
        ndarray, float64, shape (..., L)
        """
        if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 0:
            raise ValueError(f"L must be a non-negative integer, got {L!r}.")
        sys = self if self.is_discrete else self.discretize("zoh")
        powers = np.power(sys.modes[..., None], np.arange(int(L)))          # (..., n, L)
        return 2.0 * np.einsum("...n,...nl->...l", sys.residues, powers).real

    def freqresp(self, omega):
        """Frequency response ``G(s)``: continuous ``s = i omega``, discrete ``z = exp(i omega)``.

        ``G = D + sum_i [ rho_i / (s - lam_i) + conj(rho_i) / (s - conj(lam_i)) ]``, ``rho = C B``.

        Parameters
        ----------
        omega : array_like, real, shape (F,) or broadcastable to (..., F)
            Angular frequencies (rad per time unit; rad per sample when discrete).

        Returns
        -------
        ndarray, complex128, shape (..., F)
        """
        om = _as_real("omega", omega)
        if om.ndim == 0:
            om = om[None]
        s = np.exp(1j * om) if self.is_discrete else 1j * om
        s = s[..., None, :]                                                   # (..., 1, F)
        lam = self.modes[..., :, None]                                        # (..., n, 1)
        rho = self.residues[..., :, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            g = (rho / (s - lam) + rho.conj() / (s - lam.conj())).sum(-2)
        return g + self.D[..., None]

    # ----------------------------------------------------------------- norms
    def is_stable(self):
        """Asymptotic stability per channel: ``Re lam < 0`` (continuous) or ``|lam| < 1`` (discrete).

        Returns
        -------
        ndarray of bool, shape (...)
        """
        return np.all(self.stable_modes(), axis=-1)

    def stable_modes(self):
        """Per mode: ``Re lam < 0`` (continuous) or ``|lam| < 1`` (discrete), shape (..., n)."""
        return (np.abs(self.modes) < 1.0) if self.is_discrete else (self.modes.real < 0.0)

    def _stable_where_active(self, active):
        """Per channel: every mode that carries signal (``active``) is asymptotically stable."""
        return np.all(self.stable_modes() | ~active, axis=-1)

    def h2_norm(self):
        """H2 norm per channel.

        Continuous: ``sqrt(sum_ij rho_i conj(rho_j) / -(mu_i + conj(mu_j)))`` over the conjugate
        closure (infinite when ``D != 0`` or the system is unstable).
        Discrete: ``sqrt(D^2 + sum_ij rho_i conj(rho_j) / (1 - mu_i conj(mu_j)))``, the l2 norm of
        the impulse response ``(D, K[0], K[1], ...)`` (infinite when unstable).

        Returns
        -------
        ndarray, float64, shape (...)
        """
        mu = np.concatenate([self.modes, self.modes.conj()], -1)
        rho = np.concatenate([self.residues, self.residues.conj()], -1)
        # the closure's double sum is twice the real part of its half with i over the stored modes
        h2sq = np.maximum(2.0 * h2_inner(self.modes, self.residues, mu, rho, self.is_discrete).real, 0.0)
        if self.is_discrete:
            h2sq = h2sq + self.D ** 2
        else:
            h2sq = np.where(self.D != 0, np.inf, h2sq)
        return np.where(self._stable_where_active(self.residues != 0), np.sqrt(h2sq), np.inf)

    def hinf_norm(self, return_frequency=False, rtol=1e-10):
        """H-infinity norm per channel, ``sup_omega |G|``, accurate to about ``rtol``.

        Method: |G| on a per-channel grid that contains, for every mode, its
        resonance ``|Im lam|`` (continuous) or ``|angle lam|`` (discrete) and
        points at multiples of its damping around it, plus a logarithmic grid;
        then golden-section refinement of the best local maxima, all channels
        at once.  Unstable channels get ``inf``.

        Returns
        -------
        norm : ndarray, float64, shape (...)
        omega : ndarray, float64, shape (...), only if ``return_frequency``
            Frequency of the peak (``inf`` for the continuous limit ``|D|``).
        """
        if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real) or not (0.0 < rtol < 1.0):
            raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}.")
        batch = self.batch_shape
        lam = self.modes
        active = self.residues != 0
        if self.n_modes == 0 or not np.any(active):                                # G = D, a constant
            norm = np.abs(np.broadcast_to(self.D, batch)).astype(float)
            return (norm, np.zeros(batch)) if return_frequency else norm
        if self.is_discrete:
            centre = np.abs(np.angle(lam))
            width = np.maximum(np.abs(np.log(np.maximum(np.abs(lam), 1e-300))), 1e-12)
            base = np.broadcast_to(np.linspace(0.0, np.pi, 129), batch + (129,))
            hi = np.pi
        else:
            centre = np.abs(lam.imag)
            width = np.maximum(np.abs(lam.real), 1e-12 * np.maximum(np.abs(lam), 1e-300))
            mag = np.where(active, np.abs(lam), np.nan)
            with np.errstate(all="ignore"):
                lo = np.nanmin(np.where(mag > 0, mag, np.nan), -1)
                up = np.nanmax(mag, -1)
            lo = np.where(np.isfinite(lo), lo, 1.0)
            up = np.where(np.isfinite(up), up, 1.0)
            t = np.linspace(0.0, 1.0, 97)
            base = np.exp(np.log(lo * 1e-3)[..., None] + t * np.log(up * 1e3 / (lo * 1e-3))[..., None])
            base = np.concatenate([np.zeros(batch + (1,)), base], -1)
            hi = np.inf
        offsets = np.array([-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
        local = centre[..., :, None] + width[..., :, None] * offsets                 # (..., n, 11)
        local = np.where(active[..., :, None], local, 0.0).reshape(batch + (-1,))
        grid = np.sort(np.clip(np.concatenate([base, local], -1), 0.0, hi), -1)     # (..., F)
        mag = np.abs(self.freqresp(grid))
        F = grid.shape[-1]
        # candidate brackets around the K largest grid values
        K = min(8, F)
        top = np.argsort(-mag, -1)[..., :K]                                          # (..., K)
        a = np.take_along_axis(grid, np.clip(top - 1, 0, F - 1), -1)
        b = np.take_along_axis(grid, np.clip(top + 1, 0, F - 1), -1)
        best_val = mag.max(-1)
        best_om = np.take_along_axis(grid, np.argmax(mag, -1)[..., None], -1)[..., 0]
        refined_val, refined_om = self._golden_max(a, b, rtol)
        better = refined_val.max(-1) > best_val
        best_om = np.where(better, np.take_along_axis(refined_om, np.argmax(refined_val, -1)[..., None], -1)[..., 0],
                           best_om)
        best_val = np.maximum(best_val, refined_val.max(-1))
        if not self.is_discrete:   # limit omega -> infinity is |D|
            at_inf = np.abs(self.D) > best_val
            best_om = np.where(at_inf, np.inf, best_om)
            best_val = np.maximum(best_val, np.abs(self.D))
        norm = np.where(self._stable_where_active(active), best_val, np.inf)
        if return_frequency:
            return norm, best_om
        return norm

    def _golden_max(self, a, b, rtol):
        """Golden-section search of |G| on brackets ``[a, b]`` of shape (..., K); returns value and argmax."""
        g = (np.sqrt(5.0) - 1.0) / 2.0
        x1 = b - g * (b - a)
        x2 = a + g * (b - a)
        f1 = np.abs(self.freqresp(x1))
        f2 = np.abs(self.freqresp(x2))
        for _ in range(200):
            if np.all((b - a) <= rtol * np.maximum(np.abs(a) + np.abs(b), 1e-300)):
                break
            left = f1 > f2                              # maximum lies in [a, x2]
            b = np.where(left, x2, b)
            a = np.where(left, a, x1)
            x2n = np.where(left, x1, a + g * (b - a))
            x1n = np.where(left, b - g * (b - a), x2)
            f2n = np.where(left, f1, np.nan)
            f1n = np.where(left, np.nan, f2)
            x1, x2 = x1n, x2n
            new = np.where(left, x1, x2)
            fnew = np.abs(self.freqresp(new))
            f1 = np.where(left, fnew, f1n)
            f2 = np.where(left, f2n, fnew)
        take1 = f1 >= f2
        return np.where(take1, f1, f2), np.where(take1, x1, x2)
