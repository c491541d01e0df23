"""Differentiable Hankel singular values of SSM layers, and the Hankel-norm penalty for training.

Every channel of an :class:`~ssmcompress.nn.layer.SSMLayer` is a discrete SISO system of n
half-conjugate modes, ``y = 2 Re(C x) + D u``, whose real order is 2n (DESIGN.md, numerical
contract).  Its Hankel singular values are those of the *conjugate closure*

    mu = [lam_d; conj(lam_d)],   beta = [B_d; conj(B_d)],   gamma = [C, conj(C)]     (m = 2n)

in the discrete form the layer's kernel uses (``SSMLayer.system()``: the same lam_d, B_d, C
as ``kernel``, including the rounding of lam_d to the layer's precision).  With Gramian factors
``P = Lp Lp^*`` and ``Q = Lq Lq^*`` they are ``svdvals(Lq^* Lp)``; everything is float64/complex128
and batched over all channels of all layers that share a size.

Factors (the Gramians have condition numbers of 1e16 and more, so they are never formed and
factored the plain way, and the backward pass never divides by a small pivot):

* infinite horizon (every layer whose modes are all inside the unit circle, except dss-softmax):
  ``P_ij = beta_i conj(beta_j) / (1 - mu_i conj(mu_j))`` is Cauchy-like.  Its Cholesky factor
  with diagonal pivoting comes from the generators alone: eliminating pivot p turns the
  generators into ``g_i (mu_i - mu_p) / (1 - mu_i conj(mu_p))`` (a Blaschke factor) and adds the
  column ``g_i sqrt(1 - |mu_p|^2) / (1 - mu_i conj(mu_p))`` (the pivot's phase, which does not
  change ``L L^*``, is dropped, so there is no division by the pivot at all).  Every step is a
  smooth function of (mu, g) with denominators bounded away from zero for stable modes, which
  is what keeps the gradient accurate; ``1 - |mu|^2`` and ``1 - x conj(y)`` are evaluated
  without cancellation.  The pivot order is chosen without gradient: it changes the rounding,
  not the function.
* finite horizon ``L = l_max`` (dss-softmax layers, and any layer with a mode on or outside the
  unit circle, exactly as ``compress`` chooses): the closed form
  ``P_ij = beta_i conj(beta_j) sum_{k<L} (mu_i conj(mu_j))^k`` is factored by Cholesky with
  diagonal pivoting, stopped once the remaining pivots fall below ``FINITE_HORIZON_RTOL`` of the
  first (the rest is rounding noise; stopping there also bounds the backward pass's
  ``1/sqrt(pivot)`` by ``1/sqrt(FINITE_HORIZON_RTOL)``).

The singular values come from ``torch.linalg.svdvals``, whose backward (values only,
``U diag(grad) V^*``) is well defined also for repeated singular values.

Penalty (:func:`hankel_penalty`): per channel, the sum of the Hankel singular values beyond
the real order r (half the H-infinity error bound of balanced truncation to order r), or all
of them (the Hankel nuclear norm) when no order is given; **averaged over all channels of all
SSM layers**, so that one weight means the same for any d_model, number of layers or state size.
With ``relative=True`` each channel's tail is divided by the sum of all its Hankel singular values:
the share of the channel's Hankel energy that truncation to r discards, in [0, 1).  The absolute tail
can be lowered by shrinking the whole kernel (and scaling up the layers after it), which also costs
accuracy; the share cannot (it does not change when B or C is scaled), so it presses only on how the
energy is spread over the states.
"""
from __future__ import annotations

import numbers

import torch

__all__ = ["FINITE_HORIZON_RTOL", "gramian_horizon", "layer_hankel_singular_values", "hankel_penalty"]

#: pivots of the finite-horizon Cholesky factor below this fraction of the first are dropped
FINITE_HORIZON_RTOL = 1e-15

_BLOCK = 8          # previous factor columns grouped for the left-looking update
_SPLIT = 134217729.0  # 2^27 + 1, Dekker's splitting constant for float64


def _square_with_error(a):
    """``a * a = p + e`` exactly (float64 tensors); the gradient flows through ``p`` only in effect
    (that of ``e`` is exactly zero), so ``d(p + e) = 2 a da``."""
    p = a * a
    hi = _SPLIT * a
    hi = hi - (hi - a)
    lo = a - hi
    return p, ((hi * hi - p) + 2.0 * hi * lo) + lo * lo


