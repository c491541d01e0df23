"""The streaming step as an ONNX graph (state in, state out, dynamic batch), built with the onnx helper API.

Graph inputs and outputs (``batch`` is a dynamic dimension, ``H`` = d_model, ``n_i`` the stored
modes of layer i)::

    x                  float32 (batch, d_input)     or  token int64 (batch,) for a vocab_size model
    state{i}_re/_im    float32 (batch, H, n_i)       real / imaginary part of layer i's SSM state
    pool_sum           float32 (batch, H)            mean pooling only: running sum of the features
    pool_count         float32 (batch, 1)            mean pooling only: tokens seen so far
 -> y                  float32 (batch, d_output)     decoder output after this token
    next_state{i}_re/_im, next_pool_sum, next_pool_count

Zero states start a stream.  The graph runs the recurrence of :mod:`.realstep` operation by
operation in the order of the eager ``SequenceModel.step`` (opset 20: ``LayerNormalization``,
``Gelu`` in its exact erf form).

The graph is written with ``onnx.helper`` rather than ``torch.onnx.export``: the recurrence is a
few dozen elementwise operations whose constants come precomputed from :class:`StepWeights`,
and torch 2.13's exporters need either onnxscript (``dynamo=True``) or the deprecated TorchScript path.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .realstep import StepWeights

__all__ = ["ExportDependencyError", "require_onnx", "build_step_graph", "export_onnx", "OnnxStreamer",
           "ONNX_OPSET"]

ONNX_OPSET = 20
_IR_VERSION = 9
INSTALL_HINT = "pip install 'ssmcompress[export]' (onnx and onnxruntime)"


class ExportDependencyError(ImportError):
    """An optional package of the export (onnx, onnxruntime) is not installed."""


def require_onnx(runtime: bool = False):
    """Import onnx (and onnxruntime when ``runtime``); raise :class:`ExportDependencyError` with the fix."""
    names = ["onnx"] + (["onnxruntime"] if runtime else [])
    modules = []
    for name in names:
        try:
            modules.append(__import__(name))
        except ImportError:
            raise ExportDependencyError(
                f"The ONNX export needs the package {name}, which is not installed; install it with {INSTALL_HINT}.") from None
    return modules


def state_names(weights: StepWeights) -> list:
    """Names of the state inputs of the step graph, in order (outputs are ``next_`` + name)."""
    names = [f"state{i}_{part}" for i in range(len(weights.blocks)) for part in ("re", "im")]
    return names + (["pool_sum", "pool_count"] if weights.pool == "mean" else [])


class _Graph:
    """Collects nodes and float32 initializers; every node gets a fresh output name."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes, self.initializers, self._n = [], [], 0

    def const(self, name, array, dtype=np.float32):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def op(self, kind, *inputs, out=None, **attrs):
        self._n += 1
        out = out or f"{kind.lower()}_{self._n}"
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], **attrs))
        return out


def _norm(g, norm, x, prefix):
    if norm.kind == "layer":
        return g.op("LayerNormalization", x, g.const(prefix + "_scale", norm.scale), g.const(prefix + "_shift", norm.shift),
                    axis=-1, epsilon=norm.eps)
    return g.op("Add", g.op("Mul", x, g.const(prefix + "_scale", norm.scale)), g.const(prefix + "_shift", norm.shift))


def _ssm(g, b, u, xr, xi, i, out_re, out_im):
    """SSMLayer.step: the same operations in the same order (u (batch, H), x* (batch, H, n))."""
    c = {k: g.const(f"ssm{i}_{k}", getattr(b, k)) for k in ("lam_re", "lam_im", "B_re", "B_im")}
    u3 = g.op("Unsqueeze", u, g.const(f"ssm{i}_axis", np.array([2]), np.int64))
    nr = g.op("Add", g.op("Sub", g.op("Mul", c["lam_re"], xr), g.op("Mul", c["lam_im"], xi)),
              g.op("Mul", c["B_re"], u3), out=out_re)
    ni = g.op("Add", g.op("Add", g.op("Mul", c["lam_re"], xi), g.op("Mul", c["lam_im"], xr)),
              g.op("Mul", c["B_im"], u3), out=out_im)
    # 2 sum(C_re nr - C_im ni) == sum(2 C_re nr - 2 C_im ni) exactly (scaling by 2 does not round)
    c2 = {k: g.const(f"ssm{i}_2{k}", 2 * getattr(b, k)) for k in ("C_re", "C_im")}
    s = g.op("ReduceSum", g.op("Sub", g.op("Mul", c2["C_re"], nr), g.op("Mul", c2["C_im"], ni)),
             g.const(f"ssm{i}_last", np.array([-1]), np.int64), keepdims=0)
    return g.op("Add", s, g.op("Mul", g.const(f"ssm{i}_D", b.D), u))


def _linear(g, x, weight, bias, name):
    return g.op("Gemm", x, g.const(name + "_weight", weight), g.const(name + "_bias", bias), transB=1)


def _block(g, b, h, i, prenorm):
    z = _norm(g, b.norm, h, f"norm{i}") if prenorm else h
    y = _ssm(g, b, z, f"state{i}_re", f"state{i}_im", i, f"next_state{i}_re", f"next_state{i}_im")
    gelu = g.op("Gelu", y, approximate="none")  # x/2 (1 + erf(x / sqrt 2)), as torch's default
    both = _linear(g, gelu, b.linear_weight, b.linear_bias, f"glu{i}")
    a, gate = f"glu{i}_value", f"glu{i}_gate"
    g.nodes.append(g.helper.make_node("Split", [both], [a, gate], axis=-1, num_outputs=2))
    h = g.op("Add", h, g.op("Mul", a, g.op("Sigmoid", gate)))
    return h if prenorm else _norm(g, b.norm, h, f"norm{i}")


