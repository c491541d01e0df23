"""Small randomised SequenceModels for the export tests: every kernel, full and compressed, varied architecture."""
import numpy as np
import pytest
import torch

from ssmcompress.compress import compress_model
from ssmcompress.nn import SequenceModel

KERNELS = ("s4d", "bilinear", "dss-exp", "dss-softmax")
STEPS = 1000
RTOL = 1e-5

# one architecture per kernel, so that every option is exported at least once
ARCH = {
    "s4d": dict(prenorm=False, norm="layer", pool="mean", d_input=3),
    "bilinear": dict(prenorm=True, norm="batch", pool="last", d_input=1),
    "dss-exp": dict(prenorm=True, norm="layer", pool="mean", vocab_size=11),
    "dss-softmax": dict(prenorm=False, norm="batch", pool="mean", d_input=2),
}


def randomise(model: SequenceModel, seed: int) -> SequenceModel:
    """Spread the parameters away from their initial values (norm statistics and affine, dss-softmax growth)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        for layer in model.ssm_layers():
            if layer.kernel_name == "dss-softmax":  # a few growing modes exercise the state rescaling
                layer.A_real[:, :2] = 0.5 * torch.rand(layer.A_real[:, :2].shape, generator=g)
    return model.eval()


def make_model(kernel: str, seed: int = 0, compressed: bool = False) -> SequenceModel:
    torch.manual_seed(seed)
    arch = dict(ARCH[kernel])
    d_input = arch.pop("d_input", 1)
    model = SequenceModel(d_input, 5, d_model=12, layers=2, state_dim=[16, 12], kernel=kernel, l_max=STEPS,
                          dt_min=1e-3, dt_max=0.2, **arch)
    model = randomise(model, seed)
    if compressed:
        model, _ = compress_model(model, rank=8)
        model.eval()
    return model


def held_out_inputs(model: SequenceModel, batch: int, steps: int = STEPS, seed: int = 1) -> torch.Tensor:
    """(batch, steps[, d_input]) inputs never seen by the model: smooth signal plus noise, or random tokens."""
    g = torch.Generator().manual_seed(seed)
    if model.vocab_size is not None:
        return torch.randint(0, model.vocab_size, (batch, steps), generator=g)
    t = torch.arange(steps, dtype=torch.float32)[None, :, None]
    phase = torch.rand(batch, 1, model.d_input, generator=g) * 6.28
    return torch.sin(0.05 * t + phase) + 0.5 * torch.randn(batch, steps, model.d_input, generator=g)


def step_inputs(model: SequenceModel, x: torch.Tensor) -> np.ndarray:
    """(batch, steps[, F]) -> (steps, batch, F) float32 or (steps, batch) tokens, as the exported steps read them."""
    return np.ascontiguousarray(x.transpose(0, 1).numpy())


def assert_stream_close(out: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> None:
    """Per step, the largest deviation relative to the largest output of that step."""
    assert out.shape == ref.shape
    assert np.isfinite(out).all()
    err = np.abs(out - ref).max(axis=(1, 2)) / np.abs(ref).max(axis=(1, 2))
    assert err.max() <= rtol, f"largest relative deviation {err.max():.3g} at step {int(err.argmax())}"


CASES = [pytest.param(k, c, id=f"{k}-{'compressed' if c else 'full'}") for k in KERNELS for c in (False, True)]
