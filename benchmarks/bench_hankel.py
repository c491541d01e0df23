"""Training-time overhead of the Hankel penalty (``train --hankel-reg``).

For each state size, one process times training steps (forward + backward + AdamW) of the same
model on the same batch without and with ``hankel_reg * hankel_penalty(model, order)`` added to
the loss, after warm-up, alternating the two so that both see the same machine load, and prints
one JSON line per configuration with both throughputs and their ratio (with / without), plus the
time of the penalty alone (forward + backward).

Defaults: d_model 64, 4 layers, N in {64, 16}, length 784 (sequential MNIST), batch 32, kernel s4d,
penalty beyond r = N/8.  A third variant times the penalty on a random ``--sample`` fraction of the channels
(``train --hankel-sample``).  Short sequences (``--length 40``, MNIST-1D) are where the penalty costs most:
its cost does not depend on the length or the batch.  ``--kernels dss-softmax`` times the finite-horizon path,
and so does ``--horizon finite`` for any kernel (``train --hankel-horizon finite``: Gramians over the length).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import setup, sync  # noqa: E402  (same model, optimizer and batch as bench_train)

from ssmcompress.nn import KERNELS  # noqa: E402
from ssmcompress.nn.hankel import hankel_penalty  # noqa: E402


def step(model, opt, x, y, weight, order, sample=1.0, horizon="auto"):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if weight:
        loss = loss + weight * hankel_penalty(model, order, horizon=horizon, sample=sample).to(loss.dtype)
    loss.backward()
    opt.step()


def timed(fn, device, reps):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def measure(args, kernel, state_dim, device):
    args.state_dim = state_dim
    model, opt, x, y = setup(args, kernel, args.length, args.batch, device)
    model.train()
    order = max(2, state_dim // 8)
    plain = lambda: step(model, opt, x, y, 0.0, order)  # noqa: E731
    reg = lambda: step(model, opt, x, y, args.weight, order, horizon=args.horizon)  # noqa: E731
    sampled = lambda: step(model, opt, x, y, args.weight, order, args.sample, args.horizon)  # noqa: E731
    penalty_only = lambda: hankel_penalty(model, order, horizon=args.horizon).backward()  # noqa: E731
    for _ in range(args.warmup):
        plain(), reg(), sampled()
    t_plain, t_reg, t_sampled, t_pen = [], [], [], []
    for _ in range(args.rounds):  # alternate, so that all see the same load
        t_plain.append(timed(plain, device, args.steps))
        t_reg.append(timed(reg, device, args.steps))
        t_sampled.append(timed(sampled, device, args.steps))
        opt.zero_grad(set_to_none=True)
        t_pen.append(timed(penalty_only, device, args.steps))
    tokens = args.batch * args.length
    best = min  # the least disturbed round
    return dict(
        benchmark="hankel_penalty", kernel=kernel, device=str(device), d_model=args.d_model, layers=args.layers,
        state_dim=state_dim, order=order, horizon=args.horizon, length=args.length, batch=args.batch, threads=args.threads,
        train_tokens_per_s=round(tokens / best(t_plain), 1),
        train_tokens_per_s_with_penalty=round(tokens / best(t_reg), 1),
        ratio_with_over_without=round(best(t_plain) / best(t_reg), 3),
        sample=args.sample, ratio_sampled_over_without=round(best(t_plain) / best(t_sampled), 3),
        penalty_fwd_bwd_s=round(best(t_pen), 4), step_s=round(best(t_plain), 4),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", nargs="+", default=["s4d"], choices=KERNELS)
    p.add_argument("--state-dims", type=int, nargs="+", default=[64, 16])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--length", type=int, default=784)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--weight", type=float, default=1e-3)
    p.add_argument("--sample", type=float, default=0.25,
                   help="fraction of channels of the sampled penalty (train --hankel-sample), timed as a third variant")
    p.add_argument("--horizon", choices=("auto", "finite"), default="auto",
                   help="Gramians of the penalty (train --hankel-horizon; default auto)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the fastest counts")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for kernel in args.kernels:
        for n in args.state_dims:
            print(json.dumps(measure(args, kernel, n, device)), flush=True)


if __name__ == "__main__":
    main()
