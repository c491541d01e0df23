"""Schedule control for in-training reduction: is its gain over the parent trained on a gain from the
reductions, or from its training schedule?

An experiment's ``in-training`` run trains a fresh N-state model for ``epochs + main_epochs`` epochs (one
warmup + cosine schedule over all of them), reduces it after the epochs of
:func:`ssmcompress.experiment.in_training_epochs`, and lets early stopping act only after the last reduction.
The parent it is compared with (``original``, then ``original-continued``) instead stops on validation with
the learning rate still high and restarts its schedule.  So the two differ in the schedule as well as in the
reductions.  This script trains, per seed, the control that differs only in the reductions: the same N-state
model from Skew-HiPPO (same seed, same initial weights), the same settings and cap, early stopping not
before the first epoch at which in-training can stop (the epoch after its last reduction plus the patience,
``train --min-epochs``), and no reduction.  It then compares,
paired over seeds, every ``in-training`` rank, ``original`` and ``original-continued`` with that control.

The control has N states and the in-training models r: this is a diagnostic of where a gain comes from, not
an equal-size comparison of methods.

    python benchmarks/schedule_control.py runs/mnist1d_c40 --out runs/intr_ctrl

Writes ``schedule_control.json`` and ``schedule_control.md`` into ``--out`` (the control runs go under
``--out/KERNEL/seedS``; a rerun skips finished runs and resumes interrupted ones).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssmcompress import checkpoint as ckpt
from ssmcompress.data import load_dataset
from ssmcompress.experiment import (_train_run, check_run_settings, holm, in_training_schedule,
                                    paired_comparison)
from ssmcompress.nn import SequenceModel
from ssmcompress.train import TrainConfig


def control_config(exp: dict, seed: int) -> TrainConfig:
    """The in-training run's TrainConfig for ``seed`` of the experiment settings ``exp``, without reductions:
    the same cap and schedule, early stopping from the first epoch at which in-training can stop on."""
    main_epochs = exp.get("main_epochs") or exp["epochs"]
    train = dict(exp["train"])
    if not train.get("patience"):
        raise ValueError("the experiment trains without early stopping (patience 0), so its in-training run and "
                         "the parent have the same schedule rule; there is nothing for this control to separate.")
    return in_training_schedule(train, exp["epochs"], main_epochs, seed)


def run(folder: Path, out: Path, kernel: str = "s4d", seeds=None) -> list[dict]:
    exp = ckpt.read_json(folder / "experiment.json")
    data = load_dataset(exp["data"], **exp.get("data_options", {}))
    base = {**data.model_shape(), **exp["model"], "kernel": kernel, "state_dim": exp["state_dim"], "init": "legs"}
    ranks = list(exp["ranks"])
    # the model as the experiment's in-training run builds it (SequenceModel's config adds l_max etc.)
    model_cfg = SequenceModel(**base).config
    rows = []
    for seed_dir in sorted((folder / kernel).glob("seed*"), key=lambda p: int(p.name[4:])):
        seed = int(seed_dir.name[4:])
        if seeds is not None and seed not in seeds:
            continue
        need = [seed_dir / "original", seed_dir / "original-continued"] + [seed_dir / f"r{r}" / "in-training"
                                                                            for r in ranks]
        missing = [p for p in need if not (p / "summary.json").is_file()]
        if missing:
            print(f"seed {seed}: skipped, unfinished runs {[str(p) for p in missing]}", file=sys.stderr)
            continue
        tcfg = control_config(exp, seed)
        run_dir = out / kernel / f"seed{seed}"
        check_run_settings(run_dir, tcfg, model_cfg)
        summ = _train_run(run_dir, lambda: SequenceModel(**base), tcfg, data,
                          {"data": {"spec": exp["data"], "options": exp.get("data_options", {})}, "init_from": None})
        read = lambda p: ckpt.read_json(p / "summary.json")
        row = {"seed": seed, "control_test": summ["test_accuracy"], "control_epochs": summ.get("epochs"),
               "control_best_epoch": summ.get("best_epoch"),
               "original_test": read(seed_dir / "original")["test_accuracy"],
               "continued_test": read(seed_dir / "original-continued")["test_accuracy"]}
        for r in ranks:
            s = read(seed_dir / f"r{r}" / "in-training")
            row[f"in_training_r{r}_test"], row[f"in_training_r{r}_epochs"] = s["test_accuracy"], s.get("epochs")
        rows.append(row)
    return rows


def report(rows: list[dict], ranks, folder, kernel: str, min_epochs: int, cap: int, state_dim: int) -> str:
    """Markdown: means, and each run minus the control paired over seeds (t and Wilcoxon p, Holm over the
    in-training ranks)."""
    if not rows:
        raise ValueError("no seed has every run finished; nothing to report.")
    pct = lambda key: [100 * r[key] for r in rows]
    ctrl = pct("control_test")
    mean = lambda v: sum(v) / len(v)
    lines = [f"# Schedule control for in-training reduction: `{folder}`, kernel {kernel}", "",
             f"Control: N = {state_dim} from Skew-HiPPO per seed, cap {cap} epochs (warmup + cosine over all of them), early "
             f"stopping not before epoch {min_epochs} (the first epoch at which in-training can stop), no reduction. "
             f"Seeds {[r['seed'] for r in rows]}; control epochs {[r['control_epochs'] for r in rows]}, best epochs "
             f"{[r['control_best_epoch'] for r in rows]}. The control has N states: a diagnostic, not an equal-size "
             "comparison.", "",
             f"Control test accuracy: {mean(ctrl):.2f} % (n = {len(rows)}).", "",
             "| run minus the control | mean of run | diff (points) | 95 % CI | t p | Holm p, in-training ranks | "
             "Wilcoxon p | wins/losses | n |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    comps = [("original (pre-trained, N)", "original_test"), ("original trained on (N)", "continued_test")]
    comps += [(f"in-training, r = {r}", f"in_training_r{r}_test") for r in ranks]
    res = [(name, key, paired_comparison(pct(key), ctrl)) for name, key in comps]
    it = [c["t_p"] for name, key, c in res if key.startswith("in_training")]
    adj = iter(holm(it) if all(p is not None for p in it) else [None] * len(it))
    f = lambda p: "-" if p is None else f"{p:.2g}"
    for name, key, c in res:
        h = next(adj) if key.startswith("in_training") else None
        lines.append(f"| {name} | {mean(pct(key)):.2f} % | {c['mean_diff']:+.2f} | "
                     + ("-" if c["ci_low"] is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]")
                     + f" | {f(c['t_p'])} | {f(h)} | {f(c['wilcoxon_p'])} | {c['wins']}/{c['losses']} | {c['n']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="experiment folder (with experiment.json) that ran in-training")
    ap.add_argument("--kernel", default="s4d", help="kernel section of the experiment (default s4d)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: every finished seed)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the control runs and the report")
    a = ap.parse_args(argv)
    if not (a.folder / "experiment.json").is_file():
        ap.error(f"{a.folder} is not an experiment folder (no experiment.json).")
    exp = ckpt.read_json(a.folder / "experiment.json")
    if "in-training" not in exp.get("methods", []):
        ap.error(f"{a.folder} did not run the in-training method (methods: {', '.join(exp.get('methods', []))}).")
    seeds = None if a.seeds is None else {int(s) for s in a.seeds.split(",") if s}
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(a.folder, a.out, a.kernel, seeds)
        cfg = control_config(exp, 0)
        text = report(rows, exp["ranks"], a.folder, a.kernel, cfg.min_epochs, cfg.epochs, exp["state_dim"])
    except ValueError as exc:
        ap.error(str(exc))
    ckpt.write_json(a.out / "schedule_control.json", rows)
    ckpt.write_text(a.out / "schedule_control.md", text)
    print(text)


if __name__ == "__main__":
    main()
