"""Convolution kernels of diagonal state-space layers.

Every kernel is the impulse response of a discretised diagonal SISO system per
channel (DESIGN.md, numerical contract)::

    K[h, l] = 2 Re( sum_i  C[h,i] B_d[h,i] lam_d[h,i]**l ),   l = 0..L-1

and the four kernels differ only in how ``(lam, B, dt)`` become ``(lam_d, B_d)``:

``s4d``          zero-order hold: ``lam_d = exp(lam dt)``, ``B_d = (exp(lam dt) - 1)/lam B``.
``bilinear``     S4: ``lam_d = (1 + lam dt/2)/(1 - lam dt/2)``, ``B_d = dt B/(1 - lam dt/2)``.
``dss-exp``      Gupta et al. (2022), DSS-EXP: ``K = Re(w (exp(lam dt)-1)/lam exp(lam l dt))``,
                 i.e. ZOH with ``w = 2 C B`` (DSS has no B: layers fix B = 1 by default).
``dss-softmax``  DSS-SOFTMAX: ``K = Re(w / lam * row_softmax(lam dt l))``: each mode's row
                 ``exp(lam dt l)`` is divided by its sum over ``l = 0..l_max-1``; Re(lam) is
                 unconstrained.  In discrete form ``lam_d = exp(lam dt)``,
                 ``B_d = B / (lam S)``, ``S = sum_{l < l_max} exp(lam dt l)``.

The powers ``lam_d**l = exp(l log lam_d)`` are evaluated as a factorised
Vandermonde product: with ``l = a m + b`` (m ~ sqrt(L)),
``lam_d**l = exp(a m z) exp(b z)``, so the kernel is one batched real matrix
product of two (H, 2n, ~sqrt L) factors.  No (H, n, L) tensor is formed; the
factors are computed in float64/complex128 (cheap: H n sqrt(L) exponentials)
and cast to the output dtype, so float32 kernels carry only a few rounding
errors per tap.  Modes are processed in chunks so that the factors never
exceed ``max_elements`` complex entries.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "KERNELS",
    "cexpm1",
    "log_row_sum",
    "discretize",
    "undiscretize",
    "vandermonde_kernel",
    "DEFAULT_MAX_ELEMENTS",
]

KERNELS = ("s4d", "bilinear", "dss-exp", "dss-softmax")
DEFAULT_MAX_ELEMENTS = 2**24


def check_kernel_name(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"Unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}.")


def cexpm1(z: torch.Tensor) -> torch.Tensor:
    """``exp(z) - 1`` for complex z, accurate also for small |z|."""
    a, b = z.real, z.imag
    re = torch.expm1(a) * torch.cos(b) - 2.0 * torch.sin(0.5 * b) ** 2
    im = torch.exp(a) * torch.sin(b)
    return torch.complex(re, im)


def log_row_sum(z: torch.Tensor, L: int) -> torch.Tensor:
    """``log(sum_{l=0}^{L-1} exp(z l))`` (complex, any branch) computed without overflow.

    Uses the geometric sum ``(exp(L w) - 1)/(exp(w) - 1)`` with ``w = z`` when
    ``Re z <= 0`` and ``w = -z`` (after factoring out ``exp((L-1) z)``) otherwise;
    the limit ``L`` is taken where ``w == 0``.
    """
    grow = z.real > 0
    w = torch.where(grow, -z, z)
    den = cexpm1(w)
    tiny = den.abs() == 0
    ratio = cexpm1(L * w) / torch.where(tiny, torch.ones_like(den), den)
    ratio = torch.where(tiny, torch.full_like(ratio, float(L)), ratio)
    return torch.log(ratio) + torch.where(grow, (L - 1) * z, torch.zeros_like(z))


def _reciprocal(lam: torch.Tensor) -> torch.Tensor:
    return 1.0 / lam


def discretize(kernel: str, lam: torch.Tensor, B: torch.Tensor, dt: torch.Tensor, l_max=None):
    """Discretise a batch of diagonal systems.

    Parameters
    ----------
    kernel : one of ``KERNELS``
    lam, B : complex (H, n) continuous eigenvalues and input vector
    dt : real (H,) step per channel
    l_max : int, the normalisation length of ``dss-softmax`` (ignored otherwise)

    Returns
    -------
    lam_d : complex (H, n)
    log_B_d_scale : complex (H, n) or None. ``B_d = B_core * exp(log_B_d_scale)``
    B_core : complex (H, n)

    The split of ``B_d`` into a core and a log-scale lets the dss-softmax kernel,
    whose ``B_d`` can be astronomically small for growing modes, stay in range.
    Use :func:`discrete_B` for the plain product.
    """
    check_kernel_name(kernel)
    z = lam * dt[:, None]
    if kernel in ("s4d", "dss-exp"):
        return torch.exp(z), None, B * cexpm1(z) / lam
    if kernel == "bilinear":
        den = 1.0 - 0.5 * z
        return (1.0 + 0.5 * z) / den, None, B * dt[:, None] / den
    if l_max is None:
        raise ValueError("The dss-softmax kernel needs l_max, the length its kernel is normalised over.")
    return torch.exp(z), -log_row_sum(z, int(l_max)), B * _reciprocal(lam)


def discrete_B(log_scale, B_core):
    return B_core if log_scale is None else B_core * torch.exp(log_scale)


def undiscretize(kernel: str, lam_d: torch.Tensor, B_d: torch.Tensor, dt: torch.Tensor, l_max=None):
    """Exact inverse of :func:`discretize`: ``(lam, B)`` with the given ``dt``.

    ZOH kernels use the principal branch of ``log(lam_d)``; the powers ``lam_d**l``
    do not depend on the branch.  No validation here (see ``SSMLayer.load_discrete_system``).
    """
    check_kernel_name(kernel)
    dtc = dt[:, None]
    if kernel == "bilinear":
        lam = (2.0 / dtc) * (lam_d - 1.0) / (lam_d + 1.0)
        return lam, B_d * (1.0 - 0.5 * lam * dtc) / dtc
    z = torch.log(lam_d)
    lam = z / dtc
    if kernel in ("s4d", "dss-exp"):
        return lam, B_d * lam / cexpm1(z)
    if l_max is None:
        raise ValueError("The dss-softmax kernel needs l_max, the length its kernel is normalised over.")
    return lam, B_d * torch.exp(log_row_sum(z, int(l_max))) * lam


def vandermonde_kernel(w, z, L: int, dtype=torch.float32, log_scale=None, max_elements: int = DEFAULT_MAX_ELEMENTS):
    """``K[h, l] = 2 Re( sum_i w[h,i] exp(z[h,i] l + log_scale[h,i]) )`` for l = 0..L-1.

    Parameters
    ----------
    w, z : complex (H, n); z = log(lam_d)
    L : kernel length
    dtype : real dtype of the result (float32 or float64)
    log_scale : complex (H, n) or None, added to the exponent (keeps tiny/huge
        coefficients of growing modes in range)
    max_elements : bound on the complex entries of the per-chunk factors (H, n_chunk, m + L/m)

    Returns
    -------
    K : real (H, L) of ``dtype``
    """
    H, n = z.shape
    if L < 1:
        return torch.zeros(H, 0, dtype=dtype, device=z.device)
    cdt = torch.complex128
    w, z = w.to(cdt), z.to(cdt)
    m = max(1, int(math.ceil(math.sqrt(L))))
    A = int(math.ceil(L / m))
    # Shift growing modes (Re z > 0) so that every factor is <= 1; the shift goes into the coefficient.
    grow = torch.clamp(z.real, min=0.0)
    exponent = grow * (m * A - 1)
    if log_scale is not None:
        exponent = exponent + log_scale.to(cdt)
    coef = w * torch.exp(exponent)  # (H, n)
    ar = torch.arange(A, device=z.device, dtype=torch.float64) * m
    br = torch.arange(m, device=z.device, dtype=torch.float64)
    per_mode = H * (A + m)
    chunk = max(1, min(n, max_elements // max(per_mode, 1)))
    out = None
    for s in range(0, n, chunk):
        zc, gc = z[:, s:s + chunk, None], grow[:, s:s + chunk, None]
        P = coef[:, s:s + chunk, None] * torch.exp(zc * ar - gc * (m * (A - 1)))  # (H, c, A)
        Q = torch.exp(zc * br - gc * (m - 1))  # (H, c, m)
        X = torch.cat([P.real, P.imag], dim=1).to(dtype)  # (H, 2c, A)
        Y = torch.cat([Q.real, -Q.imag], dim=1).to(dtype)  # (H, 2c, m)
        part = torch.bmm(X.transpose(1, 2), Y)  # (H, A, m): Re(P Q) summed over modes
        out = part if out is None else out + part
    return 2.0 * out.reshape(H, A * m)[:, :L]
