"""Peak resident memory of training through the mnist:DIR loader on 60,000 generated IDX images.

Writes MNIST-sized IDX files (60,000 train + 10,000 test images of 28x28, a bright
label-dependent rectangle on noise, in the published IDX format) to --dir unless they
are there, then runs each command in a fresh subprocess and prints one JSON line with
its wall time and peak resident set (``ru_maxrss`` of the child):

  baseline    python -c "import torch, ssmcompress": the interpreter and libraries alone
  train       ssmcompress train --data mnist:DIR  (uint8 memory map, float per batch)
  npz         the same training from an .npz of the same images (the whole float copy in memory)
  experiment  ssmcompress experiment --data mnist:DIR (only with --experiment)

Defaults: batch 64, one epoch, a tiny model (--d-model 16 --layers 1 --state-dim 8)
so that it finishes on two CPU cores; pass other train flags after ``--``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from file_formats import digit_images, write_mnist  # noqa: E402


def generate(folder: str, n_train: int, n_test: int) -> None:
    if os.path.isfile(os.path.join(folder, "t10k-labels-idx1-ubyte")):
        return
    rng = np.random.default_rng(0)
    y_tr = rng.integers(0, 10, n_train).astype(np.uint8)
    y_te = rng.integers(0, 10, n_test).astype(np.uint8)
    write_mnist(folder, digit_images(y_tr, rng), y_tr, digit_images(y_te, rng), y_te)


def write_npz(folder: str, path: str) -> None:
    from ssmcompress.data.image_files import read_idx
    if os.path.isfile(path):
        return
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = np.asarray(read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), 3))
        arrays[f"x_{split}"] = x.reshape(len(x), -1)
        arrays[f"y_{split}"] = np.asarray(read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), 1))
    np.savez(path, **arrays)


def measure(name: str, cmd: list) -> dict:
    """Run ``cmd`` in a fresh process (via a tiny wrapper) and return its wall time and peak RSS."""
    wrapper = ("import resource, subprocess, sys, json; "
               "rc = subprocess.run(sys.argv[1:]).returncode; "
               "print(json.dumps({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper] + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    row = {"benchmark": name, "command": " ".join(cmd[2:] if cmd[1] == "-m" else cmd), "rc": res["rc"],
           "wall_s": round(wall, 1), "peak_rss_mb": round(res["maxrss_kb"] / 1024, 1)}
    if res["rc"] != 0:
        row["stderr"] = out.stderr.strip().splitlines()[-1:]
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/ssmcompress_mnist60k", help="folder for the generated files")
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--skip-npz", action="store_true", help="do not run the .npz comparison")
    p.add_argument("--experiment", action="store_true", help="also run ssmcompress experiment through the loader")
    p.add_argument("train_args", nargs="*", help="flags for ssmcompress train (after --)")
    args = p.parse_args(argv)
    generate(args.dir, args.n_train, args.n_test)
    flags = args.train_args or ["--d-model", "16", "--layers", "1", "--state-dim", "8", "--epochs", "1",
                                "--batch-size", "64", "--quiet"]
    py = [sys.executable, "-m", "ssmcompress.cli"]
    runs = os.path.join(args.dir, "runs")
    os.makedirs(runs, exist_ok=True)
    stamp = str(int(time.time()))
    measure("baseline", [sys.executable, "-c", "import torch, ssmcompress.cli, ssmcompress.train"])
    measure("train", py + ["train", "--data", f"mnist:{args.dir}", "--out", os.path.join(runs, "t" + stamp)] + flags)
    if not args.skip_npz:
        npz = os.path.join(args.dir, "mnist60k.npz")
        write_npz(args.dir, npz)
        measure("npz", py + ["train", "--data", npz, "--out", os.path.join(runs, "n" + stamp)] + flags)
    if args.experiment:
        exp = [f for f in flags if f != "--quiet"]
        measure("experiment", py + ["experiment", "--data", f"mnist:{args.dir}", "--ranks", "4", "--seeds", "1",
                                    "--out", os.path.join(runs, "e" + stamp), "--quiet"] + exp)


if __name__ == "__main__":
    main()
