"""The paper's protocol end to end, with the controls that make it a claim, and its report.

For every kernel and seed: pre-train at state size N from Skew-HiPPO (``legs``), then for
every rank r, models of exactly the same size (r/2 stored modes per channel, checked):

==================  =====================================================================
``bt``              balanced truncation of the pre-trained model, main training (the paper)
``bt-noretrain``    the same reduced model, evaluated without retraining
``modal``           the r/2 modes per channel with the largest H2 score, main training
``modal-noretrain`` the same, without retraining
``legs``, ``lin``   fresh size-r models from Skew-HiPPO / S4D-Lin, ``main_epochs``
``legs-budget``     fresh Skew-HiPPO for ``epochs + main_epochs`` (equal total training)
``warmstart``       the pre-trained model's non-SSM weights (encoder, output linears, norms,
                    decoder) with a fresh Skew-HiPPO SSM layer of size r, ``main_epochs``
==================  =====================================================================

plus ``original`` (the pre-trained N model) and ``original-continued`` (the N model trained
``main_epochs`` more).  Every sub-run is a run folder under ``out``; a finished one
(``summary.json``) is skipped on a rerun and an interrupted one resumes.  Every method is
compared with ``legs`` and ``legs-budget`` seed by seed (paired t-test, Wilcoxon signed-rank).

The further methods of ``EXTRA_METHODS`` are chosen with ``methods``.  One of them is a control:
``legs-schedule``, a fresh size-r Skew-HiPPO model on the schedule of ``in-training`` (cap ``epochs +
main_epochs``, no early stop before the first epoch at which in-training can stop), which in-training is also
compared with, so that its longer forced training is not counted as a gain of the reductions; it is the one
method not compared with ``legs`` and ``legs-budget``.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .compress import compress_run
from .train import TrainConfig, train

BASELINES = ("legs", "lin")
RANKED_METHODS = ("bt", "bt-noretrain", "modal", "modal-noretrain", "legs", "lin", "legs-budget", "warmstart")
#: the default set: the paper's method and every control of issue 8
METHODS = RANKED_METHODS + ("original-continued",)
#: further reductions (``compress.METHODS``), each with and without main training; chosen with --methods
EXTRA_METHODS = ("bsp", "bsp-noretrain", "h2", "h2-noretrain", "modal-hinf", "modal-hinf-noretrain",
                 "bt-adaptive", "bt-adaptive-noretrain", "last", "last-noretrain",
                 "hankel-bt", "hankel-bt-noretrain", "in-training", "legs-schedule")
ALL_METHODS = METHODS + EXTRA_METHODS
#: the rows every method is compared with, seed by seed
REFERENCES = ("legs", "legs-budget")
#: methods that train a fresh size-r model: an experiment of these alone trains no N model (``original``)
FRESH_METHODS = ("legs", "lin", "legs-budget", "in-training", "legs-schedule")
#: controls matched to one method's schedule: compared with that method only, not themselves with REFERENCES
MATCHED_CONTROLS = {"in-training": "legs-schedule"}
#: the N-model rows: parents and references, never compared as compressed methods
_ORIGINALS = ("original", "original-continued", "original-hankel")


def parent_of(method: str) -> str:
    """The N run a compressed method is reduced from: ``original-hankel`` for ``hankel-*``, else ``original``."""
    return "original-hankel" if method.startswith("hankel-") else "original"


#: layer-adaptive methods: the same total of stored modes as rank r (layers x r/2 per channel), split between
#: the layers by one global threshold (compress --budget); equal size means equal parameter count and total state
ADAPTIVE = {"bt-adaptive": "bt", "last": "modal-hinf"}
#: experiment method -> reduction (compress.METHODS) of a pre-trained model
_COMPRESSED = {m: ADAPTIVE.get(m.replace("-noretrain", ""), m.replace("-noretrain", "").replace("hankel-", ""))
               for m in ("bt", "bt-noretrain", "modal", "modal-noretrain") + EXTRA_METHODS if m not in FRESH_METHODS}
LABELS = {
    "original": "original (N, pre-trained)",
    "original-continued": "original, trained on (N)",
    "bt": "BT + main training",
    "bt-noretrain": "BT, no retraining",
    "modal": "modal (H2) + main training",
    "modal-noretrain": "modal (H2), no retraining",
    "legs": "Skew-HiPPO",
    "lin": "S4D-Lin",
    "legs-budget": "Skew-HiPPO, equal total budget",
    "warmstart": "warm start (pre-trained non-SSM weights)",
    "bsp": "BSP + main training",
    "bsp-noretrain": "BSP, no retraining",
    "h2": "H2 (IRKA) + main training",
    "h2-noretrain": "H2 (IRKA), no retraining",
    "modal-hinf": "modal (H-inf) + main training",
    "modal-hinf-noretrain": "modal (H-inf), no retraining",
    "bt-adaptive": "BT, layer-adaptive sizes + main training",
    "bt-adaptive-noretrain": "BT, layer-adaptive sizes, no retraining",
    "last": "LAST (H-inf scores, global threshold) + main training",
    "last-noretrain": "LAST (H-inf scores, global threshold), no retraining",
    "hankel-bt": "Hankel-regularised pre-training, BT + main training",
    "hankel-bt-noretrain": "Hankel-regularised pre-training, BT, no retraining",
    "in-training": "in-training BT reduction (N -> r in 3 steps)",
    "legs-schedule": "Skew-HiPPO, in-training's schedule",
    "original-hankel": "original, Hankel-regularised pre-training (N)",
}


@dataclass
class ExperimentConfig:
    data: str = "smnist"
    data_options: dict = field(default_factory=dict)
    state_dim: int = 64
    ranks: list = field(default_factory=lambda: [32, 16, 8])
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: int = 5                 # pre-training epochs (the cap when train.patience is set)
    main_epochs: int | None = None  # main training and baselines (default: epochs)
    model: dict = field(default_factory=dict)   # SequenceModel keyword arguments (d_model, layers, ...), not kernel
    train: dict = field(default_factory=dict)   # TrainConfig keyword arguments (lr, batch_size, patience, ...)
    kernels: list = field(default_factory=lambda: ["s4d"])
    methods: list = field(default_factory=lambda: list(METHODS))
    hankel_reg: float = 0.1         # weight of the Hankel penalty in the pre-training of hankel-bt (measured on digits)
    hankel_order: int | None = None  # penalise the HSVs beyond this real order (None: all of them, the nuclear norm)
    hankel_sample: float = 1.0      # fraction of channels the penalty draws per step (train --hankel-sample)
    hankel_relative: bool = False   # penalise each channel's tail as a share of its Hankel energy (needs hankel_order)
    hankel_horizon: str = "auto"    # the penalty's Gramians: "auto" (infinite, stable layers) or "finite" (l_max)
    hankel_select_rank: int | None = None  # choose original-hankel's best epoch by its validation accuracy after BT
                                           # to this order, without retraining (train --select-rank)
    horizon: object = "auto"        # Gramians of the reductions (see compress.resolve_horizon)
    refit: bool | None = None       # least-squares refit of C, D after reduction (None: compress.DEFAULT_REFIT)

    def __post_init__(self):
        from .nn.kernels import KERNELS

        if self.state_dim < 2 or self.state_dim % 2:
            raise ValueError(f"state_dim must be a positive even integer, got {self.state_dim}.")
        if not self.ranks:
            raise ValueError("ranks is empty; give at least one reduced order, e.g. --ranks 32,16,8.")
        for r in self.ranks:
            if not isinstance(r, int) or r < 2 or r % 2 or r >= self.state_dim:
                raise ValueError(
                    f"rank {r!r} is invalid; every rank must be an even integer in [2, {self.state_dim - 2}] (below --state-dim).")
        if not self.seeds:
            raise ValueError("seeds is empty; give at least one seed.")
        if self.epochs < 1 or (self.main_epochs is not None and self.main_epochs < 1):
            raise ValueError("epochs must be positive.")
        if not (isinstance(self.hankel_reg, (int, float)) and self.hankel_reg > 0):
            raise ValueError(f"hankel_reg must be a positive weight, got {self.hankel_reg!r}.")
        if self.hankel_order is not None and not (isinstance(self.hankel_order, int) and not isinstance(
                self.hankel_order, bool) and 0 <= self.hankel_order < self.state_dim):
            raise ValueError(f"hankel_order must be None or an integer in [0, {self.state_dim - 1}] (below the state "
                             f"dimension), got {self.hankel_order!r}.")
        if isinstance(self.hankel_sample, bool) or not isinstance(self.hankel_sample, (int, float)) \
                or not 0 < self.hankel_sample <= 1:
            raise ValueError(f"hankel_sample must be a fraction in (0, 1], got {self.hankel_sample!r}.")
        if not isinstance(self.hankel_relative, bool) or (self.hankel_relative and self.hankel_order is None):
            raise ValueError(f"hankel_relative must be True or False, and True only with a hankel_order, got "
                             f"{self.hankel_relative!r} with hankel_order {self.hankel_order!r}.")
        if self.hankel_horizon not in ("auto", "finite"):
            raise ValueError(f"hankel_horizon must be 'auto' or 'finite', got {self.hankel_horizon!r}.")
        if self.hankel_horizon == "finite" and self.horizon not in ("auto", "finite"):
            raise ValueError(f"hankel_horizon 'finite' penalises the values of the sequence-length Gramians, but the "
                             f"reductions use the horizon {self.horizon!r}; drop one.")
        r = self.hankel_select_rank
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 2 or r % 2 or r >= self.state_dim):
            raise ValueError(f"hankel_select_rank must be None or an even integer in [2, {self.state_dim - 2}] (below "
                             f"the state dimension), got {r!r}.")
        if r is not None and (self.horizon != "auto" or self.refit is not None):
            raise ValueError(f"hankel_select_rank chooses the epoch with the default reduction (horizon auto, default "
                             f"refit), not the horizon {self.horizon!r} and refit {self.refit!r} asked for; drop one.")
        if not self.kernels:
            raise ValueError("kernels is empty; give at least one, e.g. --kernel s4d,dss-exp.")
        for k in self.kernels:
            if k not in KERNELS:
                raise ValueError(f"kernel {k!r} is unknown; choose from {', '.join(KERNELS)}.")
        if "kernel" in self.model:
            raise ValueError("give the kernels in ExperimentConfig.kernels, not in model.")
        if not self.methods:
            raise ValueError(f"methods is empty; choose from {', '.join(METHODS)}.")
        for m in self.methods:
            if m not in ALL_METHODS:
                raise ValueError(f"method {m!r} is unknown; choose from {', '.join(ALL_METHODS)}.")


# ----------------------------------------------------------------------------- jobs

class StaleRunError(ValueError):
    """The experiment folder holds sub-runs made with other settings than the ones asked for."""


class _Unfinished(Exception):
    """A sub-run that ``report_only`` would have to train (it is not finished); carries its folder."""


#: ExperimentConfig fields that only select sub-runs: they may change between invocations on one folder
SELECTION = ("seeds", "ranks", "kernels", "methods")
#: ExperimentConfig fields read only by hankel-bt's Hankel-regularised pre-training (``original-hankel``): they
#: may change on a folder in which no such sub-run was started (the folder's experiment.json then records the new ones)
HANKEL_SETTINGS = frozenset({"hankel_reg", "hankel_order", "hankel_sample", "hankel_relative", "hankel_horizon",
                             "hankel_select_rank"})


def changed_settings(cfg: ExperimentConfig, recorded: dict) -> list[str]:
    """The settings of ``cfg``, other than the selection of seeds, ranks, kernels and methods, that differ from an
    experiment.json's ``recorded`` ones (a field it does not record, being older, counts as its default)."""
    now = json.loads(json.dumps(asdict(cfg)))
    before = {**json.loads(json.dumps(asdict(ExperimentConfig()))), **recorded}
    return sorted(k for k in set(now) | set(before) if k not in SELECTION and now.get(k) != before.get(k))


