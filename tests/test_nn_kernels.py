"""Kernels of the DSS layers against the formulas of the papers and a brute-force recurrence."""
import numpy as np
import pytest
import torch

from ssmcompress.nn import SSMLayer
from ssmcompress.nn.kernels import KERNELS, cexpm1, log_row_sum, vandermonde_kernel

L = 300


def continuous_numpy(layer):
    """lam, B, C complex128 and dt float64 read directly from the parameters."""
    p = {k: v.detach().double().numpy() for k, v in layer.state_dict().items()}
    re = -np.exp(p["log_A_real"]) if "log_A_real" in p else p["A_real"]
    lam = re + 1j * p["A_imag"]
    B = p["B"][..., 0] + 1j * p["B"][..., 1]
    C = p["C"][..., 0] + 1j * p["C"][..., 1]
    return lam, B, C, np.exp(p["log_dt"])


def paper_kernel(layer, L):
    """K (H, L) from the formulas as written in the S4, S4D and DSS papers (numpy, complex128)."""
    lam, B, C, dt = continuous_numpy(layer)
    z = lam * dt[:, None]
    l = np.arange(L)
    P = np.exp(z[..., None] * l)  # (H, n, L), elementwise exp(lam dt l)
    if layer.kernel_name == "s4d":  # ZOH
        return 2 * np.real(np.einsum("hn,hnl->hl", C * B * (np.exp(z) - 1) / lam, P))
    if layer.kernel_name == "bilinear":
        lam_d = (1 + z / 2) / (1 - z / 2)
        B_d = dt[:, None] * B / (1 - z / 2)
        return 2 * np.real(np.einsum("hn,hnl->hl", C * B_d, lam_d[..., None] ** l))
    w = 2 * C * B
    if layer.kernel_name == "dss-exp":  # K = Re(w (e^{lam dt} - 1)/lam . exp(P))
        return np.real(np.einsum("hn,hnl->hl", w * (np.exp(z) - 1) / lam, P))
    # dss-softmax: K = Re(w / lam . row_softmax(P)), softmax over l = 0..l_max-1
    Pm = z[..., None] * np.arange(layer.l_max)
    shift = Pm.real.max(-1, keepdims=True)
    S = np.exp(Pm - shift).sum(-1, keepdims=True)
    soft = np.exp(z[..., None] * l - shift) / S
    return np.real(np.einsum("hn,hnl->hl", w / lam, soft))


def brute_recurrence_kernel(layer, L):
    """Impulse response of x_k = lam_d x_{k-1} + B_d u_k, y_k = 2 Re(C x_k), from discrete_system()."""
    sys = {k: v.numpy().astype(np.complex128) for k, v in layer.discrete_system().items()}
    x = np.zeros_like(sys["lam_d"])
    K = []
    for k in range(L):
        x = sys["lam_d"] * x + sys["B_d"] * (1.0 if k == 0 else 0.0)
        K.append(2 * np.real(sys["C"] * x).sum(-1))
    return np.stack(K, -1)


def make(kernel, init="legs", N=16, H=5, l_max=L, seed=0, **kw):
    torch.manual_seed(seed)
    return SSMLayer(H, N, kernel=kernel, init=init, l_max=l_max, **kw).double()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("init", ["legs", "lin", "real"])
def test_kernel_matches_paper_formula(kernel, init):
    layer = make(kernel, init, learn_B=True)
    with torch.no_grad():  # a non-trivial B for every kernel
        layer.B.add_(0.3 * torch.randn_like(layer.B))
    K = layer.kernel(L).detach().numpy()
    ref = paper_kernel(layer, L)
    np.testing.assert_allclose(K, ref, rtol=0, atol=1e-11 * np.abs(ref).max())


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_brute_force_recurrence(kernel):
    layer = make(kernel, "inv")
    K = layer.kernel(L).detach().numpy()
    ref = brute_recurrence_kernel(layer, L)
    np.testing.assert_allclose(K, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_softmax_kernel_growing_modes():
    """dss-softmax allows Re(A) >= 0: the normalised kernel stays finite and exact."""
    layer = make("dss-softmax", "lin", N=8, H=3, l_max=1000)
    with torch.no_grad():
        layer.A_real.copy_(torch.tensor([[0.5, -0.5, 2.0, 0.01]] * 3))
        layer.log_dt.fill_(np.log(0.1))  # Re(lam dt) up to 0.2: lam_d**999 ~ e^200
    K = layer.kernel(1000).detach().numpy()
    ref = paper_kernel(layer, 1000)
    assert np.isfinite(K).all()
    np.testing.assert_allclose(K, ref, rtol=0, atol=1e-11 * np.abs(ref).max())
    # float32 layer: the same kernel up to the rounding of lam_d (relative error ~ l * 6e-8)
    K32 = layer.float().kernel(1000).detach().double().numpy()
    np.testing.assert_allclose(K32, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("L_", [1, 2, 7, 64, 1000])
def test_chunking_invariance(kernel, L_):
    layer = make(kernel, "legs", N=32, H=4, l_max=1000)
    full = layer.kernel(L_)
    layer.max_kernel_elements = 1  # one mode at a time
    one = layer.kernel(L_)
    layer.max_kernel_elements = 4 * (L_ + 64) * 3  # a few modes per chunk
    few = layer.kernel(L_)
    assert full.shape == (4, L_)
    torch.testing.assert_close(one, full, rtol=0, atol=1e-13 * full.abs().max().item())
    torch.testing.assert_close(few, full, rtol=0, atol=1e-13 * full.abs().max().item())


def test_vandermonde_factor_sizes_respect_budget(monkeypatch):
    """No factor larger than the budget (and never an (H, n, L) tensor)."""
    seen = []
    real_exp = torch.exp

    def spy(x, *a, **k):
        seen.append(x.numel())
        return real_exp(x, *a, **k)

    H, n, Ln = 8, 32, 4096
    z = torch.complex(-torch.rand(H, n, dtype=torch.float64), torch.rand(H, n, dtype=torch.float64))
    w = torch.randn(H, n, dtype=torch.complex128)
    monkeypatch.setattr(torch, "exp", spy)
    budget = H * 4 * (64 + 64)
    K = vandermonde_kernel(w, z, Ln, torch.float64, max_elements=budget)
    monkeypatch.undo()
    assert max(seen) <= max(budget, H * n)
    ref = 2 * np.real(np.einsum("hn,hnl->hl", w.numpy(), np.exp(z.numpy()[..., None] * np.arange(Ln))))
    np.testing.assert_allclose(K.numpy(), ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_cexpm1_and_log_row_sum_accuracy():
    z = torch.tensor([1e-12 + 1e-13j, -1e-9 + 2e-9j, 0.3 - 2j, 0j, -5 + 1j, 3 + 0.5j], dtype=torch.complex128)
    ref = np.array([np.expm1(complex(v)) if v.imag == 0 else np.exp(complex(v)) - 1 for v in z.numpy()])
    small = np.array([complex(v) + complex(v) ** 2 / 2 + complex(v) ** 3 / 6 for v in z.numpy()])
    ref[:2] = small[:2]
    np.testing.assert_allclose(cexpm1(z).numpy(), ref, rtol=1e-14)
    for Ln in (1, 5, 200):
        got = torch.exp(log_row_sum(z[2:], Ln)).numpy()
        want = np.exp(z[2:].numpy()[:, None] * np.arange(Ln)).sum(-1)
        np.testing.assert_allclose(got, want, rtol=1e-12)
