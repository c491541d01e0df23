"""Training-step speed of the SSM layer's convolution against plain autograd, in one process.

The layer computes ``y = (K * u)[:L] + D u`` with :func:`ssmcompress.nn.layer.causal_conv` (a backward pass of
real FFTs only) and hands the next layers a contiguous (batch, length, H) tensor.  The reference is the
straightforward version: autograd through ``irfft(rfft(v) * rfft(K))`` and a transposed view as output.
Both run the same model, data and optimizer, alternating, and the script prints the median step time of
each and their ratio (reference / layer; above 1 means the layer is faster).

    python benchmarks/bench_conv.py                     # smnist-sized: L 784, d_model 32, 2 layers, batch 64
    python benchmarks/bench_conv.py --length 4096 --batch 8 --d-model 64
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ssmcompress.nn import SequenceModel
from ssmcompress.nn import layer as layer_mod


def reference_forward(self, u):
    """SSMLayer.forward before causal_conv: autograd through the FFTs, a transposed view as output."""
    L = u.shape[1]
    work = torch.promote_types(u.dtype, torch.float32)
    K = self.kernel(L).to(work)
    v = u.transpose(1, 2).to(work)
    y = torch.fft.irfft(torch.fft.rfft(v, n=2 * L) * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
    y = y + v * self.D.to(work)[:, None]
    return y.transpose(1, 2).to(u.dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=784)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--state-dim", type=int, default=64)
    ap.add_argument("--kernel", default="s4d")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.length, 1)
    y = torch.randint(0, 10, (a.batch,))
    layer_forward = layer_mod.SSMLayer.forward
    variants = {"layer": layer_forward, "reference": reference_forward}
    models, opts, times = {}, {}, {k: [] for k in variants}
    for k in variants:
        torch.manual_seed(0)
        models[k] = SequenceModel(d_input=1, d_output=10, d_model=a.d_model, layers=a.layers,
                                  state_dim=a.state_dim, kernel=a.kernel, init="legs", l_max=a.length)
        opts[k] = torch.optim.AdamW(models[k].parameters(), lr=1e-3)

    def step(k):
        layer_mod.SSMLayer.forward = variants[k]
        opts[k].zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(models[k](x), y)
        loss.backward()
        opts[k].step()

    try:
        for k in variants:                     # warm-up
            step(k)
        for _ in range(a.steps):               # alternate, so that machine load hits both alike
            for k in variants:
                t = time.perf_counter()
                step(k)
                times[k].append(time.perf_counter() - t)
    finally:
        layer_mod.SSMLayer.forward = layer_forward
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"length": a.length, "batch": a.batch, "d_model": a.d_model, "layers": a.layers,
                      "kernel": a.kernel, "threads": a.threads,
                      "step_ms_layer": round(1e3 * med["layer"], 1), "step_ms_reference": round(1e3 * med["reference"], 1),
                      "speedup": round(med["reference"] / med["layer"], 3)}))


if __name__ == "__main__":
    main()
