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

from .lti import DiagonalSSM, balanced_truncation

METHODS = ("bt",)


@dataclass
class LayerReport:
    """What is known about the reduction of one layer (arrays have one row per channel)."""

    layer: int
    state_dim_before: int           # real order 2n of the original layer
    state_dim_after: int            # real order of the stored modes of the reduced layer (max over channels)
    orders: np.ndarray              # (H,) real order kept per channel
    hsv: np.ndarray                 # (H, 2n) Hankel singular values, descending
    error_bound: np.ndarray         # (H,) 2 * sum of the discarded Hankel singular values
    hinf_error: np.ndarray | None   # (H,) measured ||G - G_r||_inf (None for finite-horizon reduction)
    kernel_rel_error: np.ndarray    # (H,) ||K - K_r||_2 / ||K||_2 over the model's length
    horizon: int | None

    def summary(self) -> dict:
        out = {"layer": self.layer, "state_dim_before": self.state_dim_before,
               "state_dim_after": self.state_dim_after, "horizon": self.horizon,
               "order_mean": float(np.mean(self.orders)), "order_max": int(np.max(self.orders)),
               "error_bound_max": float(np.max(self.error_bound)),
               "kernel_rel_error_max": float(np.max(self.kernel_rel_error)),
               "kernel_rel_error_mean": float(np.mean(self.kernel_rel_error))}
        if self.hinf_error is not None:
            out["hinf_error_max"] = float(np.max(self.hinf_error))
            out["bound_holds"] = bool(np.all(self.hinf_error <= self.error_bound * (1 + 1e-6) + 1e-12))
        return out

    def to_json(self) -> dict:
        d = self.summary()
        d.update(orders=self.orders.tolist(), hsv=self.hsv.tolist(), error_bound=self.error_bound.tolist(),
                 hinf_error=None if self.hinf_error is None else self.hinf_error.tolist(),
                 kernel_rel_error=self.kernel_rel_error.tolist())
        return d


@dataclass
class CompressionReport:
    method: str
    rank: object
    energy: float | None
    layers: list[LayerReport] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"method": self.method, "rank": self.rank, "energy": self.energy,
                "layers": [r.to_json() for r in self.layers]}


def layer_system(layer) -> DiagonalSSM:
    """The H discrete SISO systems of one SSM layer as a batched ``DiagonalSSM`` (float64)."""
    s = layer.discrete_system()
    to_np = lambda t: t.detach().cpu().numpy().astype(np.complex128 if t.is_complex() else np.float64)
    return DiagonalSSM(to_np(s["lam_d"]), to_np(s["B_d"]), to_np(s["C"]), to_np(s["D"]),
                       dt=to_np(s["dt"]), domain="discrete")


def _default_horizon(layer, sys: DiagonalSSM):
    """Infinite horizon for stable layers; the kernel length for dss-softmax (modes may grow)."""
    if layer.kernel_name == "dss-softmax" or not np.all(np.abs(sys.modes) < 1):
        if layer.l_max is None:
            raise ValueError(
                f"layer with kernel {layer.kernel_name!r} has modes outside the unit circle and no l_max, "
                "so neither infinite- nor finite-horizon Gramians are defined; build the model with l_max.")
        return int(layer.l_max)
    return None


def _per_layer(value, n_layers: int, what: str):
    if value is None or np.isscalar(value):
        return [value] * n_layers
    value = list(value)
    if len(value) != n_layers:
        raise ValueError(f"{what} lists {len(value)} values but the model has {n_layers} layers; give one or {n_layers}.")
    return value


