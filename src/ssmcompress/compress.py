"""The only bridge between ``nn`` and ``lti``: model -> systems -> reduced systems -> smaller model.

Every SSM layer holds H single-input single-output systems.  Each layer hands them over
in the discrete form its kernel actually uses (``layer.discrete_system()``: ZOH, bilinear,
DSS-EXP or DSS-SOFTMAX, with any length normalisation folded into ``B_d``), they are
reduced in the discrete domain by balanced truncation of their real realisations, and
the reduced diagonal systems are written back through ``layer.load_discrete_system``,
which inverts that kernel's discretisation with the layer's own step size.  Step sizes
and D are kept per channel; everything that is not an SSM parameter is copied.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from .lti import (DiagonalSSM, balanced_singular_perturbation, balanced_truncation, h2_optimal,
                  hankel_singular_values, mode_scores)
from .lti.refit import impulse_response, refit_output, stabilize_modes

#: bt: balanced truncation; bsp: balanced singular perturbation; h2: IRKA (H2-optimal, from BT);
#: modal: modes with the largest H2 score; modal-hinf: modes with the largest H-infinity score (LAST)
METHODS = ("bt", "bsp", "h2", "modal", "modal-hinf")
_BALANCED = ("bt", "bsp", "h2")
_MODAL_SCORE = {"modal": "h2", "modal-hinf": "hinf"}
#: Horizon of the Gramians when the user says "auto" (see ``resolve_horizon``): the model's length.
#: Measured without retraining (docs/results/digits/no_retrain.md, 5 seeds; mnist1d, 2 seeds): with the
#: refit, the finite horizon was the most accurate setting at every rank (digits r = 8: 70.5 % against
#: 44.5 % for the infinite horizon), never clearly worse, but no difference reached p < 0.05.
DEFAULT_HORIZON = "finite"
#: Whether C and D are refitted on the length-L kernel by default (see ``reduce_layer``).
DEFAULT_REFIT = True
#: Radius that modes of layers with Re(A) < 0 built in are brought inside after reduction.
STABLE_RADIUS = 1.0 - 1e-6


@dataclass
class LayerReport:
    """What is known about the reduction of one layer (arrays have one row per channel)."""

    layer: int
    method: str
    state_dim_before: int           # real order 2n of the original layer
    state_dim_after: int            # 2 * stored modes per channel of the reduced layer (the layer's state_dim)
    orders: np.ndarray              # (H,) real order of the reduced system per channel (free slots not counted)
    hsv: np.ndarray | None          # (H, 2n) Hankel singular values, descending (bt)
    error_bound: np.ndarray | None  # (H,) 2 * sum of the discarded Hankel singular values (bt)
    hinf_error: np.ndarray | None   # (H,) measured ||G - G_r||_inf (None when a system is not stable)
    kernel_rel_error: np.ndarray    # (H,) ||h - h_r||_2 / ||h||_2 over the model's length (D included at lag 0)
    horizon: int | None             # finite horizon of the Gramians, None = infinite
    refit: bool = False             # C and D refitted by least squares on the length-L response
    stabilized: int = 0             # modes moved inside STABLE_RADIUS
    free_slots: int = 0             # stored modes that start with zero output
    extra: dict = field(default_factory=dict)   # method-specific facts (IRKA convergence, ...)

    def summary(self) -> dict:
        out = {"layer": self.layer, "method": self.method, "state_dim_before": self.state_dim_before,
               "state_dim_after": self.state_dim_after, "horizon": self.horizon, "refit": self.refit,
               "order_mean": float(np.mean(self.orders)), "order_min": int(np.min(self.orders)),
               "order_max": int(np.max(self.orders)), "stabilized_modes": int(self.stabilized),
               "free_slots": int(self.free_slots),
               "kernel_rel_error_max": float(np.max(self.kernel_rel_error)),
               "kernel_rel_error_mean": float(np.mean(self.kernel_rel_error)), **self.extra}
        if self.error_bound is not None:
            out["error_bound_max"] = float(np.max(self.error_bound))
        if self.hinf_error is not None:
            out["hinf_error_max"] = float(np.max(self.hinf_error))
            if (self.error_bound is not None and self.horizon is None and not self.refit and not self.stabilized
                    and self.method in ("bt", "bsp")):
                out["bound_holds"] = bool(np.all(self.hinf_error <= self.error_bound * (1 + 1e-6) + 1e-12))
        return out

    def to_json(self) -> dict:
        d = self.summary()
        lst = lambda a: None if a is None else np.asarray(a).tolist()
        d.update(orders=lst(self.orders), hsv=lst(self.hsv), error_bound=lst(self.error_bound),
                 hinf_error=lst(self.hinf_error), kernel_rel_error=lst(self.kernel_rel_error))
        return d


@dataclass
class CompressionReport:
    method: str
    rank: object
    energy: float | None
    layers: list[LayerReport] = field(default_factory=list)
    budget: object = None

    def to_json(self) -> dict:
        return {"method": self.method, "rank": self.rank, "energy": self.energy, "budget": self.budget,
                "layers": [r.to_json() for r in self.layers]}


def layer_system(layer, exact: bool = True) -> DiagonalSSM:
    """The H discrete SISO systems of one SSM layer as a batched ``DiagonalSSM`` (float64).

    ``exact=True`` (default): the discretisation of the stored parameters in float64, not
    rounded to the layer's precision (a float32 mode with tiny ``|Re A| dt`` would round
    onto the unit circle; see ``SSMLayer.discrete_system``).
    """
    s = layer.discrete_system(exact=exact)
    to_np = lambda t: t.detach().cpu().numpy().astype(np.complex128 if t.is_complex() else np.float64)
    return DiagonalSSM(to_np(s["lam_d"]), to_np(s["B_d"]), to_np(s["C"]), to_np(s["D"]),
                       dt=to_np(s["dt"]), domain="discrete")


def resolve_horizon(horizon, layer, sys: DiagonalSSM, method: str = "bt"):
    """``None`` (infinite) or a finite length for the Gramians of ``layer``.

    ``horizon``: ``"infinite"`` / ``None``, ``"finite"`` (the layer's ``l_max``), a positive
    int, or ``"auto"`` (``DEFAULT_HORIZON``; infinite for a layer without ``l_max`` and for ``method``
    bsp and h2).  A layer with modes on or outside the unit
    circle (possible only for dss-softmax) always gets the finite horizon ``l_max``.
    """
    if horizon == "auto":                 # bsp and h2 have no finite-horizon variant
        horizon = DEFAULT_HORIZON if layer.l_max is not None and method not in ("bsp", "h2") else "infinite"
    unstable = not np.all(sys.stable_modes() | (sys.residues == 0))
    if horizon in ("infinite", None) and not unstable:
        return None
    if horizon in ("infinite", None, "finite"):
        if layer.l_max is None:
            raise ValueError(
                f"layer with kernel {layer.kernel_name!r} needs a finite horizon but has no l_max; "
                "build the model with l_max or give --horizon L.")
        return int(layer.l_max)
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be 'auto', 'infinite', 'finite' or a positive integer length, got {horizon!r}.")
    return int(horizon)


def _per_layer(value, n_layers: int, what: str):
    if value is None or np.isscalar(value):
        return [value] * n_layers
    value = list(value)
    if len(value) != n_layers:
        raise ValueError(f"{what} lists {len(value)} values but the model has {n_layers} layers; give one or {n_layers}.")
    return value


def _take_active(res, rows, slots: int, out):
    """Copy the first ``res.n_modes`` stored modes (and D) of each channel of a reduction result into ``out[rows]``."""
    lam, B, C, D = out
    sys, counts = res.system, np.atleast_1d(np.asarray(res.n_modes))
    for j, h in enumerate(rows):
        k = int(counts[j])
        if k > slots:
            raise AssertionError("a reduced channel does not fit its slots")
        if np.any(sys.residues[j, k:] != 0):
            raise AssertionError("reduced modes are not packed at the front")
        lam[h, :k], B[h, :k], C[h, :k], D[h] = sys.modes[j, :k], sys.B[j, :k], sys.C[j, :k], sys.D[j]


def _reduce_into_slots(sys: DiagonalSSM, slots: int, reduce):
    """Per channel, the largest order whose diagonal form fits in ``slots`` stored modes.

    ``reduce(sub_system, orders)`` is a batched reduction (balanced truncation, singular
    perturbation, IRKA) returning ``.system``, ``.order`` and ``.n_modes``.  A conjugate
    pair takes one stored mode (real order 2), a real eigenvalue one as well (real order 1):
    order 2*slots fits unless the reduced A has real eigenvalues; then the order is lowered
    one by one for those channels (order 2*slots - 1 with one real eigenvalue always fits).
    Returns (lam, B, C, D) of shapes (H, slots) and (H,), the stored-mode counts, the orders
    and the first result (whose ``hsv`` are those of the original channels, where it has them).
    """
    H = sys.batch_shape[0]
    out = tuple(np.zeros((H, slots), np.complex128) for _ in range(3)) + (sys.D.copy(),)
    order = np.full(H, 2 * slots)
    first = reduce(sys, order)
    achieved, counts = np.array(first.order), np.array(first.n_modes)
    fits = counts <= slots
    rows = np.flatnonzero(fits)
    _take_active(_subset(first, rows), rows, slots, out)
    todo = np.flatnonzero(~fits)
    while todo.size:
        order[todo] -= 1
        sub = reduce(sys[todo], order[todo])
        sub_counts, sub_orders = np.array(sub.n_modes), np.array(sub.order)
        ok = sub_counts <= slots
        _take_active(_subset(sub, np.flatnonzero(ok)), todo[ok], slots, out)
        achieved[todo[ok]], counts[todo[ok]] = sub_orders[ok], sub_counts[ok]
        todo = todo[~ok]
    return out, counts, achieved, first


class _subset:
    """Rows ``idx`` of a reduction result (system and n_modes)."""

    def __init__(self, res, idx):
        self.system = res.system[idx]
        self.n_modes = np.asarray(res.n_modes)[idx]


def layer_mode_scores(sys: DiagonalSSM, score: str = "h2") -> np.ndarray:
    """``lti.mode_scores`` of every stored mode, shape (H, n); active modes outside the unit circle
    (possible for dss-softmax) score infinity, so modal truncation always keeps them."""
    unstable = ~sys.stable_modes() & (sys.residues != 0)
    if not unstable.any():
        return mode_scores(sys, score)
    safe = DiagonalSSM(np.where(unstable, 0.5, sys.modes), sys.B, np.where(unstable, 0.0, sys.C), sys.D, sys.dt,
                       sys.domain)
    return np.where(unstable, np.inf, mode_scores(safe, score))


def _modal_into_slots(sys: DiagonalSSM, slots: int, score: str):
    """Keep the ``slots`` stored modes with the largest score per channel (modes unchanged, D kept)."""
    H = sys.batch_shape[0]
    keep = np.argsort(-layer_mode_scores(sys, score), axis=-1, kind="stable")[:, :slots]
    take = lambda a: np.take_along_axis(a, keep, -1)
    lam, B, C = take(sys.modes), take(sys.B), take(sys.C)
    orders = np.where(lam.imag == 0, 1, 2).sum(-1)
    return (lam, B, C, sys.D.copy()), np.full(H, slots), orders


def _free_slot_modes(layer, slots: int, dt: np.ndarray):
    """lam_d and B_d (H, slots) of a fresh Skew-HiPPO layer of size 2*slots at the layer's dt and kernel.

    Free slots (stored modes a reduced channel does not use) start from these modes with
    ``C = 0``: zero output, ordinary trainable modes in main training.  DSS kernels have
    B = 1 fixed, as in a fresh layer.
    """
    from .nn.init import initial_modes
    from .nn.kernels import discrete_B, discretize

    A, B = initial_modes("legs", 2 * slots, layer.d_model)
    if layer.kernel_name.startswith("dss"):
        B = torch.ones_like(B)
    lam_d, log_scale, B_core = discretize(layer.kernel_name, A, B, torch.from_numpy(dt), layer.l_max)
    return lam_d.numpy(), discrete_B(log_scale, B_core).numpy()


def balance_split(layer, red: DiagonalSSM, active=None) -> DiagonalSSM:
    """Split each mode's residue ``C B_d`` so that the layer will store ``|B| == |C|`` (kernels with a learned B).

    A diagonal form fixes only each mode's product of output and input coefficient; a reduction returns
    whatever split its eigenvectors give, up to 1e8 : 1e-8 on weakly controllable modes.  The input-output
    map does not see the split, training does: Adam moves every stored number by about the learning rate,
    so a stored B of 1e-8 (with C of 1e8) is wrecked in the first steps (measured before this rescaling:
    digits, s4d, BT to r = 32 at 94 % accuracy fell to 10 % validation accuracy in the first epoch of main
    training).  Modes outside ``active`` (H, n), with a zero coefficient or a non-finite stored B are left
    as they are; kernels with a fixed B (dss-exp, dss-softmax) store only the product and are unchanged.
    """
    from .nn.kernels import undiscretize

    if not layer.learn_B:
        return red
    with np.errstate(all="ignore"):
        _, B = undiscretize(layer.kernel_name, torch.from_numpy(np.asarray(red.modes, np.complex128)),
                            torch.from_numpy(np.asarray(red.B, np.complex128)),
                            torch.from_numpy(np.broadcast_to(np.asarray(red.dt, float), red.batch_shape).copy()),
                            layer.l_max)
        b, c = np.abs(B.numpy()), np.abs(red.C)
        ok = np.isfinite(b) & (b > 0) & (c > 0) & np.isfinite(c)
        if active is not None:
            ok &= np.asarray(active, bool)
        scale = np.where(ok, np.sqrt(np.where(ok, c, 1.0) / np.where(ok, b, 1.0)), 1.0)
    return DiagonalSSM(red.modes, red.B * scale, red.C / scale, red.D, red.dt, "discrete")


def reduce_layer(layer, method: str = "bt", rank=None, energy=None, horizon="auto", refit=None,
                 kernel_length=None, index: int = 0):
    """Reduce the H channels of one SSM layer; return ``(system, LayerReport)``.

    ``system`` is a discrete ``DiagonalSSM`` (H, slots) ready for
    ``layer.load_discrete_system``: with ``rank`` r exactly ``slots = r/2`` stored modes
    per channel (the shapes of a fresh ``state_dim = r`` layer), with ``energy`` the
    largest number any channel needs.  Steps: reduce (``bt``: the largest balanced
    truncation order that fits the slots; ``modal``: the modes with the largest H2
    score), bring modes of layers with ``Re(A) < 0`` built in inside ``STABLE_RADIUS``,
    optionally refit C and D by least squares on the length-L response, and fill free
    slots with Skew-HiPPO modes of zero output.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not available; choose one of {', '.join(METHODS)}.")
    if method == "h2" and rank is None:
        raise ValueError("method 'h2' takes a rank (real order per channel), not an energy fraction.")
    refit = DEFAULT_REFIT if refit is None else bool(refit)
    sys = layer_system(layer)
    H, n = sys.batch_shape[0], sys.n_modes
    h = resolve_horizon(horizon, layer, sys, method)
    L = int(kernel_length or layer.l_max or 1024)
    hsv = bound = extra = None
    if method in ("bsp", "h2") and h is not None:   # no finite-horizon variant of these
        raise ValueError(f"method {method!r} needs the infinite horizon and stable modes, but layer {index} "
                         f"({layer.kernel_name}) is reduced over a finite horizon of {h} taps; use bt or modal.")
    if rank is not None and rank >= 2 * n:                  # nothing to reduce
        slots, orders = n, np.full(H, 2 * n)
        (lam, B, C, D), counts = (sys.modes.copy(), sys.B.copy(), sys.C.copy(), sys.D.copy()), np.full(H, n)
        if method in ("bt", "bsp"):
            hsv = hankel_singular_values(sys, horizon=h)
    elif method in _BALANCED and rank is not None:
        slots = max(1, rank // 2)
        reduce = {"bt": lambda s_, o: balanced_truncation(s_, order=o, horizon=h),
                  "bsp": lambda s_, o: balanced_singular_perturbation(s_, order=o),
                  "h2": lambda s_, o: h2_optimal(s_, o)}[method]
        (lam, B, C, D), counts, orders, first = _reduce_into_slots(sys, slots, reduce)
        hsv = getattr(first, "hsv", None)
        if method == "h2":
            extra = {"h2_converged": float(np.mean(first.converged)), "h2_iterations_median": float(np.median(first.iterations))}
    elif method in ("bt", "bsp"):
        res = (balanced_truncation(sys, energy=energy, horizon=h) if method == "bt"
               else balanced_singular_perturbation(sys, energy=energy))
        counts, orders, hsv = np.array(res.n_modes), np.array(res.order), res.hsv
        slots = max(1, int(counts.max()))
        lam, B, C = (np.zeros((H, slots), np.complex128) for _ in range(3))
        D = sys.D.copy()
        _take_active(res, np.arange(H), slots, (lam, B, C, D))
    else:
        if rank is None:
            raise ValueError(f"method {method!r} takes a rank (real order per channel), not an energy fraction.")
        slots = max(1, rank // 2)
        (lam, B, C, D), counts, orders = _modal_into_slots(sys, slots, _MODAL_SCORE[method])
    if hsv is not None and method in ("bt", "bsp"):       # 2 * sum of the discarded Hankel singular values
        tail = np.cumsum(hsv[..., ::-1], -1)[..., ::-1]
        tail = np.concatenate([tail, np.zeros((H, 1))], -1)
        bound = 2.0 * np.take_along_axis(tail, np.minimum(np.asarray(orders), hsv.shape[-1])[:, None], -1)[:, 0]
    red = DiagonalSSM(lam, B, C, D, sys.dt, "discrete")
    used = np.arange(slots)[None, :] < np.asarray(counts)[:, None]
    moved = 0
    if layer.constrained:
        red, moved_per = stabilize_modes(red, STABLE_RADIUS)
        moved = int(moved_per.sum())
    # balanced before the refit too: its test for columns at rounding level compares the columns' norms, which
    # depend on the split (its ridge and fit do not: they work in column-scaled coordinates)
    red = balance_split(layer, red, used)
    target = impulse_response(sys, L)
    if refit:
        # and after it: the fit may give a mode of tiny B a large C (measured: C 5e9 on B_d 2e-13, an
        # mnist1d model reduced to r = 32 at epoch 7), the same defect in training as an unbalanced reduction
        red = balance_split(layer, refit_output(red, target, fit_D=True, active=used), used)
    free = ~used
    if free.any():
        lam_f, B_f = _free_slot_modes(layer, slots, sys.dt)
        red = DiagonalSSM(np.where(free, lam_f, red.modes), np.where(free, B_f, red.B),
                          np.where(free, 0.0, red.C), red.D, sys.dt, "discrete")
    got = impulse_response(red, L)
    kerr = np.linalg.norm(target - got, axis=-1) / np.maximum(np.linalg.norm(target, axis=-1), 1e-300)
    hinf = None
    if np.all(sys.is_stable()) and np.all(red.is_stable()):
        hinf = (sys - red).hinf_norm()
    report = LayerReport(layer=index, method=method, state_dim_before=sys.order, state_dim_after=2 * slots,
                         orders=np.asarray(orders), hsv=hsv, error_bound=bound, hinf_error=hinf,
                         kernel_rel_error=kerr, horizon=h, refit=refit, stabilized=moved,
                         free_slots=int(free.sum()), extra=extra or {})
    return red, report


def layer_values(layer, method: str = "bt", horizon="auto") -> np.ndarray:
    """Value of each stored-mode slot of one layer, shape (n,), decreasing, summing to 1.

    Balanced methods (bt, bsp, h2): per channel, the Hankel singular values taken in pairs
    (one stored mode = real order 2) and divided by their sum; modal methods: the sorted
    mode scores divided by their sum (LAST's layer normalisation).  Averaged over channels.
    """
    sys = layer_system(layer)
    if method in _BALANCED:
        hsv = hankel_singular_values(sys, horizon=resolve_horizon(horizon, layer, sys, method))
        v = hsv[:, 0::2] + hsv[:, 1::2]
    else:
        sc = layer_mode_scores(sys, _MODAL_SCORE[method])
        finite = np.isfinite(sc)
        big = 10 * np.max(np.where(finite, sc, 0.0), axis=-1, keepdims=True) + 1.0
        v = -np.sort(-np.where(finite, sc, big), axis=-1)
    total = v.sum(-1, keepdims=True)
    v = np.where(total > 0, v / np.where(total > 0, total, 1.0), 0.0)
    return v.mean(0)


def allocate_budget(values, budget: int) -> list[int]:
    """Stored modes per layer for a total of exactly ``budget``: one global threshold on the layer values.

    Every layer keeps at least one stored mode and at most its own; the remaining slots go,
    one by one, to the layer whose next slot has the largest value (``layer_values``), which
    for decreasing values is a single threshold over all layers.
    """
    sizes = [len(v) for v in values]
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not len(sizes) <= budget <= sum(sizes):
        raise ValueError(f"budget must be an integer number of stored modes between {len(sizes)} (one per layer) "
                         f"and {sum(sizes)} (all of them), got {budget!r}.")
    slots = [1] * len(sizes)
    cand = sorted(((float(v[k]), -i, k) for i, v in enumerate(values) for k in range(1, len(v))), reverse=True)
    for _, neg_i, _ in cand[:budget - len(sizes)]:
        slots[-neg_i] += 1
    return slots


def budget_ranks(model, budget, method: str = "bt", horizon="auto") -> list[int]:
    """Real orders per layer (2 * stored modes) meeting ``budget``: an int (total stored modes per channel,
    summed over layers) or a fraction in (0, 1) of the model's stored modes."""
    layers = model.ssm_layers()
    total = sum(layer.n_modes for layer in layers)
    if isinstance(budget, float) and not isinstance(budget, bool):
        if not 0 < budget < 1:
            raise ValueError(f"a fractional budget must lie in (0, 1), got {budget!r}.")
        budget = max(len(layers), int(round(budget * total)))
    values = [layer_values(layer, method, horizon) for layer in layers]
    return [2 * k for k in allocate_budget(values, budget)]


def write_back(model, systems):
    """A copy of ``model`` whose SSM layers are the given discrete systems (any sizes).

    Everything that is not an SSM parameter is copied; each layer keeps its step sizes and
    inverts its own discretisation (``SSMLayer.load_discrete_system``).
    """
    from .nn import SequenceModel

    cfg = copy.deepcopy(model.config)
    cfg["state_dim"] = [2 * s.n_modes for s in systems]
    ref = next(model.parameters())
    small = SequenceModel(**cfg).to(dtype=ref.dtype, device=ref.device)
    own = small.state_dict()
    small.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape},
                          strict=False)
    for layer, red in zip(small.ssm_layers(), systems):
        layer.load_discrete_system(torch.from_numpy(red.modes), torch.from_numpy(red.B),
                                   torch.from_numpy(red.C), torch.from_numpy(red.D))
    return small


def compress_model(model, method: str = "bt", rank=None, energy=None, horizon="auto", refit=None,
                   kernel_length=None, budget=None):
    """Reduce every SSM layer of ``model`` and return ``(smaller_model, report)``.

    Parameters
    ----------
    model : SequenceModel
        The trained model (left unchanged).
    method : {"bt", "modal"}
        ``"bt"``: square-root balanced truncation of every channel's real realisation;
        ``"modal"``: keep the stored modes with the largest H2 score.
    rank : int or list of int, optional
        Real order r per channel (one value, or one per layer): every layer of the result
        stores exactly r/2 modes per channel, the shapes and parameter count of a fresh
        model with ``state_dim = r`` (bt: per channel the largest balanced-truncation
        order whose diagonal form fits; free slots start as Skew-HiPPO modes with zero output).
    energy : float or list of float, optional
        Instead of ``rank`` (bt only): per channel the smallest order whose Hankel singular
        values reach this fraction of their sum; a layer's size is what its largest channel needs.
    horizon : "auto", "infinite", "finite" or int
        Gramians over an infinite or a finite horizon (``"finite"``: the layer's ``l_max``);
        ``"auto"`` = ``DEFAULT_HORIZON``.  Layers with unstable modes always use ``l_max``.
    refit : bool, optional
        Refit C and D of every reduced channel by least squares on its original length-L
        impulse response (default ``DEFAULT_REFIT``).
    kernel_length : int, optional
        L for the refit and the error measure (default: ``l_max`` or 1024).
    budget : int or float, optional
        Instead of ``rank``/``energy``: the total number of stored modes per channel summed
        over layers (int), or a fraction in (0, 1) of the model's; the per-layer sizes come
        from one global threshold on layer-normalised Hankel singular values (balanced
        methods) or mode scores (modal methods, as LAST), and meet the budget exactly.

    Returns
    -------
    small : SequenceModel
    report : CompressionReport
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not available; choose one of {', '.join(METHODS)}.")
    if sum(v is not None for v in (rank, energy, budget)) != 1:
        raise ValueError(f"give exactly one of rank (real order), energy (fraction) or budget (stored modes), "
                         f"got rank={rank!r}, energy={energy!r}, budget={budget!r}.")
    if budget is not None:
        rank = budget_ranks(model, budget, method, horizon)
    layers = model.ssm_layers()
    ranks = _per_layer(rank, len(layers), "rank")
    energies = _per_layer(energy, len(layers), "energy")
    for r in ranks:
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 2 or r % 2):
            raise ValueError(f"rank must be a positive even integer (real order, 2 per stored mode), got {r!r}.")
    kernel_length = kernel_length or model.config.get("l_max") or 1024
    systems, reports = [], []
    for i, (layer, r, e) in enumerate(zip(layers, ranks, energies)):
        red, rep = reduce_layer(layer, method=method, rank=r, energy=e, horizon=horizon, refit=refit,
                                kernel_length=kernel_length, index=i)
        systems.append(red)
        reports.append(rep)
    small = write_back(model, systems)
    return small, CompressionReport(method=method, rank=rank, energy=energy, layers=reports, budget=budget)


def compress_run(src, out, rank=None, energy=None, method: str = "bt", horizon="auto", refit=None, data=None,
                 evaluate_splits=("test",), budget=None) -> dict:
    """Compress the model of run folder ``src`` into a new run folder ``out``.

    ``out`` gets ``config.json`` (the smaller architecture, the source's data set,
    ``compressed_from``), ``model.safetensors``, ``compression.json`` (the full per-layer
    report) and ``summary.json`` with the accuracy before and after compression on the
    given splits, *without* retraining.  ``evaluate``, ``info`` and ``train --init-from``
    accept the folder.  Nothing is written when the compression fails.
    """
    from pathlib import Path

    from . import checkpoint as ckpt
    from .data import load_dataset
    from .train import evaluate

    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; choose another --out for the compressed run.")
    model, cfg = ckpt.load_model(src)
    small, report = compress_model(model, method=method, rank=rank, energy=energy, horizon=horizon, refit=refit,
                                   budget=budget)
    if data is None:
        dcfg = cfg.get("data", {})
        data = load_dataset(dcfg["spec"], **dcfg.get("options", {})) if dcfg.get("spec") else None
    refit = DEFAULT_REFIT if refit is None else bool(refit)
    summary = {"compressed_from": str(src), "method": method, "rank": rank, "energy": energy, "budget": budget,
               "horizon": horizon, "refit": refit, **small.parameter_counts(),
               "state_dims_before": model.state_dims, "state_dims": small.state_dims,
               "layers": [r.summary() for r in report.layers]}
    if data is not None:
        for split in evaluate_splits:
            x, y, lengths = data.split(split)
            before = evaluate(model, x, y, lengths, task=data.task)
            after = evaluate(small, x, y, lengths, task=data.task)
            summary[f"{split}_accuracy_before"] = before["accuracy"]
            summary[f"{split}_accuracy"] = after["accuracy"]
            summary[f"{split}_loss_before"] = before["loss"]
            summary[f"{split}_loss"] = after["loss"]
    new_cfg = {k: v for k, v in cfg.items() if k not in ("train", "model")}
    new_cfg["model"] = small.config
    new_cfg["compressed_from"] = str(src)
    new_cfg["compression"] = {"method": method, "rank": rank, "energy": energy, "budget": budget, "horizon": horizon,
                              "refit": refit}
    tmp = out.with_name("." + out.name + ".partial")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ckpt.write_json(tmp / ckpt.CONFIG, new_cfg)
    ckpt.write_tensors(tmp / ckpt.WEIGHTS, small.state_dict())
    ckpt.write_json(tmp / "compression.json", report.to_json())
    ckpt.write_json(tmp / "summary.json", summary)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return summary
