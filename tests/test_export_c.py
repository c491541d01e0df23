"""C99 export: compiled with the system cc, parity with the eager model over 1000 steps, every kernel, full and compressed."""
import re

import numpy as np
import pytest

from ssmcompress.export import StepWeights, stream_outputs
from ssmcompress.export.c_export import (CStepProcess, CStreamer, c_sources, c_weight_bytes, compile_driver,
                                         dequantized_int8, find_c_compiler, quantize_int8, write_c)

from export_cases import CASES, STEPS, assert_stream_close, held_out_inputs, make_model, step_inputs

CC = find_c_compiler()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on this machine")
STRICT = ("-Wall", "-Wextra", "-pedantic", "-Werror")


def build(model, folder, name="net"):
    write_c(model, folder, name)
    return compile_driver(folder, name, extra=STRICT)


@needs_cc
@pytest.mark.parametrize("kernel, compressed", CASES)
def test_c_parity_1000_steps(kernel, compressed, tmp_path):
    model = make_model(kernel, seed=0, compressed=compressed)
    x = held_out_inputs(model, batch=2)
    ref = stream_outputs(model, x).numpy()
    exe = build(model, tmp_path)
    out, us = CStreamer(exe, model.d_output, tokens=model.vocab_size is not None).run(step_inputs(model, x))
    assert out.shape == (STEPS, 2, model.d_output)
    assert_stream_close(out, ref)
    assert us > 0


def test_sources_are_c99_without_heap():
    model = make_model("s4d", seed=1, compressed=True)
    files = c_sources(StepWeights.from_model(model), "kws")
    assert set(files) == {"kws.h", "kws.c", "kws_driver.c"}
    src, header = files["kws.c"], files["kws.h"]
    assert set(re.findall(r"#include <([^>]+)>", src)) == {"math.h", "stddef.h", "string.h"}
    assert not re.search(r"\b(malloc|calloc|realloc|free)\s*\(", src)
    for fn in ("void kws_init(kws_state *s);", "void kws_reset(kws_state *s);",
               "int kws_step(kws_state *s, const float x[KWS_D_INPUT], float y[KWS_D_OUTPUT]);"):
        assert fn in header
    assert "static const float ssm0_lam_re[" in src
    assert f"#define KWS_STATE_FLOATS {StepWeights.from_model(model).state_count()}" in header
    with pytest.raises(ValueError, match="C identifier"):
        c_sources(StepWeights.from_model(model), "2bad-name")


def test_non_finite_weights_are_refused():
    model = make_model("s4d", seed=1)
    w = StepWeights.from_model(model)
    w.decoder_bias[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        c_sources(w)


@needs_cc
def test_token_out_of_range_and_pipe_streaming(tmp_path):
    model = make_model("dss-exp", seed=2)  # embedding input
    exe = build(model, tmp_path)
    x = held_out_inputs(model, batch=1, steps=20)
    ref = stream_outputs(model, x).numpy()
    proc = CStepProcess(exe, batch=1, d_output=model.d_output, tokens=True)
    out = np.stack([proc.step(x_t) for x_t in step_inputs(model, x)])
    assert proc.close() > 0
    assert_stream_close(out, ref)
    with pytest.raises(ValueError, match="token out of range"):
        CStreamer(exe, model.d_output, tokens=True).run(np.array([[1], [model.vocab_size]]))


@needs_cc
def test_bench_mode_runs(tmp_path):
    import subprocess
    exe = build(make_model("s4d", seed=3), tmp_path)
    for extra in ([], ["ssm"]):
        res = subprocess.run([str(exe), "bench", "2", "100", *extra], capture_output=True, text=True, check=True)
        assert float(res.stdout.split()[1]) > 0


def with_weights_of(model, weights):
    """A copy of ``model`` whose Linear weights are those of ``weights`` (e.g. the int8 round trip)."""
    import copy

    import torch
    twin = copy.deepcopy(model)
    with torch.no_grad():
        if model.vocab_size is None:
            twin.encoder.weight.copy_(torch.from_numpy(weights.encoder_weight))
        for block, b in zip(twin.blocks, weights.blocks):
            block.output_linear.weight.copy_(torch.from_numpy(b.linear_weight))
        twin.decoder.weight.copy_(torch.from_numpy(weights.decoder_weight))
    return twin


def test_quantize_int8_round_trip():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 5)).astype(np.float32) * np.array([[1], [1e-3], [10], [0], [1], [2]], np.float32)
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127 and scale.shape == (6,)
    assert np.all(np.abs(q.astype(np.float32) * scale[:, None] - w) <= 0.5 * scale[:, None] * (1 + 1e-6))
    assert np.all(q[3] == 0) and np.all(np.abs(q[[0, 1, 2, 4, 5]]).max(axis=1) == 127)
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(np.ones(3))


@needs_cc
@pytest.mark.parametrize("kernel, compressed", [("s4d", False), ("dss-softmax", True), ("dss-exp", False)])
def test_c_int8_equals_model_with_int8_weights(kernel, compressed, tmp_path):
    model = make_model(kernel, seed=0, compressed=compressed)
    weights = StepWeights.from_model(model)
    x = held_out_inputs(model, batch=2)
    ref = stream_outputs(with_weights_of(model, dequantized_int8(weights)), x).numpy()
    write_c(weights, tmp_path, "q8", int8=True)
    exe = compile_driver(tmp_path, "q8", extra=STRICT)
    out, _ = CStreamer(exe, model.d_output, tokens=model.vocab_size is not None).run(step_inputs(model, x))
    assert_stream_close(out, ref)
    assert c_weight_bytes(weights, int8=True) < c_weight_bytes(weights)
    assert "signed char glu0_q[" in (tmp_path / "q8.c").read_text()
