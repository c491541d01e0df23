"""The diagonal state-space (DSS) layer: convolution mode and recurrent step mode.

Per channel h (a SISO system with n = N/2 stored half-conjugate modes)::

    x_k = lam_d * x_{k-1} + B_d u_k,      y_k = 2 Re(C x_k) + D u_k

which is the causal convolution ``y = K * u + D u`` with
``K[l] = 2 Re(sum_i C_i B_d,i lam_d,i**l)`` (see :mod:`ssmcompress.nn.kernels`).

Parameters (stable names, state_dict/safetensors friendly; complex tensors are
stored as real tensors with a trailing dimension 2, as ``torch.view_as_real``):

==============  =========  ===================================================
``log_dt``      (H,)       log step per channel
``log_A_real``  (H, n)     ``Re(A) = -exp(log_A_real)`` (s4d, bilinear, dss-exp)
``A_real``      (H, n)     ``Re(A)`` unconstrained (dss-softmax only)
``A_imag``      (H, n)     ``Im(A)``
``B``           (H, n, 2)  parameter, or a buffer when ``learn_B`` is False
``C``           (H, n, 2)  complex output vector
``D``           (H,)       skip connection
==============  =========  ===================================================

Optimiser grouping: ``log_dt``, ``log_A_real``/``A_real``, ``A_imag`` and a
learnable ``B`` are the SSM parameters (S4 convention: own learning rate, no
weight decay).  They are returned by :meth:`SSMLayer.ssm_parameters` and carry
the attribute ``p._optim = {"weight_decay": 0.0}``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .init import INITS, initial_modes
from .kernels import DEFAULT_MAX_ELEMENTS, KERNELS, check_kernel_name, discretize, log_row_sum, undiscretize
from .system import DiscreteSystem

__all__ = ["SSMLayer", "causal_conv"]


class _CausalConv(torch.autograd.Function):
    """``y = (K * v)[:L] + D v`` by FFTs of length 2L, with a backward pass of real FFTs only.

    Autograd through ``irfft(rfft(v) * rfft(K))`` differentiates ``rfft`` with a full complex FFT of
    length 2L per (batch, channel) row, the largest single cost of a training step on CPU.  The
    adjoint of a causal convolution is a correlation, so the gradients are again one real FFT and
    one inverse real FFT each:

        dv = (g correlated with K)[:L] + D g = irfft(rfft(g) conj(rfft(K)))[:L] + D g
        dK = sum over the batch of (g correlated with v)[:L] = irfft(sum_b rfft(g) conj(rfft(v)))[:L]
        dD = sum over batch and time of g v

    With both signals zero-padded to 2L the circular correlations equal the linear ones on the
    first L taps.  The forward pass is the same sequence of operations as before.
    """

    @staticmethod
    def forward(ctx, v, K, D):
        L = v.shape[-1]
        n = 2 * L
        vf, kf = torch.fft.rfft(v, n=n), torch.fft.rfft(K, n=n)
        y = torch.fft.irfft(vf * kf, n=n)[..., :L]
        y = y + v * D[:, None]
        ctx.save_for_backward(v, D, vf, kf)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        v, D, vf, kf = ctx.saved_tensors
        L = v.shape[-1]
        n = 2 * L
        gf = torch.fft.rfft(g, n=n)
        dv = dK = dD = None
        if ctx.needs_input_grad[0]:
            dv = torch.fft.irfft(gf * kf.conj(), n=n)[..., :L] + g * D[:, None]
        if ctx.needs_input_grad[1]:
            dK = torch.fft.irfft((gf * vf.conj()).sum(0), n=n)[..., :L]
        if ctx.needs_input_grad[2]:
            dD = (g * v).sum((0, 2))
        return dv, dK, dD


def causal_conv(v: torch.Tensor, K: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Causal convolution of ``v`` (batch, H, L) with kernels ``K`` (H, L) plus skip ``D`` (H,): (batch, H, L).

    ``y[b, h, t] = sum_{s <= t} K[h, t - s] v[b, h, s] + D[h] v[b, h, t]``, by FFTs of length 2L, differentiable
    in all three (see :class:`_CausalConv`).  Real floating tensors of one dtype."""
    if not (isinstance(v, torch.Tensor) and v.ndim == 3 and isinstance(K, torch.Tensor)
            and K.shape == v.shape[1:] and isinstance(D, torch.Tensor) and D.shape == v.shape[1:2]):
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (v, K, D)]
        raise ValueError(f"causal_conv expects v (batch, H, L), K (H, L) and D (H,), got shapes {shapes}.")
    if v.dtype != K.dtype or v.dtype != D.dtype or not v.is_floating_point():
        raise ValueError(f"causal_conv expects real floating tensors of one dtype, got {v.dtype}, {K.dtype}, {D.dtype}.")
    return _CausalConv.apply(v, K, D)

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_SSM_NAMES = ("log_dt", "log_A_real", "A_real", "A_imag", "B")


