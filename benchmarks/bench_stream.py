"""Streaming step latency and throughput: eager torch, onnxruntime and the C export, full against compressed.

Model: d_model 64, 4 layers, s4d, N = 64 (``--state-dim``), d_input 1, 10 outputs, mean pooling,
compressed by balanced truncation to r = 32, 16, 8 (``compress_model``, no retraining).

For every model and backend, one thread (torch.set_num_threads(1), onnxruntime intra-op 1,
the C build is single-threaded):

  b1 us/token     latency of one token at batch 1 (best of --repeats runs of --steps tokens)
  ssm us/token    the SSM recurrences of the 4 layers alone, chained, at batch 1
  b32 tok/s       throughput at batch 32 (torch and onnxruntime: one batched call per step;
                  C: 32 state structs stepped one after the other)
  weight bytes, SSM weight bytes, state bytes per stream (float32; the state includes the mean-pooling sum)

and the ratios compressed/full of the whole step and of the SSM part.  Last, a model of the same size
trained on the built-in digits data (``--int8-epochs``): test accuracy of eager torch, the C build and
the C build with int8 Linear weights, full and compressed.  The C build uses the
export's flags (-std=c99 -O2); ``--c-flags`` adds a second C column (default -O3 -march=native); the C
build with int8 Linear weights uses -std=c99 -O3.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssmcompress.compress import compress_model
from ssmcompress.export import StepWeights, TorchStreamer
from ssmcompress.export.c_export import C_FLAGS, CStreamer, c_weight_bytes, compile_driver, find_c_compiler, write_c
from ssmcompress.nn import SequenceModel


# -O3: GCC vectorises the int8-to-float conversion of the int8 Linear weights only with its full cost model
INT8_FLAGS = ("-std=c99", "-O3")


def best_of(repeats, fn):
    """Best (smallest) of ``repeats`` runs of ``fn() -> (cpu seconds, wall seconds)``, each element on its own."""
    runs = [fn() for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


class Clock:
    """This thread's CPU time and the wall clock together."""

    def __enter__(self):
        self.cpu, self.wall = time.thread_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu, self.wall = time.thread_time() - self.cpu, time.perf_counter() - self.wall


def per_step(clock, steps):
    return clock.cpu / steps, clock.wall / steps


def scaled(pair, factor=1e6):
    return tuple(factor * v for v in pair)


def torch_times(model, steps, repeats, batch):
    """(us per step of the whole model, us per step of the SSM part) in eager torch."""
    streamer = TorchStreamer(model, batch=batch)
    xs = torch.sin(0.01 * torch.arange(steps + 20, dtype=torch.float32))[:, None, None].expand(-1, batch, 1).contiguous()

    def whole():
        streamer.reset()
        for t in range(10):
            streamer.step(xs[t])
        with Clock() as clock:
            for t in range(steps):
                streamer.step(xs[10 + t])
        return per_step(clock, steps)

    layers = model.ssm_layers()
    u = torch.sin(0.01 * torch.arange(model.d_model, dtype=torch.float32)).expand(batch, -1).contiguous()

    def ssm():
        state = model.default_state(batch)
        with torch.no_grad(), Clock() as clock:
            for _ in range(steps):
                h = u
                for i, layer in enumerate(layers):
                    h, state[i] = layer.step(h, state[i])
        return per_step(clock, steps)

    out = scaled(best_of(repeats, whole)), scaled(best_of(repeats, ssm))
    for layer in layers:
        layer.clear_step()
    return out


def ort_times(weights, steps, repeats, batch):
    from ssmcompress.export.onnx_export import OnnxStreamer, build_step_graph

    xs = np.sin(0.01 * np.arange(steps + 20, dtype=np.float32))[:, None, None].repeat(batch, 1)
    us = np.sin(0.01 * np.arange(weights.d_model, dtype=np.float32))[None].repeat(batch, 0)
    results = []
    for graph, inputs in ((build_step_graph(weights), xs), (build_step_graph(weights, ssm_only=True), None)):
        streamer = OnnxStreamer(graph, batch=batch, threads=1)

        def run():
            streamer.reset()
            feed = inputs if inputs is not None else [us] * (steps + 20)
            streamer.run(feed[:20])
            with Clock() as clock:
                streamer.run(feed[20:20 + steps])
            return per_step(clock, steps)
        results.append(scaled(best_of(repeats, run)))
    return tuple(results)


