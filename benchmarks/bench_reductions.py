"""Benchmark: the reductions of ssmcompress.lti against balanced truncation, in one script.

Reduces every channel of a 6-layer, 256-channel model (1536 SISO systems, Skew-HiPPO-like modes
perturbed as by training, continuous time; the model of bench_reduce.py) from state size N to
r = 16 with balanced truncation, balanced singular perturbation, H2-optimal reduction (IRKA,
started from balanced truncation) and modal truncation (H-infinity and H2 scores), each in ONE
vectorised call, and prints each time and its ratio to balanced truncation's, plus what each
method reaches: H2 and H-infinity errors relative to the original (medians over the channels),
IRKA's iterations and convergence.  (Singular perturbation changes D, so its continuous H2 error
is infinite by definition; it matches the DC gain instead.)

    python benchmarks/bench_reductions.py [--n-state 64] [--order 16] [--workers 2] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from bench_reduce import _best_of, trained_like_model
from ssmcompress.lti import (DiagonalSSM, balanced_singular_perturbation, balanced_truncation, h2_optimal,
                             modal_truncation)


def strictly_proper(sys):
    return DiagonalSSM(sys.modes, sys.B, sys.C, domain=sys.domain)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-state", type=int, default=64)
    ap.add_argument("--order", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="threads (default: all CPUs)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs per method")
    ap.add_argument("--tol", type=float, default=1e-4, help="IRKA tolerance on the relative shift change")
    ap.add_argument("--maxiter", type=int, default=100, help="IRKA iteration cap")
    args = ap.parse_args()

    sys = trained_like_model(args.n_state)
    H, r, w = sys.batch_shape[0], args.order, args.workers
    methods = {
        "balanced_truncation": lambda: balanced_truncation(sys, order=r, workers=w),
        "balanced_singular_perturbation": lambda: balanced_singular_perturbation(sys, order=r, workers=w),
        "h2_optimal (IRKA)": lambda: h2_optimal(sys, order=r, tol=args.tol, maxiter=args.maxiter, workers=w),
        "modal_truncation hinf": lambda: modal_truncation(sys, order=r, score="hinf"),
        "modal_truncation h2": lambda: modal_truncation(sys, order=r, score="h2"),
    }
    balanced_truncation(sys[:8], order=r, workers=w)                   # warm-up, not timed
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"N={args.n_state}, {H} systems, r={r}; {os.cpu_count()} CPUs, workers={w or os.cpu_count()}, "
          f"load average {load:.1f}; best of {args.repeats}")
    scale_h2 = strictly_proper(sys).h2_norm()
    scale_hinf = sys.hinf_norm()
    t_bt = None
    for name, run in methods.items():
        t, res = _best_of(run, args.repeats)
        t_bt = t if t_bt is None else t_bt
        diff = sys - res.system
        e_h2 = diff.h2_norm() / scale_h2                                  # inf where D changed (continuous)
        e_hinf = diff.hinf_norm() / scale_hinf
        line = (f"  {name:32s} {t:8.3f} s  {t / t_bt:6.2f}x of BT   median rel. H2 error {np.median(e_h2):.4e}, "
                f"H-inf error {np.median(e_hinf):.4e}; stable {bool(res.system.is_stable().all())}")
        print(line)
        if isinstance(res.order, np.ndarray) and hasattr(res, "converged"):
            print(f"  {'':32s} IRKA: converged {res.converged.mean():.1%} of channels (tol {args.tol:g}), "
                  f"iterations median {np.median(res.iterations):.0f}, max {res.iterations.max()}; "
                  f"H2 error / BT's: median {np.median(res.h2_error / res.h2_error_start):.3f}")


if __name__ == "__main__":
    main()