def _as_complex128(x, name):
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        x = torch.as_tensor(np.asarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}.")
    return x.detach().to("cpu", torch.complex128)


class SSMLayer(nn.Module):
    """Diagonal state-space layer mapping (batch, length, d_model) -> (batch, length, d_model).

    Parameters
    ----------
    d_model : int
        Number of channels H (independent SISO systems).
    state_dim : int
        Real order N per channel (even); ``N/2`` complex modes are stored.
    kernel : {"s4d", "bilinear", "dss-exp", "dss-softmax"}
    init : {"legs", "lin", "inv", "real", "random"}
        Initialisation of A (and B for s4d/bilinear; DSS kernels start from B = 1).
    l_max : int, optional
        Sequence length the dss-softmax kernel is normalised over (required for it).
    dt_min, dt_max : float
        ``log_dt`` is drawn uniformly in ``[log dt_min, log dt_max]``.
    learn_B : bool, optional
        Whether B is trained; default True for s4d/bilinear and False (B = 1) for
        the DSS kernels, which have no B.
    max_kernel_elements : int
        Bound on complex entries of the kernel's intermediate factors (attribute,
        may be changed later); the kernel is computed mode chunk by mode chunk.
    """

    def __init__(
        self,
        d_model: int,
        state_dim: int = 64,
        kernel: str = "s4d",
        init: str = "legs",
        l_max=None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        learn_B=None,
        max_kernel_elements: int = DEFAULT_MAX_ELEMENTS,
    ):
        super().__init__()
        check_kernel_name(kernel)
        if init not in INITS:
            raise ValueError(f"Unknown init {init!r}; choose one of {', '.join(sorted(INITS))}.")
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}.")
        if not isinstance(state_dim, (int, np.integer)) or state_dim < 2 or state_dim % 2:
            raise ValueError(
                f"state_dim must be a positive even integer (the real order, 2 per stored mode), got {state_dim!r}."
            )
        if kernel == "dss-softmax" and l_max is None:
            raise ValueError("The dss-softmax kernel needs l_max, the sequence length its kernel is normalised over.")
        if l_max is not None and (int(l_max) != l_max or l_max < 1):
            raise ValueError(f"l_max must be a positive integer, got {l_max!r}.")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Need 0 < dt_min <= dt_max, got dt_min={dt_min} and dt_max={dt_max}.")
        self.d_model = H = d_model
        self.kernel_name = kernel
        self.init_name = init
        self.l_max = None if l_max is None else int(l_max)
        self.learn_B = (kernel in ("s4d", "bilinear")) if learn_B is None else bool(learn_B)
        self.max_kernel_elements = int(max_kernel_elements)
        self._step_cache = None

        n = int(state_dim) // 2
        A, B = initial_modes(init, int(state_dim), H)
        if kernel.startswith("dss"):
            B = torch.ones_like(B)
        C = torch.randn(H, n, dtype=torch.complex128)  # standard complex normal
        log_dt = math.log(dt_min) + torch.rand(H, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min))
        dtype = torch.get_default_dtype()
        self.log_dt = nn.Parameter(log_dt.to(dtype))
        self.D = nn.Parameter(torch.randn(H, dtype=dtype))
        self._set_modes(A, B, C)

    # ------------------------------------------------------------------ parameters
    @property
    def n_modes(self) -> int:
        return self.A_imag.shape[-1]

    @property
    def state_dim(self) -> int:
        return 2 * self.n_modes

    @property
    def constrained(self) -> bool:
        """True when ``Re(A) < 0`` holds by construction (all kernels but dss-softmax)."""
        return self.kernel_name != "dss-softmax"

    def _set_modes(self, A, B, C):
        """(Re)create the mode parameters from complex128 A, B, C of shape (H, n)."""
        dtype = self.D.dtype
        device = self.D.device
        for name in ("log_A_real", "A_real", "A_imag", "B", "C"):
            if name in self._parameters:
                del self._parameters[name]
            if name in self._buffers:
                del self._buffers[name]
        if self.constrained:
            self.log_A_real = nn.Parameter(torch.log(-A.real).to(device, dtype))
        else:
            self.A_real = nn.Parameter(A.real.to(device, dtype))
        self.A_imag = nn.Parameter(A.imag.to(device, dtype))
        B_real = torch.view_as_real(B.to(device, _COMPLEX[torch.float64])).to(dtype)
        if self.learn_B:
            self.B = nn.Parameter(B_real)
        else:
            self.register_buffer("B", B_real)
        self.C = nn.Parameter(torch.view_as_real(C).to(device, dtype))
        for p in self.ssm_parameters():
            p._optim = {"weight_decay": 0.0}
        self._step_cache = None

    def ssm_parameters(self):
        """The SSM parameters (log_dt, A, learnable B): S4 puts them in their own optimiser group."""
        return [p for name, p in self._parameters.items() if name in _SSM_NAMES and p is not None]

    def other_parameters(self):
        """Trainable parameters that are not SSM parameters (C and D)."""
        ssm = {id(p) for p in self.ssm_parameters()}
        return [p for p in self.parameters() if id(p) not in ssm]

    # ------------------------------------------------------------------ systems
    def _continuous(self):
        """Decode the stored parameters: lam, B, C complex128 (H, n) and dt float64 (H,), differentiable."""
        f64 = torch.float64
        re = -torch.exp(self.log_A_real.to(f64)) if self.constrained else self.A_real.to(f64)
        lam = torch.complex(re, self.A_imag.to(f64))
        B = torch.view_as_complex(self.B.to(f64).contiguous())
        C = torch.view_as_complex(self.C.to(f64).contiguous())
        return lam, B, C, torch.exp(self.log_dt.to(f64))

    def system(self, exact: bool = False) -> DiscreteSystem:
        """The layer's discrete system, differentiable, complex128: the one source of everything it computes.

        ``exact=False`` (what ``kernel`` and ``step`` use): ``lam_d`` is rounded to the layer's
        precision, because the recurrence multiplies by exactly that number and the kernel must
        use its powers so that both modes agree over long sequences (dss-softmax renormalises the
        rounded mode).  ``exact=True``: the discretisation of the stored parameters in complex128;
        in float32 a mode with ``|Re A| dt`` below ~3e-8 rounds to ``|lam_d| = 1`` while its exact
        ``lam_d`` stays inside the unit circle, which is what model reduction needs.
        ``D`` is the layer's own parameter; ``dt`` is float64.
        """
        lam, B, C, dt = self._continuous()
        lam_d, log_scale, B_core = discretize(self.kernel_name, lam, B, dt, self.l_max)
        cdt = _COMPLEX.get(self.D.dtype, torch.complex64)
        if not exact and cdt != torch.complex128:
            lam_d = lam_d.to(cdt).to(torch.complex128)
            if log_scale is not None:  # dss-softmax: normalise the row of the rounded mode
                log_scale = -log_row_sum(torch.log(lam_d), self.l_max)
        return DiscreteSystem(lam_d, B_core, log_scale, C, self.D, dt)

    def kernel(self, L: int) -> torch.Tensor:
        """Convolution kernel (H, L) in the layer's dtype (without the D skip)."""
        return self.system().kernel(int(L), self.D.dtype, self.max_kernel_elements)

    def discrete_system(self, exact: bool = False) -> DiscreteSystem:
        """The detached :class:`DiscreteSystem` (also a mapping over ``lam_d, B_d, C, D, dt``).

        ``kernel(L)[h, l] == 2 Re(sum_i C[h,i] B_d[h,i] lam_d[h,i]**l)``; for dss-softmax
        the normalisation over ``l_max`` is folded into ``B_d``.  ``exact=False``: in the
        layer's precision (complex64 and float32 for a float32 layer).  ``exact=True``:
        complex128/float64 from the stored parameters (see :meth:`system`).
        """
        with torch.no_grad():
            sys = self.system(exact=exact).detach()
        return sys.with_precision(torch.float64 if exact else self.D.dtype)

    def load_discrete_system(self, lam_d, B_d, C, D):
        """Replace the SSM by the discrete system ``(lam_d, B_d, C, D)`` (any number of modes n).

        The layer keeps its ``dt`` per channel and inverts its own discretisation;
        with a fixed B (``learn_B=False``) B becomes 1 and ``B`` is folded into C.
        Modes with ``C * B_d == 0`` are padding and may hold any ``lam_d``.

        Raises
        ------
        ValueError
            On wrong shapes, non-finite values, or a system the kernel cannot
            represent (``|lam_d| >= 1`` where ``Re(A) < 0`` is built in, ``lam_d == 1`` for dss-softmax).
        """
        lam_d, B_d, C = (_as_complex128(v, k) for v, k in ((lam_d, "lam_d"), (B_d, "B_d"), (C, "C")))
        D = torch.as_tensor(np.asarray(D.detach().cpu() if isinstance(D, torch.Tensor) else D), dtype=torch.float64)
        H = self.d_model
        if lam_d.ndim != 2 or lam_d.shape[0] != H or lam_d.shape[1] < 1:
            raise ValueError(f"lam_d must have shape ({H}, n) with n >= 1, got {tuple(lam_d.shape)}.")
        for name, v in (("B_d", B_d), ("C", C)):
            if v.shape != lam_d.shape:
                raise ValueError(f"{name} must have the shape of lam_d {tuple(lam_d.shape)}, got {tuple(v.shape)}.")
        if D.shape != (H,):
            raise ValueError(f"D must have shape ({H},), got {tuple(D.shape)}.")
        for name, v in (("lam_d", lam_d), ("B_d", B_d), ("C", C), ("D", D)):
            if not torch.isfinite(torch.view_as_real(v) if v.is_complex() else v).all():
                raise ValueError(f"{name} contains non-finite values.")
        pad = (C * B_d) == 0
        live = ~pad
        mag = lam_d.abs()
        if self.constrained and bool((mag[live] >= 1).any()):
            raise ValueError(
                f"The {self.kernel_name} kernel has Re(A) < 0 by construction and cannot represent modes with |lam_d| >= 1 "
                f"(largest {mag[live].max().item():.6g}); use dss-softmax or stabilise the system first."
            )
        if self.kernel_name == "dss-softmax" and bool(((lam_d[live] == 1) | (mag[live] == 0)).any()):
            raise ValueError("The dss-softmax kernel cannot represent modes with lam_d == 1 or lam_d == 0 (A = 0 or A = -inf).")
        if self.constrained and bool((mag[live] == 0).any()):
            raise ValueError(f"The {self.kernel_name} kernel cannot represent modes with lam_d == 0.")
        # Padding modes keep a representable lam_d and a nonzero B_d when given one (so that a
        # zero-output slot can start from a chosen mode); otherwise a harmless stable mode.
        safe = torch.exp(-torch.exp(self.log_dt.detach().to("cpu", torch.float64)))[:, None].to(torch.complex128)
        usable = (mag > 0) & (mag < 1) if self.constrained else (mag > 0) & (lam_d != 1)
        lam_d = torch.where(pad & ~usable, safe.expand_as(lam_d), lam_d)
        B_d = torch.where(pad & (B_d == 0), torch.ones_like(B_d), B_d)
        C = torch.where(pad, torch.zeros_like(C), C)

        dt = torch.exp(self.log_dt.detach().to("cpu", torch.float64))
        lam, B = undiscretize(self.kernel_name, lam_d, B_d, dt, self.l_max)
        if self.constrained and bool((lam.real >= 0).any()):
            raise ValueError(f"The {self.kernel_name} kernel cannot represent modes with Re(A) >= 0 at this dt.")
        if not self.learn_B:
            C, B = C * B, torch.ones_like(B)
        with torch.no_grad():
            self.D.copy_(D.to(self.D.dtype))
        self._set_modes(lam, B, C)

    # ------------------------------------------------------------------ convolution mode
    def _check_input(self, u, ndim, what):
        if not isinstance(u, torch.Tensor) or u.ndim != ndim or u.shape[-1] != self.d_model:
            shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"SSMLayer expects {what}, got {shape}.")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Convolution mode: u (batch, length, H) -> y (batch, length, H), via FFT of length 2L."""
        self._check_input(u, 3, f"input of shape (batch, length, {self.d_model})")
        L = u.shape[1]
        if L < 1:
            raise ValueError("SSMLayer needs sequences of length at least 1, got length 0.")
        work = torch.promote_types(u.dtype, torch.float32)  # FFTs need at least single precision
        K = self.kernel(L).to(work)  # (H, L)
        v = u.transpose(1, 2).to(work)  # (B, H, L)
        y = causal_conv(v, K, self.D.to(work))
        # contiguous in (B, L, H): the pointwise layers after it (GELU, linear) and their backward passes
        # run several times slower on the transposed view (GELU's backward 6x on CPU, measured)
        return y.transpose(1, 2).contiguous().to(u.dtype)

    # ------------------------------------------------------------------ recurrent mode
    def step_parameters(self):
        """Real tensors of the recurrence: lam_re, lam_im, B_re, B_im, C_re, C_im (H, n) and D (H,).

        The real-arithmetic view of ``system().step_form(l_max)``: for dss-softmax modes with
        ``|lam_d| > 1`` the state is rescaled (B by g, C by 1/g, ``g = |lam_d|**((l_max-1)/2)``)
        so that it stays within range over ``l_max`` steps.
        """
        if self._step_cache is not None:
            return self._step_cache
        return self.system().step_form(self.l_max).real_parts(self.D.dtype)

    def setup_step(self):
        """Cache the (detached) recurrence parameters for fast stepping; call again after any parameter change."""
        self._step_cache = None
        with torch.no_grad():
            self._step_cache = {k: v.detach() for k, v in self.step_parameters().items()}

    def clear_step(self):
        """Drop the cache of :meth:`setup_step` (``step`` then recomputes, differentiably)."""
        self._step_cache = None

    def train(self, mode: bool = True):
        self._step_cache = None
        return super().train(mode)

    def default_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state, a real tensor (batch, H, n, 2): real and imaginary parts of x."""
        return torch.zeros(
            batch, self.d_model, self.n_modes, 2,
            device=self.D.device if device is None else device,
            dtype=self.D.dtype if dtype is None else dtype,
        )

    def step(self, u_t: torch.Tensor, state: torch.Tensor):
        """One recurrent step in real arithmetic: u_t (batch, H), state (batch, H, n, 2) -> (y_t, state)."""
        self._check_input(u_t, 2, f"u_t of shape (batch, {self.d_model})")
        p = self.step_parameters()
        xr, xi = state[..., 0], state[..., 1]
        u = u_t[..., None]
        nr = p["lam_re"] * xr - p["lam_im"] * xi + p["B_re"] * u
        ni = p["lam_re"] * xi + p["lam_im"] * xr + p["B_im"] * u
        y = 2.0 * (p["C_re"] * nr - p["C_im"] * ni).sum(-1) + p["D"] * u_t
        return y, torch.stack([nr, ni], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, state_dim={self.state_dim}, kernel={self.kernel_name!r}, "
            f"init={self.init_name!r}, l_max={self.l_max}, learn_B={self.learn_B}"
        )
