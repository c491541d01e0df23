"""ONNX step graph: parity with the eager model through onnxruntime over 1000 steps, every kernel, full and compressed."""
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")

from ssmcompress.export import StepWeights, stream_outputs  # noqa: E402
from ssmcompress.export.onnx_export import (ExportDependencyError, OnnxStreamer, build_step_graph,  # noqa: E402
                                            export_onnx, require_onnx, state_names)

from export_cases import CASES, STEPS, assert_stream_close, held_out_inputs, make_model, step_inputs  # noqa: E402


@pytest.mark.parametrize("kernel, compressed", CASES)
def test_onnx_parity_1000_steps(kernel, compressed, tmp_path):
    model = make_model(kernel, seed=0, compressed=compressed)
    x = held_out_inputs(model, batch=3)
    ref = stream_outputs(model, x).numpy()
    path = export_onnx(model, tmp_path / "step.onnx")
    streamer = OnnxStreamer(path, batch=3, threads=1)
    out, _ = streamer.run(step_inputs(model, x))
    assert out.shape == (STEPS, 3, model.d_output)
    assert_stream_close(out, ref)
    if compressed:
        assert model.state_dims != [16, 12]


def test_graph_interface_dynamic_batch_and_state():
    model = make_model("s4d", seed=4, compressed=True)  # per-layer state sizes
    proto = build_step_graph(StepWeights.from_model(model))
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    assert inputs == ["x"] + state_names(StepWeights.from_model(model))
    assert outputs == ["y"] + ["next_" + n for n in inputs[1:]]
    for i, n in enumerate(model.state_dims):
        dims = proto.graph.input[1 + 2 * i].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [model.d_model, n // 2]
    # one graph serves any batch; streams are independent: batch of 4 == 4 single streams
    x = held_out_inputs(model, batch=4, steps=50)
    xs = step_inputs(model, x)
    together, _ = OnnxStreamer(proto, batch=4).run(xs)
    for b in range(4):
        alone, _ = OnnxStreamer(proto, batch=1).run(xs[:, b:b + 1])
        np.testing.assert_allclose(alone[:, 0], together[:, b], rtol=1e-6, atol=1e-6)
    # the state carries everything: stopping and resuming from the returned state changes nothing
    s = OnnxStreamer(proto, batch=4)
    first, _ = s.run(xs[:20])
    second, _ = s.run(xs[20:])
    np.testing.assert_array_equal(np.concatenate([first, second]), together)
    s.reset()
    again, _ = s.run(xs)
    np.testing.assert_array_equal(again, together)


def test_state_matches_eager_state():
    model = make_model("dss-exp", seed=5)
    x = held_out_inputs(model, batch=2, steps=30)
    streamer = OnnxStreamer(build_step_graph(StepWeights.from_model(model)), batch=2)
    streamer.run(step_inputs(model, x))
    state = model.default_state(2)
    with torch.no_grad():
        for t in range(30):
            _, state = model.step(x[:, t], state)
    for i, s in enumerate(state):
        np.testing.assert_allclose(streamer.state[f"state{i}_re"], s[..., 0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamer.state[f"state{i}_im"], s[..., 1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(streamer.state["pool_count"], np.full((2, 1), 30.0, np.float32))


def test_ssm_only_graph_is_the_chained_ssm_layers():
    model = make_model("s4d", seed=6)
    s = OnnxStreamer(build_step_graph(StepWeights.from_model(model), ssm_only=True), batch=2)
    u = torch.randn(2, model.d_model)
    y = s.step(u.numpy())
    state = model.default_state(2)
    ref = u
    with torch.no_grad():
        for layer, st in zip(model.ssm_layers(), state):
            ref, _ = layer.step(ref, st)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_missing_onnx_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportDependencyError, match=r"pip install 'ssmcompress\[export\]'"):
        require_onnx()
    with pytest.raises(ValueError, match="StepWeights"):
        build_step_graph(make_model("s4d"))
