"""Training loop: AdamW with the S4 convention, warmup + cosine, clipping, best-by-validation.

One process, or DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on GPU):
every rank walks the same shuffled order of global batches and takes an equal share of
each, and the loss is scaled so that the averaged gradient is the gradient of the mean
loss over the *global* batch -- the same update a single process makes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .nn.hankel import hankel_penalty


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all JSON-serialisable)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-2           # encoder, decoder, C, D, norms, output projections
    ssm_lr: float = 1e-3       # A, B and the step size (S4 convention: no weight decay)
    weight_decay: float = 0.01
    warmup: float = 0.05       # fraction of all steps spent in linear warmup
    grad_clip: float = 1.0     # max global gradient norm; 0 disables clipping
    seed: int = 0
    eval_batch_size: int = 256
    device: str = "auto"       # "auto", "cpu", "cuda", "cuda:1", ...
    patience: int = 0          # stop after this many epochs without a better validation score; 0 = never
    reduce_to: int | None = None   # in-training reduction (CompreSSM's schedule): final real order per channel
    reduce_at: list = dataclasses.field(default_factory=list)   # epochs after which the model is reduced
    reduce_method: str = "bt"      # compress.METHODS
    hankel_reg: float = 0.0    # weight of the Hankel penalty (nn.hankel.hankel_penalty); 0 disables it
    hankel_order: int | None = None  # penalise the Hankel singular values beyond this real order (None: all)
    hankel_sample: float = 1.0  # fraction of channels the penalty draws per step (unbiased estimate; 1 = all)
    hankel_relative: bool = False  # penalise each channel's tail as a share of all its Hankel singular values
    hankel_horizon: str = "auto"  # the penalty's Gramians: "auto" (infinite for stable layers) or "finite" (l_max)
    min_epochs: int = 0        # patience does not stop a run before this many epochs (0 = no floor); the
                               # schedule of in-training reduction has this floor at its last reduction
    anneal: int = 0            # on an early stop: this many more epochs from the best checkpoint, the learning
                               # rate decaying (cosine) from its value at the stop to zero; 0 = plain stop
    select_rank: int | None = None  # choose the best epoch (and stop early) by the validation score of the model
                               # reduced to this real order per channel (reduce_method, compress_model's default
                               # horizon and refit, no retraining): the model that will be deployed compressed
                               # is selected by what it keeps

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive finite number"),
            ("ssm_lr", self.ssm_lr >= 0 and math.isfinite(self.ssm_lr), "a non-negative finite number"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("warmup", 0 <= self.warmup < 1, "a fraction in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "non-negative (0 disables clipping)"),
            ("eval_batch_size", self.eval_batch_size >= 1, "a positive integer"),
            ("patience", isinstance(self.patience, int) and self.patience >= 0, "a non-negative integer (0 = off)"),
            ("min_epochs", isinstance(self.min_epochs, int) and not isinstance(self.min_epochs, bool)
             and 0 <= self.min_epochs <= self.epochs and (self.min_epochs == 0 or self.patience > 0),
             f"an integer in [0, epochs={self.epochs}], and > 0 only with patience"),
            ("anneal", isinstance(self.anneal, int) and not isinstance(self.anneal, bool) and self.anneal >= 0
             and (self.anneal == 0 or self.patience > 0), "a non-negative integer, and > 0 only with patience"),
            ("hankel_reg", self.hankel_reg >= 0 and math.isfinite(self.hankel_reg), "a non-negative finite number"),
            ("hankel_order", self.hankel_order is None or (isinstance(self.hankel_order, int)
                                                           and self.hankel_order >= 0), "None or a non-negative integer"),
            ("hankel_sample", isinstance(self.hankel_sample, (int, float)) and not isinstance(self.hankel_sample, bool)
             and 0 < self.hankel_sample <= 1, "a fraction of the channels in (0, 1]"),
            ("hankel_horizon", self.hankel_horizon in ("auto", "finite"), "'auto' or 'finite'"),
            ("hankel_relative", isinstance(self.hankel_relative, bool)
             and not (self.hankel_relative and self.hankel_order is None), "True or False, and True only with hankel_order"),
        ]
        from .compress import METHODS as REDUCTIONS
        ra = list(self.reduce_at)
        if self.reduce_method not in REDUCTIONS:
            raise ValueError(f"reduce_method={self.reduce_method!r} is invalid; expected one of {', '.join(REDUCTIONS)}.")
        checks += [
            ("reduce_to", self.reduce_to is None or (isinstance(self.reduce_to, int) and self.reduce_to >= 2
                                                     and self.reduce_to % 2 == 0), "None or a positive even integer"),
            ("select_rank", self.select_rank is None or (
                isinstance(self.select_rank, int) and not isinstance(self.select_rank, bool)
                and self.select_rank >= 2 and self.select_rank % 2 == 0 and self.reduce_to is None),
             "None or a positive even integer (real order), and not together with reduce_to"),
            ("reduce_at", (not ra and self.reduce_to is None) or (
                self.reduce_to is not None and ra and all(isinstance(e, int) for e in ra) and ra == sorted(set(ra))
                and 1 <= ra[0] and ra[-1] < self.epochs),
             f"increasing epochs in [1, {self.epochs - 1}] (given together with reduce_to)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; expected {expected}.")


# ----------------------------------------------------------------------------- helpers

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu or cuda[:i].") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch sees no CUDA device; use --device cpu.")
    return dev


def distributed() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """S4 convention: A, B, dt at ``ssm_lr`` without weight decay; biases and norms without decay.

    The SSM parameters are the ones their layer marks with ``p._optim`` (as in the S4 reference
    code): that attribute is the one source of truth for the grouping.
    """
    ssm, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "_optim", None) is not None:
            ssm.append(p)
        elif p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "name": "no_decay"},
        {"params": ssm, "lr": cfg.ssm_lr, "weight_decay": 0.0, "name": "ssm"},
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warmup over ``warmup * total`` steps, then cosine decay to zero."""
    w = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, total - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _lr_now(state: dict, total: int, warmup: float) -> float:
    """The learning-rate factor of the next step: the run's schedule, or after an early stop with annealing,
    a cosine from the factor at the stop to zero over the annealing steps."""
    an = state.get("anneal")
    if not an:
        return lr_factor(state["step"], total, warmup)
    done = (state["step"] - an["start_step"]) / max(1, an["steps"])
    return an["factor"] * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def loss_and_correct(model, x, y, lengths, task: str, reduction: str = "mean"):
    out = model(x, lengths=lengths)
    if task == "regression":
        loss = F.mse_loss(out.reshape(y.shape), y, reduction=reduction)
        return loss, None
    loss = F.cross_entropy(out, y, reduction=reduction)
    return loss, (out.argmax(-1) == y).sum()


