"""SSMLayer: convolution vs recurrence, discrete systems in and out, validation, shapes."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmcompress.nn import INITS, KERNELS, SSMLayer

L = 1000


def run_steps(layer, u):
    state = layer.default_state(u.shape[0])
    assert state.shape == (u.shape[0], layer.d_model, layer.n_modes, 2) and not state.is_complex()
    ys = []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1)


def conv_vs_step(layer, dtype, seed=1):
    torch.manual_seed(seed)
    layer = layer.to(dtype)
    with torch.no_grad():
        layer.D.zero_()  # compare the state-space part alone
    u = torch.randn(2, L, layer.d_model, dtype=dtype)
    with torch.no_grad():
        y = layer(u)
        layer.setup_step()
        ys = run_steps(layer, u)
    return ((ys - y).abs().max() / y.abs().max()).item()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("init", sorted(INITS))
def test_step_matches_convolution(kernel, init):
    torch.manual_seed(0)
    layer = SSMLayer(6, 16, kernel=kernel, init=init, l_max=L)
    assert conv_vs_step(layer, torch.float32) < 1e-5
    assert conv_vs_step(layer, torch.float64) < 1e-10


@pytest.mark.parametrize("dt", [0.01, 0.1])
def test_step_matches_convolution_softmax_growing_modes(dt):
    """dss-softmax with |lam_d| > 1: the rescaled recurrence still matches over L = 1000."""
    torch.manual_seed(0)
    layer = SSMLayer(4, 8, kernel="dss-softmax", init="lin", l_max=L)
    with torch.no_grad():
        layer.A_real.copy_(torch.tensor([[0.5, -0.5, 0.8, 0.05]] * 4))
        layer.log_dt.fill_(math.log(dt))
    assert (layer.discrete_system()["lam_d"].abs() > 1).any()
    assert conv_vs_step(layer, torch.float32) < 1e-5
    assert conv_vs_step(layer, torch.float64) < 1e-10


def test_step_is_differentiable_without_setup():
    layer = SSMLayer(3, 4, kernel="s4d").double()
    y, _ = layer.step(torch.randn(2, 3, dtype=torch.float64), layer.default_state(2))
    y.sum().backward()
    assert layer.log_dt.grad is not None and layer.C.grad is not None


def test_step_parameters_are_real():
    for kernel in KERNELS:
        layer = SSMLayer(3, 4, kernel=kernel, l_max=10)
        for k, v in layer.step_parameters().items():
            assert not v.is_complex(), k


def reference_kernel(sys, L):
    lam_d, B_d, C = (np.asarray(sys[k], dtype=np.complex128) for k in ("lam_d", "B_d", "C"))
    return 2 * np.real(np.einsum("hn,hnl->hl", C * B_d, lam_d[..., None] ** np.arange(L)))


def random_system(H, n, seed, unstable=False):
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.3, 0.999, (H, n)) if not unstable else rng.uniform(0.5, 1.004, (H, n))
    lam_d = r * np.exp(1j * rng.uniform(-np.pi, np.pi, (H, n)))
    B_d = rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))
    C = rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))
    return dict(lam_d=lam_d, B_d=B_d, C=C, D=rng.normal(size=H))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("learn_B", [True, False])
@pytest.mark.parametrize("n", [3, 11])
def test_load_discrete_system_round_trip(kernel, learn_B, n):
    H, Lk = 4, 200
    torch.manual_seed(0)
    layer = SSMLayer(H, 16, kernel=kernel, init="legs", l_max=Lk, learn_B=learn_B).double()
    dt_before = layer.discrete_system()["dt"].clone()
    sys = random_system(H, n, seed=n, unstable=(kernel == "dss-softmax"))
    layer.load_discrete_system(**sys)
    assert layer.n_modes == n and layer.state_dim == 2 * n
    assert layer.B.shape == (H, n, 2) and layer.C.shape == (H, n, 2)
    assert isinstance(layer.B, torch.nn.Parameter) == learn_B
    ref = reference_kernel(sys, Lk)
    K = layer.kernel(Lk).detach().numpy()
    np.testing.assert_allclose(K, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    out = layer.discrete_system()
    torch.testing.assert_close(out["dt"], dt_before, rtol=1e-15, atol=0)
    np.testing.assert_allclose(out["lam_d"].numpy(), sys["lam_d"], rtol=1e-12)
    np.testing.assert_allclose((out["C"] * out["B_d"]).numpy(), sys["C"] * sys["B_d"], rtol=1e-11)
    np.testing.assert_allclose(out["D"].numpy(), sys["D"])
    if learn_B:
        np.testing.assert_allclose(out["B_d"].numpy(), sys["B_d"], rtol=1e-11)
    # discrete_system -> load -> discrete_system is a fixed point, and the kernel identity holds
    layer2 = SSMLayer(H, 4, kernel=kernel, l_max=Lk, learn_B=learn_B).double()
    with torch.no_grad():
        layer2.log_dt.copy_(layer.log_dt)
    layer2.load_discrete_system(out["lam_d"], out["B_d"], out["C"], out["D"])
    torch.testing.assert_close(layer2.kernel(Lk), layer.kernel(Lk), rtol=0, atol=1e-11 * np.abs(ref).max())
    np.testing.assert_allclose(reference_kernel(out, Lk), K, rtol=0, atol=1e-10 * np.abs(ref).max())
    # and the recurrence of the loaded layer agrees with its convolution
    u = torch.randn(1, Lk, H, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(run_steps(layer, u), layer(u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", KERNELS)
def test_discrete_system_matches_kernel_float32(kernel):
    torch.manual_seed(0)
    layer = SSMLayer(5, 16, kernel=kernel, init="legs", l_max=300)
    sys = {k: v.numpy() for k, v in layer.discrete_system().items()}
    assert sys["lam_d"].dtype == np.complex64 and sys["lam_d"].shape == (5, 8)
    ref = reference_kernel(sys, 300)
    np.testing.assert_allclose(layer.kernel(300).detach().numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_load_discrete_system_padding_modes():
    torch.manual_seed(0)
    layer = SSMLayer(2, 4, kernel="s4d").double()
    sys = random_system(2, 4, seed=3)
    sys["lam_d"][:, -1] = 0.0  # padding: C * B_d == 0 may hold any lam_d
    sys["C"][:, -1] = 0.0
    sys["lam_d"][0, -2] = 1.5
    sys["B_d"][0, -2] = 0.0
    layer.load_discrete_system(**sys)
    ref = reference_kernel(sys, 50)
    np.testing.assert_allclose(layer.kernel(50).detach().numpy(), ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("kernel", ["s4d", "bilinear", "dss-exp"])
def test_load_discrete_system_rejects_unstable(kernel):
    layer = SSMLayer(2, 4, kernel=kernel)
    sys = random_system(2, 3, seed=0)
    sys["lam_d"][1, 2] = 1.01
    with pytest.raises(ValueError, match="lam_d"):
        layer.load_discrete_system(**sys)


def test_load_discrete_system_rejects_bad_shapes():
    layer = SSMLayer(2, 4)
    sys = random_system(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, n\)"):
        layer.load_discrete_system(**sys)
    sys = random_system(2, 2, seed=0)
    sys["C"] = sys["C"][:, :1]
    with pytest.raises(ValueError, match="C must have the shape"):
        layer.load_discrete_system(**sys)
    sys = random_system(2, 2, seed=0)
    sys["B_d"][0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        layer.load_discrete_system(**sys)


def test_parameter_names_and_groups():
    layer = SSMLayer(3, 8, kernel="s4d")
    assert set(dict(layer.named_parameters())) == {"log_dt", "log_A_real", "A_imag", "B", "C", "D"}
    assert {id(p) for p in layer.ssm_parameters()} == {id(layer.log_dt), id(layer.log_A_real), id(layer.A_imag), id(layer.B)}
    assert all(p._optim == {"weight_decay": 0.0} for p in layer.ssm_parameters())
    soft = SSMLayer(3, 8, kernel="dss-softmax", l_max=20)
    assert set(dict(soft.named_parameters())) == {"log_dt", "A_real", "A_imag", "C", "D"}
    assert set(dict(soft.named_buffers())) == {"B"}
    assert SSMLayer(3, 8, kernel="dss-exp", learn_B=True).B.requires_grad
    assert SSMLayer(3, 8, kernel="s4d", learn_B=False).B.requires_grad is False
    sd = layer.state_dict()
    assert sd["B"].shape == (3, 4, 2) and sd["C"].shape == (3, 4, 2)


def test_constrained_real_part_negative():
    torch.manual_seed(0)
    for kernel in ("s4d", "bilinear", "dss-exp"):
        layer = SSMLayer(3, 8, kernel=kernel, init="random")
        with torch.no_grad():
            layer.log_A_real.add_(torch.randn_like(layer.log_A_real) * 5)
        # exactly inside the unit circle; rounded to float32 a very slow mode may land on it (|Re A| dt < ~3e-8)
        assert (layer.discrete_system(exact=True)["lam_d"].abs() < 1).all()
        assert (layer.discrete_system()["lam_d"].abs() <= 1).all()
        with torch.no_grad():
            layer.log_A_real.fill_(math.log(1e-6))
            layer.log_dt.fill_(math.log(1e-3))
        assert (layer.discrete_system(exact=True)["lam_d"].abs() < 1).all()


def test_validation_messages():
    with pytest.raises(ValueError, match="even"):
        SSMLayer(4, 7)
    with pytest.raises(ValueError, match="s4d, bilinear, dss-exp, dss-softmax"):
        SSMLayer(4, 8, kernel="s4")
    with pytest.raises(ValueError, match="inv, legs, lin, random, real"):
        SSMLayer(4, 8, init="hippo")
    with pytest.raises(ValueError, match="l_max"):
        SSMLayer(4, 8, kernel="dss-softmax")
    layer = SSMLayer(4, 8)
    with pytest.raises(ValueError, match=r"\(batch, length, 4\), got \(2, 10, 3\)"):
        layer(torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match=r"\(batch, 4\), got \(2, 1, 4\)"):
        layer.step(torch.randn(2, 1, 4), layer.default_state(2))


def test_double_everywhere():
    layer = SSMLayer(3, 8, kernel="bilinear").double()
    u = torch.randn(2, 30, 3, dtype=torch.float64)
    assert layer(u).dtype == torch.float64 and layer.kernel(30).dtype == torch.float64
    assert layer.default_state(2).dtype == torch.float64


def test_gradients_flow_to_all_parameters():
    for kernel in KERNELS:
        layer = SSMLayer(3, 8, kernel=kernel, l_max=40, learn_B=True)
        layer(torch.randn(2, 40, 3)).pow(2).mean().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (kernel, name)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), length=st.integers(1, 40), H=st.integers(1, 5), n=st.integers(1, 6),
    kernel=st.sampled_from(KERNELS), init=st.sampled_from(sorted(INITS)),
)
def test_shapes(batch, length, H, n, kernel, init):
    layer = SSMLayer(H, 2 * n, kernel=kernel, init=init, l_max=40).double()
    u = torch.randn(batch, length, H, dtype=torch.float64)
    y = layer(u)
    assert y.shape == (batch, length, H)
    assert layer.kernel(length).shape == (H, length)
    with torch.no_grad():
        ys = run_steps(layer, u)
    torch.testing.assert_close(ys, y.detach(), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- causal_conv's own backward pass

def _conv_reference(v, K, D):
    """Plain autograd through the FFTs, and brute force for the values."""
    L = v.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(v, n=2 * L) * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L] + v * D[:, None]


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 3), H=st.integers(1, 4), L=st.integers(1, 17), seed=st.integers(0, 2**16))
def test_causal_conv_matches_brute_force_and_autograd(batch, H, L, seed):
    from ssmcompress.nn.layer import causal_conv

    g = torch.Generator().manual_seed(seed)
    v, K, D = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in ((batch, H, L), (H, L), (H,)))
    y = causal_conv(v, K, D)
    brute = torch.zeros(batch, H, L, dtype=torch.float64)
    for t in range(L):
        for s in range(t + 1):
            brute[..., t] += K[:, t - s].detach() * v[..., s].detach()
    brute += v.detach() * D.detach()[:, None]
    torch.testing.assert_close(y.detach(), brute, rtol=1e-12, atol=1e-12)
    w = torch.randn(batch, H, L, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (v, K, D), w)
    want = torch.autograd.grad(_conv_reference(v, K, D), (v, K, D), w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_causal_conv_gradcheck_and_partial_gradients():
    from ssmcompress.nn.layer import causal_conv

    torch.manual_seed(0)
    v = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    K = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    D = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_conv, (v, K, D))
    # only some inputs need gradients (frozen kernel, frozen input)
    (dv,) = torch.autograd.grad(causal_conv(v, K.detach(), D.detach()).sum(), (v,))
    (dK,) = torch.autograd.grad(causal_conv(v.detach(), K, D.detach()).sum(), (K,))
    want = torch.autograd.grad(_conv_reference(v, K, D).sum(), (v, K))
    torch.testing.assert_close(dv, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dK, want[1], rtol=1e-12, atol=1e-12)


def test_causal_conv_rejects_bad_input():
    from ssmcompress.nn.layer import causal_conv

    v, K, D = torch.zeros(2, 3, 5), torch.zeros(3, 5), torch.zeros(3)
    with pytest.raises(ValueError, match="expects v \\(batch, H, L\\)"):
        causal_conv(v, torch.zeros(3, 4), D)
    with pytest.raises(ValueError, match="one dtype"):
        causal_conv(v, K.double(), D)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_layer_gradients_match_plain_autograd_and_output_is_contiguous(kernel):
    torch.manual_seed(3)
    layer = SSMLayer(4, 8, kernel=kernel, l_max=50).double()
    u = torch.randn(2, 50, 4, dtype=torch.float64)
    y = layer(u)
    assert y.is_contiguous() and y.shape == (2, 50, 4)
    w = torch.randn_like(y)
    params = [p for p in layer.parameters() if p.requires_grad]
    got = torch.autograd.grad(y, params, w)
    K = layer.kernel(50)
    ref = _conv_reference(u.transpose(1, 2), K, layer.D).transpose(1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    want = torch.autograd.grad(ref, params, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
