"""The paper's protocol end to end, and its report.

For every seed: pre-train at state size N from Skew-HiPPO (``legs``); for every rank r:
balanced truncation of every layer, evaluation without retraining, main training from
the reduced parameters; baselines of state size r trained from Skew-HiPPO and from
S4D-Lin for the same number of epochs.  Every sub-run is a run folder under ``out``;
a finished one (``summary.json``) is skipped on a rerun and an interrupted one resumes.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .compress import compress_run
from .train import TrainConfig, train

BASELINES = ("legs", "lin")


@dataclass
class ExperimentConfig:
    data: str = "smnist"
    data_options: dict = field(default_factory=dict)
    state_dim: int = 64
    ranks: list = field(default_factory=lambda: [32, 16, 8])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    epochs: int = 5                 # pre-training epochs
    main_epochs: int | None = None  # main training and baselines (default: epochs)
    model: dict = field(default_factory=dict)   # SequenceModel keyword arguments (d_model, layers, kernel, ...)
    train: dict = field(default_factory=dict)   # TrainConfig keyword arguments (lr, batch_size, ...)
    baselines: list = field(default_factory=lambda: list(BASELINES))

    def __post_init__(self):
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
        for b in self.baselines:
            if b not in ("legs", "lin", "inv", "real", "random"):
                raise ValueError(f"baseline init {b!r} is unknown; choose from legs, lin, inv, real, random.")


def _job_list(cfg: ExperimentConfig) -> list[tuple]:
    jobs = []
    for s in cfg.seeds:
        jobs.append(("pretrain", s, None))
        for r in cfg.ranks:
            jobs.append(("compress", s, r))
            jobs.append(("main", s, r))
            for b in cfg.baselines:
                jobs.append((b, s, r))
    return jobs


def _train_run(folder: Path, model_kwargs: dict, tcfg: TrainConfig, data, run_config: dict,
               init_from: Path | None = None) -> dict:
    """Train one sub-run unless it is finished; resume it when it was interrupted."""
    from .nn import SequenceModel

    if (folder / "summary.json").is_file():
        return ckpt.read_json(folder / "summary.json")
    resume = (folder / ckpt.STATE).is_file()
    if folder.exists() and not resume:
        shutil.rmtree(folder)          # started but no epoch finished: start again
    torch.manual_seed(tcfg.seed)
    if init_from is not None:
        model, _ = ckpt.load_model(init_from)
    else:
        model = SequenceModel(**model_kwargs)
    return train(model, data, tcfg, folder, run_config=run_config, resume=resume, progress=False)


def _row(method, state_dim, seed, retrained, summary, run: Path, rank=None) -> dict:
    model, _ = ckpt.load_model(run)
    info = {**model.parameter_counts(), "state_dims": model.state_dims}
    return {"method": method, "state_dim": state_dim, "rank": rank, "seed": seed, "retrained": retrained,
            "test_accuracy": summary.get("test_accuracy"), "val_accuracy": summary.get("best_val_accuracy"),
            "ssm_params": info["ssm_params"], "params": info["params"], "state_dims": info["state_dims"],
            "run": str(run)}


def run_experiment(cfg: ExperimentConfig, out, progress: bool = True) -> list[dict]:
    """Run (or finish) the whole protocol under ``out`` and write results.json and report.md."""
    from tqdm.auto import tqdm

    from .data import load_dataset

    out = Path(out)
    data = load_dataset(cfg.data, **cfg.data_options)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.write_json(out / "experiment.json", asdict(cfg))
    main_epochs = cfg.main_epochs or cfg.epochs
    base_model = dict(d_input=data.d_input if data.d_input is not None else 1,
                      d_output=data.n_classes if data.task == "classification" else 1,
                      task=data.task, l_max=data.seq_len, vocab_size=data.vocab_size)
    base_model.update(cfg.model)
    run_cfg = {"data": {"spec": cfg.data, "options": cfg.data_options}}
    rows: list[dict] = []
    jobs = _job_list(cfg)
    bar = tqdm(jobs, desc="experiment", disable=not progress, dynamic_ncols=True)
    for kind, seed, r in bar:
        bar.set_postfix_str(f"seed {seed} {kind}" + ("" if r is None else f" r={r}"))
        seed_dir = out / f"seed{seed}"
        pre = seed_dir / "pretrain"
        if kind == "pretrain":
            tcfg = TrainConfig(**{**cfg.train, "epochs": cfg.epochs, "seed": seed})
            summ = _train_run(pre, {**base_model, "state_dim": cfg.state_dim, "init": "legs"}, tcfg, data, run_cfg)
            rows.append(_row("original", cfg.state_dim, seed, True, summ, pre))
        elif kind == "compress":
            comp = seed_dir / f"bt_r{r}" / "compressed"
            if (comp / "summary.json").is_file():
                summ = ckpt.read_json(comp / "summary.json")
            else:
                shutil.rmtree(comp, ignore_errors=True)
                summ = compress_run(pre, comp, rank=r, data=data)
            rows.append(_row("bt", r, seed, False, summ, comp, rank=r))
        elif kind == "main":
            comp = seed_dir / f"bt_r{r}" / "compressed"
            tcfg = TrainConfig(**{**cfg.train, "epochs": main_epochs, "seed": seed})
            folder = seed_dir / f"bt_r{r}" / "main"
            summ = _train_run(folder, {}, tcfg, data, {**run_cfg, "init_from": str(comp)}, init_from=comp)
            rows.append(_row("bt", r, seed, True, summ, folder, rank=r))
        else:
            tcfg = TrainConfig(**{**cfg.train, "epochs": main_epochs, "seed": seed})
            folder = seed_dir / f"{kind}_r{r}"
            summ = _train_run(folder, {**base_model, "state_dim": r, "init": kind}, tcfg, data, run_cfg)
            rows.append(_row(kind, r, seed, True, summ, folder, rank=r))
        ckpt.write_json(out / "results.json", rows)
    bar.close()
    write_report(cfg, out, rows, data)
    return rows


# ----------------------------------------------------------------------------- report

def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of test accuracy per (method, retrained, state_dim)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["retrained"], row["state_dim"]), []).append(row)
    table = []
    for (method, retrained, n), rs in groups.items():
        acc = np.array([r["test_accuracy"] for r in rs], dtype=float)
        table.append({"method": method, "retrained": retrained, "state_dim": n, "seeds": len(rs),
                      "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                      "ssm_params": int(np.mean([r["ssm_params"] for r in rs])),
                      "params": int(np.mean([r["params"] for r in rs]))})
    order = {"original": 0, "bt": 1}
    table.sort(key=lambda t: (-t["state_dim"], order.get(t["method"], 2), t["method"], t["retrained"]))
    return table


def _label(t) -> str:
    if t["method"] == "original":
        return "original (Skew-HiPPO, N)"
    if t["method"] == "bt":
        return "BT, main training" if t["retrained"] else "BT, no retraining"
    return {"legs": "Skew-HiPPO init", "lin": "S4D-Lin init"}.get(t["method"], f"{t['method']} init")


def markdown_table(table: list[dict]) -> str:
    lines = ["| state dim | method | seeds | test accuracy (mean ± std) | SSM params | params |",
             "|---:|---|---:|---|---:|---:|"]
    for t in table:
        lines.append(f"| {t['state_dim']} | {_label(t)} | {t['seeds']} | {100 * t['mean']:.2f} ± {100 * t['std']:.2f} % "
                     f"| {t['ssm_params']} | {t['params']} |")
    return "\n".join(lines)


def _correlations(rows: list[dict]) -> list[dict]:
    from scipy import stats

    orig = {r["seed"]: r["test_accuracy"] for r in rows if r["method"] == "original"}
    out = []
    for retrained in (False, True):
        by_rank: dict[int, list[tuple]] = {}
        for r in rows:
            if r["method"] == "bt" and r["retrained"] == retrained and r["seed"] in orig:
                by_rank.setdefault(r["state_dim"], []).append((orig[r["seed"]], r["test_accuracy"]))
        for rank, pairs in sorted(by_rank.items(), reverse=True):
            a, b = np.array(pairs, dtype=float).T
            res = {"rank": rank, "retrained": retrained, "n": len(a), "pearson": None, "spearman": None}
            if len(a) >= 3 and np.std(a) > 0 and np.std(b) > 0:
                res["pearson"] = float(stats.pearsonr(a, b)[0])
                res["spearman"] = float(stats.spearmanr(a, b)[0])
            out.append(res)
    return out


def write_report(cfg: ExperimentConfig, out: Path, rows: list[dict], data=None) -> None:
    """Write ``report.md`` and its figures from ``rows`` (the content of results.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    table = summarize(rows)
    corr = _correlations(rows)
    figs = []

    # accuracy against r per method
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(t["method"], t["retrained"]) for t in table if t["method"] != "original"}):
        ts = sorted([t for t in table if (t["method"], t["retrained"]) == key], key=lambda t: t["state_dim"])
        ax.errorbar([t["state_dim"] for t in ts], [100 * t["mean"] for t in ts], yerr=[100 * t["std"] for t in ts],
                    marker="o", capsize=3, label=_label(ts[0]))
    for t in table:
        if t["method"] == "original":
            ax.axhline(100 * t["mean"], color="k", ls="--", lw=1, label=f"original N={t['state_dim']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(cfg.ranks))
    ax.set_xticklabels([str(r) for r in sorted(cfg.ranks)])
    ax.minorticks_off()
    ax.set_xlabel("state dimension r")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg.data}: accuracy against state dimension")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_rank.png", dpi=120)
    plt.close(fig)
    figs.append(("Accuracy against r", "accuracy_vs_rank.png"))

    # Hankel singular values per layer, and responses before / after reduction (first seed)
    seed0 = cfg.seeds[0]
    pre = out / f"seed{seed0}" / "pretrain"
    r_show = sorted(cfg.ranks)[len(cfg.ranks) // 2]
    comp_json = out / f"seed{seed0}" / f"bt_r{r_show}" / "compressed" / "compression.json"
    if comp_json.is_file():
        rep = ckpt.read_json(comp_json)
        fig, ax = plt.subplots(figsize=(6, 4))
        for lay in rep["layers"]:
            h = np.array(lay["hsv"])
            h = h / np.maximum(h[:, :1], 1e-300)
            med = np.median(h, 0)
            k = np.arange(1, h.shape[1] + 1)
            line, = ax.semilogy(k, med, label=f"layer {lay['layer']}")
            ax.fill_between(k, np.quantile(h, 0.1, 0), np.quantile(h, 0.9, 0), color=line.get_color(), alpha=0.15)
        for rr in cfg.ranks:
            ax.axvline(rr, color="grey", lw=0.5, ls=":")
        ax.set_ylim(1e-14, 2)
        ax.set_xlabel("index k")
        ax.set_ylabel("sigma_k / sigma_1 (median, 10-90%)")
        ax.set_title("Hankel singular value decay (pre-trained model)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "hsv_decay.png", dpi=120)
        plt.close(fig)
        figs.append(("Hankel singular value decay per layer", "hsv_decay.png"))
        _plot_responses(pre, comp_json.parent, out / "responses.png", r_show)
        figs.append((f"Impulse and frequency responses before and after reduction to r={r_show}", "responses.png"))

    # original accuracy against compressed accuracy over seeds
    orig = {r["seed"]: r["test_accuracy"] for r in rows if r["method"] == "original"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, retrained in zip(axes, (False, True)):
        for rank in sorted(cfg.ranks, reverse=True):
            pts = [(orig[r["seed"]], r["test_accuracy"]) for r in rows
                   if r["method"] == "bt" and r["retrained"] == retrained and r["state_dim"] == rank and r["seed"] in orig]
            if pts:
                a, b = np.array(pts).T
                ax.scatter(100 * a, 100 * b, label=f"r={rank}")
        ax.set_xlabel("original test accuracy (%)")
        ax.set_ylabel("compressed test accuracy (%)")
        ax.set_title("after main training" if retrained else "without retraining")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "correlation.png", dpi=120)
    plt.close(fig)
    figs.append(("Original against compressed accuracy over seeds", "correlation.png"))

    lines = [f"# Balanced-truncation compression on `{cfg.data}`", "",
             f"N = {cfg.state_dim} pre-trained from Skew-HiPPO for {cfg.epochs} epochs; ranks {cfg.ranks}; "
             f"main training and baselines for {cfg.main_epochs or cfg.epochs} epochs; seeds {cfg.seeds}.",
             f"Model: {json.dumps(cfg.model)}; training: {json.dumps(cfg.train)}.", "",
             "## Test accuracy", "", markdown_table(table), "",
             "BT models store conjugate pairs and real eigenvalues as separate modes, so a layer's stored state "
             "dimension can exceed r by the number of real eigenvalues (see `state_dims` in results.json); "
             "the parameter columns count what is stored.", "",
             "## Correlation of original and compressed accuracy over seeds", "",
             "| r | retrained | seeds | Pearson | Spearman |", "|---:|---|---:|---:|---:|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    for c in corr:
        lines.append(f"| {c['rank']} | {c['retrained']} | {c['n']} | {fmt(c['pearson'])} | {fmt(c['spearman'])} |")
    lines += ["", "(n/a: fewer than 3 seeds or no spread.)", "", "## Figures", ""]
    for title, name in figs:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    ckpt.write_text(out / "report.md", "\n".join(lines))
    ckpt.write_json(out / "summary.json", {"table": table, "correlations": corr})


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