def batch_rows(a, index, device):
    """Rows ``index`` (tensor or slice) of a split array as a tensor on ``device``; None stays None.

    ``a`` is a tensor, a numpy array, or stored data (``ssmcompress.data.StoredSequences``:
    uint8 / memory-mapped / on disk) that converts only these rows to float.
    """
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a[index].to(device)
    rows = a[index.numpy() if isinstance(index, torch.Tensor) else index]
    if isinstance(rows, np.ndarray) and not rows.flags.writeable:
        rows = rows.copy()  # a read-only view (frozen array, memory map): torch needs its own copy
    return torch.as_tensor(rows).to(device)


@torch.no_grad()
def evaluate(model, x, y, lengths=None, task: str = "classification", batch_size: int = 256,
             device: torch.device | None = None) -> dict:
    """Mean loss and accuracy of ``model`` (eval mode) on ``x, y`` (numpy, torch or StoredSequences), per batch."""
    device = device or next(model.parameters()).device
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty split; the dataset has no samples there.")
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb, lb = (batch_rows(a, slice(i, i + batch_size), device) for a in (x, y, lengths))
        loss, corr = loss_and_correct(model, xb, yb, lb, task, reduction="sum")
        total_loss += float(loss)
        correct += 0 if corr is None else int(corr)
    model.train(was_training)
    n = len(x)
    res = {"loss": total_loss / n, "n": n}
    res["accuracy"] = correct / n if task != "regression" else None
    return res


# ----------------------------------------------------------------------------- resume state

