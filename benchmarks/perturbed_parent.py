"""Perturbed-parent control: is a reduced model's gain over its parent a gain from the reduction, or from a
step away from the parent followed by more training?

For each seed of an experiment folder, the pre-trained N model (``original``) gets noise on its SSM
parameters.  The noise direction is one fixed draw per seed; its scale is set by bisection so that the
perturbed model's *validation* accuracy matches that of the reduced model without retraining
(``r{rank}/{method}-compressed``).  The perturbed model is then trained exactly like the experiment's main
training: its train settings, the ``main_epochs`` cap, patience, the same seed.  Paired over seeds, the
script compares three things that all start from the same parent and train under the same rules:

* the reduced model + main training (the experiment's ``{method}`` run, size r);
* the parent trained on (``original-continued``: no step away);
* the perturbed parent trained on (size N: a step away of the same size, measured by validation accuracy,
  without any reduction).

If the perturbed parent trained on gains as much over the parent trained on as the reduced model does, the
gain is not a gain from the reduction.  The perturbed model has N states, the reduced one r: this is a
diagnostic of a surprising result, not an equal-size comparison of methods.

    python benchmarks/perturbed_parent.py runs/mnist1d_dss_c40 --kernel dss-exp --rank 8 \\
        --variants C,ssm --out runs/mnist1d_dss_c40_perturbed

Writes ``perturbed.json`` and ``perturbed.md`` into ``--out`` (trained runs go under it too; a rerun skips
finished runs and resumes interrupted ones).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ssmcompress import checkpoint as ckpt
from ssmcompress.data import load_dataset
from ssmcompress.experiment import _train_run, paired_comparison
from ssmcompress.train import TrainConfig, evaluate

# which SSM parameters each noise variant perturbs (names as in SSMLayer: log_A_real, A_imag, C, log_dt, D)
VARIANTS = {
    "C": ("C",),                                  # the output coefficients only: the modes stay
    "ssm": ("log_A_real", "A_imag", "C"),         # modes and output coefficients
}
# not noise: the reduced model itself, embedded back into N states (its r/2 modes per channel, the other
# slots Skew-HiPPO modes with zero output, as compress fills free slots): the same function as the reduced
# model, so exactly the same step away from the parent, but trained with N states
EMBEDDED = "embedded"


def embed(reduced: torch.nn.Module, state_dim: int) -> torch.nn.Module:
    """The reduced model as a model of ``state_dim`` states per layer, with the same input-output map.

    Each layer keeps its stored modes, B, C and D; the extra slots get the modes and B of a fresh Skew-HiPPO
    layer of size ``state_dim`` (slots beyond the reduced ones) and C = 0."""
    from ssmcompress.compress import _free_slot_modes, layer_system, write_back
    from ssmcompress.lti import DiagonalSSM

    systems = []
    for layer in reduced.ssm_layers():
        sys_ = layer_system(layer)
        k, slots = sys_.n_modes, state_dim // 2
        if slots < k:
            raise ValueError(f"cannot embed a layer of {2 * k} states into {state_dim}; give a larger state_dim.")
        lam_f, B_f = _free_slot_modes(layer, slots, sys_.dt)
        systems.append(DiagonalSSM(np.concatenate([sys_.modes, lam_f[:, k:]], -1),
                                   np.concatenate([sys_.B, B_f[:, k:]], -1),
                                   np.concatenate([sys_.C, np.zeros((sys_.C.shape[0], slots - k), sys_.C.dtype)], -1),
                                   sys_.D, sys_.dt, "discrete"))
    return write_back(reduced, systems)


def perturb(model: torch.nn.Module, variant: str, sigma: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` whose SSM parameters named by ``variant`` get ``sigma * rms(p) * noise`` added.

    The noise is one fixed standard-normal draw per parameter, from ``seed`` (so that ``sigma`` alone sets the
    step along a fixed direction); rms is over the whole parameter tensor of that layer."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}.")
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(int(seed))
    names = VARIANTS[variant]
    with torch.no_grad():
        for name, p in out.named_parameters():        # fixed order: the same draw for every sigma
            if ".ssm." not in name or name.rsplit(".", 1)[-1] not in names:
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            rms = float(p.double().pow(2).mean().sqrt())
            p.add_((sigma * rms * noise).to(p.dtype))
    return out


def match_accuracy(model, variant: str, seed: int, target: float, x, y, lengths, task: str,
                   tol: float = 0.005, lo: float = 1e-4, hi: float = 10.0, steps: int = 30, base: float | None = None):
    """Bisection in log sigma for the perturbation whose validation accuracy is within ``tol`` of ``target``.

    Returns ``(sigma, accuracy, perturbed model)``; the closest one found when the tolerance is not reached."""
    acc = lambda m: evaluate(m, x, y, lengths, task=task)["accuracy"]
    base = acc(model) if base is None else base        # the caller may have measured the parent already
    if target >= base:
        return 0.0, base, perturb(model, variant, 0.0, seed)
    best = None
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        m = perturb(model, variant, mid, seed)
        a = acc(m)
        if best is None or abs(a - target) < abs(best[1] - target):
            best = (mid, a, m)
        if abs(a - target) <= tol:
            break
        if a > target:
            lo = mid
        else:
            hi = mid
    return best


def run(folder: Path, kernel: str, rank: int, method: str, variants, out: Path, seeds=None) -> list[dict]:
    cfg = ckpt.read_json(folder / "experiment.json")
    data = load_dataset(cfg["data"], **cfg.get("data_options", {}))
    xv, yv, lv = data.split("val")
    xt, yt, lt = data.split("test")
    main_epochs = cfg.get("main_epochs") or cfg["epochs"]
    rows = []
    seed_dirs = sorted((folder / kernel).glob("seed*"), key=lambda p: int(p.name[4:]))
    for seed_dir in seed_dirs:
        seed = int(seed_dir.name[4:])
        if seeds is not None and seed not in seeds:
            continue
        pre, cont = seed_dir / "original", seed_dir / "original-continued"
        comp, main = seed_dir / f"r{rank}" / f"{method}-compressed", seed_dir / f"r{rank}" / method
        missing = [p for p in (pre, cont, comp, main) if not (p / "summary.json").is_file()]
        if missing:
            print(f"seed {seed}: skipped, unfinished runs {[str(p) for p in missing]}", file=sys.stderr)
            continue
        parent, _ = ckpt.load_model(pre)
        reduced, _ = ckpt.load_model(comp)
        target = evaluate(reduced, xv, yv, lv, task=data.task)["accuracy"]
        parent_val = evaluate(parent, xv, yv, lv, task=data.task)["accuracy"]
        row = {"seed": seed, "parent_val": parent_val,
               "parent_test": ckpt.read_json(pre / "summary.json")["test_accuracy"],
               "reduced_val": target,
               "reduced_test": evaluate(reduced, xt, yt, lt, task=data.task)["accuracy"],
               "reduced_main_test": ckpt.read_json(main / "summary.json")["test_accuracy"],
               "reduced_main_epochs": ckpt.read_json(main / "summary.json").get("epochs"),
               "continued_test": ckpt.read_json(cont / "summary.json")["test_accuracy"],
               "continued_epochs": ckpt.read_json(cont / "summary.json").get("epochs")}
        for variant in variants:
            if variant == EMBEDDED:
                start = embed(reduced, max(parent.state_dims))
                sigma, val = None, evaluate(start, xv, yv, lv, task=data.task)["accuracy"]
            else:
                sigma, val, start = match_accuracy(parent, variant, seed, target, xv, yv, lv, data.task,
                                                   base=parent_val)
            start_test = evaluate(start, xt, yt, lt, task=data.task)["accuracy"]   # before training moves it
            run_dir = out / kernel / f"seed{seed}" / f"r{rank}" / f"perturbed-{variant}"
            tcfg = TrainConfig(**{**cfg["train"], "epochs": main_epochs, "seed": seed})
            summ = _train_run(run_dir, lambda: start, tcfg, data,
                              {"data": {"spec": cfg["data"], "options": cfg.get("data_options", {})},
                               "init_from": str(pre), "perturbed": {"variant": variant, "sigma": sigma}})
            row[variant] = {"sigma": sigma, "start_val": val,
                            "start_test": start_test,
                            "trained_test": summ["test_accuracy"], "epochs": summ.get("epochs"),
                            "best_epoch": summ.get("best_epoch")}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def report(rows, kernel, rank, method, variants, folder) -> str:
    pct = lambda v: f"{100 * v:.2f}"
    lines = [f"# Perturbed-parent control: {kernel}, {method} at r = {rank}, from `{folder}`", "",
             "Per seed, test accuracy (%). The perturbation's scale matches the reduced model's validation "
             "accuracy without retraining; every trained model uses the experiment's main-training settings.", ""]
    head = ["seed", "parent", f"{method} r={rank}, no retraining", f"{method} + main", "parent trained on"]
    for v in variants:
        head += [f"perturbed ({v}), start", f"perturbed ({v}) trained on", f"sigma ({v})"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["seed"]), pct(r["parent_test"]), pct(r["reduced_test"]), pct(r["reduced_main_test"]),
                 pct(r["continued_test"])]
        for v in variants:
            cells += [pct(r[v]["start_test"]), pct(r[v]["trained_test"]),
                      "n/a" if r[v]["sigma"] is None else f"{r[v]['sigma']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (points), over seeds:", "",
              "| comparison | mean diff | 95 % CI | t p | Wilcoxon p | n | wins / losses |", "|---|---|---|---|---|---|---|"]

    def add(name, a, b):
        c = paired_comparison(a, b)
        lines.append(f"| {name} | {100 * c['mean_diff']:+.2f} | [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}] "
                     f"| {c['t_p']:.2g} | {c['wilcoxon_p']:.2g} | {c['n']} | {c['wins']} / {c['losses']} |")

    if len(rows) >= 2:
        red = [r["reduced_main_test"] for r in rows]
        cont = [r["continued_test"] for r in rows]
        add(f"{method} + main minus parent trained on", red, cont)
        for v in variants:
            per = [r[v]["trained_test"] for r in rows]
            add(f"perturbed ({v}) trained on minus parent trained on", per, cont)
            add(f"{method} + main minus perturbed ({v}) trained on", red, per)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="experiment folder (with experiment.json)")
    ap.add_argument("--kernel", default="s4d", help="kernel section of the experiment (default s4d)")
    ap.add_argument("--rank", type=int, required=True, help="the reduced order whose runs are examined")
    ap.add_argument("--method", default="bt", help="the reduction method (default bt)")
    ap.add_argument("--variants", default="C,ssm", help=f"comma-separated, from {sorted(VARIANTS) + [EMBEDDED]} (default C,ssm)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: every finished seed)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the trained runs and the report")
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS and v != EMBEDDED]
    if bad or not variants:
        ap.error(f"--variants must name some of {sorted(VARIANTS) + [EMBEDDED]}, got {a.variants!r}.")
    if not (a.folder / "experiment.json").is_file():
        ap.error(f"{a.folder} is not an experiment folder (no experiment.json).")
    seeds = None if a.seeds is None else {int(s) for s in a.seeds.split(",") if s}
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = run(a.folder, a.kernel, a.rank, a.method, variants, a.out, seeds)
    ckpt.write_json(a.out / "perturbed.json", rows)
    text = report(rows, a.kernel, a.rank, a.method, variants, a.folder)
    ckpt.write_text(a.out / "perturbed.md", text)
    print(text)


if __name__ == "__main__":
    main()