def check_same_settings(cfg: ExperimentConfig, out) -> None:
    """Raise StaleRunError when ``out/experiment.json`` records settings, other than the selection of seeds, ranks,
    kernels and methods, that differ from ``cfg``: finished sub-runs are skipped on a rerun, so a rerun with, say,
    another ``epochs`` or ``hankel_order`` would otherwise report runs made under the old settings as new ones.
    The Hankel penalty's settings may change as long as no ``original-hankel`` sub-run exists under ``out``."""
    old = Path(out) / "experiment.json"
    if not old.is_file():
        return
    changed = changed_settings(cfg, ckpt.read_json(old))
    # the Hankel settings alone may change while no Hankel-regularised pre-training (the parent of hankel-bt) exists
    if changed and not (HANKEL_SETTINGS.issuperset(changed)
                        and not any(Path(out).glob(f"*/seed*/{parent_of('hankel-bt')}"))):
        raise StaleRunError(f"{out} holds an experiment with other settings ({', '.join(changed)}); rerun with the "
                            "same flags to resume it (seeds, ranks, kernels and methods may change), or choose "
                            "another --out.")


def in_training_epochs(epochs: int) -> list[int]:
    """The epochs after which the ``in-training`` method reduces: at 1/3, 2/3 and the end of pre-training's cap
    (CompreSSM's schedule; the run trains ``epochs + main_epochs`` in all, early stopping after the last)."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs={epochs!r} is invalid; expected a positive integer.")
    return sorted({max(1, math.ceil(epochs * k / 3)) for k in (1, 2, 3)})


def in_training_schedule(train: dict, epochs: int, main_epochs: int, seed: int, **extra) -> TrainConfig:
    """The schedule of the ``in-training`` run (cap ``epochs + main_epochs``, one warmup + cosine over it) for a
    run without reductions, with early stopping (``train['patience']``) held off (``min_epochs``) until the first
    epoch at which in-training itself can stop.  In-training's last reduction, after epoch L, restarts its best
    tracking; epoch L + 1 is then its new best, so patience p stops it at epoch L + 1 + p at the earliest (or at
    the cap).  ``legs-schedule`` (a fresh size-r model) and ``benchmarks/schedule_control.py`` (the N model)
    train with it."""
    cap, patience = epochs + main_epochs, train.get("patience") or 0
    floor = min(in_training_epochs(epochs)[-1] + 1 + patience, cap) if patience else 0
    return TrainConfig(**{**train, "epochs": cap, "seed": seed, "min_epochs": floor, **extra})


def _job_list(cfg: ExperimentConfig) -> list[tuple]:
    """(kernel, seed, kind, rank) in an order that respects dependencies.  The N model ``original`` is trained
    unless every method is a fresh model (``FRESH_METHODS``): the reductions start from it, and ``hankel-bt``'s
    rows are read against it (the target of compression without retraining)."""
    jobs = []
    need_original = any(m not in FRESH_METHODS for m in cfg.methods)
    for k in cfg.kernels:
        for s in cfg.seeds:
            if need_original:
                jobs.append((k, s, "original", None))
            if any(m.startswith("hankel-bt") for m in cfg.methods):
                jobs.append((k, s, "original-hankel", None))
            if "original-continued" in cfg.methods:
                jobs.append((k, s, "original-continued", None))
            for r in cfg.ranks:
                for m in RANKED_METHODS + EXTRA_METHODS:
                    if m in cfg.methods or (m.endswith("-noretrain") and m[:-len("-noretrain")] in cfg.methods):
                        jobs.append((k, s, m, r))
    return jobs


@contextlib.contextmanager
def sub_run_lock(folder: Path):
    """Hold an exclusive lock on the sub-run ``folder`` (the file ``.<name>.lock`` beside it) while it is made.

    Several ``experiment`` processes may share one experiment folder (say, one per list of seeds).  Without the
    lock, two of them that reach the same sub-run (an overlapping seed list, or ``--seeds 4`` read as seeds
    0..3) would train it at once into the same files.  With it, the second waits, then finds the sub-run
    finished and skips it.  POSIX ``flock``: released by the kernel when a process dies; where ``fcntl`` is
    missing (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:          # pragma: no cover - not POSIX
        yield
        return
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{folder} is being made by another process; waiting for it.", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_run_settings(run_dir: Path, tcfg: TrainConfig, model_cfg: dict | None = None,
                       init_from: str | None = None) -> None:
    """A run folder made before (by a benchmark script or by ``ssmcompress train``) that is to be reused must
    have been made with the training settings ``tcfg`` (and the model keywords ``model_cfg``) from the starting
    point ``init_from`` (a checkpoint folder, or None for a fresh model); else one sentence (ValueError) naming
    the settings that differ.  A folder without ``config.json`` passes."""
    if not (run_dir / ckpt.CONFIG).is_file():
        return
    old = ckpt.read_json(run_dir / ckpt.CONFIG)
    want, had = asdict(tcfg), old.get("train", {})
    # a setting the folder's config does not record was made before it existed: at its default
    defaults = asdict(TrainConfig())
    diff = sorted(k for k in set(want) | set(had) if had.get(k, defaults.get(k, want.get(k))) != want.get(k))
    diff += sorted(f"model.{k}" for k in (model_cfg or {}) if old.get("model", {}).get(k) != model_cfg[k])
    start = lambda p: None if p is None else Path(p).resolve()
    if start(old.get("init_from")) != start(init_from):
        diff.append(f"init_from: {old.get('init_from')} instead of {init_from}")
    if diff:
        raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); remove it or choose "
                         "another --out.")