def _save_last(out: Path, model, opt, state: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    ckpt.write_tensors(out / ckpt.LAST, tensors)
    ckpt.write_json(out / ckpt.STATE, state)


def load_last_weights(out: Path, model) -> dict:
    """Load the model weights of the last finished epoch (``last.safetensors`` of run folder ``out``, not the
    best-by-validation ``model.safetensors``) into ``model``; returns every tensor of that file."""
    tensors = ckpt.read_tensors(out / ckpt.LAST)
    ckpt.load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, out / ckpt.LAST)
    return tensors


def _load_last(out: Path, model, opt) -> dict:
    state = ckpt.read_json(out / ckpt.STATE)
    tensors = load_last_weights(out, model)
    osd = opt.state_dict()
    new_state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            new_state.setdefault(int(idx), {})[name] = v
    osd["state"] = new_state
    opt.load_state_dict(osd)
    torch.set_rng_state(tensors["rng.torch"])
    return state


# ----------------------------------------------------------------------------- in-training reduction

def reduction_schedule(n_from: int, n_to: int, steps: int) -> list[int]:
    """Real orders after each of ``steps`` reductions: geometric from ``n_from`` to ``n_to`` (even, decreasing)."""
    out = []
    for k in range(1, steps + 1):
        r = n_to if k == steps else 2 * round(n_from * (n_to / n_from) ** (k / steps) / 2)
        out.append(max(n_to, min(r, out[-1] if out else n_from)))
    return out


def _resized(model, state_dims):
    """A fresh model of ``model``'s architecture with the given per-layer state dims (weights loaded later)."""
    from .nn import SequenceModel
    ref = next(model.parameters())
    return SequenceModel(**{**model.config, "state_dim": list(state_dims)}).to(ref.dtype)


def _reduce_in_training(model, cfg: TrainConfig, state: dict, device):
    """Reduce every layer (``cfg.reduce_method``) to the next order of the schedule; a new optimiser.

    The best-by-validation tracking restarts: the run's best model is one of the final size.
    """
    from .compress import compress_model

    n_from = state.setdefault("reduce_from", max(model.state_dims))
    k = cfg.reduce_at.index(state["epoch"])
    r = reduction_schedule(n_from, cfg.reduce_to, len(cfg.reduce_at))[k]
    small, _ = compress_model(model, method=cfg.reduce_method, rank=r)
    small.to(device)
    state["state_dims"] = small.state_dims
    state["best_val_accuracy"] = state["best_val_loss"] = None
    state["best_epoch"] = state["epoch"]
    state.setdefault("reductions", []).append({"epoch": state["epoch"], "state_dims": small.state_dims})
    return small, torch.optim.AdamW(param_groups(small, cfg), lr=cfg.lr, betas=(0.9, 0.999))


def _reduced_validation(model, data, cfg: TrainConfig, device) -> dict:
    """Validation loss and accuracy of ``model`` reduced to ``cfg.select_rank`` (``cfg.reduce_method``).

    Building the reduced model draws from torch's random generators; they are put back afterwards, so a run
    with ``select_rank`` trains exactly as the same run without it (dropout masks included)."""
    from .compress import compress_model

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        small, _ = compress_model(model, method=cfg.reduce_method, rank=cfg.select_rank)
    return evaluate(small.to(device), *data.split("val"), task=data.task, batch_size=cfg.eval_batch_size,
                    device=device)


def _record_best(state: dict, val: dict, reduced: dict | None, epoch: int) -> None:
    """The new best epoch: the full model's validation scores, and the reduced model's when it was chosen by them."""
    state["best_val_accuracy"], state["best_val_loss"] = val["accuracy"], val["loss"]
    if reduced is not None:
        state["best_val_accuracy_reduced"], state["best_val_loss_reduced"] = reduced["accuracy"], reduced["loss"]
    state["best_epoch"] = epoch


# ----------------------------------------------------------------------------- the loop

