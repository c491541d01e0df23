"""The one representation of a DSS layer's discrete system.

Per channel h (a SISO system with n stored half-conjugate modes)::

    x_k = lam_d x_{k-1} + B_d u_k,      y_k = 2 Re(C x_k) + D u_k

:class:`DiscreteSystem` holds ``lam_d, C`` (complex, (H, n)), ``D, dt`` (real, (H,)) and ``B_d``
split as ``B_core * exp(log_scale)``: the dss-softmax kernel's ``B_d`` can be far below the
smallest double for growing modes, so its scale stays in log form until a caller asks for
the plain product (:attr:`DiscreteSystem.B_d`).  Everything a layer computes from its modes
derives from this object: the convolution kernel (:meth:`DiscreteSystem.kernel`), the
recurrence of step mode and export (:meth:`DiscreteSystem.step_form`), the Hankel penalty and
model reduction (``SSMLayer.system`` / ``SSMLayer.discrete_system``).

It is also a read-only mapping over ``lam_d, B_d, C, D, dt`` (``sys["lam_d"]``, ``dict(sys)``),
the dictionary form that ``SSMLayer.discrete_system`` returned before.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .kernels import DEFAULT_MAX_ELEMENTS, discrete_B, vandermonde_kernel

__all__ = ["DiscreteSystem"]

_KEYS = ("lam_d", "B_d", "C", "D", "dt")


@dataclass(frozen=True, eq=False)
class DiscreteSystem:
    """Diagonal discrete SISO systems of one layer (see the module docstring).

    Attributes
    ----------
    lam_d, B_core, C : complex tensors (H, n)
    log_scale : complex tensor (H, n) or None; ``B_d = B_core * exp(log_scale)``
    D, dt : real tensors (H,)
    """

    lam_d: torch.Tensor
    B_core: torch.Tensor
    log_scale: torch.Tensor | None
    C: torch.Tensor
    D: torch.Tensor
    dt: torch.Tensor

    def __post_init__(self):
        H_n = tuple(self.lam_d.shape)
        if self.lam_d.ndim != 2 or not self.lam_d.is_complex():
            raise ValueError(f"lam_d must be a complex tensor of shape (H, n), got {self.lam_d.dtype} {H_n}.")
        for name in ("B_core", "C") + (("log_scale",) if self.log_scale is not None else ()):
            v = getattr(self, name)
            if tuple(v.shape) != H_n:
                raise ValueError(f"{name} must have the shape of lam_d {H_n}, got {tuple(v.shape)}.")
        for name in ("D", "dt"):
            v = getattr(self, name)
            if tuple(v.shape) != H_n[:1]:
                raise ValueError(f"{name} must have shape ({H_n[0]},), got {tuple(v.shape)}.")

    # ------------------------------------------------------------------ views
    @property
    def B_d(self) -> torch.Tensor:
        """The plain input vector ``B_core * exp(log_scale)`` (may underflow for dss-softmax growing modes)."""
        return discrete_B(self.log_scale, self.B_core)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, n): channels and stored modes."""
        return tuple(self.lam_d.shape)

    def keys(self):
        return _KEYS

    def __getitem__(self, key):
        if key not in _KEYS:
            raise KeyError(f"{key!r} is not one of {', '.join(_KEYS)}.")
        return getattr(self, key)

    def __iter__(self):
        return iter(_KEYS)

    def __len__(self):
        return len(_KEYS)

    def items(self):
        return [(k, self[k]) for k in _KEYS]

    def values(self):
        return [self[k] for k in _KEYS]

    # ------------------------------------------------------------------ conversions
    def detach(self) -> DiscreteSystem:
        """A copy cut from the autograd graph (cloned, so later parameter updates do not show through)."""
        f = lambda t: None if t is None else t.detach().clone()
        return DiscreteSystem(f(self.lam_d), f(self.B_core), f(self.log_scale), f(self.C), f(self.D), f(self.dt))

    def with_precision(self, real_dtype: torch.dtype) -> DiscreteSystem:
        """The system with complex tensors in complex128 for ``real_dtype`` float64 and complex64 otherwise (there
        is no complex half type), ``D, dt`` in ``real_dtype``; ``B_d`` is formed in the current precision first
        (its log-scale does not survive a cast to float32)."""
        if not (isinstance(real_dtype, torch.dtype) and real_dtype.is_floating_point):
            raise ValueError(f"real_dtype must be a real floating torch dtype, got {real_dtype!r}.")
        cdt = torch.complex128 if real_dtype == torch.float64 else torch.complex64
        return DiscreteSystem(self.lam_d.to(cdt), self.B_d.to(cdt), None, self.C.to(cdt),
                              self.D.to(real_dtype), self.dt.to(real_dtype))

    # ------------------------------------------------------------------ what layers compute from it
    def kernel(self, L: int, dtype: torch.dtype, max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
        """``K[h, l] = 2 Re(sum_i C B_d lam_d**l)``, real (H, L) of ``dtype`` (without the D skip)."""
        return vandermonde_kernel(self.C * self.B_core, torch.log(self.lam_d), int(L), dtype, self.log_scale,
                                  max_elements)

    def step_form(self, l_max=None) -> DiscreteSystem:
        """The same input-output map in a state scaling that a float32 recurrence can carry.

        Modes with ``|lam_d| > 1`` (only dss-softmax has them) grow by ``|lam_d|**l``; their state
        is rescaled by ``g = |lam_d|**((l_max - 1)/2)`` (B by g, C by 1/g) so that it stays in range
        over ``l_max`` steps.  ``log_scale`` is folded into ``B_d``; the result has ``log_scale=None``.
        """
        if self.log_scale is None:
            return self
        if l_max is None:
            raise ValueError("step_form needs l_max for a system with a log-scaled B_d (dss-softmax).")
        g = torch.clamp(torch.log(self.lam_d).real, min=0.0) * (0.5 * (int(l_max) - 1))
        return replace(self, B_core=self.B_core * torch.exp(self.log_scale + g), log_scale=None,
                       C=self.C * torch.exp(-g))

    def real_parts(self, dtype: torch.dtype) -> dict:
        """Real tensors of the recurrence in ``dtype``: lam_re, lam_im, B_re, B_im, C_re, C_im (H, n), D (H,)."""
        B = self.B_d
        return dict(lam_re=self.lam_d.real.to(dtype), lam_im=self.lam_d.imag.to(dtype),
                    B_re=B.real.to(dtype), B_im=B.imag.to(dtype),
                    C_re=self.C.real.to(dtype), C_im=self.C.imag.to(dtype), D=self.D)
