"""One interface over the three ways to run the streaming step: eager torch, onnxruntime, and the C build.

``open_backend(model, name, batch, workdir)`` returns an object with ``step(x_t) -> (batch, d_output)``
(numpy in, numpy out) and ``close() -> microseconds per token`` spent inside the step.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .realstep import StepWeights, TorchStreamer

__all__ = ["BACKENDS", "open_backend"]

BACKENDS = ("torch", "onnx", "c")


class _Timed:
    def __init__(self, step, cleanup=None):
        self._step, self._cleanup = step, cleanup
        self.seconds, self.tokens = 0.0, 0

    def step(self, x_t):
        start = time.perf_counter()
        y = self._step(x_t)
        self.seconds += time.perf_counter() - start
        self.tokens += len(x_t)
        return y

    def close(self) -> float:
        if self._cleanup is not None:
            self._cleanup()
        return 1e6 * self.seconds / max(self.tokens, 1)


def open_backend(model, name: str, batch: int, workdir=None, threads=None):
    """Start streaming ``batch`` streams of ``model`` on backend ``name`` (torch, onnx or c).

    ``workdir``: a folder for the C build (needed for ``c``).  ``threads``: onnxruntime intra-op threads.
    """
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    tokens = model.vocab_size is not None
    if name == "torch":
        streamer = TorchStreamer(model, batch=batch)
        dtype = model.decoder.weight.dtype

        def step(x_t):
            x = torch.as_tensor(x_t, dtype=torch.long if tokens else dtype)
            return streamer.step(x).numpy()

        def cleanup():
            for layer in model.ssm_layers():
                layer.clear_step()
        return _Timed(step, cleanup)
    weights = StepWeights.from_model(model)
    if name == "onnx":
        from .onnx_export import OnnxStreamer, build_step_graph
        streamer = OnnxStreamer(build_step_graph(weights), batch=batch, threads=threads)
        return _Timed(streamer.step)
    from .c_export import CStepProcess, compile_driver, write_c
    if workdir is None:
        raise ValueError("The c backend needs a work folder for the build.")
    write_c(weights, workdir, "ssm_model")
    exe = compile_driver(Path(workdir), "ssm_model")
    return CStepProcess(exe, batch, weights.d_output, tokens=tokens)