def train(model, data, cfg: TrainConfig, out: str | Path, run_config: dict | None = None,
          resume: bool = False, progress: bool = True) -> dict:
    """Train ``model`` on ``data`` (a :class:`ssmcompress.data.Dataset`), writing the run folder ``out``.

    Returns the summary dict (best validation accuracy, test metrics of the best model,
    wall time).  Under an initialised process group the model is wrapped in DDP and
    only rank 0 writes files.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    rank, world = distributed()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.select_rank and cfg.select_rank >= min(model.state_dims):
        raise ValueError(f"select_rank={cfg.select_rank} does not reduce a model of state dims {model.state_dims}; "
                         "expected a real order below the smallest.")
    model.to(device)
    task = data.task
    x_tr, y_tr, l_tr = data.split("train")  # x may be stored (uint8, memory-mapped): converted per batch
    n_train = len(x_tr)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))
    state = {"epoch": 0, "step": 0, "best_val_accuracy": None, "best_val_loss": None, "history": [],
             "wall_s": 0.0}
    if resume and (out / ckpt.STATE).is_file():
        dims = ckpt.read_json(out / ckpt.STATE).get("state_dims")
        if dims and dims != model.state_dims:      # the run was reduced in training: continue at its size
            model = _resized(model, dims).to(device)
            opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))
        state = _load_last(out, model, opt)
    else:
        torch.manual_seed(cfg.seed)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        cfg_json = dict(run_config or {})
        cfg_json["model"] = model.config
        cfg_json["train"] = dataclasses.asdict(cfg)
        ckpt.write_json(out / ckpt.CONFIG, cfg_json)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    t_start = time.perf_counter() - state["wall_s"]
    last_epoch = state["epoch"] if state.get("stopped_early") else cfg.epochs   # a resumed early stop stays stopped
    for epoch in range(state["epoch"], last_epoch):
        net.train()
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not progress or rank != 0, dynamic_ncols=True)
        run_loss, run_n, run_penalty = 0.0, 0, 0.0
        for b in bar:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            n_global = len(idx)
            idx = idx[rank::world]
            xb, yb, lb = (batch_rows(a, idx, device) for a in (x_tr, y_tr, l_tr))
            f = _lr_now(state, total_steps, cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            loss_sum, _ = loss_and_correct(net, xb, yb, lb, task, reduction="sum")
            # gradient of the global-batch mean after DDP's average over ranks
            loss = loss_sum * (world / n_global)
            if cfg.hankel_reg > 0:  # the same penalty (and channel draw) on every rank: DDP's average keeps it
                draw = None if cfg.hankel_sample >= 1 else torch.Generator().manual_seed(
                    cfg.seed * 1000003 + state["step"])            # reproducible, also after --resume
                penalty = hankel_penalty(model, cfg.hankel_order, horizon=cfg.hankel_horizon,
                                         sample=cfg.hankel_sample, generator=draw, relative=cfg.hankel_relative)
                loss = loss + cfg.hankel_reg * penalty.to(loss.dtype)
                run_penalty += float(penalty.detach())
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            run_loss += float(loss_sum.detach())
            run_n += len(idx)
            if not math.isfinite(run_loss + run_penalty):
                raise FloatingPointError(
                    f"training loss became {run_loss + run_penalty} at epoch {epoch + 1}; lower --lr or --ssm-lr.")
            bar.set_postfix(loss=f"{run_loss / max(run_n, 1):.4f}")
        bar.close()
        train_loss = run_loss / max(run_n, 1)
        if world > 1:
            t = torch.tensor([run_loss, run_n], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            train_loss = float(t[0] / t[1])
        val = evaluate(model, *data.split("val"), task=task, batch_size=cfg.eval_batch_size, device=device)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "lr": opt.param_groups[0]["lr"],
               "time_s": round(time.perf_counter() - t_start, 3)}
        if cfg.hankel_reg > 0:  # mean over the epoch's steps, before the weight
            row["hankel_penalty"] = run_penalty / steps_per_epoch
        score, best = val, (state["best_val_accuracy"], state["best_val_loss"])
        if cfg.select_rank:     # the score that chooses the best epoch: the reduced model's
            score = _reduced_validation(model, data, cfg, device)
            row.update(val_loss_reduced=score["loss"], val_accuracy_reduced=score["accuracy"])
            best = (state.get("best_val_accuracy_reduced"), state.get("best_val_loss_reduced"))
        better = (best[1] is None or
                  (score["accuracy"] is not None and score["accuracy"] > best[0]) or
                  (score["accuracy"] is None and score["loss"] < best[1]))
        state["epoch"] = epoch + 1
        state["wall_s"] = time.perf_counter() - t_start
        state["history"].append(row)
        if better:
            _record_best(state, val, score if cfg.select_rank else None, epoch + 1)
        if rank == 0:
            if better:
                ckpt.write_tensors(out / ckpt.WEIGHTS, model.state_dict())
            _save_last(out, model, opt, state)
            ckpt.write_text(out / ckpt.METRICS, "".join(json.dumps(r) + "\n" for r in state["history"]))
            if progress:
                acc = "" if val["accuracy"] is None else f" val_acc {val['accuracy']:.4f}"
                if cfg.select_rank:
                    acc += (f"; reduced to order {cfg.select_rank}: val_loss {score['loss']:.4f}"
                            + ("" if score["accuracy"] is None else f" val_acc {score['accuracy']:.4f}"))
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train_loss {train_loss:.4f} val_loss {val['loss']:.4f}{acc}")
        reductions_done = not cfg.reduce_at or state["epoch"] > cfg.reduce_at[-1]
        an = state.get("anneal")
        patience_out = (cfg.patience and reductions_done and not an and cfg.min_epochs <= state["epoch"] < cfg.epochs
                        and state["epoch"] - state.get("best_epoch", 0) >= cfg.patience)
        if patience_out and cfg.anneal > 0:
            # instead of stopping: back to the best checkpoint, then the learning rate from its value now to zero
            n_ep = min(cfg.anneal, cfg.epochs - state["epoch"])
            state["anneal"] = {"start_epoch": state["epoch"], "end_epoch": state["epoch"] + n_ep,
                               "start_step": state["step"], "steps": n_ep * steps_per_epoch,
                               "factor": lr_factor(state["step"], total_steps, cfg.warmup)}
            ckpt.load_state(model, ckpt.read_tensors(out / ckpt.WEIGHTS), out / ckpt.WEIGHTS)
            message = (f"no better validation score for {cfg.patience} epochs: back to epoch {state['best_epoch']}, "
                       f"annealing the learning rate to zero over {n_ep} epochs")
        elif patience_out or (an and state["epoch"] >= an["end_epoch"]):      # early stop, or annealing done
            state["stopped_early"] = True
            message = (f"annealed for {an['end_epoch'] - an['start_epoch']} epochs after the early stop" if an
                       else f"early stop: no better validation score for {cfg.patience} epochs")
        if patience_out or state.get("stopped_early"):
            if rank == 0:
                _save_last(out, model, opt, state)
                if progress:
                    tqdm.write(message)
            if state.get("stopped_early"):
                break
            continue
        if state["epoch"] in cfg.reduce_at:
            model, opt = _reduce_in_training(model, cfg, state, device)
            net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
            if rank == 0:
                cfg_json = ckpt.read_json(out / ckpt.CONFIG)
                cfg_json["model"] = model.config
                ckpt.write_json(out / ckpt.CONFIG, cfg_json)
                ckpt.write_tensors(out / ckpt.WEIGHTS, model.state_dict())
                _save_last(out, model, opt, state)
                if progress:
                    tqdm.write(f"reduced to state dims {model.state_dims} after epoch {state['epoch']}")

    summary = {"epochs": state["epoch"], "max_epochs": cfg.epochs, "stopped_early": bool(state.get("stopped_early")),
               "best_epoch": state.get("best_epoch"),
               "best_val_accuracy": state["best_val_accuracy"], "best_val_loss": state["best_val_loss"],
               "wall_s": round(state["wall_s"], 3), "state_dims": model.state_dims}
    if state.get("reductions"):
        summary["reductions"] = state["reductions"]
    if state.get("anneal"):
        summary["annealed_from_epoch"] = state["anneal"]["start_epoch"]
    if cfg.select_rank:
        summary["best_val_accuracy_reduced"] = state.get("best_val_accuracy_reduced")
        summary["best_val_loss_reduced"] = state.get("best_val_loss_reduced")
        summary["selected_by"] = (f"validation {'accuracy' if task == 'classification' else 'loss'} after "
                                  f"{cfg.reduce_method} to order {cfg.select_rank}")
    if rank == 0:
        best = ckpt.read_tensors(out / ckpt.WEIGHTS)
        ckpt.load_state(model, best, out / ckpt.WEIGHTS)
        test = evaluate(model, *data.split("test"), task=task, batch_size=cfg.eval_batch_size, device=device)
        summary.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
        ckpt.write_json(out / "summary.json", summary)
    return summary