def c_times(exe, steps, repeats, batch):
    def run(*extra):
        res = subprocess.run([str(exe), "bench", str(batch), str(steps), *extra], capture_output=True, text=True,
                             check=True)
        words = res.stdout.split()
        return float(words[3]) * batch, float(words[1]) * batch  # cpu, wall: us per step of all streams
    return best_of(repeats, run), best_of(repeats, lambda: run("ssm"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dim", type=int, default=64)
    p.add_argument("--ranks", default="32,16,8")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--torch-steps", type=int, default=300, help="timed tokens per eager run")
    p.add_argument("--ort-steps", type=int, default=2000, help="timed tokens per onnxruntime run")
    p.add_argument("--c-steps", type=int, default=20000, help="timed tokens per C run at batch 1 (a tenth at batch 32)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--c-flags", default="-O3 -march=native", help="flags of the second C build ('' to skip)")
    p.add_argument("--int8-epochs", type=int, default=6,
                   help="epochs of the digits model whose accuracy with int8 weights is reported (0 to skip)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    full = SequenceModel(1, 10, d_model=args.d_model, layers=args.layers, state_dim=args.state_dim, kernel="s4d").eval()
    models = [("full", full)] + [(f"r={r}", compress_model(full, rank=int(r))[0].eval()) for r in args.ranks.split(",")]
    have_ort = True
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        have_ort = False
        print("onnxruntime is not installed: pip install 'ssmcompress[export]' for its columns")
    cc = find_c_compiler()
    load_before = os.getloadavg()[0]
    print(f"# bench_stream: d_model {args.d_model}, {args.layers} layers, s4d, N={args.state_dim}; "
          f"one thread; {platform.processor() or platform.machine()}; torch {torch.__version__}; cc {cc}")

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for label, model in models:
            w = StepWeights.from_model(model)
            row = dict(label=label, dims=w.state_dims, weight_bytes=4 * w.weight_count(),
                       ssm_bytes=4 * w.ssm_weight_count(), state_bytes=4 * w.state_count())
            row["torch"] = torch_times(model, args.torch_steps, args.repeats, 1)
            row["torch32"] = torch_times(model, max(args.torch_steps // 3, 20), args.repeats, 32)[0]
            if have_ort:
                row["ort"] = ort_times(w, args.ort_steps, args.repeats, 1)
                row["ort32"] = ort_times(w, max(args.ort_steps // 4, 50), args.repeats, 32)[0]
            if cc is not None:
                folder = Path(work) / label.replace("=", "")
                write_c(w, folder, "net")
                exe = compile_driver(folder, "net", flags=C_FLAGS)
                row["c"] = c_times(exe, args.c_steps, args.repeats, 1)
                row["c32"] = c_times(exe, max(args.c_steps // 10, 100), args.repeats, 32)[0]
                write_c(w, Path(str(folder) + "_q8"), "net", int8=True)
                row["c_int8"] = c_times(compile_driver(Path(str(folder) + "_q8"), "net", flags=INT8_FLAGS),
                                        args.c_steps, args.repeats, 1)
                row["int8_bytes"] = c_weight_bytes(w, int8=True)
                if args.c_flags.strip():
                    exe2 = compile_driver(folder, "net", flags=("-std=c99", *args.c_flags.split()))
                    row["c_fast"] = c_times(exe2, args.c_steps, args.repeats, 1)
            rows.append(row)
            print(f"  measured {label}: state dims {w.state_dims}", flush=True)

    backends = [("torch", "eager torch")] + ([("ort", "onnxruntime")] if have_ort else []) + \
               ([("c", f"C {' '.join(C_FLAGS[1:])}")] if cc else []) + \
               ([("c_fast", f"C {args.c_flags}")] if cc and args.c_flags.strip() else []) + \
               ([("c_int8", f"C int8 {' '.join(INT8_FLAGS[1:])}")] if cc else [])
    batched = [(k, name) for k, name in backends if k + "32" in rows[0]]
    CPU, WALL = 0, 1
    print(f"\nthis thread's CPU time (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"{load_before:.1f} at the start)\n")
    print("| model | state dims | weight bytes (SSM) | state bytes/stream | "
          + " | ".join(f"{name} b1 us/token (SSM part)" for _, name in backends)
          + " | " + " | ".join(f"{name} b32 tokens/s" for _, name in batched) + " |")
    print("|" + "---|" * (4 + len(backends) + len(batched)))
    for r in rows:
        cells = [r["label"], str(r["dims"]), f"{r['weight_bytes']} ({r['ssm_bytes']})", str(r["state_bytes"])]
        cells += [f"{r[k][0][CPU]:.1f} ({r[k][1][CPU]:.1f})" for k, _ in backends]
        cells += [f"{32e6 / r[k + '32'][CPU]:.0f}" for k, _ in batched]
        print("| " + " | ".join(cells) + " |")
    print("\nwall clock, b1 us/token (SSM part):")
    for r in rows:
        print(f"  {r['label']}: " + ", ".join(f"{name} {r[k][0][WALL]:.1f} ({r[k][1][WALL]:.1f})" for k, name in backends))
    print("\nratio compressed/full, batch 1, CPU time: whole step (SSM part)")
    for r in rows[1:]:
        print(f"  {r['label']}: " + ", ".join(
            f"{name} {r[k][0][CPU] / rows[0][k][0][CPU]:.2f} ({r[k][1][CPU] / rows[0][k][1][CPU]:.2f})"
            for k, name in backends) + f"; state bytes {r['state_bytes'] / rows[0]['state_bytes']:.2f}")
    if cc:
        print("int8 Linear weights, C weight bytes: " + ", ".join(
            f"{r['label']} {r['int8_bytes']} (float32 {r['weight_bytes']})" for r in rows))
    last = rows[-1]
    for key, name, target in (("c", f"C step ({' '.join(C_FLAGS)})", 20), ("ort", "onnxruntime step", 200)):
        if key in last:
            cpu, wall = last[key][0]
            print(f"target {name} <= {target} us/token at {last['label']}: {cpu:.1f} us CPU, {wall:.1f} us wall "
                  f"({'met' if cpu <= target else 'NOT met'} in CPU time, {'met' if wall <= target else 'NOT met'} on the wall clock)")
    if cc and args.int8_epochs > 0:
        int8_accuracy(args)


def int8_accuracy(args):
    """Test accuracy on the built-in digits data: eager torch, C float32 and C int8, full and compressed to the last rank."""
    from ssmcompress import checkpoint as ckpt
    from ssmcompress.data import load_dataset
    from ssmcompress.train import TrainConfig, train

    data = load_dataset("digits")
    x, y, _ = data.split("test")
    torch.manual_seed(0)
    model = SequenceModel(1, data.n_classes, d_model=args.d_model, layers=args.layers, state_dim=args.state_dim,
                          kernel="s4d", l_max=data.seq_len)
    rank = int(args.ranks.split(",")[-1])
    print(f"\nint8 accuracy: digits, the model above trained for {args.int8_epochs} epochs (seed 0), "
          f"test set of {len(y)}; compressed to r={rank} without retraining")
    with tempfile.TemporaryDirectory() as work:
        train(model, data, TrainConfig(epochs=args.int8_epochs, batch_size=64, seed=0, device="cpu"),
              Path(work) / "run", progress=False)
        model, _ = ckpt.load_model(Path(work) / "run")
        small = compress_model(model.eval(), rank=rank)[0].eval()
        xs = np.ascontiguousarray(np.swapaxes(np.asarray(x, np.float32), 0, 1))  # (length, batch, 1)
        for label, m in (("full", model), (f"r={rank}", small)):
            with torch.no_grad():
                eager = m(torch.as_tensor(x, dtype=torch.float32)).numpy()
            line = [f"  {label}: eager torch {np.mean(eager.argmax(1) == y):.4f}"]
            for int8 in (False, True):
                folder = Path(work) / f"{label.replace('=', '')}_{int(int8)}"
                write_c(m, folder, "net", int8=int8)
                out, _ = CStreamer(compile_driver(folder, "net"), data.n_classes).run(xs)
                logits = out[-1]
                dev = np.abs(logits - eager).max() / np.abs(eager).max()
                line.append(f"C {'int8' if int8 else 'float32'} {np.mean(logits.argmax(1) == y):.4f} "
                            f"(logits off by {dev:.2g} of the largest)")
            print(", ".join(line))


if __name__ == "__main__":
    main()
