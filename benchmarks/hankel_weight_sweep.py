"""How much accuracy Hankel-regularised pre-training keeps after compression without retraining, per weight.

For each seed and each (weight, order) of the penalty, an N model is trained on the data set with
``--hankel-reg weight --hankel-order order`` (weight 0: no penalty), with early stopping on validation;
then every rank is reached with every reduction method, without retraining.  Prints one table (mean ±
std over seeds of validation and test accuracy, before and after compression) and paired comparisons
of each compressed setting against the unregularised original model of the same seed, and writes
``hankel_sweep.json`` into ``--out``.  Choose a weight by the *validation* column; the test column is
for the report.

    python benchmarks/hankel_weight_sweep.py --data mnist1d --weights 0,0.01,0.1 --orders 8 \\
        --seeds 0,1 --ranks 8 --out runs/hankel_sweep_mnist1d

Models: the same shape as ``experiment`` (``--d-model``, ``--layers``, ``--state-dim``, kernel s4d);
sub-runs go to ``OUT/w{weight}_o{order}/seed{s}`` (``..._rel`` with ``--relative``, ``..._fin`` with
``--hankel-horizon finite``, ``..._sel{r}`` with ``--select-rank r``) and are reused when finished with the same settings (a folder trained otherwise, e.g.
with another ``--sample``, is refused in one sentence).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ssmcompress import checkpoint as ckpt
from ssmcompress.compress import compress_model
from ssmcompress.data import load_dataset
from ssmcompress.experiment import check_run_settings, paired_comparison
from ssmcompress.nn import SequenceModel
from ssmcompress.train import TrainConfig, evaluate, train


def _floats(text):
    return [float(v) for v in text.split(",")]


def _ints(text):
    return [int(v) for v in text.split(",")]


def _horizons(text):
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(n not in ("auto", "finite") for n in names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of auto and finite")
    return list(dict.fromkeys(names))


def _orders(text):
    return [None if v in ("none", "all") else int(v) for v in text.split(",")]


def pretrain(args, data, weight, order, seed, horizon="auto") -> Path:
    penalised = weight > 0          # weight 0: the unregularised original, shared by every setting
    relative = args.relative and penalised
    select = args.select_rank if penalised else None
    horizon = horizon if penalised else "auto"
    folder = (Path(args.out) / (f"w{weight:g}_o{order if order is not None else 'all'}{'_rel' if relative else ''}"
                                f"{'_fin' if horizon == 'finite' else ''}{f'_sel{select}' if select else ''}")
              / f"seed{seed}")
    cfg = TrainConfig(epochs=args.epochs, patience=args.patience, seed=seed, hankel_reg=weight,
                      hankel_order=order if penalised else None, hankel_sample=args.sample if penalised else 1.0,
                      hankel_relative=relative, hankel_horizon=horizon, select_rank=select)
    torch.manual_seed(seed)
    model = SequenceModel(**data.model_shape(), d_model=args.d_model, layers=args.layers, state_dim=args.state_dim,
                          kernel=args.kernel, init="legs")
    # a folder trained with other settings (e.g. --sample, --state-dim) is not reused
    check_run_settings(folder, cfg, {k: model.config[k] for k in ("d_model", "layers", "state_dim", "kernel", "init")})
    if (folder / "summary.json").is_file():
        return folder
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    train(model, data, cfg, folder, run_config={"data": {"spec": args.data, "options": {}}, "init_from": None},
          progress=False)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist1d")
    p.add_argument("--weights", type=_floats, default=[0.0, 0.01, 0.1])
    p.add_argument("--orders", type=_orders, default=[8], help="comma list of real orders, or 'all' (nuclear norm)")
    p.add_argument("--sample", type=float, default=1.0, help="train --hankel-sample of the penalty")
    p.add_argument("--relative", action="store_true",
                   help="train --hankel-relative: the tail as a share of all Hankel singular values (needs orders)")
    p.add_argument("--hankel-horizon", type=_horizons, default=["auto"], metavar="auto|finite[,...]",
                   help="train --hankel-horizon of the penalised models, a comma list: infinite-horizon Gramians for "
                        "stable layers (auto) or over the sequence length (finite), the Gramians `compress` reduces "
                        "with (default auto)")
    p.add_argument("--select-rank", type=int, default=None, metavar="r",
                   help="train the penalised models with --select-rank r: the best epoch and the early stop by the "
                        "validation accuracy of the model reduced to order r (bt, no retraining)")
    p.add_argument("--seeds", type=_ints, default=[0, 1])
    p.add_argument("--ranks", type=_ints, default=[8])
    p.add_argument("--methods", default="bt,modal-hinf")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--state-dim", type=int, default=64)
    p.add_argument("--kernel", default="s4d")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    data = load_dataset(args.data)
    splits = {s: data.split(s) for s in ("val", "test")}
    settings = [(0.0, None, "auto")] + [(w, o, h) for w, o, h in itertools.product(args.weights, args.orders,
                                                                                    args.hankel_horizon) if w > 0]
    rows = []
    for seed, (weight, order, horizon) in itertools.product(args.seeds, settings):
        try:
            run = pretrain(args, data, weight, order, seed, horizon)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        model, _ = ckpt.load_model(run)
        acc = {s: evaluate(model, *splits[s], task=data.task)["accuracy"] for s in splits}
        summary = ckpt.read_json(run / "summary.json")
        trained = ckpt.read_run_config(run)["train"]                                    # as the run was trained
        relative, select = trained.get("hankel_relative", False), trained.get("select_rank")
        horizon = trained.get("hankel_horizon", "auto")
        for r, method in itertools.product(args.ranks, args.methods.split(",")):
            small, _ = compress_model(model, method=method, rank=r)
            comp = {s: evaluate(small, *splits[s], task=data.task)["accuracy"] for s in splits}
            rows.append({"seed": seed, "weight": weight, "order": order, "relative": relative, "select_rank": select,
                         "hankel_horizon": horizon,
                         "rank": r, "method": method,
                         "epochs": summary["epochs"], "stopped_early": summary.get("stopped_early", False),
                         "val": acc["val"], "test": acc["test"],
                         "val_compressed": comp["val"], "test_compressed": comp["test"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ckpt.write_json(Path(args.out) / "hankel_sweep.json", rows)
    print(report(rows, args))
    return 0


def _diff(a, b) -> str:
    """Paired difference a - b in points with its paired t p and n."""
    pc = paired_comparison(a, b)
    p = "n/a" if pc["t_p"] is None else f"{pc['t_p']:.2g}"
    return f"{100 * pc['mean_diff']:+.2f} ({p}, n = {pc['n']})"


def report(rows, args) -> str:
    f = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0:.2f}"
    lines = [f"Hankel-regularised pre-training on `{args.data}` (N = {args.state_dim}, d_model {args.d_model}, "
             f"{args.layers} layers, cap {args.epochs} epochs, patience {args.patience}, penalty sample "
             f"{args.sample}), seeds {args.seeds}; compression without retraining. 'stopped early': pre-training "
             "runs that stopped because validation accuracy stopped rising (the others reached the cap).", "",
             "| weight | order | rank | method | stopped early | val | test | val compressed | test compressed | "
             "test compressed − its own parent (points, paired t p) | "
             "test compressed − unregularised original (points, paired t p) |",
             "|---:|---|---:|---|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r["test"] for r in rows if r["weight"] == 0}
    keyf = lambda r: (r["weight"], str(r["order"]), bool(r.get("relative")), r.get("hankel_horizon", "auto"),
                      r.get("select_rank") or 0, -r["rank"], r["method"])
    for key, grp in itertools.groupby(sorted(rows, key=keyf), key=keyf):
        grp = list(grp)
        comp = [g["test_compressed"] for g in grp]
        early = sum(bool(g.get("stopped_early")) for g in grp)
        order = "-" if grp[0]["weight"] == 0 else ("all" if grp[0]["order"] is None else grp[0]["order"])
        order = f"{order} (share)" if grp[0].get("relative") else order
        order = f"{order}, finite horizon" if grp[0].get("hankel_horizon") == "finite" else order
        order = f"{order}, chosen at r = {grp[0]['select_rank']}" if grp[0].get("select_rank") else order
        lines.append(f"| {grp[0]['weight']:g} | {order} | {grp[0]['rank']} | {grp[0]['method']} | {early}/{len(grp)} | "
                     f"{f([g['val'] for g in grp])} | {f([g['test'] for g in grp])} | "
                     f"{f([g['val_compressed'] for g in grp])} | {f(comp)} | "
                     f"{_diff(comp, [g['test'] for g in grp])} | {_diff(comp, [base[g['seed']] for g in grp])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