def _train_run(folder: Path, make_model, tcfg: TrainConfig, data, run_config: dict, report_only: bool = False) -> dict:
    """Train one sub-run unless it is finished; resume it when it was interrupted (under :func:`sub_run_lock`).
    With ``report_only``: the summary of a finished sub-run, else :class:`_Unfinished` (no lock, no training)."""
    if report_only:
        if (folder / "summary.json").is_file():
            return ckpt.read_json(folder / "summary.json")
        raise _Unfinished(folder)
    with sub_run_lock(folder):
        if (folder / "summary.json").is_file():
            return ckpt.read_json(folder / "summary.json")
        resume = (folder / ckpt.STATE).is_file()
        if folder.exists() and not resume:
            shutil.rmtree(folder)          # started but no epoch finished: start again
        torch.manual_seed(tcfg.seed)
        return train(make_model(), data, tcfg, folder, run_config=run_config, resume=resume, progress=False)


def _warm_start(pre: Path, model_kwargs: dict):
    """A fresh size-r Skew-HiPPO model carrying every non-SSM weight of the pre-trained model."""
    from .nn import SequenceModel

    big, _ = ckpt.load_model(pre)
    small = SequenceModel(**model_kwargs)
    own = small.state_dict()
    keep = {k: v for k, v in big.state_dict().items() if ".ssm." not in k and k in own and own[k].shape == v.shape}
    small.load_state_dict(keep, strict=False)
    return small


def still_rising(history: list[dict], stopped_early: bool) -> bool | None:
    """Was validation accuracy still rising at the end: best epoch in the last max(2, 20 %) epochs of a run
    that was not stopped early (a run chosen by its reduced model, ``train --select-rank``: that accuracy)."""
    key = "val_accuracy_reduced" if history and "val_accuracy_reduced" in history[-1] else "val_accuracy"
    if not history or history[0].get(key) is None:
        return None
    if stopped_early:
        return False
    accs = [h[key] for h in history]
    k = max(2, math.ceil(0.2 * len(accs)))
    best = int(np.argmax(accs)) + 1
    return best > len(accs) - k


def _reductions(summary: dict) -> list[list]:
    """[method, horizon, refit] of every distinct reduction in a compressed run's summary.json."""
    return [list(t) for t in sorted({(lay.get("method", "bt"), lay.get("horizon"), lay.get("refit", False))
                                     for lay in summary.get("layers", [])}, key=str)]


def _row(method, kernel, state_dim, seed, retrained, summary, run: Path, rank=None) -> dict:
    model, _ = ckpt.load_model(run)
    info = {**model.parameter_counts(), "state_dims": model.state_dims}
    row = {"method": method, "kernel": kernel, "state_dim": state_dim, "rank": rank, "seed": seed,
           "retrained": retrained, "test_accuracy": summary.get("test_accuracy"),
           "val_accuracy": summary.get("best_val_accuracy"), "ssm_params": info["ssm_params"],
           "params": info["params"], "state_dims": info["state_dims"], "run": str(run)}
    if not retrained:       # the reductions as run, for a report written after the folder is gone
        row["reductions"] = _reductions(ckpt.read_json(run / "summary.json"))
    if retrained:
        history = [json.loads(line) for line in (run / ckpt.METRICS).read_text().splitlines() if line.strip()]
        row.update(epochs=summary.get("epochs"), max_epochs=summary.get("max_epochs"),
                   best_epoch=summary.get("best_epoch"), stopped_early=summary.get("stopped_early", False),
                   still_rising=still_rising(history, summary.get("stopped_early", False)),
                   wall_s=summary.get("wall_s"))
    return row


#: the keys a results.json row must carry to be included in a report (:func:`read_included_results`)
_ROW_KEYS = ("method", "kernel", "state_dim", "rank", "seed", "retrained", "test_accuracy", "ssm_params", "params",
             "state_dims")


def _row_key(row: dict) -> tuple:
    return (row["kernel"], row["seed"], row["method"], row["rank"])


def read_included_results(cfg: ExperimentConfig, paths) -> tuple[dict, dict]:
    """The rows of earlier results.json files, for a report-only invocation to fill in sub-runs its folder does
    not hold (say, folders removed to save disk, or seeds run on another machine).

    Each file must lie beside the experiment.json of the invocation that wrote it, made with the same settings as
    ``cfg`` (seeds, ranks, kernels and methods aside), else one sentence (ValueError).  Returns (rows by
    (kernel, seed, method, rank), number of rows per file); two files that disagree on one sub-run are an error."""
    rows: dict = {}
    counts: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"included results {path} is not a file; expected the results.json of an "
                                    "earlier `experiment` run.")
        exp_json = path.parent / "experiment.json"
        if not exp_json.is_file():
            raise FileNotFoundError(f"included results {path} has no experiment.json beside it; the settings its "
                                    "rows were made with cannot be checked.")
        recorded = ckpt.read_json(exp_json)
        if not isinstance(recorded, dict):
            raise ValueError(f"{exp_json} is not an experiment's settings (a JSON object); the settings the rows of "
                             f"{path} were made with cannot be checked.")
        changed = changed_settings(cfg, recorded)
        if changed:
            raise ValueError(f"included results {path} were made with other settings ({', '.join(changed)}); only "
                             "results of the same experiment settings can share a report.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"included results {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) and all(k in r for k in _ROW_KEYS)
                                                 for r in data):
            raise ValueError(f"included results {path} is not a list of experiment rows (each with "
                             f"{', '.join(_ROW_KEYS)}).")
        counts[str(path)] = 0
        for r in data:
            key = _row_key(r)
            if key in rows and rows[key]["test_accuracy"] != r["test_accuracy"]:
                raise ValueError(f"included results disagree on {_key_name(key)}: test accuracy "
                                 f"{rows[key]['test_accuracy']} in {rows[key]['_included_from']}, "
                                 f"{r['test_accuracy']} in {path}.")
            rows.setdefault(key, {**r, "_included_from": str(path)})
    return rows, counts