def _one_minus_abs2(z):
    """``1 - |z|^2`` to full relative accuracy also for ``|z|`` near 1 (complex128 -> float64)."""
    p, ep = _square_with_error(z.real)
    q, eq = _square_with_error(z.imag)
    big, small = torch.maximum(p, q), torch.minimum(p, q)
    t = 1.0 - big                       # exact for big in [1/2, 2] (Sterbenz)
    u = t - small
    bv = u - t                          # error of t - small (two-sum)
    eu = (t - (u - bv)) + (-small - bv)
    return u + (eu - ep - eq)


def _disc_den(x, diff, half_dd_x, half_dd_y):
    """``1 - x conj(y)`` without cancellation, from ``diff = x - y`` and ``half_dd = (1 - |.|^2)/2``:
    real part ``half_dd_x + half_dd_y + |x - y|^2 / 2``, imaginary part ``Im(x conj(x - y))``."""
    re = (half_dd_x + half_dd_y) + 0.5 * (diff * diff.conj()).real
    return torch.complex(re, (x * diff.conj()).imag)


def _cauchy_factor(mu, g):
    """Pivoted Cholesky factor of ``G_ij = g_i conj(g_j) / (1 - mu_i conj(mu_j))`` from the generators.

    mu, g : complex128 (F, m) with ``|mu| < 1``.  Returns L (F, m, m) with ``G = L L^*``.
    """
    dd = _one_minus_abs2(mu)                                             # (F, m) > 0
    half_dd = 0.5 * dd
    cols = []
    for _ in range(mu.shape[-1]):
        with torch.no_grad():                                            # pivot: largest remaining diagonal
            p = (g * g.conj()).real.div(dd).argmax(-1, keepdim=True)
        mu_p, dd_p = mu.gather(-1, p), dd.gather(-1, p)
        diff = mu - mu_p
        inv_den = 1.0 / _disc_den(mu, diff, half_dd, 0.5 * dd_p)        # 1 / (1 - mu_i conj(mu_p))
        cols.append(g * (inv_den * torch.sqrt(dd_p)))
        g = g * (diff * inv_den)                                         # Schur complement: zero at p
    return torch.stack(cols, -1)