def build_step_graph(weights: StepWeights, ssm_only: bool = False):
    """The step graph of :class:`StepWeights` as an ``onnx.ModelProto`` (checked by ``onnx.checker``).

    ``ssm_only=True`` builds the SSM recurrences of all layers alone, chained (input ``u``
    (batch, d_model), output ``y``), for timing the SSM part in the benchmarks.
    """
    if not isinstance(weights, StepWeights):
        raise ValueError(f"build_step_graph expects StepWeights, got {type(weights).__name__}.")
    (onnx,) = require_onnx()
    helper, TP = onnx.helper, onnx.TensorProto
    g = _Graph(onnx)
    H = weights.d_model
    inputs, outputs = [], []
    for i, b in enumerate(weights.blocks):
        for part in ("re", "im"):
            inputs.append(helper.make_tensor_value_info(f"state{i}_{part}", TP.FLOAT, ["batch", H, b.n_modes]))
            outputs.append(helper.make_tensor_value_info(f"next_state{i}_{part}", TP.FLOAT, ["batch", H, b.n_modes]))

    if ssm_only:
        inputs.insert(0, helper.make_tensor_value_info("u", TP.FLOAT, ["batch", H]))
        h = "u"
        for i, b in enumerate(weights.blocks):
            h = _ssm(g, b, h, f"state{i}_re", f"state{i}_im", i, f"next_state{i}_re", f"next_state{i}_im")
        g.op("Identity", h, out="y")
        outputs.insert(0, helper.make_tensor_value_info("y", TP.FLOAT, ["batch", H]))
    else:
        if weights.vocab_size is not None:
            inputs.insert(0, helper.make_tensor_value_info("token", TP.INT64, ["batch"]))
            h = g.op("Gather", g.const("embedding", weights.encoder_weight), "token", axis=0)
        else:
            inputs.insert(0, helper.make_tensor_value_info("x", TP.FLOAT, ["batch", weights.d_input]))
            h = _linear(g, "x", weights.encoder_weight, weights.encoder_bias, "encoder")
        for i, b in enumerate(weights.blocks):
            h = _block(g, b, h, i, weights.prenorm)
        if weights.final_norm is not None:
            h = _norm(g, weights.final_norm, h, "final_norm")
        if weights.pool == "mean":
            for name, shape in (("pool_sum", ["batch", H]), ("pool_count", ["batch", 1])):
                inputs.append(helper.make_tensor_value_info(name, TP.FLOAT, shape))
                outputs.append(helper.make_tensor_value_info("next_" + name, TP.FLOAT, shape))
            total = g.op("Add", "pool_sum", h, out="next_pool_sum")
            count = g.op("Add", "pool_count", g.const("one", np.array(1.0)), out="next_pool_count")
            h = g.op("Div", total, count)
        g.op("Gemm", h, g.const("decoder_weight", weights.decoder_weight), g.const("decoder_bias", weights.decoder_bias),
             transB=1, out="y")
        outputs.insert(0, helper.make_tensor_value_info("y", TP.FLOAT, ["batch", weights.d_output]))

    graph = helper.make_graph(g.nodes, "ssmcompress_ssm_step" if ssm_only else "ssmcompress_step", inputs, outputs,
                              initializer=g.initializers)
    model = helper.make_model(graph, producer_name="ssmcompress", opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


def export_onnx(model, path) -> Path:
    """Write the step graph of a ``SequenceModel`` (or :class:`StepWeights`) to ``path`` (.onnx)."""
    weights = model if isinstance(model, StepWeights) else StepWeights.from_model(model)
    proto = build_step_graph(weights)
    path = Path(path)
    from ..checkpoint import _atomic_write
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(proto.SerializeToString()))
    return path


class OnnxStreamer:
    """Run an exported step graph through onnxruntime, keeping the state between calls.

    Parameters
    ----------
    graph : path of an .onnx file, bytes, or an ``onnx.ModelProto``
    batch : number of parallel streams
    threads : onnxruntime intra-op threads (None: onnxruntime's default)
    """

    def __init__(self, graph, batch: int = 1, threads=None):
        (ort,) = require_onnx(runtime=True)[1:]
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}.")
        if hasattr(graph, "SerializeToString"):
            graph = graph.SerializeToString()
        elif not isinstance(graph, bytes):
            graph = str(graph)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self._states = [i for i in self.session.get_inputs()[1:]]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch = batch
        self.reset()

    def reset(self) -> None:
        self.state = {i.name: np.zeros([self.batch] + list(i.shape[1:]), dtype=np.float32) for i in self._states}

    def step(self, x_t) -> np.ndarray:
        """x_t (batch, d_input) float32, or tokens (batch,) -> output (batch, d_output)."""
        feed = dict(self.state)
        dtype = np.int64 if self.input_name == "token" else np.float32
        feed[self.input_name] = np.ascontiguousarray(x_t, dtype=dtype)
        out = self.session.run(self.output_names, feed)
        self.state = {name[len("next_"):]: v for name, v in zip(self.output_names[1:], out[1:])}
        return out[0]

    def run(self, xs) -> tuple:
        """Step through ``xs`` (length, batch, ...) from the current state: (outputs, seconds of stepping)."""
        outs = []
        start = time.perf_counter()
        for x_t in xs:
            outs.append(self.step(x_t))
        return np.stack(outs), time.perf_counter() - start