def _key_name(key: tuple) -> str:
    return f"{key[0]} seed {key[1]} {key[2]}" + ("" if key[3] is None else f" r={key[3]}")


def _builds_on(method: str) -> str | None:
    """The N sub-run of the same seed whose weights ``method`` starts from (None: a fresh model)."""
    if method in _COMPRESSED or method in ("warmstart", "original-continued"):
        return parent_of(method)
    return None


def run_experiment(cfg: ExperimentConfig, out, progress: bool = True, report_only: bool = False,
                   include=None) -> list[dict]:
    """Run (or finish) the whole protocol under ``out`` and write results.json and report.md.

    ``report_only``: train and compress nothing; results.json and report.md cover the selected sub-runs that are
    finished (for instance while other processes still work on the folder, or over methods run at different
    ranks), and the report lists the selected ones that are not.  ``include`` (report only): earlier results.json
    files of the same settings (:func:`read_included_results`) whose rows stand in for selected sub-runs this
    folder does not hold; a sub-run held in both is taken from the folder, and the report says whether the two
    test accuracies agree (a rerun's check of reproducibility)."""
    from tqdm.auto import tqdm

    from .data import load_dataset

    out = Path(out)
    t0 = time.perf_counter()
    if include and not report_only:
        raise ValueError("included results are only read by a report-only invocation; training next to rows whose "
                         "runs are not in the folder would mix them into sub-runs that depend on them.")
    check_same_settings(cfg, out)
    if report_only and not (out / "experiment.json").is_file():
        raise FileNotFoundError(f"{out} holds no experiment (no experiment.json); report_only needs a folder that "
                                "`experiment` has run in.")
    included, included_counts = read_included_results(cfg, include or [])
    own = (out / "results.json").resolve()
    # the folder's own results.json: rows of sub-runs it still holds would be read twice, which checks nothing
    included = {k: v for k, v in included.items()
                if not (Path(v["_included_from"]).resolve() == own and v.get("run") and Path(v["run"]).is_dir())}
    data = load_dataset(cfg.data, **cfg.data_options)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(out / "experiment.json", asdict(cfg))
    main_epochs = cfg.main_epochs or cfg.epochs
    base = {**data.model_shape(), **cfg.model}
    run_cfg = {"data": {"spec": cfg.data, "options": cfg.data_options}}
    rows: list[dict] = []
    missing: list[str] = []
    jobs = _job_list(cfg)
    bar = tqdm(jobs, desc="experiment", disable=not progress, dynamic_ncols=True)
    rechecked: list[dict] = []          # sub-runs both in the folder and in the included results
    for kernel, seed, kind, r in bar:
        bar.set_postfix_str(f"{kernel} seed {seed} {kind}" + ("" if r is None else f" r={r}"))
        key = (kernel, seed, kind, r)
        try:
            row = _one_job(cfg, out, data, base, run_cfg, main_epochs, kernel, seed, kind, r, report_only)
        except _Unfinished as exc:
            if key in included:
                row = {k: v for k, v in included[key].items() if k != "_included_from"}
                row["_from"] = included[key]["_included_from"]
                included_counts[included[key]["_included_from"]] += 1
                rows.append(row)
                continue
            name = str(Path(exc.args[0]).relative_to(out))
            if name not in missing:       # bt and bt-noretrain both wait on one compressed sub-run
                missing.append(name)
            continue
        old = included.get(key)
        if old is not None:
            rechecked.append({"sub_run": f"{kernel}/seed{seed}/{kind}" + ("" if r is None else f"/r{r}"),
                              "here": row["test_accuracy"], "included": old["test_accuracy"],
                              "same": row["test_accuracy"] == old["test_accuracy"]})
        rows.append(row)
        if not report_only:
            ckpt.write_json(out / "results.json", rows)
    # an included row that starts from a parent made here with another result came from another parent
    here = {(r["kernel"], r["seed"], r["method"]): r["test_accuracy"] for r in rows if "_from" not in r}
    for row in rows:
        parent = _builds_on(row["method"])
        if row.get("_from") and parent:
            old_parent = included.get((row["kernel"], row["seed"], parent, None))
            new_parent = here.get((row["kernel"], row["seed"], parent))
            if old_parent is not None and new_parent is not None and old_parent["test_accuracy"] != new_parent:
                raise ValueError(
                    f"{_key_name((row['kernel'], row['seed'], parent, None))} was made again with another test "
                    f"accuracy ({new_parent} here, {old_parent['test_accuracy']} in {old_parent['_included_from']}), "
                    f"so the included {_key_name(_row_key(row))} came from another parent; make it again here or "
                    "leave it out.")
    for row in rows:
        row.pop("_from", None)
    bar.close()
    if report_only:
        if not rows:
            raise FileNotFoundError(f"none of the {len(jobs)} selected sub-run{'s' if len(jobs) != 1 else ''} in {out} "
                                    "is finished; nothing to report.")
        ckpt.write_json(out / "results.json", rows)
    write_report(cfg, out, rows, data, wall_s=None if report_only else time.perf_counter() - t0, missing=missing,
                 included=included_counts if include else None, rechecked=rechecked if include else None)
    return rows


