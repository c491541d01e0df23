"""Accuracy without retraining for every reduction setting, on the original models of experiment folders.

For each experiment folder given, each kernel and seed: the pre-trained original model is
compressed to every rank with every (method, horizon, refit) setting and evaluated on the
test split, without any retraining.  Prints one table per data set (mean ± std over seeds)
and paired comparisons of each setting against the default, and writes ``no_retrain.json``
into each folder.  This is the measurement behind ``compress.DEFAULT_HORIZON`` and
``compress.DEFAULT_REFIT``.

    python benchmarks/no_retrain_settings.py runs/digits runs/mnist1d --ranks 32,16,8
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from ssmcompress import checkpoint as ckpt
from ssmcompress.compress import DEFAULT_HORIZON, DEFAULT_REFIT, compress_model
from ssmcompress.data import load_dataset
from ssmcompress.experiment import paired_comparison
from ssmcompress.train import evaluate

SETTINGS = [(m, h, f) for m in ("bt", "modal") for h in ("infinite", "finite") for f in (False, True)
            if not (m == "modal" and h == "finite")]          # modal truncation has no Gramians


def measure(folder: Path, ranks) -> list[dict]:
    cfg = ckpt.read_json(folder / "experiment.json")
    data = load_dataset(cfg["data"], **cfg.get("data_options", {}))
    x, y, lengths = data.split("test")
    rows = []
    for kernel_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for seed_dir in sorted(kernel_dir.glob("seed*")):
            pre = seed_dir / "original"
            if not (pre / "summary.json").is_file():
                continue
            model, _ = ckpt.load_model(pre)
            base = evaluate(model, x, y, lengths, task=data.task)["accuracy"]
            for r, (method, horizon, refit) in itertools.product(ranks, SETTINGS):
                small, rep = compress_model(model, method=method, rank=r, horizon=horizon, refit=refit)
                acc = evaluate(small, x, y, lengths, task=data.task)["accuracy"]
                kerr = float(np.mean([np.mean(l.kernel_rel_error) for l in rep.layers]))
                rows.append({"data": cfg["data"], "kernel": kernel_dir.name, "seed": seed_dir.name, "rank": r,
                             "method": method, "horizon": horizon, "refit": refit, "original": base,
                             "accuracy": acc, "kernel_rel_error": kerr})
                print(json.dumps(rows[-1]), file=sys.stderr)
    ckpt.write_json(folder / "no_retrain.json", rows)
    return rows


def table(rows) -> str:
    out = []
    default = ("bt", DEFAULT_HORIZON, DEFAULT_REFIT)
    for (data, kernel), grp in itertools.groupby(sorted(rows, key=lambda r: (r["data"], r["kernel"])),
                                                 key=lambda r: (r["data"], r["kernel"])):
        grp = list(grp)
        orig = np.array(sorted({(r["seed"], r["original"]) for r in grp}))[:, 1].astype(float)
        out += [f"\n{data}, {kernel}: original {100 * orig.mean():.2f} ± {100 * orig.std(ddof=1) if len(orig) > 1 else 0:.2f} % "
                f"({len(orig)} seeds)",
                "| r | method | horizon | refit | accuracy (mean ± std) | kernel rel. error | vs default: diff, t p, Wilcoxon p |",
                "|---:|---|---|---|---|---:|---|"]
        for r in sorted({g["rank"] for g in grp}, reverse=True):
            ref = {g["seed"]: g["accuracy"] for g in grp if g["rank"] == r and (g["method"], g["horizon"], g["refit"]) == default}
            for s in SETTINGS:
                sel = [g for g in grp if g["rank"] == r and (g["method"], g["horizon"], g["refit"]) == s]
                if not sel:
                    continue
                acc = np.array([g["accuracy"] for g in sel])
                common = [g["seed"] for g in sel if g["seed"] in ref]
                cmp = "default" if s == default else "n/a"
                if s != default and len(common) >= 2:
                    c = paired_comparison([g["accuracy"] for g in sel if g["seed"] in ref], [ref[k] for k in common])
                    cmp = f"{100 * c['mean_diff']:+.2f}, {c['t_p']:.2g}, {c['wilcoxon_p']:.2g} (n={c['n']})"
                out.append(f"| {r} | {s[0]} | {s[1]} | {s[2]} | {100 * acc.mean():.2f} ± "
                           f"{100 * acc.std(ddof=1) if len(acc) > 1 else 0:.2f} % | "
                           f"{np.mean([g['kernel_rel_error'] for g in sel]):.3f} | {cmp} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="experiment folders (with experiment.json)")
    p.add_argument("--ranks", default="32,16,8", help="ranks to measure (default 32,16,8)")
    args = p.parse_args()
    ranks = [int(v) for v in args.ranks.split(",")]
    rows = []
    for folder in args.folders:
        rows += measure(folder, ranks)
    print(table(rows))


if __name__ == "__main__":
    main()
