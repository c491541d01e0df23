"""Training and inference throughput of SequenceModel for every DSS kernel.

Prints one JSON line per kernel:
  train_tokens_per_s   forward + backward + AdamW step, tokens = batch * length
  forward_tokens_per_s forward only (no_grad, eval mode)
  peak_memory_mb       one training step at --mem-length x --mem-batch:
                       CUDA max_memory_allocated, or on CPU the peak resident
                       set of a fresh subprocess above its resident set before the step

Defaults: d_model 128, 4 layers, N 64, L 784, batch 32; memory at L 4096, batch 8.
Shrink with e.g. ``--steps 1 --batch 8`` or ``--kernels s4d``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from ssmcompress.nn import KERNELS, SequenceModel
from ssmcompress.train import TrainConfig, param_groups


def optimizer(model):
    """The optimizer the trainer builds (S4 parameter groups, default learning rates)."""
    return torch.optim.AdamW(param_groups(model, TrainConfig()))


def build(args, kernel, length, device):
    model = SequenceModel(
        d_input=1, d_output=10, d_model=args.d_model, layers=args.layers, state_dim=args.state_dim,
        kernel=kernel, init="legs", l_max=length, prenorm=True,
    ).to(device)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


def tokens_per_s(fn, tokens, warmup, steps, device):
    """Tokens per second of ``fn`` after ``warmup`` untimed calls, over ``steps`` timed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return tokens * steps / (time.perf_counter() - t0)


def setup(args, kernel, length, batch, device):
    """Model, optimizer and one random batch (seeded), for a timing or memory run."""
    torch.manual_seed(0)
    model = build(args, kernel, length, device)
    x = torch.randn(batch, length, 1, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, optimizer(model), x, y


def throughput(args, kernel, device):
    model, opt, x, y = setup(args, kernel, args.length, args.batch, device)
    tokens = args.batch * args.length
    model.train()
    train = tokens_per_s(lambda: train_step(model, opt, x, y), tokens, args.warmup, args.steps, device)
    model.eval()
    with torch.no_grad():
        fwd = tokens_per_s(lambda: model(x), tokens, args.warmup, args.steps, device)
    return train, fwd


def peak_memory_here(args, kernel, device):
    """Peak memory (MB) of one training step at mem-length x mem-batch, in this process."""
    model, opt, x, y = setup(args, kernel, args.mem_length, args.mem_batch, device)
    if device.type == "cuda":
        train_step(model, opt, x, y)  # optimizer state allocated
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(model, opt, x, y)
        sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    train_step(model, opt, x, y)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def peak_memory(args, kernel, device):
    if device.type == "cuda":
        return peak_memory_here(args, kernel, device)
    # CPU: a fresh process, so that the resident-set high-water mark belongs to this config alone.
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", "--kernels", kernel]
    for key in ("d_model", "layers", "state_dim", "mem_length", "mem_batch", "threads"):
        cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--state-dim", type=int, default=64)
    p.add_argument("--length", type=int, default=784)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mem-length", type=int, default=4096)
    p.add_argument("--mem-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_worker:
        print(peak_memory_here(args, args.kernels[0], device))
        return
    for kernel in args.kernels:
        t0 = time.perf_counter()
        train, fwd = throughput(args, kernel, device)
        mem = None if args.skip_memory else round(peak_memory(args, kernel, device), 1)
        print(json.dumps(dict(
            benchmark="train", kernel=kernel, device=str(device), dtype="float32", d_model=args.d_model,
            layers=args.layers, state_dim=args.state_dim, length=args.length, batch=args.batch,
            train_tokens_per_s=round(train, 1), forward_tokens_per_s=round(fwd, 1),
            mem_length=args.mem_length, mem_batch=args.mem_batch, peak_memory_mb=mem,
            threads=args.threads, seconds=round(time.perf_counter() - t0, 1),
        )), flush=True)


if __name__ == "__main__":
    main()
