"""Hankel-penalised fine-tuning: can the penalty be added after pre-training, instead of from the start?

An experiment's ``hankel-bt`` pre-trains a second N-state model with the Hankel penalty from scratch.  This
script instead continues each seed's converged ``original`` with the penalty, under the same settings and cap
as the experiment's ``original-continued`` (``--main-epochs``, the same patience and optimiser): the two
differ only in the penalty.  It then reduces the fine-tuned model to every rank with every method *without
retraining*, and compares, paired over seeds:

- each compressed model with its own fine-tuned parent, with the ``original`` (the target of issue 9: within
  1 point at r = N/8) and with ``original-continued`` (the N model with the same training budget);
- the fine-tuned parent with ``original`` and ``original-continued`` (what the penalty costs).

The compressed models have r states and the references N: these comparisons measure what compression
without retraining loses, on purpose; they are not equal-size comparisons of initialisations.

    python benchmarks/hankel_finetune.py runs/smnist_c60 --weight 1 --order 8 --sample 0.25 \\
        --ranks 8,16 --methods bt,h2 --out runs/smnist_hft

``--select-rank r`` keeps the epoch whose model reduced to r scores best on validation (early stopping on the
full model's score keeps an epoch before the penalty has acted), and ``--hankel-horizon finite`` takes the
penalty's Gramians over the sequence length, as BT's.

Fine-tuning runs go to ``OUT/wWEIGHT[_eE][_fin][_selR]/seedS`` (a run made before by ``ssmcompress train --init-from
RUN/KERNEL/seedS/original --hankel-reg ...`` with the same settings is reused; other settings are refused).
Writes ``hankel_finetune.json`` and ``hankel_finetune.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from ssmcompress import checkpoint as ckpt
from ssmcompress.compress import compress_model
from ssmcompress.data import load_dataset
from ssmcompress.experiment import _train_run, check_run_settings, paired_comparison
from ssmcompress.train import TrainConfig, evaluate, load_last_weights


def finetune_config(exp: dict, seed: int, weight: float, order: int | None, sample: float,
                    fixed_epochs: int | None = None, select_rank: int | None = None,
                    horizon: str = "auto") -> TrainConfig:
    """``original-continued``'s TrainConfig for ``seed`` of the experiment settings ``exp``, plus the penalty
    (its Gramians over ``horizon``, as ``train --hankel-horizon``); with ``fixed_epochs``: that many epochs
    without early stopping instead (the last epoch's model is used); with ``select_rank``: the kept epoch (and
    the stop) chosen by the validation accuracy of the model reduced by BT to that order, as
    ``train --select-rank``."""
    if not weight > 0:
        raise ValueError(f"weight={weight!r} is invalid; expected a positive penalty weight (weight 0 is the "
                         "experiment's original-continued, already trained).")
    if fixed_epochs is not None and (isinstance(fixed_epochs, bool) or not isinstance(fixed_epochs, int)
                                     or fixed_epochs < 1):
        raise ValueError(f"fixed_epochs={fixed_epochs!r} is invalid; expected a positive integer or None.")
    if fixed_epochs is not None and select_rank is not None:
        raise ValueError(f"fixed_epochs={fixed_epochs} and select_rank={select_rank} were both given; expected at "
                         "most one rule for the kept epoch (the last one, or the best reduced model's).")
    epochs = fixed_epochs or exp.get("main_epochs") or exp["epochs"]
    return TrainConfig(**{**exp["train"], "epochs": epochs, "seed": seed, "hankel_reg": weight,
                          "hankel_order": order, "hankel_sample": sample, "hankel_horizon": horizon,
                          "select_rank": select_rank, **({"patience": 0} if fixed_epochs else {})})


def run_name(weight: float, fixed_epochs: int | None = None, select_rank: int | None = None,
             horizon: str = "auto") -> str:
    """The fine-tuning runs' folder under ``--out``, one per weight, epoch rule and horizon (a folder holding a run
    of another order or channel share is refused by ``check_run_settings``)."""
    return (f"w{weight:g}" + (f"_e{fixed_epochs}" if fixed_epochs else "")
            + ("_fin" if horizon == "finite" else "") + (f"_sel{select_rank}" if select_rank else ""))


def finetuned_model(run_dir: Path, fixed_epochs: int | None):
    """The fine-tuned model: the best-by-validation checkpoint (by the reduced model's with ``select_rank``), or
    with ``fixed_epochs`` the last epoch's."""
    model, _ = ckpt.load_model(run_dir)
    if fixed_epochs:
        load_last_weights(run_dir, model)
    return model


def run(folder: Path, out: Path, weight: float, order: int | None, sample: float, ranks, methods,
        kernel: str = "s4d", seeds=None, fixed_epochs: int | None = None, select_rank: int | None = None,
        horizon: str = "auto") -> list[dict]:
    folder, out = Path(folder), Path(out)
    if not (folder / "experiment.json").is_file():
        raise FileNotFoundError(f"{folder} holds no experiment.json; expected an `ssmcompress experiment` folder.")
    exp = ckpt.read_json(folder / "experiment.json")
    if select_rank is not None and (isinstance(select_rank, bool) or not isinstance(select_rank, int)
                                    or select_rank < 2 or select_rank % 2 or select_rank >= exp["state_dim"]):
        raise ValueError(f"select_rank={select_rank!r} is invalid; expected an even real order in [2, "
                         f"{exp['state_dim'] - 2}] (below the experiment's N = {exp['state_dim']}).")
    if select_rank is not None and (exp.get("horizon", "auto") != "auto" or exp.get("refit") is not None):
        raise ValueError(f"select_rank chooses the epoch by BT with compress's defaults, but {folder} reduces with "
                         f"horizon {exp.get('horizon')!r} and refit {exp.get('refit')!r}; the kept epoch would be "
                         "chosen on another reduction than the one reported: leave --select-rank out.")
    if horizon == "finite" and exp.get("horizon", "auto") not in ("auto", "finite"):
        raise ValueError(f"hankel_horizon 'finite' penalises the values of the sequence-length Gramians, but "
                         f"{folder} reduces with horizon {exp.get('horizon')!r}; expected an experiment whose "
                         "reductions use the sequence length ('auto' or 'finite').")
    data = load_dataset(exp["data"], **exp.get("data_options", {}))
    splits = {s: data.split(s) for s in ("val", "test")}
    rows = []
    for seed_dir in sorted((folder / kernel).glob("seed*"), key=lambda p: int(p.name[4:])):
        seed = int(seed_dir.name[4:])
        if seeds is not None and seed not in seeds:
            continue
        need = [seed_dir / "original", seed_dir / "original-continued"]
        if any(not (p / "summary.json").is_file() for p in need):
            print(f"seed {seed}: original or original-continued unfinished, skipped", file=sys.stderr)
            continue
        tcfg = finetune_config(exp, seed, weight, order, sample, fixed_epochs, select_rank, horizon)
        run_dir = out / run_name(weight, fixed_epochs, select_rank, horizon) / f"seed{seed}"
        pre = seed_dir / "original"
        check_run_settings(run_dir, tcfg, init_from=pre)
        summ = _train_run(run_dir, lambda: ckpt.load_model(pre)[0], tcfg, data,
                          {"data": {"spec": exp["data"], "options": exp.get("data_options", {})},
                           "init_from": str(pre.resolve())})
        model = finetuned_model(run_dir, fixed_epochs)
        acc = {s: evaluate(model, *splits[s], task=data.task)["accuracy"] for s in splits}
        refs = {name: ckpt.read_json(seed_dir / name / "summary.json")["test_accuracy"]
                for name in ("original", "original-continued")}
        for r, method in itertools.product(ranks, methods):
            small, _ = compress_model(model, method=method, rank=r, horizon=exp.get("horizon", "auto"),
                                      refit=exp.get("refit"))
            comp = {s: evaluate(small, *splits[s], task=data.task)["accuracy"] for s in splits}
            rows.append({"seed": seed, "weight": weight, "order": order, "sample": sample, "rank": r,
                         "fixed_epochs": fixed_epochs, "select_rank": select_rank, "hankel_horizon": horizon,
                         "best_epoch": summ.get("best_epoch"),
                         "method": method, "epochs": summ["epochs"], "stopped_early": summ.get("stopped_early"),
                         "state_dims": list(small.state_dims),
                         "parameters": sum(t.numel() for t in small.parameters()),
                         "val": acc["val"], "test": acc["test"], "val_compressed": comp["val"],
                         "test_compressed": comp["test"], "original": refs["original"],
                         "original_continued": refs["original-continued"]})
            print(f"seed {seed} r={r} {method}: parent {100 * acc['test']:.1f} %, compressed "
                  f"{100 * comp['test']:.1f} %", file=sys.stderr, flush=True)
    if not rows:
        raise FileNotFoundError(f"{folder}/{kernel} has no seed with finished original and original-continued.")
    ckpt.write_json(out / "hankel_finetune.json", rows)
    (out / "hankel_finetune.md").write_text(report(rows, folder, kernel) + "\n")
    return rows


def _diff(a, b) -> str:
    pc = paired_comparison(a, b)
    p = "n/a" if pc["t_p"] is None else f"{pc['t_p']:.2g}"
    return f"{100 * pc['mean_diff']:+.2f} ({p})"


def report(rows, folder, kernel) -> str:
    f = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0:.2f}"
    first = {r["seed"]: r for r in rows}          # one row per seed for the parent's own numbers
    par = sorted(first.values(), key=lambda r: r["seed"])
    w = rows[0]
    lines = [f"# Hankel-penalised fine-tuning of `{folder}` ({kernel}), then compression without retraining", "",
             f"Penalty weight {w['weight']:g} on the Hankel singular values beyond order {w['order']} "
             + ("(Gramians over the sequence length), " if w.get("hankel_horizon") == "finite" else
                "(auto: infinite-horizon Gramians for stable layers), ")
             + f"{w['sample']:g} of the channels per step; seeds {[r['seed'] for r in par]}; fine-tuning epochs "
             f"{[r['epochs'] for r in par]} "
             + (f"(fixed, no early stopping; the last epoch's model). " if w.get("fixed_epochs") else
                f"(stopped on validation: {sum(bool(r['stopped_early']) for r in par)}/{len(par)}; the epoch kept "
                + (f"is the one whose model reduced by BT to order {w['select_rank']} scored best on validation, "
                   f"epochs {[r.get('best_epoch') for r in par]}). " if w.get("select_rank") else
                   "is the best validation epoch's). "))
             + "Differences are paired over seeds, in points, with the paired t-test p.", "",
             "| N models | test | minus original | minus original trained on (`original-continued`) |",
             "|---|---|---|---|",
             f"| original | {f([r['original'] for r in par])} | - | "
             f"{_diff([r['original'] for r in par], [r['original_continued'] for r in par])} |",
             f"| original trained on | {f([r['original_continued'] for r in par])} | - | - |",
             f"| fine-tuned with the penalty | {f([r['test'] for r in par])} | "
             f"{_diff([r['test'] for r in par], [r['original'] for r in par])} | "
             f"{_diff([r['test'] for r in par], [r['original_continued'] for r in par])} |", "",
             "| rank | method | val compressed | test compressed | minus its fine-tuned parent | minus original | "
             "minus original trained on | seeds within 1 point of the original |",
             "|---:|---|---|---|---|---|---|---|"]
    keyf = lambda r: (-r["rank"], r["method"])
    for (negr, method), grp in itertools.groupby(sorted(rows, key=keyf), key=keyf):
        g = sorted(grp, key=lambda r: r["seed"])
        comp = [r["test_compressed"] for r in g]
        within = sum(c >= r["original"] - 0.01 - 1e-9 for c, r in zip(comp, g))
        lines.append(f"| {-negr} | {method} | {f([r['val_compressed'] for r in g])} | {f(comp)} | "
                     f"{_diff(comp, [r['test'] for r in g])} | {_diff(comp, [r['original'] for r in g])} | "
                     f"{_diff(comp, [r['original_continued'] for r in g])} | {within}/{len(g)} |")
    lines += ["", "Per seed, test accuracy (%): original / fine-tuned parent / compressed by each rank and method:", ""]
    for seed in sorted(first):
        g = sorted((r for r in rows if r["seed"] == seed), key=keyf)
        lines.append(f"- seed {seed}: {100 * g[0]['original']:.1f} / {100 * g[0]['test']:.1f} / "
                     + ", ".join(f"r = {r['rank']} {r['method']} {100 * r['test_compressed']:.1f}" for r in g))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="an `ssmcompress experiment` folder with finished original and original-continued")
    p.add_argument("--weight", type=float, required=True, help="penalty weight (train --hankel-reg)")
    p.add_argument("--order", type=int, default=None, help="penalise beyond this real order (default: all values)")
    p.add_argument("--sample", type=float, default=1.0, help="fraction of channels per step (train --hankel-sample)")
    p.add_argument("--ranks", default="8", help="comma list of real orders (default 8)")
    p.add_argument("--methods", default="bt", help="comma list of reductions (default bt)")
    p.add_argument("--kernel", default="s4d")
    p.add_argument("--seeds", default=None, help="comma list (default: every seed of the folder)")
    p.add_argument("--fixed-epochs", type=int, default=None, metavar="E",
                   help="fine-tune exactly E epochs without early stopping and use the last epoch's model (default: "
                        "original-continued's cap and patience, the best validation epoch's model)")
    p.add_argument("--select-rank", type=int, default=None, metavar="r",
                   help="keep (and stop on) the epoch whose model reduced by BT to real order r scores best on "
                        "validation, as `train --select-rank` (default: the full model's score)")
    p.add_argument("--hankel-horizon", choices=("auto", "finite"), default="auto",
                   help="Gramians of the penalty, as `train --hankel-horizon` (default auto)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        seeds = None if a.seeds is None else [int(s) for s in a.seeds.split(",")]
        ranks = [int(r) for r in a.ranks.split(",")]
        rows = run(Path(a.folder), Path(a.out), a.weight, a.order, a.sample, ranks, a.methods.split(","),
                   a.kernel, seeds, a.fixed_epochs, a.select_rank, a.hankel_horizon)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    print(report(rows, a.folder, a.kernel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
