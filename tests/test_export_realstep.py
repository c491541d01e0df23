"""The streaming classifier and the precomputed real recurrence (StepWeights)."""
import numpy as np
import pytest
import torch

from ssmcompress.export import StepWeights, TorchStreamer, stream_outputs
from ssmcompress.nn import SequenceModel

from export_cases import KERNELS, held_out_inputs, make_model


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_stream_output_at_t_equals_model_on_prefix(kernel, pool):
    model = make_model(kernel, seed=3).double()
    model.pool = pool
    x = held_out_inputs(model, batch=2, steps=40)
    x = x if model.vocab_size is not None else x.double()
    outs = stream_outputs(model, x)
    with torch.no_grad():
        for t in (0, 1, 7, 39):
            torch.testing.assert_close(outs[t], model(x[:, :t + 1]), rtol=1e-9, atol=1e-9)


def test_step_weights_are_the_layer_recurrence():
    model = make_model("dss-softmax", seed=2)
    w = StepWeights.from_model(model)
    for block, layer in zip(w.blocks, model.ssm_layers()):
        p = layer.step_parameters()  # includes the dss-softmax rescaling of growing modes
        for k in ("lam_re", "lam_im", "B_re", "B_im", "C_re", "C_im", "D"):
            np.testing.assert_array_equal(getattr(block, k), p[k].detach().numpy())
        assert all(v.dtype == np.float32 for v in vars(block).values() if isinstance(v, np.ndarray))
    # a growing mode is present and rescaled: |lam| > 1 somewhere
    assert max(np.hypot(b.lam_re, b.lam_im).max() for b in w.blocks) > 1


def test_batch_norm_folds_running_statistics():
    model = make_model("bilinear", seed=1)  # batch norm
    w = StepWeights.from_model(model)
    n = model.blocks[0].norm
    x = torch.randn(5, model.d_model)
    with torch.no_grad():
        ref = n.step(x).numpy()
    np.testing.assert_allclose(x.numpy() * w.blocks[0].norm.scale + w.blocks[0].norm.shift, ref, rtol=1e-6, atol=1e-6)


def test_sizes_and_state_count_with_per_layer_state_dims():
    model = SequenceModel(2, 3, d_model=8, layers=3, state_dim=[8, 4, 2], pool="mean")
    w = StepWeights.from_model(model)
    assert w.state_dims == [8, 4, 2]
    assert w.state_count() == 8 * (8 + 4 + 2) + 8  # re + im per mode, plus the running sum
    ssm_params = sum(p.numel() for layer in model.ssm_layers() for p in layer.parameters())
    step_arrays = sum(6 * 8 * layer.n_modes + 8 for layer in model.ssm_layers())  # lam, B, C re/im and D
    assert w.weight_count() == model.parameter_counts()["params"] - ssm_params + step_arrays
    assert w.ssm_weight_count() == step_arrays


def test_validation_messages():
    with pytest.raises(ValueError, match="SequenceModel"):
        StepWeights.from_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch"):
        TorchStreamer(make_model("s4d"), batch=0)


def test_step_weights_read_current_parameters_not_a_stale_cache():
    model = make_model("s4d", seed=9)
    for layer in model.ssm_layers():
        layer.setup_step()
    stale = model.blocks[0].ssm.step_parameters()["lam_re"].numpy().copy()
    with torch.no_grad():
        model.blocks[0].ssm.log_dt.add_(0.5)
    w = StepWeights.from_model(model)
    model.blocks[0].ssm.clear_step()
    fresh = model.blocks[0].ssm.step_parameters()["lam_re"].detach().numpy()
    np.testing.assert_array_equal(w.blocks[0].lam_re, fresh)
    assert not np.array_equal(fresh, stale)