def _one_job(cfg, out, data, base, run_cfg, main_epochs, kernel, seed, kind, r, report_only) -> dict:
    """Train (or, with ``report_only``, only read) one sub-run of :func:`run_experiment`; its results.json row."""
    from .nn import SequenceModel

    seed_dir = out / kernel / f"seed{seed}"
    pre = seed_dir / "original"
    tc = lambda epochs: TrainConfig(**{**cfg.train, "epochs": epochs, "seed": seed})
    kw = lambda n, init: {**base, "kernel": kernel, "state_dim": n, "init": init}
    run = lambda folder, make, tcfg, extra=None: _train_run(folder, make, tcfg, data, {**run_cfg, **(extra or {})},
                                                            report_only=report_only)
    if kind == "original":
        summ = run(pre, lambda: SequenceModel(**kw(cfg.state_dim, "legs")), tc(cfg.epochs))
        return _row("original", kernel, cfg.state_dim, seed, True, summ, pre)
    if kind == "original-continued":
        folder = seed_dir / "original-continued"
        summ = run(folder, lambda: ckpt.load_model(pre)[0], tc(main_epochs), {"init_from": str(pre)})
        return _row(kind, kernel, cfg.state_dim, seed, True, summ, folder)
    if kind == "original-hankel":
        folder = seed_dir / "original-hankel"
        summ = run(folder, lambda: SequenceModel(**kw(cfg.state_dim, "legs")),
                   TrainConfig(**{**cfg.train, "epochs": cfg.epochs, "seed": seed,
                                  "hankel_reg": cfg.hankel_reg, "hankel_order": cfg.hankel_order,
                                  "hankel_sample": cfg.hankel_sample, "hankel_relative": cfg.hankel_relative,
                                  "hankel_horizon": cfg.hankel_horizon,
                                  "select_rank": cfg.hankel_select_rank}))
        return _row("original-hankel", kernel, cfg.state_dim, seed, True, summ, folder)
    if kind == "in-training":
        folder = seed_dir / f"r{r}" / "in-training"
        at = in_training_epochs(cfg.epochs)
        summ = run(folder, lambda: SequenceModel(**kw(cfg.state_dim, "legs")),
                   TrainConfig(**{**cfg.train, "epochs": cfg.epochs + main_epochs, "seed": seed,
                                  "reduce_to": r, "reduce_at": at}))
        return _row(kind, kernel, r, seed, True, summ, folder, rank=r)
    if kind in _COMPRESSED:
        method = _COMPRESSED[kind]
        base_run = seed_dir / parent_of(kind)
        name = kind.replace("-noretrain", "")
        comp = seed_dir / f"r{r}" / f"{name}-compressed"
        if report_only:
            if not (comp / "summary.json").is_file():
                raise _Unfinished(comp)
        else:
            with sub_run_lock(comp):
                if not (comp / "summary.json").is_file():
                    shutil.rmtree(comp, ignore_errors=True)
                    size = {"budget": r / cfg.state_dim} if name in ADAPTIVE else {"rank": r}
                    compress_run(base_run, comp, method=method, horizon=cfg.horizon, refit=cfg.refit, data=data,
                                 **size)
        if kind.endswith("-noretrain"):
            return _row(kind, kernel, r, seed, False, ckpt.read_json(comp / "summary.json"), comp, rank=r)
        folder = seed_dir / f"r{r}" / name
        summ = run(folder, lambda: ckpt.load_model(comp)[0], tc(main_epochs), {"init_from": str(comp)})
        return _row(kind, kernel, r, seed, True, summ, folder, rank=r)
    folder = seed_dir / f"r{r}" / kind
    if kind == "legs-schedule":
        summ = run(folder, lambda: SequenceModel(**kw(r, "legs")),
                   in_training_schedule(cfg.train, cfg.epochs, main_epochs, seed))
        return _row(kind, kernel, r, seed, True, summ, folder, rank=r)
    if kind == "warmstart":
        make = lambda: _warm_start(pre, kw(r, "legs"))
        extra = {"init_from": str(pre), "warm_start": "non-SSM weights"}
    else:
        make = lambda: SequenceModel(**kw(r, "legs" if kind == "legs-budget" else kind))
        extra = {}
    epochs = cfg.epochs + main_epochs if kind == "legs-budget" else main_epochs
    summ = run(folder, make, tc(epochs), extra)
    return _row(kind, kernel, r, seed, True, summ, folder, rank=r)


# ----------------------------------------------------------------------------- statistics

def paired_comparison(a, b) -> dict:
    """Paired differences ``a - b`` (one pair per seed): n, mean, 95 % CI, paired t and Wilcoxon p-values.

    p-values are two-sided; they are None for n < 2 (t-test) or when every difference is
    zero (Wilcoxon: p = 1), and the t-test's p is 1 when the differences have no spread
    and mean 0.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs two 1-d arrays of the same length, got shapes {a.shape} and {b.shape}.")
    d = a - b
    n = len(d)
    res = {"n": n, "mean_diff": float(d.mean()) if n else None, "ci_low": None, "ci_high": None,
           "t_p": None, "wilcoxon_p": None, "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0))}
    if n < 2:
        return res
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    res["ci_low"], res["ci_high"] = res["mean_diff"] - half, res["mean_diff"] + half
    if sd <= 1e-12 * max(1.0, abs(res["mean_diff"])):     # no spread: the t statistic is 0/0 or infinite
        res["t_p"] = 1.0 if res["mean_diff"] == 0 else 0.0
    else:
        res["t_p"] = float(stats.ttest_rel(a, b).pvalue)
    res["wilcoxon_p"] = 1.0 if np.all(d == 0) else float(stats.wilcoxon(a, b).pvalue)
    return res


def correlation(a, b) -> dict:
    """Pearson and Spearman correlation of ``a`` and ``b`` with p-values and n (None below n = 3 or without spread)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    res = {"n": len(a), "pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
    if len(a) >= 3 and np.std(a) > 0 and np.std(b) > 0:
        pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
        res.update(pearson=float(pr[0]), pearson_p=float(pr[1]), spearman=float(sr[0]), spearman_p=float(sr[1]))
    return res


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of test accuracy per (kernel, method, state_dim)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("kernel", "s4d"), row["method"], row["state_dim"]), []).append(row)
    table = []
    for (kernel, method, n), rs in groups.items():
        acc = np.array([r["test_accuracy"] for r in rs], dtype=float)
        rising = [r.get("still_rising") for r in rs if r.get("still_rising") is not None]
        table.append({"kernel": kernel, "method": method, "state_dim": n, "seeds": len(rs),
                      "retrained": rs[0]["retrained"],
                      "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                      "ssm_params": int(np.mean([r["ssm_params"] for r in rs])),
                      "params": int(np.mean([r["params"] for r in rs])),
                      "state_dims": rs[0]["state_dims"],
                      "rising": f"{sum(rising)}/{len(rising)}" if rising else "n/a",
                      "epochs_mean": float(np.mean([r["epochs"] for r in rs])) if rs[0].get("epochs") else None})
    order = {m: i for i, m in enumerate(_ORIGINALS + RANKED_METHODS
                                        + EXTRA_METHODS)}
    table.sort(key=lambda t: (t["kernel"], -t["state_dim"], order.get(t["method"], 99)))
    return table


def _same_size(a: dict, b: dict, adaptive: bool = False) -> bool:
    """Equal SSM and total parameter counts, and equal state dims layer by layer (adaptive: in total)."""
    dims = (sum(a["state_dims"]) == sum(b["state_dims"])) if adaptive else a["state_dims"] == b["state_dims"]
    return a["ssm_params"] == b["ssm_params"] and a["params"] == b["params"] and dims


def comparisons(rows: list[dict]) -> list[dict]:
    """Every method against ``legs`` and ``legs-budget`` at the same kernel and rank, paired by seed; a method
    with a control matched to its schedule (``MATCHED_CONTROLS``: ``in-training`` and ``legs-schedule``) also
    against that control, which is not itself compared with ``legs`` and ``legs-budget`` (it adds no test to
    their Holm families)."""
    by = {}
    for r in rows:
        by.setdefault((r.get("kernel", "s4d"), r["method"], r["state_dim"]), {})[r["seed"]] = r
    out = []
    matched = set(MATCHED_CONTROLS.values())
    for (kernel, method, n), seeds in sorted(by.items()):
        if method in _ORIGINALS:
            continue
        refs = (() if method in matched else REFERENCES) + ((MATCHED_CONTROLS[method],)
                                                            if method in MATCHED_CONTROLS else ())
        for ref in refs:
            if method == ref or (kernel, ref, n) not in by:
                continue
            other = by[(kernel, ref, n)]
            common = sorted(set(seeds) & set(other))
            if not common:
                continue
            a = [seeds[s]["test_accuracy"] for s in common]
            b = [other[s]["test_accuracy"] for s in common]
            same_size = all(_same_size(seeds[s], other[s], adaptive=method.replace("-noretrain", "") in ADAPTIVE)
                            for s in common)
            out.append({"kernel": kernel, "method": method, "reference": ref, "state_dim": n, "same_size": same_size,
                        **paired_comparison(a, b)})
    return add_holm(out)


def holm(pvalues) -> list:
    """Holm-Bonferroni adjusted p-values of one family of tests, in the given order (None stays None).

    Sorted ascending, the i-th smallest of m p-values (i from 0) becomes ``max over j <= i of
    min(1, (m - j) p_(j))``; rejecting where the adjusted p < alpha keeps the family-wise error rate at
    alpha for any dependence between the tests."""
    ps = list(pvalues)
    for p in ps:
        if p is not None and not (isinstance(p, (int, float)) and 0 <= p <= 1):
            raise ValueError(f"p-values must be numbers in [0, 1] or None, got {p!r}.")
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    m, out, running = len(idx), [None] * len(ps), 0.0
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (m - k) * ps[i]))
        out[i] = running
    return out