def compress_model(model, method: str = "bt", rank=None, energy=None, horizon="auto", kernel_length=None):
    """Reduce every SSM layer of ``model`` and return ``(smaller_model, report)``.

    Parameters
    ----------
    model : SequenceModel
        The trained model (left unchanged).
    method : {"bt"}
        ``"bt"``: square-root balanced truncation of every channel's real realisation.
    rank : int or list of int, optional
        Real order r to keep per channel (one value, or one per layer).
    energy : float or list of float, optional
        Instead of ``rank``: keep the smallest order whose Hankel singular values reach
        this fraction of their sum (per channel, so orders differ between channels).
    horizon : "auto", None or int
        ``"auto"``: infinite-horizon Gramians for stable layers, finite horizon ``l_max``
        for dss-softmax layers; ``None``: always infinite; int: finite horizon L.
    kernel_length : int, optional
        Length over which the relative kernel error is measured (default: ``l_max`` or 1024).

    Returns
    -------
    small : SequenceModel
        Same architecture, ``state_dim`` per layer = real order of its stored modes
        (at least the largest kept order; more when real eigenvalues need their own stored mode).
    report : CompressionReport
    """
    from .nn import SequenceModel

    if method not in METHODS:
        raise ValueError(f"method {method!r} is not available; choose one of {', '.join(METHODS)}.")
    if (rank is None) == (energy is None):
        raise ValueError(f"give exactly one of rank (real order) or energy (fraction), got rank={rank!r}, energy={energy!r}.")
    layers = model.ssm_layers()
    ranks = _per_layer(rank, len(layers), "rank")
    energies = _per_layer(energy, len(layers), "energy")
    for r in ranks:
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0):
            raise ValueError(f"rank must be a non-negative integer (real order), got {r!r}.")
    L_err = kernel_length or model.config.get("l_max") or 1024

    reduced, reports = [], []
    for i, (layer, r, e) in enumerate(zip(layers, ranks, energies)):
        sys = layer_system(layer)
        h = _default_horizon(layer, sys) if horizon == "auto" else horizon
        res = balanced_truncation(sys, order=r, energy=e, horizon=h)
        red = res.system
        K = sys.kernel(L_err)
        Kr = red.kernel(L_err)
        kerr = np.linalg.norm(K - Kr, axis=-1) / np.maximum(np.linalg.norm(K, axis=-1), 1e-300)
        hinf = (sys - red).hinf_norm() if h is None else None
        # a reduced layer stores at least one mode (a zero-output pad when every channel went to order 0)
        n_keep = max(1, red.n_modes)
        reduced.append((red, n_keep))
        reports.append(LayerReport(layer=i, state_dim_before=sys.order, state_dim_after=2 * n_keep,
                                   orders=np.atleast_1d(np.asarray(res.order)), hsv=res.hsv,
                                   error_bound=np.atleast_1d(res.error_bound), hinf_error=hinf,
                                   kernel_rel_error=kerr, horizon=h))

    cfg = copy.deepcopy(model.config)
    cfg["state_dim"] = [2 * n for _, n in reduced]
    small = SequenceModel(**cfg).to(dtype=next(model.parameters()).dtype,
                                    device=next(model.parameters()).device)
    own = small.state_dict()
    small.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape},
                          strict=False)
    for layer, (red, n_keep) in zip(small.ssm_layers(), reduced):
        lam, B, C = red.modes, red.B, red.C
        if red.n_modes < n_keep:   # pad: inactive stable mode with zero output
            pad = n_keep - red.n_modes
            lam = np.concatenate([lam, np.zeros(lam.shape[:-1] + (pad,))], -1)
            B = np.concatenate([B, np.zeros(B.shape[:-1] + (pad,))], -1)
            C = np.concatenate([C, np.zeros(C.shape[:-1] + (pad,))], -1)
        layer.load_discrete_system(torch.from_numpy(lam), torch.from_numpy(B), torch.from_numpy(C),
                                   torch.from_numpy(red.D))
    report = CompressionReport(method=method, rank=rank, energy=energy, layers=reports)
    return small, report


def compress_run(src, out, rank=None, energy=None, method: str = "bt", horizon="auto", data=None,
                 evaluate_splits=("test",)) -> dict:
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
    small, report = compress_model(model, method=method, rank=rank, energy=energy, horizon=horizon)
    if data is None:
        dcfg = cfg.get("data", {})
        data = load_dataset(dcfg["spec"], **dcfg.get("options", {})) if dcfg.get("spec") else None
    summary = {"compressed_from": str(src), "method": method, "rank": rank, "energy": energy,
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
    new_cfg["compression"] = {"method": method, "rank": rank, "energy": energy,
                              "horizon": horizon if horizon != "auto" else "auto"}
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