def _expm1_over(z):
    """``(exp(z) - 1) / z`` for complex z (limit 1 at 0), with a gradient that is finite everywhere."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    a, b = safe.real, safe.imag
    expm1 = torch.complex(torch.expm1(a) * torch.cos(b) - 2.0 * torch.sin(0.5 * b) ** 2, torch.exp(a) * torch.sin(b))
    return torch.where(small, 1.0 + z / 2.0 + z * z / 6.0, expm1 / safe)


def _geometric_sum(log_x, one_minus_x, L: int):
    """``sum_{k<L} x^k = (1 - x^L) / (1 - x)`` from ``log(x)`` (principal branch) and ``1 - x``.

    Written as ``L * (exp(L log x) - 1)/(L log x) * log(x)/(x - 1)``: both factors are smooth
    (limits 1 at ``x = 1``), so nothing cancels near ``x = 1``.
    """
    w = -one_minus_x                                                     # x - 1
    near = w.abs() < 1e-6
    ratio = torch.where(near, 1.0 - 0.5 * w + w * w / 3.0, log_x / torch.where(near, torch.ones_like(w), w))
    return L * _expm1_over(L * log_x) * ratio


def _finite_horizon_factor(mu, g, L: int, rtol: float):
    """Pivoted Cholesky factor of ``G_ij = g_i conj(g_j) sum_{k<L} (mu_i conj(mu_j))^k`` (any modes).

    Left-looking: each column is computed from the closed form of the Gramian's column at the
    pivot minus the previous columns' contributions, so no (F, m, m) matrix is ever formed or
    updated.  Columns stop once every channel's remaining pivots are below ``rtol`` times its
    first pivot.  mu, g : complex128 (F, m), ``mu != 0``.  Returns L (F, m, k), ``k <= m``.
    """
    F, m = mu.shape
    dd = _one_minus_abs2(mu)
    log_abs = 0.5 * torch.log1p(-dd)                                     # log|mu|, accurate near |mu| = 1
    arg = torch.angle(mu)
    d = (g * g.conj()).real * _geometric_sum(torch.complex(2.0 * log_abs, torch.zeros_like(dd)),
                                                             torch.complex(dd, torch.zeros_like(dd)), L).real
    rows = torch.arange(F, device=mu.device)
    done = torch.zeros(F, m, dtype=torch.bool, device=mu.device)
    cols, blocks, first = [], [], None
    for _ in range(m):
        with torch.no_grad():
            p = torch.where(done, torch.full_like(d, -float("inf")), d).argmax(-1)
            d_p = d[rows, p]
            if first is None:
                first = d_p.clamp_min(torch.finfo(torch.float64).tiny)
            ok = d_p > rtol * first
            if not bool(ok.any()):
                break
        pk = p[:, None]
        mu_p, g_p, dd_p = mu.gather(-1, pk), g.gather(-1, pk), dd.gather(-1, pk)
        # principal log(mu_i conj(mu_p)): the argument difference wrapped into (-pi, pi]
        arg_x = torch.remainder(arg - arg.gather(-1, pk) + torch.pi, 2 * torch.pi) - torch.pi
        log_x = torch.complex(log_abs + log_abs.gather(-1, pk), arg_x)
        col = g * g_p.conj() * _geometric_sum(log_x, _disc_den(mu, mu - mu_p, 0.5 * dd, 0.5 * dd_p), L)
        for block in blocks:                                             # minus the previous columns' part
            col = col - (block * block[rows, p].conj()[:, None, :]).sum(-1)
        for prev in cols[len(blocks) * _BLOCK:]:
            col = col - prev * prev.gather(-1, pk).conj()
        col = col / torch.sqrt(torch.where(ok, d[rows, p], torch.ones_like(d_p)))[:, None]
        col = torch.where(ok[:, None] & ~done, col, torch.zeros_like(col))
        cols.append(col)
        if len(cols) % _BLOCK == 0:                                      # (F, m, _BLOCK) blocks: fewer, larger ops
            blocks.append(torch.stack(cols[-_BLOCK:], -1))
        d = d - (col * col.conj()).real
        done = done.clone()
        done[rows, p] = True
    if not cols:
        return torch.zeros(F, m, 1, dtype=mu.dtype, device=mu.device)
    return torch.stack(cols, -1)


def gramian_horizon(layer):
    """``None`` (infinite-horizon Gramians) or the layer's ``l_max`` (finite horizon) of the penalty.

    Infinite horizon for stable layers (the values behind balanced truncation's H-infinity bound, and
    the cheap, stable factorisation); finite horizon for dss-softmax layers and for any layer with a
    mode on or outside the unit circle.  (``compress`` reduces over ``l_max`` by default.)
    """
    if layer.kernel_name != "dss-softmax":
        with torch.no_grad():
            if bool((layer.system().lam_d.abs() < 1).all()):
                return None
    if layer.l_max is None:
        raise ValueError(
            f"layer with kernel {layer.kernel_name!r} has modes outside the unit circle and no l_max, "
            "so neither infinite- nor finite-horizon Gramians are defined; build the model with l_max.")
    return int(layer.l_max)


def _closure_hsv(lam_d, B_d, C, horizon):
    """Hankel singular values (F, 2n), descending, of the real systems (lam_d, B_d, C), each (F, n)."""
    F = lam_d.shape[0]
    mu = torch.cat([lam_d, lam_d.conj()], -1)
    beta = torch.cat([B_d, B_d.conj()], -1)
    gamma = torch.cat([C, C.conj()], -1)
    # P: nodes mu, generators beta; Q: nodes conj(mu), generators conj(gamma); one batched pass for both
    nodes = torch.cat([mu, mu.conj()], 0)
    gens = torch.cat([beta, gamma.conj()], 0)
    if horizon is None:
        factors = _cauchy_factor(nodes, gens)
    else:
        factors = _finite_horizon_factor(nodes, gens, horizon, FINITE_HORIZON_RTOL)
    Lp, Lq = factors[:F], factors[F:]
    hsv = torch.linalg.svdvals(Lq.conj().transpose(-1, -2) @ Lp)
    return torch.nn.functional.pad(hsv, (0, mu.shape[-1] - hsv.shape[-1]))   # a stopped factor has k < m columns


def _check_layers(obj):
    from .layer import SSMLayer

    if isinstance(obj, SSMLayer):
        return [obj]
    if hasattr(obj, "ssm_layers"):
        return list(obj.ssm_layers())
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(x, SSMLayer) for x in obj):
        return list(obj)
    raise ValueError(f"expected an SSMLayer, a SequenceModel or a list of SSMLayers, got {type(obj).__name__}.")


def layer_hankel_singular_values(layer, horizon="auto"):
    """Hankel singular values of every channel of ``layer``, differentiable.

    Parameters
    ----------
    layer : SSMLayer
    horizon : "auto", "finite", None or int
        ``"auto"``: :func:`gramian_horizon`; ``"finite"``: finite-horizon Gramians over the layer's own
        ``l_max`` (what ``compress`` reduces over by default); ``None``: infinite horizon (needs
        ``|lam_d| < 1``); int L: finite-horizon Gramians of the length-L kernel.

    Returns
    -------
    hsv : float64 tensor (H, 2n), descending per channel (the real order 2n of the closure).
    """
    (layer,) = _check_layers(layer)
    h = _resolve_horizon(layer, horizon)
    sys = layer.system()
    return _closure_hsv(sys.lam_d, sys.B_d, sys.C, h)


def _resolve_horizon(layer, horizon):
    if isinstance(horizon, str) and horizon == "auto":
        return gramian_horizon(layer)
    if isinstance(horizon, str) and horizon == "finite":
        if layer.l_max is None:
            raise ValueError("horizon='finite' needs the layer's kernel length l_max, but the layer has none; "
                             "build the model with l_max or pass horizon=L.")
        return int(layer.l_max)
    if horizon is None:
        with torch.no_grad():
            if not bool((layer.system().lam_d.abs() < 1).all()):
                raise ValueError("infinite-horizon Gramians need every mode inside the unit circle (|lam_d| < 1); "
                                 "pass horizon=L or 'auto'.")
        return None
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise ValueError(f"horizon must be 'auto', 'finite', None or a positive integer kernel length, got {horizon!r}.")
    return int(horizon)


def hankel_penalty(model, order=None, horizon="auto", sample=1.0, generator=None, relative=False):
    """Mean over all channels of all SSM layers of the Hankel singular values beyond ``order``.

    Parameters
    ----------
    model : SequenceModel, SSMLayer or list of SSMLayer
    order : int, optional
        Real order r: per channel, the sum of the Hankel singular values ``sigma_{r+1}, ...``
        (the tail; 0 for layers of real order <= r).  ``None``: the sum of all of them
        (Hankel nuclear norm).
    horizon : "auto", "finite", None or int
        As in :func:`layer_hankel_singular_values`, for every layer.
    sample : float in (0, 1]
        Fraction of the channels whose Hankel singular values are computed (at least one per group of
        layers of one size), drawn uniformly without replacement with ``generator``: an unbiased
        estimate of the mean over all channels (each group weighted by its share of channels) that
        costs about ``sample`` times the full penalty.  1 (default): every channel, exactly.
    generator : torch.Generator, optional
        Source of the channel draw (default: torch's global generator).
    relative : bool
        Divide each channel's tail by the sum of all its Hankel singular values (needs ``order``; a channel
        whose values are all zero contributes 0).

    Returns
    -------
    penalty : float64 scalar tensor, differentiable with respect to the SSM parameters.
    """
    if order is not None and (isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 0):
        raise ValueError(f"order must be None or a non-negative integer (real order r), got {order!r}.")
    if isinstance(sample, bool) or not isinstance(sample, numbers.Real) or not 0 < sample <= 1:
        raise ValueError(f"sample must be a fraction of the channels in (0, 1], got {sample!r}.")
    if not isinstance(relative, bool):
        raise ValueError(f"relative must be True or False, got {relative!r}.")
    if relative and order is None:
        raise ValueError("relative=True needs an order r: the share of all Hankel singular values is always 1.")
    layers = _check_layers(model)
    groups: dict = {}
    for layer in layers:
        h = _resolve_horizon(layer, horizon)
        groups.setdefault((layer.n_modes, h), []).append(layer)
    total, channels = None, 0
    for (_, h), members in groups.items():
        systems = [layer.system() for layer in members]
        lam_d, B_d, C = (torch.cat([getattr(s, k) for s in systems], 0) for k in ("lam_d", "B_d", "C"))
        F = lam_d.shape[0]
        k = F if sample >= 1 else max(1, int(round(sample * F)))
        if k < F:
            pick = torch.randperm(F, generator=generator)[:k].to(lam_d.device)
            lam_d, B_d, C = lam_d[pick], B_d[pick], C[pick]
        hsv = _closure_hsv(lam_d, B_d, C, h)
        if order is None:
            tail = hsv.sum()
        elif relative:
            energy = hsv.sum(1)
            share = hsv[:, int(order):].sum(1) / torch.where(energy > 0, energy, torch.ones_like(energy))
            tail = share.sum()
        else:
            tail = hsv[:, int(order):].sum()
        tail = tail * (F / k)                      # the group's share of the channels, estimated from k of F
        total = tail if total is None else total + tail
        channels += F
    return total / channels