def add_holm(comps: list[dict]) -> list[dict]:
    """Add Holm-adjusted p-values to each comparison, over two families of tests in one report:

    * ``holm_p_ranks`` (family size ``family_ranks``): one method against one reference at every rank, the
      family of "method X beats the reference at rank r" for the ranks run;
    * ``holm_p`` (family size ``family``): every method and rank against that reference (per kernel), the
      stricter family of everything the report tested against it."""
    for key, pk, nk in ((lambda c: (c["kernel"], c["reference"], c["method"]), "holm_p_ranks", "family_ranks"),
                        (lambda c: (c["kernel"], c["reference"]), "holm_p", "family")):
        fams = {}
        for c in comps:
            fams.setdefault(key(c), []).append(c)
        for fam in fams.values():
            for c, h in zip(fam, holm([c["t_p"] for c in fam])):
                c[pk], c[nk] = h, sum(x["t_p"] is not None for x in fam)
    return comps


def parent_losses(rows: list[dict]) -> list[dict]:
    """Every compressed method against its own parent (the N model it was reduced from), paired by seed.

    The parent is ``original`` (``original-hankel`` for the ``hankel-bt`` methods).  A negative mean is the
    accuracy that compression cost; a significantly positive one after main training needs an explanation
    (more training, an unconverged parent), which is what ``original-continued`` provides.
    """
    by = {}
    for r in rows:
        by.setdefault((r.get("kernel", "s4d"), r["method"], r["state_dim"]), {})[r["seed"]] = r
    parents = {}
    for r in rows:
        if r["method"] in ("original", "original-hankel"):
            parents.setdefault((r.get("kernel", "s4d"), r["method"]), {})[r["seed"]] = r
    out = []
    for (kernel, method, n), seeds in sorted(by.items()):
        if method not in _COMPRESSED:
            continue
        parent = parent_of(method)
        other = parents.get((kernel, parent), {})
        common = sorted(set(seeds) & set(other))
        if not common:
            continue
        a = [seeds[s]["test_accuracy"] for s in common]
        b = [other[s]["test_accuracy"] for s in common]
        out.append({"kernel": kernel, "method": method, "parent": parent, "state_dim": n,
                    "parent_mean": float(np.mean(b)), **paired_comparison(a, b)})
    return out


def rank_matrix(table: list[dict], comps: list[dict], kernel: str, reference: str = "legs-budget") -> str:
    """Methods by rank: mean test accuracy, and the paired difference against ``reference`` with its t-test p."""
    ranks = sorted({t["state_dim"] for t in table if t["kernel"] == kernel and t["method"] not in _ORIGINALS},
                   reverse=True)
    if not ranks:
        return ""
    cell = {(t["method"], t["state_dim"]): t for t in table if t["kernel"] == kernel}
    comp = {(c["method"], c["state_dim"]): c for c in comps if c["kernel"] == kernel and c["reference"] == reference}
    methods = [m for m in dict.fromkeys(t["method"] for t in table if t["kernel"] == kernel)
               if m not in _ORIGINALS]
    lines = ["| method | " + " | ".join(f"r = {r}" for r in ranks) + " |", "|---|" + "---|" * len(ranks)]
    for m in methods:
        cells = []
        for r in ranks:
            t = cell.get((m, r))
            if t is None:
                cells.append("-")
                continue
            txt = f"{100 * t['mean']:.2f} %"
            c = comp.get((m, r))
            if c is not None and c["t_p"] is not None:
                txt += f" ({100 * c['mean_diff']:+.2f}, p = {_fmt_p(c['t_p'])})"
            cells.append(txt)
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def correlations(rows: list[dict]) -> list[dict]:
    """Parent (original, or original-hankel for hankel-bt) against compressed accuracy over seeds, per kernel,
    compressed method and rank."""
    orig = {(r.get("kernel", "s4d"), r["method"], r["seed"]): r["test_accuracy"] for r in rows
            if r["method"] in ("original", "original-hankel")}
    groups: dict[tuple, list[tuple]] = {}
    for r in rows:
        parent = parent_of(r["method"])
        key = (r.get("kernel", "s4d"), parent, r["seed"])
        if r["method"] in _COMPRESSED and key in orig:
            groups.setdefault((key[0], r["method"], r["state_dim"]), []).append((orig[key], r["test_accuracy"]))
    out = []
    for (kernel, method, n), pairs in sorted(groups.items()):
        a, b = np.array(pairs, dtype=float).T
        out.append({"kernel": kernel, "method": method, "state_dim": n, **correlation(a, b)})
    return out


def majority_rate(data) -> float | None:
    """Test accuracy of always predicting the most frequent training class (None for regression)."""
    if data is None or data.task != "classification":
        return None
    _, y_tr, _ = data.split("train")
    _, y_te, _ = data.split("test")
    top = np.bincount(np.asarray(y_tr)).argmax()
    return float(np.mean(np.asarray(y_te) == top))


# ----------------------------------------------------------------------------- report

def _label(method: str) -> str:
    return LABELS.get(method, method)


def _fmt_p(p) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def markdown_table(table: list[dict]) -> str:
    lines = ["| kernel | state dim | method | seeds | test accuracy (mean ± std) | SSM params | params | epochs (mean) | still rising |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for t in table:
        ep = "-" if t["epochs_mean"] is None else f"{t['epochs_mean']:.1f}"
        lines.append(f"| {t['kernel']} | {t['state_dim']} | {_label(t['method'])} | {t['seeds']} | "
                     f"{100 * t['mean']:.2f} ± {100 * t['std']:.2f} % | {t['ssm_params']} | {t['params']} | {ep} | {t['rising']} |")
    return "\n".join(lines)


def comparison_table(comps: list[dict]) -> str:
    lines = ["| r | method | against | n | mean diff (points) | 95 % CI | paired t p | Holm p, ranks | Holm p, all "
             "| Wilcoxon p | wins/losses | equal size |",
             "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for c in sorted(comps, key=lambda c: (-c["state_dim"], c["reference"], c["method"])):
        ci = "n/a" if c["ci_low"] is None else f"[{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"
        lines.append(f"| {c['state_dim']} | {_label(c['method'])} | {_label(c['reference'])} | {c['n']} | "
                     f"{100 * c['mean_diff']:+.2f} | {ci} | {_fmt_p(c['t_p'])} | {_fmt_p(c.get('holm_p_ranks'))} | "
                     f"{_fmt_p(c.get('holm_p'))} | "
                     f"{_fmt_p(c['wilcoxon_p'])} | "
                     f"{c['wins']}/{c['losses']} | {'yes' if c['same_size'] else 'NO'} |")
    return "\n".join(lines)


def verdicts(comps: list[dict], alpha: float = 0.05) -> list[str]:
    """One plain sentence per (method, reference, r): beats / does not beat / is beaten by, with p."""
    out = []
    for c in sorted(comps, key=lambda c: (c["kernel"], -c["state_dim"], c["reference"], c["method"])):
        if c["t_p"] is None:
            continue
        sig = c["t_p"] < alpha
        if sig and c["mean_diff"] > 0:
            word = "beats"
        elif sig and c["mean_diff"] < 0:
            word = "is beaten by"
        else:
            word = "does not beat" if c["mean_diff"] <= 0 else "is not significantly better than"
        holm_note = ""
        if sig and c.get("holm_p") is not None:
            kept = lambda q: "holds" if q < alpha else "does not hold"
            holm_note = (f"; Holm over its {c['family_ranks']} ranks: {kept(c['holm_p_ranks'])}, "
                         f"p = {_fmt_p(c['holm_p_ranks'])}; over all {c['family']} comparisons against this "
                         f"reference: {kept(c['holm_p'])}, p = {_fmt_p(c['holm_p'])}")
        out.append(f"- {c['kernel']}, r = {c['state_dim']}: {_label(c['method'])} {word} {_label(c['reference'])} "
                   f"({100 * c['mean_diff']:+.2f} points, paired t p = {_fmt_p(c['t_p'])}, "
                   f"Wilcoxon p = {_fmt_p(c['wilcoxon_p'])}, n = {c['n']}{holm_note}).")
    return out


def _plot_accuracy_vs_params(kernel, table, path, data_name):
    import matplotlib.pyplot as plt

    rows = [t for t in table if t["kernel"] == kernel]
    methods = list(dict.fromkeys(t["method"] for t in rows))
    beside = len(methods) > 6         # then the legend goes beside the axes, not over the points
    fig, ax = plt.subplots(figsize=(10.5 if beside else 7, 4.5))
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10").colors     # one colour per method up to 20
    for i, method in enumerate(methods):
        ts = sorted([t for t in rows if t["method"] == method], key=lambda t: t["ssm_params"])
        style = dict(marker="o", capsize=3, label=_label(method), color=colors[i % len(colors)])
        if method.endswith("noretrain"):
            style.update(ls="--", marker="x")
        spread = 1 + 0.025 * (i - (len(methods) - 1) / 2)          # side by side at equal size, for legibility
        ax.errorbar([t["ssm_params"] * spread for t in ts], [100 * t["mean"] for t in ts],
                    yerr=[100 * t["std"] for t in ts], **style)
    ax.set_xscale("log")
    ax.set_xlabel("SSM parameters (all SSM layers; methods of equal size drawn side by side)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(f"{data_name}, {kernel}: accuracy against SSM parameter count")
    ax.legend(fontsize=7, **(dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0) if beside else {}))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_hsv(comp_json: Path, ranks, path):
    import matplotlib.pyplot as plt

    rep = ckpt.read_json(comp_json)
    fig, ax = plt.subplots(figsize=(6, 4))
    for lay in rep["layers"]:
        h = np.array(lay["hsv"])
        h = h / np.maximum(h[:, :1], 1e-300)
        med = np.median(h, 0)
        k = np.arange(1, h.shape[1] + 1)
        line, = ax.semilogy(k, med, label=f"layer {lay['layer']}")
        ax.fill_between(k, np.quantile(h, 0.1, 0), np.quantile(h, 0.9, 0), color=line.get_color(), alpha=0.15)
    for rr in ranks:
        ax.axvline(rr, color="grey", lw=0.5, ls=":")
    ax.set_ylim(1e-14, 2)
    ax.set_xlabel("index k")
    ax.set_ylabel("sigma_k / sigma_1 (median, 10-90%)")
    ax.set_title("Hankel singular value decay (pre-trained model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_correlation(kernel, rows, path):
    import matplotlib.pyplot as plt

    orig = {r["seed"]: r["test_accuracy"] for r in rows if r["method"] == "original" and r.get("kernel", "s4d") == kernel}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, method in zip(axes, ("bt-noretrain", "bt")):
        for n in sorted({r["state_dim"] for r in rows if r["method"] == method}, reverse=True):
            pts = [(orig[r["seed"]], r["test_accuracy"]) for r in rows if r["method"] == method
                   and r.get("kernel", "s4d") == kernel and r["state_dim"] == n and r["seed"] in orig]
            if pts:
                a, b = np.array(pts).T
                ax.scatter(100 * a, 100 * b, label=f"r={n}")
        ax.set_xlabel("original test accuracy (%)")
        ax.set_ylabel("compressed test accuracy (%)")
        ax.set_title(_label(method))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine() -> str:
    import os
    dev = "CPU"
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, {dev}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def write_report(cfg: ExperimentConfig, out: Path, rows: list[dict], data=None, wall_s: float | None = None,
                 missing: list[str] | None = None, included: dict | None = None,
                 rechecked: list[dict] | None = None) -> None:
    """Write ``report.md``, ``summary.json`` and the figures from ``rows`` (the content of results.json);
    ``missing``: selected sub-runs that are not finished (a report-only invocation), listed in the report;
    ``included``: rows taken from each earlier results.json; ``rechecked``: sub-runs both here and in those files
    (see :func:`run_experiment`)."""
    import matplotlib
    matplotlib.use("Agg")

    out = Path(out)
    table = summarize(rows)
    comps = comparisons(rows)
    corr = correlations(rows)
    losses = parent_losses(rows)
    major = majority_rate(data)
    main_epochs = cfg.main_epochs or cfg.epochs
    patience = cfg.train.get("patience", 0)
    used, unknown = set(), 0
    for r in rows:
        if r["retrained"]:
            continue
        summ = Path(r.get("run") or "") / "summary.json"
        if "reductions" in r:
            used.update(tuple(red) for red in r["reductions"])
        elif r.get("run") and summ.is_file():
            used.update(tuple(red) for red in _reductions(ckpt.read_json(summ)))
        else:             # an included row made before rows recorded their reductions, its folder gone
            unknown += 1
    used_txt = "; ".join(f"{m}: horizon {'infinite' if h is None else h}, refit {f}"
                         for m, h, f in sorted(used, key=str)) or "none"
    if unknown:
        used_txt += f" (not recorded for {unknown} included row{'s' if unknown != 1 else ''})"
    lines = [f"# Compression of `{cfg.data}`: balanced truncation against equal-size controls", "",
             f"- N = {cfg.state_dim} pre-trained from Skew-HiPPO (cap {cfg.epochs} epochs); ranks {cfg.ranks}; "
             f"main training and baselines cap {main_epochs} epochs; `legs-budget` cap {cfg.epochs + main_epochs}; "
             f"early stopping patience {patience or 'off'}; seeds {cfg.seeds}.",
             f"- Model: {json.dumps(cfg.model)}; training: {json.dumps(cfg.train)}; reduction horizon "
             f"{cfg.horizon!r}, refit {cfg.refit if cfg.refit is not None else 'default'}"
             + (f"; Hankel penalty of `hankel-bt`: weight {cfg.hankel_reg}, "
                f"{'all values (nuclear norm)' if cfg.hankel_order is None else f'beyond order {cfg.hankel_order}'}"
                f"{' as a share of all of them' if cfg.hankel_relative else ''}, "
                f"{'finite-horizon (sequence length) Gramians, ' if cfg.hankel_horizon == 'finite' else ''}"
                f"channel sample {cfg.hankel_sample}"
                + (f", best epoch chosen by validation accuracy after BT to order {cfg.hankel_select_rank}"
                   if cfg.hankel_select_rank else "") if any(m.startswith("hankel-") for m in cfg.methods) else "")
             + ".",
             f"- Reductions as run (from the compressed runs): {used_txt}.",
             f"- Machine: {_machine()}." + (f" Wall time of this invocation: {wall_s / 60:.1f} min." if wall_s else "")
             + f" Training time of all sub-runs: {sum(r.get('wall_s') or 0 for r in rows) / 60:.1f} min.",
             f"- Majority-class test accuracy: {'n/a' if major is None else f'{100 * major:.2f} %'}.",
             *([f"- Report only: {len(missing)} selected sub-run{'s are' if len(missing) > 1 else ' is'} not "
                f"finished; the rows that need {'them' if len(missing) > 1 else 'it'} are left out: "
                + ", ".join(f"`{m}`" for m in missing[:12]) + (", ..." if len(missing) > 12 else "") + "."]
               if missing else []),
             *_included_lines(included, rechecked),
             "", "Every compressed model stores exactly r/2 modes per channel: the same state dims and parameter "
             "count as the fresh size-r baselines (the `equal size` column checks it seed by seed). "
             "\"still rising\": runs whose best validation accuracy fell in the last 20 % (at least 2) of their "
             "epochs without an early stop, i.e. not converged.", ""]
    for kernel in cfg.kernels:
        kt = [t for t in table if t["kernel"] == kernel]
        if not kt:
            continue
        lines += [f"## Kernel `{kernel}`", "", "### Test accuracy", "", markdown_table(kt), ""]
        flags = []
        for t in kt:
            if t["method"] == "original" and major is not None and t["mean"] < major + 0.05:
                flags.append(f"- WARNING: the original model ({100 * t['mean']:.2f} %) is within 5 points of the "
                             f"majority-class rate ({100 * major:.2f} %); its comparisons are noise.")
            if t["rising"] not in ("n/a",) and not t["rising"].startswith("0/"):
                flags.append(f"- {_label(t['method'])} at {t['state_dim']}: {t['rising']} runs still rising at the end (not converged).")
        if flags:
            lines += ["### Convergence", ""] + flags + [""]
        else:
            lines += ["### Convergence", "", "No run was still rising at its end.", ""]
        kc = [c for c in comps if c["kernel"] == kernel]
        lines += ["### Methods by rank", "",
                  f"Mean test accuracy; in brackets the paired difference against {_label('legs-budget')} (points) "
                  "and its paired t-test p.", "", rank_matrix(table, comps, kernel), ""]
        kp = [c for c in losses if c["kernel"] == kernel]
        if kp:
            lines += ["### Compressed against its own parent (method − parent, per seed)", "",
                      "| r | method | parent (mean) | n | mean diff (points) | 95 % CI | paired t p | wins/losses |",
                      "|---:|---|---|---:|---:|---|---:|---:|"]
            for c in sorted(kp, key=lambda c: (-c["state_dim"], c["method"])):
                ci = "n/a" if c["ci_low"] is None else f"[{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"
                lines.append(f"| {c['state_dim']} | {_label(c['method'])} | {_label(c['parent'])} "
                             f"({100 * c['parent_mean']:.2f} %) | {c['n']} | {100 * c['mean_diff']:+.2f} | {ci} | "
                             f"{_fmt_p(c['t_p'])} | {c['wins']}/{c['losses']} |")
            lines += ["", "Without retraining this is the accuracy compression costs. After main training a positive "
                      "difference is more training, not compression: compare with "
                      f"{_label('original-continued')}.", ""]
        lines += ["### Paired comparisons (method − reference, per seed)", "", comparison_table(kc), "",
                  "A method wins when the paired difference is positive with p < 0.05. With n = 5 seeds the exact "
                  "two-sided Wilcoxon signed-rank p cannot fall below 0.0625 (n = 6: 0.031), so it confirms only "
                  "with more seeds; the paired t-test assumes roughly normal differences. Holm p: the t-test p "
                  "adjusted by Holm-Bonferroni, which bounds the chance of any false win in a family at 0.05; "
                  "'ranks': the family of one method against one reference at every rank, 'all': every method and "
                  "rank against that reference in this section.", ""] \
            + verdicts(kc) + [""]
        kr = [c for c in corr if c["kernel"] == kernel]
        if kr:
            lines += ["### Correlation of original and compressed accuracy over seeds", "",
                      "| r | method | n | Pearson (p) | Spearman (p) |", "|---:|---|---:|---|---|"]
            f = lambda v, p: "n/a" if v is None else f"{v:.3f} ({_fmt_p(p)})"
            for c in kr:
                lines.append(f"| {c['state_dim']} | {_label(c['method'])} | {c['n']} | {f(c['pearson'], c['pearson_p'])} | "
                             f"{f(c['spearman'], c['spearman_p'])} |")
            if any(c["n"] < 8 for c in kr):
                lines += ["", "n < 8: these correlations and their p-values rest on very few seeds."]
            lines.append("")
        fig = f"accuracy_vs_params_{kernel}.png"
        _plot_accuracy_vs_params(kernel, table, out / fig, cfg.data)
        lines += ["### Figures", "", f"![accuracy against SSM parameters]({fig})", ""]
        seed0 = cfg.seeds[0]
        r_show = sorted(cfg.ranks)[len(cfg.ranks) // 2]
        comp_json = out / kernel / f"seed{seed0}" / f"r{r_show}" / "bt-compressed" / "compression.json"
        if comp_json.is_file():
            _plot_hsv(comp_json, cfg.ranks, out / f"hsv_decay_{kernel}.png")
            _plot_responses(out / kernel / f"seed{seed0}" / "original", comp_json.parent,
                            out / f"responses_{kernel}.png", r_show)
            _plot_correlation(kernel, rows, out / f"correlation_{kernel}.png")
            lines += [f"![Hankel singular value decay](hsv_decay_{kernel}.png)", "",
                      f"![impulse and frequency responses before and after BT to r={r_show}](responses_{kernel}.png)", "",
                      f"![original against compressed accuracy](correlation_{kernel}.png)", ""]
    ckpt.write_text(out / "report.md", "\n".join(lines))
    ckpt.write_json(out / "summary.json", {"table": table, "comparisons": comps, "correlations": corr, "parent_losses": losses,
                                           "majority_rate": major, "wall_s": wall_s,
                                           **({"missing": list(missing)} if missing else {}),
                                           **({"included": included, "rechecked": rechecked} if included else {})})


def _included_lines(included: dict | None, rechecked: list[dict] | None) -> list[str]:
    """The report's lines on rows taken from earlier results files and on sub-runs made again."""
    if not included:
        return []
    lines = [f"- {n} row{'s' if n != 1 else ''} from the earlier results `{path}` (same settings; sub-runs this "
             "folder does not hold)." for path, n in included.items()]
    if rechecked:
        same = sum(c["same"] for c in rechecked)
        differ = [c for c in rechecked if not c["same"]]
        lines.append(f"- {len(rechecked)} sub-run{'s' if len(rechecked) != 1 else ''} both in this folder and in "
                     f"those results (made again here): {same} with the same test accuracy"
                     + (", differing: " + ", ".join(f"`{c['sub_run']}` ({100 * c['here']:.2f} % here, "
                                                    f"{100 * c['included']:.2f} % there)" for c in differ)
                        if differ else "") + "; the report uses the ones made here.")
    return lines


def _plot_responses(pre: Path, comp: Path, path: Path, rank: int, channels: int = 3) -> None:
    import matplotlib.pyplot as plt

    from .compress import layer_system

    big, _ = ckpt.load_model(pre)
    small, _ = ckpt.load_model(comp)
    L = big.config.get("l_max") or 256
    fig, axes = plt.subplots(2, channels, figsize=(4 * channels, 6))
    sys_b, sys_s = layer_system(big.ssm_layers()[0]), layer_system(small.ssm_layers()[0])
    omega = np.linspace(0, np.pi, 512)
    for c in range(min(channels, sys_b.batch_shape[0])):
        axes[0, c].plot(sys_b[c].kernel(L), label=f"N={sys_b.order}")
        axes[0, c].plot(sys_s[c].kernel(L), "--", label=f"r={rank}")
        axes[0, c].set_title(f"layer 0, channel {c}: impulse response")
        axes[0, c].set_xlabel("step l")
        axes[1, c].semilogy(omega, np.abs(sys_b[c].freqresp(omega)), label=f"N={sys_b.order}")
        axes[1, c].semilogy(omega, np.abs(sys_s[c].freqresp(omega)), "--", label=f"r={rank}")
        axes[1, c].set_xlabel("frequency (rad/sample)")
        axes[1, c].set_title("|G(e^{i omega})|")
        axes[0, c].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
